//! Hugging Face checkpoint directories: `config.json` to [`Arch`] and GGUF
//! architecture metadata, single-file and sharded safetensors weights.
//!
//! What must stay true: an architecture kiln cannot convert is refused by
//! name with the list of supported ones; every tensor named in a shard index
//! exists in the shard it names; the metadata written for an architecture is
//! what llama.cpp needs to load it (see reference/formats.md).

use std::path::{Path, PathBuf};

use passes::{Arch, MetaValue, Metadata};
use serde_json::Value;

use crate::error::{Error, Result};

/// Hugging Face classes kiln converts, and their GGUF architecture.
pub const SUPPORTED: &[(&str, &str)] = &[
    ("LlamaForCausalLM", "llama"),
    ("MistralForCausalLM", "llama"),
    ("Qwen2ForCausalLM", "qwen2"),
];

pub fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(|(c, _)| *c)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Read a JSON file, naming it in errors.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::malformed(path, None, format!("invalid JSON: {e}")))
}

/// Read `config.json` (from a directory or the file itself) into [`Arch`],
/// for any architecture whose fields follow the usual transformers names;
/// `family` is the GGUF architecture for supported classes and the
/// `model_type` otherwise.
pub fn read_config(path: &Path) -> Result<Arch> {
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    if !file.exists() {
        return Err(Error::malformed(
            &file,
            None,
            "missing config.json (a Hugging Face checkpoint directory needs one)",
        ));
    }
    parse_config(&file, &read_json(&file)?)
}

fn architecture(config: &Value) -> Option<String> {
    config
        .get("architectures")?
        .as_array()?
        .first()?
        .as_str()
        .map(str::to_string)
}

/// [`Arch`] from a parsed config.json.
pub fn parse_config(path: &Path, config: &Value) -> Result<Arch> {
    // Multimodal configs nest the language model under `text_config`.
    let c = match config.get("text_config") {
        Some(t) if config.get("num_hidden_layers").is_none() => t,
        _ => config,
    };
    let int = |key: &str| c.get(key).and_then(Value::as_u64).map(|v| v as usize);
    let need = |key: &str| {
        int(key).ok_or_else(|| {
            Error::malformed(path, None, format!("config.json has no integer `{key}`"))
        })
    };
    let hf_architecture = architecture(config);
    let family = hf_architecture
        .as_deref()
        .and_then(|a| SUPPORTED.iter().find(|(c, _)| *c == a))
        .map(|(_, f)| f.to_string())
        .or_else(|| {
            c.get("model_type")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into());
    let n_layer = need("num_hidden_layers")?;
    let hidden = need("hidden_size")?;
    let n_head = need("num_attention_heads")?;
    if n_head == 0 || hidden == 0 {
        return Err(Error::malformed(
            path,
            None,
            "hidden_size and num_attention_heads must be positive",
        ));
    }
    let n_head_kv = int("num_key_value_heads").unwrap_or(n_head);
    let head_dim = int("head_dim").unwrap_or(hidden / n_head);
    let n_expert = int("num_local_experts")
        .or(int("num_experts"))
        .or(int("n_routed_experts"))
        .unwrap_or(0);
    Ok(Arch {
        family,
        hf_architecture,
        n_layer,
        hidden,
        n_head,
        n_head_kv,
        head_dim,
        ffn: need("intermediate_size")?,
        vocab: need("vocab_size")?,
        context_length: int("max_position_embeddings").unwrap_or(2048),
        rope_theta: c
            .get("rope_theta")
            .and_then(Value::as_f64)
            .unwrap_or(10000.0) as f32,
        rms_eps: c
            .get("rms_norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(1e-6) as f32,
        tied_embeddings: config
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        n_expert,
        n_expert_used: if n_expert > 0 {
            int("num_experts_per_tok").unwrap_or(0)
        } else {
            0
        },
    })
}

/// Refuse classes kiln cannot convert.
pub fn check_supported(path: &Path, arch: &Arch) -> Result<()> {
    let class = arch.hf_architecture.as_deref().unwrap_or("(none)");
    if SUPPORTED.iter().any(|(c, _)| *c == class) {
        Ok(())
    } else {
        Err(Error::unsupported(
            path,
            None,
            format!(
                "architecture `{class}` is not supported (supported: {})",
                supported_list()
            ),
        ))
    }
}

/// The GGUF architecture keys llama.cpp reads for `arch` (used by the GGUF
/// lowering, `crate::gguf::metadata`, only).
pub fn arch_metadata(arch: &Arch, name: &str) -> Metadata {
    let f = &arch.family;
    let mut md = Metadata::default();
    md.set("general.architecture", MetaValue::String(f.clone()));
    md.set("general.name", MetaValue::String(name.to_string()));
    let u = |v: usize| MetaValue::U32(v as u32);
    md.set(&format!("{f}.block_count"), u(arch.n_layer));
    md.set(&format!("{f}.context_length"), u(arch.context_length));
    md.set(&format!("{f}.embedding_length"), u(arch.hidden));
    md.set(&format!("{f}.feed_forward_length"), u(arch.ffn));
    md.set(&format!("{f}.attention.head_count"), u(arch.n_head));
    md.set(&format!("{f}.attention.head_count_kv"), u(arch.n_head_kv));
    md.set(
        &format!("{f}.rope.freq_base"),
        MetaValue::F32(arch.rope_theta),
    );
    md.set(
        &format!("{f}.attention.layer_norm_rms_epsilon"),
        MetaValue::F32(arch.rms_eps),
    );
    if arch.head_dim * arch.n_head != arch.hidden {
        md.set(&format!("{f}.attention.key_length"), u(arch.head_dim));
        md.set(&format!("{f}.attention.value_length"), u(arch.head_dim));
    }
    md.set(&format!("{f}.rope.dimension_count"), u(arch.head_dim));
    md.set(&format!("{f}.vocab_size"), u(arch.vocab));
    md
}

/// The safetensors files of a checkpoint directory, in index order, with the
/// tensor names each must contain (`None`: take every tensor of a single file).
pub fn weight_files(dir: &Path) -> Result<Vec<(PathBuf, Option<Vec<String>>)>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let json = read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::malformed(&index, None, "no `weight_map` object"))?;
        let mut files: Vec<(PathBuf, Option<Vec<String>>)> = Vec::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::malformed(&index, Some(tensor), "weight_map value is not a file name")
            })?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(Error::malformed(
                    &index,
                    Some(tensor),
                    format!("shard `{file}` is not a plain file name"),
                ));
            }
            let path = dir.join(file);
            match files.iter_mut().find(|(p, _)| *p == path) {
                Some((_, names)) => names.get_or_insert_with(Vec::new).push(tensor.clone()),
                None => files.push((path, Some(vec![tensor.clone()]))),
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![(single, None)]);
    }
    Err(Error::malformed(
        dir,
        None,
        "no model.safetensors or model.safetensors.index.json in this directory",
    ))
}
