//! Atomic output files: a hidden temp file in the target directory, fsynced,
//! made world-readable (0644, as a plain `create` under the usual umask), then
//! renamed over the target, and the directory fsynced. What must stay true:
//! the target path holds either nothing (or its old content) or the complete
//! new file, never a partial one; a temp file that is dropped without
//! [`commit`] is deleted.

use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// The directory `out` will be written in (`.` for a bare file name).
pub fn parent_dir(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A temp file beside `out`, named `.NAME.XXXX.kiln-tmp`.
pub fn temp_beside(out: &Path) -> Result<NamedTempFile> {
    let parent = parent_dir(out);
    let prefix = format!(
        ".{}.",
        out.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".kiln-tmp")
        .tempfile_in(&parent)
        .map_err(|e| Error::io(&parent, e))
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
    if let Ok(dir) = std::fs::File::open(parent_dir(out)) {
        let _ = dir.sync_all();
    }
    Ok(())
}
