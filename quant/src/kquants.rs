//! The 256-value ggml "K-quant" super-block types Q2_K, Q3_K, Q4_K, Q5_K, Q6_K:
//! decoders and encoders for all five.
//!
//! Ports of ggml's `dequantize_row_q{2,3,4,5,6}_K` and
//! `quantize_row_q{2,3,4,5,6}_K_ref` (no importance matrix) with their helpers
//! `nearest_int`, `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants` (ggml
//! `src/ggml-quants.c`, block structs in `src/ggml-common.h`). What must stay true:
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
//!   sub-blocks whose stored scale is 0 keep the search's quants, as ggml does.
//!   Any change here must be re-checked byte for byte against ggml.
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

// ================================================================ encoders

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this is zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: adding 1.5 * 2^23 leaves the integer in the low
/// mantissa bits, rounded half to even by the float adder. Exact for
/// |x| <= 2^22 - 1; outside that it returns what the C code returns (no assert,
/// as in ggml's release builds).
#[inline]
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007F_FFFF) - 0x0040_0000
}

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights
/// (weights `x^2`), as Q6_K uses it: symmetric quants `L` in `0..2*nmax`
/// (stored offset by `nmax`) and the best scale among 19 candidate inverse
/// scales `-(nmax + 0.1*is) / max`, `is` in -9..=9.
fn make_qx_quants_rmse1<const N: usize>(nmax: i32, x: &[f32; N], l_out: &mut [u8; N]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let mut iscale = (-nmax) as f32 / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (lo, &xi) in l_out.iter_mut().zip(x) {
        let l = clamp(nearest_int(iscale * xi));
        *lo = (l + nmax) as u8;
        let w = xi * xi;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &xi in x {
            let l = clamp(nearest_int(iscale * xi));
            let w = xi * xi;
            sumlx += w * xi * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (lo, &xi) in l_out.iter_mut().zip(x) {
                *lo = (nmax + clamp(nearest_int(iscale * xi))) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_qkx2_quants`: an asymmetric fit `x ~ scale * L + min`
/// (`min <= 0`) over `nstep + 1` candidate inverse scales
/// `(rmin + rdelta*is + nmax) / (max - min)`, each refined by weighted least
/// squares and judged by weighted squared error, or absolute error when
/// `use_mad` (Q2_K). Returns `(scale, -min)`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    weights: &[f32; N],
    l_out: &mut [u8; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let quant =
        |iscale: f32, xi: f32, min: f32| nearest_int(iscale * (xi - min)).clamp(0, nmax) as u8;
    let err = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..N {
        l_out[i] = quant(iscale, x[i], min);
        let diff = scale * l_out[i] as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    let mut laux = [0u8; N];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..N {
            let l = quant(iscale, x[i], min);
            laux[i] = l;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..N {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                *l_out = laux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

#[inline]
fn sub<const N: usize>(x: &[f32], at: usize) -> &[f32; N] {
    x[at..at + N].try_into().expect("in range")
}

#[inline]
fn sub_mut<const N: usize>(l: &mut [u8], at: usize) -> &mut [u8; N] {
    (&mut l[at..at + N]).try_into().expect("in range")
}

// ---------------------------------------------------------------- Q6_K encode

pub(crate) fn encode_q6_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(210)) {
        q6_k_encode_block(
            sub(x, 0),
            y.try_into().expect("block size checked by caller"),
        );
    }
}

fn q6_k_encode_block(x: &[f32; QK_K], y: &mut [u8; 210]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for (ib, s) in scales.iter_mut().enumerate() {
        *s = make_qx_quants_rmse1::<16>(32, sub(x, 16 * ib), sub_mut(&mut l, 16 * ib));
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = *s;
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

/// The shared first half of the Q4_K/Q5_K encoders: per 32-value sub-block a
/// (scale, min) fit with weights `sqrt(mean x^2) + |x|`, the 6-bit packing of
/// scales and mins against their maxima into `scales12`, the f16 `d`/`dmin`
/// at `y[0..4]`, and the requantization of every value (`0..=nmax`) with the
/// stored scales into `l`.
fn k4_scales_and_quants(
    x: &[f32; QK_K],
    y: &mut [u8],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; QK_K],
) {
    let mut mins = [0f32; 8];
    let mut scales = [0f32; 8];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        let xs: &[f32; 32] = sub(x, 32 * j);
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
        let (scale, min) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            sub_mut(l, 32 * j),
            rmin,
            0.1,
            nstep,
            false,
        );
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let s = &mut y[4..16];
    for j in 0..8 {
        // C narrows the int to uint8_t (wrapping) before clamping to 63.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            s[j] = ls;
            s[j + 4] = lm;
        } else {
            s[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            s[j - 4] |= (ls >> 4) << 6;
            s[j] |= (lm >> 4) << 6;
        }
    }
    let d = crate::float::write_f16(&mut y[0..2], max_scale / 63.0);
    let dmin = crate::float::write_f16(&mut y[2..4], max_min / 63.0);
    let packed: &[u8; 12] = (&y[4..16]).try_into().expect("12 bytes");
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, packed);
        let dj = d * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / dj).clamp(0, nmax);
            l[32 * j + ii] = q as u8;
        }
    }
}

pub(crate) fn encode_q4_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(144)) {
        let mut l = [0u8; QK_K];
        k4_scales_and_quants(sub(x, 0), y, 15, -1.0, 20, &mut l);
        let qs = &mut y[16..144];
        for c in 0..4 {
            for i in 0..32 {
                qs[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
            }
        }
    }
}

pub(crate) fn encode_q5_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(176)) {
        let mut l = [0u8; QK_K];
        k4_scales_and_quants(sub(x, 0), y, 31, -0.5, 15, &mut l);
        let (qh, qs) = y[16..176].split_at_mut(32);
        qh.fill(0);
        for c in 0..4 {
            for i in 0..32 {
                let (l1, l2) = (l[64 * c + i], l[64 * c + 32 + i]);
                if l1 > 15 {
                    qh[i] |= 1 << (2 * c);
                }
                if l2 > 15 {
                    qh[i] |= 2 << (2 * c);
                }
                qs[32 * c + i] = (l1 & 0x0F) | ((l2 & 0x0F) << 4);
            }
        }
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
        q2_k_encode_block(
            sub(x, 0),
            y.try_into().expect("block size checked by caller"),
        );
    }
}

fn q2_k_encode_block(x: &[f32; QK_K], y: &mut [u8; 84]) {
    const Q4SCALE: f32 = 15.0;
    let mut l = [0u8; QK_K];
    let mut mins = [0f32; 16];
    let mut scales = [0f32; 16];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..16 {
        let xs: &[f32; 16] = sub(x, 16 * j);
        let weights: [f32; 16] = std::array::from_fn(|i| xs[i].abs());
        let (scale, min) = make_qkx2_quants(
            3,
            xs,
            &weights,
            sub_mut(&mut l, 16 * j),
            -0.5,
            0.1,
            15,
            true,
        );
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    // Low nibble: scale against max_scale / 15; high nibble: min against
    // max_min / 15. C narrows the ints to u8 (wrapping), without a clamp.
    let (sc, rest) = y.split_at_mut(16);
    let d = if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for j in 0..16 {
            sc[j] = nearest_int(iscale * scales[j]) as u8;
        }
        crate::float::write_f16(&mut rest[64..66], max_scale / Q4SCALE)
    } else {
        sc.fill(0);
        crate::float::write_f16(&mut rest[64..66], 0.0)
    };
    let dmin = if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for j in 0..16 {
            sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        crate::float::write_f16(&mut rest[66..68], max_min / Q4SCALE)
    } else {
        crate::float::write_f16(&mut rest[66..68], 0.0)
    };
    for j in 0..16 {
        let dj = d * (sc[j] & 0x0F) as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin * (sc[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / dj).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&l, &mut rest[..64]);
}

// ---------------------------------------------------------------- Q3_K encode

/// ggml's `make_q3_quants` with `do_rmse`: symmetric quants in `-nmax..nmax`
/// from iscale `-nmax / max`, then up to 5 rounds of coordinate descent on
/// the x^2-weighted least-squares fit; returns the scale and leaves `L + nmax`.
fn make_q3_quants<const N: usize>(nmax: i32, x: &[f32; N], l_out: &mut [u8; N]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let iscale = (-nmax) as f32 / max;
    let mut l = [0i32; N];
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..N {
        l[i] = clamp(nearest_int(iscale * x[i]));
        let w = x[i] * x[i];
        sumlx += w * x[i] * l[i] as f32;
        suml2 += w * l[i] as f32 * l[i] as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..N {
            let w = x[i] * x[i];
            let mut slx = sumlx - w * x[i] * l[i] as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * l[i] as f32 * l[i] as f32;
                let new_l = clamp(nearest_int(x[i] * sl2 / slx));
                if new_l != l[i] {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for (o, &li) in l_out.iter_mut().zip(&l) {
        *o = (li + nmax) as u8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

pub(crate) fn encode_q3_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(110)) {
        q3_k_encode_block(
            sub(x, 0),
            y.try_into().expect("block size checked by caller"),
        );
    }
}

fn q3_k_encode_block(x: &[f32; QK_K], y: &mut [u8; 110]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let mut max_scale = 0.0f32;
    let mut amax = 0.0f32;
    for (j, s) in scales.iter_mut().enumerate() {
        *s = make_q3_quants::<16>(4, sub(x, 16 * j), sub_mut(&mut l, 16 * j));
        if s.abs() > amax {
            amax = s.abs();
            max_scale = *s;
        }
    }
    let (hmask, rest) = y.split_at_mut(32);
    let (qs, rest) = rest.split_at_mut(64);
    let (packed, dbytes) = rest.split_at_mut(12);
    packed.fill(0);
    let d = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..16 {
            // C: int8_t l = nearest_int(...) (wrapping), clamp to -32..=31, + 32.
            let v = ((nearest_int(iscale * scales[j]) as i8) as i32).clamp(-32, 31) + 32;
            let v = v as u8;
            if j < 8 {
                packed[j] = v & 0x0F;
            } else {
                packed[j - 8] |= (v & 0x0F) << 4;
            }
            packed[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
        }
        crate::float::write_f16(dbytes, 1.0 / iscale)
    } else {
        crate::float::write_f16(dbytes, 0.0)
    };
    let stored = q3_k_scales((&*packed).try_into().expect("12 bytes"));
    for j in 0..16 {
        let dj = d * stored[j] as f32;
        if dj == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / dj).clamp(-4, 3);
            l[16 * j + ii] = (q + 4) as u8;
        }
    }
    // High bit of value i goes to bit i / 32 of hmask[i % 32].
    hmask.fill(0);
    for (i, li) in l.iter_mut().enumerate() {
        if *li > 3 {
            hmask[i % 32] |= 1 << (i / 32);
            *li -= 4;
        }
    }
    pack_2bit(&l, qs);
}
