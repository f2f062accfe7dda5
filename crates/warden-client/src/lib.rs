//! The Rust client library for warden (and etcd v3): a [`Client`] over a
//! list of endpoints that sends writes to the leader, spreads serializable
//! reads over the members, retries with exponential backoff and jitter
//! within one overall deadline, and makes every retried write
//! exactly-once; plus the coordination recipes built on it: [`Session`]
//! (a lease kept alive), [`Mutex`] and [`RwLock`] (warden's native locks
//! with fencing tokens), [`Election`], and a [`Watcher`] that resumes on
//! another member without missing an event.
//!
//! # Exactly-once writes
//!
//! Every write carries this client's id and a fresh request id ([`once`]).
//! A warden server applies a given (client, request) at most once and
//! answers a retry with the first attempt's response, so when a put times
//! out during a leader change the client sends it again with the same id
//! and the caller sees one answer, never a double apply. Against etcd
//! (which ignores the tag) a write whose outcome is unknown is returned to
//! the caller as an error instead, as etcd's own clients do.
//!
//! # Routing
//!
//! The client asks the members' `Status` who leads and sends writes there
//! (no forwarding hop); linearizable reads go to the member that last
//! answered; serializable reads rotate over all endpoints. A failed
//! endpoint is skipped and the leader asked for again.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), warden_client::ClientError> {
//! use warden_client::{Client, ClientOptions, GetOptions, Mutex, PutOptions, Session};
//! let endpoints = ["127.0.0.1:2379", "127.0.0.1:22379", "127.0.0.1:32379"];
//! let client = Client::connect(endpoints, ClientOptions::default()).await?;
//! client.put("greeting", "hello", PutOptions::default()).await?;
//! let resp = client.get("greeting", GetOptions::default()).await?;
//! assert_eq!(resp.kvs[0].value, b"hello");
//!
//! // A lock held on a session's lease, released if this process dies.
//! let session = Session::new(&client, 10).await?;
//! let guard = Mutex::new(&session, "jobs/report").lock().await?;
//! println!("holding jobs/report, fencing token {}", guard.token());
//! guard.release().await?;
//! session.close().await?;
//! # Ok(()) }
//! ```
//!
//! Runnable programs: `examples/leader_election.rs`, `examples/locked_job.rs`
//! and `examples/config_watcher.rs` in this crate; the guide is warden's
//! docs/client.md.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod auth;
pub mod backoff;
pub mod election;
pub mod endpoint;
pub mod error;
pub mod keys;
mod leader;
pub mod lock;
pub mod once;
pub mod options;
pub mod retry;
pub mod session;
pub mod tls;
pub mod watch;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use warden_proto::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, request_op, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, MemberListRequest, MemberListResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, StatusRequest, StatusResponse, TxnRequest,
    TxnResponse,
};

pub use auth::{AuthChannel, Credentials};
pub use backoff::Backoff;
pub use election::{Election, Leadership, Observer};
pub use endpoint::{parse_endpoint, parse_endpoints};
pub use error::ClientError;
pub use lock::{LockGuard, Mutex, RwLock};
pub use options::{DeleteOptions, GetOptions, KeyRange, PutOptions};
pub use retry::OpKind;
pub use session::Session;
pub use tls::TlsOptions;
pub use watch::{WatchEvents, WatchOptions, Watcher};

/// Largest response accepted (etcd's client uses `math.MaxInt32` too).
const MAX_RECV_BYTES: usize = i32::MAX as usize;

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Overall deadline of one call, retries included; also sent to the
    /// server as the gRPC deadline.
    pub timeout: Duration,
    /// Deadline of establishing one TCP connection.
    pub connect_timeout: Duration,
    /// Delay between retry rounds (a round tries every endpoint once).
    pub backoff: Backoff,
    /// TLS (`https`) with these files; `None`: plaintext.
    pub tls: Option<TlsOptions>,
    /// Authenticate as this user (etcd auth) before the first call and
    /// whenever the server refuses the token; `None`: send no token.
    pub credentials: Option<Credentials>,
    /// Tag every write with this client's id and a fresh request id
    /// ([`once`]), so that a write whose outcome is unknown is retried
    /// safely once the cluster has shown it applies tagged writes at most
    /// once (warden does; etcd ignores the tag, and then such a write is
    /// never retried).
    pub exactly_once: bool,
    /// The client id of exactly-once writes; `None`: a random one. Give a
    /// stable id only if no two processes ever use it at the same time.
    pub client_id: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            backoff: Backoff::default(),
            tls: None,
            credentials: None,
            exactly_once: true,
            client_id: None,
        }
    }
}

/// A handle to a warden (or etcd) cluster. Cheap to clone; clones share
/// connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// Canonical `host:port` endpoints, parallel to `channels`.
    endpoints: Vec<String>,
    /// Plain channels (for `Authenticate`), parallel to `channels`.
    raw: Vec<Channel>,
    /// The same channels, attaching `token`.
    channels: Vec<AuthChannel>,
    /// The token of `opts.credentials`, once authenticated.
    token: auth::TokenCell,
    /// Held while authenticating, so concurrent calls wait for one
    /// exchange instead of each making their own.
    authenticating: tokio::sync::Mutex<()>,
    /// Index of the endpoint that last served a non-balanced call.
    preferred: AtomicUsize,
    /// Each endpoint's member id and the leader, for routing writes.
    leaders: leader::LeaderMap,
    /// Held while asking the endpoints who leads; holds when that was last
    /// done, so a leader outside the endpoint list is not asked for on
    /// every write.
    discovering: tokio::sync::Mutex<Option<Instant>>,
    /// Request ids of exactly-once writes (`None`: writes are untagged).
    sessions: Option<once::Sessions>,
    /// Round-robin counter for serializable reads.
    next_balanced: AtomicUsize,
    opts: ClientOptions,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.endpoints)
            .field("opts", &self.inner.opts)
            .finish()
    }
}

impl Client {
    /// Creates a client for `endpoints` (`host:port`, optionally `http://`;
    /// comma-separated lists are split). No connection is made until the
    /// first call, so this fails only for malformed endpoints. Must be called
    /// inside a tokio runtime.
    pub async fn connect<I, S>(endpoints: I, opts: ClientOptions) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let raw: Vec<S> = endpoints.into_iter().collect();
        let endpoints = parse_endpoints(&raw)?;
        let n_endpoints = endpoints.len();
        let raw = endpoints
            .iter()
            .map(|ep| make_channel(ep, &opts))
            .collect::<Result<Vec<_>, _>>()?;
        let sessions = if opts.exactly_once {
            Some(
                once::Sessions::new(opts.client_id.as_deref())
                    .map_err(|e| ClientError::InvalidOption(e.0))?,
            )
        } else {
            None
        };
        let token = auth::TokenCell::default();
        let channels = raw
            .iter()
            .map(|ch| auth::with_token(ch.clone(), token.clone()))
            .collect();
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints,
                raw,
                channels,
                token,
                authenticating: tokio::sync::Mutex::new(()),
                preferred: AtomicUsize::new(0),
                leaders: leader::LeaderMap::new(n_endpoints),
                discovering: tokio::sync::Mutex::new(None),
                sessions,
                next_balanced: AtomicUsize::new(0),
                opts,
            }),
        })
    }

    /// The canonical endpoints, in the order given.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The options this client was created with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// Reads `key` (and the keys `opts.range` adds).
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        opts: GetOptions,
    ) -> Result<RangeResponse, ClientError> {
        self.range(opts.into_request(key.into())).await
    }

    /// Sends a raw `RangeRequest`. Serializable ranges are spread across
    /// endpoints; linearizable ones go to the preferred endpoint.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, ClientError> {
        let balanced = req.serializable;
        self.call(OpKind::Read, balanced, move |ch, t| {
            let req = req.clone();
            async move { kv(ch).range(with_timeout(req, t)).await }
        })
        .await
    }

    /// Writes `key` = `value`.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        opts: PutOptions,
    ) -> Result<PutResponse, ClientError> {
        self.put_request(opts.into_request(key.into(), value.into()))
            .await
    }

    /// Sends a raw `PutRequest`.
    pub async fn put_request(&self, req: PutRequest) -> Result<PutResponse, ClientError> {
        self.write_once(move |ch, t| {
            let req = req.clone();
            async move { kv(ch).put(with_timeout(req, t)).await }
        })
        .await
    }

    /// Deletes `key` (and the keys `opts.range` adds).
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        opts: DeleteOptions,
    ) -> Result<DeleteRangeResponse, ClientError> {
        self.delete_range(opts.into_request(key.into())).await
    }

    /// Sends a raw `DeleteRangeRequest`.
    pub async fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, ClientError> {
        self.write_once(move |ch, t| {
            let req = req.clone();
            async move { kv(ch).delete_range(with_timeout(req, t)).await }
        })
        .await
    }

    /// Runs a transaction. One without writes is retried like a read.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, ClientError> {
        let (kind, tag) = if txn_is_read_only(&req) {
            (OpKind::Read, None)
        } else {
            (OpKind::Write, self.begin_once())
        };
        self.call_with(kind, false, tag.as_ref(), move |ch, t| {
            let req = req.clone();
            async move { kv(ch).txn(with_timeout(req, t)).await }
        })
        .await
    }

    /// Grants a lease of `ttl` seconds (`id` 0: the server picks the id).
    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse, ClientError> {
        let req = LeaseGrantRequest { ttl, id };
        let resp = self
            .write_once(move |ch, t| async move {
                LeaseClient::new(ch).lease_grant(with_timeout(req, t)).await
            })
            .await?;
        if !resp.error.is_empty() {
            return Err(ClientError::Server {
                code: tonic::Code::FailedPrecondition,
                message: resp.error,
                endpoint: String::new(),
            });
        }
        Ok(resp)
    }

    /// Revokes lease `id`, deleting the keys attached to it.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, ClientError> {
        let req = LeaseRevokeRequest { id };
        self.write_once(move |ch, t| async move {
            LeaseClient::new(ch)
                .lease_revoke(with_timeout(req, t))
                .await
        })
        .await
    }

    /// Compacts the history up to `revision`; with `physical`, waits until
    /// the compaction is applied on the contacted member.
    pub async fn compact(
        &self,
        revision: i64,
        physical: bool,
    ) -> Result<CompactionResponse, ClientError> {
        let req = CompactionRequest { revision, physical };
        self.call(OpKind::Write, false, move |ch, t| async move {
            kv(ch).compact(with_timeout(req, t)).await
        })
        .await
    }

    /// The status of one member, asked at `endpoint` (which need not be in
    /// the client's list). No failover: the answer is about that member.
    pub async fn status(&self, endpoint: &str) -> Result<StatusResponse, ClientError> {
        let ep = parse_endpoint(endpoint)?;
        let known = self
            .inner
            .endpoints
            .iter()
            .zip(&self.inner.channels)
            .find(|(e, _)| **e == ep);
        let channel = match known {
            Some((_, ch)) => ch.clone(),
            None => auth::with_token(
                make_channel(&ep, &self.inner.opts)?,
                self.inner.token.clone(),
            ),
        };
        let timeout = self.inner.opts.timeout;
        let attempt = async {
            MaintenanceClient::new(channel)
                .max_decoding_message_size(MAX_RECV_BYTES)
                .status(with_timeout(StatusRequest {}, timeout))
                .await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Err(_) => Err(ClientError::DeadlineExceeded {
                timeout_ms: timeout.as_millis(),
                endpoints: vec![ep],
            }),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => {
                let failure = retry::classify(&status);
                if matches!(failure, retry::Failure::NotSent) {
                    Err(ClientError::Unavailable {
                        code: status.code(),
                        message: retry::describe(&status),
                        endpoints: vec![ep],
                    })
                } else {
                    Err(ClientError::Server {
                        code: status.code(),
                        message: retry::describe(&status),
                        endpoint: ep,
                    })
                }
            }
        }
    }

    /// The cluster's members. `linearizable` asks the member to confirm the
    /// list with the leader first (etcd v3.5 clients always do).
    pub async fn member_list(&self, linearizable: bool) -> Result<MemberListResponse, ClientError> {
        let req = MemberListRequest { linearizable };
        self.call(OpKind::Read, !linearizable, move |ch, t| async move {
            ClusterClient::new(ch)
                .max_decoding_message_size(MAX_RECV_BYTES)
                .member_list(with_timeout(req, t))
                .await
        })
        .await
    }

    /// Runs any unary call with this client's failover and retry policy:
    /// `attempt` gets a channel and the time left, and is tried on the
    /// endpoints in turn until it succeeds or fails for good.
    pub async fn request<T, F, Fut>(&self, kind: OpKind, attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(AuthChannel, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(kind, false, attempt).await
    }

    /// The endpoints with their channels, starting with the one that last
    /// answered, for streams that must pick an endpoint and move on when it
    /// fails. With credentials, call [`Client::authenticate`] first (a
    /// stream opened without a token is refused).
    pub fn channels(&self) -> Vec<(String, AuthChannel)> {
        let inner = &*self.inner;
        let n = inner.channels.len();
        let start = inner.preferred.load(Ordering::Relaxed);
        (0..n)
            .filter_map(|i| {
                let idx = (start + i) % n.max(1);
                Some((
                    inner.endpoints.get(idx)?.clone(),
                    inner.channels.get(idx)?.clone(),
                ))
            })
            .collect()
    }

    /// Runs `attempt` against endpoints until it succeeds, fails for good, or
    /// the deadline passes. `attempt` gets the channel and the time left.
    ///
    /// Each round tries every endpoint once, starting from the preferred one
    /// (or, for `balanced` calls, the next in round-robin order); rounds are
    /// separated by [`Backoff`] delays.
    /// [`Client::channels`] after [`Client::authenticate`]: what a stream
    /// (watch, keep-alive, lock acquire, observe) opens on.
    pub async fn stream_channels(&self) -> Result<Vec<(String, AuthChannel)>, ClientError> {
        self.authenticate().await?;
        Ok(self.channels())
    }

    /// Tells the client a stream failed with `status`: when the server
    /// refused the token (expired, password changed), it is dropped so the
    /// next [`Client::stream_channels`] authenticates again.
    pub fn stream_failed(&self, status: &Status) {
        if auth::token_refused(status) {
            self.inner.token.clear();
        }
    }

    /// With credentials and no token yet (or a refused one), exchanges the
    /// credentials for a token, trying the endpoints in turn; without
    /// credentials, does nothing. Calls do this themselves; streams opened
    /// on [`Client::channels`] need it first.
    pub async fn authenticate(&self) -> Result<(), ClientError> {
        let inner = &*self.inner;
        let Some(creds) = inner.opts.credentials.as_ref() else {
            return Ok(());
        };
        if inner.token.is_set() {
            return Ok(());
        }
        let _one = inner.authenticating.lock().await;
        if inner.token.is_set() {
            return Ok(());
        }
        let timeout = inner.opts.timeout;
        let deadline = Instant::now() + timeout;
        let mut last: Option<(Status, String)> = None;
        for round in 0u32.. {
            for (ep, ch) in inner.endpoints.iter().zip(&inner.raw) {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                let attempt = auth::authenticate(ch.clone(), creds, remaining);
                match tokio::time::timeout(remaining, attempt).await {
                    Ok(Ok(token)) => {
                        return inner.token.set(&token).map_err(|e| ClientError::Server {
                            code: tonic::Code::Internal,
                            message: e,
                            endpoint: ep.clone(),
                        });
                    }
                    Ok(Err(status)) => {
                        // Wrong password, unknown user, auth off, too many
                        // failures: the server's answer, not the network's.
                        if retry::classify(&status) == retry::Failure::Fatal {
                            return Err(ClientError::Server {
                                code: status.code(),
                                message: retry::describe(&status),
                                endpoint: ep.clone(),
                            });
                        }
                        last = Some((status, ep.clone()));
                    }
                    Err(_) => break,
                }
            }
            let delay = inner.opts.backoff.delay_random(round);
            if Instant::now() + delay >= deadline {
                break;
            }
            tokio::time::sleep(delay).await;
        }
        Err(match last {
            Some((s, _)) => ClientError::Unavailable {
                code: s.code(),
                message: retry::describe(&s),
                endpoints: inner.endpoints.clone(),
            },
            None => ClientError::DeadlineExceeded {
                timeout_ms: timeout.as_millis(),
                endpoints: inner.endpoints.clone(),
            },
        })
    }

    async fn call<T, F, Fut>(
        &self,
        kind: OpKind,
        balanced: bool,
        attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(AuthChannel, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call_with(kind, balanced, None, attempt).await
    }

    /// A fresh exactly-once tag for a write that spans several calls (a
    /// lock acquire sent again after its stream broke): pass it to
    /// [`Client::request_once`] each time. `None` with
    /// [`ClientOptions::exactly_once`] off.
    pub fn begin_once(&self) -> Option<once::Tag<'_>> {
        self.inner.sessions.as_ref().map(|s| s.begin())
    }

    /// Whether the cluster was seen to apply tagged writes at most once (a
    /// warden cluster, once it answered one).
    pub fn honours_once(&self) -> bool {
        self.inner.sessions.as_ref().is_some_and(|s| s.honoured())
    }

    /// [`Client::request`] for a write carrying `tag` (from
    /// [`Client::begin_once`]; `None`: untagged): every attempt carries it,
    /// and a failure of unknown outcome is retried once the cluster honours
    /// tags.
    pub async fn request_once<T, F, Fut>(
        &self,
        tag: Option<&once::Tag<'_>>,
        attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(AuthChannel, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call_with(OpKind::Write, false, tag, attempt).await
    }

    async fn call_with<T, F, Fut>(
        &self,
        kind: OpKind,
        balanced: bool,
        tag: Option<&once::Tag<'_>>,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(AuthChannel, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.authenticate().await?;
        let inner = &*self.inner;
        let timeout = inner.opts.timeout;
        let deadline = Instant::now() + timeout;
        let sessions = inner.sessions.as_ref().filter(|_| tag.is_some());
        let extra = sessions.zip(tag).map(|(s, t)| s.metadata(t));
        let to_leader = kind == OpKind::Write && !balanced;
        // One fresh token per call when the server refuses the one held.
        let mut reauthenticated = false;
        let n = inner.channels.len().max(1);
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<Status> = None;
        // Whether an attempt of this write may have been applied: then
        // giving up says "deadline exceeded" (outcome unknown), never
        // "unavailable" (which promises nothing was applied).
        let mut maybe_applied = false;
        let deadline_error = |tried: &[String]| ClientError::DeadlineExceeded {
            timeout_ms: timeout.as_millis(),
            endpoints: tried.to_vec(),
        };
        let unavailable = |last: Option<Status>, tried: Vec<String>, maybe_applied: bool| match last
        {
            Some(s) if !maybe_applied => ClientError::Unavailable {
                code: s.code(),
                message: retry::describe(&s),
                endpoints: tried,
            },
            _ => deadline_error(&tried),
        };

        for round in 0u32.. {
            let start = if balanced {
                inner.next_balanced.fetch_add(1, Ordering::Relaxed) % n
            } else if to_leader {
                match self.leader_endpoint(deadline).await {
                    Some(i) => i % n,
                    None => inner.preferred.load(Ordering::Relaxed) % n,
                }
            } else {
                inner.preferred.load(Ordering::Relaxed) % n
            };
            for offset in 0..n {
                let idx = (start + offset) % n;
                let (Some(ep), Some(ch), Some(raw)) = (
                    inner.endpoints.get(idx),
                    inner.channels.get(idx),
                    inner.raw.get(idx),
                ) else {
                    continue;
                };
                let ch = match &extra {
                    Some(md) => auth::with_token_and(raw.clone(), inner.token.clone(), md.clone()),
                    None => ch.clone(),
                };
                let now = Instant::now();
                let remaining = deadline.saturating_duration_since(now);
                if remaining.is_zero() {
                    return Err(unavailable(last, tried, maybe_applied));
                }
                if !tried.contains(ep) {
                    tried.push(ep.clone());
                }
                let result = match tokio::time::timeout(remaining, attempt(ch, remaining)).await {
                    Err(_) => return Err(deadline_error(&tried)),
                    Ok(r) => r,
                };
                match result {
                    Ok(resp) => {
                        if let Some(s) = sessions {
                            s.answered(resp.metadata());
                        }
                        if !balanced {
                            inner.preferred.store(idx, Ordering::Relaxed);
                        }
                        return Ok(resp.into_inner());
                    }
                    Err(status)
                        if auth::token_refused(&status)
                            && inner.opts.credentials.is_some()
                            && !reauthenticated =>
                    {
                        // Checked before anything was proposed: safe to
                        // repeat, reads and writes alike.
                        reauthenticated = true;
                        inner.token.clear();
                        self.authenticate().await?;
                        last = Some(status);
                    }
                    Err(status) => {
                        let failure = retry::classify(&status);
                        tracing::debug!(endpoint = %ep, ?failure, code = ?status.code(), message = status.message(), "attempt failed");
                        // Applied at most once: a retry answers the first
                        // attempt's response if that one was applied. A
                        // client that has not yet seen the cluster honour
                        // tags asks first (one tagged empty txn).
                        let once = match sessions {
                            Some(s) if failure == retry::Failure::Transient => {
                                s.honoured() || self.probe_once(s, deadline).await
                            }
                            _ => false,
                        };
                        if !retry::may_retry(failure, kind) && !once {
                            return Err(ClientError::Server {
                                code: status.code(),
                                message: retry::describe(&status),
                                endpoint: ep.clone(),
                            });
                        }
                        if to_leader {
                            inner.leaders.forget(idx);
                        }
                        maybe_applied |= kind == OpKind::Write
                            && !matches!(
                                failure,
                                retry::Failure::NotSent | retry::Failure::NoLeader
                            );
                        last = Some(status);
                    }
                }
            }
            let delay = inner.opts.backoff.delay_random(round);
            if Instant::now() + delay >= deadline {
                tokio::time::sleep_until(deadline).await;
                return Err(unavailable(last, tried, maybe_applied));
            }
            tokio::time::sleep(delay).await;
        }
        Err(unavailable(last, tried, maybe_applied))
    }

    /// Whether the cluster applies tagged writes at most once, asked with a
    /// tagged empty transaction (harmless on etcd, which ignores the tag
    /// and changes nothing; on warden it answers `warden-applied-once`).
    /// Tries each endpoint once before `deadline`.
    async fn probe_once(&self, sessions: &once::Sessions, deadline: Instant) -> bool {
        let inner = &*self.inner;
        let tag = sessions.begin();
        let md = sessions.metadata(&tag);
        for raw in &inner.raw {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let ch = auth::with_token_and(raw.clone(), inner.token.clone(), md.clone());
            let mut kv = kv(ch);
            let call = kv.txn(with_timeout(TxnRequest::default(), left));
            if let Ok(Ok(resp)) = tokio::time::timeout(left, call).await {
                sessions.answered(resp.metadata());
                return sessions.honoured();
            }
        }
        false
    }

    /// The endpoint of the leader, asking the endpoints when it is not
    /// known (at most every [`REDISCOVER`], so a leader outside the list
    /// costs no question per write). `None`: one endpoint, or the leader is
    /// not among them or did not answer.
    async fn leader_endpoint(&self, deadline: Instant) -> Option<usize> {
        let inner = &*self.inner;
        if inner.endpoints.len() < 2 {
            return None;
        }
        if let Some(i) = inner.leaders.endpoint() {
            return Some(i);
        }
        let mut last = tokio::time::timeout_at(deadline, inner.discovering.lock())
            .await
            .ok()?;
        if let Some(i) = inner.leaders.endpoint() {
            return Some(i);
        }
        if last.is_some_and(|t| t.elapsed() < REDISCOVER) {
            return None;
        }
        let until = deadline.min(Instant::now() + inner.opts.connect_timeout);
        self.find_leader(until).await;
        *last = Some(Instant::now());
        inner.leaders.endpoint()
    }

    /// Asks every endpoint's `Status` at once until `until`, noting each
    /// member's id and the leader with the newest term; stops as soon as
    /// the leader itself has answered.
    async fn find_leader(&self, until: Instant) {
        let inner = &*self.inner;
        let mut asking = tokio::task::JoinSet::new();
        for (idx, ch) in inner.channels.iter().enumerate() {
            let ch = ch.clone();
            asking.spawn(async move {
                let left = until.saturating_duration_since(Instant::now());
                let mut m = MaintenanceClient::new(ch);
                let call = m.status(with_timeout(StatusRequest {}, left));
                (idx, tokio::time::timeout_at(until, call).await)
            });
        }
        while let Ok(Some(joined)) = tokio::time::timeout_at(until, asking.join_next()).await {
            let Ok((idx, Ok(Ok(resp)))) = joined else {
                continue;
            };
            let st = resp.into_inner();
            let member = st.header.as_ref().map_or(0, |h| h.member_id);
            inner.leaders.learn(idx, member, st.leader, st.raft_term);
            if member != 0 && member == st.leader {
                break;
            }
        }
    }

    /// The endpoint of the member this client believes leads (learned when
    /// it last routed a write), if it is one of the client's endpoints.
    pub fn leader(&self) -> Option<String> {
        let idx = self.inner.leaders.endpoint()?;
        self.inner.endpoints.get(idx).cloned()
    }

    /// The client id of exactly-once writes (`None` with
    /// [`ClientOptions::exactly_once`] off).
    pub fn client_id(&self) -> Option<&str> {
        self.inner.sessions.as_ref().map(|s| s.client_id())
    }

    /// Runs a write the server applies at most once per request id (warden's
    /// `KV.Put`, `KV.DeleteRange`, `KV.Txn`, `Lease.LeaseGrant`,
    /// `Lease.LeaseRevoke`, `Locks.Release`, `Locks.FencedTxn`): every
    /// attempt carries the same fresh request id, so a retry after a failure
    /// of unknown outcome cannot apply it twice.
    pub async fn write_once<T, F, Fut>(&self, attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(AuthChannel, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let tag = self.begin_once();
        self.call_with(OpKind::Write, false, tag.as_ref(), attempt)
            .await
    }
}

/// Pause before a stream (watch, keep-alive, campaign, observe) goes round
/// the endpoints again when none took it.
pub(crate) const STREAM_RETRY: Duration = Duration::from_millis(200);

/// The least time between two rounds of asking who leads when the answer
/// did not name one of the client's endpoints.
const REDISCOVER: Duration = Duration::from_millis(250);

/// One lazily connected channel to `endpoint`.
fn make_channel(endpoint: &str, opts: &ClientOptions) -> Result<Channel, ClientError> {
    Ok(tls::endpoint(endpoint, opts.tls.as_ref())?
        .connect_timeout(opts.connect_timeout)
        .connect_lazy())
}

fn kv(ch: AuthChannel) -> KvClient<AuthChannel> {
    KvClient::new(ch).max_decoding_message_size(MAX_RECV_BYTES)
}

fn with_timeout<M>(msg: M, timeout: Duration) -> Request<M> {
    let mut req = Request::new(msg);
    req.set_timeout(timeout);
    req
}

/// Whether a transaction has no put or delete in any branch (nested too).
pub fn txn_is_read_only(txn: &TxnRequest) -> bool {
    fn op_read_only(op: &RequestOp) -> bool {
        match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(t)) => txn_is_read_only(t),
            Some(request_op::Request::RequestPut(_))
            | Some(request_op::Request::RequestDeleteRange(_)) => false,
        }
    }
    txn.success.iter().chain(&txn.failure).all(op_read_only)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(r: request_op::Request) -> RequestOp {
        RequestOp { request: Some(r) }
    }

    #[test]
    fn read_only_txns() {
        let get = op(request_op::Request::RequestRange(RangeRequest::default()));
        let put = op(request_op::Request::RequestPut(PutRequest::default()));
        let del = op(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest::default(),
        ));
        let t = TxnRequest {
            success: vec![get.clone()],
            failure: vec![get.clone()],
            ..Default::default()
        };
        assert!(txn_is_read_only(&t));
        assert!(txn_is_read_only(&TxnRequest::default()));
        let t2 = TxnRequest {
            failure: vec![get.clone(), put],
            ..Default::default()
        };
        assert!(!txn_is_read_only(&t2));
        let nested_write = op(request_op::Request::RequestTxn(TxnRequest {
            success: vec![del],
            ..Default::default()
        }));
        assert!(!txn_is_read_only(&TxnRequest {
            success: vec![nested_write],
            ..Default::default()
        }));
        let nested_read = op(request_op::Request::RequestTxn(t));
        assert!(txn_is_read_only(&TxnRequest {
            success: vec![nested_read],
            ..Default::default()
        }));
    }

    #[tokio::test]
    async fn connect_rejects_bad_endpoints_without_network() {
        let err = Client::connect(["nope"], ClientOptions::default())
            .await
            .err();
        assert!(matches!(err, Some(ClientError::InvalidEndpoint { .. })));
        let none: [&str; 0] = [];
        let err = Client::connect(none, ClientOptions::default()).await.err();
        assert!(matches!(err, Some(ClientError::NoEndpoints)));
    }

    /// A port nobody listens on: bind, note the port, close.
    fn dead_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1)
    }

    #[tokio::test]
    async fn unreachable_endpoints_fail_over_then_give_up_at_deadline() {
        let (a, b) = (dead_port(), dead_port());
        let opts = ClientOptions {
            timeout: Duration::from_millis(400),
            connect_timeout: Duration::from_millis(200),
            backoff: Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
            ..ClientOptions::default()
        };
        let client = Client::connect(
            [format!("127.0.0.1:{a}"), format!("http://127.0.0.1:{b}")],
            opts,
        )
        .await
        .map_err(|e| e.to_string());
        let Ok(client) = client else {
            panic!("connect failed: {client:?}");
        };
        let started = std::time::Instant::now();
        let err = client.put("k", "v", PutOptions::default()).await.err();
        let elapsed = started.elapsed();
        let Some(ClientError::Unavailable {
            code, endpoints, ..
        }) = err
        else {
            panic!("expected Unavailable, got {err:?}");
        };
        assert_eq!(code, tonic::Code::Unavailable);
        assert_eq!(
            endpoints,
            vec![format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}")]
        );
        assert!(elapsed >= Duration::from_millis(350), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");

        // status: one endpoint, no failover.
        let err = client.status(&format!("127.0.0.1:{b}")).await.err();
        assert!(
            matches!(err, Some(ClientError::Unavailable { .. })),
            "{err:?}"
        );
    }
}
