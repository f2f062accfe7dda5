//! `warden-chaos`: a Jepsen-style fault-injection harness. It starts a real
//! cluster of `warden server` processes, drives it with concurrent clients
//! while a seeded nemesis kills, pauses and partitions members, records
//! every operation (invocation, completion, outcome ok / fail / info), and
//! then checks what the clients observed:
//!
//! - [`workload`]: register, bank, lock, watch and counter (exactly-once
//!   increments through `warden-client`) clients;
//! - [`nemesis`]: the faults and their seeded schedule;
//! - [`cluster`]: the processes, with peer links through
//!   `warden_testkit::proxy`;
//! - [`history`]: the record, saved as JSON lines;
//! - [`check`]: the checkers (pure functions of a history).
//!
//! See docs/testing.md for how to run it.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod args;
pub mod auth_setup;
pub mod check;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use check::{CheckResult, Violation};
use cluster::{wait_leader, ChaosCluster, ServerTiming};
use history::{Call, History, Outcome, Recorder, Ret, RunMeta, HARNESS};
use workload::{keys, Ctx, Fault};

use warden_client::{Backoff, ClientOptions, GetOptions, KeyRange};

/// Everything a run needs (see [`args::Args`] for the meaning of each).
#[derive(Clone, Debug)]
pub struct Options {
    pub warden_bin: PathBuf,
    pub members: usize,
    pub duration: Duration,
    pub seed: u64,
    pub out: PathBuf,
    pub workloads: Vec<String>,
    pub nemeses: Vec<nemesis::Kind>,
    pub fault: Option<Fault>,
    pub register_clients: u32,
    pub keys: usize,
    pub bank_clients: u32,
    pub accounts: u32,
    pub lock_clients: u32,
    pub locks: usize,
    pub watchers: u32,
    pub counter_clients: u32,
    pub counters: u32,
    pub timing: ServerTiming,
    pub client_timeout: Duration,
    pub warmup: Duration,
    pub gap: (Duration, Duration),
    pub hold: (Duration, Duration),
    pub keep_data: bool,
    pub strict_watch_order: bool,
    pub tls: bool,
    pub auth: bool,
}

/// Initial balance of every bank account.
const BALANCE: i64 = 100;

/// Result of a run or a re-check.
pub struct Report {
    pub results: Vec<CheckResult>,
    pub ops: usize,
}

impl Report {
    pub fn violations(&self) -> usize {
        self.results.iter().map(|r| r.violations.len()).sum()
    }

    /// The summary lines and every violation's window.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.results {
            out.push_str(&r.report());
            out.push('\n');
        }
        out.push_str(&format!(
            "RESULT: {} violation(s) in {} checked operations\n",
            self.violations(),
            self.ops
        ));
        out
    }
}

fn has(o: &Options, w: &str) -> bool {
    o.workloads.iter().any(|x| x == w)
}

fn say(msg: impl AsRef<str>) {
    eprintln!("warden-chaos: {}", msg.as_ref());
}

/// Runs the checkers on a saved history.
pub fn check_dir(dir: &Path) -> anyhow::Result<Report> {
    let h = History::load(dir)?;
    let results = check::run_all(&h);
    Ok(Report {
        results,
        ops: h.ops.len(),
    })
}

/// Runs a whole chaos test: cluster, workloads, nemesis, final reads,
/// checks. The history is written to `opts.out`.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&opts.out)?;
    let started = std::time::Instant::now();
    let plan = nemesis::Plan {
        kinds: opts.nemeses.clone(),
        duration: opts.duration,
        warmup: opts.warmup,
        gap: opts.gap,
        hold: opts.hold,
        min_pause: Duration::from_millis(opts.timing.election_max_ms + 800),
    };
    let steps = nemesis::schedule(opts.seed, &plan);
    let proxied = opts.nemeses.iter().any(|k| k.needs_proxies());
    say(format!(
        "seed {}, {} members, {:?}, workloads {}, {} faults scheduled{}; output in {}",
        opts.seed,
        opts.members,
        opts.duration,
        opts.workloads.join(","),
        steps.len(),
        opts.fault
            .map_or(String::new(), |f| format!(", FAULT {}", f.name())),
        opts.out.display()
    ));

    let data =
        std::env::temp_dir().join(format!("warden-chaos-{}-{}", opts.seed, std::process::id()));
    let mut cluster = ChaosCluster::start(
        &opts.warden_bin,
        opts.members,
        &opts.out,
        &data,
        opts.timing.clone(),
        proxied,
        cluster::Access {
            tls: opts.tls,
            auth: opts.auth,
        },
    )
    .await?;
    let topo = cluster.topo.clone();
    if wait_leader(&topo, Duration::from_secs(60)).await.is_none() {
        let tails: Vec<String> = (0..cluster.len())
            .map(|i| format!("--- {} ---\n{}", cluster.name(i), cluster.log_tail(i, 20)))
            .collect();
        anyhow::bail!(
            "the cluster elected no leader in 60 s\n{}",
            tails.join("\n")
        );
    }

    let rec = Recorder::new();
    let mut ctx = Ctx {
        rec: rec.clone(),
        topo: topo.clone(),
        opts: ClientOptions {
            timeout: opts.client_timeout,
            connect_timeout: Duration::from_millis(500),
            backoff: Backoff {
                base: Duration::from_millis(50),
                max: Duration::from_millis(500),
            },
            tls: cluster.client_tls.clone(),
            credentials: None,
            // The register, bank, lock and watch workloads check etcd's
            // semantics: a write of unknown outcome is theirs to record.
            // The counter workload turns this on for its own clients.
            exactly_once: false,
            client_id: None,
        },
        end: Instant::now(),
        fault: opts.fault,
        seed: opts.seed,
        watch_until: AtomicI64::new(0),
        watch_stop: AtomicBool::new(false),
    };
    if opts.auth {
        let creds = auth_setup::enable(&ctx.opts, &topo).await?;
        ctx.opts.credentials = Some(creds);
    }
    if has(&opts, "bank") {
        workload::bank::init(&ctx, opts.accounts, BALANCE).await?;
    }
    if has(&opts, "counter") {
        workload::counter::init(&ctx, opts.counters).await?;
    }
    ctx.end = Instant::now() + opts.duration;
    let ctx = Arc::new(ctx);

    // Leader poller.
    let polling = Arc::new(AtomicBool::new(true));
    let poller = {
        let (topo, polling) = (topo.clone(), polling.clone());
        tokio::spawn(async move {
            while polling.load(Ordering::Relaxed) {
                cluster::poll_leader(&topo).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    // Clients.
    let mut process = 0u32;
    let mut next = || {
        process += 1;
        process
    };
    let mut clients = Vec::new();
    if has(&opts, "register") {
        for _ in 0..opts.register_clients {
            clients.push(tokio::spawn(workload::register::run(
                ctx.clone(),
                next(),
                opts.keys,
            )));
        }
    }
    if has(&opts, "bank") {
        for _ in 0..opts.bank_clients {
            clients.push(tokio::spawn(workload::bank::run(
                ctx.clone(),
                next(),
                opts.accounts,
            )));
        }
    }
    if has(&opts, "lock") {
        for _ in 0..opts.lock_clients {
            clients.push(tokio::spawn(workload::lock::run(
                ctx.clone(),
                next(),
                opts.locks,
            )));
        }
    }
    if has(&opts, "counter") {
        for _ in 0..opts.counter_clients {
            clients.push(tokio::spawn(workload::counter::run(
                ctx.clone(),
                next(),
                opts.counters,
            )));
        }
    }
    let mut watchers = Vec::new();
    if has(&opts, "watch") {
        for w in 1..=opts.watchers {
            watchers.push(tokio::spawn(workload::watch::run(ctx.clone(), next(), w)));
        }
    }

    // Nemesis (it owns the cluster until its schedule is done).
    let nemesis_task = tokio::spawn(nemesis::run(cluster, steps, rec.clone(), Instant::now()));
    let progress = {
        let rec = rec.clone();
        let end = ctx.end;
        tokio::spawn(async move {
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_secs(10)).await;
                say(format!("{} operations so far", rec.op_count()));
            }
        })
    };
    let mut client_errors = Vec::new();
    for c in clients {
        match c.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => client_errors.push(e.to_string()),
            Err(e) => client_errors.push(e.to_string()),
        }
    }
    progress.abort();
    cluster = nemesis_task
        .await
        .map_err(|e| anyhow::anyhow!("nemesis task: {e}"))?;
    say(format!(
        "workload done after {:.0?}: {} operations; healing and reading final state",
        started.elapsed(),
        rec.op_count()
    ));

    // Heal, then read the final state.
    cluster.heal_all()?;
    let leader = wait_leader(&topo, Duration::from_secs(60)).await;
    let final_revision = match leader {
        Some(_) => final_reads(&ctx, &opts).await,
        None => {
            say("no leader after healing: skipping the final reads");
            0
        }
    };

    // Let the watchers catch up, then replay the canonical history.
    ctx.watch_until.store(final_revision, Ordering::Relaxed);
    ctx.watch_stop.store(true, Ordering::Relaxed);
    let catch_up = Instant::now() + Duration::from_secs(if leader.is_some() { 60 } else { 1 });
    for w in watchers {
        let abort = w.abort_handle();
        if tokio::time::timeout_at(catch_up, w).await.is_err() {
            abort.abort();
        }
    }
    if has(&opts, "watch") && leader.is_some() {
        if let Err(e) = workload::watch::replay(&ctx, leader.unwrap_or(0), final_revision).await {
            say(format!("{e}"));
        }
    }
    polling.store(false, Ordering::Relaxed);
    poller.abort();
    cluster.reap();
    let crashes = cluster.crashes.clone();
    cluster.shutdown();

    let meta = RunMeta {
        seed: opts.seed,
        members: opts.members,
        duration_s: opts.duration.as_secs(),
        workloads: opts.workloads.clone(),
        nemeses: opts.nemeses.iter().map(|k| k.name().to_string()).collect(),
        fault: opts.fault.map(|f| f.name().to_string()),
        bank_accounts: if has(&opts, "bank") { opts.accounts } else { 0 },
        bank_balance: BALANCE,
        final_revision,
        strict_watch_order: opts.strict_watch_order,
        counters: if has(&opts, "counter") {
            opts.counters
        } else {
            0
        },
    };
    let h = rec.snapshot(meta);
    h.save(&opts.out)?;
    let mut results = vec![cluster_result(
        &h,
        leader.is_some(),
        &crashes,
        &client_errors,
    )];
    results.extend(check::run_all(&h));
    let report = Report {
        results,
        ops: h.ops.len(),
    };
    // Data of a run with a deliberate client fault tells nothing new.
    if !opts.keep_data && (report.violations() == 0 || opts.fault.is_some()) {
        let _ = std::fs::remove_dir_all(&data);
    } else {
        say(format!("members' data kept in {}", data.display()));
    }
    say(format!(
        "run took {:.0?}; history in {}",
        started.elapsed(),
        opts.out.join(history::HISTORY_FILE).display()
    ));
    Ok(report)
}

/// The harness's own findings: members that crashed by themselves, client
/// tasks that failed, and what the nemesis did.
fn cluster_result(
    h: &History,
    recovered: bool,
    crashes: &[String],
    client_errors: &[String],
) -> CheckResult {
    let mut r = CheckResult::new("cluster");
    if !recovered {
        r.violations.push(Violation {
            what: "no leader within 60 s after every fault was healed".into(),
            window: Vec::new(),
        });
    }
    // One violation per member and distinct failure, with a count.
    let mut distinct: Vec<(String, usize)> = Vec::new();
    for c in crashes {
        match distinct.iter_mut().find(|(d, _)| d == c) {
            Some((_, n)) => *n += 1,
            None => distinct.push((c.clone(), 1)),
        }
    }
    for (c, n) in distinct {
        r.violations.push(Violation {
            what: if n > 1 {
                format!("member {c} [{n} times]")
            } else {
                format!("member {c}")
            },
            window: Vec::new(),
        });
    }
    for e in client_errors {
        r.notes.push(format!("a client stopped early: {e}"));
    }
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for op in &h.ops {
        if let Call::Nemesis { action } = &op.call {
            let kind = action.split(':').next().unwrap_or("").to_string();
            *counts.entry(kind).or_default() += 1;
            if op.outcome != Outcome::Ok {
                r.notes.push(format!(
                    "nemesis step failed: {action}: {}",
                    op.error.as_deref().unwrap_or("")
                ));
            }
        }
    }
    let faults = counts.values().sum::<usize>();
    let (ok, fail, info) = h
        .ops
        .iter()
        .fold((0, 0, 0), |(a, b, c), o| match o.outcome {
            Outcome::Ok => (a + 1, b, c),
            Outcome::Fail => (a, b + 1, c),
            Outcome::Info => (a, b, c + 1),
        });
    r.checked = h.ops.len();
    r.summary = format!(
        "{} ops ({ok} ok, {fail} failed, {info} indeterminate), {faults} faults ({}), no member crashed by itself",
        h.ops.len(),
        if counts.is_empty() {
            "none".to_string()
        } else {
            counts
                .iter()
                .map(|(k, v)| format!("{k}×{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    );
    if !crashes.is_empty() {
        r.summary = r.summary.replace(", no member crashed by itself", "");
    }
    r
}

/// Reads, as the harness, what the checkers need at the end: every lock's
/// counter, the bank once more, and the counter workload's counters and
/// markers; returns the highest mod revision under
/// the workloads' prefix (0 if it could not be read).
async fn final_reads(ctx: &Ctx, opts: &Options) -> i64 {
    let Ok(client) = ctx.client().await else {
        return 0;
    };
    if has(opts, "lock") {
        for l in 0..opts.locks {
            let lock = keys::lock(l);
            for _ in 0..10 {
                let invoke = ctx.rec.now();
                let call = Call::CounterRead { lock: lock.clone() };
                match client
                    .get(keys::counter(&lock), GetOptions::default())
                    .await
                {
                    Ok(r) => {
                        let kv = r.kvs.first();
                        ctx.rec.record(
                            HARNESS,
                            invoke,
                            call,
                            Outcome::Ok,
                            Some(Ret::Read {
                                value: kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                                mod_revision: kv.map_or(0, |kv| kv.mod_revision),
                                revision: r.header.as_ref().map_or(0, |h| h.revision),
                            }),
                            None,
                            ctx.topo.name_of(r.header.as_ref()),
                        );
                        break;
                    }
                    Err(e) => {
                        ctx.rec.record(
                            HARNESS,
                            invoke,
                            call,
                            workload::outcome_of(&e),
                            None,
                            Some(e.to_string()),
                            None,
                        );
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    }
    if has(opts, "bank") {
        for _ in 0..10 {
            if workload::bank::read_all(ctx, &client, HARNESS, false)
                .await
                .is_some()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if has(opts, "counter") {
        workload::counter::final_read(ctx, &client).await;
    }
    for _ in 0..10 {
        let o = GetOptions {
            range: KeyRange {
                prefix: true,
                ..Default::default()
            },
            keys_only: true,
            ..Default::default()
        };
        match client.get(keys::PREFIX, o).await {
            Ok(r) => return r.kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    0
}
