//! The coordination commands of the command-line client: `lease`, `watch`,
//! `elect` and `lock`. They are long-lived or streaming, so unlike the KV
//! commands they print as they go (straight to stdout).
//!
//! Streams (keep-alive, watch, observe) move to the next endpoint when one
//! fails; a watch resumes from the revision after the last event it printed,
//! so nothing is skipped or printed twice across the switch.
//!
//! `lock` runs a command while holding a lock of warden's native lock
//! service (`warden.v1.Locks`): it exports `WARDEN_LOCK_NAME` and
//! `WARDEN_LOCK_TOKEN` (the fencing token), keeps the lease alive, and kills
//! the command if the lock is lost. `lock inspect` shows holders and queue.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::kv::parse_lease_id;
use super::Format;
use warden_client::{Client, OpKind};
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::lease_client::LeaseClient;
use warden_proto::etcdserverpb::watch_client::WatchClient;
use warden_proto::v3electionpb as epb;
use warden_proto::v3electionpb::election_client::ElectionClient;
use warden_proto::warden::v1 as wpb;
use warden_proto::warden::v1::locks_client::LocksClient;

/// Pause between attempts when a stream's endpoint fails.
const RETRY: Duration = Duration::from_millis(300);

fn print(s: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .context("writing output")
}

// ---------------------------------------------------------------------------
// lease
// ---------------------------------------------------------------------------

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Create a lease with a TTL in seconds.
    Grant { ttl: i64 },
    /// Revoke a lease and delete its keys.
    Revoke {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// Show a lease's remaining time (and keys).
    Timetolive {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Also list the attached keys.
        #[arg(long)]
        keys: bool,
    },
    /// List all leases.
    List,
    /// Keep a lease alive until interrupted (or once).
    KeepAlive {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
}

fn lease_client(ch: Channel) -> LeaseClient<Channel> {
    LeaseClient::new(ch)
}

pub async fn grant(client: &Client, ttl: i64) -> anyhow::Result<pb::LeaseGrantResponse> {
    let r = client
        .request(OpKind::Write, move |ch, _| async move {
            lease_client(ch)
                .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
                .await
        })
        .await?;
    Ok(r)
}

async fn revoke(client: &Client, id: i64) -> anyhow::Result<()> {
    client
        .request(OpKind::Write, move |ch, _| async move {
            lease_client(ch)
                .lease_revoke(pb::LeaseRevokeRequest { id })
                .await
        })
        .await?;
    Ok(())
}

pub async fn lease(client: &Client, cmd: LeaseCommand, f: Format) -> anyhow::Result<()> {
    let json = f == Format::Json;
    match cmd {
        LeaseCommand::Grant { ttl } => {
            let r = grant(client, ttl).await?;
            if json {
                print(&format!("{{\"ID\":{},\"TTL\":{}}}\n", r.id, r.ttl))
            } else {
                print(&format!(
                    "lease {:016x} granted with TTL({}s)\n",
                    r.id, r.ttl
                ))
            }
        }
        LeaseCommand::Revoke { id } => {
            revoke(client, id).await?;
            print(&format!("lease {id:016x} revoked\n"))
        }
        LeaseCommand::Timetolive { id, keys } => {
            let r = client
                .request(OpKind::Read, move |ch, _| async move {
                    lease_client(ch)
                        .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys })
                        .await
                })
                .await?;
            let names: Vec<String> = r
                .keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            if json {
                let v = serde_json::json!({
                    "ID": r.id, "TTL": r.ttl, "granted-ttl": r.granted_ttl, "keys": names,
                });
                print(&format!("{v}\n"))
            } else if r.ttl == -1 {
                print(&format!("lease {id:016x} already expired\n"))
            } else {
                let mut s = format!(
                    "lease {id:016x} granted with TTL({}s), remaining({}s)",
                    r.granted_ttl, r.ttl
                );
                if keys {
                    s.push_str(&format!(", attached keys([{}])", names.join(" ")));
                }
                print(&format!("{s}\n"))
            }
        }
        LeaseCommand::List => {
            let r = client
                .request(OpKind::Read, move |ch, _| async move {
                    lease_client(ch)
                        .lease_leases(pb::LeaseLeasesRequest {})
                        .await
                })
                .await?;
            if json {
                let ids: Vec<i64> = r.leases.iter().map(|l| l.id).collect();
                print(&format!("{}\n", serde_json::json!({ "leases": ids })))
            } else {
                let mut s = format!("found {} leases\n", r.leases.len());
                for l in &r.leases {
                    s.push_str(&format!("{:016x}\n", l.id));
                }
                print(&s)
            }
        }
        LeaseCommand::KeepAlive { id, once } => {
            keep_alive(client, id, once, |ttl| {
                print(&format!("lease {id:016x} keepalived with TTL({ttl})\n"))
            })
            .await
        }
    }
}

/// Renews lease `id` every third of its TTL, over any endpoint, until an
/// error: the lease expired or was revoked (TTL 0 from the leader), or no
/// renewal got through for a whole TTL. `on_renew` sees each new TTL.
pub async fn keep_alive(
    client: &Client,
    id: i64,
    once: bool,
    mut on_renew: impl FnMut(i64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut last_ok = tokio::time::Instant::now();
    let mut ttl: i64 = 0;
    loop {
        for (ep, ch) in client.channels() {
            let (tx, rx) = mpsc::channel(1);
            let stream = lease_client(ch)
                .lease_keep_alive(ReceiverStream::new(rx))
                .await;
            let mut stream = match stream {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    tracing::debug!("keep-alive via {ep}: {e}");
                    continue;
                }
            };
            loop {
                if tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
                    break;
                }
                match stream.message().await {
                    Ok(Some(r)) if r.ttl <= 0 => bail!("lease {id:016x} expired or revoked"),
                    Ok(Some(r)) => {
                        ttl = r.ttl;
                        last_ok = tokio::time::Instant::now();
                        on_renew(r.ttl)?;
                        if once {
                            return Ok(());
                        }
                        let every = Duration::from_millis((r.ttl.max(1) as u64) * 1000 / 3);
                        tokio::time::sleep(every.max(Duration::from_millis(500))).await;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("keep-alive via {ep}: {e}");
                        break;
                    }
                }
            }
            if ttl > 0 && last_ok.elapsed() > Duration::from_secs(ttl as u64) {
                bail!("lease {id:016x} lost: no renewal got through for {ttl}s");
            }
        }
        if once {
            bail!("could not renew lease {id:016x} on any endpoint");
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// A lease kept alive in the background; `lost` turns `Some(reason)` when
/// the keep-alive gives up.
struct KeptLease {
    id: i64,
    lost: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeptLease {
    async fn start(client: &Client, ttl: i64) -> anyhow::Result<KeptLease> {
        let id = grant(client, ttl).await.context("creating the lease")?.id;
        let (tx, lost) = watch::channel(None);
        let c = client.clone();
        let task = tokio::spawn(async move {
            let reason = match keep_alive(&c, id, false, |_| Ok(())).await {
                Ok(()) => "keep-alive stopped".to_string(),
                Err(e) => format!("{e:#}"),
            };
            let _ = tx.send(Some(reason));
        });
        Ok(KeptLease { id, lost, task })
    }

    /// Resolves when the lease is lost, with the reason.
    async fn lost(&mut self) -> String {
        loop {
            if let Some(r) = self.lost.borrow_and_update().clone() {
                return r;
            }
            if self.lost.changed().await.is_err() {
                return "keep-alive task ended".into();
            }
        }
    }

    /// Stops renewing and revokes the lease (best effort).
    async fn release(self, client: &Client) {
        self.task.abort();
        if let Err(e) = revoke(client, self.id).await {
            tracing::debug!("revoking lease {:x}: {e:#}", self.id);
        }
    }
}

// ---------------------------------------------------------------------------
// watch
// ---------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Key to watch (the start of the range with --prefix).
    pub key: String,
    /// Watch every key starting with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Start from this revision (replaying history); default: from now.
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Also print each key's previous value.
    #[arg(long)]
    pub prev_kv: bool,
}

fn event_text(ev: &warden_proto::mvccpb::Event, prev: bool) -> String {
    let kind = if ev.r#type == 1 { "DELETE" } else { "PUT" };
    let mut s = format!("{kind}\n");
    if prev {
        if let Some(p) = &ev.prev_kv {
            s.push_str(&format!(
                "{}\n{}\n",
                String::from_utf8_lossy(&p.key),
                String::from_utf8_lossy(&p.value)
            ));
        }
    }
    if let Some(kv) = &ev.kv {
        s.push_str(&format!(
            "{}\n{}\n",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value)
        ));
    }
    s
}

fn event_json(ev: &warden_proto::mvccpb::Event) -> serde_json::Value {
    let kv = ev.kv.clone().unwrap_or_default();
    serde_json::json!({
        "type": if ev.r#type == 1 { "DELETE" } else { "PUT" },
        "key": String::from_utf8_lossy(&kv.key),
        "value": String::from_utf8_lossy(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "prev_value": ev.prev_kv.as_ref().map(|p| String::from_utf8_lossy(&p.value).into_owned()),
    })
}

pub async fn watch_cmd(client: &Client, a: WatchArgs, f: Format) -> anyhow::Result<()> {
    let key = a.key.clone().into_bytes();
    let range_end = if a.prefix {
        warden_client::keys::prefix_range_end(&key)
    } else {
        Vec::new()
    };
    // The next revision to ask for; 0 until the first stream says where
    // "now" is.
    let mut next = a.rev.max(0);
    loop {
        for (ep, ch) in client.channels() {
            let (tx, rx) = mpsc::channel(1);
            let create = pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key: key.clone(),
                        range_end: range_end.clone(),
                        start_revision: next,
                        prev_kv: a.prev_kv,
                        ..Default::default()
                    },
                )),
            };
            if tx.send(create).await.is_err() {
                continue;
            }
            let mut stream = match WatchClient::new(ch).watch(ReceiverStream::new(rx)).await {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    tracing::debug!("watch via {ep}: {e}");
                    continue;
                }
            };
            loop {
                let resp = match stream.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("watch via {ep}: {e}");
                        break;
                    }
                };
                if resp.canceled {
                    if resp.compact_revision > 0 {
                        bail!(
                            "watch was canceled: required revision has been compacted (compact revision {})",
                            resp.compact_revision
                        );
                    }
                    bail!("watch was canceled: {}", resp.cancel_reason);
                }
                if resp.created && next == 0 {
                    next = resp.header.as_ref().map_or(0, |h| h.revision) + 1;
                }
                if resp.events.is_empty() {
                    continue;
                }
                let mut text = String::new();
                for ev in &resp.events {
                    if f == Format::Json {
                        text.push_str(&format!("{}\n", event_json(ev)));
                    } else {
                        text.push_str(&event_text(ev, a.prev_kv));
                    }
                    if let Some(kv) = &ev.kv {
                        next = next.max(kv.mod_revision + 1);
                    }
                }
                print(&text)?;
            }
            drop(tx);
        }
        tokio::time::sleep(RETRY).await;
    }
}

// ---------------------------------------------------------------------------
// elect
// ---------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct ElectArgs {
    /// Election name.
    pub name: String,
    /// Value to proclaim once elected (required unless --listen).
    pub proposal: Option<String>,
    /// Print the leader's value each time it changes instead of campaigning.
    #[arg(long, short = 'l')]
    pub listen: bool,
    /// TTL of the candidate's lease, in seconds.
    #[arg(long, default_value_t = 10)]
    pub ttl: i64,
}

pub async fn elect(client: &Client, a: ElectArgs) -> anyhow::Result<()> {
    if a.listen {
        return observe(client, a.name.into_bytes()).await;
    }
    let proposal = a
        .proposal
        .ok_or_else(|| anyhow!("elect needs a proposal (or --listen)"))?;
    let mut lease = KeptLease::start(client, a.ttl).await?;
    let (name, id) = (a.name.clone().into_bytes(), lease.id);
    let value = proposal.into_bytes();
    let campaign = client.request(OpKind::Write, move |ch, _| {
        let (name, value) = (name.clone(), value.clone());
        async move {
            ElectionClient::new(ch)
                .campaign(epb::CampaignRequest {
                    name,
                    lease: id,
                    value,
                })
                .await
        }
    });
    let won = tokio::select! {
        r = campaign => r,
        reason = lease.lost() => bail!("campaign for {} failed: {reason}", a.name),
        _ = tokio::signal::ctrl_c() => {
            lease.release(client).await;
            return Ok(());
        }
    };
    let leader = match won {
        Ok(r) => r
            .leader
            .ok_or_else(|| anyhow!("campaign answered without a leader key"))?,
        Err(e) => {
            lease.release(client).await;
            return Err(e.into());
        }
    };
    print(&format!(
        "{}\n{}\n",
        String::from_utf8_lossy(&leader.key),
        String::from_utf8_lossy(&proposal_value(client, &leader).await)
    ))?;
    let result = tokio::select! {
        reason = lease.lost() => Err(anyhow!("lost leadership of {}: {reason}", a.name)),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    let l = leader.clone();
    let _ = client
        .request(OpKind::Write, move |ch, _| {
            let l = l.clone();
            async move {
                ElectionClient::new(ch)
                    .resign(epb::ResignRequest { leader: Some(l) })
                    .await
            }
        })
        .await;
    lease.release(client).await;
    result
}

/// The value under the leader key (what was proclaimed).
async fn proposal_value(client: &Client, leader: &epb::LeaderKey) -> Vec<u8> {
    client
        .get(leader.key.clone(), Default::default())
        .await
        .ok()
        .and_then(|r| r.kvs.into_iter().next())
        .map(|kv| kv.value)
        .unwrap_or_default()
}

async fn observe(client: &Client, name: Vec<u8>) -> anyhow::Result<()> {
    let mut last: Option<(Vec<u8>, i64)> = None;
    loop {
        for (ep, ch) in client.channels() {
            let req = epb::LeaderRequest { name: name.clone() };
            let mut stream = match ElectionClient::new(ch).observe(req).await {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    tracing::debug!("observe via {ep}: {e}");
                    continue;
                }
            };
            while let Ok(Some(r)) = stream.message().await {
                let Some(kv) = r.kv else { continue };
                let id = (kv.key.clone(), kv.mod_revision);
                if last.as_ref() != Some(&id) {
                    last = Some(id);
                    print(&format!(
                        "{}\n{}\n",
                        String::from_utf8_lossy(&kv.key),
                        String::from_utf8_lossy(&kv.value)
                    ))?;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

// ---------------------------------------------------------------------------
// lock
// ---------------------------------------------------------------------------

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
        lease: lease.id,
        ttl: 0,
        wait_timeout_ms: wait_ms,
        priority: a.priority,
        owner,
    };
    let mut stream = client
        .request(OpKind::Write, move |ch, _| {
            let req = req.clone();
            async move { locks_client(ch).acquire(req).await }
        })
        .await
        .with_context(|| format!("acquiring lock {name}"))?;
    use wpb::acquire_response::State;
    let token = loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            reason = lease.lost() => bail!("waiting for lock {name} failed: {reason}"),
            _ = tokio::signal::ctrl_c() => {
                lease.release(client).await;
                return Ok(());
            }
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => {
                lease.release(client).await;
                bail!("the server ended the wait for lock {name}")
            }
            Err(e) => {
                lease.release(client).await;
                if e.code() == tonic::Code::DeadlineExceeded {
                    bail!("timed out waiting for lock {name}");
                }
                bail!("waiting for lock {name}: {}", e.message());
            }
        };
        match State::try_from(msg.state) {
            Ok(State::Granted) => break msg.token,
            Ok(State::Queued) => {
                tracing::info!(position = msg.position, "waiting for lock {name}");
            }
            Ok(State::WouldBlock) => {
                lease.release(client).await;
                bail!("lock {name} is held by another owner");
            }
            Ok(State::Lost) | Err(_) => {
                lease.release(client).await;
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
        run_holding(&a, &name, token, &mut lease, lost).await
    };
    let n = name.clone();
    let _ = client
        .request(OpKind::Write, move |ch, _| {
            let name = n.clone();
            async move {
                locks_client(ch)
                    .release(wpb::ReleaseRequest { name, token })
                    .await
            }
        })
        .await;
    lease.release(client).await;
    result
}

async fn run_holding(
    a: &HoldArgs,
    name: &str,
    token: u64,
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
