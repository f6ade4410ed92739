//! Resource limits and consistency checks on architecture facts: the named
//! caps every config value is held to before anything is sized from it, the
//! value checks a convertible model must pass, and the check of every
//! dimension a config states against the tensors of the checkpoint (through
//! the family's tensor table, so a new family gets it for free).
//!
//! What must stay true:
//! - a config value is compared with its cap before it sizes an allocation,
//!   a loop or a product (so `2 * n_head`, `vocab * hidden`, a layer loop
//!   and a GGUF `u32` field can never overflow, wrap or exhaust memory);
//! - each refusal names the field, the value and the cap or the tensor with
//!   both numbers ("`vocab_size` is 512001536 but tensor
//!   `model.embed_tokens.weight` has 8 rows");
//! - the caps are far above any published model (the largest known: 126
//!   layers, hidden 16384 (Llama-3.1-405B), FFN 53248, 128 heads, vocab
//!   262144 (Gemma 3), 256 experts (DeepSeek-V3)) and are documented with
//!   their values in the README ("Resource limits").

use super::TensorRow;
use crate::ir::{Arch, Role};

/// Most layers (`num_hidden_layers`) kiln accepts.
pub const MAX_LAYERS: usize = 4096;
/// Largest width (`hidden_size`, `intermediate_size` and the expert sizes).
pub const MAX_DIM: usize = 1 << 20;
/// Most attention heads (`num_attention_heads`, `num_key_value_heads`).
pub const MAX_HEADS: usize = 1 << 14;
/// Largest head dimension (`head_dim`).
pub const MAX_HEAD_DIM: usize = 1 << 14;
/// Largest vocabulary (`vocab_size`).
pub const MAX_VOCAB: usize = 1 << 24;
/// Most routed experts (`num_local_experts` and its aliases).
pub const MAX_EXPERTS: usize = 1 << 14;
/// Longest context (`max_position_embeddings`): GGUF stores it as a `u32`.
pub const MAX_CONTEXT: usize = u32::MAX as usize;

/// A fact of [`Arch`], named as config.json names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Layers,
    Hidden,
    Heads,
    KvHeads,
    HeadDim,
    Ffn,
    Vocab,
    Context,
    Experts,
    ExpertsUsed,
    ExpertFfn,
    SharedFfn,
    RopeTheta,
    RmsEps,
}

impl Field {
    /// The config.json name.
    pub fn hf(self) -> &'static str {
        match self {
            Field::Layers => "num_hidden_layers",
            Field::Hidden => "hidden_size",
            Field::Heads => "num_attention_heads",
            Field::KvHeads => "num_key_value_heads",
            Field::HeadDim => "head_dim",
            Field::Ffn => "intermediate_size",
            Field::Vocab => "vocab_size",
            Field::Context => "max_position_embeddings",
            Field::Experts => "num_local_experts",
            Field::ExpertsUsed => "num_experts_per_tok",
            Field::ExpertFfn => "moe_intermediate_size",
            Field::SharedFfn => "shared_expert_intermediate_size",
            Field::RopeTheta => "rope_theta",
            Field::RmsEps => "rms_norm_eps",
        }
    }

    /// The GGUF key, after `{architecture}.` (`vocab_size` stands for the
    /// length of `tokenizer.ggml.tokens` when the file has one).
    pub fn gguf(self) -> &'static str {
        match self {
            Field::Layers => "block_count",
            Field::Hidden => "embedding_length",
            Field::Heads => "attention.head_count",
            Field::KvHeads => "attention.head_count_kv",
            Field::HeadDim => "attention.key_length",
            Field::Ffn => "feed_forward_length",
            Field::Vocab => "vocab_size",
            Field::Context => "context_length",
            Field::Experts => "expert_count",
            Field::ExpertsUsed => "expert_used_count",
            Field::ExpertFfn => "expert_feed_forward_length",
            Field::SharedFfn => "expert_shared_feed_forward_length",
            Field::RopeTheta => "rope.freq_base",
            Field::RmsEps => "attention.layer_norm_rms_epsilon",
        }
    }

    /// The cap and the name of its constant (floats have none).
    fn cap(self) -> Option<(usize, &'static str)> {
        Some(match self {
            Field::Layers => (MAX_LAYERS, "MAX_LAYERS"),
            Field::Hidden | Field::Ffn | Field::ExpertFfn | Field::SharedFfn => {
                (MAX_DIM, "MAX_DIM")
            }
            Field::Heads | Field::KvHeads => (MAX_HEADS, "MAX_HEADS"),
            Field::HeadDim => (MAX_HEAD_DIM, "MAX_HEAD_DIM"),
            Field::Vocab => (MAX_VOCAB, "MAX_VOCAB"),
            Field::Context => (MAX_CONTEXT, "MAX_CONTEXT"),
            Field::Experts => (MAX_EXPERTS, "MAX_EXPERTS"),
            Field::RopeTheta | Field::RmsEps | Field::ExpertsUsed => return None,
        })
    }
}

/// A config value kiln refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitError {
    #[error("`{}` is {value}, above kiln's cap of {cap} ({name})", field.hf())]
    OverCap {
        field: Field,
        value: usize,
        cap: usize,
        name: &'static str,
    },
    #[error("`{}` is {value}: {reason}", field.hf())]
    Invalid {
        field: Field,
        value: String,
        reason: String,
    },
    /// A dimension the config states disagrees with a tensor.
    #[error("`{field}` is {stated} but tensor `{tensor}` (shape {shape:?}) has {found}")]
    Tensor {
        field: String,
        stated: usize,
        tensor: String,
        shape: Vec<usize>,
        found: usize,
    },
    #[error("tensor `{tensor}` has shape {shape:?} but the config implies {want:?}")]
    Rank {
        tensor: String,
        shape: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("`num_hidden_layers` is {stated} but the checkpoint's tensors hold {found} layer(s)")]
    Layers { stated: usize, found: usize },
    /// A routed expert's weight the config implies is absent.
    #[error("tensor `{tensor}` is missing (the config has {n_expert} experts per MoE layer)")]
    MissingExpert { tensor: String, n_expert: usize },
    /// A per-layer weight the family's table requires is absent.
    #[error("tensor `{tensor}` is missing (every layer of this family has one)")]
    MissingLayerTensor { tensor: String },
}

/// Hold every integer fact of `a` to its cap: what any config must pass
/// before an estimate or a conversion sizes anything from it.
pub fn check_caps(a: &Arch) -> Result<(), LimitError> {
    let mut facts = vec![
        (Field::Layers, a.n_layer),
        (Field::Hidden, a.hidden),
        (Field::Heads, a.n_head),
        (Field::KvHeads, a.n_head_kv),
        (Field::HeadDim, a.head_dim),
        (Field::Ffn, a.ffn),
        (Field::Vocab, a.vocab),
        (Field::Context, a.context_length),
        (Field::Experts, a.n_expert),
        (Field::SharedFfn, a.shared_ffn),
    ];
    if let Some(e) = a.expert_ffn {
        facts.push((Field::ExpertFfn, e));
    }
    for (field, value) in facts {
        if let Some((cap, name)) = field.cap() {
            if value > cap {
                return Err(LimitError::OverCap {
                    field,
                    value,
                    cap,
                    name,
                });
            }
        }
    }
    if a.n_expert_used > a.n_expert.max(1) {
        return Err(LimitError::Invalid {
            field: Field::Experts,
            value: a.n_expert.to_string(),
            reason: format!(
                "fewer experts than `num_experts_per_tok` ({})",
                a.n_expert_used
            ),
        });
    }
    Ok(())
}

/// The checks a model kiln converts must pass beyond the caps: every size
/// positive, the KV heads dividing the heads, a positive finite RoPE base
/// and norm epsilon.
pub fn check_values(a: &Arch) -> Result<(), LimitError> {
    check_caps(a)?;
    let invalid = |field, value: String, reason: &str| {
        Err(LimitError::Invalid {
            field,
            value,
            reason: reason.into(),
        })
    };
    for (field, value) in [
        (Field::Layers, a.n_layer),
        (Field::Hidden, a.hidden),
        (Field::Heads, a.n_head),
        (Field::KvHeads, a.n_head_kv),
        (Field::HeadDim, a.head_dim),
        (Field::Ffn, a.ffn),
        (Field::Vocab, a.vocab),
        (Field::Context, a.context_length),
    ] {
        if value == 0 {
            return invalid(field, "0".into(), "must be positive");
        }
    }
    if a.n_head_kv > a.n_head || a.n_head % a.n_head_kv != 0 {
        return invalid(
            Field::KvHeads,
            a.n_head_kv.to_string(),
            &format!(
                "must divide `num_attention_heads` ({}) (each KV head serves a whole group of query heads)",
                a.n_head
            ),
        );
    }
    if !(a.rope_theta.is_finite() && a.rope_theta > 0.0) {
        return invalid(
            Field::RopeTheta,
            a.rope_theta.to_string(),
            "must be a positive finite number",
        );
    }
    if !(a.rms_eps.is_finite() && a.rms_eps > 0.0) {
        return invalid(
            Field::RmsEps,
            a.rms_eps.to_string(),
            "must be a positive finite number",
        );
    }
    if a.is_moe() && a.n_expert_used == 0 {
        return invalid(
            Field::ExpertsUsed,
            "0".into(),
            "an MoE model routes each token to at least one expert",
        );
    }
    Ok(())
}

/// The config field(s) a table dimension comes from, for messages (with
/// the factors of a product: `num_key_value_heads x head_dim (4 x 64)`).
fn dim_field(d: super::Dim, a: &Arch) -> String {
    use super::Dim;
    match d {
        Dim::Vocab => "vocab_size".into(),
        Dim::Hidden => "hidden_size".into(),
        Dim::Q => format!(
            "num_attention_heads x head_dim ({} x {})",
            a.n_head, a.head_dim
        ),
        Dim::Kv => format!(
            "num_key_value_heads x head_dim ({} x {})",
            a.n_head_kv.max(1),
            a.head_dim
        ),
        Dim::Ffn => "intermediate_size".into(),
        Dim::HeadDim => "head_dim".into(),
        Dim::Qkv => "(num_attention_heads + 2 x num_key_value_heads) x head_dim".into(),
        Dim::Ffn2 => "2 x intermediate_size".into(),
        Dim::Experts => experts_field(a).into(),
        Dim::ExpertFfn => "moe_intermediate_size".into(),
        Dim::SharedFfn => "shared_expert_intermediate_size".into(),
        Dim::One => "1".into(),
    }
}

/// The config field that states the routed-expert count of `a`'s family
/// (`num_experts` for Qwen-MoE, `num_local_experts` for Mixtral and others).
fn experts_field(a: &Arch) -> &'static str {
    super::spec_for_arch(a)
        .and_then(|s| s.reads.iter().copied().find(|f| *f == "num_experts"))
        .unwrap_or("num_local_experts")
}

/// Check every dimension `a` states against the checkpoint's tensors
/// (Hugging Face names and shapes), through the family's `table`: each
/// mapped weight's shape must be the table's, each layer index below
/// `num_hidden_layers`, and the layers present as many as it says. Run
/// before anything is sized from the config (the tokenizer is padded to
/// `vocab_size`), after [`check_caps`]. Tensors the table cannot map are
/// left to normalize, which refuses them by name.
pub fn check_tensors<'a>(
    a: &Arch,
    table: &[TensorRow],
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
) -> Result<(), LimitError> {
    let mut layers = 0usize;
    let spec = super::spec_for_arch(a);
    let trim_embedding = spec
        .and_then(|s| s.extension)
        .is_some_and(|e| e.trim_embedding);
    // (layer, expert row, expert) of every routed expert's weight seen.
    let mut experts = std::collections::BTreeSet::new();
    // The GGUF names of the weights and biases seen.
    let mut seen = std::collections::BTreeSet::new();
    for (name, shape) in tensors {
        let super::HfName::Map(mapped) = super::hf_name(spec, name) else {
            continue;
        };
        let Ok(Some(m)) = super::find_hf_row(table, &mapped) else {
            continue;
        };
        let (row, layer, role) = (m.row, m.layer, m.row.role);
        seen.insert(m.gguf.clone());
        if let Some(i) = layer {
            if i >= a.n_layer {
                return Err(LimitError::Tensor {
                    field: "num_hidden_layers".into(),
                    stated: a.n_layer,
                    tensor: name.into(),
                    shape: shape.to_vec(),
                    found: i + 1,
                });
            }
            layers = layers.max(i + 1);
            if let Some(e) = m.expert {
                if e >= a.n_expert {
                    return Err(LimitError::Tensor {
                        field: experts_field(a).into(),
                        stated: a.n_expert,
                        tensor: name.into(),
                        shape: shape.to_vec(),
                        found: e + 1,
                    });
                }
                if name.ends_with(".weight") {
                    experts.insert((i, row.hf, e));
                }
            }
        }
        // A bias holds the weight's rows: check its one dimension against the first.
        let dims = if name.ends_with(".bias") {
            &row.shape[..1]
        } else {
            row.shape
        };
        if shape.len() != dims.len() {
            return Err(LimitError::Rank {
                tensor: name.into(),
                shape: shape.to_vec(),
                want: dims.iter().map(|d| d.of(a)).collect(),
            });
        }
        for (k, (&d, &got)) in dims.iter().zip(shape).enumerate() {
            let want = d.of(a);
            // Rows past the vocabulary are dropped by normalize (Gemma 3).
            let trimmed = trim_embedding && role == Role::Embedding && k == 0 && got > want;
            if want != got && !trimmed {
                return Err(LimitError::Tensor {
                    field: dim_field(d, a),
                    stated: want,
                    tensor: name.into(),
                    shape: shape.to_vec(),
                    found: got,
                });
            }
        }
    }
    if layers != a.n_layer {
        return Err(LimitError::Layers {
            stated: a.n_layer,
            found: layers,
        });
    }
    // Every per-layer weight (and bias) the family's layers have (as an estimate
    // counts them) is there: llama.cpp refuses a file without one.
    if spec.is_some() {
        for node in super::synthesize(a) {
            let (Some(i), false) = (node.layer, seen.contains(&node.name)) else {
                continue;
            };
            let Some(r) = super::row_for(table, &node.name, Some(i)) else {
                continue;
            };
            if r.is_expert() {
                continue; // named expert by expert below
            }
            let suffix = node.name.rsplit('.').next().unwrap_or("weight");
            return Err(LimitError::MissingLayerTensor {
                tensor: format!("model.layers.{i}.{}.{suffix}", r.hf),
            });
        }
    }
    for r in table.iter().filter(|r| r.is_expert()) {
        for i in (0..a.n_layer).filter(|&i| a.moe_layer(i)) {
            if let Some(e) = (0..a.n_expert).find(|&e| !experts.contains(&(i, r.hf, e))) {
                return Err(LimitError::MissingExpert {
                    tensor: format!(
                        "model.layers.{i}.{}.weight",
                        r.hf.replace(super::EXPERT, &e.to_string())
                    ),
                    n_expert: a.n_expert,
                });
            }
        }
    }
    Ok(())
}
