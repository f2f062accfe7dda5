//! One member of the cluster: drives openraft (`types`, `log_store`,
//! `state_machine`, `network`, `peer_service`) and offers the API layer a
//! narrow surface: `write` (propose a command and wait for its applied
//! result), `read` / `linearize` (reads of the local state at a chosen
//! consistency), `with_state` / `watch_state` / `subscribe` (state access and
//! watch subscriptions), lease, membership and maintenance entry points, and
//! `status`. The API never sees openraft types or the node's fields.
//!
//! This file owns the `Node` struct, its start-up settings (`NodeConfig`),
//! its errors (`NodeError`) and its status. The rest is split by concern:
//! - `bootstrap`: start-up, bootstrapping or joining a cluster, identity,
//!   publishing the client address;
//! - `forward`: writes, and forwarding client traffic to the leader (the
//!   peer `Forward` RPC);
//! - `reads`: linearizable and serializable reads, the readiness gate, state
//!   access and watch subscriptions;
//! - `lessor`: lease countdowns and the lease entry points;
//! - `membership`: membership changes, removal, leadership transfer;
//! - `failover`: electing at once after the leader's process died, granting
//!   votes after one election timeout of silence, and CheckQuorum.
//!
//! Any member accepts any request. A follower forwards writes to the leader
//! over the peer `Forward` RPC, and for a linearizable read asks the leader for
//! its read index (ReadIndex: the leader confirms with a quorum), then waits
//! until its own state machine has applied that index and reads locally.
//!
//! Must never: answer a linearizable read from a member that has not confirmed
//! a current leader's commit index, or retry a forwarded write whose outcome is
//! unknown (that would apply it twice).

pub mod auto_compact;
mod bootstrap;
pub mod failover;
mod forward;
mod forward_batch;
mod forward_stream;
pub mod lessor;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod peer_auth;
pub mod peer_service;
mod reads;
mod snapshot_policy;
pub mod state_machine;
pub mod telemetry;
pub mod types;
pub mod watch_hub;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod in_process_tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use network::{LinkInfo, Links};
use state_machine::Raft;
use state_machine::SmStore;
use types::Member;

pub use bootstrap::cluster_id_for;
use forward::Redirect;
pub use forward::{ForwardRequest, ForwardResponse};
pub use reads::{Consistency, Subscriber, WatchGuard};
pub use state_machine::{LockFeed, SmData};
pub use watch_hub::{Batch, WatchLimits};

/// Why a request could not be served; mapped to gRPC at the API edge.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum NodeError {
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    /// A proposal was in flight when leadership changed: it may or may not
    /// have been applied.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("{0}")]
    Internal(String),
    /// The request was refused as invalid in the current state, or failed
    /// in a way etcd reports with its own code (carries the gRPC code and
    /// etcd's message).
    #[error("{message}")]
    Refused { code: i32, message: String },
    /// A member that joined a running cluster has not caught up to its own
    /// announcement yet and must not answer serializable reads.
    #[error("etcdserver: not ready: this member is still catching up")]
    NotReady,
}

impl NodeError {
    /// A refusal with a gRPC code and etcd's message.
    fn refused(code: tonic::Code, message: impl Into<String>) -> NodeError {
        NodeError::Refused {
            code: code as i32,
            message: message.into(),
        }
    }
}

/// Start-up settings of a member (the CLI's `warden server` flags, resolved
/// by `cli/server.rs`, are the user-facing form).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub client_addr: String,
    pub peer_addr: String,
    /// name → peer address of every initial member, this one included.
    pub initial_cluster: BTreeMap<String, String>,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub snapshot_entries: u64,
    pub request_timeout: Duration,
    /// Client addresses of a running cluster to join (as a learner) instead
    /// of bootstrapping `initial_cluster`. Ignored once the data dir holds
    /// an identity.
    pub join: Vec<String>,
    /// Ask for promotion to voter once caught up (learners only).
    pub auto_promote: bool,
    /// Peer address → address to dial instead (proxies, NAT).
    pub peer_routes: BTreeMap<String, String>,
    /// Watch limits: byte budgets of queued events, watchers per stream.
    pub watch: watch_hub::WatchLimits,
    /// HTTP/2 limits of the client port (streams per connection, keepalive).
    pub client_http2: Http2Limits,
    /// Storage quota (`--quota-backend-bytes`, resolved): writes that would
    /// take `StateMachine::size` to it or past it raise NOSPACE and are
    /// refused. `None`: no quota.
    pub quota_backend_bytes: Option<u64>,
    /// Auto-compaction run by the leader (`--auto-compaction-mode` and
    /// `--auto-compaction-retention`); `None`: off.
    pub auto_compaction: Option<auto_compact::AutoCompaction>,
    /// TLS on the client port (`--cert-file`, `--key-file`,
    /// `--trusted-ca-file`, `--client-cert-auth`); `None`: plaintext.
    pub client_tls: Option<crate::tls::TlsFiles>,
    /// TLS between members (`--peer-cert-file`, `--peer-key-file`,
    /// `--peer-trusted-ca-file`, `--peer-client-cert-auth`); `None`:
    /// plaintext.
    pub peer_tls: Option<crate::tls::TlsFiles>,
    /// How often the leader checkpoints the remaining TTL of a lease whose
    /// remaining TTL exceeds it (`--lease-checkpoint-interval`, etcd's
    /// flag); see `lessor`.
    pub lease_checkpoint_interval: Duration,
    /// Requests slower than this are logged (`--warning-apply-duration`).
    pub slow_request: Duration,
}

impl NodeConfig {
    /// `https` if clients reach this member over TLS, else `http`.
    pub fn client_scheme(&self) -> &'static str {
        if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `https` if members reach each other over TLS, else `http`.
    pub fn peer_scheme(&self) -> &'static str {
        if self.peer_tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// HTTP/2 settings of the client port, under etcd's flag names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Http2Limits {
    /// Most concurrent streams (RPCs) per client connection
    /// (`--max-concurrent-streams`).
    pub max_concurrent_streams: u32,
    /// Ping a connection idle this long; `None` = never
    /// (`--grpc-keepalive-interval`).
    pub keepalive_interval: Option<Duration>,
    /// Close a connection whose ping is not answered within this
    /// (`--grpc-keepalive-timeout`).
    pub keepalive_timeout: Duration,
    /// etcd's minimum interval between client pings
    /// (`--grpc-keepalive-min-time`). Accepted and validated for etcd
    /// compatibility; the HTTP/2 server (hyper) has no ping policy to
    /// enforce it with.
    pub keepalive_min_time: Duration,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_concurrent_streams: 256,
            keepalive_interval: Some(Duration::from_secs(2 * 3600)),
            keepalive_timeout: Duration::from_secs(20),
            keepalive_min_time: Duration::from_secs(5),
        }
    }
}

/// A running member. Its fields are private: the gRPC services use the
/// methods below (and in `forward`, `reads`, `lessor`, `membership`); the
/// node's own modules reach the fields directly.
pub struct Node {
    id: u64,
    name: String,
    cluster_id: u64,
    client_addr: String,
    raft: Raft,
    sm: SmStore,
    links: Arc<Links>,
    config: NodeConfig,
    forward_clients: Mutex<BTreeMap<u64, (String, peer_auth::PeerClient)>>,
    lessor: lessor::Lessor,
    /// This member joined a running cluster (`--join`) rather than
    /// bootstrapping it.
    joined: bool,
    /// Set once the cluster has removed this member (why, in one line).
    removed: tokio::sync::watch::Sender<Option<String>>,
    /// Instruments fed by this member's internals (`api::metrics` shows them).
    telemetry: Arc<telemetry::Telemetry>,
    /// Dead-leader detection and CheckQuorum (`failover`).
    failover: failover::Failover,
    /// Linearizable reads waiting for a ReadIndex round
    /// (`reads::read_index_rounds`).
    read_rounds: tokio::sync::mpsc::UnboundedSender<reads::ReadWaiter>,
    /// The stream forwarded writes go to the leader on (see `forward_stream`).
    forward_stream: forward_stream::ForwardStreams,
}

/// Snapshot of what a member knows, for status output.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub state: ServerState,
    pub last_log_index: u64,
    pub committed: u64,
    pub applied: u64,
    /// Log index of the latest snapshot (0: none).
    pub snapshot_index: u64,
    /// Log index up to which the log was purged (0: none).
    pub purged_index: u64,
    pub revision: i64,
    pub members: BTreeMap<u64, Member>,
    pub learners: Vec<u64>,
}

impl NodeStatus {
    /// Whether this member is a learner (a non-voting member).
    pub fn is_learner(&self) -> bool {
        self.state == ServerState::Learner
    }
}

impl Node {
    /// This member's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// This member's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `n` of this member's longest election timeouts: the bounds of waits
    /// for a leader change.
    pub(super) fn elections(&self, n: u64) -> Duration {
        Duration::from_millis(self.config.election_timeout_max_ms.saturating_mul(n))
    }

    /// HTTP/2 limits for the client port (`api::serve`).
    pub fn client_http2(&self) -> Http2Limits {
        self.config.client_http2
    }

    /// URL schemes of the client and peer ports (`https` with TLS).
    pub fn schemes(&self) -> (&'static str, &'static str) {
        (self.config.client_scheme(), self.config.peer_scheme())
    }

    /// The id of the cluster this member belongs to.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The current Raft term as this member knows it.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// The leader this member currently knows of, if any.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// The revision of this member's applied state (0 if unreadable).
    pub fn revision(&self) -> i64 {
        self.sm.read().map(|d| d.kv.revision()).unwrap_or(0)
    }

    /// What this member knows: Raft progress, membership, revision.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let mem = m.membership_config.membership();
        let members: BTreeMap<u64, Member> = mem.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let voters: Vec<u64> = mem.voter_ids().collect();
        let learners = members
            .keys()
            .filter(|id| !voters.contains(id))
            .copied()
            .collect();
        let revision = self.revision();
        NodeStatus {
            id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            state: m.state,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed: m.local_committed.map_or(0, |l| l.index),
            applied: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            revision,
            members,
            learners,
        }
    }

    /// Default deadline for a request that carries none.
    pub fn deadline(&self, client_timeout: Option<Duration>) -> Instant {
        let t = client_timeout.unwrap_or(self.config.request_timeout);
        Instant::now() + t.min(self.config.request_timeout.max(Duration::from_secs(1)) * 6)
    }

    /// On the leader, the last log index each member is known to hold;
    /// `None` on other members (only a leader tracks replication).
    pub fn matched(&self) -> Option<BTreeMap<u64, u64>> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.replication.as_ref().map(|r| {
            r.iter()
                .map(|(id, l)| (*id, l.as_ref().map_or(0, |l| l.index)))
                .collect()
        })
    }

    /// Requests slower than this are logged (`--warning-apply-duration`).
    pub fn slow_request(&self) -> Duration {
        self.config.slow_request
    }

    /// Link state of every peer this member has talked to.
    pub fn peer_links(&self) -> BTreeMap<u64, LinkInfo> {
        self.links.snapshot()
    }

    /// The instruments this member's internals feed.
    pub fn telemetry(&self) -> &telemetry::Telemetry {
        &self.telemetry
    }

    /// Watchers registered on this member.
    pub fn watchers(&self) -> usize {
        self.sm.hub().len()
    }

    /// What the scratch files for superseded values hold (all zero when
    /// the member keeps them on the heap).
    pub fn history_scratch(&self) -> warden_core::storage::cold::ColdStats {
        self.sm.history_scratch()
    }

    /// On the leader: how many log entries each follower's matched index is
    /// behind the leader's last one (empty on other members).
    pub fn replication_lag(&self) -> BTreeMap<u64, u64> {
        let m = self.raft.metrics().borrow_watched().clone();
        let last = m.last_log_index.unwrap_or(0);
        let Some(repl) = m.replication else {
            return BTreeMap::new();
        };
        repl.iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, matched)| {
                let at = matched.as_ref().map_or(0, |l| l.index);
                (*id, last.saturating_sub(at))
            })
            .collect()
    }

    /// This member's storage quota in bytes (`None`: no quota).
    pub fn quota_bytes(&self) -> Option<u64> {
        self.config.quota_backend_bytes
    }

    /// Resolves once the cluster has removed this member, with the reason.
    pub async fn removed(&self) -> String {
        let mut rx = self.removed.subscribe();
        let why = match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => r.clone(),
            Err(_) => None,
        };
        match why {
            Some(w) => w,
            None => std::future::pending().await,
        }
    }

    /// Resolves if this member's Raft core stops on its own (a storage
    /// error: a log write or an apply that failed), with the error. Such a
    /// member can no longer write, vote or learn of new writes, yet it
    /// would go on answering serializable reads from a state that no longer
    /// moves; the server exits instead, as etcd does on a storage error, so
    /// that a supervisor restarts it from its log. Never resolves for a
    /// core stopped as asked ([`Node::shutdown`]).
    ///
    /// Waits on the core's server metrics, which change only with its role,
    /// vote, leader or membership and whose channel closes when the core's
    /// task ends, however it ends; `metrics()` changes with every write,
    /// and this runs on the main thread: watching it cost a thread wake-up
    /// (and a context switch) per write.
    pub async fn raft_failed(&self) -> String {
        let mut server = self.raft.server_metrics();
        while server.changed().await.is_ok() {}
        match &self.raft.metrics().borrow_watched().running_state {
            // Stopped as asked (`Node::shutdown`): not a failure.
            Err(openraft::error::Fatal::Stopped) => {}
            Err(e) => return e.to_string(),
            // Every way out of the core's loop reports why before its task
            // ends; a task that ended without a word panicked.
            Ok(()) => return "the Raft core's task ended without a reason (it panicked)".into(),
        }
        // A core that stopped as asked: whoever stopped it decides what
        // happens next.
        std::future::pending().await
    }

    fn mark_removed(&self, why: String) {
        self.removed.send_replace(Some(why));
    }

    /// Stops Raft (flushes what is in flight).
    pub async fn shutdown(&self) {
        self.failover.set_stopping();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}
