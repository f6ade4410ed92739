//! Opening the user's input files: only regular files (or links to them).
//!
//! What must stay true: a FIFO, socket or device given as a model, shard,
//! config, tokenizer or imatrix is refused by name before it is opened
//! (opening a FIFO for reading blocks until a writer appears, and a device
//! can stream forever), so every input has a size known up front.

use std::path::Path;

use crate::error::{Error, Result};

/// Refuse `path` unless it is a regular file (links followed).
pub fn check_regular(path: &Path) -> Result<()> {
    let md = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if md.is_file() {
        return Ok(());
    }
    let kind = if md.is_dir() {
        "a directory"
    } else {
        special_kind(&md)
    };
    Err(Error::unsupported(
        path,
        None,
        format!("{kind}, not a regular file: kiln reads inputs of a known size only"),
    ))
}

#[cfg(unix)]
fn special_kind(md: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &std::fs::Metadata) -> &'static str {
    "a special file"
}

/// Read a whole input file, refusing anything but a regular file.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    check_regular(path)?;
    std::fs::read(path).map_err(|e| Error::io(path, e))
}
