//! The alarm table: etcd's alarms (`NOSPACE`, `CORRUPT`) raised per member,
//! replicated like etcd's `AlarmRequest`, which goes through Raft. Every
//! member applies the same activations and deactivations in log order, so
//! every member answers `Maintenance.Alarm` with the same list.
//!
//! While a `NOSPACE` alarm is active anywhere in the cluster, commands that
//! add data ([`crate::state::Command::quota_cost`] above 0) are refused when
//! applied with [`crate::state::StateError::NoSpace`] (etcd's capped
//! applier); deletes, compaction, lease revoke and alarm changes still apply.
//!
//! Deterministic and free of IO like the rest of `state`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// etcd's `AlarmType` (numbers as in `rpc.proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmType {
    /// `NONE`: in a request, "every type".
    None,
    /// `NOSPACE`: the member's storage quota was reached.
    NoSpace,
    /// `CORRUPT`: the member's data disagrees with its peers'.
    Corrupt,
}

impl AlarmType {
    /// The type for etcd's wire number, if it is one.
    pub fn from_i32(v: i32) -> Option<AlarmType> {
        match v {
            0 => Some(AlarmType::None),
            1 => Some(AlarmType::NoSpace),
            2 => Some(AlarmType::Corrupt),
            _ => None,
        }
    }

    /// etcd's wire number.
    pub fn as_i32(self) -> i32 {
        match self {
            AlarmType::None => 0,
            AlarmType::NoSpace => 1,
            AlarmType::Corrupt => 2,
        }
    }
}

/// One raised alarm: which member, which type (etcd's `AlarmMember`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AlarmMember {
    pub member_id: u64,
    pub alarm: AlarmType,
}

/// What to do with the table (etcd's `AlarmRequest.AlarmAction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmAction {
    Get,
    Activate,
    Deactivate,
}

/// The active alarms, ordered by member id then type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmTable {
    active: BTreeSet<AlarmMember>,
}

impl AlarmTable {
    /// True if no alarm is active.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// True if an alarm of type `alarm` is active for any member.
    pub fn has(&self, alarm: AlarmType) -> bool {
        self.active.iter().any(|a| a.alarm == alarm)
    }

    /// Active alarms of type `alarm` (every type for `None`) of member
    /// `member_id` (every member for 0).
    pub fn get(&self, member_id: u64, alarm: AlarmType) -> Vec<AlarmMember> {
        self.active
            .iter()
            .filter(|a| member_id == 0 || a.member_id == member_id)
            .filter(|a| alarm == AlarmType::None || a.alarm == alarm)
            .copied()
            .collect()
    }

    /// Applies one alarm request; returns the alarms it concerns, as etcd
    /// answers: for `Activate`, the alarm raised (empty for type `None`);
    /// for `Deactivate`, the alarms cleared (member 0: of every member; type
    /// `None`: of every type); for `Get`, the matching active alarms.
    pub fn apply(
        &mut self,
        action: AlarmAction,
        member_id: u64,
        alarm: AlarmType,
    ) -> Vec<AlarmMember> {
        match action {
            AlarmAction::Get => self.get(member_id, alarm),
            AlarmAction::Activate => {
                if alarm == AlarmType::None {
                    return Vec::new();
                }
                let a = AlarmMember { member_id, alarm };
                self.active.insert(a);
                vec![a]
            }
            AlarmAction::Deactivate => {
                let gone = self.get(member_id, alarm);
                for a in &gone {
                    self.active.remove(a);
                }
                gone
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activate_get_deactivate() {
        let mut t = AlarmTable::default();
        assert!(t
            .apply(AlarmAction::Activate, 7, AlarmType::None)
            .is_empty());
        assert!(t.is_empty());
        let a = AlarmMember {
            member_id: 7,
            alarm: AlarmType::NoSpace,
        };
        assert_eq!(
            t.apply(AlarmAction::Activate, 7, AlarmType::NoSpace),
            vec![a]
        );
        // Idempotent.
        t.apply(AlarmAction::Activate, 7, AlarmType::NoSpace);
        t.apply(AlarmAction::Activate, 9, AlarmType::Corrupt);
        assert!(t.has(AlarmType::NoSpace));
        assert_eq!(t.get(0, AlarmType::None).len(), 2);
        assert_eq!(t.get(7, AlarmType::None), vec![a]);
        assert_eq!(t.get(0, AlarmType::NoSpace), vec![a]);
        // Another member's id clears nothing.
        assert!(t
            .apply(AlarmAction::Deactivate, 8, AlarmType::NoSpace)
            .is_empty());
        assert_eq!(
            t.apply(AlarmAction::Deactivate, 7, AlarmType::NoSpace),
            vec![a]
        );
        assert!(!t.has(AlarmType::NoSpace));
        // Member 0 and type None: everything.
        assert_eq!(
            t.apply(AlarmAction::Deactivate, 0, AlarmType::None).len(),
            1
        );
        assert!(t.is_empty());
    }

    #[test]
    fn wire_numbers() {
        for t in [AlarmType::None, AlarmType::NoSpace, AlarmType::Corrupt] {
            assert_eq!(AlarmType::from_i32(t.as_i32()), Some(t));
        }
        assert_eq!(AlarmType::from_i32(3), None);
    }
}
