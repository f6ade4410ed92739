//! An artifact directory (`kiln build -o OUTDIR`): the model file(s), the
//! manifest, the report and the chart, written into a hidden staging
//! directory beside `OUTDIR` and swapped in at the end; sha256 of files.
//! (Which tensors go into which file is the layout pass's decision,
//! `passes::passes::layout`; the split file names and keys are the GGUF
//! container's, `crate::gguf::container`.)
//!
//! What must stay true:
//! - `OUTDIR` holds either its old content or the complete new artifact,
//!   never a mixture, and is never absent once it existed, whenever the
//!   process is killed: every file is written and fsynced in the staging
//!   directory, which is exchanged with `OUTDIR` in one atomic rename
//!   (Linux `renameat2(RENAME_EXCHANGE)`), the old content then removed
//!   from the staging name; where the OS or file system has no exchange,
//!   the old directory is renamed aside (`.NAME.PID.XXXXXX.kiln-old`) and
//!   the staged one renamed in, and a run killed between the two renames
//!   leaves the old artifact set aside, which the next kiln run writing in
//!   that directory renames back ([`crate::atomic::clean_stale`]);
//! - dropping a [`Staging`] without [`Staging::commit`] removes everything
//!   it wrote, and the parent directories it created;
//! - an existing `OUTDIR` is replaced only if it is empty or is a kiln
//!   artifact: a `manifest.json` of schema `kiln.artifact/*`, beside which
//!   there is nothing but the files that manifest lists (at the sizes it
//!   records) and the side files a build writes ([`SIDE_FILES`]); with
//!   `force`, other files in a kiln artifact are deleted with it, but a
//!   directory that is not a kiln artifact is never replaced; a symbolic
//!   link is never followed nor replaced;
//! - missing parent directories are created when staging starts (after
//!   every check that can refuse the build).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::atomic::{self, Parents};
use crate::error::{Error, Result};

/// The manifest file name; a kiln manifest in it marks a directory kiln may replace.
pub const MANIFEST: &str = "manifest.json";
/// The files a build writes beside those its manifest lists.
pub const SIDE_FILES: [&str; 3] = [MANIFEST, "report.md", "chart.svg"];
/// The schema family of kiln's artifact manifests (`kiln.artifact/1`, ...).
pub const SCHEMA_PREFIX: &str = "kiln.artifact/";
/// A `manifest.json` larger than this is not a kiln manifest (a 7B model's
/// is about 200 KB).
const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// Unlisted files named in a refusal, at most.
const NAMED: usize = 8;

/// The end of [`check_outdir`]'s refusal of files a manifest does not list,
/// naming `--force`; a command without that option replaces it
/// (`without_force_hint` in the CLI).
pub const FORCE_HINT: &str = ", or pass --force to delete them";

/// A staging directory for `out`.
#[derive(Debug)]
pub struct Staging {
    dir: TempDir,
    /// Holds the staging directory's lock while this run owns it.
    lock: File,
    out: PathBuf,
    force: bool,
    parents: Parents,
}

/// Refuse an `OUTDIR` kiln must not replace: anything but an empty
/// directory or a kiln artifact; a kiln artifact holding files its manifest
/// does not list, unless `force`.
pub fn check_outdir(out: &Path, force: bool) -> Result<()> {
    atomic::check_parent(out)?;
    let Ok(meta) = std::fs::symlink_metadata(out) else {
        return Ok(());
    };
    if meta.file_type().is_symlink() {
        return Err(Error::output(
            out,
            "is a symbolic link; give the directory it points to (a build replaces OUTDIR whole and would replace the link)",
        ));
    }
    if !meta.is_dir() {
        return Err(Error::output(
            out,
            format!(
                "exists and is not a directory ({}); kiln build writes a directory of files",
                atomic::kind_of(&meta)
            ),
        ));
    }
    let mut entries = Vec::new();
    for e in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
        let e = e.map_err(|e| Error::io(out, e))?;
        let meta = std::fs::symlink_metadata(e.path()).map_err(|err| Error::io(&e.path(), err))?;
        entries.push((e.file_name().to_string_lossy().into_owned(), meta));
    }
    if entries.is_empty() {
        return Ok(());
    }
    let listed = read_listing(out)?;
    let mut extra: Vec<String> = Vec::new();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, meta) in &entries {
        let known = SIDE_FILES.contains(&name.as_str()) || listed.iter().any(|(p, _)| p == name);
        if !meta.is_file() {
            let slash = if meta.is_dir() { "/" } else { "" };
            extra.push(format!("{name}{slash}"));
        } else if !known {
            extra.push(name.clone());
        } else if listed
            .iter()
            .any(|(p, bytes)| p == name && bytes.is_some_and(|b| b != meta.len()))
        {
            extra.push(format!("{name} (not the size the manifest records)"));
        }
    }
    if extra.is_empty() || force {
        return Ok(());
    }
    let mut named = extra[..extra.len().min(NAMED)].join(", ");
    if extra.len() > NAMED {
        named += &format!(" and {} more", extra.len() - NAMED);
    }
    Err(Error::output(
        out,
        format!(
            "holds what the previous build's manifest.json does not list: {named}; a rebuild replaces the directory whole and would delete them: move them out{FORCE_HINT}"
        ),
    ))
}

/// The files a kiln manifest in `out` lists (name, recorded size), or the
/// refusal of a directory that holds no kiln manifest.
fn read_listing(out: &Path) -> Result<Vec<(String, Option<u64>)>> {
    let path = out.join(MANIFEST);
    let refuse = |why: &str| {
        Error::output(
            out,
            format!("exists, is not empty and holds no kiln manifest.json ({why}): refusing to replace it; choose a new directory"),
        )
    };
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() && m.len() <= MAX_MANIFEST_BYTES => {}
        Ok(m) if m.is_file() => return Err(refuse("manifest.json is too large")),
        Ok(m) => return Err(refuse(&format!("manifest.json is {}", atomic::kind_of(&m)))),
        Err(_) => return Err(refuse("none there")),
    }
    let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return Err(refuse("manifest.json is not JSON"));
    };
    let schema = v.get("schema").and_then(|s| s.as_str()).unwrap_or_default();
    if !schema.starts_with(SCHEMA_PREFIX) {
        return Err(refuse(&format!(
            "manifest.json has no schema `{SCHEMA_PREFIX}...`"
        )));
    }
    let Some(files) = v.get("files").and_then(|f| f.as_array()) else {
        return Err(refuse("manifest.json lists no files"));
    };
    let mut listed = Vec::with_capacity(files.len());
    for f in files {
        let Some(p) = f.get("path").and_then(|p| p.as_str()) else {
            return Err(refuse("a file in manifest.json has no path"));
        };
        listed.push((p.to_string(), f.get("bytes").and_then(|b| b.as_u64())));
    }
    Ok(listed)
}

impl Staging {
    /// A hidden directory beside `out` (`.NAME.PID.XXXXXX.kiln-tmp`), after
    /// [`check_outdir`]; missing parents of `out` are created.
    pub fn new(out: &Path, force: bool) -> Result<Staging> {
        check_outdir(out, force)?;
        let parent = atomic::parent_dir(out);
        let parents = Parents::create(&parent)?;
        let (dir, lock) = atomic::temp_dir_beside(out)?;
        Ok(Staging {
            dir,
            lock,
            out: out.to_path_buf(),
            force,
            parents,
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
        let mut f = File::create(&p).map_err(|e| Error::io(&p, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&p, e))?;
        f.sync_all().map_err(|e| Error::io(&p, e))
    }

    /// Swap the staged directory in for `out` (see the module's guarantees).
    pub fn commit(self) -> Result<()> {
        let Staging {
            dir,
            lock,
            out,
            force,
            parents,
        } = self;
        let staged = dir.keep();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755));
        }
        if let Ok(d) = File::open(&staged) {
            let _ = d.sync_all();
        }
        let swapped = swap(&staged, &out, force, exchange);
        drop(lock);
        if let Err(e) = swapped {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(e);
        }
        parents.keep();
        if let Ok(d) = File::open(atomic::parent_dir(&out)) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Put the complete directory `staged` at `out`. On error `staged` still
/// holds the new artifact and `out` its old content.
fn swap(
    staged: &Path,
    out: &Path,
    force: bool,
    exchange: fn(&Path, &Path) -> std::io::Result<()>,
) -> Result<()> {
    if std::fs::symlink_metadata(out).is_err() {
        return std::fs::rename(staged, out).map_err(|e| Error::io(out, e));
    }
    // OUTDIR may have changed during the build.
    check_outdir(out, force)?;
    match exchange(staged, out) {
        Ok(()) => {
            // The staging name now holds the old artifact; a crash while it
            // is removed leaves a stale staging directory, removed by the
            // next run.
            let _ = std::fs::remove_dir_all(staged);
            Ok(())
        }
        Err(e) if no_exchange(&e) => {
            let aside = staged.with_extension(atomic::OLD_SUFFIX.trim_start_matches('.'));
            std::fs::rename(out, &aside).map_err(|e| Error::io(out, e))?;
            if let Err(e) = std::fs::rename(staged, out) {
                let _ = std::fs::rename(&aside, out);
                return Err(Error::io(out, e));
            }
            let _ = std::fs::remove_dir_all(&aside);
            Ok(())
        }
        Err(e) => Err(Error::io(out, e)),
    }
}

/// Exchange two paths atomically.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    Ok(renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE)?)
}

/// Exchange two paths atomically (not available: the swap falls back to
/// two renames and recovery).
#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Whether the exchange failed only because the OS or the file system has
/// none (old kernels, some network and FUSE file systems).
fn no_exchange(e: &std::io::Error) -> bool {
    #[cfg(target_os = "linux")]
    {
        use rustix::io::Errno;
        let none = [Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP];
        if none
            .iter()
            .any(|n| e.raw_os_error() == Some(n.raw_os_error()))
        {
            return true;
        }
    }
    e.kind() == std::io::ErrorKind::Unsupported
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

    /// A kiln manifest listing `files` (name, bytes).
    fn manifest(files: &[(&str, u64)]) -> Vec<u8> {
        let files: Vec<_> = files
            .iter()
            .map(|(p, b)| serde_json::json!({"path": p, "sha256": "0", "bytes": b}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"schema": "kiln.artifact/1", "files": files}))
            .unwrap()
    }

    #[test]
    fn staging_commits_whole_and_drops_clean() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("art");
        let s = Staging::new(&out, false).unwrap();
        s.write("a.txt", b"one").unwrap();
        drop(s);
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);

        let s = Staging::new(&out, false).unwrap();
        s.write(MANIFEST, &manifest(&[("a.txt", 3)])).unwrap();
        s.write("a.txt", b"one").unwrap();
        s.write("report.md", b"r").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"one");

        // A rerun replaces a kiln artifact.
        let s = Staging::new(&out, false).unwrap();
        s.write(MANIFEST, &manifest(&[("b.txt", 3)])).unwrap();
        s.write("b.txt", b"two").unwrap();
        s.commit().unwrap();
        assert!(!out.join("a.txt").exists());
        assert_eq!(std::fs::read(out.join("b.txt")).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);

        // An unrelated directory is not replaced.
        let other = root.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("x"), b"x").unwrap();
        let err = Staging::new(&other, true).unwrap_err().to_string();
        assert!(err.contains("refusing"), "{err}");
    }

    #[test]
    fn only_a_kiln_artifact_with_nothing_unlisted_is_replaced() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("art");
        std::fs::create_dir(&out).unwrap();
        // A manifest.json that is not kiln's (issue 11's web app).
        std::fs::write(out.join(MANIFEST), br#"{"name":"my-web-app"}"#).unwrap();
        std::fs::write(out.join("important.txt"), b"keep").unwrap();
        for force in [false, true] {
            let err = check_outdir(&out, force).unwrap_err().to_string();
            assert!(err.contains("no kiln manifest.json"), "{err}");
        }
        for bad in [&b"not json"[..], br#"{"schema":"kiln.artifact/1"}"#] {
            std::fs::write(out.join(MANIFEST), bad).unwrap();
            assert!(check_outdir(&out, true).is_err());
        }
        // A kiln manifest that does not list important.txt nor sub/.
        std::fs::write(out.join(MANIFEST), manifest(&[("m.gguf", 4)])).unwrap();
        std::fs::write(out.join("m.gguf"), b"gguf").unwrap();
        std::fs::create_dir(out.join("sub")).unwrap();
        let err = check_outdir(&out, false).unwrap_err().to_string();
        assert!(
            err.contains("important.txt, sub/") && err.contains("--force"),
            "{err}"
        );
        check_outdir(&out, true).unwrap();
        std::fs::remove_file(out.join("important.txt")).unwrap();
        std::fs::remove_dir(out.join("sub")).unwrap();
        check_outdir(&out, false).unwrap();
        // A listed file that is not what kiln wrote.
        std::fs::write(out.join("m.gguf"), b"edited").unwrap();
        let err = check_outdir(&out, false).unwrap_err().to_string();
        assert!(err.contains("m.gguf (not the size"), "{err}");
    }

    #[test]
    fn the_fallback_swap_replaces_the_old_artifact() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("art");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join(MANIFEST), manifest(&[])).unwrap();
        let staged = root.path().join(".art.1.AbC123.kiln-tmp");
        std::fs::create_dir(&staged).unwrap();
        std::fs::write(staged.join(MANIFEST), b"new").unwrap();
        let none = |_: &Path, _: &Path| Err(std::io::ErrorKind::Unsupported.into());
        swap(&staged, &out, false, none).unwrap();
        assert_eq!(std::fs::read(out.join(MANIFEST)).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
