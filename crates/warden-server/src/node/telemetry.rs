//! Instruments the member's internals feed as they work: disk commit
//! durations, proposals in flight and failed, slow applies, peer send
//! failures and round trips, lease expiries, slow-watcher cancels. The API
//! layer (`api::metrics`) registers them next to the values it reads from
//! the state when scraped; [`Telemetry::register`] owns their names, which
//! are etcd's wherever the meaning is the same (so etcd's dashboards and
//! alerts read them unchanged), `warden_*` otherwise.
//!
//! Every instrument is a handful of atomics (prometheus-client's types):
//! recording never blocks, allocates only for a peer seen the first time,
//! and never takes a lock the apply path or the log writer waits for.
//!
//! Must never: take a label from client input (the only label is a peer's
//! member id, bounded by the membership), or let a recording decide
//! anything.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use warden_core::storage::observe::CommitObserver;

/// An apply slower than this is counted as slow (etcd's default
/// `--warning-apply-duration`).
pub const SLOW_APPLY: Duration = Duration::from_millis(100);

/// etcd's label naming the peer a message went to (member id in hex).
type To = [(&'static str, String); 1];

fn to(peer: u64) -> To {
    [("To", format!("{peer:x}"))]
}

/// etcd's buckets of its disk histograms: 1 ms doubling to 8.192 s.
fn disk_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// etcd's buckets of `etcd_network_peer_round_trip_time_seconds`: 0.1 ms
/// doubling to 0.8192 s.
fn rtt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 14))
}

/// The instruments of one member. Cheap to share behind an `Arc`.
pub struct Telemetry {
    wal_fsync: Histogram,
    backend_commit: Histogram,
    proposals_pending: Gauge,
    proposals_failed: Counter,
    slow_applies: Counter,
    peer_sent_failures: Family<To, Counter>,
    peer_rtt: Family<To, Histogram, fn() -> Histogram>,
    lease_expiries: Counter,
    slow_watcher_cancels: Counter,
    read_index_rounds: Counter,
    read_index_reads: Counter,
    forward_streams: Counter,
    forward_writes: Counter,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            wal_fsync: disk_histogram(),
            backend_commit: disk_histogram(),
            proposals_pending: Gauge::default(),
            proposals_failed: Counter::default(),
            slow_applies: Counter::default(),
            peer_sent_failures: Family::default(),
            peer_rtt: Family::new_with_constructor(rtt_histogram),
            lease_expiries: Counter::default(),
            slow_watcher_cancels: Counter::default(),
            read_index_rounds: Counter::default(),
            read_index_reads: Counter::default(),
            forward_streams: Counter::default(),
            forward_writes: Counter::default(),
        }
    }
}

/// The Raft log's commit observer: each commit is one fsync of the log.
struct WalFsync(Histogram);

impl CommitObserver for WalFsync {
    fn committed(&self, took: Duration) {
        self.0.observe(took.as_secs_f64());
    }
}

/// A proposal in flight: counted in `etcd_server_proposals_pending` until
/// dropped.
pub struct Pending(Gauge);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Telemetry {
    /// Registers every instrument in `reg` under its exposed name.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL (warden: the commit of the Raft log file)",
            self.wal_fsync.clone(),
        );
        reg.register(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend (warden: writing and syncing a state-machine snapshot file, the state machine's only durable commit)",
            self.backend_commit.clone(),
        );
        reg.register(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit",
            self.proposals_pending.clone(),
        );
        reg.register(
            "etcd_server_proposals_failed",
            "The total number of failed proposals seen",
            self.proposals_failed.clone(),
        );
        reg.register(
            "etcd_server_slow_apply",
            "The total number of slow apply requests (likely overloaded from slow disk)",
            self.slow_applies.clone(),
        );
        reg.register(
            "etcd_network_peer_sent_failures",
            "The total number of send failures to peers",
            self.peer_sent_failures.clone(),
        );
        reg.register(
            "etcd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers (warden: a heartbeat's round trip)",
            self.peer_rtt.clone(),
        );
        reg.register(
            "warden_lease_expired",
            "Leases revoked by the leader because their TTL ran out",
            self.lease_expiries.clone(),
        );
        reg.register(
            "warden_watch_slow_cancels",
            "Watchers cancelled for falling too far behind (--watch-queue-bytes, --watch-pending-bytes)",
            self.slow_watcher_cancels.clone(),
        );
        reg.register(
            "warden_read_index_rounds",
            "ReadIndex rounds this member ran for linearizable reads (a follower's round is one request to the leader)",
            self.read_index_rounds.clone(),
        );
        reg.register(
            "warden_read_index_reads",
            "Linearizable reads served by those rounds (reads per round = this over warden_read_index_rounds_total)",
            self.read_index_reads.clone(),
        );
        reg.register(
            "warden_forward_streams",
            "Streams this member opened to the leader to forward client writes on (one per leader; a broken stream is opened again)",
            self.forward_streams.clone(),
        );
        reg.register(
            "warden_forward_writes",
            "Client writes this member forwarded to the leader",
            self.forward_writes.clone(),
        );
    }

    /// The observer to hand the Raft log (`LogDb::observe_commits`).
    pub fn wal_observer(&self) -> Arc<dyn CommitObserver> {
        Arc::new(WalFsync(self.wal_fsync.clone()))
    }

    /// A snapshot file was written and synced in `took`.
    pub fn backend_committed(&self, took: Duration) {
        self.backend_commit.observe(took.as_secs_f64());
    }

    /// A proposal starts; it is pending until the guard is dropped.
    pub fn proposal(&self) -> Pending {
        self.proposals_pending.inc();
        Pending(self.proposals_pending.clone())
    }

    /// A proposal failed (no leader, timeout, leader change, stopped).
    pub fn proposal_failed(&self) {
        self.proposals_failed.inc();
    }

    /// One entry was applied in `took`.
    pub fn applied(&self, took: Duration) {
        if took > SLOW_APPLY {
            self.slow_applies.inc();
        }
    }

    /// This member talks to `peer`: its failure count is shown from 0, so
    /// the first failure is seen by `rate()` and `increase()`.
    pub fn peer_known(&self, peer: u64) {
        drop(self.peer_sent_failures.get_or_create(&to(peer)));
    }

    /// A call to `peer` failed.
    pub fn peer_send_failed(&self, peer: u64) {
        self.peer_sent_failures.get_or_create(&to(peer)).inc();
    }

    /// A heartbeat to `peer` was answered after `took`.
    pub fn peer_round_trip(&self, peer: u64, took: Duration) {
        self.peer_rtt
            .get_or_create(&to(peer))
            .observe(took.as_secs_f64());
    }

    /// The leader revoked a lease whose TTL ran out.
    pub fn lease_expired(&self) {
        self.lease_expiries.inc();
    }

    /// A ReadIndex round ran for `reads` linearizable reads.
    pub fn read_index_round(&self, reads: usize) {
        self.read_index_rounds.inc();
        self.read_index_reads.inc_by(reads as u64);
    }

    /// A stream to the leader for forwarded writes was opened.
    pub fn forward_stream_opened(&self) {
        self.forward_streams.inc();
    }

    /// A client write was forwarded to the leader.
    pub fn forward_write(&self) {
        self.forward_writes.inc();
    }

    /// The counter the watch hub adds its slow-watcher cancels to.
    pub fn slow_watcher_cancels(&self) -> Counter {
        self.slow_watcher_cancels.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &Telemetry) -> String {
        let mut reg = Registry::default();
        t.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &reg).unwrap();
        out
    }

    #[test]
    fn names_and_movements() {
        let t = Telemetry::default();
        t.wal_observer().committed(Duration::from_millis(3));
        {
            let _p = t.proposal();
            assert!(render(&t).contains("etcd_server_proposals_pending 1\n"));
        }
        t.proposal_failed();
        t.applied(Duration::from_millis(1));
        t.applied(Duration::from_millis(150));
        t.peer_send_failed(0xab);
        t.peer_round_trip(0xab, Duration::from_micros(300));
        t.read_index_round(5);
        t.read_index_round(1);
        let page = render(&t);
        for want in [
            "etcd_server_proposals_pending 0\n",
            "etcd_server_proposals_failed_total 1\n",
            "etcd_server_slow_apply_total 1\n",
            "etcd_disk_wal_fsync_duration_seconds_count 1\n",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.004\"} 1\n",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.002\"} 0\n",
            "etcd_disk_backend_commit_duration_seconds_count 0\n",
            "etcd_network_peer_sent_failures_total{To=\"ab\"} 1\n",
            "etcd_network_peer_round_trip_time_seconds_bucket{To=\"ab\",le=\"0.0004\"} 1\n",
            "warden_read_index_rounds_total 2\n",
            "warden_read_index_reads_total 6\n",
        ] {
            assert!(page.contains(want), "missing {want:?} in\n{page}");
        }
    }
}
