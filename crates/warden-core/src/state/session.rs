//! Client sessions: exactly-once writes (Raft dissertation §6.3, SPEC K4).
//!
//! Owns the table of sessions a write tagged with a client id and a request
//! id goes through when it is applied: [`SessionTable::admit`] decides
//! whether the request is new (apply it, then [`SessionTable::record`] its
//! response), a retry (answer the first attempt's response again) or one
//! whose outcome has been forgotten (refused with
//! [`StateError::SessionExpired`] or [`StateError::ResponseForgotten`],
//! never applied a second time).
//!
//! Bounded: at most [`SessionLimits::max_sessions`] sessions (the least
//! recently used one is forgotten to make room), each keeping at most
//! [`SessionLimits::max_responses`] responses (the lowest is dropped first)
//! and only those at or above the client's acknowledged mark; a session
//! idle for [`SessionLimits::idle_ttl_ms`] of log time is forgotten.
//! Log time is the largest time stamp any tagged request carried (the
//! proposing member stamps it), so it never goes backwards and is the same
//! on every replica; this module never reads a clock.
//!
//! A forgotten session leaves its highest request id in a fixed-size table
//! of watermarks indexed by a hash of the client id: a request of an unknown
//! client at or below its bucket's watermark may be a retry of a forgotten
//! session and is refused. That costs a new client with small request ids a
//! refusal when its bucket is taken (it then picks higher ids), never a
//! second apply.
//!
//! Must never: apply a tagged request twice, iterate a hash map, read a
//! clock, or grow without bound.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::StateError;
use super::machine::CommandResult;

/// Longest client id accepted, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 128;

/// Number of watermark buckets of forgotten sessions.
pub const FORGOTTEN_BUCKETS: u64 = 4096;

/// What a tagged write carries besides its command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTag {
    /// The client's id (`warden-client-id`), at most
    /// [`MAX_CLIENT_ID_BYTES`] bytes.
    pub client_id: String,
    /// The request's sequence number (`warden-request-id`); a retry uses
    /// the same one.
    pub request_id: u64,
    /// The lowest request id the client still has in flight
    /// (`warden-acked-below`): responses below it may be forgotten. 0 when
    /// the client did not say.
    pub acked_below: u64,
    /// Unix time in milliseconds, stamped by the proposing member.
    pub at_ms: u64,
}

/// A response kept for retries: what the first attempt answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The store revision after the entry (the response header revision).
    pub revision: i64,
    /// The command's result (`None` for entries without one).
    pub result: Result<Option<CommandResult>, StateError>,
}

/// The bounds of a [`SessionTable`]. The same on every replica (they decide
/// what is forgotten); the defaults are what members use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// A session unused for this long in log time is forgotten.
    pub idle_ttl_ms: u64,
    /// At most this many sessions; the least recently used goes first.
    pub max_sessions: usize,
    /// At most this many kept responses per session; the lowest goes first.
    pub max_responses: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            idle_ttl_ms: 10 * 60 * 1000,
            max_sessions: 20_000,
            max_responses: 64,
        }
    }
}

/// What [`SessionTable::admit`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A new request: apply it, then [`SessionTable::record`] its response.
    Fresh,
    /// A retry of an applied request: answer this, apply nothing.
    Replay(Stored),
    /// The outcome of this request is no longer known: answer the error,
    /// apply nothing.
    Refused(StateError),
}

/// One client's session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// Key of this session in `by_use`: (log time, use sequence).
    last_used: (u64, u64),
    /// Every applied request id at or above this one has its response in
    /// `responses`; below it nothing is known.
    floor: u64,
    /// Kept responses by request id.
    responses: BTreeMap<u64, Stored>,
    /// Highest request id applied in this session (0 if none yet).
    highest: u64,
}

/// The replicated session table. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTable {
    /// Log time: the largest stamp seen.
    clock_ms: u64,
    /// Counter ordering uses within one millisecond.
    uses: u64,
    sessions: BTreeMap<String, Session>,
    /// Sessions in order of last use (so also of idleness).
    by_use: BTreeMap<(u64, u64), String>,
    /// Highest request id of forgotten sessions, by client id bucket.
    forgotten: BTreeMap<u64, u64>,
    #[serde(skip)]
    limits: SessionLimits,
}

/// FNV-1a of the client id: its watermark bucket.
fn bucket(client_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % FORGOTTEN_BUCKETS
}

/// Most idle sessions forgotten by one admission (the rest go on later
/// ones; an idle session is refused alike whether or not it was swept).
const SWEEP_PER_ADMIT: usize = 256;

impl SessionTable {
    /// An empty table with other bounds than the default (tests).
    pub fn with_limits(limits: SessionLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Sets the bounds (after decoding: they are not encoded).
    pub fn set_limits(&mut self, limits: SessionLimits) {
        self.limits = limits;
    }

    /// True for a table no tagged request ever reached: it is then left
    /// out of snapshots.
    pub fn is_pristine(&self) -> bool {
        self.clock_ms == 0
            && self.uses == 0
            && self.sessions.is_empty()
            && self.forgotten.is_empty()
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when no session is live.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Number of responses kept over all sessions.
    pub fn kept_responses(&self) -> usize {
        self.sessions.values().map(|s| s.responses.len()).sum()
    }

    /// The log time (largest stamp seen), in Unix milliseconds.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Decides what to do with a tagged request (see [`Admission`]),
    /// advancing log time, forgetting idle sessions and dropping responses
    /// the client acknowledged. Deterministic.
    pub fn admit(&mut self, tag: &SessionTag) -> Admission {
        self.clock_ms = self.clock_ms.max(tag.at_ms);
        self.sweep();
        if tag.client_id.len() > MAX_CLIENT_ID_BYTES {
            // Checked at the api edge too; refused alike on every replica.
            return Admission::Refused(StateError::SessionExpired);
        }
        let idle = self.idle_before();
        let expired = self
            .sessions
            .get(&tag.client_id)
            .is_some_and(|s| s.last_used.0 < idle);
        if expired {
            self.forget(&tag.client_id);
        }
        let key = self.next_use();
        let limits = self.limits;
        match self.sessions.get_mut(&tag.client_id) {
            Some(s) => {
                self.by_use.remove(&s.last_used);
                s.last_used = key;
                self.by_use.insert(key, tag.client_id.clone());
                // Acknowledged responses are dropped; never past the
                // request itself, which is still in flight.
                let acked = tag.acked_below.min(tag.request_id);
                if acked > s.floor {
                    s.floor = acked;
                    s.responses = s.responses.split_off(&acked);
                }
                if let Some(r) = s.responses.get(&tag.request_id) {
                    return Admission::Replay(r.clone());
                }
                if tag.request_id < s.floor {
                    return Admission::Refused(StateError::ResponseForgotten);
                }
                Admission::Fresh
            }
            None => {
                let mark = self
                    .forgotten
                    .get(&bucket(&tag.client_id))
                    .copied()
                    .unwrap_or(0);
                if tag.request_id <= mark {
                    return Admission::Refused(StateError::SessionExpired);
                }
                while self.sessions.len() >= limits.max_sessions.max(1) {
                    let Some((_, lru)) = self.by_use.first_key_value() else {
                        break;
                    };
                    let lru = lru.clone();
                    self.forget(&lru);
                }
                let floor = tag
                    .acked_below
                    .min(tag.request_id)
                    .max(mark.saturating_add(1));
                self.sessions.insert(
                    tag.client_id.clone(),
                    Session {
                        last_used: key,
                        floor,
                        responses: BTreeMap::new(),
                        highest: 0,
                    },
                );
                self.by_use.insert(key, tag.client_id.clone());
                Admission::Fresh
            }
        }
    }

    /// Keeps the response of a request [`SessionTable::admit`] found fresh.
    pub fn record(&mut self, tag: &SessionTag, stored: Stored) {
        let max = self.limits.max_responses.max(1);
        let Some(s) = self.sessions.get_mut(&tag.client_id) else {
            return;
        };
        s.highest = s.highest.max(tag.request_id);
        s.responses.insert(tag.request_id, stored);
        while s.responses.len() > max {
            let Some((lowest, _)) = s.responses.pop_first() else {
                break;
            };
            s.floor = s.floor.max(lowest.saturating_add(1));
        }
    }

    /// Applies a tagged request at most once: `apply` runs only if
    /// [`SessionTable::admit`] finds the request fresh, and its response is
    /// kept; a retry gets the kept response, a forgotten one the error at
    /// `revision` (the current store revision, unchanged).
    pub fn apply_once(
        &mut self,
        tag: &SessionTag,
        revision: i64,
        apply: impl FnOnce() -> Stored,
    ) -> Stored {
        match self.admit(tag) {
            Admission::Fresh => {
                let stored = apply();
                // A value this member could not read back is not the
                // request's answer: the member stops without applying it,
                // and a restart applies it again.
                if !matches!(stored.result, Err(StateError::HistoryRead(_))) {
                    self.record(tag, stored.clone());
                }
                stored
            }
            Admission::Replay(stored) => stored,
            Admission::Refused(e) => Stored {
                revision,
                result: Err(e),
            },
        }
    }

    /// Sessions last used before this log time are idle.
    fn idle_before(&self) -> u64 {
        self.clock_ms.saturating_sub(self.limits.idle_ttl_ms)
    }

    fn next_use(&mut self) -> (u64, u64) {
        self.uses = self.uses.wrapping_add(1);
        (self.clock_ms, self.uses)
    }

    /// Forgets a few idle sessions, oldest first.
    fn sweep(&mut self) {
        let idle = self.idle_before();
        for _ in 0..SWEEP_PER_ADMIT {
            let Some((&(at, _), client)) = self.by_use.first_key_value() else {
                return;
            };
            if at >= idle {
                return;
            }
            let client = client.clone();
            self.forget(&client);
        }
    }

    /// Drops a session, leaving its highest request id in its bucket.
    fn forget(&mut self, client_id: &str) {
        let Some(s) = self.sessions.remove(client_id) else {
            return;
        };
        self.by_use.remove(&s.last_used);
        // Ids below the floor may have been applied without a response
        // kept: the watermark covers them too.
        let high = s.highest.max(s.floor.saturating_sub(1));
        if high > 0 {
            let w = self.forgotten.entry(bucket(client_id)).or_insert(0);
            *w = (*w).max(high);
        }
    }

    /// Checks what a decoded table must satisfy.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.by_use.len() != self.sessions.len() {
            return Err(format!(
                "session table: {} sessions but {} in use order",
                self.sessions.len(),
                self.by_use.len()
            ));
        }
        for (key, client) in &self.by_use {
            match self.sessions.get(client) {
                Some(s) if s.last_used == *key => {}
                _ => return Err(format!("session table: use order names {client:?} wrongly")),
            }
        }
        for (client, s) in &self.sessions {
            if client.len() > MAX_CLIENT_ID_BYTES {
                return Err("session table: client id too long".into());
            }
            if s.last_used.0 > self.clock_ms {
                return Err(format!("session table: {client:?} used after the clock"));
            }
            if s.responses.keys().next().is_some_and(|k| *k < s.floor) {
                return Err(format!(
                    "session table: {client:?} keeps a response below its floor"
                ));
            }
        }
        if self.forgotten.keys().any(|b| *b >= FORGOTTEN_BUCKETS) {
            return Err("session table: watermark bucket out of range".into());
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
