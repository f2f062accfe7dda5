//! Conversions between the generated etcd protobuf types (`etcdserverpb`,
//! `mvccpb`) and the state machine's plain types (`state::types`).
//!
//! Conversion rejects only what the state types cannot represent, with
//! `INVALID_ARGUMENT`: an unknown sort option and a `RequestOp` without a
//! request (with etcd's error strings for them), an unknown compare result or
//! target, and a compare whose value names a different field than its target
//! (etcd would silently compare against zero there). Nothing here panics on
//! input.
//!
//! etcd's other request checks (empty keys, `ignore_value` with a value,
//! `ignore_lease` with a lease, too many txn ops, duplicate keys in a txn)
//! are not done here: they work on the converted request, in
//! `state::validate`, which the api layer runs right after converting.
//!
//! The other directions (state request → proto, proto response → state) exist
//! for the Rust client and for round-trip tests. Responses converted to proto
//! carry `header: None`; the caller fills in the `ResponseHeader`.

use tonic::Status;

use warden_core::state::types as st;
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::{compare, range_request, request_op, response_op};
use warden_proto::mvccpb;

/// etcd's error strings (its `rpctypes.ErrGRPC*`) for the rejections made
/// here, both `INVALID_ARGUMENT`. Clients match on these exact texts.
pub mod etcd_errors {
    /// A txn `RequestOp` with no request set (etcd's `ErrGRPCKeyNotFound`,
    /// which is what etcd's `checkRequestOp` returns for it).
    pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
    /// A `RangeRequest` with an unknown `sort_order` or `sort_target`.
    pub const INVALID_SORT_OPTION: &str = "etcdserver: invalid sort option";
}

/// `From` for the pairs of types this module converts. Both sides live in
/// other crates (`warden-proto`, `warden-core`), so Rust's orphan rule
/// forbids implementing `std::convert::From` between them here; these local
/// traits play its part, with the same shape.
pub trait ConvertFrom<T>: Sized {
    fn convert_from(value: T) -> Self;
}

/// `TryFrom` for the pairs of types this module converts (see [`ConvertFrom`]).
pub trait TryConvertFrom<T>: Sized {
    type Error;
    fn try_convert_from(value: T) -> Result<Self, Self::Error>;
}

/// `Into`, implemented for every [`ConvertFrom`] pair.
pub trait ConvertInto<U> {
    fn convert(self) -> U;
}

impl<T, U: ConvertFrom<T>> ConvertInto<U> for T {
    fn convert(self) -> U {
        U::convert_from(self)
    }
}

/// `TryInto`, implemented for every [`TryConvertFrom`] pair.
pub trait TryConvertInto<U> {
    type Error;
    fn try_convert(self) -> Result<U, Self::Error>;
}

impl<T, U: TryConvertFrom<T>> TryConvertInto<U> for T {
    type Error = U::Error;
    fn try_convert(self) -> Result<U, Self::Error> {
        U::try_convert_from(self)
    }
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg)
}

/// A response from the wire that cannot be represented (client side).
fn malformed(msg: impl Into<String>) -> Status {
    Status::internal(format!("malformed response: {}", msg.into()))
}

// ---------------------------------------------------------------------------
// KeyValue and Event
// ---------------------------------------------------------------------------

impl ConvertFrom<st::KeyValue> for mvccpb::KeyValue {
    fn convert_from(kv: st::KeyValue) -> Self {
        mvccpb::KeyValue {
            key: kv.key,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value,
            lease: kv.lease,
        }
    }
}

impl ConvertFrom<mvccpb::KeyValue> for st::KeyValue {
    fn convert_from(kv: mvccpb::KeyValue) -> Self {
        st::KeyValue {
            key: kv.key,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value,
            lease: kv.lease,
        }
    }
}

impl ConvertFrom<st::EventKind> for mvccpb::event::EventType {
    fn convert_from(kind: st::EventKind) -> Self {
        match kind {
            st::EventKind::Put => mvccpb::event::EventType::Put,
            st::EventKind::Delete => mvccpb::event::EventType::Delete,
        }
    }
}

impl ConvertFrom<mvccpb::event::EventType> for st::EventKind {
    fn convert_from(kind: mvccpb::event::EventType) -> Self {
        match kind {
            mvccpb::event::EventType::Put => st::EventKind::Put,
            mvccpb::event::EventType::Delete => st::EventKind::Delete,
        }
    }
}

impl ConvertFrom<st::Event> for mvccpb::Event {
    fn convert_from(ev: st::Event) -> Self {
        mvccpb::Event {
            r#type: mvccpb::event::EventType::convert_from(ev.kind) as i32,
            kv: Some(ev.kv.convert()),
            prev_kv: ev.prev_kv.map(ConvertInto::convert),
        }
    }
}

impl TryConvertFrom<mvccpb::Event> for st::Event {
    type Error = Status;

    fn try_convert_from(ev: mvccpb::Event) -> Result<Self, Status> {
        let kind = mvccpb::event::EventType::try_from(ev.r#type)
            .map_err(|_| malformed(format!("unknown event type {}", ev.r#type)))?;
        let kv = ev.kv.ok_or_else(|| malformed("event without kv"))?;
        Ok(st::Event {
            kind: kind.convert(),
            kv: kv.convert(),
            prev_kv: ev.prev_kv.map(ConvertInto::convert),
        })
    }
}

// ---------------------------------------------------------------------------
// Range
// ---------------------------------------------------------------------------

impl ConvertFrom<range_request::SortOrder> for st::SortOrder {
    fn convert_from(o: range_request::SortOrder) -> Self {
        match o {
            range_request::SortOrder::None => st::SortOrder::None,
            range_request::SortOrder::Ascend => st::SortOrder::Ascend,
            range_request::SortOrder::Descend => st::SortOrder::Descend,
        }
    }
}

impl ConvertFrom<st::SortOrder> for range_request::SortOrder {
    fn convert_from(o: st::SortOrder) -> Self {
        match o {
            st::SortOrder::None => range_request::SortOrder::None,
            st::SortOrder::Ascend => range_request::SortOrder::Ascend,
            st::SortOrder::Descend => range_request::SortOrder::Descend,
        }
    }
}

impl ConvertFrom<range_request::SortTarget> for st::SortTarget {
    fn convert_from(t: range_request::SortTarget) -> Self {
        match t {
            range_request::SortTarget::Key => st::SortTarget::Key,
            range_request::SortTarget::Version => st::SortTarget::Version,
            range_request::SortTarget::Create => st::SortTarget::Create,
            range_request::SortTarget::Mod => st::SortTarget::Mod,
            range_request::SortTarget::Value => st::SortTarget::Value,
        }
    }
}

impl ConvertFrom<st::SortTarget> for range_request::SortTarget {
    fn convert_from(t: st::SortTarget) -> Self {
        match t {
            st::SortTarget::Key => range_request::SortTarget::Key,
            st::SortTarget::Version => range_request::SortTarget::Version,
            st::SortTarget::Create => range_request::SortTarget::Create,
            st::SortTarget::Mod => range_request::SortTarget::Mod,
            st::SortTarget::Value => range_request::SortTarget::Value,
        }
    }
}

/// Rejects unknown sort options, as etcd's `checkRangeRequest` does.
impl TryConvertFrom<pb::RangeRequest> for st::RangeRequest {
    type Error = Status;

    fn try_convert_from(r: pb::RangeRequest) -> Result<Self, Status> {
        let sort_order = range_request::SortOrder::try_from(r.sort_order)
            .map_err(|_| invalid(etcd_errors::INVALID_SORT_OPTION))?;
        let sort_target = range_request::SortTarget::try_from(r.sort_target)
            .map_err(|_| invalid(etcd_errors::INVALID_SORT_OPTION))?;
        Ok(st::RangeRequest {
            key: r.key,
            range_end: r.range_end,
            limit: r.limit,
            revision: r.revision,
            sort_order: sort_order.convert(),
            sort_target: sort_target.convert(),
            serializable: r.serializable,
            keys_only: r.keys_only,
            count_only: r.count_only,
            min_mod_revision: r.min_mod_revision,
            max_mod_revision: r.max_mod_revision,
            min_create_revision: r.min_create_revision,
            max_create_revision: r.max_create_revision,
        })
    }
}

impl ConvertFrom<st::RangeRequest> for pb::RangeRequest {
    fn convert_from(r: st::RangeRequest) -> Self {
        pb::RangeRequest {
            key: r.key,
            range_end: r.range_end,
            limit: r.limit,
            revision: r.revision,
            sort_order: range_request::SortOrder::convert_from(r.sort_order) as i32,
            sort_target: range_request::SortTarget::convert_from(r.sort_target) as i32,
            serializable: r.serializable,
            keys_only: r.keys_only,
            count_only: r.count_only,
            min_mod_revision: r.min_mod_revision,
            max_mod_revision: r.max_mod_revision,
            min_create_revision: r.min_create_revision,
            max_create_revision: r.max_create_revision,
        }
    }
}

impl ConvertFrom<st::RangeResponse> for pb::RangeResponse {
    fn convert_from(r: st::RangeResponse) -> Self {
        pb::RangeResponse {
            header: None,
            kvs: r.kvs.into_iter().map(ConvertInto::convert).collect(),
            more: r.more,
            count: r.count,
        }
    }
}

impl ConvertFrom<pb::RangeResponse> for st::RangeResponse {
    fn convert_from(r: pb::RangeResponse) -> Self {
        st::RangeResponse {
            kvs: r.kvs.into_iter().map(ConvertInto::convert).collect(),
            more: r.more,
            count: r.count,
        }
    }
}

// ---------------------------------------------------------------------------
// Put
// ---------------------------------------------------------------------------

impl ConvertFrom<pb::PutRequest> for st::PutRequest {
    fn convert_from(r: pb::PutRequest) -> Self {
        st::PutRequest {
            key: r.key,
            value: r.value,
            lease: r.lease,
            prev_kv: r.prev_kv,
            ignore_value: r.ignore_value,
            ignore_lease: r.ignore_lease,
        }
    }
}

impl ConvertFrom<st::PutRequest> for pb::PutRequest {
    fn convert_from(r: st::PutRequest) -> Self {
        pb::PutRequest {
            key: r.key,
            value: r.value,
            lease: r.lease,
            prev_kv: r.prev_kv,
            ignore_value: r.ignore_value,
            ignore_lease: r.ignore_lease,
        }
    }
}

impl ConvertFrom<st::PutResponse> for pb::PutResponse {
    fn convert_from(r: st::PutResponse) -> Self {
        pb::PutResponse {
            header: None,
            prev_kv: r.prev_kv.map(ConvertInto::convert),
        }
    }
}

impl ConvertFrom<pb::PutResponse> for st::PutResponse {
    fn convert_from(r: pb::PutResponse) -> Self {
        st::PutResponse {
            prev_kv: r.prev_kv.map(ConvertInto::convert),
        }
    }
}

// ---------------------------------------------------------------------------
// DeleteRange
// ---------------------------------------------------------------------------

impl ConvertFrom<pb::DeleteRangeRequest> for st::DeleteRangeRequest {
    fn convert_from(r: pb::DeleteRangeRequest) -> Self {
        st::DeleteRangeRequest {
            key: r.key,
            range_end: r.range_end,
            prev_kv: r.prev_kv,
        }
    }
}

impl ConvertFrom<st::DeleteRangeRequest> for pb::DeleteRangeRequest {
    fn convert_from(r: st::DeleteRangeRequest) -> Self {
        pb::DeleteRangeRequest {
            key: r.key,
            range_end: r.range_end,
            prev_kv: r.prev_kv,
        }
    }
}

impl ConvertFrom<st::DeleteRangeResponse> for pb::DeleteRangeResponse {
    fn convert_from(r: st::DeleteRangeResponse) -> Self {
        pb::DeleteRangeResponse {
            header: None,
            deleted: r.deleted,
            prev_kvs: r.prev_kvs.into_iter().map(ConvertInto::convert).collect(),
        }
    }
}

impl ConvertFrom<pb::DeleteRangeResponse> for st::DeleteRangeResponse {
    fn convert_from(r: pb::DeleteRangeResponse) -> Self {
        st::DeleteRangeResponse {
            deleted: r.deleted,
            prev_kvs: r.prev_kvs.into_iter().map(ConvertInto::convert).collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// Compare
// ---------------------------------------------------------------------------

impl ConvertFrom<st::CompareResult> for compare::CompareResult {
    fn convert_from(r: st::CompareResult) -> Self {
        match r {
            st::CompareResult::Equal => compare::CompareResult::Equal,
            st::CompareResult::Greater => compare::CompareResult::Greater,
            st::CompareResult::Less => compare::CompareResult::Less,
            st::CompareResult::NotEqual => compare::CompareResult::NotEqual,
        }
    }
}

impl ConvertFrom<compare::CompareResult> for st::CompareResult {
    fn convert_from(r: compare::CompareResult) -> Self {
        match r {
            compare::CompareResult::Equal => st::CompareResult::Equal,
            compare::CompareResult::Greater => st::CompareResult::Greater,
            compare::CompareResult::Less => st::CompareResult::Less,
            compare::CompareResult::NotEqual => st::CompareResult::NotEqual,
        }
    }
}

/// The name of a `target_union` member, for error messages.
fn union_name(u: &compare::TargetUnion) -> &'static str {
    match u {
        compare::TargetUnion::Version(_) => "version",
        compare::TargetUnion::CreateRevision(_) => "create_revision",
        compare::TargetUnion::ModRevision(_) => "mod_revision",
        compare::TargetUnion::Value(_) => "value",
        compare::TargetUnion::Lease(_) => "lease",
    }
}

/// Pairs `target` with the value in `target_union`.
///
/// `target` decides what is compared, as in etcd. A missing `target_union`
/// means the zero value, as in etcd (which compares against 0 or empty bytes
/// then), so a client that leaves a zero operand unset works the same here.
/// A `target_union` that names a different field than `target` is rejected:
/// etcd would silently compare against zero, which no client means.
fn compare_target(
    target: i32,
    union: Option<compare::TargetUnion>,
) -> Result<st::CompareTarget, Status> {
    use compare::CompareTarget as T;
    use compare::TargetUnion as U;

    let target =
        T::try_from(target).map_err(|_| invalid(format!("invalid compare target {target}")))?;
    let mismatch = |u: &U| {
        invalid(format!(
            "compare target is {} but the compared value is given as {}",
            target.as_str_name(),
            union_name(u)
        ))
    };
    Ok(match (target, union) {
        (T::Version, None) => st::CompareTarget::Version(0),
        (T::Version, Some(U::Version(v))) => st::CompareTarget::Version(v),
        (T::Create, None) => st::CompareTarget::CreateRevision(0),
        (T::Create, Some(U::CreateRevision(v))) => st::CompareTarget::CreateRevision(v),
        (T::Mod, None) => st::CompareTarget::ModRevision(0),
        (T::Mod, Some(U::ModRevision(v))) => st::CompareTarget::ModRevision(v),
        (T::Value, None) => st::CompareTarget::Value(Vec::new()),
        (T::Value, Some(U::Value(v))) => st::CompareTarget::Value(v),
        (T::Lease, None) => st::CompareTarget::Lease(0),
        (T::Lease, Some(U::Lease(v))) => st::CompareTarget::Lease(v),
        (_, Some(u)) => return Err(mismatch(&u)),
    })
}

/// A compare needs a known result and a known target whose value matches it.
impl TryConvertFrom<pb::Compare> for st::Compare {
    type Error = Status;

    fn try_convert_from(c: pb::Compare) -> Result<Self, Status> {
        let result = compare::CompareResult::try_from(c.result)
            .map_err(|_| invalid(format!("invalid compare result {}", c.result)))?;
        let target = compare_target(c.target, c.target_union)?;
        Ok(st::Compare {
            result: result.convert(),
            target,
            key: c.key,
            range_end: c.range_end,
        })
    }
}

impl ConvertFrom<st::Compare> for pb::Compare {
    fn convert_from(c: st::Compare) -> Self {
        use compare::CompareTarget as T;
        use compare::TargetUnion as U;

        let (target, union) = match c.target {
            st::CompareTarget::Version(v) => (T::Version, U::Version(v)),
            st::CompareTarget::CreateRevision(v) => (T::Create, U::CreateRevision(v)),
            st::CompareTarget::ModRevision(v) => (T::Mod, U::ModRevision(v)),
            st::CompareTarget::Value(v) => (T::Value, U::Value(v)),
            st::CompareTarget::Lease(v) => (T::Lease, U::Lease(v)),
        };
        pb::Compare {
            result: compare::CompareResult::convert_from(c.result) as i32,
            target: target as i32,
            key: c.key,
            target_union: Some(union),
            range_end: c.range_end,
        }
    }
}

// ---------------------------------------------------------------------------
// Txn
// ---------------------------------------------------------------------------

/// Converts every compare and every op of both branches, nested txns
/// included (their depth is bounded by prost's decode recursion limit).
impl TryConvertFrom<pb::TxnRequest> for st::TxnRequest {
    type Error = Status;

    fn try_convert_from(r: pb::TxnRequest) -> Result<Self, Status> {
        Ok(st::TxnRequest {
            compare: r
                .compare
                .into_iter()
                .map(st::Compare::try_convert_from)
                .collect::<Result<_, _>>()?,
            success: r
                .success
                .into_iter()
                .map(st::RequestOp::try_convert_from)
                .collect::<Result<_, _>>()?,
            failure: r
                .failure
                .into_iter()
                .map(st::RequestOp::try_convert_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// A `RequestOp` with no request set is rejected with etcd's
/// `ErrGRPCKeyNotFound` (that is the error etcd returns for it).
impl TryConvertFrom<pb::RequestOp> for st::RequestOp {
    type Error = Status;

    fn try_convert_from(op: pb::RequestOp) -> Result<Self, Status> {
        Ok(match op.request {
            Some(request_op::Request::RequestRange(r)) => st::RequestOp::Range(r.try_convert()?),
            Some(request_op::Request::RequestPut(r)) => st::RequestOp::Put(r.convert()),
            Some(request_op::Request::RequestDeleteRange(r)) => {
                st::RequestOp::DeleteRange(r.convert())
            }
            Some(request_op::Request::RequestTxn(r)) => st::RequestOp::Txn(r.try_convert()?),
            None => return Err(invalid(etcd_errors::KEY_NOT_FOUND)),
        })
    }
}

impl ConvertFrom<st::RequestOp> for pb::RequestOp {
    fn convert_from(op: st::RequestOp) -> Self {
        let request = match op {
            st::RequestOp::Range(r) => request_op::Request::RequestRange(r.convert()),
            st::RequestOp::Put(r) => request_op::Request::RequestPut(r.convert()),
            st::RequestOp::DeleteRange(r) => request_op::Request::RequestDeleteRange(r.convert()),
            st::RequestOp::Txn(r) => request_op::Request::RequestTxn(r.convert()),
        };
        pb::RequestOp {
            request: Some(request),
        }
    }
}

impl ConvertFrom<st::TxnRequest> for pb::TxnRequest {
    fn convert_from(r: st::TxnRequest) -> Self {
        pb::TxnRequest {
            compare: r.compare.into_iter().map(ConvertInto::convert).collect(),
            success: r.success.into_iter().map(ConvertInto::convert).collect(),
            failure: r.failure.into_iter().map(ConvertInto::convert).collect(),
        }
    }
}

impl ConvertFrom<st::ResponseOp> for pb::ResponseOp {
    fn convert_from(op: st::ResponseOp) -> Self {
        let response = match op {
            st::ResponseOp::Range(r) => response_op::Response::ResponseRange(r.convert()),
            st::ResponseOp::Put(r) => response_op::Response::ResponsePut(r.convert()),
            st::ResponseOp::DeleteRange(r) => {
                response_op::Response::ResponseDeleteRange(r.convert())
            }
            st::ResponseOp::Txn(r) => response_op::Response::ResponseTxn(r.convert()),
        };
        pb::ResponseOp {
            response: Some(response),
        }
    }
}

impl TryConvertFrom<pb::ResponseOp> for st::ResponseOp {
    type Error = Status;

    fn try_convert_from(op: pb::ResponseOp) -> Result<Self, Status> {
        Ok(match op.response {
            Some(response_op::Response::ResponseRange(r)) => st::ResponseOp::Range(r.convert()),
            Some(response_op::Response::ResponsePut(r)) => st::ResponseOp::Put(r.convert()),
            Some(response_op::Response::ResponseDeleteRange(r)) => {
                st::ResponseOp::DeleteRange(r.convert())
            }
            Some(response_op::Response::ResponseTxn(r)) => st::ResponseOp::Txn(r.try_convert()?),
            None => return Err(malformed("txn response op without a response")),
        })
    }
}

impl ConvertFrom<st::TxnResponse> for pb::TxnResponse {
    fn convert_from(r: st::TxnResponse) -> Self {
        pb::TxnResponse {
            header: None,
            succeeded: r.succeeded,
            responses: r.responses.into_iter().map(ConvertInto::convert).collect(),
        }
    }
}

impl TryConvertFrom<pb::TxnResponse> for st::TxnResponse {
    type Error = Status;

    fn try_convert_from(r: pb::TxnResponse) -> Result<Self, Status> {
        Ok(st::TxnResponse {
            succeeded: r.succeeded,
            responses: r
                .responses
                .into_iter()
                .map(st::ResponseOp::try_convert_from)
                .collect::<Result<Vec<_>, _>>()?,
        })
    }
}

// ---------------------------------------------------------------------------
// Compaction
// ---------------------------------------------------------------------------

impl ConvertFrom<pb::CompactionRequest> for st::CompactionRequest {
    fn convert_from(r: pb::CompactionRequest) -> Self {
        st::CompactionRequest {
            revision: r.revision,
            physical: r.physical,
        }
    }
}

impl ConvertFrom<st::CompactionRequest> for pb::CompactionRequest {
    fn convert_from(r: st::CompactionRequest) -> Self {
        pb::CompactionRequest {
            revision: r.revision,
            physical: r.physical,
        }
    }
}

#[cfg(test)]
mod tests {
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
        let back = st::RangeRequest::try_convert_from(through_wire(
            pb::RangeRequest::convert_from(r.clone()),
        ));
        assert_eq!(back.ok(), Some(r));
    }

    #[test]
    fn put_and_delete_round_trip() {
        let p = put("k");
        let back =
            st::PutRequest::convert_from(through_wire(pb::PutRequest::convert_from(p.clone())));
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
            },
            st::Event {
                kind: st::EventKind::Delete,
                kv: st::KeyValue {
                    key: b"a".to_vec(),
                    mod_revision: 4,
                    ..Default::default()
                },
                prev_kv: None,
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
        let e = mvccpb::Event::convert_from(st::Event {
            kind: st::EventKind::Delete,
            kv: kv("a", 1),
            prev_kv: None,
        });
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
            (result, target, key(), bytes()).prop_map(|(result, target, key, range_end)| {
                st::Compare {
                    result,
                    target,
                    key,
                    range_end,
                }
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
            (any::<bool>(), proptest::collection::vec(op, 0..4)).prop_map(
                |(succeeded, responses)| st::TxnResponse {
                    succeeded,
                    responses,
                },
            )
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
                let ev = st::Event { kind, kv, prev_kv };
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
}
