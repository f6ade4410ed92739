//! The `qwen3moe` family: `Qwen3MoeForCausalLM`.
//!
//! What must stay true: qwen3's attention (per-head `q_norm` / `k_norm` as
//! `attn_q_norm` / `attn_k_norm`, no biases, NEOX RoPE on the checkpoint's
//! own layout, no transform, `attention.key_length` / `value_length` always
//! written, as [`super::qwen3`]); every layer is an MoE layer:
//! `mlp.experts.{e}.gate_proj/up_proj/down_proj` stacked into
//! `ffn_gate_exps` / `ffn_up_exps` / `ffn_down_exps` and the router
//! `mlp.gate` as `ffn_gate_inp` (llama.cpp's converter's names), no shared
//! expert; the GGUF carries `expert_count`, `expert_used_count` and
//! `expert_feed_forward_length`. llama.cpp's `qwen3moe` graph makes every
//! layer sparse and always renormalizes the top-k routing weights, so
//! `norm_topk_prob` other than `true` (transformers' default is `false`),
//! `decoder_sparse_step` other than 1 and a non-empty `mlp_only_layers` are
//! refused by name, as are q/k/v biases, RoPE scaling, another activation
//! than silu and sliding-window attention.

use super::mixtral::{expert, row};
use super::{ArchSpec, Dim, Refuse, RopeStyle, TensorRow};
use crate::ir::{Arch, Role, Transform};

/// Qwen3-MoE's Hugging Face layout, in the order `kiln estimate` lists tensors.
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
    row("self_attn.q_norm", "attn_q_norm", Role::Norm, true, &[Dim::HeadDim]),
    row("self_attn.k_norm", "attn_k_norm", Role::Norm, true, &[Dim::HeadDim]),
    row("post_attention_layernorm", "ffn_norm", Role::Norm, true, &[Dim::Hidden]),
    row("mlp.gate", "ffn_gate_inp", Role::FfnGateInp, true, &[Dim::Experts, Dim::Hidden]),
    row(expert!("mlp.experts.", ".gate_proj"), "ffn_gate_exps", Role::FfnGateExps, true, &[Dim::ExpertFfn, Dim::Hidden]),
    row(expert!("mlp.experts.", ".up_proj"), "ffn_up_exps", Role::FfnUpExps, true, &[Dim::ExpertFfn, Dim::Hidden]),
    row(expert!("mlp.experts.", ".down_proj"), "ffn_down_exps", Role::FfnDownExps, true, &[Dim::Hidden, Dim::ExpertFfn]),
];

pub static SPEC: ArchSpec = ArchSpec {
    gguf: "qwen3moe",
    hf_classes: &["Qwen3MoeForCausalLM"],
    tensors: TENSORS,
    biases: &[],
    refused: &[
        Refuse::NonNull("rope_scaling"),
        // transformers v5's scaling (what `rope::from_v5` leaves of it).
        Refuse::NonNull("rope_parameters"),
        Refuse::Unless("hidden_act", "silu"),
        Refuse::True("use_sliding_window"),
        Refuse::True("attention_bias"),
        Refuse::UnlessTrue("norm_topk_prob"),
        Refuse::UnlessInt("decoder_sparse_step", 1),
        Refuse::NonEmpty("mlp_only_layers"),
    ],
    rope: RopeStyle::Neox,
    transform: no_transform,
    // qwen3's keys (key/value lengths always) with the MoE keys.
    gguf_metadata: super::qwen3::metadata,
    reads: &[
        "num_experts",
        "num_experts_per_tok",
        "moe_intermediate_size",
    ],
    // Training-time router settings; the window fields only matter with
    // `use_sliding_window` (refused).
    inert: &[
        "output_router_logits",
        "router_aux_loss_coef",
        "layer_types",
        "max_window_layers",
        "sliding_window",
    ],
    extension: None,
};

fn no_transform(_: &Arch, _: Role, _: &[usize]) -> Result<Option<Transform>, String> {
    Ok(None)
}
