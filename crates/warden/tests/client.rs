//! The Rust client library (`warden-client`) against real servers: writes
//! routed to the leader and carried across a SIGKILL of the leader without
//! an error and without a double apply, sessions kept alive and lost,
//! `Mutex`/`RwLock` with fencing, elections, and a watch that resumes on
//! another member without missing or repeating an event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Cluster;
use warden_client::{
    Client, ClientOptions, Election, GetOptions, Mutex, PutOptions, RwLock, Session, WatchOptions,
};
use warden_proto::etcdserverpb as pb;

const ELECT: Duration = Duration::from_secs(20);

/// The sum of `name` samples whose labels include every `labels` pair.
fn metric(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, want)| l.contains(&format!("{k}=\"{want}\"")))
        {
            sum += v.trim().parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    sum
}

/// Put requests member `i` answered over gRPC (its own or forwarded).
fn puts_handled(c: &Cluster, i: usize) -> f64 {
    let (code, page) = common::http_get(&c.members[i].client, "/metrics").expect("metrics");
    assert_eq!(code, 200, "{page}");
    metric(
        &page,
        "grpc_server_handled_total",
        &[("grpc_method", "Put")],
    )
}

/// Waits until lock `name` has `want` waiters queued.
async fn wait_waiters(client: &Client, name: &str, want: usize) {
    common::eventually(Duration::from_secs(10), || {
        let client = client.clone();
        let name = name.to_string();
        async move {
            let r = client
                .request(warden_client::OpKind::Read, move |ch, _| {
                    let name = name.clone();
                    async move {
                        warden_proto::warden::v1::locks_client::LocksClient::new(ch)
                            .inspect(warden_proto::warden::v1::InspectRequest {
                                name,
                                prefix: false,
                            })
                            .await
                    }
                })
                .await
                .map_err(|e| e.to_string())?;
            let waiters = r.locks.first().map_or(0, |l| l.waiters.len());
            if waiters == want {
                Ok(())
            } else {
                Err(format!("{waiters} waiters, want {want}"))
            }
        }
    })
    .await;
}

async fn client_for(endpoints: &[String], timeout: Duration) -> Client {
    let opts = ClientOptions {
        timeout,
        connect_timeout: Duration::from_millis(500),
        ..ClientOptions::default()
    };
    Client::connect(endpoints, opts).await.expect("client")
}

/// (version, value) of `key`, linearizable.
async fn version(client: &Client, key: &str) -> (i64, Vec<u8>) {
    let r = client
        .get(key, GetOptions::default())
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
    r.kvs
        .first()
        .map_or((0, Vec::new()), |kv| (kv.version, kv.value.clone()))
}

/// Writes go straight to the leader (followers answer no Put at all); when
/// the leader is SIGKILLed, the client finds the new one and every write
/// is acknowledged, each applied exactly once (the key's version counts
/// the applies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_to_the_leader_and_survive_its_kill_exactly_once() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    // The leader last in the list: starting at the first endpoint would
    // make a follower forward.
    let mut order: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    order.push(leader);
    let endpoints: Vec<String> = order.iter().map(|i| c.members[*i].client.clone()).collect();
    let client = client_for(&endpoints, Duration::from_secs(10)).await;
    let before: Vec<f64> = (0..3).map(|i| puts_handled(&c, i)).collect();

    const FIRST: i64 = 30;
    for n in 1..=FIRST {
        client
            .put("counter", n.to_string(), PutOptions::default())
            .await
            .unwrap_or_else(|e| panic!("put {n}: {e}"));
    }
    assert_eq!(
        client.leader().as_deref(),
        Some(c.members[leader].client.as_str()),
        "the client found the leader"
    );
    for i in (0..3).filter(|i| *i != leader) {
        assert_eq!(
            puts_handled(&c, i) - before[i],
            0.0,
            "follower {i} was sent no put"
        );
    }
    assert!(puts_handled(&c, leader) - before[leader] >= FIRST as f64);

    // Writes keep flowing while the leader dies: none may fail, none may
    // apply twice. The writer runs until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = FIRST;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client
                    .put("counter", (n + 1).to_string(), PutOptions::default())
                    .await
                    .map_err(|e| format!("put {}: {e}", n + 1))?;
                n += 1;
            }
            Ok::<i64, String>(n)
        })
    };
    let reached = |at_least: i64| {
        let client = client.clone();
        async move {
            common::eventually(Duration::from_secs(20), || {
                let client = client.clone();
                async move {
                    let (v, _) = version(&client, "counter").await;
                    if v >= at_least {
                        Ok(v)
                    } else {
                        Err(format!("version {v}, waiting for {at_least}"))
                    }
                }
            })
            .await
        }
    };
    reached(FIRST + 5).await;
    c.kill(leader);
    // Well after the kill, under the new leader.
    let after = reached(0).await;
    reached(after + 30).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = writer
        .await
        .unwrap()
        .expect("no write failed across the kill");
    let (v, value) = version(&client, "counter").await;
    assert_eq!(value, last.to_string().into_bytes());
    assert_eq!(v, last, "every acknowledged put applied exactly once");
    let now = client.leader().expect("a new leader is known");
    assert_ne!(now, c.members[leader].client);
}

/// A session's lease outlives its TTL while kept alive, its keys go with
/// `close`, and revoking its lease elsewhere makes `lost` resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_their_lease_and_report_its_loss() {
    let c = Cluster::start(1);
    c.wait_leader(ELECT).await;
    let client = client_for(&[c.members[0].client.clone()], Duration::from_secs(5)).await;
    let session = Session::new(&client, 2).await.unwrap();
    client
        .put(
            "owned",
            "x",
            PutOptions {
                lease: session.lease_id(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Alive well past its 2 s TTL: renewals got through.
    let alive_until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < alive_until {
        assert_eq!(version(&client, "owned").await.0, 1, "key kept by renewals");
        assert!(!session.is_lost());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    session.close().await.unwrap();
    assert_eq!(
        version(&client, "owned").await.0,
        0,
        "close revoked the lease"
    );

    let session = Session::new(&client, 30).await.unwrap();
    client.lease_revoke(session.lease_id()).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(15), session.lost())
        .await
        .expect("the loss is reported");
    assert!(reason.contains("expired or revoked"), "{reason}");
}

/// `Mutex`: one holder at a time, the next waiter granted on release with a
/// larger fencing token, and a fenced write from a stale holder refused.
/// `RwLock`: readers share, a writer waits for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutex_and_rwlock_with_fencing() {
    let c = Cluster::start(1);
    c.wait_leader(ELECT).await;
    let client = client_for(&[c.members[0].client.clone()], Duration::from_secs(5)).await;
    let s1 = Session::new(&client, 10).await.unwrap();
    let s2 = Session::new(&client, 10).await.unwrap();
    let m1 = Mutex::new(&s1, "job");
    let m2 = Mutex::new(&s2, "job");
    let g1 = m1.lock().await.unwrap();
    assert!(m2.try_lock().await.unwrap().is_none(), "held by s1");
    let waiting = tokio::spawn(async move { m2.lock().await });
    // Queued behind g1 (the waiter shows in Inspect).
    wait_waiters(&client, "job", 1).await;
    assert!(!waiting.is_finished(), "s2 waits while s1 holds");
    let put = |v: &str| pb::TxnRequest {
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: b"guarded".to_vec(),
                value: v.as_bytes().to_vec(),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    g1.fenced_txn(put("one")).await.unwrap();
    let t1 = g1.token();
    g1.release().await.unwrap();
    let g2 = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("granted after the release")
        .unwrap()
        .unwrap();
    assert!(g2.token() > t1, "{} > {t1}", g2.token());
    g2.fenced_txn(put("two")).await.unwrap();
    // g1 is stale now: its fenced write is refused, whatever it believes.
    let err = g1.fenced_txn(put("stale")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    g2.release().await.unwrap();
    assert_eq!(version(&client, "guarded").await.1, b"two");

    let r1 = RwLock::new(&s1, "table");
    let r2 = RwLock::new(&s2, "table");
    let a = r1.read().await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(10), r2.read())
        .await
        .expect("a second reader is granted while the first holds")
        .unwrap();
    let writer = tokio::spawn(async move { r2.write().await });
    wait_waiters(&client, "table", 1).await;
    assert!(!writer.is_finished(), "the writer waits for both readers");
    a.release().await.unwrap();
    b.release().await.unwrap();
    let w = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("the writer is granted once the readers left")
        .unwrap()
        .unwrap();
    w.release().await.unwrap();
    s1.close().await.unwrap();
    s2.close().await.unwrap();
}

/// Two candidates: the first leads, the second waits; an observer sees the
/// first, then the second once the first resigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_observe_resign() {
    let c = Cluster::start(1);
    c.wait_leader(ELECT).await;
    let client = client_for(&[c.members[0].client.clone()], Duration::from_secs(5)).await;
    let s1 = Session::new(&client, 10).await.unwrap();
    let s2 = Session::new(&client, 10).await.unwrap();
    let election = Election::new(&client, "primary");
    assert!(election.leader().await.unwrap().is_none());
    let mut observer = election.observe();
    let first = election.campaign(&s1, "a").await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), observer.next())
        .await
        .expect("observed")
        .unwrap()
        .unwrap();
    assert_eq!(seen.value, b"a");
    let e2 = election.clone();
    let second = tokio::spawn(async move {
        let l = e2.campaign(&s2, "b").await;
        (l, s2)
    });
    // Both candidacies are keys under the election's prefix.
    common::eventually(Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            let r = client
                .get("primary/", GetOptions::prefix())
                .await
                .map_err(|e| e.to_string())?;
            if r.kvs.len() == 2 {
                Ok(())
            } else {
                Err(format!("{} candidates", r.kvs.len()))
            }
        }
    })
    .await;
    assert!(!second.is_finished(), "the second candidate waits");
    first.proclaim("a2").await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), observer.next())
        .await
        .expect("observed the proclamation")
        .unwrap()
        .unwrap();
    assert_eq!(seen.value, b"a2");
    first.resign().await.unwrap();
    let (won, s2) = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second candidate is elected")
        .unwrap();
    won.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), observer.next())
        .await
        .expect("observed the new leader")
        .unwrap()
        .unwrap();
    assert_eq!(seen.value, b"b");
    assert_eq!(election.leader().await.unwrap().unwrap().value, b"b");
    s1.close().await.unwrap();
    s2.close().await.unwrap();
}

/// A watch on member 0 survives member 0's SIGKILL: it moves to another
/// member and delivers every put exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_on_another_member_without_gaps_or_repeats() {
    let mut c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    let all: Vec<String> = c.members.iter().map(|m| m.client.clone()).collect();
    let watching = client_for(&all, Duration::from_secs(5)).await;
    let writer = client_for(&all[1..], Duration::from_secs(10)).await;
    let mut watcher = watching.watch(
        "w/",
        WatchOptions {
            prefix: true,
            ..Default::default()
        },
    );
    let mut seen: BTreeMap<i64, String> = BTreeMap::new();
    let mut keys: Vec<String> = Vec::new();
    for n in 0..10 {
        writer
            .put(format!("w/{n:02}"), "v", PutOptions::default())
            .await
            .unwrap();
    }
    while keys.len() < 10 {
        let batch = tokio::time::timeout(Duration::from_secs(10), watcher.next())
            .await
            .expect("events before the kill")
            .unwrap()
            .unwrap();
        for ev in batch.events {
            let kv = ev.kv.unwrap();
            let key = String::from_utf8(kv.key).unwrap();
            assert!(seen.insert(kv.mod_revision, key.clone()).is_none());
            keys.push(key);
        }
    }
    // The watch stream is on the first endpoint (member 0).
    c.kill(0);
    for n in 10..30 {
        writer
            .put(format!("w/{n:02}"), "v", PutOptions::default())
            .await
            .unwrap();
    }
    while keys.len() < 30 {
        let batch = tokio::time::timeout(Duration::from_secs(20), watcher.next())
            .await
            .expect("events after the kill")
            .unwrap()
            .unwrap();
        for ev in batch.events {
            let kv = ev.kv.unwrap();
            let key = String::from_utf8(kv.key).unwrap();
            assert!(
                seen.insert(kv.mod_revision, key.clone()).is_none(),
                "revision {} delivered twice",
                kv.mod_revision
            );
            keys.push(key);
        }
    }
    let want: Vec<String> = (0..30).map(|n| format!("w/{n:02}")).collect();
    assert_eq!(keys, want, "every put once, in order");
}

/// A `Mutex::lock` waiting on the leader when the leader is SIGKILLed (the
/// client sends Acquire, a write, to the leader): the client sends the same
/// tagged Acquire to another member, which answers from the first attempt's
/// queue place. Had it queued a second time, the first (orphaned) waiter
/// would be granted on release and the second would wait forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_wait_survives_the_kill_of_its_member_without_queueing_twice() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let all: Vec<String> = c.members.iter().map(|m| m.client.clone()).collect();
    let holder = client_for(&all, Duration::from_secs(10)).await;
    let waiter = client_for(&all, Duration::from_secs(10)).await;
    // Both clients find the leader and see the cluster honour tags.
    holder
        .put("warm", "x", PutOptions::default())
        .await
        .unwrap();
    waiter
        .put("warm", "y", PutOptions::default())
        .await
        .unwrap();
    assert_eq!(waiter.leader().as_deref(), Some(all[leader].as_str()));

    let hs = Session::new(&holder, 30).await.unwrap();
    let held = Mutex::new(&hs, "report").lock().await.unwrap();
    let ws = Session::new(&waiter, 30).await.unwrap();
    let m = Mutex::new(&ws, "report");
    let waiting = tokio::spawn(async move {
        let g = m.lock().await;
        (g, ws)
    });
    wait_waiters(&holder, "report", 1).await;
    c.kill(leader);
    c.wait_leader(ELECT).await;
    // Still exactly one waiter: the first queue place.
    wait_waiters(&holder, "report", 1).await;
    held.release().await.unwrap();
    let (granted, ws) = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("granted after the release")
        .unwrap();
    let g = granted.expect("the wait survived the member's death");
    assert!(g.token() > held.token());
    wait_waiters(&holder, "report", 0).await;
    // The grant's handle is the client's own: its fenced write passes.
    g.fenced_txn(pb::TxnRequest::default()).await.unwrap();
    g.release().await.unwrap();
    ws.close().await.unwrap();
    hs.close().await.unwrap();
}
