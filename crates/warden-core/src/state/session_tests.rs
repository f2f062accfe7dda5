//! Tests of `session`: exactly-once apply, acknowledgements, bounds, expiry
//! in log time, encoding.

use super::*;
use crate::state::types::PutRequest;
use crate::state::{Command, StateMachine};

fn tag(client: &str, request_id: u64, at_ms: u64) -> SessionTag {
    SessionTag {
        client_id: client.into(),
        request_id,
        acked_below: 0,
        at_ms,
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    })
}

/// Applies `cmd` to `m` through `t` as the server does.
fn once(t: &mut SessionTable, m: &mut StateMachine, tag: &SessionTag, cmd: &Command) -> Stored {
    let rev = m.revision();
    t.apply_once(tag, rev, || {
        let a = m.apply(cmd);
        Stored {
            revision: a.revision,
            result: a.result.map(Some),
        }
    })
}

fn version(m: &StateMachine, key: &str) -> i64 {
    m.mvcc().get_meta(key.as_bytes()).map_or(0, |kv| kv.version)
}

#[test]
fn a_retry_applies_once_and_answers_the_first_response() {
    let mut t = SessionTable::default();
    let mut m = StateMachine::new();
    let first = once(&mut t, &mut m, &tag("job7", 100, 1_000), &put("k", "v"));
    assert_eq!(first.revision, 2);
    assert!(first.result.is_ok());
    // Other writes happen; the retry still answers revision 2.
    m.apply(&put("other", "x"));
    for at in [1_001, 5_000, 2] {
        let again = once(&mut t, &mut m, &tag("job7", 100, at), &put("k", "v"));
        assert_eq!(again, first);
    }
    assert_eq!(version(&m, "k"), 1, "applied once");
    assert_eq!(m.revision(), 3);
    // A new request id applies.
    let next = once(&mut t, &mut m, &tag("job7", 101, 6_000), &put("k", "v"));
    assert_eq!(next.revision, 4);
    assert_eq!(version(&m, "k"), 2);
    // Another client with the same request id is its own session.
    let other = once(&mut t, &mut m, &tag("job8", 100, 6_000), &put("k", "v"));
    assert_eq!(other.revision, 5);
    assert_eq!(t.len(), 2);
    t.check_invariants().unwrap();
}

#[test]
fn errors_are_answered_again_too() {
    let mut t = SessionTable::default();
    let mut m = StateMachine::new();
    let leased = Command::Put(PutRequest {
        key: b"k".to_vec(),
        lease: 9,
        ..Default::default()
    });
    let first = once(&mut t, &mut m, &tag("c", 1, 1), &leased);
    assert_eq!(first.result, Err(StateError::LeaseNotFound));
    m.apply(&Command::LeaseGrant { id: 9, ttl: 60 });
    // The lease exists now, but the retry is the same request: same answer.
    assert_eq!(once(&mut t, &mut m, &tag("c", 1, 2), &leased), first);
    assert_eq!(version(&m, "k"), 0);
}

#[test]
fn acknowledged_responses_are_dropped_and_refused() {
    let mut t = SessionTable::default();
    let mut m = StateMachine::new();
    for id in 1..=5 {
        once(&mut t, &mut m, &tag("c", id, 10), &put("k", "v"));
    }
    assert_eq!(t.kept_responses(), 5);
    let mut acked = tag("c", 6, 11);
    acked.acked_below = 4;
    once(&mut t, &mut m, &acked, &put("k", "v"));
    assert_eq!(t.kept_responses(), 3, "4, 5 and 6 kept");
    assert_eq!(version(&m, "k"), 6);
    let rev = m.revision();
    let late = once(&mut t, &mut m, &tag("c", 2, 12), &put("k", "v"));
    assert_eq!(late.result, Err(StateError::ResponseForgotten));
    assert_eq!(late.revision, rev);
    assert_eq!(version(&m, "k"), 6, "not applied again");
    // 4 is still known.
    assert_eq!(
        once(&mut t, &mut m, &tag("c", 4, 13), &put("k", "v")).revision,
        5
    );
    // An acknowledgement above the request itself stops at the request.
    let mut over = tag("c", 7, 14);
    over.acked_below = 100;
    once(&mut t, &mut m, &over, &put("k", "v"));
    assert_eq!(
        once(&mut t, &mut m, &tag("c", 7, 15), &put("k", "v")).revision,
        m.revision()
    );
    t.check_invariants().unwrap();
}

#[test]
fn responses_per_session_are_bounded() {
    let limits = SessionLimits {
        max_responses: 3,
        ..SessionLimits::default()
    };
    let mut t = SessionTable::with_limits(limits);
    let mut m = StateMachine::new();
    for id in 1..=10 {
        once(&mut t, &mut m, &tag("c", id, 1), &put("k", "v"));
    }
    assert_eq!(t.kept_responses(), 3);
    assert_eq!(
        once(&mut t, &mut m, &tag("c", 7, 1), &put("k", "v")).result,
        Err(StateError::ResponseForgotten)
    );
    assert!(once(&mut t, &mut m, &tag("c", 8, 1), &put("k", "v"))
        .result
        .is_ok());
    assert_eq!(version(&m, "k"), 10);
}

#[test]
fn the_least_recently_used_session_is_evicted_and_refused() {
    let limits = SessionLimits {
        max_sessions: 3,
        ..SessionLimits::default()
    };
    let mut t = SessionTable::with_limits(limits);
    let mut m = StateMachine::new();
    for c in ["a", "b", "c"] {
        once(&mut t, &mut m, &tag(c, 5, 1), &put(c, "v"));
    }
    // "a" is used again, so "b" is the least recently used.
    once(&mut t, &mut m, &tag("a", 5, 2), &put("a", "v"));
    once(&mut t, &mut m, &tag("d", 1, 3), &put("d", "v"));
    assert_eq!(t.len(), 3);
    let retry = once(&mut t, &mut m, &tag("b", 5, 4), &put("b", "v"));
    assert_eq!(retry.result, Err(StateError::SessionExpired));
    assert_eq!(version(&m, "b"), 1, "never applied twice");
    // "a" survived and still answers its retry.
    assert!(once(&mut t, &mut m, &tag("a", 5, 5), &put("a", "v"))
        .result
        .is_ok());
    assert_eq!(version(&m, "a"), 1);
    // A higher request id of the evicted client is new: it applies.
    assert!(once(&mut t, &mut m, &tag("b", 6, 6), &put("b", "v"))
        .result
        .is_ok());
    assert_eq!(version(&m, "b"), 2);
    t.check_invariants().unwrap();
}

#[test]
fn idle_sessions_expire_in_log_time() {
    let limits = SessionLimits {
        idle_ttl_ms: 1_000,
        ..SessionLimits::default()
    };
    let mut t = SessionTable::with_limits(limits);
    let mut m = StateMachine::new();
    once(&mut t, &mut m, &tag("old", 3, 10_000), &put("k", "v"));
    // Within the TTL the retry is answered.
    assert!(once(&mut t, &mut m, &tag("old", 3, 10_900), &put("k", "v"))
        .result
        .is_ok());
    // Another client moves log time on; "old" has been idle too long.
    once(&mut t, &mut m, &tag("new", 1, 12_000), &put("x", "v"));
    assert_eq!(t.len(), 1, "swept");
    let late = once(&mut t, &mut m, &tag("old", 3, 12_001), &put("k", "v"));
    assert_eq!(late.result, Err(StateError::SessionExpired));
    assert_eq!(
        late.result.unwrap_err().to_string(),
        "warden: session expired; the request may or may not have been applied"
    );
    assert_eq!(version(&m, "k"), 1);
    // A stamp from a member whose clock is behind does not move time back.
    once(&mut t, &mut m, &tag("slow", 1, 5), &put("y", "v"));
    assert_eq!(t.clock_ms(), 12_001);
    t.check_invariants().unwrap();
}

#[test]
fn an_idle_session_is_refused_even_before_it_is_swept() {
    let limits = SessionLimits {
        idle_ttl_ms: 1_000,
        ..SessionLimits::default()
    };
    let mut t = SessionTable::with_limits(limits);
    let mut m = StateMachine::new();
    once(&mut t, &mut m, &tag("c", 3, 10_000), &put("k", "v"));
    let late = once(&mut t, &mut m, &tag("c", 3, 20_000), &put("k", "v"));
    assert_eq!(late.result, Err(StateError::SessionExpired));
    assert_eq!(version(&m, "k"), 1);
}

/// 100 000 distinct clients write once and go idle: the table never holds
/// more than its session limit, and once the idle TTL has passed in log
/// time, ordinary tagged writes sweep it back to the one active session
/// plus the fixed-size table of forgotten marks (its encoding, which
/// snapshots carry, shrinks from ~1 MB to ~12 kB); a retry from any of the
/// idle clients is refused.
#[test]
fn a_hundred_thousand_idle_clients_are_forgotten_after_the_ttl() {
    let limits = SessionLimits::default();
    let mut t = SessionTable::default();
    let mut m = StateMachine::new();
    let mut baseline_table = SessionTable::default();
    let mut baseline_m = StateMachine::new();
    once(
        &mut baseline_table,
        &mut baseline_m,
        &tag("active", 1, 1),
        &put("k", "v"),
    );
    let baseline = postcard::to_stdvec(&baseline_table).unwrap().len();

    let t0 = 1_000_000;
    for i in 0..100_000u64 {
        once(
            &mut t,
            &mut m,
            &tag(&format!("client-{i}"), 1, t0 + i / 100),
            &put("k", "v"),
        );
        assert!(t.len() <= limits.max_sessions, "bounded while they come");
    }
    assert_eq!(t.len(), limits.max_sessions);
    let full = postcard::to_stdvec(&t).unwrap().len();

    // The TTL passes in log time; one client keeps writing.
    let later = t0 + 1_000 + limits.idle_ttl_ms + 1;
    let mut req = 1;
    while t.len() > 1 {
        req += 1;
        assert!(req < 1_000, "sweeping stalled at {} sessions", t.len());
        // A client that acknowledges its answers (as warden-client does).
        let mut active = tag("active", req, later + req);
        active.acked_below = req;
        once(&mut t, &mut m, &active, &put("k", "v"));
    }
    assert_eq!(t.kept_responses(), 1);
    let swept = postcard::to_stdvec(&t).unwrap().len();
    // What stays is the fixed-size table of forgotten marks (at most
    // FORGOTTEN_BUCKETS entries, however many clients came and went).
    assert!(
        swept <= baseline + FORGOTTEN_BUCKETS as usize * 12 && swept * 50 < full,
        "encoding back near the baseline: {swept} bytes (baseline {baseline}, full {full})"
    );
    // The idle clients' retries are refused, never applied again.
    let before = version(&m, "k");
    for i in [0u64, 50_000, 99_999] {
        let late = once(
            &mut t,
            &mut m,
            &tag(&format!("client-{i}"), 1, later + 2_000),
            &put("k", "v"),
        );
        assert_eq!(late.result, Err(StateError::SessionExpired), "client-{i}");
    }
    assert_eq!(version(&m, "k"), before);
    t.check_invariants().unwrap();
}

#[test]
fn a_long_client_id_is_refused() {
    let mut t = SessionTable::default();
    let mut m = StateMachine::new();
    let long = "x".repeat(MAX_CLIENT_ID_BYTES + 1);
    assert!(once(&mut t, &mut m, &tag(&long, 1, 1), &put("k", "v"))
        .result
        .is_err());
    assert_eq!(version(&m, "k"), 0);
    assert!(t.is_empty());
}

#[test]
fn encoding_round_trips_and_pristine_tables_are_empty() {
    assert!(SessionTable::default().is_pristine());
    let mut t = SessionTable::default();
    let mut m = StateMachine::new();
    for (i, c) in ["a", "b", "c"].iter().enumerate() {
        once(&mut t, &mut m, &tag(c, i as u64 + 1, 7), &put(c, "v"));
    }
    assert!(!t.is_pristine());
    let bytes = postcard::to_stdvec(&t).unwrap();
    let back: SessionTable = postcard::from_bytes(&bytes).unwrap();
    back.check_invariants().unwrap();
    assert_eq!(back, t);
    assert_eq!(postcard::to_stdvec(&back).unwrap(), bytes);
    // A table whose use order disagrees with its sessions is refused.
    let mut bad = t.clone();
    bad.by_use.clear();
    assert!(bad.check_invariants().is_err());
}

/// The encoding of a fixed table: a change to it is a format change (bump
/// `FORMAT_VERSION`, keep a decoder), never an accident.
#[test]
fn golden_bytes() {
    let mut t = SessionTable::default();
    t.apply_once(&tag("job7", 100, 1_000), 1, || Stored {
        revision: 2,
        result: Ok(None),
    });
    let bytes = postcard::to_stdvec(&t).unwrap();
    assert_eq!(
        bytes,
        [
            // clock_ms, uses
            0xe8, 0x07, 0x01, // sessions: 1, "job7"
            0x01, 0x04, b'j', b'o', b'b', b'7', // last_used (1000, 1), floor 1
            0xe8, 0x07, 0x01, 0x01, // responses: 1, id 100, revision 2, Ok(None)
            0x01, 0x64, 0x04, 0x00, 0x00, // highest
            0x64, // by_use: 1, (1000, 1) -> "job7"
            0x01, 0xe8, 0x07, 0x01, 0x04, b'j', b'o', b'b', b'7', // forgotten: 0
            0x00,
        ]
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the order, duplication and timing of tagged requests,
        /// each (client, request) changes the store at most once; and a
        /// replica that decodes the table halfway and goes on reaches the
        /// same table and store.
        #[test]
        fn each_request_applies_at_most_once(
            ops in proptest::collection::vec((0u8..5, 1u64..12, 0u64..6, 0u64..3_000), 1..120),
        ) {
            let limits = SessionLimits { idle_ttl_ms: 1_000, max_sessions: 3, max_responses: 4 };
            let mut t = SessionTable::with_limits(limits);
            let mut m = StateMachine::new();
            let mut applied = std::collections::BTreeSet::new();
            let mut clock = 0u64;
            let mut replica: Option<(SessionTable, StateMachine, usize)> = None;
            for (i, (c, id, acked, dt)) in ops.iter().enumerate() {
                clock += dt;
                let tg = SessionTag {
                    client_id: format!("c{c}"),
                    request_id: *id,
                    acked_below: *acked,
                    at_ms: clock,
                };
                let key = format!("{c}/{id}");
                let before = version(&m, &key);
                once(&mut t, &mut m, &tg, &put(&key, "v"));
                let after = version(&m, &key);
                if after != before {
                    prop_assert!(applied.insert(key.clone()), "{key} applied twice");
                }
                prop_assert_eq!(t.check_invariants(), Ok(()));
                if i == ops.len() / 2 {
                    let bytes = postcard::to_stdvec(&t).unwrap();
                    let mut back: SessionTable = postcard::from_bytes(&bytes).unwrap();
                    back.set_limits(limits);
                    replica = Some((back, m.clone(), i));
                }
            }
            if let Some((mut rt, mut rm, from)) = replica {
                let mut clock: u64 = ops[..=from].iter().map(|o| o.3).sum();
                for (c, id, acked, dt) in &ops[from + 1..] {
                    clock += dt;
                    let tg = SessionTag {
                        client_id: format!("c{c}"),
                        request_id: *id,
                        acked_below: *acked,
                        at_ms: clock,
                    };
                    once(&mut rt, &mut rm, &tg, &put(&format!("{c}/{id}"), "v"));
                }
                prop_assert_eq!(&rt, &t);
                prop_assert_eq!(rm.to_snapshot_bytes().unwrap(), m.to_snapshot_bytes().unwrap());
            }
        }
    }
}

/// A request whose apply could not read a value back is not answered from
/// the table afterwards: the member stops, and the replay after its
/// restart applies the request again instead of repeating the error.
#[test]
fn a_failed_read_is_not_kept_as_the_answer() {
    let mut t = SessionTable::default();
    let failed = t.apply_once(&tag("job", 1, 1_000), 1, || Stored {
        revision: 1,
        result: Err(StateError::HistoryRead("disk".into())),
    });
    assert!(matches!(failed.result, Err(StateError::HistoryRead(_))));
    let mut ran = false;
    let again = t.apply_once(&tag("job", 1, 1_000), 1, || {
        ran = true;
        Stored {
            revision: 2,
            result: Ok(None),
        }
    });
    assert!(ran, "the retry was answered from the table");
    assert_eq!(again.result, Ok(None));
}
