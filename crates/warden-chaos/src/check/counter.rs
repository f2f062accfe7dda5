//! The counter checker: exactly-once increments (`workload::counter`).
//! Every increment is a Txn tagged with its client's id and a request id,
//! which the library may send more than once; each puts a marker of its
//! own (`keys::increment_marker`) in either branch. From the final read of
//! every counter and marker at one revision, and the clients' record:
//!
//! - **at most once** — every marker has version 1 (a Txn applied twice
//!   rewrites its marker); no marker belongs to an increment that was never
//!   invoked or that was reported as definitely failed;
//! - **acknowledged ones exactly once, as answered** — every acknowledged
//!   increment left its marker, saying what the response said (applied or
//!   refused by its compare) at the revision the response named; a retry
//!   answered from the first attempt's response cannot differ from it;
//! - **the counters add up** — each counter's value is the number of
//!   "applied" markers for it, those markers wrote 1, 2, ..., value (no two
//!   increments wrote the same value), the key's version is value + 1 (the
//!   creation plus one put per increment), and so the value lies between the
//!   acknowledged increments and those plus the indeterminate ones;
//! - **reads** — a linearizable read of a counter returns at least the
//!   increments acknowledged before it was invoked and at most those (plus
//!   the indeterminate ones) invoked before it completed.
//!
//! Without a final read (no leader at the end) only the reads and the
//! responses are checked.

use std::collections::{BTreeMap, HashMap};

use super::{overlapping, CheckResult, Violation};
use crate::history::{Call, History, Marker, Op, Outcome, Ret};
use crate::workload::counter::MarkerValue;

/// At most this many violations of one kind are listed.
const MAX_LISTED: usize = 10;

#[derive(Default)]
struct Listed {
    by_kind: HashMap<&'static str, usize>,
}

impl Listed {
    fn push(&mut self, r: &mut CheckResult, kind: &'static str, what: String, window: Vec<Op>) {
        let n = self.by_kind.entry(kind).or_default();
        *n += 1;
        if *n <= MAX_LISTED {
            r.violations.push(Violation { what, window });
        }
    }

    fn finish(&self, r: &mut CheckResult) {
        for (kind, n) in &self.by_kind {
            if *n > MAX_LISTED {
                r.violations.push(Violation {
                    what: format!("… and {} more of kind {kind:?}", n - MAX_LISTED),
                    window: Vec::new(),
                });
            }
        }
    }
}

fn succeeded(op: &Op) -> Option<(bool, i64)> {
    match (op.outcome, &op.ret) {
        (
            Outcome::Ok,
            Some(Ret::Txn {
                succeeded,
                revision,
            }),
        ) => Some((*succeeded, *revision)),
        _ => None,
    }
}

pub fn check(h: &History) -> CheckResult {
    let mut r = CheckResult::new("counter");
    let mut listed = Listed::default();

    // The increments by (process, seq).
    let mut incs: HashMap<(u32, u64), &Op> = HashMap::new();
    for op in &h.ops {
        if let Call::Increment { seq, .. } = op.call {
            if incs.insert((op.process, seq), op).is_some() {
                r.notes.push(format!(
                    "harness bug: increment {seq} of client {} recorded twice",
                    op.process
                ));
            }
        }
    }
    let count = |pred: &dyn Fn(&Op) -> bool| incs.values().filter(|o| pred(o)).count();
    let acked_applied = count(&|o| succeeded(o).is_some_and(|(s, _)| s));
    let acked_refused = count(&|o| succeeded(o).is_some_and(|(s, _)| !s));
    let info = count(&|o| o.outcome == Outcome::Info);
    let failed = count(&|o| o.outcome == Outcome::Fail);

    // Acknowledged increments of one counter wrote distinct values.
    let mut written: HashMap<(u32, i64), &Op> = HashMap::new();
    for op in &h.ops {
        if let (Call::Increment { counter, from, .. }, Some((true, _))) = (&op.call, succeeded(op))
        {
            if let Some(other) = written.insert((*counter, from + 1), op) {
                listed.push(
                    &mut r,
                    "same value",
                    format!(
                        "ops {} and {} both set counter {counter} from {from} to {}: an increment was lost",
                        other.id,
                        op.id,
                        from + 1
                    ),
                    vec![other.clone(), op.clone()],
                );
            }
        }
    }

    let reads = check_reads(h, &mut r, &mut listed);

    let final_state = h.ops.iter().rev().find(|o| {
        matches!(
            (&o.call, &o.ret),
            (Call::CountersFinal, Some(Ret::Counters { .. }))
        ) && o.outcome == Outcome::Ok
    });
    let Some(Some(Ret::Counters {
        counters,
        markers,
        revision,
    })) = final_state.map(|o| &o.ret)
    else {
        r.notes
            .push("the final state could not be read: markers and counters not checked".into());
        r.checked = incs.len() + reads;
        r.summary = format!(
            "{} increments ({acked_applied} applied, {acked_refused} refused by compare, {info} indeterminate, {failed} failed), {reads} reads checked; no final state",
            incs.len()
        );
        listed.finish(&mut r);
        return r;
    };

    // Markers.
    let mut marker_of: HashMap<(u32, u64), &Marker> = HashMap::new();
    // Per counter: the values "applied" markers wrote.
    let mut applied_values: BTreeMap<u32, Vec<(i64, &Marker)>> = BTreeMap::new();
    let (mut info_applied, mut info_refused) = (0usize, 0usize);
    for m in markers {
        let key = (m.process, m.seq);
        if marker_of.insert(key, m).is_some() {
            listed.push(
                &mut r,
                "marker twice",
                format!(
                    "the final read has the marker of increment {} of client {} twice",
                    m.seq, m.process
                ),
                Vec::new(),
            );
        }
        let op = incs.get(&key).copied();
        let window = || op.map(|o| vec![o.clone()]).unwrap_or_default();
        let Some(value) = MarkerValue::parse(&m.value) else {
            listed.push(
                &mut r,
                "bad marker",
                format!(
                    "marker of increment {} of client {} holds {:?}",
                    m.seq, m.process, m.value
                ),
                window(),
            );
            continue;
        };
        if let MarkerValue::Applied { counter, to } = value {
            applied_values.entry(counter).or_default().push((to, m));
        }
        if m.version != 1 {
            listed.push(
                &mut r,
                "duplicate",
                format!(
                    "increment {} of client {} was applied {} times: its marker ({:?}, mod revision {}) has version {}",
                    m.seq, m.process, m.version, m.value, m.mod_revision, m.version
                ),
                window(),
            );
        }
        let Some(op) = op else {
            listed.push(
                &mut r,
                "phantom",
                format!(
                    "marker {:?} of increment {} of client {} (revision {}), which was never invoked",
                    m.value, m.seq, m.process, m.mod_revision
                ),
                Vec::new(),
            );
            continue;
        };
        let Call::Increment { counter, from, .. } = op.call else {
            continue;
        };
        let expected_applied = MarkerValue::Applied {
            counter,
            to: from + 1,
        };
        let expected_refused = MarkerValue::Refused { counter };
        if value != expected_applied && value != expected_refused {
            listed.push(
                &mut r,
                "wrong marker",
                format!(
                    "marker of op {} holds {:?}, expected {:?} or {:?}",
                    op.id,
                    m.value,
                    expected_applied.render(),
                    expected_refused.render()
                ),
                vec![op.clone()],
            );
            continue;
        }
        match op.outcome {
            Outcome::Fail => listed.push(
                &mut r,
                "failed but applied",
                format!(
                    "op {} was reported as failed ({}) but was applied at revision {} ({:?})",
                    op.id,
                    op.error.as_deref().unwrap_or(""),
                    m.mod_revision,
                    m.value
                ),
                vec![op.clone()],
            ),
            Outcome::Info => {
                if matches!(value, MarkerValue::Applied { .. }) {
                    info_applied += 1;
                } else {
                    info_refused += 1;
                }
            }
            Outcome::Ok => {
                let Some((ok, rev)) = succeeded(op) else {
                    continue;
                };
                let answered = if ok {
                    expected_applied
                } else {
                    expected_refused
                };
                if value != answered {
                    listed.push(
                        &mut r,
                        "answer differs",
                        format!(
                            "op {} was answered {} but its marker says {:?} (revision {}): a retry was not answered with the first attempt's response",
                            op.id,
                            if ok { "applied" } else { "refused by its compare" },
                            m.value,
                            m.mod_revision
                        ),
                        vec![op.clone()],
                    );
                } else if rev != m.mod_revision && m.version == 1 {
                    listed.push(
                        &mut r,
                        "answer revision",
                        format!(
                            "op {} was answered with revision {rev} but its marker was written at revision {}",
                            op.id, m.mod_revision
                        ),
                        vec![op.clone()],
                    );
                }
            }
        }
    }

    // Acknowledged increments whose marker is missing.
    let mut ops: Vec<&Op> = incs.values().copied().collect();
    ops.sort_by_key(|o| o.id);
    let mut info_absent = 0usize;
    for op in &ops {
        if marker_of.contains_key(&(op.process, increment_seq(op))) {
            continue;
        }
        match succeeded(op) {
            Some((ok, rev)) => listed.push(
                &mut r,
                "lost",
                format!(
                    "op {} was acknowledged ({} at revision {rev}) but left no marker: lost",
                    op.id,
                    if ok {
                        "applied"
                    } else {
                        "refused by its compare"
                    }
                ),
                vec![(*op).clone()],
            ),
            None if op.outcome == Outcome::Info => info_absent += 1,
            None => {}
        }
    }

    // The counters.
    let n = h
        .meta
        .counters
        .max(counters.iter().map(|c| c.counter + 1).max().unwrap_or(0));
    let mut totals = Vec::new();
    for k in 0..n {
        let state = counters.iter().find(|c| c.counter == k);
        let mut vals = applied_values.remove(&k).unwrap_or_default();
        vals.sort_by_key(|(v, m)| (*v, m.process, m.seq));
        let ops_of = |pred: &dyn Fn(&Op) -> bool| {
            ops.iter()
                .filter(|o| matches!(o.call, Call::Increment { counter, .. } if counter == k))
                .filter(|o| pred(o))
                .count()
        };
        let acked = ops_of(&|o| succeeded(o).is_some_and(|(s, _)| s));
        let unknown = ops_of(&|o| o.outcome == Outcome::Info);
        let Some(state) = state else {
            if acked > 0 || !vals.is_empty() {
                listed.push(
                    &mut r,
                    "counter missing",
                    format!("counter {k} is missing from the final read ({acked} increments acknowledged)"),
                    Vec::new(),
                );
            }
            continue;
        };
        let Some(value) = state.value else {
            listed.push(
                &mut r,
                "counter not a number",
                format!("counter {k} does not hold a number at the end"),
                Vec::new(),
            );
            continue;
        };
        totals.push(format!("{k}={value}"));
        let applied = vals.len() as i64;
        if value != applied {
            listed.push(
                &mut r,
                "count",
                format!(
                    "counter {k} is {value} but {applied} increments of it left an \"applied\" marker: {}",
                    if value > applied {
                        "an increment was applied twice (or its marker lost)"
                    } else {
                        "an applied increment was lost"
                    }
                ),
                Vec::new(),
            );
        }
        if state.version != value + 1 {
            listed.push(
                &mut r,
                "version",
                format!(
                    "counter {k} is {value} but was put {} times since its creation (version {}, expected {})",
                    state.version - 1,
                    state.version,
                    value + 1
                ),
                Vec::new(),
            );
        }
        for (i, (v, m)) in vals.iter().enumerate() {
            let want = i as i64 + 1;
            if *v != want {
                listed.push(
                    &mut r,
                    "values",
                    format!(
                        "the increments of counter {k} did not write 1..={applied} once each: the {}th smallest is {v} (increment {} of client {})",
                        i + 1,
                        m.seq,
                        m.process
                    ),
                    Vec::new(),
                );
                break;
            }
        }
        let (lo, hi) = (acked as i64, (acked + unknown) as i64);
        if value < lo || value > hi {
            listed.push(
                &mut r,
                "bounds",
                format!(
                    "counter {k} is {value}, outside [{lo}, {hi}] ({acked} acknowledged increments, {unknown} indeterminate)"
                ),
                Vec::new(),
            );
        }
    }
    for (k, vals) in applied_values {
        listed.push(
            &mut r,
            "unknown counter",
            format!(
                "{} markers say they incremented counter {k}, which does not exist",
                vals.len()
            ),
            Vec::new(),
        );
    }

    listed.finish(&mut r);
    r.checked = incs.len() + reads;
    r.summary = format!(
        "{} increments by {} clients ({acked_applied} applied, {acked_refused} refused by compare, {failed} failed; {info} indeterminate: {info_applied} applied, {info_refused} refused, {info_absent} never applied), {} markers at revision {revision}{}; counters {}; {reads} reads checked",
        incs.len(),
        {
            let mut p: Vec<u32> = incs.keys().map(|(p, _)| *p).collect();
            p.sort_unstable();
            p.dedup();
            p.len()
        },
        markers.len(),
        match markers.iter().filter(|m| m.version != 1).count() {
            0 => ", each written once".to_string(),
            n => format!(", {n} written more than once"),
        },
        if totals.is_empty() {
            "-".into()
        } else {
            totals.join(" ")
        }
    );
    r
}

fn increment_seq(op: &Op) -> u64 {
    match op.call {
        Call::Increment { seq, .. } => seq,
        _ => 0,
    }
}

/// Checks every acknowledged linearizable counter read against the
/// increments: the value counts the applied increments linearized before
/// the read, so it lies between those acknowledged (applied) before the
/// read was invoked and those invoked before it completed that were
/// acknowledged as applied or are indeterminate. Returns how many reads
/// were checked.
fn check_reads(h: &History, r: &mut CheckResult, listed: &mut Listed) -> usize {
    // Per counter: completion times of acknowledged applied increments,
    // invocation times of possibly applied ones.
    let mut done: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut started: HashMap<u32, Vec<u64>> = HashMap::new();
    for op in &h.ops {
        let Call::Increment { counter, .. } = op.call else {
            continue;
        };
        match (op.outcome, succeeded(op)) {
            (Outcome::Ok, Some((true, _))) => {
                done.entry(counter).or_default().push(op.complete_ns);
                started.entry(counter).or_default().push(op.invoke_ns);
            }
            (Outcome::Info, _) => started.entry(counter).or_default().push(op.invoke_ns),
            _ => {}
        }
    }
    for v in done.values_mut().chain(started.values_mut()) {
        v.sort_unstable();
    }
    let mut checked = 0;
    for op in &h.ops {
        let (Call::CounterGet { counter }, Outcome::Ok, Some(Ret::Read { value, .. })) =
            (&op.call, op.outcome, &op.ret)
        else {
            continue;
        };
        let Some(value) = value.as_deref().and_then(|v| v.parse::<i64>().ok()) else {
            listed.push(
                r,
                "read",
                format!("op {} read counter {counter} as {value:?}", op.id),
                vec![op.clone()],
            );
            continue;
        };
        checked += 1;
        let lo = done
            .get(counter)
            .map_or(0, |v| v.partition_point(|t| *t < op.invoke_ns)) as i64;
        let hi = started
            .get(counter)
            .map_or(0, |v| v.partition_point(|t| *t < op.complete_ns)) as i64;
        if value < lo || value > hi {
            let c = *counter;
            listed.push(
                r,
                "read",
                format!(
                    "op {} read counter {c} = {value}, but {lo} increments of it were acknowledged before the read began and at most {hi} could have been applied before it ended",
                    op.id
                ),
                overlapping(h, op, |x| {
                    matches!(x, Call::Increment { counter, .. } if *counter == c)
                }),
            );
        }
    }
    checked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{CounterState, RunMeta};

    /// A small history builder: times are in ms, one op at a time.
    struct B {
        ops: Vec<Op>,
    }

    impl B {
        fn new() -> B {
            B { ops: Vec::new() }
        }

        fn push(
            &mut self,
            process: u32,
            t: (u64, u64),
            call: Call,
            outcome: Outcome,
            ret: Option<Ret>,
        ) {
            self.ops.push(Op {
                id: self.ops.len() as u64,
                process,
                invoke_ns: t.0 * 1_000_000,
                complete_ns: t.1 * 1_000_000,
                call,
                outcome,
                ret,
                error: (outcome != Outcome::Ok).then(|| "timeout".to_string()),
                member: None,
            });
        }

        /// Increment `seq` of `process` on counter 0 from `from`.
        fn incr(
            &mut self,
            process: u32,
            seq: u64,
            from: i64,
            t: (u64, u64),
            outcome: Outcome,
            answer: Option<(bool, i64)>,
        ) -> &mut Self {
            self.push(
                process,
                t,
                Call::Increment {
                    counter: 0,
                    seq,
                    from,
                    mod_revision: 1,
                },
                outcome,
                answer.map(|(succeeded, revision)| Ret::Txn {
                    succeeded,
                    revision,
                }),
            );
            self
        }

        fn read(&mut self, t: (u64, u64), value: i64) -> &mut Self {
            self.push(
                1,
                t,
                Call::CounterGet { counter: 0 },
                Outcome::Ok,
                Some(Ret::Read {
                    value: Some(value.to_string()),
                    mod_revision: 1,
                    revision: 1,
                }),
            );
            self
        }

        /// The final read: counter 0 = `value` (version `version`) and
        /// markers (process, seq, value, version, mod revision).
        fn finish(
            &mut self,
            value: i64,
            version: i64,
            markers: &[(u32, u64, &str, i64, i64)],
        ) -> History {
            let t = self.ops.last().map_or(0, |o| o.complete_ns / 1_000_000) + 1000;
            self.push(
                0,
                (t, t + 1),
                Call::CountersFinal,
                Outcome::Ok,
                Some(Ret::Counters {
                    counters: vec![CounterState {
                        counter: 0,
                        value: Some(value),
                        version,
                    }],
                    markers: markers
                        .iter()
                        .map(|(process, seq, value, version, mod_revision)| Marker {
                            process: *process,
                            seq: *seq,
                            value: value.to_string(),
                            version: *version,
                            mod_revision: *mod_revision,
                        })
                        .collect(),
                    revision: 100,
                }),
            );
            self.history()
        }

        fn history(&self) -> History {
            History {
                meta: RunMeta {
                    counters: 1,
                    workloads: vec!["counter".into()],
                    ..Default::default()
                },
                ops: self.ops.clone(),
                events: Vec::new(),
            }
        }
    }

    fn ok(r: &CheckResult) {
        assert!(r.violations.is_empty(), "{}", r.report());
    }

    fn flagged(r: &CheckResult, what: &str) {
        assert!(
            r.violations.iter().any(|v| v.what.contains(what)),
            "expected a violation containing {what:?}:\n{}",
            r.report()
        );
    }

    #[test]
    fn exactly_once_history_passes() {
        let h = B::new()
            .incr(1, 1, 0, (0, 10), Outcome::Ok, Some((true, 5)))
            .incr(2, 1, 0, (2, 12), Outcome::Ok, Some((false, 6)))
            .read((13, 14), 1)
            .incr(2, 2, 1, (15, 20), Outcome::Ok, Some((true, 7)))
            .read((21, 22), 2)
            .finish(
                2,
                3,
                &[
                    (1, 1, "applied 0 1", 1, 5),
                    (2, 1, "refused 0", 1, 6),
                    (2, 2, "applied 0 2", 1, 7),
                ],
            );
        let r = check(&h);
        ok(&r);
        assert_eq!(r.checked, 5);
        assert!(r.summary.contains("each written once"), "{}", r.summary);
        assert!(r.summary.contains("counters 0=2"), "{}", r.summary);
    }

    #[test]
    fn unknown_outcome_may_or_may_not_apply() {
        // Process 1's first increment timed out and was applied (its marker
        // is there); its second timed out and never was.
        let h = B::new()
            .incr(1, 1, 0, (0, 4000), Outcome::Info, None)
            .incr(1, 2, 1, (4001, 8000), Outcome::Info, None)
            .incr(2, 1, 1, (8001, 8010), Outcome::Ok, Some((true, 9)))
            .finish(
                2,
                3,
                &[(1, 1, "applied 0 1", 1, 5), (2, 1, "applied 0 2", 1, 9)],
            );
        let r = check(&h);
        ok(&r);
        assert!(
            r.summary
                .contains("2 indeterminate: 1 applied, 0 refused, 1 never applied"),
            "{}",
            r.summary
        );
        // The counter may not hold less than the acknowledged increments
        // or more than those plus the indeterminate ones.
        let h = B::new()
            .incr(1, 1, 0, (0, 4000), Outcome::Info, None)
            .finish(0, 1, &[]);
        ok(&check(&h));
    }

    #[test]
    fn duplicate_apply_that_rewrote_the_marker_is_flagged() {
        // The brief's case: the same Txn applied twice bumped the counter
        // twice but rewrote the same marker.
        let h = B::new()
            .incr(1, 1, 0, (0, 10), Outcome::Ok, Some((true, 5)))
            .finish(2, 3, &[(1, 1, "applied 0 1", 2, 8)]);
        let r = check(&h);
        flagged(&r, "was applied 2 times");
        assert!(
            r.summary.contains("1 written more than once"),
            "{}",
            r.summary
        );
        flagged(&r, "counter 0 is 2 but 1 increments");
        flagged(&r, "outside [1, 1]");
    }

    #[test]
    fn duplicate_apply_of_a_cas_is_flagged() {
        // The CAS applied, then its retry was executed again instead of
        // answered: the compare failed the second time, the marker turned
        // to "refused" and the client was told it was refused.
        let h = B::new()
            .incr(1, 1, 0, (0, 10), Outcome::Ok, Some((false, 6)))
            .finish(1, 2, &[(1, 1, "refused 0", 2, 6)]);
        let r = check(&h);
        flagged(&r, "was applied 2 times");
        flagged(&r, "counter 0 is 1 but 0 increments");
        flagged(&r, "outside [0, 0]");
        // Same, if only the answer was wrong (marker written once).
        let h = B::new()
            .incr(1, 1, 0, (0, 10), Outcome::Ok, Some((false, 6)))
            .finish(1, 2, &[(1, 1, "applied 0 1", 1, 5)]);
        let r = check(&h);
        flagged(
            &r,
            "a retry was not answered with the first attempt's response",
        );
        // An indeterminate increment applied twice is caught as well.
        let h = B::new()
            .incr(1, 1, 0, (0, 4000), Outcome::Info, None)
            .finish(1, 2, &[(1, 1, "refused 0", 2, 6)]);
        flagged(&check(&h), "was applied 2 times");
    }

    #[test]
    fn lost_and_phantom_increments_are_flagged() {
        let h = B::new()
            .incr(1, 1, 0, (0, 10), Outcome::Ok, Some((true, 5)))
            .incr(1, 2, 0, (20, 30), Outcome::Fail, None)
            .finish(
                1,
                2,
                &[(1, 2, "applied 0 1", 1, 7), (3, 9, "refused 0", 1, 8)],
            );
        let r = check(&h);
        flagged(&r, "left no marker: lost");
        flagged(&r, "was reported as failed (timeout) but was applied");
        flagged(&r, "which was never invoked");
        // Two acknowledged increments from the same value: one is lost.
        let h = B::new()
            .incr(1, 1, 0, (0, 10), Outcome::Ok, Some((true, 5)))
            .incr(2, 1, 0, (0, 10), Outcome::Ok, Some((true, 6)))
            .finish(
                1,
                2,
                &[(1, 1, "applied 0 1", 1, 5), (2, 1, "applied 0 1", 1, 6)],
            );
        let r = check(&h);
        flagged(&r, "both set counter 0 from 0 to 1");
        flagged(&r, "did not write 1..=2 once each");
        // Answered at another revision than the one it was applied at.
        let h = B::new()
            .incr(1, 1, 0, (0, 10), Outcome::Ok, Some((true, 9)))
            .finish(1, 2, &[(1, 1, "applied 0 1", 1, 5)]);
        flagged(&check(&h), "answered with revision 9");
        // The counter was put once more than the increments.
        let h = B::new()
            .incr(1, 1, 0, (0, 10), Outcome::Ok, Some((true, 5)))
            .finish(1, 3, &[(1, 1, "applied 0 1", 1, 5)]);
        flagged(&check(&h), "version 3, expected 2");
    }

    #[test]
    fn reads_must_count_acknowledged_increments() {
        // A read after an acknowledged increment that misses it.
        let h = B::new()
            .incr(1, 1, 0, (0, 10), Outcome::Ok, Some((true, 5)))
            .read((11, 12), 0)
            .history();
        let r = check(&h);
        flagged(&r, "read counter 0 = 0, but 1 increments");
        assert!(r.notes.iter().any(|n| n.contains("final state")));
        // A read concurrent with it may see it or not; one that sees an
        // increment not yet invoked may not.
        let h = B::new()
            .incr(1, 1, 0, (10, 20), Outcome::Ok, Some((true, 5)))
            .read((11, 12), 1)
            .read((13, 14), 0)
            .read((0, 5), 1)
            .history();
        let r = check(&h);
        assert_eq!(r.violations.len(), 1, "{}", r.report());
        flagged(&r, "read counter 0 = 1, but 0 increments");
    }
}
