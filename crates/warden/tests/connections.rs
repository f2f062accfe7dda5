//! A member's ports accept at most their share of the open-file limit
//! (`tls::max_connections`): idle connections past it wait in the kernel's
//! backlog instead of taking the descriptors the member needs for its own
//! files. Before the limit, 20 000 idle connections to the client port took
//! every descriptor, the accept loop spun a core, and the next snapshot
//! failed to create its file, which stopped the member.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, free_ports, put, Killed, BIN};

const ELECT: Duration = Duration::from_secs(20);

/// One RESP `SET` on a blocking connection; the reply's first line.
fn resp_set(conn: &mut std::net::TcpStream, key: &str, value: &str) -> String {
    let req = format!(
        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
        key.len(),
        value.len()
    );
    conn.write_all(req.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut b = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        assert_eq!(conn.read(&mut b).unwrap(), 1, "connection closed");
        reply.push(b[0]);
    }
    String::from_utf8_lossy(&reply).trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_take_the_members_files() {
    let ports = free_ports(3);
    let (client, peer, resp) = (ports[0], ports[1], ports[2]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    let log = std::fs::File::create(dir.path().join("n1.log")).unwrap();
    // 128 open files at most (soft and hard): 32 connections per client
    // port. A snapshot every 20 entries, so the member keeps making files.
    let mut member = Killed(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n 128 && exec {BIN} server --name n1 --data-dir {} \
             --client-addr 127.0.0.1:{client} --peer-addr 127.0.0.1:{peer} \
             --initial-cluster n1=127.0.0.1:{peer} --resp-addr 127.0.0.1:{resp} \
             --snapshot-entries 20",
                data.display()
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let ep = format!("127.0.0.1:{client}");
    eventually(ELECT, || {
        let ep = ep.clone();
        async move {
            put(&ep, "ready", "x")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;

    // Far more idle connections than the port takes, and nearly as many as
    // the process may have files (the rest wait in the listen backlog of
    // 128: more would not connect at all).
    let mut idle = Vec::new();
    for _ in 0..120 {
        idle.push(std::net::TcpStream::connect(("127.0.0.1", client)).unwrap());
    }
    // Writes through the RESP port go on, and with them snapshots.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", resp)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    for i in 0..120 {
        assert_eq!(
            resp_set(&mut conn, &format!("k{i}"), "v"),
            "+OK",
            "SET k{i}"
        );
    }
    assert!(
        member.0.try_wait().unwrap().is_none(),
        "the member stopped: {}",
        std::fs::read_to_string(dir.path().join("n1.log")).unwrap_or_default()
    );
    let snapshots = std::fs::read_dir(data.join("snap"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        })
        .count();
    assert!(snapshots > 0, "no snapshot was written");

    // The idle connections gone, the client port serves again.
    drop(idle);
    let deadline = Instant::now() + ELECT;
    while put(&ep, "after", "y").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the client port never served again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(member);
}
