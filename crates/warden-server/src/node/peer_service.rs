//! Incoming peer transport: the `RaftPeer` gRPC service. Decodes openraft
//! messages and hands them to the local Raft; serves forwarded client
//! requests when this member is the leader.
//!
//! Every call is admitted first (`PeerService::admit`, rules in
//! `peer_auth`): the caller's cluster id must be ours, the caller must be a
//! member of our effective membership (any caller of our cluster may ask
//! `AppliedMembership`; a member that has no membership yet, i.e. a joining
//! member before its first contact, admits any caller of our cluster), and
//! with `--peer-client-cert-auth` its certificate must be valid for the host
//! of its advertised peer address. Replication (AppendEntries, StreamAppend,
//! InstallSnapshot) from a sender our membership does not list yet is
//! admitted once a member we know vouches for it (`Vouches`): this member
//! may have missed the change that added it, and that sender may now lead.
//! Raft messages are then range-checked
//! (terms, log indexes, the vote must be the sender's) before openraft
//! sees them.
//!
//! Must never: trust a peer's bytes (decode failures and out-of-range
//! values are `InvalidArgument`), let a caller speak for another member, or
//! install a snapshot before the whole file arrived and verified.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures::{Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use super::forward_batch::{decode_batch, serve_batch, BATCH_OVERHEAD_BYTES};
use super::forward_stream::serve_stream;
use super::network::{decode, encode, Remote, SnapshotHeader};
use super::peer_auth::{self, PeerIdentity, RefusalLog};
use super::state_machine::SnapshotFile;
use super::types::{Request as RaftRequest, TypeConfig};
use super::{ForwardRequest, Node};
use openraft::async_runtime::WatchReceiver;
use warden_proto::peer::raft_peer_server::RaftPeer;
use warden_proto::peer::Blob;

/// The peer service of one member (serve it on the peer address, behind
/// an [`IdentityGate`]).
#[derive(Clone)]
pub struct PeerService {
    node: Arc<Node>,
    refusals: Arc<RefusalLog>,
    vouches: Arc<Vouches>,
    /// Snapshot transfers being received ([`MAX_SNAPSHOT_RECEIVES`]).
    receiving: Arc<tokio::sync::Semaphore>,
}

/// Snapshot transfers a member receives at once. A leader sends a follower
/// one at a time; a second covers a leader change during a transfer. Each
/// holds a temporary file and up to [`MAX_SNAPSHOT_BYTES`] of disk, so
/// without a bound a sender could open transfers until the member ran out
/// of file descriptors or disk.
pub const MAX_SNAPSHOT_RECEIVES: usize = 2;

/// Longest wait for a snapshot transfer's next chunk. A sender streams a
/// file it has; one that stops sending is dropped, with its temporary
/// file, rather than hold one of the [`MAX_SNAPSHOT_RECEIVES`] slots.
pub const SNAPSHOT_CHUNK_WAIT: Duration = Duration::from_secs(30);

/// How long a vouch for a sender holds.
const VOUCH_FOR: Duration = Duration::from_secs(30);
/// How long before a sender nobody vouched for is asked about again.
const VOUCH_RETRY: Duration = Duration::from_secs(1);
/// Most senders being asked about or remembered at once (a flood of made-up
/// ids costs at most this many small questions per `VOUCH_RETRY`).
const MAX_VOUCHES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vouch {
    Checking,
    Yes(Instant),
    No(Instant),
}

/// Senders our membership does not list, and what the members we know said
/// of them.
#[derive(Default)]
struct Vouches {
    m: std::sync::Mutex<std::collections::BTreeMap<u64, Vouch>>,
}

impl Vouches {
    /// Whether `sender` is vouched for now; if it is not and nobody is being
    /// asked, marks it as being asked and returns `Start`.
    fn check(&self, sender: u64, now: Instant) -> VouchCheck {
        let Ok(mut m) = self.m.lock() else {
            return VouchCheck::Refuse;
        };
        m.retain(|_, v| match v {
            Vouch::Checking => true,
            Vouch::Yes(until) | Vouch::No(until) => *until > now,
        });
        match m.get(&sender) {
            Some(Vouch::Yes(_)) => VouchCheck::Admit,
            Some(_) => VouchCheck::Refuse,
            None if m.len() >= MAX_VOUCHES => VouchCheck::Refuse,
            None => {
                m.insert(sender, Vouch::Checking);
                VouchCheck::Start
            }
        }
    }

    fn settle(&self, sender: u64, vouched: bool, now: Instant) {
        if let Ok(mut m) = self.m.lock() {
            let v = if vouched {
                Vouch::Yes(now + VOUCH_FOR)
            } else {
                Vouch::No(now + VOUCH_RETRY)
            };
            m.insert(sender, v);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum VouchCheck {
    Admit,
    Refuse,
    Start,
}

/// Asks the members our newest membership lists, in turn, whether their
/// applied membership is newer than ours and lists `sender`; one yes is
/// enough (it is a member we know, speaking of a change we missed).
async fn ask_for_vouch(node: Arc<Node>, vouches: Arc<Vouches>, sender: u64) {
    let ours = super::membership::in_log(&node);
    let mut vouched = false;
    for peer in ours.ids.iter().copied() {
        if peer == node.id || peer == sender {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        if let Ok(Ok(super::ForwardResponse::AppliedMembership(a))) = node
            .call_peer(peer, &ForwardRequest::AppliedMembership, deadline)
            .await
        {
            if a.index > ours.index && a.ids.contains(&sender) {
                tracing::info!(
                    sender = %format!("{sender:x}"),
                    by = %format!("{peer:x}"),
                    "a member added after our membership was vouched for"
                );
                vouched = true;
                break;
            }
        }
    }
    vouches.settle(sender, vouched, Instant::now());
}

/// Who may make a call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Need {
    /// A member of our effective membership (voter or learner).
    Member,
    /// A member, or a sender a member we know vouches for (replication
    /// from a member added by a change we have not seen yet).
    Replicate,
    /// Anyone of our cluster (a removed member asking whether it was).
    SameCluster,
}

impl PeerService {
    pub fn new(node: Arc<Node>) -> Self {
        PeerService {
            node,
            refusals: Arc::new(RefusalLog::default()),
            vouches: Arc::default(),
            receiving: Arc::new(tokio::sync::Semaphore::new(MAX_SNAPSHOT_RECEIVES)),
        }
    }

    /// A member publishes its own client address, nobody else's: refuses
    /// a forwarded `Publish` that `sender` makes for another member.
    fn own_publish_only(
        &self,
        rpc: &'static str,
        write: &RaftRequest,
        sender: u64,
    ) -> Result<(), Status> {
        own_publish_only(&self.refusals, rpc, write, sender)
    }

    /// Admits a call, or refuses it with `FailedPrecondition` (another
    /// cluster) or `PermissionDenied` (not a member, no identity, a
    /// certificate not valid for the sender's address). Returns the
    /// sender's member id.
    fn admit<T>(&self, req: &Request<T>, rpc: &'static str, need: Need) -> Result<u64, Status> {
        let from = req
            .remote_addr()
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        let refuse = |reason: &'static str, status: Status| {
            self.refusals
                .warn(reason, &format!("{rpc} from {from}: {}", status.message()));
            status
        };
        let caller = check_identity(
            PeerIdentity::of(req.metadata()),
            self.node.cluster_id,
            self.node.id,
        )
        .map_err(|(reason, status)| refuse(reason, status))?;
        let sender = caller.member_id;
        let config = self
            .node
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        let mem = config.membership();
        let listed = mem.get_node(&sender).map(|n| n.peer_addr.clone());
        let uninitialized = mem.nodes().next().is_none();
        if listed.is_none() && need == Need::Replicate && !uninitialized {
            match self.vouches.check(sender, Instant::now()) {
                VouchCheck::Admit => return Ok(sender),
                VouchCheck::Start => {
                    tokio::spawn(ask_for_vouch(
                        self.node.clone(),
                        self.vouches.clone(),
                        sender,
                    ));
                }
                VouchCheck::Refuse => {}
            }
            return Err(refuse(
                "not a member yet",
                Status::unavailable(format!(
                    "warden: {sender:x} is not in this member's membership; asking the members it knows"
                )),
            ));
        }
        // A member with no membership yet (joined, not yet contacted by the
        // leader) cannot tell members apart: our cluster id is all it has.
        if listed.is_none() && need == Need::Member && !uninitialized {
            return Err(refuse(
                "not a member",
                Status::permission_denied(format!(
                    "warden: {sender:x} is not a member of this cluster's membership"
                )),
            ));
        }
        let mtls = self
            .node
            .config
            .peer_tls
            .as_ref()
            .is_some_and(|t| t.client_cert_auth);
        if let (true, Some(addr)) = (mtls, listed) {
            let host = warden_client::tls::host_of(&addr);
            let checked = match req.peer_certs() {
                None => Err("no client certificate".to_string()),
                Some(certs) => match certs.first() {
                    None => Err("no client certificate".to_string()),
                    Some(c) => peer_auth::cert_valid_for(c.as_ref(), host),
                },
            };
            if let Err(e) = checked {
                return Err(refuse(
                    "certificate",
                    Status::permission_denied(format!(
                        "warden: member {sender:x} is at {addr}: {e}"
                    )),
                ));
            }
        }
        Ok(sender)
    }

    /// Refuses a message whose values are out of range (`InvalidArgument`).
    fn in_range(
        &self,
        rpc: &'static str,
        sender: u64,
        r: Result<(), String>,
    ) -> Result<(), Status> {
        r.map_err(|e| {
            self.refusals
                .warn("out of range", &format!("{rpc} from {sender:x}: {e}"));
            bad(format!("warden: {e}"))
        })
    }
}

/// The peer port's first check, made on a call's headers before its body
/// is read: a call without this cluster's id and a member id other than
/// ours is answered `PermissionDenied` or `FailedPrecondition` at once.
/// Without it, tonic would buffer and decode a message of up to
/// [`super::network::MAX_MESSAGE`] bytes before the handler's own checks
/// (`PeerService::admit`, which also asks whether the sender is a member)
/// refused it: a client pointed at the wrong port, or a scanner, could hold
/// that much memory per stream.
#[derive(Clone)]
pub struct IdentityGate<S> {
    inner: S,
    cluster_id: u64,
    member_id: u64,
    refusals: Arc<RefusalLog>,
}

impl<S> IdentityGate<S> {
    /// The gate in front of `inner`, a server of `service`'s calls; its
    /// refusals are logged with the service's.
    pub fn new(inner: S, service: &PeerService) -> Self {
        IdentityGate {
            inner,
            cluster_id: service.node.cluster_id,
            member_id: service.node.id,
            refusals: service.refusals.clone(),
        }
    }

    /// Why a call with these headers is refused before its body is read,
    /// as the log's reason and the caller's status.
    fn refusal(&self, headers: &axum::http::HeaderMap) -> Option<(&'static str, Status)> {
        check_identity(
            PeerIdentity::of_headers(headers),
            self.cluster_id,
            self.member_id,
        )
        .err()
    }
}

/// The checks a call's identity metadata alone decides, made by the gate
/// and again by `PeerService::admit`: the caller named itself, is of
/// cluster `cluster_id`, and is not this member (`us`). When refused, the
/// log's reason and the caller's status.
fn check_identity(
    caller: Option<PeerIdentity>,
    cluster_id: u64,
    us: u64,
) -> Result<PeerIdentity, (&'static str, Status)> {
    let Some(caller) = caller else {
        return Err((
            "no identity",
            Status::permission_denied(format!(
                "warden: peer call without valid {} and {} metadata",
                peer_auth::CLUSTER_ID_HEADER,
                peer_auth::MEMBER_ID_HEADER
            )),
        ));
    };
    if caller.cluster_id != cluster_id {
        return Err((
            "cluster id mismatch",
            Status::failed_precondition(format!(
                "warden: cluster id mismatch: member {:x} of cluster {:x} called a member of \
                 cluster {cluster_id:x}",
                caller.member_id, caller.cluster_id
            )),
        ));
    }
    if caller.member_id == us {
        return Err((
            "not a member",
            Status::permission_denied(format!(
                "warden: a peer call claims to come from this member ({us:x})"
            )),
        ));
    }
    Ok(caller)
}

/// The address a call came from, as [`Request::remote_addr`] finds it.
fn caller_addr<B>(req: &axum::http::Request<B>) -> String {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
        .map_or_else(|| "?".to_string(), |a| a.to_string())
}

impl<S> tower::Service<axum::http::Request<tonic::body::Body>> for IdentityGate<S>
where
    S: tower::Service<
        axum::http::Request<tonic::body::Body>,
        Response = axum::http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
    >,
{
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::Either<
        futures::future::Ready<Result<Self::Response, Self::Error>>,
        S::Future,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<tonic::body::Body>) -> Self::Future {
        match self.refusal(req.headers()) {
            // The request (and its unread body) is dropped here.
            Some((reason, status)) => {
                let rpc = req.uri().path().rsplit('/').next().unwrap_or_default();
                self.refusals.warn(
                    reason,
                    &format!("{rpc} from {}: {}", caller_addr(&req), status.message()),
                );
                futures::future::Either::Left(futures::future::ready(Ok(status.into_http())))
            }
            None => futures::future::Either::Right(self.inner.call(req)),
        }
    }
}

/// The next chunk of a snapshot transfer, or an error once none came for
/// [`SNAPSHOT_CHUNK_WAIT`].
async fn next_chunk(
    incoming: &mut Streaming<Blob>,
) -> Result<Option<Result<Blob, Status>>, Status> {
    tokio::time::timeout(SNAPSHOT_CHUNK_WAIT, incoming.next())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "no snapshot chunk for {} s: transfer dropped",
                SNAPSHOT_CHUNK_WAIT.as_secs()
            ))
        })
}

fn bad(e: String) -> Status {
    Status::invalid_argument(e)
}

fn reply<T: serde::Serialize>(v: &Remote<T>) -> Result<Response<Blob>, Status> {
    encode(v).map(Response::new).map_err(Status::internal)
}

/// Largest snapshot file accepted over `InstallSnapshot` (8 GiB, etcd's
/// largest suggested backend quota), so a peer cannot fill the disk.
pub const MAX_SNAPSHOT_BYTES: u64 = 8 << 30;

/// Largest `Forward` message served. Members forward client requests,
/// which are bounded by `--max-request-bytes` (1.5 MiB by default); a
/// forwarded write becomes one log entry, and an entry close to the peer
/// message limit (`MAX_MESSAGE`, 64 MiB) would not fit in the message that
/// replicates it, wedging replication. Half of it leaves room.
pub const MAX_FORWARD_BYTES: usize = super::network::MAX_MESSAGE / 2;

/// Longest `grpc-timeout` taken from a caller: one day. The header allows
/// up to 99 999 999 hours; anything longer than this is taken as this (the
/// node then caps the deadline to a few request timeouts anyway).
pub const MAX_GRPC_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The deadline a caller set with grpc-timeout, if any, at most
/// [`MAX_GRPC_TIMEOUT`]. A malformed header counts as none.
pub fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(v)
}

/// Parses a `grpc-timeout` value (`<digits><unit>`, unit one of
/// `H M S m u n`) without overflow, capped at [`MAX_GRPC_TIMEOUT`].
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (num, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // More digits than u64 holds is simply "very long".
    let n: u64 = num.parse().unwrap_or(u64::MAX);
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(d.min(MAX_GRPC_TIMEOUT))
}

/// Refuses a write by which `sender` would publish another member's
/// attributes.
fn own_publish_only(
    refusals: &RefusalLog,
    rpc: &'static str,
    write: &RaftRequest,
    sender: u64,
) -> Result<(), Status> {
    match write {
        RaftRequest::Publish { node_id, .. } if *node_id != sender => {
            let msg = format!(
                "warden: member {sender:x} may not publish the attributes of member {node_id:x}"
            );
            refusals.warn("speaks for another member", &format!("{rpc}: {msg}"));
            Err(Status::permission_denied(msg))
        }
        _ => Ok(()),
    }
}

type BlobStream = Pin<Box<dyn Stream<Item = Result<Blob, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let sender = self.admit(&req, "AppendEntries", Need::Replicate)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref()).map_err(bad)?;
        self.node.failover.heard_from(sender);
        let term = self.node.term();
        self.in_range(
            "AppendEntries",
            sender,
            peer_auth::check_append(&rpc, term, sender),
        )?;
        let r = self
            .node
            .raft
            .append_entries(rpc)
            .await
            .map_err(|e| e.to_string());
        reply(&r)
    }

    async fn vote(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let sender = self.admit(&req, "Vote", Need::Member)?;
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref()).map_err(bad)?;
        let term = self.node.term();
        self.in_range(
            "Vote",
            sender,
            peer_auth::check_vote_request(&rpc, term, sender),
        )?;
        let r = self.node.raft.vote(rpc).await.map_err(|e| e.to_string());
        reply(&r)
    }

    async fn pre_vote(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let sender = self.admit(&req, "PreVote", Need::Member)?;
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref()).map_err(bad)?;
        let term = self.node.term();
        self.in_range(
            "PreVote",
            sender,
            peer_auth::check_vote_request(&rpc, term, sender),
        )?;
        let r = self
            .node
            .raft
            .pre_vote(rpc)
            .await
            .map_err(|e| e.to_string());
        reply(&r)
    }

    type StreamAppendStream = BlobStream;

    async fn stream_append(
        &self,
        req: Request<Streaming<Blob>>,
    ) -> Result<Response<BlobStream>, Status> {
        let sender = self.admit(&req, "StreamAppend", Need::Replicate)?;
        let incoming = req.into_inner();
        // Decode and range-check until the first bad or failed message; the
        // input then ends, the answer stream ends with InvalidArgument
        // naming the problem, and the leader re-establishes replication.
        let bad_message = Arc::new(std::sync::Mutex::new(None::<String>));
        let seen = bad_message.clone();
        let node = self.node.clone();
        let broken_node = self.node.clone();
        let input = incoming
            .take_while(move |m| {
                // The sender is gone or its connection broke: tell the
                // fail-over task at once (see `failover`).
                match m {
                    Ok(_) => broken_node.failover.heard_from(sender),
                    Err(_) => broken_node.failover.stream_broke(sender),
                }
                futures::future::ready(m.is_ok())
            })
            .map(move |m| match m {
                Ok(blob) => decode::<AppendEntriesRequest<TypeConfig>>(&blob)
                    .and_then(|rpc| {
                        peer_auth::check_append(&rpc, node.term(), sender)
                            .map(|()| rpc)
                            .map_err(|e| format!("warden: {e}"))
                    })
                    .map_err(|e| {
                        tracing::warn!("stream_append from {sender:x}: {e}");
                        if let Ok(mut slot) = seen.lock() {
                            *slot = Some(e);
                        }
                    }),
                Err(_) => Err(()),
            })
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| futures::future::ready(r.ok()));
        let out = self.node.raft.stream_append(input).map(|item| {
            let r: Remote<_> = item.map_err(|fatal| fatal.to_string());
            encode(&r).map_err(Status::internal)
        });
        let last = futures::stream::once(async move {
            bad_message
                .lock()
                .ok()
                .and_then(|mut slot| slot.take())
                .map(|e| Err(bad(e)))
        })
        .filter_map(futures::future::ready);
        let out = out.chain(last);
        Ok(Response::new(Box::pin(out)))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<Blob>>,
    ) -> Result<Response<Blob>, Status> {
        let sender = self.admit(&req, "InstallSnapshot", Need::Replicate)?;
        let _slot = self.receiving.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "warden: this member is already receiving {MAX_SNAPSHOT_RECEIVES} snapshots; \
                 retry later"
            ))
        })?;
        let mut incoming = req.into_inner();
        let first = next_chunk(&mut incoming)
            .await?
            .ok_or_else(|| bad("empty snapshot stream".into()))??;
        let header: SnapshotHeader = decode(&first).map_err(bad)?;
        let term = self.node.term();
        self.in_range(
            "InstallSnapshot",
            sender,
            peer_auth::check_snapshot_header(&header, term, sender),
        )?;
        self.node.failover.heard_from(sender);
        let dir = self.node.config.data_dir.join("snap");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Status::internal(format!("create {}: {e}", dir.display())))?;
        let tmp = dir.join(format!("recv-{:016x}.tmp", rand::random::<u64>()));
        let result = async {
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| Status::internal(format!("create {}: {e}", tmp.display())))?;
            let mut received: u64 = 0;
            while let Some(chunk) = next_chunk(&mut incoming).await? {
                let chunk = chunk?;
                received = received.saturating_add(chunk.data.len() as u64);
                if received > MAX_SNAPSHOT_BYTES {
                    return Err(bad(format!(
                        "snapshot larger than {MAX_SNAPSHOT_BYTES} bytes refused"
                    )));
                }
                f.write_all(&chunk.data)
                    .await
                    .map_err(|e| Status::internal(format!("write {}: {e}", tmp.display())))?;
            }
            f.sync_all()
                .await
                .map_err(|e| Status::internal(format!("sync {}: {e}", tmp.display())))?;
            // Verify before Raft sees it: a truncated stream is refused here.
            let check = tmp.clone();
            tokio::task::spawn_blocking(move || {
                super::state_machine::load_snapshot(&check).map(|_| ())
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::data_loss(e.to_string()))?;
            let snapshot = openraft::storage::Snapshot {
                meta: header.meta,
                snapshot: SnapshotFile { path: tmp.clone() },
            };
            let r = self
                .node
                .raft
                .install_full_snapshot(header.vote, snapshot)
                .await
                .map_err(|e| e.to_string());
            reply(&r)
        }
        .await;
        if tmp.exists() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn transfer_leader(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let sender = self.admit(&req, "TransferLeader", Need::Member)?;
        let rpc: TransferLeaderRequest<TypeConfig> = decode(req.get_ref()).map_err(bad)?;
        let term = self.node.term();
        self.in_range(
            "TransferLeader",
            sender,
            peer_auth::check_transfer(&rpc, term, sender),
        )?;
        let r = self
            .node
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| e.to_string());
        reply(&r)
    }

    async fn forward(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        // Anyone of our cluster may ask what our membership is (a removed
        // member asks to learn that it was); everything else needs a member.
        let sender = self.admit(&req, "Forward", Need::SameCluster)?;
        let deadline = self.node.deadline(grpc_timeout(&req));
        let len = req.get_ref().data.len();
        if len > MAX_FORWARD_BYTES {
            return Err(bad(format!(
                "forwarded request of {len} bytes is larger than {MAX_FORWARD_BYTES}: \
                 etcdserver: request is too large"
            )));
        }
        let fwd: ForwardRequest = decode(req.get_ref()).map_err(bad)?;
        if !matches!(fwd, ForwardRequest::AppliedMembership) {
            self.admit(&req, "Forward", Need::Member)?;
        }
        if let ForwardRequest::Write(w) = &fwd {
            self.own_publish_only("Forward", w, sender)?;
        }
        let id = req
            .metadata()
            .get(crate::api::trace::REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::api::trace::sane_id)
            .map(str::to_owned);
        let resp = self
            .node
            .as_forwarded(id, sender, self.node.handle_forward(fwd, deadline))
            .await;
        encode(&resp).map(Response::new).map_err(Status::internal)
    }

    type ForwardBatchStream = BlobStream;

    async fn forward_batch(&self, req: Request<Blob>) -> Result<Response<BlobStream>, Status> {
        let sender = self.admit(&req, "ForwardBatch", Need::Member)?;
        let len = req.get_ref().data.len();
        let max = MAX_FORWARD_BYTES + BATCH_OVERHEAD_BYTES;
        if len > max {
            return Err(bad(format!(
                "forwarded batch of {len} bytes is larger than {max}"
            )));
        }
        let writes = decode_batch(req.get_ref()).map_err(bad)?;
        for (_, w) in &writes {
            self.own_publish_only("ForwardBatch", &w.req, sender)?;
        }
        let answers = serve_batch(self.node.clone(), writes, sender);
        Ok(Response::new(Box::pin(answers)))
    }

    type ForwardStreamStream = BlobStream;

    async fn forward_stream(
        &self,
        req: Request<Streaming<Blob>>,
    ) -> Result<Response<BlobStream>, Status> {
        let sender = self.admit(&req, "ForwardStream", Need::Member)?;
        let node = self.node.clone();
        let refusals = self.refusals.clone();
        // Each write is checked as a `Forward` call is: the stream lives
        // on, and its sender may stop being a member meanwhile.
        let check = move |req: &ForwardRequest| {
            let listed = node
                .raft
                .metrics()
                .borrow_watched()
                .membership_config
                .membership()
                .get_node(&sender)
                .is_some();
            if !listed {
                let msg =
                    format!("warden: {sender:x} is not a member of this cluster's membership");
                refusals.warn("not a member", &format!("ForwardStream: {msg}"));
                return Err(Status::permission_denied(msg));
            }
            match req {
                ForwardRequest::Write(w) => own_publish_only(&refusals, "ForwardStream", w, sender),
                _ => Ok(()),
            }
        };
        let answers = serve_stream(self.node.clone(), req.into_inner(), sender, check);
        Ok(Response::new(Box::pin(answers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vouches_are_asked_once_remembered_and_bounded() {
        let v = Vouches::default();
        let t0 = Instant::now();
        assert_eq!(v.check(7, t0), VouchCheck::Start);
        // Being asked: refused meanwhile, not asked twice.
        assert_eq!(v.check(7, t0), VouchCheck::Refuse);
        v.settle(7, false, t0);
        assert_eq!(v.check(7, t0), VouchCheck::Refuse);
        // Asked again once the refusal expires; a yes admits for a while.
        let t1 = t0 + VOUCH_RETRY + Duration::from_millis(1);
        assert_eq!(v.check(7, t1), VouchCheck::Start);
        v.settle(7, true, t1);
        assert_eq!(v.check(7, t1), VouchCheck::Admit);
        assert_eq!(v.check(7, t1 + VOUCH_FOR), VouchCheck::Start);
        // A flood of made-up ids is bounded.
        for id in 100..(100 + MAX_VOUCHES as u64) {
            let _ = v.check(id, t1);
        }
        assert_eq!(v.check(9999, t1), VouchCheck::Refuse);
    }
    use crate::node::forward::ForwardResponse;
    use openraft::raft::{
        AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteResponse,
    };
    use proptest::prelude::*;
    use warden_core::state::MAX_NESTING;

    /// Hand-built postcard bytes of a `Forward` write of a txn with `depth`
    /// txns nested below it, as a hostile peer would send them.
    fn nested_forward_write(depth: usize) -> Vec<u8> {
        // ForwardRequest::Write(Request::Kv(Command::Txn(..)))
        let mut b = vec![0u8, 0, 2];
        for _ in 0..depth {
            b.extend_from_slice(&[0, 1, 3]); // compare: [], success: [Txn(..)]
        }
        b.extend_from_slice(&[0, 0, 0]);
        b.extend(std::iter::repeat_n(0u8, depth)); // failure: []
        b
    }

    fn blob(data: Vec<u8>) -> Blob {
        Blob { data }
    }

    /// Every decoder a peer's bytes reach: the requests this member serves
    /// and the replies it reads as a client of its peers.
    fn decode_all(data: &[u8]) {
        let b = blob(data.to_vec());
        let _ = decode::<AppendEntriesRequest<TypeConfig>>(&b);
        let _ = decode::<VoteRequest<TypeConfig>>(&b);
        let _ = decode::<SnapshotHeader>(&b);
        let _ = decode::<TransferLeaderRequest<TypeConfig>>(&b);
        let _ = decode::<ForwardRequest>(&b);
        let _ = decode::<ForwardResponse>(&b);
        let _ = decode_batch(&b);
        let _ = decode::<crate::node::forward_batch::BatchAnswer>(&b);
        let _ = decode::<Remote<AppendEntriesResponse<TypeConfig>>>(&b);
        let _ = decode::<Remote<StreamAppendResult<TypeConfig>>>(&b);
        let _ = decode::<Remote<VoteResponse<TypeConfig>>>(&b);
        let _ = decode::<Remote<SnapshotResponse<TypeConfig>>>(&b);
        let _ = decode::<Remote<()>>(&b);
    }

    #[test]
    fn hand_built_forward_matches_postcard() {
        use warden_core::state::types::{RequestOp, TxnRequest};
        let mut t = TxnRequest::default();
        for _ in 0..3 {
            t = TxnRequest {
                compare: Vec::new(),
                success: vec![RequestOp::Txn(t)],
                failure: Vec::new(),
            };
        }
        let fwd = ForwardRequest::Write(crate::node::types::Request::kv(
            warden_core::state::Command::Txn(t),
        ));
        assert_eq!(encode(&fwd).unwrap().data, nested_forward_write(3));
        assert!(decode::<ForwardRequest>(&blob(nested_forward_write(MAX_NESTING))).is_ok());
    }

    #[test]
    fn deeply_nested_forward_is_a_decode_error_on_a_small_stack() {
        let r = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(|| {
                let deep = blob(nested_forward_write(10_000));
                let once = decode::<ForwardRequest>(&deep).map(|_| ());
                let one_more =
                    decode::<ForwardRequest>(&blob(nested_forward_write(MAX_NESTING + 1)))
                        .map(|_| ());
                (once, one_more)
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(r.0.is_err() && r.1.is_err(), "{r:?}");
        assert!(r.0.unwrap_err().starts_with("decode peer message"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic_a_peer_decoder(
            data in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            decode_all(&data);
        }

        #[test]
        fn random_tails_after_valid_prefixes_never_panic(
            prefix in 0usize..4,
            tail in proptest::collection::vec(any::<u8>(), 0..256)
        ) {
            // Start like a real message, so decoding goes deep before the
            // garbage: a Forward write, a nested txn, an entry list.
            let starts: [&[u8]; 4] = [&[0, 0, 2], &[0, 0, 11, 1, b'l', 1], &[0, 0, 2, 0, 1, 3], &[1]];
            let mut data = starts[prefix].to_vec();
            data.extend_from_slice(&tail);
            decode_all(&data);
        }
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
    }

    #[test]
    fn grpc_timeout_malformed_is_none() {
        for v in [
            "", "S", "5", "5x", "-5S", "+5S", "5 S", "5.0S", "\u{e9}S", "5\u{e9}",
        ] {
            assert_eq!(parse_grpc_timeout(v), None, "{v:?}");
        }
    }

    #[test]
    fn grpc_timeout_huge_values_saturate_at_the_cap() {
        let max = u64::MAX.to_string();
        for v in [
            format!("{max}H"),
            format!("{max}M"),
            format!("{max}S"),
            format!("{max}m"),
            format!("{max}u"),
            format!("{max}n"),
            "99999999H".to_string(),
            "5124095576030431H".to_string(), // * 3600 overflows u64
            "99999999999999999999999999S".to_string(), // more than u64
        ] {
            assert_eq!(parse_grpc_timeout(&v), Some(MAX_GRPC_TIMEOUT), "{v}");
        }
    }

    #[test]
    fn grpc_timeout_from_metadata() {
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("grpc-timeout", "99999999H".parse().unwrap());
        assert_eq!(grpc_timeout(&req), Some(MAX_GRPC_TIMEOUT));
    }
}
