//! Leases, watch and locks on a real 3-member cluster, driven by the real
//! `etcdctl` (Debian's `etcd-client`, 3.4): its lock and lease commands run
//! etcd's client-side recipes, so they exercise exactly the KV, lease and
//! watch semantics etcd clients depend on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, get, get_prefix, put, Cluster, Killed};

const ELECT: Duration = Duration::from_secs(20);

/// Polls `f` until it returns `Some`, failing the test after `timeout`.
async fn until<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually(timeout, || {
        let fut = f();
        async move { fut.await.ok_or_else(|| "not yet".to_string()) }
    })
    .await
}

fn etcdctl_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcdctl"))
        .find(|p| p.is_file())
        .expect("etcdctl not found on PATH: install Debian's etcd-client (see .ci/run)")
}

fn etcdctl_cmd(endpoints: &str) -> Command {
    let mut cmd = Command::new(etcdctl_path());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=2s", "--command-timeout=10s"]);
    cmd
}

fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    etcdctl_cmd(endpoints)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl")
}

fn ok_stdout(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `etcdctl lease grant` → the lease id (hex).
fn grant(endpoints: &str, ttl: u32) -> String {
    let out = ok_stdout(
        etcdctl(endpoints, &["lease", "grant", &ttl.to_string()]),
        "lease grant",
    );
    // "lease 694d77aa9c0d5e1f granted with TTL(5s)"
    out.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected grant output {out:?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_keys_expire_unless_kept_alive() {
    let c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    let eps = c.endpoints();
    let ep = c.members[0].client.clone();

    // Without keep-alive: the key goes once the TTL has passed, and not
    // long before (a lease must never expire early).
    let lease = grant(&eps, 3);
    let granted_at = Instant::now();
    ok_stdout(
        etcdctl(&eps, &["put", "--lease", &lease, "short", "v"]),
        "put with lease",
    );
    let gone_at = until(Duration::from_secs(20), || async {
        match get(&ep, "short", false).await {
            Ok(None) => Some(Instant::now()),
            _ => None,
        }
    })
    .await;
    let lived = gone_at.duration_since(granted_at);
    assert!(
        lived >= Duration::from_millis(2500),
        "a 3 s lease expired after {lived:?}"
    );
    let ttl = ok_stdout(
        etcdctl(&eps, &["lease", "timetolive", &lease]),
        "timetolive",
    );
    assert!(ttl.contains("already expired"), "{ttl}");

    // Kept alive: the key outlives several TTLs, then goes once the
    // keep-alive stops.
    let lease = grant(&eps, 2);
    ok_stdout(
        etcdctl(&eps, &["put", "--lease", &lease, "kept", "v"]),
        "put with lease",
    );
    let keeper = Killed(
        etcdctl_cmd(&eps)
            .args(["lease", "keep-alive", &lease])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn keep-alive"),
    );
    // The property under test is that time passing does not expire it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        get(&ep, "kept", false).await.expect("get"),
        Some(b"v".to_vec()),
        "a kept-alive lease expired"
    );
    let ttl = ok_stdout(
        etcdctl(&eps, &["lease", "timetolive", &lease, "--keys"]),
        "timetolive",
    );
    assert!(ttl.contains("attached keys([kept])"), "{ttl}");
    drop(keeper);
    until(Duration::from_secs(20), || async {
        matches!(get(&ep, "kept", false).await, Ok(None)).then_some(())
    })
    .await;

    // Revoke deletes at once; a revoked lease is unknown afterwards.
    let lease = grant(&eps, 60);
    for k in ["r1", "r2"] {
        ok_stdout(etcdctl(&eps, &["put", "--lease", &lease, k, "v"]), "put");
    }
    ok_stdout(etcdctl(&eps, &["lease", "revoke", &lease]), "revoke");
    assert!(get_prefix(&ep, "r").await.expect("get").is_empty());
    let out = etcdctl(&eps, &["lease", "revoke", &lease]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("etcdserver: requested lease not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `rounds` critical sections under `etcdctl lock`, each incrementing
/// the counter file non-atomically and logging its start and end.
fn locker(eps: &str, dir: &Path, name: &str, rounds: u32) -> Child {
    let script = format!(
        r#"for i in $(seq {rounds}); do
  "$ETCDCTL" --endpoints={eps} --dial-timeout=2s lock {name} -- sh -c '
    echo "start $ETCD_LOCK_REV" >> log
    n=$(cat counter); sleep 0.02; echo $((n+1)) > counter
    echo "end $ETCD_LOCK_REV" >> log' || exit 1
done"#
    );
    spawn_script(dir, &script)
}

/// The same with `warden lock`, whose fencing token is WARDEN_LOCK_TOKEN.
fn warden_locker(eps: &str, dir: &Path, name: &str, rounds: u32) -> Child {
    let script = format!(
        r#"for i in $(seq {rounds}); do
  "$WARDEN" --endpoints={eps} lock {name} -- sh -c '
    echo "start $WARDEN_LOCK_TOKEN" >> log
    n=$(cat counter); sleep 0.02; echo $((n+1)) > counter
    echo "end $WARDEN_LOCK_TOKEN" >> log' || exit 1
done"#
    );
    spawn_script(dir, &script)
}

fn spawn_script(dir: &Path, script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("ETCDCTL", etcdctl_path())
        .env("WARDEN", common::BIN)
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn locker")
}

/// Checks the lock log: sections never overlap, and the lock revisions
/// (fencing tokens) strictly increase in grant order.
fn check_log(log: &str) -> usize {
    let mut held: Option<i64> = None;
    let mut last = 0i64;
    let mut sections = 0;
    for line in log.lines() {
        let (what, rev) = line.split_once(' ').expect("log line");
        let rev: i64 = rev.parse().expect("revision");
        match what {
            "start" => {
                assert_eq!(held, None, "two holders at once:\n{log}");
                assert!(rev > last, "token {rev} after {last}:\n{log}");
                held = Some(rev);
                last = rev;
            }
            "end" => {
                assert_eq!(held, Some(rev), "end without start:\n{log}");
                held = None;
                sections += 1;
            }
            _ => panic!("bad line {line:?}"),
        }
    }
    sections
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_serialises_counter_increments() {
    counter_under_lock(locker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warden_lock_serialises_counter_increments() {
    counter_under_lock(warden_locker).await;
}

/// N processes each increment a counter file M times under the lock: the
/// count is N×M, sections never overlap, tokens increase.
async fn counter_under_lock(make: fn(&str, &Path, &str, u32) -> Child) {
    let c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("counter"), "0").expect("counter");
    std::fs::write(dir.path().join("log"), "").expect("log");
    let (n, m) = (3, 5);
    let lockers: Vec<Child> = (0..n)
        .map(|_| make(&c.endpoints(), dir.path(), "counter-lock", m))
        .collect();
    for l in lockers {
        let out = l.wait_with_output().expect("locker");
        assert!(
            out.status.success(),
            "locker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let count: u32 = std::fs::read_to_string(dir.path().join("counter"))
        .expect("counter")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(count, n * m, "lost increments");
    let log = std::fs::read_to_string(dir.path().join("log")).expect("log");
    assert_eq!(check_log(&log), (n * m) as usize);
    // No lock keys left behind.
    let ep = c.members[0].client.clone();
    assert!(get_prefix(&ep, "counter-lock/")
        .await
        .expect("get")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_survive_leader_kill() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("counter"), "0").expect("counter");
    std::fs::write(dir.path().join("log"), "").expect("log");
    // Clients talk to the followers only. etcdctl 3.4 spreads calls over
    // all its endpoints, and a blocking Lock call in flight on the member
    // that is killed fails with "transport is closing" (on etcd as well):
    // that is the client losing its server, not the lock being lost.
    let followers: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| c.members[i].client.clone())
        .collect();
    let eps = followers.join(",");
    let ep = followers[0].clone();

    // A long holder keeps the lock over the kill; waiters queue behind it.
    let holder = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={eps}"))
        .args(["lock", "failover-lock", "--", "sh", "-c"])
        .arg(r#"echo "start $ETCD_LOCK_REV" >> log; sleep 4; echo "end $ETCD_LOCK_REV" >> log"#)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn holder");
    until(Duration::from_secs(10), || async {
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        log.contains("start").then_some(())
    })
    .await;
    let waiters: Vec<Child> = (0..2)
        .map(|_| locker(&eps, dir.path(), "failover-lock", 2))
        .collect();
    // Both waiters have queued their keys.
    until(Duration::from_secs(10), || async {
        let keys = get_prefix(&ep, "failover-lock/").await.ok()?;
        (keys.len() == 3).then_some(())
    })
    .await;
    // A key applied on a follower does not mean the follower has had the
    // leader's answer to the Lock call that wrote it: killed before that,
    // the call fails with "leader changed" (it may have applied; etcd
    // answers the same). A write through each follower, answered after
    // the waiters' writes in log order, means their answers came first.
    for f in &followers {
        put(f, "failover-sentinel", "x")
            .await
            .expect("sentinel write");
    }
    c.kill(leader);
    let out = holder.wait_with_output().expect("holder");
    assert!(
        out.status.success(),
        "holder failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for w in waiters {
        let out = w.wait_with_output().expect("waiter");
        assert!(
            out.status.success(),
            "waiter failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = std::fs::read_to_string(dir.path().join("log")).expect("log");
    assert_eq!(check_log(&log), 5, "{log}");
    let count = std::fs::read_to_string(dir.path().join("counter")).expect("counter");
    assert_eq!(count.trim(), "4");
}

/// Parses `etcdctl watch` simple output: (kind, key, value) triples.
fn watch_events(out: &str) -> Vec<(String, String, String)> {
    let lines: Vec<&str> = out.lines().collect();
    let mut evs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        match lines[i] {
            "PUT" if i + 2 < lines.len() => {
                evs.push(("PUT".into(), lines[i + 1].into(), lines[i + 2].into()));
                i += 3;
            }
            "DELETE" if i + 1 < lines.len() => {
                // A delete prints the key and an empty value line.
                evs.push(("DELETE".into(), lines[i + 1].into(), String::new()));
                i += 3;
            }
            _ => i += 1,
        }
    }
    evs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_old_revision_survives_leader_kill() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    // The watcher's first endpoint is the leader, so the kill cuts its
    // stream and it must resume on another member.
    let mut order = vec![c.members[leader].client.clone()];
    order.extend(
        (0..3)
            .filter(|i| *i != leader)
            .map(|i| c.members[i].client.clone()),
    );
    let eps = order.join(",");
    let writer_ep = order[1].clone();

    let mut expected = Vec::new();
    for i in 0..20 {
        let k = format!("w/{:02}", i % 7);
        put(&writer_ep, &k, &i.to_string()).await.expect("put");
        expected.push(("PUT".to_string(), k, i.to_string()));
    }
    let mut watcher = Killed(
        etcdctl_cmd(&eps)
            .args(["watch", "--prefix", "w/", "--rev", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn watch"),
    );
    let stdout = watcher.0.stdout.take().expect("stdout");
    let printed = Arc::new(Mutex::new(String::new()));
    let sink = printed.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut s) = sink.lock() {
                s.push_str(&line);
                s.push('\n');
            }
        }
    });
    let events_so_far = || watch_events(&printed.lock().map(|s| s.clone()).unwrap_or_default());
    // The replay of the history is complete before the leader dies.
    until(Duration::from_secs(20), || async {
        (events_so_far().len() >= expected.len()).then_some(())
    })
    .await;
    c.kill(leader);
    for i in 20..40 {
        let k = format!("w/{:02}", i % 7);
        // Writes during the election may fail; retry until acknowledged.
        let v = i.to_string();
        until(Duration::from_secs(20), || async {
            put(&writer_ep, &k, &v).await.ok().map(|_| ())
        })
        .await;
        expected.push(("PUT".to_string(), k, v));
    }
    put(&writer_ep, "w/zz-done", "end").await.expect("put");
    expected.push(("PUT".into(), "w/zz-done".into(), "end".into()));
    // The watcher has printed the marker, the last event.
    until(Duration::from_secs(30), || async {
        events_so_far()
            .last()
            .is_some_and(|e| e.1 == "w/zz-done")
            .then_some(())
    })
    .await;
    drop(watcher);
    let got = events_so_far();
    let out = printed.lock().map(|s| s.clone()).unwrap_or_default();
    let seen: BTreeSet<_> = got.iter().collect();
    assert_eq!(
        seen.len(),
        got.len(),
        "an event was delivered twice:\n{out}"
    );
    assert_eq!(got, expected, "watch lost or reordered events:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_services() {
    use warden_proto::etcdserverpb as pb;
    use warden_proto::etcdserverpb::lease_client::LeaseClient;
    use warden_proto::v3electionpb as epb;
    use warden_proto::v3electionpb::election_client::ElectionClient;
    use warden_proto::v3lockpb as lpb;
    use warden_proto::v3lockpb::lock_client::LockClient;

    let c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    let ch = common::channel(&c.members[1].client).await;
    let leases = LeaseClient::new(ch.clone());
    let grant = || {
        let mut l = leases.clone();
        async move {
            l.lease_grant(pb::LeaseGrantRequest { ttl: 30, id: 0 })
                .await
                .expect("grant")
                .into_inner()
                .id
        }
    };
    let (l1, l2) = (grant().await, grant().await);

    // Lock: the second locker waits until the first unlocks.
    let mut lock = LockClient::new(ch.clone());
    let k1 = lock
        .lock(lpb::LockRequest {
            name: b"svc".to_vec(),
            lease: l1,
        })
        .await
        .expect("lock")
        .into_inner();
    let mut lock2 = lock.clone();
    let second = tokio::spawn(async move {
        lock2
            .lock(lpb::LockRequest {
                name: b"svc".to_vec(),
                lease: l2,
            })
            .await
            .map(|r| r.into_inner())
    });
    // The waiter's key is queued behind the holder's.
    until(Duration::from_secs(10), || async {
        let keys = get_prefix(&c.members[0].client, "svc/").await.ok()?;
        (keys.len() == 2).then_some(())
    })
    .await;
    assert!(!second.is_finished(), "second locker got a held lock");
    lock.unlock(lpb::UnlockRequest {
        key: k1.key.clone(),
    })
    .await
    .expect("unlock");
    let k2 = second.await.expect("join").expect("second lock");
    assert_ne!(k2.key, k1.key);
    let rev = |h: Option<pb::ResponseHeader>| h.map_or(0, |h| h.revision);
    assert!(
        rev(k2.header) > rev(k1.header),
        "fencing revisions increase"
    );
    // A lock on an unknown lease is refused.
    let err = lock
        .lock(lpb::LockRequest {
            name: b"svc".to_vec(),
            lease: 12345,
        })
        .await
        .expect_err("unknown lease");
    assert_eq!(err.message(), "etcdserver: requested lease not found");

    // Election: campaign, leader, proclaim, observe, resign.
    let mut el = ElectionClient::new(ch.clone());
    let nobody = el
        .leader(epb::LeaderRequest {
            name: b"boss".to_vec(),
        })
        .await
        .expect_err("no leader yet");
    assert_eq!(nobody.message(), "election: no leader");
    let lead = el
        .campaign(epb::CampaignRequest {
            name: b"boss".to_vec(),
            lease: l1,
            value: b"alice".to_vec(),
        })
        .await
        .expect("campaign")
        .into_inner()
        .leader
        .expect("leader key");
    let mut observe = el
        .observe(epb::LeaderRequest {
            name: b"boss".to_vec(),
        })
        .await
        .expect("observe")
        .into_inner();
    let first = observe.message().await.expect("observe").expect("event");
    assert_eq!(first.kv.map(|kv| kv.value), Some(b"alice".to_vec()));
    el.proclaim(epb::ProclaimRequest {
        leader: Some(lead.clone()),
        value: b"alice-2".to_vec(),
    })
    .await
    .expect("proclaim");
    let next = observe.message().await.expect("observe").expect("event");
    assert_eq!(next.kv.map(|kv| kv.value), Some(b"alice-2".to_vec()));
    // A second candidate waits; the first resigns; the second leads.
    let mut el2 = el.clone();
    let bob = tokio::spawn(async move {
        el2.campaign(epb::CampaignRequest {
            name: b"boss".to_vec(),
            lease: l2,
            value: b"bob".to_vec(),
        })
        .await
        .map(|r| r.into_inner())
    });
    until(Duration::from_secs(10), || async {
        let keys = get_prefix(&c.members[0].client, "boss/").await.ok()?;
        (keys.len() == 2).then_some(())
    })
    .await;
    assert!(!bob.is_finished());
    el.resign(epb::ResignRequest {
        leader: Some(lead.clone()),
    })
    .await
    .expect("resign");
    bob.await.expect("join").expect("bob campaign");
    let now = el
        .leader(epb::LeaderRequest {
            name: b"boss".to_vec(),
        })
        .await
        .expect("leader")
        .into_inner();
    assert_eq!(now.kv.map(|kv| kv.value), Some(b"bob".to_vec()));
    let next = observe.message().await.expect("observe").expect("event");
    assert_eq!(next.kv.map(|kv| kv.value), Some(b"bob".to_vec()));
    // The old leader can no longer proclaim.
    let err = el
        .proclaim(epb::ProclaimRequest {
            leader: Some(lead),
            value: b"stale".to_vec(),
        })
        .await
        .expect_err("stale proclaim");
    assert_eq!(err.message(), "election: not leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warden_lock_kills_the_command_when_the_lock_is_lost() {
    let c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    let eps = c.endpoints();
    let dir = tempfile::tempdir().expect("tempdir");
    let holder = Command::new(common::BIN)
        .args([
            "--endpoints",
            &eps,
            "lock",
            "doomed",
            "--owner",
            "victim",
            "--",
        ])
        .args(["sh", "-c", "echo $$ > pid; exec sleep 60"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn warden lock");
    let warden = |args: &[&str]| {
        Command::new(common::BIN)
            .args(["--endpoints", &eps])
            .args(args)
            .output()
            .expect("run warden")
    };
    // Find the holder's lease and revoke it, as an operator would.
    let lease = until(Duration::from_secs(20), || async {
        let out = warden(&["lock", "inspect", "doomed", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["locks"][0]["holders"][0]["lease"]
            .as_str()
            .map(String::from)
    })
    .await;
    until(Duration::from_secs(10), || async {
        dir.path().join("pid").exists().then_some(())
    })
    .await;
    let revoke = warden(&["lease", "revoke", &lease]);
    assert!(revoke.status.success(), "{revoke:?}");
    let out = holder.wait_with_output().expect("holder");
    assert!(
        !out.status.success(),
        "warden lock must fail when the lock is lost"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lost lock doomed"), "{err}");
    // The command was killed: its pid is gone.
    let pid = std::fs::read_to_string(dir.path().join("pid")).expect("pid");
    until(Duration::from_secs(10), || async {
        (!Path::new(&format!("/proc/{}", pid.trim())).exists()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_campaign_and_listen() {
    let c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    let eps = c.endpoints();
    let spawn = |args: &[&str]| {
        Killed(
            etcdctl_cmd(&eps)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn etcdctl elect"),
        )
    };
    let collect = |child: &mut Killed| {
        let stdout = child.0.stdout.take().expect("stdout");
        let sink = Arc::new(Mutex::new(Vec::<String>::new()));
        let s = sink.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(mut v) = s.lock() {
                    v.push(line);
                }
            }
        });
        sink
    };
    let lines = |s: &Arc<Mutex<Vec<String>>>| s.lock().map(|v| v.clone()).unwrap_or_default();
    let mut alice = spawn(&["elect", "chief", "alice"]);
    let alice_out = collect(&mut alice);
    // Alice wins and prints her leader key and proposal.
    let won = until(Duration::from_secs(20), || async {
        let l = lines(&alice_out);
        (l.len() >= 2).then_some(l)
    })
    .await;
    assert!(won[0].starts_with("chief/"), "{won:?}");
    assert_eq!(won[1], "alice");
    let mut bob = spawn(&["elect", "chief", "bob"]);
    let bob_out = collect(&mut bob);
    let mut listener = spawn(&["elect", "-l", "chief"]);
    let listen_out = collect(&mut listener);
    until(Duration::from_secs(20), || async {
        (lines(&listen_out).last().map(String::as_str) == Some("alice")).then_some(())
    })
    .await;
    // Bob is queued behind alice.
    until(Duration::from_secs(20), || async {
        let keys = get_prefix(&c.members[0].client, "chief/").await.ok()?;
        (keys.len() == 2).then_some(())
    })
    .await;
    assert!(lines(&bob_out).is_empty(), "bob won while alice leads");
    // Alice's etcdctl is killed without resigning. Her session lease (60 s
    // TTL by default) would keep her key until it expires; revoke it as an
    // operator would, and leadership passes to bob.
    drop(alice);
    let leases = ok_stdout(etcdctl(&eps, &["lease", "list"]), "lease list");
    let alice_key = won[0].clone();
    let alice_lease = alice_key.trim_start_matches("chief/").to_string();
    assert!(leases.contains(&alice_lease), "{leases}");
    ok_stdout(etcdctl(&eps, &["lease", "revoke", &alice_lease]), "revoke");
    let bob_won = until(Duration::from_secs(20), || async {
        let l = lines(&bob_out);
        (l.len() >= 2).then_some(l)
    })
    .await;
    assert_eq!(bob_won[1], "bob");
    until(Duration::from_secs(20), || async {
        (lines(&listen_out).last().map(String::as_str) == Some("bob")).then_some(())
    })
    .await;
}

/// A channel without the harness's 5 s call timeout, for `Lock` calls that
/// wait longer.
fn waiting_channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy()
}

/// A lease of `ttl` seconds granted at `addr`, asking again while the
/// member answers with an error (a loaded machine can cost a leader
/// change right after start-up; a lease granted twice only expires).
async fn grant_lease(addr: &str, ttl: i64) -> i64 {
    use warden_proto::etcdserverpb as pb;
    use warden_proto::etcdserverpb::lease_client::LeaseClient;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = LeaseClient::new(waiting_channel(addr))
            .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
            .await;
        match r {
            Ok(r) => return r.into_inner().id,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("lease grant at {addr}: {e}; asking again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("lease grant at {addr}: {e}"),
        }
    }
}

fn lock_client(
    addr: &str,
) -> warden_proto::v3lockpb::lock_client::LockClient<tonic::transport::Channel> {
    warden_proto::v3lockpb::lock_client::LockClient::new(waiting_channel(addr))
}

async fn v3lock(addr: &str, name: &str, lease: i64) -> Result<(Vec<u8>, i64), tonic::Status> {
    let r = lock_client(addr)
        .lock(warden_proto::v3lockpb::LockRequest {
            name: name.as_bytes().to_vec(),
            lease,
        })
        .await?
        .into_inner();
    Ok((r.key, r.header.map_or(0, |h| h.revision)))
}

async fn v3unlock(addr: &str, key: &[u8]) {
    lock_client(addr)
        .unlock(warden_proto::v3lockpb::UnlockRequest { key: key.to_vec() })
        .await
        .expect("unlock");
}

/// The create revision of `key` (linearizable), if it exists.
async fn create_revision(addr: &str, key: &[u8]) -> Option<i64> {
    use warden_proto::etcdserverpb as pb;
    let r = common::kv(addr)
        .await
        .range(pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner();
    r.kvs.first().map(|kv| kv.create_revision)
}

/// An uncontended `Lock` is answered by its create txn: the response's
/// revision is the one that created the key (ownership was decided when
/// that txn applied, not by a later read). A second `Lock` with the same
/// lease reuses the key, as etcd's recipe does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncontended_lock_is_decided_by_its_txn() {
    let c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    for (i, m) in c.members.iter().enumerate() {
        let ep = &m.client;
        let lease = grant_lease(ep, 30).await;
        let name = format!("solo{i}");
        let (key, rev) = v3lock(ep, &name, lease).await.expect("lock");
        assert_eq!(key, format!("{name}/{lease:x}").into_bytes());
        assert_eq!(create_revision(ep, &key).await, Some(rev));
        let (again, rev2) = v3lock(ep, &name, lease).await.expect("relock");
        assert_eq!(again, key);
        assert!(rev2 >= rev);
        v3unlock(ep, &key).await;
        assert_eq!(create_revision(ep, &key).await, None);
    }
}

/// A waiter whose lease expires while it waits fails as soon as its key is
/// gone, not when the holder releases; the holder keeps the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_fails_when_the_lease_expires_while_waiting() {
    let c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    let (a, b) = (&c.members[0].client, &c.members[2].client);
    let holder_lease = grant_lease(a, 60).await;
    let (held, _) = v3lock(a, "expiring", holder_lease).await.expect("lock");
    // Never kept alive: the key goes when the lease expires.
    let doomed = grant_lease(b, 2).await;
    let err = tokio::time::timeout(Duration::from_secs(30), v3lock(b, "expiring", doomed))
        .await
        .expect("the waiter must fail once its lease expired")
        .expect_err("the waiter's lease expired");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("session expired"), "{err:?}");
    // Only the holder's key is left, and it still owns the lock.
    let keys = get_prefix(a, "expiring/").await.expect("get");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].0.as_bytes(), held.as_slice());
    v3unlock(a, &held).await;
}

/// A waiter whose caller goes away (the call is cancelled) takes its key
/// away again, so it cannot become a holder nobody serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_waiter_key_is_deleted() {
    let c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    let (a, b) = (c.members[0].client.clone(), c.members[1].client.clone());
    let holder = grant_lease(&a, 60).await;
    let (held, _) = v3lock(&a, "abandon", holder).await.expect("lock");
    let waiter_lease = grant_lease(&b, 60).await;
    let b2 = b.clone();
    let waiter = tokio::spawn(async move { v3lock(&b2, "abandon", waiter_lease).await });
    until(Duration::from_secs(10), || async {
        let keys = get_prefix(&a, "abandon/").await.ok()?;
        (keys.len() == 2).then_some(())
    })
    .await;
    waiter.abort();
    // The guard deletes the waiter's key; the holder's stays.
    until(Duration::from_secs(10), || async {
        let keys = get_prefix(&a, "abandon/").await.ok()?;
        (keys.len() == 1 && keys[0].0.as_bytes() == held.as_slice()).then_some(())
    })
    .await;
    // A new waiter gets the lock at once when the holder unlocks.
    let next = tokio::spawn({
        let b = b.clone();
        async move { v3lock(&b, "abandon", waiter_lease).await }
    });
    until(Duration::from_secs(10), || async {
        let keys = get_prefix(&a, "abandon/").await.ok()?;
        (keys.len() == 2).then_some(())
    })
    .await;
    v3unlock(&a, &held).await;
    let (key, _) = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("hand-over")
        .expect("join")
        .expect("lock");
    assert_eq!(key, format!("abandon/{waiter_lease:x}").into_bytes());
    v3unlock(&b, &key).await;
}

/// `etcdctl lock` (etcd's client-side recipe) and the Lock service, called
/// on all three members, contend for one name: critical sections never
/// overlap, no increment is lost, the revisions handed out increase, and no
/// key is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_service_interoperates_with_etcdctl_lock() {
    let c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("counter"), "0").expect("counter");
    std::fs::write(dir.path().join("log"), "").expect("log");
    let rounds = 4u32;
    let recipes: Vec<Child> = (0..2)
        .map(|_| locker(&c.endpoints(), dir.path(), "mixed-lock", rounds))
        .collect();
    let services: Vec<_> = c
        .members
        .iter()
        .map(|m| {
            let ep = m.client.clone();
            let dir = dir.path().to_path_buf();
            tokio::spawn(async move {
                let lease = grant_lease(&ep, 30).await;
                for _ in 0..rounds {
                    let (key, rev) = v3lock(&ep, "mixed-lock", lease).await.expect("lock");
                    section(&dir, rev);
                    v3unlock(&ep, &key).await;
                }
            })
        })
        .collect();
    for s in services {
        tokio::time::timeout(Duration::from_secs(120), s)
            .await
            .expect("service lockers finish")
            .expect("join");
    }
    for l in recipes {
        let out = l.wait_with_output().expect("locker");
        assert!(
            out.status.success(),
            "locker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let total = (2 + c.members.len() as u32) * rounds;
    let count: u32 = std::fs::read_to_string(dir.path().join("counter"))
        .expect("counter")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(count, total, "lost increments");
    let log = std::fs::read_to_string(dir.path().join("log")).expect("log");
    assert_eq!(check_log(&log), total as usize);
    assert!(get_prefix(&c.members[0].client, "mixed-lock/")
        .await
        .expect("get")
        .is_empty());
}

/// The critical section `locker` runs, in this process: log the start,
/// increment the counter file non-atomically, log the end.
fn section(dir: &Path, rev: i64) {
    use std::io::Write;
    let append = |line: String| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("log"))
            .expect("log");
        f.write_all(line.as_bytes()).expect("append");
    };
    append(format!("start {rev}\n"));
    let n: u32 = std::fs::read_to_string(dir.join("counter"))
        .expect("counter")
        .trim()
        .parse()
        .expect("number");
    // Widens the window a second holder would have to overlap in.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(dir.join("counter"), format!("{}", n + 1)).expect("counter");
    append(format!("end {rev}\n"));
}

/// The same for a candidate: a `Campaign` whose lease expires while it
/// waits behind the leader fails, and the leader stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_fails_when_the_lease_expires_while_waiting() {
    use warden_proto::v3electionpb as epb;
    use warden_proto::v3electionpb::election_client::ElectionClient;
    let c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    let (a, b) = (&c.members[0].client, &c.members[1].client);
    let campaign = |ep: &str, lease: i64, value: &str| {
        let mut el = ElectionClient::new(waiting_channel(ep));
        let req = epb::CampaignRequest {
            name: b"chair".to_vec(),
            lease,
            value: value.as_bytes().to_vec(),
        };
        async move { el.campaign(req).await.map(|r| r.into_inner()) }
    };
    let alice = grant_lease(a, 60).await;
    let lead = campaign(a, alice, "alice").await.expect("campaign");
    let leader = lead.leader.expect("leader key");
    assert_eq!(lead.header.map(|h| h.revision), Some(leader.rev));
    let doomed = grant_lease(b, 2).await;
    let err = tokio::time::timeout(Duration::from_secs(30), campaign(b, doomed, "bob"))
        .await
        .expect("the candidate must fail once its lease expired")
        .expect_err("the candidate's lease expired");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("session expired"), "{err:?}");
    let keys = get_prefix(a, "chair/").await.expect("get");
    assert_eq!(
        keys,
        vec![(
            String::from_utf8_lossy(&leader.key).into_owned(),
            "alice".to_string()
        )]
    );
}
