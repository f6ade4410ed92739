//! Typed errors of the `formats` crate. Every variant names the file, and the
//! tensor where there is one, so the CLI can print one line that says what is
//! wrong where ("model.safetensors: tensor `x`: needs 64 bytes at 8, file has 40").

use std::fmt;
use std::path::{Path, PathBuf};

use passes::printable;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error (its message is part of this one, so the chain prints it once).
    #[error("{}: {err}", Shown(path))]
    Io { path: PathBuf, err: std::io::Error },
    /// The file is not what it claims to be (bad header, offsets, sizes).
    #[error("{}: {}{reason}", Shown(path), TensorPrefix(tensor))]
    Malformed {
        path: PathBuf,
        tensor: Option<String>,
        reason: String,
    },
    /// The file is well formed but kiln cannot handle what it asks for.
    #[error("{}: {}{reason}", Shown(path), TensorPrefix(tensor))]
    Unsupported {
        path: PathBuf,
        tensor: Option<String>,
        reason: String,
    },
    /// NaN or infinite weights, refused unless the user allows them.
    #[error("{}: tensor `{}`: {count} non-finite value(s) (NaN or Inf); pass --allow-nonfinite to convert anyway", Shown(path), printable(tensor))]
    NonFinite {
        path: PathBuf,
        tensor: String,
        count: u64,
    },
    /// The output path is unusable.
    #[error("{}: {reason}", Shown(path))]
    Output { path: PathBuf, reason: String },
    /// The run was cancelled (Ctrl-C); nothing was left at the output path.
    #[error("interrupted; no output file was written")]
    Interrupted,
}

struct TensorPrefix<'a>(&'a Option<String>);

impl fmt::Display for TensorPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(t) => write!(f, "tensor `{}`: ", printable(t)),
            None => Ok(()),
        }
    }
}

/// A path as printed: control characters escaped (`passes::printable`).
struct Shown<'a>(&'a Path);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&printable(&self.0.display().to_string()))
    }
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            err: source,
        }
    }

    pub fn malformed(path: &Path, tensor: Option<&str>, reason: impl Into<String>) -> Error {
        Error::Malformed {
            path: path.to_path_buf(),
            tensor: tensor.map(str::to_string),
            reason: reason.into(),
        }
    }

    pub fn unsupported(path: &Path, tensor: Option<&str>, reason: impl Into<String>) -> Error {
        Error::Unsupported {
            path: path.to_path_buf(),
            tensor: tensor.map(str::to_string),
            reason: reason.into(),
        }
    }

    pub fn output(path: &Path, reason: impl Into<String>) -> Error {
        Error::Output {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
