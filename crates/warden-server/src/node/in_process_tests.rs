//! A one-member cluster run in the test's own process, for what only a
//! running member shows but no client can see: how often its long-lived
//! watchers of the Raft core wake, and what a forwarded request costs the
//! leader in memory.
//!
//! Long-lived watchers of the Raft core wake when its role, term, leader
//! or membership changes, not with every write: the core's full metrics
//! change with every append, commit and apply, and `raft_failed` runs on
//! the main thread, where each wake-up was a thread wake-up and a context
//! switch per write (docs/benchmarks.md, "Wake-ups per write").

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake};

use tokio::time::{Duration, Instant};
use warden_core::state::types::PutRequest;
use warden_core::state::Command;

use super::types::Request;
use super::{Http2Limits, Node, NodeConfig};

/// Counts the wake-ups of the future it is polled with.
struct Counter(AtomicUsize);

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A one-member cluster in `dir` (nothing listens: the node is used in
/// process).
fn config(dir: &std::path::Path) -> NodeConfig {
    let peer = "127.0.0.1:1".to_string();
    NodeConfig {
        name: "n1".into(),
        data_dir: dir.join("n1"),
        client_addr: "127.0.0.1:2".into(),
        peer_addr: peer.clone(),
        initial_cluster: [("n1".to_string(), peer)].into_iter().collect(),
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        heartbeat_interval_ms: 50,
        snapshot_entries: 100_000,
        request_timeout: Duration::from_secs(5),
        join: Vec::new(),
        auto_promote: true,
        peer_routes: Default::default(),
        watch: Default::default(),
        client_http2: Http2Limits::default(),
        quota_backend_bytes: None,
        auto_compaction: None,
        client_tls: None,
        peer_tls: None,
        lease_checkpoint_interval: Duration::from_secs(300),
        slow_request: Duration::from_secs(1),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_for_a_failed_core_does_not_wake_per_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(config(dir.path())).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);
    assert_eq!(node.wait_leader(deadline).await, Some(node.id), "no leader");
    // The first write also settles what becoming leader changes.
    let put = |i: usize| {
        Request::kv(Command::Put(PutRequest {
            key: format!("k{i}").into_bytes(),
            value: b"v".to_vec(),
            ..Default::default()
        }))
    };
    node.write(put(0), deadline).await.expect("first put");

    let counter = Arc::new(Counter(AtomicUsize::new(0)));
    let waker = counter.clone().into();
    let mut cx = Context::from_waker(&waker);
    let mut failed = Box::pin(node.raft_failed());
    assert!(failed.as_mut().poll(&mut cx).is_pending());
    const WRITES: usize = 100;
    let mut polled = 0;
    for i in 1..=WRITES {
        node.write(put(i), deadline).await.expect("put");
        // As an executor would: poll again once woken (a waker is used
        // once; it must be polled again to be woken again).
        let woken = counter.0.load(Ordering::SeqCst);
        if woken > polled {
            polled = woken;
            assert!(failed.as_mut().poll(&mut cx).is_pending());
        }
    }
    let wakes = counter.0.load(Ordering::SeqCst);
    // Each wake-up would be a poll finding the core still running; with the
    // full metrics there were several per write.
    assert!(
        wakes < WRITES / 10,
        "{wakes} wake-ups of raft_failed over {WRITES} writes"
    );
    assert!(failed.as_mut().poll(&mut cx).is_pending());
    drop(failed);
    node.shutdown().await;
}

/// What the leader keeps per request on a follower's forward stream (up to
/// `forward_stream::MAX_IN_FLIGHT` of them per stream) is the future of
/// `serve_forwarded`: it held the whole request handler three times over
/// (33 KB in a release build) until the handler was boxed; now it holds a
/// pointer to it, and the handler itself no longer carries the size of
/// the rare kinds (membership changes, lease questions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_costs_the_leader_a_small_future() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(config(dir.path())).await.expect("start");
    let put = Request::kv(Command::Put(PutRequest::default()));
    let serve = node.serve_forwarded(
        super::ForwardRequest::Write(put.clone()),
        Duration::from_secs(1),
        None,
        1,
    );
    let serve_size = std::mem::size_of_val(&serve);
    drop(serve);
    let handler = node.handle_forward(super::ForwardRequest::Write(put.clone()), Instant::now());
    let handler_size = std::mem::size_of_val(&handler);
    drop(handler);
    let write = node.write_local_at(put, Instant::now());
    let write_size = std::mem::size_of_val(&write);
    drop(write);
    eprintln!("serve_forwarded {serve_size} B, handle_forward {handler_size} B, write_local_at {write_size} B");
    assert!(
        serve_size <= 2048,
        "serve_forwarded's future is {serve_size} bytes"
    );
    // A forwarded write's handler is about the write it makes.
    assert!(
        handler_size <= write_size + 1024,
        "handle_forward's future is {handler_size} bytes, a local write's {write_size}"
    );
    node.shutdown().await;
}

/// Waiting for another leader ends when the Raft core is gone, instead of
/// spinning on its closed channel: a leader whose core failed while it
/// handed leadership over before a stop spun a core at 100 % and never
/// exited (found when a benchmark's data directory was deleted under it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_leader_ends_when_the_core_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Long election timeouts: the wait's own bound (two of them) is 20 s,
    // so only the closed channel can end it before the outer timeout.
    let mut c = config(dir.path());
    c.election_timeout_min_ms = 5_000;
    c.election_timeout_max_ms = 10_000;
    let node = Node::start(c).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);
    assert_eq!(node.wait_leader(deadline).await, Some(node.id), "no leader");
    node.raft.shutdown().await.expect("shutdown");
    let far = Instant::now() + Duration::from_secs(60);
    let waited = tokio::time::timeout(
        Duration::from_secs(5),
        node.wait_leader_except(Some(node.id), far),
    )
    .await;
    assert_eq!(waited, Ok(None), "the wait did not end with the core");
}
