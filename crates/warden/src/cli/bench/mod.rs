//! `warden bench`: drives any etcd v3 endpoint (warden or etcd itself) with N
//! concurrent clients and reports throughput and latency percentiles (p50,
//! p90, p99, p99.9, max), as text or JSON, so that the two can be compared
//! on the same machine with the same client.
//!
//! Files: `run` (one measured run: connections, workloads, clients),
//! `keeper` (leases kept alive in the background), `report` (medians,
//! ratios, percentile curves, the failover timeline and gap: pure
//! arithmetic), `svg` (the `--plot` chart). This file holds the flags, the
//! `--against` pairs and the printing.
//!
//! Workloads: `put`, `get` (linearizable), `get-serializable`, `txn-cas`,
//! `v3lock`, `native-lock` (warden only), `watch` (put-to-event latency),
//! `lease-keepalive` and `mixed`. `--against` alternates runs on a second
//! cluster (A, B, A, B, ...) and reports the medians and the A/B ratios;
//! `--failover` reports the longest time without a successful request.
//!
//! Must never: retry a failed request or record its latency (failures are
//! counted and reported next to the successes), or hide that every request
//! failed (that is an error). Note that the write workloads overwrite the
//! keys they name (zero-padded numbers, `bench-watch/…`, `bench-lock/…`),
//! so it is not for clusters whose data matters.

mod keeper;
pub mod report;
mod run;
pub mod svg;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use warden_client::TlsOptions;

use run::{RunResult, Target};

/// Requests of a run when neither `--total` nor `--duration` is given.
pub const DEFAULT_TOTAL: u64 = 10_000;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum BenchOp {
    /// Put random keys.
    Put,
    /// Linearizable single-key gets.
    Get,
    /// Serializable single-key gets.
    GetSerializable,
    /// A transaction putting a random key if its mod revision is still the
    /// one this client last saw (else reading it): a failed compare counts as
    /// a successful request and is reported as a fraction.
    TxnCas,
    /// etcd's lock service (v3lockpb Lock, then Unlock) on --lock-names
    /// names; each client holds a lease kept alive during the run.
    V3lock,
    /// warden's native lock service (warden.v1.Locks Acquire, then Release);
    /// refused against etcd.
    NativeLock,
    /// Put-to-event latency: --watchers watch a prefix, the clients put
    /// values holding their send time.
    Watch,
    /// Keep-alive round trips, each client on its own lease and stream.
    LeaseKeepalive,
    /// Linearizable gets (--read-ratio of the requests) and puts.
    Mixed,
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
    /// Total requests [default: 10000, or unlimited with --duration].
    #[arg(long)]
    pub total: Option<u64>,
    /// Run for this many seconds (with --total too: whichever ends first).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Deadline of each request, in ms (a request past it counts as failed)
    /// [default: 1000 with --failover, else 10000].
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Number of distinct keys (get, get-serializable, txn-cas and mixed use
    /// at most the first 1000, written before the run).
    #[arg(long, default_value_t = 100_000)]
    pub key_space: u64,
    /// mixed: the fraction of requests that are reads.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// v3lock, native-lock: distinct lock names (1: every client contends
    /// for the same lock).
    #[arg(long, default_value_t = 1)]
    pub lock_names: u64,
    /// v3lock, native-lock, lease-keepalive: TTL in seconds of the lease
    /// each client gets (granted before the run, revoked after it).
    #[arg(long, default_value_t = 10)]
    pub lock_ttl: i64,
    /// watch: number of watchers of the prefix the clients write to.
    #[arg(long, default_value_t = 1)]
    pub watchers: usize,
    /// Keep this many leases alive during the run, from one more connection
    /// and one keep-alive stream, each renewed every TTL/3 as etcd clients
    /// do. They are granted before the measurement and revoked after it.
    #[arg(long, default_value_t = 0)]
    pub keepalive_leases: usize,
    /// TTL in seconds of the `--keepalive-leases` leases.
    #[arg(long, default_value_t = 10)]
    pub keepalive_ttl: i64,
    /// Name of the --endpoints cluster in reports and plots.
    #[arg(long, default_value = "A")]
    pub label: String,
    /// Compare with a second cluster: the same run alternately against
    /// --endpoints (A) and these (B), --pairs times, then the median of
    /// each side and the A/B ratios.
    #[arg(long, value_delimiter = ',')]
    pub against: Vec<String>,
    /// Name of the --against cluster in reports and plots.
    #[arg(long, default_value = "B")]
    pub against_label: String,
    /// Pairs of runs with --against.
    #[arg(long, default_value_t = 3)]
    pub pairs: usize,
    /// CA (PEM) trusted for the --against cluster (TLS for it is used when
    /// one of the --against-* TLS flags is given or an endpoint is https;
    /// the global TLS flags apply to --endpoints only).
    #[arg(long)]
    pub against_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for the --against cluster.
    #[arg(long, requires = "against_key")]
    pub against_cert: Option<PathBuf>,
    /// Private key (PEM) of --against-cert.
    #[arg(long, requires = "against_cert")]
    pub against_key: Option<PathBuf>,
    /// Write the latency percentile curve(s) to this file as JSON.
    #[arg(long)]
    pub hist_json: Option<PathBuf>,
    /// Draw the latency percentile curve(s) into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Fail-over mode: run for --duration with a short per-request deadline,
    /// clients moving to the next endpoint after a failure, and report the
    /// longest time without a successful request. Kills nothing itself.
    #[arg(long)]
    pub failover: bool,
    /// Write successes and failures per 100 ms to this CSV file.
    #[arg(long)]
    pub timeline: Option<PathBuf>,
}

impl BenchArgs {
    /// The per-request deadline in ms.
    pub fn request_timeout_ms(&self) -> u64 {
        self.timeout_ms
            .unwrap_or(if self.failover { 1000 } else { 10_000 })
            .max(1)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.clients == 0 || self.conns == 0 || self.total == Some(0) {
            bail!("--clients, --conns and --total must be > 0");
        }
        if let Some(d) = self.duration {
            if !(d.is_finite() && d > 0.0) {
                bail!("--duration must be a positive number of seconds");
            }
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            bail!("--read-ratio must be between 0 and 1");
        }
        if self.lock_names == 0 || self.watchers == 0 {
            bail!("--lock-names and --watchers must be > 0");
        }
        if self.lock_ttl <= 0 {
            bail!("--lock-ttl must be > 0");
        }
        if !self.against.is_empty() && self.pairs == 0 {
            bail!("--pairs must be > 0");
        }
        if !self.against.is_empty() && self.timeline.is_some() {
            bail!("--timeline records one run: it cannot be combined with --against");
        }
        if self.failover {
            if self.duration.is_none() {
                bail!("--failover needs --duration (seconds to run)");
            }
            if !self.against.is_empty() {
                bail!("--failover measures one cluster: it cannot be combined with --against");
            }
            if !matches!(
                self.op,
                BenchOp::Put
                    | BenchOp::Get
                    | BenchOp::GetSerializable
                    | BenchOp::TxnCas
                    | BenchOp::Mixed
            ) {
                bail!("--failover runs the key-value workloads (put, get, get-serializable, txn-cas, mixed)");
            }
        }
        Ok(())
    }

    /// TLS for the --against cluster.
    fn against_tls(&self) -> Option<TlsOptions> {
        let https = self
            .against
            .iter()
            .any(|e| e.trim().to_ascii_lowercase().starts_with("https://"));
        (https || self.against_cacert.is_some() || self.against_cert.is_some()).then(|| {
            TlsOptions {
                ca: self.against_cacert.clone(),
                cert: self.against_cert.clone(),
                key: self.against_key.clone(),
            }
        })
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn throughput(r: &RunResult) -> f64 {
    if r.seconds > 0.0 {
        r.ok as f64 / r.seconds
    } else {
        0.0
    }
}

/// The JSON record of one run (the fields of the original single-run
/// output first, so scripts reading them keep working).
fn run_json(r: &RunResult, args: &BenchArgs) -> Value {
    let h = &r.hist;
    let mut v = json!({
        "op": format!("{:?}", args.op),
        "label": r.label,
        "endpoints": r.endpoints,
        "clients": args.clients,
        "conns": args.conns,
        "requests": r.ok,
        "errors": r.errors,
        "seconds": r.seconds,
        "throughput": throughput(r),
        "latency_ms": {"p50": ms(h, 0.5), "p90": ms(h, 0.9), "p99": ms(h, 0.99), "p999": ms(h, 0.999), "max": h.max() as f64 / 1000.0, "mean": h.mean() / 1000.0},
        "keepalive_leases": args.keepalive_leases,
        "keepalives": r.kept.map(|(k, _)| k),
        "keepalives_expired": r.kept.map(|(_, l)| l),
        "first_error": r.first_error,
    });
    let extra = match args.op {
        BenchOp::TxnCas => Some((
            "txn_cas",
            json!({
                "compare_failed": r.cas_failed,
                "compare_failed_fraction": if r.ok > 0 { r.cas_failed as f64 / r.ok as f64 } else { 0.0 },
            }),
        )),
        BenchOp::Mixed => Some((
            "mixed",
            json!({"read_ratio": args.read_ratio, "reads": r.mixed.0, "writes": r.mixed.1}),
        )),
        BenchOp::V3lock | BenchOp::NativeLock => {
            Some(("locks", json!({"lock_names": args.lock_names})))
        }
        BenchOp::Watch => r.watch.map(|w| {
            (
                "watch",
                json!({
                    "watchers": w.watchers,
                    "puts": w.puts,
                    "events_expected": w.expected,
                    "events_received": w.received,
                    "events_missing": w.expected.saturating_sub(w.received),
                }),
            )
        }),
        _ => None,
    };
    if let (Some((k, e)), Some(o)) = (extra, v.as_object_mut()) {
        o.insert(k.into(), e);
    }
    if args.failover {
        if let Some(o) = v.as_object_mut() {
            o.insert("failover".into(), failover_json(r, args));
        }
    }
    v
}

fn failover_json(r: &RunResult, args: &BenchArgs) -> Value {
    let run_us = (r.seconds * 1e6) as u64;
    let (a, b) = report::longest_gap(&r.events, run_us);
    json!({
        "timeout_ms": args.request_timeout_ms(),
        "failed": r.errors,
        "longest_gap_ms": (b - a) as f64 / 1000.0,
        "gap_start_s": a as f64 / 1e6,
        "gap_end_s": b as f64 / 1e6,
        "gap_start_unix_ms": r.started_unix_ms + a / 1000,
        "gap_end_unix_ms": r.started_unix_ms + b / 1000,
    })
}

fn print_run(r: &RunResult, args: &BenchArgs, header: Option<&str>) {
    let h = &r.hist;
    if let Some(hd) = header {
        println!("{hd}");
    }
    let what = if args.op == BenchOp::Watch {
        "events"
    } else {
        "requests"
    };
    println!(
        "op {:?}, {} clients over {} connections",
        args.op, args.clients, args.conns
    );
    println!(
        "{what}  {} ok, {} failed in {:.2} s",
        r.ok, r.errors, r.seconds
    );
    println!("throughput {:.0} {what}/s", throughput(r));
    println!(
        "latency ms: mean {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        h.mean() / 1000.0,
        ms(h, 0.5),
        ms(h, 0.9),
        ms(h, 0.99),
        ms(h, 0.999),
        h.max() as f64 / 1000.0
    );
    match args.op {
        BenchOp::TxnCas => println!(
            "compare failed in {} of {} transactions ({:.1} %)",
            r.cas_failed,
            r.ok,
            100.0 * r.cas_failed as f64 / r.ok.max(1) as f64
        ),
        BenchOp::Mixed => println!("{} reads, {} writes", r.mixed.0, r.mixed.1),
        BenchOp::Watch => {
            if let Some(w) = r.watch {
                println!(
                    "{} puts watched by {}: {} of {} events received",
                    w.puts, w.watchers, w.received, w.expected
                );
            }
        }
        _ => {}
    }
    if let Some((renewed, lost)) = r.kept {
        println!(
            "kept {} leases alive: {renewed} renewals ({:.0}/s), {lost} found expired",
            args.keepalive_leases,
            renewed as f64 / r.seconds.max(1e-9)
        );
    }
    if r.errors > 0 {
        if let Some(e) = &r.first_error {
            println!("first error: {e}");
        }
    }
    if args.failover {
        let run_us = (r.seconds * 1e6) as u64;
        let (a, b) = report::longest_gap(&r.events, run_us);
        println!(
            "longest gap without a success: {:.3} s, from {} to {} UTC (+{:.2} s to +{:.2} s)",
            (b - a) as f64 / 1e6,
            report::utc_time_of_day(r.started_unix_ms + a / 1000),
            report::utc_time_of_day(r.started_unix_ms + b / 1000),
            a as f64 / 1e6,
            b as f64 / 1e6
        );
        println!(
            "failed requests: {} (deadline {} ms each)",
            r.errors,
            args.request_timeout_ms()
        );
    }
}

/// The (throughput, p50 ms, p99 ms) medians of `runs`.
fn medians(runs: &[&RunResult]) -> [Option<f64>; 3] {
    let t: Vec<f64> = runs.iter().map(|r| throughput(r)).collect();
    let p50: Vec<f64> = runs.iter().map(|r| ms(&r.hist, 0.5)).collect();
    let p99: Vec<f64> = runs.iter().map(|r| ms(&r.hist, 0.99)).collect();
    [
        report::median(&t),
        report::median(&p50),
        report::median(&p99),
    ]
}

/// One named latency histogram merged over the runs of one side.
struct Side {
    name: String,
    runs: usize,
    hist: Histogram<u64>,
}

fn merged(name: &str, runs: &[&RunResult]) -> anyhow::Result<Side> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
    for r in runs {
        hist.add(&r.hist)
            .map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
    }
    Ok(Side {
        name: name.to_string(),
        runs: runs.len(),
        hist,
    })
}

/// Writes `--hist-json` and `--plot` for `sides`.
fn write_curves(args: &BenchArgs, sides: &[Side]) -> anyhow::Result<()> {
    if let Some(path) = &args.hist_json {
        let series: Vec<Value> = sides
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "runs": s.runs,
                    "requests": s.hist.len(),
                    "max_ms": s.hist.max() as f64 / 1000.0,
                    "percentiles": report::percentile_curve(&s.hist)
                        .into_iter()
                        .map(|(p, l)| json!({"percentile": p, "latency_ms": l}))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        let doc =
            json!({"op": format!("{:?}", args.op), "clients": args.clients, "series": series});
        std::fs::write(path, format!("{doc:#}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let series: Vec<svg::Series> = sides
            .iter()
            .map(|s| svg::Series {
                name: s.name.clone(),
                points: report::percentile_curve(&s.hist),
            })
            .collect();
        let title = format!(
            "warden bench {}, {} clients: latency by percentile",
            args.op
                .to_possible_value()
                .map_or_else(|| format!("{:?}", args.op), |v| v.get_name().to_string()),
            args.clients
        );
        std::fs::write(path, svg::plot(&title, &series))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs the benchmark against `endpoints` (and `--against`) and prints a
/// report.
pub async fn run_bench(
    endpoints: &[String],
    tls: Option<TlsOptions>,
    args: BenchArgs,
    json: bool,
) -> anyhow::Result<()> {
    args.check()?;
    let a = Target {
        label: args.label.clone(),
        endpoints: endpoints.to_vec(),
        tls,
    };
    if args.against.is_empty() {
        let r = run::run_once(&a, &args).await?;
        if json {
            println!("{}", run_json(&r, &args));
        } else {
            print_run(&r, &args, None);
        }
        write_curves(&args, &[merged(&a.label, &[&r])?])?;
        if let Some(path) = &args.timeline {
            let buckets = report::timeline(&r.events, 100, (r.seconds * 1e6) as u64);
            std::fs::write(path, report::timeline_csv(&buckets))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if r.ok == 0 {
            bail!(
                "every request failed ({}){}",
                r.errors,
                r.first_error
                    .as_deref()
                    .map_or(String::new(), |e| format!(": {e}"))
            );
        }
        return Ok(());
    }
    let b = Target {
        label: args.against_label.clone(),
        endpoints: args.against.clone(),
        tls: args.against_tls(),
    };
    if a.label == b.label {
        bail!("--label and --against-label must differ");
    }
    let mut runs: Vec<(usize, RunResult)> = Vec::new();
    for pair in 0..args.pairs {
        for t in [&a, &b] {
            let r = run::run_once(t, &args).await?;
            if !json {
                print_run(
                    &r,
                    &args,
                    Some(&format!("== {} run {}/{}", t.label, pair + 1, args.pairs)),
                );
                println!();
            }
            runs.push((pair + 1, r));
        }
    }
    let side = |label: &str| -> Vec<&RunResult> {
        runs.iter()
            .filter(|(_, r)| r.label == label)
            .map(|(_, r)| r)
            .collect()
    };
    let (ra, rb) = (side(&a.label), side(&b.label));
    let (ma, mb) = (medians(&ra), medians(&rb));
    let ratio = |i: usize| match (ma[i], mb[i]) {
        (Some(x), Some(y)) => report::ratio(x, y),
        _ => None,
    };
    if json {
        let all: Vec<Value> = runs
            .iter()
            .map(|(pair, r)| {
                let mut v = run_json(r, &args);
                if let Some(o) = v.as_object_mut() {
                    o.insert("pair".into(), json!(pair));
                }
                v
            })
            .collect();
        let med =
            |m: &[Option<f64>; 3]| json!({"throughput": m[0], "p50_ms": m[1], "p99_ms": m[2]});
        let v = json!({
            "op": format!("{:?}", args.op),
            "pairs": args.pairs,
            "a": {"label": a.label, "endpoints": a.endpoints, "median": med(&ma)},
            "b": {"label": b.label, "endpoints": b.endpoints, "median": med(&mb)},
            "ratio": {"throughput": ratio(0), "p50": ratio(1), "p99": ratio(2)},
            "runs": all,
        });
        println!("{v}");
    } else {
        let f = |x: Option<f64>, d: usize| x.map_or("-".to_string(), |x| format!("{x:.d$}"));
        println!(
            "median of {} pairs   {:>12} {:>10} {:>10}",
            args.pairs, "req/s", "p50 ms", "p99 ms"
        );
        for (l, m) in [(&a.label, &ma), (&b.label, &mb)] {
            println!(
                "{:<20} {:>12} {:>10} {:>10}",
                l,
                f(m[0], 0),
                f(m[1], 2),
                f(m[2], 2)
            );
        }
        println!(
            "{:<20} {:>12} {:>10} {:>10}",
            format!("ratio {}/{}", a.label, b.label),
            f(ratio(0), 2),
            f(ratio(1), 2),
            f(ratio(2), 2)
        );
    }
    write_curves(&args, &[merged(&a.label, &ra)?, merged(&b.label, &rb)?])?;
    for (l, rs) in [(&a.label, &ra), (&b.label, &rb)] {
        if rs.iter().any(|r| r.ok == 0) {
            bail!("every request of a run against {l} failed");
        }
    }
    Ok(())
}
