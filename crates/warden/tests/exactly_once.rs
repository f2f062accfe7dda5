//! Exactly-once writes (SPEC K4) against real servers: a put tagged with
//! `warden-client-id` / `warden-request-id` is sent to a follower, the
//! leader is SIGKILLed, and the same put is sent again to the new leader,
//! to the restarted old leader (which loads its snapshot) and by the CLI;
//! the key's version shows it applied once and every answer carries the
//! first attempt's revision.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::time::Duration;

use common::Cluster;
use warden_proto::etcdserverpb as pb;

/// A put of `key` = `value` tagged with (`client`, `request`).
fn tagged_put(
    key: &str,
    value: &str,
    client: &str,
    request: u64,
) -> tonic::Request<pb::PutRequest> {
    let mut r = tonic::Request::new(pb::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    });
    r.metadata_mut()
        .insert("warden-client-id", client.parse().expect("ascii"));
    r.metadata_mut().insert(
        "warden-request-id",
        request.to_string().parse().expect("ascii"),
    );
    r
}

/// Sends the tagged put to `addr` until it is answered (a member that just
/// lost its leader answers Unavailable for a while): every attempt is safe,
/// that is the point. Returns the header revision.
async fn put_until_answered(addr: &str, key: &str, value: &str, client: &str, request: u64) -> i64 {
    common::eventually(Duration::from_secs(20), || async move {
        let resp = common::kv(addr)
            .await
            .put(tagged_put(key, value, client, request))
            .await
            .map_err(|e| format!("put at {addr}: {e}"))?;
        Ok(resp.into_inner().header.map_or(0, |h| h.revision))
    })
    .await
}

/// (version, mod revision) of `key`, linearizable, read at `addr`.
async fn version(addr: &str, key: &str) -> (i64, i64) {
    common::eventually(Duration::from_secs(10), || async move {
        let r = common::kv(addr)
            .await
            .range(pb::RangeRequest {
                key: key.into(),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("get at {addr}: {e}"))?
            .into_inner();
        Ok(r.kvs
            .first()
            .map_or((0, 0), |kv| (kv.version, kv.mod_revision)))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_leader_kill_and_a_restart_applies_once() {
    // Small snapshot interval: the restarted member starts from a snapshot
    // holding the session.
    let mut c = Cluster::start_with(3, &["--snapshot-entries", "20"]);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    let f_addr = c.members[follower].client.clone();

    let first = put_until_answered(&f_addr, "job", "v1", "job7", 100).await;
    assert_eq!(version(&f_addr, "job").await, (1, first));
    // The same request again at the same member: the same answer.
    assert_eq!(
        put_until_answered(&f_addr, "job", "v1", "job7", 100).await,
        first
    );
    // Enough other writes for a snapshot on every member.
    for i in 0..30 {
        common::put(&f_addr, &format!("filler/{i}"), "x")
            .await
            .expect("filler put");
    }

    c.kill(leader);
    let new_leader = c.wait_leader(Duration::from_secs(20)).await;
    assert_ne!(new_leader, leader);
    let nl_addr = c.members[new_leader].client.clone();
    for _ in 0..2 {
        let again = put_until_answered(&nl_addr, "job", "v1", "job7", 100).await;
        assert_eq!(again, first, "the retry answers the first revision");
    }
    assert_eq!(version(&nl_addr, "job").await, (1, first), "applied once");

    // The old leader restarts from its snapshot and log, catches up, and
    // answers the retry the same way.
    c.restart(leader);
    let old_addr = c.members[leader].client.clone();
    assert_eq!(
        put_until_answered(&old_addr, "job", "v1", "job7", 100).await,
        first
    );
    assert_eq!(version(&old_addr, "job").await, (1, first));
    assert!(
        std::fs::read_dir(c.members[leader].dir.join("snap"))
            .map(|d| d.count() > 0)
            .unwrap_or(false)
            || c.log(leader).contains("snapshot"),
        "the restarted member had a snapshot"
    );

    // A new request id is a new write.
    let next = put_until_answered(&nl_addr, "job", "v2", "job7", 101).await;
    assert!(next > first);
    assert_eq!(version(&nl_addr, "job").await, (2, next));
    c.converge(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_metadata_is_refused_and_plain_writes_are_untouched() {
    let c = Cluster::start(1);
    c.wait_leader(Duration::from_secs(20)).await;
    let addr = c.members[0].client.clone();
    let mut r = tagged_put("k", "v", "job7", 1);
    r.metadata_mut().remove("warden-request-id");
    let e = common::kv(&addr).await.put(r).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert_eq!(version(&addr, "k").await, (0, 0), "nothing applied");
    // Untagged puts apply every time, as etcd's.
    common::put(&addr, "k", "v").await.expect("put");
    common::put(&addr, "k", "v").await.expect("put");
    assert_eq!(version(&addr, "k").await.0, 2);
    // An acknowledged mark drops responses: a late retry below it is
    // refused, not applied.
    for id in [1, 2] {
        put_until_answered(&addr, "acked", "v", "c", id).await;
    }
    let mut r = tagged_put("acked", "v", "c", 3);
    r.metadata_mut()
        .insert("warden-acked-below", "3".parse().expect("ascii"));
    common::kv(&addr).await.put(r).await.expect("put 3");
    let e = common::kv(&addr)
        .await
        .put(tagged_put("acked", "v", "c", 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(
        e.message().contains("may or may not have been applied"),
        "{e}"
    );
    assert_eq!(version(&addr, "acked").await.0, 3);
}

/// `warden put --client-id job7 --request-id 100 k v` twice: applied once,
/// the same revision printed both times; also for `del`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_twice_applies_once() {
    let c = Cluster::start(1);
    c.wait_leader(Duration::from_secs(20)).await;
    let addr = c.members[0].client.clone();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .args(["--endpoints", &addr])
            .args(args)
            .output()
            .expect("run warden");
        assert!(
            out.status.success(),
            "warden {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let put = [
        "put",
        "--client-id",
        "job7",
        "--request-id",
        "100",
        "k",
        "v",
    ];
    let first = run(&put);
    assert!(first.starts_with("OK\nrevision "), "{first:?}");
    common::put(&addr, "other", "x").await.expect("put");
    let second = run(&put);
    assert_eq!(first, second);
    assert_eq!(version(&addr, "k").await.0, 1);
    // JSON carries the same header revision.
    let json = run(&[
        "-w",
        "json",
        "put",
        "--client-id",
        "job7",
        "--request-id",
        "100",
        "k",
        "v",
    ]);
    let rev: i64 = first
        .trim_start_matches("OK\nrevision ")
        .trim()
        .parse()
        .expect("revision");
    assert!(json.contains(&format!("\"revision\":{rev}")), "{json}");
    let del = ["del", "--client-id", "job7", "--request-id", "101", "k"];
    let d1 = run(&del);
    assert!(d1.starts_with('1'), "{d1:?}");
    let d2 = run(&del);
    assert_eq!(d1, d2, "the retry reports the first delete");
    // Half the ids is refused by the CLI.
    let out = std::process::Command::new(common::BIN)
        .args(["--endpoints", &addr, "put", "--client-id", "x", "k", "v"])
        .output()
        .expect("run warden");
    assert!(!out.status.success());
}

/// A tagged `Locks.Acquire` (with its client-chosen handle) sent again is
/// answered from the first attempt: the same grant and token, no second
/// hold; a new request id is a new acquire. One without a handle or lease
/// is refused before anything is proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_acquire_answers_the_first_grant() {
    use warden_proto::etcdserverpb::lease_client::LeaseClient;
    use warden_proto::warden::v1 as wpb;
    use warden_proto::warden::v1::locks_client::LocksClient;
    let c = Cluster::start(1);
    c.wait_leader(Duration::from_secs(20)).await;
    let ch = c.channel(0);
    let lease = LeaseClient::new(ch.clone())
        .lease_grant(pb::LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let handle = vec![7u8; 16];
    let acquire = |request: u64, handle: Vec<u8>, lease: i64, wait: i64| {
        let mut r = tonic::Request::new(wpb::AcquireRequest {
            name: "l".into(),
            mode: wpb::LockMode::Exclusive as i32,
            lease,
            wait_timeout_ms: wait,
            owner: "test".into(),
            handle,
            ..Default::default()
        });
        r.metadata_mut()
            .insert("warden-client-id", "locker".parse().unwrap());
        r.metadata_mut()
            .insert("warden-request-id", request.to_string().parse().unwrap());
        r
    };
    let first_answer = |ch: tonic::transport::Channel, r| async move {
        let resp = LocksClient::new(ch).acquire(r).await?;
        assert!(
            resp.metadata().contains_key("warden-applied-once"),
            "a tagged acquire is answered as applied once"
        );
        let mut stream = resp.into_inner();
        let m = stream
            .message()
            .await?
            .ok_or_else(|| tonic::Status::internal("stream ended"))?;
        Ok::<_, tonic::Status>((m, stream))
    };
    use wpb::acquire_response::State;

    // No handle, no lease, or a handle of the wrong length.
    for (h, l) in [
        (Vec::new(), lease),
        (handle.clone(), 0),
        (vec![7u8; 5], lease),
    ] {
        let Err(err) = LocksClient::new(ch.clone())
            .acquire(acquire(1, h, l, -1))
            .await
        else {
            panic!("a tagged acquire without a good handle or a lease is refused");
        };
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    }

    let (m1, s1) = first_answer(ch.clone(), acquire(5, handle.clone(), lease, -1))
        .await
        .unwrap();
    assert_eq!(m1.state, State::Granted as i32, "{m1:?}");
    assert_eq!(m1.handle, handle, "the client's handle is the hold's");
    drop(s1);
    let (m2, _s2) = first_answer(ch.clone(), acquire(5, handle.clone(), lease, -1))
        .await
        .unwrap();
    assert_eq!(m2.state, State::Granted as i32, "{m2:?}");
    assert_eq!(m2.token, m1.token, "the retry is the first grant");
    let info = LocksClient::new(ch.clone())
        .inspect(wpb::InspectRequest {
            name: "l".into(),
            prefix: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.locks[0].holders.len(), 1);
    assert!(info.locks[0].waiters.is_empty());
    // A new request id is a new acquire: the lock is held, so it would block.
    let (m3, _s3) = first_answer(ch.clone(), acquire(6, handle.clone(), lease, 0))
        .await
        .unwrap();
    assert_eq!(m3.state, State::WouldBlock as i32, "{m3:?}");
}

/// A member that was down while a tagged write was applied, and caught up
/// by InstallSnapshot (the log it missed was purged), gets the session
/// table with the snapshot: the retry's entry is answered from the session
/// on it too, so its copy of the key is not applied twice (a member without
/// the session would diverge: version 2 where the others have 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_travel_in_installed_snapshots() {
    let mut c = Cluster::start_with(3, &["--snapshot-entries", "5"]);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let late = (leader + 1) % 3;
    c.kill(late);
    let at = c.members[leader].client.clone();
    let first = put_until_answered(&at, "once", "v", "snapjob", 7).await;
    let written_at = common::metric(&at, "etcd_server_proposals_committed_total");
    // Enough entries that the leader snapshots and purges past the write.
    for i in 0..60 {
        common::put(&at, &format!("fill/{i}"), "x").await.unwrap();
    }
    // The leader snapshots and purges in the background: wait until the
    // write's entry is gone from its log, so the late member can only
    // catch up by a snapshot. The interval stretches with the state's size
    // (history included), so keep writing until it has.
    common::eventually(Duration::from_secs(30), || {
        let at = at.clone();
        async move {
            let purged = common::metric(&at, "warden_raft_log_purged_index");
            if purged > written_at {
                return Ok(());
            }
            common::put(&at, "filler", "x")
                .await
                .map_err(|e| e.to_string())?;
            Err(format!(
                "log purged up to {purged}, the write is at {written_at}"
            ))
        }
    })
    .await;
    c.restart(late);
    let late_at = c.members[late].client.clone();
    common::eventually(Duration::from_secs(30), || {
        let (late_at, log) = (late_at.clone(), c.log(late));
        async move {
            let v = common::get(&late_at, "fill/59", true)
                .await
                .map_err(|e| e.to_string())?;
            if v.is_none() {
                return Err("not caught up".into());
            }
            if !log.contains("installed snapshot") {
                return Err("caught up without a snapshot install".into());
            }
            Ok(())
        }
    })
    .await;
    // The retry, through the member that installed the snapshot.
    let again = put_until_answered(&late_at, "once", "v", "snapjob", 7).await;
    assert_eq!(again, first, "the first attempt's revision");
    // A marker written after the retry: once a member has it, it has
    // applied the retry's entry too.
    common::put(&at, "after-retry", "x").await.unwrap();
    // Every member, the late one included, applied the write once.
    for m in &c.members {
        let addr = m.client.clone();
        common::eventually(Duration::from_secs(10), || {
            let addr = addr.clone();
            async move {
                match common::get(&addr, "after-retry", true).await {
                    Ok(Some(_)) => Ok(()),
                    other => Err(format!("{addr}: {other:?}")),
                }
            }
        })
        .await;
        // Serializable: this member's own copy.
        let r = common::kv(&addr)
            .await
            .range(pb::RangeRequest {
                key: b"once".to_vec(),
                serializable: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.kvs.first().map_or(0, |kv| kv.version), 1, "{addr}");
    }
}
