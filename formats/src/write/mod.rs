//! Writing a planned model: a [`Container`] says what the output files are
//! (names, header bytes, where every tensor's bytes go, how a row is
//! encoded) and the format-neutral streaming [`engine`] writes them.
//!
//! What must stay true:
//! - a container fixes the whole layout (every offset, every file's size)
//!   before any tensor is read, so headers are written first and tensors
//!   streamed after them;
//! - placements of a file are in offset order, back to back: each piece's
//!   bytes, then its padding, from the end of the header to the end of the
//!   file;
//! - the engine knows no format: adding a container (safetensors with
//!   compressed-tensors, say) means implementing [`Container`], nothing here.

pub mod engine;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use passes::{Model, TensorNode};

use crate::error::{Error, Result};

pub use engine::write;

/// Where one piece of one tensor goes in an output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Index into `Model::tensors` of the tensor whose rows it is made from.
    pub tensor: usize,
    /// Which of that tensor's output pieces: 0 for a container that writes
    /// one tensor per input tensor (GGUF); compressed-tensors writes several
    /// from one (`weight_packed`, `weight_scale`, ...), numbered as it likes.
    pub piece: usize,
    /// Absolute byte offset in the file.
    pub offset: u64,
    /// Encoded bytes of one row of the tensor (the piece is this times the
    /// tensor's row count).
    pub row_bytes: usize,
    /// Zero bytes after the piece (alignment).
    pub padding: u64,
}

impl Placement {
    /// Encoded bytes of the piece, without padding.
    pub fn bytes(&self, t: &TensorNode) -> u64 {
        self.row_bytes as u64 * t.n_rows() as u64
    }
}

/// One output file, laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLayout {
    /// File name, relative to the output directory.
    pub name: String,
    /// Everything before the first tensor (padding included).
    pub header: Vec<u8>,
    /// In offset order, the first at `header.len()`.
    pub placements: Vec<Placement>,
    pub total_bytes: u64,
}

/// A file written, for manifests and summaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// File name, relative to the output directory.
    pub name: String,
    pub bytes: u64,
    /// Whether it holds tensors (a model file), not a side file (an index,
    /// a config).
    pub tensors: bool,
}

/// An output format: the files, their headers and the encoding of rows.
pub trait Container: Sync {
    /// Lay out every file holding tensors (one, or one per shard of
    /// `Model::shards`), with their headers.
    fn layout(&self, model: &Model) -> Result<Vec<FileLayout>>;

    /// Whether the rows of `piece` of `t` are the source rows' bytes as they
    /// are (copied, not decoded and encoded again).
    fn copies_source(&self, t: &TensorNode, piece: usize) -> bool;

    /// Encode row `row` of `piece` of `t` from its decoded values (the
    /// tensor's transform applied) into `dst`, which is
    /// [`Placement::row_bytes`] long and zeroed. `importance` is the row's
    /// importance vector, when there is one.
    fn encode_row(
        &self,
        t: &TensorNode,
        piece: usize,
        values: &[f32],
        dst: &mut [u8],
        importance: Option<&[f32]>,
    );

    /// Small files beside the tensor files, built once those are laid out
    /// (a safetensors index naming the shard of each tensor, a `config.json`
    /// with a `quantization_config`). GGUF has none.
    fn side_files(&self, _model: &Model, _files: &[FileLayout]) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(Vec::new())
    }
}

/// Options of a write.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions<'a> {
    /// Write NaN/Inf weights instead of refusing them.
    pub allow_nonfinite: bool,
    /// Importance vectors by tensor name (from an imatrix), already checked
    /// against the tensors' shapes with [`crate::imatrix::for_tensor`]: one
    /// weight per column, `experts x row_len` long for 3-D expert tensors.
    pub importance: Option<&'a BTreeMap<String, Vec<f32>>>,
}

/// Refuse an output path that cannot be written or would clobber an input:
/// it must be a regular file or not exist, under a directory (missing
/// directories are created when writing starts, [`crate::atomic::Parents`]).
pub fn check_output(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    let file_name = out
        .file_name()
        .ok_or_else(|| Error::output(out, "output path has no file name"))?;
    crate::atomic::check_parent(out)?;
    crate::atomic::check_regular(out)?;
    let parent = crate::atomic::parent_dir(out);
    if !parent.is_dir() {
        // Created when writing starts: no input can be there yet.
        return Ok(());
    }
    let resolved = parent
        .canonicalize()
        .map_err(|e| Error::io(&parent, e))?
        .join(file_name);
    for input in inputs {
        if input.canonicalize().is_ok_and(|i| i == resolved) {
            return Err(Error::output(
                out,
                "output path is the input file; choose another path",
            ));
        }
    }
    Ok(())
}
