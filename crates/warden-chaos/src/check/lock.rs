//! The lock checker. Clients acquire an exclusive native lock, read the
//! counter it protects, write counter + 1 with a fenced Txn carrying the
//! grant's token, and release. Checked:
//!
//! - **Mutual exclusion**: a hold whose release was acknowledged held the
//!   lock at least from the moment the grant reached the client until the
//!   release was sent (the release succeeds only while the token holds). No
//!   two such holds of one lock may overlap in time.
//! - **Fencing tokens** are unique and increase in grant order: if grant A
//!   reached its client before grant B was requested, A's token < B's.
//! - **Leases never end early**: a fenced write refused because its token
//!   no longer held the lock must not come back before the lease's TTL has
//!   passed since the lease grant was invoked.
//! - **No lost increment**: acknowledged fenced writes of one counter wrote
//!   distinct values, none above the final value, and the final value lies
//!   between the number of acknowledged writes and that plus the
//!   indeterminate ones.

use std::collections::{BTreeMap, HashMap};

use super::{overlapping, CheckResult, Violation};
use crate::history::{Call, History, Op, Outcome, Ret, HARNESS};

fn is_lock_op(c: &Call) -> bool {
    matches!(
        c,
        Call::Acquire { .. }
            | Call::Release { .. }
            | Call::FencedIncr { .. }
            | Call::CounterRead { .. }
            | Call::ClientPause { .. }
    )
}

struct Hold<'a> {
    lock: String,
    token: u64,
    acquire: &'a Op,
    release: &'a Op,
}

pub fn check(h: &History) -> CheckResult {
    let mut result = CheckResult::new("lock");
    // Acknowledged grants, by token.
    let mut grants: Vec<(&Op, String, u64)> = Vec::new();
    for op in &h.ops {
        if let (Call::Acquire { lock, .. }, Outcome::Ok, Some(Ret::Granted { token, .. })) =
            (&op.call, op.outcome, &op.ret)
        {
            grants.push((op, lock.clone(), *token));
        }
    }
    let by_token: HashMap<(String, u64), &Op> = grants
        .iter()
        .map(|(op, l, t)| ((l.clone(), *t), *op))
        .collect();

    // Unique tokens.
    let mut seen: HashMap<u64, &Op> = HashMap::new();
    for (op, _, t) in &grants {
        if let Some(first) = seen.insert(*t, op) {
            result.violations.push(Violation {
                what: format!(
                    "token {t} was granted twice (ops {} and {})",
                    first.id, op.id
                ),
                window: vec![(*first).clone(), (*op).clone()],
            });
        }
    }

    // Tokens increase in grant order: sweep grants by invocation, with the
    // largest token among grants completed before.
    let mut by_complete: Vec<&(&Op, String, u64)> = grants.iter().collect();
    by_complete.sort_by_key(|(op, _, _)| op.complete_ns);
    let mut by_invoke: Vec<&(&Op, String, u64)> = grants.iter().collect();
    by_invoke.sort_by_key(|(op, _, _)| op.invoke_ns);
    let mut k = 0;
    let mut max_before: Option<(&Op, u64)> = None;
    for (op, _, t) in by_invoke {
        while let Some((a, _, ta)) = by_complete.get(k) {
            if a.complete_ns >= op.invoke_ns {
                break;
            }
            if max_before.is_none_or(|(_, m)| *ta > m) {
                max_before = Some((a, *ta));
            }
            k += 1;
        }
        if let Some((a, m)) = max_before {
            if m >= *t {
                result.violations.push(Violation {
                    what: format!(
                        "token {t} (op {}) is not greater than token {m} (op {}) granted before it was requested",
                        op.id, a.id
                    ),
                    window: vec![a.clone(), (*op).clone()],
                });
            }
        }
    }

    // Holds with an acknowledged release.
    let mut holds: BTreeMap<String, Vec<Hold<'_>>> = BTreeMap::new();
    for op in &h.ops {
        if let (Call::Release { lock, token }, Outcome::Ok) = (&op.call, op.outcome) {
            if let Some(acq) = by_token.get(&(lock.clone(), *token)) {
                holds.entry(lock.clone()).or_default().push(Hold {
                    lock: lock.clone(),
                    token: *token,
                    acquire: acq,
                    release: op,
                });
            }
        }
    }
    let mut hold_count = 0;
    for list in holds.values_mut() {
        hold_count += list.len();
        list.sort_by_key(|x| x.acquire.complete_ns);
        let mut latest: Option<&Hold<'_>> = None;
        for x in list.iter() {
            if let Some(prev) = latest {
                if x.acquire.complete_ns < prev.release.invoke_ns {
                    let mut window = vec![
                        prev.acquire.clone(),
                        prev.release.clone(),
                        x.acquire.clone(),
                        x.release.clone(),
                    ];
                    window.extend(h.ops.iter().filter(|o| {
                        o.invoke_ns >= prev.acquire.complete_ns
                            && o.invoke_ns <= x.release.invoke_ns.min(prev.release.invoke_ns)
                            && matches!(&o.call, Call::FencedIncr { lock, .. } if *lock == x.lock)
                    }).cloned());
                    window.sort_by_key(|o| (o.invoke_ns, o.id));
                    window.dedup_by_key(|o| o.id);
                    result.violations.push(Violation {
                        what: format!(
                            "lock {}: holds of tokens {} and {} overlap (the second was granted before the first was released)",
                            x.lock, prev.token, x.token
                        ),
                        window,
                    });
                }
            }
            if latest.is_none_or(|p| x.release.invoke_ns > p.release.invoke_ns) {
                latest = Some(x);
            }
        }
    }

    // Leases never expire early, even across fail-over: a lease granted with `ttl` was
    // applied after its grant was invoked, so it cannot end before invoke +
    // ttl. A fenced write refused for not holding the lock, with the refusal
    // back before that moment, shows the hold ended early (the clients
    // release only after their fenced write).
    let leases: HashMap<i64, &Op> = h
        .ops
        .iter()
        .filter_map(|o| match (&o.call, &o.ret, o.outcome) {
            (Call::LeaseGrant { .. }, Some(Ret::Lease { id }), Outcome::Ok) => Some((*id, o)),
            _ => None,
        })
        .collect();
    let mut early_checked = 0usize;
    for op in &h.ops {
        let (Call::FencedIncr { lock, token, .. }, Outcome::Fail) = (&op.call, op.outcome) else {
            continue;
        };
        if !op
            .error
            .as_deref()
            .is_some_and(|e| e.contains("does not hold"))
        {
            continue;
        }
        let Some(acq) = by_token.get(&(lock.clone(), *token)) else {
            continue;
        };
        let Call::Acquire { lease, .. } = &acq.call else {
            continue;
        };
        let Some(grant) = leases.get(lease) else {
            continue;
        };
        let Call::LeaseGrant { ttl } = grant.call else {
            continue;
        };
        early_checked += 1;
        let earliest_end = grant.invoke_ns + (ttl.max(0) as u64) * 1_000_000_000;
        if op.complete_ns < earliest_end {
            result.violations.push(Violation {
                what: format!(
                    "lock {lock}: token {token}'s hold ended before its lease (ttl {ttl} s, granted from {:.3} s) could expire: fenced write refused at {:.3} s",
                    grant.invoke_ns as f64 / 1e9,
                    op.complete_ns as f64 / 1e9
                ),
                window: overlapping(h, op, |c| {
                    matches!(c, Call::Nemesis { .. }) || is_lock_op(c)
                })
                .into_iter()
                .filter(|o| o.invoke_ns >= grant.invoke_ns || o.id == grant.id)
                .chain(std::iter::once((*grant).clone()))
                .map(|o| (o.id, o))
                .collect::<BTreeMap<u64, Op>>()
                .into_values()
                .collect::<Vec<_>>(),
            });
        }
    }

    // Counters.
    let mut counters: BTreeMap<String, (Vec<&Op>, Vec<&Op>)> = BTreeMap::new();
    for op in &h.ops {
        if let Call::FencedIncr { lock, .. } = &op.call {
            let e = counters.entry(lock.clone()).or_default();
            match op.outcome {
                Outcome::Ok => e.0.push(op),
                Outcome::Info => e.1.push(op),
                Outcome::Fail => {}
            }
        }
    }
    let finals: HashMap<String, (&Op, i64)> = h
        .ops
        .iter()
        .filter(|o| o.process == HARNESS && o.outcome == Outcome::Ok)
        .filter_map(|o| match (&o.call, &o.ret) {
            (Call::CounterRead { lock }, Some(Ret::Read { value, .. })) => Some((
                lock.clone(),
                (
                    o,
                    value.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0),
                ),
            )),
            _ => None,
        })
        .collect();
    let mut counter_notes = Vec::new();
    for (lock, (acked, info)) in &counters {
        let mut values: HashMap<i64, &Op> = HashMap::new();
        for op in acked {
            if let Call::FencedIncr { to, .. } = op.call {
                if let Some(first) = values.insert(to, op) {
                    result.violations.push(Violation {
                        what: format!(
                            "lock {lock}: two acknowledged fenced writes both wrote {to} (ops {} and {}): an increment was lost",
                            first.id, op.id
                        ),
                        window: overlapping_pair(h, first, op),
                    });
                }
            }
        }
        let Some((final_op, value)) = finals.get(lock) else {
            result
                .notes
                .push(format!("lock {lock}: no final counter read"));
            continue;
        };
        let (a, i) = (acked.len() as i64, info.len() as i64);
        counter_notes.push(format!("{lock}={value} ({a} acked, {i} indeterminate)"));
        if *value < a || *value > a + i {
            result.violations.push(Violation {
                what: format!(
                    "lock {lock}: final counter {value} but {a} acknowledged and {i} indeterminate increments"
                ),
                window: vec![(*final_op).clone()],
            });
        }
        if let Some((to, op)) = values
            .iter()
            .filter(|(to, _)| **to > *value)
            .min_by_key(|(to, _)| **to)
        {
            result.violations.push(Violation {
                what: format!(
                    "lock {lock}: acknowledged fenced write of {to} (op {}) is missing from the final counter {value}",
                    op.id
                ),
                window: vec![(*op).clone(), (*final_op).clone()],
            });
        }
    }
    let refused = h
        .ops
        .iter()
        .filter(|o| matches!(o.call, Call::FencedIncr { .. }) && o.outcome == Outcome::Fail)
        .count();
    let pauses = h
        .ops
        .iter()
        .filter(|o| matches!(o.call, Call::ClientPause { .. }))
        .count();
    result.checked = grants.len();
    result.summary = format!(
        "{} grants, {hold_count} released holds checked for overlap, tokens increasing; {} fenced writes refused (after {pauses} client pauses; {early_checked} checked against lease expiry); counters {}",
        grants.len(),
        refused,
        if counter_notes.is_empty() {
            "-".to_string()
        } else {
            counter_notes.join(", ")
        }
    );
    result
}

fn overlapping_pair(h: &History, a: &Op, b: &Op) -> Vec<Op> {
    let mut w = overlapping(h, a, is_lock_op);
    w.extend(overlapping(h, b, is_lock_op));
    w.sort_by_key(|o| (o.invoke_ns, o.id));
    w.dedup_by_key(|o| o.id);
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::RunMeta;

    struct B {
        ops: Vec<Op>,
    }
    impl B {
        fn op(&mut self, p: u32, inv: u64, comp: u64, call: Call, out: Outcome, ret: Option<Ret>) {
            let id = self.ops.len() as u64;
            self.ops.push(Op {
                id,
                process: p,
                invoke_ns: inv,
                complete_ns: comp,
                call,
                outcome: out,
                ret,
                error: None,
                member: None,
            });
        }
        /// A full cycle: acquire [t, t+1], incr, release [t+4, t+5].
        fn cycle(&mut self, p: u32, t: u64, token: u64, from: i64) {
            let l = || "L".to_string();
            self.op(
                p,
                t,
                t + 1,
                Call::Acquire {
                    lock: l(),
                    lease: 1,
                },
                Outcome::Ok,
                Some(Ret::Granted { token, revision: 0 }),
            );
            self.op(
                p,
                t + 2,
                t + 3,
                Call::FencedIncr {
                    lock: l(),
                    token,
                    from,
                    to: from + 1,
                },
                Outcome::Ok,
                Some(Ret::Written { revision: 0 }),
            );
            self.op(
                p,
                t + 4,
                t + 5,
                Call::Release { lock: l(), token },
                Outcome::Ok,
                Some(Ret::Done { revision: 0 }),
            );
        }
        fn final_read(&mut self, t: u64, v: i64) {
            self.op(
                HARNESS,
                t,
                t + 1,
                Call::CounterRead { lock: "L".into() },
                Outcome::Ok,
                Some(Ret::Read {
                    value: Some(v.to_string()),
                    mod_revision: 0,
                    revision: 0,
                }),
            );
        }
        fn clone_history(&self) -> History {
            B {
                ops: self.ops.clone(),
            }
            .history()
        }
        fn history(mut self) -> History {
            self.ops.sort_by_key(|o| (o.invoke_ns, o.id));
            History {
                meta: RunMeta::default(),
                ops: self.ops,
                events: Vec::new(),
            }
        }
    }

    #[test]
    fn exclusive_holds_pass() {
        let mut b = B { ops: Vec::new() };
        b.cycle(1, 0, 5, 0);
        b.cycle(2, 10, 7, 1);
        b.cycle(1, 20, 9, 2);
        b.final_read(100, 3);
        let r = check(&b.history());
        assert!(r.violations.is_empty(), "{r:?}");
        assert!(
            r.summary.contains("L=3 (3 acked, 0 indeterminate)"),
            "{}",
            r.summary
        );
    }

    #[test]
    fn overlapping_holds_are_caught() {
        let mut b = B { ops: Vec::new() };
        b.cycle(1, 0, 5, 0);
        // Granted at 3, while client 1 released only at 4.
        b.cycle(2, 2, 7, 1);
        b.final_read(100, 2);
        let r = check(&b.history());
        assert_eq!(r.violations.len(), 1, "{r:?}");
        assert!(r.violations[0]
            .what
            .contains("holds of tokens 5 and 7 overlap"));
        assert!(r.violations[0].window.len() >= 4);
    }

    #[test]
    fn decreasing_token_is_caught() {
        let mut b = B { ops: Vec::new() };
        b.cycle(1, 0, 9, 0);
        b.cycle(2, 10, 4, 1);
        b.final_read(100, 2);
        let r = check(&b.history());
        assert_eq!(r.violations.len(), 1, "{r:?}");
        assert!(r.violations[0].what.contains("token 4"), "{r:?}");
    }

    #[test]
    fn lost_increment_is_caught() {
        let mut b = B { ops: Vec::new() };
        b.cycle(1, 0, 5, 0);
        // Both wrote 1: the second read a stale counter.
        b.cycle(2, 10, 7, 0);
        b.final_read(100, 1);
        let r = check(&b.history());
        assert!(
            r.violations.iter().any(|v| v.what.contains("both wrote 1")),
            "{r:?}"
        );
        assert!(
            r.violations
                .iter()
                .any(|v| v.what.contains("final counter 1 but 2 acknowledged")),
            "{r:?}"
        );
    }

    #[test]
    fn hold_lost_before_the_lease_ttl_is_caught() {
        let mut b = B { ops: Vec::new() };
        let s = 1_000_000_000u64;
        b.op(
            1,
            0,
            10,
            Call::LeaseGrant { ttl: 3 },
            Outcome::Ok,
            Some(Ret::Lease { id: 9 }),
        );
        b.op(
            1,
            20,
            30,
            Call::Acquire {
                lock: "L".into(),
                lease: 9,
            },
            Outcome::Ok,
            Some(Ret::Granted {
                token: 4,
                revision: 0,
            }),
        );
        let refused = |b: &mut B, at: u64| {
            let mut_op = Call::FencedIncr {
                lock: "L".into(),
                token: 4,
                from: 0,
                to: 1,
            };
            b.op(1, at, at + 10, mut_op, Outcome::Fail, None);
            if let Some(o) = b.ops.last_mut() {
                o.error =
                    Some("warden: fenced write refused: token 4 does not hold lock \"L\"".into());
            }
        };
        // Refused 2 s after the grant: early.
        refused(&mut b, 2 * s);
        let r = check(&b.clone_history());
        assert_eq!(r.violations.len(), 1, "{r:?}");
        assert!(
            r.violations[0].what.contains("ended before its lease"),
            "{r:?}"
        );
        // Refused after 3 s (a client pause): fine.
        let mut b = B {
            ops: b.ops[..2].to_vec(),
        };
        refused(&mut b, 3 * s);
        assert!(check(&b.history()).violations.is_empty());
    }

    #[test]
    fn unreleased_or_failed_holds_are_not_intervals() {
        let mut b = B { ops: Vec::new() };
        b.cycle(1, 0, 5, 0);
        // A grant at 2 whose release failed (the first hold's lease had
        // expired, say): no claim about its interval.
        b.op(
            2,
            1,
            2,
            Call::Acquire {
                lock: "L".into(),
                lease: 2,
            },
            Outcome::Ok,
            Some(Ret::Granted {
                token: 6,
                revision: 0,
            }),
        );
        b.op(
            2,
            3,
            4,
            Call::FencedIncr {
                lock: "L".into(),
                token: 6,
                from: 0,
                to: 1,
            },
            Outcome::Fail,
            None,
        );
        b.op(
            2,
            5,
            6,
            Call::Release {
                lock: "L".into(),
                token: 6,
            },
            Outcome::Fail,
            None,
        );
        b.final_read(100, 1);
        let r = check(&b.history());
        assert!(r.violations.is_empty(), "{r:?}");
    }
}
