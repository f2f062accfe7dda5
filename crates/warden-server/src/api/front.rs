//! The client port's front service: what every request on the client port
//! passes first. It gives the request its id (`trace.rs`), counts a gRPC
//! call in the gRPC metrics (`grpc_metrics.rs`), and hands the request to
//! its service by the path's first segment: the gRPC services directly,
//! anything else (the JSON gateway, the probes, `/metrics`, the UI, and
//! unknown paths) to the axum routes of `http.rs`, `gateway.rs` and `ui.rs`.
//!
//! It stands where an axum router with two middleware layers stood: per
//! gRPC call that router matched the path, stored its parameters, cloned
//! and boxed a service for each layer and converted the body twice. Those
//! layers were 10.8 % of a loaded leader's samples outside the handlers,
//! and are 4.9 % now; a read costs the members about a tenth less CPU
//! (docs/benchmarks.md, "A front service for the client port"). The choice
//! itself is a comparison of the service name with at most ten names.
//!
//! Owns: the choice of service, the request id, the call's metrics. Never:
//! reading or changing a request's body.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderValue, Request, Response};
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

use super::grpc_metrics::GrpcMetrics;
use super::trace;
use warden_proto::etcdserverpb as pb;

/// A gRPC service's call: what every `tonic`-generated server answers.
type Answer = tonic::codegen::BoxFuture<Response<Body>, Infallible>;

type KvGrpc = pb::kv_server::KvServer<super::kv::KvService>;
type WatchGrpc = pb::watch_server::WatchServer<super::watch::WatchService>;
type LeaseGrpc = pb::lease_server::LeaseServer<super::lease::LeaseService>;
type MaintenanceGrpc =
    pb::maintenance_server::MaintenanceServer<super::maintenance::MaintenanceService>;
type ClusterGrpc = pb::cluster_server::ClusterServer<super::cluster::ClusterService>;
type AuthGrpc = pb::auth_server::AuthServer<super::auth::AuthService>;
type LockGrpc = warden_proto::v3lockpb::lock_server::LockServer<super::v3lock::LockService>;
type ElectionGrpc =
    warden_proto::v3electionpb::election_server::ElectionServer<super::election::ElectionService>;
type LocksGrpc =
    warden_proto::warden::v1::locks_server::LocksServer<super::native_locks::LocksService>;
type HealthGrpc =
    tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;

/// The gRPC services of the client port.
pub struct Services {
    pub kv: KvGrpc,
    pub watch: WatchGrpc,
    pub lease: LeaseGrpc,
    pub maintenance: MaintenanceGrpc,
    pub cluster: ClusterGrpc,
    pub auth: AuthGrpc,
    pub lock: LockGrpc,
    pub election: ElectionGrpc,
    pub locks: LocksGrpc,
    pub health: HealthGrpc,
}

/// Calls `svc` with `req`. Every `tonic`-generated server is always ready
/// (its `poll_ready` answers `Ready(Ok(()))`), so it is called at once.
fn answer<S>(svc: &S, req: Request<Body>) -> Answer
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = Answer>
        + Clone,
{
    svc.clone().call(req)
}

struct Shared {
    services: Services,
    /// Everything that is not a gRPC service (see the module doc).
    rest: tonic::service::Routes,
    metrics: Arc<GrpcMetrics>,
    /// Requests slower than this are logged at `warn` (`trace::timed`).
    slow: Duration,
}

/// The gRPC services (what [`target`] picks by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Kv,
    Lease,
    Watch,
    Lock,
    Locks,
    Election,
    Maintenance,
    Cluster,
    Auth,
    Health,
}

/// The gRPC services by name, the hot ones first.
const BY_NAME: [(&str, Target); 10] = [
    (<KvGrpc as NamedService>::NAME, Target::Kv),
    (<LeaseGrpc as NamedService>::NAME, Target::Lease),
    (<WatchGrpc as NamedService>::NAME, Target::Watch),
    (<LockGrpc as NamedService>::NAME, Target::Lock),
    (<LocksGrpc as NamedService>::NAME, Target::Locks),
    (<ElectionGrpc as NamedService>::NAME, Target::Election),
    (<MaintenanceGrpc as NamedService>::NAME, Target::Maintenance),
    (<ClusterGrpc as NamedService>::NAME, Target::Cluster),
    (<AuthGrpc as NamedService>::NAME, Target::Auth),
    (<HealthGrpc as NamedService>::NAME, Target::Health),
];

/// The gRPC service named `service` (the first segment of a path), if any.
fn target(service: &str) -> Option<Target> {
    BY_NAME.iter().find(|(n, _)| *n == service).map(|(_, t)| *t)
}

impl Shared {
    /// The answer to `req` of the gRPC service its path names, else of
    /// `rest`.
    fn dispatch(&self, req: Request<Body>) -> Answer {
        let s = &self.services;
        match service_of(req.uri().path()).and_then(target) {
            Some(Target::Kv) => answer(&s.kv, req),
            Some(Target::Lease) => answer(&s.lease, req),
            Some(Target::Watch) => answer(&s.watch, req),
            Some(Target::Lock) => answer(&s.lock, req),
            Some(Target::Locks) => answer(&s.locks, req),
            Some(Target::Election) => answer(&s.election, req),
            Some(Target::Maintenance) => answer(&s.maintenance, req),
            Some(Target::Cluster) => answer(&s.cluster, req),
            Some(Target::Auth) => answer(&s.auth, req),
            Some(Target::Health) => answer(&s.health, req),
            None => self.rest_answer(req),
        }
    }

    /// `rest`'s answer. Routes (an axum router) is always ready, as
    /// `tonic`'s own server relies on.
    fn rest_answer(&self, req: Request<Body>) -> Answer {
        Box::pin(self.rest.clone().call(req))
    }
}

/// The service (see the module doc). Cloned for every request (by hyper),
/// which costs one reference count.
#[derive(Clone)]
pub struct Front(Arc<Shared>);

impl Front {
    pub fn new(
        services: Services,
        rest: tonic::service::Routes,
        metrics: Arc<GrpcMetrics>,
        slow: Duration,
    ) -> Self {
        Front(Arc::new(Shared {
            services,
            rest: rest.prepare(),
            metrics,
            slow,
        }))
    }
}

/// The service name of a path `/service/method`.
fn service_of(path: &str) -> Option<&str> {
    path.strip_prefix('/')?.split_once('/').map(|(s, _)| s)
}

fn is_grpc(req: &Request<Body>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

impl Service<Request<Body>> for Front {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let shared = &self.0;
        let id = trace::request_id(req.headers());
        // Built only at `debug` (the macro evaluates no field otherwise).
        let span = tracing::debug_span!("request", id = %id, method = %req.uri().path());
        let uri = req.uri().clone();
        let call = is_grpc(&req).then(|| shared.metrics.begin(uri.path()));
        let answer = shared.dispatch(req);
        // Marked sensitive so HTTP/2 sends it as a literal never indexed:
        // an id differs on every response, and indexing it would push the
        // connection's repeated headers (`content-type`, `grpc-status`) out
        // of both ends' HPACK tables, to be sent in full again.
        let echo = HeaderValue::from_str(&id).ok().map(|mut v| {
            v.set_sensitive(true);
            v
        });
        let slow = shared.slow;
        Box::pin(trace::in_request(id, span, async move {
            tracing::debug!("request received");
            let out = trace::timed(slow, "request", uri.path(), answer).await;
            out.map(|mut r| {
                if let Some(v) = echo {
                    r.headers_mut().insert(trace::REQUEST_ID_HEADER, v);
                }
                match call {
                    Some(call) => call.answered(r),
                    None => r,
                }
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every service the gRPC metrics know (every method the client port
    /// serves) has a target: a service added to [`Services`] but not to
    /// [`target`] would answer 404.
    #[test]
    fn every_served_service_has_a_target() {
        for (service, method, _) in super::super::grpc_metrics::METHODS {
            assert!(target(service).is_some(), "{service}/{method}");
        }
        assert_eq!(target("etcdserverpb.KV"), Some(Target::Kv));
        assert_eq!(target("grpc.health.v1.Health"), Some(Target::Health));
        assert_eq!(target("etcdserverpb.kv"), None);
        assert_eq!(target("v3"), None);
    }

    #[test]
    fn the_service_is_the_first_segment_of_the_path() {
        assert_eq!(service_of("/etcdserverpb.KV/Put"), Some("etcdserverpb.KV"));
        assert_eq!(service_of("/etcdserverpb.KV/"), Some("etcdserverpb.KV"));
        assert_eq!(service_of("/v3/kv/range"), Some("v3"));
        assert_eq!(service_of("/health"), None);
        assert_eq!(service_of("etcdserverpb.KV/Put"), None);
        assert_eq!(service_of(""), None);
    }
}
