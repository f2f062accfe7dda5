//! Redis's RESP protocol on a third port (`--resp-addr`), over the same
//! key space as the etcd API: a key set with `SET` is read by `etcdctl
//! get`, and the reverse. See docs/resp.md for every command and where it
//! differs from Redis.
//!
//! - `codec`: request framing (bounded, allocation only from bytes
//!   received) and reply encoding (RESP2 and RESP3);
//! - `server`: the listener and the per-connection loop (pipelining);
//! - `commands`: what each command does, through the `Node` API;
//! - `transaction`: WATCH/MULTI/EXEC as one compare-and-swap txn;
//! - `table`: arity and flags of every command (and `COMMAND`);
//! - `glob`: KEYS and SCAN patterns.
//!
//! Must never: reach Raft or the state's lock except through `Node`, as the
//! gRPC services do.

pub mod codec;
pub mod commands;
pub mod glob;
pub mod server;
pub mod table;
pub mod transaction;

pub use server::serve;
