//! The history of a chaos run: every operation a client (or the nemesis, or
//! the harness itself) invoked, with the monotonic times of its invocation
//! and completion, its arguments, and what came back — ok, fail (definitely
//! not applied) or info (indeterminate: it may or may not have taken effect).
//! Plus every event each watcher received.
//!
//! Owns the record types, the shared recorder and the JSON-lines files. It
//! never judges a history; that is `check`'s job.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How an operation ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The server answered with a result.
    Ok,
    /// Definitely not applied: refused before it could take effect.
    Fail,
    /// Indeterminate: a timeout or a lost connection after sending.
    Info,
}

/// What an operation asked for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Call {
    /// Read one register (linearizable unless `serializable`). `fault`:
    /// the harness deliberately served it as a serializable read from a
    /// follower although the client asked for a linearizable one.
    Read {
        key: String,
        serializable: bool,
        #[serde(default)]
        fault: bool,
    },
    /// Put a unique value into a register.
    Write { key: String, value: String },
    /// Compare-and-set by Txn: if value == from then put to.
    Cas {
        key: String,
        from: String,
        to: String,
    },
    /// Read every bank account in one Range.
    BankRead { serializable: bool },
    /// Move `amount` between accounts by a Txn guarded by the accounts'
    /// mod revisions; the balances it writes are given.
    Transfer {
        from: u32,
        to: u32,
        amount: i64,
        from_balance: i64,
        to_balance: i64,
    },
    /// Create the bank accounts.
    BankInit { accounts: u32, balance: i64 },
    /// Grant a lease for a lock session.
    LeaseGrant { ttl: i64 },
    /// Revoke a lock session's lease.
    LeaseRevoke { lease: i64 },
    /// Acquire an exclusive native lock with `lease`.
    Acquire { lock: String, lease: i64 },
    /// Read the counter a lock protects.
    CounterRead { lock: String },
    /// Fenced write of the counter (`from` + 1 = `to`) with `token`.
    FencedIncr {
        lock: String,
        token: u64,
        from: i64,
        to: i64,
    },
    /// Release a lock hold.
    Release { lock: String, token: u64 },
    /// The client stalled on purpose while holding a lock (a GC-like pause).
    ClientPause { lock: String, token: u64, ms: u64 },
    /// One watch stream session from `from_revision` on a member.
    WatchSession {
        watcher: u32,
        member: String,
        from_revision: i64,
    },
    /// Create the counters of the counter workload at 0 (once).
    CountersInit { counters: u32 },
    /// Read one counter of the counter workload (linearizable).
    CounterGet { counter: u32 },
    /// Exactly-once increment number `seq` of this process: a Txn, tagged
    /// with the process's client id and a request id, that compares the
    /// counter's mod revision with `mod_revision` and then puts `from` + 1
    /// and the marker "applied COUNTER FROM+1", else puts the marker
    /// "refused COUNTER" (marker key `keys::increment_marker(process, seq)`).
    Increment {
        counter: u32,
        seq: u64,
        from: i64,
        mod_revision: i64,
    },
    /// Read every counter and increment marker at one revision at the end.
    CountersFinal,
    /// A fault injected or healed.
    Nemesis { action: String },
}

/// What came back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum Ret {
    /// A register (or counter) read: value and its mod revision (0: absent).
    Read {
        value: Option<String>,
        mod_revision: i64,
        revision: i64,
    },
    /// A write applied at `revision`.
    Written { revision: i64 },
    /// A compare-and-set (or transfer) Txn: whether its compares held.
    Txn { succeeded: bool, revision: i64 },
    /// Every account's balance, by account number.
    Bank {
        balances: Vec<(u32, i64)>,
        revision: i64,
    },
    /// A granted lease.
    Lease { id: i64 },
    /// A lock grant and its fencing token.
    Granted { token: u64, revision: i64 },
    /// Done, nothing to report beyond the revision.
    Done { revision: i64 },
    /// A watch session ended after `events` events.
    WatchEnded { events: u64, last_revision: i64 },
    /// The counter workload's keys at one revision: every counter and every
    /// increment marker.
    Counters {
        counters: Vec<CounterState>,
        markers: Vec<Marker>,
        revision: i64,
    },
}

/// A counter of the counter workload as read at the end.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CounterState {
    pub counter: u32,
    /// The value (`None`: not a number).
    pub value: Option<i64>,
    /// How many times the key was put since it was created.
    pub version: i64,
}

/// An increment marker (`keys::increment_marker`) as read at the end.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub process: u32,
    pub seq: u64,
    pub value: String,
    /// How many times the key was put: 1 unless a Txn was applied twice.
    pub version: i64,
    pub mod_revision: i64,
}

/// Who ran an operation: process 0 is the harness itself (set-up, final
/// reads, the nemesis); clients are numbered from 1.
pub const HARNESS: u32 = 0;

/// One operation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Position in the history (assigned at completion).
    pub id: u64,
    /// The client that ran it ([`HARNESS`] for the harness).
    pub process: u32,
    /// Nanoseconds since the run started when it was invoked.
    pub invoke_ns: u64,
    /// Nanoseconds since the run started when its answer (or the failure)
    /// arrived. For an `info` op the effect may come at any later time.
    pub complete_ns: u64,
    pub call: Call,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The member that answered or was asked, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

impl Op {
    /// A compact one-line rendering for reports.
    pub fn render(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("<unprintable op: {e}>"))
    }
}

/// Whether a watch event is a put or a delete.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Put,
    Delete,
}

/// One event a watcher received.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Watcher number; [`CANONICAL_WATCHER`] is the harness's final replay.
    pub watcher: u32,
    /// Session (stream) number within the watcher, from 0.
    pub session: u32,
    pub member: String,
    /// The event's mod revision.
    pub revision: i64,
    pub key: String,
    pub kind: EventKind,
    pub value: String,
    pub recv_ns: u64,
}

/// The watcher number of the final replay every watcher is compared with.
pub const CANONICAL_WATCHER: u32 = 0;

/// Settings of the run that the checkers need.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RunMeta {
    pub seed: u64,
    pub members: usize,
    pub duration_s: u64,
    pub workloads: Vec<String>,
    pub nemeses: Vec<String>,
    pub fault: Option<String>,
    pub bank_accounts: u32,
    pub bank_balance: i64,
    /// The highest mod revision under the watched prefix at the end (0 if
    /// it could not be read).
    pub final_revision: i64,
    /// Whether the events of one revision must reach every watcher in the
    /// same order (otherwise only the order of revisions is checked).
    #[serde(default)]
    pub strict_watch_order: bool,
    /// Counters of the counter workload (0: not run).
    #[serde(default)]
    pub counters: u32,
}

/// A whole run, as the checkers see it.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub meta: RunMeta,
    pub ops: Vec<Op>,
    pub events: Vec<WatchEvent>,
}

/// Shared recorder: clones append to the same history.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<Recorded>>,
}

#[derive(Default)]
struct Recorded {
    ops: Vec<Op>,
    events: Vec<WatchEvent>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(Recorded::default())),
        }
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a completed operation; assigns its id.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        process: u32,
        invoke_ns: u64,
        call: Call,
        outcome: Outcome,
        ret: Option<Ret>,
        error: Option<String>,
        member: Option<String>,
    ) {
        let complete_ns = self.now();
        let mut g = self.lock();
        let id = g.ops.len() as u64;
        g.ops.push(Op {
            id,
            process,
            invoke_ns,
            complete_ns,
            call,
            outcome,
            ret,
            error,
            member,
        });
    }

    pub fn event(&self, e: WatchEvent) {
        self.lock().events.push(e);
    }

    pub fn op_count(&self) -> usize {
        self.lock().ops.len()
    }

    /// Everything recorded so far, ops sorted by invocation time.
    pub fn snapshot(&self, meta: RunMeta) -> History {
        let g = self.lock();
        let mut ops = g.ops.clone();
        ops.sort_by_key(|o| (o.invoke_ns, o.id));
        History {
            meta,
            ops,
            events: g.events.clone(),
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// File names inside the output directory.
pub const HISTORY_FILE: &str = "history.jsonl";
pub const EVENTS_FILE: &str = "watch.jsonl";
pub const META_FILE: &str = "run.json";

fn write_lines<T: Serialize>(path: &Path, items: &[T]) -> anyhow::Result<()> {
    let f = std::fs::File::create(path)
        .map_err(|e| anyhow::anyhow!("create {}: {e}", path.display()))?;
    let mut w = BufWriter::new(f);
    for it in items {
        serde_json::to_writer(&mut w, it)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Vec<T>> {
    let f =
        std::fs::File::open(path).map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?,
        );
    }
    Ok(out)
}

impl History {
    /// Writes `history.jsonl`, `watch.jsonl` and `run.json` into `dir`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        write_lines(&dir.join(HISTORY_FILE), &self.ops)?;
        write_lines(&dir.join(EVENTS_FILE), &self.events)?;
        std::fs::write(
            dir.join(META_FILE),
            serde_json::to_string_pretty(&self.meta)?,
        )?;
        Ok(())
    }

    /// Reads what [`History::save`] wrote.
    pub fn load(dir: &Path) -> anyhow::Result<History> {
        let meta_path = dir.join(META_FILE);
        let meta: RunMeta = serde_json::from_str(
            &std::fs::read_to_string(&meta_path)
                .map_err(|e| anyhow::anyhow!("read {}: {e}", meta_path.display()))?,
        )?;
        let mut ops: Vec<Op> = read_lines(&dir.join(HISTORY_FILE))?;
        ops.sort_by_key(|o| (o.invoke_ns, o.id));
        let events = read_lines(&dir.join(EVENTS_FILE))?;
        Ok(History { meta, ops, events })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_through_json_lines() {
        let rec = Recorder::new();
        rec.record(
            3,
            5,
            Call::Cas {
                key: "k".into(),
                from: "a".into(),
                to: "b".into(),
            },
            Outcome::Ok,
            Some(Ret::Txn {
                succeeded: true,
                revision: 9,
            }),
            None,
            Some("n1".into()),
        );
        rec.record(
            1,
            1,
            Call::Read {
                key: "k".into(),
                serializable: false,
                fault: false,
            },
            Outcome::Info,
            None,
            Some("timeout".into()),
            None,
        );
        let h = rec.snapshot(RunMeta {
            seed: 7,
            ..Default::default()
        });
        assert_eq!(h.ops[0].process, 1, "sorted by invocation");
        let dir = std::env::temp_dir().join(format!("warden-chaos-hist-{}", std::process::id()));
        h.save(&dir).expect("save");
        let back = History::load(&dir).expect("load");
        assert_eq!(back.ops, h.ops);
        assert_eq!(back.meta.seed, 7);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(h.ops[1].render().contains("\"f\":\"cas\""));
    }
}
