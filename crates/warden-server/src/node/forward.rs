//! Writes, and client traffic a follower forwards to the leader over the
//! peer `Forward` RPC (`ForwardRequest` / `ForwardResponse`): proposals,
//! read-index questions, lessor questions and membership changes. Also
//! finding the leader (`wait_leader`) and serving forwarded requests as the
//! leader (`handle_forward`).
//!
//! A forward that never reached the peer (the connection could not be made)
//! is retried with the new leader; one that may have been delivered is not.
//!
//! Must never: retry a forwarded write whose outcome is unknown (that would
//! apply it twice), or answer a forwarded write before it was applied on the
//! leader.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::reads::ReadIndexMiss;
use super::types::{Request, Response};
use super::{lessor, membership, network, Node, NodeError};
use warden_core::state::StateError;

/// Client traffic a follower forwards to the leader.
#[derive(Clone, Serialize, Deserialize)]
pub enum ForwardRequest {
    Write(Request),
    ReadIndex,
    /// Renew a lease (the leader keeps lease countdowns).
    LeaseRenew(i64),
    /// Remaining time of a lease.
    LeaseTimeToLive(i64),
    /// A membership change.
    Members(membership::MemberOp),
    /// The membership the receiver has applied (asked by a member that
    /// wonders whether it was removed).
    AppliedMembership,
}

#[derive(Serialize, Deserialize)]
pub enum ForwardResponse {
    /// The applied result and the entry's log index.
    Write(Response, u64),
    ReadIndex(u64),
    /// The receiver is not the leader (any more); here is who it thinks is.
    NotLeader(Option<u64>),
    Failed(NodeError),
    LeaseRenew(Result<i64, StateError>),
    LeaseTimeToLive(Result<lessor::TimeToLive, StateError>),
    MembersDone,
    AppliedMembership(membership::Applied),
}

impl Node {
    /// Waits (bounded) until a leader other than `old` is known (or none
    /// can be within an election or two).
    pub(super) async fn wait_leader_other_than(&self, old: u64, deadline: Instant) {
        self.wait_leader_except(Some(old), deadline).await;
    }

    /// Waits (bounded) until some leader is known; `None` at the deadline.
    pub(super) async fn wait_leader(&self, deadline: Instant) -> Option<u64> {
        self.wait_leader_except(None, deadline).await
    }

    /// The current leader, or the next one known before `deadline`.
    pub(super) async fn leader_or_wait(&self, deadline: Instant) -> Result<u64, NodeError> {
        match self.leader() {
            Some(l) => Ok(l),
            None => self.wait_leader(deadline).await.ok_or(NodeError::NoLeader),
        }
    }

    /// Waits up to two election timeouts (or `deadline`) for a leader that is
    /// not `old`.
    pub(super) async fn wait_leader_except(
        &self,
        old: Option<u64>,
        deadline: Instant,
    ) -> Option<u64> {
        let mut rx = self.raft.metrics();
        let wait = self.elections(2);
        let until = deadline.min(Instant::now() + wait);
        loop {
            let leader = rx.borrow_and_update().current_leader;
            if let Some(l) = leader.filter(|l| Some(*l) != old) {
                return Some(l);
            }
            // Cut off from the quorum (see `failover`): no leader will be
            // known here soon, so say so at once.
            if self.failover.is_cut_off() {
                return None;
            }
            tokio::select! {
                r = tokio::time::timeout_at(until, rx.changed()) => {
                    // The deadline, or the Raft core gone: its channel then
                    // answers at once, every time, and `timeout_at` returns
                    // what its future answers before it looks at the clock,
                    // so waiting on would spin (a leader whose core failed
                    // while it handed over before a stop did, for good).
                    if !matches!(r, Ok(Ok(()))) {
                        return None;
                    }
                }
                _ = self.failover.wait_cut_off() => return None,
            }
        }
    }

    /// Proposes `req` and returns its applied result. Forwards to the leader
    /// when this member is not it.
    pub async fn write(&self, req: Request, deadline: Instant) -> Result<Response, NodeError> {
        let _pending = self.telemetry.proposal();
        let r = self.write_routed(req, deadline).await;
        if r.is_err() {
            self.telemetry.proposal_failed();
        }
        r
    }

    /// [`Node::write`] without the counting.
    async fn write_routed(&self, req: Request, deadline: Instant) -> Result<Response, NodeError> {
        loop {
            if Instant::now() >= deadline {
                return Err(NodeError::Timeout);
            }
            let leader = match self.write_local(req.clone(), deadline).await {
                Ok(r) => return Ok(r),
                Err(Redirect::Leader(l)) if l != self.id => l,
                Err(Redirect::Leader(_)) | Err(Redirect::Unknown) => {
                    match self.wait_leader(deadline).await {
                        None => {
                            tracing::debug!("write: no leader known");
                            return Err(NodeError::NoLeader);
                        }
                        Some(l) if l != self.id => l,
                        Some(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                Err(Redirect::Failed(e)) => return Err(e),
            };
            // `None`: this member leads now; propose here.
            tracing::debug!(leader = %format!("{leader:x}"), "forwarding a write");
            if let Some(r) = self.forward_write(leader, req.clone(), deadline).await? {
                return Ok(r);
            }
        }
    }

    /// Proposes on this member only.
    pub(super) async fn write_local(
        &self,
        req: Request,
        deadline: Instant,
    ) -> Result<Response, Redirect> {
        self.write_local_at(req, deadline).await.map(|(r, _)| r)
    }

    /// Proposes on this member only; also returns the entry's log index.
    pub(super) async fn write_local_at(
        &self,
        req: Request,
        deadline: Instant,
    ) -> Result<(Response, u64), Redirect> {
        if self.failover.is_cut_off() {
            return Err(Redirect::Failed(NodeError::NoLeader));
        }
        // A leader that steps down for lack of a quorum fails the writes it
        // holds at once: their outcome is unknown (see `failover`).
        let write = async {
            tokio::select! {
                r = self.raft.client_write(req) => Some(r),
                _ = self.failover.wait_cut_off() => None,
            }
        };
        match tokio::time::timeout_at(deadline, write).await {
            Err(_) => Err(Redirect::Failed(NodeError::Timeout)),
            Ok(None) => Err(Redirect::Failed(NodeError::LeaderChanged)),
            Ok(Some(r)) => Self::proposed(r),
        }
    }

    /// What a proposal's answer from openraft means for the caller.
    fn proposed(
        r: Result<
            openraft::raft::ClientWriteResponse<super::types::TypeConfig>,
            RaftError<super::types::TypeConfig, ClientWriteError<super::types::TypeConfig>>,
        >,
    ) -> Result<(Response, u64), Redirect> {
        match r {
            Ok(r) => Ok((r.data, r.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(f.leader_id.map_or(Redirect::Unknown, Redirect::Leader))
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Err(Redirect::Failed(NodeError::LeaderChanged))
            }
            Err(RaftError::APIError(e)) => {
                Err(Redirect::Failed(NodeError::Internal(e.to_string())))
            }
            Err(RaftError::Fatal(_)) => Err(Redirect::Failed(NodeError::Stopped)),
        }
    }

    pub(super) fn forward_client(
        &self,
        leader: u64,
    ) -> Result<super::peer_auth::PeerClient, NodeError> {
        let addr = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|m| m.peer_addr.clone())
            .ok_or(NodeError::NoLeader)?;
        let mut cache = self
            .forward_clients
            .lock()
            .map_err(|_| NodeError::Internal("forward client cache poisoned".into()))?;
        if let Some((a, c)) = cache.get(&leader) {
            if *a == addr {
                return Ok(c.clone());
            }
        }
        let c = self.links.client(&addr).map_err(NodeError::Internal)?;
        cache.insert(leader, (addr, c.clone()));
        Ok(c)
    }

    /// Sends one request to a peer's Forward endpoint: the decoded answer,
    /// or the gRPC status of a failed call.
    pub(super) async fn call_peer(
        &self,
        peer: u64,
        req: &ForwardRequest,
        deadline: Instant,
    ) -> Result<Result<ForwardResponse, tonic::Status>, NodeError> {
        let mut client = self.forward_client(peer)?;
        let mut r = tonic::Request::new(network::encode(req).map_err(NodeError::Internal)?);
        r.set_timeout(deadline.saturating_duration_since(Instant::now()));
        // The client request's id goes with it, for the leader's log.
        if let Some(id) = crate::api::trace::current_request_id() {
            if let Ok(v) = id.parse() {
                r.metadata_mut()
                    .insert(crate::api::trace::REQUEST_ID_HEADER, v);
            }
        }
        match client.forward(r).await {
            Ok(resp) => network::decode(resp.get_ref())
                .map(Ok)
                .map_err(NodeError::Internal),
            Err(s) => Ok(Err(s)),
        }
    }

    pub(super) async fn forward(
        &self,
        leader: u64,
        req: &ForwardRequest,
        deadline: Instant,
    ) -> Result<ForwardResponse, NodeError> {
        match self.call_peer(leader, req, deadline).await? {
            Ok(resp) => Ok(resp),
            Err(s) => self.failed_forward(leader, &s, deadline).await,
        }
    }

    /// What a failed call to the leader's `Forward` (or `ForwardStream`)
    /// means for each request it carried.
    pub(super) async fn failed_forward(
        &self,
        leader: u64,
        s: &tonic::Status,
        deadline: Instant,
    ) -> Result<ForwardResponse, NodeError> {
        if s.code() == tonic::Code::DeadlineExceeded {
            return Err(NodeError::Timeout);
        }
        // The connection could not even be made: the request was never
        // delivered, so it is safe to find the new leader and retry.
        if not_delivered(s) {
            tracing::debug!("forward to {leader:x} not delivered: {s}");
            self.wait_leader_other_than(leader, deadline).await;
            return Ok(ForwardResponse::NotLeader(None));
        }
        tracing::debug!("forward to {leader:x}: {s}");
        Err(NodeError::LeaderChanged)
    }

    async fn forward_write(
        &self,
        leader: u64,
        req: Request,
        deadline: Instant,
    ) -> Result<Option<Response>, NodeError> {
        let mut leader = leader;
        // During an election or a leadership transfer the members asked
        // may name each other (the old leader names the transfer target,
        // which still names the old leader): a hint is followed once, then
        // this member waits until its own view of the leader changes.
        let mut view = self.leader_view();
        let mut hint_followed = false;
        for _ in 0..FORWARD_ATTEMPTS {
            match self
                .forward_streamed(leader, ForwardRequest::Write(req.clone()), deadline)
                .await?
            {
                ForwardResponse::Write(r, index) => {
                    tracing::debug!(index, "forwarded write acknowledged");
                    // Read-your-writes on this member, as etcd gives: answer
                    // once the entry is applied here too. The write is
                    // committed either way, so a member slow to apply it
                    // still reports success after a bounded wait.
                    let wait = deadline.min(Instant::now() + Duration::from_secs(1));
                    if self.wait_applied(index, wait).await.is_err() {
                        tracing::debug!(index, "answering a forwarded write before applying it");
                    }
                    return Ok(Some(r));
                }
                // The receiver refused before proposing: safe to try again.
                ForwardResponse::NotLeader(hint) => {
                    if let Some(l) = hint.filter(|l| *l != leader && *l != self.id) {
                        if !hint_followed {
                            hint_followed = true;
                            leader = l;
                            continue;
                        }
                    }
                    // The member this one believes leads refused: it may
                    // have just won and not be ready to propose yet, so
                    // ask it again after a heartbeat interval unless the
                    // view changes first.
                    let bound = if view.0 == Some(leader) {
                        Duration::from_millis(self.config.heartbeat_interval_ms)
                    } else {
                        self.elections(2)
                    };
                    tracing::debug!(asked = %format!("{leader:x}"), ?hint, ?view, "forwarded write refused: waiting for a new view");
                    view = self.wait_view_change(view, bound, deadline).await;
                    tracing::debug!(?view, "forwarding: new view");
                    hint_followed = false;
                    match view.0 {
                        Some(l) if l != self.id => leader = l,
                        Some(_) => return Ok(None),
                        None => {
                            tracing::debug!(
                                asked = %format!("{leader:x}"),
                                "forwarded write refused and no leader known"
                            );
                            return Err(NodeError::NoLeader);
                        }
                    }
                }
                ForwardResponse::Failed(e) => return Err(e),
                _ => return Err(NodeError::Internal("unexpected forward answer".into())),
            }
        }
        tracing::debug!(
            asked = %format!("{leader:x}"),
            "forwarded write refused {FORWARD_ATTEMPTS} times"
        );
        Err(NodeError::NoLeader)
    }

    /// This member's view of the leadership: (leader, term).
    fn leader_view(&self) -> (Option<u64>, u64) {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        (m.current_leader, m.current_term)
    }

    /// Waits until this member knows a leader and its view differs from
    /// `old`, for at most `wait` (or until `deadline`, or until it is cut
    /// off, see `failover`); returns the view then, changed or not.
    async fn wait_view_change(
        &self,
        old: (Option<u64>, u64),
        wait: Duration,
        deadline: Instant,
    ) -> (Option<u64>, u64) {
        let mut rx = self.raft.metrics();
        let until = deadline.min(Instant::now() + wait);
        loop {
            let view = {
                let m = rx.borrow_and_update();
                (m.current_leader, m.current_term)
            };
            if view.0.is_some() && view != old {
                return view;
            }
            if self.failover.is_cut_off() {
                return view;
            }
            tokio::select! {
                r = tokio::time::timeout_at(until, rx.changed()) => {
                    if !matches!(r, Ok(Ok(()))) {
                        return self.leader_view();
                    }
                }
                _ = self.failover.wait_cut_off() => return self.leader_view(),
            }
        }
    }

    /// Runs `serve`, a request member `from` forwarded, under the client
    /// request's id when it carries one: logged under the same id as on the
    /// follower, and reported if slow.
    pub(super) async fn as_forwarded<T>(
        &self,
        id: Option<String>,
        from: u64,
        serve: impl std::future::Future<Output = T>,
    ) -> T {
        match id {
            Some(id) => {
                let span = tracing::debug_span!("forwarded", id = %id, from = %format!("{from:x}"));
                crate::api::trace::in_request(
                    id,
                    span,
                    crate::api::trace::timed(
                        self.slow_request(),
                        "forwarded request",
                        ForwardedBy(from),
                        serve,
                    ),
                )
                .await
            }
            None => serve.await,
        }
    }

    /// Serves `req`, which member `from` forwarded in a batch or on its
    /// stream with `timeout` left and the client request's id `id`, as a
    /// `Forward` call is served.
    pub(super) async fn serve_forwarded(
        &self,
        req: ForwardRequest,
        timeout: Duration,
        id: Option<String>,
        from: u64,
    ) -> ForwardResponse {
        let deadline = self.deadline(Some(timeout));
        // A request id the follower's client sent, if it is one the client
        // port would have taken.
        let id = id.filter(|id| crate::api::trace::sane_id(id).is_some());
        // Boxed: `as_forwarded` holds the future it is given in each of its
        // arms and in its argument, and this one is kilobytes; passed by
        // value it made the future the leader's stream keeps per forwarded
        // request 33 KB, copied at each move (docs/benchmarks.md, "Future
        // sizes").
        self.as_forwarded(id, from, Box::pin(self.handle_forward(req, deadline)))
            .await
    }

    /// Serves a forwarded request as the leader.
    pub(super) async fn handle_forward(
        &self,
        req: ForwardRequest,
        deadline: Instant,
    ) -> ForwardResponse {
        // A member stopping (its Raft is shut down or about to be) refuses
        // before proposing, naming the leader it knows: the sender retries
        // there instead of failing with "stopped".
        if self.failover.is_stopping()
            && matches!(req, ForwardRequest::Write(_) | ForwardRequest::ReadIndex)
        {
            return ForwardResponse::NotLeader(self.leader().filter(|l| *l != self.id));
        }
        match req {
            ForwardRequest::Write(r) => match self.write_local_at(r, deadline).await {
                Ok((resp, index)) => ForwardResponse::Write(resp, index),
                Err(Redirect::Leader(l)) => ForwardResponse::NotLeader(Some(l)),
                Err(Redirect::Unknown) => ForwardResponse::NotLeader(None),
                Err(Redirect::Failed(e)) => ForwardResponse::Failed(e),
            },
            ForwardRequest::ReadIndex => match self.leader_read_index(deadline).await {
                Ok(index) => ForwardResponse::ReadIndex(index),
                Err(ReadIndexMiss::NotLeader(l)) => ForwardResponse::NotLeader(l),
                Err(ReadIndexMiss::Failed(e)) => ForwardResponse::Failed(e),
            },
            // Rare and large: boxed, so that the future of every forwarded
            // write is not the size of a membership change's.
            ForwardRequest::Members(op) => Box::pin(self.handle_members(op, deadline)).await,
            ForwardRequest::AppliedMembership => match membership::applied(self) {
                Some(a) => ForwardResponse::AppliedMembership(a),
                None => ForwardResponse::Failed(NodeError::Stopped),
            },
            req @ (ForwardRequest::LeaseRenew(_) | ForwardRequest::LeaseTimeToLive(_)) => {
                Box::pin(self.lessor_local(&req)).await
            }
        }
    }
}

/// How many times a forwarded write is sent before giving up (each refusal
/// after the first hint waits for a change of leader, or a heartbeat
/// interval when the member asked is the one this member believes leads).
const FORWARD_ATTEMPTS: usize = 10;

/// Whether a failed peer call never reached the peer (connect refused or
/// timed out), as opposed to failing after the request may have been sent.
///
/// Decided by the error types in the status's source chain: an I/O error
/// decides by its kind; a chain without one decides by whether tonic reports
/// the failure as happening while connecting (`tonic::ConnectError`).
fn not_delivered(s: &tonic::Status) -> bool {
    use std::error::Error;
    if s.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut connecting = false;
    let mut src: Option<&(dyn Error + 'static)> = s.source();
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
            );
        }
        connecting |= e.is::<tonic::ConnectError>();
        src = e.source();
    }
    connecting
}

/// "from 3f2a…": which member forwarded a slow request, formatted only
/// when the warning is written.
struct ForwardedBy(u64);

impl std::fmt::Display for ForwardedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "from {:x}", self.0)
    }
}

/// Where a proposal on this member went instead of being applied.
pub(super) enum Redirect {
    Leader(u64),
    Unknown,
    Failed(NodeError),
}

impl Redirect {
    pub(super) fn into_error(self) -> NodeError {
        match self {
            Redirect::Leader(_) | Redirect::Unknown => NodeError::NoLeader,
            Redirect::Failed(e) => e,
        }
    }
}
