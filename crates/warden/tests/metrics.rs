//! Prometheus metrics on real members: the gRPC server metrics count calls
//! by method and status code, the Raft log's fsync histogram grows with
//! writes, heartbeats give peer round trips, process metrics are read; the
//! `--listen-metrics-urls` address serves `/metrics` and `/health` and
//! nothing else; and `contrib/`'s alert rules and Grafana dashboard parse
//! and name only metrics a live member serves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{eventually, http_get, http_request, Cluster};
use warden_proto::etcdserverpb as pb;

const ELECT: Duration = Duration::from_secs(20);

/// etcd's metric names that end in `_total` although they are gauges
/// (etcd's own `/metrics` draws the same lint); kept for its dashboards.
const ETCD_TOTAL_GAUGES: [&str; 3] = [
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_debugging_mvcc_keys_total",
];

/// The sum of the samples of `name` whose labels include every `labels`
/// pair; `None` if there is no such sample.
fn value(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let have: Vec<&str> = l.split(',').collect();
        if labels
            .iter()
            .all(|(k, want)| have.contains(&format!("{k}=\"{want}\"").as_str()))
        {
            let v: f64 = v.trim().parse().unwrap_or(f64::NAN);
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// Names of every sample in a `/metrics` page.
fn sample_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect()
}

fn metrics(addr: &str) -> Result<String, String> {
    match http_get(addr, "/metrics")? {
        (200, page) => Ok(page),
        (code, body) => Err(format!("/metrics answered {code}: {body}")),
    }
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

async fn range_future_revision(addr: &str) -> Result<pb::RangeResponse, tonic::Status> {
    common::kv(addr)
        .await
        .range(pb::RangeRequest {
            key: b"m/0".to_vec(),
            revision: 1_000_000,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// gRPC calls are counted by method and code, writes grow the fsync
/// histogram, heartbeats give round trips, the process is measured, and
/// promtool parses the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_disk_peer_and_process_metrics_move() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let addr = c.members[leader].client.clone();
    let before = metrics(&addr).unwrap();
    let put = [("grpc_method", "Put"), ("grpc_code", "OK")];
    let puts0 = value(&before, "grpc_server_handled_total", &put).unwrap_or(0.0);
    let fsyncs0 = value(&before, "etcd_disk_wal_fsync_duration_seconds_count", &[]).unwrap();

    for i in 0..5 {
        common::put(&addr, &format!("m/{i}"), "v").await.unwrap();
    }
    let e = range_future_revision(&addr).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");

    let page = eventually(ELECT, || {
        let addr = addr.clone();
        async move {
            let page = metrics(&addr)?;
            let puts = value(&page, "grpc_server_handled_total", &put).unwrap_or(0.0);
            let fsyncs =
                value(&page, "etcd_disk_wal_fsync_duration_seconds_count", &[]).unwrap_or(0.0);
            if puts >= puts0 + 5.0 && fsyncs >= fsyncs0 + 5.0 {
                Ok(page)
            } else {
                Err(format!(
                    "Put OK {puts} (was {puts0}), fsyncs {fsyncs} (was {fsyncs0})"
                ))
            }
        }
    })
    .await;
    let labels = |m: &'static str| {
        [
            ("grpc_type", "unary"),
            ("grpc_service", "etcdserverpb.KV"),
            ("grpc_method", m),
        ]
    };
    // The failed call is there with its code, and with no other.
    let range_code = |code| {
        let mut l = labels("Range").to_vec();
        l.push(("grpc_code", code));
        value(&page, "grpc_server_handled_total", &l)
    };
    assert_eq!(range_code("OutOfRange"), Some(1.0), "{page}");
    assert_eq!(range_code("OK"), None, "no Range succeeded: {page}");
    let started = value(&page, "grpc_server_started_total", &labels("Put")).unwrap();
    assert!(started >= puts0 + 5.0, "started {started}");
    let timed = value(&page, "grpc_server_handling_seconds_count", &labels("Put")).unwrap();
    assert!(timed >= puts0 + 5.0, "timed {timed}");
    // Each put waited for its own commit: the histogram's buckets are
    // cumulative and end with +Inf = count.
    let inf = value(
        &page,
        "etcd_disk_wal_fsync_duration_seconds_bucket",
        &[("le", "+Inf")],
    )
    .unwrap();
    let count = value(&page, "etcd_disk_wal_fsync_duration_seconds_count", &[]).unwrap();
    assert_eq!(inf, count);
    assert!(value(&page, "etcd_disk_wal_fsync_duration_seconds_sum", &[]).unwrap() > 0.0);
    // Nothing failed or waits now.
    assert_eq!(
        value(&page, "etcd_server_proposals_failed_total", &[]),
        Some(0.0)
    );
    assert_eq!(value(&page, "warden_apply_lag_entries", &[]), Some(0.0));

    // Process metrics, read from /proc.
    let rss = value(&page, "process_resident_memory_bytes", &[]).unwrap();
    assert!(rss > 1e6, "rss {rss}");
    assert!(value(&page, "process_open_fds", &[]).unwrap() >= 3.0);
    let start = value(&page, "process_start_time_seconds", &[]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        start <= now + 1.0 && start > now - 600.0,
        "started at {start}, now {now}"
    );

    // The leader's heartbeats to both followers have round trips.
    let followers: Vec<String> = {
        let ids = common::ids(&addr).await.unwrap();
        let list = common::channel(&addr).await;
        let members = warden_proto::etcdserverpb::cluster_client::ClusterClient::new(list)
            .member_list(pb::MemberListRequest::default())
            .await
            .unwrap()
            .into_inner()
            .members;
        members
            .iter()
            .filter(|m| m.id != ids.1)
            .map(|m| format!("{:x}", m.id))
            .collect()
    };
    assert_eq!(followers.len(), 2);
    eventually(ELECT, || {
        let addr = addr.clone();
        let followers = followers.clone();
        async move {
            let page = metrics(&addr)?;
            for f in &followers {
                let n = value(
                    &page,
                    "etcd_network_peer_round_trip_time_seconds_count",
                    &[("To", f)],
                )
                .unwrap_or(0.0);
                if n < 1.0 {
                    return Err(format!("no round trip to {f} yet"));
                }
            }
            Ok(())
        }
    })
    .await;

    // promtool parses it; its only lint is etcd's `_total` gauges.
    let (code, said) = common::run_promtool(&["check", "metrics"], &page);
    assert_ne!(code, Some(1), "promtool could not parse it: {said}");
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            ETCD_TOTAL_GAUGES.iter().any(|n| line.starts_with(n)),
            "promtool: {line}"
        );
    }
}

/// `--listen-metrics-urls`: `/metrics` and `/health` there, nothing else
/// (not the probes, not gRPC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_serves_metrics_and_health_only() {
    let port = common::free_ports(1)[0];
    let maddr = format!("127.0.0.1:{port}");
    let mut c = Cluster::stopped(1, &[]);
    c.members[0].args = vec!["--listen-metrics-urls".into(), format!("http://{maddr}")];
    c.restart(0);
    c.wait_leader(ELECT).await;
    let client = c.members[0].client.clone();
    common::put(&client, "k", "v").await.unwrap();

    let page = eventually(ELECT, || {
        let maddr = maddr.clone();
        async move { metrics(&maddr) }
    })
    .await;
    assert_eq!(value(&page, "etcd_server_has_leader", &[]), Some(1.0));
    assert_eq!(value(&page, "etcd_server_is_leader", &[]), Some(1.0));
    // The same registry as the client port's: the put made there shows.
    let put = [("grpc_method", "Put"), ("grpc_code", "OK")];
    assert_eq!(value(&page, "grpc_server_handled_total", &put), Some(1.0));

    let (code, body) = http_get(&maddr, "/health").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::json!({"health": "true", "reason": ""}));
    for path in ["/version", "/livez", "/readyz", "/", "/v3/kv/range"] {
        assert_eq!(http_get(&maddr, path).unwrap().0, 404, "{path}");
    }
    // A gRPC call to it is refused (404), and a gRPC client fails.
    let (code, _) = http_request(
        &maddr,
        "POST",
        "/etcdserverpb.KV/Range",
        &[("content-type", "application/grpc")],
    )
    .unwrap();
    assert_eq!(code, 404);
    let e = common::kv(&maddr)
        .await
        .range(pb::RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_ne!(e.code(), tonic::Code::Ok);
    // The client port still has both.
    assert_eq!(http_get(&client, "/version").unwrap().0, 200);
}

/// A bad `--listen-metrics-urls` stops the start with one line naming it.
#[test]
fn bad_metrics_urls_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (url, says) in [
        ("https://127.0.0.1:1", "https is not supported"),
        ("http://127.0.0.1", "port"),
        ("ftp://127.0.0.1:1", "scheme"),
    ] {
        let out = Command::new(common::BIN)
            .arg("server")
            .arg("--data-dir")
            .arg(dir.path().join("d"))
            .args(["--client-addr", "127.0.0.1:1", "--peer-addr", "127.0.0.1:2"])
            .args(["--listen-metrics-urls", url])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{url}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--listen-metrics-urls") && err.contains(says),
            "{url}: {err}"
        );
    }
}

/// Label names that share a metric prefix (not metric names).
const LABEL_NAMES: [&str; 4] = ["grpc_type", "grpc_service", "grpc_method", "grpc_code"];

/// Metric names a PromQL expression uses: warden's and etcd's prefixes
/// (`up` and the like come from Prometheus itself).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut word = String::new();
    for ch in expr.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_alphanumeric() || ch == '_' || ch == ':' {
            word.push(ch);
            continue;
        }
        let w = std::mem::take(&mut word);
        let ours = ["etcd_", "grpc_", "process_", "warden_"]
            .iter()
            .any(|p| w.starts_with(p));
        if ours && !LABEL_NAMES.contains(&w.as_str()) {
            out.insert(w);
        }
    }
    out
}

/// Every `expr` in the dashboard's JSON.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

/// The alert rules pass `promtool check rules`; the dashboard is JSON whose
/// every query is valid PromQL (checked by promtool as recording rules);
/// and every metric either names is served by a live member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_served_metrics() {
    let alerts_path = repo_file("contrib/prometheus/alerts.yml");
    let out = Command::new(common::promtool())
        .args(["check", "rules"])
        .arg(&alerts_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let alerts = std::fs::read_to_string(&alerts_path).unwrap();

    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("contrib/grafana/warden.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    // Each query as a recording rule, its template variables filled in.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e.replace("$job", ".+");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let tmp = tempfile::tempdir().unwrap();
    let rules_path = tmp.path().join("dashboard.yml");
    std::fs::write(&rules_path, &rules).unwrap();
    let out = Command::new(common::promtool())
        .args(["check", "rules"])
        .arg(&rules_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a dashboard query is not valid PromQL: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut wanted = BTreeSet::new();
    for e in &exprs {
        wanted.extend(metric_names(e));
    }
    for line in alerts.lines().filter(|l| !l.trim_start().starts_with('#')) {
        wanted.extend(metric_names(line));
    }
    assert!(wanted.len() >= 25, "{wanted:?}");

    // A live leader with gRPC traffic and heartbeats serves every one.
    let c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let addr = c.members[leader].client.clone();
    common::put(&addr, "k", "v").await.unwrap();
    let _ = range_future_revision(&addr).await;
    eventually(ELECT, || {
        let addr = addr.clone();
        let wanted = wanted.clone();
        async move {
            let served = sample_names(&metrics(&addr)?);
            let missing: Vec<&String> = wanted.iter().filter(|n| !served.contains(*n)).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("not served: {missing:?}"))
            }
        }
    })
    .await;
}
