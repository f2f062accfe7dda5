//! Fail-over with real processes: a leader cut off from its quorum steps
//! down and fails what it holds at once (CheckQuorum), and a leader stopped
//! with SIGTERM hands leadership over before it exits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::time::Duration;

use common::{eventually, put, Cluster};
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::kv_client::KvClient;
use warden_testkit::proxy::Proxies;

const ELECT: Duration = Duration::from_secs(20);

/// etcd's answers (rpctypes) for a member with no leader, and for a
/// request whose leader stepped down while it was in flight; both
/// `Unavailable`, so an etcd client moves to another member.
const NO_LEADER: &str = "etcdserver: no leader";
const LEADER_CHANGED: &str = "etcdserver: leader changed";

/// A put to `addr` whose client deadline is far away (60 s): if it fails,
/// the member failed it, not the deadline.
async fn put_patient(addr: &str, key: &str) -> Result<pb::PutResponse, tonic::Status> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy();
    let mut req = tonic::Request::new(pb::PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(60));
    KvClient::new(ch).put(req).await.map(|r| r.into_inner())
}

fn is_etcd_unavailable(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable
        && (s.message() == NO_LEADER || s.message() == LEADER_CHANGED)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_steps_down_and_fails_requests_at_once() {
    let n = 5;
    // A long server-side request timeout: a request that waits for it
    // would fail with "request timed out", not with a leader error.
    let mut c = Cluster::stopped(n, &[]);
    let peers: Vec<String> = c.members.iter().map(|m| m.peer.clone()).collect();
    let proxies = Proxies::start(&peers).await.expect("proxies");
    for i in 0..n {
        c.members[i].args = vec!["--peer-routes".into(), proxies.routes(i, &peers)];
    }
    for i in 0..n {
        c.restart(i);
    }
    let leader = c.wait_leader(ELECT).await;
    let (_, leader_id, old_term) = common::ids(&c.members[leader].client)
        .await
        .expect("leader status");
    let others: Vec<usize> = (0..n).filter(|i| *i != leader).collect();
    let old_ep = c.members[leader].client.clone();
    put(&old_ep, "f/before", "x")
        .await
        .expect("put before the cut");

    proxies.partition(&[vec![leader], others.clone()]);
    // A write the old leader takes while it still thinks it leads: it can
    // never commit there, and is failed when the leader steps down.
    let held = put_patient(&old_ep, "f/held").await;
    let err = held.expect_err("a write on the isolated leader cannot succeed");
    assert!(is_etcd_unavailable(&err), "held write: {err:?}");

    // The old leader says it does not lead any more.
    eventually(Duration::from_secs(10), || {
        let ep = old_ep.clone();
        async move {
            let s = common::status(&ep).await.map_err(|e| e.to_string())?;
            if s.leader == leader_id {
                Err(format!("still leader in term {}", s.raft_term))
            } else {
                Ok(())
            }
        }
    })
    .await;
    // New requests fail at once with etcd's error, writes and linearizable
    // reads alike.
    let err = put_patient(&old_ep, "f/after")
        .await
        .expect_err("write on the stepped-down leader");
    assert!(
        is_etcd_unavailable(&err),
        "write after stepping down: {err:?}"
    );
    let err = common::get(&old_ep, "f/before", false)
        .await
        .expect_err("linearizable read on the stepped-down leader");
    assert!(
        is_etcd_unavailable(&err),
        "read after stepping down: {err:?}"
    );

    // The majority elected a new leader in a later term and takes writes.
    let maj_ep = c.members[others[0]].client.clone();
    eventually(ELECT, || {
        let ep = maj_ep.clone();
        async move {
            put(&ep, "f/majority", "y")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let (_, _, new_term) = common::ids(&maj_ep).await.expect("majority status");
    assert!(new_term > old_term, "term {new_term} after {old_term}");

    // Heal: the old leader follows the new one and serves again.
    proxies.heal();
    c.converge(Duration::from_secs(30)).await;
    eventually(ELECT, || {
        let ep = old_ep.clone();
        async move {
            put(&ep, "f/healed", "z")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let got = common::get_prefix(&maj_ep, "f/").await.expect("read");
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        keys.contains(&"f/before") && keys.contains(&"f/majority"),
        "{keys:?}"
    );
    assert!(
        !keys.contains(&"f/after"),
        "a refused write applied: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_leadership_over_before_exiting() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let (_, old_id, _) = common::ids(&c.members[leader].client)
        .await
        .expect("leader status");
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let eps: Vec<String> = others
        .iter()
        .map(|i| c.members[*i].client.clone())
        .collect();
    put(&eps[0], "t/0", "x").await.expect("put");

    // Writes through the other members go on during the stop.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = {
        let eps = eps.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = 0u32;
            while !*stop_rx.borrow() {
                i += 1;
                match put(&eps[i as usize % eps.len()], &format!("t/{i}"), "v").await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        })
    };
    c.terminate(leader);
    let status = c
        .wait_exit(leader, Duration::from_secs(20))
        .await
        .expect("the old leader exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    // Right after the exit (well within an election timeout), the others
    // already follow a new leader: it was elected while the old one ran.
    for ep in &eps {
        let s = common::status(ep).await.expect("status");
        assert!(
            s.leader != 0 && s.leader != old_id,
            "{ep} follows {:x} right after the old leader {old_id:x} exited",
            s.leader
        );
    }
    let _ = stop_tx.send(true);
    let (ok, failed) = writer.await.expect("writer");
    assert!(ok > 0);
    if !failed.is_empty() {
        for i in 0..3 {
            eprintln!("--- n{} log ---\n{}", i + 1, c.log(i));
        }
        panic!("writes failed during the hand-over: {failed:?}");
    }
    assert!(
        c.log(leader).contains("leadership handed over"),
        "the old leader's log does not show the hand-over"
    );
}
