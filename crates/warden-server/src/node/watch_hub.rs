//! Fan-out of applied key-value events to watchers on this member (the live
//! half of Watch; history replay is `api::watch`'s).
//!
//! `SmStore::apply` publishes each entry's events while it still holds the
//! state's write lock; a watcher is registered while its creator holds the
//! read lock, right after reading history up to the current revision. So a
//! watcher sees every revision exactly once: history up to R from the store,
//! everything after R from here, nothing in between can slip past.
//!
//! Each watcher has a bounded queue. A watcher that falls behind by more than
//! its queue is dropped and told so (`overflowed`), never buffered without
//! bound.
//!
//! Outside the node, a subscription is held as a `WatchGuard` (made through
//! `Node::watch_state` / `Node::subscribe`, in `reads.rs`), which
//! unsubscribes when dropped: no exit path has to remember to.
//!
//! Must never: block the apply path (publishing only uses `try_send`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use warden_core::state::types::Event;

/// Queue length per watcher, in applied entries.
pub const WATCHER_QUEUE: usize = 1024;

/// Events of one revision (or one applied entry) for one watcher.
#[derive(Debug, Clone)]
pub struct Batch {
    pub revision: i64,
    pub events: Vec<Event>,
}

struct Entry {
    key: Vec<u8>,
    range_end: Vec<u8>,
    tx: mpsc::Sender<Batch>,
    overflowed: Arc<AtomicBool>,
}

/// Receiving side of a registered watcher.
pub struct Subscription {
    pub id: u64,
    pub rx: mpsc::Receiver<Batch>,
    /// Set when the watcher was dropped for being too slow.
    pub overflowed: Arc<AtomicBool>,
}

#[derive(Default)]
pub struct WatchHub {
    inner: Mutex<(u64, BTreeMap<u64, Entry>)>,
}

/// Whether `key` falls in etcd's range `[start, end)` (`end` empty = exactly
/// `start`; `end == [0]` = every key >= `start`).
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        return key == start;
    }
    if end == [0] {
        return key >= start;
    }
    key >= start && key < end
}

impl WatchHub {
    /// Registers a watcher for `[key, range_end)`. Call while holding the
    /// state's read lock (see the module doc).
    pub fn subscribe(&self, key: Vec<u8>, range_end: Vec<u8>) -> Subscription {
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.0 += 1;
        let id = g.0;
        g.1.insert(
            id,
            Entry {
                key,
                range_end,
                tx,
                overflowed: overflowed.clone(),
            },
        );
        Subscription { id, rx, overflowed }
    }

    pub fn unsubscribe(&self, id: u64) {
        if let Ok(mut g) = self.inner.lock() {
            g.1.remove(&id);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.1.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every watcher, telling each it must re-sync (used when a
    /// snapshot replaces the state wholesale and no event stream exists).
    pub fn drop_all(&self) {
        if let Ok(mut g) = self.inner.lock() {
            for w in g.1.values() {
                w.overflowed.store(true, Ordering::SeqCst);
            }
            g.1.clear();
        }
    }

    /// Delivers one applied entry's events to every interested watcher.
    pub fn publish(&self, revision: i64, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut dead = Vec::new();
        for (id, w) in g.1.iter() {
            let mine: Vec<Event> = events
                .iter()
                .filter(|e| in_range(&e.kv.key, &w.key, &w.range_end))
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            match w.tx.try_send(Batch {
                revision,
                events: mine,
            }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    w.overflowed.store(true, Ordering::SeqCst);
                    dead.push(*id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => dead.push(*id),
            }
        }
        for id in dead {
            g.1.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::state::types::{EventKind, KeyValue};

    fn ev(key: &str, rev: i64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.as_bytes().to_vec(),
                mod_revision: rev,
                ..Default::default()
            },
            prev_kv: None,
        }
    }

    #[test]
    fn ranges() {
        assert!(in_range(b"a", b"a", b""));
        assert!(!in_range(b"ab", b"a", b""));
        assert!(in_range(b"ab", b"a", b"b"));
        assert!(!in_range(b"b", b"a", b"b"));
        assert!(in_range(b"zzz", b"a", &[0]));
        assert!(!in_range(b"0", b"a", &[0]));
    }

    #[tokio::test]
    async fn delivers_matching_events_in_order_and_drops_slow_watchers() {
        let hub = WatchHub::default();
        let mut s = hub.subscribe(b"a".to_vec(), b"b".to_vec());
        hub.publish(2, &[ev("a1", 2), ev("c", 2)]);
        hub.publish(3, &[ev("z", 3)]);
        hub.publish(4, &[ev("a2", 4)]);
        let b = s.rx.recv().await.unwrap();
        assert_eq!((b.revision, b.events.len()), (2, 1));
        assert_eq!(s.rx.recv().await.unwrap().revision, 4);

        let mut slow = hub.subscribe(b"k".to_vec(), Vec::new());
        for r in 0..=WATCHER_QUEUE as i64 {
            hub.publish(10 + r, &[ev("k", 10 + r)]);
        }
        assert!(slow.overflowed.load(Ordering::SeqCst));
        let mut n = 0;
        while slow.rx.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(
            n, WATCHER_QUEUE,
            "queued batches are still readable, then the stream ends"
        );
        assert_eq!(hub.len(), 1, "the slow watcher was removed");
        hub.unsubscribe(s.id);
        assert!(hub.is_empty());
    }
}
