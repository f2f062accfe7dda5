//! etcd `Cluster` service. MemberList answers from the membership Raft holds
//! plus the names and client addresses members published; Add, Remove,
//! Update and Promote go to `Node::change_members` (`node/membership.rs`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::Gate;
use super::header;
use crate::node::membership::{id_for_peer, MemberOp};
use crate::node::peer_service::grpc_timeout;
use crate::node::Node;
use warden_proto::etcdserverpb as pb;

pub struct ClusterService {
    pub node: Arc<Node>,
    pub gate: Arc<Gate>,
}

pub fn members(node: &Node) -> Result<Vec<pb::Member>, Status> {
    let st = node.status();
    // Every member of a cluster is set up alike: our schemes are theirs.
    let (client, peer) = node.schemes();
    node.with_state(|d| {
        st.members
            .iter()
            .map(|(id, m)| pb::Member {
                id: *id,
                name: if m.name.is_empty() {
                    d.names.get(id).cloned().unwrap_or_default()
                } else {
                    m.name.clone()
                },
                peer_urls: vec![format!("{peer}://{}", m.peer_addr)],
                client_urls: d
                    .client_addrs
                    .get(id)
                    .map(|a| vec![format!("{client}://{a}")])
                    .unwrap_or_default(),
                is_learner: st.learners.contains(id),
            })
            .collect()
    })
    .map_err(super::error::node_status)
}

/// Peer URL of a membership request as host:port.
fn peer_addr(urls: &[String]) -> Result<String, Status> {
    let [url] = urls else {
        return Err(Status::invalid_argument(
            "warden: give exactly one peer URL per member",
        ));
    };
    let addr = url
        .trim()
        .strip_prefix("http://")
        .or_else(|| url.trim().strip_prefix("https://"))
        .unwrap_or(url.trim())
        .trim_end_matches('/');
    if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
        return Err(Status::invalid_argument(format!(
            "warden: bad peer URL {url:?}: expected http://host:port"
        )));
    }
    Ok(addr.to_string())
}

impl ClusterService {
    async fn change(
        &self,
        op: MemberOp,
        timeout: Option<std::time::Duration>,
    ) -> Result<(), Status> {
        let deadline = self.node.deadline(timeout);
        self.node
            .change_members(op, deadline)
            .await
            .map_err(super::error::node_status)
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(header(&self.node, 0))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(
        &self,
        r: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        // Membership changes need root while auth is on.
        self.gate.admin(&r)?;
        let timeout = grpc_timeout(&r);
        let req = r.into_inner();
        let addr = peer_addr(&req.peer_urls)?;
        let id = id_for_peer(&addr);
        self.change(
            MemberOp::Add {
                id,
                peer_addr: addr.clone(),
                voter: !req.is_learner,
            },
            timeout,
        )
        .await?;
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header(),
            member: Some(pb::Member {
                id,
                name: String::new(),
                peer_urls: vec![format!("{}://{addr}", self.node.schemes().1)],
                client_urls: Vec::new(),
                is_learner: req.is_learner,
            }),
            members: members(&self.node)?,
        }))
    }

    async fn member_remove(
        &self,
        r: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        // Membership changes need root while auth is on.
        self.gate.admin(&r)?;
        let timeout = grpc_timeout(&r);
        let id = r.get_ref().id;
        self.change(MemberOp::Remove { id }, timeout).await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.header(),
            members: members(&self.node)?,
        }))
    }

    async fn member_update(
        &self,
        r: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        // Membership changes need root while auth is on.
        self.gate.admin(&r)?;
        let timeout = grpc_timeout(&r);
        let req = r.into_inner();
        let addr = peer_addr(&req.peer_urls)?;
        self.change(
            MemberOp::Update {
                id: req.id,
                peer_addr: addr,
            },
            timeout,
        )
        .await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header(),
            members: members(&self.node)?,
        }))
    }

    async fn member_promote(
        &self,
        r: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        // Membership changes need root while auth is on.
        self.gate.admin(&r)?;
        let timeout = grpc_timeout(&r);
        let id = r.get_ref().id;
        self.change(MemberOp::Promote { id }, timeout).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.header(),
            members: members(&self.node)?,
        }))
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
}
