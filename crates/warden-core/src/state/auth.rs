//! etcd's authentication store: users, roles, key-range permissions, and
//! whether auth is on, replicated like etcd's `Auth*` raft requests. Every
//! member applies the same [`AuthCommand`]s in log order, so every member
//! checks a request against the same users and roles.
//!
//! Owns: the tables, the rules of changing them (etcd's errors: a user or
//! role that exists or not, the `root` user and role that auth needs), and
//! the permission checks ([`AuthStore::check_command`] for a write about to
//! be applied, [`AuthStore::check_range`] for reads and watches). The
//! server applies writes sent by clients only after `check_command` on the
//! state at that point in the log, as etcd's `authApplierV3` does, so a
//! permission revoked before a write is applied is never bypassed.
//!
//! What it does not own: password hashing and verification (bcrypt is slow
//! and salted: the server hashes before proposing and verifies on its own
//! CPU, never inside apply), tokens (signed by the server with
//! [`AuthStore::token_key`], a random key chosen by the member that proposed
//! `Enable`), and which caller a request comes from.
//!
//! Deterministic and free of IO like the rest of `state`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::lease::LeaseTable;
use super::machine::Command;
use super::types::{RequestOp, TxnRequest};

/// The user and the role with every permission.
pub const ROOT: &str = "root";

/// etcd's permission type (`authpb.Permission.Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PermKind {
    Read,
    Write,
    ReadWrite,
}

impl PermKind {
    /// The kind for etcd's wire number, if it is one.
    pub fn from_i32(v: i32) -> Option<PermKind> {
        match v {
            0 => Some(PermKind::Read),
            1 => Some(PermKind::Write),
            2 => Some(PermKind::ReadWrite),
            _ => None,
        }
    }

    /// etcd's wire number.
    pub fn as_i32(self) -> i32 {
        match self {
            PermKind::Read => 0,
            PermKind::Write => 1,
            PermKind::ReadWrite => 2,
        }
    }

    fn allows(self, need: Need) -> bool {
        matches!(
            (self, need),
            (PermKind::ReadWrite, _)
                | (PermKind::Read, Need::Read)
                | (PermKind::Write, Need::Write)
        )
    }
}

/// One key-range permission of a role (`authpb.Permission`): `range_end`
/// empty is the single key, `[0]` every key from `key` on, otherwise the
/// half-open range `[key, range_end)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Permission {
    pub kind: PermKind,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

/// A user: the bcrypt hash of its password (`None`: no password, only a
/// client certificate can stand for it), its roles, and the auth revision
/// of its creation or last password change (a token names it, so a token
/// issued before a password change or a delete and re-add is refused).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub password_hash: Option<String>,
    pub roles: BTreeSet<String>,
    pub generation: u64,
}

/// A role: its permissions, keyed by (key, range_end) as etcd keys them (a
/// grant on the same range replaces the kind).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub perms: BTreeMap<(Vec<u8>, Vec<u8>), PermKind>,
}

impl Role {
    /// The permissions in key order, as `authpb.Permission`s.
    pub fn permissions(&self) -> Vec<Permission> {
        self.perms
            .iter()
            .map(|((key, range_end), kind)| Permission {
                kind: *kind,
                key: key.clone(),
                range_end: range_end.clone(),
            })
            .collect()
    }
}

/// A change to the auth store (etcd's `Auth*Request`s that go through raft).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    /// Turn auth on; `token_key` signs the tokens issued from now on.
    Enable {
        token_key: Vec<u8>,
    },
    Disable,
    UserAdd {
        name: String,
        password_hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: Option<String>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        name: String,
        perm: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

impl AuthCommand {
    /// The user or role name the command is about (for logs).
    pub fn subject(&self) -> &str {
        match self {
            AuthCommand::Enable { .. } | AuthCommand::Disable => "",
            AuthCommand::UserAdd { name, .. }
            | AuthCommand::UserDelete { name }
            | AuthCommand::UserChangePassword { name, .. }
            | AuthCommand::UserRevokeRole { name, .. }
            | AuthCommand::RoleAdd { name }
            | AuthCommand::RoleDelete { name }
            | AuthCommand::RoleGrantPermission { name, .. } => name,
            AuthCommand::UserGrantRole { user, .. } => user,
            AuthCommand::RoleRevokePermission { role, .. } => role,
        }
    }
}

/// etcd's auth errors, with its messages (`rpctypes.ErrGRPC*`): clients
/// match on these strings.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
}

/// The gRPC code class of an [`AuthError`] (etcd's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthErrorClass {
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
}

impl AuthError {
    /// The gRPC code etcd answers this error with.
    pub fn class(&self) -> AuthErrorClass {
        match self {
            AuthError::UserEmpty
            | AuthError::RoleEmpty
            | AuthError::AuthFailed
            | AuthError::PermissionNotGiven
            | AuthError::InvalidAuthMgmt => AuthErrorClass::InvalidArgument,
            AuthError::PermissionDenied => AuthErrorClass::PermissionDenied,
            AuthError::InvalidAuthToken => AuthErrorClass::Unauthenticated,
            AuthError::RootUserNotExist
            | AuthError::RootRoleNotExist
            | AuthError::UserAlreadyExist
            | AuthError::UserNotFound
            | AuthError::RoleAlreadyExist
            | AuthError::RoleNotFound
            | AuthError::RoleNotGranted
            | AuthError::PermissionNotGranted
            | AuthError::AuthNotEnabled => AuthErrorClass::FailedPrecondition,
        }
    }
}

/// Who a request is checked as. `None` is a caller that presented neither
/// a token nor a client certificate.
pub type Caller<'a> = Option<&'a str>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Read,
    Write,
}

/// The replicated auth state. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthStore {
    enabled: bool,
    /// Bumped by every change that is applied (etcd's auth revision).
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    token_key: Vec<u8>,
}

impl AuthStore {
    /// True for a store nothing was ever done to (the server then leaves
    /// it out of snapshots, so they keep the bytes of builds before auth).
    pub fn is_pristine(&self) -> bool {
        *self == AuthStore::default()
    }

    /// Whether auth is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// etcd's auth revision: how many changes were applied.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The key tokens are signed with (empty while auth was never on).
    pub fn token_key(&self) -> &[u8] {
        &self.token_key
    }

    /// A user, if it exists.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// A role, if it exists.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// User names, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Role names, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// Whether `user` has the `root` role.
    pub fn is_root(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }

    /// Applies one change. Deterministic; on error nothing changed.
    pub fn apply(&mut self, cmd: &AuthCommand) -> Result<(), AuthError> {
        self.apply_inner(cmd)?;
        self.revision = self.revision.saturating_add(1);
        Ok(())
    }

    fn apply_inner(&mut self, cmd: &AuthCommand) -> Result<(), AuthError> {
        match cmd {
            AuthCommand::Enable { token_key } => {
                if self.enabled {
                    return Ok(());
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.contains(ROOT) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
                self.token_key = token_key.clone();
                Ok(())
            }
            AuthCommand::Disable => {
                self.enabled = false;
                Ok(())
            }
            AuthCommand::UserAdd {
                name,
                password_hash,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let generation = self.revision.saturating_add(1);
                self.users.insert(
                    name.clone(),
                    User {
                        password_hash: password_hash.clone(),
                        roles: BTreeSet::new(),
                        generation,
                    },
                );
                Ok(())
            }
            AuthCommand::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users
                    .remove(name)
                    .map(|_| ())
                    .ok_or(AuthError::UserNotFound)
            }
            AuthCommand::UserChangePassword {
                name,
                password_hash,
            } => {
                let generation = self.revision.saturating_add(1);
                let u = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                u.password_hash = password_hash.clone();
                u.generation = generation;
                Ok(())
            }
            AuthCommand::UserGrantRole { user, role } => {
                if !self.users.contains_key(user) {
                    return Err(AuthError::UserNotFound);
                }
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                if let Some(u) = self.users.get_mut(user) {
                    u.roles.insert(role.clone());
                }
                Ok(())
            }
            AuthCommand::UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                if !u.roles.remove(role) {
                    return Err(AuthError::RoleNotGranted);
                }
                Ok(())
            }
            AuthCommand::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(name.clone(), Role::default());
                Ok(())
            }
            AuthCommand::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if self.roles.remove(name).is_none() {
                    return Err(AuthError::RoleNotFound);
                }
                for u in self.users.values_mut() {
                    u.roles.remove(name);
                }
                Ok(())
            }
            AuthCommand::RoleGrantPermission { name, perm } => {
                if !perm.range_end.is_empty()
                    && perm.range_end != [0]
                    && perm.key.as_slice() >= perm.range_end.as_slice()
                {
                    return Err(AuthError::PermissionNotGiven);
                }
                let r = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
                r.perms
                    .insert((perm.key.clone(), perm.range_end.clone()), perm.kind);
                Ok(())
            }
            AuthCommand::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                r.perms
                    .remove(&(key.clone(), range_end.clone()))
                    .map(|_| ())
                    .ok_or(AuthError::PermissionNotGranted)
            }
        }
    }

    /// Admin calls (membership, maintenance, compaction, user and role
    /// management) while auth is on: the caller must have the root role.
    pub fn check_admin(&self, caller: Caller<'_>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let user = caller.ok_or(AuthError::UserEmpty)?;
        if self.is_root(user) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// A caller is known (any user may do what needs no key permission,
    /// such as granting a lease or reading the member list).
    pub fn check_authenticated(&self, caller: Caller<'_>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let user = caller.ok_or(AuthError::UserEmpty)?;
        if self.users.contains_key(user) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Read permission on `[key, range_end)` (a range, a watch, a txn
    /// compare).
    pub fn check_range(
        &self,
        caller: Caller<'_>,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        self.check(caller, Need::Read, key, range_end)
    }

    /// Write permission on `[key, range_end)`.
    pub fn check_write(
        &self,
        caller: Caller<'_>,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        self.check(caller, Need::Write, key, range_end)
    }

    fn check(
        &self,
        caller: Caller<'_>,
        need: Need,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let name = caller.ok_or(AuthError::UserEmpty)?;
        let user = self.users.get(name).ok_or(AuthError::PermissionDenied)?;
        if user.roles.contains(ROOT) {
            return Ok(());
        }
        let mut granted: Vec<(&[u8], End)> = Vec::new();
        for role in user.roles.iter().filter_map(|r| self.roles.get(r)) {
            for ((k, e), kind) in &role.perms {
                if kind.allows(need) {
                    granted.push((k.as_slice(), End::of(k, e)));
                }
            }
        }
        if covered(granted, key, End::of(key, range_end)) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// What a key-value write about to be applied needs, as etcd's
    /// `authApplierV3` checks it: write on what it writes, read on what it
    /// reads (compares, ranges, `prev_kv`), write on every key of a lease
    /// it revokes or attaches to, and root for compaction. Lock commands
    /// need write on the lock's name as a key.
    pub fn check_command(
        &self,
        caller: Caller<'_>,
        cmd: &Command,
        leases: &LeaseTable,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if caller.is_some_and(|u| self.is_root(u)) {
            return Ok(());
        }
        match cmd {
            Command::Put(p) => {
                self.check_write(caller, &p.key, &[])?;
                if p.prev_kv {
                    self.check_range(caller, &p.key, &[])?;
                }
                self.check_lease_keys(caller, p.lease, leases)
            }
            Command::DeleteRange(d) => {
                self.check_write(caller, &d.key, &d.range_end)?;
                if d.prev_kv {
                    self.check_range(caller, &d.key, &d.range_end)?;
                }
                Ok(())
            }
            Command::Txn(t) => self.check_txn(caller, t, leases),
            Command::LeaseGrant { .. } => self.check_authenticated(caller),
            Command::LeaseRevoke { id } => {
                self.check_authenticated(caller)?;
                self.check_lease_keys(caller, *id, leases)
            }
            Command::LockAcquire(req) => self.check_write(caller, req.name.as_bytes(), &[]),
            Command::LockRelease { name, .. } | Command::LockCancel { name, .. } => {
                self.check_write(caller, name.as_bytes(), &[])
            }
            Command::Fenced { name, command, .. } => {
                self.check_write(caller, name.as_bytes(), &[])?;
                self.check_command(caller, command, leases)
            }
            Command::Compact(_) | Command::LeaseCheckpoint { .. } => self.check_admin(caller),
        }
    }

    fn check_lease_keys(
        &self,
        caller: Caller<'_>,
        lease: i64,
        leases: &LeaseTable,
    ) -> Result<(), AuthError> {
        if lease == 0 {
            return Ok(());
        }
        let Some(l) = leases.get(lease) else {
            return Ok(());
        };
        for key in &l.keys {
            self.check_write(caller, key, &[])?;
        }
        Ok(())
    }

    fn check_txn(
        &self,
        caller: Caller<'_>,
        t: &TxnRequest,
        leases: &LeaseTable,
    ) -> Result<(), AuthError> {
        for c in &t.compare {
            self.check_range(caller, &c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match op {
                RequestOp::Range(r) => self.check_range(caller, &r.key, &r.range_end)?,
                RequestOp::Put(p) => {
                    self.check_command(caller, &Command::Put(p.clone()), leases)?
                }
                RequestOp::DeleteRange(d) => {
                    self.check_command(caller, &Command::DeleteRange(d.clone()), leases)?
                }
                RequestOp::Txn(inner) => self.check_txn(caller, inner, leases)?,
            }
        }
        Ok(())
    }
}

/// The end of a key range: a key (exclusive) or no end. The derived order
/// is the key-space order (every key comes before "no end").
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Before(Vec<u8>),
    Unbounded,
}

impl End {
    /// etcd's encoding of a range end for start `key`: empty is the single
    /// key (which ends before `key` + `\0`), `[0]` is no end.
    fn of(key: &[u8], range_end: &[u8]) -> End {
        match range_end {
            [] => {
                let mut e = Vec::with_capacity(key.len().saturating_add(1));
                e.extend_from_slice(key);
                e.push(0);
                End::Before(e)
            }
            [0] => End::Unbounded,
            e => End::Before(e.to_vec()),
        }
    }
}

/// Whether the union of the `granted` ranges covers `[key, end)`.
fn covered(mut granted: Vec<(&[u8], End)>, key: &[u8], end: End) -> bool {
    // Covered so far: [key, reach).
    let mut reach = End::Before(key.to_vec());
    if end <= reach {
        // An empty or inverted range needs nothing.
        return true;
    }
    granted.sort();
    for (start, stop) in granted {
        if End::Before(start.to_vec()) > reach {
            // A gap no later range can fill (they start later still).
            return false;
        }
        if stop > reach {
            reach = stop;
            if reach >= end {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
