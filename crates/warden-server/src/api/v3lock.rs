//! etcd `v3lock.Lock` service: `Lock(name, lease)` blocks until the caller
//! owns the lock and returns the ownership key; `Unlock(key)` deletes it.
//!
//! Same algorithm as etcd's `concurrency.Mutex` (so it interoperates with
//! `etcdctl lock` on the same name): the key is `name/<lease hex>`, attached
//! to the lease; the oldest key under `name/` owns the lock; a waiter waits
//! for every older key to be deleted. If the lease expires the key goes and
//! the next waiter owns the lock. A `Lock` without a lease gets one of
//! [`DEFAULT_SESSION_TTL`], as etcd's lock server does.
//!
//! Cost: an uncontended `Lock` is one commit (the create-or-get txn answers
//! the owner as it applies); a waiter is handed the lock by the commit that
//! deletes the key ahead of it and an in-process wake-up on its member,
//! decided on that member's applied state (`recipes::wait_turn`). A waiter
//! whose key goes first (lease expired) fails.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{Caller, Gate};
use super::error::check_request_size;
use super::header;
use super::recipes::{create_or_get, delete, wait_turn, KeyGuard};
use crate::node::peer_service::grpc_timeout;
use crate::node::Node;
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

/// A waiter's key was deleted before it owned the lock (its lease expired).
pub(super) fn session_expired() -> Status {
    Status::failed_precondition("etcdserver: session expired: the lock's lease is gone")
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
        let (created, my_rev, owner, rev) =
            create_or_get(node, &caller, &prefix, &key, b"", lease).await?;
        // Uncontended: the txn's own range answered the oldest key under
        // the prefix when it applied, so one commit decides (as etcd's
        // recipe does).
        if owner.is_some_and(|o| o.create_revision == my_rev) {
            return Ok(Response::new(pb::LockResponse {
                header: Some(header(node, rev)),
                key,
            }));
        }
        // Abandoned while waiting: take our key away again (as etcd does).
        let guard = created.then(|| KeyGuard::new(node.clone(), caller.clone(), key.clone()));
        let turn = wait_turn(node, &caller, &prefix, &key, my_rev, rev).await?;
        if let Some(g) = guard {
            g.disarm();
        }
        // Our key went first: the lease expired while we waited.
        let rev = turn.ok_or_else(session_expired)?;
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
