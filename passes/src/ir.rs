//! The IR: a `Model` is an ordered table of named tensors plus typed metadata.
//!
//! Invariants (checked by `verify`):
//! - tensor names are unique; shapes are row-major (PyTorch order) with the
//!   row (innermost, `in_features`) last;
//! - a `Source` is a lazy view into an input file: nothing is read until the
//!   emitter asks for it;
//! - an encoding, once chosen, can encode the tensor's row length (shape
//!   fallbacks are applied by the pass that chooses, and recorded as notes);
//! - metadata is neutral (`Arch`, `ModelInfo`); GGUF key/values live apart in
//!   `Model::metadata` and are written only by the GGUF lowering;
//! - `Model::shards`, when set (by the layout pass), cuts the tensor table
//!   into contiguous, non-empty ranges covering it, in order.

use quant::GgmlType;
use serde::Serialize;

/// Architecture facts the passes and the cost model need.
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
    Norm,
    Output,
    Other,
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
            Role::Norm => "norm",
            Role::Output => "output",
            Role::Other => "other",
        }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Transform {
    /// llama q/k rows from HF's rotate-half RoPE layout to ggml's interleaved
    /// one: `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)`. This
    /// is a pure row permutation; see [`Transform::source_row`].
    RopePermute { n_head: usize },
}

impl Transform {
    /// The source row that output row `r` of a tensor with `rows` rows comes from.
    pub fn source_row(self, r: usize, rows: usize) -> usize {
        match self {
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
    pub transform: Option<Transform>,
    /// The chosen output encoding; `None` until a pass decides.
    pub encoding: Option<GgmlType>,
    /// What a pass could not do to this tensor and why.
    pub notes: Vec<String>,
}

impl TensorNode {
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
    pub notes: Vec<String>,
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
}
