//! Hostile bytes on a member's peer port: a deeply nested `Forward` write
//! (which overflowed the stack and aborted the process before decoding was
//! depth-bounded) and garbage on every peer RPC must each get an error
//! answer, and the member must keep serving. The bytes are sent with a
//! real member's identity metadata (cluster id and member id), so they get
//! past admission to the decoders; without it, they are refused unread.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::time::Duration;

use common::{as_member, eventually, forward_batch_blob, get, ids, put, Cluster};
use tonic::transport::Channel;
use warden_proto::peer::raft_peer_client::RaftPeerClient;
use warden_proto::peer::Blob;

const ELECT: Duration = Duration::from_secs(20);

/// postcard bytes of `ForwardRequest::Write(Request::Kv(Command::Txn(..)))`
/// with `depth` txns nested below the top one, built by hand as an
/// attacker would (~4 bytes a level).
fn nested_forward_write(depth: usize) -> Vec<u8> {
    let mut b = vec![0u8, 0, 2];
    for _ in 0..depth {
        b.extend_from_slice(&[0, 1, 3]); // compare: [], success: [Txn(..)]
    }
    b.extend_from_slice(&[0, 0, 0]);
    b.extend(std::iter::repeat_n(0u8, depth)); // failure: []
    b
}

/// Pseudo-random bytes that no peer message decodes from: they start with
/// an over-long varint (every message starts with one), then noise.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = vec![0xff; 11];
    out.extend((0..len).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    out
}

async fn peer_client(addr: &str) -> RaftPeerClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    RaftPeerClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// One `ForwardStream` message: postcard `(seq, timeout_ms, bytes)`.
fn forward_stream_message(seq: u8, item: &[u8]) -> Blob {
    let mut data = vec![seq, 100];
    let mut n = item.len();
    while n >= 0x80 {
        data.push((n as u8) | 0x80);
        n >>= 7;
    }
    data.push(n as u8);
    data.extend_from_slice(item);
    Blob { data }
}

/// How an answer stream ended: its error, or the last answer (if any).
async fn last_answer(
    answers: Result<tonic::Response<tonic::Streaming<Blob>>, tonic::Status>,
) -> Result<Option<Blob>, tonic::Status> {
    let mut answers = answers?.into_inner();
    let mut last = Ok(None);
    while let Some(r) = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("answers within 10 s")
        .transpose()
    {
        last = r.map(Some);
        if last.is_err() {
            break;
        }
    }
    last
}

fn assert_refused<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>) {
    match r {
        Ok(v) => panic!("{what}: accepted: {v:?}"),
        Err(s) => assert_eq!(s.code(), tonic::Code::InvalidArgument, "{what}: {s:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_input_is_refused_and_the_member_keeps_serving() {
    let mut c = Cluster::start(3);
    c.wait_leader(ELECT).await;
    // Attack a member (whether it leads or not: it decodes either way).
    let victim = 1;
    let peer = c.members[victim].peer.clone();
    let mut p = peer_client(&peer).await;
    // Speak as member 0 of this cluster.
    let (cluster, _, _) = ids(&c.members[victim].client).await.unwrap();
    let (_, member, _) = ids(&c.members[0].client).await.unwrap();
    let me = |b: Blob| as_member(b, cluster, member);
    let me_stream = |b: Blob| as_member(futures::stream::iter(vec![b]), cluster, member);

    // ~40 KB of nesting: 10 000 levels, far past the bound of 129.
    let deep = nested_forward_write(10_000);
    assert!(deep.len() < 64 << 10);
    // Without identity: refused before it is read.
    let anonymous = p.forward(Blob { data: deep.clone() }).await.unwrap_err();
    assert_eq!(
        anonymous.code(),
        tonic::Code::PermissionDenied,
        "{anonymous:?}"
    );
    assert_refused(
        "deep forward",
        p.forward(me(Blob { data: deep.clone() })).await,
    );
    for seed in 1..=8u64 {
        for len in [0usize, 7, 300, 5000] {
            let data = garbage(seed, len);
            let blob = || me(Blob { data: data.clone() });
            let stream = || me_stream(Blob { data: data.clone() });
            assert_refused("append_entries", p.append_entries(blob()).await);
            assert_refused("vote", p.vote(blob()).await);
            assert_refused("pre_vote", p.pre_vote(blob()).await);
            assert_refused("transfer_leader", p.transfer_leader(blob()).await);
            assert_refused("forward", p.forward(blob()).await);
            assert_refused("forward_batch", p.forward_batch(blob()).await);
            assert_refused(
                "garbage write in a forward batch",
                p.forward_batch(me(forward_batch_blob(std::slice::from_ref(&data))))
                    .await,
            );
            assert_refused("install_snapshot", p.install_snapshot(stream()).await);
            // A stream: the answer stream ends with the error.
            assert_refused(
                "stream_append",
                last_answer(p.stream_append(stream()).await).await,
            );
            assert_refused(
                "forward_stream",
                last_answer(p.forward_stream(stream()).await).await,
            );
            assert_refused(
                "garbage write on a forward stream",
                last_answer(
                    p.forward_stream(me_stream(forward_stream_message(1, &data)))
                        .await,
                )
                .await,
            );
        }
    }
    // A forwarded write too large to replicate as one entry (zeros decode
    // as a put, so only the size check refuses this).
    assert_refused(
        "oversized forward",
        p.forward(me(Blob {
            data: vec![0; 33 << 20],
        }))
        .await,
    );
    // The same deep write inside a batch of forwarded writes (a batched
    // write is the `Request` without the `ForwardRequest` tag, then an
    // absent request id).
    let mut deep_item = deep[1..].to_vec();
    deep_item.push(0);
    assert_refused(
        "deep write in a forward batch",
        p.forward_batch(me(forward_batch_blob(std::slice::from_ref(&deep_item))))
            .await,
    );
    // A batch over the bounds: too many writes, or too many bytes.
    assert_refused(
        "forward batch of 257 writes",
        p.forward_batch(me(forward_batch_blob(&vec![Vec::new(); 257])))
            .await,
    );
    assert_refused(
        "oversized forward batch",
        p.forward_batch(me(forward_batch_blob(&[vec![0; 33 << 20]])))
            .await,
    );
    // The same on a forward stream (a streamed request is the
    // `ForwardRequest`, then an absent request id), a kind of request the
    // stream does not carry (a membership question), and a message over
    // the size bound (refused before it is decoded; zeros would decode as
    // a put).
    let mut deep_request = deep.clone();
    deep_request.push(0);
    assert_refused(
        "deep write on a forward stream",
        last_answer(
            p.forward_stream(me_stream(forward_stream_message(1, &deep_request)))
                .await,
        )
        .await,
    );
    assert_refused(
        "membership question on a forward stream",
        last_answer(
            p.forward_stream(me_stream(forward_stream_message(1, &[5, 0])))
                .await,
        )
        .await,
    );
    assert_refused(
        "oversized write on a forward stream",
        last_answer(
            p.forward_stream(me_stream(Blob {
                data: vec![0; 33 << 20],
            }))
            .await,
        )
        .await,
    );
    // Without identity the stream is not even opened.
    let anonymous = p
        .forward_stream(futures::stream::iter(vec![forward_stream_message(1, &[])]))
        .await
        .unwrap_err();
    assert_eq!(
        anonymous.code(),
        tonic::Code::PermissionDenied,
        "{anonymous:?}"
    );
    // Empty messages are not messages either.
    assert!(p.forward(me(Blob { data: vec![] })).await.is_err());
    assert!(p.vote(me(Blob { data: vec![] })).await.is_err());

    // Still running, and still serving writes and linearizable reads.
    let child = c.members[victim].child.as_mut().unwrap();
    assert!(child.try_wait().unwrap().is_none(), "the member exited");
    let client = c.members[victim].client.clone();
    eventually(ELECT, || {
        let client = client.clone();
        async move {
            put(&client, "after", "attack")
                .await
                .map_err(|e| e.to_string())?;
            match get(&client, "after", false).await {
                Ok(Some(v)) if v == b"attack" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    // The deep payload once more, now that the cluster has data.
    assert_refused(
        "deep forward again",
        p.forward(me(Blob { data: deep })).await,
    );
    let child = c.members[victim].child.as_mut().unwrap();
    assert!(child.try_wait().unwrap().is_none(), "the member exited");
}
