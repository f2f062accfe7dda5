//! A watch that survives member failures: when its stream breaks it opens
//! a new one on the next endpoint, starting from the revision after the
//! last event it delivered, so no event is missed or delivered twice.
//!
//! Owns the stream loop; [`Watcher::next`] hands out the events of one
//! response at a time. A cancel from the server (a compacted start
//! revision, a permission change) ends the watch with an error; it is
//! never resumed silently from a later revision.
//!
//! Must never: skip an event or deliver one twice across an endpoint
//! switch.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use warden_proto::etcdserverpb::watch_client::WatchClient;
use warden_proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest};
use warden_proto::mvccpb::Event;

use crate::{keys, Client, ClientError};

/// What to watch besides the key.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Watch every key starting with the key.
    pub prefix: bool,
    /// Start at this revision (replaying history from it); 0: from now.
    pub start_revision: i64,
    /// Deliver each event's previous key-value too.
    pub prev_kv: bool,
}

/// Events of one watch response: they share a revision when one
/// transaction made them.
#[derive(Debug, Clone)]
pub struct WatchEvents {
    /// The store revision the response was sent at.
    pub revision: i64,
    /// The events, in revision order.
    pub events: Vec<Event>,
}

/// A running watch ([`Client::watch`]). Dropping it stops the watch.
#[derive(Debug)]
pub struct Watcher {
    rx: mpsc::Receiver<Result<WatchEvents, ClientError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// The next events; `Some(Err)` ends the watch (then `None` follows).
    pub async fn next(&mut self) -> Option<Result<WatchEvents, ClientError>> {
        self.rx.recv().await
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Watches `key` (with [`WatchOptions::prefix`], every key under it).
    ///
    /// ```no_run
    /// # async fn demo(client: warden_client::Client) -> Result<(), warden_client::ClientError> {
    /// use warden_client::WatchOptions;
    /// let opts = WatchOptions { prefix: true, ..Default::default() };
    /// let mut watcher = client.watch("config/", opts);
    /// while let Some(batch) = watcher.next().await {
    ///     for ev in batch?.events {
    ///         let kv = ev.kv.unwrap_or_default();
    ///         println!("{} = {}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value));
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn watch(&self, key: impl Into<Vec<u8>>, opts: WatchOptions) -> Watcher {
        let (tx, rx) = mpsc::channel(64);
        let client = self.clone();
        let key = key.into();
        let task = tokio::spawn(async move {
            if let Err(e) = run(&client, key, opts, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Watcher { rx, task }
    }
}

/// The watch loop: returns when the receiver is gone (`Ok`) or the watch
/// cannot go on (`Err`).
async fn run(
    client: &Client,
    key: Vec<u8>,
    opts: WatchOptions,
    tx: &mpsc::Sender<Result<WatchEvents, ClientError>>,
) -> Result<(), ClientError> {
    let range_end = if opts.prefix {
        keys::prefix_range_end(&key)
    } else {
        Vec::new()
    };
    // The next revision to ask for; 0 until the first stream says where
    // "now" is.
    let mut next = opts.start_revision.max(0);
    loop {
        for (ep, ch) in client.stream_channels().await? {
            let (req_tx, req_rx) = mpsc::channel(1);
            let create = WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: key.clone(),
                        range_end: range_end.clone(),
                        start_revision: next,
                        prev_kv: opts.prev_kv,
                        ..Default::default()
                    },
                )),
            };
            if req_tx.send(create).await.is_err() {
                continue;
            }
            let mut stream = match WatchClient::new(ch)
                .watch(ReceiverStream::new(req_rx))
                .await
            {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    client.stream_failed(&e);
                    tracing::debug!("watch via {ep}: {e}");
                    continue;
                }
            };
            loop {
                let resp = match stream.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("watch via {ep}: {e}");
                        break;
                    }
                };
                let revision = resp.header.as_ref().map_or(0, |h| h.revision);
                if resp.canceled {
                    let message = if resp.compact_revision > 0 {
                        format!(
                            "etcdserver: mvcc: required revision has been compacted (compact revision {})",
                            resp.compact_revision
                        )
                    } else {
                        format!("watch canceled: {}", resp.cancel_reason)
                    };
                    return Err(ClientError::Server {
                        code: if resp.compact_revision > 0 {
                            tonic::Code::OutOfRange
                        } else {
                            tonic::Code::Cancelled
                        },
                        message,
                        endpoint: ep,
                    });
                }
                if resp.created && next == 0 {
                    next = revision + 1;
                }
                // After a switch, a member may replay what was already
                // delivered if `next` was not yet moved past it.
                let events: Vec<Event> = resp
                    .events
                    .into_iter()
                    .filter(|ev| ev.kv.as_ref().is_none_or(|kv| kv.mod_revision >= next))
                    .collect();
                if events.is_empty() {
                    continue;
                }
                for ev in &events {
                    if let Some(kv) = &ev.kv {
                        next = next.max(kv.mod_revision + 1);
                    }
                }
                if tx.send(Ok(WatchEvents { revision, events })).await.is_err() {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(crate::STREAM_RETRY).await;
    }
}
