//! The counter workload: exactly-once increments through `warden-client`.
//!
//! Each client has its own `Client` with `exactly_once` on and its own
//! client id, so every write carries (client id, request id) and a write
//! whose outcome is unknown (timeout, leader change, reset) is retried by
//! the library with the same id once the cluster has answered
//! `warden-applied-once`. The server must apply each (client, request) at
//! most once and answer a retry with the first attempt's response.
//!
//! An increment reads a counter (linearizable) and sends one Txn:
//!
//! ```text
//! if mod_revision(counter) == seen
//! then put counter = value + 1, put marker = "applied COUNTER VALUE+1"
//! else put marker = "refused COUNTER"
//! ```
//!
//! where the marker key names the client and the increment's sequence
//! number (`keys::increment_marker`). Both branches write the marker, so
//! every applied Txn leaves exactly one marker of version 1; a Txn applied
//! twice rewrites its marker (version 2) and, if the first application
//! incremented, the second finds the compare false and turns the marker to
//! "refused" while the counter keeps the increment. A retry that was
//! re-executed instead of answered from the first attempt's response
//! reports `succeeded: false` for an increment that was applied. The
//! counter checker (`check::counter`) looks for all of these; the
//! `duplicate-increments` fault proves it on a live cluster.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{create_once, keys, revision_of, think, Ctx, Fault};
use crate::history::{Call, Ret, HARNESS};
use warden_client::{Client, GetOptions};
use warden_proto::etcdserverpb::{compare, request_op, Compare, PutRequest, RequestOp, TxnRequest};

/// What an increment's marker says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerValue {
    /// The compare held: the counter was set to `to`.
    Applied { counter: u32, to: i64 },
    /// The compare failed: nothing but the marker was written.
    Refused { counter: u32 },
}

impl MarkerValue {
    pub fn render(self) -> String {
        match self {
            MarkerValue::Applied { counter, to } => format!("applied {counter} {to}"),
            MarkerValue::Refused { counter } => format!("refused {counter}"),
        }
    }

    pub fn parse(s: &str) -> Option<MarkerValue> {
        let mut it = s.split(' ');
        let v = match (it.next()?, it.next()?.parse().ok()?, it.next()) {
            ("applied", counter, Some(to)) => MarkerValue::Applied {
                counter,
                to: to.parse().ok()?,
            },
            ("refused", counter, None) => MarkerValue::Refused { counter },
            _ => return None,
        };
        it.next().is_none().then_some(v)
    }

    pub fn counter(self) -> u32 {
        match self {
            MarkerValue::Applied { counter, .. } | MarkerValue::Refused { counter } => counter,
        }
    }
}

fn put(key: String, value: String) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into_bytes(),
            value: value.into_bytes(),
            ..Default::default()
        })),
    }
}

/// Creates the counters at 0 (once: only if counter 0 does not exist, so a
/// retry after an indeterminate attempt cannot reset them).
pub async fn init(ctx: &Ctx, counters: u32) -> anyhow::Result<()> {
    let call = Call::CountersInit { counters };
    let keys = (0..counters)
        .map(|i| (keys::count(i), "0".to_string()))
        .collect();
    create_once(ctx, &call, keys, "counters").await
}

/// The client id of counter client `process`: one per client, unique in
/// the run's cluster.
pub fn client_id(seed: u64, process: u32) -> String {
    format!("chaos-counter-{seed}-{process}")
}

/// Runs one counter client until the run ends.
pub async fn run(ctx: Arc<Ctx>, process: u32, counters: u32) -> anyhow::Result<()> {
    let mut opts = ctx.opts.clone();
    opts.exactly_once = true;
    opts.client_id = Some(client_id(ctx.seed, process));
    let client = Client::connect(&ctx.topo.client_addrs, opts).await?;
    // Under the duplicate-increments fault: an untagged client.
    let duplicates = match ctx.fault {
        Some(Fault::DuplicateIncrements) => Some(ctx.client().await?),
        _ => None,
    };
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (u64::from(process) << 32) ^ 0x4354_5253);
    let counters = counters.max(1);
    let mut seq = 0u64;
    while ctx.running() {
        let counter = rng.random_range(0..counters);
        if let Some((from, mod_revision)) = read(&ctx, &client, process, counter).await {
            seq += 1;
            let acked = increment(&ctx, &client, process, counter, seq, from, mod_revision).await;
            if let (Some(again), Some(req)) =
                (&duplicates, acked.filter(|_| seq.is_multiple_of(10)))
            {
                // Not recorded: the harness misbehaves behind the
                // checker's back, as a buggy retry would.
                let _ = again.txn(req).await;
            }
        }
        think(&mut rng).await;
    }
    Ok(())
}

/// Reads a counter; records the read. Returns (value, mod revision) if it
/// is there and a number.
async fn read(ctx: &Ctx, client: &Client, process: u32, counter: u32) -> Option<(i64, i64)> {
    let call = Call::CounterGet { counter };
    let invoke = ctx.rec.now();
    match client
        .get(keys::count(counter), GetOptions::default())
        .await
    {
        Ok(r) => {
            let kv = r.kvs.first();
            let value = kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            let mod_revision = kv.map_or(0, |kv| kv.mod_revision);
            let parsed = value.as_deref().and_then(|v| v.parse::<i64>().ok());
            ctx.record_ok(
                process,
                invoke,
                call,
                Ret::Read {
                    value,
                    mod_revision,
                    revision: revision_of(r.header.as_ref()),
                },
                r.header.as_ref(),
            );
            Some((parsed?, mod_revision))
        }
        Err(e) => {
            ctx.record_err(process, invoke, call, &e);
            None
        }
    }
}

/// Sends one increment and records it; returns its Txn if it was
/// acknowledged.
async fn increment(
    ctx: &Ctx,
    client: &Client,
    process: u32,
    counter: u32,
    seq: u64,
    from: i64,
    mod_revision: i64,
) -> Option<TxnRequest> {
    let marker = keys::increment_marker(process, seq);
    let req = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: keys::count(counter).into_bytes(),
            range_end: Vec::new(),
            target_union: Some(compare::TargetUnion::ModRevision(mod_revision)),
        }],
        success: vec![
            put(keys::count(counter), (from + 1).to_string()),
            put(
                marker.clone(),
                MarkerValue::Applied {
                    counter,
                    to: from + 1,
                }
                .render(),
            ),
        ],
        failure: vec![put(marker, MarkerValue::Refused { counter }.render())],
    };
    let call = Call::Increment {
        counter,
        seq,
        from,
        mod_revision,
    };
    ctx.txn(client, process, call, req.clone())
        .await
        .map(|_| req)
}

/// Reads every counter and marker in one Range (one revision) as the
/// harness, retrying a few times; records it as `CountersFinal`.
pub async fn final_read(ctx: &Ctx, client: &Client) {
    for _ in 0..10 {
        let invoke = ctx.rec.now();
        match client.get(keys::COUNTERS, GetOptions::prefix()).await {
            Ok(r) => {
                let mut counters = Vec::new();
                let mut markers = Vec::new();
                for kv in &r.kvs {
                    let value = String::from_utf8_lossy(&kv.value).into_owned();
                    if let Some(counter) = keys::count_number(&kv.key) {
                        counters.push(crate::history::CounterState {
                            counter,
                            value: value.parse().ok(),
                            version: kv.version,
                        });
                    } else if let Some((process, seq)) = keys::marker_of(&kv.key) {
                        markers.push(crate::history::Marker {
                            process,
                            seq,
                            value,
                            version: kv.version,
                            mod_revision: kv.mod_revision,
                        });
                    }
                }
                ctx.record_ok(
                    HARNESS,
                    invoke,
                    Call::CountersFinal,
                    Ret::Counters {
                        counters,
                        markers,
                        revision: revision_of(r.header.as_ref()),
                    },
                    r.header.as_ref(),
                );
                return;
            }
            Err(e) => {
                ctx.record_err(HARNESS, invoke, Call::CountersFinal, &e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_values_round_trip() {
        for m in [
            MarkerValue::Applied { counter: 2, to: 17 },
            MarkerValue::Refused { counter: 0 },
        ] {
            assert_eq!(MarkerValue::parse(&m.render()), Some(m));
        }
        for bad in [
            "",
            "applied 1",
            "refused",
            "refused 1 2",
            "applied x 1",
            "x 1 2",
        ] {
            assert_eq!(MarkerValue::parse(bad), None, "{bad:?}");
        }
        assert_ne!(client_id(1, 2), client_id(1, 3));
    }
}
