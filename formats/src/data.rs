//! Reading tensor rows out of mapped inputs: bounds-checked slicing, the row
//! transforms (llama q/k RoPE permutation, Gemma's norm `+ 1`), and decoding
//! to f32.
//!
//! What must stay true: a row is read only from inside its tensor's
//! validated byte range; decoding is exact for F32/F16/BF16 and is ggml's
//! dequantizer for block types.

use half::f16;
use passes::{SourceDType, TensorNode, Transform};

use crate::mmap::MappedFile;

/// Bytes of one source row of `node`.
pub fn source_row_bytes(node: &TensorNode) -> usize {
    node.source
        .dtype
        .ggml()
        .row_bytes(node.row_len())
        .expect("source row lengths are validated by the loaders")
}

/// The raw bytes of output row `r` of `node` (the transform applied; for
/// a stacked tensor, from the part holding the row).
pub fn row_bytes<'a>(maps: &'a [MappedFile], node: &TensorNode, r: usize) -> &'a [u8] {
    let src_row = match node.transform {
        Some(t) => t.source_row(r, node.n_rows()),
        None => r,
    };
    let rb = source_row_bytes(node);
    let (source, row) = node.source_of_row(src_row);
    let start = source.offset as usize + row * rb;
    &maps[source.file].bytes()[start..start + rb]
}

/// The byte ranges `(file, start, len)` holding source rows `r0..r1` of
/// `node` (no transform: for prefetching and releasing in order), one per
/// part touched.
pub fn row_spans(node: &TensorNode, r0: usize, r1: usize) -> Vec<(usize, usize, usize)> {
    let rb = source_row_bytes(node);
    let mut spans = Vec::new();
    let mut r = r0;
    while r < r1 {
        let (source, row) = node.source_of_row(r);
        let left_in_part = if node.parts.is_empty() {
            r1 - r
        } else {
            (node.n_rows() / node.parts.len()).max(1) - row
        };
        let n = left_in_part.min(r1 - r).max(1);
        spans.push((source.file, source.offset as usize + row * rb, n * rb));
        r += n;
    }
    spans
}

/// Decode output row `r` of `node` to f32 (value transforms applied).
pub fn read_row(maps: &[MappedFile], node: &TensorNode, r: usize, out: &mut [f32]) {
    decode(node.source.dtype, row_bytes(maps, node, r), out);
    if let Some(Transform::Add(c)) = node.transform {
        add_in_dtype(node.source.dtype, c, out);
    }
}

/// `v + c` for every value, rounded to `dtype` as torch rounds an addition
/// in the checkpoint's own dtype (round to nearest even); exact f32
/// addition for F32 and ggml block types.
pub fn add_in_dtype(dtype: SourceDType, c: f32, out: &mut [f32]) {
    for v in out.iter_mut() {
        let sum = *v + c;
        *v = match dtype {
            SourceDType::F16 => f16::from_f32(sum).to_f32(),
            SourceDType::BF16 => half::bf16::from_f32(sum).to_f32(),
            SourceDType::F32 | SourceDType::Ggml(_) => sum,
        };
    }
}

/// The rows of the tensors in mapped input files, for passes that read
/// tensor values (`passes::passes::Context::with_reader`).
pub struct Rows<'a>(pub &'a [MappedFile]);

impl passes::passes::TensorReader for Rows<'_> {
    fn read_row(&self, node: &TensorNode, r: usize, out: &mut [f32]) {
        read_row(self.0, node, r, out);
    }
}

/// Decode `bytes` of `dtype` into `out`.
pub fn decode(dtype: SourceDType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        SourceDType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        SourceDType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        SourceDType::BF16 => {
            // bf16 is the top half of an f32: a shift, as ggml's
            // `ggml_bf16_to_fp32` (NaN payloads kept, no branch).
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
        SourceDType::Ggml(t) => quant::dequantize_row(t, bytes, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_rounds_to_the_source_dtype() {
        // bf16 has 8 significant bits: 0.00390625 (2^-8) + 1 is a tie between
        // 1 and 1.0078125 and rounds to even (1); 0.005 + 1 rounds up.
        let mut v = [0.003_906_25f32, 0.005, -1.0];
        add_in_dtype(SourceDType::BF16, 1.0, &mut v);
        assert_eq!(v, [1.0, 1.007_812_5, 0.0]);
        // f16 has 11: 2^-11 + 1 ties to 1; f32 keeps it.
        let tiny = 2f32.powi(-11);
        let mut v = [tiny];
        add_in_dtype(SourceDType::F16, 1.0, &mut v);
        assert_eq!(v, [1.0]);
        let mut v = [tiny];
        add_in_dtype(SourceDType::F32, 1.0, &mut v);
        assert_eq!(v, [1.0 + tiny]);
    }

    #[test]
    fn decodes_plain_types_exactly() {
        let mut out = [0f32; 2];
        decode(SourceDType::F32, &[0, 0, 128, 63, 0, 0, 0, 192], &mut out);
        assert_eq!(out, [1.0, -2.0]);
        decode(SourceDType::F16, &[0x00, 0x3c, 0x00, 0xc0], &mut out);
        assert_eq!(out, [1.0, -2.0]);
        decode(SourceDType::BF16, &[0x80, 0x3f, 0x00, 0xc0], &mut out);
        assert_eq!(out, [1.0, -2.0]);
        // Every bf16 bit pattern decodes as half does (NaNs: same payload bits as ggml).
        for bits in 0..=u16::MAX {
            let mut one = [0f32];
            decode(SourceDType::BF16, &bits.to_le_bytes(), &mut one);
            assert_eq!(one[0].to_bits(), u32::from(bits) << 16);
            let h = half::bf16::from_bits(bits).to_f32();
            if !h.is_nan() {
                assert_eq!(one[0].to_bits(), h.to_bits());
            }
        }
    }
}
