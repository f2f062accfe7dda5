//! Generated protobuf and gRPC code, one module per protobuf package.
//!
//! Everything here is produced at build time by `build.rs` from the files in
//! `proto/` (see `proto/etcd/README.md`: the etcd packages match the etcd v3.5
//! wire format). Nothing in this module is written by hand except the module
//! list; to change a message, change the `.proto` file.
//!
//! The modules are siblings because the generated code refers across packages
//! through `super::` (e.g. `etcdserverpb` uses `super::mvccpb::KeyValue`).
//!
//! - [`mvccpb`]: `KeyValue`, `Event`.
//! - [`authpb`]: `User`, `Role`, `Permission`.
//! - [`etcdserverpb`]: the `KV`, `Watch`, `Lease`, `Cluster`, `Maintenance` and `Auth`
//!   services (`kv_server::KvServer`, `watch_server::WatchServer`, ... and the
//!   matching `*_client` modules) and their messages.
//! - [`v3lockpb`]: the `Lock` service.
//! - [`v3electionpb`]: the `Election` service.
//! - [`peer`]: warden's member-to-member `RaftPeer` service.
//! - [`warden::v1`]: warden's native `Locks` service.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

/// etcd's MVCC record types (`mvccpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// etcd's auth records (`authpb`): users, roles, permissions.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod authpb {
    tonic::include_proto!("authpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd's client API services and messages (`etcdserverpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// etcd's server-side Lock service (`v3lockpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// etcd's server-side Election service (`v3electionpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// warden's peer-to-peer Raft transport (`warden.peer.v1`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod peer {
    tonic::include_proto!("warden.peer.v1");
}

/// warden's own public services (`warden.v1`), nested so the generated
/// code's `super::super::etcdserverpb` paths resolve.
pub mod warden {
    /// The native `Locks` service.
    #[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
    pub mod v1 {
        tonic::include_proto!("warden.v1");
    }
}
