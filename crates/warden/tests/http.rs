//! Plain HTTP on the client port, next to gRPC: etcd's `/health`,
//! `/version`, and `/livez`/`/readyz`, asked with HTTP/1.1 as `curl` and
//! load balancers ask. `/health` turns false on a member cut off from
//! quorum and true again once the quorum is back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::time::Duration;

use common::{eventually, Cluster};

const ELECT: Duration = Duration::from_secs(20);

use common::http_get as get;

fn health(addr: &str) -> Result<(u16, serde_json::Value), String> {
    let (code, body) = get(addr, "/health")?;
    let v = serde_json::from_str(&body).map_err(|e| format!("{e}: {body:?}"))?;
    Ok((code, v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_quorum_and_probes_answer() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let ep = c.members[leader].client.clone();
    // gRPC and HTTP on one port.
    common::put(&ep, "k", "v").await.unwrap();
    for m in &c.members {
        let (code, v) = health(&m.client).unwrap();
        assert_eq!(code, 200, "{v}");
        assert_eq!(v, serde_json::json!({"health": "true", "reason": ""}));
    }
    let (code, body) = get(&ep, "/version").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["etcdserver"], "3.5.0", "{body}");
    assert_eq!(v["etcdcluster"], "3.5.0", "{body}");
    assert_eq!(get(&ep, "/livez").unwrap(), (200, "ok".to_owned()));
    assert_eq!(get(&ep, "/readyz").unwrap(), (200, "ok".to_owned()));
    assert_eq!(get(&ep, "/no-such-page").unwrap().0, 404);
    // gRPC's health service on the same port (what gRPC load balancers and
    // `grpc_health_probe` ask): serving, and no status for a name it does
    // not know.
    let channel = tonic::transport::Channel::from_shared(format!("http://{ep}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health_client = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = health_client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        check.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let unknown = health_client
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.Such".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    // Cut one member off from quorum: the other two die.
    let alone = (leader + 1) % 3;
    let others: Vec<usize> = (0..3).filter(|i| *i != alone).collect();
    for i in &others {
        c.kill(*i);
    }
    let addr = c.members[alone].client.clone();
    let reason = eventually(ELECT, || {
        let addr = addr.clone();
        async move {
            match health(&addr)? {
                (503, v) if v["health"] == "false" => {
                    Ok(v["reason"].as_str().unwrap_or("").to_owned())
                }
                other => Err(format!("still healthy: {other:?}")),
            }
        }
    })
    .await;
    assert!(
        reason == "RAFT NO LEADER" || reason.starts_with("QGET ERROR"),
        "reason: {reason}"
    );
    // Alive, but not ready while it knows no leader.
    assert_eq!(get(&addr, "/livez").unwrap(), (200, "ok".to_owned()));

    // Quorum back: healthy again.
    for i in &others {
        c.restart(*i);
    }
    eventually(ELECT * 2, || {
        let addr = addr.clone();
        async move {
            match health(&addr)? {
                (200, v) if v == serde_json::json!({"health": "true", "reason": ""}) => Ok(()),
                other => Err(format!("not healthy yet: {other:?}")),
            }
        }
    })
    .await;
}

/// The value of the unlabelled sample `name` in a `/metrics` page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

/// etcd's metric names that end in `_total` although they are gauges
/// (etcd's own `/metrics` draws the same lint); kept for its dashboards.
const ETCD_TOTAL_GAUGES: [&str; 3] = [
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_debugging_mvcc_keys_total",
];

/// `/metrics` parses as Prometheus text (promtool, Debian's `prometheus`),
/// and its etcd-named metrics move: applied proposals and keys after puts,
/// leader changes after a leader kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let follower = (leader + 1) % 3;
    let addr = c.members[follower].client.clone();
    let (code, before) = get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200, "{before}");

    // promtool parses it; its only lint is etcd's `_total` gauges.
    let (code, said) = common::run_promtool(&["check", "metrics"], &before);
    assert_ne!(code, Some(1), "promtool could not parse it: {said}");
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            ETCD_TOTAL_GAUGES.iter().any(|n| line.starts_with(n)),
            "promtool: {line}"
        );
    }
    assert_eq!(sample(&before, "etcd_server_has_leader"), Some(1.0));
    assert_eq!(sample(&before, "etcd_server_is_leader"), Some(0.0));
    let (code, on_leader) = get(&c.members[leader].client, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(sample(&on_leader, "etcd_server_is_leader"), Some(1.0));

    let applied0 = sample(&before, "etcd_server_proposals_applied_total").unwrap();
    let keys0 = sample(&before, "etcd_debugging_mvcc_keys_total").unwrap();
    for i in 0..5 {
        common::put(&c.members[leader].client, &format!("m/{i}"), "v")
            .await
            .unwrap();
    }
    let moved = eventually(ELECT, || {
        let addr = addr.clone();
        async move {
            let (_, page) = get(&addr, "/metrics")?;
            let applied = sample(&page, "etcd_server_proposals_applied_total").unwrap_or(0.0);
            let keys = sample(&page, "etcd_debugging_mvcc_keys_total").unwrap_or(0.0);
            if applied >= applied0 + 5.0 && keys >= keys0 + 5.0 {
                Ok(page)
            } else {
                Err(format!("applied {applied}, keys {keys}"))
            }
        }
    })
    .await;
    let changes0 = sample(&moved, "etcd_server_leader_changes_seen_total").unwrap();
    assert!(
        changes0 >= 1.0,
        "a member that knows a leader saw it change at least once"
    );

    // Leader killed: the follower sees a new leader and counts it.
    c.kill(leader);
    eventually(ELECT, || {
        let addr = addr.clone();
        async move {
            let (_, page) = get(&addr, "/metrics")?;
            let changes = sample(&page, "etcd_server_leader_changes_seen_total").unwrap_or(0.0);
            let has = sample(&page, "etcd_server_has_leader").unwrap_or(0.0);
            if changes > changes0 && has == 1.0 {
                Ok(())
            } else {
                Err(format!(
                    "leader changes {changes} (was {changes0}), has leader {has}"
                ))
            }
        }
    })
    .await;
}
