//! etcd `Watch` service: one bidirectional stream carries many watchers.
//!
//! A create request reads history from the local MVCC store (replay from
//! `start_revision`) and registers with the member's `WatchHub` under the
//! same read lock, so the replay and the live events meet without a gap or an
//! overlap. Each watcher then runs as its own task feeding the stream's
//! bounded outgoing queue. Events arrive grouped by revision, in revision
//! order; a compacted start revision is answered with `compact_revision` and
//! a cancel; a watcher that cannot keep up is cancelled with a reason.
//!
//! Must never: buffer without bound, or deliver an event twice or out of order.

use crate::api::convert::ConvertFrom;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::header;
use crate::node::{Node, WatchGuard};
use warden_core::state::types::{Event, EventKind};
use warden_core::state::StateError;
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::watch_create_request::FilterType;
use warden_proto::etcdserverpb::watch_request::RequestUnion;
use warden_proto::mvccpb;

/// Outgoing responses queued per stream.
const STREAM_QUEUE: usize = 256;

pub struct WatchService {
    pub node: Arc<Node>,
    pub max_response_bytes: usize,
    pub progress_interval: Duration,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let ctx = StreamCtx {
            node: self.node.clone(),
            tx,
            max_bytes: self.max_response_bytes,
            progress: self.progress_interval,
        };
        tokio::spawn(ctx.run(incoming));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[derive(Clone)]
struct StreamCtx {
    node: Arc<Node>,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    max_bytes: usize,
    progress: Duration,
}

/// What a watcher wants to see.
#[derive(Clone)]
struct Spec {
    watch_id: i64,
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

    async fn send(&self, r: pb::WatchResponse) -> bool {
        self.tx.send(Ok(r)).await.is_ok()
    }

    async fn run(self, mut incoming: Streaming<pb::WatchRequest>) {
        let mut watchers: BTreeMap<i64, Running> = BTreeMap::new();
        let mut next_id: i64 = 0;
        while let Some(msg) = incoming.next().await {
            let Ok(msg) = msg else { break };
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
                    if watchers.contains_key(&id) || id < 0 {
                        let mut r = self.resp(self.current_revision(), id);
                        r.created = true;
                        r.canceled = true;
                        r.cancel_reason = "etcdserver: duplicate watch ID".into();
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
        };
        // Read history and subscribe under one read lock (see module doc).
        let Some((current, compact, replay, sub)) = self.read_and_subscribe(&c) else {
            return self.fail_internal().await;
        };
        let mut created = self.resp(current, id);
        created.created = true;
        if !self.send(created).await {
            return None;
        }
        let (replay, sub) = match (replay, sub) {
            (Ok(r), Some(s)) => (r, s),
            (Err(e), _) => {
                let mut r = self.resp(current, id);
                r.canceled = true;
                if matches!(e, StateError::Compacted) {
                    r.compact_revision = compact;
                }
                r.cancel_reason = e.grpc_message().to_string();
                self.send(r).await;
                return None;
            }
            (Ok(_), None) => return None,
        };
        let ctx = self.clone();
        let task = tokio::spawn(async move { ctx.feed(spec, replay, sub).await });
        Some(Running { task })
    }

    /// Reads the history to replay and subscribes to live events under one
    /// read lock of the state machine, so nothing falls between the two.
    /// `None` if the lock is poisoned.
    #[allow(clippy::type_complexity)]
    fn read_and_subscribe(
        &self,
        c: &pb::WatchCreateRequest,
    ) -> Option<(i64, i64, Result<Vec<Event>, StateError>, Option<WatchGuard>)> {
        self.node
            .watch_state(|d, s| {
                let current = d.kv.revision();
                let start = if c.start_revision > 0 {
                    c.start_revision
                } else {
                    current + 1
                };
                let replay = if start <= current {
                    d.kv.mvcc().events_since(start, &c.key, &c.range_end)
                } else if start <= d.kv.compact_revision() {
                    Err(StateError::Compacted)
                } else {
                    Ok(Vec::new())
                };
                let sub = replay
                    .is_ok()
                    .then(|| s.subscribe(c.key.clone(), c.range_end.clone()));
                (current, d.kv.compact_revision(), replay, sub)
            })
            .ok()
    }

    /// Ends the stream with an internal error (the state machine lock was
    /// poisoned by a panic elsewhere).
    async fn fail_internal(&self) -> Option<Running> {
        let _ = self
            .tx
            .send(Err(Status::internal("warden: state machine unavailable")))
            .await;
        None
    }

    /// Sends the replay, then live batches, until cancelled or overflowed.
    async fn feed(self, spec: Spec, replay: Vec<Event>, mut sub: WatchGuard) {
        let mut i = 0;
        while i < replay.len() {
            let rev = replay[i].kv.mod_revision;
            let mut j = i;
            while j < replay.len() && replay[j].kv.mod_revision == rev {
                j += 1;
            }
            if !self.deliver(&spec, rev, &replay[i..j]).await {
                return;
            }
            i = j;
        }
        let mut tick = tokio::time::interval(self.progress);
        tick.tick().await;
        loop {
            tokio::select! {
                b = sub.recv() => match b {
                    Some(b) if b.revision < spec.start_revision => {}
                    Some(b) => {
                        if !self.deliver(&spec, b.revision, &b.events).await {
                            break;
                        }
                    }
                    None => {
                        if sub.overflowed() {
                            let mut r = self.resp(self.current_revision(), spec.watch_id);
                            r.canceled = true;
                            r.cancel_reason =
                                "warden: watcher fell too far behind and was cancelled; watch again from the last revision received".into();
                            self.send(r).await;
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

    /// Sends one revision's events after filtering; fragments when asked and
    /// the response would exceed the size limit.
    async fn deliver(&self, spec: &Spec, revision: i64, events: &[Event]) -> bool {
        let evs: Vec<mvccpb::Event> = events
            .iter()
            .filter(|e| match e.kind {
                EventKind::Put => !spec.no_put,
                EventKind::Delete => !spec.no_delete,
            })
            .map(|e| {
                let mut e = e.clone();
                if !spec.prev_kv {
                    e.prev_kv = None;
                }
                mvccpb::Event::convert_from(e)
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
