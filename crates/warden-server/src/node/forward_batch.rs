//! The leader's side of `ForwardBatch`: many forwarded writes in one call.
//! Followers of the previous version sent the writes their clients sent
//! while earlier calls were in flight this way; followers now send every
//! forwarded write on one long-lived stream (`forward_stream`), and this
//! stays so that a leader serves both during a rolling upgrade.
//!
//! The leader serves each write of a batch exactly as a `Forward(Write)`
//! (`Node::handle_forward`), concurrently, streaming each answer back
//! (with the write's position in the batch) as soon as it has it.
//!
//! Bounds: a batch holds at most [`MAX_BATCH_WRITES`] writes and
//! `MAX_FORWARD_BYTES` of encoded writes plus [`BATCH_OVERHEAD_BYTES`];
//! larger batches are refused before anything in them is decoded.
//!
//! Must never: answer a write from another write's result (answers carry
//! the write's position).

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, Stream};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::network;
use super::types::Request;
use super::{ForwardRequest, ForwardResponse, Node};
use warden_proto::peer::Blob;

/// Writes in one batch at most.
pub const MAX_BATCH_WRITES: usize = 256;

/// Bytes of framing a batch may add to its writes' encodings (a timeout
/// and a length prefix per write, and the count).
pub const BATCH_OVERHEAD_BYTES: usize = 16 * MAX_BATCH_WRITES + 16;

/// One forwarded write with its request id, as it travels in a batch,
/// after what is left of its deadline in milliseconds: the batch is a
/// postcard list of `(u64, bytes of BatchedWrite)`.
#[derive(Serialize, Deserialize)]
pub struct BatchedWrite {
    pub req: Request,
    /// The client request's id, for the leader's log.
    pub id: Option<String>,
}

/// One answer on a `ForwardBatch` answer stream: the write's position in
/// the batch and what `Forward` would have answered for it.
pub type BatchAnswer = (u32, ForwardResponse);

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
    network::decode_bytes(item).map_err(|e| format!("forwarded write: {e}"))
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
                let timeout = Duration::from_millis(timeout_ms);
                let answer = node
                    .serve_forwarded(ForwardRequest::Write(w.req), timeout, w.id, from)
                    .await;
                let position = u32::try_from(i).unwrap_or(u32::MAX);
                let answer: BatchAnswer = (position, answer);
                network::encode(&answer).map_err(tonic::Status::internal)
            }
        })
        .collect::<FuturesUnordered<_>>()
}
