//! `warden lock`: holds a lock of warden's native lock service
//! (`warden.v1.Locks`), running a command while holding it, and `lock
//! inspect`, which shows holders and the queue of waiters.
//!
//! Owns: the lock flags and output. A held lock exports `WARDEN_LOCK_NAME`,
//! `WARDEN_LOCK_TOKEN` (the fencing token) and `WARDEN_LOCK_HANDLE` (the
//! hold's secret handle, hex: the proof a fenced write or a release of this
//! hold must carry) to the command, keeps the holder's lease alive with
//! [`super::lease::KeptLease`], and releases the lock with its handle and
//! revokes the lease afterwards.
//!
//! Must never: let the command run on after the lock is lost (it is killed
//! and the loss reported), print a token for a lock it was not granted, or
//! print a handle (it goes to the command's environment only).

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use warden_client::AuthChannel as Channel;

use super::common::print;
use super::lease::KeptLease;
use super::Format;
use warden_client::{Client, OpKind};
use warden_proto::warden::v1 as wpb;
use warden_proto::warden::v1::locks_client::LocksClient;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LockArgs {
    #[command(subcommand)]
    pub sub: Option<LockSub>,
    #[command(flatten)]
    pub hold: HoldArgs,
}

#[derive(Subcommand, Debug)]
pub enum LockSub {
    /// Show a lock's holders and its queue of waiters.
    Inspect {
        /// Lock name (a prefix with --prefix; "" lists every lock).
        name: String,
        /// Show every lock whose name starts with NAME.
        #[arg(long)]
        prefix: bool,
    },
}

#[derive(Args, Debug)]
pub struct HoldArgs {
    /// Lock name.
    #[arg(required = true)]
    pub name: Option<String>,
    /// Take the lock in shared mode (any number of shared holders, no
    /// exclusive one).
    #[arg(long)]
    pub shared: bool,
    /// TTL of the holder's lease, in seconds: how long the lock outlives a
    /// holder that stops renewing (crashed, paused, partitioned).
    #[arg(long, default_value_t = 10)]
    pub ttl: i64,
    /// Give up waiting after this many seconds; 0 tries once. Default: wait
    /// until granted.
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Waiters with a higher priority are served first.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub priority: i32,
    /// Label shown to others by `lock inspect` (default: host and pid).
    #[arg(long)]
    pub owner: Option<String>,
    /// Command to run while holding the lock; without one, the lock is held
    /// until interrupted.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Lower-case hex of `bytes` (how a handle is passed to the command).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn locks_client(ch: Channel) -> LocksClient<Channel> {
    LocksClient::new(ch)
}

pub async fn lock(client: &Client, a: LockArgs, f: Format) -> anyhow::Result<()> {
    match a.sub {
        Some(LockSub::Inspect { name, prefix }) => inspect(client, name, prefix, f).await,
        None => hold(client, a.hold).await,
    }
}

async fn inspect(client: &Client, name: String, prefix: bool, f: Format) -> anyhow::Result<()> {
    let r = client
        .request(OpKind::Read, move |ch, _| {
            let name = name.clone();
            async move {
                locks_client(ch)
                    .inspect(wpb::InspectRequest { name, prefix })
                    .await
            }
        })
        .await?;
    let mode = |m: i32| {
        if m == wpb::LockMode::Shared as i32 {
            "shared"
        } else {
            "exclusive"
        }
    };
    if f == Format::Json {
        let locks: Vec<serde_json::Value> = r
            .locks
            .iter()
            .map(|l| {
                serde_json::json!({
                    "name": l.name,
                    "holders": l.holders.iter().map(|h| serde_json::json!({
                        "owner": h.owner, "token": h.token, "mode": mode(h.mode),
                        "lease": format!("{:016x}", h.lease), "lease_ttl": h.lease_ttl,
                    })).collect::<Vec<_>>(),
                    "waiters": l.waiters.iter().map(|w| serde_json::json!({
                        "waiter_id": w.waiter_id, "owner": w.owner, "mode": mode(w.mode),
                        "priority": w.priority, "lease": format!("{:016x}", w.lease),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return print(&format!("{}\n", serde_json::json!({ "locks": locks })));
    }
    if r.locks.is_empty() {
        return print("no such lock (nobody holds or waits for it)\n");
    }
    let mut s = String::new();
    for l in &r.locks {
        s.push_str(&format!("lock {}\n", l.name));
        for h in &l.holders {
            let ttl = if h.lease_ttl >= 0 {
                format!("{}s", h.lease_ttl)
            } else {
                "?".into()
            };
            s.push_str(&format!(
                "  holder  token={} mode={} owner={:?} lease={:016x} lease-remaining={ttl}\n",
                h.token,
                mode(h.mode),
                h.owner,
                h.lease
            ));
        }
        for (i, w) in l.waiters.iter().enumerate() {
            s.push_str(&format!(
                "  waiter  #{} id={} mode={} priority={} owner={:?} lease={:016x}\n",
                i + 1,
                w.waiter_id,
                mode(w.mode),
                w.priority,
                w.owner,
                w.lease
            ));
        }
    }
    print(&s)
}

/// Acquires (waiting in the queue), then runs the command or waits for
/// Ctrl-C; releases afterwards. The lock is lost when the lease is (the
/// keep-alive fails) or the server says so on the acquire stream.
async fn hold(client: &Client, a: HoldArgs) -> anyhow::Result<()> {
    let name = a.name.clone().unwrap_or_default();
    let mut lease = KeptLease::start(client, a.ttl).await?;
    let owner = a.owner.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{} pid {}", host.trim(), std::process::id())
    });
    let wait_ms = match a.timeout {
        None => -1,
        Some(t) if t.is_finite() && t >= 0.0 => ((t * 1000.0) as i64).max(i64::from(t > 0.0)),
        Some(t) => bail!("invalid --timeout {t}"),
    };
    let req = wpb::AcquireRequest {
        name: name.clone(),
        mode: if a.shared {
            wpb::LockMode::Shared as i32
        } else {
            wpb::LockMode::Exclusive as i32
        },
        lease: lease.id(),
        ttl: 0,
        wait_timeout_ms: wait_ms,
        priority: a.priority,
        owner,
        handle: Vec::new(),
    };
    let mut stream = client
        .request(OpKind::Write, move |ch, _| {
            let req = req.clone();
            async move { locks_client(ch).acquire(req).await }
        })
        .await
        .with_context(|| format!("acquiring lock {name}"))?;
    use wpb::acquire_response::State;
    let (token, handle) = loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            reason = lease.lost() => bail!("waiting for lock {name} failed: {reason}"),
            _ = tokio::signal::ctrl_c() => {
                lease.release().await;
                return Ok(());
            }
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => {
                lease.release().await;
                bail!("the server ended the wait for lock {name}")
            }
            Err(e) => {
                lease.release().await;
                if e.code() == tonic::Code::DeadlineExceeded {
                    bail!("timed out waiting for lock {name}");
                }
                bail!("waiting for lock {name}: {}", e.message());
            }
        };
        match State::try_from(msg.state) {
            Ok(State::Granted) => break (msg.token, msg.handle),
            Ok(State::Queued) => {
                tracing::info!(position = msg.position, "waiting for lock {name}");
            }
            Ok(State::WouldBlock) => {
                lease.release().await;
                bail!("lock {name} is held by another owner");
            }
            Ok(State::Lost) | Err(_) => {
                lease.release().await;
                bail!("waiting for lock {name} ended: {}", msg.reason);
            }
        }
    };
    let lost = async {
        // The stream reports the end of the hold; if the stream itself
        // breaks, the lease keep-alive still tells.
        if let Ok(Some(m)) = stream.message().await {
            if m.state == State::Lost as i32 {
                return m.reason;
            }
        }
        std::future::pending::<String>().await
    };
    let result = if a.command.is_empty() {
        print(&format!("{name}\ntoken {token}\n"))?;
        tokio::select! {
            reason = lost => Err(anyhow!("lost lock {name}: {reason}")),
            reason = lease.lost() => Err(anyhow!("lost lock {name}: {reason}")),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    } else {
        run_holding(&a, &name, token, &handle, &mut lease, lost).await
    };
    let n = name.clone();
    let released = client
        .request(OpKind::Write, move |ch, _| {
            let req = wpb::ReleaseRequest {
                name: n.clone(),
                token,
                handle: handle.clone(),
            };
            async move { locks_client(ch).release(req).await }
        })
        .await;
    if let Err(e) = released {
        // The lease is revoked next, which ends the hold anyway.
        tracing::debug!("releasing lock {name} token {token}: {e}");
    }
    lease.release().await;
    result
}

async fn run_holding(
    a: &HoldArgs,
    name: &str,
    token: u64,
    handle: &[u8],
    lease: &mut KeptLease,
    lost: impl std::future::Future<Output = String>,
) -> anyhow::Result<()> {
    let (prog, args) = a
        .command
        .split_first()
        .ok_or_else(|| anyhow!("no command given"))?;
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .env("WARDEN_LOCK_NAME", name)
        .env("WARDEN_LOCK_TOKEN", token.to_string())
        .env("WARDEN_LOCK_HANDLE", hex(handle))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {prog}"))?;
    let killed = |reason: String| {
        anyhow!("lost lock {name} while {prog} was running ({reason}); {prog} was killed")
    };
    tokio::select! {
        status = child.wait() => {
            let status = status.with_context(|| format!("waiting for {prog}"))?;
            if status.success() {
                Ok(())
            } else {
                bail!("{prog} exited with {status}")
            }
        }
        reason = lost => {
            let _ = child.kill().await;
            Err(killed(reason))
        }
        reason = lease.lost() => {
            let _ = child.kill().await;
            Err(killed(reason))
        }
    }
}
