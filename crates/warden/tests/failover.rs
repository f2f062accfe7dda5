//! Fail-over with real processes: a killed leader is replaced at once (its
//! peer port refuses connections) and no acknowledged write is lost; a
//! follower that cannot connect to a live leader does not depose it; a
//! leader cut off from its quorum steps down and fails what it holds at
//! once (CheckQuorum); a leader stopped with SIGTERM hands leadership over
//! before it exits, and writes through the others go on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, put, put_eventually, Cluster};
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::kv_client::KvClient;
use warden_testkit::proxy::Proxies;

const ELECT: Duration = Duration::from_secs(20);

/// The tests here run one at a time: each asserts that nothing fails or
/// moves for a while, which a machine starved by several clusters at once
/// (2 cores, 300 ms election timeouts) cannot promise.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// What a writer saw: the keys whose put was acknowledged, and the errors.
#[derive(Default)]
struct Seen {
    acked: Vec<String>,
    failed: Vec<tonic::Status>,
}

/// Puts `prefix/1`, `prefix/2`, … through `eps` until `stop` is set, moving
/// to the next endpoint after a failure.
fn start_writer(
    eps: Vec<String>,
    prefix: &'static str,
    seen: Arc<Mutex<Seen>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0u64;
        let mut at = 0usize;
        while !*stop.borrow() {
            i += 1;
            let key = format!("{prefix}/{i}");
            match put(&eps[at % eps.len()], &key, "v").await {
                Ok(_) => seen.lock().unwrap().acked.push(key),
                Err(e) => {
                    seen.lock().unwrap().failed.push(e);
                    at += 1;
                }
            }
        }
    })
}

/// Waits until the writer has `n` more acknowledged puts than `from`.
async fn wait_acked(seen: &Arc<Mutex<Seen>>, from: usize, n: usize, within: Duration) {
    eventually(within, || {
        let seen = seen.clone();
        async move {
            let got = seen.lock().unwrap().acked.len();
            if got >= from + n {
                Ok(())
            } else {
                Err(format!("{} of {n} puts acknowledged", got - from.min(got)))
            }
        }
    })
    .await;
}

/// Every key in `acked` is there, read linearizably through `ep`.
async fn assert_all_present(ep: &str, prefix: &str, acked: &[String]) {
    let got = common::get_prefix(ep, &format!("{prefix}/"))
        .await
        .expect("read back");
    let have: std::collections::BTreeSet<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|k| !have.contains(k.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

fn is_etcd_unavailable(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable
        && (s.message() == NO_LEADER || s.message() == LEADER_CHANGED)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_steps_down_and_fails_requests_at_once() {
    let _serial = SERIAL.lock().await;
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
    put_eventually(&old_ep, "f/before", "x", ELECT).await;

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
    put_eventually(&maj_ep, "f/majority", "y", ELECT).await;
    let (_, _, new_term) = common::ids(&maj_ep).await.expect("majority status");
    assert!(new_term > old_term, "term {new_term} after {old_term}");

    // Heal: the old leader follows the new one and serves again.
    proxies.heal();
    c.converge(Duration::from_secs(30)).await;
    put_eventually(&old_ep, "f/healed", "z", ELECT).await;
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
    let _serial = SERIAL.lock().await;
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
    put_eventually(&eps[0], "t/0", "x", ELECT).await;

    // Writes through the other members go on during the stop.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = start_writer(eps.clone(), "t", seen.clone(), stop_rx);
    wait_acked(&seen, 0, 5, ELECT).await;
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
    // And writes keep being acknowledged after it.
    let after_exit = seen.lock().unwrap().acked.len();
    wait_acked(&seen, after_exit, 5, ELECT).await;
    let _ = stop_tx.send(true);
    writer.await.expect("writer");
    let (acked, failed) = {
        let s = seen.lock().unwrap();
        (s.acked.clone(), s.failed.clone())
    };
    if !failed.is_empty() {
        for i in 0..3 {
            eprintln!("--- n{} log ---\n{}", i + 1, c.log(i));
        }
        panic!("writes failed during the hand-over: {failed:?}");
    }
    for ep in &eps {
        assert_all_present(ep, "t", &acked).await;
    }
    assert!(
        c.log(leader).contains("leadership handed over"),
        "the old leader's log does not show the hand-over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_is_replaced_at_once_and_no_acknowledged_write_is_lost() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let (_, old_id, old_term) = common::ids(&c.members[leader].client)
        .await
        .expect("leader status");
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let eps: Vec<String> = others
        .iter()
        .map(|i| c.members[*i].client.clone())
        .collect();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = start_writer(eps.clone(), "k", seen.clone(), stop_rx);
    wait_acked(&seen, 0, 20, ELECT).await;
    c.kill(leader);
    let at_kill = seen.lock().unwrap().acked.len();
    // Writes resume under a new leader.
    wait_acked(&seen, at_kill, 20, ELECT).await;
    let _ = stop_tx.send(true);
    writer.await.expect("writer");

    let (_, new_id, new_term) = common::ids(&eps[0]).await.expect("status");
    let s = common::status(&eps[0]).await.expect("status");
    assert!(s.leader != 0 && s.leader != old_id, "leader {:x}", s.leader);
    assert!(
        new_term > old_term,
        "term {new_term} after {old_term} (member {new_id:x})"
    );
    // The fast path ran: a survivor saw the leader's port refuse and
    // campaigned at once instead of waiting out its lease.
    assert!(
        others.iter().any(|i| c
            .log(*i)
            .contains("refuses connections: electing a new leader now")),
        "no survivor detected the dead leader"
    );
    let acked = seen.lock().unwrap().acked.clone();
    for ep in &eps {
        assert_all_present(ep, "k", &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refused_by_a_live_leader_does_not_depose_it() {
    let _serial = SERIAL.lock().await;
    let n = 3;
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
    let (_, leader_id, term) = common::ids(&c.members[leader].client)
        .await
        .expect("leader status");
    let f = (leader + 1) % n;
    let g = (leader + 2) % n;
    let g_ep = c.members[g].client.clone();
    put_eventually(&g_ep, "r/before", "x", ELECT).await;

    // The leader and member f can no longer connect to each other: their
    // links refuse connections, as a rejecting firewall would. Member g
    // still reaches both.
    proxies.partition_refusing(&[vec![leader], vec![f]]);
    // f hears nothing from the leader, finds its port refusing and
    // campaigns at once.
    eventually(ELECT, || {
        let log = c.log(f);
        async move {
            if log.contains("refuses connections: electing a new leader now") {
                Ok(())
            } else {
                Err("member f has not found the leader's port refusing yet".to_string())
            }
        }
    })
    .await;
    // Its PreVotes are refused by g (which hears from the leader) and by
    // the leader (a quorum acknowledges it): over several maximum election
    // timeouts (600 ms here) the leader and its term stay, and writes
    // through g keep succeeding.
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut puts = 0;
    while tokio::time::Instant::now() < watch_until {
        let s = common::status(&g_ep).await.expect("status of member g");
        let h = s.header.expect("header");
        assert_eq!(s.leader, leader_id, "leader changed (term {})", h.raft_term);
        assert_eq!(h.raft_term, term, "the term moved");
        if let Err(e) = put(&g_ep, &format!("r/{puts}"), "v").await {
            for i in 0..n {
                let log = c.log(i);
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        l.contains("failover") || l.contains("vote") || l.contains("lessor")
                    })
                    .collect();
                eprintln!("--- member {i} ---\n{}", lines.join("\n"));
            }
            panic!("a put through member g while member f campaigns: {e:?}");
        }
        puts += 1;
    }
    assert!(puts > 0);

    // Healed, f follows the same leader in the same term.
    proxies.heal();
    let f_ep = c.members[f].client.clone();
    eventually(ELECT, || {
        let ep = f_ep.clone();
        async move {
            let s = common::status(&ep).await.map_err(|e| e.to_string())?;
            let t = s.header.map_or(0, |h| h.raft_term);
            if s.leader == leader_id && t == term {
                Ok(())
            } else {
                Err(format!("member f follows {:x} in term {t}", s.leader))
            }
        }
    })
    .await;
}
