//! The `phi3` family: `Phi3ForCausalLM` (Phi-3, Phi-3.5, Phi-4-mini).
//!
//! What must stay true, as llama.cpp's converter (`conversion/phi.py`) does:
//! - the fused `self_attn.qkv_proj` stays fused as `attn_qkv` (rows q, k, v)
//!   and the fused `mlp.gate_up_proj` as `ffn_up` (rows gate, then up; no
//!   `ffn_gate`); no value transform (NEOX RoPE on the checkpoint's layout);
//! - `longrope` scaling becomes the computed `rope_factors_long` /
//!   `rope_factors_short` tensors, `rope.scaling.attn_factor` and the
//!   original context (`rope.rs`); other scaling types are refused;
//! - `sliding_window` is written as `phi3.attention.sliding_window` (0 when
//!   absent); llama.cpp's phi3 graph then runs full attention (it disables
//!   Phi's sliding window), and so does kiln's forward pass;
//! - a `partial_rotary_factor` other than 1 and another activation than
//!   silu are refused (kiln rotates whole heads).

use super::rope::Kind;
use super::{ArchSpec, Dim, Refuse, RopeStyle, TensorRow};
use crate::ir::{Arch, MetaValue, Metadata, Role, Transform};

#[rustfmt::skip]
const TENSORS: &[TensorRow] = &[
    row("model.embed_tokens", "token_embd", Role::Embedding, false, &[Dim::Vocab, Dim::Hidden]),
    row("model.norm", "output_norm", Role::Norm, false, &[Dim::Hidden]),
    row("lm_head", "output", Role::Output, false, &[Dim::Vocab, Dim::Hidden]),
    row("input_layernorm", "attn_norm", Role::Norm, true, &[Dim::Hidden]),
    row("self_attn.qkv_proj", "attn_qkv", Role::AttnQkv, true, &[Dim::Qkv, Dim::Hidden]),
    row("self_attn.o_proj", "attn_output", Role::AttnOutput, true, &[Dim::Hidden, Dim::Q]),
    row("post_attention_layernorm", "ffn_norm", Role::Norm, true, &[Dim::Hidden]),
    row("mlp.gate_up_proj", "ffn_up", Role::FfnUp, true, &[Dim::Ffn2, Dim::Hidden]),
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
    gguf: "phi3",
    hf_classes: &["Phi3ForCausalLM"],
    tensors: TENSORS,
    biases: &[],
    refused: &[
        Refuse::RopeScaling(&[Kind::LongRope]),
        Refuse::Unless("hidden_act", "silu"),
        Refuse::UnlessNumber("partial_rotary_factor", 1.0),
        Refuse::True("attention_bias"),
    ],
    rope: RopeStyle::Neox,
    transform: no_transform,
    gguf_metadata: metadata,
    extension: None,
    reads: &["sliding_window", "original_max_position_embeddings"],
    inert: &["embd_pdrop", "resid_pdrop"],
};

fn no_transform(_: &Arch, _: Role, _: &[usize]) -> Result<Option<Transform>, String> {
    Ok(None)
}

/// llama's keys (with the longrope ones, `rope.rs`) plus the sliding window.
fn metadata(arch: &Arch, name: &str) -> Metadata {
    let mut md = super::llama_cpp_metadata(arch, name);
    md.set(
        "phi3.attention.sliding_window",
        MetaValue::U32(arch.sliding_window.unwrap_or(0) as u32),
    );
    md
}
