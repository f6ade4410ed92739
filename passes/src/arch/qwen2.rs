//! The `qwen2` family: `Qwen2ForCausalLM`.
//!
//! What must stay true: llama's tensor names, plus q/k/v biases; no value
//! transform (llama.cpp runs qwen2 with NEOX RoPE on the checkpoint's own
//! rotate-half layout, so the forward pass uses [`RopeStyle::Neox`]); RoPE
//! scaling is carried for `linear` and `yarn` (Qwen2.5's long-context
//! configs) and refused otherwise, as llama.cpp's converter writes no
//! `rope_freqs` for qwen2; another activation than silu, and sliding-window
//! attention are refused (kiln carries neither yet).

use super::rope::Kind;
use super::{ArchSpec, Refuse, RopeStyle};
use crate::ir::{Arch, Role, Transform};

pub static SPEC: ArchSpec = ArchSpec {
    gguf: "qwen2",
    hf_classes: &["Qwen2ForCausalLM"],
    tensors: super::llama::TENSORS,
    biases: &[Role::AttnQ, Role::AttnK, Role::AttnV],
    refused: &[
        Refuse::RopeScaling(&[Kind::Linear, Kind::Yarn]),
        Refuse::Unless("hidden_act", "silu"),
        Refuse::True("use_sliding_window"),
    ],
    rope: RopeStyle::Neox,
    transform: no_transform,
    gguf_metadata: super::llama_cpp_metadata,
    reads: &[],
    // Only with `use_sliding_window` (refused) do these change attention.
    inert: &["layer_types", "max_window_layers", "sliding_window"],
    extension: None,
};

fn no_transform(_: &Arch, _: Role, _: &[usize]) -> Result<Option<Transform>, String> {
    Ok(None)
}
