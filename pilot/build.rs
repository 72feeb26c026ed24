//! Puts Envoy's API descriptors where `src/xds/dump.rs` finds them (`OUT_DIR/envoy_descriptors.bin`)
//! for the JSON of `/debug/config_dump`.
//!
//! The `envoy-types` crate, which Pilot's Rust types of Envoy's API come from, ships the
//! descriptor set they were generated from (`src/generated/types.bin`); we read that one file
//! from wherever Cargo unpacked the crate, so the descriptors always match the types, and no
//! Envoy `.proto` file is kept in this repository.

use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cargo = std::env::var("CARGO")?;
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let target = std::env::var("TARGET")?;
    // Only this target's packages; offline first (a build has downloaded what it compiles),
    // then online for the workspace's other dev-dependencies a narrow build skipped.
    let metadata = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            &target,
        ])
        .current_dir(&manifest_dir);
        if offline {
            cmd.arg("--offline");
        }
        cmd.output()
    };
    let mut output = metadata(true)?;
    if !output.status.success() {
        output = metadata(false)?;
    }
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("envoy-types is not among Pilot's dependencies")?;
    let source = PathBuf::from(manifest)
        .parent()
        .ok_or("envoy-types' manifest has no directory")?
        .join("src/generated/types.bin");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed=build.rs");
    let bytes = std::fs::read(&source)
        .map_err(|e| format!("reading Envoy's descriptors at {}: {e}", source.display()))?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("envoy_descriptors.bin");
    std::fs::write(out, bytes)?;
    Ok(())
}
