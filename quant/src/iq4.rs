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
use crate::lanes::{transpose_in, Lanes, F4};
use crate::search::{nearest_int, GROUP_MAX_EPS};

/// ggml's `kvalues_iq4nl`: the 16 levels of the non-linear 4-bit grid.
pub(crate) const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// ggml's `best_index_int8(16, kvalues_iq4nl, x)` on four values at once,
/// returning the chosen level (as f32) and its index (as f32).
///
/// ggml binary-searches the bracketing levels (it keeps `val[ml] <= x <
/// val[mu]`, so they are the largest level <= x and the next) and picks the
/// lower one when `x - lo < hi - x` in f32, the upper one on ties; NaN gives
/// 15. Here the bracketing levels are built without branches or lookups by
/// adding, for each level the value reaches, the step to it (exact: small
/// integers); the final comparison is ggml's.
#[inline(always)]
fn best4(x: F4) -> (F4, F4) {
    let zero = F4::splat(0.0);
    let one = F4::splat(1.0);
    let mut lo = F4::splat(LEVELS[0]);
    let mut hi = F4::splat(LEVELS[1]);
    let mut count = zero;
    for k in 1..15 {
        let m = x.ge(F4::splat(LEVELS[k]));
        lo = lo + m.sel(F4::splat(LEVELS[k] - LEVELS[k - 1]), zero);
        hi = hi + m.sel(F4::splat(LEVELS[k + 1] - LEVELS[k]), zero);
        count = count + m.sel(one, zero);
    }
    // x <= -127 lands on (lo, hi) = (-127, -104) and picks lo; x >= 113 on
    // (89, 113) and picks hi; NaN would pick hi = -104, ggml gives 15.
    let take_lo = (x - lo).lt(hi - x);
    let nan = x.ne(x);
    let q = nan.sel(F4::splat(LEVELS[15]), take_lo.sel(lo, hi));
    let idx = nan.sel(F4::splat(15.0), take_lo.sel(count, count + one));
    (q, idx)
}

/// `KVALUES` as f32.
const LEVELS: [f32; 16] = {
    let mut t = [0f32; 16];
    let mut k = 0;
    while k < 16 {
        t[k] = KVALUES[k] as f32;
        k += 1;
    }
    t
};

/// One candidate's `(sumqx, sumq2)` per lane: `w*q*x` and `w*q*q` summed
/// over the group's values in order, `q` the level nearest `id * x`.
#[inline(always)]
fn candidate_sums(x: &[Lanes<2>; 32], w: &[Lanes<2>; 32], id: &[F4; 2]) -> ([F4; 2], [F4; 2]) {
    let zero = F4::splat(0.0);
    let mut sumqx = [zero; 2];
    let mut sumq2 = [zero; 2];
    for i in 0..32 {
        for c in 0..2 {
            let (q, _) = best4(id[c] * x[i][c]);
            let wq = w[i][c] * q;
            sumqx[c] = sumqx[c] + wq * x[i][c];
            sumq2[c] = sumq2[c] + wq * q;
        }
    }
    (sumqx, sumq2)
}

/// The per-group scale search of `quantize_row_iq4_nl_impl` with `ntry = 7`,
/// on 8 groups at once (lanes, see lanes.rs): a first fit from the
/// largest-magnitude value, then 15 candidate inverse scales
/// `(itry - 127) / max`, each scored by `sumqx^2 / sumq2`. Returns the
/// scales, 0 for all-zero groups. (The first fit's quants are not kept: every
/// caller requantizes.)
fn group_scales(x: &[Lanes<2>; 32], w: &[Lanes<2>; 32]) -> Lanes<2> {
    const NTRY: i32 = 7;
    let zero = F4::splat(0.0);
    let mut max = [zero; 2];
    let mut amax = [zero; 2];
    for xi in x {
        for c in 0..2 {
            let ax = xi[c].abs();
            let m = ax.gt(amax[c]);
            amax[c] = m.sel(ax, amax[c]);
            max[c] = m.sel(xi[c], max[c]);
        }
    }
    let v0 = F4::splat(KVALUES[0] as f32);
    let one = F4::splat(1.0);
    let sums = |id: &[F4; 2]| candidate_sums(x, w, id);
    // C: d = -max / values[0]; id = 1/d.
    let id: [F4; 2] = std::array::from_fn(|c| one / (max[c].neg() / v0));
    let (sumqx, sumq2) = sums(&id);
    let mut d: [F4; 2] = std::array::from_fn(|c| sumq2[c].gt(zero).sel(sumqx[c] / sumq2[c], zero));
    let mut best: [F4; 2] = std::array::from_fn(|c| d[c] * sumqx[c]);
    for itry in -NTRY..=NTRY {
        let num = F4::splat((itry + KVALUES[0] as i32) as f32);
        let id: [F4; 2] = std::array::from_fn(|c| num / max[c]);
        let (sumqx, sumq2) = sums(&id);
        for c in 0..2 {
            let take = sumq2[c]
                .gt(zero)
                .and((sumqx[c] * sumqx[c]).gt(best[c] * sumq2[c]));
            let nd = sumqx[c] / sumq2[c];
            d[c] = take.sel(nd, d[c]);
            best[c] = take.sel(nd * sumqx[c], best[c]);
        }
    }
    let eps = F4::splat(GROUP_MAX_EPS);
    std::array::from_fn(|c| amax[c].lt(eps).sel(zero, d[c]))
}

/// The quant indices of 32 values against inverse scale `id`
/// (`best_index(id * x)` each), four at a time.
#[inline]
fn requantize(x: &[f32], id: f32, l: &mut [u8; 32]) {
    let idv = F4::splat(id);
    for (xs, ls) in x.chunks_exact(4).zip(l.chunks_exact_mut(4)) {
        let (_, idx) = best4(idv * F4([xs[0], xs[1], xs[2], xs[3]]));
        for (o, v) in ls.iter_mut().zip(idx.0) {
            *o = v as u8;
        }
    }
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
/// Blocks are searched 8 at a time (the last group padded with zeros, whose
/// results are dropped).
pub(crate) fn encode_iq4_nl(row: &[f32], dst: &mut [u8], qw: Option<&[f32]>) {
    for (g, (xg, yg)) in row.chunks(256).zip(dst.chunks_mut(8 * 18)).enumerate() {
        let mut xs = [0f32; 256];
        let mut ws = [0f32; 256];
        xs[..xg.len()].copy_from_slice(xg);
        for (b, x) in xg.chunks_exact(32).enumerate() {
            let x = group(x, 0);
            let q = qw.map(|q| &q[256 * g + 32 * b..][..32]);
            ws[32 * b..32 * b + 32].copy_from_slice(&group_weights(x, q, sigma2(x)));
        }
        let scales = group_scales(&transpose_in(&xs), &transpose_in(&ws));
        for (b, (x, y)) in xg.chunks_exact(32).zip(yg.chunks_exact_mut(18)).enumerate() {
            let scale = scales[b / 4].0[b % 4];
            write_f16(&mut y[..2], scale);
            let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            let mut l = [0u8; 32];
            requantize(x, id, &mut l);
            pack(&l, &mut y[2..18]);
        }
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
/// The 8 groups of a super-block are searched at once.
pub(crate) fn encode_iq4_xs(row: &[f32], dst: &mut [u8], qw: Option<&[f32]>) {
    for (b, (x, y)) in row
        .chunks_exact(256)
        .zip(dst.chunks_exact_mut(136))
        .enumerate()
    {
        let s2 = sigma2(x);
        let mut ws = [0f32; 256];
        for ib in 0..8 {
            let q = qw.map(|q| &q[256 * b + 32 * ib..][..32]);
            ws[32 * ib..32 * ib + 32].copy_from_slice(&group_weights(group(x, 32 * ib), q, s2));
        }
        let lanes = group_scales(&transpose_in(x), &transpose_in(&ws));
        let scales: [f32; 8] = std::array::from_fn(|ib| lanes[ib / 4].0[ib % 4]);
        let mut max_scale = 0.0f32;
        let mut amax_scale = 0.0f32;
        for &s in &scales {
            if s.abs() > amax_scale {
                amax_scale = s.abs();
                max_scale = s;
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
            let mut l = [0u8; 32];
            requantize(group(x, 32 * ib), idl, &mut l);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's `best_index_int8` binary search, as written there.
    fn best_index_search(x: f32) -> u8 {
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

    #[test]
    fn best4_equals_ggml_binary_search() {
        // Every quarter step and its f32 neighbours over the levels' range
        // (ties at midpoints included), plus random and special values.
        let mut xs = vec![
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
        ];
        for i in -600..=600 {
            let v = i as f32 * 0.25;
            xs.extend([
                v,
                f32::from_bits(v.to_bits() + 1),
                f32::from_bits(v.to_bits().wrapping_sub(1)),
            ]);
        }
        let mut rng = crate::tests::Rng::new(3);
        xs.extend((0..100_000).map(|_| rng.unit() * 300.0 - 150.0));
        xs.extend((0..100_000).map(|_| f32::from_bits(rng.next_u64() as u32)));
        for c in xs.chunks(4) {
            let v = F4(std::array::from_fn(|k| c[k % c.len()]));
            let (q, idx) = best4(v);
            for k in 0..4 {
                let want = best_index_search(v.0[k]);
                assert_eq!(idx.0[k], want as f32, "{:e}", v.0[k]);
                assert_eq!(q.0[k], KVALUES[want as usize] as f32, "{:e}", v.0[k]);
            }
        }
    }
}
