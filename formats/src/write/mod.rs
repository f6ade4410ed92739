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
    /// tensor's row count), or of one unit for a piece that is not
    /// [`Unit::per_row`].
    pub row_bytes: usize,
    /// How rows are grouped for encoding: one at a time for most pieces.
    pub unit: Unit,
    /// Zero bytes after the piece (alignment).
    pub padding: u64,
}

/// Rows encoded together. Most pieces are encoded row by row (`Unit::ROW`);
/// some need several source rows at once: FP8 values whose scale belongs to
/// a 128 x 128 tile (128 rows in, 128 rows out), or zero points packed along
/// the output dimension (8 rows in, one packed row out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Source rows per unit (the last unit of a tensor may have fewer).
    pub rows: usize,
    /// Whether a unit's output is `row_bytes` per source row (true) or
    /// `row_bytes` whatever the rows it was made from (false).
    pub per_row: bool,
}

impl Unit {
    /// One row in, `row_bytes` out.
    pub const ROW: Unit = Unit {
        rows: 1,
        per_row: true,
    };

    /// Encoded once from no rows: a constant (a shape) or a value from
    /// per-tensor statistics gathered before writing (a global scale).
    pub const CONST: Unit = Unit {
        rows: 0,
        per_row: false,
    };

    /// Units of a tensor of `n_rows` rows.
    pub fn count(self, n_rows: usize) -> usize {
        if self.rows == 0 {
            1
        } else {
            n_rows.div_ceil(self.rows)
        }
    }
}

impl Placement {
    /// Encoded bytes of the piece, without padding.
    pub fn bytes(&self, t: &TensorNode) -> u64 {
        let n = if self.unit.per_row {
            t.n_rows()
        } else {
            self.unit.count(t.n_rows())
        };
        self.row_bytes as u64 * n as u64
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

    /// Encode the unit of rows starting at `first_row` of `piece` of `t`
    /// (a piece whose [`Placement::unit`] is not [`Unit::ROW`]): `values`
    /// holds the unit's rows, decoded, back to back; `dst` is the unit's
    /// output, zeroed. The default encodes row by row with
    /// [`Container::encode_row`], which is all a row-wise piece needs.
    fn encode_unit(
        &self,
        t: &TensorNode,
        piece: usize,
        first_row: usize,
        values: &[f32],
        dst: &mut [u8],
    ) {
        let row_len = t.row_len();
        let rows = values.len() / row_len.max(1);
        let out = dst.len() / rows.max(1);
        let _ = first_row;
        for (v, d) in values.chunks_exact(row_len).zip(dst.chunks_exact_mut(out)) {
            self.encode_row(t, piece, v, d, None);
        }
    }

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
