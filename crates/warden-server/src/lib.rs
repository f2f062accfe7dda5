//! One warden member.
//!
//! - [`node`]: drives openraft over the core's state machine and log store;
//!   the peer transport, forwarding to the leader, reads, the lessor,
//!   membership and watch fan-out. [`node::Node`] is the narrow API the
//!   services call.
//! - [`api`]: the gRPC services on the client port (etcd v3 KV, Watch,
//!   Lease, Cluster, Maintenance, v3lock, v3election, health, and the native
//!   `warden.v1.Locks`): protobuf in, `Node` calls, protobuf out.
//! - [`tls`]: TLS on both ports (rustls), reloaded when the files change.
//!
//! Arrows point down: `api` uses `node`, `node` uses `warden-core`; neither
//! knows about the CLI.
#![recursion_limit = "256"]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod node;
pub mod tls;

/// Measures the largest allocation of the decoder fuzz tests.
#[cfg(test)]
#[global_allocator]
static ALLOC: warden_core::testing::ProbeAlloc = warden_core::testing::ProbeAlloc;
