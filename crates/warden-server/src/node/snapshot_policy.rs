//! When a member builds a state-machine snapshot: once the log applied since
//! its last snapshot holds at least `--snapshot-entries` entries *and* at
//! least half as many entries as the state has live keys, up to
//! [`MAX_INTERVAL`] ([`snapshot_due`]).
//!
//! Why not every `--snapshot-entries` entries, as openraft's own policy
//! does: a snapshot serialises the whole state, so its cost grows with the
//! state while the log it lets go of does not. With 100 000 keys, one
//! snapshot every 10 000 puts cost a fifth of the write throughput under 256
//! clients (docs/benchmarks.md, "Snapshots in proportion to the state").
//! Tying the interval to the state's size keeps the snapshot work per write
//! bounded, and the log a restart replays stays at most half the state's
//! size in entries (and at most [`MAX_INTERVAL`]), so restart time still
//! follows the state's size.

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
/// `min_entries` the configured interval, `live_keys` the state's size.
pub(super) fn snapshot_due(since: u64, min_entries: u64, live_keys: u64) -> bool {
    since >= min_entries.max((live_keys / 2).min(MAX_INTERVAL))
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
        let keys = node
            .with_state(|d| d.kv.mvcc().len() as u64)
            .unwrap_or(u64::MAX);
        if !snapshot_due(since, node.config.snapshot_entries, keys) {
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
    use super::snapshot_due;

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
}
