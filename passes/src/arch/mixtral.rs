//! The Mixtral family: `MixtralForCausalLM`, which llama.cpp converts as
//! `llama` with routed experts.
//!
//! What must stay true: llama's attention (q/k permuted to ggml's
//! interleaved RoPE order, the same refusals); each layer's
//! `block_sparse_moe.experts.{e}.w1/w3/w2` are stacked, expert by expert,
//! into `ffn_gate_exps` / `ffn_up_exps` / `ffn_down_exps` of shape
//! `[n_expert, out, in]`, and the router `block_sparse_moe.gate` becomes
//! `ffn_gate_inp` (as llama.cpp's converter writes them); the GGUF carries
//! `expert_count` and `expert_used_count` (`llama_cpp_metadata`); llama.cpp
//! renormalizes the top-k routing weights, as Mixtral does
//! ([`super::moe_norm_top_k`]).

use super::{ArchSpec, Dim, Refuse, RopeStyle, TensorRow};
use crate::ir::{Arch, Role, Transform};

/// A per-expert Hugging Face name: `prefix{e}suffix` (see [`super::EXPERT`]).
macro_rules! expert {
    ($pre:literal, $post:literal) => {
        concat!($pre, "{e}", $post)
    };
}
pub(super) use expert;

/// Mixtral's Hugging Face layout, in the order `kiln estimate` lists tensors.
#[rustfmt::skip]
pub const TENSORS: &[TensorRow] = &[
    row("model.embed_tokens", "token_embd", Role::Embedding, false, &[Dim::Vocab, Dim::Hidden]),
    row("model.norm", "output_norm", Role::Norm, false, &[Dim::Hidden]),
    row("lm_head", "output", Role::Output, false, &[Dim::Vocab, Dim::Hidden]),
    row("input_layernorm", "attn_norm", Role::Norm, true, &[Dim::Hidden]),
    row("self_attn.q_proj", "attn_q", Role::AttnQ, true, &[Dim::Q, Dim::Hidden]),
    row("self_attn.k_proj", "attn_k", Role::AttnK, true, &[Dim::Kv, Dim::Hidden]),
    row("self_attn.v_proj", "attn_v", Role::AttnV, true, &[Dim::Kv, Dim::Hidden]),
    row("self_attn.o_proj", "attn_output", Role::AttnOutput, true, &[Dim::Hidden, Dim::Q]),
    row("post_attention_layernorm", "ffn_norm", Role::Norm, true, &[Dim::Hidden]),
    row("block_sparse_moe.gate", "ffn_gate_inp", Role::FfnGateInp, true, &[Dim::Experts, Dim::Hidden]),
    row(expert!("block_sparse_moe.experts.", ".w1"), "ffn_gate_exps", Role::FfnGateExps, true, &[Dim::ExpertFfn, Dim::Hidden]),
    row(expert!("block_sparse_moe.experts.", ".w3"), "ffn_up_exps", Role::FfnUpExps, true, &[Dim::ExpertFfn, Dim::Hidden]),
    row(expert!("block_sparse_moe.experts.", ".w2"), "ffn_down_exps", Role::FfnDownExps, true, &[Dim::Hidden, Dim::ExpertFfn]),
];

pub(super) const fn row(
    hf: &'static str,
    gguf: &'static str,
    role: Role,
    per_layer: bool,
    shape: &'static [Dim],
) -> TensorRow {
    TensorRow {
        hf,
        gguf,
        role,
        per_layer,
        shape,
    }
}

pub static SPEC: ArchSpec = ArchSpec {
    gguf: "llama",
    hf_classes: &["MixtralForCausalLM"],
    tensors: TENSORS,
    biases: &[],
    refused: &[
        Refuse::NonNull("rope_scaling"),
        // transformers v5's scaling (what `rope::from_v5` leaves of it).
        Refuse::NonNull("rope_parameters"),
        Refuse::Unless("hidden_act", "silu"),
        Refuse::WindowBelowContext("sliding_window"),
    ],
    rope: RopeStyle::Interleaved,
    transform: llama_transform,
    gguf_metadata: super::llama_cpp_metadata,
    reads: &["num_local_experts", "num_experts_per_tok"],
    // Training-time router settings (load-balancing loss, jitter noise).
    inert: &[
        "output_router_logits",
        "router_aux_loss_coef",
        "router_jitter_noise",
    ],
    extension: None,
};

/// llama's: q/k weights permuted to ggml's interleaved RoPE order.
fn llama_transform(arch: &Arch, role: Role, shape: &[usize]) -> Result<Option<Transform>, String> {
    (super::llama::SPEC.transform)(arch, role, shape)
}
