//! Auth through the real `etcdctl` 3.4: users, roles, key-range
//! permissions, and who may do what. One script runs against a 3-member
//! warden cluster and against a real single-member etcd 3.4; every step's
//! success and output (or error line) must match. Then, on warden only:
//! permissions survive a leader kill and a restart of every member (from
//! the log and from snapshots), tokens end with a password change, and a
//! client address that keeps guessing passwords is braked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::etcd::{clean_env, require_etcdctl, wait_healthy, Etcd, Out, UP};
use common::Cluster;

const ELECT: Duration = Duration::from_secs(20);

/// etcdctl with a hard limit (a watch that is never cancelled would
/// otherwise run forever): killed after 10 s.
fn ctl(bin: &Path, endpoints: &str, args: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = Command::new("timeout");
    clean_env(&mut cmd)
        .arg("10")
        .arg(bin)
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=2s", "--command-timeout=8s"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn etcdctl");
    if let Some(data) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(data.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait for etcdctl");
    let stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("{\"level\":") && !l.contains("snapshot/v3_snapshot.go"))
        .collect::<Vec<_>>()
        .join("\n");
    Out {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}

/// One step of the script: who runs it (`None`: no credentials) and the
/// etcdctl arguments.
struct Step {
    user: Option<&'static str>,
    args: Vec<String>,
    /// What etcd must answer: success, and a line its output contains.
    expect_ok: bool,
    expect: &'static str,
}

fn step(user: Option<&'static str>, args: &str, expect_ok: bool, expect: &'static str) -> Step {
    Step {
        user,
        args: args.split_whitespace().map(str::to_owned).collect(),
        expect_ok,
        expect,
    }
}

const ROOT: Option<&str> = Some("root:rootpw");
const ALICE: Option<&str> = Some("alice:alicepw");

/// The script, as etcd answers it.
fn script(snapshot_path: &str) -> Vec<Step> {
    let denied = "etcdserver: permission denied";
    vec![
        step(None, "user add root:rootpw", true, "User root created"),
        step(None, "role add root", true, "Role root created"),
        step(
            None,
            "user grant-role root root",
            true,
            "Role root is granted to user root",
        ),
        step(None, "auth enable", true, "Authentication Enabled"),
        // Without credentials nothing goes.
        step(None, "put a 1", false, "etcdserver: user name is empty"),
        step(None, "get a", false, "etcdserver: user name is empty"),
        step(ROOT, "put a 1", true, "OK"),
        step(ROOT, "get a", true, "1"),
        step(
            Some("root:wrong"),
            "get a",
            false,
            "etcdserver: authentication failed, invalid user ID or password",
        ),
        step(
            Some("nobody:pw"),
            "get a",
            false,
            "etcdserver: authentication failed, invalid user ID or password",
        ),
        // A role that reads app/ only.
        step(ROOT, "role add app", true, "Role app created"),
        step(
            ROOT,
            "role grant-permission app read app/ --prefix=true",
            true,
            "Role app updated",
        ),
        step(ROOT, "user add alice:alicepw", true, "User alice created"),
        step(
            ROOT,
            "user grant-role alice app",
            true,
            "Role app is granted to user alice",
        ),
        step(ROOT, "put app/x 5", true, "OK"),
        step(ROOT, "put secret/y 6", true, "OK"),
        step(ALICE, "get app/x", true, "5"),
        step(ALICE, "get app/ --prefix", true, "app/x"),
        step(ALICE, "put app/x 7", false, denied),
        step(ALICE, "del app/x", false, denied),
        step(ALICE, "get secret/y", false, denied),
        step(ALICE, "get app/ --from-key", false, denied),
        step(
            ALICE,
            "watch secret/y",
            false,
            "Error: watch is canceled by the server",
        ),
        step(ALICE, "member remove 1234", false, denied),
        step(ALICE, "user list", false, denied),
        step(ALICE, "role list", false, denied),
        step(ALICE, "user add mallory:pw", false, denied),
        step(ALICE, "user get alice", true, "Roles: app"),
        step(ALICE, "user get root", false, denied),
        step(ALICE, "role get app", true, "[app/, app0) (prefix app/)"),
        step(ALICE, "auth disable", false, denied),
        step(ALICE, "alarm list", true, ""),
        // With no alarm raised etcdctl only lists (disarm is sent per alarm).
        step(ALICE, "alarm disarm", true, ""),
        step(ALICE, "lease grant 60", true, "granted with TTL(60s)"),
        // A txn needs permission for every key it touches, in both branches.
        step(ALICE, "txn", false, denied),
        // Root may do everything; errors of the management calls.
        step(ROOT, "user list", true, "alice"),
        step(ROOT, "role list", true, "app"),
        step(
            ROOT,
            "user add alice:x",
            false,
            "etcdserver: user name already exists",
        ),
        step(
            ROOT,
            "role add app",
            false,
            "etcdserver: role name already exists",
        ),
        step(
            ROOT,
            "user grant-role alice nope",
            false,
            "etcdserver: role name not found",
        ),
        step(
            ROOT,
            "user revoke-role alice nope",
            false,
            "etcdserver: role is not granted to the user",
        ),
        step(
            ROOT,
            "user delete nobody",
            false,
            "etcdserver: user name not found",
        ),
        step(
            ROOT,
            "role revoke-permission app nokey",
            false,
            "etcdserver: permission is not granted to the role",
        ),
        step(
            ROOT,
            "user delete root",
            false,
            "etcdserver: invalid auth management",
        ),
        // Write on app/w/ too, then revoke read on app/.
        step(
            ROOT,
            "role grant-permission app write app/w/ --prefix=true",
            true,
            "Role app updated",
        ),
        step(ALICE, "put app/w/1 x", true, "OK"),
        step(ALICE, "put app/x 7", false, denied),
        step(
            ROOT,
            "role revoke-permission app app/ --prefix=true",
            true,
            "is revoked from role app",
        ),
        step(ALICE, "get app/x", false, denied),
        step(
            ALICE,
            &format!("snapshot save {snapshot_path}"),
            false,
            "auth: permission denied",
        ),
        step(ROOT, "auth disable", true, "Authentication Disabled"),
        step(None, "get app/x", true, "5"),
    ]
}

/// What a run of one step printed, for comparing etcd with warden: the
/// outcome and the last line of stdout (success) or the error line.
fn outcome(o: &Out) -> (bool, String) {
    let line = if o.success {
        o.stdout.trim_end().to_owned()
    } else {
        // A cancelled watch says why on stdout.
        format!("{} | {}", o.stdout.trim_end(), o.err_line())
    };
    (o.success, line)
}

fn run_script(bin: &Path, endpoints: &str, dir: &Path) -> Vec<((bool, String), Out)> {
    let snap = dir.join("snap.db");
    let mut results = Vec::new();
    for s in script(&snap.display().to_string()) {
        let mut args: Vec<String> = Vec::new();
        if let Some(u) = s.user {
            args.push(format!("--user={u}"));
        }
        args.extend(s.args.iter().cloned());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        // The txn step reads its compares and ops from stdin.
        let stdin = (s.args[0] == "txn")
            .then_some("value(\"app/x\") = \"5\"\n\nput app/w/2 y\n\nget secret/y\n\n");
        let mut argv = argv;
        if s.args[0] == "txn" {
            argv.push("--interactive=false");
        }
        // A snapshot is taken from one member.
        let eps = if s.args[0] == "snapshot" {
            endpoints.split(',').next().unwrap_or(endpoints)
        } else {
            endpoints
        };
        let o = ctl(bin, eps, &argv, stdin);
        results.push((outcome(&o), o));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_script_matches_real_etcd() {
    let bin = require_etcdctl();
    let mut etcd = Etcd::spawn();
    let cluster = Cluster::start(3);
    cluster.wait_leader(ELECT).await;
    etcd.wait_up(&bin);
    wait_healthy(&bin, &cluster.endpoints(), UP, || Ok(()));
    let tmp = tempfile::tempdir().unwrap();

    let want = run_script(&bin, &etcd.client, tmp.path());
    let got = run_script(&bin, &cluster.endpoints(), tmp.path());
    let steps = script("");
    let mut diffs = Vec::new();
    for (i, (s, ((w, wout), (g, gout)))) in steps.iter().zip(want.iter().zip(&got)).enumerate() {
        let what = format!("step {i}: {:?} etcdctl {}", s.user, s.args.join(" "));
        // The script itself is checked against etcd first.
        assert_eq!(
            w.0, s.expect_ok,
            "{what}: etcd's outcome is not what the script expects:\n{wout:?}"
        );
        assert!(
            w.1.contains(s.expect) || wout.stdout.contains(s.expect),
            "{what}: etcd printed {:?}, the script expects {:?}",
            w.1,
            s.expect
        );
        // Failures must match to the letter (clients match on the error
        // text); successes must print what the script expects (lease ids
        // and revisions differ between the two).
        let same = w.0 == g.0
            && if w.0 {
                g.1.contains(s.expect) || gout.stdout.contains(s.expect)
            } else {
                w.1 == g.1
            };
        if !same {
            diffs.push(format!(
                "{what}\n  etcd:   {w:?}\n  warden: {g:?}\n  warden stderr: {}",
                gout.stderr
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "warden differs from etcd:\n{}",
        diffs.join("\n")
    );
}

/// Turns auth on the way an operator does: `root` user and role, then
/// `auth enable`.
fn enable_auth(bin: &Path, eps: &str) {
    for a in [
        "user add root:rootpw",
        "role add root",
        "user grant-role root root",
        "auth enable",
    ] {
        ok(bin, eps, None, a);
    }
}

/// etcdctl as `user` (none: no credentials) with whitespace-separated
/// `args`, no stdin.
fn as_user(bin: &Path, endpoints: &str, user: Option<&str>, args: &str) -> Out {
    let mut argv: Vec<String> = user.map(|u| format!("--user={u}")).into_iter().collect();
    argv.extend(args.split_whitespace().map(str::to_owned));
    let a: Vec<&str> = argv.iter().map(String::as_str).collect();
    ctl(bin, endpoints, &a, None)
}

/// Runs etcdctl against warden and asserts it succeeded; returns stdout.
fn ok(bin: &Path, endpoints: &str, user: Option<&str>, args: &str) -> String {
    let o = as_user(bin, endpoints, user, args);
    assert!(o.success, "etcdctl {args} as {user:?} failed: {}", o.stderr);
    o.stdout
}

/// Runs etcdctl and returns its error line (panics if it succeeded).
fn fails(bin: &Path, endpoints: &str, user: Option<&str>, args: &str) -> String {
    let o = as_user(bin, endpoints, user, args);
    assert!(
        !o.success,
        "etcdctl {args} as {user:?} succeeded: {}",
        o.stdout
    );
    o.err_line().to_owned()
}

/// Polls `f` until it returns true; panics after `timeout`.
fn poll(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The permissions of `alice` as seen through member `ep`.
fn alice_sees(bin: &Path, ep: &str) {
    assert_eq!(
        ok(bin, ep, ALICE, "get app/x --print-value-only").trim(),
        "5"
    );
    assert_eq!(
        fails(bin, ep, ALICE, "put app/x 7"),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        fails(bin, ep, ALICE, "get secret/y"),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        fails(bin, ep, None, "get app/x"),
        "Error: etcdserver: user name is empty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permissions_survive_leader_kill_restarts_and_snapshots() {
    let bin = require_etcdctl();
    // Snapshots every few entries: restarted members load auth from them.
    let mut cluster = Cluster::start_with(3, &["--snapshot-entries", "5"]);
    let leader = cluster.wait_leader(ELECT).await;
    let eps = cluster.endpoints();
    enable_auth(&bin, &eps);
    for a in [
        "role add app",
        "role grant-permission app read app/ --prefix=true",
        "user add alice:alicepw",
        "user grant-role alice app",
        "put app/x 5",
        "put secret/y 6",
    ] {
        ok(&bin, &eps, ROOT, a);
    }
    alice_sees(&bin, &eps);

    // Leader killed: the others keep the same rules.
    cluster.kill(leader);
    let new_leader = cluster.wait_leader(ELECT).await;
    assert_ne!(new_leader, leader);
    let ep = cluster.members[new_leader].client.clone();
    alice_sees(&bin, &ep);
    // More entries while it is down, so it catches up by snapshot.
    for i in 0..12 {
        ok(&bin, &ep, ROOT, &format!("put fill/{i} v"));
    }
    cluster.restart(leader);
    let back = cluster.members[leader].client.clone();
    poll(ELECT, "the restarted member serves alice's reads", || {
        ctl(&bin, &back, &["--user=alice:alicepw", "get", "app/x"], None).success
    });
    alice_sees(&bin, &back);

    // Every member down and up again: auth is still on, from disk.
    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.wait_leader(ELECT).await;
    let eps = cluster.endpoints();
    poll(ELECT, "the restarted cluster answers root", || {
        ctl(&bin, &eps, &["--user=root:rootpw", "get", "a"], None).success
    });
    for m in &cluster.members {
        alice_sees(&bin, &m.client);
    }
    // Compaction is an admin call on warden (etcd lets any user compact).
    assert_eq!(
        fails(&bin, &eps, ALICE, "compaction 2"),
        "Error: etcdserver: permission denied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_change_ends_old_tokens_and_guessing_is_braked() {
    use warden_proto::etcdserverpb as pb;
    use warden_proto::etcdserverpb::auth_client::AuthClient;
    use warden_proto::etcdserverpb::kv_client::KvClient;

    let bin = require_etcdctl();
    let cluster = Cluster::start(1);
    cluster.wait_leader(ELECT).await;
    let eps = cluster.endpoints();
    enable_auth(&bin, &eps);
    let ch = cluster.channel(0);
    let mut auth = AuthClient::new(ch.clone());
    let token = auth
        .authenticate(pb::AuthenticateRequest {
            name: "root".into(),
            password: "rootpw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let with_token = |t: &str| {
        let mut r = tonic::Request::new(pb::RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        });
        r.metadata_mut().insert("token", t.parse().unwrap());
        r
    };
    let mut kv = KvClient::new(ch.clone());
    kv.range(with_token(&token)).await.unwrap();
    // A forged or altered token is refused as etcd refuses a bad one.
    let forged = token.replacen('.', ".9", 1);
    let e = kv.range(with_token(&forged)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(e.message(), "etcdserver: invalid auth token");

    // A password change ends the tokens issued before it.
    let o = ctl(
        &bin,
        &eps,
        &[
            "--user=root:rootpw",
            "user",
            "passwd",
            "root",
            "--interactive=false",
        ],
        Some("newpw\n"),
    );
    assert!(o.success, "passwd: {}", o.stderr);
    let e = kv.range(with_token(&token)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    ok(&bin, &eps, Some("root:newpw"), "get a");

    // Guessing: after a few failures this address is refused without a
    // password check; the right password too, until the window passes.
    let mut braked = None;
    for i in 0..20 {
        let e = auth
            .authenticate(pb::AuthenticateRequest {
                name: "root".into(),
                password: format!("guess{i}"),
            })
            .await
            .unwrap_err();
        if e.code() == tonic::Code::ResourceExhausted {
            braked = Some(i);
            break;
        }
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }
    let braked = braked.expect("20 wrong passwords in a row were never braked");
    assert!(braked >= 3, "braked after {braked} failures: too eager");
    let e = auth
        .authenticate(pb::AuthenticateRequest {
            name: "root".into(),
            password: "newpw".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
}

/// bcrypt reads at most 72 bytes of a password: a longer one is refused
/// when set (as Go's bcrypt, and so etcd, refuses it), so no stored
/// password is one whose end was cut off and never checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passwords_past_bcrypts_72_bytes_are_refused_not_cut() {
    use warden_proto::etcdserverpb as pb;
    use warden_proto::etcdserverpb::auth_client::AuthClient;

    let bin = require_etcdctl();
    let cluster = Cluster::start(1);
    cluster.wait_leader(ELECT).await;
    let eps = cluster.endpoints();
    enable_auth(&bin, &eps);
    let passwd = |pw: String| {
        ctl(
            &bin,
            &eps,
            &[
                "--user=root:rootpw",
                "user",
                "passwd",
                "root",
                "--interactive=false",
            ],
            Some(&format!("{pw}\n")),
        )
    };
    let o = passwd("A".repeat(73));
    assert!(
        !o.success && o.stderr.contains("at most 72"),
        "{}",
        o.stderr
    );
    let mut auth = AuthClient::new(cluster.channel(0));
    // The refused password was not stored (cut or whole): the old one holds.
    for pw in ["A".repeat(73), "A".repeat(72)] {
        let e = auth
            .authenticate(pb::AuthenticateRequest {
                name: "root".into(),
                password: pw,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }
    let exact = "A".repeat(72);
    let o = passwd(exact.clone());
    assert!(o.success, "passwd: {}", o.stderr);
    auth.authenticate(pb::AuthenticateRequest {
        name: "root".into(),
        password: exact,
    })
    .await
    .expect("the 72-byte password itself");
}

/// The Rust client (and the `warden` CLI built on it) authenticates by
/// itself, and again when its token expires, for calls and for streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rust_client_and_cli_authenticate_and_renew_expired_tokens() {
    use warden_client::{Client, ClientOptions, Credentials, GetOptions, PutOptions};

    let bin = require_etcdctl();
    // Tokens live one second: the client outlives several.
    let cluster = Cluster::start_with(3, &["--auth-token-ttl", "1", "--bcrypt-cost", "4"]);
    cluster.wait_leader(ELECT).await;
    let eps = cluster.endpoints();
    enable_auth(&bin, &eps);
    for a in [
        "role add app",
        "role grant-permission app readwrite app/ --prefix=true",
        "user add alice:alicepw",
        "user grant-role alice app",
    ] {
        ok(&bin, &eps, ROOT, a);
    }
    let opts = |user: &str, password: &str| ClientOptions {
        credentials: Some(Credentials {
            user: user.into(),
            password: password.into(),
        }),
        ..ClientOptions::default()
    };
    let endpoints: Vec<String> = eps.split(',').map(str::to_owned).collect();
    let alice = Client::connect(&endpoints, opts("alice", "alicepw"))
        .await
        .unwrap();
    alice
        .put("app/x", "1", PutOptions::default())
        .await
        .unwrap();
    let e = alice
        .put("secret", "1", PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert_eq!(e.message(), "etcdserver: permission denied");

    // Wait until the token alice's client holds has expired (the server
    // refuses a token issued as long ago), then use the client again.
    let mut raw = warden_proto::etcdserverpb::auth_client::AuthClient::new(cluster.channel(0));
    let old = raw
        .authenticate(warden_proto::etcdserverpb::AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let kv = warden_proto::etcdserverpb::kv_client::KvClient::new(cluster.channel(0));
    common::eventually(Duration::from_secs(10), || {
        let mut kv = kv.clone();
        let old = old.clone();
        async move {
            let mut r = tonic::Request::new(warden_proto::etcdserverpb::RangeRequest {
                key: b"app/x".to_vec(),
                ..Default::default()
            });
            r.metadata_mut()
                .insert("token", old.parse().map_err(|_| "token".to_owned())?);
            match kv.range(r).await {
                Err(s) if s.code() == tonic::Code::Unauthenticated => Ok(()),
                other => Err(format!("the old token still works: {other:?}")),
            }
        }
    })
    .await;
    let got = alice.get("app/x", GetOptions::default()).await.unwrap();
    assert_eq!(got.kvs[0].value, b"1", "the client renewed its token");
    alice
        .put("app/x", "2", PutOptions::default())
        .await
        .unwrap();

    // A wrong password is the server's answer, not retried into a timeout.
    let wrong = Client::connect(&endpoints, opts("alice", "nope"))
        .await
        .unwrap();
    let e = wrong.get("app/x", GetOptions::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert_eq!(
        e.message(),
        "etcdserver: authentication failed, invalid user ID or password"
    );

    // The CLI: --user for calls and for a watch stream.
    let warden = env!("CARGO_BIN_EXE_warden");
    let cli = |args: &[&str]| {
        Command::new(warden)
            .arg(format!("--endpoints={eps}"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run warden")
    };
    let o = cli(&["get", "app/x"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("etcdserver: user name is empty"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = cli(&[
        "--user",
        "alice:alicepw",
        "get",
        "app/x",
        "--print-value-only",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "2");
    let o = cli(&["--user", "alice:alicepw", "watch", "secret"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A watch the role allows sees a put made after it started.
    let mut watch = Command::new(warden)
        .arg(format!("--endpoints={eps}"))
        .args(["--user", "alice:alicepw", "watch", "app/w"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Put until the watcher prints it (it may not be subscribed yet).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        alice
            .put("app/w", "seen", PutOptions::default())
            .await
            .unwrap();
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            if line == "seen" {
                seen = true;
                break;
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(seen, "the authenticated watch never printed the put");
}

/// A linearizable read is checked against the auth state *after* its read
/// barrier, as etcd does: a member that was paused while auth was enabled,
/// and is read at the moment it resumes (before it applied `AuthEnable`),
/// refuses a read without a token instead of answering from its old state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_read_on_a_lagging_member_is_checked_after_its_barrier() {
    let bin = require_etcdctl();
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader(ELECT).await;
    let lag = (leader + 1) % 3;
    let leader_ep = cluster.members[leader].client.clone();
    let lag_ep = cluster.members[lag].client.clone();
    ok(&bin, &leader_ep, None, "put secret v");
    // The lagging member has the key (so a read there could answer it).
    poll(ELECT, "the key reached the lagging member", || {
        ctl(&bin, &lag_ep, &["get", "secret", "--consistency=s"], None)
            .stdout
            .contains("secret")
    });
    let pid = cluster.members[lag]
        .child
        .as_ref()
        .expect("running")
        .id()
        .to_string();
    let signal = |sig: &str| {
        let st = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(st.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    enable_auth(&bin, &leader_ep);
    signal("-CONT");
    // At once, without a token: linearizable.
    let read = common::get(&lag_ep, "secret", false).await;
    let Err(status) = read else {
        panic!("a read without a token was answered after auth enable: {read:?}");
    };
    assert!(
        status.message().contains("user name is empty")
            || status.message().contains("permission denied"),
        "{status:?}"
    );
}
