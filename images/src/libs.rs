//! The shared libraries a dynamic ELF file needs, as the host's `ldd` resolves them, and
//! `strip` for copies of our own binaries.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether `path` starts with the ELF magic number.
pub fn is_elf(path: &Path) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path)?;
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(magic == *b"\x7fELF"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The absolute paths of every shared object `path` loads (the whole closure, the dynamic
/// loader included), from `ldd`; none for a static binary.
pub fn shared_libraries(path: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd")
        .arg(path)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| format!("running ldd: {e} (ldd comes with libc-bin)"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.contains("not a dynamic executable") || stderr.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(format!("ldd failed ({}): {}", out.status, stderr.trim()));
    }
    parse_ldd(&stdout)
}

/// Parses `ldd`'s output: `name => /path (addr)`, `/loader (addr)`, the vDSO (skipped),
/// `statically linked` (nothing) and `name => not found` (an error).
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    let mut missing = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == "statically linked" {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    missing.push(name.trim().to_string());
                    continue;
                }
                target
            }
            None => line,
        };
        // What remains is "/path (0xaddr)" or, for the vDSO, "linux-vdso.so.1 (0xaddr)".
        let path = target.split(" (").next().unwrap_or(target).trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "shared libraries not found on this host: {}",
            missing.join(", ")
        ));
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// Whether `strip` (binutils) is installed.
pub fn have_strip() -> bool {
    Command::new("strip")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Writes `src` without its debug sections to `dst` (`strip --strip-debug`: the symbol table
/// stays, so backtraces still name functions).
pub fn strip_debug(src: &Path, dst: &Path) -> Result<(), String> {
    let out = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(dst)
        .arg(src)
        .output()
        .map_err(|e| format!("running strip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "strip failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        let err = parse_ldd("\tlibfoo.so.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n")
            .unwrap_err();
        assert!(err.contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn finds_the_libraries_of_a_host_binary() {
        // ldd is part of every glibc system this builds on; /bin/sh is dynamic there.
        let Ok(sh) = std::fs::canonicalize("/bin/sh") else {
            return;
        };
        let libs = shared_libraries(&sh).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
        assert!(is_elf(&sh).unwrap());
    }
}
