//! Weight formats and the bytes a model takes in each: llama.cpp recipes
//! (`Q4_K_M` is a per-tensor mixture, not a type), and the serving formats of
//! vLLM / TensorRT-LLM (`f16`, `bf16`, `fp8`, `int8`, `int4`, `fp4`), which kiln
//! may not write yet but can still cost.
//!
//! What must stay true:
//! - a recipe assigns each tensor the type llama.cpp's `llama_tensor_get_type`
//!   (`src/llama-quant.cpp`) would, for the recipes listed in [`Recipe`],
//!   without an importance matrix, including its row-length fallbacks;
//! - a serving format's bytes follow the layout named in [`FORMAT_TABLE`],
//!   whose every row cites where its bits per weight come from;
//! - bytes are counted exactly from tensor shapes (no rounding to GB).

use std::collections::BTreeMap;
use std::fmt;

use quant::GgmlType;

use super::shape::{Shape, TensorKind, TensorSpec};
use super::target::Precision;
use super::CostError;

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

    /// The recipe's default type (`llama_model_quantize_impl`).
    pub fn default_type(self) -> GgmlType {
        match self {
            Recipe::Q4_0 => GgmlType::Q4_0,
            Recipe::Q4_1 => GgmlType::Q4_1,
            Recipe::Q5_0 => GgmlType::Q5_0,
            Recipe::Q5_1 => GgmlType::Q5_1,
            Recipe::Q8_0 => GgmlType::Q8_0,
            Recipe::Q2_K => GgmlType::Q2K,
            Recipe::Q3_K_S | Recipe::Q3_K_M | Recipe::Q3_K_L => GgmlType::Q3K,
            Recipe::Q4_K_S | Recipe::Q4_K_M => GgmlType::Q4K,
            Recipe::Q5_K_S | Recipe::Q5_K_M => GgmlType::Q5K,
            Recipe::Q6_K => GgmlType::Q6K,
        }
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
        Err(CostError::UnknownType {
            name: s.to_string(),
            known: known_type_names().join(", "),
        })
    }

    /// The `[runtimes]` format key a target lists for this format.
    pub fn runtime_key(self) -> &'static str {
        match self {
            WeightFormat::Recipe(_) | WeightFormat::Planned => "gguf",
            WeightFormat::Serving(ServingFormat::F32) => "gguf",
            WeightFormat::Serving(ServingFormat::Mxfp4) => "fp4",
            WeightFormat::Serving(s) => s.name(),
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
    /// the block size (llama.cpp's own fallbacks).
    pub fallbacks: Vec<String>,
    /// The embedding table doubles as the output matrix (tied, or no
    /// `output.weight`), so it is read in full every step.
    pub embedding_is_output: bool,
}

impl WeightBytes {
    /// Effective bits per weight over all parameters.
    pub fn bits_per_weight(&self) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            self.total as f64 * 8.0 / self.params as f64
        }
    }
}

/// `use_more_bits` of `llama-quant.cpp` (the recipe pass's), on counts.
pub fn use_more_bits(i: usize, n: usize) -> bool {
    crate::passes::recipe::use_more_bits(i as i64, n as i64)
}

/// Facts about the whole model the recipe rules consult.
struct RecipeCtx {
    n_attn_v: usize,
    n_ffn_down: usize,
    n_expert: usize,
    /// `n_head / n_head_kv`.
    n_gqa: usize,
    /// llama.cpp's `LLM_TYPE_70B` (llama family, 80 layers, GQA): attn_v is bumped.
    is_70b: bool,
    has_output: bool,
}

/// The type llama.cpp's recipe gives `t` before row-length fallbacks.
fn recipe_type(
    r: Recipe,
    t: &TensorSpec,
    ctx: &RecipeCtx,
    counters: &mut (usize, usize),
) -> GgmlType {
    use GgmlType as G;
    use Recipe as R;
    let default = r.default_type();
    let mut ty = default;
    let is_output =
        t.kind == TensorKind::Output || (!ctx.has_output && t.kind == TensorKind::Embedding);
    if is_output {
        let row = t.row_len();
        if default.row_bytes(row).is_none() {
            ty = G::Q8_0;
        } else if default != G::Q8_0 {
            ty = G::Q6K;
        }
        return ty;
    }
    match t.kind {
        TensorKind::Embedding => {}
        TensorKind::AttnV => {
            let i = counters.0;
            counters.0 += 1;
            let n = ctx.n_attn_v;
            ty = match r {
                R::Q2_K => {
                    if ctx.n_gqa >= 4 {
                        G::Q4K
                    } else {
                        G::Q3K
                    }
                }
                R::Q3_K_M => {
                    if i < 2 {
                        G::Q5K
                    } else {
                        G::Q4K
                    }
                }
                R::Q3_K_L => G::Q5K,
                R::Q4_K_M | R::Q5_K_M if use_more_bits(i, n) => G::Q6K,
                R::Q4_K_S if i < 4 => G::Q5K,
                _ => ty,
            };
            if ctx.is_70b && (ty == G::Q3K || ty == G::Q4K) {
                ty = G::Q5K;
            }
            if ctx.n_expert == 8 {
                ty = G::Q8_0;
            }
        }
        TensorKind::AttnK if ctx.n_expert == 8 => ty = G::Q8_0,
        k if k.is_ffn_down() => {
            let (i, n) = if ctx.n_expert > 1 {
                (t.layer.unwrap_or(counters.1), ctx.n_ffn_down)
            } else {
                (counters.1, ctx.n_ffn_down)
            };
            counters.1 += 1;
            ty = match r {
                R::Q2_K => G::Q3K,
                R::Q3_K_M => {
                    if i < n / 16 {
                        G::Q5K
                    } else {
                        // Non-Falcon: always Q4_K (`arch != FALCON || use_more_bits`).
                        G::Q4K
                    }
                }
                R::Q3_K_L => G::Q5K,
                R::Q4_K_M if use_more_bits(i, n) => G::Q6K,
                R::Q5_K_M if use_more_bits(i, n) => G::Q6K,
                R::Q4_K_S if i < n / 8 => G::Q5K,
                _ => ty,
            };
        }
        TensorKind::AttnOutput => {
            if ctx.n_expert == 8 {
                if matches!(r, R::Q2_K | R::Q3_K_S | R::Q3_K_M | R::Q4_K_S | R::Q4_K_M) {
                    ty = G::Q5K;
                }
            } else {
                ty = match r {
                    R::Q2_K => G::Q3K,
                    R::Q3_K_M => G::Q4K,
                    R::Q3_K_L => G::Q5K,
                    _ => ty,
                };
            }
        }
        _ => {}
    }
    ty
}

/// llama.cpp's fallback when a row is not a multiple of the block size
/// (`convert_incompatible_tensor`), from the recipe pass.
fn fallback(ty: GgmlType, row: usize) -> GgmlType {
    crate::passes::recipe::shape_fallback(ty, row).unwrap_or(ty)
}

fn ggml_bytes(ty: GgmlType, t: &TensorSpec) -> u64 {
    let row = t.row_len();
    let per_row = ty.row_bytes(row).unwrap_or(row * 2) as u64;
    per_row * t.n_rows()
}

/// Bytes of one tensor in a serving format.
fn serving_bytes(f: ServingFormat, t: &TensorSpec) -> u64 {
    let n = t.n_elements();
    let rows = t.n_rows();
    let row = t.row_len() as u64;
    let sixteen = 2 * n;
    match f {
        ServingFormat::F32 => 4 * n,
        ServingFormat::F16 | ServingFormat::Bf16 => sixteen,
        _ if !t.kind.is_linear() => sixteen,
        ServingFormat::Fp8 | ServingFormat::Int8 => n + 2 * rows,
        ServingFormat::Int4 => n.div_ceil(2) + 2 * rows * row.div_ceil(128),
        ServingFormat::Fp4 => n.div_ceil(2) + rows * row.div_ceil(16) + 4,
        ServingFormat::Mxfp4 => n.div_ceil(2) + rows * row.div_ceil(32),
    }
}

/// Count the bytes of `tensors` in `format`. `shape` supplies the model-wide
/// facts recipe rules consult.
pub fn weight_bytes(tensors: &[TensorSpec], shape: &Shape, format: WeightFormat) -> WeightBytes {
    let ctx = RecipeCtx {
        n_attn_v: tensors
            .iter()
            .filter(|t| t.kind == TensorKind::AttnV)
            .count(),
        n_ffn_down: tensors.iter().filter(|t| t.kind.is_ffn_down()).count(),
        n_expert: shape.n_expert,
        n_gqa: shape.n_head / shape.n_head_kv.max(1),
        is_70b: shape.family == "llama" && shape.n_layer == 80 && shape.n_head != shape.n_head_kv,
        has_output: tensors.iter().any(|t| t.kind == TensorKind::Output),
    };
    let mut counters = (0usize, 0usize);
    let mut wb = WeightBytes {
        embedding_is_output: shape.tied_embeddings || !ctx.has_output,
        ..WeightBytes::default()
    };
    for t in tensors {
        let (bytes, label) = if t.shape.len() < 2 || t.kind == TensorKind::Norm {
            // 1-D tensors stay f32 in GGUF; serving formats keep them 16-bit.
            match format {
                WeightFormat::Serving(f) if f != ServingFormat::F32 => {
                    (2 * t.n_elements(), "f16".to_string())
                }
                WeightFormat::Planned => {
                    let ty = t.planned.unwrap_or(GgmlType::F32);
                    (ggml_bytes(ty, t), ty.name().to_string())
                }
                _ => (4 * t.n_elements(), "f32".to_string()),
            }
        } else {
            match format {
                WeightFormat::Serving(f) => {
                    let label = if t.kind.is_linear()
                        || matches!(
                            f,
                            ServingFormat::F32 | ServingFormat::F16 | ServingFormat::Bf16
                        ) {
                        f.name()
                    } else {
                        "f16"
                    };
                    (serving_bytes(f, t), label.to_string())
                }
                WeightFormat::Planned => {
                    let ty = t.planned.unwrap_or(GgmlType::F16);
                    (ggml_bytes(ty, t), ty.name().to_string())
                }
                WeightFormat::Recipe(r) => {
                    let ty = if t.kind == TensorKind::Router {
                        GgmlType::F32
                    } else {
                        recipe_type(r, t, &ctx, &mut counters)
                    };
                    let fb = fallback(ty, t.row_len());
                    if fb != ty {
                        wb.fallbacks.push(format!(
                            "{}: {} -> {} (row {})",
                            t.name,
                            ty.name(),
                            fb.name(),
                            t.row_len()
                        ));
                    }
                    (ggml_bytes(fb, t), fb.name().to_string())
                }
            }
        };
        wb.total += bytes;
        *wb.by_type.entry(label).or_insert(0) += bytes;
        wb.params += t.n_elements();
        match t.kind {
            TensorKind::Embedding => {
                wb.embedding += bytes;
                if wb.embedding_is_output {
                    wb.matmul_params_dense += t.n_elements();
                }
            }
            k if k.is_expert() => {
                wb.experts += bytes;
                wb.matmul_params_experts += t.n_elements();
            }
            k => {
                wb.dense += bytes;
                if k != TensorKind::Norm {
                    wb.matmul_params_dense += t.n_elements();
                }
            }
        }
    }
    wb
}
