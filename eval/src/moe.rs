//! The mixture-of-experts FFN of the forward pass (Mixtral as llama.cpp's
//! `llama` with experts, `qwen2moe`), as llama.cpp's `build_moe_ffn` runs it:
//! router logits, softmax over all experts, the top `n_expert_used` by
//! probability, their weights renormalized to sum to one where the family
//! does (`passes::arch::moe_norm_top_k`), each chosen expert's SiLU-gated FFN
//! scaled by its weight and summed; plus, where the layer has one, the
//! shared expert's FFN scaled by `sigmoid(ffn_gate_inp_shexp · x)`.
//!
//! What must stay true: experts are the stacked `[n_expert, out, in]` GGUF
//! tensors, expert `e` being row block `e`; the [`Observer`] sees each
//! expert's input rows (the tokens routed to it) under the stacked weight's
//! name with the expert index, as llama-imatrix collects `MUL_MAT_ID`; ties
//! in routing go to the lower expert index.

use candle_core::Tensor;
use candle_nn::ops::{sigmoid, softmax_last_dim};

use crate::error::{OpContext, Result};
use crate::forward::{Linear, Observer};

/// Stacked routed experts: `w` is `[n_expert, out, in]`.
#[derive(Debug)]
pub(crate) struct Experts {
    pub name: String,
    pub w: Tensor,
    /// Per expert, how the runtime quantizes its input (see `Linear::act`).
    pub acts: Vec<Option<quant::ct::ActQuant>>,
}

/// The shared expert and its gate (`qwen2moe`).
#[derive(Debug)]
pub(crate) struct Shared {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    /// `ffn_gate_inp_shexp`, `[1, hidden]`.
    pub gate_inp: Linear,
}

/// One layer's MoE FFN.
#[derive(Debug)]
pub(crate) struct Moe {
    pub router: Linear,
    pub gate: Experts,
    pub up: Experts,
    pub down: Experts,
    pub shared: Option<Shared>,
    pub n_used: usize,
    pub norm_top_k: bool,
}

impl Moe {
    pub fn n_expert(&self) -> usize {
        self.gate.w.dims().first().copied().unwrap_or(0)
    }

    /// For each token, the chosen experts and their weights.
    fn route(&self, probs: &[Vec<f32>]) -> Vec<Vec<(usize, f32)>> {
        probs
            .iter()
            .map(|p| {
                let mut order: Vec<usize> = (0..p.len()).collect();
                // Descending probability, the lower index first on ties.
                order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
                order.truncate(self.n_used);
                let sum: f32 = order.iter().map(|&e| p[e]).sum();
                order
                    .into_iter()
                    .map(|e| {
                        let w = if self.norm_top_k { p[e] / sum } else { p[e] };
                        (e, w)
                    })
                    .collect()
            })
            .collect()
    }

    /// The FFN output `[t, hidden]` for the normalized input `h` `[t, hidden]`.
    pub fn forward(
        &self,
        h: &Tensor,
        obs: &mut dyn Observer,
        ctx: &dyn Fn(&str) -> String,
    ) -> Result<Tensor> {
        let (t, hidden) = h.dims2().op(|| ctx("moe input"))?;
        let logits = self.router.forward(h, obs)?;
        let probs = softmax_last_dim(&logits)
            .and_then(|p| p.to_vec2::<f32>())
            .op(|| ctx("router softmax"))?;
        let routes = self.route(&probs);
        let device = h.device();
        let mut out = Tensor::zeros((t, hidden), h.dtype(), device).op(|| ctx("moe out"))?;
        let n_expert = self.n_expert();
        for e in 0..n_expert {
            let (tokens, weights): (Vec<u32>, Vec<f32>) = routes
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.iter().find(|(x, _)| *x == e).map(|&(_, w)| (i as u32, w)))
                .unzip();
            if tokens.is_empty() {
                continue;
            }
            let n = tokens.len();
            let idx = Tensor::from_vec(tokens, n, device).op(|| ctx("expert tokens"))?;
            let x = h.index_select(&idx, 0).op(|| ctx("expert rows"))?;
            let g = expert_matmul(&self.gate, e, n_expert, &x, obs, ctx)?;
            let u = expert_matmul(&self.up, e, n_expert, &x, obs, ctx)?;
            let a = (g.silu().op(|| ctx("expert silu"))? * u).op(|| ctx("expert gate * up"))?;
            let d = expert_matmul(&self.down, e, n_expert, &a, obs, ctx)?;
            let w = Tensor::from_vec(weights, (n, 1), device).op(|| ctx("expert weights"))?;
            let d = d.broadcast_mul(&w).op(|| ctx("expert weighting"))?;
            out = out.index_add(&idx, &d, 0).op(|| ctx("expert sum"))?;
        }
        if let Some(s) = &self.shared {
            let g = s.gate.forward(h, obs)?;
            let u = s.up.forward(h, obs)?;
            let a = (g.silu().op(|| ctx("shexp silu"))? * u).op(|| ctx("shexp gate * up"))?;
            let d = s.down.forward(&a, obs)?;
            let gate = sigmoid(&s.gate_inp.forward(h, obs)?).op(|| ctx("shexp gate"))?;
            let d = d.broadcast_mul(&gate).op(|| ctx("shexp weighting"))?;
            out = (out + d).op(|| ctx("shexp sum"))?;
        }
        Ok(out)
    }

    /// The stacked expert weights of this layer (for `set_weight`).
    pub fn experts_mut(&mut self) -> [&mut Experts; 3] {
        [&mut self.gate, &mut self.up, &mut self.down]
    }
}

/// `x @ w[e]^T`, the observer seeing `x` as expert `e`'s input.
fn expert_matmul(
    w: &Experts,
    e: usize,
    n_expert: usize,
    x: &Tensor,
    obs: &mut dyn Observer,
    ctx: &dyn Fn(&str) -> String,
) -> Result<Tensor> {
    obs.expert_input(&w.name, e, n_expert, x)?;
    let act = w.acts.get(e).copied().flatten();
    let x = &crate::forward::quantize_input(x, act, &w.name)?;
    w.w.get(e)
        .and_then(|m| m.t())
        .and_then(|m| x.matmul(&m))
        .op(|| ctx(&format!("{}: expert {e} matmul", w.name)))
}

/// Refuse a routed-expert count the forward pass cannot run.
pub(crate) fn check_counts(n_expert: usize, n_used: usize) -> std::result::Result<(), String> {
    if n_used == 0 || n_used > n_expert {
        return Err(format!(
            "{n_used} experts used per token of {n_expert}: not a routing kiln runs"
        ));
    }
    Ok(())
}
