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
        Ok(st::Event::new(
            kind.convert(),
            kv.convert(),
            ev.prev_kv.map(ConvertInto::convert),
        ))
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
mod tests;
