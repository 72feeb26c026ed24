//! The image archive: one tar that is both an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/`) and a `docker save` archive (`manifest.json` naming the same blobs), so
//! `ctr images import`, `docker load`, `kind load image-archive` and skopeo's `oci-archive:`
//! and `docker-archive:` all read it.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde_json::json;

use crate::layer::{Blob, digest_of};

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What goes into one archive.
#[derive(Debug)]
pub struct Archive<'a> {
    /// The reference Docker names it by: `mesh/NAME:VERSION`.
    pub repo_tag: &'a str,
    /// The name containerd gives it: `docker.io/mesh/NAME:VERSION`.
    pub containerd_name: &'a str,
    /// The tag alone (`org.opencontainers.image.ref.name`).
    pub tag: &'a str,
    /// The image config JSON.
    pub config: &'a [u8],
    /// The layers, bottom first.
    pub layers: &'a [&'a Blob],
    /// The mtime of every entry.
    pub mtime: u64,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// `sha256:HEX` of the OCI manifest.
    pub manifest_digest: String,
    /// `sha256:HEX` of the config (Docker's image id).
    pub config_digest: String,
}

/// The OCI manifest JSON of an image.
pub fn manifest_json(config: &[u8], layers: &[&Blob]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|l| json!({"mediaType": MEDIA_LAYER, "digest": l.digest, "size": l.size}))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": digest_of(config), "size": config.len()},
        "layers": layers,
    });
    to_json(&manifest)
}

fn to_json(value: &serde_json::Value) -> Vec<u8> {
    // Serializing a Value cannot fail (its keys are strings).
    serde_json::to_vec(value).unwrap_or_default()
}

/// Writes the archive to `dst`.
pub fn write_archive(archive: &Archive<'_>, dst: &Path) -> io::Result<Written> {
    let config_digest = digest_of(archive.config);
    let config_hex = hex_part(&config_digest);
    let manifest = manifest_json(archive.config, archive.layers);
    let manifest_digest = digest_of(&manifest);
    let index = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": archive.containerd_name,
                "org.opencontainers.image.ref.name": archive.tag,
            },
        }],
    }));
    let docker_manifest = to_json(&json!([{
        "Config": format!("blobs/sha256/{config_hex}"),
        "RepoTags": [archive.repo_tag],
        "Layers": archive
            .layers
            .iter()
            .map(|l| format!("blobs/sha256/{}", l.hex()))
            .collect::<Vec<_>>(),
    }]));

    let file = File::create(dst)?;
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
    let mtime = archive.mtime;
    append_bytes(
        &mut tar,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        mtime,
    )?;
    append_dir(&mut tar, "blobs/", mtime)?;
    append_dir(&mut tar, "blobs/sha256/", mtime)?;
    // Each blob once, in digest order (two layers can be the same blob).
    let mut written = BTreeSet::new();
    let mut blobs: Vec<(&str, BlobData<'_>)> = vec![
        (config_hex, BlobData::Bytes(archive.config)),
        (hex_part(&manifest_digest), BlobData::Bytes(&manifest)),
    ];
    for layer in archive.layers {
        blobs.push((layer.hex(), BlobData::File(layer)));
    }
    blobs.sort_by(|a, b| a.0.cmp(b.0));
    for (hex, data) in blobs {
        if !written.insert(hex) {
            continue;
        }
        let name = format!("blobs/sha256/{hex}");
        match data {
            BlobData::Bytes(bytes) => append_bytes(&mut tar, &name, bytes, mtime)?,
            BlobData::File(blob) => {
                let file = File::open(&blob.file)?;
                if file.metadata()?.len() != blob.size {
                    return Err(io::Error::other(format!(
                        "layer blob {} changed size",
                        blob.file.display()
                    )));
                }
                let mut h = file_header(blob.size, mtime);
                tar.append_data(&mut h, &name, file)?;
            }
        }
    }
    append_bytes(&mut tar, "index.json", &index, mtime)?;
    append_bytes(&mut tar, "manifest.json", &docker_manifest, mtime)?;
    let mut out = tar.into_inner()?;
    out.flush()?;
    out.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()?;
    Ok(Written {
        manifest_digest,
        config_digest,
    })
}

enum BlobData<'a> {
    Bytes(&'a [u8]),
    File(&'a Blob),
}

fn hex_part(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn file_header(size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
    mtime: u64,
) -> io::Result<()> {
    let mut h = file_header(bytes.len() as u64, mtime);
    tar.append_data(&mut h, name, bytes)
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: &str, mtime: u64) -> io::Result<()> {
    let mut h = file_header(0, mtime);
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    tar.append_data(&mut h, name, io::empty())
}
