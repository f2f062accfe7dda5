//! The client library's error type: what went wrong, the gRPC code and
//! message when there was one, and which endpoints were tried.

use tonic::Code;

/// An error of a [`super::Client`] call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No endpoints were given.
    #[error("no endpoints given")]
    NoEndpoints,

    /// An endpoint string could not be parsed.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was refused.
        reason: String,
    },

    /// TLS files could not be read or used.
    #[error("TLS: {0}")]
    Tls(String),

    /// A server answered the request with an error that retrying cannot fix
    /// (or that would be unsafe to retry, e.g. a write that may have been
    /// applied). `message` is the server's message (etcd's wording).
    #[error("{message}")]
    Server {
        /// gRPC status code.
        code: Code,
        /// gRPC status message.
        message: String,
        /// The endpoint that answered.
        endpoint: String,
    },

    /// Every attempt failed with a retryable error (unreachable endpoint, no
    /// leader, ...) until the deadline passed. Holds the last error seen.
    #[error("{message} (endpoints tried: {})", endpoints.join(", "))]
    Unavailable {
        /// gRPC status code of the last failure.
        code: Code,
        /// Message of the last failure.
        message: String,
        /// Every endpoint that was tried, in order of first attempt.
        endpoints: Vec<String>,
    },

    /// An option of the client is not usable (e.g. a malformed client id).
    #[error("invalid client option: {0}")]
    InvalidOption(String),

    /// A session's lease is gone (expired, revoked, or not renewed in time):
    /// whatever it held (locks, candidacies) is no longer held.
    #[error("session lost: {0}")]
    SessionLost(String),

    /// The deadline passed while a request was in flight (for a write, it may
    /// or may not have been applied).
    #[error("context deadline exceeded after {timeout_ms} ms (endpoints tried: {})", endpoints.join(", "))]
    DeadlineExceeded {
        /// The overall deadline, in milliseconds.
        timeout_ms: u128,
        /// Every endpoint that was tried.
        endpoints: Vec<String>,
    },
}

impl ClientError {
    /// The gRPC code of the failure (`InvalidArgument` for bad endpoints).
    pub fn code(&self) -> Code {
        match self {
            ClientError::NoEndpoints
            | ClientError::InvalidEndpoint { .. }
            | ClientError::Tls(_)
            | ClientError::InvalidOption(_) => Code::InvalidArgument,
            ClientError::SessionLost(_) => Code::FailedPrecondition,
            ClientError::Server { code, .. } | ClientError::Unavailable { code, .. } => *code,
            ClientError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
        }
    }

    /// The gRPC message of the failure, or this error's text when there was
    /// no gRPC status.
    pub fn message(&self) -> String {
        match self {
            ClientError::Server { message, .. } | ClientError::Unavailable { message, .. } => {
                message.clone()
            }
            other => other.to_string(),
        }
    }

    /// The endpoints that were tried.
    pub fn endpoints(&self) -> Vec<String> {
        match self {
            ClientError::Server { endpoint, .. } => vec![endpoint.clone()],
            ClientError::Unavailable { endpoints, .. }
            | ClientError::DeadlineExceeded { endpoints, .. } => endpoints.clone(),
            ClientError::NoEndpoints
            | ClientError::InvalidEndpoint { .. }
            | ClientError::Tls(_)
            | ClientError::InvalidOption(_)
            | ClientError::SessionLost(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_accessors() {
        let e = ClientError::Server {
            code: Code::OutOfRange,
            message: "etcdserver: mvcc: required revision has been compacted".into(),
            endpoint: "a:1".into(),
        };
        assert_eq!(
            e.to_string(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(e.code(), Code::OutOfRange);
        assert_eq!(e.endpoints(), vec!["a:1".to_string()]);

        let e = ClientError::Unavailable {
            code: Code::Unavailable,
            message: "etcdserver: no leader".into(),
            endpoints: vec!["a:1".into(), "b:2".into()],
        };
        assert_eq!(
            e.to_string(),
            "etcdserver: no leader (endpoints tried: a:1, b:2)"
        );
        assert_eq!(e.message(), "etcdserver: no leader");

        let e = ClientError::DeadlineExceeded {
            timeout_ms: 5000,
            endpoints: vec!["a:1".into()],
        };
        assert_eq!(e.code(), Code::DeadlineExceeded);
        assert!(e
            .to_string()
            .starts_with("context deadline exceeded after 5000 ms"));
    }
}
