//! What GPTQ buys per weight and GGUF type, measured before anything is
//! rounded, so that a planner can allocate over "this type rounded to
//! nearest" and "this type GPTQ-rounded" per tensor.
//!
//! One streaming pass over the original model on the calibration windows
//! (one block's weights decoded at a time) collects each block's Hessians
//! (`H = 2/n sum x x^T` of every linear's inputs, [`crate::gptq::Hessians`]);
//! for every weight and every candidate type, a fixed sample of its rows is
//! rounded both ways, ggml's encoder (round to nearest, with the tensor's
//! importance weights) and GPTQ onto the same type ([`GgufRows`], with the
//! Hessian's factor), and each is scored by the layer-output error it causes
//! on the calibration inputs, `sum over rows of d H d^T` with `d` the row's
//! rounding error (the undamped Hessian: the quantity GPTQ minimizes). The
//! ratio of the two is the gain: below 1, GPTQ lowers the layer's output
//! error at that type.
//!
//! Rows are independent given the factor (GPTQ feeds errors along a row's
//! columns only), so a sample of rows estimates the whole weight's ratio at
//! a fraction of the cost; the sample is every `ceil(rows / sample)`-th row,
//! a function of the shape alone. The inputs are the original model's (not
//! those of blocks already rounded, as a GPTQ run sees): a per-layer
//! estimate, which the planner confirms by measuring the whole plan.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use quant::GgmlType;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::forward::Observer;
use crate::gguf_gptq::{supports, GgufRows};
use crate::gptq::{Factor, Hessians, Options};
use crate::model::Opened;
use crate::stream::Streamed;

/// The layer-output error of one weight at one type, both ways, over the
/// sampled rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gain {
    /// Rounded to nearest by ggml's encoder.
    pub rtn: f64,
    /// GPTQ-rounded onto the same type.
    pub gptq: f64,
}

impl Gain {
    /// GPTQ's error as a fraction of round-to-nearest's (1 where both are 0).
    pub fn ratio(&self) -> f64 {
        if self.rtn > 0.0 {
            self.gptq / self.rtn
        } else if self.gptq > 0.0 {
            f64::INFINITY
        } else {
            1.0
        }
    }
}

/// `sum_r d_r H d_r^T`, `d = w - q` (`rows x n`), summed in row order.
fn output_error(w: &[f32], q: &[f32], h: &[f64], n: usize) -> f64 {
    let per_row: Vec<f64> = w
        .par_chunks_exact(n.max(1))
        .zip(q.par_chunks_exact(n.max(1)))
        .map(|(wr, qr)| {
            let d: Vec<f64> = wr
                .iter()
                .zip(qr)
                .map(|(&a, &b)| f64::from(a) - f64::from(b))
                .collect();
            let mut s = 0f64;
            for (i, &di) in d.iter().enumerate() {
                if di == 0.0 {
                    continue;
                }
                let hi = &h[i * n..(i + 1) * n];
                let mut t = 0f64;
                for (x, y) in hi.iter().zip(&d) {
                    t += x * y;
                }
                s += di * t;
            }
            s
        })
        .collect();
    per_row.iter().sum()
}

/// The rows sampled from a weight of `rows` rows: every
/// `ceil(rows / sample)`-th, from the first.
pub fn sampled_rows(rows: usize, sample: usize) -> Vec<usize> {
    let stride = rows.div_ceil(sample.max(1)).max(1);
    (0..rows).step_by(stride).collect()
}

/// The gain of GPTQ for every weight of `candidates` (GGUF names of `m`,
/// each with the types to score; types GPTQ cannot round onto are skipped)
/// that the blocks read, with `importance` (GGUF names) weighting both
/// roundings as a build would, on `sample` rows of each weight. Weights the
/// blocks do not read as linear inputs (the output head, embeddings) are
/// absent from the result. `progress(i)` after block `i`.
#[allow(clippy::too_many_arguments)]
pub fn gains(
    m: &Opened,
    candidates: &BTreeMap<String, Vec<GgmlType>>,
    importance: &BTreeMap<String, Vec<f32>>,
    windows: &[Vec<u32>],
    percdamp: f64,
    sample: usize,
    progress: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<BTreeMap<String, Vec<(GgmlType, Gain)>>> {
    let opts = Options {
        block: 128,
        percdamp,
        actorder: false,
    };
    let net = Streamed::new(m)?;
    let mut st = net.embed(windows)?;
    let wants = |n: &str| candidates.contains_key(n);
    let mut out = BTreeMap::new();
    for i in 0..net.n_layer() {
        let mut obs = Hessians::new(&wants);
        // The original block, observed as it runs: the next block's inputs.
        net.block_from(m, i, &mut st, &mut obs as &mut dyn Observer, cancel)?;
        let slots = std::mem::take(&mut obs.slots);
        drop(obs);
        for slot in slots {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Formats(formats::Error::Interrupted));
            }
            let (names, n) = (slot.names.clone(), slot.n);
            let h = slot.into_hessian();
            let f = Factor::new(&h, n, &opts);
            for name in names {
                let node = m.need(&name)?;
                let rows = match node.shape.as_slice() {
                    [r, c] if *c == n => *r,
                    s => {
                        return Err(Error::Input(format!(
                            "tensor `{}`: shape {s:?} for an input of {n} columns",
                            passes::printable(&name)
                        )))
                    }
                };
                let w = m.read_f32(node);
                m.release(node);
                let picked = sampled_rows(rows, sample);
                let mut ws = Vec::with_capacity(picked.len() * n);
                for &r in &picked {
                    ws.extend_from_slice(&w[r * n..(r + 1) * n]);
                }
                drop(w);
                let qw = importance
                    .get(&name)
                    .map(|v| v.as_slice())
                    .filter(|v| v.len() == n);
                let mut scored = Vec::new();
                for &ty in &candidates[&name] {
                    let Some(rb) = ty.row_bytes(n).filter(|_| supports(ty)) else {
                        continue;
                    };
                    let k = picked.len();
                    let mut enc = vec![0u8; k * rb];
                    quant::quantize_rows(ty, &ws, &mut enc, n, qw);
                    let mut rtn = vec![0f32; k * n];
                    for (e, d) in enc.chunks_exact(rb).zip(rtn.chunks_exact_mut(n)) {
                        quant::dequantize_row(ty, e, d);
                    }
                    let mut g = ws.clone();
                    f.quantize_rows(&mut g, &GgufRows::new(ty, n, qw), &mut enc, &opts);
                    scored.push((
                        ty,
                        Gain {
                            rtn: output_error(&ws, &rtn, &h, n),
                            gptq: output_error(&ws, &g, &h, n),
                        },
                    ));
                }
                out.insert(name, scored);
            }
        }
        progress(i + 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_spread_over_the_rows() {
        assert_eq!(sampled_rows(10, 4), vec![0, 3, 6, 9]);
        assert_eq!(sampled_rows(3, 32), vec![0, 1, 2]);
        assert_eq!(sampled_rows(64, 32).len(), 32);
        assert!(sampled_rows(0, 8).is_empty());
    }

    #[test]
    fn output_error_is_the_quadratic_form() {
        // H = [[2, 1], [1, 2]], d = (1, -1) and (0.5, 0): 2 - 1 - 1 + 2 = 2; 0.25 * 2 = 0.5.
        let h = [2.0, 1.0, 1.0, 2.0];
        let w = [1.0f32, 0.0, 0.5, 0.0];
        let q = [0.0f32, 1.0, 0.0, 0.0];
        assert!((output_error(&w, &q, &h, 2) - 2.5).abs() < 1e-12);
        assert_eq!(
            Gain {
                rtn: 0.0,
                gptq: 0.0
            }
            .ratio(),
            1.0
        );
        assert_eq!(
            Gain {
                rtn: 2.0,
                gptq: 1.0
            }
            .ratio(),
            0.5
        );
    }
}
