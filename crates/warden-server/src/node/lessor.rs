//! The lessor: lease countdowns, kept by the leader only, in memory.
//!
//! The replicated lease table (`state::lease`) holds no time. The leader
//! holds a deadline per lease on its monotonic clock and turns time into
//! commands:
//! - a lease whose deadline passes is revoked by proposing `LeaseRevoke`
//!   (its keys are deleted in that revision on every member);
//! - a renewal (`LeaseKeepAlive`) moves the deadline and is made durable by
//!   proposing a `LeaseCheckpoint` of the full TTL before it is acknowledged;
//! - every `CHECKPOINT_INTERVAL` the remaining TTLs are checkpointed.
//!
//! When a member becomes leader it first makes sure it applied everything
//! committed (a ReadIndex), then starts each countdown from the lease's
//! checkpointed remaining time (or its TTL if never checkpointed). Because
//! every acknowledged renewal was checkpointed, a failover can only lengthen
//! a lease (by the time between the checkpoint and the new leader taking
//! over), never shorten it: no lease expires early because the leader changed.
//!
//! Followers keep no countdowns; they forward renewals and TTL questions to
//! the leader (`Node::lease_renew`, `Node::lease_time_to_live`, defined here
//! with the leader's side of those questions; `Node::min_lease_ttl` is the
//! shortest TTL a grant gets).
//!
//! Must never: acknowledge a renewal before its checkpoint is applied, or
//! keep countdowns on a member that is not the caught-up leader.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tokio::time::Instant;

use super::types::Request;
use super::{ForwardRequest, ForwardResponse, Node, NodeError};
use warden_core::state::{Command, StateError};

/// How often remaining TTLs are recorded in the log.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// Leases of at most this many ids go into one checkpoint entry.
const CHECKPOINT_BATCH: usize = 1000;

/// How long an expired lease waits before its revoke is proposed again,
/// if the first proposal did not take effect.
const REVOKE_RETRY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    /// The term whose leadership the deadlines belong to; `None` when not
    /// leader, or leader but not yet caught up.
    term: Option<u64>,
    deadlines: BTreeMap<i64, Instant>,
    /// Sequence number of the last record proposed per lease.
    seqs: BTreeMap<i64, u64>,
    /// Expired leases whose revoke was proposed, and when.
    revoking: BTreeMap<i64, Instant>,
    last_checkpoint: Option<Instant>,
}

/// Why a renewal or TTL question could not be answered here.
#[derive(Debug)]
pub enum LessorError {
    /// This member is not the leader (or not ready as leader yet).
    NotLeader,
    /// The lease does not exist.
    State(StateError),
    /// Proposing the renewal checkpoint failed.
    Node(NodeError),
}

/// What `LeaseTimeToLive` answers.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TimeToLive {
    pub id: i64,
    /// Remaining seconds (rounded down), as etcd reports.
    pub remaining: i64,
    pub granted: i64,
    pub keys: Vec<Vec<u8>>,
}

#[derive(Default)]
pub struct Lessor {
    state: Mutex<State>,
}

impl Lessor {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, LessorError> {
        self.state
            .lock()
            .map_err(|_| LessorError::Node(NodeError::Internal("lessor lock poisoned".into())))
    }

    /// Renews a lease as the leader; returns its TTL once the renewal is
    /// durable.
    pub async fn renew(&self, node: &Node, id: i64) -> Result<i64, LessorError> {
        let ttl = {
            let ttl = node
                .sm
                .read()
                .map_err(|e| LessorError::Node(NodeError::Internal(e.to_string())))?
                .kv
                .leases()
                .get(id)
                .map(|l| l.ttl);
            let mut st = self.lock()?;
            if st.term.is_none() {
                return Err(LessorError::NotLeader);
            }
            let Some(ttl) = ttl else {
                return Err(LessorError::State(StateError::LeaseNotFound));
            };
            if st.revoking.contains_key(&id) {
                // Already expired: etcd answers a renewal of an expired
                // lease with "not found".
                return Err(LessorError::State(StateError::LeaseNotFound));
            }
            st.deadlines
                .insert(id, Instant::now() + Duration::from_secs(ttl.max(0) as u64));
            let seq = st.seqs.entry(id).or_insert(0);
            *seq += 1;
            (ttl, *seq)
        };
        let (ttl, seq) = ttl;
        let cmd = Command::LeaseCheckpoint {
            checkpoints: vec![(id, ttl.saturating_mul(1000), seq)],
        };
        let deadline = node.deadline(None);
        match node.write_local(Request::Kv(cmd), deadline).await {
            Ok(_) => Ok(ttl),
            Err(super::Redirect::Failed(e)) => Err(LessorError::Node(e)),
            Err(_) => Err(LessorError::NotLeader),
        }
    }

    /// Remaining time of a lease, as the leader.
    pub fn time_to_live(&self, node: &Node, id: i64) -> Result<TimeToLive, LessorError> {
        let d = node
            .sm
            .read()
            .map_err(|e| LessorError::Node(NodeError::Internal(e.to_string())))?;
        let st = self.lock()?;
        if st.term.is_none() {
            return Err(LessorError::NotLeader);
        }
        let lease =
            d.kv.leases()
                .get(id)
                .ok_or(LessorError::State(StateError::LeaseNotFound))?;
        let remaining = st.deadlines.get(&id).map_or(lease.ttl, |dl| {
            dl.saturating_duration_since(Instant::now()).as_secs() as i64
        });
        Ok(TimeToLive {
            id,
            remaining,
            granted: lease.ttl,
            keys: lease.keys.iter().cloned().collect(),
        })
    }
}

impl Node {
    /// etcd's minimum lease TTL in seconds: 1.5 election timeouts, rounded
    /// up, so a lease cannot expire during a normal election.
    pub fn min_lease_ttl(&self) -> i64 {
        let ms = self.config.election_timeout_min_ms.saturating_mul(3) / 2;
        ms.div_ceil(1000).max(1) as i64
    }

    /// Answers a lessor question as this member (the leader's lessor, or
    /// `NotLeader`).
    pub(super) async fn lessor_local(&self, req: &ForwardRequest) -> ForwardResponse {
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

    fn lessor_answer(&self, e: LessorError) -> ForwardResponse {
        match e {
            LessorError::NotLeader => {
                ForwardResponse::NotLeader(self.leader().filter(|l| *l != self.id))
            }
            LessorError::State(e) => match e {
                e @ StateError::LeaseNotFound => ForwardResponse::LeaseRenew(Err(e)),
                e => ForwardResponse::Failed(NodeError::Internal(e.to_string())),
            },
            LessorError::Node(e) => ForwardResponse::Failed(e),
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
            let leader = self.leader_or_wait(deadline).await?;
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
    ) -> Result<Result<TimeToLive, StateError>, NodeError> {
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
}

/// The lessor's loop: runs for the life of the member.
pub async fn run(node: Arc<Node>) {
    let tick = Duration::from_millis(node.config.heartbeat_interval_ms.clamp(10, 500));
    let mut metrics = node.raft.metrics();
    loop {
        let _ = tokio::time::timeout(tick, metrics.changed()).await;
        let (state, term) = {
            let m = metrics.borrow_watched();
            (m.state, m.current_term)
        };
        if state == ServerState::Shutdown {
            return;
        }
        if state != ServerState::Leader {
            if let Ok(mut st) = node.lessor.state.lock() {
                if st.term.is_some() {
                    tracing::info!("lessor: no longer leader, dropping lease countdowns");
                }
                *st = State::default();
            }
            continue;
        }
        let ready = node
            .lessor
            .state
            .lock()
            .is_ok_and(|st| st.term == Some(term));
        if !ready {
            // Apply everything committed before reading the lease table.
            let deadline = Instant::now() + Duration::from_secs(2);
            if let Err(e) = node.linearize(deadline).await {
                tracing::debug!("lessor: waiting to take over leases: {e}");
                continue;
            }
            take_over(&node, term);
        }
        tick_leader(&node).await;
    }
}

/// Starts every countdown from its checkpointed remaining time.
fn take_over(node: &Node, term: u64) {
    let Ok(d) = node.sm.read() else { return };
    let Ok(mut st) = node.lessor.state.lock() else {
        return;
    };
    let now = Instant::now();
    st.deadlines =
        d.kv.leases()
            .iter()
            .map(|l| {
                (
                    l.id,
                    now + Duration::from_millis(l.resume_ms().max(0) as u64),
                )
            })
            .collect();
    st.seqs = d.kv.leases().iter().map(|l| (l.id, l.seq)).collect();
    st.revoking.clear();
    st.term = Some(term);
    st.last_checkpoint = Some(now);
    tracing::info!(
        leases = st.deadlines.len(),
        term,
        "lessor: took over lease countdowns"
    );
}

/// One leader tick: pick up new leases, forget revoked ones, revoke expired
/// ones, checkpoint when due.
async fn tick_leader(node: &Arc<Node>) {
    let now = Instant::now();
    let (expired, checkpoints) = {
        let Ok(d) = node.sm.read() else { return };
        let Ok(mut st) = node.lessor.state.lock() else {
            return;
        };
        let table = d.kv.leases();
        st.deadlines.retain(|id, _| table.get(*id).is_some());
        st.seqs.retain(|id, _| table.get(*id).is_some());
        st.revoking.retain(|id, _| table.get(*id).is_some());
        for l in table.iter() {
            if let std::collections::btree_map::Entry::Vacant(v) = st.deadlines.entry(l.id) {
                v.insert(now + Duration::from_millis(l.resume_ms().max(0) as u64));
                st.seqs.insert(l.id, l.seq);
            }
        }
        let mut expired = Vec::new();
        let due: Vec<i64> = st
            .deadlines
            .iter()
            .filter(|(_, dl)| **dl <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let retry = st
                .revoking
                .get(&id)
                .is_none_or(|at| now.duration_since(*at) >= REVOKE_RETRY);
            if retry {
                st.revoking.insert(id, now);
                expired.push(id);
            }
        }
        let checkpoint_due = st
            .last_checkpoint
            .is_none_or(|t| now.duration_since(t) >= CHECKPOINT_INTERVAL);
        let mut checkpoints = Vec::new();
        if checkpoint_due {
            st.last_checkpoint = Some(now);
            let st = &mut *st;
            for (id, dl) in &st.deadlines {
                let remaining = dl.saturating_duration_since(now).as_millis() as i64;
                let recorded = table.get(*id).map(|l| l.resume_ms());
                // Only leases whose countdown moved since the last record.
                if recorded.is_some_and(|r| r > remaining) && !st.revoking.contains_key(id) {
                    let seq = st.seqs.entry(*id).or_insert(0);
                    *seq += 1;
                    checkpoints.push((*id, remaining, *seq));
                }
            }
        }
        (expired, checkpoints)
    };
    for id in expired {
        tracing::info!(lease = format!("{id:x}"), "lease expired; revoking");
        let node = node.clone();
        tokio::spawn(async move {
            let deadline = node.deadline(None);
            let cmd = Request::Kv(Command::LeaseRevoke { id });
            if let Err(e) = node.write_local(cmd, deadline).await {
                tracing::debug!(
                    lease = format!("{id:x}"),
                    "revoke of expired lease: {}",
                    e.into_error()
                );
            }
        });
    }
    for batch in checkpoints.chunks(CHECKPOINT_BATCH) {
        let node = node.clone();
        let cmd = Request::Kv(Command::LeaseCheckpoint {
            checkpoints: batch.to_vec(),
        });
        tokio::spawn(async move {
            let deadline = node.deadline(None);
            if let Err(e) = node.write_local(cmd, deadline).await {
                tracing::debug!("lease checkpoint: {}", e.into_error());
            }
        });
    }
}
