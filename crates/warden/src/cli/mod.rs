//! The `warden` command line: global flags, the list of subcommands and
//! dispatch to them. `server`/`dev` start members (see [`server`]); every
//! other subcommand is a client of the etcd v3 API built on
//! [`warden_client`], printing human output to stdout (or `--output json`).
//!
//! Files: `kv` (key-value commands) over `txn_parse` (etcdctl's transaction
//! syntax) over `kv_args` (the `put`/`get`/`del` flags both share);
//! `lease`, `watch`, `elect` and `lock` (the long-lived commands, sharing
//! `common`); `cluster`, `snapshot`, `bench`, `server`; `output` (printing).
//!
//! This module never prints errors itself: they are returned to `main`,
//! which prints one `Error: …` line on stderr.

pub mod bench;
pub mod certs;
pub mod cluster;
mod common;
pub mod elect;
pub mod kv;
pub mod kv_args;
pub mod lease;
pub mod lock;
pub mod output;
pub mod server;
pub mod snapshot;
pub mod txn_parse;
pub mod watch;

use std::io::Write;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use warden_client::{Client, ClientOptions};

pub use output::Format;

/// warden: a replicated, etcd-compatible key-value store and lock manager.
#[derive(Parser, Debug)]
#[command(name = "warden", version, about, propagate_version = true)]
pub struct Cli {
    /// Flags shared by the client commands.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by the client commands (accepted before or after the
/// subcommand).
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct GlobalArgs {
    /// Client endpoints of cluster members, host:port, comma-separated.
    #[arg(
        long,
        global = true,
        env = "WARDEN_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(long, short = 'w', visible_alias = "write-out", global = true, value_enum, default_value_t = Format::Simple)]
    pub output: Format,
    /// Deadline of a command, retries included: seconds, or a number with
    /// ms/s/m (e.g. 500ms, 1m).
    #[arg(long, global = true, default_value = "5", value_parser = parse_timeout)]
    pub command_timeout: Duration,
    /// Connect over TLS, trusting servers whose certificate chains to this
    /// CA (PEM), as etcdctl's flag. TLS is also used when --cert is given or
    /// an endpoint is https://.
    #[arg(long, id = "tls_cacert", global = true, env = "WARDEN_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for servers that require one.
    #[arg(
        long = "cert",
        id = "tls_cert",
        global = true,
        env = "WARDEN_CERT",
        requires = "tls_key"
    )]
    pub cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(
        long = "key",
        id = "tls_key",
        global = true,
        env = "WARDEN_KEY",
        requires = "tls_cert"
    )]
    pub key: Option<std::path::PathBuf>,
    /// Authenticate as `name:password` when the cluster has auth on (etcd
    /// auth; etcdctl's flag).
    #[arg(long, global = true, env = "WARDEN_USER", value_parser = parse_user)]
    pub user: Option<UserArg>,
}

/// `--user name:password`, parsed; printed without the password.
#[derive(Clone, PartialEq, Eq)]
pub struct UserArg {
    user: String,
    password: String,
}

impl std::fmt::Debug for UserArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:<hidden>", self.user)
    }
}

fn parse_user(s: &str) -> Result<UserArg, String> {
    let c = warden_client::Credentials::parse(s)?;
    Ok(UserArg {
        user: c.user,
        password: c.password,
    })
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a cluster member.
    Server(Box<server::ServerArgs>),
    /// Run a local cluster of several members for trying warden out.
    Dev(server::DevArgs),
    /// Write a key.
    Put(kv::PutCmd),
    /// Read a key or a range of keys.
    Get(Box<kv_args::GetArgs>),
    /// Delete a key or a range of keys.
    Del(kv::DelCmd),
    /// Run a transaction read from standard input (etcdctl's txn syntax).
    Txn(kv::TxnArgs),
    /// Discard the key history before a revision.
    Compaction(kv::CompactionArgs),
    /// Show the status of every endpoint.
    Status(cluster::StatusArgs),
    /// Leases: grant, revoke, keep-alive, timetolive, list.
    Lease {
        #[command(subcommand)]
        command: lease::LeaseCommand,
    },
    /// Print changes to a key or prefix as they happen.
    Watch(watch::WatchArgs),
    /// Campaign in an election (or --listen to follow its leader).
    Elect(elect::ElectArgs),
    /// Hold a lock (running a command while holding it), or inspect one.
    Lock(lock::LockArgs),
    /// Back up a member's state, or seed a new member from a backup.
    Snapshot {
        #[command(subcommand)]
        command: snapshot::SnapshotCommand,
    },
    /// Measure throughput and latency against the endpoints.
    Bench(Box<bench::BenchArgs>),
    /// Write a throwaway CA and certificates for trying TLS out.
    Certs(certs::CertsArgs),
    /// Cluster membership.
    Member {
        /// What to do with members.
        #[command(subcommand)]
        command: cluster::MemberCommand,
    },
}

impl Cli {
    /// Whether this invocation runs a server (and so wants logging).
    pub fn is_server(&self) -> bool {
        matches!(self.command, Command::Server(_) | Command::Dev(_))
    }

    /// Whether logs are JSON lines (`server --log-format json`, or
    /// `WARDEN_LOG_FORMAT=json` for any server).
    pub fn log_json(&self) -> bool {
        let flag = match &self.command {
            Command::Server(a) => a.log_format.clone(),
            _ => None,
        };
        flag.or_else(|| std::env::var("WARDEN_LOG_FORMAT").ok())
            .is_some_and(|f| f == "json")
    }

    /// Runs the command. Output goes to stdout; the error (if any) is
    /// returned for the caller to print.
    pub async fn run(self) -> anyhow::Result<()> {
        let global = self.global;
        let command = match self.command {
            Command::Server(args) => return server::run_server(*args).await,
            Command::Dev(args) => return server::run_dev(args).await,
            Command::Certs(args) => return certs::run_certs(args),
            Command::Bench(args) => {
                // bench opens its own connections (several per run, and to
                // two clusters with --against) and sends no token.
                anyhow::ensure!(
                    global.user.is_none(),
                    "warden bench does not authenticate: benchmark a cluster with auth off (--user is not supported here)"
                );
                let json = global.output == Format::Json;
                return bench::run_bench(&global.endpoints, global.tls(), *args, json).await;
            }
            other => other,
        };
        let client = global.client().await?;
        let command = match command {
            Command::Lease { command } => {
                return lease::lease(&client, command, global.output).await
            }
            Command::Watch(a) => return watch::watch_cmd(&client, a, global.output).await,
            Command::Elect(a) => return elect::elect(&client, a).await,
            Command::Lock(a) => return lock::lock(&client, a, global.output).await,
            Command::Snapshot { command } => return snapshot::snapshot(&client, command).await,
            other => other,
        };
        let mut out = Vec::new();
        let result = execute(&client, command, global.output, &mut out).await;
        // Print what was produced even when the command then failed (status
        // prints the endpoints that answered).
        write_stdout(&out)?;
        result
    }
}

impl GlobalArgs {
    /// A client for the configured endpoints and deadline.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let opts = ClientOptions {
            timeout: self.command_timeout,
            connect_timeout: self
                .command_timeout
                .min(ClientOptions::default().connect_timeout),
            tls: self.tls(),
            credentials: self.user.as_ref().map(|u| warden_client::Credentials {
                user: u.user.clone(),
                password: u.password.clone(),
            }),
            ..ClientOptions::default()
        };
        Ok(Client::connect(&self.endpoints, opts).await?)
    }

    /// TLS options, if any TLS flag is given or an endpoint is https.
    pub fn tls(&self) -> Option<warden_client::TlsOptions> {
        let https = self
            .endpoints
            .iter()
            .any(|e| e.trim().to_ascii_lowercase().starts_with("https://"));
        (https || self.cacert.is_some() || self.cert.is_some()).then(|| warden_client::TlsOptions {
            ca: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        })
    }
}

async fn execute(
    client: &Client,
    command: Command,
    f: Format,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    match command {
        Command::Put(a) => kv::put(client, a, f, out).await,
        Command::Get(a) => kv::get(client, *a, f, out).await,
        Command::Del(a) => kv::del(client, a, f, out).await,
        Command::Txn(a) => kv::txn(client, a, f, out).await,
        Command::Compaction(a) => kv::compaction(client, a, f, out).await,
        Command::Status(a) => cluster::status(client, a, f, out).await,
        Command::Member {
            command: cluster::MemberCommand::List(a),
        } => cluster::member_list(client, a, f, out).await,
        Command::Member { command } => cluster::member_change(client, command, out).await,
        Command::Server(_)
        | Command::Dev(_)
        | Command::Bench(_)
        | Command::Certs(_)
        | Command::Lease { .. }
        | Command::Watch(_)
        | Command::Elect(_)
        | Command::Lock(_)
        | Command::Snapshot { .. } => {
            anyhow::bail!("not a client command")
        }
    }
}

/// Writes to stdout; a closed pipe (`warden get … | head`) is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("writing output: {e}"))
        }
        _ => Ok(()),
    }
}

/// `--command-timeout`: `5` (seconds), `2.5`, `500ms`, `5s`, `1m`.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let bad = || {
        format!("invalid timeout {s:?}: expected seconds (e.g. 5) or a duration like 500ms, 5s, 1m")
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    let secs = v * unit;
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 * 365.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("1m"), Ok(Duration::from_secs(60)));
        for bad in ["", "0", "-1", "abc", "5h", "NaN", "inf", "1e30"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn global_flags_anywhere() {
        let cli =
            Cli::try_parse_from(["warden", "get", "k", "--endpoints", "a:1,b:2", "-w", "json"]);
        let Ok(cli) = cli else { panic!("{cli:?}") };
        assert_eq!(
            cli.global.endpoints,
            vec!["a:1".to_string(), "b:2".to_string()]
        );
        assert_eq!(cli.global.output, Format::Json);
        assert!(!cli.is_server());

        let cli = Cli::try_parse_from([
            "warden",
            "--command-timeout",
            "1",
            "--write-out",
            "table",
            "member",
            "list",
        ]);
        let Ok(cli) = cli else { panic!("{cli:?}") };
        assert_eq!(cli.global.command_timeout, Duration::from_secs(1));
        assert_eq!(cli.global.output, Format::Table);
        assert!(matches!(cli.command, Command::Member { .. }));

        let cli = Cli::try_parse_from(["warden", "server", "--name", "n1"]);
        assert!(cli.is_ok_and(|c| c.is_server()));
        assert!(Cli::try_parse_from(["warden", "get", "k", "-w", "yaml"]).is_err());
    }
}
