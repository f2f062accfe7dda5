//! Watchers that stop reading must not pin the member's memory: 50 watchers
//! on the whole key space that never read, while ~2 MB of values (each put
//! also carries its ~2 KB previous value) are written. Their queues are
//! bounded in bytes (`--watch-queue-bytes`, small here), so they are
//! cancelled with a reason, and the member's RSS stays bounded; a watcher
//! that does read sees every event, in order.
//!
//! Without the bounds, each slow watcher kept up to 1024 deep-copied
//! batches plus 256 converted responses: 50 x ~4 MB (value + prev value)
//! = ~200 MB here. With them each holds at most its stream's 256 KiB of
//! outgoing responses and 400 KiB in the HTTP/2 send buffer, and all share
//! one copy of the queued batches (under 256 KiB each): ~33 MB at worst
//! (about 25 MB measured); `RSS_GROWTH_BOUND_KB` leaves room for allocator
//! slack.
//!
//! Also: a watcher from an old revision, created during the writes, sees
//! every event once and in order across replay chunks and the live tail;
//! a stream refuses watchers past `--max-watchers-per-stream`, and the
//! HTTP/2 keepalive flags are accepted (a 1 s ping interval disturbs no live
//! client). A second test: a client that vanishes without closing its
//! connection is dropped by the keepalive (with `--grpc-keepalive-interval 0`
//! it stays connected: checked by hand when the test was written).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::time::Duration;

use common::{put, Cluster};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::watch_client::WatchClient;
use warden_proto::etcdserverpb::watch_request::RequestUnion;

const SLOW_WATCHERS: usize = 50;
const PUTS: usize = 1000;
const VALUE: usize = 2048;
/// Most the member's resident memory may grow over the test.
const RSS_GROWTH_BOUND_KB: u64 = 64 * 1024;

/// A field of /proc/<pid>/status, in kB.
fn proc_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field in proc status")
}

struct W {
    _tx: mpsc::Sender<pb::WatchRequest>,
    rx: Streaming<pb::WatchResponse>,
}

/// Opens a Watch stream on `ch` with one watcher on every key, prev_kv on,
/// and waits for its `created` answer.
async fn watch_all(ch: Channel) -> W {
    let (tx, r) = mpsc::channel(8);
    tx.send(pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            prev_kv: true,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut rx = WatchClient::new(ch)
        .watch(ReceiverStream::new(r))
        .await
        .expect("watch")
        .into_inner();
    let created = next(&mut rx).await;
    assert!(created.created && !created.canceled, "{created:?}");
    W { _tx: tx, rx }
}

async fn next(rx: &mut Streaming<pb::WatchResponse>) -> pb::WatchResponse {
    tokio::time::timeout(Duration::from_secs(20), rx.message())
        .await
        .expect("watch answer in time")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watchers_are_cancelled_and_memory_stays_bounded() {
    let c = Cluster::start_with(
        1,
        &[
            "--watch-queue-bytes",
            "262144",
            "--watch-pending-bytes",
            "8388608",
            "--max-watchers-per-stream",
            "3",
            "--max-concurrent-streams",
            "100",
            // Pings every second: live clients answer them, so nothing here
            // may be dropped for it.
            "--grpc-keepalive-interval",
            "1s",
            "--grpc-keepalive-timeout",
            "5s",
        ],
    );
    c.wait_leader(Duration::from_secs(20)).await;
    let ep = c.members[0].client.clone();
    let pid = c.members[0].child.as_ref().expect("running").id();

    // The slow watchers share one connection whose HTTP/2 windows are small,
    // so what they do not read backs up in the member, not in this process.
    let slow_ch = Endpoint::from_shared(format!("http://{ep}"))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut slow = Vec::new();
    for _ in 0..SLOW_WATCHERS {
        slow.push(watch_all(slow_ch.clone()).await);
    }
    let mut reader = watch_all(common::channel(&ep).await).await;
    let start_rev = common::status(&ep).await.unwrap().header.unwrap().revision;

    // A stream holds at most --max-watchers-per-stream watchers.
    let mut w = watch_all(common::channel(&ep).await).await;
    for _ in 0..3 {
        w._tx
            .send(pb::WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
                    key: b"x".to_vec(),
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
    }
    let mut refused = Vec::new();
    for _ in 0..3 {
        let r = next(&mut w.rx).await;
        assert!(r.created, "{r:?}");
        if r.canceled {
            refused.push(r.cancel_reason);
        }
    }
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains("--max-watchers-per-stream 3"),
        "{refused:?}"
    );
    drop(w);

    let baseline = proc_kb(pid, "VmRSS:");
    let value = "v".repeat(VALUE);
    let writer = {
        let ep = ep.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            for i in 0..PUTS {
                put(&ep, &format!("k{:03}", i % 100), &value)
                    .await
                    .expect("put");
                if i % 50 == 0 {
                    peak = peak.max(proc_kb(pid, "VmRSS:"));
                }
            }
            peak
        })
    };

    // (b') A watcher created mid-way from an old revision replays history
    // in chunks (1 MiB per read of the state here: several) and then
    // follows live events, with nothing lost or twice at any seam. Should
    // it fall behind meanwhile, it does what a client must: watch again
    // from the next revision it needs.
    let last = start_rev + PUTS as i64;
    let late = {
        let ep = ep.clone();
        tokio::spawn(async move {
            loop {
                let r = common::status(&ep).await.unwrap().header.unwrap().revision;
                if r > start_rev + PUTS as i64 / 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut want = start_rev + 1;
            let mut watches = 0;
            while want <= last {
                watches += 1;
                assert!(watches < 50, "re-watched too often");
                let (tx, r) = mpsc::channel(8);
                tx.send(pb::WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
                        key: vec![0],
                        range_end: vec![0],
                        start_revision: want,
                        ..Default::default()
                    })),
                })
                .await
                .unwrap();
                let mut rx = WatchClient::new(common::channel(&ep).await)
                    .watch(ReceiverStream::new(r))
                    .await
                    .expect("watch")
                    .into_inner();
                assert!(next(&mut rx).await.created);
                while want <= last {
                    let r = next(&mut rx).await;
                    for e in &r.events {
                        assert_eq!(e.kv.as_ref().expect("kv").mod_revision, want);
                        want += 1;
                    }
                    if r.canceled {
                        assert!(r.cancel_reason.contains("fell too far behind"), "{r:?}");
                        break;
                    }
                }
            }
            watches
        })
    };

    // (b) The reading watcher gets every revision, in order, one put each.
    let mut want = start_rev + 1;
    while want <= last {
        let r = next(&mut reader.rx).await;
        assert!(!r.canceled, "reader cancelled: {}", r.cancel_reason);
        for e in &r.events {
            let kv = e.kv.as_ref().expect("kv");
            assert_eq!(kv.mod_revision, want, "in order, nothing lost or twice");
            assert_eq!(kv.value.len(), VALUE);
            want += 1;
        }
    }
    let peak = writer.await.unwrap().max(proc_kb(pid, "VmRSS:"));
    let watches = late.await.expect("late watcher saw every event in order");
    eprintln!("late watcher: {watches} watch(es)");
    let hwm = proc_kb(pid, "VmHWM:");
    eprintln!("member RSS: baseline {baseline} kB, peak sampled {peak} kB, VmHWM {hwm} kB");

    // (a) Memory stays bounded.
    assert!(
        peak.max(hwm) < baseline + RSS_GROWTH_BOUND_KB,
        "member RSS grew from {baseline} kB to {} kB",
        peak.max(hwm)
    );

    // (c) Once they read, the slow watchers find they were cancelled, with a
    // reason, after a prefix of the events in order. (They share a
    // connection window, so they are read all at once.)
    let mut readers = tokio::task::JoinSet::new();
    for (i, w) in slow.into_iter().enumerate() {
        readers.spawn(async move {
            // Keep the request side open: the member ends a Watch stream
            // whose client closed its sending side, as etcd does.
            let W { _tx, mut rx } = w;
            let mut want = start_rev + 1;
            loop {
                let r = tokio::time::timeout(Duration::from_secs(20), rx.message())
                    .await
                    .expect("in time");
                let r = match r {
                    Ok(Some(r)) => r,
                    other => panic!(
                        "watcher {i} after {} events: {other:?}",
                        want - start_rev - 1
                    ),
                };
                for e in &r.events {
                    assert_eq!(e.kv.as_ref().expect("kv").mod_revision, want);
                    want += 1;
                }
                if r.canceled {
                    assert!(
                        r.cancel_reason.contains("fell too far behind"),
                        "watcher {i}: {:?}",
                        r.cancel_reason
                    );
                    assert!(want <= last, "watcher {i} was cancelled after everything");
                    return;
                }
            }
        });
    }
    while let Some(r) = readers.join_next().await {
        r.expect("slow watcher check");
    }
}

/// A client that vanishes without closing its connection (here: a proxy
/// that stops forwarding) no longer holds its watchers forever: the member
/// pings the idle connection (`--grpc-keepalive-interval`) and closes it
/// when the ping goes unanswered (`--grpc-keepalive-timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_connections_are_closed_by_keepalive() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let c = Cluster::start_with(
        1,
        &[
            "--grpc-keepalive-interval",
            "1s",
            "--grpc-keepalive-timeout",
            "2s",
        ],
    );
    c.wait_leader(Duration::from_secs(20)).await;
    let ep = c.members[0].client.clone();

    // client <-> proxy <-> member; once `dead`, the proxy forwards nothing
    // (the member's pings are lost) but notices when the member hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap().to_string();
    let dead = Arc::new(AtomicBool::new(false));
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<std::time::Instant>();
    {
        let dead = dead.clone();
        let ep = ep.clone();
        tokio::spawn(async move {
            let (mut client, _) = listener.accept().await.unwrap();
            let mut member = tokio::net::TcpStream::connect(&ep).await.unwrap();
            let (mut cb, mut mb) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    n = client.read(&mut cb) => match n {
                        Ok(n) if n > 0 => {
                            if !dead.load(Ordering::SeqCst) {
                                member.write_all(&cb[..n]).await.unwrap();
                            }
                        }
                        _ => std::future::pending::<()>().await,
                    },
                    n = member.read(&mut mb) => match n {
                        Ok(n) if n > 0 => {
                            if !dead.load(Ordering::SeqCst) {
                                client.write_all(&mb[..n]).await.unwrap();
                            }
                        }
                        _ => {
                            let _ = closed_tx.send(std::time::Instant::now());
                            return;
                        }
                    },
                }
            }
        });
    }

    let ch = Endpoint::from_shared(format!("http://{proxy_addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect through the proxy");
    let mut w = watch_all(ch).await;
    put(&ep, "alive", "1").await.unwrap();
    let r = next(&mut w.rx).await;
    assert_eq!(r.events.len(), 1, "the watcher works through the proxy");

    dead.store(true, Ordering::SeqCst);
    let t0 = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(20), closed_rx)
        .await
        .expect("the member closes the dead connection")
        .expect("proxy reports");
    let after = closed - t0;
    eprintln!("dead connection closed by the member after {after:?}");
    assert!(after >= Duration::from_millis(1500), "{after:?}");
    put(&ep, "alive", "2")
        .await
        .expect("the member still serves");
}
