//! Calibration for the pruning passes (`passes::passes::prune`): one run of
//! the forward pass over calibration windows collects
//!
//! - each linear weight's mean squared input per column (the imatrix
//!   statistic, Wanda's activation norm squared), by GGUF tensor name;
//! - each block's influence, ShortGPT's `BI = 1 - E[cos(x_in, x_out)]` over
//!   every position of every window, where `x_in` / `x_out` are the residual
//!   stream before and after the block.
//!
//! What must stay true: the statistics are sums over windows in window
//! order (deterministic); a block's influence is in [0, 2].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, OpContext, Result};
use crate::forward::Transformer;
use crate::imatrix::Collector;

/// What one calibration run measured.
#[derive(Debug, Clone, Default)]
pub struct Calibration {
    /// Mean squared input per column, by weight name (`blk.0.ffn_down.weight`).
    pub activations: BTreeMap<String, Vec<f32>>,
    /// ShortGPT block influence of each block, in layer order.
    pub block_influence: Vec<f64>,
    /// Positions the statistics are over.
    pub tokens: usize,
}

impl Calibration {
    /// The `n` blocks of lowest influence (ties: lower index), ascending.
    pub fn least_influential(&self, n: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.block_influence.len()).collect();
        idx.sort_by(|&a, &b| {
            self.block_influence[a]
                .total_cmp(&self.block_influence[b])
                .then(a.cmp(&b))
        });
        idx.truncate(n);
        idx.sort_unstable();
        idx
    }
}

/// Run `net` over `windows`, collecting activations and block influence.
pub fn calibrate(
    net: &Transformer,
    windows: &[Vec<u32>],
    cancel: &AtomicBool,
) -> Result<Calibration> {
    let mut collector = Collector::new(false);
    let n_layer = net.cfg.arch.n_layer;
    let mut cos_sum = vec![0f64; n_layer];
    let mut tokens = 0usize;
    for win in windows {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Input("interrupted".into()));
        }
        let mut cap = Vec::with_capacity(n_layer + 1);
        net.forward_resumable(win, win.len() - 1, None, Some(&mut cap), &mut collector)?;
        let rows: Vec<Vec<Vec<f32>>> = cap
            .iter()
            .map(|x| x.to_vec2::<f32>().op(|| "block input".into()))
            .collect::<Result<_>>()?;
        for (l, sum) in cos_sum.iter_mut().enumerate() {
            for (a, b) in rows[l].iter().zip(&rows[l + 1]) {
                *sum += cosine(a, b);
            }
        }
        tokens += win.len();
    }
    let activations = collector
        .entries
        .iter()
        .map(|e| (e.name.clone(), e.mean()))
        .collect();
    Ok(Calibration {
        activations,
        block_influence: cos_sum
            .iter()
            .map(|s| 1.0 - s / tokens.max(1) as f64)
            .collect(),
        tokens,
    })
}

/// ShortGPT block influence of every block of `src` over `windows`, the
/// model streamed block by block (memory: one block and two copies of the
/// residual streams), as [`calibrate`] measures it with the whole model.
pub fn block_influence(
    src: &dyn crate::source::Source,
    windows: &[Vec<u32>],
    cancel: &AtomicBool,
) -> Result<Vec<f64>> {
    let m = crate::stream::Streamed::new(src)?;
    let mut st = m.embed(windows)?;
    let mut out = Vec::with_capacity(m.n_layer());
    let mut tokens = 0usize;
    for w in windows {
        tokens += w.len();
    }
    for i in 0..m.n_layer() {
        let before = st.xs.clone();
        m.block(i, &mut st, &mut crate::forward::NoObserver, cancel)?;
        let mut sum = 0f64;
        for (a, b) in before.iter().zip(&st.xs) {
            let a = a.to_vec2::<f32>().op(|| "block input".into())?;
            let b = b.to_vec2::<f32>().op(|| "block output".into())?;
            for (x, y) in a.iter().zip(&b) {
                sum += cosine(x, y);
            }
        }
        out.push(1.0 - sum / tokens.max(1) as f64);
    }
    Ok(out)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_and_ranking() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-12);
        let c = Calibration {
            block_influence: vec![0.3, 0.1, 0.1, 0.5],
            ..Calibration::default()
        };
        assert_eq!(c.least_influential(2), vec![1, 2]);
        assert_eq!(c.least_influential(3), vec![0, 1, 2]);
    }
}
