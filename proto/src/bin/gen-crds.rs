//! Writes the CustomResourceDefinitions of every kind the mesh serves, as YAML.
//!
//! `gen-crds` prints them; `gen-crds --out FILE` writes them to FILE. The checked-in
//! `manifests/crds.yaml` is made with `cargo run -p mesh-proto --bin gen-crds -- --out
//! manifests/crds.yaml`, and a test of mesh-proto fails when it is stale.

use std::io::Write;
use std::process::ExitCode;

const USAGE: &str = "usage: gen-crds [--out FILE]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.as_slice() {
        [] => None,
        [flag, file] if flag == "--out" || flag == "-o" => Some(file.clone()),
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let yaml = mesh_proto::crd::crds_yaml();
    let written = match &out {
        Some(file) => std::fs::write(file, &yaml),
        None => std::io::stdout().lock().write_all(yaml.as_bytes()),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen-crds: {}: {e}", out.as_deref().unwrap_or("stdout"));
            ExitCode::FAILURE
        }
    }
}
