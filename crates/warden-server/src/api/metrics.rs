//! Prometheus metrics of one member, served at `/metrics` on the client
//! port (Prometheus text format 0.0.4).
//!
//! Named as etcd names them wherever the meaning is the same, so etcd's
//! dashboards and alerts work unchanged: `etcd_server_has_leader`,
//! `etcd_server_is_leader`, `etcd_server_leader_changes_seen_total`,
//! `etcd_server_proposals_committed_total` and `_applied_total` (gauges of
//! the committed and applied index, as in etcd), `etcd_debugging_mvcc_keys_total`,
//! `etcd_mvcc_db_total_size_in_bytes`, `etcd_server_quota_backend_bytes`;
//! `warden_*` for what etcd has no name for (term, leases, locks and their
//! holders and waiters, watchers, apply lag, replication lag, peer links).
//! Also registered here: what the member's internals record as they work
//! (`node::telemetry`: fsync and snapshot commit histograms, proposals
//! pending and failed, slow applies, peer send failures and round trips,
//! lease expiries, slow-watcher cancels), the gRPC server metrics
//! (`grpc_metrics`) and the process metrics (`process_metrics`).
//!
//! Most values are read from the member's state when scraped (cheap: counts
//! the state keeps, never a scan). Leader changes are counted by a task
//! that looks at the member's leader every heartbeat interval, so two
//! changes within one interval count once.
//!
//! Uses `prometheus-client` (the Prometheus project's Rust client): a
//! registry per member rather than a process-wide recorder, so several
//! members in one test process keep apart, and its encoder writes the
//! exposition format Prometheus and `promtool` parse.
//!
//! Owns: the registry, and the names, help texts and label sets of the
//! values read at scrape time. Never: labels taken from keys, lock names or
//! other client input (cardinality stays bounded by the number of members
//! and of gRPC methods).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::grpc_metrics::GrpcMetrics;
use super::process_metrics::ProcessCollector;
use crate::node::Node;

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A peer of this member, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    /// The peer's member id in hex, as etcd's `To` label.
    to: String,
}

/// One member's metrics.
pub struct Metrics {
    registry: Registry,
    has_leader: Gauge,
    is_leader: Gauge,
    leader_changes: Counter,
    committed: Gauge,
    applied: Gauge,
    keys: Gauge,
    db_size: Gauge,
    quota: Gauge,
    term: Gauge,
    snapshot_index: Gauge,
    purged_index: Gauge,
    leases: Gauge,
    locks: Gauge,
    revision: Gauge,
    peer_connected: Family<PeerLabel, Gauge>,
    peer_seconds_since_contact: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    apply_lag: Gauge,
    replication_lag: Family<ToLabel, Gauge>,
    watchers: Gauge,
    lock_holders: Gauge,
    lock_waiters: Gauge,
    next_token: Gauge,
    history_scratch_bytes: Gauge,
    history_scratch_segments: Gauge,
    history_spill_failures: Gauge,
    history_scratch_swept: Gauge,
    grpc: Arc<GrpcMetrics>,
}

/// etcd's label naming a peer (`To`, the member id in hex).
type ToLabel = [(&'static str, String); 1];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// The metrics of `node`, counting its leader changes from now on (a
    /// task that ends when the node is dropped). One per member: the client
    /// port and the `--listen-metrics-urls` port share it.
    pub fn start(node: &Arc<Node>) -> Arc<Metrics> {
        let metrics = Arc::new(Metrics::new(node));
        tokio::spawn(count_leader_changes(
            Arc::downgrade(node),
            metrics.clone(),
            Duration::from_millis(100),
        ));
        metrics
    }

    /// The gRPC server metrics, for the client port's front service
    /// (`front.rs`).
    pub fn grpc(&self) -> Arc<GrpcMetrics> {
        self.grpc.clone()
    }

    /// A registry with every metric, all zero, and `node`'s instruments.
    pub fn new(node: &Node) -> Metrics {
        let mut m = Metrics {
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes: Counter::default(),
            committed: Gauge::default(),
            applied: Gauge::default(),
            keys: Gauge::default(),
            db_size: Gauge::default(),
            quota: Gauge::default(),
            term: Gauge::default(),
            snapshot_index: Gauge::default(),
            purged_index: Gauge::default(),
            leases: Gauge::default(),
            locks: Gauge::default(),
            revision: Gauge::default(),
            peer_connected: Family::default(),
            peer_seconds_since_contact: Family::default(),
            apply_lag: Gauge::default(),
            replication_lag: Family::default(),
            watchers: Gauge::default(),
            history_scratch_bytes: Gauge::default(),
            history_scratch_segments: Gauge::default(),
            history_spill_failures: Gauge::default(),
            history_scratch_swept: Gauge::default(),
            lock_holders: Gauge::default(),
            lock_waiters: Gauge::default(),
            next_token: Gauge::default(),
            grpc: Arc::default(),
            registry: Registry::default(),
        };
        m.registry.register(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not",
            m.has_leader.clone(),
        );
        m.registry.register(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise",
            m.is_leader.clone(),
        );
        m.registry.register(
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen",
            m.leader_changes.clone(),
        );
        m.registry.register(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed (the committed Raft index)",
            m.committed.clone(),
        );
        m.registry.register(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied (the applied Raft index)",
            m.applied.clone(),
        );
        m.registry.register(
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys",
            m.keys.clone(),
        );
        m.registry.register(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the stored state in bytes, as the storage quota counts it",
            m.db_size.clone(),
        );
        m.registry.register(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes (0: no quota)",
            m.quota.clone(),
        );
        m.registry.register(
            "warden_history_scratch_bytes",
            "Bytes in this member's scratch files for the values of superseded key versions and \
             newest values of 64 bytes or more (unnamed files in the snapshot directory; freed \
             as compaction drops history)",
            m.history_scratch_bytes.clone(),
        );
        m.registry.register(
            "warden_history_scratch_segments",
            "Scratch files this member holds open for key values",
            m.history_scratch_segments.clone(),
        );
        m.registry.register(
            "warden_history_spill_failures",
            "Values kept on the heap since start because writing them to a scratch file failed \
             (a full disk)",
            m.history_spill_failures.clone(),
        );
        m.registry.register(
            "warden_history_scratch_swept",
            "Values copied since start out of scratch files at most half still in use, so \
             those files could close",
            m.history_scratch_swept.clone(),
        );
        m.registry.register(
            "warden_raft_term",
            "The Raft term this member is in",
            m.term.clone(),
        );
        m.registry.register(
            "warden_raft_snapshot_index",
            "Log index of this member's latest snapshot (0: none yet)",
            m.snapshot_index.clone(),
        );
        m.registry.register(
            "warden_raft_log_purged_index",
            "Log index up to which this member has purged its Raft log (0: nothing purged)",
            m.purged_index.clone(),
        );
        m.registry.register(
            "warden_mvcc_revision",
            "The revision of this member's applied state",
            m.revision.clone(),
        );
        m.registry.register(
            "warden_leases",
            "Leases in this member's applied state",
            m.leases.clone(),
        );
        m.registry.register(
            "warden_locks",
            "Native locks with a holder or a waiter",
            m.locks.clone(),
        );
        m.registry.register(
            "warden_peer_connected",
            "Whether the last call to this peer succeeded (1) or failed (0)",
            m.peer_connected.clone(),
        );
        m.registry.register(
            "warden_peer_seconds_since_contact",
            "Seconds since the last successful call to this peer",
            m.peer_seconds_since_contact.clone(),
        );
        m.registry.register(
            "warden_apply_lag_entries",
            "Committed Raft entries this member has not applied yet",
            m.apply_lag.clone(),
        );
        m.registry.register(
            "warden_replication_lag_entries",
            "On the leader: log entries a follower's matched index is behind the leader's last",
            m.replication_lag.clone(),
        );
        m.registry.register(
            "warden_watchers",
            "Watchers registered on this member (all Watch streams)",
            m.watchers.clone(),
        );
        m.registry.register(
            "warden_lock_holders",
            "Holds of native locks (a shared lock counts each holder)",
            m.lock_holders.clone(),
        );
        m.registry.register(
            "warden_lock_waiters",
            "Waiters queued on native locks",
            m.lock_waiters.clone(),
        );
        m.registry.register(
            "warden_lock_next_fencing_token",
            "The fencing token the next lock grant gets (every issued token is smaller)",
            m.next_token.clone(),
        );
        node.telemetry().register(&mut m.registry);
        m.grpc.register(&mut m.registry);
        m.registry.register_collector(Box::new(ProcessCollector));
        m
    }

    /// Counts one leader change.
    pub fn leader_changed(&self) {
        self.leader_changes.inc();
    }

    /// Reads `node`'s current values and encodes every metric.
    pub fn render(&self, node: &Node) -> Result<String, String> {
        let st = node.status();
        let gauge = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        gauge(&self.has_leader, u64::from(st.leader.is_some()));
        gauge(&self.is_leader, u64::from(st.leader == Some(node.id())));
        gauge(&self.committed, st.committed);
        gauge(&self.applied, st.applied);
        gauge(&self.term, st.term);
        gauge(&self.snapshot_index, st.snapshot_index);
        gauge(&self.purged_index, st.purged_index);
        self.revision.set(st.revision);
        gauge(&self.quota, node.quota_bytes().unwrap_or(0));
        gauge(&self.apply_lag, st.committed.saturating_sub(st.applied));
        gauge(&self.watchers, node.watchers() as u64);
        let cold = node.history_scratch();
        gauge(&self.history_scratch_bytes, cold.bytes);
        gauge(&self.history_scratch_segments, cold.segments);
        gauge(&self.history_spill_failures, cold.write_errors);
        gauge(&self.history_scratch_swept, cold.moved);
        let counts = node
            .with_state(|d| {
                let locks = d.kv.locks();
                let (holders, waiters) = locks.holds_and_waits();
                (
                    d.kv.mvcc().len() as u64,
                    d.kv.size(),
                    d.kv.leases().len() as u64,
                    locks.len() as u64,
                    holders,
                    waiters,
                    locks.next_token(),
                )
            })
            .map_err(|e| format!("read the member's state: {e}"))?;
        gauge(&self.keys, counts.0);
        gauge(&self.db_size, counts.1);
        gauge(&self.leases, counts.2);
        gauge(&self.locks, counts.3);
        gauge(&self.lock_holders, counts.4);
        gauge(&self.lock_waiters, counts.5);
        gauge(&self.next_token, counts.6);
        self.replication_lag.clear();
        for (id, lag) in node.replication_lag() {
            gauge(
                &self
                    .replication_lag
                    .get_or_create(&[("To", format!("{id:x}"))]),
                lag,
            );
        }
        self.peer_connected.clear();
        self.peer_seconds_since_contact.clear();
        for (id, link) in node.peer_links() {
            let label = PeerLabel {
                to: format!("{id:x}"),
            };
            let connected = link.state == crate::node::network::LinkState::Connected;
            self.peer_connected
                .get_or_create(&label)
                .set(i64::from(connected));
            if let Some(at) = link.last_ok {
                self.peer_seconds_since_contact
                    .get_or_create(&label)
                    .set(at.elapsed().as_secs_f64());
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .map_err(|e| format!("encode metrics: {e}"))?;
        Ok(out)
    }
}

/// Counts leader changes of `node` into `metrics` until the node is
/// dropped: looks every `every` whether the leader this member knows
/// differs from the last one seen.
pub async fn count_leader_changes(
    node: std::sync::Weak<Node>,
    metrics: Arc<Metrics>,
    every: Duration,
) {
    // As etcd counts: a leader that differs from the one known before
    // (none included) is a change.
    let mut last: Option<u64> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else {
            return;
        };
        let now = node.leader();
        if now.is_some() && now != last {
            metrics.leader_changed();
        }
        last = now;
    }
}
