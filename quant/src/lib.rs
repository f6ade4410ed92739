//! `quant`: ggml block encodings.
//!
//! Bit-exact ports of ggml's reference quantizers (`quantize_row_*_ref` in ggml
//! `src/ggml-quants.c`) and dequantizers, written from the published reference
//! as plain scalar code: no fused multiply-add and the same order of
//! floating-point operations, so every block matches ggml on x86-64 byte for
//! byte. Functions work on whole rows; callers parallelize across rows.
//!
//! The public surface is [`GgmlType`], [`quantize_row`] and [`dequantize_row`].
//! The reference is ggml's C code as ggml-base is built for x86-64: baseline
//! target, no FMA contraction. (A ggml-quants.c compiled with
//! `-march=native` on an FMA machine contracts `a*b+c` and then produces
//! different K-quant bytes; llama.cpp's own CMake does not do that to
//! ggml-base.)
//!
//! What must stay true: `quantize_row` accepts exactly the types for which
//! [`GgmlType::can_encode`] is true, `dequantize_row` accepts every
//! [`GgmlType`], and both check lengths before touching data and never allocate.

mod float;
mod kquants;
mod legacy;
mod types;

#[cfg(test)]
mod tests;

pub use types::GgmlType;

/// Encode one row (or several whole rows concatenated) of f32 values into
/// `ty`'s blocks, byte-identical to ggml's reference quantizer for `ty`
/// (`quantize_row_*_ref`, i.e. llama-quantize without an importance matrix).
///
/// Supported: every [`GgmlType`] (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
/// Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K); [`GgmlType::can_encode`] says so and
/// must stay in step with this function. Rows may be encoded independently
/// and in any order: blocks never depend on their neighbours.
///
/// # Panics
/// If `src.len()` is not a multiple of `ty.block_size()` or
/// `dst.len() != ty.row_bytes(src.len())`.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    let Some(bytes) = ty.row_bytes(src.len()) else {
        panic!(
            "quantize_row: {} values is not a multiple of the {ty} block size {}",
            src.len(),
            ty.block_size()
        );
    };
    assert!(
        dst.len() == bytes,
        "quantize_row: {} values of {ty} take {bytes} bytes, destination has {}",
        src.len(),
        dst.len()
    );
    match ty {
        GgmlType::F32 => float::encode_f32(src, dst),
        GgmlType::F16 => float::encode_f16(src, dst),
        GgmlType::BF16 => float::encode_bf16(src, dst),
        GgmlType::Q8_0 => legacy::encode_q8_0(src, dst),
        GgmlType::Q4_0 => legacy::encode_q4_0(src, dst),
        GgmlType::Q4_1 => legacy::encode_q4_1(src, dst),
        GgmlType::Q5_0 => legacy::encode_q5_0(src, dst),
        GgmlType::Q5_1 => legacy::encode_q5_1(src, dst),
        GgmlType::Q4K => kquants::encode_q4_k(src, dst),
        GgmlType::Q5K => kquants::encode_q5_k(src, dst),
        GgmlType::Q6K => kquants::encode_q6_k(src, dst),
        GgmlType::Q2K => kquants::encode_q2_k(src, dst),
        GgmlType::Q3K => kquants::encode_q3_k(src, dst),
    }
}

/// Decode blocks of `ty` to f32, bit-identical to ggml's `dequantize_row_*`
/// (or its f16/bf16 -> f32 conversion). Supports every [`GgmlType`].
///
/// # Panics
/// If `dst.len()` is not a multiple of `ty.block_size()` or
/// `src.len() != ty.row_bytes(dst.len())`.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let Some(bytes) = ty.row_bytes(dst.len()) else {
        panic!(
            "dequantize_row: {} values is not a multiple of the {ty} block size {}",
            dst.len(),
            ty.block_size()
        );
    };
    assert!(
        src.len() == bytes,
        "dequantize_row: {} values of {ty} take {bytes} bytes, source has {}",
        dst.len(),
        src.len()
    );
    match ty {
        GgmlType::F32 => float::decode_f32(src, dst),
        GgmlType::F16 => float::decode_f16(src, dst),
        GgmlType::BF16 => float::decode_bf16(src, dst),
        GgmlType::Q8_0 => legacy::decode_q8_0(src, dst),
        GgmlType::Q4_0 => legacy::decode_q4_0(src, dst),
        GgmlType::Q4_1 => legacy::decode_q4_1(src, dst),
        GgmlType::Q5_0 => legacy::decode_q5_0(src, dst),
        GgmlType::Q5_1 => legacy::decode_q5_1(src, dst),
        GgmlType::Q2K => kquants::decode_q2_k(src, dst),
        GgmlType::Q3K => kquants::decode_q3_k(src, dst),
        GgmlType::Q4K => kquants::decode_q4_k(src, dst),
        GgmlType::Q5K => kquants::decode_q5_k(src, dst),
        GgmlType::Q6K => kquants::decode_q6_k(src, dst),
    }
}
