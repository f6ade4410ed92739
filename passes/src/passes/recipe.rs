//! `recipe`: llama.cpp's quantization mixtures ("Q4_K_M is a recipe, not a
//! type"): every tensor gets exactly the ggml type `llama-quantize` gives it
//! for the same model, options and importance-matrix presence.
//!
//! A port of `llama_tensor_get_type`, `llama_tensor_get_type_impl`,
//! `tensor_allows_quantization`, `tensor_type_fallback`,
//! `tensor_requires_imatrix` and the surrounding rules of
//! `llama_model_quantize_impl` in llama.cpp `src/llama-quant.cpp`, and of the
//! option parsing in `tools/quantize/quantize.cpp`, as of llama.cpp commit
//! `0c1e57098bba43ac29e6e3b677cdceebdd22334f` (2026-10-01; the one vendored
//! by llama-cpp-python 0.3.36, which made the goldens under
//! `fixtures/llama_cpp/`). Our own code; the rules are llama.cpp's.
//!
//! What must stay true:
//! - tensors are visited in llama.cpp's loader order (`weight_name_comparer`:
//!   non-block tensors first, then by block number, then by name), whatever
//!   the model's order, because the `attn_v` / `ffn_down` counters depend on
//!   it; a counter moves only where llama.cpp's moves (a tensor taken by a
//!   `--tensor-type` override, or any tensor under `--pure`, moves none);
//! - the row-length fallback runs after the mixture and after overrides, and
//!   every fallback is a note on its tensor plus a model note with the count;
//! - `--output-tensor-type` / `--token-embedding-type` win over everything
//!   and, as in llama.cpp, skip the fallback: an explicit type that cannot
//!   encode the row is refused (llama-quantize would abort mid-file);
//! - a tensor already quantized in the source is requantized only with
//!   `allow_requantize` (an unchanged type is copied, not requantized);
//! - `general.quantization_version` (2) and `general.file_type` (the llama
//!   ftype) are removed and appended at the end of the metadata, in that
//!   order, as `gguf_set_val_u32` does; split keys are removed. The
//!   `quantize.imatrix.*` keys (`formats::imatrix::quantize_metadata`) go
//!   after them.
//!
//! Where kiln's IR differs from llama.cpp's input (a GGUF on disk): a tensor
//! llama.cpp never quantizes keeps its source type, except that F16/BF16
//! 1-D tensors and norms become F32 as `convert_hf_to_gguf` writes them (for
//! a GGUF input such tensors are F32 already, so this only matters for
//! Hugging Face inputs, which llama-quantize cannot read at all).

use quant::GgmlType;
use regex::Regex;

use crate::error::PassError;
use crate::ir::{MetaValue, Model, Note, NoteKind, Role, SourceDType, TensorNode};
use crate::naming::{block_number, category, loader_order, Category};

use super::{Context, Pass};

const NAME: &str = "recipe";

/// llama.cpp's `enum llama_ftype`, restricted to the file types kiln writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ftype {
    AllF32,
    MostlyF16,
    MostlyBF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q2KS,
    Q3KS,
    Q3KM,
    Q3KL,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
    Q6K,
    IQ4NL,
    IQ4XS,
}

impl Ftype {
    pub const ALL: [Ftype; 20] = [
        Ftype::AllF32,
        Ftype::MostlyF16,
        Ftype::MostlyBF16,
        Ftype::Q4_0,
        Ftype::Q4_1,
        Ftype::Q5_0,
        Ftype::Q5_1,
        Ftype::Q8_0,
        Ftype::Q2K,
        Ftype::Q2KS,
        Ftype::Q3KS,
        Ftype::Q3KM,
        Ftype::Q3KL,
        Ftype::Q4KS,
        Ftype::Q4KM,
        Ftype::Q5KS,
        Ftype::Q5KM,
        Ftype::Q6K,
        Ftype::IQ4NL,
        Ftype::IQ4XS,
    ];

    /// The value llama.cpp writes as `general.file_type`.
    pub fn id(self) -> u32 {
        match self {
            Ftype::AllF32 => 0,
            Ftype::MostlyF16 => 1,
            Ftype::Q4_0 => 2,
            Ftype::Q4_1 => 3,
            Ftype::Q8_0 => 7,
            Ftype::Q5_0 => 8,
            Ftype::Q5_1 => 9,
            Ftype::Q2K => 10,
            Ftype::Q3KS => 11,
            Ftype::Q3KM => 12,
            Ftype::Q3KL => 13,
            Ftype::Q4KS => 14,
            Ftype::Q4KM => 15,
            Ftype::Q5KS => 16,
            Ftype::Q5KM => 17,
            Ftype::Q6K => 18,
            Ftype::Q2KS => 21,
            Ftype::IQ4NL => 25,
            Ftype::IQ4XS => 30,
            Ftype::MostlyBF16 => 32,
        }
    }

    /// llama-quantize's name for it (`QUANT_OPTIONS`).
    pub fn name(self) -> &'static str {
        match self {
            Ftype::AllF32 => "F32",
            Ftype::MostlyF16 => "F16",
            Ftype::MostlyBF16 => "BF16",
            Ftype::Q4_0 => "Q4_0",
            Ftype::Q4_1 => "Q4_1",
            Ftype::Q5_0 => "Q5_0",
            Ftype::Q5_1 => "Q5_1",
            Ftype::Q8_0 => "Q8_0",
            Ftype::Q2K => "Q2_K",
            Ftype::Q2KS => "Q2_K_S",
            Ftype::Q3KS => "Q3_K_S",
            Ftype::Q3KM => "Q3_K_M",
            Ftype::Q3KL => "Q3_K_L",
            Ftype::Q4KS => "Q4_K_S",
            Ftype::Q4KM => "Q4_K_M",
            Ftype::Q5KS => "Q5_K_S",
            Ftype::Q5KM => "Q5_K_M",
            Ftype::Q6K => "Q6_K",
            Ftype::IQ4NL => "IQ4_NL",
            Ftype::IQ4XS => "IQ4_XS",
        }
    }

    /// `llama_ftype_get_default_type`: the type of every tensor the mixture
    /// does not single out.
    pub fn default_type(self) -> GgmlType {
        match self {
            Ftype::AllF32 => GgmlType::F32,
            Ftype::MostlyF16 => GgmlType::F16,
            Ftype::MostlyBF16 => GgmlType::BF16,
            Ftype::Q4_0 => GgmlType::Q4_0,
            Ftype::Q4_1 => GgmlType::Q4_1,
            Ftype::Q5_0 => GgmlType::Q5_0,
            Ftype::Q5_1 => GgmlType::Q5_1,
            Ftype::Q8_0 => GgmlType::Q8_0,
            Ftype::Q2K | Ftype::Q2KS => GgmlType::Q2K,
            Ftype::Q3KS | Ftype::Q3KM | Ftype::Q3KL => GgmlType::Q3K,
            Ftype::Q4KS | Ftype::Q4KM => GgmlType::Q4K,
            Ftype::Q5KS | Ftype::Q5KM => GgmlType::Q5K,
            Ftype::Q6K => GgmlType::Q6K,
            Ftype::IQ4NL => GgmlType::IQ4NL,
            Ftype::IQ4XS => GgmlType::IQ4XS,
        }
    }
}

/// A llama.cpp preset, by the name the user gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipe {
    /// The option name as llama-quantize lists it (`Q4_K_M`; `Q4_K` for the alias).
    pub name: &'static str,
    pub ftype: Ftype,
}

/// llama-quantize's names, including its aliases `Q3_K`, `Q4_K`, `Q5_K` (the
/// `_M` mixtures: not the uniform types of the same name).
const NAMES: [(&str, Ftype); 23] = [
    ("Q4_0", Ftype::Q4_0),
    ("Q4_1", Ftype::Q4_1),
    ("Q5_0", Ftype::Q5_0),
    ("Q5_1", Ftype::Q5_1),
    ("Q2_K", Ftype::Q2K),
    ("Q2_K_S", Ftype::Q2KS),
    ("Q3_K", Ftype::Q3KM),
    ("Q3_K_S", Ftype::Q3KS),
    ("Q3_K_M", Ftype::Q3KM),
    ("Q3_K_L", Ftype::Q3KL),
    ("IQ4_NL", Ftype::IQ4NL),
    ("IQ4_XS", Ftype::IQ4XS),
    ("Q4_K", Ftype::Q4KM),
    ("Q4_K_S", Ftype::Q4KS),
    ("Q4_K_M", Ftype::Q4KM),
    ("Q5_K", Ftype::Q5KM),
    ("Q5_K_S", Ftype::Q5KS),
    ("Q5_K_M", Ftype::Q5KM),
    ("Q6_K", Ftype::Q6K),
    ("Q8_0", Ftype::Q8_0),
    ("F16", Ftype::MostlyF16),
    ("BF16", Ftype::MostlyBF16),
    ("F32", Ftype::AllF32),
];

/// A recipe by its llama.cpp name, case-insensitive (`q4_k_m`), or by its
/// ftype number (`15`), as llama-quantize's `try_parse_ftype` accepts.
pub fn parse_recipe(name: &str) -> Result<Recipe, String> {
    if let Some(&(n, ftype)) = NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        return Ok(Recipe { name: n, ftype });
    }
    if let Ok(id) = name.trim().parse::<u32>() {
        if let Some(&(n, ftype)) = NAMES.iter().find(|(_, f)| f.id() == id) {
            return Ok(Recipe { name: n, ftype });
        }
    }
    let known: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
    Err(format!(
        "unknown llama.cpp recipe `{name}`{} (known: {})",
        crate::suggest::did_you_mean(name, known.iter().copied()),
        known.join(", ")
    ))
}

/// One `--tensor-type REGEX=TYPE` argument, parsed as llama-quantize does:
/// the part before the first `=` is the pattern, lowercased (llama-quantize
/// lowercases the whole pattern, escapes included); the type is a ggml type
/// name, case-insensitive.
pub fn parse_tensor_type(arg: &str) -> Result<(String, GgmlType), String> {
    let (pattern, ty) = arg
        .split_once('=')
        .ok_or_else(|| format!("malformed tensor type `{arg}`: expected REGEX=TYPE"))?;
    if pattern.is_empty() {
        return Err(format!(
            "malformed tensor type `{arg}`: missing tensor name"
        ));
    }
    if ty.is_empty() {
        return Err(format!(
            "malformed tensor type `{arg}`: missing quantization type"
        ));
    }
    let ty: GgmlType = ty.parse()?;
    let pattern = pattern.to_ascii_lowercase();
    compile(&pattern)?;
    Ok((pattern, ty))
}

fn compile(pattern: &str) -> Result<Regex, String> {
    // llama.cpp uses std::regex (ECMAScript) with regex_search: unanchored.
    // The regex crate agrees on the syntax tensor patterns use (classes,
    // alternation, anchors, repetition); it refuses look-around and
    // back-references, which std::regex would accept.
    Regex::new(pattern).map_err(|e| format!("bad tensor-type pattern `{pattern}`: {e}"))
}

/// The options of llama-quantize that change which type a tensor gets.
#[derive(Debug, Clone, Default)]
pub struct RecipeOptions {
    /// `--tensor-type REGEX=TYPE`, in order; the first pattern found anywhere
    /// in the tensor name wins (ignored, as in llama.cpp, when the recipe's
    /// default type is not a quantized one: F32, F16, BF16).
    pub overrides: Vec<(String, GgmlType)>,
    /// `--output-tensor-type`.
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`.
    pub token_embedding_type: Option<GgmlType>,
    /// `--leave-output-tensor`: `output.weight` keeps its source type.
    pub leave_output_tensor: bool,
    /// `--pure`: no mixture, every quantizable tensor gets the default type
    /// (overrides and the row-length fallback still apply).
    pub pure: bool,
    /// `--allow-requantize`.
    pub allow_requantize: bool,
    /// An importance matrix will be used (`--imatrix`): some rules differ.
    pub imatrix_present: bool,
    /// `--dry-run`: a recipe that needs an importance matrix it does not have
    /// is planned with a note instead of refused.
    pub dry_run: bool,
}

/// The pass: choose every tensor's type as llama-quantize would.
#[derive(Debug)]
pub struct ApplyRecipe {
    pub recipe: Recipe,
    pub options: RecipeOptions,
    patterns: Vec<(Regex, GgmlType)>,
}

impl ApplyRecipe {
    /// Compile the override patterns once (an invalid one is refused here).
    pub fn new(recipe: Recipe, options: RecipeOptions) -> Result<ApplyRecipe, String> {
        let patterns = options
            .overrides
            .iter()
            .map(|(p, t)| compile(p).map(|r| (r, *t)))
            .collect::<Result<_, _>>()?;
        Ok(ApplyRecipe {
            recipe,
            options,
            patterns,
        })
    }
}

/// `ggml_n_dims`: dimensions up to the last one that is not 1.
fn n_dims(shape: &[usize]) -> usize {
    // shape is row-major; ggml's ne is its reverse.
    let ne: Vec<usize> = shape.iter().rev().copied().collect();
    (1..ne.len())
        .rev()
        .find(|&i| ne[i] > 1)
        .map(|i| i + 1)
        .unwrap_or(1)
}

/// `tensor_allows_quantization`: false for tensors llama.cpp never quantizes.
pub fn allows_quantization(
    name: &str,
    shape: &[usize],
    arch: &str,
    leave_output_tensor: bool,
) -> bool {
    if n_dims(shape) < 2 || !name.ends_with("weight") {
        return false;
    }
    let contains_any = |parts: &[&str]| parts.iter().any(|p| name.contains(p));
    if name.contains("_norm.weight") || (leave_output_tensor && name == "output.weight") {
        return false;
    }
    if contains_any(&[
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ]) {
        return false;
    }
    if name == "position_embd.weight" || name == "token_types.weight" {
        return false;
    }
    if arch == "glm5-next"
        && contains_any(&[
            "hc_",
            "indexer.attn_q_b",
            "indexer.attn_k",
            "indexer.proj",
            "indexer_compressor_gate",
            "indexer_compressor_ape",
            "ssm_f_a.weight",
            "ssm_f_b.weight",
            "ssm_g_a.weight",
            "ssm_g_b.weight",
            "ssm_beta.weight",
            "attn_kv_a_mqa.weight",
            "attn_k_b.weight",
            "attn_v_b.weight",
        ])
    {
        return false;
    }
    true
}

/// Whether `ty`'s block divides a row of `row_len` values.
fn fits(ty: GgmlType, row_len: usize) -> bool {
    ty.row_bytes(row_len).is_some()
}

/// `tensor_type_fallback`: the type used when `ty`'s block does not divide
/// the row length (`None` when it does). Same table as llama.cpp; a 32-block
/// type, or a fallback that still does not fit, becomes F16.
pub fn shape_fallback(ty: GgmlType, row_len: usize) -> Option<GgmlType> {
    if fits(ty, row_len) {
        return None;
    }
    let next = match ty {
        GgmlType::IQ4XS => GgmlType::IQ4NL,
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        other => other,
    };
    Some(if fits(next, row_len) {
        next
    } else {
        GgmlType::F16
    })
}

/// `use_more_bits`: the first and last eighth of the layers and every third
/// one in between.
pub fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// What llama.cpp knows about the model when it picks types.
struct ModelFacts<'a> {
    arch: &'a str,
    n_layer: i64,
    n_gqa: i64,
    n_expert: i64,
    is_70b: bool,
}

/// `quantize_state_impl`: the counters.
#[derive(Default)]
struct State {
    n_attention_wv: i64,
    i_attention_wv: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
    n_fallback: usize,
    has_tied_embeddings: bool,
}

struct Ctx<'a> {
    ftype: Ftype,
    opts: &'a RecipeOptions,
    facts: ModelFacts<'a>,
}

impl Ctx<'_> {
    /// `layer_info`: the counter, or for MoE models the block number parsed
    /// from the name (experts are not consecutive in old Mixtral files).
    fn layer_info(&self, counter: i64, name: &str) -> Result<(i64, i64), String> {
        let n_layer = self.facts.n_layer;
        if self.facts.n_expert > 1 {
            let i = block_number(name)
                .ok_or_else(|| format!("failed to determine layer for tensor {name}"))?;
            if i < 0 || i >= n_layer {
                return Err(format!(
                    "bad layer {i} for tensor {name}; must be in [0, {n_layer})"
                ));
            }
            return Ok((i, n_layer));
        }
        Ok((counter, n_layer))
    }

    /// `llama_tensor_get_type_impl`, for the ftypes kiln writes.
    fn mixture(
        &self,
        st: &mut State,
        mut ty: GgmlType,
        name: &str,
        row_len: usize,
        cat: Category,
    ) -> Result<GgmlType, String> {
        use Ftype as F;
        use GgmlType as T;
        let ftype = self.ftype;
        let f = &self.facts;
        let falcon = f.arch == "falcon";
        let has_imatrix = self.opts.imatrix_present;

        if f.arch == "glm5-next"
            && (name.contains("attn_q_a")
                || name.contains("attn_q_b")
                || name.contains("nextn.eh_proj"))
            && !matches!(ty, T::F32 | T::BF16 | T::F16)
        {
            return Ok(T::Q8_0);
        }

        if cat == Category::Output || (st.has_tied_embeddings && cat == Category::TokenEmbd) {
            if let Some(t) = self.opts.output_tensor_type {
                ty = t;
            } else if falcon || !fits(ty, row_len) {
                ty = T::Q8_0;
            } else if ty != T::Q8_0 {
                ty = T::Q6K;
            }
        } else if cat == Category::TokenEmbd {
            if let Some(t) = self.opts.token_embedding_type {
                ty = t;
            }
        } else if cat.is_attn_v_like() {
            if ftype == F::Q2K {
                ty = if f.n_gqa >= 4 { T::Q4K } else { T::Q3K };
            } else if ftype == F::Q2KS && f.n_gqa >= 4 {
                ty = T::Q4K;
            } else if ftype == F::Q3KM {
                ty = if st.i_attention_wv < 2 {
                    T::Q5K
                } else {
                    T::Q4K
                };
            } else if ftype == F::Q3KL || (matches!(ftype, F::IQ4NL | F::IQ4XS) && f.n_gqa >= 4) {
                ty = T::Q5K;
            } else if matches!(ftype, F::Q4KM | F::Q5KM)
                && use_more_bits(st.i_attention_wv, st.n_attention_wv)
            {
                ty = T::Q6K;
            } else if ftype == F::Q4KS && st.i_attention_wv < 4 {
                ty = T::Q5K;
            }
            if f.is_70b && matches!(ty, T::Q3K | T::Q4K) {
                // 8 heads share each attn_v in the 70B models: more bits are cheap.
                ty = T::Q5K;
            }
            if f.n_expert == 8 {
                ty = T::Q8_0;
            }
            st.i_attention_wv += 1;
        } else if cat == Category::AttnK {
            if f.n_expert == 8 {
                ty = T::Q8_0;
            }
        } else if cat == Category::AttnQ {
            // Only the IQ3 mixtures change attn_q.
        } else if cat == Category::FfnDown {
            let (i_layer, n_layer) = self.layer_info(st.i_ffn_down, name)?;
            if ftype == F::Q2K {
                ty = T::Q3K;
            } else if ftype == F::Q2KS {
                if i_layer < n_layer / 8 {
                    ty = T::Q4K;
                }
            } else if ftype == F::Q3KM {
                ty = if i_layer < n_layer / 16 {
                    T::Q5K
                } else if !falcon || use_more_bits(i_layer, n_layer) {
                    T::Q4K
                } else {
                    T::Q3K
                };
            } else if ftype == F::Q3KL {
                ty = if falcon { T::Q4K } else { T::Q5K };
            } else if ftype == F::Q4KM {
                if falcon {
                    ty = if i_layer < n_layer / 16 {
                        T::Q6K
                    } else if use_more_bits(i_layer, n_layer) {
                        T::Q5K
                    } else {
                        T::Q4K
                    };
                } else if use_more_bits(i_layer, n_layer) {
                    ty = T::Q6K;
                }
            } else if i_layer < n_layer / 8 && matches!(ftype, F::IQ4NL | F::IQ4XS) && !has_imatrix
            {
                ty = T::Q5K;
            } else if ftype == F::Q5KM && use_more_bits(i_layer, n_layer) {
                ty = T::Q6K;
            } else if ftype == F::Q4KS && !falcon && i_layer < n_layer / 8 {
                ty = T::Q5K;
            } else if matches!(ftype, F::Q4_0 | F::Q5_0) && has_imatrix && i_layer < n_layer / 8 {
                // llama.cpp guards the first ffn_down layers only with an
                // imatrix, so that a file without one is what it always was.
                ty = if ftype == F::Q4_0 { T::Q4_1 } else { T::Q5_1 };
            }
            st.i_ffn_down += 1;
        } else if cat == Category::AttnOutput {
            if !falcon {
                if f.n_expert == 8 {
                    if matches!(
                        ftype,
                        F::Q2K | F::Q3KS | F::Q3KM | F::IQ4NL | F::Q4KS | F::Q4KM | F::IQ4XS
                    ) {
                        ty = T::Q5K;
                    }
                } else if ftype == F::Q2K {
                    ty = T::Q3K;
                } else if ftype == F::Q3KM {
                    ty = T::Q4K;
                } else if ftype == F::Q3KL {
                    ty = T::Q5K;
                }
            } else if ftype == F::Q3KL {
                ty = T::Q4K;
            }
        } else if cat == Category::AttnQkv {
            // Unreachable in llama.cpp too: attn_qkv is attn_v-like and taken
            // by that branch first.
        } else if cat == Category::FfnGate {
            self.layer_info(st.i_ffn_gate, name)?;
            st.i_ffn_gate += 1;
        } else if cat == Category::FfnUp {
            self.layer_info(st.i_ffn_up, name)?;
            st.i_ffn_up += 1;
        }
        Ok(ty)
    }
}

/// The type of one tensor llama.cpp never quantizes (see the module doc).
/// An MoE router read from a Hugging Face checkpoint (its source name is
/// not its GGUF name) is F32, as `convert_hf_to_gguf.py` writes
/// `ffn_gate_inp`; from a GGUF it keeps its type, as llama-quantize does.
pub fn kept_type(t: &TensorNode) -> GgmlType {
    let hf_router = t.role == Role::FfnGateInp && t.source_name != t.name;
    match t.source.dtype {
        SourceDType::F16 | SourceDType::BF16
            if n_dims(&t.shape) < 2 || t.name.contains("_norm.weight") || hf_router =>
        {
            GgmlType::F32
        }
        d => d.ggml(),
    }
}

/// `tensor_requires_imatrix`, for the ftypes kiln writes: the Q2_K tensors
/// of a Q2_K_S file (token_embd and output excepted).
fn requires_imatrix(name: &str, ty: GgmlType, ftype: Ftype) -> bool {
    !matches!(category(name), Category::TokenEmbd | Category::Output)
        && ty == GgmlType::Q2K
        && ftype == Ftype::Q2KS
}

/// Whether the model is what llama.cpp calls `LLM_TYPE_70B` (its attn_v rule).
fn is_70b(arch: &str, n_layer: usize, n_head: usize, n_head_kv: usize) -> bool {
    match arch {
        "llama" => n_layer == 80 && n_head != n_head_kv,
        "deci" | "olmo" | "qwen2" => n_layer == 80,
        "jais2" => n_layer == 68,
        _ => false,
    }
}

impl Pass for ApplyRecipe {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, _cx: &Context<'_>) -> Result<(), PassError> {
        let err = |tensor: Option<&str>, reason: String| PassError::new(NAME, tensor, reason);
        let arch = model.arch.as_ref().ok_or_else(|| {
            err(
                None,
                "a llama.cpp recipe needs the model's architecture (block count, heads)".into(),
            )
        })?;
        let ftype = self.recipe.ftype;
        let default_type = ftype.default_type();
        let facts = ModelFacts {
            arch: &arch.family,
            n_layer: arch.n_layer as i64,
            n_gqa: arch.n_head.checked_div(arch.n_head_kv).unwrap_or(0) as i64,
            n_expert: arch.n_expert as i64,
            is_70b: is_70b(&arch.family, arch.n_layer, arch.n_head, arch.n_head_kv),
        };
        let ctx = Ctx {
            ftype,
            opts: &self.options,
            facts,
        };
        let opts = &self.options;

        let mut st = State {
            n_attention_wv: model
                .tensors
                .iter()
                .filter(|t| category(&t.name).is_attn_v_like())
                .count() as i64,
            has_tied_embeddings: !model
                .tensors
                .iter()
                .any(|t| category(&t.name) == Category::Output),
            ..State::default()
        };

        let mut order: Vec<usize> = (0..model.tensors.len()).collect();
        order.sort_by(|&a, &b| loader_order(&model.tensors[a].name, &model.tensors[b].name));

        let mut needs_imatrix: Vec<String> = Vec::new();
        for i in order {
            let t = &mut model.tensors[i];
            let name = t.name.clone();
            let cat = category(&name);
            let allows =
                allows_quantization(&name, &t.shape, ctx.facts.arch, opts.leave_output_tensor);
            let ty = if !allows {
                kept_type(t)
            } else if let (Some(te), Category::TokenEmbd) = (opts.token_embedding_type, cat) {
                // per_layer_token_embd follows --token-embedding-type unless an
                // override names it.
                let named = name == "per_layer_token_embd.weight"
                    && self.patterns.iter().any(|(r, _)| r.is_match(&name));
                if named {
                    choose(&ctx, &self.patterns, &mut st, t, default_type, cat)?
                } else {
                    explicit(t, te, "--token-embedding-type")?
                }
            } else if let (Some(to), Category::Output) = (opts.output_tensor_type, cat) {
                explicit(t, to, "--output-tensor-type")?
            } else {
                choose(&ctx, &self.patterns, &mut st, t, default_type, cat)?
            };

            if allows && requires_imatrix(&name, ty, ftype) && !opts.imatrix_present {
                needs_imatrix.push(name.clone());
            }
            if let SourceDType::Ggml(src) = t.source.dtype {
                if src.is_quantized() && src != ty && !opts.allow_requantize {
                    return Err(err(
                        Some(&t.source_name),
                        format!("already quantized as {src}; converting it to {ty} requantizes and loses quality: pass --allow-requantize to do it anyway"),
                    ));
                }
            }
            if !ty.can_encode() {
                return Err(err(
                    Some(&name),
                    format!(
                        "llama.cpp's {} gives it {ty}, which kiln cannot encode yet",
                        self.recipe.name
                    ),
                ));
            }
            t.encoding = Some(ty.into());
        }

        if let Some(first) = needs_imatrix.first() {
            let msg = format!(
                "{} needs an importance matrix for its {} q2_K tensor(s) (first: `{first}`); llama-quantize refuses it without --imatrix",
                self.recipe.name,
                needs_imatrix.len()
            );
            if !opts.dry_run {
                return Err(err(None, msg));
            }
            model.notes.push(Note::info(msg));
        }
        if st.n_fallback > 0 {
            model.notes.push(Note::info(format!(
                "{} of {} tensor(s) required fallback quantization (row length not a multiple of the block size)",
                st.n_fallback,
                model.tensors.len()
            )));
        }
        if !opts.overrides.is_empty() && !default_type.is_quantized() {
            model.notes.push(Note::info(format!(
                "--tensor-type ignored: llama.cpp applies overrides only when the recipe's default type is quantized, and {}'s is {default_type}",
                self.recipe.name
            )));
        }

        stamp(&mut model.metadata, ftype);
        Ok(())
    }
}

/// The keys llama-quantize rewrites: split keys and the alignment removed,
/// `general.quantization_version` (2) and `general.file_type` appended last.
pub(crate) fn stamp(md: &mut crate::ir::Metadata, ftype: Ftype) {
    for key in [
        "split.no",
        "split.count",
        "split.tensors.count",
        "general.alignment",
    ] {
        md.remove(key);
    }
    md.remove("general.quantization_version");
    md.set("general.quantization_version", MetaValue::U32(2));
    md.remove("general.file_type");
    md.set("general.file_type", MetaValue::U32(ftype.id()));
}

/// An explicit `--output-tensor-type` / `--token-embedding-type`: no
/// fallback in llama.cpp, so a type that cannot encode the row is refused.
fn explicit(t: &TensorNode, ty: GgmlType, flag: &str) -> Result<GgmlType, PassError> {
    if !fits(ty, t.row_len()) {
        return Err(PassError::new(
            NAME,
            Some(&t.name),
            format!(
                "{flag} {ty}: row length {} is not a multiple of {ty}'s block of {} (llama-quantize applies no fallback to this option and would fail)",
                t.row_len(),
                ty.block_size()
            ),
        ));
    }
    Ok(ty)
}

/// The body of `llama_tensor_get_type` for a quantizable tensor: overrides,
/// then the mixture, then the row-length fallback.
fn choose(
    ctx: &Ctx<'_>,
    patterns: &[(Regex, GgmlType)],
    st: &mut State,
    t: &mut TensorNode,
    default_type: GgmlType,
    cat: Category,
) -> Result<GgmlType, PassError> {
    let mut ty = default_type;
    if !default_type.is_quantized() {
        return Ok(ty);
    }
    let mut manual = false;
    if let Some(&(ref r, qt)) = patterns.iter().find(|(r, _)| r.is_match(&t.name)) {
        if qt != ty {
            t.notes.push(Note::new(
                NoteKind::Override {
                    pattern: r.as_str().to_string(),
                    from: ty.into(),
                    to: qt.into(),
                },
                format!("--tensor-type `{}`: {ty} -> {qt}", r.as_str()),
            ));
        }
        ty = qt;
        manual = true;
    }
    if !manual && !ctx.opts.pure {
        ty = ctx
            .mixture(st, ty, &t.name, t.row_len(), cat)
            .map_err(|e| PassError::new(NAME, Some(&t.name), e))?;
    }
    if let Some(fb) = shape_fallback(ty, t.row_len()) {
        st.n_fallback += 1;
        t.notes.push(Note::new(
            NoteKind::Fallback {
                wanted: ty.into(),
                used: fb.into(),
                row_len: t.row_len(),
            },
            format!(
                "row length {} is not a multiple of {} (required for {ty}): falling back to {fb}",
                t.row_len(),
                ty.block_size()
            ),
        ));
        ty = fb;
    }
    Ok(ty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Arch, Metadata, Role, Source};

    fn arch(
        n_layer: usize,
        hidden: usize,
        n_head: usize,
        n_head_kv: usize,
        ffn: usize,
        vocab: usize,
        n_expert: usize,
    ) -> Arch {
        Arch {
            family: "llama".into(),
            hf_architecture: None,
            n_layer,
            hidden,
            n_head,
            n_head_kv,
            head_dim: hidden / n_head,
            ffn,
            vocab,
            context_length: 2048,
            rope_theta: 10000.0,
            rms_eps: 1e-5,
            tied_embeddings: false,
            n_expert,
            n_expert_used: 0,
            ..Arch::default()
        }
    }

    fn node(name: &str, shape: &[usize], dtype: SourceDType) -> TensorNode {
        TensorNode {
            name: name.into(),
            source_name: name.into(),
            shape: shape.to_vec(),
            role: Role::Other,
            layer: None,
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

    /// A llama-family model in GGUF naming and llama.cpp's loader order.
    fn llama(a: Arch, tied: bool) -> Model {
        let (h, kv, f) = (a.hidden, a.n_head_kv * a.head_dim, a.ffn);
        let d = SourceDType::F32;
        let mut tensors = vec![];
        if !tied {
            tensors.push(node("output.weight", &[a.vocab, h], d));
        }
        tensors.push(node("output_norm.weight", &[h], d));
        tensors.push(node("token_embd.weight", &[a.vocab, h], d));
        for i in 0..a.n_layer {
            let b = |s: &str| format!("blk.{i}.{s}");
            tensors.push(node(&b("attn_k.weight"), &[kv, h], d));
            tensors.push(node(&b("attn_norm.weight"), &[h], d));
            tensors.push(node(&b("attn_output.weight"), &[h, h], d));
            tensors.push(node(&b("attn_q.weight"), &[h, h], d));
            tensors.push(node(&b("attn_v.weight"), &[kv, h], d));
            if a.n_expert > 1 {
                tensors.push(node(&b("ffn_down_exps.weight"), &[a.n_expert, h, f], d));
                tensors.push(node(&b("ffn_gate_exps.weight"), &[a.n_expert, f, h], d));
                tensors.push(node(&b("ffn_gate_inp.weight"), &[a.n_expert, h], d));
                tensors.push(node(&b("ffn_up_exps.weight"), &[a.n_expert, f, h], d));
            } else {
                tensors.push(node(&b("ffn_down.weight"), &[h, f], d));
                tensors.push(node(&b("ffn_gate.weight"), &[f, h], d));
                tensors.push(node(&b("ffn_up.weight"), &[f, h], d));
            }
            tensors.push(node(&b("ffn_norm.weight"), &[h], d));
        }
        let mut metadata = Metadata::default();
        metadata.set("general.architecture", MetaValue::String("llama".into()));
        metadata.set("general.file_type", MetaValue::U32(0));
        metadata.set("llama.block_count", MetaValue::U32(a.n_layer as u32));
        Model {
            files: vec![],
            arch: Some(a),
            tensors,
            metadata,
            ..Model::default()
        }
    }

    /// SmolLM2-135M: hidden 576 (not a multiple of 256), 30 layers, 9 heads,
    /// 3 KV heads, FFN 1536, vocab 49152, tied embeddings.
    fn smollm2() -> Model {
        llama(arch(30, 576, 9, 3, 1536, 49152, 0), true)
    }

    /// A llama whose every row is a multiple of 256: 8 layers, GQA 4, untied.
    fn llama256() -> Model {
        llama(arch(8, 512, 8, 2, 1024, 1000, 0), false)
    }

    fn run_with(mut m: Model, recipe: &str, opts: RecipeOptions) -> Result<Model, PassError> {
        let pass = ApplyRecipe::new(parse_recipe(recipe).unwrap(), opts).unwrap();
        pass.run(&mut m, &Context::default())?;
        Ok(m)
    }

    fn apply(m: Model, recipe: &str) -> Model {
        run_with(m, recipe, RecipeOptions::default()).unwrap()
    }

    fn ty(m: &Model, name: &str) -> GgmlType {
        m.tensor(name)
            .unwrap_or_else(|| panic!("{name}"))
            .ggml_type()
            .unwrap()
    }

    /// Types of `blk.{i}.{part}` for every layer.
    fn per_layer(m: &Model, part: &str) -> Vec<GgmlType> {
        let n = m.arch.as_ref().unwrap().n_layer;
        (0..n).map(|i| ty(m, &format!("blk.{i}.{part}"))).collect()
    }

    use GgmlType as T;

    #[test]
    fn names_parse_case_insensitively_with_llama_quantize_aliases() {
        assert_eq!(parse_recipe("q4_k_m").unwrap().ftype, Ftype::Q4KM);
        assert_eq!(
            parse_recipe("Q4_K").unwrap(),
            Recipe {
                name: "Q4_K",
                ftype: Ftype::Q4KM
            }
        );
        assert_eq!(parse_recipe("q3_k").unwrap().ftype, Ftype::Q3KM);
        assert_eq!(parse_recipe("bf16").unwrap().ftype, Ftype::MostlyBF16);
        assert_eq!(parse_recipe("15").unwrap().ftype, Ftype::Q4KM);
        assert!(parse_recipe("q4_k_x").unwrap_err().contains("Q4_K_M"));
        for f in Ftype::ALL {
            assert_eq!(parse_recipe(f.name()).unwrap().ftype, f);
        }
    }

    #[test]
    fn use_more_bits_matches_llama_cpp() {
        let got: Vec<i64> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(got, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }

    #[test]
    fn fallback_table() {
        assert_eq!(shape_fallback(T::Q4K, 576), Some(T::Q5_0));
        assert_eq!(shape_fallback(T::Q5K, 576), Some(T::Q5_1));
        assert_eq!(shape_fallback(T::Q6K, 576), Some(T::Q8_0));
        assert_eq!(shape_fallback(T::Q2K, 576), Some(T::Q4_0));
        assert_eq!(shape_fallback(T::Q3K, 576), Some(T::Q4_0));
        assert_eq!(shape_fallback(T::IQ4XS, 576), Some(T::IQ4NL));
        assert_eq!(shape_fallback(T::Q4K, 1536), None);
        assert_eq!(shape_fallback(T::Q4K, 100), Some(T::F16));
        assert_eq!(shape_fallback(T::Q8_0, 100), Some(T::F16));
    }

    #[test]
    fn smollm2_q4_k_m() {
        let m = apply(smollm2(), "Q4_K_M");
        // Tied embeddings: token_embd takes output's rule; 576 % 256 != 0 -> Q8_0.
        assert_eq!(ty(&m, "token_embd.weight"), T::Q8_0);
        assert_eq!(ty(&m, "output_norm.weight"), T::F32);
        let more = [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29];
        let want = |hi: T, lo: T| -> Vec<T> {
            (0..30)
                .map(|i| if more.contains(&i) { hi } else { lo })
                .collect()
        };
        // attn_v: Q6_K where use_more_bits, else Q4_K; both fall back (row 576).
        assert_eq!(per_layer(&m, "attn_v.weight"), want(T::Q8_0, T::Q5_0));
        // ffn_down rows are 1536 = 6 * 256: no fallback.
        assert_eq!(per_layer(&m, "ffn_down.weight"), want(T::Q6K, T::Q4K));
        for part in ["attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"] {
            assert_eq!(
                per_layer(&m, &format!("{part}.weight")),
                vec![T::Q5_0; 30],
                "{part}"
            );
        }
        assert_eq!(per_layer(&m, "attn_norm.weight"), vec![T::F32; 30]);
        assert!(
            m.notes
                .iter()
                .any(|n| n.text.starts_with("180 of 272 tensor(s) required fallback")),
            "{:?}",
            m.notes
        );
        assert!(m.tensor("blk.0.attn_q.weight").unwrap().notes[0]
            .text
            .contains("falling back to q5_0"));
        assert_eq!(
            m.metadata.get("general.file_type"),
            Some(&MetaValue::U32(15))
        );
        // Re-appended at the end, in llama.cpp's order.
        let keys: Vec<&str> = m.metadata.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            &keys[keys.len() - 2..],
            &["general.quantization_version", "general.file_type"]
        );
    }

    #[test]
    fn smollm2_q4_0_and_q2_k() {
        let m = apply(smollm2(), "q4_0");
        // output rule: 576 % 32 == 0 and Q4_0 != Q8_0 -> Q6_K, which falls back to Q8_0.
        assert_eq!(ty(&m, "token_embd.weight"), T::Q8_0);
        assert_eq!(per_layer(&m, "ffn_down.weight"), vec![T::Q4_0; 30]);
        assert_eq!(per_layer(&m, "attn_v.weight"), vec![T::Q4_0; 30]);
        assert!(m.notes.iter().any(|n| n.text.starts_with("1 of 272")));

        let m = apply(smollm2(), "Q2_K");
        assert_eq!(ty(&m, "token_embd.weight"), T::Q8_0);
        // n_gqa = 3 < 4: attn_v Q3_K -> Q4_0 (row 576).
        assert_eq!(per_layer(&m, "attn_v.weight"), vec![T::Q4_0; 30]);
        assert_eq!(per_layer(&m, "ffn_down.weight"), vec![T::Q3K; 30]);
        assert_eq!(per_layer(&m, "attn_output.weight"), vec![T::Q4_0; 30]);
        assert_eq!(per_layer(&m, "ffn_up.weight"), vec![T::Q4_0; 30]);
        assert_eq!(
            m.metadata.get("general.file_type"),
            Some(&MetaValue::U32(10))
        );
    }

    #[test]
    fn imatrix_changes_q4_0_ffn_down_of_the_first_eighth() {
        let opts = RecipeOptions {
            imatrix_present: true,
            ..Default::default()
        };
        let m = run_with(smollm2(), "Q4_0", opts.clone()).unwrap();
        let mut want = vec![T::Q4_0; 30];
        want[..3].fill(T::Q4_1);
        assert_eq!(per_layer(&m, "ffn_down.weight"), want);
        let m = run_with(smollm2(), "Q5_0", opts).unwrap();
        assert_eq!(ty(&m, "blk.2.ffn_down.weight"), T::Q5_1);
        assert_eq!(ty(&m, "blk.3.ffn_down.weight"), T::Q5_0);
    }

    #[test]
    fn iq4_recipes_depend_on_the_imatrix() {
        let m = apply(llama256(), "IQ4_XS");
        // GQA 4: attn_v Q5_K; without an imatrix the first eighth of ffn_down is Q5_K.
        assert_eq!(per_layer(&m, "attn_v.weight"), vec![T::Q5K; 8]);
        let mut want = vec![T::IQ4XS; 8];
        want[0] = T::Q5K;
        assert_eq!(per_layer(&m, "ffn_down.weight"), want);
        assert_eq!(ty(&m, "output.weight"), T::Q6K);
        let m = run_with(
            llama256(),
            "IQ4_XS",
            RecipeOptions {
                imatrix_present: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(per_layer(&m, "ffn_down.weight"), vec![T::IQ4XS; 8]);
        // Row 576: IQ4_XS falls back to IQ4_NL.
        let m = apply(smollm2(), "IQ4_XS");
        assert_eq!(ty(&m, "blk.4.attn_q.weight"), T::IQ4NL);
        assert_eq!(
            m.metadata.get("general.file_type"),
            Some(&MetaValue::U32(30))
        );
    }

    #[test]
    fn llama256_mixtures() {
        let more = |hi: T, lo: T| -> Vec<T> {
            (0..8)
                .map(|i| if [0, 3, 6, 7].contains(&i) { hi } else { lo })
                .collect()
        };

        let m = apply(llama256(), "Q4_K_M");
        assert_eq!(ty(&m, "output.weight"), T::Q6K);
        assert_eq!(ty(&m, "token_embd.weight"), T::Q4K);
        assert_eq!(per_layer(&m, "attn_v.weight"), more(T::Q6K, T::Q4K));
        assert_eq!(per_layer(&m, "ffn_down.weight"), more(T::Q6K, T::Q4K));
        assert_eq!(per_layer(&m, "attn_q.weight"), vec![T::Q4K; 8]);
        assert!(!m.notes.iter().any(|n| n.text.contains("fallback")));

        let m = apply(llama256(), "Q5_K_M");
        assert_eq!(per_layer(&m, "attn_v.weight"), more(T::Q6K, T::Q5K));
        assert_eq!(ty(&m, "token_embd.weight"), T::Q5K);

        let m = apply(llama256(), "Q4_K_S");
        assert_eq!(
            per_layer(&m, "attn_v.weight"),
            [vec![T::Q5K; 4], vec![T::Q4K; 4]].concat()
        );
        assert_eq!(
            per_layer(&m, "ffn_down.weight"),
            [vec![T::Q5K; 1], vec![T::Q4K; 7]].concat()
        );

        let m = apply(llama256(), "Q3_K_M");
        assert_eq!(
            per_layer(&m, "attn_v.weight"),
            [vec![T::Q5K; 2], vec![T::Q4K; 6]].concat()
        );
        assert_eq!(per_layer(&m, "ffn_down.weight"), vec![T::Q4K; 8]);
        assert_eq!(per_layer(&m, "attn_output.weight"), vec![T::Q4K; 8]);
        assert_eq!(per_layer(&m, "ffn_up.weight"), vec![T::Q3K; 8]);

        let m = apply(llama256(), "Q3_K_L");
        assert_eq!(per_layer(&m, "attn_v.weight"), vec![T::Q5K; 8]);
        assert_eq!(per_layer(&m, "ffn_down.weight"), vec![T::Q5K; 8]);
        assert_eq!(per_layer(&m, "attn_output.weight"), vec![T::Q5K; 8]);

        let m = apply(llama256(), "Q3_K_S");
        assert_eq!(per_layer(&m, "attn_v.weight"), vec![T::Q3K; 8]);
        assert_eq!(ty(&m, "output.weight"), T::Q6K);

        // GQA 4: Q2_K's attn_v gets Q4_K.
        let m = apply(llama256(), "Q2_K");
        assert_eq!(per_layer(&m, "attn_v.weight"), vec![T::Q4K; 8]);
        assert_eq!(per_layer(&m, "ffn_down.weight"), vec![T::Q3K; 8]);
        assert_eq!(per_layer(&m, "attn_output.weight"), vec![T::Q3K; 8]);
        assert_eq!(per_layer(&m, "attn_q.weight"), vec![T::Q2K; 8]);

        let m = apply(llama256(), "Q6_K");
        assert!(m
            .tensors
            .iter()
            .filter(|t| t.shape.len() == 2)
            .all(|t| t.ggml_type() == Some(T::Q6K)));
        let m = apply(llama256(), "Q8_0");
        assert!(m
            .tensors
            .iter()
            .filter(|t| t.shape.len() == 2)
            .all(|t| t.ggml_type() == Some(T::Q8_0)));
        let m = apply(llama256(), "Q5_1");
        assert_eq!(ty(&m, "output.weight"), T::Q6K);
        assert_eq!(ty(&m, "blk.0.ffn_down.weight"), T::Q5_1);
        for (r, t) in [("F16", T::F16), ("BF16", T::BF16), ("F32", T::F32)] {
            let m = apply(llama256(), r);
            assert_eq!(ty(&m, "output.weight"), t);
            assert_eq!(ty(&m, "blk.3.attn_v.weight"), t);
            assert_eq!(ty(&m, "blk.3.attn_norm.weight"), T::F32);
        }
    }

    #[test]
    fn q2_k_s_needs_an_imatrix() {
        let e = run_with(llama256(), "Q2_K_S", RecipeOptions::default()).unwrap_err();
        assert!(e.reason.contains("importance matrix"), "{e}");
        let m = run_with(
            llama256(),
            "Q2_K_S",
            RecipeOptions {
                dry_run: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(m.notes.iter().any(|n| n.text.contains("importance matrix")));
        let m = run_with(
            llama256(),
            "Q2_K_S",
            RecipeOptions {
                imatrix_present: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(per_layer(&m, "attn_v.weight"), vec![T::Q4K; 8]);
        assert_eq!(
            per_layer(&m, "ffn_down.weight"),
            [vec![T::Q4K; 1], vec![T::Q2K; 7]].concat()
        );
        assert_eq!(
            m.metadata.get("general.file_type"),
            Some(&MetaValue::U32(21))
        );
    }

    #[test]
    fn moe_rules() {
        let m = apply(llama(arch(8, 512, 8, 8, 1024, 1000, 8), false), "Q4_K_M");
        assert_eq!(per_layer(&m, "attn_v.weight"), vec![T::Q8_0; 8]);
        assert_eq!(per_layer(&m, "attn_k.weight"), vec![T::Q8_0; 8]);
        assert_eq!(per_layer(&m, "attn_output.weight"), vec![T::Q5K; 8]);
        assert_eq!(per_layer(&m, "ffn_gate_inp.weight"), vec![T::F32; 8]);
        // Layers come from the names: use_more_bits(i, 8) -> 0, 3, 6, 7.
        let want: Vec<T> = (0..8)
            .map(|i| {
                if [0, 3, 6, 7].contains(&i) {
                    T::Q6K
                } else {
                    T::Q4K
                }
            })
            .collect();
        assert_eq!(per_layer(&m, "ffn_down_exps.weight"), want);
        assert_eq!(per_layer(&m, "ffn_up_exps.weight"), vec![T::Q4K; 8]);
    }

    #[test]
    fn overrides_first_match_wins_and_fallback_still_applies() {
        let (p1, t1) = parse_tensor_type("ATTN_V=Q8_0").unwrap();
        assert_eq!((p1.as_str(), t1), ("attn_v", T::Q8_0));
        let opts = RecipeOptions {
            overrides: vec![
                (p1, t1),
                ("attn_.*".into(), T::Q5_1),
                (r"blk\.1\.ffn_up".into(), T::Q6K),
            ],
            ..Default::default()
        };
        let m = run_with(smollm2(), "Q4_K_M", opts).unwrap();
        assert_eq!(per_layer(&m, "attn_v.weight"), vec![T::Q8_0; 30]);
        assert_eq!(per_layer(&m, "attn_q.weight"), vec![T::Q5_1; 30]);
        // Q6_K on a 576 row falls back to Q8_0.
        assert_eq!(ty(&m, "blk.1.ffn_up.weight"), T::Q8_0);
        assert_eq!(ty(&m, "blk.10.ffn_up.weight"), T::Q5_0);
        let notes = &m.tensor("blk.1.ffn_up.weight").unwrap().notes;
        assert!(
            notes[0].text.contains("q4_K -> q6_K")
                && notes[1].kind
                    == NoteKind::Fallback {
                        wanted: T::Q6K.into(),
                        used: T::Q8_0.into(),
                        row_len: 576
                    },
            "{notes:?}"
        );
        // Overrides never touch tensors llama.cpp does not quantize.
        assert_eq!(per_layer(&m, "attn_norm.weight"), vec![T::F32; 30]);
    }

    #[test]
    fn an_override_stops_the_counter_as_in_llama_cpp() {
        // blk.0.ffn_down is taken by the override, so the mixture's counter
        // does not move: blk.1 is seen as layer 0 and gets Q6_K.
        let opts = RecipeOptions {
            overrides: vec![(r"blk\.0\.ffn_down".into(), T::Q8_0)],
            ..Default::default()
        };
        let m = run_with(llama256(), "Q4_K_M", opts).unwrap();
        assert_eq!(ty(&m, "blk.0.ffn_down.weight"), T::Q8_0);
        assert_eq!(ty(&m, "blk.1.ffn_down.weight"), T::Q6K);
        assert_eq!(ty(&m, "blk.2.ffn_down.weight"), T::Q4K);
        assert_eq!(ty(&m, "blk.3.ffn_down.weight"), T::Q4K);
        assert_eq!(ty(&m, "blk.7.ffn_down.weight"), T::Q6K);
    }

    #[test]
    fn counters_follow_loader_order_not_model_order() {
        let mut shuffled = llama256();
        shuffled.tensors.reverse();
        let a = apply(shuffled, "Q4_K_M");
        let b = apply(llama256(), "Q4_K_M");
        for t in &b.tensors {
            assert_eq!(
                a.tensor(&t.name).unwrap().encoding,
                t.encoding,
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn output_and_embedding_options() {
        let opts = RecipeOptions {
            output_tensor_type: Some(T::Q8_0),
            token_embedding_type: Some(T::Q4K),
            ..Default::default()
        };
        let m = run_with(llama256(), "Q4_K_M", opts).unwrap();
        assert_eq!(ty(&m, "output.weight"), T::Q8_0);
        assert_eq!(ty(&m, "token_embd.weight"), T::Q4K);

        // Tied: token_embd takes --output-tensor-type, with the fallback.
        let opts = RecipeOptions {
            output_tensor_type: Some(T::Q6K),
            ..Default::default()
        };
        let m = run_with(smollm2(), "Q4_K_M", opts).unwrap();
        assert_eq!(ty(&m, "token_embd.weight"), T::Q8_0);

        // An explicit --token-embedding-type gets no fallback: refused.
        let opts = RecipeOptions {
            token_embedding_type: Some(T::Q4K),
            ..Default::default()
        };
        let e = run_with(smollm2(), "Q4_K_M", opts).unwrap_err();
        assert!(
            e.to_string().contains("token_embd.weight") && e.reason.contains("576"),
            "{e}"
        );

        let opts = RecipeOptions {
            leave_output_tensor: true,
            ..Default::default()
        };
        let m = run_with(llama256(), "Q4_K_M", opts).unwrap();
        assert_eq!(ty(&m, "output.weight"), T::F32);

        let opts = RecipeOptions {
            pure: true,
            ..Default::default()
        };
        let m = run_with(llama256(), "Q4_K_M", opts).unwrap();
        assert!(m
            .tensors
            .iter()
            .filter(|t| t.shape.len() == 2)
            .all(|t| t.ggml_type() == Some(T::Q4K)));
        assert_eq!(
            m.metadata.get("general.file_type"),
            Some(&MetaValue::U32(15))
        );
        let opts = RecipeOptions {
            pure: true,
            ..Default::default()
        };
        let m = run_with(smollm2(), "Q6_K", opts).unwrap();
        assert_eq!(ty(&m, "token_embd.weight"), T::Q8_0);
        assert_eq!(ty(&m, "blk.0.ffn_down.weight"), T::Q6K);
    }

    #[test]
    fn overrides_are_ignored_for_float_recipes() {
        let opts = RecipeOptions {
            overrides: vec![("attn_v".into(), T::Q8_0)],
            ..Default::default()
        };
        let m = run_with(llama256(), "F16", opts).unwrap();
        assert_eq!(ty(&m, "blk.0.attn_v.weight"), T::F16);
        assert!(m
            .notes
            .iter()
            .any(|n| n.text.contains("--tensor-type ignored")));
    }

    #[test]
    fn requantize_needs_permission() {
        let mut m = llama256();
        for t in &mut m.tensors {
            if t.shape.len() == 2 {
                t.source.dtype = SourceDType::Ggml(T::Q4_1);
            }
        }
        let e = run_with(m.clone(), "Q4_K_M", RecipeOptions::default()).unwrap_err();
        assert!(e.reason.contains("--allow-requantize"), "{e}");
        // The same type is copied, not requantized.
        let pure = RecipeOptions {
            pure: true,
            ..Default::default()
        };
        let q = run_with(m.clone(), "Q4_1", pure).unwrap();
        assert_eq!(ty(&q, "blk.0.attn_q.weight"), T::Q4_1);
        let q = run_with(
            m,
            "Q4_K_M",
            RecipeOptions {
                allow_requantize: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(ty(&q, "blk.0.attn_q.weight"), T::Q4K);
    }

    #[test]
    fn never_quantized_tensors() {
        assert!(!allows_quantization(
            "blk.0.attn_norm.weight",
            &[576, 576],
            "llama",
            false
        ));
        assert!(!allows_quantization(
            "blk.0.attn_q.bias",
            &[576, 576],
            "llama",
            false
        ));
        assert!(!allows_quantization(
            "blk.0.ffn_gate_inp.weight",
            &[8, 576],
            "llama",
            false
        ));
        assert!(!allows_quantization(
            "position_embd.weight",
            &[1024, 576],
            "llama",
            false
        ));
        assert!(!allows_quantization(
            "output.weight",
            &[100, 576],
            "llama",
            true
        ));
        // ggml_n_dims ignores trailing unit dimensions: [1, 576] is 1-D.
        assert!(!allows_quantization("x.weight", &[1, 576], "llama", false));
        assert!(allows_quantization("x.weight", &[576, 1], "llama", false));
        assert!(allows_quantization(
            "blk.0.ffn_down_exps.weight",
            &[8, 576, 1536],
            "llama",
            false
        ));
    }

    /// Every golden made by llama.cpp itself (fixtures/llama_cpp/goldens,
    /// see its README): rebuild the model from the golden's tensor list and
    /// hyperparameters, apply the same recipe and options, and compare every
    /// tensor's type and `general.file_type`.
    #[test]
    fn types_match_llama_cpp_goldens() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/llama_cpp/goldens");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        assert!(
            files.len() >= 100,
            "expected the committed goldens, found {}",
            files.len()
        );
        for path in &files {
            let g: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let file = path.file_name().unwrap().to_string_lossy();
            let hp = &g["hparams"];
            let n = |k: &str| hp[k].as_u64().unwrap() as usize;
            let mut a = arch(
                n("block_count"),
                n("embedding_length"),
                n("head_count"),
                n("head_count_kv"),
                n("feed_forward_length"),
                0,
                n("expert_count"),
            );
            a.family = hp["architecture"].as_str().unwrap().into();
            let gt = g["tensors"].as_array().unwrap();
            let tensors = gt
                .iter()
                .map(|t| {
                    let shape: Vec<usize> = t["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .collect();
                    node(t["name"].as_str().unwrap(), &shape, SourceDType::F32)
                })
                .collect();
            let mut m = Model {
                files: vec![],
                arch: Some(a),
                tensors,
                ..Model::default()
            };
            let o = &g["options"];
            let opt_ty = |k: &str| o[k].as_str().map(|s| s.parse::<GgmlType>().unwrap());
            let opts = RecipeOptions {
                overrides: o["tensor_type"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|v| parse_tensor_type(v.as_str().unwrap()).unwrap())
                            .collect()
                    })
                    .unwrap_or_default(),
                output_tensor_type: opt_ty("output_tensor_type"),
                token_embedding_type: opt_ty("token_embedding_type"),
                leave_output_tensor: o["leave_output_tensor"].as_bool().unwrap_or(false),
                pure: o["pure"].as_bool().unwrap_or(false),
                imatrix_present: !g["imatrix"].is_null(),
                ..Default::default()
            };
            let recipe = parse_recipe(g["recipe"].as_str().unwrap()).unwrap();
            ApplyRecipe::new(recipe, opts)
                .unwrap()
                .run(&mut m, &Context::default())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            for t in gt {
                let name = t["name"].as_str().unwrap();
                let want: GgmlType = t["type"].as_str().unwrap().parse().unwrap();
                assert_eq!(ty(&m, name), want, "{file}: {name}");
            }
            let ft = g["keys"]["general.file_type"].as_u64().unwrap() as u32;
            assert_eq!(
                m.metadata.get("general.file_type"),
                Some(&MetaValue::U32(ft)),
                "{file}"
            );
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(parse_tensor_type("attn_v").is_err());
        assert!(parse_tensor_type("=q8_0").is_err());
        assert!(parse_tensor_type("attn_v=").is_err());
        assert!(parse_tensor_type("attn_v=q9_9").is_err());
        assert!(parse_tensor_type("attn_(v=q8_0").is_err());
        assert!(ApplyRecipe::new(
            parse_recipe("q4_k_m").unwrap(),
            RecipeOptions {
                overrides: vec![("(".into(), T::Q8_0)],
                ..Default::default()
            }
        )
        .is_err());
    }
}
