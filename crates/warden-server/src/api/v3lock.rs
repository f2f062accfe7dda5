//! etcd `v3lock.Lock` service: `Lock(name, lease)` blocks until the caller
//! owns the lock and returns the ownership key; `Unlock(key)` deletes it.
//!
//! Same algorithm as etcd's `concurrency.Mutex` (so it interoperates with
//! `etcdctl lock` on the same name): the key is `name/<lease hex>`, attached
//! to the lease; the oldest key under `name/` owns the lock; a waiter waits
//! for every older key to be deleted. If the lease expires the key goes and
//! the next waiter owns the lock.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::header;
use super::recipes::{create_or_get, delete, read, wait_deletes, KeyGuard};
use crate::node::peer_service::grpc_timeout;
use crate::node::Node;
use warden_core::state::types::RangeRequest;
use warden_proto::v3lockpb as pb;

pub struct LockService {
    pub node: Arc<Node>,
}

/// `name/` and the caller's key `name/<lease hex>`.
pub fn lock_keys(name: &[u8], lease: i64) -> (Vec<u8>, Vec<u8>) {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let mut key = prefix.clone();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    (prefix, key)
}

#[tonic::async_trait]
impl pb::lock_server::Lock for LockService {
    async fn lock(
        &self,
        request: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        let node = &self.node;
        let (prefix, key) = lock_keys(&r.name, r.lease);
        let (created, my_rev, owner, _) = create_or_get(node, &prefix, &key, b"", r.lease).await?;
        // Abandoned while waiting: take our key away again (as etcd does).
        let guard = created.then(|| KeyGuard::new(node.clone(), key.clone()));
        if owner.is_none_or(|o| o.create_revision != my_rev) {
            wait_deletes(node, &prefix, my_rev - 1).await?;
        }
        // The lease may have expired while we waited.
        let (rev, mine) = read(
            node,
            RangeRequest {
                key: key.clone(),
                ..Default::default()
            },
            None,
        )
        .await?;
        if mine.kvs.is_empty() {
            return Err(Status::failed_precondition(
                "etcdserver: session expired: the lock's lease is gone",
            ));
        }
        if let Some(g) = guard {
            g.disarm();
        }
        Ok(Response::new(pb::LockResponse {
            header: Some(header(node, rev)),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let timeout = grpc_timeout(&request);
        let rev = delete(&self.node, &request.get_ref().key, timeout).await?;
        Ok(Response::new(pb::UnlockResponse {
            header: Some(header(&self.node, rev)),
        }))
    }
}
