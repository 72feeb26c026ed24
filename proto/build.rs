//! Compiles every `.proto` under `proto/` into Rust (messages with prost, gRPC clients and
//! servers with tonic), without `protoc`: `protox` parses the files in pure Rust and hands the
//! descriptors to `tonic-prost-build`. The output is included by `src/grpc.rs`; see its docs for
//! how to add an API. Packages today: `istio.v1.auth` (Citadel), `istio.mixer.v1` (Mixer's
//! Check and Report) and `google.rpc`.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(root, &mut files)?;
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    // protox knows google/protobuf/*.proto itself; `proto/` holds everything else.
    let descriptors = protox::compile(&files, [root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // One file that nests every package as modules (`istio::v1::auth`, `google::rpc`).
        .include_file("mesh_grpc.rs")
        .compile_fds(descriptors)?;
    Ok(())
}

/// Every `.proto` file below `dir`.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
