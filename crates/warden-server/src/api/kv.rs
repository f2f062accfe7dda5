//! etcd `KV` service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Writes become `Request::Kv` commands proposed through `Node::write`; the
//! applied result is converted back. Linearizable ranges wait on
//! `Node::linearize` (ReadIndex) and then read the local state; serializable
//! ranges read the local state at once.
//!
//! Must never: answer a default (linearizable) range without `linearize`.

use crate::api::convert::{ConvertFrom, TryConvertFrom};
use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

use super::auth::Gate;
use super::error::{check_request_size, node_status, state_status};
use super::header;
use crate::node::peer_service::grpc_timeout;
use crate::node::{Consistency, Node};
use warden_core::state::types as st;
use warden_core::state::{validate, Command, CommandResult};
use warden_proto::etcdserverpb as pb;

pub struct KvService {
    pub node: Arc<Node>,
    pub gate: Arc<Gate>,
    pub max_request_bytes: usize,
}

impl KvService {
    fn check_size<M: Message>(&self, m: &M) -> Result<(), Status> {
        check_request_size(m, self.max_request_bytes)
    }

    /// Proposes `cmd` as the caller of `req` (checked when applied), at
    /// most once if `req` carries session metadata (`once`).
    async fn propose<T>(
        &self,
        req: &Request<T>,
        cmd: Command,
    ) -> Result<(i64, CommandResult, Option<u64>), Status> {
        let caller = self.gate.caller(req)?;
        let tag = super::once::tag_of(req)?;
        let id = tag.as_ref().map(|t| t.request_id);
        let (rev, res) =
            super::propose_once(&self.node, grpc_timeout(req), &caller, cmd, tag).await?;
        Ok((rev, res, id))
    }
}

use super::once::answer;
use super::unexpected;

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(
        &self,
        mut request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        // Each method moves the message out of the request, which keeps its
        // metadata (the caller's token, a session tag, the deadline).
        let r = st::RangeRequest::try_convert_from(std::mem::take(request.get_mut()))?;
        let caller = self.gate.caller(&request)?;
        let (key, range_end) = (r.key.clone(), r.range_end.clone());
        // A serializable range is refused until this member is ready
        // (`Node::ready_for_reads`).
        let consistency = if r.serializable {
            // Served from this member's state: checked against it.
            self.gate.check_range(&caller, &key, &range_end)?;
            Consistency::Serializable
        } else {
            Consistency::Linearizable
        };
        let deadline = self.node.deadline(grpc_timeout(&request));
        // A read at an old revision may read history back from the
        // scratch files (`storage::cold`): a disk read, off the workers too.
        let scan = !r.range_end.is_empty() || r.revision != 0;
        let (rev, out) = self
            .node
            .read_kv(consistency, deadline, scan, move |m| {
                (m.current_revision(), m.range(&r))
            })
            .await
            .map_err(node_status)?;
        if consistency == Consistency::Linearizable {
            // Checked after the read barrier, as etcd does: this member has
            // then applied every auth change committed before the read
            // began (an `AuthEnable`, a revoked permission), which its state
            // before the barrier may not have.
            self.gate.check_range(&caller, &key, &range_end)?;
        }
        let out = out.map_err(state_status)?;
        let mut resp = pb::RangeResponse::convert_from(out);
        resp.header = Some(header(&self.node, rev));
        Ok(Response::new(resp))
    }

    async fn put(
        &self,
        mut request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        self.check_size(request.get_ref())?;
        let put = st::PutRequest::convert_from(std::mem::take(request.get_mut()));
        validate::check_put_request(&put).map_err(state_status)?;
        let cmd = Command::Put(put);
        let (rev, res, tagged) = self.propose(&request, cmd).await?;
        let CommandResult::Put(p) = res else {
            return Err(unexpected());
        };
        let mut resp = pb::PutResponse::convert_from(p);
        resp.header = Some(header(&self.node, rev));
        Ok(answer(resp, tagged))
    }

    async fn delete_range(
        &self,
        mut request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        self.check_size(request.get_ref())?;
        let del = st::DeleteRangeRequest::convert_from(std::mem::take(request.get_mut()));
        validate::check_delete_request(&del).map_err(state_status)?;
        let cmd = Command::DeleteRange(del);
        let (rev, res, tagged) = self.propose(&request, cmd).await?;
        let CommandResult::DeleteRange(d) = res else {
            return Err(unexpected());
        };
        let mut resp = pb::DeleteRangeResponse::convert_from(d);
        resp.header = Some(header(&self.node, rev));
        Ok(answer(resp, tagged))
    }

    async fn txn(
        &self,
        mut request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        self.check_size(request.get_ref())?;
        let txn = st::TxnRequest::try_convert_from(std::mem::take(request.get_mut()))?;
        validate::check_txn_request(&txn).map_err(state_status)?;
        let cmd = Command::Txn(txn);
        let (rev, res, tagged) = self.propose(&request, cmd).await?;
        let CommandResult::Txn(t) = res else {
            return Err(unexpected());
        };
        let mut resp = pb::TxnResponse::convert_from(t);
        set_nested_headers(&mut resp.responses, rev);
        resp.header = Some(header(&self.node, rev));
        Ok(answer(resp, tagged))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let cmd = Command::Compact(st::CompactionRequest::convert_from(*request.get_ref()));
        let (rev, res, _) = self.propose(&request, cmd).await?;
        let CommandResult::Compact = res else {
            return Err(unexpected());
        };
        Ok(Response::new(pb::CompactionResponse {
            header: Some(header(&self.node, rev)),
        }))
    }
}

/// etcd gives every response nested in a txn a header holding only the
/// txn's revision; do the same, at every depth.
pub(crate) fn set_nested_headers(responses: &mut [pb::ResponseOp], rev: i64) {
    use pb::response_op::Response as R;
    let h = || {
        Some(pb::ResponseHeader {
            revision: rev,
            ..Default::default()
        })
    };
    for r in responses.iter_mut().filter_map(|r| r.response.as_mut()) {
        match r {
            R::ResponseRange(x) => x.header = h(),
            R::ResponsePut(x) => x.header = h(),
            R::ResponseDeleteRange(x) => x.header = h(),
            R::ResponseTxn(x) => {
                x.header = h();
                set_nested_headers(&mut x.responses, rev);
            }
        }
    }
}
