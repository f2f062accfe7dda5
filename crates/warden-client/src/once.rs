//! Exactly-once writes from the client's side: every write this client
//! sends carries its client id and a fresh request id as gRPC metadata
//! (`warden-client-id`, `warden-request-id`, `warden-acked-below`; see
//! warden's docs/exactly-once.md). A warden server applies a given
//! (client, request) at most once and answers a retry with the first
//! attempt's response, so a write whose outcome is unknown (a timeout, a
//! leader change, a connection reset after sending) may be sent again with
//! the same id.
//!
//! The client learns that the cluster honours the tag from the
//! `warden-applied-once` header on the answer to a tagged write. etcd
//! ignores the tag, so until that header was seen a write whose outcome is
//! unknown is never retried.
//!
//! Must never: reuse a request id for a different write, or retry a write
//! of unknown outcome before the cluster has shown that it honours tags.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::metadata::{AsciiMetadataValue, MetadataMap};

/// gRPC metadata: the client's id.
pub const CLIENT_ID: &str = "warden-client-id";
/// gRPC metadata: the request's sequence number.
pub const REQUEST_ID: &str = "warden-request-id";
/// gRPC metadata: the lowest request id this client still has in flight.
pub const ACKED_BELOW: &str = "warden-acked-below";
/// gRPC response metadata a warden server sets on the answer to a tagged
/// write.
pub const APPLIED_ONCE: &str = "warden-applied-once";
/// The longest client id a server accepts.
pub const MAX_CLIENT_ID_BYTES: usize = 128;

/// The session state of one client: its id, the next request id, the ids
/// in flight, and whether the cluster is known to honour tags.
#[derive(Debug)]
pub struct Sessions {
    client_id: AsciiMetadataValue,
    next: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
    honoured: AtomicBool,
}

/// A request id in flight; dropping it tells the server (with the next
/// write) that its response may be forgotten.
#[derive(Debug)]
pub struct Tag<'a> {
    sessions: &'a Sessions,
    /// The request id every attempt of this write carries.
    pub request_id: u64,
}

impl Drop for Tag<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.sessions.in_flight.lock() {
            set.remove(&self.request_id);
        }
    }
}

/// Why a client id is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadClientId(pub String);

impl Sessions {
    /// Sessions for `client_id`, or for a random id (`rs-` and 32 hex
    /// digits) when `None`. Request ids start at the time in microseconds,
    /// so a restarted process reusing its id starts above its old requests.
    pub fn new(client_id: Option<&str>) -> Result<Sessions, BadClientId> {
        let id = match client_id {
            Some(id) => id.to_string(),
            None => format!("rs-{:032x}", rand::random::<u128>()),
        };
        if id.is_empty()
            || id.len() > MAX_CLIENT_ID_BYTES
            || !id.bytes().all(|b| (0x21..=0x7e).contains(&b))
        {
            return Err(BadClientId(format!(
                "client id must be 1 to {MAX_CLIENT_ID_BYTES} printable ASCII characters without spaces, got {id:?}"
            )));
        }
        let client_id = AsciiMetadataValue::try_from(id.as_str())
            .map_err(|e| BadClientId(format!("client id {id:?}: {e}")))?;
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        Ok(Sessions {
            client_id,
            next: AtomicU64::new(start.max(1)),
            in_flight: Mutex::new(BTreeSet::new()),
            honoured: AtomicBool::new(false),
        })
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        self.client_id.to_str().unwrap_or_default()
    }

    /// A fresh request id for one write (all its attempts).
    ///
    /// ```
    /// use warden_client::once::{Sessions, REQUEST_ID, ACKED_BELOW};
    /// let s = Sessions::new(Some("job7")).unwrap();
    /// let first = s.begin();
    /// let second = s.begin();
    /// assert_eq!(second.request_id, first.request_id + 1);
    /// let mut md = tonic::metadata::MetadataMap::new();
    /// s.attach(&second, &mut md);
    /// // `first` is still in flight, so its response must be kept.
    /// assert_eq!(md.get(ACKED_BELOW).unwrap().to_str().unwrap(), first.request_id.to_string());
    /// assert_eq!(md.get(REQUEST_ID).unwrap().to_str().unwrap(), second.request_id.to_string());
    /// ```
    pub fn begin(&self) -> Tag<'_> {
        let request_id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut set) = self.in_flight.lock() {
            set.insert(request_id);
        }
        Tag {
            sessions: self,
            request_id,
        }
    }

    /// Puts `tag` on a request's metadata, with the lowest id in flight as
    /// the acknowledged mark.
    pub fn attach(&self, tag: &Tag<'_>, md: &mut MetadataMap) {
        let acked = self
            .in_flight
            .lock()
            .ok()
            .and_then(|s| s.first().copied())
            .unwrap_or(tag.request_id)
            .min(tag.request_id);
        md.insert(CLIENT_ID, self.client_id.clone());
        md.insert(REQUEST_ID, AsciiMetadataValue::from(tag.request_id));
        md.insert(ACKED_BELOW, AsciiMetadataValue::from(acked));
    }

    /// [`Sessions::attach`] into a map of its own, shared by every attempt
    /// of the write.
    pub fn metadata(&self, tag: &Tag<'_>) -> std::sync::Arc<MetadataMap> {
        let mut md = MetadataMap::new();
        self.attach(tag, &mut md);
        std::sync::Arc::new(md)
    }

    /// Notes a response's metadata: the server honours tags if it answered
    /// with [`APPLIED_ONCE`].
    pub fn answered(&self, md: &MetadataMap) {
        if md.contains_key(APPLIED_ONCE) {
            self.honoured.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the cluster was seen to apply tagged writes at most once.
    pub fn honoured(&self) -> bool {
        self.honoured.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_grow_and_acked_mark_is_the_oldest_in_flight() {
        let s = Sessions::new(Some("job7")).unwrap();
        assert_eq!(s.client_id(), "job7");
        let a = s.begin();
        let b = s.begin();
        assert_eq!(b.request_id, a.request_id + 1);
        let mut md = MetadataMap::new();
        s.attach(&b, &mut md);
        assert_eq!(md.get(CLIENT_ID).unwrap(), "job7");
        assert_eq!(
            md.get(REQUEST_ID).unwrap().to_str().unwrap(),
            b.request_id.to_string()
        );
        // `a` is still in flight: nothing at or above it may be forgotten.
        assert_eq!(
            md.get(ACKED_BELOW).unwrap().to_str().unwrap(),
            a.request_id.to_string()
        );
        let a_id = a.request_id;
        drop(a);
        s.attach(&b, &mut md);
        assert_eq!(
            md.get(ACKED_BELOW).unwrap().to_str().unwrap(),
            b.request_id.to_string()
        );
        assert!(b.request_id > a_id);
    }

    #[test]
    fn random_ids_differ_and_bad_ids_are_refused() {
        let a = Sessions::new(None).unwrap();
        let b = Sessions::new(None).unwrap();
        assert_ne!(a.client_id(), b.client_id());
        assert!(a.client_id().starts_with("rs-"));
        assert!(Sessions::new(Some("")).is_err());
        assert!(Sessions::new(Some("has space")).is_err());
        assert!(Sessions::new(Some(&"x".repeat(129))).is_err());
        assert!(Sessions::new(Some(&"x".repeat(128))).is_ok());
    }

    #[test]
    fn honoured_only_after_the_server_says_so() {
        let s = Sessions::new(None).unwrap();
        assert!(!s.honoured());
        s.answered(&MetadataMap::new());
        assert!(!s.honoured());
        let mut md = MetadataMap::new();
        md.insert(APPLIED_ONCE, AsciiMetadataValue::from(5u64));
        s.answered(&md);
        assert!(s.honoured());
    }
}
