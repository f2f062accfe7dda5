//! `warden bench`: drives any etcd v3 endpoint (warden or etcd itself) with N
//! concurrent clients and reports throughput and latency percentiles (p50,
//! p90, p99, p99.9, max), as text or JSON.
//!
//! Each client is a task issuing one request at a time over a shared pool of
//! HTTP/2 connections spread round-robin over the endpoints; latencies go into
//! an HDR histogram (microsecond resolution). Endpoints are parsed by the
//! client library's parser, like every other command's.
//!
//! Must never: retry a failed request or record its latency (failures are
//! counted and reported next to the successes), or hide that every request
//! failed (that is an error). Note that `put` overwrites the keys it names
//! (zero-padded numbers), so it is not for clusters whose data matters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use tonic::transport::Channel;

use warden_client::endpoint::parse_endpoints;
use warden_client::TlsOptions;
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::kv_client::KvClient;
use warden_proto::etcdserverpb::lease_client::LeaseClient;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BenchOp {
    /// Put random keys.
    Put,
    /// Linearizable single-key gets.
    Get,
    /// Serializable single-key gets.
    GetSerializable,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to do.
    #[arg(value_enum, default_value = "put")]
    pub op: BenchOp,
    /// Concurrent clients (each has one request in flight).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// HTTP/2 connections shared by the clients.
    #[arg(long, default_value_t = 4)]
    pub conns: usize,
    /// Total requests.
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub key_space: u64,
    /// Keep this many leases alive during the run, from one more connection
    /// and one keep-alive stream, each renewed every TTL/3 as etcd clients
    /// do. They are granted before the measurement and revoked after it.
    #[arg(long, default_value_t = 0)]
    pub keepalive_leases: usize,
    /// TTL in seconds of the `--keepalive-leases` leases.
    #[arg(long, default_value_t = 10)]
    pub keepalive_ttl: i64,
}

/// Leases kept alive in the background (`--keepalive-leases`).
struct Keeper {
    channel: Channel,
    ids: Arc<Vec<i64>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<(u64, u64)>>,
}

impl Keeper {
    /// Grants `n` leases (64 at a time) and starts renewing them.
    async fn start(channel: Channel, n: usize, ttl: i64) -> anyhow::Result<Keeper> {
        let lease = LeaseClient::new(channel.clone());
        let ids: Vec<i64> = futures::stream::iter(0..n)
            .map(|_| {
                let mut lease = lease.clone();
                async move {
                    lease
                        .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
                        .await
                        .map(|r| r.into_inner().id)
                }
            })
            .buffer_unordered(64)
            .try_collect()
            .await
            .context("granting the keep-alive leases")?;
        let ids = Arc::new(ids);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let mut answers = LeaseClient::new(channel.clone())
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .context("opening the keep-alive stream")?
            .into_inner();
        let round = Duration::from_millis((ttl.max(1) as u64) * 1000 / 3);
        let all = ids.clone();
        let task = tokio::spawn(async move {
            let (mut renewed, mut lost) = (0u64, 0u64);
            while !*stopped.borrow() {
                let started = Instant::now();
                let send = async {
                    for id in all.iter() {
                        if tx
                            .send(pb::LeaseKeepAliveRequest { id: *id })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                };
                let recv = async {
                    for _ in 0..all.len() {
                        match answers.message().await {
                            Ok(Some(r)) if r.ttl > 0 => renewed += 1,
                            Ok(Some(_)) => lost += 1,
                            Ok(None) => bail!("keep-alive stream ended"),
                            Err(e) => bail!("keep-alive stream: {e}"),
                        }
                    }
                    Ok(())
                };
                let (_, r) = tokio::join!(send, recv);
                r?;
                let _ = tokio::time::timeout(
                    round.saturating_sub(started.elapsed()),
                    stopped.changed(),
                )
                .await;
            }
            Ok((renewed, lost))
        });
        Ok(Keeper {
            channel,
            ids,
            stop,
            task,
        })
    }

    /// Stops renewing and revokes the leases; returns (renewals answered,
    /// renewals of a lease found expired).
    async fn finish(self) -> anyhow::Result<(u64, u64)> {
        let _ = self.stop.send(true);
        let counts = self.task.await.context("keep-alive task")??;
        let lease = LeaseClient::new(self.channel.clone());
        futures::stream::iter(self.ids.iter().copied())
            .map(|id| {
                let mut lease = lease.clone();
                async move { lease.lease_revoke(pb::LeaseRevokeRequest { id }).await }
            })
            .buffer_unordered(64)
            .for_each(|_| async {})
            .await;
        Ok(counts)
    }
}

fn key(i: u64, size: usize) -> Vec<u8> {
    let s = format!("{i:0width$}", width = size.max(1));
    s.into_bytes()
}

/// One connection to `ep` (over TLS with `tls`), made now.
async fn connect(
    ep: &str,
    tls: Option<&TlsOptions>,
    timeout: Option<Duration>,
) -> anyhow::Result<Channel> {
    let mut e = warden_client::tls::endpoint(ep, tls)?.connect_timeout(Duration::from_secs(3));
    if let Some(t) = timeout {
        e = e.timeout(t);
    }
    e.connect()
        .await
        .with_context(|| format!("connecting to {ep}"))
}

/// Runs the benchmark against `endpoints` and prints a report.
pub async fn run_bench(
    endpoints: &[String],
    tls: Option<TlsOptions>,
    args: BenchArgs,
    json: bool,
) -> anyhow::Result<()> {
    if args.clients == 0 || args.conns == 0 || args.total == 0 {
        bail!("--clients, --conns and --total must be > 0");
    }
    let endpoints = parse_endpoints(endpoints)?;
    let mut channels = Vec::new();
    for i in 0..args.conns {
        let ep = &endpoints[i % endpoints.len()];
        channels.push(connect(ep, tls.as_ref(), Some(Duration::from_secs(10))).await?);
    }
    let value = vec![b'v'; args.val_size];
    if matches!(args.op, BenchOp::Get | BenchOp::GetSerializable) {
        // Make sure the keys read exist.
        let mut c = KvClient::new(channels[0].clone());
        for i in 0..args.key_space.min(1000) {
            c.put(pb::PutRequest {
                key: key(i, args.key_size),
                value: value.clone(),
                ..Default::default()
            })
            .await
            .context("preloading keys")?;
        }
    }
    let keeper = if args.keepalive_leases > 0 {
        // Its own connection, so the measured clients share none with it.
        let ep = &endpoints[args.conns % endpoints.len()];
        let ch = connect(ep, tls.as_ref(), None).await?;
        Some(Keeper::start(ch, args.keepalive_leases, args.keepalive_ttl).await?)
    } else {
        None
    };
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut client = KvClient::new(channels[c % channels.len()].clone());
        let next = next.clone();
        let errors = errors.clone();
        let value = value.clone();
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
            let mut seed = (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= args.total {
                    break;
                }
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let space = if matches!(args.op, BenchOp::Put) {
                    args.key_space
                } else {
                    args.key_space.min(1000)
                };
                let k = key(seed % space.max(1), args.key_size);
                let t = Instant::now();
                let ok = match args.op {
                    BenchOp::Put => client
                        .put(pb::PutRequest {
                            key: k,
                            value: value.clone(),
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                    BenchOp::Get | BenchOp::GetSerializable => client
                        .range(pb::RangeRequest {
                            key: k,
                            serializable: matches!(args.op, BenchOp::GetSerializable),
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                };
                if ok {
                    let us = t.elapsed().as_micros().max(1) as u64;
                    h.saturating_record(us);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, anyhow::Error>(h)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
    for t in tasks {
        let h = t.await.context("bench client task")??;
        all.add(&h).map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
    }
    let secs = started.elapsed().as_secs_f64();
    let kept = match keeper {
        Some(k) => Some(k.finish().await?),
        None => None,
    };
    let ok = all.len();
    let errs = errors.load(Ordering::Relaxed);
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    if json {
        let v = serde_json::json!({
            "op": format!("{:?}", args.op),
            "clients": args.clients,
            "conns": args.conns,
            "requests": ok,
            "errors": errs,
            "seconds": secs,
            "throughput": ok as f64 / secs,
            "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": all.max() as f64 / 1000.0, "mean": all.mean() / 1000.0},
            "keepalive_leases": args.keepalive_leases,
            "keepalives": kept.map(|(r, _)| r),
            "keepalives_expired": kept.map(|(_, l)| l),
        });
        println!("{v}");
    } else {
        println!(
            "op {:?}, {} clients over {} connections",
            args.op, args.clients, args.conns
        );
        println!("requests  {ok} ok, {errs} failed in {secs:.2} s");
        println!("throughput {:.0} req/s", ok as f64 / secs);
        println!(
            "latency ms: mean {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            all.mean() / 1000.0,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            all.max() as f64 / 1000.0
        );
        if let Some((renewed, lost)) = kept {
            println!(
                "kept {} leases alive: {renewed} renewals ({:.0}/s), {lost} found expired",
                args.keepalive_leases,
                renewed as f64 / secs
            );
        }
    }
    if ok == 0 {
        bail!("every request failed ({errs})");
    }
    Ok(())
}
