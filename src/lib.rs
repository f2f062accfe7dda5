//! warden: a replicated coordination service — an etcd-compatible KV store and
//! lock manager on Raft.
//!
//! Layers, from the edge inwards (see docs/architecture.md):
//! - [`api`]: gRPC services (etcd v3 KV, Maintenance, Cluster, health).
//! - [`node`]: one member: drives openraft, forwards to the leader, peer transport.
//! - [`state`]: the deterministic replicated state machine (MVCC store).
//! - [`storage`]: the Raft log and snapshot files on disk.
//! - [`proto`]: generated protobuf code.
//! - [`chaos`]: the `warden-chaos` fault-injection harness and its checkers.

pub mod api;
pub mod chaos;
pub mod cli;
pub mod client;
pub mod node;
pub mod proto;
pub mod state;
pub mod storage;
