//! openraft's `RaftLogStorage` on top of `storage::log_db`: entries and hard
//! state are encoded with postcard and written to redb by one log writer
//! thread, off the async threads.
//!
//! What is stored: each entry (openraft `Entry` of `types::Request`) under
//! its index, and the vote (`Vote`), the committed log id
//! (`Option<LogId>`) and the last purged log id (`LogId`) under the meta keys
//! `vote`, `committed`, `purged`. Each value is the postcard payload of a log
//! record; `log_db` frames it with the format version and checksum and
//! refuses versions it does not know, and upgrades a log written before
//! records carried a version when it is opened (logged here).
//!
//! The write path (one fsync per group of appends): `append` encodes the
//! entries, puts them in the in-memory tail (so they are readable at once,
//! as openraft requires: replication to followers starts before the local
//! fsync finishes, as in etcd) and queues them for the writer thread, then
//! returns. The writer takes everything queued and makes it durable as one
//! batch: one journal record and one `fdatasync`
//! ([`LogDb::journal_append`]; see `warden_core::storage::log_db` and
//! `wal`). Then it reports each append flushed (`IOFlushed`), and only
//! after that the redb file takes the journaled batches without fsync
//! ([`LogDb::file_journaled`]), so the file's commit is not on the path
//! from an append to its acknowledgement. Under load the file takes many
//! groups in one commit, once they reach
//! [`warden_core::storage::log_db::FILE_BATCH_BYTES`] (a redb commit costs
//! about as much as the inserts of a 64-put group); when the writer has
//! nothing queued for [`IDLE_FILE`], it takes what there is. Until then
//! the entries are in the tail as part of the log. Once filed, they stay
//! in the tail as a cache of the latest entries (bounded by
//! [`TAIL_CACHE_BYTES`]):
//! replication and apply read entries just appended, and find them there
//! without a blocking task or a read of the file.
//! Appends arriving during an fsync wait and go together in the next one:
//! group commit.
//!
//! The committed log id is not worth an fsync of its own (openraft: optional;
//! etcd writes a commit-only HardState without syncing too): it rides along
//! in the next append's journal record, or goes in a record of its own after
//! [`IDLE_COMMITTED_FLUSH`] without appends, or when the store closes. After
//! a crash it may be one group behind, so the state machine replays a little
//! less at start and catches up at the first commit of the new term. Vote
//! and truncation wait for everything queued before them and are durable
//! when they return. A purge only queues: the writer records the new purge
//! point, then deletes the entries below it a portion at a time between
//! appends (`Job::Purge`).
//!
//! Must never: acknowledge an append (the `IOFlushed` callback) before the
//! batch is durable, return a vote that was not persisted, persist a
//! committed log id ahead of the entries it names, or write a payload whose
//! encoding differs from the current format version's (the golden test
//! below pins it).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::RaftLogReader;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{Entry, LogId, TypeConfig, Vote};
use warden_core::storage::log_db::{Journaled, LogDb, LogError};

const VOTE: &str = "vote";
const COMMITTED: &str = warden_core::storage::log_db::COMMITTED_KEY;
const PURGED: &str = "purged";

/// Entries the writer deletes in one transaction of a purge. openraft
/// awaits `purge` on its core task, and a snapshot of a large state lets
/// go of tens of thousands of entries at once: deleted in one transaction,
/// they held up the core and every append queued behind them for 50 ms and
/// more. A portion this size takes about a millisecond, and the writer
/// serves queued appends between portions.
const PURGE_PORTION: usize = 1024;

/// How long the writer waits without appends before writing a committed log
/// id that has not ridden along with one (so an idle member restarts with its
/// state machine fully replayed).
pub const IDLE_COMMITTED_FLUSH: Duration = Duration::from_millis(200);

/// How long the writer waits without appends before it commits journaled
/// entries to the file short of a whole batch
/// ([`warden_core::storage::log_db::FILE_BATCH_BYTES`]): under load the
/// next group comes sooner and the file takes many groups in one commit;
/// at rest the tail holds nothing the file does not have.
pub const IDLE_FILE: Duration = Duration::from_millis(5);

#[derive(Clone)]
pub struct LogStore {
    db: Arc<LogDb>,
    shared: Arc<Shared>,
}

/// What the store's clones share: the writer's queue and the in-memory tail.
struct Shared {
    /// `None` once closing (see `Drop`).
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// Entries the file does not have yet, and a cache of the latest it has.
    tail: Arc<Tail>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

type Tail = Mutex<TailMap>;

/// Entries by index: those appended and not yet in the file (readers see
/// them as part of the log; one leaves only once the file has it, so a
/// reader that looks here first and in the file second misses nothing),
/// and, as a cache, the latest ones the file has too, up to
/// [`TAIL_CACHE_BYTES`]. Replication and apply read what was just
/// appended; serving it from here spares each of them a blocking task and a
/// read of the file (`tail_only`).
#[derive(Default)]
struct TailMap {
    entries: BTreeMap<u64, TailEntry>,
    /// Accounted size ([`tail_cost`]) of the entries the file has too.
    cached: usize,
    /// The last purge point: entries at or below it are not part of the
    /// log, though the writer may not have deleted them from the file yet
    /// (`Job::Purge`); reads start after it.
    purged: Option<u64>,
}

struct TailEntry {
    entry: Entry,
    /// Encoded size.
    bytes: usize,
    /// The file has it too, so it may be dropped.
    in_file: bool,
}

/// Budget of the tail's cache of entries the file has: their encoded sizes
/// plus [`TAIL_ENTRY_OVERHEAD`] each, so that many tiny entries are bounded
/// too. An entry's decoded form can take a few times its encoding (a txn of
/// many tiny operations holds one allocation per key and value), so the
/// cache's memory is a small multiple of this in the worst case.
///
/// Apply and replication read entries moments after they are appended, so
/// the cache needs to reach back a fraction of a second: 1 MiB holds about
/// 1 900 puts of 256-byte values (150 ms at 13 000 puts/s). 4 MiB held
/// about 5 MB more of a member's heap after a write load and was no faster
/// (docs/benchmarks.md, "Memory: a smaller log cache and idle collection").
pub const TAIL_CACHE_BYTES: usize = 1 << 20;

/// What an entry is counted for beyond its encoded size (its decoded form
/// and the map's node).
pub const TAIL_ENTRY_OVERHEAD: usize = 256;

fn tail_cost(bytes: usize) -> usize {
    bytes.saturating_add(TAIL_ENTRY_OVERHEAD)
}

impl TailMap {
    /// An appended entry, not in the file yet (replacing any at its index).
    fn insert(&mut self, index: u64, entry: Entry, bytes: usize) {
        let new = TailEntry {
            entry,
            bytes,
            in_file: false,
        };
        if let Some(old) = self.entries.insert(index, new) {
            self.forget(&old);
        }
    }

    fn forget(&mut self, gone: &TailEntry) {
        if gone.in_file {
            self.cached = self.cached.saturating_sub(tail_cost(gone.bytes));
        }
    }

    /// The file has `ids` now (those a later append did not replace): they
    /// become cache, and the oldest cached entries over the budget go.
    fn filed(&mut self, ids: &[LogId]) {
        for id in ids {
            if let Some(t) = self.entries.get_mut(&id.index) {
                if t.entry.log_id == *id && !t.in_file {
                    t.in_file = true;
                    self.cached = self.cached.saturating_add(tail_cost(t.bytes));
                }
            }
        }
        while self.cached > TAIL_CACHE_BYTES {
            match self.entries.first_entry() {
                Some(first) if first.get().in_file => {
                    let gone = first.remove();
                    self.forget(&gone);
                }
                // The oldest is not in the file yet: the cache is behind it
                // and goes once it is.
                _ => break,
            }
        }
    }

    /// Drops the entries after `index` (every entry when `None`).
    fn truncate_after(&mut self, index: Option<u64>) {
        let gone = match index {
            Some(i) => self.entries.split_off(&i.saturating_add(1)),
            None => std::mem::take(&mut self.entries),
        };
        gone.values().for_each(|t| self.forget(t));
    }

    /// Drops the entries up to `upto`, which stop being part of the log.
    fn purge_upto(&mut self, upto: u64) {
        self.purged = self.purged.max(Some(upto));
        let rest = self.entries.split_off(&upto.saturating_add(1));
        let gone = std::mem::replace(&mut self.entries, rest);
        gone.values().for_each(|t| self.forget(t));
    }
}

/// A write other than an append, run by the log writer.
type OtherWrite = Box<dyn FnOnce(&LogDb) -> Result<(), LogError> + Send>;

/// An append waiting for the group's fsync: records, their log ids, and
/// whom to tell.
type Pending = (Vec<(u64, Vec<u8>)>, Vec<LogId>, IOFlushed<TypeConfig>);

/// Work for the log writer, done in the order queued.
enum Job {
    /// Entries to make durable; `callback` is told when they are.
    Append {
        records: Vec<(u64, Vec<u8>)>,
        ids: Vec<LogId>,
        callback: IOFlushed<TypeConfig>,
    },
    /// The committed log id's record, written with the next append.
    Committed(Vec<u8>),
    /// Any other write, run alone once everything before it is durable;
    /// its result is sent back.
    Other(OtherWrite, tokio::sync::oneshot::Sender<io::Result<()>>),
    /// Purge the entries up to `upto` and record `meta` (the purged log
    /// id): the purge point at once, the entries [`PURGE_PORTION`] at a
    /// time between other jobs. Nothing waits for it.
    Purge { upto: u64, meta: Vec<u8> },
}

/// Payload bytes of log entries sent to a follower in one replication
/// message (etcd's `MaxSizePerMsg` is 1 MiB too). One entry larger than
/// this (up to the request limit) still goes alone.
pub const REPLICATION_BATCH_BYTES: usize = 1024 * 1024;

/// The meta record `key` of `db`, decoded.
fn read_meta<T: DeserializeOwned>(db: &LogDb, key: &'static str) -> io::Result<Option<T>> {
    match db.get_meta(key)? {
        None => Ok(None),
        Some(b) => Ok(Some(dec(db, key, &b)?)),
    }
}

fn enc<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| io::Error::other(format!("encode raft record: {e}")))
}

fn dec<T: DeserializeOwned>(db: &LogDb, what: &str, b: &[u8]) -> io::Result<T> {
    postcard::from_bytes(b).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "raft log {}: cannot decode {what}: {e}",
                db.path().display()
            ),
        )
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("log io task failed: {e}")))?
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent at every unlock (plain
    // inserts and removals), so a panic elsewhere does not spoil it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The error to report for `e` (io errors are not `Clone`; every waiter of
/// a failed group gets its own copy).
fn copy_err(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// The log writer: runs the jobs queued on `rx` in order, merging
/// consecutive appends (and committed log ids) into one transaction, and
/// between them the purge of the entries up to `purging` (one left
/// unfinished by the last run, or queued as `Job::Purge`). Returns when
/// every store clone is gone, after finishing the purge and writing a
/// pending committed log id.
fn run_writer(db: Arc<LogDb>, tail: Arc<Tail>, rx: mpsc::Receiver<Job>, purging: Option<u64>) {
    let mut w = Writer {
        db,
        tail,
        committed: None,
        failed: None,
        unfiled: Vec::new(),
    };
    // Entries up to this index are still to be deleted (`Job::Purge`).
    let mut purging = purging;
    loop {
        let first = match rx.try_recv() {
            Ok(job) => job,
            Err(mpsc::TryRecvError::Disconnected) => break,
            // Nothing queued: the file takes what it does not have yet
            // unless appends come within `IDLE_FILE`, then a purge goes
            // on, then the writer waits.
            Err(mpsc::TryRecvError::Empty) if !w.unfiled.is_empty() && w.failed.is_none() => {
                match rx.recv_timeout(IDLE_FILE) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        w.file_journaled(true);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            Err(mpsc::TryRecvError::Empty) if purging.is_some() => {
                purge_portion(&w.db, &mut purging, &mut w.failed);
                continue;
            }
            Err(mpsc::TryRecvError::Empty) if w.committed.is_some() => {
                match rx.recv_timeout(IDLE_COMMITTED_FLUSH) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        w.flush_committed();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            Err(mpsc::TryRecvError::Empty) => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let mut group: Vec<Pending> = Vec::new();
        for job in jobs {
            match job {
                Job::Append {
                    records,
                    ids,
                    callback,
                } => group.push((records, ids, callback)),
                Job::Committed(c) => w.committed = Some(c),
                Job::Other(f, reply) => {
                    w.commit_group(&mut group);
                    let res = match &w.failed {
                        Some(e) => Err(copy_err(e)),
                        None => f(&w.db).map_err(io::Error::from),
                    };
                    if let Err(e) = &res {
                        w.failed.get_or_insert_with(|| copy_err(e));
                    }
                    // Its write checkpointed the journal first, which put
                    // every journaled entry in the file: the tail learns it
                    // here, without a commit of its own.
                    w.file_journaled(true);
                    let _ = reply.send(res);
                }
                Job::Purge { upto, meta } => {
                    // The entries it covers were queued before it: the
                    // purge's first write checkpoints them into the file.
                    w.commit_group(&mut group);
                    if w.failed.is_none() {
                        match w.db.purge_start(upto, PURGE_PORTION, PURGED, &meta) {
                            Ok(more) => purging = more.then_some(upto),
                            Err(e) => {
                                tracing::warn!("purging the raft log: {e}");
                                w.failed = Some(io::Error::from(e));
                            }
                        }
                    }
                    w.file_journaled(true);
                }
            }
        }
        w.commit_group(&mut group);
        // One portion of a purge per round of jobs.
        purge_portion(&w.db, &mut purging, &mut w.failed);
    }
    // Closing: a purge under way is finished (a restart would finish it
    // otherwise; this way the next open has nothing left to do).
    w.file_journaled(true);
    while purging.is_some() {
        purge_portion(&w.db, &mut purging, &mut w.failed);
    }
    w.flush_committed();
}

/// Deletes the next portion of a purge under way (see `Job::Purge`); a
/// failure fails the writer, as a failed append does.
fn purge_portion(db: &LogDb, purging: &mut Option<u64>, failed: &mut Option<io::Error>) {
    let Some(upto) = *purging else {
        return;
    };
    if failed.is_some() {
        *purging = None;
        return;
    }
    match db.purge_more(upto, PURGE_PORTION) {
        Ok(more) => *purging = more.then_some(upto),
        Err(e) => {
            tracing::warn!("purging the raft log: {e}");
            *failed = Some(io::Error::from(e));
            *purging = None;
        }
    }
}

/// The log writer's state between jobs.
struct Writer {
    db: Arc<LogDb>,
    tail: Arc<Tail>,
    /// The committed log id's record, waiting to ride along with an append.
    committed: Option<Vec<u8>>,
    /// After a failed write the log's state is unknown: everything after
    /// fails too (the member stops on a log error).
    failed: Option<io::Error>,
    /// Ids of the entries journaled and not yet in the file; they stay in
    /// the tail as entries of the log (not cache) until the file has them.
    unfiled: Vec<LogId>,
}

impl Writer {
    /// Writes the queued appends (and the committed log id, if any) as one
    /// journal record and reports each append flushed once that is durable.
    /// Then the file takes the journaled entries once there are enough of
    /// them ([`LogDb::file_journaled`]), after the acknowledgement and once
    /// per many groups; readers find them in the tail until it has.
    fn commit_group(&mut self, group: &mut Vec<Pending>) {
        if group.is_empty() {
            return;
        }
        let records: Vec<(u64, Vec<u8>)> = group
            .iter_mut()
            .flat_map(|(records, _, _)| std::mem::take(records))
            .collect();
        let res = match &self.failed {
            Some(e) => Err(copy_err(e)),
            None => self
                .db
                .journal_append(records, self.committed.take())
                .map_err(io::Error::from),
        };
        if let Err(e) = &res {
            self.failed.get_or_insert_with(|| copy_err(e));
        }
        for (_, group_ids, callback) in group.drain(..) {
            callback.io_completed(res.as_ref().map(|_| ()).map_err(copy_err));
            self.unfiled.extend(group_ids);
        }
        match res {
            Ok(Journaled::InFile) => self.filed(),
            Ok(Journaled::InJournal) => self.file_journaled(false),
            Err(_) => {}
        }
    }

    /// Commits the journaled entries to the file, now or once there are
    /// enough (see [`LogDb::file_journaled`]).
    fn file_journaled(&mut self, now: bool) {
        if self.failed.is_some() || self.unfiled.is_empty() {
            return;
        }
        match self.db.file_journaled(now) {
            Ok(true) => self.filed(),
            Ok(false) => {}
            Err(e) => {
                // Durable in the journal all the same (the open replays
                // it), but the file's state is unknown now: the entries
                // stay readable from the tail, and every later write fails.
                tracing::warn!("raft log: committing journaled entries to the file: {e}");
                self.failed = Some(io::Error::from(e));
            }
        }
    }

    /// The file has every journaled entry: they become cache in the tail.
    fn filed(&mut self) {
        lock(&self.tail).filed(&self.unfiled);
        self.unfiled.clear();
    }

    /// Writes a committed log id that found no append to ride along with.
    fn flush_committed(&mut self) {
        if self.failed.is_some() {
            return;
        }
        if let Some(c) = self.committed.take() {
            match self.db.append_journaled(&[], Some(&c)) {
                // It files every journaled entry too.
                Ok(()) => self.filed(),
                Err(e) => {
                    tracing::warn!("saving the committed log id: {e}");
                    self.failed = Some(io::Error::from(e));
                }
            }
        }
    }
}

/// Closes the writer when the last clone goes: it writes what is queued
/// (appends were all acknowledged or failed by then; a committed log id may
/// be pending) and this waits for it, so the file is closed when the store
/// is gone and can be opened again at once.
impl Drop for Shared {
    fn drop(&mut self) {
        lock(&self.jobs).take();
        if let Some(handle) = lock(&self.writer).take() {
            if handle.join().is_err() {
                tracing::warn!("raft log writer panicked");
            }
        }
    }
}

impl LogStore {
    pub fn new(db: Arc<LogDb>) -> Self {
        if let Some(from) = db.upgraded_from() {
            tracing::info!(
                log = %db.path().display(),
                from,
                to = warden_core::storage::format::FORMAT_VERSION,
                "upgraded the raft log's format (builds before this one cannot read it now)"
            );
        }
        if db.replayed() > 0 {
            tracing::info!(
                log = %db.path().display(),
                records = db.replayed(),
                "replayed the raft log's journal"
            );
        }
        // A purge that had not deleted all its entries when the member
        // stopped (a crash, or a close during it) leaves some at or below
        // its point: reads skip them, and the writer deletes them first.
        // (A purge point that cannot be read is reported again by
        // `get_log_state`, which fails the start.)
        let purged = match read_meta::<LogId>(&db, PURGED) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!("reading the raft log's purge point: {e}");
                None
            }
        }
        .map(|id| id.index);
        let unfinished = purged.filter(|p| {
            db.first_index()
                .ok()
                .flatten()
                .is_some_and(|first| first <= *p)
        });
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            jobs: Mutex::new(Some(tx)),
            tail: Arc::new(Mutex::new(TailMap {
                purged,
                ..TailMap::default()
            })),
            writer: Mutex::new(None),
        });
        let (writer_db, writer_tail) = (db.clone(), shared.tail.clone());
        match std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || run_writer(writer_db, writer_tail, rx, unfinished))
        {
            Ok(handle) => *lock(&shared.writer) = Some(handle),
            // Every write then fails with "log writer not running", and the
            // member stops on the first one.
            Err(e) => tracing::error!("cannot start the raft log writer: {e}"),
        }
        Self { db, shared }
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &'static str) -> io::Result<Option<T>> {
        read_meta(&self.db, key)
    }

    fn send(&self, job: Job) -> io::Result<()> {
        lock(&self.shared.jobs)
            .as_ref()
            .and_then(|tx| tx.send(job).ok())
            .ok_or_else(|| {
                io::Error::other(format!(
                    "raft log {}: log writer not running",
                    self.db.path().display()
                ))
            })
    }

    /// The first index that is part of the log: after the purge point
    /// (entries at or below it may still be in the file); `None` if
    /// nothing can be.
    fn first_readable(&self) -> Option<u64> {
        match lock(&self.shared.tail).purged {
            Some(p) => p.checked_add(1),
            None => Some(0),
        }
    }

    /// Runs `f` on the writer after everything queued before it; returns
    /// once it is done (durable).
    async fn write_after_queued(
        &self,
        f: impl FnOnce(&LogDb) -> Result<(), LogError> + Send + 'static,
    ) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Other(Box::new(f), tx))?;
        rx.await.map_err(|_| {
            io::Error::other(format!(
                "raft log {}: log writer stopped",
                self.db.path().display()
            ))
        })?
    }

    /// Every entry in `lo..=hi` from the tail, without a blocking task, when
    /// the tail holds them all: the usual case for replication and apply,
    /// which read what was just appended (an entry leaves the tail only once
    /// the file has it, and a tail entry is the newest at its index, so this
    /// is what [`read_entries`] would return). Stops before the entry that
    /// would take the payload past `max_bytes`, as [`read_entries`] does.
    /// `None` when an index it would return is not in the tail.
    fn tail_only(&self, lo: u64, hi: u64, max_bytes: usize) -> Option<Vec<Entry>> {
        if hi < lo {
            return Some(Vec::new());
        }
        let tail = lock(&self.shared.tail);
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut next = lo;
        for (i, t) in tail.entries.range(lo..=hi) {
            if *i != next {
                return None;
            }
            total = total.saturating_add(t.bytes);
            if total > max_bytes && !out.is_empty() {
                return Some(out);
            }
            out.push(t.entry.clone());
            next = next.saturating_add(1);
        }
        (next > hi).then_some(out)
    }

    /// The tail's entries in `lo..=hi` (`hi` unbounded when `None`).
    fn tail_range(&self, lo: u64, hi: Option<u64>) -> Vec<(u64, Entry, usize)> {
        let tail = lock(&self.shared.tail);
        let r = match hi {
            Some(h) if h < lo => return Vec::new(),
            Some(h) => tail.entries.range(lo..=h),
            None => tail.entries.range(lo..),
        };
        r.map(|(i, t)| (*i, t.entry.clone(), t.bytes)).collect()
    }
}

/// `range` as `lo..=hi`, starting no lower than `first`, `hi` `None` when
/// unbounded; `None` when empty.
fn bounds(range: &impl RangeBounds<u64>, first: u64) -> Option<(u64, Option<u64>)> {
    let lo = match range.start_bound() {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x.checked_add(1)?,
        Bound::Unbounded => 0,
    }
    .max(first);
    let hi = match range.end_bound() {
        Bound::Included(x) => Some(*x),
        Bound::Excluded(x) => Some(x.checked_sub(1)?),
        Bound::Unbounded => None,
    };
    match hi {
        Some(h) if h < lo => None,
        _ => Some((lo, hi)),
    }
}

/// Entries in `lo..=hi`: the file's, then the tail's over them, stopping
/// before the entry that would take the payload past `max_bytes` (the first
/// entry always comes back) or at a gap. The tail is read before the file: an
/// entry leaves the tail only once it is in the file.
fn read_entries(
    store: &LogStore,
    lo: u64,
    hi: Option<u64>,
    max_bytes: usize,
) -> io::Result<Vec<Entry>> {
    let tail = store.tail_range(lo, hi);
    let db = &store.db;
    let raw = match hi {
        Some(h) => db.read_range_limited(lo..=h, max_bytes)?,
        None => db.read_range_limited(lo.., max_bytes)?,
    };
    let mut total = 0usize;
    let mut out: Vec<Entry> = Vec::with_capacity(raw.len() + tail.len());
    let mut tail = tail.into_iter().peekable();
    for (i, b) in &raw {
        total = total.saturating_add(b.len());
        // A tail entry at the same index is the newer one.
        let entry = match tail.next_if(|(t, _, _)| t == i) {
            Some((_, e, _)) => e,
            None => dec(db, &format!("entry {i}"), b)?,
        };
        out.push(entry);
    }
    // Then the tail past the file's entries, while contiguous and within the
    // budget. (Had the file stopped on the budget, the next entry is over it
    // from the tail too.)
    let mut next = raw.last().map_or(lo, |(i, _)| i.saturating_add(1));
    for (i, e, n) in tail {
        if i < next {
            continue;
        }
        if i != next {
            break;
        }
        total = total.saturating_add(n);
        if total > max_bytes && !out.is_empty() {
            break;
        }
        out.push(e);
        next = next.saturating_add(1);
    }
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let Some((lo, hi)) = self.first_readable().and_then(|f| bounds(&range, f)) else {
            return Ok(Vec::new());
        };
        if let Some(entries) = hi.and_then(|h| self.tail_only(lo, h, usize::MAX)) {
            return Ok(entries);
        }
        let store = self.clone();
        blocking(move || read_entries(&store, lo, hi, usize::MAX)).await
    }

    /// What replication sends in one message: at most
    /// [`REPLICATION_BATCH_BYTES`] of entries (and at least one entry).
    /// openraft caps a batch only by count (`max_payload_entries`); without
    /// this, a follower behind on large entries would be sent one message
    /// past the peer message limit, refuse it, and be sent it again forever.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        let Some((lo, hi)) = self.first_readable().and_then(|f| bounds(&(start..end), f)) else {
            return Ok(Vec::new());
        };
        if let Some(entries) = hi.and_then(|h| self.tail_only(lo, h, REPLICATION_BATCH_BYTES)) {
            return Ok(entries);
        }
        let store = self.clone();
        blocking(move || read_entries(&store, lo, hi, REPLICATION_BATCH_BYTES)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        // Stored as a plain `LogId` (see `purge`).
        let purged: Option<LogId> = self.get_meta::<LogId>(PURGED)?;
        let in_tail = lock(&self.shared.tail)
            .entries
            .last_key_value()
            .map(|(_, t)| t.entry.log_id);
        let last = match (in_tail, self.db.last()?) {
            (Some(id), _) => Some(id),
            // What a purge past the last entry (a snapshot installed on a
            // follower far behind) has not deleted yet is not the log: the
            // log ends at the purge point.
            (None, Some((i, _))) if purged.is_some_and(|p| i <= p.index) => purged,
            (None, Some((i, b))) => {
                let e: Entry = dec(&self.db, &format!("entry {i}"), &b)?;
                Some(e.log_id)
            }
            (None, None) => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = enc(vote)?;
        self.write_after_queued(move |db| db.put_meta(VOTE, &bytes))
            .await
    }

    /// Queued, not awaited: written with the next append (see the module
    /// docs).
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.send(Job::Committed(enc(&committed)?))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    /// Readable when this returns, durable when `callback` is told so (by
    /// the writer, after the fsync of the group holding these entries).
    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut records = Vec::new();
        let mut ids = Vec::new();
        let mut decoded = Vec::new();
        for e in entries {
            let bytes = enc(&e)?;
            let index = e.log_id.index;
            ids.push(e.log_id);
            decoded.push((index, (e, bytes.len())));
            records.push((index, bytes));
        }
        if records.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        let mut tail = lock(&self.shared.tail);
        for (index, (e, n)) in decoded {
            tail.insert(index, e, n);
        }
        drop(tail);
        let job = Job::Append {
            records,
            ids,
            callback,
        };
        // On failure the callback went down with the job; openraft stops on
        // the returned error.
        self.send(job)?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let idx = last_log_id.map(|l| l.index);
        lock(&self.shared.tail).truncate_after(idx);
        self.write_after_queued(move |db| db.truncate_after(idx))
            .await
    }

    /// Returns once the purge is queued: the writer records the purge
    /// point and deletes the entries a portion at a time between appends
    /// (`Job::Purge`), so neither openraft's core, which awaits this, nor
    /// the appends behind it wait for a large purge. The entries are gone
    /// from the tail at once, and openraft reads none at or below the point.
    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let meta = enc(&log_id)?;
        let upto = log_id.index;
        lock(&self.shared.tail).purge_upto(upto);
        self.send(Job::Purge { upto, meta })?;
        tracing::info!(upto, "compacted raft log");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{blank_ent, log_id};

    /// Regression: the purged log id was written as `Option<LogId>` and read
    /// back as `LogId`, so a restart after any purge read a garbage index
    /// and refused to start ("Cannot re-apply logs").
    #[tokio::test]
    async fn purged_log_id_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        {
            let db = warden_core::storage::log_db::LogDb::open(&path).expect("open");
            let mut st = LogStore::new(Arc::new(db));
            let entries: Vec<Entry> = (1..=10).map(|i| blank_ent::<TypeConfig>(3, 7, i)).collect();
            let db2 = st.db.clone();
            blocking(move || {
                let batch: Vec<(u64, Vec<u8>)> = entries
                    .iter()
                    .map(|e| Ok((e.log_id.index, enc(e)?)))
                    .collect::<io::Result<_>>()?;
                Ok(db2.append(&batch)?)
            })
            .await
            .expect("append");
            st.purge(log_id::<TypeConfig>(3, 7, 6))
                .await
                .expect("purge");
        }
        let db = warden_core::storage::log_db::LogDb::open(&path).expect("reopen");
        let mut st = LogStore::new(Arc::new(db));
        let state = st.get_log_state().await.expect("log state");
        assert_eq!(
            state.last_purged_log_id,
            Some(log_id::<TypeConfig>(3, 7, 6))
        );
        assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(3, 7, 10)));
        let rest = st.try_get_log_entries(7..11).await.expect("read");
        assert_eq!(rest.len(), 4);
        // Entries a purge left below its point (it was cut short) are not
        // part of the log after a restart either.
        let db2 = st.db.clone();
        blocking(move || Ok(db2.append(&[(5, enc(&blank_ent::<TypeConfig>(3, 7, 5))?)])?))
            .await
            .expect("append below the purge point");
        drop(st);
        let mut st = open_store(&path);
        let all = st.try_get_log_entries(..).await.expect("read");
        assert_eq!(indexes(&all), (7..=10).collect::<Vec<_>>());
    }

    /// A purge larger than a portion returns at once and is finished
    /// between later appends: the entries at or below its point all go,
    /// those after it and the appends queued behind it stay.
    #[tokio::test]
    async fn a_large_purge_is_finished_in_portions_between_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut st = open_store(&dir.path().join("raft.redb"));
        let n = (PURGE_PORTION * 3 + 10) as u64;
        let first: Vec<Entry> = (1..=n).map(|i| blank_ent::<TypeConfig>(1, 1, i)).collect();
        append(&mut st, first)
            .await
            .await
            .expect("flushed")
            .expect("durable");
        let upto = n - 5;
        st.purge(log_id::<TypeConfig>(1, 1, upto))
            .await
            .expect("purge");
        let more = vec![blank_ent::<TypeConfig>(1, 1, n + 1)];
        append(&mut st, more)
            .await
            .await
            .expect("flushed")
            .expect("durable");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let db = st.db.clone();
            let left = blocking(move || Ok(db.read_range(..=upto)?.len()))
                .await
                .expect("read");
            if left == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{left} entries at or below the purge point still in the file"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let rest = st.try_get_log_entries(upto + 1..).await.expect("read");
        assert_eq!(indexes(&rest), (upto + 1..=n + 1).collect::<Vec<_>>());
        let state = st.get_log_state().await.expect("log state");
        assert_eq!(
            state.last_purged_log_id,
            Some(log_id::<TypeConfig>(1, 1, upto))
        );
    }

    /// openraft's core awaits `purge`: it must not wait for the writer,
    /// which may be busy (here, held by a job that blocks until told).
    #[tokio::test]
    async fn purge_returns_while_the_writer_is_busy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut st = open_store(&dir.path().join("raft.redb"));
        let entries: Vec<Entry> = (1..=10).map(|i| blank_ent::<TypeConfig>(1, 1, i)).collect();
        append(&mut st, entries)
            .await
            .await
            .expect("flushed")
            .expect("durable");
        let (release, held) = std::sync::mpsc::channel::<()>();
        let busy = st.clone();
        let blocker = tokio::spawn(async move {
            busy.write_after_queued(move |_| {
                let _ = held.recv();
                Ok(())
            })
            .await
        });
        let purged = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            st.purge(log_id::<TypeConfig>(1, 1, 6)),
        )
        .await;
        release.send(()).expect("release the writer");
        purged
            .expect("purge waited for the busy writer")
            .expect("purge");
        blocker.await.expect("blocker").expect("blocking job");
        let rest = st.try_get_log_entries(..).await.expect("read");
        assert_eq!(indexes(&rest), (7..=10).collect::<Vec<_>>());
    }

    /// A purge cut short (a crash after its first portion), here one past
    /// the last entry, as a follower installing a snapshot makes: the log
    /// reopens as ending at the purge point (openraft refuses a last log
    /// id before the purged one), and the writer deletes the rest.
    #[tokio::test]
    async fn a_purge_cut_short_reopens_consistent_and_is_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        let point = log_id::<TypeConfig>(2, 1, 5000);
        {
            let db = LogDb::open(&path).expect("open");
            let batch: Vec<(u64, Vec<u8>)> = (1..=3000)
                .map(|i| (i, enc(&blank_ent::<TypeConfig>(1, 1, i)).expect("encode")))
                .collect();
            db.append(&batch).expect("append");
            let more = db
                .purge_start(
                    point.index,
                    PURGE_PORTION,
                    PURGED,
                    &enc(&point).expect("encode"),
                )
                .expect("first portion");
            assert!(more);
        }
        let mut st = open_store(&path);
        let state = st.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(point));
        assert_eq!(state.last_log_id, Some(point));
        assert!(st.try_get_log_entries(..).await.expect("read").is_empty());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let db = st.db.clone();
            match blocking(move || Ok(db.first_index()?))
                .await
                .expect("first")
            {
                None => break,
                Some(first) => assert!(
                    std::time::Instant::now() < deadline,
                    "entry {first} below the purge point still in the file"
                ),
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    fn open_store(path: &std::path::Path) -> LogStore {
        LogStore::new(Arc::new(LogDb::open(path).expect("open")))
    }

    /// Appends `entries` through openraft's API; the receiver says when
    /// the writer reports them flushed.
    async fn append(
        st: &mut LogStore,
        entries: Vec<Entry>,
    ) -> openraft::type_config::alias::OneshotReceiverOf<TypeConfig, io::Result<()>> {
        use openraft::type_config::TypeConfigExt as _;
        let (tx, rx) = TypeConfig::oneshot();
        st.append(entries, IOFlushed::signal(tx))
            .await
            .expect("append");
        rx
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    /// Appends go through the writer: readable at once, reported flushed,
    /// and there after a reopen, with the committed log id that was queued
    /// with no append after it (written when the store closes).
    #[tokio::test]
    async fn appended_entries_are_readable_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        {
            let mut st = open_store(&path);
            let mut pending = Vec::new();
            for i in 1..=20u64 {
                pending.push(append(&mut st, vec![blank_ent::<TypeConfig>(1, 1, i)]).await);
                // Readable as soon as append returns, flushed or not.
                let got = st.try_get_log_entries(1..=i).await.expect("read");
                assert_eq!(indexes(&got), (1..=i).collect::<Vec<_>>());
            }
            for rx in pending {
                rx.await.expect("callback").expect("flushed");
            }
            st.save_committed(Some(log_id::<TypeConfig>(1, 1, 15)))
                .await
                .expect("committed");
            st.save_vote(&Vote::new(1, 1)).await.expect("vote");
            let state = st.get_log_state().await.expect("state");
            assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(1, 1, 20)));
        }
        let mut st = open_store(&path);
        let got = st.try_get_log_entries(..).await.expect("read");
        assert_eq!(indexes(&got), (1..=20).collect::<Vec<_>>());
        assert_eq!(
            st.read_committed().await.expect("committed"),
            Some(log_id::<TypeConfig>(1, 1, 15))
        );
        assert_eq!(st.read_vote().await.expect("vote"), Some(Vote::new(1, 1)));
    }

    /// A committed log id with no append after it is written after
    /// `IDLE_COMMITTED_FLUSH`, while the store stays open.
    #[tokio::test]
    async fn an_idle_committed_log_id_is_written_without_an_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        let mut st = open_store(&path);
        let rx = append(&mut st, vec![blank_ent::<TypeConfig>(1, 1, 1)]).await;
        rx.await.expect("callback").expect("flushed");
        st.save_committed(Some(log_id::<TypeConfig>(1, 1, 1)))
            .await
            .expect("committed");
        let mut waited = Duration::ZERO;
        while st.read_committed().await.expect("read").is_none() {
            assert!(waited < Duration::from_secs(10), "committed never written");
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
        assert_eq!(
            st.read_committed().await.expect("read"),
            Some(log_id::<TypeConfig>(1, 1, 1))
        );
    }

    /// What the tail's cache accounts for, recomputed from its entries.
    fn recount(st: &LogStore) -> (usize, usize) {
        let tail = lock(&st.shared.tail);
        let cached = tail
            .entries
            .values()
            .filter(|t| t.in_file)
            .map(|t| tail_cost(t.bytes))
            .sum();
        (tail.cached, cached)
    }

    /// Entries stay in the tail after the file has them, as a cache of the
    /// latest ones bounded by `TAIL_CACHE_BYTES`; reads are the same
    /// whether they come from the cache, the file, or both, and truncation
    /// and purge keep the cache's accounting exact.
    #[tokio::test]
    async fn the_tail_caches_the_latest_filed_entries_within_its_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut st = open_store(&dir.path().join("raft.redb"));
        let per_entry = tail_cost(enc(&blank_ent::<TypeConfig>(1, 1, 1)).expect("enc").len());
        // Three times what the cache holds.
        let total = (3 * TAIL_CACHE_BYTES / per_entry) as u64;
        let mut next = 1u64;
        while next <= total {
            let batch: Vec<Entry> = (next..(next + 1000).min(total + 1))
                .map(|i| blank_ent::<TypeConfig>(1, 1, i))
                .collect();
            next += batch.len() as u64;
            append(&mut st, batch)
                .await
                .await
                .expect("callback")
                .expect("flushed");
        }
        // A vote runs after everything queued before it, the file's commit
        // of the last batch included.
        st.save_vote(&Vote::new(1, 1)).await.expect("vote");
        let (cached, recounted) = recount(&st);
        assert_eq!(cached, recounted);
        assert!(cached <= TAIL_CACHE_BYTES, "{cached} over the budget");
        let in_tail: Vec<u64> = lock(&st.shared.tail).entries.keys().copied().collect();
        assert!(
            in_tail.len() as u64 > total / 4 && (in_tail.len() as u64) < total,
            "{} of {total} entries cached",
            in_tail.len()
        );
        assert_eq!(
            in_tail.last(),
            Some(&total),
            "the latest entries are cached"
        );
        // Served from the cache alone, from the file alone, and across both.
        let first_cached = in_tail[0];
        for (lo, hi) in [
            (first_cached, total),
            (1, 100),
            (first_cached - 50, first_cached + 50),
        ] {
            let got = st.try_get_log_entries(lo..=hi).await.expect("read");
            assert_eq!(indexes(&got), (lo..=hi).collect::<Vec<_>>());
        }
        // Truncation and purge drop cached entries and their accounting.
        st.truncate_after(Some(log_id::<TypeConfig>(1, 1, total - 10)))
            .await
            .expect("truncate");
        st.purge(log_id::<TypeConfig>(1, 1, first_cached + 10))
            .await
            .expect("purge");
        let (cached, recounted) = recount(&st);
        assert_eq!(cached, recounted);
        let got = st.try_get_log_entries(1..).await.expect("read");
        assert_eq!(
            indexes(&got),
            ((first_cached + 11)..=(total - 10)).collect::<Vec<_>>()
        );
        // An append after the truncation is not cache until the file has
        // it, and the accounting holds meanwhile.
        let again = blank_ent::<TypeConfig>(2, 1, total - 9);
        let rx = append(&mut st, vec![again]).await;
        let (cached, recounted) = recount(&st);
        assert_eq!(cached, recounted);
        rx.await.expect("callback").expect("flushed");
        let got = st.try_get_log_entries((total - 9)..).await.expect("read");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].log_id, log_id::<TypeConfig>(2, 1, total - 9));
    }

    /// Entries the journal has and the file does not yet wait in the tail
    /// as entries of the log, not cache; once the writer has been idle for
    /// `IDLE_FILE` the file has them and they become cache.
    #[tokio::test]
    async fn journaled_entries_reach_the_file_once_the_writer_is_idle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut st = open_store(&dir.path().join("raft.redb"));
        for i in 1..=3u64 {
            append(&mut st, vec![blank_ent::<TypeConfig>(1, 1, i)])
                .await
                .await
                .expect("callback")
                .expect("flushed");
        }
        let got = st.try_get_log_entries(1..).await.expect("read");
        assert_eq!(indexes(&got), [1, 2, 3]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let db = st.db.clone();
            let in_file = blocking(move || Ok(db.read_range(..)?.len()))
                .await
                .expect("read the file");
            let all_cached = lock(&st.shared.tail).entries.values().all(|t| t.in_file);
            if in_file == 3 && all_cached {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{in_file} entries in the file, all cached: {all_cached}"
            );
            tokio::time::sleep(IDLE_FILE).await;
        }
        let (cached, recounted) = recount(&st);
        assert_eq!(cached, recounted);
    }

    /// Reads merge the file with the unflushed tail: a tail entry wins over
    /// the file's at the same index, a gap ends the read, and the byte
    /// budget of replication reads counts tail entries too.
    #[tokio::test]
    async fn reads_merge_the_file_and_the_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = LogDb::open(&dir.path().join("raft.redb")).expect("open");
        let file: Vec<(u64, Vec<u8>)> = (1..=5)
            .map(|i| (i, enc(&blank_ent::<TypeConfig>(1, 1, i)).expect("enc")))
            .collect();
        db.append(&file).expect("append");
        let mut st = LogStore::new(Arc::new(db));
        {
            // Term 2 at 4..=8: as if appended and not yet flushed.
            let mut tail = lock(&st.shared.tail);
            for i in 4..=8 {
                let e = blank_ent::<TypeConfig>(2, 1, i);
                let n = enc(&e).expect("enc").len();
                tail.insert(i, e, n);
            }
        }
        let got = st.try_get_log_entries(2..9).await.expect("read");
        let terms: Vec<(u64, u64)> = got
            .iter()
            .map(|e| (e.log_id.index, e.log_id.leader_id.term))
            .collect();
        assert_eq!(
            terms,
            [(2, 1), (3, 1), (4, 2), (5, 2), (6, 2), (7, 2), (8, 2)]
        );
        assert_eq!(
            indexes(&st.try_get_log_entries(6..=7).await.expect("read")),
            [6, 7]
        );
        assert!(st.try_get_log_entries(9..).await.expect("read").is_empty());
        assert_eq!(
            st.get_log_state().await.expect("state").last_log_id,
            Some(log_id::<TypeConfig>(2, 1, 8))
        );
        // A gap in the tail ends a read.
        lock(&st.shared.tail).entries.remove(&7);
        assert_eq!(
            indexes(&st.try_get_log_entries(5..).await.expect("read")),
            [5, 6]
        );
        // Truncation drops tail entries too.
        st.truncate_after(Some(log_id::<TypeConfig>(2, 1, 5)))
            .await
            .expect("truncate");
        assert_eq!(
            indexes(&st.try_get_log_entries(1..).await.expect("read")),
            [1, 2, 3, 4, 5]
        );
    }

    /// The child of `acknowledged_appends_survive_sigkill`: appends entries
    /// forever, several in flight at once (so the writer groups them), and
    /// prints each index once it is reported flushed.
    #[tokio::test]
    async fn sigkill_child() {
        let Some(path) = std::env::var_os("WARDEN_LOG_SIGKILL_CHILD") else {
            return; // Only runs as the child.
        };
        use std::io::Write as _;
        let mut st = open_store(std::path::Path::new(&path));
        let mut inflight = std::collections::VecDeque::new();
        let name = "n".repeat(300);
        for i in 1u64.. {
            let mut e = blank_ent::<TypeConfig>(1, 1, i);
            e.payload = openraft::EntryPayload::Normal(crate::node::types::Request::Publish {
                node_id: 1,
                name: name.clone(),
                client_addr: "127.0.0.1:1".into(),
            });
            inflight.push_back((i, append(&mut st, vec![e]).await));
            if inflight.len() > 8 {
                if let Some((i, rx)) = inflight.pop_front() {
                    rx.await.expect("callback").expect("flushed");
                    st.save_committed(Some(log_id::<TypeConfig>(1, 1, i)))
                        .await
                        .expect("committed");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "acked {i}").expect("stdout");
                    out.flush().expect("stdout");
                }
            }
        }
    }

    /// Crash safety of the writer: a process appending through the store
    /// is killed with SIGKILL mid-stream; every index it was told is
    /// durable is in the file after a reopen, the log has no gap, and the
    /// committed log id read back names an entry that is there.
    #[tokio::test]
    async fn acknowledged_appends_survive_sigkill() {
        use std::io::BufRead as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "node::log_store::tests::sigkill_child",
                "--exact",
                "--nocapture",
            ])
            .env("WARDEN_LOG_SIGKILL_CHILD", &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let mut acked = 0u64;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.expect("line");
            if let Some(i) = line.strip_prefix("acked ") {
                acked = i.parse().expect("index");
                if acked >= 300 {
                    break;
                }
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        assert!(acked >= 300, "the child stopped early at {acked}");
        let mut st = open_store(&path);
        let got = st.try_get_log_entries(..).await.expect("read");
        let idx = indexes(&got);
        assert!(
            idx.len() as u64 >= acked,
            "acked {acked}, found {}",
            idx.len()
        );
        assert_eq!(idx, (1..=idx.len() as u64).collect::<Vec<_>>(), "a gap");
        let committed = st.read_committed().await.expect("committed");
        assert!(
            committed.is_some_and(|c| c.index <= idx.len() as u64),
            "{committed:?} past the log's end {}",
            idx.len()
        );
    }

    /// Golden bytes: the records this build writes for fixed values
    /// (`warden-core/tests/fixtures/v1-raft-records.txt`, which `log_db`'s
    /// tests also show a pre-change log upgrades to, byte for byte) decode
    /// to those values, and encoding the values gives the same payloads.
    #[tokio::test]
    async fn golden_records_decode_and_reencode_exactly() {
        use crate::node::state_machine::samples;
        use warden_core::storage::format;
        let txt = include_str!("../../../warden-core/tests/fixtures/v1-raft-records.txt");
        let mut payloads = std::collections::BTreeMap::new();
        for line in txt.lines() {
            let mut it = line.split(' ');
            let (_table, key, hex) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
            let raw: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let (version, payload) = format::decode_record(&raw).unwrap();
            assert_eq!(version, 1);
            payloads.insert(key.to_string(), payload.to_vec());
        }
        let e = samples::entry();
        assert_eq!(payloads["5"], enc(&e).unwrap(), "entry encoding changed");
        assert_eq!(payloads[VOTE], enc(&samples::vote()).unwrap());
        assert_eq!(payloads[COMMITTED], enc(&samples::committed()).unwrap());
        assert_eq!(payloads[PURGED], enc(&samples::purged()).unwrap());

        // Read back through the store, as a restarting member does.
        let dir = tempfile::tempdir().expect("tempdir");
        let db = LogDb::open(&dir.path().join("raft.redb")).expect("open");
        db.append(&[(5, payloads["5"].clone())]).unwrap();
        for key in [VOTE, COMMITTED, PURGED] {
            db.put_meta(key, &payloads[key]).unwrap();
        }
        let mut st = LogStore::new(Arc::new(db));
        assert_eq!(st.read_vote().await.unwrap(), Some(samples::vote()));
        assert_eq!(st.read_committed().await.unwrap(), samples::committed());
        let state = st.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(samples::purged()));
        assert_eq!(state.last_log_id, Some(e.log_id));
        let got = st.try_get_log_entries(5..6).await.unwrap();
        assert_eq!(format!("{got:?}"), format!("{:?}", vec![e]));
    }
}
