//! The 256-value ggml "K-quant" super-block types Q2_K, Q3_K, Q4_K, Q5_K, Q6_K:
//! decoders for all five.
//!
//! Ports of ggml's `dequantize_row_q{2,3,4,5,6}_K` (ggml `src/ggml-quants.c`,
//! block structs in `src/ggml-common.h`). What must stay true:
//! - byte offsets inside a block are the C struct layouts (no padding):
//!   Q2_K `scales[16] qs[64] d dmin` (84), Q3_K `hmask[32] qs[64] scales[12] d`
//!   (110), Q4_K `d dmin scales[12] qs[128]` (144), Q5_K `d dmin scales[12]
//!   qh[32] qs[128]` (176), Q6_K `ql[128] qh[64] scales[16] d` (210); f16
//!   fields little-endian;
//! - every output is computed with the reference's float operations in its
//!   order (sub-block scale first, e.g. `(d * sc) * q - dmin * m`, and for Q6_K
//!   `(d * sc) * q`), never fused, so decoded values are bit-identical to ggml's;
//! - the scale unpacking (`scale_min_k4`, the Q3_K 6-bit scales) reads the same
//!   bits the reference quantizers write.
//!
//! The decoders work block by block on fixed-size arrays with no allocation:
//! per block the sub-block scales are computed once, and the inner loops are
//! plain 16/32-wide loops the compiler vectorizes. They are the hot path when
//! reading multi-GB GGUFs.

use crate::float::read_f16;

/// Values per super-block.
pub(crate) const QK_K: usize = 256;

#[inline]
fn block<const N: usize>(b: &[u8]) -> &[u8; N] {
    b.try_into().expect("block size checked by caller")
}

#[inline]
fn values_mut(y: &mut [f32]) -> &mut [f32; QK_K] {
    y.try_into().expect("block size checked by caller")
}

/// The 6-bit scale and 6-bit min of sub-block `j` (0..8) from the 12 packed
/// bytes of a Q4_K/Q5_K block: sub-blocks 0..4 sit in the low 6 bits of bytes
/// `j` and `j + 4`; sub-blocks 4..8 have their low 4 bits in byte `j + 4` and
/// their top 2 bits in the spare top bits of bytes `j - 4` and `j`.
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The 16 signed 6-bit scales of a Q3_K block (already minus 32): low 4 bits
/// from the nibbles of bytes 0..8 (sub-block `j` in byte `j % 8`, high nibble
/// for `j >= 8`), top 2 bits from bytes 8..12 (byte `8 + j % 4`, bit pair `j / 4`).
#[inline]
pub(crate) fn q3_k_scales(s: &[u8; 12]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i32 - 32;
    }
    out
}

// ---------------------------------------------------------------- Q2_K
// Value = (d * (sc & 15)) * q2 - dmin * (sc >> 4), 16 sub-blocks of 16.
// qs: byte 32*h + l holds, at bit pair s, value 128*h + 32*s + l (l < 32).

pub(crate) fn decode_q2_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(84).zip(dst.chunks_exact_mut(QK_K)) {
        q2_k_block(block(b), values_mut(y));
    }
}

fn q2_k_block(b: &[u8; 84], y: &mut [f32; QK_K]) {
    let scales = &b[..16];
    let qs = &b[16..80];
    let d = read_f16(&b[80..82]);
    let min = read_f16(&b[82..84]);
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for s in 0..4 {
            let shift = 2 * s;
            for part in 0..2 {
                let sc = scales[8 * half + 2 * s + part];
                let dl = d * (sc & 0x0F) as f32;
                let ml = min * (sc >> 4) as f32;
                let out = &mut y[128 * half + 32 * s + 16 * part..][..16];
                let q = &q[16 * part..16 * part + 16];
                for (o, &qv) in out.iter_mut().zip(q) {
                    *o = dl * ((qv >> shift) & 3) as f32 - ml;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- Q3_K
// Value = (d * (scale6 - 32)) * (q2 - (hbit ? 0 : 4)), 16 sub-blocks of 16.
// qs as Q2_K; the high bit of value 128*h + 32*s + l is bit (4*h + s) of hmask[l].

pub(crate) fn decode_q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(110).zip(dst.chunks_exact_mut(QK_K)) {
        q3_k_block(block(b), values_mut(y));
    }
}

fn q3_k_block(b: &[u8; 110], y: &mut [f32; QK_K]) {
    let hmask = &b[..32];
    let qs = &b[32..96];
    let scales = q3_k_scales(block(&b[96..108]));
    let d_all = read_f16(&b[108..110]);
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for s in 0..4 {
            let shift = 2 * s;
            let m = 1u8 << (4 * half + s);
            for part in 0..2 {
                let dl = d_all * scales[8 * half + 2 * s + part] as f32;
                let out = &mut y[128 * half + 32 * s + 16 * part..][..16];
                let range = 16 * part..16 * part + 16;
                for ((o, &qv), &hv) in out.iter_mut().zip(&q[range.clone()]).zip(&hmask[range]) {
                    let low = ((qv >> shift) & 3) as i32;
                    let sub = if hv & m != 0 { 0 } else { 4 };
                    *o = dl * (low - sub) as f32;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- Q4_K
// Value = (d * sc) * q4 - dmin * m, 8 sub-blocks of 32 (6-bit sc, m).
// qs: byte 32*c + l holds value 64*c + l (low nibble) and 64*c + 32 + l (high).

pub(crate) fn decode_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(QK_K)) {
        q4_k_block(block(b), values_mut(y));
    }
}

fn q4_k_block(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = read_f16(&b[..2]);
    let min = read_f16(&b[2..4]);
    let scales: &[u8; 12] = block(&b[4..16]);
    let qs = &b[16..144];
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let q = &qs[32 * c..32 * c + 32];
        let (lo, hi) = y[64 * c..64 * c + 64].split_at_mut(32);
        for ((a, b), &qv) in lo.iter_mut().zip(hi.iter_mut()).zip(q) {
            *a = d1 * (qv & 0x0F) as f32 - m1;
            *b = d2 * (qv >> 4) as f32 - m2;
        }
    }
}

// ---------------------------------------------------------------- Q5_K
// As Q4_K with a fifth bit: value 64*c + l has it at bit 2*c of qh[l], value
// 64*c + 32 + l at bit 2*c + 1.

pub(crate) fn decode_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(176).zip(dst.chunks_exact_mut(QK_K)) {
        q5_k_block(block(b), values_mut(y));
    }
}

fn q5_k_block(b: &[u8; 176], y: &mut [f32; QK_K]) {
    let d = read_f16(&b[..2]);
    let min = read_f16(&b[2..4]);
    let scales: &[u8; 12] = block(&b[4..16]);
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let u1 = 1u8 << (2 * c);
        let u2 = 2u8 << (2 * c);
        let q = &qs[32 * c..32 * c + 32];
        let (lo, hi) = y[64 * c..64 * c + 64].split_at_mut(32);
        for (((a, b), &qv), &hv) in lo.iter_mut().zip(hi.iter_mut()).zip(q).zip(qh) {
            let q1 = (qv & 0x0F) as u32 + if hv & u1 != 0 { 16 } else { 0 };
            let q2 = (qv >> 4) as u32 + if hv & u2 != 0 { 16 } else { 0 };
            *a = d1 * q1 as f32 - m1;
            *b = d2 * q2 as f32 - m2;
        }
    }
}

// ---------------------------------------------------------------- Q6_K
// Value = (d * sc) * (q6 - 32), 16 sub-blocks of 16 with int8 scales.
// Per 128-value half h (ql += 64h, qh += 32h, l < 32):
//   value 128h + l      : low nibble of ql[l],      bits 0-1 of qh[l]
//   value 128h + 32 + l : low nibble of ql[l + 32], bits 2-3 of qh[l]
//   value 128h + 64 + l : high nibble of ql[l],     bits 4-5 of qh[l]
//   value 128h + 96 + l : high nibble of ql[l + 32], bits 6-7 of qh[l]

pub(crate) fn decode_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(QK_K)) {
        q6_k_block(block(b), values_mut(y));
    }
}

fn q6_k_block(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let d = read_f16(&b[208..210]);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let out = &mut y[128 * half..128 * half + 128];
        for quarter in 0..4 {
            // Quarter 0/1 use the low nibbles of ql[0..32]/ql[32..64],
            // quarters 2/3 the high nibbles; qh bit pair = quarter.
            let src = &ql[32 * (quarter % 2)..32 * (quarter % 2) + 32];
            let nib_shift = 4 * (quarter / 2);
            let h_shift = 2 * quarter;
            for sub in 0..2 {
                let ds = d * (sc[2 * quarter + sub] as i8) as f32;
                let range = 16 * sub..16 * sub + 16;
                let o = &mut out[32 * quarter + 16 * sub..][..16];
                for ((o, &l), &h) in o.iter_mut().zip(&src[range.clone()]).zip(&qh[range]) {
                    let q = (((l >> nib_shift) & 0x0F) | (((h >> h_shift) & 3) << 4)) as i32 - 32;
                    *o = ds * q as f32;
                }
            }
        }
    }
}
