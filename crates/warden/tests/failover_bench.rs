//! Fail-over benchmark (ignored by default; numbers, not a pass/fail test):
//! a three-member cluster at default timeouts (election 1000 ms, heartbeat
//! 100 ms), 16 clients writing with a 1 s timeout each, then a fault on the
//! leader; prints the longest gap without a successful write and the number
//! of failed requests after the fault.
//!
//! ```text
//! cargo build --release -p warden
//! FAILOVER_BIN=target/release/warden FAILOVER_FAULT=kill FAILOVER_ROUNDS=5 \
//!   cargo test -p warden --test failover_bench -- --ignored --nocapture
//! ```
//!
//! `FAILOVER_FAULT`: `kill` (SIGKILL), `stop` (SIGSTOP, SIGCONT after the
//! run) or `term` (SIGTERM). `FAILOVER_SYSTEM=etcd` runs the same against
//! `etcd` from `PATH`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::kv_client::KvClient;

const CLIENTS: usize = 16;

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
                        "info,openraft=warn,warden_server::node::failover=debug",
                    );
            }
            let child = cmd
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn");
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

#[derive(Default)]
struct Log {
    ok: Vec<Instant>,
    failed: Vec<Instant>,
}

async fn writer(id: usize, eps: Vec<String>, log: Arc<Mutex<Log>>, until: Instant) {
    let clients: Vec<KvClient<Channel>> = eps.iter().map(|e| KvClient::new(channel(e))).collect();
    let mut at = id % clients.len();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let mut req = tonic::Request::new(pb::PutRequest {
            key: format!("w{id}").into(),
            value: n.to_string().into(),
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(1));
        let r = tokio::time::timeout(Duration::from_secs(1), clients[at].clone().put(req)).await;
        let now = Instant::now();
        match r {
            Ok(Ok(_)) => log.lock().unwrap().ok.push(now),
            _ => {
                log.lock().unwrap().failed.push(now);
                at = (at + 1) % clients.len();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand (see the file's header)"]
async fn failover_gap() {
    let system = std::env::var("FAILOVER_SYSTEM").unwrap_or_else(|_| "warden".into());
    let fault = std::env::var("FAILOVER_FAULT").unwrap_or_else(|_| "kill".into());
    let rounds: usize = std::env::var("FAILOVER_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let bin = std::env::var("FAILOVER_BIN").unwrap_or_else(|_| match system.as_str() {
        "etcd" => "etcd".into(),
        _ => env!("CARGO_BIN_EXE_warden").into(),
    });
    for round in 0..rounds {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut procs = spawn_cluster(&system, &bin, tmp.path());
        let l = leader(&procs).await;
        let eps: Vec<String> = procs.iter().map(|p| p.client.clone()).collect();
        let log = Arc::new(Mutex::new(Log::default()));
        let end = Instant::now() + Duration::from_secs(10);
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| tokio::spawn(writer(i, eps.clone(), log.clone(), end)))
            .collect();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pid = procs[l].child.id();
        let t0 = Instant::now();
        match fault.as_str() {
            "kill" => signal(pid, "-KILL"),
            "stop" => signal(pid, "-STOP"),
            "term" => signal(pid, "-TERM"),
            other => panic!("unknown FAILOVER_FAULT {other}"),
        }
        for t in tasks {
            t.await.expect("writer");
        }
        if fault == "stop" {
            signal(pid, "-CONT");
        }
        let log = log.lock().unwrap();
        let mut ok: Vec<Instant> = log
            .ok
            .iter()
            .copied()
            .filter(|t| *t >= t0 - Duration::from_millis(500))
            .collect();
        ok.sort();
        let mut gap = Duration::ZERO;
        let mut prev = t0;
        for t in &ok {
            if *t > prev {
                gap = gap.max(*t - prev);
                prev = *t;
            }
        }
        let failed = log.failed.iter().filter(|t| **t >= t0).count();
        let after = log.ok.iter().filter(|t| **t >= t0).count();
        println!(
            "{system} {fault} round {round}: longest gap {:.0} ms, failed {failed}, ok after fault {after}",
            gap.as_secs_f64() * 1000.0
        );
        for p in &mut procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if std::env::var("FAILOVER_LOGS").is_ok() && gap > Duration::from_millis(500) {
            for n in ["n1", "n2", "n3"] {
                let log = std::fs::read_to_string(tmp.path().join(format!("{n}.log")))
                    .unwrap_or_default();
                for line in log
                    .lines()
                    .filter(|l| l.contains("failover") || l.contains("vote"))
                {
                    println!("  {n}: {line}");
                }
            }
        }
    }
}
