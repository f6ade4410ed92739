//! Reading tensor rows out of mapped inputs: bounds-checked slicing, the row
//! transform (llama q/k RoPE permutation), and decoding to f32.
//!
//! What must stay true: a row is read only from inside its tensor's
//! validated byte range; decoding is exact for F32/F16/BF16 and is ggml's
//! dequantizer for block types.

use half::f16;
use passes::{SourceDType, TensorNode};

use crate::mmap::MappedFile;

/// Bytes of one source row of `node`.
pub fn source_row_bytes(node: &TensorNode) -> usize {
    node.source
        .dtype
        .ggml()
        .row_bytes(node.row_len())
        .expect("source row lengths are validated by the loaders")
}

/// The raw bytes of output row `r` of `node` (the transform applied).
pub fn row_bytes<'a>(maps: &'a [MappedFile], node: &TensorNode, r: usize) -> &'a [u8] {
    let src_row = match node.transform {
        Some(t) => t.source_row(r, node.n_rows()),
        None => r,
    };
    let rb = source_row_bytes(node);
    let start = node.source.offset as usize + src_row * rb;
    &maps[node.source.file].bytes()[start..start + rb]
}

/// Decode output row `r` of `node` to f32.
pub fn read_row(maps: &[MappedFile], node: &TensorNode, r: usize, out: &mut [f32]) {
    decode(node.source.dtype, row_bytes(maps, node, r), out);
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
