//! The coordination commands of the command-line client: `lease`, `watch`,
//! `elect` and `lock`. They are long-lived or streaming, so unlike the KV
//! commands they print as they go (straight to stdout).
//!
//! Streams (keep-alive, watch, observe) move to the next endpoint when one
//! fails; a watch resumes from the revision after the last event it printed,
//! so nothing is skipped or printed twice across the switch.
//!
//! `lock` runs a command while holding an etcd-style lock (`v3lock`):
//! it exports `WARDEN_LOCK_NAME`, `WARDEN_LOCK_KEY` and `WARDEN_LOCK_TOKEN`
//! (the lock key's revision: strictly increasing per lock in grant order, a
//! fencing token), keeps the lease alive, and kills the command if the lease
//! is lost.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::kv::parse_lease_id;
use super::Format;
use crate::client::{Client, OpKind};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::v3electionpb as epb;
use crate::proto::v3electionpb::election_client::ElectionClient;
use crate::proto::v3lockpb as lpb;
use crate::proto::v3lockpb::lock_client::LockClient;

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

fn event_text(ev: &crate::proto::mvccpb::Event, prev: bool) -> String {
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

fn event_json(ev: &crate::proto::mvccpb::Event) -> serde_json::Value {
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
        crate::api::recipes::prefix_end(&key)
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
pub struct LockArgs {
    /// Lock name.
    pub name: String,
    /// TTL of the holder's lease, in seconds: how long the lock outlives a
    /// holder that stops renewing (crashed, paused, partitioned).
    #[arg(long, default_value_t = 10)]
    pub ttl: i64,
    /// Give up waiting after this many seconds (default: wait forever).
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Command to run while holding the lock; without one, the lock is held
    /// until interrupted.
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub async fn lock(client: &Client, a: LockArgs) -> anyhow::Result<()> {
    let mut lease = KeptLease::start(client, a.ttl).await?;
    let (name, id) = (a.name.clone().into_bytes(), lease.id);
    let acquire = client.request(OpKind::Write, move |ch, _| {
        let name = name.clone();
        async move {
            LockClient::new(ch)
                .lock(lpb::LockRequest { name, lease: id })
                .await
        }
    });
    let wait = a
        .timeout
        .filter(|t| t.is_finite() && *t >= 0.0)
        .map_or(Duration::MAX, Duration::from_secs_f64);
    // The client's per-call deadline does not apply to waiting for a lock.
    let acquired = tokio::select! {
        r = acquire => r,
        _ = tokio::time::sleep(wait) => {
            lease.release(client).await;
            bail!("timed out waiting for lock {}", a.name);
        }
        reason = lease.lost() => bail!("waiting for lock {} failed: {reason}", a.name),
        _ = tokio::signal::ctrl_c() => {
            lease.release(client).await;
            return Ok(());
        }
    };
    let held = match acquired {
        Ok(r) => r,
        Err(e) => {
            lease.release(client).await;
            return Err(anyhow!(e)).context(format!("acquiring lock {}", a.name));
        }
    };
    let token = held.header.as_ref().map_or(0, |h| h.revision);
    let key = String::from_utf8_lossy(&held.key).into_owned();
    let result = if a.command.is_empty() {
        print(&format!("{key}\ntoken {token}\n"))?;
        tokio::select! {
            reason = lease.lost() => Err(anyhow!("lost lock {}: {reason}", a.name)),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    } else {
        run_holding(&a, &key, token, &mut lease).await
    };
    let k = held.key.clone();
    let _ = client
        .request(OpKind::Write, move |ch, _| {
            let key = k.clone();
            async move { LockClient::new(ch).unlock(lpb::UnlockRequest { key }).await }
        })
        .await;
    lease.release(client).await;
    result
}

async fn run_holding(
    a: &LockArgs,
    key: &str,
    token: i64,
    lease: &mut KeptLease,
) -> anyhow::Result<()> {
    let (prog, args) = a
        .command
        .split_first()
        .ok_or_else(|| anyhow!("no command given"))?;
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .env("WARDEN_LOCK_NAME", &a.name)
        .env("WARDEN_LOCK_KEY", key)
        .env("WARDEN_LOCK_TOKEN", token.to_string())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {prog}"))?;
    tokio::select! {
        status = child.wait() => {
            let status = status.with_context(|| format!("waiting for {prog}"))?;
            if status.success() {
                Ok(())
            } else {
                bail!("{prog} exited with {status}")
            }
        }
        reason = lease.lost() => {
            let _ = child.kill().await;
            bail!("lost lock {} while {prog} was running ({reason}); {prog} was killed", a.name)
        }
    }
}
