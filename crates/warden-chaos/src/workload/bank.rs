//! The bank workload: accounts under one prefix, transfers between two of
//! them by a Txn that compares both accounts' mod revisions (so it applies
//! only to the balances it read), and reads of every account at once —
//! linearizable ones, and serializable ones spread across members.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{create_once, keys, revision_of, think, Ctx};
use crate::history::{Call, Ret};
use warden_client::{Client, GetOptions, KeyRange};
use warden_proto::etcdserverpb::{
    compare, request_op, Compare, PutRequest, RangeResponse, RequestOp, TxnRequest,
};

fn put_op(key: String, value: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into_bytes(),
            value: value.to_string().into_bytes(),
            ..Default::default()
        })),
    }
}

/// Creates the accounts (once: only if account 0 does not exist, so a
/// retry after an indeterminate attempt cannot reset balances).
pub async fn init(ctx: &Ctx, accounts: u32, balance: i64) -> anyhow::Result<()> {
    let call = Call::BankInit { accounts, balance };
    let keys = (0..accounts)
        .map(|i| (keys::account(i), balance.to_string()))
        .collect();
    create_once(ctx, &call, keys, "bank accounts").await
}

/// Parses a Range over the accounts: (account, balance, mod revision).
fn balances(r: &RangeResponse) -> Vec<(u32, i64, i64)> {
    r.kvs
        .iter()
        .filter_map(|kv| {
            let n = keys::account_number(&kv.key)?;
            let b = std::str::from_utf8(&kv.value).ok()?.parse().ok()?;
            Some((n, b, kv.mod_revision))
        })
        .collect()
}

/// Reads every account; records the read. Returns the accounts if ok.
pub async fn read_all(
    ctx: &Ctx,
    client: &Client,
    process: u32,
    serializable: bool,
) -> Option<Vec<(u32, i64, i64)>> {
    let call = Call::BankRead { serializable };
    let invoke = ctx.rec.now();
    let opts = GetOptions {
        range: KeyRange {
            prefix: true,
            ..Default::default()
        },
        serializable,
        ..Default::default()
    };
    match client.get(keys::ACCOUNTS, opts).await {
        Ok(r) => {
            let b = balances(&r);
            ctx.record_ok(
                process,
                invoke,
                call,
                Ret::Bank {
                    balances: b.iter().map(|(n, v, _)| (*n, *v)).collect(),
                    revision: revision_of(r.header.as_ref()),
                },
                r.header.as_ref(),
            );
            Some(b)
        }
        Err(e) => {
            ctx.record_err(process, invoke, call, &e);
            None
        }
    }
}

/// Runs one bank client until the run ends.
pub async fn run(ctx: Arc<Ctx>, process: u32, accounts: u32) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (u64::from(process) << 32) ^ 0x4241_4e4b);
    while ctx.running() {
        let roll = rng.random_range(0..10);
        if roll < 4 {
            read_all(&ctx, &client, process, roll < 2).await;
        } else if let Some(b) = read_all(&ctx, &client, process, false).await {
            transfer(&ctx, &client, process, accounts, &b, &mut rng).await;
        }
        think(&mut rng).await;
    }
    Ok(())
}

async fn transfer(
    ctx: &Ctx,
    client: &Client,
    process: u32,
    accounts: u32,
    seen: &[(u32, i64, i64)],
    rng: &mut StdRng,
) {
    let from = rng.random_range(0..accounts.max(1));
    let to = (from + rng.random_range(1..accounts.max(2))) % accounts.max(1);
    let find = |n: u32| seen.iter().find(|(a, _, _)| *a == n).copied();
    let (Some((_, fb, fm)), Some((_, tb, tm))) = (find(from), find(to)) else {
        return;
    };
    if fb <= 0 || from == to {
        return;
    }
    let amount = rng.random_range(1..=fb.min(5));
    let guard = |key: String, rev: i64| Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.into_bytes(),
        range_end: Vec::new(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
    };
    let req = TxnRequest {
        compare: vec![guard(keys::account(from), fm), guard(keys::account(to), tm)],
        success: vec![
            put_op(keys::account(from), fb - amount),
            put_op(keys::account(to), tb + amount),
        ],
        failure: Vec::new(),
    };
    let call = Call::Transfer {
        from,
        to,
        amount,
        from_balance: fb - amount,
        to_balance: tb + amount,
    };
    ctx.txn(client, process, call, req).await;
}
