//! Architecture families: one spec per family (`llama.rs`, `qwen2.rs`), and
//! the registry the loader, normalize, the eval forward pass and the cost
//! model consult. A spec says everything kiln knows about a family: its
//! Hugging Face classes and GGUF architecture name, the HF-to-GGUF tensor
//! table with roles, value transforms, the config.json fields it refuses,
//! the GGUF metadata it writes, what the forward pass needs (RoPE style,
//! biases), and (through its table) the tensors a config implies.
//!
//! What must stay true:
//! - adding a family is one file here plus a row in [`SPECS`] (and its
//!   forward-pass specifics and tests); nothing else matches family names;
//! - a Hugging Face tensor a table cannot map is refused by name (never
//!   silently dropped); rotary-embedding buffers are dropped (llama.cpp
//!   recomputes them);
//! - a config.json field that changes the model's math and that kiln does not
//!   carry is refused by name when set to a non-default value, never ignored;
//! - [`synthesize`] lists the tensors (names, shapes, roles) a checkpoint of
//!   a supported family has after normalize, in the order `kiln estimate`
//!   has always counted them (tested against the fixtures in `formats`).

pub mod fields;
pub mod gemma;
pub mod limits;
pub mod llama;
pub mod mixtral;
pub mod phi3;
pub mod qwen2;
pub mod qwen2moe;
pub mod qwen3;
pub mod qwen3moe;
pub mod rope;

use std::borrow::Cow;

use serde_json::Value;

use crate::ir::{Arch, MetaValue, Metadata, Role, Source, SourceDType, TensorNode, Transform};

/// How RoPE pairs the dimensions of a head, in GGUF layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): ggml's normal mode (llama, whose q/k rows
    /// the converter permutes into this order).
    Interleaved,
    /// Halves (i, i + d/2): ggml's NEOX mode (qwen2).
    Neox,
}

/// A dimension of a tensor, in terms of the architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Vocab,
    Hidden,
    /// `n_head * head_dim`.
    Q,
    /// `n_head_kv * head_dim`.
    Kv,
    Ffn,
    /// `head_dim` (per-head q/k norms).
    HeadDim,
    /// Fused q/k/v rows: `(n_head + 2 n_head_kv) * head_dim`.
    Qkv,
    /// Fused gate/up rows: `2 * ffn`.
    Ffn2,
    /// Routed experts (`num_local_experts` / `num_experts`).
    Experts,
    /// One routed expert's FFN size ([`Arch::expert_ffn`]).
    ExpertFfn,
    /// The shared expert's FFN size (`shared_expert_intermediate_size`).
    SharedFfn,
    /// A dimension of one (the shared-expert gate's single output).
    One,
}

impl Dim {
    fn of(self, a: &Arch) -> usize {
        match self {
            Dim::Vocab => a.vocab,
            Dim::Hidden => a.hidden,
            Dim::Q => a.n_head * a.head_dim,
            Dim::Kv => a.n_head_kv.max(1) * a.head_dim,
            Dim::Ffn => a.ffn,
            Dim::HeadDim => a.head_dim,
            Dim::Qkv => (a.n_head + 2 * a.n_head_kv.max(1)) * a.head_dim,
            Dim::Ffn2 => 2 * a.ffn,
            Dim::Experts => a.n_expert,
            Dim::ExpertFfn => a.expert_ffn(),
            Dim::SharedFfn => a.shared_ffn,
            Dim::One => 1,
        }
    }
}

/// In a [`TensorRow::hf`] name, where the expert index goes: a row whose
/// name holds it is one routed expert's weight, stacked with the others of
/// its layer into one `[n_expert, ...]` tensor (llama.cpp's `*_exps`).
pub const EXPERT: &str = "{e}";

/// One row of a family's tensor table.
#[derive(Debug, Clone, Copy)]
pub struct TensorRow {
    /// Hugging Face name without `.weight` / `.bias`; for a per-layer row,
    /// relative to `model.layers.{i}.`.
    pub hf: &'static str,
    /// GGUF name without the suffix; for a per-layer row, relative to `blk.{i}.`.
    pub gguf: &'static str,
    pub role: Role,
    pub per_layer: bool,
    /// The weight's shape (row-major, row last); for an expert row (see
    /// [`EXPERT`]), one expert's, the stacked tensor having `n_expert` more
    /// in front.
    pub shape: &'static [Dim],
}

impl TensorRow {
    /// Whether this row is one routed expert's weight (see [`EXPERT`]).
    pub fn is_expert(&self) -> bool {
        self.hf.contains(EXPERT)
    }

    /// Whether `part` (a per-layer name without the layer prefix and the
    /// suffix) is this row's, and for an expert row, which expert.
    fn matches(&self, part: &str) -> Option<Option<usize>> {
        match self.hf.split_once(EXPERT) {
            None => (self.hf == part).then_some(None),
            Some((pre, post)) => {
                let digits = part.strip_prefix(pre)?.strip_suffix(post)?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                digits.parse().ok().map(Some)
            }
        }
    }
}

/// A config.json field a family refuses when it is set to a non-default value.
#[derive(Debug, Clone, Copy)]
pub enum Refuse {
    /// Refused unless absent or `null` (e.g. `rope_scaling`).
    NonNull(&'static str),
    /// Refused unless absent or equal to this string (e.g. `hidden_act` silu).
    Unless(&'static str, &'static str),
    /// Refused when `true` (e.g. `use_sliding_window`).
    True(&'static str),
    /// Refused unless absent, `null` or equal to this integer (e.g.
    /// `decoder_sparse_step` 1).
    UnlessInt(&'static str, u64),
    /// Refused unless `true`; absent or `null` is refused too (the
    /// transformers default being `false`, e.g. Qwen3-MoE's `norm_topk_prob`).
    UnlessTrue(&'static str),
    /// Refused unless absent, `null` or an empty list (e.g. `mlp_only_layers`).
    NonEmpty(&'static str),
    /// A window (e.g. `sliding_window`) refused when it is a number smaller
    /// than `max_position_embeddings` (it would then change attention).
    WindowBelowContext(&'static str),
    /// Refused unless absent, `null` or this number (e.g.
    /// `partial_rotary_factor` 1).
    UnlessNumber(&'static str, f64),
    /// `rope_scaling` (or `rope_parameters`) carried when of one of these
    /// kinds and valid, refused by name otherwise (see [`rope::parse`]).
    RopeScaling(&'static [rope::Kind]),
}

/// A family's value transform for a tensor with this role and shape.
pub type TransformFn = fn(&Arch, Role, &[usize]) -> Result<Option<Transform>, String>;

/// Everything kiln knows about one architecture family.
#[derive(Debug)]
pub struct ArchSpec {
    /// GGUF `general.architecture`.
    pub gguf: &'static str,
    /// Hugging Face `architectures[0]` classes converted as this family.
    pub hf_classes: &'static [&'static str],
    /// HF-to-GGUF tensor table, in the order [`synthesize`] lists tensors.
    pub tensors: &'static [TensorRow],
    /// Per-layer roles whose tensors carry a bias in checkpoints.
    pub biases: &'static [Role],
    /// config.json fields refused when set (see [`Refuse`]).
    pub refused: &'static [Refuse],
    /// RoPE style the forward pass uses on GGUF-layout weights.
    pub rope: RopeStyle,
    /// The value transform of a tensor with this role and shape (`Err`: the
    /// tensor cannot be converted, and why).
    pub transform: TransformFn,
    /// The GGUF architecture keys llama.cpp reads, for a model named `name`.
    pub gguf_metadata: fn(&Arch, &str) -> Metadata,
    /// config.json fields this family carries beyond [`fields::COMMON`]
    /// (into [`Arch`], its metadata or its tensors).
    pub reads: &'static [&'static str],
    /// Fields of this family's transformers config that do not change the
    /// computation (beyond [`fields::INERT`]); any field neither read,
    /// refused nor inert is warned about by name.
    pub inert: &'static [&'static str],
    /// What a family reads, refuses and renames beyond the above (Gemma).
    pub extension: Option<&'static Extension>,
}

/// A family's config fields, GGUF keys and checkpoint names beyond the
/// common ones.
#[derive(Debug)]
pub struct Extension {
    /// Values for config.json keys a nested `text_config` may omit (what
    /// the converter then assumes).
    pub config_defaults: &'static [(&'static str, f64)],
    /// Family facts from (the root config, its text config); nothing refused.
    pub read_config: fn(&Value, &Value, &mut Arch),
    /// The family's refusals beyond [`ArchSpec::refused`], given (the root
    /// config, its text config, the parsed facts, the class name).
    pub check_config: fn(&Value, &Value, &Arch, &str) -> Result<(), ConfigError>,
    /// Family facts from a GGUF's keys.
    pub read_gguf: fn(&Metadata, &mut Arch),
    /// Hugging Face name prefixes replaced before the table maps a name
    /// (multimodal wrappers around the text model).
    pub hf_renames: &'static [(&'static str, &'static str)],
    /// Hugging Face tensors dropped with a note (the converter skips them), and why.
    pub hf_dropped: &'static [(&'static str, &'static str)],
    /// Name prefixes of tensors dropped with a note, and why.
    pub hf_dropped_prefixes: &'static [(&'static [&'static str], &'static str)],
    /// Embedding rows beyond the vocabulary are dropped (the converter's
    /// `data_torch[:len(tokens)]`), so the embedding may have more rows
    /// than `vocab_size`.
    pub trim_embedding: bool,
}

/// What becomes of a Hugging Face tensor name before a table maps it.
#[derive(Debug, Clone, PartialEq)]
pub enum HfName {
    /// Map this name (the family's renames applied).
    Map(String),
    /// Drop the tensor, for this reason.
    Drop(&'static str),
}

/// A family's renames and drops applied to one Hugging Face name.
pub fn hf_name(spec: Option<&ArchSpec>, name: &str) -> HfName {
    let Some(ext) = spec.and_then(|s| s.extension) else {
        return HfName::Map(name.to_string());
    };
    if let Some((_, why)) = ext.hf_dropped.iter().find(|(n, _)| *n == name) {
        return HfName::Drop(why);
    }
    for (prefixes, why) in ext.hf_dropped_prefixes {
        if prefixes.iter().any(|p| name.starts_with(p)) {
            return HfName::Drop(why);
        }
    }
    for (from, to) in ext.hf_renames {
        if let Some(rest) = name.strip_prefix(from) {
            return HfName::Map(format!("{to}{rest}"));
        }
    }
    HfName::Map(name.to_string())
}

/// The table row of a tensor mapped to `gguf_name` (from [`map_hf_name`]).
pub fn row_for<'t>(
    table: &'t [TensorRow],
    gguf_name: &str,
    layer: Option<usize>,
) -> Option<&'t TensorRow> {
    let base = gguf_name
        .trim_end_matches(".weight")
        .trim_end_matches(".bias");
    let part = match layer {
        Some(_) => base.strip_prefix("blk.")?.split_once('.')?.1,
        None => base,
    };
    table
        .iter()
        .find(|r| r.per_layer == layer.is_some() && r.gguf == part)
}

/// Every family kiln converts, in the order errors list them.
pub const SPECS: &[&ArchSpec] = &[
    &llama::SPEC,
    &mixtral::SPEC,
    &qwen2::SPEC,
    &qwen2moe::SPEC,
    &qwen3::SPEC,
    &qwen3moe::SPEC,
    &phi3::SPEC,
    &gemma::GEMMA2,
    &gemma::GEMMA3,
];

/// Model types whose checkpoints have llama's tensor layout (attention, gated
/// FFN, optionally routed experts), so that [`synthesize`] counts their
/// weights from config.json, though kiln does not convert them.
const LLAMA_LAYOUT_MODEL_TYPES: &[&str] = &["mistral", "mixtral", "qwen2_moe", "qwen3_moe"];

pub fn spec_for_hf_class(class: &str) -> Option<&'static ArchSpec> {
    SPECS
        .iter()
        .copied()
        .find(|s| s.hf_classes.contains(&class))
}

pub fn spec_for_gguf(name: &str) -> Option<&'static ArchSpec> {
    SPECS.iter().copied().find(|s| s.gguf == name)
}

/// The spec of a model: its Hugging Face class's when known (Mixtral and
/// Llama share the GGUF architecture `llama` but not the tensor table),
/// else its GGUF architecture's.
pub fn spec_for_arch(arch: &Arch) -> Option<&'static ArchSpec> {
    arch.hf_architecture
        .as_deref()
        .and_then(spec_for_hf_class)
        .or_else(|| spec_for_gguf(&arch.family))
}

/// Whether llama.cpp renormalizes the top-k routing weights of a family's
/// MoE layers to sum to one (its `build_moe_ffn` `norm_w`, fixed per
/// architecture: `llama`, i.e. Mixtral, and `qwen3moe` do; `qwen2moe` does
/// not; a config asking for the other is refused).
pub fn moe_norm_top_k(family: &str) -> bool {
    family == llama::SPEC.gguf || family == qwen3moe::SPEC.gguf
}

/// The Hugging Face classes kiln converts, for messages.
pub fn supported_list() -> String {
    SPECS
        .iter()
        .flat_map(|s| s.hf_classes.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The GGUF architectures kiln runs, for messages (`llama, qwen2, qwen2moe,
/// qwen3, qwen3moe, phi3, gemma2 and gemma3`).
pub fn gguf_list() -> String {
    let mut names: Vec<&str> = Vec::new();
    for s in SPECS {
        if !names.contains(&s.gguf) {
            names.push(s.gguf);
        }
    }
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// Whether [`synthesize`] counts a family's weights exactly (a supported
/// family, or a model type with llama's layout).
pub fn counts_exactly(family: &str) -> bool {
    spec_for_gguf(family).is_some() || LLAMA_LAYOUT_MODEL_TYPES.contains(&family)
}

/// The tensor table of a model: its family's, or llama's for a model of no
/// known family (a bare `.safetensors` file; no value transforms then).
pub fn table_for(arch: Option<&Arch>) -> &'static [TensorRow] {
    arch.and_then(spec_for_arch)
        .map_or(llama::SPEC.tensors, |s| s.tensors)
}

/// Map one Hugging Face name to (GGUF name, role, layer) with `table`.
/// `Ok(None)` means "drop" (rotary buffers).
pub fn map_hf_name(
    table: &[TensorRow],
    name: &str,
) -> Result<Option<(String, Role, Option<usize>)>, String> {
    Ok(find_hf_row(table, name)?.map(|m| (m.gguf, m.row.role, m.layer)))
}

/// A Hugging Face name matched against a table (see [`find_hf_row`]).
#[derive(Debug, Clone)]
pub struct HfMatch<'t> {
    /// The GGUF name (for an expert, the stacked tensor's).
    pub gguf: String,
    pub row: &'t TensorRow,
    pub layer: Option<usize>,
    /// For a routed expert's weight, which expert.
    pub expert: Option<usize>,
}

/// [`map_hf_name`], with the table row and, for a routed expert's weight,
/// the expert index.
pub fn find_hf_row<'t>(table: &'t [TensorRow], name: &str) -> Result<Option<HfMatch<'t>>, String> {
    if name.ends_with("rotary_emb.inv_freq") {
        return Ok(None);
    }
    let unmapped = || format!("cannot map `{}` to a GGUF name", crate::printable(name));
    let (base, suffix) = match name.rsplit_once('.') {
        Some((b, s @ ("weight" | "bias"))) => (b, s),
        _ => return Err(unmapped()),
    };
    if let Some(r) = table.iter().find(|r| !r.per_layer && r.hf == base) {
        return Ok(Some(HfMatch {
            gguf: format!("{}.{suffix}", r.gguf),
            row: r,
            layer: None,
            expert: None,
        }));
    }
    let rest = base.strip_prefix("model.layers.").ok_or_else(unmapped)?;
    let (layer, part) = rest.split_once('.').ok_or_else(unmapped)?;
    let layer: usize = layer
        .parse()
        .map_err(|_| format!("cannot map `{}`: bad layer index", crate::printable(name)))?;
    let (r, expert) = table
        .iter()
        .filter(|r| r.per_layer)
        .find_map(|r| r.matches(part).map(|e| (r, e)))
        .ok_or_else(unmapped)?;
    Ok(Some(HfMatch {
        gguf: format!("blk.{layer}.{}.{suffix}", r.gguf),
        row: r,
        layer: Some(layer),
        expert,
    }))
}

/// A tensor known only by name and shape (no data): `source.dtype` is what
/// `convert_hf_to_gguf.py` writes (f32 for 1-D tensors, norms and the MoE
/// router, f16 for the rest).
fn synthetic(name: String, shape: Vec<usize>, role: Role, layer: Option<usize>) -> TensorNode {
    let dtype = if shape.len() < 2 || matches!(role, Role::Norm | Role::FfnGateInp) {
        SourceDType::F32
    } else {
        SourceDType::F16
    };
    TensorNode {
        source_name: name.clone(),
        name,
        shape,
        role,
        layer,
        source: Source {
            file: 0,
            dtype,
            offset: 0,
            len: 0,
        },
        parts: Vec::new(),
        transform: None,
        encoding: None,
        notes: Vec::new(),
    }
}

/// The tensors (GGUF names, shapes, roles) a checkpoint of `arch` has, from
/// its facts alone (for `kiln estimate` of a config.json): its family's
/// table, or llama's for other families; MoE layers get a router and merged
/// experts (and shared experts when `shared_ffn` is set) in place of the
/// dense FFN; the output projection is absent when embeddings are tied.
pub fn synthesize(arch: &Arch) -> Vec<TensorNode> {
    let spec = spec_for_arch(arch);
    let table = spec.map_or(llama::SPEC.tensors, |s| s.tensors);
    let biases = spec.map_or(&[][..], |s| s.biases);
    let dims = |r: &TensorRow| r.shape.iter().map(|d| d.of(arch)).collect::<Vec<_>>();
    let moe_table = table.iter().any(TensorRow::is_expert);
    let mut out = Vec::new();
    for r in table.iter().filter(|r| !r.per_layer) {
        if r.role == Role::Output && arch.tied_embeddings {
            continue;
        }
        out.push(synthetic(
            format!("{}.weight", r.gguf),
            dims(r),
            r.role,
            None,
        ));
    }
    let h = arch.hidden;
    for i in 0..arch.n_layer {
        let l = Some(i);
        let node = |part: &str, shape: Vec<usize>, role: Role| {
            synthetic(format!("blk.{i}.{part}.weight"), shape, role, l)
        };
        for r in table.iter().filter(|r| r.per_layer) {
            let dense_ffn = matches!(r.role, Role::FfnGate | Role::FfnUp | Role::FfnDown);
            if moe_table {
                // The family's own MoE rows: routed and shared experts and
                // routers in MoE layers, dense FFN rows in the others.
                let moe_row = !dense_ffn && is_moe_role(r.role);
                if moe_row != arch.moe_layer(i) && (moe_row || dense_ffn) {
                    continue;
                }
                let mut shape = dims(r);
                if r.is_expert() {
                    shape.insert(0, arch.n_expert);
                }
                let rows = shape[0];
                out.push(node(r.gguf, shape, r.role));
                if biases.contains(&r.role) {
                    let name = format!("blk.{i}.{}.bias", r.gguf);
                    out.push(synthetic(name, vec![rows], r.role, l));
                }
                continue;
            }
            if dense_ffn && arch.moe_layer(i) {
                if r.role == Role::FfnGate {
                    let (e, f) = (arch.n_expert, arch.expert_ffn());
                    out.push(node("ffn_gate_inp", vec![e, h], Role::FfnGateInp));
                    out.push(node("ffn_gate_exps", vec![e, f, h], Role::FfnGateExps));
                    out.push(node("ffn_up_exps", vec![e, f, h], Role::FfnUpExps));
                    out.push(node("ffn_down_exps", vec![e, h, f], Role::FfnDownExps));
                    if arch.shared_ffn > 0 {
                        let s = arch.shared_ffn;
                        out.push(node("ffn_gate_shexp", vec![s, h], Role::FfnGateShexp));
                        out.push(node("ffn_up_shexp", vec![s, h], Role::FfnUpShexp));
                        out.push(node("ffn_down_shexp", vec![h, s], Role::FfnDownShexp));
                    }
                }
                continue;
            }
            let shape = dims(r);
            let rows = shape[0];
            out.push(node(r.gguf, shape, r.role));
            if biases.contains(&r.role) {
                let name = format!("blk.{i}.{}.bias", r.gguf);
                out.push(synthetic(name, vec![rows], r.role, l));
            }
        }
    }
    out
}

/// A role only MoE layers have: routers, routed and shared experts.
fn is_moe_role(role: Role) -> bool {
    role.is_expert()
        || matches!(
            role,
            Role::FfnGateInp | Role::FfnGateShexp | Role::FfnUpShexp | Role::FfnDownShexp
        )
}

/// What is wrong with a config.json.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("config.json has no integer `{0}`")]
    Missing(&'static str),
    #[error("hidden_size and num_attention_heads must be positive")]
    NotPositive,
    #[error("`{0}` is not a non-negative integer")]
    NotInteger(&'static str),
    #[error(transparent)]
    Limit(#[from] limits::LimitError),
    #[error(
        "architecture `{}` is not supported (supported: {supported})",
        crate::printable(class)
    )]
    Unsupported { class: String, supported: String },
    #[error(
        "`{field}` ({}) is not supported for {class} yet",
        crate::printable(value)
    )]
    Refused {
        field: &'static str,
        value: String,
        class: String,
    },
    /// RoPE scaling kiln cannot carry (the whole sentence).
    #[error("{0}")]
    RopeScaling(String),
}

/// Multimodal configs nest the language model under `text_config`.
fn text_config(config: &Value) -> &Value {
    match config.get("text_config") {
        Some(t) if config.get("num_hidden_layers").is_none() => t,
        _ => config,
    }
}

/// The text part of `config` with transformers v5's `rope_parameters`
/// rewritten into the v4 fields kiln reads (see [`rope::from_v5`]).
fn text_config_v4(config: &Value) -> Result<Cow<'_, Value>, ConfigError> {
    let c = text_config(config);
    Ok(match rope::from_v5(c).map_err(ConfigError::RopeScaling)? {
        Some(v) => Cow::Owned(v),
        None => Cow::Borrowed(c),
    })
}

fn hf_class(config: &Value) -> Option<String> {
    config
        .get("architectures")?
        .as_array()?
        .first()?
        .as_str()
        .map(str::to_string)
}

/// [`Arch`] from a parsed config.json, for any architecture whose fields
/// follow the usual transformers names; `family` is the GGUF architecture
/// for supported classes and the `model_type` otherwise. Reads
/// `num_hidden_layers`, `hidden_size`, `num_attention_heads`,
/// `num_key_value_heads`, `head_dim`, `intermediate_size`, `vocab_size`,
/// `max_position_embeddings`, `rope_theta`, `rms_norm_eps`,
/// `tie_word_embeddings`, and for MoE models the expert counts and sizes.
/// Nothing is refused here (estimates cost any config); conversions call
/// [`check_convertible`].
pub fn from_hf_config(config: &Value) -> Result<Arch, ConfigError> {
    let spec = hf_class(config).as_deref().and_then(spec_for_hf_class);
    let ext = spec.and_then(|s| s.extension);
    // Estimates cost any config: a v5 RoPE block kiln would refuse is
    // read as it stands (check_convertible refuses it for conversions).
    let mut c = text_config_v4(config).unwrap_or_else(|_| Cow::Borrowed(text_config(config)));
    if let Some(e) = ext.filter(|e| !e.config_defaults.is_empty()) {
        if let Value::Object(m) = c.to_mut() {
            for (k, v) in e.config_defaults {
                if m.get(*k).is_none_or(Value::is_null) {
                    let v = if v.fract() == 0.0 && *v >= 1.0 {
                        Value::from(*v as u64)
                    } else {
                        Value::from(*v)
                    };
                    m.insert((*k).to_string(), v);
                }
            }
        }
    }
    let c: &Value = &c;
    let int = |key: &str| c.get(key).and_then(Value::as_u64).map(|v| v as usize);
    let need = |key: &'static str| match c.get(key) {
        None | Some(Value::Null) => Err(ConfigError::Missing(key)),
        Some(v) => v
            .as_u64()
            .map(|v| v as usize)
            .ok_or(ConfigError::NotInteger(key)),
    };
    let hf_architecture = hf_class(config);
    let family = hf_architecture
        .as_deref()
        .and_then(spec_for_hf_class)
        .map(|s| s.gguf.to_string())
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
        return Err(ConfigError::NotPositive);
    }
    let n_head_kv = int("num_key_value_heads").unwrap_or(n_head);
    let head_dim = match c.get("head_dim") {
        // Some configs write `"head_dim": null` for the default.
        None | Some(Value::Null) => hidden / n_head,
        Some(_) => need("head_dim")?,
    };
    let n_expert = int("num_local_experts")
        .or(int("num_experts"))
        .or(int("n_routed_experts"))
        .unwrap_or(0);
    let mut arch = Arch {
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
        // Refused (when invalid or not the family's) by check_convertible.
        rope_scaling: rope::parse(c, "", rope::ALL).ok().flatten(),
        sliding_window: int("sliding_window"),
        ..Arch::default()
    };
    if arch.is_moe() {
        arch.expert_ffn = int("moe_intermediate_size");
        arch.shared_ffn = int("shared_expert_intermediate_size")
            .or_else(|| int("n_shared_experts").map(|n| n.saturating_mul(arch.expert_ffn())))
            .unwrap_or(0);
        arch.n_dense_layers = int("first_k_dense_replace").map_or(0, |k| k.min(n_layer));
    }
    if let Some(e) = ext {
        (e.read_config)(config, c, &mut arch);
    }
    limits::check_caps(&arch)?;
    Ok(arch)
}

/// Refuse a config kiln cannot convert: a class no spec names, or a field
/// its spec refuses (see [`Refuse`]).
pub fn check_convertible(config: &Value) -> Result<&'static ArchSpec, ConfigError> {
    let class = hf_class(config).unwrap_or_else(|| "(none)".into());
    let spec = spec_for_hf_class(&class).ok_or_else(|| ConfigError::Unsupported {
        class: class.clone(),
        supported: supported_list(),
    })?;
    let c = &*text_config_v4(config)?;
    let refused = |field: &'static str, value: String| ConfigError::Refused {
        field,
        value,
        class: class.clone(),
    };
    for rule in spec.refused {
        match *rule {
            Refuse::NonNull(field) => match c.get(field) {
                None | Some(Value::Null) => {}
                Some(v) => {
                    let kind = v
                        .get("rope_type")
                        .or_else(|| v.get("type"))
                        .and_then(Value::as_str);
                    return Err(refused(
                        field,
                        kind.map_or_else(|| v.to_string(), |k| format!("type {k}")),
                    ));
                }
            },
            Refuse::Unless(field, default) => match c.get(field) {
                None | Some(Value::Null) => {}
                Some(v) if v.as_str() == Some(default) => {}
                Some(v) => return Err(refused(field, format!("{v}; kiln carries {default}"))),
            },
            Refuse::True(field) => {
                if c.get(field).and_then(Value::as_bool) == Some(true) {
                    return Err(refused(field, "true".into()));
                }
            }
            Refuse::UnlessInt(field, default) => match c.get(field) {
                None | Some(Value::Null) => {}
                Some(v) if v.as_u64() == Some(default) => {}
                Some(v) => return Err(refused(field, format!("{v}; kiln carries {default}"))),
            },
            Refuse::UnlessTrue(field) => match c.get(field) {
                Some(Value::Bool(true)) => {}
                None | Some(Value::Null) => {
                    return Err(refused(
                        field,
                        "absent, i.e. false; kiln carries true".into(),
                    ))
                }
                Some(v) => return Err(refused(field, format!("{v}; kiln carries true"))),
            },
            Refuse::NonEmpty(field) => match c.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::Array(a)) if a.is_empty() => {}
                Some(v) => return Err(refused(field, v.to_string())),
            },
            Refuse::WindowBelowContext(field) => {
                let context = c.get("max_position_embeddings").and_then(Value::as_u64);
                if let (Some(w), Some(ctx)) = (c.get(field).and_then(Value::as_u64), context) {
                    if w < ctx {
                        return Err(refused(field, format!("{w}, below the context of {ctx}")));
                    }
                }
            }
            Refuse::UnlessNumber(field, want) => match c.get(field) {
                None | Some(Value::Null) => {}
                Some(v) if v.as_f64() == Some(want) => {}
                Some(v) => return Err(refused(field, format!("{v}; kiln carries {want}"))),
            },
            Refuse::RopeScaling(kinds) => {
                rope::parse(c, &class, kinds).map_err(ConfigError::RopeScaling)?;
            }
        }
    }
    // A v5 per-layer-type RoPE whose sliding layers have their own base:
    // only a family that reads `rope_local_base_freq` carries it.
    if let Some(local) = c.get("rope_local_base_freq") {
        if text_config(config).get("rope_local_base_freq").is_none()
            && !fields::known(spec, "rope_local_base_freq")
        {
            return Err(refused(
                "rope_parameters",
                format!("sliding_attention.rope_theta {local} differs from full_attention's; kiln carries one RoPE base for this family"),
            ));
        }
    }
    if let Some(e) = spec.extension {
        let arch = from_hf_config(config)?;
        (e.check_config)(config, c, &arch, &class)?;
    }
    Ok(spec)
}

/// The GGUF keys llama.cpp reads for a llama-like architecture: block count,
/// context, sizes, heads, RoPE base and dimension, norm epsilon, vocabulary;
/// key/value lengths only when the head dimension is not `hidden / n_head`.
pub fn llama_cpp_metadata(arch: &Arch, name: &str) -> Metadata {
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
    rope::add_metadata(&mut md, f, arch);

    if arch.is_moe() {
        md.set(&format!("{f}.expert_count"), u(arch.n_expert));
        md.set(&format!("{f}.expert_used_count"), u(arch.n_expert_used));
        if let Some(e) = arch.expert_ffn {
            md.set(&format!("{f}.expert_feed_forward_length"), u(e));
        }
        if arch.shared_ffn > 0 {
            md.set(
                &format!("{f}.expert_shared_feed_forward_length"),
                u(arch.shared_ffn),
            );
        }
    }
    md
}

#[cfg(test)]
mod tests;
