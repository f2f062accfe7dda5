//! etcd `Watch` service: one bidirectional stream carries many watchers.
//!
//! A create request subscribes to the member's `WatchHub` under the state's
//! read lock and notes the revision R applied then; the watcher's task then
//! replays history `[start_revision, R]` from the local MVCC store in chunks
//! (`REPLAY_REVISIONS` revisions or `REPLAY_BYTES` bytes per read lock, so a
//! watch from revision 1 does not hold up applying), and then sends the live
//! events, all after R. So replay and live events meet without a gap or an
//! overlap. Events arrive grouped by revision, in revision order; a
//! compacted start revision (or history compacted away during the replay) is
//! answered with `compact_revision` and a cancel; a watcher that cannot keep
//! up is cancelled with a reason (see `watch_hub` for the byte budgets).
//!
//! Limits per stream: at most `WatchLimits::watchers_per_stream` watchers,
//! and at most `OUT_WINDOW` bytes of responses waiting for the HTTP/2 layer
//! (which itself holds no more than the client's flow-control window).
//!
//! Must never: buffer without bound, or deliver an event twice or out of order.

use crate::api::convert::ConvertFrom;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{Caller, Gate};
use super::header;
use crate::node::{Batch, Node, WatchGuard};
use warden_core::state::types::{Event, EventKind};
use warden_core::state::{MvccStore, StateError};
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::watch_create_request::FilterType;
use warden_proto::etcdserverpb::watch_request::RequestUnion;
use warden_proto::mvccpb;

/// Outgoing responses queued per stream (also bounded by `OUT_WINDOW`).
const STREAM_QUEUE: usize = 256;

/// Bytes of encoded responses a stream may queue before its watchers wait
/// (a larger single response is let through alone).
const OUT_WINDOW: usize = 256 * 1024;

/// Most revisions replayed per read of the state.
const REPLAY_REVISIONS: i64 = 1000;

/// Most bytes replayed per read of the state (a single revision may exceed
/// it; revisions are not split).
const REPLAY_BYTES: usize = 1 << 20;

pub struct WatchService {
    pub node: Arc<Node>,
    pub gate: Arc<Gate>,
    pub max_response_bytes: usize,
    pub progress_interval: Duration,
}

/// What `subscribe` returns: the revision subscribed at, the compaction
/// point, the subscription (or why none), and the history to replay.
type Subscribed = (i64, i64, Result<WatchGuard, StateError>, Option<MvccStore>);

pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>>;

/// A response and its share of the stream's `OUT_WINDOW`, given back when
/// the HTTP/2 layer takes the response.
type Out = (
    Result<pb::WatchResponse, Status>,
    Option<OwnedSemaphorePermit>,
);

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let caller = self.gate.caller(&request)?;
        Ok(Response::new(self.open(caller, request.into_inner())))
    }
}

/// Requests a watch stream reads: gRPC's `Streaming`, or the JSON
/// gateway's values parsed from an HTTP body.
pub trait Incoming:
    Stream<Item = Result<pb::WatchRequest, Status>> + Unpin + Send + 'static
{
}
impl<S: Stream<Item = Result<pb::WatchRequest, Status>> + Unpin + Send + 'static> Incoming for S {}

impl WatchService {
    /// Serves one watch stream for `caller`: answers `incoming`'s requests
    /// until it ends or the answers' reader goes away.
    pub fn open(&self, caller: Caller, incoming: impl Incoming) -> WatchStream {
        let (tx, rx) = mpsc::channel::<Out>(STREAM_QUEUE);
        let ctx = StreamCtx {
            node: self.node.clone(),
            gate: self.gate.clone(),
            caller,
            tx,
            window: Arc::new(Semaphore::new(OUT_WINDOW)),
            max_bytes: self.max_response_bytes,
            progress: self.progress_interval,
        };
        tokio::spawn(ctx.run(incoming));
        let out = ReceiverStream::new(rx).map(|(r, _permit)| r);
        Box::pin(out)
    }
}

#[derive(Clone)]
struct StreamCtx {
    node: Arc<Node>,
    gate: Arc<Gate>,
    /// Who opened the stream: each watch is checked as them when created.
    caller: Caller,
    tx: mpsc::Sender<Out>,
    window: Arc<Semaphore>,
    max_bytes: usize,
    progress: Duration,
}

/// What a watcher wants to see.
#[derive(Clone)]
struct Spec {
    watch_id: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// First revision to deliver. A start in the future (a client resuming
    /// on a member that is behind) must not see the revisions before it.
    start_revision: i64,
}

/// A watcher's task; it owns the watcher's `WatchGuard`, so aborting or
/// ending the task unsubscribes it.
struct Running {
    task: JoinHandle<()>,
}

impl StreamCtx {
    fn resp(&self, revision: i64, watch_id: i64) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(header(&self.node, revision)),
            watch_id,
            ..Default::default()
        }
    }

    fn current_revision(&self) -> i64 {
        self.node.revision()
    }

    /// Queues a response once the stream's window has room for it.
    async fn send(&self, r: pb::WatchResponse) -> bool {
        let n = r.encoded_len().clamp(1, OUT_WINDOW) as u32;
        let Ok(permit) = self.window.clone().acquire_many_owned(n).await else {
            return false;
        };
        self.tx.send((Ok(r), Some(permit))).await.is_ok()
    }

    async fn cancel(&self, watch_id: i64, reason: &str, compact_revision: i64) {
        let mut r = self.resp(self.current_revision(), watch_id);
        r.canceled = true;
        r.cancel_reason = reason.to_string();
        r.compact_revision = compact_revision;
        self.send(r).await;
    }

    async fn run(self, mut incoming: impl Incoming) {
        let mut watchers: BTreeMap<i64, Running> = BTreeMap::new();
        let mut next_id: i64 = 0;
        let max_watchers = self.node.watch_limits().watchers_per_stream;
        loop {
            // The stream also ends when nobody reads its answers any more
            // (a gateway client that hung up sends no end of requests).
            let msg = tokio::select! {
                m = incoming.next() => m,
                () = self.tx.closed() => None,
            };
            let Some(msg) = msg else { break };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!("watch stream: request stream failed: {e}");
                    break;
                }
            };
            watchers.retain(|_, w| !w.task.is_finished());
            match msg.request_union {
                Some(RequestUnion::CreateRequest(c)) => {
                    let id = if c.watch_id != 0 {
                        c.watch_id
                    } else {
                        while watchers.contains_key(&next_id) {
                            next_id += 1;
                        }
                        next_id
                    };
                    let refused = if watchers.contains_key(&id) || id < 0 {
                        Some("etcdserver: duplicate watch ID".to_string())
                    } else if let Err(e) = self.gate.check_range(&self.caller, &c.key, &c.range_end)
                    {
                        // etcd's cancel reason is the status as Go prints it.
                        Some(format!(
                            "rpc error: code = {:?} desc = {}",
                            e.code(),
                            e.message()
                        ))
                    } else if watchers.len() >= max_watchers {
                        Some(format!(
                            "warden: too many watchers on this stream (--max-watchers-per-stream {max_watchers}); open another stream"
                        ))
                    } else {
                        None
                    };
                    if let Some(reason) = refused {
                        let mut r = self.resp(self.current_revision(), id);
                        r.created = true;
                        r.canceled = true;
                        r.cancel_reason = reason;
                        if !self.send(r).await {
                            break;
                        }
                        continue;
                    }
                    if let Some(w) = self.create(id, c).await {
                        watchers.insert(id, w);
                    }
                }
                Some(RequestUnion::CancelRequest(c)) => {
                    if let Some(w) = watchers.remove(&c.watch_id) {
                        w.task.abort();
                        let mut r = self.resp(self.current_revision(), c.watch_id);
                        r.canceled = true;
                        if !self.send(r).await {
                            break;
                        }
                    }
                }
                Some(RequestUnion::ProgressRequest(_)) => {
                    let r = self.resp(self.current_revision(), -1);
                    if !self.send(r).await {
                        break;
                    }
                }
                None => {}
            }
        }
        tracing::debug!("watch stream: request stream ended");
        for (_, w) in watchers {
            w.task.abort();
        }
    }

    async fn create(&self, id: i64, c: pb::WatchCreateRequest) -> Option<Running> {
        let spec = Spec {
            watch_id: id,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: c.prev_kv,
            fragment: c.fragment,
            progress_notify: c.progress_notify,
            start_revision: c.start_revision,
            key: c.key,
            range_end: c.range_end,
        };
        // Subscribe under the read lock, noting the revision (module doc).
        let Some((current, compact, sub, history)) = self.subscribe(&spec) else {
            return self.fail_internal().await;
        };
        let mut created = self.resp(current, id);
        created.created = true;
        if !self.send(created).await {
            return None;
        }
        let sub = match sub {
            Ok(s) => s,
            Err(e) => {
                let compact = if matches!(e, StateError::Compacted) {
                    compact
                } else {
                    0
                };
                self.cancel(id, &e.grpc_message(), compact).await;
                return None;
            }
        };
        let ctx = self.clone();
        let task = tokio::spawn(async move { ctx.feed(spec, current, sub, history).await });
        Some(Running { task })
    }

    /// Subscribes to live events under the state's read lock and returns
    /// the revision R applied then (live events are all after R) and the
    /// compaction point. `Compacted` instead of a subscription when the
    /// history to replay is gone. With a start revision, also a copy of the
    /// store as of R (O(1): the key map is persistent) for the replay to
    /// read without the lock. `None` if the lock is poisoned.
    fn subscribe(&self, spec: &Spec) -> Option<Subscribed> {
        self.node
            .watch_state(|d, s| {
                let history = (spec.start_revision > 0).then(|| d.kv.mvcc().clone());
                let current = d.kv.revision();
                let compact = d.kv.compact_revision();
                let sub = if spec.start_revision > 0
                    && spec.start_revision <= current
                    && spec.start_revision < compact
                {
                    Err(StateError::Compacted)
                } else {
                    Ok(s.subscribe(spec.key.clone(), spec.range_end.clone()))
                };
                (current, compact, sub, history)
            })
            .ok()
    }

    /// Ends the stream with an internal error (the state machine lock was
    /// poisoned by a panic elsewhere).
    async fn fail_internal(&self) -> Option<Running> {
        let _ = self
            .tx
            .send((
                Err(Status::internal("warden: state machine unavailable")),
                None,
            ))
            .await;
        None
    }

    /// Replays `[start_revision, current]` in chunks from `history`, the
    /// store as of `current`, each chunk read on a blocking thread with no
    /// lock held. False if the watcher ended (cancelled, stream gone).
    async fn replay(
        &self,
        spec: &Spec,
        current: i64,
        sub: &WatchGuard,
        history: Option<MvccStore>,
    ) -> bool {
        let mut from = spec.start_revision;
        if from <= 0 {
            return true;
        }
        let Some(history) = history else {
            self.fail_internal().await;
            return false;
        };
        while from <= current {
            if sub.cancelled().is_some() {
                // Live events overflowed meanwhile: stop here, the live
                // loop reports why.
                return true;
            }
            let store = history.clone();
            let (key, range_end) = (spec.key.clone(), spec.range_end.clone());
            let prev_kv = spec.prev_kv;
            let chunk = tokio::task::spawn_blocking(move || {
                (
                    store
                        .events_chunk(
                            from,
                            current,
                            &key,
                            &range_end,
                            REPLAY_REVISIONS,
                            REPLAY_BYTES,
                        )
                        // Previous values only for a watcher that asks
                        // for them, read here with the chunk.
                        .and_then(|(events, end)| {
                            if prev_kv {
                                Ok((Event::read_prev_values(events)?, end))
                            } else {
                                Ok((events, end))
                            }
                        }),
                    store.compact_revision(),
                )
            })
            .await;
            let (events, end) = match chunk {
                Err(_) => {
                    self.fail_internal().await;
                    return false;
                }
                Ok((Err(e), compact)) => {
                    let compact = if matches!(e, StateError::Compacted) {
                        compact
                    } else {
                        0
                    };
                    self.cancel(spec.watch_id, &e.grpc_message(), compact).await;
                    return false;
                }
                Ok((Ok(c), _)) => c,
            };
            let mut i = 0;
            while i < events.len() {
                let rev = events[i].kv.mod_revision;
                let mut j = i;
                while j < events.len() && events[j].kv.mod_revision == rev {
                    j += 1;
                }
                if !self.deliver(spec, rev, events[i..j].iter()).await {
                    return false;
                }
                i = j;
            }
            from = end + 1;
        }
        true
    }

    /// Sends the replay, then live batches, until cancelled.
    async fn feed(self, spec: Spec, current: i64, mut sub: WatchGuard, history: Option<MvccStore>) {
        if !self.replay(&spec, current, &sub, history).await {
            return;
        }
        let mut tick = tokio::time::interval(self.progress);
        tick.tick().await;
        loop {
            tokio::select! {
                b = sub.recv() => match b {
                    Some(b) if b.revision < spec.start_revision => {}
                    Some(b) if spec.prev_kv && b.has_cold_prev() => {
                        let revision = b.revision;
                        let Some(events) = self.with_prev_values(&spec, b).await else {
                            break;
                        };
                        if !self.deliver(&spec, revision, events.iter()).await {
                            break;
                        }
                    }
                    Some(b) => {
                        if !self.deliver(&spec, b.revision, b.events()).await {
                            break;
                        }
                    }
                    None => {
                        if let Some(why) = sub.cancelled() {
                            // Unsubscribe before waiting for the client.
                            drop(sub);
                            self.cancel(spec.watch_id, why.reason(), 0).await;
                        }
                        break;
                    }
                },
                _ = tick.tick(), if spec.progress_notify => {
                    if !self.send(self.resp(self.current_revision(), spec.watch_id)).await {
                        break;
                    }
                }
            }
        }
    }

    /// A live batch's events with their previous values, read once for
    /// every watcher of the batch (`Batch::with_prev_values`), off the
    /// async threads when that reads the disk. A value that cannot be read
    /// ends the watch with the error rather than send the event without
    /// it: `None` then.
    async fn with_prev_values(&self, spec: &Spec, b: Batch) -> Option<Vec<Event>> {
        let read = if b.needs_prev_values() {
            tokio::task::spawn_blocking(move || b.with_prev_values())
                .await
                .unwrap_or_else(|e| {
                    Err(StateError::HistoryRead(format!(
                        "reading previous values for a watch: {e}"
                    )))
                })
        } else {
            b.with_prev_values()
        };
        match read {
            Ok(events) => Some(events),
            Err(e) => {
                tracing::warn!(watch_id = spec.watch_id, "watch: {e}");
                self.cancel(spec.watch_id, &e.grpc_message(), 0).await;
                None
            }
        }
    }

    /// Sends one revision's events after filtering; fragments when asked and
    /// the response would exceed the size limit.
    async fn deliver<'a>(
        &self,
        spec: &Spec,
        revision: i64,
        events: impl Iterator<Item = &'a Event>,
    ) -> bool {
        let selected: Vec<&Event> = events
            .filter(|e| match e.kind {
                EventKind::Put => !spec.no_put,
                EventKind::Delete => !spec.no_delete,
            })
            .collect();
        // Previous values left in scratch files were read before this for
        // a watcher that asks for them (`with_prev_values`, replay).
        let evs: Vec<mvccpb::Event> = selected
            .into_iter()
            .map(|e| {
                mvccpb::Event::convert_from(Event::new(
                    e.kind,
                    e.kv.clone(),
                    if spec.prev_kv {
                        e.prev_kv.clone()
                    } else {
                        None
                    },
                ))
            })
            .collect();
        if evs.is_empty() {
            return true;
        }
        if !spec.fragment {
            let mut r = self.resp(revision, spec.watch_id);
            r.events = evs;
            return self.send(r).await;
        }
        let mut chunks: Vec<Vec<mvccpb::Event>> = vec![Vec::new()];
        let mut size = 0;
        for e in evs {
            let n = e.encoded_len();
            if size + n > self.max_bytes && !chunks.last().is_some_and(|c| c.is_empty()) {
                chunks.push(Vec::new());
                size = 0;
            }
            size += n;
            if let Some(c) = chunks.last_mut() {
                c.push(e);
            }
        }
        let last = chunks.len() - 1;
        for (k, c) in chunks.into_iter().enumerate() {
            let mut r = self.resp(revision, spec.watch_id);
            r.events = c;
            r.fragment = k < last;
            if !self.send(r).await {
                return false;
            }
        }
        true
    }
}

/// Watch progress interval: etcd's 10 minutes unless
/// `WARDEN_WATCH_PROGRESS_INTERVAL_MS` says otherwise (tests shorten it).
pub fn progress_interval() -> Duration {
    std::env::var("WARDEN_WATCH_PROGRESS_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(Duration::from_secs(600), Duration::from_millis)
}
