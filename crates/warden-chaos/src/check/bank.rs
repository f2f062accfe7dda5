//! The bank checker: transfers move money between accounts inside Txns
//! guarded by the accounts' mod revisions, so every read of all accounts —
//! linearizable or serializable, from any member — must see every account,
//! no negative balance, and the same total as at the start. A read that
//! sees half a transfer, a lost transfer or a duplicated one breaks it.

use super::{overlapping, CheckResult, Violation};
use crate::history::{Call, History, Outcome, Ret};

pub fn check(h: &History) -> CheckResult {
    let mut result = CheckResult::new("bank");
    let n = h.meta.bank_accounts;
    let total = i64::from(n) * h.meta.bank_balance;
    let (mut reads, mut serializable) = (0usize, 0usize);
    for op in &h.ops {
        let Call::BankRead { serializable: ser } = op.call else {
            continue;
        };
        if op.outcome != Outcome::Ok {
            continue;
        }
        let Some(Ret::Bank { balances, revision }) = &op.ret else {
            continue;
        };
        reads += 1;
        if ser {
            serializable += 1;
        }
        let sum: i64 = balances.iter().map(|(_, b)| *b).sum();
        let mut problems = Vec::new();
        if balances.len() != n as usize {
            problems.push(format!("{} of {n} accounts", balances.len()));
        }
        if sum != total {
            problems.push(format!("total {sum}, expected {total}"));
        }
        if let Some((a, b)) = balances.iter().find(|(_, b)| *b < 0) {
            problems.push(format!("account {a} is negative ({b})"));
        }
        if !problems.is_empty() {
            let window = overlapping(h, op, |c| {
                matches!(c, Call::Transfer { .. } | Call::BankInit { .. })
            });
            result.violations.push(Violation {
                what: format!(
                    "op {} ({} read at revision {revision}) saw {}",
                    op.id,
                    if ser { "serializable" } else { "linearizable" },
                    problems.join(", ")
                ),
                window,
            });
        }
    }
    let count = |o: Outcome| {
        h.ops
            .iter()
            .filter(|x| matches!(x.call, Call::Transfer { .. }) && x.outcome == o)
            .count()
    };
    let applied = h
        .ops
        .iter()
        .filter(|x| {
            matches!(x.call, Call::Transfer { .. })
                && matches!(
                    x.ret,
                    Some(Ret::Txn {
                        succeeded: true,
                        ..
                    })
                )
        })
        .count();
    result.checked = reads;
    result.summary = format!(
        "{reads} reads of {n} accounts checked ({serializable} serializable), total {total}; transfers: {applied} applied, {} refused by compare, {} indeterminate, {} failed",
        count(Outcome::Ok) - applied,
        count(Outcome::Info),
        count(Outcome::Fail)
    );
    if !h
        .ops
        .iter()
        .any(|o| matches!(o.call, Call::BankInit { .. }) && o.outcome == Outcome::Ok)
    {
        result
            .notes
            .push("the accounts could not be created; nothing to check".into());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, RunMeta};

    fn op(id: u64, inv: u64, call: Call, ret: Option<Ret>) -> Op {
        Op {
            id,
            process: 1,
            invoke_ns: inv,
            complete_ns: inv + 5,
            call,
            outcome: Outcome::Ok,
            ret,
            error: None,
            member: None,
        }
    }

    fn read(id: u64, inv: u64, b: &[i64]) -> Op {
        op(
            id,
            inv,
            Call::BankRead { serializable: true },
            Some(Ret::Bank {
                balances: b.iter().enumerate().map(|(i, v)| (i as u32, *v)).collect(),
                revision: 1,
            }),
        )
    }

    fn history(ops: Vec<Op>) -> History {
        History {
            meta: RunMeta {
                bank_accounts: 3,
                bank_balance: 10,
                ..Default::default()
            },
            ops,
            events: Vec::new(),
        }
    }

    fn transfer(id: u64, inv: u64) -> Op {
        op(
            id,
            inv,
            Call::Transfer {
                from: 0,
                to: 1,
                amount: 5,
                from_balance: 5,
                to_balance: 15,
            },
            Some(Ret::Txn {
                succeeded: true,
                revision: 3,
            }),
        )
    }

    #[test]
    fn constant_total_passes() {
        let h = history(vec![
            read(0, 0, &[10, 10, 10]),
            transfer(1, 10),
            read(2, 20, &[5, 15, 10]),
        ]);
        let r = check(&h);
        assert!(r.violations.is_empty(), "{r:?}");
        assert_eq!(r.checked, 2);
    }

    #[test]
    fn half_a_transfer_is_caught() {
        let h = history(vec![
            read(0, 0, &[10, 10, 10]),
            transfer(1, 10),
            read(2, 12, &[5, 10, 10]),
            read(3, 40, &[5, 15, 10, 0]),
        ]);
        let r = check(&h);
        assert_eq!(r.violations.len(), 2, "{r:?}");
        assert!(r.violations[0].what.contains("total 25, expected 30"));
        // The concurrent transfer is shown with the bad read.
        assert_eq!(r.violations[0].window.len(), 2);
        assert!(r.violations[1].what.contains("4 of 3 accounts"));
    }
}
