//! Importance-matrix collection: for every linear weight, the sum of squared
//! input activations per input column and the number of rows (tokens) seen,
//! as llama.cpp's `llama-imatrix` accumulates them (`IMatrixCollector::
//! collect_imatrix`): only `blk.*` weights unless the output projection is
//! asked for, every position of every window.
//!
//! What must stay true: `sum2[j]` is the sum over all observed rows of `x[j]²`
//! and `counts[0]` the number of rows, so `sum2 / count` is the mean squared
//! activation, the importance llama.cpp's quantizers weight errors by; for
//! a stacked expert weight (`ffn_*_exps`), as llama-imatrix does for
//! `MUL_MAT_ID`, `sum2` holds one slice per expert (`n_expert x in`) and
//! `counts[e]` the rows routed to expert `e`.
//! Entries are kept in first-seen order (the forward pass's order), so the
//! output does not depend on hashing.

use candle_core::{DType, Tensor};

use crate::error::{Error, OpContext, Result};
use crate::forward::Observer;

/// Accumulated statistics of one weight's input.
#[derive(Debug, Clone)]
pub struct Entry {
    /// GGUF tensor name of the weight (`blk.0.attn_q.weight`).
    pub name: String,
    /// Sum of squared activations per input column (per expert, expert
    /// after expert, for a stacked expert weight).
    pub sum2: Vec<f64>,
    /// Rows (tokens) accumulated, per expert (one count for other weights).
    pub counts: Vec<u64>,
}

impl Entry {
    /// Mean squared activation per input column (per expert).
    pub fn mean(&self) -> Vec<f32> {
        let cols = self.sum2.len() / self.counts.len().max(1);
        self.sum2
            .iter()
            .enumerate()
            .map(|(j, &s)| {
                let n = self
                    .counts
                    .get(j / cols.max(1))
                    .copied()
                    .unwrap_or(0)
                    .max(1);
                (s / n as f64) as f32
            })
            .collect()
    }
}

/// An [`Observer`] that records the largest magnitude of every linear
/// input over all observed rows: the static activation range that
/// compressed-tensors' `FP8` and `NVFP4` schemes store (`input_scale`,
/// `input_global_scale`; llm-compressor's `static_minmax` observer keeps the
/// running min and max over all calibration batches, symmetric: their
/// larger magnitude). Keyed by GGUF weight name; an expert's input under
/// `<stacked stem>.<expert>.weight` (`blk.0.ffn_up_exps.3.weight`), the
/// name `formats::ct::unstack_experts` gives it.
#[derive(Debug, Default)]
pub struct InputRange {
    pub amax: std::collections::BTreeMap<String, f32>,
}

impl InputRange {
    fn add(&mut self, key: String, x: &Tensor) -> Result<()> {
        let a = x
            .abs()
            .and_then(|x| x.flatten_all())
            .and_then(|x| x.max(0))
            .and_then(|x| x.to_dtype(DType::F32))
            .and_then(|x| x.to_scalar::<f32>())
            .op(|| format!("{key}: input range"))?;
        if !a.is_finite() {
            return Err(Error::Input(format!(
                "tensor `{}`: non-finite input activation (NaN or Inf): no activation scale can be calibrated",
                passes::printable(&key)
            )));
        }
        let e = self.amax.entry(key).or_insert(0.0);
        *e = e.max(a);
        Ok(())
    }
}

impl Observer for InputRange {
    fn linear_input(&mut self, weight: &str, x: &Tensor) -> Result<()> {
        self.add(weight.to_string(), x)
    }

    fn expert_input(
        &mut self,
        weight: &str,
        expert: usize,
        _n_expert: usize,
        x: &Tensor,
    ) -> Result<()> {
        if x.dims().first().is_some_and(|&rows| rows == 0) {
            return Ok(());
        }
        let stem = weight.trim_end_matches(".weight");
        self.add(format!("{stem}.{expert}.weight"), x)
    }
}

/// An [`Observer`] that accumulates an importance matrix.
#[derive(Debug, Default)]
pub struct Collector {
    pub entries: Vec<Entry>,
    /// Also collect the output projection (`llama-imatrix --process-output`).
    pub include_output: bool,
}

impl Collector {
    pub fn new(include_output: bool) -> Collector {
        Collector {
            entries: Vec::new(),
            include_output,
        }
    }
}

impl Observer for Collector {
    fn linear_input(&mut self, weight: &str, x: &Tensor) -> Result<()> {
        self.accumulate(weight, 0, 1, x)
    }

    fn expert_input(
        &mut self,
        weight: &str,
        expert: usize,
        n_expert: usize,
        x: &Tensor,
    ) -> Result<()> {
        self.accumulate(weight, expert, n_expert, x)
    }
}

impl Collector {
    /// Add `x`'s rows to expert `expert`'s slice of `weight`'s entry (of
    /// `n_expert` slices; 1 for a plain weight).
    fn accumulate(
        &mut self,
        weight: &str,
        expert: usize,
        n_expert: usize,
        x: &Tensor,
    ) -> Result<()> {
        if !(weight.starts_with("blk.") || (self.include_output && weight == "output.weight")) {
            return Ok(());
        }
        let (rows, cols) = x.dims2().op(|| format!("{weight}: input shape"))?;
        // Column sums of squares, in f64 so long texts do not lose the tail.
        let sq: Vec<f64> = x
            .to_dtype(DType::F64)
            .and_then(|x| x.sqr())
            .and_then(|x| x.sum(0))
            .and_then(|x| x.to_vec1::<f64>())
            .op(|| format!("{weight}: squared input"))?;
        // A NaN or Inf here would be written into the imatrix, which every
        // consumer then refuses: refuse it where it arises.
        if let Some(j) = sq.iter().position(|v| !v.is_finite()) {
            return Err(Error::Input(format!(
                "tensor `{}`: non-finite input activation (NaN or Inf) in column {j}: the model's weights or the text overflow; no importance matrix can be collected",
                passes::printable(weight)
            )));
        }
        let e = match self.entries.iter().position(|e| e.name == weight) {
            Some(i) => &mut self.entries[i],
            None => {
                self.entries.push(Entry {
                    name: weight.to_string(),
                    sum2: vec![0.0; cols * n_expert],
                    counts: vec![0; n_expert],
                });
                self.entries.last_mut().expect("just pushed")
            }
        };
        if e.counts.len() != n_expert || expert >= n_expert || e.sum2.len() != cols * n_expert {
            return Err(Error::Input(format!(
                "tensor `{}`: inputs of {cols} columns for expert {expert} of {n_expert} do not fit its entry of {} values over {} expert(s)",
                passes::printable(weight),
                e.sum2.len(),
                e.counts.len()
            )));
        }
        for (a, b) in e.sum2[expert * cols..(expert + 1) * cols]
            .iter_mut()
            .zip(sq)
        {
            *a += b;
        }
        e.counts[expert] += rows as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sums_squares_per_column_and_counts_rows() {
        let mut c = Collector::new(false);
        let x = Tensor::from_vec(vec![1f32, 2.0, -3.0, 4.0], (2, 2), &Device::Cpu).unwrap();
        c.linear_input("blk.0.attn_q.weight", &x).unwrap();
        c.linear_input("blk.0.attn_q.weight", &x).unwrap();
        c.linear_input("output.weight", &x).unwrap();
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.entries[0].sum2, vec![20.0, 40.0]);
        assert_eq!(c.entries[0].counts, vec![4]);
        assert_eq!(c.entries[0].mean(), vec![5.0, 10.0]);
    }

    #[test]
    fn keeps_one_slice_and_count_per_expert() {
        let mut c = Collector::new(false);
        let two = Tensor::from_vec(vec![1f32, 2.0, 3.0, 4.0], (2, 2), &Device::Cpu).unwrap();
        let one = Tensor::from_vec(vec![2f32, 0.0], (1, 2), &Device::Cpu).unwrap();
        let w = "blk.0.ffn_down_exps.weight";
        c.expert_input(w, 2, 3, &two).unwrap();
        c.expert_input(w, 0, 3, &one).unwrap();
        c.expert_input(w, 2, 3, &one).unwrap();
        let e = &c.entries[0];
        assert_eq!(e.sum2, vec![4.0, 0.0, 0.0, 0.0, 14.0, 20.0]);
        assert_eq!(e.counts, vec![1, 0, 3]);
        assert_eq!(e.mean(), vec![4.0, 0.0, 0.0, 0.0, 14.0 / 3.0, 20.0 / 3.0]);
        // An expert past the entry's count is refused, not written out of bounds.
        assert!(c.expert_input(w, 3, 3, &one).is_err());
    }
}
