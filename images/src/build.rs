//! Building images: the spec's entries resolved on this host, written as layers (the base,
//! the shared libraries, then the image's own), the config, and one archive per image.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::archive::{self, Archive};
use crate::error::Error;
use crate::expand::Vars;
use crate::layer::{self, Blob, Item, Kind, Layer};
use crate::libs;
use crate::spec::{self, Entry, ImageSpec, Source, Spec};

/// Which cargo profile's binaries `${PROFILE_DIR}` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    Dev,
    Release,
}

impl Profile {
    /// Cargo's output directory of the profile (`debug` for dev).
    pub fn dir_name(self) -> &'static str {
        match self {
            Profile::Dev => "debug",
            Profile::Release => "release",
        }
    }
}

/// What to build, and from where.
#[derive(Debug, Clone)]
pub struct Options {
    pub spec: PathBuf,
    pub out: PathBuf,
    pub profile: Profile,
    /// Cargo's target directory; by default `$CARGO_TARGET_DIR`, else `target` beside the
    /// `Cargo.lock` found above the spec.
    pub target_dir: Option<PathBuf>,
    /// The images to build; every image of the spec when empty.
    pub names: Vec<String>,
    /// Variables for `${...}`; `None` takes the process environment.
    pub vars: Option<BTreeMap<String, String>>,
    /// Seconds since the epoch for every mtime and `created` (`SOURCE_DATE_EPOCH`).
    pub epoch: u64,
    /// The version when the spec sets none.
    pub default_version: String,
    /// Whether `strip: true` entries are stripped (when `strip` is installed).
    pub strip: bool,
}

/// One image built.
#[derive(Debug, Clone)]
pub struct Built {
    pub name: String,
    /// `REPOSITORY/NAME:VERSION`.
    pub reference: String,
    pub layers: usize,
    /// The compressed layers' total size.
    pub compressed_size: u64,
    /// The uncompressed layers' total size.
    pub uncompressed_size: u64,
    pub archive: PathBuf,
    pub archive_size: u64,
    pub manifest_digest: String,
    /// The archive was already there with the same bytes and was left as it was.
    pub unchanged: bool,
}

/// Builds the images `options` asks for; the images that fail are all reported together,
/// after the others are built.
pub fn build(options: &Options) -> Result<Vec<Built>, Error> {
    let spec = Spec::load(&options.spec)?;
    let spec_dir = options
        .spec
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let spec_dir = if spec_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        spec_dir
    };
    let names = if options.names.is_empty() {
        spec.images.keys().cloned().collect()
    } else {
        for name in &options.names {
            if !spec.images.contains_key(name) {
                return Err(Error::UnknownImage {
                    name: name.clone(),
                    spec: options.spec.clone(),
                    known: spec.images.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            }
        }
        options.names.clone()
    };
    let version = spec.version_or(&options.default_version).to_string();
    if !spec::valid_tag(&version) {
        return Err(Error::Spec {
            path: options.spec.clone(),
            message: format!("version {version:?} is not a valid tag"),
        });
    }
    let target_dir = match &options.target_dir {
        Some(dir) => dir.clone(),
        None => default_target_dir(&spec_dir),
    };
    let mut own = BTreeMap::new();
    own.insert(
        "PROFILE_DIR".to_string(),
        target_dir
            .join(options.profile.dir_name())
            .display()
            .to_string(),
    );
    own.insert("VERSION".to_string(), version.clone());
    let vars = match &options.vars {
        Some(vars) => {
            let mut all = vars.clone();
            all.extend(own);
            Vars::only(all)
        }
        None => Vars::from_env(own),
    };
    std::fs::create_dir_all(&options.out)
        .map_err(|e| Error::io(format!("create {}", options.out.display()), e))?;
    let work = tempfile::Builder::new()
        .prefix(".mesh-image-")
        .tempdir_in(&options.out)
        .map_err(|e| {
            Error::io(
                format!("temporary directory in {}", options.out.display()),
                e,
            )
        })?;
    let strip = options.strip && libs::have_strip();
    if options.strip && !strip {
        eprintln!("mesh-image: strip (binutils) is not installed: binaries are not stripped");
    }
    let mut builder = Builder {
        spec: &spec,
        spec_dir: &spec_dir,
        vars: &vars,
        version: &version,
        options,
        work: work.path(),
        strip,
        layers: HashMap::new(),
        stripped: HashMap::new(),
        next: 0,
    };
    let mut built = Vec::new();
    let mut failed = Vec::new();
    for name in &names {
        match builder.image(name) {
            Ok(image) => built.push(image),
            Err(e) => failed.push(e),
        }
    }
    if failed.is_empty() {
        Ok(built)
    } else if failed.len() == 1 && built.is_empty() {
        Err(failed.remove(0))
    } else {
        for image in &built {
            eprintln!(
                "mesh-image: built {} ({})",
                image.reference,
                image.archive.display()
            );
        }
        Err(Error::Failed {
            failed,
            total: names.len(),
        })
    }
}

/// `target` beside the nearest `Cargo.lock` above `dir`, unless `$CARGO_TARGET_DIR` is set.
fn default_target_dir(dir: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let start = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut at = Some(start.as_path());
    while let Some(d) = at {
        if d.join("Cargo.lock").is_file() {
            return d.join("target");
        }
        at = d.parent();
    }
    PathBuf::from("target")
}

struct Builder<'a> {
    spec: &'a Spec,
    spec_dir: &'a Path,
    vars: &'a Vars,
    version: &'a str,
    options: &'a Options,
    work: &'a Path,
    strip: bool,
    /// Layers written in this run, by [`Layer::cache_key`]: images share them.
    layers: HashMap<String, Blob>,
    /// Stripped copies, by source path.
    stripped: HashMap<PathBuf, PathBuf>,
    next: usize,
}

/// One layer to write, with its history line.
struct Planned {
    created_by: String,
    layer: Layer,
}

impl Builder<'_> {
    fn image(&mut self, name: &str) -> Result<Built, Error> {
        let image = &self.spec.images[name];
        let mut libs = BTreeSet::new();
        let mut planned = Vec::new();
        let base = self.resolve(name, &self.spec.base, &mut libs)?;
        if !base.is_empty() {
            planned.push(Planned {
                created_by: "mesh-image: base (users, groups, nsswitch.conf, /tmp, /run)".into(),
                layer: base,
            });
        }
        let mut own = Vec::new();
        for spec_layer in &image.layers {
            let layer = self.resolve(name, &spec_layer.files, &mut libs)?;
            own.push(Planned {
                created_by: format!("mesh-image: {}", spec_layer.name),
                layer,
            });
        }
        if !libs.is_empty() {
            let mut layer = Layer::default();
            for lib in &libs {
                let meta = std::fs::metadata(lib).map_err(|e| Error::File {
                    image: name.into(),
                    file: lib.display().to_string(),
                    step: "shared library",
                    message: e.to_string(),
                })?;
                let path = lib.to_string_lossy().trim_start_matches('/').to_string();
                let item = Item {
                    kind: Kind::HostFile(lib.clone()),
                    mode: permission_bits(&meta),
                    uid: 0,
                    gid: 0,
                };
                layer.add(path, item).map_err(|message| Error::File {
                    image: name.into(),
                    file: lib.display().to_string(),
                    step: "shared library",
                    message,
                })?;
            }
            layer.add_parents();
            planned.push(Planned {
                created_by: "mesh-image: shared libraries and the dynamic loader (ldd)".into(),
                layer,
            });
        }
        planned.extend(own);

        let mut blobs = Vec::new();
        for plan in &planned {
            blobs.push(self.write(name, &plan.layer)?);
        }
        let config = self.config(name, image, &planned, &blobs);
        let reference = format!("{}/{name}:{}", self.spec.repository, self.version);
        let containerd_name = format!("{}/{reference}", self.spec.registry);
        let final_path = self.options.out.join(format!("{name}.tar"));
        let tmp = self.options.out.join(format!(".{name}.tar.tmp"));
        let image_err = |step: &str, source| Error::Image {
            image: name.into(),
            step: step.into(),
            source,
        };
        let layer_refs: Vec<&Blob> = blobs.iter().collect();
        let written = archive::write_archive(
            &Archive {
                repo_tag: &reference,
                containerd_name: &containerd_name,
                tag: self.version,
                config: &config,
                layers: &layer_refs,
                mtime: self.options.epoch,
            },
            &tmp,
        )
        .map_err(|e| {
            // No half-written archive is left behind.
            let _ = std::fs::remove_file(&tmp);
            image_err(&format!("write {}", tmp.display()), e)
        })?;
        let unchanged = same_file(&tmp, &final_path)
            .map_err(|e| image_err(&format!("compare with {}", final_path.display()), e))?;
        if unchanged {
            std::fs::remove_file(&tmp)
                .map_err(|e| image_err(&format!("remove {}", tmp.display()), e))?;
        } else {
            std::fs::rename(&tmp, &final_path)
                .map_err(|e| image_err(&format!("rename to {}", final_path.display()), e))?;
        }
        let archive_size = std::fs::metadata(&final_path)
            .map_err(|e| image_err(&format!("stat {}", final_path.display()), e))?
            .len();
        Ok(Built {
            name: name.into(),
            reference,
            layers: blobs.len(),
            compressed_size: blobs.iter().map(|b| b.size).sum(),
            uncompressed_size: blobs.iter().map(|b| b.uncompressed_size).sum(),
            archive: final_path,
            archive_size,
            manifest_digest: written.manifest_digest,
            unchanged,
        })
    }

    /// The image config JSON (OCI image config, which Docker reads too).
    fn config(
        &self,
        name: &str,
        image: &ImageSpec,
        planned: &[Planned],
        blobs: &[Blob],
    ) -> Vec<u8> {
        let created = rfc3339(self.options.epoch);
        let mut env = self.spec.env.clone();
        env.extend(image.env.clone());
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut labels = BTreeMap::new();
        labels.insert(
            "org.opencontainers.image.title".to_string(),
            name.to_string(),
        );
        labels.insert(
            "org.opencontainers.image.version".to_string(),
            self.version.to_string(),
        );
        if let Some(description) = &image.description {
            labels.insert(
                "org.opencontainers.image.description".to_string(),
                description.trim().to_string(),
            );
        }
        labels.extend(self.spec.labels.clone());
        labels.extend(image.labels.clone());
        let ports: BTreeMap<String, serde_json::Value> = image
            .ports
            .iter()
            .filter_map(|p| spec::exposed_port(p).ok())
            .map(|p| (p, json!({})))
            .collect();
        let mut config = serde_json::Map::new();
        if let Some(user) = &image.user {
            config.insert("User".into(), json!(user));
        }
        if !ports.is_empty() {
            config.insert("ExposedPorts".into(), json!(ports));
        }
        config.insert("Env".into(), json!(env));
        if !image.entrypoint.is_empty() {
            config.insert("Entrypoint".into(), json!(image.entrypoint));
        }
        if !image.cmd.is_empty() {
            config.insert("Cmd".into(), json!(image.cmd));
        }
        config.insert("WorkingDir".into(), json!(image.workdir));
        config.insert("Labels".into(), json!(labels));
        let history: Vec<_> = planned
            .iter()
            .map(|p| json!({"created": created, "created_by": p.created_by}))
            .collect();
        let value = json!({
            "created": created,
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {
                "type": "layers",
                "diff_ids": blobs.iter().map(|b| b.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": history,
        });
        serde_json::to_vec(&value).unwrap_or_default()
    }

    /// Writes a layer, or reuses the same layer written for an earlier image of this run.
    fn write(&mut self, image: &str, layer: &Layer) -> Result<Blob, Error> {
        let image_err = |step: String, source| Error::Image {
            image: image.into(),
            step,
            source,
        };
        let key = layer
            .cache_key()
            .map_err(|e| image_err("read the layer's files".into(), e))?;
        if let Some(blob) = self.layers.get(&key) {
            return Ok(blob.clone());
        }
        self.next += 1;
        let dst = self.work.join(format!("layer-{}", self.next));
        let blob = layer::write_layer(layer, &dst, self.options.epoch)
            .map_err(|e| image_err("write a layer".into(), e))?;
        self.layers.insert(key, blob.clone());
        Ok(blob)
    }

    /// The layer of `entries`, adding the shared libraries they need to `libs`.
    fn resolve(
        &mut self,
        image: &str,
        entries: &[Entry],
        libs: &mut BTreeSet<PathBuf>,
    ) -> Result<Layer, Error> {
        let mut layer = Layer::default();
        for entry in entries {
            self.resolve_entry(image, entry, &mut layer, libs)?;
        }
        layer.add_parents();
        Ok(layer)
    }

    fn resolve_entry(
        &mut self,
        image: &str,
        entry: &Entry,
        layer: &mut Layer,
        libs: &mut BTreeSet<PathBuf>,
    ) -> Result<(), Error> {
        let fail = |step: &'static str, message: String| Error::File {
            image: image.into(),
            file: entry.label().into(),
            step,
            message,
        };
        let rel = spec::relative_image_path(&entry.path).map_err(|m| fail("path", m))?;
        let mode = entry.mode_bits().map_err(|m| fail("mode", m))?;
        let (uid, gid) = entry.owner_ids().map_err(|m| fail("owner", m))?;
        let add = |layer: &mut Layer, path: String, kind: Kind, mode: u32| {
            layer
                .add(
                    path,
                    Item {
                        kind,
                        mode,
                        uid,
                        gid,
                    },
                )
                .map_err(|m| fail("add", m))
        };
        match entry.source().map_err(|m| fail("source", m))? {
            Source::Content(text) => add(
                layer,
                rel,
                Kind::Bytes(text.as_bytes().to_vec()),
                mode.unwrap_or(0o644),
            ),
            Source::Link(target) => add(layer, rel, Kind::Symlink(target.into()), 0o777),
            Source::Dir => add(layer, rel, Kind::Dir, mode.unwrap_or(0o755)),
            Source::Host(from) => {
                let with_hint = |message: String| match &entry.hint {
                    Some(hint) => format!("{message} ({})", hint.trim()),
                    None => message,
                };
                let expanded = self
                    .vars
                    .expand(from)
                    .map_err(|m| fail("expand", with_hint(m)))?;
                let src = spec::host_path(self.spec_dir, &expanded);
                let meta = std::fs::metadata(&src).map_err(|e| {
                    let message = if e.kind() == std::io::ErrorKind::NotFound {
                        format!("not found: {}", src.display())
                    } else {
                        format!("{}: {e}", src.display())
                    };
                    fail("source", with_hint(message))
                })?;
                if meta.is_dir() {
                    if entry.strip {
                        return Err(fail(
                            "strip",
                            "strip is for single files, not directories".into(),
                        ));
                    }
                    add(
                        layer,
                        rel.clone(),
                        Kind::Dir,
                        mode.unwrap_or(permission_bits(&meta)),
                    )?;
                    let mut files = Vec::new();
                    walk(&src, &rel, &mut files).map_err(|m| fail("read directory", m))?;
                    for (path, host, kind, bits) in files {
                        if entry.libs && kind == Kind::HostFile(host.clone()) {
                            self.add_libs(&host, false, libs)
                                .map_err(|m| fail("libs", m))?;
                        }
                        add(layer, path, kind, bits)?;
                    }
                    Ok(())
                } else if meta.is_file() {
                    if entry.libs {
                        self.add_libs(&src, true, libs)
                            .map_err(|m| fail("libs", m))?;
                    }
                    let from = if entry.strip && self.strip {
                        self.stripped(&src).map_err(|m| fail("strip", m))?
                    } else {
                        src
                    };
                    add(
                        layer,
                        rel,
                        Kind::HostFile(from),
                        mode.unwrap_or(permission_bits(&meta)),
                    )
                } else {
                    Err(fail(
                        "source",
                        format!("{} is neither a file nor a directory", src.display()),
                    ))
                }
            }
        }
    }

    /// Adds the shared libraries of `file`; a non-ELF file is an error when `must_be_elf`
    /// and skipped otherwise (a directory's scripts and data).
    fn add_libs(
        &self,
        file: &Path,
        must_be_elf: bool,
        libs: &mut BTreeSet<PathBuf>,
    ) -> Result<(), String> {
        let elf = libs::is_elf(file).map_err(|e| format!("{}: {e}", file.display()))?;
        if !elf {
            return if must_be_elf {
                Err(format!("{} is not an ELF file", file.display()))
            } else {
                Ok(())
            };
        }
        let found = libs::shared_libraries(file).map_err(|m| format!("{}: {m}", file.display()))?;
        libs.extend(found);
        Ok(())
    }

    /// A stripped copy of `src` in the run's work directory (one per source).
    fn stripped(&mut self, src: &Path) -> Result<PathBuf, String> {
        if let Some(done) = self.stripped.get(src) {
            return Ok(done.clone());
        }
        self.next += 1;
        let dst = self.work.join(format!("stripped-{}", self.next));
        libs::strip_debug(src, &dst)?;
        self.stripped.insert(src.to_path_buf(), dst.clone());
        Ok(dst)
    }
}

/// The permission bits (with setuid, setgid and sticky) of a host file.
fn permission_bits(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

type Walked = (String, PathBuf, Kind, u32);

/// Everything under host directory `dir` (sorted, symlinks kept as symlinks), as paths under
/// image path `rel`.
fn walk(dir: &Path, rel: &str, out: &mut Vec<Walked>) -> Result<(), String> {
    let read = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut children = Vec::new();
    for child in read {
        let child = child.map_err(|e| format!("{}: {e}", dir.display()))?;
        children.push(child.path());
    }
    children.sort();
    for host in children {
        let Some(file_name) = host.file_name().and_then(|n| n.to_str()) else {
            return Err(format!("{}: the name is not UTF-8", host.display()));
        };
        let path = format!("{rel}/{file_name}");
        let meta =
            std::fs::symlink_metadata(&host).map_err(|e| format!("{}: {e}", host.display()))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target =
                std::fs::read_link(&host).map_err(|e| format!("{}: {e}", host.display()))?;
            let Some(target) = target.to_str() else {
                return Err(format!("{}: the link target is not UTF-8", host.display()));
            };
            out.push((path, host.clone(), Kind::Symlink(target.into()), 0o777));
        } else if kind.is_dir() {
            out.push((
                path.clone(),
                host.clone(),
                Kind::Dir,
                permission_bits(&meta),
            ));
            walk(&host, &path, out)?;
        } else if kind.is_file() {
            out.push((
                path,
                host.clone(),
                Kind::HostFile(host.clone()),
                permission_bits(&meta),
            ));
        } else {
            return Err(format!(
                "{}: not a file, directory or symlink",
                host.display()
            ));
        }
    }
    Ok(())
}

/// Whether `a` and `b` have the same bytes (`false` when `b` does not exist).
fn same_file(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return Ok(false);
    };
    if ma.len() != mb.len() {
        return Ok(false);
    }
    Ok(file_digest(a)? == file_digest(b)?)
}

fn file_digest(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(layer::hex(&hasher.finalize()))
}

/// RFC 3339 UTC time of seconds since the epoch.
pub fn rfc3339(epoch: u64) -> String {
    let days = epoch / 86_400;
    let secs = epoch % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The proleptic Gregorian date of a count of days since 1970-01-01, by 400-year eras
/// (146097 days each) counted from 0000-03-01 so the leap day ends each year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// A size for people: bytes, KiB or MiB.
pub fn human_size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{:.1} MiB", b / (KIB * KIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(human_size(10), "10 B");
        assert_eq!(human_size(2048), "2.0 KiB");
        assert_eq!(human_size(3 * 1024 * 1024 + 512 * 1024), "3.5 MiB");
    }
}
