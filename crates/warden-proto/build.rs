//! Build script: compiles the protobuf definitions under `proto/` into Rust.
//!
//! `protox` (a pure-Rust protobuf compiler) parses the `.proto` files into a
//! file descriptor set, and `tonic-prost-build` generates prost messages plus
//! tonic clients and servers from it, so building warden needs no system
//! `protoc`. The generated files land in `OUT_DIR`, one per protobuf package,
//! and are included by `src/proto.rs`.

use std::error::Error;

/// Root of the import paths: `import "etcd/mvccpb/kv.proto";` resolves here.
const PROTO_ROOT: &str = "proto";

/// Every file we generate code for (imports are pulled in automatically).
const PROTOS: &[&str] = &[
    "proto/etcd/mvccpb/kv.proto",
    "proto/etcd/etcdserverpb/rpc.proto",
    "proto/etcd/v3lock/v3lock.proto",
    "proto/etcd/v3election/v3election.proto",
    "proto/warden/peer.proto",
    "proto/warden/lock.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    // protox::Error's Display names the file and line of a parse error.
    let fds = protox::compile(PROTOS, [PROTO_ROOT])
        .map_err(|e| format!("compiling .proto files failed: {e}"))?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
