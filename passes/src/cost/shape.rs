//! The model facts the cost model needs: [`Shape`] (an [`Arch`] plus the MoE
//! details `Arch` does not carry) and the weight tensors it implies, named
//! as in GGUF so llama.cpp's recipe rules can be applied to them.
//!
//! What must stay true: the synthesized tensor list has the shapes a
//! llama-family converter writes (`[out, in]`, row = `in` last), so the
//! parameter count of a config matches its checkpoint; a model loaded from a
//! file keeps its own tensors (see [`specs_from_model`]) rather than these.

use quant::GgmlType;

use crate::ir::{Arch, Model, Role};

/// What a weight tensor does, at the granularity the cost model needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorKind {
    Embedding,
    Output,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnGate,
    FfnUp,
    FfnDown,
    /// Routed experts, merged as `[n_expert, out, in]` (`ffn_*_exps`).
    ExpertGate,
    ExpertUp,
    ExpertDown,
    /// Always-active shared experts (`ffn_*_shexp`).
    SharedGate,
    SharedUp,
    SharedDown,
    /// The MoE router (`ffn_gate_inp`), never quantized by llama.cpp.
    Router,
    Norm,
    Other,
}

impl TensorKind {
    /// A matrix multiplied against activations (what quantization targets).
    pub fn is_linear(self) -> bool {
        !matches!(
            self,
            TensorKind::Embedding
                | TensorKind::Output
                | TensorKind::Router
                | TensorKind::Norm
                | TensorKind::Other
        )
    }

    pub fn is_expert(self) -> bool {
        matches!(
            self,
            TensorKind::ExpertGate | TensorKind::ExpertUp | TensorKind::ExpertDown
        )
    }

    /// llama.cpp matches `ffn_down` by substring: dense, expert and shared.
    pub fn is_ffn_down(self) -> bool {
        matches!(
            self,
            TensorKind::FfnDown | TensorKind::ExpertDown | TensorKind::SharedDown
        )
    }
}

/// One weight tensor as the cost model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// GGUF name (`blk.3.attn_v.weight`).
    pub name: String,
    /// Row-major shape, row (input features) last.
    pub shape: Vec<usize>,
    pub kind: TensorKind,
    pub layer: Option<usize>,
    /// The type it already has, when it comes from a quantized file or a plan.
    pub planned: Option<GgmlType>,
}

impl TensorSpec {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    pub fn n_rows(&self) -> u64 {
        self.n_elements()
            .checked_div(self.row_len() as u64)
            .unwrap_or(0)
    }
}

/// An [`Arch`] plus MoE facts `Arch` does not carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub family: String,
    pub n_layer: usize,
    pub hidden: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Dense FFN size.
    pub ffn: usize,
    pub vocab: usize,
    pub tied_embeddings: bool,
    pub n_expert: usize,
    pub n_expert_used: usize,
    /// FFN size of one routed expert (`moe_intermediate_size`; `ffn` when absent).
    pub moe_ffn: usize,
    /// Total FFN size of the always-active shared experts (0: none).
    pub shared_ffn: usize,
    /// Leading layers that stay dense in an MoE model (`first_k_dense_replace`).
    pub n_dense_layers: usize,
}

impl Shape {
    /// From an [`Arch`]; an MoE model's experts are taken to be `ffn` wide
    /// with no shared expert (Mixtral) until [`Shape::moe_ffn`] etc. are set.
    pub fn from_arch(a: &Arch) -> Shape {
        Shape {
            family: a.family.clone(),
            n_layer: a.n_layer,
            hidden: a.hidden,
            n_head: a.n_head,
            n_head_kv: a.n_head_kv.max(1),
            head_dim: a.head_dim,
            ffn: a.ffn,
            vocab: a.vocab,
            tied_embeddings: a.tied_embeddings,
            n_expert: a.n_expert,
            n_expert_used: a.n_expert_used,
            moe_ffn: a.ffn,
            shared_ffn: 0,
            n_dense_layers: 0,
        }
    }

    pub fn is_moe(&self) -> bool {
        self.n_expert > 1
    }

    /// Is layer `i` an MoE layer?
    pub fn moe_layer(&self, i: usize) -> bool {
        self.is_moe() && i >= self.n_dense_layers
    }

    /// The weight tensors a llama-family checkpoint of this shape has.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let h = self.hidden;
        let q = self.n_head * self.head_dim;
        let kv = self.n_head_kv * self.head_dim;
        let mut out = Vec::new();
        let mut push = |name: String, shape: Vec<usize>, kind: TensorKind, layer: Option<usize>| {
            out.push(TensorSpec {
                name,
                shape,
                kind,
                layer,
                planned: None,
            })
        };
        push(
            "token_embd.weight".into(),
            vec![self.vocab, h],
            TensorKind::Embedding,
            None,
        );
        push("output_norm.weight".into(), vec![h], TensorKind::Norm, None);
        if !self.tied_embeddings {
            push(
                "output.weight".into(),
                vec![self.vocab, h],
                TensorKind::Output,
                None,
            );
        }
        for i in 0..self.n_layer {
            let b = |s: &str| format!("blk.{i}.{s}.weight");
            let l = Some(i);
            push(b("attn_norm"), vec![h], TensorKind::Norm, l);
            push(b("attn_q"), vec![q, h], TensorKind::AttnQ, l);
            push(b("attn_k"), vec![kv, h], TensorKind::AttnK, l);
            push(b("attn_v"), vec![kv, h], TensorKind::AttnV, l);
            push(b("attn_output"), vec![h, q], TensorKind::AttnOutput, l);
            push(b("ffn_norm"), vec![h], TensorKind::Norm, l);
            if self.moe_layer(i) {
                let (e, f) = (self.n_expert, self.moe_ffn);
                push(b("ffn_gate_inp"), vec![e, h], TensorKind::Router, l);
                push(b("ffn_gate_exps"), vec![e, f, h], TensorKind::ExpertGate, l);
                push(b("ffn_up_exps"), vec![e, f, h], TensorKind::ExpertUp, l);
                push(b("ffn_down_exps"), vec![e, h, f], TensorKind::ExpertDown, l);
                if self.shared_ffn > 0 {
                    let s = self.shared_ffn;
                    push(b("ffn_gate_shexp"), vec![s, h], TensorKind::SharedGate, l);
                    push(b("ffn_up_shexp"), vec![s, h], TensorKind::SharedUp, l);
                    push(b("ffn_down_shexp"), vec![h, s], TensorKind::SharedDown, l);
                }
            } else {
                push(b("ffn_gate"), vec![self.ffn, h], TensorKind::FfnGate, l);
                push(b("ffn_up"), vec![self.ffn, h], TensorKind::FfnUp, l);
                push(b("ffn_down"), vec![h, self.ffn], TensorKind::FfnDown, l);
            }
        }
        out
    }

    /// Attention FLOPs per token per position of context (QK^T and AV, 2 FLOPs
    /// per multiply-add): `4 * n_layer * n_head * head_dim`.
    pub fn attn_flops_per_ctx(&self) -> f64 {
        4.0 * self.n_layer as f64 * self.n_head as f64 * self.head_dim as f64
    }
}

/// Classify a GGUF tensor name (for models loaded from files).
pub fn kind_from_name(name: &str, role: Role) -> TensorKind {
    let has = |s: &str| name.contains(s);
    if has("_exps") {
        return if has("ffn_gate") {
            TensorKind::ExpertGate
        } else if has("ffn_up") {
            TensorKind::ExpertUp
        } else {
            TensorKind::ExpertDown
        };
    }
    if has("_shexp") {
        return if has("ffn_gate") {
            TensorKind::SharedGate
        } else if has("ffn_up") {
            TensorKind::SharedUp
        } else {
            TensorKind::SharedDown
        };
    }
    if has("ffn_gate_inp") {
        return TensorKind::Router;
    }
    match role {
        Role::Embedding => TensorKind::Embedding,
        Role::Output => TensorKind::Output,
        Role::AttnQ => TensorKind::AttnQ,
        Role::AttnK => TensorKind::AttnK,
        Role::AttnV => TensorKind::AttnV,
        Role::AttnOutput => TensorKind::AttnOutput,
        Role::FfnGate => TensorKind::FfnGate,
        Role::FfnUp => TensorKind::FfnUp,
        Role::FfnDown => TensorKind::FfnDown,
        Role::Norm => TensorKind::Norm,
        Role::Other => {
            if name == "token_embd.weight" {
                TensorKind::Embedding
            } else if name == "output.weight" {
                TensorKind::Output
            } else if has("norm") {
                TensorKind::Norm
            } else if has("attn_q.") {
                TensorKind::AttnQ
            } else if has("attn_k.") {
                TensorKind::AttnK
            } else if has("attn_v.") {
                TensorKind::AttnV
            } else if has("attn_output.") {
                TensorKind::AttnOutput
            } else if has("ffn_gate.") {
                TensorKind::FfnGate
            } else if has("ffn_up.") {
                TensorKind::FfnUp
            } else if has("ffn_down.") {
                TensorKind::FfnDown
            } else {
                TensorKind::Other
            }
        }
    }
}

/// The weight tensors of a loaded model, with the types they already have
/// (a GGUF's types, or the encodings a pass chose).
pub fn specs_from_model(model: &Model) -> Vec<TensorSpec> {
    model
        .tensors
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            shape: t.shape.clone(),
            kind: kind_from_name(&t.name, t.role),
            layer: t.layer,
            planned: Some(t.ggml_type().unwrap_or_else(|| t.source.dtype.ggml())),
        })
        .collect()
}
