//! The replicated lease table: which leases exist, their granted TTL, the
//! last checkpointed remaining time, and the keys attached to each.
//!
//! Time never enters here. The leader's lessor (`node::lessor`) keeps the
//! countdowns in memory and turns them into commands: `LeaseRevoke` when a
//! lease expires, `LeaseCheckpoint` to record remaining TTLs (and renewals)
//! so that a new leader restarts each countdown from what was left rather
//! than expiring early or granting a full TTL again.
//!
//! Keys are attached and detached from the key events of every write (a put
//! with a lease attaches; a put with another lease, or a delete, detaches),
//! so the table and the MVCC store cannot disagree about which keys a lease
//! owns. Must never: read a clock, or iterate a hash map.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::error::StateError;
use super::mvcc::LeaseLookup;
use super::types::{Event, EventKind};

/// etcd's `MaxLeaseTTL`: 9,000,000,000 seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// One lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: i64,
    /// TTL in seconds as granted.
    pub ttl: i64,
    /// Remaining milliseconds at the last checkpoint (a renewal checkpoints
    /// the full TTL). `None`: never checkpointed, a new leader uses `ttl`.
    pub remaining_ms: Option<i64>,
    /// Sequence number of the last applied checkpoint. The leader numbers
    /// its records of a lease; a record older than the one applied (a
    /// periodic checkpoint computed before a renewal but committed after
    /// it) is ignored, so a renewal is never undone.
    pub seq: u64,
    /// Keys currently attached.
    pub keys: BTreeSet<Vec<u8>>,
}

impl Lease {
    /// The countdown a new leader starts this lease with, in milliseconds.
    pub fn resume_ms(&self) -> i64 {
        self.remaining_ms
            .unwrap_or_else(|| self.ttl.saturating_mul(1000))
    }
}

/// All leases, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
}

impl LeaseLookup for LeaseTable {
    fn lease_exists(&self, lease: i64) -> bool {
        self.leases.contains_key(&lease)
    }
}

impl LeaseTable {
    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Every lease, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// etcd `LeaseGrant` with a chosen id (the proposer picks one when the
    /// client did not).
    pub fn grant(&mut self, id: i64, ttl: i64) -> Result<(), StateError> {
        if id <= 0 {
            return Err(StateError::LeaseNotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(StateError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(StateError::LeaseExists);
        }
        self.leases.insert(
            id,
            Lease {
                id,
                ttl: ttl.max(1),
                remaining_ms: None,
                seq: 0,
                keys: BTreeSet::new(),
            },
        );
        Ok(())
    }

    /// Removes a lease and returns the keys it owned (which the caller
    /// deletes in one revision).
    pub fn revoke(&mut self, id: i64) -> Result<Vec<Vec<u8>>, StateError> {
        let lease = self.leases.remove(&id).ok_or(StateError::LeaseNotFound)?;
        Ok(lease.keys.into_iter().collect())
    }

    /// Records remaining TTLs: `(id, remaining_ms, seq)`. Unknown ids are
    /// skipped (the lease may have been revoked after the lessor read it), and
    /// so are records with a sequence number below the lease's.
    pub fn checkpoint(&mut self, checkpoints: &[(i64, i64, u64)]) {
        for (id, remaining, seq) in checkpoints {
            if let Some(l) = self.leases.get_mut(id) {
                if *seq < l.seq {
                    continue;
                }
                let full = l.ttl.saturating_mul(1000);
                l.remaining_ms = Some((*remaining).clamp(0, full));
                l.seq = *seq;
            }
        }
    }

    /// Follows key events of a write: detach from the previous lease,
    /// attach to the new one.
    pub fn track(&mut self, events: &[Event]) {
        for e in events {
            if let Some(prev) = &e.prev_kv {
                if prev.lease != 0 {
                    if let Some(l) = self.leases.get_mut(&prev.lease) {
                        l.keys.remove(&prev.key);
                    }
                }
            }
            if e.kind == EventKind::Put && e.kv.lease != 0 {
                if let Some(l) = self.leases.get_mut(&e.kv.lease) {
                    l.keys.insert(e.kv.key.clone());
                }
            }
        }
    }

    /// Consistency checks for a decoded snapshot: ids positive and matching
    /// their entries, TTLs in range.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (id, l) in &self.leases {
            if *id <= 0 || l.id != *id {
                return Err(format!("lease entry {id} holds id {}", l.id));
            }
            if l.ttl <= 0 || l.ttl > MAX_LEASE_TTL {
                return Err(format!("lease {id:x} has ttl {}", l.ttl));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::types::KeyValue;

    fn kv(key: &str, lease: i64) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            lease,
            ..Default::default()
        }
    }

    #[test]
    fn grant_revoke_and_errors() {
        let mut t = LeaseTable::default();
        assert_eq!(t.grant(7, 10), Ok(()));
        assert_eq!(t.grant(7, 10), Err(StateError::LeaseExists));
        assert_eq!(
            t.grant(8, MAX_LEASE_TTL + 1),
            Err(StateError::LeaseTtlTooLarge)
        );
        assert!(t.lease_exists(7));
        assert_eq!(t.get(7).map(Lease::resume_ms), Some(10_000));
        assert_eq!(t.revoke(7), Ok(vec![]));
        assert_eq!(t.revoke(7), Err(StateError::LeaseNotFound));
        assert!(t.is_empty());
    }

    #[test]
    fn keys_follow_puts_and_deletes() {
        let mut t = LeaseTable::default();
        t.grant(1, 5).ok();
        t.grant(2, 5).ok();
        t.track(&[Event {
            kind: EventKind::Put,
            kv: kv("a", 1),
            prev_kv: None,
            prev_cold: None,
        }]);
        t.track(&[Event {
            kind: EventKind::Put,
            kv: kv("b", 1),
            prev_kv: None,
            prev_cold: None,
        }]);
        // `a` moves to lease 2.
        t.track(&[Event {
            kind: EventKind::Put,
            kv: kv("a", 2),
            prev_kv: Some(kv("a", 1)),
            prev_cold: None,
        }]);
        // `b` is deleted.
        t.track(&[Event {
            kind: EventKind::Delete,
            kv: kv("b", 0),
            prev_kv: Some(kv("b", 1)),
            prev_cold: None,
        }]);
        assert_eq!(t.get(1).map(|l| l.keys.len()), Some(0));
        assert_eq!(t.revoke(2), Ok(vec![b"a".to_vec()]));
    }

    #[test]
    fn checkpoints_clamp_and_skip_unknown() {
        let mut t = LeaseTable::default();
        t.grant(3, 10).ok();
        t.checkpoint(&[(3, 4_000, 1), (99, 1, 1)]);
        assert_eq!(t.get(3).map(Lease::resume_ms), Some(4_000));
        t.checkpoint(&[(3, 50_000, 1)]);
        assert_eq!(t.get(3).map(Lease::resume_ms), Some(10_000));
        t.checkpoint(&[(3, -5, 2)]);
        assert_eq!(t.get(3).map(Lease::resume_ms), Some(0));
        // A renewal (seq 3) then a stale periodic record (seq 2) committed
        // after it: the renewal stands.
        t.checkpoint(&[(3, 10_000, 3)]);
        t.checkpoint(&[(3, 1_000, 2)]);
        assert_eq!(t.get(3).map(Lease::resume_ms), Some(10_000));
        assert!(t.check_invariants().is_ok());
    }
}
