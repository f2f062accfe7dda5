//! The replicated state: everything every member holds identically because
//! it applied the same committed commands in the same order.
//!
//! Owns: the MVCC key-value store (`mvcc`), the lease table (`lease`) and the
//! lock table (`lock_table`), all three driven by [`StateMachine`]
//! (`machine`), which also owns the snapshot format. `machine` applies lock
//! commands (acquire, release, cancel, fenced writes) to the lock table and
//! ends a lease's holds and waits in the same entry that revokes the lease.
//!
//! This layer is a pure function of (state, command) → (state, result,
//! events). It must never do IO, read a clock, use randomness, or depend on
//! `HashMap` iteration order: replicas must reach byte-identical state, and
//! that is what makes it testable with property tests. Time, if a command
//! needs it, arrives as a value inside the command.
//!
//! Files: `types` (request/response records mirroring etcd's protobufs),
//! `error` (etcd's error strings and their gRPC classes), `validate`
//! (stateless request checks the api layer may also run before proposing),
//! `mvcc` (the store), `lease` (leases and their TTLs), `machine` (commands,
//! apply, snapshots), `lock_table` (named locks, wait queues, fencing
//! tokens), `nesting` (the depth bound on decoding recursive commands),
//! `alarm` (etcd's NOSPACE/CORRUPT alarm table; the server keeps it next to
//! the state and applies its commands), `auth` (users, roles and key-range
//! permissions, and the checks a write passes before it is applied; the
//! server keeps it next to the state too). The unit tests of `mvcc` and
//! `lock_table` live beside them in
//! `mvcc_tests.rs` and `lock_table_tests.rs`; `proptests` checks the whole
//! machine against a naive model.

pub mod alarm;
pub mod auth;
pub mod error;
pub mod lease;
pub mod lock_table;
pub mod machine;
pub mod mvcc;
pub mod nesting;
pub mod session;
pub mod types;
pub mod validate;

#[cfg(test)]
mod proptests;

pub use error::{ErrorClass, SnapshotError, StateError};
pub use machine::{Applied, Command, CommandResult, Compaction, StateMachine};
pub use mvcc::{LeaseLookup, MvccStore, NoLeases, WriteResult};
pub use nesting::MAX_NESTING;
pub use validate::MAX_TXN_OPS;
