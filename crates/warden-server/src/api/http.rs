//! Plain HTTP on the client port, next to gRPC (etcd serves both on one
//! port): the probes operators and load balancers use.
//!
//! - `GET /health`: etcd's `{"health":"true","reason":""}` (200) when this
//!   member has no active alarm and a linearizable read through it
//!   succeeds (so a leader exists and a quorum answers it); otherwise
//!   `"false"` with etcd's reason (`ALARM NOSPACE`, `RAFT NO LEADER`, ...)
//!   and 503.
//! - `GET /livez`: 200 `ok` while the process serves requests.
//! - `GET /readyz`: 200 `ok` when the member knows a leader and its applied
//!   state is ready for reads; else 503 with why.
//! - `GET /version`: etcd's `{"etcdserver":"…","etcdcluster":"…"}`.
//! - `GET /metrics`: Prometheus metrics (`metrics.rs`).
//!
//! Owns: these handlers and their JSON. Never: authentication (they reveal
//! no data, as on etcd), or waiting longer than [`HEALTH_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::time::Instant;

use super::metrics::{Metrics, CONTENT_TYPE};
use crate::node::Node;

/// How long `/health` waits for its linearizable read (etcd waits for the
/// request timeout; probes usually give up sooner).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The API version `/version` reports: the one `Status` reports.
const ETCD_VERSION: &str = super::ETCD_API_VERSION;

/// What the handlers share.
#[derive(Clone)]
pub struct Http {
    pub node: Arc<Node>,
    pub metrics: Arc<Metrics>,
}

/// The HTTP routes of the client port.
pub fn router(node: Arc<Node>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/metrics", get(metrics_page))
        .with_state(Http { node, metrics })
}

/// The routes of a metrics-only address (`--listen-metrics-urls`): `/metrics`
/// and `/health`, as etcd serves there; anything else is 404.
pub fn metrics_router(node: Arc<Node>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_page))
        .with_state(Http { node, metrics })
}

async fn metrics_page(State(h): State<Http>) -> Response {
    match h.metrics.render(&h.node) {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The reason `/health` gives, or `None` when healthy.
pub async fn unhealthy_reason(node: &Node) -> Option<String> {
    use warden_core::state::alarm::AlarmType;
    let alarms = node.with_state(|d| {
        let mut names = Vec::new();
        if d.alarms.has(AlarmType::NoSpace) {
            names.push("NOSPACE");
        }
        if !d.alarms.is_empty() && names.is_empty() {
            names.push("UNKNOWN");
        }
        names
    });
    match alarms {
        Ok(a) if !a.is_empty() => return Some(format!("ALARM {}", a.join(","))),
        Ok(_) => {}
        Err(e) => return Some(format!("STATE ERROR: {e}")),
    }
    if node.leader().is_none() {
        return Some("RAFT NO LEADER".to_owned());
    }
    match node.linearize(Instant::now() + HEALTH_TIMEOUT).await {
        Ok(()) => None,
        Err(e) => Some(format!("QGET ERROR: {e}")),
    }
}

async fn health(State(h): State<Http>) -> Response {
    match unhealthy_reason(&h.node).await {
        None => json(
            StatusCode::OK,
            serde_json::json!({"health": "true", "reason": ""}),
        ),
        Some(reason) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": reason}),
        ),
    }
}

async fn livez() -> Response {
    (StatusCode::OK, "ok").into_response()
}

async fn readyz(State(h): State<Http>) -> Response {
    let node = &h.node;
    if node.leader().is_none() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader").into_response();
    }
    match node.with_state(|d| node.ready_for_reads(d)) {
        Ok(true) => (StatusCode::OK, "ok").into_response(),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: applied state behind the leader's commit at start",
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}")).into_response(),
    }
}

async fn version() -> Response {
    json(
        StatusCode::OK,
        serde_json::json!({"etcdserver": ETCD_VERSION, "etcdcluster": ETCD_VERSION}),
    )
}
