//! Where a model's weights come from when it runs: the tensors of an opened
//! model decoded from their stored form ([`Opened`] itself), or the same
//! tensors after a candidate encoding is applied row by row ([`Roundtrip`],
//! [`Mapped`]), so that a candidate is evaluated from its encoding without a
//! whole f32 copy of either model.
//!
//! What must stay true: a source decodes one row at a time, deterministically
//! (the same values for any thread count); [`Source::release`] only drops
//! pages of the mapped input that a later read re-faults from the file.

use std::collections::{BTreeMap, HashMap};

use passes::TensorNode;
use quant::ct::ActQuant;
use quant::GgmlType;
use rayon::prelude::*;

use crate::model::Opened;

/// A model's weights, one row at a time.
pub trait Source: Sync {
    /// The opened model: names, shapes, architecture and metadata.
    fn opened(&self) -> &Opened;

    /// Row `r` of `node`, decoded to f32 into `dst` (`row_len` values).
    fn read_row(&self, node: &TensorNode, r: usize, dst: &mut [f32]);

    /// Rows `r0..r1` of `node`, decoded in parallel, row-major.
    fn read_rows(&self, node: &TensorNode, r0: usize, r1: usize) -> Vec<f32> {
        let row = node.row_len();
        let mut out = vec![0f32; (r1 - r0) * row];
        if row > 0 {
            out.par_chunks_mut(row)
                .enumerate()
                .for_each(|(k, dst)| self.read_row(node, r0 + k, dst));
        }
        out
    }

    /// All of `node`'s values, row-major.
    fn read(&self, node: &TensorNode) -> Vec<f32> {
        self.read_rows(node, 0, node.n_rows())
    }

    /// `node` is decoded: let its mapped pages go, so resident memory stays
    /// at about one block while a model streams.
    fn release(&self, node: &TensorNode) {
        self.opened().release(node);
    }

    /// How the serving runtime quantizes the input of `node` (of its stacked
    /// part `part`, an expert), if it does: a compressed-tensors artifact's
    /// config group says so (W8A8, FP8, NVFP4), and the forward pass then
    /// fake-quantizes that input as the runtime's kernels do.
    fn act_quant(&self, node: &TensorNode, part: Option<usize>) -> Option<ActQuant> {
        let ct = self.opened().loaded.ct.as_ref()?;
        match part {
            Some(e) => ct.tensor_at(node.parts.get(e)?),
            None => ct.tensor(node),
        }?
        .act
    }
}

/// `base` with the input of some weights quantized as a runtime would (by
/// GGUF name; experts of a stacked weight share its entry): a candidate
/// compressed-tensors plan measured before it is written.
pub struct WithActs<'a, S: Source + ?Sized> {
    pub base: &'a S,
    pub acts: HashMap<String, ActQuant>,
}

impl<S: Source + ?Sized> Source for WithActs<'_, S> {
    fn opened(&self) -> &Opened {
        self.base.opened()
    }

    fn read_row(&self, node: &TensorNode, r: usize, dst: &mut [f32]) {
        self.base.read_row(node, r, dst);
    }

    fn release(&self, node: &TensorNode) {
        self.base.release(node);
    }

    fn act_quant(&self, node: &TensorNode, part: Option<usize>) -> Option<ActQuant> {
        match self.acts.get(&node.name) {
            Some(&a) => Some(a),
            None => self.base.act_quant(node, part),
        }
    }
}

impl Source for Opened {
    fn opened(&self) -> &Opened {
        self
    }

    fn read_row(&self, node: &TensorNode, r: usize, dst: &mut [f32]) {
        self.loaded.read_row(node, r, dst);
    }
}

/// `base` with the tensors named in `types` encoded in their type and decoded
/// back, row by row, with the importance vector of the row (as the emitter
/// and `planning::roundtrip` encode them).
pub struct Roundtrip<'a> {
    pub base: &'a Opened,
    pub types: HashMap<String, GgmlType>,
    pub importance: &'a BTreeMap<String, Vec<f32>>,
}

impl Roundtrip<'_> {
    /// Whether every tensor in `types` has a type that divides its rows (the
    /// message names the first that does not).
    pub fn check(&self) -> crate::Result<()> {
        for (name, ty) in &self.types {
            let node = self.base.need(name)?;
            if ty.row_bytes(node.row_len()).is_none() {
                return Err(crate::Error::Input(format!(
                    "tensor `{}`: {ty} does not divide rows of {}",
                    passes::printable(name),
                    node.row_len()
                )));
            }
        }
        Ok(())
    }
}

impl Source for Roundtrip<'_> {
    fn opened(&self) -> &Opened {
        self.base
    }

    fn read_row(&self, node: &TensorNode, r: usize, dst: &mut [f32]) {
        self.base.loaded.read_row(node, r, dst);
        if let Some(&ty) = self.types.get(&node.name) {
            let row = node.row_len();
            let rb = ty.row_bytes(row).expect("Roundtrip::check");
            let mut enc = vec![0u8; rb];
            let imp = self
                .importance
                .get(&node.name)
                .map(|v| formats::imatrix::row_importance(v, &node.shape, r));
            quant::quantize_rows(ty, dst, &mut enc, row, imp);
            quant::dequantize_row(ty, &enc, dst);
        }
    }
}

/// `base` with a row transform applied to some tensors: `f(node, r, row)`
/// rewrites row `r` of `node` in place (decoded as the base stores it) and
/// is called for every row of every tensor.
pub struct Mapped<'a, F: Fn(&TensorNode, usize, &mut [f32]) + Sync> {
    pub base: &'a Opened,
    pub f: F,
}

impl<F: Fn(&TensorNode, usize, &mut [f32]) + Sync> Source for Mapped<'_, F> {
    fn opened(&self) -> &Opened {
        self.base
    }

    fn read_row(&self, node: &TensorNode, r: usize, dst: &mut [f32]) {
        self.base.loaded.read_row(node, r, dst);
        (self.f)(node, r, dst);
    }
}

/// `base` with some tensors replaced by given values (row-major, in the
/// tensor's shape): weights a pass has rewritten (GPTQ's rounded weights,
/// for one block at a time).
pub struct Overrides<'a> {
    pub base: &'a Opened,
    pub values: HashMap<String, Vec<f32>>,
}

impl Source for Overrides<'_> {
    fn opened(&self) -> &Opened {
        self.base
    }

    fn read_row(&self, node: &TensorNode, r: usize, dst: &mut [f32]) {
        match self.values.get(&node.name) {
            Some(v) => {
                let n = dst.len();
                dst.copy_from_slice(&v[r * n..(r + 1) * n]);
            }
            None => self.base.loaded.read_row(node, r, dst),
        }
    }
}
