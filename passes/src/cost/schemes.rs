//! compressed-tensors schemes as target profiles list them: llm-compressor's
//! preset names, what each needs of the hardware, the bytes one Linear takes
//! in each (packed weights, scales, zero points, shape and global-scale
//! tensors, as compressed-tensors stores them), and the precision its
//! activations are multiplied in.
//!
//! What must stay true: the names are llm-compressor's (`W4A16`, `FP8_DYNAMIC`,
//! `NVFP4`, ...), matched case-insensitively; the bytes are the stored bytes of
//! the layout in `formats::ct` (a test checks them against a written artifact);
//! a requirement names the hardware feature and the runtimes' source, so a
//! refusal can say why.

use std::fmt;

use super::target::Precision;

/// A compressed-tensors quantization preset (llm-compressor's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtScheme {
    /// int4 weights, symmetric, per group (default 128), 16-bit activations.
    W4A16,
    /// int4 weights with zero points, per group, 16-bit activations.
    W4A16Asym,
    /// int8 weights, symmetric, per group, 16-bit activations.
    W8A16,
    /// int8 weights per channel, dynamic per-token int8 activations.
    W8A8,
    /// E4M3 weights per tensor, static per-tensor FP8 activations.
    Fp8,
    /// E4M3 weights per channel, dynamic per-token FP8 activations.
    Fp8Dynamic,
    /// E4M3 weights per 128 x 128 tile, dynamic per-group FP8 activations.
    Fp8Block,
    /// NVFP4 weights, 16-bit activations.
    Nvfp4A16,
    /// NVFP4 weights and activations (W4A4).
    Nvfp4,
    /// MXFP4 weights, 16-bit activations.
    Mxfp4,
}

impl fmt::Display for CtScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl CtScheme {
    pub const ALL: [CtScheme; 10] = [
        CtScheme::W4A16,
        CtScheme::W4A16Asym,
        CtScheme::W8A16,
        CtScheme::W8A8,
        CtScheme::Fp8,
        CtScheme::Fp8Dynamic,
        CtScheme::Fp8Block,
        CtScheme::Nvfp4A16,
        CtScheme::Nvfp4,
        CtScheme::Mxfp4,
    ];

    /// llm-compressor's preset name.
    pub fn name(self) -> &'static str {
        match self {
            CtScheme::W4A16 => "W4A16",
            CtScheme::W4A16Asym => "W4A16_ASYM",
            CtScheme::W8A16 => "W8A16",
            CtScheme::W8A8 => "W8A8",
            CtScheme::Fp8 => "FP8",
            CtScheme::Fp8Dynamic => "FP8_DYNAMIC",
            CtScheme::Fp8Block => "FP8_BLOCK",
            CtScheme::Nvfp4A16 => "NVFP4A16",
            CtScheme::Nvfp4 => "NVFP4",
            CtScheme::Mxfp4 => "MXFP4",
        }
    }

    /// The name with what it quantizes, for messages: `NVFP4 (W4A4)`.
    pub fn label(self) -> String {
        match self {
            CtScheme::W8A8 => "W8A8 (int8)".into(),
            CtScheme::Fp8 => "FP8 (W8A8, static)".into(),
            CtScheme::Fp8Dynamic => "FP8_DYNAMIC (W8A8)".into(),
            CtScheme::Fp8Block => "FP8_BLOCK (W8A8)".into(),
            CtScheme::Nvfp4 => "NVFP4 (W4A4)".into(),
            s => s.name().into(),
        }
    }

    /// A preset by name, case-insensitively (`INT8_W8A8` and `MXFP4A16` are
    /// llm-compressor's other names for W8A8 and MXFP4).
    pub fn parse(s: &str) -> Option<CtScheme> {
        let u = s.trim().to_ascii_uppercase();
        let u = match u.as_str() {
            "INT8_W8A8" => "W8A8",
            "MXFP4A16" => "MXFP4",
            other => other,
        };
        CtScheme::ALL.into_iter().find(|c| c.name() == u)
    }

    /// Does the scheme quantize activations (so prefill multiplies in the
    /// weights' low precision)?
    pub fn quantizes_activations(self) -> bool {
        matches!(
            self,
            CtScheme::W8A8
                | CtScheme::Fp8
                | CtScheme::Fp8Dynamic
                | CtScheme::Fp8Block
                | CtScheme::Nvfp4
        )
    }

    /// Does the scheme take a group size (`--group-size`)?
    pub fn grouped(self) -> bool {
        matches!(
            self,
            CtScheme::W4A16 | CtScheme::W4A16Asym | CtScheme::W8A16
        )
    }

    /// The tensor-core formats a server multiplies in, in order of
    /// preference: the activations' precision for W8A8 schemes, else 16-bit
    /// (weight-only kernels dequantize to f16/bf16 before the multiply).
    pub fn compute(self) -> &'static [Precision] {
        match self {
            CtScheme::W8A8 => &[Precision::Int8, Precision::Fp16, Precision::Bf16],
            CtScheme::Fp8 | CtScheme::Fp8Dynamic | CtScheme::Fp8Block => {
                &[Precision::Fp8, Precision::Fp16, Precision::Bf16]
            }
            CtScheme::Nvfp4 => &[Precision::Fp4, Precision::Fp8, Precision::Fp16],
            _ => &[Precision::Fp16, Precision::Bf16],
        }
    }

    /// What the scheme needs of a device beyond 16-bit matrix units, and
    /// who says so (the reason a target that lacks it refuses the scheme).
    pub fn requirement(self) -> &'static str {
        match self {
            CtScheme::Fp8 | CtScheme::Fp8Dynamic | CtScheme::Fp8Block => {
                "FP8 W8A8 needs FP8 tensor cores (NVIDIA Ada, Hopper, Blackwell; AMD MI300-class; TPU v7): vLLM's compressed_tensors_w8a8_fp8 needs compute capability 8.9, older GPUs run it weight-only through Marlin"
            }
            CtScheme::Nvfp4 => {
                "NVFP4 (W4A4) needs FP4 tensor cores (Blackwell): vLLM's compressed_tensors_w4a4_nvfp4 needs compute capability 10.0"
            }
            CtScheme::W8A8 => {
                "INT8 W8A8 needs INT8 tensor cores (NVIDIA Turing or later, TPU v5e/v6e): vLLM's compressed_tensors_w8a8_int8 needs compute capability 7.5"
            }
            CtScheme::W4A16 | CtScheme::W4A16Asym | CtScheme::W8A16 => {
                "weight-only int4/int8 needs the runtime's mixed-precision kernels (vLLM Marlin/Machete: compute capability 8.0; Exllama 4-bit: 6.0; vllm-gaudi WNA16; QEfficient int4 groups)"
            }
            CtScheme::Nvfp4A16 | CtScheme::Mxfp4 => {
                "weight-only FP4 needs vLLM's Marlin FP4 kernels (compute capability 8.0) or native FP4"
            }
        }
    }

    /// Stored bytes of one Linear weight `[rows, cols]` in this scheme, with
    /// `group` for the grouped schemes (0: per channel) and scales of
    /// `scale_bytes` (the weight's dtype): `None` where the scheme cannot
    /// hold the layer (the group or block does not divide its input width),
    /// which llm-compressor refuses and kiln keeps unquantized.
    pub fn linear_bytes(
        self,
        rows: usize,
        cols: usize,
        group: u32,
        scale_bytes: usize,
    ) -> Option<u64> {
        let (r, c, sb) = (rows as u64, cols as u64, scale_bytes as u64);
        let g = group as u64;
        let groups = |g: u64| -> Option<u64> {
            if g == 0 {
                Some(1)
            } else if c % g == 0 {
                Some(c / g)
            } else {
                None
            }
        };
        // Values packed densely into int32 words (compressed-tensors 0.18+).
        let words = |n: u64, bits: u64| (n * bits).div_ceil(32);
        Some(match self {
            CtScheme::W4A16 | CtScheme::W8A16 | CtScheme::W4A16Asym => {
                let bits = if self == CtScheme::W8A16 { 8 } else { 4 };
                let n = groups(g)?;
                let mut b = r * words(c, bits) * 4 + r * n * sb + 16;
                if self == CtScheme::W4A16Asym {
                    b += words(r, bits) * 4 * n;
                }
                b
            }
            CtScheme::W8A8 | CtScheme::Fp8Dynamic => r * c + r * sb,
            CtScheme::Fp8 => r * c + 2 * sb,
            // Whole 128-wide tiles along the input (llm-compressor refuses
            // others; kiln's encoder keeps them).
            CtScheme::Fp8Block if c % 128 != 0 => return None,
            CtScheme::Fp8Block => r * c + r.div_ceil(128) * (c / 128) * sb,
            CtScheme::Nvfp4A16 | CtScheme::Nvfp4 => {
                if c % 16 != 0 {
                    return None;
                }
                let input_global = if self == CtScheme::Nvfp4 { 4 } else { 0 };
                r * c / 2 + r * c / 16 + 4 + input_global
            }
            CtScheme::Mxfp4 => {
                if c % 32 != 0 {
                    return None;
                }
                r * c / 2 + r * c / 32
            }
        })
    }
}

/// What a runtime can be listed as running besides the schemes: GGUF files
/// (llama.cpp) and unquantized 16-bit checkpoints.
pub const PLAIN_ENTRIES: &[&str] = &["gguf", "f16", "bf16"];

/// Every entry a `[runtimes]` list may hold.
pub fn runtime_entries() -> Vec<&'static str> {
    let mut v = PLAIN_ENTRIES.to_vec();
    v.extend(CtScheme::ALL.iter().map(|s| s.name()));
    v
}

/// The runtimes a profile may list.
pub const RUNTIMES: &[&str] = &[
    "llama.cpp",
    "vllm",
    "trt-llm",
    "tpu-inference",
    "vllm-gaudi",
    "neuron",
    "qefficient",
];

/// The runtimes an `--engine` stands for, in order of preference: vLLM's
/// hardware backends (tpu-inference on TPUs, vllm-gaudi on Gaudi, the Neuron
/// and QEfficient backends) are what `--engine vllm` runs on those targets.
pub fn engine_runtimes(engine: &str) -> &'static [&'static str] {
    match engine {
        "vllm" => &[
            "vllm",
            "tpu-inference",
            "vllm-gaudi",
            "neuron",
            "qefficient",
        ],
        "trt-llm" => &["trt-llm"],
        "llama.cpp" => &["llama.cpp"],
        _ => &[],
    }
}
