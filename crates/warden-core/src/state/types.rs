//! Plain data types of the replicated state machine: requests, responses and
//! records, mirroring etcd's `etcdserverpb`/`mvccpb` messages field for field.
//!
//! These types are what goes into the Raft log (serialized with serde), so they
//! must never change shape incompatibly without a format version bump. They own
//! no behaviour; `mvcc.rs` and `machine.rs` give them meaning. The gRPC layer
//! converts between them and the generated protobuf types.

use serde::{Deserialize, Serialize};

use super::error::StateError;

/// A key's value at one revision, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// etcd `RangeRequest`. `range_end` empty = single key; `[0]` = every key >= `key`;
/// otherwise the half-open range `[key, range_end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub limit: i64,
    /// 0 = current revision.
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Value(Vec<u8>),
    Lease(i64),
}

/// etcd `Compare`: every key in `[key, range_end)` must satisfy it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    /// Decoding is depth-bounded (`nesting`), like every recursive field.
    #[serde(deserialize_with = "super::nesting::bounded")]
    Txn(TxnRequest),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    /// Decoding is depth-bounded (`nesting`), like every recursive field.
    #[serde(deserialize_with = "super::nesting::bounded")]
    Txn(TxnResponse),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionRequest {
    pub revision: i64,
    pub physical: bool,
}

/// One change to the key space, for watchers (K3): a put (`kv` is the new
/// value) or a delete (`kv` carries the key and the deleting revision as
/// `mod_revision`, other fields zero), plus the previous value if there was one.
///
/// The previous value may be left where it is: when it is in a scratch
/// file, `prev_kv` comes without its value and `prev_cold` says where it
/// is, and [`Event::prev_kv_with_value`] reads it for the watchers that
/// ask for it. A write's events are made on every member whether anyone
/// watches or not; reading each previous value back cost a `pread` per
/// write (docs/benchmarks.md, "Writes: less work per put on every member"). Equal
/// events compare their previous values' bytes, wherever they are.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
    /// Where `prev_kv`'s value is when it was not read (its `value` is
    /// empty then).
    pub prev_cold: Option<crate::storage::cold::ColdRef>,
}

impl Event {
    /// An event whose previous value (if any) is in `prev_kv`.
    pub fn new(kind: EventKind, kv: KeyValue, prev_kv: Option<KeyValue>) -> Self {
        Self {
            kind,
            kv,
            prev_kv,
            prev_cold: None,
        }
    }

    /// `prev_kv` with its value, read back if it was left in a scratch file.
    pub fn prev_kv_with_value(&self) -> Result<Option<KeyValue>, StateError> {
        match (&self.prev_kv, &self.prev_cold) {
            (Some(p), Some(cold)) => {
                let value = cold.read().map_err(StateError::history_read)?;
                Ok(Some(KeyValue { value, ..p.clone() }))
            }
            (p, _) => Ok(p.clone()),
        }
    }

    /// `events` with every previous value left in a scratch file read
    /// back (see [`Event::cold_prev_values`]).
    /// Reads the disk: call it off the async threads.
    pub fn read_prev_values(mut events: Vec<Event>) -> Result<Vec<Event>, StateError> {
        let values = Self::cold_prev_values(&events)?;
        for (e, value) in events.iter_mut().zip(values) {
            e.fill_prev_value(value);
        }
        Ok(events)
    }

    /// The previous values `events` left in scratch files, by position
    /// (`None` for an event that left none), the values near each other
    /// read with one read
    /// ([`ColdRef::read_many`](crate::storage::cold::ColdRef::read_many)).
    /// Reads the disk: call it off the async threads.
    pub fn cold_prev_values(events: &[Event]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let cold: Vec<(usize, &crate::storage::cold::ColdRef)> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.prev_kv.is_some())
            .filter_map(|(i, e)| e.prev_cold.as_ref().map(|c| (i, c)))
            .collect();
        let mut out = vec![None; events.len()];
        if cold.is_empty() {
            return Ok(out);
        }
        let refs: Vec<&crate::storage::cold::ColdRef> = cold.iter().map(|(_, c)| *c).collect();
        let values = crate::storage::cold::ColdRef::read_many(&refs);
        for ((i, _), value) in cold.iter().zip(values) {
            if let Some(slot) = out.get_mut(*i) {
                *slot = Some(value.map_err(StateError::history_read)?);
            }
        }
        Ok(out)
    }

    /// Puts `value` (one of [`Event::cold_prev_values`]) in `prev_kv`,
    /// which no longer points into a scratch file; `None` changes nothing.
    pub fn fill_prev_value(&mut self, value: Option<Vec<u8>>) {
        let Some(value) = value else {
            return;
        };
        if let Some(p) = self.prev_kv.as_mut() {
            p.value = value;
        }
        self.prev_cold = None;
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.kv == other.kv
            && match (self.prev_kv_with_value(), other.prev_kv_with_value()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
    }
}

impl Eq for Event {}

/// An event as it is encoded: the previous value always with its bytes.
#[derive(Serialize)]
struct EventOut<'a> {
    kind: EventKind,
    kv: &'a KeyValue,
    prev_kv: Option<KeyValue>,
}

#[derive(Deserialize)]
struct EventIn {
    kind: EventKind,
    kv: KeyValue,
    prev_kv: Option<KeyValue>,
}

/// Encoded as if `prev_cold` were not there: the previous value is read
/// back (an error if it cannot be).
impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let prev_kv = self
            .prev_kv_with_value()
            .map_err(<S::Error as serde::ser::Error>::custom)?;
        EventOut {
            kind: self.kind,
            kv: &self.kv,
            prev_kv,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let e = EventIn::deserialize(d)?;
        Ok(Event::new(e.kind, e.kv, e.prev_kv))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}
