//! The Raft type configuration: what a log entry carries (`Request`), what
//! applying it returns (`Response`), what a member is (`Member`) and what a
//! snapshot is as openraft passes it around (`SnapshotFile`).
//!
//! Every openraft type the rest of the code names is aliased here, so an
//! upgrade of the pinned alpha touches this module and its siblings only.
//! The one alias that needs the state machine, `Raft`, is defined in
//! `state_machine` (this module must never depend on the modules that use
//! it).
//!
//! `Request`, `Member` and openraft's entry and vote types are written to the
//! Raft log and into snapshots with postcard, which encodes an enum variant
//! by its position and a struct by its field order: reordering, inserting
//! before, or removing a variant or field changes what stored bytes mean and
//! must bump `warden_core::storage::format::FORMAT_VERSION` (the golden tests
//! in `log_store` and `state_machine` fail when it happens by accident).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use warden_core::state::alarm::{AlarmAction, AlarmType};
use warden_core::state::auth::AuthCommand;
use warden_core::state::session::SessionTag;
use warden_core::state::{Command, CommandResult, StateError};

/// A member of the cluster as Raft knows it: its name and peer address are
/// fixed at creation; the client address is published by the member itself
/// (see `Request::Publish`) and kept in the state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_addr)
    }
}

/// One replicated command.
///
/// A key-value command is behind an `Arc` (encoded as the command itself,
/// serde's `rc`): the leader's log tail hands each entry out once per
/// follower it replicates to and once more to the state machine, and
/// cloning the keys and values each time was 1.5-2 % of a member's CPU
/// under puts (docs/benchmarks.md, "Request spans only when they are
/// logged").
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// A key-value command for the state machine.
    Kv(Arc<Command>),
    /// A member announces the address it serves clients on (as etcd's
    /// member attribute publish), so every member can list every client URL.
    Publish {
        node_id: u64,
        name: String,
        client_addr: String,
    },
    /// etcd's `AlarmRequest` (activate, deactivate or list alarms), applied
    /// to the replicated alarm table (`SmData::alarms`). Appended last:
    /// the encoding of the variants before it is unchanged.
    Alarm {
        action: AlarmAction,
        member_id: u64,
        alarm: AlarmType,
    },
    /// A change to the auth store (`SmData::auth`): users, roles,
    /// permissions, auth on or off. Appended after `Alarm`.
    Auth(AuthCommand),
    /// A key-value command a client sent, applied only if `user` may do it
    /// by the auth store at that point in the log (etcd's
    /// `authApplierV3`); `None` is a caller with no credentials, refused
    /// while auth is on. Commands the members make themselves (lease
    /// expiry, checkpoints, auto-compaction) stay `Kv`. Appended after
    /// `Auth`.
    KvAs {
        user: Option<String>,
        cmd: Arc<Command>,
    },
    /// [`Request::KvAs`] tagged with a client session (`warden-client-id`,
    /// `warden-request-id`): applied at most once per (client, request),
    /// a retry answered with the first attempt's response
    /// (`warden_core::state::session`). Appended after `KvAs`.
    KvOnce {
        user: Option<String>,
        cmd: Arc<Command>,
        tag: SessionTag,
    },
}

impl Request {
    /// A key-value command the members make themselves (not a client's).
    pub fn kv(cmd: Command) -> Request {
        Request::Kv(Arc::new(cmd))
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Kv(c) => write!(f, "{c}"),
            Request::Publish {
                node_id,
                name,
                client_addr,
            } => write!(f, "publish {node_id:x} {name} {client_addr}"),
            Request::Alarm {
                action,
                member_id,
                alarm,
            } => write!(f, "alarm {action:?} member={member_id:x} {alarm:?}"),
            Request::Auth(c) => {
                // Never the password hash or the token key.
                let what = match c {
                    AuthCommand::Enable { .. } => "enable",
                    AuthCommand::Disable => "disable",
                    AuthCommand::UserAdd { .. } => "user add",
                    AuthCommand::UserDelete { .. } => "user delete",
                    AuthCommand::UserChangePassword { .. } => "user change password",
                    AuthCommand::UserGrantRole { .. } => "user grant role",
                    AuthCommand::UserRevokeRole { .. } => "user revoke role",
                    AuthCommand::RoleAdd { .. } => "role add",
                    AuthCommand::RoleDelete { .. } => "role delete",
                    AuthCommand::RoleGrantPermission { .. } => "role grant permission",
                    AuthCommand::RoleRevokePermission { .. } => "role revoke permission",
                };
                write!(f, "auth {what} {}", c.subject())
            }
            Request::KvAs { user, cmd } => {
                write!(f, "{cmd} as {}", user.as_deref().unwrap_or("(nobody)"))
            }
            Request::KvOnce { user, cmd, tag } => write!(
                f,
                "{cmd} as {} once client={:?} request={}",
                user.as_deref().unwrap_or("(nobody)"),
                tag.client_id,
                tag.request_id
            ),
        }
    }
}

/// The result of applying one entry: the store revision after it, and the
/// command's own answer. Blank and membership entries answer `Ok(None)`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub revision: i64,
    pub result: Result<Option<CommandResult>, StateError>,
}

openraft::declare_raft_types!(
    /// Type configuration of warden's Raft group.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = Member,
);

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type RaftSnapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// A snapshot as openraft passes it around: a verified file on disk.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

/// Node id from a member name: FNV-1a 64, never zero. Every member computes
/// the same ids from `--initial-cluster`, so ids need no coordination.
pub fn node_id_for(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    if h == 0 {
        1
    } else {
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id_for("n1"), node_id_for("n1"));
        assert_ne!(node_id_for("n1"), node_id_for("n2"));
        assert_ne!(node_id_for(""), 0);
    }
}
