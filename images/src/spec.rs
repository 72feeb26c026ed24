//! The images spec (`images/images.yaml`): what each image holds and how it starts.
//!
//! ```yaml
//! registry: docker.io          # the registry part of containerd's image name
//! repository: mesh             # images are tagged REPOSITORY/NAME:VERSION
//! version: 0.1.0               # optional: the workspace version by default
//! env: {PATH: /usr/bin:/bin}   # environment of every image (an image's own env adds to it)
//! base:                        # the first layer of every image
//!   - {path: /etc/passwd, content: "root:x:0:0:root:/root:/sbin/nologin\n"}
//!   - {path: /tmp, dir: true, mode: "1777"}
//! images:
//!   app:
//!     description: the test workload
//!     user: "1337:1337"
//!     entrypoint: [/usr/local/bin/mesh-app]
//!     ports: ["9080"]          # "PORT" (tcp) or "PORT/udp"
//!     layers:
//!       - name: mesh-app
//!         files:
//!           - {path: /usr/local/bin/mesh-app, from: "${PROFILE_DIR}/mesh-app", libs: true, strip: true}
//! ```
//!
//! A file entry has an absolute `path` in the image and exactly one source: `from` (a host file
//! or directory, `${VAR}`-expanded, relative to the spec's directory), `content` (inline
//! text), `link` (a symlink's target) or `dir: true` (an empty directory). `mode` is octal
//! text ("0755"; by default the host file's mode, 0644 for content, 0755 for directories),
//! `owner` is "UID:GID" (0:0 by default). `libs: true` adds the shared libraries and dynamic
//! loader that the host's `ldd` finds for the file (every ELF file of a directory), at the same
//! paths; `strip: true` strips debug info from a copy when `strip` is installed; `hint` is
//! added to the message when the source is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;

/// The whole spec file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default = "default_registry")]
    pub registry: String,
    #[serde(default = "default_repository")]
    pub repository: String,
    /// The tag of every image; the workspace version when absent.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub base: Vec<Entry>,
    pub images: BTreeMap<String, ImageSpec>,
}

fn default_registry() -> String {
    "docker.io".into()
}

fn default_repository() -> String {
    "mesh".into()
}

/// One image.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `UID[:GID]` or a name from the base layer's /etc/passwd.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default = "default_workdir")]
    pub workdir: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub layers: Vec<LayerSpec>,
}

fn default_workdir() -> String {
    "/".into()
}

/// One layer of an image, above the base layer and the shared libraries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// Shown in the image's history.
    pub name: String,
    pub files: Vec<Entry>,
}

/// One file, directory or symlink of a layer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Its absolute path in the image.
    pub path: String,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub link: Option<String>,
    #[serde(default)]
    pub dir: bool,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub libs: bool,
    #[serde(default)]
    pub strip: bool,
    #[serde(default)]
    pub hint: Option<String>,
}

/// Where an entry's bytes come from, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<'a> {
    Host(&'a str),
    Content(&'a str),
    Link(&'a str),
    Dir,
}

impl Entry {
    /// The entry's one source (checked by [`Spec::check`]).
    pub fn source(&self) -> Result<Source<'_>, String> {
        let mut found = Vec::new();
        if let Some(from) = &self.from {
            found.push(Source::Host(from));
        }
        if let Some(content) = &self.content {
            found.push(Source::Content(content));
        }
        if let Some(link) = &self.link {
            found.push(Source::Link(link));
        }
        if self.dir {
            found.push(Source::Dir);
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err("needs one of from, content, link or dir: true".into()),
            _ => Err("has more than one of from, content, link and dir: true".into()),
        }
    }

    /// The entry's mode bits, if it sets them.
    pub fn mode_bits(&self) -> Result<Option<u32>, String> {
        self.mode.as_deref().map(parse_mode).transpose()
    }

    /// The entry's owner, `(0, 0)` by default.
    pub fn owner_ids(&self) -> Result<(u64, u64), String> {
        match self.owner.as_deref() {
            None => Ok((0, 0)),
            Some(owner) => parse_owner(owner),
        }
    }

    /// How the entry is named in messages: its `from:` as written, else its image path.
    pub fn label(&self) -> &str {
        self.from.as_deref().unwrap_or(&self.path)
    }
}

/// Octal mode text ("0755", "1777") into bits.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 && !digits.is_empty() => Ok(mode),
        _ => Err(format!(
            "mode {text:?} is not octal permission bits such as \"0755\""
        )),
    }
}

/// "UID:GID" (numeric) into ids.
pub fn parse_owner(text: &str) -> Result<(u64, u64), String> {
    let parse = |s: &str| s.parse::<u32>().map(u64::from);
    match text.split_once(':') {
        Some((uid, gid)) => match (parse(uid), parse(gid)) {
            (Ok(uid), Ok(gid)) => Ok((uid, gid)),
            _ => Err(format!("owner {text:?} is not numeric UID:GID")),
        },
        None => Err(format!("owner {text:?} is not numeric UID:GID")),
    }
}

/// An image path (absolute, no `.`/`..`, no doubled or trailing `/`) without its leading `/`,
/// as a layer's tar names it.
pub fn relative_image_path(path: &str) -> Result<String, String> {
    let Some(rel) = path.strip_prefix('/') else {
        return Err(format!("path {path:?} is not absolute"));
    };
    if rel.is_empty() {
        return Err("path / cannot be an entry".into());
    }
    for part in rel.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!(
                "path {path:?} is not normalized (empty, . or .. parts, or a trailing /)"
            ));
        }
    }
    if rel.contains('\0') {
        return Err(format!("path {path:?} has a NUL byte"));
    }
    Ok(rel.to_string())
}

/// A port as ExposedPorts names it: "9080" becomes "9080/tcp".
pub fn exposed_port(text: &str) -> Result<String, String> {
    let (port, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    match (port.parse::<u16>(), proto) {
        (Ok(p), "tcp" | "udp" | "sctp") if p > 0 => Ok(format!("{p}/{proto}")),
        _ => Err(format!(
            "port {text:?} is not PORT or PORT/tcp|udp|sctp (1..65535)"
        )),
    }
}

/// Whether `name` is a valid image name (lowercase letters, digits, `.`, `_`, `-`).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// Whether `tag` is a valid image tag.
pub fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    tag.len() <= 128
        && matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Spec {
    /// Reads, parses and checks a spec file.
    pub fn load(path: &Path) -> Result<Spec, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Spec {
            path: path.to_path_buf(),
            message: format!("read: {e}"),
        })?;
        Spec::parse(&text, path)
    }

    /// Parses and checks spec text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Spec, Error> {
        let spec_err = |message: String| Error::Spec {
            path: path.to_path_buf(),
            message,
        };
        let spec: Spec = yaml_serde::from_str(text).map_err(|e| spec_err(e.to_string()))?;
        spec.check().map_err(spec_err)?;
        Ok(spec)
    }

    /// Checks everything that can be checked without the host's files.
    pub fn check(&self) -> Result<(), String> {
        if !valid_name(&self.repository) {
            return Err(format!(
                "repository {:?} is not a valid name",
                self.repository
            ));
        }
        if let Some(version) = &self.version
            && !valid_tag(version)
        {
            return Err(format!("version {version:?} is not a valid tag"));
        }
        if self.images.is_empty() {
            return Err("has no images".into());
        }
        check_entries(&self.base).map_err(|e| format!("base: {e}"))?;
        for (name, image) in &self.images {
            let err = |e: String| format!("image {name}: {e}");
            if !valid_name(name) {
                return Err(err(
                    "the name is not lowercase letters, digits, . _ -".into()
                ));
            }
            if image.entrypoint.is_empty() && image.cmd.is_empty() {
                return Err(err("needs an entrypoint or a cmd".into()));
            }
            if !image.workdir.starts_with('/') {
                return Err(err(format!("workdir {:?} is not absolute", image.workdir)));
            }
            for port in &image.ports {
                exposed_port(port).map_err(err)?;
            }
            for key in self.env.keys().chain(image.env.keys()) {
                if key.is_empty() || key.contains('=') {
                    return Err(err(format!("env name {key:?} is empty or has a =")));
                }
            }
            if image.layers.is_empty() {
                return Err(err("has no layers".into()));
            }
            let mut layer_names = BTreeSet::new();
            for layer in &image.layers {
                if !layer_names.insert(layer.name.as_str()) {
                    return Err(err(format!("two layers are named {:?}", layer.name)));
                }
                check_entries(&layer.files)
                    .map_err(|e| err(format!("layer {}: {e}", layer.name)))?;
            }
        }
        Ok(())
    }

    /// The version images are tagged with: the spec's, else `default`.
    pub fn version_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.version.as_deref().unwrap_or(default)
    }
}

fn check_entries(entries: &[Entry]) -> Result<(), String> {
    let mut paths = BTreeSet::new();
    for entry in entries {
        let rel = relative_image_path(&entry.path)?;
        let err = |e: String| format!("{}: {e}", entry.path);
        if !paths.insert(rel) {
            return Err(err("listed twice".into()));
        }
        let source = entry.source().map_err(err)?;
        entry.mode_bits().map_err(err)?;
        entry.owner_ids().map_err(err)?;
        if (entry.libs || entry.strip) && !matches!(source, Source::Host(_)) {
            return Err(err(
                "libs and strip are for files taken from the host".into()
            ));
        }
        if let Source::Link(target) = source
            && (target.is_empty() || target.contains('\0'))
        {
            return Err(err("link target is empty or has a NUL byte".into()));
        }
    }
    Ok(())
}

/// A host path from an expanded `from:`, relative ones against the spec's directory.
pub fn host_path(spec_dir: &Path, expanded: &str) -> PathBuf {
    let path = Path::new(expanded);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        spec_dir.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
base:
  - {path: /etc/passwd, content: "root:x:0:0::/:/sbin/nologin\n"}
  - {path: /tmp, dir: true, mode: "1777"}
images:
  one:
    entrypoint: [/bin/one]
    ports: ["80", "53/udp"]
    layers:
      - name: bin
        files:
          - {path: /bin/one, from: "${PROFILE_DIR}/one", libs: true}
          - {path: /bin/two, link: one}
"#;

    fn parse(text: &str) -> Result<Spec, String> {
        Spec::parse(text, Path::new("t.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_a_minimal_spec_with_defaults() {
        let spec = parse(MINIMAL).unwrap();
        assert_eq!(spec.registry, "docker.io");
        assert_eq!(spec.repository, "mesh");
        assert_eq!(spec.version_or("0.1.0"), "0.1.0");
        let one = &spec.images["one"];
        assert_eq!(one.workdir, "/");
        assert_eq!(spec.base[1].mode_bits().unwrap(), Some(0o1777));
        assert_eq!(
            one.layers[0].files[0].source().unwrap(),
            Source::Host("${PROFILE_DIR}/one")
        );
    }

    #[test]
    fn refuses_what_cannot_build() {
        let cases = [
            ("images: {}", "has no images"),
            (
                "images: {one: {entrypoint: [/x], layers: [{name: a, files: [{path: x, dir: true}]}]}}",
                "is not absolute",
            ),
            (
                "images: {one: {entrypoint: [/x], layers: [{name: a, files: [{path: /a/../b, dir: true}]}]}}",
                "not normalized",
            ),
            (
                "images: {one: {entrypoint: [/x], layers: [{name: a, files: [{path: /a}]}]}}",
                "needs one of",
            ),
            (
                "images: {one: {entrypoint: [/x], layers: [{name: a, files: [{path: /a, dir: true, link: b}]}]}}",
                "more than one",
            ),
            (
                "images: {one: {entrypoint: [/x], layers: [{name: a, files: [{path: /a, dir: true, mode: '999'}]}]}}",
                "not octal",
            ),
            (
                "images: {one: {entrypoint: [/x], layers: [{name: a, files: [{path: /a, dir: true, owner: me}]}]}}",
                "UID:GID",
            ),
            (
                "images: {one: {entrypoint: [/x], ports: ['http'], layers: [{name: a, files: [{path: /a, dir: true}]}]}}",
                "port",
            ),
            (
                "images: {One: {entrypoint: [/x], layers: [{name: a, files: [{path: /a, dir: true}]}]}}",
                "lowercase",
            ),
            ("images: {one: {layers: []}}", "entrypoint"),
            (
                "images: {one: {entrypoint: [/x], layers: [{name: a, files: [{path: /a, content: x, libs: true}]}]}}",
                "libs and strip",
            ),
            (
                "images: {one: {entrypoint: [/x], layerz: []}}",
                "unknown field",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err} (wanted {want})");
            assert!(err.starts_with("spec t.yaml: "), "{err}");
        }
    }

    #[test]
    fn modes_owners_ports_and_names() {
        assert_eq!(parse_mode("0755").unwrap(), 0o755);
        assert_eq!(parse_mode("0o644").unwrap(), 0o644);
        assert!(parse_mode("").is_err());
        assert!(parse_mode("17777").is_err());
        assert_eq!(parse_owner("1337:1337").unwrap(), (1337, 1337));
        assert!(parse_owner("1337").is_err());
        assert_eq!(exposed_port("9080").unwrap(), "9080/tcp");
        assert_eq!(exposed_port("53/udp").unwrap(), "53/udp");
        assert!(exposed_port("0").is_err());
        assert!(exposed_port("53/xdp").is_err());
        assert!(valid_name("mesh-app") && !valid_name("-x") && !valid_name(""));
        assert!(valid_tag("0.1.0") && !valid_tag(".x") && !valid_tag("a/b"));
        assert_eq!(relative_image_path("/usr/bin").unwrap(), "usr/bin");
        assert!(relative_image_path("/usr/bin/").is_err());
        assert!(relative_image_path("/").is_err());
    }
}
