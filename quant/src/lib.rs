//! `quant`: ggml block encodings.
//!
//! Bit-exact ports of ggml's reference quantizers (`quantize_row_*_ref` in ggml
//! `src/ggml-quants.c`) and dequantizers, written from the published reference
//! as plain scalar code: no fused multiply-add and the same order of
//! floating-point operations, so every block matches ggml on x86-64 byte for
//! byte. Functions work on whole rows; callers parallelize across rows.

mod types;

pub use types::GgmlType;
