//! Cold values: the bytes of key versions, kept in unnamed scratch files
//! instead of the heap.
//!
//! The MVCC store keeps every version of every key until it is compacted,
//! as etcd does. Older versions are read by reads at an old revision,
//! watch replay and snapshots; a key's newest value by gets, compares, a
//! write that returns or keeps it, and a watcher asking for the previous
//! values of the next write's event (which carries a [`ColdRef`] for it
//! instead of the bytes). Superseded values, and newest ones of at
//! least [`NEWEST_MIN_BYTES`], are kept here: [`ColdStore::put_all`]
//! appends them to the active segment (a file with no name, made with `O_TMPFILE` in the member's
//! snapshot directory) and returns a [`ColdRef`] that reads it back with one
//! `pread`. The kernel's page cache keeps recently written segments in
//! memory while memory is plentiful and drops them when it is not, as it
//! does with etcd's memory-mapped bbolt file.
//!
//! Nothing here is durable or replicated: the snapshot and the log hold the
//! state, and a restarted member spills the history it loads again. The
//! files have no name, so a crash leaves nothing behind. A segment is
//! closed, and its disk space freed, when the last [`ColdRef`] into it is
//! dropped, and a copy of the store being written as a snapshot keeps the
//! segments it reads alive. Compaction drops history roughly in the order
//! it was written, but a newest value never overwritten would keep its
//! segment open for good: [`ColdStore::sparse_segments`] names the full
//! segments at most half referenced, and the store copies what is left in
//! them to the active segment.
//!
//! Writing a snapshot, which reads most of the history at once, runs
//! inside [`mapped_reads`]: the segments it touches are mapped read-only
//! for the length of the pass and values are copied out of the page cache
//! without a system call each (a `pread` per value was most of a
//! snapshot's CPU: docs/benchmarks.md, "Snapshots that do not stall
//! writes"). The maps are populated when made (every page of the
//! segment mapped in one call: faulting pages in one by one cost more
//! than half of a snapshot's CPU), so for the length of the pass the
//! member's resident set counts the segments it reads in full, dead
//! values included (file pages of the page cache, which the kernel can
//! drop); the maps go when the pass ends, and so do those pages from the
//! resident set. A segment is never
//! truncated and a map covers only bytes already written, so a mapped read
//! cannot fall past the end of the file; what a map cannot report is a
//! disk read error: the kernel kills the process (`SIGBUS`) where `pread`
//! would return `EIO`. A member that cannot read its scratch files while
//! writing a snapshot stops either way (a failed snapshot stops its Raft
//! core); backups, whose failure only fails the backup, use `pread`.
//!
//! Each value is stored after a CRC32 of it, checked when it is read back:
//! the files are never synced (they need not survive a crash), so a page
//! the kernel failed to write back, or a bad sector, must not come back as
//! a wrong value.
//!
//! A write error (a full disk) is not an error for the store: the value
//! stays on the heap, where it would have been anyway. A read error is
//! reported to whoever needed the value.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Bytes a segment file grows to before the next one is started.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// A key's newest value of at least this many bytes leaves the heap too
/// ([`ColdStore::newest_min`]); shorter ones (ids, addresses, small
/// settings, the empty values of locks) stay, where reading them costs no
/// system call and keeping them costs little more than a reference would.
pub const NEWEST_MIN_BYTES: usize = 64;

/// The CRC32 stored before each value.
const CRC_BYTES: usize = 4;

/// [`ColdRef::read_many`] reads two values with one `pread` if at most
/// this many bytes lie between them.
const SPAN_GAP: u64 = 4096;

/// The most bytes one `pread` of [`ColdRef::read_many`] reads.
const SPAN_MAX: u64 = 1 << 20;

/// One scratch file.
struct Segment {
    file: File,
    /// Shared with the store, for [`ColdStats`].
    stats: Arc<Counters>,
    /// Bytes written to this file.
    len: AtomicU64,
    /// Values written to this file. With the references into it (its
    /// `Arc`'s strong count), how much of it is still in use
    /// ([`ColdStore::sparse_segments`]).
    values: AtomicU64,
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.stats.segments.fetch_sub(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_sub(self.len.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Counters {
    segments: AtomicU64,
    bytes: AtomicU64,
    spilled: AtomicU64,
    write_errors: AtomicU64,
    writes: AtomicU64,
    moved: AtomicU64,
    made: AtomicU64,
}

/// Where a cold value lives: a segment kept open by this reference, an
/// offset and a length. Cloning it (a snapshot copy of the store) is one
/// reference count.
#[derive(Clone)]
pub struct ColdRef {
    segment: Arc<Segment>,
    offset: u32,
    len: u32,
}

impl ColdRef {
    /// The value's length in bytes, without reading it.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True for an empty value (never spilled, but complete the API).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the value back, checking its CRC: from a map of its segment
    /// inside [`mapped_reads`], else with one `pread`.
    pub fn read(&self) -> io::Result<Vec<u8>> {
        if let Some(mapped) = MAPPED.with(|m| {
            m.borrow_mut()
                .as_mut()
                .and_then(|maps| self.read_mapped(maps))
        }) {
            return mapped;
        }
        let mut buf = vec![0; self.len as usize + CRC_BYTES];
        self.segment
            .file
            .read_exact_at(&mut buf, u64::from(self.offset))
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.what())))?;
        // The value is the buffer past its CRC: moved down in place rather
        // than copied into a second allocation (a get reads one value).
        self.verify(&buf)?;
        buf.drain(..CRC_BYTES);
        Ok(buf)
    }

    /// Reads many values back, in the order of `refs`: values near each
    /// other in a segment (sorted by place, at most `SPAN_GAP` bytes
    /// apart, `SPAN_MAX` bytes a read) come in with one `pread`, so a
    /// range over many keys makes a few large reads, not one a key. Each
    /// value's CRC is checked; a span whose read fails is read value by
    /// value, so each error names its own value.
    pub fn read_many(refs: &[&ColdRef]) -> Vec<io::Result<Vec<u8>>> {
        let in_pass = MAPPED.with(|m| m.borrow().is_some());
        if in_pass || refs.len() < 2 {
            return refs.iter().map(|r| r.read()).collect();
        }
        // Positions in `refs`, sorted by place; each value lands at its
        // position in `out`.
        let mut order: Vec<(usize, &ColdRef)> = refs.iter().copied().enumerate().collect();
        order.sort_unstable_by_key(|(_, r)| r.place());
        let mut out: Vec<Option<io::Result<Vec<u8>>>> = Vec::with_capacity(refs.len());
        out.resize_with(refs.len(), || None);
        let mut rest = order.as_slice();
        while let Some(((_, first), _)) = rest.split_first() {
            let start = u64::from(first.offset);
            let mut end = start + first.stored_len();
            let mut n = 1;
            for (_, r) in rest.iter().skip(1) {
                let (at, to) = (u64::from(r.offset), u64::from(r.offset) + r.stored_len());
                if !Arc::ptr_eq(&r.segment, &first.segment)
                    || at > end + SPAN_GAP
                    || to.max(end) - start > SPAN_MAX
                {
                    break;
                }
                end = end.max(to);
                n += 1;
            }
            let (span, after) = rest.split_at(n.min(rest.len()));
            rest = after;
            let whole = (n > 1)
                .then(|| {
                    let mut buf = vec![0; (end - start) as usize];
                    first.segment.file.read_exact_at(&mut buf, start).ok()?;
                    Some(buf)
                })
                .flatten();
            for (i, r) in span {
                let stored = whole.as_ref().and_then(|buf| {
                    let from = (u64::from(r.offset) - start) as usize;
                    buf.get(from..from + r.stored_len() as usize)
                });
                let value = match stored {
                    Some(stored) => r.checked(stored),
                    None => r.read(),
                };
                if let Some(slot) = out.get_mut(*i) {
                    *slot = Some(value);
                }
            }
        }
        out.into_iter()
            .zip(refs)
            .map(|(v, r)| v.unwrap_or_else(|| r.read()))
            .collect()
    }

    /// Bytes this value takes in its segment, with its CRC.
    fn stored_len(&self) -> u64 {
        u64::from(self.len) + CRC_BYTES as u64
    }

    /// Which segment and where in it (a key for [`ColdRef::read_many`]).
    fn place(&self) -> (usize, u32) {
        (Arc::as_ptr(&self.segment) as usize, self.offset)
    }

    /// Overwrites the stored CRC so the next read fails (tests).
    #[cfg(test)]
    pub(crate) fn damage(&self) {
        self.segment
            .file
            .write_all_at(b"XXXX", u64::from(self.offset))
            .unwrap();
    }

    fn what(&self) -> String {
        format!(
            "reading a {}-byte value of key history at offset {} of a scratch segment",
            self.len, self.offset
        )
    }

    /// The value out of `stored` (its CRC, then its bytes), if the CRC
    /// matches.
    fn checked(&self, stored: &[u8]) -> io::Result<Vec<u8>> {
        self.verify(stored)?;
        Ok(stored.get(CRC_BYTES..).unwrap_or_default().to_vec())
    }

    /// An error unless `stored` (the CRC, then the value) checks out.
    fn verify(&self, stored: &[u8]) -> io::Result<()> {
        let (crc, value) = stored.split_at(CRC_BYTES.min(stored.len()));
        if crc != crc32fast::hash(value).to_le_bytes() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: checksum mismatch (the file was damaged)", self.what()),
            ));
        }
        Ok(())
    }

    /// The value through a map of its segment, mapping the segment if this
    /// pass has not yet; `None` (read it with `pread`) if the segment
    /// cannot be mapped or the value lies past what its map covers.
    fn read_mapped(
        &self,
        maps: &mut HashMap<usize, Option<Mapped>>,
    ) -> Option<io::Result<Vec<u8>>> {
        let key = Arc::as_ptr(&self.segment) as usize;
        // A segment that could not be mapped is remembered as such, so
        // its other values go straight to `pread`.
        let mapped = maps
            .entry(key)
            .or_insert_with(|| Mapped::new(&self.segment))
            .as_ref()?;
        let start = usize::try_from(self.offset).ok()?;
        let end = start.checked_add(self.len as usize + CRC_BYTES)?;
        let stored = mapped.map.get(start..end)?;
        Some(self.checked(stored))
    }
}

/// A segment mapped for a [`mapped_reads`] pass. Holding the segment keeps
/// its address, the key of the pass's table, from being reused.
struct Mapped {
    _segment: Arc<Segment>,
    map: memmap2::Mmap,
}

impl Mapped {
    /// A read-only map of the bytes written to `segment` so far; `None` if
    /// there are none or the map fails (the caller reads with `pread`).
    fn new(segment: &Arc<Segment>) -> Option<Mapped> {
        let len = usize::try_from(segment.len.load(Ordering::Acquire)).ok()?;
        if len == 0 {
            return None;
        }
        // SAFETY: the map is read-only and covers only bytes already
        // written. A segment file has no name (nothing else can open it
        // through the file system), is only ever appended to past `len`,
        // and is never truncated, so the mapped bytes stay valid and
        // unchanged while the map lives (it holds its own reference to the
        // file, and this `Mapped` holds the segment). Only a disk read
        // error can fault on it (see the module documentation).
        //
        // Populated (`MAP_POPULATE`): the pass reads values all over the
        // segment, and one call that maps every page costs much less than a
        // page fault per 64 KiB touched (docs/benchmarks.md, "Writes: less
        // work per put on every member"). The pages come from the page
        // cache, as a `pread`'s would.
        #[allow(unsafe_code)]
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(len)
                .populate()
                .map(&segment.file)
        }
        .ok()?;
        Some(Mapped {
            _segment: segment.clone(),
            map,
        })
    }
}

thread_local! {
    /// The segments mapped by the [`mapped_reads`] pass running on this
    /// thread; `None` outside one.
    static MAPPED: RefCell<Option<HashMap<usize, Option<Mapped>>>> = const { RefCell::new(None) };
}

/// Runs `f` with every [`ColdRef::read`] on this thread served from
/// read-only maps of the segments, made as they are first needed and
/// dropped when `f` returns (or unwinds). For passes that read much of the
/// history at once and stop the member if a read fails anyway: writing a
/// snapshot. Nests: an inner call keeps the outer pass's maps.
pub fn mapped_reads<T>(f: impl FnOnce() -> T) -> T {
    struct Pass {
        nested: bool,
    }
    impl Drop for Pass {
        fn drop(&mut self) {
            if !self.nested {
                MAPPED.with(|m| m.borrow_mut().take());
            }
        }
    }
    let nested = MAPPED.with(|m| {
        let mut m = m.borrow_mut();
        let nested = m.is_some();
        m.get_or_insert_with(HashMap::new);
        nested
    });
    let _pass = Pass { nested };
    f()
}

impl fmt::Debug for ColdRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ColdRef({} bytes at {})", self.len, self.offset)
    }
}

/// What the cold store holds, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ColdStats {
    /// Open segment files (written or still referenced).
    pub segments: u64,
    /// Bytes in those files, referenced or not.
    pub bytes: u64,
    /// Values moved off the heap since start.
    pub spilled: u64,
    /// Values kept on the heap because a write failed.
    pub write_errors: u64,
    /// Writes made to the files since start (one per batch of values).
    pub writes: u64,
    /// Values copied out of sparse segments since start, so those could
    /// close ([`ColdStore::sparse_segments`]).
    pub moved: u64,
}

/// A new, empty, unnamed segment in `dir`.
fn new_segment(dir: &Path, stats: &Arc<Counters>) -> io::Result<Arc<Segment>> {
    let file = tempfile::tempfile_in(dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "creating a scratch file for key history in {}: {e}",
                dir.display()
            ),
        )
    })?;
    stats.segments.fetch_add(1, Ordering::Relaxed);
    stats.made.fetch_add(1, Ordering::Relaxed);
    Ok(Arc::new(Segment {
        file,
        stats: stats.clone(),
        len: AtomicU64::new(0),
        values: AtomicU64::new(0),
    }))
}

/// Segments chosen by [`ColdStore::sparse_segments`], whose values still in
/// use are to be copied to the active segment so the files can close.
/// Holds no segment open (a weak reference keeps only the address, so it
/// cannot be reused for a new segment while this is held).
#[derive(Default)]
pub struct Sparse(Vec<Weak<Segment>>);

impl Sparse {
    /// Whether `r` points into one of these segments.
    pub fn holds(&self, r: &ColdRef) -> bool {
        let at = Arc::as_ptr(&r.segment);
        self.0.iter().any(|w| std::ptr::eq(w.as_ptr(), at))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every one of these segments has closed.
    pub fn all_closed(&self) -> bool {
        self.0.iter().all(|w| w.strong_count() == 0)
    }
}

impl fmt::Debug for Sparse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sparse({} segments)", self.0.len())
    }
}

/// The member's scratch files. Cheap to clone (one shared handle).
#[derive(Clone)]
pub struct ColdStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    segment_bytes: u64,
    /// The segment being appended to; its `len` is where the next value
    /// goes.
    active: Mutex<Arc<Segment>>,
    /// Every segment made and not yet closed (dead ones are pruned as
    /// [`ColdStore::sparse_segments`] meets them).
    all: Mutex<Vec<Weak<Segment>>>,
    /// [`ColdStore::newest_min`].
    newest_min: usize,
    stats: Arc<Counters>,
}

impl fmt::Debug for ColdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ColdStore({})", self.inner.dir.display())
    }
}

impl ColdStore {
    /// Scratch segments of [`SEGMENT_BYTES`] in `dir` (which must exist; it
    /// is checked by making the first segment at once, so a directory that
    /// cannot hold one is reported at start).
    pub fn open(dir: &Path) -> io::Result<Self> {
        Self::with_segment_bytes(dir, SEGMENT_BYTES)
    }

    /// [`ColdStore::open`] with segments of `segment_bytes` (tests use
    /// small ones to see segments come and go).
    pub fn with_segment_bytes(dir: &Path, segment_bytes: u64) -> io::Result<Self> {
        Self::with_limits(dir, segment_bytes, NEWEST_MIN_BYTES)
    }

    /// [`ColdStore::with_segment_bytes`], newest values going cold from
    /// `newest_min` bytes (tests use 1: every value moves).
    pub fn with_limits(dir: &Path, segment_bytes: u64, newest_min: usize) -> io::Result<Self> {
        let stats = Arc::default();
        let first = new_segment(dir, &stats)?;
        Ok(ColdStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                segment_bytes: segment_bytes.clamp(1, u64::from(u32::MAX)),
                all: Mutex::new(vec![Arc::downgrade(&first)]),
                active: Mutex::new(first),
                newest_min: newest_min.max(1),
                stats,
            }),
        })
    }

    /// The shortest newest value of a key that is moved here (a key's
    /// older values move whatever their length, except empty ones).
    pub fn newest_min(&self) -> usize {
        self.inner.newest_min
    }

    /// The closed-for-writing segments at most half of whose values are
    /// still referenced, if their bytes are worth the copy: a key's newest
    /// value lives here too, so a value never overwritten would otherwise
    /// keep its whole 64 MiB segment open for good. The store copies the
    /// values still in them to the active segment ([`Sparse::holds`]);
    /// each segment copied has freed at least as many values as are
    /// copied, so the copying costs at most one write per value written.
    /// A reference counts once per copy of the store holding it (a
    /// snapshot being written), which can only make a segment look fuller
    /// than it is.
    pub fn sparse_segments(&self) -> Sparse {
        let Ok(active) = self.inner.active.lock().map(|a| Arc::as_ptr(&a)) else {
            return Sparse::default();
        };
        let Ok(mut all) = self.inner.all.lock() else {
            return Sparse::default();
        };
        all.retain(|w| w.strong_count() > 0);
        Sparse(
            all.iter()
                .filter(|w| {
                    let Some(seg) = w.upgrade() else {
                        return false;
                    };
                    // Not counting the `seg` just made.
                    let refs = Arc::strong_count(&seg).saturating_sub(1) as u64;
                    !std::ptr::eq(Arc::as_ptr(&seg), active)
                        && refs.saturating_mul(2) <= seg.values.load(Ordering::Relaxed)
                })
                .cloned()
                .collect(),
        )
    }

    /// How many segments this store has started (the first included).
    pub fn segments_made(&self) -> u64 {
        self.inner.stats.made.load(Ordering::Relaxed)
    }

    /// Counts `n` values copied out of sparse segments.
    pub fn count_moved(&self, n: usize) {
        self.inner
            .stats
            .moved
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Bytes `value` takes in a segment.
    pub fn stored_len(value: &[u8]) -> u64 {
        value.len() as u64 + CRC_BYTES as u64
    }

    /// The most bytes ([`ColdStore::stored_len`] summed) one
    /// [`ColdStore::put_all`] takes.
    pub fn batch_limit(&self) -> u64 {
        self.inner.segment_bytes
    }

    /// Appends `values` (each non-empty, [`ColdStore::batch_limit`] in
    /// all) to the active segment in one write and returns where each
    /// went; `None` if they were not written (they then stay where they
    /// are): a batch over the limit, or a write error, which is counted.
    pub fn put_all(&self, values: &[&[u8]]) -> Option<Vec<ColdRef>> {
        let total: u64 = values.iter().map(|v| Self::stored_len(v)).sum();
        if values.is_empty() || total > self.batch_limit() || values.iter().any(|v| v.is_empty()) {
            return None;
        }
        match self.try_put_all(values, total) {
            Ok(refs) => {
                self.inner
                    .stats
                    .spilled
                    .fetch_add(refs.len() as u64, Ordering::Relaxed);
                Some(refs)
            }
            Err(_) => {
                self.inner
                    .stats
                    .write_errors
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// [`ColdStore::put_all`] of `values` in consecutive batches, each as
    /// large as fits [`ColdStore::batch_limit`]: as few writes as the limit
    /// allows. Returns where each value went, in order; `None` for one that
    /// stays where it is (empty, alone over the limit, or in a batch whose
    /// write failed).
    pub fn put_batched(&self, values: &[&[u8]]) -> Vec<Option<ColdRef>> {
        let limit = self.batch_limit();
        let mut out: Vec<Option<ColdRef>> = Vec::with_capacity(values.len());
        // The values that fit a batch at all, by index, and the batch so far.
        let mut batch: Vec<usize> = Vec::new();
        let mut bytes = 0u64;
        let write = |batch: &mut Vec<usize>, out: &mut Vec<Option<ColdRef>>| {
            let vs: Vec<&[u8]> = batch
                .iter()
                .filter_map(|&i| values.get(i).copied())
                .collect();
            if let Some(refs) = self.put_all(&vs) {
                for (&i, r) in batch.iter().zip(refs) {
                    if let Some(slot) = out.get_mut(i) {
                        *slot = Some(r);
                    }
                }
            }
            batch.clear();
        };
        for (i, v) in values.iter().enumerate() {
            out.push(None);
            let len = Self::stored_len(v);
            if v.is_empty() || len > limit {
                continue;
            }
            if bytes + len > limit {
                write(&mut batch, &mut out);
                bytes = 0;
            }
            bytes += len;
            batch.push(i);
        }
        if !batch.is_empty() {
            write(&mut batch, &mut out);
        }
        out
    }

    fn try_put_all(&self, values: &[&[u8]], total: u64) -> io::Result<Vec<ColdRef>> {
        let mut active = self
            .inner
            .active
            .lock()
            .map_err(|_| io::Error::other("cold store lock poisoned"))?;
        // Only this writer, under the lock, changes the active segment's
        // length.
        if active.len.load(Ordering::Relaxed) + total > self.inner.segment_bytes {
            let fresh = new_segment(&self.inner.dir, &self.inner.stats)?;
            if let Ok(mut all) = self.inner.all.lock() {
                all.push(Arc::downgrade(&fresh));
            }
            *active = fresh;
        }
        let start = active.len.load(Ordering::Relaxed);
        let mut buf = Vec::with_capacity(total as usize);
        for v in values {
            buf.extend_from_slice(&crc32fast::hash(v).to_le_bytes());
            buf.extend_from_slice(v);
        }
        active.file.write_all_at(&buf, start)?;
        // Release: a map made from this length (`Mapped::new`) covers only
        // bytes whose write came before it.
        active.len.fetch_add(total, Ordering::Release);
        active
            .values
            .fetch_add(values.len() as u64, Ordering::Relaxed);
        self.inner.stats.bytes.fetch_add(total, Ordering::Relaxed);
        self.inner.stats.writes.fetch_add(1, Ordering::Relaxed);
        let mut refs = Vec::with_capacity(values.len());
        let mut at = start;
        for v in values {
            refs.push(ColdRef {
                segment: active.clone(),
                // Below segment_bytes, which is at most u32::MAX.
                offset: u32::try_from(at).map_err(|_| io::Error::other("offset past 4 GiB"))?,
                len: u32::try_from(v.len()).map_err(|_| io::Error::other("value past 4 GiB"))?,
            });
            at += Self::stored_len(v);
        }
        Ok(refs)
    }

    /// What the store holds now.
    pub fn stats(&self) -> ColdStats {
        let c = &self.inner.stats;
        ColdStats {
            segments: c.segments.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            spilled: c.spilled.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            moved: c.moved.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_and_segments_close_with_their_last_reference() {
        let dir = tempfile::tempdir().unwrap();
        // Each value takes 4 more bytes, its CRC.
        let cold = ColdStore::with_segment_bytes(dir.path(), 20).unwrap();
        let a = cold.put_all(&[b"abcd", b"efgh"]).unwrap();
        // Does not fit the 4 bytes left: a new segment.
        let b = cold.put_all(&[b"ijk"]).unwrap();
        assert_eq!(a[0].read().unwrap(), b"abcd");
        assert_eq!(a[1].read().unwrap(), b"efgh");
        assert_eq!(b[0].read().unwrap(), b"ijk");
        assert_eq!(
            cold.stats(),
            ColdStats {
                segments: 2,
                bytes: 23,
                spilled: 3,
                write_errors: 0,
                writes: 2,
                moved: 0,
            }
        );
        // The files have no names: nothing to clean up after a crash.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        drop(a);
        let s = cold.stats();
        assert_eq!((s.segments, s.bytes), (1, 7));
        // Empty values and batches over a segment are refused, not written
        // (and are not write errors).
        assert!(cold.put_all(&[b""]).is_none());
        assert!(cold.put_all(&[b"0123456789abcdefg"]).is_none());
        assert!(cold.put_all(&[]).is_none());
        assert_eq!(cold.stats().write_errors, 0);
        assert_eq!(cold.stats().bytes, 7);
    }

    #[test]
    fn a_damaged_value_is_an_error_not_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let cold = ColdStore::open(dir.path()).unwrap();
        let r = cold.put_all(&[b"abc", b"def"]).unwrap();
        r[0].segment
            .file
            .write_all_at(b"X", u64::from(r[0].offset) + 5)
            .unwrap();
        let e = r[0].read().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        assert_eq!(r[1].read().unwrap(), b"def");
    }

    /// How many segments the pass on this thread has mapped; `None` outside
    /// a pass.
    fn mapped_now() -> Option<usize> {
        MAPPED.with(|m| m.borrow().as_ref().map(HashMap::len))
    }

    #[test]
    fn mapped_reads_return_what_pread_does_and_unmap_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let cold = ColdStore::with_segment_bytes(dir.path(), 20).unwrap();
        let a = cold.put_all(&[b"abcd", b"efgh"]).unwrap();
        let b = cold.put_all(&[b"ijk"]).unwrap();
        assert_eq!(mapped_now(), None);
        let (got, late, damaged) = mapped_reads(|| {
            let got: Vec<Vec<u8>> = a.iter().chain(&b).map(|r| r.read().unwrap()).collect();
            // Both segments are mapped now.
            assert_eq!(mapped_now(), Some(2));
            // A value written after its segment was mapped lies past the
            // map: read with pread instead.
            let late = cold.put_all(&[b"lm"]).unwrap();
            assert!(Arc::ptr_eq(&late[0].segment, &b[0].segment));
            let late = late[0].read().unwrap();
            // A nested pass keeps the outer one's maps.
            mapped_reads(|| assert_eq!(mapped_now(), Some(2)));
            assert_eq!(mapped_now(), Some(2));
            // The CRC is checked on mapped reads too.
            a[1].segment
                .file
                .write_all_at(b"X", u64::from(a[1].offset) + 5)
                .unwrap();
            let damaged = a[1].read().unwrap_err();
            (got, late, damaged)
        });
        assert_eq!(got, [&b"abcd"[..], b"efgh", b"ijk"]);
        assert_eq!(late, b"lm");
        assert_eq!(damaged.kind(), io::ErrorKind::InvalidData);
        assert!(
            damaged.to_string().contains("checksum mismatch"),
            "{damaged}"
        );
        // The maps went with the pass; reads go back to pread.
        assert_eq!(mapped_now(), None);
        assert_eq!(a[0].read().unwrap(), b"abcd");
        // A pass that unwinds drops its maps too.
        let caught = std::panic::catch_unwind(|| {
            mapped_reads(|| {
                a[0].read().unwrap();
                panic!("unwind");
            })
        });
        assert!(caught.is_err());
        assert_eq!(mapped_now(), None);
    }

    #[test]
    fn a_failed_read_says_what_it_was_reading() {
        let dir = tempfile::tempdir().unwrap();
        let cold = ColdStore::open(dir.path()).unwrap();
        let mut r = cold.put_all(&[b"abc"]).unwrap().remove(0);
        r.offset = 1_000;
        let e = r.read().unwrap_err().to_string();
        assert!(
            e.contains("3-byte value of key history at offset 1000"),
            "{e}"
        );
    }

    #[test]
    fn batched_puts_fill_each_write_to_the_limit_and_skip_what_cannot_go() {
        let dir = tempfile::tempdir().unwrap();
        // 16 bytes a batch: two 4-byte values (8 stored bytes each) per write.
        let cold = ColdStore::with_segment_bytes(dir.path(), 16).unwrap();
        let big = [9u8; 20];
        let values: [&[u8]; 6] = [b"aaaa", b"", b"bbbb", &big, b"cccc", b"dddd"];
        let refs = cold.put_batched(&values);
        assert_eq!(refs.len(), values.len());
        for (v, r) in values.iter().zip(&refs) {
            match r {
                Some(r) => assert_eq!(r.read().unwrap(), *v),
                None => assert!(v.is_empty() || v.len() == big.len(), "{v:?} not moved"),
            }
        }
        assert_eq!(refs.iter().filter(|r| r.is_some()).count(), 4);
        assert_eq!(cold.stats().writes, 2, "two full batches");
    }

    #[test]
    fn many_values_read_back_in_order_a_span_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let cold = ColdStore::with_segment_bytes(dir.path(), 64 * 1024).unwrap();
        let values: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let mut refs: Vec<ColdRef> = Vec::new();
        for (i, v) in values.iter().enumerate() {
            refs.extend(cold.put_all(&[v]).unwrap());
            if i == 20 {
                // A gap wider than SPAN_GAP: another span.
                cold.put_all(&[&vec![7u8; SPAN_GAP as usize + 1]]).unwrap();
            }
        }
        // Asked in another order than written, one of them twice.
        let mut ask: Vec<usize> = (0..40).rev().collect();
        ask.push(5);
        let asked: Vec<&ColdRef> = ask.iter().map(|&i| &refs[i]).collect();
        let got = ColdRef::read_many(&asked);
        for (&i, v) in ask.iter().zip(&got) {
            assert_eq!(v.as_ref().unwrap(), &values[i], "value {i}");
        }
        // A damaged value fails alone.
        refs[3].damage();
        let got = ColdRef::read_many(&asked);
        for (&i, v) in ask.iter().zip(&got) {
            match i {
                3 => assert_eq!(v.as_ref().unwrap_err().kind(), io::ErrorKind::InvalidData),
                _ => assert_eq!(v.as_ref().unwrap(), &values[i], "value {i}"),
            }
        }
    }

    #[test]
    fn a_directory_that_cannot_hold_files_is_reported_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let e = ColdStore::open(&dir.path().join("missing"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("scratch file for key history"), "{e}");
    }
}
