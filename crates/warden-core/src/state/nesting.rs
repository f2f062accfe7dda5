//! A bound on how deeply the recursive command types may nest when they are
//! decoded, so bytes from a peer or from disk cannot overflow the stack.
//!
//! Four fields make the state's types recursive: the boxed command of
//! `Command::Fenced` and of `Command::FencedProven`, `RequestOp::Txn` and
//! `ResponseOp::Txn`. Each is deserialized
//! through [`bounded`] (serde's `deserialize_with`), which counts the
//! recursive fields currently being decoded on this thread and fails once
//! more than [`MAX_NESTING`] are open. postcard (and any other serde format)
//! encodes such a field exactly as the field's own type, so stored bytes do
//! not change; only input nested deeper than any this build can produce is
//! refused.
//!
//! Decoding is synchronous, so a thread-local counter sees one decode at a
//! time per thread; an RAII guard restores it on success, on error and on
//! unwind.
//!
//! The limit is the deepest command client-port validation admits
//! ([`super::validate::check_txn_request`]): a txn may nest
//! [`MAX_TXN_OPS`] txns below it (every level spends at least one op of the
//! shared budget), and a fenced write wraps one more level around it.
//! Accepted input is therefore at most `MAX_NESTING` levels deep everywhere
//! it recurses later: validation, apply, encoding and `Drop`.

use std::cell::Cell;

use serde::{Deserialize, Deserializer};

use super::validate::MAX_TXN_OPS;

/// Most recursive fields (fenced command, nested txn request or response)
/// open at once while decoding one value.
pub const MAX_NESTING: usize = MAX_TXN_OPS + 1;

thread_local! {
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// One open recursive field; dropping it closes the level.
struct Level;

impl Level {
    fn enter<E: serde::de::Error>() -> Result<Level, E> {
        let depth = DEPTH.with(|d| {
            let n = d.get().saturating_add(1);
            d.set(n);
            n
        });
        // The guard exists from here on, so the counter is restored on the
        // error path too.
        let level = Level;
        if depth > MAX_NESTING {
            return Err(E::custom(format_args!(
                "command nested deeper than {MAX_NESTING} levels"
            )));
        }
        Ok(level)
    }
}

impl Drop for Level {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Deserializes one recursive field, failing past [`MAX_NESTING`] open
/// levels. Use with `#[serde(deserialize_with = "...")]`.
pub fn bounded<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let _level = Level::enter::<D::Error>()?;
    T::deserialize(d)
}

/// The number of recursive fields open on this thread (0 outside a decode).
#[cfg(test)]
pub(crate) fn open_levels() -> usize {
    DEPTH.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::types::{RequestOp, ResponseOp, TxnRequest, TxnResponse};
    use crate::state::validate::check_txn_request;
    use crate::state::Command;

    /// A txn with `depth` txns nested below it, one op per level.
    fn nested_txn(depth: usize) -> TxnRequest {
        let mut t = TxnRequest::default();
        for _ in 0..depth {
            t = TxnRequest {
                compare: Vec::new(),
                success: vec![RequestOp::Txn(t)],
                failure: Vec::new(),
            };
        }
        t
    }

    fn fenced(cmd: Command) -> Command {
        Command::Fenced {
            name: "l".into(),
            token: 1,
            command: Box::new(cmd),
        }
    }

    /// Hand-built postcard bytes of `Command::Txn` with `depth` nested txns
    /// (what a hostile peer sends: no need to build the value first).
    fn nested_txn_bytes(depth: usize) -> Vec<u8> {
        let mut b = vec![2u8]; // Command::Txn
        for _ in 0..depth {
            // compare: [], success: [RequestOp::Txn(..)]
            b.extend_from_slice(&[0, 1, 3]);
        }
        b.extend_from_slice(&[0, 0, 0]); // innermost: empty txn
        b.extend(std::iter::repeat_n(0u8, depth)); // each level's failure: []
        b
    }

    /// Runs `f` on a thread with a `kib` KiB stack, as a proof that it
    /// cannot recurse without bound (a debug build spends 2-4 KiB per
    /// level; 10 000 levels would need tens of MiB).
    fn on_stack<T: Send + 'static>(kib: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(kib * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn hand_built_bytes_match_postcard() {
        let want = postcard::to_stdvec(&Command::Txn(nested_txn(3))).unwrap();
        assert_eq!(nested_txn_bytes(3), want);
    }

    #[test]
    fn validation_admits_exactly_max_nesting() {
        // The deepest txn validation admits, wrapped in a fence, is
        // `MAX_NESTING` levels: the decoder must accept it.
        assert!(check_txn_request(&nested_txn(MAX_TXN_OPS)).is_ok());
        assert!(check_txn_request(&nested_txn(MAX_TXN_OPS + 1)).is_err());
        let deepest = fenced(Command::Txn(nested_txn(MAX_TXN_OPS)));
        let bytes = postcard::to_stdvec(&deepest).unwrap();
        let back: Command = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, deepest);
        assert_eq!(open_levels(), 0);
    }

    #[test]
    fn one_level_more_is_a_decode_error() {
        let cmd = fenced(Command::Txn(nested_txn(MAX_TXN_OPS + 1)));
        let bytes = postcard::to_stdvec(&cmd).unwrap();
        assert!(postcard::from_bytes::<Command>(&bytes).is_err());
        assert_eq!(open_levels(), 0, "the counter is restored after an error");
        // The thread can decode normally afterwards.
        let ok = postcard::to_stdvec(&Command::Txn(nested_txn(2))).unwrap();
        assert!(postcard::from_bytes::<Command>(&ok).is_ok());
    }

    #[test]
    fn nested_fences_count_too() {
        let mut cmd = Command::Txn(TxnRequest::default());
        for _ in 0..=MAX_NESTING {
            cmd = fenced(cmd);
        }
        let bytes = postcard::to_stdvec(&cmd).unwrap();
        assert!(postcard::from_bytes::<Command>(&bytes).is_err());
    }

    #[test]
    fn nested_responses_are_bounded() {
        let mut r = TxnResponse::default();
        for _ in 0..=MAX_NESTING {
            r = TxnResponse {
                succeeded: true,
                responses: vec![ResponseOp::Txn(r)],
            };
        }
        let bytes = postcard::to_stdvec(&r).unwrap();
        assert!(postcard::from_bytes::<TxnResponse>(&bytes).is_err());
    }

    #[test]
    fn deepest_accepted_command_decodes_applies_and_drops_on_a_small_stack() {
        // Tokio's worker threads, where peers' bytes are decoded and
        // entries applied, have 2 MiB: half of that is enough here.
        let deepest = fenced(Command::Txn(nested_txn(MAX_TXN_OPS)));
        let bytes = postcard::to_stdvec(&deepest).unwrap();
        let ok = on_stack(1024, move || {
            let cmd: Command = postcard::from_bytes(&bytes).unwrap();
            let mut sm = crate::state::StateMachine::new();
            let applied = sm.apply(&cmd);
            let back = postcard::to_stdvec(&applied).unwrap();
            let decoded: crate::state::Applied = postcard::from_bytes(&back).unwrap();
            drop(cmd);
            decoded.revision == applied.revision
        });
        assert!(ok);
    }

    #[test]
    fn very_deep_input_fails_on_a_small_stack() {
        // ~30 KB of nesting: 10 000 levels, which overflowed the stack
        // before the bound.
        let r = on_stack(512, || {
            let bytes = nested_txn_bytes(10_000);
            postcard::from_bytes::<Command>(&bytes).map(|_| ())
        });
        assert!(r.is_err());
        // Fenced is tag 10 (the golden bytes in `lock_golden_tests` pin
        // it), FencedProven 13 with a 32-byte digest after the token.
        let fences = |depth: usize, proven: bool| {
            let mut b = Vec::new();
            for _ in 0..depth {
                if proven {
                    b.extend_from_slice(&[13, 1, b'l', 1]); // FencedProven { "l", 1, ..
                    b.extend_from_slice(&[0; 32]);
                } else {
                    b.extend_from_slice(&[10, 1, b'l', 1]); // Fenced { "l", 1, ..
                }
            }
            b.extend_from_slice(&[2, 0, 0, 0]); // Txn(empty)
            b
        };
        for proven in [false, true] {
            let shallow = fences(3, proven);
            assert!(
                postcard::from_bytes::<Command>(&shallow).is_ok(),
                "the bytes are fences"
            );
            let r = on_stack(512, move || {
                postcard::from_bytes::<Command>(&fences(10_000, proven)).map(|_| ())
            });
            assert!(r.is_err());
        }
    }
}
