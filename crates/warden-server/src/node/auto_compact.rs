//! Auto-compaction, as etcd's `--auto-compaction-mode` /
//! `--auto-compaction-retention` (etcd v3.4 `compactor` package): the leader
//! proposes `Compact` commands through the log, so every member compacts at
//! the same revision. Followers do nothing; a member that becomes leader
//! starts sampling afresh.
//!
//! - **periodic** (retention a duration): every `retention / 10` (at most
//!   6 min) the current revision is sampled, keeping the samples of the last
//!   `retention`; every `min(retention, 1 h)` the oldest sample, the
//!   revision of about `retention` ago, is compacted. History of the last
//!   `retention` is kept.
//! - **revision** (retention a number of revisions): every 5 minutes, the
//!   store is compacted at `current revision - retention` if that moved.
//!
//! The decision is the pure [`Compactor`] (time passed in), unit-tested
//! here; [`run`] drives it with the clock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::types::Request;
use super::Node;
use warden_core::state::types::CompactionRequest;
use warden_core::state::{Command, StateError};

/// How often the revision mode looks (etcd's `revision` compactor).
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// An auto-compaction policy (`None` in `NodeConfig`: off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep the history of the last `Duration`.
    Periodic(Duration),
    /// Keep the last `i64` revisions.
    Revision(i64),
}

/// The decision half of auto-compaction: fed the time and the current
/// revision at every [`Compactor::interval`], it says when to compact and at
/// which revision.
#[derive(Clone, Debug)]
pub struct Compactor {
    policy: AutoCompaction,
    /// Periodic: sampled revisions, oldest first.
    samples: VecDeque<i64>,
    /// When a compaction was last due (start of sampling at first).
    last: Option<Duration>,
    /// The last revision compaction was asked for.
    last_rev: i64,
}

impl Compactor {
    pub fn new(policy: AutoCompaction) -> Self {
        Compactor {
            policy,
            samples: VecDeque::new(),
            last: None,
            last_rev: 0,
        }
    }

    /// How often [`Compactor::tick`] should be called.
    pub fn interval(&self) -> Duration {
        match self.policy {
            AutoCompaction::Periodic(p) => {
                (p.min(Duration::from_secs(3600)) / 10).max(Duration::from_millis(10))
            }
            AutoCompaction::Revision(_) => REVISION_CHECK_INTERVAL,
        }
    }

    /// Forgets everything (leadership was lost).
    pub fn reset(&mut self) {
        self.samples.clear();
        self.last = None;
    }

    /// One step at time `now` (since any fixed origin) with the store at
    /// revision `rev`: the revision to compact at, if one is due.
    pub fn tick(&mut self, now: Duration, rev: i64) -> Option<i64> {
        match self.policy {
            AutoCompaction::Revision(keep) => {
                let at = rev.saturating_sub(keep);
                if at <= 0 || at == self.last_rev {
                    return None;
                }
                self.last_rev = at;
                Some(at)
            }
            AutoCompaction::Periodic(period) => {
                let interval = self.interval();
                let keep = usize::try_from(period.as_nanos() / interval.as_nanos().max(1))
                    .unwrap_or(usize::MAX)
                    .saturating_add(1);
                self.samples.push_back(rev);
                while self.samples.len() > keep {
                    self.samples.pop_front();
                }
                let started = *self.last.get_or_insert(now);
                let every = period.min(Duration::from_secs(3600));
                if now.saturating_sub(started) < every || self.samples.len() < keep {
                    return None;
                }
                self.last = Some(now);
                let at = self.samples.front().copied()?;
                if at <= 0 || at == self.last_rev {
                    return None;
                }
                self.last_rev = at;
                Some(at)
            }
        }
    }
}

/// Runs auto-compaction for `node` until the process ends: on the leader
/// only, proposing `Compact` when the [`Compactor`] says so.
pub async fn run(node: Arc<Node>, policy: AutoCompaction) {
    let mut c = Compactor::new(policy);
    let origin = Instant::now();
    let mut ticker = tokio::time::interval(c.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if node.leader() != Some(node.id()) {
            c.reset();
            continue;
        }
        let Some(at) = c.tick(origin.elapsed(), node.revision()) else {
            continue;
        };
        let cmd = Command::Compact(CompactionRequest {
            revision: at,
            physical: false,
        });
        let deadline = node.deadline(None);
        match node.write(Request::kv(cmd), deadline).await {
            Ok(r) => match r.result {
                Ok(_) => tracing::info!(revision = at, "auto-compacted"),
                // Someone compacted further already: nothing to do.
                Err(StateError::Compacted) => {}
                Err(e) => tracing::warn!(revision = at, "auto-compaction refused: {e}"),
            },
            Err(e) => tracing::warn!(revision = at, "auto-compaction not applied: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn revision_mode_keeps_the_last_n_revisions() {
        let mut c = Compactor::new(AutoCompaction::Revision(100));
        assert_eq!(c.interval(), secs(300));
        assert_eq!(c.tick(secs(0), 50), None, "nothing old enough");
        assert_eq!(c.tick(secs(300), 150), Some(50));
        assert_eq!(c.tick(secs(600), 150), None, "no new revisions");
        assert_eq!(c.tick(secs(900), 1000), Some(900));
    }

    #[test]
    fn periodic_mode_compacts_at_the_revision_of_one_period_ago() {
        // 10 s retention: a sample every second, 11 samples kept, a
        // compaction every 10 s at the oldest sample.
        let mut c = Compactor::new(AutoCompaction::Periodic(secs(10)));
        assert_eq!(c.interval(), secs(1));
        let mut out = Vec::new();
        for t in 0..=30u64 {
            // The revision grows by 10 a second.
            if let Some(at) = c.tick(secs(t), 10 * t as i64 + 1) {
                out.push((t, at));
            }
        }
        assert_eq!(out, vec![(10, 1), (20, 101), (30, 201)]);
    }

    #[test]
    fn periodic_mode_restarts_after_losing_leadership() {
        let mut c = Compactor::new(AutoCompaction::Periodic(secs(10)));
        for t in 0..10 {
            assert_eq!(c.tick(secs(t), 5), None);
        }
        c.reset();
        for t in 10..20 {
            assert_eq!(c.tick(secs(t), 5), None, "a full period again first");
        }
        assert_eq!(c.tick(secs(20), 7), Some(5));
        // An idle store is not compacted twice at the same revision.
        for t in 21..=40 {
            assert_eq!(c.tick(secs(t), 7).filter(|&r| r == 5), None);
        }
    }

    #[test]
    fn long_periods_compact_hourly() {
        let c = Compactor::new(AutoCompaction::Periodic(secs(72 * 3600)));
        assert_eq!(c.interval(), secs(360));
    }
}
