//! The `qwen3` family: `Qwen3ForCausalLM`.
//!
//! What must stay true: llama's tensor names plus the per-head RMS norms of
//! q and k (`self_attn.q_norm` / `k_norm` -> `attn_q_norm` / `attn_k_norm`,
//! each `[head_dim]`), as llama.cpp's `conversion/qwen.py` maps them; no
//! value transform (NEOX RoPE on the checkpoint's rotate-half layout, as
//! qwen2); `head_dim` is the config's own, independent of `hidden_size /
//! num_attention_heads`, and is written as `attention.key_length` /
//! `value_length` whenever the config states it (llama.cpp's converter
//! writes both keys whenever `head_dim` is present); q/k/v biases
//! (`attention_bias`), RoPE scaling, another activation than silu, and
//! sliding-window attention are refused (llama.cpp's qwen3 graph has none of
//! them, or kiln carries none yet).

use super::{ArchSpec, Dim, Refuse, RopeStyle, TensorRow};
use crate::ir::{Arch, MetaValue, Metadata, Role, Transform};

/// Qwen3's Hugging Face layout: llama's, with q/k norms after the output
/// projection (as `Qwen3Attention` declares them).
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
    gguf: "qwen3",
    hf_classes: &["Qwen3ForCausalLM"],
    tensors: TENSORS,
    biases: &[],
    refused: &[
        Refuse::NonNull("rope_scaling"),
        // transformers v5's scaling (what `rope::from_v5` leaves of it).
        Refuse::NonNull("rope_parameters"),
        Refuse::Unless("hidden_act", "silu"),
        Refuse::True("use_sliding_window"),
        Refuse::True("attention_bias"),
    ],
    rope: RopeStyle::Neox,
    transform: no_transform,
    gguf_metadata: metadata,
    extension: None,
    reads: &[],
    // Only with `use_sliding_window` (refused) do these change attention.
    inert: &["layer_types", "max_window_layers", "sliding_window"],
};

fn no_transform(_: &Arch, _: Role, _: &[usize]) -> Result<Option<Transform>, String> {
    Ok(None)
}

/// llama's keys, with `attention.key_length` / `value_length` always
/// (Qwen3 configs state `head_dim`, and llama.cpp then writes both).
pub(super) fn metadata(arch: &Arch, name: &str) -> Metadata {
    let mut md = super::llama_cpp_metadata(arch, name);
    let f = &arch.family;
    let key = format!("{f}.attention.key_length");
    if md.get(&key).is_none() {
        // Before `rope.dimension_count`, where llama_cpp_metadata puts them.
        let at =
            md.0.iter()
                .position(|(k, _)| k.ends_with(".rope.dimension_count"))
                .unwrap_or(md.0.len());
        let v = MetaValue::U32(arch.head_dim as u32);
        md.0.insert(at, (key, v.clone()));
        md.0.insert(at + 1, (format!("{f}.attention.value_length"), v));
    }
    md
}
