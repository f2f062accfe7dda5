//! `warden bench` against real warden clusters: every workload with a small
//! `--total` (JSON report checked), `--against` with two clusters (both sides,
//! medians and ratios, the SVG plot and the percentile JSON), `--failover`
//! reporting the gap a leader kill makes, and the refused combinations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, BIN};
use serde_json::Value;

const ELECT: Duration = Duration::from_secs(20);

fn bench(endpoints: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--endpoints", endpoints, "bench"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run warden bench")
}

fn bench_json(endpoints: &str, args: &[&str]) -> Value {
    let out = bench(endpoints, &[args, &["-w", "json"]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "no progress line when stderr is not a terminal: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

/// The run's percentiles are in order and it had no error.
fn check_run(v: &Value) {
    assert_eq!(v["errors"], 0, "{v}");
    let l: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|p| f(v, &["latency_ms", p]))
        .collect();
    assert!(l[0] > 0.0, "{v}");
    assert!(l.windows(2).all(|w| w[0] <= w[1]), "percentiles {l:?}");
    assert!(f(v, &["throughput"]) > 0.0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_reports_its_requests() {
    let c = Cluster::start(1);
    c.wait_leader(ELECT).await;
    let ep = c.endpoints();
    let total = 60u64;
    let t = total.to_string();
    for op in [
        "put",
        "get",
        "get-serializable",
        "txn-cas",
        "v3lock",
        "native-lock",
        "lease-keepalive",
        "mixed",
    ] {
        let v = bench_json(
            &ep,
            &[op, "--clients", "3", "--total", &t, "--lock-names", "2"],
        );
        check_run(&v);
        assert_eq!(v["requests"], total, "{op}: {v}");
        match op {
            "txn-cas" => {
                let frac = f(&v, &["txn_cas", "compare_failed_fraction"]);
                assert!((0.0..=1.0).contains(&frac), "{v}");
            }
            "mixed" => {
                let (r, w) = (f(&v, &["mixed", "reads"]), f(&v, &["mixed", "writes"]));
                assert_eq!(r + w, total as f64, "{v}");
                assert!(r > w, "90 % reads: {v}");
            }
            _ => {}
        }
    }
    // Contended v3lock: one name for every client.
    let v = bench_json(&ep, &["v3lock", "--clients", "4", "--total", "20"]);
    check_run(&v);
    assert_eq!(v["locks"]["lock_names"], 1);
    // watch: every put seen by every watcher.
    let v = bench_json(
        &ep,
        &[
            "watch",
            "--clients",
            "2",
            "--total",
            "50",
            "--watchers",
            "3",
        ],
    );
    check_run(&v);
    assert_eq!(v["watch"]["puts"], 50, "{v}");
    assert_eq!(v["watch"]["events_received"], 150, "{v}");
    assert_eq!(v["watch"]["events_missing"], 0, "{v}");
    assert_eq!(v["requests"], 150, "{v}");
    // --duration instead of --total.
    let started = Instant::now();
    let v = bench_json(&ep, &["get", "--clients", "2", "--duration", "0.5"]);
    check_run(&v);
    assert!(
        f(&v, &["seconds"]) >= 0.5 && f(&v, &["seconds"]) < 3.0,
        "{v}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// A minimal well-formedness check: every element closed in order, quotes
/// balanced inside tags, one root.
fn well_formed(xml: &str) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut rest = xml;
    while let Some(i) = rest.find('<') {
        let text = &rest[..i];
        if text.contains('>') {
            return Err(format!("stray > in {text:?}"));
        }
        let end = rest[i..].find('>').ok_or("unclosed tag")? + i;
        let tag = &rest[i + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') {
            continue;
        }
        if !tag.matches('"').count().is_multiple_of(2) {
            return Err(format!("unbalanced quotes in <{tag}>"));
        }
        if let Some(name) = tag.strip_prefix('/') {
            match stack.pop() {
                Some(open) if open == name.trim() => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
            continue;
        }
        let name: String = tag
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '/')
            .collect();
        if stack.is_empty() {
            roots += 1;
        }
        if !tag.ends_with('/') {
            stack.push(name);
        }
    }
    if !stack.is_empty() || roots != 1 {
        return Err(format!("open {stack:?}, {roots} roots"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_records_both_sides_and_plots_them() {
    let a = Cluster::start(1);
    let b = Cluster::start(1);
    a.wait_leader(ELECT).await;
    b.wait_leader(ELECT).await;
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("put.svg");
    let hist = dir.path().join("put.json");
    let svg_s = svg.to_str().unwrap();
    let hist_s = hist.to_str().unwrap();
    let (ea, eb) = (a.endpoints(), b.endpoints());
    let v = bench_json(
        &ea,
        &[
            "put",
            "--clients",
            "2",
            "--total",
            "40",
            "--against",
            &eb,
            "--pairs",
            "2",
            "--label",
            "warden-a",
            "--against-label",
            "warden-b",
            "--plot",
            svg_s,
            "--hist-json",
            hist_s,
        ],
    );
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 4, "{v}");
    let labels: Vec<&str> = runs.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["warden-a", "warden-b", "warden-a", "warden-b"]);
    for r in runs {
        check_run(r);
        assert_eq!(r["requests"], 40);
    }
    assert_eq!(runs[1]["endpoints"][0], eb.as_str());
    for side in ["a", "b"] {
        for m in ["throughput", "p50_ms", "p99_ms"] {
            assert!(f(&v, &[side, "median", m]) > 0.0, "{v}");
        }
    }
    let ratio = f(&v, &["ratio", "throughput"]);
    let expect = f(&v, &["a", "median", "throughput"]) / f(&v, &["b", "median", "throughput"]);
    assert!((ratio - expect).abs() < 1e-9 * expect.max(1.0), "{v}");
    assert!(f(&v, &["ratio", "p50"]) > 0.0 && f(&v, &["ratio", "p99"]) > 0.0);

    let doc = std::fs::read_to_string(&svg).expect("svg written");
    well_formed(&doc).unwrap_or_else(|e| panic!("{e}:\n{doc}"));
    assert!(doc.contains(">warden-a<") && doc.contains(">warden-b<"));
    assert_eq!(doc.matches("<polyline").count(), 2);
    let h: Value = serde_json::from_str(&std::fs::read_to_string(&hist).unwrap()).unwrap();
    let series = h["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0]["name"], "warden-a");
    assert_eq!(series[1]["runs"], 2);
    assert_eq!(series[1]["requests"], 80);
    let pts = series[0]["percentiles"].as_array().unwrap();
    assert!(pts.len() > 10);
    assert!(pts
        .windows(2)
        .all(|w| f(&w[0], &["latency_ms"]) <= f(&w[1], &["latency_ms"])));

    // The text report prints each run, then both medians and the ratio.
    let out = bench(
        &ea,
        &[
            "get",
            "--clients",
            "2",
            "--total",
            "30",
            "--against",
            &eb,
            "--pairs",
            "1",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("== A run 1/1") && text.contains("== B run 1/1"),
        "{text}"
    );
    assert!(
        text.contains("median of 1 pairs") && text.contains("ratio A/B"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_reports_the_gap_of_a_leader_kill() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("timeline.csv");
    let child = Command::new(BIN)
        .args(["--endpoints", &c.endpoints(), "bench", "put", "--failover"])
        .args(["--duration", "5", "--clients", "4", "--timeout-ms", "500"])
        .arg("--timeline")
        .arg(&csv)
        .args(["-w", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bench");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.kill(leader);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .expect("bench finished");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    let fo = &v["failover"];
    let gap = f(fo, &["longest_gap_ms"]);
    let (start, end) = (f(fo, &["gap_start_s"]), f(fo, &["gap_end_s"]));
    // The kill leaves a gap (a new leader is elected at once when the old
    // one's port refuses connections, so it may be well under an election
    // timeout), and puts sent to the dead leader failed.
    assert!(gap > 0.0, "{v}");
    assert!(f(fo, &["failed"]) > 0.0, "{v}");
    assert!(start >= 1.0 && end <= f(&v, &["seconds"]) + 0.01, "{v}");
    assert!((end - start) * 1000.0 - gap < 1.0, "{v}");
    assert!(f(fo, &["gap_end_unix_ms"]) > f(fo, &["gap_start_unix_ms"]));
    assert_eq!(fo["failed"], v["errors"]);
    assert!(f(&v, &["requests"]) > 0.0);

    let timeline = std::fs::read_to_string(&csv).expect("timeline written");
    let rows: Vec<Vec<f64>> = timeline
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(timeline.lines().next(), Some("time_s,successes,failures"));
    assert!((49..=52).contains(&rows.len()), "{} rows", rows.len());
    let ok: f64 = rows.iter().map(|r| r[1]).sum();
    let failed: f64 = rows.iter().map(|r| r[2]).sum();
    assert_eq!(ok, f(&v, &["requests"]));
    assert_eq!(failed, f(&v, &["errors"]));
    // The failures show in the buckets after the kill (at 1.5 s), none
    // before it.
    assert!(rows.iter().any(|r| r[2] > 0.0), "{timeline}");
    assert!(
        rows.iter().filter(|r| r[0] < 1.0).all(|r| r[2] == 0.0),
        "{timeline}"
    );
}

#[test]
fn refused_combinations_say_why() {
    let err = |args: &[&str]| {
        let out = bench("127.0.0.1:1", args);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(err(&["put", "--failover"]).contains("--duration"));
    assert!(err(&[
        "put",
        "--failover",
        "--duration",
        "1",
        "--against",
        "127.0.0.1:2"
    ])
    .contains("--against"));
    assert!(err(&["v3lock", "--failover", "--duration", "1"]).contains("key-value"));
    assert!(err(&["put", "--read-ratio", "2"]).contains("--read-ratio"));
}

/// `native-lock` against etcd (when `etcd` is installed): refused at once,
/// with the reason.
#[test]
fn native_lock_against_etcd_is_refused() {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("etcd not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = common::free_ports(2);
    let (client, peer) = (
        format!("http://127.0.0.1:{}", p[0]),
        format!("http://127.0.0.1:{}", p[1]),
    );
    let mut etcd = Command::new("etcd")
        .args(["--name", "e1", "--data-dir"])
        .arg(dir.path().join("e1"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("e1={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    let ep = format!("127.0.0.1:{}", p[0]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let out = loop {
        let out = bench(&ep, &["native-lock", "--total", "5"]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.contains("warden.v1.Locks") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = etcd.kill();
    let _ = etcd.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("warden.v1.Locks") && stderr.contains("v3lock"),
        "{stderr}"
    );
    assert!(Path::new(&dir.path().join("e1")).exists());
}
