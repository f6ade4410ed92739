//! What the Gemma 2 / Gemma 3 forward pass adds to the llama one, as
//! llama.cpp's `gemma2-iswa` and `gemma3` graphs compute it: the per-layer
//! RoPE tables (Gemma 3's local base on sliding-window layers, linear scaling
//! on the global ones), the sliding-window causal mask, and `tanh`
//! soft-capping.
//!
//! What must stay true: a sliding-window layer lets position `i` see `j`
//! when `j <= i` and `i - j < window` (llama.cpp's `LLAMA_SWA_TYPE_STANDARD`,
//! HF's `sliding_window_overlay`); the other layers are plainly causal.

use candle_core::{Device, Tensor};
use passes::{Arch, GemmaAttn};

use crate::error::{OpContext, Result};

/// cos and sin tables `[t, head_dim / 2]` for positions `0..t` with RoPE
/// base `base` and positions multiplied by `freq_scale` (ggml's linear
/// scaling, `1 / factor`).
pub fn rope_tables(
    t: usize,
    head_dim: usize,
    base: f64,
    freq_scale: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for p in 0..t {
        for i in 0..half {
            let theta = p as f64 * freq_scale * base.powf(-2.0 * i as f64 / head_dim as f64);
            cos.push(theta.cos() as f32);
            sin.push(theta.sin() as f32);
        }
    }
    let cos = Tensor::from_vec(cos, (t, half), device).op(|| "rope cos".into())?;
    let sin = Tensor::from_vec(sin, (t, half), device).op(|| "rope sin".into())?;
    Ok((cos, sin))
}

/// The additive causal mask `[t, t]`, limited to `window` positions back
/// when given.
pub fn mask(t: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..t * t)
        .map(|k| {
            let (i, j) = (k / t, k % t);
            let hidden = j > i || window.is_some_and(|w| i - j >= w);
            if hidden {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(m, (t, t), device).op(|| "mask".into())
}

/// `cap * tanh(x / cap)`.
pub fn softcap(x: &Tensor, cap: f32) -> Result<Tensor> {
    let cap = f64::from(cap);
    (x / cap)
        .and_then(|y| y.tanh())
        .and_then(|y| y * cap)
        .op(|| format!("soft-cap at {cap}"))
}

/// Per-layer attention inputs: RoPE tables and mask for the global and the
/// sliding-window layers.
pub struct LayerInputs {
    global: (Tensor, Tensor, Tensor),
    local: Option<(Tensor, Tensor, Tensor)>,
}

impl LayerInputs {
    /// Tables and masks for `t` positions of a model with `arch` (its
    /// `gemma` facts, when any).
    pub fn new(arch: &Arch, t: usize, device: &Device) -> Result<LayerInputs> {
        let hd = arch.head_dim;
        let theta = f64::from(arch.rope_theta);
        let Some(g) = &arch.gemma else {
            let (c, s) = rope_tables(t, hd, theta, 1.0, device)?;
            return Ok(LayerInputs {
                global: (c, s, mask(t, None, device)?),
                local: None,
            });
        };
        let scale = g.rope_linear_factor.map_or(1.0, |f| 1.0 / f64::from(f));
        let (c, s) = rope_tables(t, hd, theta, scale, device)?;
        let global = (c, s, mask(t, None, device)?);
        let local = if g.swa_pattern > 0 {
            let base = g.rope_local_theta.map_or(theta, f64::from);
            let (c, s) = rope_tables(t, hd, base, 1.0, device)?;
            Some((c, s, mask(t, Some(g.sliding_window), device)?))
        } else {
            None
        };
        Ok(LayerInputs { global, local })
    }

    /// One set of tables for every layer, plainly causal (the other families;
    /// their RoPE scaling is in `cos`/`sin`).
    pub fn plain(cos: Tensor, sin: Tensor, t: usize, device: &Device) -> Result<LayerInputs> {
        Ok(LayerInputs {
            global: (cos, sin, mask(t, None, device)?),
            local: None,
        })
    }

    /// (cos, sin, mask) of layer `i`.
    pub fn layer(&self, g: Option<&GemmaAttn>, i: usize) -> (&Tensor, &Tensor, &Tensor) {
        let pick = match (&self.local, g) {
            (Some(l), Some(g)) if g.is_swa_layer(i) => l,
            _ => &self.global,
        };
        (&pick.0, &pick.1, &pick.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_mask_sees_itself_and_window_minus_one_back() {
        let m = mask(5, Some(2), &Device::Cpu).unwrap();
        let v: Vec<Vec<f32>> = m.to_vec2().unwrap();
        let seen: Vec<Vec<usize>> = v
            .iter()
            .map(|r| (0..5).filter(|&j| r[j] == 0.0).collect())
            .collect();
        assert_eq!(
            seen,
            vec![vec![0], vec![0, 1], vec![1, 2], vec![2, 3], vec![3, 4]]
        );
    }

    #[test]
    fn softcap_bounds_values() {
        let x = Tensor::new(&[0.0f32, 100.0, -100.0], &Device::Cpu).unwrap();
        let y: Vec<f32> = softcap(&x, 5.0).unwrap().to_vec1().unwrap();
        assert_eq!(y[0], 0.0);
        assert!((y[1] - 5.0).abs() < 1e-5 && (y[2] + 5.0).abs() < 1e-5);
    }
}
