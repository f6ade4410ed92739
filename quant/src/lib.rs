//! `quant`: ggml block encodings.
//!
//! Bit-exact ports of ggml's quantizers (`ggml_quantize_chunk` in ggml
//! `src/ggml.c`, i.e. `quantize_q*` / `quantize_row_*_ref` /
//! `quantize_row_*_impl` in `src/ggml-quants.c`, with and without an
//! importance matrix) and dequantizers, written from the published reference:
//! no fused multiply-add and the same floating-point operations in the same
//! order for every element, so every block matches ggml on x86-64 byte for
//! byte. Functions work on whole rows; callers parallelize across rows.
//!
//! The public surface is [`Encoding`] (the format-neutral descriptor of what a
//! tensor becomes, `encoding.rs`), [`GgmlType`], [`quantize_rows`] (what llama-quantize
//! writes, optionally with an importance matrix), [`quantize_row`] (the same
//! without one) and [`dequantize_row`].
//!
//! Which ggml path produces a type's bytes (`ggml_quantize_chunk`):
//!
//! | type | no imatrix | with imatrix |
//! |---|---|---|
//! | F32, F16, BF16 | conversion | conversion (imatrix ignored) |
//! | Q8_0 | `quantize_row_q8_0_ref` | the same (`quantize_q8_0` ignores it) |
//! | Q4_0, Q4_1, Q5_0, Q5_1 | `quantize_row_*_ref` | `quantize_row_*_impl` (sigma2 over the whole row) |
//! | Q2_K .. Q6_K | `quantize_row_*_ref` | `quantize_row_*_impl` (sigma2 per super-block) |
//! | IQ4_NL | `quantize_row_iq4_nl_impl`, weights `x^2`, 15 tries (not `quantize_row_iq4_nl_ref`, which tries once) | the same, weights `qw * sqrt(sigma2 + x^2)` |
//! | IQ4_XS | `quantize_row_iq4_nl_impl` on 256 values, weights `x^2` (= `quantize_row_iq4_xs_ref`) | the same with imatrix weights |
//!
//! Speed: the searches are run on many groups at once as SIMD lanes
//! (`lanes.rs`, plain safe Rust on baseline x86-64) with every lane doing the
//! reference's f32 operations in the reference's order, so the bytes do not
//! change; single-thread throughput against ggml's C is in `quant/BENCH.md`
//! (`cargo run -p quant --release --example bench`).
//!
//! An imatrix of all ones is *not* the same as none: the `_impl` searches
//! (weights `sqrt(sigma2 + x^2)`, `make_qkx3_quants`, `make_qp_quants`) differ
//! from the reference ones, so the bytes differ for every type that uses it.
//!
//! The reference is ggml's C code as ggml-base is built for x86-64: baseline
//! target, no FMA contraction. (A ggml-quants.c compiled with
//! `-march=native` on an FMA machine contracts `a*b+c` and then produces
//! different K-quant bytes; llama.cpp's own CMake does not do that to
//! ggml-base.)
//!
//! What must stay true: `quantize_row`/`quantize_rows` accept exactly the
//! types for which [`GgmlType::can_encode`] is true, `dequantize_row` accepts
//! every [`GgmlType`], and all three check lengths before touching data and
//! never allocate.

pub mod ct;
mod encoding;
mod float;
pub mod grid;
mod iq4;
mod kquants;
mod lanes;
mod legacy;
mod search;
mod types;

#[cfg(test)]
mod tests;

pub use encoding::{Encoding, Fp4Kind, Fp8Range, Fp8Scales, Fp8Spec, Group, IntSpec};
pub use types::GgmlType;

/// Encode one row (or several whole rows concatenated) of f32 values into
/// `ty`'s blocks as llama-quantize does without an importance matrix
/// (`ggml_quantize_chunk(.., imatrix = NULL)`); for every type but IQ4_NL
/// that is ggml's reference quantizer `quantize_row_*_ref` (see the crate
/// docs). Equal to [`quantize_rows`] with `imatrix = None` and any row length.
///
/// Supported: every [`GgmlType`]; [`GgmlType::can_encode`] says so and
/// must stay in step with this function. Without an importance matrix blocks
/// never depend on their neighbours, so rows may be encoded independently and
/// in any order.
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
        GgmlType::IQ4NL => iq4::encode_iq4_nl(src, dst, None),
        GgmlType::IQ4XS => iq4::encode_iq4_xs(src, dst, None),
    }
}

/// Encode rows as llama-quantize does (`ggml_quantize_chunk`), with an
/// optional importance vector of length = row length (one weight per column,
/// shared by every row).
///
/// `src` holds whole rows of `row_len` values back to back; `dst` receives
/// `src.len() / row_len` rows of `ty.row_bytes(row_len)` bytes. With an
/// importance matrix, Q4_0/Q4_1/Q5_0/Q5_1 weigh each value by the mean square
/// of its whole row, so a row must be passed whole (rows stay independent of
/// each other). Q8_0, F32, F16 and BF16 ignore the importance matrix, as
/// ggml does ([`GgmlType::uses_imatrix`]).
///
/// # Panics
/// If `row_len` is not a multiple of `ty.block_size()`, `src.len()` is not a
/// multiple of `row_len` (or `row_len == 0` with a non-empty `src`),
/// `dst.len()` is not the encoded size, or the importance vector's length is
/// not `row_len`.
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    row_len: usize,
    imatrix: Option<&[f32]>,
) {
    let Some(row_bytes) = ty.row_bytes(row_len) else {
        panic!(
            "quantize_rows: row length {row_len} is not a multiple of the {ty} block size {}",
            ty.block_size()
        );
    };
    assert!(
        row_len > 0 || src.is_empty(),
        "quantize_rows: row length 0 with {} values",
        src.len()
    );
    if row_len == 0 {
        return quantize_row(ty, src, dst);
    }
    assert!(
        src.len() % row_len == 0,
        "quantize_rows: {} values is not a whole number of rows of {row_len}",
        src.len()
    );
    let rows = src.len() / row_len;
    assert!(
        Some(dst.len()) == rows.checked_mul(row_bytes),
        "quantize_rows: {rows} rows of {row_len} {ty} values take {} bytes, destination has {}",
        rows.saturating_mul(row_bytes),
        dst.len()
    );
    if let Some(qw) = imatrix {
        assert!(
            qw.len() == row_len,
            "quantize_rows: importance matrix has {} values, rows have {row_len}",
            qw.len()
        );
    }
    let imatrix = imatrix.filter(|_| ty.uses_imatrix());
    let Some(qw) = imatrix else {
        return quantize_row(ty, src, dst);
    };
    let encode: fn(&[f32], &mut [u8], &[f32]) = match ty {
        GgmlType::Q4_0 => legacy::encode_q4_0_imatrix,
        GgmlType::Q4_1 => legacy::encode_q4_1_imatrix,
        GgmlType::Q5_0 => legacy::encode_q5_0_imatrix,
        GgmlType::Q5_1 => legacy::encode_q5_1_imatrix,
        GgmlType::Q2K => kquants::encode_q2_k_imatrix,
        GgmlType::Q3K => kquants::encode_q3_k_imatrix,
        GgmlType::Q4K => kquants::encode_q4_k_imatrix,
        GgmlType::Q5K => kquants::encode_q5_k_imatrix,
        GgmlType::Q6K => kquants::encode_q6_k_imatrix,
        GgmlType::IQ4NL => |x, y, w| iq4::encode_iq4_nl(x, y, Some(w)),
        GgmlType::IQ4XS => |x, y, w| iq4::encode_iq4_xs(x, y, Some(w)),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 => {
            unreachable!("filtered by uses_imatrix")
        }
    };
    for (x, y) in src
        .chunks_exact(row_len)
        .zip(dst.chunks_exact_mut(row_bytes))
    {
        encode(x, y, qw);
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
        GgmlType::IQ4NL => iq4::decode_iq4_nl(src, dst),
        GgmlType::IQ4XS => iq4::decode_iq4_xs(src, dst),
    }
}
