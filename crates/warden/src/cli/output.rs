//! How the command-line client prints responses: etcdctl's "simple" text
//! format, etcd's JSON style (`--output json`) and etcdctl's boxed tables
//! (`--output table`, for status and member list; other commands fall back
//! to simple, as etcdctl does).
//!
//! JSON mirrors what `etcdctl -w json` prints (Go's `encoding/json` on the
//! gogoproto structs): snake_case names for KV messages, etcd's camelCase for
//! status and members, bytes as standard base64, zero fields omitted.
//! Everything here writes to a caller-supplied writer; nothing touches the
//! network or reads input.

use std::io::{self, Write};

use serde::{Serialize, Serializer};

use warden_proto::etcdserverpb::{
    response_op, CompactionResponse, DeleteRangeResponse, Member, MemberListResponse, PutResponse,
    RangeResponse, ResponseHeader, ResponseOp, StatusResponse, TxnResponse,
};
use warden_proto::mvccpb::KeyValue;

/// Output format chosen with `--output`/`-w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// etcdctl's plain text.
    Simple,
    /// etcd's JSON.
    Json,
    /// Boxed table (status, member list; otherwise like simple).
    Table,
}

/// Display flags of `get`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetView {
    /// Print only values (`--print-value-only`).
    pub value_only: bool,
    /// Print only the count (`--count-only`).
    pub count_only: bool,
}

/// One row of `status`: the endpoint asked and its answer.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointStatus {
    /// Endpoint as `host:port`.
    pub endpoint: String,
    /// The member's answer.
    pub status: StatusResponse,
}

// ---------------------------------------------------------------------------
// Printing entry points.

/// `put`: `OK`, then the previous key-value when one was returned.
pub fn put(w: &mut impl Write, f: Format, r: &PutResponse) -> io::Result<()> {
    match f {
        Format::Json => json_line(w, &put_json(r)),
        Format::Simple | Format::Table => {
            writeln!(w, "OK")?;
            if let Some(kv) = &r.prev_kv {
                write_kv(w, kv, false)?;
            }
            Ok(())
        }
    }
}

/// `get`: each key then its value on the next line (or the count).
pub fn get(w: &mut impl Write, f: Format, r: &RangeResponse, view: GetView) -> io::Result<()> {
    match f {
        Format::Json => json_line(w, &range_json(r)),
        Format::Simple | Format::Table => {
            if view.count_only {
                return writeln!(w, "{}", r.count);
            }
            for kv in &r.kvs {
                write_kv(w, kv, view.value_only)?;
            }
            Ok(())
        }
    }
}

/// `del`: the number deleted, then the deleted key-values when returned.
pub fn del(w: &mut impl Write, f: Format, r: &DeleteRangeResponse) -> io::Result<()> {
    match f {
        Format::Json => json_line(w, &delete_json(r)),
        Format::Simple | Format::Table => simple_del(w, r),
    }
}

/// `txn`: `SUCCESS` or `FAILURE`, then each response after a blank line.
pub fn txn(w: &mut impl Write, f: Format, r: &TxnResponse) -> io::Result<()> {
    match f {
        Format::Json => json_line(w, &txn_json(r)),
        Format::Simple | Format::Table => simple_txn(w, r),
    }
}

/// `compaction`: `compacted revision N`.
pub fn compaction(
    w: &mut impl Write,
    f: Format,
    revision: i64,
    r: &CompactionResponse,
) -> io::Result<()> {
    match f {
        Format::Json => json_line(
            w,
            &CompactionJson {
                header: header(r.header.as_ref()),
            },
        ),
        Format::Simple | Format::Table => writeln!(w, "compacted revision {revision}"),
    }
}

/// `status`: one row per endpoint with etcdctl's `endpoint status` columns.
pub fn endpoint_status(w: &mut impl Write, f: Format, rows: &[EndpointStatus]) -> io::Result<()> {
    let header = [
        "endpoint",
        "ID",
        "version",
        "db size",
        "is leader",
        "is learner",
        "raft term",
        "raft index",
        "raft applied index",
        "errors",
    ];
    let cells: Vec<Vec<String>> = rows.iter().map(status_row).collect();
    match f {
        Format::Json => {
            let all: Vec<_> = rows.iter().map(endpoint_status_json).collect();
            json_line(w, &all)
        }
        Format::Simple => simple_rows(w, &cells),
        Format::Table => table(w, &header, &cells),
    }
}

/// `member list`: one row per member with etcdctl's columns.
pub fn member_list(w: &mut impl Write, f: Format, r: &MemberListResponse) -> io::Result<()> {
    let header = [
        "ID",
        "Status",
        "Name",
        "Peer Addrs",
        "Client Addrs",
        "Is Learner",
    ];
    let cells: Vec<Vec<String>> = r.members.iter().map(member_row).collect();
    match f {
        Format::Json => json_line(w, &member_list_json(r)),
        Format::Simple => simple_rows(w, &cells),
        Format::Table => table(w, &header, &cells),
    }
}

// ---------------------------------------------------------------------------
// Simple format.

/// etcdctl's `printKV`: the key (unless value-only), then the value, each on
/// its own line, bytes written as they are.
fn write_kv(w: &mut impl Write, kv: &KeyValue, value_only: bool) -> io::Result<()> {
    if !value_only {
        w.write_all(&kv.key)?;
        w.write_all(b"\n")?;
    }
    w.write_all(&kv.value)?;
    w.write_all(b"\n")
}

fn simple_del(w: &mut impl Write, r: &DeleteRangeResponse) -> io::Result<()> {
    writeln!(w, "{}", r.deleted)?;
    for kv in &r.prev_kvs {
        write_kv(w, kv, false)?;
    }
    Ok(())
}

fn simple_txn(w: &mut impl Write, r: &TxnResponse) -> io::Result<()> {
    writeln!(w, "{}", if r.succeeded { "SUCCESS" } else { "FAILURE" })?;
    for op in &r.responses {
        writeln!(w)?;
        match &op.response {
            Some(response_op::Response::ResponsePut(p)) => put(w, Format::Simple, p)?,
            Some(response_op::Response::ResponseRange(g)) => {
                get(w, Format::Simple, g, GetView::default())?
            }
            Some(response_op::Response::ResponseDeleteRange(d)) => simple_del(w, d)?,
            Some(response_op::Response::ResponseTxn(t)) => simple_txn(w, t)?,
            None => writeln!(w, "(empty response)")?,
        }
    }
    Ok(())
}

fn status_row(s: &EndpointStatus) -> Vec<String> {
    let r = &s.status;
    let member_id = r.header.as_ref().map_or(0, |h| h.member_id);
    vec![
        s.endpoint.clone(),
        format!("{member_id:x}"),
        r.version.clone(),
        humanize_bytes(r.db_size),
        (r.leader != 0 && r.leader == member_id).to_string(),
        r.is_learner.to_string(),
        r.raft_term.to_string(),
        r.raft_index.to_string(),
        r.raft_applied_index.to_string(),
        r.errors.join(", "),
    ]
}

fn member_row(m: &Member) -> Vec<String> {
    vec![
        format!("{:x}", m.id),
        if m.name.is_empty() {
            "unstarted"
        } else {
            "started"
        }
        .to_string(),
        m.name.clone(),
        m.peer_urls.join(","),
        m.client_urls.join(","),
        m.is_learner.to_string(),
    ]
}

fn simple_rows(w: &mut impl Write, rows: &[Vec<String>]) -> io::Result<()> {
    for row in rows {
        writeln!(w, "{}", row.join(", "))?;
    }
    Ok(())
}

/// Bytes in SI units the way etcdctl shows them (go-humanize `Bytes`):
/// `9 B`, `1.2 kB`, `25 kB`, `3.4 MB`.
pub fn humanize_bytes(n: i64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let mut exp = 0usize;
    let mut scaled = n as f64;
    while scaled >= 1000.0 && exp + 1 < UNITS.len() {
        scaled /= 1000.0;
        exp += 1;
    }
    let rounded = (scaled * 10.0 + 0.5).floor() / 10.0;
    let unit = UNITS.get(exp).copied().unwrap_or("B");
    if rounded < 10.0 {
        format!("{rounded:.1} {unit}")
    } else {
        format!("{rounded:.0} {unit}")
    }
}

/// A boxed table like etcdctl's (tablewriter): upper-case centred headers,
/// right-aligned cells.
fn table(w: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let header: Vec<String> = header.iter().map(|h| h.to_uppercase()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let len = cell.chars().count();
            match widths.get_mut(i) {
                Some(wd) => *wd = (*wd).max(len),
                None => widths.push(len),
            }
        }
    }
    let rule: String = widths.iter().fold(String::from("+"), |mut s, wd| {
        s.push_str(&"-".repeat(wd + 2));
        s.push('+');
        s
    });
    writeln!(w, "{rule}")?;
    let mut line = String::from("|");
    for (i, wd) in widths.iter().enumerate() {
        let h = header.get(i).map_or("", String::as_str);
        let gap = wd.saturating_sub(h.chars().count());
        let left = gap / 2;
        line.push_str(&format!(
            " {}{h}{} |",
            " ".repeat(left),
            " ".repeat(gap - left)
        ));
    }
    writeln!(w, "{line}")?;
    writeln!(w, "{rule}")?;
    for row in rows {
        let mut line = String::from("|");
        for (i, wd) in widths.iter().enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            line.push_str(&format!(" {cell:>wd$} |"));
        }
        writeln!(w, "{line}")?;
    }
    writeln!(w, "{rule}")
}

// ---------------------------------------------------------------------------
// JSON: structs mirroring the Go structs etcdctl marshals, so field order and
// `omitempty` match (serde_json's own map would sort the keys).

fn json_line(w: &mut impl Write, v: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *w, v).map_err(io::Error::other)?;
    writeln!(w)
}

/// Standard base64 with padding (what Go's `encoding/json` uses for bytes).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |i: u32| char::from(ALPHABET[(i & 63) as usize]);
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b0 = chunk.first().copied().map_or(0, u32::from);
        let b1 = chunk.get(1).copied().map_or(0, u32::from);
        let b2 = chunk.get(2).copied().map_or(0, u32::from);
        let n = (b0 << 16) | (b1 << 8) | b2;
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        out.push(if chunk.len() > 1 { sym(n >> 6) } else { '=' });
        out.push(if chunk.len() > 2 { sym(n) } else { '=' });
    }
    out
}

fn ser_base64<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64(b))
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// `etcdserverpb.ResponseHeader`.
#[derive(Serialize, Debug)]
pub struct HeaderJson {
    #[serde(skip_serializing_if = "is_zero_u64")]
    cluster_id: u64,
    #[serde(skip_serializing_if = "is_zero_u64")]
    member_id: u64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    revision: i64,
    #[serde(skip_serializing_if = "is_zero_u64")]
    raft_term: u64,
}

impl From<&ResponseHeader> for HeaderJson {
    fn from(h: &ResponseHeader) -> Self {
        HeaderJson {
            cluster_id: h.cluster_id,
            member_id: h.member_id,
            revision: h.revision,
            raft_term: h.raft_term,
        }
    }
}

fn header(h: Option<&ResponseHeader>) -> Option<HeaderJson> {
    h.map(HeaderJson::from)
}

/// `mvccpb.KeyValue`, key and value in base64.
#[derive(Serialize, Debug)]
pub struct KvJson<'a> {
    #[serde(
        serialize_with = "ser_base64",
        skip_serializing_if = "<[u8]>::is_empty"
    )]
    key: &'a [u8],
    #[serde(skip_serializing_if = "is_zero_i64")]
    create_revision: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    mod_revision: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    version: i64,
    #[serde(
        serialize_with = "ser_base64",
        skip_serializing_if = "<[u8]>::is_empty"
    )]
    value: &'a [u8],
    #[serde(skip_serializing_if = "is_zero_i64")]
    lease: i64,
}

/// A key-value as etcd's JSON.
pub fn kv_json(kv: &KeyValue) -> KvJson<'_> {
    KvJson {
        key: &kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: &kv.value,
        lease: kv.lease,
    }
}

/// `RangeResponse`.
#[derive(Serialize, Debug)]
pub struct RangeJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    kvs: Vec<KvJson<'a>>,
    #[serde(skip_serializing_if = "is_false")]
    more: bool,
    #[serde(skip_serializing_if = "is_zero_i64")]
    count: i64,
}

/// A range response as etcd's JSON.
pub fn range_json(r: &RangeResponse) -> RangeJson<'_> {
    RangeJson {
        header: header(r.header.as_ref()),
        kvs: r.kvs.iter().map(kv_json).collect(),
        more: r.more,
        count: r.count,
    }
}

/// `PutResponse`.
#[derive(Serialize, Debug)]
pub struct PutJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_kv: Option<KvJson<'a>>,
}

/// A put response as etcd's JSON.
pub fn put_json(r: &PutResponse) -> PutJson<'_> {
    PutJson {
        header: header(r.header.as_ref()),
        prev_kv: r.prev_kv.as_ref().map(kv_json),
    }
}

/// `DeleteRangeResponse`.
#[derive(Serialize, Debug)]
pub struct DeleteJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderJson>,
    #[serde(skip_serializing_if = "is_zero_i64")]
    deleted: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    prev_kvs: Vec<KvJson<'a>>,
}

/// A delete response as etcd's JSON.
pub fn delete_json(r: &DeleteRangeResponse) -> DeleteJson<'_> {
    DeleteJson {
        header: header(r.header.as_ref()),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.iter().map(kv_json).collect(),
    }
}

/// `TxnResponse`.
#[derive(Serialize, Debug)]
pub struct TxnJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderJson>,
    #[serde(skip_serializing_if = "is_false")]
    succeeded: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    responses: Vec<ResponseOpJson<'a>>,
}

/// `ResponseOp` the way Go encodes the oneof: `{"Response":{"response_put":{…}}}`.
#[derive(Serialize, Debug)]
pub struct ResponseOpJson<'a> {
    #[serde(rename = "Response", skip_serializing_if = "Option::is_none")]
    response: Option<OneOfJson<'a>>,
}

/// The members of `ResponseOp`'s oneof.
#[derive(Serialize, Debug)]
pub enum OneOfJson<'a> {
    /// A range.
    #[serde(rename = "response_range")]
    Range(RangeJson<'a>),
    /// A put.
    #[serde(rename = "response_put")]
    Put(PutJson<'a>),
    /// A delete.
    #[serde(rename = "response_delete_range")]
    Delete(DeleteJson<'a>),
    /// A nested transaction.
    #[serde(rename = "response_txn")]
    Txn(TxnJson<'a>),
}

/// A transaction response as etcd's JSON.
pub fn txn_json(r: &TxnResponse) -> TxnJson<'_> {
    TxnJson {
        header: header(r.header.as_ref()),
        succeeded: r.succeeded,
        responses: r.responses.iter().map(response_op_json).collect(),
    }
}

fn response_op_json(op: &ResponseOp) -> ResponseOpJson<'_> {
    let response = op.response.as_ref().map(|r| match r {
        response_op::Response::ResponseRange(r) => OneOfJson::Range(range_json(r)),
        response_op::Response::ResponsePut(r) => OneOfJson::Put(put_json(r)),
        response_op::Response::ResponseDeleteRange(r) => OneOfJson::Delete(delete_json(r)),
        response_op::Response::ResponseTxn(r) => OneOfJson::Txn(txn_json(r)),
    });
    ResponseOpJson { response }
}

/// `CompactionResponse`.
#[derive(Serialize, Debug)]
pub struct CompactionJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderJson>,
}

/// One `status` entry as etcdctl prints it: `{"Endpoint":…,"Status":{…}}`.
#[derive(Serialize, Debug)]
pub struct EndpointStatusJson<'a> {
    #[serde(rename = "Endpoint")]
    endpoint: &'a str,
    #[serde(rename = "Status")]
    status: StatusJson<'a>,
}

/// `StatusResponse` with etcd's camelCase JSON names.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct StatusJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderJson>,
    #[serde(skip_serializing_if = "str::is_empty")]
    version: &'a str,
    #[serde(skip_serializing_if = "is_zero_i64")]
    db_size: i64,
    #[serde(skip_serializing_if = "is_zero_u64")]
    leader: u64,
    #[serde(skip_serializing_if = "is_zero_u64")]
    raft_index: u64,
    #[serde(skip_serializing_if = "is_zero_u64")]
    raft_term: u64,
    #[serde(skip_serializing_if = "is_zero_u64")]
    raft_applied_index: u64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    errors: &'a [String],
    #[serde(skip_serializing_if = "is_zero_i64")]
    db_size_in_use: i64,
    #[serde(skip_serializing_if = "is_false")]
    is_learner: bool,
}

/// One `status` entry as etcd's JSON.
pub fn endpoint_status_json(s: &EndpointStatus) -> EndpointStatusJson<'_> {
    let r = &s.status;
    EndpointStatusJson {
        endpoint: &s.endpoint,
        status: StatusJson {
            header: header(r.header.as_ref()),
            version: &r.version,
            db_size: r.db_size,
            leader: r.leader,
            raft_index: r.raft_index,
            raft_term: r.raft_term,
            raft_applied_index: r.raft_applied_index,
            errors: &r.errors,
            db_size_in_use: r.db_size_in_use,
            is_learner: r.is_learner,
        },
    }
}

/// `MemberListResponse`.
#[derive(Serialize, Debug)]
pub struct MemberListJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    members: Vec<MemberJson<'a>>,
}

/// `Member` with etcd's JSON names (`ID`, `name`, `peerURLs`, `clientURLs`,
/// `isLearner`).
#[derive(Serialize, Debug)]
pub struct MemberJson<'a> {
    #[serde(rename = "ID", skip_serializing_if = "is_zero_u64")]
    id: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(rename = "peerURLs", skip_serializing_if = "<[String]>::is_empty")]
    peer_urls: &'a [String],
    #[serde(rename = "clientURLs", skip_serializing_if = "<[String]>::is_empty")]
    client_urls: &'a [String],
    #[serde(rename = "isLearner", skip_serializing_if = "is_false")]
    is_learner: bool,
}

/// A member list as etcd's JSON.
pub fn member_list_json(r: &MemberListResponse) -> MemberListJson<'_> {
    MemberListJson {
        header: header(r.header.as_ref()),
        members: r
            .members
            .iter()
            .map(|m| MemberJson {
                id: m.id,
                name: &m.name,
                peer_urls: &m.peer_urls,
                client_urls: &m.client_urls,
                is_learner: m.is_learner,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use warden_proto::etcdserverpb::response_op::Response;

    /// Compact JSON text, in the structs' field order.
    fn js(v: &impl Serialize) -> String {
        serde_json::to_string(v).unwrap_or_default()
    }

    /// A JSON value, for looking fields up.
    fn jv(v: &impl Serialize) -> Value {
        serde_json::to_value(v).unwrap_or_default()
    }

    fn header() -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: 14841639068965178418,
            member_id: 10276657743932975437,
            revision: 2,
            raft_term: 2,
        })
    }

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: v.into(),
            lease: 0,
        }
    }

    fn render(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut buf = Vec::new();
        assert!(f(&mut buf).is_ok());
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (raw, enc) in cases {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn get_json_like_etcdctl() {
        let r = RangeResponse {
            header: header(),
            kvs: vec![kv("foo", "bar")],
            more: false,
            count: 1,
        };
        let out = render(|w| get(w, Format::Json, &r, GetView::default()));
        assert_eq!(
            out,
            "{\"header\":{\"cluster_id\":14841639068965178418,\"member_id\":10276657743932975437,\
             \"revision\":2,\"raft_term\":2},\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":2,\
             \"mod_revision\":2,\"version\":1,\"value\":\"YmFy\"}],\"count\":1}\n"
        );
    }

    #[test]
    fn json_omits_zero_fields() {
        let r = RangeResponse {
            header: Some(ResponseHeader::default()),
            ..Default::default()
        };
        assert_eq!(js(&range_json(&r)), "{\"header\":{}}");
        let k = KeyValue {
            key: b"k".to_vec(),
            lease: 0x694d,
            ..Default::default()
        };
        assert_eq!(js(&kv_json(&k)), "{\"key\":\"aw==\",\"lease\":26957}");
        assert_eq!(js(&put_json(&PutResponse::default())), "{}");
    }

    #[test]
    fn simple_get_put_del() {
        let r = RangeResponse {
            kvs: vec![kv("a", "1"), kv("b", "")],
            count: 2,
            ..Default::default()
        };
        assert_eq!(
            render(|w| get(w, Format::Simple, &r, GetView::default())),
            "a\n1\nb\n\n"
        );
        let vo = GetView {
            value_only: true,
            ..Default::default()
        };
        assert_eq!(render(|w| get(w, Format::Simple, &r, vo)), "1\n\n");
        let co = GetView {
            count_only: true,
            ..Default::default()
        };
        assert_eq!(render(|w| get(w, Format::Table, &r, co)), "2\n");

        let p = PutResponse {
            header: header(),
            prev_kv: Some(kv("a", "0")),
        };
        assert_eq!(render(|w| put(w, Format::Simple, &p)), "OK\na\n0\n");
        assert_eq!(
            render(|w| put(w, Format::Simple, &PutResponse::default())),
            "OK\n"
        );

        let d = DeleteRangeResponse {
            header: header(),
            deleted: 1,
            prev_kvs: vec![kv("a", "1")],
        };
        assert_eq!(render(|w| del(w, Format::Simple, &d)), "1\na\n1\n");
        let dj = render(|w| del(w, Format::Json, &d));
        assert!(
            dj.contains("\"deleted\":1,\"prev_kvs\":[{\"key\":\"YQ==\""),
            "{dj}"
        );
    }

    #[test]
    fn non_utf8_values_are_written_raw() {
        let r = RangeResponse {
            kvs: vec![KeyValue {
                key: b"k".to_vec(),
                value: vec![0xff, 0x00, b'x'],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut buf = Vec::new();
        assert!(get(&mut buf, Format::Simple, &r, GetView::default()).is_ok());
        assert_eq!(buf, b"k\n\xff\x00x\n");
    }

    #[test]
    fn txn_simple_and_json() {
        let r = TxnResponse {
            header: header(),
            succeeded: true,
            responses: vec![
                ResponseOp {
                    response: Some(Response::ResponsePut(PutResponse {
                        header: header(),
                        prev_kv: None,
                    })),
                },
                ResponseOp {
                    response: Some(Response::ResponseRange(RangeResponse {
                        header: header(),
                        kvs: vec![kv("k", "v")],
                        more: false,
                        count: 1,
                    })),
                },
                ResponseOp {
                    response: Some(Response::ResponseDeleteRange(DeleteRangeResponse {
                        header: header(),
                        deleted: 0,
                        prev_kvs: vec![],
                    })),
                },
            ],
        };
        assert_eq!(
            render(|w| txn(w, Format::Simple, &r)),
            "SUCCESS\n\nOK\n\nk\nv\n\n0\n"
        );
        let failed = TxnResponse {
            succeeded: false,
            ..Default::default()
        };
        assert_eq!(render(|w| txn(w, Format::Simple, &failed)), "FAILURE\n");

        let j = jv(&txn_json(&r));
        assert_eq!(j["succeeded"], Value::Bool(true));
        assert_eq!(
            j["responses"][0]["Response"]["response_put"]["header"]["revision"],
            2
        );
        assert_eq!(
            j["responses"][1]["Response"]["response_range"]["kvs"][0]["value"],
            "dg=="
        );
        assert!(j["responses"][2]["Response"]["response_delete_range"]
            .get("deleted")
            .is_none());
        assert_eq!(js(&txn_json(&failed)), "{}");
    }

    #[test]
    fn compaction_text() {
        let r = CompactionResponse { header: header() };
        assert_eq!(
            render(|w| compaction(w, Format::Simple, 7, &r)),
            "compacted revision 7\n"
        );
        assert!(render(|w| compaction(w, Format::Json, 7, &r)).starts_with("{\"header\":{"));
    }

    #[test]
    fn humanized_sizes() {
        assert_eq!(humanize_bytes(0), "0 B");
        assert_eq!(humanize_bytes(9), "9 B");
        assert_eq!(humanize_bytes(999), "999 B");
        assert_eq!(humanize_bytes(1234), "1.2 kB");
        assert_eq!(humanize_bytes(20480), "20 kB");
        assert_eq!(humanize_bytes(25600), "26 kB");
        assert_eq!(humanize_bytes(3_400_000), "3.4 MB");
        assert_eq!(humanize_bytes(-5), "-5 B");
    }

    fn status_fixture() -> Vec<EndpointStatus> {
        vec![EndpointStatus {
            endpoint: "127.0.0.1:2379".into(),
            status: StatusResponse {
                header: Some(ResponseHeader {
                    member_id: 0x8e9e05c52164694d,
                    ..Default::default()
                }),
                version: "3.5.0".into(),
                db_size: 20480,
                leader: 0x8e9e05c52164694d,
                raft_index: 4,
                raft_term: 2,
                raft_applied_index: 4,
                ..Default::default()
            },
        }]
    }

    #[test]
    fn status_simple_json_table() {
        let rows = status_fixture();
        assert_eq!(
            render(|w| endpoint_status(w, Format::Simple, &rows)),
            "127.0.0.1:2379, 8e9e05c52164694d, 3.5.0, 20 kB, true, false, 2, 4, 4, \n"
        );
        let j = render(|w| endpoint_status(w, Format::Json, &rows));
        assert!(
            j.starts_with(
                "[{\"Endpoint\":\"127.0.0.1:2379\",\"Status\":{\"header\":{\"member_id\":"
            ),
            "{j}"
        );
        assert!(j.contains("\"dbSize\":20480"), "{j}");
        let t = render(|w| endpoint_status(w, Format::Table, &rows));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(
            lines[1].starts_with("|    ENDPOINT    |        ID        | VERSION |"),
            "{t}"
        );
        assert!(
            lines[3].starts_with("| 127.0.0.1:2379 | 8e9e05c52164694d |   3.5.0 |"),
            "{t}"
        );
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() == lines[0].chars().count()),
            "{t}"
        );
    }

    #[test]
    fn member_list_simple_json() {
        let r = MemberListResponse {
            header: header(),
            members: vec![
                Member {
                    id: 0x8e9e05c52164694d,
                    name: "n1".into(),
                    peer_urls: vec!["http://127.0.0.1:2380".into()],
                    client_urls: vec![
                        "http://127.0.0.1:2379".into(),
                        "http://10.0.0.1:2379".into(),
                    ],
                    is_learner: false,
                },
                Member {
                    id: 1,
                    name: String::new(),
                    peer_urls: vec!["http://x:2380".into()],
                    client_urls: vec![],
                    is_learner: true,
                },
            ],
        };
        assert_eq!(
            render(|w| member_list(w, Format::Simple, &r)),
            "8e9e05c52164694d, started, n1, http://127.0.0.1:2380, http://127.0.0.1:2379,http://10.0.0.1:2379, false\n\
             1, unstarted, , http://x:2380, , true\n"
        );
        let j = jv(&member_list_json(&r));
        assert_eq!(j["members"][0]["ID"], 0x8e9e05c52164694d_u64);
        assert_eq!(j["members"][0]["peerURLs"][0], "http://127.0.0.1:2380");
        assert_eq!(j["members"][1]["isLearner"], true);
        assert!(j["members"][1].get("name").is_none());
        let t = render(|w| member_list(w, Format::Table, &r));
        assert!(t.contains("| IS LEARNER |"), "{t}");
    }
}
