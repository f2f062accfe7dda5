//! Outgoing peer transport: openraft's `RaftNetworkV2` over the `RaftPeer`
//! gRPC service (proto/warden/peer.proto), and the per-peer link table shown
//! by `warden status`.
//!
//! Each peer gets one lazily connected tonic channel; tonic re-dials a broken
//! connection on the next call. When a peer is unreachable openraft backs off
//! using `PEER_BACKOFF` (warden-client's `Backoff` schedule): exponential from
//! 50 ms to 2 s with jitter so members restarting together do not retry in
//! lockstep. Messages are bounded
//! (`MAX_MESSAGE`), snapshots go in `SNAPSHOT_CHUNK`-sized pieces.
//!
//! Must never: block on a dead peer past the RPC's time budget.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::RaftNetworkV2;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tonic::transport::Endpoint;

use super::peer_auth::{PeerClient, PeerIdentity};
use super::state_machine::SnapshotFile;
use super::telemetry::Telemetry;
use super::types::{Member, RaftSnapshot, SnapshotMeta, TypeConfig, Vote};
use warden_client::backoff::Backoff as ClientBackoff;
use warden_proto::peer::raft_peer_client::RaftPeerClient;
use warden_proto::peer::Blob;

/// Largest peer message accepted or sent (an AppendEntries batch).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Size of one snapshot chunk on the wire.
pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Reconnect schedule for an unreachable peer: exponential from 50 ms to
/// 2 s, each delay jittered between half and all of its ceiling.
pub const PEER_BACKOFF: ClientBackoff = ClientBackoff {
    base: Duration::from_millis(50),
    max: Duration::from_secs(2),
};

/// State of the link to one peer, as shown in status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkState {
    Connecting,
    Connected,
    Disconnected,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkInfo {
    pub addr: String,
    pub state: LinkState,
    pub last_error: Option<String>,
    /// Milliseconds since the last successful RPC, if there was one.
    #[serde(skip)]
    pub last_ok: Option<Instant>,
    /// Failed calls since the last success (drives the reconnect backoff).
    #[serde(skip)]
    pub failures: u32,
    /// When the last call failed, if one did.
    #[serde(skip)]
    pub last_failed: Option<Instant>,
}

/// Link state of every peer this member has talked to.
#[derive(Default)]
pub struct Links {
    inner: Mutex<BTreeMap<u64, LinkInfo>>,
    /// Peer address → address to dial instead (`--peer-route`).
    routes: BTreeMap<String, String>,
    /// TLS to peers (the `--peer-*` files), or plaintext.
    tls: Option<warden_client::TlsOptions>,
    /// Who this member is, sent with every peer call.
    identity: PeerIdentity,
    /// Send failures and heartbeat round trips are reported here.
    telemetry: Arc<Telemetry>,
}

impl Links {
    pub fn new(
        routes: BTreeMap<String, String>,
        tls: Option<warden_client::TlsOptions>,
        identity: PeerIdentity,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Links {
            inner: Mutex::default(),
            routes,
            tls,
            identity,
            telemetry,
        }
    }

    /// A lazily connecting client for the peer advertised at `peer_addr`:
    /// dialed at its route, over TLS if configured (the peer's certificate
    /// must be valid for the host of `peer_addr`, wherever it is dialed).
    /// Every call made with it carries this member's identity.
    pub fn client(&self, peer_addr: &str) -> Result<PeerClient, String> {
        let tls = match &self.tls {
            None => None,
            Some(t) => Some(
                t.tonic_config(warden_client::tls::host_of(peer_addr))
                    .map_err(|e| e.to_string())?,
            ),
        };
        peer_client(&self.route(peer_addr), tls, self.identity)
    }

    /// The address to dial for a peer's advertised address.
    pub fn route(&self, peer_addr: &str) -> String {
        self.routes
            .get(peer_addr)
            .cloned()
            .unwrap_or_else(|| peer_addr.to_string())
    }

    fn set(&self, id: u64, addr: &str, state: LinkState, err: Option<String>) {
        match state {
            LinkState::Disconnected => self.telemetry.peer_send_failed(id),
            LinkState::Connecting => self.telemetry.peer_known(id),
            LinkState::Connected => {}
        }
        if let Ok(mut m) = self.inner.lock() {
            let e = m.entry(id).or_insert_with(|| LinkInfo {
                addr: addr.to_string(),
                state: LinkState::Connecting,
                last_error: None,
                last_ok: None,
                failures: 0,
                last_failed: None,
            });
            e.addr = addr.to_string();
            match state {
                LinkState::Connected => {
                    e.last_ok = Some(Instant::now());
                    e.failures = 0;
                }
                LinkState::Disconnected => {
                    e.last_error = err;
                    e.failures = e.failures.saturating_add(1);
                    e.last_failed = Some(Instant::now());
                }
                LinkState::Connecting => e.last_error = err,
            }
            e.state = state;
        }
    }

    /// How long to wait before calling a peer whose recent calls failed:
    /// `PEER_BACKOFF` (exponential from 50 ms to 2 s with jitter), nothing
    /// after a success.
    /// openraft retries a broken replication stream at once; without this
    /// pause a dead peer costs a busy loop (and a log line per attempt).
    pub fn retry_delay(&self, id: u64) -> Option<Duration> {
        let failures = self.inner.lock().ok()?.get(&id)?.failures;
        let round = failures.checked_sub(1)?;
        Some(PEER_BACKOFF.delay_random(round))
    }

    pub fn snapshot(&self) -> BTreeMap<u64, LinkInfo> {
        self.inner.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Serialises a peer message.
pub fn encode<T: Serialize>(v: &T) -> Result<Blob, String> {
    postcard::to_allocvec(v)
        .map(|data| Blob { data })
        .map_err(|e| format!("encode peer message: {e}"))
}

/// Deserialises a peer message.
/// Bytes after the message are refused: a sender that appends anything is
/// not speaking this format.
pub fn decode<T: DeserializeOwned>(b: &Blob) -> Result<T, String> {
    decode_bytes(&b.data)
}

/// One value from `bytes` (a peer message, or an item inside one); nothing
/// may follow it.
pub fn decode_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (v, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| format!("decode peer message: {e}"))?;
    if !rest.is_empty() {
        return Err(format!(
            "decode peer message: {} unexpected bytes after it",
            rest.len()
        ));
    }
    Ok(v)
}

/// A lazily connecting client dialing `addr`, over TLS with `tls`, that
/// sends `identity` with every call.
fn peer_client(
    addr: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    identity: PeerIdentity,
) -> Result<PeerClient, String> {
    let bad = |e: tonic::transport::Error| format!("bad peer address {addr:?}: {e}");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(bad)?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        ep = ep.tls_config(tls).map_err(bad)?;
    }
    Ok(
        RaftPeerClient::with_interceptor(ep.connect_lazy(), identity)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    )
}

#[derive(Clone)]
pub struct NetworkFactory {
    pub links: Arc<Links>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &Member) -> Self::Network {
        self.links
            .set(target, &node.peer_addr, LinkState::Connecting, None);
        PeerNetwork {
            target,
            addr: node.peer_addr.clone(),
            client: self.links.client(&node.peer_addr),
            links: self.links.clone(),
        }
    }
}

pub struct PeerNetwork {
    target: u64,
    addr: String,
    client: Result<PeerClient, String>,
    links: Arc<Links>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

/// Classifies a failed call: transport failures make the peer unreachable
/// (openraft backs off), anything else is retried at once.
fn rpc_err(status: &tonic::Status) -> RPCError<TypeConfig> {
    let m = Msg(format!("{}: {}", status.code(), status.message()));
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
            RPCError::Unreachable(Unreachable::new(&m))
        }
        _ => RPCError::Network(NetworkError::new(&m)),
    }
}

fn local_err(msg: String) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&Msg(msg)))
}

/// What the remote side answers for request/response calls: its Raft's
/// result, with a remote fatal error flattened to text.
pub type Remote<T> = Result<T, String>;

impl PeerNetwork {
    /// Waits out the reconnect backoff of this peer, if its last call failed.
    async fn pace(&self) {
        if let Some(d) = self.links.retry_delay(self.target) {
            tokio::time::sleep(d).await;
        }
    }

    fn client(&self) -> Result<PeerClient, RPCError<TypeConfig>> {
        self.client
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Msg(e))))
    }

    fn note(&self, ok: bool, err: Option<String>) {
        let state = if ok {
            LinkState::Connected
        } else {
            LinkState::Disconnected
        };
        self.links.set(self.target, &self.addr, state, err);
    }

    async fn call<Req, Resp, F, Fut>(
        &mut self,
        req: &Req,
        timeout: Duration,
        f: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(PeerClient, tonic::Request<Blob>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Blob>, tonic::Status>>,
    {
        self.pace().await;
        let client = self.client()?;
        let mut r = tonic::Request::new(encode(req).map_err(local_err)?);
        r.set_timeout(timeout);
        match f(client, r).await {
            Ok(resp) => {
                self.note(true, None);
                let out: Remote<Resp> = decode(resp.get_ref()).map_err(local_err)?;
                out.map_err(|e| local_err(format!("peer {:x}: {e}", self.target)))
            }
            Err(status) => {
                self.note(false, Some(status.message().to_string()));
                Err(rpc_err(&status))
            }
        }
    }
}

/// First message of a snapshot install stream.
#[derive(Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub vote: Vote,
    pub meta: SnapshotMeta,
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, option.soft_ttl(), |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> futures::future::BoxFuture<
        's,
        Result<
            futures::stream::BoxStream<
                's,
                Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>,
            >,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            self.pace().await;
            let mut client = self.client()?;
            // A stream's responses answer its requests in order, so the
            // first response answers the first request: when that is a
            // heartbeat (no entries, nothing for the follower to write),
            // the time between them is the link's round trip.
            let first_sent: Arc<Mutex<Option<(Instant, bool)>>> = Arc::default();
            let sent = first_sent.clone();
            let outgoing = input.filter_map(move |req| {
                if let Ok(mut s) = sent.lock() {
                    if s.is_none() {
                        *s = Some((Instant::now(), req.entries.is_empty()));
                    }
                }
                async move {
                    match encode(&req) {
                        Ok(b) => Some(b),
                        Err(e) => {
                            tracing::error!("dropping append that cannot be encoded: {e}");
                            None
                        }
                    }
                }
            });
            let mut r = tonic::Request::new(outgoing);
            r.set_timeout(option.soft_ttl().max(Duration::from_secs(3600)));
            let resp = match client.stream_append(r).await {
                Ok(resp) => {
                    self.note(true, None);
                    resp
                }
                Err(status) => {
                    self.note(false, Some(status.message().to_string()));
                    return Err(rpc_err(&status));
                }
            };
            let target = self.target;
            let links = self.links.clone();
            let addr = self.addr.clone();
            let mut first_answer = true;
            let s = resp.into_inner().map(move |item| match item {
                Ok(blob) => {
                    if std::mem::take(&mut first_answer) {
                        let first = first_sent.lock().ok().and_then(|s| *s);
                        if let Some((at, true)) = first {
                            links.telemetry.peer_round_trip(target, at.elapsed());
                        }
                    }
                    let r: Remote<StreamAppendResult<TypeConfig>> =
                        decode(&blob).map_err(local_err)?;
                    r.map_err(|e| local_err(format!("peer {target:x}: {e}")))
                }
                Err(status) => {
                    links.set(
                        target,
                        &addr,
                        LinkState::Disconnected,
                        Some(status.message().to_string()),
                    );
                    Err(rpc_err(&status))
                }
            });
            Ok(s.boxed())
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, option.soft_ttl(), |mut c, r| async move {
            c.vote(r).await
        })
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, option.soft_ttl(), |mut c, r| async move {
            c.pre_vote(r).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: RaftSnapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let to_stream = |e: RPCError<TypeConfig>| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Timeout(t) => StreamingError::Timeout(t),
            RPCError::Network(n) => StreamingError::Network(n),
            RPCError::RemoteError(r) => {
                StreamingError::Network(NetworkError::new(&Msg(r.to_string())))
            }
        };
        let mut client = self.client().map_err(to_stream)?;
        let header = encode(&SnapshotHeader {
            vote,
            meta: snapshot.meta.clone(),
        })
        .map_err(|e| to_stream(local_err(e)))?;
        let path = snapshot.snapshot.path.clone();
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| to_stream(local_err(format!("open snapshot {}: {e}", path.display()))))?;
        // Header, then the file in bounded chunks; a read error ends the
        // stream early and the receiver refuses the incomplete file.
        let chunks = futures::stream::unfold(Some(file), |state| async move {
            let mut f = state?;
            let mut buf = vec![0u8; SNAPSHOT_CHUNK];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Blob { data: buf }, Some(f)))
                }
                Err(e) => {
                    tracing::warn!("reading snapshot for send: {e}");
                    None
                }
            }
        });
        let body = futures::stream::iter([header]).chain(chunks);
        let mut req = tonic::Request::new(body);
        req.set_timeout(option.hard_ttl().max(Duration::from_secs(60)));
        let send = async { client.install_snapshot(req).await };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = send => match res {
                Ok(resp) => {
                    self.note(true, None);
                    let out: Remote<SnapshotResponse<TypeConfig>> =
                        decode(resp.get_ref()).map_err(|e| to_stream(local_err(e)))?;
                    out.map_err(|e| to_stream(local_err(e)))
                }
                Err(status) => {
                    self.note(false, Some(status.message().to_string()));
                    Err(to_stream(rpc_err(&status)))
                }
            }
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&req, option.soft_ttl(), |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }

    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(schedule(PEER_BACKOFF)))
    }
}

/// The endless sequence of delays of `backoff`, one per retry round, each
/// with fresh jitter (the form openraft's `Backoff` and retry loops take).
pub fn schedule(backoff: ClientBackoff) -> impl Iterator<Item = Duration> + Send + 'static {
    std::iter::successors(Some(0u32), |r| Some(r.saturating_add(1)))
        .map(move |round| backoff.delay_random(round))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_bytes_after_a_message_are_refused() {
        let mut b = encode(&(7u64, String::from("x"))).unwrap();
        assert_eq!(decode::<(u64, String)>(&b).unwrap(), (7, "x".into()));
        b.data.push(0);
        let e = decode::<(u64, String)>(&b).unwrap_err();
        assert!(e.contains("1 unexpected bytes"), "{e}");
    }

    #[test]
    fn failing_links_back_off_and_recover() {
        let links = Links::default();
        assert_eq!(links.retry_delay(7), None, "unknown peer: no pause");
        links.set(7, "a:1", LinkState::Connecting, None);
        assert_eq!(links.retry_delay(7), None);
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            links.set(7, "a:1", LinkState::Disconnected, Some("refused".into()));
            last = links.retry_delay(7).unwrap_or_default();
            assert!(last >= Duration::from_millis(25), "{last:?}");
        }
        assert!(last >= Duration::from_secs(1), "capped near 2 s: {last:?}");
        assert!(last < Duration::from_secs(3), "{last:?}");
        links.set(7, "a:1", LinkState::Connected, None);
        assert_eq!(links.retry_delay(7), None, "a success resets the backoff");
    }

    #[test]
    fn backoff_grows_to_cap_with_jitter() {
        let v: Vec<Duration> = schedule(PEER_BACKOFF).take(12).collect();
        assert!(v[0] >= Duration::from_millis(25) && v[0] < Duration::from_millis(75));
        for d in &v[8..] {
            assert!(
                *d >= Duration::from_secs(1) && *d < Duration::from_secs(3),
                "{d:?}"
            );
        }
        // Jitter: not every capped step is identical.
        assert!(v[8..].windows(2).any(|w| w[0] != w[1]));
    }
}
