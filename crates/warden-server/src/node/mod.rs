//! One member of the cluster: drives openraft (`types`, `log_store`,
//! `state_machine`, `network`, `peer_service`) and offers the API layer three
//! things: `write` (propose a command and wait for its applied result),
//! `linearize` (wait until a read of the local state is linearizable) and
//! `status`.
//!
//! Any member accepts any request. A follower forwards writes to the leader
//! over the peer `Forward` RPC, and for a linearizable read asks the leader for
//! its read index (ReadIndex: the leader confirms with a quorum), then waits
//! until its own state machine has applied that index and reads locally.
//!
//! Must never: answer a linearizable read from a member that has not confirmed
//! a current leader's commit index, or retry a forwarded write whose outcome is
//! unknown (that would apply it twice).

pub mod lessor;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod peer_service;
pub mod state_machine;
pub mod types;
pub mod watch_hub;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ReadPolicy, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::transport::Channel;

use network::{Links, NetworkFactory};
use state_machine::SmStore;
use types::{Member, Raft, Request, Response};
use warden_core::state::StateError;
use warden_proto::peer::raft_peer_client::RaftPeerClient;

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
    /// The request was refused as invalid in the current state (carries
    /// the gRPC code and etcd's message).
    #[error("{message}")]
    Refused { code: i32, message: String },
}

/// Client traffic a follower forwards to the leader.
#[derive(Serialize, Deserialize)]
pub enum ForwardRequest {
    Write(Request),
    ReadIndex,
    /// Renew a lease (the leader keeps lease countdowns).
    LeaseRenew(i64),
    /// Remaining time of a lease.
    LeaseTimeToLive(i64),
    /// A membership change.
    Members(membership::MemberOp),
    /// The membership the receiver has applied (asked by a member that
    /// wonders whether it was removed).
    AppliedMembership,
}

#[derive(Serialize, Deserialize)]
pub enum ForwardResponse {
    /// The applied result and the entry's log index.
    Write(Response, u64),
    ReadIndex(u64),
    /// The receiver is not the leader (any more); here is who it thinks is.
    NotLeader(Option<u64>),
    Failed(NodeError),
    LeaseRenew(Result<i64, StateError>),
    LeaseTimeToLive(Result<lessor::TimeToLive, StateError>),
    MembersDone,
    AppliedMembership(membership::Applied),
}

/// Start-up settings of a member (see `config.rs` for the user-facing form).
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
}

/// A running member.
pub struct Node {
    pub id: u64,
    pub name: String,
    pub cluster_id: u64,
    pub client_addr: String,
    pub raft: Raft,
    pub sm: SmStore,
    pub links: Arc<Links>,
    pub config: NodeConfig,
    pub log_path: PathBuf,
    forward_clients: Mutex<BTreeMap<u64, (String, RaftPeerClient<Channel>)>>,
    pub lessor: lessor::Lessor,
    /// This member joined a running cluster (`--join`) rather than
    /// bootstrapping it.
    pub joined: bool,
    /// Set once the cluster has removed this member (why, in one line).
    removed: tokio::sync::watch::Sender<Option<String>>,
}

/// Cluster id from the initial cluster definition: every member of a cluster
/// computes the same value.
pub fn cluster_id_for(initial: &BTreeMap<String, String>) -> u64 {
    let s: Vec<String> = initial.iter().map(|(n, a)| format!("{n}={a}")).collect();
    types::node_id_for(&s.join(","))
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
    pub revision: i64,
    pub members: BTreeMap<u64, Member>,
    pub learners: Vec<u64>,
}

impl Node {
    /// Opens the member's data directory and starts Raft. The caller serves
    /// the peer service (`peer_service`) on the peer address.
    pub async fn start(cfg: NodeConfig) -> anyhow::Result<Arc<Node>> {
        use anyhow::Context;
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("create data dir {}", cfg.data_dir.display()))?;
        let stored_identity = membership::Identity::load(&cfg.data_dir)?;
        if let Some(membership::Identity {
            removed_at: Some(index),
            ..
        }) = &stored_identity
        {
            anyhow::bail!(
                "member {:?} was removed from the cluster (membership at log index {index}); \
                 to add this server again, empty {} and start it with --join",
                cfg.name,
                cfg.data_dir.display()
            );
        }
        let log_path = cfg.data_dir.join("raft.redb");
        let db = warden_core::storage::log_db::LogDb::open(&log_path)?;
        let records = db.verify()?;
        tracing::info!(log = %log_path.display(), records, "raft log verified");
        let sm = SmStore::open(&cfg.data_dir.join("snap"))?;

        let raft_config = openraft::Config {
            cluster_name: "warden".into(),
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            heartbeat_interval: cfg.heartbeat_interval_ms,
            enable_pre_vote: Some(true),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_entries),
            // Entries kept behind a snapshot for slow followers: at most one
            // snapshot interval, so a short interval really bounds the log.
            max_in_snapshot_log_to_keep: cfg.snapshot_entries.min(1000),
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .context("raft configuration")?;

        let identity = match stored_identity {
            Some(i) if i.name != cfg.name => anyhow::bail!(
                "data dir {} belongs to member {:?}, not {:?}",
                cfg.data_dir.display(),
                i.name,
                cfg.name
            ),
            Some(i) => i,
            None => {
                let i = if cfg.join.is_empty() {
                    membership::Identity {
                        name: cfg.name.clone(),
                        id: types::node_id_for(&cfg.name),
                        cluster_id: cluster_id_for(&cfg.initial_cluster),
                        joined: false,
                        removed_at: None,
                        listed_at: None,
                    }
                } else {
                    join_cluster(&cfg).await?
                };
                i.save(&cfg.data_dir)?;
                i
            }
        };
        let id = identity.id;
        let links = Arc::new(Links::with_routes(cfg.peer_routes.clone()));
        let net = NetworkFactory {
            links: links.clone(),
        };
        let log_store = log_store::LogStore::new(Arc::new(db));
        let raft = openraft::Raft::new(id, Arc::new(raft_config), net, log_store, sm.clone())
            .await
            .context("start raft")?;

        if !identity.joined && !raft.is_initialized().await.context("raft stopped")? {
            let members: BTreeMap<u64, Member> = cfg
                .initial_cluster
                .iter()
                .map(|(name, addr)| {
                    (
                        types::node_id_for(name),
                        Member {
                            name: name.clone(),
                            peer_addr: addr.clone(),
                        },
                    )
                })
                .collect();
            tracing::info!(?members, "bootstrapping new cluster");
            if let Err(e) = raft.initialize(members).await {
                // Another member's identical initialisation may have reached
                // us first; that is fine.
                tracing::info!("initialize: {e}");
            }
        }

        let node = Arc::new(Node {
            id,
            name: cfg.name.clone(),
            cluster_id: identity.cluster_id,
            client_addr: cfg.client_addr.clone(),
            raft,
            sm,
            links,
            log_path,
            config: cfg,
            forward_clients: Mutex::new(BTreeMap::new()),
            lessor: lessor::Lessor::default(),
            joined: identity.joined,
            removed: tokio::sync::watch::channel(None).0,
        });
        tokio::spawn(publish_client_addr(node.clone()));
        tokio::spawn(lessor::run(node.clone()));
        if node.config.auto_promote {
            tokio::spawn(membership::promote_when_ready(node.clone()));
        }
        tokio::spawn(membership::watch_for_removal(node.clone(), identity));
        Ok(node)
    }

    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

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
        let revision = self.sm.read().map(|d| d.kv.revision()).unwrap_or(0);
        NodeStatus {
            id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            state: m.state,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed: m.local_committed.map_or(0, |l| l.index),
            applied: m.last_applied.map_or(0, |l| l.index),
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

    /// Waits (bounded) until a leader other than `old` is known (or none
    /// can be within an election or two).
    pub(crate) async fn wait_leader_other_than(&self, old: u64, deadline: Instant) {
        self.wait_leader_except(Some(old), deadline).await;
    }

    /// Waits (bounded) until some leader is known; `None` at the deadline.
    pub(crate) async fn wait_leader(&self, deadline: Instant) -> Option<u64> {
        self.wait_leader_except(None, deadline).await
    }

    /// Waits up to two election timeouts (or `deadline`) for a leader that is
    /// not `old`.
    async fn wait_leader_except(&self, old: Option<u64>, deadline: Instant) -> Option<u64> {
        let mut rx = self.raft.metrics();
        let wait = Duration::from_millis(self.config.election_timeout_max_ms * 2);
        let until = deadline.min(Instant::now() + wait);
        loop {
            let leader = rx.borrow_and_update().current_leader;
            if let Some(l) = leader.filter(|l| Some(*l) != old) {
                return Some(l);
            }
            if tokio::time::timeout_at(until, rx.changed()).await.is_err() {
                return None;
            }
        }
    }

    /// Proposes `req` and returns its applied result. Forwards to the leader
    /// when this member is not it.
    pub async fn write(&self, req: Request, deadline: Instant) -> Result<Response, NodeError> {
        loop {
            match self.write_local(req.clone(), deadline).await {
                Ok(r) => return Ok(r),
                Err(Redirect::Leader(l)) if l != self.id => {
                    return self.forward_write(l, req, deadline).await
                }
                Err(Redirect::Leader(_)) | Err(Redirect::Unknown) => {
                    if Instant::now() >= deadline {
                        return Err(NodeError::Timeout);
                    }
                    match self.wait_leader(deadline).await {
                        None => return Err(NodeError::NoLeader),
                        Some(l) if l != self.id => {
                            return self.forward_write(l, req, deadline).await
                        }
                        Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err(Redirect::Failed(e)) => return Err(e),
            }
        }
    }

    /// Proposes on this member only.
    pub(crate) async fn write_local(
        &self,
        req: Request,
        deadline: Instant,
    ) -> Result<Response, Redirect> {
        self.write_local_at(req, deadline).await.map(|(r, _)| r)
    }

    /// Proposes on this member only; also returns the entry's log index.
    async fn write_local_at(
        &self,
        req: Request,
        deadline: Instant,
    ) -> Result<(Response, u64), Redirect> {
        match tokio::time::timeout_at(deadline, self.raft.client_write(req)).await {
            Err(_) => Err(Redirect::Failed(NodeError::Timeout)),
            Ok(Ok(r)) => Ok((r.data, r.log_id.index)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(f.leader_id.map_or(Redirect::Unknown, Redirect::Leader))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
                Err(Redirect::Failed(NodeError::LeaderChanged))
            }
            Ok(Err(RaftError::APIError(e))) => {
                Err(Redirect::Failed(NodeError::Internal(e.to_string())))
            }
            Ok(Err(RaftError::Fatal(_))) => Err(Redirect::Failed(NodeError::Stopped)),
        }
    }

    fn forward_client(&self, leader: u64) -> Result<RaftPeerClient<Channel>, NodeError> {
        let addr = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|m| m.peer_addr.clone())
            .ok_or(NodeError::NoLeader)?;
        let mut cache = self
            .forward_clients
            .lock()
            .map_err(|_| NodeError::Internal("forward client cache poisoned".into()))?;
        if let Some((a, c)) = cache.get(&leader) {
            if *a == addr {
                return Ok(c.clone());
            }
        }
        let c = network::peer_client(&self.links.route(&addr)).map_err(NodeError::Internal)?;
        cache.insert(leader, (addr, c.clone()));
        Ok(c)
    }

    /// Sends one request to a peer's Forward endpoint: the decoded answer,
    /// or the gRPC status of a failed call.
    pub(crate) async fn call_peer(
        &self,
        peer: u64,
        req: &ForwardRequest,
        deadline: Instant,
    ) -> Result<Result<ForwardResponse, tonic::Status>, NodeError> {
        let mut client = self.forward_client(peer)?;
        let mut r = tonic::Request::new(network::encode(req).map_err(NodeError::Internal)?);
        r.set_timeout(deadline.saturating_duration_since(Instant::now()));
        match client.forward(r).await {
            Ok(resp) => network::decode(resp.get_ref())
                .map(Ok)
                .map_err(NodeError::Internal),
            Err(s) => Ok(Err(s)),
        }
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

    pub(crate) fn mark_removed(&self, why: String) {
        self.removed.send_replace(Some(why));
    }

    pub(crate) async fn forward(
        &self,
        leader: u64,
        req: &ForwardRequest,
        deadline: Instant,
    ) -> Result<ForwardResponse, NodeError> {
        match self.call_peer(leader, req, deadline).await? {
            Ok(resp) => Ok(resp),
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => Err(NodeError::Timeout),
            // The connection could not even be made: the request was never
            // delivered, so it is safe to find the new leader and retry.
            Err(s) if not_delivered(&s) => {
                tracing::debug!("forward to {leader:x} not delivered: {s}");
                self.wait_leader_other_than(leader, deadline).await;
                Ok(ForwardResponse::NotLeader(None))
            }
            Err(s) => {
                tracing::debug!("forward to {leader:x}: {s}");
                Err(NodeError::LeaderChanged)
            }
        }
    }

    async fn forward_write(
        &self,
        leader: u64,
        req: Request,
        deadline: Instant,
    ) -> Result<Response, NodeError> {
        let mut leader = leader;
        for _ in 0..3 {
            match self
                .forward(leader, &ForwardRequest::Write(req.clone()), deadline)
                .await?
            {
                ForwardResponse::Write(r, index) => {
                    // Read-your-writes on this member, as etcd gives: answer
                    // once the entry is applied here too. The write is
                    // committed either way, so a member slow to apply it
                    // still reports success after a bounded wait.
                    let wait = deadline.min(Instant::now() + Duration::from_secs(1));
                    if self.wait_applied(index, wait).await.is_err() {
                        tracing::debug!(index, "answering a forwarded write before applying it");
                    }
                    return Ok(r);
                }
                // The receiver refused before proposing: safe to try again.
                ForwardResponse::NotLeader(Some(l)) if l != leader => leader = l,
                ForwardResponse::NotLeader(_) => match self.wait_leader(deadline).await {
                    Some(l) if l != self.id => leader = l,
                    Some(_) => {
                        return self
                            .write_local(req, deadline)
                            .await
                            .map_err(Redirect::into_error)
                    }
                    None => return Err(NodeError::NoLeader),
                },
                ForwardResponse::Failed(e) => return Err(e),
                _ => return Err(NodeError::Internal("unexpected forward answer".into())),
            }
        }
        Err(NodeError::NoLeader)
    }

    /// Serves a forwarded request as the leader.
    pub async fn handle_forward(&self, req: ForwardRequest, deadline: Instant) -> ForwardResponse {
        match req {
            ForwardRequest::Write(r) => match self.write_local_at(r, deadline).await {
                Ok((resp, index)) => ForwardResponse::Write(resp, index),
                Err(Redirect::Leader(l)) => ForwardResponse::NotLeader(Some(l)),
                Err(Redirect::Unknown) => ForwardResponse::NotLeader(None),
                Err(Redirect::Failed(e)) => ForwardResponse::Failed(e),
            },
            ForwardRequest::ReadIndex => {
                let fut = self.raft.get_read_log_id(ReadPolicy::ReadIndex);
                match tokio::time::timeout_at(deadline, fut).await {
                    Err(_) => ForwardResponse::Failed(NodeError::Timeout),
                    Ok(Ok((read, _applied))) => ForwardResponse::ReadIndex(read.index()),
                    Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                        ForwardResponse::NotLeader(f.leader_id)
                    }
                    Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)))) => {
                        ForwardResponse::Failed(NodeError::NoLeader)
                    }
                    Ok(Err(RaftError::Fatal(_))) => ForwardResponse::Failed(NodeError::Stopped),
                }
            }
            ForwardRequest::Members(op) => self.handle_members(op, deadline).await,
            ForwardRequest::AppliedMembership => match membership::applied(self) {
                Some(a) => ForwardResponse::AppliedMembership(a),
                None => ForwardResponse::Failed(NodeError::Stopped),
            },
            req @ (ForwardRequest::LeaseRenew(_) | ForwardRequest::LeaseTimeToLive(_)) => {
                self.lessor_local(&req).await
            }
        }
    }

    /// Answers a lessor question as this member (the leader's lessor, or
    /// `NotLeader`).
    async fn lessor_local(&self, req: &ForwardRequest) -> ForwardResponse {
        let answer = match req {
            ForwardRequest::LeaseRenew(id) => self
                .lessor
                .renew(self, *id)
                .await
                .map(|t| ForwardResponse::LeaseRenew(Ok(t))),
            ForwardRequest::LeaseTimeToLive(id) => self
                .lessor
                .time_to_live(self, *id)
                .map(|t| ForwardResponse::LeaseTimeToLive(Ok(t))),
            _ => {
                return ForwardResponse::Failed(NodeError::Internal("not a lessor request".into()))
            }
        };
        answer.unwrap_or_else(|e| self.lessor_answer(e))
    }

    fn lessor_answer(&self, e: lessor::LessorError) -> ForwardResponse {
        match e {
            lessor::LessorError::NotLeader => {
                ForwardResponse::NotLeader(self.leader().filter(|l| *l != self.id))
            }
            lessor::LessorError::State(e) => match e {
                e @ StateError::LeaseNotFound => ForwardResponse::LeaseRenew(Err(e)),
                e => ForwardResponse::Failed(NodeError::Internal(e.to_string())),
            },
            lessor::LessorError::Node(e) => ForwardResponse::Failed(e),
        }
    }

    /// Sends a lessor question to whoever leads (this member included) and
    /// returns the answer; follows redirects a few times.
    async fn ask_lessor(
        &self,
        req: ForwardRequest,
        deadline: Instant,
    ) -> Result<ForwardResponse, NodeError> {
        for _ in 0..5 {
            let leader = match self.leader() {
                Some(l) => l,
                None => self
                    .wait_leader(deadline)
                    .await
                    .ok_or(NodeError::NoLeader)?,
            };
            let answer = if leader == self.id {
                self.lessor_local(&req).await
            } else {
                self.forward(leader, &req, deadline).await?
            };
            match answer {
                ForwardResponse::NotLeader(_) => {
                    // A new leader, or one still taking over its leases.
                    if Instant::now() >= deadline {
                        return Err(NodeError::Timeout);
                    }
                    tokio::time::sleep(Duration::from_millis(
                        self.config.heartbeat_interval_ms.max(10),
                    ))
                    .await;
                }
                ForwardResponse::Failed(e) => return Err(e),
                other => return Ok(other),
            }
        }
        Err(NodeError::NoLeader)
    }

    /// Renews a lease (etcd `LeaseKeepAlive`): the leader restarts its
    /// countdown and records the renewal durably. `Ok(Err(LeaseNotFound))`
    /// for an unknown or expired lease. Returns the TTL.
    pub async fn lease_renew(
        &self,
        id: i64,
        deadline: Instant,
    ) -> Result<Result<i64, StateError>, NodeError> {
        match self
            .ask_lessor(ForwardRequest::LeaseRenew(id), deadline)
            .await?
        {
            ForwardResponse::LeaseRenew(r) => Ok(r),
            _ => Err(NodeError::Internal("unexpected lessor answer".into())),
        }
    }

    /// A lease's remaining and granted TTL and keys, from the leader.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        deadline: Instant,
    ) -> Result<Result<lessor::TimeToLive, StateError>, NodeError> {
        match self
            .ask_lessor(ForwardRequest::LeaseTimeToLive(id), deadline)
            .await?
        {
            ForwardResponse::LeaseTimeToLive(r) => Ok(r),
            // The lessor reports a missing lease the same way for both.
            ForwardResponse::LeaseRenew(Err(e)) => Ok(Err(e)),
            _ => Err(NodeError::Internal("unexpected lessor answer".into())),
        }
    }

    /// Returns once a read of the local state machine is linearizable: the
    /// leader confirmed its leadership with a quorum and this member applied
    /// at least the leader's commit index at that moment.
    pub async fn linearize(&self, deadline: Instant) -> Result<(), NodeError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let fut = self.raft.ensure_linearizable(ReadPolicy::ReadIndex);
            let leader = match tokio::time::timeout_at(deadline, fut).await {
                Err(_) => return Err(NodeError::Timeout),
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                    f.leader_id
                }
                Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)))) => {
                    return Err(NodeError::NoLeader)
                }
                Ok(Err(RaftError::Fatal(_))) => return Err(NodeError::Stopped),
            };
            let leader = match leader {
                Some(l) if l != self.id => l,
                _ => match self.wait_leader(deadline).await {
                    Some(l) if l != self.id => l,
                    Some(_) if tries < 3 => continue,
                    _ => return Err(NodeError::NoLeader),
                },
            };
            match self
                .forward(leader, &ForwardRequest::ReadIndex, deadline)
                .await?
            {
                ForwardResponse::ReadIndex(idx) => return self.wait_applied(idx, deadline).await,
                ForwardResponse::NotLeader(_) if tries < 3 => {
                    self.wait_leader(deadline).await;
                }
                ForwardResponse::Failed(e) => return Err(e),
                _ => return Err(NodeError::NoLeader),
            }
        }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), NodeError> {
        let mut rx = self.sm.applied();
        loop {
            if *rx.borrow_and_update() >= index {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Err(_) => return Err(NodeError::Timeout),
                Ok(Err(_)) => return Err(NodeError::Stopped),
                Ok(Ok(())) => {}
            }
        }
    }

    /// Stops Raft (flushes what is in flight).
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}

/// Whether a failed peer call never reached the peer (connect refused or
/// timed out), as opposed to failing after the request may have been sent.
///
/// Decided by the error types in the status's source chain: an I/O error
/// decides by its kind; a chain without one decides by whether tonic reports
/// the failure as happening while connecting (`tonic::ConnectError`).
fn not_delivered(s: &tonic::Status) -> bool {
    use std::error::Error;
    if s.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut connecting = false;
    let mut src: Option<&(dyn Error + 'static)> = s.source();
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
            );
        }
        connecting |= e.is::<tonic::ConnectError>();
        src = e.source();
    }
    connecting
}

pub(crate) enum Redirect {
    Leader(u64),
    Unknown,
    Failed(NodeError),
}

impl Redirect {
    pub(crate) fn into_error(self) -> NodeError {
        match self {
            Redirect::Leader(_) | Redirect::Unknown => NodeError::NoLeader,
            Redirect::Failed(e) => e,
        }
    }
}

/// Adds this member to a running cluster as a learner (etcd `MemberAdd`
/// through any of `cfg.join`) and returns its identity. Asking again after
/// a crash finds the member already added and reuses its id.
async fn join_cluster(cfg: &NodeConfig) -> anyhow::Result<membership::Identity> {
    use warden_client::{Client, ClientOptions, OpKind};
    use warden_proto::etcdserverpb::{cluster_client::ClusterClient, MemberAddRequest};
    let client = Client::connect(&cfg.join, ClientOptions::default()).await?;
    let peer_url = format!("http://{}", cfg.peer_addr);
    // The cluster may be electing a leader: keep asking for a while.
    let give_up = Instant::now() + Duration::from_secs(30);
    let added = loop {
        let url = peer_url.clone();
        let r = client
            .request(OpKind::Write, move |ch, _| {
                let url = url.clone();
                async move {
                    ClusterClient::new(ch)
                        .member_add(MemberAddRequest {
                            peer_urls: vec![url],
                            is_learner: true,
                        })
                        .await
                }
            })
            .await;
        match r {
            Err(warden_client::ClientError::Unavailable { .. })
            | Err(warden_client::ClientError::DeadlineExceeded { .. })
                if Instant::now() < give_up =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => break other,
        }
    };
    let id = membership::id_for_peer(&cfg.peer_addr);
    let cluster_id = match added {
        Ok(r) => r.header.map_or(0, |h| h.cluster_id),
        // Refused as a duplicate (etcd's "Peer URLs already exists" and
        // "member ID already exist" are both FailedPrecondition): the
        // member list tells whether it is this member, added before a crash.
        Err(e) if e.code() == tonic::Code::FailedPrecondition => {
            let list = client.member_list(true).await?;
            let holder = list
                .members
                .iter()
                .find(|m| m.peer_urls.contains(&peer_url))
                .map(|m| m.id);
            match holder {
                Some(h) if h == id => list.header.map_or(0, |h| h.cluster_id),
                Some(_) => anyhow::bail!(
                    "cannot join: peer address {} is taken by another member",
                    cfg.peer_addr
                ),
                None => {
                    return Err(anyhow::anyhow!(e)
                        .context(format!("joining the cluster at {}", cfg.join.join(","))))
                }
            }
        }
        Err(e) => {
            return Err(anyhow::anyhow!(e)
                .context(format!("joining the cluster at {}", cfg.join.join(","))))
        }
    };
    tracing::info!(id = %format!("{id:x}"), "joined the cluster as a learner");
    Ok(membership::Identity {
        name: cfg.name.clone(),
        id,
        cluster_id,
        joined: true,
        removed_at: None,
        listed_at: None,
    })
}

/// Publishes this member's client address into the replicated state until it
/// is there (as etcd publishes member attributes after start).
async fn publish_client_addr(node: Arc<Node>) {
    let mut backoff = network::schedule(warden_client::backoff::Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(2),
    });
    loop {
        let present = node
            .sm
            .read()
            .map(|d| {
                d.client_addrs.get(&node.id) == Some(&node.client_addr)
                    && d.names.get(&node.id) == Some(&node.name)
            })
            .unwrap_or(false);
        if present {
            return;
        }
        let req = Request::Publish {
            node_id: node.id,
            name: node.name.clone(),
            client_addr: node.client_addr.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        match node.write(req, deadline).await {
            Ok(_) | Err(NodeError::Stopped) => return,
            Err(e) => tracing::debug!("publishing client address: {e}"),
        }
        if let Some(d) = backoff.next() {
            tokio::time::sleep(d).await;
        }
    }
}
