//! The non-linear 4-bit types IQ4_NL (32 values, 18 bytes: f16 `d`, `qs[16]`)
//! and IQ4_XS (256 values, 136 bytes: f16 `d`, u16 `scales_h`, `scales_l[4]`,
//! `qs[128]`): decoders and encoders.
//!
//! Ports of ggml's `dequantize_row_iq4_{nl,xs}`, `quantize_iq4_{nl,xs}` and
//! their shared `quantize_row_iq4_nl_impl` with `ntry = 7` (ggml
//! `src/ggml-quants.c`, table `kvalues_iq4nl` in `src/ggml-common.h`). What
//! must stay true:
//! - a 4-bit quant indexes `KVALUES`; byte `j` of a 32-value group's 16 bytes
//!   holds value `j` (low nibble) and `j + 16` (high nibble);
//! - the encoders are what `ggml_quantize_chunk` (llama-quantize) runs, with
//!   or without an importance matrix: weights `qw * sqrt(sigma2 + x^2)`
//!   (`sigma2 = 2 * mean x^2` of the super-block) or `x^2`, 15 candidate
//!   scales per 32-value group. (`quantize_row_iq4_nl_ref` runs a cheaper
//!   search, `ntry = -1`, and reads stale quants for all-zero blocks; no
//!   llama-quantize file holds its output, so it is not ported.)
//! - IQ4_XS's 6-bit group scales are `nearest_int(scale / d)` clamped to
//!   `-32..=31` and stored `+ 32` (low nibble in `scales_l[ib/2]` at nibble
//!   `ib%2`, top two bits at bit pair `ib` of `scales_h`), with `d = -max/32`
//!   used unrounded while encoding; the groups are requantized against
//!   `d * l`, also unrounded;
//! - f32 operations as in the reference, in its order, never fused.

use crate::float::{read_f16, write_f16};
use crate::search::{nearest_int, GROUP_MAX_EPS};

/// ggml's `kvalues_iq4nl`: the 16 levels of the non-linear 4-bit grid.
pub(crate) const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// ggml's `best_index_int8(16, kvalues_iq4nl, x)`: the index of the nearest
/// level, by binary search, ties (as decided by `x - lo < hi - x` in f32) to
/// the upper level; NaN gives 15.
#[inline]
pub(crate) fn best_index(x: f32) -> u8 {
    let val = |i: usize| KVALUES[i] as f32;
    if x <= val(0) {
        return 0;
    }
    if x >= val(15) {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < val(mav) {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - val(mu - 1) < val(mu) - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// One 32-value group's scale search (the per-group body of
/// `quantize_row_iq4_nl_impl` with `ntry = 7`). Leaves the quants of the best
/// first fit in `l` (the caller requantizes) and returns the scale, 0 for an
/// all-zero group (whose `l` is left as it was).
fn group_scale(x: &[f32; 32], w: &[f32; 32], l: &mut [u8; 32]) -> f32 {
    const NTRY: i32 = 7;
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let v0 = KVALUES[0] as f32;
    let mut d = -max / v0;
    let mut id = 1.0 / d;
    let mut sumqx = 0.0f32;
    let mut sumq2 = 0.0f32;
    for j in 0..32 {
        let al = id * x[j];
        let li = best_index(al);
        l[j] = li;
        let q = KVALUES[li as usize] as f32;
        sumqx += w[j] * q * x[j];
        sumq2 += w[j] * q * q;
    }
    d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        id = (itry + KVALUES[0] as i32) as f32 / max;
        sumqx = 0.0;
        sumq2 = 0.0;
        for j in 0..32 {
            let q = KVALUES[best_index(id * x[j]) as usize] as f32;
            sumqx += w[j] * q * x[j];
            sumq2 += w[j] * q * q;
        }
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// `2 * sum x^2 / n` of a super-block, in ggml's order (`sigma2 *= 2.f/n`).
fn sigma2(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s * (2.0 / x.len() as f32)
}

fn group_weights(x: &[f32; 32], qw: Option<&[f32]>, sigma2: f32) -> [f32; 32] {
    match qw {
        Some(qw) => std::array::from_fn(|j| qw[j] * (sigma2 + x[j] * x[j]).sqrt()),
        None => std::array::from_fn(|j| x[j] * x[j]),
    }
}

#[inline]
fn group(x: &[f32], at: usize) -> &[f32; 32] {
    x[at..at + 32].try_into().expect("in range")
}

/// Nibble packing of one 32-value group into 16 bytes.
#[inline]
fn pack(l: &[u8; 32], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = l[j] | (l[j + 16] << 4);
    }
}

// ---------------------------------------------------------------- IQ4_NL

/// `quantize_iq4_nl` on one row (`qw`: the row's per-column weights, or none).
pub(crate) fn encode_iq4_nl(row: &[f32], dst: &mut [u8], qw: Option<&[f32]>) {
    for (b, (x, y)) in row
        .chunks_exact(32)
        .zip(dst.chunks_exact_mut(18))
        .enumerate()
    {
        let x = group(x, 0);
        let w = group_weights(x, qw.map(|q| &q[32 * b..32 * b + 32]), sigma2(x));
        let mut l = [0u8; 32];
        let scale = group_scale(x, &w, &mut l);
        write_f16(&mut y[..2], scale);
        let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        for j in 0..32 {
            l[j] = best_index(id * x[j]);
        }
        pack(&l, &mut y[2..18]);
    }
}

pub(crate) fn decode_iq4_nl(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        let d = read_f16(&b[..2]);
        let (lo, hi) = y.split_at_mut(16);
        for ((a, c), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[2..18]) {
            *a = d * KVALUES[(q & 0x0F) as usize] as f32;
            *c = d * KVALUES[(q >> 4) as usize] as f32;
        }
    }
}

// ---------------------------------------------------------------- IQ4_XS

/// `quantize_iq4_xs` on one row (`qw`: the row's per-column weights, or none).
pub(crate) fn encode_iq4_xs(row: &[f32], dst: &mut [u8], qw: Option<&[f32]>) {
    for (b, (x, y)) in row
        .chunks_exact(256)
        .zip(dst.chunks_exact_mut(136))
        .enumerate()
    {
        let s2 = sigma2(x);
        let mut l = [0u8; 32];
        let mut scales = [0f32; 8];
        let mut max_scale = 0.0f32;
        let mut amax_scale = 0.0f32;
        for (ib, s) in scales.iter_mut().enumerate() {
            let xb = group(x, 32 * ib);
            let w = group_weights(xb, qw.map(|q| &q[256 * b + 32 * ib..][..32]), s2);
            *s = group_scale(xb, &w, &mut l);
            if s.abs() > amax_scale {
                amax_scale = s.abs();
                max_scale = *s;
            }
        }
        let d = -max_scale / 32.0;
        write_f16(&mut y[..2], d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut scales_h = 0u16;
        let mut scales_l = [0u8; 4];
        for (ib, &s) in scales.iter().enumerate() {
            let ls = nearest_int(id * s).clamp(-32, 31);
            let dl = d * ls as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            let xb = group(x, 32 * ib);
            for j in 0..32 {
                l[j] = best_index(idl * xb[j]);
            }
            pack(&l, &mut y[8 + 16 * ib..8 + 16 * ib + 16]);
            let stored = (ls + 32) as u8;
            scales_l[ib / 2] |= (stored & 0x0F) << (4 * (ib % 2));
            scales_h |= ((stored >> 4) as u16) << (2 * ib);
        }
        y[2..4].copy_from_slice(&scales_h.to_le_bytes());
        y[4..8].copy_from_slice(&scales_l);
    }
}

pub(crate) fn decode_iq4_xs(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(136).zip(dst.chunks_exact_mut(256)) {
        let d = read_f16(&b[..2]);
        let scales_h = u16::from_le_bytes([b[2], b[3]]);
        for (ib, y) in y.chunks_exact_mut(32).enumerate() {
            let low = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F;
            let high = ((scales_h >> (2 * ib)) & 3) as u8;
            let dl = d * ((low | (high << 4)) as i32 - 32) as f32;
            let (lo, hi) = y.split_at_mut(16);
            let qs = &b[8 + 16 * ib..8 + 16 * ib + 16];
            for ((a, c), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
                *a = dl * KVALUES[(q & 0x0F) as usize] as f32;
                *c = dl * KVALUES[(q >> 4) as usize] as f32;
            }
        }
    }
}
