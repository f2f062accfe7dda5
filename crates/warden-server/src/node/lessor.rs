//! The lessor: lease countdowns, kept by the leader only, in memory
//! (etcd's `lessor`).
//!
//! The replicated lease table (`state::lease`) holds no time. The leader
//! holds a deadline per lease on its monotonic clock and turns time into
//! commands:
//! - a lease whose deadline passes is revoked by proposing `LeaseRevoke`
//!   (its keys are deleted in that revision on every member), at most
//!   [`REVOKE_RATE`] per second with at most [`REVOKES_IN_FLIGHT`]
//!   proposals outstanding; a revoke that did not take effect is proposed
//!   again `REVOKE_RETRY` later;
//! - a renewal (`LeaseKeepAlive`) moves the deadline in memory and is
//!   answered at once, with no log entry. Only when the table holds a
//!   checkpointed remaining TTL for the lease (or this leader proposed one)
//!   does the renewal first commit a checkpoint of the full TTL, so that a
//!   new leader does not resume from the stale remainder (etcd issue
//!   13491). That is at most one such entry per lease per checkpoint
//!   interval;
//! - leases whose remaining TTL exceeds the checkpoint interval
//!   (`--lease-checkpoint-interval`, default 5 min) get their remaining
//!   TTL checkpointed once per interval, batched, at most
//!   [`CHECKPOINT_RATE`] per second. Shorter leases are never checkpointed.
//!
//! Expiry is a min-heap of (due time, lease id) with lazy deletion: a renewal
//! pushes a new item and leaves the old one, which is skipped when popped
//! because it no longer matches the lease's due time. A tick costs
//! O(expired · log n) and never takes the state lock: grants and revokes
//! reach the lessor through the [`LeaseFeed`], filled by the apply path.
//!
//! ## Why a change of leader never expires a lease early (SPEC L5)
//!
//! When a member becomes leader it first makes sure it applied everything
//! committed (a ReadIndex: its own blank entry commits every earlier entry
//! of its log, and entries not in its log can never commit), then gives
//! every lease the deadline `now + R + E`, where `R` is the lease's
//! checkpointed remaining time (its full TTL if none) and `E` the maximum
//! election timeout (etcd's `Promote(extend)`). Every promise made to a
//! client is "not before `t + TTL`" for a renewal acknowledged at `t` (or
//! the grant). Take any such promise and the new leader's take-over time
//! `t1`:
//! - if the table's last record for the lease (highest sequence number) is
//!   a full-TTL record or none, `R = TTL` and `t1 + TTL + E > t + TTL` as
//!   long as `t < t1 + E` (below);
//! - if it is a partial record computed at `t0` (`R` = the deadline then
//!   minus `t0`): a renewal acknowledged before `t0` is included in that
//!   deadline, so `t1 + R > t0 + R ≥ t + TTL`. A renewal after `t0` found
//!   the partial record proposed (both happen under the lessor's lock) and
//!   committed a full-TTL record with a higher sequence number before it was
//!   acknowledged, which contradicts "last record is partial" (the table
//!   ignores lower sequence numbers, so the earlier partial record cannot
//!   overwrite it whatever the commit order).
//!
//! The remaining case is an old leader acknowledging a renewal after a new
//! one took over. A renewal is only answered while a quorum acknowledged a
//! message the leader sent at some `q` with `t < q + E` (openraft's
//! `last_quorum_acked` is that send time). The new leader's quorum shares a
//! member with that one, and that member voted for the new leader after it
//! acknowledged the message sent at `q` (once it has voted for a newer
//! leader it refuses the old one's messages), so `q < t1` and `t < q + E <
//! t1 + E`. This uses vote ordering only, not how long followers wait
//! before voting, so it holds with `failover`'s early elections. The
//! extension `E` also covers clients that could not reach a leader during
//! the election to renew.
//!
//! Followers keep no countdowns; they forward renewals and TTL questions to
//! the leader (`Node::lease_renew`, `Node::lease_time_to_live`, defined here
//! with the leader's side of those questions; `Node::min_lease_ttl` is the
//! shortest TTL a grant gets).
//!
//! Must never: acknowledge a renewal while the table may hold a partial
//! checkpoint of the lease that a full one does not supersede; keep
//! countdowns on a member that is not the caught-up leader; do work
//! proportional to all leases per tick.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::types::Request;
use super::{ForwardRequest, ForwardResponse, Node, NodeError};
use warden_core::state::{Command, StateError};

/// Default interval between checkpoints of one lease's remaining TTL
/// (etcd's `--lease-checkpoint-interval` default).
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

/// Leases of at most this many ids go into one checkpoint entry (etcd's
/// `maxLeaseCheckpointBatchSize`).
const CHECKPOINT_BATCH: usize = 1000;

/// Most lease checkpoints recorded per second (etcd's
/// `leaseCheckpointRate`).
pub const CHECKPOINT_RATE: u32 = 1000;

/// Most expired leases whose revoke is proposed per second (etcd's
/// `leaseRevokeRate`).
pub const REVOKE_RATE: u32 = 1000;

/// Most revoke proposals outstanding at once.
pub const REVOKES_IN_FLIGHT: usize = 64;

/// How long an expired lease waits before its revoke is proposed again,
/// if the first proposal did not take effect.
const REVOKE_RETRY: Duration = Duration::from_secs(1);

/// A lease grant or revoke as applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseChange {
    Granted { id: i64, ttl: i64 },
    Revoked(i64),
}

/// Lease grants and revokes in apply order, collected while this member's
/// lessor runs as leader (`None`: not collecting). The apply path pushes
/// under the state's write lock; the lessor drains under its own lock.
/// Lock order: state, then lessor, then feed.
#[derive(Default)]
pub struct LeaseFeed {
    changes: Mutex<Option<Vec<LeaseChange>>>,
}

impl LeaseFeed {
    /// Records what an applied (successful) command did to the lease table.
    pub(super) fn applied(&self, cmd: &Command) {
        let change = match cmd {
            Command::LeaseGrant { id, ttl } => LeaseChange::Granted {
                id: *id,
                ttl: (*ttl).max(1),
            },
            Command::LeaseRevoke { id } => LeaseChange::Revoked(*id),
            _ => return,
        };
        if let Ok(mut c) = self.changes.lock() {
            if let Some(c) = c.as_mut() {
                c.push(change);
            }
        }
    }

    /// Stops collecting (the lessor must read the table afresh).
    pub(super) fn stop(&self) {
        if let Ok(mut c) = self.changes.lock() {
            *c = None;
        }
    }

    fn start(&self) {
        if let Ok(mut c) = self.changes.lock() {
            *c = Some(Vec::new());
        }
    }

    /// The changes since the last drain; `None` if not collecting.
    fn drain(&self) -> Option<Vec<LeaseChange>> {
        self.changes
            .lock()
            .ok()
            .and_then(|mut c| c.as_mut().map(std::mem::take))
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Bucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Tokens available now (whole ones).
    fn available(&mut self, now: Instant) -> usize {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now.max(self.last);
        self.tokens.floor() as usize
    }

    fn take(&mut self, n: usize) {
        self.tokens = (self.tokens - n as f64).max(0.0);
    }
}

/// One lease's countdown.
#[derive(Clone, Debug)]
struct Countdown {
    /// Granted TTL, in seconds.
    ttl: i64,
    deadline: Instant,
    /// When the expiry heap should look at the lease: its deadline, or,
    /// once expired, when to propose the revoke again.
    due: Instant,
    /// Expired, revoke proposed.
    revoking: bool,
    /// Sequence number of the last checkpoint record proposed or seen.
    seq: u64,
    /// Sequence number of the newest partial (less than the TTL)
    /// checkpoint proposed or seen, until a full one supersedes it.
    partial_seq: Option<u64>,
    /// When the next periodic checkpoint is scheduled.
    next_checkpoint: Option<Instant>,
}

impl Countdown {
    fn full_ms(&self) -> i64 {
        self.ttl.saturating_mul(1000)
    }
}

/// What a renewal must do before it is acknowledged.
#[derive(Debug, PartialEq, Eq)]
struct Renewal {
    ttl: i64,
    /// Commit a full-TTL checkpoint with this sequence number first.
    reset: Option<u64>,
}

/// All countdowns of the leader, with the expiry and checkpoint heaps.
/// Pure: every method takes the time.
#[derive(Debug)]
struct Countdowns {
    leases: HashMap<i64, Countdown>,
    expiry: BinaryHeap<Reverse<(Instant, i64)>>,
    checkpoints: BinaryHeap<Reverse<(Instant, i64)>>,
    checkpoint_interval: Duration,
    revokes: Bucket,
    checkpoint_budget: Bucket,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Countdowns {
    fn new(checkpoint_interval: Duration, now: Instant) -> Self {
        Countdowns {
            leases: HashMap::new(),
            expiry: BinaryHeap::new(),
            checkpoints: BinaryHeap::new(),
            checkpoint_interval,
            revokes: Bucket::new(REVOKE_RATE, REVOKE_RATE / 2, now),
            checkpoint_budget: Bucket::new(CHECKPOINT_RATE, CHECKPOINT_RATE / 2, now),
        }
    }

    /// Starts (or restarts) a countdown of `remaining`.
    fn start(
        &mut self,
        id: i64,
        ttl: i64,
        remaining: Duration,
        seq: u64,
        partial: bool,
        now: Instant,
    ) {
        let deadline = now + remaining;
        self.leases.insert(
            id,
            Countdown {
                ttl,
                deadline,
                due: deadline,
                revoking: false,
                seq,
                partial_seq: partial.then_some(seq),
                next_checkpoint: None,
            },
        );
        self.push_expiry(deadline, id);
        self.schedule_checkpoint(id, now);
    }

    fn granted(&mut self, id: i64, ttl: i64, now: Instant) {
        let full = Duration::from_secs(ttl.max(0) as u64);
        self.start(id, ttl, full, 0, false, now);
    }

    fn revoked(&mut self, id: i64) {
        // Heap items of the lease are skipped when popped.
        self.leases.remove(&id);
    }

    fn push_expiry(&mut self, due: Instant, id: i64) {
        self.expiry.push(Reverse((due, id)));
        // Stale items pile up when leases are renewed much more often than
        // they expire; rebuild (amortized O(1) per push) past twice the
        // live count.
        if self.expiry.len() > 2 * self.leases.len() + 1024 {
            self.expiry = self
                .leases
                .iter()
                .map(|(id, c)| Reverse((c.due, *id)))
                .collect();
        }
    }

    fn schedule_checkpoint(&mut self, id: i64, now: Instant) {
        let interval = self.checkpoint_interval;
        let Some(c) = self.leases.get_mut(&id) else {
            return;
        };
        if c.next_checkpoint.is_some() || c.revoking {
            return;
        }
        if c.deadline.saturating_duration_since(now) > interval {
            let at = now + interval;
            c.next_checkpoint = Some(at);
            self.checkpoints.push(Reverse((at, id)));
        }
    }

    /// A renewal: the new deadline is set at once; `Err` for an unknown or
    /// expired lease.
    fn renew(&mut self, id: i64, now: Instant) -> Result<Renewal, StateError> {
        let c = self
            .leases
            .get_mut(&id)
            .filter(|c| !c.revoking)
            .ok_or(StateError::LeaseNotFound)?;
        let deadline = now + Duration::from_secs(c.ttl.max(0) as u64);
        c.deadline = deadline;
        c.due = deadline;
        let ttl = c.ttl;
        let reset = if c.partial_seq.is_some() {
            c.seq += 1;
            Some(c.seq)
        } else {
            None
        };
        self.push_expiry(deadline, id);
        self.schedule_checkpoint(id, now);
        Ok(Renewal { ttl, reset })
    }

    /// A renewal's full-TTL checkpoint `seq` committed.
    fn reset_committed(&mut self, id: i64, seq: u64) {
        if let Some(c) = self.leases.get_mut(&id) {
            if c.partial_seq.is_some_and(|p| p < seq) {
                c.partial_seq = None;
            }
        }
    }

    /// Pops leases due for a revoke (first proposal or retry), at most
    /// `limit`; each is marked revoking and rescheduled for a retry.
    fn expired(&mut self, now: Instant, limit: usize) -> Vec<i64> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(Reverse((due, id))) = self.expiry.peek().copied() else {
                break;
            };
            if due > now {
                break;
            }
            self.expiry.pop();
            let Some(c) = self.leases.get_mut(&id) else {
                continue;
            };
            if c.due != due {
                continue;
            }
            c.revoking = true;
            c.next_checkpoint = None;
            c.due = now + REVOKE_RETRY;
            let retry = c.due;
            self.expiry.push(Reverse((retry, id)));
            out.push(id);
        }
        out
    }

    /// Pops due periodic checkpoints, at most `limit`: `(id, remaining_ms,
    /// seq)` of leases whose countdown moved since their last full TTL.
    fn due_checkpoints(&mut self, now: Instant, limit: usize) -> Vec<(i64, i64, u64)> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(Reverse((at, id))) = self.checkpoints.peek().copied() else {
                break;
            };
            if at > now {
                break;
            }
            self.checkpoints.pop();
            let Some(c) = self.leases.get_mut(&id) else {
                continue;
            };
            if c.next_checkpoint != Some(at) {
                continue;
            }
            c.next_checkpoint = None;
            if c.revoking {
                continue;
            }
            let remaining = ms(c.deadline.saturating_duration_since(now));
            // Just renewed: nothing to record, a new leader uses the TTL.
            if remaining.saturating_add(1000) < c.full_ms() {
                c.seq += 1;
                c.partial_seq = Some(c.seq);
                out.push((id, remaining, c.seq));
            }
            self.schedule_checkpoint(id, now);
        }
        out
    }

    /// Remaining whole seconds, as etcd reports (0 once expired).
    fn remaining_secs(&self, id: i64, now: Instant) -> Option<i64> {
        self.leases.get(&id).map(|c| {
            if c.revoking {
                0
            } else {
                c.deadline.saturating_duration_since(now).as_secs() as i64
            }
        })
    }
}

#[derive(Default)]
struct State {
    /// The term whose leadership the countdowns belong to; `None` when not
    /// leader, or leader but not yet caught up.
    term: Option<u64>,
    countdowns: Option<Countdowns>,
    /// Queue of the revoke worker of this leadership.
    revoke_tx: Option<mpsc::Sender<i64>>,
}

impl State {
    /// Applies the feed's changes; `false` if the feed stopped (a snapshot
    /// replaced the table) and the countdowns must be rebuilt.
    fn catch_up(&mut self, feed: &LeaseFeed, now: Instant) -> bool {
        let Some(cd) = self.countdowns.as_mut() else {
            return false;
        };
        let Some(changes) = feed.drain() else {
            return false;
        };
        for ch in changes {
            match ch {
                LeaseChange::Granted { id, ttl } => cd.granted(id, ttl, now),
                LeaseChange::Revoked(id) => cd.revoked(id),
            }
        }
        true
    }

    fn ready(&mut self, feed: &LeaseFeed, now: Instant) -> Result<&mut Countdowns, LessorError> {
        if self.term.is_none() || !self.catch_up(feed, now) {
            if self.term.is_some() {
                tracing::info!("lessor: lease table replaced, taking over again");
                *self = State::default();
            }
            return Err(LessorError::NotLeader);
        }
        self.countdowns.as_mut().ok_or(LessorError::NotLeader)
    }
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

    /// Renews a lease as the leader: the countdown restarts in memory;
    /// returns its TTL, after committing a full-TTL checkpoint when the
    /// table may hold a partial one.
    pub async fn renew(&self, node: &Node, id: i64) -> Result<i64, LessorError> {
        if !node.quorum_recent() {
            return Err(LessorError::NotLeader);
        }
        let renewal = {
            let mut st = self.lock()?;
            st.ready(node.sm.lease_feed(), Instant::now())?
                .renew(id, Instant::now())
                .map_err(LessorError::State)?
        };
        let Some(seq) = renewal.reset else {
            return Ok(renewal.ttl);
        };
        let cmd = Command::LeaseCheckpoint {
            checkpoints: vec![(id, renewal.ttl.saturating_mul(1000), seq)],
        };
        let deadline = node.deadline(None);
        match node.write_local(Request::kv(cmd), deadline).await {
            Ok(_) => {
                if let Ok(cd) = self.lock()?.ready(node.sm.lease_feed(), Instant::now()) {
                    cd.reset_committed(id, seq);
                }
                Ok(renewal.ttl)
            }
            Err(super::Redirect::Failed(e)) => Err(LessorError::Node(e)),
            Err(_) => Err(LessorError::NotLeader),
        }
    }

    /// Remaining time of a lease, as the leader.
    pub fn time_to_live(&self, node: &Node, id: i64) -> Result<TimeToLive, LessorError> {
        // Only this lease's entry is read under the state lock.
        let (granted, keys) = {
            let d = node
                .sm
                .read()
                .map_err(|e| LessorError::Node(NodeError::Internal(e.to_string())))?;
            let lease =
                d.kv.leases()
                    .get(id)
                    .ok_or(LessorError::State(StateError::LeaseNotFound))?;
            (lease.ttl, lease.keys.iter().cloned().collect())
        };
        let mut st = self.lock()?;
        let now = Instant::now();
        let remaining = st
            .ready(node.sm.lease_feed(), now)?
            .remaining_secs(id, now)
            .ok_or(LessorError::State(StateError::LeaseNotFound))?;
        Ok(TimeToLive {
            id,
            remaining,
            granted,
            keys,
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

    /// How much a new leader extends every lease (etcd's
    /// `Promote(extend)`): the maximum election timeout.
    fn lease_extension(&self) -> Duration {
        Duration::from_millis(self.config.election_timeout_max_ms)
    }

    /// This leader heard from a quorum within the maximum election timeout
    /// (see the module doc); true when it is the only voter (no one else
    /// can be elected) or openraft does not say.
    fn quorum_recent(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        if m.membership_config.membership().voter_ids().count() <= 1 {
            return true;
        }
        let since = m
            .last_quorum_acked
            .as_ref()
            .map(|t| openraft::Instant::elapsed(&**t));
        since.is_none_or(|d| d <= self.lease_extension())
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
                self.forward_streamed(leader, req.clone(), deadline).await?
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
    /// countdown in memory. `Ok(Err(LeaseNotFound))` for an unknown or
    /// expired lease. Returns the TTL.
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

/// The lessor's loop: runs for the life of the member. Wakes every tick,
/// and at once when the member's role or term changes (its server
/// metrics; the full metrics change with every write).
pub async fn run(node: Arc<Node>) {
    let tick = Duration::from_millis(node.config.heartbeat_interval_ms.clamp(10, 500));
    let mut server = node.raft.server_metrics();
    loop {
        if let Ok(Err(_)) = tokio::time::timeout(tick, server.changed()).await {
            // The core's task ended.
            return;
        }
        // From the server metrics themselves: openraft sends them before
        // the full metrics, so those may not have the change that woke us.
        let (state, term) = {
            let m = server.borrow_watched();
            (m.state, m.vote.leader_id().term)
        };
        if state != ServerState::Leader {
            if let Ok(mut st) = node.lessor.state.lock() {
                if st.term.is_some() {
                    tracing::info!("lessor: no longer leader, dropping lease countdowns");
                }
                node.sm.lease_feed().stop();
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
        tick_leader(&node);
    }
}

/// Starts every countdown from its checkpointed remaining time (or TTL)
/// plus the extension; starts collecting the lease feed and the revoke
/// worker. O(n) once per leadership.
fn take_over(node: &Arc<Node>, term: u64) {
    let Ok(d) = node.sm.read() else { return };
    let Ok(mut st) = node.lessor.state.lock() else {
        return;
    };
    let now = Instant::now();
    let extend = node.lease_extension();
    let mut cd = Countdowns::new(node.config.lease_checkpoint_interval, now);
    for l in d.kv.leases().iter() {
        let resume = Duration::from_millis(l.resume_ms().max(0) as u64);
        let partial = l.resume_ms() < l.ttl.saturating_mul(1000);
        cd.start(l.id, l.ttl, resume + extend, l.seq, partial, now);
    }
    node.sm.lease_feed().start();
    drop(d);
    let leases = cd.leases.len();
    let (tx, rx) = mpsc::channel(REVOKE_RATE as usize / 2);
    tokio::spawn(revoke_worker(node.clone(), rx));
    *st = State {
        term: Some(term),
        countdowns: Some(cd),
        revoke_tx: Some(tx),
    };
    tracing::info!(leases, term, "lessor: took over lease countdowns");
}

/// Proposes the revokes it is sent, at most `REVOKES_IN_FLIGHT` at a time;
/// ends with the leadership that started it (its sender dropped).
async fn revoke_worker(node: Arc<Node>, rx: mpsc::Receiver<i64>) {
    tokio_stream::wrappers::ReceiverStream::new(rx)
        .for_each_concurrent(REVOKES_IN_FLIGHT, |id| {
            let node = node.clone();
            async move {
                let deadline = node.deadline(None);
                let cmd = Request::kv(Command::LeaseRevoke { id });
                match node.write_local(cmd, deadline).await {
                    Ok(r) if r.result.is_ok() => node.telemetry.lease_expired(),
                    // Already revoked by its owner: not an expiry.
                    Ok(_) => {}
                    Err(e) => {
                        // Proposed again after REVOKE_RETRY if still there.
                        tracing::debug!(
                            lease = format!("{id:x}"),
                            "revoke of expired lease: {}",
                            e.into_error()
                        );
                    }
                }
            }
        })
        .await;
}

/// One leader tick: take in grants and revokes, queue revokes of expired
/// leases (rate-limited), propose due checkpoints (rate-limited, batched).
fn tick_leader(node: &Arc<Node>) {
    let now = Instant::now();
    let (expired, checkpoints, tx) = {
        let Ok(mut st) = node.lessor.state.lock() else {
            return;
        };
        let tx = st.revoke_tx.clone();
        let Ok(cd) = st.ready(node.sm.lease_feed(), now) else {
            return;
        };
        let room = tx.as_ref().map_or(0, |t| t.capacity());
        let budget = cd.revokes.available(now).min(room);
        let expired = cd.expired(now, budget);
        cd.revokes.take(expired.len());
        let budget = cd.checkpoint_budget.available(now);
        let checkpoints = cd.due_checkpoints(now, budget);
        cd.checkpoint_budget.take(checkpoints.len());
        (expired, checkpoints, tx)
    };
    if let Some(tx) = tx {
        if !expired.is_empty() {
            tracing::info!(count = expired.len(), "leases expired; revoking");
        }
        for id in expired {
            tracing::debug!(lease = format!("{id:x}"), "lease expired; revoking");
            // Room was checked; a full queue only delays to the retry.
            let _ = tx.try_send(id);
        }
    }
    for batch in checkpoints.chunks(CHECKPOINT_BATCH) {
        let node = node.clone();
        let cmd = Request::kv(Command::LeaseCheckpoint {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn expiry_pops_in_deadline_order_and_skips_stale_items() {
        let t0 = Instant::now();
        let mut cd = Countdowns::new(5 * MIN, t0);
        cd.granted(1, 10, t0);
        cd.granted(2, 5, t0);
        cd.granted(3, 20, t0);
        assert!(cd.expired(t0 + secs(4), 100).is_empty());
        // Renewing 2 at 4 s leaves a stale item at 5 s.
        assert_eq!(cd.renew(2, t0 + secs(4)).map(|r| r.ttl), Ok(5));
        assert!(cd.expired(t0 + secs(6), 100).is_empty());
        assert_eq!(cd.expired(t0 + secs(10), 100), vec![2, 1]);
        // Expired leases are not renewable and report 0 s.
        assert_eq!(cd.renew(1, t0 + secs(10)), Err(StateError::LeaseNotFound));
        assert_eq!(cd.remaining_secs(1, t0 + secs(10)), Some(0));
        assert_eq!(cd.remaining_secs(3, t0 + secs(10)), Some(10));
        // Not revoked yet: retried after REVOKE_RETRY, not before.
        assert!(cd.expired(t0 + secs(10) + REVOKE_RETRY / 2, 100).is_empty());
        cd.revoked(2);
        assert_eq!(cd.expired(t0 + secs(10) + REVOKE_RETRY, 100), vec![1]);
        cd.revoked(1);
        cd.revoked(3);
        assert!(cd.expired(t0 + secs(100), 100).is_empty());
        assert!(cd.expiry.is_empty());
    }

    #[test]
    fn expiry_respects_the_limit_and_keeps_the_rest() {
        let t0 = Instant::now();
        let mut cd = Countdowns::new(5 * MIN, t0);
        for id in 1..=10 {
            cd.granted(id, 1, t0);
        }
        let a = cd.expired(t0 + secs(2), 4);
        let b = cd.expired(t0 + secs(2), 100);
        assert_eq!(a.len(), 4);
        assert_eq!(b.len(), 6);
        assert!(a.iter().all(|id| !b.contains(id)));
    }

    #[test]
    fn stale_heap_items_are_compacted() {
        let t0 = Instant::now();
        let mut cd = Countdowns::new(5 * MIN, t0);
        cd.granted(1, 3600, t0);
        for i in 0..10_000u64 {
            cd.renew(1, t0 + Duration::from_millis(i)).ok();
        }
        assert!(cd.expiry.len() <= 2 + 1024 + 1, "{}", cd.expiry.len());
        assert!(cd.expired(t0 + secs(3609), 10).is_empty());
        assert_eq!(cd.expired(t0 + secs(3610), 10), vec![1]);
    }

    #[test]
    fn renewal_resets_only_a_partial_checkpoint() {
        let t0 = Instant::now();
        let mut cd = Countdowns::new(MIN, t0);
        cd.granted(1, 600, t0);
        cd.granted(2, 30, t0);
        // Short leases are never checkpointed; renewals add no entries.
        assert_eq!(cd.renew(2, t0 + secs(1)).map(|r| r.reset), Ok(None));
        assert_eq!(cd.renew(1, t0 + secs(1)).map(|r| r.reset), Ok(None));
        // One interval after the grant the long lease is checkpointed.
        assert!(cd.due_checkpoints(t0 + secs(59), 100).is_empty());
        let cps = cd.due_checkpoints(t0 + secs(60), 100);
        assert_eq!(cps, vec![(1, 541_000, 1)]);
        // The next renewal resets it (seq above the partial record), once.
        assert_eq!(
            cd.renew(1, t0 + secs(62)),
            Ok(Renewal {
                ttl: 600,
                reset: Some(2)
            })
        );
        cd.reset_committed(1, 2);
        assert_eq!(cd.renew(1, t0 + secs(63)).map(|r| r.reset), Ok(None));
        // A checkpoint computed right after a renewal records nothing.
        cd.renew(1, t0 + secs(119)).ok();
        let cps = cd.due_checkpoints(t0 + secs(120), 100);
        assert!(cps.is_empty(), "{cps:?}");
    }

    #[test]
    fn reset_of_an_older_seq_keeps_a_newer_partial() {
        let t0 = Instant::now();
        let mut cd = Countdowns::new(MIN, t0);
        cd.start(1, 600, secs(300), 7, true, t0);
        let r = cd.renew(1, t0).map(|r| r.reset);
        assert_eq!(r, Ok(Some(8)));
        // A periodic checkpoint (seq 9) proposed while the reset is in flight.
        let cps = cd.due_checkpoints(t0 + secs(120), 100);
        assert_eq!(cps.len(), 1);
        cd.reset_committed(1, 8);
        assert_eq!(cd.renew(1, t0 + secs(121)).map(|r| r.reset), Ok(Some(10)));
    }

    #[test]
    fn checkpoints_are_rate_limited_and_resume() {
        let t0 = Instant::now();
        let mut cd = Countdowns::new(MIN, t0);
        for id in 1..=5 {
            cd.granted(id, 600, t0);
        }
        let a = cd.due_checkpoints(t0 + secs(61), 3);
        let b = cd.due_checkpoints(t0 + secs(61), 3);
        assert_eq!((a.len(), b.len()), (3, 2));
    }

    #[test]
    fn bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 500, t0);
        assert_eq!(b.available(t0), 500);
        b.take(500);
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.available(t0 + Duration::from_millis(100)), 100);
        b.take(100);
        assert_eq!(b.available(t0 + secs(10)), 500);
        // Over 10 s at most 500 + 10 × 1000 tokens.
        let mut b = Bucket::new(1000, 500, t0);
        let mut total = 0;
        for i in 0..=100u64 {
            let n = b.available(t0 + Duration::from_millis(100 * i));
            b.take(n);
            total += n;
        }
        assert!((10_400..=10_500).contains(&total), "{total}");
    }

    #[test]
    fn feed_collects_only_while_started() {
        let f = LeaseFeed::default();
        f.applied(&Command::LeaseGrant { id: 1, ttl: 5 });
        assert_eq!(f.drain(), None);
        f.start();
        f.applied(&Command::LeaseGrant { id: 1, ttl: 5 });
        f.applied(&Command::LeaseRevoke { id: 1 });
        assert_eq!(
            f.drain(),
            Some(vec![
                LeaseChange::Granted { id: 1, ttl: 5 },
                LeaseChange::Revoked(1)
            ])
        );
        assert_eq!(f.drain(), Some(vec![]));
        f.stop();
        assert_eq!(f.drain(), None);
    }
}
