//! The replicated state: everything every member holds identically because
//! it applied the same committed commands in the same order.
//!
//! The MVCC key-value store (`mvcc`) and the lease table (`lease`), driven by
//! [`StateMachine`] (`machine`), which also owns the snapshot format.
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
//! `mvcc` (the store), `machine` (commands, apply, snapshots), `lock_table`
//! (named locks, wait queues, fencing tokens; not yet driven by `machine`).

pub mod error;
pub mod lease;
pub mod lock_table;
pub mod machine;
pub mod mvcc;
pub mod types;
pub mod validate;

#[cfg(test)]
mod proptests;

pub use error::{ErrorClass, SnapshotError, StateError};
pub use machine::{Applied, Command, CommandResult, StateMachine};
pub use mvcc::{LeaseLookup, MvccStore, NoLeases, WriteResult};
pub use validate::MAX_TXN_OPS;
