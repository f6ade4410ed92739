//! Weight formats and the bytes a model takes in each: llama.cpp recipes
//! (`Q4_K_M` is a per-tensor mixture, not a type), and the serving formats of
//! vLLM / TensorRT-LLM (`f16`, `bf16`, `fp8`, `int8`, `int4`, `fp4`), which kiln
//! may not write yet but can still cost.
//!
//! What must stay true:
//! - a recipe assigns each tensor the type llama.cpp's `llama_tensor_get_type`
//!   (`src/llama-quant.cpp`) would, for the recipes listed in [`Recipe`],
//!   without an importance matrix, including its row-length fallbacks: the
//!   type kiln's own recipe pass ([`crate::passes::recipe`], golden-tested
//!   against llama-quantize) gives it, run as a dry run over the tensor list;
//!   there is no second copy of those rules here;
//! - a serving format's bytes follow the layout named in [`FORMAT_TABLE`],
//!   whose every row cites where its bits per weight come from;
//! - bytes are counted exactly from tensor shapes (no rounding to GB).

use std::collections::BTreeMap;
use std::fmt;

use quant::GgmlType;

use super::schemes::CtScheme;
use super::target::Precision;
use super::CostError;
use crate::ir::{Arch, Model, NoteKind, Role, SourceDType, TensorNode};
use crate::naming;
use crate::passes::recipe::{self as llama, ApplyRecipe, Ftype, RecipeOptions};
use crate::passes::{Context, Pipeline};

/// llama.cpp quantization recipes (`llama_ftype`), as `llama-quantize` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum Recipe {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

impl Recipe {
    pub const ALL: [Recipe; 14] = [
        Recipe::Q2_K,
        Recipe::Q3_K_S,
        Recipe::Q3_K_M,
        Recipe::Q3_K_L,
        Recipe::Q4_0,
        Recipe::Q4_1,
        Recipe::Q4_K_S,
        Recipe::Q4_K_M,
        Recipe::Q5_0,
        Recipe::Q5_1,
        Recipe::Q5_K_S,
        Recipe::Q5_K_M,
        Recipe::Q6_K,
        Recipe::Q8_0,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Recipe::Q4_0 => "Q4_0",
            Recipe::Q4_1 => "Q4_1",
            Recipe::Q5_0 => "Q5_0",
            Recipe::Q5_1 => "Q5_1",
            Recipe::Q8_0 => "Q8_0",
            Recipe::Q2_K => "Q2_K",
            Recipe::Q3_K_S => "Q3_K_S",
            Recipe::Q3_K_M => "Q3_K_M",
            Recipe::Q3_K_L => "Q3_K_L",
            Recipe::Q4_K_S => "Q4_K_S",
            Recipe::Q4_K_M => "Q4_K_M",
            Recipe::Q5_K_S => "Q5_K_S",
            Recipe::Q5_K_M => "Q5_K_M",
            Recipe::Q6_K => "Q6_K",
        }
    }

    /// llama.cpp's file type for the recipe (`llama_ftype`).
    pub fn ftype(self) -> Ftype {
        match self {
            Recipe::Q4_0 => Ftype::Q4_0,
            Recipe::Q4_1 => Ftype::Q4_1,
            Recipe::Q5_0 => Ftype::Q5_0,
            Recipe::Q5_1 => Ftype::Q5_1,
            Recipe::Q8_0 => Ftype::Q8_0,
            Recipe::Q2_K => Ftype::Q2K,
            Recipe::Q3_K_S => Ftype::Q3KS,
            Recipe::Q3_K_M => Ftype::Q3KM,
            Recipe::Q3_K_L => Ftype::Q3KL,
            Recipe::Q4_K_S => Ftype::Q4KS,
            Recipe::Q4_K_M => Ftype::Q4KM,
            Recipe::Q5_K_S => Ftype::Q5KS,
            Recipe::Q5_K_M => Ftype::Q5KM,
            Recipe::Q6_K => Ftype::Q6K,
        }
    }

    /// The recipe pass's preset of the same name (what
    /// [`llama::parse_recipe`] returns for [`Recipe::name`]).
    pub fn preset(self) -> llama::Recipe {
        llama::Recipe {
            name: self.name(),
            ftype: self.ftype(),
        }
    }

    /// The recipe's default type (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        self.ftype().default_type()
    }
}

/// Formats vLLM / TensorRT-LLM serve (and f16/bf16/f32, which GGUF holds too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServingFormat {
    F32,
    F16,
    Bf16,
    /// FP8 E4M3 weights, one scale per output channel (compressed-tensors `float-quantized`).
    Fp8,
    /// INT8 weights, one scale per output channel.
    Int8,
    /// INT4 weights, symmetric, one 16-bit scale per 128 inputs (GPTQ/AWQ/compressed-tensors W4A16).
    Int4,
    /// NVFP4: E2M1 values, one E4M3 scale per 16, one f32 scale per tensor.
    Fp4,
    /// OCP MXFP4: E2M1 values, one E8M0 scale per 32.
    Mxfp4,
}

impl ServingFormat {
    pub fn name(self) -> &'static str {
        match self {
            ServingFormat::F32 => "f32",
            ServingFormat::F16 => "f16",
            ServingFormat::Bf16 => "bf16",
            ServingFormat::Fp8 => "fp8",
            ServingFormat::Int8 => "int8",
            ServingFormat::Int4 => "int4",
            ServingFormat::Fp4 => "fp4",
            ServingFormat::Mxfp4 => "mxfp4",
        }
    }
}

/// What `--type` names: a recipe, a serving format, or the types a model
/// file (or a kiln plan) already assigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    Recipe(Recipe),
    Serving(ServingFormat),
    /// A compressed-tensors scheme with its group size (0: per channel; only
    /// the grouped schemes read it): the stored bytes of that layout, with
    /// Linears it cannot hold kept in their source dtype.
    Scheme(CtScheme, u32),
    /// Each tensor's own type (a GGUF as loaded, or a plan): exact bytes.
    Planned,
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl WeightFormat {
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::Recipe(r) => r.name(),
            WeightFormat::Serving(s) => s.name(),
            WeightFormat::Scheme(s, _) => s.name(),
            WeightFormat::Planned => "as-planned",
        }
    }

    /// Parse a `--type` value, case-insensitively. llama-quantize's aliases
    /// `Q3_K`, `Q4_K`, `Q5_K` mean `Q3_K_M`, `Q4_K_M`, `Q5_K_M` (tools/quantize).
    pub fn parse(s: &str) -> Result<WeightFormat, CostError> {
        let lower = s.trim().to_ascii_lowercase();
        let serving = match lower.as_str() {
            "f32" | "fp32" => Some(ServingFormat::F32),
            "f16" | "fp16" => Some(ServingFormat::F16),
            "bf16" => Some(ServingFormat::Bf16),
            "fp8" | "f8" | "fp8_e4m3" => Some(ServingFormat::Fp8),
            "int8" | "w8a8" | "w8a16" => Some(ServingFormat::Int8),
            "int4" | "w4a16" => Some(ServingFormat::Int4),
            "fp4" | "nvfp4" => Some(ServingFormat::Fp4),
            "mxfp4" => Some(ServingFormat::Mxfp4),
            _ => None,
        };
        if let Some(f) = serving {
            return Ok(WeightFormat::Serving(f));
        }
        let alias = match lower.as_str() {
            "q3_k" => "q3_k_m",
            "q4_k" => "q4_k_m",
            "q5_k" => "q5_k_m",
            other => other,
        };
        if let Some(r) = Recipe::ALL
            .iter()
            .find(|r| r.name().to_ascii_lowercase() == alias)
        {
            return Ok(WeightFormat::Recipe(*r));
        }
        let known = known_type_names();
        Err(CostError::UnknownType {
            name: s.to_string(),
            hint: crate::suggest::did_you_mean(s, known.iter().copied()),
            known: known.join(", "),
        })
    }

    /// The `[runtimes]` entries that mean a runtime runs this format (any
    /// one of them will do: `fp8` is any of the FP8 schemes).
    pub fn runtime_entries(self) -> Vec<&'static str> {
        match self {
            WeightFormat::Recipe(_) | WeightFormat::Planned => vec!["gguf"],
            WeightFormat::Serving(ServingFormat::F32) => vec!["gguf"],
            WeightFormat::Serving(ServingFormat::F16) => vec!["f16"],
            WeightFormat::Serving(ServingFormat::Bf16) => vec!["bf16"],
            WeightFormat::Serving(ServingFormat::Fp8) => vec!["FP8", "FP8_DYNAMIC", "FP8_BLOCK"],
            WeightFormat::Serving(ServingFormat::Int8) => vec!["W8A8", "W8A16"],
            WeightFormat::Serving(ServingFormat::Int4) => vec!["W4A16", "W4A16_ASYM"],
            WeightFormat::Serving(ServingFormat::Fp4) => vec!["NVFP4", "NVFP4A16"],
            WeightFormat::Serving(ServingFormat::Mxfp4) => vec!["MXFP4"],
            WeightFormat::Scheme(s, _) => vec![s.name()],
        }
    }

    /// Can llama.cpp load weights in this format (as GGUF)?
    pub fn llama_cpp_can_serve(self) -> bool {
        matches!(
            self,
            WeightFormat::Recipe(_)
                | WeightFormat::Planned
                | WeightFormat::Serving(
                    ServingFormat::F32 | ServingFormat::F16 | ServingFormat::Bf16
                )
        )
    }

    /// The tensor-core format a server engine (vLLM, TensorRT-LLM) multiplies
    /// in, in order of preference: the weight format when the device has it
    /// natively, else 16-bit (weight-only kernels dequantize to f16/bf16).
    pub fn server_compute(self) -> &'static [Precision] {
        match self {
            WeightFormat::Scheme(s, _) => s.compute(),
            WeightFormat::Serving(ServingFormat::Fp8) => {
                &[Precision::Fp8, Precision::Fp16, Precision::Bf16]
            }
            WeightFormat::Serving(ServingFormat::Int8) => {
                &[Precision::Int8, Precision::Fp16, Precision::Bf16]
            }
            WeightFormat::Serving(ServingFormat::Fp4 | ServingFormat::Mxfp4) => &[
                Precision::Fp4,
                Precision::Fp8,
                Precision::Fp16,
                Precision::Bf16,
            ],
            WeightFormat::Serving(ServingFormat::Bf16) => &[Precision::Bf16, Precision::Fp16],
            WeightFormat::Serving(ServingFormat::F32) => &[Precision::Fp32, Precision::Fp16],
            _ => &[Precision::Fp16, Precision::Bf16],
        }
    }
}

/// Every name `--type` accepts.
pub fn known_type_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Recipe::ALL.iter().map(|r| r.name()).collect();
    v.extend([
        "Q3_K", "Q4_K", "Q5_K", "f32", "f16", "bf16", "fp8", "int8", "int4", "fp4", "mxfp4",
    ]);
    v
}

/// Bits per weight of each serving format and ggml type, and where the
/// figure comes from. Recipes are mixtures: their effective bits per weight
/// depend on the model and are computed per tensor (see the README table).
pub const FORMAT_TABLE: &[(&str, &str, &str)] = &[
    ("f32", "32", "IEEE binary32"),
    ("f16 / bf16", "16", "IEEE binary16 / bfloat16"),
    (
        "fp8",
        "8 + 16/in per row",
        "E4M3 weights with one 16-bit scale per output channel: vllm-project/compressed-tensors `float-quantized`, strategy `channel` (reference/formats.md)",
    ),
    (
        "int8",
        "8 + 16/in per row",
        "INT8 weights with one 16-bit scale per output channel (compressed-tensors `int-quantized`, strategy `channel`)",
    ),
    (
        "int4",
        "4 + 16/128 = 4.125",
        "symmetric INT4, one 16-bit scale per group of 128: compressed-tensors `pack-quantized` W4A16 (reference/formats.md); AWQ adds a 4-bit zero point per group (+0.03)",
    ),
    (
        "fp4",
        "4 + 8/16 = 4.5",
        "NVFP4: E2M1 values, one E4M3 scale per 16 values and one f32 scale per tensor (NVIDIA, \"Introducing NVFP4\", developer blog 2025)",
    ),
    ("mxfp4", "4 + 8/32 = 4.25", "OCP Microscaling Formats (MX) v1.0: E2M1 values, one E8M0 scale per 32; ggml MXFP4 (reference/formats.md)"),
    ("Q8_0", "8.5", "ggml block of 32: f16 scale + 32 x i8 (reference/formats.md)"),
    ("Q6_K", "6.5625", "ggml super-block of 256 (210 bytes)"),
    ("Q5_K", "5.5", "ggml super-block of 256 (176 bytes)"),
    ("Q5_0 / Q5_1", "5.5 / 6", "ggml blocks of 32 (22 / 24 bytes)"),
    ("Q4_K", "4.5", "ggml super-block of 256 (144 bytes)"),
    ("Q4_0 / Q4_1", "4.5 / 5", "ggml blocks of 32 (18 / 20 bytes)"),
    ("Q3_K", "3.4375", "ggml super-block of 256 (110 bytes)"),
    ("Q2_K", "2.625", "ggml super-block of 256 (84 bytes)"),
];

/// Where a model's weight bytes go.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WeightBytes {
    pub total: u64,
    /// The token embedding table (read by lookup only, unless tied to the output).
    pub embedding: u64,
    /// Routed expert tensors (only `n_expert_used` of `n_expert` are read per token).
    pub experts: u64,
    /// Everything else (attention, dense and shared FFN, output, router, norms).
    pub dense: u64,
    pub params: u64,
    /// Multiply-accumulate weights used per token by dense layers (incl. output).
    pub matmul_params_dense: u64,
    /// Multiply-accumulate weights of all routed experts.
    pub matmul_params_experts: u64,
    /// Bytes per encoding name, for display.
    pub by_type: BTreeMap<String, u64>,
    /// Tensors whose type fell back because their rows were not a multiple of
    /// the block size (llama.cpp's own fallbacks), after, first, the reason
    /// when the recipe's mixture could not be applied at all.
    pub fallbacks: Vec<String>,
    /// The embedding table doubles as the output matrix (tied, or no
    /// `output.weight`), so it is read in full every step.
    pub embedding_is_output: bool,
    /// Linears of a planned compressed-tensors mixture whose activations are
    /// quantized too (W8A8, FP8 dynamic/block): scheme -> (bytes, weights).
    /// They multiply at the scheme's int8/fp8 rate and are not dequantized
    /// first. Set by the caller that knows each tensor's scheme (an encoding
    /// says how weights are stored, not how activations are); empty otherwise.
    pub act_quantized: BTreeMap<CtScheme, (u64, u64)>,
    /// The schemes of a planned compressed-tensors artifact (what the
    /// target's runtime must accept; empty when every Linear is kept in 16
    /// bits); `None` for every other format.
    pub ct_schemes: Option<std::collections::BTreeSet<CtScheme>>,
}

impl WeightBytes {
    /// The share of the weight bytes stored as 16- or 32-bit floats (which
    /// llama.cpp multiplies without dequantizing).
    pub fn float_share(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let float: u64 = ["f16", "bf16", "f32"]
            .iter()
            .filter_map(|t| self.by_type.get(*t))
            .sum();
        float as f64 / self.total as f64
    }

    /// Effective bits per weight over all parameters.
    pub fn bits_per_weight(&self) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            self.total as f64 * 8.0 / self.params as f64
        }
    }
}

/// The type a tensor has now: the encoding a pass chose, else its source's
/// (for a tensor synthesized from a config, what `convert_hf_to_gguf.py`
/// writes: see `crate::arch::synthesize`).
fn planned(t: &TensorNode) -> GgmlType {
    t.ggml_type().unwrap_or_else(|| t.source.dtype.ggml())
}

/// `tensors` as the file llama-quantize would read: names and shapes, each
/// at its planned type, no data (the pass only decides encodings; nothing
/// is read).
fn recipe_model(tensors: &[TensorNode], arch: &Arch) -> Model {
    let tensors = tensors
        .iter()
        .map(|t| {
            let mut t = t.clone();
            t.source.dtype = match planned(&t) {
                GgmlType::F32 => SourceDType::F32,
                GgmlType::F16 => SourceDType::F16,
                GgmlType::BF16 => SourceDType::BF16,
                ty => SourceDType::Ggml(ty),
            };
            // The bytes such a source would have, so the model verifies.
            t.source.len = t
                .source
                .dtype
                .ggml()
                .row_bytes(t.row_len())
                .map_or(0, |b| b as u64 * t.n_rows() as u64);
            t.encoding = None;
            t.transform = None;
            t.notes.clear();
            t
        })
        .collect();
    let arch = Arch {
        n_head_kv: arch.n_head_kv.max(1),
        ..arch.clone()
    };
    Model {
        arch: Some(arch),
        tensors,
        ..Model::default()
    }
}

/// Run the recipe pass over `model` as `llama-quantize --dry-run` would,
/// without an importance matrix (a quantized input is requantized).
fn apply_recipe(model: &mut Model, r: Recipe, pure: bool) -> Result<(), String> {
    let options = RecipeOptions {
        imatrix_present: false,
        dry_run: true,
        allow_requantize: true,
        pure,
        ..RecipeOptions::default()
    };
    let recipe = ApplyRecipe::new(r.preset(), options)?;
    Pipeline::size(recipe)
        .run(model, &Context::default())
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Each tensor's type under recipe `r`, in the order of `tensors`, and the
/// row-length fallbacks taken (`name: type -> fallback (row N)`).
fn recipe_types(tensors: &[TensorNode], arch: &Arch, r: Recipe) -> (Vec<GgmlType>, Vec<String>) {
    let mut model = recipe_model(tensors, arch);
    let mut fallbacks = Vec::new();
    if let Err(e) = apply_recipe(&mut model, r, false) {
        // Only a model llama-quantize itself refuses gets here (an MoE tensor
        // outside the block count): size it without the mixture, and say so.
        fallbacks.push(format!(
            "{e}: llama-quantize would refuse this model; sized without {}'s mixture",
            r.name()
        ));
        model = recipe_model(tensors, arch);
        if let Err(e) = apply_recipe(&mut model, r, true) {
            fallbacks.push(format!("{e}: sized at the source types"));
        }
    }
    let types = model
        .tensors
        .iter()
        .map(|t| t.ggml_type().unwrap_or_else(|| t.source.dtype.ggml()))
        .collect();
    for t in &model.tensors {
        for note in &t.notes {
            if let NoteKind::Fallback {
                wanted,
                used,
                row_len,
            } = note.kind
            {
                fallbacks.push(format!("{}: {wanted} -> {used} (row {row_len})", t.name));
            }
        }
    }
    (types, fallbacks)
}

fn ggml_bytes(ty: GgmlType, t: &TensorNode) -> u64 {
    let row = t.row_len();
    let per_row = ty.row_bytes(row).unwrap_or(row * 2) as u64;
    per_row * t.n_rows() as u64
}

/// Bytes of one tensor in a serving format.
fn serving_bytes(f: ServingFormat, role: Role, t: &TensorNode) -> u64 {
    let n = t.n_elements() as u64;
    let rows = t.n_rows() as u64;
    let row = t.row_len() as u64;
    let sixteen = 2 * n;
    match f {
        ServingFormat::F32 => 4 * n,
        ServingFormat::F16 | ServingFormat::Bf16 => sixteen,
        _ if !role.is_linear() => sixteen,
        ServingFormat::Fp8 | ServingFormat::Int8 => n + 2 * rows,
        ServingFormat::Int4 => n.div_ceil(2) + 2 * rows * row.div_ceil(128),
        ServingFormat::Fp4 => n.div_ceil(2) + rows * row.div_ceil(16) + 4,
        ServingFormat::Mxfp4 => n.div_ceil(2) + rows * row.div_ceil(32),
    }
}

/// Does compressed-tensors quantize this tensor (`targets: ["Linear"]`
/// minus `lm_head` and routers, as `formats::ct::is_target` decides)?
pub fn is_ct_target(role: Role, t: &TensorNode) -> bool {
    t.shape.len() == 2
        && matches!(
            role,
            Role::AttnQ
                | Role::AttnK
                | Role::AttnV
                | Role::AttnOutput
                | Role::FfnGate
                | Role::FfnUp
                | Role::FfnDown
        )
}

/// One tensor's stored bytes under a compressed-tensors scheme, its label,
/// and the fallback taken when the scheme cannot hold it (kept unquantized,
/// listed in `ignore`, as `formats::ct::assign` does).
fn scheme_bytes(
    s: CtScheme,
    group: u32,
    role: Role,
    t: &TensorNode,
    checkpoint: SourceDType,
) -> (u64, String, Option<String>) {
    let dtype = if t.shape.len() < 2 {
        checkpoint
    } else {
        t.source.dtype
    };
    let vb = match dtype {
        SourceDType::F32 => 4,
        _ => 2,
    };
    let kept = (
        vb * t.n_elements() as u64,
        dtype.name().to_ascii_lowercase(),
    );
    if !is_ct_target(role, t) {
        return (kept.0, kept.1, None);
    }
    match s.linear_bytes(t.n_rows(), t.row_len(), group, vb as usize) {
        Some(b) => (b, s.name().to_string(), None),
        None => (
            kept.0,
            kept.1.clone(),
            Some(format!(
                "{}: {s} -> {} (row {})",
                t.name,
                kept.1,
                t.row_len()
            )),
        ),
    }
}

/// Count the bytes of `tensors` (a loaded model's, or
/// `crate::arch::synthesize`'s) in `format`; each tensor's class is read
/// from its GGUF name (`crate::naming`). `arch` supplies the model-wide facts
/// recipe rules consult (family, block count, heads, experts).
pub fn weight_bytes(tensors: &[TensorNode], arch: &Arch, format: WeightFormat) -> WeightBytes {
    let roles: Vec<Role> = tensors.iter().map(|t| naming::role(&t.name)).collect();
    let has_output = roles.contains(&Role::Output);
    let mut wb = WeightBytes {
        embedding_is_output: arch.tied_embeddings || !has_output,
        ..WeightBytes::default()
    };
    // The checkpoint's dtype (that of its matrices): a synthesized model's
    // norms are F32 as convert_hf_to_gguf.py writes them, but a
    // compressed-tensors artifact keeps them in the checkpoint's dtype.
    let checkpoint = tensors
        .iter()
        .find(|t| t.shape.len() >= 2)
        .map_or(SourceDType::BF16, |t| t.source.dtype);
    let recipe_types = match format {
        WeightFormat::Recipe(r) => {
            let (types, fallbacks) = recipe_types(tensors, arch, r);
            wb.fallbacks = fallbacks;
            types
        }
        _ => Vec::new(),
    };
    for (i, (t, &role)) in tensors.iter().zip(&roles).enumerate() {
        let n_elements = t.n_elements() as u64;
        let one_d = t.shape.len() < 2 || role == Role::Norm;
        let (bytes, label) = match format {
            WeightFormat::Scheme(s, group) => {
                let (bytes, label, fallback) = scheme_bytes(s, group, role, t, checkpoint);
                if let Some(f) = fallback {
                    wb.fallbacks.push(f);
                }
                (bytes, label)
            }
            WeightFormat::Recipe(_) => {
                let ty = recipe_types[i];
                (ggml_bytes(ty, t), ty.name().to_string())
            }
            // A compressed-tensors encoding (a planned vLLM artifact): its
            // stored bytes, scales included.
            WeightFormat::Planned
                if t.encoding
                    .is_some_and(|e| e.is_quantized() && e.ggml().is_none()) =>
            {
                let e = t.encoding.expect("checked above");
                let bytes = t.encoded_bytes().unwrap_or(t.source.len);
                (bytes, e.to_string())
            }
            WeightFormat::Planned => {
                let ty = planned(t);
                (ggml_bytes(ty, t), ty.name().to_string())
            }
            // 1-D tensors and norms stay 16-bit in serving checkpoints.
            WeightFormat::Serving(f) if one_d && f != ServingFormat::F32 => {
                (2 * n_elements, "f16".to_string())
            }
            WeightFormat::Serving(f) => {
                let label = if role.is_linear()
                    || matches!(
                        f,
                        ServingFormat::F32 | ServingFormat::F16 | ServingFormat::Bf16
                    ) {
                    f.name()
                } else {
                    "f16"
                };
                (serving_bytes(f, role, t), label.to_string())
            }
        };
        wb.total += bytes;
        *wb.by_type.entry(label).or_insert(0) += bytes;
        wb.params += n_elements;
        match role {
            Role::Embedding => {
                wb.embedding += bytes;
                if wb.embedding_is_output {
                    wb.matmul_params_dense += n_elements;
                }
            }
            r if r.is_expert() => {
                wb.experts += bytes;
                wb.matmul_params_experts += n_elements;
            }
            r => {
                wb.dense += bytes;
                if r != Role::Norm {
                    wb.matmul_params_dense += n_elements;
                }
            }
        }
    }
    wb
}
