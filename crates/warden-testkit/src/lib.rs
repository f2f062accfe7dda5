//! Test support shared by warden's multi-process tests (`crates/warden/tests`)
//! and the chaos harness (`warden-chaos`):
//!
//! - [`ports`]: ports for servers, picked at run time, never handed out twice
//!   in one process;
//! - [`proxy`]: per-link TCP proxies that cut and heal the peer network;
//! - [`poll`]: wait for a condition with a deadline instead of sleeping;
//! - [`leader`]: who leads, as the members' Status answers say.
//!
//! Only [`leader`] speaks warden's protocol (the etcd Maintenance API, as a
//! client); the rest is plain TCP, ports and time. Never used by the server
//! itself.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod leader;
pub mod poll;
pub mod ports;
pub mod proxy;
