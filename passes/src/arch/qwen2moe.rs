//! The `qwen2moe` family: `Qwen2MoeForCausalLM`.
//!
//! What must stay true: qwen2's attention (q/k/v biases, NEOX RoPE on the
//! checkpoint's own layout, no transform); every layer is an MoE layer:
//! `mlp.experts.{e}.gate_proj/up_proj/down_proj` stacked into
//! `ffn_gate_exps` / `ffn_up_exps` / `ffn_down_exps`, the router `mlp.gate`
//! as `ffn_gate_inp`, the shared expert `mlp.shared_expert.*` as
//! `ffn_*_shexp` and its sigmoid gate `mlp.shared_expert_gate` as
//! `ffn_gate_inp_shexp` (llama.cpp's converter's names); the GGUF carries
//! `expert_count`, `expert_used_count`, `expert_feed_forward_length` and
//! `expert_shared_feed_forward_length`. llama.cpp's `qwen2moe` graph makes
//! every layer sparse and never renormalizes the top-k routing weights, so
//! `decoder_sparse_step` other than 1, `mlp_only_layers` and
//! `norm_topk_prob: true` are refused by name, as are RoPE scaling, another
//! activation than silu and sliding-window attention.

use super::mixtral::{expert, row};
use super::{ArchSpec, Dim, Refuse, RopeStyle, TensorRow};
use crate::ir::{Arch, Role, Transform};

/// Qwen2-MoE's Hugging Face layout, in the order `kiln estimate` lists tensors.
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
    row("mlp.gate", "ffn_gate_inp", Role::FfnGateInp, true, &[Dim::Experts, Dim::Hidden]),
    row(expert!("mlp.experts.", ".gate_proj"), "ffn_gate_exps", Role::FfnGateExps, true, &[Dim::ExpertFfn, Dim::Hidden]),
    row(expert!("mlp.experts.", ".up_proj"), "ffn_up_exps", Role::FfnUpExps, true, &[Dim::ExpertFfn, Dim::Hidden]),
    row(expert!("mlp.experts.", ".down_proj"), "ffn_down_exps", Role::FfnDownExps, true, &[Dim::Hidden, Dim::ExpertFfn]),
    row("mlp.shared_expert.gate_proj", "ffn_gate_shexp", Role::FfnGateShexp, true, &[Dim::SharedFfn, Dim::Hidden]),
    row("mlp.shared_expert.up_proj", "ffn_up_shexp", Role::FfnUpShexp, true, &[Dim::SharedFfn, Dim::Hidden]),
    row("mlp.shared_expert.down_proj", "ffn_down_shexp", Role::FfnDownShexp, true, &[Dim::Hidden, Dim::SharedFfn]),
    // GGUF naming reads `*_shexp` as a shared-expert weight (`naming::role`).
    row("mlp.shared_expert_gate", "ffn_gate_inp_shexp", Role::FfnGateShexp, true, &[Dim::One, Dim::Hidden]),
];

pub static SPEC: ArchSpec = ArchSpec {
    gguf: "qwen2moe",
    hf_classes: &["Qwen2MoeForCausalLM"],
    tensors: TENSORS,
    biases: &[Role::AttnQ, Role::AttnK, Role::AttnV],
    refused: &[
        Refuse::NonNull("rope_scaling"),
        // transformers v5's scaling (what `rope::from_v5` leaves of it).
        Refuse::NonNull("rope_parameters"),
        Refuse::Unless("hidden_act", "silu"),
        Refuse::True("use_sliding_window"),
        Refuse::True("norm_topk_prob"),
        Refuse::UnlessInt("decoder_sparse_step", 1),
        Refuse::NonEmpty("mlp_only_layers"),
    ],
    rope: RopeStyle::Neox,
    transform: no_transform,
    gguf_metadata: super::llama_cpp_metadata,
    reads: &[
        "num_experts",
        "num_experts_per_tok",
        "moe_intermediate_size",
        "shared_expert_intermediate_size",
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
