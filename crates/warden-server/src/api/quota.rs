//! The storage quota, checked where etcd checks it: at the API edge of the
//! member that receives a write, before it is proposed (etcd's
//! `quotaKVServer` / `quotaAlarmer`).
//!
//! A write with a quota cost (`Command::quota_cost`: puts, txns with puts,
//! lease grants, lock acquires) is refused with etcd's
//! `etcdserver: mvcc: database space exceeded` (`RESOURCE_EXHAUSTED`) when
//! the `NOSPACE` alarm is active, or when this member's applied state size
//! (`StateMachine::size`) plus the cost would reach its quota
//! (`--quota-backend-bytes`, per-member config); in the second case the
//! member first raises `NOSPACE` for itself through the log
//! (`Request::Alarm`), so every member learns of it. The replicated part is
//! deterministic: once the alarm is applied, every member refuses such
//! commands when applying them (`state_machine`, etcd's capped applier), so
//! writes already in flight cannot slip past it on some members only.
//!
//! Deletes, compaction, reads, lease revoke and alarm changes have no cost
//! and are never refused here.

use std::time::Duration;

use crate::node::types::Request;
use crate::node::Node;
use warden_core::state::alarm::{AlarmAction, AlarmType};
use warden_core::state::{Command, StateError};

/// Whether `cost` more bytes fit in `quota` at `size` (etcd
/// `backendQuota.Available`: the result must stay below the quota).
pub fn fits(size: u64, cost: u64, quota: Option<u64>) -> bool {
    quota.is_none_or(|q| size.saturating_add(cost) < q)
}

/// Refuses `cmd` with [`StateError::NoSpace`] if it adds data while the
/// `NOSPACE` alarm is active or would exceed this member's quota (raising
/// the alarm then). See the module docs.
pub async fn check(
    node: &Node,
    cmd: &Command,
    timeout: Option<Duration>,
) -> Result<(), StateError> {
    let cost = cmd.quota_cost();
    if cost == 0 {
        return Ok(());
    }
    // An unreadable state is reported by the write itself; do not guess here.
    let Ok((size, raised)) = node.with_state(|d| (d.kv.size(), d.alarms.has(AlarmType::NoSpace)))
    else {
        return Ok(());
    };
    if raised {
        return Err(StateError::NoSpace);
    }
    if fits(size, cost, node.quota_bytes()) {
        return Ok(());
    }
    tracing::warn!(
        size,
        cost,
        quota = node.quota_bytes(),
        "storage quota reached: raising the NOSPACE alarm"
    );
    let alarm = Request::Alarm {
        action: AlarmAction::Activate,
        member_id: node.id(),
        alarm: AlarmType::NoSpace,
    };
    if let Err(e) = node.write(alarm, node.deadline(timeout)).await {
        tracing::warn!("could not raise the NOSPACE alarm: {e}");
    }
    Err(StateError::NoSpace)
}

#[cfg(test)]
mod tests {
    use super::fits;

    #[test]
    fn fits_like_etcd() {
        assert!(fits(0, 10, None));
        assert!(fits(u64::MAX, 10, None));
        assert!(fits(89, 10, Some(100)));
        assert!(!fits(90, 10, Some(100)), "reaching the quota is refused");
        assert!(!fits(200, 1, Some(100)));
    }
}
