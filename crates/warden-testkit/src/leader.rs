//! Who leads, as the members say: one Status round over a set of members,
//! and the two ways tests read it: every running member agrees on one leader
//! (the multi-process tests), or the member that says it leads in the
//! highest term (the chaos harness, which must keep going while members are
//! down or partitioned).
//!
//! Asks over the etcd Maintenance API only; never changes anything.

use std::time::Duration;

use tonic::transport::Channel;
use warden_proto::etcdserverpb::{maintenance_client::MaintenanceClient, StatusRequest};

/// What one member said about leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// The answering member's id.
    pub member_id: u64,
    /// The leader it knows of (0: none).
    pub leader: u64,
    /// Its Raft term.
    pub term: u64,
}

/// Asks every channel for its Status at once, each within `timeout`;
/// `None` where a member did not answer.
pub async fn views(channels: &[Channel], timeout: Duration) -> Vec<Option<View>> {
    let asks = channels.iter().map(|ch| {
        let ch = ch.clone();
        async move {
            let mut req = tonic::Request::new(StatusRequest {});
            req.set_timeout(timeout);
            let r = tokio::time::timeout(timeout, MaintenanceClient::new(ch).status(req)).await;
            let s = r.ok()?.ok()?.into_inner();
            let h = s.header?;
            Some(View {
                member_id: h.member_id,
                leader: s.leader,
                term: h.raft_term,
            })
        }
    });
    futures::future::join_all(asks).await
}

/// The index of the leader when every member that answered names the same
/// leader and that leader is among them; `None` otherwise (or if nobody
/// answered).
pub fn agreed(views: &[Option<View>]) -> Option<usize> {
    let answered: Vec<&View> = views.iter().flatten().collect();
    let first = answered.first()?.leader;
    if first == 0 || answered.iter().any(|v| v.leader != first) {
        return None;
    }
    views
        .iter()
        .position(|v| v.is_some_and(|v| v.member_id == first))
}

/// The index of the member that says it is the leader, in the highest term
/// if several do (an old leader cut off from the others may still think so).
pub fn self_confirmed(views: &[Option<View>]) -> Option<usize> {
    views
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (i, v)))
        .filter(|(_, v)| v.leader != 0 && v.leader == v.member_id)
        .max_by_key(|(_, v)| v.term)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(member_id: u64, leader: u64, term: u64) -> Option<View> {
        Some(View {
            member_id,
            leader,
            term,
        })
    }

    #[test]
    fn agreed_needs_every_answer_to_name_one_present_leader() {
        assert_eq!(agreed(&[v(1, 2, 3), v(2, 2, 3), v(3, 2, 3)]), Some(1));
        assert_eq!(agreed(&[v(1, 2, 3), None, v(2, 2, 3)]), Some(2));
        assert_eq!(agreed(&[v(1, 2, 3), v(2, 3, 4), v(3, 3, 4)]), None);
        assert_eq!(agreed(&[v(1, 0, 3), v(2, 0, 3)]), None);
        // The named leader did not answer: not confirmed.
        assert_eq!(agreed(&[v(1, 9, 3), v(2, 9, 3)]), None);
        assert_eq!(agreed(&[None, None]), None);
    }

    #[test]
    fn self_confirmed_prefers_the_highest_term() {
        assert_eq!(
            self_confirmed(&[v(1, 1, 3), v(2, 2, 4), v(3, 2, 4)]),
            Some(1)
        );
        assert_eq!(self_confirmed(&[v(1, 2, 3), v(2, 0, 3)]), None);
        assert_eq!(self_confirmed(&[None, v(2, 2, 5)]), Some(1));
    }
}
