//! Network partitions between members, through fault-injecting TCP proxies
//! the test controls: every member reaches every other member through its
//! own proxy (`--peer-routes`), so any link can be cut in both directions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::time::Duration;

use common::{eventually, get_prefix, put, put_eventually, Cluster};
use warden_testkit::proxy::Proxies;

const ELECT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_steps_down_majority_continues_and_all_converge() {
    let mut c = Cluster::stopped(3, &[]);
    // Every link i -> j runs through its own proxy.
    let peers: Vec<String> = c.members.iter().map(|m| m.peer.clone()).collect();
    let proxies = Proxies::start(&peers).await.expect("proxies");
    for i in 0..3 {
        c.members[i].args = vec!["--peer-routes".into(), proxies.routes(i, &peers)];
    }
    for i in 0..3 {
        c.restart(i);
    }
    let leader = c.wait_leader(ELECT).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let old_ep = c.members[leader].client.clone();
    for i in 0..20 {
        put(&old_ep, &format!("p/{i:02}"), "before")
            .await
            .expect("put");
    }

    // Cut the leader off in both directions.
    proxies.partition(&[vec![leader], others.clone()]);

    // The old leader stops serving linearizable reads and writes (it cannot
    // confirm its leadership with a quorum).
    eventually(Duration::from_secs(20), || {
        let ep = old_ep.clone();
        async move {
            match get_prefix(&ep, "p/").await {
                Err(e) if e.code() == tonic::Code::Unavailable => Ok(()),
                other => Err(format!("isolated leader still answers: {other:?}")),
            }
        }
    })
    .await;
    let err = put(&old_ep, "p/isolated", "x")
        .await
        .expect_err("isolated write");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");

    // The majority elects a new leader and takes writes.
    let maj_ep = c.members[others[0]].client.clone();
    for i in 20..40 {
        let k = format!("p/{i:02}");
        eventually(Duration::from_secs(20), || {
            let (ep, k) = (maj_ep.clone(), k.clone());
            async move {
                put(&ep, &k, "during")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await;
    }

    // Heal: every member converges to the same state.
    proxies.heal();
    c.converge(Duration::from_secs(30)).await;
    // Nothing acknowledged was lost, and the isolated write never applied.
    let got = get_prefix(&old_ep, "p/").await.expect("read after heal");
    assert_eq!(got.len(), 40, "{got:?}");
    assert!(got.iter().all(|(k, _)| k != "p/isolated"));
}

/// A linearizable read with a long deadline, stuck on a leader that went
/// silent (SIGSTOP: its connections stay open, nothing answers), does not
/// hold up the reads behind it: they share ReadIndex rounds, and a round is
/// cut short after two election timeouts, so once the others elected a new
/// leader a read with a short deadline is served within it, and the long
/// one long before its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_stuck_on_a_silent_leader_does_not_hold_up_later_reads() {
    use warden_proto::etcdserverpb as pb;
    let c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let f = (leader + 1) % 3;
    let g = (leader + 2) % 3;
    let f_ep = c.members[f].client.clone();
    put(&f_ep, "s/k", "v").await.expect("put");
    // The follower has asked the leader for a read index (its forward
    // connection is up).
    get_prefix(&f_ep, "s/").await.expect("read before the stop");

    let read = |deadline: Duration| {
        let ep = f_ep.clone();
        async move {
            let mut req = tonic::Request::new(pb::RangeRequest {
                key: b"s/k".to_vec(),
                ..Default::default()
            });
            req.set_timeout(deadline);
            let started = std::time::Instant::now();
            let r = common::kv(&ep).await.range(req).await;
            (r.map(|r| r.into_inner().kvs.len()), started.elapsed())
        }
    };

    let pid = c.members[leader].child.as_ref().expect("leader runs").id();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    let long = tokio::spawn(read(Duration::from_secs(60)));
    // The other two elect a new leader.
    let g_ep = c.members[g].client.clone();
    put_eventually(&g_ep, "s/after", "x", ELECT).await;
    let (short, took) = read(Duration::from_secs(5)).await;
    let (long, long_took) = long.await.expect("long read task");
    signal("-CONT");
    assert_eq!(
        short.expect("short read behind the stuck one"),
        1,
        "{took:?}"
    );
    assert_eq!(long.expect("long read"), 1);
    assert!(
        long_took < Duration::from_secs(30),
        "the long read waited {long_took:?}, as for its own deadline"
    );
}
