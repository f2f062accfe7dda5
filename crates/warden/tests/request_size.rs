//! The request-size limit (`--max-request-bytes`) holds on every RPC that
//! proposes, not only KV: lock, election and native-lock requests over it
//! get etcd's `request is too large`. Also: a v3lock `Lock` or a `Campaign`
//! without a lease runs under a fresh 60 s lease (as etcd), and a native
//! `Acquire` that granted its own lease revokes it when it ends without a
//! hold.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::time::Duration;

use common::{eventually, Cluster};
use tonic::transport::Channel;
use warden_proto::etcdserverpb as epb;
use warden_proto::etcdserverpb::kv_client::KvClient;
use warden_proto::etcdserverpb::lease_client::LeaseClient;
use warden_proto::v3electionpb as elpb;
use warden_proto::v3electionpb::election_client::ElectionClient;
use warden_proto::v3lockpb as lkpb;
use warden_proto::v3lockpb::lock_client::LockClient;
use warden_proto::warden::v1 as pb;
use warden_proto::warden::v1::acquire_response::State;
use warden_proto::warden::v1::locks_client::LocksClient;

const ELECT: Duration = Duration::from_secs(20);
const LIMIT: usize = 4096;

async fn one_member() -> (Cluster, Channel) {
    let c = Cluster::start_with(1, &["--max-request-bytes", &LIMIT.to_string()]);
    c.wait_leader(ELECT).await;
    let ch = common::channel(&c.members[0].client).await;
    (c, ch)
}

fn big() -> Vec<u8> {
    vec![b'x'; LIMIT + 1]
}

fn assert_too_large<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>) {
    match r {
        Ok(v) => panic!("{what}: accepted: {v:?}"),
        Err(s) => assert!(
            s.message().contains("request is too large"),
            "{what}: {s:?}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_txn_over_the_limit_is_too_large() {
    let (_c, ch) = one_member().await;
    let txn = epb::TxnRequest {
        success: vec![epb::RequestOp {
            request: Some(epb::request_op::Request::RequestPut(epb::PutRequest {
                key: b"k".to_vec(),
                value: big(),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let r = LocksClient::new(ch)
        .fenced_txn(pb::FencedTxnRequest {
            name: "l".into(),
            token: 1,
            txn: Some(txn),
            handle: vec![0; 16],
        })
        .await;
    assert_too_large("FencedTxn", r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_over_the_limit_is_too_large() {
    let (_c, ch) = one_member().await;
    let r = ElectionClient::new(ch)
        .campaign(elpb::CampaignRequest {
            name: b"e".to_vec(),
            lease: 1,
            value: big(),
        })
        .await;
    assert_too_large("Campaign", r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proclaim_over_the_limit_is_too_large() {
    let (_c, ch) = one_member().await;
    let r = ElectionClient::new(ch)
        .proclaim(elpb::ProclaimRequest {
            leader: Some(elpb::LeaderKey {
                name: b"e".to_vec(),
                key: b"e/1".to_vec(),
                rev: 1,
                lease: 1,
            }),
            value: big(),
        })
        .await;
    assert_too_large("Proclaim", r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3lock_name_over_the_limit_is_too_large() {
    let (_c, ch) = one_member().await;
    let r = LockClient::new(ch)
        .lock(lkpb::LockRequest {
            name: big(),
            lease: 1,
        })
        .await;
    assert_too_large("Lock", r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_acquire_over_the_limit_is_too_large() {
    let (_c, ch) = one_member().await;
    let r = LocksClient::new(ch)
        .acquire(pb::AcquireRequest {
            name: String::from_utf8(big()).unwrap(),
            ttl: 10,
            ..Default::default()
        })
        .await;
    assert_too_large("Acquire", r.map(|_| ()));
}

async fn lease_ids(ch: &Channel) -> Vec<i64> {
    let mut ids: Vec<i64> = LeaseClient::new(ch.clone())
        .lease_leases(epb::LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases
        .into_iter()
        .map(|l| l.id)
        .collect();
    ids.sort_unstable();
    ids
}

/// Waits until the member's leases are exactly `before` again.
async fn leases_return_to(ch: &Channel, before: &[i64]) {
    eventually(Duration::from_secs(5), || {
        let ch = ch.clone();
        async move {
            let now = lease_ids(&ch).await;
            if now == before {
                Ok(())
            } else {
                Err(format!("leases {now:?}, want {before:?}"))
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3lock_without_a_lease_locks_under_a_fresh_lease() {
    let (_c, ch) = one_member().await;
    let r = LockClient::new(ch.clone())
        .lock(lkpb::LockRequest {
            name: b"nolease".to_vec(),
            lease: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let kv = KvClient::new(ch.clone())
        .range(epb::RangeRequest {
            key: r.key.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let lease = kv.kvs[0].lease;
    assert_ne!(lease, 0, "the lock key must be attached to a lease");
    let ttl = LeaseClient::new(ch)
        .lease_time_to_live(epb::LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ttl.granted_ttl == 60 && ttl.ttl > 0, "{ttl:?}");
    assert_eq!(ttl.keys, vec![r.key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_without_a_lease_campaigns_under_a_fresh_lease() {
    let (_c, ch) = one_member().await;
    let leader = ElectionClient::new(ch.clone())
        .campaign(elpb::CampaignRequest {
            name: b"nolease-election".to_vec(),
            lease: 0,
            value: b"me".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    assert_ne!(
        leader.lease, 0,
        "the leader key must be attached to a lease"
    );
    let ttl = LeaseClient::new(ch)
        .lease_time_to_live(epb::LeaseTimeToLiveRequest {
            id: leader.lease,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ttl.granted_ttl == 60 && ttl.ttl > 0, "{ttl:?}");
    assert_eq!(ttl.keys, vec![leader.key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_that_would_block_revokes_the_lease_it_granted() {
    let (_c, ch) = one_member().await;
    let mut locks = LocksClient::new(ch.clone());
    let mut holder = locks
        .acquire(pb::AcquireRequest {
            name: "busy".into(),
            ttl: 30,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let granted = holder.message().await.unwrap().unwrap();
    assert_eq!(granted.state, State::Granted as i32);
    let before = lease_ids(&ch).await;
    assert_eq!(before, vec![granted.lease]);
    // Try without waiting: WouldBlock; its own lease must not stay behind.
    let mut tryer = locks
        .acquire(pb::AcquireRequest {
            name: "busy".into(),
            ttl: 30,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let answer = tryer.message().await.unwrap().unwrap();
    assert_eq!(answer.state, State::WouldBlock as i32, "{answer:?}");
    leases_return_to(&ch, &before).await;
    // Timed out while queued: revoked too.
    let mut waiter = locks
        .acquire(pb::AcquireRequest {
            name: "busy".into(),
            ttl: 30,
            wait_timeout_ms: 300,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Ok(Some(_)) = waiter.message().await {}
    leases_return_to(&ch, &before).await;
    drop(holder);
}
