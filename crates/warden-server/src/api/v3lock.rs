//! etcd `v3lock.Lock` service: `Lock(name, lease)` blocks until the caller
//! owns the lock and returns the ownership key; `Unlock(key)` deletes it.
//!
//! Same algorithm as etcd's `concurrency.Mutex` (so it interoperates with
//! `etcdctl lock` on the same name): the key is `name/<lease hex>`, attached
//! to the lease; the oldest key under `name/` owns the lock; a waiter waits
//! for every older key to be deleted. If the lease expires the key goes and
//! the next waiter owns the lock. A `Lock` without a lease gets one of
//! [`DEFAULT_SESSION_TTL`], as etcd's lock server does.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{Caller, Gate};
use super::error::check_request_size;
use super::header;
use super::recipes::{create_or_get, delete, read, wait_deletes, KeyGuard};
use crate::node::peer_service::grpc_timeout;
use crate::node::Node;
use warden_core::state::types::RangeRequest;
use warden_proto::v3lockpb as pb;

/// TTL in seconds of the lease a `Lock` without one gets: etcd's lock
/// server opens a session with the caller's lease, and a session without a
/// lease grants one of `concurrency`'s default session TTL (60 s), never
/// kept alive, so the lock is released within a minute unless unlocked.
pub const DEFAULT_SESSION_TTL: i64 = 60;

/// The caller's lease, or with none (`lease = 0`) a fresh lease of
/// [`DEFAULT_SESSION_TTL`]: etcd's lock and election servers open a session
/// with the caller's lease, so a lock or a candidacy is never a key that
/// nothing ever deletes.
pub(super) async fn lease_or_session(
    node: &Node,
    caller: &Caller,
    lease: i64,
    timeout: Option<std::time::Duration>,
) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    Ok(
        super::lease::grant(node, caller, 0, DEFAULT_SESSION_TTL, timeout)
            .await?
            .1,
    )
}

pub struct LockService {
    pub node: Arc<Node>,
    pub gate: Arc<Gate>,
    /// `--max-request-bytes`: larger requests are refused.
    pub max_request_bytes: usize,
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
        let (created, my_rev, owner, _) =
            create_or_get(node, &caller, &prefix, &key, b"", lease).await?;
        // Abandoned while waiting: take our key away again (as etcd does).
        let guard = created.then(|| KeyGuard::new(node.clone(), caller.clone(), key.clone()));
        if owner.is_none_or(|o| o.create_revision != my_rev) {
            wait_deletes(node, &caller, &prefix, my_rev - 1).await?;
        }
        // The lease may have expired while we waited.
        let (rev, mine) = read(
            node,
            &caller,
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
        check_request_size(request.get_ref(), self.max_request_bytes)?;
        let timeout = grpc_timeout(&request);
        let caller = self.gate.caller(&request)?;
        let rev = delete(&self.node, &caller, &request.get_ref().key, timeout).await?;
        Ok(Response::new(pb::UnlockResponse {
            header: Some(header(&self.node, rev)),
        }))
    }
}
