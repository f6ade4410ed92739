//! Measurements the planner needs: each tensor's error in each candidate
//! encoding ([`measure`]), and how much a unit of that error costs in KL
//! divergence for groups of tensors ([`probe`]).
//!
//! The error unit is the noise-to-signal ratio of a tensor's output,
//! `sum_j imp_j (w_ij - q_ij)^2 / sum_j imp_j w_ij^2` over rows `i` and
//! columns `j`, where `imp_j` is the importance (mean squared input) of
//! column `j` from an importance matrix, or 1 without one. It is the relative
//! output noise power of `y = W x` for inputs with those second moments
//! (cross terms ignored), so it is comparable across tensors of different
//! sizes and scales.
//!
//! What must stay true:
//! - the quantized values are exactly what the emitter would write (the same
//!   `quant::quantize_rows` with the same importance vector), decoded back;
//! - results are deterministic for any thread count: per-row sums are
//!   collected in row order and added sequentially;
//! - large tensors are measured on an evenly strided subset of rows (at most
//!   `max_elements` values), the same subset for every candidate; the report
//!   says how many rows were measured.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use passes::TensorNode;
use quant::GgmlType;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::Opened;
use crate::source::Roundtrip;
pub use crate::stream::Reference;

/// One candidate encoding of one tensor, measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub ty: GgmlType,
    /// Exact encoded bytes of the whole tensor.
    pub bytes: u64,
    /// Noise-to-signal ratio (see the module doc).
    pub nsr: f64,
}

/// A tensor's candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub name: String,
    pub rows_measured: usize,
    pub rows: usize,
    pub candidates: Vec<Candidate>,
}

/// The importance vector of row `r` (a 3-D expert tensor has one per expert).
fn importance_for_row<'a>(
    imp: Option<&'a [f32]>,
    node: &TensorNode,
    r: usize,
) -> Option<&'a [f32]> {
    imp.map(|v| formats::imatrix::row_importance(v, &node.shape, r))
}

/// The rows measured: all, or `max_elements / row_len` evenly strided.
pub fn sampled_rows(node: &TensorNode, max_elements: usize) -> Vec<usize> {
    let (rows, row) = (node.n_rows(), node.row_len().max(1));
    let k = (max_elements / row).clamp(1, rows.max(1));
    if k >= rows {
        return (0..rows).collect();
    }
    (0..k).map(|i| i * rows / k).collect()
}

/// Measure `node` in each of `types` (each must divide its rows).
pub fn measure(
    m: &Opened,
    node: &TensorNode,
    types: &[GgmlType],
    importance: Option<&[f32]>,
    max_elements: usize,
) -> Result<Measured> {
    let row = node.row_len();
    let rows = sampled_rows(node, max_elements);
    let mut src = vec![0f32; rows.len() * row];
    src.par_chunks_mut(row.max(1))
        .zip(rows.par_iter())
        .for_each(|(dst, &r)| m.loaded.read_row(node, r, dst));
    if let Some((i, _)) = src.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Model {
            model: m.name(),
            reason: format!(
                "tensor `{}` holds a non-finite value (row {})",
                node.name,
                rows[i / row.max(1)]
            ),
        });
    }
    let weight = |r: usize| importance_for_row(importance, node, r);
    // Signal per row, then summed in order.
    let signal: f64 = rows
        .par_iter()
        .enumerate()
        .map(|(k, &r)| {
            let x = &src[k * row..(k + 1) * row];
            match weight(r) {
                Some(w) => x
                    .iter()
                    .zip(w)
                    .map(|(&v, &w)| w as f64 * (v as f64).powi(2))
                    .sum(),
                None => x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>(),
            }
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    let mut candidates = Vec::with_capacity(types.len());
    for &ty in types {
        let rb = ty.row_bytes(row).ok_or_else(|| {
            Error::Input(format!(
                "tensor `{}`: {ty} does not divide rows of {row}",
                node.name
            ))
        })?;
        let noise: Vec<f64> = rows
            .par_iter()
            .enumerate()
            .map_init(
                || (vec![0u8; rb], vec![0f32; row]),
                |(enc, dec), (k, &r)| {
                    let x = &src[k * row..(k + 1) * row];
                    let w = weight(r);
                    quant::quantize_rows(ty, x, enc, row, w);
                    quant::dequantize_row(ty, enc, dec);
                    match w {
                        Some(w) => x
                            .iter()
                            .zip(dec.iter())
                            .zip(w)
                            .map(|((&a, &b), &w)| w as f64 * (a as f64 - b as f64).powi(2))
                            .sum(),
                        None => x
                            .iter()
                            .zip(dec.iter())
                            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                            .sum::<f64>(),
                    }
                },
            )
            .collect();
        let noise: f64 = noise.iter().sum();
        candidates.push(Candidate {
            ty,
            bytes: rb as u64 * node.n_rows() as u64,
            nsr: if signal > 0.0 { noise / signal } else { 0.0 },
        });
    }
    Ok(Measured {
        name: node.name.clone(),
        rows_measured: rows.len(),
        rows: node.n_rows(),
        candidates,
    })
}

/// `node`'s values after encoding in `ty` and decoding (the whole tensor).
pub fn roundtrip(
    m: &Opened,
    node: &TensorNode,
    ty: GgmlType,
    importance: Option<&[f32]>,
) -> Result<Vec<f32>> {
    let row = node.row_len();
    let rb = ty.row_bytes(row).ok_or_else(|| {
        Error::Input(format!(
            "tensor `{}`: {ty} does not divide rows of {row}",
            node.name
        ))
    })?;
    let mut out = m.read_f32(node);
    out.par_chunks_mut(row.max(1)).enumerate().for_each_init(
        || vec![0u8; rb],
        |enc, (r, x)| {
            quant::quantize_rows(ty, x, enc, row, importance_for_row(importance, node, r));
            quant::dequantize_row(ty, enc, x);
        },
    );
    Ok(out)
}

/// A set of tensors probed together.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub label: String,
    /// Tensor names and the encoding each is probed in.
    pub tensors: Vec<(String, GgmlType)>,
}

/// The block from which a model with `tensors` changed differs from the
/// original: blocks before it are unchanged. The embedding changes
/// everything (0); the output head only the end (`n_layer`).
pub fn first_changed_layer<'n>(m: &Opened, tensors: impl IntoIterator<Item = &'n str>) -> usize {
    let n_layer = m.arch().map_or(0, |a| a.n_layer);
    tensors
        .into_iter()
        .map(|name| match m.tensor(name).and_then(|t| t.layer) {
            Some(l) => l,
            None if name == "output.weight" => n_layer,
            None => 0,
        })
        .min()
        .unwrap_or(0)
}

/// The blocks probes of `groups` resume from (for [`Reference::new`]).
pub fn resume_layers(m: &Opened, groups: &[Group]) -> Vec<usize> {
    let mut v: Vec<usize> = groups
        .iter()
        .map(|g| first_changed_layer(m, g.tensors.iter().map(|(n, _)| n.as_str())))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The mean KL divergence each group causes when its tensors (only) are
/// encoded as given, one group at a time, each run from the first block it
/// changes with the original's stream kept there by `reference` (built
/// with [`resume_layers`]); the candidate's weights are the emitter's
/// encoding decoded, row by row, as blocks stream.
pub fn probe(
    m: &Opened,
    reference: &Reference,
    groups: &[Group],
    importance: &BTreeMap<String, Vec<f32>>,
    progress: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(groups.len());
    for (gi, g) in groups.iter().enumerate() {
        let rt = Roundtrip {
            base: m,
            types: g.tensors.iter().cloned().collect(),
            importance,
        };
        rt.check()?;
        let from_layer = first_changed_layer(m, g.tensors.iter().map(|(n, _)| n.as_str()));
        out.push(reference.kld(&rt, from_layer, cancel)?);
        progress(gi + 1);
    }
    Ok(out)
}
