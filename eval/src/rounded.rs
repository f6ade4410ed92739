//! GPTQ's rounded GGUF tensors once a run is done: their encoded rows wait
//! in an unlinked temporary file ([`Spill`]) until the artifact is written
//! ([`GptqGguf`], a container that copies them in) or measured
//! ([`WithRounded`], a [`Source`] that decodes them), so memory does not
//! grow with the model (an 8B model's rows are gigabytes).
//!
//! What must stay true: a rounded tensor's bytes are GPTQ's, written once
//! and read back unchanged by the container and the source alike, so what
//! `kiln build` measures is what it writes; the spill file has no name and
//! is gone when kiln exits, however it exits.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use formats::write::{Container, FileLayout, Unit};
use passes::{Model, TensorNode};
use quant::GgmlType;

use crate::error::{Error, Result};
use crate::gguf_gptq::GgufScheme;
use crate::gptq::{self, Options};
use crate::model::Opened;
use crate::source::Source;

/// An unlinked temporary file of encoded rows.
pub struct Spill {
    file: std::fs::File,
    len: u64,
}

impl Spill {
    /// A temporary file in `dir` (where the output goes: the same disk).
    pub fn new(dir: &Path) -> Result<Spill> {
        let file = tempfile::tempfile_in(dir).map_err(|e| {
            Error::Formats(formats::Error::io(
                dir,
                std::io::Error::new(
                    e.kind(),
                    format!("creating GPTQ's temporary file for the rounded weights: {e}"),
                ),
            ))
        })?;
        Ok(Spill { file, len: 0 })
    }

    /// A temporary file in the directory `output` will be written to (the
    /// current directory for a bare file name).
    pub fn beside(output: Option<&Path>) -> Result<Spill> {
        let dir = output
            .and_then(|o| o.parent())
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Spill::new(dir)
    }

    /// Append `bytes`; where they start.
    pub fn push(&mut self, bytes: &[u8]) -> Result<u64> {
        use std::io::Write as _;
        (&self.file)
            .write_all(bytes)
            .map_err(|e| Error::Input(format!("writing GPTQ's temporary file: {e}")))?;
        let at = self.len;
        self.len += bytes.len() as u64;
        Ok(at)
    }

    /// Read `dst.len()` bytes from `at`.
    ///
    /// # Panics
    /// If the file cannot be read back (the disk failed under kiln): the
    /// container's encoders and a source's rows cannot return errors.
    pub fn read(&self, at: u64, dst: &mut [u8]) {
        use std::os::unix::fs::FileExt as _;
        self.file
            .read_exact_at(dst, at)
            .expect("reading back GPTQ's temporary file");
    }
}

/// GPTQ's results keyed by source tensor name, with the file holding their
/// encoded rows.
pub struct RoundedSet<T> {
    pub tensors: BTreeMap<String, T>,
    pub spill: Spill,
}

/// One GGUF tensor's GPTQ result.
#[derive(Debug, Clone)]
pub struct GgufRounded {
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    /// Where the encoded rows start in the spill file.
    pub at: u64,
    pub ty: GgmlType,
    /// GPTQ's loss (the Hessian-weighted error it fed forward).
    pub loss: f64,
    /// The Hessian was not positive definite: rounded to nearest.
    pub fallback: bool,
}

/// GPTQ onto GGUF types: every weight of `types` (GGUF names of `m`) that
/// the blocks read, onto its type, with the importance vectors of
/// `importance` (GGUF names), calibrated on `windows`. Columns left to right
/// (no act-order). The result is keyed by source tensor name.
#[allow(clippy::too_many_arguments)]
pub fn round_onto(
    m: &Opened,
    types: BTreeMap<String, GgmlType>,
    importance: &BTreeMap<String, Vec<f32>>,
    windows: &[Vec<u32>],
    percdamp: f64,
    mut spill: Spill,
    progress: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<RoundedSet<GgufRounded>> {
    let source: BTreeMap<String, String> = m
        .loaded
        .model
        .tensors
        .iter()
        .filter(|t| types.contains_key(&t.name))
        .map(|t| (t.name.clone(), t.source_name.clone()))
        .collect();
    let scheme = GgufScheme {
        types,
        importance: Some(importance),
    };
    let opts = Options {
        block: 128,
        percdamp,
        actorder: false,
    };
    let mut out = BTreeMap::new();
    let mut sink = |r: gptq::Rounded| -> Result<()> {
        let at = spill.push(&r.bytes)?;
        out.insert(
            source[&r.name].clone(),
            GgufRounded {
                rows: r.rows,
                cols: r.cols,
                row_bytes: r.bytes.len() / r.rows.max(1),
                at,
                ty: scheme.types[&r.name],
                loss: r.outcome.loss,
                fallback: r.outcome.fallback,
            },
        );
        Ok(())
    };
    gptq::run(m, windows, &scheme, &opts, &mut sink, progress, cancel)?;
    Ok(RoundedSet {
        tensors: out,
        spill,
    })
}

/// Rows per unit of a rounded tensor in [`GptqGguf`]'s layout.
const UNIT_ROWS: usize = 8;

/// A GGUF container with GPTQ-rounded tensors: their rows are laid out in
/// units (so the encoder learns the row index) and copied from the spill
/// file; everything else is the wrapped container's.
pub struct GptqGguf<'a, C> {
    pub inner: C,
    pub rounded: &'a RoundedSet<GgufRounded>,
}

impl<C: Container> Container for GptqGguf<'_, C> {
    fn layout(&self, model: &Model) -> formats::Result<Vec<FileLayout>> {
        let mut files = self.inner.layout(model)?;
        for f in &mut files {
            for p in &mut f.placements {
                if self
                    .rounded
                    .tensors
                    .contains_key(&model.tensors[p.tensor].source_name)
                {
                    p.unit = Unit {
                        rows: UNIT_ROWS,
                        per_row: true,
                    };
                }
            }
        }
        Ok(files)
    }

    fn copies_source(&self, t: &TensorNode, piece: usize) -> bool {
        !self.rounded.tensors.contains_key(&t.source_name) && self.inner.copies_source(t, piece)
    }

    fn encode_row(
        &self,
        t: &TensorNode,
        piece: usize,
        values: &[f32],
        dst: &mut [u8],
        importance: Option<&[f32]>,
    ) {
        self.inner.encode_row(t, piece, values, dst, importance)
    }

    fn encode_unit(
        &self,
        t: &TensorNode,
        piece: usize,
        first_row: usize,
        values: &[f32],
        dst: &mut [u8],
    ) {
        let Some(r) = self.rounded.tensors.get(&t.source_name) else {
            return self.inner.encode_unit(t, piece, first_row, values, dst);
        };
        self.rounded
            .spill
            .read(r.at + (first_row * r.row_bytes) as u64, dst);
    }

    fn side_files(
        &self,
        model: &Model,
        files: &[FileLayout],
    ) -> formats::Result<Vec<(String, Vec<u8>)>> {
        self.inner.side_files(model, files)
    }
}

/// `base` with the GPTQ-rounded tensors decoded from their stored rows (the
/// bytes the artifact gets), so a plan with GPTQ is measured as written.
pub struct WithRounded<'a> {
    pub base: &'a dyn Source,
    pub rounded: &'a RoundedSet<GgufRounded>,
}

impl Source for WithRounded<'_> {
    fn opened(&self) -> &Opened {
        self.base.opened()
    }

    fn read_row(&self, node: &TensorNode, r: usize, dst: &mut [f32]) {
        match self.rounded.tensors.get(&node.source_name) {
            Some(t) if t.rows == node.n_rows() && t.cols == dst.len() => {
                let mut enc = vec![0u8; t.row_bytes];
                self.rounded
                    .spill
                    .read(t.at + (r * t.row_bytes) as u64, &mut enc);
                quant::dequantize_row(t.ty, &enc, dst);
            }
            _ => self.base.read_row(node, r, dst),
        }
    }

    fn release(&self, node: &TensorNode) {
        self.base.release(node);
    }
}
