//! Stateless request validation: the checks etcd's gRPC layer runs before a
//! request is proposed (`checkPutRequest`, `checkRangeRequest`,
//! `checkDeleteRequest`, `checkTxnRequest`, `checkIntervals` in etcd's
//! `server/etcdserver/api/v3rpc/key.go`).
//!
//! They depend only on the request, never on the store, so the api layer may
//! call them to refuse a request before it reaches the log; the state machine
//! runs them again on apply, so a command that skipped them still cannot break
//! the store. Checks that need the store (revisions, key existence, leases)
//! live in `mvcc.rs`.

use std::collections::{BTreeMap, BTreeSet};

use super::error::StateError;
use super::types::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};

/// Most compares, or ops in one branch, a txn level may have, like etcd's
/// default `--max-txn-ops`. Nested txns share the budget of their parent:
/// a nested txn may use at most `MAX_TXN_OPS - (its parent's count)`.
pub const MAX_TXN_OPS: usize = 128;

/// etcd `checkRangeRequest`.
pub fn check_range_request(r: &RangeRequest) -> Result<(), StateError> {
    if r.key.is_empty() {
        return Err(StateError::EmptyKey);
    }
    Ok(())
}

/// etcd `checkPutRequest`.
pub fn check_put_request(r: &PutRequest) -> Result<(), StateError> {
    if r.key.is_empty() {
        return Err(StateError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(StateError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(StateError::LeaseProvided);
    }
    Ok(())
}

/// etcd `checkDeleteRequest`.
pub fn check_delete_request(r: &DeleteRangeRequest) -> Result<(), StateError> {
    if r.key.is_empty() {
        return Err(StateError::EmptyKey);
    }
    Ok(())
}

/// Every stateless check of a txn, in etcd's order: op counts and empty keys
/// over the whole tree (both branches, `checkTxnRequest`), then put/delete
/// overlaps in the success branch and in the failure branch (`checkIntervals`).
pub fn check_txn_request(r: &TxnRequest) -> Result<(), StateError> {
    check_txn_ops(r, MAX_TXN_OPS)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_ops: usize) -> Result<(), StateError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_ops {
        return Err(StateError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(StateError::EmptyKey);
    }
    // `opc <= max_ops`, so the nested budget cannot underflow; a nested txn
    // has at least one op (itself) in its parent, so recursion depth is
    // bounded by `MAX_TXN_OPS`.
    let budget = max_ops - opc;
    for op in r.success.iter().chain(r.failure.iter()) {
        match op {
            RequestOp::Range(q) => check_range_request(q)?,
            RequestOp::Put(p) => check_put_request(p)?,
            RequestOp::DeleteRange(d) => check_delete_request(d)?,
            RequestOp::Txn(t) => check_txn_ops(t, budget)?,
        }
    }
    Ok(())
}

/// A deleted interval as etcd's `checkIntervals` sees it: a single key when
/// `range_end` is empty, otherwise the literal byte interval `[key, range_end)`.
///
/// Like etcd (which builds `adt.NewStringAffineInterval(key, range_end)`),
/// the "from key" marker `range_end == [0]` is taken literally, so such a
/// delete never conflicts with a put. Execution stays well defined anyway:
/// ops run in order and a failing op rolls the whole txn back.
#[derive(Clone, Debug)]
struct Deleted<'a> {
    key: &'a [u8],
    range_end: &'a [u8],
}

impl Deleted<'_> {
    /// The definition [`DeletedSet::covers`] answers for a set of these.
    #[cfg(test)]
    fn covers(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            self.key == k
        } else {
            self.key <= k && k < self.range_end
        }
    }
}

/// The keys and ranges a txn's deletes cover, as a set that answers "is
/// this key deleted?" in logarithmic time: single keys, and the union of
/// the ranges as disjoint intervals by start. A list scanned for every put
/// made the check cost puts × deletes: one nested txn of about 1.5 MB
/// (52 000 puts and as many deletes, in a tree of nested txns) took
/// seconds of CPU on every member, which stalled the cluster.
#[derive(Default)]
struct DeletedSet<'a> {
    keys: BTreeSet<&'a [u8]>,
    /// Disjoint intervals `[start, end)`, no two touching, by start.
    ranges: BTreeMap<&'a [u8], &'a [u8]>,
}

impl<'a> DeletedSet<'a> {
    fn insert(&mut self, d: Deleted<'a>) {
        if d.range_end.is_empty() {
            self.keys.insert(d.key);
            return;
        }
        if d.key >= d.range_end {
            // `[key, range_end)` holds no key.
            return;
        }
        let (mut start, mut end) = (d.key, d.range_end);
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        // `start < end` here, so the range below is well formed.
        let inside: Vec<&[u8]> = self.ranges.range(start..=end).map(|(s, _)| *s).collect();
        for s in inside {
            if let Some(e) = self.ranges.remove(s) {
                end = end.max(e);
            }
        }
        self.ranges.insert(start, end);
    }

    fn covers(&self, k: &[u8]) -> bool {
        self.keys.contains(k)
            || self
                .ranges
                .range(..=k)
                .next_back()
                .is_some_and(|(_, e)| k < *e)
    }

    fn extend(&mut self, other: DeletedSet<'a>) {
        self.keys.extend(other.keys);
        for (key, range_end) in other.ranges {
            self.insert(Deleted { key, range_end });
        }
    }
}

/// etcd `checkIntervals`: returns the keys put and ranges deleted by `reqs`
/// (including nested txns) or `DuplicateKey`.
fn check_intervals(reqs: &[RequestOp]) -> Result<(BTreeSet<&[u8]>, DeletedSet<'_>), StateError> {
    // Deletes of this level first, so nested puts are checked against them.
    let mut dels = DeletedSet::default();
    for op in reqs {
        if let RequestOp::DeleteRange(d) = op {
            dels.insert(Deleted {
                key: &d.key,
                range_end: &d.range_end,
            });
        }
    }

    let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
    for op in reqs {
        let RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.covers(k) {
                return Err(StateError::DuplicateKey);
            }
            puts.insert(k);
        }
        for k in &puts_else {
            // then and else are mutually exclusive: the same key in both is fine.
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(StateError::DuplicateKey);
            }
            if dels.covers(k) {
                return Err(StateError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }

    for op in reqs {
        let RequestOp::Put(p) = op else { continue };
        let k: &[u8] = &p.key;
        if puts.contains(k) || dels.covers(k) {
            return Err(StateError::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::types::{Compare, CompareResult, CompareTarget};

    fn put(k: &str) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: k.as_bytes().to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }
    fn del(k: &str, end: &[u8]) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest {
            key: k.as_bytes().to_vec(),
            range_end: end.to_vec(),
            prev_kv: false,
        })
    }
    fn get(k: &str) -> RequestOp {
        RequestOp::Range(RangeRequest {
            key: k.as_bytes().to_vec(),
            ..Default::default()
        })
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }
    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp::Txn(txn(success, failure))
    }

    proptest::proptest! {
        /// The set answers as the list of deletes it was built from would,
        /// however the ranges overlap, touch, nest or are empty.
        #[test]
        fn deleted_set_covers_what_any_delete_covers(
            dels in proptest::collection::vec(
                (proptest::collection::vec(0u8..4, 1..4), proptest::collection::vec(0u8..4, 0..4)),
                0..24,
            ),
            split in 0usize..24,
            queries in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..5), 1..40),
        ) {
            let list: Vec<Deleted<'_>> = dels
                .iter()
                .map(|(key, range_end)| Deleted { key, range_end })
                .collect();
            // Built in two halves joined by `extend`, as nested txns are.
            let (a, b) = list.split_at(split.min(list.len()));
            let mut set = DeletedSet::default();
            a.iter().cloned().for_each(|d| set.insert(d));
            let mut other = DeletedSet::default();
            b.iter().cloned().for_each(|d| other.insert(d));
            set.extend(other);
            for q in &queries {
                proptest::prop_assert_eq!(
                    set.covers(q),
                    list.iter().any(|d| d.covers(q)),
                    "key {:?}", q
                );
            }
        }
    }

    #[test]
    fn put_checks() {
        let mut p = PutRequest::default();
        assert_eq!(check_put_request(&p), Err(StateError::EmptyKey));
        p.key = b"k".to_vec();
        assert_eq!(check_put_request(&p), Ok(()));
        p.ignore_value = true;
        p.value = b"x".to_vec();
        assert_eq!(check_put_request(&p), Err(StateError::ValueProvided));
        p.value.clear();
        p.ignore_lease = true;
        p.lease = 5;
        assert_eq!(check_put_request(&p), Err(StateError::LeaseProvided));
        p.lease = 0;
        assert_eq!(check_put_request(&p), Ok(()));
    }

    #[test]
    fn empty_keys() {
        assert_eq!(
            check_range_request(&RangeRequest::default()),
            Err(StateError::EmptyKey)
        );
        assert_eq!(
            check_delete_request(&DeleteRangeRequest::default()),
            Err(StateError::EmptyKey)
        );
        let t = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal,
                target: CompareTarget::Version(0),
                key: vec![],
                range_end: vec![],
            }],
            success: vec![],
            failure: vec![],
        };
        assert_eq!(check_txn_request(&t), Err(StateError::EmptyKey));
        // Empty keys in the branch that will not run are refused too (etcd).
        let t = txn(vec![], vec![get("")]);
        assert_eq!(check_txn_request(&t), Err(StateError::EmptyKey));
        let t = txn(vec![nested(vec![put("")], vec![])], vec![]);
        assert_eq!(check_txn_request(&t), Err(StateError::EmptyKey));
    }

    #[test]
    fn too_many_ops() {
        let ok = txn((0..128).map(|i| put(&format!("k{i}"))).collect(), vec![]);
        assert_eq!(check_txn_request(&ok), Ok(()));
        let bad = txn(vec![], (0..129).map(|i| get(&format!("k{i}"))).collect());
        assert_eq!(check_txn_request(&bad), Err(StateError::TooManyOps));
        // Nested txns get the parent's remaining budget: 100 at the top
        // leaves 28 for a child.
        let mut top: Vec<RequestOp> = (0..99).map(|i| get(&format!("k{i}"))).collect();
        top.push(nested(
            (0..28).map(|i| get(&format!("n{i}"))).collect(),
            vec![],
        ));
        assert_eq!(check_txn_request(&txn(top.clone(), vec![])), Ok(()));
        top.pop();
        top.push(nested(
            (0..29).map(|i| get(&format!("n{i}"))).collect(),
            vec![],
        ));
        assert_eq!(
            check_txn_request(&txn(top, vec![])),
            Err(StateError::TooManyOps)
        );
    }

    #[test]
    fn duplicate_keys() {
        let dup = |s: Vec<RequestOp>| check_txn_request(&txn(s, vec![]));
        assert_eq!(dup(vec![put("a"), put("b")]), Ok(()));
        assert_eq!(dup(vec![put("a"), put("a")]), Err(StateError::DuplicateKey));
        assert_eq!(
            dup(vec![put("a"), del("a", b"")]),
            Err(StateError::DuplicateKey)
        );
        assert_eq!(
            dup(vec![del("a", b"c"), put("b")]),
            Err(StateError::DuplicateKey)
        );
        assert_eq!(dup(vec![del("a", b"c"), put("c")]), Ok(()));
        assert_eq!(dup(vec![del("a", b""), del("a", b"")]), Ok(()));
        // Nested: a put below a delete of the parent level.
        assert_eq!(
            dup(vec![del("a", b"z"), nested(vec![put("b")], vec![])]),
            Err(StateError::DuplicateKey)
        );
        // A put in the parent and the child.
        assert_eq!(
            dup(vec![put("b"), nested(vec![put("b")], vec![])]),
            Err(StateError::DuplicateKey)
        );
        // The parent's put inside a child's delete.
        assert_eq!(
            dup(vec![put("b"), nested(vec![], vec![del("a", b"z")])]),
            Err(StateError::DuplicateKey)
        );
        // then/else of one child may put the same key.
        assert_eq!(dup(vec![nested(vec![put("b")], vec![put("b")])]), Ok(()));
        // Two children may not.
        assert_eq!(
            dup(vec![
                nested(vec![put("b")], vec![]),
                nested(vec![put("b")], vec![])
            ]),
            Err(StateError::DuplicateKey)
        );
        // The failure branch is checked even if it would not run.
        assert_eq!(
            check_txn_request(&txn(vec![], vec![put("x"), put("x")])),
            Err(StateError::DuplicateKey)
        );
        // from-key deletes are taken literally, as etcd does.
        assert_eq!(dup(vec![del("a", &[0]), put("b")]), Ok(()));
    }
}
