//! go-grpc-prometheus's server metrics, which etcd exports and etcd's
//! dashboards chart: `grpc_server_started_total`,
//! `grpc_server_handled_total` (with the status code) and the
//! `grpc_server_handling_seconds` histogram, labelled `grpc_type`
//! (`unary`, `client_stream`, `server_stream`, `bidi_stream`),
//! `grpc_service` (`etcdserverpb.KV`), `grpc_method` (`Put`) and, on
//! `handled`, `grpc_code` (`OK`, `Unavailable`, ... as Go's `codes.Code`
//! prints them).
//!
//! The client port's front service (`front.rs`) counts each gRPC call when
//! its request arrives ([`GrpcMetrics::begin`]), and its outcome when the
//! response says it ([`Call::answered`]): at once for an error answered
//! without a body (grpc-status in the headers), else when the body's
//! trailers pass (so a stream is handled, and timed, when it ends, as in
//! go-grpc-prometheus). A stream the client drops before its trailers
//! counts as `Canceled`.
//!
//! Each method's series are looked up in their families once, on its
//! first call, and kept (`Handles`): a call that succeeds costs no label
//! hashing, only a scan of [`METHODS`] for its path (one that fails looks
//! its code's series up). A call whose request is dropped before it is
//! answered (its deadline passed, its client reset the stream) counts as
//! `Canceled`.
//!
//! Cardinality is bounded: service and method labels come from the fixed
//! table [`METHODS`]; any other path is counted as service and method
//! `unknown`. Requests that are not gRPC (`/metrics`, `/health`) pass
//! through uncounted.
//!
//! Must never: change a request or response, or fail one.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{HeaderMap, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::body::Body;

const UNARY: &str = "unary";
const SERVER_STREAM: &str = "server_stream";
const BIDI_STREAM: &str = "bidi_stream";

/// Every gRPC method of the client port: (service, method, type).
pub const METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", UNARY),
    ("etcdserverpb.KV", "Put", UNARY),
    ("etcdserverpb.KV", "DeleteRange", UNARY),
    ("etcdserverpb.KV", "Txn", UNARY),
    ("etcdserverpb.KV", "Compact", UNARY),
    ("etcdserverpb.Watch", "Watch", BIDI_STREAM),
    ("etcdserverpb.Lease", "LeaseGrant", UNARY),
    ("etcdserverpb.Lease", "LeaseRevoke", UNARY),
    ("etcdserverpb.Lease", "LeaseKeepAlive", BIDI_STREAM),
    ("etcdserverpb.Lease", "LeaseTimeToLive", UNARY),
    ("etcdserverpb.Lease", "LeaseLeases", UNARY),
    ("etcdserverpb.Cluster", "MemberAdd", UNARY),
    ("etcdserverpb.Cluster", "MemberRemove", UNARY),
    ("etcdserverpb.Cluster", "MemberUpdate", UNARY),
    ("etcdserverpb.Cluster", "MemberList", UNARY),
    ("etcdserverpb.Cluster", "MemberPromote", UNARY),
    ("etcdserverpb.Maintenance", "Alarm", UNARY),
    ("etcdserverpb.Maintenance", "Status", UNARY),
    ("etcdserverpb.Maintenance", "Defragment", UNARY),
    ("etcdserverpb.Maintenance", "Hash", UNARY),
    ("etcdserverpb.Maintenance", "HashKV", UNARY),
    ("etcdserverpb.Maintenance", "Snapshot", SERVER_STREAM),
    ("etcdserverpb.Maintenance", "MoveLeader", UNARY),
    ("etcdserverpb.Maintenance", "Downgrade", UNARY),
    ("etcdserverpb.Auth", "AuthEnable", UNARY),
    ("etcdserverpb.Auth", "AuthDisable", UNARY),
    ("etcdserverpb.Auth", "AuthStatus", UNARY),
    ("etcdserverpb.Auth", "Authenticate", UNARY),
    ("etcdserverpb.Auth", "UserAdd", UNARY),
    ("etcdserverpb.Auth", "UserGet", UNARY),
    ("etcdserverpb.Auth", "UserList", UNARY),
    ("etcdserverpb.Auth", "UserDelete", UNARY),
    ("etcdserverpb.Auth", "UserChangePassword", UNARY),
    ("etcdserverpb.Auth", "UserGrantRole", UNARY),
    ("etcdserverpb.Auth", "UserRevokeRole", UNARY),
    ("etcdserverpb.Auth", "RoleAdd", UNARY),
    ("etcdserverpb.Auth", "RoleGet", UNARY),
    ("etcdserverpb.Auth", "RoleList", UNARY),
    ("etcdserverpb.Auth", "RoleDelete", UNARY),
    ("etcdserverpb.Auth", "RoleGrantPermission", UNARY),
    ("etcdserverpb.Auth", "RoleRevokePermission", UNARY),
    ("v3lockpb.Lock", "Lock", UNARY),
    ("v3lockpb.Lock", "Unlock", UNARY),
    ("v3electionpb.Election", "Campaign", UNARY),
    ("v3electionpb.Election", "Proclaim", UNARY),
    ("v3electionpb.Election", "Leader", UNARY),
    ("v3electionpb.Election", "Observe", SERVER_STREAM),
    ("v3electionpb.Election", "Resign", UNARY),
    ("warden.v1.Locks", "Acquire", SERVER_STREAM),
    ("warden.v1.Locks", "Release", UNARY),
    ("warden.v1.Locks", "Inspect", UNARY),
    ("warden.v1.Locks", "WatchLocks", SERVER_STREAM),
    ("warden.v1.Locks", "FencedTxn", UNARY),
    ("grpc.health.v1.Health", "Check", UNARY),
    ("grpc.health.v1.Health", "Watch", SERVER_STREAM),
];

/// The labels of a path not in [`METHODS`].
const UNKNOWN: (&str, &str, &str) = ("unknown", "unknown", UNARY);

/// Go's names of the gRPC status codes (`codes.Code.String()`), by number.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: &'static str,
    grpc_method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_code: &'static str,
}

impl HandledLabels {
    fn of(m: &MethodLabels, code: &'static str) -> Self {
        HandledLabels {
            grpc_type: m.grpc_type,
            grpc_service: m.grpc_service,
            grpc_method: m.grpc_method,
            grpc_code: code,
        }
    }
}

/// go-grpc-prometheus's default buckets (Prometheus's `DefBuckets`).
fn handling_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// The gRPC server metrics of the client port.
pub struct GrpcMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// Per entry of [`METHODS`], then one for [`UNKNOWN`]: its series, once
    /// it has been called.
    methods: Box<[OnceLock<Handles>]>,
}

/// One method's series (clones share the families' values). Each is made
/// when first needed, as the families alone would: a method whose calls
/// never succeeded has no `OK` series.
struct Handles {
    labels: MethodLabels,
    started: Counter,
    handling: OnceLock<Histogram>,
    /// `handled` with `grpc_code="OK"`, the outcome of almost every call.
    ok: OnceLock<Counter>,
}

impl std::fmt::Debug for GrpcMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcMetrics")
    }
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        GrpcMetrics {
            started: Family::default(),
            handled: Family::default(),
            handling: Family::new_with_constructor(handling_histogram),
            methods: (0..=METHODS.len()).map(|_| OnceLock::new()).collect(),
        }
    }
}

/// The index in [`METHODS`] of a request path `/service/method`, or
/// `METHODS.len()` for any other path.
fn method_index(path: &str) -> usize {
    path.strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .and_then(|(s, m)| METHODS.iter().position(|(ks, km, _)| *km == m && *ks == s))
        .unwrap_or(METHODS.len())
}

/// The labels of the method at `index` ([`method_index`]).
fn labels_at(index: usize) -> MethodLabels {
    let (service, method, kind) = METHODS.get(index).copied().unwrap_or(UNKNOWN);
    MethodLabels {
        grpc_type: kind,
        grpc_service: service,
        grpc_method: method,
    }
}

/// The labels of a request path `/service/method`.
#[cfg(test)]
fn method_of(path: &str) -> MethodLabels {
    labels_at(method_index(path))
}

/// The status code in `grpc-status`, by Go's name; `None` when absent.
fn code_in(headers: &HeaderMap) -> Option<&'static str> {
    let v = headers.get("grpc-status")?;
    let n: usize = v.to_str().ok()?.trim().parse().ok()?;
    Some(CODES.get(n).copied().unwrap_or("Unknown"))
}

impl GrpcMetrics {
    /// Registers the three families in `reg` under go-grpc-prometheus's names.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "grpc_server_started",
            "Total number of RPCs started on the server",
            self.started.clone(),
        );
        reg.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            self.handled.clone(),
        );
        reg.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            self.handling.clone(),
        );
    }

    /// The series of the method at `index`, looked up on its first call.
    fn handles(&self, index: usize) -> Option<&Handles> {
        let slot = self.methods.get(index)?;
        Some(slot.get_or_init(|| {
            let labels = labels_at(index);
            Handles {
                started: self.started.get_or_create(&labels).clone(),
                handling: OnceLock::new(),
                ok: OnceLock::new(),
                labels,
            }
        }))
    }

    /// A gRPC call to `path` arrived: counted as started, and timed until
    /// [`Call::answered`] (or its body) says how it ended.
    pub fn begin(self: &Arc<Self>, path: &str) -> Call {
        let method = method_index(path);
        if let Some(h) = self.handles(method) {
            h.started.inc();
        }
        Call(Some(Open {
            metrics: self.clone(),
            method,
            started: Instant::now(),
        }))
    }

    fn finish(&self, method: usize, code: &'static str, started: Instant) {
        let Some(h) = self.handles(method) else {
            return;
        };
        if code == "OK" {
            h.ok.get_or_init(|| {
                let labels = HandledLabels::of(&h.labels, code);
                self.handled.get_or_create(&labels).clone()
            })
            .inc();
        } else {
            self.handled
                .get_or_create(&HandledLabels::of(&h.labels, code))
                .inc();
        }
        h.handling
            .get_or_init(|| self.handling.get_or_create(&h.labels).clone())
            .observe(started.elapsed().as_secs_f64());
    }
}

/// A gRPC call in progress ([`GrpcMetrics::begin`]). Dropped before its
/// outcome is known, it counts as `Canceled`.
pub struct Call(Option<Open>);

struct Open {
    metrics: Arc<GrpcMetrics>,
    method: usize,
    started: Instant,
}

impl Call {
    /// The call's response: counted now if it is an error answered at once
    /// (its status in the headers, "trailers-only"), else its body counts
    /// it when the trailers pass.
    pub fn answered(mut self, resp: Response<Body>) -> Response<Body> {
        if let Some(code) = code_in(resp.headers()) {
            self.close(code);
            return resp;
        }
        resp.map(|inner| Body::new(Metered { inner, call: self }))
    }

    /// Counts the call handled with `code`, once.
    fn close(&mut self, code: &'static str) {
        if let Some(o) = self.0.take() {
            o.metrics.finish(o.method, code, o.started);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The request or its response went away before the call ended.
        self.close("Canceled");
    }
}

/// A response body that counts its call handled when its trailers pass (or
/// when it ends or is dropped without them).
struct Metered {
    inner: Body,
    call: Call,
}

impl http_body::Body for Metered {
    type Data = axum::body::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    let code = code_in(t).unwrap_or("Unknown");
                    self.call.close(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.call.close("Internal"),
            Poll::Ready(None) => self.call.close("Unknown"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_bounded_labels() {
        let m = method_of("/etcdserverpb.KV/Put");
        assert_eq!(
            (m.grpc_service, m.grpc_method, m.grpc_type),
            ("etcdserverpb.KV", "Put", "unary")
        );
        let w = method_of("/etcdserverpb.Watch/Watch");
        assert_eq!(w.grpc_type, "bidi_stream");
        for odd in [
            "/etcdserverpb.KV/Nope",
            "/x",
            "",
            "/a/b/c",
            "/../etc/passwd",
        ] {
            let u = method_of(odd);
            assert_eq!(
                (u.grpc_service, u.grpc_method),
                ("unknown", "unknown"),
                "{odd}"
            );
        }
    }

    #[test]
    fn codes_by_go_name() {
        let mut h = HeaderMap::new();
        assert_eq!(code_in(&h), None);
        h.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(code_in(&h), Some("OK"));
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(code_in(&h), Some("Unavailable"));
        h.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(code_in(&h), Some("Unknown"));
        h.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(code_in(&h), None);
    }

    fn exported(m: &GrpcMetrics) -> String {
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        out
    }

    fn ok_trailers() -> Response<Body> {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        let frames = [Ok::<_, tonic::Status>(http_body::Frame::trailers(t))];
        Response::new(Body::new(http_body_util::StreamBody::new(
            futures::stream::iter(frames),
        )))
    }

    /// The kept series count as the families would: each call once, by its
    /// outcome, and no series for an outcome nobody had.
    #[tokio::test]
    async fn calls_are_counted_by_outcome() {
        use http_body_util::BodyExt;
        let m = Arc::new(GrpcMetrics::default());
        for _ in 0..2 {
            let resp = m.begin("/etcdserverpb.KV/Put").answered(ok_trailers());
            resp.into_body().collect().await.unwrap();
        }
        let refused = Response::new(Body::empty());
        let (mut parts, body) = refused.into_parts();
        parts.headers.insert("grpc-status", "14".parse().unwrap());
        m.begin("/etcdserverpb.KV/Range")
            .answered(Response::from_parts(parts, body));
        // A stream its client dropped.
        drop(m.begin("/etcdserverpb.Watch/Watch").answered(ok_trailers()));
        m.begin("/no.Such/Thing").answered(ok_trailers());
        // A request dropped before it was answered (its deadline passed).
        drop(m.begin("/etcdserverpb.KV/Txn"));
        let page = exported(&m);
        for line in [
            r#"grpc_server_started_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Put"} 2"#,
            r#"grpc_server_handled_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Put",grpc_code="OK"} 2"#,
            r#"grpc_server_handling_seconds_count{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Put"} 2"#,
            r#"grpc_server_handled_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Range",grpc_code="Unavailable"} 1"#,
            r#"grpc_server_handled_total{grpc_type="bidi_stream",grpc_service="etcdserverpb.Watch",grpc_method="Watch",grpc_code="Canceled"} 1"#,
            r#"grpc_server_handled_total{grpc_type="unary",grpc_service="unknown",grpc_method="unknown",grpc_code="Canceled"} 1"#,
            r#"grpc_server_handled_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Txn",grpc_code="Canceled"} 1"#,
        ] {
            assert!(
                page.contains(&format!("{line}\n")),
                "{line} missing from:\n{page}"
            );
        }
        assert!(
            !page.contains(r#"grpc_method="Range",grpc_code="OK""#),
            "{page}"
        );
        assert!(
            !page.contains(r#"grpc_method="Watch",grpc_code="OK""#),
            "{page}"
        );
    }

    /// Every method the client port serves is in the table (a new service
    /// added without it would be counted as `unknown`).
    #[test]
    fn table_has_no_duplicates() {
        let mut seen = std::collections::BTreeSet::new();
        for (s, m, _) in METHODS {
            assert!(seen.insert((s, m)), "{s}/{m} twice");
        }
    }
}
