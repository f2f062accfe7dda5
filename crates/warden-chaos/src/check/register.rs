//! The register checker: each key's reads, writes and compare-and-sets must
//! be linearizable (per key, which is enough: linearizability composes).
//!
//! Writes carry unique values, so a read names the write it saw. An
//! indeterminate write or CAS may or may not have happened. Two passes keep
//! the search small: first without the indeterminate writes nobody observed
//! (if that history is linearizable, so is the real one — those writes just
//! did not happen); only if that fails, the full history decides.
//!
//! On a violation the report is the smallest window found by shrinking: the
//! shortest prefix that already fails, then the latest start that still
//! fails from an unknown initial state. A window is closed under
//! concurrency (every operation that overlaps it is in it, and every
//! indeterminate one invoked before it ends), so a failing window proves
//! the whole history fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::linearizable::{self, Entry, Model, Verdict};
use super::{CheckResult, Violation};
use crate::history::{Call, History, Op, Outcome, Ret};

/// Search steps allowed for one key's history.
pub const BUDGET: u64 = 20_000_000;
/// Search steps allowed for each window tried while shrinking.
const WINDOW_BUDGET: u64 = 2_000_000;

/// A register's state: a value id (0 = no value), or unknown (a window
/// that starts mid-history).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegState {
    Unknown,
    Known(u32),
}

/// A register operation with interned values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegOp {
    Read(u32),
    Write(u32),
    CasOk {
        from: u32,
        to: u32,
    },
    CasFailed {
        from: u32,
    },
    /// Outcome unknown.
    CasInfo {
        from: u32,
        to: u32,
    },
}

pub struct Register;

impl Model for Register {
    type State = RegState;
    type Op = RegOp;
    fn step(&self, s: &RegState, op: &RegOp) -> Option<RegState> {
        use RegState::{Known, Unknown};
        match (*s, *op) {
            (Unknown, RegOp::Read(v)) => Some(Known(v)),
            (Known(x), RegOp::Read(v)) => (x == v).then_some(Known(x)),
            (_, RegOp::Write(v)) => Some(Known(v)),
            (Unknown, RegOp::CasOk { to, .. }) => Some(Known(to)),
            (Known(x), RegOp::CasOk { from, to }) => (x == from).then_some(Known(to)),
            // "Not `from`": unknown is the closest (more permissive) state.
            (Unknown, RegOp::CasFailed { .. }) => Some(Unknown),
            (Known(x), RegOp::CasFailed { from }) => (x != from).then_some(Known(x)),
            (Unknown, RegOp::CasInfo { .. }) => Some(Unknown),
            (Known(x), RegOp::CasInfo { from, to }) => Some(Known(if x == from { to } else { x })),
        }
    }
}

/// One key's operations, in invocation order, with their history ops.
struct KeyHistory<'a> {
    key: String,
    ops: Vec<&'a Op>,
    entries: Vec<Entry<RegOp>>,
}

fn intern(ids: &mut HashMap<String, u32>, v: &str) -> u32 {
    let next = ids.len() as u32 + 1;
    *ids.entry(v.to_string()).or_insert(next)
}

/// A key's history while it is being collected: its ops, their entries,
/// and the value ids given out so far.
type Building<'a> = (Vec<&'a Op>, Vec<Entry<RegOp>>, HashMap<String, u32>);

/// Splits the register operations of `h` by key.
fn by_key(h: &History) -> Vec<KeyHistory<'_>> {
    let mut keys: BTreeMap<String, Building<'_>> = BTreeMap::new();
    for op in &h.ops {
        let key = match &op.call {
            Call::Read {
                key,
                serializable: false,
                ..
            }
            | Call::Write { key, .. }
            | Call::Cas { key, .. } => key,
            _ => continue,
        };
        let (ops, entries, ids) = keys.entry(key.clone()).or_default();
        let ret = match op.outcome {
            Outcome::Ok => Some(op.complete_ns),
            Outcome::Info => None,
            Outcome::Fail => continue,
        };
        let reg = match (&op.call, &op.ret) {
            (Call::Read { .. }, Some(Ret::Read { value, .. })) if ret.is_some() => {
                RegOp::Read(value.as_deref().map_or(0, |v| intern(ids, v)))
            }
            (Call::Read { .. }, _) => continue,
            (Call::Write { value, .. }, _) => RegOp::Write(intern(ids, value)),
            (Call::Cas { from, to, .. }, r) => {
                let (from, to) = (intern(ids, from), intern(ids, to));
                match (ret, r) {
                    (None, _) => RegOp::CasInfo { from, to },
                    (
                        Some(_),
                        Some(Ret::Txn {
                            succeeded: true, ..
                        }),
                    ) => RegOp::CasOk { from, to },
                    (
                        Some(_),
                        Some(Ret::Txn {
                            succeeded: false, ..
                        }),
                    ) => RegOp::CasFailed { from },
                    // An ok CAS without its result: treat as unknown.
                    (Some(_), _) => RegOp::CasInfo { from, to },
                }
            }
            _ => continue,
        };
        ops.push(op);
        entries.push(Entry {
            op: reg,
            call: op.invoke_ns,
            ret,
        });
    }
    keys.into_iter()
        .map(|(key, (ops, entries, _))| KeyHistory { key, ops, entries })
        .collect()
}

/// Indices of indeterminate writes whose value nobody observed.
fn unobserved_info_writes(entries: &[Entry<RegOp>]) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    for e in entries {
        match e.op {
            RegOp::Read(v) if e.ret.is_some() => {
                seen.insert(v);
            }
            RegOp::CasOk { from, .. } => {
                seen.insert(from);
            }
            _ => {}
        }
    }
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.ret.is_none())
        .filter(|(_, e)| match e.op {
            RegOp::Write(v) | RegOp::CasInfo { to: v, .. } => !seen.contains(&v),
            _ => false,
        })
        .map(|(i, _)| i)
        .collect()
}

/// Checks one key's entries: the pruned history first, then the full one.
pub fn check_entries(entries: &[Entry<RegOp>], budget: u64) -> Verdict {
    let skip = unobserved_info_writes(entries);
    if !skip.is_empty() {
        let pruned: Vec<Entry<RegOp>> = entries
            .iter()
            .enumerate()
            .filter(|(i, _)| !skip.contains(i))
            .map(|(_, e)| e.clone())
            .collect();
        if linearizable::check(&Register, RegState::Known(0), &pruned, budget)
            == Verdict::Linearizable
        {
            return Verdict::Linearizable;
        }
    }
    linearizable::check(&Register, RegState::Known(0), entries, budget)
}

/// The operations a window over `[i, j]` (indices in invocation order) must
/// contain so that its verdict carries over to the whole history, and the
/// window's start time `t`.
///
/// Every operation with a known outcome that returned before `t` is left
/// out, and precedes the whole window in any linearization; every other
/// operation invoked before the window's last known return is in. An
/// indeterminate operation invoked before `t` is checked as if invoked at
/// `t`: had it taken effect earlier, that is part of the (unknown) state at
/// `t`, and it can still be placed last in the window, where it changes
/// nothing that is checked.
fn closure(entries: &[Entry<RegOp>], i: usize, j: usize) -> (BTreeSet<usize>, u64) {
    let mut w: BTreeSet<usize> = (i..=j).collect();
    loop {
        let known = || w.iter().filter(|&&k| entries[k].ret.is_some());
        let t = known()
            .map(|&k| entries[k].call)
            .min()
            .or_else(|| w.iter().map(|&k| entries[k].call).min())
            .unwrap_or(0);
        let hi = known()
            .filter_map(|&k| entries[k].ret)
            .max()
            .unwrap_or(t)
            .max(t);
        let before = w.len();
        for (k, e) in entries.iter().enumerate() {
            if w.contains(&k) {
                continue;
            }
            let inside = match e.ret {
                Some(r) => e.call <= hi && r >= t,
                None => e.call <= hi,
            };
            if inside {
                w.insert(k);
            }
        }
        if w.len() == before {
            return (w, t);
        }
    }
}

fn window_fails(entries: &[Entry<RegOp>], (w, t): &(BTreeSet<usize>, u64)) -> bool {
    // Nothing left out before the window: the true initial state.
    let from_start = entries
        .iter()
        .enumerate()
        .all(|(k, e)| w.contains(&k) || e.ret.is_none_or(|r| r >= *t));
    let init = if from_start {
        RegState::Known(0)
    } else {
        RegState::Unknown
    };
    let sub: Vec<Entry<RegOp>> = w
        .iter()
        .map(|&k| {
            let mut e = entries[k].clone();
            if e.ret.is_none() {
                e.call = e.call.max(*t);
            }
            e
        })
        .collect();
    matches!(
        linearizable::check(&Register, init, &sub, WINDOW_BUDGET),
        Verdict::NotLinearizable { .. }
    )
}

/// The smallest failing window found by shrinking a failing history.
pub fn smallest_window(entries: &[Entry<RegOp>]) -> BTreeSet<usize> {
    let n = entries.len();
    if n == 0 {
        return BTreeSet::new();
    }
    // Shortest failing prefix.
    let (mut lo, mut hi) = (0usize, n - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if window_fails(entries, &closure(entries, 0, mid)) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let j = hi;
    // Latest start that still fails.
    let (mut lo, mut hi) = (0usize, j);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if window_fails(entries, &closure(entries, mid, j)) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let w = closure(entries, lo, j);
    if window_fails(entries, &w) {
        w.0
    } else {
        // Shrinking found nothing smaller that the budget could decide.
        (0..n).collect()
    }
}

/// Checks every key of the register workload.
pub fn check(h: &History, budget: u64) -> CheckResult {
    let keys = by_key(h);
    let mut result = CheckResult::new("register");
    let (mut ok, mut info, mut reads) = (0usize, 0usize, 0usize);
    let mut unknown = Vec::new();
    for k in &keys {
        ok += k.entries.iter().filter(|e| e.ret.is_some()).count();
        info += k.entries.iter().filter(|e| e.ret.is_none()).count();
        reads += k
            .entries
            .iter()
            .filter(|e| matches!(e.op, RegOp::Read(_)))
            .count();
        match check_entries(&k.entries, budget) {
            Verdict::Linearizable => {}
            Verdict::Unknown => unknown.push(k.key.clone()),
            Verdict::NotLinearizable { stuck } => {
                let w = smallest_window(&k.entries);
                let stuck_op = k.ops.get(stuck).map(|o| o.id);
                result.violations.push(Violation {
                    what: format!(
                        "key {} is not linearizable ({} ops in the smallest window; no order explains op {})",
                        k.key,
                        w.len(),
                        stuck_op.map_or("?".to_string(), |id| id.to_string())
                    ),
                    window: w.iter().filter_map(|&i| k.ops.get(i).map(|o| (*o).clone())).collect(),
                });
            }
        }
    }
    let failed = h
        .ops
        .iter()
        .filter(|o| {
            o.outcome == Outcome::Fail && matches!(o.call, Call::Write { .. } | Call::Cas { .. })
        })
        .count();
    result.checked = ok + info;
    result.summary = format!(
        "{} keys, {} ops checked ({} ok incl. {} reads, {} indeterminate; {} failed writes dropped)",
        keys.len(),
        ok + info,
        ok,
        reads,
        info,
        failed
    );
    if !unknown.is_empty() {
        result.notes.push(format!(
            "search budget exhausted for keys {}: linearizability not decided",
            unknown.join(", ")
        ));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Recorder, RunMeta};

    /// Builds a history of register ops on key "k" from
    /// (process, invoke, complete, call, outcome, ret).
    fn hist(ops: Vec<(u32, u64, u64, Call, Outcome, Option<Ret>)>) -> History {
        let mut h = Recorder::new().snapshot(RunMeta::default());
        for (i, (p, inv, comp, call, outcome, ret)) in ops.into_iter().enumerate() {
            h.ops.push(Op {
                id: i as u64,
                process: p,
                invoke_ns: inv,
                complete_ns: comp,
                call,
                outcome,
                ret,
                error: None,
                member: None,
            });
        }
        h.ops.sort_by_key(|o| (o.invoke_ns, o.id));
        h
    }

    fn w(v: &str) -> Call {
        Call::Write {
            key: "k".into(),
            value: v.into(),
        }
    }
    fn r() -> Call {
        Call::Read {
            key: "k".into(),
            serializable: false,
            fault: false,
        }
    }
    fn cas(f: &str, t: &str) -> Call {
        Call::Cas {
            key: "k".into(),
            from: f.into(),
            to: t.into(),
        }
    }
    fn read(v: Option<&str>) -> Option<Ret> {
        Some(Ret::Read {
            value: v.map(str::to_string),
            mod_revision: 0,
            revision: 0,
        })
    }
    fn wrote() -> Option<Ret> {
        Some(Ret::Written { revision: 0 })
    }
    fn txn(ok: bool) -> Option<Ret> {
        Some(Ret::Txn {
            succeeded: ok,
            revision: 0,
        })
    }
    use Outcome::{Fail, Info, Ok as Done};

    #[test]
    fn linearizable_history_passes() {
        let h = hist(vec![
            (1, 0, 10, w("a"), Done, wrote()),
            (2, 5, 15, r(), Done, read(Some("a"))),
            (3, 12, 20, cas("a", "b"), Done, txn(true)),
            (1, 13, 14, r(), Done, read(Some("a"))),
            (2, 21, 22, cas("a", "c"), Done, txn(false)),
            (2, 23, 24, r(), Done, read(Some("b"))),
            // An indeterminate write that later shows up.
            (4, 25, 26, w("d"), Info, None),
            (1, 30, 31, r(), Done, read(Some("d"))),
            // A failed write never happened; an unread indeterminate one may not have.
            (3, 32, 33, w("e"), Fail, None),
            (4, 34, 35, w("f"), Info, None),
            (1, 40, 41, r(), Done, read(Some("d"))),
        ]);
        let res = check(&h, BUDGET);
        assert!(res.violations.is_empty(), "{res:?}");
        assert!(res.notes.is_empty(), "{res:?}");
        assert_eq!(res.checked, 10);
    }

    #[test]
    fn stale_read_is_a_violation_with_a_small_window() {
        let mut ops = vec![
            (1, 0, 10, w("a"), Done, wrote()),
            (2, 11, 12, r(), Done, read(Some("a"))),
        ];
        // Lots of unrelated, correct traffic before the stale read.
        for i in 0..40u64 {
            let v = format!("v{i}");
            ops.push((1, 20 + 10 * i, 25 + 10 * i, w(&v), Done, wrote()));
            ops.push((2, 26 + 10 * i, 28 + 10 * i, r(), Done, read(Some(&v))));
        }
        // v39 was acknowledged at 415; a read starting after that sees v38.
        ops.push((3, 500, 510, r(), Done, read(Some("v38"))));
        ops.push((1, 520, 530, r(), Done, read(Some("v39"))));
        let h = hist(ops);
        let res = check(&h, BUDGET);
        assert_eq!(res.violations.len(), 1, "{res:?}");
        let v = &res.violations[0];
        assert!(v.what.contains("key k is not linearizable"), "{}", v.what);
        // The window holds the write of v39, the read of v39 and the stale read.
        assert!(v.window.len() <= 4, "{:#?}", v.window);
        assert!(v.window.iter().any(|o| o.invoke_ns == 500));
    }

    #[test]
    fn lost_write_is_a_violation() {
        // "b" was acknowledged, yet a later read sees the value before it.
        let h = hist(vec![
            (1, 0, 10, w("a"), Done, wrote()),
            (1, 11, 20, w("b"), Done, wrote()),
            (2, 30, 40, r(), Done, read(Some("a"))),
        ]);
        let res = check(&h, BUDGET);
        assert_eq!(res.violations.len(), 1, "{res:?}");
        assert_eq!(res.violations[0].window.len(), 2, "{res:?}");
    }

    #[test]
    fn failed_write_that_shows_up_is_a_violation() {
        // A write reported as definitely failed must not be read.
        let h = hist(vec![
            (1, 0, 10, w("a"), Fail, None),
            (2, 30, 40, r(), Done, read(Some("a"))),
        ]);
        assert_eq!(check(&h, BUDGET).violations.len(), 1);
    }

    #[test]
    fn failed_cas_needs_a_different_value() {
        let h = hist(vec![
            (1, 0, 10, w("a"), Done, wrote()),
            (2, 11, 20, cas("a", "b"), Done, txn(false)),
        ]);
        assert_eq!(check(&h, BUDGET).violations.len(), 1);
        // ... which an unread indeterminate write can explain.
        let h = hist(vec![
            (1, 0, 10, w("a"), Done, wrote()),
            (3, 1, 2, w("z"), Info, None),
            (2, 11, 20, cas("a", "b"), Done, txn(false)),
        ]);
        assert!(check(&h, BUDGET).violations.is_empty());
    }

    #[test]
    fn serializable_reads_are_not_checked() {
        let h = hist(vec![
            (1, 0, 10, w("a"), Done, wrote()),
            (
                2,
                30,
                40,
                Call::Read {
                    key: "k".into(),
                    serializable: true,
                    fault: false,
                },
                Done,
                read(None),
            ),
        ]);
        assert!(check(&h, BUDGET).violations.is_empty());
    }

    #[test]
    fn long_overlapping_history_is_checked_within_budget() {
        // 30,000 operations, each overlapping its neighbours, with some
        // indeterminate writes (observed and not): applied in call order.
        let mut entries = Vec::new();
        let mut state = 0u32;
        let mut next_value = 1u32;
        for i in 0..30_000u64 {
            let call = i * 2;
            let (op, ret) = match i % 5 {
                0 | 3 => (RegOp::Read(state), Some(call + 5)),
                1 => {
                    state = next_value;
                    next_value += 1;
                    (
                        RegOp::Write(state),
                        if i % 7 == 1 { None } else { Some(call + 5) },
                    )
                }
                2 => {
                    let to = next_value;
                    next_value += 1;
                    let from = state;
                    state = to;
                    (RegOp::CasOk { from, to }, Some(call + 5))
                }
                _ => (
                    RegOp::CasFailed {
                        from: state + 1_000_000,
                    },
                    Some(call + 5),
                ),
            };
            entries.push(Entry { op, call, ret });
        }
        // An indeterminate write nobody saw.
        entries.push(Entry {
            op: RegOp::Write(next_value),
            call: 10,
            ret: None,
        });
        assert_eq!(check_entries(&entries, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn windows_are_closed_under_overlap() {
        let e = |call, ret| Entry {
            op: RegOp::Write(1),
            call,
            ret,
        };
        let entries = vec![
            e(0, Some(100)),
            e(10, Some(20)),
            e(30, None),
            e(200, Some(210)),
        ];
        // [1..=1] overlaps op 0; op 2 is indeterminate and invoked before op 0 ends.
        let (w, t) = closure(&entries, 1, 1);
        assert_eq!((w, t), ([0, 1, 2].into_iter().collect(), 0));
        // Op 2 is in, but does not pull the start back to its invocation.
        assert_eq!(closure(&entries, 3, 3), ([2, 3].into_iter().collect(), 200));
    }
}
