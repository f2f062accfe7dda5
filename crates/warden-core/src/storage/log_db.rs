//! The durable Raft log and hard state, kept in one redb file (`raft.redb`).
//!
//! Owns: entry records keyed by log index, a small metadata table (vote,
//! committed log id, last purged log id), and the file's layout version (the
//! `format` table). Every value in `entries` and `meta` is a log record
//! framed by [`super::format::encode_record`] (`[version u8][crc32][payload]`),
//! so a damaged record is detected when read and reported with the file and
//! index instead of being handed to Raft, and a record of an unknown version
//! is refused by name.
//!
//! Layout versions (the `format` table's `version` key):
//! - absent, with data: format 0, written before records carried a version.
//!   Values are `[crc32][payload]` with version-1 payloads. [`LogDb::open`]
//!   upgrades such a file in place, in one redb transaction: every record's
//!   checksum is verified, the record is re-framed at version 1, and the
//!   version is stamped; a crash in between leaves the file untouched. A
//!   damaged record stops the upgrade (and the start) with its index.
//!   [`LogDb::upgraded_from`] tells the caller this happened so it can log it.
//!   Builds from before the upgrade refuse the upgraded file (they read the
//!   version byte as part of a checksum, which then mismatches): downgrading
//!   needs a backup.
//! - absent, empty file: a new log; stamped with the current version.
//! - 1: records as above.
//! - 2: records as above, and the file may have a journal (`raft.wal`, see
//!   [`super::wal`]) holding appends the redb file does not have durably
//!   yet. Once the journal is made, the `format` table's `journal` key
//!   records it, and an open that then finds no journal (or one shorter
//!   than its header) fails rather than make a new one, which would lose
//!   the appends it held without a word. A format-1 file is stamped 2 when this build opens it; builds that
//!   read only formats 0 and 1 then refuse it by name rather than start
//!   without the journal's entries.
//! - anything else: refused at open with the version found and the versions
//!   this build reads.
//!
//! Durability: [`LogDb::append_journaled`] (the Raft append path) makes
//! the batch durable with one record appended to the journal and one
//! `fdatasync` of the journal ([`LogDb::journal_append`]): a small
//! sequential write, where a durable redb commit rewrites and flushes about
//! seven scattered pages. The journal holds the batch for the file, which
//! takes the held batches in one redb commit without an fsync
//! ([`LogDb::file_journaled`]: at once, or once they make a whole batch of
//! [`FILE_BATCH_BYTES`]; readers of the file see them from then on). A
//! caller may acknowledge the append between the two halves. Every other
//! write ([`LogDb::append`], truncation, the start of a purge, metadata) is
//! a redb transaction committed with immediate durability (fsync) before it
//! returns, preceded by a checkpoint: a durable redb commit of everything
//! journaled (the held batches included), then the journal emptied; a batch
//! that would not fit in the journal checkpoints too. The rest of a purge
//! ([`LogDb::purge_more`]) commits without an fsync until its last
//! portion: losing it only leaves entries below the recorded purge point. [`LogDb::open`] replays the journal into the
//! file (one durable commit) and empties it, and closing checkpoints. redb's
//! commit protocol is atomic (a commit torn by a crash is rolled back on
//! the next open) and the journal drops a torn record, so after a crash the
//! log is the file's last durable commit plus every whole journal record,
//! which includes every acknowledged append. A journal damaged other than by
//! a crash (see [`super::wal`]) fails the open, naming the file and offset.
//! A checkpoint's journal reset is on disk (`fsync`) before the write that
//! needed it (a truncation, say) is made, so a crash never replays records
//! from before a truncation or purge on top of it.
//!
//! Must never: interpret payloads (bytes in, bytes out), acknowledge a write
//! before its transaction has committed, or write a record in any framing
//! but [`super::format::encode_record`]'s.

use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use std::sync::{Mutex, MutexGuard, PoisonError};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use super::format::{self, FormatError};
use super::observe::CommitObserver;
use super::wal::{self, Wal, WalError};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The file's layout version, under [`FORMAT_KEY`]; absent in format 0.
const FORMAT: TableDefinition<&str, u32> = TableDefinition::new("format");
const FORMAT_KEY: &str = "version";
/// The `format` table's key recording that the journal was made: a file
/// with it and no journal (or one cut shorter than its header) has lost
/// acknowledged appends, and the open refuses it ([`WalError::Missing`]).
/// Files from builds that did not write it get it at their next open, once
/// their journal is there.
const JOURNAL_KEY: &str = "journal";
/// The meta key [`LogDb::append_journaled`] writes the committed log id
/// under.
pub const COMMITTED_KEY: &str = "committed";

/// Where [`LogDb::journal_append`] made a batch durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journaled {
    /// In the journal: the file still needs [`LogDb::file_journaled`].
    InJournal,
    /// In the file (the journal was full and has been checkpointed).
    InFile,
}
/// The layout version this build stamps: records at
/// [`format::FORMAT_VERSION`], with a journal (see the module docs).
pub const LAYOUT_VERSION: u32 = 2;

/// Errors of the log store; every one names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("raft log {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("raft log {path}: record at index {index}: {source}")]
    Corrupt {
        path: PathBuf,
        index: u64,
        #[source]
        source: FormatError,
    },
    #[error("raft log {path}: metadata {key:?}: {source}")]
    CorruptMeta {
        path: PathBuf,
        key: String,
        #[source]
        source: FormatError,
    },
    #[error(
        "raft log {path}: written in log format {found}, this build reads formats 0, {} and \
         {LAYOUT_VERSION}; start this member with the newer warden that wrote it, or restore it \
         from a backup",
        format::FORMAT_VERSION
    )]
    UnsupportedFormat { path: PathBuf, found: u32 },
    #[error(
        "raft log {path}: missing or empty, but its journal {} is there: the log file was lost \
         or replaced, and a new one would hold only the journal's last appends. Restore this \
         member's data dir from a backup, or empty it and add the member again with --join",
        wal.display()
    )]
    LogLost { path: PathBuf, wal: PathBuf },
    #[error(transparent)]
    Wal(#[from] WalError),
}

impl From<LogError> for std::io::Error {
    fn from(e: LogError) -> Self {
        std::io::Error::other(e)
    }
}

/// Handle to the log file. Cheap to share behind an `Arc`; redb serialises
/// writers internally.
pub struct LogDb {
    /// Always `Some` until dropped (see the `Drop` impl).
    db: Option<Database>,
    path: PathBuf,
    upgraded_from: Option<u32>,
    /// Told how long each durable commit took (the fsync: the journal's
    /// `fdatasync`, or the file's commit when there is no journal).
    observer: Option<Arc<dyn CommitObserver>>,
    /// Journal records [`LogDb::open`] replayed into the file.
    replayed: usize,
    /// The journal and the appends it holds that the file does not have
    /// yet; its lock also orders every write of the file (a checkpoint must
    /// not interleave with an append).
    wal: Option<Mutex<Journal>>,
}

/// The journal, and the batches appended to it that are not in the file
/// yet (see [`LogDb::file_journaled`]). Every unfiled batch is in the
/// journal, so a crash loses none of them: the open replays it.
struct Journal {
    wal: Wal,
    /// Entries in append order (a later one at the same index replaces an
    /// earlier one, as in the file).
    unfiled: Vec<(u64, Vec<u8>)>,
    /// The newest committed log id's record among the unfiled batches.
    unfiled_committed: Option<Vec<u8>>,
    /// Payload bytes of `unfiled`.
    unfiled_bytes: usize,
}

impl Journal {
    fn new(wal: Wal) -> Self {
        Self {
            wal,
            unfiled: Vec::new(),
            unfiled_committed: None,
            unfiled_bytes: 0,
        }
    }

    /// Inserts the unfiled batches in `w`.
    fn put_unfiled(&self, w: &redb::WriteTransaction) -> Result<(), redb::Error> {
        LogDb::put(w, &self.unfiled, self.unfiled_committed.as_deref())
    }

    /// The file has every unfiled batch now.
    fn filed(&mut self) {
        self.unfiled.clear();
        self.unfiled_committed = None;
        self.unfiled_bytes = 0;
    }
}

/// How much a journaled append waits for before it is committed to the
/// file ([`LogDb::file_journaled`] without `now`): payload bytes, or
/// entries, whichever comes first. Each redb commit costs about as much
/// again as the inserts of a group of 64 puts (it copies the B-tree's
/// rightmost path and writes the allocator's state): one commit per many
/// groups spares most of that (docs/benchmarks.md, "Writes: less work per
/// put on every member"). The Raft log store keeps unfiled entries in memory, so
/// this bounds that too.
pub const FILE_BATCH_BYTES: usize = 256 * 1024;
/// See [`FILE_BATCH_BYTES`].
pub const FILE_BATCH_ENTRIES: usize = 2048;

/// Journal bytes past which filing the held batches
/// ([`LogDb::file_journaled`]) is a checkpoint: one durable commit and the
/// journal emptied, instead of a commit without fsync. An open after a
/// crash re-inserts every journaled record into the file in one durable
/// commit (it cannot know which of the file's commits without fsync
/// survived), and that was a quarter of a restart's CPU with a full 32 MiB
/// journal (docs/benchmarks.md, "Snapshots in proportion to the history"):
/// this bounds it to about 8 MiB (plus what is filed with the batch that
/// passes it), for one more durable commit of the file and reset of the
/// journal (an `fsync` each), on the writer between groups, per 8 MiB of
/// log written.
pub const CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;

/// The payload of a record; every version this build reads has the same
/// payload encoding (version 1), so the version is checked and dropped here.
fn unframe(raw: &[u8]) -> Result<&[u8], FormatError> {
    format::decode_record(raw).map(|(_version, payload)| payload)
}

/// The error for a panic redb raised on a damaged file. redb panics on some
/// damaged files instead of returning `Corrupted` (an index out of bounds
/// reading a page, a failed assertion on its allocator state; found by the
/// fuzz tests, docs/testing.md): opening and reading are run under
/// `catch_unwind` so that a damaged log is refused with an error naming the
/// file, like any other damage, rather than crashing the member. Only
/// reads are guarded: the server stops on any log error, so a handle is
/// not written to after one.
fn damaged(panic: &(dyn std::any::Any + Send)) -> redb::Error {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown cause");
    redb::Error::Corrupted(format!(
        "damaged file: the database failed reading it ({what})"
    ))
}

/// Closing a database writes its allocator state, which redb can panic
/// on when the file is damaged (see `damaged`): the close is guarded so
/// a damaged log does not turn a clean shutdown into a crash.
impl Drop for LogDb {
    fn drop(&mut self) {
        // Leave the journal empty (the next open has nothing to replay). If
        // this fails, the journal is replayed then.
        let _ = self.checkpoint();
        if let Some(db) = self.db.take() {
            // A failed close leaves the file as damaged as it was; the
            // panic hook has printed why.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(db)));
        }
    }
}

/// What [`LogDb::open`] found about the file's layout.
enum Layout {
    Current,
    Format0,
}

/// redb's page cache for the log file. redb's default is 1 GiB, and every
/// page a commit writes stays cached until that fills: with 100 000 keys
/// written three times over, the member's RSS was mostly log pages that
/// were already purged (docs/benchmarks.md, "Memory"). New entries are read
/// from the in-memory tail; the file is read by replication to a follower
/// that fell behind, which this much cache serves (pages beyond it come
/// from the kernel's page cache). 16 MiB held about 10 MB of a member's
/// heap after a write load; 4 MiB saved 11 MB of RSS and cost nothing
/// measurable on puts (docs/benchmarks.md, "Memory").
pub const LOG_CACHE_BYTES: usize = 4 * 1024 * 1024;

impl LogDb {
    /// Opens (or creates) the log file at `path`, upgrading a format-0 file
    /// in place (see the module docs) and refusing an unknown format.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        // The journal is made after the file: a journal without its file
        // (or with an empty one) means the file was lost.
        let wal_path = Self::wal_path(path);
        let fresh = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
        if fresh && wal_path.exists() {
            return Err(LogError::LogLost {
                path: path.to_path_buf(),
                wal: wal_path,
            });
        }
        let db_err = |source: redb::Error| LogError::Db {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        // redb panics on some damaged files (see `damaged`).
        let db = std::panic::catch_unwind(|| {
            Database::builder()
                .set_cache_size(LOG_CACHE_BYTES)
                .create(path)
        })
        .map_err(|panic| db_err(damaged(&*panic)))?
        .map_err(|e| db_err(e.into()))?;
        let mut this = Self {
            db: Some(db),
            path: path.to_path_buf(),
            upgraded_from: None,
            observer: None,
            replayed: 0,
            wal: None,
        };
        // The first transaction reads the tables: guarded too.
        this.upgraded_from = this.guarded(|| this.prepare())?;
        let has_journal = this.guarded(|| this.journal_recorded())?;
        let (mut journal, records) = if has_journal {
            Wal::open_existing(&wal_path)?
        } else {
            Wal::open(&wal_path)?
        };
        if !records.is_empty() {
            let n = records.len();
            this.guarded(|| {
                this.commit(Durability::Immediate, |w| {
                    for r in &records {
                        Self::put(w, &r.entries, r.committed.as_deref())?;
                    }
                    Ok(())
                })
            })?;
            journal.reset()?;
            this.replayed = n;
        }
        if !has_journal {
            // The journal exists now (made and synced by `Wal::open`): from
            // here on its loss is an error, not a new journal.
            this.guarded(|| {
                this.commit(Durability::Immediate, |w| {
                    w.open_table(FORMAT)?.insert(JOURNAL_KEY, 1)?;
                    Ok(())
                })
            })?;
        }
        this.wal = Some(Mutex::new(Journal::new(journal)));
        Ok(this)
    }

    /// Whether the file records that it has a journal ([`JOURNAL_KEY`]).
    fn journal_recorded(&self) -> Result<bool, LogError> {
        let r = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(FORMAT).map_err(|e| self.err(e))?;
        Ok(t.get(JOURNAL_KEY).map_err(|e| self.err(e))?.is_some())
    }

    /// The journal of the log file at `path`: `raft.wal` for `raft.redb`.
    pub fn wal_path(path: &Path) -> PathBuf {
        path.with_extension("wal")
    }

    /// Creates the tables (so readers never see "table missing"), checks
    /// the layout and upgrades a format-0 file; returns the format it was
    /// upgraded from, if it was.
    fn prepare(&self) -> Result<Option<u32>, LogError> {
        let txn = self.db()?.begin_write().map_err(|e| self.err(e))?;
        let upgraded_from = match self.layout(&txn)? {
            Layout::Format0 => {
                self.upgrade_format_0(&txn)?;
                Some(0)
            }
            Layout::Current => None,
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(upgraded_from)
    }

    /// Reads (and for a new file, stamps) the layout version.
    fn layout(&self, txn: &redb::WriteTransaction) -> Result<Layout, LogError> {
        let entries = txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
        let meta = txn.open_table(META).map_err(|e| self.err(e))?;
        let mut fmt = txn.open_table(FORMAT).map_err(|e| self.err(e))?;
        let stamped = fmt
            .get(FORMAT_KEY)
            .map_err(|e| self.err(e))?
            .map(|v| v.value());
        match stamped {
            Some(LAYOUT_VERSION) => Ok(Layout::Current),
            Some(v) if v == format::FORMAT_VERSION => {
                fmt.insert(FORMAT_KEY, LAYOUT_VERSION)
                    .map_err(|e| self.err(e))?;
                Ok(Layout::Current)
            }
            Some(found) => Err(LogError::UnsupportedFormat {
                path: self.path.clone(),
                found,
            }),
            None => {
                let empty = entries.is_empty().map_err(|e| self.err(e))?
                    && meta.is_empty().map_err(|e| self.err(e))?;
                fmt.insert(FORMAT_KEY, LAYOUT_VERSION)
                    .map_err(|e| self.err(e))?;
                Ok(if empty {
                    Layout::Current
                } else {
                    Layout::Format0
                })
            }
        }
    }

    /// Re-frames every record of a format-0 file at the current version,
    /// verifying each old checksum first. Runs inside `open`'s transaction.
    fn upgrade_format_0(&self, txn: &redb::WriteTransaction) -> Result<(), LogError> {
        let mut entries = txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
        let mut old = Vec::new();
        for item in entries.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let index = k.value();
            let payload =
                format::decode_record_v0(v.value()).map_err(|source| LogError::Corrupt {
                    path: self.path.clone(),
                    index,
                    source,
                })?;
            old.push((index, format::encode_record(payload)));
        }
        for (index, record) in &old {
            entries
                .insert(*index, record.as_slice())
                .map_err(|e| self.err(e))?;
        }
        let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
        let mut old = Vec::new();
        for item in meta.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let key = k.value().to_string();
            let payload =
                format::decode_record_v0(v.value()).map_err(|source| LogError::CorruptMeta {
                    path: self.path.clone(),
                    key: key.clone(),
                    source,
                })?;
            old.push((key, format::encode_record(payload)));
        }
        for (key, record) in &old {
            meta.insert(key.as_str(), record.as_slice())
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Reports the duration of every later commit to `observer` (the
    /// server's fsync histogram). Commits made by `open` are not reported.
    pub fn observe_commits(&mut self, observer: Arc<dyn CommitObserver>) {
        self.observer = Some(observer);
    }

    /// `Some(0)` if [`LogDb::open`] upgraded a format-0 file.
    pub fn upgraded_from(&self) -> Option<u32> {
        self.upgraded_from
    }

    /// How many journal records [`LogDb::open`] replayed (non-zero after a
    /// crash, or a close whose checkpoint failed).
    pub fn replayed(&self) -> usize {
        self.replayed
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a read of the file, turning a panic of redb into an error
    /// (see [`damaged`]).
    fn guarded<T>(&self, f: impl FnOnce() -> Result<T, LogError>) -> Result<T, LogError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
            Err(LogError::Db {
                path: self.path.clone(),
                source: Box::new(damaged(&*panic)),
            })
        })
    }

    fn db(&self) -> Result<&Database, LogError> {
        self.db.as_ref().ok_or_else(|| LogError::Db {
            path: self.path.clone(),
            source: Box::new(redb::Error::DatabaseAlreadyOpen),
        })
    }

    fn err(&self, e: impl Into<redb::Error>) -> LogError {
        LogError::Db {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    /// One redb transaction with `durability`.
    fn commit(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), LogError> {
        let mut txn = self.db()?.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(durability).map_err(|e| self.err(e))?;
        f(&txn).map_err(|e| self.err(e))?;
        // Only a durable commit is an fsync worth reporting; a journaled
        // append reports its journal's sync instead.
        let durable = matches!(durability, Durability::Immediate);
        let started = Instant::now();
        txn.commit().map_err(|e| self.err(e))?;
        if durable {
            self.observed(started);
        }
        Ok(())
    }

    /// Tells the observer (if any) a durable commit started at `started`
    /// has finished.
    fn observed(&self, started: Instant) {
        if let Some(o) = &self.observer {
            o.committed(started.elapsed());
        }
    }

    fn wal(&self) -> Result<MutexGuard<'_, Journal>, LogError> {
        // A panic under the lock leaves the journal as its last complete
        // call left it (its offset moves only after a write succeeded).
        self.wal
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
            .ok_or_else(|| LogError::Db {
                path: self.path.clone(),
                source: Box::new(redb::Error::DatabaseAlreadyOpen),
            })
    }

    /// Makes everything journaled durable in the file and empties the
    /// journal (nothing to do when it is empty): the unfiled batches go in
    /// with the durable commit, which persists the non-durable ones before
    /// it too.
    fn checkpoint_locked(&self, journal: &mut Journal) -> Result<(), LogError> {
        if journal.wal.is_empty() {
            return Ok(());
        }
        self.commit(Durability::Immediate, |w| journal.put_unfiled(w))?;
        journal.filed();
        journal.wal.reset()?;
        Ok(())
    }

    /// See [`LogDb::checkpoint_locked`]; a no-op before the journal is open.
    fn checkpoint(&self) -> Result<(), LogError> {
        if self.wal.is_none() || self.db.is_none() {
            return Ok(());
        }
        let mut journal = self.wal()?;
        self.checkpoint_locked(&mut journal)
    }

    /// A durable transaction, after a checkpoint (so the journal never holds
    /// records older than a truncation or purge).
    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), LogError> {
        let mut journal = self.wal()?;
        self.checkpoint_locked(&mut journal)?;
        self.commit(Durability::Immediate, f)
    }

    /// Inserts entries and, if given, the committed log id's record.
    fn put(
        w: &redb::WriteTransaction,
        entries: &[(u64, Vec<u8>)],
        committed: Option<&[u8]>,
    ) -> Result<(), redb::Error> {
        if !entries.is_empty() {
            let mut t = w.open_table(ENTRIES)?;
            for (index, body) in entries {
                t.insert(*index, format::encode_record(body).as_slice())?;
            }
        }
        if let Some(c) = committed {
            let mut m = w.open_table(META)?;
            m.insert(COMMITTED_KEY, format::encode_record(c).as_slice())?;
        }
        Ok(())
    }

    /// Appends (or overwrites) entries; durable when this returns.
    pub fn append(&self, entries: &[(u64, Vec<u8>)]) -> Result<(), LogError> {
        self.write(|w| Self::put(w, entries, None))
    }

    /// The Raft append path: appends (or overwrites) entries and, if given,
    /// sets the committed log id's record ([`COMMITTED_KEY`]), all in one
    /// journal record, so one `fdatasync` for a whole group of batches.
    /// Readable and durable when this returns (see the module docs):
    /// [`LogDb::journal_append`], then [`LogDb::file_journaled`] at once.
    pub fn append_journaled(
        &self,
        entries: &[(u64, Vec<u8>)],
        committed: Option<&[u8]>,
    ) -> Result<(), LogError> {
        match self.journal_append(entries.to_vec(), committed.map(<[u8]>::to_vec))? {
            Journaled::InJournal => self.file_journaled(true).map(|_| ()),
            Journaled::InFile => Ok(()),
        }
    }

    /// The durable half of [`LogDb::append_journaled`]: when this returns
    /// the batch is on disk, in the journal (one record, one `fdatasync`),
    /// or, when the journal is full, in the file by a durable commit that
    /// checkpoints the journal (and every batch it held) too.
    ///
    /// In the journal case the batch is held, with the other journaled
    /// batches the file does not have yet, for [`LogDb::file_journaled`];
    /// until that commits them, readers of the file do not see them (the
    /// Raft log store serves them from memory meanwhile). Any other write
    /// but a purge's later portions ([`LogDb::purge_more`], which deletes
    /// only entries before every held one)
    /// commits them first. Splitting the two lets the caller acknowledge
    /// the append after the sync, with the file's commit off that path and
    /// shared by many batches; a crash in between is a crash after a
    /// journaled append: the open replays the journal.
    pub fn journal_append(
        &self,
        entries: Vec<(u64, Vec<u8>)>,
        committed: Option<Vec<u8>>,
    ) -> Result<Journaled, LogError> {
        let mut journal = self.wal()?;
        let record =
            wal::encode(&entries, committed.as_deref()).map_err(|source| WalError::Io {
                path: Self::wal_path(&self.path),
                source,
            })?;
        if !journal.wal.fits(record.len()) {
            // Full: this batch goes to the file durably with every unfiled
            // one, which is a checkpoint of the journal.
            self.commit(Durability::Immediate, |w| {
                journal.put_unfiled(w)?;
                Self::put(w, &entries, committed.as_deref())
            })?;
            journal.filed();
            journal.wal.reset()?;
            return Ok(Journaled::InFile);
        }
        let started = Instant::now();
        journal.wal.append(&record)?;
        self.observed(started);
        journal.unfiled_bytes = entries
            .iter()
            .fold(journal.unfiled_bytes, |n, (_, b)| n.saturating_add(b.len()));
        journal.unfiled.extend(entries);
        if committed.is_some() {
            journal.unfiled_committed = committed;
        }
        Ok(Journaled::InJournal)
    }

    /// Commits the journaled batches the file does not have yet
    /// ([`LogDb::journal_append`]) to the file, without fsync (the journal
    /// holds them durably until the next checkpoint): now, or, unless
    /// `now`, once they reach [`FILE_BATCH_BYTES`] or
    /// [`FILE_BATCH_ENTRIES`]. Returns whether the file has every journaled
    /// batch when it returns.
    pub fn file_journaled(&self, now: bool) -> Result<bool, LogError> {
        let mut journal = self.wal()?;
        if journal.unfiled.is_empty() && journal.unfiled_committed.is_none() {
            return Ok(true);
        }
        if !now
            && journal.unfiled_bytes < FILE_BATCH_BYTES
            && journal.unfiled.len() < FILE_BATCH_ENTRIES
        {
            return Ok(false);
        }
        if journal.wal.len() >= CHECKPOINT_BYTES {
            self.checkpoint_locked(&mut journal)?;
            return Ok(true);
        }
        self.commit(Durability::None, |w| journal.put_unfiled(w))?;
        journal.filed();
        Ok(true)
    }

    /// Entries with indexes in `range`, in order, checksums verified.
    pub fn read_range(
        &self,
        range: impl RangeBounds<u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        self.read_range_limited(range, usize::MAX)
    }

    /// Like [`read_range`](Self::read_range), but stops before the entry
    /// that would take the total payload past `max_bytes`. The first entry
    /// is always returned, however large, so a non-empty range never reads
    /// as empty (a reader that made no progress would loop forever).
    pub fn read_range_limited(
        &self,
        range: impl RangeBounds<u64>,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let mut out = Vec::new();
        let mut total = 0usize;
        self.scan(range, |index, body| {
            total = total.saturating_add(body.len());
            if total > max_bytes && !out.is_empty() {
                return false;
            }
            out.push((index, body.to_vec()));
            true
        })?;
        Ok(out)
    }

    /// Calls `f` with each entry in `range`, in order, checksum verified,
    /// until it returns `false`. Holds one record in memory at a time.
    fn scan(
        &self,
        range: impl RangeBounds<u64>,
        f: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), LogError> {
        let lo = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Bound::Included(x) => Some(*x),
            Bound::Excluded(0) => return Ok(()),
            Bound::Excluded(x) => Some(x - 1),
            Bound::Unbounded => None,
        };
        if hi.is_some_and(|h| h < lo) {
            return Ok(());
        }
        self.guarded(|| self.scan_inner(lo, hi, f))
    }

    fn scan_inner(
        &self,
        lo: u64,
        hi: Option<u64>,
        mut f: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), LogError> {
        let r = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(ENTRIES).map_err(|e| self.err(e))?;
        let iter = match hi {
            Some(h) => t.range(lo..=h),
            None => t.range(lo..),
        }
        .map_err(|e| self.err(e))?;
        for item in iter {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let index = k.value();
            let body = unframe(v.value()).map_err(|source| LogError::Corrupt {
                path: self.path.clone(),
                index,
                source,
            })?;
            if !f(index, body) {
                break;
            }
        }
        Ok(())
    }

    /// The index of the first entry in the file, if any.
    pub fn first_index(&self) -> Result<Option<u64>, LogError> {
        self.guarded(|| {
            let r = self.db()?.begin_read().map_err(|e| self.err(e))?;
            let t = r.open_table(ENTRIES).map_err(|e| self.err(e))?;
            let first = t.first().map_err(|e| self.err(e))?.map(|(k, _)| k.value());
            Ok(first)
        })
    }

    /// The last entry, if any.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>, LogError> {
        self.guarded(|| self.last_inner())
    }

    fn last_inner(&self) -> Result<Option<(u64, Vec<u8>)>, LogError> {
        let r = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(ENTRIES).map_err(|e| self.err(e))?;
        let Some((k, v)) = t.last().map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let index = k.value();
        let body = unframe(v.value()).map_err(|source| LogError::Corrupt {
            path: self.path.clone(),
            index,
            source,
        })?;
        Ok(Some((index, body.to_vec())))
    }

    /// Checks every record's checksum; returns the number of records. Run at
    /// start so a damaged log stops the server before it serves anything.
    /// Reads one record at a time, so a long log is not loaded whole.
    pub fn verify(&self) -> Result<u64, LogError> {
        let mut n = 0u64;
        self.scan(.., |_, _| {
            n += 1;
            true
        })?;
        Ok(n)
    }

    /// Deletes entries with index > `index` (all of them when `None`).
    pub fn truncate_after(&self, index: Option<u64>) -> Result<(), LogError> {
        let from = index.map_or(0, |i| i.saturating_add(1));
        self.write(|w| {
            let mut t = w.open_table(ENTRIES)?;
            t.retain_in(from.., |_, _| false)?;
            Ok(())
        })
    }

    /// Starts a purge in portions, for a writer that must not stop for a
    /// long one: records `meta_key = meta` (the new purge point) and
    /// deletes the first entries up to `index`, at most `max` of them, in
    /// one durable transaction. Returns whether entries at or below `index`
    /// remain, for [`LogDb::purge_more`]. The log is read only after its
    /// purge point, so such entries are never seen; after a crash they stay
    /// until the next purge deletes them with its own.
    pub fn purge_start(
        &self,
        index: u64,
        max: usize,
        meta_key: &str,
        meta: &[u8],
    ) -> Result<bool, LogError> {
        let mut more = false;
        self.write(|w| {
            more = Self::delete_front(w, index, max)?;
            let mut m = w.open_table(META)?;
            m.insert(meta_key, format::encode_record(meta).as_slice())?;
            Ok(())
        })?;
        Ok(more)
    }

    /// Deletes at most `max` more entries at or below `index`, oldest
    /// first, without an fsync (the next durable commit carries it; losing
    /// it to a crash only leaves entries below the purge point). The
    /// portion that finishes the purge is followed by an fsync. Returns
    /// whether entries at or below `index` remain.
    pub fn purge_more(&self, index: u64, max: usize) -> Result<bool, LogError> {
        let mut more = false;
        self.commit(Durability::None, |w| {
            more = Self::delete_front(w, index, max)?;
            Ok(())
        })?;
        if !more {
            self.commit(Durability::Immediate, |_| Ok(()))?;
        }
        Ok(more)
    }

    /// Deletes the first entries at or below `index`, at most `max`;
    /// whether any remain.
    fn delete_front(
        w: &redb::WriteTransaction,
        index: u64,
        max: usize,
    ) -> Result<bool, redb::Error> {
        let mut t = w.open_table(ENTRIES)?;
        let Some(lo) = t.first()?.map(|(k, _)| k.value()) else {
            return Ok(false);
        };
        if lo > index {
            return Ok(false);
        }
        let hi = index.min(lo.saturating_add(max.max(1) as u64 - 1));
        t.retain_in(lo..=hi, |_, _| false)?;
        Ok(hi < index)
    }

    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), LogError> {
        self.write(|w| {
            let mut m = w.open_table(META)?;
            m.insert(key, format::encode_record(value).as_slice())?;
            Ok(())
        })
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, LogError> {
        self.guarded(|| self.get_meta_inner(key))
    }

    fn get_meta_inner(&self, key: &str) -> Result<Option<Vec<u8>>, LogError> {
        let r = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(META).map_err(|e| self.err(e))?;
        let Some(v) = t.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let body = unframe(v.value()).map_err(|source| LogError::CorruptMeta {
            path: self.path.clone(),
            key: key.to_string(),
            source,
        })?;
        Ok(Some(body.to_vec()))
    }

    /// Test hook: stores raw bytes at `index` without framing, to simulate a
    /// record damaged on disk.
    #[cfg(test)]
    fn put_raw(&self, index: u64, raw: &[u8]) -> Result<(), LogError> {
        self.write(|w| {
            let mut t = w.open_table(ENTRIES)?;
            t.insert(index, raw)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn open(dir: &tempfile::TempDir) -> LogDb {
        LogDb::open(&dir.path().join("raft.redb")).unwrap()
    }

    /// Every durable write (appends, truncation, purge, metadata) reports
    /// its commit once; reads report nothing.
    #[test]
    fn commits_are_reported_to_the_observer() {
        use std::sync::atomic::{AtomicU64, Ordering};
        #[derive(Default)]
        struct Count(AtomicU64);
        impl CommitObserver for Count {
            fn committed(&self, _took: std::time::Duration) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut db = open(&dir);
        let count = Arc::new(Count::default());
        db.observe_commits(count.clone());
        db.append(&[(1, b"a".to_vec()), (2, b"b".to_vec())])
            .unwrap();
        db.put_meta("vote", b"v").unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        db.read_range(1..3).unwrap();
        db.get_meta("vote").unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 2, "reads commit nothing");
        db.truncate_after(Some(1)).unwrap();
        db.purge_start(1, usize::MAX, "purged", b"p").unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 4);
        // A journaled append is one sync (the journal's), not two: its
        // non-durable file commit is not an fsync.
        db.append_journaled(&[(2, b"b".to_vec())], None).unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 5);
        db.append_journaled(&[(3, b"c".to_vec())], Some(b"c1"))
            .unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn append_read_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(&dir);
            db.append(&[
                (1, b"a".to_vec()),
                (2, b"bb".to_vec()),
                (3, b"ccc".to_vec()),
            ])
            .unwrap();
            db.put_meta("vote", b"v1").unwrap();
        }
        let db = open(&dir);
        assert_eq!(
            db.read_range(2..).unwrap(),
            vec![(2, b"bb".to_vec()), (3, b"ccc".to_vec())]
        );
        assert_eq!(db.last().unwrap(), Some((3, b"ccc".to_vec())));
        assert_eq!(db.get_meta("vote").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(db.get_meta("nothing").unwrap(), None);
        assert_eq!(db.verify().unwrap(), 3);
    }

    #[test]
    fn limited_reads_stop_at_the_byte_budget_but_never_return_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let entries: Vec<_> = (1..=10).map(|i| (i, vec![0u8; 100])).collect();
        db.append(&entries).unwrap();
        let idx = |v: Vec<(u64, Vec<u8>)>| v.into_iter().map(|e| e.0).collect::<Vec<_>>();
        assert_eq!(idx(db.read_range_limited(1..11, 350).unwrap()), [1, 2, 3]);
        assert_eq!(idx(db.read_range_limited(4..11, 300).unwrap()), [4, 5, 6]);
        // One entry over the budget still comes back alone.
        assert_eq!(idx(db.read_range_limited(5..11, 10).unwrap()), [5]);
        assert_eq!(db.read_range_limited(1..11, usize::MAX).unwrap().len(), 10);
        assert!(db.read_range_limited(11..20, 10).unwrap().is_empty());
    }

    #[test]
    fn truncate_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let entries: Vec<_> = (1..=10).map(|i| (i, vec![i as u8])).collect();
        db.append(&entries).unwrap();
        db.truncate_after(Some(7)).unwrap();
        assert_eq!(db.last().unwrap().map(|e| e.0), Some(7));
        db.purge_start(3, usize::MAX, "purged", b"3").unwrap();
        let idx: Vec<u64> = db
            .read_range(..)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(idx, vec![4, 5, 6, 7]);
        assert_eq!(db.get_meta("purged").unwrap(), Some(b"3".to_vec()));
        db.truncate_after(None).unwrap();
        assert_eq!(db.last().unwrap(), None);
    }

    #[test]
    fn corrupt_record_is_reported_with_file_and_index() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(&dir);
            db.append(&[(1, b"good".to_vec()), (3, b"good".to_vec())])
                .unwrap();
            let mut bad = format::encode_record(b"payload");
            bad[5] ^= 0xff; // flip a body bit: checksum no longer matches
            db.put_raw(2, &bad).unwrap();
        }
        let db = open(&dir);
        let err = db.verify().unwrap_err().to_string();
        assert!(err.contains("raft.redb"), "{err}");
        assert!(err.contains("index 2"), "{err}");
        assert!(err.contains("checksum mismatch"), "{err}");
        // Records before the damage are still readable.
        assert_eq!(db.read_range(..2).unwrap(), vec![(1, b"good".to_vec())]);
        // A record too short to hold a checksum is refused too.
        db.put_raw(4, &[1, 2]).unwrap();
        assert!(db
            .read_range(4..)
            .unwrap_err()
            .to_string()
            .contains("shorter"));
    }

    /// Copies the log and its journal as they are on disk now, while `db`
    /// is open: what a crash (SIGKILL) at this point leaves.
    fn crash_copy(dir: &tempfile::TempDir) -> tempfile::TempDir {
        let to = tempfile::tempdir().unwrap();
        for f in ["raft.redb", "raft.wal"] {
            std::fs::copy(dir.path().join(f), to.path().join(f)).unwrap();
        }
        to
    }

    fn stored_entries(path: &Path) -> Vec<u64> {
        let db = Database::create(path).unwrap();
        let r = db.begin_read().unwrap();
        let t = r.open_table(ENTRIES).unwrap();
        t.iter().unwrap().map(|i| i.unwrap().0.value()).collect()
    }

    /// Journaled appends are in the journal only (the redb file's durable
    /// state lacks them) until a checkpoint; after a crash the open replays
    /// them, committed log id included, and empties the journal.
    #[test]
    fn journaled_appends_are_replayed_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        db.append(&[(1, b"durable".to_vec())]).unwrap();
        for i in 2..=10u64 {
            let c = i.to_le_bytes();
            db.append_journaled(&[(i, vec![i as u8; 100])], Some(&c))
                .unwrap();
        }
        assert_eq!(db.read_range(..).unwrap().len(), 10, "readable at once");
        let crashed = crash_copy(&dir);
        drop(db);
        // The redb file alone: only the durable append.
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(
            crashed.path().join("raft.redb"),
            copy.path().join("raft.redb"),
        )
        .unwrap();
        assert_eq!(stored_entries(&copy.path().join("raft.redb")), [1]);
        // With its journal: everything.
        let db = open(&crashed);
        assert_eq!(db.replayed(), 9);
        let got = db.read_range(..).unwrap();
        assert_eq!(
            got.iter().map(|e| e.0).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(got[9].1, vec![10u8; 100]);
        assert_eq!(
            db.get_meta(COMMITTED_KEY).unwrap(),
            Some(10u64.to_le_bytes().to_vec())
        );
        drop(db);
        // Replayed into the file: the journal is empty now.
        let db = open(&crashed);
        assert_eq!(db.replayed(), 0);
        drop(db);
        assert_eq!(stored_entries(&crashed.path().join("raft.redb")).len(), 10);
        // A clean close checkpoints too: nothing to replay.
        assert_eq!(open(&dir).replayed(), 0);
    }

    /// A journal that was made and is then missing, empty, or cut shorter
    /// than its header held appends the file may lack: the open refuses it,
    /// naming the file, and leaves everything as it was. A file from before
    /// the journal was recorded opens as it did, and records it.
    #[test]
    fn a_lost_journal_is_refused_not_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        db.append(&[(1, b"durable".to_vec())]).unwrap();
        db.append_journaled(&[(2, vec![2u8; 100])], None).unwrap();
        let crashed = crash_copy(&dir);
        drop(db);
        let wal = crashed.path().join("raft.wal");
        let bytes = std::fs::read(&wal).unwrap();
        for (what, cut) in [("missing", None), ("empty", Some(0)), ("short", Some(8))] {
            match cut {
                None => std::fs::remove_file(&wal).unwrap(),
                Some(n) => std::fs::write(&wal, &bytes[..n]).unwrap(),
            }
            let e = LogDb::open(&crashed.path().join("raft.redb"))
                .err()
                .unwrap_or_else(|| panic!("{what} journal opened"))
                .to_string();
            assert!(
                e.contains("raft.wal") && e.contains("would be lost"),
                "{what}: {e}"
            );
            assert_eq!(
                std::fs::metadata(&wal).ok().map(|m| m.len()),
                cut.map(|n| n as u64),
                "{what}: the journal must be left as it was"
            );
        }
        // The other way round: the journal without its file (missing, or
        // empty) is a lost file, not a new log of the journal's tail.
        for cut in [None, Some(0u64)] {
            let lost = tempfile::tempdir().unwrap();
            drop(open(&lost));
            let redb = lost.path().join("raft.redb");
            match cut {
                None => std::fs::remove_file(&redb).unwrap(),
                Some(n) => std::fs::File::create(&redb).unwrap().set_len(n).unwrap(),
            }
            let e = LogDb::open(&redb).err().expect("opened without its file");
            assert!(matches!(e, LogError::LogLost { .. }), "{e}");
        }
        // Put back, the journal is replayed: nothing was lost.
        std::fs::write(&wal, &bytes).unwrap();
        let db = LogDb::open(&crashed.path().join("raft.redb")).unwrap();
        assert_eq!(db.replayed(), 1);
        assert_eq!(db.read_range(..).unwrap().len(), 2);
        drop(db);
        // A file that never recorded its journal (an older build's) opens
        // without one, and records the one it makes.
        let old = tempfile::tempdir().unwrap();
        {
            let db = Database::create(old.path().join("raft.redb")).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(FORMAT)
                .unwrap()
                .insert(FORMAT_KEY, LAYOUT_VERSION)
                .unwrap();
            w.commit().unwrap();
        }
        drop(open(&old));
        std::fs::remove_file(old.path().join("raft.wal")).unwrap();
        assert!(LogDb::open(&old.path().join("raft.redb")).is_err());
    }

    /// A batch acknowledged after the journal's sync but before its commit
    /// to the file (what the Raft log store does) survives a crash in
    /// between: the open replays it from the journal.
    #[test]
    fn a_batch_only_in_the_journal_survives_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        db.append(&[(1, b"durable".to_vec())]).unwrap();
        let c = 2u64.to_le_bytes();
        let batch = [(2, vec![2u8; 100])];
        assert_eq!(
            db.journal_append(batch.to_vec(), Some(c.to_vec())).unwrap(),
            Journaled::InJournal
        );
        // Not in the file yet: the caller serves it from memory meanwhile.
        assert_eq!(db.read_range(..).unwrap().len(), 1);
        let crashed = crash_copy(&dir);
        assert!(db.file_journaled(true).unwrap());
        assert_eq!(db.read_range(..).unwrap().len(), 2);
        drop(db);
        let db = open(&crashed);
        assert_eq!(db.replayed(), 1);
        assert_eq!(
            db.read_range(..).unwrap(),
            vec![(1, b"durable".to_vec()), (2, vec![2u8; 100])]
        );
        assert_eq!(db.get_meta(COMMITTED_KEY).unwrap(), Some(c.to_vec()));
    }

    /// Journaled batches wait for a whole batch's worth before the file
    /// takes them in one commit, and every write that empties the journal
    /// takes the waiting ones into the file first: a checkpoint (here, a
    /// vote), and a batch that finds the journal full. A crash in between
    /// loses none of them.
    #[test]
    fn unfiled_batches_wait_for_a_whole_batch_and_go_with_any_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let small = |i: u64| vec![(i, vec![i as u8; 100])];
        assert_eq!(
            db.journal_append(small(1), Some(b"c1".to_vec())).unwrap(),
            Journaled::InJournal
        );
        assert!(!db.file_journaled(false).unwrap(), "one small batch waits");
        assert!(db.read_range(..).unwrap().is_empty());
        // A crash now replays it from the journal.
        let crashed = crash_copy(&dir);
        assert_eq!(
            LogDb::open(&crashed.path().join("raft.redb"))
                .unwrap()
                .read_range(..)
                .unwrap(),
            small(1)
        );
        // A whole batch's worth: one commit files both.
        let big = vec![(2, vec![2u8; FILE_BATCH_BYTES])];
        db.journal_append(big.clone(), None).unwrap();
        assert!(db.file_journaled(false).unwrap());
        assert_eq!(db.read_range(..).unwrap(), [small(1), big].concat());
        assert_eq!(db.get_meta(COMMITTED_KEY).unwrap(), Some(b"c1".to_vec()));
        // Waiting batches go into the file with a checkpoint.
        db.journal_append(small(3), Some(b"c3".to_vec())).unwrap();
        db.put_meta("vote", b"v").unwrap();
        let crashed = crash_copy(&dir);
        assert_eq!(stored_entries(&crashed.path().join("raft.redb")), [1, 2, 3]);
        let (_, records) = Wal::open(&crashed.path().join("raft.wal")).unwrap();
        assert!(records.is_empty(), "{records:?}");
        // And with a batch that finds the journal full.
        let mut i = 4u64;
        let mb = vec![9u8; 1 << 20];
        while db.journal_append(vec![(i, mb.clone())], None).unwrap() == Journaled::InJournal {
            i += 1;
        }
        assert!(i > 10, "the journal took {i} batches");
        assert!(db.file_journaled(false).unwrap(), "nothing waits");
        let crashed = crash_copy(&dir);
        drop(db);
        assert_eq!(
            stored_entries(&crashed.path().join("raft.redb")),
            (1..=i).collect::<Vec<_>>()
        );
        let (_, records) = Wal::open(&crashed.path().join("raft.wal")).unwrap();
        assert!(records.is_empty(), "{} records left", records.len());
        let db = LogDb::open(&crashed.path().join("raft.redb")).unwrap();
        assert_eq!(db.get_meta(COMMITTED_KEY).unwrap(), Some(b"c3".to_vec()));
    }

    /// Filing once the journal holds [`CHECKPOINT_BYTES`] empties it: a
    /// crash then leaves the file with every entry and nothing to replay.
    #[test]
    fn filing_a_long_journal_checkpoints_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let body = vec![7u8; 256 * 1024];
        let mut i = 1u64;
        // Filed without fsync while the journal is short: a crash replays.
        db.journal_append(vec![(i, body.clone())], Some(b"c".to_vec()))
            .unwrap();
        assert!(db.file_journaled(true).unwrap());
        let crashed = crash_copy(&dir);
        let (_, records) = Wal::open(&crashed.path().join("raft.wal")).unwrap();
        assert_eq!(records.len(), 1, "a short journal is kept");
        // Past CHECKPOINT_BYTES, the next filing empties it.
        let mut journaled = body.len() as u64;
        while journaled < CHECKPOINT_BYTES {
            i += 1;
            db.journal_append(vec![(i, body.clone())], None).unwrap();
            journaled += body.len() as u64;
            assert!(db.file_journaled(true).unwrap());
        }
        let crashed = crash_copy(&dir);
        let (_, records) = Wal::open(&crashed.path().join("raft.wal")).unwrap();
        assert!(records.is_empty(), "{} records left", records.len());
        assert_eq!(
            stored_entries(&crashed.path().join("raft.redb")),
            (1..=i).collect::<Vec<_>>()
        );
        let reopened = LogDb::open(&crashed.path().join("raft.redb")).unwrap();
        assert_eq!(
            reopened.get_meta(COMMITTED_KEY).unwrap(),
            Some(b"c".to_vec())
        );
    }

    /// A checkpoint (here, before a vote write) leaves the redb file alone
    /// holding every journaled append and the journal empty.
    #[test]
    fn a_checkpoint_moves_the_journal_into_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        for i in 1..=5u64 {
            db.append_journaled(&[(i, vec![i as u8; 50])], Some(&i.to_le_bytes()))
                .unwrap();
        }
        db.put_meta("vote", b"v").unwrap();
        let crashed = crash_copy(&dir);
        drop(db);
        assert_eq!(
            stored_entries(&crashed.path().join("raft.redb")),
            [1, 2, 3, 4, 5]
        );
        let (_, records) = Wal::open(&crashed.path().join("raft.wal")).unwrap();
        assert!(records.is_empty(), "{records:?}");
    }

    /// A journal damaged before its last record stops the open with an
    /// error naming the journal and the record's offset, and is left as it
    /// was (nothing replayed, nothing reset).
    #[test]
    fn a_journal_damaged_in_the_middle_refuses_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        for i in 1..=3u64 {
            db.append_journaled(&[(i, vec![7u8; 600])], None).unwrap();
        }
        let crashed = crash_copy(&dir);
        drop(db);
        let path = crashed.path().join("raft.wal");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[wal::HEADER_LEN as usize + 40] ^= 1; // the first record's body
        std::fs::write(&path, &bytes).unwrap();
        let e = LogDb::open(&crashed.path().join("raft.redb"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("raft.wal") && e.contains("byte 16") && e.contains("checksum mismatch"),
            "{e}"
        );
        assert!(std::fs::read(&path).unwrap() == bytes, "journal untouched");
        assert!(stored_entries(&crashed.path().join("raft.redb")).is_empty());
    }

    /// Truncation checkpoints first: a crash after it never brings back
    /// truncated entries from the journal.
    #[test]
    fn truncation_after_journaled_appends_stays_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        for i in 1..=6u64 {
            db.append_journaled(&[(i, vec![1])], None).unwrap();
        }
        db.truncate_after(Some(3)).unwrap();
        db.append_journaled(&[(4, vec![2])], None).unwrap();
        let crashed = crash_copy(&dir);
        drop(db);
        let db = open(&crashed);
        assert_eq!(db.replayed(), 1);
        assert_eq!(
            db.read_range(..).unwrap(),
            vec![(1, vec![1]), (2, vec![1]), (3, vec![1]), (4, vec![2])]
        );
    }

    /// A file from the build before the journal (layout 1) opens and is
    /// stamped 2, which those builds refuse by name.
    #[test]
    fn a_layout_1_file_is_stamped_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(ENTRIES)
                .unwrap()
                .insert(1, format::encode_record(b"old").as_slice())
                .unwrap();
            w.open_table(FORMAT).unwrap().insert(FORMAT_KEY, 1).unwrap();
            w.commit().unwrap();
        }
        let db = LogDb::open(&path).unwrap();
        assert_eq!(db.upgraded_from(), None);
        assert_eq!(db.read_range(..).unwrap(), vec![(1, b"old".to_vec())]);
        drop(db);
        let db = Database::create(&path).unwrap();
        let r = db.begin_read().unwrap();
        let v = r
            .open_table(FORMAT)
            .unwrap()
            .get(FORMAT_KEY)
            .unwrap()
            .map(|v| v.value());
        assert_eq!(v, Some(LAYOUT_VERSION));
    }

    #[test]
    fn a_purge_in_portions_records_its_point_first_and_deletes_from_the_front() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let batch: Vec<_> = (1..=10u64).map(|i| (i, vec![i as u8])).collect();
        db.append(&batch).unwrap();
        assert!(db.purge_start(8, 3, "purged", b"8").unwrap());
        assert_eq!(db.get_meta("purged").unwrap(), Some(b"8".to_vec()));
        let left: Vec<u64> = db.read_range(..).unwrap().iter().map(|(i, _)| *i).collect();
        assert_eq!(left, (4..=10).collect::<Vec<_>>());
        assert!(db.purge_more(8, 3).unwrap());
        assert!(!db.purge_more(8, 3).unwrap());
        // Nothing left at or below the point: a no-op.
        assert!(!db.purge_more(8, 3).unwrap());
        drop(db);
        let db = open(&dir);
        assert_eq!(db.read_range(..).unwrap(), batch[8..].to_vec());
        assert_eq!(db.get_meta("purged").unwrap(), Some(b"8".to_vec()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The log behaves like a BTreeMap under any sequence of appends,
        /// truncations and purges, including across a reopen.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((0u8..3, 1u64..40, 0usize..5), 1..30)) {
            let dir = tempfile::tempdir().unwrap();
            let mut model = std::collections::BTreeMap::new();
            {
                let db = open(&dir);
                for (op, at, n) in &ops {
                    match op {
                        0 => {
                            let batch: Vec<_> = (*at..*at + *n as u64).map(|i| (i, i.to_le_bytes().to_vec())).collect();
                            for (i, b) in &batch { model.insert(*i, b.clone()); }
                            if at % 2 == 0 {
                                db.append(&batch).unwrap();
                            } else {
                                db.append_journaled(&batch, None).unwrap();
                            }
                        }
                        1 => { model.retain(|k, _| *k <= *at); db.truncate_after(Some(*at)).unwrap(); }
                        // All in one durable transaction.
                        _ if n % 2 == 0 => { model.retain(|k, _| *k > *at); db.purge_start(*at, usize::MAX, "p", b"").unwrap(); }
                        // In portions of n + 1 entries, as the log writer purges.
                        _ => {
                            model.retain(|k, _| *k > *at);
                            let mut more = db.purge_start(*at, n + 1, "p", b"").unwrap();
                            while more {
                                more = db.purge_more(*at, n + 1).unwrap();
                            }
                        }
                    }
                }
            }
            let db = open(&dir);
            let got = db.read_range(..).unwrap();
            let want: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(got, want);
        }
    }
}

/// Golden bytes: the records of a log written before records carried a
/// version (`tests/fixtures/pre-raft-records.txt`, dumped from a `raft.redb`
/// the pre-change `LogStore` wrote) and of one written now
/// (`v1-raft-records.txt`).
#[cfg(test)]
mod golden {
    use super::*;
    use std::fmt::Write as _;

    const PRE: &str = include_str!("../../tests/fixtures/pre-raft-records.txt");
    const V1: &str = include_str!("../../tests/fixtures/v1-raft-records.txt");

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// (table, key, raw value) per line: `entries 5 <hex>` or `meta vote <hex>`.
    fn parse(txt: &str) -> Vec<(String, String, Vec<u8>)> {
        txt.lines()
            .map(|l| {
                let mut it = l.split(' ');
                let (t, k, v) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
                (t.to_string(), k.to_string(), unhex(v))
            })
            .collect()
    }

    /// Every raw value of the file, in the fixture's text form.
    fn dump(path: &Path) -> String {
        let db = Database::create(path).unwrap();
        let r = db.begin_read().unwrap();
        let mut out = String::new();
        let hex = |v: &[u8]| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        for item in r.open_table(ENTRIES).unwrap().iter().unwrap() {
            let (k, v) = item.unwrap();
            writeln!(out, "entries {} {}", k.value(), hex(v.value())).unwrap();
        }
        for item in r.open_table(META).unwrap().iter().unwrap() {
            let (k, v) = item.unwrap();
            writeln!(out, "meta {} {}", k.value(), hex(v.value())).unwrap();
        }
        out
    }

    /// Writes raw values as they are, with no format stamp: a file as a
    /// pre-change build left it.
    fn write_raw(path: &Path, records: &[(String, String, Vec<u8>)], stamp: Option<u32>) {
        let db = Database::create(path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut e = w.open_table(ENTRIES).unwrap();
            let mut m = w.open_table(META).unwrap();
            for (t, k, v) in records {
                match t.as_str() {
                    "entries" => e.insert(k.parse::<u64>().unwrap(), v.as_slice()).unwrap(),
                    _ => m.insert(k.as_str(), v.as_slice()).unwrap(),
                };
            }
            if let Some(s) = stamp {
                w.open_table(FORMAT).unwrap().insert(FORMAT_KEY, s).unwrap();
            }
        }
        w.commit().unwrap();
    }

    /// The payloads of the pre-change records (their checksums stripped).
    fn pre_payloads() -> Vec<(String, String, Vec<u8>)> {
        parse(PRE)
            .into_iter()
            .map(|(t, k, v)| (t, k, v[4..].to_vec()))
            .collect()
    }

    #[test]
    fn current_encoding_matches_the_fixture_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let db = LogDb::open(&path).unwrap();
            assert_eq!(db.upgraded_from(), None);
            for (t, k, payload) in pre_payloads() {
                match t.as_str() {
                    "entries" => db.append(&[(k.parse().unwrap(), payload)]).unwrap(),
                    _ => db.put_meta(&k, &payload).unwrap(),
                }
            }
        }
        let got = dump(&path);
        if std::env::var_os("WARDEN_BLESS_FIXTURES").is_some() {
            let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
            std::fs::write(out.join("v1-raft-records.txt"), &got).unwrap();
        }
        assert_eq!(
            got, V1,
            "the log record format changed: bump FORMAT_VERSION"
        );
        // And the fixture decodes to the payloads.
        let v1 = parse(V1);
        for ((_, _, raw), (_, _, payload)) in v1.iter().zip(pre_payloads()) {
            assert_eq!(format::decode_record(raw), Ok((1, payload.as_slice())));
        }
    }

    #[test]
    fn a_format_0_file_is_upgraded_in_place_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        write_raw(&path, &parse(PRE), None);
        {
            let db = LogDb::open(&path).unwrap();
            assert_eq!(db.upgraded_from(), Some(0));
            let payloads = pre_payloads();
            let entry = &payloads[0];
            assert_eq!(
                db.read_range(..).unwrap(),
                vec![(entry.1.parse().unwrap(), entry.2.clone())]
            );
            for (_, k, v) in &payloads[1..] {
                assert_eq!(db.get_meta(k).unwrap().as_ref(), Some(v), "{k}");
            }
        }
        // Byte for byte what this build writes for the same payloads.
        assert_eq!(dump(&path), V1);
        let db = LogDb::open(&path).unwrap();
        assert_eq!(db.upgraded_from(), None, "stamped: not upgraded twice");
        assert_eq!(db.verify().unwrap(), 1);
    }

    #[test]
    fn a_damaged_format_0_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let mut records = parse(PRE);
        let last = records[0].2.len() - 1;
        records[0].2[last] ^= 1;
        write_raw(&path, &records, None);
        let e = LogDb::open(&path).err().unwrap().to_string();
        assert!(
            e.contains("index 5") && e.contains("checksum mismatch"),
            "{e}"
        );
        // The upgrade rolled back: the old bytes are still there.
        let mut want = String::new();
        for (t, k, v) in &records {
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(want, "{t} {k} {hex}").unwrap();
        }
        assert_eq!(dump(&path), want);
    }

    #[test]
    fn future_versions_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        // A file stamped with a layout version this build does not know.
        let path = dir.path().join("raft.redb");
        write_raw(&path, &parse(V1), Some(99));
        let e = LogDb::open(&path).err().unwrap().to_string();
        assert!(e.contains("log format 99"), "{e}");
        assert!(e.contains("reads formats 0, 1 and 2"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        // A record with a version this build does not know.
        let path = dir.path().join("raft2.redb");
        let mut records = parse(V1);
        records[0].2[0] = 99;
        write_raw(&path, &records, Some(1));
        let db = LogDb::open(&path).unwrap();
        let e = db.read_range(..).unwrap_err().to_string();
        assert!(e.contains("index 5"), "{e}");
        assert!(e.contains("format version 99"), "{e}");
        assert!(e.contains("reads version 1"), "{e}");
    }
}
