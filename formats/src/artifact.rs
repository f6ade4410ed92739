//! An artifact directory (`kiln build -o OUTDIR`): the model file(s), the
//! manifest, the report and the chart, written into a hidden staging
//! directory beside `OUTDIR` and swapped in at the end; sha256 of files.
//! (Which tensors go into which file is the layout pass's decision,
//! `passes::passes::layout`; the split file names and keys are the GGUF
//! container's, `crate::gguf::container`.)
//!
//! What must stay true:
//! - `OUTDIR` holds either its old content or the complete new artifact,
//!   never a mixture: every file is written and fsynced in the staging
//!   directory, which is renamed to `OUTDIR` (the old directory, if any, is
//!   renamed aside first and removed after); dropping a [`Staging`] without
//!   [`Staging::commit`] removes everything it wrote;
//! - an existing `OUTDIR` is replaced only if it is empty or holds a kiln
//!   `manifest.json` (a previous build), never an unrelated directory;
//!   missing parent directories are created when staging starts (after
//!   every check that can refuse the build).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::error::{Error, Result};

/// The manifest file name; its presence marks a directory kiln may replace.
pub const MANIFEST: &str = "manifest.json";

/// A staging directory for `out`.
#[derive(Debug)]
pub struct Staging {
    dir: TempDir,
    out: PathBuf,
}

/// Refuse an `OUTDIR` kiln must not replace.
pub fn check_outdir(out: &Path) -> Result<()> {
    let parent = crate::atomic::parent_dir(out);
    // Missing parents are created when writing starts; the nearest existing
    // ancestor must be a directory.
    let mut anc = parent.as_path();
    while !anc.exists() {
        match anc.parent() {
            Some(p) if !p.as_os_str().is_empty() => anc = p,
            _ => break,
        }
    }
    if anc.exists() && !anc.is_dir() {
        return Err(Error::output(
            out,
            format!("{} is not a directory", anc.display()),
        ));
    }
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::output(
                out,
                "exists and is not a directory; kiln build writes a directory of files",
            ));
        }
        let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
        let empty = entries.next().is_none();
        if !empty && !out.join(MANIFEST).is_file() {
            return Err(Error::output(
                out,
                "exists, is not empty and holds no kiln manifest.json: refusing to replace it; choose a new directory",
            ));
        }
    }
    Ok(())
}

impl Staging {
    /// A hidden directory beside `out` (`.NAME.XXXX.kiln-tmp`).
    pub fn new(out: &Path) -> Result<Staging> {
        check_outdir(out)?;
        let parent = crate::atomic::parent_dir(out);
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let prefix = format!(
            ".{}.",
            out.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".kiln-tmp")
            .tempdir_in(&parent)
            .map_err(|e| Error::io(&parent, e))?;
        Ok(Staging {
            dir,
            out: out.to_path_buf(),
        })
    }

    /// The staging directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where a file named `name` is staged.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write a small file (manifest, report, chart) and fsync it.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let p = self.path(name);
        let mut f = std::fs::File::create(&p).map_err(|e| Error::io(&p, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&p, e))?;
        f.sync_all().map_err(|e| Error::io(&p, e))
    }

    /// Swap the staged directory in for `out`.
    pub fn commit(self) -> Result<()> {
        let staged = self.dir.keep();
        let fail = |e: std::io::Error, p: &Path| {
            let _ = std::fs::remove_dir_all(&staged);
            Error::io(p, e)
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755));
        }
        if let Ok(d) = std::fs::File::open(&staged) {
            let _ = d.sync_all();
        }
        let aside = if self.out.exists() {
            check_outdir(&self.out).inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&staged);
            })?;
            let aside = staged.with_extension("kiln-old");
            std::fs::rename(&self.out, &aside).map_err(|e| fail(e, &self.out))?;
            Some(aside)
        } else {
            None
        };
        if let Err(e) = std::fs::rename(&staged, &self.out) {
            if let Some(a) = &aside {
                let _ = std::fs::rename(a, &self.out);
            }
            return Err(fail(e, &self.out));
        }
        if let Some(a) = aside {
            let _ = std::fs::remove_dir_all(a);
        }
        if let Ok(d) = std::fs::File::open(crate::atomic::parent_dir(&self.out)) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// The sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The sha256 of bytes, hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn staging_commits_whole_and_drops_clean() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("art");
        let s = Staging::new(&out).unwrap();
        s.write("a.txt", b"one").unwrap();
        drop(s);
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);

        let s = Staging::new(&out).unwrap();
        s.write(MANIFEST, b"{}").unwrap();
        s.write("a.txt", b"one").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"one");

        // A rerun replaces a kiln artifact.
        let s = Staging::new(&out).unwrap();
        s.write(MANIFEST, b"{}").unwrap();
        s.write("b.txt", b"two").unwrap();
        s.commit().unwrap();
        assert!(!out.join("a.txt").exists());
        assert_eq!(std::fs::read(out.join("b.txt")).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);

        // An unrelated directory is not replaced.
        let other = root.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("x"), b"x").unwrap();
        let err = Staging::new(&other).unwrap_err().to_string();
        assert!(err.contains("refusing"), "{err}");
    }
}
