//! Unit tests of the lock table (`lock_table`), kept beside it so
//! `lock_table.rs` holds only the implementation. A child module of
//! `lock_table`: it may reach private items through `super::*`.
//!
//! Owns: examples of acquire, release, cancel, lease revocation, wait-queue
//! order, fencing tokens and validation, each followed by the table's
//! invariant check, plus a model-based property test that runs random
//! operation sequences against a naive model.
//!
//! Must never: be compiled outside `cfg(test)`, or let the naive model share
//! logic with the table beyond its data types (it must stay an independent
//! second opinion).

use super::*;
use LockMode::{Exclusive, Shared};

fn req(name: &str, mode: LockMode, lease: i64, priority: i32, wait: bool) -> AcquireRequest {
    AcquireRequest {
        name: name.to_owned(),
        mode,
        lease,
        priority,
        owner: format!("owner-{lease}"),
        wait,
    }
}

/// Acquires and returns the outcome, checking invariants afterwards.
fn acq(t: &mut LockTable, name: &str, mode: LockMode, lease: i64, prio: i32) -> AcquireOutcome {
    let out = t.acquire(&req(name, mode, lease, prio, true)).unwrap();
    t.check_invariants().unwrap();
    out.outcome
}

fn token(o: &AcquireOutcome) -> u64 {
    match o {
        AcquireOutcome::Granted { token } => *token,
        other => panic!("not granted: {other:?}"),
    }
}

fn waiter(o: &AcquireOutcome) -> u64 {
    match o {
        AcquireOutcome::Queued { waiter_id, .. } => *waiter_id,
        other => panic!("not queued: {other:?}"),
    }
}

/// `(waiter_id, token)` of every grant from the queue, in order.
fn grants(events: &[LockEvent]) -> Vec<(Option<u64>, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            LockEvent::Granted {
                waiter_id, token, ..
            } => Some((*waiter_id, *token)),
            _ => None,
        })
        .collect()
}

fn holder_tokens(t: &LockTable, name: &str) -> Vec<u64> {
    t.inspect(name)
        .map(|i| i.holders.iter().map(|h| h.token).collect())
        .unwrap_or_default()
}

fn waiter_ids(t: &LockTable, name: &str) -> Vec<u64> {
    t.inspect(name)
        .map(|i| i.waiters.iter().map(|w| w.waiter_id).collect())
        .unwrap_or_default()
}

#[test]
fn shared_holders_coexist() {
    let mut t = LockTable::new();
    let a = token(&acq(&mut t, "l", Shared, 1, 0));
    let b = token(&acq(&mut t, "l", Shared, 2, 0));
    let c = token(&acq(&mut t, "l", Shared, 3, 0));
    assert_eq!((a, b, c), (1, 2, 3));
    assert_eq!(holder_tokens(&t, "l"), vec![1, 2, 3]);
    assert!(t.check_fence("l", 2));
    let info = t.inspect("l").unwrap();
    assert!(info.holders.iter().all(|h| h.mode == Shared));
    assert_eq!(info.holders[1].owner, "owner-2");
    assert_eq!(info.holders[1].lease, 2);
}

#[test]
fn exclusive_excludes_everything() {
    let mut t = LockTable::new();
    let x = token(&acq(&mut t, "l", Exclusive, 1, 0));
    for mode in [Exclusive, Shared] {
        let out = t.acquire(&req("l", mode, 2, 0, false)).unwrap();
        assert_eq!(out.outcome, AcquireOutcome::WouldBlock);
        assert!(out.events.is_empty());
    }
    t.release("l", x).unwrap();
    assert!(t.is_empty());

    // Shared holders keep an exclusive request out.
    let s = token(&acq(&mut t, "l", Shared, 1, 0));
    let out = t.acquire(&req("l", Exclusive, 2, 0, false)).unwrap();
    assert_eq!(out.outcome, AcquireOutcome::WouldBlock);
    let w = waiter(&acq(&mut t, "l", Exclusive, 2, 0));
    let ev = t.release("l", s).unwrap();
    assert_eq!(
        ev,
        vec![
            LockEvent::Released {
                name: "l".into(),
                token: s
            },
            LockEvent::Granted {
                name: "l".into(),
                token: s + 1,
                waiter_id: Some(w),
                owner: "owner-2".into(),
                mode: Exclusive,
                lease: 2,
            },
        ]
    );
    t.check_invariants().unwrap();
}

#[test]
fn waiters_ordered_by_priority_then_fifo() {
    let mut t = LockTable::new();
    let x = token(&acq(&mut t, "l", Exclusive, 1, 0));
    let w_low = waiter(&acq(&mut t, "l", Exclusive, 2, 0));
    let w_high1 = waiter(&acq(&mut t, "l", Exclusive, 3, 5));
    let w_mid = waiter(&acq(&mut t, "l", Exclusive, 4, 2));
    let w_high2 = waiter(&acq(&mut t, "l", Exclusive, 5, 5));
    let w_low2 = waiter(&acq(&mut t, "l", Exclusive, 6, 0));
    let order = vec![w_high1, w_high2, w_mid, w_low, w_low2];
    assert_eq!(waiter_ids(&t, "l"), order);

    let out = t.acquire(&req("l", Exclusive, 7, 2, true)).unwrap();
    assert_eq!(
        out.events,
        vec![LockEvent::Queued {
            name: "l".into(),
            waiter_id: 6,
            position: 3
        }]
    );

    // Releasing hands the lock over one by one in queue order.
    let mut holder = x;
    let mut granted = Vec::new();
    for _ in 0..6 {
        let ev = t.release("l", holder).unwrap();
        let g = grants(&ev);
        assert_eq!(g.len(), 1);
        granted.push(g[0].0.unwrap());
        holder = g[0].1;
        t.check_invariants().unwrap();
    }
    assert_eq!(granted, vec![w_high1, w_high2, w_mid, 6, w_low, w_low2]);
}

#[test]
fn exclusive_waiter_not_starved_by_later_shared() {
    let mut t = LockTable::new();
    let s1 = token(&acq(&mut t, "l", Shared, 1, 0));
    let wx = waiter(&acq(&mut t, "l", Exclusive, 2, 0));
    // Later shared requests of the same or lower priority queue behind it.
    let try_shared = t.acquire(&req("l", Shared, 3, 0, false)).unwrap();
    assert_eq!(try_shared.outcome, AcquireOutcome::WouldBlock);
    let ws_same = waiter(&acq(&mut t, "l", Shared, 3, 0));
    let ws_low = waiter(&acq(&mut t, "l", Shared, 4, -1));
    assert_eq!(waiter_ids(&t, "l"), vec![wx, ws_same, ws_low]);

    let ev = t.release("l", s1).unwrap();
    assert_eq!(grants(&ev), vec![(Some(wx), 2)]);
    let ev = t.release("l", 2).unwrap();
    // Both shared waiters at the head are granted together.
    assert_eq!(grants(&ev), vec![(Some(ws_same), 3), (Some(ws_low), 4)]);
    t.check_invariants().unwrap();
}

#[test]
fn higher_priority_shared_passes_a_queued_exclusive() {
    let mut t = LockTable::new();
    acq(&mut t, "l", Shared, 1, 0);
    let wx = waiter(&acq(&mut t, "l", Exclusive, 2, 0));
    // Priority 1 > 0: nobody would be ahead of it and it is compatible.
    assert_eq!(token(&acq(&mut t, "l", Shared, 3, 1)), 2);
    assert_eq!(waiter_ids(&t, "l"), vec![wx]);
}

#[test]
fn granting_stops_at_first_blocked_waiter() {
    let mut t = LockTable::new();
    let x = token(&acq(&mut t, "l", Exclusive, 1, 0));
    let s1 = waiter(&acq(&mut t, "l", Shared, 2, 0));
    let s2 = waiter(&acq(&mut t, "l", Shared, 3, 0));
    let wx = waiter(&acq(&mut t, "l", Exclusive, 4, 0));
    let s3 = waiter(&acq(&mut t, "l", Shared, 5, 0));
    let ev = t.release("l", x).unwrap();
    assert_eq!(grants(&ev), vec![(Some(s1), 2), (Some(s2), 3)]);
    // s3 is compatible with the shared holders but is not skipped ahead.
    assert_eq!(waiter_ids(&t, "l"), vec![wx, s3]);
    t.check_invariants().unwrap();
    t.release("l", 2).unwrap();
    let ev = t.release("l", 3).unwrap();
    assert_eq!(grants(&ev), vec![(Some(wx), 4)]);
    let ev = t.release("l", 4).unwrap();
    assert_eq!(grants(&ev), vec![(Some(s3), 5)]);
}

#[test]
fn lease_revoke_grants_next_in_same_call() {
    let mut t = LockTable::new();
    let a = token(&acq(&mut t, "a", Exclusive, 7, 0)); // 1
    let b = token(&acq(&mut t, "b", Shared, 7, 0)); // 2
    let b2 = token(&acq(&mut t, "b", Shared, 8, 0)); // 3
    let wa = waiter(&acq(&mut t, "a", Exclusive, 8, 0));
    let wb = waiter(&acq(&mut t, "b", Exclusive, 9, 0));
    let wc_mine = waiter(&acq(&mut t, "b", Exclusive, 7, 0));
    let ev = t.revoke_lease(7);
    assert_eq!(
        ev,
        vec![
            LockEvent::Expired {
                name: "a".into(),
                token: a
            },
            LockEvent::Granted {
                name: "a".into(),
                token: 4,
                waiter_id: Some(wa),
                owner: "owner-8".into(),
                mode: Exclusive,
                lease: 8,
            },
            LockEvent::Expired {
                name: "b".into(),
                token: b
            },
            LockEvent::Cancelled {
                name: "b".into(),
                waiter_id: wc_mine
            },
        ]
    );
    t.check_invariants().unwrap();
    assert_eq!(holder_tokens(&t, "b"), vec![b2]);
    assert_eq!(waiter_ids(&t, "b"), vec![wb]);

    // Revoking lease 8 frees "a" entirely and hands "b" to lease 9.
    let ev = t.revoke_lease(8);
    assert_eq!(grants(&ev), vec![(Some(wb), 5)], "events: {ev:?}");
    assert!(t.inspect("a").is_none());
    t.check_invariants().unwrap();
    assert!(t.revoke_lease(8).is_empty());
    assert!(t.revoke_lease(0).is_empty());
    assert!(t.revoke_lease(12345).is_empty());
}

#[test]
fn release_by_wrong_token_refused_and_changes_nothing() {
    let mut t = LockTable::new();
    let x = token(&acq(&mut t, "l", Exclusive, 1, 0));
    acq(&mut t, "m", Shared, 2, 0);
    acq(&mut t, "l", Shared, 3, 0);
    let before = t.clone();
    let m_token = holder_tokens(&t, "m")[0];
    assert_eq!(
        t.release("l", m_token).unwrap_err(),
        LockError::NotHolder {
            name: "l".into(),
            token: m_token
        }
    );
    assert_eq!(
        t.release("l", 99).unwrap_err().to_string(),
        "warden: token 99 does not hold lock \"l\""
    );
    assert_eq!(
        t.release("zzz", x).unwrap_err(),
        LockError::NoSuchLock { name: "zzz".into() }
    );
    assert_eq!(t.release("", x).unwrap_err(), LockError::EmptyName);
    assert_eq!(t, before);
    // A token can be released only once.
    t.release("l", x).unwrap();
    assert!(matches!(
        t.release("l", x),
        Err(LockError::NotHolder { .. })
    ));
}

#[test]
fn tokens_monotone_across_lock_deletion() {
    let mut t = LockTable::new();
    let mut last = 0;
    for round in 0..5 {
        let name = if round % 2 == 0 { "l" } else { "other" };
        let tok = token(&acq(&mut t, name, Exclusive, 1, 0));
        assert!(tok > last);
        last = tok;
        t.release(name, tok).unwrap();
        assert!(t.is_empty(), "empty lock entries are deleted");
        assert_eq!(t.next_token(), tok + 1);
    }
    // Still monotone after a snapshot round trip of an empty table.
    let bytes = postcard::to_stdvec(&t).unwrap();
    let mut t2: LockTable = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(t2, t);
    assert!(token(&acq(&mut t2, "l", Shared, 1, 0)) > last);
}

#[test]
fn cancel_of_blocking_head_unblocks_followers() {
    let mut t = LockTable::new();
    acq(&mut t, "l", Shared, 1, 0);
    let wx = waiter(&acq(&mut t, "l", Exclusive, 2, 0));
    let s1 = waiter(&acq(&mut t, "l", Shared, 3, 0));
    let s2 = waiter(&acq(&mut t, "l", Shared, 4, 0));
    let ev = t.cancel_waiter("l", wx).unwrap();
    assert_eq!(
        ev[0],
        LockEvent::Cancelled {
            name: "l".into(),
            waiter_id: wx
        }
    );
    assert_eq!(grants(&ev), vec![(Some(s1), 2), (Some(s2), 3)]);
    assert_eq!(holder_tokens(&t, "l"), vec![1, 2, 3]);
    assert!(waiter_ids(&t, "l").is_empty());
    t.check_invariants().unwrap();

    let before = t.clone();
    assert_eq!(
        t.cancel_waiter("l", wx).unwrap_err(),
        LockError::NoSuchWaiter {
            name: "l".into(),
            waiter_id: wx
        }
    );
    assert!(matches!(
        t.cancel_waiter("nope", 1),
        Err(LockError::NoSuchWaiter { .. })
    ));
    assert_eq!(t, before);
}

#[test]
fn cancel_of_last_waiter_deletes_nothing_held() {
    let mut t = LockTable::new();
    let x = token(&acq(&mut t, "l", Exclusive, 1, 0));
    let w = waiter(&acq(&mut t, "l", Exclusive, 2, 0));
    t.revoke_lease(1);
    assert_eq!(holder_tokens(&t, "l"), vec![x + 1]);
    let w2 = waiter(&acq(&mut t, "l", Exclusive, 3, 0));
    assert!(w2 > w);
    assert_eq!(t.cancel_waiter("l", w2).unwrap().len(), 1);
    t.release("l", x + 1).unwrap();
    assert!(t.is_empty());
    t.check_invariants().unwrap();
}

#[test]
fn try_acquire_would_block_changes_nothing() {
    let mut t = LockTable::new();
    acq(&mut t, "l", Exclusive, 1, 0);
    acq(&mut t, "l", Shared, 2, 3);
    let before = t.clone();
    for mode in [Exclusive, Shared] {
        for prio in [-5, 0, 3, 10] {
            let out = t.acquire(&req("l", mode, 9, prio, false)).unwrap();
            assert_eq!(out.outcome, AcquireOutcome::WouldBlock);
            assert!(out.events.is_empty());
        }
    }
    assert_eq!(t, before);
    assert_eq!(t.next_waiter_id(), before.next_waiter_id());
    assert_eq!(t.next_token(), before.next_token());
    // A try-acquire that can be granted is.
    let out = t.acquire(&req("free", Shared, 9, 0, false)).unwrap();
    assert!(matches!(out.outcome, AcquireOutcome::Granted { .. }));
}

#[test]
fn validation_errors() {
    let mut t = LockTable::new();
    let before = t.clone();
    let long = "x".repeat(MAX_LOCK_NAME_LEN + 1);
    let cases = [
        (req("", Exclusive, 1, 0, true), LockError::EmptyName),
        (
            req(&long, Exclusive, 1, 0, true),
            LockError::NameTooLong {
                len: MAX_LOCK_NAME_LEN + 1,
                max: MAX_LOCK_NAME_LEN,
            },
        ),
        (req("l", Shared, 0, 0, true), LockError::InvalidLease),
        (
            AcquireRequest {
                owner: "o".repeat(MAX_OWNER_LEN + 1),
                ..req("l", Shared, 1, 0, true)
            },
            LockError::OwnerTooLong {
                len: MAX_OWNER_LEN + 1,
                max: MAX_OWNER_LEN,
            },
        ),
    ];
    for (r, want) in cases {
        assert_eq!(t.acquire(&r).unwrap_err(), want);
        assert!(want.is_invalid_argument());
    }
    assert_eq!(t, before);
    assert!(t
        .acquire(&req(&"x".repeat(MAX_LOCK_NAME_LEN), Shared, 1, 0, true))
        .is_ok());

    assert_eq!(
        LockError::EmptyName.to_string(),
        "warden: lock name must not be empty"
    );
    assert_eq!(
        LockError::InvalidLease.to_string(),
        "warden: a lock needs a lease (lease id 0 is not a lease)"
    );
    assert_eq!(
        LockError::NameTooLong {
            len: 1025,
            max: 1024
        }
        .to_string(),
        "warden: lock name is too long (1025 bytes, the limit is 1024)"
    );
    let msg = LockError::NoSuchLock { name: long.clone() }.to_string();
    assert!(msg.len() < 120, "long names are cut: {msg}");
    assert!(msg.ends_with("…(1025 bytes) not found"), "{msg}");
    assert!(!LockError::NotHolder {
        name: "l".into(),
        token: 1
    }
    .is_invalid_argument());
}

#[test]
fn queue_is_bounded() {
    let mut t = LockTable::new();
    acq(&mut t, "l", Exclusive, 1, 0);
    for i in 0..MAX_WAITERS_PER_LOCK {
        let out = t.acquire(&req("l", Shared, 2 + i as i64, 0, true)).unwrap();
        assert!(matches!(out.outcome, AcquireOutcome::Queued { .. }));
    }
    let before = t.clone();
    assert_eq!(
        t.acquire(&req("l", Shared, 2, 0, true)).unwrap_err(),
        LockError::TooManyWaiters {
            name: "l".into(),
            max: MAX_WAITERS_PER_LOCK
        }
    );
    // A try-acquire on a full queue still just would block.
    assert_eq!(
        t.acquire(&req("l", Shared, 2, 0, false)).unwrap().outcome,
        AcquireOutcome::WouldBlock
    );
    assert_eq!(t, before);
    t.check_invariants().unwrap();
    // Releasing the exclusive holder grants every shared waiter at once.
    let ev = t.release("l", 1).unwrap();
    assert_eq!(grants(&ev).len(), MAX_WAITERS_PER_LOCK);
    t.check_invariants().unwrap();
}

#[test]
fn fence_inspect_and_prefix_listing() {
    let mut t = LockTable::new();
    let a = token(&acq(&mut t, "app/a", Exclusive, 1, 0));
    let b = token(&acq(&mut t, "app/b", Shared, 2, 0));
    let w = waiter(&acq(&mut t, "app/a", Shared, 3, 4));
    acq(&mut t, "apq", Shared, 4, 0);
    acq(&mut t, "ap", Shared, 4, 0);
    assert!(t.check_fence("app/a", a));
    assert!(!t.check_fence("app/a", b));
    assert!(!t.check_fence("app/c", a));
    assert_eq!(t.holder("app/b", b).map(|h| h.lease), Some(2));
    assert!(t.holder("app/b", a).is_none());

    let info = t.inspect("app/a").unwrap();
    assert_eq!(
        info,
        LockInfo {
            name: "app/a".into(),
            holders: vec![Holder {
                token: a,
                owner: "owner-1".into(),
                mode: Exclusive,
                lease: 1,
                proof: None,
            }],
            waiters: vec![Waiter {
                waiter_id: w,
                owner: "owner-3".into(),
                mode: Shared,
                priority: 4,
                lease: 3,
                proof: None,
            }],
        }
    );
    assert!(t.inspect("app").is_none());
    let names = |p: &str| -> Vec<String> { t.locks_with_prefix(p).map(|i| i.name).collect() };
    assert_eq!(names("app/"), vec!["app/a", "app/b"]);
    assert_eq!(names("ap"), vec!["ap", "app/a", "app/b", "apq"]);
    assert_eq!(names(""), vec!["ap", "app/a", "app/b", "apq"]);
    assert!(names("b").is_empty());
    assert_eq!(t.locks_with_prefix("").take(2).count(), 2);
    assert_eq!(t.len(), 4);

    let ev = t.release("app/a", a).unwrap();
    assert!(!t.check_fence("app/a", a));
    let new = t.next_token() - 1;
    assert_eq!(grants(&ev), vec![(Some(w), new)]);
    assert!(t.check_fence("app/a", new));
}

#[test]
fn same_lease_may_hold_and_wait() {
    // A lease is not a re-entrant identity: a second request from the
    // same lease is just another request.
    let mut t = LockTable::new();
    let s1 = token(&acq(&mut t, "l", Shared, 1, 0));
    let s2 = token(&acq(&mut t, "l", Shared, 1, 0));
    let w = waiter(&acq(&mut t, "l", Exclusive, 1, 0));
    t.check_invariants().unwrap();
    let ev = t.revoke_lease(1);
    assert_eq!(
        ev,
        vec![
            LockEvent::Expired {
                name: "l".into(),
                token: s1
            },
            LockEvent::Expired {
                name: "l".into(),
                token: s2
            },
            LockEvent::Cancelled {
                name: "l".into(),
                waiter_id: w
            },
        ]
    );
    assert!(t.is_empty());
    t.check_invariants().unwrap();
}

#[test]
fn invariants_catch_corruption() {
    let mut t = LockTable::new();
    acq(&mut t, "l", Shared, 1, 0);
    acq(&mut t, "l", Shared, 2, 0);
    let w = waiter(&acq(&mut t, "l", Exclusive, 3, 0));
    t.check_invariants().unwrap();

    let mut bad = t.clone();
    bad.locks.get_mut("l").unwrap().holders[0].mode = Exclusive;
    assert!(bad.check_invariants().is_err());

    let mut bad = t.clone();
    bad.next_token = 2;
    assert!(bad.check_invariants().is_err());

    let mut bad = t.clone();
    bad.locks.get_mut("l").unwrap().holders.clear();
    bad.lease_refs.remove(&1);
    bad.lease_refs.remove(&2);
    assert!(bad
        .check_invariants()
        .unwrap_err()
        .contains(&format!("waiter {w} at the head")));

    let mut bad = t.clone();
    bad.lease_refs.remove(&3);
    assert!(bad.check_invariants().is_err());

    let mut bad = t.clone();
    bad.locks.insert("empty".into(), LockState::default());
    assert!(bad.check_invariants().is_err());

    let mut bad = t.clone();
    bad.locks.get_mut("l").unwrap().holders.swap(0, 1);
    assert!(bad.check_invariants().is_err());
}

#[test]
fn exhausted_counters_are_errors_not_panics() {
    let mut t = LockTable::new();
    t.next_token = u64::MAX - 1;
    let x = token(&acq(&mut t, "l", Exclusive, 1, 0));
    assert_eq!(x, u64::MAX - 1);
    let before = t.clone();
    assert_eq!(
        t.acquire(&req("m", Shared, 1, 0, true)).unwrap_err(),
        LockError::TokensExhausted
    );
    assert_eq!(t, before);
    let w = waiter(&acq(&mut t, "l", Shared, 2, 0));
    // Release cannot grant the waiter; it stays queued.
    let ev = t.release("l", x).unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(waiter_ids(&t, "l"), vec![w]);
    t.check_invariants().unwrap();

    let mut t = LockTable::new();
    acq(&mut t, "l", Exclusive, 1, 0);
    t.next_waiter_id = u64::MAX;
    assert_eq!(
        t.acquire(&req("l", Shared, 1, 0, true)).unwrap_err(),
        LockError::WaiterIdsExhausted
    );
}

#[test]
fn snapshot_round_trip() {
    let mut t = LockTable::new();
    acq(&mut t, "a", Shared, 1, 0);
    acq(&mut t, "a", Exclusive, 2, 3);
    acq(&mut t, "b", Exclusive, 3, 0);
    let bytes = postcard::to_stdvec(&t).unwrap();
    let back: LockTable = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, t);
    back.check_invariants().unwrap();
    assert_eq!(postcard::to_stdvec(&back).unwrap(), bytes);
}

fn digest(n: u8) -> HandleDigest {
    HandleDigest::of_handle(&[n; HANDLE_LEN])
}

/// Acquires with the handle digest `digest(h)`, checking invariants.
fn acq_proven(t: &mut LockTable, name: &str, mode: LockMode, lease: i64, h: u8) -> AcquireOutcome {
    let out = t
        .acquire_proven(&req(name, mode, lease, 0, true), digest(h))
        .unwrap();
    t.check_invariants().unwrap();
    out.outcome
}

#[test]
fn a_proven_hold_is_released_only_with_its_handle() {
    let mut t = LockTable::new();
    let x = token(&acq_proven(&mut t, "l", Exclusive, 1, 1));
    let before = t.clone();
    // Another handle, or the token alone: refused, nothing changes.
    let wrong = t.release_proven("l", x, &digest(2)).unwrap_err();
    assert_eq!(
        wrong,
        LockError::WrongHandle {
            name: "l".into(),
            token: x
        }
    );
    assert_eq!(
        wrong.to_string(),
        format!("warden: lock \"l\" token {x}: handle does not match the holder")
    );
    assert!(wrong.is_proof_failure() && !wrong.is_invalid_argument());
    let bare = t.release("l", x).unwrap_err();
    assert_eq!(
        bare,
        LockError::HandleRequired {
            name: "l".into(),
            token: x
        }
    );
    assert!(bare.to_string().contains("handle is required"), "{bare}");
    assert_eq!(t, before);
    // Fencing checks the same way.
    assert_eq!(t.prove("l", x, Some(&digest(1))), Ok(()));
    assert_eq!(t.prove("l", x, Some(&digest(2))), Err(wrong.clone()));
    assert_eq!(t.prove("l", x, None), Err(bare));
    assert!(matches!(
        t.prove("l", x + 1, Some(&digest(1))),
        Err(LockError::NotHolder { .. })
    ));
    assert!(matches!(
        t.prove("other", x, Some(&digest(1))),
        Err(LockError::NoSuchLock { .. })
    ));
    assert!(t.check_fence("l", x), "check_fence is about holding only");
    assert_eq!(t.token_with_proof("l", &digest(1)), Some(x));
    assert_eq!(t.token_with_proof("l", &digest(2)), None);
    // The handle releases it.
    let evs = t.release_proven("l", x, &digest(1)).unwrap();
    assert_eq!(
        evs,
        vec![LockEvent::Released {
            name: "l".into(),
            token: x
        }]
    );
    assert!(t.is_empty());
    assert!(t.proofs().is_empty());
}

#[test]
fn a_queued_waiter_keeps_its_proof_when_granted() {
    let mut t = LockTable::new();
    let x = token(&acq_proven(&mut t, "l", Exclusive, 1, 1));
    let w = waiter(&acq_proven(&mut t, "l", Exclusive, 2, 2));
    let w2 = waiter(&acq(&mut t, "l", Exclusive, 3, 0));
    assert_eq!(
        t.proofs(),
        LockProofs {
            holders: vec![(x, digest(1))],
            waiters: vec![(w, digest(2))],
        }
    );
    let evs = t.release_proven("l", x, &digest(1)).unwrap();
    let granted = grants(&evs);
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].0, Some(w));
    let y = granted[0].1;
    // The grant carries the waiter's handle, and only it.
    assert_eq!(t.token_with_proof("l", &digest(2)), Some(y));
    assert!(matches!(
        t.release_proven("l", y, &digest(1)),
        Err(LockError::WrongHandle { .. })
    ));
    assert!(matches!(
        t.release("l", y),
        Err(LockError::HandleRequired { .. })
    ));
    // Lease revocation needs no handle: the lease governs.
    let evs = t.revoke_lease(2);
    let next = grants(&evs);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].0, Some(w2));
    // A plain waiter becomes a plain holder, released by its token.
    t.release("l", next[0].1).unwrap();
    t.check_invariants().unwrap();
    assert!(t.is_empty());
}

#[test]
fn holds_without_a_handle_work_by_token() {
    // Holds made by the plain acquire (every hold of a data dir from before
    // handles): the token releases them, and so does any handle.
    let mut t = LockTable::new();
    let a = token(&acq(&mut t, "l", Shared, 1, 0));
    let b = token(&acq(&mut t, "l", Shared, 2, 0));
    assert_eq!(t.prove("l", a, None), Ok(()));
    assert_eq!(t.prove("l", a, Some(&digest(9))), Ok(()));
    t.release("l", a).unwrap();
    t.release_proven("l", b, &digest(9)).unwrap();
    assert!(t.is_empty());
}

#[test]
fn proofs_restore_onto_a_decoded_table() {
    let mut t = LockTable::new();
    let x = token(&acq_proven(&mut t, "a", Shared, 1, 1));
    token(&acq(&mut t, "a", Shared, 2, 0));
    let w = waiter(&acq_proven(&mut t, "a", Exclusive, 3, 3));
    let z = token(&acq_proven(&mut t, "b", Exclusive, 4, 4));
    let proofs = t.proofs();
    assert_eq!(
        proofs,
        LockProofs {
            holders: vec![(x, digest(1)), (z, digest(4))],
            waiters: vec![(w, digest(3))],
        }
    );
    // The derived encoding leaves the digests out ...
    let bytes = postcard::to_stdvec(&t).unwrap();
    let mut back: LockTable = postcard::from_bytes(&bytes).unwrap();
    assert!(back.proofs().is_empty());
    assert_ne!(back, t);
    // ... and they are put back.
    back.restore_proofs(proofs.clone()).unwrap();
    assert_eq!(back, t);
    // Digests that do not fit the table are refused.
    let fresh = || -> LockTable { postcard::from_bytes(&bytes).unwrap() };
    let refused = |p: LockProofs| fresh().restore_proofs(p).unwrap_err();
    let e = refused(LockProofs {
        holders: vec![(99, digest(1))],
        waiters: vec![],
    });
    assert!(e.contains("token 99"), "{e}");
    let e = refused(LockProofs {
        holders: vec![],
        waiters: vec![(w + 1, digest(1))],
    });
    assert!(e.contains(&format!("waiter {}", w + 1)), "{e}");
    let e = refused(LockProofs {
        holders: vec![(z, digest(4)), (x, digest(1))],
        waiters: vec![],
    });
    assert!(e.contains("out of order"), "{e}");
    let e = refused(LockProofs {
        holders: vec![(x, digest(1)), (x, digest(2))],
        waiters: vec![],
    });
    assert!(e.contains("out of order"), "{e}");
    let mut twice = t.clone();
    let e = twice.restore_proofs(proofs).unwrap_err();
    assert!(e.contains("two handle digests"), "{e}");
}

#[test]
fn digests_are_never_shown() {
    let d = digest(1);
    assert_eq!(format!("{d:?}"), "HandleDigest(..)");
    let mut t = LockTable::new();
    acq_proven(&mut t, "l", Exclusive, 1, 1);
    let raw: [u8; 32] = postcard::from_bytes(&postcard::to_stdvec(&d).unwrap()).unwrap();
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let shown = format!("{t:?} {:?}", t.inspect("l"));
    assert!(
        !shown.contains(&hex) && !shown.contains(&format!("{raw:?}")),
        "{shown}"
    );
    // Domain-separated SHA-256 of the handle: not the plain hash.
    let plain: [u8; 32] = Sha256::digest([1u8; HANDLE_LEN]).into();
    assert_ne!(raw, plain);
    assert_eq!(HandleDigest::from_bytes(raw), d);
    assert_ne!(digest(1), digest(2));
}

/// Model-based property test: random acquire / release / cancel /
/// revoke / fence sequences on a few names and leases, run against the
/// table and a deliberately naive model (queues kept in arrival order and
/// sorted on every look, linear scans everywhere, empty locks kept).
mod model {
    use super::*;
    use proptest::prelude::*;

    const NAMES: [&str; 4] = ["a", "ab", "b", ""];

    #[derive(Clone, Debug)]
    struct MLock {
        name: String,
        holders: Vec<Holder>,
        /// Arrival order, not queue order.
        waiters: Vec<Waiter>,
    }

    #[derive(Default)]
    struct Model {
        locks: Vec<MLock>,
        last_token: u64,
        last_waiter: u64,
    }

    fn m_compatible(holders: &[Holder], mode: LockMode) -> bool {
        match mode {
            Exclusive => holders.is_empty(),
            Shared => !holders.iter().any(|h| h.mode == Exclusive),
        }
    }

    fn queue(waiters: &[Waiter]) -> Vec<Waiter> {
        let mut q = waiters.to_vec();
        q.sort_by_key(|w| (std::cmp::Reverse(w.priority), w.waiter_id));
        q
    }

    impl Model {
        fn lock_mut(&mut self, name: &str) -> &mut MLock {
            if !self.locks.iter().any(|l| l.name == name) {
                self.locks.push(MLock {
                    name: name.to_owned(),
                    holders: vec![],
                    waiters: vec![],
                });
            }
            self.locks.iter_mut().find(|l| l.name == name).unwrap()
        }

        fn find(&self, name: &str) -> Option<&MLock> {
            self.locks
                .iter()
                .find(|l| l.name == name && !(l.holders.is_empty() && l.waiters.is_empty()))
        }

        fn check_name(name: &str) -> Result<(), LockError> {
            if name.is_empty() {
                Err(LockError::EmptyName)
            } else {
                Ok(())
            }
        }

        /// Grants from the head of the sorted queue while compatible.
        fn grant(&mut self, name: &str, events: &mut Vec<LockEvent>) {
            let mut token = self.last_token;
            let l = self.lock_mut(name);
            while let Some(head) = queue(&l.waiters).first().cloned() {
                if !m_compatible(&l.holders, head.mode) {
                    break;
                }
                l.waiters.retain(|w| w.waiter_id != head.waiter_id);
                token += 1;
                events.push(LockEvent::Granted {
                    name: name.to_owned(),
                    token,
                    waiter_id: Some(head.waiter_id),
                    owner: head.owner.clone(),
                    mode: head.mode,
                    lease: head.lease,
                });
                l.holders.push(Holder {
                    token,
                    owner: head.owner,
                    mode: head.mode,
                    lease: head.lease,
                    proof: head.proof,
                });
            }
            self.last_token = token;
        }

        fn acquire(&mut self, r: &AcquireRequest) -> Result<Acquired, LockError> {
            Self::check_name(&r.name)?;
            if r.lease == 0 {
                return Err(LockError::InvalidLease);
            }
            let (compatible, ahead) = match self.find(&r.name) {
                None => (true, 0),
                Some(l) => (
                    m_compatible(&l.holders, r.mode),
                    l.waiters
                        .iter()
                        .filter(|w| w.priority >= r.priority)
                        .count(),
                ),
            };
            if compatible && ahead == 0 {
                self.last_token += 1;
                let token = self.last_token;
                self.lock_mut(&r.name).holders.push(Holder {
                    token,
                    owner: r.owner.clone(),
                    mode: r.mode,
                    lease: r.lease,
                    proof: None,
                });
                return Ok(Acquired {
                    outcome: AcquireOutcome::Granted { token },
                    events: vec![LockEvent::Granted {
                        name: r.name.clone(),
                        token,
                        waiter_id: None,
                        owner: r.owner.clone(),
                        mode: r.mode,
                        lease: r.lease,
                    }],
                });
            }
            if !r.wait {
                return Ok(Acquired {
                    outcome: AcquireOutcome::WouldBlock,
                    events: vec![],
                });
            }
            self.last_waiter += 1;
            let waiter_id = self.last_waiter;
            self.lock_mut(&r.name).waiters.push(Waiter {
                waiter_id,
                owner: r.owner.clone(),
                mode: r.mode,
                priority: r.priority,
                lease: r.lease,
                proof: None,
            });
            let position = ahead as u64;
            Ok(Acquired {
                outcome: AcquireOutcome::Queued {
                    waiter_id,
                    position,
                },
                events: vec![LockEvent::Queued {
                    name: r.name.clone(),
                    waiter_id,
                    position,
                }],
            })
        }

        fn release(&mut self, name: &str, token: u64) -> Result<Vec<LockEvent>, LockError> {
            Self::check_name(name)?;
            let Some(l) = self.find(name) else {
                return Err(LockError::NoSuchLock {
                    name: name.to_owned(),
                });
            };
            if !l.holders.iter().any(|h| h.token == token) {
                return Err(LockError::NotHolder {
                    name: name.to_owned(),
                    token,
                });
            }
            self.lock_mut(name).holders.retain(|h| h.token != token);
            let mut events = vec![LockEvent::Released {
                name: name.to_owned(),
                token,
            }];
            self.grant(name, &mut events);
            Ok(events)
        }

        fn cancel(&mut self, name: &str, waiter_id: u64) -> Result<Vec<LockEvent>, LockError> {
            Self::check_name(name)?;
            let queued = self
                .find(name)
                .is_some_and(|l| l.waiters.iter().any(|w| w.waiter_id == waiter_id));
            if !queued {
                return Err(LockError::NoSuchWaiter {
                    name: name.to_owned(),
                    waiter_id,
                });
            }
            self.lock_mut(name)
                .waiters
                .retain(|w| w.waiter_id != waiter_id);
            let mut events = vec![LockEvent::Cancelled {
                name: name.to_owned(),
                waiter_id,
            }];
            self.grant(name, &mut events);
            Ok(events)
        }

        fn revoke(&mut self, lease: i64) -> Vec<LockEvent> {
            let mut names: Vec<String> = self.locks.iter().map(|l| l.name.clone()).collect();
            names.sort();
            let mut events = vec![];
            for name in names {
                let l = self.lock_mut(&name);
                let touched = l.holders.iter().any(|h| h.lease == lease)
                    || l.waiters.iter().any(|w| w.lease == lease);
                if !touched {
                    continue;
                }
                for h in l.holders.iter().filter(|h| h.lease == lease) {
                    events.push(LockEvent::Expired {
                        name: name.clone(),
                        token: h.token,
                    });
                }
                for w in queue(&l.waiters).iter().filter(|w| w.lease == lease) {
                    events.push(LockEvent::Cancelled {
                        name: name.clone(),
                        waiter_id: w.waiter_id,
                    });
                }
                l.holders.retain(|h| h.lease != lease);
                l.waiters.retain(|w| w.lease != lease);
                self.grant(&name, &mut events);
            }
            events
        }

        fn inspect(&self, name: &str) -> Option<LockInfo> {
            self.find(name).map(|l| LockInfo {
                name: l.name.clone(),
                holders: l.holders.clone(),
                waiters: queue(&l.waiters),
            })
        }

        fn live_tokens(&self) -> Vec<u64> {
            let mut v: Vec<u64> = self
                .locks
                .iter()
                .flat_map(|l| l.holders.iter().map(|h| h.token))
                .collect();
            v.sort();
            v
        }

        fn live_waiters(&self) -> Vec<u64> {
            let mut v: Vec<u64> = self
                .locks
                .iter()
                .flat_map(|l| l.waiters.iter().map(|w| w.waiter_id))
                .collect();
            v.sort();
            v
        }
    }

    /// A token or waiter id: one that exists now (picked by index), or
    /// any small number (usually stale or never issued).
    #[derive(Clone, Debug)]
    enum Pick {
        Live(prop::sample::Index),
        Raw(u64),
    }

    impl Pick {
        fn resolve(&self, live: &[u64]) -> u64 {
            match self {
                Pick::Live(i) if !live.is_empty() => live[i.index(live.len())],
                Pick::Live(_) => 1,
                Pick::Raw(n) => *n,
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Acquire {
            name: usize,
            mode: LockMode,
            lease: i64,
            priority: i32,
            wait: bool,
        },
        Release {
            name: usize,
            token: Pick,
        },
        Cancel {
            name: usize,
            waiter: Pick,
        },
        Revoke {
            lease: i64,
        },
        Fence {
            name: usize,
            token: Pick,
        },
    }

    fn name() -> impl Strategy<Value = usize> {
        prop_oneof![12 => 0usize..3, 1 => Just(3usize)]
    }

    fn pick() -> impl Strategy<Value = Pick> {
        prop_oneof![
            6 => any::<prop::sample::Index>().prop_map(Pick::Live),
            1 => (0u64..40).prop_map(Pick::Raw),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        let mode = prop_oneof![Just(Exclusive), Just(Shared)];
        let lease = prop_oneof![1 => Just(0i64), 15 => 1i64..=4];
        prop_oneof![
            6 => (name(), mode, lease, -1i32..=2, prop::bool::weighted(0.8)).prop_map(
                |(name, mode, lease, priority, wait)| Op::Acquire {
                    name,
                    mode,
                    lease,
                    priority,
                    wait
                }
            ),
            4 => (name(), pick()).prop_map(|(name, token)| Op::Release { name, token }),
            2 => (name(), pick()).prop_map(|(name, waiter)| Op::Cancel { name, waiter }),
            1 => (0i64..=4).prop_map(|lease| Op::Revoke { lease }),
            1 => (name(), pick()).prop_map(|(name, token)| Op::Fence { name, token }),
        ]
    }

    fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut t = LockTable::new();
        let mut m = Model::default();
        let mut last_granted = 0u64;
        for (step, op) in ops.iter().enumerate() {
            let before = t.clone();
            let (got, want): (Result<Vec<LockEvent>, LockError>, _) = match op {
                Op::Acquire {
                    name,
                    mode,
                    lease,
                    priority,
                    wait,
                } => {
                    let r = AcquireRequest {
                        name: NAMES[*name].to_owned(),
                        mode: *mode,
                        lease: *lease,
                        priority: *priority,
                        owner: format!("o{step}"),
                        wait: *wait,
                    };
                    let got = t.acquire(&r);
                    let want = m.acquire(&r);
                    prop_assert_eq!(&got, &want, "step {}: {:?}", step, op);
                    if let Ok(a) = &got {
                        if a.outcome == AcquireOutcome::WouldBlock {
                            prop_assert_eq!(&t, &before);
                        }
                    }
                    (got.map(|a| a.events), want.map(|a| a.events))
                }
                Op::Release { name, token } => {
                    let token = token.resolve(&m.live_tokens());
                    (
                        t.release(NAMES[*name], token),
                        m.release(NAMES[*name], token),
                    )
                }
                Op::Cancel { name, waiter } => {
                    let id = waiter.resolve(&m.live_waiters());
                    (
                        t.cancel_waiter(NAMES[*name], id),
                        m.cancel(NAMES[*name], id),
                    )
                }
                Op::Revoke { lease } => (Ok(t.revoke_lease(*lease)), Ok(m.revoke(*lease))),
                Op::Fence { name, token } => {
                    let token = token.resolve(&m.live_tokens());
                    let want = m
                        .find(NAMES[*name])
                        .is_some_and(|l| l.holders.iter().any(|h| h.token == token));
                    prop_assert_eq!(t.check_fence(NAMES[*name], token), want);
                    (Ok(vec![]), Ok(vec![]))
                }
            };
            prop_assert_eq!(&got, &want, "step {}: {:?}", step, op);
            if got.is_err() {
                prop_assert_eq!(&t, &before, "a failed call changed the table");
            }
            if let Err(e) = t.check_invariants() {
                return Err(TestCaseError::fail(format!("step {step}: {op:?}: {e}")));
            }
            for e in got.iter().flatten() {
                if let LockEvent::Granted { token, .. } = e {
                    prop_assert!(*token > last_granted, "tokens must increase");
                    last_granted = *token;
                }
            }
            prop_assert_eq!(t.next_token(), m.last_token + 1);
            for name in NAMES {
                let info = t.inspect(name);
                prop_assert_eq!(&info, &m.inspect(name), "inspect {:?}", name);
                if let Some(info) = info {
                    let x = info.holders.iter().filter(|h| h.mode == Exclusive).count();
                    prop_assert!(x <= 1 && (x == 0 || info.holders.len() == 1));
                }
            }
            let listed: Vec<LockInfo> = t.locks_with_prefix("a").collect();
            let want: Vec<LockInfo> = ["a", "ab"].iter().filter_map(|n| m.inspect(n)).collect();
            prop_assert_eq!(listed, want);
        }
        let bytes = postcard::to_stdvec(&t).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: LockTable =
            postcard::from_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &t);
        Ok(())
    }

    /// The table with every digest dropped.
    fn stripped(t: &LockTable) -> LockTable {
        let mut t = t.clone();
        for lock in t.locks.values_mut() {
            for h in &mut lock.holders {
                h.proof = None;
            }
            for w in &mut lock.waiters {
                w.proof = None;
            }
        }
        t
    }

    /// Tokens holding some lock in `t`.
    fn live_tokens(t: &LockTable) -> Vec<u64> {
        t.locks_with_prefix("")
            .flat_map(|i| i.holders.into_iter().map(|h| h.token))
            .collect()
    }

    /// The same random operations on a plain table and on one whose every
    /// acquire is proven (digest = the step's number): with the right
    /// digests the proven table answers and changes exactly as the plain
    /// one; before each release and fence, a wrong digest and a bare token
    /// are tried on the proven table and must be refused with a proof error
    /// (when the token holds) and change nothing. The digest a grant from
    /// the queue carries is the one its waiter was queued with.
    fn run_proven(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut plain = LockTable::new();
        let mut proven = LockTable::new();
        // token -> digest and waiter id -> digest, as the events tell.
        let mut by_token: BTreeMap<u64, HandleDigest> = BTreeMap::new();
        let mut by_waiter: BTreeMap<u64, HandleDigest> = BTreeMap::new();
        let wrong = HandleDigest::of_handle(b"not anybody's handle");
        for (step, op) in ops.iter().enumerate() {
            let (got, want) = match op {
                Op::Acquire {
                    name,
                    mode,
                    lease,
                    priority,
                    wait,
                } => {
                    let r = AcquireRequest {
                        name: NAMES[*name].to_owned(),
                        mode: *mode,
                        lease: *lease,
                        priority: *priority,
                        owner: format!("o{step}"),
                        wait: *wait,
                    };
                    let d = HandleDigest::of_handle(&step.to_le_bytes());
                    let got = proven.acquire_proven(&r, d);
                    match &got {
                        Ok(Acquired {
                            outcome: AcquireOutcome::Granted { token },
                            ..
                        }) => {
                            by_token.insert(*token, d);
                        }
                        Ok(Acquired {
                            outcome: AcquireOutcome::Queued { waiter_id, .. },
                            ..
                        }) => {
                            by_waiter.insert(*waiter_id, d);
                        }
                        _ => {}
                    }
                    (got.map(|a| a.events), plain.acquire(&r).map(|a| a.events))
                }
                Op::Release { name, token } | Op::Fence { name, token } => {
                    let name = NAMES[*name];
                    let token = token.resolve(&live_tokens(&plain));
                    let holds = plain.check_fence(name, token);
                    let before = proven.clone();
                    for bad in [Some(&wrong), None] {
                        let e = proven.prove(name, token, bad);
                        prop_assert_eq!(e.is_ok(), false, "step {}: {:?}", step, op);
                        prop_assert_eq!(
                            e.as_ref().is_err_and(|e| e.is_proof_failure()),
                            holds,
                            "step {}: {:?}: {:?}",
                            step,
                            op,
                            e
                        );
                        if matches!(op, Op::Release { .. }) {
                            let r = match bad {
                                Some(d) => proven.release_proven(name, token, d),
                                None => proven.release(name, token),
                            };
                            prop_assert_eq!(r.map_err(|e| e.is_proof_failure()), Err(holds));
                        }
                        prop_assert_eq!(&proven, &before, "a refused proof changed the table");
                    }
                    let right = by_token.get(&token).copied().unwrap_or(wrong);
                    if matches!(op, Op::Fence { .. }) {
                        prop_assert_eq!(proven.prove(name, token, Some(&right)).is_ok(), holds);
                        (Ok(vec![]), Ok(vec![]))
                    } else {
                        (
                            proven.release_proven(name, token, &right),
                            plain.release(name, token),
                        )
                    }
                }
                Op::Cancel { name, waiter } => {
                    let ids: Vec<u64> = plain
                        .locks_with_prefix("")
                        .flat_map(|i| i.waiters.into_iter().map(|w| w.waiter_id))
                        .collect();
                    let id = waiter.resolve(&ids);
                    (
                        proven.cancel_waiter(NAMES[*name], id),
                        plain.cancel_waiter(NAMES[*name], id),
                    )
                }
                Op::Revoke { lease } => (
                    Ok(proven.revoke_lease(*lease)),
                    Ok(plain.revoke_lease(*lease)),
                ),
            };
            prop_assert_eq!(&got, &want, "step {}: {:?}", step, op);
            for e in got.iter().flatten() {
                if let LockEvent::Granted {
                    token,
                    waiter_id: Some(w),
                    ..
                } = e
                {
                    let d = by_waiter.get(w).copied();
                    prop_assert!(d.is_some(), "waiter {} was queued with a digest", w);
                    if let Some(d) = d {
                        by_token.insert(*token, d);
                    }
                }
            }
            prop_assert_eq!(&stripped(&proven), &plain, "step {}: {:?}", step, op);
            if let Err(e) = proven.check_invariants() {
                return Err(TestCaseError::fail(format!("step {step}: {op:?}: {e}")));
            }
            // Every hold and wait of the proven table has its digest.
            let proofs = proven.proofs();
            let (holds, waits): (usize, usize) =
                proven.locks_with_prefix("").fold((0, 0), |(h, w), i| {
                    (h + i.holders.len(), w + i.waiters.len())
                });
            prop_assert_eq!((proofs.holders.len(), proofs.waiters.len()), (holds, waits));
            for (token, d) in &proofs.holders {
                prop_assert_eq!(by_token.get(token), Some(d));
            }
        }
        // Snapshot: the derived encoding plus the digests section.
        let bytes = postcard::to_stdvec(&proven).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            &bytes,
            &postcard::to_stdvec(&plain).map_err(|e| TestCaseError::fail(e.to_string()))?
        );
        let mut back: LockTable =
            postcard::from_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        back.restore_proofs(proven.proofs())
            .map_err(TestCaseError::fail)?;
        prop_assert_eq!(&back, &proven);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        #[test]
        fn table_matches_naive_model(ops in prop::collection::vec(op(), 1..80)) {
            run(ops)?;
        }

        #[test]
        fn proven_table_matches_plain_table(ops in prop::collection::vec(op(), 1..80)) {
            run_proven(ops)?;
        }
    }
}
