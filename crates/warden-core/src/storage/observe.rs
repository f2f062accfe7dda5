//! The hook through which the storage layer reports how long its durable
//! commits take, for the server's `etcd_disk_wal_fsync_duration_seconds`.
//!
//! A trait rather than a metrics library: this crate must not depend on the
//! server, tokio or an exporter, and a test can count calls with a few
//! lines. The storage layer measures (a monotonic clock read around the
//! commit, nothing else); what is done with the duration is the observer's.
//!
//! Must never: be consulted for a decision (a duration observed is a
//! report, never an input to what is written), or be slow: it runs on the
//! writing thread, after the commit and before the caller is answered.

use std::time::Duration;

/// Told the duration of each durable commit (the write transaction's commit,
/// which is where the file is fsynced).
pub trait CommitObserver: Send + Sync {
    fn committed(&self, took: Duration);
}
