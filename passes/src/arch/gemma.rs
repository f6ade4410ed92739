//! The `gemma2` and `gemma3` families: `Gemma2ForCausalLM`,
//! `Gemma3ForCausalLM` and the text model of
//! `Gemma3ForConditionalGeneration`, converted as llama.cpp's converter
//! (`conversion/gemma.py`) converts them and run as llama.cpp runs them.
//!
//! What must stay true:
//! - every `*norm.weight` gets `+ 1` baked in (HF's Gemma RMSNorm scales by
//!   `1 + w`; llama.cpp's by `w`), added in the checkpoint's dtype as the
//!   converter's torch addition does ([`Transform::Add`]); the sandwich norms
//!   become `post_attention_norm` / `post_ffw_norm`, the pre-FFN norm
//!   `ffn_norm`; RoPE is NEOX on the checkpoint's own layout (no permutation);
//! - the sqrt(hidden) embedding scale is the runtime's (nothing baked in);
//! - the GGUF keys are the converter's, in its order; what llama.cpp cannot
//!   represent is refused by name: llama.cpp hard-codes the sliding-window
//!   layer pattern (every 2nd layer global in Gemma 2, every 6th in Gemma 3),
//!   Gemma 3's local RoPE base (10000), the query scale (1/sqrt(head_dim), or
//!   1/sqrt(hidden/heads) for the 27B models, told apart by layer count), and
//!   ignores a Gemma 3 final soft-cap; a config that says otherwise is refused;
//! - Gemma 3's multimodal checkpoints: the `language_model.` wrapper is
//!   stripped and vision tensors are dropped with a note, never silently.

use serde_json::Value;

use super::{rope, ArchSpec, ConfigError, Dim, Extension, Refuse, RopeStyle, TensorRow};
use crate::ir::{Arch, GemmaAttn, MetaValue, Metadata, Role, Transform};

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

/// Gemma 2's Hugging Face layout, in the order `kiln estimate` lists tensors
/// (no `lm_head`: the head is the embedding).
#[rustfmt::skip]
pub const GEMMA2_TENSORS: &[TensorRow] = &[
    row("model.embed_tokens", "token_embd", Role::Embedding, false, &[Dim::Vocab, Dim::Hidden]),
    row("model.norm", "output_norm", Role::Norm, false, &[Dim::Hidden]),
    row("input_layernorm", "attn_norm", Role::Norm, true, &[Dim::Hidden]),
    row("self_attn.q_proj", "attn_q", Role::AttnQ, true, &[Dim::Q, Dim::Hidden]),
    row("self_attn.k_proj", "attn_k", Role::AttnK, true, &[Dim::Kv, Dim::Hidden]),
    row("self_attn.v_proj", "attn_v", Role::AttnV, true, &[Dim::Kv, Dim::Hidden]),
    row("self_attn.o_proj", "attn_output", Role::AttnOutput, true, &[Dim::Hidden, Dim::Q]),
    row("post_attention_layernorm", "post_attention_norm", Role::Norm, true, &[Dim::Hidden]),
    row("pre_feedforward_layernorm", "ffn_norm", Role::Norm, true, &[Dim::Hidden]),
    row("mlp.gate_proj", "ffn_gate", Role::FfnGate, true, &[Dim::Ffn, Dim::Hidden]),
    row("mlp.up_proj", "ffn_up", Role::FfnUp, true, &[Dim::Ffn, Dim::Hidden]),
    row("mlp.down_proj", "ffn_down", Role::FfnDown, true, &[Dim::Hidden, Dim::Ffn]),
    row("post_feedforward_layernorm", "post_ffw_norm", Role::Norm, true, &[Dim::Hidden]),
];

/// Gemma 3's: Gemma 2's plus per-head q/k norms, and an `lm_head` the
/// converter keeps when a checkpoint has one (llama.cpp loads `output`
/// when present).
#[rustfmt::skip]
pub const GEMMA3_TENSORS: &[TensorRow] = &[
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
    row("post_attention_layernorm", "post_attention_norm", Role::Norm, true, &[Dim::Hidden]),
    row("pre_feedforward_layernorm", "ffn_norm", Role::Norm, true, &[Dim::Hidden]),
    row("mlp.gate_proj", "ffn_gate", Role::FfnGate, true, &[Dim::Ffn, Dim::Hidden]),
    row("mlp.up_proj", "ffn_up", Role::FfnUp, true, &[Dim::Ffn, Dim::Hidden]),
    row("mlp.down_proj", "ffn_down", Role::FfnDown, true, &[Dim::Hidden, Dim::Ffn]),
    row("post_feedforward_layernorm", "post_ffw_norm", Role::Norm, true, &[Dim::Hidden]),
];

/// The only activation llama.cpp's Gemma graphs run (`LLM_FFN_GELU`, tanh).
const GELU_TANH: &str = "gelu_pytorch_tanh";

/// Refusals both families share (see [`check_config`] for the rest).
const REFUSED: &[Refuse] = &[
    Refuse::Unless("hidden_activation", GELU_TANH),
    Refuse::Unless("hidden_act", GELU_TANH),
    Refuse::True("attention_bias"),
    Refuse::True("use_bidirectional_attention"),
];

/// Fields the Gemma extension reads or refuses by value (see `check_gemma*`).
const GEMMA_CHECKED: &[&str] = &[
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "hidden_activation",
    "layer_types",
    "query_pre_attn_scalar",
    "rope_local_base_freq",
    "rope_scaling",
    "sliding_window",
    "sliding_window_pattern",
    "cache_implementation",
];

pub static GEMMA2: ArchSpec = ArchSpec {
    gguf: "gemma2",
    hf_classes: &["Gemma2ForCausalLM"],
    tensors: GEMMA2_TENSORS,
    biases: &[],
    refused: REFUSED,
    rope: RopeStyle::Neox,
    transform: norm_plus_one,
    gguf_metadata: gemma2_metadata,
    extension: Some(&GEMMA2_EXT),
    // Gemma's own fields are read and checked by its `Extension`
    // (`read_config` / `check_config`: refused by name unless llama.cpp
    // runs the value), not through `reads`.
    reads: &[],
    inert: GEMMA_CHECKED,
};

pub static GEMMA3: ArchSpec = ArchSpec {
    gguf: "gemma3",
    hf_classes: &["Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"],
    tensors: GEMMA3_TENSORS,
    biases: &[],
    refused: REFUSED,
    rope: RopeStyle::Neox,
    transform: norm_plus_one,
    gguf_metadata: gemma3_metadata,
    extension: Some(&GEMMA3_EXT),
    // Gemma's own fields are read and checked by its `Extension`
    // (`read_config` / `check_config`: refused by name unless llama.cpp
    // runs the value), not through `reads`.
    reads: &[],
    inert: GEMMA_CHECKED,
};

static GEMMA2_EXT: Extension = Extension {
    config_defaults: &[],
    read_config: read_gemma2,
    check_config: check_gemma2,
    read_gguf: gguf_gemma2,
    hf_renames: &[],
    hf_dropped: &[(
        "lm_head.weight",
        "llama.cpp's gemma2 takes its output projection from token_embd (tied), as the converter does",
    )],
    hf_dropped_prefixes: &[],
    trim_embedding: false,
};

/// Vision tensors of `Gemma3ForConditionalGeneration`, in the old
/// (`vision_tower.`) and the transformers 4.52+ (`model.vision_tower.`) layouts.
const VISION_PREFIXES: &[&str] = &[
    "vision_tower.",
    "multi_modal_projector.",
    "multimodal_projector.",
    "vision_model.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
];

static GEMMA3_EXT: Extension = Extension {
    // The converter's defaults for keys a multimodal `text_config` omits.
    config_defaults: &[
        ("max_position_embeddings", 131072.0),
        ("num_attention_heads", 8.0),
        ("num_key_value_heads", 4.0),
        ("head_dim", 256.0),
        ("rms_norm_eps", 1e-6),
        ("rope_theta", 1_000_000.0),
        ("query_pre_attn_scalar", 256.0),
        ("vocab_size", 262_208.0),
    ],
    read_config: read_gemma3,
    check_config: check_gemma3,
    read_gguf: gguf_gemma3,
    // Both multimodal layouts: `language_model.model.layers.0` (older) and
    // `model.language_model.layers.0` (4.52+).
    hf_renames: &[
        ("language_model.model.", "model."),
        ("model.language_model.", "model."),
        ("language_model.lm_head.", "lm_head."),
    ],
    hf_dropped: &[],
    hf_dropped_prefixes: &[(
        VISION_PREFIXES,
        "vision tower: kiln converts the text model only (llama.cpp's mmproj file holds the vision part)",
    )],
    trim_embedding: true,
};

/// `+ 1` on every norm weight (the converter's `name.endswith("norm.weight")`).
fn norm_plus_one(_: &Arch, role: Role, shape: &[usize]) -> Result<Option<Transform>, String> {
    Ok((role == Role::Norm && shape.len() == 1).then_some(Transform::Add(1.0)))
}

fn num(c: &Value, key: &str) -> Option<f64> {
    c.get(key).and_then(Value::as_f64)
}

/// llama.cpp's query scale denominator: `hidden / heads` for the 27B models
/// (told apart by layer count), else the head dimension.
fn llama_cpp_query_scalar(a: &Arch, layers_27b: usize) -> f32 {
    if a.n_layer == layers_27b {
        (a.hidden / a.n_head.max(1)) as f32
    } else {
        a.head_dim as f32
    }
}

const GEMMA2_27B_LAYERS: usize = 46;
const GEMMA3_27B_LAYERS: usize = 62;
/// llama.cpp's fixed pattern: every 2nd (Gemma 2) / 6th (Gemma 3) layer global.
const GEMMA2_PATTERN: usize = 2;
const GEMMA3_PATTERN: usize = 6;
/// llama.cpp's fixed RoPE base of Gemma 3's sliding-window layers.
const GEMMA3_LOCAL_THETA: f32 = 10000.0;

/// Whether the embeddings are tied (Gemma's configs default to tied).
fn tied(root: &Value, text: &Value) -> bool {
    text.get("tie_word_embeddings")
        .or_else(|| root.get("tie_word_embeddings"))
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

fn read_gemma2(root: &Value, c: &Value, a: &mut Arch) {
    a.tied_embeddings = tied(root, c);
    a.gemma = Some(GemmaAttn {
        sliding_window: num(c, "sliding_window").unwrap_or(4096.0) as usize,
        swa_pattern: GEMMA2_PATTERN,
        attn_softcap: Some(num(c, "attn_logit_softcapping").unwrap_or(50.0) as f32),
        final_softcap: Some(num(c, "final_logit_softcapping").unwrap_or(30.0) as f32),
        query_pre_attn_scalar: num(c, "query_pre_attn_scalar").unwrap_or(256.0) as f32,
        rope_local_theta: None,
        rope_linear_factor: None,
        qk_norm: false,
    });
}

fn read_gemma3(root: &Value, c: &Value, a: &mut Arch) {
    a.tied_embeddings = tied(root, c);
    let linear = rope::scaling_of(c)
        .and_then(|(_, s)| s.get("factor"))
        .and_then(Value::as_f64)
        .map(|f| f as f32);
    a.gemma = Some(GemmaAttn {
        sliding_window: num(c, "sliding_window").unwrap_or(0.0) as usize,
        swa_pattern: GEMMA3_PATTERN,
        attn_softcap: None,
        final_softcap: None,
        query_pre_attn_scalar: num(c, "query_pre_attn_scalar").unwrap_or(256.0) as f32,
        rope_local_theta: Some(
            num(c, "rope_local_base_freq").unwrap_or(GEMMA3_LOCAL_THETA as f64) as f32,
        ),
        rope_linear_factor: linear,
        qk_norm: true,
    });
}

/// The layer kinds config.json states (`layer_types`, transformers 4.53+, or
/// `sliding_window_pattern`), checked against llama.cpp's fixed `pattern`.
fn check_pattern(
    c: &Value,
    pattern: usize,
    n_layer: usize,
    class: &str,
) -> Result<(), ConfigError> {
    let refused = |field: &'static str, value: String| ConfigError::Refused {
        field,
        value,
        class: class.to_string(),
    };
    let g = GemmaAttn {
        swa_pattern: pattern,
        ..GemmaAttn::default()
    };
    if let Some(types) = c.get("layer_types").filter(|v| !v.is_null()) {
        let list = types
            .as_array()
            .ok_or_else(|| refused("layer_types", types.to_string()))?;
        if list.len() != n_layer {
            return Err(refused(
                "layer_types",
                format!("{} entries for {n_layer} layers", list.len()),
            ));
        }
        for (i, t) in list.iter().enumerate() {
            let want = if g.is_swa_layer(i) {
                "sliding_attention"
            } else {
                "full_attention"
            };
            if t.as_str() != Some(want) {
                return Err(refused(
                    "layer_types",
                    format!(
                        "layer {i} is {t}, but llama.cpp runs one layer in every {pattern} (the last) with full attention and the others with the sliding window"
                    ),
                ));
            }
        }
    }
    for key in ["sliding_window_pattern", "_sliding_window_pattern"] {
        if let Some(v) = c.get(key).filter(|v| !v.is_null()) {
            if v.as_u64() != Some(pattern as u64) {
                let field = if key == "sliding_window_pattern" {
                    "sliding_window_pattern"
                } else {
                    "_sliding_window_pattern"
                };
                return Err(refused(
                    field,
                    format!("{v}; llama.cpp's pattern is {pattern}"),
                ));
            }
        }
    }
    Ok(())
}

/// A positive number, or the refusal naming `field`.
fn positive(c: &Value, field: &'static str, class: &str) -> Result<Option<f64>, ConfigError> {
    match c.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
            _ => Err(ConfigError::Refused {
                field,
                value: format!("{v}; must be a positive number"),
                class: class.to_string(),
            }),
        },
    }
}

/// The window: a positive integer that fits GGUF's u32.
fn check_window(c: &Value, class: &str, required: bool) -> Result<(), ConfigError> {
    let refused = |value: String| ConfigError::Refused {
        field: "sliding_window",
        value,
        class: class.to_string(),
    };
    match c.get("sliding_window") {
        None | Some(Value::Null) if required => {
            Err(refused("missing; llama.cpp needs the window".into()))
        }
        None | Some(Value::Null) => Ok(()),
        Some(v) => match v.as_u64() {
            Some(w) if w > 0 && w <= u64::from(u32::MAX) => Ok(()),
            _ => Err(refused(format!(
                "{v}; must be a positive integer below 2^32"
            ))),
        },
    }
}

fn check_query_scalar(
    c: &Value,
    a: &Arch,
    layers_27b: usize,
    class: &str,
) -> Result<(), ConfigError> {
    let want = llama_cpp_query_scalar(a, layers_27b);
    let got = positive(c, "query_pre_attn_scalar", class)?.map_or(
        a.gemma.as_ref().map_or(want, |g| g.query_pre_attn_scalar),
        |v| v as f32,
    );
    if got != want {
        return Err(ConfigError::Refused {
            field: "query_pre_attn_scalar",
            value: format!(
                "{got}; llama.cpp scales queries by 1/sqrt({want}) for this shape (no GGUF key carries another scale)"
            ),
            class: class.to_string(),
        });
    }
    Ok(())
}

fn check_gemma2(root: &Value, c: &Value, a: &Arch, class: &str) -> Result<(), ConfigError> {
    let refused = |field: &'static str, value: String| ConfigError::Refused {
        field,
        value,
        class: class.to_string(),
    };
    if !tied(root, c) {
        return Err(refused(
            "tie_word_embeddings",
            "false; llama.cpp's gemma2 has no output tensor of its own".into(),
        ));
    }
    for field in ["attn_logit_softcapping", "final_logit_softcapping"] {
        let field: &'static str = if field == "attn_logit_softcapping" {
            "attn_logit_softcapping"
        } else {
            "final_logit_softcapping"
        };
        if positive(c, field, class)?.is_none() {
            return Err(refused(
                field,
                "null; llama.cpp's gemma2 always soft-caps (its default would apply)".into(),
            ));
        }
    }
    if let Some((field, _)) = rope::scaling_of(c) {
        return Err(refused(
            field,
            "set; Gemma 2 has no RoPE scaling in llama.cpp".into(),
        ));
    }
    if let Some(theta) = positive(c, "rope_theta", class)? {
        if theta != 10000.0 {
            return Err(refused(
                "rope_theta",
                format!("{theta}; the gemma2 converter writes no RoPE base and llama.cpp then uses 10000"),
            ));
        }
    }
    check_window(c, class, false)?;
    check_pattern(c, GEMMA2_PATTERN, a.n_layer, class)?;
    check_query_scalar(c, a, GEMMA2_27B_LAYERS, class)
}

fn check_gemma3(_root: &Value, c: &Value, a: &Arch, class: &str) -> Result<(), ConfigError> {
    let refused = |field: &'static str, value: String| ConfigError::Refused {
        field,
        value,
        class: class.to_string(),
    };
    if let Some(v) = c.get("attn_logit_softcapping").filter(|v| !v.is_null()) {
        return Err(refused(
            "attn_logit_softcapping",
            format!("{v}; llama.cpp's gemma3 has no attention soft-capping"),
        ));
    }
    if let Some(v) = c.get("final_logit_softcapping").filter(|v| !v.is_null()) {
        return Err(refused(
            "final_logit_softcapping",
            format!("{v}; llama.cpp's gemma3 does not soft-cap its logits (the converter writes no key)"),
        ));
    }
    if let Some((field, s)) = rope::scaling_of(c) {
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("(none)");
        if kind != "linear" {
            return Err(refused(
                field,
                format!(
                    "type {}; llama.cpp's gemma3 takes linear scaling only",
                    crate::printable(kind)
                ),
            ));
        }
        match s.get("factor").and_then(Value::as_f64) {
            Some(f) if f.is_finite() && f >= 1.0 => {}
            _ => {
                return Err(refused(
                    field,
                    "linear without a finite `factor` >= 1".into(),
                ))
            }
        }
    }
    if let Some(theta) = positive(c, "rope_local_base_freq", class)? {
        if theta as f32 != GEMMA3_LOCAL_THETA {
            return Err(refused(
                "rope_local_base_freq",
                format!("{theta}; llama.cpp's gemma3 fixes the local RoPE base at 10000"),
            ));
        }
    }
    check_window(c, class, true)?;
    check_pattern(c, GEMMA3_PATTERN, a.n_layer, class)?;
    check_query_scalar(c, a, GEMMA3_27B_LAYERS, class)
}

fn gguf_gemma2(md: &Metadata, a: &mut Arch) {
    let f = |k: &str| md.get(&format!("gemma2.{k}")).and_then(MetaValue::as_f64);
    a.tied_embeddings = true;
    let q = llama_cpp_query_scalar(a, GEMMA2_27B_LAYERS);
    a.gemma = Some(GemmaAttn {
        sliding_window: f("attention.sliding_window").unwrap_or(4096.0) as usize,
        swa_pattern: GEMMA2_PATTERN,
        attn_softcap: Some(f("attn_logit_softcapping").unwrap_or(50.0) as f32),
        final_softcap: Some(f("final_logit_softcapping").unwrap_or(30.0) as f32),
        query_pre_attn_scalar: q,
        rope_local_theta: None,
        rope_linear_factor: None,
        qk_norm: false,
    });
}

fn gguf_gemma3(md: &Metadata, a: &mut Arch) {
    let f = |k: &str| md.get(&format!("gemma3.{k}")).and_then(MetaValue::as_f64);
    let linear = md
        .get("gemma3.rope.scaling.type")
        .and_then(MetaValue::as_str)
        .filter(|t| *t == "linear")
        .and_then(|_| f("rope.scaling.factor"))
        .map(|v| v as f32);
    let q = llama_cpp_query_scalar(a, GEMMA3_27B_LAYERS);
    a.gemma = Some(GemmaAttn {
        sliding_window: f("attention.sliding_window").unwrap_or(0.0) as usize,
        swa_pattern: GEMMA3_PATTERN,
        attn_softcap: None,
        final_softcap: None,
        query_pre_attn_scalar: q,
        rope_local_theta: Some(GEMMA3_LOCAL_THETA),
        rope_linear_factor: linear,
        qk_norm: true,
    });
}

/// The keys every Gemma converter writes first, in its order.
fn common_metadata(a: &Arch, name: &str) -> Metadata {
    let f = &a.family;
    let mut md = Metadata::default();
    let u = |v: usize| MetaValue::U32(v as u32);
    md.set("general.architecture", MetaValue::String(f.clone()));
    md.set("general.name", MetaValue::String(name.to_string()));
    md.set(&format!("{f}.context_length"), u(a.context_length));
    md.set(&format!("{f}.embedding_length"), u(a.hidden));
    md.set(&format!("{f}.block_count"), u(a.n_layer));
    md.set(&format!("{f}.feed_forward_length"), u(a.ffn));
    md.set(&format!("{f}.attention.head_count"), u(a.n_head));
    md
}

/// What `Gemma2Model.set_gguf_parameters` writes.
fn gemma2_metadata(a: &Arch, name: &str) -> Metadata {
    let f = &a.family;
    let u = |v: usize| MetaValue::U32(v as u32);
    let mut md = common_metadata(a, name);
    md.set(&format!("{f}.attention.head_count_kv"), u(a.n_head_kv));
    md.set(
        &format!("{f}.attention.layer_norm_rms_epsilon"),
        MetaValue::F32(a.rms_eps),
    );
    md.set(&format!("{f}.attention.key_length"), u(a.head_dim));
    md.set(&format!("{f}.attention.value_length"), u(a.head_dim));
    if let Some(g) = &a.gemma {
        if let Some(c) = g.attn_softcap {
            md.set(&format!("{f}.attn_logit_softcapping"), MetaValue::F32(c));
        }
        if let Some(c) = g.final_softcap {
            md.set(&format!("{f}.final_logit_softcapping"), MetaValue::F32(c));
        }
        md.set(
            &format!("{f}.attention.sliding_window"),
            u(g.sliding_window),
        );
    }
    md
}

/// What `Gemma3Model.set_gguf_parameters` writes.
fn gemma3_metadata(a: &Arch, name: &str) -> Metadata {
    let f = &a.family;
    let u = |v: usize| MetaValue::U32(v as u32);
    let mut md = common_metadata(a, name);
    md.set(
        &format!("{f}.attention.layer_norm_rms_epsilon"),
        MetaValue::F32(a.rms_eps),
    );
    md.set(&format!("{f}.attention.key_length"), u(a.head_dim));
    md.set(&format!("{f}.attention.value_length"), u(a.head_dim));
    md.set(&format!("{f}.rope.freq_base"), MetaValue::F32(a.rope_theta));
    if let Some(g) = &a.gemma {
        md.set(
            &format!("{f}.attention.sliding_window"),
            u(g.sliding_window),
        );
    }
    md.set(&format!("{f}.attention.head_count_kv"), u(a.n_head_kv));
    if let Some(factor) = a.gemma.as_ref().and_then(|g| g.rope_linear_factor) {
        md.set(
            &format!("{f}.rope.scaling.type"),
            MetaValue::String("linear".into()),
        );
        md.set(&format!("{f}.rope.scaling.factor"), MetaValue::F32(factor));
    }
    md
}

#[cfg(test)]
mod tests;
