//! Which endpoint is the leader: the client's memory of each endpoint's
//! member id and of the leader with its term, learned from `Status` answers
//! (the response header names the member that answered, `leader` the
//! leader it follows, `raft_term` the term). Writes go to the leader's
//! endpoint directly, saving the hop a follower would forward them over.
//!
//! Owns only the bookkeeping; the asking is `Client::find_leader`. A newer
//! term always wins over an older one, so a deposed leader's stale answer
//! cannot move writes back to it.
//!
//! Must never: point writes at an endpoint whose member id is not known to
//! be the leader's (an unknown leader means "start where the last call
//! succeeded", which is always safe: a follower forwards).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The leader as last learned.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Known {
    /// The leader's member id (0: unknown).
    leader: u64,
    /// The term it leads in.
    term: u64,
}

/// Endpoint member ids and the known leader.
#[derive(Debug)]
pub(crate) struct LeaderMap {
    /// Member id behind each endpoint (0: not yet known).
    members: Vec<AtomicU64>,
    known: Mutex<Known>,
}

impl LeaderMap {
    pub(crate) fn new(endpoints: usize) -> LeaderMap {
        LeaderMap {
            members: (0..endpoints).map(|_| AtomicU64::new(0)).collect(),
            known: Mutex::new(Known::default()),
        }
    }

    /// Notes a `Status` answer from endpoint `idx`: the member behind it
    /// and the leader it follows in `term` (`leader` 0: none known).
    pub(crate) fn learn(&self, idx: usize, member: u64, leader: u64, term: u64) {
        if let Some(m) = self.members.get(idx) {
            if member != 0 {
                m.store(member, Ordering::Relaxed);
            }
        }
        if leader == 0 {
            return;
        }
        if let Ok(mut k) = self.known.lock() {
            if term >= k.term {
                *k = Known { leader, term };
            }
        }
    }

    /// The endpoint of the known leader, if it is one of ours.
    pub(crate) fn endpoint(&self) -> Option<usize> {
        let leader = self.known.lock().ok()?.leader;
        if leader == 0 {
            return None;
        }
        self.members
            .iter()
            .position(|m| m.load(Ordering::Relaxed) == leader)
    }

    /// The known leader's member id (0: unknown).
    #[cfg(test)]
    pub(crate) fn leader(&self) -> u64 {
        self.known.lock().map(|k| k.leader).unwrap_or(0)
    }

    /// A write to the leader's endpoint failed: forget the leader (keeping
    /// its term, so only an answer at least as new names the next one).
    pub(crate) fn forget(&self, idx: usize) {
        let member = self.members.get(idx).map(|m| m.load(Ordering::Relaxed));
        if let Ok(mut k) = self.known.lock() {
            if member == Some(k.leader) {
                k.leader = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_members_and_follows_the_newest_term() {
        let m = LeaderMap::new(3);
        assert_eq!(m.endpoint(), None);
        // Endpoint 0 (member 10) says member 30 leads in term 2; member 30's
        // endpoint is not known yet.
        m.learn(0, 10, 30, 2);
        assert_eq!(m.leader(), 30);
        assert_eq!(m.endpoint(), None);
        m.learn(2, 30, 30, 2);
        assert_eq!(m.endpoint(), Some(2));
        // A stale answer (term 1) does not move writes back.
        m.learn(1, 20, 20, 1);
        assert_eq!(m.endpoint(), Some(2));
        // A failure at the leader's endpoint forgets it; a failure
        // elsewhere does not.
        m.forget(1);
        assert_eq!(m.endpoint(), Some(2));
        m.forget(2);
        assert_eq!(m.endpoint(), None);
        // Term 2 answers may name the leader again; term 3 wins.
        m.learn(1, 20, 20, 3);
        assert_eq!(m.endpoint(), Some(1));
        m.learn(0, 10, 30, 2);
        assert_eq!(m.endpoint(), Some(1));
        // "No leader" answers change nothing.
        m.learn(0, 10, 0, 9);
        assert_eq!(m.endpoint(), Some(1));
    }
}
