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
//! Each write keeps its own deadline and request id, and the leader serves
//! each exactly as a `Forward(Write)` (`Node::handle_forward`), concurrently.
//! A batch call that failed fails each of its writes the way a failed
//! `Forward` call would (`Node::forward`): never delivered means "ask the
//! new leader", anything else means the outcome is unknown. A leader
//! without `ForwardBatch` (an older version during an upgrade) gets the
//! writes one `Forward` call each.
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

/// Bytes of framing a batch may add to its writes' encodings (a length
/// prefix per write, and the count).
pub const BATCH_OVERHEAD_BYTES: usize = 8 * MAX_BATCH_WRITES + 16;

/// One forwarded write as it travels in a batch.
#[derive(Serialize, Deserialize)]
pub struct BatchedWrite {
    pub req: Request,
    /// What is left of the client's deadline, in milliseconds.
    pub timeout_ms: u64,
    /// The client request's id, for the leader's log.
    pub id: Option<String>,
}

/// A write waiting for the next batch to its leader.
pub(super) struct QueuedWrite {
    leader: u64,
    req: Request,
    /// `BatchedWrite` encoded.
    encoded: Vec<u8>,
    deadline: Instant,
    tx: oneshot::Sender<Result<ForwardResponse, NodeError>>,
}

/// Decodes a `ForwardBatch` body: at most [`MAX_BATCH_WRITES`] writes,
/// each a `BatchedWrite` (whose commands are depth-bounded as every
/// decoded command is).
pub fn decode_batch(b: &Blob) -> Result<Vec<BatchedWrite>, String> {
    let items: Vec<ByteBuf> = network::decode(b)?;
    if items.len() > MAX_BATCH_WRITES {
        return Err(format!(
            "forwarded batch of {} writes is larger than {MAX_BATCH_WRITES}",
            items.len()
        ));
    }
    items
        .iter()
        .map(|item| match postcard::take_from_bytes(item) {
            Ok((w, [])) => Ok(w),
            Ok((_, rest)) => Err(format!(
                "decode forwarded write: {} unexpected bytes after it",
                rest.len()
            )),
            Err(e) => Err(format!("decode forwarded write: {e}")),
        })
        .collect()
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
            timeout_ms: millis(deadline.saturating_duration_since(Instant::now())),
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
            req: item.req,
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

    /// Serves a batch of forwarded writes as the leader: each as
    /// `handle_forward` serves a `Forward(Write)`, all at once; the answers
    /// in the batch's order.
    pub(super) async fn handle_forward_batch(
        &self,
        writes: Vec<BatchedWrite>,
        from: u64,
    ) -> Vec<ForwardResponse> {
        let each = writes.into_iter().map(|w| {
            let deadline = self.deadline(Some(Duration::from_millis(w.timeout_ms)));
            let serve = self.handle_forward(ForwardRequest::Write(w.req), deadline);
            self.as_forwarded(w.id, from, serve)
        });
        futures::future::join_all(each).await
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sends the queued forwarded writes in batches, at most [`IN_FLIGHT`]
/// calls at a time (`slots`, shared with the writes that go alone): each batch takes everything queued when a call slot is
/// free (up to the bounds), split by the leader each write was meant for.
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

/// Sends one batch and answers each of its writes.
async fn send_batch(node: &Node, leader: u64, batch: Vec<QueuedWrite>) {
    let deadline = batch
        .iter()
        .map(|w| w.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    let mut writes = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    for w in batch {
        writes.push(ByteBuf::from(w.encoded));
        waiting.push((w.req, w.deadline, w.tx));
    }
    let blob = match network::encode(&writes) {
        Ok(b) => b,
        Err(e) => {
            for (_, _, tx) in waiting {
                let _ = tx.send(Err(NodeError::Internal(e.clone())));
            }
            return;
        }
    };
    match node.call_peer_batch(leader, blob, deadline).await {
        Ok(Ok(blob)) => match network::decode::<Vec<ForwardResponse>>(&blob) {
            Ok(answers) if answers.len() == waiting.len() => {
                for ((_, _, tx), a) in waiting.into_iter().zip(answers) {
                    let _ = tx.send(Ok(a));
                }
            }
            Ok(answers) => {
                let e = format!(
                    "forwarded batch of {} writes answered with {}",
                    waiting.len(),
                    answers.len()
                );
                for (_, _, tx) in waiting {
                    let _ = tx.send(Err(NodeError::Internal(e.clone())));
                }
            }
            Err(e) => {
                for (_, _, tx) in waiting {
                    let _ = tx.send(Err(NodeError::Internal(e.clone())));
                }
            }
        },
        // A leader that does not know `ForwardBatch` (an older version):
        // nothing was proposed, so each write goes alone.
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
            let each = waiting.into_iter().map(|(req, deadline, tx)| async move {
                let r = node
                    .forward(leader, &ForwardRequest::Write(req), deadline)
                    .await;
                let _ = tx.send(r);
            });
            futures::future::join_all(each).await;
        }
        Ok(Err(s)) => {
            // Either "not delivered, ask again" for every write, or the
            // same error for every write.
            let r = node.failed_forward(leader, &s, deadline).await.err();
            for (_, _, tx) in waiting {
                let _ = tx.send(match &r {
                    None => Ok(ForwardResponse::NotLeader(None)),
                    Some(e) => Err(e.clone()),
                });
            }
        }
        Err(e) => {
            for (_, _, tx) in waiting {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}
