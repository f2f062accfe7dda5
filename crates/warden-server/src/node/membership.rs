//! Membership changes (etcd `MemberAdd/Remove/Update/Promote`), done by the
//! leader through openraft's safe membership change (a joint configuration
//! when voters change), forwarded there by followers.
//!
//! - A new member joins as a learner (`add_learner`): it receives the log
//!   (by snapshot when far behind) without voting. `promote_when_ready`
//!   makes a learner ask for promotion once it has caught up; the leader
//!   refuses promotion while it lags (etcd's "in sync with leader" rule).
//! - Removing the leader hands leadership to the most caught-up voter first,
//!   then the new leader removes the old one.
//! - `transfer_leader` (etcd `MoveLeader`) hands leadership to a voter.
//! - A member's identity (name, id, cluster id) is kept in `member.json` in
//!   its data dir, so a restart needs no `--join` and cannot take the wrong
//!   directory.
//!
//! Must never: promote a learner that is behind, or change membership
//! without the consensus library's joint/one-at-a-time protocol.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::types::{node_id_for, Member};
use super::{ForwardRequest, ForwardResponse, Node, NodeError};

/// A learner may be promoted once it is at most this many entries behind
/// the leader's last log index.
pub const PROMOTE_MAX_LAG: u64 = 100;

/// A membership change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MemberOp {
    /// Add a member (as a learner unless `voter`).
    Add {
        id: u64,
        peer_addr: String,
        voter: bool,
    },
    Promote {
        id: u64,
    },
    Remove {
        id: u64,
    },
    Update {
        id: u64,
        peer_addr: String,
    },
}

/// The id of a member added by address (etcd's `MemberAdd` carries no name).
pub fn id_for_peer(peer_addr: &str) -> u64 {
    node_id_for(&format!("peer:{peer_addr}"))
}

fn refused(code: tonic::Code, message: &str) -> NodeError {
    NodeError::refused(code, message)
}

pub fn member_not_found() -> NodeError {
    refused(tonic::Code::NotFound, "etcdserver: member not found")
}

/// What the leader does with a change, or where to send it.
enum Done {
    Ok,
    Redirect(Option<u64>),
}

impl Node {
    /// Applies a membership change through the leader; returns once it is
    /// committed.
    pub async fn change_members(&self, op: MemberOp, deadline: Instant) -> Result<(), NodeError> {
        for _ in 0..5 {
            let leader = self.leader_or_wait(deadline).await?;
            let next = if leader == self.id {
                match self.change_members_local(op.clone(), deadline).await? {
                    Done::Ok => return Ok(()),
                    Done::Redirect(l) => l,
                }
            } else {
                match self
                    .forward(leader, &ForwardRequest::Members(op.clone()), deadline)
                    .await?
                {
                    ForwardResponse::MembersDone => return Ok(()),
                    ForwardResponse::NotLeader(l) => l,
                    ForwardResponse::Failed(e) => return Err(e),
                    _ => return Err(NodeError::Internal("unexpected forward answer".into())),
                }
            };
            if next.is_none() {
                self.wait_leader_other_than(leader, deadline).await;
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Timeout);
            }
        }
        Err(NodeError::NoLeader)
    }

    /// Serves a forwarded membership change.
    pub(super) async fn handle_members(&self, op: MemberOp, deadline: Instant) -> ForwardResponse {
        match self.change_members_local(op, deadline).await {
            Ok(Done::Ok) => ForwardResponse::MembersDone,
            Ok(Done::Redirect(l)) => ForwardResponse::NotLeader(l),
            Err(e) => ForwardResponse::Failed(e),
        }
    }

    async fn change_members_local(
        &self,
        op: MemberOp,
        deadline: Instant,
    ) -> Result<Done, NodeError> {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader {
            return Ok(Done::Redirect(m.current_leader.filter(|l| *l != self.id)));
        }
        let membership = m.membership_config.membership().clone();
        let nodes: BTreeMap<u64, Member> =
            membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let change = match op {
            MemberOp::Add {
                id,
                peer_addr,
                voter,
            } => {
                if nodes.values().any(|n| n.peer_addr == peer_addr) {
                    return Err(refused(
                        tonic::Code::FailedPrecondition,
                        "etcdserver: Peer URLs already exists",
                    ));
                }
                if nodes.contains_key(&id) {
                    return Err(refused(
                        tonic::Code::FailedPrecondition,
                        "etcdserver: member ID already exist",
                    ));
                }
                let node = Member {
                    name: String::new(),
                    peer_addr,
                };
                let fut = self.raft.add_learner(id, node, false);
                client_write(fut, deadline).await?;
                if !voter {
                    return Ok(Done::Ok);
                }
                ChangeMembers::AddVoterIds(BTreeSet::from([id]))
            }
            MemberOp::Promote { id } => {
                if !nodes.contains_key(&id) {
                    return Err(member_not_found());
                }
                if voters.contains(&id) {
                    return Err(refused(
                        tonic::Code::FailedPrecondition,
                        "etcdserver: can only promote a learner member",
                    ));
                }
                let last = m.last_log_index.unwrap_or(0);
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map_or(0, |l| l.index);
                if matched + PROMOTE_MAX_LAG < last {
                    return Err(refused(
                        tonic::Code::FailedPrecondition,
                        "etcdserver: can only promote a learner member which is in sync with leader",
                    ));
                }
                ChangeMembers::AddVoterIds(BTreeSet::from([id]))
            }
            MemberOp::Remove { id } => {
                if !nodes.contains_key(&id) {
                    return Err(member_not_found());
                }
                if id == self.id {
                    return self.hand_over_leadership(&m, &voters, deadline).await;
                }
                if voters.contains(&id) {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                }
            }
            MemberOp::Update { id, peer_addr } => {
                let Some(old) = nodes.get(&id) else {
                    return Err(member_not_found());
                };
                if nodes
                    .iter()
                    .any(|(other, n)| *other != id && n.peer_addr == peer_addr)
                {
                    return Err(refused(
                        tonic::Code::FailedPrecondition,
                        "etcdserver: Peer URLs already exists",
                    ));
                }
                ChangeMembers::SetNodes(BTreeMap::from([(
                    id,
                    Member {
                        name: old.name.clone(),
                        peer_addr,
                    },
                )]))
            }
        };
        let fut = self.raft.change_membership(change, false);
        match client_write(fut, deadline).await {
            Ok(_) => Ok(Done::Ok),
            // Refused as "not the leader" although the metrics said it was:
            // a leader that has just taken over (e.g. by the transfer when
            // the old leader is removed) can refuse for a moment. Nothing
            // was proposed; the caller finds the leader and tries again.
            Err(NodeError::LeaderChanged) => Ok(Done::Redirect(None)),
            Err(e) => Err(e),
        }
    }

    /// Removing the leader: transfer leadership to the most caught-up other
    /// voter, wait for it to lead, and send the removal there.
    async fn hand_over_leadership(
        &self,
        m: &openraft::RaftMetrics<super::types::TypeConfig>,
        voters: &BTreeSet<u64>,
        deadline: Instant,
    ) -> Result<Done, NodeError> {
        let Some(to) = self.most_caught_up_voter(m, voters) else {
            return Err(refused(
                tonic::Code::FailedPrecondition,
                "warden: cannot remove the only voting member",
            ));
        };
        tracing::info!(to = %format!("{to:x}"), "removing the leader: transferring leadership first");
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|_| NodeError::Stopped)?;
        self.wait_leader_other_than(self.id, deadline).await;
        Ok(Done::Redirect(self.leader().filter(|l| *l != self.id)))
    }

    /// The other voter whose log the leader knows to be the longest.
    fn most_caught_up_voter(
        &self,
        m: &openraft::RaftMetrics<super::types::TypeConfig>,
        voters: &BTreeSet<u64>,
    ) -> Option<u64> {
        voters
            .iter()
            .filter(|v| **v != self.id)
            .max_by_key(|v| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(v).cloned().flatten())
                    .map_or(0, |l| l.index)
            })
            .copied()
    }

    /// Before a graceful stop: if this member leads and other voters exist,
    /// hands leadership to the most caught-up one (as etcd does on
    /// shutdown) and waits, up to `wait`, until a leader other than this
    /// member is known. Returns that leader, or `None` if this member did
    /// not lead, had nobody to hand over to, or the transfer did not finish
    /// in time (the followers then elect after their timeouts).
    pub async fn hand_over_before_stop(&self, wait: Duration) -> Option<u64> {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.state != openraft::ServerState::Leader {
            return None;
        }
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        let to = self.most_caught_up_voter(&m, &voters)?;
        tracing::info!(to = %format!("{to:x}"), "stopping: handing leadership over first");
        if let Err(e) = self.raft.trigger().transfer_leader(to).await {
            tracing::warn!("stopping: leadership transfer: {e}");
            return None;
        }
        let deadline = Instant::now() + wait;
        let new = self.wait_leader_except(Some(self.id), deadline).await;
        match new {
            Some(l) => {
                tracing::info!(leader = %format!("{l:x}"), "stopping: leadership handed over")
            }
            None => tracing::warn!("stopping: no new leader within {wait:?}"),
        }
        new
    }

    /// Hands leadership to voter `target` (etcd `MoveLeader`) and waits (up
    /// to three election timeouts) until it leads. Only the leader may ask;
    /// moving to itself is a no-op.
    pub async fn transfer_leader(&self, target: u64) -> Result<(), NodeError> {
        let st = self.status();
        if st.leader != Some(self.id) {
            return Err(refused(
                tonic::Code::FailedPrecondition,
                "etcdserver: not leader",
            ));
        }
        if !st.members.contains_key(&target) || st.learners.contains(&target) {
            return Err(refused(
                tonic::Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ));
        }
        if target == self.id {
            return Ok(());
        }
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| refused(tonic::Code::Unavailable, &e.to_string()))?;
        let mut rx = self.raft.metrics();
        let wait = self.elections(3);
        let moved = tokio::time::timeout(wait, async {
            while rx.borrow_and_update().current_leader != Some(target) {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        if moved.is_err() {
            return Err(refused(
                tonic::Code::Unavailable,
                "etcdserver: request timed out, leader transfer took too long",
            ));
        }
        Ok(())
    }
}

async fn client_write<F, T>(fut: F, deadline: Instant) -> Result<T, NodeError>
where
    F: std::future::Future<
        Output = Result<
            T,
            RaftError<super::types::TypeConfig, ClientWriteError<super::types::TypeConfig>>,
        >,
    >,
{
    match tokio::time::timeout_at(deadline, fut).await {
        Err(_) => Err(NodeError::Timeout),
        Ok(Ok(r)) => Ok(r),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            Err(NodeError::LeaderChanged)
        }
        Ok(Err(RaftError::APIError(e))) => Err(refused(
            tonic::Code::FailedPrecondition,
            &format!("warden: membership change refused: {e}"),
        )),
        Ok(Err(RaftError::Fatal(_))) => Err(NodeError::Stopped),
    }
}

/// Who this data directory belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub id: u64,
    pub cluster_id: u64,
    /// Joined a running cluster (rather than bootstrapped it).
    pub joined: bool,
    /// Log index of the membership that removed this member; a removed
    /// member refuses to start again on this data dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<u64>,
    /// Log index of the first applied membership seen to list this member,
    /// so that after a restart it still knows it once was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listed_at: Option<u64>,
    /// This member's Raft log has held entries (seen at a start, or once it
    /// applied a membership, which only an entry of its durable log gives
    /// it). An empty log after that is a lost one: the
    /// start is refused instead of bootstrapping the cluster again with no
    /// memory of the member's votes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub log_started: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

const IDENTITY_FILE: &str = "member.json";

impl Identity {
    /// The log index of a membership known to have listed this member:
    /// [`Identity::listed_at`], or for a member that bootstrapped the
    /// cluster, 0, the initial membership (`--initial-cluster`, which names
    /// it). Without the second, a member killed before it first recorded
    /// `listed_at`, and removed meanwhile, could apply its own removal on
    /// restart and then find nobody to ask (no membership of its own lists
    /// it any more) and run on for ever.
    pub fn listed_since(&self) -> Option<u64> {
        self.listed_at.or((!self.joined).then_some(0))
    }

    pub fn load(data_dir: &Path) -> anyhow::Result<Option<Identity>> {
        use anyhow::Context;
        let path = data_dir.join(IDENTITY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{} is damaged", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        use anyhow::Context;
        let path = data_dir.join(IDENTITY_FILE);
        let bytes = serde_json::to_vec_pretty(self)?;
        warden_core::storage::snapshot_file::write_atomic(data_dir, IDENTITY_FILE, &bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// The membership a member has applied: the log index of its entry and
/// every member in it, voters and learners.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Applied {
    pub index: u64,
    pub ids: BTreeSet<u64>,
}

/// This member's applied membership (`None` if its state is unreadable).
pub fn applied(node: &Node) -> Option<Applied> {
    let d = node.sm.read().ok()?;
    Some(Applied {
        index: d.last_membership.log_id().as_ref().map_or(0, |l| l.index),
        ids: d
            .last_membership
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect(),
    })
}

/// The newest membership in this member's log, applied or not.
pub fn in_log(node: &Node) -> Applied {
    let m = node
        .raft
        .metrics()
        .borrow_watched()
        .membership_config
        .clone();
    Applied {
        index: m.log_id().as_ref().map_or(0, |l| l.index),
        ids: m.membership().nodes().map(|(id, _)| *id).collect(),
    }
}

/// Whether a peer's applied membership `p` shows that the cluster removed
/// member `id`: it does not list `id`, and it is later than one of our
/// memberships that does (`ours`, applied, or `log`, the newest in our log).
///
/// Applied memberships form one sequence in the log, so if one of ours at
/// index `a` lists us and a peer's applied one at a later index does not,
/// the cluster no longer has us as of that index. That also holds when the
/// entry at `a` was never committed: the peer's is.
pub fn shows_removal(id: u64, ours: &Applied, log: &Applied, p: &Applied) -> bool {
    let later_without_us = |m: &Applied| m.ids.contains(&id) && p.index > m.index;
    !p.ids.contains(&id) && (later_without_us(ours) || later_without_us(log))
}

/// The members to ask whether we were removed: the others listed by the
/// newest of our memberships that lists us (none if neither does).
pub fn removal_witnesses(id: u64, ours: &Applied, log: &Applied) -> BTreeSet<u64> {
    [log, ours]
        .into_iter()
        .find(|m| m.ids.contains(&id))
        .map(|m| m.ids.iter().copied().filter(|p| *p != id).collect())
        .unwrap_or_default()
}

/// Whether the cluster has removed a member, judged from its own
/// memberships and the applied memberships its peers answered (`answers`,
/// by peer).
///
/// `ours` is our applied membership; `log` is the newest membership in our
/// log, applied or not (after a restart the log can hold memberships the
/// state machine has not re-applied yet, and a member killed soon after it
/// started may have applied none). If our applied membership no longer
/// lists us although an earlier one (`listed_at`, kept in `member.json`
/// across restarts) did, we applied our removal. Otherwise peers must say
/// so: a majority of the other members our membership lists
/// ([`removal_witnesses`]) must each have answered with a membership that
/// [`shows_removal`]; one peer's word is not enough (a faulty or hostile
/// peer could otherwise stop any member). A learner that applied an old
/// snapshot and has not yet reached its own addition is never listed yet,
/// so it is never judged removed.
pub fn removed_by(
    id: u64,
    ours: &Applied,
    log: &Applied,
    listed_at: Option<u64>,
    answers: &BTreeMap<u64, Applied>,
) -> bool {
    if !ours.ids.contains(&id) && listed_at.is_some_and(|at| at < ours.index) {
        return true;
    }
    let witnesses = removal_witnesses(id, ours, log);
    if witnesses.is_empty() {
        return false;
    }
    let agreeing = witnesses
        .iter()
        .filter(|w| {
            answers
                .get(w)
                .is_some_and(|a| shows_removal(id, ours, log, a))
        })
        .count();
    agreeing > witnesses.len() / 2
}

/// Stops this member once the cluster has removed it, as etcd does: a
/// removed member would otherwise run on alone, unable to serve anything.
/// Every few election timeouts it compares its applied membership with a
/// peer's (one small call, to each peer in turn); once a peer's answer shows
/// a removal, it asks the other peers in turn at once, and stops only when
/// a majority of them agree ([`removed_by`]). On removal it records that in
/// `member.json`, so the data dir cannot be restarted as a member.
pub async fn watch_for_removal(node: std::sync::Arc<Node>, mut identity: Identity) {
    let period = node.elections(2).max(Duration::from_millis(500));
    let mut turn = 0usize;
    // The latest answer of each peer (memberships only move forward, so an
    // older answer stays true of the past).
    let mut answers: BTreeMap<u64, Applied> = BTreeMap::new();
    loop {
        tokio::time::sleep(period).await;
        if node.raft.metrics().borrow_watched().state == ServerState::Shutdown {
            return;
        }
        let Some(ours) = applied(&node) else { continue };
        let log = in_log(&node);
        let listed = ours.ids.contains(&node.id) && identity.listed_at.is_none();
        // A membership applied (not the empty default of a member that has
        // applied nothing yet): its entry is in this member's durable log.
        let started = !identity.log_started && !ours.ids.is_empty();
        if listed || started {
            if listed {
                identity.listed_at = Some(ours.index);
            }
            identity.log_started = true;
            if let Err(e) = identity.save(&node.config.data_dir) {
                tracing::warn!("recording membership in member.json: {e:#}");
            }
        }
        let peers: Vec<u64> = removal_witnesses(node.id, &ours, &log)
            .into_iter()
            .collect();
        answers.retain(|p, _| peers.contains(p));
        // One peer per round while all is well; once one says we were
        // removed, the others in turn right away.
        for _ in 0..peers.len() {
            turn = turn.wrapping_add(1);
            let target = peers[turn % peers.len()];
            let deadline = Instant::now() + period;
            if let Ok(Ok(ForwardResponse::AppliedMembership(a))) = node
                .call_peer(target, &ForwardRequest::AppliedMembership, deadline)
                .await
            {
                answers.insert(target, a);
            }
            let alarming = answers
                .get(&target)
                .is_some_and(|a| shows_removal(node.id, &ours, &log, a));
            if !alarming || removed_by(node.id, &ours, &log, identity.listed_since(), &answers) {
                break;
            }
        }
        if !removed_by(node.id, &ours, &log, identity.listed_since(), &answers) {
            continue;
        }
        let index = answers
            .values()
            .filter(|a| shows_removal(node.id, &ours, &log, a))
            .map(|a| a.index)
            .max()
            .unwrap_or(ours.index);
        tracing::warn!(
            index,
            "this member was removed from the cluster; stopping (empty the data dir and use --join to add it again)"
        );
        identity.removed_at = Some(index);
        if let Err(e) = identity.save(&node.config.data_dir) {
            tracing::error!("recording the removal in member.json: {e:#}");
        }
        node.mark_removed(format!("removed from the cluster at log index {index}"));
        return;
    }
}

/// A learner asks to be promoted until it is a voter (runs on every member;
/// does nothing on voters).
pub async fn promote_when_ready(node: std::sync::Arc<Node>) {
    // Server metrics: they change with the membership and the role, not
    // with every write as the full metrics do.
    let mut rx = node.raft.server_metrics();
    loop {
        let is_learner = {
            let m = rx.borrow_watched();
            m.membership_config
                .membership()
                .get_node(&node.id)
                .is_some()
                && !m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == node.id)
        };
        if is_learner {
            let deadline = Instant::now() + Duration::from_secs(5);
            match node
                .change_members(MemberOp::Promote { id: node.id }, deadline)
                .await
            {
                Ok(()) => tracing::info!("promoted from learner to voter"),
                Err(e) => tracing::debug!("not promoted yet: {e}"),
            }
        }
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(500), rx.changed()).await {
            // The core's task ended.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(index: u64, ids: &[u64]) -> Applied {
        Applied {
            index,
            ids: ids.iter().copied().collect(),
        }
    }

    /// Answers by peer.
    fn said(answers: &[(u64, Applied)]) -> BTreeMap<u64, Applied> {
        answers.iter().cloned().collect()
    }

    /// Both other members of a 3-member cluster answer `a`.
    fn both(a: Applied) -> BTreeMap<u64, Applied> {
        said(&[(1, a.clone()), (2, a)])
    }

    #[test]
    fn a_later_membership_without_us_means_removed() {
        let ours = at(10, &[1, 2, 3]);
        assert!(removed_by(
            3,
            &ours,
            &ours,
            Some(10),
            &both(at(14, &[1, 2]))
        ));
        // The same or an older membership proves nothing.
        assert!(!removed_by(
            3,
            &ours,
            &ours,
            Some(10),
            &both(at(10, &[1, 2]))
        ));
        assert!(!removed_by(
            3,
            &ours,
            &ours,
            Some(10),
            &both(at(7, &[1, 2]))
        ));
        // Still listed, or no answer.
        assert!(!removed_by(
            3,
            &ours,
            &ours,
            Some(10),
            &both(at(14, &[1, 2, 3]))
        ));
        assert!(!removed_by(3, &ours, &ours, Some(10), &BTreeMap::new()));
    }

    /// A bootstrapped member killed before it recorded `listed_at`, removed
    /// while down, and given its removal on restart: no membership of its
    /// own lists it, so there is nobody to ask; the initial membership
    /// listed it, so it knows. (tests/membership.rs hit this about once in
    /// 30 runs.) A member that joined knows nothing of index 0.
    #[test]
    fn a_bootstrapped_member_that_applied_its_removal_knows_it() {
        let ours = at(6, &[1, 2]);
        let mut identity = Identity {
            name: "n3".into(),
            id: 3,
            cluster_id: 9,
            joined: false,
            removed_at: None,
            listed_at: None,
            log_started: false,
        };
        assert_eq!(identity.listed_since(), Some(0));
        assert!(removed_by(
            3,
            &ours,
            &ours,
            identity.listed_since(),
            &BTreeMap::new()
        ));
        assert!(!removed_by(3, &ours, &ours, None, &BTreeMap::new()));
        identity.joined = true;
        assert_eq!(identity.listed_since(), None);
        identity.listed_at = Some(4);
        assert_eq!(identity.listed_since(), Some(4));
    }

    #[test]
    fn one_peers_word_is_not_enough() {
        let ours = at(10, &[1, 2, 3]);
        // One of two others says so, the other has not answered, or says
        // we are still there: no majority of the others.
        assert!(!removed_by(
            3,
            &ours,
            &ours,
            Some(10),
            &said(&[(1, at(14, &[1, 2]))])
        ));
        assert!(!removed_by(
            3,
            &ours,
            &ours,
            Some(10),
            &said(&[(1, at(14, &[1, 2])), (2, at(12, &[1, 2, 3]))])
        ));
        // A hostile answer of an empty membership, from one peer.
        assert!(!removed_by(
            3,
            &ours,
            &ours,
            Some(10),
            &said(&[(2, at(u64::MAX, &[]))])
        ));
        // Answers from members our membership does not list do not count.
        assert!(!removed_by(
            3,
            &ours,
            &ours,
            Some(10),
            &said(&[
                (1, at(14, &[1, 2])),
                (9, at(14, &[1, 2])),
                (8, at(15, &[1]))
            ])
        ));
    }

    #[test]
    fn a_majority_of_the_others_must_agree() {
        // Five members, we are 5: three of the other four must say so.
        let ours = at(20, &[1, 2, 3, 4, 5]);
        let gone = at(25, &[1, 2, 3, 4]);
        let two = said(&[(1, gone.clone()), (2, gone.clone())]);
        assert!(!removed_by(5, &ours, &ours, Some(20), &two));
        let mut three = two;
        three.insert(4, at(30, &[1, 2, 4])); // a later one still without us
        assert!(removed_by(5, &ours, &ours, Some(20), &three));
        // Two members, we are 2: the other one is the majority of one.
        let pair = at(5, &[1, 2]);
        assert!(removed_by(
            2,
            &pair,
            &pair,
            Some(5),
            &said(&[(1, at(6, &[1]))])
        ));
        // Alone in our membership: nobody to ask, never judged by peers.
        let alone = at(5, &[2]);
        assert!(!removed_by(
            2,
            &alone,
            &alone,
            Some(5),
            &said(&[(1, at(6, &[1]))])
        ));
    }

    #[test]
    fn witnesses_are_the_others_in_the_newest_membership_listing_us() {
        let log = at(12, &[1, 2, 3, 4]);
        let ours = at(10, &[1, 2, 3]);
        assert_eq!(removal_witnesses(3, &ours, &log), BTreeSet::from([1, 2, 4]));
        assert_eq!(removal_witnesses(4, &ours, &log), BTreeSet::from([1, 2, 3]));
        assert_eq!(
            removal_witnesses(3, &ours, &at(12, &[1, 2])),
            BTreeSet::from([1, 2])
        );
        assert!(removal_witnesses(9, &ours, &log).is_empty());
    }

    #[test]
    fn a_member_restarted_before_reapplying_judges_by_its_log() {
        // Killed soon after it started: nothing applied, never recorded as
        // listed, but its log holds the membership that lists it.
        let none = at(0, &[]);
        let log = at(1, &[1, 2, 3]);
        assert!(removed_by(3, &none, &log, None, &both(at(6, &[1, 2]))));
        assert!(!removed_by(3, &none, &log, None, &both(at(6, &[1, 2, 3]))));
        assert!(!removed_by(3, &none, &log, None, &both(at(1, &[1, 2]))));
        assert!(!removed_by(3, &none, &none, None, &both(at(6, &[1, 2]))));
        assert!(!removed_by(
            3,
            &none,
            &log,
            None,
            &said(&[(2, at(6, &[1, 2]))])
        ));
    }

    #[test]
    fn identity_files_without_the_newer_fields_still_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(IDENTITY_FILE),
            br#"{"name":"n1","id":7,"cluster_id":9,"joined":false}"#,
        )
        .expect("write");
        let id = Identity::load(dir.path()).expect("load").expect("present");
        assert_eq!((id.removed_at, id.listed_at), (None, None));
        let mut id = id;
        id.listed_at = Some(3);
        id.removed_at = Some(12);
        id.save(dir.path()).expect("save");
        assert_eq!(Identity::load(dir.path()).expect("load"), Some(id));
    }

    #[test]
    fn applying_our_own_removal_means_removed() {
        assert!(removed_by(
            3,
            &at(14, &[1, 2]),
            &at(14, &[1, 2]),
            Some(10),
            &BTreeMap::new()
        ));
    }

    #[test]
    fn a_learner_not_yet_at_its_own_addition_is_not_removed() {
        // It applied a snapshot from before it was added: never listed yet,
        // and lagging peers' memberships do not list it either.
        let ours = at(5, &[1, 2, 3]);
        assert!(!removed_by(
            4,
            &ours,
            &ours,
            None,
            &said(&[
                (1, at(8, &[1, 2, 3])),
                (2, at(8, &[1, 2, 3])),
                (3, at(8, &[1, 2, 3])),
            ])
        ));
        assert!(!removed_by(4, &ours, &ours, None, &BTreeMap::new()));
    }
}
