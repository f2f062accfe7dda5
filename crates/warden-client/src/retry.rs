//! Retry classification: given a failed attempt's gRPC status and whether the
//! request is a read or a write, decide whether the client may try again.
//!
//! The rule that must never break: a write is retried only when the failure
//! guarantees it was not applied (the connection was never made, or the
//! member refused it for lack of a leader before proposing it). Anything
//! else — a timeout, a lost leader mid-proposal, a connection reset after
//! the request was sent — goes back to the caller.

use std::error::Error as _;

use tonic::{Code, Status};

/// etcd's message when a member has no leader (rejected before proposing).
pub const MSG_NO_LEADER: &str = "etcdserver: no leader";
/// etcd's message when a proposal or read index waited too long.
pub const MSG_TIMED_OUT: &str = "etcdserver: request timed out";

/// Whether a request changes state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Range, status, member list, read-only txn: safe to repeat.
    Read,
    /// Put, delete, txn with writes, compaction: repeat only if not applied.
    Write,
}

/// What a failed attempt tells us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made: the request never left this process.
    NotSent,
    /// The member answered that it has no leader, before proposing anything.
    NoLeader,
    /// A transient failure after the request may have reached a server
    /// (timeout, leader change, connection lost mid-call, ...).
    Transient,
    /// The server's definitive answer (bad request, compacted revision, ...).
    Fatal,
}

/// Classifies a failed attempt.
pub fn classify(status: &Status) -> Failure {
    if has_connect_error(status) {
        return Failure::NotSent;
    }
    if status.code() == Code::Unavailable {
        if status.message() == MSG_NO_LEADER {
            return Failure::NoLeader;
        }
        return Failure::Transient;
    }
    // A status produced locally from a transport error (it has a source
    // error) rather than sent by the server, e.g. a connection reset, or a
    // connection closed under a call (hyper reports that as cancelled).
    if status.source().is_some()
        && matches!(
            status.code(),
            Code::Unknown | Code::Internal | Code::Cancelled
        )
    {
        return Failure::Transient;
    }
    Failure::Fatal
}

/// Whether a request of `kind` that failed with `failure` may be retried.
pub fn may_retry(failure: Failure, kind: OpKind) -> bool {
    match failure {
        Failure::NotSent | Failure::NoLeader => true,
        Failure::Transient => kind == OpKind::Read,
        Failure::Fatal => false,
    }
}

/// The status message plus, for statuses made locally from a transport
/// error, the causes tonic keeps as sources (so "tcp connect error" becomes
/// "tcp connect error: Connection refused (os error 111)").
pub fn describe(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut source = status.source();
    while let Some(err) = source {
        let part = err.to_string();
        if !part.is_empty() && !text.contains(&part) {
            if text.is_empty() {
                text = part;
            } else {
                text = format!("{text}: {part}");
            }
        }
        source = err.source();
    }
    text
}

/// Whether the status was caused by failing to connect (tonic wraps every
/// connector error in [`tonic::ConnectError`] and keeps it as the source).
fn has_connect_error(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_refused() -> Status {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        Status::from_error(Box::new(tonic::ConnectError(Box::new(io))))
    }

    #[test]
    fn connect_errors_are_not_sent() {
        let s = connect_refused();
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(classify(&s), Failure::NotSent);
        assert!(may_retry(Failure::NotSent, OpKind::Write));
        assert!(may_retry(Failure::NotSent, OpKind::Read));
    }

    #[test]
    fn describe_adds_transport_causes() {
        let s = connect_refused();
        assert_eq!(describe(&s), "refused");
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let wrapped = tonic::ConnectError(Box::new(std::io::Error::other(WithSource(io))));
        let s = Status::from_error(Box::new(wrapped));
        assert_eq!(describe(&s), "tcp connect error: Connection refused");
        assert_eq!(describe(&Status::unavailable(MSG_NO_LEADER)), MSG_NO_LEADER);
    }

    /// An error shaped like hyper-util's: a fixed message and a cause.
    #[derive(Debug)]
    struct WithSource(std::io::Error);
    impl std::fmt::Display for WithSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("tcp connect error")
        }
    }
    impl std::error::Error for WithSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn no_leader_is_safe_for_writes() {
        let s = Status::unavailable(MSG_NO_LEADER);
        assert_eq!(classify(&s), Failure::NoLeader);
        assert!(may_retry(classify(&s), OpKind::Write));
    }

    #[test]
    fn ambiguous_unavailable_only_retries_reads() {
        for msg in [
            MSG_TIMED_OUT,
            "etcdserver: leader changed",
            "etcdserver: server stopped",
        ] {
            let s = Status::unavailable(msg);
            assert_eq!(classify(&s), Failure::Transient, "{msg}");
            assert!(may_retry(classify(&s), OpKind::Read), "{msg}");
            assert!(!may_retry(classify(&s), OpKind::Write), "{msg}");
        }
    }

    #[test]
    fn local_transport_errors_are_transient() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let s = Status::from_error(Box::new(io));
        assert_eq!(s.code(), Code::Unknown);
        assert_eq!(classify(&s), Failure::Transient);
        assert!(!may_retry(classify(&s), OpKind::Write));
    }

    /// A member killed under a call: the connection closes and hyper
    /// cancels the call. A read is asked again elsewhere; a write is not
    /// (it may have been applied).
    #[test]
    fn a_connection_closed_under_a_call_is_transient() {
        let mut s = Status::cancelled("operation was canceled: connection closed");
        s.set_source(std::sync::Arc::new(std::io::Error::other(
            "connection closed",
        )));
        assert_eq!(classify(&s), Failure::Transient);
        assert!(may_retry(classify(&s), OpKind::Read));
        assert!(!may_retry(classify(&s), OpKind::Write));
        // The same code sent by a server is its answer.
        assert_eq!(classify(&Status::cancelled("canceled")), Failure::Fatal);
    }

    #[test]
    fn server_answers_are_fatal() {
        for s in [
            Status::invalid_argument("etcdserver: key is not provided"),
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
            Status::not_found("etcdserver: requested lease not found"),
            Status::unknown("something"),
            Status::deadline_exceeded("context deadline exceeded"),
        ] {
            assert_eq!(classify(&s), Failure::Fatal, "{s:?}");
            assert!(!may_retry(classify(&s), OpKind::Read));
        }
    }
}
