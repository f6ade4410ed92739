//! compressed-tensors arithmetic: the round-to-nearest quantizers of
//! llm-compressor's presets (W4A16, W4A16_ASYM, W8A16, W8A8, FP8_DYNAMIC,
//! FP8_BLOCK, NVFP4A16, MXFP4) value by value, and the packings
//! compressed-tensors stores them in.
//!
//! Written from compressed-tensors 0.20 (`quantization/utils/helpers.py::
//! calculate_qparams` and `generate_gparam`, `quantization/lifecycle/
//! forward_helpers.py::_quantize`, `quantization/quant_args.py::
//! round_to_quantized_type_*`, `quantization/utils/{fp4,mxfp}_utils.py`,
//! `compressors/pack_quantized/helpers.py::pack_to_int32`,
//! `compressors/nvfp4/helpers.py::pack_fp4_to_uint8`) and llm-compressor 0.14's
//! min-max observers, as they run on CPU.
//!
//! The reference computes in torch tensors of the weight's dtype, so every
//! intermediate is rounded to that dtype: a bf16 checkpoint's scale is
//! `bf16(amax / 7.5)`, and a value is quantized as
//! `round_half_even(clamp(bf16(x / scale)))`, two roundings, not one. [`Dtype`]
//! says which dtype the arithmetic is rounded to, and every function here takes
//! it. Where torch promotes to f32 (a bf16 tensor divided by an f32 tensor, as
//! with NVFP4's global scale) the f32 result is kept.
//!
//! What must stay true: every function is a pure function of its arguments
//! (rows may be encoded in any order and in parallel); packers check lengths
//! before writing; NaN inputs never panic (they produce whatever the
//! reference's casts produce, and callers refuse non-finite weights before
//! encoding anyway).

use crate::float::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};

/// The dtype a tensor's arithmetic is done in (the checkpoint's weight dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bf16,
    F16,
    F32,
}

impl Dtype {
    /// `x` rounded to this dtype (round to nearest even), as an f32.
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            Dtype::Bf16 => bf16_to_f32(f32_to_bf16(x)),
            Dtype::F16 => f16_to_f32(f32_to_f16(x)),
            Dtype::F32 => x,
        }
    }

    /// `torch.finfo(dtype).eps`: what a zero scale is replaced with.
    pub fn eps(self) -> f32 {
        match self {
            Dtype::Bf16 => 0.0078125,
            Dtype::F16 => 0.000_976_562_5,
            Dtype::F32 => f32::EPSILON,
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Dtype::Bf16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }

    /// The safetensors dtype name.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bf16 => "BF16",
            Dtype::F16 => "F16",
            Dtype::F32 => "F32",
        }
    }

    /// Store `x` (already a value of this dtype) little-endian into `dst`,
    /// which is [`Dtype::bytes`] long.
    #[inline]
    pub fn put(self, x: f32, dst: &mut [u8]) {
        match self {
            Dtype::Bf16 => dst.copy_from_slice(&f32_to_bf16(x).to_le_bytes()),
            Dtype::F16 => dst.copy_from_slice(&f32_to_f16(x).to_le_bytes()),
            Dtype::F32 => dst.copy_from_slice(&x.to_le_bytes()),
        }
    }
}

/// Smallest and largest value of `v` (NaN ignored, as `torch.aminmax` does
/// not: a NaN weight is refused before encoding, so the difference is moot).
#[inline]
pub fn min_max(v: &[f32]) -> (f32, f32) {
    v.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// Largest magnitude of `v`.
#[inline]
pub fn amax(v: &[f32]) -> f32 {
    let (lo, hi) = min_max(v);
    lo.abs().max(hi.abs())
}

/// Scale and zero point of one group of an integer scheme.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntParams {
    /// The scale, a value of the weight dtype (stored as `weight_scale`).
    pub scale: f32,
    /// The zero point in the signed range (`[-2^(bits-1), 2^(bits-1))`); 0 for symmetric.
    pub zero_point: i8,
}

/// The signed range of `bits`-bit integers.
#[inline]
pub fn int_range(bits: u8) -> (f32, f32) {
    let half = (1i32 << (bits - 1)) as f32;
    (-half, half - 1.0)
}

/// `calculate_qparams` for an integer scheme from a group's min and max (in
/// the weight dtype): symmetric `scale = amax / ((qmax - qmin) / 2)`,
/// asymmetric `scale = (max - min) / (qmax - qmin)`,
/// `zp = round(clamp(qmin - min / scale))`; min is clamped to <= 0 and max to
/// >= 0 first, and a zero scale becomes the dtype's eps.
pub fn int_params(min: f32, max: f32, bits: u8, symmetric: bool, d: Dtype) -> IntParams {
    let (qmin, qmax) = int_range(bits);
    let range = qmax - qmin; // exact in every dtype for bits <= 8
    let min = min.min(0.0);
    let max = max.max(0.0);
    let (scale, zp) = if symmetric {
        let amax = min.abs().max(max.abs());
        (d.round(amax / d.round(range / 2.0)), 0.0)
    } else {
        let scale = d.round(d.round(max - min) / range);
        let zp = d.round(qmin - d.round(min / scale));
        (scale, zp.clamp(qmin, qmax))
    };
    let scale = if scale == 0.0 { d.eps() } else { scale };
    // zp_dtype int8: torch.round(clamp(zp, -128, 127)).to(int8)
    let zero_point = if symmetric {
        0
    } else {
        zp.round_ties_even() as i8
    };
    IntParams { scale, zero_point }
}

/// One value quantized with `p` (`_quantize` for an integer scheme):
/// `round_half_even(clamp(dtype(dtype(x / scale) + zp), qmin, qmax))`.
#[inline]
pub fn int_quantize(x: f32, p: IntParams, bits: u8, d: Dtype) -> i8 {
    let (qmin, qmax) = int_range(bits);
    let mut scaled = d.round(x / p.scale);
    if p.zero_point != 0 {
        scaled = d.round(scaled + p.zero_point as f32);
    }
    // clamp passes NaN through; `as i8` then gives 0, as torch's cast does on x86.
    scaled.clamp(qmin, qmax).round_ties_even() as i8
}

/// The inverse, for decoders and error measurement: `(q - zp) * scale` in the dtype.
#[inline]
pub fn int_dequantize(q: i8, p: IntParams, d: Dtype) -> f32 {
    d.round((q as f32 - p.zero_point as f32) * p.scale)
}

/// Int32 words `pack_to_int32` stores for `n` values of `bits` bits.
pub fn packed_words(n: usize, bits: u8) -> usize {
    (n * bits as usize).div_ceil(32)
}

/// `pack_to_int32` along a row: value `i` (offset by `2^(bits-1)`) occupies
/// bits `[i*bits, (i+1)*bits)` of a little-endian bit stream cut into int32
/// words (dense since compressed-tensors 0.18: values may straddle words).
/// `dst` is `4 * packed_words(q.len(), bits)` bytes.
///
/// # Panics
/// If `dst` has the wrong length or `bits` is not in 1..=8.
pub fn pack_int32(q: &[i8], bits: u8, dst: &mut [u8]) {
    assert!((1..=8).contains(&bits), "pack_int32: {bits} bits");
    assert_eq!(
        dst.len(),
        4 * packed_words(q.len(), bits),
        "pack_int32: output length"
    );
    let offset = 1i32 << (bits - 1);
    let mask = (1u64 << bits) - 1;
    let mut acc = 0u64;
    let mut filled = 0u32;
    let mut out = dst.chunks_exact_mut(4);
    for &v in q {
        acc |= (((v as i32 + offset) as u64) & mask) << filled;
        filled += bits as u32;
        if filled >= 32 {
            out.next()
                .unwrap()
                .copy_from_slice(&(acc as u32).to_le_bytes());
            acc >>= 32;
            filled -= 32;
        }
    }
    if filled > 0 {
        out.next()
            .unwrap()
            .copy_from_slice(&(acc as u32).to_le_bytes());
    }
}

/// The inverse of [`pack_int32`]: `n` signed values from packed words.
pub fn unpack_int32(src: &[u8], bits: u8, n: usize) -> Vec<i8> {
    let offset = 1i32 << (bits - 1);
    let mask = (1u64 << bits) - 1;
    (0..n)
        .map(|i| {
            let bit = i * bits as usize;
            let word = bit / 32;
            let lo = u32::from_le_bytes(src[4 * word..4 * word + 4].try_into().unwrap()) as u64;
            let hi = src
                .get(4 * word + 4..4 * word + 8)
                .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()) as u64);
            let v = ((lo | hi << 32) >> (bit % 32)) & mask;
            (v as i32 - offset) as i8
        })
        .collect()
}

/// OCP E4M3FN (`torch.float8_e4m3fn`) from f32, round to nearest even, as
/// c10's `fp8e4m3fn_from_fp32_value`: magnitudes that round past 448 become
/// NaN (0x7F), subnormals down to 2^-9.
pub fn e4m3_from_f32(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a.is_nan() || a >= 464.0 {
        return sign | 0x7F;
    }
    if a < 2f32.powi(-6) {
        // Subnormal: a multiple of 2^-9; exact product, ties to even.
        let q = (a * 512.0).round_ties_even() as u8; // 0..=8 (8 is the smallest normal)
        return sign | q;
    }
    let bits = a.to_bits();
    let mut exp = ((bits >> 23) as i32) - 127;
    let mant = bits & 0x7F_FFFF;
    let mut m3 = mant >> 20;
    let rem = mant & 0xF_FFFF;
    if rem > 0x8_0000 || (rem == 0x8_0000 && m3 & 1 == 1) {
        m3 += 1;
        if m3 == 8 {
            m3 = 0;
            exp += 1;
        }
    }
    sign | (((exp + 7) as u8) << 3) | m3 as u8
}

/// E4M3FN to f32, exact (0x7F / 0xFF are NaN).
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = (b >> 3) & 0xF;
    let m = (b & 7) as f32;
    if e == 0xF && b & 7 == 7 {
        return f32::NAN;
    }
    let v = if e == 0 {
        m * 2f32.powi(-9)
    } else {
        (1.0 + m / 8.0) * 2f32.powi(e as i32 - 7)
    };
    sign * v
}

/// FP8 scale of a group (tensor, channel or block) with largest magnitude
/// `amax`: `amax / max` in the weight dtype (`max` 448, or 240 for runtimes
/// whose E4M3 saturates there), a zero scale replaced by the dtype's eps.
pub fn fp8_scale(amax: f32, max: f32, d: Dtype) -> f32 {
    let s = d.round(amax / d.round(max));
    if s == 0.0 {
        d.eps()
    } else {
        s
    }
}

/// One value as E4M3: `e4m3(clamp(dtype(x / scale) + 0, -max, max))`.
#[inline]
pub fn fp8_quantize(x: f32, scale: f32, max: f32, d: Dtype) -> u8 {
    // `+ 0.0` is the reference adding the (zero) zero point of a symmetric
    // scheme: it turns -0.0 into +0.0, so a negative zero weight stores 0x00.
    e4m3_from_f32((d.round(x / scale) + 0.0).clamp(-max, max))
}

/// E2M1 magnitudes by code (`idx` of `sign << 3 | idx`).
pub const FP4_VALUES: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// `cast_to_fp4` (the CPU path) and the packer's code in one: the E2M1 code
/// of `x` (already divided by its scale and clamped to +-6). Breakpoints as
/// the reference has them: <= 0.25 -> 0, < 0.75 -> 0.5, <= 1.25 -> 1,
/// < 1.75 -> 1.5, <= 2.5 -> 2, < 3.5 -> 3, <= 5 -> 4, else 6; the sign bit
/// is the sign of `sign(x) * |q|`, so a negative value that rounds to zero
/// keeps its sign (code 8), and a zero's sign follows `torch.sign`.
#[inline]
pub fn fp4_code(x: f32) -> u8 {
    let a = x.abs();
    let idx = if a <= 0.25 {
        0
    } else if a < 0.75 {
        1
    } else if a <= 1.25 {
        2
    } else if a < 1.75 {
        3
    } else if a <= 2.5 {
        4
    } else if a < 3.5 {
        5
    } else if a <= 5.0 {
        6
    } else {
        7
    };
    // torch.sign(-0.0) is -0.0 and sign * 0 keeps the sign: signbit set.
    let negative = x < 0.0 || (x == 0.0 && x.is_sign_negative());
    (u8::from(negative) << 3) | idx
}

/// The value of an E2M1 code.
#[inline]
pub fn fp4_value(code: u8) -> f32 {
    let v = FP4_VALUES[(code & 7) as usize];
    if code & 8 != 0 {
        -v
    } else {
        v
    }
}

/// NVFP4's per-tensor global scale from the tensor's (or its fused group's)
/// largest magnitude: `448 * 6 / amax` computed in the weight dtype (the
/// observer's statistics are in that dtype) as torch computes a scalar over
/// a tensor, `dtype(dtype(1 / amax) * 2688)`, then held as f32; NaN or
/// infinite becomes 1.
pub fn nvfp4_global_scale(amax: f32, d: Dtype) -> f32 {
    let amax = amax.max(tiny(d));
    // A Python scalar divided by a tensor is `tensor.reciprocal() * scalar`
    // in torch: two roundings to the dtype, not one.
    let g = d.round(d.round(1.0 / amax) * 2688.0);
    if g.is_finite() {
        g
    } else {
        1.0
    }
}

fn tiny(d: Dtype) -> f32 {
    match d {
        Dtype::Bf16 | Dtype::F32 => f32::MIN_POSITIVE,
        Dtype::F16 => 6.103_515_6e-5,
    }
}

/// NVFP4 group scale (an E4M3 byte) of a 16-value group with largest
/// magnitude `amax`: `e4m3(clamp(global * dtype(amax / 6), +-448))`, a zero
/// replaced by 0.125.
pub fn nvfp4_group_scale(amax: f32, global: f32, d: Dtype) -> u8 {
    let local = d.round(amax / 6.0);
    let s = (global * local).clamp(-448.0, 448.0);
    let b = e4m3_from_f32(s);
    if e4m3_to_f32(b) == 0.0 {
        e4m3_from_f32(0.125)
    } else {
        b
    }
}

/// One NVFP4 value's code: `x / (scale / global)` in f32, clamped to +-6.
#[inline]
pub fn nvfp4_code(x: f32, scale: u8, global: f32) -> u8 {
    let s = e4m3_to_f32(scale) / global;
    // `+ 0.0`: the zero point, as in [`fp8_quantize`].
    fp4_code((x / s + 0.0).clamp(-6.0, 6.0))
}

/// MXFP4 scale (an E8M0 biased exponent) of a 32-value group with largest
/// magnitude `amax` (a value of the weight dtype): `127 + floor(log2(p)) - 2`
/// where `p` is `amax` rounded to a power of two, up when its mantissa is at
/// least 1.75 (`round_to_power_2` with E2M1's one mantissa bit), clamped to
/// 0..=255.
pub fn mx_scale(amax: f32, d: Dtype) -> u8 {
    // round_to_power_2 on the dtype's bits: add 1 << (mantissa - 2), keep sign and exponent.
    let p = match d {
        Dtype::Bf16 => {
            let b = f32_to_bf16(amax) as u32;
            bf16_to_f32((((b + (1 << 5)) & 0xFF80) & 0xFFFF) as u16)
        }
        Dtype::F16 => {
            let b = f32_to_f16(amax) as u32;
            f16_to_f32((((b + (1 << 8)) & 0xFC00) & 0xFFFF) as u16)
        }
        Dtype::F32 => f32::from_bits((amax.to_bits() + (1 << 21)) & 0xFF80_0000),
    };
    let e = 127.0 + p.log2().floor() - 2.0;
    e.clamp(0.0, 255.0).round_ties_even() as u8
}

/// One MXFP4 value's code: `x / 2^(e - 127)` in the weight dtype, clamped to +-6.
#[inline]
pub fn mx_code(x: f32, scale: u8, d: Dtype) -> u8 {
    let s = d.round(2f32.powi(scale as i32 - 127));
    fp4_code((d.round(x / s) + 0.0).clamp(-6.0, 6.0))
}

/// Pack E2M1 codes two per byte, element `2k` in the low nibble.
///
/// # Panics
/// If `codes.len() != 2 * dst.len()`.
pub fn pack_fp4(codes: &[u8], dst: &mut [u8]) {
    assert_eq!(codes.len(), 2 * dst.len(), "pack_fp4: output length");
    for (d, pair) in dst.iter_mut().zip(codes.chunks_exact(2)) {
        *d = (pair[0] & 0xF) | (pair[1] & 0xF) << 4;
    }
}

/// The inverse of [`pack_fp4`]: `2 * src.len()` codes, the low nibble first.
pub fn unpack_fp4(src: &[u8], dst: &mut [u8]) {
    for (pair, &b) in dst.chunks_exact_mut(2).zip(src) {
        pair[0] = b & 0xF;
        pair[1] = b >> 4;
    }
}

/// An FP8 value decoded as compressed-tensors decompresses it
/// (`_dequantize`): the E4M3 value cast to the scale's dtype, times the scale,
/// in that dtype.
#[inline]
pub fn fp8_dequantize(b: u8, scale: f32, d: Dtype) -> f32 {
    d.round(e4m3_to_f32(b) * scale)
}

/// An NVFP4 value decoded as compressed-tensors decompresses it: the group
/// scale (E4M3, exact in bf16) divided by the f32 global scale in f32 (torch
/// promotes), times the E2M1 value in f32, cast to bf16 (the dtype
/// `unpack_fp4_from_uint8` returns, whatever the checkpoint's).
#[inline]
pub fn nvfp4_dequantize(code: u8, scale: u8, global: f32) -> f32 {
    Dtype::Bf16.round(fp4_value(code) * (e4m3_to_f32(scale) / global))
}

/// An MXFP4 value decoded as compressed-tensors decompresses it: the E8M0
/// scale `2^(e - 127)` in bf16 (`decompress_mx_scale`), times the E2M1
/// value, in bf16.
#[inline]
pub fn mx_dequantize(code: u8, scale: u8) -> f32 {
    let s = Dtype::Bf16.round(2f32.powi(scale as i32 - 127));
    Dtype::Bf16.round(fp4_value(code) * s)
}

/// How a serving runtime quantizes a Linear's input at run time, as the
/// config group's `input_activations` says (with the stored scale where the
/// scheme has one). [`ActQuant::apply`] fake-quantizes one token's input
/// (quantize, then dequantize in f32) with the arithmetic vLLM's kernels use
/// (`scaled_int8_quant`, `scaled_fp8_quant`, `scaled_fp4_quant`), so that
/// `kiln eval` measures what the runtime computes, not the weights alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActQuant {
    /// int8, symmetric, one scale per token: `amax / 127`, round half to
    /// even, clamp to -128..127 (W8A8).
    Int8Token,
    /// E4M3, one scale per token: `max(amax / 448, 1 / (448 * 512))`
    /// (FP8_DYNAMIC).
    Fp8Token,
    /// E4M3, one scale per `n` consecutive inputs of a token (FP8_BLOCK's
    /// activations, groups of 128).
    Fp8Group(usize),
    /// E4M3 with the stored per-tensor `input_scale` (FP8 static).
    Fp8Tensor { scale: f32 },
    /// E2M1 per 16 inputs, each group's E4M3 scale computed at run time under
    /// the stored f32 `input_global_scale` (NVFP4 W4A4).
    Nvfp4 { global: f32 },
}

/// vLLM's floor on a dynamic FP8 scale (`1 / (448 * 512)`).
const FP8_MIN_SCALE: f32 = 1.0 / (448.0 * 512.0);

impl ActQuant {
    /// One token's input `x`, fake-quantized in place.
    pub fn apply(self, x: &mut [f32]) {
        let fp8 = |v: &mut [f32], scale: f32| {
            for e in v {
                *e = e4m3_to_f32(e4m3_from_f32((*e / scale).clamp(-448.0, 448.0))) * scale;
            }
        };
        match self {
            ActQuant::Int8Token => {
                let s = amax(x) / 127.0;
                if s > 0.0 {
                    for e in x {
                        *e = (*e / s).round_ties_even().clamp(-128.0, 127.0) * s;
                    }
                }
            }
            ActQuant::Fp8Token => fp8(x, (amax(x) / 448.0).max(FP8_MIN_SCALE)),
            ActQuant::Fp8Group(n) => {
                for g in x.chunks_mut(n.max(1)) {
                    let s = (amax(g) / 448.0).max(FP8_MIN_SCALE);
                    fp8(g, s);
                }
            }
            ActQuant::Fp8Tensor { scale } => fp8(x, scale),
            ActQuant::Nvfp4 { global } => {
                for g in x.chunks_mut(16) {
                    let scale = nvfp4_group_scale(amax(g), global, Dtype::F32);
                    for e in g.iter_mut() {
                        let code = nvfp4_code(*e, scale, global);
                        *e = fp4_value(code) * (e4m3_to_f32(scale) / global);
                    }
                }
            }
        }
    }
}

/// One tensor compressed-tensors stores for a Linear: its name suffix
/// (`weight_packed`, `weight_scale`, ...), safetensors dtype, shape and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub suffix: &'static str,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// How a Linear's weight is compressed, as the container sees one config group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Weights {
    /// `pack-quantized` (or, for 8-bit weights with quantized activations,
    /// `int-quantized`, which stores plain i8): `group` 0 for per channel.
    Int {
        bits: u8,
        group: usize,
        symmetric: bool,
        packed: bool,
    },
    /// E4M3 with one scale per tensor, per output channel, or per
    /// `block x block` tile; `max` is 448 or 240.
    Fp8 { scales: Fp8Grain, max_240: bool },
    /// NVFP4: E4M3 scales per 16 and an f32 global scale.
    Nvfp4,
    /// MXFP4: E8M0 scales per 32.
    Mxfp4,
}

/// Granularity of FP8 scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fp8Grain {
    Tensor,
    Channel,
    Block(usize),
}

/// Compress a whole `rows x cols` weight (values already in the weight
/// dtype `d`) into the tensors compressed-tensors stores for it. `fused_amax`
/// is the largest magnitude over the weight's fused group (q/k/v, gate/up)
/// for NVFP4's shared global scale; `None` uses the tensor's own.
///
/// This is the reference form, one tensor in memory; the streaming writer
/// encodes rows with the same functions and is tested against it.
pub fn encode_tensor(
    w: &[f32],
    rows: usize,
    cols: usize,
    how: Weights,
    d: Dtype,
    fused_amax: Option<f32>,
) -> Vec<Stored> {
    assert_eq!(w.len(), rows * cols, "encode_tensor: {rows} x {cols}");
    let row = |r: usize| &w[r * cols..(r + 1) * cols];
    match how {
        Weights::Int {
            bits,
            group,
            symmetric,
            packed,
        } => {
            let g = if group == 0 { cols } else { group };
            let groups = cols / g;
            let mut params = Vec::with_capacity(rows * groups);
            let mut q = vec![0i8; rows * cols];
            for r in 0..rows {
                for (k, chunk) in row(r).chunks_exact(g).enumerate() {
                    let (lo, hi) = min_max(chunk);
                    let p = int_params(lo, hi, bits, symmetric, d);
                    for (i, &x) in chunk.iter().enumerate() {
                        q[r * cols + k * g + i] = int_quantize(x, p, bits, d);
                    }
                    params.push(p);
                }
            }
            let mut out = Vec::new();
            if packed {
                let words = packed_words(cols, bits);
                let mut bytes = vec![0u8; rows * words * 4];
                for (r, dst) in bytes.chunks_exact_mut(words * 4).enumerate() {
                    pack_int32(&q[r * cols..(r + 1) * cols], bits, dst);
                }
                out.push(Stored {
                    suffix: "weight_packed",
                    dtype: "I32",
                    shape: vec![rows, words],
                    bytes,
                });
            } else {
                let bytes = q.iter().map(|&v| v as u8).collect();
                out.push(Stored {
                    suffix: "weight",
                    dtype: "I8",
                    shape: vec![rows, cols],
                    bytes,
                });
            }
            let mut scales = vec![0u8; rows * groups * d.bytes()];
            for (p, dst) in params.iter().zip(scales.chunks_exact_mut(d.bytes())) {
                d.put(p.scale, dst);
            }
            out.push(Stored {
                suffix: "weight_scale",
                dtype: d.name(),
                shape: vec![rows, groups],
                bytes: scales,
            });
            if packed {
                let mut shape = Vec::with_capacity(16);
                shape.extend_from_slice(&(rows as i64).to_le_bytes());
                shape.extend_from_slice(&(cols as i64).to_le_bytes());
                out.push(Stored {
                    suffix: "weight_shape",
                    dtype: "I64",
                    shape: vec![2],
                    bytes: shape,
                });
            }
            if !symmetric {
                // Packed along the output dimension: column k of the
                // [rows, groups] zero points becomes row k of the packing,
                // and the result is transposed back to [words, groups].
                let words = packed_words(rows, bits);
                let mut t = vec![0u8; groups * words * 4];
                for k in 0..groups {
                    let col: Vec<i8> = (0..rows)
                        .map(|r| params[r * groups + k].zero_point)
                        .collect();
                    pack_int32(&col, bits, &mut t[k * words * 4..(k + 1) * words * 4]);
                }
                let mut bytes = vec![0u8; words * groups * 4];
                for k in 0..groups {
                    for j in 0..words {
                        bytes[(j * groups + k) * 4..(j * groups + k + 1) * 4]
                            .copy_from_slice(&t[(k * words + j) * 4..(k * words + j + 1) * 4]);
                    }
                }
                out.push(Stored {
                    suffix: "weight_zero_point",
                    dtype: "I32",
                    shape: vec![words, groups],
                    bytes,
                });
            }
            out
        }
        Weights::Fp8 {
            scales: grain,
            max_240,
        } => {
            let max = if max_240 { 240.0 } else { 448.0 };
            let (br, bc) = match grain {
                Fp8Grain::Tensor => (rows, cols),
                Fp8Grain::Channel => (1, cols),
                Fp8Grain::Block(b) => (b, b),
            };
            let (nr, nc) = (rows.div_ceil(br), cols.div_ceil(bc));
            let mut s = vec![0f32; nr * nc];
            for (i, s) in s.iter_mut().enumerate() {
                let (bi, bj) = (i / nc, i % nc);
                let mut a = 0f32;
                for r in bi * br..((bi + 1) * br).min(rows) {
                    a = a.max(amax(&row(r)[bj * bc..((bj + 1) * bc).min(cols)]));
                }
                *s = fp8_scale(a, max, d);
            }
            let bytes = (0..rows * cols)
                .map(|i| {
                    let (r, c) = (i / cols, i % cols);
                    fp8_quantize(w[i], s[(r / br) * nc + c / bc], max, d)
                })
                .collect();
            let mut sb = vec![0u8; s.len() * d.bytes()];
            for (v, dst) in s.iter().zip(sb.chunks_exact_mut(d.bytes())) {
                d.put(*v, dst);
            }
            let shape = match grain {
                Fp8Grain::Tensor => vec![1],
                _ => vec![nr, nc],
            };
            vec![
                Stored {
                    suffix: "weight",
                    dtype: "F8_E4M3",
                    shape: vec![rows, cols],
                    bytes,
                },
                Stored {
                    suffix: "weight_scale",
                    dtype: d.name(),
                    shape,
                    bytes: sb,
                },
            ]
        }
        Weights::Nvfp4 => {
            let global = nvfp4_global_scale(fused_amax.unwrap_or_else(|| amax(w)), d);
            let mut out = encode_fp4(
                w,
                rows,
                cols,
                16,
                "F8_E4M3",
                |a| nvfp4_group_scale(a, global, d),
                |x, s| nvfp4_code(x, s, global),
            );
            out.push(Stored {
                suffix: "weight_global_scale",
                dtype: "F32",
                shape: vec![1],
                bytes: global.to_le_bytes().to_vec(),
            });
            out
        }
        Weights::Mxfp4 => encode_fp4(
            w,
            rows,
            cols,
            32,
            "U8",
            |a| mx_scale(a, d),
            |x, s| mx_code(x, s, d),
        ),
    }
}

/// The two E2M1 layouts (NVFP4, MXFP4) differ only in the group size, the
/// scale's dtype and how a scale and a code are computed: codes packed two
/// per byte (`weight_packed`) and one scale byte per group (`weight_scale`).
fn encode_fp4(
    w: &[f32],
    rows: usize,
    cols: usize,
    group: usize,
    scale_dtype: &'static str,
    scale: impl Fn(f32) -> u8,
    code: impl Fn(f32, u8) -> u8,
) -> Vec<Stored> {
    let mut codes = vec![0u8; rows * cols];
    let mut scales = vec![0u8; rows * cols / group];
    for (k, chunk) in w.chunks_exact(group).enumerate() {
        let s = scale(amax(chunk));
        scales[k] = s;
        for (i, &x) in chunk.iter().enumerate() {
            codes[k * group + i] = code(x, s);
        }
    }
    let mut packed = vec![0u8; rows * cols / 2];
    pack_fp4(&codes, &mut packed);
    vec![
        Stored {
            suffix: "weight_packed",
            dtype: "U8",
            shape: vec![rows, cols / 2],
            bytes: packed,
        },
        Stored {
            suffix: "weight_scale",
            dtype: scale_dtype,
            shape: vec![rows, cols / group],
            bytes: scales,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_packing_matches_the_reference_vectors() {
        let q: Vec<i8> = (-8..8).collect();
        let mut dst = [0u8; 8];
        pack_int32(&q, 4, &mut dst);
        assert_eq!(
            u32::from_le_bytes(dst[..4].try_into().unwrap()),
            0x7654_3210
        );
        assert_eq!(
            u32::from_le_bytes(dst[4..].try_into().unwrap()),
            0xFEDC_BA98
        );
        assert_eq!(unpack_int32(&dst, 4, 16), q);
    }

    #[test]
    fn int8_packing_matches_the_reference_vector() {
        let q = [1i8, 2, -128, 127];
        let mut dst = [0u8; 4];
        pack_int32(&q, 8, &mut dst);
        assert_eq!(u32::from_le_bytes(dst), 0xFF00_8281);
    }

    #[test]
    fn dense_packing_straddles_words_and_pads_the_last() {
        // 3-bit values: 11 values = 33 bits -> 2 words, value 10 starts at bit 30.
        let q: Vec<i8> = (0..11).map(|i| (i % 8) as i8 - 4).collect();
        let mut dst = vec![0u8; 4 * packed_words(11, 3)];
        assert_eq!(dst.len(), 8);
        pack_int32(&q, 3, &mut dst);
        assert_eq!(unpack_int32(&dst, 3, 11), q);
        // 576 4-bit values (SmolLM2's width) -> 72 words.
        assert_eq!(packed_words(576, 4), 72);
    }

    #[test]
    fn symmetric_int4_scale_is_amax_over_7_5_in_the_dtype() {
        let p = int_params(-3.0, 1.5, 4, true, Dtype::F32);
        assert_eq!(p.scale, 3.0 / 7.5);
        assert_eq!(p.zero_point, 0);
        // -3 / 0.4 = -7.5 -> clamp to -8..7 leaves -7.5 -> ties to even -8.
        assert_eq!(int_quantize(-3.0, p, 4, Dtype::F32), -8);
        assert_eq!(int_quantize(1.5, p, 4, Dtype::F32), 4); // 3.75 -> 4
                                                            // bf16: 1/7.5 = 0.1333.. rounds to bf16 0.133789.
        let p = int_params(-1.0, 0.5, 4, true, Dtype::Bf16);
        assert_eq!(p.scale, 0.133_789_06);
        // A zero group gets eps.
        assert_eq!(int_params(0.0, 0.0, 4, true, Dtype::Bf16).scale, 0.0078125);
    }

    #[test]
    fn asymmetric_zero_point_maps_min_to_qmin() {
        let p = int_params(-1.0, 2.0, 4, false, Dtype::F32);
        assert_eq!(p.scale, 3.0 / 15.0);
        // zp = -8 - (-1 / 0.2) = -3
        assert_eq!(p.zero_point, -3);
        assert_eq!(int_quantize(-1.0, p, 4, Dtype::F32), -8);
        assert_eq!(int_quantize(2.0, p, 4, Dtype::F32), 7);
        // Positive-only groups clamp min to 0: zp = qmin.
        let p = int_params(0.5, 2.0, 4, false, Dtype::F32);
        assert_eq!(p.zero_point, -8);
    }

    #[test]
    fn e4m3_round_trips_every_code_and_rounds_to_even() {
        for b in 0..=255u8 {
            if b & 0x7F == 0x7F {
                assert!(e4m3_to_f32(b).is_nan());
                continue;
            }
            assert_eq!(e4m3_from_f32(e4m3_to_f32(b)), b, "code {b:#x}");
        }
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        // 1.0625 is halfway between 1.0 (0x38) and 1.125 (0x39): even wins.
        assert_eq!(e4m3_from_f32(1.0625), 0x38);
        assert_eq!(e4m3_from_f32(1.1875), 0x3A);
        // Halfway between subnormals 1 and 2 (x 2^-9): even (2).
        assert_eq!(e4m3_from_f32(1.5 * 2f32.powi(-9)), 0x02);
        assert_eq!(e4m3_from_f32(-448.0), 0xFE);
        assert_eq!(e4m3_from_f32(500.0), 0x7F);
    }

    #[test]
    fn fp4_breakpoints_are_the_references() {
        let cases = [
            (0.25, 0.0),
            (0.2501, 0.5),
            (0.75, 1.0),
            (1.25, 1.0),
            (1.2501, 1.5),
            (1.75, 2.0),
            (2.5, 2.0),
            (2.5001, 3.0),
            (3.5, 4.0),
            (5.0, 4.0),
            (5.0001, 6.0),
            (6.0, 6.0),
        ];
        for (x, want) in cases {
            assert_eq!(fp4_value(fp4_code(x)), want, "{x}");
            assert_eq!(fp4_value(fp4_code(-x)), -want, "-{x}");
        }
        assert_eq!(fp4_code(-0.1), 8); // negative zero keeps its sign bit
        let mut b = [0u8; 1];
        pack_fp4(&[fp4_code(0.5), fp4_code(-6.0)], &mut b);
        assert_eq!(b[0], 0xF1);
    }

    #[test]
    fn mx_scale_rounds_up_from_1_75() {
        // amax 6 = 1.5 * 2^2: p = 4, e = 127 + 2 - 2.
        assert_eq!(mx_scale(6.0, Dtype::Bf16), 127);
        // amax 7 = 1.75 * 2^2 rounds up to 8: e = 128.
        assert_eq!(mx_scale(7.0, Dtype::Bf16), 128);
        assert_eq!(mx_scale(7.0, Dtype::F32), 128);
        assert_eq!(mx_scale(0.0, Dtype::Bf16), 0);
    }

    #[test]
    fn nvfp4_scales_follow_the_global_scale() {
        let g = nvfp4_global_scale(6.0, Dtype::F32);
        assert_eq!(g, 448.0);
        // The group holding the tensor's amax gets scale 448 (E4M3 0x7E).
        assert_eq!(nvfp4_group_scale(6.0, g, Dtype::F32), 0x7E);
        assert_eq!(fp4_value(nvfp4_code(6.0, 0x7E, g)), 6.0);
        assert_eq!(fp4_value(nvfp4_code(-3.0, 0x7E, g)), -3.0);
        // An all-zero group's scale is 0.125, not zero.
        assert_eq!(e4m3_to_f32(nvfp4_group_scale(0.0, g, Dtype::F32)), 0.125);
    }

    /// Activation fake-quantization, hand-checked values.
    #[test]
    fn activations_are_quantized_as_the_runtime_does() {
        // int8 per token: scale amax / 127 = 0.01; 0.004 rounds to 0,
        // 0.016 to 0.02.
        let mut x = [1.27f32, -0.5, 0.004, 0.016];
        ActQuant::Int8Token.apply(&mut x);
        let want = [1.27f32, -0.5, 0.0, 0.02];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{x:?}");
        }
        // FP8 with scale 1: 0.3 lies between E4M3's 0.28125 and 0.3125,
        // nearer the second; 500 saturates at 448.
        let mut x = [0.3f32, 500.0, -1.0];
        ActQuant::Fp8Tensor { scale: 1.0 }.apply(&mut x);
        assert_eq!(x, [0.3125, 448.0, -1.0]);
        // Per token, the largest magnitude maps to 448 exactly.
        let mut x = [4.48f32, 0.0];
        ActQuant::Fp8Token.apply(&mut x);
        assert!((x[0] - 4.48).abs() < 1e-6 && x[1] == 0.0);
        // Groups of 2: each group's own scale.
        let mut x = [448.0f32, 1.0, 1.0, 0.5];
        ActQuant::Fp8Group(2).apply(&mut x);
        assert_eq!(x[..2], [448.0, 1.0]);
        assert!(
            (x[2] - 1.0).abs() < 1e-6 && (x[3] - 0.5).abs() < 1e-6,
            "{x:?}"
        );
        // A tiny token hits vLLM's floor on the scale (1 / (448 * 512)).
        let mut x = [1e-4f32];
        ActQuant::Fp8Token.apply(&mut x);
        assert!((x[0] - 1e-4).abs() < 1e-4 / 8.0 && x[0] != 1e-4, "{x:?}");
        // NVFP4, global 1: a group whose amax is 6 gets scale 1, so values
        // snap to E2M1's grid (2.6 -> 3, 0.2 -> 0, -1.3 -> -1.5).
        let mut x = [0f32; 16];
        x[..4].copy_from_slice(&[6.0, 2.6, 0.2, -1.3]);
        ActQuant::Nvfp4 { global: 1.0 }.apply(&mut x);
        assert_eq!(&x[..4], &[6.0, 3.0, 0.0, -1.5]);
        // An all-zero token stays zero.
        let mut z = [0f32; 4];
        for a in [ActQuant::Int8Token, ActQuant::Fp8Token] {
            a.apply(&mut z);
            assert_eq!(z, [0.0; 4]);
        }
    }
}
