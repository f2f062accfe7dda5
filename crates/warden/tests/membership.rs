//! Cluster operations on real members: joining with --join (learner, then
//! promoted), catching up by snapshot, removing the leader, removed members
//! stopping by themselves, refused changes, and a 5-member cluster surviving
//! any 2 failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{eventually, get, get_prefix, put, put_eventually, Cluster};
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::cluster_client::ClusterClient;
use warden_proto::etcdserverpb::maintenance_client::MaintenanceClient;

const ELECT: Duration = Duration::from_secs(20);

async fn members(addr: &str) -> Result<Vec<pb::Member>, String> {
    ClusterClient::new(common::channel(addr).await)
        .member_list(pb::MemberListRequest { linearizable: true })
        .await
        .map(|r| r.into_inner().members)
        .map_err(|e| e.to_string())
}

async fn member_id(addr: &str, name: &str) -> u64 {
    members(addr)
        .await
        .expect("members")
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.id)
        .unwrap_or_else(|| panic!("{name} is not in the member list"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_catch_up_by_snapshot_promote_and_remove_leader() {
    // Small snapshot interval: the joiner must catch up by snapshot.
    let mut c = Cluster::start_with(3, &["--snapshot-entries", "50"]);
    c.wait_leader(ELECT).await;
    let ep = c.members[0].client.clone();
    // Each put is retried until it succeeds: a snapshot every 50 entries
    // keeps a loaded machine busy enough that an election may come in
    // between (300-600 ms timeouts here), and a put caught by one fails
    // with "leader changed" (its outcome unknown; this test only needs the
    // keys to be there).
    for i in 0..200 {
        put_eventually(&ep, &format!("k/{i:03}"), &i.to_string(), ELECT).await;
    }

    let n4 = c.join("n4");
    let n4_client = c.members[n4].client.clone();
    // n4 appears, is promoted to voter once caught up, and publishes its name.
    let list = eventually(Duration::from_secs(30), || {
        let ep = ep.clone();
        async move {
            let ms = members(&ep).await?;
            let ok = ms.len() == 4
                && ms.iter().all(|m| !m.is_learner)
                && ms
                    .iter()
                    .any(|m| m.name == "n4" && !m.client_urls.is_empty());
            if ok {
                Ok(ms)
            } else {
                Err(format!("{ms:?}"))
            }
        }
    })
    .await;
    assert!(list.iter().any(|m| m.name == "n4"));
    // It serves everything written before it joined.
    let got = get_prefix(&n4_client, "k/").await.expect("read on n4");
    assert_eq!(got.len(), 200);
    assert!(
        c.log(n4).contains("installed snapshot"),
        "n4 caught up by snapshot:\n{}",
        c.log(n4)
    );

    // Refused changes carry etcd's messages.
    let mut cl = ClusterClient::new(common::channel(&ep).await);
    let taken = cl
        .member_add(pb::MemberAddRequest {
            peer_urls: vec![format!("http://{}", c.members[1].peer)],
            is_learner: true,
        })
        .await
        .expect_err("taken peer URL");
    assert_eq!(taken.message(), "etcdserver: Peer URLs already exists");
    let voter = list[0].id;
    let not_learner = cl
        .member_promote(pb::MemberPromoteRequest { id: voter })
        .await
        .expect_err("promote a voter");
    assert_eq!(
        not_learner.message(),
        "etcdserver: can only promote a learner member"
    );
    let missing = cl
        .member_remove(pb::MemberRemoveRequest { id: 12345 })
        .await
        .expect_err("unknown member");
    assert_eq!(missing.message(), "etcdserver: member not found");

    // Remove the leader: leadership moves first, then it leaves.
    let leader = c.wait_leader(ELECT).await;
    let leader_id = member_id(&ep, &c.members[leader].name).await;
    let other = (0..4).find(|i| *i != leader).expect("another member");
    let other_ep = c.members[other].client.clone();
    ClusterClient::new(common::channel(&other_ep).await)
        .member_remove(pb::MemberRemoveRequest { id: leader_id })
        .await
        .unwrap_or_else(|e| {
            let logs: Vec<String> = (0..4).map(|i| c.log(i)).collect();
            panic!("remove leader: {e}\n{}", logs.join("\n-----\n"))
        });
    // Like etcd's, the removed member notices and stops by itself, and its
    // data dir will not start as a member again.
    let status = c.wait_exit(leader, Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "removed member did not stop cleanly ({status:?}):\n{}",
        c.log(leader)
    );
    assert!(c.log(leader).contains("removed from the cluster"));
    c.restart(leader);
    let status = c.wait_exit(leader, Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| !s.success()),
        "a removed member's data dir must not start again ({status:?})"
    );
    assert!(
        c.log(leader)
            .contains("was removed from the cluster (membership at log index"),
        "{}",
        c.log(leader)
    );
    let ms = members(&other_ep).await.expect("members");
    assert_eq!(ms.len(), 3, "{ms:?}");
    assert!(ms.iter().all(|m| m.id != leader_id));
    put(&other_ep, "after-remove", "ok")
        .await
        .expect("write after removal");
    assert_eq!(
        get(&n4_client, "after-remove", false).await.expect("get"),
        Some(b"ok".to_vec())
    );

    // n4 restarts from its data dir without --join.
    c.kill(n4);
    c.restart(n4);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(_)) = get(&n4_client, "after-remove", false).await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n4 did not come back:\n{}",
            c.log(n4)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_removed_while_down_stops_once_restarted() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let gone = (leader + 1) % 3;
    let ep = c.members[leader].client.clone();
    let id = member_id(&ep, &c.members[gone].name).await;
    c.kill(gone);
    ClusterClient::new(common::channel(&ep).await)
        .member_remove(pb::MemberRemoveRequest { id })
        .await
        .expect("remove the dead member");
    put(&ep, "after", "removal").await.expect("put");
    // Back up on its old data dir it still believes it is a member, until a
    // peer's newer membership tells it otherwise.
    c.restart(gone);
    let status = c.wait_exit(gone, Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "removed member kept running ({status:?}):\n{}\nOTHERS\n{}\n{}",
        c.log(gone),
        c.log((gone + 1) % 3),
        c.log((gone + 2) % 3)
    );
    assert!(c
        .log(gone)
        .contains("this member was removed from the cluster"));
    // The two that remain are the whole cluster and keep serving.
    let left = members(&ep).await.expect("members");
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(
        get(&ep, "after", false).await.expect("get"),
        Some(b"removal".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_survive_any_two_failures() {
    let mut c = Cluster::start(5);
    let leader = c.wait_leader(ELECT).await;
    // Three different pairs: leader + follower, then two follower pairs.
    let f = |k: usize| (leader + k) % 5;
    let pairs = [(leader, f(1)), (f(2), f(3)), (f(1), f(4))];
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    for (round, (a, b)) in pairs.into_iter().enumerate() {
        c.kill(a);
        c.kill(b);
        let alive: Vec<usize> = (0..5).filter(|i| *i != a && *i != b).collect();
        let ep = c.members[alive[0]].client.clone();
        for i in 0..20 {
            let (k, v) = (format!("r{round}/{i:02}"), format!("{round}-{i}"));
            eventually(Duration::from_secs(20), || {
                let (ep, k, v) = (ep.clone(), k.clone(), v.clone());
                async move {
                    put(&ep, &k, &v)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            })
            .await;
            written.insert(k, v);
        }
        // Linearizable reads on every survivor see every acknowledged write.
        for i in &alive {
            let got: BTreeMap<String, String> = get_prefix(&c.members[*i].client, "r")
                .await
                .expect("read")
                .into_iter()
                .collect();
            assert_eq!(got, written, "member {i} after killing {a} and {b}");
        }
        c.restart(a);
        c.restart(b);
        c.wait_leader(ELECT).await;
    }

    // Three down: no quorum, requests fail promptly with Unavailable.
    let (a, b, d) = (f(0), f(1), f(2));
    c.kill(a);
    c.kill(b);
    c.kill(d);
    let ep = c.members[f(3)].client.clone();
    let err = put(&ep, "no-quorum", "x").await.expect_err("no quorum");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    // One returns: quorum again.
    c.restart(a);
    put_eventually(&ep, "quorum-back", "y", Duration::from_secs(30)).await;
}

fn warden(eps: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::BIN)
        .args(["--endpoints", eps])
        .args(args)
        .output()
        .expect("run warden")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_into_a_new_cluster() {
    let c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    let ep = c.members[1].client.clone();
    for i in 0..50 {
        put(&ep, &format!("b/{i:02}"), &format!("v{i}"))
            .await
            .expect("put");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let backup = dir.path().join("backup.snap");
    let out = warden(
        &c.endpoints(),
        &["snapshot", "save", backup.to_str().expect("path")],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Snapshot saved at"));

    // The real etcdctl can take the backup too (it checks etcd's SHA-256
    // trailer), and warden restores what it saved.
    let via_etcdctl = dir.path().join("etcdctl.snap");
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={ep}"))
        .args(["snapshot", "save", via_etcdctl.to_str().expect("path")])
        .output()
        .expect("run etcdctl (Debian etcd-client)");
    assert!(out.status.success(), "{out:?}");
    let scratch = dir.path().join("scratch");
    let out = warden(
        &c.endpoints(),
        &[
            "snapshot",
            "restore",
            via_etcdctl.to_str().expect("path"),
            "--data-dir",
            scratch.to_str().expect("path"),
            "--name",
            "n1",
            "--initial-cluster",
            "n1=127.0.0.1:1",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("(50 keys)"));

    // A truncated or damaged backup is refused with a clear error.
    let bytes = std::fs::read(&backup).expect("read backup");
    let broken = dir.path().join("broken.snap");
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).expect("write");
    let target = dir.path().join("never");
    let out = warden(
        &c.endpoints(),
        &[
            "snapshot",
            "restore",
            broken.to_str().expect("path"),
            "--data-dir",
            target.to_str().expect("path"),
            "--name",
            "n1",
            "--initial-cluster",
            "n1=127.0.0.1:1",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("Error: restoring"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Restore every member of a new cluster from the backup and start it.
    let mut fresh = Cluster::stopped(3, &[]);
    for i in 0..3 {
        let m = &fresh.members[i];
        let out = warden(
            &c.endpoints(),
            &[
                "snapshot",
                "restore",
                backup.to_str().expect("path"),
                "--data-dir",
                m.dir.to_str().expect("path"),
                "--name",
                &m.name,
                "--initial-cluster",
                &fresh.initial,
            ],
        );
        assert!(out.status.success(), "{out:?}");
    }
    for i in 0..3 {
        fresh.restart(i);
    }
    fresh.wait_leader(ELECT).await;
    let nep = fresh.members[2].client.clone();
    let got = get_prefix(&nep, "b/").await.expect("read restored");
    assert_eq!(got.len(), 50);
    assert_eq!(
        get(&nep, "b/07", false).await.expect("get"),
        Some(b"v7".to_vec())
    );
    // The restored cluster takes writes, continuing the revision sequence.
    let r = put(&nep, "after-restore", "x").await.expect("put");
    let old_rev = common::status(&ep)
        .await
        .expect("status")
        .header
        .map_or(0, |h| h.revision);
    assert!(
        r.header.map_or(0, |h| h.revision) > old_rev,
        "revisions continue after the backup's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_down_past_log_compaction_catches_up_by_snapshot() {
    let mut c = Cluster::start_with(3, &["--snapshot-entries", "50"]);
    let leader = c.wait_leader(ELECT).await;
    let down = (leader + 1) % 3;
    c.kill(down);
    let ep = c.members[leader].client.clone();
    // Retried as above: an election under load must not fail the test.
    for i in 0..300 {
        put_eventually(&ep, &format!("late/{i:03}"), "v", ELECT).await;
    }
    // The leader compacts its log only between replication attempts to the
    // dead member (openraft keeps entries an in-flight request may still
    // read), so wait until it has: otherwise the restarted member could be
    // caught up from the log and the test would not test the snapshot path.
    eventually(Duration::from_secs(30), || {
        let compacted = compacted_upto(&c.log(leader));
        let ep = ep.clone();
        async move {
            if compacted >= 100 {
                return Ok(());
            }
            // Keep the log growing so new snapshots keep being taken.
            put(&ep, "filler", "v").await.map_err(|e| e.to_string())?;
            Err(format!("leader compacted its log only up to {compacted}"))
        }
    })
    .await;
    c.restart(down);
    let down_ep = c.members[down].client.clone();
    eventually(Duration::from_secs(30), || {
        let ep = down_ep.clone();
        async move {
            // Serializable: what the restarted member itself holds.
            match get(&ep, "late/299", true).await {
                Ok(Some(_)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(
        c.log(down).contains("installed snapshot"),
        "the log it missed was compacted, so it needed the snapshot:\n{}",
        c.log(down)
    );
    assert_eq!(
        get_prefix(&down_ep, "late/").await.expect("read").len(),
        300
    );
}

/// The highest index a member's log says it compacted up to (0 if none).
fn compacted_upto(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("compacted raft log"))
        .filter_map(|l| l.split("upto=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// A member that was down while another joined does not know the newcomer.
/// If the newcomer then leads, the lagging member must still take its
/// replication (after a member it knows vouches for the newcomer), not
/// refuse it as a stranger and stay behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_missed_a_join_follows_the_newcomer_as_leader() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let lagging = (leader + 1) % 3;
    let ep = c.members[leader].client.clone();
    c.kill(lagging);
    put(&ep, "before-join", "1").await.expect("put");

    let n4 = c.join("n4");
    eventually(Duration::from_secs(30), || {
        let ep = ep.clone();
        async move {
            let ms = members(&ep).await?;
            if ms.len() == 4
                && ms.iter().all(|m| !m.is_learner)
                && ms.iter().any(|m| m.name == "n4")
            {
                Ok(())
            } else {
                Err(format!("{ms:?}"))
            }
        }
    })
    .await;
    let n4_id = member_id(&ep, "n4").await;
    // Leadership moves to the newcomer.
    eventually(Duration::from_secs(30), || {
        let ep = ep.clone();
        let n4_ep = c.members[n4].client.clone();
        async move {
            let s = common::status(&n4_ep).await.map_err(|e| e.to_string())?;
            if s.leader == n4_id {
                return Ok(());
            }
            let _ = MaintenanceClient::new(common::channel(&ep).await)
                .move_leader(pb::MoveLeaderRequest { target_id: n4_id })
                .await;
            Err(format!("leader is {:x}", s.leader))
        }
    })
    .await;
    let n4_ep = c.members[n4].client.clone();
    put(&n4_ep, "under-n4", "2").await.expect("put through n4");

    // The lagging member comes back and catches up under n4.
    c.restart(lagging);
    let lag_ep = c.members[lagging].client.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(v)) = get(&lag_ep, "under-n4", true).await {
            assert_eq!(v, b"2".to_vec());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lagging member did not catch up under the newcomer:\n{}",
            c.log(lagging)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
