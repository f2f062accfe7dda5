//! The register workload: reads, writes of unique values, and
//! compare-and-sets (a Txn comparing the value) on a few keys.

use std::collections::HashMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{outcome_of, outcome_of_status, revision_of, think, with_timeout, Ctx, Fault};
use crate::history::{Call, Outcome, Ret};
use warden_client::Client;
use warden_proto::etcdserverpb::{
    compare, kv_client::KvClient, request_op, Compare, PutRequest, RangeRequest, RangeResponse,
    RequestOp, TxnRequest,
};

/// Runs one register client until the run ends.
pub async fn run(ctx: Arc<Ctx>, process: u32, keys: usize) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (u64::from(process) << 32) ^ 0x5245_4749);
    let mut seq = 0u64;
    // The last value this client saw per key: the `from` of its next CAS.
    let mut last: HashMap<String, String> = HashMap::new();
    while ctx.running() {
        let key = super::keys::register(rng.random_range(0..keys.max(1)));
        let roll = rng.random_range(0..10);
        if roll < 4 {
            if let Some(v) = read(&ctx, &client, process, &key, &mut rng).await {
                last.insert(key, v);
            }
        } else if roll < 7 || !last.contains_key(&key) {
            seq += 1;
            let value = unique_value(process, seq);
            write(&ctx, &client, process, &key, &value).await;
            last.insert(key, value);
        } else {
            seq += 1;
            let to = unique_value(process, seq);
            let from = last.get(&key).cloned().unwrap_or_default();
            if cas(&ctx, &client, process, &key, &from, &to).await {
                last.insert(key, to);
            }
        }
        think(&mut rng).await;
    }
    Ok(())
}

/// The value of a client's `seq`th write: unique, and every other one
/// long enough (over 64 bytes) that the member keeps it in a scratch file
/// rather than on the heap, so reads and compare-and-sets under faults go
/// through both (`storage::cold`).
fn unique_value(process: u32, seq: u64) -> String {
    if seq.is_multiple_of(2) {
        format!("{process}-{seq}")
    } else {
        format!("{process}-{seq}-{}", "x".repeat(72))
    }
}

fn read_ret(r: &RangeResponse) -> Ret {
    let kv = r.kvs.first();
    Ret::Read {
        value: kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
        mod_revision: kv.map_or(0, |kv| kv.mod_revision),
        revision: revision_of(r.header.as_ref()),
    }
}

/// A linearizable read (or, under the stale-reads fault, a serializable
/// read from a follower). Returns the value seen.
async fn read(
    ctx: &Ctx,
    client: &Client,
    process: u32,
    key: &str,
    rng: &mut StdRng,
) -> Option<String> {
    let fault = ctx.fault == Some(Fault::StaleReads);
    let call = Call::Read {
        key: key.to_string(),
        serializable: false,
        fault,
    };
    let invoke = ctx.rec.now();
    let req = RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    let result = if fault {
        let n = ctx.topo.len();
        let leader = ctx.topo.leader();
        let followers: Vec<usize> = (0..n).filter(|i| Some(*i) != leader).collect();
        let target = followers
            .get(rng.random_range(0..followers.len().max(1)))
            .copied()
            .unwrap_or(0);
        let ch = ctx.topo.channels.get(target).cloned()?;
        let req = RangeRequest {
            serializable: true,
            ..req
        };
        KvClient::new(ch)
            .range(with_timeout(req, ctx.opts.timeout))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| (outcome_of_status(&s), s.to_string()))
    } else {
        client
            .range(req)
            .await
            .map_err(|e| (outcome_of(&e), e.to_string()))
    };
    match result {
        Ok(r) => {
            let ret = read_ret(&r);
            let member = ctx.topo.name_of(r.header.as_ref());
            let value = match &ret {
                Ret::Read { value, .. } => value.clone(),
                _ => None,
            };
            ctx.rec
                .record(process, invoke, call, Outcome::Ok, Some(ret), None, member);
            value
        }
        Err((outcome, e)) => {
            ctx.rec
                .record(process, invoke, call, outcome, None, Some(e), None);
            None
        }
    }
}

async fn write(ctx: &Ctx, client: &Client, process: u32, key: &str, value: &str) {
    let call = Call::Write {
        key: key.to_string(),
        value: value.to_string(),
    };
    let invoke = ctx.rec.now();
    let req = PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    };
    match client.put_request(req).await {
        Ok(r) => ctx.record_ok(
            process,
            invoke,
            call,
            Ret::Written {
                revision: revision_of(r.header.as_ref()),
            },
            r.header.as_ref(),
        ),
        Err(e) => ctx.record_err(process, invoke, call, &e),
    }
}

/// Compare-and-set; true if it certainly took effect.
async fn cas(ctx: &Ctx, client: &Client, process: u32, key: &str, from: &str, to: &str) -> bool {
    let call = Call::Cas {
        key: key.to_string(),
        from: from.to_string(),
        to: to.to_string(),
    };
    let req = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Value as i32,
            key: key.as_bytes().to_vec(),
            range_end: Vec::new(),
            target_union: Some(compare::TargetUnion::Value(from.as_bytes().to_vec())),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: to.as_bytes().to_vec(),
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    };
    ctx.txn(client, process, call, req)
        .await
        .is_some_and(|r| r.succeeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `storage::cold::NEWEST_MIN_BYTES` in warden-core (not a dependency
    /// of this crate).
    const SCRATCH_MIN: usize = 64;

    #[test]
    fn values_are_unique_and_half_of_them_leave_the_heap() {
        let values: Vec<String> = (1..=20).map(|seq| unique_value(3, seq)).collect();
        let distinct: std::collections::HashSet<&String> = values.iter().collect();
        assert_eq!(distinct.len(), values.len());
        let long = values.iter().filter(|v| v.len() >= SCRATCH_MIN).count();
        assert_eq!(long, 10);
    }
}
