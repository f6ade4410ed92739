//! Scalar ports of ggml's scale searches (ggml `src/ggml-quants.c`):
//! `nearest_int`, `make_qp_quants` (run by the encoders as is), and
//! `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants` /
//! `make_qkx3_quants`, which the encoders run as lane versions (`lanes.rs`)
//! and which are kept here, compiled for tests only, as the readable
//! reference and the oracle those lane versions are checked against.
//!
//! What must stay true: each function performs the reference's f32 operations
//! in the reference's order for every element (`w*x*l` is `(w*x)*l`, sums
//! accumulate left to right from 0 or from element 0 exactly as in C, never
//! fused, never reassociated), keeps its strict comparisons (the first best
//! candidate wins), C's int -> u8/i8 narrowing, and C's `MIN`/`MAX` macros
//! (`a < b ? a : b`) where they meet NaN. Any change must be re-checked byte
//! for byte against ggml on large random inputs.

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this is zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: adding 1.5 * 2^23 leaves the integer in the low
/// mantissa bits, rounded half to even by the float adder. Exact for
/// |x| <= 2^22 - 1; outside that it returns what the C code returns (no assert,
/// as in ggml's release builds).
#[inline(always)]
pub(crate) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007F_FFFF) - 0x0040_0000
}

/// The first value of largest magnitude, with its sign (`max`), and that
/// magnitude (`amax`), both 0 when every `|x|` is 0 or NaN.
#[cfg(test)]
#[inline(always)]
fn signed_amax(x: &[f32]) -> (f32, f32) {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

#[cfg(test)] // the encoders run `lanes::make_qx_lanes`
/// ggml's `make_qx_quants` with `rmse_type = 1` and weights `w` (the caller
/// passes `x*x` for ggml's `qw == NULL`, which computes exactly that):
/// symmetric quants `l` in `-nmax..nmax` stored as `l + nmax`, and the best
/// scale among the first fit and 18 candidate inverse scales
/// `-(nmax + 0.1*is) / max`, `is` in -9..=9 without 0.
pub(crate) fn make_qx_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    w: &[f32; N],
    l_out: &mut [u8; N],
) -> f32 {
    let (max, amax) = signed_amax(x);
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let mut iscale = (-nmax) as f32 / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..N {
        let l = clamp(nearest_int(iscale * x[i]));
        l_out[i] = (l + nmax) as u8;
        let lf = l as f32;
        sumlx += w[i] * x[i] * lf;
        suml2 += w[i] * lf * lf;
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
        for i in 0..N {
            let lf = clamp(nearest_int(iscale * x[i])) as f32;
            sumlx += w[i] * x[i] * lf;
            suml2 += w[i] * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..N {
                l_out[i] = (nmax + clamp(nearest_int(iscale * x[i]))) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

#[cfg(test)] // the encoders run `lanes::make_q3_lanes`
/// ggml's `make_q3_quants` with `do_rmse`: symmetric quants in `-nmax..nmax`
/// from iscale `-nmax / max`, then up to 5 rounds of coordinate descent on
/// the x^2-weighted least-squares fit; returns the scale and leaves `L + nmax`.
pub(crate) fn make_q3_quants<const N: usize>(nmax: i32, x: &[f32; N], l_out: &mut [u8; N]) -> f32 {
    let (max, amax) = signed_amax(x);
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

/// Which of ggml's two asymmetric searches to run (they share their shape).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Qkx {
    /// `make_qkx2_quants`: degenerate when `max == min`.
    Two,
    /// `make_qkx3_quants`: degenerate when `max <= min`.
    Three,
}

#[cfg(test)] // the encoders run `lanes::make_qkx_lanes`
/// ggml's `make_qkx2_quants` / `make_qkx3_quants` (with weights): an
/// asymmetric fit `x ~ scale * L + min` (`min <= 0`) over `nstep + 1`
/// candidate inverse scales `(rmin + rdelta*is + nmax) / (max - min)`, each
/// refined by weighted least squares and judged by weighted squared error, or
/// absolute error when `use_mad` (Q2_K). Returns `(scale, -min)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx_quants<const N: usize>(
    kind: Qkx,
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
    let degenerate = match kind {
        Qkx::Two => max == min,
        Qkx::Three => max <= min,
    };
    if degenerate {
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

/// ggml's `make_qp_quants`: non-negative quants `0..=nmax` of the (scale or
/// min) values `x` against one positive scale, chosen among 9 candidates by
/// `quant_weights`-weighted squared error and refined by up to 5 rounds of
/// coordinate descent. Quants are C `uint8_t`: negative ints wrap.
pub(crate) fn make_qp_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    l_out: &mut [u8; N],
    quant_weights: &[f32; N],
) -> f32 {
    let mut max = 0.0f32;
    for &v in x {
        // C: MAX(max, x) = max > x ? max : x.
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for i in 0..N {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..N {
        let diff = x[i] - scale * l_out[i] as f32;
        best_mse += quant_weights[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..N {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += quant_weights[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..N {
        let l = nearest_int(iscale * x[i]).min(nmax);
        l_out[i] = l as u8;
        // The sums take the int, not its u8 narrowing.
        let (w, lf) = (quant_weights[i], l as f32);
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..N {
            let w = quant_weights[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l_out[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
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
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}
