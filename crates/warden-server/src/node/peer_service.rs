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

/// The deadline a caller set with grpc-timeout, if any.
pub fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
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
        // Decode until the first bad or failed message; the stream then ends
        // and the leader re-establishes replication.
        let input = incoming
            .take_while(|m| futures::future::ready(m.is_ok()))
            .filter_map(|m| async move {
                let blob = m.ok()?;
                match decode::<AppendEntriesRequest<TypeConfig>>(&blob) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!("stream_append: {e}");
                        None
                    }
                }
            });
        let out = self.node.raft.stream_append(input).map(|item| {
            let r: Remote<_> = item.map_err(|fatal| fatal.to_string());
            encode(&r).map_err(Status::internal)
        });
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
            while let Some(chunk) = incoming.next().await {
                let chunk = chunk?;
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
        let fwd: ForwardRequest = decode(req.get_ref()).map_err(bad)?;
        let resp = self.node.handle_forward(fwd, deadline).await;
        encode(&resp).map(Response::new).map_err(Status::internal)
    }
}
