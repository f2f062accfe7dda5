//! Fail-over benchmark (ignored by default: it prints numbers and asserts
//! nothing about time). For each round it starts a three-member cluster at
//! default timeouts, runs a steady write load (one client by default, each
//! put with a 1 s deadline, moving to the next member after a failure,
//! starting on a follower), kills the leader with SIGKILL and measures the
//! write gap: from the last put acknowledged before the kill to the first
//! acknowledged put sent after it. Systems run alternately (warden, etcd,
//! warden, etcd, …) and the medians are printed at the end.
//!
//! ```text
//! cargo build --release -p warden
//! FAILOVER_BIN=$PWD/target/release/warden FAILOVER_ROUNDS=7 \
//!   cargo test -p warden --test failover_bench -- --ignored --nocapture
//! ```
//!
//! - `FAILOVER_SYSTEMS`: comma-separated, in the order run each round
//!   (default `warden,etcd`); `etcd` is `/usr/bin/etcd` or `ETCD_BIN`, at its
//!   defaults (heartbeat 100 ms, election timeout 1000 ms); warden at its
//!   defaults (heartbeat 100 ms, election timeout 1000-2000 ms).
//! - `FAILOVER_ROUNDS`: rounds (default 5); `FAILOVER_CLIENTS`: concurrent
//!   writers (default 1); `FAILOVER_PUT_TIMEOUT_MS`: each put's deadline
//!   (default 1000). A put held across the fault is only given up at its
//!   deadline, so the gap is often a multiple of it.
//! - `FAILOVER_FAULT`: `kill` (SIGKILL, default), `stop` (SIGSTOP, SIGCONT
//!   after the run) or `term` (SIGTERM).
//! - `FAILOVER_LOGS=1`: print the members' fail-over log lines of a round
//!   whose gap exceeded 500 ms.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::kv_client::KvClient;

/// How long the load runs before the fault.
const WARM_UP: Duration = Duration::from_secs(2);
/// How long after the first success following the fault the load goes on.
const AFTER: Duration = Duration::from_millis(500);
/// Give up on a round this long after the fault.
const GIVE_UP: Duration = Duration::from_secs(20);

struct Proc {
    client: String,
    child: Child,
}

fn spawn_cluster(system: &str, bin: &str, dir: &std::path::Path) -> Vec<Proc> {
    let ports = warden_testkit::ports::free_ports(6).expect("ports");
    let names = ["n1", "n2", "n3"];
    let initial: Vec<String> = (0..3)
        .map(|i| match system {
            "etcd" => format!("{}=http://127.0.0.1:{}", names[i], ports[2 * i + 1]),
            _ => format!("{}=127.0.0.1:{}", names[i], ports[2 * i + 1]),
        })
        .collect();
    let initial = initial.join(",");
    (0..3)
        .map(|i| {
            let (c, p) = (ports[2 * i], ports[2 * i + 1]);
            let log = std::fs::File::create(dir.join(format!("{}.log", names[i]))).expect("log");
            let mut cmd = Command::new(bin);
            if system == "etcd" {
                cmd.args(["--name", names[i]])
                    .arg("--data-dir")
                    .arg(dir.join(names[i]))
                    .args(["--listen-client-urls", &format!("http://127.0.0.1:{c}")])
                    .args(["--advertise-client-urls", &format!("http://127.0.0.1:{c}")])
                    .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
                    .args([
                        "--initial-advertise-peer-urls",
                        &format!("http://127.0.0.1:{p}"),
                    ])
                    .args(["--initial-cluster", &initial])
                    .args(["--initial-cluster-state", "new"]);
            } else {
                cmd.arg("server")
                    .args(["--name", names[i]])
                    .arg("--data-dir")
                    .arg(dir.join(names[i]))
                    .args(["--client-addr", &format!("127.0.0.1:{c}")])
                    .args(["--peer-addr", &format!("127.0.0.1:{p}")])
                    .args(["--initial-cluster", &initial])
                    .env(
                        "WARDEN_LOG",
                        "info,openraft=warn,warden_server::node::failover=debug,warden_server::node::forward=debug",
                    );
            }
            let child = cmd
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
            Proc {
                client: format!("127.0.0.1:{c}"),
                child,
            }
        })
        .collect()
}

fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(300))
        .connect_lazy()
}

/// Index of the member every member names as leader.
async fn leader(procs: &[Proc]) -> usize {
    let chans: Vec<Channel> = procs.iter().map(|p| channel(&p.client)).collect();
    warden_testkit::poll::until(Duration::from_secs(30), || {
        let chans = chans.clone();
        async move {
            let views = warden_testkit::leader::views(&chans, Duration::from_secs(1)).await;
            warden_testkit::leader::agreed(&views).ok_or(format!("{views:?}"))
        }
    })
    .await
    .expect("leader")
}

/// What the writers saw: every acknowledged put as (sent, acknowledged),
/// and when each failed put failed.
#[derive(Default)]
struct Log {
    ok: Vec<(Instant, Instant)>,
    /// (failed at, how long the put took, member index, error).
    failed: Vec<(Instant, Duration, usize, String)>,
}

/// Puts until `stop` is set, starting on member `first`, moving to the next
/// member after a failure.
async fn writer(
    id: usize,
    eps: Vec<String>,
    first: usize,
    log: Arc<Mutex<Log>>,
    stop: tokio::sync::watch::Receiver<bool>,
    put_timeout: Duration,
) {
    let clients: Vec<KvClient<Channel>> = eps.iter().map(|e| KvClient::new(channel(e))).collect();
    let mut at = first;
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let mut req = tonic::Request::new(pb::PutRequest {
            key: format!("w{id}").into(),
            value: n.to_string().into(),
            ..Default::default()
        });
        req.set_timeout(put_timeout);
        let sent = Instant::now();
        let r = tokio::time::timeout(put_timeout, clients[at].clone().put(req)).await;
        let now = Instant::now();
        match r {
            Ok(Ok(_)) => log.lock().unwrap().ok.push((sent, now)),
            Ok(Err(e)) => {
                let why = format!("{:?}: {}", e.code(), e.message());
                log.lock().unwrap().failed.push((now, now - sent, at, why));
                at = (at + 1) % clients.len();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => {
                let why = "client deadline".to_string();
                log.lock().unwrap().failed.push((now, now - sent, at, why));
                at = (at + 1) % clients.len();
                // A refused connection fails at once: do not spin.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let s = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(s.success());
}

/// One round: the write gap around the fault, and the failed puts after it.
struct Round {
    gap: Duration,
    kill_to_ok: Duration,
    failed: usize,
}

async fn round(
    system: &str,
    bin: &str,
    fault: &str,
    clients: usize,
    put_timeout: Duration,
) -> Option<Round> {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut procs = spawn_cluster(system, bin, tmp.path());
    let l = leader(&procs).await;
    let eps: Vec<String> = procs.iter().map(|p| p.client.clone()).collect();
    let log = Arc::new(Mutex::new(Log::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            // Start on a follower: the client does not see the kill itself.
            let first = (l + 1 + i % 2) % eps.len();
            let (eps, log, stop) = (eps.clone(), log.clone(), stop_rx.clone());
            tokio::spawn(writer(i, eps, first, log, stop, put_timeout))
        })
        .collect();
    tokio::time::sleep(WARM_UP).await;
    // The leader again, right before the fault (it may have changed since
    // start-up).
    let l = leader(&procs).await;
    let pid = procs[l].child.id();
    let t0 = Instant::now();
    match fault {
        "kill" => signal(pid, "-KILL"),
        "stop" => signal(pid, "-STOP"),
        "term" => signal(pid, "-TERM"),
        other => panic!("unknown FAILOVER_FAULT {other}"),
    }
    // Poll until a put sent after the fault was acknowledged (a put in
    // flight across the fault counts on neither side), then let the load
    // run a little longer.
    let first_after = warden_testkit::poll::until(GIVE_UP, || {
        let log = log.clone();
        async move {
            let log = log.lock().unwrap();
            let first = log
                .ok
                .iter()
                .filter(|(s, _)| *s >= t0)
                .map(|(_, a)| *a)
                .min();
            first.ok_or("no put sent after the fault acknowledged yet")
        }
    })
    .await;
    if first_after.is_ok() {
        tokio::time::sleep(AFTER).await;
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await.expect("writer");
    }
    if fault == "stop" {
        signal(pid, "-CONT");
    }
    for p in &mut procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    let log = log.lock().unwrap();
    let last_before = log.ok.iter().map(|(_, a)| *a).filter(|a| *a <= t0).max();
    let result = match (last_before, first_after) {
        (Some(before), Ok(after)) => Some(Round {
            gap: after - before,
            kill_to_ok: after - t0,
            failed: log.failed.iter().filter(|f| f.0 >= t0).count(),
        }),
        _ => None,
    };
    let slow = result
        .as_ref()
        .is_none_or(|r| r.gap > Duration::from_millis(500));
    if std::env::var("FAILOVER_LOGS").is_ok() && slow {
        println!("  killed member {l}");
        for (at, took, member, why) in log.failed.iter().filter(|f| f.0 >= t0) {
            println!(
                "  put to member {member} failed {:.0} ms after the kill, after {:.0} ms: {why}",
                (*at - t0).as_secs_f64() * 1e3,
                took.as_secs_f64() * 1e3
            );
        }
        for n in ["n1", "n2", "n3"] {
            let text =
                std::fs::read_to_string(tmp.path().join(format!("{n}.log"))).unwrap_or_default();
            for line in text.lines().filter(|l| {
                (l.contains("failover")
                    || l.contains("forward")
                    || l.contains("vote")
                    || l.contains("elect"))
                    && !l.contains("probe=Accepted")
            }) {
                println!("  {n}: {line}");
            }
        }
    }
    result
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand (see the file's header)"]
async fn failover_gap() {
    let systems: Vec<String> = std::env::var("FAILOVER_SYSTEMS")
        .unwrap_or_else(|_| "warden,etcd".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let fault = std::env::var("FAILOVER_FAULT").unwrap_or_else(|_| "kill".into());
    let env_num = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(d)
    };
    let rounds = env_num("FAILOVER_ROUNDS", 5);
    let clients = env_num("FAILOVER_CLIENTS", 1);
    let put_timeout = Duration::from_millis(env_num("FAILOVER_PUT_TIMEOUT_MS", 1000) as u64);
    let bin_of = |system: &str| match system {
        "etcd" => std::env::var("ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".into()),
        _ => std::env::var("FAILOVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_warden").into()),
    };
    let mut gaps: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
    for r in 0..rounds {
        for (i, system) in systems.iter().enumerate() {
            match round(system, &bin_of(system), &fault, clients, put_timeout).await {
                Some(x) => {
                    println!(
                        "round {r} {system:>6} {fault}: gap {:>5.0} ms (kill to first ack {:>5.0} ms), failed puts {}",
                        x.gap.as_secs_f64() * 1e3,
                        x.kill_to_ok.as_secs_f64() * 1e3,
                        x.failed
                    );
                    gaps[i].push(x.gap.as_secs_f64() * 1e3);
                }
                None => println!(
                    "round {r} {system:>6} {fault}: no put acknowledged within {GIVE_UP:?}"
                ),
            }
        }
    }
    let medians: Vec<f64> = gaps.iter_mut().map(|g| median(g)).collect();
    for (system, (m, g)) in systems.iter().zip(medians.iter().zip(&gaps)) {
        println!(
            "{system:>6}: median gap {m:.0} ms over {} rounds (min {:.0}, max {:.0})",
            g.len(),
            g.first().copied().unwrap_or(f64::NAN),
            g.last().copied().unwrap_or(f64::NAN)
        );
    }
    if medians.len() == 2 {
        println!(
            "{} / {}: {:.2}",
            systems[0],
            systems[1],
            medians[0] / medians[1]
        );
    }
}
