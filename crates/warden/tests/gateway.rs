//! etcd's JSON gateway, spoken with `curl` as etcd's docs do: the same
//! script of requests goes to a real etcd 3.4 and to a warden cluster, and
//! the answers must be the same (status, error code and text, and every
//! field but member ids, terms, lease ids and tokens). A watch opened with
//! `curl -N` streams events as they happen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::etcd::{require_etcdctl, Etcd};
use common::Cluster;
use serde_json::{json, Value};

const ELECT: Duration = Duration::from_secs(20);

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn curl_bin() -> &'static str {
    assert!(
        Command::new("curl").arg("--version").output().is_ok(),
        "curl is needed (apt-get install curl)"
    );
    "curl"
}

/// `POST path` with `body` (and a token): (HTTP status, JSON answer).
fn post(addr: &str, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
    let mut cmd = Command::new(curl_bin());
    cmd.args([
        "-s",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: {t}")]);
    }
    let out = cmd
        .args(["--data-binary", body, &format!("http://{addr}{path}")])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (json_text, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code: u16 = code.trim().parse().unwrap_or(0);
    let v = serde_json::from_str(json_text).unwrap_or_else(|_| json!({"raw": json_text}));
    (code, v)
}

/// What may differ between two systems: ids, terms, tokens, and a lease's
/// remaining TTL within two seconds of its granted one. Headers keep only
/// their revision.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m {
                let x = match k.as_str() {
                    "header" => {
                        json!({"revision": x.get("revision").cloned().unwrap_or(Value::Null)})
                    }
                    "ID" | "lease" | "token" | "member_id" | "cluster_id" | "raft_term" => {
                        json!("<varies>")
                    }
                    _ => normalize(x),
                };
                out.insert(k.clone(), x);
            }
            // A lease's remaining TTL counts down on the clock: within two
            // seconds of its granted TTL it is as good on either side
            // (whether a second boundary passed between the grant and the
            // question is timing, not behaviour). Anything else is kept.
            let secs = |k: &str| {
                out.get(k)
                    .and_then(Value::as_str)
                    .and_then(|t| t.parse::<i64>().ok())
            };
            if let (Some(ttl), Some(granted)) = (secs("TTL"), secs("grantedTTL")) {
                if ttl <= granted && ttl >= granted - 2 {
                    out.insert("TTL".into(), json!("<counting down>"));
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

/// One request of the script: path, body (`$LEASE` and `$TOKEN` are
/// replaced by the ones this system handed out), whether it sends the
/// token, and whether only status and error code are compared (the text
/// of a JSON parse error is the parser's own).
struct Step {
    path: &'static str,
    body: String,
    auth: bool,
    loose: bool,
}

fn step(path: &'static str, body: Value) -> Step {
    Step {
        path,
        body: body.to_string(),
        auth: false,
        loose: false,
    }
}

fn script() -> Vec<Step> {
    let k = b64("foo");
    vec![
        step("/v3/kv/put", json!({"key": k, "value": b64("bar")})),
        step("/v3/kv/range", json!({"key": k})),
        step(
            "/v3/kv/put",
            json!({"key": k, "value": b64("bar2"), "prev_kv": true}),
        ),
        step("/v3/kv/put", json!({"key": b64("fop"), "value": b64("x")})),
        step(
            "/v3/kv/range",
            json!({"key": b64("fo"), "range_end": b64("fp"), "sort_order": "DESCEND"}),
        ),
        step(
            "/v3/kv/range",
            json!({"key": b64("fo"), "range_end": b64("fp"), "count_only": true}),
        ),
        step(
            "/v3/kv/txn",
            json!({
                "compare": [{"key": k, "target": "VALUE", "result": "EQUAL", "value": b64("bar2")}],
                "success": [{"request_put": {"key": k, "value": b64("baz")}}],
                "failure": [{"request_range": {"key": k}}],
            }),
        ),
        step(
            "/v3/kv/txn",
            json!({
                "compare": [{"key": k, "target": "VALUE", "result": "EQUAL", "value": b64("bar2")}],
                "success": [{"request_put": {"key": k, "value": b64("baz")}}],
                "failure": [{"request_range": {"key": k}}],
            }),
        ),
        step("/v3/kv/deleterange", json!({"key": k, "prev_kv": true})),
        step("/v3/kv/range", json!({"key": k})),
        step("/v3/kv/put", json!({"key": "", "value": b64("v")})),
        Step {
            path: "/v3/kv/put",
            body: "{\"key\": ".to_owned(),
            auth: false,
            loose: true,
        },
        step("/v3/lease/grant", json!({"TTL": "60"})),
        step(
            "/v3/kv/put",
            json!({"key": b64("l"), "value": b64("v"), "lease": "$LEASE"}),
        ),
        step(
            "/v3/lease/timetolive",
            json!({"ID": "$LEASE", "keys": true}),
        ),
        step("/v3/lease/revoke", json!({"ID": "$LEASE"})),
        step("/v3/kv/range", json!({"key": b64("l")})),
        step("/v3/lease/timetolive", json!({"ID": "$LEASE"})),
        step("/v3/kv/compaction", json!({"revision": "3"})),
        step("/v3/kv/range", json!({"key": k, "revision": "2"})),
        // Auth: root, enable, refused without a token, allowed with one.
        step(
            "/v3/auth/user/add",
            json!({"name": "root", "password": "pw"}),
        ),
        step("/v3/auth/role/add", json!({"name": "root"})),
        step(
            "/v3/auth/user/grant",
            json!({"user": "root", "role": "root"}),
        ),
        step("/v3/auth/enable", json!({})),
        step("/v3/kv/range", json!({"key": b64("fop")})),
        step(
            "/v3/auth/authenticate",
            json!({"name": "root", "password": "wrong"}),
        ),
        step(
            "/v3/auth/authenticate",
            json!({"name": "root", "password": "pw"}),
        ),
        Step {
            auth: true,
            ..step("/v3/kv/range", json!({"key": b64("fop")}))
        },
        Step {
            auth: true,
            ..step("/v3/auth/user/list", json!({}))
        },
        Step {
            auth: true,
            ..step("/v3/auth/disable", json!({}))
        },
        step("/v3/kv/range", json!({"key": b64("fop")})),
    ]
}

/// Runs the script against `addr`: each step's (status, normalized answer).
fn run(addr: &str) -> Vec<(u16, Value)> {
    let mut lease = String::new();
    let mut token = String::new();
    let mut out = Vec::new();
    for s in script() {
        let body = s.body.replace("$LEASE", &lease);
        let (code, v) = post(addr, s.path, &body, s.auth.then_some(token.as_str()));
        if let Some(id) = v.get("ID").and_then(Value::as_str) {
            lease = id.to_owned();
        }
        if let Some(t) = v.get("token").and_then(Value::as_str) {
            token = t.to_owned();
        }
        let v = if s.loose {
            json!({"code": v.get("code").cloned().unwrap_or(Value::Null)})
        } else {
            normalize(&v)
        };
        out.push((code, v));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_script_answers_as_etcds_gateway_does() {
    let ctl = require_etcdctl();
    let mut etcd = Etcd::spawn();
    let c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    etcd.wait_up(&ctl);
    // A follower: writes are forwarded as gRPC ones are.
    let follower = c.members[(leader + 1) % 3].client.clone();

    let want = run(&etcd.client);
    let got = run(&follower);
    let steps = script();
    let mut diffs = Vec::new();
    for (i, (s, (w, g))) in steps.iter().zip(want.iter().zip(&got)).enumerate() {
        if w != g {
            diffs.push(format!(
                "step {i}: POST {} {}\n  etcd:   {w:?}\n  warden: {g:?}",
                s.path, s.body
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "warden's gateway differs from etcd's:\n{}",
        diffs.join("\n")
    );
    // The script checks something: the reads saw the writes.
    assert_eq!(want[1].1["kvs"][0]["value"], json!(b64("bar")), "{want:?}");
    assert_eq!(want[6].1["succeeded"], json!(true), "{want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_curl_watch_streams_events_and_lock_and_status_answer() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let ep = c.members[leader].client.clone();
    let other = c.members[(leader + 2) % 3].client.clone();

    let mut watch = Command::new(curl_bin())
        .args([
            "-s",
            "-N",
            "--max-time",
            "60",
            "-X",
            "POST",
            "--data-binary",
        ])
        .arg(json!({"create_request": {"key": b64("w/"), "range_end": b64("w0")}}).to_string())
        .arg(format!("http://{other}/v3/watch"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn curl");
    let stdout = watch.stdout.take().expect("curl stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> Value {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("no watch line ({what}): {e}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    };
    let created = next("created");
    assert_eq!(created["result"]["created"], json!(true), "{created}");

    for (k, v) in [("w/a", "1"), ("w/b", "2"), ("x", "3")] {
        let (code, r) = post(
            &ep,
            "/v3/kv/put",
            &json!({"key": b64(k), "value": b64(v)}).to_string(),
            None,
        );
        assert_eq!(code, 200, "{r}");
    }
    let (code, r) = post(
        &ep,
        "/v3/kv/deleterange",
        &json!({"key": b64("w/a")}).to_string(),
        None,
    );
    assert_eq!((code, &r["deleted"]), (200, &json!("1")), "{r}");
    // Events come in order, each once, and `x` (outside the range) never.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 3 && Instant::now() < deadline {
        let m = next("events");
        for e in m["result"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let kind = e["type"].as_str().unwrap_or("PUT").to_owned();
            seen.push((kind, e["kv"]["key"].clone()));
        }
    }
    assert_eq!(
        seen,
        vec![
            ("PUT".to_owned(), json!(b64("w/a"))),
            ("PUT".to_owned(), json!(b64("w/b"))),
            ("DELETE".to_owned(), json!(b64("w/a"))),
        ]
    );
    let _ = watch.kill();
    let _ = watch.wait();

    // Lock and unlock through the gateway; a second locker waits.
    let (code, l) = post(
        &ep,
        "/v3/lock/lock",
        &json!({"name": b64("job")}).to_string(),
        None,
    );
    assert_eq!(code, 200, "{l}");
    let key = l["key"].as_str().expect("lock key").to_owned();
    let held = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .expect("base64 key");
    assert!(held.starts_with(b"job/"), "{l}");
    let (code, u) = post(
        &ep,
        "/v3/lock/unlock",
        &json!({"key": key}).to_string(),
        None,
    );
    assert_eq!(code, 200, "{u}");

    // Status names the leader every member agrees on.
    let (code, s) = post(&other, "/v3/maintenance/status", "{}", None);
    assert_eq!(code, 200, "{s}");
    let (_, s2) = post(&ep, "/v3/maintenance/status", "{}", None);
    assert_eq!(s["leader"], s2["leader"], "{s} vs {s2}");
    assert_eq!(s2["leader"], s2["header"]["member_id"], "{s2}");

    // Unknown paths are 404, not a hang or a gRPC error.
    let (code, _) = post(&ep, "/v3/kv/nope", "{}", None);
    assert_eq!(code, 404);
}
