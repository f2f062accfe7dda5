//! `warden server` and `warden dev`: flags, configuration file and start-up of
//! a member; and the local three-member cluster for trying warden out.
//!
//! Owns: turning flags, environment and the `--config` file into a validated
//! `NodeConfig`, with one-line errors that name the flag. Addresses are
//! parsed by the client library's endpoint parser
//! ([`warden_client::parse_endpoint`]); this file must never grow an address
//! parser of its own, nor start a member from a configuration it has not
//! validated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// etcd's default `--warning-apply-duration`.
const DEFAULT_WARNING_APPLY_DURATION: Duration = Duration::from_millis(100);

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde::Deserialize;

use warden_client::{parse_endpoint, parse_endpoints, ClientError};
use warden_server::api::auth::AuthSettings;
use warden_server::node::auto_compact::AutoCompaction;
use warden_server::node::lessor;
use warden_server::node::{Http2Limits, WatchLimits};
use warden_server::node::{Node, NodeConfig};
use warden_server::tls::{ServerTls, TlsFiles};

/// Flags of `warden server`. Each is also read from `WARDEN_<FLAG>` and from
/// the optional TOML file given with `--config` (same names, kebab-case);
/// a flag beats the environment, which beats the file, which beats the default.
#[derive(Args, Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerArgs {
    /// TOML file with any of the settings below.
    #[arg(long, env = "WARDEN_CONFIG")]
    #[serde(skip)]
    pub config: Option<std::path::PathBuf>,
    /// Member name, unique in the cluster [default: default].
    #[arg(long, env = "WARDEN_NAME")]
    pub name: Option<String>,
    /// Data directory [default: ./NAME.data, or ./warden.data for "default"].
    #[arg(long, env = "WARDEN_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Address serving clients (etcd v3 gRPC API) [default: 127.0.0.1:2379].
    #[arg(long, env = "WARDEN_CLIENT_ADDR")]
    pub client_addr: Option<String>,
    /// Address serving peers [default: 127.0.0.1:2380].
    #[arg(long, env = "WARDEN_PEER_ADDR")]
    pub peer_addr: Option<String>,
    /// Initial members as name=peer-addr,... [default: NAME=PEER-ADDR].
    #[arg(long, env = "WARDEN_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Lower bound of the randomized election timeout [default: 1000].
    #[arg(long, env = "WARDEN_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    /// Upper bound of the randomized election timeout [default: 2000].
    #[arg(long, env = "WARDEN_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    /// Leader heartbeat interval [default: 100].
    #[arg(long, env = "WARDEN_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Fewest log entries between state-machine snapshots; with a large
    /// state, half as many as it has live keys, up to 100000 [default: 10000].
    #[arg(long, env = "WARDEN_SNAPSHOT_ENTRIES")]
    pub snapshot_entries: Option<u64>,
    /// Server-side deadline of a request without its own [default: 5000].
    #[arg(long, env = "WARDEN_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Largest request accepted, in bytes [default: 1572864, like etcd].
    #[arg(long, env = "WARDEN_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Join a running cluster through any member's client address (a
    /// comma-separated list is fine): the member is added as a learner and
    /// promoted once caught up. Only needed the first time; the data dir
    /// remembers its membership.
    #[arg(long, env = "WARDEN_JOIN")]
    pub join: Option<String>,
    /// Stay a learner after joining (promote with `warden member promote`)
    /// [default: false].
    #[arg(long, env = "WARDEN_NO_AUTO_PROMOTE", num_args = 0..=1, default_missing_value = "true")]
    pub no_auto_promote: Option<bool>,
    /// Reach some peers through other addresses, as PEER-ADDR=VIA,...
    /// (a proxy or NAT between members; the tests put a fault-injecting
    /// proxy there).
    #[arg(long, env = "WARDEN_PEER_ROUTES")]
    pub peer_routes: Option<String>,
    /// Bytes of events queued in the member for one watcher that is not
    /// keeping up; past it the watcher is cancelled with a reason
    /// [default: 16777216 (16 MiB)].
    #[arg(long, env = "WARDEN_WATCH_QUEUE_BYTES")]
    pub watch_queue_bytes: Option<usize>,
    /// Bytes of events queued for all watchers of the member (each applied
    /// entry counted once); past it the watchers holding the most are
    /// cancelled [default: 268435456 (256 MiB)].
    #[arg(long, env = "WARDEN_WATCH_PENDING_BYTES")]
    pub watch_pending_bytes: Option<usize>,
    /// Most watchers on one Watch stream; more are refused with a reason
    /// [default: 10000].
    #[arg(long, env = "WARDEN_MAX_WATCHERS_PER_STREAM")]
    pub max_watchers_per_stream: Option<usize>,
    /// Most concurrent streams (RPCs) per client connection (etcd's flag;
    /// clients wait for a free stream beyond it) [default: 256].
    #[arg(long, env = "WARDEN_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Minimum interval a client should wait between pings (etcd's flag;
    /// accepted for compatibility, not enforced) [default: 5s].
    #[arg(long, env = "WARDEN_GRPC_KEEPALIVE_MIN_TIME")]
    pub grpc_keepalive_min_time: Option<String>,
    /// Ping a client connection idle this long, 0 to disable (etcd's flag)
    /// [default: 2h].
    #[arg(long, env = "WARDEN_GRPC_KEEPALIVE_INTERVAL")]
    pub grpc_keepalive_interval: Option<String>,
    /// Close a client connection whose ping is unanswered this long
    /// (etcd's flag) [default: 20s].
    #[arg(long, env = "WARDEN_GRPC_KEEPALIVE_TIMEOUT")]
    pub grpc_keepalive_timeout: Option<String>,
    /// Storage quota in bytes, as etcd's flag: a write that would take the
    /// state size (`Status.db_size`) to it raises the NOSPACE alarm and is
    /// refused ("etcdserver: mvcc: database space exceeded"); 0 means the
    /// default, a negative value disables the quota [default: 2147483648].
    #[arg(long, env = "WARDEN_QUOTA_BACKEND_BYTES", allow_hyphen_values = true)]
    pub quota_backend_bytes: Option<i64>,
    /// Auto-compaction mode, as etcd's flag: `periodic` (keep the history of
    /// the last RETENTION) or `revision` (keep the last RETENTION
    /// revisions) [default: periodic].
    #[arg(long, env = "WARDEN_AUTO_COMPACTION_MODE")]
    pub auto_compaction_mode: Option<String>,
    /// Auto-compaction retention, as etcd's flag: for `periodic` a duration
    /// (`30m`, `1h30m`; a bare number is hours), for `revision` a number of
    /// revisions; 0 turns auto-compaction off [default: 0].
    #[arg(long, env = "WARDEN_AUTO_COMPACTION_RETENTION")]
    pub auto_compaction_retention: Option<String>,
    /// Certificate (PEM) of the client port: with --key-file, clients
    /// connect over TLS (etcd's flag).
    #[arg(long, env = "WARDEN_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file (etcd's flag).
    #[arg(long, env = "WARDEN_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to; also what
    /// this member trusts when it joins through a member's client port
    /// (etcd's flag).
    #[arg(long, env = "WARDEN_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate chaining to --trusted-ca-file (etcd's
    /// flag) [default: false].
    #[arg(long, env = "WARDEN_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: Option<bool>,
    /// Certificate (PEM) of the peer port, also presented when dialing
    /// peers: with --peer-key-file, members talk over TLS (etcd's flag).
    #[arg(long, env = "WARDEN_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --peer-cert-file (etcd's flag).
    #[arg(long, env = "WARDEN_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA certificates (PEM) peers' certificates must chain to (etcd's flag).
    #[arg(long, env = "WARDEN_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require peers to present a certificate chaining to
    /// --peer-trusted-ca-file (etcd's flag) [default: false].
    #[arg(long, env = "WARDEN_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub peer_client_cert_auth: Option<bool>,
    /// How often the leader records the remaining TTL of each lease whose
    /// remaining TTL is longer than this, so a new leader resumes its
    /// countdown rather than restarting it (etcd's flag; also accepted as
    /// `--experimental-lease-checkpoint-interval`) [default: 5m].
    #[arg(
        long,
        env = "WARDEN_LEASE_CHECKPOINT_INTERVAL",
        alias = "experimental-lease-checkpoint-interval"
    )]
    #[serde(alias = "experimental-lease-checkpoint-interval")]
    pub lease_checkpoint_interval: Option<String>,
    /// Requests slower than this are logged with their duration and
    /// request id (etcd's flag) [default: 100ms].
    #[arg(long, env = "WARDEN_WARNING_APPLY_DURATION")]
    pub warning_apply_duration: Option<String>,
    /// Log lines as `text` or `json` (one object per line, as etcd logs)
    /// [default: text]. Read from the command line or environment only.
    #[arg(long, env = "WARDEN_LOG_FORMAT", value_parser = ["text", "json"])]
    #[serde(skip)]
    pub log_format: Option<String>,
    /// Kind of auth token (etcd's flag): `simple` (warden's signed simple
    /// tokens; etcd's options after a comma are accepted and ignored).
    /// `jwt` is not supported [default: simple].
    #[arg(long, env = "WARDEN_AUTH_TOKEN")]
    pub auth_token: Option<String>,
    /// Seconds a token from `Authenticate` stays good (etcd's flag)
    /// [default: 300].
    #[arg(long, env = "WARDEN_AUTH_TOKEN_TTL")]
    pub auth_token_ttl: Option<u64>,
    /// bcrypt cost of password hashes, 4 to 31 (etcd's flag) [default: 10].
    #[arg(long, env = "WARDEN_BCRYPT_COST")]
    pub bcrypt_cost: Option<u32>,
    /// Extra addresses serving only `/metrics` and `/health`, plain HTTP,
    /// as http://HOST:PORT,... (etcd's flag; `https://` is refused)
    /// [default: none; the client port serves them too].
    #[arg(long, env = "WARDEN_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,
    /// Address serving Redis's protocol (RESP2/3, redis-cli and Redis
    /// client libraries) over the same key space; see docs/resp.md
    /// [default: off].
    #[arg(long, env = "WARDEN_RESP_ADDR")]
    pub resp_addr: Option<String>,
}

/// Flags of `warden dev`.
#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// Number of members.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Directory holding each member's data directory.
    #[arg(long, default_value = "warden-dev")]
    pub dir: std::path::PathBuf,
    /// Serve clients and peers over TLS with client certificates required,
    /// using a throwaway CA made in DIR/certs (see `warden certs`).
    #[arg(long)]
    pub tls: bool,
}

/// The address given to `--{field}`, in canonical `host:port` form. Parsed
/// by the client library's endpoint parser (the one parser of addresses
/// users type: optional `http://`, `[v6]:port`, port 1 to 65535); the error
/// names the flag, the value and what is wrong with it.
fn check_addr(field: &str, addr: &str) -> anyhow::Result<String> {
    parse_endpoint(addr).map_err(|e| addr_error(field, addr, e))
}

/// The one-line error for a bad address given to `--{field}`: the value,
/// what is wrong with it, and an example of the field's form.
fn addr_error(field: &str, addr: &str, e: ClientError) -> anyhow::Error {
    let example = match field {
        "client-addr" | "join" => "127.0.0.1:2379",
        "resp-addr" => "127.0.0.1:6379",
        _ => "127.0.0.1:2380",
    };
    match e {
        ClientError::InvalidEndpoint { endpoint, reason } if endpoint == addr => {
            anyhow!("invalid --{field} {addr:?}: {reason}, e.g. {example}")
        }
        ClientError::InvalidEndpoint { endpoint, reason } => {
            anyhow!("invalid --{field} {addr:?}: {endpoint:?}: {reason}, e.g. {example}")
        }
        other => anyhow!("invalid --{field} {addr:?}: {other}"),
    }
}

/// Parses `name=addr,name=addr`; names and addresses must be unique.
pub fn parse_initial_cluster(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut addrs = std::collections::BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, addr) = part.split_once('=').ok_or_else(|| {
            anyhow!("invalid --initial-cluster entry {part:?}: expected name=host:port")
        })?;
        let name = name.trim();
        if name.is_empty() {
            bail!("invalid --initial-cluster entry {part:?}: empty member name");
        }
        let addr = check_addr("initial-cluster", addr)?;
        if !addrs.insert(addr.clone()) {
            bail!("invalid --initial-cluster: peer address {addr} is given to two members");
        }
        if out.insert(name.to_string(), addr).is_some() {
            bail!("invalid --initial-cluster: member name {name:?} appears twice");
        }
    }
    if out.is_empty() {
        bail!("invalid --initial-cluster: no members");
    }
    Ok(out)
}

/// Everything a member runs with: auth settings, metrics addresses, node
/// config, request size limit.
type Settings = (AuthSettings, Vec<String>, NodeConfig, usize);

impl ServerArgs {
    /// All settings, checked, with the `--config` file filling what flags
    /// and environment left unset (for every setting, auth ones included).
    fn settings(self) -> anyhow::Result<Settings> {
        let args = self.merge_file()?;
        let auth = args.auth_settings()?;
        let metrics = args.metrics_addrs()?;
        let (cfg, max_request_bytes) = args.resolve()?;
        Ok((auth, metrics, cfg, max_request_bytes))
    }

    /// Fills unset fields from the `--config` file.
    fn merge_file(mut self) -> anyhow::Result<Self> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("--config {}", path.display()))?;
        let f: ServerArgs = toml::from_str(&text).map_err(|e| {
            anyhow!(
                "--config {}: {}",
                path.display(),
                e.to_string().lines().collect::<Vec<_>>().join(" ")
            )
        })?;
        macro_rules! fill {
            ($($field:ident),*) => { $( if self.$field.is_none() { self.$field = f.$field; } )* };
        }
        fill!(
            name,
            data_dir,
            client_addr,
            peer_addr,
            initial_cluster,
            election_timeout_min_ms,
            election_timeout_max_ms,
            heartbeat_interval_ms,
            snapshot_entries,
            request_timeout_ms,
            max_request_bytes,
            join,
            no_auto_promote,
            quota_backend_bytes,
            auto_compaction_mode,
            auto_compaction_retention,
            peer_routes
        );
        fill!(
            watch_queue_bytes,
            watch_pending_bytes,
            max_watchers_per_stream,
            max_concurrent_streams,
            grpc_keepalive_min_time,
            grpc_keepalive_interval,
            grpc_keepalive_timeout,
            lease_checkpoint_interval,
            warning_apply_duration
        );
        fill!(
            auth_token,
            auth_token_ttl,
            bcrypt_cost,
            listen_metrics_urls,
            resp_addr
        );
        fill!(
            cert_file,
            key_file,
            trusted_ca_file,
            client_cert_auth,
            peer_cert_file,
            peer_key_file,
            peer_trusted_ca_file,
            peer_client_cert_auth
        );
        Ok(self)
    }

    /// Validates everything and produces the member's configuration.
    pub fn resolve(self) -> anyhow::Result<(NodeConfig, usize)> {
        let a = self.merge_file()?;
        let (watch, client_http2) = a.limits()?;
        let name = a.name.unwrap_or_else(|| "default".to_string());
        if name.is_empty() || name.contains([',', '=']) || name.chars().any(char::is_whitespace) {
            bail!("invalid --name {name:?}: must be non-empty without spaces, ',' or '='");
        }
        let data_dir = a.data_dir.unwrap_or_else(|| {
            if name == "default" {
                PathBuf::from("warden.data")
            } else {
                PathBuf::from(format!("{name}.data"))
            }
        });
        let client_addr = check_addr(
            "client-addr",
            a.client_addr.as_deref().unwrap_or("127.0.0.1:2379"),
        )?;
        let peer_addr = check_addr(
            "peer-addr",
            a.peer_addr.as_deref().unwrap_or("127.0.0.1:2380"),
        )?;
        if client_addr == peer_addr {
            bail!("invalid --client-addr: same as --peer-addr ({peer_addr})");
        }
        let join: Vec<String> = match a.join.as_deref() {
            None => Vec::new(),
            Some(j) => match parse_endpoints(&[j]) {
                Ok(eps) => eps,
                Err(ClientError::NoEndpoints) => {
                    bail!("invalid --join: give the client address of a running member")
                }
                Err(e) => return Err(addr_error("join", j, e)),
            },
        };
        if !join.is_empty() && a.initial_cluster.is_some() {
            bail!("--join and --initial-cluster cannot be used together: a joining member learns the cluster from it");
        }
        let initial_cluster = match a.initial_cluster {
            Some(s) => parse_initial_cluster(&s)?,
            None => BTreeMap::from([(name.clone(), peer_addr.clone())]),
        };
        match initial_cluster.get(&name) {
            None => bail!("invalid --initial-cluster: it does not list this member ({name})"),
            Some(a) if *a != peer_addr => bail!(
                "invalid --initial-cluster: it gives {name} the peer address {a}, but --peer-addr is {peer_addr}"
            ),
            Some(_) => {}
        }
        let mut peer_routes = BTreeMap::new();
        for item in a.peer_routes.iter().flat_map(|r| r.split(',')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let Some((from, via)) = item.split_once('=') else {
                bail!("invalid --peer-routes {item:?}: expected PEER-ADDR=VIA");
            };
            let from = check_addr("peer-routes", from)?;
            let via = check_addr("peer-routes", via)?;
            peer_routes.insert(from, via);
        }
        let min = a.election_timeout_min_ms.unwrap_or(1000);
        let max = a.election_timeout_max_ms.unwrap_or(2000);
        let hb = a.heartbeat_interval_ms.unwrap_or(100);
        if hb == 0 {
            bail!("invalid --heartbeat-interval-ms: must be > 0");
        }
        if min <= hb {
            bail!("invalid --election-timeout-min-ms {min}: must be greater than --heartbeat-interval-ms ({hb})");
        }
        if max <= min {
            bail!("invalid --election-timeout-max-ms {max}: must be greater than --election-timeout-min-ms ({min})");
        }
        let snapshot_entries = a.snapshot_entries.unwrap_or(10_000);
        if snapshot_entries == 0 {
            bail!("invalid --snapshot-entries: must be > 0");
        }
        let request_timeout_ms = a.request_timeout_ms.unwrap_or(5000);
        if request_timeout_ms == 0 {
            bail!("invalid --request-timeout-ms: must be > 0");
        }
        let quota_backend_bytes = match a.quota_backend_bytes.unwrap_or(0) {
            0 => Some(DEFAULT_QUOTA_BACKEND_BYTES),
            q => u64::try_from(q).ok(),
        };
        let auto_compaction = auto_compaction(
            a.auto_compaction_mode.as_deref().unwrap_or("periodic"),
            a.auto_compaction_retention.as_deref().unwrap_or("0"),
        )?;
        let client_tls = tls_files(
            "",
            a.cert_file,
            a.key_file,
            a.trusted_ca_file,
            a.client_cert_auth.unwrap_or(false),
        )?;
        let peer_tls = tls_files(
            "peer-",
            a.peer_cert_file,
            a.peer_key_file,
            a.peer_trusted_ca_file,
            a.peer_client_cert_auth.unwrap_or(false),
        )?;
        let lease_checkpoint_interval = match &a.lease_checkpoint_interval {
            Some(v) => parse_go_duration(v)
                .map_err(|e| anyhow!("invalid --lease-checkpoint-interval {v:?}: {e}"))?,
            None => lessor::DEFAULT_CHECKPOINT_INTERVAL,
        };
        let slow_request = match &a.warning_apply_duration {
            Some(v) => parse_go_duration(v)
                .map_err(|e| anyhow!("invalid --warning-apply-duration {v:?}: {e}"))?,
            None => DEFAULT_WARNING_APPLY_DURATION,
        };
        if lease_checkpoint_interval.is_zero() {
            bail!("invalid --lease-checkpoint-interval: must be > 0");
        }
        let max_request_bytes = a.max_request_bytes.unwrap_or(1536 * 1024);
        if max_request_bytes == 0 {
            bail!("invalid --max-request-bytes: must be > 0");
        }
        Ok((
            NodeConfig {
                name,
                data_dir,
                client_addr,
                peer_addr,
                initial_cluster,
                election_timeout_min_ms: min,
                election_timeout_max_ms: max,
                heartbeat_interval_ms: hb,
                snapshot_entries,
                request_timeout: Duration::from_millis(request_timeout_ms),
                join,
                auto_promote: !a.no_auto_promote.unwrap_or(false),
                peer_routes,
                watch,
                client_http2,
                quota_backend_bytes,
                auto_compaction,
                client_tls,
                peer_tls,
                lease_checkpoint_interval,
                slow_request,
            },
            max_request_bytes,
        ))
    }
}

impl ServerArgs {
    /// `--resp-addr`, checked (`None`: RESP is off).
    pub fn resp_addr(&self) -> anyhow::Result<Option<String>> {
        self.resp_addr
            .as_deref()
            .map(|a| check_addr("resp-addr", a))
            .transpose()
    }

    /// The auth settings (`--auth-token`, `--auth-token-ttl`,
    /// `--bcrypt-cost`), checked.
    /// The `--listen-metrics-urls` addresses, as `host:port`.
    pub fn metrics_addrs(&self) -> anyhow::Result<Vec<String>> {
        let merged = self.clone().merge_file()?;
        let Some(urls) = merged.listen_metrics_urls else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            if url
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
            {
                bail!(
                    "invalid --listen-metrics-urls {url:?}: https is not supported on the \
                     metrics address; use http://HOST:PORT (the client port serves /metrics \
                     over TLS)"
                );
            }
            let addr = parse_endpoint(url).map_err(|e| match e {
                ClientError::InvalidEndpoint { reason, .. } => anyhow!(
                    "invalid --listen-metrics-urls {url:?}: {reason}, e.g. http://127.0.0.1:2381"
                ),
                other => anyhow!("invalid --listen-metrics-urls {url:?}: {other}"),
            })?;
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
        Ok(out)
    }

    pub fn auth_settings(&self) -> anyhow::Result<AuthSettings> {
        let mut s = AuthSettings::default();
        if let Some(kind) = &self.auth_token {
            match kind.split(',').next().unwrap_or_default() {
                "simple" => {}
                "jwt" => bail!("invalid --auth-token {kind:?}: JWT tokens are not supported; use simple (signed tokens any member can check)"),
                other => bail!("invalid --auth-token {other:?}: expected simple"),
            }
        }
        if let Some(ttl) = self.auth_token_ttl {
            if ttl == 0 {
                bail!("invalid --auth-token-ttl: must be > 0");
            }
            s.token_ttl = Duration::from_secs(ttl);
        }
        if let Some(cost) = self.bcrypt_cost {
            if !(bcrypt_cost_range()).contains(&cost) {
                bail!("invalid --bcrypt-cost {cost}: must be 4 to 31");
            }
            s.bcrypt_cost = cost;
        }
        Ok(s)
    }
}

fn bcrypt_cost_range() -> std::ops::RangeInclusive<u32> {
    4..=31
}

/// The TLS files of one port from its flags (`prefix` is `""` for the
/// client port, `"peer-"` for the peer port), checked for consistency; the
/// files themselves are loaded when the member starts.
fn tls_files(
    prefix: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    client_cert_auth: bool,
) -> anyhow::Result<Option<TlsFiles>> {
    match (cert, key) {
        (Some(cert), Some(key)) => {
            if client_cert_auth && ca.is_none() {
                bail!("--{prefix}client-cert-auth needs --{prefix}trusted-ca-file: the CA client certificates must chain to");
            }
            Ok(Some(TlsFiles {
                cert,
                key,
                ca,
                client_cert_auth,
            }))
        }
        (None, None) => {
            if client_cert_auth || ca.is_some() {
                bail!("--{prefix}client-cert-auth and --{prefix}trusted-ca-file need TLS: give --{prefix}cert-file and --{prefix}key-file");
            }
            Ok(None)
        }
        (Some(_), None) => bail!("--{prefix}cert-file needs --{prefix}key-file"),
        (None, Some(_)) => bail!("--{prefix}key-file needs --{prefix}cert-file"),
    }
}

impl ServerArgs {
    /// Watch and HTTP/2 limits (`--watch-*`, `--max-watchers-per-stream`,
    /// `--max-concurrent-streams`, `--grpc-keepalive-*`).
    fn limits(&self) -> anyhow::Result<(WatchLimits, Http2Limits)> {
        let positive = |field: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(anyhow!("invalid --{field}: must be > 0")),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let d = WatchLimits::default();
        let watch = WatchLimits {
            watcher_bytes: positive("watch-queue-bytes", self.watch_queue_bytes, d.watcher_bytes)?,
            member_bytes: positive(
                "watch-pending-bytes",
                self.watch_pending_bytes,
                d.member_bytes,
            )?,
            watchers_per_stream: positive(
                "max-watchers-per-stream",
                self.max_watchers_per_stream,
                d.watchers_per_stream,
            )?,
        };
        let d = Http2Limits::default();
        let duration = |field: &str, v: &Option<String>, default: Duration| match v {
            Some(v) => parse_go_duration(v).map_err(|e| anyhow!("invalid --{field} {v:?}: {e}")),
            None => Ok(default),
        };
        let interval = duration(
            "grpc-keepalive-interval",
            &self.grpc_keepalive_interval,
            d.keepalive_interval.unwrap_or_default(),
        )?;
        let timeout = duration(
            "grpc-keepalive-timeout",
            &self.grpc_keepalive_timeout,
            d.keepalive_timeout,
        )?;
        if timeout.is_zero() {
            bail!("invalid --grpc-keepalive-timeout: must be > 0");
        }
        let http2 = Http2Limits {
            max_concurrent_streams: match self.max_concurrent_streams {
                Some(0) => bail!("invalid --max-concurrent-streams: must be > 0"),
                Some(n) => n,
                None => d.max_concurrent_streams,
            },
            keepalive_interval: (!interval.is_zero()).then_some(interval),
            keepalive_timeout: timeout,
            keepalive_min_time: duration(
                "grpc-keepalive-min-time",
                &self.grpc_keepalive_min_time,
                d.keepalive_min_time,
            )?,
        };
        Ok((watch, http2))
    }
}

/// A duration as etcd's flags take it (Go's form): `0`, or numbers with
/// units `ns`, `us`, `ms`, `s`, `m`, `h`, e.g. `5s`, `2h`, `1m30s`, `1.5s`.
fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(n);
        let num: f64 = num
            .parse()
            .map_err(|_| "expected a number with a unit, e.g. 5s or 2h".to_string())?;
        let u = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(u);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err("missing unit (ns, us, ms, s, m, h)".into()),
            other => return Err(format!("unknown unit {other:?} (ns, us, ms, s, m, h)")),
        };
        total += num * scale;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|e| e.to_string())
}

/// etcd's `--auto-compaction-mode` and `--auto-compaction-retention`.
fn auto_compaction(mode: &str, retention: &str) -> anyhow::Result<Option<AutoCompaction>> {
    let retention = retention.trim();
    match mode {
        "periodic" => {
            let period = if let Ok(hours) = retention.parse::<u64>() {
                Duration::from_secs(hours.saturating_mul(3600))
            } else {
                parse_go_duration(retention).map_err(|e| {
                    anyhow!(
                        "invalid --auto-compaction-retention {retention:?}: for periodic mode, \
                         a duration like 30m or 1h30m, or a number of hours ({e})"
                    )
                })?
            };
            Ok((!period.is_zero()).then_some(AutoCompaction::Periodic(period)))
        }
        "revision" => {
            let revs = retention
                .parse::<i64>()
                .ok()
                .filter(|r| *r >= 0)
                .ok_or_else(|| {
                    anyhow!(
                        "invalid --auto-compaction-retention {retention:?}: for revision mode, \
                     a number of revisions"
                    )
                })?;
            Ok((revs > 0).then_some(AutoCompaction::Revision(revs)))
        }
        other => {
            bail!("invalid --auto-compaction-mode {other:?}: must be \"periodic\" or \"revision\"")
        }
    }
}

/// etcd's default `--quota-backend-bytes`: 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn bind(field: &str, addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --{field} {addr}"))
}

/// Runs one member until SIGINT/SIGTERM, or until the cluster removes it:
/// stops accepting, lets Raft finish what is in flight, and exits 0.
pub async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let resp_addr = args.clone().merge_file()?.resp_addr()?;
    let (auth_settings, metrics_addrs, cfg, max_request_bytes) = args.settings()?;
    let load = |port: &str, files: &Option<TlsFiles>| -> anyhow::Result<Option<Arc<ServerTls>>> {
        match files {
            None => Ok(None),
            Some(f) => Ok(Some(Arc::new(
                ServerTls::load(f.clone()).with_context(|| format!("TLS of the {port} port"))?,
            ))),
        }
    };
    let client_tls = load("client", &cfg.client_tls)?;
    let peer_tls = load("peer", &cfg.peer_tls)?;
    let peer_listener = bind("peer-addr", &cfg.peer_addr).await?;
    let client_listener = bind("client-addr", &cfg.client_addr).await?;
    let mut metrics_listeners = Vec::new();
    for addr in &metrics_addrs {
        metrics_listeners.push(bind("listen-metrics-urls", addr).await?);
    }
    let resp_listener = match &resp_addr {
        Some(a) => Some(bind("resp-addr", a).await?),
        None => None,
    };
    // Before any connection or file: every port's connection limit is a
    // share of it (`tls::max_connections`).
    let open_files = warden_server::tls::raise_fd_limit();
    let node = Node::start(cfg.clone()).await?;
    let metrics = warden_server::api::metrics::Metrics::start(&node);
    tracing::info!(
        open_files,
        client_connections = warden_server::tls::max_connections("client"),
        name = %node.name(),
        id = %format!("{:x}", node.id()),
        clients = %cfg.client_addr,
        peers = %cfg.peer_addr,
        data_dir = %cfg.data_dir.display(),
        "warden member started"
    );

    // Clients are stopped (and drained) before peers: after handing
    // leadership over, this member forwards the requests it still holds to
    // the new leader and needs replication from it to answer them.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (peer_stop_tx, peer_stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    // The peer port serves one service: no router in front of it, only the
    // identity check of each call's headers before its body is read.
    let peer_server = tonic::transport::Server::builder().tcp_nodelay(true);
    let peer_service = warden_server::node::peer_service::PeerService::new(node.clone());
    let peer_service = warden_server::node::peer_service::IdentityGate::new(
        warden_proto::peer::raft_peer_server::RaftPeerServer::new(peer_service.clone())
            .max_decoding_message_size(warden_server::node::network::MAX_MESSAGE)
            .max_encoding_message_size(warden_server::node::network::MAX_MESSAGE),
        &peer_service,
    );
    let peer_stop = stopped(peer_stop_rx);
    let peer = warden_server::tls::serve(
        peer_server,
        peer_service,
        peer_listener,
        peer_tls,
        "peer",
        peer_stop,
    );
    let mut metrics_tasks = Vec::new();
    for listener in metrics_listeners {
        metrics_tasks.push(tokio::spawn(warden_server::api::serve_metrics(
            node.clone(),
            metrics.clone(),
            listener,
            stopped(stop_rx.clone()),
        )));
    }
    let client = warden_server::api::serve(
        node.clone(),
        metrics,
        client_listener,
        max_request_bytes,
        client_tls,
        auth_settings,
        stopped(stop_rx.clone()),
    );
    let peer_task = tokio::spawn(peer);
    let client_task = tokio::spawn(client);
    if let Some(l) = resp_listener {
        tracing::info!(addr = ?resp_addr, "serving RESP (Redis protocol)");
        if cfg.client_tls.is_some() {
            tracing::warn!(
                "--resp-addr is plaintext and takes no client certificates: \
                 only warden's auth (AUTH) protects it; keep it on a trusted network"
            );
        }
        let resp = warden_server::api::resp::serve(
            node.clone(),
            l,
            max_request_bytes,
            auth_settings,
            stopped(stop_rx.clone()),
        );
        tokio::spawn(async move {
            if let Err(e) = resp.await {
                tracing::error!("RESP listener stopped: {e:#}");
            }
        });
    }

    let mut failed = None;
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        why = node.removed() => tracing::warn!("shutting down: {why}"),
        why = node.raft_failed() => {
            tracing::error!(
                "shutting down: Raft stopped on an error ({why}); restart this member \
                 to recover from its log"
            );
            failed = Some(why);
        }
    }
    // A leader hands over first (as etcd does), so that the cluster does not
    // wait out an election timeout; meanwhile requests keep being served
    // and are forwarded to the new leader once it is known.
    let handover = Duration::from_millis(cfg.election_timeout_max_ms.saturating_mul(2));
    node.hand_over_before_stop(handover).await;
    // Stop accepting clients and let the requests in flight finish.
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(3);
    if tokio::time::timeout(grace, client_task).await.is_err() {
        tracing::warn!("client requests still running after {grace:?}: stopping anyway");
    }
    node.shutdown().await;
    let _ = peer_stop_tx.send(true);
    let _ = tokio::time::timeout(grace, peer_task).await;
    for t in metrics_tasks {
        let _ = tokio::time::timeout(grace, t).await;
    }
    match failed {
        Some(why) => Err(anyhow::anyhow!("Raft stopped on an error: {why}")),
        None => Ok(()),
    }
}

/// Ports of member `i` (0-based) of the dev cluster, as etcd's Procfile.
fn dev_ports(i: usize) -> (u16, u16) {
    match i {
        0 => (2379, 2380),
        n => {
            let base = 10_000 * (n as u16 + 1) + 2379;
            (base, base + 1)
        }
    }
}

/// RESP port of member `i` of the dev cluster: Redis's 6379, then one
/// per member above it.
fn dev_resp_port(i: usize) -> u16 {
    6379 + i as u16
}

/// Starts a local N-member cluster as child processes and stops it on Ctrl-C.
pub async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    if args.members == 0 || args.members > 5 {
        bail!("invalid --members {}: must be 1 to 5", args.members);
    }
    let exe = std::env::current_exe().context("locating the warden binary")?;
    let names: Vec<String> = (1..=args.members).map(|i| format!("n{i}")).collect();
    let initial: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n}=127.0.0.1:{}", dev_ports(i).1))
        .collect();
    let initial = initial.join(",");
    let mut children = Vec::new();
    let mut endpoints = Vec::new();
    let certs = if args.tls {
        let hosts = ["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        Some(super::certs::write_certs(&args.dir.join("certs"), &hosts)?)
    } else {
        None
    };
    let mut tls_flags: Vec<std::ffi::OsString> = Vec::new();
    if let Some(f) = &certs {
        for (flag, path) in [
            ("--cert-file", &f.server_cert),
            ("--key-file", &f.server_key),
            ("--trusted-ca-file", &f.ca),
            ("--peer-cert-file", &f.server_cert),
            ("--peer-key-file", &f.server_key),
            ("--peer-trusted-ca-file", &f.ca),
        ] {
            tls_flags.push(flag.into());
            tls_flags.push(path.into());
        }
        tls_flags.push("--client-cert-auth".into());
        tls_flags.push("--peer-client-cert-auth".into());
    }
    for (i, name) in names.iter().enumerate() {
        let (c, p) = dev_ports(i);
        let r = dev_resp_port(i);
        let dir: PathBuf = args.dir.join(name);
        let log = std::fs::File::create(dev_log(&args.dir, name)?)
            .with_context(|| format!("creating log file under {}", args.dir.display()))?;
        let child = tokio::process::Command::new(&exe)
            .arg("server")
            .args(["--name", name])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--client-addr", &format!("127.0.0.1:{c}")])
            .args(["--peer-addr", &format!("127.0.0.1:{p}")])
            // RESP has no TLS: `--tls` leaves it off rather than open a
            // port that skips the client certificates.
            .args(if certs.is_none() {
                vec!["--resp-addr".to_string(), format!("127.0.0.1:{r}")]
            } else {
                Vec::new()
            })
            .args(["--initial-cluster", &initial])
            .args(&tls_flags)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting member {name}"))?;
        let resp = if certs.is_none() {
            format!("resp 127.0.0.1:{r}  ")
        } else {
            String::new()
        };
        println!(
            "{name}: clients 127.0.0.1:{c}  peers 127.0.0.1:{p}  {resp}data {}",
            dir.display()
        );
        endpoints.push(format!("127.0.0.1:{c}"));
        children.push(child);
    }
    let eps = endpoints.join(",");
    let (eps, tls) = match &certs {
        None => (eps, String::new()),
        Some(f) => (
            endpoints
                .iter()
                .map(|e| format!("https://{e}"))
                .collect::<Vec<_>>()
                .join(","),
            format!(
                " --cacert {} --cert {} --key {}",
                f.ca.display(),
                f.client_cert.display(),
                f.client_key.display()
            ),
        ),
    };
    println!();
    println!("logs: {}/<name>.log   stop: Ctrl-C", args.dir.display());
    println!("try:");
    println!("  warden --endpoints {eps}{tls} put greeting hello");
    println!("  warden --endpoints {eps}{tls} get greeting");
    println!("  warden --endpoints {eps}{tls} status");
    println!("  etcdctl --endpoints {eps}{tls} member list -w table");
    if certs.is_none() {
        println!("  redis-cli -p {} SET greeting hello", dev_resp_port(0));
    }
    shutdown_signal().await;
    println!("stopping members");
    for c in &mut children {
        if let Some(pid) = c.id() {
            // SIGTERM for a graceful stop; kill_on_drop is the backstop.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    }
    for c in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
    }
    Ok(())
}

fn dev_log(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join(format!("{name}.log")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServerArgs {
        ServerArgs {
            name: Some("n1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_make_a_single_member() {
        let (c, max) = args().resolve().unwrap();
        assert_eq!(c.client_addr, "127.0.0.1:2379");
        assert_eq!(c.peer_addr, "127.0.0.1:2380");
        assert_eq!(c.initial_cluster.len(), 1);
        assert_eq!(c.data_dir, PathBuf::from("n1.data"));
        assert_eq!(max, 1536 * 1024);
    }

    #[test]
    fn resp_addr_is_checked_and_off_by_default() {
        assert_eq!(args().resp_addr().unwrap(), None);
        let on = ServerArgs {
            resp_addr: Some("http://127.0.0.1:6379".into()),
            ..args()
        };
        assert_eq!(on.resp_addr().unwrap().as_deref(), Some("127.0.0.1:6379"));
        let bad = ServerArgs {
            resp_addr: Some("nope".into()),
            ..args()
        };
        let e = bad.resp_addr().unwrap_err().to_string();
        assert!(e.contains("--resp-addr"), "{e}");
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let cases: Vec<(ServerArgs, &str)> = vec![
            (
                ServerArgs {
                    client_addr: Some("nope".into()),
                    ..args()
                },
                "--client-addr",
            ),
            (
                ServerArgs {
                    initial_cluster: Some("n2=127.0.0.1:1".into()),
                    ..args()
                },
                "does not list this member",
            ),
            (
                ServerArgs {
                    initial_cluster: Some("n1=127.0.0.1:2380,n1=127.0.0.1:3".into()),
                    ..args()
                },
                "appears twice",
            ),
            (
                ServerArgs {
                    initial_cluster: Some("n1=127.0.0.1:2380,n2=127.0.0.1:2380".into()),
                    ..args()
                },
                "two members",
            ),
            (
                ServerArgs {
                    initial_cluster: Some("n1=127.0.0.1:9".into()),
                    ..args()
                },
                "--peer-addr is",
            ),
            (
                ServerArgs {
                    election_timeout_min_ms: Some(50),
                    ..args()
                },
                "--election-timeout-min-ms",
            ),
            (
                ServerArgs {
                    election_timeout_max_ms: Some(900),
                    ..args()
                },
                "--election-timeout-max-ms",
            ),
            (
                ServerArgs {
                    name: Some("a b".into()),
                    ..args()
                },
                "--name",
            ),
        ];
        for (a, want) in cases {
            let e = a.resolve().unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }

    #[test]
    fn auth_and_slow_request_settings_come_from_the_config_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.toml");
        std::fs::write(
            &p,
            "bcrypt-cost = 5\nauth-token-ttl = 7\nwarning-apply-duration = \"250ms\"\n",
        )
        .unwrap();
        let (s, _, c, _) = ServerArgs {
            config: Some(p),
            ..Default::default()
        }
        .settings()
        .unwrap();
        assert_eq!(s.bcrypt_cost, 5);
        assert_eq!(s.token_ttl, Duration::from_secs(7));
        assert_eq!(c.slow_request, Duration::from_millis(250));
    }

    #[test]
    fn config_file_fills_unset_fields_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.toml");
        std::fs::write(
            &p,
            "name = \"n1\"\nclient-addr = \"http://127.0.0.1:5000\"\nheartbeat-interval-ms = 50\n",
        )
        .unwrap();
        let a = ServerArgs {
            config: Some(p.clone()),
            heartbeat_interval_ms: Some(60),
            ..Default::default()
        };
        let (c, _) = a.resolve().unwrap();
        assert_eq!(c.name, "n1");
        assert_eq!(c.client_addr, "127.0.0.1:5000");
        assert_eq!(c.heartbeat_interval_ms, 60, "flag beats file");
        std::fs::write(&p, "nmae = \"x\"\n").unwrap();
        let e = ServerArgs {
            config: Some(p),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.contains("nmae"), "{e}");
    }

    #[test]
    fn watch_and_http2_limits() {
        let (c, _) = args().resolve().unwrap();
        assert_eq!(c.watch, WatchLimits::default());
        assert_eq!(c.watch.watchers_per_stream, 10_000);
        assert_eq!(c.client_http2, Http2Limits::default());
        assert_eq!(
            c.client_http2.keepalive_interval,
            Some(Duration::from_secs(7200))
        );
        let (c, _) = ServerArgs {
            watch_queue_bytes: Some(1000),
            watch_pending_bytes: Some(5000),
            max_watchers_per_stream: Some(7),
            max_concurrent_streams: Some(9),
            grpc_keepalive_min_time: Some("500ms".into()),
            grpc_keepalive_interval: Some("0".into()),
            grpc_keepalive_timeout: Some("1m30s".into()),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            (
                c.watch.watcher_bytes,
                c.watch.member_bytes,
                c.watch.watchers_per_stream
            ),
            (1000, 5000, 7)
        );
        assert_eq!(c.client_http2.max_concurrent_streams, 9);
        assert_eq!(c.client_http2.keepalive_interval, None);
        assert_eq!(c.client_http2.keepalive_timeout, Duration::from_secs(90));
        assert_eq!(
            c.client_http2.keepalive_min_time,
            Duration::from_millis(500)
        );
        for (a, field) in [
            (
                ServerArgs {
                    watch_queue_bytes: Some(0),
                    ..args()
                },
                "--watch-queue-bytes",
            ),
            (
                ServerArgs {
                    max_concurrent_streams: Some(0),
                    ..args()
                },
                "--max-concurrent-streams",
            ),
            (
                ServerArgs {
                    grpc_keepalive_interval: Some("5".into()),
                    ..args()
                },
                "--grpc-keepalive-interval",
            ),
            (
                ServerArgs {
                    grpc_keepalive_timeout: Some("2 weeks".into()),
                    ..args()
                },
                "--grpc-keepalive-timeout",
            ),
        ] {
            let e = a.resolve().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        assert_eq!(parse_go_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn quota_backend_bytes_like_etcd() {
        let quota = |q: Option<i64>| {
            ServerArgs {
                quota_backend_bytes: q,
                ..args()
            }
            .resolve()
            .unwrap()
            .0
            .quota_backend_bytes
        };
        assert_eq!(quota(None), Some(2 * 1024 * 1024 * 1024));
        assert_eq!(quota(Some(0)), Some(2 * 1024 * 1024 * 1024), "0: default");
        assert_eq!(quota(Some(65536)), Some(65536));
        assert_eq!(quota(Some(-1)), None, "negative: no quota");
    }

    #[test]
    fn auto_compaction_like_etcd() {
        let ac = |mode: Option<&str>, ret: Option<&str>| {
            ServerArgs {
                auto_compaction_mode: mode.map(Into::into),
                auto_compaction_retention: ret.map(Into::into),
                ..args()
            }
            .resolve()
            .map(|(c, _)| c.auto_compaction)
        };
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(ac(None, None).unwrap(), None, "off by default");
        assert_eq!(ac(Some("periodic"), Some("0")).unwrap(), None);
        assert_eq!(
            ac(None, Some("72")).unwrap(),
            Some(AutoCompaction::Periodic(h(72)))
        );
        assert_eq!(
            ac(None, Some("1h30m")).unwrap(),
            Some(AutoCompaction::Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(
            ac(Some("periodic"), Some("2s")).unwrap(),
            Some(AutoCompaction::Periodic(Duration::from_secs(2)))
        );
        assert_eq!(
            ac(Some("revision"), Some("1000")).unwrap(),
            Some(AutoCompaction::Revision(1000))
        );
        for (mode, ret, want) in [
            (Some("daily"), Some("1"), "--auto-compaction-mode"),
            (Some("revision"), Some("1h"), "--auto-compaction-retention"),
            (
                Some("periodic"),
                Some("5 parsecs"),
                "--auto-compaction-retention",
            ),
            (Some("periodic"), Some("h"), "--auto-compaction-retention"),
        ] {
            let e = ac(mode, ret).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
