//! The plugin folder: `config.json` and a minimal `rootfs/` holding the s3vol binary, the
//! shared libraries it and `fusermount3` load (as `ldd` lists them), CA certificates, and the
//! folders Docker and s3vol expect. No image, no registry: built from this host's files.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{paths, s3vol_config, to_json};

/// `fusermount3` clears dead FUSE mounts left by a crashed plugin (`fusermount3 -uz`).
const FUSERMOUNT: &str = "/usr/bin/fusermount3";
/// The system's CA bundle (Debian's ca-certificates), for HTTPS endpoints.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Assemble the plugin folder `out` (replacing one that is there) around `binary`.
pub fn assemble(binary: &Path, out: &Path) -> Result<(), String> {
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| format!("cannot clear {}: {e}", out.display()))?;
    }
    let rootfs = out.join("rootfs");
    for dir in [
        "run/docker/plugins",
        "tmp",
        "etc",
        "dev",
        "proc",
        "sys",
        paths::MOUNT_ROOT.trim_start_matches('/'),
        paths::STATE_DIR.trim_start_matches('/'),
        paths::CACHE_DIR.trim_start_matches('/'),
        paths::CONFIG_DIR.trim_start_matches('/'),
    ] {
        mkdir(&rootfs.join(dir))?;
    }
    let bundled = rootfs.join(paths::BINARY.trim_start_matches('/'));
    copy_file(binary, &bundled)?;
    strip_debug_info(&bundled);
    require(FUSERMOUNT, "fuse3")?;
    copy_file(
        Path::new(FUSERMOUNT),
        &in_root(&rootfs, Path::new(FUSERMOUNT)),
    )?;
    for program in [binary, Path::new(FUSERMOUNT)] {
        for library in shared_libraries(program)? {
            copy_file(&library, &in_root(&rootfs, &library))?;
        }
    }
    require(CA_BUNDLE, "ca-certificates")?;
    copy_file(
        Path::new(CA_BUNDLE),
        &in_root(&rootfs, Path::new(CA_BUNDLE)),
    )?;
    write(&rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/false\n")?;
    write(&rootfs.join("etc/group"), "root:x:0:\n")?;
    write(&out.join("config.json"), &to_json(&s3vol_config()))?;
    Ok(())
}

/// Drop the line tables the release profile keeps for profiling (~150 MiB -> ~30 MiB);
/// symbols stay, so backtraces still name functions. Without `strip` (binutils), keep all.
fn strip_debug_info(binary: &Path) {
    match Command::new("strip")
        .arg("--strip-debug")
        .arg(binary)
        .status()
    {
        Ok(status) if status.success() => {}
        _ => eprintln!(
            "note: could not strip {}; the plugin is just bigger",
            binary.display()
        ),
    }
}

/// A host file the bundle copies, with the Debian package that provides it.
fn require(file: &str, package: &str) -> Result<(), String> {
    if Path::new(file).exists() {
        Ok(())
    } else {
        Err(format!(
            "{file} is missing: install it with `apt-get install -y {package}`"
        ))
    }
}

fn in_root(rootfs: &Path, absolute: &Path) -> PathBuf {
    rootfs.join(absolute.strip_prefix("/").unwrap_or(absolute))
}

fn mkdir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn write(file: &Path, text: &str) -> Result<(), String> {
    std::fs::write(file, text).map_err(|e| format!("cannot write {}: {e}", file.display()))
}

/// Copy the file `from` resolves to (libraries are usually symlinks), keeping its mode.
fn copy_file(from: &Path, to: &Path) -> Result<(), String> {
    if let Some(dir) = to.parent() {
        mkdir(dir)?;
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))
}

/// The shared libraries `program` loads, the dynamic loader included, by `ldd`.
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| format!("cannot run ldd: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary: "not a dynamic executable".
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
            || text.contains("statically linked")
        {
            return Ok(Vec::new());
        }
        return Err(format!(
            "ldd {} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_ldd(&text)
}

/// Paths in `ldd` output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the kernel's vdso has no file.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libraries = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(format!("a library is missing: {line}"));
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_library_files() {
        let text = "\tlinux-vdso.so.1 (0x00007f6219666000)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f6219634000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f621673e000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f6219668000)\n";
        let libraries = parse_ldd(text).unwrap();
        assert_eq!(
            libraries,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(err.contains("libfoo"), "{err}");
    }

    #[test]
    fn the_bundle_holds_config_binary_libraries_and_certificates() {
        if !Path::new(FUSERMOUNT).exists() || !Path::new(CA_BUNDLE).exists() {
            panic!("this test needs fuse3 and ca-certificates (.ci/run installs them)");
        }
        let dir = tempfile::tempdir().unwrap();
        // Any dynamic program stands in for s3vol here.
        let binary = Path::new("/bin/ls");
        assemble(binary, &dir.path().join("bundle")).unwrap();
        let rootfs = dir.path().join("bundle/rootfs");
        for file in [
            "usr/local/bin/s3vol",
            "usr/bin/fusermount3",
            "etc/ssl/certs/ca-certificates.crt",
            "lib64/ld-linux-x86-64.so.2",
        ] {
            assert!(rootfs.join(file).is_file(), "{file} missing");
        }
        for lib in shared_libraries(binary).unwrap() {
            assert!(
                in_root(&rootfs, &lib).is_file(),
                "{} missing",
                lib.display()
            );
        }
        assert!(rootfs.join("run/docker/plugins").is_dir());
        assert!(rootfs.join("var/lib/s3vol/mnt").is_dir());
        let config = std::fs::read_to_string(dir.path().join("bundle/config.json")).unwrap();
        assert_eq!(config, to_json(&s3vol_config()));
        // The copied s3vol runs inside its rootfs with only the copied libraries.
        let out = Command::new("chroot")
            .arg(&rootfs)
            .args(["/usr/local/bin/s3vol", "--version"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
