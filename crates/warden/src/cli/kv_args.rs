//! The flags of `put`, `get` and `del`, and their translation into etcd
//! requests. The commands and the request lines of `txn` share these
//! definitions, so `txn` accepts exactly what the commands accept; also the
//! value parsers other commands reuse (lease IDs in hex, raw argument bytes).
//!
//! Owns: argument grammar to protobuf request, nothing more. Must never talk
//! to the network, read input or print (the commands in [`super::kv`] do
//! that), or import from the command modules that use it: it sits below
//! both [`super::kv`] and [`super::txn_parse`], so the dependency arrows
//! point one way.

use std::ffi::{OsStr, OsString};

use anyhow::bail;
use clap::{Args, ValueEnum};

use warden_client::{DeleteOptions, GetOptions, KeyRange, PutOptions};
use warden_proto::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    DeleteRangeRequest, PutRequest, RangeRequest,
};

/// Flags of `put` (and of `put` lines in `txn`).
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct PutArgs {
    /// Key to write.
    pub key: OsString,
    /// Value to write; read from standard input when omitted (unless
    /// --ignore-value). Put `--` before a value that starts with `-`.
    pub value: Option<OsString>,
    /// Print the previous key-value.
    #[arg(long)]
    pub prev_kv: bool,
    /// Attach the key to this lease (hexadecimal ID, as `lease grant` prints).
    #[arg(long, value_parser = parse_lease_id)]
    pub lease: Option<i64>,
    /// Keep the current value (the key must exist).
    #[arg(long)]
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    #[arg(long)]
    pub ignore_lease: bool,
}

impl PutArgs {
    /// The request, with `value` used when no value was given on the
    /// command line. Fails when a value is missing or contradicts
    /// --ignore-value.
    pub fn to_request(&self, stdin_value: Option<Vec<u8>>) -> anyhow::Result<PutRequest> {
        let value = match (&self.value, self.ignore_value) {
            (Some(_), true) => bail!("value should not be given with --ignore-value"),
            (None, true) => Vec::new(),
            (Some(v), false) => os_bytes(v),
            (None, false) => match stdin_value {
                Some(v) => v,
                None => bail!("put needs a key and a value"),
            },
        };
        if self.ignore_lease && self.lease.is_some() {
            bail!("--lease and --ignore-lease cannot be used together");
        }
        let opts = PutOptions {
            lease: self.lease.unwrap_or(0),
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        };
        Ok(opts.into_request(os_bytes(&self.key), value))
    }
}

/// Sort field of `get --sort-by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum SortBy {
    /// By key.
    Key,
    /// By creation revision.
    Create,
    /// By last modification revision.
    Modify,
    /// By value.
    Value,
    /// By version.
    Version,
}

/// Sort order of `get --order`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum Order {
    /// Smallest first.
    Ascend,
    /// Largest first.
    Descend,
}

/// Read consistency of `get --consistency`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable: confirmed with the leader.
    L,
    /// Serializable: the contacted member's local state (may be stale).
    S,
}

/// Flags of `get` (and of `get` lines in `txn`).
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct GetArgs {
    /// Key to read (with --prefix: the prefix; with --from-key: the first key).
    pub key: OsString,
    /// Read every key in [KEY, RANGE_END).
    pub range_end: Option<OsString>,
    /// Read every key starting with KEY.
    #[arg(long, conflicts_with_all = ["from_key", "range_end"])]
    pub prefix: bool,
    /// Read every key greater than or equal to KEY.
    #[arg(long, conflicts_with = "range_end")]
    pub from_key: bool,
    /// At most this many keys (0 = no limit).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub limit: i64,
    /// Read at this revision (0 = latest).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub rev: i64,
    /// Print keys only.
    #[arg(long)]
    pub keys_only: bool,
    /// Print only the number of keys.
    #[arg(long)]
    pub count_only: bool,
    /// Print values only.
    #[arg(long)]
    pub print_value_only: bool,
    /// Linearizable (l) or serializable (s).
    #[arg(long, value_enum, ignore_case = true, default_value = "l")]
    pub consistency: Consistency,
    /// Sort by this field.
    #[arg(long, value_enum, ignore_case = true)]
    pub sort_by: Option<SortBy>,
    /// Sort order.
    #[arg(long, value_enum, ignore_case = true)]
    pub order: Option<Order>,
}

impl GetArgs {
    /// The request.
    pub fn to_request(&self) -> RangeRequest {
        let sort_target = match self.sort_by {
            None | Some(SortBy::Key) => SortTarget::Key,
            Some(SortBy::Create) => SortTarget::Create,
            Some(SortBy::Modify) => SortTarget::Mod,
            Some(SortBy::Value) => SortTarget::Value,
            Some(SortBy::Version) => SortTarget::Version,
        };
        let mut sort_order = match self.order {
            None => SortOrder::None,
            Some(Order::Ascend) => SortOrder::Ascend,
            Some(Order::Descend) => SortOrder::Descend,
        };
        // etcd's client: ascending by key is what the server does anyway.
        if sort_target == SortTarget::Key && sort_order == SortOrder::Ascend {
            sort_order = SortOrder::None;
        }
        GetOptions {
            range: key_range(self.prefix, self.from_key, self.range_end.as_deref()),
            limit: self.limit,
            revision: self.rev,
            serializable: self.consistency == Consistency::S,
            keys_only: self.keys_only,
            count_only: self.count_only,
            sort_target,
            sort_order,
        }
        .into_request(os_bytes(&self.key))
    }
}

/// Flags of `del` (and of `del` lines in `txn`).
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct DelArgs {
    /// Key to delete (with --prefix: the prefix; with --from-key: the first key).
    pub key: OsString,
    /// Delete every key in [KEY, RANGE_END).
    pub range_end: Option<OsString>,
    /// Delete every key starting with KEY.
    #[arg(long, conflicts_with_all = ["from_key", "range_end"])]
    pub prefix: bool,
    /// Delete every key greater than or equal to KEY.
    #[arg(long, conflicts_with = "range_end")]
    pub from_key: bool,
    /// Print the deleted key-values.
    #[arg(long)]
    pub prev_kv: bool,
}

impl DelArgs {
    /// The request.
    pub fn to_request(&self) -> DeleteRangeRequest {
        DeleteOptions {
            range: key_range(self.prefix, self.from_key, self.range_end.as_deref()),
            prev_kv: self.prev_kv,
        }
        .into_request(os_bytes(&self.key))
    }
}

/// A lease ID in hexadecimal (optional `0x`), as etcdctl takes it.
pub fn parse_lease_id(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    i64::from_str_radix(hex, 16).map_err(|_| format!("bad lease ID ({s}), expecting ID in Hex"))
}

fn key_range(prefix: bool, from_key: bool, range_end: Option<&OsStr>) -> KeyRange {
    KeyRange {
        prefix,
        from_key,
        range_end: range_end.map(os_bytes).unwrap_or_default(),
    }
}

/// The bytes of a command-line argument (raw on Unix, so keys need not be
/// UTF-8).
pub fn os_bytes(s: &OsStr) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        s.as_bytes().to_vec()
    }
    #[cfg(not(unix))]
    {
        s.to_string_lossy().into_owned().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    #[command(no_binary_name = true)]
    enum Cmd {
        Put(PutArgs),
        Get(GetArgs),
        Del(DelArgs),
    }

    fn parse(args: &[&str]) -> Result<Cmd, String> {
        Cmd::try_parse_from(args).map_err(|e| e.to_string())
    }

    #[test]
    fn lease_ids_are_hex() {
        assert_eq!(parse_lease_id("694d77aa9e38260f"), Ok(0x694d77aa9e38260f));
        assert_eq!(parse_lease_id("0x10"), Ok(16));
        assert!(parse_lease_id("xyz").is_err_and(|e| e.contains("expecting ID in Hex")));
        assert!(parse_lease_id("ffffffffffffffff").is_err());
    }

    #[test]
    fn put_requests() {
        let Ok(Cmd::Put(p)) = parse(&["put", "k", "v", "--prev-kv", "--lease", "1f"]) else {
            panic!("parse failed");
        };
        let req = p.to_request(None).ok();
        assert_eq!(
            req,
            Some(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                lease: 0x1f,
                prev_kv: true,
                ignore_value: false,
                ignore_lease: false
            })
        );
        let Ok(Cmd::Put(p)) = parse(&["put", "k"]) else {
            panic!("parse failed")
        };
        assert!(p.to_request(None).is_err());
        assert_eq!(
            p.to_request(Some(b"from stdin".to_vec()))
                .ok()
                .map(|r| r.value),
            Some(b"from stdin".to_vec())
        );
        let Ok(Cmd::Put(p)) = parse(&["put", "k", "v", "--ignore-value"]) else {
            panic!("parse failed")
        };
        assert!(p
            .to_request(None)
            .is_err_and(|e| e.to_string().contains("--ignore-value")));
        let Ok(Cmd::Put(p)) = parse(&["put", "k", "--ignore-value"]) else {
            panic!("parse failed")
        };
        assert!(p
            .to_request(None)
            .is_ok_and(|r| r.ignore_value && r.value.is_empty()));
        let Ok(Cmd::Put(p)) = parse(&["put", "--", "k", "-v"]) else {
            panic!("parse failed")
        };
        assert_eq!(
            p.to_request(None).ok().map(|r| r.value),
            Some(b"-v".to_vec())
        );
        assert!(parse(&["put", "k", "v", "--lease", "zz"]).is_err_and(|e| e.contains("Hex")));
    }

    #[test]
    fn get_requests() {
        let Ok(Cmd::Get(g)) = parse(&[
            "get",
            "a/",
            "--prefix",
            "--limit",
            "2",
            "--sort-by",
            "modify",
            "--order",
            "DESCEND",
            "--consistency",
            "s",
        ]) else {
            panic!("parse failed");
        };
        let r = g.to_request();
        assert_eq!(
            (r.key.as_slice(), r.range_end.as_slice()),
            (&b"a/"[..], &b"a0"[..])
        );
        assert_eq!(r.limit, 2);
        assert_eq!(r.sort_target, SortTarget::Mod as i32);
        assert_eq!(r.sort_order, SortOrder::Descend as i32);
        assert!(r.serializable);

        let Ok(Cmd::Get(g)) = parse(&["get", "a", "c", "--sort-by", "KEY", "--order", "ascend"])
        else {
            panic!("parse failed");
        };
        let r = g.to_request();
        assert_eq!(r.range_end, b"c");
        assert_eq!(r.sort_order, SortOrder::None as i32);

        let Ok(Cmd::Get(g)) = parse(&["get", "", "--from-key", "--keys-only", "--rev", "5"]) else {
            panic!("parse failed");
        };
        let r = g.to_request();
        assert_eq!(
            (
                r.key.as_slice(),
                r.range_end.as_slice(),
                r.revision,
                r.keys_only
            ),
            (&b"\0"[..], &b"\0"[..], 5, true)
        );

        assert!(parse(&["get", "a", "b", "--prefix"]).is_err());
        assert!(parse(&["get", "a", "--prefix", "--from-key"]).is_err());
        assert!(parse(&["get", "a", "--sort-by", "size"]).is_err());
        assert!(parse(&["get"]).is_err());
    }

    #[test]
    fn del_requests() {
        let Ok(Cmd::Del(d)) = parse(&["del", "", "--prefix", "--prev-kv"]) else {
            panic!("parse failed")
        };
        let r = d.to_request();
        assert_eq!(
            (r.key, r.range_end, r.prev_kv),
            (b"\0".to_vec(), b"\0".to_vec(), true)
        );
        let Ok(Cmd::Del(d)) = parse(&["del", "a", "b"]) else {
            panic!("parse failed")
        };
        assert_eq!(d.to_request().range_end, b"b");
    }
}
