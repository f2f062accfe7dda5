//! A follower forwards its clients' writes, its linearizable reads'
//! ReadIndex rounds and lease keep-alives to the leader as messages on one
//! long-lived `ForwardStream` call, not as a `Forward` call each. A
//! call of its own costs an HTTP/2 stream, its headers, the peer checks and
//! a task on each side, on the path of every write; on the open stream a
//! write is one DATA frame each way, and writes that arrive together leave
//! in one `writev` (etcd's followers likewise send proposals on their peer
//! message stream). Measured in docs/benchmarks.md ("Forwarded writes on
//! one stream").
//!
//! Each message carries a sequence number, what is left of the request's
//! deadline, and the request with its request id ([`StreamedRequest`]);
//! the leader serves each exactly as a `Forward` call
//! (`Node::handle_forward`), concurrently, and answers `(sequence number,
//! Forward answer)` as soon as it has it. Membership changes and "which
//! membership have you applied?" stay `Forward` calls (rare, and the
//! latter is asked by members that may have been removed).
//!
//! Failures: the stream cannot be opened: as a failed `Forward` call (never
//! delivered means "ask the new leader", anything else an unknown
//! outcome); a leader without `ForwardStream` (an older version) gets a
//! `Forward` call per request for the next 30 s, then a stream is tried
//! again. The stream breaks or ends: every request sent on it and not
//! answered has an unknown outcome (`LeaderChanged`), and the next request
//! opens a new stream.
//!
//! Bounds (leader side): a message is at most `MAX_FORWARD_BYTES` plus
//! [`MESSAGE_OVERHEAD_BYTES`], refused before it is decoded; one stream
//! has at most [`MAX_IN_FLIGHT`] requests and [`MAX_IN_FLIGHT_BYTES`]
//! being served and is not read further until one ends; each request is
//! checked as a `Forward` call is (the sender still a member, a write
//! publishing only its own attributes), and a bad one ends the stream with
//! its error, and an answer too large for a peer message fails alone.
//! Follower side: at most [`MAX_QUEUED`] requests wait for the connection
//! (past that, and for a while after a stream failed to open, requests go
//! as `Forward` calls, each failing or succeeding on its own); a request
//! whose caller gives up (deadline, cancelled) stops waiting for its
//! answer and, if still queued, is not sent; a request leaves with what is
//! left of its deadline as it leaves.
//!
//! Must never: answer a write from another write's result (answers are
//! matched by sequence number), or retry a write that may have been sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::network;
use super::peer_service::MAX_FORWARD_BYTES;
use super::{ForwardRequest, ForwardResponse, Node, NodeError};
use warden_proto::peer::Blob;

/// Requests one stream may have being served on the leader at once.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Bytes of requests one stream may have being served on the leader at
/// once (a single request may be larger, up to `MAX_FORWARD_BYTES`: it is
/// served, alone).
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// Bytes a message may add to its write's encoding (sequence number,
/// timeout, length prefix).
pub const MESSAGE_OVERHEAD_BYTES: usize = 32;

/// One message in: sequence number, timeout in milliseconds, encoded
/// [`StreamedRequest`].
type StreamedMessage = (u64, u64, ByteBuf);

/// Messages a follower may have queued for its stream and not yet handed
/// to the connection (the leader reads slowly, or not at all); past this,
/// requests go as `Forward` calls.
const MAX_QUEUED: usize = 4096;

/// How long after a stream to a leader failed to open requests to it go
/// as `Forward` calls (which fail or succeed each on its own, in parallel)
/// instead of trying to open another one.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// How long a leader found not to serve `ForwardStream` (an older
/// version) gets `Forward` calls before a stream is tried again (it may
/// have been upgraded).
const RETRY_UNSUPPORTED: Duration = Duration::from_secs(30);

/// A request waiting for its turn on the connection.
struct Queued {
    seq: u64,
    deadline: Instant,
    /// The encoded [`StreamedRequest`].
    item: Vec<u8>,
}

impl Queued {
    /// The message, with what is left of the deadline as it leaves; `None`
    /// if nothing is left (its caller has given up: it is not sent).
    fn message(self) -> Option<Blob> {
        let left = self.deadline.checked_duration_since(Instant::now())?;
        let left = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        network::encode(&(self.seq, left, ByteBuf::from(self.item))).ok()
    }
}

/// A forwarded request on the stream, with the client request's id (for
/// the leader's log).
#[derive(Serialize, Deserialize)]
pub struct StreamedRequest {
    pub req: ForwardRequest,
    pub id: Option<String>,
}

impl StreamedRequest {
    /// Whether the stream carries this kind of request.
    fn streamable(req: &ForwardRequest) -> bool {
        matches!(
            req,
            ForwardRequest::Write(_)
                | ForwardRequest::ReadIndex
                | ForwardRequest::LeaseRenew(_)
                | ForwardRequest::LeaseTimeToLive(_)
        )
    }
}

/// One message out: the write's sequence number and what `Forward` would
/// have answered for it.
pub type StreamAnswer = (u64, ForwardResponse);

type Answer = oneshot::Sender<Result<ForwardResponse, NodeError>>;

/// The writes sent on one stream and not answered yet; `None` once the
/// stream is gone (nothing may wait on it any more).
type Pending = Arc<Mutex<Option<HashMap<u64, Answer>>>>;

/// An open stream to one leader.
struct Open {
    leader: u64,
    tx: mpsc::Sender<Queued>,
    pending: Pending,
}

/// How queueing a request on a stream went.
enum Queue {
    Queued,
    /// The queue is full: nothing was sent.
    Full,
    /// The stream is gone: nothing was sent.
    Gone,
}

impl Open {
    /// Whether the stream still takes requests: its request side is open
    /// and its answers are still read.
    fn alive(&self) -> bool {
        !self.tx.is_closed() && self.pending.lock().is_ok_and(|p| p.is_some())
    }

    /// Registers `q`'s answer and queues it to be sent.
    fn send(&self, q: Queued, answer: Answer) -> Queue {
        let Ok(mut p) = self.pending.lock() else {
            return Queue::Gone;
        };
        let Some(map) = p.as_mut() else {
            return Queue::Gone;
        };
        let seq = q.seq;
        match self.tx.try_send(q) {
            Ok(()) => {
                map.insert(seq, answer);
                Queue::Queued
            }
            Err(mpsc::error::TrySendError::Full(_)) => Queue::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Queue::Gone,
        }
    }
}

/// A request's place among a stream's pending answers, given up when its
/// caller stops waiting (deadline, or cancelled), answered or not.
struct Waiting {
    open: Arc<Open>,
    seq: u64,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Ok(mut p) = self.open.pending.lock() {
            if let Some(map) = p.as_mut() {
                map.remove(&self.seq);
            }
        }
    }
}

/// The follower's side: at most one open stream, to the member it last
/// forwarded to.
#[derive(Default)]
pub(super) struct ForwardStreams {
    open: Mutex<Option<Arc<Open>>>,
    /// Held while a stream is being opened, so only one is.
    opening: tokio::sync::Mutex<()>,
    next_seq: AtomicU64,
    /// The leader a stream last failed to open to, and when.
    failed: Mutex<Option<(u64, Instant)>>,
    /// A leader found not to serve `ForwardStream`, and when.
    unsupported: Mutex<Option<(u64, Instant)>>,
}

impl ForwardStreams {
    /// The open stream to `leader`, if there is one that still works.
    fn to(&self, leader: u64) -> Option<Arc<Open>> {
        self.open
            .lock()
            .ok()?
            .as_ref()
            .filter(|o| o.leader == leader && o.alive())
            .cloned()
    }

    /// Whether requests to `leader` go as `Forward` calls for now: it has
    /// no `ForwardStream`, or a stream to it just failed to open.
    fn use_calls(&self, leader: u64) -> bool {
        let recent = |slot: &Mutex<Option<(u64, Instant)>>, within: Duration| {
            slot.lock()
                .is_ok_and(|s| s.is_some_and(|(l, at)| l == leader && at.elapsed() < within))
        };
        recent(&self.unsupported, RETRY_UNSUPPORTED) || recent(&self.failed, REOPEN_AFTER)
    }

    /// Forgets `open` if it is still the open stream.
    fn drop_stream(&self, open: &Arc<Open>) {
        if let Ok(mut slot) = self.open.lock() {
            if slot.as_ref().is_some_and(|o| Arc::ptr_eq(o, open)) {
                *slot = None;
            }
        }
    }
}

fn mark(slot: &Mutex<Option<(u64, Instant)>>, leader: u64) {
    if let Ok(mut s) = slot.lock() {
        *s = Some((leader, Instant::now()));
    }
}

/// How sending on the stream went.
enum Sent {
    /// The leader's answer (or why there is none).
    Answer(Result<ForwardResponse, NodeError>),
    /// Not sent: use a `Forward` call.
    Unsent,
}

impl Node {
    /// Sends `req` to `leader` on the open stream (opening it first if
    /// there is none); answers as [`Node::forward`] would.
    pub(super) async fn forward_streamed(
        &self,
        leader: u64,
        req: ForwardRequest,
        deadline: Instant,
    ) -> Result<ForwardResponse, NodeError> {
        if matches!(req, ForwardRequest::Write(_)) {
            self.telemetry.forward_write();
        }
        let item = StreamedRequest {
            req,
            id: crate::api::trace::current_request_id(),
        };
        if !StreamedRequest::streamable(&item.req) {
            return self.forward(leader, &item.req, deadline).await;
        }
        match self.send_streamed(leader, &item, deadline).await {
            Sent::Answer(r) => r,
            Sent::Unsent => self.forward(leader, &item.req, deadline).await,
        }
    }

    async fn send_streamed(&self, leader: u64, item: &StreamedRequest, deadline: Instant) -> Sent {
        let streams = &self.forward_stream;
        if streams.use_calls(leader) {
            return Sent::Unsent;
        }
        let encoded = match postcard::to_allocvec(item) {
            Ok(e) => e,
            Err(e) => {
                return Sent::Answer(Err(NodeError::Internal(format!(
                    "encode forwarded request: {e}"
                ))))
            }
        };
        if encoded.len() > MAX_FORWARD_BYTES {
            // `Forward` answers why it is too large.
            return Sent::Unsent;
        }
        let open = match streams.to(leader) {
            Some(o) => o,
            None => match self.open_stream(leader, deadline).await {
                Ok(Some(o)) => o,
                Ok(None) => return Sent::Unsent,
                Err(r) => return Sent::Answer(r),
            },
        };
        let seq = streams.next_seq.fetch_add(1, Ordering::Relaxed);
        let queued = Queued {
            seq,
            deadline,
            item: encoded,
        };
        let (tx, rx) = oneshot::channel();
        match open.send(queued, tx) {
            Queue::Queued => {}
            Queue::Full => return Sent::Unsent,
            Queue::Gone => {
                // The stream ended meanwhile: nothing was sent. The next
                // request opens a new one.
                streams.drop_stream(&open);
                return Sent::Unsent;
            }
        }
        let _waiting = Waiting { open, seq };
        Sent::Answer(match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(NodeError::Timeout),
            Ok(Err(_)) => Err(NodeError::LeaderChanged),
            Ok(Ok(r)) => r,
        })
    }

    /// The stream to `leader`: the one another request just opened, or a
    /// new one. `Ok(None)`: use `Forward` calls (the leader does not serve
    /// `ForwardStream`, or a stream to it just failed to open).
    async fn open_stream(
        &self,
        leader: u64,
        deadline: Instant,
    ) -> Result<Option<Arc<Open>>, Result<ForwardResponse, NodeError>> {
        match self.try_open(leader, deadline).await {
            Opening::Open(o) => Ok(Some(o)),
            Opening::UseCalls => Ok(None),
            Opening::TimedOut => Err(Err(NodeError::Timeout)),
            Opening::NoClient(e) => Err(Err(e)),
            // Nothing was sent on it: as a failed `Forward` call (which may
            // wait for a new leader; the opening lock is released by now).
            Opening::Failed(s) => Err(self.failed_forward(leader, &s, deadline).await),
        }
    }

    /// Opens a stream to `leader` unless another request just did, one
    /// opening at a time.
    async fn try_open(&self, leader: u64, deadline: Instant) -> Opening {
        let streams = &self.forward_stream;
        let Ok(_opening) = tokio::time::timeout_at(deadline, streams.opening.lock()).await else {
            return Opening::TimedOut;
        };
        if let Some(o) = streams.to(leader) {
            return Opening::Open(o);
        }
        if streams.use_calls(leader) {
            return Opening::UseCalls;
        }
        let mut client = match self.forward_client(leader) {
            Ok(c) => c,
            Err(e) => return Opening::NoClient(e),
        };
        let (tx, rx) = mpsc::channel::<Queued>(MAX_QUEUED);
        // Requests whose callers gave up while queued are not sent.
        let outgoing = ReceiverStream::new(rx).filter_map(|q| std::future::ready(q.message()));
        let answers = match tokio::time::timeout_at(deadline, client.forward_stream(outgoing)).await
        {
            Err(_) => return Opening::TimedOut,
            Ok(Ok(a)) => a.into_inner(),
            Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                tracing::info!(
                    "leader {leader:x} has no ForwardStream: forwarding a call per request"
                );
                mark(&streams.unsupported, leader);
                return Opening::UseCalls;
            }
            Ok(Err(s)) => {
                // The requests queued behind this one use calls for a while
                // rather than each trying to open a stream in turn.
                mark(&streams.failed, leader);
                return Opening::Failed(s);
            }
        };
        self.telemetry.forward_stream_opened();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(read_answers(leader, answers, pending.clone()));
        let open = Arc::new(Open {
            leader,
            tx,
            pending,
        });
        // Replacing a stream to another member ends it once its requests
        // are answered (its request side ends when the last handle goes).
        if let Ok(mut slot) = streams.open.lock() {
            *slot = Some(open.clone());
        }
        Opening::Open(open)
    }
}

/// How opening a stream went.
enum Opening {
    Open(Arc<Open>),
    /// Use `Forward` calls instead.
    UseCalls,
    TimedOut,
    /// No client for the leader (not in this member's membership).
    NoClient(NodeError),
    /// The call failed before anything was sent on it.
    Failed(tonic::Status),
}

/// Hands each answer on `answers` to its write; when the stream breaks or
/// ends, every write still waiting has an unknown outcome.
async fn read_answers(leader: u64, mut answers: tonic::Streaming<Blob>, pending: Pending) {
    loop {
        let message = match answers.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::debug!("forward stream to {leader:x} ended");
                break;
            }
            Err(s) => {
                tracing::debug!("forward stream to {leader:x}: {s}");
                break;
            }
        };
        let (seq, answer) = match network::decode::<StreamAnswer>(&message) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("forward stream to {leader:x}: {e}");
                break;
            }
        };
        let waiter = pending
            .lock()
            .ok()
            .and_then(|mut p| p.as_mut().and_then(|m| m.remove(&seq)));
        if let Some(w) = waiter {
            let _ = w.send(Ok(answer));
        }
    }
    let left = pending.lock().ok().and_then(|mut p| p.take());
    for (_, w) in left.into_iter().flatten() {
        let _ = w.send(Err(NodeError::LeaderChanged));
    }
}

/// Decodes one `ForwardStream` message: sequence number, deadline,
/// request (a kind the stream carries, nothing after it).
pub fn decode_message(b: &Blob) -> Result<(u64, Duration, StreamedRequest), String> {
    let max = MAX_FORWARD_BYTES + MESSAGE_OVERHEAD_BYTES;
    if b.data.len() > max {
        return Err(format!(
            "forwarded request of {} bytes is larger than {max}: etcdserver: request is too large",
            b.data.len()
        ));
    }
    let (seq, timeout_ms, item): StreamedMessage = network::decode(b)?;
    let r: StreamedRequest =
        network::decode_bytes(&item).map_err(|e| format!("forwarded request: {e}"))?;
    if !StreamedRequest::streamable(&r.req) {
        return Err("forwarded request: not a kind a forward stream carries".into());
    }
    Ok((seq, Duration::from_millis(timeout_ms), r))
}

/// One answer on the stream. An answer too large for a peer message (a
/// txn that read a large range) fails alone instead of ending the stream,
/// as it would end a `Forward` call of its own.
fn encode_answer(seq: u64, answer: ForwardResponse) -> Result<Blob, tonic::Status> {
    let answer: StreamAnswer = (seq, answer);
    let b = network::encode(&answer).map_err(tonic::Status::internal)?;
    // Room for the message's own framing.
    if b.data.len() + 16 <= network::MAX_MESSAGE {
        return Ok(b);
    }
    let failed: StreamAnswer = (
        seq,
        ForwardResponse::Failed(NodeError::Internal(format!(
            "the answer of {} bytes is larger than a peer message may be ({} bytes); \
             the request was served",
            b.data.len(),
            network::MAX_MESSAGE
        ))),
    );
    network::encode(&failed).map_err(tonic::Status::internal)
}

/// Serves a `ForwardStream` as the leader: reads requests (each checked
/// by `check` first) and serves each as `handle_forward` serves a
/// `Forward` call, at most [`MAX_IN_FLIGHT`] at a time, sending each
/// answer (encoded [`StreamAnswer`]) on the returned stream as soon as it
/// is known. A bad message ends the stream with its error after the
/// requests before it are answered.
pub fn serve_stream<C>(
    node: Arc<Node>,
    mut incoming: tonic::Streaming<Blob>,
    from: u64,
    check: C,
) -> ReceiverStream<Result<Blob, tonic::Status>>
where
    C: Fn(&ForwardRequest) -> Result<(), tonic::Status> + Send + 'static,
{
    let (out, rx) = mpsc::channel(MAX_IN_FLIGHT);
    tokio::spawn(async move {
        let mut serving = FuturesUnordered::new();
        // Bytes of the requests being served.
        let mut held = 0usize;
        let mut reading = true;
        let mut failed: Option<tonic::Status> = None;
        while reading || !serving.is_empty() {
            tokio::select! {
                m = incoming.message(),
                    if reading && serving.len() < MAX_IN_FLIGHT && held < MAX_IN_FLIGHT_BYTES =>
                {
                    let blob = match m {
                        Ok(Some(b)) => b,
                        Ok(None) | Err(_) => {
                            reading = false;
                            continue;
                        }
                    };
                    let decoded = decode_message(&blob)
                        .map_err(tonic::Status::invalid_argument)
                        .and_then(|(seq, timeout, r)| check(&r.req).map(|()| (seq, timeout, r)));
                    let (seq, timeout, r) = match decoded {
                        Ok(d) => d,
                        Err(s) => {
                            tracing::warn!("forward stream from {from:x}: {}", s.message());
                            failed = Some(s);
                            reading = false;
                            continue;
                        }
                    };
                    let node = node.clone();
                    let size = blob.data.len();
                    held += size;
                    serving.push(async move {
                        let answer = node.serve_forwarded(r.req, timeout, r.id, from).await;
                        (size, encode_answer(seq, answer))
                    });
                }
                Some((size, answer)) = serving.next(), if !serving.is_empty() => {
                    held -= size;
                    if out.send(answer).await.is_err() {
                        // The follower is gone: its writes are abandoned,
                        // as a dropped `Forward` call's are.
                        return;
                    }
                }
            }
        }
        if let Some(s) = failed {
            let _ = out.send(Err(s)).await;
        }
    });
    ReceiverStream::new(rx)
}
