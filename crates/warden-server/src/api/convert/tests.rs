//! Unit tests of the protobuf <-> state type conversions in `api::convert`.

use super::*;
use prost::Message;
use tonic::Code;

fn kv(key: &str, rev: i64) -> st::KeyValue {
    st::KeyValue {
        key: key.as_bytes().to_vec(),
        create_revision: rev - 1,
        mod_revision: rev,
        version: 2,
        value: b"v".to_vec(),
        lease: 7,
    }
}

fn range(key: &str) -> st::RangeRequest {
    st::RangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: b"z".to_vec(),
        limit: 10,
        revision: 5,
        sort_order: st::SortOrder::Descend,
        sort_target: st::SortTarget::Mod,
        serializable: true,
        keys_only: true,
        count_only: false,
        min_mod_revision: 1,
        max_mod_revision: 2,
        min_create_revision: 3,
        max_create_revision: 4,
    }
}

fn put(key: &str) -> st::PutRequest {
    st::PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"val".to_vec(),
        lease: 9,
        prev_kv: true,
        ignore_value: false,
        ignore_lease: false,
    }
}

fn delete(key: &str) -> st::DeleteRangeRequest {
    st::DeleteRangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: vec![0],
        prev_kv: true,
    }
}

fn compare(target: st::CompareTarget) -> st::Compare {
    st::Compare {
        result: st::CompareResult::NotEqual,
        target,
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
    }
}

/// A txn using every request kind, every compare target, and nesting.
fn big_txn() -> st::TxnRequest {
    st::TxnRequest {
        compare: vec![
            compare(st::CompareTarget::Version(1)),
            compare(st::CompareTarget::CreateRevision(0)),
            compare(st::CompareTarget::ModRevision(3)),
            compare(st::CompareTarget::Value(b"x".to_vec())),
            compare(st::CompareTarget::Lease(4)),
        ],
        success: vec![
            st::RequestOp::Range(range("a")),
            st::RequestOp::Put(put("b")),
            st::RequestOp::DeleteRange(delete("c")),
            st::RequestOp::Txn(st::TxnRequest {
                compare: vec![compare(st::CompareTarget::Version(0))],
                success: vec![st::RequestOp::Put(put("d"))],
                failure: vec![],
            }),
        ],
        failure: vec![st::RequestOp::Range(range("e"))],
    }
}

/// state → proto → wire bytes → proto → state.
fn through_wire<P: Message + Default>(p: P) -> P {
    let bytes = p.encode_to_vec();
    match P::decode(bytes.as_slice()) {
        Ok(p) => p,
        Err(e) => panic!("decode failed: {e}"),
    }
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, Status>, msg: &str) {
    match r {
        Ok(v) => panic!("expected rejection {msg:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), Code::InvalidArgument);
            assert_eq!(s.message(), msg);
        }
    }
}

#[test]
fn range_round_trip() {
    let r = range("a");
    let back =
        st::RangeRequest::try_convert_from(through_wire(pb::RangeRequest::convert_from(r.clone())));
    assert_eq!(back.ok(), Some(r));
}

#[test]
fn put_and_delete_round_trip() {
    let p = put("k");
    let back = st::PutRequest::convert_from(through_wire(pb::PutRequest::convert_from(p.clone())));
    assert_eq!(back, p);

    let d = delete("k");
    let back = st::DeleteRangeRequest::convert_from(through_wire(
        pb::DeleteRangeRequest::convert_from(d.clone()),
    ));
    assert_eq!(back, d);
}

#[test]
fn txn_round_trip() {
    let t = big_txn();
    let back =
        st::TxnRequest::try_convert_from(through_wire(pb::TxnRequest::convert_from(t.clone())));
    assert_eq!(back.ok(), Some(t));
}

#[test]
fn compaction_round_trip() {
    let c = st::CompactionRequest {
        revision: 42,
        physical: true,
    };
    let back = st::CompactionRequest::convert_from(through_wire(
        pb::CompactionRequest::convert_from(c.clone()),
    ));
    assert_eq!(back, c);
}

#[test]
fn responses_round_trip() {
    let rr = st::RangeResponse {
        kvs: vec![kv("a", 3), kv("b", 4)],
        more: true,
        count: 9,
    };
    let pr = st::PutResponse {
        prev_kv: Some(kv("c", 5)),
    };
    let dr = st::DeleteRangeResponse {
        deleted: 2,
        prev_kvs: vec![kv("d", 6)],
    };
    let tr = st::TxnResponse {
        succeeded: true,
        responses: vec![
            st::ResponseOp::Range(rr.clone()),
            st::ResponseOp::Put(pr.clone()),
            st::ResponseOp::Put(st::PutResponse { prev_kv: None }),
            st::ResponseOp::DeleteRange(dr.clone()),
            st::ResponseOp::Txn(st::TxnResponse {
                succeeded: false,
                responses: vec![st::ResponseOp::Range(rr.clone())],
            }),
        ],
    };

    let p = pb::RangeResponse::convert_from(rr.clone());
    assert!(p.header.is_none());
    assert_eq!(st::RangeResponse::convert_from(through_wire(p)), rr);
    let p = pb::PutResponse::convert_from(pr.clone());
    assert!(p.header.is_none());
    assert_eq!(st::PutResponse::convert_from(through_wire(p)), pr);
    let p = pb::DeleteRangeResponse::convert_from(dr.clone());
    assert!(p.header.is_none());
    assert_eq!(st::DeleteRangeResponse::convert_from(through_wire(p)), dr);
    let p = pb::TxnResponse::convert_from(tr.clone());
    assert!(p.header.is_none());
    assert_eq!(
        st::TxnResponse::try_convert_from(through_wire(p)).ok(),
        Some(tr)
    );
}

#[test]
fn event_round_trip() {
    for ev in [
        st::Event {
            kind: st::EventKind::Put,
            kv: kv("a", 3),
            prev_kv: Some(kv("a", 2)),
            prev_cold: None,
        },
        st::Event {
            kind: st::EventKind::Delete,
            kv: st::KeyValue {
                key: b"a".to_vec(),
                mod_revision: 4,
                ..Default::default()
            },
            prev_kv: None,
            prev_cold: None,
        },
    ] {
        let p = mvccpb::Event::convert_from(ev.clone());
        assert_eq!(p.kv.as_ref().map(|kv| kv.key.as_slice()), Some(&b"a"[..]));
        assert_eq!(st::Event::try_convert_from(through_wire(p)).ok(), Some(ev));
    }
}

#[test]
fn proto_enum_values_match_etcd() {
    assert_eq!(
        pb::Compare::convert_from(compare(st::CompareTarget::Lease(1))).target,
        4
    );
    assert_eq!(
        pb::Compare::convert_from(compare(st::CompareTarget::Lease(1))).result,
        3
    );
    let r = pb::RangeRequest::convert_from(range("a"));
    assert_eq!((r.sort_order, r.sort_target), (2, 3));
    let e = mvccpb::Event::convert_from(st::Event::new(st::EventKind::Delete, kv("a", 1), None));
    assert_eq!(e.r#type, 1);
}

#[test]
fn rejects_unknown_sort_options() {
    let mut r = pb::RangeRequest::convert_from(range("a"));
    r.sort_order = 3;
    assert_invalid(
        st::RangeRequest::try_convert_from(r),
        etcd_errors::INVALID_SORT_OPTION,
    );
    let mut r = pb::RangeRequest::convert_from(range("a"));
    r.sort_target = -1;
    assert_invalid(
        st::RangeRequest::try_convert_from(r),
        etcd_errors::INVALID_SORT_OPTION,
    );
}

#[test]
fn leaves_etcd_semantic_checks_to_state_validate() {
    // Empty keys and ignore_value-with-value convert fine; the api layer
    // runs `state::validate` on the result.
    let p = pb::PutRequest {
        ignore_value: true,
        value: b"x".to_vec(),
        ..Default::default()
    };
    assert!(p.key.is_empty());
    assert_eq!(st::PutRequest::convert_from(p).value, b"x".to_vec());
    let mut c = pb::Compare::convert_from(compare(st::CompareTarget::Version(1)));
    c.key.clear();
    assert!(st::Compare::try_convert_from(c).is_ok());
}

#[test]
fn rejects_bad_compares() {
    let mut c = pb::Compare::convert_from(compare(st::CompareTarget::Version(1)));
    c.result = 4;
    assert_invalid(st::Compare::try_convert_from(c), "invalid compare result 4");

    let mut c = pb::Compare::convert_from(compare(st::CompareTarget::Version(1)));
    c.target = 5;
    assert_invalid(st::Compare::try_convert_from(c), "invalid compare target 5");

    let mut c = pb::Compare::convert_from(compare(st::CompareTarget::Version(1)));
    c.target_union = Some(compare::TargetUnion::ModRevision(1));
    assert_invalid(
        st::Compare::try_convert_from(c),
        "compare target is VERSION but the compared value is given as mod_revision",
    );
}

#[test]
fn missing_compare_value_means_zero_as_in_etcd() {
    let cases = [
        (
            compare::CompareTarget::Version,
            st::CompareTarget::Version(0),
        ),
        (
            compare::CompareTarget::Create,
            st::CompareTarget::CreateRevision(0),
        ),
        (
            compare::CompareTarget::Mod,
            st::CompareTarget::ModRevision(0),
        ),
        (
            compare::CompareTarget::Value,
            st::CompareTarget::Value(Vec::new()),
        ),
        (compare::CompareTarget::Lease, st::CompareTarget::Lease(0)),
    ];
    for (target, want) in cases {
        let c = pb::Compare {
            result: 0,
            target: target as i32,
            key: b"k".to_vec(),
            target_union: None,
            range_end: Vec::new(),
        };
        assert_eq!(
            st::Compare::try_convert_from(c).map(|c| c.target).ok(),
            Some(want)
        );
    }
}

#[test]
fn rejects_empty_request_op_even_nested() {
    let mut t = pb::TxnRequest::convert_from(big_txn());
    t.failure.push(pb::RequestOp { request: None });
    assert_invalid(
        st::TxnRequest::try_convert_from(t),
        etcd_errors::KEY_NOT_FOUND,
    );

    let mut t = pb::TxnRequest::convert_from(big_txn());
    if let Some(request_op::Request::RequestTxn(inner)) = &mut t.success[3].request {
        inner.success.push(pb::RequestOp { request: None });
    }
    assert_invalid(
        st::TxnRequest::try_convert_from(t),
        etcd_errors::KEY_NOT_FOUND,
    );
}

#[test]
fn rejects_invalid_ops_inside_txn() {
    let mut t = pb::TxnRequest::convert_from(big_txn());
    let mut r = pb::RangeRequest::convert_from(range("a"));
    r.sort_order = 99;
    t.failure.push(pb::RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    });
    assert_invalid(
        st::TxnRequest::try_convert_from(t),
        etcd_errors::INVALID_SORT_OPTION,
    );

    let mut t = pb::TxnRequest::convert_from(big_txn());
    let mut c = pb::Compare::convert_from(compare(st::CompareTarget::Value(b"v".to_vec())));
    c.target_union = Some(compare::TargetUnion::Lease(1));
    if let Some(request_op::Request::RequestTxn(inner)) = &mut t.success[3].request {
        inner.compare.push(c);
    }
    assert_invalid(
        st::TxnRequest::try_convert_from(t),
        "compare target is VALUE but the compared value is given as lease",
    );
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..4)
    }
    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 1..4)
    }

    fn key_value() -> impl Strategy<Value = st::KeyValue> {
        (
            key(),
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            bytes(),
            any::<i64>(),
        )
            .prop_map(
                |(key, create_revision, mod_revision, version, value, lease)| st::KeyValue {
                    key,
                    create_revision,
                    mod_revision,
                    version,
                    value,
                    lease,
                },
            )
    }

    fn range_request() -> impl Strategy<Value = st::RangeRequest> {
        let sort_order = prop_oneof![
            Just(st::SortOrder::None),
            Just(st::SortOrder::Ascend),
            Just(st::SortOrder::Descend)
        ];
        let sort_target = prop_oneof![
            Just(st::SortTarget::Key),
            Just(st::SortTarget::Version),
            Just(st::SortTarget::Create),
            Just(st::SortTarget::Mod),
            Just(st::SortTarget::Value)
        ];
        (
            (
                key(),
                bytes(),
                any::<i64>(),
                any::<i64>(),
                sort_order,
                sort_target,
            ),
            (any::<[bool; 3]>(), any::<[i64; 4]>()),
        )
            .prop_map(
                |((key, range_end, limit, revision, sort_order, sort_target), (b, r))| {
                    st::RangeRequest {
                        key,
                        range_end,
                        limit,
                        revision,
                        sort_order,
                        sort_target,
                        serializable: b[0],
                        keys_only: b[1],
                        count_only: b[2],
                        min_mod_revision: r[0],
                        max_mod_revision: r[1],
                        min_create_revision: r[2],
                        max_create_revision: r[3],
                    }
                },
            )
    }

    fn put_request() -> impl Strategy<Value = st::PutRequest> {
        (key(), bytes(), any::<i64>(), any::<[bool; 3]>()).prop_map(|(key, value, lease, b)| {
            st::PutRequest {
                key,
                value,
                lease,
                prev_kv: b[0],
                ignore_value: b[1],
                ignore_lease: b[2],
            }
        })
    }

    fn delete_request() -> impl Strategy<Value = st::DeleteRangeRequest> {
        (key(), bytes(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| {
            st::DeleteRangeRequest {
                key,
                range_end,
                prev_kv,
            }
        })
    }

    fn compare_strategy() -> impl Strategy<Value = st::Compare> {
        let result = prop_oneof![
            Just(st::CompareResult::Equal),
            Just(st::CompareResult::Greater),
            Just(st::CompareResult::Less),
            Just(st::CompareResult::NotEqual)
        ];
        let target = prop_oneof![
            any::<i64>().prop_map(st::CompareTarget::Version),
            any::<i64>().prop_map(st::CompareTarget::CreateRevision),
            any::<i64>().prop_map(st::CompareTarget::ModRevision),
            bytes().prop_map(st::CompareTarget::Value),
            any::<i64>().prop_map(st::CompareTarget::Lease),
        ];
        (result, target, key(), bytes()).prop_map(|(result, target, key, range_end)| st::Compare {
            result,
            target,
            key,
            range_end,
        })
    }

    fn txn_request() -> impl Strategy<Value = st::TxnRequest> {
        let leaf = prop_oneof![
            range_request().prop_map(st::RequestOp::Range),
            put_request().prop_map(st::RequestOp::Put),
            delete_request().prop_map(st::RequestOp::DeleteRange),
        ];
        let op = leaf.prop_recursive(3, 24, 4, |inner| {
            (
                proptest::collection::vec(compare_strategy(), 0..3),
                proptest::collection::vec(inner.clone(), 0..4),
                proptest::collection::vec(inner, 0..4),
            )
                .prop_map(|(compare, success, failure)| {
                    st::RequestOp::Txn(st::TxnRequest {
                        compare,
                        success,
                        failure,
                    })
                })
        });
        (
            proptest::collection::vec(compare_strategy(), 0..4),
            proptest::collection::vec(op.clone(), 0..4),
            proptest::collection::vec(op, 0..4),
        )
            .prop_map(|(compare, success, failure)| st::TxnRequest {
                compare,
                success,
                failure,
            })
    }

    fn txn_response() -> impl Strategy<Value = st::TxnResponse> {
        let range = (
            proptest::collection::vec(key_value(), 0..3),
            any::<bool>(),
            any::<i64>(),
        )
            .prop_map(|(kvs, more, count)| st::RangeResponse { kvs, more, count });
        let leaf = prop_oneof![
            range.prop_map(st::ResponseOp::Range),
            proptest::option::of(key_value())
                .prop_map(|prev_kv| st::ResponseOp::Put(st::PutResponse { prev_kv })),
            (any::<i64>(), proptest::collection::vec(key_value(), 0..3)).prop_map(
                |(deleted, prev_kvs)| st::ResponseOp::DeleteRange(st::DeleteRangeResponse {
                    deleted,
                    prev_kvs
                })
            ),
        ];
        let op = leaf.prop_recursive(3, 24, 4, |inner| {
            (any::<bool>(), proptest::collection::vec(inner, 0..4)).prop_map(
                |(succeeded, responses)| {
                    st::ResponseOp::Txn(st::TxnResponse {
                        succeeded,
                        responses,
                    })
                },
            )
        });
        (any::<bool>(), proptest::collection::vec(op, 0..4)).prop_map(|(succeeded, responses)| {
            st::TxnResponse {
                succeeded,
                responses,
            }
        })
    }

    proptest! {
        #[test]
        fn txn_request_survives_the_wire(t in txn_request()) {
            let back = st::TxnRequest::try_convert_from(through_wire(pb::TxnRequest::convert_from(t.clone())));
            prop_assert_eq!(back.ok(), Some(t));
        }

        #[test]
        fn txn_response_survives_the_wire(t in txn_response()) {
            let back = st::TxnResponse::try_convert_from(through_wire(pb::TxnResponse::convert_from(t.clone())));
            prop_assert_eq!(back.ok(), Some(t));
        }

        #[test]
        fn event_survives_the_wire(
            delete in any::<bool>(),
            kv in key_value(),
            prev_kv in proptest::option::of(key_value()),
        ) {
            let kind = if delete { st::EventKind::Delete } else { st::EventKind::Put };
            let ev = st::Event::new(kind, kv, prev_kv);
            let back = st::Event::try_convert_from(through_wire(mvccpb::Event::convert_from(ev.clone())));
            prop_assert_eq!(back.ok(), Some(ev));
        }

        /// Arbitrary bytes never make conversion panic: they either fail
        /// to decode or convert to a result.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(t) = pb::TxnRequest::decode(data.as_slice()) {
                let _ = st::TxnRequest::try_convert_from(t);
            }
        }
    }
}

#[test]
fn rejects_malformed_responses() {
    let t = pb::TxnResponse {
        header: None,
        succeeded: true,
        responses: vec![pb::ResponseOp { response: None }],
    };
    assert_eq!(
        st::TxnResponse::try_convert_from(t)
            .map_err(|s| s.code())
            .err(),
        Some(Code::Internal)
    );

    let e = mvccpb::Event {
        r#type: 2,
        kv: Some(kv("a", 1).convert()),
        prev_kv: None,
    };
    assert!(st::Event::try_convert_from(e).is_err());
    let e = mvccpb::Event {
        r#type: 0,
        kv: None,
        prev_kv: None,
    };
    assert!(st::Event::try_convert_from(e).is_err());
}
