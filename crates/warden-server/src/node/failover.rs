//! Fail-over speed-ups on top of openraft's timers, run by `run` on every
//! member (one task, one tick per heartbeat interval):
//!
//! - **Dead leader** — a follower that stops hearing from its leader for two
//!   heartbeats, or whose replication stream from it breaks, dials the
//!   leader's peer port. Only a refused connection counts (the process is
//!   gone: kill -9, crash): the follower then gives up its own leader lease
//!   and campaigns at once, PreVote first, again every tick (with jitter)
//!   until a leader is known. A SIGSTOP'd, slow or partitioned leader still
//!   accepts (or black-holes) connections and is left to the timers below.
//!   A member that merely lost its own link to a live leader cannot depose
//!   it: the other voters still hear from the leader and refuse its PreVote.
//! - **Silent leader** — a follower that has not heard from its leader for
//!   `--election-timeout-min-ms` gives up its leader lease, so it grants
//!   votes as etcd's followers do (etcd refuses votes only within one
//!   election timeout of hearing from the leader). openraft alone would
//!   refuse them for a further `--election-timeout-max-ms`; its election
//!   timer still decides when this member campaigns.
//! - **CheckQuorum** — a leader that has not had a quorum acknowledge it for
//!   `--election-timeout-min-ms` steps down (openraft would keep leading,
//!   only refusing new proposals): it records a vote for no member in the
//!   next term, which makes it a follower with no leader. It then answers
//!   every request with `etcdserver: no leader` at once (`cut_off`), and the
//!   writes it was waiting on fail with `etcdserver: leader changed` (their
//!   outcome is unknown), until it hears from a leader again.
//!
//! A lease is given up through openraft's own path for a leadership
//! transfer (`handle_transfer_leader` naming the current leader as the
//! target: only the lease is reset). None of this weakens Raft's safety:
//! votes are still one per term, persisted, and granted only to candidates
//! whose log is at least as up to date; the leader lease only protects
//! against disruption and lease reads, and warden reads with ReadIndex
//! only.
//!
//! Must never: campaign without PreVote, give up the lease on a guess (a
//! refused connection to the leader, or a full election timeout of
//! silence), or step down a leader that a quorum still acknowledges.

use std::collections::BTreeMap;
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
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            contact: Mutex::default(),
            broken: tokio::sync::Notify::new(),
            broken_from: Mutex::default(),
            cut_off: tokio::sync::watch::channel(false).0,
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
    /// The lease was given up in this term.
    lease_given_up: bool,
    /// The leader's peer port refused a connection: campaign until a leader
    /// is known.
    dead: bool,
    /// The silence episode already probed (the contact time it started at).
    probed_at: Option<Instant>,
}

/// Runs the fail-over task of `node` until Raft stops.
pub async fn run(node: std::sync::Arc<Node>) {
    let hb = Duration::from_millis(node.config.heartbeat_interval_ms.max(1));
    let election_min = Duration::from_millis(node.config.election_timeout_min_ms);
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
        if m.running_state.is_err() {
            return;
        }
        let now = Instant::now();
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        let is_voter = voters.contains(&node.id);

        if m.current_leader.is_some() {
            node.failover.cut_off.send_if_modified(|c| std::mem::replace(c, false));
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
            let unacked = m
                .last_quorum_acked
                .as_ref()
                .map_or(leading_for, |t| {
                    openraft::Instant::elapsed(&**t).min(leading_for)
                });
            if unacked > election_min {
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
                    let give_up = from + Duration::from_millis(node.config.election_timeout_max_ms);
                    if m.current_leader.is_none_or(|l| l == dead) && is_voter && now < give_up {
                        campaign(&node, hb).await;
                    } else {
                        campaign_from = None;
                    }
                }
                continue;
            }
        };
        campaign_from = None;
        let w = match &mut watch {
            Some(w) if w.leader == leader && w.term == m.current_term => w,
            _ => watch.insert(Watch {
                leader,
                term: m.current_term,
                since: now,
                lease_given_up: false,
                dead: false,
                probed_at: None,
            }),
        };
        let contact = node
            .failover
            .last_contact(leader)
            .filter(|c| *c >= w.since)
            .unwrap_or(w.since);
        let silence = now.saturating_duration_since(contact);
        let stream_broke = broken.contains(&leader);
        if !w.dead && (stream_broke || silence >= 2 * hb) && w.probed_at != Some(contact) {
            w.probed_at = Some(contact);
            if leader_refuses(&node, &m, leader).await {
                tracing::warn!(
                    leader = %format!("{leader:x}"),
                    "the leader's peer port refuses connections: electing a new leader now"
                );
                w.dead = true;
            }
        }
        if (w.dead || silence >= election_min) && !w.lease_given_up {
            w.lease_given_up = give_up_lease(&node, leader).await;
            if !w.dead {
                tracing::info!(
                    leader = %format!("{leader:x}"),
                    silent_ms = silence.as_millis() as u64,
                    "no word from the leader for an election timeout: granting votes"
                );
            }
        }
        if w.dead && w.lease_given_up {
            campaign(&node, hb).await;
            campaign_from = Some((leader, now));
        }
    }
}

/// Whether the leader's peer port refuses a connection (its process is
/// gone). A connection accepted, timed out or failing otherwise is not
/// evidence.
async fn leader_refuses(
    node: &Node,
    m: &openraft::RaftMetrics<super::types::TypeConfig>,
    leader: u64,
) -> bool {
    let Some(member) = m.membership_config.membership().get_node(&leader) else {
        return false;
    };
    let addr = node.links.route(&member.peer_addr);
    let wait = Duration::from_millis(node.config.heartbeat_interval_ms.clamp(50, 500));
    match tokio::time::timeout(wait, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// Resets this follower's lease on `leader`'s vote (openraft's handling of a
/// transfer request that names the current leader as target). Returns
/// whether the request reached Raft for the current vote.
async fn give_up_lease(node: &Node, leader: u64) -> bool {
    let vote = match node.raft.with_raft_state(|st| st.vote_ref().clone()).await {
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

/// Makes this leader, which no quorum acknowledged for an election timeout,
/// a follower with no leader: it records a vote for member 0 (no member:
/// ids are hashes of names) in the next term, as if that member had asked.
/// The vote is persisted like any other, so this member can still vote for
/// a real candidate of a later term, or of the same term with a higher id.
async fn step_down(node: &Node, m: &openraft::RaftMetrics<super::types::TypeConfig>) {
    let state = node
        .raft
        .with_raft_state(|st| (st.vote_ref().clone(), st.log_ids.last().cloned()))
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
        "no quorum acknowledged this leader for an election timeout: stepping down"
    );
    node.failover.cut_off.send_replace(true);
    match node.raft.vote(req).await {
        Ok(r) if r.is_granted_to(&next) => {}
        Ok(r) => tracing::warn!("stepping down refused: {r:?}"),
        Err(e) => tracing::warn!("stepping down: {e}"),
    }
}
