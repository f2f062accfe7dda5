//! The MVCC key-value store: every key's history of versions, the store
//! revision and the compact revision, with etcd v3.5's semantics for Range,
//! Put, DeleteRange, Txn and Compact (`server/etcdserver/apply.go`,
//! `server/storage/mvcc`).
//!
//! Model: an ordered map from key to that key's history, a list of versions in
//! revision order; a tombstone ends a life of the key. A read at revision `r`
//! looks at each key's last version with `mod_revision <= r` (binary search),
//! so a single-key read or write is O(log n) and a range over k keys is
//! O(k log n). Every write request gets the next main revision; all writes of
//! one txn share it (etcd's sub-revisions are not kept: within one revision
//! only the last write of a key is visible, which is all etcd exposes too).
//!
//! This module must stay deterministic: no IO, clocks, randomness or hash-map
//! iteration. Two stores given the same requests are equal, field for field.
//! Leases are not owned here; a put that names a lease asks a [`LeaseLookup`].
//! The unit tests live in `mvcc_tests.rs`, a child module of this one.

use imbl::OrdMap;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::ops::Bound;

use serde::{Deserialize, Serialize};
// No weak count: a block 8 bytes smaller than `std::sync::Arc`'s, 16 after
// mimalloc's size classes (48 -> 32 bytes a key).
use triomphe::Arc;

/// A key in the key map: up to 16 bytes kept in the map's node itself, a
/// longer one on the heap. A lookup compares the searched key with a
/// handful of keys in each node on its way down; with every key on the
/// heap (`Box<[u8]>` before) each comparison was a cache miss, and the two
/// lookups of a put were 8-11 % of a follower's CPU under random puts
/// (docs/benchmarks.md, "Short keys in the nodes"). 24 bytes an entry, 8
/// more than a `Box`; no heap block at all for a short key, and a longer
/// key's block is exactly its length (`SmallVec`'s own `From<&[u8]>` and
/// `clone` round it up to a power of two, and imbl clones every key of a
/// node it copies). Ordered and compared as its bytes.
#[derive(PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Key(smallvec::SmallVec<[u8; 16]>);

impl Key {
    fn from_vec(v: Vec<u8>) -> Key {
        Key(smallvec::SmallVec::from_vec(v))
    }

    fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl From<&[u8]> for Key {
    fn from(bytes: &[u8]) -> Key {
        Key(smallvec::SmallVec::from_slice(bytes))
    }
}

impl Clone for Key {
    fn clone(&self) -> Key {
        Key::from(self.as_slice())
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::Deref for Key {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

use super::error::StateError;
use super::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event,
    EventKind, KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
use super::validate;
use crate::storage::cold::{ColdRef, ColdStore, Sparse};

/// Answers whether a lease exists, for puts that attach one (etcd's
/// `lessor.Lookup`). The lease table (`super::lease::LeaseTable`) implements
/// it; [`NoLeases`] refuses every lease, so with it a `put` with
/// `lease != 0` gets `LeaseNotFound`.
pub trait LeaseLookup {
    fn lease_exists(&self, lease: i64) -> bool;
}

/// A lease table with no leases in it.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLeases;

impl LeaseLookup for NoLeases {
    fn lease_exists(&self, _lease: i64) -> bool {
        false
    }
}

/// What a write request returns: its response and the events it produced,
/// in apply order (empty when the write changed nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteResult<T> {
    pub response: T,
    pub events: Vec<Event>,
}

/// A stored value: on the heap, or (see [`MvccStore::set_cold`]) in the
/// member's scratch files. Encoded as the bytes either way, so snapshots
/// do not change; equal when the bytes are.
#[derive(Clone)]
enum Value {
    Hot(Vec<u8>),
    Cold(ColdRef),
}

impl Value {
    fn len(&self) -> usize {
        match self {
            Value::Hot(v) => v.len(),
            Value::Cold(c) => c.len(),
        }
    }

    /// The bytes, read back if cold.
    fn bytes(&self) -> Result<Cow<'_, [u8]>, StateError> {
        match self {
            Value::Hot(v) => Ok(Cow::Borrowed(v)),
            Value::Cold(c) => c.read().map(Cow::Owned).map_err(StateError::history_read),
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Hot(a), Value::Hot(b)) => a == b,
            _ => match (self.bytes(), other.bytes()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            },
        }
    }
}

impl Eq for Value {}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Hot(v) => v.fmt(f),
            Value::Cold(c) => c.fmt(f),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.bytes() {
            Ok(b) => s.serialize_bytes(&b),
            Err(e) => Err(serde::ser::Error::custom(e)),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_bytes::ByteBuf::deserialize(d).map(|b| Value::Hot(b.into_vec()))
    }
}

/// A key's value in one life of the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Live {
    create_revision: i64,
    version: i64,
    lease: i64,
    value: Value,
}

/// One version of a key: a value, or a tombstone (`live == None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Version {
    mod_revision: i64,
    /// Position of this change among the changes of its revision (a txn
    /// writes several keys in one revision): watch replay follows it, as
    /// etcd's sub-revision.
    sub: u32,
    live: Option<Live>,
}

impl Version {
    /// This version's value if it is on the heap and may move to a
    /// scratch file: not empty, and, for a key's `newest` version, at
    /// least [`ColdStore::newest_min`] bytes long.
    fn movable(&self, newest: bool, cold: &ColdStore) -> Option<&[u8]> {
        match &self.live {
            Some(Live {
                value: Value::Hot(b),
                ..
            }) if !b.is_empty() && (!newest || b.len() >= cold.newest_min()) => Some(b),
            _ => None,
        }
    }

    /// Points this version's value at its copy in a scratch file.
    fn set_cold(&mut self, r: ColdRef) {
        if let Some(Live { value, .. }) = self.live.as_mut() {
            *value = Value::Cold(r);
        }
    }
}

/// A key's versions, `mod_revision` non-decreasing. Never empty in the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct History {
    versions: Vec<Version>,
}

impl History {
    /// Appends a version, growing the array by half its length when full
    /// rather than doubling it (`Vec`'s own growth gives a key's second
    /// version room for four): most keys hold a few versions, each 64 B.
    fn push(&mut self, v: Version) {
        let len = self.versions.len();
        if len == self.versions.capacity() {
            self.versions.reserve_exact((len / 2).max(1));
        }
        self.versions.push(v);
    }

    /// The version visible at `rev`: the last one with `mod_revision <= rev`.
    fn at(&self, rev: i64) -> Option<&Version> {
        let n = self.versions.partition_point(|v| v.mod_revision <= rev);
        n.checked_sub(1).and_then(|i| self.versions.get(i))
    }

    /// The live value at `rev` with its mod revision, if the key exists then.
    fn live_at(&self, rev: i64) -> Option<(i64, &Live)> {
        self.at(rev)
            .and_then(|v| v.live.as_ref().map(|l| (v.mod_revision, l)))
    }

    fn is_live(&self) -> bool {
        self.versions.last().is_some_and(|v| v.live.is_some())
    }

    /// Drops versions no read at a revision `>= rev` can see: everything
    /// before the last version `<= rev`, and that one too if a tombstone.
    fn compact(&mut self, rev: i64) {
        let keep_from = self.compact_from(rev);
        if keep_from > 0 {
            self.versions.drain(..keep_from);
            // Most keys keep one version of several: without this, each
            // would go on holding room for all of them (64 B a version).
            self.versions.shrink_to_fit();
        }
    }

    /// How many leading versions `compact(rev)` drops.
    fn compact_from(&self, rev: i64) -> usize {
        let n = self.versions.partition_point(|v| v.mod_revision <= rev);
        let Some(last) = n.checked_sub(1) else {
            return 0;
        };
        match self.versions.get(last) {
            Some(v) if v.live.is_some() => last,
            _ => n,
        }
    }

    /// Whether `compact(rev)` would change this history.
    fn compacts_at(&self, rev: i64) -> bool {
        self.compact_from(rev) > 0
    }

    /// Moves the values of `histories` that are still on the heap and may
    /// move ([`Version::movable`]) to `cold`, in as few writes as fit its
    /// batch limit. Returns how many moved (values that could not be
    /// written stay on the heap).
    fn spill_all(histories: &mut [(Key, History)], cold: &ColdStore) -> usize {
        let (at, refs): (Vec<(usize, usize)>, _) = {
            let mut at = Vec::new();
            let mut values: Vec<&[u8]> = Vec::new();
            for (i, (_, h)) in histories.iter().enumerate() {
                for (j, b) in h.movable_from(0, cold) {
                    at.push((i, j));
                    values.push(b);
                }
            }
            (at, cold.put_batched(&values))
        };
        let mut moved = 0;
        for ((i, j), r) in at.into_iter().zip(refs) {
            if let (Some(r), Some(v)) = (
                r,
                histories
                    .get_mut(i)
                    .and_then(|(_, h)| h.versions.get_mut(j)),
            ) {
                v.set_cold(r);
                moved += 1;
            }
        }
        moved
    }

    /// The values of versions `from..` that may move to `cold`
    /// ([`Version::movable`]), with their version's index.
    fn movable_from<'a>(
        &'a self,
        from: usize,
        cold: &'a ColdStore,
    ) -> impl Iterator<Item = (usize, &'a [u8])> + 'a {
        let newest = self.versions.len().saturating_sub(1);
        self.versions
            .iter()
            .enumerate()
            .skip(from)
            .filter_map(move |(j, v)| Some((j, v.movable(j == newest, cold)?)))
    }

    /// How many values are cold (tests).
    #[cfg(test)]
    fn cold_count(&self) -> usize {
        self.versions
            .iter()
            .filter(|v| {
                matches!(
                    &v.live,
                    Some(Live {
                        value: Value::Cold(_),
                        ..
                    })
                )
            })
            .count()
    }
}

/// The watch event of version `i` (`v`) of key `k`, with the key's previous
/// live version as `prev_kv`, its value left in its scratch file if it is
/// there ([`Event::prev_cold`]: most watchers do not ask for it).
fn event_of(k: &[u8], h: &History, i: usize, v: &Version) -> Result<Event, StateError> {
    let (prev_kv, prev_cold) = i
        .checked_sub(1)
        .and_then(|p| h.versions.get(p))
        .and_then(|p| {
            p.live
                .as_ref()
                .map(|l| prev_of(k, p.mod_revision, l, false))
        })
        .transpose()?
        .unzip();
    let (kind, kv) = match &v.live {
        Some(l) => (EventKind::Put, to_kv(k, v.mod_revision, l, true)?),
        None => (
            EventKind::Delete,
            KeyValue {
                key: k.to_vec(),
                mod_revision: v.mod_revision,
                ..KeyValue::default()
            },
        ),
    };
    Ok(Event {
        kind,
        kv,
        prev_kv,
        prev_cold: prev_cold.flatten(),
    })
}

/// The `KeyValue` of a version, with `value` as its value.
fn kv_of(key: &[u8], mod_revision: i64, live: &Live, value: Vec<u8>) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        create_revision: live.create_revision,
        mod_revision,
        version: live.version,
        value,
        lease: live.lease,
    }
}

/// The `KeyValue` of a write's previous version, for its event and its
/// response: with the value when it is on the heap or `with_value` asks
/// for it, otherwise without it and with where it is (see
/// [`Event::prev_cold`]): only watchers asking for previous values read it.
fn prev_of(
    key: &[u8],
    mod_revision: i64,
    live: &Live,
    with_value: bool,
) -> Result<(KeyValue, Option<ColdRef>), StateError> {
    match &live.value {
        Value::Cold(r) if !with_value => {
            Ok((kv_of(key, mod_revision, live, Vec::new()), Some(r.clone())))
        }
        _ => Ok((to_kv(key, mod_revision, live, true)?, None)),
    }
}

/// The `KeyValue` of a version of any age (a cold value is read back).
fn to_kv(
    key: &[u8],
    mod_revision: i64,
    live: &Live,
    with_value: bool,
) -> Result<KeyValue, StateError> {
    let value = if with_value {
        live.value.bytes()?.into_owned()
    } else {
        Vec::new()
    };
    Ok(kv_of(key, mod_revision, live, value))
}

/// The `KeyValue`s of `found` (key, mod revision, value), with their values
/// if `with_value`: the cold ones read together ([`ColdRef::read_many`]:
/// a range over many keys makes a few large reads, not one a key).
fn kvs_of(found: &[(&[u8], i64, &Live)], with_value: bool) -> Result<Vec<KeyValue>, StateError> {
    if !with_value {
        return Ok(found
            .iter()
            .map(|(k, m, l)| kv_of(k, *m, l, Vec::new()))
            .collect());
    }
    let cold: Vec<&ColdRef> = found
        .iter()
        .filter_map(|(_, _, l)| match &l.value {
            Value::Cold(r) => Some(r),
            Value::Hot(_) => None,
        })
        .collect();
    let mut read = ColdRef::read_many(&cold).into_iter();
    found
        .iter()
        .map(|(k, m, l)| {
            let value = match &l.value {
                Value::Hot(v) => v.clone(),
                Value::Cold(_) => read
                    .next()
                    .unwrap_or_else(|| Err(std::io::Error::other("a value was not read")))
                    .map_err(StateError::history_read)?,
            };
            Ok(kv_of(k, *m, l, value))
        })
        .collect()
}

/// Key-range bounds with etcd's conventions: empty `range_end` = `key` alone;
/// `[0]` = every key `>= key`; otherwise `[key, range_end)` (empty if
/// `range_end <= key`).
fn bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    if range_end.is_empty() {
        (Bound::Included(key), Bound::Included(key))
    } else if range_end == [0] {
        (Bound::Included(key), Bound::Unbounded)
    } else if key < range_end {
        (Bound::Included(key), Bound::Excluded(range_end))
    } else {
        // Empty (a start past the end is refused by ordered-map ranges).
        (Bound::Included(key), Bound::Excluded(key))
    }
}

/// State of one write request in progress. All its writes go to revision
/// `begin_rev + 1`; `events` lists every key written, so a failed request
/// can be rolled back by popping those versions.
struct Write {
    begin_rev: i64,
    live_keys_before: u64,
    changed: bool,
    events: Vec<Event>,
}

impl Write {
    fn rev(&self) -> i64 {
        self.begin_rev + 1
    }

    /// The revision reads inside the request see as "current": its own
    /// writes once it has made any (etcd's `storeTxnWrite.Range`).
    fn read_rev(&self) -> i64 {
        if self.changed {
            self.rev()
        } else {
            self.begin_rev
        }
    }
}

/// Serde for the key map, encoded exactly as a `BTreeMap` would be. Decoding
/// inserts entry by entry: imbl's own `Deserialize` preallocates whatever
/// length the input claims, so a damaged snapshot could ask for petabytes.
mod keys_serde {
    use std::fmt;

    use imbl::OrdMap;
    use serde::de::{MapAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use triomphe::Arc;

    use super::{History, Key};

    pub fn serialize<S: Serializer>(
        keys: &OrdMap<Key, Arc<History>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        // A key is written as a byte slice, as the `Box<[u8]>` keys were.
        s.collect_map(keys.iter().map(|(k, h)| (k.as_slice(), &**h)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<OrdMap<Key, Arc<History>>, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = OrdMap<Key, Arc<History>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map from key to history")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut keys = OrdMap::new();
                // Every other key is inserted after the rest (full leaves:
                // see `MvccStore::compact_into_fresh_map`), as long as the
                // keys come in increasing order, as a store writes them;
                // from the first that does not, the
                // held ones go in and the rest follow in order, so a later
                // duplicate still replaces an earlier one.
                let mut held: Vec<(Key, Arc<History>)> = Vec::new();
                let mut ordered = true;
                let mut insert = |k: Key, h: History| {
                    // While ordered, the previous key is the largest so far:
                    // the last one held or the map's last.
                    if ordered
                        && held
                            .last()
                            .map(|(p, _)| p)
                            .max(keys.get_max().map(|(p, _)| p))
                            .is_some_and(|p| *p >= k)
                    {
                        ordered = false;
                        for (k, h) in held.drain(..) {
                            keys.insert(k, h);
                        }
                    }
                    if ordered && keys.len() > held.len() {
                        held.push((k, Arc::new(h)));
                    } else {
                        keys.insert(k, Arc::new(h));
                    }
                };
                // Keys are decoded a chunk at a time, and the values of a
                // chunk go to the scratch files with one write (not one a
                // key: a restart with 100 000 keys made 100 000 writes).
                let mut chunk: Vec<(Key, History)> = Vec::new();
                let mut flush = |chunk: &mut Vec<(Key, History)>| {
                    super::DECODE_SPILL.with(|s| {
                        if let Some((cold, moved)) = s.borrow_mut().as_mut() {
                            *moved += History::spill_all(chunk, cold);
                        }
                    });
                    for (k, h) in chunk.drain(..) {
                        insert(k, h);
                    }
                };
                let mut chunk_bytes = 0usize;
                // Read as a `Vec` (serde sizes it cautiously whatever length
                // the input claims), then kept in place if it is short.
                while let Some((k, h)) = access.next_entry::<Vec<u8>, History>()? {
                    let entry = (Key::from_vec(k), h);
                    chunk_bytes += entry
                        .1
                        .versions
                        .iter()
                        .map(|v| v.live.as_ref().map_or(0, |l| l.value.len()))
                        .sum::<usize>();
                    chunk.push(entry);
                    if chunk.len() == super::DECODE_CHUNK
                        || chunk_bytes >= super::DECODE_CHUNK_BYTES
                    {
                        flush(&mut chunk);
                        chunk_bytes = 0;
                    }
                }
                flush(&mut chunk);
                for (k, h) in held {
                    keys.insert(k, h);
                }
                Ok(keys)
            }
        }
        d.deserialize_map(Keys)
    }
}

/// Keys decoded before their values go to the scratch files together...
const DECODE_CHUNK: usize = 1024;

/// ...or bytes of values, whichever comes first (so a restart's peak stays
/// about the state it loads, however long the histories).
const DECODE_CHUNK_BYTES: usize = 4 << 20;

thread_local! {
    /// Where [`decode_spilling`] sends the superseded values of the store
    /// being decoded on this thread, and how many went.
    static DECODE_SPILL: std::cell::RefCell<Option<(ColdStore, usize)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `decode` (which decodes stores, e.g. a snapshot) with the values
/// of superseded versions going to `cold` as each key's history is
/// decoded, as [`MvccStore::set_cold`] would move them after: a large
/// history is then never on the heap all at once (the peak of a restart).
/// Returns what `decode` returned and how many values moved. The stores
/// decoded go on moving superseded values to `cold`, as after
/// [`MvccStore::set_cold`] (which need not walk them again).
pub fn decode_spilling<T>(cold: Option<&ColdStore>, decode: impl FnOnce() -> T) -> (T, usize) {
    /// Clears the thread's target however `decode` ends.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            DECODE_SPILL.with(|s| s.borrow_mut().take());
        }
    }
    let Some(cold) = cold else {
        return (decode(), 0);
    };
    DECODE_SPILL.with(|s| *s.borrow_mut() = Some((cold.clone(), 0)));
    let reset = Reset;
    let out = decode();
    let moved = DECODE_SPILL.with(|s| s.borrow().as_ref().map_or(0, |(_, n)| *n));
    drop(reset);
    (out, moved)
}

/// Bytes [`MvccStore::size`] counts for every stored version on top of its
/// key and value: etcd's `kvOverhead`, its estimate of a key's metadata
/// (revision key, create/mod revision, version, lease) in the backend.
pub const VERSION_OVERHEAD: u64 = 256;

/// What one stored version of `key` adds to [`MvccStore::size`].
fn version_size(key: &[u8], v: &Version) -> u64 {
    let value = v.live.as_ref().map_or(0, |l| l.value.len());
    (key.len() as u64)
        .saturating_add(value as u64)
        .saturating_add(VERSION_OVERHEAD)
}

/// What a whole history adds to [`MvccStore::size`].
fn history_size(key: &[u8], h: &History) -> u64 {
    h.versions
        .iter()
        .fold(0u64, |acc, v| acc.saturating_add(version_size(key, v)))
}

/// The multi-version key-value store. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredMvcc")]
pub struct MvccStore {
    current_revision: i64,
    compact_revision: i64,
    /// Number of keys whose newest version is live.
    live_keys: u64,
    /// A persistent B-tree (`imbl::OrdMap`): cloning the store for a
    /// snapshot is O(1) and shares every node, so the snapshot is written
    /// without holding up writes; a write after it copies only the nodes on
    /// its path. Each history is behind its own `Arc`, so copying a node
    /// (16 keys in `imbl`) copies pointers, and a write copies only the history it
    /// changes (`Arc::make_mut`): with histories inline, each write during a
    /// snapshot copied 16 keys' versions and values, and the copies freed
    /// afterwards left the heap fragmented (docs/benchmarks.md, "Memory:
    /// shared histories").
    #[serde(with = "keys_serde")]
    keys: OrdMap<Key, Arc<History>>,
    /// [`MvccStore::size`], kept up to date by every write, rollback and
    /// compaction. Not stored: recomputed when a store is decoded, so the
    /// snapshot encoding is unchanged.
    #[serde(skip)]
    size: u64,
    /// Where superseded values go ([`MvccStore::set_cold`]); none: all
    /// values stay on the heap. Not state: two stores are equal whatever
    /// their scratch files.
    #[serde(skip)]
    cold: Spill,
    /// Keys written since the last [`MvccStore::flush_spills`], with the
    /// revision of the write: what those writes superseded still has its
    /// value on the heap until the flush moves all of them with one write
    /// to the scratch files (a follower under 64-client puts made 0.18
    /// `pwrite` calls per put instead of 0.45). Not state.
    #[serde(skip)]
    pending_spills: PendingSpills,
    /// The sweep emptying sparse scratch segments
    /// ([`MvccStore::sweep_step`]), where it is. Not state.
    #[serde(skip)]
    sweep: Sweep,
}

/// [`MvccStore::sweep`]: the sparse segments being emptied (none: no
/// sweep runs), the next key to visit (`None`: the first),
/// [`ColdStore::segments_made`] when sparse segments were last looked
/// for, and whether a compaction since calls for another look.
#[derive(Debug, Default)]
struct Sweep {
    sparse: Sparse,
    next: Option<Key>,
    generation: u64,
    recheck: bool,
}

/// Copies of the store do not sweep (as [`PendingSpills`]); the one that
/// replaces the store takes the sweep over.
impl Clone for Sweep {
    fn clone(&self) -> Self {
        Sweep::default()
    }
}

impl PartialEq for Sweep {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Sweep {}

/// Keys one [`MvccStore::sweep_step`] visits at most.
const SWEEP_KEYS: usize = 4096;

/// Values one [`MvccStore::sweep_step`] copies at most (each a `pread`).
const SWEEP_VALUES: usize = 256;

/// Bytes of values after which a [`MvccStore::sweep_step`] stops at the
/// next key (values may be as large as a request).
const SWEEP_BYTES: usize = 4 << 20;

/// [`MvccStore::pending_spills`]: equal to any other, as [`Spill`].
#[derive(Debug, Default)]
struct PendingSpills(Vec<(Vec<u8>, i64)>);

/// A copy of the store starts with nothing pending: copies are made for
/// every read and for each snapshot, none of them writes, and cloning the
/// list would cost an allocation per written key on each. The one copy
/// that replaces the store, a compaction's, takes the list over in
/// [`MvccStore::replace_with_compacted`].
impl Clone for PendingSpills {
    fn clone(&self) -> Self {
        PendingSpills::default()
    }
}

impl PartialEq for PendingSpills {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for PendingSpills {}

/// How many written keys [`MvccStore::commit`] lets wait for
/// [`MvccStore::flush_spills`] before flushing itself; the state machine
/// flushes after each batch of entries it applies.
const MAX_PENDING_SPILLS: usize = 256;

/// The scratch files of [`MvccStore`], if any. Equal to any other: where
/// bytes are kept is not part of the state.
#[derive(Clone, Debug, Default)]
struct Spill(Option<ColdStore>);

impl PartialEq for Spill {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Spill {}

/// The stored form of [`MvccStore`]: the same fields in the same order, so
/// the postcard bytes are those of the store; decoding recounts the size.
#[derive(Deserialize)]
struct StoredMvcc {
    current_revision: i64,
    compact_revision: i64,
    live_keys: u64,
    #[serde(with = "keys_serde")]
    keys: OrdMap<Key, Arc<History>>,
}

impl From<StoredMvcc> for MvccStore {
    fn from(s: StoredMvcc) -> Self {
        let mut store = MvccStore {
            current_revision: s.current_revision,
            compact_revision: s.compact_revision,
            live_keys: s.live_keys,
            keys: s.keys,
            size: 0,
            // Decoded under `decode_spilling`: its scratch files from now on.
            cold: Spill(DECODE_SPILL.with(|t| t.borrow().as_ref().map(|(c, _)| c.clone()))),
            pending_spills: PendingSpills::default(),
            sweep: Sweep::default(),
        };
        store.size = store.recount_size();
        store
    }
}

impl Default for MvccStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MvccStore {
    /// An empty store at revision 1 with compact revision 0, like a fresh etcd.
    pub fn new() -> Self {
        MvccStore {
            current_revision: 1,
            compact_revision: 0,
            live_keys: 0,
            keys: OrdMap::new(),
            size: 0,
            cold: Spill::default(),
            pending_spills: PendingSpills::default(),
            sweep: Sweep::default(),
        }
    }

    /// From now on, moves values to `cold` after each batch of writes,
    /// starting with those already here: the value of each superseded
    /// version (a key's older versions, kept until compaction for reads at
    /// old revisions and watch replay), and each key's newest value of at
    /// least [`ColdStore::newest_min`] bytes. So the heap holds the
    /// newest values shorter than that, and the kernel's page cache the
    /// rest, as etcd's memory-mapped file does. A read of a cold value
    /// costs a `pread`. `None` keeps everything on the heap. Returns how
    /// many values moved now.
    pub fn set_cold(&mut self, cold: Option<ColdStore>) -> usize {
        self.cold = Spill(cold);
        let Some(cold) = self.cold.0.clone() else {
            return 0;
        };
        // Every key with a value to move, from its first version: the
        // same batched moves as after writes.
        let with_history = self
            .keys
            .iter()
            .filter(|(_, h)| h.movable_from(0, &cold).next().is_some())
            .map(|(k, _)| (k.to_vec(), i64::MIN));
        self.pending_spills.0.extend(with_history);
        self.flush_spills()
    }

    /// warden's analogue of etcd's backend size (`Status.db_size`, the
    /// figure `--quota-backend-bytes` is checked against): the bytes of
    /// every retained version of every key, i.e. for each version still in
    /// history (live values and tombstones, up to the compact revision),
    /// the key length plus the value length (0 for a tombstone) plus
    /// [`VERSION_OVERHEAD`]. Puts and deletes add to it, compaction takes
    /// off what it drops. It is maintained incrementally (no walk per
    /// write), deterministic (every replica that applied the same commands
    /// has the same size), and does not shrink on overwrite: old versions
    /// are kept until compacted, as in etcd. Leases and locks are not
    /// counted here (see `StateMachine::size`).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many values are in scratch files (tests).
    #[cfg(test)]
    pub(crate) fn cold_values(&self) -> usize {
        self.keys.values().map(|h| h.cold_count()).sum()
    }

    /// Where a key's newest value is, if in a scratch file (tests).
    #[cfg(test)]
    pub(crate) fn newest_cold(&self, key: &[u8]) -> Option<ColdRef> {
        match &self.keys.get(key)?.versions.last()?.live {
            Some(Live {
                value: Value::Cold(r),
                ..
            }) => Some(r.clone()),
            _ => None,
        }
    }

    /// [`MvccStore::size`] computed from scratch by walking every history.
    pub fn recount_size(&self) -> u64 {
        self.keys
            .iter()
            .fold(0u64, |acc, (k, h)| acc.saturating_add(history_size(k, h)))
    }

    /// The revision of the last write (1 for a fresh store).
    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The revision of the last compaction (0 if never compacted). Reads at
    /// revisions `>= compact_revision()` are served.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Number of live keys at the current revision.
    pub fn len(&self) -> usize {
        usize::try_from(self.live_keys).unwrap_or(usize::MAX)
    }

    /// True if no key is live at the current revision.
    pub fn is_empty(&self) -> bool {
        self.live_keys == 0
    }

    /// The current value of one key, if it exists (an error if its value
    /// could not be read back from the scratch files).
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StateError> {
        self.newest_live(key)
            .map(|(m, l)| to_kv(key, m, l, true))
            .transpose()
    }

    /// A key's live version at the current revision, with its mod
    /// revision.
    fn newest_live(&self, key: &[u8]) -> Option<(i64, &Live)> {
        self.keys
            .get(key)
            .and_then(|h| h.live_at(self.current_revision))
    }

    /// [`MvccStore::get`] of each of `keys`, in order, the values read
    /// back together ([`ColdRef::read_many`]).
    pub fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<KeyValue>>, StateError> {
        let found: Vec<Option<(&[u8], i64, &Live)>> = keys
            .iter()
            .map(|k| self.newest_live(k).map(|(m, l)| (k.as_slice(), m, l)))
            .collect();
        let live: Vec<(&[u8], i64, &Live)> = found.iter().flatten().copied().collect();
        let mut kvs = kvs_of(&live, true)?.into_iter();
        Ok(found.iter().map(|f| f.and_then(|_| kvs.next())).collect())
    }

    /// [`MvccStore::get`] without the value (left empty): what a key's
    /// revisions, version and lease are, with nothing to read back.
    pub fn get_meta(&self, key: &[u8]) -> Option<KeyValue> {
        self.newest_live(key)
            .map(|(m, l)| kv_of(key, m, l, Vec::new()))
    }

    /// etcd `Range`, outside any write (a linearizable or serializable read).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StateError> {
        validate::check_range_request(req)?;
        let rev = self.resolve_read_rev(req.revision, self.current_revision)?;
        self.range_at(req, rev)
    }

    /// etcd `Put`. Bumps the revision by one.
    pub fn put(
        &mut self,
        req: &PutRequest,
        leases: &dyn LeaseLookup,
    ) -> Result<WriteResult<PutResponse>, StateError> {
        validate::check_put_request(req)?;
        // The standalone put checks the lease first (etcd `applierV3backend.Put`).
        if req.lease != 0 && !leases.lease_exists(req.lease) {
            return Err(StateError::LeaseNotFound);
        }
        let mut w = self.begin_write();
        match self.put_op(&mut w, req, leases) {
            Ok(response) => Ok(self.commit(w, response)),
            Err(e) => {
                self.rollback(w);
                Err(e)
            }
        }
    }

    /// etcd `DeleteRange`. Bumps the revision by one if it deleted anything.
    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<WriteResult<DeleteRangeResponse>, StateError> {
        validate::check_delete_request(req)?;
        let mut w = self.begin_write();
        match self.delete_op(&mut w, req) {
            Ok(response) => Ok(self.commit(w, response)),
            Err(e) => {
                self.rollback(w);
                Err(e)
            }
        }
    }

    /// etcd `Txn`: all compares (nested ones included) are evaluated against
    /// the store as it was before the txn; the chosen ops are checked, then
    /// run in order, later ones seeing earlier ones' writes. Either the whole
    /// txn applies (one revision bump if it wrote anything) or, on error,
    /// nothing changes.
    pub fn txn(
        &mut self,
        req: &TxnRequest,
        leases: &dyn LeaseLookup,
    ) -> Result<WriteResult<TxnResponse>, StateError> {
        validate::check_txn_request(req)?;
        let begin = self.current_revision;

        // etcd `compareToPath`: the branch taken at every level, pre-order.
        let mut path = Vec::new();
        let mut chosen_ops = Vec::new();
        self.compare_path(req, begin, &mut path, &mut chosen_ops)?;

        // etcd `checkRequests` with `checkPut`, then with `checkRange`.
        for op in &chosen_ops {
            if let RequestOp::Put(p) = op {
                self.check_put_in_txn(p, begin, leases)?;
            }
        }
        for op in &chosen_ops {
            if let RequestOp::Range(q) = op {
                self.check_range_in_txn(q, begin)?;
            }
        }

        let mut w = self.begin_write();
        let mut next = 0;
        match self.exec_txn(&mut w, req, &path, &mut next, leases) {
            Ok(response) => Ok(self.commit(w, response)),
            Err(e) => {
                self.rollback(w);
                Err(e)
            }
        }
    }

    /// Deletes the given keys in one revision (a revoked lease's keys).
    /// Keys that are not live are skipped; nothing changes if none is.
    /// No value is read: each delete event's `prev_kv` says where its
    /// value is if it is in a scratch file ([`Event::prev_cold`]).
    pub fn delete_keys(&mut self, keys: &[Vec<u8>]) -> Result<WriteResult<i64>, StateError> {
        let mut w = self.begin_write();
        let mut deleted = 0;
        for k in keys {
            let r = self.delete_op(
                &mut w,
                &DeleteRangeRequest {
                    key: k.clone(),
                    range_end: Vec::new(),
                    prev_kv: false,
                },
            );
            match r {
                Ok(r) => deleted += r.deleted,
                Err(e) => {
                    self.rollback(w);
                    return Err(e);
                }
            }
        }
        Ok(self.commit(w, deleted))
    }

    /// etcd `Compact`: forget history older than `rev`. Reads at `rev` and
    /// later answer exactly as before; reads before `rev` get `Compacted`.
    /// Does not change the current revision.
    pub fn compact(&mut self, rev: i64) -> Result<(), StateError> {
        if rev <= self.compact_revision {
            return Err(StateError::Compacted);
        }
        if rev > self.current_revision {
            return Err(StateError::FutureRevision);
        }
        // Touch only the histories compaction changes, so nodes a snapshot
        // still shares are copied only where something is dropped.
        let changes = self.keys.values().filter(|h| h.compacts_at(rev)).count();
        if changes * 2 >= self.keys.len() {
            self.compact_into_fresh_map(rev);
            self.compact_revision = rev;
            self.sweep.recheck = true;
            return Ok(());
        }
        let changed: Vec<Key> = self
            .keys
            .iter()
            .filter(|(_, h)| h.compacts_at(rev))
            .map(|(k, _)| k.clone())
            .collect();
        for key in changed {
            let now_empty = match self.keys.get_mut(&*key).map(Arc::make_mut) {
                Some(h) => {
                    let drop = h.compact_from(rev);
                    let dropped = h
                        .versions
                        .iter()
                        .take(drop)
                        .fold(0u64, |acc, v| acc.saturating_add(version_size(&key, v)));
                    self.size = self.size.saturating_sub(dropped);
                    h.compact(rev);
                    h.versions.is_empty()
                }
                None => false,
            };
            if now_empty {
                self.keys.remove(&*key);
            }
        }
        self.compact_revision = rev;
        self.sweep.recheck = true;
        Ok(())
    }

    /// [`MvccStore::compact`] when it changes most keys: builds the
    /// compacted map afresh (new nodes, keys and histories, each history
    /// holding only what it keeps) instead of copying the changed histories
    /// out of the shared ones. Compaction runs on a copy of the store
    /// (`StateMachine::compact_copy`), so the old map is freed whole when the
    /// copy replaces it; copying only the changed histories would leave the
    /// unchanged ones scattered over the old map's memory, which the
    /// allocator then cannot return (a member restarted right after a
    /// compaction held 555 MB instead of 424 MB with 1 000 000 keys:
    /// docs/benchmarks.md, "Memory: shared histories").
    fn compact_into_fresh_map(&mut self, rev: i64) {
        let mut fresh = OrdMap::new();
        let mut dropped = 0u64;
        // Two passes over the keys that stay, every other one first.
        // `imbl`'s B-tree splits a full leaf (16 keys) in half, so keys
        // inserted in order leave every leaf half full. Every other key
        // first leaves half-full leaves whose ranges hold exactly the keys
        // left out, and inserting those fills each leaf without a split:
        // full leaves, half as many (512 bytes each).
        for pass in 0..2 {
            let mut n = 0usize;
            for (key, h) in self.keys.iter() {
                let keep_from = h.compact_from(rev);
                let kept = h.versions.get(keep_from..).unwrap_or_default();
                if pass == 0 {
                    dropped = h
                        .versions
                        .iter()
                        .take(keep_from)
                        .fold(dropped, |acc, v| acc.saturating_add(version_size(key, v)));
                }
                if kept.is_empty() {
                    continue;
                }
                if n % 2 == pass {
                    fresh.insert(
                        key.clone(),
                        Arc::new(History {
                            versions: kept.to_vec(),
                        }),
                    );
                }
                n += 1;
            }
        }
        self.size = self.size.saturating_sub(dropped);
        self.keys = fresh;
    }

    /// Every change with revision `>= from` to keys in `[key, range_end)`
    /// (etcd range conventions), as watch events in revision order and, within
    /// a revision, the order they were made in. Each event carries the key's previous live
    /// version as `prev_kv`. `Compacted` if `from` is before the compaction
    /// point, since history there is gone.
    pub fn events_since(
        &self,
        from: i64,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<Vec<Event>, StateError> {
        if from < self.compact_revision {
            return Err(StateError::Compacted);
        }
        let mut out: Vec<(u32, Event)> = Vec::new();
        for (k, h) in self.iter_range(key, range_end) {
            let first = h.versions.partition_point(|v| v.mod_revision < from);
            for i in first..h.versions.len() {
                let Some(v) = h.versions.get(i) else { break };
                out.push((v.sub, event_of(k, h, i, v)?));
            }
        }
        // Revision order, and within a revision the order the changes were
        // made in (what live watchers see).
        out.sort_by_key(|(sub, e)| (e.kv.mod_revision, *sub));
        Ok(out.into_iter().map(|(_, e)| e).collect())
    }

    /// One chunk of watch replay: the events of `events_since(from, ..)` with
    /// revisions in `[from, end]`, and `end`. `end <= to` and covers at
    /// most `max_revisions` revisions, and stops at the first revision that
    /// brings the chunk to `max_bytes` (keys and values, previous versions
    /// included); a revision is never split. Only the chunk's events are
    /// copied. Call with `from = end + 1` for the next chunk.
    pub fn events_chunk(
        &self,
        from: i64,
        to: i64,
        key: &[u8],
        range_end: &[u8],
        max_revisions: i64,
        max_bytes: usize,
    ) -> Result<(Vec<Event>, i64), StateError> {
        if from < self.compact_revision {
            return Err(StateError::Compacted);
        }
        if from > to {
            return Ok((Vec::new(), to));
        }
        let window_end = to.min(from.saturating_add(max_revisions.max(1) - 1));
        let in_window = |h: &'_ History| {
            let first = h.versions.partition_point(|v| v.mod_revision < from);
            let last = h.versions.partition_point(|v| v.mod_revision <= window_end);
            first..last.max(first)
        };
        // Sizes per revision first, without copying anything.
        let mut sizes: std::collections::BTreeMap<i64, usize> = Default::default();
        for (k, h) in self.iter_range(key, range_end) {
            for i in in_window(h) {
                let Some(v) = h.versions.get(i) else { break };
                let size = |v: &Version| v.live.as_ref().map_or(0, |l| l.value.len()) + k.len();
                let prev = i
                    .checked_sub(1)
                    .and_then(|p| h.versions.get(p))
                    .map_or(0, size);
                *sizes.entry(v.mod_revision).or_default() += size(v) + prev;
            }
        }
        let mut end = window_end;
        let mut total = 0usize;
        for (rev, n) in &sizes {
            total += n;
            if total >= max_bytes {
                end = *rev;
                break;
            }
        }
        let mut out: Vec<(u32, Event)> = Vec::new();
        for (k, h) in self.iter_range(key, range_end) {
            for i in in_window(h) {
                let Some(v) = h.versions.get(i) else { break };
                if v.mod_revision > end {
                    break;
                }
                out.push((v.sub, event_of(k, h, i, v)?));
            }
        }
        out.sort_by_key(|(sub, e)| (e.kv.mod_revision, *sub));
        Ok((out.into_iter().map(|(_, e)| e).collect(), end))
    }

    /// CRC32 over every stored version with `mod_revision <= rev` (all of
    /// them for `rev <= 0` or `rev > current`), in key then revision order.
    /// Replicas that applied the same commands agree on it, like etcd's
    /// `HashKV`; it is not etcd's exact hash.
    pub fn hash_kv(&self, rev: i64) -> Result<u32, StateError> {
        let rev = if rev <= 0 || rev > self.current_revision {
            self.current_revision
        } else {
            rev
        };
        let mut h = crc32fast::Hasher::new();
        for (key, hist) in &self.keys {
            for v in hist.versions.iter().take_while(|v| v.mod_revision <= rev) {
                h.update(&(key.len() as u64).to_le_bytes());
                h.update(key);
                h.update(&v.mod_revision.to_le_bytes());
                match &v.live {
                    None => h.update(&[0]),
                    Some(l) => {
                        h.update(&[1]);
                        h.update(&l.create_revision.to_le_bytes());
                        h.update(&l.version.to_le_bytes());
                        h.update(&l.lease.to_le_bytes());
                        h.update(&(l.value.len() as u64).to_le_bytes());
                        h.update(&l.value.bytes()?);
                    }
                }
            }
        }
        Ok(h.finalize())
    }

    /// Checks the structural invariants a store built by this code always
    /// has; used to refuse a snapshot that decodes but cannot be right.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.current_revision < 1 || self.current_revision == i64::MAX {
            return Err(format!(
                "current revision {} out of range",
                self.current_revision
            ));
        }
        if self.compact_revision < 0 || self.compact_revision > self.current_revision {
            return Err(format!(
                "compact revision {} outside [0, {}]",
                self.compact_revision, self.current_revision
            ));
        }
        let mut live = 0u64;
        for (key, hist) in &self.keys {
            if key.is_empty() {
                return Err("empty key in store".into());
            }
            if hist.versions.is_empty() {
                return Err(format!("key {key:02x?} has no versions"));
            }
            let mut prev = i64::MIN;
            for v in &hist.versions {
                if v.mod_revision < prev
                    || v.mod_revision < 1
                    || v.mod_revision > self.current_revision
                {
                    return Err(format!(
                        "key {key:02x?}: mod revision {} out of order or range",
                        v.mod_revision
                    ));
                }
                prev = v.mod_revision;
                if let Some(l) = &v.live {
                    if l.create_revision < 1 || l.create_revision > v.mod_revision || l.version < 1
                    {
                        return Err(format!(
                            "key {key:02x?}: bad version at revision {}",
                            v.mod_revision
                        ));
                    }
                }
            }
            if let Some(Version {
                live:
                    Some(Live {
                        value: Value::Cold(c),
                        ..
                    }),
                ..
            }) = hist.versions.last()
            {
                if self
                    .cold
                    .0
                    .as_ref()
                    .is_some_and(|s| c.len() < s.newest_min())
                {
                    return Err(format!(
                        "key {key:02x?}: a newest value of {} bytes is not in memory",
                        c.len()
                    ));
                }
            }
            if hist.is_live() {
                live += 1;
            }
        }
        if live != self.live_keys {
            return Err(format!(
                "live key count {} does not match the {} live keys",
                self.live_keys, live
            ));
        }
        let recount = self.recount_size();
        if recount != self.size {
            return Err(format!(
                "size {} does not match the {recount} bytes the histories hold",
                self.size
            ));
        }
        Ok(())
    }

    // ----- reads -------------------------------------------------------------

    /// Resolves a requested read revision against `current` (etcd
    /// `rangeKeys`): `<= 0` means `current`.
    fn resolve_read_rev(&self, requested: i64, current: i64) -> Result<i64, StateError> {
        if requested > current {
            return Err(StateError::FutureRevision);
        }
        let rev = if requested <= 0 { current } else { requested };
        if rev < self.compact_revision {
            return Err(StateError::Compacted);
        }
        Ok(rev)
    }

    fn iter_range<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> impl DoubleEndedIterator<Item = (&'a [u8], &'a History)> + 'a {
        self.keys
            .range::<_, [u8]>(bounds(key, range_end))
            .map(|(k, h)| (&**k, &**h))
    }

    /// Live keys in a range at `rev`, in key order.
    fn live_in_range<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
        rev: i64,
    ) -> impl Iterator<Item = (&'a [u8], i64, &'a Live)> + 'a {
        self.iter_range(key, range_end)
            .filter_map(move |(k, h)| h.live_at(rev).map(|(m, l)| (k, m, l)))
    }

    /// etcd `applierV3backend.Range` at an already validated revision.
    fn range_at(&self, req: &RangeRequest, rev: i64) -> Result<RangeResponse, StateError> {
        let live = self.live_in_range(&req.key, &req.range_end, rev);
        if req.count_only {
            return Ok(RangeResponse {
                kvs: Vec::new(),
                more: false,
                count: count_i64(live.count()),
            });
        }

        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let sort_order = match (req.sort_target, req.sort_order) {
            (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
            (SortTarget::Key, order) => order,
            (_, SortOrder::None) => SortOrder::Ascend,
            (_, order) => order,
        };
        let limit = usize::try_from(req.limit)
            .ok()
            .filter(|&l| l > 0)
            .unwrap_or(usize::MAX);

        if !filtered && sort_order == SortOrder::None {
            // Key order is the answer: build only the kvs returned.
            let mut found = Vec::new();
            let mut count = 0usize;
            for (k, m, l) in live {
                if count < limit {
                    found.push((k, m, l));
                }
                count += 1;
            }
            return Ok(RangeResponse {
                kvs: kvs_of(&found, !req.keys_only)?,
                more: count > limit,
                count: count_i64(count),
            });
        }

        // Sort references, not copies: the only kvs built are those returned,
        // so a `limit = 1` read of a large range holds one value, not all.
        let mut count = 0usize;
        let mut refs: Vec<SortRef<'_>> = Vec::new();
        for (k, m, l) in live {
            count += 1;
            let pruned = (req.max_mod_revision != 0 && m > req.max_mod_revision)
                || (req.min_mod_revision != 0 && m < req.min_mod_revision)
                || (req.max_create_revision != 0 && l.create_revision > req.max_create_revision)
                || (req.min_create_revision != 0 && l.create_revision < req.min_create_revision);
            if !pruned {
                // Sorting by value compares the bytes: read a cold value
                // once here, not at every comparison.
                let value = if req.sort_target == SortTarget::Value {
                    l.value.bytes()?
                } else {
                    Cow::Borrowed(&[][..])
                };
                refs.push((k, m, l, value));
            }
        }
        let more = refs.len() > limit;
        select_sorted(&mut refs, req.sort_target, sort_order, limit);
        let found: Vec<(&[u8], i64, &Live)> =
            refs.into_iter().map(|(k, m, l, _)| (k, m, l)).collect();
        let kvs = kvs_of(&found, !req.keys_only)?;
        Ok(RangeResponse {
            kvs,
            more,
            count: count_i64(count),
        })
    }

    /// etcd `applyCompare`: true if every key in the compare's range
    /// satisfies it at `rev`. With no key in the range, a value compare is
    /// false and other targets compare against zero.
    /// An error if a value to compare could not be read back.
    fn compare_holds(&self, c: &Compare, rev: i64) -> Result<bool, StateError> {
        let mut any = false;
        for (_, m, l) in self.live_in_range(&c.key, &c.range_end, rev) {
            any = true;
            if !compare_one(c, Some((m, l)))? {
                return Ok(false);
            }
        }
        if any {
            return Ok(true);
        }
        match c.target {
            CompareTarget::Value(_) => Ok(false),
            _ => compare_one(c, None),
        }
    }

    fn compares_hold(&self, t: &TxnRequest, rev: i64) -> Result<bool, StateError> {
        for c in &t.compare {
            if !self.compare_holds(c, rev)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Evaluates the compares of `t` and of every nested txn on the chosen
    /// path at `rev`, appending the branch taken (pre-order) to `path` and
    /// the non-txn ops of the chosen path to `ops`.
    fn compare_path<'a>(
        &self,
        t: &'a TxnRequest,
        rev: i64,
        path: &mut Vec<bool>,
        ops: &mut Vec<&'a RequestOp>,
    ) -> Result<(), StateError> {
        let ok = self.compares_hold(t, rev)?;
        path.push(ok);
        for op in if ok { &t.success } else { &t.failure } {
            match op {
                RequestOp::Txn(n) => self.compare_path(n, rev, path, ops)?,
                other => ops.push(other),
            }
        }
        Ok(())
    }

    /// etcd `checkPut`, against the store before the txn.
    fn check_put_in_txn(
        &self,
        p: &PutRequest,
        rev: i64,
        leases: &dyn LeaseLookup,
    ) -> Result<(), StateError> {
        if (p.ignore_value || p.ignore_lease)
            && self
                .keys
                .get(p.key.as_slice())
                .and_then(|h| h.live_at(rev))
                .is_none()
        {
            return Err(StateError::KeyNotFound);
        }
        if p.lease != 0 && !leases.lease_exists(p.lease) {
            return Err(StateError::LeaseNotFound);
        }
        Ok(())
    }

    /// etcd `checkRange`, against the revisions before the txn.
    fn check_range_in_txn(&self, q: &RangeRequest, rev: i64) -> Result<(), StateError> {
        self.resolve_read_rev(q.revision, rev).map(|_| ())
    }

    // ----- writes ------------------------------------------------------------

    fn begin_write(&self) -> Write {
        Write {
            begin_rev: self.current_revision,
            live_keys_before: self.live_keys,
            changed: false,
            events: Vec::new(),
        }
    }

    fn commit<T>(&mut self, w: Write, response: T) -> WriteResult<T> {
        if w.changed {
            self.current_revision = w.rev();
            if self.cold.0.is_some() {
                // Every written key has an event; what it superseded is
                // history now, to be moved by the next flush.
                let rev = w.rev();
                self.pending_spills
                    .0
                    .extend(w.events.iter().map(|ev| (ev.kv.key.clone(), rev)));
                if self.pending_spills.0.len() >= MAX_PENDING_SPILLS {
                    self.flush_spills();
                }
            }
        }
        WriteResult {
            response,
            events: w.events,
        }
    }

    /// Replaces this store with `compacted`, a copy of it compacted off the
    /// lock (`StateMachine::compact_copy`), keeping the spills this store
    /// had pending: a copy starts with none, and without them what the
    /// last writes superseded would stay on the heap.
    pub(crate) fn replace_with_compacted(&mut self, compacted: MvccStore) {
        let pending = std::mem::take(&mut self.pending_spills);
        let sweep = std::mem::take(&mut self.sweep);
        *self = compacted;
        self.pending_spills = pending;
        // Values the sweep moved after the copy was made point into the
        // sparse segments again in the copy; the next sweep moves them.
        self.sweep = sweep;
        self.sweep.recheck = true;
    }

    /// Moves what the writes since the last flush superseded (the values
    /// still on the heap of versions other than each key's newest) to the
    /// scratch files, in as few writes as fit their batch limit. Returns
    /// how many values moved; those that could not be written stay on the
    /// heap. The state machine calls this after each batch of entries.
    pub fn flush_spills(&mut self) -> usize {
        let mut pending = std::mem::take(&mut self.pending_spills.0);
        let Some(cold) = self.cold.0.clone() else {
            return 0;
        };
        // A key written twice needs one pass, from its first write on.
        pending.sort_unstable();
        pending.dedup_by(|later, first| later.0 == first.0);
        // Which versions to move, (pending index, version index), with
        // their values, written in as few batches as fit.
        let (todo, refs) = {
            let mut todo: Vec<(usize, usize)> = Vec::new();
            let mut values: Vec<&[u8]> = Vec::new();
            for (i, (key, rev)) in pending.iter().enumerate() {
                let Some(h) = self.keys.get(key.as_slice()) else {
                    continue;
                };
                let from = h
                    .versions
                    .partition_point(|v| v.mod_revision < *rev)
                    .saturating_sub(1);
                for (j, b) in h.movable_from(from, &cold) {
                    todo.push((i, j));
                    values.push(b);
                }
            }
            let refs = cold.put_batched(&values);
            (todo, refs)
        };
        let mut moved = 0;
        for ((i, j), r) in todo.into_iter().zip(refs) {
            if let (Some(r), Some((key, _))) = (r, pending.get(i)) {
                moved += usize::from(self.set_cold_at(key, j, r));
            }
        }
        self.sweep_step(&cold);
        moved
    }

    /// Points version `j` of `key` at `r`, its value's copy in a scratch
    /// file (copying the history first if a copy of the store shares it).
    /// False if there is no such version.
    fn set_cold_at(&mut self, key: &[u8], j: usize, r: ColdRef) -> bool {
        match self
            .keys
            .get_mut(key)
            .map(Arc::make_mut)
            .and_then(|h| h.versions.get_mut(j))
        {
            Some(v) => {
                v.set_cold(r);
                true
            }
            None => false,
        }
    }

    /// One step of the sweep that empties sparse scratch segments
    /// ([`ColdStore::sparse_segments`]): visits up to [`SWEEP_KEYS`] keys
    /// from where the last step stopped and copies the values it finds
    /// in those segments, up to [`SWEEP_VALUES`] of them, to the active
    /// one, so that no write waits long behind it. A sweep starts when
    /// there are sparse segments, looked for after each compaction and
    /// each new segment (not at every flush: a segment held open by a
    /// snapshot being written is not swept for again and again), and
    /// ends after the last key. Returns
    /// how many values moved. A value that cannot be read stays where it
    /// is, and keeps its segment open: whoever next needs it gets the
    /// error.
    fn sweep_step(&mut self, cold: &ColdStore) -> usize {
        if self.sweep.sparse.is_empty() {
            let generation = cold.segments_made();
            if generation == self.sweep.generation && !self.sweep.recheck {
                return 0;
            }
            self.sweep.generation = generation;
            self.sweep.recheck = false;
            self.sweep.sparse = cold.sparse_segments();
            self.sweep.next = None;
            if self.sweep.sparse.is_empty() {
                return 0;
            }
        }
        if self.sweep.sparse.all_closed() {
            // Closed already (their values overwritten and compacted
            // meanwhile): nothing left to look for.
            self.sweep.sparse = Sparse::default();
            return 0;
        }
        // The values to copy, (key, version index, bytes), read together
        // (`ColdRef::read_many`: the values of one segment lie close).
        let mut next: Option<Key> = None;
        let found: Vec<(Key, usize, Vec<u8>)> = {
            let from = match &self.sweep.next {
                Some(k) => Bound::Included(&**k),
                None => Bound::Unbounded,
            };
            let sparse = &self.sweep.sparse;
            let mut at: Vec<(&Key, usize, &ColdRef)> = Vec::new();
            let mut bytes = 0usize;
            for (visited, (k, h)) in self
                .keys
                .range::<_, [u8]>((from, Bound::Unbounded))
                .enumerate()
            {
                if visited == SWEEP_KEYS || at.len() >= SWEEP_VALUES || bytes >= SWEEP_BYTES {
                    next = Some(k.clone());
                    break;
                }
                for (j, v) in h.versions.iter().enumerate() {
                    if let Some(Live {
                        value: Value::Cold(r),
                        ..
                    }) = &v.live
                    {
                        if sparse.holds(r) {
                            bytes += r.len();
                            at.push((k, j, r));
                        }
                    }
                }
            }
            let refs: Vec<&ColdRef> = at.iter().map(|(_, _, r)| *r).collect();
            at.iter()
                .zip(ColdRef::read_many(&refs))
                .filter_map(|((k, j, _), b)| Some(((*k).clone(), *j, b.ok()?)))
                .collect()
        };
        let values: Vec<&[u8]> = found.iter().map(|(_, _, b)| b.as_slice()).collect();
        let refs = cold.put_batched(&values);
        let mut moved = 0;
        for ((key, j, _), r) in found.iter().zip(refs) {
            if let Some(r) = r {
                moved += usize::from(self.set_cold_at(key, *j, r));
            }
        }
        cold.count_moved(moved);
        match next {
            Some(k) => self.sweep.next = Some(k),
            // The last key visited: the sparse segments close as the
            // last copies of their references go.
            None => {
                self.sweep.sparse = Sparse::default();
                self.sweep.next = None;
            }
        }
        moved
    }

    /// Undoes every write of `w`: each written key has an event, and its
    /// versions at `w.rev()` are the last ones in its history.
    fn rollback(&mut self, w: Write) {
        let rev = w.rev();
        for ev in &w.events {
            let key = ev.kv.key.as_slice();
            let now_empty = match self.keys.get_mut(key).map(Arc::make_mut) {
                Some(h) => {
                    while h.versions.last().is_some_and(|v| v.mod_revision == rev) {
                        if let Some(v) = h.versions.pop() {
                            self.size = self.size.saturating_sub(version_size(key, &v));
                        }
                    }
                    h.versions.is_empty()
                }
                None => false,
            };
            if now_empty {
                self.keys.remove(key);
            }
        }
        self.live_keys = w.live_keys_before;
    }

    fn put_op(
        &mut self,
        w: &mut Write,
        req: &PutRequest,
        leases: &dyn LeaseLookup,
    ) -> Result<PutResponse, StateError> {
        let read_rev = w.read_rev();
        let rev = w.rev();
        // One walk down the key map for the read and the write of a key
        // that exists (a new one is inserted after): the key's path is made
        // this map's own (copied if a snapshot or a reader shares it) even
        // if the put then fails, which changes no content.
        let slot = self.keys.get_mut(req.key.as_slice());
        // The previous value is read only if this request uses it.
        let (prev, prev_cold) = slot
            .as_deref()
            .and_then(|h| h.live_at(read_rev))
            .map(|(m, l)| prev_of(&req.key, m, l, req.prev_kv || req.ignore_value))
            .transpose()?
            .unzip();

        let (value, lease) = match (&prev, req.ignore_value || req.ignore_lease) {
            (None, true) => return Err(StateError::KeyNotFound),
            (Some(p), _) => (
                if req.ignore_value {
                    p.value.clone()
                } else {
                    req.value.clone()
                },
                if req.ignore_lease { p.lease } else { req.lease },
            ),
            (None, false) => (req.value.clone(), req.lease),
        };
        if lease != 0 && !req.ignore_lease && !leases.lease_exists(lease) {
            return Err(StateError::LeaseNotFound);
        }
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev, 1),
        };
        let live = Live {
            create_revision,
            version,
            lease,
            value: Value::Hot(value),
        };
        let kv = to_kv(&req.key, rev, &live, true)?;
        let new_version = Version {
            mod_revision: rev,
            sub: w.events.len() as u32,
            live: Some(live),
        };
        let added = version_size(&req.key, &new_version);
        match slot {
            Some(h) => Arc::make_mut(h).push(new_version),
            None => {
                self.keys.insert(
                    Key::from(req.key.as_slice()),
                    Arc::new(History {
                        versions: vec![new_version],
                    }),
                );
            }
        }
        self.size = self.size.saturating_add(added);
        if prev.is_none() {
            self.live_keys += 1;
        }
        w.changed = true;
        // The event keeps the previous version; only a request that asked
        // for it pays for a second copy.
        let response = PutResponse {
            prev_kv: if req.prev_kv { prev.clone() } else { None },
        };
        w.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev,
            prev_cold: prev_cold.flatten(),
        });
        Ok(response)
    }

    /// An error (nothing deleted) if the request asks for the deleted
    /// values (`prev_kv`) and one could not be read back. Each delete
    /// event carries its deleted value as `prev_kv`, left in its scratch
    /// file if it is there ([`Event::prev_cold`]).
    fn delete_op(
        &mut self,
        w: &mut Write,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, StateError> {
        let read_rev = w.read_rev();
        let rev = w.rev();
        // Deleted values are read only if the response returns them.
        let victims: Vec<(KeyValue, Option<ColdRef>)> = self
            .live_in_range(&req.key, &req.range_end, read_rev)
            .map(|(k, m, l)| prev_of(k, m, l, req.prev_kv))
            .collect::<Result<_, _>>()?;
        let mut response = DeleteRangeResponse {
            deleted: count_i64(victims.len()),
            prev_kvs: Vec::new(),
        };
        for (prev, prev_cold) in victims {
            if let Some(h) = self.keys.get_mut(prev.key.as_slice()).map(Arc::make_mut) {
                let tombstone = Version {
                    mod_revision: rev,
                    sub: w.events.len() as u32,
                    live: None,
                };
                self.size = self
                    .size
                    .saturating_add(version_size(&prev.key, &tombstone));
                h.push(tombstone);
            }
            self.live_keys = self.live_keys.saturating_sub(1);
            w.changed = true;
            w.events.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: prev.key.clone(),
                    mod_revision: rev,
                    ..KeyValue::default()
                },
                prev_kv: Some(prev.clone()),
                prev_cold,
            });
            if req.prev_kv {
                response.prev_kvs.push(prev);
            }
        }
        Ok(response)
    }

    /// etcd `applyTxn`: runs the branch `path[*next]` says, consuming one
    /// path entry per (nested) txn in pre-order.
    fn exec_txn(
        &mut self,
        w: &mut Write,
        t: &TxnRequest,
        path: &[bool],
        next: &mut usize,
        leases: &dyn LeaseLookup,
    ) -> Result<TxnResponse, StateError> {
        let succeeded = match path.get(*next) {
            Some(&b) => b,
            // Cannot happen (the path was built from the same tree); the
            // compares at the pre-txn revision give the same answer anyway.
            None => self.compares_hold(t, w.begin_rev)?,
        };
        *next += 1;
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op {
                RequestOp::Range(q) => {
                    let rev = self.resolve_read_rev(q.revision, w.read_rev())?;
                    ResponseOp::Range(self.range_at(q, rev)?)
                }
                RequestOp::Put(p) => ResponseOp::Put(self.put_op(w, p, leases)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_op(w, d)?),
                RequestOp::Txn(n) => ResponseOp::Txn(self.exec_txn(w, n, path, next, leases)?),
            };
            responses.push(response);
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }
}

fn count_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// etcd `compareKV` against one key (`None`: the zero `KeyValue`); an
/// error if the value to compare could not be read back.
fn compare_one(c: &Compare, kv: Option<(i64, &Live)>) -> Result<bool, StateError> {
    let ord = match (&c.target, kv) {
        (CompareTarget::Value(v), Some((_, l))) => l.value.bytes()?.as_ref().cmp(v.as_slice()),
        (CompareTarget::Value(v), None) => [].as_slice().cmp(v.as_slice()),
        (CompareTarget::Version(x), kv) => kv.map_or(0, |(_, l)| l.version).cmp(x),
        (CompareTarget::CreateRevision(x), kv) => kv.map_or(0, |(_, l)| l.create_revision).cmp(x),
        (CompareTarget::ModRevision(x), kv) => kv.map_or(0, |(m, _)| m).cmp(x),
        (CompareTarget::Lease(x), kv) => kv.map_or(0, |(_, l)| l.lease).cmp(x),
    };
    Ok(match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    })
}

/// Stable sort, so keys that tie on the target stay in ascending key order
/// (for both directions). etcd's sort is unstable; this fixes the order.
/// Leaves in `refs` the first `limit` of them in `order` by `target`, sorted.
/// Ties keep key order (the order `refs` arrive in, ascending, whichever
/// way the sort goes), so this gives what a stable sort of the whole range
/// followed by a truncation gives, in O(n + limit log limit).
/// A version to sort: key, mod revision, the version, and its value bytes
/// when sorting by value (empty otherwise).
type SortRef<'a> = (&'a [u8], i64, &'a Live, Cow<'a, [u8]>);

fn select_sorted(refs: &mut Vec<SortRef<'_>>, target: SortTarget, order: SortOrder, limit: usize) {
    let by_target = |a: &SortRef<'_>, b: &SortRef<'_>| match target {
        SortTarget::Key => a.0.cmp(b.0),
        SortTarget::Version => a.2.version.cmp(&b.2.version),
        SortTarget::Create => a.2.create_revision.cmp(&b.2.create_revision),
        SortTarget::Mod => a.1.cmp(&b.1),
        SortTarget::Value => a.3.cmp(&b.3),
    };
    let cmp = |a: &SortRef<'_>, b: &SortRef<'_>| {
        let o = match order {
            SortOrder::None => std::cmp::Ordering::Equal,
            SortOrder::Ascend => by_target(a, b),
            SortOrder::Descend => by_target(b, a),
        };
        o.then_with(|| a.0.cmp(b.0))
    };
    if limit < refs.len() {
        if limit == 0 {
            refs.clear();
            return;
        }
        refs.select_nth_unstable_by(limit - 1, cmp);
        refs.truncate(limit);
    }
    refs.sort_unstable_by(cmp);
}

#[cfg(test)]
#[path = "mvcc_tests.rs"]
mod tests;
