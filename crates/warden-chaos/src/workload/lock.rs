//! The lock workload: each cycle grants a lease, acquires an exclusive
//! native lock (`warden.v1.Locks/Acquire`) with it, reads the counter the
//! lock guards, writes counter + 1 with `FencedTxn` carrying the grant's
//! token and handle, releases (with the handle), and revokes the lease. Now and then a client stalls
//! past its lease's TTL while holding (a GC-like pause), so that another
//! client is granted the lock and the stale holder's fenced write must be
//! refused.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

use super::{keys, outcome_of_status, revision_of, think, with_timeout, Ctx};
use crate::history::{Call, Outcome, Ret};
use warden_client::{Client, GetOptions, OpKind};
use warden_proto::etcdserverpb::{
    lease_client::LeaseClient, request_op, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RequestOp, TxnRequest,
};
use warden_proto::warden::v1 as pb;
use warden_proto::warden::v1::acquire_response::State;
use warden_proto::warden::v1::locks_client::LocksClient;

/// Lease TTL of a lock session, seconds.
pub const TTL: i64 = 3;
/// How long an acquire waits in the queue.
const WAIT_MS: i64 = 3000;
/// One cycle in this many stalls past the TTL while holding.
const PAUSE_ONE_IN: u32 = 25;

/// Runs one lock client until the run ends.
pub async fn run(ctx: Arc<Ctx>, process: u32, locks: usize) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (u64::from(process) << 32) ^ 0x4c4f_434b);
    while ctx.running() {
        let lock = keys::lock(rng.random_range(0..locks.max(1)));
        cycle(&ctx, &client, process, &lock, &mut rng).await;
        think(&mut rng).await;
    }
    Ok(())
}

async fn cycle(ctx: &Ctx, client: &Client, process: u32, lock: &str, rng: &mut StdRng) {
    let Some(lease) = grant(ctx, client, process).await else {
        tokio::time::sleep(Duration::from_millis(100)).await;
        return;
    };
    if let Some((token, handle)) = acquire(ctx, client, process, lock, lease).await {
        let held = Held {
            lock,
            token,
            handle,
        };
        hold(ctx, client, process, &held, rng).await;
    }
    revoke(ctx, client, process, lease).await;
}

async fn grant(ctx: &Ctx, client: &Client, process: u32) -> Option<i64> {
    let call = Call::LeaseGrant { ttl: TTL };
    let invoke = ctx.rec.now();
    let r = client
        .request(OpKind::Write, |ch, t| async move {
            LeaseClient::new(ch)
                .lease_grant(with_timeout(LeaseGrantRequest { ttl: TTL, id: 0 }, t))
                .await
        })
        .await;
    match r {
        Ok(r) => {
            ctx.record_ok(
                process,
                invoke,
                call,
                Ret::Lease { id: r.id },
                r.header.as_ref(),
            );
            Some(r.id)
        }
        Err(e) => {
            ctx.record_err(process, invoke, call, &e);
            None
        }
    }
}

async fn revoke(ctx: &Ctx, client: &Client, process: u32, lease: i64) {
    let call = Call::LeaseRevoke { lease };
    let invoke = ctx.rec.now();
    let r = client
        .request(OpKind::Write, |ch, t| async move {
            LeaseClient::new(ch)
                .lease_revoke(with_timeout(LeaseRevokeRequest { id: lease }, t))
                .await
        })
        .await;
    match r {
        Ok(r) => ctx.record_ok(
            process,
            invoke,
            call,
            Ret::Done {
                revision: revision_of(r.header.as_ref()),
            },
            r.header.as_ref(),
        ),
        Err(e) => ctx.record_err(process, invoke, call, &e),
    }
}

/// A hold: what its fenced writes and its release carry.
struct Held<'a> {
    lock: &'a str,
    token: u64,
    /// The secret handle GRANTED came with.
    handle: Vec<u8>,
}

/// Acquires `lock`; the token and handle if granted.
async fn acquire(
    ctx: &Ctx,
    client: &Client,
    process: u32,
    lock: &str,
    lease: i64,
) -> Option<(u64, Vec<u8>)> {
    let call = Call::Acquire {
        lock: lock.to_string(),
        lease,
    };
    let invoke = ctx.rec.now();
    let ((outcome, ret, error, member), handle) =
        acquire_stream(ctx, client, process, lock, lease).await;
    let token = match &ret {
        Some(Ret::Granted { token, .. }) => Some((*token, handle)),
        _ => None,
    };
    ctx.rec
        .record(process, invoke, call, outcome, ret, error, member);
    token
}

type Answer = (Outcome, Option<Ret>, Option<String>, Option<String>);

/// The answer to an acquire, and the handle of the hold if granted.
async fn acquire_stream(
    ctx: &Ctx,
    client: &Client,
    process: u32,
    lock: &str,
    lease: i64,
) -> (Answer, Vec<u8>) {
    let mut handle = Vec::new();
    let answer = acquire_answer(ctx, client, process, lock, lease, &mut handle).await;
    (answer, handle)
}

async fn acquire_answer(
    ctx: &Ctx,
    client: &Client,
    process: u32,
    lock: &str,
    lease: i64,
    handle: &mut Vec<u8>,
) -> Answer {
    let req = pb::AcquireRequest {
        name: lock.to_string(),
        mode: pb::LockMode::Exclusive as i32,
        lease,
        ttl: 0,
        wait_timeout_ms: WAIT_MS,
        priority: 0,
        owner: format!("p{process}"),
        handle: Vec::new(),
    };
    let limit = ctx.opts.timeout + Duration::from_millis(WAIT_MS as u64);
    let deadline = tokio::time::Instant::now() + limit;
    let mut last_err = String::from("no endpoint");
    let channels = match client.stream_channels().await {
        Ok(c) => c,
        Err(e) => return (Outcome::Fail, None, Some(e.to_string()), None),
    };
    for (ep, ch) in channels {
        let opened = tokio::time::timeout_at(
            deadline,
            LocksClient::new(ch).acquire(tonic::Request::new(req.clone())),
        )
        .await;
        let mut stream = match opened {
            Err(_) => return (Outcome::Info, None, Some("timed out".into()), Some(ep)),
            Ok(Err(s)) => {
                if outcome_of_status(&s) == Outcome::Fail && s.code() == Code::Unavailable {
                    // Never reached the member: try the next one.
                    last_err = s.to_string();
                    continue;
                }
                return (outcome_of_status(&s), None, Some(s.to_string()), Some(ep));
            }
            Ok(Ok(s)) => s.into_inner(),
        };
        loop {
            let msg = tokio::time::timeout_at(deadline, stream.message()).await;
            match msg {
                Err(_) => {
                    return (
                        Outcome::Info,
                        None,
                        Some("timed out waiting for the grant".into()),
                        Some(ep),
                    )
                }
                Ok(Ok(Some(r))) => {
                    let member = ctx.topo.name_of(r.header.as_ref()).or(Some(ep.clone()));
                    match State::try_from(r.state) {
                        Ok(State::Queued) => continue,
                        Ok(State::Granted) => {
                            *handle = r.handle;
                            return (
                                Outcome::Ok,
                                Some(Ret::Granted {
                                    token: r.token,
                                    revision: revision_of(r.header.as_ref()),
                                }),
                                None,
                                member,
                            );
                        }
                        Ok(State::WouldBlock) | Ok(State::Lost) => {
                            return (
                                Outcome::Fail,
                                None,
                                Some(format!("{:?}: {}", r.state, r.reason)),
                                member,
                            )
                        }
                        Err(_) => {
                            return (
                                Outcome::Info,
                                None,
                                Some(format!("unknown state {}", r.state)),
                                member,
                            )
                        }
                    }
                }
                Ok(Ok(None)) => {
                    return (
                        Outcome::Info,
                        None,
                        Some("stream ended before a grant".into()),
                        Some(ep),
                    )
                }
                Ok(Err(s)) => {
                    // The server's own wait timeout withdraws the request.
                    let outcome = if s.code() == Code::DeadlineExceeded
                        && s.message().contains("timed out waiting for lock")
                    {
                        Outcome::Fail
                    } else {
                        outcome_of_status(&s)
                    };
                    return (outcome, None, Some(s.to_string()), Some(ep));
                }
            }
        }
    }
    (Outcome::Fail, None, Some(last_err), None)
}

async fn hold(ctx: &Ctx, client: &Client, process: u32, held: &Held<'_>, rng: &mut StdRng) {
    let (lock, token) = (held.lock, held.token);
    let key = keys::counter(lock);
    // Read the counter.
    let call = Call::CounterRead {
        lock: lock.to_string(),
    };
    let invoke = ctx.rec.now();
    let current = match client.get(key.clone(), GetOptions::default()).await {
        Ok(r) => {
            let kv = r.kvs.first();
            let value = kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            let n: i64 = value.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
            ctx.record_ok(
                process,
                invoke,
                call,
                Ret::Read {
                    value,
                    mod_revision: kv.map_or(0, |kv| kv.mod_revision),
                    revision: revision_of(r.header.as_ref()),
                },
                r.header.as_ref(),
            );
            Some(n)
        }
        Err(e) => {
            ctx.record_err(process, invoke, call, &e);
            None
        }
    };
    if let Some(from) = current {
        if rng.random_ratio(1, PAUSE_ONE_IN) {
            let ms = (TTL as u64) * 1000 + 1500;
            let invoke = ctx.rec.now();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ctx.rec.record(
                process,
                invoke,
                Call::ClientPause {
                    lock: lock.to_string(),
                    token,
                    ms,
                },
                Outcome::Ok,
                None,
                None,
                None,
            );
        }
        fenced_incr(ctx, client, process, held, from).await;
    }
    release(ctx, client, process, held).await;
}

async fn fenced_incr(ctx: &Ctx, client: &Client, process: u32, held: &Held<'_>, from: i64) {
    let (lock, token) = (held.lock, held.token);
    let to = from + 1;
    let call = Call::FencedIncr {
        lock: lock.to_string(),
        token,
        from,
        to,
    };
    let req = pb::FencedTxnRequest {
        name: lock.to_string(),
        token,
        txn: Some(TxnRequest {
            compare: Vec::new(),
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: keys::counter(lock).into_bytes(),
                    value: to.to_string().into_bytes(),
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        }),
        handle: held.handle.clone(),
    };
    let invoke = ctx.rec.now();
    let r = client
        .request(OpKind::Write, |ch, t| {
            let req = req.clone();
            async move { LocksClient::new(ch).fenced_txn(with_timeout(req, t)).await }
        })
        .await;
    match r {
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

async fn release(ctx: &Ctx, client: &Client, process: u32, held: &Held<'_>) {
    let call = Call::Release {
        lock: held.lock.to_string(),
        token: held.token,
    };
    let req = pb::ReleaseRequest {
        name: held.lock.to_string(),
        token: held.token,
        handle: held.handle.clone(),
    };
    let invoke = ctx.rec.now();
    let r = client
        .request(OpKind::Write, |ch, t| {
            let req = req.clone();
            async move { LocksClient::new(ch).release(with_timeout(req, t)).await }
        })
        .await;
    match r {
        Ok(r) => ctx.record_ok(
            process,
            invoke,
            call,
            Ret::Done {
                revision: revision_of(r.header.as_ref()),
            },
            r.header.as_ref(),
        ),
        Err(e) => ctx.record_err(process, invoke, call, &e),
    }
}
