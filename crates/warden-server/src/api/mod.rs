//! The client-facing gRPC API: etcd v3 services (`kv`, `maintenance`,
//! `cluster`, `watch`, `lease`, `v3lock` (`v3lock`), `v3election`
//! (`election`), `grpc.health.v1`) and warden's own `warden.v1.Locks`
//! (`native_locks`), and etcd's `Auth` (`auth`), served on the client
//! address. Each service asks the auth gate (`auth::Gate`) who is calling
//! and whether they may, translates protobuf to state-machine types
//! (`convert`), calls the `Node`'s narrow API, and maps errors once
//! (`error`). Writes carry their caller into the log (`Request::KvAs`) and
//! are checked again when applied; writes with session metadata (`once`)
//! are applied at most once (`Request::KvOnce`).
//!
//! Must never: touch Raft or storage directly; everything goes through `Node`.

pub mod auth;
pub mod cluster;
pub mod convert;
pub mod election;
pub mod error;
pub mod front;
pub mod gateway;
pub mod grpc_metrics;
pub mod http;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod metrics;
pub mod native_locks;
pub mod once;
pub mod process_metrics;
pub mod quota;
pub mod recipes;
pub mod resp;
pub mod trace;
pub mod ui;
pub mod v3lock;
pub mod watch;

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::node::Node;
use warden_proto::etcdserverpb as pb;

/// The etcd API version warden speaks, reported in `Status`.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// etcd's gRPC overhead allowance on top of the request limit.
const GRPC_OVERHEAD: usize = 512 * 1024;

/// The header every response carries.
pub fn header(node: &Node, revision: i64) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id: node.cluster_id(),
        member_id: node.id(),
        revision,
        raft_term: node.term(),
    }
}

/// Why a proposal failed: the node could not get it applied, or the state
/// machine refused it (then nothing changed).
pub enum Proposal {
    Node(crate::node::NodeError),
    State(warden_core::state::StateError),
    Internal(&'static str),
}

impl From<Proposal> for tonic::Status {
    fn from(p: Proposal) -> Self {
        match p {
            Proposal::Node(e) => error::node_status(e),
            Proposal::State(e) => error::state_status(e),
            Proposal::Internal(m) => tonic::Status::internal(m),
        }
    }
}

/// Proposes a state-machine command and returns the revision after it and
/// its result.
pub async fn propose(
    node: &Node,
    timeout: Option<std::time::Duration>,
    caller: &auth::Caller,
    cmd: warden_core::state::Command,
) -> Result<(i64, warden_core::state::CommandResult), Proposal> {
    propose_once(node, timeout, caller, cmd, None).await
}

/// [`propose`], applied at most once per client session `tag` when given
/// (`Request::KvOnce`, see `once`): a retry with the same tag answers the
/// first attempt's revision and result. Only for requests that make exactly
/// one proposal of the client's.
pub async fn propose_once(
    node: &Node,
    timeout: Option<std::time::Duration>,
    caller: &auth::Caller,
    cmd: warden_core::state::Command,
    tag: Option<warden_core::state::session::SessionTag>,
) -> Result<(i64, warden_core::state::CommandResult), Proposal> {
    // Checked here first against this member's auth state, so a caller
    // without the permission costs no log entry (and a refused compaction
    // no prepared copy); checked again when applied, which decides.
    let allowed = node
        .with_state(|d| d.auth.check_command(caller.user(), &cmd, &d.kv))
        .map_err(Proposal::Node)?;
    allowed.map_err(|e| Proposal::State(e.into()))?;
    quota::check(node, &cmd, timeout)
        .await
        .map_err(Proposal::State)?;
    let deadline = node.deadline(timeout);
    let user = caller.0.clone();
    let cmd = std::sync::Arc::new(cmd);
    let req = match tag {
        Some(tag) => crate::node::types::Request::KvOnce { user, cmd, tag },
        None => crate::node::types::Request::KvAs { user, cmd },
    };
    let resp = node.write(req, deadline).await.map_err(Proposal::Node)?;
    match resp.result {
        Ok(Some(r)) => Ok((resp.revision, r)),
        Ok(None) => Err(Proposal::Internal("command applied without a result")),
        Err(e) => Err(Proposal::State(e)),
    }
}

/// The state machine answered with a result of another kind than asked.
pub fn unexpected() -> tonic::Status {
    tonic::Status::internal("state machine answered with the wrong result kind")
}

/// Serves the client API on `listener` (over TLS with `tls`) until
/// `shutdown` resolves; `metrics` ([`metrics::Metrics::start`]) is served
/// at `/metrics` and counts the gRPC calls.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    node: Arc<Node>,
    metrics: Arc<metrics::Metrics>,
    listener: TcpListener,
    max_request_bytes: usize,
    tls: Option<Arc<crate::tls::ServerTls>>,
    auth_settings: auth::AuthSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let gate = auth::Gate::new(node.clone(), auth_settings);
    let limit = max_request_bytes + GRPC_OVERHEAD;
    let reporter = tonic_health::server::HealthReporter::new();
    let health = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
    );
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let kv = pb::kv_server::KvServer::new(kv::KvService {
        node: node.clone(),
        gate: gate.clone(),
        max_request_bytes,
    })
    .max_decoding_message_size(limit);
    let maintenance = pb::maintenance_server::MaintenanceServer::new(
        maintenance::MaintenanceService::new(node.clone(), gate.clone()),
    )
    .max_decoding_message_size(limit);
    let cluster = pb::cluster_server::ClusterServer::new(cluster::ClusterService {
        node: node.clone(),
        gate: gate.clone(),
    })
    .max_decoding_message_size(limit);
    let watch = pb::watch_server::WatchServer::new(watch::WatchService {
        node: node.clone(),
        gate: gate.clone(),
        max_response_bytes: max_request_bytes,
        progress_interval: watch::progress_interval(),
    })
    .max_decoding_message_size(limit);
    let lease = pb::lease_server::LeaseServer::new(lease::LeaseService {
        node: node.clone(),
        gate: gate.clone(),
    })
    .max_decoding_message_size(limit);
    let lock = warden_proto::v3lockpb::lock_server::LockServer::new(v3lock::LockService {
        node: node.clone(),
        gate: gate.clone(),
        max_request_bytes,
    })
    .max_decoding_message_size(limit);
    let election = warden_proto::v3electionpb::election_server::ElectionServer::new(
        election::ElectionService {
            node: node.clone(),
            gate: gate.clone(),
            max_request_bytes,
        },
    )
    .max_decoding_message_size(limit);
    let locks =
        warden_proto::warden::v1::locks_server::LocksServer::new(native_locks::LocksService {
            node: node.clone(),
            gate: gate.clone(),
            max_request_bytes,
        })
        .max_decoding_message_size(limit);
    // HTTP/2 limits (etcd's `--max-concurrent-streams` and
    // `--grpc-keepalive-*`): bound the streams one connection may hold, and
    // ping idle connections so dead ones (and the watchers on them) go.
    let http2 = node.client_http2();
    // HTTP/1.1 too, for the probes of `http.rs` (`curl`, load balancers);
    // gRPC clients speak HTTP/2 on the same port, told apart per connection.
    let gateway = Arc::new(gateway::Gateway {
        gate: gate.clone(),
        kv: kv::KvService {
            node: node.clone(),
            gate: gate.clone(),
            max_request_bytes,
        },
        lease: lease::LeaseService {
            node: node.clone(),
            gate: gate.clone(),
        },
        cluster: cluster::ClusterService {
            node: node.clone(),
            gate: gate.clone(),
        },
        maintenance: maintenance::MaintenanceService::new(node.clone(), gate.clone()),
        auth: auth::AuthService { gate: gate.clone() },
        lock: v3lock::LockService {
            node: node.clone(),
            gate: gate.clone(),
            max_request_bytes,
        },
        election: election::ElectionService {
            node: node.clone(),
            gate: gate.clone(),
            max_request_bytes,
        },
        watch: watch::WatchService {
            node: node.clone(),
            gate: gate.clone(),
            max_response_bytes: max_request_bytes,
            progress_interval: watch::progress_interval(),
        },
        max_body: limit.saturating_mul(gateway::JSON_EXPANSION),
    });
    // gRPC calls go straight to their service; the rest (probes, the JSON
    // gateway, the UI) through axum's router (`front.rs`).
    let rest = tonic::service::Routes::from(
        http::router(node.clone(), metrics.clone())
            .merge(gateway::router(gateway))
            .merge(ui::router(node.clone(), gate.clone())),
    );
    let services = front::Services {
        kv,
        watch,
        lease,
        maintenance,
        cluster,
        auth: pb::auth_server::AuthServer::new(auth::AuthService { gate })
            .max_decoding_message_size(limit),
        lock,
        election,
        locks,
        health,
    };
    let front = front::Front::new(services, rest, metrics.grpc(), node.slow_request());
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .tcp_nodelay(true)
        .max_concurrent_streams(http2.max_concurrent_streams)
        .http2_keepalive_interval(http2.keepalive_interval)
        .http2_keepalive_timeout(Some(http2.keepalive_timeout));
    crate::tls::serve(server, front, listener, tls, "client", shutdown).await?;
    Ok(())
}

/// Serves `/metrics` and `/health` only (etcd's `--listen-metrics-urls`),
/// plain HTTP on `listener`, until `shutdown` resolves.
pub async fn serve_metrics(
    node: Arc<Node>,
    metrics: Arc<metrics::Metrics>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let routes = tonic::service::Routes::from(http::metrics_router(node, metrics)).prepare();
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .tcp_nodelay(true);
    crate::tls::serve(server, routes, listener, None, "metrics", shutdown).await?;
    Ok(())
}
