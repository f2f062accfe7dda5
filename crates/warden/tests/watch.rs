//! The etcd Watch service over gRPC: replay from history, live events,
//! filters, prev_kv, progress, cancel, and a compacted start revision.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::time::Duration;

use common::{put, Cluster};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::watch_client::WatchClient;
use warden_proto::etcdserverpb::watch_request::RequestUnion;

struct W {
    tx: mpsc::Sender<pb::WatchRequest>,
    rx: Streaming<pb::WatchResponse>,
}

impl W {
    async fn open(addr: &str) -> W {
        let (tx, r) = mpsc::channel(8);
        let rx = WatchClient::new(common::channel(addr).await)
            .watch(ReceiverStream::new(r))
            .await
            .expect("watch")
            .into_inner();
        W { tx, rx }
    }

    async fn send(&self, u: RequestUnion) {
        self.tx
            .send(pb::WatchRequest {
                request_union: Some(u),
            })
            .await
            .expect("send");
    }

    async fn next(&mut self) -> pb::WatchResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("watch answer in time")
            .expect("stream ok")
            .expect("stream open")
    }
}

fn create(key: &str, end: &[u8], rev: i64) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.as_bytes().to_vec(),
        range_end: end.to_vec(),
        start_revision: rev,
        ..Default::default()
    }
}

fn kinds(r: &pb::WatchResponse) -> Vec<(i32, String, i64)> {
    r.events
        .iter()
        .map(|e| {
            let kv = e.kv.clone().unwrap_or_default();
            (
                e.r#type,
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_semantics() {
    let c = Cluster::start(3);
    c.wait_leader(Duration::from_secs(20)).await;
    let ep = c.members[0].client.clone();
    let follower = c.members[1].client.clone();
    // History: revisions 2..=4. Values of 64 bytes and more are kept in
    // scratch files, and a write's event leaves its previous value there
    // until a watcher asks for it: the previous values below come from
    // there.
    let (x, y) = ("x".repeat(100), "y".repeat(64));
    put(&ep, "a/1", &x).await.expect("put");
    put(&ep, "a/2", &y).await.expect("put");
    put(&ep, "b", "z").await.expect("put");

    // Replay from revision 2 on a prefix, on a follower, then live events.
    let mut w = W::open(&follower).await;
    w.send(RequestUnion::CreateRequest(pb::WatchCreateRequest {
        prev_kv: true,
        ..create("a/", b"a0", 2)
    }))
    .await;
    let created = w.next().await;
    assert!(created.created);
    let id = created.watch_id;
    let mut replayed = Vec::new();
    while replayed.len() < 2 {
        replayed.extend(kinds(&w.next().await));
    }
    assert_eq!(replayed, vec![(0, "a/1".into(), 2), (0, "a/2".into(), 3)]);
    put(&ep, "a/1", "x2").await.expect("put");
    let live = w.next().await;
    assert_eq!(kinds(&live), vec![(0, "a/1".into(), 5)]);
    assert_eq!(
        live.events[0].prev_kv.as_ref().map(|p| p.value.clone()),
        Some(x.clone().into_bytes()),
        "prev_kv"
    );
    // A key outside the range is not seen; a delete is.
    put(&ep, "b", "z2").await.expect("put");
    let mut del = pb::DeleteRangeRequest {
        key: b"a/2".to_vec(),
        ..Default::default()
    };
    common::kv(&ep)
        .await
        .delete_range(del.clone())
        .await
        .expect("del");
    let d = w.next().await;
    assert_eq!(kinds(&d), vec![(1, "a/2".into(), 7)]);
    assert_eq!(
        d.events[0].prev_kv.as_ref().map(|p| p.value.clone()),
        Some(y.clone().into_bytes()),
        "a delete's prev_kv"
    );
    // Replayed from history on another stream, the previous values come
    // from the scratch files too, for a watcher that asks for them only.
    for prev_kv in [true, false] {
        let mut r = W::open(&follower).await;
        r.send(RequestUnion::CreateRequest(pb::WatchCreateRequest {
            prev_kv,
            ..create("a/", b"a0", 5)
        }))
        .await;
        assert!(r.next().await.created);
        let mut replayed = Vec::new();
        while replayed.len() < 2 {
            replayed.extend(r.next().await.events);
        }
        let prevs: Vec<Option<Vec<u8>>> = replayed
            .iter()
            .map(|e| e.prev_kv.as_ref().map(|p| p.value.clone()))
            .collect();
        let want = if prev_kv {
            vec![Some(x.clone().into_bytes()), Some(y.clone().into_bytes())]
        } else {
            vec![None, None]
        };
        assert_eq!(prevs, want, "replayed prev_kv, asked: {prev_kv}");
    }

    // Progress request: answered with the current revision.
    w.send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
        .await;
    let p = w.next().await;
    assert!(p.events.is_empty());
    assert_eq!(p.header.map(|h| h.revision), Some(7));

    // Filters: a second watcher on the same stream without deletes.
    w.send(RequestUnion::CreateRequest(pb::WatchCreateRequest {
        filters: vec![pb::watch_create_request::FilterType::Nodelete as i32],
        ..create("c", b"", 0)
    }))
    .await;
    let c2 = w.next().await;
    assert!(c2.created);
    assert_ne!(c2.watch_id, id);
    put(&ep, "c", "1").await.expect("put");
    del.key = b"c".to_vec();
    common::kv(&ep).await.delete_range(del).await.expect("del");
    put(&ep, "c", "2").await.expect("put");
    let e1 = w.next().await;
    let e2 = w.next().await;
    assert_eq!(e1.watch_id, c2.watch_id);
    assert_eq!(kinds(&e1), vec![(0, "c".into(), 8)]);
    assert_eq!(
        kinds(&e2),
        vec![(0, "c".into(), 10)],
        "the delete is filtered"
    );

    // Cancel.
    w.send(RequestUnion::CancelRequest(pb::WatchCancelRequest {
        watch_id: id,
    }))
    .await;
    let cancelled = w.next().await;
    assert!(cancelled.canceled);
    assert_eq!(cancelled.watch_id, id);

    // A compacted start revision: created, then cancelled with the
    // compact revision.
    common::kv(&ep)
        .await
        .compact(pb::CompactionRequest {
            revision: 6,
            physical: false,
        })
        .await
        .expect("compact");
    let mut w2 = W::open(&ep).await;
    w2.send(RequestUnion::CreateRequest(create("a/", b"a0", 2)))
        .await;
    let first = w2.next().await;
    assert!(first.created);
    let r = if first.canceled {
        first
    } else {
        w2.next().await
    };
    assert!(r.canceled);
    assert_eq!(r.compact_revision, 6);

    // A start revision in the future (as a client resuming on a member that
    // is behind asks for): nothing before it is delivered, from it on all.
    let mut w3 = W::open(&follower).await;
    w3.send(RequestUnion::CreateRequest(create("f/", b"f0", 13)))
        .await;
    assert!(w3.next().await.created);
    for i in 0..4 {
        put(&ep, &format!("f/{i}"), "v").await.expect("put"); // revisions 11..=14
    }
    let first = w3.next().await;
    assert_eq!(kinds(&first), vec![(0, "f/2".into(), 13)]);
    assert_eq!(kinds(&w3.next().await), vec![(0, "f/3".into(), 14)]);
}
