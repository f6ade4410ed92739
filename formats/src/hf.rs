//! Hugging Face checkpoint directories: `config.json` to [`Arch`] (the
//! fields and refusals are the family specs', `passes::arch`), single-file
//! and sharded safetensors weights.
//!
//! What must stay true: an architecture kiln cannot convert, or a config
//! field its family refuses, is refused by name (with the list of supported
//! classes); errors name the file; every tensor named in a shard index
//! exists in the shard it names.

use std::path::{Path, PathBuf};

use passes::arch::{self, ArchSpec};
use passes::Arch;
use serde_json::Value;

use crate::error::{Error, Result};

/// Read a JSON file, naming it in errors.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = crate::input::read(path)?;
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

/// [`Arch`] from a parsed config.json (see [`arch::from_hf_config`]).
pub fn parse_config(path: &Path, config: &Value) -> Result<Arch> {
    arch::from_hf_config(config).map_err(|e| Error::malformed(path, None, e.to_string()))
}

/// Refuse a config kiln cannot convert: a class no family spec names, or a
/// field its spec refuses (see [`arch::check_convertible`]).
pub fn check_convertible(path: &Path, config: &Value) -> Result<&'static ArchSpec> {
    arch::check_convertible(config).map_err(|e| Error::unsupported(path, None, e.to_string()))
}

/// Refuse a config whose values kiln cannot convert (a size of 0, KV heads
/// that do not divide the heads, a non-positive RoPE base or epsilon; see
/// [`arch::limits::check_values`]), naming config.json and the field.
pub fn check_values(path: &Path, arch: &Arch) -> Result<()> {
    arch::limits::check_values(arch).map_err(|e| Error::malformed(path, None, e.to_string()))?;
    arch::rope::check_dims(arch).map_err(|e| Error::malformed(path, None, e))
}

/// Check every dimension config.json states against the checkpoint's
/// tensors (see [`arch::limits::check_tensors`]), naming config.json, the
/// field, the tensor and both values.
pub fn check_tensor_dims<'a>(
    path: &Path,
    arch: &Arch,
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
) -> Result<()> {
    arch::limits::check_tensors(arch, arch::table_for(Some(arch)), tensors)
        .map_err(|e| Error::malformed(path, None, e.to_string()))
}

/// What a convertible checkpoint directory lacks, or holds that kiln cannot
/// account for, as warnings: a missing `tokenizer_config.json` (chat
/// template, special tokens) or `generation_config.json` (generation
/// defaults, end-of-sequence ids), and the config.json fields its family
/// neither reads, refuses nor knows to be inert (see
/// [`arch::fields::unknown_fields`]).
pub fn warnings(dir: &Path, spec: &ArchSpec, config: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if !dir.join("tokenizer_config.json").exists() {
        let template = if dir.join("chat_template.jinja").exists() {
            ""
        } else {
            "no chat template, "
        };
        out.push(format!(
            "{}: no tokenizer_config.json: the output has {template}no special-token names or add-bos/eos flags from it (only the ids config.json and the tokenizer files state)",
            dir.display()
        ));
    }
    if !dir.join("generation_config.json").exists() {
        out.push(format!(
            "{}: no generation_config.json: the output lacks the checkpoint's generation defaults (its end-of-sequence ids come from config.json and tokenizer_config.json only)",
            dir.display()
        ));
    }
    let unknown = arch::fields::unknown_fields(spec, config);
    if !unknown.is_empty() {
        out.push(format!(
            "{}: config.json field(s) {} are unknown to kiln for {}: if they change the computation, the output does not carry that",
            dir.join("config.json").display(),
            unknown
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", "),
            spec.hf_classes.join("/")
        ));
    }
    out
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
        for (path, names) in &files {
            if !path.exists() {
                let first = names.as_ref().and_then(|n| n.first()).map(String::as_str);
                return Err(Error::malformed(
                    &index,
                    first,
                    format!(
                        "names shard `{}`, which does not exist",
                        passes::printable(&path.file_name().unwrap_or_default().to_string_lossy())
                    ),
                ));
            }
        }
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
