//! The IR: a `Model` is an ordered table of named tensors plus typed metadata.
//!
//! Invariants (checked by `verify`):
//! - tensor names are unique; shapes are row-major (PyTorch order) with the
//!   row (innermost, `in_features`) last;
//! - a `Source` is a lazy view into an input file: nothing is read until the
//!   emitter asks for it;
//! - an encoding, once chosen, can encode the tensor's row length (shape
//!   fallbacks are applied by the pass that chooses, and recorded as notes).

use quant::GgmlType;
use serde::Serialize;

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

/// The whole model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Model {
    /// Input files, indexed by `Source::file`.
    pub files: Vec<std::path::PathBuf>,
    pub arch: Option<Arch>,
    pub tensors: Vec<TensorNode>,
    /// Output metadata (GGUF keys), built by the loader and the passes.
    pub metadata: Metadata,
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
