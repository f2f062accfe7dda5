//! The state machine the Raft log drives: the `Command`s that go into the
//! log, `StateMachine::apply` (command → result, new revision, events), reads
//! served outside the log, and the snapshot format.
//!
//! Snapshots: [`StateMachine::to_snapshot_bytes`] is the postcard encoding
//! of the `StateMachine` in the one snapshot frame of
//! [`crate::storage::format`] (magic `WDNSNAPF`, format version, lengths,
//! CRC32), with an empty meta section; member snapshot files and backups use
//! the same frame with the Raft metadata as meta. The version in the frame
//! versions this encoding too: reordering a `Command` variant or a field of
//! the state changes what stored bytes mean, so it must bump
//! [`crate::storage::format::FORMAT_VERSION`] (see that module).
//!
//! The body is the postcard encoding of the `StateMachine`, followed, only
//! when some hold or wait has a lock handle digest, by the
//! [`LockProofs`] section (the digests are not part of the derived
//! encoding): a state without digests has exactly the bytes of builds before
//! lock handles, and such a build refuses a snapshot with digests (trailing
//! bytes) rather than dropping them. Member snapshots
//! (`warden_server::node::state_machine`) carry the same section after
//! their own trailing sections.
//!
//! Encoding is deterministic (ordered maps only), so replicas that applied the
//! same commands produce byte-identical snapshots. A snapshot with a wrong
//! magic, version, length or checksum, or a body that does not decode to a
//! consistent store, is refused with a [`SnapshotError`] naming the problem.
//! Snapshots of builds before the frame was shared (magic `WDNSNAP1`) were
//! only ever made by tests, never stored in a data dir: they are refused as
//! foreign (bad magic).
//! Like the rest of `state`, nothing here does IO or reads clocks.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::alarm::AlarmMember;
use super::error::{SnapshotError, StateError};
use super::lease::LeaseTable;
use super::lock_table::{
    AcquireOutcome, AcquireRequest, HandleDigest, LockError, LockEvent, LockProofs, LockTable,
};
use super::mvcc::{self, MvccStore};
use crate::storage::cold::ColdStore;
use crate::storage::format;

use super::types::{
    CompactionRequest, DeleteRangeRequest, DeleteRangeResponse, Event, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};

/// A write, as proposed to and committed in the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    /// Create a lease; the proposer chose the id.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Delete a lease and its keys (revoked by a client, or expired).
    LeaseRevoke {
        id: i64,
    },
    /// Record remaining TTLs, in milliseconds, by lease id.
    LeaseCheckpoint {
        checkpoints: Vec<(i64, i64, u64)>,
    },
    /// Acquire (or queue for, or try) a named lock.
    LockAcquire(AcquireRequest),
    /// Release a hold by its token.
    LockRelease {
        name: String,
        token: u64,
    },
    /// Withdraw a queued waiter.
    LockCancel {
        name: String,
        waiter_id: u64,
    },
    /// A key-value write that applies only while `token` holds lock `name`
    /// (checked when applied, in log order, so no stale holder gets through).
    Fenced {
        name: String,
        token: u64,
        /// Decoding is depth-bounded (`nesting`), like every recursive field.
        #[serde(deserialize_with = "super::nesting::bounded")]
        command: Box<Command>,
    },
    /// [`Command::LockAcquire`] proven by `proof`, the digest of the secret
    /// handle the proposing member drew for its client: the hold (or the
    /// wait, and the hold it becomes) can then only be released or fence a
    /// write by a command carrying the same digest. What members propose
    /// for every acquire. The three `…Proven` variants are appended after
    /// the others, whose encoding is unchanged; they answer as their plain
    /// twins.
    LockAcquireProven {
        req: AcquireRequest,
        proof: HandleDigest,
    },
    /// Release a hold by its token, proven by its handle's digest.
    LockReleaseProven {
        name: String,
        token: u64,
        proof: HandleDigest,
    },
    /// [`Command::Fenced`], proven by the holder's handle digest.
    FencedProven {
        name: String,
        token: u64,
        proof: HandleDigest,
        /// Decoding is depth-bounded (`nesting`), like every recursive field.
        #[serde(deserialize_with = "super::nesting::bounded")]
        command: Box<Command>,
    },
}

/// The successful outcome of a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact,
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke,
    LeaseCheckpoint,
    LockAcquire(AcquireOutcome),
    LockRelease,
    LockCancel,
    /// The alarms an alarm request concerns (applied by the server, which
    /// keeps the `alarm::AlarmTable`; appended last so the encoding of the
    /// other variants is unchanged).
    Alarm(Vec<AlarmMember>),
    /// A change to the auth store was applied (appended after `Alarm`).
    Auth,
}

/// etcd's `leaseOverhead`: what a lease costs against the quota and adds to
/// [`StateMachine::size`].
pub const LEASE_OVERHEAD: u64 = 64;

/// What an empty state counts in [`StateMachine::size`]: the size etcd
/// reports for a fresh backend (20 KiB of bbolt meta, freelist and bucket
/// pages), so an empty member reports a non-zero `db_size` as etcd does and
/// a quota leaves the same room as on etcd.
pub const EMPTY_STATE_SIZE: u64 = 20 * 1024;

/// The quota cost of one put (etcd `costPut`): key, value and
/// [`mvcc::VERSION_OVERHEAD`].
fn put_cost(p: &PutRequest) -> u64 {
    (p.key.len() as u64)
        .saturating_add(p.value.len() as u64)
        .saturating_add(mvcc::VERSION_OVERHEAD)
}

/// The quota cost of one txn branch: its puts, nested txns included.
fn ops_cost(ops: &[RequestOp]) -> u64 {
    ops.iter().fold(0u64, |acc, op| {
        acc.saturating_add(match op {
            RequestOp::Put(p) => put_cost(p),
            RequestOp::Txn(t) => txn_cost(t),
            RequestOp::Range(_) | RequestOp::DeleteRange(_) => 0,
        })
    })
}

/// etcd `costTxn`: the costlier branch.
fn txn_cost(t: &TxnRequest) -> u64 {
    ops_cost(&t.success).max(ops_cost(&t.failure))
}

impl Command {
    /// What this command may add to the state, as etcd's quota estimates it
    /// (`backendQuota.Cost`): a put's key and value plus
    /// [`mvcc::VERSION_OVERHEAD`], a txn's costlier branch, a lease grant
    /// [`LEASE_OVERHEAD`], a lock acquire [`LEASE_OVERHEAD`] (a holder or
    /// waiter entry), a fenced write its inner command. 0 for commands that
    /// only remove or record (delete, compact, revoke, checkpoint, release,
    /// cancel): those still apply while the `NOSPACE` alarm is active.
    pub fn quota_cost(&self) -> u64 {
        match self {
            Command::Put(p) => put_cost(p),
            Command::Txn(t) => txn_cost(t),
            Command::LeaseGrant { .. }
            | Command::LockAcquire(_)
            | Command::LockAcquireProven { .. } => LEASE_OVERHEAD,
            Command::Fenced { command, .. } | Command::FencedProven { command, .. } => {
                command.quota_cost()
            }
            Command::DeleteRange(_)
            | Command::Compact(_)
            | Command::LeaseRevoke { .. }
            | Command::LeaseCheckpoint { .. }
            | Command::LockRelease { .. }
            | Command::LockReleaseProven { .. }
            | Command::LockCancel { .. } => 0,
        }
    }
}

/// What applying one command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The response, or the error the command failed with (then nothing
    /// changed).
    pub result: Result<CommandResult, StateError>,
    /// The store revision after the apply (the response header revision).
    pub revision: i64,
    /// Key changes in apply order, for watchers. Empty on error.
    pub events: Vec<Event>,
    /// Lock table changes in order (grants, releases, expiries, queueing).
    pub lock_events: Vec<LockEvent>,
}

/// A `Compact` worked out on a copy of the store
/// ([`StateMachine::compact_copy`]), for [`StateMachine::apply_prepared`].
#[derive(Debug)]
pub struct Compaction {
    /// Current revision, compact revision and size of the copy before.
    base: (i64, i64, u64),
    rev: i64,
    store: MvccStore,
    result: Result<(), StateError>,
}

/// The replicated state. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    mvcc: MvccStore,
    leases: LeaseTable,
    locks: LockTable,
}

impl StateMachine {
    /// A fresh state machine (store at revision 1).
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one committed command. Deterministic: the same command on
    /// the same state gives the same `Applied` and the same new state.
    pub fn apply(&mut self, cmd: &Command) -> Applied {
        let mut lock_events = Vec::new();
        let (result, events) = self.apply_inner(cmd, &mut lock_events);
        self.leases.track(&events);
        Applied {
            result,
            revision: self.mvcc.current_revision(),
            events,
            lock_events,
        }
    }

    /// For a `Compact`, a copy of the store to compact (O(1): the key map
    /// is persistent) and the revision; `None` for any other command.
    /// Compaction walks every key; with this, [`StateMachine::compact_copy`]
    /// and [`StateMachine::apply_prepared`] a caller can do that walk where
    /// it holds no lock on the state and blocks no async worker.
    pub fn compaction_base(&self, cmd: &Command) -> Option<(MvccStore, i64)> {
        match cmd {
            Command::Compact(req) => Some((self.mvcc.clone(), req.revision)),
            _ => None,
        }
    }

    /// Compacts a copy from [`StateMachine::compaction_base`].
    pub fn compact_copy(mut store: MvccStore, rev: i64) -> Compaction {
        let base = (
            store.current_revision(),
            store.compact_revision(),
            store.size(),
        );
        let result = store.compact(rev);
        Compaction {
            base,
            rev,
            store,
            result,
        }
    }

    /// `apply(cmd)`, using `prepared` if it is the compaction of this very
    /// command on this very store: then only the swap of the compacted
    /// store happens here. Otherwise (no compaction, another command, or
    /// the store changed since the copy) it is plain `apply`, so the result
    /// is always what `apply` gives.
    pub fn apply_prepared(&mut self, cmd: &Command, prepared: Option<Compaction>) -> Applied {
        let Some(c) = prepared else {
            return self.apply(cmd);
        };
        let same_store = (
            self.mvcc.current_revision(),
            self.mvcc.compact_revision(),
            self.mvcc.size(),
        ) == c.base;
        match cmd {
            Command::Compact(req) if req.revision == c.rev && same_store => {
                if c.result.is_ok() {
                    self.mvcc.replace_with_compacted(c.store);
                }
                Applied {
                    result: c.result.map(|()| CommandResult::Compact),
                    revision: self.mvcc.current_revision(),
                    events: Vec::new(),
                    lock_events: Vec::new(),
                }
            }
            _ => self.apply(cmd),
        }
    }

    fn apply_inner(
        &mut self,
        cmd: &Command,
        lock_events: &mut Vec<LockEvent>,
    ) -> (Result<CommandResult, StateError>, Vec<Event>) {
        let leases = &self.leases;
        match cmd {
            Command::Put(req) => match self.mvcc.put(req, leases) {
                Ok(w) => (Ok(CommandResult::Put(w.response)), w.events),
                Err(e) => (Err(e), Vec::new()),
            },
            Command::DeleteRange(req) => match self.mvcc.delete_range(req) {
                Ok(w) => (Ok(CommandResult::DeleteRange(w.response)), w.events),
                Err(e) => (Err(e), Vec::new()),
            },
            Command::Txn(req) => match self.mvcc.txn(req, leases) {
                Ok(w) => (Ok(CommandResult::Txn(w.response)), w.events),
                Err(e) => (Err(e), Vec::new()),
            },
            Command::Compact(req) => (
                self.mvcc
                    .compact(req.revision)
                    .map(|()| CommandResult::Compact),
                Vec::new(),
            ),
            Command::LeaseGrant { id, ttl } => (
                self.leases
                    .grant(*id, *ttl)
                    .map(|()| CommandResult::LeaseGrant { id: *id, ttl: *ttl }),
                Vec::new(),
            ),
            Command::LeaseRevoke { id } => {
                let Some(keys) = self
                    .leases
                    .get(*id)
                    .map(|l| l.keys.iter().cloned().collect::<Vec<_>>())
                else {
                    return (Err(StateError::LeaseNotFound), Vec::new());
                };
                // The keys go first: should deleting them fail, the revoke
                // fails with nothing changed, and the member stops
                // (`SmStore::apply`). Deleting reads no value (each delete
                // event carries where its value is: `Event::prev_cold`).
                match self.mvcc.delete_keys(&keys) {
                    Ok(w) => {
                        self.leases.revoke(*id).ok();
                        // Holds and waits on the lease end in the same entry.
                        lock_events.extend(self.locks.revoke_lease(*id));
                        (Ok(CommandResult::LeaseRevoke), w.events)
                    }
                    Err(e) => (Err(e), Vec::new()),
                }
            }
            Command::LeaseCheckpoint { checkpoints } => {
                self.leases.checkpoint(checkpoints);
                (Ok(CommandResult::LeaseCheckpoint), Vec::new())
            }
            Command::LockAcquire(req) => (self.acquire(req, None, lock_events), Vec::new()),
            Command::LockAcquireProven { req, proof } => {
                (self.acquire(req, Some(*proof), lock_events), Vec::new())
            }
            Command::LockRelease { name, token } => {
                let r = self.locks.release(name, *token);
                (released(r, lock_events), Vec::new())
            }
            Command::LockReleaseProven { name, token, proof } => {
                let r = self.locks.release_proven(name, *token, proof);
                (released(r, lock_events), Vec::new())
            }
            Command::LockCancel { name, waiter_id } => {
                match self.locks.cancel_waiter(name, *waiter_id) {
                    Ok(evs) => {
                        lock_events.extend(evs);
                        (Ok(CommandResult::LockCancel), Vec::new())
                    }
                    Err(e) => (Err(e.into()), Vec::new()),
                }
            }
            Command::Fenced {
                name,
                token,
                command,
            } => self.apply_fenced(name, *token, None, command, lock_events),
            Command::FencedProven {
                name,
                token,
                proof,
                command,
            } => self.apply_fenced(name, *token, Some(proof), command, lock_events),
        }
    }

    fn acquire(
        &mut self,
        req: &AcquireRequest,
        proof: Option<HandleDigest>,
        lock_events: &mut Vec<LockEvent>,
    ) -> Result<CommandResult, StateError> {
        if self.leases.get(req.lease).is_none() {
            return Err(StateError::LeaseNotFound);
        }
        let a = match proof {
            Some(p) => self.locks.acquire_proven(req, p),
            None => self.locks.acquire(req),
        }?;
        lock_events.extend(a.events);
        Ok(CommandResult::LockAcquire(a.outcome))
    }

    /// A fenced write: `command` applies only if `token` holds `name` and
    /// `proof` proves it (see `LockTable::prove`); otherwise nothing
    /// changes. A token that does not hold the lock is `FenceRejected` (a
    /// stale holder), a failed proof the lock error.
    fn apply_fenced(
        &mut self,
        name: &str,
        token: u64,
        proof: Option<&HandleDigest>,
        command: &Command,
        lock_events: &mut Vec<LockEvent>,
    ) -> (Result<CommandResult, StateError>, Vec<Event>) {
        match self.locks.prove(name, token, proof) {
            Ok(()) => {}
            Err(LockError::NoSuchLock { .. } | LockError::NotHolder { .. }) => {
                return (
                    Err(StateError::FenceRejected {
                        name: name.to_owned(),
                        token,
                    }),
                    Vec::new(),
                )
            }
            Err(e) => return (Err(e.into()), Vec::new()),
        }
        match command {
            Command::Put(_) | Command::DeleteRange(_) | Command::Txn(_) => {
                self.apply_inner(command, lock_events)
            }
            _ => (Err(StateError::FenceNotKv), Vec::new()),
        }
    }

    /// The lock table.
    pub fn locks(&self) -> &LockTable {
        &self.locks
    }

    /// The lease table.
    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// A read served outside the log (serializable, or after a read index).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StateError> {
        self.mvcc.range(req)
    }

    /// The size of the state the storage quota is checked against (etcd's
    /// backend size): [`EMPTY_STATE_SIZE`] plus [`MvccStore::size`] plus
    /// [`LEASE_OVERHEAD`] per lease. Maintained incrementally; the same on
    /// every replica.
    pub fn size(&self) -> u64 {
        let leases = (self.leases.len() as u64).saturating_mul(LEASE_OVERHEAD);
        EMPTY_STATE_SIZE
            .saturating_add(self.mvcc.size())
            .saturating_add(leases)
    }

    /// The current store revision.
    pub fn revision(&self) -> i64 {
        self.mvcc.current_revision()
    }

    /// The revision of the last compaction (0 if none).
    pub fn compact_revision(&self) -> i64 {
        self.mvcc.compact_revision()
    }

    /// See [`MvccStore::hash_kv`].
    pub fn hash_kv(&self, rev: i64) -> Result<u32, StateError> {
        self.mvcc.hash_kv(rev)
    }

    /// Checks the invariants a state built by `apply` always has. Callers
    /// that decode a `StateMachine` themselves (rather than through
    /// [`StateMachine::from_snapshot_bytes`], which runs this) should call it
    /// before trusting the result.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.mvcc.check_invariants()?;
        self.leases.check_invariants()?;
        self.locks.check_invariants()?;
        // Every hold and wait belongs to a live lease.
        for info in self.locks.locks_with_prefix("") {
            let leases = info
                .holders
                .iter()
                .map(|h| h.lease)
                .chain(info.waiters.iter().map(|w| w.lease));
            for lease in leases {
                if self.leases.get(lease).is_none() {
                    return Err(format!(
                        "lock {} is held or awaited under missing lease {lease:x}",
                        ShortBytes(info.name.as_bytes())
                    ));
                }
            }
        }
        // Every key a lease lists is live and carries that lease.
        for l in self.leases.iter() {
            for k in &l.keys {
                match self.mvcc.get_meta(k) {
                    Some(kv) if kv.lease == l.id => {}
                    _ => {
                        return Err(format!(
                            "lease {:x} lists key {} which does not carry it",
                            l.id,
                            ShortBytes(k)
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// See [`MvccStore::set_cold`]: superseded values go to `cold`.
    pub fn set_cold(&mut self, cold: Option<ColdStore>) -> usize {
        self.mvcc.set_cold(cold)
    }

    /// See [`MvccStore::flush_spills`]: what the writes since the last
    /// flush superseded goes to the scratch files, in one write.
    pub fn flush_spills(&mut self) -> usize {
        self.mvcc.flush_spills()
    }

    /// Read access to the key-value store.
    pub fn mvcc(&self) -> &MvccStore {
        &self.mvcc
    }

    /// Encodes the whole state as a snapshot (format in the module docs).
    ///
    /// Encoding cannot fail for these types (every collection has a known
    /// length); the `Result` only avoids a panic path.
    pub fn to_snapshot_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut body =
            postcard::to_stdvec(self).map_err(|e| SnapshotError::Encode(e.to_string()))?;
        let proofs = self.lock_proofs();
        if !proofs.is_empty() {
            body = postcard::to_extend(&proofs, body)
                .map_err(|e| SnapshotError::Encode(format!("lock handle digests: {e}")))?;
        }
        Ok(format::encode_snapshot(&[], &body))
    }

    /// The lock handle digests, which the derived encoding of the state
    /// leaves out: a snapshot writer appends them after the state when
    /// there are any (see the module docs).
    pub fn lock_proofs(&self) -> LockProofs {
        self.locks.proofs()
    }

    /// Puts the digests of [`StateMachine::lock_proofs`] back on a state
    /// decoded without them; an error (then discard the state) if they do
    /// not fit its lock table.
    pub fn restore_lock_proofs(&mut self, proofs: LockProofs) -> Result<(), String> {
        self.locks.restore_proofs(proofs)
    }

    /// Decodes a snapshot made by [`StateMachine::to_snapshot_bytes`],
    /// refusing anything truncated, foreign, corrupt, of another format
    /// version, or inconsistent.
    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let (meta, body) = format::decode_snapshot(bytes)?;
        if !meta.is_empty() {
            return Err(SnapshotError::UnexpectedMeta(meta.len()));
        }
        let (mut machine, rest): (StateMachine, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| SnapshotError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            // Only a non-empty digest section is ever written.
            let bad = || {
                SnapshotError::Decode(format!(
                    "{} trailing bytes after the state are not lock handle digests",
                    rest.len()
                ))
            };
            let (proofs, tail) =
                postcard::take_from_bytes::<LockProofs>(rest).map_err(|_| bad())?;
            if !tail.is_empty() || proofs.is_empty() {
                return Err(bad());
            }
            machine
                .restore_lock_proofs(proofs)
                .map_err(SnapshotError::Invalid)?;
        }
        machine.check_invariants().map_err(SnapshotError::Invalid)?;
        Ok(machine)
    }
}

/// The result of a release: its events recorded, or its error.
fn released(
    r: Result<Vec<LockEvent>, LockError>,
    lock_events: &mut Vec<LockEvent>,
) -> Result<CommandResult, StateError> {
    lock_events.extend(r?);
    Ok(CommandResult::LockRelease)
}

/// Writes at most 48 bytes of a key, escaped, then the total length if cut.
struct ShortBytes<'a>(&'a [u8]);

impl fmt::Display for ShortBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 48;
        f.write_str("\"")?;
        for &b in self.0.iter().take(MAX) {
            write!(f, "{}", std::ascii::escape_default(b))?;
        }
        f.write_str("\"")?;
        if self.0.len() > MAX {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put(p) => {
                write!(
                    f,
                    "put key={} ({} bytes)",
                    ShortBytes(&p.key),
                    p.value.len()
                )?;
                if p.lease != 0 {
                    write!(f, " lease={:x}", p.lease)?;
                }
                Ok(())
            }
            Command::DeleteRange(d) => {
                write!(f, "delete key={}", ShortBytes(&d.key))?;
                match d.range_end.as_slice() {
                    [] => Ok(()),
                    [0] => f.write_str(" range_end=<all after>"),
                    end => write!(f, " range_end={}", ShortBytes(end)),
                }
            }
            Command::Txn(t) => write!(
                f,
                "txn compares={} success={} failure={}",
                t.compare.len(),
                t.success.len(),
                t.failure.len()
            ),
            Command::Compact(c) => write!(f, "compact revision={}", c.revision),
            Command::LeaseGrant { id, ttl } => write!(f, "lease grant id={id:x} ttl={ttl}s"),
            Command::LeaseRevoke { id } => write!(f, "lease revoke id={id:x}"),
            Command::LeaseCheckpoint { checkpoints } => {
                write!(f, "lease checkpoint leases={}", checkpoints.len())
            }
            Command::LockAcquire(r) => write!(
                f,
                "lock acquire name={} mode={} lease={:x} wait={}",
                ShortBytes(r.name.as_bytes()),
                r.mode,
                r.lease,
                r.wait
            ),
            Command::LockRelease { name, token } => {
                write!(
                    f,
                    "lock release name={} token={token}",
                    ShortBytes(name.as_bytes())
                )
            }
            Command::LockCancel { name, waiter_id } => write!(
                f,
                "lock cancel name={} waiter={waiter_id}",
                ShortBytes(name.as_bytes())
            ),
            Command::Fenced {
                name,
                token,
                command,
            } => write!(
                f,
                "fenced by {}#{token}: {command}",
                ShortBytes(name.as_bytes())
            ),
            // Never the digest.
            Command::LockAcquireProven { req: r, .. } => write!(
                f,
                "lock acquire name={} mode={} lease={:x} wait={} (with handle)",
                ShortBytes(r.name.as_bytes()),
                r.mode,
                r.lease,
                r.wait
            ),
            Command::LockReleaseProven { name, token, .. } => write!(
                f,
                "lock release name={} token={token} (with handle)",
                ShortBytes(name.as_bytes())
            ),
            Command::FencedProven {
                name,
                token,
                command,
                ..
            } => write!(
                f,
                "fenced by {}#{token} (with handle): {command}",
                ShortBytes(name.as_bytes())
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::types::{EventKind, KeyValue};
    use crate::storage::format::FormatError;

    fn put(k: &str, v: &str) -> Command {
        Command::Put(PutRequest {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
            ..Default::default()
        })
    }

    fn sample() -> StateMachine {
        let mut m = StateMachine::new();
        for c in [
            put("a", "1"),
            put("b", "2"),
            put("a", "3"),
            Command::DeleteRange(DeleteRangeRequest {
                key: b"b".to_vec(),
                range_end: vec![],
                prev_kv: true,
            }),
            put("c", "4"),
            Command::Compact(CompactionRequest {
                revision: 3,
                physical: false,
            }),
        ] {
            assert!(m.apply(&c).result.is_ok(), "{c}");
        }
        m
    }

    fn put_with_lease(k: &str, lease: i64) -> Command {
        Command::Put(PutRequest {
            key: k.as_bytes().to_vec(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        })
    }

    #[test]
    fn lease_revoke_deletes_its_keys_in_one_revision() {
        let mut m = StateMachine::new();
        assert_eq!(
            m.apply(&put_with_lease("x", 5)).result,
            Err(StateError::LeaseNotFound)
        );
        let g = m.apply(&Command::LeaseGrant { id: 5, ttl: 10 });
        assert_eq!(g.result, Ok(CommandResult::LeaseGrant { id: 5, ttl: 10 }));
        assert_eq!(g.revision, 1, "a grant does not change the key revision");
        for k in ["a", "b", "c"] {
            assert!(m.apply(&put_with_lease(k, 5)).result.is_ok());
        }
        // `c` is rewritten without the lease: it must survive the revoke.
        assert!(m.apply(&put("c", "plain")).result.is_ok());
        assert!(m.check_invariants().is_ok());
        let before = m.revision();
        let r = m.apply(&Command::LeaseRevoke { id: 5 });
        assert_eq!(r.result, Ok(CommandResult::LeaseRevoke));
        assert_eq!(r.revision, before + 1);
        let deleted: Vec<&[u8]> = r.events.iter().map(|e| e.kv.key.as_slice()).collect();
        assert_eq!(deleted, vec![b"a".as_slice(), b"b".as_slice()]);
        assert!(r.events.iter().all(|e| e.kind == EventKind::Delete));
        assert!(m.mvcc().get_meta(b"c").is_some());
        assert_eq!(
            m.apply(&Command::LeaseRevoke { id: 5 }).result,
            Err(StateError::LeaseNotFound)
        );
        // Snapshots carry the lease table.
        m.apply(&Command::LeaseGrant { id: 6, ttl: 3 });
        m.apply(&Command::LeaseCheckpoint {
            checkpoints: vec![(6, 1500, 1)],
        });
        let bytes = m.to_snapshot_bytes().unwrap_or_default();
        let back = StateMachine::from_snapshot_bytes(&bytes);
        assert_eq!(back.as_ref().ok(), Some(&m));
        assert_eq!(
            back.ok()
                .and_then(|b| b.leases().get(6).map(|l| l.resume_ms())),
            Some(1500)
        );
    }

    fn acquire(name: &str, lease: i64, wait: bool) -> Command {
        Command::LockAcquire(AcquireRequest {
            name: name.into(),
            mode: crate::state::lock_table::LockMode::Exclusive,
            lease,
            priority: 0,
            owner: format!("owner-{lease}"),
            wait,
        })
    }

    #[test]
    fn locks_follow_leases_and_fence_writes() {
        let mut m = StateMachine::new();
        assert_eq!(
            m.apply(&acquire("L", 1, true)).result,
            Err(StateError::LeaseNotFound)
        );
        m.apply(&Command::LeaseGrant { id: 1, ttl: 10 });
        m.apply(&Command::LeaseGrant { id: 2, ttl: 10 });
        let a = m.apply(&acquire("L", 1, true));
        let Ok(CommandResult::LockAcquire(AcquireOutcome::Granted { token: t1 })) = a.result else {
            panic!("{a:?}")
        };
        assert_eq!(a.lock_events.len(), 1);
        let b = m.apply(&acquire("L", 2, true));
        assert!(matches!(
            b.result,
            Ok(CommandResult::LockAcquire(AcquireOutcome::Queued { .. }))
        ));
        let try_c = m.apply(&acquire("L", 2, false));
        assert_eq!(
            try_c.result,
            Ok(CommandResult::LockAcquire(AcquireOutcome::WouldBlock))
        );
        // A fenced write with the holder's token applies.
        let fenced = |token: u64, v: &str| Command::Fenced {
            name: "L".into(),
            token,
            command: Box::new(put("guarded", v)),
        };
        assert!(m.apply(&fenced(t1, "one")).result.is_ok());
        // The holder's lease is revoked: the waiter is granted in the same
        // entry, with a larger token.
        let r = m.apply(&Command::LeaseRevoke { id: 1 });
        let t2 = r
            .lock_events
            .iter()
            .find_map(|e| match e {
                LockEvent::Granted { token, .. } => Some(*token),
                _ => None,
            })
            .unwrap_or(0);
        assert!(t2 > t1, "{:?}", r.lock_events);
        assert!(r
            .lock_events
            .iter()
            .any(|e| matches!(e, LockEvent::Expired { token, .. } if *token == t1)));
        // The stale token is refused and changes nothing.
        let rev = m.revision();
        assert_eq!(
            m.apply(&fenced(t1, "stale")).result,
            Err(StateError::FenceRejected {
                name: "L".into(),
                token: t1
            })
        );
        assert_eq!(m.revision(), rev);
        assert!(m.apply(&fenced(t2, "two")).result.is_ok());
        assert_eq!(
            m.mvcc().get(b"guarded").unwrap().map(|kv| kv.value),
            Some(b"two".to_vec())
        );
        assert!(m.check_invariants().is_ok());
        let bytes = m.to_snapshot_bytes().unwrap_or_default();
        assert_eq!(StateMachine::from_snapshot_bytes(&bytes).ok(), Some(m));
    }

    #[test]
    fn size_counts_the_empty_state_versions_and_leases() {
        let mut m = StateMachine::new();
        assert_eq!(m.size(), EMPTY_STATE_SIZE);
        m.apply(&put("key", "value"));
        let one = 3 + 5 + mvcc::VERSION_OVERHEAD;
        assert_eq!(m.size(), EMPTY_STATE_SIZE + one);
        m.apply(&Command::LeaseGrant { id: 1, ttl: 10 });
        assert_eq!(m.size(), EMPTY_STATE_SIZE + one + LEASE_OVERHEAD);
        m.apply(&Command::LeaseRevoke { id: 1 });
        assert_eq!(m.size(), EMPTY_STATE_SIZE + one);
        // The quota cost of a put is what it adds.
        let p = put("other", "12");
        let before = m.size();
        m.apply(&p);
        assert_eq!(m.size() - before, p.quota_cost());
        let txn = Command::Txn(TxnRequest {
            compare: vec![],
            success: vec![RequestOp::Put(PutRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })],
            failure: vec![
                RequestOp::Put(PutRequest {
                    key: b"bb".to_vec(),
                    ..Default::default()
                }),
                RequestOp::DeleteRange(DeleteRangeRequest::default()),
            ],
        });
        assert_eq!(
            txn.quota_cost(),
            2 + mvcc::VERSION_OVERHEAD,
            "costlier branch"
        );
        assert_eq!(Command::LeaseRevoke { id: 1 }.quota_cost(), 0);
        assert_eq!(
            Command::Compact(CompactionRequest {
                revision: 1,
                physical: false
            })
            .quota_cost(),
            0
        );
    }

    #[test]
    fn apply_reports_revision_and_events() {
        let mut m = StateMachine::new();
        assert_eq!(m.revision(), 1);
        let a = m.apply(&put("k", "v"));
        assert_eq!(a.revision, 2);
        assert_eq!(
            a.result,
            Ok(CommandResult::Put(PutResponse { prev_kv: None }))
        );
        assert_eq!(a.events.len(), 1);
        assert_eq!(a.events[0].kind, EventKind::Put);
        let a = m.apply(&Command::DeleteRange(DeleteRangeRequest {
            key: b"k".to_vec(),
            range_end: vec![],
            prev_kv: false,
        }));
        assert_eq!(a.revision, 3);
        assert_eq!(
            a.events[0].kv,
            KeyValue {
                key: b"k".to_vec(),
                mod_revision: 3,
                ..Default::default()
            }
        );
        // Errors change nothing and report the unchanged revision.
        let a = m.apply(&Command::Compact(CompactionRequest {
            revision: 10,
            physical: false,
        }));
        assert_eq!(a.result, Err(StateError::FutureRevision));
        assert_eq!(a.revision, 3);
        assert!(a.events.is_empty());
        let a = m.apply(&Command::Compact(CompactionRequest {
            revision: 3,
            physical: true,
        }));
        assert_eq!(a.result, Ok(CommandResult::Compact));
        assert_eq!(a.revision, 3);
        assert_eq!(m.compact_revision(), 3);
    }

    fn compact(rev: i64) -> Command {
        Command::Compact(CompactionRequest {
            revision: rev,
            physical: false,
        })
    }

    #[test]
    fn a_prepared_compaction_applies_as_apply_does() {
        let mut base = StateMachine::new();
        for i in 0..40 {
            base.apply(&put(&format!("k{}", i % 7), &format!("v{i}")));
        }
        // Done, refused (future, already compacted): the same either way.
        for rev in [20, 42, 99, 20, 5] {
            let mut plain = base.clone();
            let mut prepared = base.clone();
            let cmd = compact(rev);
            let want = plain.apply(&cmd);
            let (store, r) = prepared.compaction_base(&cmd).unwrap();
            let got = prepared.apply_prepared(&cmd, Some(StateMachine::compact_copy(store, r)));
            assert_eq!(got, want, "compact {rev}");
            assert_eq!(prepared, plain, "compact {rev}");
            prepared.check_invariants().unwrap();
            base = plain;
        }
        assert_eq!(base.compact_revision(), 20);
        assert!(base.compaction_base(&put("k", "v")).is_none());
    }

    /// A compaction prepared on a copy replaces the store while spills of
    /// the last writes are still pending: the store that replaces it keeps
    /// them (a copy starts with none), so what those writes superseded
    /// still leaves the heap at the next flush.
    #[test]
    fn a_prepared_compaction_keeps_the_pending_spills() {
        let dir = tempfile::tempdir().unwrap();
        let cold =
            crate::storage::cold::ColdStore::with_segment_bytes(dir.path(), 1 << 20).unwrap();
        let mut m = StateMachine::new();
        m.set_cold(Some(cold.clone()));
        // a@2, a@3, b@4, b@5: compacting at 3 keeps a@3 and both b's.
        for c in [put("a", "1"), put("a", "2"), put("b", "1"), put("b", "2")] {
            assert!(m.apply(&c).result.is_ok(), "{c}");
        }
        assert_eq!(m.mvcc().cold_values(), 0, "spills wait for the flush");
        let cmd = compact(3);
        let (store, r) = m.compaction_base(&cmd).unwrap();
        let prepared = StateMachine::compact_copy(store, r);
        assert!(m.apply_prepared(&cmd, Some(prepared)).result.is_ok());
        assert_eq!(m.compact_revision(), 3);
        // b@4, superseded by b@5, is the one value left to move.
        assert_eq!(m.flush_spills(), 1);
        assert_eq!(m.mvcc().cold_values(), 1);
        m.check_invariants().unwrap();
    }

    /// A lease revoke does not read back the values it deletes (a watcher
    /// asking for previous values reads them when it is sent the events):
    /// one that cannot be read does not stop it, and only that event's
    /// previous value reports the error.
    #[test]
    fn a_revoke_does_not_read_the_values_it_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let cold = crate::storage::cold::ColdStore::with_limits(dir.path(), 1 << 20, 1).unwrap();
        let mut m = StateMachine::new();
        m.set_cold(Some(cold));
        m.apply(&Command::LeaseGrant { id: 5, ttl: 10 });
        for k in ["a", "b"] {
            assert!(m.apply(&put_with_lease(k, 5)).result.is_ok());
        }
        assert!(m.apply(&acquire("L", 5, false)).result.is_ok());
        m.flush_spills();
        m.mvcc().newest_cold(b"b").unwrap().damage();
        let r = m.apply(&Command::LeaseRevoke { id: 5 });
        assert!(r.result.is_ok(), "{r:?}");
        assert!(m.leases().get(5).is_none());
        assert_eq!((m.locks().len(), m.mvcc().len()), (0, 0));
        let prev = |k: &[u8]| {
            r.events
                .iter()
                .find(|e| e.kv.key == k)
                .map(|e| e.prev_kv_with_value())
        };
        assert_eq!(
            prev(b"a").unwrap().unwrap().map(|kv| kv.value),
            Some(b"v".to_vec())
        );
        assert!(
            matches!(prev(b"b"), Some(Err(StateError::HistoryRead(_)))),
            "{:?}",
            prev(b"b")
        );
        m.check_invariants().unwrap();
    }

    #[test]
    fn a_stale_prepared_compaction_is_not_installed() {
        let mut m = StateMachine::new();
        for i in 0..10 {
            m.apply(&put("k", &format!("v{i}")));
        }
        let cmd = compact(5);
        let (store, r) = m.compaction_base(&cmd).unwrap();
        let prepared = StateMachine::compact_copy(store, r);
        // The store moves on after the copy: installing the copy would lose
        // this write, so apply_prepared compacts the store as it is.
        m.apply(&put("k", "late"));
        let mut plain = m.clone();
        let want = plain.apply(&cmd);
        assert_eq!(m.apply_prepared(&cmd, Some(prepared)), want);
        assert_eq!(m, plain);
        assert_eq!(m.mvcc().get(b"k").unwrap().unwrap().value, b"late".to_vec());
        // Prepared for another revision: plain apply too.
        let (store, r) = m.compaction_base(&compact(8)).unwrap();
        let other = StateMachine::compact_copy(store, r);
        let mut plain = m.clone();
        assert_eq!(
            m.apply_prepared(&compact(9), Some(other)),
            plain.apply(&compact(9))
        );
        assert_eq!(m, plain);
    }

    #[test]
    fn lease_puts_are_refused_without_a_lease_table() {
        let mut m = StateMachine::new();
        let a = m.apply(&Command::Put(PutRequest {
            key: b"k".to_vec(),
            lease: 7,
            ..Default::default()
        }));
        assert_eq!(a.result, Err(StateError::LeaseNotFound));
        assert_eq!(a.revision, 1);
    }

    #[test]
    fn snapshot_round_trip() {
        let m = sample();
        let bytes = m.to_snapshot_bytes().unwrap();
        assert_eq!(&bytes[..8], b"WDNSNAPF");
        let back = StateMachine::from_snapshot_bytes(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.to_snapshot_bytes().unwrap(), bytes);
        assert_eq!(back.hash_kv(0), m.hash_kv(0));
        // Deterministic: an independent replica yields the same bytes.
        assert_eq!(sample().to_snapshot_bytes().unwrap(), bytes);
    }

    /// Frames `body` as a snapshot with a valid checksum.
    fn framed(meta: &[u8], body: &[u8]) -> Vec<u8> {
        format::encode_snapshot(meta, body)
    }

    #[test]
    fn corrupt_snapshots_are_refused() {
        let bytes = sample().to_snapshot_bytes().unwrap();
        // Any single flipped bit anywhere is refused.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(
                StateMachine::from_snapshot_bytes(&b).is_err(),
                "flip at byte {i} accepted"
            );
        }
        // Any truncation is refused.
        for n in 0..bytes.len() {
            assert!(
                StateMachine::from_snapshot_bytes(&bytes[..n]).is_err(),
                "cut at {n}"
            );
        }
        // Extra bytes are refused.
        let mut b = bytes.clone();
        b.push(0);
        assert!(matches!(
            StateMachine::from_snapshot_bytes(&b),
            Err(SnapshotError::Frame(FormatError::LengthMismatch { .. }))
        ));

        let mut b = bytes.clone();
        b[0] = b'X';
        assert!(matches!(
            StateMachine::from_snapshot_bytes(&b),
            Err(SnapshotError::Frame(FormatError::BadMagic { .. }))
        ));
        let mut b = bytes.clone();
        b[8] = 99;
        let e = StateMachine::from_snapshot_bytes(&b).unwrap_err();
        assert!(
            matches!(
                e,
                SnapshotError::Frame(FormatError::UnsupportedVersion { found: 99, .. })
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("version 99"), "{e}");
        let mut b = bytes.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(matches!(
            StateMachine::from_snapshot_bytes(&b),
            Err(SnapshotError::Frame(FormatError::ChecksumMismatch { .. }))
        ));
        assert!(matches!(
            StateMachine::from_snapshot_bytes(&bytes[..10]),
            Err(SnapshotError::Frame(FormatError::TooShort { .. }))
        ));
        let e = StateMachine::from_snapshot_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // A frame with Raft metadata is a member snapshot, not ours.
        let body = postcard::to_stdvec(&sample()).unwrap();
        assert_eq!(
            StateMachine::from_snapshot_bytes(&framed(b"m", &body)),
            Err(SnapshotError::UnexpectedMeta(1))
        );
        // The framing of builds before the shared frame (tests only).
        let old = include_bytes!("../../tests/fixtures/pre-state-machine.wdnsnap1");
        assert!(matches!(
            StateMachine::from_snapshot_bytes(old),
            Err(SnapshotError::Frame(FormatError::BadMagic { .. }))
        ));
    }

    #[test]
    fn valid_checksum_but_garbage_body_is_refused() {
        assert!(matches!(
            StateMachine::from_snapshot_bytes(&framed(&[], &[0xffu8; 20])),
            Err(SnapshotError::Decode(_))
        ));
        let mut body = postcard::to_stdvec(&sample()).unwrap();
        body.push(0);
        assert!(matches!(
            StateMachine::from_snapshot_bytes(&framed(&[], &body)),
            Err(SnapshotError::Decode(_))
        ));
    }

    #[test]
    fn inconsistent_body_is_refused() {
        // A well-formed encoding of an impossible store: revision 0.
        #[derive(Serialize)]
        struct Fake {
            current_revision: i64,
            compact_revision: i64,
            live_keys: u64,
            keys: std::collections::BTreeMap<Vec<u8>, ()>,
            leases: LeaseTable,
            locks: LockTable,
        }
        let body = postcard::to_stdvec(&Fake {
            current_revision: 0,
            compact_revision: 0,
            live_keys: 0,
            keys: Default::default(),
            leases: LeaseTable::default(),
            locks: LockTable::default(),
        })
        .unwrap();
        assert!(matches!(
            StateMachine::from_snapshot_bytes(&framed(&[], &body)),
            Err(SnapshotError::Invalid(_))
        ));
    }

    proptest::proptest! {
        /// Whatever a checksummed frame holds, decoding never panics and
        /// accepts only a consistent store (the frame-level twin of
        /// `proptests::random_bytes_never_panic`).
        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Ok(m) = StateMachine::from_snapshot_bytes(&framed(&[], &body)) {
                proptest::prop_assert_eq!(m.check_invariants(), Ok(()));
            }
        }
    }

    #[test]
    fn command_display() {
        assert_eq!(put("foo", "bar").to_string(), "put key=\"foo\" (3 bytes)");
        let d = Command::DeleteRange(DeleteRangeRequest {
            key: b"a\x00".to_vec(),
            range_end: vec![0],
            prev_kv: false,
        });
        assert_eq!(d.to_string(), "delete key=\"a\\x00\" range_end=<all after>");
        let long = Command::Put(PutRequest {
            key: vec![b'x'; 100],
            ..Default::default()
        });
        assert!(long.to_string().contains("…(100 bytes)"));
        let t = Command::Txn(TxnRequest::default());
        assert_eq!(t.to_string(), "txn compares=0 success=0 failure=0");
        let c = Command::Compact(CompactionRequest {
            revision: 9,
            physical: false,
        });
        assert_eq!(c.to_string(), "compact revision=9");
    }
}

#[cfg(test)]
#[path = "lock_golden_tests.rs"]
mod lock_golden_tests;

#[cfg(test)]
#[path = "lock_proof_tests.rs"]
mod lock_proof_tests;
