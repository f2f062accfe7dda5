//! When a member builds a state-machine snapshot: once the log applied since
//! its last snapshot holds at least `--snapshot-entries` entries *and* as
//! many entries as the state's size earns ([`snapshot_due`]): half its live
//! keys, or one entry per [`BYTES_PER_ENTRY`] of the versions it retains,
//! whichever is more, up to [`MAX_INTERVAL`].
//!
//! Why not every `--snapshot-entries` entries, as openraft's own policy
//! does: a snapshot serialises the whole state, every retained version and
//! its value, so its cost grows with the state while the log it lets go of
//! does not. With 100 000 keys, one snapshot every 10 000 puts cost a fifth
//! of the write throughput under 256 clients (docs/benchmarks.md, "Snapshots
//! in proportion to the state"). Half the live keys alone was not enough:
//! a store written over and over without compaction keeps every version,
//! and with 560 000 versions of 100 000 keys building snapshots took 16 % of
//! the leader's CPU and 21 % of a follower's under 64-client puts ("Snapshots
//! in proportion to the history"). Tying the interval to the bytes retained
//! bounds the snapshot work per applied entry to about [`BYTES_PER_ENTRY`]
//! until the cap. The cost is the log a restart replays: at most
//! [`MAX_INTERVAL`] entries (etcd 3.4 replays up to its `--snapshot-count`,
//! 100 000 by default, too). With large values those entries would be a
//! huge log, so the history earns interval only while the writes since the
//! last snapshot have added less than the state retained at it
//! ([`StateSize::added_bytes`]).

use std::sync::Weak;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tokio::time::{Instant, MissedTickBehavior};

use super::Node;

/// How often the policy looks at the applied index.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// How long a requested snapshot may take before it is requested again
/// (openraft ignores a request while one is being built).
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The longest interval the state's size stretches it to (etcd 3.4's
/// default `--snapshot-count`): a restart replays at most this many
/// entries, unless `--snapshot-entries` asks for more.
pub const MAX_INTERVAL: u64 = 100_000;

/// Bytes of retained versions (`MvccStore::size`: keys, values and a fixed
/// overhead per version) that earn one entry of interval; a snapshot then
/// writes at most about this much per entry applied since the last one
/// (until [`MAX_INTERVAL`]).
pub const BYTES_PER_ENTRY: u64 = 1024;

/// The state's size, as the policy reads it.
#[derive(Clone, Copy, Debug)]
pub(super) struct StateSize {
    /// Live keys.
    pub live_keys: u64,
    /// Bytes of every retained version (`MvccStore::size`).
    pub retained_bytes: u64,
    /// How much `retained_bytes` grew since the last snapshot: about the
    /// bytes of the writes the log holds since then.
    pub added_bytes: u64,
}

/// Whether a snapshot is due: `since` entries applied after the last one,
/// `min_entries` the configured interval, `state` the state's size.
///
/// The retained versions earn interval only while the writes since the
/// last snapshot have added less than half the bytes retained now (less
/// than were retained at the snapshot): with large values
/// an interval of many entries would be a log of many gigabytes, so once
/// the log holds that much the history earns nothing more and the interval
/// is what the live keys earn, as before the history counted.
pub(super) fn snapshot_due(since: u64, min_entries: u64, state: StateSize) -> bool {
    let by_keys = state.live_keys / 2;
    let by_history = if state.added_bytes < state.retained_bytes / 2 {
        state.retained_bytes / BYTES_PER_ENTRY
    } else {
        0
    };
    since >= min_entries.max(by_keys.max(by_history).min(MAX_INTERVAL))
}

/// Asks openraft for a snapshot whenever [`snapshot_due`]; ends when the
/// member is gone.
pub(super) async fn run(node: Weak<Node>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // The snapshot index when a snapshot was last asked for, and when.
    let mut asked: Option<(u64, Instant)> = None;
    // The latest snapshot's index and the retained bytes when this task
    // first saw it.
    let mut base: Option<(u64, u64)> = None;
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else {
            return;
        };
        let (applied, snapshot) = {
            let m = node.raft.metrics();
            let m = m.borrow_watched();
            (
                m.last_applied.as_ref().map_or(0, |l| l.index),
                m.snapshot.as_ref().map_or(0, |l| l.index),
            )
        };
        let since = applied.saturating_sub(snapshot);
        let (live_keys, retained_bytes) = node
            .with_state(|d| (d.kv.mvcc().len() as u64, d.kv.mvcc().size()))
            .unwrap_or((u64::MAX, u64::MAX));
        let at_snapshot = match base {
            Some((index, bytes)) if index == snapshot => bytes,
            _ => {
                base = Some((snapshot, retained_bytes));
                retained_bytes
            }
        };
        let state = StateSize {
            live_keys,
            retained_bytes,
            added_bytes: retained_bytes.saturating_sub(at_snapshot),
        };
        if !snapshot_due(since, node.config.snapshot_entries, state) {
            continue;
        }
        if asked.is_some_and(|(at, when)| at == snapshot && when.elapsed() < RETRY_AFTER) {
            continue;
        }
        asked = Some((snapshot, Instant::now()));
        if let Err(e) = node.raft.trigger().snapshot().await {
            tracing::warn!("asking for a snapshot: {e}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{snapshot_due, StateSize, BYTES_PER_ENTRY, MAX_INTERVAL};

    fn size(live_keys: u64, retained_bytes: u64, added_bytes: u64) -> StateSize {
        StateSize {
            live_keys,
            retained_bytes,
            added_bytes,
        }
    }

    #[test]
    fn the_interval_grows_with_the_state() {
        // A small state: the configured interval.
        assert!(!snapshot_due(9_999, 10_000, size(100, 30_000, 0)));
        assert!(snapshot_due(10_000, 10_000, size(100, 30_000, 0)));
        // 100 000 small keys written once (about 300 bytes each as
        // counted, 256 of them VERSION_OVERHEAD): every 50 000 entries,
        // half the keys earning more than their bytes.
        let once = size(100_000, 30_000_000, 0);
        assert!(!snapshot_due(49_999, 10_000, once));
        assert!(snapshot_due(50_000, 10_000, once));
        // The same keys written over and over: their history earns more.
        let history = size(100_000, 80_000 * BYTES_PER_ENTRY, 0);
        assert!(!snapshot_due(79_999, 10_000, history));
        assert!(snapshot_due(80_000, 10_000, history));
        // Never before the configured interval, whatever the state.
        assert!(!snapshot_due(99, 100, size(0, 0, 0)));
        // A huge state: at most every MAX_INTERVAL entries...
        assert!(snapshot_due(MAX_INTERVAL, 10_000, size(10_000_000, 0, 0)));
        assert!(snapshot_due(MAX_INTERVAL, 10_000, size(0, u64::MAX, 0)));
        assert!(!snapshot_due(
            MAX_INTERVAL - 1,
            10_000,
            size(0, u64::MAX, 0)
        ));
        // ...unless the configured interval is longer.
        assert!(!snapshot_due(
            MAX_INTERVAL,
            200_000,
            size(10_000_000, u64::MAX, 0)
        ));
    }

    /// Large values: 2 000 keys of 1 MiB retain 2 GiB, which would earn
    /// the longest interval, 100 000 entries of 1 MiB of log. Once the log
    /// since the snapshot holds half the retained bytes again, the history
    /// earns nothing and the configured interval (or the keys') applies.
    #[test]
    fn large_values_do_not_stretch_the_log() {
        let retained = 2_000 << 20;
        assert!(!snapshot_due(10_000, 10_000, size(2_000, retained, 0)));
        assert!(!snapshot_due(
            10_000,
            10_000,
            size(2_000, retained, retained / 2 - 1)
        ));
        assert!(snapshot_due(
            10_000,
            10_000,
            size(2_000, retained, retained / 2)
        ));
        // The configured interval still comes first.
        assert!(!snapshot_due(
            9_999,
            10_000,
            size(2_000, retained, retained)
        ));
    }
}
