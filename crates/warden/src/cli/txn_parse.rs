//! Parser of etcdctl's textual transaction syntax, as read by `warden txn`:
//!
//! ```text
//! mod("key1") > "0"
//! value("key2") = "x"
//!
//! put key1 "overwrote-key1"
//! get key2 --prefix
//!
//! put key1 "created-key1"
//! del key2
//! ```
//!
//! Three sections separated by blank lines: compares, success requests,
//! failure requests (a missing trailing section is empty). A compare is
//! `target("key") op "value"` with target `version`/`ver`, `create`/`c`,
//! `mod`/`m`, `value`/`val` or `lease` (the lease ID in hex, like `--lease`)
//! and op `=`, `!=`, `>` or `<`. Strings use Go's quoting (`"a\tb"`, `"\x00"`,
//! `"\u00e9"`), single quotes (literal) or backquotes (raw). A request line is
//! `put`, `get` or `del` with the same arguments and flags as the commands.
//!
//! Pure text to protobuf; reads nothing itself and never panics on input.
//! Request lines reuse the flag definitions of [`super::kv_args`]; this
//! module must never import from [`super::kv`], which uses it (the arrows
//! point one way: `kv` → `txn_parse` → `kv_args`).

use std::ffi::OsString;

use clap::Parser;

use warden_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    Compare, RequestOp, TxnRequest,
};

use super::kv_args::{parse_lease_id, DelArgs, GetArgs, PutArgs};

/// A parse error, naming the input line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("txn line {line}: {message}")]
pub struct TxnParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Which part of the transaction the next line belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// Compares.
    Compares,
    /// Requests run when every compare holds.
    Success,
    /// Requests run otherwise.
    Failure,
    /// All three sections were read.
    Done,
}

/// Builds a transaction from lines fed one at a time (so an interactive
/// reader can prompt per section).
#[derive(Debug, Clone)]
pub struct TxnBuilder {
    section: Section,
    line: usize,
    txn: TxnRequest,
}

impl Default for TxnBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TxnBuilder {
    /// An empty transaction, expecting compares.
    pub fn new() -> Self {
        TxnBuilder {
            section: Section::Compares,
            line: 0,
            txn: TxnRequest::default(),
        }
    }

    /// The section the next line belongs to.
    pub fn section(&self) -> Section {
        self.section
    }

    /// Adds one input line (without or with its line ending).
    pub fn push_line(&mut self, raw: &str) -> Result<(), TxnParseError> {
        self.line += 1;
        let line = raw.trim();
        let fail = |message: String| TxnParseError {
            line: self.line,
            message,
        };
        if line.is_empty() {
            self.section = match self.section {
                Section::Compares => Section::Success,
                Section::Success => Section::Failure,
                Section::Failure | Section::Done => Section::Done,
            };
            return Ok(());
        }
        match self.section {
            Section::Compares => self.txn.compare.push(parse_compare(line).map_err(fail)?),
            Section::Success => self.txn.success.push(parse_request(line).map_err(fail)?),
            Section::Failure => self.txn.failure.push(parse_request(line).map_err(fail)?),
            Section::Done => {
                return Err(fail(format!(
                    "unexpected {line:?} after the failure requests (a transaction is three \
                     sections separated by blank lines: compares, success requests, failure requests)"
                )))
            }
        }
        Ok(())
    }

    /// The transaction read so far.
    pub fn finish(self) -> TxnRequest {
        self.txn
    }
}

/// Parses a whole transaction text.
pub fn parse_txn(input: &str) -> Result<TxnRequest, TxnParseError> {
    let mut b = TxnBuilder::new();
    for line in input.lines() {
        b.push_line(line)?;
    }
    Ok(b.finish())
}

/// Parses one compare line, e.g. `mod("k") > "5"`.
pub fn parse_compare(line: &str) -> Result<Compare, String> {
    let err = |why: &str| format!("malformed comparison {line:?}: {why}");
    let Some((target, rest)) = line.split_once('(') else {
        return Err(err(
            "expected target(\"key\") op \"value\", e.g. value(\"k\") = \"v\"",
        ));
    };
    let target = target.trim();
    // The key: quoted, or bare up to ')'.
    let rest = rest.trim_start();
    let (key, rest) = if rest.starts_with(['"', '\'', '`']) {
        parse_quoted(rest).map_err(|e| err(&e))?
    } else {
        match rest.split_once(')') {
            Some((k, _)) => (k.trim().as_bytes().to_vec(), &rest[k.len()..]),
            None => return Err(err("missing ')' after the key")),
        }
    };
    let Some(rest) = rest.trim_start().strip_prefix(')') else {
        return Err(err("expected ')' after the key"));
    };
    let rest = rest.trim_start();
    let (result, rest) = if let Some(r) = rest.strip_prefix("!=") {
        (CompareResult::NotEqual, r)
    } else if let Some(r) = rest.strip_prefix("==") {
        (CompareResult::Equal, r)
    } else if let Some(r) = rest.strip_prefix('=') {
        (CompareResult::Equal, r)
    } else if let Some(r) = rest.strip_prefix('>') {
        (CompareResult::Greater, r)
    } else if let Some(r) = rest.strip_prefix('<') {
        (CompareResult::Less, r)
    } else {
        let op = rest.split_whitespace().next().unwrap_or("");
        return Err(err(&format!(
            "unknown operator {op:?} (expected =, !=, > or <)"
        )));
    };
    let rest = rest.trim_start();
    let (value, rest) = if rest.starts_with(['"', '\'', '`']) {
        parse_quoted(rest).map_err(|e| err(&e))?
    } else {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        if end == 0 {
            return Err(err("missing value after the operator"));
        }
        (rest.as_bytes()[..end].to_vec(), &rest[end..])
    };
    if !rest.trim().is_empty() {
        return Err(err(&format!(
            "unexpected {:?} after the value",
            rest.trim()
        )));
    }
    let int = |what: &str| -> Result<i64, String> {
        let s = String::from_utf8_lossy(&value);
        s.trim()
            .parse::<i64>()
            .map_err(|_| err(&format!("{what} must be an integer, got {s:?}")))
    };
    let (target, union) = match target {
        "ver" | "version" => (
            CompareTarget::Version,
            TargetUnion::Version(int("version")?),
        ),
        "c" | "create" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(int("create revision")?),
        ),
        "m" | "mod" => (
            CompareTarget::Mod,
            TargetUnion::ModRevision(int("mod revision")?),
        ),
        "val" | "value" => (CompareTarget::Value, TargetUnion::Value(value.clone())),
        "lease" => {
            let s = String::from_utf8_lossy(&value);
            let id = parse_lease_id(&s).map_err(|e| err(&e))?;
            (CompareTarget::Lease, TargetUnion::Lease(id))
        }
        other => {
            return Err(err(&format!(
                "unknown target {other:?} (expected version, create, mod, value or lease)"
            )))
        }
    };
    Ok(Compare {
        result: result as i32,
        target: target as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(union),
    })
}

/// The request lines' grammar: the `put`/`get`/`del` commands' own flags.
#[derive(Parser, Debug)]
#[command(no_binary_name = true, disable_help_subcommand = true)]
enum RequestLine {
    Put(PutArgs),
    Get(GetArgs),
    Del(DelArgs),
}

/// Parses one request line, e.g. `put k "v" --prev-kv`.
pub fn parse_request(line: &str) -> Result<RequestOp, String> {
    let args = split_args(line)?;
    let Some(first) = args.first() else {
        return Err("empty request".to_string());
    };
    if !matches!(first.as_slice(), b"put" | b"get" | b"del") {
        return Err(format!(
            "unknown request {:?} in {line:?} (expected put, get or del)",
            String::from_utf8_lossy(first)
        ));
    }
    let parsed = RequestLine::try_parse_from(args.into_iter().map(bytes_os))
        .map_err(|e| format!("bad request {line:?}: {}", clap_message(&e)))?;
    let request = match parsed {
        RequestLine::Put(p) => {
            let req = p
                .to_request(None)
                .map_err(|e| format!("bad request {line:?}: {e}"))?;
            Request::RequestPut(req)
        }
        RequestLine::Get(g) => Request::RequestRange(g.to_request()),
        RequestLine::Del(d) => Request::RequestDeleteRange(d.to_request()),
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

/// Splits a line into arguments: whitespace separates; `"..."` uses Go
/// escapes, `'...'` and `` `...` `` are literal; quoted and bare parts next
/// to each other join (`a"b c"` is one argument `ab c`).
pub fn split_args(line: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut args = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        let mut arg = Vec::new();
        while let Some(c) = rest.chars().next() {
            if c.is_whitespace() {
                break;
            }
            if matches!(c, '"' | '\'' | '`') {
                let (part, tail) = parse_quoted(rest)?;
                arg.extend_from_slice(&part);
                rest = tail;
            } else {
                let mut buf = [0u8; 4];
                arg.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                rest = &rest[c.len_utf8()..];
            }
        }
        args.push(arg);
        rest = rest.trim_start();
    }
    Ok(args)
}

/// Parses the quoted string at the start of `s`; returns its bytes and the
/// text after the closing quote.
pub fn parse_quoted(s: &str) -> Result<(Vec<u8>, &str), String> {
    let mut chars = s.char_indices();
    let Some((_, quote)) = chars.next() else {
        return Err("expected a quoted string".to_string());
    };
    if quote == '\'' || quote == '`' {
        let body = &s[1..];
        return match body.find(quote) {
            Some(end) => Ok((body.as_bytes()[..end].to_vec(), &body[end + 1..])),
            None => Err(format!("unterminated {quote}-quoted string {s:?}")),
        };
    }
    if quote != '"' {
        return Err(format!("expected a quoted string at {s:?}"));
    }
    let mut out = Vec::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => {
                let Some((_, e)) = chars.next() else { break };
                match e {
                    'a' => out.push(0x07),
                    'b' => out.push(0x08),
                    'f' => out.push(0x0c),
                    'n' => out.push(b'\n'),
                    'r' => out.push(b'\r'),
                    't' => out.push(b'\t'),
                    'v' => out.push(0x0b),
                    '\\' => out.push(b'\\'),
                    '"' => out.push(b'"'),
                    '\'' => out.push(b'\''),
                    'x' => {
                        let v = take_digits(&mut chars, 2, 16)?;
                        out.push(u8::try_from(v).map_err(|_| "bad \\x escape".to_string())?);
                    }
                    '0'..='7' => {
                        let rest = take_digits(&mut chars, 2, 8)?;
                        let v = (e as u32 - '0' as u32) * 64 + rest;
                        let b = u8::try_from(v)
                            .map_err(|_| format!("octal escape \\{e}.. is above \\377"))?;
                        out.push(b);
                    }
                    'u' | 'U' => {
                        let n = if e == 'u' { 4 } else { 8 };
                        let v = take_digits(&mut chars, n, 16)?;
                        let ch = char::from_u32(v).ok_or_else(|| {
                            format!("\\{e}{v:x} is not a valid Unicode character")
                        })?;
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    }
                    other => return Err(format!("unknown escape sequence \\{other} in {s:?}")),
                }
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    Err(format!("unterminated quoted string {s:?}"))
}

/// Reads exactly `n` digits in `radix` from `chars`.
fn take_digits(chars: &mut std::str::CharIndices<'_>, n: usize, radix: u32) -> Result<u32, String> {
    let mut v: u32 = 0;
    for _ in 0..n {
        let d = chars
            .next()
            .and_then(|(_, c)| c.to_digit(radix))
            .ok_or_else(|| format!("escape needs {n} base-{radix} digits"))?;
        v = v.saturating_mul(radix).saturating_add(d);
    }
    Ok(v)
}

fn bytes_os(b: Vec<u8>) -> OsString {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        OsString::from_vec(b)
    }
    #[cfg(not(unix))]
    {
        OsString::from(String::from_utf8_lossy(&b).into_owned())
    }
}

/// The first line of a clap error, without clap's `error: ` prefix.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    first.trim().trim_start_matches("error: ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_proto::etcdserverpb::{DeleteRangeRequest, PutRequest};

    fn cmp(result: CompareResult, target: CompareTarget, key: &str, u: TargetUnion) -> Compare {
        Compare {
            result: result as i32,
            target: target as i32,
            key: key.as_bytes().to_vec(),
            range_end: vec![],
            target_union: Some(u),
        }
    }

    #[test]
    fn compares() {
        assert_eq!(
            parse_compare(r#"mod("key1") > "0""#),
            Ok(cmp(
                CompareResult::Greater,
                CompareTarget::Mod,
                "key1",
                TargetUnion::ModRevision(0)
            ))
        );
        assert_eq!(
            parse_compare(r#"value("k") = "v""#),
            Ok(cmp(
                CompareResult::Equal,
                CompareTarget::Value,
                "k",
                TargetUnion::Value(b"v".to_vec())
            ))
        );
        assert_eq!(
            parse_compare(r#"ver("k") != "3""#),
            Ok(cmp(
                CompareResult::NotEqual,
                CompareTarget::Version,
                "k",
                TargetUnion::Version(3)
            ))
        );
        assert_eq!(
            parse_compare(r#"c("k") < "10""#),
            Ok(cmp(
                CompareResult::Less,
                CompareTarget::Create,
                "k",
                TargetUnion::CreateRevision(10)
            ))
        );
        assert_eq!(
            parse_compare(r#"lease("k") = "694d77aa9e38260f""#),
            Ok(cmp(
                CompareResult::Equal,
                CompareTarget::Lease,
                "k",
                TargetUnion::Lease(0x694d77aa9e38260f)
            ))
        );
        // Lenient spacing, bare key and value, `==`.
        assert_eq!(
            parse_compare(r#"  version( k )==0"#),
            Ok(cmp(
                CompareResult::Equal,
                CompareTarget::Version,
                "k",
                TargetUnion::Version(0)
            ))
        );
        assert_eq!(
            parse_compare(r#"val("k") = """#),
            Ok(cmp(
                CompareResult::Equal,
                CompareTarget::Value,
                "k",
                TargetUnion::Value(vec![])
            ))
        );
    }

    #[test]
    fn compare_quoting_and_escapes() {
        let c = parse_compare(r#"value("a \"b\"\tc") = "\x00\xff\u00e9\101\n""#);
        assert_eq!(
            c,
            Ok(cmp(
                CompareResult::Equal,
                CompareTarget::Value,
                "a \"b\"\tc",
                TargetUnion::Value(vec![0x00, 0xff, 0xc3, 0xa9, b'A', b'\n'])
            ))
        );
        let c = parse_compare(r#"value(`raw\n`) = 'it''s'"#);
        assert!(c.is_err(), "{c:?}"); // text after the value
        let c = parse_compare(r#"value(`raw\n`) = 'lit\x'"#);
        assert_eq!(
            c,
            Ok(cmp(
                CompareResult::Equal,
                CompareTarget::Value,
                "raw\\n",
                TargetUnion::Value(b"lit\\x".to_vec())
            ))
        );
    }

    #[test]
    fn compare_errors_are_clear() {
        let cases = [
            ("mod \"k\" > 0", "expected target"),
            (r#"mod("k" > "0""#, "expected ')'"),
            (r#"mod("k) > "0""#, "expected ')'"),
            (r#"mod("k") >> "0""#, "unexpected"),
            (r#"mod("k") ~ "0""#, "unknown operator \"~\""),
            (r#"mod("k") >"#, "missing value"),
            (r#"mod("k") > "x""#, "mod revision must be an integer"),
            (r#"size("k") > "1""#, "unknown target \"size\""),
            (r#"value("k") = "v" extra"#, "unexpected \"extra\""),
            (r#"value("k") = "\q""#, "unknown escape sequence \\q"),
            (r#"value("k") = "\x4""#, "2 base-16 digits"),
            (r#"value("k") = "\400""#, "above \\377"),
            (r#"value("k") = "\ud800""#, "not a valid Unicode"),
            (r#"value("k") = "open"#, "unterminated"),
            (r#"lease("k") = "zz""#, "expecting ID in Hex"),
            ("mod(k > 1", "missing ')'"),
        ];
        for (line, want) in cases {
            match parse_compare(line) {
                Ok(c) => panic!("{line:?} parsed as {c:?}"),
                Err(e) => {
                    assert!(e.contains(want), "{line:?}: {e:?} lacks {want:?}");
                    assert!(e.starts_with("malformed comparison"), "{e}");
                }
            }
        }
    }

    #[test]
    fn args_split_like_a_shell() {
        let got = split_args(r#"put  k "a b\n" 'c d' x"y z"w `r\t`"#);
        let want: Vec<Vec<u8>> = vec![
            b"put".to_vec(),
            b"k".to_vec(),
            b"a b\n".to_vec(),
            b"c d".to_vec(),
            b"xy zw".to_vec(),
            b"r\\t".to_vec(),
        ];
        assert_eq!(got, Ok(want));
        assert_eq!(
            split_args(r#"put k """#),
            Ok(vec![b"put".to_vec(), b"k".to_vec(), vec![]])
        );
        assert_eq!(split_args("   "), Ok(vec![]));
        assert!(split_args(r#"put k "open"#).is_err());
        assert!(split_args("put k 'open").is_err());
        assert_eq!(
            split_args("é ü"),
            Ok(vec!["é".as_bytes().to_vec(), "ü".as_bytes().to_vec()])
        );
    }

    #[test]
    fn requests() {
        assert_eq!(
            parse_request(r#"put k "v 1" --prev-kv"#),
            Ok(RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v 1".to_vec(),
                    prev_kv: true,
                    ..Default::default()
                }))
            })
        );
        let Ok(RequestOp {
            request: Some(Request::RequestRange(r)),
        }) = parse_request("get a --prefix --limit 2")
        else {
            panic!("get failed to parse");
        };
        assert_eq!(
            (r.key, r.range_end, r.limit),
            (b"a".to_vec(), b"b".to_vec(), 2)
        );
        assert_eq!(
            parse_request("del a c"),
            Ok(RequestOp {
                request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: b"a".to_vec(),
                    range_end: b"c".to_vec(),
                    prev_kv: false
                }))
            })
        );
        let Ok(RequestOp {
            request: Some(Request::RequestPut(p)),
        }) = parse_request(r#"put "\xff" "\x00""#)
        else {
            panic!("binary put failed to parse");
        };
        assert_eq!((p.key, p.value), (vec![0xff], vec![0]));
    }

    #[test]
    fn request_errors_are_one_line() {
        let cases = [
            ("watch k", "unknown request \"watch\""),
            ("put k", "needs a key and a value"),
            ("put k v --bogus", "unexpected argument '--bogus'"),
            ("get", "required"),
            ("get a b --prefix", "cannot be used with"),
            ("put k v --lease zz", "expecting ID in Hex"),
            ("put k \"v", "unterminated"),
        ];
        for (line, want) in cases {
            match parse_request(line) {
                Ok(r) => panic!("{line:?} parsed as {r:?}"),
                Err(e) => {
                    assert!(e.contains(want), "{line:?}: {e:?} lacks {want:?}");
                    assert!(!e.contains('\n'), "{line:?}: multi-line error {e:?}");
                }
            }
        }
    }

    #[test]
    fn whole_transactions() {
        let input = "mod(\"key1\") > \"0\"\n\nput key1 \"overwrote-key1\"\n\nput key1 \"created-key1\"\nput key2 \"some extra key\"\n\n";
        let t = parse_txn(input);
        let Ok(t) = t else { panic!("{t:?}") };
        assert_eq!(
            (t.compare.len(), t.success.len(), t.failure.len()),
            (1, 1, 2)
        );

        // Missing trailing sections are empty; CRLF and whitespace-only lines work.
        let t = parse_txn("value(\"a\") = \"1\"\r\n  \r\nget a\r\n");
        let Ok(t) = t else { panic!("{t:?}") };
        assert_eq!(
            (t.compare.len(), t.success.len(), t.failure.len()),
            (1, 1, 0)
        );

        // No compares at all: an unconditional transaction.
        let t = parse_txn("\nput a 1\n");
        let Ok(t) = t else { panic!("{t:?}") };
        assert_eq!((t.compare.len(), t.success.len()), (0, 1));

        assert_eq!(parse_txn(""), Ok(TxnRequest::default()));
    }

    #[test]
    fn transaction_errors_name_the_line() {
        let e = parse_txn("mod(\"k\") > \"0\"\n\nput k\n").err();
        assert_eq!(e.as_ref().map(|e| e.line), Some(3));
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("txn line 3: "), "{msg}");

        let e = parse_txn("\n\n\nput a b\n\nput c d\n").err();
        assert_eq!(e.as_ref().map(|e| e.line), Some(4));
        assert!(e.is_some_and(|e| e.message.contains("after the failure requests")));

        // A request where a compare is expected.
        let e = parse_txn("put a b\n").err();
        assert!(e.is_some_and(|e| e.line == 1 && e.message.contains("malformed comparison")));
    }

    #[test]
    fn builder_tracks_sections() {
        let mut b = TxnBuilder::new();
        assert_eq!(b.section(), Section::Compares);
        assert!(b.push_line("").is_ok());
        assert_eq!(b.section(), Section::Success);
        assert!(b.push_line("del a").is_ok());
        assert!(b.push_line("").is_ok());
        assert_eq!(b.section(), Section::Failure);
        assert!(b.push_line("").is_ok());
        assert_eq!(b.section(), Section::Done);
        assert_eq!(b.finish().success.len(), 1);
    }
}
