//! Layers: a sorted set of files, directories and symlinks, written as a deterministic
//! gzip-compressed tar (fixed mtimes, sorted entries, explicit modes and owners), with the
//! digest of the compressed blob and the diff id (digest of the uncompressed tar).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

/// What one path of a layer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file with the bytes of a host file (read when the layer is written).
    HostFile(PathBuf),
    /// A regular file with these bytes.
    Bytes(Vec<u8>),
    Dir,
    Symlink(String),
}

/// One path of a layer with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

impl Item {
    /// A root-owned directory with mode 0755, as implied parents are.
    pub fn parent_dir() -> Item {
        Item {
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
        }
    }
}

/// The contents of one layer, keyed by path without the leading `/`.
#[derive(Debug, Clone, Default)]
pub struct Layer {
    items: BTreeMap<String, Item>,
}

impl Layer {
    /// Adds `item` at `path`; a path listed twice is an error unless both are directories
    /// (the explicit one's metadata wins over an implied parent's).
    pub fn add(&mut self, path: String, item: Item) -> Result<(), String> {
        match self.items.get(&path) {
            None => {}
            Some(old) if old.kind == Kind::Dir && item.kind == Kind::Dir => {}
            Some(_) => return Err(format!("/{path} is in this layer twice")),
        }
        self.items.insert(path, item);
        Ok(())
    }

    /// Adds every missing parent directory (root-owned, 0755).
    pub fn add_parents(&mut self) {
        let mut parents = Vec::new();
        for path in self.items.keys() {
            let mut rest = path.as_str();
            while let Some((parent, _)) = rest.rsplit_once('/') {
                if !self.items.contains_key(parent) {
                    parents.push(parent.to_string());
                }
                rest = parent;
            }
        }
        for parent in parents {
            self.items.entry(parent).or_insert_with(Item::parent_dir);
        }
    }

    pub fn items(&self) -> &BTreeMap<String, Item> {
        &self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// A key that is equal for two layers that would be written identically: paths,
    /// metadata, inline bytes, and each host file's path, size and modification time.
    pub fn cache_key(&self) -> io::Result<String> {
        let mut hasher = Sha256::new();
        for (path, item) in &self.items {
            hasher.update(path.as_bytes());
            hasher.update([0]);
            hasher.update(format!("{:o} {} {}", item.mode, item.uid, item.gid));
            match &item.kind {
                Kind::HostFile(src) => {
                    let meta = std::fs::metadata(src)?;
                    let mtime = meta
                        .modified()?
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or(0);
                    hasher.update(format!("f {} {} {mtime}", src.display(), meta.len()));
                }
                Kind::Bytes(bytes) => {
                    hasher.update(format!("b {}", bytes.len()));
                    hasher.update(bytes);
                }
                Kind::Dir => hasher.update("d"),
                Kind::Symlink(target) => hasher.update(format!("l {target}")),
            }
            hasher.update([0]);
        }
        Ok(hex(&hasher.finalize()))
    }
}

/// A written blob (a layer, or the config or manifest JSON).
#[derive(Debug, Clone)]
pub struct Blob {
    /// Where its bytes are now.
    pub file: PathBuf,
    /// `sha256:HEX` of its bytes.
    pub digest: String,
    pub size: u64,
    /// For a layer: `sha256:HEX` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// For a layer: the size of the uncompressed tar.
    pub uncompressed_size: u64,
}

impl Blob {
    /// The digest's hex part, the blob's file name under `blobs/sha256/`.
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    out
}

/// `sha256:HEX` of bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex(&self.hasher.finalize()));
        (self.inner, digest, self.count)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `layer` as a gzip-compressed tar to `dst`; every entry gets `mtime`.
pub fn write_layer(layer: &Layer, dst: &Path, mtime: u64) -> io::Result<Blob> {
    let file = File::create(dst)?;
    let compressed = Hashing::new(BufWriter::with_capacity(1 << 20, file));
    let gzip = GzEncoder::new(compressed, Compression::default());
    let mut tar = tar::Builder::new(Hashing::new(gzip));
    for (path, item) in &layer.items {
        append(&mut tar, path, item, mtime)
            .map_err(|e| io::Error::new(e.kind(), format!("/{path}: {e}")))?;
    }
    let uncompressed = tar.into_inner()?;
    let (gzip, diff_id, uncompressed_size) = uncompressed.finish();
    let compressed = gzip.finish()?;
    let (buffered, digest, size) = compressed.finish();
    let file = buffered
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    Ok(Blob {
        file: dst.to_path_buf(),
        digest,
        size,
        diff_id,
        uncompressed_size,
    })
}

/// A deterministic header: GNU format (long names), the given metadata, no user names.
fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(uid);
    header.set_gid(gid);
    header.set_mtime(mtime);
    header.set_size(0);
    header
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    item: &Item,
    mtime: u64,
) -> io::Result<()> {
    let (uid, gid) = (item.uid, item.gid);
    match &item.kind {
        Kind::Dir => {
            let mut h = header(tar::EntryType::Directory, item.mode, uid, gid, mtime);
            tar.append_data(&mut h, format!("{path}/"), io::empty())
        }
        Kind::Symlink(target) => {
            let mut h = header(tar::EntryType::Symlink, 0o777, uid, gid, mtime);
            tar.append_link(&mut h, path, target)
        }
        Kind::Bytes(bytes) => {
            let mut h = header(tar::EntryType::Regular, item.mode, uid, gid, mtime);
            h.set_size(bytes.len() as u64);
            tar.append_data(&mut h, path, bytes.as_slice())
        }
        Kind::HostFile(src) => {
            let file = File::open(src)?;
            let size = file.metadata()?.len();
            let mut h = header(tar::EntryType::Regular, item.mode, uid, gid, mtime);
            h.set_size(size);
            // Exactly `size` bytes: a file that grew since is cut, one that shrank fails.
            let mut limited = io::Read::take(file, size);
            let mut counted = Counting::new(&mut limited);
            tar.append_data(&mut h, path, &mut counted)?;
            if counted.count != size {
                return Err(io::Error::other(format!(
                    "{} changed while it was read ({} of {size} bytes)",
                    src.display(),
                    counted.count
                )));
            }
            Ok(())
        }
    }
}

/// A reader that counts the bytes it gives.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R> Counting<R> {
    fn new(inner: R) -> Counting<R> {
        Counting { inner, count: 0 }
    }
}

impl<R: io::Read> io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(dir: &Path) -> Layer {
        let host = dir.join("hello");
        std::fs::write(&host, b"hello\n").unwrap();
        let mut layer = Layer::default();
        let file = |kind, mode| Item {
            kind,
            mode,
            uid: 0,
            gid: 0,
        };
        layer
            .add("usr/bin/hello".into(), file(Kind::HostFile(host), 0o755))
            .unwrap();
        layer
            .add(
                "etc/motd".into(),
                file(Kind::Bytes(b"hi\n".to_vec()), 0o644),
            )
            .unwrap();
        layer
            .add(
                "usr/bin/hi".into(),
                file(Kind::Symlink("hello".into()), 0o777),
            )
            .unwrap();
        layer
            .add(
                "tmp".into(),
                Item {
                    kind: Kind::Dir,
                    mode: 0o1777,
                    uid: 0,
                    gid: 0,
                },
            )
            .unwrap();
        layer.add_parents();
        layer
    }

    #[test]
    fn writes_sorted_deterministic_tars_with_parents() {
        let dir = tempfile::tempdir().unwrap();
        let layer = sample(dir.path());
        let a = write_layer(&layer, &dir.path().join("a"), 0).unwrap();
        let b = write_layer(&layer, &dir.path().join("b"), 0).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.diff_id, b.diff_id);
        assert_eq!(
            std::fs::read(&a.file).unwrap(),
            std::fs::read(&b.file).unwrap()
        );
        let gz = std::fs::read(&a.file).unwrap();
        assert_eq!(digest_of(&gz), a.digest);
        assert_eq!(gz.len() as u64, a.size);
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(digest_of(&raw), a.diff_id);
        assert_eq!(raw.len() as u64, a.uncompressed_size);

        let mut archive = tar::Archive::new(raw.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let h = entry.header();
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let mode = h.mode().unwrap();
            assert_eq!(h.mtime().unwrap(), 0);
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            let mut body = String::new();
            entry.read_to_string(&mut body).unwrap();
            seen.push(format!("{name} {mode:o} {body}"));
        }
        assert_eq!(
            seen,
            [
                "etc/ 755 ",
                "etc/motd 644 hi\n",
                "tmp/ 1777 ",
                "usr/ 755 ",
                "usr/bin/ 755 ",
                "usr/bin/hello 755 hello\n",
                "usr/bin/hi 777 ",
            ]
        );
    }

    #[test]
    fn a_path_twice_is_an_error_unless_both_are_directories() {
        let mut layer = Layer::default();
        layer.add("a".into(), Item::parent_dir()).unwrap();
        layer.add("a".into(), Item::parent_dir()).unwrap();
        let file = Item {
            kind: Kind::Bytes(Vec::new()),
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        layer.add("b".into(), file.clone()).unwrap();
        assert!(layer.add("b".into(), file).unwrap_err().contains("twice"));
    }

    #[test]
    fn cache_keys_follow_content_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let layer = sample(dir.path());
        let mut other = layer.clone();
        assert_eq!(layer.cache_key().unwrap(), other.cache_key().unwrap());
        other
            .add(
                "etc/issue".into(),
                Item {
                    kind: Kind::Bytes(b"x".to_vec()),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                },
            )
            .unwrap();
        assert_ne!(layer.cache_key().unwrap(), other.cache_key().unwrap());
    }
}
