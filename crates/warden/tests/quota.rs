//! The storage quota and etcd's NOSPACE alarm, through the real etcdctl 3.4:
//! a 3-member cluster with a 64 KiB quota is filled until etcd's error comes
//! back; the alarm is listed by every member (it is replicated) and survives
//! a SIGKILL and restart (and the snapshots a small `--snapshot-entries`
//! forces); reads and deletes keep working; after a delete, `compaction`,
//! `defrag` and `alarm disarm` puts work again.
//!
//! etcdctl must be installed (Debian package `etcd-client`); the test panics
//! if it is missing rather than pass vacuously.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Cluster;

const ELECT: Duration = Duration::from_secs(20);
const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";

fn etcdctl_path() -> PathBuf {
    let p = PathBuf::from("/usr/bin/etcdctl");
    assert!(
        p.is_file(),
        "etcdctl not found at {}: this test needs the real etcdctl 3.4 (Debian package `etcd-client`)",
        p.display()
    );
    p
}

struct Out {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs etcdctl against `endpoints` with a clean environment.
fn ctl(endpoints: &str, args: &[&str]) -> Out {
    let mut cmd = Command::new(etcdctl_path());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=2s", "--command-timeout=10s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl");
    Out {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.starts_with("{\"level\":"))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// Runs etcdctl until it succeeds (a member may be electing or restarting).
fn ctl_ok(endpoints: &str, args: &[&str], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let out = ctl(endpoints, args);
        if out.success {
            return out.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "etcdctl {args:?} at {endpoints} kept failing: {}",
            out.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn revision(endpoint: &str) -> i64 {
    let out = ctl_ok(endpoint, &["get", "nokey", "-w", "json"], ELECT);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["header"]["revision"].as_i64().expect("revision")
}

fn db_size(endpoint: &str) -> i64 {
    let out = ctl_ok(endpoint, &["endpoint", "status", "-w", "json"], ELECT);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    // etcdctl's JSON leaves out a zero size.
    v[0]["Status"]["dbSize"].as_i64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn nospace_alarm_refuses_puts_until_compact_defrag_disarm() {
    let mut c = Cluster::start_with(
        3,
        &["--quota-backend-bytes", "65536", "--snapshot-entries", "20"],
    );
    c.wait_leader(ELECT).await;
    let all = c.endpoints();
    let clients: Vec<String> = c.members.iter().map(|m| m.client.clone()).collect();
    let one = |i: usize| clients[i].clone();
    let value = "x".repeat(1000);

    // Fill until refused; each put costs 1260 bytes of the 44 KiB left
    // above the 20 KiB an empty state counts.
    let mut stored = 0;
    let refused = loop {
        let out = ctl(&one(0), &["put", &format!("k{stored:03}"), &value]);
        if !out.success {
            break out.stderr;
        }
        stored += 1;
        assert!(stored < 200, "64 KiB quota never reached");
    };
    assert!(refused.contains(NOSPACE), "refusal: {refused}");
    assert_eq!(stored, 35, "puts of 1260 bytes that fit in 64 KiB - 20 KiB");
    let size = db_size(&one(0));
    assert!((50_000..65_536).contains(&size), "db size {size}");

    // Every member lists the alarm raised by member 0.
    for i in 0..3 {
        let list = ctl_ok(&one(i), &["alarm", "list"], ELECT);
        assert!(
            list.contains("memberID:") && list.contains("alarm:NOSPACE"),
            "member {i}: {list:?}"
        );
    }
    // `endpoint status` lists it in ERRORS, as etcd does.
    let st = ctl_ok(&one(2), &["endpoint", "status", "-w", "json"], ELECT);
    assert!(st.contains("alarm:NOSPACE"), "{st}");
    // Any member refuses writes now, small ones too, and lease grants.
    for i in 0..3 {
        let out = ctl(&one(i), &["put", "small", "v"]);
        assert!(
            !out.success && out.stderr.contains(NOSPACE),
            "{}",
            out.stderr
        );
    }
    let out = ctl(&all, &["lease", "grant", "60"]);
    assert!(
        !out.success && out.stderr.contains(NOSPACE),
        "{}",
        out.stderr
    );

    // Reads and deletes still work.
    let got = ctl_ok(&all, &["get", "k000", "--print-value-only"], ELECT);
    assert_eq!(got.trim(), value);
    assert_eq!(ctl_ok(&all, &["del", "k001"], ELECT).trim(), "1");

    // The alarm survives a SIGKILL and restart of a member (its state comes
    // back from a snapshot plus the log tail).
    c.kill(1);
    c.restart(1);
    let list = ctl_ok(&one(1), &["alarm", "list"], ELECT);
    assert!(list.contains("alarm:NOSPACE"), "after restart: {list:?}");
    let out = ctl(&one(1), &["put", "small", "v"]);
    assert!(
        !out.success && out.stderr.contains(NOSPACE),
        "{}",
        out.stderr
    );

    // Recover as etcd's docs say: free space, compact, defrag, disarm.
    ctl_ok(&all, &["del", "k", "--prefix"], ELECT);
    let rev = revision(&one(0)).to_string();
    let compacted = ctl_ok(&all, &["compaction", &rev], ELECT);
    assert!(
        compacted.contains(&format!("compacted revision {rev}")),
        "{compacted}"
    );
    let defrag = ctl_ok(&all, &["defrag"], ELECT);
    assert!(defrag.contains("Finished defragmenting"), "{defrag}");
    let disarmed = ctl_ok(&all, &["alarm", "disarm"], ELECT);
    assert!(disarmed.contains("alarm:NOSPACE"), "{disarmed:?}");
    for i in 0..3 {
        let list = ctl_ok(&one(i), &["alarm", "list"], ELECT);
        assert_eq!(list.trim(), "", "member {i} still lists {list:?}");
    }
    assert_eq!(db_size(&one(0)), 20 * 1024, "compaction freed the space");
    assert_eq!(ctl_ok(&all, &["put", "after", "ok"], ELECT).trim(), "OK");
    let got = ctl_ok(&one(2), &["get", "after", "--print-value-only"], ELECT);
    assert_eq!(got.trim(), "ok");
}

/// `--auto-compaction-retention 2s` (periodic mode, the default): the
/// leader compacts the history older than about two seconds by itself.
#[tokio::test(flavor = "multi_thread")]
async fn periodic_auto_compaction_drops_old_history() {
    let c = Cluster::start_with(3, &["--auto-compaction-retention", "2s"]);
    c.wait_leader(ELECT).await;
    let all = c.endpoints();
    for i in 0..5 {
        ctl_ok(&all, &["put", "k", &format!("v{i}")], ELECT);
    }
    let first = revision(&c.members[0].client) - 4;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ctl(&all, &["get", "k", &format!("--rev={first}")]);
        if !out.success {
            assert!(
                out.stderr.contains("required revision has been compacted"),
                "{}",
                out.stderr
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "history at {first} never compacted"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The latest value is kept, on every member.
    for m in &c.members {
        let got = ctl_ok(&m.client, &["get", "k", "--print-value-only"], ELECT);
        assert_eq!(got.trim(), "v4");
    }
}
