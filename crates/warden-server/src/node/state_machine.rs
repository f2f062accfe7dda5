//! openraft's `RaftStateMachine` around the deterministic `state::StateMachine`.
//!
//! Owns: the in-memory replicated state shared with the API layer (reads take
//! the read lock; `apply` takes the write lock per entry), the last applied
//! log id (published on a watch channel so read-index waits can block on it),
//! and snapshot files on disk. A restart loads the newest snapshot and openraft
//! replays the committed log tail after it, so no applied write is lost.
//!
//! Snapshot files and backups hold the postcard encoding of the Raft
//! `SnapshotMeta` (meta) and of [`SmData`] (body) in the one snapshot frame of
//! `warden_core::storage::format`, which carries the format version; every
//! snapshot is encoded by `encode_snapshot` and decoded here, by
//! `load_snapshot` from a file as it is read (`snapshot_file::SnapshotStream`)
//! or by `parse_snapshot` from bytes in memory, and a backup adds etcd's padding and SHA-256 trailer
//! (`snapshot_file::seal_backup`). Files written before the frame was shared
//! are the same bytes and load unchanged (golden tests below).
//!
//! Must never: apply an entry out of order, serve a snapshot file that was
//! not fully written and fsynced, or frame snapshot bytes itself.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::lessor::LeaseFeed;
use super::telemetry::Telemetry;
pub use super::types::SnapshotFile;
use super::types::{
    LogId, RaftSnapshot, Request, Response, SnapshotMeta, StoredMembership, TypeConfig,
};
use super::watch_hub::WatchHub;
use tokio::sync::broadcast;
use warden_core::state::alarm::{AlarmTable, AlarmType};
use warden_core::state::auth::AuthStore;
use warden_core::state::lock_table::{LockEvent, LockProofs};
use warden_core::state::mvcc::decode_spilling;
use warden_core::state::session::{SessionTable, Stored};
use warden_core::state::{Command, CommandResult, Compaction, StateError, StateMachine};
use warden_core::storage::cold::{self, ColdStore};
use warden_core::storage::snapshot_file;

/// Everything the replicated state consists of; what a snapshot holds.
///
/// Stored with postcard (field order is the format): changing the fields
/// changes the snapshot format (see `types` on `FORMAT_VERSION`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SmData {
    pub kv: StateMachine,
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    /// Client address each member published (`Request::Publish`).
    pub client_addrs: BTreeMap<u64, String>,
    /// Name each member published (members added by `MemberAdd` have no
    /// name in the Raft membership until they start and publish it).
    pub names: BTreeMap<u64, String>,
    /// Active alarms (`Request::Alarm`). Not part of the derived encoding:
    /// `encode_snapshot` appends it after the fields above only when it is
    /// not empty, and `parse_snapshot` reads it from any bytes that follow
    /// them, so snapshots without alarms keep their exact bytes and every
    /// earlier snapshot loads with no alarms. A build from before alarms
    /// refuses a snapshot holding some (trailing bytes) rather than
    /// dropping them.
    #[serde(skip)]
    pub alarms: AlarmTable,
    /// Users, roles, permissions (`Request::Auth`). Like `alarms`, not part
    /// of the derived encoding: `write_body` appends it after the alarm
    /// table (then written even when empty) only when auth was ever
    /// touched, so snapshots of clusters that never used auth keep their
    /// exact bytes, and a build from before auth refuses a snapshot that
    /// holds users (trailing bytes) rather than dropping them.
    ///
    /// After the auth store (then written even when pristine, as the alarm
    /// table is before it) comes a fourth section, only when some lock hold
    /// or wait has a handle digest: `kv`'s `StateMachine::lock_proofs`,
    /// which the derived encoding of `kv` leaves out. Same argument: states
    /// without digests keep their exact bytes, older builds refuse a
    /// snapshot with digests rather than drop them.
    #[serde(skip)]
    pub auth: AuthStore,
    /// Client sessions (`Request::KvOnce`). Not part of the derived
    /// encoding either: a fifth section after the lock handle digests
    /// (then written even when empty), only when a tagged write was ever
    /// applied, so snapshots of clusters that never saw one keep their
    /// exact bytes, and a build from before sessions refuses a snapshot
    /// holding some (trailing bytes) rather than dropping them.
    #[serde(skip)]
    pub sessions: SessionTable,
}

/// The Raft instance of a member, driving this state machine.
pub type Raft = openraft::Raft<TypeConfig, SmStore>;

/// Lock table changes as this member applies them (see `SmStore::lock_feed`).
#[derive(Clone, Debug)]
pub enum LockFeed {
    /// One applied entry's lock events.
    Events {
        revision: i64,
        events: Arc<Vec<LockEvent>>,
    },
    /// A snapshot replaced the state: re-read the lock table.
    Resync,
}

/// Lock feed entries buffered per subscriber before it is told it lagged.
const LOCK_FEED_CAPACITY: usize = 4096;

struct Shared {
    data: RwLock<SmData>,
    hub: WatchHub,
    lock_feed: broadcast::Sender<LockFeed>,
    applied_tx: watch::Sender<u64>,
    snap_dir: PathBuf,
    current: Mutex<Option<(SnapshotMeta, PathBuf)>>,
    /// Lease grants and revokes as applied, for the leader's lessor.
    lease_feed: LeaseFeed,
    /// Slow applies and snapshot commits are reported here.
    telemetry: Arc<Telemetry>,
    /// Scratch files for the values of superseded versions
    /// (`storage::cold`); none if they could not be made.
    cold: Option<ColdStore>,
    /// Set when an entry could not be applied (a value this member could
    /// not read back): the Raft core stops, and no snapshot may be taken
    /// of a state that may hold part of that entry (an exactly-once
    /// session's admission, say) under the previous entry's index.
    apply_failed: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
pub struct SmStore {
    shared: Arc<Shared>,
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

fn lock_poisoned() -> io::Error {
    other("state machine lock poisoned by an earlier panic".into())
}

/// The scratch files for superseded values, in the snapshot directory (they
/// have no name there). Without them (a file system that refuses them)
/// the member keeps all values on the heap, as before.
fn open_cold(snap_dir: &Path) -> Option<ColdStore> {
    match ColdStore::open(snap_dir) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "keeping every value of key history on the heap");
            None
        }
    }
}

/// Loads a snapshot file: its meta and the state it holds. The file is
/// decoded as it is read (`snapshot_file::SnapshotStream`), so a restart
/// holds the state it loads, not the file's bytes as well.
pub fn load_snapshot(path: &Path) -> io::Result<(SnapshotMeta, SmData)> {
    load_snapshot_into(path, None).map(|(meta, data, _)| (meta, data))
}

/// [`load_snapshot`], with the values of superseded versions going to
/// `cold` as they are decoded (`mvcc::decode_spilling`), so that history
/// never sits on the heap all at once, and on going there afterwards; also
/// how many went.
fn load_snapshot_into(
    path: &Path,
    cold: Option<&ColdStore>,
) -> io::Result<(SnapshotMeta, SmData, usize)> {
    let mut stream = snapshot_file::SnapshotStream::open(path)?;
    let meta: SnapshotMeta = decode_section(path, "meta", stream.meta())?;
    let (data, moved) = decode_spilling(cold, || stream.take::<SmData>());
    let data = data?;
    let rest = stream.rest()?;
    let (meta, data) = finish_snapshot(path, meta, data, &rest)?;
    Ok((meta, data, moved))
}

/// Loads a backup file (a snapshot, possibly with etcd's SHA-256 trailer).
pub fn load_backup(path: &Path) -> io::Result<(SnapshotMeta, SmData)> {
    let (meta, body) = snapshot_file::read_backup(path)?;
    parse_snapshot(path, &meta, &body)
}

/// Decodes one postcard section of a snapshot, refusing trailing bytes (an
/// encoding that does not fill its section is not one this build wrote).
fn decode_section<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
    bytes: &[u8],
) -> io::Result<T> {
    let (v, rest) = postcard::take_from_bytes::<T>(bytes)
        .map_err(|e| other(format!("snapshot {}: bad {what}: {e}", path.display())))?;
    if !rest.is_empty() {
        return Err(other(format!(
            "snapshot {}: bad {what}: {} trailing bytes",
            path.display(),
            rest.len()
        )));
    }
    Ok(v)
}

/// The payloads of a snapshot file (frame checked by `snapshot_file`) as
/// its meta and state.
pub(crate) fn parse_snapshot(
    path: &Path,
    meta: &[u8],
    body: &[u8],
) -> io::Result<(SnapshotMeta, SmData)> {
    let meta: SnapshotMeta = decode_section(path, "meta", meta)?;
    let (data, rest) = postcard::take_from_bytes::<SmData>(body)
        .map_err(|e| other(format!("snapshot {}: bad body: {e}", path.display())))?;
    finish_snapshot(path, meta, data, rest)
}

/// The sections after the state in a snapshot body (`rest`) put on the
/// decoded `data`, and the whole checked.
fn finish_snapshot(
    path: &Path,
    meta: SnapshotMeta,
    mut data: SmData,
    rest: &[u8],
) -> io::Result<(SnapshotMeta, SmData)> {
    if !rest.is_empty() {
        // After the state: the alarm table, then the auth store, then the
        // lock handle digests (see `write_body`). The last section present
        // is never the empty one: an encoding with an empty last section
        // is not one this build wrote.
        let bad = |what: &str| {
            other(format!(
                "snapshot {}: bad body: {} trailing bytes after the state are not {what}",
                path.display(),
                rest.len()
            ))
        };
        let (table, rest) =
            postcard::take_from_bytes::<AlarmTable>(rest).map_err(|_| bad("an alarm table"))?;
        if rest.is_empty() {
            // Alone, only a non-empty table is ever written.
            if table.is_empty() {
                return Err(bad("an alarm table"));
            }
        } else {
            let sections = "an alarm table and an auth store";
            let (auth, rest) =
                postcard::take_from_bytes::<AuthStore>(rest).map_err(|_| bad(sections))?;
            if rest.is_empty() {
                if auth.is_pristine() {
                    return Err(bad(sections));
                }
            } else {
                let sections = "an alarm table, an auth store and lock handle digests";
                let (proofs, rest) =
                    postcard::take_from_bytes::<LockProofs>(rest).map_err(|_| bad(sections))?;
                if rest.is_empty() {
                    if proofs.is_empty() {
                        return Err(bad(sections));
                    }
                } else {
                    let sections =
                        "an alarm table, an auth store, lock handle digests and client sessions";
                    let sessions = postcard::take_from_bytes::<SessionTable>(rest)
                        .ok()
                        .filter(|(t, tail)| tail.is_empty() && !t.is_pristine())
                        .map(|(t, _)| t)
                        .ok_or_else(|| bad(sections))?;
                    sessions.check_invariants().map_err(|e| {
                        other(format!(
                            "snapshot {}: inconsistent client sessions: {e}",
                            path.display()
                        ))
                    })?;
                    data.sessions = sessions;
                }
                data.kv.restore_lock_proofs(proofs).map_err(|e| {
                    other(format!(
                        "snapshot {}: inconsistent lock handle digests: {e}",
                        path.display()
                    ))
                })?;
            }
            data.auth = auth;
        }
        data.alarms = table;
    }
    data.kv.check_invariants().map_err(|e| {
        other(format!(
            "snapshot {}: inconsistent state: {e}",
            path.display()
        ))
    })?;
    if data.last_applied != meta.last_log_id {
        return Err(other(format!(
            "snapshot {}: meta says it ends at {:?} but the state ends at {:?}",
            path.display(),
            meta.last_log_id,
            data.last_applied
        )));
    }
    Ok((meta, data))
}

/// The snapshot file bytes of `data` under `meta`, in one buffer: the
/// payloads are the postcard encoding of both, framed by `storage::format`
/// (via `snapshot_file::encode`). The reference the streamed files
/// ([`write_snapshot_file`]) are tested against.
#[cfg(test)]
fn encode_snapshot(meta: &SnapshotMeta, data: &SmData) -> io::Result<Vec<u8>> {
    let m = postcard::to_allocvec(meta).map_err(|e| other(format!("encode snapshot meta: {e}")))?;
    let b = write_body(data, Vec::new())?;
    Ok(snapshot_file::encode(&m, &b))
}

/// The meta describing a snapshot of `data`.
fn meta_of(data: &SmData) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: data.last_applied,
        last_membership: data.last_membership.clone(),
    }
}

/// The whole state as a backup, built in memory: a snapshot file sealed
/// with etcd's padding and SHA-256 trailer. `Maintenance.Snapshot` streams
/// it instead ([`stream_backup`]); this whole-buffer form is the reference
/// the streamed bytes are tested against.
#[cfg(test)]
pub fn export(data: &SmData) -> io::Result<Vec<u8>> {
    Ok(snapshot_file::seal_backup(encode_snapshot(
        &meta_of(data),
        data,
    )?))
}

/// Writes the body section of `data` to `w`: the state, then the alarm
/// table, the auth store and the lock handle digests, each written only
/// when it or a section after it has something in it (an alarm is active,
/// auth was ever touched, a hold or wait has a digest), so a state without
/// any of them has the bytes older builds wrote. The one definition of the
/// body layout, for snapshot files and backups alike.
fn write_body<W: io::Write>(data: &SmData, w: W) -> io::Result<W> {
    let w = postcard::to_io(data, w).map_err(|e| other(format!("encode snapshot: {e}")))?;
    let proofs = data.kv.lock_proofs();
    let with_sessions = !data.sessions.is_pristine();
    let with_proofs = with_sessions || !proofs.is_empty();
    let with_auth = with_proofs || !data.auth.is_pristine();
    if data.alarms.is_empty() && !with_auth {
        return Ok(w);
    }
    let w = postcard::to_io(&data.alarms, w)
        .map_err(|e| other(format!("encode snapshot alarm table: {e}")))?;
    if !with_auth {
        return Ok(w);
    }
    let w = postcard::to_io(&data.auth, w)
        .map_err(|e| other(format!("encode snapshot auth store: {e}")))?;
    if !with_proofs {
        return Ok(w);
    }
    let w = postcard::to_io(&proofs, w)
        .map_err(|e| other(format!("encode snapshot lock handle digests: {e}")))?;
    if !with_sessions {
        return Ok(w);
    }
    postcard::to_io(&data.sessions, w)
        .map_err(|e| other(format!("encode snapshot client sessions: {e}")))
}

/// Writes the snapshot file of `data` to `dir/name`, atomically and
/// durably, streamed: what it holds is a write buffer, not an encoding of
/// the whole state. The bytes are those of [`encode_snapshot`].
fn write_snapshot_file(
    dir: &Path,
    name: &str,
    meta: &SnapshotMeta,
    data: &SmData,
) -> io::Result<PathBuf> {
    // History values come out of maps of the scratch files rather than a
    // `pread` each (`cold::mapped_reads`).
    Ok(cold::mapped_reads(|| {
        snapshot_file::write_frame_atomic(dir, name, |w| {
            let meta = postcard::to_allocvec(meta)
                .map_err(|e| other(format!("encode snapshot meta: {e}")))?;
            w.write_all(&meta)?;
            write_body(data, w)?;
            Ok(meta.len() as u64)
        })
    })?)
}

/// Write buffer between the encoder and the checksums of a backup.
const SECTION_BUFFER: usize = 64 * 1024;

/// A backup of a state, to be streamed rather than held: the same bytes as
/// a sealed snapshot file, encoded twice from the same immutable `data` (a cheap clone
/// taken under the read lock, the key map being persistent), so the memory
/// it takes does not grow with the size of the state. [`BackupEncoder::new`]
/// encodes once into a sink that only counts bytes and takes their CRC (the
/// frame header carries both before the sections);
/// [`BackupEncoder::write_to`] encodes again into the sink.
pub struct BackupEncoder<'a> {
    data: &'a SmData,
    meta: SnapshotMeta,
    meta_len: u64,
    body_len: u64,
    crc: u32,
}

impl<'a> BackupEncoder<'a> {
    /// Pass 1: measures the sections of `data`.
    pub fn new(data: &'a SmData) -> io::Result<Self> {
        let meta = meta_of(data);
        // Buffered: the encoder writes a few bytes at a time, and each
        // write would be a CRC update.
        let mut m = io::BufWriter::with_capacity(SECTION_BUFFER, snapshot_file::Measure::default());
        postcard::to_io(&meta, &mut m).map_err(|e| other(format!("measure snapshot meta: {e}")))?;
        io::Write::flush(&mut m)?;
        let meta_len = m.get_ref().len();
        let m = write_body(data, m)?
            .into_inner()
            .map_err(|e| e.into_error())?;
        Ok(Self {
            data,
            meta,
            meta_len,
            body_len: m.len() - meta_len,
            crc: m.crc(),
        })
    }

    /// The length of the whole backup, known before any byte is written.
    pub fn len(&self) -> u64 {
        snapshot_file::backup_len(
            warden_core::storage::format::SNAPSHOT_HEADER_LEN as u64
                + self.meta_len
                + self.body_len,
        )
    }

    /// Never: a backup has at least a header and a trailer.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Pass 2: writes the whole backup to `sink` and returns it. Fails if
    /// the sections do not come out as measured (which would mean the
    /// encoding is not deterministic) or if the sink fails.
    pub fn write_to<W: io::Write>(&self, sink: W) -> io::Result<W> {
        let w = snapshot_file::BackupWriter::new(self.meta_len, self.body_len, self.crc, sink)?;
        let w = postcard::to_io(&self.meta, io::BufWriter::with_capacity(SECTION_BUFFER, w))
            .map_err(|e| other(format!("encode snapshot meta: {e}")))?;
        write_body(self.data, w)?
            .into_inner()
            .map_err(|e| e.into_error())?
            .finish()
    }
}

/// A backup being streamed by [`stream_backup`].
pub struct BackupChunks {
    /// The backup's whole length, or why it could not be measured; sent
    /// before the first chunk.
    pub len: oneshot::Receiver<io::Result<u64>>,
    /// The bytes in pieces of the chunk size (the last one shorter), or an
    /// error, after which nothing follows.
    pub chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    /// The encoding task; it ends when the backup is written, on an error,
    /// or as soon as the receiver of `chunks` (or of `len`) is dropped.
    pub task: tokio::task::JoinHandle<()>,
}

/// Streams the backup of `data` from a blocking task, in pieces of `chunk`
/// bytes through a channel holding at most `depth` of them: what a stream
/// holds is about `(depth + 1) x chunk` bytes whatever the size of `data`.
/// The task waits while the channel is full and stops when its receiver is
/// dropped (the client went away).
pub fn stream_backup(data: SmData, chunk: usize, depth: usize) -> BackupChunks {
    let (len_tx, len_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(depth.max(1));
    // History is read with a `pread` per value here, not through
    // `cold::mapped_reads`: a disk error under a map would kill the member,
    // where it should only fail this backup.
    let task = tokio::task::spawn_blocking(move || {
        let enc = match BackupEncoder::new(&data) {
            Ok(enc) => enc,
            Err(e) => {
                let _ = len_tx.send(Err(e));
                return;
            }
        };
        if len_tx.send(Ok(enc.len())).is_err() {
            return;
        }
        let sink = ChunkSink {
            tx: tx.clone(),
            buf: Vec::with_capacity(chunk),
            chunk: chunk.max(1),
        };
        let sent = enc.write_to(sink).and_then(ChunkSink::finish);
        if let Err(e) = sent {
            if !tx.is_closed() {
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    BackupChunks {
        len: len_rx,
        chunks: rx,
        task,
    }
}

/// A writer cutting what it is given into chunks sent on a bounded channel
/// (blocking while it is full). `flush` sends nothing: chunks are cut by
/// size only, and [`ChunkSink::finish`] sends the rest.
struct ChunkSink {
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    chunk: usize,
}

impl ChunkSink {
    fn send(&mut self) -> io::Result<()> {
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        self.tx.blocking_send(Ok(full)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "backup stream closed by its reader",
            )
        })
    }

    fn finish(mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

impl io::Write for ChunkSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.chunk - self.buf.len();
        let n = buf.len().min(room);
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == self.chunk {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Seeds `snap_dir` of a new member with the key-value, lease and lock state
/// of a backup file, as the base a new cluster starts from: Raft history,
/// membership and member addresses are dropped (the new cluster has its
/// own). Refuses a damaged or truncated file.
pub fn restore(backup: &Path, snap_dir: &Path) -> io::Result<SmData> {
    let (_meta, data) = load_backup(backup)?;
    let base = SmData {
        kv: data.kv,
        ..SmData::default()
    };
    write_snapshot_file(
        snap_dir,
        &snapshot_file::file_name(0, 0),
        &meta_of(&base),
        &base,
    )?;
    Ok(base)
}

impl SmStore {
    /// Opens the state in `snap_dir`: the newest snapshot, or an empty state.
    pub fn open(snap_dir: &Path) -> io::Result<Self> {
        Self::open_with(snap_dir, Arc::default())
    }

    /// [`SmStore::open`], reporting slow applies, snapshot commits and
    /// slow-watcher cancels to `telemetry`.
    pub fn open_with(snap_dir: &Path, telemetry: Arc<Telemetry>) -> io::Result<Self> {
        std::fs::create_dir_all(snap_dir)
            .map_err(|e| other(format!("create {}: {e}", snap_dir.display())))?;
        // Nothing is receiving or writing a snapshot yet: temp files here
        // are left over from a crash.
        snapshot_file::remove_stale_temp_files(snap_dir)?;
        let cold = open_cold(snap_dir);
        let (data, current, decoded_cold) = match snapshot_file::newest(snap_dir)? {
            Some(path) => {
                let (meta, data, moved) = load_snapshot_into(&path, cold.as_ref())?;
                tracing::info!(snapshot = %path.display(), last = ?meta.last_log_id, "loaded snapshot");
                // A restored backup (`warden snapshot restore`) is a base
                // state under an empty log, not a Raft snapshot to offer.
                let current = meta.last_log_id.is_some().then_some((meta, path));
                (data, current, moved)
            }
            None => {
                let mut empty = SmData::default();
                empty.kv.set_cold(cold.clone());
                (empty, None, 0)
            }
        };
        // A loaded state spilled its history while it was decoded, and
        // keeps those scratch files.
        let spilled = decoded_cold;
        if spilled > 0 {
            tracing::info!(
                values = spilled,
                "moved the values of superseded versions to scratch files"
            );
        }
        let applied = data.last_applied.map_or(0, |l| l.index);
        let (applied_tx, _) = watch::channel(applied);
        Ok(Self {
            shared: Arc::new(Shared {
                data: RwLock::new(data),
                hub: WatchHub::counting_cancels(telemetry.slow_watcher_cancels()),
                lock_feed: broadcast::channel(LOCK_FEED_CAPACITY).0,
                applied_tx,
                snap_dir: snap_dir.to_path_buf(),
                current: Mutex::new(current),
                lease_feed: LeaseFeed::default(),
                telemetry,
                cold,
                apply_failed: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Read access to the applied state.
    pub fn read(&self) -> io::Result<RwLockReadGuard<'_, SmData>> {
        self.shared.data.read().map_err(|_| lock_poisoned())
    }

    /// What the scratch files for superseded values hold.
    pub fn history_scratch(&self) -> warden_core::storage::cold::ColdStats {
        self.shared
            .cold
            .as_ref()
            .map(ColdStore::stats)
            .unwrap_or_default()
    }

    /// The watcher fan-out of this member.
    pub fn hub(&self) -> &WatchHub {
        &self.shared.hub
    }

    /// Lock table changes from now on. Subscribe before proposing a lock
    /// command to see every event it causes. A subscriber that falls more
    /// than `LOCK_FEED_CAPACITY` entries behind gets `Lagged` and must
    /// re-read the table.
    pub fn lock_feed(&self) -> broadcast::Receiver<LockFeed> {
        self.shared.lock_feed.subscribe()
    }

    /// Lease grants and revokes as they are applied (collected only while
    /// the lessor runs as leader; see `lessor`).
    pub(super) fn lease_feed(&self) -> &LeaseFeed {
        &self.shared.lease_feed
    }

    /// Index of the last applied entry, as a watch.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.shared.applied_tx.subscribe()
    }

    /// For a `Compact` entry, the compaction worked out on a copy of the
    /// store: on a blocking thread, with no lock held, so reads go on and
    /// async workers (heartbeats) are not held up however many keys there
    /// are. `apply_one` then only swaps the result in.
    async fn prepare(&self, entry: &super::types::Entry) -> io::Result<Option<Compaction>> {
        let cmd = match &entry.payload {
            EntryPayload::Normal(
                Request::Kv(cmd) | Request::KvAs { cmd, .. } | Request::KvOnce { cmd, .. },
            ) => cmd,
            _ => return Ok(None),
        };
        let Some((store, rev)) = self.read()?.kv.compaction_base(cmd) else {
            return Ok(None);
        };
        tokio::task::spawn_blocking(move || StateMachine::compact_copy(store, rev))
            .await
            .map(Some)
            .map_err(|e| io::Error::other(format!("compaction task ended: {e}")))
    }

    fn apply_one(
        &self,
        entry: super::types::Entry,
        prepared: Option<Compaction>,
    ) -> io::Result<Response> {
        let mut d = self.shared.data.write().map_err(|_| lock_poisoned())?;
        let log_id = entry.log_id;
        let resp = match entry.payload {
            EntryPayload::Blank => Response {
                revision: d.kv.revision(),
                result: Ok(None),
            },
            EntryPayload::Normal(Request::Kv(cmd)) => self.apply_kv(&mut d, &cmd, prepared),
            EntryPayload::Normal(Request::KvAs { user, cmd }) => {
                self.apply_kv_as(&mut d, user.as_deref(), &cmd, prepared)
            }
            EntryPayload::Normal(Request::KvOnce { user, cmd, tag }) => {
                // The session decides before anything else, so a retry is
                // answered as the first attempt was even if the auth store
                // or the alarms changed since.
                let mut sessions = std::mem::take(&mut d.sessions);
                let revision = d.kv.revision();
                let stored = sessions.apply_once(&tag, revision, || {
                    let r = self.apply_kv_as(&mut d, user.as_deref(), &cmd, prepared);
                    Stored {
                        revision: r.revision,
                        result: r.result,
                    }
                });
                d.sessions = sessions;
                Response {
                    revision: stored.revision,
                    result: stored.result,
                }
            }
            EntryPayload::Normal(Request::Auth(cmd)) => {
                let result = d.auth.apply(&cmd);
                Response {
                    revision: d.kv.revision(),
                    result: result
                        .map(|()| Some(CommandResult::Auth))
                        .map_err(StateError::Auth),
                }
            }
            EntryPayload::Normal(Request::Publish {
                node_id,
                name,
                client_addr,
            }) => {
                d.client_addrs.insert(node_id, client_addr);
                d.names.insert(node_id, name);
                Response {
                    revision: d.kv.revision(),
                    result: Ok(None),
                }
            }
            EntryPayload::Normal(Request::Alarm {
                action,
                member_id,
                alarm,
            }) => {
                let alarms = d.alarms.apply(action, member_id, alarm);
                Response {
                    revision: d.kv.revision(),
                    result: Ok(Some(CommandResult::Alarm(alarms))),
                }
            }
            EntryPayload::Membership(m) => {
                d.last_membership = StoredMembership::new(Some(entry.log_id), m);
                Response {
                    revision: d.kv.revision(),
                    result: Ok(None),
                }
            }
        };
        if let Err(StateError::HistoryRead(e)) = &resp.result {
            // A write needing a value this member could not read back: the
            // others applied it, this one rolled it back. Answering would
            // let it drift from them; stop instead, as on a failed log
            // write (the command is not marked applied, and a restart
            // replays it from the snapshot and the log).
            self.shared
                .apply_failed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(other(format!(
                "applying log entry {log_id}: {e}; stopping this member rather than diverge"
            )));
        }
        d.last_applied = Some(log_id);
        Ok(resp)
    }

    /// Applies a key-value command a client sent as `user`, if the auth
    /// store allows it at this point of the log.
    fn apply_kv_as(
        &self,
        d: &mut SmData,
        user: Option<&str>,
        cmd: &Command,
        prepared: Option<Compaction>,
    ) -> Response {
        match d.auth.check_command(user, cmd, &d.kv) {
            Ok(()) => self.apply_kv(d, cmd, prepared),
            Err(e) => Response {
                revision: d.kv.revision(),
                result: Err(StateError::Auth(e)),
            },
        }
    }

    /// Applies a key-value command (already allowed by the auth store).
    fn apply_kv(&self, d: &mut SmData, cmd: &Command, prepared: Option<Compaction>) -> Response {
        // etcd's capped applier: while NOSPACE is raised, commands that add
        // data are refused, the same way on every member.
        if cmd.quota_cost() > 0 && d.alarms.has(AlarmType::NoSpace) {
            return Response {
                revision: d.kv.revision(),
                result: Err(StateError::NoSpace),
            };
        }
        let applied = d.kv.apply_prepared(cmd, prepared);
        if applied.result.is_ok() {
            // Under the write lock, so the lessor's take-over (under the
            // read lock) sees each change either in the table or in the
            // feed, never both or neither.
            self.shared.lease_feed.applied(cmd);
        }
        // Published under the write lock: see watch_hub's module doc.
        self.shared.hub.publish(applied.revision, &applied.events);
        if !applied.lock_events.is_empty() {
            // No receivers is fine.
            let _ = self.shared.lock_feed.send(LockFeed::Events {
                revision: applied.revision,
                events: Arc::new(applied.lock_events),
            });
        }
        Response {
            revision: applied.revision,
            result: applied.result.map(Some),
        }
    }

    fn set_current(&self, meta: SnapshotMeta, path: PathBuf) -> io::Result<()> {
        snapshot_file::remove_others(&self.shared.snap_dir, &path)?;
        let mut cur = self.shared.current.lock().map_err(|_| lock_poisoned())?;
        *cur = Some((meta, path));
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SmStore {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<RaftSnapshot, io::Error> {
        let data = self.read()?.clone();
        if self
            .shared
            .apply_failed
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(other(
                "not taking a snapshot: an entry failed to apply and this member is stopping"
                    .into(),
            ));
        }
        let meta = meta_of(&data);
        let dir = self.shared.snap_dir.clone();
        let meta2 = meta.clone();
        let telemetry = self.shared.telemetry.clone();
        let path = tokio::task::spawn_blocking(move || -> io::Result<PathBuf> {
            let (index, term) = meta2
                .last_log_id
                .map_or((0, 0), |l| (l.index, l.leader_id.term));
            let started = std::time::Instant::now();
            let path =
                write_snapshot_file(&dir, &snapshot_file::file_name(index, term), &meta2, &data)?;
            telemetry.backend_committed(started.elapsed());
            Ok(path)
        })
        .await
        .map_err(|e| other(format!("snapshot task failed: {e}")))??;
        tracing::info!(snapshot = %path.display(), "built snapshot");
        self.set_current(meta.clone(), path.clone())?;
        Ok(Snapshot {
            meta,
            snapshot: SnapshotFile { path },
        })
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let d = self.read()?;
        Ok((d.last_applied, d.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let index = entry.log_id.index;
            let started = std::time::Instant::now();
            let prepared = self.prepare(&entry).await?;
            let resp = self.apply_one(entry, prepared)?;
            self.shared.telemetry.applied(started.elapsed());
            self.shared.applied_tx.send_replace(index);
            if let Some(r) = responder {
                r.send(resp);
            }
        }
        // What this batch superseded goes to the scratch files in one write
        // (after the answers: nothing waits for it).
        self.shared
            .data
            .write()
            .map_err(|_| lock_poisoned())?
            .kv
            .flush_spills();
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let src = snapshot.path.clone();
        let dir = self.shared.snap_dir.clone();
        let (index, term) = meta
            .last_log_id
            .map_or((0, 0), |l| (l.index, l.leader_id.term));
        let cold = self.shared.cold.clone();
        let (data, path) = tokio::task::spawn_blocking(move || -> io::Result<(SmData, PathBuf)> {
            let (_m, data, _) = load_snapshot_into(&src, cold.as_ref())?;
            let dst = dir.join(snapshot_file::file_name(index, term));
            if src != dst {
                std::fs::rename(&src, &dst).map_err(|e| {
                    other(format!(
                        "move snapshot {} to {}: {e}",
                        src.display(),
                        dst.display()
                    ))
                })?;
                std::fs::File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| other(format!("sync {}: {e}", dir.display())))?;
            }
            Ok((data, dst))
        })
        .await
        .map_err(|e| other(format!("snapshot task failed: {e}")))??;
        if data.last_applied != meta.last_log_id {
            return Err(other(format!(
                "received snapshot ends at {:?}, expected {:?}",
                data.last_applied, meta.last_log_id
            )));
        }
        {
            let mut d = self.shared.data.write().map_err(|_| lock_poisoned())?;
            *d = data;
            // No event stream exists across a snapshot: watchers re-sync.
            self.shared.hub.drop_all();
            let _ = self.shared.lock_feed.send(LockFeed::Resync);
            // A lessor collecting changes must read the table afresh.
            self.shared.lease_feed.stop();
        }
        self.shared.applied_tx.send_replace(index);
        self.set_current(meta.clone(), path)?;
        tracing::info!(last = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<RaftSnapshot>, io::Error> {
        let cur = self.shared.current.lock().map_err(|_| lock_poisoned())?;
        Ok(cur.as_ref().map(|(meta, path)| Snapshot {
            meta: meta.clone(),
            snapshot: SnapshotFile { path: path.clone() },
        }))
    }
}

/// Golden bytes: a snapshot file and a backup written by the code before the
/// frame was shared (byte for byte what this build writes too), decoded to
/// the sample values and re-encoded to the same bytes.
#[cfg(test)]
mod golden {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(samples::FIXTURES)
            .join(name)
    }

    #[test]
    fn snapshot_file_decodes_and_reencodes_exactly() {
        let path = fixture("pre-snapshot.snap");
        let (meta, data) = load_snapshot(&path).unwrap();
        let want = samples::data();
        assert_eq!(data, want);
        assert_eq!(meta, meta_of(&want));
        assert_eq!(
            encode_snapshot(&meta_of(&want), &want).unwrap(),
            std::fs::read(&path).unwrap(),
            "the snapshot format changed: bump FORMAT_VERSION"
        );
        // Written streamed, the file has the same bytes.
        let dir = tempfile::tempdir().unwrap();
        let written = write_snapshot_file(dir.path(), "s.snap", &meta_of(&want), &want).unwrap();
        assert_eq!(
            std::fs::read(written).unwrap(),
            std::fs::read(&path).unwrap()
        );
    }

    #[test]
    fn backup_decodes_and_reencodes_exactly() {
        let path = fixture("pre-backup.db");
        let (meta, data) = load_backup(&path).unwrap();
        assert_eq!(data, samples::data());
        assert_eq!(meta, meta_of(&data));
        assert_eq!(
            export(&samples::data()).unwrap(),
            std::fs::read(&path).unwrap(),
            "the backup format changed: bump FORMAT_VERSION"
        );
        // And restores into a member that starts from its state.
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("snap");
        let base = restore(&path, &snap).unwrap();
        assert_eq!(base.kv, samples::data().kv);
        let st = SmStore::open(&snap).unwrap();
        assert_eq!(st.read().unwrap().kv, samples::data().kv);
    }

    #[test]
    fn future_versions_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = std::fs::read(fixture("pre-snapshot.snap")).unwrap();
        raw[8] = 99;
        let snap = dir.path().join("snap");
        snapshot_file::write_atomic(&snap, &snapshot_file::file_name(5, 2), &raw).unwrap();
        let e = SmStore::open(&snap).err().unwrap().to_string();
        assert!(e.contains("format version 99"), "{e}");
        assert!(e.contains("reads version 1"), "{e}");
        assert!(e.contains("snap-"), "names the file: {e}");
        // The same frame inside a sealed backup.
        let backup = dir.path().join("backup.db");
        std::fs::write(&backup, snapshot_file::seal_backup(raw)).unwrap();
        let e = load_backup(&backup).unwrap_err().to_string();
        assert!(e.contains("format version 99"), "{e}");
    }

    #[test]
    fn trailing_bytes_in_a_section_are_refused() {
        let data = samples::data();
        let m = postcard::to_allocvec(&meta_of(&data)).unwrap();
        let mut b = postcard::to_allocvec(&data).unwrap();
        b.push(0);
        let e = parse_snapshot(Path::new("x.snap"), &m, &b).unwrap_err();
        assert!(e.to_string().contains("trailing"), "{e}");
    }

    /// The alarm table follows the state only when it is not empty: the
    /// bytes before it are exactly those of the same state without alarms
    /// (so every older snapshot loads, with no alarms), and it survives a
    /// snapshot and a backup.
    #[test]
    fn alarms_are_appended_after_the_state_and_round_trip() {
        use warden_core::state::alarm::AlarmAction;
        let plain = samples::data();
        let mut data = samples::data();
        data.alarms
            .apply(AlarmAction::Activate, 7, AlarmType::NoSpace);
        let old = encode_snapshot(&meta_of(&plain), &plain).unwrap();
        let new = encode_snapshot(&meta_of(&data), &data).unwrap();
        assert_ne!(old, new);
        let (_, m1, b1) = split(&old);
        let (_, m2, b2) = split(&new);
        assert_eq!(m1, m2);
        assert!(b2.starts_with(&b1), "the state's bytes are unchanged");
        let (_, back) = parse_snapshot(Path::new("x.snap"), &m2, &b2).unwrap();
        assert_eq!(back.alarms, data.alarms);
        assert_eq!(back, data);
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join("b.db");
        std::fs::write(&backup, export(&data).unwrap()).unwrap();
        assert_eq!(load_backup(&backup).unwrap().1.alarms, data.alarms);
        // A damaged alarm section is refused, never dropped.
        let mut bad = b2.clone();
        bad.push(0);
        assert!(parse_snapshot(Path::new("x.snap"), &m2, &bad).is_err());
    }

    /// A proven hold in the state: its handle digest follows the alarm
    /// table and the auth store (written empty for it), so the bytes before
    /// are exactly those of the same state without digests; it survives a
    /// snapshot, a backup and a restore; a damaged or empty digest section
    /// is refused.
    #[test]
    fn lock_handle_digests_follow_the_auth_store_and_round_trip() {
        use warden_core::state::lock_table::{AcquireRequest, HandleDigest, LockMode};
        let plain = samples::data();
        let mut data = samples::data();
        data.kv.apply(&Command::LeaseGrant { id: 9, ttl: 60 });
        let mut stripped = data.clone();
        let req = AcquireRequest {
            name: "jobs".into(),
            mode: LockMode::Exclusive,
            lease: 9,
            priority: 0,
            owner: "me".into(),
            wait: true,
        };
        let proof = HandleDigest::of_handle(&[5; 16]);
        let a = data.kv.apply(&Command::LockAcquireProven {
            req: req.clone(),
            proof,
        });
        assert!(a.result.is_ok(), "{a:?}");
        assert!(stripped.kv.apply(&Command::LockAcquire(req)).result.is_ok());
        assert!(!data.kv.lock_proofs().is_empty());
        let with = encode_snapshot(&meta_of(&data), &data).unwrap();
        let without = encode_snapshot(&meta_of(&stripped), &stripped).unwrap();
        let (_, m, body) = split(&with);
        let (_, _, body_without) = split(&without);
        assert!(body.len() > body_without.len() && body.starts_with(&body_without));
        let (_, back) = parse_snapshot(Path::new("x.snap"), &m, &body).unwrap();
        assert_eq!(back, data);
        assert_eq!(back.kv.locks().token_with_proof("jobs", &proof), Some(1));
        // The sample state without locks keeps its bytes (the golden tests).
        assert_eq!(
            encode_snapshot(&meta_of(&plain), &plain).unwrap(),
            std::fs::read(fixture("pre-snapshot.snap")).unwrap()
        );
        // A backup and a restore carry the digests.
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join("b.db");
        std::fs::write(&backup, export(&data).unwrap()).unwrap();
        assert_eq!(load_backup(&backup).unwrap().1, data);
        let restored = restore(&backup, &dir.path().join("snap")).unwrap();
        assert_eq!(restored.kv.lock_proofs(), data.kv.lock_proofs());
        let st = SmStore::open(&dir.path().join("snap")).unwrap();
        assert_eq!(st.read().unwrap().kv, data.kv);
        // With alarms and users too: every section, in order.
        let mut full = data.clone();
        full.alarms.apply(
            warden_core::state::alarm::AlarmAction::Activate,
            7,
            AlarmType::NoSpace,
        );
        let e = encode_snapshot(&meta_of(&full), &full).unwrap();
        let (_, m2, b2) = split(&e);
        assert_eq!(
            parse_snapshot(Path::new("x.snap"), &m2, &b2).unwrap().1,
            full
        );
        // Damage: an empty digest section (never written), a byte more, a
        // byte less, digests of a hold that does not exist.
        let mut empty = body_without.clone();
        empty.extend(postcard::to_allocvec(&AlarmTable::default()).unwrap());
        empty.extend(postcard::to_allocvec(&AuthStore::default()).unwrap());
        let auth_only = empty.clone();
        empty.extend(postcard::to_allocvec(&LockProofs::default()).unwrap());
        for bad in [
            empty,
            auth_only,
            [body.clone(), vec![0]].concat(),
            body[..body.len() - 1].to_vec(),
        ] {
            assert!(parse_snapshot(Path::new("x.snap"), &m, &bad).is_err());
        }
        let mut foreign = postcard::to_allocvec(&plain).unwrap();
        foreign.extend(postcard::to_allocvec(&AlarmTable::default()).unwrap());
        foreign.extend(postcard::to_allocvec(&AuthStore::default()).unwrap());
        foreign.extend(postcard::to_allocvec(&data.kv.lock_proofs()).unwrap());
        let e = parse_snapshot(
            Path::new("x.snap"),
            &split(&encode_snapshot(&meta_of(&plain), &plain).unwrap()).1,
            &foreign,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lock handle digests"), "{e}");
    }

    /// (header, meta, body) of a framed snapshot.
    fn split(bytes: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let h = warden_core::storage::format::SNAPSHOT_HEADER_LEN;
        let len = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let (m, b) = (len(12), len(20));
        (
            bytes[..h].to_vec(),
            bytes[h..h + m].to_vec(),
            bytes[h + m..h + m + b].to_vec(),
        )
    }
}

#[cfg(test)]
mod streaming {
    use super::*;
    use warden_core::state::alarm::AlarmAction;
    use warden_core::state::types::PutRequest;
    use warden_core::state::Command;

    /// Samples: the fixture state, with alarms, and a larger one.
    fn states() -> Vec<SmData> {
        let mut alarmed = samples::data();
        alarmed
            .alarms
            .apply(AlarmAction::Activate, 7, AlarmType::NoSpace);
        let mut big = samples::data();
        for i in 0..300u32 {
            big.kv.apply(&Command::Put(PutRequest {
                key: format!("key/{i:04}").into_bytes(),
                value: vec![(i % 251) as u8; (i as usize * 13) % 700],
                ..Default::default()
            }));
        }
        vec![samples::data(), alarmed, big]
    }

    #[test]
    fn encoder_writes_the_exported_bytes() {
        for data in states() {
            let want = export(&data).unwrap();
            let enc = BackupEncoder::new(&data).unwrap();
            assert_eq!(enc.len(), want.len() as u64);
            assert_eq!(enc.write_to(Vec::new()).unwrap(), want);
        }
        // The golden backup fixture, streamed.
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(samples::FIXTURES)
            .join("pre-backup.db");
        let data = samples::data();
        assert_eq!(
            BackupEncoder::new(&data)
                .unwrap()
                .write_to(Vec::new())
                .unwrap(),
            std::fs::read(fixture).unwrap()
        );
    }

    #[tokio::test]
    async fn streamed_chunks_are_the_exported_bytes() {
        for data in states() {
            let want = export(&data).unwrap();
            for chunk in [1, 7, 512, 4096, 1 << 20] {
                let mut s = stream_backup(data.clone(), chunk, 2);
                assert_eq!(s.len.await.unwrap().unwrap(), want.len() as u64);
                let mut got = Vec::new();
                let mut pieces = 0;
                while let Some(c) = s.chunks.recv().await {
                    let c = c.unwrap();
                    assert!(c.len() <= chunk && !c.is_empty());
                    got.extend_from_slice(&c);
                    pieces += 1;
                }
                assert_eq!(got, want, "chunk {chunk}");
                assert_eq!(pieces, want.len().div_ceil(chunk), "chunk {chunk}");
                s.task.await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn encoding_stops_when_the_reader_goes_away() {
        let data = states().pop().unwrap();
        let mut s = stream_backup(data, 64, 2);
        assert!(s.len.await.unwrap().unwrap() > 64 * 10);
        assert_eq!(s.chunks.recv().await.unwrap().unwrap().len(), 64);
        drop(s.chunks);
        tokio::time::timeout(std::time::Duration::from_secs(10), s.task)
            .await
            .expect("the encoding task stops")
            .unwrap();
    }
}

/// Fixed sample values behind the golden-bytes fixtures in
/// `crates/warden-core/tests/fixtures/`. Changing any value here changes the
/// fixtures: don't.
#[cfg(test)]
pub(crate) mod samples {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::testing::log_id;
    use openraft::{EntryPayload, Membership};
    use warden_core::state::types::PutRequest;
    use warden_core::state::{Command, StateMachine};

    use super::SmData;
    use crate::node::types::{Entry, LogId, Member, Request, StoredMembership, TypeConfig, Vote};

    /// Where the fixtures live, from this crate's manifest dir.
    pub const FIXTURES: &str = "../warden-core/tests/fixtures";

    pub fn put() -> Command {
        Command::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    pub fn entry() -> Entry {
        Entry {
            log_id: log_id::<TypeConfig>(2, 1, 5),
            payload: EntryPayload::Normal(Request::kv(put())),
        }
    }

    pub fn vote() -> Vote {
        Vote::new_committed(2, 1)
    }

    pub fn committed() -> Option<LogId> {
        Some(log_id::<TypeConfig>(2, 1, 5))
    }

    pub fn purged() -> LogId {
        log_id::<TypeConfig>(1, 1, 3)
    }

    pub fn data() -> SmData {
        let mut kv = StateMachine::new();
        kv.apply(&put());
        let member = Member {
            name: "n1".into(),
            peer_addr: "127.0.0.1:2380".into(),
        };
        let membership = Membership::new(
            vec![BTreeSet::from([1u64])],
            BTreeMap::from([(1u64, member)]),
        )
        .expect("valid membership");
        SmData {
            kv,
            last_applied: Some(log_id::<TypeConfig>(2, 1, 5)),
            last_membership: StoredMembership::new(Some(log_id::<TypeConfig>(1, 1, 1)), membership),
            client_addrs: BTreeMap::from([(1, "127.0.0.1:2379".to_string())]),
            names: BTreeMap::from([(1, "n1".to_string())]),
            alarms: Default::default(),
            auth: Default::default(),
            sessions: Default::default(),
        }
    }
}

/// Exactly-once apply through `Request::KvOnce`, and the session section
/// of snapshots.
#[cfg(test)]
mod sessions {
    use super::*;
    use openraft::testing::log_id;
    use warden_core::state::session::SessionTag;

    fn tagged(index: u64, request_id: u64, value: &str) -> super::super::types::Entry {
        super::super::types::Entry {
            log_id: log_id::<TypeConfig>(2, 1, index),
            payload: EntryPayload::Normal(Request::KvOnce {
                user: None,
                cmd: std::sync::Arc::new(Command::Put(warden_core::state::types::PutRequest {
                    key: b"once".to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                })),
                tag: SessionTag {
                    client_id: "job7".into(),
                    request_id,
                    acked_below: 0,
                    at_ms: 1_000 + index,
                },
            }),
        }
    }

    fn version(st: &SmStore) -> i64 {
        st.read()
            .unwrap()
            .kv
            .mvcc()
            .get_meta(b"once")
            .map_or(0, |kv| kv.version)
    }

    #[test]
    fn a_retry_is_answered_again_also_after_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let st = SmStore::open(&dir.path().join("a")).unwrap();
        let first = st.apply_one(tagged(6, 100, "v1"), None).unwrap();
        let Ok(Some(CommandResult::Put(_))) = first.result else {
            panic!("{first:?}")
        };
        // A retry in a later entry (proposed again after a leader change).
        let again = st.apply_one(tagged(7, 100, "v2"), None).unwrap();
        assert_eq!(again.revision, first.revision);
        assert_eq!(format!("{:?}", again.result), format!("{:?}", first.result));
        assert_eq!(version(&st), 1, "applied once");
        // Snapshot, then a member that starts from it (restart or install).
        let data = st.read().unwrap().clone();
        assert_eq!(data.sessions.len(), 1);
        let path =
            write_snapshot_file(&dir.path().join("b"), "snap-1.snap", &meta_of(&data), &data)
                .unwrap();
        let (_, loaded) = load_snapshot(&path).unwrap();
        assert_eq!(loaded, data);
        let other = SmStore::open(&dir.path().join("b")).unwrap();
        let retry = other.apply_one(tagged(8, 100, "v3"), None).unwrap();
        assert_eq!(retry.revision, first.revision);
        assert_eq!(version(&other), 1, "not applied again after the snapshot");
        // A new request id applies.
        let next = other.apply_one(tagged(9, 101, "v4"), None).unwrap();
        assert_eq!(next.revision, first.revision + 1);
        assert_eq!(version(&other), 2);
    }

    /// The session table is the fifth section, after the lock handle
    /// digests (written empty for it): the bytes before it are those of the
    /// same state without sessions, so older snapshots load with none, and
    /// an empty or damaged session section is refused.
    #[test]
    fn sessions_follow_the_digests_and_round_trip() {
        let plain = samples::data();
        let mut data = samples::data();
        data.sessions.apply_once(
            &SessionTag {
                client_id: "c".into(),
                request_id: 1,
                acked_below: 0,
                at_ms: 5,
            },
            2,
            || warden_core::state::session::Stored {
                revision: 2,
                result: Ok(None),
            },
        );
        let with = encode_snapshot(&meta_of(&data), &data).unwrap();
        let without = encode_snapshot(&meta_of(&plain), &plain).unwrap();
        let (_, m, body) = golden_split(&with);
        let (_, _, body_without) = golden_split(&without);
        assert!(body.len() > body_without.len() && body.starts_with(&body_without));
        let (_, back) = parse_snapshot(Path::new("x.snap"), &m, &body).unwrap();
        assert_eq!(back, data);
        // Backups carry them too.
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join("b.db");
        std::fs::write(&backup, export(&data).unwrap()).unwrap();
        assert_eq!(load_backup(&backup).unwrap().1, data);
        // The plain state still has the bytes of the golden fixture.
        assert_eq!(
            without,
            std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join(samples::FIXTURES)
                    .join("pre-snapshot.snap")
            )
            .unwrap()
        );
        let mut empty = body_without.clone();
        empty.extend(postcard::to_allocvec(&AlarmTable::default()).unwrap());
        empty.extend(postcard::to_allocvec(&AuthStore::default()).unwrap());
        empty.extend(postcard::to_allocvec(&LockProofs::default()).unwrap());
        let no_sessions = empty.clone();
        empty.extend(postcard::to_allocvec(&SessionTable::default()).unwrap());
        for bad in [
            empty,
            no_sessions,
            [body.clone(), vec![0]].concat(),
            body[..body.len() - 1].to_vec(),
        ] {
            assert!(parse_snapshot(Path::new("x.snap"), &m, &bad).is_err());
        }
    }

    /// (header, meta, body) of a framed snapshot.
    fn golden_split(bytes: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let h = warden_core::storage::format::SNAPSHOT_HEADER_LEN;
        let len = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let (m, b) = (len(12), len(20));
        (
            bytes[..h].to_vec(),
            bytes[h..h + m].to_vec(),
            bytes[h + m..h + m + b].to_vec(),
        )
    }
}
