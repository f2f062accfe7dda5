//! The status page: `/ui` serves the page, `/ui/state` lists every member
//! with its role, the leader's view of replication, and the native locks
//! with their holders and waiters. With auth on, the state needs root's
//! token; the page's login goes through the JSON gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, Cluster, BIN};
use serde_json::{json, Value};

const ELECT: Duration = Duration::from_secs(20);

/// `curl` an HTTP request: (status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn ui_state(addr: &str, token: Option<&str>) -> Result<Value, String> {
    let url = format!("http://{addr}/ui/state");
    let auth = token.map(|t| format!("Authorization: {t}"));
    let mut args = vec![url.as_str()];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    let (code, body) = curl(&args);
    if code != 200 {
        return Err(format!("{code}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

/// `warden lock NAME -- sleep 600` against `endpoints`.
fn hold(endpoints: &str, name: &str) -> Child {
    Command::new(BIN)
        .args(["--endpoints", endpoints, "lock", name, "--", "sleep", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn warden lock")
}

struct Kill(Vec<Child>);
impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_lists_members_roles_and_a_contended_lock() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let lead = c.members[leader].client.clone();
    let eps = c.endpoints();

    let (code, page) = curl(&[&format!("http://{lead}/ui")]);
    assert_eq!(code, 200);
    assert!(page.contains("<title>warden status</title>"), "{page}");
    assert!(
        page.contains("/ui/state"),
        "the page does not poll its JSON"
    );

    let _holders = Kill(vec![hold(&eps, "jobs/report")]);
    // The first holder is in before the second queues.
    eventually(ELECT, || {
        let lead = lead.clone();
        async move {
            let s = ui_state(&lead, None)?;
            let held = s["locks"][0]["holders"].as_array().map_or(0, Vec::len);
            if held == 1 {
                Ok(())
            } else {
                Err(format!("not held yet: {s}"))
            }
        }
    })
    .await;
    let _waiter = Kill(vec![hold(&eps, "jobs/report")]);
    let s = eventually(ELECT, || {
        let lead = lead.clone();
        async move {
            let s = ui_state(&lead, None)?;
            if s["locks"][0]["waiters"] == json!(1) && s["locks"][0]["longest_wait_ms"].is_u64() {
                Ok(s)
            } else {
                Err(format!("no waiter yet: {s}"))
            }
        }
    })
    .await;
    assert_eq!(s["lock_count"], json!(1), "{s}");
    // /metrics says the same: one holder, one waiter.
    let (code, page) = common::http_get(&lead, "/metrics").unwrap();
    assert_eq!(code, 200);
    let sample = |name: &str| -> Option<f64> {
        page.lines()
            .find(|l| l.split([' ', '{']).next() == Some(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(sample("warden_lock_holders"), Some(1.0), "{page}");
    assert_eq!(sample("warden_lock_waiters"), Some(1.0), "{page}");
    let lock = &s["locks"][0];
    assert_eq!(lock["name"], json!("jobs/report"));
    assert_eq!(lock["holders"][0]["mode"], json!("exclusive"));
    assert!(
        lock["holders"][0]["token"].as_u64().unwrap_or(0) >= 1,
        "{lock}"
    );
    // Three members, one leader (this member), each followed by the leader.
    assert_eq!(s["member"]["role"], json!("leader"), "{s}");
    let members = s["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{s}");
    let roles: Vec<&str> = members.iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(roles.iter().filter(|r| **r == "leader").count(), 1, "{s}");
    for m in members {
        assert!(
            m["matched"].is_u64(),
            "the leader shows what each holds: {m}"
        );
        assert!(
            m["link"] == json!("self") || m["link"] == json!("Connected"),
            "{m}"
        );
    }
    // A follower names the same leader and knows no replication figures.
    let other = c.members[(leader + 1) % 3].client.clone();
    let f = ui_state(&other, None).unwrap();
    assert_eq!(f["leader"], s["leader"]);
    assert_eq!(f["member"]["role"], json!("follower"));
    assert!(f["members"][0]["matched"].is_null(), "{f}");
    assert!(
        f["leader_changes"]
            .as_array()
            .is_some_and(|h| !h.is_empty()),
        "{f}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_the_state_needs_root() {
    let c = Cluster::start(1);
    c.wait_leader(ELECT).await;
    let ep = c.members[0].client.clone();
    let post = |path: &str, body: Value, token: Option<&str>| {
        let url = format!("http://{ep}{path}");
        let body = body.to_string();
        let auth = token.map(|t| format!("Authorization: {t}"));
        let mut args = vec!["-X", "POST", "--data-binary", body.as_str(), url.as_str()];
        if let Some(a) = &auth {
            args.extend(["-H", a.as_str()]);
        }
        let (code, text) = curl(&args);
        (
            code,
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
        )
    };
    for (path, body) in [
        (
            "/v3/auth/user/add",
            json!({"name": "root", "password": "rootpw"}),
        ),
        ("/v3/auth/role/add", json!({"name": "root"})),
        (
            "/v3/auth/user/grant",
            json!({"user": "root", "role": "root"}),
        ),
        (
            "/v3/auth/user/add",
            json!({"name": "alice", "password": "alicepw"}),
        ),
        ("/v3/auth/enable", json!({})),
    ] {
        let (code, r) = post(path, body, None);
        assert_eq!(code, 200, "{path}: {r}");
    }
    let refused = ui_state(&ep, None).unwrap_err();
    assert!(refused.starts_with("400"), "{refused}");
    assert!(refused.contains("user name is empty"), "{refused}");
    let (_, alice) = post(
        "/v3/auth/authenticate",
        json!({"name": "alice", "password": "alicepw"}),
        None,
    );
    let alice = alice["token"].as_str().expect("alice's token").to_owned();
    let refused = ui_state(&ep, Some(&alice)).unwrap_err();
    assert!(refused.contains("permission denied"), "{refused}");
    let (_, root) = post(
        "/v3/auth/authenticate",
        json!({"name": "root", "password": "rootpw"}),
        None,
    );
    let root = root["token"].as_str().expect("root's token").to_owned();
    let s = ui_state(&ep, Some(&root)).unwrap();
    assert_eq!(s["members"].as_array().map(Vec::len), Some(1), "{s}");
}
