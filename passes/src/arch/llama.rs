//! The `llama` family: `LlamaForCausalLM` and `MistralForCausalLM` (whose
//! checkpoints llama.cpp converts as llama).
//!
//! What must stay true: q/k weights are permuted from Hugging Face's
//! rotate-half RoPE layout to ggml's interleaved one (so the forward pass
//! uses [`RopeStyle::Interleaved`]), and a q/k tensor the permutation is not
//! defined for (a bias, rows not divisible into heads of two halves) is
//! refused; RoPE scaling is carried for `linear`, `yarn` (keys) and `llama3`
//! (the computed `rope_freqs` tensor) and refused otherwise (`rope.rs`);
//! another activation than silu, a sliding window shorter than the context,
//! and attention or MLP biases are refused (kiln carries none of them yet).

use super::rope::Kind;
use super::{ArchSpec, Dim, Refuse, RopeStyle, TensorRow};
use crate::ir::{Arch, Role, Transform};

/// llama's Hugging Face layout, in the order `kiln estimate` lists tensors.
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
    row("mlp.gate_proj", "ffn_gate", Role::FfnGate, true, &[Dim::Ffn, Dim::Hidden]),
    row("mlp.up_proj", "ffn_up", Role::FfnUp, true, &[Dim::Ffn, Dim::Hidden]),
    row("mlp.down_proj", "ffn_down", Role::FfnDown, true, &[Dim::Hidden, Dim::Ffn]),
];

const fn row(
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
    hf_classes: &["LlamaForCausalLM", "MistralForCausalLM"],
    tensors: TENSORS,
    biases: &[],
    refused: &[
        Refuse::RopeScaling(&[Kind::Linear, Kind::Llama3, Kind::Yarn]),
        Refuse::Unless("hidden_act", "silu"),
        Refuse::WindowBelowContext("sliding_window"),
        Refuse::True("attention_bias"),
        Refuse::True("mlp_bias"),
    ],
    rope: RopeStyle::Interleaved,
    transform: rope_permute,
    gguf_metadata: super::llama_cpp_metadata,
    reads: &[],
    inert: &["pretraining_tp"],
    extension: None,
};

/// q/k weights: HF's rotate-half layout to ggml's interleaved one.
fn rope_permute(arch: &Arch, role: Role, shape: &[usize]) -> Result<Option<Transform>, String> {
    let n_head = match role {
        Role::AttnQ => arch.n_head,
        Role::AttnK => arch.n_head_kv,
        _ => return Ok(None),
    };
    if shape.len() != 2 {
        return Err("q/k biases of a llama model are not supported (the RoPE permutation is defined for 2-D weights here)".into());
    }
    let rows = shape[0];
    if n_head
        .checked_mul(2)
        .is_none_or(|halves| halves == 0 || rows % halves != 0)
    {
        return Err(format!(
            "{rows} rows cannot be split into {n_head} heads of two RoPE halves"
        ));
    }
    Ok(Some(Transform::RopePermute { n_head }))
}
