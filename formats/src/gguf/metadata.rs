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
use std::borrow::Cow;

use passes::{Arch, MetaValue, Metadata, Model};

/// The GGUF key/values of `model`, in the order they are written (borrowed
/// when the model already holds them: a GGUF input, or a model lowered in
/// place by [`lower_in_place`]).
pub fn key_values(model: &Model) -> Cow<'_, Metadata> {
    if model.info.in_metadata {
        return Cow::Borrowed(&model.metadata);
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
    Cow::Owned(md)
}

/// Replace the model's neutral metadata by its GGUF key/values, so a writer
/// that lays the model out borrows them instead of holding a second copy (a
/// tokenizer is ~100k strings); what is written is unchanged.
pub fn lower_in_place(model: &mut Model) {
    if model.info.in_metadata {
        return;
    }
    model.metadata = key_values(model).into_owned();
    model.info.tokenizer = None;
    model.info.chat_templates.clear();
    model.info.in_metadata = true;
}

/// The architecture keys llama.cpp reads, from the family's spec
/// (`passes::arch`); a family without one gets the keys every llama.cpp
/// architecture shares.
fn arch_keys(arch: &Arch, name: &str) -> Metadata {
    match passes::arch::spec_for_gguf(&arch.family) {
        Some(spec) => (spec.gguf_metadata)(arch, name),
        None => passes::arch::llama_cpp_metadata(arch, name),
    }
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
    let strings =
        |v: &[String]| MetaValue::Array(v.iter().cloned().map(MetaValue::String).collect());
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

#[cfg(test)]
mod tests {
    use super::*;
    use passes::ir::{ChatTemplate, ModelInfo, TokenType};

    fn keys(md: &Metadata) -> Vec<&str> {
        md.0.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// SentencePiece as llama.cpp's converter orders it: the ids the model
    /// file declares and add_space_prefix, then the configs' specials (a
    /// declared one keeps its place, a new one is appended), the flags, the
    /// templates, then the stamped GGUF keys.
    #[test]
    fn sentencepiece_keys_in_converter_order() {
        let tok = Tokenizer {
            kind: TokenizerKind::SentencePiece {
                scores: vec![0.0, -1.0],
                add_space_prefix: true,
                declared: vec![(SpecialToken::Unknown, 0), (SpecialToken::Eos, 1)],
            },
            pre: "default".into(),
            tokens: vec!["<unk>".into(), "</s>".into()],
            token_types: vec![TokenType::Unknown, TokenType::Control],
            special: vec![
                (SpecialToken::Bos, 1),
                (SpecialToken::Eos, 1),
                (SpecialToken::Unknown, 0),
            ],
            add_bos: Some(true),
            add_eos: None,
        };
        let mut model = Model {
            arch: Some(Arch {
                family: "llama".into(),
                n_head: 1,
                head_dim: 8,
                hidden: 8,
                ..Arch::default()
            }),
            info: ModelInfo {
                name: Some("m".into()),
                tokenizer: Some(tok),
                chat_templates: vec![ChatTemplate {
                    name: "tool_use".into(),
                    template: "t".into(),
                }],
                in_metadata: false,
            },
            ..Model::default()
        };
        model.metadata.set("general.file_type", MetaValue::U32(7));
        let md = key_values(&model);
        let k = keys(&md);
        let at = k.iter().position(|&k| k == "tokenizer.ggml.model").unwrap();
        assert_eq!(&k[..2], ["general.architecture", "general.name"]);
        assert_eq!(
            &k[at..],
            [
                "tokenizer.ggml.model",
                "tokenizer.ggml.pre",
                "tokenizer.ggml.tokens",
                "tokenizer.ggml.scores",
                "tokenizer.ggml.token_type",
                "tokenizer.ggml.unknown_token_id",
                "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.add_space_prefix",
                "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.add_bos_token",
                "tokenizer.chat_template.tool_use",
                "general.file_type",
            ]
        );
        assert_eq!(
            md.get("tokenizer.ggml.token_type"),
            Some(&MetaValue::Array(vec![
                MetaValue::I32(2),
                MetaValue::I32(3)
            ]))
        );
    }

    /// A GGUF input's keys are written as they are, whatever the neutral fields say.
    #[test]
    fn carried_keys_are_written_as_they_are() {
        let mut model = Model::default();
        model.metadata.set("z", MetaValue::U8(1));
        model
            .metadata
            .set("general.architecture", MetaValue::String("llama".into()));
        model.info.in_metadata = true;
        model.info.name = Some("ignored".into());
        assert_eq!(*key_values(&model), model.metadata);
    }
}
