//! Unit tests of the MVCC store (`mvcc`), kept beside it so `mvcc.rs` holds
//! only the implementation. A child module of `mvcc`: it may reach private
//! items through `super::*`.
//!
//! Owns: examples of Range, Put, DeleteRange, Txn and Compact against etcd's
//! semantics, the snapshot encoding, and the store's invariant checks.
//!
//! Must never: be compiled outside `cfg(test)`, or weaken what a test asserts
//! to make a change pass (the snapshot-encoding test pins the on-disk format).

use super::*;

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: b(k),
        value: b(v),
        ..Default::default()
    }
}

fn put(s: &mut MvccStore, k: &str, v: &str) -> WriteResult<PutResponse> {
    s.put(&put_req(k, v), &NoLeases).unwrap()
}

#[test]
fn key_map_encodes_as_a_btreemap_and_round_trips() {
    let mut s = MvccStore::new();
    for (k, v) in [("b", "1"), ("a", "2"), ("b", "3"), ("c", "4")] {
        put(&mut s, k, v);
    }
    // The snapshot format predates the persistent map: same bytes.
    #[derive(Serialize)]
    struct Mirror {
        current_revision: i64,
        compact_revision: i64,
        live_keys: u64,
        keys: std::collections::BTreeMap<Vec<u8>, History>,
    }
    let mirror = Mirror {
        current_revision: s.current_revision,
        compact_revision: s.compact_revision,
        live_keys: s.live_keys,
        keys: s
            .keys
            .iter()
            .map(|(k, h)| (k.to_vec(), (**h).clone()))
            .collect(),
    };
    let bytes = postcard::to_stdvec(&s).unwrap();
    assert_eq!(bytes, postcard::to_stdvec(&mirror).unwrap());
    let back: MvccStore = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, s);
    // A clone is a snapshot: later writes do not show through it.
    let frozen = s.clone();
    put(&mut s, "a", "5");
    assert_eq!(frozen.get(b"a").unwrap().unwrap().value, b("2"));
    assert_eq!(s.get(b"a").unwrap().unwrap().value, b("5"));
}

/// A copy of the store taken for a snapshot shares every key's history
/// with the live store; a write after it copies the history of the key it
/// writes and nothing else (not the 15 others of its B-tree leaf, with
/// their versions and values), so a snapshot being written does not make
/// each write copy a leaf's worth of values.
#[test]
fn a_write_after_a_copy_copies_only_its_own_history() {
    let mut s = MvccStore::new();
    let names: Vec<String> = (0..500).map(|i| format!("k{i:04}")).collect();
    for k in &names {
        put(&mut s, k, "v");
    }
    let frozen = s.clone();
    put(&mut s, "k0250", "w");
    put(&mut s, "k0251", "w");
    let mut shared = 0;
    for k in &names {
        let (live, old) = (&s.keys[k.as_bytes()], &frozen.keys[k.as_bytes()]);
        if k == "k0250" || k == "k0251" {
            assert!(!Arc::ptr_eq(live, old), "{k} was written: its own copy");
            assert_eq!(old.versions.len(), 1, "{k}: the copy is unchanged");
            assert_eq!(live.versions.len(), 2);
        } else {
            assert!(
                Arc::ptr_eq(live, old),
                "{k} was copied by a write to another key"
            );
            shared += 1;
        }
    }
    assert_eq!(shared, names.len() - 2);
}

/// A snapshot's keys are decoded in two passes (every other key first,
/// so that the B-tree's leaves end full) only while they come in
/// increasing order; keys out of order or repeated decode as one pass in
/// order would: a later key replaces an earlier one.
#[test]
fn a_decoded_map_keeps_the_last_of_repeated_keys() {
    let mut s = MvccStore::new();
    for k in ["a", "b", "c", "d", "e"] {
        put(&mut s, k, k);
    }
    let h = |k: &str| History::clone(&s.keys[k.as_bytes()]);
    fn as_map<S: serde::Serializer>(v: &[(Vec<u8>, History)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(v.iter().map(|(k, h)| (k, h)))
    }
    #[derive(Serialize)]
    struct Mirror {
        current_revision: i64,
        compact_revision: i64,
        live_keys: u64,
        #[serde(serialize_with = "as_map")]
        keys: Vec<(Vec<u8>, History)>,
    }
    let decode = |keys: Vec<(Vec<u8>, History)>| -> MvccStore {
        let m = Mirror {
            current_revision: s.current_revision,
            compact_revision: 0,
            live_keys: keys.len() as u64,
            keys,
        };
        postcard::from_bytes(&postcard::to_stdvec(&m).unwrap()).unwrap()
    };
    // In order: the same map as the store's.
    let ordered: Vec<(Vec<u8>, History)> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|k| (b(k), h(k)))
        .collect();
    assert_eq!(decode(ordered).keys, s.keys);
    // Out of order, with "d" twice: the later "d" (holding e's history)
    // wins. Alternating blindly would hold the first "d" back and insert
    // it after the second.
    let back = decode(vec![
        (b("b"), h("b")),
        (b("d"), h("d")),
        (b("d"), h("e")),
        (b("a"), h("a")),
        (b("c"), h("c")),
    ]);
    let keys: Vec<&[u8]> = back.keys.keys().map(|k| &**k).collect();
    assert_eq!(keys, [b"a".as_slice(), b"b", b"c", b"d"]);
    assert_eq!(*back.keys[b"d".as_slice()], h("e"));
    assert_eq!(*back.keys[b"a".as_slice()], h("a"));
}

fn del_req(k: &str, end: &[u8]) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: b(k),
        range_end: end.to_vec(),
        prev_kv: true,
    }
}

fn get_req(k: &str) -> RangeRequest {
    RangeRequest {
        key: b(k),
        ..Default::default()
    }
}

fn range_req(k: &[u8], end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: k.to_vec(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

fn get(s: &MvccStore, k: &str, rev: i64) -> Option<KeyValue> {
    let mut r = s
        .range(&RangeRequest {
            revision: rev,
            ..get_req(k)
        })
        .unwrap();
    assert!(r.kvs.len() <= 1);
    r.kvs.pop()
}

fn cmp(k: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        result,
        target,
        key: b(k),
        range_end: vec![],
    }
}

fn txn(
    s: &mut MvccStore,
    compare: Vec<Compare>,
    success: Vec<RequestOp>,
    failure: Vec<RequestOp>,
) -> Result<WriteResult<TxnResponse>, StateError> {
    s.txn(
        &TxnRequest {
            compare,
            success,
            failure,
        },
        &NoLeases,
    )
}

/// a=1@2, b=2@3, c=3@4, a=4@5, del b@6, b=5@7
fn sample() -> MvccStore {
    let mut s = MvccStore::new();
    put(&mut s, "a", "1");
    put(&mut s, "b", "2");
    put(&mut s, "c", "3");
    put(&mut s, "a", "4");
    s.delete_range(&del_req("b", b"")).unwrap();
    put(&mut s, "b", "5");
    assert_eq!(s.current_revision(), 7);
    s
}

#[test]
fn events_since_replays_history_in_revision_order() {
    let mut s = MvccStore::new();
    put(&mut s, "b", "1"); // rev 2
    put(&mut s, "a", "1"); // rev 3
    put(&mut s, "b", "2"); // rev 4
    let d = s.delete_range(&del_req("a", b""));
    assert_eq!(d.map(|d| d.response.deleted), Ok(1)); // rev 5
    put(&mut s, "z", "1"); // rev 6, outside [a, c)
    let evs = s.events_since(3, b"a", b"c").unwrap_or_default();
    let got: Vec<(i64, EventKind, String)> = evs
        .iter()
        .map(|e| {
            (
                e.kv.mod_revision,
                e.kind,
                String::from_utf8_lossy(&e.kv.key).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (3, EventKind::Put, "a".to_string()),
            (4, EventKind::Put, "b".to_string()),
            (5, EventKind::Delete, "a".to_string()),
        ]
    );
    assert_eq!(
        evs[1].prev_kv.as_ref().map(|p| p.value.clone()),
        Some(b("1"))
    );
    assert_eq!(evs[1].kv.version, 2);
    assert_eq!(evs[2].prev_kv.as_ref().map(|p| p.mod_revision), Some(3));
    s.compact(5).unwrap_or_default();
    assert_eq!(s.events_since(4, b"a", b"c"), Err(StateError::Compacted));
    assert_eq!(s.events_since(6, b"", &[0]).map(|e| e.len()), Ok(1));
}

#[test]
fn replay_keeps_the_order_of_changes_within_a_txn() {
    let mut s = MvccStore::new();
    let w = txn(
        &mut s,
        vec![],
        vec![
            RequestOp::Put(put_req("z", "1")),
            RequestOp::Put(put_req("a", "1")),
            RequestOp::Put(put_req("m", "1")),
        ],
        vec![],
    );
    let live: Vec<Vec<u8>> = w
        .map(|w| w.events.into_iter().map(|e| e.kv.key).collect())
        .unwrap_or_default();
    let replay: Vec<Vec<u8>> = s
        .events_since(1, b"", &[0])
        .map(|evs| evs.into_iter().map(|e| e.kv.key).collect())
        .unwrap_or_default();
    assert_eq!(live, vec![b("z"), b("a"), b("m")]);
    assert_eq!(replay, live, "replay and live watchers agree");
}

#[test]
fn fresh_store() {
    let s = MvccStore::new();
    assert_eq!(s.current_revision(), 1);
    assert_eq!(s.compact_revision(), 0);
    assert!(s.is_empty());
    assert_eq!(s.len(), 0);
    let r = s.range(&range_req(&[0], &[0])).unwrap();
    assert_eq!(r.count, 0);
    assert_eq!(get(&s, "a", 1), None);
    assert_eq!(s, MvccStore::default());
}

#[test]
fn versions_and_revisions() {
    let mut s = MvccStore::new();
    let w = put(&mut s, "k", "v1");
    assert_eq!(s.current_revision(), 2);
    assert_eq!(w.response.prev_kv, None);
    let kv = get(&s, "k", 0).unwrap();
    assert_eq!(
        kv,
        KeyValue {
            key: b("k"),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: b("v1"),
            lease: 0
        }
    );
    put(&mut s, "k", "v2");
    let kv = get(&s, "k", 0).unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    // Delete makes a tombstone; a new put starts a new life.
    let d = s.delete_range(&del_req("k", b"")).unwrap();
    assert_eq!(d.response.deleted, 1);
    assert_eq!(s.current_revision(), 4);
    assert_eq!(get(&s, "k", 0), None);
    put(&mut s, "k", "v3");
    let kv = get(&s, "k", 0).unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // History is readable.
    assert_eq!(get(&s, "k", 1), None);
    assert_eq!(get(&s, "k", 2).unwrap().value, b("v1"));
    assert_eq!(get(&s, "k", 3).unwrap().value, b("v2"));
    assert_eq!(get(&s, "k", 4), None);
    assert_eq!(s.get(b"k").unwrap().unwrap().value, b("v3"));
    assert_eq!(s.len(), 1);
}

#[test]
fn delete_of_nothing_does_not_bump() {
    let mut s = sample();
    let d = s.delete_range(&del_req("zzz", b"")).unwrap();
    assert_eq!(d.response.deleted, 0);
    assert!(d.events.is_empty());
    assert_eq!(s.current_revision(), 7);
    let d = s.delete_range(&del_req("x", b"y")).unwrap();
    assert_eq!(d.response.deleted, 0);
    assert_eq!(s.current_revision(), 7);
}

#[test]
fn prev_kv_and_events() {
    let mut s = MvccStore::new();
    let w = put(&mut s, "k", "v1");
    assert_eq!(w.events.len(), 1);
    assert_eq!(w.events[0].kind, EventKind::Put);
    assert_eq!(w.events[0].prev_kv, None);
    let w = s
        .put(
            &PutRequest {
                prev_kv: true,
                ..put_req("k", "v2")
            },
            &NoLeases,
        )
        .unwrap();
    let prev = w.response.prev_kv.unwrap();
    assert_eq!(prev.value, b("v1"));
    assert_eq!(w.events[0].prev_kv.as_ref(), Some(&prev));
    assert_eq!(w.events[0].kv.value, b("v2"));
    // Without prev_kv the response has none, the event still does.
    let w = put(&mut s, "k", "v3");
    assert_eq!(w.response.prev_kv, None);
    assert!(w.events[0].prev_kv.is_some());

    put(&mut s, "l", "x");
    let d = s.delete_range(&del_req("k", b"m")).unwrap();
    assert_eq!(d.response.deleted, 2);
    assert_eq!(
        keys(&RangeResponse {
            kvs: d.response.prev_kvs.clone(),
            ..Default::default()
        }),
        ["k", "l"]
    );
    assert_eq!(d.events.len(), 2);
    for (ev, prev) in d.events.iter().zip(&d.response.prev_kvs) {
        assert_eq!(ev.kind, EventKind::Delete);
        assert_eq!(
            ev.kv,
            KeyValue {
                key: prev.key.clone(),
                mod_revision: 6,
                ..Default::default()
            }
        );
        assert_eq!(ev.prev_kv.as_ref(), Some(prev));
    }
    let d = s
        .delete_range(&DeleteRangeRequest {
            prev_kv: false,
            ..del_req("zz", b"")
        })
        .unwrap();
    assert!(d.response.prev_kvs.is_empty());
}

#[test]
fn ignore_value_and_lease() {
    let mut s = MvccStore::new();
    let missing = PutRequest {
        key: b("k"),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(s.put(&missing, &NoLeases), Err(StateError::KeyNotFound));
    let missing = PutRequest {
        key: b("k"),
        value: b("x"),
        ignore_lease: true,
        ..Default::default()
    };
    assert_eq!(s.put(&missing, &NoLeases), Err(StateError::KeyNotFound));
    assert_eq!(s.current_revision(), 1);

    put(&mut s, "k", "orig");
    s.put(
        &PutRequest {
            key: b("k"),
            ignore_value: true,
            ..Default::default()
        },
        &NoLeases,
    )
    .unwrap();
    let kv = s.get(b"k").unwrap().unwrap();
    assert_eq!((kv.value, kv.version, kv.mod_revision), (b("orig"), 2, 3));
    s.put(
        &PutRequest {
            key: b("k"),
            value: b("new"),
            ignore_lease: true,
            ..Default::default()
        },
        &NoLeases,
    )
    .unwrap();
    assert_eq!(s.get(b"k").unwrap().unwrap().value, b("new"));
    // Stateless checks.
    let both = PutRequest {
        key: b("k"),
        value: b("x"),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(s.put(&both, &NoLeases), Err(StateError::ValueProvided));
}

#[test]
fn leases_go_through_the_lookup() {
    struct Only(i64);
    impl LeaseLookup for Only {
        fn lease_exists(&self, l: i64) -> bool {
            l == self.0
        }
    }
    let mut s = MvccStore::new();
    let req = PutRequest {
        lease: 9,
        ..put_req("k", "v")
    };
    assert_eq!(s.put(&req, &NoLeases), Err(StateError::LeaseNotFound));
    assert_eq!(s.put(&req, &Only(8)), Err(StateError::LeaseNotFound));
    s.put(&req, &Only(9)).unwrap();
    assert_eq!(s.get(b"k").unwrap().unwrap().lease, 9);
    // ignore_lease keeps it without a lookup.
    s.put(
        &PutRequest {
            ignore_lease: true,
            ..put_req("k", "w")
        },
        &NoLeases,
    )
    .unwrap();
    assert_eq!(s.get(b"k").unwrap().unwrap().lease, 9);
    // In a txn too.
    let r = txn(&mut s, vec![], vec![RequestOp::Put(req.clone())], vec![]);
    assert_eq!(r.unwrap_err(), StateError::LeaseNotFound);
    assert_eq!(
        s.put(&PutRequest { key: vec![], ..req }, &NoLeases),
        Err(StateError::EmptyKey)
    );
}

#[test]
fn range_key_selection() {
    let mut s = MvccStore::new();
    for k in ["a", "ab", "abc", "b", "c", "\u{7f}"] {
        put(&mut s, k, "v");
    }
    put(&mut s, "\0", "zero");
    let r = |k: &[u8], e: &[u8]| keys(&s.range(&range_req(k, e)).unwrap());
    assert_eq!(r(b"ab", b""), ["ab"]);
    assert_eq!(r(b"zz", b""), Vec::<String>::new());
    // Prefix "a" = [a, b).
    assert_eq!(r(b"a", b"b"), ["a", "ab", "abc"]);
    assert_eq!(r(b"ab", b"ac"), ["ab", "abc"]);
    // From key.
    assert_eq!(r(b"b", &[0]), ["b", "c", "\u{7f}"]);
    // All keys.
    assert_eq!(r(&[0], &[0]), ["\0", "a", "ab", "abc", "b", "c", "\u{7f}"]);
    // Empty or inverted intervals.
    assert_eq!(r(b"b", b"b"), Vec::<String>::new());
    assert_eq!(r(b"c", b"a"), Vec::<String>::new());
    assert_eq!(
        s.range(&range_req(b"", b"")).unwrap_err(),
        StateError::EmptyKey
    );
    assert_eq!(
        s.range(&range_req(b"", &[0])).unwrap_err(),
        StateError::EmptyKey
    );
}

#[test]
fn range_revisions() {
    let mut s = sample();
    let at = |s: &MvccStore, rev| {
        keys(
            &s.range(&RangeRequest {
                revision: rev,
                ..range_req(&[0], &[0])
            })
            .unwrap(),
        )
    };
    assert_eq!(at(&s, 1), Vec::<String>::new());
    assert_eq!(at(&s, 3), ["a", "b"]);
    assert_eq!(at(&s, 6), ["a", "c"]);
    assert_eq!(at(&s, 7), ["a", "b", "c"]);
    assert_eq!(at(&s, 0), ["a", "b", "c"]);
    assert_eq!(at(&s, -3), ["a", "b", "c"]);
    let future = RangeRequest {
        revision: 8,
        ..get_req("a")
    };
    assert_eq!(s.range(&future), Err(StateError::FutureRevision));
    s.compact(4).unwrap();
    let old = RangeRequest {
        revision: 3,
        ..get_req("a")
    };
    assert_eq!(s.range(&old), Err(StateError::Compacted));
    // Exactly at the compact revision is allowed.
    assert_eq!(at(&s, 4), ["a", "b", "c"]);
    assert_eq!(get(&s, "a", 4).unwrap().value, b("1"));
    assert_eq!(get(&s, "b", 4).unwrap().value, b("2"));
}

#[test]
fn count_limit_more() {
    let mut s = MvccStore::new();
    for k in ["a", "b", "c", "d", "e"] {
        put(&mut s, k, k);
    }
    let all = range_req(&[0], &[0]);
    let r = s.range(&all).unwrap();
    assert_eq!((r.count, r.kvs.len(), r.more), (5, 5, false));
    let r = s
        .range(&RangeRequest {
            limit: 2,
            ..all.clone()
        })
        .unwrap();
    assert_eq!(
        (r.count, keys(&r), r.more),
        (5, vec!["a".into(), "b".into()], true)
    );
    let r = s
        .range(&RangeRequest {
            limit: 5,
            ..all.clone()
        })
        .unwrap();
    assert_eq!((r.count, r.kvs.len(), r.more), (5, 5, false));
    let r = s
        .range(&RangeRequest {
            limit: -1,
            ..all.clone()
        })
        .unwrap();
    assert_eq!((r.count, r.kvs.len(), r.more), (5, 5, false));
    let r = s
        .range(&RangeRequest {
            count_only: true,
            limit: 1,
            ..all.clone()
        })
        .unwrap();
    assert_eq!((r.count, r.kvs.len(), r.more), (5, 0, false));
    let r = s
        .range(&RangeRequest {
            keys_only: true,
            ..all.clone()
        })
        .unwrap();
    assert!(r
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version == 1));
    assert_eq!(r.kvs.len(), 5);
}

#[test]
fn sorting() {
    let mut s = MvccStore::new();
    put(&mut s, "a", "3"); // rev 2
    put(&mut s, "b", "1"); // rev 3
    put(&mut s, "c", "2"); // rev 4
    put(&mut s, "a", "0"); // rev 5, a version 2
    put(&mut s, "b", "9"); // rev 6, b version 2
    let sorted = |target, order| {
        keys(
            &s.range(&RangeRequest {
                sort_target: target,
                sort_order: order,
                ..range_req(&[0], &[0])
            })
            .unwrap(),
        )
    };
    use SortOrder::*;
    use SortTarget::*;
    assert_eq!(sorted(Key, None), ["a", "b", "c"]);
    assert_eq!(sorted(Key, Ascend), ["a", "b", "c"]);
    assert_eq!(sorted(Key, Descend), ["c", "b", "a"]);
    // A non-key target with no order sorts ascending.
    assert_eq!(sorted(Mod, None), ["c", "a", "b"]);
    assert_eq!(sorted(Mod, Descend), ["b", "a", "c"]);
    assert_eq!(sorted(Create, Ascend), ["a", "b", "c"]);
    assert_eq!(sorted(Create, Descend), ["c", "b", "a"]);
    assert_eq!(sorted(Value, Ascend), ["a", "c", "b"]);
    assert_eq!(sorted(Value, Descend), ["b", "c", "a"]);
    // Ties (a and b have version 2) stay in key order both ways.
    assert_eq!(sorted(Version, Ascend), ["c", "a", "b"]);
    assert_eq!(sorted(Version, Descend), ["a", "b", "c"]);
    // Sort applies before the limit.
    let r = s
        .range(&RangeRequest {
            sort_target: Value,
            sort_order: Descend,
            limit: 1,
            keys_only: true,
            ..range_req(&[0], &[0])
        })
        .unwrap();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["b".to_string()], true, 3)
    );
    assert!(r.kvs[0].value.is_empty());
}

#[test]
fn min_max_filters() {
    let mut s = MvccStore::new();
    put(&mut s, "a", "x"); // 2
    put(&mut s, "b", "x"); // 3
    put(&mut s, "c", "x"); // 4
    put(&mut s, "a", "y"); // 5: a create 2 mod 5
    let f = |r: RangeRequest| {
        let resp = s.range(&r).unwrap();
        (keys(&resp), resp.count)
    };
    let all = range_req(&[0], &[0]);
    // count is before filters.
    assert_eq!(
        f(RangeRequest {
            min_mod_revision: 4,
            ..all.clone()
        }),
        (vec!["a".into(), "c".into()], 3)
    );
    assert_eq!(
        f(RangeRequest {
            max_mod_revision: 3,
            ..all.clone()
        }),
        (vec!["b".into()], 3)
    );
    assert_eq!(
        f(RangeRequest {
            min_create_revision: 3,
            ..all.clone()
        }),
        (vec!["b".into(), "c".into()], 3)
    );
    assert_eq!(
        f(RangeRequest {
            max_create_revision: 3,
            ..all.clone()
        }),
        (vec!["a".into(), "b".into()], 3)
    );
    // etcd's lock recipe: newest creator before mine.
    let r = s
        .range(&RangeRequest {
            max_create_revision: 3,
            sort_target: SortTarget::Create,
            sort_order: SortOrder::Descend,
            limit: 1,
            ..all.clone()
        })
        .unwrap();
    assert_eq!((keys(&r), r.more), (vec!["b".to_string()], true));
}

#[test]
fn txn_branches_and_revisions() {
    let mut s = MvccStore::new();
    put(&mut s, "k", "v"); // rev 2
    let w = txn(
        &mut s,
        vec![cmp("k", CompareResult::Equal, CompareTarget::Value(b("v")))],
        vec![
            RequestOp::Put(put_req("k", "v2")),
            RequestOp::Put(put_req("other", "o")),
            RequestOp::Range(get_req("k")),
        ],
        vec![RequestOp::Range(get_req("k"))],
    )
    .unwrap();
    assert!(w.response.succeeded);
    assert_eq!(s.current_revision(), 3);
    assert_eq!(w.events.len(), 2);
    assert!(w.events.iter().all(|e| e.kv.mod_revision == 3));
    // The range sees the txn's own write.
    let ResponseOp::Range(r) = &w.response.responses[2] else {
        panic!("not a range")
    };
    assert_eq!(r.kvs[0].value, b("v2"));
    assert_eq!(r.kvs[0].mod_revision, 3);

    // Failure branch, read-only: no revision bump.
    let w = txn(
        &mut s,
        vec![cmp("k", CompareResult::Equal, CompareTarget::Value(b("v")))],
        vec![RequestOp::Put(put_req("k", "nope"))],
        vec![RequestOp::Range(get_req("k"))],
    )
    .unwrap();
    assert!(!w.response.succeeded);
    assert_eq!(w.response.responses.len(), 1);
    assert!(w.events.is_empty());
    assert_eq!(s.current_revision(), 3);

    // Empty txn succeeds and writes nothing.
    let w = txn(&mut s, vec![], vec![], vec![]).unwrap();
    assert!(w.response.succeeded);
    assert_eq!(s.current_revision(), 3);

    // A txn whose only write deletes nothing does not bump either.
    txn(
        &mut s,
        vec![],
        vec![RequestOp::DeleteRange(del_req("none", b""))],
        vec![],
    )
    .unwrap();
    assert_eq!(s.current_revision(), 3);

    // Delete then range in one txn: the range sees the delete.
    let w = txn(
        &mut s,
        vec![],
        vec![
            RequestOp::DeleteRange(del_req("k", b"")),
            RequestOp::Range(range_req(&[0], &[0])),
            RequestOp::Range(RangeRequest {
                revision: 3,
                ..get_req("k")
            }),
        ],
        vec![],
    )
    .unwrap();
    assert_eq!(s.current_revision(), 4);
    let ResponseOp::Range(r) = &w.response.responses[1] else {
        panic!()
    };
    assert_eq!(keys(r), ["other"]);
    // An explicit earlier revision reads history.
    let ResponseOp::Range(r) = &w.response.responses[2] else {
        panic!()
    };
    assert_eq!(r.kvs[0].value, b("v2"));
}

#[test]
fn txn_compares() {
    let mut s = sample(); // a=4 (create 2, mod 5, v2), b=5 (create 7), c=3 (create 4)
    let mut check = |c: Compare| {
        txn(&mut s, vec![c], vec![], vec![])
            .unwrap()
            .response
            .succeeded
    };
    use CompareResult::*;
    use CompareTarget::*;
    assert!(check(cmp("a", Equal, Value(b("4")))));
    assert!(check(cmp("a", Greater, Value(b("3")))));
    assert!(check(cmp("a", Less, Value(b("5")))));
    assert!(check(cmp("a", NotEqual, Value(b("3")))));
    assert!(check(cmp("a", Equal, Version(2))));
    assert!(check(cmp("a", Equal, CreateRevision(2))));
    assert!(check(cmp("a", Equal, ModRevision(5))));
    assert!(check(cmp("a", Equal, Lease(0))));
    assert!(!check(cmp("a", Greater, Version(2))));
    // Missing key: value compares fail, others compare against zero.
    assert!(!check(cmp("zz", Equal, Value(vec![]))));
    assert!(!check(cmp("zz", NotEqual, Value(b("x")))));
    assert!(check(cmp("zz", Equal, Version(0))));
    assert!(check(cmp("zz", Equal, CreateRevision(0))));
    assert!(check(cmp("zz", Less, ModRevision(1))));
    // A range compare must hold for every key in the range.
    let range = |result, target, end: &[u8]| Compare {
        result,
        target,
        key: b("a"),
        range_end: end.to_vec(),
    };
    assert!(check(range(Greater, CreateRevision(1), &[0])));
    assert!(!check(range(Greater, CreateRevision(2), &[0])));
    assert!(check(range(Greater, CreateRevision(1), b"c")));
    assert!(!check(range(Equal, Version(1), b"c")));
    assert!(!check(range(Equal, Version(1), b"")));
    // All compares must hold.
    let w = txn(
        &mut s,
        vec![
            cmp("a", Equal, Value(b("4"))),
            cmp("b", Equal, Value(b("nope"))),
        ],
        vec![],
        vec![],
    )
    .unwrap();
    assert!(!w.response.succeeded);
}

#[test]
fn nested_txn_compares_see_the_state_before_the_txn() {
    let mut s = MvccStore::new();
    let w = txn(
        &mut s,
        vec![],
        vec![
            RequestOp::Put(put_req("a", "1")),
            RequestOp::Txn(TxnRequest {
                // Against the pre-txn store "a" does not exist yet.
                compare: vec![cmp("a", CompareResult::Equal, CompareTarget::Version(0))],
                success: vec![
                    RequestOp::Put(put_req("b", "then")),
                    RequestOp::Range(get_req("a")),
                ],
                failure: vec![RequestOp::Put(put_req("b", "else"))],
            }),
        ],
        vec![],
    )
    .unwrap();
    let ResponseOp::Txn(inner) = &w.response.responses[1] else {
        panic!()
    };
    assert!(inner.succeeded);
    // But the nested range sees the outer put.
    let ResponseOp::Range(r) = &inner.responses[1] else {
        panic!()
    };
    assert_eq!(r.kvs[0].value, b("1"));
    assert_eq!(s.get(b"b").unwrap().unwrap().value, b("then"));
    assert_eq!(s.current_revision(), 2);
    assert_eq!(s.get(b"a").unwrap().unwrap().mod_revision, 2);
    assert_eq!(s.get(b"b").unwrap().unwrap().mod_revision, 2);
}

#[test]
fn failing_txn_changes_nothing() {
    let mut s = sample();
    let before = s.clone();
    let ops = vec![
        RequestOp::Put(put_req("x", "1")),
        RequestOp::Put(PutRequest {
            key: b("missing"),
            ignore_value: true,
            ..Default::default()
        }),
    ];
    assert_eq!(
        txn(&mut s, vec![], ops, vec![]).unwrap_err(),
        StateError::KeyNotFound
    );
    assert_eq!(s, before);
    // Only the chosen branch's dynamic checks matter.
    let bad = vec![RequestOp::Put(PutRequest {
        key: b("missing"),
        ignore_value: true,
        ..Default::default()
    })];
    let w = txn(
        &mut s,
        vec![cmp(
            "a",
            CompareResult::Equal,
            CompareTarget::Value(b("no")),
        )],
        bad,
        vec![RequestOp::Put(put_req("x", "1"))],
    )
    .unwrap();
    assert!(!w.response.succeeded);
    assert_eq!(s.current_revision(), 8);
    let before = s.clone();

    let future = vec![
        RequestOp::Put(put_req("y", "1")),
        RequestOp::Range(RangeRequest {
            revision: 9,
            ..get_req("a")
        }),
    ];
    assert_eq!(
        txn(&mut s, vec![], future, vec![]).unwrap_err(),
        StateError::FutureRevision
    );
    assert_eq!(s, before);
    s.compact(5).unwrap();
    let before = s.clone();
    let old = vec![
        RequestOp::DeleteRange(del_req("a", &[0])),
        RequestOp::Range(RangeRequest {
            revision: 4,
            ..get_req("a")
        }),
    ];
    assert_eq!(
        txn(&mut s, vec![], old, vec![]).unwrap_err(),
        StateError::Compacted
    );
    assert_eq!(s, before);

    // A failure only visible while running (etcd panics here): a
    // from-key delete is not a "duplicate" of a later put, but the
    // ignore_value put then finds no key. Rolled back entirely.
    let tricky = vec![
        RequestOp::Put(put_req("new", "1")),
        RequestOp::DeleteRange(del_req("a", &[0])),
        RequestOp::Put(PutRequest {
            key: b("a"),
            ignore_value: true,
            ..Default::default()
        }),
    ];
    assert_eq!(
        txn(&mut s, vec![], tricky, vec![]).unwrap_err(),
        StateError::KeyNotFound
    );
    assert_eq!(s, before);
    s.check_invariants().unwrap();
}

#[test]
fn txn_static_errors() {
    let mut s = sample();
    let before = s.clone();
    let many: Vec<RequestOp> = (0..129)
        .map(|i| RequestOp::Put(put_req(&format!("k{i}"), "v")))
        .collect();
    assert_eq!(
        txn(&mut s, vec![], many, vec![]).unwrap_err(),
        StateError::TooManyOps
    );
    let dup = vec![
        RequestOp::Put(put_req("k", "1")),
        RequestOp::Put(put_req("k", "2")),
    ];
    assert_eq!(
        txn(&mut s, vec![], dup, vec![]).unwrap_err(),
        StateError::DuplicateKey
    );
    let dup = vec![
        RequestOp::DeleteRange(del_req("a", b"c")),
        RequestOp::Put(put_req("b", "2")),
    ];
    assert_eq!(
        txn(&mut s, vec![], dup, vec![]).unwrap_err(),
        StateError::DuplicateKey
    );
    let empty = vec![RequestOp::Range(get_req(""))];
    assert_eq!(
        txn(&mut s, vec![], vec![], empty).unwrap_err(),
        StateError::EmptyKey
    );
    assert_eq!(s, before);
}

#[test]
fn put_then_from_key_delete_in_one_txn() {
    // Allowed by etcd's overlap check; ops run in order.
    let mut s = sample();
    let w = txn(
        &mut s,
        vec![],
        vec![
            RequestOp::Put(put_req("z", "1")),
            RequestOp::DeleteRange(del_req("b", &[0])),
            RequestOp::Txn(TxnRequest {
                compare: vec![],
                success: vec![RequestOp::Put(put_req("c", "again"))],
                failure: vec![],
            }),
        ],
        vec![],
    )
    .unwrap();
    assert_eq!(s.current_revision(), 8);
    assert_eq!(w.events.len(), 5); // put z, delete b c z, put c
    assert_eq!(s.get(b"z").unwrap(), None);
    assert_eq!(s.get(b"b").unwrap(), None);
    let c = s.get(b"c").unwrap().unwrap();
    assert_eq!((c.create_revision, c.mod_revision, c.version), (8, 8, 1));
    assert_eq!(s.len(), 2);
    assert_eq!(get(&s, "c", 7).unwrap().value, b("3"));
    s.check_invariants().unwrap();
}

#[test]
fn compaction() {
    let mut s = sample();
    assert_eq!(s.compact(0), Err(StateError::Compacted));
    assert_eq!(s.compact(8), Err(StateError::FutureRevision));
    let snapshot_reads = |s: &MvccStore| -> Vec<(i64, Vec<KeyValue>)> {
        (5..=7)
            .map(|rev| {
                let r = s
                    .range(&RangeRequest {
                        revision: rev,
                        ..range_req(&[0], &[0])
                    })
                    .unwrap();
                (rev, r.kvs)
            })
            .collect()
    };
    let before = snapshot_reads(&s);
    s.compact(5).unwrap();
    assert_eq!(s.compact_revision(), 5);
    assert_eq!(s.current_revision(), 7);
    assert_eq!(snapshot_reads(&s), before);
    assert_eq!(s.compact(5), Err(StateError::Compacted));
    assert_eq!(s.compact(4), Err(StateError::Compacted));
    // b's tombstone at 6 is kept (6 > 5); compacting past it drops it.
    s.delete_range(&del_req("c", b"")).unwrap(); // 8
    s.compact(8).unwrap();
    assert!(!s.keys.contains_key(b"c".as_slice()));
    assert_eq!(s.keys.get(b"a".as_slice()).unwrap().versions.len(), 1);
    assert_eq!(s.keys.get(b"b".as_slice()).unwrap().versions.len(), 1);
    assert_eq!(s.len(), 2);
    assert_eq!(get(&s, "a", 8).unwrap().version, 2);
    s.check_invariants().unwrap();
    // Writes continue normally.
    put(&mut s, "c", "new");
    assert_eq!(s.get(b"c").unwrap().unwrap().create_revision, 9);
}

/// Compaction takes one of two paths: histories changed one by one (few
/// keys change) or a map built afresh (most do). Both must leave what
/// `History::compact` leaves for each key, the same size as a recount, and
/// share nothing that changed with the copy they started from.
#[test]
fn compaction_changing_few_or_most_keys_leaves_the_same_store() {
    // 100 keys written once (revisions 2..=101), then `rewritten` of them
    // written again and one of those deleted.
    let store_with = |rewritten: usize| {
        let mut s = MvccStore::new();
        for i in 0..100 {
            put(&mut s, &format!("k{i:03}"), "a");
        }
        for i in 0..rewritten {
            put(&mut s, &format!("k{i:03}"), "b");
        }
        s.delete_range(&del_req("k000", b"")).unwrap();
        s
    };
    for rewritten in [10, 90] {
        let mut s = store_with(rewritten);
        let before = s.clone();
        let rev = s.current_revision();
        let mut expected: Vec<(Vec<u8>, History)> = Vec::new();
        for (k, h) in before.keys.iter() {
            let mut h = History::clone(h);
            h.compact(rev);
            if !h.versions.is_empty() {
                expected.push((k.to_vec(), h));
            }
        }
        s.compact(rev).unwrap();
        let got: Vec<(Vec<u8>, History)> = s
            .keys
            .iter()
            .map(|(k, h)| (k.to_vec(), History::clone(h)))
            .collect();
        assert_eq!(got, expected, "{rewritten} keys rewritten");
        assert_eq!(s.size(), s.recount_size(), "{rewritten} keys rewritten");
        assert_eq!(s.len(), 99);
        assert!(!s.keys.contains_key(b"k000".as_slice()));
        s.check_invariants().unwrap();
        // The copy compaction started from is untouched.
        assert_eq!(before.keys[b"k001".as_slice()].versions.len(), 2);
        assert_eq!(s.keys[b"k001".as_slice()].versions.len(), 1);
        // Which path ran: a key compaction does not change (k099, written
        // once) is shared with the copy when few keys change, and rebuilt
        // with the rest of the map when most do.
        let shared = Arc::ptr_eq(
            &s.keys[b"k099".as_slice()],
            &before.keys[b"k099".as_slice()],
        );
        assert_eq!(shared, rewritten < 50, "{rewritten} keys rewritten");
    }
}

#[test]
fn hash_kv_tracks_content() {
    let a = sample();
    let b_ = sample();
    assert_eq!(a.hash_kv(0), b_.hash_kv(0));
    assert_eq!(a.hash_kv(7), a.hash_kv(0));
    assert_ne!(a.hash_kv(6), a.hash_kv(7));
    let mut c = sample();
    put(&mut c, "a", "other");
    assert_eq!(c.hash_kv(7), a.hash_kv(7));
    assert_ne!(c.hash_kv(0), a.hash_kv(0));
}

#[test]
fn invariants_hold() {
    let s = sample();
    s.check_invariants().unwrap();
    let mut bad = s.clone();
    bad.live_keys = 7;
    assert!(bad.check_invariants().is_err());
    let mut bad = s;
    bad.compact_revision = 100;
    assert!(bad.check_invariants().is_err());
}

#[test]
fn replay_in_chunks_equals_replay_at_once() {
    let mut s = MvccStore::new();
    for i in 0..50 {
        put(&mut s, &format!("k{}", i % 7), &"v".repeat(i * 10)); // revs 2..=51
        if i % 10 == 3 {
            let _ = s.delete_range(&del_req(&format!("k{}", i % 7), b""));
        }
    }
    let _ = txn(
        &mut s,
        vec![],
        vec![
            RequestOp::Put(put_req("k9", "1")),
            RequestOp::Put(put_req("k8", "1")),
        ],
        vec![],
    );
    let now = s.current_revision();
    let all = s.events_since(3, b"k", b"l").unwrap_or_default();
    for (revs, bytes) in [(1, usize::MAX), (4, usize::MAX), (1000, 100), (3, 1)] {
        let mut got = Vec::new();
        let mut from = 3;
        let mut chunks = 0;
        while from <= now {
            let (evs, end) = s
                .events_chunk(from, now, b"k", b"l", revs, bytes)
                .unwrap_or_default();
            assert!(end >= from && end <= now && end - from < revs);
            assert!(evs
                .iter()
                .all(|e| (from..=end).contains(&e.kv.mod_revision)));
            got.extend(evs);
            from = end + 1;
            chunks += 1;
        }
        assert_eq!(got, all, "chunks of {revs} revisions / {bytes} bytes");
        assert!(chunks > 1);
    }
    assert_eq!(
        s.events_chunk(now + 1, now, b"k", b"l", 10, 10),
        Ok((Vec::new(), now))
    );
    s.compact(10).unwrap_or_default();
    assert_eq!(
        s.events_chunk(5, now, b"k", b"l", 10, 10),
        Err(StateError::Compacted)
    );
}

// ----- size accounting -------------------------------------------------------

/// What one version of `k` with a value of `v` bytes adds to the size.
fn vsize(k: &str, v: usize) -> u64 {
    (k.len() + v) as u64 + VERSION_OVERHEAD
}

#[test]
fn size_counts_every_retained_version_exactly() {
    let mut s = MvccStore::new();
    assert_eq!(s.size(), 0);
    put(&mut s, "key", "hello"); // rev 2
    assert_eq!(s.size(), vsize("key", 5));
    // An overwrite keeps the old version until compaction.
    put(&mut s, "key", "hi"); // rev 3
    assert_eq!(s.size(), vsize("key", 5) + vsize("key", 2));
    put(&mut s, "other", ""); // rev 4
    let before_delete = s.size();
    // A delete adds a tombstone (key, no value).
    s.delete_range(&del_req("key", &[])).unwrap(); // rev 5
    assert_eq!(s.size(), before_delete + vsize("key", 0));
    // Deleting nothing changes nothing.
    s.delete_range(&del_req("nothing", &[])).unwrap();
    assert_eq!(s.size(), before_delete + vsize("key", 0));
    // Compacting at 3 drops the first version of `key` only.
    s.compact(3).unwrap();
    assert_eq!(
        s.size(),
        vsize("key", 2) + vsize("other", 0) + vsize("key", 0)
    );
    // Compacting past the tombstone drops the whole history of `key`.
    s.compact(5).unwrap();
    assert_eq!(s.size(), vsize("other", 0));
    assert_eq!(s.size(), s.recount_size());
    assert_eq!(s.check_invariants(), Ok(()));
}

#[test]
fn size_is_restored_by_a_rolled_back_txn_and_by_decoding() {
    let mut s = sample();
    let before = s.size();
    // Validation refuses every txn that could fail half-way, so drive the
    // rollback path directly: a put and a delete, then undone.
    let mut w = s.begin_write();
    s.put_op(&mut w, &put_req("x", "123456"), &NoLeases)
        .unwrap();
    s.delete_op(&mut w, &del_req("a", &[])).unwrap();
    assert_eq!(s.size(), before + vsize("x", 6) + vsize("a", 0));
    s.rollback(w);
    assert_eq!(s.size(), before);
    assert_eq!(s.check_invariants(), Ok(()));
    // The size is not stored: decoding recounts it.
    let bytes = postcard::to_stdvec(&s).unwrap();
    let back: MvccStore = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back.size(), before);
    assert_eq!(back, s);
}

#[test]
fn a_wrong_size_is_an_invariant_violation() {
    let mut s = sample();
    s.size += 1;
    assert!(s.check_invariants().unwrap_err().contains("size"));
}

mod size_props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Put(u8, usize),
        Delete(u8, bool),
        Compact(u8),
        Txn(u8, usize, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..6, 0usize..40).prop_map(|(k, v)| Op::Put(k, v)),
            2 => (0u8..6, any::<bool>()).prop_map(|(k, r)| Op::Delete(k, r)),
            1 => any::<u8>().prop_map(Op::Compact),
            2 => (0u8..6, 0usize..40, 0u8..6).prop_map(|(k, v, d)| Op::Txn(k, v, d)),
        ]
    }

    fn key(k: u8) -> String {
        format!("k{k}")
    }

    proptest! {
        /// After any sequence of writes, compactions and failed txns, the
        /// incrementally kept size equals a full recount.
        #[test]
        fn size_matches_a_full_recount(ops in prop::collection::vec(op(), 1..60)) {
            let mut s = MvccStore::new();
            for o in ops {
                match o {
                    Op::Put(k, v) => {
                        put(&mut s, &key(k), &"v".repeat(v));
                    }
                    Op::Delete(k, range) => {
                        let end = if range { vec![0] } else { vec![] };
                        s.delete_range(&del_req(&key(k), &end)).unwrap();
                    }
                    Op::Compact(r) => {
                        let span = s.current_revision() - s.compact_revision();
                        let rev = s.compact_revision() + 1 + i64::from(r) % span.max(1);
                        let _ = s.compact(rev);
                    }
                    Op::Txn(k, v, d) => {
                        // Refused as a whole when `d` is put in the range
                        // it deletes; the size must not move then.
                        let ops = vec![
                            RequestOp::Put(put_req(&key(k), &"w".repeat(v))),
                            RequestOp::DeleteRange(del_req(&key(d), &[])),
                            RequestOp::Put(PutRequest {
                                key: key(d).into_bytes(),
                                ignore_value: true,
                                ..Default::default()
                            }),
                        ];
                        let _ = txn(&mut s, vec![], ops, vec![]);
                    }
                }
                prop_assert_eq!(s.size(), s.recount_size());
                prop_assert_eq!(s.check_invariants(), Ok(()));
            }
        }
    }
}

mod sorted_range_props {
    use super::*;
    use proptest::prelude::*;

    /// The answer as the simplest code gives it: every live kv in the range,
    /// filtered, stably sorted, truncated.
    fn reference(s: &MvccStore, req: &RangeRequest) -> RangeResponse {
        let all = s
            .range(&RangeRequest {
                key: req.key.clone(),
                range_end: req.range_end.clone(),
                ..Default::default()
            })
            .unwrap();
        let mut kvs: Vec<KeyValue> = all
            .kvs
            .into_iter()
            .filter(|kv| {
                !((req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision)
                    || (req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision))
            })
            .collect();
        let order = match (req.sort_target, req.sort_order) {
            (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
            (SortTarget::Key, o) => o,
            (_, SortOrder::None) => SortOrder::Ascend,
            (_, o) => o,
        };
        let field = |kv: &KeyValue| -> Vec<u8> {
            match req.sort_target {
                SortTarget::Key => kv.key.clone(),
                SortTarget::Version => kv.version.to_be_bytes().to_vec(),
                SortTarget::Create => kv.create_revision.to_be_bytes().to_vec(),
                SortTarget::Mod => kv.mod_revision.to_be_bytes().to_vec(),
                SortTarget::Value => kv.value.clone(),
            }
        };
        match order {
            SortOrder::None => {}
            SortOrder::Ascend => kvs.sort_by_key(|kv| field(kv)),
            SortOrder::Descend => kvs.sort_by_key(|kv| std::cmp::Reverse(field(kv))),
        }
        let limit = if req.limit > 0 {
            req.limit as usize
        } else {
            usize::MAX
        };
        let more = kvs.len() > limit;
        kvs.truncate(limit);
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        RangeResponse {
            kvs,
            more,
            count: all.count,
        }
    }

    fn target() -> impl Strategy<Value = SortTarget> {
        prop_oneof![
            Just(SortTarget::Key),
            Just(SortTarget::Version),
            Just(SortTarget::Create),
            Just(SortTarget::Mod),
            Just(SortTarget::Value),
        ]
    }

    fn order() -> impl Strategy<Value = SortOrder> {
        prop_oneof![
            Just(SortOrder::None),
            Just(SortOrder::Ascend),
            Just(SortOrder::Descend)
        ]
    }

    proptest! {
        /// Sorting references and selecting the first `limit` gives what
        /// sorting copies of the whole range and truncating gives.
        #[test]
        fn sorted_limited_ranges_match_a_full_sort(
            puts in prop::collection::vec((0u8..12, 0u8..4), 1..60),
            target in target(),
            order in order(),
            limit in 0i64..8,
            keys_only in any::<bool>(),
            min_mod in 0i64..20,
        ) {
            let mut s = MvccStore::new();
            for (k, v) in puts {
                // Few distinct values and versions: many ties.
                put(&mut s, &format!("k{k:02}"), &format!("v{v}"));
            }
            let req = RangeRequest {
                key: b("k"),
                range_end: b("l"),
                limit,
                sort_target: target,
                sort_order: order,
                keys_only,
                min_mod_revision: min_mod,
                ..Default::default()
            };
            prop_assert_eq!(s.range(&req).unwrap(), reference(&s, &req));
        }
    }
}

/// What a batch of writes superseded goes to the scratch files with one
/// write when the state machine flushes after the batch; a long batch
/// flushes by itself every `MAX_PENDING_SPILLS` written keys.
#[test]
fn a_batch_of_writes_spills_with_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let cold = ColdStore::with_segment_bytes(dir.path(), 1 << 20).unwrap();
    let mut s = MvccStore::new();
    s.set_cold(Some(cold.clone()));
    for round in ["first", "second", "third"] {
        for i in 0..50 {
            put(&mut s, &format!("k{i:02}"), round);
        }
    }
    assert_eq!((s.cold_values(), cold.stats().writes), (0, 0));
    assert_eq!(s.flush_spills(), 100);
    assert_eq!((s.cold_values(), cold.stats().writes), (100, 1));
    assert_eq!(s.flush_spills(), 0, "nothing waits after a flush");
    // Reads at old revisions read the moved values back.
    assert_eq!(get(&s, "k07", 9).unwrap().value, b("first"));
    assert_eq!(s.get(b"k07").unwrap().unwrap().value, b("third"));
    for i in 0..MAX_PENDING_SPILLS {
        put(&mut s, "k00", &format!("v{i}"));
    }
    // "third" and every value but the newest of those writes.
    assert_eq!(s.cold_values(), 100 + MAX_PENDING_SPILLS);
    assert_eq!(cold.stats().writes, 2);
    s.check_invariants().unwrap();
}

#[test]
fn superseded_values_move_to_scratch_files_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    // Room for two 4-byte values with their CRCs.
    let cold = ColdStore::with_segment_bytes(dir.path(), 16).unwrap();
    let mut s = MvccStore::new();
    put(&mut s, "a", "1111");
    // Values already superseded move when the files are attached.
    put(&mut s, "a", "2222");
    assert_eq!(s.set_cold(Some(cold.clone())), 1);
    put(&mut s, "a", "3333");
    put(&mut s, "b", "bbbb");
    s.delete_range(&del_req("b", &[])).unwrap();
    // Written values wait for the flush the state machine makes after
    // each batch of entries.
    assert_eq!(s.cold_values(), 1);
    assert_eq!(s.flush_spills(), 2);
    // a@2, a@3 and b@5 (deleted) are history now; newest values stay.
    assert_eq!(s.cold_values(), 3);
    assert_eq!(cold.stats().spilled, 3);
    assert_eq!(s.get(b"a").unwrap().unwrap().value, b("3333"));

    // Reads at old revisions and watch replay read them back.
    let at = |s: &MvccStore, rev: i64, k: &str| {
        s.range(&RangeRequest {
            key: b(k),
            revision: rev,
            ..Default::default()
        })
        .unwrap()
        .kvs
    };
    assert_eq!(at(&s, 2, "a")[0].value, b("1111"));
    assert_eq!(at(&s, 3, "a")[0].value, b("2222"));
    assert_eq!(at(&s, 5, "b")[0].value, b("bbbb"));
    let events = s.events_since(3, b"a", &[0]).unwrap();
    assert_eq!(events[0].kv.value, b("2222"));
    // Previous values stay in the files until asked for.
    let prev = |i: usize| events[i].prev_kv_with_value().unwrap().unwrap().value;
    assert!(events[1].prev_cold.is_some());
    assert_eq!(events[1].prev_kv.as_ref().unwrap().value, b(""));
    assert_eq!(prev(1), b("2222"));
    assert_eq!(prev(3), b("bbbb"));
    // An event that left its previous value in a file holds its segment
    // (checked at the end: compaction frees every other one).
    drop(events);
    // Sorting by value at an old revision compares the bytes.
    let sorted = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: vec![0],
            revision: 5,
            sort_target: SortTarget::Value,
            sort_order: SortOrder::Descend,
            ..Default::default()
        })
        .unwrap();
    let values: Vec<Vec<u8>> = sorted.kvs.into_iter().map(|kv| kv.value).collect();
    assert_eq!(values, vec![b("bbbb"), b("3333")]);

    // Same bytes in a snapshot as a store that kept everything on the heap.
    let mut hot = MvccStore::new();
    for v in ["1111", "2222", "3333"] {
        put(&mut hot, "a", v);
    }
    put(&mut hot, "b", "bbbb");
    hot.delete_range(&del_req("b", &[])).unwrap();
    assert_eq!(s, hot);
    assert_eq!(
        postcard::to_stdvec(&s).unwrap(),
        postcard::to_stdvec(&hot).unwrap()
    );
    assert_eq!(s.hash_kv(0), hot.hash_kv(0));

    // Segments of 16 bytes hold two values each: compacting everything
    // frees them all but the one being written to.
    assert!(cold.stats().segments >= 2, "{:?}", cold.stats());
    s.compact(s.current_revision()).unwrap();
    assert_eq!(s.cold_values(), 0);
    let left = cold.stats();
    assert_eq!(left.segments, 1, "{left:?}");
}

#[test]
fn a_value_that_cannot_be_spilled_stays_on_the_heap() {
    let dir = tempfile::tempdir().unwrap();
    // Segments smaller than the value: it is never written.
    let cold = ColdStore::with_segment_bytes(dir.path(), 2).unwrap();
    let mut s = MvccStore::new();
    s.set_cold(Some(cold.clone()));
    put(&mut s, "a", "12345");
    put(&mut s, "a", "67890");
    assert_eq!(s.cold_values(), 0);
    assert_eq!(cold.stats().spilled, 0);
    assert_eq!(cold.stats().write_errors, 0);
    let old = s
        .range(&RangeRequest {
            key: b("a"),
            revision: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(old.kvs[0].value, b("12345"));
}

#[test]
fn a_snapshot_copy_keeps_the_segments_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let cold = ColdStore::with_segment_bytes(dir.path(), 8).unwrap();
    let mut s = MvccStore::new();
    s.set_cold(Some(cold.clone()));
    for v in ["1111", "2222", "3333"] {
        put(&mut s, "a", v);
    }
    s.flush_spills();
    let frozen = s.clone();
    s.compact(s.current_revision()).unwrap();
    // The copy still reads the history the store has dropped.
    let old = frozen
        .range(&RangeRequest {
            key: b("a"),
            revision: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(old.kvs[0].value, b("1111"));
    let held = cold.stats().segments;
    drop(frozen);
    assert!(
        cold.stats().segments < held,
        "{:?} then {held}",
        cold.stats()
    );
}

/// A store decoded under `decode_spilling` has its history in the scratch
/// files as it comes out of the decoder (nothing left for `set_cold` to
/// move), equals the store encoded, and reads every revision back; outside
/// it (and after a failed decode) decoding leaves everything on the heap.
#[test]
fn a_store_decoded_while_spilling_has_its_history_in_scratch_files() {
    let dir = tempfile::tempdir().unwrap();
    let cold = ColdStore::with_segment_bytes(dir.path(), 64).unwrap();
    let mut hot = MvccStore::new();
    for i in 0..5 {
        for k in ["a", "b", "c"] {
            put(&mut hot, k, &format!("{k}-value-{i}"));
        }
    }
    put(&mut hot, "d", "only one");
    let bytes = postcard::to_stdvec(&hot).unwrap();

    let (back, moved) = decode_spilling(Some(&cold), || {
        postcard::from_bytes::<MvccStore>(&bytes).unwrap()
    });
    assert_eq!(moved, 12, "4 superseded versions of a, b and c each");
    assert_eq!(back.cold_values(), 12);
    assert_eq!(cold.stats().spilled, 12);
    assert_eq!(back, hot);
    for rev in 2..=hot.current_revision() {
        let req = RangeRequest {
            key: b("a"),
            range_end: vec![0],
            revision: rev,
            ..Default::default()
        };
        assert_eq!(back.range(&req).unwrap(), hot.range(&req).unwrap(), "{rev}");
    }
    let mut back = back;
    // It goes on spilling what later writes supersede.
    put(&mut back, "d", "a second one");
    back.flush_spills();
    assert_eq!(back.cold_values(), 13);
    assert_eq!(back.set_cold(Some(cold.clone())), 0, "nothing left to move");

    // The thread's target is cleared afterwards, even after a failure.
    let (failed, moved) = decode_spilling(Some(&cold), || {
        postcard::from_bytes::<MvccStore>(&bytes[..bytes.len() / 2])
    });
    assert!(failed.is_err());
    assert!(moved <= 12);
    let plain: MvccStore = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(plain.cold_values(), 0);
    let (plain, moved) = decode_spilling(None, || postcard::from_bytes::<MvccStore>(&bytes));
    assert_eq!((plain.unwrap().cold_values(), moved), (0, 0));
}

/// A key's version array holds little spare room: it grows by half its
/// length (not to four slots on the second version), and a compaction
/// that drops versions gives their room back (64 B each).
#[test]
fn version_arrays_keep_little_spare_room() {
    let mut s = MvccStore::new();
    let cap = |s: &MvccStore| {
        let h = s.keys.get(b"k".as_slice()).unwrap();
        (h.versions.len(), h.versions.capacity())
    };
    put(&mut s, "k", "1");
    assert_eq!(cap(&s), (1, 1));
    put(&mut s, "k", "2");
    assert_eq!(cap(&s), (2, 2));
    put(&mut s, "k", "3");
    assert_eq!(cap(&s), (3, 3));
    for i in 4..=10 {
        put(&mut s, "k", &i.to_string());
        let (len, room) = cap(&s);
        assert!(room >= len && room <= len + len / 2, "{len} in {room}");
    }
    s.compact(s.current_revision()).unwrap();
    assert_eq!(cap(&s), (1, 1));
    assert_eq!(s.get(b"k").unwrap().unwrap().value, b("10"));
}

/// A key's newest value of at least `newest_min` bytes goes to the scratch
/// files with the batch that wrote it, and every read, compare and write
/// that needs it reads it back; shorter ones stay on the heap.
#[test]
fn newest_values_leave_the_heap_from_the_threshold_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let cold = ColdStore::with_limits(dir.path(), 1 << 20, 8).unwrap();
    let mut s = MvccStore::new();
    put(&mut s, "long", "0123456789");
    s.set_cold(Some(cold.clone()));
    assert!(s.newest_cold(b"long").is_some(), "moved when attached");
    put(&mut s, "short", "1234567");
    put(&mut s, "other", "abcdefghij");
    assert_eq!(s.flush_spills(), 1);
    assert!(s.newest_cold(b"short").is_none(), "under the threshold");
    assert!(s.newest_cold(b"other").is_some());
    s.check_invariants().unwrap();

    assert_eq!(s.get(b"long").unwrap().unwrap().value, b("0123456789"));
    let r = s.range(&range_req(b"a", b"z")).unwrap();
    let values: Vec<Vec<u8>> = r.kvs.into_iter().map(|kv| kv.value).collect();
    assert_eq!(values, [b("0123456789"), b("abcdefghij"), b("1234567")]);

    // A compare on a cold value reads it.
    let w = txn(
        &mut s,
        vec![cmp(
            "long",
            CompareResult::Equal,
            CompareTarget::Value(b("0123456789")),
        )],
        vec![RequestOp::Put(PutRequest {
            prev_kv: true,
            ..put_req("long", "replaced!!")
        })],
        vec![],
    )
    .unwrap();
    assert!(w.response.succeeded);
    // The put's previous value (response and event) was cold.
    let ResponseOp::Put(p) = &w.response.responses[0] else {
        panic!("{:?}", w.response)
    };
    assert_eq!(p.prev_kv.as_ref().unwrap().value, b("0123456789"));
    assert_eq!(w.events[0].prev_kv.as_ref().unwrap().value, b("0123456789"));
    s.flush_spills();
    // A put keeping the value (ignore_value) copies the cold bytes.
    s.put(
        &PutRequest {
            ignore_value: true,
            ..put_req("long", "")
        },
        &NoLeases,
    )
    .unwrap();
    assert_eq!(s.get(b"long").unwrap().unwrap().value, b("replaced!!"));
    s.flush_spills();
    let d = s.delete_range(&del_req("other", &[])).unwrap();
    assert_eq!(d.response.prev_kvs[0].value, b("abcdefghij"));
    assert_eq!(d.events[0].prev_kv.as_ref().unwrap().value, b("abcdefghij"));
    s.check_invariants().unwrap();
}

/// A store whose every non-empty value, newest ones included, goes to
/// scratch files in `dir` at the next flush.
fn every_value_cold(dir: &tempfile::TempDir) -> MvccStore {
    let mut s = MvccStore::new();
    s.set_cold(Some(
        ColdStore::with_limits(dir.path(), 1 << 20, 1).unwrap(),
    ));
    s
}

/// A newest value that cannot be read back fails the request that needed
/// it, changing nothing (the state machine then stops the member); reads
/// that do not need it still work, and so do writes that do not return it:
/// their events report the error to a watcher that asks for the previous
/// value ([`Event::prev_kv_with_value`]).
#[test]
fn a_newest_value_that_cannot_be_read_fails_its_request_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = every_value_cold(&dir);
    put(&mut s, "a", "first");
    put(&mut s, "b", "second");
    s.flush_spills();
    s.newest_cold(b"a").unwrap().damage();
    let size = s.size();
    let read_err = |e: StateError| matches!(e, StateError::HistoryRead(_));
    assert!(read_err(s.get(b"a").unwrap_err()));
    assert!(read_err(
        txn(
            &mut s,
            vec![cmp("a", CompareResult::Equal, CompareTarget::Value(b("x")))],
            vec![],
            vec![],
        )
        .unwrap_err()
    ));
    let returning = PutRequest {
        prev_kv: true,
        ..put_req("a", "new")
    };
    assert!(read_err(s.put(&returning, &NoLeases).unwrap_err()));
    let keeping = PutRequest {
        ignore_value: true,
        ..put_req("a", "")
    };
    assert!(read_err(s.put(&keeping, &NoLeases).unwrap_err()));
    assert!(read_err(s.delete_range(&del_req("a", b"c")).unwrap_err()));
    assert_eq!((s.current_revision(), s.size(), s.len()), (3, size, 2));
    // The undamaged key and the damaged key's metadata still read.
    assert_eq!(s.get(b"b").unwrap().unwrap().value, b("second"));
    assert_eq!(s.get_meta(b"a").unwrap().mod_revision, 2);
    s.check_invariants().unwrap();
    // A put and a delete that return nothing do not read it.
    let w = s.put(&put_req("a", "new"), &NoLeases).unwrap();
    let prev = w.events[0].prev_kv.as_ref().unwrap();
    assert_eq!((prev.mod_revision, prev.value.len()), (2, 0));
    assert!(read_err(w.events[0].prev_kv_with_value().unwrap_err()));
    assert!(read_err(Event::read_prev_values(w.events).unwrap_err()));
    let w = s.delete_keys(&[b("b")]).unwrap();
    assert_eq!(
        w.events[0].prev_kv_with_value().unwrap().unwrap().value,
        b("second")
    );
    // Read together, as the watch stream reads them.
    let back = Event::read_prev_values(w.events).unwrap();
    assert_eq!(back[0].prev_kv.as_ref().unwrap().value, b("second"));
    assert!(back[0].prev_cold.is_none());
    assert_eq!(s.get(b"a").unwrap().unwrap().value, b("new"));
    assert!(s.get(b"b").unwrap().is_none());
    s.check_invariants().unwrap();
}

/// Segments whose values were mostly overwritten and compacted away are
/// emptied by the sweep (their live values copied to the active segment),
/// so a value never overwritten does not keep its segment open.
#[test]
fn sparse_segments_are_swept_and_close() {
    let dir = tempfile::tempdir().unwrap();
    // Four 8-byte values (12 stored bytes each) a segment.
    let cold = ColdStore::with_limits(dir.path(), 48, 1).unwrap();
    let mut s = MvccStore::new();
    s.set_cold(Some(cold.clone()));
    for i in 0..40 {
        put(&mut s, &format!("k{i:02}"), &format!("first{i:03}"));
        s.flush_spills();
    }
    assert_eq!(cold.stats().segments, 10);
    // Overwrite three keys in four, then forget the old values.
    for i in (0..40).filter(|i| i % 4 != 0) {
        put(&mut s, &format!("k{i:02}"), &format!("again{i:03}"));
        s.flush_spills();
    }
    let grown = cold.stats().segments;
    assert!(grown >= 17, "{:?}", cold.stats());
    s.compact(s.current_revision()).unwrap();
    // The first flush after the compaction finds the sparse segments and
    // sweeps (40 keys: one step).
    assert_eq!(s.flush_spills(), 0);
    let after = cold.stats();
    assert_eq!(after.moved, 10, "{after:?}");
    // The first ten segments held a quarter of their values each: closed.
    // What is left is the overwrites' segments and the copies'.
    assert!(after.segments <= grown - 10 + 3, "{after:?} from {grown}");
    for i in 0..40 {
        let want = if i % 4 == 0 { "first" } else { "again" };
        assert_eq!(
            s.get(format!("k{i:02}").as_bytes()).unwrap().unwrap().value,
            b(&format!("{want}{i:03}"))
        );
    }
    // Nothing sparse is left to sweep.
    assert_eq!(s.flush_spills(), 0);
    assert_eq!(cold.stats().moved, 10);
    s.check_invariants().unwrap();
}

/// A sweep longer than one step goes on where it stopped, one step a
/// flush, and a copy of the store made meanwhile (a snapshot being
/// written) keeps the old segments open until it goes.
#[test]
fn a_long_sweep_resumes_across_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let cold = ColdStore::with_limits(dir.path(), 4096, 1).unwrap();
    let mut s = MvccStore::new();
    s.set_cold(Some(cold.clone()));
    let n = SWEEP_KEYS + 100;
    let key = |i: usize| format!("k{i:05}");
    for round in ["value-one", "value-two"] {
        // The second round overwrites every other key.
        for i in (0..n).filter(|i| round == "value-one" || i % 2 == 1) {
            put(&mut s, &key(i), round);
            if i % 64 == 63 {
                s.flush_spills();
            }
        }
        s.flush_spills();
    }
    s.compact(s.current_revision()).unwrap();
    s.flush_spills();
    let first = cold.stats().moved;
    assert_eq!(first, SWEEP_VALUES as u64, "one step at most");
    let copy = s.clone();
    // Step by step until the sweep has visited every key.
    let mut steps = 1;
    while steps < 100 {
        let before = cold.stats().moved;
        s.flush_spills();
        steps += 1;
        if cold.stats().moved == before {
            break;
        }
    }
    let moved = cold.stats().moved;
    // Every other key's first value was left in the first segments (but
    // a few in the segment the overwrites began to fill).
    assert!(moved >= (n / 2 - 200) as u64, "{moved} of {}", n / 2);
    assert!(steps > 2, "{steps} steps");
    let held = cold.stats().segments;
    drop(copy);
    assert!(
        cold.stats().segments < held,
        "the copy held the old segments"
    );
    for i in (0..n).step_by(97) {
        let want = if i % 2 == 1 { "value-two" } else { "value-one" };
        assert_eq!(s.get(key(i).as_bytes()).unwrap().unwrap().value, b(want));
    }
    s.check_invariants().unwrap();
}

/// A decoded store's values go to the scratch files a chunk of keys at a
/// time, with one write each (not one a key), newest values included.
#[test]
fn decoding_moves_values_one_write_per_chunk_of_keys() {
    let mut s = MvccStore::new();
    let n = DECODE_CHUNK * 2 + 10;
    let value = "v".repeat(crate::storage::cold::NEWEST_MIN_BYTES);
    for i in 0..n {
        put(&mut s, &format!("k{i:05}"), &value);
    }
    put(&mut s, "k00000", "short");
    let bytes = postcard::to_allocvec(&s).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cold = ColdStore::open(dir.path()).unwrap();
    let (back, moved) = decode_spilling(Some(&cold), || postcard::from_bytes::<MvccStore>(&bytes));
    let back = back.unwrap();
    // Every key's value of `NEWEST_MIN_BYTES` bytes (k00000's superseded one
    // too); k00000's newest is shorter and stays.
    assert_eq!((moved, back.cold_values()), (n, n));
    assert_eq!(cold.stats().writes, 3);
    assert_eq!(back, s);
    assert_eq!(back.get(b"k01500").unwrap().unwrap().value, b(&value));
    back.check_invariants().unwrap();
}

/// `get_many` answers each key in order, missing ones as `None`, with cold
/// values read back together.
#[test]
fn get_many_answers_each_key_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = every_value_cold(&dir);
    put(&mut s, "a", "alpha");
    put(&mut s, "c", "gamma");
    put(&mut s, "e", "");
    s.flush_spills();
    let keys = [b("e"), b("a"), b("b"), b("c"), b("a")];
    let got = s.get_many(&keys).unwrap();
    let values: Vec<Option<Vec<u8>>> = got.into_iter().map(|kv| kv.map(|kv| kv.value)).collect();
    assert_eq!(
        values,
        [
            Some(b("")),
            Some(b("alpha")),
            None,
            Some(b("gamma")),
            Some(b("alpha"))
        ]
    );
    s.newest_cold(b"c").unwrap().damage();
    assert!(matches!(s.get_many(&keys), Err(StateError::HistoryRead(_))));
}

#[test]
fn keys_order_as_their_bytes_and_keep_exact_sizes() {
    let raw: Vec<Vec<u8>> = vec![
        b(""),
        b("a"),
        b("a\0"),
        b("ab"),
        vec![0xff; 16],
        vec![0xff; 17],
        b("0123456789abcdef"),
        b("0123456789abcdef0"),
        b("0123456789abcdeg"),
        b("/registry/pods/default/web-0"),
    ];
    let keys: Vec<Key> = raw.iter().map(|k| Key::from(k.as_slice())).collect();
    for (i, a) in keys.iter().enumerate() {
        for (j, c) in keys.iter().enumerate() {
            assert_eq!(
                a.cmp(c),
                raw[i].cmp(&raw[j]),
                "{:?} vs {:?}",
                raw[i],
                raw[j]
            );
        }
        assert_eq!(a.as_slice(), raw[i].as_slice());
    }
    // Up to 16 bytes in place; a longer key's block is exactly its length,
    // after a clone (imbl clones every key of a node it copies) and after
    // decoding too.
    let short = Key::from(&b"0123456789abcdef"[..]);
    assert!(!short.0.spilled());
    let long = Key::from(&b"/registry/pods/default/web-0"[..]);
    assert!(long.0.spilled());
    assert_eq!(long.0.capacity(), long.len());
    let copy = long.clone();
    assert_eq!(copy.0.capacity(), copy.len());
    assert_eq!(copy, long);
    assert_eq!(Key::from_vec(b("0123456789abcdef0")).0.capacity(), 17);
    assert!(!Key::from_vec(b("short")).0.spilled());
    // Found through the map by its bytes.
    let mut m: OrdMap<Key, u8> = OrdMap::new();
    for (i, k) in keys.iter().enumerate() {
        m.insert(k.clone(), i as u8);
    }
    for (i, k) in raw.iter().enumerate() {
        assert_eq!(m.get(k.as_slice()), Some(&(i as u8)));
    }
}
