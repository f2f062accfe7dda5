//! Errors of the replicated state machine: the request errors a command can
//! deterministically produce when applied (`StateError`, carrying etcd's exact
//! messages), their gRPC classification (`ErrorClass`), and the errors of
//! decoding a snapshot (`SnapshotError`).
//!
//! A `StateError` is part of a command's replicated result: every replica
//! produces the same one for the same command, so it is serializable and
//! comparable. This module must never depend on gRPC types; the api layer maps
//! `ErrorClass` to a status code once.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::auth::{AuthError, AuthErrorClass};
use super::lock_table::LockError;
use crate::storage::format::FormatError;

/// An error a request gets from the state machine. `Display` is etcd's error
/// string for the mvcc/etcdserver error; [`StateError::grpc_message`] is the
/// exact message etcd puts in its gRPC status (clients match on it).
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum StateError {
    /// The requested revision is older than the compact revision.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is newer than the current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// A put with `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A txn puts one key twice, or puts a key inside a range it deletes.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A txn level has more than [`crate::state::validate::MAX_TXN_OPS`] compares or ops.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A request (or a txn compare) has an empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A put with `ignore_value` also carries a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A put with `ignore_lease` also carries a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A put attaches a lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant asks for an id that is already taken.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant asks for a TTL above [`crate::state::lease::MAX_LEASE_TTL`].
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A lock operation was refused (see `lock_table::LockError`).
    #[error("{0}")]
    Lock(#[from] LockError),
    /// A fenced write whose token does not hold the lock: nothing changed.
    #[error("warden: fenced write refused: token {token} does not hold lock {name:?}")]
    FenceRejected { name: String, token: u64 },
    /// A fenced command that is not a key-value write.
    #[error("warden: only put, delete and txn can be fenced")]
    FenceNotKv,
    /// A write that adds data while the `NOSPACE` alarm is active, or that
    /// would take the state past the storage quota (etcd `ErrNoSpace`).
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// Refused by the auth store (a permission, a user or role change).
    /// Appended last: the encoding of the variants before it is unchanged.
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// A write tagged with a client id whose session was forgotten (idle
    /// past its TTL or evicted), at or below the highest request id it
    /// had: it may be a retry of an applied request, so it is not applied
    /// again (`session::SessionTable`). Appended after `Auth`.
    #[error("warden: session expired; the request may or may not have been applied")]
    SessionExpired,
    /// A write whose request id is below what its session still keeps
    /// responses for (the client acknowledged it, or too many responses
    /// were kept): its outcome is no longer known and it is not applied.
    /// Appended after `SessionExpired`.
    #[error(
        "warden: request id below the session's kept responses; the request may or may not \
         have been applied"
    )]
    ResponseForgotten,
    /// A value of an old version could not be read back from the member's
    /// scratch files (`storage::cold`): a disk error on this member. Only
    /// reads of history (an old revision, watch replay) can get it, and
    /// nothing changed. Appended after `ResponseForgotten`.
    #[error("warden: reading key history on this member failed: {0}")]
    HistoryRead(String),
}

/// How the api layer should classify a [`StateError`] (etcd's gRPC codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// gRPC `OUT_OF_RANGE`.
    OutOfRange,
    /// gRPC `INVALID_ARGUMENT`.
    InvalidArgument,
    /// gRPC `NOT_FOUND`.
    NotFound,
    /// gRPC `FAILED_PRECONDITION`.
    FailedPrecondition,
    /// gRPC `RESOURCE_EXHAUSTED`.
    ResourceExhausted,
    /// gRPC `PERMISSION_DENIED`.
    PermissionDenied,
    /// gRPC `UNAUTHENTICATED`.
    Unauthenticated,
    /// gRPC `INTERNAL`: this member failed, not the request.
    Internal,
}

impl StateError {
    /// A value that could not be read back from the scratch files.
    pub fn history_read(e: std::io::Error) -> Self {
        StateError::HistoryRead(e.to_string())
    }

    /// The gRPC code class etcd uses for this error (`rpctypes.ErrGRPC*`).
    pub fn class(&self) -> ErrorClass {
        match self {
            StateError::Compacted | StateError::FutureRevision | StateError::LeaseTtlTooLarge => {
                ErrorClass::OutOfRange
            }
            StateError::LeaseExists
            | StateError::FenceRejected { .. }
            | StateError::SessionExpired
            | StateError::ResponseForgotten => ErrorClass::FailedPrecondition,
            StateError::Lock(e) if e.is_invalid_argument() => ErrorClass::InvalidArgument,
            StateError::Lock(e) if e.is_proof_failure() => ErrorClass::PermissionDenied,
            StateError::FenceNotKv => ErrorClass::InvalidArgument,
            StateError::Lock(LockError::NoSuchLock { .. } | LockError::NoSuchWaiter { .. }) => {
                ErrorClass::NotFound
            }
            StateError::Lock(_) => ErrorClass::FailedPrecondition,
            StateError::KeyNotFound
            | StateError::DuplicateKey
            | StateError::TooManyOps
            | StateError::EmptyKey
            | StateError::ValueProvided
            | StateError::LeaseProvided => ErrorClass::InvalidArgument,
            StateError::LeaseNotFound => ErrorClass::NotFound,
            StateError::NoSpace => ErrorClass::ResourceExhausted,
            StateError::HistoryRead(_) => ErrorClass::Internal,
            StateError::Auth(e) => match e.class() {
                AuthErrorClass::FailedPrecondition => ErrorClass::FailedPrecondition,
                AuthErrorClass::InvalidArgument => ErrorClass::InvalidArgument,
                AuthErrorClass::PermissionDenied => ErrorClass::PermissionDenied,
                AuthErrorClass::Unauthenticated => ErrorClass::Unauthenticated,
            },
        }
    }

    /// True for errors etcd reports as `INVALID_ARGUMENT`.
    pub fn is_invalid_argument(&self) -> bool {
        self.class() == ErrorClass::InvalidArgument
    }

    /// The exact message etcd sends in the gRPC status for this error. It
    /// differs from `Display` only for the mvcc errors, which etcd prefixes
    /// with `etcdserver: ` (`rpctypes.ErrGRPCCompacted`, `ErrGRPCFutureRev`).
    /// etcd clients recognise errors by this string, so send it verbatim.
    pub fn grpc_message(&self) -> std::borrow::Cow<'static, str> {
        let fixed = match self {
            StateError::Compacted => "etcdserver: mvcc: required revision has been compacted",
            StateError::FutureRevision => {
                "etcdserver: mvcc: required revision is a future revision"
            }
            StateError::KeyNotFound => "etcdserver: key not found",
            StateError::DuplicateKey => "etcdserver: duplicate key given in txn request",
            StateError::TooManyOps => "etcdserver: too many operations in txn request",
            StateError::EmptyKey => "etcdserver: key is not provided",
            StateError::ValueProvided => "etcdserver: value is provided",
            StateError::LeaseProvided => "etcdserver: lease is provided",
            StateError::LeaseNotFound => "etcdserver: requested lease not found",
            StateError::LeaseExists => "etcdserver: lease already exists",
            StateError::LeaseTtlTooLarge => "etcdserver: too large lease TTL",
            StateError::NoSpace => "etcdserver: mvcc: database space exceeded",
            StateError::Lock(_)
            | StateError::FenceRejected { .. }
            | StateError::FenceNotKv
            | StateError::Auth(_)
            | StateError::SessionExpired
            | StateError::ResponseForgotten
            | StateError::HistoryRead(_) => return self.to_string().into(),
        };
        fixed.into()
    }
}

/// Why a snapshot could not be read (or, in theory, written). Framing
/// errors (magic, version, length, checksum) come from
/// [`crate::storage::format`], the one owner of the snapshot frame.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SnapshotError {
    #[error("state snapshot: {0}")]
    Frame(#[from] FormatError),
    #[error(
        "state snapshot carries {0} bytes of Raft metadata: it is a member snapshot or backup, \
         not a bare state-machine snapshot"
    )]
    UnexpectedMeta(usize),
    #[error("snapshot body cannot be decoded: {0}")]
    Decode(String),
    #[error("snapshot body is inconsistent: {0}")]
    Invalid(String),
    #[error("state cannot be encoded into a snapshot: {0}")]
    Encode(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_etcd() {
        assert_eq!(
            StateError::Compacted.to_string(),
            "mvcc: required revision has been compacted"
        );
        assert_eq!(
            StateError::FutureRevision.to_string(),
            "mvcc: required revision is a future revision"
        );
        assert_eq!(
            StateError::KeyNotFound.to_string(),
            "etcdserver: key not found"
        );
        assert_eq!(
            StateError::DuplicateKey.to_string(),
            "etcdserver: duplicate key given in txn request"
        );
        assert_eq!(
            StateError::TooManyOps.to_string(),
            "etcdserver: too many operations in txn request"
        );
        assert_eq!(
            StateError::EmptyKey.to_string(),
            "etcdserver: key is not provided"
        );
        assert_eq!(
            StateError::LeaseNotFound.to_string(),
            "etcdserver: requested lease not found"
        );
        assert_eq!(
            StateError::Compacted.grpc_message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(
            StateError::NoSpace.grpc_message(),
            "etcdserver: mvcc: database space exceeded"
        );
        assert_eq!(StateError::NoSpace.class(), ErrorClass::ResourceExhausted);
    }

    #[test]
    fn grpc_message_is_display_outside_mvcc() {
        for e in [
            StateError::KeyNotFound,
            StateError::DuplicateKey,
            StateError::TooManyOps,
            StateError::EmptyKey,
            StateError::ValueProvided,
            StateError::LeaseProvided,
            StateError::LeaseNotFound,
        ] {
            assert_eq!(e.to_string(), e.grpc_message());
        }
        for e in [StateError::Compacted, StateError::FutureRevision] {
            assert_eq!(format!("etcdserver: {e}"), e.grpc_message());
        }
    }

    #[test]
    fn classes() {
        assert_eq!(StateError::Compacted.class(), ErrorClass::OutOfRange);
        assert_eq!(StateError::FutureRevision.class(), ErrorClass::OutOfRange);
        assert_eq!(StateError::LeaseNotFound.class(), ErrorClass::NotFound);
        for e in [
            StateError::KeyNotFound,
            StateError::DuplicateKey,
            StateError::TooManyOps,
            StateError::EmptyKey,
            StateError::ValueProvided,
            StateError::LeaseProvided,
        ] {
            assert!(e.is_invalid_argument(), "{e:?}");
        }
        assert!(!StateError::Compacted.is_invalid_argument());
    }
}
