//! etcd `Cluster` service. MemberList answers from the membership Raft holds
//! plus the client addresses members published. Membership changes are not
//! offered yet (see the cluster operations issue).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::header;
use crate::node::Node;
use crate::proto::etcdserverpb as pb;

pub struct ClusterService {
    pub node: Arc<Node>,
}

pub fn members(node: &Node) -> Result<Vec<pb::Member>, Status> {
    let st = node.status();
    let d = node
        .sm
        .read()
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(st
        .members
        .iter()
        .map(|(id, m)| pb::Member {
            id: *id,
            name: m.name.clone(),
            peer_urls: vec![format!("http://{}", m.peer_addr)],
            client_urls: d
                .client_addrs
                .get(id)
                .map(|a| vec![format!("http://{a}")])
                .unwrap_or_default(),
            is_learner: st.learners.contains(id),
        })
        .collect())
}

fn not_yet() -> Status {
    Status::unimplemented("membership changes are not supported yet")
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(
        &self,
        _r: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(not_yet())
    }

    async fn member_remove(
        &self,
        _r: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(not_yet())
    }

    async fn member_update(
        &self,
        _r: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(not_yet())
    }

    async fn member_list(
        &self,
        r: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if r.get_ref().linearizable {
            let deadline = self
                .node
                .deadline(crate::node::peer_service::grpc_timeout(&r));
            self.node
                .linearize(deadline)
                .await
                .map_err(super::error::node_status)?;
        }
        // etcd's cluster responses carry no revision (it is not a KV read).
        Ok(Response::new(pb::MemberListResponse {
            header: Some(header(&self.node, 0)),
            members: members(&self.node)?,
        }))
    }

    async fn member_promote(
        &self,
        _r: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(not_yet())
    }
}
