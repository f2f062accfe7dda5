//! On-disk state of a member: the Raft log and hard state (`log_db`) and
//! state-machine snapshot files (`snapshot_file`). Knows bytes, files and
//! fsync; knows nothing about Raft or key-value semantics.

pub mod log_db;
pub mod snapshot_file;
