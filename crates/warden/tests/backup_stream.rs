//! Backups (`Maintenance.Snapshot`) are streamed as the client reads them,
//! so slow clients cost a member a few chunks each, not a copy of the
//! database each; and at most two stream at once per member.
//!
//! A 1-member cluster gets 40 MiB of values. Four backup streams are
//! opened over raw gRPC: two are served, read one chunk and stall; the
//! other two are refused with `ResourceExhausted`. While the two stall, the
//! member's resident memory (VmRSS) must grow by less than `2 x PER_STREAM`
//! (16 MiB, 0.4 x the database): holding each backup in memory, as warden
//! did before, costs at least twice the database size (80 MiB) for two
//! streams. The figures are printed (`--nocapture`). Then one stream is read to the end and the backup
//! verified (frame, CRC, SHA-256 trailer, and a restore).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::time::Duration;

use common::Cluster;
use tonic::transport::Channel;
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::maintenance_client::MaintenanceClient;

const ELECT: Duration = Duration::from_secs(20);
const VALUES: usize = 80;
const VALUE_LEN: usize = 512 * 1024;
const DB: u64 = (VALUES * VALUE_LEN) as u64;
/// What one stalled stream may hold: the server's 1 MiB chunks, about 4 in
/// flight (2 queued, 1 being encoded, 1 in the gRPC/HTTP/2 send buffers),
/// doubled for allocator slack. Far below the database size.
const PER_STREAM: u64 = 8 << 20;

/// VmRSS of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb * 1024
}

/// A client on its own connection, with no deadline (a stalled stream must
/// stay open).
async fn maintenance(addr: &str) -> MaintenanceClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect");
    MaintenanceClient::new(ch).max_decoding_message_size(8 << 20)
}

async fn open(addr: &str) -> Result<tonic::Streaming<pb::SnapshotResponse>, tonic::Status> {
    maintenance(addr)
        .await
        .snapshot(pb::SnapshotRequest {})
        .await
        .map(|r| r.into_inner())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_streams_hold_chunks_not_the_database() {
    let c = Cluster::start(1);
    c.wait_leader(ELECT).await;
    let ep = c.members[0].client.clone();
    let pid = c.members[0].child.as_ref().expect("running").id();

    let mut kv = common::kv(&ep).await;
    for i in 0..VALUES {
        let value: Vec<u8> = (0..VALUE_LEN).map(|j| ((i * 31 + j) % 251) as u8).collect();
        kv.put(pb::PutRequest {
            key: format!("big/{i:03}").into_bytes(),
            value,
            ..Default::default()
        })
        .await
        .expect("put");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(pid);

    // Two streams are served; each reads one chunk, then stalls.
    let mut served = Vec::new();
    for _ in 0..2 {
        let mut s = open(&ep).await.expect("first two backups are served");
        let first = s.message().await.expect("first chunk").expect("a chunk");
        assert!(!first.blob.is_empty());
        assert!(
            first.remaining_bytes + first.blob.len() as u64 > DB,
            "the whole size is announced"
        );
        served.push((s, first));
    }
    // The third and fourth are refused while they stall.
    for n in 3..=4 {
        let err = match open(&ep).await {
            Err(e) => e,
            Ok(mut s) => s.message().await.expect_err("refused"),
        };
        assert_eq!(
            err.code(),
            tonic::Code::ResourceExhausted,
            "caller {n}: {err:?}"
        );
        assert!(
            err.message().contains("already streaming 2 backups"),
            "{err:?}"
        );
    }
    // Let the encoders run ahead as far as they can, then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled = rss(pid);
    let grown = stalled.saturating_sub(before);
    eprintln!(
        "database {:.1} MiB; member RSS {:.1} MiB before, {:.1} MiB with two stalled backup \
         streams: grew {:.1} MiB",
        mib(DB),
        mib(before),
        mib(stalled),
        mib(grown)
    );
    assert!(
        grown < 2 * PER_STREAM,
        "two stalled backup streams grew the member by {:.1} MiB, more than {:.1} MiB ({:.1} MiB \
         database)",
        mib(grown),
        mib(2 * PER_STREAM),
        mib(DB)
    );

    // Finish one stream; the backup is whole and verifies.
    let (mut s, first) = served.remove(0);
    let total = first.blob.len() as u64 + first.remaining_bytes;
    let mut bytes = first.blob;
    let mut remaining = first.remaining_bytes;
    while let Some(m) = s.message().await.expect("chunk") {
        assert_eq!(m.remaining_bytes + m.blob.len() as u64, remaining);
        remaining = m.remaining_bytes;
        bytes.extend_from_slice(&m.blob);
    }
    assert_eq!(remaining, 0);
    assert_eq!(bytes.len() as u64, total);
    drop(s);
    let dir = tempfile::tempdir().expect("tempdir");
    let backup = dir.path().join("backup.db");
    std::fs::write(&backup, &bytes).expect("write backup");
    // Frame, CRC32 and etcd's SHA-256 trailer.
    assert!(total > DB);
    let (_meta, data) = warden_server::node::state_machine::load_backup(&backup)
        .expect("the streamed backup verifies");
    let kv_rev = common::status(&ep)
        .await
        .expect("status")
        .header
        .map_or(0, |h| h.revision);
    assert_eq!(data.kv.revision(), kv_rev);
    let restored = dir.path().join("restored");
    let out = std::process::Command::new(common::BIN)
        .args(["--endpoints", &ep])
        .args([
            "snapshot",
            "restore",
            backup.to_str().expect("path"),
            "--data-dir",
            restored.to_str().expect("path"),
            "--name",
            "n1",
            "--initial-cluster",
            "n1=127.0.0.1:1",
        ])
        .output()
        .expect("run warden");
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("({VALUES} keys)")), "{said}");

    // A finished stream frees its place: a new caller is served.
    let mut again = open(&ep).await.expect("served after one finished");
    again.message().await.expect("chunk").expect("a chunk");
}
