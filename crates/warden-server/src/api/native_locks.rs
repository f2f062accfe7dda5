//! warden's native lock service (`warden.v1.Locks`, proto/warden/lock.proto)
//! over the replicated lock table (`state::lock_table`).
//!
//! Acquire subscribes to this member's lock feed *before* proposing, so the
//! grant of a queued request (which happens in some later entry: a release,
//! a lease expiry, a cancel ahead of it) is seen however soon it comes. The
//! stream then stays open while the lock is held and reports LOST when the
//! hold ends other than by Release (lease expired or revoked). A wait that
//! is abandoned (stream closed, timeout) is withdrawn with a cancel command;
//! if the grant won that race, the hold is released again.
//!
//! Lock handles: this member draws a 128-bit handle from the OS random
//! number generator for every Acquire, proposes the acquire with only its
//! SHA-256 (`Command::LockAcquireProven`), and hands the handle to the
//! client with GRANTED. Release and FencedTxn hash the handle the client
//! sends and propose the digest (`…Proven`); the state machine compares it
//! with the holder's when it applies the command. So the Raft log,
//! snapshots and backups hold digests only, and the token (which Inspect
//! and WatchLocks show to anyone) is not enough to end or use someone
//! else's hold. A request without a handle proposes the plain command,
//! which only holds from before handles accept.
//!
//! Must never: report GRANTED for a hold the table does not have, leave an
//! abandoned waiter queued, or log or show a handle.

use crate::api::convert::{ConvertFrom, TryConvertFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth::{Caller, Gate};
use super::error::{check_request_size, node_status, state_status};
use super::{header, propose, unexpected};
use crate::node::peer_service::grpc_timeout;
use crate::node::{Consistency, LockFeed, Node};
use warden_core::state::lock_table::{
    self as lt, AcquireOutcome, HandleDigest, LockEvent, LockMode, HANDLE_LEN,
};
use warden_core::state::types as st;
use warden_core::state::{Command, CommandResult, StateError};
use warden_proto::warden::v1 as pb;

pub struct LocksService {
    pub node: Arc<Node>,
    pub gate: Arc<Gate>,
    /// `--max-request-bytes`: larger requests are refused.
    pub max_request_bytes: usize,
}

impl LocksService {
    /// Reading locks (inspect, watch) needs read permission on their
    /// names as keys: the name, or every name under the prefix.
    fn check_names(&self, caller: &Caller, name: &str, prefix: bool) -> Result<(), Status> {
        let key = name.as_bytes();
        if prefix {
            self.gate
                .check_range(caller, key, &warden_client::keys::prefix_range_end(key))
        } else {
            self.gate.check_range(caller, key, &[])
        }
    }
}

/// A fresh lock handle from the OS random number generator.
fn new_handle() -> Result<[u8; HANDLE_LEN], Status> {
    use rand::TryRngCore as _;
    let mut handle = [0u8; HANDLE_LEN];
    rand::rngs::OsRng.try_fill_bytes(&mut handle).map_err(|e| {
        Status::unavailable(format!(
            "warden: cannot draw a lock handle from the OS random number generator: {e}"
        ))
    })?;
    Ok(handle)
}

/// The digest of the handle a client sent for the hold of `token` on
/// `name`: `None` for no handle (a token alone), refused if it cannot be a
/// handle.
fn proof_of(name: &str, token: u64, handle: &[u8]) -> Result<Option<HandleDigest>, Status> {
    match handle.len() {
        0 => Ok(None),
        HANDLE_LEN => Ok(Some(HandleDigest::of_handle(handle))),
        n => Err(Status::invalid_argument(format!(
            "warden: lock {name:?} token {token}: a lock handle is {HANDLE_LEN} bytes, not {n}"
        ))),
    }
}

type AcquireStream = Pin<Box<dyn Stream<Item = Result<pb::AcquireResponse, Status>> + Send>>;
type WatchLocksStream = Pin<Box<dyn Stream<Item = Result<pb::WatchLocksResponse, Status>> + Send>>;

fn mode_pb(m: LockMode) -> i32 {
    match m {
        LockMode::Exclusive => pb::LockMode::Exclusive as i32,
        LockMode::Shared => pb::LockMode::Shared as i32,
    }
}

fn event_pb(e: &LockEvent, revision: i64) -> pb::LockEvent {
    use pb::lock_event::Kind;
    let mut out = pb::LockEvent {
        revision,
        ..Default::default()
    };
    match e {
        LockEvent::Granted {
            name,
            token,
            waiter_id,
            owner,
            mode,
            lease,
        } => {
            out.kind = Kind::Granted as i32;
            out.name = name.clone();
            out.token = *token;
            out.waiter_id = waiter_id.unwrap_or(0);
            out.owner = owner.clone();
            out.mode = mode_pb(*mode);
            out.lease = *lease;
        }
        LockEvent::Released { name, token } => {
            out.kind = Kind::Released as i32;
            out.name = name.clone();
            out.token = *token;
        }
        LockEvent::Expired { name, token } => {
            out.kind = Kind::Expired as i32;
            out.name = name.clone();
            out.token = *token;
        }
        LockEvent::Queued {
            name,
            waiter_id,
            position,
        } => {
            out.kind = Kind::Queued as i32;
            out.name = name.clone();
            out.waiter_id = *waiter_id;
            out.position = *position;
        }
        LockEvent::Cancelled { name, waiter_id } => {
            out.kind = Kind::Cancelled as i32;
            out.name = name.clone();
            out.waiter_id = *waiter_id;
        }
    }
    out
}

fn event_name(e: &LockEvent) -> &str {
    match e {
        LockEvent::Granted { name, .. }
        | LockEvent::Released { name, .. }
        | LockEvent::Expired { name, .. }
        | LockEvent::Queued { name, .. }
        | LockEvent::Cancelled { name, .. } => name,
    }
}

/// One Acquire call in progress.
struct Acquire {
    node: Arc<Node>,
    /// Who asked: every command of this call is checked as them.
    caller: Caller,
    tx: mpsc::Sender<Result<pb::AcquireResponse, Status>>,
    name: String,
    lease: i64,
    /// `lease` was granted by this call (for its `ttl`), so it is revoked
    /// again if the call ends without a hold.
    own_lease: bool,
    /// The handle given to the client with GRANTED (never logged), and its
    /// digest, which is all that is proposed.
    handle: [u8; HANDLE_LEN],
    proof: HandleDigest,
    /// The exactly-once tag: the acquire is proposed at most once per tag,
    /// and a retry picks up the first attempt's queue place or hold.
    tag: Option<warden_core::state::session::SessionTag>,
}

enum Waited {
    Granted(u64),
    Ended(String),
    Abandoned,
}

impl Acquire {
    fn answer(&self, state: pb::acquire_response::State) -> pb::AcquireResponse {
        pb::AcquireResponse {
            header: Some(header(&self.node, self.node.status().revision)),
            state: state as i32,
            lease: self.lease,
            ..Default::default()
        }
    }

    async fn send(&self, r: pb::AcquireResponse) -> bool {
        self.tx.send(Ok(r)).await.is_ok()
    }

    async fn run(self, req: lt::AcquireRequest, wait_for: Option<Duration>) {
        let granted = self.acquire(req, wait_for).await;
        if self.own_lease && !granted {
            self.revoke_own_lease().await;
        }
    }

    /// Revokes the lease this call granted for its `ttl` when the call ends
    /// without handing a hold to the client (would block, failed, timed
    /// out, abandoned): nothing else knows the lease, which would otherwise
    /// stay until its TTL ran out.
    async fn revoke_own_lease(&self) {
        let cmd = Command::LeaseRevoke { id: self.lease };
        match propose(&self.node, None, &self.caller, cmd).await {
            Ok(_) | Err(super::Proposal::State(StateError::LeaseNotFound)) => {}
            Err(e) => tracing::warn!(
                "acquire {:?}: revoke of its lease {:x} failed (it expires with its TTL): {}",
                self.name,
                self.lease,
                Status::from(e).message()
            ),
        }
    }

    /// Runs the acquire; true once the client was told it holds the lock.
    async fn acquire(&self, req: lt::AcquireRequest, wait_for: Option<Duration>) -> bool {
        let mut feed = self.node.lock_feed();
        let cmd = Command::LockAcquireProven {
            req,
            proof: self.proof,
        };
        let proposed =
            super::propose_once(&self.node, None, &self.caller, cmd, self.tag.clone()).await;
        let outcome = match proposed {
            Ok((_, CommandResult::LockAcquire(o))) => o,
            Ok(_) => {
                let _ = self.tx.send(Err(unexpected())).await;
                return false;
            }
            Err(e) => {
                let _ = self.tx.send(Err(e.into())).await;
                return false;
            }
        };
        use pb::acquire_response::State;
        // A tagged acquire may be a retry answered with the first attempt's
        // outcome: see where that queue place or hold is now.
        let outcome = match (&self.tag, outcome) {
            (
                Some(_),
                AcquireOutcome::Queued {
                    waiter_id,
                    position,
                },
            ) => match self.recheck_wait(waiter_id) {
                None => AcquireOutcome::Queued {
                    waiter_id,
                    position,
                },
                Some(Waited::Granted(token)) => AcquireOutcome::Granted { token },
                Some(Waited::Abandoned) => return false,
                Some(Waited::Ended(reason)) => {
                    let mut r = self.answer(State::Lost);
                    r.waiter_id = waiter_id;
                    r.reason = reason;
                    self.send(r).await;
                    return false;
                }
            },
            (Some(_), AcquireOutcome::Granted { token }) => {
                let mine = self
                    .node
                    .with_state(|d| d.kv.locks().token_with_proof(&self.name, &self.proof))
                    .ok()
                    .flatten();
                if mine != Some(token) {
                    let mut r = self.answer(State::Lost);
                    r.token = token;
                    r.reason =
                        "the hold ended: released, or its lease expired or was revoked".into();
                    self.send(r).await;
                    return false;
                }
                AcquireOutcome::Granted { token }
            }
            (_, o) => o,
        };
        let token = match outcome {
            AcquireOutcome::WouldBlock => {
                let mut r = self.answer(State::WouldBlock);
                r.reason = format!("lock {:?} is held", self.name);
                self.send(r).await;
                return false;
            }
            AcquireOutcome::Granted { token } => token,
            AcquireOutcome::Queued {
                waiter_id,
                position,
            } => {
                let mut r = self.answer(State::Queued);
                r.waiter_id = waiter_id;
                r.position = position;
                if !self.send(r).await {
                    self.withdraw(waiter_id, &mut feed).await;
                    return false;
                }
                let until = wait_for.map(|d| Instant::now() + d);
                match self.wait_grant(waiter_id, &mut feed, until).await {
                    Waited::Granted(t) => t,
                    Waited::Ended(reason) => {
                        let mut r = self.answer(State::Lost);
                        r.waiter_id = waiter_id;
                        r.reason = reason;
                        self.send(r).await;
                        return false;
                    }
                    Waited::Abandoned => {
                        self.withdraw(waiter_id, &mut feed).await;
                        if until.is_some_and(|u| Instant::now() >= u) {
                            let _ = self
                                .tx
                                .send(Err(Status::deadline_exceeded(format!(
                                    "warden: timed out waiting for lock {:?}",
                                    self.name
                                ))))
                                .await;
                        }
                        return false;
                    }
                }
            }
        };
        let mut r = self.answer(State::Granted);
        r.token = token;
        r.handle = self.handle.to_vec();
        if !self.send(r).await {
            // The client is gone and never learned of the hold.
            return false;
        }
        let reason = self.hold(token, &mut feed).await;
        if let Some(reason) = reason {
            let mut r = self.answer(State::Lost);
            r.token = token;
            r.reason = reason;
            self.send(r).await;
        }
        true
    }

    /// Waits for the grant of `waiter_id`.
    async fn wait_grant(
        &self,
        waiter_id: u64,
        feed: &mut broadcast::Receiver<LockFeed>,
        until: Option<Instant>,
    ) -> Waited {
        let deadline = async {
            match until {
                Some(u) => tokio::time::sleep_until(u).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        loop {
            let item = tokio::select! {
                item = feed.recv() => item,
                _ = self.tx.closed() => return Waited::Abandoned,
                _ = &mut deadline => return Waited::Abandoned,
            };
            match item {
                Ok(LockFeed::Events { events, .. }) => {
                    for e in events.iter() {
                        match e {
                            LockEvent::Granted {
                                token,
                                waiter_id: Some(w),
                                ..
                            } if *w == waiter_id => return Waited::Granted(*token),
                            LockEvent::Cancelled { waiter_id: w, .. } if *w == waiter_id => {
                                return Waited::Ended(
                                    "the wait ended: its lease expired or was revoked".into(),
                                )
                            }
                            _ => {}
                        }
                    }
                }
                Ok(LockFeed::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Missed events: look at the table itself.
                    if let Some(found) = self.recheck_wait(waiter_id) {
                        return found;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Waited::Ended("the member is shutting down".into())
                }
            }
        }
    }

    /// After missed events: still queued (`None`), granted, or gone.
    fn recheck_wait(&self, waiter_id: u64) -> Option<Waited> {
        let info = self
            .node
            .with_state(|d| d.kv.locks().inspect(&self.name))
            .ok()?;
        let queued = info
            .as_ref()
            .is_some_and(|i| i.waiters.iter().any(|w| w.waiter_id == waiter_id));
        if queued {
            return None;
        }
        // Granted while we were not looking: the hold with our handle's
        // digest is ours.
        let token = self
            .node
            .with_state(|d| d.kv.locks().token_with_proof(&self.name, &self.proof))
            .ok()
            .flatten();
        Some(match token {
            Some(t) => Waited::Granted(t),
            None => Waited::Ended("the wait ended: its lease expired or was revoked".into()),
        })
    }

    /// Withdraws an abandoned wait; if the grant won the race, releases it.
    async fn withdraw(&self, waiter_id: u64, feed: &mut broadcast::Receiver<LockFeed>) {
        let cancel = Command::LockCancel {
            name: self.name.clone(),
            waiter_id,
        };
        match propose(&self.node, None, &self.caller, cancel).await {
            Ok(_) => return,
            Err(super::Proposal::State(StateError::Lock(lt::LockError::NoSuchWaiter {
                ..
            })))
            | Err(super::Proposal::State(StateError::Lock(lt::LockError::NoSuchLock { .. }))) => {}
            Err(e) => {
                tracing::warn!(lock = %self.name, waiter_id, "withdrawing a wait: {}", Status::from(e));
                return;
            }
        }
        // Already granted (or ended): find the grant and give it back.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut token = None;
        while token.is_none() {
            let item = tokio::select! {
                item = feed.recv() => item,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            match item {
                Ok(LockFeed::Events { events, .. }) => {
                    token = events.iter().find_map(|e| match e {
                        LockEvent::Granted {
                            token,
                            waiter_id: Some(w),
                            ..
                        } if *w == waiter_id => Some(*token),
                        _ => None,
                    });
                }
                _ => match self.recheck_wait(waiter_id) {
                    Some(Waited::Granted(t)) => token = Some(t),
                    _ => break,
                },
            }
        }
        if let Some(token) = token {
            let release = Command::LockReleaseProven {
                name: self.name.clone(),
                token,
                proof: self.proof,
            };
            if let Err(e) = propose(&self.node, None, &self.caller, release).await {
                tracing::warn!(lock = %self.name, token, "releasing an abandoned grant: {}", Status::from(e));
            }
        }
    }

    /// Follows a hold until it ends; `Some(reason)` if it ended other than
    /// by the client closing the stream.
    async fn hold(&self, token: u64, feed: &mut broadcast::Receiver<LockFeed>) -> Option<String> {
        loop {
            let item = tokio::select! {
                item = feed.recv() => item,
                _ = self.tx.closed() => return None,
            };
            match item {
                Ok(LockFeed::Events { events, .. }) => {
                    for e in events.iter() {
                        match e {
                            LockEvent::Released { name, token: t }
                                if *t == token && *name == self.name =>
                            {
                                return Some("released".into())
                            }
                            LockEvent::Expired { name, token: t }
                                if *t == token && *name == self.name =>
                            {
                                return Some("the lease expired or was revoked".into())
                            }
                            _ => {}
                        }
                    }
                }
                Ok(LockFeed::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let holds = self
                        .node
                        .with_state(|d| d.kv.locks().check_fence(&self.name, token))
                        .unwrap_or(false);
                    if !holds {
                        return Some("the hold ended".into());
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Some("the member is shutting down".into())
                }
            }
        }
    }
}

#[tonic::async_trait]
impl pb::locks_server::Locks for LocksService {
    type AcquireStream = AcquireStream;

    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<AcquireStream>, Status> {
        check_request_size(request.get_ref(), self.max_request_bytes)?;
        let caller = self.gate.caller(&request)?;
        let tag = super::once::tag_of(&request)?;
        let tagged = tag.as_ref().map(|t| t.request_id);
        let r = request.into_inner();
        if tag.is_some() && (r.lease == 0 || r.handle.is_empty()) {
            return Err(Status::invalid_argument(
                "warden: an exactly-once Acquire needs a lease and a client-chosen handle (a retry must find the same lease and prove the same hold)",
            ));
        }
        let mode = match pb::LockMode::try_from(r.mode) {
            Ok(pb::LockMode::Exclusive) => LockMode::Exclusive,
            Ok(pb::LockMode::Shared) => LockMode::Shared,
            Err(_) => return Err(Status::invalid_argument("warden: unknown lock mode")),
        };
        // Before a lease is granted for the call: nothing to undo if the OS
        // has no randomness to give.
        let handle = match r.handle.len() {
            0 => new_handle()?,
            HANDLE_LEN => {
                let mut h = [0u8; HANDLE_LEN];
                h.copy_from_slice(&r.handle);
                h
            }
            n => {
                return Err(Status::invalid_argument(format!(
                    "warden: a lock handle is {HANDLE_LEN} bytes, not {n}"
                )))
            }
        };
        let own_lease = r.lease == 0;
        let lease = if r.lease != 0 {
            r.lease
        } else if r.ttl > 0 {
            super::lease::grant(&self.node, &caller, 0, r.ttl, None)
                .await?
                .1
        } else {
            return Err(Status::invalid_argument(
                "warden: an acquire needs a lease or a ttl",
            ));
        };
        let req = lt::AcquireRequest {
            name: r.name.clone(),
            mode,
            lease,
            priority: r.priority,
            owner: r.owner.clone(),
            wait: r.wait_timeout_ms != 0,
        };
        let wait_for =
            (r.wait_timeout_ms > 0).then(|| Duration::from_millis(r.wait_timeout_ms as u64));
        let (tx, rx) = mpsc::channel(8);
        let a = Acquire {
            node: self.node.clone(),
            caller,
            tx,
            name: r.name,
            lease,
            own_lease,
            handle,
            proof: HandleDigest::of_handle(&handle),
            tag,
        };
        tokio::spawn(a.run(req, wait_for));
        let stream: AcquireStream = Box::pin(ReceiverStream::new(rx));
        Ok(super::once::answer(stream, tagged))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        check_request_size(request.get_ref(), self.max_request_bytes)?;
        let timeout = grpc_timeout(&request);
        let caller = self.gate.caller(&request)?;
        let tag = super::once::tag_of(&request)?;
        let tagged = tag.as_ref().map(|t| t.request_id);
        let r = request.into_inner();
        let cmd = match proof_of(&r.name, r.token, &r.handle)? {
            Some(proof) => Command::LockReleaseProven {
                name: r.name,
                token: r.token,
                proof,
            },
            None => Command::LockRelease {
                name: r.name,
                token: r.token,
            },
        };
        let (rev, _) = super::propose_once(&self.node, timeout, &caller, cmd, tag).await?;
        let resp = pb::ReleaseResponse {
            header: Some(header(&self.node, rev)),
        };
        Ok(super::once::answer(resp, tagged))
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        let deadline = self.node.deadline(grpc_timeout(&request));
        let caller = self.gate.caller(&request)?;
        let r = request.into_inner();
        self.check_names(&caller, &r.name, r.prefix)?;
        let (rev, infos) = self
            .node
            .read(Consistency::Linearizable, deadline, |d| {
                let infos: Vec<lt::LockInfo> = if r.prefix {
                    d.kv.locks().locks_with_prefix(&r.name).collect()
                } else {
                    d.kv.locks().inspect(&r.name).into_iter().collect()
                };
                (d.kv.revision(), infos)
            })
            .await
            .map_err(node_status)?;
        let mut locks = Vec::new();
        for info in infos {
            let mut holders = Vec::new();
            for h in &info.holders {
                // Remaining lease time is known to the leader only (asked
                // through it when this member follows).
                let ttl = match self.node.lease_time_to_live(h.lease, deadline).await {
                    Ok(Ok(t)) => t.remaining,
                    _ => -1,
                };
                holders.push(pb::Holder {
                    owner: h.owner.clone(),
                    token: h.token,
                    mode: mode_pb(h.mode),
                    lease: h.lease,
                    lease_ttl: ttl,
                });
            }
            locks.push(pb::LockInfo {
                name: info.name.clone(),
                holders,
                waiters: info
                    .waiters
                    .iter()
                    .map(|w| pb::Waiter {
                        waiter_id: w.waiter_id,
                        owner: w.owner.clone(),
                        mode: mode_pb(w.mode),
                        priority: w.priority,
                        lease: w.lease,
                    })
                    .collect(),
            });
        }
        Ok(Response::new(pb::InspectResponse {
            header: Some(header(&self.node, rev)),
            locks,
        }))
    }

    type WatchLocksStream = WatchLocksStream;

    async fn watch_locks(
        &self,
        request: Request<pb::WatchLocksRequest>,
    ) -> Result<Response<WatchLocksStream>, Status> {
        let caller = self.gate.caller(&request)?;
        let r = request.into_inner();
        self.check_names(&caller, &r.name, r.prefix)?;
        let mut feed = self.node.lock_feed();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let wanted = |n: &str| {
                if r.prefix {
                    n.starts_with(&r.name)
                } else {
                    n == r.name
                }
            };
            loop {
                let item = tokio::select! {
                    item = feed.recv() => item,
                    _ = tx.closed() => return,
                };
                match item {
                    Ok(LockFeed::Events { revision, events }) => {
                        let evs: Vec<pb::LockEvent> = events
                            .iter()
                            .filter(|e| wanted(event_name(e)))
                            .map(|e| event_pb(e, revision))
                            .collect();
                        if !evs.is_empty()
                            && tx
                                .send(Ok(pb::WatchLocksResponse {
                                    events: evs,
                                    lagged: false,
                                }))
                                .await
                                .is_err()
                        {
                            return;
                        }
                    }
                    Ok(LockFeed::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx
                            .send(Ok(pb::WatchLocksResponse {
                                events: Vec::new(),
                                lagged: true,
                            }))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fenced_txn(
        &self,
        request: Request<pb::FencedTxnRequest>,
    ) -> Result<Response<warden_proto::etcdserverpb::TxnResponse>, Status> {
        check_request_size(request.get_ref(), self.max_request_bytes)?;
        let timeout = grpc_timeout(&request);
        let caller = self.gate.caller(&request)?;
        let tag = super::once::tag_of(&request)?;
        let tagged = tag.as_ref().map(|t| t.request_id);
        let r = request.into_inner();
        let txn = st::TxnRequest::try_convert_from(r.txn.unwrap_or_default())?;
        warden_core::state::validate::check_txn_request(&txn).map_err(state_status)?;
        let command = Box::new(Command::Txn(txn));
        let cmd = match proof_of(&r.name, r.token, &r.handle)? {
            Some(proof) => Command::FencedProven {
                name: r.name,
                token: r.token,
                proof,
                command,
            },
            None => Command::Fenced {
                name: r.name,
                token: r.token,
                command,
            },
        };
        match super::propose_once(&self.node, timeout, &caller, cmd, tag).await? {
            (rev, CommandResult::Txn(t)) => {
                let mut resp = warden_proto::etcdserverpb::TxnResponse::convert_from(t);
                super::kv::set_nested_headers(&mut resp.responses, rev);
                resp.header = Some(header(&self.node, rev));
                Ok(super::once::answer(resp, tagged))
            }
            _ => Err(unexpected()),
        }
    }
}
