//! Reads of this member's applied state, for the API layer: linearizable
//! reads (`linearize`, ReadIndex through the leader), serializable reads
//! behind the readiness gate (`ready_for_reads`), plain state access
//! (`with_state`), watch subscriptions made under the state's read lock
//! (`watch_state`, `subscribe`, `WatchGuard`), the lock feed and state
//! exports (streamed backups, `stream_state`).
//!
//! Must never: answer a linearizable read before this member applied the
//! leader's confirmed commit index, answer a serializable read from a joining
//! member that has not caught up (see `ready_for_reads`), register a watcher
//! other than under a read lock of the state (where its creator notes the
//! revision after which live events start), or leave a watcher registered
//! once its `WatchGuard` is gone.

use std::io;

use openraft::error::{LinearizableReadError, RaftError};
use openraft::ReadPolicy;
use std::sync::Weak;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use super::state_machine::{LockFeed, SmData, SmStore};
use super::watch_hub::{Batch, Cancelled, Subscription, WatchLimits};
use super::{ForwardRequest, ForwardResponse, Node, NodeError};
use warden_core::state::MvccStore;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (ReadIndex).
    Linearizable,
    /// Whatever this member has applied (possibly stale), once it is ready.
    Serializable,
}

/// A watch-hub subscription that unsubscribes when dropped, whichever way
/// its owner ends (returns, fails, is cancelled or aborted).
pub struct WatchGuard {
    sm: SmStore,
    sub: Subscription,
}

impl WatchGuard {
    /// The next batch of events; `None` once the hub cancelled the
    /// subscription (see `cancelled`).
    pub async fn recv(&mut self) -> Option<Batch> {
        self.sub.recv().await
    }

    /// Why the hub cancelled this watcher (too far behind, or a snapshot
    /// replaced the state and it must re-sync), if it did.
    pub fn cancelled(&self) -> Option<Cancelled> {
        self.sub.cancelled()
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.sm.hub().unsubscribe(self.sub.id);
    }
}

/// Registers watchers; handed out only while the state's read lock is held
/// (`Node::watch_state`), so the live events of a watcher are exactly those
/// after the revision read under that lock.
pub struct Subscriber<'a> {
    sm: &'a SmStore,
}

impl Subscriber<'_> {
    /// Watches `[key, range_end)` (etcd's range conventions) from now on.
    pub fn subscribe(&self, key: Vec<u8>, range_end: Vec<u8>) -> WatchGuard {
        WatchGuard {
            sm: self.sm.clone(),
            sub: self.sm.hub().subscribe(key, range_end),
        }
    }
}

/// Why this member could not take a read index itself.
pub(super) enum ReadIndexMiss {
    /// It is not the leader; the leader it knows of, if any.
    NotLeader(Option<u64>),
    Failed(NodeError),
}

/// The shortest time a ReadIndex round may take before it is cut short
/// (otherwise two election timeouts).
const MIN_ROUND_LIMIT: Duration = Duration::from_secs(1);

/// A linearizable read waiting for the next ReadIndex round.
pub(super) struct ReadWaiter {
    deadline: Instant,
    tx: oneshot::Sender<Result<u64, NodeError>>,
}

/// How many ReadIndex rounds of one member may be in flight at once.
/// With one, a read that arrives just after a round started waits for
/// that round and then the whole of its own (a round and a half on
/// average); with two, its round starts at once unless two are already
/// running.
const ROUNDS_IN_FLIGHT: usize = 2;

/// Serves ReadIndex rounds for `linearize`, up to [`ROUNDS_IN_FLIGHT`] at
/// once: every read that arrived while the rounds were busy joins the next
/// round, which starts after it arrived, so the index it gets was
/// confirmed after the read began (what linearizability needs). A batch's
/// round runs until the latest deadline among its reads, or two election
/// timeouts if sooner; each read still gives up at its own. The queue
/// holds one entry per linearizable read in progress, which the client
/// port's stream and connection limits bound. Ends when the member is gone
/// (its sender dropped).
pub(super) async fn read_index_rounds(
    node: Weak<Node>,
    mut rx: mpsc::UnboundedReceiver<ReadWaiter>,
) {
    let rounds = std::sync::Arc::new(tokio::sync::Semaphore::new(ROUNDS_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a free round first, so that the batch takes every read
        // that queued meanwhile.
        let Ok(permit) = rounds.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while let Ok(w) = rx.try_recv() {
            batch.push(w);
        }
        batch.retain(|w| !w.tx.is_closed());
        let Some(deadline) = batch.iter().map(|w| w.deadline).max() else {
            continue;
        };
        let Some(node) = node.upgrade() else {
            return;
        };
        node.telemetry.read_index_round(batch.len());
        tokio::spawn(async move {
            // However long the batch's reads may wait, one round is cut
            // short (its reads then take part in the next one; see
            // `linearize`): a round stuck on a leader that stopped
            // answering must not hold up the reads queued behind it once
            // another leader could serve them.
            let limit = node.elections(2).max(MIN_ROUND_LIMIT);
            let r = node.read_index(deadline.min(Instant::now() + limit)).await;
            drop(node);
            for w in batch {
                let _ = w.tx.send(r.clone());
            }
            drop(permit);
        });
    }
}

/// Runs `f` on tokio's blocking pool.
async fn off_the_workers<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Internal(format!("read task ended: {e}")))
}

fn unavailable(e: std::io::Error) -> NodeError {
    NodeError::Internal(e.to_string())
}

impl Node {
    /// Runs `f` on this member's applied state, under its read lock (keep
    /// `f` short: applying waits for it).
    pub fn with_state<T>(&self, f: impl FnOnce(&SmData) -> T) -> Result<T, NodeError> {
        let d = self.sm.read().map_err(unavailable)?;
        Ok(f(&d))
    }

    /// Like `with_state`, and `f` may register watchers: they see every
    /// change after the state `f` read, and none before.
    pub fn watch_state<T>(
        &self,
        f: impl FnOnce(&SmData, &Subscriber<'_>) -> T,
    ) -> Result<T, NodeError> {
        let d = self.sm.read().map_err(unavailable)?;
        Ok(f(&d, &Subscriber { sm: &self.sm }))
    }

    /// This member's watch limits.
    pub fn watch_limits(&self) -> WatchLimits {
        self.sm.hub().limits()
    }

    /// Bytes of applied events queued for this member's watchers (each
    /// applied entry counted once).
    pub fn watch_pending_bytes(&self) -> usize {
        self.sm.hub().pending_bytes()
    }

    /// Watches `[key, range_end)` from the current applied state on.
    pub fn subscribe(&self, key: Vec<u8>, range_end: Vec<u8>) -> Result<WatchGuard, NodeError> {
        self.watch_state(|_, s| s.subscribe(key, range_end))
    }

    /// Lock table changes as this member applies them, from now on.
    pub fn lock_feed(&self) -> broadcast::Receiver<LockFeed> {
        self.sm.lock_feed()
    }

    /// Whether this member may answer serializable reads from `state` (its
    /// applied state, read under the lock).
    ///
    /// Like etcd, a member that joined a running cluster serves reads only
    /// once it has applied its own announcement (`Request::Publish`), i.e.
    /// caught up at least to when it joined: it must not answer a
    /// serializable read from its empty state. (Bootstrapping members start
    /// from the same empty state as everyone.)
    pub fn ready_for_reads(&self, state: &SmData) -> bool {
        !self.joined || state.client_addrs.get(&self.id) == Some(&self.client_addr)
    }

    /// Reads the applied state at `consistency`: a linearizable read waits
    /// (until `deadline`) for `linearize`; a serializable one is refused with
    /// `NodeError::NotReady` until `ready_for_reads`.
    pub async fn read<T>(
        &self,
        consistency: Consistency,
        deadline: Instant,
        f: impl FnOnce(&SmData) -> T,
    ) -> Result<T, NodeError> {
        if consistency == Consistency::Linearizable {
            self.linearize(deadline).await?;
        }
        let d = self.sm.read().map_err(unavailable)?;
        if consistency == Consistency::Serializable && !self.ready_for_reads(&d) {
            return Err(NodeError::NotReady);
        }
        Ok(f(&d))
    }

    /// Reads the applied key-value store at `consistency` (as `read`) from
    /// a copy taken under the read lock, which is O(1): the key map is a
    /// persistent B-tree, so the copy shares every node. `f` runs with no
    /// lock held, so applying never waits for it; a `scan` (a key range,
    /// a count, a hash of every key) runs on a blocking thread, so however
    /// long it takes it holds up neither apply nor the async workers that
    /// carry heartbeats.
    pub async fn read_kv<T: Send + 'static>(
        &self,
        consistency: Consistency,
        deadline: Instant,
        scan: bool,
        f: impl FnOnce(&MvccStore) -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        let store = self
            .read(consistency, deadline, |d| d.kv.mvcc().clone())
            .await?;
        if !scan {
            return Ok(f(&store));
        }
        off_the_workers(move || f(&store)).await
    }

    /// Like `read_kv` with no consistency step: a copy of what this member
    /// applied so far, scanned on a blocking thread.
    pub async fn scan_applied<T: Send + 'static>(
        &self,
        f: impl FnOnce(&MvccStore) -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        let store = self.with_state(|d| d.kv.mvcc().clone())?;
        off_the_workers(move || f(&store)).await
    }

    /// A consistent copy of this member's applied state as a backup (etcd
    /// `Maintenance.Snapshot`), streamed in pieces of `chunk` bytes with at
    /// most `depth` of them waiting for the reader; see
    /// `state_machine::stream_backup`. Copied under the read lock (a cheap
    /// clone: the key map is persistent); encoded outside it, twice, so
    /// nothing the size of the state is held. Returns the revision of the
    /// copy, the backup's whole length and the chunks.
    pub async fn stream_state(
        &self,
        chunk: usize,
        depth: usize,
    ) -> Result<(i64, u64, mpsc::Receiver<io::Result<Vec<u8>>>), NodeError> {
        let data = self.sm.read().map_err(unavailable)?.clone();
        let rev = data.kv.revision();
        let s = super::state_machine::stream_backup(data, chunk, depth);
        let len = s
            .len
            .await
            .map_err(|_| {
                NodeError::Internal(format!(
                    "backup at revision {rev}: the encoding task ended before measuring it"
                ))
            })?
            .map_err(|e| NodeError::Internal(format!("measuring backup at revision {rev}: {e}")))?;
        Ok((rev, len, s.chunks))
    }

    /// Returns once a read of the local state machine is linearizable: the
    /// leader confirmed its leadership with a quorum after this call began,
    /// and this member applied at least the leader's commit index at that
    /// moment.
    ///
    /// Concurrent callers share ReadIndex rounds (`read_index_rounds`), as
    /// etcd's read loop does: a follower sends one ReadIndex to the leader
    /// for a whole batch of reads instead of one RPC per read.
    pub async fn linearize(&self, deadline: Instant) -> Result<(), NodeError> {
        let index = loop {
            let (tx, rx) = oneshot::channel();
            self.read_rounds
                .send(ReadWaiter { deadline, tx })
                .map_err(|_| NodeError::Stopped)?;
            match tokio::time::timeout_at(deadline, rx).await {
                Err(_) => return Err(NodeError::Timeout),
                Ok(Err(_)) => return Err(NodeError::Stopped),
                Ok(Ok(Ok(index))) => break index,
                // The round was cut short before this read's deadline (a
                // round times out at its limit or at its latest deadline,
                // so this cannot spin): the next round may find a leader.
                Ok(Ok(Err(NodeError::Timeout))) if Instant::now() < deadline => {}
                Ok(Ok(Err(e))) => return Err(e),
            }
        };
        self.wait_applied(index, deadline).await
    }

    /// One ReadIndex round: the leader's commit index, confirmed by a quorum
    /// after this call began (asked of the leader if this member is not it).
    async fn read_index(&self, deadline: Instant) -> Result<u64, NodeError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let leader = match self.leader_read_index(deadline).await {
                Ok(index) => return Ok(index),
                Err(ReadIndexMiss::Failed(e)) => return Err(e),
                Err(ReadIndexMiss::NotLeader(l)) => l,
            };
            let leader = match leader {
                Some(l) if l != self.id => l,
                _ => match self.wait_leader(deadline).await {
                    Some(l) if l != self.id => l,
                    Some(_) if tries < 3 => continue,
                    _ => return Err(NodeError::NoLeader),
                },
            };
            match self
                .forward_streamed(leader, ForwardRequest::ReadIndex, deadline)
                .await
            {
                Ok(ForwardResponse::ReadIndex(index)) => return Ok(index),
                Ok(ForwardResponse::NotLeader(_)) if tries < 3 => {
                    self.wait_leader(deadline).await;
                }
                // The call broke after it may have reached the leader. A
                // write could not be retried (it might apply twice), but a
                // ReadIndex has no effect: ask whoever leads next.
                Err(NodeError::LeaderChanged) if tries < 3 => {
                    self.wait_leader_other_than(leader, deadline).await;
                }
                Ok(ForwardResponse::Failed(e)) | Err(e) => return Err(e),
                Ok(_) => return Err(NodeError::NoLeader),
            }
        }
    }

    /// The read index if this member is the leader: its commit index once a
    /// heartbeat round sent after this call is acknowledged by a quorum
    /// (ReadIndex, never LeaseRead: followers give up their leader lease
    /// early, see `failover`, so a leader lease proves nothing).
    pub(super) async fn leader_read_index(&self, deadline: Instant) -> Result<u64, ReadIndexMiss> {
        let fut = self.raft.get_read_log_id(ReadPolicy::ReadIndex);
        match tokio::time::timeout_at(deadline, fut).await {
            Err(_) => Err(ReadIndexMiss::Failed(NodeError::Timeout)),
            Ok(Ok((read, _applied))) => Ok(read.index()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Err(ReadIndexMiss::NotLeader(f.leader_id))
            }
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)))) => {
                Err(ReadIndexMiss::Failed(NodeError::NoLeader))
            }
            Ok(Err(RaftError::Fatal(_))) => Err(ReadIndexMiss::Failed(NodeError::Stopped)),
        }
    }

    /// Waits until this member has applied `index`.
    pub(super) async fn wait_applied(
        &self,
        index: u64,
        deadline: Instant,
    ) -> Result<(), NodeError> {
        let mut rx = self.sm.applied();
        loop {
            if *rx.borrow_and_update() >= index {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Err(_) => return Err(NodeError::Timeout),
                Ok(Err(_)) => return Err(NodeError::Stopped),
                Ok(Ok(())) => {}
            }
        }
    }
}
