//! Fail-over speed-ups on top of openraft's timers, run by `run` on every
//! member (one task, one tick per heartbeat interval):
//!
//! - **Dead leader** — a follower that stops hearing from its leader for two
//!   heartbeats, or whose replication stream from it breaks, dials the
//!   leader's peer port. Only a refused connection counts (the process is
//!   gone: kill -9, crash): the follower then gives up its own leader lease
//!   and campaigns at once, PreVote first, again every tick (with jitter)
//!   for at most one maximum election timeout or until it hears from a
//!   leader. A SIGSTOP'd, slow or partitioned leader still accepts (or
//!   black-holes) connections and is left to the timers below.
//! - **Silent leader** — a follower that has not heard from its leader for
//!   `--election-timeout-min-ms` gives up its leader lease, so it grants
//!   votes as etcd's followers do (etcd refuses votes only within one
//!   election timeout of hearing from the leader). openraft alone would
//!   refuse them for a further `--election-timeout-max-ms`; its election
//!   timer still decides when this member campaigns. Hearing from the
//!   leader again restores the lease (openraft renews it on every append).
//! - **CheckQuorum** — a leader that has not had a quorum acknowledge it for
//!   `--election-timeout-max-ms` steps down (openraft would keep leading,
//!   only refusing new proposals). By then every follower that heard from
//!   it last may vote for another (they give up their lease after the
//!   minimum); waiting for the maximum rather than the minimum keeps a
//!   leader on a starved machine, whose acknowledgements are merely late,
//!   from stepping down for nothing. It steps down as follows: it records a vote for no member in the
//!   next term, which makes it a follower with no leader. It then answers
//!   every request with `etcdserver: no leader` at once (`cut_off`), and the
//!   writes it was waiting on fail with `etcdserver: leader changed` (their
//!   outcome is unknown), until it hears from a leader again.
//!
//! ## Why this is safe
//!
//! Nothing here decides who leads: an election is only ever *triggered*
//! (openraft's `trigger().elect(true)`, PreVote first), and votes are still
//! one per leader id, persisted, and granted only to a candidate whose log
//! is at least as up to date. A follower's leader lease only decides
//! whether it grants a vote while it still hears from a leader; giving it
//! up early can cost an election (liveness), never a committed entry. A
//! follower that wrongly believes the leader dead (a firewall rejecting its
//! connections to a live leader) cannot depose it: a PreVote needs a
//! quorum, every quorum contains a member that still hears from a leader a
//! quorum acknowledges, and that member refuses while its lease holds.
//!
//! What the early give-up does change is openraft's leader-lease promise
//! ("no other leader within `election_timeout_max` of a quorum ack"):
//! followers may now vote `election_timeout_min` after the last message
//! they got, or at once after a refused probe. So:
//! - linearizable reads must use ReadIndex (a quorum acknowledges a message
//!   sent after the read arrived), never `ReadPolicy::LeaseRead`; `reads`
//!   and `forward` use `ReadPolicy::ReadIndex` only;
//! - the lessor's renewals rely only on "a member that acknowledged the
//!   leader's message sent at `q` votes for another leader after `q`",
//!   which holds whatever the lease does (see `lessor`).
//!
//! The step-down vote is for member 0 (no member: ids are never 0) in the
//! next term; openraft orders leader ids by (term, member id), so this
//! member can still vote for any real candidate of that term.
//!
//! Must never: campaign without PreVote, give up the lease on a guess (a
//! refused connection to the leader, or a full election timeout of
//! silence), step down a leader that a quorum still acknowledges, or serve
//! reads from a leader lease.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::raft::{TransferLeaderRequest, VoteRequest};
use openraft::ServerState;
use tokio::time::Instant;

use super::types::Vote;
use super::Node;

/// What the peer service tells the fail-over task, and what that task
/// publishes for the request paths.
pub struct Failover {
    /// Last replication message received from each sender.
    contact: Mutex<BTreeMap<u64, Instant>>,
    /// Wakes the task at once when a replication stream from a peer broke.
    broken: tokio::sync::Notify,
    /// Senders whose replication stream broke since the task last looked.
    broken_from: Mutex<Vec<u64>>,
    /// Set while this member stepped down for lack of a quorum and has not
    /// heard from a leader since: requests fail at once.
    cut_off: tokio::sync::watch::Sender<bool>,
    /// Set when this member's Raft is being shut down (`Node::shutdown`).
    stopping: AtomicBool,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            contact: Mutex::default(),
            broken: tokio::sync::Notify::new(),
            broken_from: Mutex::default(),
            cut_off: tokio::sync::watch::channel(false).0,
            stopping: AtomicBool::new(false),
        }
    }
}

impl Failover {
    /// A replication message (AppendEntries, a stream item, a snapshot)
    /// arrived from `sender`.
    pub fn heard_from(&self, sender: u64) {
        if let Ok(mut c) = self.contact.lock() {
            c.insert(sender, Instant::now());
        }
    }

    /// The replication stream from `sender` ended with a transport error.
    pub fn stream_broke(&self, sender: u64) {
        if let Ok(mut b) = self.broken_from.lock() {
            b.push(sender);
        }
        self.broken.notify_one();
    }

    fn last_contact(&self, sender: u64) -> Option<Instant> {
        self.contact.lock().ok()?.get(&sender).copied()
    }

    fn take_broken(&self) -> Vec<u64> {
        self.broken_from
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default()
    }

    /// Whether this member stepped down for lack of a quorum and knows no
    /// leader since.
    pub fn is_cut_off(&self) -> bool {
        *self.cut_off.borrow()
    }

    /// This member is stopping: it proposes nothing more for others.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether `set_stopping` was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Resolves once this member is cut off (see `is_cut_off`).
    pub async fn wait_cut_off(&self) {
        let mut rx = self.cut_off.subscribe();
        if rx.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The follower's view of one leader's silence, reset when the leader or
/// term changes.
struct Watch {
    leader: u64,
    term: u64,
    /// When this member first saw this leader in this term (stands in for a
    /// contact before the first message arrives).
    since: Instant,
    /// When this member gave up its lease on this leader (`None`: it holds,
    /// or a message from the leader arrived since, which renewed it).
    lease_given_up: Option<Instant>,
    /// When the leader's peer port refused a connection: campaign from then
    /// on, for at most one maximum election timeout, unless the leader
    /// speaks again.
    dead_since: Option<Instant>,
}

/// What dialling the leader's peer port showed.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// Connection refused: nothing listens there (the process is gone).
    Refused,
    /// Something accepted the connection.
    Accepted,
    /// No answer in time, or another error: no evidence either way.
    Unknown,
}

/// Runs the fail-over task of `node` until Raft stops.
pub async fn run(node: std::sync::Arc<Node>) {
    let hb = Duration::from_millis(node.config.heartbeat_interval_ms.max(1));
    let election_min = Duration::from_millis(node.config.election_timeout_min_ms);
    let election_max = Duration::from_millis(node.config.election_timeout_max_ms);
    let mut watch: Option<Watch> = None;
    let mut campaign_from: Option<(u64, Instant)> = None;
    let mut leading_since: Option<(u64, Instant)> = None;
    let metrics = node.raft.metrics();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(hb) => {}
            _ = node.failover.broken.notified() => {}
        }
        let broken = node.failover.take_broken();
        let m = metrics.borrow_watched().clone();
        if m.running_state.is_err() || node.failover.is_stopping() {
            return;
        }
        let now = Instant::now();
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        let is_voter = voters.contains(&node.id);

        if m.current_leader.is_some() {
            node.failover
                .cut_off
                .send_if_modified(|c| std::mem::replace(c, false));
        }

        // CheckQuorum on the leader.
        if m.state == ServerState::Leader && voters.len() > 1 {
            let since = match leading_since {
                Some((t, s)) if t == m.current_term => s,
                _ => {
                    leading_since = Some((m.current_term, now));
                    now
                }
            };
            // Time since a quorum last acknowledged this leader (counted
            // from when it took over if none did since).
            let leading_for = now.saturating_duration_since(since);
            let unacked = m.last_quorum_acked.as_ref().map_or(leading_for, |t| {
                openraft::Instant::elapsed(&**t).min(leading_for)
            });
            if unacked > election_max {
                step_down(&node, &m).await;
            }
            watch = None;
            campaign_from = None;
            continue;
        }
        leading_since = None;

        let leader = match m.current_leader {
            Some(l) if l != node.id && is_voter && m.state == ServerState::Follower => l,
            _ => {
                watch = None;
                // A campaign after a dead leader goes on while no leader is
                // known (a split vote is retried at once, not after a full
                // election timeout), for at most one election timeout.
                if let Some((dead, from)) = campaign_from {
                    if m.current_leader.is_none_or(|l| l == dead)
                        && is_voter
                        && now < from + election_max
                    {
                        campaign(&node, hb).await;
                    } else {
                        campaign_from = None;
                    }
                }
                continue;
            }
        };
        let w = match &mut watch {
            Some(w) if w.leader == leader && w.term == m.current_term => w,
            _ => {
                campaign_from = None;
                watch.insert(Watch {
                    leader,
                    term: m.current_term,
                    since: now,
                    lease_given_up: None,
                    dead_since: None,
                })
            }
        };
        let contact = node
            .failover
            .last_contact(leader)
            .filter(|c| *c >= w.since)
            .unwrap_or(w.since);
        // The leader spoke after this member gave up on it: it is alive,
        // and openraft renewed the lease with that message.
        if w.lease_given_up.is_some_and(|g| contact > g) {
            w.lease_given_up = None;
            w.dead_since = None;
            campaign_from = None;
        }
        let silence = now.saturating_duration_since(contact);
        let stream_broke = broken.contains(&leader);
        if w.dead_since.is_none() && (stream_broke || silence >= 2 * hb) {
            // A process being killed may drop its connections a moment
            // before its listening socket: after a broken stream, ask again
            // a few times in quick succession while the port accepts.
            let tries = if stream_broke { 5 } else { 1 };
            let mut probe = Probe::Unknown;
            for i in 0..tries {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                probe = probe_leader(&node, &m, leader).await;
                if probe != Probe::Accepted {
                    break;
                }
            }
            if probe == Probe::Refused {
                tracing::warn!(
                    leader = %format!("{leader:x}"),
                    "the leader's peer port refuses connections: electing a new leader now"
                );
                w.dead_since = Some(Instant::now());
            }
        }
        if (w.dead_since.is_some() || silence >= election_min)
            && w.lease_given_up.is_none()
            && give_up_lease(&node, leader).await
        {
            w.lease_given_up = Some(Instant::now());
            if w.dead_since.is_none() {
                tracing::info!(
                    leader = %format!("{leader:x}"),
                    silent_ms = silence.as_millis() as u64,
                    "no word from the leader for an election timeout: granting votes"
                );
            }
        }
        if let Some(dead) = w.dead_since {
            if w.lease_given_up.is_some() && now < dead + election_max {
                campaign(&node, hb).await;
                campaign_from = Some((leader, dead));
            }
        }
    }
}

/// Dials the leader's peer port once (waiting at most a heartbeat
/// interval, clamped to 50-500 ms). Only `Probe::Refused` is evidence that
/// the leader's process is gone.
async fn probe_leader(
    node: &Node,
    m: &openraft::RaftMetrics<super::types::TypeConfig>,
    leader: u64,
) -> Probe {
    let Some(member) = m.membership_config.membership().get_node(&leader) else {
        return Probe::Unknown;
    };
    let addr = node.links.route(&member.peer_addr);
    let wait = Duration::from_millis(node.config.heartbeat_interval_ms.clamp(50, 500));
    let r = tokio::time::timeout(wait, tokio::net::TcpStream::connect(&addr)).await;
    let probe = match r {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
        Ok(Ok(_)) => Probe::Accepted,
        Ok(Err(_)) | Err(_) => Probe::Unknown,
    };
    tracing::debug!(leader = %format!("{leader:x}"), %addr, ?probe, "probed the leader's peer port");
    probe
}

/// Resets this follower's lease on `leader`'s vote (openraft's handling of a
/// transfer request that names the current leader as target). Returns
/// whether the request reached Raft for the current vote.
async fn give_up_lease(node: &Node, leader: u64) -> bool {
    let vote = match node.raft.with_raft_state(|st| *st.vote_ref()).await {
        Ok(v) => v,
        Err(_) => return false,
    };
    if !vote.is_committed() || vote.leader_id().node_id != leader {
        return false;
    }
    let req = TransferLeaderRequest::new(vote, leader, None);
    matches!(node.raft.handle_transfer_leader(req).await, Ok(Ok(())))
}

/// One PreVote round (and an election if a quorum would grant), after a
/// random pause of up to one heartbeat so that two followers that saw the
/// same leader die do not split the vote.
async fn campaign(node: &Node, hb: Duration) {
    let jitter = hb.mul_f64(rand::random::<f64>());
    tokio::time::sleep(jitter).await;
    if let Err(e) = node.raft.trigger().elect(true).await {
        tracing::debug!("campaign: {e}");
    }
}

/// Makes this leader, which no quorum acknowledged for the maximum election
/// timeout,
/// a follower with no leader: it records a vote for member 0 (no member:
/// ids are hashes of names) in the next term, as if that member had asked.
/// The vote is persisted like any other, so this member can still vote for
/// a real candidate of a later term, or of the same term with a higher id.
async fn step_down(node: &Node, m: &openraft::RaftMetrics<super::types::TypeConfig>) {
    // Cut off first: the requests this member holds fail now, and no new
    // write reaches Raft between reading its last log id and the vote
    // (a later entry would make the vote request's log look older). If the
    // step-down does not happen, the next tick lifts it (a leader is known).
    node.failover.cut_off.send_replace(true);
    let state = node
        .raft
        .with_raft_state(|st| (*st.vote_ref(), st.log_ids.last().cloned()))
        .await;
    let Ok((vote, last_log_id)) = state else {
        return;
    };
    if vote.leader_id().node_id != node.id || !vote.is_committed() {
        return;
    }
    let next = Vote::new(vote.leader_id().term + 1, 0);
    let req = VoteRequest {
        vote: next,
        last_log_id,
        leadership_transfer: true,
    };
    tracing::warn!(
        term = m.current_term,
        "no quorum acknowledged this leader for the maximum election timeout: stepping down"
    );
    match node.raft.vote(req).await {
        Ok(r) if r.is_granted_to(&next) => {}
        Ok(r) => tracing::warn!("stepping down refused: {r:?}"),
        Err(e) => tracing::warn!("stepping down: {e}"),
    }
}
