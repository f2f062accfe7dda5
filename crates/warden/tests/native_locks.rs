//! warden's native lock service (`warden.v1.Locks`) on a real 3-member
//! cluster: shared and exclusive modes, fair queues, fencing tokens, lease
//! expiry ending holds, fenced writes, and holds surviving a leader kill.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::time::Duration;

use common::{eventually, get, Cluster};
use tonic::transport::Channel;
use tonic::Streaming;
use warden_proto::etcdserverpb as epb;
use warden_proto::etcdserverpb::lease_client::LeaseClient;
use warden_proto::warden::v1 as pb;
use warden_proto::warden::v1::acquire_response::State;
use warden_proto::warden::v1::locks_client::LocksClient;

const ELECT: Duration = Duration::from_secs(20);

async fn grant(ch: &Channel, ttl: i64) -> i64 {
    LeaseClient::new(ch.clone())
        .lease_grant(epb::LeaseGrantRequest { ttl, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id
}

fn req(
    name: &str,
    mode: pb::LockMode,
    lease: i64,
    wait_ms: i64,
    owner: &str,
) -> pb::AcquireRequest {
    pb::AcquireRequest {
        name: name.into(),
        mode: mode as i32,
        lease,
        wait_timeout_ms: wait_ms,
        owner: owner.into(),
        ..Default::default()
    }
}

async fn acquire(ch: &Channel, r: pb::AcquireRequest) -> Streaming<pb::AcquireResponse> {
    LocksClient::new(ch.clone())
        .acquire(r)
        .await
        .expect("acquire")
        .into_inner()
}

async fn next(s: &mut Streaming<pb::AcquireResponse>) -> pb::AcquireResponse {
    tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("lock answer in time")
        .expect("stream ok")
        .expect("stream open")
}

fn state(r: &pb::AcquireResponse) -> State {
    State::try_from(r.state).expect("state")
}

/// Keeps a lease alive through `ch` until dropped.
fn keep_alive(ch: &Channel, id: i64) -> tokio::task::JoinHandle<()> {
    let ch = ch.clone();
    tokio::spawn(async move {
        loop {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let stream = LeaseClient::new(ch.clone())
                .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            if let Ok(s) = stream {
                let mut s = s.into_inner();
                while tx.send(epb::LeaseKeepAliveRequest { id }).await.is_ok() {
                    match s.message().await {
                        Ok(Some(r)) if r.ttl > 0 => {}
                        _ => break,
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_queues_tokens_and_fencing() {
    use pb::LockMode::{Exclusive, Shared};
    let c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    let ch = common::channel(&c.members[2].client).await;
    let mut leases = Vec::new();
    for _ in 0..5 {
        leases.push(grant(&ch, 60).await);
    }

    // Two shared holders at once.
    let mut s1 = acquire(&ch, req("db", Shared, leases[0], -1, "s1")).await;
    let g1 = next(&mut s1).await;
    assert_eq!(state(&g1), State::Granted);
    let mut s2 = acquire(&ch, req("db", Shared, leases[1], -1, "s2")).await;
    let g2 = next(&mut s2).await;
    assert_eq!(state(&g2), State::Granted);
    assert!(g2.token > g1.token);
    // Try-acquire of exclusive: would block, nothing queued.
    let mut t = acquire(&ch, req("db", Exclusive, leases[2], 0, "try")).await;
    assert_eq!(state(&next(&mut t).await), State::WouldBlock);
    // An exclusive waiter queues; a later shared request queues behind it
    // (no starvation of the exclusive waiter).
    let mut x = acquire(&ch, req("db", Exclusive, leases[2], -1, "x")).await;
    let q = next(&mut x).await;
    assert_eq!((state(&q), q.position), (State::Queued, 0));
    let mut s3 = acquire(&ch, req("db", Shared, leases[3], -1, "s3")).await;
    let q3 = next(&mut s3).await;
    assert_eq!((state(&q3), q3.position), (State::Queued, 1));
    // Inspect shows holders in grant order and the queue in order.
    let info = LocksClient::new(ch.clone())
        .inspect(pb::InspectRequest {
            name: "db".into(),
            prefix: false,
        })
        .await
        .expect("inspect")
        .into_inner();
    let l = &info.locks[0];
    let owners: Vec<&str> = l.holders.iter().map(|h| h.owner.as_str()).collect();
    assert_eq!(owners, ["s1", "s2"]);
    let waiting: Vec<&str> = l.waiters.iter().map(|w| w.owner.as_str()).collect();
    assert_eq!(waiting, ["x", "s3"]);

    // Fenced writes: a holder's token passes.
    let fenced = |token: u64, v: &str| pb::FencedTxnRequest {
        name: "db".into(),
        token,
        txn: Some(epb::TxnRequest {
            success: vec![epb::RequestOp {
                request: Some(epb::request_op::Request::RequestPut(epb::PutRequest {
                    key: b"guarded".to_vec(),
                    value: v.as_bytes().to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        }),
    };
    let mut locks = LocksClient::new(ch.clone());
    locks
        .fenced_txn(fenced(g1.token, "s1"))
        .await
        .expect("fenced by a holder");

    // Releasing both shared holds grants the exclusive waiter only.
    for (tok, s) in [(g1.token, &mut s1), (g2.token, &mut s2)] {
        locks
            .release(pb::ReleaseRequest {
                name: "db".into(),
                token: tok,
            })
            .await
            .expect("release");
        assert_eq!(state(&next(s).await), State::Lost, "holder told of release");
    }
    let gx = next(&mut x).await;
    assert_eq!(state(&gx), State::Granted);
    assert!(gx.token > g2.token);
    // The released token is stale now: refused, nothing written.
    let err = locks
        .fenced_txn(fenced(g1.token, "stale"))
        .await
        .expect_err("stale token");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("fenced write refused"),
        "{}",
        err.message()
    );
    assert_eq!(
        get(&c.members[0].client, "guarded", false)
            .await
            .expect("get"),
        Some(b"s1".to_vec())
    );

    // The exclusive holder's lease is revoked: it is told, and the shared
    // waiter is granted in the same step.
    LeaseClient::new(ch.clone())
        .lease_revoke(epb::LeaseRevokeRequest { id: leases[2] })
        .await
        .expect("revoke");
    let lost = next(&mut x).await;
    assert_eq!(state(&lost), State::Lost);
    assert!(lost.reason.contains("lease"), "{}", lost.reason);
    let g3 = next(&mut s3).await;
    assert_eq!(state(&g3), State::Granted);
    assert!(g3.token > gx.token);

    // A wait with a timeout gives up and leaves no waiter behind.
    let mut late = acquire(&ch, req("db", Exclusive, leases[4], 300, "late")).await;
    assert_eq!(state(&next(&mut late).await), State::Queued);
    let end = tokio::time::timeout(Duration::from_secs(20), late.message())
        .await
        .expect("timeout answer");
    let status = end.expect_err("timed out");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    eventually(Duration::from_secs(10), || {
        let mut locks = locks.clone();
        async move {
            let info = locks
                .inspect(pb::InspectRequest {
                    name: "db".into(),
                    prefix: false,
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            let waiters = info.locks.first().map_or(0, |l| l.waiters.len());
            if waiters == 0 {
                Ok(())
            } else {
                Err(format!("{waiters} waiters left"))
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_and_queues_survive_leader_kill() {
    use pb::LockMode::Exclusive;
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let follower = (leader + 1) % 3;
    let ch = common::channel(&c.members[follower].client).await;
    // Short leases, kept alive through the follower: if the new leader
    // expired them early, the holder would be told LOST.
    let ttl = 3;
    let (l1, l2, l3) = (
        grant(&ch, ttl).await,
        grant(&ch, ttl).await,
        grant(&ch, ttl).await,
    );
    let keepers = [
        keep_alive(&ch, l1),
        keep_alive(&ch, l2),
        keep_alive(&ch, l3),
    ];
    let mut h = acquire(&ch, req("job", Exclusive, l1, -1, "holder")).await;
    let gh = next(&mut h).await;
    assert_eq!(state(&gh), State::Granted);
    let mut w1 = acquire(&ch, req("job", Exclusive, l2, -1, "w1")).await;
    assert_eq!(state(&next(&mut w1).await), State::Queued);
    let mut w2 = acquire(&ch, req("job", Exclusive, l3, -1, "w2")).await;
    assert_eq!(state(&next(&mut w2).await), State::Queued);

    c.kill(leader);
    c.wait_leader(ELECT).await;
    // Several TTLs pass under the new leader: the hold stays (no early
    // expiry), the waiters stay queued.
    tokio::time::sleep(Duration::from_secs(2 * ttl as u64)).await;
    let mut locks = LocksClient::new(ch.clone());
    let info = locks
        .inspect(pb::InspectRequest {
            name: "job".into(),
            prefix: false,
        })
        .await
        .expect("inspect")
        .into_inner();
    let l = &info.locks[0];
    assert_eq!(l.holders.len(), 1);
    assert_eq!(
        l.holders[0].token, gh.token,
        "the hold survived the failover"
    );
    assert_eq!(l.waiters.len(), 2);
    // Release: granted in queue order with increasing tokens.
    locks
        .release(pb::ReleaseRequest {
            name: "job".into(),
            token: gh.token,
        })
        .await
        .expect("release");
    let g1 = next(&mut w1).await;
    assert_eq!(state(&g1), State::Granted);
    assert!(g1.token > gh.token);
    locks
        .release(pb::ReleaseRequest {
            name: "job".into(),
            token: g1.token,
        })
        .await
        .expect("release");
    let g2 = next(&mut w2).await;
    assert_eq!(state(&g2), State::Granted);
    assert!(g2.token > g1.token);
    for k in keepers {
        k.abort();
    }
    // With the keep-alives stopped the last holder's lease runs out and the
    // holder is told.
    let lost = next(&mut w2).await;
    assert_eq!(state(&lost), State::Lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_locks_reports_changes_in_order() {
    use pb::lock_event::Kind;
    use pb::LockMode::Exclusive;
    let c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    let ch = common::channel(&c.members[0].client).await;
    let watch_ch = common::channel(&c.members[1].client).await;
    let mut events = LocksClient::new(watch_ch)
        .watch_locks(pb::WatchLocksRequest {
            name: "q/".into(),
            prefix: true,
        })
        .await
        .expect("watch locks")
        .into_inner();
    let (l1, l2) = (grant(&ch, 60).await, grant(&ch, 60).await);
    let mut a = acquire(&ch, req("q/one", Exclusive, l1, -1, "a")).await;
    let ga = next(&mut a).await;
    let mut b = acquire(&ch, req("q/one", Exclusive, l2, -1, "b")).await;
    assert_eq!(state(&next(&mut b).await), State::Queued);
    // Not under the prefix: not reported.
    let mut other = acquire(&ch, req("elsewhere", Exclusive, l1, -1, "x")).await;
    assert_eq!(state(&next(&mut other).await), State::Granted);
    LeaseClient::new(ch.clone())
        .lease_revoke(epb::LeaseRevokeRequest { id: l1 })
        .await
        .expect("revoke");
    let gb = next(&mut b).await;
    assert_eq!(state(&gb), State::Granted);
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let r = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("event in time")
            .expect("stream ok")
            .expect("stream open");
        assert!(!r.lagged);
        for e in r.events {
            seen.push((
                Kind::try_from(e.kind).expect("kind"),
                e.name.clone(),
                e.token,
                e.owner.clone(),
            ));
        }
    }
    assert_eq!(
        seen,
        vec![
            (Kind::Granted, "q/one".into(), ga.token, "a".into()),
            (Kind::Queued, "q/one".into(), 0, String::new()),
            (Kind::Expired, "q/one".into(), ga.token, String::new()),
            (Kind::Granted, "q/one".into(), gb.token, "b".into()),
        ]
    );
}
