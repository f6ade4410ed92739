//! The llama-family forward pass (llama, mistral-as-llama, qwen2, qwen3, phi3,
//! and Gemma 2/3 with their additions from `crate::gemma`) on CPU with candle,
//! written so that every linear layer's input can be observed (the importance
//! matrix needs them).
//!
//! What must stay true:
//! - weights are in GGUF naming and layout (see `model::open`): llama q/k rows
//!   are in ggml's interleaved RoPE order, so llama uses interleaved RoPE
//!   (ggml's "normal" mode) and qwen2 uses NEOX RoPE, exactly as llama.cpp does
//!   (the style is the family spec's, `passes::arch`; the architecture facts
//!   are the model's `Arch`, not a copy); per-head q/k RMS norms
//!   (`attn_q_norm` / `attn_k_norm`, qwen3) are applied before RoPE whenever
//!   the model has them, as llama.cpp's graph does; phi3's fused `attn_qkv` (rows q, k,
//!   v) and `ffn_up` (rows gate, up) are split after the matmul, as
//!   llama.cpp's graph does, and, as there, its sliding window is not applied;
//! - RoPE scaling is applied as llama.cpp applies it: per-frequency divisors
//!   from the file's `rope_freqs` (llama3) or `rope_factors_long/short`
//!   (longrope) tensors, and the `rope.scaling.*` parameters (linear, YaRN,
//!   longrope's attention factor) carried in `Arch::rope_scaling`;
//! - every weight is dequantized to f32 once, at construction; arithmetic is
//!   f32 (the numpy reference in tests/python checks it in f64);
//! - [`Observer::linear_input`] sees the exact f32 input of each linear weight,
//!   named by its GGUF tensor name, before the weight is applied; a routed
//!   expert's input goes to [`Observer::expert_input`] (see `moe`).

use candle_core::{DType, Device, Tensor, D};
use candle_nn::ops::{rms_norm, softmax_last_dim};
use candle_nn::rotary_emb::{rope, rope_i};

use passes::arch::{self, rope, ArchSpec, RopeStyle};
use passes::ir::RopeScaling;
use passes::Arch;

use crate::error::{Error, OpContext, Result};
use crate::model::Opened;
use crate::moe::{Experts, Moe, Shared};
use crate::source::Source;
use quant::ct::ActQuant;
use rayon::prelude::*;

/// What the forward pass needs to know about the model: its architecture
/// facts, its family's spec (RoPE style), and the vocabulary the embedding
/// actually has.
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: Arch,
    pub spec: &'static ArchSpec,
    /// Rows of `token_embd.weight`.
    pub vocab: usize,
}

/// Sees the input of every linear weight.
pub trait Observer {
    /// `x` is the `[tokens, in_features]` input of the weight named `weight`
    /// (a GGUF name such as `blk.0.attn_q.weight`).
    fn linear_input(&mut self, weight: &str, x: &Tensor) -> Result<()>;

    /// `x` is the `[tokens, in_features]` input of expert `expert` (of
    /// `n_expert`) of the stacked expert weight named `weight`
    /// (`blk.0.ffn_down_exps.weight`): the rows of the tokens routed to it.
    fn expert_input(
        &mut self,
        weight: &str,
        expert: usize,
        n_expert: usize,
        x: &Tensor,
    ) -> Result<()> {
        let _ = (weight, expert, n_expert, x);
        Ok(())
    }
}

/// An observer that looks at nothing.
pub struct NoObserver;

impl Observer for NoObserver {
    fn linear_input(&mut self, _weight: &str, _x: &Tensor) -> Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
pub(crate) struct Linear {
    pub name: String,
    /// `[out, in]`, as stored.
    pub w: Tensor,
    pub b: Option<Tensor>,
    /// How the runtime quantizes the input (compressed-tensors W8A8, FP8,
    /// NVFP4), simulated after the observer has seen the unquantized input.
    pub act: Option<ActQuant>,
}

/// `x` (`[tokens, in]`) with each token's row fake-quantized by `act`.
pub(crate) fn quantize_input(x: &Tensor, act: Option<ActQuant>, name: &str) -> Result<Tensor> {
    let Some(act) = act else {
        return Ok(x.clone());
    };
    let (t, n) = x.dims2().op(|| format!("{name}: input shape"))?;
    let mut v = x
        .flatten_all()
        .and_then(|v| v.to_vec1::<f32>())
        .op(|| format!("{name}: input to host"))?;
    if n > 0 {
        v.par_chunks_mut(n).for_each(|row| act.apply(row));
    }
    Tensor::from_vec(v, (t, n), x.device()).op(|| format!("{name}: quantized input"))
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor, obs: &mut dyn Observer) -> Result<Tensor> {
        obs.linear_input(&self.name, x)?;
        let x = &quantize_input(x, self.act, &self.name)?;
        let y = x
            .matmul(&self.w.t().op(|| format!("{}: transpose", self.name))?)
            .op(|| format!("{}: matmul", self.name))?;
        match &self.b {
            Some(b) => y.broadcast_add(b).op(|| format!("{}: bias", self.name)),
            None => Ok(y),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Layer {
    attn_norm: Tensor,
    /// q, or the fused q/k/v (`attn_qkv`, phi3) when `k` and `v` are `None`.
    q: Linear,
    k: Option<Linear>,
    v: Option<Linear>,
    o: Linear,
    /// Per-head RMS norms of q and k before RoPE (`attn_q_norm` /
    /// `attn_k_norm`, `[head_dim]`; qwen3), when the model has them.
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    ffn_norm: Tensor,
    /// Gemma's sandwich norms and per-head q/k norms (weights with the `+ 1`
    /// already in, GGUF layout).
    post_attn_norm: Option<Tensor>,
    post_ffn_norm: Option<Tensor>,
    ffn: Ffn,
}

impl Layer {
    /// Block `i` over one window's residual stream `x` (`[t, hidden]`).
    pub(crate) fn forward(
        &self,
        fr: &Frame,
        i: usize,
        mut x: Tensor,
        inputs: &crate::gemma::LayerInputs,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        let l = self;
        let c = &fr.cfg.arch;
        let (nh, nkv, hd) = (c.n_head, c.n_head_kv, c.head_dim);
        let g = nh / nkv;
        let t = x.dim(0).op(|| format!("blk.{i}: tokens"))?;
        let gemma = c.gemma.as_ref();
        let scale = 1.0 / f64::from(gemma.map_or(hd as f32, |g| g.query_pre_attn_scalar)).sqrt();
        let (cos, sin, mask) = inputs.layer(gemma, i);
        let ctx = |what: &str| format!("blk.{i}: {what}");
        let h = rms_norm(&x, &l.attn_norm, c.rms_eps).op(|| ctx("attn_norm"))?;
        let (q, k, v) = match (&l.k, &l.v) {
            (Some(k), Some(v)) => (
                l.q.forward(&h, obs)?,
                k.forward(&h, obs)?,
                v.forward(&h, obs)?,
            ),
            _ => {
                // Fused rows: q, then k, then v.
                let qkv = l.q.forward(&h, obs)?;
                let part = |at: usize, n: usize| qkv.narrow(1, at, n).op(|| ctx("split qkv"));
                (
                    part(0, nh * hd)?,
                    part(nh * hd, nkv * hd)?,
                    part((nh + nkv) * hd, nkv * hd)?,
                )
            }
        };
        // [t, heads * hd] -> [1, heads, t, hd] for RoPE.
        let heads = |y: Tensor, n: usize, what: &str| -> Result<Tensor> {
            y.contiguous()
                .and_then(|y| y.reshape((1, t, n, hd)))
                .and_then(|y| y.transpose(1, 2))
                .and_then(|y| y.contiguous())
                .op(|| ctx(what))
        };
        let (mut q, mut k, v) = (
            heads(q, nh, "q heads")?,
            heads(k, nkv, "k heads")?,
            heads(v, nkv, "v heads")?,
        );
        // qwen3: each head of q and k RMS-normalized over head_dim, before RoPE.
        if let Some(w) = &l.q_norm {
            q = rms_norm(&q, w, c.rms_eps).op(|| ctx("attn_q_norm"))?;
        }
        if let Some(w) = &l.k_norm {
            k = rms_norm(&k, w, c.rms_eps).op(|| ctx("attn_k_norm"))?;
        }
        let (q, k) = match fr.cfg.spec.rope {
            RopeStyle::Interleaved => (rope_i(&q, cos, sin), rope_i(&k, cos, sin)),
            RopeStyle::Neox => (rope(&q, cos, sin), rope(&k, cos, sin)),
        };
        let (q, k) = (q.op(|| ctx("rope q"))?, k.op(|| ctx("rope k"))?);
        // Grouped-query attention without copying K/V: query heads
        // h = kv * g + j share KV head kv, so [nh, t, hd] is [nkv, g * t, hd].
        let q = q.reshape((nkv, g * t, hd)).op(|| ctx("q groups"))?;
        let k = k.reshape((nkv, t, hd)).op(|| ctx("k groups"))?;
        let v = v.reshape((nkv, t, hd)).op(|| ctx("v groups"))?;
        let att = q
            .matmul(&k.t().op(|| ctx("kT"))?)
            .and_then(|a| a * scale)
            .op(|| ctx("scores"))?;
        let att = match gemma.and_then(|g| g.attn_softcap) {
            Some(cap) => crate::gemma::softcap(&att, cap)?,
            None => att,
        };
        let att = att
            .reshape((nkv, g, t, t))
            .and_then(|a| a.broadcast_add(mask))
            .op(|| ctx("mask"))?;
        let att = softmax_last_dim(&att).op(|| ctx("softmax"))?;
        let o = att
            .reshape((nkv, g * t, t))
            .and_then(|a| a.matmul(&v))
            .and_then(|o| o.reshape((nh, t, hd)))
            .and_then(|o| o.transpose(0, 1))
            .and_then(|o| o.contiguous())
            .and_then(|o| o.reshape((t, nh * hd)))
            .op(|| ctx("attention"))?;
        let mut o = l.o.forward(&o, obs)?;
        if let Some(n) = &l.post_attn_norm {
            o = rms_norm(&o, n, c.rms_eps).op(|| ctx("post_attention_norm"))?;
        }
        x = (x + o).op(|| ctx("residual"))?;
        let h = rms_norm(&x, &l.ffn_norm, c.rms_eps).op(|| ctx("ffn_norm"))?;
        let d = match &l.ffn {
            Ffn::Dense { gate, up, down } => {
                let (gate, up) = match gate {
                    Some(gate) => (gate.forward(&h, obs)?, up.forward(&h, obs)?),
                    None => {
                        // Fused rows: gate, then up (llama.cpp's swiglu halves).
                        let both = up.forward(&h, obs)?;
                        let f = both.dim(1).op(|| ctx("ffn_up width"))? / 2;
                        (
                            both.narrow(1, 0, f).op(|| ctx("split gate"))?,
                            both.narrow(1, f, f).op(|| ctx("split up"))?,
                        )
                    }
                };
                // Gemma: GELU (tanh approximation, llama.cpp's LLM_FFN_GELU); else SiLU.
                let act = match gemma {
                    Some(_) => gate.gelu().op(|| ctx("gelu"))?,
                    None => gate.silu().op(|| ctx("silu"))?,
                };
                let a = (act * up).op(|| ctx("gate * up"))?;
                down.forward(&a, obs)?
            }
            Ffn::Moe(moe) => moe.forward(&h, obs, &ctx)?,
        };
        let d = match &l.post_ffn_norm {
            Some(n) => rms_norm(&d, n, c.rms_eps).op(|| ctx("post_ffw_norm"))?,
            None => d,
        };
        x = (x + d).op(|| ctx("residual"))?;
        Ok(x)
    }
}

/// A layer's FFN: dense, or a mixture of experts.
#[derive(Debug)]
enum Ffn {
    Dense {
        /// `None`: `up` is the fused gate/up (`ffn_up` of 2 * ffn rows, phi3).
        gate: Option<Linear>,
        up: Linear,
        down: Linear,
    },
    Moe(Box<Moe>),
}

/// A whole model ready to run: every weight decoded to f32 at construction.
/// The streaming runner (`crate::stream`) runs the same blocks one at a time
/// and is what `kiln eval`, `kiln imatrix` and the planner use; this is the
/// reference it is tested against (and what code that changes weights in
/// place can use).
#[derive(Debug)]
pub struct Transformer {
    pub cfg: Config,
    frame: Frame,
    embed: Tensor,
    layers: Vec<Layer>,
    output: Linear,
}

/// RoPE's per-frequency divisors (`head_dim / 2` each), from the model's
/// tensors: llama3's `rope_freqs`, or longrope's long and short factors.
#[derive(Debug, Default)]
struct RopeFactors {
    freqs: Option<Vec<f32>>,
    long: Option<Vec<f32>>,
    short: Option<Vec<f32>>,
}

fn bad(m: &Opened, reason: impl Into<String>) -> Error {
    Error::Model {
        model: m.name(),
        reason: reason.into(),
    }
}

/// Reads a model's tensors through a [`Source`], checking their shapes.
pub(crate) struct Loader<'a> {
    pub src: &'a dyn Source,
    pub device: Device,
}

impl Loader<'_> {
    fn m(&self) -> &Opened {
        self.src.opened()
    }

    /// The tensor `name`, which must exist with `shape`, decoded; its mapped
    /// pages are released once decoded.
    pub fn load(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let m = self.m();
        let node = m.need(name)?;
        if node.shape != shape {
            return Err(bad(
                m,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    node.shape
                ),
            ));
        }
        let data = self.src.read(node);
        self.src.release(node);
        Tensor::from_vec(data, shape, &self.device).op(|| format!("{name}: to tensor"))
    }

    pub fn opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        match self.m().tensor(name) {
            Some(_) => self.load(name, shape).map(Some),
            None => Ok(None),
        }
    }

    pub fn linear(&self, name: String, out: usize, inp: usize) -> Result<Linear> {
        let w = self.load(&name, &[out, inp])?;
        let b = self.opt(&name.replace(".weight", ".bias"), &[out])?;
        let act = self.src.act_quant(self.m().need(&name)?, None);
        Ok(Linear { name, w, b, act })
    }

    fn experts(&self, name: String, out: usize, inp: usize) -> Result<Experts> {
        let n = self.m().arch()?.n_expert;
        let w = self.load(&name, &[n, out, inp])?;
        let node = self.m().need(&name)?;
        let acts = (0..n).map(|e| self.src.act_quant(node, Some(e))).collect();
        Ok(Experts { name, w, acts })
    }
}

/// What every run of a model needs besides its blocks, embedding and output
/// weights: the configuration, RoPE factors and the final norm.
#[derive(Debug)]
pub(crate) struct Frame {
    pub cfg: Config,
    rope: RopeFactors,
    pub norm: Tensor,
    pub device: Device,
}

impl Frame {
    /// Check that `src`'s model is one kiln runs, and read the small tensors.
    pub fn new(src: &dyn Source) -> Result<Frame> {
        let m = src.opened();
        let arch = m.arch()?;
        let spec = arch::spec_for_gguf(&arch.family).ok_or_else(|| {
            bad(
                m,
                format!(
                    "architecture `{}` cannot be evaluated yet (kiln runs {})",
                    arch.family,
                    arch::gguf_list()
                ),
            )
        })?;
        if arch.n_expert > 0 {
            crate::moe::check_counts(arch.n_expert, arch.n_expert_used).map_err(|r| bad(m, r))?;
        }
        let scaling_type = m
            .loaded
            .model
            .metadata
            .get(&format!("{}.rope.scaling.type", arch.family))
            .and_then(|v| v.as_str());
        if let Some(t) =
            scaling_type.filter(|t| !matches!(*t, "none" | "linear" | "yarn" | "longrope"))
        {
            return Err(bad(
                m,
                format!(
                    "RoPE scaling type `{}` is not one llama.cpp runs",
                    passes::printable(t)
                ),
            ));
        }
        if arch.n_head == 0
            || arch.n_head_kv == 0
            || arch.n_head % arch.n_head_kv != 0
            || arch.head_dim % 2 != 0
        {
            return Err(bad(
                m,
                format!(
                    "{} heads, {} KV heads, head dim {}: not a grouped-query layout kiln runs",
                    arch.n_head, arch.n_head_kv, arch.head_dim
                ),
            ));
        }
        let device = Device::Cpu;
        let hd = arch.head_dim;
        let vocab = m
            .need("token_embd.weight")?
            .shape
            .first()
            .copied()
            .unwrap_or(0);
        // Per-frequency divisors, read from the file as llama.cpp reads them.
        let factors = |name: &str| -> Result<Option<Vec<f32>>> {
            match m.tensor(name) {
                None => Ok(None),
                Some(node) if node.shape != [hd / 2] => Err(bad(
                    m,
                    format!(
                        "tensor `{name}` has shape {:?}, expected [{}]",
                        node.shape,
                        hd / 2
                    ),
                )),
                Some(node) => Ok(Some(src.read(node))),
            }
        };
        let rope = RopeFactors {
            freqs: factors("rope_freqs.weight")?,
            long: factors("rope_factors_long.weight")?,
            short: factors("rope_factors_short.weight")?,
        };
        if matches!(arch.rope_scaling, Some(RopeScaling::LongRope { .. }))
            && (rope.long.is_none() || rope.short.is_none())
        {
            return Err(bad(
                m,
                "longrope scaling without `rope_factors_long.weight` and `rope_factors_short.weight`",
            ));
        }
        let ld = Loader {
            src,
            device: device.clone(),
        };
        Ok(Frame {
            cfg: Config {
                arch: arch.clone(),
                spec,
                vocab,
            },
            rope,
            norm: ld.load("output_norm.weight", &[arch.hidden])?,
            device,
        })
    }

    /// Block `i`'s weights, decoded through `ld`.
    pub fn layer(&self, ld: &Loader, i: usize) -> Result<Layer> {
        let arch = &self.cfg.arch;
        let m = ld.src.opened();
        let (h, hd, nh, nkv, ffn) = (
            arch.hidden,
            arch.head_dim,
            arch.n_head,
            arch.n_head_kv,
            arch.ffn,
        );
        let gemma = arch.gemma.as_ref();
        let p = |s: &str| format!("blk.{i}.{s}");
        let fused_qkv = m.tensor(&p("attn_qkv.weight")).is_some();
        let (q, k, v) = if fused_qkv {
            (
                ld.linear(p("attn_qkv.weight"), (nh + 2 * nkv) * hd, h)?,
                None,
                None,
            )
        } else {
            (
                ld.linear(p("attn_q.weight"), nh * hd, h)?,
                Some(ld.linear(p("attn_k.weight"), nkv * hd, h)?),
                Some(ld.linear(p("attn_v.weight"), nkv * hd, h)?),
            )
        };
        let ffn = if m.tensor(&p("ffn_gate_inp.weight")).is_some() {
            let (e, f) = (arch.n_expert, arch.expert_ffn());
            let shared = match m.tensor(&p("ffn_gate_shexp.weight")) {
                None => None,
                Some(t) => {
                    let s = t.shape.first().copied().unwrap_or(0);
                    Some(Shared {
                        gate: ld.linear(p("ffn_gate_shexp.weight"), s, h)?,
                        up: ld.linear(p("ffn_up_shexp.weight"), s, h)?,
                        down: ld.linear(p("ffn_down_shexp.weight"), h, s)?,
                        gate_inp: ld.linear(p("ffn_gate_inp_shexp.weight"), 1, h)?,
                    })
                }
            };
            Ffn::Moe(Box::new(Moe {
                router: ld.linear(p("ffn_gate_inp.weight"), e, h)?,
                gate: ld.experts(p("ffn_gate_exps.weight"), f, h)?,
                up: ld.experts(p("ffn_up_exps.weight"), f, h)?,
                down: ld.experts(p("ffn_down_exps.weight"), h, f)?,
                shared,
                n_used: arch.n_expert_used,
                norm_top_k: arch::moe_norm_top_k(&arch.family),
            }))
        } else if m.tensor(&p("ffn_gate.weight")).is_none() {
            // Fused gate/up rows (phi3).
            Ffn::Dense {
                gate: None,
                up: ld.linear(p("ffn_up.weight"), 2 * ffn, h)?,
                down: ld.linear(p("ffn_down.weight"), h, ffn)?,
            }
        } else {
            Ffn::Dense {
                gate: Some(ld.linear(p("ffn_gate.weight"), ffn, h)?),
                up: ld.linear(p("ffn_up.weight"), ffn, h)?,
                down: ld.linear(p("ffn_down.weight"), h, ffn)?,
            }
        };
        let norm_if = |on: bool, s: &str, n: usize| -> Result<Option<Tensor>> {
            if on {
                ld.load(&p(s), &[n]).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(Layer {
            post_attn_norm: norm_if(gemma.is_some(), "post_attention_norm.weight", h)?,
            post_ffn_norm: norm_if(gemma.is_some(), "post_ffw_norm.weight", h)?,
            attn_norm: ld.load(&p("attn_norm.weight"), &[h])?,
            q,
            k,
            v,
            o: ld.linear(p("attn_output.weight"), h, nh * hd)?,
            q_norm: ld.opt(&p("attn_q_norm.weight"), &[hd])?,
            k_norm: ld.opt(&p("attn_k_norm.weight"), &[hd])?,
            ffn_norm: ld.load(&p("ffn_norm.weight"), &[h])?,
            ffn,
        })
    }

    /// The embedding rows of `ids` (`[ids.len(), hidden]`), scaled as the
    /// family does, each row read from `src` (never the whole table).
    pub fn embed(&self, src: &dyn Source, ids: &[u32]) -> Result<Tensor> {
        let c = &self.cfg.arch;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the model's vocabulary of {}",
                self.cfg.vocab
            )));
        }
        let node = src.opened().need("token_embd.weight")?;
        let h = c.hidden;
        let mut rows = vec![0f32; ids.len() * h];
        rows.par_chunks_mut(h.max(1))
            .zip(ids.par_iter())
            .for_each(|(dst, &id)| src.read_row(node, id as usize, dst));
        let x = Tensor::from_vec(rows, (ids.len(), h), &self.device)
            .op(|| "token_embd lookup".into())?;
        self.scale_embedding(x)
    }

    /// Gemma: the runtime scales embeddings by sqrt(hidden) (f32, as
    /// llama.cpp's ggml_scale).
    fn scale_embedding(&self, x: Tensor) -> Result<Tensor> {
        let c = &self.cfg.arch;
        match &c.gemma {
            Some(_) => (x * f64::from((c.hidden as f32).sqrt())).op(|| "embedding scale".into()),
            None => Ok(x),
        }
    }

    /// RoPE tables and masks for windows of `t` tokens.
    pub fn inputs(&self, t: usize) -> Result<crate::gemma::LayerInputs> {
        match self.cfg.arch.gemma {
            Some(_) => crate::gemma::LayerInputs::new(&self.cfg.arch, t, &self.device),
            None => {
                let (cos, sin) = self.rope_tables(t)?;
                crate::gemma::LayerInputs::plain(cos, sin, t, &self.device)
            }
        }
    }

    /// The final norm of the rows of `x`.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm(x, &self.norm, self.cfg.arch.rms_eps).op(|| "output_norm".into())
    }

    /// Gemma's final soft-cap on logits.
    pub fn cap_logits(&self, logits: Tensor) -> Result<Tensor> {
        match self.cfg.arch.gemma.as_ref().and_then(|g| g.final_softcap) {
            Some(cap) => crate::gemma::softcap(&logits, cap),
            None => Ok(logits),
        }
    }

    /// The name of the output projection's weight: `output.weight`, or the
    /// embedding when tied.
    pub fn output_name(m: &Opened) -> &'static str {
        if m.tensor("output.weight").is_some() {
            "output.weight"
        } else {
            "token_embd.weight"
        }
    }

    /// cos and sin tables `[t, head_dim / 2]` for positions `0..t`, as
    /// ggml's `rope_yarn` computes them for llama.cpp's parameters: theta =
    /// p * base^(-2i/d) / factor_i (llama3's `rope_freqs`, or longrope's
    /// long factors when the sequence is longer than the original context
    /// and short ones otherwise, as llama.cpp chooses by its context size),
    /// scaled by 1/factor (linear, YaRN below its correction range), YaRN's
    /// ramp between the two, and the magnitude scale applied to cos and sin
    /// (YaRN's 0.1 ln(factor) + 1, longrope's attention factor).
    fn rope_tables(&self, t: usize) -> Result<(Tensor, Tensor)> {
        let a = &self.cfg.arch;
        let hd = a.head_dim;
        let half = hd / 2;
        let base = a.rope_theta as f64;
        let divisors: Option<&[f32]> = match (&self.rope.freqs, &a.rope_scaling) {
            (Some(f), _) => Some(f),
            (
                None,
                Some(RopeScaling::LongRope {
                    original_context, ..
                }),
            ) => {
                if t > *original_context {
                    self.rope.long.as_deref()
                } else {
                    self.rope.short.as_deref()
                }
            }
            _ => None,
        };
        let (freq_scale, ramp, mscale) = match &a.rope_scaling {
            Some(RopeScaling::Linear { factor }) => (1.0 / *factor as f64, None, 1.0),
            Some(RopeScaling::Yarn {
                factor,
                original_context,
                beta_fast,
                beta_slow,
                ..
            }) => {
                // ggml_rope_yarn_corr_dims, in f32 as there.
                let corr = |rot: f32| {
                    hd as f32 * (*original_context as f32 / (rot * 2.0 * std::f32::consts::PI)).ln()
                        / (2.0 * (base as f32).ln())
                };
                let low = corr(beta_fast.unwrap_or(32.0)).floor().max(0.0);
                let high = corr(beta_slow.unwrap_or(1.0)).ceil().min(hd as f32 - 1.0);
                let mscale = rope::yarn_mscale(*factor) as f64;
                (
                    1.0 / *factor as f64,
                    Some((low as f64, high as f64)),
                    mscale,
                )
            }
            Some(RopeScaling::LongRope { attn_factor, .. }) => (1.0, None, *attn_factor as f64),
            Some(RopeScaling::Llama3 { .. }) | None => (1.0, None, 1.0),
        };
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in 0..t {
            for i in 0..half {
                let mut extrap = p as f64 * base.powf(-2.0 * i as f64 / hd as f64);
                if let Some(d) = divisors {
                    extrap /= d[i] as f64;
                }
                let interp = freq_scale * extrap;
                let theta = match ramp {
                    Some((low, high)) => {
                        let y = (i as f64 - low) / (high - low).max(0.001);
                        let mix = 1.0 - y.clamp(0.0, 1.0);
                        interp * (1.0 - mix) + extrap * mix
                    }
                    None => interp,
                };
                cos.push((theta.cos() * mscale) as f32);
                sin.push((theta.sin() * mscale) as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (t, half), &self.device).op(|| "rope cos".into())?;
        let sin = Tensor::from_vec(sin, (t, half), &self.device).op(|| "rope sin".into())?;
        Ok((cos, sin))
    }
}

impl Transformer {
    /// Number of transformer blocks.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The residual stream entering block 0 for `ids` (the embedding rows,
    /// scaled as the family scales them).
    pub fn embed_ids(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the model's vocabulary of {}",
                self.cfg.vocab
            )));
        }
        let ids_t =
            Tensor::from_slice(ids, ids.len(), &self.frame.device).op(|| "token ids".into())?;
        let x = self
            .embed
            .index_select(&ids_t, 0)
            .op(|| "token_embd lookup".into())?;
        self.frame.scale_embedding(x)
    }

    /// Block `i` alone over one sequence's residual stream `x` `[t, hidden]`
    /// (positions `0..t`): the same arithmetic as inside
    /// [`Transformer::forward`], so running blocks one after another gives
    /// its hidden states. The observer sees block `i`'s linear inputs.
    pub fn block(&self, i: usize, x: &Tensor, obs: &mut dyn Observer) -> Result<Tensor> {
        if i >= self.layers.len() {
            return Err(Error::Input(format!(
                "block {i} of a model with {} blocks",
                self.layers.len()
            )));
        }
        let t = x.dim(0).op(|| format!("blk.{i}: input rows"))?;
        let inputs = self.frame.inputs(t)?;
        self.layers[i].forward(&self.frame, i, x.clone(), &inputs, obs)
    }

    /// Dequantize `m`'s weights into a runnable model.
    pub fn new(m: &Opened) -> Result<Transformer> {
        Transformer::from_source(m)
    }

    /// Decode every weight of `src` into a runnable model.
    pub fn from_source(src: &dyn Source) -> Result<Transformer> {
        let frame = Frame::new(src)?;
        let ld = Loader {
            src,
            device: frame.device.clone(),
        };
        let (vocab, h) = (frame.cfg.vocab, frame.cfg.arch.hidden);
        let layers = (0..frame.cfg.arch.n_layer)
            .map(|i| frame.layer(&ld, i))
            .collect::<Result<Vec<_>>>()?;
        let embed = ld.load("token_embd.weight", &[vocab, h])?;
        let output = match src.opened().tensor("output.weight") {
            Some(_) => ld.linear("output.weight".into(), vocab, h)?,
            // Tied embeddings: the output projection is the embedding, under
            // its own name (as in llama.cpp's graph, where llama-imatrix's
            // --process-output then finds no `output.weight`).
            None => Linear {
                name: "token_embd.weight".into(),
                w: embed.clone(),
                b: None,
                act: None,
            },
        };
        Ok(Transformer {
            cfg: frame.cfg.clone(),
            frame,
            embed,
            layers,
            output,
        })
    }

    /// Replace the weight named `name` (a linear weight or `token_embd.weight`,
    /// which a tied output shares) by `data`, row-major in its shape.
    pub fn set_weight(&mut self, name: &str, data: Vec<f32>) -> Result<()> {
        let device = self.frame.device.clone();
        let replace = |w: &mut Tensor, data: Vec<f32>| -> Result<()> {
            let dims = w.dims().to_vec();
            *w = Tensor::from_vec(data, dims.as_slice(), &device)
                .op(|| format!("{name}: replace weight"))?;
            Ok(())
        };
        if name == "token_embd.weight" {
            replace(&mut self.embed, data)?;
            if self.output.name == name {
                self.output.w = self.embed.clone();
            }
            return Ok(());
        }
        if self.output.name == name {
            return replace(&mut self.output.w, data);
        }
        for l in &mut self.layers {
            let mut linears: Vec<&mut Linear> =
                [Some(&mut l.q), l.k.as_mut(), l.v.as_mut(), Some(&mut l.o)]
                    .into_iter()
                    .flatten()
                    .collect();
            match &mut l.ffn {
                Ffn::Dense { gate, up, down } => {
                    linears.extend(gate.as_mut());
                    linears.extend([up, down]);
                }
                Ffn::Moe(moe) => {
                    for x in moe.experts_mut() {
                        if x.name == name {
                            return replace(&mut x.w, data);
                        }
                    }
                    linears.push(&mut moe.router);
                    if let Some(s) = &mut moe.shared {
                        linears.extend([&mut s.gate, &mut s.up, &mut s.down, &mut s.gate_inp]);
                    }
                }
            }
            for lin in linears {
                if lin.name == name {
                    return replace(&mut lin.w, data);
                }
            }
        }
        Err(Error::Input(format!(
            "no weight `{name}` in the forward pass to replace"
        )))
    }

    /// Logits `[ids.len() - from, vocab]` of positions `from..` (row j
    /// predicts token `from + j + 1`), for one sequence starting at position 0.
    pub fn forward(&self, ids: &[u32], from: usize, obs: &mut dyn Observer) -> Result<Tensor> {
        self.forward_resumable(ids, from, None, None, obs)
    }

    /// [`Transformer::forward`], optionally resuming from a saved residual
    /// stream `(layer, x)` (the input of block `layer`, as `capture` saved
    /// it from an earlier run over the same ids) and optionally saving the
    /// input of every block into `capture`. Resuming gives the same logits
    /// as a full run when the blocks before `layer` are unchanged.
    pub fn forward_resumable(
        &self,
        ids: &[u32],
        from: usize,
        resume: Option<(usize, &Tensor)>,
        mut capture: Option<&mut Vec<Tensor>>,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        let t = ids.len();
        if t == 0 || from >= t {
            return Err(Error::Input(format!(
                "forward over {t} tokens from position {from}"
            )));
        }
        let fr = &self.frame;
        let (start, mut x) = match resume {
            Some((layer, x)) => (layer.min(self.layers.len()), x.clone()),
            None => {
                if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab) {
                    return Err(Error::Input(format!(
                        "token id {bad} is outside the model's vocabulary of {}",
                        self.cfg.vocab
                    )));
                }
                let ids_t = Tensor::from_slice(ids, t, &fr.device).op(|| "token ids".into())?;
                let x = self
                    .embed
                    .index_select(&ids_t, 0)
                    .op(|| "token_embd lookup".into())?;
                (0, fr.scale_embedding(x)?)
            }
        };
        let inputs = fr.inputs(t)?;
        for (i, l) in self.layers.iter().enumerate().skip(start) {
            if let Some(cap) = capture.as_deref_mut() {
                cap.push(x.clone());
            }
            x = l.forward(fr, i, x, &inputs, obs)?;
        }
        if let Some(cap) = capture {
            cap.push(x.clone());
        }
        let x = x.narrow(0, from, t - from).op(|| "narrow".into())?;
        let h = fr.final_norm(&x)?;
        let logits = fr.cap_logits(self.output.forward(&h, obs)?)?;
        debug_assert_eq!(logits.dtype(), DType::F32);
        debug_assert_eq!(logits.dim(D::Minus1).ok(), Some(self.cfg.vocab));
        Ok(logits)
    }
}
