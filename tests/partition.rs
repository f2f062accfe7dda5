//! Network partitions between members, through fault-injecting TCP proxies
//! the test controls: every member reaches every other member through its
//! own proxy (`--peer-routes`), so any link can be cut in both directions.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, get_prefix, put, Cluster};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use warden::proto::etcdserverpb as pb;
use warden::proto::etcdserverpb::maintenance_client::MaintenanceClient;

const ELECT: Duration = Duration::from_secs(20);

/// A TCP proxy that can be cut: when cut, it closes every connection and
/// refuses new ones.
struct Proxy {
    addr: String,
    cut: Arc<AtomicBool>,
    kill: watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let (kill, _) = watch::channel(0u64);
        let (c, k) = (cut.clone(), kill.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: connection closed
                }
                let upstream = upstream.clone();
                let mut killed = k.subscribe();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = killed.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, cut, kill }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            self.kill.send_modify(|n| *n += 1);
        }
    }
}

async fn hash(addr: &str) -> Result<(u32, i64), String> {
    let r = MaintenanceClient::new(common::channel(addr).await)
        .hash_kv(pb::HashKvRequest { revision: 0 })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    Ok((r.hash, r.header.map_or(0, |h| h.revision)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_steps_down_majority_continues_and_all_converge() {
    let mut c = Cluster::stopped(3, &[]);
    // proxies[i][j]: how member i reaches member j.
    let mut proxies: Vec<Vec<Option<Proxy>>> = Vec::new();
    for i in 0..3 {
        let mut row = Vec::new();
        let mut routes = Vec::new();
        for j in 0..3 {
            if i == j {
                row.push(None);
                continue;
            }
            let p = Proxy::start(c.members[j].peer.clone()).await;
            routes.push(format!("{}={}", c.members[j].peer, p.addr));
            row.push(Some(p));
        }
        c.members[i].args = vec!["--peer-routes".into(), routes.join(",")];
        proxies.push(row);
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
    let cut = |on: bool| {
        for (i, row) in proxies.iter().enumerate() {
            for (j, p) in row.iter().enumerate() {
                if let Some(p) = p {
                    if i == leader || j == leader {
                        p.set_cut(on);
                    }
                }
            }
        }
    };
    cut(true);

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
    cut(false);
    let all: Vec<String> = c.members.iter().map(|m| m.client.clone()).collect();
    eventually(Duration::from_secs(30), || {
        let all = all.clone();
        async move {
            let mut hashes = Vec::new();
            for ep in &all {
                hashes.push(hash(ep).await?);
            }
            if hashes.windows(2).all(|w| w[0] == w[1]) {
                Ok(())
            } else {
                Err(format!("members differ: {hashes:?}"))
            }
        }
    })
    .await;
    // Nothing acknowledged was lost, and the isolated write never applied.
    let got = get_prefix(&old_ep, "p/").await.expect("read after heal");
    assert_eq!(got.len(), 40, "{got:?}");
    assert!(got.iter().all(|(k, _)| k != "p/isolated"));
}
