//! Exactly-once writes at the gRPC edge: reads the session metadata a
//! client may put on a write (`warden-client-id`, `warden-request-id`,
//! optionally `warden-acked-below`) into a `SessionTag` for
//! `Request::KvOnce`. The decision (apply, answer again, refuse) is made
//! when the entry is applied (`warden_core::state::session`), identically on
//! every member, never here.
//!
//! Owns only parsing and the time stamp: the proposing member stamps its
//! Unix time in milliseconds, the state machine's log time is the largest
//! stamp it has seen. etcd's messages are untouched; a request without the
//! metadata is an ordinary write.
//!
//! Must never: decide whether a request is a retry (that is apply-time
//! state), or accept a half-given session (an id without the other).

use std::time::{SystemTime, UNIX_EPOCH};

use tonic::metadata::MetadataMap;
use tonic::Status;
use warden_core::state::session::{SessionTag, MAX_CLIENT_ID_BYTES};

/// gRPC metadata: the client's id (a string of at most
/// [`MAX_CLIENT_ID_BYTES`] printable ASCII bytes).
pub const CLIENT_ID: &str = "warden-client-id";
/// gRPC metadata: the request's sequence number (a u64 in decimal).
pub const REQUEST_ID: &str = "warden-request-id";
/// gRPC metadata: the lowest request id the client still has in flight (a
/// u64 in decimal, at most the request id); responses below it may be
/// forgotten.
pub const ACKED_BELOW: &str = "warden-acked-below";

fn text<'a>(md: &'a MetadataMap, key: &str) -> Result<Option<&'a str>, Status> {
    md.get(key)
        .map(|v| {
            v.to_str()
                .map_err(|_| Status::invalid_argument(format!("warden: {key} is not ASCII text")))
        })
        .transpose()
}

fn number(md: &MetadataMap, key: &str) -> Result<Option<u64>, Status> {
    text(md, key)?
        .map(|s| {
            s.trim().parse::<u64>().map_err(|_| {
                Status::invalid_argument(format!(
                    "warden: {key} must be an unsigned 64-bit integer, got {s:?}"
                ))
            })
        })
        .transpose()
}

/// The session tag of a write, if its metadata carries one, stamped with
/// `at_ms`. `InvalidArgument` for a malformed or half-given session.
pub fn tag_from(md: &MetadataMap, at_ms: u64) -> Result<Option<SessionTag>, Status> {
    let client = text(md, CLIENT_ID)?;
    let request = number(md, REQUEST_ID)?;
    let acked = number(md, ACKED_BELOW)?;
    let (client, request_id) = match (client, request) {
        (None, None) => {
            if acked.is_some() {
                return Err(Status::invalid_argument(format!(
                    "warden: {ACKED_BELOW} given without {CLIENT_ID} and {REQUEST_ID}"
                )));
            }
            return Ok(None);
        }
        (Some(c), Some(r)) => (c, r),
        (Some(_), None) | (None, Some(_)) => {
            return Err(Status::invalid_argument(format!(
                "warden: {CLIENT_ID} and {REQUEST_ID} must be given together"
            )))
        }
    };
    if client.is_empty() || client.len() > MAX_CLIENT_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "warden: {CLIENT_ID} must be 1 to {MAX_CLIENT_ID_BYTES} bytes, got {}",
            client.len()
        )));
    }
    let acked_below = acked.unwrap_or(0);
    if acked_below > request_id {
        return Err(Status::invalid_argument(format!(
            "warden: {ACKED_BELOW} ({acked_below}) must not exceed {REQUEST_ID} ({request_id})"
        )));
    }
    Ok(Some(SessionTag {
        client_id: client.to_owned(),
        request_id,
        acked_below,
        at_ms,
    }))
}

/// This member's Unix time in milliseconds, the stamp of a tagged write.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// gRPC response metadata: set to the request id on the answer to a tagged
/// write, so a client learns that this server applies tagged writes at most
/// once (etcd ignores the tag and never sets this) and may retry them.
pub const APPLIED_ONCE: &str = "warden-applied-once";

/// `msg` as the response to a write tagged with request id `tagged` (or
/// untagged): a tagged one's answer carries [`APPLIED_ONCE`].
pub fn answer<T>(msg: T, tagged: Option<u64>) -> tonic::Response<T> {
    let mut resp = tonic::Response::new(msg);
    if let Some(id) = tagged {
        if let Ok(v) = id.to_string().parse() {
            resp.metadata_mut().insert(APPLIED_ONCE, v);
        }
    }
    resp
}

/// The session tag of a request's metadata, stamped now.
pub fn tag_of<T>(req: &tonic::Request<T>) -> Result<Option<SessionTag>, Status> {
    tag_from(req.metadata(), now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn parses_a_full_tag_and_nothing_from_nothing() {
        assert_eq!(tag_from(&md(&[]), 5).unwrap(), None);
        let t = tag_from(
            &md(&[
                (CLIENT_ID, "job7"),
                (REQUEST_ID, "100"),
                (ACKED_BELOW, "99"),
            ]),
            5,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            t,
            SessionTag {
                client_id: "job7".into(),
                request_id: 100,
                acked_below: 99,
                at_ms: 5
            }
        );
    }

    #[test]
    fn refuses_malformed_or_half_tags() {
        let long = "x".repeat(MAX_CLIENT_ID_BYTES + 1);
        for bad in [
            md(&[(CLIENT_ID, "job7")]),
            md(&[(REQUEST_ID, "1")]),
            md(&[(ACKED_BELOW, "1")]),
            md(&[(CLIENT_ID, "job7"), (REQUEST_ID, "-1")]),
            md(&[(CLIENT_ID, "job7"), (REQUEST_ID, "x")]),
            md(&[(CLIENT_ID, ""), (REQUEST_ID, "1")]),
            md(&[(CLIENT_ID, long.as_str()), (REQUEST_ID, "1")]),
            md(&[(CLIENT_ID, "a"), (REQUEST_ID, "1"), (ACKED_BELOW, "2")]),
        ] {
            let e = tag_from(&bad, 1).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.message().starts_with("warden: "), "{e}");
        }
    }
}
