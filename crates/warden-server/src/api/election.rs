//! etcd `v3election.Election` service, with the algorithm of etcd's
//! `concurrency.Election` (so it interoperates with `etcdctl elect`):
//! candidates put `name/<lease hex>` under their lease; the oldest key is the
//! leader and its value the proclaimed value.
//!
//! - `Campaign` blocks until the caller leads; `Proclaim` changes the value
//!   only while the caller still leads; `Resign` deletes the leader key.
//! - `Leader` answers the current leader's key-value; `Observe` streams it
//!   each time it changes.

use crate::api::convert::ConvertFrom;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth::Gate;
use super::error::check_request_size;
use super::header;
use super::recipes::{by_create, create_or_get, txn, wait_turn, KeyGuard};
use super::v3lock::{lease_or_session, lock_keys};
use crate::node::peer_service::grpc_timeout;
use crate::node::Node;
use warden_client::keys::prefix_range_end as prefix_end;
use warden_core::state::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
};
use warden_proto::etcdserverpb as etcdpb;
use warden_proto::mvccpb;
use warden_proto::v3electionpb as pb;

pub struct ElectionService {
    pub node: Arc<Node>,
    pub gate: Arc<Gate>,
    /// `--max-request-bytes`: larger requests are refused.
    pub max_request_bytes: usize,
}

fn not_leader() -> Status {
    Status::failed_precondition("election: not leader")
}

/// A candidate's key was deleted before it led (its lease expired).
fn session_expired() -> Status {
    Status::failed_precondition("etcdserver: session expired: the candidate's lease is gone")
}

fn no_leader() -> Status {
    Status::not_found("election: no leader")
}

/// A txn that does `op` only if `leader`'s key still has its create revision.
fn if_still_leader(leader: &pb::LeaderKey, op: RequestOp) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::CreateRevision(leader.rev),
            key: leader.key.clone(),
            range_end: Vec::new(),
        }],
        success: vec![op],
        failure: vec![],
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::election_server::Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        check_request_size(request.get_ref(), self.max_request_bytes)?;
        let timeout = grpc_timeout(&request);
        let caller = self.gate.caller(&request)?;
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        let node = &self.node;
        let lease = lease_or_session(node, &caller, r.lease, timeout).await?;
        let (prefix, key) = lock_keys(&r.name, lease);
        let (created, my_rev, owner, rev) =
            create_or_get(node, &caller, &prefix, &key, &r.value, lease).await?;
        let guard = created.then(|| KeyGuard::new(node.clone(), caller.clone(), key.clone()));
        let leader = pb::LeaderKey {
            name: r.name.clone(),
            key: key.clone(),
            rev: my_rev,
            lease,
        };
        let (mut rev, mut leads) = (rev, owner.is_some_and(|o| o.create_revision == my_rev));
        if !created {
            // Already campaigning with this lease: refresh the value.
            let put = RequestOp::Put(PutRequest {
                key: key.clone(),
                value: r.value.clone(),
                lease,
                ..Default::default()
            });
            let (after, t) = txn(node, &caller, if_still_leader(&leader, put), None).await?;
            rev = after;
            // Gone since: `wait_turn` finds out.
            leads &= t.succeeded;
        }
        // Uncontended, the create txn already answered the oldest key;
        // otherwise wait for the keys ahead to go (fails if ours goes first).
        let turn = if leads {
            Some(rev)
        } else {
            wait_turn(node, &caller, &prefix, &key, my_rev, rev).await?
        };
        if let Some(g) = guard {
            g.disarm();
        }
        let rev = turn.ok_or_else(session_expired)?;
        Ok(Response::new(pb::CampaignResponse {
            header: Some(header(node, rev)),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        check_request_size(request.get_ref(), self.max_request_bytes)?;
        let timeout = grpc_timeout(&request);
        let caller = self.gate.caller(&request)?;
        let r = request.into_inner();
        let leader = r.leader.ok_or_else(not_leader)?;
        let put = RequestOp::Put(PutRequest {
            key: leader.key.clone(),
            value: r.value,
            lease: leader.lease,
            ..Default::default()
        });
        let (rev, t) = txn(&self.node, &caller, if_still_leader(&leader, put), timeout).await?;
        if !t.succeeded {
            return Err(not_leader());
        }
        Ok(Response::new(pb::ProclaimResponse {
            header: Some(header(&self.node, rev)),
        }))
    }

    async fn leader(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        let caller = self.gate.caller(&request)?;
        let mut prefix = request.into_inner().name;
        prefix.push(b'/');
        let (rev, kv) = by_create(&self.node, &caller, &prefix, true, 0).await?;
        let kv = kv.ok_or_else(no_leader)?;
        Ok(Response::new(pb::LeaderResponse {
            header: Some(header(&self.node, rev)),
            kv: Some(mvccpb::KeyValue::convert_from(kv)),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let caller = self.gate.caller(&request)?;
        let mut prefix = request.into_inner().name;
        prefix.push(b'/');
        self.gate
            .check_range(&caller, &prefix, &prefix_end(&prefix))?;
        let (tx, rx) = mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                // Subscribe first, then read: a change after the read is
                // then seen on the subscription. The guard unsubscribes on
                // every way out of this iteration.
                let Ok(mut sub) = node.subscribe(prefix.clone(), prefix_end(&prefix)) else {
                    return;
                };
                let current = by_create(&node, &caller, &prefix, true, 0).await;
                let (rev, kv) = match current {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if let Some(kv) = kv {
                    let id = (kv.key.clone(), kv.mod_revision);
                    if last.as_ref() != Some(&id) {
                        last = Some(id);
                        let resp = pb::LeaderResponse {
                            header: Some(header(&node, rev)),
                            kv: Some(mvccpb::KeyValue::convert_from(kv)),
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::select! {
                    _ = sub.recv() => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        request: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        check_request_size(request.get_ref(), self.max_request_bytes)?;
        let timeout = grpc_timeout(&request);
        let caller = self.gate.caller(&request)?;
        let leader = request.into_inner().leader.ok_or_else(not_leader)?;
        let del = RequestOp::DeleteRange(DeleteRangeRequest {
            key: leader.key.clone(),
            range_end: Vec::new(),
            prev_kv: false,
        });
        let (rev, _) = txn(&self.node, &caller, if_still_leader(&leader, del), timeout).await?;
        Ok(Response::new(pb::ResignResponse {
            header: Some(etcdpb::ResponseHeader {
                revision: rev,
                ..header(&self.node, rev)
            }),
        }))
    }
}
