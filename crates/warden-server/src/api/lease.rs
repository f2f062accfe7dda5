//! etcd `Lease` service: Grant, Revoke, KeepAlive (stream), TimeToLive,
//! Leases.
//!
//! Grant and Revoke are commands through the log. KeepAlive and TimeToLive
//! go to the leader's lessor (`node::lessor`), forwarded when this member
//! is a follower; a keep-alive is answered from the leader's memory (see
//! the lessor for why a failover still never shortens a lease). Leases
//! lists the local table after a ReadIndex.
//!
//! Must never: answer a keep-alive anywhere but from the leader's lessor.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{Caller, Gate};
use super::error::{node_status, state_status};
use super::header;
use crate::node::peer_service::grpc_timeout;
use crate::node::{Consistency, Node};
use warden_core::state::lease::MAX_LEASE_TTL;
use warden_core::state::{Command, CommandResult, StateError};
use warden_proto::etcdserverpb as pb;

/// Keep-alive answers queued per stream.
const KEEPALIVE_QUEUE: usize = 64;

pub struct LeaseService {
    pub node: Arc<Node>,
    pub gate: Arc<Gate>,
}

/// Grants a lease: `id` as asked, or (0) one picked at random, again on a
/// collision; the TTL raised to the minimum. Returns (revision, id, ttl).
pub async fn grant(
    node: &Node,
    caller: &Caller,
    id: i64,
    ttl: i64,
    timeout: Option<std::time::Duration>,
) -> Result<(i64, i64, i64), Status> {
    grant_once(node, caller, id, ttl, timeout, None).await
}

/// [`grant`], at most once per client session `tag` when given: then one
/// attempt only (a retry with the same tag answers the first attempt's
/// lease, whatever id it picks itself).
pub async fn grant_once(
    node: &Node,
    caller: &Caller,
    id: i64,
    ttl: i64,
    timeout: Option<std::time::Duration>,
    tag: Option<warden_core::state::session::SessionTag>,
) -> Result<(i64, i64, i64), Status> {
    if ttl > MAX_LEASE_TTL {
        return Err(state_status(StateError::LeaseTtlTooLarge));
    }
    if id < 0 {
        return Err(Status::invalid_argument(
            "warden: lease id must not be negative",
        ));
    }
    let ttl = ttl.max(node.min_lease_ttl());
    let attempts = if id == 0 && tag.is_none() { 5 } else { 1 };
    let mut last = StateError::LeaseExists;
    for _ in 0..attempts {
        let want = if id != 0 {
            id
        } else {
            rand::random_range(1..i64::MAX)
        };
        let cmd = Command::LeaseGrant { id: want, ttl };
        match super::propose_once(node, timeout, caller, cmd, tag.clone()).await {
            Ok((rev, CommandResult::LeaseGrant { id, ttl })) => return Ok((rev, id, ttl)),
            Ok(_) => return Err(super::unexpected()),
            Err(super::Proposal::State(e @ StateError::LeaseExists)) => last = e,
            Err(e) => return Err(e.into()),
        }
    }
    Err(state_status(last))
}

impl LeaseService {
    fn revision(&self) -> i64 {
        self.node.status().revision
    }
}

pub type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let timeout = grpc_timeout(&request);
        let caller = self.gate.caller(&request)?;
        let tag = super::once::tag_of(&request)?;
        let tagged = tag.as_ref().map(|t| t.request_id);
        let r = request.into_inner();
        let (rev, id, ttl) = grant_once(&self.node, &caller, r.id, r.ttl, timeout, tag).await?;
        let resp = pb::LeaseGrantResponse {
            header: Some(header(&self.node, rev)),
            id,
            ttl,
            error: String::new(),
        };
        Ok(super::once::answer(resp, tagged))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let timeout = grpc_timeout(&request);
        let id = request.get_ref().id;
        let caller = self.gate.caller(&request)?;
        let tag = super::once::tag_of(&request)?;
        let tagged = tag.as_ref().map(|t| t.request_id);
        let cmd = Command::LeaseRevoke { id };
        let (rev, _) = super::propose_once(&self.node, timeout, &caller, cmd, tag).await?;
        let resp = pb::LeaseRevokeResponse {
            header: Some(header(&self.node, rev)),
        };
        Ok(super::once::answer(resp, tagged))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let caller = self.gate.caller(&request)?;
        Ok(Response::new(self.keep_alive(caller, request.into_inner())))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let deadline = self.node.deadline(grpc_timeout(&request));
        let caller = self.gate.caller(&request)?;
        self.gate
            .check_lease(&caller, Some(request.get_ref().id), false)?;
        let r = request.into_inner();
        let answer = self
            .node
            .lease_time_to_live(r.id, deadline)
            .await
            .map_err(node_status)?;
        let resp = match answer {
            Ok(t) => pb::LeaseTimeToLiveResponse {
                header: Some(header(&self.node, self.revision())),
                id: t.id,
                ttl: t.remaining,
                granted_ttl: t.granted,
                keys: if r.keys { t.keys } else { Vec::new() },
            },
            // etcd: an unknown (e.g. expired) lease has TTL -1.
            Err(StateError::LeaseNotFound) => pb::LeaseTimeToLiveResponse {
                header: Some(header(&self.node, self.revision())),
                id: r.id,
                ttl: -1,
                ..Default::default()
            },
            Err(e) => return Err(state_status(e)),
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let deadline = self.node.deadline(grpc_timeout(&request));
        let caller = self.gate.caller(&request)?;
        self.gate.check_lease(&caller, None, false)?;
        let (rev, leases) = self
            .node
            .read(Consistency::Linearizable, deadline, |d| {
                // Only the ids are copied under the state lock.
                let ids: Vec<i64> = d.kv.leases().iter().map(|l| l.id).collect();
                (d.kv.revision(), ids)
            })
            .await
            .map_err(node_status)?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(header(&self.node, rev)),
            leases: leases
                .into_iter()
                .map(|id| pb::LeaseStatus { id })
                .collect(),
        }))
    }
}

impl LeaseService {
    /// Answers the keep-alives of `incoming` for `caller` until it ends, a
    /// renewal fails, or nobody reads the answers (gRPC's stream, or the
    /// JSON gateway's values parsed from an HTTP body).
    pub fn keep_alive(
        &self,
        caller: Caller,
        mut incoming: impl Stream<Item = Result<pb::LeaseKeepAliveRequest, Status>>
            + Unpin
            + Send
            + 'static,
    ) -> KeepAliveStream {
        let (tx, rx) = mpsc::channel(KEEPALIVE_QUEUE);
        let node = self.node.clone();
        let gate = self.gate.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = incoming.next() => m,
                    () = tx.closed() => None,
                };
                let Some(Ok(msg)) = msg else { break };
                if let Err(e) = gate.check_lease(&caller, Some(msg.id), true) {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
                let deadline = node.deadline(None);
                let answer = match node.lease_renew(msg.id, deadline).await {
                    // etcd answers a renewal of an unknown lease with TTL 0.
                    Ok(r) => Ok(pb::LeaseKeepAliveResponse {
                        header: Some(header(&node, node.status().revision)),
                        id: msg.id,
                        ttl: r.unwrap_or(0),
                    }),
                    Err(e) => Err(node_status(e)),
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    break;
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}
