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
    let fenced = |g: &pb::AcquireResponse, v: &str| pb::FencedTxnRequest {
        name: "db".into(),
        token: g.token,
        handle: g.handle.clone(),
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
        .fenced_txn(fenced(&g1, "s1"))
        .await
        .expect("fenced by a holder");

    // Releasing both shared holds grants the exclusive waiter only.
    for (g, s) in [(&g1, &mut s1), (&g2, &mut s2)] {
        locks
            .release(pb::ReleaseRequest {
                name: "db".into(),
                token: g.token,
                handle: g.handle.clone(),
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
        .fenced_txn(fenced(&g1, "stale"))
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
            handle: gh.handle.clone(),
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
            handle: g1.handle.clone(),
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

/// What a client that is not the holder can learn: the lock's name and
/// the holder's token (Inspect shows them to anyone with read access).
async fn inspect_token(ch: &Channel, name: &str) -> u64 {
    let info = LocksClient::new(ch.clone())
        .inspect(pb::InspectRequest {
            name: name.into(),
            prefix: false,
        })
        .await
        .expect("inspect")
        .into_inner();
    assert_eq!(info.locks.len(), 1, "{info:?}");
    assert_eq!(info.locks[0].holders.len(), 1, "{info:?}");
    info.locks[0].holders[0].token
}

fn fence(name: &str, token: u64, handle: &[u8], value: &str) -> pb::FencedTxnRequest {
    pb::FencedTxnRequest {
        name: name.into(),
        token,
        handle: handle.to_vec(),
        txn: Some(epb::TxnRequest {
            success: vec![epb::RequestOp {
                request: Some(epb::request_op::Request::RequestPut(epb::PutRequest {
                    key: format!("{name}/data").into_bytes(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        }),
    }
}

fn release(name: &str, token: u64, handle: &[u8]) -> pb::ReleaseRequest {
    pb::ReleaseRequest {
        name: name.into(),
        token,
        handle: handle.to_vec(),
    }
}

/// Runs `call` until it gets an answer that is not UNAVAILABLE (a member
/// just restarted, an election in progress): the answer.
async fn answered<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    eventually(Duration::from_secs(30), || {
        let fut = call();
        async move {
            match fut.await {
                Err(s) if s.code() == tonic::Code::Unavailable => Err(s.to_string()),
                other => Ok(other),
            }
        }
    })
    .await
}

/// A client that knows the name and token (from Inspect) but not the
/// handle is refused, releasing and fencing, with the token alone, with a
/// guessed handle, or with a handle of the wrong size; nothing changes.
async fn stranger_is_refused(ch: &Channel, name: &str, token: u64) {
    let mut locks = LocksClient::new(ch.clone());
    let guessed = [0x5au8; 16];
    for (handle, msg) in [
        (&[][..], "the holder's handle is required"),
        (&guessed[..], "handle does not match the holder"),
    ] {
        let want = format!("warden: lock \"{name}\" token {token}: {msg}");
        let r = answered(|| {
            let mut l = locks.clone();
            let req = release(name, token, handle);
            async move { l.release(req).await }
        })
        .await;
        let e = r.expect_err("a stranger's release");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(e.message().starts_with(&want), "{}", e.message());
        let r = answered(|| {
            let mut l = locks.clone();
            let req = fence(name, token, handle, "stranger");
            async move { l.fenced_txn(req).await }
        })
        .await;
        let e = r.expect_err("a stranger's fenced write");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(e.message().starts_with(&want), "{}", e.message());
    }
    let e = locks
        .release(release(name, token, &[1, 2, 3]))
        .await
        .expect_err("not a handle");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    // Still held by the same token; the stranger wrote nothing.
    assert_eq!(inspect_token(ch, name).await, token);
    let written = answered(|| {
        let addr = ch.clone();
        async move {
            epb::kv_client::KvClient::new(addr)
                .range(epb::RangeRequest {
                    key: format!("{name}/data").into_bytes(),
                    ..Default::default()
                })
                .await
        }
    })
    .await
    .expect("get")
    .into_inner();
    assert!(
        written.kvs.iter().all(|kv| kv.value != b"stranger"),
        "{written:?}"
    );
}

/// Proving you hold a lock: only the client that got the handle with
/// GRANTED can release the hold or fence a write with it, before and
/// after the leader is killed (SIGKILL) and restarted (from a snapshot
/// holding the digest: one every 5 entries) and leads again; a waiter
/// granted later gets its own handle, and the old one does not work for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_holder_can_release_or_fence() {
    use pb::LockMode::Exclusive;
    let mut c = Cluster::start_with(3, &["--snapshot-entries", "5"]);
    let leader = c.wait_leader(ELECT).await;
    let (holder_at, stranger_at) = ((leader + 1) % 3, (leader + 2) % 3);
    let ch = common::channel(&c.members[holder_at].client).await;
    let stranger = common::channel(&c.members[stranger_at].client).await;
    let (l1, l2) = (grant(&ch, 120).await, grant(&ch, 120).await);
    let mut h = acquire(&ch, req("job", Exclusive, l1, -1, "holder")).await;
    let g = next(&mut h).await;
    assert_eq!(state(&g), State::Granted);
    assert_eq!(g.handle.len(), 16, "GRANTED carries the handle");
    let mut w = acquire(&ch, req("job", Exclusive, l2, -1, "waiter")).await;
    let q = next(&mut w).await;
    assert_eq!(state(&q), State::Queued);
    assert!(q.handle.is_empty(), "a handle only comes with GRANTED");

    let token = inspect_token(&stranger, "job").await;
    assert_eq!(token, g.token);
    stranger_is_refused(&stranger, "job", token).await;
    // The holder's handle does what the stranger could not.
    let mut locks = LocksClient::new(ch.clone());
    locks
        .fenced_txn(fence("job", g.token, &g.handle, "holder-1"))
        .await
        .expect("the holder's fenced write");

    // The leader is killed and restarted on its data dir: the digest is in
    // the replicated state (and its snapshots), not in any member's memory.
    // Snapshots are taken by a background task (node/snapshot_policy.rs)
    // once the applied log reaches the interval: wait for one on disk.
    let snaps = c.members[leader].dir.join("snap");
    eventually(Duration::from_secs(10), || {
        let snaps = snaps.clone();
        async move {
            let has_snapshot = std::fs::read_dir(&snaps)
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("snap-"))
                })
                .unwrap_or(false);
            if has_snapshot {
                Ok(())
            } else {
                Err(format!("no snapshot in {}", snaps.display()))
            }
        }
    })
    .await;
    c.kill(leader);
    c.wait_leader(ELECT).await;
    c.restart(leader);
    c.wait_leader(ELECT).await;
    // It leads again, so the refusals below are its own applies of the
    // state it reloaded.
    let restarted_ep = c.members[leader].client.clone();
    let (_, restarted_id, _) = answered(|| common::ids(&restarted_ep)).await.expect("ids");
    let all: Vec<String> = c.members.iter().map(|m| m.client.clone()).collect();
    eventually(Duration::from_secs(30), || {
        let (all, restarted_ep) = (all.clone(), restarted_ep.clone());
        async move {
            let s = common::status(&restarted_ep)
                .await
                .map_err(|e| e.to_string())?;
            if s.leader == restarted_id {
                return Ok(());
            }
            // Asked of every member: the leader is the one that moves it.
            let mut answers = Vec::new();
            for ep in &all {
                let r = epb::maintenance_client::MaintenanceClient::new(common::channel(ep).await)
                    .move_leader(epb::MoveLeaderRequest {
                        target_id: restarted_id,
                    })
                    .await;
                answers.push(r.map(|_| ()).map_err(|e| e.message().to_string()));
            }
            Err(format!("leader is {:x}: {answers:?}", s.leader))
        }
    })
    .await;
    let restarted = common::channel(&restarted_ep).await;
    stranger_is_refused(&restarted, "job", token).await;
    stranger_is_refused(&stranger, "job", token).await;
    answered(|| {
        let mut l = locks.clone();
        let req = fence("job", g.token, &g.handle, "holder-2");
        async move { l.fenced_txn(req).await }
    })
    .await
    .expect("the holder's fenced write after the failover");
    assert_eq!(
        get(&c.members[leader].client, "job/data", false)
            .await
            .expect("get"),
        Some(b"holder-2".to_vec())
    );

    // The holder releases with its handle; the waiter is granted with a
    // handle of its own.
    answered(|| {
        let mut l = locks.clone();
        let req = release("job", g.token, &g.handle);
        async move { l.release(req).await }
    })
    .await
    .expect("the holder's release");
    assert_eq!(state(&next(&mut h).await), State::Lost);
    let g2 = next(&mut w).await;
    assert_eq!(state(&g2), State::Granted);
    assert!(g2.token > g.token);
    assert_eq!(g2.handle.len(), 16);
    assert_ne!(g2.handle, g.handle);
    let e = locks
        .fenced_txn(fence("job", g2.token, &g.handle, "old-handle"))
        .await
        .expect_err("the previous holder's handle");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    let e = locks
        .fenced_txn(fence("job", g.token, &g.handle, "old-token"))
        .await
        .expect_err("the released token");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    stranger_is_refused(&restarted, "job", g2.token).await;
    locks
        .release(release("job", g2.token, &g2.handle))
        .await
        .expect("the waiter's release");
    assert_eq!(state(&next(&mut w).await), State::Lost);
    let info = locks
        .inspect(pb::InspectRequest {
            name: "job".into(),
            prefix: false,
        })
        .await
        .expect("inspect")
        .into_inner();
    assert!(info.locks.is_empty(), "{info:?}");
}

/// `warden lock NAME -- CMD` hands the command its handle in
/// WARDEN_LOCK_HANDLE (what a fenced write needs, and what nobody else
/// has: `warden put --fenced` in the command uses it, the same with a
/// guessed handle fails) and releases the lock with it when the command
/// ends: the hold ends RELEASED, not by its lease being revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warden_lock_hands_the_command_its_handle_and_releases_with_it() {
    use pb::lock_event::Kind;
    let c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    let ch = common::channel(&c.members[0].client).await;
    let mut events = LocksClient::new(ch.clone())
        .watch_locks(pb::WatchLocksRequest {
            name: "cli-job".into(),
            prefix: false,
        })
        .await
        .expect("watch locks")
        .into_inner();
    let dir = tempfile::tempdir().expect("tempdir");
    let cli = std::process::Command::new(common::BIN)
        .arg(format!("--endpoints={}", c.endpoints()))
        .args(["lock", "cli-job", "--"])
        .args([
            "sh",
            "-c",
            r#""$WARDEN" --endpoints="$EPS" put --fenced cli-job/data from-cli > put.out 2>&1 || exit 3
               echo "$WARDEN_LOCK_TOKEN $WARDEN_LOCK_HANDLE" > held.tmp && mv held.tmp held
               while [ ! -f go ]; do sleep 0.05; done"#,
        ])
        .env("WARDEN", common::BIN)
        .env("EPS", c.endpoints())
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn warden lock");
    let held = dir.path().join("held");
    let line = eventually(Duration::from_secs(30), || {
        let held = held.clone();
        async move { std::fs::read_to_string(&held).map_err(|e| e.to_string()) }
    })
    .await;
    let (token, hex) = line.trim().split_once(' ').expect("token and handle");
    let token: u64 = token.parse().expect("token");
    assert_eq!(hex.len(), 32, "{hex}");
    let handle: Vec<u8> = (0..32)
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("put.out")).expect("put output"),
        "OK\n"
    );
    assert_eq!(
        get(&c.members[2].client, "cli-job/data", false)
            .await
            .expect("get"),
        Some(b"from-cli".to_vec())
    );
    let other = common::channel(&c.members[1].client).await;
    stranger_is_refused(&other, "cli-job", token).await;
    // `warden put --fenced` with the name and token but a guessed handle,
    // or outside `warden lock`: refused.
    let stranger_put = |env: &[(&str, String)]| {
        let out = std::process::Command::new(common::BIN)
            .arg(format!("--endpoints={}", c.endpoints()))
            .args(["put", "--fenced", "cli-job/data", "stranger"])
            .env_remove("WARDEN_LOCK_NAME")
            .env_remove("WARDEN_LOCK_TOKEN")
            .env_remove("WARDEN_LOCK_HANDLE")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("warden put");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = stranger_put(&[
        ("WARDEN_LOCK_NAME", "cli-job".into()),
        ("WARDEN_LOCK_TOKEN", token.to_string()),
        ("WARDEN_LOCK_HANDLE", "00".repeat(16)),
    ]);
    assert!(err.contains("handle does not match the holder"), "{err}");
    let err = stranger_put(&[]);
    assert!(err.contains("--fenced needs WARDEN_LOCK_NAME"), "{err}");
    // The command's handle is the real one.
    LocksClient::new(other.clone())
        .fenced_txn(fence("cli-job", token, &handle, "from the command"))
        .await
        .expect("fenced write with the command's handle");
    std::fs::write(dir.path().join("go"), "").expect("go");
    let status = tokio::task::spawn_blocking(move || cli.wait_with_output())
        .await
        .expect("join")
        .expect("warden lock");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|(k, _)| *k == Kind::Released || *k == Kind::Expired)
    {
        let r = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("event in time")
            .expect("stream ok")
            .expect("stream open");
        for e in r.events {
            seen.push((Kind::try_from(e.kind).expect("kind"), e.token));
        }
    }
    assert_eq!(
        seen,
        vec![(Kind::Granted, token), (Kind::Released, token)],
        "released with the handle, not expired by the lease revoke"
    );
}
