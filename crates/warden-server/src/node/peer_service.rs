//! Incoming peer transport: the `RaftPeer` gRPC service. Decodes openraft
//! messages and hands them to the local Raft; serves forwarded client
//! requests when this member is the leader.
//!
//! Must never: trust a peer's bytes (decode failures are `InvalidArgument`),
//! or install a snapshot before the whole file arrived and verified.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use super::network::{decode, encode, Remote, SnapshotHeader};
use super::state_machine::SnapshotFile;
use super::types::TypeConfig;
use super::{ForwardRequest, Node};
use warden_proto::peer::raft_peer_server::RaftPeer;
use warden_proto::peer::Blob;

/// The peer service of one member (serve it on the peer address).
pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    pub fn new(node: Arc<Node>) -> Self {
        PeerService { node }
    }
}

fn bad(e: String) -> Status {
    Status::invalid_argument(e)
}

fn reply<T: serde::Serialize>(v: &Remote<T>) -> Result<Response<Blob>, Status> {
    encode(v).map(Response::new).map_err(Status::internal)
}

/// Largest snapshot file accepted over `InstallSnapshot` (8 GiB, etcd's
/// largest suggested backend quota), so a peer cannot fill the disk.
pub const MAX_SNAPSHOT_BYTES: u64 = 8 << 30;

/// Largest `Forward` message served. Members forward client requests,
/// which are bounded by `--max-request-bytes` (1.5 MiB by default); a
/// forwarded write becomes one log entry, and an entry close to the peer
/// message limit (`MAX_MESSAGE`, 64 MiB) would not fit in the message that
/// replicates it, wedging replication. Half of it leaves room.
pub const MAX_FORWARD_BYTES: usize = super::network::MAX_MESSAGE / 2;

/// Longest `grpc-timeout` taken from a caller: one day. The header allows
/// up to 99 999 999 hours; anything longer than this is taken as this (the
/// node then caps the deadline to a few request timeouts anyway).
pub const MAX_GRPC_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The deadline a caller set with grpc-timeout, if any, at most
/// [`MAX_GRPC_TIMEOUT`]. A malformed header counts as none.
pub fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(v)
}

/// Parses a `grpc-timeout` value (`<digits><unit>`, unit one of
/// `H M S m u n`) without overflow, capped at [`MAX_GRPC_TIMEOUT`].
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (num, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // More digits than u64 holds is simply "very long".
    let n: u64 = num.parse().unwrap_or(u64::MAX);
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(d.min(MAX_GRPC_TIMEOUT))
}

type BlobStream = Pin<Box<dyn Stream<Item = Result<Blob, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref()).map_err(bad)?;
        let r = self
            .node
            .raft
            .append_entries(rpc)
            .await
            .map_err(|e| e.to_string());
        reply(&r)
    }

    async fn vote(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref()).map_err(bad)?;
        let r = self.node.raft.vote(rpc).await.map_err(|e| e.to_string());
        reply(&r)
    }

    async fn pre_vote(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref()).map_err(bad)?;
        let r = self
            .node
            .raft
            .pre_vote(rpc)
            .await
            .map_err(|e| e.to_string());
        reply(&r)
    }

    type StreamAppendStream = BlobStream;

    async fn stream_append(
        &self,
        req: Request<Streaming<Blob>>,
    ) -> Result<Response<BlobStream>, Status> {
        let incoming = req.into_inner();
        // Decode until the first bad or failed message; the input then ends,
        // the answer stream ends with InvalidArgument naming the problem,
        // and the leader re-establishes replication.
        let bad_message = Arc::new(std::sync::Mutex::new(None::<String>));
        let seen = bad_message.clone();
        let input = incoming
            .take_while(|m| futures::future::ready(m.is_ok()))
            .map(move |m| match m {
                Ok(blob) => decode::<AppendEntriesRequest<TypeConfig>>(&blob).map_err(|e| {
                    tracing::warn!("stream_append: {e}");
                    if let Ok(mut slot) = seen.lock() {
                        *slot = Some(e);
                    }
                }),
                Err(_) => Err(()),
            })
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| futures::future::ready(r.ok()));
        let out = self.node.raft.stream_append(input).map(|item| {
            let r: Remote<_> = item.map_err(|fatal| fatal.to_string());
            encode(&r).map_err(Status::internal)
        });
        let last = futures::stream::once(async move {
            bad_message
                .lock()
                .ok()
                .and_then(|mut slot| slot.take())
                .map(|e| Err(bad(e)))
        })
        .filter_map(futures::future::ready);
        let out = out.chain(last);
        Ok(Response::new(Box::pin(out)))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<Blob>>,
    ) -> Result<Response<Blob>, Status> {
        let mut incoming = req.into_inner();
        let first = incoming
            .next()
            .await
            .ok_or_else(|| bad("empty snapshot stream".into()))??;
        let header: SnapshotHeader = decode(&first).map_err(bad)?;
        let dir = self.node.config.data_dir.join("snap");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Status::internal(format!("create {}: {e}", dir.display())))?;
        let tmp = dir.join(format!("recv-{:016x}.tmp", rand::random::<u64>()));
        let result = async {
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| Status::internal(format!("create {}: {e}", tmp.display())))?;
            let mut received: u64 = 0;
            while let Some(chunk) = incoming.next().await {
                let chunk = chunk?;
                received = received.saturating_add(chunk.data.len() as u64);
                if received > MAX_SNAPSHOT_BYTES {
                    return Err(bad(format!(
                        "snapshot larger than {MAX_SNAPSHOT_BYTES} bytes refused"
                    )));
                }
                f.write_all(&chunk.data)
                    .await
                    .map_err(|e| Status::internal(format!("write {}: {e}", tmp.display())))?;
            }
            f.sync_all()
                .await
                .map_err(|e| Status::internal(format!("sync {}: {e}", tmp.display())))?;
            // Verify before Raft sees it: a truncated stream is refused here.
            let check = tmp.clone();
            tokio::task::spawn_blocking(move || {
                super::state_machine::load_snapshot(&check).map(|_| ())
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::data_loss(e.to_string()))?;
            let snapshot = openraft::storage::Snapshot {
                meta: header.meta,
                snapshot: SnapshotFile { path: tmp.clone() },
            };
            let r = self
                .node
                .raft
                .install_full_snapshot(header.vote, snapshot)
                .await
                .map_err(|e| e.to_string());
            reply(&r)
        }
        .await;
        if tmp.exists() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn transfer_leader(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = decode(req.get_ref()).map_err(bad)?;
        let r = self
            .node
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| e.to_string());
        reply(&r)
    }

    async fn forward(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let deadline = self.node.deadline(grpc_timeout(&req));
        let len = req.get_ref().data.len();
        if len > MAX_FORWARD_BYTES {
            return Err(bad(format!(
                "forwarded request of {len} bytes is larger than {MAX_FORWARD_BYTES}: \
                 etcdserver: request is too large"
            )));
        }
        let fwd: ForwardRequest = decode(req.get_ref()).map_err(bad)?;
        let resp = self.node.handle_forward(fwd, deadline).await;
        encode(&resp).map(Response::new).map_err(Status::internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::forward::ForwardResponse;
    use openraft::raft::{
        AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteResponse,
    };
    use proptest::prelude::*;
    use warden_core::state::MAX_NESTING;

    /// Hand-built postcard bytes of a `Forward` write of a txn with `depth`
    /// txns nested below it, as a hostile peer would send them.
    fn nested_forward_write(depth: usize) -> Vec<u8> {
        // ForwardRequest::Write(Request::Kv(Command::Txn(..)))
        let mut b = vec![0u8, 0, 2];
        for _ in 0..depth {
            b.extend_from_slice(&[0, 1, 3]); // compare: [], success: [Txn(..)]
        }
        b.extend_from_slice(&[0, 0, 0]);
        b.extend(std::iter::repeat_n(0u8, depth)); // failure: []
        b
    }

    fn blob(data: Vec<u8>) -> Blob {
        Blob { data }
    }

    /// Every decoder a peer's bytes reach: the requests this member serves
    /// and the replies it reads as a client of its peers.
    fn decode_all(data: &[u8]) {
        let b = blob(data.to_vec());
        let _ = decode::<AppendEntriesRequest<TypeConfig>>(&b);
        let _ = decode::<VoteRequest<TypeConfig>>(&b);
        let _ = decode::<SnapshotHeader>(&b);
        let _ = decode::<TransferLeaderRequest<TypeConfig>>(&b);
        let _ = decode::<ForwardRequest>(&b);
        let _ = decode::<ForwardResponse>(&b);
        let _ = decode::<Remote<AppendEntriesResponse<TypeConfig>>>(&b);
        let _ = decode::<Remote<StreamAppendResult<TypeConfig>>>(&b);
        let _ = decode::<Remote<VoteResponse<TypeConfig>>>(&b);
        let _ = decode::<Remote<SnapshotResponse<TypeConfig>>>(&b);
        let _ = decode::<Remote<()>>(&b);
    }

    #[test]
    fn hand_built_forward_matches_postcard() {
        use warden_core::state::types::{RequestOp, TxnRequest};
        let mut t = TxnRequest::default();
        for _ in 0..3 {
            t = TxnRequest {
                compare: Vec::new(),
                success: vec![RequestOp::Txn(t)],
                failure: Vec::new(),
            };
        }
        let fwd = ForwardRequest::Write(crate::node::types::Request::Kv(
            warden_core::state::Command::Txn(t),
        ));
        assert_eq!(encode(&fwd).unwrap().data, nested_forward_write(3));
        assert!(decode::<ForwardRequest>(&blob(nested_forward_write(MAX_NESTING))).is_ok());
    }

    #[test]
    fn deeply_nested_forward_is_a_decode_error_on_a_small_stack() {
        let r = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(|| {
                let deep = blob(nested_forward_write(10_000));
                let once = decode::<ForwardRequest>(&deep).map(|_| ());
                let one_more =
                    decode::<ForwardRequest>(&blob(nested_forward_write(MAX_NESTING + 1)))
                        .map(|_| ());
                (once, one_more)
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(r.0.is_err() && r.1.is_err(), "{r:?}");
        assert!(r.0.unwrap_err().starts_with("decode peer message"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic_a_peer_decoder(
            data in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            decode_all(&data);
        }

        #[test]
        fn random_tails_after_valid_prefixes_never_panic(
            prefix in 0usize..4,
            tail in proptest::collection::vec(any::<u8>(), 0..256)
        ) {
            // Start like a real message, so decoding goes deep before the
            // garbage: a Forward write, a nested txn, an entry list.
            let starts: [&[u8]; 4] = [&[0, 0, 2], &[0, 0, 11, 1, b'l', 1], &[0, 0, 2, 0, 1, 3], &[1]];
            let mut data = starts[prefix].to_vec();
            data.extend_from_slice(&tail);
            decode_all(&data);
        }
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
    }

    #[test]
    fn grpc_timeout_malformed_is_none() {
        for v in [
            "", "S", "5", "5x", "-5S", "+5S", "5 S", "5.0S", "\u{e9}S", "5\u{e9}",
        ] {
            assert_eq!(parse_grpc_timeout(v), None, "{v:?}");
        }
    }

    #[test]
    fn grpc_timeout_huge_values_saturate_at_the_cap() {
        let max = u64::MAX.to_string();
        for v in [
            format!("{max}H"),
            format!("{max}M"),
            format!("{max}S"),
            format!("{max}m"),
            format!("{max}u"),
            format!("{max}n"),
            "99999999H".to_string(),
            "5124095576030431H".to_string(), // * 3600 overflows u64
            "99999999999999999999999999S".to_string(), // more than u64
        ] {
            assert_eq!(parse_grpc_timeout(&v), Some(MAX_GRPC_TIMEOUT), "{v}");
        }
    }

    #[test]
    fn grpc_timeout_from_metadata() {
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("grpc-timeout", "99999999H".parse().unwrap());
        assert_eq!(grpc_timeout(&req), Some(MAX_GRPC_TIMEOUT));
    }
}
