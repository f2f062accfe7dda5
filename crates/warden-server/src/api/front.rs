//! The client port's front service: what every request on the client port
//! passes first. It gives the request its id (`trace.rs`), counts a gRPC
//! call in the gRPC metrics (`grpc_metrics.rs`), and hands the request to
//! its service by the path's first segment: the gRPC services directly,
//! anything else (the JSON gateway, the probes, `/metrics`, the UI, and
//! unknown paths) to the axum routes of `http.rs`, `gateway.rs` and `ui.rs`.
//!
//! It stands where an axum router with two middleware layers stood: per
//! gRPC call that router matched the path, stored its parameters, cloned
//! and boxed a service for each layer and converted the body twice, about
//! 5 % of a loaded member's CPU for a choice made by one string comparison
//! (docs/benchmarks.md, "A front service for the client port").
//!
//! Owns: the choice of service, the request id, the call's metrics. Never:
//! reading or changing a request's body.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
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
type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// The gRPC services of the client port.
pub struct Services {
    pub kv: pb::kv_server::KvServer<super::kv::KvService>,
    pub watch: pb::watch_server::WatchServer<super::watch::WatchService>,
    pub lease: pb::lease_server::LeaseServer<super::lease::LeaseService>,
    pub maintenance:
        pb::maintenance_server::MaintenanceServer<super::maintenance::MaintenanceService>,
    pub cluster: pb::cluster_server::ClusterServer<super::cluster::ClusterService>,
    pub auth: pb::auth_server::AuthServer<super::auth::AuthService>,
    pub lock: warden_proto::v3lockpb::lock_server::LockServer<super::v3lock::LockService>,
    pub election: warden_proto::v3electionpb::election_server::ElectionServer<
        super::election::ElectionService,
    >,
    pub locks:
        warden_proto::warden::v1::locks_server::LocksServer<super::native_locks::LocksService>,
    pub health: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
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

impl Shared {
    /// The answer to `req` of the gRPC service its path names, else of
    /// `rest`.
    fn dispatch(&self, req: Request<Body>) -> Answer {
        fn is<S: NamedService>(name: &str, _: &S) -> bool {
            name == S::NAME
        }
        let s = &self.services;
        let Some(name) = service_of(req.uri().path()) else {
            return self.rest_answer(req);
        };
        // The hot services first.
        if is(name, &s.kv) {
            answer(&s.kv, req)
        } else if is(name, &s.lease) {
            answer(&s.lease, req)
        } else if is(name, &s.watch) {
            answer(&s.watch, req)
        } else if is(name, &s.lock) {
            answer(&s.lock, req)
        } else if is(name, &s.locks) {
            answer(&s.locks, req)
        } else if is(name, &s.election) {
            answer(&s.election, req)
        } else if is(name, &s.maintenance) {
            answer(&s.maintenance, req)
        } else if is(name, &s.cluster) {
            answer(&s.cluster, req)
        } else if is(name, &s.auth) {
            answer(&s.auth, req)
        } else if is(name, &s.health) {
            answer(&s.health, req)
        } else {
            self.rest_answer(req)
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
