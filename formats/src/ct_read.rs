//! Reading compressed-tensors checkpoints (kiln's and llm-compressor's):
//! `config.json`'s `quantization_config` parsed and checked, every quantized
//! Linear's stored tensors (`weight_packed`, `weight`, `weight_scale`,
//! `weight_zero_point`, `weight_shape`, `weight_global_scale`) found and
//! checked against its config group, and rows decoded to f32 straight from
//! the mapped shards with the arithmetic compressed-tensors' decompressors
//! use (`quant::ct`), so `kiln eval` and `kiln inspect` treat such an
//! artifact like any other model.
//!
//! Layouts read: `pack-quantized` (int 1-8 bits, symmetric or asymmetric
//! with zero points packed along the output dimension, per group or per
//! channel), `int-quantized` (int8), `float-quantized` / `naive-quantized`
//! (E4M3 per tensor, channel or square block), `nvfp4-pack-quantized`,
//! `mxfp4-pack-quantized`, and `mixed-precision` configs with several
//! `config_groups` and an `ignore` list.
//!
//! What must stay true: nothing is decoded before every stored tensor of a
//! quantized module has been checked (dtype, shape against `weight_shape`
//! and the group's arguments), so decoding never reads outside a tensor's
//! validated byte range; a config field kiln does not know, or a value that
//! would change the arithmetic in a way kiln does not decode (activation
//! ordering, sparsity, transforms), is refused by name; errors name the file,
//! the tensor or field, and the reason.
//!
//! Long file: parsing the config, checking each module's stored tensors
//! against its group and decoding them share the private `Stored`/`Part`
//! views of the shards and one error style; split, each part would export
//! them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use passes::{SourceDType, TensorNode};
use quant::ct::{self as q, ActQuant, Dtype, Fp8Grain, IntParams, Weights};
use serde_json::{Map, Value};

use crate::ct_acts::act_kind;
pub use crate::ct_acts::ActKind;
use crate::error::{Error, Result};
use crate::mmap::MappedFile;
use crate::safetensors::StEntry;

/// One config group's weight layout, as parsed from `quantization_config`.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The group's name (`group_0`).
    pub name: String,
    /// `targets`: class names (`Linear`), module names or `re:` patterns.
    pub targets: Vec<String>,
    /// The compression format (the group's own, or the top level's).
    pub format: String,
    pub weights: Weights,
    /// How the group quantizes activations at run time (dynamic per token,
    /// or static scales), as a label (`int8 token dynamic`).
    pub activations: Option<String>,
    /// The same, as kiln's forward pass simulates it.
    pub act: Option<ActKind>,
}

/// The parsed `quantization_config` of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub format: String,
    pub version: Option<String>,
    pub groups: Vec<Group>,
    pub ignore: Vec<String>,
}

/// Where one stored tensor's bytes are.
#[derive(Debug, Clone, PartialEq)]
struct Part {
    file: usize,
    start: u64,
    end: u64,
}

/// A stored tensor that is not part of a quantized module (norms,
/// embeddings, ignored Linears): its file index and header entry.
pub type Plain = (usize, StEntry);

/// One quantized Linear, decodable row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct CtTensor {
    /// The module (`model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// Its config group.
    pub group: String,
    pub weights: Weights,
    /// The dtype decoded values are rounded to (the scale's dtype; bf16 for
    /// NVFP4 and MXFP4, as compressed-tensors decompresses them).
    pub dtype: Dtype,
    pub rows: usize,
    pub cols: usize,
    /// The stored tensors (full names) and their total bytes.
    pub stored: Vec<String>,
    pub bytes: u64,
    main: Part,
    scale: Part,
    zero_point: Option<Part>,
    global: f32,
    /// How the runtime quantizes this Linear's input (with its stored scale).
    pub act: Option<ActQuant>,
}

/// The compressed-tensors side of a loaded checkpoint: the config and every
/// quantized Linear, keyed by where its logical weight's source points
/// (`Source::file`, `Source::offset`), which renames and row transforms
/// leave alone.
#[derive(Debug, Clone, PartialEq)]
pub struct CtRead {
    pub config: Config,
    tensors: BTreeMap<(usize, u64), CtTensor>,
}

/// The suffixes compressed-tensors stores beside (or instead of) `.weight`.
const SUFFIXES: &[&str] = &[
    "weight_packed",
    "weight_scale",
    "weight_zero_point",
    "weight_shape",
    "weight_global_scale",
    "weight_g_idx",
    "input_scale",
    "input_zero_point",
    "input_global_scale",
    "weight",
];

/// `QuantizationArgs` fields (compressed-tensors `quantization/quant_args.py`,
/// which forbids others).
const ARG_FIELDS: &[&str] = &[
    "num_bits",
    "type",
    "symmetric",
    "group_size",
    "strategy",
    "block_structure",
    "dynamic",
    "actorder",
    "scale_dtype",
    "zp_dtype",
    "observer",
    "observer_kwargs",
];

/// `QuantizationScheme` fields.
const GROUP_FIELDS: &[&str] = &[
    "targets",
    "weights",
    "input_activations",
    "output_activations",
    "format",
];

/// `quantization_config` fields (`QuantizationConfig` plus what
/// `ModelCompressor` adds).
const CONFIG_FIELDS: &[&str] = &[
    "config_groups",
    "quant_method",
    "kv_cache_scheme",
    "format",
    "quantization_status",
    "global_compression_ratio",
    "ignore",
    "sparsity_config",
    "transform_config",
    "version",
    "provider",
];

impl Config {
    /// Parse `quantization_config` (from `path`, for messages). `None` when
    /// the block is absent or is not compressed-tensors' (`quant_method`).
    pub fn parse(path: &Path, config: &Value) -> Result<Option<Config>> {
        let Some(qc) = config.get("quantization_config") else {
            return Ok(None);
        };
        let bad = |field: &str, reason: String| {
            Error::unsupported(path, None, format!("quantization_config.{field}: {reason}"))
        };
        let qc = qc
            .as_object()
            .ok_or_else(|| bad("", "not a JSON object".into()))?;
        match qc.get("quant_method").and_then(Value::as_str) {
            Some("compressed-tensors") => {}
            Some(other) => {
                return Err(bad(
                    "quant_method",
                    format!(
                        "`{}`: kiln reads compressed-tensors checkpoints only",
                        passes::printable(other)
                    ),
                ))
            }
            None => return Err(bad("quant_method", "missing".into())),
        }
        unknown_fields(qc, CONFIG_FIELDS).map_err(|k| {
            bad(
                &k,
                "unknown field (kiln reads the fields compressed-tensors 0.19 writes)".into(),
            )
        })?;
        match qc.get("quantization_status").and_then(Value::as_str) {
            Some("compressed") => {}
            other => {
                return Err(bad(
                    "quantization_status",
                    format!(
                        "{}: kiln reads compressed checkpoints (`compressed`)",
                        other.map_or("missing".into(), |s| format!("`{}`", passes::printable(s)))
                    ),
                ))
            }
        }
        for (field, what) in [
            ("sparsity_config", "sparsity"),
            ("transform_config", "transforms"),
        ] {
            if qc
                .get(field)
                .is_some_and(|v| !(v.is_null() || v.as_object().is_some_and(Map::is_empty)))
            {
                return Err(bad(
                    field,
                    format!("{what} change the weights' arithmetic and kiln does not decode them"),
                ));
            }
        }
        if qc.get("kv_cache_scheme").is_some_and(|v| !v.is_null()) {
            return Err(bad(
                "kv_cache_scheme",
                "a quantized KV cache is not simulated by kiln's forward pass".into(),
            ));
        }
        let top_format = qc
            .get("format")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("format", "missing or not a string".into()))?
            .to_string();
        let ignore = match qc.get("ignore") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("ignore", "not a list of strings".into()))
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad("ignore", "not a list of strings".into())),
        };
        let groups_v = qc
            .get("config_groups")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("config_groups", "missing or not an object".into()))?;
        if groups_v.is_empty() {
            return Err(bad("config_groups", "empty".into()));
        }
        let mut groups = Vec::with_capacity(groups_v.len());
        for (name, g) in groups_v {
            groups.push(parse_group(path, name, g, &top_format)?);
        }
        Ok(Some(Config {
            format: top_format,
            version: qc
                .get("version")
                .and_then(Value::as_str)
                .map(str::to_string),
            groups,
            ignore,
        }))
    }

    /// The group that quantizes `module`, if any (`None` also when the
    /// module is ignored): an exact module name first, then a `re:` pattern
    /// (matched at the start, as vLLM's `re.match`), then a class name,
    /// which on a stored checkpoint can only be `Linear`.
    pub fn group_for(&self, module: &str) -> Option<&Group> {
        if self.ignore.iter().any(|i| names_module(i, module, false)) {
            return None;
        }
        for exact in [true, false] {
            for g in &self.groups {
                if g.targets.iter().any(|t| names_module(t, module, exact)) {
                    return Some(g);
                }
            }
        }
        None
    }
}

/// Whether target or ignore entry `t` names `module`: `exact` only for module
/// names; otherwise `re:` patterns and the class name `Linear` too.
fn names_module(t: &str, module: &str, exact: bool) -> bool {
    if let Some(re) = t.strip_prefix("re:") {
        return !exact
            && regex::Regex::new(&format!("^(?:{re})")).is_ok_and(|r| r.is_match(module));
    }
    if exact {
        t == module
    } else {
        t == module || t == "Linear"
    }
}

fn unknown_fields(m: &Map<String, Value>, known: &[&str]) -> std::result::Result<(), String> {
    match m.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(passes::printable(k).into_owned()),
        None => Ok(()),
    }
}

/// One config group to its [`Group`], refusing what kiln does not decode.
fn parse_group(path: &Path, name: &str, g: &Value, top_format: &str) -> Result<Group> {
    let gname = passes::printable(name);
    let bad = |field: &str, reason: String| {
        Error::unsupported(
            path,
            None,
            format!("quantization_config.config_groups.{gname}{field}: {reason}"),
        )
    };
    let g = g
        .as_object()
        .ok_or_else(|| bad("", "not a JSON object".into()))?;
    unknown_fields(g, GROUP_FIELDS).map_err(|k| {
        bad(
            &format!(".{k}"),
            "unknown field (a QuantizationScheme has targets, weights, input_activations, output_activations, format)".into(),
        )
    })?;
    let targets: Vec<String> = match g.get("targets") {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(".targets", "not a list of strings".into()))
            })
            .collect::<Result<_>>()?,
        _ => return Err(bad(".targets", "missing or empty".into())),
    };
    let format = match g.get("format") {
        None | Some(Value::Null) => top_format.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad(".format", "not a string".into())),
    };
    if g.get("output_activations").is_some_and(|v| !v.is_null()) {
        return Err(bad(
            ".output_activations",
            "quantized outputs are not simulated by kiln's forward pass".into(),
        ));
    }
    let mut act = None;
    let activations = match g.get("input_activations") {
        None | Some(Value::Null) => None,
        Some(a) => {
            let a = a
                .as_object()
                .ok_or_else(|| bad(".input_activations", "not a JSON object".into()))?;
            unknown_fields(a, ARG_FIELDS).map_err(|k| {
                bad(
                    &format!(".input_activations.{k}"),
                    "unknown field (compressed-tensors' QuantizationArgs forbids it)".into(),
                )
            })?;
            let s = |k: &str| a.get(k).map(|v| v.to_string()).unwrap_or_default();
            act = Some(act_kind(a).map_err(|why| {
                bad(
                    ".input_activations",
                    format!(
                        "{}: kiln reads only the activation quantizations its forward pass simulates (int8 or FP8 per token, FP8 per group, static per-tensor FP8, NVFP4)",
                        passes::printable(&why)
                    ),
                )
            })?);
            Some(format!(
                "{}{} {}{}",
                s("type").trim_matches('"'),
                s("num_bits"),
                s("strategy").trim_matches('"'),
                if a.get("dynamic").and_then(Value::as_bool) == Some(false) {
                    " static"
                } else {
                    " dynamic"
                }
            ))
        }
    };
    let w = g
        .get("weights")
        .and_then(Value::as_object)
        .ok_or_else(|| bad(".weights", "missing or not an object".into()))?;
    unknown_fields(w, ARG_FIELDS).map_err(|k| {
        bad(
            &format!(".weights.{k}"),
            "unknown field (compressed-tensors' QuantizationArgs forbids it)".into(),
        )
    })?;
    let field = |k: &str| w.get(k).filter(|v| !v.is_null());
    let bits = field("num_bits")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad(".weights.num_bits", "missing or not an integer".into()))?;
    let ty = field("type").and_then(Value::as_str).unwrap_or("int");
    let strategy = field("strategy")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(".weights.strategy", "missing".into()))?;
    let symmetric = field("symmetric").and_then(Value::as_bool).unwrap_or(true);
    let group_size = field("group_size").and_then(Value::as_u64);
    // `weight` (alias `static`) orders GPTQ's columns without changing
    // the stored layout; `group` (alias `dynamic`) adds `weight_g_idx`.
    if let Some(a) = field("actorder").filter(|a| !matches!(a.as_str(), Some("weight" | "static")))
    {
        return Err(bad(
            ".weights.actorder",
            format!(
                "{}: activation ordering (weight_g_idx) is not decoded by kiln",
                passes::printable(&a.to_string())
            ),
        ));
    }
    if field("dynamic").and_then(Value::as_bool) == Some(true) {
        return Err(bad(
            ".weights.dynamic",
            "true: dynamic weight scales are not a stored layout".into(),
        ));
    }
    let unsupported = |what: String| {
        bad(
            "",
            format!(
                "format `{}` with {what} is not a layout kiln reads",
                passes::printable(&format)
            ),
        )
    };
    let weights = match format.as_str() {
        "pack-quantized" | "int-quantized" => {
            if ty != "int" {
                return Err(unsupported(format!("type `{}`", passes::printable(ty))));
            }
            let packed = format == "pack-quantized";
            if !(1..=8).contains(&bits) || (!packed && bits != 8) {
                return Err(unsupported(format!("{bits}-bit weights")));
            }
            let group = match (strategy, group_size) {
                ("channel", _) => 0,
                ("group", Some(g)) if g > 0 => g as usize,
                _ => return Err(unsupported(format!("strategy `{}`", passes::printable(strategy)))),
            };
            if !packed && !symmetric {
                return Err(unsupported("asymmetric weights".into()));
            }
            Weights::Int {
                bits: bits as u8,
                group,
                symmetric,
                packed,
            }
        }
        "float-quantized" | "naive-quantized" => {
            if ty != "float" || bits != 8 || !symmetric {
                return Err(unsupported(format!(
                    "{} {bits}-bit{} weights",
                    passes::printable(ty),
                    if symmetric { "" } else { " asymmetric" }
                )));
            }
            let scales = match strategy {
                "tensor" => Fp8Grain::Tensor,
                "channel" => Fp8Grain::Channel,
                "block" => {
                    let b: Vec<u64> = field("block_structure")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_u64).collect())
                        .unwrap_or_default();
                    match b.as_slice() {
                        [r, c] if r == c && *r > 0 => Fp8Grain::Block(*r as usize),
                        _ => {
                            return Err(unsupported(
                                "a block_structure other than [N, N]".into(),
                            ))
                        }
                    }
                }
                s => return Err(unsupported(format!("strategy `{}`", passes::printable(s)))),
            };
            Weights::Fp8 {
                scales,
                max_240: false,
            }
        }
        "nvfp4-pack-quantized" => {
            if ty != "float" || bits != 4 || group_size != Some(16) || strategy != "tensor_group" {
                return Err(unsupported(
                    "other than float 4-bit, strategy tensor_group, group_size 16".into(),
                ));
            }
            Weights::Nvfp4
        }
        "mxfp4-pack-quantized" => {
            if ty != "float" || bits != 4 || group_size != Some(32) || strategy != "group" {
                return Err(unsupported(
                    "other than float 4-bit, strategy group, group_size 32".into(),
                ));
            }
            Weights::Mxfp4
        }
        other => {
            return Err(bad(
                ".format",
                format!(
                    "`{}` is not a format kiln reads (pack-quantized, int-quantized, float-quantized, naive-quantized, nvfp4-pack-quantized, mxfp4-pack-quantized)",
                    passes::printable(other)
                ),
            ))
        }
    };
    Ok(Group {
        name: name.to_string(),
        targets,
        format,
        weights,
        activations,
        act,
    })
}

/// A short name of a layout, for listings (`INT4_G128`, `FP8_BLOCK128`).
pub fn label(w: Weights) -> String {
    match w {
        Weights::Int {
            bits,
            group,
            symmetric,
            packed: _,
        } => format!(
            "INT{bits}{}_{}",
            if symmetric { "" } else { "_ASYM" },
            if group == 0 {
                "CHANNEL".to_string()
            } else {
                format!("G{group}")
            }
        ),
        Weights::Fp8 { scales, .. } => match scales {
            Fp8Grain::Tensor => "FP8_TENSOR".into(),
            Fp8Grain::Channel => "FP8_CHANNEL".into(),
            Fp8Grain::Block(b) => format!("FP8_BLOCK{b}"),
        },
        Weights::Nvfp4 => "NVFP4".into(),
        Weights::Mxfp4 => "MXFP4".into(),
    }
}

/// A stored tensor, located.
struct Stored<'a> {
    file: usize,
    path: &'a Path,
    entry: &'a StEntry,
}

impl Stored<'_> {
    fn part(&self) -> Part {
        Part {
            file: self.file,
            start: self.entry.start,
            end: self.entry.end,
        }
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::malformed(self.path, Some(&self.entry.name), reason)
    }

    fn expect(&self, dtypes: &[&str], shape: &[usize]) -> Result<()> {
        if !dtypes.contains(&self.entry.dtype.as_str()) {
            return Err(self.err(format!(
                "dtype {} where the config group's layout stores {}",
                passes::printable(&self.entry.dtype),
                dtypes.join(" or ")
            )));
        }
        if self.entry.shape != shape {
            return Err(self.err(format!(
                "shape {:?} where the config group's layout and the weight's shape need {shape:?}",
                self.entry.shape
            )));
        }
        Ok(())
    }
}

fn scale_dtype(s: &Stored) -> Result<Dtype> {
    Ok(match s.entry.dtype.as_str() {
        "BF16" => Dtype::Bf16,
        "F16" => Dtype::F16,
        "F32" => Dtype::F32,
        other => {
            return Err(s.err(format!(
                "dtype {} for a scale: compressed-tensors stores them in the weight's dtype (BF16, F16 or F32)",
                passes::printable(other)
            )))
        }
    })
}

fn read_f32(maps: &[MappedFile], p: &Part, d: Dtype, i: usize) -> f32 {
    let b = &maps[p.file].bytes()[p.start as usize..p.end as usize];
    match d {
        Dtype::Bf16 => {
            f32::from_bits(u32::from(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])) << 16)
        }
        Dtype::F16 => half::f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
        Dtype::F32 => f32::from_le_bytes(b[4 * i..4 * i + 4].try_into().expect("4 bytes")),
    }
}

impl CtRead {
    /// Find and check every quantized module of a checkpoint whose headers
    /// are `headers[i]` (entries of `files[i]`), given its parsed config.
    /// Returns the reader and the logical weight tensors to list in place of
    /// the stored ones (named `<module>.weight`, shaped `[rows, cols]`);
    /// every stored tensor that is not part of a quantized module is
    /// returned as it is, for the loader to list.
    pub fn new(
        config: Config,
        files: &[PathBuf],
        headers: &[Vec<StEntry>],
        maps: &[MappedFile],
    ) -> Result<(CtRead, Vec<TensorNode>, Vec<Plain>)> {
        // Stored tensors by module and suffix.
        let mut modules: BTreeMap<String, BTreeMap<&'static str, Stored>> = BTreeMap::new();
        let mut plain = Vec::new();
        for (file, entries) in headers.iter().enumerate() {
            for e in entries {
                let split = SUFFIXES.iter().find_map(|s| {
                    e.name
                        .strip_suffix(s)
                        .and_then(|m| m.strip_suffix('.'))
                        .map(|m| (m, *s))
                });
                match split {
                    Some((m, s)) => {
                        let stored = Stored {
                            file,
                            path: &files[file],
                            entry: e,
                        };
                        modules.entry(m.to_string()).or_default().insert(s, stored);
                    }
                    None => plain.push((file, e.clone())),
                }
            }
        }
        let mut tensors = BTreeMap::new();
        let mut nodes = Vec::new();
        for (module, parts) in &modules {
            let quantized = parts.contains_key("weight_packed")
                || parts
                    .get("weight")
                    .is_some_and(|w| matches!(w.entry.dtype.as_str(), "I8" | "F8_E4M3"));
            if !quantized {
                // A plain module (norms, embeddings, ignored Linears): its
                // tensors are read as they are; quantization parameters
                // without a quantized weight are a broken checkpoint.
                if let Some((s, st)) = parts.iter().find(|(s, _)| s.starts_with("weight_")) {
                    return Err(st.err(format!(
                        "a `{s}` without a quantized weight (`weight_packed`, or an I8 / F8_E4M3 `weight`) in module `{}`",
                        passes::printable(module)
                    )));
                }
                plain.extend(parts.values().map(|s| (s.file, s.entry.clone())));
                continue;
            }
            let main = parts
                .get("weight_packed")
                .or_else(|| parts.get("weight"))
                .expect("checked quantized");
            let Some(group) = config.group_for(module) else {
                return Err(main.err(format!(
                    "quantized, but no config group targets module `{}` (or it is in `ignore`)",
                    passes::printable(module)
                )));
            };
            let t = check_module(module, group, parts, maps)?;
            let dtype = match t.dtype {
                Dtype::Bf16 => SourceDType::BF16,
                Dtype::F16 => SourceDType::F16,
                Dtype::F32 => SourceDType::F32,
            };
            nodes.push(TensorNode {
                name: format!("{module}.weight"),
                source_name: format!("{module}.weight"),
                shape: vec![t.rows, t.cols],
                role: passes::Role::Other,
                layer: None,
                source: passes::Source {
                    file: t.main.file,
                    dtype,
                    offset: t.main.start,
                    // The decoded size (the IR's invariant: shape x dtype);
                    // the stored bytes are `CtTensor::bytes`.
                    len: (t.rows * t.cols * t.dtype.bytes()) as u64,
                },
                parts: Vec::new(),
                transform: None,
                encoding: None,
                notes: Vec::new(),
            });
            tensors.insert((t.main.file, t.main.start), t);
        }
        Ok((CtRead { config, tensors }, nodes, plain))
    }

    /// The quantized tensor `node`'s source points at, if it is one.
    pub fn tensor(&self, node: &TensorNode) -> Option<&CtTensor> {
        self.tensor_at(&node.source)
    }

    /// The quantized tensor stored where `source` points, if it is one (a
    /// tensor's own source, or one part of a stacked tensor).
    pub fn tensor_at(&self, source: &passes::Source) -> Option<&CtTensor> {
        self.tensors.get(&(source.file, source.offset))
    }

    /// Every quantized tensor, in module order.
    pub fn tensors(&self) -> impl Iterator<Item = &CtTensor> {
        let mut v: Vec<&CtTensor> = self.tensors.values().collect();
        v.sort_by(|a, b| a.module.cmp(&b.module));
        v.into_iter()
    }
}

/// Check a quantized module's stored tensors against its group.
fn check_module(
    module: &str,
    group: &Group,
    parts: &BTreeMap<&'static str, Stored>,
    maps: &[MappedFile],
) -> Result<CtTensor> {
    let main = parts
        .get("weight_packed")
        .or_else(|| parts.get("weight"))
        .expect("a quantized module has a main tensor");
    let need = |s: &'static str| {
        parts.get(s).ok_or_else(|| {
            main.err(format!(
                "config group `{}` ({}) stores `{module}.{s}`, which is missing",
                passes::printable(&group.name),
                passes::printable(&group.format)
            ))
        })
    };
    let mut expected: Vec<&'static str> = vec!["weight_scale"];
    let scale = need("weight_scale")?;
    let two_d = |s: &Stored| -> Result<(usize, usize)> {
        match s.entry.shape.as_slice() {
            [r, c] => Ok((*r, *c)),
            other => Err(s.err(format!("shape {other:?}: a Linear's weight is 2-D"))),
        }
    };
    let (rows, cols, dtype, zero_point, global) = match group.weights {
        Weights::Int {
            bits,
            group: g,
            symmetric,
            packed,
        } => {
            let d = scale_dtype(scale)?;
            let (rows, cols) = if packed {
                expected.extend(["weight_packed", "weight_shape"]);
                let packed_t = need("weight_packed")?;
                let shape_t = need("weight_shape")?;
                if shape_t.entry.dtype != "I64" && shape_t.entry.dtype != "I32"
                    || shape_t.entry.shape != [2]
                {
                    return Err(shape_t.err(format!(
                        "{} {:?}: `weight_shape` holds the two dimensions of the weight (I64 [2])",
                        passes::printable(&shape_t.entry.dtype),
                        shape_t.entry.shape
                    )));
                }
                let b = &maps[shape_t.file].bytes()
                    [shape_t.entry.start as usize..shape_t.entry.end as usize];
                let dims: Vec<i64> = if shape_t.entry.dtype == "I64" {
                    b.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                        .collect()
                } else {
                    b.chunks_exact(4)
                        .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64)
                        .collect()
                };
                let (rows, cols) = match dims.as_slice() {
                    [r, c]
                        if *r > 0 && *c > 0 && *r <= u32::MAX as i64 && *c <= u32::MAX as i64 =>
                    {
                        (*r as usize, *c as usize)
                    }
                    _ => {
                        return Err(shape_t.err(format!(
                            "values {dims:?} are not the dimensions of a weight"
                        )))
                    }
                };
                packed_t.expect(&["I32"], &[rows, q::packed_words(cols, bits)])?;
                (rows, cols)
            } else {
                expected.push("weight");
                let w = need("weight")?;
                let (rows, cols) = two_d(w)?;
                w.expect(&["I8"], &[rows, cols])?;
                (rows, cols)
            };
            let groups = if g == 0 {
                1
            } else {
                if cols % g != 0 {
                    return Err(main.err(format!(
                        "{cols} columns are not a multiple of the group size {g} of config group `{}`",
                        passes::printable(&group.name)
                    )));
                }
                cols / g
            };
            scale.expect(&[d.name()], &[rows, groups])?;
            let zp = if symmetric {
                None
            } else {
                expected.push("weight_zero_point");
                let z = need("weight_zero_point")?;
                if packed {
                    z.expect(&["I32"], &[q::packed_words(rows, bits), groups])?;
                } else {
                    z.expect(&["I8"], &[rows, groups])?;
                }
                Some(z.part())
            };
            (rows, cols, d, zp, 0.0)
        }
        Weights::Fp8 { scales, .. } => {
            expected.push("weight");
            let w = need("weight")?;
            let (rows, cols) = two_d(w)?;
            w.expect(&["F8_E4M3"], &[rows, cols])?;
            let d = scale_dtype(scale)?;
            let shape = match scales {
                Fp8Grain::Tensor => {
                    // [1] as compressed-tensors writes it; [] and [1, 1] as older versions did.
                    if matches!(scale.entry.shape.as_slice(), [] | [1] | [1, 1]) {
                        scale.entry.shape.clone()
                    } else {
                        vec![1]
                    }
                }
                Fp8Grain::Channel => vec![rows, 1],
                Fp8Grain::Block(b) => vec![rows.div_ceil(b), cols.div_ceil(b)],
            };
            scale.expect(&[d.name()], &shape)?;
            (rows, cols, d, None, 0.0)
        }
        Weights::Nvfp4 | Weights::Mxfp4 => {
            let nv = group.weights == Weights::Nvfp4;
            expected.push("weight_packed");
            let p = need("weight_packed")?;
            let (rows, half) = two_d(p)?;
            p.expect(&["U8"], &[rows, half])?;
            let cols = half * 2;
            let g = if nv { 16 } else { 32 };
            if cols % g != 0 {
                return Err(p.err(format!(
                    "{cols} columns are not a multiple of the group size {g}"
                )));
            }
            scale.expect(&[if nv { "F8_E4M3" } else { "U8" }], &[rows, cols / g])?;
            let global = if nv {
                expected.push("weight_global_scale");
                let gs = need("weight_global_scale")?;
                gs.expect(&["F32"], &[1])?;
                let v = read_f32(maps, &gs.part(), Dtype::F32, 0);
                if !(v.is_finite() && v > 0.0) {
                    return Err(gs.err(format!("global scale {v}: not a positive finite number")));
                }
                v
            } else {
                0.0
            };
            (rows, cols, Dtype::Bf16, None, global)
        }
    };
    // The activations' stored scale, where the group's quantization has one.
    let scalar = |s: &'static str, dtypes: &[&str]| -> Result<f32> {
        let st = need(s)?;
        if !dtypes.contains(&st.entry.dtype.as_str())
            || !(st.entry.shape == [1] || st.entry.shape.is_empty())
        {
            return Err(st.err(format!(
                "{} {:?}: `{s}` is one {} value",
                passes::printable(&st.entry.dtype),
                st.entry.shape,
                dtypes.join(" or ")
            )));
        }
        let v = read_f32(maps, &st.part(), scale_dtype(st)?, 0);
        if !(v.is_finite() && v > 0.0) {
            return Err(st.err(format!("{v}: not a positive finite scale")));
        }
        Ok(v)
    };
    let act = match group.act {
        None => None,
        Some(ActKind::Int8Token) => Some(ActQuant::Int8Token),
        Some(ActKind::Fp8Token) => Some(ActQuant::Fp8Token),
        Some(ActKind::Fp8Group(n)) => Some(ActQuant::Fp8Group(n)),
        Some(ActKind::Fp8Static) => {
            expected.push("input_scale");
            Some(ActQuant::Fp8Tensor {
                scale: scalar("input_scale", &["BF16", "F16", "F32"])?,
            })
        }
        Some(ActKind::Nvfp4) => {
            expected.push("input_global_scale");
            Some(ActQuant::Nvfp4 {
                global: scalar("input_global_scale", &["F32"])?,
            })
        }
    };
    if let Some((s, st)) = parts.iter().find(|(s, _)| !expected.contains(s)) {
        return Err(st.err(format!(
            "`{s}` is not stored by config group `{}` ({}, {})",
            passes::printable(&group.name),
            passes::printable(&group.format),
            label(group.weights)
        )));
    }
    Ok(CtTensor {
        module: module.to_string(),
        group: group.name.clone(),
        weights: group.weights,
        dtype,
        rows,
        cols,
        stored: parts.values().map(|s| s.entry.name.clone()).collect(),
        bytes: parts.values().map(|s| s.entry.end - s.entry.start).sum(),
        main: main.part(),
        scale: scale.part(),
        zero_point,
        global,
        act,
    })
}

impl CtTensor {
    /// Decode source row `r` (before any row transform) into `out`
    /// (`cols` long), as compressed-tensors' decompressor computes it.
    pub fn decode_row(&self, maps: &[MappedFile], r: usize, out: &mut [f32]) {
        let cols = self.cols;
        let bytes = |p: &Part| &maps[p.file].bytes()[p.start as usize..p.end as usize];
        let d = self.dtype;
        match self.weights {
            Weights::Int {
                bits,
                group,
                symmetric,
                packed,
            } => {
                let g = if group == 0 { cols } else { group };
                let groups = cols / g;
                let qv = if packed {
                    let words = q::packed_words(cols, bits);
                    q::unpack_int32(
                        &bytes(&self.main)[r * words * 4..(r + 1) * words * 4],
                        bits,
                        cols,
                    )
                } else {
                    bytes(&self.main)[r * cols..(r + 1) * cols]
                        .iter()
                        .map(|&b| b as i8)
                        .collect()
                };
                for k in 0..groups {
                    let scale = read_f32(maps, &self.scale, d, r * groups + k);
                    let zero_point = match (&self.zero_point, symmetric) {
                        (Some(z), false) if packed => {
                            // Column k of the [words, groups] packing, unpacked to row r.
                            let zb = bytes(z);
                            let bit = r * bits as usize;
                            let word = |j: usize| -> u64 {
                                zb.get((j * groups + k) * 4..(j * groups + k) * 4 + 4)
                                    .map_or(0, |w| {
                                        u32::from_le_bytes(w.try_into().expect("4")) as u64
                                    })
                            };
                            let v = ((word(bit / 32) | word(bit / 32 + 1) << 32) >> (bit % 32))
                                & ((1u64 << bits) - 1);
                            (v as i32 - (1i32 << (bits - 1))) as i8
                        }
                        (Some(z), false) => bytes(z)[r * groups + k] as i8,
                        _ => 0,
                    };
                    let p = IntParams { scale, zero_point };
                    for c in k * g..(k + 1) * g {
                        out[c] = q::int_dequantize(qv[c], p, d);
                    }
                }
            }
            Weights::Fp8 { scales, .. } => {
                let w = &bytes(&self.main)[r * cols..(r + 1) * cols];
                match scales {
                    Fp8Grain::Tensor => {
                        let s = read_f32(maps, &self.scale, d, 0);
                        for (o, &b) in out.iter_mut().zip(w) {
                            *o = q::fp8_dequantize(b, s, d);
                        }
                    }
                    Fp8Grain::Channel => {
                        let s = read_f32(maps, &self.scale, d, r);
                        for (o, &b) in out.iter_mut().zip(w) {
                            *o = q::fp8_dequantize(b, s, d);
                        }
                    }
                    Fp8Grain::Block(b) => {
                        let nc = cols.div_ceil(b);
                        for (c, (o, &x)) in out.iter_mut().zip(w).enumerate() {
                            let s = read_f32(maps, &self.scale, d, (r / b) * nc + c / b);
                            *o = q::fp8_dequantize(x, s, d);
                        }
                    }
                }
            }
            Weights::Nvfp4 | Weights::Mxfp4 => {
                let g = if self.weights == Weights::Nvfp4 {
                    16
                } else {
                    32
                };
                let packed = &bytes(&self.main)[r * cols / 2..(r + 1) * cols / 2];
                let scales = &bytes(&self.scale)[r * cols / g..(r + 1) * cols / g];
                let mut codes = vec![0u8; cols];
                q::unpack_fp4(packed, &mut codes);
                for (c, (o, &code)) in out.iter_mut().zip(&codes).enumerate() {
                    let s = scales[c / g];
                    *o = if g == 16 {
                        q::nvfp4_dequantize(code, s, self.global)
                    } else {
                        q::mx_dequantize(code, s)
                    };
                }
            }
        }
    }
}
