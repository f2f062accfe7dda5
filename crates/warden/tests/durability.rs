//! Durability of a member across crashes and damage: SIGKILL
//! under a continuous writer loses no acknowledged write; a record damaged on
//! disk (in the log file or its journal) stops the server with an error
//! naming the file instead of serving; a
//! graceful SIGTERM exits 0; bad configuration exits non-zero with one line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write() {
    let mut c = Cluster::start(1);
    c.wait_leader(Duration::from_secs(20)).await;
    let ep = c.members[0].client.clone();

    let mut acked = BTreeMap::new();
    for round in 0..3 {
        // Concurrent writers, then SIGKILL while they are running.
        let mut tasks = Vec::new();
        for w in 0..8 {
            let ep = ep.clone();
            tasks.push(tokio::spawn(async move {
                let mut ok = Vec::new();
                for i in 0..1000 {
                    let (k, v) = (format!("d/{round}/{w}/{i:04}"), format!("v{i}"));
                    match put(&ep, &k, &v).await {
                        Ok(_) => ok.push((k, v)),
                        Err(_) => break,
                    }
                }
                ok
            }));
        }
        // Let some writes land, then kill mid-stream.
        let n = ep.clone();
        eventually(Duration::from_secs(20), || {
            let n = n.clone();
            async move {
                let got = get_prefix(&n, &format!("d/{round}/"))
                    .await
                    .map_err(|e| e.to_string())?;
                if got.len() >= 100 {
                    Ok(())
                } else {
                    Err(format!("{} written", got.len()))
                }
            }
        })
        .await;
        c.kill(0);
        for t in tasks {
            acked.extend(t.await.expect("writer"));
        }
        c.restart(0);
        c.wait_leader(Duration::from_secs(20)).await;
        let got: BTreeMap<String, String> = get_prefix(&ep, "d/")
            .await
            .expect("range")
            .into_iter()
            .collect();
        for (k, v) in &acked {
            assert_eq!(
                got.get(k),
                Some(v),
                "round {round}: acknowledged {k} lost after kill -9"
            );
        }
    }
    assert!(
        acked.len() >= 300,
        "only {} writes acknowledged",
        acked.len()
    );
}

/// A linearizable read of `key` on `addr`: the response header's revision
/// and the key's value.
async fn read_linearizable(addr: &str, key: &str) -> Result<(i64, Option<Vec<u8>>), String> {
    let r = kv(addr)
        .await
        .range(warden_proto::etcdserverpb::RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let rev = r.header.map_or(0, |h| h.revision);
    Ok((rev, r.kvs.into_iter().next().map(|kv| kv.value)))
}

/// Every member is SIGKILLed right after a write was acknowledged (well
/// within the log writer's idle flush of the committed log id, so the
/// committed log id on disk is older than that write), then the old leader
/// restarts alone and is asked a linearizable read, and one follower
/// restarts. The read must see the write. A leader restored in its old term
/// without an election (openraft's `enable_leader_restore`) answered it from
/// a state machine replayed only to the stale committed log id: its read
/// index was its old term's first entry or that stale committed id, both
/// already applied, so the first quorum of heartbeats released the read
/// before the commit was re-established.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_read_after_whole_cluster_kill_sees_acknowledged_write() {
    let mut c = Cluster::start(3);
    for round in 0..3 {
        let l = c.wait_leader(Duration::from_secs(20)).await;
        let ep = c.members[l].client.clone();
        // The next put's journal record carries this one's committed log
        // id, not its own: on disk, the committed id stays behind it.
        put(&ep, &format!("warmup/{round}"), "x")
            .await
            .expect("put");
        let key = format!("k/{round}");
        let acked = put(&ep, &key, "v").await.expect("put");
        let rev = acked.header.expect("header").revision;
        // Crash the whole cluster at once, the leader first.
        c.kill(l);
        for i in 0..3 {
            c.kill(i);
        }
        c.restart(l);
        let read = {
            let ep = ep.clone();
            let key = key.clone();
            tokio::spawn(async move {
                warden_testkit::poll::until(Duration::from_secs(30), || {
                    read_linearizable(&ep, &key)
                })
                .await
            })
        };
        // Give the read time to reach the old leader before it can have a
        // quorum (polled with a deadline: up to when its port answers).
        eventually(Duration::from_secs(20), || {
            let ep = ep.clone();
            async move { status(&ep).await.map(|_| ()).map_err(|e| e.to_string()) }
        })
        .await;
        let follower = (l + 1) % 3;
        c.restart(follower);
        let (read_rev, value) = read.await.expect("read task").expect("linearizable read");
        assert!(
            read_rev >= rev && value.as_deref() == Some(b"v".as_slice()),
            "round {round}: a linearizable read after the restart returned {value:?} at \
             revision {read_rev}, but the write of {key} was acknowledged at revision {rev}"
        );
        c.restart((l + 2) % 3);
    }
}

/// Flips one byte in every occurrence of `needle` in the file.
fn damage(path: &std::path::Path, needle: &[u8]) -> usize {
    let mut bytes = std::fs::read(path).expect("read log");
    let mut hits = 0;
    let mut i = 0;
    while i + needle.len() <= bytes.len() {
        if &bytes[i..i + needle.len()] == needle {
            bytes[i + needle.len() / 2] ^= 0x20;
            hits += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(path, bytes).expect("write log");
    hits
}

/// Writes a record worth damaging between two others on a 1-member
/// cluster, then stops it: with `graceful`, by SIGTERM (closing the log
/// checkpoints: the record is in `raft.redb` and the journal is empty),
/// otherwise by SIGKILL (the record is only in the journal `raft.wal`).
async fn stopped_with_a_victim_record(graceful: bool) -> Cluster {
    let mut c = Cluster::start(1);
    c.wait_leader(Duration::from_secs(20)).await;
    let ep = c.members[0].client.clone();
    put(&ep, "before", "fine").await.expect("put");
    put(&ep, "victim", "PLEASE-DAMAGE-THIS-RECORD-0123456789")
        .await
        .expect("put");
    put(&ep, "after", "fine").await.expect("put");
    if !graceful {
        c.kill(0);
        return c;
    }
    let mut child = c.members[0].child.take().expect("child");
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill")
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c
}

/// Runs member 0's server on its data as it is; returns its stderr after
/// checking it refused to start (within 30 s: a server that starts is
/// killed and fails the test rather than hanging it).
async fn start_refused(c: &Cluster) -> String {
    let mut child = Command::new(BIN)
        .arg("server")
        .args(["--name", &c.members[0].name])
        .arg("--data-dir")
        .arg(&c.members[0].dir)
        .args(["--client-addr", &c.members[0].client])
        .args(["--peer-addr", &c.members[0].peer])
        .args(["--initial-cluster", &c.initial])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run server");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            child.kill().expect("kill");
            child.wait().expect("wait");
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(
        status.is_some_and(|s| !s.success()),
        "server must refuse a damaged log (exit: {status:?}); stderr: {stderr}"
    );
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_log_record_stops_the_server_with_a_clear_error() {
    let c = stopped_with_a_victim_record(true).await;
    let log = c.members[0].dir.join("raft.redb");
    assert!(
        damage(&log, b"PLEASE-DAMAGE-THIS-RECORD-0123456789") > 0,
        "record not found in {}",
        log.display()
    );
    let stderr = start_refused(&c).await;
    assert!(
        stderr.contains("raft.redb"),
        "error must name the file: {stderr}"
    );
    assert!(
        stderr.contains("corrupt") || stderr.contains("checksum"),
        "{stderr}"
    );
}

/// The same for a record damaged in the journal, before its last record
/// (which a crash cannot do): refused, naming `raft.wal` and the offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_journal_record_stops_the_server_with_a_clear_error() {
    let c = stopped_with_a_victim_record(false).await;
    let wal = c.members[0].dir.join("raft.wal");
    assert!(
        damage(&wal, b"PLEASE-DAMAGE-THIS-RECORD-0123456789") > 0,
        "record not found in {}",
        wal.display()
    );
    let damaged = std::fs::read(&wal).expect("read journal");
    let stderr = start_refused(&c).await;
    assert!(
        stderr.contains("raft.wal") && stderr.contains("at byte"),
        "error must name the file and offset: {stderr}"
    );
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    assert!(
        std::fs::read(&wal).expect("read journal") == damaged,
        "the journal must be left as it was"
    );
}

/// A member whose log file is lost (deleted, or replaced by an empty one)
/// while its `member.json` remains must not bootstrap a new cluster under
/// its old name, with no memory of its votes: the start is refused, naming
/// both files, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_log_is_refused_not_bootstrapped_again() {
    let mut c = stopped_with_a_victim_record(true).await;
    let dir = c.members[0].dir.clone();
    // The member records that its log held entries at a start that finds
    // entries (and while running, once it has applied a membership).
    c.restart(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(dir.join("member.json"))
        .expect("member.json")
        .contains("\"log_started\": true")
    {
        assert!(Instant::now() < deadline, "log_started never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.kill(0);
    for f in ["raft.redb", "raft.wal"] {
        std::fs::remove_file(dir.join(f)).expect("remove log");
    }
    // Refused, and refused again: the first refusal bootstrapped nothing.
    for _ in 0..2 {
        let stderr = start_refused(&c).await;
        assert!(
            stderr.contains("raft.redb")
                && stderr.contains("member.json")
                && stderr.contains("lost"),
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully_and_restart_resumes() {
    let mut c = Cluster::start(1);
    c.wait_leader(Duration::from_secs(20)).await;
    let ep = c.members[0].client.clone();
    put(&ep, "k", "v1").await.expect("put");
    let mut child = c.members[0].child.take().expect("child");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    c.restart(0);
    c.wait_leader(Duration::from_secs(20)).await;
    assert_eq!(
        get(&ep, "k", false).await.expect("get"),
        Some(b"v1".to_vec())
    );
}

#[test]
fn bad_configuration_exits_nonzero_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--name", "n1", "--initial-cluster", "n2=127.0.0.1:1"],
            "initial-cluster",
        ),
        (
            &["--name", "n1", "--client-addr", "localhost"],
            "client-addr",
        ),
        (
            &[
                "--name",
                "n1",
                "--election-timeout-min-ms",
                "2000",
                "--election-timeout-max-ms",
                "1500",
            ],
            "election-timeout-max-ms",
        ),
    ];
    for (args, field) in cases {
        let out = Command::new(BIN)
            .arg("server")
            .arg("--data-dir")
            .arg(dir.path().join("d"))
            .args(args)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line for {args:?}, got: {stderr}");
        assert!(lines[0].contains(field), "{field} not named in {stderr}");
    }
}

/// A key's value at `revision` (an old one: history).
async fn value_at(addr: &str, key: &str, revision: i64) -> Result<Option<Vec<u8>>, tonic::Status> {
    let r = kv(addr)
        .await
        .range(warden_proto::etcdserverpb::RangeRequest {
            key: key.into(),
            revision,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.kvs.into_iter().next().map(|kv| kv.value))
}

/// Compacts `addr`'s store up to `revision` (physical: done when it
/// answers).
async fn compact(addr: &str, revision: i64) {
    kv(addr)
        .await
        .compact(warden_proto::etcdserverpb::CompactionRequest {
            revision,
            physical: true,
        })
        .await
        .unwrap();
}

/// History lives in scratch files (`storage::cold`), not in the data: a
/// member overwriting one key reads every old version back from them, and
/// after a SIGKILL and a restart (its snapshot holds part of the history,
/// the log replays the rest) it writes them out again and reads the same;
/// a compaction then refuses the old revisions as etcd does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_back_from_scratch_files_across_a_kill() {
    let mut c = Cluster::start_with(1, &["--snapshot-entries", "25"]);
    c.wait_leader(Duration::from_secs(20)).await;
    let ep = c.members[0].client.clone();
    let mut revs = Vec::new();
    for i in 0..60 {
        let r = put(&ep, "h", &format!("value-{i:03}")).await.unwrap();
        revs.push(r.header.unwrap().revision);
    }
    let check = |ep: String, revs: Vec<i64>| async move {
        for (i, rev) in revs.iter().enumerate() {
            let v = value_at(&ep, "h", *rev).await.unwrap();
            assert_eq!(v, Some(format!("value-{i:03}").into_bytes()), "at {rev}");
        }
    };
    check(ep.clone(), revs.clone()).await;
    // 59 superseded values of 9 bytes.
    assert!(metric(&ep, "warden_history_scratch_bytes") >= 59.0 * 9.0);
    assert_eq!(metric(&ep, "warden_history_spill_failures"), 0.0);
    // A snapshot with history in it is on disk before the kill (every 25
    // entries; taken in the background).
    let ep2 = ep.clone();
    eventually(Duration::from_secs(20), || {
        let ep = ep2.clone();
        async move {
            let at = metric(&ep, "warden_raft_snapshot_index");
            if at >= 25.0 {
                Ok(())
            } else {
                Err(format!("snapshot index {at}"))
            }
        }
    })
    .await;

    c.kill(0);
    c.restart(0);
    c.wait_leader(Duration::from_secs(20)).await;
    let ep2 = ep.clone();
    eventually(Duration::from_secs(20), || {
        let ep = ep2.clone();
        async move {
            value_at(&ep, "h", 0)
                .await
                .map_err(|e| e.to_string())
                .map(|_| ())
        }
    })
    .await;
    check(ep.clone(), revs.clone()).await;
    assert!(metric(&ep, "warden_history_scratch_bytes") >= 59.0 * 9.0);
    // The snapshot it loaded held history, which went to the files.
    assert!(
        c.log(0)
            .contains("moved the values of superseded versions to scratch files"),
        "{}",
        c.log(0)
    );

    let last = *revs.last().unwrap();
    compact(&ep, last).await;
    let e = value_at(&ep, "h", revs[0]).await.unwrap_err();
    assert!(e.message().contains("compacted"), "{e}");
    assert_eq!(
        value_at(&ep, "h", last).await.unwrap(),
        Some(b"value-059".to_vec())
    );
}

/// Newest values of 64 bytes and more live in the scratch files too: gets,
/// ranges, a txn comparing such a value and a delete returning it read them
/// back, through a SIGKILL and a restart (the member writes them out again
/// from its snapshot and log), and after a compaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_values_read_back_from_scratch_files_across_a_kill() {
    use warden_proto::etcdserverpb::{
        compare, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RequestOp,
        TxnRequest,
    };
    let mut c = Cluster::start_with(1, &["--snapshot-entries", "30"]);
    c.wait_leader(Duration::from_secs(20)).await;
    let ep = c.members[0].client.clone();
    let value = |k: usize, round: usize| format!("{k:03}-{round}-{}", "v".repeat(120));
    for k in 0..50 {
        put(&ep, &format!("n/{k:03}"), &value(k, 0)).await.unwrap();
    }
    let check = |ep: String, round: usize| async move {
        let got = get_prefix(&ep, "n/").await.unwrap();
        assert_eq!(got.len(), 50);
        for (k, (key, v)) in got.into_iter().enumerate() {
            assert_eq!(key, format!("n/{k:03}"));
            let want = if k < 10 { 0 } else { round };
            assert_eq!(v, value(k, want), "{key}");
        }
    };
    check(ep.clone(), 0).await;
    // Nothing is superseded yet: the files hold the newest values.
    assert!(metric(&ep, "warden_history_scratch_bytes") >= 50.0 * 128.0);

    // A txn whose compare reads a value from the files, its put returning
    // the previous value.
    let txn = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Value as i32,
            key: b"n/020".to_vec(),
            target_union: Some(compare::TargetUnion::Value(value(20, 0).into_bytes())),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b"n/020".to_vec(),
                value: value(20, 1).into_bytes(),
                prev_kv: true,
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let t = kv(&ep).await.txn(txn).await.unwrap().into_inner();
    assert!(t.succeeded);
    let Some(response_op::Response::ResponsePut(p)) = &t.responses[0].response else {
        panic!("{t:?}")
    };
    assert_eq!(p.prev_kv.as_ref().unwrap().value, value(20, 0).into_bytes());
    for k in 10..50 {
        put(&ep, &format!("n/{k:03}"), &value(k, 1)).await.unwrap();
    }
    check(ep.clone(), 1).await;

    c.kill(0);
    c.restart(0);
    c.wait_leader(Duration::from_secs(20)).await;
    let ep2 = ep.clone();
    eventually(Duration::from_secs(20), || {
        let ep = ep2.clone();
        async move { get(&ep, "n/000", false).await.map_err(|e| e.to_string()) }
    })
    .await;
    check(ep.clone(), 1).await;
    let d = kv(&ep)
        .await
        .delete_range(DeleteRangeRequest {
            key: b"n/049".to_vec(),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.prev_kvs[0].value, value(49, 1).into_bytes());
    let last = d.header.unwrap().revision;
    compact(&ep, last).await;
    assert_eq!(
        get(&ep, "n/005", true).await.unwrap(),
        Some(value(5, 0).into_bytes())
    );
    assert_eq!(
        get(&ep, "n/048", false).await.unwrap(),
        Some(value(48, 1).into_bytes())
    );
    assert_eq!(metric(&ep, "warden_history_spill_failures"), 0.0);
}

/// The unnamed scratch files member `pid` holds open (`storage::cold`
/// makes them with `O_TMPFILE` in `DATA/snap`), as paths under
/// `/proc/PID/fd` that open them.
fn scratch_files(pid: u32) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(to) = std::fs::read_link(e.path()) {
            let to = to.to_string_lossy().into_owned();
            if to.contains("/snap/") && to.ends_with("(deleted)") {
                found.push(e.path());
            }
        }
    }
    found
}

/// A member whose Raft core stops on a storage error exits (non-zero, one
/// line naming the error) instead of living on with a state that no longer
/// moves, still answering serializable reads: as etcd does. The error here:
/// a scratch file damaged under the member, read by a txn being applied.
/// A plain read of the damaged version fails alone; the txn stops the
/// member; a restart on the same data directory rebuilds the scratch files
/// from the log and applies that txn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_raft_stops_on_a_storage_error_exits() {
    use warden_proto::etcdserverpb::{request_op, PutRequest, RangeRequest, RequestOp, TxnRequest};
    let mut c = Cluster::start(1);
    c.wait_leader(Duration::from_secs(20)).await;
    let ep = c.members[0].client.clone();
    let first = put(&ep, "h", "old-value").await.unwrap();
    let first = first.header.unwrap().revision;
    put(&ep, "h", "new-value").await.unwrap();
    assert_eq!(
        value_at(&ep, "h", first).await.unwrap(),
        Some(b"old-value".to_vec())
    );

    let pid = c.members[0].child.as_ref().unwrap().id();
    let files = scratch_files(pid);
    assert!(!files.is_empty(), "no scratch file open in {pid}");
    for f in &files {
        use std::io::Write;
        let mut w = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        // The one superseded value is the first thing in the first
        // segment; this covers it and its CRC whatever else is there.
        w.write_all(&[0xA5; 4096]).unwrap();
    }
    // A read of the damaged version fails, and only that read.
    let e = value_at(&ep, "h", first).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal, "{e}");
    assert_eq!(
        value_at(&ep, "h", 0).await.unwrap(),
        Some(b"new-value".to_vec())
    );

    // A txn that reads it while it writes: the member cannot apply it.
    let txn = TxnRequest {
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: b"h".to_vec(),
                    revision: first,
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"after".to_vec(),
                    value: b"the txn".to_vec(),
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    let answer = tokio::time::timeout(Duration::from_secs(20), kv(&ep).await.txn(txn)).await;
    assert!(
        !matches!(answer, Ok(Ok(_))),
        "the txn succeeded: {answer:?}"
    );
    let status = c.wait_exit(0, Duration::from_secs(20)).await;
    let status = status.unwrap_or_else(|| panic!("still running:\n{}", c.log(0)));
    assert!(!status.success(), "{status:?}");
    let log = c.log(0);
    assert!(log.contains("Raft stopped on an error"), "{log}");

    // Restarted, it replays the txn from its log into fresh scratch files.
    c.restart(0);
    c.wait_leader(Duration::from_secs(20)).await;
    let ep2 = ep.clone();
    let after = eventually(Duration::from_secs(20), || {
        let ep = ep2.clone();
        async move { get(&ep, "after", false).await.map_err(|e| e.to_string()) }
    })
    .await;
    assert_eq!(after.as_deref(), Some(&b"the txn"[..]));
    assert_eq!(
        value_at(&ep, "h", first).await.unwrap(),
        Some(b"old-value".to_vec())
    );
}
