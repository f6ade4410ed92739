//! Which config.json fields a family accounts for: the ones every family
//! reads into [`Arch`](crate::ir::Arch) ([`COMMON`]), the ones a spec reads
//! besides ([`ArchSpec::reads`](super::ArchSpec)), the ones it refuses
//! ([`Refuse`]), and the ones known not to change the computation
//! ([`INERT`] and the spec's own `inert` list). Any other field is unknown:
//! conversions warn about it by name ([`unknown_fields`]), so a field that
//! changes the math is never dropped without a word.
//!
//! What must stay true: every field in [`COMMON`] and in a spec's `reads` is
//! one [`super::from_hf_config`] or the spec's metadata actually uses (a test
//! changes each one and sees the output change); every refused field is
//! refused by name (a test sets each one); adding a field to either list
//! without a case in those tests fails them.

use serde_json::Value;

use super::{ArchSpec, Refuse};

/// The fields [`super::from_hf_config`] reads for every dense family.
pub const COMMON: &[&str] = &[
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "rope_theta",
    // transformers v5's home of the RoPE base and scaling (see
    // `rope::from_v5`): read as `rope_theta` / `rope_scaling` are.
    "rope_parameters",
    "rms_norm_eps",
    "tie_word_embeddings",
];

/// Fields of transformers configs that never change a model's computation
/// at inference (bookkeeping, training-only settings, token ids the
/// tokenizer files carry).
pub const INERT: &[&str] = &[
    "_name_or_path",
    "architectures",
    "attention_dropout",
    "bos_token_id",
    "dtype",
    "eos_token_id",
    "initializer_range",
    "model_type",
    "pad_token_id",
    "torch_dtype",
    "transformers_version",
    "use_cache",
];

impl Refuse {
    /// The config.json field this rule refuses.
    pub fn field(&self) -> &'static str {
        match *self {
            Refuse::NonNull(f)
            | Refuse::Unless(f, _)
            | Refuse::True(f)
            | Refuse::UnlessTrue(f)
            | Refuse::UnlessInt(f, _)
            | Refuse::NonEmpty(f)
            | Refuse::WindowBelowContext(f)
            | Refuse::UnlessNumber(f, _) => f,
            Refuse::RopeScaling(_) => "rope_scaling",
        }
    }
}

/// Whether `spec` accounts for `field` (reads, refuses or knows it inert).
pub fn known(spec: &ArchSpec, field: &str) -> bool {
    COMMON.contains(&field)
        || INERT.contains(&field)
        || spec.reads.contains(&field)
        || spec.inert.contains(&field)
        || spec.refused.iter().any(|r| r.field() == field)
}

/// The fields of `config` (its text part, for multimodal configs) that
/// `spec` does not account for, sorted, for a warning: kiln cannot tell
/// whether they change the computation.
pub fn unknown_fields(spec: &ArchSpec, config: &Value) -> Vec<String> {
    let Some(obj) = super::text_config(config).as_object() else {
        return Vec::new();
    };
    let mut out: Vec<String> = obj
        .keys()
        .filter(|k| !known(spec, k))
        .map(|k| crate::printable(k).into_owned())
        .collect();
    out.sort();
    out
}
