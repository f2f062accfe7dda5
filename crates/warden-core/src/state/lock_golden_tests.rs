//! Golden bytes of the lock commands and of a state holding locks, as the
//! builds before lock handles wrote them (`tests/fixtures/v1-lock-commands.txt`
//! and `v1-locks.wdnsnapf`, produced by commit 67150e5 with
//! `WARDEN_BLESS_FIXTURES=1 cargo test -p warden-core lock_golden`). A data
//! dir of those builds holds exactly these bytes in its log and snapshots:
//! they must decode to the same values and re-encode to the same bytes, or
//! the format changed (bump `FORMAT_VERSION`). Then the same for the
//! commands proven by a handle digest and a state holding digests
//! (`v1-lock-proven-commands.txt`, `v1-locks-proven.wdnsnapf`), which this
//! build added at format version 1, and the behaviour of old holds.

use std::path::Path;

use crate::state::lock_table::{AcquireOutcome, AcquireRequest, HandleDigest, LockError, LockMode};
use crate::state::types::PutRequest;
use crate::state::{Command, CommandResult, StateError, StateMachine};

const COMMANDS: &str = include_str!("../../tests/fixtures/v1-lock-commands.txt");
const STATE: &[u8] = include_bytes!("../../tests/fixtures/v1-locks.wdnsnapf");

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn acquire(name: &str, lease: i64, owner: &str, mode: LockMode, wait: bool) -> Command {
    Command::LockAcquire(AcquireRequest {
        name: name.into(),
        mode,
        lease,
        priority: 3,
        owner: owner.into(),
        wait,
    })
}

/// The lock commands of the old format, by name.
pub(super) fn old_commands() -> Vec<(&'static str, Command)> {
    vec![
        (
            "acquire",
            acquire("jobs", 0x1234, "me", LockMode::Shared, true),
        ),
        (
            "release",
            Command::LockRelease {
                name: "jobs".into(),
                token: 7,
            },
        ),
        (
            "cancel",
            Command::LockCancel {
                name: "jobs".into(),
                waiter_id: 2,
            },
        ),
        (
            "fenced",
            Command::Fenced {
                name: "jobs".into(),
                token: 7,
                command: Box::new(Command::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            },
        ),
    ]
}

/// A state with a held lock and a queued waiter, built by old commands.
pub(super) fn old_state() -> StateMachine {
    let mut m = StateMachine::new();
    for cmd in [
        Command::LeaseGrant { id: 5, ttl: 60 },
        Command::LeaseGrant { id: 6, ttl: 60 },
        acquire("jobs", 5, "holder", LockMode::Exclusive, true),
        acquire("jobs", 6, "waiter", LockMode::Exclusive, true),
    ] {
        assert!(m.apply(&cmd).result.is_ok(), "{cmd}");
    }
    m
}

#[test]
fn lock_golden_bytes_decode_and_reencode_exactly() {
    let mut txt = String::new();
    for (name, cmd) in old_commands() {
        txt.push_str(&format!(
            "{name} {}\n",
            hex(&postcard::to_stdvec(&cmd).unwrap())
        ));
    }
    let state = old_state().to_snapshot_bytes().unwrap();
    if std::env::var_os("WARDEN_BLESS_FIXTURES").is_some() {
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        std::fs::write(out.join("v1-lock-commands.txt"), &txt).unwrap();
        std::fs::write(out.join("v1-locks.wdnsnapf"), &state).unwrap();
    }
    assert_eq!(txt, COMMANDS, "lock command encoding changed");
    for ((name, want), line) in old_commands().into_iter().zip(COMMANDS.lines()) {
        let raw = unhex(line.split(' ').nth(1).unwrap());
        let back: Command = postcard::from_bytes(&raw).unwrap();
        assert_eq!(back, want, "{name}");
    }
    assert_eq!(state, STATE, "snapshot of a state holding locks changed");
    let back = StateMachine::from_snapshot_bytes(STATE).unwrap();
    assert_eq!(back, old_state());
    assert_eq!(back.to_snapshot_bytes().unwrap(), STATE);
}

const PROVEN_COMMANDS: &str = include_str!("../../tests/fixtures/v1-lock-proven-commands.txt");
const PROVEN_STATE: &[u8] = include_bytes!("../../tests/fixtures/v1-locks-proven.wdnsnapf");

fn proof(n: u8) -> HandleDigest {
    HandleDigest::of_handle(&[n; crate::state::lock_table::HANDLE_LEN])
}

fn proven(cmd: Command, p: HandleDigest) -> Command {
    match cmd {
        Command::LockAcquire(req) => Command::LockAcquireProven { req, proof: p },
        other => other,
    }
}

/// The commands proven by a handle digest, by name.
fn new_commands() -> Vec<(&'static str, Command)> {
    vec![
        (
            "acquire-proven",
            proven(
                acquire("jobs", 0x1234, "me", LockMode::Shared, true),
                proof(7),
            ),
        ),
        (
            "release-proven",
            Command::LockReleaseProven {
                name: "jobs".into(),
                token: 7,
                proof: proof(7),
            },
        ),
        (
            "fenced-proven",
            Command::FencedProven {
                name: "jobs".into(),
                token: 7,
                proof: proof(7),
                command: Box::new(Command::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            },
        ),
    ]
}

/// A proven holder and a proven waiter on `jobs`, a plain holder on `old`.
fn proven_state() -> StateMachine {
    let mut m = StateMachine::new();
    for cmd in [
        Command::LeaseGrant { id: 5, ttl: 60 },
        Command::LeaseGrant { id: 6, ttl: 60 },
        proven(
            acquire("jobs", 5, "holder", LockMode::Exclusive, true),
            proof(1),
        ),
        proven(
            acquire("jobs", 6, "waiter", LockMode::Exclusive, true),
            proof(2),
        ),
        acquire("old", 5, "plain", LockMode::Shared, true),
    ] {
        assert!(m.apply(&cmd).result.is_ok(), "{cmd}");
    }
    m
}

#[test]
fn lock_golden_proven_bytes_decode_and_reencode_exactly() {
    let mut txt = String::new();
    for (name, cmd) in new_commands() {
        txt.push_str(&format!(
            "{name} {}\n",
            hex(&postcard::to_stdvec(&cmd).unwrap())
        ));
    }
    let state = proven_state().to_snapshot_bytes().unwrap();
    if std::env::var_os("WARDEN_BLESS_FIXTURES").is_some() {
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        std::fs::write(out.join("v1-lock-proven-commands.txt"), &txt).unwrap();
        std::fs::write(out.join("v1-locks-proven.wdnsnapf"), &state).unwrap();
    }
    assert_eq!(txt, PROVEN_COMMANDS, "proven lock command encoding changed");
    // Appended variants: tags after every older one (Fenced is 10).
    for ((name, want), (line, tag)) in new_commands()
        .into_iter()
        .zip(PROVEN_COMMANDS.lines().zip([11u8, 12, 13]))
    {
        let raw = unhex(line.split(' ').nth(1).unwrap());
        assert_eq!(raw[0], tag, "{name}");
        let back: Command = postcard::from_bytes(&raw).unwrap();
        assert_eq!(back, want, "{name}");
    }
    assert_eq!(
        state, PROVEN_STATE,
        "snapshot of a state with handles changed"
    );
    let back = StateMachine::from_snapshot_bytes(PROVEN_STATE).unwrap();
    assert_eq!(back, proven_state());
    assert_eq!(back.lock_proofs(), proven_state().lock_proofs());
    assert_eq!(back.lock_proofs().holders.len(), 1);
    assert_eq!(back.lock_proofs().waiters.len(), 1);
    // The body is the state as builds before handles encode it, then the
    // digests: so a state without digests has the old bytes exactly.
    let (_, body) = crate::storage::format::decode_snapshot(PROVEN_STATE).unwrap();
    let plain = postcard::to_stdvec(&proven_state()).unwrap();
    assert!(body.len() > plain.len() && body.starts_with(&plain));
}

#[test]
fn a_snapshot_with_damaged_or_empty_digests_is_refused() {
    let (_, body) = crate::storage::format::decode_snapshot(PROVEN_STATE).unwrap();
    let plain_len = postcard::to_stdvec(&proven_state()).unwrap().len();
    let framed = |b: &[u8]| crate::storage::format::encode_snapshot(&[], b);
    // An empty section is never written.
    let mut empty = body[..plain_len].to_vec();
    empty.extend_from_slice(&[0, 0]);
    let e = StateMachine::from_snapshot_bytes(&framed(&empty)).unwrap_err();
    assert!(e.to_string().contains("lock handle digests"), "{e}");
    // Cut short, or with a byte more.
    for cut in [body.len() - 1, plain_len + 1] {
        assert!(StateMachine::from_snapshot_bytes(&framed(&body[..cut])).is_err());
    }
    let mut more = body.to_vec();
    more.push(0);
    assert!(StateMachine::from_snapshot_bytes(&framed(&more)).is_err());
    // Digests of a token no holder has: inconsistent.
    let foreign = proven_state().lock_proofs();
    let e = StateMachine::new()
        .restore_lock_proofs(foreign.clone())
        .unwrap_err();
    assert!(e.contains("token 1, which holds no lock"), "{e}");
    let mut b = postcard::to_stdvec(&StateMachine::new()).unwrap();
    b = postcard::to_extend(&foreign, b).unwrap();
    assert!(matches!(
        StateMachine::from_snapshot_bytes(&framed(&b)),
        Err(crate::state::SnapshotError::Invalid(_))
    ));
}

/// Holds of an old data dir have no digest: their token alone releases
/// them and fences writes, as before; their waiters, granted later, too.
#[test]
fn holds_from_before_handles_keep_working_by_token() {
    let mut m = StateMachine::from_snapshot_bytes(STATE).unwrap();
    assert!(m.lock_proofs().is_empty());
    let token = m.locks().inspect("jobs").unwrap().holders[0].token;
    let fenced = |token: u64| Command::Fenced {
        name: "jobs".into(),
        token,
        command: Box::new(Command::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
    };
    assert!(m.apply(&fenced(token)).result.is_ok());
    let r = m.apply(&Command::LockRelease {
        name: "jobs".into(),
        token,
    });
    assert_eq!(r.result, Ok(CommandResult::LockRelease));
    let next = m.locks().inspect("jobs").unwrap().holders[0].token;
    assert!(next > token);
    // A member of this build sends a digest when the client has a handle:
    // any digest is accepted for a hold without one.
    let r = m.apply(&Command::LockReleaseProven {
        name: "jobs".into(),
        token: next,
        proof: proof(3),
    });
    assert_eq!(r.result, Ok(CommandResult::LockRelease));
    assert!(m.locks().is_empty());
    // New acquires on the same state are proven.
    let a = m.apply(&proven(
        acquire("jobs", 5, "new", LockMode::Exclusive, false),
        proof(4),
    ));
    let Ok(CommandResult::LockAcquire(AcquireOutcome::Granted { token })) = a.result else {
        panic!("{a:?}")
    };
    assert_eq!(
        m.apply(&Command::LockRelease {
            name: "jobs".into(),
            token
        })
        .result,
        Err(StateError::Lock(LockError::HandleRequired {
            name: "jobs".into(),
            token
        }))
    );
    assert!(m.check_invariants().is_ok());
}
