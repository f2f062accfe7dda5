//! When a member builds a state-machine snapshot: once the log applied since
//! its last snapshot holds at least `--snapshot-entries` entries *and* at
//! least half as many entries as the state has versions (near enough: its
//! live keys or the revisions kept since the last compaction, whichever is
//! more), up to [`MAX_INTERVAL`] ([`snapshot_due`]).
//!
//! Why not every `--snapshot-entries` entries, as openraft's own policy
//! does: a snapshot serialises the whole state, so its cost grows with the
//! state while the log it lets go of does not. With 100 000 keys, one
//! snapshot every 10 000 puts cost a fifth of the write throughput under 256
//! clients (docs/benchmarks.md, "Snapshots in proportion to the state").
//! Tying the interval to the state's size keeps the snapshot work per write
//! bounded, and the log a restart replays stays at most half the state's
//! size in entries (and at most [`MAX_INTERVAL`]), so restart time still
//! follows the state's size. The size counts history, not only live keys:
//! a snapshot writes every version kept, so 100 000 keys written three
//! times over without a compaction cost a snapshot three times what the
//! keys alone do (docs/benchmarks.md, "Snapshots that do not stall
//! writes").

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

/// Whether a snapshot is due: `since` entries applied after the last one,
/// `min_entries` the configured interval, `size` the state's size
/// ([`state_size`]).
pub(super) fn snapshot_due(since: u64, min_entries: u64, size: u64) -> bool {
    since >= min_entries.max((size / 2).min(MAX_INTERVAL))
}

/// What a snapshot of `mvcc` writes, in versions, within a factor of two:
/// its live keys or the revisions kept since the last compaction, whichever
/// is more (every live key has a version; every kept revision wrote at
/// least one). A state written once per key counts as before history was
/// counted, its keys.
pub(super) fn state_size(mvcc: &warden_core::state::mvcc::MvccStore) -> u64 {
    let kept = mvcc
        .current_revision()
        .saturating_sub(mvcc.compact_revision());
    (mvcc.len() as u64).max(u64::try_from(kept).unwrap_or(0))
}

/// Asks openraft for a snapshot whenever [`snapshot_due`]; ends when the
/// member is gone.
pub(super) async fn run(node: Weak<Node>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // The snapshot index when a snapshot was last asked for, and when.
    let mut asked: Option<(u64, Instant)> = None;
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
        let size = node
            .with_state(|d| state_size(d.kv.mvcc()))
            .unwrap_or(u64::MAX);
        if !snapshot_due(since, node.config.snapshot_entries, size) {
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
    use super::{snapshot_due, state_size};
    use warden_core::state::mvcc::{MvccStore, NoLeases};
    use warden_core::state::types::PutRequest;

    #[test]
    fn the_interval_grows_with_the_state() {
        // A small state: the configured interval.
        assert!(!snapshot_due(9_999, 10_000, 100));
        assert!(snapshot_due(10_000, 10_000, 100));
        // 100 000 keys: every 50 000 entries.
        assert!(!snapshot_due(49_999, 10_000, 100_000));
        assert!(snapshot_due(50_000, 10_000, 100_000));
        // Never before the configured interval, whatever the state.
        assert!(!snapshot_due(99, 100, 0));
        // A huge state: at most every MAX_INTERVAL entries...
        assert!(snapshot_due(super::MAX_INTERVAL, 10_000, 10_000_000));
        // ...unless the configured interval is longer.
        assert!(!snapshot_due(super::MAX_INTERVAL, 200_000, 10_000_000));
    }

    #[test]
    fn the_state_size_counts_history_until_it_is_compacted() {
        let mut m = MvccStore::new();
        let put = |m: &mut MvccStore, k: &str| {
            m.put(
                &PutRequest {
                    key: k.as_bytes().to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                },
                &NoLeases,
            )
            .unwrap();
        };
        for k in ["a", "b", "c"] {
            put(&mut m, k);
        }
        // Three keys written once: the revisions since the store's first
        // (1) up to the third put's (4).
        assert_eq!(state_size(&m), 4);
        for _ in 0..10 {
            put(&mut m, "a");
        }
        // Still three keys, and ten more revisions of history.
        assert_eq!(state_size(&m), 14);
        m.compact(m.current_revision()).unwrap();
        // Only the live keys are left to write.
        assert_eq!(state_size(&m), 3);
    }
}
