//! Reads that scan the whole key space (a sort with `limit = 1`, a count,
//! HashKV, a watch replaying history) and compaction run on a copy of the
//! state, away from its lock and from the async workers that carry
//! heartbeats (issue 9, finding 6). A storm of them on the leader of a
//! 3-member cluster must not cause an election, must not stop writes, and
//! must answer correctly. (At this size the old code, which scanned under
//! the lock, passed too: what this shows is that the off-lock paths give the
//! right answers while compaction and writes go on, and that a compaction
//! prepared on a copy leaves every member with the same data.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{kv, put, status, Cluster};
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use warden_proto::etcdserverpb::range_request::{SortOrder, SortTarget};

const ELECT: Duration = Duration::from_secs(20);
const KEYS: usize = 10_000;
const PER_TXN: usize = 128;

fn key(i: usize) -> Vec<u8> {
    format!("scan/{i:06}").into_bytes()
}

/// Values are 512 bytes; the one of key `i` in round `round` sorts by its
/// first bytes, so the largest is known.
fn value(i: usize, round: usize) -> Vec<u8> {
    let mut v = format!("{round}-{i:06}-").into_bytes();
    v.resize(512, b'.');
    v
}

async fn load(ep: &str, round: usize) {
    let mut c = kv(ep).await;
    for start in (0..KEYS).step_by(PER_TXN) {
        let success = (start..(start + PER_TXN).min(KEYS))
            .map(|i| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key(i),
                    value: value(i, round),
                    ..Default::default()
                })),
            })
            .collect();
        c.txn(pb::TxnRequest {
            success,
            ..Default::default()
        })
        .await
        .expect("load txn");
    }
}

fn whole_range() -> pb::RangeRequest {
    pb::RangeRequest {
        key: b"scan/".to_vec(),
        range_end: b"scan0".to_vec(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scans_and_compaction_do_not_stall_the_leader() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    let ep = c.members[leader].client.clone();
    load(&ep, 1).await;
    let mid = status(&ep)
        .await
        .expect("status")
        .header
        .expect("h")
        .revision;
    load(&ep, 2).await;
    let term = status(&ep).await.expect("status").raft_term;

    let stop = Arc::new(AtomicBool::new(false));
    let scans = Arc::new(AtomicU64::new(0));
    let mut storm = Vec::new();
    for kind in 0..4 {
        let (ep, stop, scans) = (ep.clone(), stop.clone(), scans.clone());
        storm.push(tokio::spawn(async move {
            let mut k = kv(&ep).await;
            let mut m = MaintenanceClient::new(common::channel(&ep).await);
            while !stop.load(Ordering::Relaxed) {
                match kind {
                    // The largest value: sorts the whole range for one kv.
                    0 => {
                        let r = k
                            .range(pb::RangeRequest {
                                limit: 1,
                                sort_target: SortTarget::Value as i32,
                                sort_order: SortOrder::Descend as i32,
                                ..whole_range()
                            })
                            .await
                            .expect("sorted range")
                            .into_inner();
                        assert_eq!(r.count, KEYS as i64);
                        assert!(r.more);
                        assert_eq!(r.kvs.len(), 1);
                        assert_eq!(
                            String::from_utf8_lossy(&r.kvs[0].value),
                            String::from_utf8_lossy(&value(KEYS - 1, 2))
                        );
                    }
                    1 => {
                        let r = k
                            .range(pb::RangeRequest {
                                count_only: true,
                                ..whole_range()
                            })
                            .await
                            .expect("count")
                            .into_inner();
                        assert_eq!(r.count, KEYS as i64);
                    }
                    2 => {
                        m.hash_kv(pb::HashKvRequest { revision: 0 })
                            .await
                            .expect("hashkv");
                    }
                    _ => {
                        // The history: the last key in the first round,
                        // sorted descending, at a past revision.
                        let r = k
                            .range(pb::RangeRequest {
                                limit: 1,
                                revision: mid,
                                sort_target: SortTarget::Key as i32,
                                sort_order: SortOrder::Descend as i32,
                                ..whole_range()
                            })
                            .await;
                        match r {
                            Ok(r) => {
                                let r = r.into_inner();
                                assert_eq!(
                                    String::from_utf8_lossy(&r.kvs[0].value),
                                    String::from_utf8_lossy(&value(KEYS - 1, 1))
                                );
                            }
                            // Compacted meanwhile (below).
                            Err(e) => assert!(e.message().contains("compacted"), "{e}"),
                        }
                    }
                }
                scans.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Meanwhile: sequential writes, and a compaction of the first round.
    let mut writes = 0;
    for i in 0..60 {
        put(&ep, &format!("w/{i}"), "x")
            .await
            .expect("write during scans");
        writes += 1;
        if i == 20 {
            kv(&ep)
                .await
                .compact(pb::CompactionRequest {
                    revision: mid + 1,
                    physical: true,
                })
                .await
                .expect("compact");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in storm {
        t.await.expect("scan task");
    }
    assert_eq!(writes, 60);
    assert!(scans.load(Ordering::Relaxed) > 0);

    // No election happened on any member, and every member holds the same
    // data (the compaction included).
    for m in &c.members {
        let s = status(&m.client).await.expect("status");
        assert_eq!(
            s.raft_term,
            term,
            "{} changed term:\n{}",
            m.name,
            c.log(leader)
        );
    }
    c.converge(ELECT).await;
    let r = kv(&ep)
        .await
        .range(pb::RangeRequest {
            revision: mid,
            ..whole_range()
        })
        .await
        .expect_err("compacted");
    assert!(r.message().contains("compacted"), "{r}");
}
