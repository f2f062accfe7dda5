//! Per-call options of the convenience KV methods ([`GetOptions`],
//! [`PutOptions`], [`DeleteOptions`]) and their translation into the etcd
//! request messages. Pure data; no IO.

use warden_proto::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    DeleteRangeRequest, PutRequest, RangeRequest,
};

use super::keys;

/// Which keys a request covers besides `key` itself. When several are set,
/// `prefix` wins over `from_key`, which wins over `range_end`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRange {
    /// Every key starting with `key`.
    pub prefix: bool,
    /// Every key `>= key`.
    pub from_key: bool,
    /// Every key in `[key, range_end)` when non-empty.
    pub range_end: Vec<u8>,
}

impl KeyRange {
    /// `(key, range_end)` as sent on the wire.
    pub fn resolve(&self, key: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        if self.prefix {
            keys::prefix_range(&key)
        } else if self.from_key {
            keys::from_key_range(&key)
        } else {
            (key, self.range_end.clone())
        }
    }
}

/// Options of [`super::Client::get`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// Keys covered besides the key itself.
    pub range: KeyRange,
    /// At most this many keys (0 = no limit).
    pub limit: i64,
    /// Read at this revision (0 = latest).
    pub revision: i64,
    /// Serve from the contacted member's local state (may be stale); such
    /// reads are spread across endpoints.
    pub serializable: bool,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Sort field.
    pub sort_target: SortTarget,
    /// Sort order (`None` = by key, ascending, unless a target is set).
    pub sort_order: SortOrder,
}

impl GetOptions {
    /// Every key starting with the key given to `get`.
    pub fn prefix() -> GetOptions {
        GetOptions {
            range: KeyRange {
                prefix: true,
                ..KeyRange::default()
            },
            ..GetOptions::default()
        }
    }

    /// The `RangeRequest` for `key` with these options.
    pub fn into_request(self, key: Vec<u8>) -> RangeRequest {
        let (key, range_end) = self.range.resolve(key);
        RangeRequest {
            key,
            range_end,
            limit: self.limit,
            revision: self.revision,
            sort_order: self.sort_order as i32,
            sort_target: self.sort_target as i32,
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            ..Default::default()
        }
    }
}

/// Options of [`super::Client::put`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Attach the key to this lease (0 = none).
    pub lease: i64,
    /// Return the previous key-value.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

impl PutOptions {
    /// The `PutRequest` for `key`/`value` with these options.
    pub fn into_request(self, key: Vec<u8>, value: Vec<u8>) -> PutRequest {
        PutRequest {
            key,
            value,
            lease: self.lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        }
    }
}

/// Options of [`super::Client::delete`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Keys covered besides the key itself.
    pub range: KeyRange,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

impl DeleteOptions {
    /// The `DeleteRangeRequest` for `key` with these options.
    pub fn into_request(self, key: Vec<u8>) -> DeleteRangeRequest {
        let (key, range_end) = self.range.resolve(key);
        DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.prev_kv,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_prefix_and_sort() {
        let req = GetOptions {
            range: KeyRange {
                prefix: true,
                ..Default::default()
            },
            limit: 3,
            sort_target: SortTarget::Mod,
            sort_order: SortOrder::Descend,
            serializable: true,
            ..Default::default()
        }
        .into_request(b"a/".to_vec());
        assert_eq!(req.key, b"a/");
        assert_eq!(req.range_end, b"a0");
        assert_eq!(req.limit, 3);
        assert_eq!(req.sort_target, SortTarget::Mod as i32);
        assert_eq!(req.sort_order, SortOrder::Descend as i32);
        assert!(req.serializable);
    }

    #[test]
    fn range_precedence() {
        let r = KeyRange {
            prefix: false,
            from_key: true,
            range_end: b"zz".to_vec(),
        };
        assert_eq!(r.resolve(b"k".to_vec()), (b"k".to_vec(), b"\0".to_vec()));
        let r = KeyRange {
            range_end: b"zz".to_vec(),
            ..Default::default()
        };
        assert_eq!(r.resolve(b"k".to_vec()), (b"k".to_vec(), b"zz".to_vec()));
        assert_eq!(
            KeyRange::default().resolve(b"k".to_vec()),
            (b"k".to_vec(), vec![])
        );
    }

    #[test]
    fn put_and_delete() {
        let p = PutOptions {
            lease: 7,
            prev_kv: true,
            ..Default::default()
        }
        .into_request(b"k".to_vec(), b"v".to_vec());
        assert_eq!((p.lease, p.prev_kv, p.ignore_value), (7, true, false));
        let d = DeleteOptions {
            range: KeyRange {
                prefix: true,
                ..Default::default()
            },
            prev_kv: true,
        }
        .into_request(vec![]);
        assert_eq!(
            (d.key, d.range_end, d.prev_kv),
            (b"\0".to_vec(), b"\0".to_vec(), true)
        );
    }
}
