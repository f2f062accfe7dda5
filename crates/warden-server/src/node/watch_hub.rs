//! Fan-out of applied key-value events to watchers on this member (the live
//! half of Watch; history replay is `api::watch`'s).
//!
//! `SmStore::apply` publishes each entry's events while it still holds the
//! state's write lock; a watcher is registered while its creator holds the
//! read lock and notes the revision R it saw. So a watcher sees every
//! revision exactly once: history up to R from the store (read afterwards,
//! in chunks, see `api::watch`), everything after R from here, nothing in
//! between can slip past.
//!
//! Memory: an applied entry's events are copied once into a shared batch
//! (`Arc`); each interested watcher queues only a reference to it and the
//! indexes of its events. Queues are bounded by bytes, not by count:
//!
//! * a watcher whose queued events exceed `WatchLimits::watcher_bytes` is
//!   cancelled;
//! * when the batches held by all queues together (each counted once,
//!   `pending_bytes`) exceed `WatchLimits::member_bytes`, the watchers with
//!   the most queued bytes are cancelled until they fit.
//!
//! A cancelled watcher's queue is dropped at once, under the hub's lock (not
//! when its client gets round to reading), and it is told why
//! (`Subscription::cancelled`).
//!
//! Outside the node, a subscription is held as a `WatchGuard` (made through
//! `Node::watch_state` / `Node::subscribe`, in `reads.rs`), which
//! unsubscribes when dropped: no exit path has to remember to.
//!
//! Must never: block the apply path (publishing only appends to queues), or
//! keep a cancelled watcher's events.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::Notify;

use warden_core::state::error::StateError;
use warden_core::state::types::{Event, KeyValue};

/// Byte budgets of queued watch events (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchLimits {
    /// Largest size of one watcher's queued events (`--watch-queue-bytes`).
    pub watcher_bytes: usize,
    /// Largest size of all queued events of this member, each applied batch
    /// counted once however many watchers hold it (`--watch-pending-bytes`).
    pub member_bytes: usize,
    /// Most watchers one Watch stream may hold
    /// (`--max-watchers-per-stream`).
    pub watchers_per_stream: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            watcher_bytes: 16 << 20,
            member_bytes: 256 << 20,
            watchers_per_stream: 10_000,
        }
    }
}

/// Why the hub cancelled a watcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// Its own queue went over `watcher_bytes`.
    WatcherBudget,
    /// The member's queued events went over `member_bytes` and this watcher
    /// held the most.
    MemberBudget,
    /// A snapshot replaced the state; there is no event stream to follow.
    StateReplaced,
}

impl Cancelled {
    /// The `cancel_reason` sent to the client.
    pub fn reason(self) -> &'static str {
        match self {
            Cancelled::WatcherBudget => "warden: watcher fell too far behind (its queued events exceeded --watch-queue-bytes) and was cancelled; watch again from the last revision received",
            Cancelled::MemberBudget => "warden: watcher fell too far behind (the member's queued watch events exceeded --watch-pending-bytes) and was cancelled; watch again from the last revision received",
            Cancelled::StateReplaced => "warden: the member's state was replaced by a snapshot; watch again from the last revision received",
        }
    }
}

/// Bytes an event is accounted for: its keys and values plus a fixed
/// allowance for the rest of the structure. A previous value left in a
/// scratch file (`Event::prev_cold`) is not in memory and counts as its
/// key and the allowance only.
pub fn event_bytes(e: &Event) -> usize {
    fn kv(k: &KeyValue) -> usize {
        k.key.len() + k.value.len() + 48
    }
    kv(&e.kv) + e.prev_kv.as_ref().map_or(0, kv) + 16
}

/// One applied entry's events, shared by every watcher that queued it.
/// Its bytes count towards the hub's `pending_bytes` until the last
/// reference is gone.
struct Shared {
    events: Vec<Event>,
    bytes: usize,
    /// The previous values `events` left in scratch files
    /// (`Event::prev_cold`), by position, read once for every watcher of
    /// the batch that asks for previous values (`Batch::with_prev_values`),
    /// or why they could not be read.
    prev_values: OnceLock<Result<Vec<Option<Vec<u8>>>, StateError>>,
    /// Bytes of `prev_values`, counted in `pending` too.
    prev_bytes: AtomicUsize,
    pending: Arc<AtomicUsize>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let bytes = self.bytes + self.prev_bytes.load(Ordering::SeqCst);
        self.pending.fetch_sub(bytes, Ordering::SeqCst);
    }
}

/// Events of one revision for one watcher: a view of the shared batch.
pub struct Batch {
    pub revision: i64,
    shared: Arc<Shared>,
    /// Indexes into `shared.events`; `None` = all of them.
    mine: Option<Vec<u32>>,
    bytes: usize,
}

impl Batch {
    /// This watcher's events, in the order they were made.
    pub fn events(&self) -> impl Iterator<Item = &Event> + '_ {
        self.shared
            .events
            .iter()
            .enumerate()
            .filter(|(i, _)| self.is_mine(*i))
            .map(|(_, e)| e)
    }

    /// Whether the shared batch's event `i` is this watcher's.
    fn is_mine(&self, i: usize) -> bool {
        self.mine
            .as_ref()
            .is_none_or(|m| m.binary_search(&(i as u32)).is_ok())
    }

    /// Whether one of this watcher's events left its previous value in a
    /// scratch file (`Event::prev_cold`).
    pub fn has_cold_prev(&self) -> bool {
        self.events().any(|e| e.prev_cold.is_some())
    }

    /// Whether [`Batch::with_prev_values`] would read the disk: this
    /// watcher's events left previous values in scratch files and no
    /// watcher of the batch has read them yet.
    pub fn needs_prev_values(&self) -> bool {
        self.shared.prev_values.get().is_none() && self.has_cold_prev()
    }

    /// This watcher's events with their previous values, read from the
    /// scratch files once for the batch whichever watcher asks first (the
    /// others wait for that read or find it done). Reads the disk when
    /// [`Batch::needs_prev_values`]: then call it off the async threads.
    pub fn with_prev_values(&self) -> Result<Vec<Event>, StateError> {
        let shared = &self.shared;
        let values = shared.prev_values.get_or_init(|| {
            let read = Event::cold_prev_values(&shared.events)?;
            let bytes = read.iter().flatten().map(Vec::len).sum();
            shared.prev_bytes.store(bytes, Ordering::SeqCst);
            shared.pending.fetch_add(bytes, Ordering::SeqCst);
            Ok(read)
        });
        let values = values.as_ref().map_err(Clone::clone)?;
        Ok(shared
            .events
            .iter()
            .zip(values)
            .enumerate()
            .filter(|(i, _)| self.is_mine(*i))
            .map(|(_, (e, value))| {
                let mut e = e.clone();
                e.fill_prev_value(value.clone());
                e
            })
            .collect())
    }
}

#[derive(Default)]
struct Queue {
    batches: VecDeque<Batch>,
    bytes: usize,
    cancelled: Option<Cancelled>,
}

/// A watcher's queue, shared between the hub (appends) and the
/// subscription (takes).
#[derive(Default)]
struct Slot {
    queue: Mutex<Queue>,
    notify: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Slot {
    /// Drops the queue and tells the subscription why.
    fn cancel(&self, why: Cancelled) {
        let old = {
            let mut q = lock(&self.queue);
            q.cancelled.get_or_insert(why);
            q.bytes = 0;
            std::mem::take(&mut q.batches)
        };
        drop(old);
        self.notify.notify_one();
    }
}

struct Entry {
    key: Vec<u8>,
    range_end: Vec<u8>,
    slot: Arc<Slot>,
}

/// Receiving side of a registered watcher.
pub struct Subscription {
    pub id: u64,
    slot: Arc<Slot>,
}

impl Subscription {
    /// The next batch; `None` once the watcher was cancelled (see
    /// `cancelled`).
    pub async fn recv(&self) -> Option<Batch> {
        loop {
            let notified = self.slot.notify.notified();
            {
                let mut q = lock(&self.slot.queue);
                if let Some(b) = q.batches.pop_front() {
                    q.bytes = q.bytes.saturating_sub(b.bytes);
                    return Some(b);
                }
                if q.cancelled.is_some() {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Why the hub cancelled this watcher, if it did.
    pub fn cancelled(&self) -> Option<Cancelled> {
        lock(&self.slot.queue).cancelled
    }

    /// Bytes queued for this watcher.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.slot.queue).bytes
    }
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    watchers: BTreeMap<u64, Entry>,
    limits: WatchLimits,
}

#[derive(Default)]
pub struct WatchHub {
    inner: Mutex<Inner>,
    /// Bytes of the shared batches still referenced by a queue or by a
    /// watcher sending them.
    pending: Arc<AtomicUsize>,
    /// Counts watchers cancelled for falling behind (either budget).
    slow_cancels: prometheus_client::metrics::counter::Counter,
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
    /// A hub that adds each watcher it cancels for falling behind to
    /// `counter` (the member's `warden_watch_slow_cancels_total`).
    pub fn counting_cancels(counter: prometheus_client::metrics::counter::Counter) -> Self {
        WatchHub {
            slow_cancels: counter,
            ..WatchHub::default()
        }
    }

    pub fn set_limits(&self, limits: WatchLimits) {
        lock(&self.inner).limits = limits;
    }

    pub fn limits(&self) -> WatchLimits {
        lock(&self.inner).limits
    }

    /// Bytes of applied events held for watchers (each batch counted once).
    pub fn pending_bytes(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Registers a watcher for `[key, range_end)`. Call while holding the
    /// state's read lock (see the module doc).
    pub fn subscribe(&self, key: Vec<u8>, range_end: Vec<u8>) -> Subscription {
        let slot = Arc::new(Slot::default());
        let mut g = lock(&self.inner);
        g.next_id += 1;
        let id = g.next_id;
        g.watchers.insert(
            id,
            Entry {
                key,
                range_end,
                slot: slot.clone(),
            },
        );
        Subscription { id, slot }
    }

    /// Removes a watcher, dropping whatever it still had queued.
    pub fn unsubscribe(&self, id: u64) {
        let removed = lock(&self.inner).watchers.remove(&id);
        if let Some(e) = removed {
            let old = std::mem::take(&mut lock(&e.slot.queue).batches);
            drop(old);
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.inner).watchers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every watcher, telling each it must re-sync (used when a
    /// snapshot replaces the state wholesale and no event stream exists).
    pub fn drop_all(&self) {
        let all = std::mem::take(&mut lock(&self.inner).watchers);
        for w in all.values() {
            w.slot.cancel(Cancelled::StateReplaced);
        }
    }

    /// Delivers one applied entry's events to every interested watcher:
    /// one shared copy of the events, a view of it per watcher.
    pub fn publish(&self, revision: i64, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let sizes: Vec<usize> = events.iter().map(event_bytes).collect();
        let mut g = lock(&self.inner);
        let limits = g.limits;
        let mut shared: Option<Arc<Shared>> = None;
        let mut over = Vec::new();
        for (id, w) in g.watchers.iter() {
            let mut mine = Vec::new();
            let mut bytes = 0;
            for (i, e) in events.iter().enumerate() {
                if in_range(&e.kv.key, &w.key, &w.range_end) {
                    mine.push(i as u32);
                    bytes += sizes.get(i).copied().unwrap_or(0);
                }
            }
            if mine.is_empty() {
                continue;
            }
            let mine = (mine.len() != events.len()).then_some(mine);
            let shared = shared
                .get_or_insert_with(|| {
                    let total = sizes.iter().sum();
                    self.pending.fetch_add(total, Ordering::SeqCst);
                    Arc::new(Shared {
                        events: events.to_vec(),
                        bytes: total,
                        prev_values: OnceLock::new(),
                        prev_bytes: AtomicUsize::new(0),
                        pending: self.pending.clone(),
                    })
                })
                .clone();
            let mut q = lock(&w.slot.queue);
            if q.cancelled.is_some() {
                continue;
            }
            if q.bytes + bytes > limits.watcher_bytes && !q.batches.is_empty() {
                drop(q);
                over.push((*id, Cancelled::WatcherBudget));
                continue;
            }
            q.bytes += bytes;
            q.batches.push_back(Batch {
                revision,
                shared,
                mine,
                bytes,
            });
            drop(q);
            w.slot.notify.notify_one();
        }
        drop(shared);
        for (id, why) in over {
            if let Some(e) = g.watchers.remove(&id) {
                e.slot.cancel(why);
                self.slow_cancels.inc();
            }
        }
        // Over the member's budget: cancel the watchers holding the most
        // until the shared batches fit (a batch is freed once no queue
        // holds it).
        if self.pending.load(Ordering::SeqCst) > limits.member_bytes {
            let mut by_size: Vec<(usize, u64)> = g
                .watchers
                .iter()
                .map(|(id, w)| (lock(&w.slot.queue).bytes, *id))
                .filter(|(b, _)| *b > 0)
                .collect();
            by_size.sort_by_key(|(b, id)| (std::cmp::Reverse(*b), *id));
            for (_, id) in by_size {
                if self.pending.load(Ordering::SeqCst) <= limits.member_bytes {
                    break;
                }
                if let Some(e) = g.watchers.remove(&id) {
                    e.slot.cancel(Cancelled::MemberBudget);
                    self.slow_cancels.inc();
                }
            }
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
            prev_cold: None,
        }
    }

    fn big(key: &str, rev: i64, n: usize) -> Event {
        let mut e = ev(key, rev);
        e.kv.value = vec![b'x'; n];
        e.prev_kv = Some(e.kv.clone());
        e
    }

    fn keys(b: &Batch) -> Vec<String> {
        b.events()
            .map(|e| String::from_utf8_lossy(&e.kv.key).into_owned())
            .collect()
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
    async fn delivers_matching_events_in_order() {
        let hub = WatchHub::default();
        let s = hub.subscribe(b"a".to_vec(), b"b".to_vec());
        let all = hub.subscribe(Vec::new(), vec![0]);
        hub.publish(2, &[ev("a1", 2), ev("c", 2)]);
        hub.publish(3, &[ev("z", 3)]);
        hub.publish(4, &[ev("a2", 4)]);
        let b = s.recv().await.unwrap();
        assert_eq!((b.revision, keys(&b)), (2, vec!["a1".to_string()]));
        drop(b);
        let b = s.recv().await.unwrap();
        assert_eq!((b.revision, keys(&b)), (4, vec!["a2".to_string()]));
        drop(b);
        let b = all.recv().await.unwrap();
        assert_eq!(keys(&b), vec!["a1".to_string(), "c".to_string()]);
        assert_eq!(s.queued_bytes(), 0);
        assert!(hub.pending_bytes() > 0, "`all` still holds revisions 3, 4");
        hub.unsubscribe(all.id);
        drop(b);
        assert_eq!(hub.pending_bytes(), 0);
        hub.unsubscribe(s.id);
        assert!(hub.is_empty());
    }

    /// A previous value left in a scratch file is read once for the
    /// batch, whichever watcher asks first, and counts in the pending
    /// bytes while the batch is held.
    #[tokio::test]
    async fn previous_values_in_scratch_files_are_read_once_per_batch() {
        use warden_core::state::types::PutRequest;
        use warden_core::state::{MvccStore, NoLeases};
        use warden_core::storage::cold::ColdStore;
        let dir = tempfile::tempdir().unwrap();
        let mut m = MvccStore::new();
        m.set_cold(Some(
            ColdStore::with_limits(dir.path(), 1 << 20, 1).unwrap(),
        ));
        let put = |v: &[u8]| PutRequest {
            key: b"k".to_vec(),
            value: v.to_vec(),
            ..Default::default()
        };
        m.put(&put(b"old"), &NoLeases).unwrap();
        m.flush_spills();
        let w = m.put(&put(b"new"), &NoLeases).unwrap();
        assert!(w.events[0].prev_cold.is_some(), "{:?}", w.events);
        let hub = WatchHub::default();
        let all = hub.subscribe(Vec::new(), vec![0]);
        let one = hub.subscribe(b"k".to_vec(), Vec::new());
        hub.publish(3, &w.events);
        let held = hub.pending_bytes();
        let (a, b) = (all.recv().await.unwrap(), one.recv().await.unwrap());
        assert!(a.has_cold_prev() && a.needs_prev_values() && b.needs_prev_values());
        let first = a.with_prev_values().unwrap();
        assert_eq!(first[0].prev_kv.as_ref().unwrap().value, b"old");
        assert!(first[0].prev_cold.is_none());
        assert!(!b.needs_prev_values(), "read once for the batch");
        assert_eq!(hub.pending_bytes(), held + 3);
        let second = b.with_prev_values().unwrap();
        assert_eq!(second[0].prev_kv.as_ref().unwrap().value, b"old");
        drop((a, b, first, second));
        hub.unsubscribe(all.id);
        hub.unsubscribe(one.id);
        assert_eq!(hub.pending_bytes(), 0);
    }

    #[tokio::test]
    async fn batches_are_shared_not_copied_per_watcher() {
        let hub = WatchHub::default();
        let subs: Vec<_> = (0..100)
            .map(|_| hub.subscribe(Vec::new(), vec![0]))
            .collect();
        let e = big("k", 2, 10_000);
        hub.publish(2, std::slice::from_ref(&e));
        assert_eq!(hub.pending_bytes(), event_bytes(&e), "one copy for 100");
        for s in &subs {
            assert_eq!(s.queued_bytes(), event_bytes(&e));
        }
        drop(subs);
        // Dropping a subscription alone does not unregister (the guard in
        // reads.rs does); unsubscribe frees the queues.
        for id in 1..=100 {
            hub.unsubscribe(id);
        }
        assert_eq!(hub.pending_bytes(), 0);
    }

    #[tokio::test]
    async fn over_its_budget_a_watcher_is_cancelled_and_its_queue_freed() {
        let hub = WatchHub::default();
        hub.set_limits(WatchLimits {
            watcher_bytes: 100_000,
            member_bytes: usize::MAX,
            watchers_per_stream: 10,
        });
        let slow = hub.subscribe(Vec::new(), vec![0]);
        let fast = hub.subscribe(Vec::new(), vec![0]);
        let mut rev = 1;
        while slow.cancelled().is_none() {
            rev += 1;
            hub.publish(rev, &[big("k", rev, 10_000)]);
            let b = fast.recv().await.unwrap();
            assert_eq!(b.revision, rev);
            assert!(rev < 100, "never cancelled");
        }
        assert_eq!(slow.cancelled(), Some(Cancelled::WatcherBudget));
        assert_eq!(slow.queued_bytes(), 0);
        assert!(slow.recv().await.is_none(), "queue dropped at cancel");
        assert_eq!(hub.len(), 1);
        assert_eq!(hub.pending_bytes(), 0, "freed before anyone read");
        assert!(fast.cancelled().is_none());
        hub.unsubscribe(fast.id);
        assert_eq!(hub.pending_bytes(), 0);
    }

    #[tokio::test]
    async fn over_the_member_budget_the_biggest_queues_are_cancelled() {
        let hub = WatchHub::default();
        hub.set_limits(WatchLimits {
            watcher_bytes: usize::MAX,
            member_bytes: 200_000,
            watchers_per_stream: 10,
        });
        let slow: Vec<_> = (0..10)
            .map(|_| hub.subscribe(Vec::new(), vec![0]))
            .collect();
        let fast = hub.subscribe(Vec::new(), vec![0]);
        for rev in 2..40 {
            hub.publish(rev, &[big("k", rev, 10_000)]);
            let b = fast.recv().await.unwrap();
            assert_eq!(b.revision, rev);
            assert!(hub.pending_bytes() <= 200_000);
        }
        for s in &slow {
            assert_eq!(s.cancelled(), Some(Cancelled::MemberBudget));
            assert_eq!(s.queued_bytes(), 0);
        }
        assert!(fast.cancelled().is_none());
        assert_eq!(hub.len(), 1);
        assert_eq!(hub.pending_bytes(), 0);
    }

    #[tokio::test]
    async fn drop_all_cancels_and_frees() {
        let hub = WatchHub::default();
        let s = hub.subscribe(b"k".to_vec(), Vec::new());
        hub.publish(2, &[ev("k", 2)]);
        hub.drop_all();
        assert_eq!(s.cancelled(), Some(Cancelled::StateReplaced));
        assert!(s.recv().await.is_none());
        assert_eq!(hub.pending_bytes(), 0);
        assert!(hub.is_empty());
    }
}
