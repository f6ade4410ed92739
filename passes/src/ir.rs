//! The IR: a `Model` is an ordered table of named tensors plus typed metadata.
//!
//! Invariants (checked by `verify`):
//! - tensor names are unique; shapes are row-major (PyTorch order) with the
//!   row (innermost, `in_features`) last;
//! - a `Source` is a lazy view into an input file: nothing is read until the
//!   emitter asks for it;
//! - an encoding, once chosen, can encode the tensor's row length (shape
//!   fallbacks are applied by the pass that chooses, and recorded as notes);
//! - encodings are format-neutral ([`Encoding`]); a container lowers them and
//!   refuses by name what it cannot hold;
//! - what a pass could not do is a [`Note`]: a kind with fields that code
//!   reads, and the sentence users read;
//! - metadata is neutral (`Arch`, `ModelInfo`); GGUF key/values live apart in
//!   `Model::metadata` and are written only by the GGUF lowering;
//! - `Model::shards`, when set (by the layout pass), cuts the tensor table
//!   into contiguous, non-empty ranges covering it, in order.

use quant::GgmlType;
use serde::Serialize;

pub use quant::Encoding;

/// Architecture facts the loader, the passes, the eval forward pass and the
/// cost model need, parsed once (`crate::arch::from_hf_config` or GGUF
/// metadata); what a family does with them is in its `crate::arch` spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Arch {
    /// GGUF architecture name (`llama`, `qwen2`).
    pub family: String,
    /// The Hugging Face class name (`LlamaForCausalLM`), when known.
    pub hf_architecture: Option<String>,
    pub n_layer: usize,
    pub hidden: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub tied_embeddings: bool,
    pub n_expert: usize,
    pub n_expert_used: usize,
    /// FFN size of one routed expert (`moe_intermediate_size`); `None`: `ffn`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expert_ffn: Option<usize>,
    /// Total FFN size of the always-active shared experts (0: none).
    #[serde(skip_serializing_if = "is_zero")]
    pub shared_ffn: usize,
    /// Leading layers that stay dense in an MoE model (`first_k_dense_replace`).
    #[serde(skip_serializing_if = "is_zero")]
    pub n_dense_layers: usize,
    /// RoPE scaling (`rope_scaling` in config.json, `rope.scaling.*` keys in
    /// a GGUF); `None`: plain RoPE. See `crate::arch::rope`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// config.json's `sliding_window`, for families that carry it as a
    /// GGUF key (phi3); whether attention uses it is the family's.
    #[serde(skip)]
    pub sliding_window: Option<usize>,
    /// Gemma 2/3 attention facts (sliding-window layers, soft-capping, the
    /// query scale, per-layer RoPE bases); `None` for other families.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gemma: Option<GemmaAttn>,
}

/// RoPE scaling as llama.cpp carries it. Factors are what config.json says
/// (validated finite and positive by `crate::arch::rope`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Positions divided by `factor` (`rope.scaling.type = linear`).
    Linear { factor: f32 },
    /// Llama 3.x: per-frequency divisors in the `rope_freqs` tensor, computed
    /// from these values at conversion (no `rope.scaling.*` key).
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context: usize,
    },
    /// YaRN (`rope.scaling.type = yarn`): interpolation by `factor` below
    /// the correction range set by `beta_fast`/`beta_slow` rotations over
    /// `original_context` positions, and a magnitude scale
    /// `0.1 ln(factor) + 1`. The optional values are written only when
    /// config.json sets them (as llama.cpp's converter does).
    Yarn {
        factor: f32,
        original_context: usize,
        beta_fast: Option<f32>,
        beta_slow: Option<f32>,
        attn_factor: Option<f32>,
    },
    /// Phi-3 LongRoPE: per-frequency divisors, `long` when the context is
    /// longer than `original_context` and `short` otherwise (the
    /// `rope_factors_long` / `rope_factors_short` tensors), and a magnitude
    /// scale `attn_factor` (`rope.scaling.attn_factor`).
    LongRope {
        original_context: usize,
        attn_factor: f32,
        long: Vec<f32>,
        short: Vec<f32>,
    },
}

/// A tensor whose values are computed from config values rather than read
/// from an input file (llama3's `rope_freqs`, longrope's factors): the
/// loader serves its bytes like a file's (`formats::load`), so every pass,
/// the write engine and the forward pass treat it as any other tensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComputedTensor {
    /// GGUF name (`rope_freqs.weight`).
    pub name: String,
    pub shape: Vec<usize>,
    /// F32 values, row-major.
    pub values: Vec<f32>,
    /// What it is computed from, for notes (`config.json rope_scaling (llama3)`).
    pub from: String,
}

/// What Gemma 2 and Gemma 3 add to attention, as llama.cpp runs them
/// (`passes::arch::gemma` reads them from config.json and GGUF keys).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GemmaAttn {
    /// Tokens a sliding-window layer sees, itself included (`sliding_window`).
    pub sliding_window: usize,
    /// llama.cpp's `set_swa_pattern(n)`: layer `i` slides when
    /// `i % n < n - 1` (every n-th layer attends globally); 0: no layer slides.
    pub swa_pattern: usize,
    /// `tanh` soft-capping of attention scores (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// `tanh` soft-capping of the output logits (Gemma 2).
    pub final_softcap: Option<f32>,
    /// Scores are scaled by `query_pre_attn_scalar ** -0.5`.
    pub query_pre_attn_scalar: f32,
    /// RoPE base of the sliding-window layers (Gemma 3's
    /// `rope_local_base_freq`); `None`: `rope_theta` everywhere.
    pub rope_local_theta: Option<f32>,
    /// Linear RoPE scaling factor of the global layers (Gemma 3 4B and up).
    pub rope_linear_factor: Option<f32>,
    /// Per-head RMSNorm of q and k before RoPE (Gemma 3).
    pub qk_norm: bool,
}

impl GemmaAttn {
    /// Does layer `i` use the sliding window?
    pub fn is_swa_layer(&self, i: usize) -> bool {
        self.swa_pattern > 0 && i % self.swa_pattern < self.swa_pattern - 1
    }
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl Arch {
    pub fn is_moe(&self) -> bool {
        self.n_expert > 1
    }

    /// Is layer `i` an MoE layer?
    pub fn moe_layer(&self, i: usize) -> bool {
        self.is_moe() && i >= self.n_dense_layers
    }

    /// FFN size of one routed expert.
    pub fn expert_ffn(&self) -> usize {
        self.expert_ffn.unwrap_or(self.ffn)
    }

    /// Is layer `i` a sliding-window layer (Gemma)?
    pub fn is_swa_layer(&self, i: usize) -> bool {
        self.gemma.as_ref().is_some_and(|g| g.is_swa_layer(i))
    }

    /// Positions of a `context`-token KV cache layer `i` holds: the window
    /// on sliding-window layers, the whole context elsewhere.
    pub fn kv_positions(&self, i: usize, context: usize) -> usize {
        match &self.gemma {
            Some(g) if g.is_swa_layer(i) => context.min(g.sliding_window),
            _ => context,
        }
    }

    /// Attention FLOPs per token per position of context (QK^T and AV, 2 FLOPs
    /// per multiply-add): `4 * n_layer * n_head * head_dim`.
    pub fn attn_flops_per_ctx(&self) -> f64 {
        4.0 * self.n_layer as f64 * self.n_head as f64 * self.head_dim as f64
    }
}

/// What a tensor does in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Embedding,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnGate,
    FfnUp,
    FfnDown,
    /// Routed experts, merged as `[n_expert, out, in]` (`ffn_*_exps`).
    FfnGateExps,
    FfnUpExps,
    FfnDownExps,
    /// Always-active shared experts (`ffn_*_shexp`).
    FfnGateShexp,
    FfnUpShexp,
    FfnDownShexp,
    /// The MoE router (`ffn_gate_inp`), never quantized by llama.cpp.
    FfnGateInp,
    Norm,
    Output,
    Other,
    /// Fused q/k/v (Phi-3's `attn_qkv`: `[q; k; v]` rows).
    AttnQkv,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Embedding => "embedding",
            Role::AttnQ => "attn_q",
            Role::AttnK => "attn_k",
            Role::AttnV => "attn_v",
            Role::AttnOutput => "attn_output",
            Role::FfnGate => "ffn_gate",
            Role::FfnUp => "ffn_up",
            Role::FfnDown => "ffn_down",
            Role::FfnGateExps => "ffn_gate_exps",
            Role::FfnUpExps => "ffn_up_exps",
            Role::FfnDownExps => "ffn_down_exps",
            Role::FfnGateShexp => "ffn_gate_shexp",
            Role::FfnUpShexp => "ffn_up_shexp",
            Role::FfnDownShexp => "ffn_down_shexp",
            Role::FfnGateInp => "ffn_gate_inp",
            Role::Norm => "norm",
            Role::Output => "output",
            Role::Other => "other",
            Role::AttnQkv => "attn_qkv",
        }
    }

    /// A matrix multiplied against activations (what quantization targets).
    pub fn is_linear(self) -> bool {
        !matches!(
            self,
            Role::Embedding | Role::Output | Role::FfnGateInp | Role::Norm | Role::Other
        )
    }

    /// A routed expert's weights.
    pub fn is_expert(self) -> bool {
        matches!(
            self,
            Role::FfnGateExps | Role::FfnUpExps | Role::FfnDownExps
        )
    }
}

/// How the bytes of a source tensor are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SourceDType {
    /// Plain element types of safetensors / GGUF.
    F32,
    F16,
    BF16,
    /// A ggml block type read from a GGUF (dequantized to f32 when used).
    Ggml(GgmlType),
}

impl SourceDType {
    pub fn name(self) -> &'static str {
        match self {
            SourceDType::F32 => "F32",
            SourceDType::F16 => "F16",
            SourceDType::BF16 => "BF16",
            SourceDType::Ggml(t) => t.name(),
        }
    }

    /// The ggml type with the same bytes.
    pub fn ggml(self) -> GgmlType {
        match self {
            SourceDType::F32 => GgmlType::F32,
            SourceDType::F16 => GgmlType::F16,
            SourceDType::BF16 => GgmlType::BF16,
            SourceDType::Ggml(t) => t,
        }
    }
}

/// A lazy view into one of the model's input files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    /// Index into `Model::files`.
    pub file: usize,
    pub dtype: SourceDType,
    /// Absolute byte offset in the file.
    pub offset: u64,
    pub len: u64,
}

/// A row transform applied while streaming.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Transform {
    /// llama q/k rows from HF's rotate-half RoPE layout to ggml's interleaved
    /// one: `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)`. This
    /// is a pure row permutation; see [`Transform::source_row`].
    RopePermute { n_head: usize },
    /// The inverse of [`Transform::RopePermute`]: a GGUF's interleaved q/k
    /// rows back to Hugging Face's rotate-half layout (for outputs in HF
    /// naming written from a GGUF: compressed-tensors). A row permutation.
    RopeUnpermute { n_head: usize },
    /// Every value plus a constant, rounded back to the source dtype (the
    /// converter adds in the checkpoint's dtype: Gemma's `norm.weight + 1`).
    /// Values change, rows do not move; see [`Transform::changes_values`].
    Add(f32),
}

impl Transform {
    /// Whether the transform changes values (so the source bytes cannot be
    /// copied as they are).
    pub fn changes_values(self) -> bool {
        matches!(self, Transform::Add(_))
    }

    /// The source row that output row `r` of a tensor with `rows` rows comes from.
    pub fn source_row(self, r: usize, rows: usize) -> usize {
        match self {
            Transform::Add(_) => r,
            Transform::RopePermute { n_head } => {
                let half = rows / n_head / 2;
                // output index r = (h, j, i) over shape (n_head, half, 2) comes from
                // source (h, i, j) over shape (n_head, 2, half).
                let h = r / (2 * half);
                let rem = r % (2 * half);
                let j = rem / 2;
                let i = rem % 2;
                h * 2 * half + i * half + j
            }
            Transform::RopeUnpermute { n_head } => {
                let half = rows / n_head / 2;
                // output index r = (h, i, j) over shape (n_head, 2, half) comes from
                // source (h, j, i) over shape (n_head, half, 2).
                let h = r / (2 * half);
                let rem = r % (2 * half);
                let i = rem / half;
                let j = rem % half;
                h * 2 * half + j * 2 + i
            }
        }
    }
}

/// One tensor of the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorNode {
    /// Name in the output (GGUF) naming.
    pub name: String,
    /// Name in the input file.
    pub source_name: String,
    /// Row-major shape, PyTorch order (the row is the last dimension).
    pub shape: Vec<usize>,
    pub role: Role,
    pub layer: Option<usize>,
    pub source: Source,
    /// A tensor stacked from several input tensors (the routed experts of a
    /// Hugging Face MoE layer, one tensor per expert, stacked into one
    /// `[n_expert, out, in]` tensor): its rows are these parts' rows, part
    /// after part, each part holding `n_rows / parts.len()` rows of the same
    /// dtype. `source` then describes the whole: the first part's file,
    /// dtype and offset, and the parts' total length. Empty for a tensor
    /// read from one place (every other tensor).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Source>,
    pub transform: Option<Transform>,
    /// The chosen output encoding; `None` until a pass decides.
    pub encoding: Option<Encoding>,
    /// What a pass could not do to this tensor and why.
    pub notes: Vec<Note>,
}

/// What a pass did differently from what was asked, or could not do: data
/// for code (`kind`) and a sentence for users (`text`, what `Display` and
/// serde write).
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub kind: NoteKind,
    pub text: String,
}

/// The kinds of [`Note`], with the fields code needs.
#[derive(Debug, Clone, PartialEq)]
pub enum NoteKind {
    /// `wanted` cannot encode rows of `row_len` values; `used` was chosen instead.
    Fallback {
        wanted: Encoding,
        used: Encoding,
        row_len: usize,
    },
    /// A `--tensor-type` pattern changed the recipe's choice.
    Override {
        pattern: String,
        from: Encoding,
        to: Encoding,
    },
    /// An input tensor that is not carried into the output.
    Dropped { tensor: String },
    /// A tensor computed from config values, not read from an input file
    /// (see [`ComputedTensor`]); its name is already in GGUF naming.
    Computed { from: String },
    /// Anything else worth saying, with no fields to act on.
    Info,
}

impl Note {
    pub fn new(kind: NoteKind, text: impl Into<String>) -> Note {
        Note {
            kind,
            text: text.into(),
        }
    }

    pub fn info(text: impl Into<String>) -> Note {
        Note::new(NoteKind::Info, text)
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Note {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl TensorNode {
    /// Is this tensor computed from config values (see [`ComputedTensor`])?
    pub fn is_computed(&self) -> bool {
        self.notes
            .iter()
            .any(|n| matches!(n.kind, NoteKind::Computed { .. }))
    }

    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Length of one row (the innermost dimension).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    pub fn n_rows(&self) -> usize {
        self.n_elements().checked_div(self.row_len()).unwrap_or(0)
    }

    /// Where source row `r` (after any transform) is read: the source (a
    /// part of a stacked tensor, or the tensor's own) and the row's index in
    /// it.
    pub fn source_of_row(&self, r: usize) -> (&Source, usize) {
        if self.parts.is_empty() {
            return (&self.source, r);
        }
        let per_part = (self.n_rows() / self.parts.len()).max(1);
        let i = (r / per_part).min(self.parts.len() - 1);
        (&self.parts[i], r - i * per_part)
    }

    /// The ggml type the chosen encoding lowers to (`Keep` is the source's
    /// own type); `None` before a pass decides or for an encoding that is
    /// not a ggml type.
    pub fn ggml_type(&self) -> Option<GgmlType> {
        match self.encoding? {
            Encoding::Keep => Some(self.source.dtype.ggml()),
            e => e.ggml(),
        }
    }

    /// Bytes of the tensor in its chosen encoding (`None` before a decision
    /// or where the encoding cannot take the row length).
    pub fn encoded_bytes(&self) -> Option<u64> {
        let dtype_bytes = match self.source.dtype {
            SourceDType::F32 => 4,
            _ => 2,
        };
        match self.encoding? {
            Encoding::Keep => Some(self.source.len),
            e => e.bytes(self.n_rows(), self.row_len(), dtype_bytes),
        }
    }
}

/// A typed metadata value (GGUF's value types).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Ordered key/value metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metadata(pub Vec<(String, MetaValue)>);

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Insert or replace, keeping the position of an existing key.
    pub fn set(&mut self, key: &str, value: MetaValue) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }
}

/// A tokenizer's kind, with the facts only that kind has.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum TokenizerKind {
    /// Byte-level BPE (`tokenizer.json`): merges in rank order, each "a b".
    Bpe { merges: Vec<String> },
    /// SentencePiece (`tokenizer.model`): a score per token, whether a space
    /// is prefixed to the text, and the special ids the model file itself
    /// declares (unknown, bos, eos: non-negative ones, in that order; the
    /// final ids are [`Tokenizer::special`]).
    SentencePiece {
        scores: Vec<f32>,
        add_space_prefix: bool,
        declared: Vec<(SpecialToken, u32)>,
    },
}

/// What a token is (llama.cpp's `llama_token_type`, numbered as there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TokenType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

/// A special token's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SpecialToken {
    Bos,
    Eos,
    Unknown,
    Pad,
    Separator,
    Cls,
    Mask,
}

impl SpecialToken {
    /// Every kind, in the order converters look them up.
    pub const ALL: [SpecialToken; 7] = [
        SpecialToken::Bos,
        SpecialToken::Eos,
        SpecialToken::Unknown,
        SpecialToken::Pad,
        SpecialToken::Separator,
        SpecialToken::Cls,
        SpecialToken::Mask,
    ];
}

/// A tokenizer, format-neutral: token i is the token with id i, and the list
/// is as long as the model's vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tokenizer {
    pub kind: TokenizerKind,
    /// The pre-tokenizer's name, as llama.cpp names it (`llama-bpe`,
    /// `qwen2`, `smollm`; `default` for SentencePiece).
    pub pre: String,
    pub tokens: Vec<String>,
    pub token_types: Vec<TokenType>,
    /// Special token ids, in [`SpecialToken::ALL`] order, those known.
    pub special: Vec<(SpecialToken, u32)>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
}

/// A chat template: `name` is `default` for the main one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTemplate {
    pub name: String,
    pub template: String,
}

/// The model's neutral metadata beyond [`Arch`]: what any container needs
/// to describe it (name, tokenizer, chat templates).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelInfo {
    pub name: Option<String>,
    pub tokenizer: Option<Tokenizer>,
    pub chat_templates: Vec<ChatTemplate>,
    /// True for a GGUF input: the fields above are not parsed out of it but
    /// carried, with its other keys, in [`Model::metadata`], which the GGUF
    /// lowering then writes as it is (requantizing a GGUF keeps its keys
    /// byte for byte).
    pub in_metadata: bool,
}

/// The whole model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Model {
    /// Input files, indexed by `Source::file`.
    pub files: Vec<std::path::PathBuf>,
    pub arch: Option<Arch>,
    pub tensors: Vec<TensorNode>,
    /// Neutral metadata: name, tokenizer, chat templates.
    pub info: ModelInfo,
    /// GGUF-specific key/values, written only by the GGUF lowering
    /// (`formats::gguf::key_values`), after the keys it builds from `arch`
    /// and `info`: a GGUF input's own keys (pass-through, see
    /// [`ModelInfo::in_metadata`]), then what passes stamp for llama.cpp
    /// (`general.quantization_version`, `general.file_type`,
    /// `quantize.imatrix.*`). Other containers ignore it.
    pub metadata: Metadata,
    /// How the tensors are cut into output files, one per device (the
    /// layout pass): contiguous ranges of `tensors`, in order, covering them
    /// all. Empty: one file.
    pub shards: Vec<std::ops::Range<usize>>,
    /// Model-wide notes (fallbacks, conversions done, things skipped).
    pub notes: Vec<Note>,
    /// Importance vectors, attached by the `importance` pass.
    #[serde(skip)]
    pub importance: Option<crate::passes::importance::Importance>,
}

impl Model {
    pub fn n_params(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_elements() as u64).sum()
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorNode> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_permute_matches_reshape_swapaxes() {
        // rows = 8, n_head = 2: half = 2. Reference from numpy:
        // np.arange(8).reshape(2, 2, 2).swapaxes(1, 2).reshape(8) = [0,2,1,3,4,6,5,7]
        let t = Transform::RopePermute { n_head: 2 };
        let got: Vec<usize> = (0..8).map(|r| t.source_row(r, 8)).collect();
        assert_eq!(got, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        // rows = 12, n_head = 1: half = 6
        // np.arange(12).reshape(1,2,6).swapaxes(1,2).reshape(12)
        let t = Transform::RopePermute { n_head: 1 };
        let got: Vec<usize> = (0..12).map(|r| t.source_row(r, 12)).collect();
        assert_eq!(got, vec![0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]);
    }

    #[test]
    fn rope_unpermute_inverts_rope_permute() {
        // np.arange(12).reshape(1, 6, 2).swapaxes(1, 2).reshape(12)
        let t = Transform::RopeUnpermute { n_head: 1 };
        let got: Vec<usize> = (0..12).map(|r| t.source_row(r, 12)).collect();
        assert_eq!(got, vec![0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11]);
        for (rows, n_head) in [(8, 2), (24, 3), (64, 4)] {
            let p = Transform::RopePermute { n_head };
            let u = Transform::RopeUnpermute { n_head };
            for r in 0..rows {
                assert_eq!(p.source_row(u.source_row(r, rows), rows), r);
            }
        }
    }
}
