//! One span per client request, with a request id, and slow requests
//! logged.
//!
//! Every request on the client port (gRPC, the JSON gateway, probes) has an
//! id: the client's `x-request-id` header when it sends a sane one (at most
//! 64 characters of `[A-Za-z0-9._-]`), else 16 random hex digits; it is
//! echoed in the answer's `x-request-id` header (gRPC initial metadata). A
//! write a follower forwards carries the id to the leader (`node/forward.rs`
//! puts it in the peer call's metadata), so `grep` of one id across the
//! members' logs shows the whole path.
//!
//! A request that takes longer than the slow threshold to answer (etcd's
//! `--warning-apply-duration`, 100 ms by default) is logged at `warn` with
//! its id, its method (or the member that forwarded it) and its duration.
//! For a stream that is the time to open it.
//!
//! At `WARDEN_LOG=debug` each request also runs inside a
//! `request{id=… method=…}` span (a forwarded one in `forwarded{id=…
//! from=…}` on the leader), so every line logged while serving it carries
//! them, and it is logged when received and when answered. The spans are
//! at `debug` because at `info` they were 3-4 % of a loaded member's CPU
//! (the subscriber formats each span's fields and tracks it on every poll:
//! docs/benchmarks.md, "Request spans only when they are logged").
//!
//! Owns: the id, the span, the slow-request warning. Never: reading or
//! changing the request's body.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use tracing::Instrument;

/// The header (and gRPC metadata key) carrying a request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest client-chosen id kept.
const MAX_ID_LEN: usize = 64;

tokio::task_local! {
    /// The id of the client request this task serves, if any.
    static REQUEST_ID: String;
}

/// The id of the request the current task serves (for a forwarded call to
/// carry on).
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// A client-chosen id, if it is sane enough to log and pass on.
pub fn sane_id(raw: &str) -> Option<&str> {
    (!raw.is_empty()
        && raw.len() <= MAX_ID_LEN
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
    .then_some(raw)
}

fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The id of a request with these headers: the client's, if sane, else a
/// new one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(sane_id)
        .map_or_else(new_id, str::to_owned)
}

/// Runs `fut` as part of request `id` (span and task-local id).
pub fn in_request<F: Future>(
    id: String,
    span: tracing::Span,
    fut: F,
) -> impl Future<Output = F::Output> {
    REQUEST_ID.scope(id, fut.instrument(span))
}

/// Runs `fut`, then logs how long it took: at `warn` over `slow` (with
/// `what` it was, `about` it and the request's id, so that the line stands
/// on its own without the request's span), else at `debug`.
pub async fn timed<F: Future>(
    slow: Duration,
    what: &str,
    about: impl std::fmt::Display,
    fut: F,
) -> F::Output {
    let start = Instant::now();
    let out = fut.await;
    let took = start.elapsed();
    if took > slow {
        tracing::warn!(
            took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            request_id = %current_request_id().unwrap_or_default(),
            "slow {what} {about}: answered after {took:?} (over --warning-apply-duration {slow:?})"
        );
    } else {
        tracing::debug!(
            took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            "{what} answered"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_ids_are_kept() {
        assert_eq!(sane_id("job-7.retry_2"), Some("job-7.retry_2"));
        assert_eq!(sane_id(""), None);
        assert_eq!(sane_id("a b"), None);
        assert_eq!(sane_id("line\nbreak"), None);
        assert_eq!(sane_id(&"x".repeat(65)), None);
        assert_eq!(sane_id(&"x".repeat(64)).map(str::len), Some(64));
        assert_eq!(new_id().len(), 16);
    }

    #[tokio::test]
    async fn the_id_is_visible_inside_the_request_only() {
        assert_eq!(current_request_id(), None);
        let inside = in_request("abc".to_owned(), tracing::Span::none(), async {
            current_request_id()
        })
        .await;
        assert_eq!(inside.as_deref(), Some("abc"));
        assert_eq!(current_request_id(), None);
    }
}
