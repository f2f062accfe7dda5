//! RESP framing: decoding client requests (RESP2 multibulk arrays of bulk
//! strings, and inline commands typed over `nc`/`telnet`) and encoding
//! replies in RESP2 or RESP3.
//!
//! Every length read from the wire is checked against [`Limits`] before it
//! is believed, and nothing is allocated from a claimed length: a request is
//! first measured over the bytes already received ([`frame_len`], no
//! allocation), and only a complete frame is copied out ([`decode`]), so the
//! memory a request costs is bounded by the bytes its sender really sent,
//! which is itself bounded by the request limit.
//!
//! Must never: panic on any input, allocate from a length it has not
//! checked against the bytes present, or accept a frame over the limits.

/// Longest inline command line (Redis's `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE: usize = 64 * 1024;

/// Longest length or count header line (`*123\r\n`, `$45\r\n`): a digit
/// string longer than this is garbage.
const MAX_HEADER: usize = 32;

/// Bounds of one request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest bulk string (`--max-request-bytes`, like gRPC).
    pub max_bulk: usize,
    /// Most elements of one request array.
    pub max_args: usize,
    /// Largest whole request frame in bytes.
    pub max_frame: usize,
}

impl Limits {
    /// The limits for a member whose gRPC requests may be `max_request_bytes`.
    pub fn for_request_bytes(max_request_bytes: usize) -> Limits {
        Limits {
            max_bulk: max_request_bytes,
            // Redis allows 1M arguments; a request here is one Raft
            // proposal, so no more arguments than its bytes could carry.
            max_args: (max_request_bytes / 4).clamp(16, 1024 * 1024),
            // Room for the headers around a largest bulk.
            max_frame: max_request_bytes.saturating_add(64 * 1024),
        }
    }
}

/// Why a request cannot be decoded. The connection answers with the
/// message (as Redis words it) and closes: the stream cannot be resynced.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    MultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    BulkLength,
    #[error("Protocol error: invalid bulk length {0} (over the request limit of {1} bytes)")]
    BulkTooLarge(u64, usize),
    #[error("Protocol error: invalid multibulk length {0} (over the limit of {1} arguments)")]
    TooManyArgs(u64, usize),
    #[error("Protocol error: request over the limit of {0} bytes")]
    FrameTooLarge(usize),
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: too big inline request")]
    InlineTooLarge,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: bulk string not followed by CRLF")]
    MissingCrlf,
}

/// Where the line starting at `from` ends: the index of its `\r\n`
/// (or a lone `\n`, which Redis accepts in inline commands only), `None`
/// if no end is in `buf` yet.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

/// Parses a header line `<prefix><signed decimal>\r\n` at `at`; returns the
/// number and the index after the line, `None` if incomplete.
fn header(
    buf: &[u8],
    at: usize,
    err: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let start = at + 1;
    let end = match find_crlf(buf, start) {
        Some(e) => e,
        None => {
            if buf.len().saturating_sub(start) > MAX_HEADER {
                return Err(err);
            }
            return Ok(None);
        }
    };
    let digits = buf.get(start..end).ok_or(err.clone())?;
    if digits.is_empty() || digits.len() > MAX_HEADER {
        return Err(err);
    }
    let n = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(err)?;
    Ok(Some((n, end + 2)))
}

/// The length of the first request in `buf`, if it is complete; checks
/// every limit on the way and allocates nothing. `Ok(None)`: more bytes
/// are needed (and `buf` is still within the limits).
pub fn frame_len(buf: &[u8], limits: &Limits) -> Result<Option<usize>, ProtocolError> {
    frame_len_resume(buf, limits, &mut None)
}

/// How far a scan of an incomplete request got, so the next scan of the
/// same request (with more bytes after it) starts there: for a multibulk
/// request, the elements already whole and where the next starts; for an
/// inline one, the bytes already searched for its end. Without it, a client
/// trickling a large request a byte at a time made every read rescan all
/// of it (a full core for one connection sending 9 KB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan {
    count: i64,
    done: i64,
    at: usize,
}

/// [`frame_len`], resuming from `scan` (which must come from a scan of the
/// same request, at the start of `buf`) and leaving in it where this scan
/// stopped when the request is incomplete (`None` once it is whole or
/// refused).
pub fn frame_len_resume(
    buf: &[u8],
    limits: &Limits,
    scan: &mut Option<Scan>,
) -> Result<Option<usize>, ProtocolError> {
    let resume = scan.take();
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != b'*' {
        let from = resume.map_or(0, |s| s.at).min(buf.len());
        let tail = buf.get(from..).unwrap_or_default();
        return match tail.iter().position(|&b| b == b'\n') {
            Some(p) if from + p < MAX_INLINE => Ok(Some(from + p + 1)),
            Some(_) => Err(ProtocolError::InlineTooLarge),
            None if buf.len() >= MAX_INLINE => Err(ProtocolError::InlineTooLarge),
            None => {
                *scan = Some(Scan {
                    count: 0,
                    done: 0,
                    at: buf.len(),
                });
                Ok(None)
            }
        };
    }
    let (count, mut at, mut done) = match resume {
        Some(s) => (s.count, s.at, s.done),
        None => {
            let Some((count, at)) = header(buf, 0, ProtocolError::MultibulkLength)? else {
                return Ok(None);
            };
            if count > limits.max_args as i64 {
                return Err(ProtocolError::TooManyArgs(count as u64, limits.max_args));
            }
            (count, at, 0)
        }
    };
    let mut incomplete = |at: usize, done: i64| {
        *scan = Some(Scan { count, done, at });
        Ok(None)
    };
    // `*0` and `*-1` are empty requests, skipped as Redis does.
    while done < count.max(0) {
        if at > limits.max_frame {
            return Err(ProtocolError::FrameTooLarge(limits.max_frame));
        }
        let Some(&b) = buf.get(at) else {
            return incomplete(at, done);
        };
        if b != b'$' {
            return Err(ProtocolError::ExpectedBulk(char::from(b)));
        }
        let Some((len, body)) = header(buf, at, ProtocolError::BulkLength)? else {
            return incomplete(at, done);
        };
        if len < 0 {
            return Err(ProtocolError::BulkLength);
        }
        if len as u64 > limits.max_bulk as u64 {
            return Err(ProtocolError::BulkTooLarge(len as u64, limits.max_bulk));
        }
        let end = body + len as usize;
        if end + 2 > limits.max_frame {
            return Err(ProtocolError::FrameTooLarge(limits.max_frame));
        }
        match buf.get(end..end + 2) {
            None => return incomplete(at, done),
            Some(b"\r\n") => {}
            Some(_) => return Err(ProtocolError::MissingCrlf),
        }
        at = end + 2;
        done += 1;
    }
    Ok(Some(at))
}

/// Decodes one complete request (`frame`, as measured by [`frame_len`])
/// into its arguments. An empty result is an empty request (skip it).
pub fn decode(frame: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    if frame.first() != Some(&b'*') {
        return split_inline(frame);
    }
    let Some((count, mut at)) = header(frame, 0, ProtocolError::MultibulkLength)? else {
        return Err(ProtocolError::MultibulkLength);
    };
    // The frame is complete, so every element is here: capacity from the
    // count is bounded by the frame's own size.
    let count = usize::try_from(count.max(0)).unwrap_or(0);
    let mut args = Vec::with_capacity(count.min(frame.len() / 4 + 1));
    for _ in 0..count {
        let Some((len, body)) = header(frame, at, ProtocolError::BulkLength)? else {
            return Err(ProtocolError::BulkLength);
        };
        let len = usize::try_from(len).map_err(|_| ProtocolError::BulkLength)?;
        let arg = frame
            .get(body..body + len)
            .ok_or(ProtocolError::BulkLength)?;
        args.push(arg.to_vec());
        at = body + len + 2;
    }
    Ok(args)
}

/// Splits an inline command line as Redis's `sdssplitargs` does: words
/// separated by blanks; `"..."` with `\n \r \t \b \a \\ \" \xHH` escapes and
/// `'...'` with `\'`; a closing quote must be followed by a blank.
pub fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut args = Vec::new();
    let mut i = 0;
    let blank = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c);
    while i < line.len() {
        while i < line.len() && blank(line[i]) {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            let Some(&c) = line.get(i) else {
                if in_dq || in_sq {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                break;
            };
            if in_dq {
                if c == b'\\' && line.get(i + 1) == Some(&b'x') {
                    let hex = line
                        .get(i + 2..i + 4)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    if let Some(v) = hex {
                        cur.push(v);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' {
                    if let Some(&n) = line.get(i + 1) {
                        cur.push(match n {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                        i += 2;
                        continue;
                    }
                }
                if c == b'"' {
                    if line.get(i + 1).is_some_and(|&n| !blank(n)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                }
                cur.push(c);
            } else if in_sq {
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    cur.push(b'\'');
                    i += 2;
                    continue;
                }
                if c == b'\'' {
                    if line.get(i + 1).is_some_and(|&n| !blank(n)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                }
                cur.push(c);
            } else if blank(c) {
                break;
            } else if c == b'"' {
                in_dq = true;
            } else if c == b'\'' {
                in_sq = true;
            } else {
                cur.push(c);
            }
            i += 1;
        }
        args.push(cur);
    }
    Ok(args)
}

/// A reply. Encoded per the connection's protocol (2 or 3): RESP3 has its
/// own null and map types, RESP2 spells them `$-1` and flat arrays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    /// The whole error line after `-`, code included (`ERR ...`).
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// A missing value (`$-1` / `_`).
    Nil,
    /// A missing array (`*-1` / `_`), e.g. EXEC after a failed WATCH.
    NilArray,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    pub fn err(msg: impl Into<String>) -> Reply {
        let m: String = msg.into();
        // Error lines end at CRLF: one line, whatever the message held.
        let m = m.replace(['\r', '\n'], " ");
        Reply::Error(m)
    }

    pub fn bulk(b: impl Into<Vec<u8>>) -> Reply {
        Reply::Bulk(b.into())
    }

    pub fn opt(b: Option<Vec<u8>>) -> Reply {
        b.map_or(Reply::Nil, Reply::Bulk)
    }

    /// Appends the encoding of `self` to `out` for protocol `proto`.
    pub fn encode(&self, proto: u8, out: &mut Vec<u8>) {
        let resp3 = proto >= 3;
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => line(out, b'-', s.as_bytes()),
            Reply::Integer(n) => line(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(b) => {
                line(out, b'$', b.len().to_string().as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::NilArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for i in items {
                    i.encode(proto, out);
                }
            }
            Reply::Map(pairs) => {
                if resp3 {
                    line(out, b'%', pairs.len().to_string().as_bytes());
                } else {
                    line(out, b'*', (pairs.len() * 2).to_string().as_bytes());
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
        }
    }
}

fn line(out: &mut Vec<u8>, prefix: u8, body: &[u8]) {
    out.push(prefix);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            max_bulk: 1024,
            max_args: 64,
            max_frame: 4096,
        }
    }

    fn args(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn encode_request(a: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", a.len()).into_bytes();
        for x in a {
            out.extend_from_slice(format!("${}\r\n", x.len()).as_bytes());
            out.extend_from_slice(x);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Decodes every request of `buf`; the error, if any, ends it.
    type Requests = Vec<Vec<Vec<u8>>>;

    fn all(buf: &[u8]) -> Result<(Requests, usize), ProtocolError> {
        let mut at = 0;
        let mut out = Vec::new();
        while let Some(n) = frame_len(&buf[at..], &limits())? {
            out.push(decode(&buf[at..at + n])?);
            at += n;
        }
        Ok((out, at))
    }

    #[test]
    fn multibulk_and_pipelining() {
        let buf = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$0\r\n\r\n";
        let (reqs, used) = all(buf).unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(reqs, vec![args(&["GET", "a"]), args(&["SET", "b", ""])]);
    }

    #[test]
    fn binary_bulk_with_crlf_inside() {
        let buf = b"*2\r\n$4\r\na\r\nb\r\n$1\r\n\x00\r\n";
        let (reqs, _) = all(buf).unwrap();
        assert_eq!(reqs, vec![vec![b"a\r\nb".to_vec(), vec![0]]]);
    }

    #[test]
    fn inline_commands() {
        let (reqs, _) = all(b"SET c 3\r\nGET c\nPING\r\n").unwrap();
        assert_eq!(
            reqs,
            vec![
                args(&["SET", "c", "3"]),
                args(&["GET", "c"]),
                args(&["PING"])
            ]
        );
        assert_eq!(
            split_inline(b"set k \"a b\\x41\\n\" 'it\\'s'\r\n").unwrap(),
            vec![
                b"set".to_vec(),
                b"k".to_vec(),
                b"a bA\n".to_vec(),
                b"it's".to_vec()
            ]
        );
        assert_eq!(split_inline(b"   \r\n").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(
            split_inline(b"get \"abc"),
            Err(ProtocolError::UnbalancedQuotes)
        );
        assert_eq!(
            split_inline(b"get \"abc\"x"),
            Err(ProtocolError::UnbalancedQuotes)
        );
    }

    #[test]
    fn every_prefix_of_a_request_is_incomplete() {
        let buf = encode_request(&args(&["SET", "key", "some value"]));
        for cut in 0..buf.len() {
            assert_eq!(frame_len(&buf[..cut], &limits()), Ok(None), "cut {cut}");
        }
        assert_eq!(frame_len(&buf, &limits()), Ok(Some(buf.len())));
    }

    #[test]
    fn oversized_lengths_are_refused_before_their_bytes() {
        // Claimed sizes are refused from the header alone.
        assert_eq!(
            frame_len(b"*1\r\n$999999999999\r\n", &limits()),
            Err(ProtocolError::BulkTooLarge(999_999_999_999, 1024))
        );
        assert_eq!(
            frame_len(b"*100000000\r\n", &limits()),
            Err(ProtocolError::TooManyArgs(100_000_000, 64))
        );
        assert_eq!(
            frame_len(b"*1\r\n$-5\r\n", &limits()),
            Err(ProtocolError::BulkLength)
        );
        assert_eq!(
            frame_len(b"*1\r\n$99999999999999999999999999\r\n", &limits()),
            Err(ProtocolError::BulkLength)
        );
        assert_eq!(
            frame_len(b"*abc\r\n", &limits()),
            Err(ProtocolError::MultibulkLength)
        );
        // A header that never ends is garbage once longer than any number.
        assert_eq!(
            frame_len(&[b"*".as_slice(), &[b'1'; 40]].concat(), &limits()),
            Err(ProtocolError::MultibulkLength)
        );
        // Many bulks each within the limit, together over the frame limit.
        let big = vec![b'x'; 1000];
        let many: Vec<Vec<u8>> = (0..10).map(|_| big.clone()).collect();
        assert_eq!(
            frame_len(&encode_request(&many), &limits()),
            Err(ProtocolError::FrameTooLarge(4096))
        );
        // An inline line without end.
        assert_eq!(
            frame_len(&vec![b'a'; MAX_INLINE], &limits()),
            Err(ProtocolError::InlineTooLarge)
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(
            frame_len(b"*1\r\n+OK\r\n", &limits()),
            Err(ProtocolError::ExpectedBulk('+'))
        );
        assert_eq!(
            frame_len(b"*1\r\n$1\r\nab\r\n", &limits()),
            Err(ProtocolError::MissingCrlf)
        );
    }

    #[test]
    fn replies_in_both_protocols() {
        let r = Reply::Array(vec![
            Reply::ok(),
            Reply::Nil,
            Reply::Integer(-3),
            Reply::bulk("hi"),
            Reply::err("ERR x\r\ny"),
            Reply::Map(vec![(Reply::bulk("k"), Reply::Integer(1))]),
        ]);
        let mut two = Vec::new();
        r.encode(2, &mut two);
        assert_eq!(
            two,
            b"*6\r\n+OK\r\n$-1\r\n:-3\r\n$2\r\nhi\r\n-ERR x  y\r\n*2\r\n$1\r\nk\r\n:1\r\n".to_vec()
        );
        let mut three = Vec::new();
        r.encode(3, &mut three);
        assert_eq!(
            three,
            b"*6\r\n+OK\r\n_\r\n:-3\r\n$2\r\nhi\r\n-ERR x  y\r\n%1\r\n$1\r\nk\r\n:1\r\n".to_vec()
        );
    }

    proptest! {
        /// Any requests, fed in any split, decode to themselves.
        #[test]
        fn roundtrip_in_pieces(
            reqs in prop::collection::vec(
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6), 1..5),
            cuts in prop::collection::vec(0usize..400, 0..8),
        ) {
            let mut wire = Vec::new();
            for r in &reqs {
                wire.extend(encode_request(r));
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.push(wire.len());
            cuts.sort_unstable();
            let mut buf = Vec::new();
            let mut got = Vec::new();
            let mut fed = 0;
            // Resumed between pieces, as the server scans.
            let mut scan = None;
            for c in cuts {
                buf.extend_from_slice(&wire[fed..c]);
                fed = c;
                while let Some(n) = frame_len_resume(&buf, &limits(), &mut scan).unwrap() {
                    got.push(decode(&buf[..n]).unwrap());
                    buf.drain(..n);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, reqs);
        }

        /// A scan resumed after each piece answers as a scan of all the
        /// bytes so far would: the same length, the same error.
        #[test]
        fn resumed_scans_agree_with_whole_scans(
            req in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..30), 1..5),
            inline in any::<bool>(),
            tail in prop::collection::vec(any::<u8>(), 0..40),
            cuts in prop::collection::vec(0usize..300, 0..10),
        ) {
            let mut wire = if inline {
                b"SET k v".to_vec()
            } else {
                encode_request(&req)
            };
            let cut_at = wire.len() / 2;
            wire.truncate(if tail.is_empty() { wire.len() } else { cut_at });
            wire.extend(tail);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.push(wire.len());
            cuts.sort_unstable();
            let mut scan = None;
            for c in cuts {
                let resumed = frame_len_resume(&wire[..c], &limits(), &mut scan);
                prop_assert_eq!(&resumed, &frame_len(&wire[..c], &limits()), "at {}", c);
                if !matches!(resumed, Ok(None)) {
                    break;
                }
            }
        }

        /// Arbitrary bytes: an error, an incomplete frame, or requests, and
        /// never a panic or a frame past the limits.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut at = 0;
            while at < bytes.len() {
                match frame_len(&bytes[at..], &limits()) {
                    Ok(Some(n)) => {
                        prop_assert!(n > 0 && n <= limits().max_frame.max(MAX_INLINE));
                        let _ = decode(&bytes[at..at + n]);
                        at += n;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }

        /// Prefixes of `*`/`$` headers with random digits never claim memory.
        #[test]
        fn random_headers(n in any::<i64>(), m in any::<i64>()) {
            let buf = format!("*{n}\r\n${m}\r\n");
            let _ = frame_len(buf.as_bytes(), &limits());
        }
    }
}
