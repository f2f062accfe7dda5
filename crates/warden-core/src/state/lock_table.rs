//! The lock table: named locks with exclusive and shared modes, per-lock wait
//! queues ordered by priority then arrival, and fencing tokens. It is the
//! replicated half of the lock manager (modes, queue order, fencing tokens,
//! holds tied to leases); waiting for a grant happens outside it. The state
//! machine applies lock commands to it and turns the [`LockEvent`]s it
//! returns into watch events and into answers for blocked acquires.
//!
//! Rules:
//! - A lock has any number of shared holders or exactly one exclusive holder.
//!   Every holder and every waiter belongs to a lease (never lease 0).
//! - Waiters are ordered by priority (higher first), then by arrival (FIFO).
//!   An acquire is granted at once only if it is compatible with the holders
//!   *and* no queued waiter would be ahead of it (every waiter of the same or
//!   a higher priority is ahead), so a queued exclusive waiter is not starved
//!   by later shared requests of the same or lower priority. Otherwise a
//!   try-acquire (`wait == false`) gets [`AcquireOutcome::WouldBlock`] and
//!   changes nothing, and a blocking acquire is queued.
//! - After a holder or waiter leaves (release, cancel, lease revoke) the
//!   queue is granted from its head while the head is compatible with the
//!   holders: several shared waiters at the head are granted together, an
//!   exclusive head only when there are no holders, and granting stops at
//!   the first waiter that cannot be granted (nobody is skipped over). So
//!   whenever a queue is non-empty, its head conflicts with the holders.
//! - Fencing tokens come from one counter for the whole table, assigned at
//!   grant time: tokens strictly increase in grant order across all locks and
//!   are never reused, even after an empty lock's entry is deleted. Token 0
//!   is never issued. Waiter ids come from a second counter, also never 0.
//! - A lock with no holders and no waiters has no entry.
//!
//! - A hold or wait may carry a [`HandleDigest`]: the SHA-256 of the secret
//!   handle the member that proposed the acquire gave its client. A holder
//!   with one can only be released, or fence a write, by a command carrying
//!   the same digest ([`LockTable::release_proven`], [`LockTable::prove`]);
//!   a token alone gets [`LockError::HandleRequired`], another digest
//!   [`LockError::WrongHandle`]. A waiter's digest becomes its holder's when
//!   it is granted. Holds without one (made by the plain acquire, as every
//!   build before handles did) are released by their token, as before.
//!   Digests are never shown: not by `inspect`, not in events, not by
//!   `Debug`. They are not part of the derived encoding of the table (see
//!   [`LockTable::proofs`]), so a table without them encodes as it always did.
//!
//! Every mutating call either fails with a [`LockError`] and changes nothing,
//! or succeeds and returns the events it caused, in order.
//!
//! This module must never do IO, read a clock, use randomness or iterate a
//! `HashMap`: replicas must reach identical tables from identical commands,
//! and the table goes into snapshots as it is (ordered maps only). Leases are
//! not owned here: the lease table decides expiry and calls
//! [`LockTable::revoke_lease`]. Nothing here panics on any input. The unit
//! and model-based tests live in `lock_table_tests.rs`, a child module.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// The longest lock name accepted, in bytes.
pub const MAX_LOCK_NAME_LEN: usize = 1024;
/// The longest owner label accepted, in bytes.
pub const MAX_OWNER_LEN: usize = 1024;
/// The most waiters one lock's queue may hold; a blocking acquire beyond it
/// gets [`LockError::TooManyWaiters`]. Part of the replicated semantics:
/// every member must use the same value.
pub const MAX_WAITERS_PER_LOCK: usize = 10_000;

/// The length of a lock handle in bytes: 128 random bits, drawn by the
/// member that receives the acquire from the OS random number generator.
pub const HANDLE_LEN: usize = 16;

/// The SHA-256 of a lock handle (with a domain prefix): what a command and
/// the table carry instead of the handle itself, so neither the Raft log nor
/// a snapshot or backup holds a handle a client could present. Only a
/// member computes one, from the handle a client sent
/// ([`HandleDigest::of_handle`]), so knowing a digest gets nobody through
/// the client API. `Debug` never prints it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HandleDigest([u8; 32]);

impl HandleDigest {
    /// Domain separation: a handle digest is not the SHA-256 of anything
    /// else warden stores.
    const DOMAIN: &'static [u8] = b"warden lock handle v1\0";

    /// The digest of `handle` (any bytes; members accept only
    /// [`HANDLE_LEN`]-byte handles from clients).
    pub fn of_handle(handle: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(Self::DOMAIN);
        h.update(handle);
        HandleDigest(h.finalize().into())
    }

    /// A digest from its raw bytes (tests, decoders).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        HandleDigest(bytes)
    }
}

impl fmt::Debug for HandleDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandleDigest(..)")
    }
}

/// The handle digests of a table's holders (by token) and waiters (by
/// waiter id), each list in ascending order: the snapshot section that
/// carries them ([`LockTable::proofs`], [`LockTable::restore_proofs`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockProofs {
    pub holders: Vec<(u64, HandleDigest)>,
    pub waiters: Vec<(u64, HandleDigest)>,
}

impl LockProofs {
    /// True if no hold or wait has a digest.
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty()
    }
}

/// How a lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LockMode {
    /// The only holder.
    Exclusive,
    /// One of any number of shared (reader) holders.
    Shared,
}

impl LockMode {
    /// `"exclusive"` or `"shared"`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to acquire a lock (the payload of the acquire command).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireRequest {
    /// The lock's name: 1 to [`MAX_LOCK_NAME_LEN`] bytes.
    pub name: String,
    pub mode: LockMode,
    /// The lease the hold (or the wait) belongs to; never 0. When the lease
    /// is revoked or expires, the hold or wait ends.
    pub lease: i64,
    /// Orders waiters: higher first, FIFO among equals.
    pub priority: i32,
    /// A label for humans (inspect, events); up to [`MAX_OWNER_LEN`] bytes.
    pub owner: String,
    /// Queue if the lock cannot be granted now (`false`: try-acquire).
    pub wait: bool,
}

/// What an acquire did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AcquireOutcome {
    /// Granted now with this fencing token.
    Granted { token: u64 },
    /// Queued; `position` waiters are ahead of it (0 = head of the queue).
    /// A later [`LockEvent::Granted`] with this `waiter_id` grants it.
    Queued { waiter_id: u64, position: u64 },
    /// A try-acquire that could not be granted now; nothing changed.
    WouldBlock,
}

/// The result of a successful [`LockTable::acquire`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquired {
    pub outcome: AcquireOutcome,
    /// What happened, in order (empty for `WouldBlock`).
    pub events: Vec<LockEvent>,
}

/// One thing a mutating call did to the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockEvent {
    /// A hold began. `waiter_id` is set when it was granted from the queue.
    Granted {
        name: String,
        token: u64,
        waiter_id: Option<u64>,
        owner: String,
        mode: LockMode,
        lease: i64,
    },
    /// A holder released the lock.
    Released { name: String, token: u64 },
    /// A holder was removed because its lease was revoked or expired.
    Expired { name: String, token: u64 },
    /// A request was queued with `position` waiters ahead of it.
    Queued {
        name: String,
        waiter_id: u64,
        position: u64,
    },
    /// A waiter left the queue (cancelled, or its lease was revoked).
    Cancelled { name: String, waiter_id: u64 },
}

/// A current holder of a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub token: u64,
    pub owner: String,
    pub mode: LockMode,
    pub lease: i64,
    /// The digest of the holder's handle (`None`: a hold without one).
    /// Not in the derived encoding: see [`LockTable::proofs`].
    #[serde(skip)]
    pub(crate) proof: Option<HandleDigest>,
}

/// A queued request for a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    pub waiter_id: u64,
    pub owner: String,
    pub mode: LockMode,
    pub priority: i32,
    pub lease: i64,
    /// Becomes the holder's digest when granted. Not encoded (see
    /// [`LockTable::proofs`]).
    #[serde(skip)]
    pub(crate) proof: Option<HandleDigest>,
}

/// A lock as [`LockTable::inspect`] shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub name: String,
    /// In grant order (ascending tokens).
    pub holders: Vec<Holder>,
    /// In queue order (the head first).
    pub waiters: Vec<Waiter>,
}

/// Why a lock request was refused. Nothing changed when one is returned.
/// `Display` is the message for the caller, etcd style.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum LockError {
    #[error("warden: lock name must not be empty")]
    EmptyName,
    #[error("warden: lock name is too long ({len} bytes, the limit is {max})")]
    NameTooLong { len: usize, max: usize },
    #[error("warden: a lock needs a lease (lease id 0 is not a lease)")]
    InvalidLease,
    #[error("warden: lock owner is too long ({len} bytes, the limit is {max})")]
    OwnerTooLong { len: usize, max: usize },
    #[error("warden: lock {} not found", Short(name))]
    NoSuchLock { name: String },
    #[error("warden: token {token} does not hold lock {}", Short(name))]
    NotHolder { name: String, token: u64 },
    #[error("warden: waiter {waiter_id} is not queued on lock {}", Short(name))]
    NoSuchWaiter { name: String, waiter_id: u64 },
    #[error("warden: lock {} already has {max} waiters", Short(name))]
    TooManyWaiters { name: String, max: usize },
    #[error("warden: fencing tokens are exhausted")]
    TokensExhausted,
    #[error("warden: waiter ids are exhausted")]
    WaiterIdsExhausted,
    /// The command's handle digest is not the holder's. Appended after the
    /// variants above (they keep their encoding), like the next one.
    #[error(
        "warden: lock {} token {token}: handle does not match the holder",
        Short(name)
    )]
    WrongHandle { name: String, token: u64 },
    /// A token alone, for a hold granted with a handle.
    #[error(
        "warden: lock {} token {token}: the holder's handle is required (the hold was granted with one)",
        Short(name)
    )]
    HandleRequired { name: String, token: u64 },
}

impl LockError {
    /// True for malformed requests (the api maps these to `INVALID_ARGUMENT`);
    /// the others depend on the table's state.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(
            self,
            LockError::EmptyName
                | LockError::NameTooLong { .. }
                | LockError::InvalidLease
                | LockError::OwnerTooLong { .. }
        )
    }

    /// True when the request failed to prove it is the holder (the api maps
    /// these to `PERMISSION_DENIED`).
    pub fn is_proof_failure(&self) -> bool {
        matches!(
            self,
            LockError::WrongHandle { .. } | LockError::HandleRequired { .. }
        )
    }
}

/// Writes a name quoted, cut after 64 characters (names may be 1 KiB).
struct Short<'a>(&'a str);

impl fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 64;
        match self.0.char_indices().nth(MAX) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => {
                let head = self.0.get(..cut).unwrap_or_default();
                write!(f, "{head:?}…({} bytes)", self.0.len())
            }
        }
    }
}

fn validate_name(name: &str) -> Result<(), LockError> {
    if name.is_empty() {
        return Err(LockError::EmptyName);
    }
    if name.len() > MAX_LOCK_NAME_LEN {
        return Err(LockError::NameTooLong {
            len: name.len(),
            max: MAX_LOCK_NAME_LEN,
        });
    }
    Ok(())
}

fn validate_acquire(req: &AcquireRequest) -> Result<(), LockError> {
    validate_name(&req.name)?;
    if req.lease == 0 {
        return Err(LockError::InvalidLease);
    }
    if req.owner.len() > MAX_OWNER_LEN {
        return Err(LockError::OwnerTooLong {
            len: req.owner.len(),
            max: MAX_OWNER_LEN,
        });
    }
    Ok(())
}

/// One lock's holders and queue. Never both empty inside the table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LockState {
    /// In grant order, so tokens ascend (binary search by token).
    holders: Vec<Holder>,
    /// Ordered by priority descending, then waiter id ascending (arrival).
    waiters: VecDeque<Waiter>,
}

impl LockState {
    fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty()
    }

    /// Whether a request in `mode` is compatible with the holders. Relies on
    /// the holders being all shared or one exclusive.
    fn compatible(&self, mode: LockMode) -> bool {
        match mode {
            LockMode::Exclusive => self.holders.is_empty(),
            LockMode::Shared => self
                .holders
                .first()
                .is_none_or(|h| h.mode == LockMode::Shared),
        }
    }

    fn holder_index(&self, token: u64) -> Option<usize> {
        self.holders.binary_search_by_key(&token, |h| h.token).ok()
    }

    /// How many waiters would be ahead of a new one of `priority`.
    fn queue_position(&self, priority: i32) -> usize {
        self.waiters.partition_point(|w| w.priority >= priority)
    }

    /// Grants the head of the queue while it is compatible with the holders,
    /// appending a `Granted` event per grant. Stops (leaving the rest queued)
    /// if the token counter is exhausted.
    fn grant_waiters(&mut self, name: &str, next_token: &mut u64, events: &mut Vec<LockEvent>) {
        while let Some(head) = self.waiters.front() {
            if !self.compatible(head.mode) || *next_token == u64::MAX {
                break;
            }
            let Some(w) = self.waiters.pop_front() else {
                break;
            };
            let token = *next_token;
            *next_token += 1;
            events.push(LockEvent::Granted {
                name: name.to_owned(),
                token,
                waiter_id: Some(w.waiter_id),
                owner: w.owner.clone(),
                mode: w.mode,
                lease: w.lease,
            });
            self.holders.push(Holder {
                token,
                owner: w.owner,
                mode: w.mode,
                lease: w.lease,
                proof: w.proof,
            });
        }
    }

    fn info(&self, name: &str) -> LockInfo {
        LockInfo {
            name: name.to_owned(),
            holders: self.holders.clone(),
            waiters: self.waiters.iter().cloned().collect(),
        }
    }
}

/// The replicated lock table. See the module docs for the rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockTable {
    locks: BTreeMap<String, LockState>,
    /// Index for [`LockTable::revoke_lease`]: per lease, the locks on which
    /// it holds or waits and how many holds and waits it has there.
    lease_refs: BTreeMap<i64, BTreeMap<String, u32>>,
    /// The token the next grant gets (starts at 1; `u64::MAX` = exhausted).
    next_token: u64,
    /// The id the next queued waiter gets (starts at 1).
    next_waiter_id: u64,
}

impl Default for LockTable {
    fn default() -> Self {
        Self::new()
    }
}

fn add_ref(refs: &mut BTreeMap<i64, BTreeMap<String, u32>>, lease: i64, name: &str) {
    let per_lock = refs.entry(lease).or_default();
    match per_lock.get_mut(name) {
        Some(n) => *n = n.saturating_add(1),
        None => {
            per_lock.insert(name.to_owned(), 1);
        }
    }
}

fn remove_ref(refs: &mut BTreeMap<i64, BTreeMap<String, u32>>, lease: i64, name: &str) {
    let Some(per_lock) = refs.get_mut(&lease) else {
        return;
    };
    if let Some(n) = per_lock.get_mut(name) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            per_lock.remove(name);
        }
    }
    if per_lock.is_empty() {
        refs.remove(&lease);
    }
}

impl LockTable {
    /// An empty table; the first grant gets token 1.
    pub fn new() -> Self {
        LockTable {
            locks: BTreeMap::new(),
            lease_refs: BTreeMap::new(),
            next_token: 1,
            next_waiter_id: 1,
        }
    }

    /// Acquires `req.name` in `req.mode`, or queues the request, or (for a
    /// try-acquire that cannot be granted now) returns
    /// [`AcquireOutcome::WouldBlock`] without changing anything.
    pub fn acquire(&mut self, req: &AcquireRequest) -> Result<Acquired, LockError> {
        self.acquire_with(req, None)
    }

    /// [`LockTable::acquire`] for a request proven by the digest of its
    /// handle: the hold (or the wait, and the hold it becomes) carries
    /// `proof`, and only a command carrying it again releases the hold or
    /// fences a write with it.
    pub fn acquire_proven(
        &mut self,
        req: &AcquireRequest,
        proof: HandleDigest,
    ) -> Result<Acquired, LockError> {
        self.acquire_with(req, Some(proof))
    }

    fn acquire_with(
        &mut self,
        req: &AcquireRequest,
        proof: Option<HandleDigest>,
    ) -> Result<Acquired, LockError> {
        validate_acquire(req)?;
        let Some(lock) = self.locks.get_mut(req.name.as_str()) else {
            // No holders, no waiters: granted.
            let token = self.take_token()?;
            let mut lock = LockState::default();
            lock.holders.push(Holder {
                token,
                owner: req.owner.clone(),
                mode: req.mode,
                lease: req.lease,
                proof,
            });
            self.locks.insert(req.name.clone(), lock);
            add_ref(&mut self.lease_refs, req.lease, &req.name);
            return Ok(granted_now(req, token));
        };
        let position = lock.queue_position(req.priority);
        if position == 0 && lock.compatible(req.mode) {
            if self.next_token == u64::MAX {
                return Err(LockError::TokensExhausted);
            }
            let token = self.next_token;
            self.next_token += 1;
            lock.holders.push(Holder {
                token,
                owner: req.owner.clone(),
                mode: req.mode,
                lease: req.lease,
                proof,
            });
            add_ref(&mut self.lease_refs, req.lease, &req.name);
            return Ok(granted_now(req, token));
        }
        if !req.wait {
            return Ok(Acquired {
                outcome: AcquireOutcome::WouldBlock,
                events: Vec::new(),
            });
        }
        if lock.waiters.len() >= MAX_WAITERS_PER_LOCK {
            return Err(LockError::TooManyWaiters {
                name: req.name.clone(),
                max: MAX_WAITERS_PER_LOCK,
            });
        }
        if self.next_waiter_id == u64::MAX {
            return Err(LockError::WaiterIdsExhausted);
        }
        let waiter_id = self.next_waiter_id;
        self.next_waiter_id += 1;
        lock.waiters.insert(
            position,
            Waiter {
                waiter_id,
                owner: req.owner.clone(),
                mode: req.mode,
                priority: req.priority,
                lease: req.lease,
                proof,
            },
        );
        add_ref(&mut self.lease_refs, req.lease, &req.name);
        let position = position as u64;
        Ok(Acquired {
            outcome: AcquireOutcome::Queued {
                waiter_id,
                position,
            },
            events: vec![LockEvent::Queued {
                name: req.name.clone(),
                waiter_id,
                position,
            }],
        })
    }

    /// Ends the hold of `token` on `name`, then grants waiters. A hold
    /// granted with a handle is refused ([`LockError::HandleRequired`]):
    /// see [`LockTable::release_proven`].
    pub fn release(&mut self, name: &str, token: u64) -> Result<Vec<LockEvent>, LockError> {
        self.release_with(name, token, None)
    }

    /// Ends the hold of `token` on `name` if `proof` is its handle's digest
    /// (or the hold has none), then grants waiters. A wrong digest gets
    /// [`LockError::WrongHandle`] and changes nothing.
    pub fn release_proven(
        &mut self,
        name: &str,
        token: u64,
        proof: &HandleDigest,
    ) -> Result<Vec<LockEvent>, LockError> {
        self.release_with(name, token, Some(proof))
    }

    fn release_with(
        &mut self,
        name: &str,
        token: u64,
        proof: Option<&HandleDigest>,
    ) -> Result<Vec<LockEvent>, LockError> {
        validate_name(name)?;
        let lock = self
            .locks
            .get_mut(name)
            .ok_or_else(|| LockError::NoSuchLock {
                name: name.to_owned(),
            })?;
        let index = lock
            .holder_index(token)
            .ok_or_else(|| LockError::NotHolder {
                name: name.to_owned(),
                token,
            })?;
        check_proof(name, &lock.holders[index], proof)?;
        let holder = lock.holders.remove(index);
        remove_ref(&mut self.lease_refs, holder.lease, name);
        let mut events = vec![LockEvent::Released {
            name: name.to_owned(),
            token,
        }];
        lock.grant_waiters(name, &mut self.next_token, &mut events);
        if lock.is_empty() {
            self.locks.remove(name);
        }
        Ok(events)
    }

    /// Removes waiter `waiter_id` from the queue of `name`, then grants
    /// waiters (removing a blocking head may unblock those behind it).
    pub fn cancel_waiter(
        &mut self,
        name: &str,
        waiter_id: u64,
    ) -> Result<Vec<LockEvent>, LockError> {
        validate_name(name)?;
        let not_queued = || LockError::NoSuchWaiter {
            name: name.to_owned(),
            waiter_id,
        };
        let lock = self.locks.get_mut(name).ok_or_else(not_queued)?;
        let index = lock
            .waiters
            .iter()
            .position(|w| w.waiter_id == waiter_id)
            .ok_or_else(not_queued)?;
        let Some(waiter) = lock.waiters.remove(index) else {
            return Err(not_queued());
        };
        remove_ref(&mut self.lease_refs, waiter.lease, name);
        let mut events = vec![LockEvent::Cancelled {
            name: name.to_owned(),
            waiter_id,
        }];
        lock.grant_waiters(name, &mut self.next_token, &mut events);
        if lock.is_empty() {
            self.locks.remove(name);
        }
        Ok(events)
    }

    /// Removes every holder (`Expired`) and waiter (`Cancelled`) of `lease`
    /// on every lock, granting waiters on each lock it touched; locks are
    /// visited in name order. A lease with nothing in the table (lease 0
    /// included) yields no events.
    pub fn revoke_lease(&mut self, lease: i64) -> Vec<LockEvent> {
        let mut events = Vec::new();
        let Some(names) = self.lease_refs.remove(&lease) else {
            return events;
        };
        for name in names.keys() {
            let Some(lock) = self.locks.get_mut(name.as_str()) else {
                continue;
            };
            lock.holders.retain(|h| {
                if h.lease != lease {
                    return true;
                }
                events.push(LockEvent::Expired {
                    name: name.clone(),
                    token: h.token,
                });
                false
            });
            lock.waiters.retain(|w| {
                if w.lease != lease {
                    return true;
                }
                events.push(LockEvent::Cancelled {
                    name: name.clone(),
                    waiter_id: w.waiter_id,
                });
                false
            });
            lock.grant_waiters(name, &mut self.next_token, &mut events);
            if lock.is_empty() {
                self.locks.remove(name.as_str());
            }
        }
        events
    }

    /// True iff `token` currently holds `name` (in either mode), whoever
    /// asks: no handle is checked. For following a hold one already owns;
    /// fenced writes go through [`LockTable::prove`].
    pub fn check_fence(&self, name: &str, token: u64) -> bool {
        self.locks
            .get(name)
            .is_some_and(|l| l.holder_index(token).is_some())
    }

    /// Whether a command carrying `proof` (`None`: a token alone) may act as
    /// the holder of `token` on `name`: `Ok` if `token` holds the lock and
    /// `proof` is its handle's digest (or the hold has none), else
    /// [`LockError::NoSuchLock`], [`LockError::NotHolder`],
    /// [`LockError::HandleRequired`] or [`LockError::WrongHandle`]. Does not
    /// validate the name (an invalid name holds nothing). The check behind
    /// fenced writes.
    pub fn prove(
        &self,
        name: &str,
        token: u64,
        proof: Option<&HandleDigest>,
    ) -> Result<(), LockError> {
        let lock = self.locks.get(name).ok_or_else(|| LockError::NoSuchLock {
            name: name.to_owned(),
        })?;
        let holder = lock
            .holder_index(token)
            .and_then(|i| lock.holders.get(i))
            .ok_or_else(|| LockError::NotHolder {
                name: name.to_owned(),
                token,
            })?;
        check_proof(name, holder, proof)
    }

    /// The token of the hold on `name` whose handle digest is `proof`, if
    /// there is one (how a member finds the grant of its own request).
    pub fn token_with_proof(&self, name: &str, proof: &HandleDigest) -> Option<u64> {
        self.locks
            .get(name)?
            .holders
            .iter()
            .find(|h| h.proof.as_ref() == Some(proof))
            .map(|h| h.token)
    }

    /// The handle digests of every hold and wait that has one: the section a
    /// snapshot carries after the derived encoding of the state (which
    /// leaves them out, so a table without digests encodes exactly as in
    /// builds before handles). Ascending tokens and waiter ids.
    pub fn proofs(&self) -> LockProofs {
        let mut p = LockProofs::default();
        for lock in self.locks.values() {
            p.holders.extend(
                lock.holders
                    .iter()
                    .filter_map(|h| h.proof.map(|d| (h.token, d))),
            );
            p.waiters.extend(
                lock.waiters
                    .iter()
                    .filter_map(|w| w.proof.map(|d| (w.waiter_id, d))),
            );
        }
        p.holders.sort_unstable_by_key(|(t, _)| *t);
        p.waiters.sort_unstable_by_key(|(w, _)| *w);
        p
    }

    /// Puts the digests of [`LockTable::proofs`] back on a table decoded
    /// without them. Refuses (the table is then to be discarded) lists out
    /// of order, and digests for a token or waiter id the table does not
    /// have or that already has one.
    pub fn restore_proofs(&mut self, proofs: LockProofs) -> Result<(), String> {
        fn ordered(what: &str, list: &[(u64, HandleDigest)]) -> Result<(), String> {
            if list.windows(2).all(|w| w[0].0 < w[1].0) {
                Ok(())
            } else {
                Err(format!("lock handle digests of {what} out of order"))
            }
        }
        ordered("holders", &proofs.holders)?;
        ordered("waiters", &proofs.waiters)?;
        let mut holders: BTreeMap<u64, HandleDigest> = proofs.holders.into_iter().collect();
        let mut waiters: BTreeMap<u64, HandleDigest> = proofs.waiters.into_iter().collect();
        for lock in self.locks.values_mut() {
            for h in &mut lock.holders {
                if let Some(d) = holders.remove(&h.token) {
                    if h.proof.replace(d).is_some() {
                        return Err(format!("holder token {} has two handle digests", h.token));
                    }
                }
            }
            for w in &mut lock.waiters {
                if let Some(d) = waiters.remove(&w.waiter_id) {
                    if w.proof.replace(d).is_some() {
                        return Err(format!("waiter {} has two handle digests", w.waiter_id));
                    }
                }
            }
        }
        if let Some(token) = holders.keys().next() {
            return Err(format!(
                "a handle digest for token {token}, which holds no lock"
            ));
        }
        if let Some(waiter) = waiters.keys().next() {
            return Err(format!(
                "a handle digest for waiter {waiter}, which is not queued"
            ));
        }
        Ok(())
    }

    /// The holder of `name` with `token`, if it holds the lock.
    pub fn holder(&self, name: &str, token: u64) -> Option<&Holder> {
        let lock = self.locks.get(name)?;
        lock.holders.get(lock.holder_index(token)?)
    }

    /// Holders and waiters of `name`; `None` if it has neither.
    pub fn inspect(&self, name: &str) -> Option<LockInfo> {
        self.locks.get(name).map(|l| l.info(name))
    }

    /// Every lock whose name starts with `prefix` (all locks for `""`), in
    /// name order. Lazy: take as many as the caller's limit allows.
    pub fn locks_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = LockInfo> + 'a {
        self.locks
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(name, _)| name.starts_with(prefix))
            .map(|(name, lock)| lock.info(name))
    }

    /// The names of the locks `lease` holds or waits on.
    pub fn names_on_lease(&self, lease: i64) -> impl Iterator<Item = &str> + '_ {
        self.lease_refs
            .get(&lease)
            .into_iter()
            .flat_map(|names| names.keys().map(String::as_str))
    }

    /// How many locks have a holder or a waiter.
    pub fn len(&self) -> usize {
        self.locks.len()
    }

    /// True if no lock has a holder or a waiter.
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }

    /// How many holds and how many queued waiters all locks have together
    /// (one pass over the locks, for metrics).
    pub fn holds_and_waits(&self) -> (u64, u64) {
        self.locks.values().fold((0, 0), |(h, w), l| {
            (h + l.holders.len() as u64, w + l.waiters.len() as u64)
        })
    }

    /// The token the next grant will get; every issued token is smaller.
    pub fn next_token(&self) -> u64 {
        self.next_token
    }

    /// The id the next queued waiter will get.
    pub fn next_waiter_id(&self) -> u64 {
        self.next_waiter_id
    }

    fn take_token(&mut self) -> Result<u64, LockError> {
        if self.next_token == u64::MAX {
            return Err(LockError::TokensExhausted);
        }
        let token = self.next_token;
        self.next_token += 1;
        Ok(token)
    }

    /// Checks the invariants every table built by these operations has; used
    /// to refuse a snapshot that decodes but cannot be right.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.next_token == 0 || self.next_waiter_id == 0 {
            return Err("token and waiter id counters must start at 1".into());
        }
        let mut tokens = BTreeSet::new();
        let mut waiter_ids = BTreeSet::new();
        let mut refs: BTreeMap<i64, BTreeMap<String, u32>> = BTreeMap::new();
        for (name, lock) in &self.locks {
            validate_name(name).map_err(|e| format!("lock {}: {e}", Short(name)))?;
            let at = |what: String| format!("lock {}: {what}", Short(name));
            if lock.is_empty() {
                return Err(at("no holders and no waiters".into()));
            }
            let exclusive = lock
                .holders
                .iter()
                .filter(|h| h.mode == LockMode::Exclusive)
                .count();
            if exclusive > 1 || (exclusive == 1 && lock.holders.len() > 1) {
                return Err(at(format!(
                    "{exclusive} exclusive holders among {}",
                    lock.holders.len()
                )));
            }
            let mut prev_token = 0;
            for h in &lock.holders {
                if h.token <= prev_token || h.token >= self.next_token {
                    return Err(at(format!(
                        "holder token {} out of order or not below next token {}",
                        h.token, self.next_token
                    )));
                }
                prev_token = h.token;
                if !tokens.insert(h.token) {
                    return Err(at(format!("token {} held twice", h.token)));
                }
                if h.lease == 0 || h.owner.len() > MAX_OWNER_LEN {
                    return Err(at(format!("holder {} has a bad lease or owner", h.token)));
                }
                add_ref(&mut refs, h.lease, name);
            }
            if lock.waiters.len() > MAX_WAITERS_PER_LOCK {
                return Err(at(format!("{} waiters", lock.waiters.len())));
            }
            let mut prev: Option<&Waiter> = None;
            for w in &lock.waiters {
                if let Some(p) = prev {
                    let ordered = p.priority > w.priority
                        || (p.priority == w.priority && p.waiter_id < w.waiter_id);
                    if !ordered {
                        return Err(at(format!(
                            "waiter {} is queued behind waiter {} out of priority/FIFO order",
                            w.waiter_id, p.waiter_id
                        )));
                    }
                }
                prev = Some(w);
                if w.waiter_id == 0 || w.waiter_id >= self.next_waiter_id {
                    return Err(at(format!(
                        "waiter id {} not below next waiter id {}",
                        w.waiter_id, self.next_waiter_id
                    )));
                }
                if !waiter_ids.insert(w.waiter_id) {
                    return Err(at(format!("waiter id {} queued twice", w.waiter_id)));
                }
                if w.lease == 0 || w.owner.len() > MAX_OWNER_LEN {
                    return Err(at(format!(
                        "waiter {} has a bad lease or owner",
                        w.waiter_id
                    )));
                }
                add_ref(&mut refs, w.lease, name);
            }
            if let Some(head) = lock.waiters.front() {
                if lock.compatible(head.mode) && self.next_token != u64::MAX {
                    return Err(at(format!(
                        "waiter {} at the head of the queue could be granted",
                        head.waiter_id
                    )));
                }
            }
        }
        if refs != self.lease_refs {
            return Err("lease index does not match the holders and waiters".into());
        }
        Ok(())
    }
}

/// Whether a command carrying `proof` may act as `holder` (see
/// [`LockTable::prove`]). One error for any mismatch: nothing tells which
/// bytes differ.
fn check_proof(name: &str, holder: &Holder, proof: Option<&HandleDigest>) -> Result<(), LockError> {
    match (&holder.proof, proof) {
        (None, _) => Ok(()),
        (Some(have), Some(given)) if have == given => Ok(()),
        (Some(_), Some(_)) => Err(LockError::WrongHandle {
            name: name.to_owned(),
            token: holder.token,
        }),
        (Some(_), None) => Err(LockError::HandleRequired {
            name: name.to_owned(),
            token: holder.token,
        }),
    }
}

fn granted_now(req: &AcquireRequest, token: u64) -> Acquired {
    Acquired {
        outcome: AcquireOutcome::Granted { token },
        events: vec![LockEvent::Granted {
            name: req.name.clone(),
            token,
            waiter_id: None,
            owner: req.owner.clone(),
            mode: req.mode,
            lease: req.lease,
        }],
    }
}

#[cfg(test)]
#[path = "lock_table_tests.rs"]
mod tests;
