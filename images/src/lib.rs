//! Container images of the mesh, built without Docker, and the programs they carry that
//! are not pilot, mixer, citadel or Envoy.
//!
//! [`build::build`] reads the images spec ([`spec`], `images/images.yaml`), resolves each
//! image's files on this host (with the shared libraries `ldd` finds for its binaries,
//! [`libs`]), writes deterministic gzip-compressed layers ([`layer`]) and one archive per
//! image that is both an OCI image layout and a `docker save` archive ([`archive`]):
//! `ctr images import`, `docker load`, `kind load image-archive` and skopeo all read it.
//!
//! [`app`] is the test workload (`mesh-app`, a bookinfo-like service whose role comes from
//! its environment, and an HTTP client for `kubectl exec`), [`pause`] the pod sandbox
//! (`mesh-pause`).

pub mod app;
pub mod archive;
pub mod build;
pub mod error;
pub mod expand;
pub mod layer;
pub mod libs;
pub mod pause;
pub mod spec;

pub use error::Error;

/// The table `mesh-image build` prints: each image's name, tag, layers and sizes.
pub fn table(built: &[build::Built]) -> String {
    let mut rows = vec![[
        "IMAGE".to_string(),
        "TAG".to_string(),
        "LAYERS".to_string(),
        "COMPRESSED".to_string(),
        "UNCOMPRESSED".to_string(),
        "ARCHIVE".to_string(),
    ]];
    for b in built {
        rows.push([
            b.name.clone(),
            b.reference.clone(),
            b.layers.to_string(),
            build::human_size(b.compressed_size),
            build::human_size(b.uncompressed_size),
            format!(
                "{}{}",
                b.archive.display(),
                if b.unchanged { " (unchanged)" } else { "" }
            ),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else if (2..=4).contains(&i) {
                line.push_str(&format!("{cell:>w$}  "));
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
