//! Atomic output files: a hidden temp file in the target directory, fsynced,
//! made world-readable (0644, as a plain `create` under the usual umask), then
//! renamed over the target, and the directory fsynced; the output path
//! checks every command that writes shares; and the clean-up of what a
//! killed run left behind.
//!
//! What must stay true:
//! - the target path holds either nothing (or its old content) or the
//!   complete new file, never a partial one; a temp file that is dropped
//!   without [`commit`] is deleted;
//! - an output path is a regular file or does not exist: a directory, a
//!   FIFO, a socket, a device node or a symbolic link there is refused, never
//!   replaced;
//! - every temp file and staging directory kiln makes is named
//!   `.NAME.PID.XXXXXX.kiln-tmp` (a directory set aside during a swap,
//!   `.NAME.PID.XXXXXX.kiln-old`), where PID is the writing process, which
//!   also holds an `flock` on it while it lives; [`clean_stale`] removes only
//!   entries of exactly that form whose process is gone and whose lock is
//!   free, so it never deletes what another live run is writing, nor anything
//!   kiln did not name;
//! - missing parent directories are created only when writing starts
//!   ([`Parents`]) and removed again, if still empty, when the write fails.

use std::fs::File;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// Suffix of temp files and staging directories.
pub const TMP_SUFFIX: &str = ".kiln-tmp";
/// Suffix of a previous artifact directory set aside during a swap.
pub const OLD_SUFFIX: &str = ".kiln-old";
/// Random characters in a temp name (tempfile's alphabet: ASCII letters and digits).
const RAND_CHARS: usize = 6;

/// The directory `out` will be written in (`.` for a bare file name).
pub fn parent_dir(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `.NAME.PID.`: the start of every temp name kiln gives an output `out`.
fn temp_prefix(out: &Path) -> String {
    format!(
        ".{}.{}.",
        out.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    )
}

/// A builder of temp names (`PREFIX` + `XXXXXX.kiln-tmp`).
fn temp_builder(prefix: &str) -> tempfile::Builder<'_, 'static> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix).suffix(TMP_SUFFIX).rand_bytes(RAND_CHARS);
    b
}

/// A temp file beside `out`, named `.NAME.PID.XXXXXX.kiln-tmp` and locked
/// (`flock`) for as long as it is open.
pub fn temp_beside(out: &Path) -> Result<NamedTempFile> {
    let parent = parent_dir(out);
    let prefix = temp_prefix(out);
    let tmp = temp_builder(&prefix)
        .tempfile_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    lock(tmp.as_file());
    Ok(tmp)
}

/// A staging directory beside `out` (`.NAME.PID.XXXXXX.kiln-tmp/`), with an
/// open handle that holds its lock.
pub fn temp_dir_beside(out: &Path) -> Result<(tempfile::TempDir, File)> {
    let parent = parent_dir(out);
    let prefix = temp_prefix(out);
    let dir = temp_builder(&prefix)
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    let handle = File::open(dir.path()).map_err(|e| Error::io(dir.path(), e))?;
    lock(&handle);
    Ok((dir, handle))
}

/// Fsync `tmp`, give it mode 0644, rename it to `out`, fsync the directory.
pub fn commit(tmp: NamedTempFile, out: &Path) -> Result<()> {
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(tmp.path(), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(out).map_err(|e| Error::io(out, e.error))?;
    if let Ok(dir) = File::open(parent_dir(out)) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Refuse an output whose nearest existing ancestor is not a directory
/// (missing directories are created when writing starts).
pub fn check_parent(out: &Path) -> Result<()> {
    let parent = parent_dir(out);
    let mut anc = parent.as_path();
    while std::fs::symlink_metadata(anc).is_err() {
        match anc.parent() {
            Some(p) if !p.as_os_str().is_empty() => anc = p,
            _ => return Ok(()),
        }
    }
    if !anc.is_dir() {
        return Err(Error::output(
            out,
            format!("{} is not a directory", anc.display()),
        ));
    }
    Ok(())
}

/// What is at a path that is not a regular file, in words.
pub fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    if t.is_symlink() {
        return "a symbolic link";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
    }
    if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Refuse an output file path that exists and is not a regular file: the
/// new file is renamed over it, which would replace a device node, a FIFO,
/// a socket or a symbolic link with a file.
pub fn check_regular(out: &Path) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) if m.is_dir() => Err(Error::output(
            out,
            "output path is a directory; give a file name such as model.gguf",
        )),
        Ok(m) => Err(Error::output(
            out,
            format!(
                "exists and is {}, not a regular file: kiln writes a new file and renames it into place, which would replace it; choose another path",
                kind_of(&m)
            ),
        )),
        Err(_) => Ok(()),
    }
}

/// Directories created for an output, removed again (deepest first, and
/// only while empty) when dropped without [`Parents::keep`].
#[derive(Debug, Default)]
pub struct Parents {
    created: Vec<PathBuf>,
}

impl Parents {
    /// Create `dir` and its missing ancestors.
    pub fn create(dir: &Path) -> Result<Parents> {
        let mut missing = Vec::new();
        let mut d = dir;
        while std::fs::symlink_metadata(d).is_err() {
            missing.push(d.to_path_buf());
            match d.parent() {
                Some(p) if !p.as_os_str().is_empty() => d = p,
                _ => break,
            }
        }
        let mut parents = Parents::default();
        for d in missing.into_iter().rev() {
            match std::fs::create_dir(&d) {
                Ok(()) => parents.created.push(d),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => {}
                Err(e) => return Err(Error::io(&d, e)),
            }
        }
        Ok(parents)
    }

    /// The write succeeded: keep the directories.
    pub fn keep(mut self) {
        self.created.clear();
    }
}

impl Drop for Parents {
    fn drop(&mut self) {
        for d in self.created.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Hold an exclusive `flock` on `file` for as long as it is open (no-op
/// where the OS or the file system has none: the recorded pid then decides).
fn lock(file: &File) {
    #[cfg(unix)]
    {
        use rustix::fs::{flock, FlockOperation};
        let _ = flock(file, FlockOperation::NonBlockingLockExclusive);
    }
    #[cfg(not(unix))]
    let _ = file;
}

/// Whether nobody holds the lock on `path` (it is opened, locked and
/// closed again).
#[cfg(unix)]
fn unlocked(path: &Path) -> bool {
    use rustix::fs::{flock, FlockOperation};
    match File::open(path) {
        Ok(f) => flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok(),
        Err(_) => false,
    }
}

/// Whether process `pid` exists (a zombie counts; `EPERM` means it exists
/// under another user).
#[cfg(unix)]
fn pid_alive(pid: u32) -> bool {
    use rustix::process::{test_kill_process, Pid};
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    match test_kill_process(p) {
        Ok(()) => true,
        Err(e) => e != rustix::io::Errno::SRCH,
    }
}

/// A name kiln gives its temp files and set-aside directories, parsed: the
/// output's name, the writing process, whether it is a set-aside directory.
fn parse_temp_name(name: &str) -> Option<(&str, u32, bool)> {
    let (stem, old) = if let Some(s) = name.strip_suffix(TMP_SUFFIX) {
        (s, false)
    } else {
        (name.strip_suffix(OLD_SUFFIX)?, true)
    };
    let mut parts = stem.rsplitn(3, '.');
    let rand = parts.next()?;
    let pid = parts.next()?;
    let target = parts.next()?.strip_prefix('.')?;
    let plain_rand = rand.len() == RAND_CHARS && rand.bytes().all(|b| b.is_ascii_alphanumeric());
    let plain_pid = !pid.is_empty() && pid.len() <= 10 && pid.bytes().all(|b| b.is_ascii_digit());
    if !plain_rand || !plain_pid || target.is_empty() {
        return None;
    }
    Some((target, pid.parse().ok()?, old))
}

/// Remove what killed kiln runs left in `dir`: temp files and staging
/// directories (`.NAME.PID.XXXXXX.kiln-tmp`) whose process is gone and whose
/// lock is free; a set-aside previous artifact (`.NAME.PID.XXXXXX.kiln-old`,
/// from a swap interrupted between its two renames where the OS has no
/// exchange rename) is renamed back to `NAME` when `NAME` is absent, else
/// removed. Returns one line per thing done. Nothing else is touched; errors
/// leave the entry in place (the next run tries again).
pub fn clean_stale(dir: &Path) -> Vec<String> {
    #[cfg(unix)]
    {
        clean_stale_unix(dir)
    }
    #[cfg(not(unix))]
    {
        // No lock to test: an owner cannot be told dead from alive.
        let _ = dir;
        Vec::new()
    }
}

#[cfg(unix)]
fn clean_stale_unix(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| parse_temp_name(n).is_some())
        .collect();
    names.sort();
    let mut done = Vec::new();
    for name in &names {
        let Some((target, pid, old)) = parse_temp_name(name) else {
            continue;
        };
        if pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        let path = dir.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        // kiln makes plain files and directories only.
        if !(meta.is_file() || meta.is_dir()) || !unlocked(&path) {
            continue;
        }
        let target_path = dir.join(target);
        if old && meta.is_dir() && std::fs::symlink_metadata(&target_path).is_err() {
            if std::fs::rename(&path, &target_path).is_ok() {
                done.push(format!(
                    "restored {} from {}, set aside by a kiln run (pid {pid}) killed while swapping it",
                    target_path.display(),
                    path.display()
                ));
            }
            continue;
        }
        let removed = if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if removed.is_ok() {
            done.push(format!(
                "removed {}, left by a kiln run (pid {pid}) that was killed",
                path.display()
            ));
        }
    }
    if !done.is_empty() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pid of a process that has exited and been reaped.
    #[cfg(unix)]
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn temp_names_parse_back() {
        let out = Path::new("/x/my.model.gguf");
        let t = temp_beside(&std::env::temp_dir().join("my.model.gguf")).unwrap();
        let name = t.path().file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            parse_temp_name(&name),
            Some(("my.model.gguf", std::process::id(), false)),
            "{name}"
        );
        assert!(temp_prefix(out).starts_with(".my.model.gguf."));
        assert_eq!(
            parse_temp_name(".art.12.AbC123.kiln-old"),
            Some(("art", 12, true))
        );
        // Names kiln does not give are never taken for its own.
        for other in [
            ".art.AbC123.kiln-tmp",
            "art.12.AbC123.kiln-tmp",
            ".art.12.AbC12.kiln-tmp",
            ".art.1x.AbC123.kiln-tmp",
            "..12.AbC123.kiln-tmp",
            ".art.12.AbC-23.kiln-tmp",
            ".art.12.AbC123.kiln-tmp.bak",
            "notes.txt",
        ] {
            assert_eq!(parse_temp_name(other), None, "{other}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn only_dead_owners_leftovers_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path();
        let dead = dead_pid();
        let stale_file = format!(".m.gguf.{dead}.aaaaaa.kiln-tmp");
        let stale_dir = format!(".art.{dead}.bbbbbb.kiln-tmp");
        std::fs::write(d.join(&stale_file), b"partial").unwrap();
        std::fs::create_dir(d.join(&stale_dir)).unwrap();
        std::fs::write(d.join(&stale_dir).join("x"), b"x").unwrap();
        // A live run's temp file (this process), one locked by a live
        // handle under a dead pid (another pid namespace), and user files
        // that merely look alike.
        let live = temp_beside(&d.join("m.gguf")).unwrap();
        let locked_name = format!(".n.gguf.{dead}.cccccc.kiln-tmp");
        std::fs::write(d.join(&locked_name), b"busy").unwrap();
        let held = File::open(d.join(&locked_name)).unwrap();
        lock(&held);
        let keep = [
            "notes.txt".to_string(),
            format!(".m.gguf.{dead}.kiln-tmp"),
            format!("m.gguf.{dead}.dddddd.kiln-tmp"),
        ];
        for k in &keep {
            std::fs::write(d.join(k), b"mine").unwrap();
        }
        let done = clean_stale(d);
        assert_eq!(done.len(), 2, "{done:?}");
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want: Vec<String> = keep.to_vec();
        want.push(locked_name);
        want.push(live.path().file_name().unwrap().to_str().unwrap().into());
        want.sort();
        assert_eq!(left, want);
        drop(held);
    }

    #[cfg(unix)]
    #[test]
    fn a_set_aside_directory_is_restored_when_its_target_is_gone() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path();
        let dead = dead_pid();
        // A swap killed between its two renames: OUTDIR gone, the old
        // artifact set aside, the new one still staged.
        let old = d.join(format!(".art.{dead}.eeeeee.kiln-old"));
        std::fs::create_dir(&old).unwrap();
        std::fs::write(old.join("manifest.json"), b"old").unwrap();
        std::fs::create_dir(d.join(format!(".art.{dead}.eeeeee.kiln-tmp"))).unwrap();
        let done = clean_stale(d);
        assert_eq!(done.len(), 2, "{done:?}");
        assert_eq!(std::fs::read(d.join("art/manifest.json")).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 1);
        // With OUTDIR present, a set-aside directory is only removed.
        let old = d.join(format!(".art.{dead}.ffffff.kiln-old"));
        std::fs::create_dir(&old).unwrap();
        clean_stale(d);
        assert!(!old.exists());
        assert_eq!(std::fs::read(d.join("art/manifest.json")).unwrap(), b"old");
    }

    #[test]
    fn created_parents_go_away_unless_kept() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        let p = Parents::create(&deep).unwrap();
        assert!(deep.is_dir());
        drop(p);
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
        Parents::create(&deep).unwrap().keep();
        assert!(deep.is_dir());
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_not_an_output_file() {
        let root = tempfile::tempdir().unwrap();
        let fifo = root.path().join("pipe");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(ok.success());
        let err = check_regular(&fifo).unwrap_err().to_string();
        assert!(err.contains("FIFO"), "{err}");
        check_regular(&root.path().join("new.gguf")).unwrap();
    }
}
