//! TLS on both ports, with certificates made in the test by `warden certs`
//! (a real process): a 3-member cluster with client TLS and client
//! certificate authentication, and mutual TLS between members. The real
//! etcdctl 3.4 puts, gets, watches and locks through it; plaintext clients,
//! clients without a certificate or with one from another CA, and peers
//! with a certificate from another CA are refused; a client certificate
//! replaced on disk is served to the next connection without a restart.
//!
//! etcdctl must be installed (Debian package `etcd-client`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, BIN};
use warden_client::TlsOptions;
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::kv_client::KvClient;

const ELECT: Duration = Duration::from_secs(20);

struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// `warden certs DIR`: a CA, a member certificate, a client certificate.
    fn make(dir: &Path) -> Certs {
        let out = Command::new(BIN)
            .arg("certs")
            .arg(dir)
            .output()
            .expect("run warden certs");
        assert!(out.status.success(), "{out:?}");
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }

    fn client(&self) -> TlsOptions {
        TlsOptions {
            ca: Some(self.dir.join("ca.pem")),
            cert: Some(self.dir.join("client.pem")),
            key: Some(self.dir.join("client-key.pem")),
        }
    }
}

fn etcdctl() -> PathBuf {
    let p = PathBuf::from("/usr/bin/etcdctl");
    assert!(
        p.is_file(),
        "etcdctl not found at {}: this test needs the real etcdctl 3.4 (Debian package `etcd-client`)",
        p.display()
    );
    p
}

/// etcdctl over TLS with `certs`' CA and client certificate (`None`:
/// plaintext).
fn ctl(endpoint: &str, certs: Option<&Certs>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(etcdctl());
    cmd.env_clear()
        .env("ETCDCTL_API", "3")
        .arg("--command-timeout=3s")
        .arg("--dial-timeout=2s");
    match certs {
        Some(c) => {
            cmd.arg(format!("--endpoints=https://{endpoint}"))
                .arg(format!("--cacert={}", c.path("ca.pem")))
                .arg(format!("--cert={}", c.path("client.pem")))
                .arg(format!("--key={}", c.path("client-key.pem")));
        }
        None => {
            cmd.arg(format!("--endpoints=http://{endpoint}"));
        }
    }
    cmd.args(args).output().expect("run etcdctl")
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "etcdctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 3-member cluster with client TLS + client certificate authentication
/// and peer mTLS, all from `certs`. The client port uses its own copy of
/// the member certificate (so the test can replace it).
fn tls_cluster(certs: &Certs, client_dir: &Path) -> Cluster {
    std::fs::create_dir_all(client_dir).unwrap();
    for f in ["server.pem", "server-key.pem"] {
        std::fs::copy(certs.dir.join(f), client_dir.join(f)).unwrap();
    }
    let client_cert = client_dir.join("server.pem").display().to_string();
    let client_key = client_dir.join("server-key.pem").display().to_string();
    let ca = certs.path("ca.pem");
    let peer_cert = certs.path("server.pem");
    let peer_key = certs.path("server-key.pem");
    let mut c = Cluster::start_with(
        3,
        &[
            "--cert-file",
            &client_cert,
            "--key-file",
            &client_key,
            "--trusted-ca-file",
            &ca,
            "--client-cert-auth",
            "--peer-cert-file",
            &peer_cert,
            "--peer-key-file",
            &peer_key,
            "--peer-trusted-ca-file",
            &ca,
            "--peer-client-cert-auth",
        ],
    );
    c.tls = Some(certs.client());
    c
}

async fn get_value(ch: tonic::transport::Channel, key: &str) -> Result<Vec<u8>, tonic::Status> {
    let r = KvClient::new(ch)
        .range(pb::RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.kvs.first().map(|kv| kv.value.clone()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_over_tls_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::make(&tmp.path().join("ca1"));
    let other = Certs::make(&tmp.path().join("ca2"));
    let c = tls_cluster(&certs, &tmp.path().join("client-port"));
    let leader = c.wait_leader(ELECT).await;
    let ep = c.members[(leader + 1) % 3].client.clone();

    // The member list shows https URLs (client URLs once every member
    // published its own).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = ok(&ctl(&ep, Some(&certs), &["member", "list"]));
        if list.matches("https://").count() == 6 {
            break;
        }
        assert!(Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A watcher on a follower sees a put made through another member.
    let mut watch = Command::new(etcdctl())
        .env_clear()
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{ep}"))
        .arg(format!("--cacert={}", certs.path("ca.pem")))
        .arg(format!("--cert={}", certs.path("client.pem")))
        .arg(format!("--key={}", certs.path("client-key.pem")))
        .args(["watch", "tls/k"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl watch");
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if seen_tx.send(line).is_err() {
                return;
            }
        }
    });
    // Put until the watcher reports it (it may not be registered yet).
    let leader_ep = c.members[leader].client.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    'watching: loop {
        assert!(Instant::now() < deadline, "watch saw nothing: {lines:?}");
        ok(&ctl(&leader_ep, Some(&certs), &["put", "tls/k", "v1"]));
        while let Ok(l) = seen_rx.recv_timeout(Duration::from_millis(500)) {
            lines.push(l);
            if lines.iter().any(|l| l == "v1") {
                break 'watching;
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(
        ok(&ctl(&ep, Some(&certs), &["get", "tls/k"])),
        "tls/k\nv1\n"
    );

    // A lock through etcd's Lock API, held while a command runs.
    let out = ok(&ctl(
        &ep,
        Some(&certs),
        &["lock", "tls-lock", "/bin/echo", "held"],
    ));
    assert!(out.contains("held"), "{out}");

    // Refused: plaintext, no client certificate, a certificate from another
    // CA, a server CA that is not ours.
    let plain = ctl(&ep, None, &["get", "tls/k"]);
    assert!(!plain.status.success(), "plaintext client was served");
    let mut no_cert = Command::new(etcdctl());
    let no_cert = no_cert
        .env_clear()
        .env("ETCDCTL_API", "3")
        .args(["--command-timeout=3s", "--dial-timeout=2s"])
        .arg(format!("--endpoints=https://{ep}"))
        .arg(format!("--cacert={}", certs.path("ca.pem")))
        .args(["get", "tls/k"])
        .output()
        .unwrap();
    assert!(
        !no_cert.status.success(),
        "client without a certificate was served"
    );
    let foreign = Command::new(etcdctl())
        .env_clear()
        .env("ETCDCTL_API", "3")
        .args(["--command-timeout=3s", "--dial-timeout=2s"])
        .arg(format!("--endpoints=https://{ep}"))
        .arg(format!("--cacert={}", certs.path("ca.pem")))
        .arg(format!("--cert={}", other.path("client.pem")))
        .arg(format!("--key={}", other.path("client-key.pem")))
        .args(["get", "tls/k"])
        .output()
        .unwrap();
    assert!(
        !foreign.status.success(),
        "client certificate from another CA was served"
    );
    let wrong_ca = ctl(&ep, Some(&other), &["get", "tls/k"]);
    assert!(
        !wrong_ca.status.success(),
        "client trusting another CA connected"
    );

    // The peer port: a caller with a certificate from another CA, or none,
    // gets no answer; a member's certificate does.
    let peer = c.members[leader].peer.clone();
    let peer_call = |tls: TlsOptions| {
        let peer = peer.clone();
        async move {
            let ch = common::tls_channel(&peer, &tls);
            warden_proto::peer::raft_peer_client::RaftPeerClient::new(ch)
                .forward(warden_proto::peer::Blob { data: vec![] })
                .await
        }
    };
    let as_member = TlsOptions {
        ca: Some(certs.dir.join("ca.pem")),
        cert: Some(certs.dir.join("server.pem")),
        key: Some(certs.dir.join("server-key.pem")),
    };
    let foreign_peer = TlsOptions {
        ca: Some(certs.dir.join("ca.pem")),
        cert: Some(other.dir.join("server.pem")),
        key: Some(other.dir.join("server-key.pem")),
    };
    let anonymous = TlsOptions {
        ca: Some(certs.dir.join("ca.pem")),
        cert: None,
        key: None,
    };
    // A member's certificate reaches the service (which refuses the call
    // for want of a member identity: an answer from the service, not the
    // socket).
    let member_says = peer_call(as_member).await.expect_err("empty message");
    assert_eq!(
        member_says.code(),
        tonic::Code::PermissionDenied,
        "{member_says}"
    );
    // The others never reach it: the handshake fails or, in TLS 1.3, the
    // member closes the connection once it has seen the certificate.
    for (who, tls) in [("foreign", foreign_peer), ("anonymous", anonymous)] {
        let e = peer_call(tls).await.expect_err("refused");
        // A transport failure (it has a source), not the service's answer.
        assert!(
            e.code() != tonic::Code::PermissionDenied && std::error::Error::source(&e).is_some(),
            "{who} reached the peer service: {e:?}"
        );
    }

    // Every member holds the same data, replicated over mutual TLS.
    let channels: Vec<_> = (0..3).map(|i| c.channel(i)).collect();
    common::eventually(ELECT, || {
        let channels = channels.clone();
        async move {
            let mut seen = Vec::new();
            for ch in channels {
                let r = warden_proto::etcdserverpb::maintenance_client::MaintenanceClient::new(ch)
                    .hash_kv(pb::HashKvRequest { revision: 0 })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                seen.push((r.hash, r.header.map_or(0, |h| h.revision)));
            }
            if seen.windows(2).all(|w| w[0] == w[1]) {
                Ok(())
            } else {
                Err(format!("members differ: {seen:?}"))
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_serves_new_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::make(&tmp.path().join("ca1"));
    let next = Certs::make(&tmp.path().join("ca2"));
    let client_port = tmp.path().join("client-port");
    let c = tls_cluster(&certs, &client_port);
    let leader = c.wait_leader(ELECT).await;
    let ep = c.members[leader].client.clone();
    ok(&ctl(&ep, Some(&certs), &["put", "rot", "before"]));

    // A client that trusts only the next CA cannot connect yet.
    let trusts_next = TlsOptions {
        ca: Some(next.dir.join("ca.pem")),
        cert: Some(certs.dir.join("client.pem")),
        key: Some(certs.dir.join("client-key.pem")),
    };
    let e = get_value(common::tls_channel(&ep, &trusts_next), "rot")
        .await
        .expect_err("server certificate from the old CA");
    assert!(e.to_string().contains("certificate"), "{e}");

    // Replace the client port's certificate (key first, as a careless
    // rotation might: the member keeps serving the old pair until both
    // match, and reloads once they do).
    std::fs::copy(
        next.dir.join("server-key.pem"),
        client_port.join("server-key.pem"),
    )
    .unwrap();
    std::fs::copy(next.dir.join("server.pem"), client_port.join("server.pem")).unwrap();
    let got = warden_testkit::poll::until(Duration::from_secs(10), || {
        let ch = common::tls_channel(&ep, &trusts_next);
        async move { get_value(ch, "rot").await.map_err(|e| e.to_string()) }
    })
    .await;
    assert_eq!(got.as_deref(), Ok(&b"before"[..]), "{}", c.log(leader));
    // Peers were not touched: the cluster still replicates.
    ok(&ctl(
        &ep,
        Some(&next_client(&certs, &next)),
        &["put", "rot", "after"],
    ));
    // Every member uses the replaced files for its client port.
    let follower = common::tls_channel(&c.members[(leader + 1) % 3].client, &trusts_next);
    let v = common::eventually(Duration::from_secs(10), || {
        let ch = follower.clone();
        async move {
            match get_value(ch, "rot").await {
                Ok(v) if v == b"after" => Ok(v),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert_eq!(v, b"after");
}

/// Files for etcdctl after the rotation: the next CA for the server, and
/// the original client certificate (client certificates still chain to the
/// original CA, which the member keeps trusting).
fn next_client(certs: &Certs, next: &Certs) -> Certs {
    let dir = certs.dir.parent().unwrap().join("mixed");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(next.dir.join("ca.pem"), dir.join("ca.pem")).unwrap();
    std::fs::copy(certs.dir.join("client.pem"), dir.join("client.pem")).unwrap();
    std::fs::copy(certs.dir.join("client-key.pem"), dir.join("client-key.pem")).unwrap();
    Certs { dir }
}

/// With `--client-cert-auth` and auth on, a request without a token is
/// made as the user named by the client certificate's common name (etcd's
/// rule); a token, when sent, names the user instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_common_name_is_the_user() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::make(&tmp.path().join("ca"));
    let c = tls_cluster(&certs, &tmp.path().join("client-port"));
    c.wait_leader(Duration::from_secs(20)).await;
    let ep = c.members[0].client.clone();
    let err = |o: &std::process::Output| {
        assert!(
            !o.status.success(),
            "succeeded: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .rfind(|l| l.starts_with("Error:"))
            .unwrap_or_default()
            .to_owned()
    };
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "reader"],
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "app/",
            "--prefix=true",
        ],
        // `warden certs` names its client certificate "warden client".
        &["user", "add", "warden client:unused"],
        &["user", "grant-role", "warden client", "reader"],
        &["put", "app/x", "1"],
        &["auth", "enable"],
    ] {
        ok(&ctl(&ep, Some(&certs), args));
    }
    // No --user: the certificate's CN, a reader of app/.
    assert_eq!(
        ok(&ctl(
            &ep,
            Some(&certs),
            &["get", "app/x", "--print-value-only"]
        ))
        .trim(),
        "1"
    );
    assert_eq!(
        err(&ctl(&ep, Some(&certs), &["put", "app/x", "2"])),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        err(&ctl(&ep, Some(&certs), &["member", "remove", "1234"])),
        "Error: etcdserver: permission denied"
    );
    // With --user the token names the user: root may write.
    ok(&ctl(
        &ep,
        Some(&certs),
        &["--user=root:rootpw", "put", "app/x", "2"],
    ));
    assert_eq!(
        ok(&ctl(
            &ep,
            Some(&certs),
            &["get", "app/x", "--print-value-only"]
        ))
        .trim(),
        "2"
    );
}
