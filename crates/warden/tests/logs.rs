//! Logs an operator can follow: with `--log-format json` every line is one
//! JSON object; a request's id (the client's `x-request-id`, echoed back)
//! shows in the log of the member that received it and, for a write a
//! follower forwards, in the leader's log too; requests slower than
//! `--warning-apply-duration` are logged with their duration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::time::Duration;

use common::{eventually, Cluster};
use serde_json::Value;
use warden_proto::etcdserverpb as pb;

const ELECT: Duration = Duration::from_secs(20);

/// The JSON lines of a member's log that mention `needle`.
fn lines_with(log: &str, needle: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_is_logged_under_one_id_on_both_members() {
    // 1ns: every request is "slow", so it is logged at the default level.
    let c = Cluster::start_with(
        3,
        &["--warning-apply-duration", "1ns", "--log-format", "json"],
    );
    let leader = c.wait_leader(ELECT).await;
    let follower = (leader + 1) % 3;
    let mut kv = pb::kv_client::KvClient::new(c.channel(follower));
    let mut req = tonic::Request::new(pb::PutRequest {
        key: b"traced".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-request-id", "trace-me-123".parse().unwrap());
    let resp = kv.put(req).await.unwrap();
    assert_eq!(
        resp.metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("trace-me-123"),
        "the id is echoed"
    );
    // A request without an id gets one.
    let resp = kv
        .range(pb::RangeRequest {
            key: b"traced".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let made = resp
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(made.len(), 16, "{made:?}");

    eventually(ELECT, || {
        let (f, l) = (c.log(follower), c.log(leader));
        async move {
            let on_follower = lines_with(&f, "trace-me-123");
            let on_leader = lines_with(&l, "trace-me-123");
            let slow = on_follower
                .iter()
                .any(|v| v.to_string().contains("slow request") && v.to_string().contains("Put"));
            let forwarded = on_leader
                .iter()
                .any(|v| v.to_string().contains("forwarded"));
            if slow && forwarded {
                Ok(())
            } else {
                Err(format!(
                    "follower lines {on_follower:?}\nleader lines {on_leader:?}"
                ))
            }
        }
    })
    .await;
    // Every line of every log is JSON.
    for i in 0..3 {
        let log = c.log(i);
        assert!(!log.is_empty());
        for line in log.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                serde_json::from_str::<Value>(line).is_ok(),
                "member {i}: not a JSON line: {line}"
            );
        }
    }
}
