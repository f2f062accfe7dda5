//! Forwarded writes travel to the leader in batches: one peer
//! `ForwardBatch` call carries every write a follower's clients sent while
//! the previous calls were in flight, instead of one `Forward` call (an
//! HTTP/2 stream, its headers, the peer checks, a task on each side) per
//! write. etcd's followers do the same by sending proposals in their Raft
//! message stream. A write that finds nothing else on its way to the
//! leader is sent at once, alone, over `Forward` by its own task; under
//! load, at most [`IN_FLIGHT`] calls are outstanding and the writes
//! arriving meanwhile wait for the next batch.
//!
//! Each write keeps its own deadline (what is left of it when the batch is
//! sent) and request id, and the leader serves each exactly as a
//! `Forward(Write)` (`Node::handle_forward`), concurrently, streaming each
//! answer back (with the write's position in the batch) as soon as it has
//! it: a quick write does not wait for a slow one, and no message is larger
//! than one write's answer. A batch call that failed before its answers
//! fails each write the way a failed `Forward` call would (`Node::forward`):
//! never delivered means "ask the new leader", anything else means the
//! outcome is unknown; writes still unanswered when the answer stream
//! breaks or ends have an unknown outcome too. A leader without
//! `ForwardBatch` (an older version during an upgrade) gets the writes one
//! `Forward` call each, a few at a time.
//!
//! Bounds: a batch holds at most [`MAX_BATCH_WRITES`] writes and
//! `MAX_FORWARD_BYTES` of encoded writes (a larger single write goes alone
//! over `Forward`, which refuses it); the leader refuses batches over those
//! bounds. The queue holds one entry per forwarded write in progress, which
//! the client port's stream and connection limits bound.
//!
//! Must never: answer a write from another write's result (answers are
//! matched by position and the count is checked), or retry a write whose
//! batch call may have been delivered.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::stream::{FuturesUnordered, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::network;
use super::peer_service::MAX_FORWARD_BYTES;
use super::types::Request;
use super::{ForwardRequest, ForwardResponse, Node, NodeError};
use warden_proto::peer::Blob;

/// Batch calls a follower has outstanding at once.
pub const IN_FLIGHT: usize = 2;

/// Writes in one batch at most.
pub const MAX_BATCH_WRITES: usize = 256;

/// Bytes of framing a batch may add to its writes' encodings (a timeout
/// and a length prefix per write, and the count).
pub const BATCH_OVERHEAD_BYTES: usize = 16 * MAX_BATCH_WRITES + 16;

/// Writes sent one `Forward` call each at a time, to a leader without
/// `ForwardBatch`.
const FALLBACK_CONCURRENCY: usize = 16;

/// One forwarded write as it travels in a batch, after what is left of its
/// deadline in milliseconds: the batch is a postcard list of
/// `(u64, bytes of BatchedWrite)`.
#[derive(Serialize, Deserialize)]
pub struct BatchedWrite {
    pub req: Request,
    /// The client request's id, for the leader's log.
    pub id: Option<String>,
}

/// One answer on a `ForwardBatch` answer stream: the write's position in
/// the batch and what `Forward` would have answered for it.
pub type BatchAnswer = (u32, ForwardResponse);

/// A write waiting for the next batch to its leader.
pub(super) struct QueuedWrite {
    leader: u64,
    /// `BatchedWrite` encoded (the only copy of the write while it waits).
    encoded: Vec<u8>,
    deadline: Instant,
    tx: oneshot::Sender<Result<ForwardResponse, NodeError>>,
}

/// Decodes a `ForwardBatch` body: at most [`MAX_BATCH_WRITES`] writes
/// (the count is checked before anything is decoded, so a body of many
/// empty items allocates nothing), each a timeout in milliseconds and a
/// `BatchedWrite` (whose commands are depth-bounded as every decoded
/// command is).
pub fn decode_batch(b: &Blob) -> Result<Vec<(u64, BatchedWrite)>, String> {
    // A list starts with its length as a varint, as a u64 is encoded.
    let (count, _) = postcard::take_from_bytes::<u64>(&b.data)
        .map_err(|e| format!("decode forwarded batch: {e}"))?;
    if count > MAX_BATCH_WRITES as u64 {
        return Err(format!(
            "forwarded batch of {count} writes is larger than {MAX_BATCH_WRITES}"
        ));
    }
    let items: Vec<(u64, ByteBuf)> = network::decode(b)?;
    // Each write's bytes are freed once it is decoded.
    items
        .into_iter()
        .map(|(timeout_ms, item)| Ok((timeout_ms, decode_write(&item)?)))
        .collect()
}

/// One `BatchedWrite` from its bytes; nothing may follow it.
fn decode_write(item: &[u8]) -> Result<BatchedWrite, String> {
    match postcard::take_from_bytes(item) {
        Ok((w, [])) => Ok(w),
        Ok((_, rest)) => Err(format!(
            "decode forwarded write: {} unexpected bytes after it",
            rest.len()
        )),
        Err(e) => Err(format!("decode forwarded write: {e}")),
    }
}

/// Serves a batch of forwarded writes as the leader: each as
/// `handle_forward` serves a `Forward(Write)`, all at once, each answer
/// (encoded [`BatchAnswer`]) on the stream as soon as it is known. The
/// writes are abandoned (as a dropped `Forward` call's) if the stream is.
pub fn serve_batch(
    node: Arc<Node>,
    writes: Vec<(u64, BatchedWrite)>,
    from: u64,
) -> impl Stream<Item = Result<Blob, tonic::Status>> + Send + 'static {
    writes
        .into_iter()
        .enumerate()
        .map(|(i, (timeout_ms, w))| {
            let node = node.clone();
            async move {
                let deadline = node.deadline(Some(Duration::from_millis(timeout_ms)));
                // A request id the follower's client sent, if it is one
                // the client port would have taken.
                let id = w.id.filter(|id| crate::api::trace::sane_id(id).is_some());
                let serve = node.handle_forward(ForwardRequest::Write(w.req), deadline);
                let answer = node.as_forwarded(id, from, serve).await;
                let position = u32::try_from(i).unwrap_or(u32::MAX);
                network::encode(&(position, answer)).map_err(tonic::Status::internal)
            }
        })
        .collect::<FuturesUnordered<_>>()
}

impl Node {
    /// Forwards one write to `leader` in the next batch; answers as
    /// [`Node::forward`] would for `ForwardRequest::Write(req)`.
    pub(super) async fn forward_write_batched(
        &self,
        leader: u64,
        req: Request,
        deadline: Instant,
    ) -> Result<ForwardResponse, NodeError> {
        // Nothing else on its way to the leader: this write goes at once,
        // alone, from this task (no hand-off to the batching task), and the
        // writes arriving meanwhile queue for a batch. Only this write
        // rides on this call, so this task being cancelled affects no other.
        // (The batching task holds a slot while it waits for writes, so a
        // free slot here means no batch is in flight.)
        if let Ok(_slot) = self.forward_slots.try_acquire() {
            self.telemetry.forward_batch(1);
            return self
                .forward(leader, &ForwardRequest::Write(req), deadline)
                .await;
        }
        let item = BatchedWrite {
            req,
            id: crate::api::trace::current_request_id(),
        };
        let encoded = postcard::to_allocvec(&item)
            .map_err(|e| NodeError::Internal(format!("encode forwarded write: {e}")))?;
        if encoded.len() > MAX_FORWARD_BYTES {
            // Alone, over `Forward`, which answers why it is too large.
            return self
                .forward(leader, &ForwardRequest::Write(item.req), deadline)
                .await;
        }
        let (tx, rx) = oneshot::channel();
        let queued = QueuedWrite {
            leader,
            encoded,
            deadline,
            tx,
        };
        if self.forward_writes.send(queued).is_err() {
            return Err(NodeError::Stopped);
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(NodeError::Timeout),
            Ok(Err(_)) => Err(NodeError::Internal(
                "forwarded write dropped by its batch".into(),
            )),
            Ok(Ok(r)) => r,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sends the queued forwarded writes in batches, at most [`IN_FLIGHT`]
/// calls at a time (`slots`, shared with the writes that go alone): each
/// batch takes everything queued when a call slot is free (up to the
/// bounds), split by the leader each write was meant for.
/// Ends when the member is gone (its sender dropped).
pub(super) async fn forward_batches(
    node: Weak<Node>,
    slots: Arc<Semaphore>,
    mut rx: mpsc::UnboundedReceiver<QueuedWrite>,
) {
    let mut next: Option<QueuedWrite> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match next.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let leader = first.leader;
        let mut bytes = first.encoded.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_WRITES {
            let Ok(w) = rx.try_recv() else { break };
            if w.leader != leader || bytes + w.encoded.len() > MAX_FORWARD_BYTES {
                // Starts the next batch.
                next = Some(w);
                break;
            }
            bytes += w.encoded.len();
            batch.push(w);
        }
        batch.retain(|w| !w.tx.is_closed());
        if batch.is_empty() {
            continue;
        }
        let Some(n) = node.upgrade() else {
            return;
        };
        n.telemetry.forward_batch(batch.len());
        tokio::spawn(async move {
            send_batch(&n, leader, batch).await;
            drop(slot);
        });
    }
}

/// A write of a batch on its way: its deadline, and whom to answer.
type Waiting = (Instant, oneshot::Sender<Result<ForwardResponse, NodeError>>);

/// Sends one batch and answers each of its writes.
async fn send_batch(node: &Node, leader: u64, batch: Vec<QueuedWrite>) {
    let now = Instant::now();
    let deadline = batch.iter().map(|w| w.deadline).max().unwrap_or(now);
    let mut writes = Vec::with_capacity(batch.len());
    let mut waiting: Vec<Option<Waiting>> = Vec::with_capacity(batch.len());
    for w in batch {
        // What is left of each write's deadline now, as it leaves.
        let left = millis(w.deadline.saturating_duration_since(now));
        writes.push((left, ByteBuf::from(w.encoded)));
        waiting.push(Some((w.deadline, w.tx)));
    }
    let blob = match network::encode(&writes) {
        Ok(b) => b,
        Err(e) => return fail_all(waiting, &NodeError::Internal(e)),
    };
    let mut answers = match node.call_peer_batch(leader, blob, deadline).await {
        Ok(Ok(answers)) => answers,
        // A leader that does not know `ForwardBatch` (an older version):
        // nothing was proposed, so each write goes alone.
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
            let alone = writes.into_iter().zip(waiting.into_iter().flatten());
            futures::stream::iter(alone)
                .for_each_concurrent(
                    FALLBACK_CONCURRENCY,
                    |((_, encoded), (deadline, tx))| async move {
                        let r = match decode_write(&encoded) {
                            Ok(w) => {
                                node.forward(leader, &ForwardRequest::Write(w.req), deadline)
                                    .await
                            }
                            Err(e) => Err(NodeError::Internal(e)),
                        };
                        let _ = tx.send(r);
                    },
                )
                .await;
            return;
        }
        Ok(Err(s)) => {
            // Either "not delivered, ask again" for every write, or the
            // same error for every write.
            return match node.failed_forward(leader, &s, deadline).await {
                Ok(_) => {
                    for (_, tx) in waiting.into_iter().flatten() {
                        let _ = tx.send(Ok(ForwardResponse::NotLeader(None)));
                    }
                }
                Err(e) => fail_all(waiting, &e),
            };
        }
        Err(e) => return fail_all(waiting, &e),
    };
    // The batch was delivered: from here on, a write without an answer
    // has an unknown outcome.
    let mut unanswered = waiting.len();
    let broken = loop {
        if unanswered == 0 {
            return;
        }
        let message = match tokio::time::timeout_at(deadline, answers.message()).await {
            Err(_) => break NodeError::Timeout,
            Ok(Err(s)) if s.code() == tonic::Code::DeadlineExceeded => break NodeError::Timeout,
            Ok(Err(s)) => {
                tracing::debug!("forward batch to {leader:x}: {s}");
                break NodeError::LeaderChanged;
            }
            Ok(Ok(None)) => {
                tracing::debug!("forward batch to {leader:x}: answers ended early");
                break NodeError::LeaderChanged;
            }
            Ok(Ok(Some(m))) => m,
        };
        let (position, answer) = match network::decode::<BatchAnswer>(&message) {
            Ok(a) => a,
            Err(e) => break NodeError::Internal(e),
        };
        let slot = usize::try_from(position)
            .ok()
            .and_then(|i| waiting.get_mut(i))
            .and_then(Option::take);
        let Some((_, tx)) = slot else {
            break NodeError::Internal(format!(
                "forward batch to {leader:x}: an answer for write {position}, which has none due"
            ));
        };
        let _ = tx.send(Ok(answer));
        unanswered -= 1;
    };
    fail_all(waiting, &broken);
}

/// Answers every write not answered yet with `e`.
fn fail_all(waiting: Vec<Option<Waiting>>, e: &NodeError) {
    for (_, tx) in waiting.into_iter().flatten() {
        let _ = tx.send(Err(e.clone()));
    }
}
