//! The archives are real images: a small image built from a spec in a temporary directory
//! (no network), checked by reading it back (digests, diff ids, both manifests) and with real
//! tools: skopeo reads it as `oci-archive:` and `docker-archive:` and copies it (verifying
//! every blob), umoci unpacks it as an OCI layout. `tests/scripts/deps.sh` installs skopeo.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_images::build::{self, Options, Profile};
use serde_json::Value;
use sha2::{Digest, Sha256};

const SPEC: &str = r#"
repository: mesh
base:
  - {path: /etc/passwd, content: "root:x:0:0:root:/root:/sbin/nologin\n"}
  - {path: /tmp, dir: true, mode: "1777"}
images:
  tiny:
    description: a tiny test image
    user: "1337:1337"
    entrypoint: [/usr/local/bin/hello]
    cmd: [--loud]
    env: {GREETING: hi}
    ports: ["9080", "53/udp"]
    labels: {test: "yes"}
    layers:
      - name: hello
        files:
          - {path: /usr/local/bin/hello, from: files/hello, mode: "0755"}
          - {path: /usr/local/bin/hi, link: hello}
          - {path: /usr/share/hello, from: files/share, owner: "1337:1337"}
  broken:
    entrypoint: [/x]
    layers:
      - name: missing
        files:
          - {path: /x, from: "${MISSING_DIR:-files}/nothing-here", hint: "make the thing"}
"#;

fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A spec directory with the spec and its files.
fn spec_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("images.yaml"), SPEC).unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(files.join("share/doc")).unwrap();
    std::fs::write(files.join("hello"), "#!/bin/false\nhello\n").unwrap();
    std::fs::write(files.join("share/doc/README"), "read me\n").unwrap();
    std::os::unix::fs::symlink("doc/README", files.join("share/README")).unwrap();
    dir
}

fn options(spec_dir: &Path, out: &Path, names: &[&str]) -> Options {
    Options {
        spec: spec_dir.join("images.yaml"),
        out: out.to_path_buf(),
        profile: Profile::Dev,
        target_dir: Some(spec_dir.join("target")),
        names: names.iter().map(|n| n.to_string()).collect(),
        vars: Some(BTreeMap::new()),
        epoch: 1_700_000_000,
        default_version: "0.1.0".into(),
        strip: false,
    }
}

/// Every file of a tar, by name.
fn untar(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let mut body = Vec::new();
        entry.read_to_end(&mut body).unwrap();
        out.insert(name, body);
    }
    out
}

/// Each entry of a layer tar: name, type, mode, owner, link target or content.
fn layer_entries(gz: &[u8]) -> Vec<String> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .unwrap();
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(raw.as_slice());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let h = entry.header().clone();
        let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        let body =
            String::from_utf8(bytes).unwrap_or_else(|e| format!("<{} bytes>", e.as_bytes().len()));
        let link = entry
            .link_name()
            .unwrap()
            .map(|l| format!(" -> {}", l.display()))
            .unwrap_or_default();
        assert_eq!(h.mtime().unwrap(), 1_700_000_000, "{name}");
        out.push(format!(
            "{name} {:o} {}:{}{link} {body:?}",
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap()
        ));
    }
    out
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn builds_an_archive_that_is_an_oci_layout_and_a_docker_archive() {
    let spec = spec_dir();
    let out = tempfile::tempdir().unwrap();
    let built = build::build(&options(spec.path(), out.path(), &["tiny"])).unwrap();
    assert_eq!(built.len(), 1);
    let b = &built[0];
    assert_eq!(b.reference, "mesh/tiny:0.1.0");
    assert_eq!(
        b.layers, 2,
        "base and hello (no shared libraries asked for)"
    );
    assert_eq!(b.archive, out.path().join("tiny.tar"));
    let archive = std::fs::read(&b.archive).unwrap();
    let files = untar(&archive);

    assert_eq!(json(&files["oci-layout"])["imageLayoutVersion"], "1.0.0");
    let index = json(&files["index.json"]);
    assert_eq!(index["schemaVersion"], 2);
    let desc = &index["manifests"][0];
    assert_eq!(
        desc["annotations"]["io.containerd.image.name"],
        "docker.io/mesh/tiny:0.1.0"
    );
    assert_eq!(
        desc["annotations"]["org.opencontainers.image.ref.name"],
        "0.1.0"
    );
    assert_eq!(desc["platform"]["architecture"], "amd64");
    let blob = |digest: &Value| -> &Vec<u8> {
        let hex = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
        &files[&format!("blobs/sha256/{hex}")]
    };
    let manifest_bytes = blob(&desc["digest"]);
    assert_eq!(sha256(manifest_bytes), desc["digest"]);
    assert_eq!(manifest_bytes.len() as u64, desc["size"].as_u64().unwrap());
    assert_eq!(b.manifest_digest, desc["digest"]);
    let manifest = json(manifest_bytes);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );

    let config_bytes = blob(&manifest["config"]["digest"]);
    assert_eq!(sha256(config_bytes), manifest["config"]["digest"]);
    let config = json(config_bytes);
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    let c = &config["config"];
    assert_eq!(c["User"], "1337:1337");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/usr/local/bin/hello"]));
    assert_eq!(c["Cmd"], serde_json::json!(["--loud"]));
    assert_eq!(c["Env"], serde_json::json!(["GREETING=hi"]));
    assert_eq!(c["WorkingDir"], "/");
    assert_eq!(
        c["ExposedPorts"],
        serde_json::json!({"53/udp": {}, "9080/tcp": {}})
    );
    assert_eq!(c["Labels"]["test"], "yes");
    assert_eq!(c["Labels"]["org.opencontainers.image.title"], "tiny");
    assert_eq!(c["Labels"]["org.opencontainers.image.version"], "0.1.0");
    assert_eq!(config["history"].as_array().unwrap().len(), 2);

    // Every layer: its blob hashes to its digest, its uncompressed tar to its diff id.
    let layers = manifest["layers"].as_array().unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    let mut compressed = 0;
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let gz = blob(&layer["digest"]);
        assert_eq!(sha256(gz), layer["digest"]);
        assert_eq!(gz.len() as u64, layer["size"].as_u64().unwrap());
        compressed += gz.len() as u64;
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(&sha256(&raw), diff_id);
    }
    assert_eq!(compressed, b.compressed_size);

    // The layers hold what the spec says, sorted, with parents, modes and owners.
    assert_eq!(
        layer_entries(blob(&layers[0]["digest"])),
        [
            "etc/ 755 0:0 \"\"",
            "etc/passwd 644 0:0 \"root:x:0:0:root:/root:/sbin/nologin\\n\"",
            "tmp/ 1777 0:0 \"\"",
        ]
    );
    assert_eq!(
        layer_entries(blob(&layers[1]["digest"])),
        [
            "usr/ 755 0:0 \"\"",
            "usr/local/ 755 0:0 \"\"",
            "usr/local/bin/ 755 0:0 \"\"",
            "usr/local/bin/hello 755 0:0 \"#!/bin/false\\nhello\\n\"",
            "usr/local/bin/hi 777 0:0 -> hello \"\"",
            "usr/share/ 755 0:0 \"\"",
            "usr/share/hello/ 755 1337:1337 \"\"",
            "usr/share/hello/README 777 1337:1337 -> doc/README \"\"",
            "usr/share/hello/doc/ 755 1337:1337 \"\"",
            "usr/share/hello/doc/README 644 1337:1337 \"read me\\n\"",
        ]
    );

    // Docker's manifest.json names the same blobs.
    let docker = json(&files["manifest.json"]);
    let docker = &docker[0];
    assert_eq!(docker["RepoTags"], serde_json::json!(["mesh/tiny:0.1.0"]));
    let config_hex = manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap();
    assert_eq!(docker["Config"], format!("blobs/sha256/{config_hex}"));
    let docker_layers: Vec<String> = docker["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let oci_layers: Vec<String> = layers
        .iter()
        .map(|l| {
            let hex = l["digest"]
                .as_str()
                .unwrap()
                .strip_prefix("sha256:")
                .unwrap();
            format!("blobs/sha256/{hex}")
        })
        .collect();
    assert_eq!(docker_layers, oci_layers);

    // The same inputs give the same bytes; a rebuild leaves the archive alone.
    let again = tempfile::tempdir().unwrap();
    let rebuilt = build::build(&options(spec.path(), again.path(), &["tiny"])).unwrap();
    assert_eq!(std::fs::read(&rebuilt[0].archive).unwrap(), archive);
    let same = build::build(&options(spec.path(), out.path(), &["tiny"])).unwrap();
    assert!(same[0].unchanged);
    // Nothing but the archive is left in the output directory.
    let left: Vec<PathBuf> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left, [out.path().join("tiny.tar")]);

    check_with_skopeo(&b.archive, &manifest, &config);
    check_with_umoci(&archive);
}

/// Whether a tool runs here; if not, says so (deps.sh installs skopeo for CI).
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: {tool} is not installed (bash tests/scripts/deps.sh installs it)");
    }
    ok
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn check_with_skopeo(archive: &Path, manifest: &Value, config: &Value) {
    if !have("skopeo") {
        return;
    }
    let want_layers: Vec<&Value> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["digest"])
        .collect();
    for transport in ["oci-archive", "docker-archive"] {
        let reference = format!("{transport}:{}", archive.display());
        let inspect = json(run(Command::new("skopeo").args(["inspect", &reference])).as_bytes());
        assert_eq!(inspect["Architecture"], "amd64", "{transport}");
        assert_eq!(inspect["Os"], "linux", "{transport}");
        assert_eq!(inspect["Labels"]["test"], "yes", "{transport}");
        let seen = inspect["Layers"].as_array().unwrap();
        if transport == "oci-archive" {
            // Layers by their blob digests.
            assert_eq!(seen.iter().collect::<Vec<_>>(), want_layers, "{transport}");
        } else {
            // A docker-archive names layers by diff id.
            assert_eq!(seen, config["rootfs"]["diff_ids"].as_array().unwrap());
        }
        let seen_config =
            json(run(Command::new("skopeo").args(["inspect", "--config", &reference])).as_bytes());
        assert_eq!(seen_config["rootfs"], config["rootfs"], "{transport}");
        assert_eq!(seen_config["config"], config["config"], "{transport}");
        // A copy reads every blob and checks it against its digest.
        let dest = tempfile::tempdir().unwrap();
        run(Command::new("skopeo").args([
            "--insecure-policy",
            "copy",
            "--quiet",
            &reference,
            &format!("dir:{}", dest.path().display()),
        ]));
        assert!(dest.path().join("manifest.json").is_file(), "{transport}");
    }
}

fn check_with_umoci(archive: &[u8]) {
    if !have("umoci") {
        return;
    }
    // The archive, unpacked as it is, is an OCI image layout with the tag 0.1.0.
    let layout = tempfile::tempdir().unwrap();
    tar::Archive::new(archive).unpack(layout.path()).unwrap();
    let image = format!("{}:0.1.0", layout.path().display());
    let listed =
        run(Command::new("umoci").args(["ls", "--layout", &layout.path().display().to_string()]));
    assert_eq!(listed.trim(), "0.1.0");
    let bundle = tempfile::tempdir().unwrap();
    let bundle_dir = bundle.path().join("bundle");
    run(Command::new("umoci").args([
        "unpack",
        "--rootless",
        "--image",
        &image,
        &bundle_dir.display().to_string(),
    ]));
    let rootfs = bundle_dir.join("rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("usr/local/bin/hello")).unwrap(),
        "#!/bin/false\nhello\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("usr/share/hello/README")).unwrap(),
        "read me\n"
    );
    let runtime = json(&std::fs::read(bundle_dir.join("config.json")).unwrap());
    assert_eq!(
        runtime["process"]["args"],
        serde_json::json!(["/usr/local/bin/hello", "--loud"])
    );
}

#[test]
fn a_missing_file_names_the_image_the_file_and_the_step() {
    let spec = spec_dir();
    let out = tempfile::tempdir().unwrap();
    let err = build::build(&options(spec.path(), out.path(), &["broken"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "image broken: file ${MISSING_DIR:-files}/nothing-here: source: not found: "
        ),
        "{err}"
    );
    assert!(err.ends_with("nothing-here (make the thing)"), "{err}");
    // Building everything builds what it can and reports what it cannot.
    let err = build::build(&options(spec.path(), out.path(), &[]))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("1 of 2 images failed"), "{err}");
    assert!(out.path().join("tiny.tar").is_file());
    let err = build::build(&options(spec.path(), out.path(), &["nope"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no image nope") && err.contains("broken, tiny"),
        "{err}"
    );
}

#[test]
fn shared_libraries_of_a_dynamic_binary_come_along() {
    // A host binary every glibc system has; its libraries land at the paths ldd names.
    let Ok(bin) = std::fs::canonicalize("/bin/true") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("images.yaml"),
        format!(
            "images:\n  t:\n    entrypoint: [/bin/true]\n    layers:\n      - name: true\n        files:\n          - {{path: /bin/true, from: {}, libs: true}}\n",
            bin.display()
        ),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let built = build::build(&options(dir.path(), out.path(), &[])).unwrap();
    assert_eq!(built[0].layers, 2, "the libraries, then the binary");
    let files = untar(&std::fs::read(&built[0].archive).unwrap());
    let manifest = json(&files["manifest.json"]);
    let libs_layer = manifest[0]["Layers"][0].as_str().unwrap();
    let entries = layer_entries(&files[libs_layer]);
    assert!(
        entries.iter().any(|e| e.contains("libc.so.6 ")),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|e| e.contains("ld-linux")),
        "{entries:?}"
    );
}
