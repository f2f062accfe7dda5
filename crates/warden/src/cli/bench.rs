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
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

use warden_client::endpoint::{endpoint_uri, parse_endpoints};
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::kv_client::KvClient;

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
}

fn key(i: u64, size: usize) -> Vec<u8> {
    let s = format!("{i:0width$}", width = size.max(1));
    s.into_bytes()
}

/// Runs the benchmark against `endpoints` and prints a report.
pub async fn run_bench(endpoints: &[String], args: BenchArgs, json: bool) -> anyhow::Result<()> {
    if args.clients == 0 || args.conns == 0 || args.total == 0 {
        bail!("--clients, --conns and --total must be > 0");
    }
    let endpoints = parse_endpoints(endpoints)?;
    let mut channels = Vec::new();
    for i in 0..args.conns {
        let ep = &endpoints[i % endpoints.len()];
        let ch: Channel = Endpoint::from_shared(endpoint_uri(ep, false))
            .with_context(|| format!("bad endpoint {ep:?}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("connecting to {ep}"))?;
        channels.push(ch);
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
    }
    if ok == 0 {
        bail!("every request failed ({errs})");
    }
    Ok(())
}
