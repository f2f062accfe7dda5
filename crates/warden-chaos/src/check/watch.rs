//! The watch checker. Watchers follow the workloads' key prefix from
//! revision 1, moving to another member (resuming after the last revision
//! they saw) whenever a stream fails. At the end the harness replays the
//! prefix from revision 1 on a healthy member: the canonical history.
//! Checked:
//!
//! - the canonical history is ordered by revision with no (revision, key)
//!   twice, and reaches the final revision read at the end;
//! - every watcher saw exactly the canonical history, in order, each event
//!   once (its sequence equals the canonical one), and caught up;
//! - the canonical history agrees with what clients were told: every
//!   acknowledged write appears at the revision its response named with
//!   the value written, every read's (value, mod revision) is there, and
//!   no write reported as definitely failed appears.

use std::collections::{BTreeMap, HashMap};

use super::{CheckResult, Violation};
use crate::history::{Call, EventKind, History, Op, Outcome, Ret, WatchEvent, CANONICAL_WATCHER};

type Key = (i64, String);

/// What the canonical history holds at (revision, key).
fn canonical_index(events: &[&WatchEvent]) -> HashMap<Key, (EventKind, String)> {
    events
        .iter()
        .map(|e| ((e.revision, e.key.clone()), (e.kind, e.value.clone())))
        .collect()
}

fn same(a: &WatchEvent, b: &WatchEvent) -> bool {
    a.revision == b.revision && a.key == b.key && a.kind == b.kind && a.value == b.value
}

fn describe(e: &WatchEvent) -> String {
    format!(
        "{:?} {}={:?} @{} (watcher {} session {} on {})",
        e.kind, e.key, e.value, e.revision, e.watcher, e.session, e.member
    )
}

/// Maximal runs of consecutive events with the same revision.
fn runs<'a>(events: &[&'a WatchEvent]) -> Vec<Vec<&'a WatchEvent>> {
    let mut out: Vec<Vec<&WatchEvent>> = Vec::new();
    for e in events {
        match out.last_mut() {
            Some(run) if run[0].revision == e.revision => run.push(e),
            _ => out.push(vec![e]),
        }
    }
    out
}

/// The events with each run of one revision sorted by key (the order
/// across revisions is kept as received).
fn normalized<'a>(events: &[&'a WatchEvent]) -> Vec<&'a WatchEvent> {
    runs(events)
        .into_iter()
        .flat_map(|mut r| {
            r.sort_by(|a, b| a.key.cmp(&b.key));
            r
        })
        .collect()
}

/// Writes the register, bank and lock workloads were told succeeded:
/// (op, revision, key, value).
fn acknowledged_writes<'a>(
    h: &'a History,
    key_of: &dyn Fn(&Call) -> Vec<(String, String)>,
) -> Vec<(&'a Op, i64, String, String)> {
    let mut out = Vec::new();
    for op in &h.ops {
        if op.outcome != Outcome::Ok {
            continue;
        }
        let rev = match op.ret {
            Some(Ret::Written { revision }) => revision,
            Some(Ret::Txn {
                succeeded: true,
                revision,
            }) => revision,
            _ => continue,
        };
        for (k, v) in key_of(&op.call) {
            out.push((op, rev, k, v));
        }
        // An applied increment's marker (its key names the process).
        if let Call::Increment {
            counter, from, seq, ..
        } = op.call
        {
            let marker = crate::workload::counter::MarkerValue::Applied {
                counter,
                to: from + 1,
            };
            out.push((
                op,
                rev,
                crate::workload::keys::increment_marker(op.process, seq),
                marker.render(),
            ));
        }
    }
    out
}

/// The keys and values a write call puts, as the workloads name them.
pub fn written(call: &Call) -> Vec<(String, String)> {
    use crate::workload::keys;
    match call {
        Call::Write { key, value } => vec![(key.clone(), value.clone())],
        Call::Cas { key, to, .. } => vec![(key.clone(), to.clone())],
        Call::Transfer {
            from,
            to,
            from_balance,
            to_balance,
            ..
        } => vec![
            (keys::account(*from), from_balance.to_string()),
            (keys::account(*to), to_balance.to_string()),
        ],
        Call::FencedIncr { lock, to, .. } => vec![(keys::counter(lock), to.to_string())],
        // The applied branch (`acknowledged_writes` takes succeeded Txns
        // and adds the marker, whose key names the process).
        Call::Increment { counter, from, .. } => {
            vec![(keys::count(*counter), (from + 1).to_string())]
        }
        _ => Vec::new(),
    }
}

pub fn check(h: &History) -> CheckResult {
    let mut result = CheckResult::new("watch");
    let mut streams: BTreeMap<u32, Vec<&WatchEvent>> = BTreeMap::new();
    for e in &h.events {
        streams.entry(e.watcher).or_default().push(e);
    }
    let canonical = streams.remove(&CANONICAL_WATCHER).unwrap_or_default();
    let final_rev = h.meta.final_revision;
    let replayed = h.ops.iter().any(|o| {
        matches!(
            o.call,
            Call::WatchSession {
                watcher: CANONICAL_WATCHER,
                ..
            }
        ) && o.outcome == Outcome::Ok
    });
    if !replayed {
        result.summary = format!(
            "not checked: the final replay did not complete; watchers {}",
            streams
                .iter()
                .map(|(w, e)| format!("{w}: {} events", e.len()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        result.notes.push(
            "no final replay to compare with (did the cluster recover after the faults?)".into(),
        );
        return result;
    }

    // The canonical history itself.
    let mut last: Option<&WatchEvent> = None;
    let mut keys_at_rev: HashMap<Key, usize> = HashMap::new();
    for (i, e) in canonical.iter().enumerate() {
        if let Some(p) = last {
            if e.revision < p.revision {
                result.violations.push(Violation {
                    what: format!(
                        "the final replay goes back from revision {} to {}: {}",
                        p.revision,
                        e.revision,
                        describe(e)
                    ),
                    window: Vec::new(),
                });
            }
        }
        if keys_at_rev.insert((e.revision, e.key.clone()), i).is_some() {
            result.violations.push(Violation {
                what: format!(
                    "the final replay has key {} twice at revision {}",
                    e.key, e.revision
                ),
                window: Vec::new(),
            });
        }
        last = Some(e);
    }
    let canon_last = canonical.last().map_or(0, |e| e.revision);
    if final_rev > 0 && canon_last < final_rev {
        result.violations.push(Violation {
            what: format!(
                "the final replay stops at revision {canon_last}, before the final revision {final_rev}"
            ),
            window: Vec::new(),
        });
    }

    // Each watcher against it. Unless the run asked for strict order, the
    // events of one revision (one transaction) may come in any order; how
    // often a watcher's order differed from the replay's is reported.
    let strict = h.meta.strict_watch_order;
    let canonical_runs: HashMap<i64, Vec<&str>> = runs(&canonical)
        .into_iter()
        .map(|r| (r[0].revision, r.iter().map(|e| e.key.as_str()).collect()))
        .collect();
    let canon_cmp = if strict {
        canonical.clone()
    } else {
        normalized(&canonical)
    };
    let mut watcher_notes = Vec::new();
    let mut reordered_total = 0usize;
    for (w, evs) in &streams {
        let sessions = evs.iter().map(|e| e.session).max().map_or(0, |s| s + 1);
        let reordered = runs(evs)
            .iter()
            .filter(|r| {
                canonical_runs.get(&r[0].revision).is_some_and(|keys| {
                    keys.len() == r.len() && keys.iter().zip(r.iter()).any(|(k, e)| *k != e.key)
                })
            })
            .count();
        reordered_total += reordered;
        let cmp = if strict { evs.clone() } else { normalized(evs) };
        let mismatch = cmp
            .iter()
            .zip(canon_cmp.iter())
            .position(|(a, b)| !same(a, b));
        if let Some(i) = mismatch {
            let got = cmp[i];
            let want = canon_cmp[i];
            let prev = if i > 0 { Some(cmp[i - 1]) } else { None };
            result.violations.push(Violation {
                what: format!(
                    "watcher {w}: event #{i} is {} but the history has {}{}",
                    describe(got),
                    describe(want),
                    prev.map_or(String::new(), |p| format!(
                        "; the one before was {}",
                        describe(p)
                    ))
                ),
                window: Vec::new(),
            });
        } else if cmp.len() > canon_cmp.len() {
            result.violations.push(Violation {
                what: format!(
                    "watcher {w}: saw {} events, more than the {} of the history; the first extra one is {}",
                    cmp.len(),
                    canon_cmp.len(),
                    describe(cmp[canon_cmp.len()])
                ),
                window: Vec::new(),
            });
        } else if cmp.len() < canon_cmp.len() {
            let reached = evs.last().map_or(0, |e| e.revision);
            result.violations.push(Violation {
                what: format!(
                    "watcher {w}: saw {} of {} events (up to revision {reached}; missing from {}) and did not catch up",
                    cmp.len(),
                    canon_cmp.len(),
                    describe(canon_cmp[cmp.len()])
                ),
                window: Vec::new(),
            });
        }
        watcher_notes.push(format!("{w}: {} events/{sessions} sessions", evs.len()));
    }
    if reordered_total > 0 && !strict {
        result.notes.push(format!(
            "{reordered_total} multi-key revisions reached live watchers in a different order than the replay from history (live: transaction order; replay: key order; etcd keeps transaction order in both) — see docs/testing.md"
        ));
    }

    // Against what clients were told.
    let index = canonical_index(&canonical);
    let acked = acknowledged_writes(h, &written);
    let mut missing = 0;
    for (op, rev, key, value) in &acked {
        match index.get(&(*rev, key.clone())) {
            Some((EventKind::Put, v)) if v == value => {}
            other => {
                missing += 1;
                if missing <= 5 {
                    result.violations.push(Violation {
                        what: format!(
                            "acknowledged write of {key}={value:?} at revision {rev} (op {}) is not in the history ({})",
                            op.id,
                            match other {
                                Some((k, v)) => format!("it has {k:?} {v:?} there"),
                                None => "nothing for that key there".into(),
                            }
                        ),
                        window: vec![(*op).clone()],
                    });
                }
            }
        }
    }
    let mut reads = 0;
    for op in &h.ops {
        let (
            Outcome::Ok,
            Some(Ret::Read {
                value: Some(v),
                mod_revision,
                ..
            }),
        ) = (op.outcome, &op.ret)
        else {
            continue;
        };
        let key = match &op.call {
            Call::Read { key, .. } => key.clone(),
            Call::CounterRead { lock } => crate::workload::keys::counter(lock),
            Call::CounterGet { counter } => crate::workload::keys::count(*counter),
            _ => continue,
        };
        reads += 1;
        match index.get(&(*mod_revision, key.clone())) {
            Some((EventKind::Put, hv)) if hv == v => {}
            other => result.violations.push(Violation {
                what: format!(
                    "read of {key} (op {}) returned {v:?} with mod revision {mod_revision}, but the history has {}",
                    op.id,
                    match other {
                        Some((k, hv)) => format!("{k:?} {hv:?} there"),
                        None => "nothing for that key there".into(),
                    }
                ),
                window: vec![op.clone()],
            }),
        }
    }
    let values: HashMap<(&str, &str), i64> = canonical
        .iter()
        .filter(|e| e.kind == EventKind::Put)
        .map(|e| ((e.key.as_str(), e.value.as_str()), e.revision))
        .collect();
    for op in &h.ops {
        if op.outcome != Outcome::Fail {
            continue;
        }
        // Only register values are unique enough to tell.
        let (key, value) = match &op.call {
            Call::Write { key, value } => (key, value),
            Call::Cas { key, to, .. } => (key, to),
            _ => continue,
        };
        if let Some(rev) = values.get(&(key.as_str(), value.as_str())) {
            result.violations.push(Violation {
                what: format!(
                    "write of {key}={value:?} (op {}) was reported as failed ({}) but was applied at revision {rev}",
                    op.id,
                    op.error.as_deref().unwrap_or("")
                ),
                window: vec![op.clone()],
            });
        }
    }
    result.checked = canonical.len() * streams.len().max(1);
    result.summary = format!(
        "{} events in the final history (to revision {canon_last}); watchers {}; {} acknowledged writes and {reads} reads found in it",
        canonical.len(),
        if watcher_notes.is_empty() {
            "-".into()
        } else {
            watcher_notes.join(", ")
        },
        acked.len() - missing,
    );
    if canonical.is_empty() {
        result
            .notes
            .push("no final replay: nothing to compare".into());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::RunMeta;

    fn ev(watcher: u32, session: u32, rev: i64, key: &str, value: &str) -> WatchEvent {
        WatchEvent {
            watcher,
            session,
            member: "n1".into(),
            revision: rev,
            key: key.into(),
            kind: EventKind::Put,
            value: value.into(),
            recv_ns: 0,
        }
    }

    fn write_op(key: &str, value: &str, rev: i64, outcome: Outcome) -> Op {
        Op {
            id: rev as u64,
            process: 1,
            invoke_ns: rev as u64,
            complete_ns: rev as u64 + 1,
            call: Call::Write {
                key: key.into(),
                value: value.into(),
            },
            outcome,
            ret: (outcome == Outcome::Ok).then_some(Ret::Written { revision: rev }),
            error: None,
            member: None,
        }
    }

    fn history(events: Vec<WatchEvent>, mut ops: Vec<Op>, final_rev: i64) -> History {
        ops.push(Op {
            id: 1000,
            process: 0,
            invoke_ns: 1000,
            complete_ns: 1001,
            call: Call::WatchSession {
                watcher: CANONICAL_WATCHER,
                member: "n1".into(),
                from_revision: 1,
            },
            outcome: Outcome::Ok,
            ret: None,
            error: None,
            member: None,
        });
        History {
            meta: RunMeta {
                final_revision: final_rev,
                ..Default::default()
            },
            ops,
            events,
        }
    }

    fn canon() -> Vec<WatchEvent> {
        vec![
            ev(0, 0, 2, "a", "1"),
            ev(0, 0, 3, "b", "2"),
            ev(0, 0, 3, "c", "3"),
            ev(0, 0, 4, "a", "4"),
        ]
    }

    #[test]
    fn without_a_final_replay_nothing_is_claimed() {
        let mut h = history(
            vec![ev(1, 0, 2, "a", "1")],
            vec![write_op("a", "1", 2, Outcome::Ok)],
            0,
        );
        h.ops
            .retain(|o| !matches!(o.call, Call::WatchSession { .. }));
        let r = check(&h);
        assert!(r.violations.is_empty(), "{r:?}");
        assert!(r.summary.starts_with("not checked"), "{r:?}");
    }

    #[test]
    fn matching_watchers_pass() {
        let mut events = canon();
        // Watcher 1 reconnected after revision 3.
        events.extend([
            ev(1, 0, 2, "a", "1"),
            ev(1, 0, 3, "b", "2"),
            ev(1, 0, 3, "c", "3"),
            ev(1, 1, 4, "a", "4"),
        ]);
        let ops = vec![
            write_op("a", "1", 2, Outcome::Ok),
            write_op("a", "4", 4, Outcome::Info),
            write_op("z", "9", 5, Outcome::Fail),
        ];
        let r = check(&history(events, ops, 4));
        assert!(r.violations.is_empty(), "{r:?}");
    }

    #[test]
    fn duplicate_missing_and_reordered_events_are_caught() {
        let mut events = canon();
        // Duplicate after a reconnect.
        events.extend([
            ev(1, 0, 2, "a", "1"),
            ev(1, 0, 3, "b", "2"),
            ev(1, 0, 3, "c", "3"),
            ev(1, 1, 3, "c", "3"),
            ev(1, 1, 4, "a", "4"),
        ]);
        // Half a revision lost across a reconnect.
        events.extend([
            ev(2, 0, 2, "a", "1"),
            ev(2, 0, 3, "b", "2"),
            ev(2, 1, 4, "a", "4"),
        ]);
        // Did not catch up.
        events.extend([ev(3, 0, 2, "a", "1")]);
        let r = check(&history(events, Vec::new(), 4));
        assert_eq!(r.violations.len(), 3, "{r:?}");
        assert!(
            r.violations[0].what.starts_with("watcher 1: event #3"),
            "{r:?}"
        );
        assert!(
            r.violations[1].what.starts_with("watcher 2: event #2"),
            "{r:?}"
        );
        assert!(r.violations[2].what.contains("did not catch up"), "{r:?}");
    }

    #[test]
    fn order_within_a_revision_is_a_note_unless_strict() {
        let mut events = canon();
        events.extend([
            ev(1, 0, 2, "a", "1"),
            ev(1, 0, 3, "c", "3"),
            ev(1, 0, 3, "b", "2"),
            ev(1, 0, 4, "a", "4"),
        ]);
        let mut h = history(events, Vec::new(), 4);
        let r = check(&h);
        assert!(r.violations.is_empty(), "{r:?}");
        assert!(r.notes[0].starts_with("1 multi-key revisions"), "{r:?}");
        h.meta.strict_watch_order = true;
        assert_eq!(check(&h).violations.len(), 1);
    }

    #[test]
    fn acknowledged_write_missing_or_failed_write_present_is_caught() {
        let ops = vec![
            write_op("a", "1", 2, Outcome::Ok),
            // Acknowledged at revision 5, which the history does not have.
            write_op("a", "7", 5, Outcome::Ok),
            // Reported failed but applied at revision 3.
            write_op("b", "2", 3, Outcome::Fail),
        ];
        let r = check(&history(canon(), ops, 4));
        assert_eq!(r.violations.len(), 2, "{r:?}");
        assert!(r.violations[0].what.contains("a=\"7\" at revision 5"));
        assert!(r.violations[1].what.contains("reported as failed"));
    }
}
