//! Lowering a model's metadata to GGUF key/values: the architecture keys,
//! the `tokenizer.ggml.*` keys and chat templates (as llama.cpp's
//! `convert_hf_to_gguf.py` writes them), then the GGUF-specific keys the
//! model carries (`Model::metadata`: a GGUF input's own keys, the keys
//! passes stamp for llama.cpp).
//!
//! What must stay true: key order and value types are exactly those of
//! llama.cpp's converter (the files are compared byte for byte with its
//! output); a GGUF input's keys are written as they are, so requantizing a
//! GGUF keeps them byte for byte.

use passes::ir::{SpecialToken, Tokenizer, TokenizerKind};
use passes::{Arch, MetaValue, Metadata, Model};

/// The GGUF key/values of `model`, in the order they are written.
pub fn key_values(model: &Model) -> Metadata {
    if model.info.in_metadata {
        return model.metadata.clone();
    }
    let mut md = match &model.arch {
        Some(arch) => arch_keys(arch, model.info.name.as_deref().unwrap_or("model")),
        None => Metadata::default(),
    };
    if let Some(tok) = &model.info.tokenizer {
        tokenizer_keys(&mut md, tok);
    }
    for t in &model.info.chat_templates {
        let key = if t.name == "default" {
            "tokenizer.chat_template".to_string()
        } else {
            format!("tokenizer.chat_template.{}", t.name)
        };
        md.set(&key, MetaValue::String(t.template.clone()));
    }
    md.0.extend(model.metadata.0.iter().cloned());
    md
}

/// The architecture keys llama.cpp reads: the one place they are built.
fn arch_keys(arch: &Arch, name: &str) -> Metadata {
    crate::hf::arch_metadata(arch, name)
}

/// The GGUF key naming a special token's id.
fn special_key(s: SpecialToken) -> &'static str {
    match s {
        SpecialToken::Bos => "tokenizer.ggml.bos_token_id",
        SpecialToken::Eos => "tokenizer.ggml.eos_token_id",
        SpecialToken::Unknown => "tokenizer.ggml.unknown_token_id",
        SpecialToken::Pad => "tokenizer.ggml.pad_token_id",
        // Sic: llama.cpp's key.
        SpecialToken::Separator => "tokenizer.ggml.seperator_token_id",
        SpecialToken::Cls => "tokenizer.ggml.cls_token_id",
        SpecialToken::Mask => "tokenizer.ggml.mask_token_id",
    }
}

/// Append the `tokenizer.ggml.*` keys of `tok`: byte-level BPE as `gpt2`
/// with merges, SentencePiece as `llama` with scores (its own special ids
/// and `add_space_prefix` first, as llama.cpp's vocab writer puts them),
/// then the special ids and the add-BOS/EOS flags.
fn tokenizer_keys(md: &mut Metadata, tok: &Tokenizer) {
    let strings = |v: &[String]| MetaValue::Array(v.iter().cloned().map(MetaValue::String).collect());
    let types = MetaValue::Array(
        tok.token_types
            .iter()
            .map(|&t| MetaValue::I32(t as i32))
            .collect(),
    );
    match &tok.kind {
        TokenizerKind::Bpe { merges } => {
            md.set("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
            md.set("tokenizer.ggml.pre", MetaValue::String(tok.pre.clone()));
            md.set("tokenizer.ggml.tokens", strings(&tok.tokens));
            md.set("tokenizer.ggml.token_type", types);
            md.set("tokenizer.ggml.merges", strings(merges));
        }
        TokenizerKind::SentencePiece {
            scores,
            add_space_prefix,
            declared,
        } => {
            md.set("tokenizer.ggml.model", MetaValue::String("llama".into()));
            md.set("tokenizer.ggml.pre", MetaValue::String(tok.pre.clone()));
            md.set("tokenizer.ggml.tokens", strings(&tok.tokens));
            md.set(
                "tokenizer.ggml.scores",
                MetaValue::Array(scores.iter().map(|&s| MetaValue::F32(s)).collect()),
            );
            md.set("tokenizer.ggml.token_type", types);
            for &(s, id) in declared {
                md.set(special_key(s), MetaValue::U32(id));
            }
            md.set(
                "tokenizer.ggml.add_space_prefix",
                MetaValue::Bool(*add_space_prefix),
            );
        }
    }
    for &(s, id) in &tok.special {
        md.set(special_key(s), MetaValue::U32(id));
    }
    for (key, flag) in [
        ("tokenizer.ggml.add_bos_token", tok.add_bos),
        ("tokenizer.ggml.add_eos_token", tok.add_eos),
    ] {
        if let Some(b) = flag {
            md.set(key, MetaValue::Bool(b));
        }
    }
}
