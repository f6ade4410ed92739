//! The hot scale searches (`make_qx_quants`, `make_qkx2_quants` /
//! `make_qkx3_quants`) run on many groups at once: the sub-blocks of a
//! super-block, or consecutive blocks of a row, each group one SIMD lane.
//!
//! Why: the reference searches are chains of dependent f32 adds (a sum over
//! a group's 16 or 32 values, per candidate scale), so one group at a time is
//! bound by add latency. Groups are independent, so running 4 per `F4`
//! (and several `F4` per call) keeps every lane's arithmetic exactly the
//! scalar reference's while the CPU works on many chains at once.
//!
//! What must stay true:
//! - every lane performs the reference's f32 operations in the reference's
//!   order: sums accumulate over a group's values from 0 upward (one chain
//!   per lane, never split or reassociated), products are grouped as in C
//!   (`w*l*l` is `(w*l)*l`), nothing is fused;
//! - branches become per-lane selects; where the reference stops early
//!   (all-zero or degenerate group, no candidate improving), a lane computes
//!   throw-away values that are discarded at the end, never letting them
//!   reach another lane;
//! - the scalar ports in `search.rs` are the readable reference and, in
//!   tests, the oracle these functions are compared with lane by lane.
//!
//! `F4` is four f32 lanes written as four isomorphic scalar operations, which
//! the compiler turns into one SSE instruction each (baseline x86-64, no
//! `unsafe`, no target-specific code); it is plain scalar code elsewhere.
//!
//! Layout: `x[i][c].0[j]` is value `i` of group `4c + j`.

use crate::search::{nearest_int, Qkx, GROUP_MAX_EPS};
use std::ops::{Add, Div, Mul, Sub};

/// Four f32 lanes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct F4(pub(crate) [f32; 4]);

/// Four lane masks (each all ones or all zeros).
#[derive(Clone, Copy, Debug)]
pub(crate) struct M4([u32; 4]);

impl F4 {
    #[inline(always)]
    pub(crate) fn splat(v: f32) -> F4 {
        F4([v; 4])
    }

    #[inline(always)]
    fn map(self, f: impl Fn(f32) -> f32) -> F4 {
        let a = self.0;
        F4([f(a[0]), f(a[1]), f(a[2]), f(a[3])])
    }

    #[inline(always)]
    fn zip(self, o: F4, f: impl Fn(f32, f32) -> f32) -> F4 {
        let (a, b) = (self.0, o.0);
        F4([f(a[0], b[0]), f(a[1], b[1]), f(a[2], b[2]), f(a[3], b[3])])
    }

    #[inline(always)]
    fn cmp(self, o: F4, f: impl Fn(f32, f32) -> bool) -> M4 {
        let (a, b) = (self.0, o.0);
        let m = |c: bool| if c { u32::MAX } else { 0 };
        M4([
            m(f(a[0], b[0])),
            m(f(a[1], b[1])),
            m(f(a[2], b[2])),
            m(f(a[3], b[3])),
        ])
    }

    #[inline(always)]
    pub(crate) fn neg(self) -> F4 {
        self.map(|v| -v)
    }

    #[inline(always)]
    pub(crate) fn abs(self) -> F4 {
        self.map(f32::abs)
    }

    /// `a > b ? a : b` per lane (SSE `maxps`; C's `MAX`).
    #[inline(always)]
    pub(crate) fn max_c(self, o: F4) -> F4 {
        self.zip(o, |a, b| if a > b { a } else { b })
    }

    /// `a < b ? a : b` per lane (SSE `minps`; C's `MIN`).
    #[inline(always)]
    pub(crate) fn min_c(self, o: F4) -> F4 {
        self.zip(o, |a, b| if a < b { a } else { b })
    }

    #[inline(always)]
    pub(crate) fn sqrt(self) -> F4 {
        self.map(f32::sqrt)
    }

    /// ggml's `nearest_int` per lane, as f32 (exact: |result| <= 2^22).
    #[inline(always)]
    pub(crate) fn nearest(self) -> F4 {
        self.map(|v| nearest_int(v) as f32)
    }

    /// `nearest_int(v)` clamped to `lo..=hi`. Clamping the exact small
    /// integer as a float equals clamping the int, and is two instructions.
    #[inline(always)]
    pub(crate) fn quant(self, lo: F4, hi: F4) -> F4 {
        self.nearest().max_c(lo).min_c(hi)
    }

    /// [`F4::quant`] by the float round trick `(v + 1.5*2^23) - 1.5*2^23`:
    /// the same value as `nearest_int(v)` for |v| < 2^22 - 1 (the add rounds
    /// half to even onto the integer grid, the subtraction is exact), in two
    /// instructions instead of four. Callers must know every non-discarded
    /// lane is in that range (see `FAST_LIMIT`).
    #[inline(always)]
    pub(crate) fn quant_fast(self, lo: F4, hi: F4) -> F4 {
        self.map(|v| (v + 12_582_912.0) - 12_582_912.0)
            .max_c(lo)
            .min_c(hi)
    }

    /// Whether every lane is finite (not inf, not NaN).
    #[inline(always)]
    pub(crate) fn all_finite(self) -> bool {
        self.abs().lt(F4::splat(f32::INFINITY)).all()
    }

    #[inline(always)]
    pub(crate) fn gt(self, o: F4) -> M4 {
        self.cmp(o, |a, b| a > b)
    }

    #[inline(always)]
    pub(crate) fn lt(self, o: F4) -> M4 {
        self.cmp(o, |a, b| a < b)
    }

    #[inline(always)]
    pub(crate) fn ge(self, o: F4) -> M4 {
        self.cmp(o, |a, b| a >= b)
    }

    #[inline(always)]
    pub(crate) fn le(self, o: F4) -> M4 {
        self.cmp(o, |a, b| a <= b)
    }

    #[inline(always)]
    pub(crate) fn eq(self, o: F4) -> M4 {
        self.cmp(o, |a, b| a == b)
    }

    #[inline(always)]
    pub(crate) fn ne(self, o: F4) -> M4 {
        self.cmp(o, |a, b| a != b)
    }
}

impl M4 {
    #[inline(always)]
    pub(crate) fn and(self, o: M4) -> M4 {
        let (a, b) = (self.0, o.0);
        M4([a[0] & b[0], a[1] & b[1], a[2] & b[2], a[3] & b[3]])
    }

    #[inline(always)]
    pub(crate) fn or(self, o: M4) -> M4 {
        let (a, b) = (self.0, o.0);
        M4([a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]])
    }

    #[inline(always)]
    pub(crate) fn all(self) -> bool {
        (self.0[0] & self.0[1] & self.0[2] & self.0[3]) == u32::MAX
    }

    #[inline(always)]
    pub(crate) fn any(self) -> bool {
        (self.0[0] | self.0[1] | self.0[2] | self.0[3]) != 0
    }

    /// `m ? a : b` per lane.
    #[inline(always)]
    pub(crate) fn sel(self, a: F4, b: F4) -> F4 {
        let (m, a, b) = (self.0, a.0, b.0);
        let s = |k: usize| f32::from_bits((a[k].to_bits() & m[k]) | (b[k].to_bits() & !m[k]));
        F4([s(0), s(1), s(2), s(3)])
    }
}

macro_rules! binop {
    ($tr:ident, $f:ident, $op:tt) => {
        impl $tr for F4 {
            type Output = F4;
            #[inline(always)]
            fn $f(self, o: F4) -> F4 {
                self.zip(o, |a, b| a $op b)
            }
        }
    };
}
binop!(Add, add, +);
binop!(Sub, sub, -);
binop!(Mul, mul, *);
binop!(Div, div, /);

/// `C` chunks of four lanes.
pub(crate) type Lanes<const C: usize> = [F4; C];

/// Values of groups of `N` laid out back to back (`x[N*g + i]`, group `g <
/// 4C`) transposed to lanes: `out[i][c].0[j] = x[N*(4c+j) + i]`.
#[inline]
pub(crate) fn transpose_in<const N: usize, const C: usize>(x: &[f32]) -> [Lanes<C>; N] {
    let x = &x[..N * 4 * C];
    let mut out = [[F4::default(); C]; N];
    for c in 0..C {
        for j in 0..4 {
            let g = &x[N * (4 * c + j)..][..N];
            for i in 0..N {
                out[i][c].0[j] = g[i];
            }
        }
    }
    out
}

/// A search's quants, still in lanes. The K-quant encoders requantize every
/// sub-block whose stored scale is non-zero, so only the others' search
/// quants are ever read: one group at a time, on demand.
pub(crate) struct Found<const N: usize, const C: usize>(pub(crate) [Lanes<C>; N]);

impl<const N: usize, const C: usize> Found<N, C> {
    /// Group `g`'s quants into `out[..N]`.
    #[inline]
    pub(crate) fn group(&self, g: usize, out: &mut [u8]) {
        for (o, qi) in out[..N].iter_mut().zip(&self.0) {
            *o = qi[g / 4].0[g % 4] as u8;
        }
    }
}

/// Quants from lanes back to groups: `l[N*(4c+j) + i] = q[i][c].0[j]`.
#[inline]
pub(crate) fn transpose_out<const N: usize, const C: usize>(q: &[Lanes<C>; N], l: &mut [u8]) {
    for (i, qi) in q.iter().enumerate() {
        for (c, v) in qi.iter().enumerate() {
            for (j, &v) in v.0.iter().enumerate() {
                l[N * (4 * c + j) + i] = v as u8;
            }
        }
    }
}

/// Per lane, a sum over the group's values from 0 in order.
#[inline]
pub(crate) fn lane_sums<const N: usize, const C: usize>(v: &[Lanes<C>; N]) -> Lanes<C> {
    let mut s = [F4::splat(0.0); C];
    for vi in v {
        for c in 0..C {
            s[c] = s[c] + vi[c];
        }
    }
    s
}

/// `make_qx_quants(N, nmax, x, L, 1, w)` per lane: returns the scales and
/// leaves in `q` the quants `l + nmax` (as f32).
///
/// The winning candidate's quants are not copied at each improvement: its
/// inverse scale is kept and the quants recomputed once at the end (the same
/// `nearest_int(iscale * x)` the reference stores).
pub(crate) fn make_qx_lanes<const N: usize, const C: usize>(
    nmax: i32,
    x: &[Lanes<C>; N],
    w: &[Lanes<C>; N],
    q: &mut [Lanes<C>; N],
) -> Lanes<C> {
    let mut out = [F4::default(); C];
    let mut off = 0;
    while off + UNROLL <= C {
        qx_core::<N, C, UNROLL>(nmax, x, w, q, &mut out, off);
        off += UNROLL;
    }
    while off < C {
        qx_core::<N, C, 1>(nmax, x, w, q, &mut out, off);
        off += 1;
    }
    out
}

/// Below this bound on |v| the float round trick equals `nearest_int(v)`.
const FAST_LIMIT: f32 = 4_194_303.0;

/// Whether every value of the chunks is finite.
#[inline(always)]
fn all_finite<const N: usize, const K: usize>(x: &[[F4; K]; N]) -> bool {
    let mut m = F4::splat(0.0);
    for xi in x {
        for v in xi {
            m = m.max_c(v.abs());
        }
    }
    // max_c drops NaN only when it is the second operand; check both ways.
    let mut nan = false;
    for xi in x {
        for v in xi {
            nan |= (*v).ne(*v).any();
        }
    }
    !nan && m.all_finite()
}

/// F4 chunks worked on together: enough independent add chains to hide
/// latency, few enough that the state stays in SSE's 16 registers.
const UNROLL: usize = 2;

/// [`make_qx_lanes`] on chunks `off..off + K`.
#[inline(always)]
fn qx_core<const N: usize, const C: usize, const K: usize>(
    nmax: i32,
    xa: &[Lanes<C>; N],
    wa: &[Lanes<C>; N],
    q: &mut [Lanes<C>; N],
    out: &mut Lanes<C>,
    off: usize,
) {
    let x: [[F4; K]; N] = std::array::from_fn(|i| std::array::from_fn(|c| xa[i][off + c]));
    let w: [[F4; K]; N] = std::array::from_fn(|i| std::array::from_fn(|c| wa[i][off + c]));
    // With every value finite, a non-zero lane's candidates have
    // |iscale * x| <= 32.9 * (1 + 2^-23)^2 (|x| <= |max|), inside the fast
    // rounding's range; zero lanes are discarded whatever they compute.
    if all_finite(&x) {
        qx_search::<N, C, K, true>(nmax, &x, &w, q, out, off)
    } else {
        qx_search::<N, C, K, false>(nmax, &x, &w, q, out, off)
    }
}

#[inline(always)]
fn qx_search<const N: usize, const C: usize, const K: usize, const FAST: bool>(
    nmax: i32,
    x: &[[F4; K]; N],
    w: &[[F4; K]; N],
    q: &mut [Lanes<C>; N],
    out: &mut Lanes<C>,
    off: usize,
) {
    let zero = F4::splat(0.0);
    let mut max = [zero; K];
    let mut amax = [zero; K];
    for xi in x {
        for c in 0..K {
            let ax = xi[c].abs();
            let m = ax.gt(amax[c]);
            amax[c] = m.sel(ax, amax[c]);
            max[c] = m.sel(xi[c], max[c]);
        }
    }
    // w*x is the first product of ggml's w*x*l: the same for every candidate.
    let wx: [[F4; K]; N] = std::array::from_fn(|i| std::array::from_fn(|c| w[i][c] * x[i][c]));
    let (lo, hi) = (F4::splat(-nmax as f32), F4::splat((nmax - 1) as f32));
    let first = F4::splat((-nmax) as f32);
    let mut best_iscale: [F4; K] = std::array::from_fn(|c| first / max[c]);
    let mut sumlx = [zero; K];
    let mut suml2 = [zero; K];
    for i in 0..N {
        for c in 0..K {
            let l = (best_iscale[c] * x[i][c]).quant(lo, hi);
            sumlx[c] = sumlx[c] + wx[i][c] * l;
            suml2[c] = suml2[c] + w[i][c] * l * l;
        }
    }
    let mut scale: [F4; K] =
        std::array::from_fn(|c| suml2[c].ne(zero).sel(sumlx[c] / suml2[c], zero));
    let mut best: [F4; K] = std::array::from_fn(|c| scale[c] * sumlx[c]);
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let num = F4::splat(-(nmax as f32 + 0.1 * is as f32));
        let iscale: [F4; K] = std::array::from_fn(|c| num / max[c]);
        let mut sumlx = [zero; K];
        let mut suml2 = [zero; K];
        for i in 0..N {
            for c in 0..K {
                let v = iscale[c] * x[i][c];
                let l = if FAST {
                    v.quant_fast(lo, hi)
                } else {
                    v.quant(lo, hi)
                };
                sumlx[c] = sumlx[c] + wx[i][c] * l;
                suml2[c] = suml2[c] + w[i][c] * l * l;
            }
        }
        for c in 0..K {
            let take = suml2[c]
                .gt(zero)
                .and((sumlx[c] * sumlx[c]).gt(best[c] * suml2[c]));
            let s = sumlx[c] / suml2[c];
            scale[c] = take.sel(s, scale[c]);
            best[c] = take.sel(s * sumlx[c], best[c]);
            best_iscale[c] = take.sel(iscale[c], best_iscale[c]);
        }
    }
    let eps = F4::splat(GROUP_MAX_EPS);
    let offset = F4::splat(nmax as f32);
    for i in 0..N {
        for c in 0..K {
            let l = (best_iscale[c] * x[i][c]).quant(lo, hi) + offset;
            q[i][off + c] = amax[c].lt(eps).sel(zero, l);
        }
    }
    for c in 0..K {
        out[off + c] = amax[c].lt(eps).sel(zero, scale[c]);
    }
}

/// `make_q3_quants(N, nmax, x, L, do_rmse = true)` per lane: returns the
/// scales and leaves the quants `l + nmax` (as f32) in `q`.
///
/// The coordinate descent runs on every lane for as many rounds as the
/// slowest lane needs (at most 5): a round that changes nothing in a lane
/// leaves its state as it was, so a lane that the reference would have
/// stopped is unaffected by the extra rounds.
pub(crate) fn make_q3_lanes<const N: usize, const C: usize>(
    nmax: i32,
    x: &[Lanes<C>; N],
    q: &mut [Lanes<C>; N],
) -> Lanes<C> {
    let mut out = [F4::default(); C];
    let mut off = 0;
    while off < C {
        if off + UNROLL <= C {
            q3_core::<N, C, UNROLL>(nmax, x, q, &mut out, off);
            off += UNROLL;
        } else {
            q3_core::<N, C, 1>(nmax, x, q, &mut out, off);
            off += 1;
        }
    }
    out
}

/// [`make_q3_lanes`] on chunks `off..off + K`.
#[inline(always)]
fn q3_core<const N: usize, const C: usize, const K: usize>(
    nmax: i32,
    xa: &[Lanes<C>; N],
    q: &mut [Lanes<C>; N],
    out: &mut Lanes<C>,
    off: usize,
) {
    let x: [[F4; K]; N] = std::array::from_fn(|i| std::array::from_fn(|c| xa[i][off + c]));
    let zero = F4::splat(0.0);
    let mut max = [zero; K];
    let mut amax = [zero; K];
    for xi in &x {
        for c in 0..K {
            let ax = xi[c].abs();
            let m = ax.gt(amax[c]);
            amax[c] = m.sel(ax, amax[c]);
            max[c] = m.sel(xi[c], max[c]);
        }
    }
    let (lo, hi) = (F4::splat(-nmax as f32), F4::splat((nmax - 1) as f32));
    let first = F4::splat((-nmax) as f32);
    let iscale: [F4; K] = std::array::from_fn(|c| first / max[c]);
    // w = x*x, and w*x the first product of ggml's w*x*l.
    let w: [[F4; K]; N] = std::array::from_fn(|i| std::array::from_fn(|c| x[i][c] * x[i][c]));
    let wx: [[F4; K]; N] = std::array::from_fn(|i| std::array::from_fn(|c| w[i][c] * x[i][c]));
    let mut l = [[zero; K]; N];
    let mut sumlx = [zero; K];
    let mut suml2 = [zero; K];
    for i in 0..N {
        for c in 0..K {
            let li = (iscale[c] * x[i][c]).quant(lo, hi);
            l[i][c] = li;
            sumlx[c] = sumlx[c] + wx[i][c] * li;
            suml2[c] = suml2[c] + w[i][c] * li * li;
        }
    }
    for _ in 0..5 {
        let mut changed = [M4([0; 4]); K];
        for i in 0..N {
            for c in 0..K {
                let li = l[i][c];
                let slx0 = sumlx[c] - wx[i][c] * li;
                let sl20 = suml2[c] - w[i][c] * li * li;
                let new_l = (x[i][c] * sl20 / slx0).quant(lo, hi);
                let slx = slx0 + wx[i][c] * new_l;
                let sl2 = sl20 + w[i][c] * new_l * new_l;
                let take = slx0
                    .gt(zero)
                    .and(new_l.ne(li))
                    .and(sl2.gt(zero))
                    .and((slx * slx * suml2[c]).gt(sumlx[c] * sumlx[c] * sl2));
                l[i][c] = take.sel(new_l, li);
                sumlx[c] = take.sel(slx, sumlx[c]);
                suml2[c] = take.sel(sl2, suml2[c]);
                changed[c] = changed[c].or(take);
            }
        }
        if !changed.iter().any(|m| m.any()) {
            break;
        }
    }
    let eps = F4::splat(GROUP_MAX_EPS);
    let offset = F4::splat(nmax as f32);
    for i in 0..N {
        for c in 0..K {
            q[i][off + c] = amax[c].lt(eps).sel(zero, l[i][c] + offset);
        }
    }
    for c in 0..K {
        let scale = suml2[c].gt(zero).sel(sumlx[c] / suml2[c], zero);
        out[off + c] = amax[c].lt(eps).sel(zero, scale);
    }
}

/// `make_qkx2_quants` / `make_qkx3_quants(N, nmax, x, w, L, ..)` per lane:
/// returns `(scale, -min)` and leaves the quants `0..=nmax` (as f32) in `q`.
///
/// As in [`make_qx_lanes`], the winning candidate is kept as the inverse
/// scale and the min its quants were computed with, and the quants are
/// recomputed at the end.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx_lanes<const N: usize, const C: usize>(
    kind: Qkx,
    nmax: i32,
    x: &[Lanes<C>; N],
    w: &[Lanes<C>; N],
    q: &mut [Lanes<C>; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (Lanes<C>, Lanes<C>) {
    let p = QkxParams {
        kind,
        nmax,
        rmin,
        rdelta,
        nstep,
    };
    let mut scale = [F4::default(); C];
    let mut the_min = [F4::default(); C];
    let mut off = 0;
    while off < C {
        let k = if off + UNROLL <= C { UNROLL } else { 1 };
        match (k == UNROLL, use_mad) {
            (true, false) => {
                qkx_core::<N, C, UNROLL, false>(&p, x, w, q, &mut scale, &mut the_min, off)
            }
            (true, true) => {
                qkx_core::<N, C, UNROLL, true>(&p, x, w, q, &mut scale, &mut the_min, off)
            }
            (false, false) => {
                qkx_core::<N, C, 1, false>(&p, x, w, q, &mut scale, &mut the_min, off)
            }
            (false, true) => qkx_core::<N, C, 1, true>(&p, x, w, q, &mut scale, &mut the_min, off),
        }
        off += k;
    }
    (scale, the_min)
}

/// One candidate's quants (into `laux`) and sums `(sum w*l, sum w*l*l,
/// sum w*l*x)`, each accumulated over the values in order.
#[inline(always)]
fn qkx_sums<const N: usize, const K: usize, const FAST: bool>(
    x: &[[F4; K]; N],
    w: &[[F4; K]; N],
    iscale: &[F4; K],
    min: &[F4; K],
    nmaxv: F4,
    laux: &mut [[F4; K]; N],
) -> ([F4; K], [F4; K], [F4; K]) {
    let zero = F4::splat(0.0);
    let mut sum_l = [zero; K];
    let mut sum_l2 = [zero; K];
    let mut sum_xl = [zero; K];
    for i in 0..N {
        for c in 0..K {
            let v = iscale[c] * (x[i][c] - min[c]);
            let l = if FAST {
                v.quant_fast(zero, nmaxv)
            } else {
                v.quant(zero, nmaxv)
            };
            laux[i][c] = l;
            let wl = w[i][c] * l;
            sum_l[c] = sum_l[c] + wl;
            sum_l2[c] = sum_l2[c] + wl * l;
            sum_xl[c] = sum_xl[c] + wl * x[i][c];
        }
    }
    (sum_l, sum_l2, sum_xl)
}

/// The search parameters of `make_qkx{2,3}_quants`.
#[derive(Clone, Copy)]
struct QkxParams {
    kind: Qkx,
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
}

/// [`make_qkx_lanes`] on chunks `off..off + K`.
#[inline(always)]
fn qkx_core<const N: usize, const C: usize, const K: usize, const MAD: bool>(
    p: &QkxParams,
    xa: &[Lanes<C>; N],
    wa: &[Lanes<C>; N],
    q: &mut [Lanes<C>; N],
    scale_out: &mut Lanes<C>,
    min_out: &mut Lanes<C>,
    off: usize,
) {
    let QkxParams {
        kind,
        nmax,
        rmin,
        rdelta,
        nstep,
        ..
    } = *p;
    let x: [[F4; K]; N] = std::array::from_fn(|i| std::array::from_fn(|c| xa[i][off + c]));
    let w: [[F4; K]; N] = std::array::from_fn(|i| std::array::from_fn(|c| wa[i][off + c]));
    let zero = F4::splat(0.0);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x: [F4; K] = std::array::from_fn(|c| sum_w[c] * x[0][c]);
    for i in 1..N {
        for c in 0..K {
            let xi = x[i][c];
            min[c] = xi.lt(min[c]).sel(xi, min[c]);
            max[c] = xi.gt(max[c]).sel(xi, max[c]);
            sum_w[c] = sum_w[c] + w[i][c];
            sum_x[c] = sum_x[c] + w[i][c] * xi;
        }
    }
    let xlo = min;
    let finite = all_finite(&x);
    for m in &mut min {
        *m = m.gt(zero).sel(zero, *m);
    }
    let min0 = min;
    let degenerate: [M4; K] = std::array::from_fn(|c| match kind {
        Qkx::Two => max[c].eq(min[c]),
        Qkx::Three => max[c].le(min[c]),
    });
    let err = |d: F4| if MAD { d.abs() } else { d * d };
    let nmaxv = F4::splat(nmax as f32);
    let mut best_iscale: [F4; K] = std::array::from_fn(|c| nmaxv / (max[c] - min[c]));
    let mut best_qmin = min;
    let one = F4::splat(1.0);
    let mut scale: [F4; K] = std::array::from_fn(|c| one / best_iscale[c]);
    let mut best_error = [zero; K];
    for i in 0..N {
        for c in 0..K {
            let l = (best_iscale[c] * (x[i][c] - min[c])).quant(zero, nmaxv);
            let diff = scale[c] * l + min[c] - x[i][c];
            best_error[c] = best_error[c] + w[i][c] * err(diff);
        }
    }
    let mut laux = [[zero; K]; N];
    for is in 0..=nstep {
        let num = F4::splat(rmin + rdelta * is as f32 + nmax as f32);
        let iscale: [F4; K] = std::array::from_fn(|c| num / (max[c] - min[c]));
        // Every |iscale * (x - min)| is at most |iscale| * max(|max - min|,
        // |xlo - min|) (rounding is monotone); below FAST_LIMIT in every lane
        // that counts, the fast rounding gives nearest_int's values.
        let fast = finite
            && (0..K).all(|c| {
                let span = (max[c] - min[c]).abs().max_c((xlo[c] - min[c]).abs());
                let bound = iscale[c].abs() * span;
                degenerate[c].or(bound.lt(F4::splat(FAST_LIMIT))).all()
            });
        let (sum_l, sum_l2, sum_xl) = if fast {
            qkx_sums::<N, K, true>(&x, &w, &iscale, &min, nmaxv, &mut laux)
        } else {
            qkx_sums::<N, K, false>(&x, &w, &iscale, &min, nmaxv, &mut laux)
        };
        let d: [F4; K] = std::array::from_fn(|c| sum_w[c] * sum_l2[c] - sum_l[c] * sum_l[c]);
        let fit: [M4; K] = std::array::from_fn(|c| d[c].gt(zero));
        if !fit.iter().any(|m| m.any()) {
            continue;
        }
        let mut this_scale = [zero; K];
        let mut this_min = [zero; K];
        for c in 0..K {
            let s = (sum_w[c] * sum_xl[c] - sum_x[c] * sum_l[c]) / d[c];
            let m = (sum_l2[c] * sum_x[c] - sum_l[c] * sum_xl[c]) / d[c];
            let pos = m.gt(zero);
            this_min[c] = pos.sel(zero, m);
            this_scale[c] = pos.sel(sum_xl[c] / sum_l2[c], s);
        }
        let mut cur_error = [zero; K];
        for i in 0..N {
            for c in 0..K {
                let diff = this_scale[c] * laux[i][c] + this_min[c] - x[i][c];
                cur_error[c] = cur_error[c] + w[i][c] * err(diff);
            }
        }
        for c in 0..K {
            let take = fit[c].and(cur_error[c].lt(best_error[c]));
            best_error[c] = take.sel(cur_error[c], best_error[c]);
            scale[c] = take.sel(this_scale[c], scale[c]);
            best_iscale[c] = take.sel(iscale[c], best_iscale[c]);
            best_qmin[c] = take.sel(min[c], best_qmin[c]);
            min[c] = take.sel(this_min[c], min[c]);
        }
    }
    for i in 0..N {
        for c in 0..K {
            let l = (best_iscale[c] * (x[i][c] - best_qmin[c])).quant(zero, nmaxv);
            q[i][off + c] = degenerate[c].sel(zero, l);
        }
    }
    for c in 0..K {
        scale_out[off + c] = degenerate[c].sel(zero, scale[c]);
        // C returns -min: a negation (so 0 gives -0), not 0 - min.
        min_out[off + c] = degenerate[c].sel(min0[c], min[c]).map(|v| -v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{make_q3_quants, make_qkx_quants, make_qx_quants};
    use crate::tests::Rng;

    /// A group of `n` values of one of several awkward kinds.
    fn group(rng: &mut Rng, n: usize) -> Vec<f32> {
        let kind = rng.next_u64() % 8;
        (0..n)
            .map(|i| {
                let g = rng.normal();
                match kind {
                    0 => g * 0.02,
                    1 => 3.25,
                    2 => 0.0,
                    3 => g * 1e-20,
                    4 => ((rng.next_u64() % 9) as f32 - 4.0) * 0.5,
                    5 => g.abs() + 0.5,
                    6 => {
                        if i == 3 {
                            g * 100.0
                        } else {
                            g * 0.01
                        }
                    }
                    _ => loop {
                        let f = f32::from_bits(rng.next_u64() as u32);
                        if f.is_finite() {
                            break f;
                        }
                    },
                }
            })
            .collect()
    }

    fn weights(rng: &mut Rng, x: &[f32]) -> Vec<f32> {
        match rng.next_u64() % 3 {
            0 => x.iter().map(|v| v * v).collect(),
            1 => x.iter().map(|v| v.abs() + 0.1).collect(),
            _ => x
                .iter()
                .map(|_| {
                    if rng.next_u64() % 4 == 0 {
                        0.0
                    } else {
                        rng.unit()
                    }
                })
                .collect(),
        }
    }

    fn check<const N: usize, const C: usize>(seed: u64) {
        let mut rng = Rng::new(seed);
        let lanes = 4 * C;
        for round in 0..300 {
            let xs: Vec<f32> = (0..lanes).flat_map(|_| group(&mut rng, N)).collect();
            let ws: Vec<f32> = xs.chunks(N).flat_map(|x| weights(&mut rng, x)).collect();
            let xt: [Lanes<C>; N] = transpose_in(&xs);
            let wt: [Lanes<C>; N] = transpose_in(&ws);
            let arr = |v: &[f32]| -> [f32; N] { v.try_into().unwrap() };
            for nmax in [4, 8, 16, 32] {
                let mut qt = [[F4::default(); C]; N];
                let got = make_qx_lanes(nmax, &xt, &wt, &mut qt);
                let mut l = vec![0u8; N * lanes];
                transpose_out(&qt, &mut l);
                for g in 0..lanes {
                    let mut want_l = [0u8; N];
                    let (x, w) = (arr(&xs[N * g..][..N]), arr(&ws[N * g..][..N]));
                    let want = make_qx_quants(nmax, &x, &w, &mut want_l);
                    let got = got[g / 4].0[g % 4];
                    assert_eq!(got.to_bits(), want.to_bits(), "qx round {round} group {g}");
                    assert_eq!(&l[N * g..][..N], &want_l, "qx round {round} group {g}");
                }
            }
            {
                let mut qt = [[F4::default(); C]; N];
                let got = make_q3_lanes(4, &xt, &mut qt);
                let mut l = vec![0u8; N * lanes];
                transpose_out(&qt, &mut l);
                for g in 0..lanes {
                    let mut want_l = [0u8; N];
                    let want = make_q3_quants(4, &arr(&xs[N * g..][..N]), &mut want_l);
                    let got = got[g / 4].0[g % 4];
                    assert_eq!(got.to_bits(), want.to_bits(), "q3 round {round} group {g}");
                    assert_eq!(&l[N * g..][..N], &want_l, "q3 round {round} group {g}");
                }
            }
            for (kind, nmax, rmin, rdelta, nstep, mad) in [
                (Qkx::Two, 15, -1.0, 0.1, 20, false),
                (Qkx::Two, 3, -0.5, 0.1, 15, true),
                (Qkx::Three, 31, -0.9, 0.05, 36, false),
            ] {
                let mut qt = [[F4::default(); C]; N];
                let (s, m) =
                    make_qkx_lanes(kind, nmax, &xt, &wt, &mut qt, rmin, rdelta, nstep, mad);
                let mut l = vec![0u8; N * lanes];
                transpose_out(&qt, &mut l);
                for g in 0..lanes {
                    let mut want_l = [0u8; N];
                    let (x, w) = (arr(&xs[N * g..][..N]), arr(&ws[N * g..][..N]));
                    let (ws_, wm) =
                        make_qkx_quants(kind, nmax, &x, &w, &mut want_l, rmin, rdelta, nstep, mad);
                    let got = (s[g / 4].0[g % 4].to_bits(), m[g / 4].0[g % 4].to_bits());
                    assert_eq!(
                        got,
                        (ws_.to_bits(), wm.to_bits()),
                        "qkx round {round} group {g}"
                    );
                    assert_eq!(&l[N * g..][..N], &want_l, "qkx round {round} group {g}");
                }
            }
        }
    }

    #[test]
    fn lane_searches_equal_the_scalar_ports() {
        check::<32, 2>(1);
        check::<16, 4>(2);
        check::<16, 1>(3);
    }
}
