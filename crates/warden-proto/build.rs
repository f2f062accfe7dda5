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

/// The packages the JSON gateway speaks (`json` feature).
const JSON_PACKAGES: &[&str] = &[
    ".mvccpb",
    ".authpb",
    ".etcdserverpb",
    ".v3lockpb",
    ".v3electionpb",
];

/// Rust names for etcd's fields that prost's snake_case splits oddly
/// (`peerURLs` becomes `peer_ur_ls`): renamed in the generated code only,
/// so the .proto keeps etcd's names (the JSON gateway's field names).
const ACRONYM_FIELDS: &[(&str, &str)] =
    &[("peer_ur_ls", "peer_urls"), ("client_ur_ls", "client_urls")];

fn rename_acronym_fields() -> Result<(), Box<dyn Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    for file in ["etcdserverpb.rs", "etcdserverpb.serde.rs"] {
        let path = out.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut renamed = text.clone();
        for (from, to) in ACRONYM_FIELDS {
            renamed = renamed.replace(from, to);
        }
        if renamed != text {
            std::fs::write(&path, renamed)?;
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    // protox::Error's Display names the file and line of a parse error.
    let fds = protox::compile(PROTOS, [PROTO_ROOT])
        .map_err(|e| format!("compiling .proto files failed: {e}"))?;

    // With the `json` feature, serde impls for etcd's packages too, named
    // as etcd's gateway names fields (the .proto names, not camelCase).
    if std::env::var_os("CARGO_FEATURE_JSON").is_some() {
        let bytes = prost::Message::encode_to_vec(&fds);
        pbjson_build::Builder::new()
            .register_descriptors(&bytes)?
            .preserve_proto_field_names()
            .build(JSON_PACKAGES)?;
    }

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    rename_acronym_fields()?;
    Ok(())
}
