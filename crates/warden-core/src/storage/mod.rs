//! On-disk state of a member: the byte formats and their versions
//! (`format`), the Raft log and hard state (`log_db`, with its journal
//! `wal`) and snapshot files and backups (`snapshot_file`); how long durable
//! commits take is reported through [`observe::CommitObserver`]. Knows bytes,
//! files and fsync; knows nothing
//! about Raft or key-value semantics.
//!
//! Must never: import `state` (the dependency goes the other way: `state`
//! frames its snapshots with [`mod@format`], which does no IO), or write bytes in
//! a layout [`mod@format`] does not define.

pub mod cold;
pub mod format;
pub mod log_db;
pub mod observe;
pub mod snapshot_file;
pub mod wal;
