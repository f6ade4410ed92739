//! A GGUF as the input of a compressed-tensors output: what a Hugging Face
//! checkpoint directory would have given [`crate::ct::CompressedTensors`].
//!
//! - Names: every GGUF tensor gets its Hugging Face name by inverting the
//!   family's HF-to-GGUF table (`passes::arch`); a tensor the table does not
//!   name is refused by name.
//! - Layout: llama's q/k rows, which llama.cpp's converter permutes into
//!   ggml's interleaved RoPE order, are read back through
//!   [`Transform::RopeUnpermute`] (a pure row permutation, so values are
//!   untouched); NEOX families (qwen2, qwen3) need nothing.
//! - Values: block-quantized tensors (Q4_K, Q8_0, ...) are dequantized as
//!   ggml does; the output dtype ([`output_dtype`]) is the GGUF's 16-bit
//!   float type when every matrix is stored in it, else F32 (a decoded block
//!   is exact in F32, not in 16 bits).
//! - `config.json` is synthesized from the metadata: every field the family
//!   reads, with the defaults of the fields it refuses, then parsed back by
//!   the same code that reads a checkpoint's config and compared with the
//!   GGUF's facts; a metadata key with no config.json field kiln writes
//!   (`{arch}.*`) is refused by name, as are RoPE scalings kept only in
//!   tensors (llama3's `rope_freqs`, longrope).
//! - `tokenizer.json` / `tokenizer_config.json` from a byte-level BPE
//!   vocabulary (`tokenizer.ggml.model = gpt2`) with a pre-tokenizer kiln
//!   can name (the inverse of `crate::tokenizer`'s mapping); SentencePiece
//!   vocabularies are refused (HF's tokenizer.json needs merges the GGUF does
//!   not store); `generation_config.json` from the special token ids and any
//!   `general.sampling.*` keys.
//!
//! What must stay true: nothing is guessed; a fact the GGUF has that the
//! synthesized files cannot express is refused with its key or tensor name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use passes::arch::{self, ArchSpec, RopeStyle};
use passes::ir::RopeScaling;
use passes::{Arch, MetaValue, Metadata, Model, Role, SourceDType, Transform};
use quant::ct::Dtype;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::tokenizer::{LLAMA3_REGEX, QWEN2_REGEX};

/// What a GGUF input gives the compressed-tensors writer besides its tensors.
#[derive(Debug)]
pub struct FromGguf {
    /// `config.json` without `quantization_config`.
    pub config: Map<String, Value>,
    /// Tokenizer and generation files, by name.
    pub files: Files,
    /// The dtype every kept tensor and scale is written in.
    pub dtype: Dtype,
    /// What the user should know (a file not written, and why).
    pub notes: Vec<String>,
}

/// A family's Hugging Face class, `model_type` and fixed config fields.
type Family = (&'static str, &'static str, Vec<(&'static str, Value)>);

/// Files by name and contents.
type Files = Vec<(String, Vec<u8>)>;

/// The families a GGUF converts from, with their Hugging Face class and
/// `model_type`, and the config.json fields (beyond the common ones) their
/// class needs set to what kiln carries.
fn family(spec: &ArchSpec) -> Option<Family> {
    Some(match spec.gguf {
        "llama" => (
            "LlamaForCausalLM",
            "llama",
            vec![
                ("attention_bias", json!(false)),
                ("hidden_act", json!("silu")),
                ("mlp_bias", json!(false)),
            ],
        ),
        "qwen2" => (
            "Qwen2ForCausalLM",
            "qwen2",
            vec![
                ("hidden_act", json!("silu")),
                ("use_sliding_window", json!(false)),
            ],
        ),
        "qwen3" => (
            "Qwen3ForCausalLM",
            "qwen3",
            vec![
                ("attention_bias", json!(false)),
                ("hidden_act", json!("silu")),
                ("use_sliding_window", json!(false)),
            ],
        ),
        _ => return None,
    })
}

/// Why a GGUF architecture kiln runs does not convert to compressed-tensors yet.
fn not_yet(family: &str) -> &'static str {
    match family {
        "phi3" => {
            "a Phi-3 config (its sliding window, and LongRoPE factors a GGUF keeps as tensors) is not synthesized yet"
        }
        "gemma2" | "gemma3" => {
            "a Gemma GGUF's norms carry the converter's `+ 1` in F32, which kiln does not take back out yet"
        }
        "qwen2moe" => "mixture-of-experts models are not written as compressed-tensors yet",
        _ => "kiln has no Hugging Face config for this architecture",
    }
}

/// The value of `x`, an f32 from a GGUF, as the shortest decimal that reads
/// back to it (`1e-5`, not `9.999999747378752e-6`), as config.json has it.
fn short(x: f32) -> Value {
    let v: f64 = format!("{x}").parse().expect("a float's Display parses");
    json!(v)
}

/// The GGUF keys of architecture `f` whose values config.json carries (or
/// that must agree with it, checked below); any other `{f}.*` key is refused.
const KEYS: &[&str] = &[
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.layer_norm_rms_epsilon",
    "rope.freq_base",
    "rope.dimension_count",
    "vocab_size",
    "expert_count",
    "expert_used_count",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.original_context_length",
    "rope.scaling.finetuned",
    "rope.scaling.yarn_beta_fast",
    "rope.scaling.yarn_beta_slow",
    "rope.scaling.yarn_attn_factor",
];

/// The dtype a GGUF's tensors are written in: its 16-bit float type when
/// every matrix is stored in it, else F32.
pub fn output_dtype(model: &Model) -> Dtype {
    let matrices: BTreeSet<&'static str> = model
        .tensors
        .iter()
        .filter(|t| t.shape.len() >= 2)
        .map(|t| t.source.dtype.name())
        .collect();
    let only = |d: SourceDType| matrices.len() == 1 && matrices.contains(d.name());
    if only(SourceDType::BF16) {
        Dtype::Bf16
    } else if only(SourceDType::F16) {
        Dtype::F16
    } else {
        Dtype::F32
    }
}

/// Give every tensor of a GGUF `model` (opened: roles and layers set) its
/// Hugging Face name and the transform back to Hugging Face's layout, and
/// synthesize the files a checkpoint directory would have.
pub fn to_hf(model: &mut Model, path: &Path) -> Result<FromGguf> {
    let unsupported = |tensor: Option<&str>, why: String| Error::unsupported(path, tensor, why);
    let Some(a) = model.arch.clone() else {
        return Err(Error::malformed(
            path,
            None,
            crate::load::gguf_arch_missing(&model.metadata),
        ));
    };
    let spec = arch::spec_for_gguf(&a.family);
    if a.n_expert > 0 || model.tensors.iter().any(|t| t.role.is_expert()) {
        return Err(unsupported(
            None,
            format!(
                "architecture `{}` with {} experts: mixture-of-experts models are not written as compressed-tensors yet",
                passes::printable(&a.family),
                a.n_expert
            ),
        ));
    }
    let Some((spec, (class, model_type, fixed))) = spec.and_then(|s| family(s).map(|f| (s, f)))
    else {
        return Err(unsupported(
            None,
            format!(
                "GGUF architecture `{}`: {} (compressed-tensors output converts llama, qwen2 and qwen3 GGUFs)",
                passes::printable(&a.family),
                not_yet(&a.family)
            ),
        ));
    };
    check_keys(&model.metadata, &a, path)?;

    // Names and layout.
    let embedding_rows = model
        .tensors
        .iter()
        .find(|t| t.role == Role::Embedding)
        .map(|t| t.shape[0]);
    for t in &mut model.tensors {
        let gguf_name = t.source_name.clone();
        if gguf_name == "rope_freqs.weight" {
            return Err(unsupported(
                Some(&gguf_name),
                "llama3 RoPE scaling is stored as per-frequency divisors in this tensor; \
                 config.json's `rope_scaling` needs the factors it was computed from, which the GGUF does not keep"
                    .into(),
            ));
        }
        let (base, suffix) = gguf_name
            .rsplit_once('.')
            .filter(|(_, s)| matches!(*s, "weight" | "bias"))
            .ok_or_else(|| {
                unsupported(Some(&gguf_name), "not a `.weight` or `.bias` tensor".into())
            })?;
        let row = arch::row_for(spec.tensors, &gguf_name, t.layer).ok_or_else(|| {
            unsupported(
                Some(&gguf_name),
                format!("no Hugging Face name for this tensor in the {class} table"),
            )
        })?;
        if suffix == "bias" && !spec.biases.contains(&row.role) {
            return Err(unsupported(
                Some(&gguf_name),
                format!(
                    "{class} has no bias here (kiln's {} family carries none)",
                    spec.gguf
                ),
            ));
        }
        let hf = match t.layer {
            Some(l) => format!("model.layers.{l}.{}.{suffix}", row.hf),
            None => format!("{}.{suffix}", row.hf),
        };
        debug_assert!(base.ends_with(row.gguf));
        if suffix == "weight" && spec.rope == RopeStyle::Interleaved {
            match (spec.transform)(&a, row.role, &t.shape) {
                Ok(Some(Transform::RopePermute { n_head })) => {
                    t.transform = Some(Transform::RopeUnpermute { n_head })
                }
                Ok(_) => {}
                Err(why) => return Err(unsupported(Some(&gguf_name), why)),
            }
        }
        t.source_name = hf;
    }
    for (role, what) in [(Role::AttnQ, "q"), (Role::AttnK, "k"), (Role::AttnV, "v")] {
        if !spec.biases.contains(&role) {
            continue;
        }
        // The class always has these biases: a missing one would be initialized at random.
        for l in 0..a.n_layer {
            let has = model
                .tensors
                .iter()
                .any(|t| t.layer == Some(l) && t.role == role && t.shape.len() == 1);
            if !has {
                return Err(unsupported(
                    None,
                    format!("layer {l} has no {what} bias, which {class} always has"),
                ));
            }
        }
    }

    // config.json.
    let dtype = output_dtype(model);
    let vocab = embedding_rows.unwrap_or(a.vocab);
    let md = &model.metadata;
    let id = |k: &str| {
        md.get(&format!("tokenizer.ggml.{k}"))
            .and_then(MetaValue::as_u64)
    };
    let mut c: BTreeMap<&str, Value> = BTreeMap::new();
    c.insert("architectures", json!([class]));
    c.insert("model_type", json!(model_type));
    c.insert("num_hidden_layers", json!(a.n_layer));
    c.insert("hidden_size", json!(a.hidden));
    c.insert("intermediate_size", json!(a.ffn));
    c.insert("num_attention_heads", json!(a.n_head));
    c.insert("num_key_value_heads", json!(a.n_head_kv));
    c.insert("head_dim", json!(a.head_dim));
    c.insert("max_position_embeddings", json!(a.context_length));
    c.insert("rms_norm_eps", short(a.rms_eps));
    c.insert("rope_theta", short(a.rope_theta));
    c.insert("rope_scaling", rope_scaling(&a, path)?);
    c.insert("tie_word_embeddings", json!(a.tied_embeddings));
    c.insert("vocab_size", json!(vocab));
    c.insert("use_cache", json!(true));
    c.insert(
        "torch_dtype",
        json!(match dtype {
            Dtype::Bf16 => "bfloat16",
            Dtype::F16 => "float16",
            Dtype::F32 => "float32",
        }),
    );
    for (k, v) in [
        ("bos_token_id", id("bos_token_id")),
        ("eos_token_id", id("eos_token_id")),
    ] {
        if let Some(v) = v {
            c.insert(k, json!(v));
        }
    }
    for (k, v) in fixed {
        c.insert(k, v);
    }
    let config: Map<String, Value> = c.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    check_config(&config, &a, vocab, model, path)?;

    // Side files.
    let mut files = Vec::new();
    let mut notes = Vec::new();
    match tokenizer_files(md, a.context_length, path)? {
        Some(f) => files.extend(f),
        None => notes.push("the GGUF has no tokenizer: no tokenizer files written".to_string()),
    }
    if let Some(g) = generation_config(md) {
        files.push(("generation_config.json".into(), g));
    }
    Ok(FromGguf {
        config,
        files,
        dtype,
        notes,
    })
}

/// Refuse `{arch}.*` keys config.json cannot carry, and values of carried
/// keys that disagree with what it says (a partial rotary dimension, a
/// value length unlike the key length).
fn check_keys(md: &Metadata, a: &Arch, path: &Path) -> Result<()> {
    let prefix = format!("{}.", a.family);
    for (k, v) in &md.0 {
        let Some(rest) = k.strip_prefix(&prefix) else {
            continue;
        };
        if !KEYS.contains(&rest) {
            return Err(Error::unsupported(
                path,
                None,
                format!(
                    "GGUF key `{}`: no config.json field kiln writes carries it",
                    passes::printable(k)
                ),
            ));
        }
        let n = v.as_u64().map(|n| n as usize);
        let bad = match rest {
            "rope.dimension_count" | "attention.value_length" | "attention.key_length" => {
                n != Some(a.head_dim)
            }
            _ => false,
        };
        if bad {
            return Err(Error::unsupported(
                path,
                None,
                format!(
                    "GGUF key `{}` is {v:?}, not the head dimension {}: config.json cannot express that",
                    passes::printable(k),
                    a.head_dim
                ),
            ));
        }
    }
    Ok(())
}

/// config.json's `rope_scaling` for the GGUF's scaling (linear, yarn), or
/// null; kinds kept in tensors are refused.
fn rope_scaling(a: &Arch, path: &Path) -> Result<Value> {
    Ok(match &a.rope_scaling {
        None => Value::Null,
        Some(RopeScaling::Linear { factor }) => {
            json!({"factor": short(*factor), "rope_type": "linear"})
        }
        Some(RopeScaling::Yarn {
            factor,
            original_context,
            beta_fast,
            beta_slow,
            attn_factor,
        }) => {
            let mut m = Map::new();
            m.insert("factor".into(), short(*factor));
            m.insert(
                "original_max_position_embeddings".into(),
                json!(original_context),
            );
            m.insert("rope_type".into(), json!("yarn"));
            for (k, v) in [
                ("attention_factor", attn_factor),
                ("beta_fast", beta_fast),
                ("beta_slow", beta_slow),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), short(*v));
                }
            }
            Value::Object(m)
        }
        Some(other) => {
            return Err(Error::unsupported(
                path,
                None,
                format!(
                    "RoPE scaling {:?}: its factors are stored in tensors a GGUF keeps and config.json does not",
                    other
                ),
            ))
        }
    })
}

/// Read the synthesized config back as a checkpoint's is read (refusals,
/// unknown fields, the facts) and require it to describe the GGUF: the
/// same facts, and every tensor the class has.
fn check_config(
    config: &Map<String, Value>,
    a: &Arch,
    vocab: usize,
    model: &Model,
    path: &Path,
) -> Result<()> {
    let v = Value::Object(config.clone());
    let bad = |why: String| {
        Error::unsupported(
            path,
            None,
            format!("the config.json kiln would write does not describe this GGUF: {why}"),
        )
    };
    let spec = arch::check_convertible(&v).map_err(|e| bad(e.to_string()))?;
    let unknown = arch::fields::unknown_fields(spec, &v);
    if !unknown.is_empty() {
        return Err(bad(format!("fields {} unknown", unknown.join(", "))));
    }
    let back = arch::from_hf_config(&v).map_err(|e| bad(e.to_string()))?;
    let pairs: [(&str, String, String); 11] = [
        (
            "num_hidden_layers",
            back.n_layer.to_string(),
            a.n_layer.to_string(),
        ),
        ("hidden_size", back.hidden.to_string(), a.hidden.to_string()),
        (
            "num_attention_heads",
            back.n_head.to_string(),
            a.n_head.to_string(),
        ),
        (
            "num_key_value_heads",
            back.n_head_kv.to_string(),
            a.n_head_kv.to_string(),
        ),
        (
            "head_dim",
            back.head_dim.to_string(),
            a.head_dim.to_string(),
        ),
        ("intermediate_size", back.ffn.to_string(), a.ffn.to_string()),
        ("vocab_size", back.vocab.to_string(), vocab.to_string()),
        (
            "max_position_embeddings",
            back.context_length.to_string(),
            a.context_length.to_string(),
        ),
        (
            "rope_theta",
            back.rope_theta.to_bits().to_string(),
            a.rope_theta.to_bits().to_string(),
        ),
        (
            "rms_norm_eps",
            back.rms_eps.to_bits().to_string(),
            a.rms_eps.to_bits().to_string(),
        ),
        (
            "tie_word_embeddings",
            back.tied_embeddings.to_string(),
            a.tied_embeddings.to_string(),
        ),
    ];
    for (field, got, want) in pairs {
        if got != want {
            return Err(bad(format!(
                "`{field}` reads back as {got}, the GGUF has {want}"
            )));
        }
    }
    if back.rope_scaling != a.rope_scaling {
        return Err(bad(format!(
            "`rope_scaling` reads back as {:?}, the GGUF has {:?}",
            back.rope_scaling, a.rope_scaling
        )));
    }
    // Every weight the class has (in GGUF naming, as synthesize lists them).
    let have: BTreeSet<&str> = model.tensors.iter().map(|t| t.name.as_str()).collect();
    for t in arch::synthesize(&back) {
        if !have.contains(t.name.as_str()) {
            return Err(Error::unsupported(
                path,
                Some(&t.name),
                format!("missing: {} needs it", config["architectures"][0]),
            ));
        }
    }
    Ok(())
}

fn strings<'m>(md: &'m Metadata, key: &str) -> Option<Vec<&'m str>> {
    match md.get(key)? {
        MetaValue::Array(a) => a.iter().map(MetaValue::as_str).collect(),
        _ => None,
    }
}

/// The Hugging Face pre-tokenizer for llama.cpp's pre-tokenizer name (the
/// inverse of `crate::tokenizer`'s naming), and whether merges are ignored
/// for words in the vocabulary (Llama 3).
fn pre_tokenizer(pre: &str) -> Option<(Value, bool)> {
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let split = |re: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    Some(match pre {
        "gpt-2" => (byte_level(true), false),
        "smollm" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        "llama-bpe" => (split(LLAMA3_REGEX), true),
        "qwen2" => (split(QWEN2_REGEX), false),
        _ => return None,
    })
}

/// `tokenizer.json` and `tokenizer_config.json` from a GGUF's byte-level
/// BPE vocabulary; `None` when the GGUF has no tokenizer.
fn tokenizer_files(md: &Metadata, context: usize, path: &Path) -> Result<Option<Files>> {
    let refuse = |why: String| Error::unsupported(path, None, why);
    let Some(kind) = md.get("tokenizer.ggml.model").and_then(MetaValue::as_str) else {
        return Ok(None);
    };
    if kind != "gpt2" {
        return Err(refuse(format!(
            "tokenizer `{}`: kiln writes tokenizer.json for byte-level BPE (gpt2) vocabularies only; \
             a SentencePiece vocabulary's tokenizer.json needs merges the GGUF does not store",
            passes::printable(kind)
        )));
    }
    let pre_name = md
        .get("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
        .unwrap_or("default");
    let (pre, ignore_merges) = pre_tokenizer(pre_name).ok_or_else(|| {
        refuse(format!(
            "pre-tokenizer `{}` (tokenizer.ggml.pre): kiln writes the Hugging Face equivalent of gpt-2, smollm, llama-bpe and qwen2 only",
            passes::printable(pre_name)
        ))
    })?;
    let tokens = strings(md, "tokenizer.ggml.tokens")
        .ok_or_else(|| refuse("tokenizer.ggml.tokens is missing or not strings".into()))?;
    let merges = strings(md, "tokenizer.ggml.merges")
        .ok_or_else(|| refuse("tokenizer.ggml.merges is missing or not strings".into()))?;
    let types: Vec<u64> = match md.get("tokenizer.ggml.token_type") {
        Some(MetaValue::Array(a)) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(refuse(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    // Unused (5) tokens are padding llama.cpp's converter added: not in HF's vocabulary.
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (i, (tok, ty)) in tokens.iter().zip(&types).enumerate() {
        if *ty == 5 || vocab.contains_key(*tok) {
            continue;
        }
        vocab.insert((*tok).to_string(), json!(i));
        // Control (3) and unknown (2) tokens are special; user-defined (4) are added, not special.
        if matches!(ty, 2..=4) {
            added.push((i, *tok, *ty != 4));
        }
    }
    let id = |k: &str| {
        md.get(&format!("tokenizer.ggml.{k}"))
            .and_then(MetaValue::as_u64)
            .map(|v| v as usize)
            .filter(|&v| v < tokens.len())
    };
    let flag = |k: &str| {
        md.get(&format!("tokenizer.ggml.{k}"))
            .is_some_and(|v| matches!(v, MetaValue::Bool(true)))
    };
    let (add_bos, add_eos) = (flag("add_bos_token"), flag("add_eos_token"));
    let (bos, eos) = (id("bos_token_id"), id("eos_token_id"));
    let mut template: Vec<Value> = Vec::new();
    let mut specials = Map::new();
    let special = |i: usize| json!({"SpecialToken": {"id": tokens[i], "type_id": 0}});
    if add_bos {
        let b = bos.ok_or_else(|| refuse("add_bos_token is set but bos_token_id is not".into()))?;
        template.push(special(b));
        specials.insert(
            tokens[b].into(),
            json!({"id": tokens[b], "ids": [b], "tokens": [tokens[b]]}),
        );
    }
    template.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if add_eos {
        let e = eos.ok_or_else(|| refuse("add_eos_token is set but eos_token_id is not".into()))?;
        template.push(special(e));
        specials.insert(
            tokens[e].into(),
            json!({"id": tokens[e], "ids": [e], "tokens": [tokens[e]]}),
        );
    }
    let byte_level_post = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true});
    let post = if add_bos || add_eos {
        let pair: Vec<Value> = template
            .iter()
            .cloned()
            .chain(template.iter().map(|t| match t.get("Sequence") {
                Some(_) => json!({"Sequence": {"id": "B", "type_id": 1}}),
                None => t.clone(),
            }))
            .collect();
        json!({"type": "Sequence", "processors": [
            byte_level_post,
            {"type": "TemplateProcessing", "single": template, "pair": pair, "special_tokens": specials},
        ]})
    } else {
        byte_level_post
    };
    let added_json: Vec<Value> = added
        .iter()
        .map(|(i, t, special)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": special})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_json,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": merges,
        },
    });
    let mut decoder = Map::new();
    for (i, t, special) in &added {
        decoder.insert(
            i.to_string(),
            json!({"content": t, "lstrip": false, "normalized": false, "rstrip": false,
                   "single_word": false, "special": special}),
        );
    }
    let mut cfg = Map::new();
    cfg.insert("add_bos_token".into(), json!(add_bos));
    cfg.insert("add_eos_token".into(), json!(add_eos));
    cfg.insert("added_tokens_decoder".into(), Value::Object(decoder));
    for (k, key) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        if let Some(i) = id(key) {
            cfg.insert(k.into(), json!(tokens[i]));
        }
    }
    if let Some(t) = md
        .get("tokenizer.chat_template")
        .and_then(MetaValue::as_str)
    {
        cfg.insert("chat_template".into(), json!(t));
    }
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    cfg.insert("model_max_length".into(), json!(context));
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    let pretty = |v: &Value| {
        let mut b = serde_json::to_vec_pretty(v).expect("JSON serializes");
        b.push(b'\n');
        b
    };
    Ok(Some(vec![
        ("tokenizer.json".into(), pretty(&tokenizer)),
        ("tokenizer_config.json".into(), pretty(&Value::Object(cfg))),
    ]))
}

/// `generation_config.json` from the special token ids and
/// `general.sampling.*` keys, when the GGUF has any of them.
fn generation_config(md: &Metadata) -> Option<Vec<u8>> {
    let mut g = Map::new();
    for (k, key) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(v) = md.get(key).and_then(MetaValue::as_u64) {
            g.insert(k.into(), json!(v));
        }
    }
    let mut sampling = false;
    for (k, key) in [
        ("temperature", "general.sampling.temp"),
        ("top_p", "general.sampling.top_p"),
    ] {
        if let Some(v) = md.get(key).and_then(MetaValue::as_f64) {
            g.insert(k.into(), short(v as f32));
            sampling = true;
        }
    }
    if let Some(v) = md.get("general.sampling.top_k").and_then(MetaValue::as_u64) {
        g.insert("top_k".into(), json!(v));
        sampling = true;
    }
    if sampling {
        g.insert("do_sample".into(), json!(true));
    }
    if g.is_empty() {
        return None;
    }
    let mut b = serde_json::to_vec_pretty(&Value::Object(g)).expect("JSON serializes");
    b.push(b'\n');
    Some(b)
}
