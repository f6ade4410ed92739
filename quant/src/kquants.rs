//! The 256-value ggml "K-quant" super-block types Q2_K, Q3_K, Q4_K, Q5_K, Q6_K:
//! decoders and encoders for all five.
//!
//! Ports of ggml's `dequantize_row_q{2,3,4,5,6}_K`,
//! `quantize_row_q{2,3,4,5,6}_K_ref` (what `ggml_quantize_chunk` runs with no
//! importance matrix) and `quantize_row_q{2,3,4,5,6}_K_impl` (with one), with
//! their searches `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`,
//! `make_qkx3_quants`, `make_qp_quants` (ggml `src/ggml-quants.c`, block
//! structs in `src/ggml-common.h`). The searches of a super-block's
//! sub-blocks run together as SIMD lanes (`lanes.rs`). What must stay true:
//! - byte offsets inside a block are the C struct layouts (no padding):
//!   Q2_K `scales[16] qs[64] d dmin` (84), Q3_K `hmask[32] qs[64] scales[12] d`
//!   (110), Q4_K `d dmin scales[12] qs[128]` (144), Q5_K `d dmin scales[12]
//!   qh[32] qs[128]` (176), Q6_K `ql[128] qh[64] scales[16] d` (210); f16
//!   fields little-endian;
//! - every output is computed with the reference's float operations in its
//!   order (sub-block scale first, e.g. `(d * sc) * q - dmin * m`, and for Q6_K
//!   `(d * sc) * q`), never fused, so decoded values are bit-identical to ggml's;
//! - the scale unpacking (`scale_min_k4`, the Q3_K 6-bit scales) reads the same
//!   bits the reference quantizers write;
//! - the encoders repeat the reference's searches exactly: same candidate
//!   scales, same f32 sums accumulated in the same order (`w*l*l` is
//!   `(w*l)*l`), same strict comparisons (first best wins), `nearest_int`'s
//!   add-1.5*2^23 trick (round half to even, and its exact bit behaviour for
//!   out-of-range input), C's wrapping int -> u8/i8 narrowing, and the
//!   sub-blocks whose stored scale is 0 keep the search's quants, as ggml does;
//! - with an imatrix, block `b` of a row uses weights `qw[256b..256b + 256]`
//!   and `sigma2` of its own super-block (`mean x^2` for Q2_K, twice that for
//!   Q3_K/Q4_K/Q5_K; Q6_K weighs by the imatrix alone).
//!   Any change here must be re-checked byte for byte against ggml.
//!
//! The decoders work block by block on fixed-size arrays with no allocation:
//! per block the sub-block scales are computed once, and the inner loops are
//! plain 16/32-wide loops the compiler vectorizes. They are the hot path when
//! reading multi-GB GGUFs.

use crate::float::read_f16;
use crate::lanes::{
    lane_sums, make_q3_lanes, make_qkx_lanes, make_qx_lanes, transpose_in, Found, Lanes, F4,
};
use crate::search::{make_qp_quants, nearest_int, Qkx, GROUP_MAX_EPS};

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

// ================================================================ encoders
//
// Two encoders per type: the reference one (`quantize_row_*_ref`, which is
// what `ggml_quantize_chunk` runs for every K-quant when no importance matrix
// is given) and the importance-matrix one (`quantize_row_*_impl` with
// `quant_weights != NULL`). The imatrix encoders take one row and its
// per-column weights: block `b` of the row uses `qw[256*b..256*b + 256]`.

#[inline]
pub(crate) fn sub<const N: usize>(x: &[f32], at: usize) -> &[f32; N] {
    x[at..at + N].try_into().expect("in range")
}

#[inline]
fn block_mut<const N: usize>(y: &mut [u8]) -> &mut [u8; N] {
    y.try_into().expect("block size checked by caller")
}

/// `sum x^2` over a super-block, accumulated in order from 0 as ggml does.
#[inline]
fn sum_sq(x: &[f32; QK_K]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// The imatrix weights `qw * sqrt(sigma2 + x^2)`, in the lane layout.
#[inline]
fn weights_t<const N: usize, const C: usize>(
    xt: &[Lanes<C>; N],
    qt: &[Lanes<C>; N],
    sigma2: f32,
) -> [Lanes<C>; N] {
    let s2 = F4::splat(sigma2);
    std::array::from_fn(|i| std::array::from_fn(|c| qt[i][c] * (s2 + xt[i][c] * xt[i][c]).sqrt()))
}

/// Lanes as one array, group by group (`M` = 4 * C).
#[inline]
fn flat<const C: usize, const M: usize>(v: &Lanes<C>) -> [f32; M] {
    std::array::from_fn(|g| v[g / 4].0[g % 4])
}

// ---------------------------------------------------------------- Q6_K encode

pub(crate) fn encode_q6_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(210)) {
        q6_k_encode_block(sub(x, 0), block_mut(y), None);
    }
}

/// `quantize_row_q6_K_impl` with an importance matrix: the sub-block search
/// is weighted by the imatrix itself (ggml's sigma2 weighting is commented
/// out there).
pub(crate) fn encode_q6_k_imatrix(row: &[f32], dst: &mut [u8], qw: &[f32]) {
    let blocks = row.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K));
    for ((x, w), y) in blocks.zip(dst.chunks_exact_mut(210)) {
        q6_k_encode_block(sub(x, 0), block_mut(y), Some(sub(w, 0)));
    }
}

fn q6_k_encode_block(x: &[f32; QK_K], y: &mut [u8; 210], qw: Option<&[f32; QK_K]>) {
    // The 16 sub-blocks' searches run as 16 lanes (see lanes.rs).
    let xt: [Lanes<4>; 16] = transpose_in(x);
    let wt: [Lanes<4>; 16] = match qw {
        Some(qw) => transpose_in(qw),
        None => xt.map(|r| r.map(|v| v * v)),
    };
    let mut qt = [[F4::default(); 4]; 16];
    let scales: [f32; 16] = flat(&make_qx_lanes(32, &xt, &wt, &mut qt));
    let fit = Found(qt);
    let mut l = [0u8; QK_K];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for &s in &scales {
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = crate::float::write_f16(&mut y[208..210], 1.0 / iscale);
    for (ib, &s) in scales.iter().enumerate() {
        y[192 + ib] = nearest_int(iscale * s).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let dj = d * (y[192 + j] as i8) as f32;
        if dj == 0.0 {
            fit.group(j, &mut l[16 * j..]);
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / dj).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as u8;
        }
    }
    for h in 0..2 {
        let lh = &l[128 * h..128 * h + 128];
        for i in 0..32 {
            let (q1, q2, q3, q4) = (lh[i], lh[i + 32], lh[i + 64], lh[i + 96]);
            y[64 * h + i] = (q1 & 0x0F) | ((q3 & 0x0F) << 4);
            y[64 * h + i + 32] = (q2 & 0x0F) | ((q4 & 0x0F) << 4);
            y[128 + 32 * h + i] =
                (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
}

// ------------------------------------------------------- Q4_K / Q5_K encode

/// The reference Q4_K/Q5_K fit: per 32-value sub-block a (scale, min) pair
/// from `make_qkx2_quants` with weights `sqrt(mean x^2) + |x|`, then 6-bit
/// scales and mins against their maxima. Returns (ls, lm, d, dmin) unrounded.
fn k4_fit_ref(
    x: &[f32; QK_K],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    fit: &mut Found<32, 2>,
) -> ([u8; 8], [u8; 8], f32, f32) {
    // The 8 sub-blocks' searches run as 8 lanes (see lanes.rs).
    let xt: [Lanes<2>; 32] = transpose_in(x);
    let sum_x2 = lane_sums(&xt.map(|r| r.map(|v| v * v)));
    let av_x = sum_x2.map(|s| (s / F4::splat(32.0)).sqrt());
    let wt: [Lanes<2>; 32] = xt.map(|r| std::array::from_fn(|c| av_x[c] + r[c].abs()));
    let (scales, mins) = make_qkx_lanes(
        Qkx::Two,
        nmax,
        &xt,
        &wt,
        &mut fit.0,
        rmin,
        0.1,
        nstep,
        false,
    );
    let (scales, mins): ([f32; 8], [f32; 8]) = (flat(&scales), flat(&mins));
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // C narrows the int to uint8_t (wrapping) before clamping to 63.
    let ls = std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let lm = std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    (ls, lm, max_scale / 63.0, max_min / 63.0)
}

/// The imatrix Q4_K/Q5_K fit (`quantize_row_q{4,5}_K_impl`): weights
/// `qw * sqrt(sigma2 + x^2)` with `sigma2 = 2 * mean x^2` of the super-block,
/// `make_qkx3_quants(32, nmax, .., -0.9, 0.05, 36)` per sub-block, then the
/// scales and mins quantized by `make_qp_quants(8, 63, .., sw)`. Q5_K clamps
/// the quants to 63 (`clamp63`); Q4_K stores them as they come.
fn k4_fit_imatrix(
    x: &[f32; QK_K],
    qw: &[f32; QK_K],
    nmax: i32,
    clamp63: bool,
    fit: &mut Found<32, 2>,
) -> ([u8; 8], [u8; 8], f32, f32) {
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    let xt: [Lanes<2>; 32] = transpose_in(x);
    let wt = weights_t(&xt, &transpose_in(qw), sigma2);
    let sw: [f32; 8] = flat(&lane_sums(&wt));
    let (scales, mins) = make_qkx_lanes(
        Qkx::Three,
        nmax,
        &xt,
        &wt,
        &mut fit.0,
        -0.9,
        0.05,
        36,
        false,
    );
    let (scales, mins): ([f32; 8], [f32; 8]) = (flat(&scales), flat(&mins));
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    if clamp63 {
        ls = ls.map(|v| v.min(63));
        lm = lm.map(|v| v.min(63));
    }
    (ls, lm, d_block, m_block)
}

/// The shared second half of every Q4_K/Q5_K encoder: pack the 6-bit scales
/// and mins into `y[4..16]` (sub-blocks 0..4 in bytes j and j+4, 4..8 split
/// into a nibble of byte j+4 and the top bits of bytes j-4 and j), store the
/// f16 `d`/`dmin`, and requantize every value (`0..=nmax`) with the stored
/// scales into `l`; sub-blocks whose stored scale is 0 keep the fit's quants.
#[allow(clippy::too_many_arguments)]
fn k4_store_and_requantize(
    x: &[f32; QK_K],
    y: &mut [u8],
    ls: [u8; 8],
    lm: [u8; 8],
    d: f32,
    dmin: f32,
    nmax: i32,
    fit: &Found<32, 2>,
    l: &mut [u8; QK_K],
) {
    let s = &mut y[4..16];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    let d = crate::float::write_f16(&mut y[0..2], d);
    let dmin = crate::float::write_f16(&mut y[2..4], dmin);
    let packed: &[u8; 12] = (&y[4..16]).try_into().expect("12 bytes");
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, packed);
        let dj = d * sc as f32;
        if dj == 0.0 {
            fit.group(j, &mut l[32 * j..]);
            continue;
        }
        let dm = dmin * m as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / dj).clamp(0, nmax);
            l[32 * j + ii] = q as u8;
        }
    }
}

fn pack_q4_k(l: &[u8; QK_K], qs: &mut [u8]) {
    for c in 0..4 {
        for i in 0..32 {
            qs[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
        }
    }
}

fn pack_q5_k(l: &[u8; QK_K], qh_qs: &mut [u8]) {
    let (qh, qs) = qh_qs.split_at_mut(32);
    qh.fill(0);
    for c in 0..4 {
        for i in 0..32 {
            // Quants are <= 31: bit 4 is the fifth bit (branch-free so it
            // vectorizes).
            let (l1, l2) = (l[64 * c + i], l[64 * c + 32 + i]);
            qh[i] |= ((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1));
            qs[32 * c + i] = (l1 & 0x0F) | ((l2 & 0x0F) << 4);
        }
    }
}

pub(crate) fn encode_q4_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(144)) {
        let x = sub(x, 0);
        let mut fit = Found([[F4::default(); 2]; 32]);
        let (ls, lm, d, dmin) = k4_fit_ref(x, 15, -1.0, 20, &mut fit);
        let mut l = [0u8; QK_K];
        k4_store_and_requantize(x, y, ls, lm, d, dmin, 15, &fit, &mut l);
        pack_q4_k(&l, &mut y[16..144]);
    }
}

pub(crate) fn encode_q4_k_imatrix(row: &[f32], dst: &mut [u8], qw: &[f32]) {
    let blocks = row.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K));
    for ((x, w), y) in blocks.zip(dst.chunks_exact_mut(144)) {
        let x = sub(x, 0);
        let mut fit = Found([[F4::default(); 2]; 32]);
        let (ls, lm, d, dmin) = k4_fit_imatrix(x, sub(w, 0), 15, false, &mut fit);
        let mut l = [0u8; QK_K];
        k4_store_and_requantize(x, y, ls, lm, d, dmin, 15, &fit, &mut l);
        pack_q4_k(&l, &mut y[16..144]);
    }
}

pub(crate) fn encode_q5_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(176)) {
        let x = sub(x, 0);
        let mut fit = Found([[F4::default(); 2]; 32]);
        let (ls, lm, d, dmin) = k4_fit_ref(x, 31, -0.5, 15, &mut fit);
        let mut l = [0u8; QK_K];
        k4_store_and_requantize(x, y, ls, lm, d, dmin, 31, &fit, &mut l);
        pack_q5_k(&l, &mut y[16..176]);
    }
}

pub(crate) fn encode_q5_k_imatrix(row: &[f32], dst: &mut [u8], qw: &[f32]) {
    let blocks = row.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K));
    for ((x, w), y) in blocks.zip(dst.chunks_exact_mut(176)) {
        let x = sub(x, 0);
        let mut fit = Found([[F4::default(); 2]; 32]);
        let (ls, lm, d, dmin) = k4_fit_imatrix(x, sub(w, 0), 31, true, &mut fit);
        let mut l = [0u8; QK_K];
        k4_store_and_requantize(x, y, ls, lm, d, dmin, 31, &fit, &mut l);
        pack_q5_k(&l, &mut y[16..176]);
    }
}

// ---------------------------------------------------------------- Q2_K encode

/// The 2-bit quants of a Q2_K or Q3_K block, four values per byte: byte
/// `32h + l` holds values `128h + 32s + l` at bit pair `s`.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for h in 0..2 {
        for i in 0..32 {
            let b = 128 * h + i;
            qs[32 * h + i] = l[b] | (l[b + 32] << 2) | (l[b + 64] << 4) | (l[b + 96] << 6);
        }
    }
}

pub(crate) fn encode_q2_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(84)) {
        q2_k_encode_block(sub(x, 0), block_mut(y));
    }
}

fn q2_k_encode_block(x: &[f32; QK_K], y: &mut [u8; 84]) {
    const Q4SCALE: f32 = 15.0;
    // The 16 sub-blocks' searches run as 16 lanes (see lanes.rs).
    let xt: [Lanes<4>; 16] = transpose_in(x);
    let wt = xt.map(|r| r.map(F4::abs));
    let mut qt = [[F4::default(); 4]; 16];
    let (scales, mins) = make_qkx_lanes(Qkx::Two, 3, &xt, &wt, &mut qt, -0.5, 0.1, 15, true);
    let (scales, mins): ([f32; 16], [f32; 16]) = (flat(&scales), flat(&mins));
    let fit = Found(qt);
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..16 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    // Low nibble: scale against max_scale / 15; high nibble: min against
    // max_min / 15. C narrows the ints to u8 (wrapping), without a clamp.
    let (sc, rest) = y.split_at_mut(16);
    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for j in 0..16 {
            sc[j] = nearest_int(iscale * scales[j]) as u8;
        }
        crate::float::write_f16(&mut rest[64..66], max_scale / Q4SCALE);
    } else {
        sc.fill(0);
        crate::float::write_f16(&mut rest[64..66], 0.0);
    }
    if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for j in 0..16 {
            sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        crate::float::write_f16(&mut rest[66..68], max_min / Q4SCALE);
    } else {
        crate::float::write_f16(&mut rest[66..68], 0.0);
    }
    q2_k_requantize_and_pack(x, y, &fit);
}

/// `quantize_row_q2_K_impl`: weights `qw * sqrt(sigma2 + x^2)` with
/// `sigma2 = mean x^2` of the super-block (no factor 2, unlike the others),
/// `make_qkx3_quants(16, 3, .., -0.9, 0.05, 36)` with squared error, and 4-bit
/// scales and mins from `make_qp_quants(16, 15, .., sw)`.
pub(crate) fn encode_q2_k_imatrix(row: &[f32], dst: &mut [u8], qw: &[f32]) {
    let blocks = row.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K));
    for ((x, w), y) in blocks.zip(dst.chunks_exact_mut(84)) {
        let (x, qw, y): (&[f32; QK_K], &[f32; QK_K], &mut [u8; 84]) =
            (sub(x, 0), sub(w, 0), block_mut(y));
        let sigma2 = sum_sq(x) / QK_K as f32;
        let xt: [Lanes<4>; 16] = transpose_in(x);
        let wt = weights_t(&xt, &transpose_in(qw), sigma2);
        let sw: [f32; 16] = flat(&lane_sums(&wt));
        let mut qt = [[F4::default(); 4]; 16];
        let (scales, mins) =
            make_qkx_lanes(Qkx::Three, 3, &xt, &wt, &mut qt, -0.9, 0.05, 36, false);
        let (scales, mins): ([f32; 16], [f32; 16]) = (flat(&scales), flat(&mins));
        let fit = Found(qt);
        let mut ls = [0u8; 16];
        let mut lm = [0u8; 16];
        let dm = make_qp_quants(15, &scales, &mut ls, &sw);
        let mm = make_qp_quants(15, &mins, &mut lm, &sw);
        crate::float::write_f16(&mut y[80..82], dm);
        crate::float::write_f16(&mut y[82..84], mm);
        for j in 0..16 {
            y[j] = ls[j] | (lm[j] << 4);
        }
        q2_k_requantize_and_pack(x, y, &fit);
    }
}

/// The shared end of both Q2_K encoders: requantize each sub-block with its
/// stored 4-bit scale and min (`0..=3`; sub-blocks whose scale is 0 keep the
/// fit's quants) and pack the 2-bit quants.
fn q2_k_requantize_and_pack(x: &[f32; QK_K], y: &mut [u8; 84], fit: &Found<16, 4>) {
    let d = read_f16(&y[80..82]);
    let dmin = read_f16(&y[82..84]);
    let mut l = [0u8; QK_K];
    for j in 0..16 {
        let dj = d * (y[j] & 0x0F) as f32;
        if dj == 0.0 {
            fit.group(j, &mut l[16 * j..]);
            continue;
        }
        let dm = dmin * (y[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / dj).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&l, &mut y[16..80]);
}

// ---------------------------------------------------------------- Q3_K encode

pub(crate) fn encode_q3_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(110)) {
        q3_k_encode_block(sub(x, 0), block_mut(y));
    }
}

/// Packs sixteen 6-bit values (already offset by 32) into the 12 Q3_K scale
/// bytes: low nibbles in bytes 0..8 (j >= 8 in the high nibble of byte j-8),
/// top two bits at bit pair j/4 of byte 8 + j%4.
fn pack_q3_k_scales(v: &[u8; 16], packed: &mut [u8]) {
    packed[..12].fill(0);
    for j in 0..16 {
        if j < 8 {
            packed[j] = v[j] & 0x0F;
        } else {
            packed[j - 8] |= (v[j] & 0x0F) << 4;
        }
        packed[8 + j % 4] |= (v[j] >> 4) << (2 * (j / 4));
    }
}

fn q3_k_encode_block(x: &[f32; QK_K], y: &mut [u8; 110]) {
    // The 16 sub-blocks' searches run as 16 lanes (see lanes.rs).
    let xt: [Lanes<4>; 16] = transpose_in(x);
    let mut qt = [[F4::default(); 4]; 16];
    let scales: [f32; 16] = flat(&make_q3_lanes(4, &xt, &mut qt));
    let fit = Found(qt);
    let mut max_scale = 0.0f32;
    let mut amax = 0.0f32;
    for &s in &scales {
        if s.abs() > amax {
            amax = s.abs();
            max_scale = s;
        }
    }
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        // C: int8_t l = nearest_int(...) (wrapping), clamp to -32..=31, + 32.
        let v: [u8; 16] = std::array::from_fn(|j| {
            (((nearest_int(iscale * scales[j]) as i8) as i32).clamp(-32, 31) + 32) as u8
        });
        pack_q3_k_scales(&v, &mut y[96..108]);
        crate::float::write_f16(&mut y[108..110], 1.0 / iscale);
    } else {
        y[96..108].fill(0);
        crate::float::write_f16(&mut y[108..110], 0.0);
    }
    q3_k_requantize_and_pack(x, y, &fit);
}

/// `quantize_row_q3_K_impl`: weights `qw * sqrt(sigma2 + x^2)` with
/// `sigma2 = 2 * mean x^2`, `make_qx_quants(16, 4, ..)` per sub-block, and the
/// 16 scales quantized by `make_qx_quants(16, 32, scales, .., sw)` (whose
/// quants are already offset by 32) with `d` its returned scale.
pub(crate) fn encode_q3_k_imatrix(row: &[f32], dst: &mut [u8], qw: &[f32]) {
    let blocks = row.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K));
    for ((x, w), y) in blocks.zip(dst.chunks_exact_mut(110)) {
        let (x, qw, y): (&[f32; QK_K], &[f32; QK_K], &mut [u8; 110]) =
            (sub(x, 0), sub(w, 0), block_mut(y));
        let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
        let xt: [Lanes<4>; 16] = transpose_in(x);
        let wt = weights_t(&xt, &transpose_in(qw), sigma2);
        let sw: [f32; 16] = flat(&lane_sums(&wt));
        let mut qt = [[F4::default(); 4]; 16];
        let scales: [f32; 16] = flat(&make_qx_lanes(4, &xt, &wt, &mut qt));
        let fit = Found(qt);
        // The 16 scales are one group of 16: lane 0 (lanes 1-3 idle).
        let lane0 = |v: &[f32; 16]| -> [Lanes<1>; 16] { v.map(|s| [F4([s, 0.0, 0.0, 0.0])]) };
        let mut q1 = [[F4::default(); 1]; 16];
        let d_block = make_qx_lanes(32, &lane0(&scales), &lane0(&sw), &mut q1)[0].0[0];
        let ls: [u8; 16] = q1.map(|[v]| v.0[0] as u8);
        pack_q3_k_scales(&ls, &mut y[96..108]);
        crate::float::write_f16(&mut y[108..110], d_block);
        q3_k_requantize_and_pack(x, y, &fit);
    }
}

/// The shared end of both Q3_K encoders: requantize with the stored scales
/// (`-4..=3`, stored `+ 4`; sub-blocks whose scale is 0 keep the fit's quants),
/// then split the third bit into `hmask` (bit i/32 of byte i%32) and pack the
/// low two bits.
fn q3_k_requantize_and_pack(x: &[f32; QK_K], y: &mut [u8; 110], fit: &Found<16, 4>) {
    let stored = q3_k_scales(block(&y[96..108]));
    let d = read_f16(&y[108..110]);
    let mut l = [0u8; QK_K];
    for j in 0..16 {
        let dj = d * stored[j] as f32;
        if dj == 0.0 {
            fit.group(j, &mut l[16 * j..]);
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / dj).clamp(-4, 3);
            l[16 * j + ii] = (q + 4) as u8;
        }
    }
    // Bit b of hmask[m] is the third bit of value 32b + m (branch-free, so
    // it vectorizes across m).
    let mut hmask = [0u8; 32];
    for b in 0..8 {
        for m in 0..32 {
            let hi = (l[32 * b + m] > 3) as u8;
            hmask[m] |= hi << b;
            l[32 * b + m] -= hi << 2;
        }
    }
    y[..32].copy_from_slice(&hmask);
    pack_2bit(&l, &mut y[32..96]);
}
