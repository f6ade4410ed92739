//! Scalar float formats: f32 <-> f16 and f32 <-> bf16, per value and per row.
//!
//! What must stay true:
//! - `f32_to_f16` is ggml's `ggml_compute_fp32_to_fp16` (the branch-free
//!   FP16-library algorithm in ggml `src/ggml-impl.h`): IEEE round-to-nearest-even
//!   for every finite value and infinity, subnormal halves produced exactly, and
//!   every NaN written as the canonical quiet NaN `sign | 0x7E00`. For non-NaN
//!   input it agrees with `half::f16::from_f32` and numpy's `astype(float16)`.
//! - `f16_to_f32` is exact (every f16 is an f32); NaNs keep their payload and
//!   come out quiet, as on x86-64 hardware and in ggml.
//! - `f32_to_bf16` is ggml's `ggml_compute_fp32_to_bf16` (the `_ref` row path;
//!   gguf-py's `quants.BF16` is the same): NaN becomes `(bits >> 16) | 0x40`
//!   (kept, forced quiet); everything else rounds the upper 16 bits to nearest
//!   even. Subnormals are NOT flushed (only ggml's AVX512-BF16 fast path flushes
//!   them; the reference and gguf-py do not). Values that round past the largest
//!   finite bf16 become infinity.
//! - `bf16_to_f32` is a 16-bit shift: exact, NaN payloads untouched.
//! - The code is branch-free integer and float arithmetic so row loops vectorize,
//!   and it relies on IEEE semantics without flush-to-zero (Rust's default).

/// 2^112: pushes every f16-overflowing magnitude to infinity.
const SCALE_TO_INF: f32 = f32::from_bits(0x7780_0000);
/// 2^-110: brings the value back so the f16 exponent can be added by rounding.
const SCALE_TO_ZERO: f32 = f32::from_bits(0x0880_0000);

/// f32 -> IEEE half bits, round to nearest even, NaN -> `sign | 0x7E00`.
#[inline]
pub(crate) fn f32_to_f16(f: f32) -> u16 {
    // Scale so that out-of-range magnitudes become infinity; in range the two
    // multiplications are exact (powers of two) unless the result is subnormal
    // in f32, where the later addition dominates anyway.
    let mut base = (f.abs() * SCALE_TO_INF) * SCALE_TO_ZERO;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    // Exponent of |f| in the top byte of shl1_w; the bias is clamped to the
    // smallest normal half so that subnormal halves round at the right place.
    let bias = (shl1_w & 0xFF00_0000).max(0x7100_0000);
    // Adding 2^(e+13-ish) makes the float adder round away the mantissa bits a
    // half cannot hold, with IEEE round-to-nearest-even.
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    let is_nan = shl1_w > 0xFF00_0000;
    ((sign >> 16) | if is_nan { 0x7E00 } else { nonsign }) as u16
}

/// IEEE half bits -> f32, exact.
#[inline]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let w = (h as u32) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);
    // Normal (and inf/NaN) halves: move exponent and mantissa into f32 position
    // with an exponent 2^112 too large, then scale down exactly.
    let exp_offset = 0xE0u32 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 2^-112
    let normalized = f32::from_bits((two_w >> 4) + exp_offset) * exp_scale;
    // Subnormal halves: place the mantissa under a 0.5 exponent and subtract 0.5.
    let magic_mask = 126u32 << 23;
    let denormalized = f32::from_bits((two_w >> 17) | magic_mask) - 0.5;
    let denormalized_cutoff = 1u32 << 27;
    let magnitude = if two_w < denormalized_cutoff {
        denormalized.to_bits()
    } else {
        normalized.to_bits()
    };
    // NaN: payload kept, quiet bit set, written explicitly so the bits do not
    // depend on how the multiplication above propagates NaNs.
    let is_nan = (h & 0x7C00) == 0x7C00 && (h & 0x03FF) != 0;
    let nan = 0x7FC0_0000 | ((h as u32 & 0x03FF) << 13);
    f32::from_bits(sign | if is_nan { nan } else { magnitude })
}

/// f32 -> bfloat16 bits as ggml's reference: NaN kept (quiet), otherwise
/// round to nearest even; no subnormal flush.
#[inline]
pub(crate) fn f32_to_bf16(f: f32) -> u16 {
    let u = f.to_bits();
    if (u & 0x7FFF_FFFF) > 0x7F80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    // Cannot overflow u32: the largest non-NaN pattern is 0xFF80_0000.
    ((u + (0x7FFF + ((u >> 16) & 1))) >> 16) as u16
}

/// bfloat16 bits -> f32, exact.
#[inline]
pub(crate) fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

pub(crate) fn encode_f32(src: &[f32], dst: &mut [u8]) {
    for (o, &v) in dst.chunks_exact_mut(4).zip(src) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

pub(crate) fn decode_f32(src: &[u8], dst: &mut [f32]) {
    for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

pub(crate) fn encode_f16(src: &[f32], dst: &mut [u8]) {
    for (o, &v) in dst.chunks_exact_mut(2).zip(src) {
        o.copy_from_slice(&f32_to_f16(v).to_le_bytes());
    }
}

pub(crate) fn decode_f16(src: &[u8], dst: &mut [f32]) {
    for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

pub(crate) fn encode_bf16(src: &[f32], dst: &mut [u8]) {
    for (o, &v) in dst.chunks_exact_mut(2).zip(src) {
        o.copy_from_slice(&f32_to_bf16(v).to_le_bytes());
    }
}

pub(crate) fn decode_bf16(src: &[u8], dst: &mut [f32]) {
    for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *o = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// Little-endian f16 at `b[0..2]`, as f32.
#[inline]
pub(crate) fn read_f16(b: &[u8]) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

/// Writes `v` rounded to f16 at `b[0..2]`, little-endian; returns the stored
/// value read back as f32 (what a decoder will see).
#[inline]
pub(crate) fn write_f16(b: &mut [u8], v: f32) -> f32 {
    let h = f32_to_f16(v);
    b[..2].copy_from_slice(&h.to_le_bytes());
    f16_to_f32(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn f16_decode_is_exact_for_every_half() {
        for h in 0..=u16::MAX {
            let ours = f16_to_f32(h);
            let theirs = f16::from_bits(h).to_f32();
            if theirs.is_nan() {
                assert!(ours.is_nan(), "{h:#06x}");
                assert_eq!(ours.to_bits() >> 31, (h >> 15) as u32, "NaN sign {h:#06x}");
                // Payload kept, forced quiet.
                assert_eq!(
                    ours.to_bits() & 0x007F_FFFF,
                    ((h as u32 & 0x3FF) << 13) | 0x0040_0000
                );
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn f16_encode_matches_ieee_round_to_nearest_even() {
        // Every f16 value and the midpoints around it, plus a stride through
        // all f32 bit patterns.
        let check = |x: f32| {
            let ours = f32_to_f16(x);
            if x.is_nan() {
                assert_eq!(
                    ours,
                    ((x.to_bits() >> 16) as u16 & 0x8000) | 0x7E00,
                    "{x:?}"
                );
            } else {
                assert_eq!(
                    ours,
                    f16::from_f32(x).to_bits(),
                    "{x:e} ({:#010x})",
                    x.to_bits()
                );
            }
        };
        for h in 0..=u16::MAX {
            let v = f16_to_f32(h);
            check(v);
            check(f32::from_bits(v.to_bits().wrapping_add(1)));
            check(f32::from_bits(v.to_bits().wrapping_sub(1)));
            check(f32::from_bits(v.to_bits().wrapping_add(1 << 12))); // a midpoint for normals
        }
        let mut bits = 0u32;
        loop {
            check(f32::from_bits(bits));
            match bits.checked_add(65_521) {
                Some(b) => bits = b,
                None => break,
            }
        }
        // Hand-worked cases.
        assert_eq!(f32_to_f16(1.0), 0x3C00);
        assert_eq!(f32_to_f16(-2.0), 0xC000);
        assert_eq!(f32_to_f16(65504.0), 0x7BFF); // largest finite
        assert_eq!(f32_to_f16(65520.0), 0x7C00); // halfway to 2^16: ties to even = inf
        assert_eq!(f32_to_f16(65519.99), 0x7BFF);
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3C00); // tie, even is 1.0
        assert_eq!(f32_to_f16(1.0 + 3.0 / 2048.0), 0x3C02); // tie, even is up
        assert_eq!(f32_to_f16(2f32.powi(-24)), 0x0001); // smallest subnormal
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0x0000); // tie to even zero
        assert_eq!(f32_to_f16(-0.0), 0x8000);
        assert_eq!(f32_to_f16(f32::NAN), 0x7E00);
        assert_eq!(f32_to_f16(-f32::NAN), 0xFE00);
        assert_eq!(f32_to_f16(f32::from_bits(0x7F80_0001)), 0x7E00); // signalling, payload dropped
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan_quiet() {
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
        // 1.0078125 + half ulp: ties to even goes up to 0x3F82.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_7FFF)), 0x3F80);
        // Subnormals are rounded, not flushed.
        assert_eq!(f32_to_bf16(f32::from_bits(0x0000_8001)), 0x0001);
        assert_eq!(f32_to_bf16(f32::from_bits(0x0001_0000)), 0x0001);
        assert_eq!(f32_to_bf16(f32::from_bits(0x8000_7FFF)), 0x8000);
        // Largest finite f32 rounds up to infinity.
        assert_eq!(f32_to_bf16(f32::MAX), 0x7F80);
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7F80);
        assert_eq!(f32_to_bf16(f32::NEG_INFINITY), 0xFF80);
        assert_eq!(f32_to_bf16(f32::NAN), 0x7FC0);
        // A signalling NaN whose payload is only in the low 16 bits stays NaN.
        assert_eq!(f32_to_bf16(f32::from_bits(0x7F80_0001)), 0x7FC0);
        assert_eq!(f32_to_bf16(f32::from_bits(0xFF81_2345)), 0xFFC1);
        // Every bf16 value survives the round trip.
        for b in 0..=u16::MAX {
            let v = bf16_to_f32(b);
            if v.is_nan() {
                assert_eq!(f32_to_bf16(v), b | 0x40);
            } else {
                assert_eq!(f32_to_bf16(v), b, "{b:#06x}");
            }
        }
    }
}
