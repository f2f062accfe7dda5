//! warden's deterministic core: what every member holds and writes, with no
//! networking, no async runtime and no clock.
//!
//! - [`state`]: the replicated state machine (MVCC store, leases, lock
//!   table). A pure function of (state, command): no IO, no clock, no
//!   randomness.
//! - [`storage`]: bytes on disk: the Raft log and hard state (redb) and the
//!   snapshot file format. Knows nothing of [`state`]'s types.
//!
//! The server (`warden-server`) drives both; nothing here may import it.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod state;
pub mod storage;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

#[cfg(test)]
mod fuzz_tests;

/// Measures the largest allocation of the decoder fuzz tests.
#[cfg(test)]
#[global_allocator]
static ALLOC: testing::ProbeAlloc = testing::ProbeAlloc;
