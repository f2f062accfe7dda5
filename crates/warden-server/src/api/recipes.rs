//! Building blocks of etcd's server-side lock and election services
//! (`v3lock`, `v3election`), which etcd implements with its client-side
//! `concurrency` recipes: keys under a prefix owned by leases, ordered by
//! create revision; whoever holds the oldest key owns the lock.
//!
//! An uncontended acquire costs one commit: the create-or-get txn also
//! answers the oldest key under the prefix, so ownership is decided when
//! the txn applies. A waiter is decided on this member's applied state and
//! woken by its `WatchHub` (`wait_turn`), so a hand-over costs the commit
//! that deletes the older key and an in-process wake-up, no read-index
//! round trip.
//!
//! Must never: leave a waiter's key behind when its request is abandoned
//! (`KeyGuard` deletes it).

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use super::auth::{check_range_at, Caller};
use super::error::{node_status, state_status};
use super::{propose, unexpected};
use crate::node::{Consistency, Node, WatchGuard};
use warden_client::keys::prefix_range_end as prefix_end;
use warden_core::state::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, EventKind, KeyValue, PutRequest,
    RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder, SortTarget, TxnRequest,
    TxnResponse,
};
use warden_core::state::{Command, CommandResult};

/// A linearizable range.
pub async fn read(
    node: &Node,
    caller: &Caller,
    req: RangeRequest,
    timeout: Option<Duration>,
) -> Result<(i64, RangeResponse), Status> {
    check_range_at(node, caller, &req.key, &req.range_end)?;
    let deadline = node.deadline(timeout);
    let scan = !req.range_end.is_empty();
    let (rev, r) = node
        .read_kv(Consistency::Linearizable, deadline, scan, move |m| {
            (m.current_revision(), m.range(&req))
        })
        .await
        .map_err(node_status)?;
    Ok((rev, r.map_err(state_status)?))
}

/// A transaction through the log.
pub async fn txn(
    node: &Node,
    caller: &Caller,
    t: TxnRequest,
    timeout: Option<Duration>,
) -> Result<(i64, TxnResponse), Status> {
    match propose(node, timeout, caller, Command::Txn(t)).await? {
        (rev, CommandResult::Txn(r)) => Ok((rev, r)),
        _ => Err(unexpected()),
    }
}

/// Deletes one key through the log; returns the revision after.
pub async fn delete(
    node: &Node,
    caller: &Caller,
    key: &[u8],
    timeout: Option<Duration>,
) -> Result<i64, Status> {
    let cmd = Command::DeleteRange(DeleteRangeRequest {
        key: key.to_vec(),
        range_end: Vec::new(),
        prev_kv: false,
    });
    Ok(propose(node, timeout, caller, cmd).await?.0)
}

/// The key under `prefix` with the oldest (`first`) or newest create
/// revision, optionally only among keys created at or before `max_create`.
pub async fn by_create(
    node: &Node,
    caller: &Caller,
    prefix: &[u8],
    first: bool,
    max_create: i64,
) -> Result<(i64, Option<KeyValue>), Status> {
    let (rev, r) = read(
        node,
        caller,
        create_ordered(prefix, first, max_create),
        None,
    )
    .await?;
    Ok((rev, r.kvs.into_iter().next()))
}

fn create_ordered(prefix: &[u8], first: bool, max_create: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: if first {
            SortOrder::Ascend
        } else {
            SortOrder::Descend
        },
        sort_target: SortTarget::Create,
        max_create_revision: max_create,
        ..Default::default()
    }
}

/// Creates `key` with `value` and `lease` unless it exists; returns whether
/// it was created, its create revision, the oldest key under `prefix`, and
/// the revision after.
pub async fn create_or_get(
    node: &Node,
    caller: &Caller,
    prefix: &[u8],
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<(bool, i64, Option<KeyValue>, i64), Status> {
    let t = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::CreateRevision(0),
            key: key.to_vec(),
            range_end: Vec::new(),
        }],
        success: vec![
            RequestOp::Put(PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                lease,
                ..Default::default()
            }),
            RequestOp::Range(create_ordered(prefix, true, 0)),
        ],
        failure: vec![
            RequestOp::Range(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            }),
            RequestOp::Range(create_ordered(prefix, true, 0)),
        ],
    };
    let (rev, r) = txn(node, caller, t, None).await?;
    let ranges: Vec<&RangeResponse> = r
        .responses
        .iter()
        .filter_map(|o| match o {
            ResponseOp::Range(x) => Some(x),
            _ => None,
        })
        .collect();
    let owner = ranges.last().and_then(|x| x.kvs.first().cloned());
    let my_rev = if r.succeeded {
        rev
    } else {
        ranges
            .first()
            .and_then(|x| x.kvs.first())
            .map(|kv| kv.create_revision)
            .ok_or_else(|| Status::internal("recipe: own key vanished"))?
    };
    Ok((r.succeeded, my_rev, owner, rev))
}

/// What a waiter finds in this member's applied state.
enum Turn {
    /// Its key is the oldest under the prefix at this revision.
    Owner(i64),
    /// Its key was deleted (its lease expired, or someone deleted it).
    Gone,
    /// This member has not applied the waiter's own txn yet.
    Behind,
    /// Older keys remain: wait for the newest of them, or the waiter's own
    /// key, to be deleted.
    Wait(WatchGuard, WatchGuard),
}

/// etcd `waitDeletes` followed by the check that the waiter still holds its
/// key, decided on this member's applied state instead of linearizable
/// reads: returns the revision at which `key` (created at `my_rev`, by the
/// txn that answered at revision `after`) became the oldest key under
/// `prefix`, or `None` once it is deleted first (its lease expired).
///
/// Why local state suffices: every state this member applies is a prefix of
/// the committed log. Once it has applied `after`, "no key older than
/// `my_rev` is left and `key` still exists at revision R" is a fact of the
/// committed history, which no later entry can undo; keys created later have
/// newer create revisions and cannot take the lock first. A linearizable
/// read here would prove no more (the lease may expire just after any read),
/// and costs a leader round trip per hand-over. A member that lags behind
/// `after` (a forwarded write answered before it applied here) first catches
/// up with one ReadIndex.
///
/// Waits like etcd's recipe on the newest older key only (no herd on a
/// hand-over), and also on the waiter's own key, so a waiter whose lease
/// expires fails at once instead of when the queue ahead drains. Existence
/// is checked and the subscriptions made under one read lock of the state,
/// so a deletion cannot slip between the two.
pub async fn wait_turn(
    node: &Node,
    caller: &Caller,
    prefix: &[u8],
    key: &[u8],
    my_rev: i64,
    after: i64,
) -> Result<Option<i64>, Status> {
    let end = prefix_end(prefix);
    loop {
        // Read permission on the queue, as the recipe's ranges would need;
        // checked again after every wake-up.
        check_range_at(node, caller, prefix, &end)?;
        let turn = node
            .watch_state(|d, s| -> Result<Turn, Status> {
                let m = d.kv.mvcc();
                let rev = m.current_revision();
                if rev < after {
                    return Ok(Turn::Behind);
                }
                if m.get_meta(key)
                    .is_none_or(|kv| kv.create_revision != my_rev)
                {
                    return Ok(Turn::Gone);
                }
                let older = if my_rev > 1 {
                    m.range(&create_ordered(prefix, false, my_rev - 1))
                        .map_err(state_status)?
                        .kvs
                        .into_iter()
                        .next()
                } else {
                    None
                };
                Ok(match older {
                    None => Turn::Owner(rev),
                    Some(kv) => Turn::Wait(
                        s.subscribe(kv.key, Vec::new()),
                        s.subscribe(key.to_vec(), Vec::new()),
                    ),
                })
            })
            .map_err(node_status)??;
        match turn {
            Turn::Owner(rev) => return Ok(Some(rev)),
            Turn::Gone => return Ok(None),
            Turn::Behind => node
                .linearize(node.deadline(None))
                .await
                .map_err(node_status)?,
            Turn::Wait(mut older, mut mine) => loop {
                let b = tokio::select! {
                    b = older.recv() => b,
                    b = mine.recv() => b,
                };
                match b {
                    Some(b) if b.events().any(|e| e.kind == EventKind::Delete) => break,
                    Some(_) => {}
                    // Dropped (too slow, or a snapshot replaced the
                    // state): check again from scratch.
                    None => break,
                }
            },
        }
    }
}

/// Deletes a waiter's key if the request is abandoned before `disarm`.
pub struct KeyGuard {
    node: Arc<Node>,
    caller: Caller,
    key: Option<Vec<u8>>,
}

impl KeyGuard {
    /// Deletes `key` as `caller` (who created it) unless disarmed.
    pub fn new(node: Arc<Node>, caller: Caller, key: Vec<u8>) -> Self {
        KeyGuard {
            node,
            caller,
            key: Some(key),
        }
    }

    pub fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let node = self.node.clone();
            let caller = std::mem::take(&mut self.caller);
            tokio::spawn(async move {
                if let Err(e) = delete(&node, &caller, &key, None).await {
                    tracing::warn!("removing abandoned waiter key: {e}");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
