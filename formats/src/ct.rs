//! The compressed-tensors container: Hugging Face safetensors with a
//! `quantization_config`, as vLLM's llm-compressor writes them (the layout
//! vLLM, TensorRT-LLM, tpu-inference, vllm-gaudi and QEfficient load).
//!
//! A [`Scheme`] is one of llm-compressor's data-free presets; [`assign`]
//! gives every Linear weight the scheme's encoding (or keeps it in the source
//! dtype, listed in `ignore`, where the scheme cannot hold it, with a note
//! saying why, as llm-compressor refuses those layers); [`CompressedTensors`]
//! lays out the safetensors file(s) with every stored tensor of every
//! encoding (`weight_packed`, `weight_scale`, `weight_zero_point`,
//! `weight_shape`, `weight_global_scale`) under its Hugging Face name, and
//! writes `config.json` with the `quantization_config` block and the
//! tokenizer files beside them. Values come from [`quant::ct`], bit-exact
//! with llm-compressor (`fixtures/compressed_tensors/`).
//!
//! What must stay true: tensors keep their Hugging Face names and layout (no
//! GGUF row permutation: [`assign`] clears transforms except the inverse
//! one, [`Transform::RopeUnpermute`], that a GGUF input gets from
//! `crate::ct_gguf` with its Hugging Face names and config); every piece is encoded
//! from rows or units of rows of one tensor, so the streaming engine's bounds
//! hold; a scheme's per-tensor constants (NVFP4's global scale, shared across
//! q/k/v and gate/up) come from [`scan_amax`] before anything is written.
//!
//! Long file: the schemes, their config groups (single and mixed precision),
//! the stored-tensor layout and the row and unit encoders must agree piece
//! for piece, so they stay in one module.

use std::collections::BTreeMap;
use std::path::Path;

use passes::{Model, Role, SourceDType, TensorNode, Transform};
use quant::ct::{self as q, Dtype, Fp8Grain, Weights};
use quant::{Encoding, Fp4Kind, Fp8Range, Fp8Scales, Fp8Spec, Group, IntSpec};
use serde_json::{json, Map, Value};

use crate::data::read_row;
use crate::error::{Error, Result};
use crate::mmap::MappedFile;
use crate::shards;
pub use crate::shards::{parse_size, DEFAULT_MAX_SHARD};
use crate::write::{Container, FileLayout, Placement, Unit};

/// The compressed-tensors version whose layout and config block kiln writes.
pub const CT_VERSION: &str = "0.19.0";

/// llm-compressor's data-free presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// int4 symmetric, group 128 (or the group given), `pack-quantized`.
    W4A16 { group: u32 },
    /// int4 asymmetric, group 128 (zero points packed along the output dimension).
    W4A16Asym { group: u32 },
    /// int8 symmetric, group 128, `pack-quantized`.
    W8A16 { group: u32 },
    /// int8 per channel with dynamic per-token int8 activations, `int-quantized`.
    W8A8,
    /// E4M3 per channel with dynamic per-token FP8 activations.
    Fp8Dynamic,
    /// E4M3 per 128 x 128 tile with dynamic per-group FP8 activations.
    Fp8Block,
    /// NVFP4 weights, 16-bit activations.
    Nvfp4A16,
    /// MXFP4 weights, 16-bit activations.
    Mxfp4A16,
    /// `FP8`: E4M3 weights with one scale per tensor and static per-tensor
    /// FP8 activations (`input_scale`, from calibration activations).
    Fp8Static,
    /// `NVFP4`: NVFP4 weights and activations (W4A4): the activations'
    /// global scale (`input_global_scale`) from calibration activations,
    /// their per-16 scales computed at run time.
    Nvfp4,
}

impl Scheme {
    /// Every preset name, as `--scheme` takes them.
    pub const NAMES: &'static [&'static str] = &[
        "W4A16",
        "W4A16_ASYM",
        "W8A16",
        "W8A8",
        "FP8_DYNAMIC",
        "FP8_BLOCK",
        "NVFP4A16",
        "MXFP4A16",
        "FP8",
        "NVFP4",
    ];

    /// A preset by llm-compressor's name (case-insensitive), with the group
    /// size for the integer schemes (`None`: 128).
    pub fn parse(name: &str, group: Option<u32>) -> std::result::Result<Scheme, String> {
        let g = group.unwrap_or(128);
        let s = match name.to_ascii_uppercase().as_str() {
            "W4A16" => Scheme::W4A16 { group: g },
            "W4A16_ASYM" => Scheme::W4A16Asym { group: g },
            "W8A16" => Scheme::W8A16 { group: g },
            "W8A8" | "INT8_W8A8" => Scheme::W8A8,
            "FP8_DYNAMIC" => Scheme::Fp8Dynamic,
            "FP8_BLOCK" => Scheme::Fp8Block,
            "NVFP4A16" => Scheme::Nvfp4A16,
            "MXFP4A16" | "MXFP4" => Scheme::Mxfp4A16,
            "FP8" => Scheme::Fp8Static,
            "NVFP4" => Scheme::Nvfp4,
            _ => {
                return Err(format!(
                    "unknown scheme `{name}`; kiln writes {}",
                    Scheme::NAMES.join(", ")
                ))
            }
        };
        if group.is_some()
            && !matches!(
                s,
                Scheme::W4A16 { .. } | Scheme::W4A16Asym { .. } | Scheme::W8A16 { .. }
            )
        {
            return Err(format!("`--group-size` applies to the integer schemes W4A16, W4A16_ASYM and W8A16, not `{name}`"));
        }
        if ![0, 32, 64, 128].contains(&g) {
            return Err(format!(
                "group size {g}: the runtimes take 32, 64 or 128 (or 0 for per channel)"
            ));
        }
        Ok(s)
    }

    /// The weights' encoding.
    pub fn encoding(self) -> Encoding {
        let group = |g: u32| {
            if g == 0 {
                Group::Channel
            } else {
                Group::Size(g)
            }
        };
        match self {
            Scheme::W4A16 { group: g } => Encoding::Int(IntSpec {
                bits: 4,
                group: group(g),
                zero_point: false,
            }),
            Scheme::W4A16Asym { group: g } => Encoding::Int(IntSpec {
                bits: 4,
                group: group(g),
                zero_point: true,
            }),
            Scheme::W8A16 { group: g } => Encoding::Int(IntSpec {
                bits: 8,
                group: group(g),
                zero_point: false,
            }),
            Scheme::W8A8 => Encoding::Int(IntSpec {
                bits: 8,
                group: Group::Channel,
                zero_point: false,
            }),
            Scheme::Fp8Dynamic => Encoding::Fp8(Fp8Spec {
                scales: Fp8Scales::Channel,
                range: Fp8Range::Fn448,
            }),
            Scheme::Fp8Block => Encoding::Fp8(Fp8Spec {
                scales: Fp8Scales::Block {
                    rows: 128,
                    cols: 128,
                },
                range: Fp8Range::Fn448,
            }),
            Scheme::Nvfp4A16 | Scheme::Nvfp4 => Encoding::Fp4(Fp4Kind::Nv),
            Scheme::Mxfp4A16 => Encoding::Fp4(Fp4Kind::Mx),
            Scheme::Fp8Static => Encoding::Fp8(Fp8Spec {
                scales: Fp8Scales::Tensor,
                range: Fp8Range::Fn448,
            }),
        }
    }

    /// Whether the scheme stores activation scales measured on calibration
    /// text (`input_scale`, `input_global_scale`): it needs `--text`.
    pub fn static_activations(self) -> bool {
        matches!(self, Scheme::Fp8Static | Scheme::Nvfp4)
    }

    /// Whether 8-bit integer weights are stored plain (`int-quantized`,
    /// with quantized activations) rather than packed.
    fn int_quantized(self) -> bool {
        self == Scheme::W8A8
    }

    /// llm-compressor's preset name of this scheme.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::W4A16 { .. } => "W4A16",
            Scheme::W4A16Asym { .. } => "W4A16_ASYM",
            Scheme::W8A16 { .. } => "W8A16",
            Scheme::W8A8 => "W8A8",
            Scheme::Fp8Dynamic => "FP8_DYNAMIC",
            Scheme::Fp8Block => "FP8_BLOCK",
            Scheme::Nvfp4A16 => "NVFP4A16",
            Scheme::Mxfp4A16 => "MXFP4A16",
            Scheme::Fp8Static => "FP8",
            Scheme::Nvfp4 => "NVFP4",
        }
    }

    /// The config group's `format` (compressed-tensors `CompressionFormat`).
    pub fn format(self) -> &'static str {
        match self {
            Scheme::W4A16 { .. } | Scheme::W4A16Asym { .. } | Scheme::W8A16 { .. } => {
                "pack-quantized"
            }
            Scheme::W8A8 => "int-quantized",
            Scheme::Fp8Dynamic | Scheme::Fp8Block | Scheme::Fp8Static => "float-quantized",
            Scheme::Nvfp4A16 | Scheme::Nvfp4 => "nvfp4-pack-quantized",
            Scheme::Mxfp4A16 => "mxfp4-pack-quantized",
        }
    }

    /// The config group's `weights` and `input_activations`, fields in
    /// compressed-tensors' (sorted) order; `scale_dtype`/`zp_dtype` only
    /// where the scheme needs them (loaders before compressed-tensors 0.13
    /// reject the keys).
    pub fn group_config(self) -> Value {
        let args = |bits: u32,
                    ty: &str,
                    strategy: &str,
                    group: Value,
                    symmetric: bool,
                    dynamic: bool,
                    observer: Value| {
            let mut m = Map::new();
            m.insert("actorder".into(), Value::Null);
            m.insert("block_structure".into(), Value::Null);
            m.insert("dynamic".into(), json!(dynamic));
            m.insert("group_size".into(), group);
            m.insert("num_bits".into(), json!(bits));
            m.insert("observer".into(), observer);
            m.insert("observer_kwargs".into(), json!({}));
            m.insert("strategy".into(), json!(strategy));
            m.insert("symmetric".into(), json!(symmetric));
            m.insert("type".into(), json!(ty));
            m
        };
        let minmax = json!("memoryless_minmax");
        let int_group = |bits, g: u32, symmetric| {
            if g == 0 {
                args(
                    bits,
                    "int",
                    "channel",
                    Value::Null,
                    symmetric,
                    false,
                    minmax.clone(),
                )
            } else {
                args(
                    bits,
                    "int",
                    "group",
                    json!(g),
                    symmetric,
                    false,
                    minmax.clone(),
                )
            }
        };
        let (weights, acts) = match self {
            Scheme::W4A16 { group } => (int_group(4, group, true), None),
            Scheme::W4A16Asym { group } => {
                let mut w = int_group(4, group, false);
                w.insert("zp_dtype".into(), json!("torch.int8"));
                (w, None)
            }
            Scheme::W8A16 { group } => (int_group(8, group, true), None),
            Scheme::W8A8 => (
                args(
                    8,
                    "int",
                    "channel",
                    Value::Null,
                    true,
                    false,
                    minmax.clone(),
                ),
                Some(args(
                    8,
                    "int",
                    "token",
                    Value::Null,
                    true,
                    true,
                    Value::Null,
                )),
            ),
            Scheme::Fp8Dynamic => (
                args(
                    8,
                    "float",
                    "channel",
                    Value::Null,
                    true,
                    false,
                    minmax.clone(),
                ),
                Some(args(
                    8,
                    "float",
                    "token",
                    Value::Null,
                    true,
                    true,
                    Value::Null,
                )),
            ),
            Scheme::Fp8Block => {
                let mut w = args(
                    8,
                    "float",
                    "block",
                    Value::Null,
                    true,
                    false,
                    minmax.clone(),
                );
                w.insert("block_structure".into(), json!([128, 128]));
                (
                    w,
                    Some(args(
                        8,
                        "float",
                        "group",
                        json!(128),
                        true,
                        true,
                        Value::Null,
                    )),
                )
            }
            Scheme::Nvfp4A16 | Scheme::Nvfp4 => {
                let nvfp4 = |dynamic: Value, observer: Value| {
                    let mut w = args(4, "float", "tensor_group", json!(16), true, false, observer);
                    w.insert("dynamic".into(), dynamic);
                    w.insert("scale_dtype".into(), json!("torch.float8_e4m3fn"));
                    w
                };
                let w = nvfp4(json!(false), minmax.clone());
                // W4A4: per-16 activation scales at run time ("local"),
                // under a global scale observed on calibration text.
                let acts =
                    (self == Scheme::Nvfp4).then(|| nvfp4(json!("local"), json!("static_minmax")));
                (w, acts)
            }
            Scheme::Fp8Static => (
                args(
                    8,
                    "float",
                    "tensor",
                    Value::Null,
                    true,
                    false,
                    minmax.clone(),
                ),
                Some(args(
                    8,
                    "float",
                    "tensor",
                    Value::Null,
                    true,
                    false,
                    json!("static_minmax"),
                )),
            ),
            Scheme::Mxfp4A16 => {
                let mut w = args(4, "float", "group", json!(32), true, false, minmax.clone());
                w.insert("scale_dtype".into(), json!("torch.uint8"));
                (w, None)
            }
        };
        let sorted = |m: Map<String, Value>| {
            Value::Object(
                m.into_iter()
                    .collect::<BTreeMap<_, _>>()
                    .into_iter()
                    .collect(),
            )
        };
        json!({
            "format": self.format(),
            "input_activations": acts.map_or(Value::Null, sorted),
            "output_activations": null,
            "targets": ["Linear"],
            "weights": sorted(weights),
        })
    }
}

/// Whether a tensor is the weight of a Linear layer that compressed-tensors
/// quantizes (`targets: ["Linear"]`); `lm_head` and MoE routers are left
/// out, as llm-compressor's recipes ignore them. Phi-3's fused `qkv_proj`
/// and `gate_up_proj` are one Linear each in the checkpoint (and in vLLM's
/// phi3, which loads them as they are), so each gets one scale set.
pub fn is_target(t: &TensorNode) -> bool {
    t.shape.len() == 2
        && t.source_name.ends_with(".weight")
        && !is_router(t)
        && matches!(
            t.role,
            Role::AttnQ
                | Role::AttnK
                | Role::AttnV
                | Role::AttnQkv
                | Role::AttnOutput
                | Role::FfnGate
                | Role::FfnUp
                | Role::FfnDown
                | Role::FfnGateExps
                | Role::FfnUpExps
                | Role::FfnDownExps
                | Role::FfnGateShexp
                | Role::FfnUpShexp
                | Role::FfnDownShexp
        )
}

/// A Linear that stays unquantized and is listed in `ignore`: an MoE router
/// (`mlp.gate`, `block_sparse_moe.gate`) or Qwen2-MoE's
/// `mlp.shared_expert_gate`, as llm-compressor's MoE recipes ignore them
/// (and vLLM builds them unquantized whatever the config says).
pub fn is_router(t: &TensorNode) -> bool {
    t.shape.len() == 2
        && t.source_name.ends_with(".weight")
        && (t.role == Role::FfnGateInp || t.name.contains("ffn_gate_inp_shexp"))
}

/// Split every stacked tensor (routed experts, `[n_expert, out, in]`, read
/// from one Hugging Face tensor per expert) back into its experts, under
/// their own names (`...experts.3.w1.weight`): compressed-tensors keeps the
/// checkpoint's per-expert Linears, one quantized module each, as
/// llm-compressor writes them and vLLM loads them. Nothing is read.
/// Returns each stacked tensor's source name (`...experts.*.w1.weight`)
/// with its experts' names, in expert order.
pub fn unstack_experts(model: &mut Model) -> BTreeMap<String, Vec<String>> {
    let mut out = Vec::with_capacity(model.tensors.len());
    let mut names = BTreeMap::new();
    for t in std::mem::take(&mut model.tensors) {
        if t.parts.is_empty() {
            out.push(t);
            continue;
        }
        let stem = t.name.trim_end_matches(".weight");
        let experts: &mut Vec<String> = names.entry(t.source_name.clone()).or_default();
        for (e, part) in t.parts.iter().enumerate() {
            let source_name = t.source_name.replace(".*.", &format!(".{e}."));
            experts.push(source_name.clone());
            out.push(TensorNode {
                name: format!("{stem}.{e}.weight"),
                source_name,
                shape: t.shape[1..].to_vec(),
                source: part.clone(),
                parts: Vec::new(),
                notes: t.notes.clone(),
                ..t.clone()
            });
        }
    }
    model.tensors = out;
    names
}

/// Drop tensors computed from config values, then give every target Linear the scheme's encoding, or keep it (in the
/// source dtype, listed in `ignore`) where its input width cannot take the
/// scheme, with a note naming the width and the reason; everything else is
/// kept. Clears the GGUF row permutation normalize adds (outputs keep HF
/// layout) but keeps [`Transform::RopeUnpermute`], which a GGUF input's
/// q/k rows need to get back to it (`crate::ct_gguf`).
/// `ignore` takes llm-compressor's forms: a module name
/// (`model.layers.0.mlp.down_proj`) or `re:` and a regular expression matched
/// at the start of the module name; matched Linears are kept.
pub fn assign(model: &mut Model, scheme: Scheme, ignore: &[String]) -> Result<()> {
    // Tensors computed from config values (llama3's `rope_freqs`) are
    // llama.cpp's; a Hugging Face checkpoint recomputes them from config.json.
    model.tensors.retain(|t| !t.is_computed());
    let enc = scheme.encoding();
    let mut patterns = Vec::with_capacity(ignore.len());
    for i in ignore {
        match i.strip_prefix("re:") {
            Some(re) => patterns.push(Ignore::Re(
                regex::Regex::new(&format!("^(?:{re})")).map_err(|e| Error::Unsupported {
                    path: Default::default(),
                    tensor: None,
                    reason: format!("--ignore `{i}`: {e}"),
                })?,
            )),
            None => patterns.push(Ignore::Name(i.clone())),
        }
    }
    for t in &mut model.tensors {
        keep_hf_transform(t);
        t.encoding = Some(Encoding::Keep);
        if !is_target(t) {
            continue;
        }
        let module = t.source_name.trim_end_matches(".weight");
        if patterns.iter().any(|p| match p {
            Ignore::Name(n) => n == module,
            Ignore::Re(r) => r.is_match(module),
        }) {
            continue;
        }
        if enc.fits(t.row_len()) {
            t.encoding = Some(enc);
        } else {
            t.notes.push(passes::Note::new(
                passes::NoteKind::Fallback { wanted: enc, used: Encoding::Keep, row_len: t.row_len() },
                format!(
                    "row length {} does not take {enc} (llm-compressor refuses the layer): kept {}, listed in `ignore`",
                    t.row_len(),
                    match t.source.dtype {
                        SourceDType::Ggml(_) => format!("unquantized (dequantized from {})", t.source.dtype.name()),
                        d => format!("in {}", d.name()),
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// Give each target Linear named in `plan` (by source tensor name) its
/// scheme's encoding, and keep every other tensor: the mixed-precision form
/// of [`assign`], for a planner that chose per layer. A Linear whose width
/// the scheme cannot take is an error here (the planner only offers schemes
/// that fit).
pub fn assign_mixed(model: &mut Model, plan: &BTreeMap<String, Scheme>) -> Result<()> {
    for t in &mut model.tensors {
        keep_hf_transform(t);
        t.encoding = Some(Encoding::Keep);
        let Some(s) = plan.get(&t.source_name) else {
            continue;
        };
        let enc = s.encoding();
        if !is_target(t) || !enc.fits(t.row_len()) {
            return Err(Error::unsupported(
                Path::new(""),
                Some(&t.source_name),
                format!(
                    "{} cannot hold this tensor (row length {})",
                    s.name(),
                    t.row_len()
                ),
            ));
        }
        t.encoding = Some(enc);
    }
    Ok(())
}

/// Scale FP8 weights to `max` (448, E4M3FN's largest value, or 240 for
/// runtimes whose FP8 saturates there: Neuron) instead of 448.
pub fn set_fp8_max(model: &mut Model, max: f64) -> std::result::Result<(), String> {
    let range = if max == 448.0 {
        Fp8Range::Fn448
    } else if max == 240.0 {
        Fp8Range::Clamp240
    } else {
        return Err(format!(
            "FP8 maximum {max}: kiln encodes E4M3 scaled to 448 or 240"
        ));
    };
    for t in &mut model.tensors {
        if let Some(Encoding::Fp8(spec)) = &mut t.encoding {
            spec.range = range;
        }
    }
    Ok(())
}

/// Clear a transform into GGUF layout; keep the one back to Hugging Face's.
fn keep_hf_transform(t: &mut TensorNode) {
    if !matches!(t.transform, Some(Transform::RopeUnpermute { .. })) {
        t.transform = None;
    }
}

enum Ignore {
    Name(String),
    Re(regex::Regex),
}

fn dtype_of(t: &TensorNode) -> Dtype {
    match t.source.dtype {
        SourceDType::BF16 => Dtype::Bf16,
        SourceDType::F16 => Dtype::F16,
        _ => Dtype::F32,
    }
}

/// The fused group a Linear's NVFP4 global scale is shared with: q/k/v of
/// an attention module, gate/up of an MLP (a layer's, an expert's, the
/// shared expert's), named by that module (vLLM loads each group as one
/// matrix); `None`: a group of its own.
fn fused_group(t: &TensorNode) -> Option<(String, u8)> {
    let g = match t.role {
        // A fused qkv_proj / gate_up_proj (Phi-3) is its own group's only member.
        Role::AttnQ | Role::AttnK | Role::AttnV | Role::AttnQkv => 0,
        Role::FfnGate | Role::FfnUp | Role::FfnGateExps | Role::FfnUpExps => 1,
        Role::FfnGateShexp | Role::FfnUpShexp if !is_router(t) => 1,
        _ => return None,
    };
    let module = t.source_name.trim_end_matches(".weight");
    let parent = module.rsplit_once('.').map_or(module, |(p, _)| p);
    Some((parent.to_string(), g))
}

/// Largest magnitude of every tensor that needs one before encoding (NVFP4's
/// global scale, taken over its fused group; per-tensor FP8's scale, the
/// tensor's own), by tensor name: one streaming pass over those tensors.
pub fn scan_amax(model: &Model, maps: &[MappedFile]) -> BTreeMap<String, f32> {
    let mut by_group: BTreeMap<(String, u8, usize), f32> = BTreeMap::new();
    let mut members = Vec::new();
    for (i, t) in model.tensors.iter().enumerate() {
        let per_tensor_fp8 = matches!(
            t.encoding,
            Some(Encoding::Fp8(Fp8Spec {
                scales: Fp8Scales::Tensor,
                ..
            }))
        );
        if t.encoding != Some(Encoding::Fp4(Fp4Kind::Nv)) && !per_tensor_fp8 {
            continue;
        }
        let mut row = vec![0f32; t.row_len()];
        let mut a = 0f32;
        for r in 0..t.n_rows() {
            read_row(maps, t, r, &mut row);
            a = a.max(q::amax(&row));
        }
        // Unfused tensors (and every per-tensor FP8 weight: vLLM requantizes
        // fused shards to their largest scale) get a group of their own.
        let key = match fused_group(t).filter(|_| !per_tensor_fp8) {
            Some((module, g)) => (module, g, 0),
            None => (String::new(), 2, i),
        };
        let e = by_group.entry(key.clone()).or_insert(0.0);
        *e = e.max(a);
        members.push((i, key));
    }
    members
        .into_iter()
        .map(|(i, k)| (model.tensors[i].name.clone(), by_group[&k]))
        .collect()
}

/// One stored tensor of a source tensor's encoding.
#[derive(Debug, Clone)]
struct Piece {
    suffix: &'static str,
    dtype: &'static str,
    shape: Vec<usize>,
    row_bytes: usize,
    unit: Unit,
}

const CONST: Unit = Unit::CONST;

/// The compressed-tensors container for one scheme.
pub struct CompressedTensors {
    scheme: Scheme,
    /// Per source tensor name, for a mixed-precision artifact ([`Self::mixed`]);
    /// empty: every quantized Linear has `scheme`.
    schemes: BTreeMap<String, Scheme>,
    /// NVFP4 fused and per-tensor FP8 largest magnitudes by tensor name ([`scan_amax`]).
    amax: BTreeMap<String, f32>,
    /// Largest magnitude of each static-activation Linear's input over the
    /// calibration text, by tensor name ([`Self::with_input_amax`]).
    input_amax: BTreeMap<String, f32>,
    /// Source `config.json` (the output's, with `quantization_config` added).
    config: Map<String, Value>,
    /// Files copied from the source directory (tokenizer, generation config).
    copied: Vec<(String, Vec<u8>)>,
    /// Largest shard, in tensor bytes ([`DEFAULT_MAX_SHARD`] unless set).
    max_shard: u64,
    /// The dtype every kept tensor and every scale is written in, when it is
    /// not each tensor's source dtype (a GGUF input: `crate::ct_gguf`).
    dtype: Option<Dtype>,
}

impl CompressedTensors {
    /// For a model assigned with [`assign`], loaded from the directory `src`.
    pub fn new(
        scheme: Scheme,
        model: &Model,
        maps: &[MappedFile],
        src: &Path,
    ) -> Result<CompressedTensors> {
        let cfg_path = src.join("config.json");
        let text = std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config: Map<String, Value> = serde_json::from_slice(&text)
            .map_err(|e| Error::malformed(&cfg_path, None, format!("not a JSON object: {e}")))?;
        let mut copied = Vec::new();
        for name in [
            "tokenizer.json",
            "tokenizer_config.json",
            "tokenizer.model",
            "special_tokens_map.json",
            "generation_config.json",
            "chat_template.jinja",
        ] {
            let p = src.join(name);
            if p.is_file() {
                copied.push((
                    name.to_string(),
                    std::fs::read(&p).map_err(|e| Error::io(&p, e))?,
                ));
            }
        }
        Ok(CompressedTensors::from_parts(
            scheme, model, maps, config, copied, None,
        ))
    }

    /// For a model assigned with [`assign`] whose `config.json` (without
    /// `quantization_config`) and side files (tokenizer, generation config)
    /// are given rather than read from a checkpoint directory: a GGUF
    /// input's, synthesized by `crate::ct_gguf`. `dtype`: the dtype every
    /// kept tensor and scale is written in (`None`: each tensor's own).
    pub fn from_parts(
        scheme: Scheme,
        model: &Model,
        maps: &[MappedFile],
        config: Map<String, Value>,
        files: Vec<(String, Vec<u8>)>,
        dtype: Option<Dtype>,
    ) -> CompressedTensors {
        CompressedTensors {
            scheme,
            schemes: BTreeMap::new(),
            amax: scan_amax(model, maps),
            input_amax: BTreeMap::new(),
            config,
            copied: files,
            max_shard: DEFAULT_MAX_SHARD,
            dtype,
        }
    }

    /// The dtype `t`'s kept values and its scales are written in.
    fn dtype(&self, t: &TensorNode) -> Dtype {
        self.dtype.unwrap_or_else(|| dtype_of(t))
    }

    /// Whether kept tensor `t` is written in another dtype than it is stored in.
    fn recast(&self, t: &TensorNode) -> bool {
        !matches!(
            (self.dtype, t.source.dtype),
            (None, _)
                | (Some(Dtype::Bf16), SourceDType::BF16)
                | (Some(Dtype::F16), SourceDType::F16)
                | (Some(Dtype::F32), SourceDType::F32)
        )
    }

    /// The output's config.json before `quantization_config` is added (a
    /// pass that changes the architecture, such as pruning, edits it).
    pub fn config_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.config
    }

    /// The calibration inputs' largest magnitudes of the Linears whose
    /// scheme has static activations (FP8, NVFP4), by tensor name: an
    /// error names the first such Linear without one.
    pub fn with_input_amax(
        mut self,
        model: &Model,
        amax: BTreeMap<String, f32>,
    ) -> Result<CompressedTensors> {
        for t in &model.tensors {
            if self.static_input(t) && !amax.get(&t.name).is_some_and(|a| a.is_finite()) {
                return Err(Error::unsupported(
                    Path::new(""),
                    Some(&t.source_name),
                    format!(
                        "{} needs this Linear's input range, and the calibration pass saw none",
                        self.scheme_of(t).name()
                    ),
                ));
            }
        }
        self.input_amax = amax;
        Ok(self)
    }

    /// Whether quantized Linear `t` stores a static activation scale.
    fn static_input(&self, t: &TensorNode) -> bool {
        self.weights_of(t).is_some() && self.scheme_of(t).static_activations()
    }

    /// Split the tensors into shards of at most `bytes` (a tensor larger
    /// than that gets a shard of its own), as `save_pretrained` does.
    pub fn with_max_shard_size(mut self, bytes: u64) -> CompressedTensors {
        self.max_shard = bytes.max(1);
        self
    }

    /// For a model assigned with [`assign_mixed`] from `plan`: one config
    /// group per scheme, each targeting its modules by name.
    pub fn mixed(
        plan: &BTreeMap<String, Scheme>,
        model: &Model,
        maps: &[MappedFile],
        src: &Path,
    ) -> Result<CompressedTensors> {
        let first = plan.values().next().copied().unwrap_or(Scheme::W8A8);
        let mut c = CompressedTensors::new(first, model, maps, src)?;
        c.schemes = plan.clone();
        Ok(c)
    }

    /// The scheme of tensor `t` (quantized Linears only matter).
    fn scheme_of(&self, t: &TensorNode) -> Scheme {
        self.schemes
            .get(&t.source_name)
            .copied()
            .unwrap_or(self.scheme)
    }

    fn weights_of(&self, t: &TensorNode) -> Option<Weights> {
        let w = self.weights(t.encoding.unwrap_or(Encoding::Keep))?;
        Some(match w {
            Weights::Int {
                bits,
                group,
                symmetric,
                ..
            } => Weights::Int {
                bits,
                group,
                symmetric,
                packed: !self.scheme_of(t).int_quantized(),
            },
            w => w,
        })
    }

    fn weights(&self, enc: Encoding) -> Option<Weights> {
        Some(match enc {
            Encoding::Int(s) => Weights::Int {
                bits: s.bits,
                group: match s.group {
                    Group::Channel => 0,
                    Group::Size(g) => g as usize,
                },
                symmetric: !s.zero_point,
                packed: !self.scheme.int_quantized(),
            },
            Encoding::Fp8(s) => Weights::Fp8 {
                scales: match s.scales {
                    Fp8Scales::Tensor => Fp8Grain::Tensor,
                    Fp8Scales::Channel => Fp8Grain::Channel,
                    Fp8Scales::Block { rows, .. } => Fp8Grain::Block(rows as usize),
                },
                max_240: s.range == Fp8Range::Clamp240,
            },
            Encoding::Fp4(Fp4Kind::Nv) => Weights::Nvfp4,
            Encoding::Fp4(Fp4Kind::Mx) => Weights::Mxfp4,
            Encoding::Keep | Encoding::Ggml(_) => return None,
        })
    }

    /// The stored tensors of `t`, in writing order.
    fn pieces(&self, t: &TensorNode) -> Vec<Piece> {
        let (rows, cols) = (t.n_rows(), t.row_len());
        let d = self.dtype(t);
        let Some(w) = self.weights_of(t) else {
            let (dtype, bytes) = match (self.recast(t), t.source.dtype) {
                (true, _) => (d.name(), d.bytes()),
                (false, SourceDType::F32) => (t.source.dtype.name(), 4),
                (false, _) => (t.source.dtype.name(), 2),
            };
            return vec![Piece {
                suffix: "",
                dtype,
                shape: t.shape.clone(),
                row_bytes: cols * bytes,
                unit: Unit::ROW,
            }];
        };
        let row = |suffix, dtype, shape: Vec<usize>, row_bytes| Piece {
            suffix,
            dtype,
            shape,
            row_bytes,
            unit: Unit::ROW,
        };
        match w {
            Weights::Int {
                bits,
                group,
                symmetric,
                packed,
            } => {
                let groups = cols.checked_div(group).unwrap_or(1);
                let mut v = Vec::new();
                if packed {
                    let words = q::packed_words(cols, bits);
                    v.push(row("weight_packed", "I32", vec![rows, words], words * 4));
                } else {
                    v.push(row("weight", "I8", vec![rows, cols], cols));
                }
                v.push(row(
                    "weight_scale",
                    d.name(),
                    vec![rows, groups],
                    groups * d.bytes(),
                ));
                if packed {
                    v.push(Piece {
                        suffix: "weight_shape",
                        dtype: "I64",
                        shape: vec![2],
                        row_bytes: 16,
                        unit: CONST,
                    });
                }
                if !symmetric {
                    let words = q::packed_words(rows, bits);
                    v.push(Piece {
                        suffix: "weight_zero_point",
                        dtype: "I32",
                        shape: vec![words, groups],
                        row_bytes: groups * 4,
                        unit: Unit {
                            rows: 32 / bits as usize,
                            per_row: false,
                        },
                    });
                }
                v
            }
            Weights::Fp8 { scales, .. } => match scales {
                Fp8Grain::Channel => vec![
                    row("weight", "F8_E4M3", vec![rows, cols], cols),
                    row("weight_scale", d.name(), vec![rows, 1], d.bytes()),
                ],
                Fp8Grain::Block(b) => {
                    let unit = |per_row| Unit { rows: b, per_row };
                    vec![
                        Piece {
                            suffix: "weight",
                            dtype: "F8_E4M3",
                            shape: vec![rows, cols],
                            row_bytes: cols,
                            unit: unit(true),
                        },
                        Piece {
                            suffix: "weight_scale",
                            dtype: d.name(),
                            shape: vec![rows.div_ceil(b), cols.div_ceil(b)],
                            row_bytes: cols.div_ceil(b) * d.bytes(),
                            unit: unit(false),
                        },
                    ]
                }
                // FP8 (static): one weight scale, and the activations' scale.
                Fp8Grain::Tensor => {
                    let scalar = |suffix| Piece {
                        suffix,
                        dtype: d.name(),
                        shape: vec![1],
                        row_bytes: d.bytes(),
                        unit: CONST,
                    };
                    let mut v = vec![
                        row("weight", "F8_E4M3", vec![rows, cols], cols),
                        scalar("weight_scale"),
                    ];
                    if self.static_input(t) {
                        v.push(scalar("input_scale"));
                    }
                    v
                }
            },
            Weights::Nvfp4 => {
                let global = |suffix| Piece {
                    suffix,
                    dtype: "F32",
                    shape: vec![1],
                    row_bytes: 4,
                    unit: CONST,
                };
                let mut v = vec![
                    row("weight_packed", "U8", vec![rows, cols / 2], cols / 2),
                    row("weight_scale", "F8_E4M3", vec![rows, cols / 16], cols / 16),
                    global("weight_global_scale"),
                ];
                if self.static_input(t) {
                    v.push(global("input_global_scale"));
                }
                v
            }
            Weights::Mxfp4 => vec![
                row("weight_packed", "U8", vec![rows, cols / 2], cols / 2),
                row("weight_scale", "U8", vec![rows, cols / 32], cols / 32),
            ],
        }
    }

    fn stored_name(t: &TensorNode, p: &Piece) -> String {
        if p.suffix.is_empty() {
            t.source_name.clone()
        } else {
            format!("{}.{}", t.source_name.trim_end_matches(".weight"), p.suffix)
        }
    }

    fn global(&self, t: &TensorNode) -> f32 {
        q::nvfp4_global_scale(
            self.amax.get(&t.name).copied().unwrap_or(0.0),
            self.dtype(t),
        )
    }

    /// The `quantization_config` block.
    fn quantization_config(&self, model: &Model) -> Value {
        // Kept Linears in module order, then `lm_head`, which llm-compressor
        // lists even when it is tied to the embeddings (the module exists).
        let mut ignore: Vec<Value> = model
            .tensors
            .iter()
            .filter(|t| (is_target(t) || is_router(t)) && t.encoding == Some(Encoding::Keep))
            .map(|t| json!(t.source_name.trim_end_matches(".weight")))
            .collect();
        ignore.push(json!("lm_head"));
        let (groups, format) = self.config_groups(model);
        json!({
            "config_groups": groups,
            "format": format,
            "global_compression_ratio": null,
            "ignore": ignore,
            "kv_cache_scheme": null,
            "quant_method": "compressed-tensors",
            "quantization_status": "compressed",
            "sparsity_config": {},
            "transform_config": {},
            "version": CT_VERSION,
        })
    }
}

impl CompressedTensors {
    /// `config_groups` and the top-level `format`: one group targeting
    /// `Linear` for a single scheme; for a mixed plan one group per scheme
    /// (in the order of [`Scheme::NAMES`]) targeting its modules by exact
    /// name, and `mixed-precision` when the groups' formats differ (as
    /// compressed-tensors' `infer_and_set_per_module_quantization_format`
    /// writes it; vLLM reads each group's own `format`).
    fn config_groups(&self, model: &Model) -> (Value, Value) {
        if self.schemes.is_empty() {
            return (
                json!({"group_0": self.scheme.group_config()}),
                json!(self.scheme.format()),
            );
        }
        let mut by: Vec<(Scheme, Vec<String>)> = Vec::new();
        for t in &model.tensors {
            if !is_target(t) || t.encoding == Some(Encoding::Keep) {
                continue;
            }
            let s = self.scheme_of(t);
            let module = t.source_name.trim_end_matches(".weight").to_string();
            match by.iter_mut().find(|(x, _)| *x == s) {
                Some((_, v)) => v.push(module),
                None => by.push((s, vec![module])),
            }
        }
        let rank = |s: &Scheme| Scheme::NAMES.iter().position(|n| *n == s.name());
        by.sort_by_key(|(s, _)| rank(s));
        let mut groups = Map::new();
        for (i, (s, modules)) in by.iter().enumerate() {
            let mut g = s.group_config();
            g["targets"] = json!(modules);
            groups.insert(format!("group_{i}"), g);
        }
        let formats: std::collections::BTreeSet<&str> =
            by.iter().map(|(s, _)| s.format()).collect();
        let format = match formats.len() {
            0 => "dense",
            1 => formats.into_iter().next().expect("one format"),
            _ => "mixed-precision",
        };
        (Value::Object(groups), json!(format))
    }

    /// Every stored tensor with its source tensor, piece and size, split
    /// into shards the way huggingface_hub's `split_state_dict_into_shards`
    /// does: tensors in module order, a new shard when the next tensor would
    /// push the current one past the limit, a tensor over the limit alone.
    #[allow(clippy::type_complexity)]
    fn shards(&self, model: &Model) -> Vec<Vec<(String, usize, usize, Piece, u64)>> {
        let mut all = Vec::new();
        for (i, t) in model.tensors.iter().enumerate() {
            for (k, p) in self.pieces(t).into_iter().enumerate() {
                let bytes = if p.unit.per_row {
                    (p.row_bytes * t.n_rows()) as u64
                } else {
                    (p.row_bytes * p.unit.count(t.n_rows())) as u64
                };
                all.push((Self::stored_name(t, &p), i, k, p, bytes));
            }
        }
        let sizes: Vec<u64> = all.iter().map(|e| e.4).collect();
        let (shard, n) = shards::split(&sizes, self.max_shard);
        let mut out = vec![Vec::new(); n];
        for (e, s) in all.into_iter().zip(shard) {
            out[s].push(e);
        }
        out
    }
}

impl Container for CompressedTensors {
    fn layout(&self, model: &Model) -> Result<Vec<FileLayout>> {
        let shards = self.shards(model);
        let n = shards.len();
        let mut files = Vec::with_capacity(n);
        for (si, mut all) in shards.into_iter().enumerate() {
            // Stored tensors sorted by name within a file, as safetensors orders them.
            all.sort_by(|a, b| a.0.cmp(&b.0));
            let mut header = Map::new();
            header.insert("__metadata__".into(), json!({"format": "pt"}));
            let mut offset = 0u64;
            let mut spans = Vec::with_capacity(all.len());
            for (name, _, _, p, bytes) in &all {
                header.insert(
                    name.clone(),
                    json!({"dtype": p.dtype, "shape": p.shape, "data_offsets": [offset, offset + bytes]}),
                );
                spans.push(offset);
                offset += bytes;
            }
            let mut text =
                serde_json::to_vec(&Value::Object(header)).expect("a JSON map serializes");
            // The data starts 8-aligned: pad the header with spaces, as safetensors does.
            while (8 + text.len()) % 8 != 0 {
                text.push(b' ');
            }
            let mut head = (text.len() as u64).to_le_bytes().to_vec();
            head.extend_from_slice(&text);
            let base = head.len() as u64;
            let placements = all
                .iter()
                .zip(&spans)
                .map(|((_, i, k, p, _), &off)| Placement {
                    tensor: *i,
                    piece: *k,
                    offset: base + off,
                    row_bytes: p.row_bytes,
                    unit: p.unit,
                    padding: 0,
                })
                .collect();
            files.push(FileLayout {
                name: shards::file_name(si, n),
                header: head,
                placements,
                total_bytes: base + offset,
            });
        }
        Ok(files)
    }

    fn copies_source(&self, t: &TensorNode, _piece: usize) -> bool {
        self.weights_of(t).is_none() && !self.recast(t)
    }

    fn encode_row(
        &self,
        t: &TensorNode,
        piece: usize,
        values: &[f32],
        dst: &mut [u8],
        _importance: Option<&[f32]>,
    ) {
        let d = self.dtype(t);
        let Some(w) = self.weights_of(t) else {
            // A kept tensor written in another dtype (a GGUF's decoded blocks).
            debug_assert!(self.recast(t), "kept tensors in their own dtype are copied");
            for (o, &x) in dst.chunks_exact_mut(d.bytes()).zip(values) {
                d.put(x, o);
            }
            return;
        };
        match (w, piece) {
            (
                Weights::Int {
                    bits,
                    group,
                    symmetric,
                    packed,
                },
                0 | 1,
            ) => {
                let g = if group == 0 { values.len() } else { group };
                let mut qv = vec![0i8; values.len()];
                for (k, chunk) in values.chunks_exact(g).enumerate() {
                    let (lo, hi) = q::min_max(chunk);
                    let p = q::int_params(lo, hi, bits, symmetric, d);
                    if piece == 1 {
                        d.put(p.scale, &mut dst[k * d.bytes()..(k + 1) * d.bytes()]);
                        continue;
                    }
                    for (o, &x) in qv[k * g..(k + 1) * g].iter_mut().zip(chunk) {
                        *o = q::int_quantize(x, p, bits, d);
                    }
                }
                if piece == 0 {
                    if packed {
                        q::pack_int32(&qv, bits, dst);
                    } else {
                        for (o, v) in dst.iter_mut().zip(qv) {
                            *o = v as u8;
                        }
                    }
                }
            }
            (Weights::Fp8 { scales, max_240 }, _) => {
                let max = if max_240 { 240.0 } else { 448.0 };
                let a = match scales {
                    Fp8Grain::Tensor => self.amax.get(&t.name).copied().unwrap_or(0.0),
                    _ => q::amax(values),
                };
                let s = q::fp8_scale(a, max, d);
                if piece == 1 {
                    d.put(s, dst);
                } else {
                    for (o, &x) in dst.iter_mut().zip(values) {
                        *o = q::fp8_quantize(x, s, max, d);
                    }
                }
            }
            (Weights::Nvfp4, _) => {
                let global = self.global(t);
                for (k, chunk) in values.chunks_exact(16).enumerate() {
                    let s = q::nvfp4_group_scale(q::amax(chunk), global, d);
                    if piece == 1 {
                        dst[k] = s;
                    } else {
                        let codes: Vec<u8> =
                            chunk.iter().map(|&x| q::nvfp4_code(x, s, global)).collect();
                        q::pack_fp4(&codes, &mut dst[k * 8..(k + 1) * 8]);
                    }
                }
            }
            (Weights::Mxfp4, _) => {
                for (k, chunk) in values.chunks_exact(32).enumerate() {
                    let s = q::mx_scale(q::amax(chunk), d);
                    if piece == 1 {
                        dst[k] = s;
                    } else {
                        let codes: Vec<u8> = chunk.iter().map(|&x| q::mx_code(x, s, d)).collect();
                        q::pack_fp4(&codes, &mut dst[k * 16..(k + 1) * 16]);
                    }
                }
            }
            (w, p) => unreachable!("piece {p} of {w:?} is not row-wise"),
        }
    }

    fn encode_unit(
        &self,
        t: &TensorNode,
        piece: usize,
        _first_row: usize,
        values: &[f32],
        dst: &mut [u8],
    ) {
        let d = self.dtype(t);
        let cols = t.row_len();
        match self.weights_of(t) {
            Some(Weights::Int { .. }) if piece == 2 => {
                dst.copy_from_slice(
                    &[
                        (t.n_rows() as i64).to_le_bytes(),
                        (cols as i64).to_le_bytes(),
                    ]
                    .concat(),
                );
            }
            Some(Weights::Int {
                bits,
                group,
                symmetric: false,
                ..
            }) => {
                // Zero points of this unit's rows, packed along the output
                // dimension: one int32 word per group.
                let g = if group == 0 { cols } else { group };
                let groups = cols / g;
                for k in 0..groups {
                    let zps: Vec<i8> = values
                        .chunks_exact(cols)
                        .map(|r| {
                            let (lo, hi) = q::min_max(&r[k * g..(k + 1) * g]);
                            q::int_params(lo, hi, bits, false, d).zero_point
                        })
                        .collect();
                    let mut word = [0u8; 4];
                    q::pack_int32(
                        &zps,
                        bits,
                        &mut word[..4 * q::packed_words(zps.len(), bits)],
                    );
                    dst[k * 4..(k + 1) * 4].copy_from_slice(&word);
                }
            }
            Some(Weights::Fp8 {
                scales: Fp8Grain::Block(b),
                max_240,
            }) => {
                let max = if max_240 { 240.0 } else { 448.0 };
                let nc = cols.div_ceil(b);
                let scales: Vec<f32> = (0..nc)
                    .map(|j| {
                        let a = values
                            .chunks_exact(cols)
                            .map(|r| q::amax(&r[j * b..((j + 1) * b).min(cols)]))
                            .fold(0f32, f32::max);
                        q::fp8_scale(a, max, d)
                    })
                    .collect();
                if piece == 1 {
                    for (s, o) in scales.iter().zip(dst.chunks_exact_mut(d.bytes())) {
                        d.put(*s, o);
                    }
                } else {
                    for (i, (o, &x)) in dst.iter_mut().zip(values).enumerate() {
                        *o = q::fp8_quantize(x, scales[(i % cols) / b], max, d);
                    }
                }
            }
            Some(Weights::Fp8 {
                scales: Fp8Grain::Tensor,
                max_240,
            }) => {
                let max = if max_240 { 240.0 } else { 448.0 };
                let a = match piece {
                    1 => self.amax.get(&t.name),
                    _ => self.input_amax.get(&t.name),
                };
                d.put(q::fp8_scale(a.copied().unwrap_or(0.0), max, d), dst);
            }
            Some(Weights::Nvfp4) if piece == 3 => {
                // The activations' global scale, in f32 as observers compute it.
                let a = self.input_amax.get(&t.name).copied().unwrap_or(0.0);
                dst.copy_from_slice(&q::nvfp4_global_scale(a, Dtype::F32).to_le_bytes());
            }
            Some(Weights::Nvfp4) => {
                dst.copy_from_slice(&self.global(t).to_le_bytes());
            }
            other => unreachable!("piece {piece} of {other:?} is row-wise"),
        }
    }

    fn side_files(&self, model: &Model, files: &[FileLayout]) -> Result<Vec<(String, Vec<u8>)>> {
        let mut config = self.config.clone();
        config.insert(
            "quantization_config".into(),
            self.quantization_config(model),
        );
        let mut text = serde_json::to_vec_pretty(&Value::Object(config)).expect("JSON serializes");
        text.push(b'\n');
        let mut out = vec![("config.json".to_string(), text)];
        if files.len() > 1 {
            out.push((
                "model.safetensors.index.json".to_string(),
                shards::index(files.iter().map(|f| {
                    let names = f.placements.iter().map(|p| {
                        let t = &model.tensors[p.tensor];
                        (Self::stored_name(t, &self.pieces(t)[p.piece]), p.bytes(t))
                    });
                    (f.name.as_str(), names.collect())
                })),
            ));
        }
        out.extend(self.copied.iter().cloned());
        Ok(out)
    }
}
