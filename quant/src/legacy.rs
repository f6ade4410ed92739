//! The 32-value ggml block types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (encode and decode).
//!
//! Ports of ggml's `quantize_row_{q8_0,q4_0,q4_1,q5_0,q5_1}_ref`, the
//! importance-matrix `quantize_row_{q4_0,q4_1,q5_0,q5_1}_impl` and
//! `dequantize_row_*` (ggml `src/ggml-quants.c`; block structs in
//! `src/ggml-common.h`). What must stay true, for byte-identical output with
//! ggml on x86-64 and with gguf-py's `gguf/quants.py`:
//! - the same f32 operations in the same order, never fused (`mul_add` is
//!   banned here): `id` is `1/d` of the unrounded f32 `d`; the f16 `d` is only
//!   what is stored;
//! - Q8_0 rounds half away from zero (C `roundf`); Q4_x/Q5_x truncate toward
//!   zero after adding 8.5 / 16.5 / 0.5 (a C float-to-int cast);
//! - Q4_0/Q5_0 take the first value of largest magnitude, with its sign, and an
//!   all-zero block keeps the initial `+0.0`, so its stored `d` is `-0.0`
//!   (`0x8000`);
//! - float-to-int casts give what the x86-64 `cvttss2si` instruction gives C:
//!   blocks whose values are all small take a vectorizable exact path
//!   (`c_cast_block`), the rest go through `c_cast_i32`, which reproduces NaN
//!   and out-of-range results, so even blocks whose scale underflows (`1/d` =
//!   inf) or that hold inf/NaN match; reductions (absmax, min, max) run as
//!   SIMD but return the value the sequential C loop keeps (first of equals);
//! - with an imatrix, `sigma2` is the mean square of the whole row (so rows
//!   must be passed whole) and 8 consecutive blocks are searched as lanes;
//! - byte `j` of `qs` holds value `j` in its low nibble and value `j + 16` in its
//!   high nibble; Q5's fifth bits of values `j` and `j + 16` are bits `j` and
//!   `j + 16` of the little-endian u32 `qh`.
//!
//! Every function takes whole blocks (callers check lengths) and allocates nothing.

use crate::float::{read_f16, write_f16};
use crate::lanes::{make_qkx_lanes, make_qx_lanes, Lanes, F4};
use crate::search::Qkx;

/// Values per block for every type in this file.
pub(crate) const QK: usize = 32;

/// C's `(int)f` as compiled for x86-64 (`cvttss2si`): truncation toward zero,
/// and `i32::MIN` (the "integer indefinite") for NaN and out-of-range values.
/// Narrower C casts (`(int8_t)`, `(uint8_t)`) keep the low bits of this.
#[inline]
pub(crate) fn c_cast_i32(x: f32) -> i32 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        x as i32
    } else {
        i32::MIN
    }
}

/// C's `roundf(x)` (half away from zero) followed by a cast to int, for the
/// range where that is well defined; NaN and out-of-range as `c_cast_i32`.
/// Bit-identical to `c_cast_i32(x.round())` without a libm call.
#[inline]
pub(crate) fn c_roundf_i32(x: f32) -> i32 {
    // Written as selects, not branches, so the 32-value loop vectorizes.
    // For |x| < 2^23 the truncation is exact and so is x - t; beyond that (and
    // for inf/NaN) roundf returns x unchanged, so the plain C cast applies.
    let t = x as i32;
    let frac = x - t as f32;
    let up = (frac >= 0.5) as i32;
    let down = (frac <= -0.5) as i32;
    let rounded = t.wrapping_add(up).wrapping_sub(down);
    if x.abs() < 8_388_608.0 {
        rounded
    } else {
        c_cast_i32(x)
    }
}

/// Reads block arrays out of slices the callers already sized.
#[inline]
fn block<const N: usize>(b: &[u8]) -> &[u8; N] {
    b.try_into().expect("block size checked by caller")
}

#[inline]
fn block_mut<const N: usize>(b: &mut [u8]) -> &mut [u8; N] {
    b.try_into().expect("block size checked by caller")
}

#[inline]
fn values(x: &[f32]) -> &[f32; QK] {
    x.try_into().expect("block size checked by caller")
}

#[inline]
fn values_mut(y: &mut [f32]) -> &mut [f32; QK] {
    y.try_into().expect("block size checked by caller")
}

/// A reduction of a block with 8 independent accumulators (so it runs as
/// SIMD), combined pairwise. Only for `f` that is exact, associative and
/// commutative on the values met (max/min of non-NaN values up to the sign of
/// zero; callers fix that up).
#[inline(always)]
fn fold8(x: &[f32; QK], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    for c in x.chunks_exact(8) {
        for k in 0..8 {
            acc[k] = f(acc[k], c[k]);
        }
    }
    let a: [f32; 4] = std::array::from_fn(|k| f(acc[k], acc[k + 4]));
    f(f(a[0], a[2]), f(a[1], a[3]))
}

/// `v > acc ? v : acc`: the max of the non-NaN values seen.
#[inline(always)]
fn max_keep(acc: f32, v: f32) -> f32 {
    if v > acc {
        v
    } else {
        acc
    }
}

/// `v < acc ? v : acc`: the min of the non-NaN values seen.
#[inline(always)]
fn min_keep(acc: f32, v: f32) -> f32 {
    if v < acc {
        v
    } else {
        acc
    }
}

/// The first value of the block equal to `v` (for `v` = a zero: the first
/// zero, with its sign), or `v` when none is.
#[inline(always)]
fn first_equal(x: &[f32; QK], v: f32) -> f32 {
    let mut mask = 0u32;
    for (j, &e) in x.iter().enumerate() {
        mask |= ((e == v) as u32) << j;
    }
    if mask == 0 {
        v
    } else {
        x[mask.trailing_zeros() as usize]
    }
}

/// Largest-magnitude value with its sign; the first one wins ties, and an
/// all-zero (or all-NaN) block gives `+0.0`.
///
/// The reference's loop (`if (amax < |v|) { amax = |v|; max = v; }`) keeps
/// the first value whose magnitude is the block's largest (NaN never
/// replaces); that is computed here as a max reduction, then a search for
/// the first value of that magnitude.
#[inline(always)]
fn signed_absmax(x: &[f32; QK]) -> f32 {
    let amax = fold8(x, 0.0, |acc, v| max_keep(acc, v.abs()));
    if amax == 0.0 {
        return 0.0;
    }
    let mut mask = 0u32;
    for (j, &e) in x.iter().enumerate() {
        mask |= ((e.abs() == amax) as u32) << j;
    }
    x[mask.trailing_zeros() as usize]
}

/// Smallest and largest value, starting from `(f32::MAX, -f32::MAX)` as ggml
/// does (`if (v < min) min = v;`: the first value attaining the minimum wins,
/// NaN never does). Reduced as SIMD; the only thing the order decides is the
/// sign of a zero result, taken from the first zero.
#[inline(always)]
fn min_max(x: &[f32; QK]) -> (f32, f32) {
    let min = fold8(x, f32::MAX, min_keep);
    let max = fold8(x, -f32::MAX, max_keep);
    let min = if min == 0.0 { first_equal(x, 0.0) } else { min };
    let max = if max == 0.0 { first_equal(x, 0.0) } else { max };
    (min, max)
}

/// C's `(int)` of each value: the plain Rust cast (which vectorizes) when
/// every value is in range, `c_cast_i32` (x86 semantics for NaN and
/// out-of-range) otherwise.
#[inline(always)]
fn c_cast_block(v: &[f32; QK]) -> [i32; QK] {
    let mut out = [0i32; QK];
    let mut nonneg_small = true;
    for &v in v {
        nonneg_small &= (0.0..4_194_303.0).contains(&v);
    }
    if nonneg_small {
        // The usual case (the quantizers add 8.5, 16.5 or 0.5 to a value
        // scaled into range): truncation is rounding, minus one where that
        // rounded up.
        for j in 0..QK {
            let r = crate::search::nearest_int(v[j]);
            out[j] = r - ((r as f32) > v[j]) as i32;
        }
    } else if all_small(v) {
        for j in 0..QK {
            out[j] = trunc_small(v[j]);
        }
    } else {
        for j in 0..QK {
            out[j] = c_cast_i32(v[j]);
        }
    }
    out
}

/// C's `(int)roundf(v)` of each value, as [`c_roundf_i32`], vectorized when
/// every value is small.
#[inline(always)]
fn c_roundf_block(v: &[f32; QK]) -> [i32; QK] {
    let mut out = [0i32; QK];
    if all_small(v) {
        for j in 0..QK {
            let t = trunc_small(v[j]);
            // Exact: |v| < 2^22, so v - t is representable.
            let frac = v[j] - t as f32;
            out[j] = t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32;
        }
    } else {
        for j in 0..QK {
            out[j] = c_roundf_i32(v[j]);
        }
    }
    out
}

/// Whether every |v| < 2^22 - 1 (false for NaN): the range of `trunc_small`.
#[inline(always)]
fn all_small(v: &[f32; QK]) -> bool {
    let mut ok = true;
    for &v in v {
        ok &= v.abs() < 4_194_303.0;
    }
    ok
}

/// Truncation toward zero of |v| < 2^22 - 1, in SSE2-friendly steps: round
/// to nearest by ggml's `nearest_int` bit trick, then step back by one where
/// that rounded away from zero. (Rust's saturating `as` does not vectorize
/// on baseline x86-64.)
#[inline(always)]
fn trunc_small(v: f32) -> i32 {
    let r = crate::search::nearest_int(v);
    let rf = r as f32;
    r - ((v >= 0.0) & (rf > v)) as i32 + ((v < 0.0) & (rf < v)) as i32
}

/// `f` applied to each value (written as a loop: `array::map` is not always
/// inlined and vectorized).
#[inline(always)]
fn each(x: &[f32; QK], f: impl Fn(f32) -> f32) -> [f32; QK] {
    let mut out = [0f32; QK];
    for j in 0..QK {
        out[j] = f(x[j]);
    }
    out
}

#[inline]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

// ---------------------------------------------------------------- Q8_0
// Block (34 bytes): f16 d; i8 qs[32].

pub(crate) fn encode_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
        q8_0_block(values(x), block_mut(y));
    }
}

fn q8_0_block(x: &[f32; QK], y: &mut [u8; 34]) {
    // C's MAX(amax, |v|) is `amax > |v| ? amax : |v|`: a NaN becomes amax
    // and the next value replaces it, so blocks with NaN keep that order;
    // without NaN it is a plain (SIMD) max.
    let nan = x.iter().fold(false, |a, v| a | v.is_nan());
    let amax = if nan {
        x.iter().fold(
            0.0f32,
            |amax, v| if amax > v.abs() { amax } else { v.abs() },
        )
    } else {
        fold8(x, 0.0, |acc, v| max_keep(acc, v.abs()))
    };
    let d = amax / 127.0;
    let id = inverse(d);
    write_f16(&mut y[..2], d);
    let q = c_roundf_block(&each(x, |v| v * id));
    for (o, q) in y[2..].iter_mut().zip(q) {
        *o = q as i8 as u8;
    }
}

pub(crate) fn decode_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(QK)) {
        let b: &[u8; 34] = block(b);
        let d = read_f16(&b[..2]);
        for (o, &q) in y.iter_mut().zip(&b[2..]) {
            *o = (q as i8) as f32 * d;
        }
    }
}

// ---------------------------------------------------------------- Q4_0
// Block (18 bytes): f16 d; u8 qs[16]. Value = (nibble - 8) * d.

pub(crate) fn encode_q4_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(18)) {
        q4_0_block(values(x), block_mut(y));
    }
}

fn q4_0_block(x: &[f32; QK], y: &mut [u8; 18]) {
    let max = signed_absmax(x);
    let d = max / -8.0;
    let id = inverse(d);
    write_f16(&mut y[..2], d);
    let q = c_cast_block(&each(x, |v| v * id + 8.5));
    for j in 0..QK / 2 {
        let lo = (q[j] as i8).min(15) as u8;
        let hi = (q[j + QK / 2] as i8).min(15) as u8;
        y[2 + j] = lo | (hi << 4);
    }
}

pub(crate) fn decode_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(QK)) {
        let b: &[u8; 18] = block(b);
        let y = values_mut(y);
        let d = read_f16(&b[..2]);
        for j in 0..QK / 2 {
            let q = b[2 + j];
            y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            y[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

// ---------------------------------------------------------------- Q4_1
// Block (20 bytes): f16 d, f16 m; u8 qs[16]. Value = nibble * d + m.

pub(crate) fn encode_q4_1(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(20)) {
        q4_1_block(values(x), block_mut(y));
    }
}

fn q4_1_block(x: &[f32; QK], y: &mut [u8; 20]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    write_f16(&mut y[..2], d);
    write_f16(&mut y[2..4], min);
    let q = c_cast_block(&each(x, |v| (v - min) * id + 0.5));
    for j in 0..QK / 2 {
        let lo = (q[j] as i8).min(15) as u8;
        let hi = (q[j + QK / 2] as i8).min(15) as u8;
        y[4 + j] = lo | (hi << 4);
    }
}

pub(crate) fn decode_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(QK)) {
        let b: &[u8; 20] = block(b);
        let y = values_mut(y);
        let d = read_f16(&b[..2]);
        let m = read_f16(&b[2..4]);
        for j in 0..QK / 2 {
            let q = b[4 + j];
            y[j] = (q & 0x0F) as f32 * d + m;
            y[j + QK / 2] = (q >> 4) as f32 * d + m;
        }
    }
}

// ---------------------------------------------------------------- Q5_0
// Block (22 bytes): f16 d; u8 qh[4]; u8 qs[16]. Value = (5-bit q - 16) * d.

pub(crate) fn encode_q5_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(22)) {
        q5_0_block(values(x), block_mut(y));
    }
}

fn q5_0_block(x: &[f32; QK], y: &mut [u8; 22]) {
    let max = signed_absmax(x);
    let d = max / -16.0;
    let id = inverse(d);
    write_f16(&mut y[..2], d);
    let q = c_cast_block(&each(x, |v| v * id + 16.5));
    let l: [u8; QK] = q.map(|q| (q as i8).min(31) as u8);
    let qh = pack_q5(&l, &mut y[6..22]);
    y[2..6].copy_from_slice(&qh);
}

pub(crate) fn decode_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(QK)) {
        let b: &[u8; 22] = block(b);
        let y = values_mut(y);
        let d = read_f16(&b[..2]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for j in 0..QK / 2 {
            let q = b[6 + j];
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            y[j] = (((q & 0x0F) as u32 | h0) as i32 - 16) as f32 * d;
            y[j + QK / 2] = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
        }
    }
}

// ---------------------------------------------------------------- Q5_1
// Block (24 bytes): f16 d, f16 m; u8 qh[4]; u8 qs[16]. Value = q * d + m.

pub(crate) fn encode_q5_1(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(24)) {
        q5_1_block(values(x), block_mut(y));
    }
}

fn q5_1_block(x: &[f32; QK], y: &mut [u8; 24]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    write_f16(&mut y[..2], d);
    write_f16(&mut y[2..4], min);
    // No clamp here in the reference: (uint8_t) of the truncated value.
    let q = c_cast_block(&each(x, |v| (v - min) * id + 0.5));
    let l: [u8; QK] = q.map(|q| q as u8);
    let qh = pack_q5(&l, &mut y[8..24]);
    y[4..8].copy_from_slice(&qh);
}

pub(crate) fn decode_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(24).zip(dst.chunks_exact_mut(QK)) {
        let b: &[u8; 24] = block(b);
        let y = values_mut(y);
        let d = read_f16(&b[..2]);
        let m = read_f16(&b[2..4]);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for j in 0..QK / 2 {
            let q = b[8 + j];
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            y[j] = ((q & 0x0F) as u32 | h0) as f32 * d + m;
            y[j + QK / 2] = ((q >> 4) as u32 | h1) as f32 * d + m;
        }
    }
}

// ------------------------------------------------ with an importance matrix
// ggml's `quantize_row_q{4,5}_{0,1}_impl` (used by `quantize_q*` when
// `quant_weights != NULL`). Unlike the K-quants, `sigma2` is the mean square
// of the whole row, and the per-value weights are `qw * sqrt(sigma2 + x^2)`.
// Each function takes one row and its per-column weights.

/// `sum x^2 / n` over the whole row, accumulated in order from 0.
pub(crate) fn row_sigma2(row: &[f32]) -> f32 {
    let mut sum_x2 = 0.0f32;
    for &v in row {
        sum_x2 += v * v;
    }
    sum_x2 / row.len() as f32
}

/// Lane chunks per search call: 2 x 4 = 8 consecutive blocks of a row are
/// searched at once (see lanes.rs).
const C: usize = 2;

/// What a fit returns per block: (scale, -min or 0).
type Fit = [(f32, f32); 4 * C];

/// Runs `fit` on the row's blocks 8 at a time (in the lane layout, with
/// weights `qw * sqrt(sigma2 + x^2)`), then `store` on each real block with
/// its quants and the fit's two numbers. A last group of fewer than 8 blocks
/// is padded with zeros whose results are dropped (lanes never interact).
fn encode_weighted<const B: usize>(
    row: &[f32],
    qw: &[f32],
    dst: &mut [u8],
    s2: f32,
    fit: impl Fn(&[Lanes<C>; QK], &[Lanes<C>; QK], &mut [Lanes<C>; QK]) -> Fit,
    store: impl Fn(&[u8; QK], (f32, f32), &mut [u8; B]),
) {
    let s2 = F4::splat(s2);
    let groups = row
        .chunks(QK * 4 * C)
        .zip(qw.chunks(QK * 4 * C))
        .zip(dst.chunks_mut(B * 4 * C));
    for ((x, w), y) in groups {
        let mut xs = [0f32; QK * 4 * C];
        let mut ws = [0f32; QK * 4 * C];
        xs[..x.len()].copy_from_slice(x);
        ws[..w.len()].copy_from_slice(w);
        let xt: [Lanes<C>; QK] = crate::lanes::transpose_in(&xs);
        let qt: [Lanes<C>; QK] = crate::lanes::transpose_in(&ws);
        let wt: [Lanes<C>; QK] = std::array::from_fn(|i| {
            std::array::from_fn(|c| qt[i][c] * (s2 + xt[i][c] * xt[i][c]).sqrt())
        });
        let mut q = [[F4::default(); C]; QK];
        let res = fit(&xt, &wt, &mut q);
        let mut l = [0u8; QK * 4 * C];
        crate::lanes::transpose_out(&q, &mut l);
        for (k, y) in y.chunks_exact_mut(B).enumerate() {
            store(block(&l[QK * k..QK * k + QK]), res[k], block_mut(y));
        }
    }
}

fn lane(v: &Lanes<C>, g: usize) -> f32 {
    v[g / 4].0[g % 4]
}

fn fit_qx<const NMAX: i32>(
    xt: &[Lanes<C>; QK],
    wt: &[Lanes<C>; QK],
    q: &mut [Lanes<C>; QK],
) -> Fit {
    let d = make_qx_lanes(NMAX, xt, wt, q);
    std::array::from_fn(|g| (lane(&d, g), 0.0))
}

fn fit_qkx3<const NMAX: i32>(
    xt: &[Lanes<C>; QK],
    wt: &[Lanes<C>; QK],
    q: &mut [Lanes<C>; QK],
) -> Fit {
    let (d, the_min) = make_qkx_lanes(Qkx::Three, NMAX, xt, wt, q, -0.9, 0.05, 36, false);
    std::array::from_fn(|g| (lane(&d, g), lane(&the_min, g)))
}

/// Packs 32 quants (each < 32) as Q5: low nibbles of values j and j+16 in
/// `qs[j]`, fifth bits in the returned `qh` (bits j and j+16).
#[inline]
fn pack_q5(l: &[u8; QK], qs: &mut [u8]) -> [u8; 4] {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (lo, hi) = (l[j], l[j + QK / 2]);
        qs[j] = (lo & 0x0F) | ((hi & 0x0F) << 4);
        qh |= (((lo & 0x10) >> 4) as u32) << j;
        qh |= (((hi & 0x10) >> 4) as u32) << (j + QK / 2);
    }
    qh.to_le_bytes()
}

/// `quantize_row_q4_0_impl`: `make_qx_quants(32, 8, .., weights)`, `d` its scale.
pub(crate) fn encode_q4_0_imatrix(row: &[f32], dst: &mut [u8], qw: &[f32]) {
    encode_q4_0_imatrix_s2(row, dst, qw, row_sigma2(row))
}

/// As [`encode_q4_0_imatrix`] with the row's `sigma2` given: blocks of a
/// row encoded on their own, as the row would encode them.
pub(crate) fn encode_q4_0_imatrix_s2(row: &[f32], dst: &mut [u8], qw: &[f32], s2: f32) {
    encode_weighted::<18>(row, qw, dst, s2, fit_qx::<8>, |l, (d, _), y| {
        write_f16(&mut y[..2], d);
        for j in 0..QK / 2 {
            y[2 + j] = l[j] | (l[j + QK / 2] << 4);
        }
    });
}

/// `quantize_row_q5_0_impl`: `make_qx_quants(32, 16, .., weights)`.
pub(crate) fn encode_q5_0_imatrix(row: &[f32], dst: &mut [u8], qw: &[f32]) {
    encode_q5_0_imatrix_s2(row, dst, qw, row_sigma2(row))
}

/// As [`encode_q5_0_imatrix`] with the row's `sigma2` given: blocks of a
/// row encoded on their own, as the row would encode them.
pub(crate) fn encode_q5_0_imatrix_s2(row: &[f32], dst: &mut [u8], qw: &[f32], s2: f32) {
    encode_weighted::<22>(row, qw, dst, s2, fit_qx::<16>, |l, (d, _), y| {
        write_f16(&mut y[..2], d);
        let qh = pack_q5(l, &mut y[6..22]);
        y[2..6].copy_from_slice(&qh);
    });
}

/// `quantize_row_q4_1_impl`: `make_qkx3_quants(32, 15, .., -0.9, 0.05, 36)`;
/// stores f16 `d` and f16 `m = -(the fit's min)`.
pub(crate) fn encode_q4_1_imatrix(row: &[f32], dst: &mut [u8], qw: &[f32]) {
    encode_q4_1_imatrix_s2(row, dst, qw, row_sigma2(row))
}

/// As [`encode_q4_1_imatrix`] with the row's `sigma2` given: blocks of a
/// row encoded on their own, as the row would encode them.
pub(crate) fn encode_q4_1_imatrix_s2(row: &[f32], dst: &mut [u8], qw: &[f32], s2: f32) {
    encode_weighted::<20>(row, qw, dst, s2, fit_qkx3::<15>, |l, (d, the_min), y| {
        write_f16(&mut y[..2], d);
        write_f16(&mut y[2..4], -the_min);
        for j in 0..QK / 2 {
            y[4 + j] = l[j] | (l[j + QK / 2] << 4);
        }
    });
}

/// `quantize_row_q5_1_impl`: `make_qkx3_quants(32, 31, .., -0.9, 0.05, 36)`.
pub(crate) fn encode_q5_1_imatrix(row: &[f32], dst: &mut [u8], qw: &[f32]) {
    encode_q5_1_imatrix_s2(row, dst, qw, row_sigma2(row))
}

/// As [`encode_q5_1_imatrix`] with the row's `sigma2` given: blocks of a
/// row encoded on their own, as the row would encode them.
pub(crate) fn encode_q5_1_imatrix_s2(row: &[f32], dst: &mut [u8], qw: &[f32], s2: f32) {
    encode_weighted::<24>(row, qw, dst, s2, fit_qkx3::<31>, |l, (d, the_min), y| {
        write_f16(&mut y[..2], d);
        write_f16(&mut y[2..4], -the_min);
        let qh = pack_q5(l, &mut y[8..24]);
        y[4..8].copy_from_slice(&qh);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_roundf_matches_f32_round_then_c_cast() {
        let check = |x: f32| {
            let want = c_cast_i32(x.round());
            assert_eq!(c_roundf_i32(x), want, "{x:e}");
        };
        for i in -1000..=1000 {
            let h = i as f32 * 0.5; // every half and integer in [-500, 500]
            check(h);
            check(f32::from_bits(h.to_bits().wrapping_add(1)));
            check(f32::from_bits(h.to_bits().wrapping_sub(1)));
        }
        for x in [
            0.499_999_97f32,
            -0.499_999_97,
            8_388_607.5,
            -8_388_607.5,
            8_388_608.0,
            1e10,
            -1e10,
        ] {
            check(x);
        }
        let mut bits = 0u32;
        while let Some(b) = bits.checked_add(104_729) {
            check(f32::from_bits(b));
            bits = b;
        }
        assert_eq!(c_roundf_i32(2.5), 3);
        assert_eq!(c_roundf_i32(-2.5), -3);
        assert_eq!(c_roundf_i32(f32::NAN), i32::MIN);
        assert_eq!(c_roundf_i32(f32::NEG_INFINITY), i32::MIN);
    }

    #[test]
    fn block_casts_equal_the_scalar_c_casts() {
        // The vectorized block conversions (three paths each) against the
        // scalar C-semantics casts, on ties, near-integers, both signs, the
        // 2^22 boundary, huge values, NaN and infinities.
        let mut vals = Vec::new();
        for i in -2000..=2000 {
            let h = i as f32 * 0.25;
            vals.extend([
                h,
                f32::from_bits(h.to_bits().wrapping_add(1)),
                f32::from_bits(h.to_bits().wrapping_sub(1)),
            ]);
        }
        for b in [
            4_194_302.5f32,
            4_194_303.0,
            4_194_304.5,
            8_388_607.5,
            1e9,
            3e9,
            -3e9,
        ] {
            vals.extend([b, -b]);
        }
        vals.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 1e-40]);
        let mut rng = crate::tests::Rng::new(5);
        vals.extend((0..20000).map(|_| f32::from_bits(rng.next_u64() as u32)));
        vals.extend((0..20000).map(|_| rng.unit() * 40.0 - 4.0));
        // Blocks that are all non-negative, all small, and mixed.
        let mut blocks: Vec<[f32; QK]> = Vec::new();
        for c in vals.chunks_exact(QK) {
            blocks.push(c.try_into().unwrap());
            blocks.push(std::array::from_fn(|j| c[j].abs().min(4_194_302.0)));
            blocks.push(std::array::from_fn(|j| {
                c[j].clamp(-4_194_302.0, 4_194_302.0)
            }));
        }
        for b in &blocks {
            let got = c_cast_block(b);
            let got_r = c_roundf_block(b);
            for j in 0..QK {
                assert_eq!(got[j], c_cast_i32(b[j]), "cast {:e}", b[j]);
                assert_eq!(got_r[j], c_roundf_i32(b[j]), "roundf {:e}", b[j]);
            }
        }
    }

    #[test]
    fn block_reductions_keep_the_first_of_equals() {
        // min/max and signed absmax as SIMD reductions must pick what the
        // sequential reference picks: the first value attaining the extreme
        // (sign of zero, sign of the largest magnitude).
        let seq_absmax = |x: &[f32; QK]| {
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in x {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            max
        };
        let seq_min_max = |x: &[f32; QK]| {
            let (mut min, mut max) = (f32::MAX, -f32::MAX);
            for &v in x {
                if v < min {
                    min = v;
                }
                if v > max {
                    max = v;
                }
            }
            (min, max)
        };
        let mut rng = crate::tests::Rng::new(9);
        for round in 0..20000 {
            let pick = [0.0f32, -0.0, 1.5, -1.5, 2.0, -2.0, f32::NAN, 0.25];
            let x: [f32; QK] = std::array::from_fn(|_| match round % 3 {
                0 => pick[(rng.next_u64() % 8) as usize],
                1 => pick[(rng.next_u64() % 2) as usize],
                _ => rng.normal(),
            });
            assert_eq!(
                signed_absmax(&x).to_bits(),
                seq_absmax(&x).to_bits(),
                "{x:?}"
            );
            let (a, b) = (min_max(&x), seq_min_max(&x));
            assert_eq!(
                (a.0.to_bits(), a.1.to_bits()),
                (b.0.to_bits(), b.1.to_bits()),
                "{x:?}"
            );
        }
    }

    #[test]
    fn c_cast_truncates_and_gives_integer_indefinite_out_of_range() {
        assert_eq!(c_cast_i32(16.99), 16);
        assert_eq!(c_cast_i32(-0.99), 0);
        assert_eq!(c_cast_i32(-2_147_483_648.0), i32::MIN);
        assert_eq!(c_cast_i32(2_147_483_648.0), i32::MIN);
        assert_eq!(c_cast_i32(f32::INFINITY), i32::MIN);
        assert_eq!(c_cast_i32(f32::NAN), i32::MIN);
        // (int8_t) of the indefinite keeps its low byte: 0.
        assert_eq!(c_cast_i32(f32::NAN) as i8, 0);
    }
}
