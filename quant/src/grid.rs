//! One block's grid: what error-feedback rounding (GPTQ) needs to put one
//! value at a time onto the grid a ggml encoder chose for the block.
//!
//! Every legacy and K-quant type decodes a value as a monotone function of
//! one small integer code (its scales fixed by the block's header): Q4_0
//! `d * (q - 8)`, Q4_K `d * sc * q - dmin * m`, Q3_K `d * sc * (q - 4)`, ...
//! [`block_grid`] lists, for each position of an encoded block, the value
//! every code decodes to (computed by the type's own decoder, so bit-exact
//! with llama.cpp's), [`nearest_code`] finds the nearest on that list, and
//! [`set_code`] writes a code into the block's bytes, the header untouched.
//! [`quantize_block`] encodes one block of a row as [`crate::quantize_rows`]
//! would inside the whole row.
//!
//! What must stay true: `set_code` followed by [`crate::dequantize_row`]
//! gives exactly the value `block_grid` lists for that code and position.

use crate::legacy;
use crate::GgmlType;

/// Codes per value of `ty`, or `None` where values are not one code on a
/// per-block grid (float types; the IQ4 types are not handled yet).
pub fn levels(ty: GgmlType) -> Option<usize> {
    Some(match ty {
        // -127..=127, as ggml's encoder writes them.
        GgmlType::Q8_0 => 255,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4K => 16,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5K => 32,
        GgmlType::Q2K => 4,
        GgmlType::Q3K => 8,
        GgmlType::Q6K => 64,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::IQ4NL | GgmlType::IQ4XS => {
            return None
        }
    })
}

#[inline]
fn nibble(b: &mut u8, high: bool, v: u8) {
    if high {
        *b = (*b & 0x0F) | (v << 4);
    } else {
        *b = (*b & 0xF0) | (v & 0x0F);
    }
}

#[inline]
fn bit(b: &mut u8, at: u32, on: bool) {
    if on {
        *b |= 1 << at;
    } else {
        *b &= !(1 << at);
    }
}

/// Write `code` (`< levels(ty)`) as the code of position `j` of one encoded
/// block of `ty`; every other byte stays.
///
/// # Panics
/// If `ty` has no [`levels`], `block` is not one block, `j` is not a
/// position or `code` not a code.
pub fn set_code(ty: GgmlType, block: &mut [u8], j: usize, code: usize) {
    let l = levels(ty).expect("a type with codes");
    assert_eq!(block.len(), ty.type_size(), "one {ty} block");
    assert!(
        j < ty.block_size() && code < l,
        "{ty}: position {j}, code {code}"
    );
    let c = code as u8;
    match ty {
        GgmlType::Q8_0 => block[2 + j] = (code as i32 - 127) as i8 as u8,
        GgmlType::Q4_0 => nibble(&mut block[2 + j % 16], j >= 16, c),
        GgmlType::Q4_1 => nibble(&mut block[4 + j % 16], j >= 16, c),
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (qh, qs) = if ty == GgmlType::Q5_0 { (2, 6) } else { (4, 8) };
            nibble(&mut block[qs + j % 16], j >= 16, c);
            bit(&mut block[qh + j / 8], (j % 8) as u32, c & 0x10 != 0);
        }
        GgmlType::Q2K | GgmlType::Q3K => {
            // Value 128h + 32s + l: bit pair s of qs byte 32h + l.
            let (h, s, l) = (j / 128, (j % 128) / 32, j % 32);
            let qs = if ty == GgmlType::Q2K { 16 } else { 32 };
            let b = &mut block[qs + 32 * h + l];
            *b = (*b & !(3 << (2 * s))) | ((c & 3) << (2 * s));
            if ty == GgmlType::Q3K {
                // High bit set: q - 0, clear: q - 4 (code = q + 4).
                bit(&mut block[l], (4 * h + s) as u32, c & 4 != 0);
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            // Value 64c + 32p + l: nibble p of qs byte 32c + l; Q5_K's fifth
            // bit is bit 2c + p of qh[l].
            let (cc, p, l) = (j / 64, (j % 64) / 32, j % 32);
            let qs = if ty == GgmlType::Q4K { 16 } else { 48 };
            nibble(&mut block[qs + 32 * cc + l], p == 1, c);
            if ty == GgmlType::Q5K {
                bit(&mut block[16 + l], (2 * cc + p) as u32, c & 0x10 != 0);
            }
        }
        GgmlType::Q6K => {
            // Value 128h + 32q + l: nibble q/2 of ql[64h + 32(q%2) + l], bit
            // pair q of qh[32h + l].
            let (h, q, l) = (j / 128, (j % 128) / 32, j % 32);
            nibble(&mut block[64 * h + 32 * (q % 2) + l], q >= 2, c & 0x0F);
            let b = &mut block[128 + 32 * h + l];
            *b = (*b & !(3 << (2 * q))) | ((c >> 4) << (2 * q));
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::IQ4NL | GgmlType::IQ4XS => {
            unreachable!("no levels")
        }
    }
}

/// The grid of one encoded block of `ty`: `out[k * n + j]` is the value
/// position `j` decodes to with code `k` (`n = ty.block_size()`, `out` is
/// `levels(ty) * n` long). Monotone in `k` for each `j` (increasing or
/// decreasing with the sign of the position's scale). `scratch` is one block.
///
/// # Panics
/// As [`set_code`], or if `out` has the wrong length.
pub fn block_grid(ty: GgmlType, block: &[u8], scratch: &mut [u8], out: &mut [f32]) {
    let l = levels(ty).expect("a type with codes");
    let n = ty.block_size();
    assert_eq!(out.len(), l * n, "{ty}: grid of {l} codes x {n}");
    scratch.copy_from_slice(block);
    for (k, o) in out.chunks_exact_mut(n).enumerate() {
        for j in 0..n {
            set_code(ty, scratch, j, k);
        }
        crate::dequantize_row(ty, scratch, o);
    }
}

/// The code of position `j` nearest to `x` on `grid` (from [`block_grid`]
/// of a block of `n` values with `levels` codes); ties to the lower code.
pub fn nearest_code(grid: &[f32], n: usize, levels: usize, j: usize, x: f32) -> usize {
    let v = |k: usize| grid[k * n + j];
    let up = v(levels - 1) >= v(0);
    // First code whose value is at or past x in the grid's direction.
    let (mut lo, mut hi) = (0, levels);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let past = if up { v(mid) >= x } else { v(mid) <= x };
        if past {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let k = lo.min(levels - 1);
    if k > 0 && (x - v(k - 1)).abs() <= (x - v(k)).abs() {
        k - 1
    } else {
        k
    }
}

/// Encode one block `x` (`ty.block_size()` values) into `dst` (one block) as
/// [`crate::quantize_rows`] encodes it inside a row, with the block's
/// importance weights `imatrix` (one per value) and, for the legacy 32-value
/// types, whose importance search weighs values by the mean square of the
/// whole row, that mean square `row_sigma2` (see [`row_sigma2`]; unused
/// otherwise).
///
/// # Panics
/// If `ty` cannot be encoded or the lengths are not one block.
pub fn quantize_block(
    ty: GgmlType,
    x: &[f32],
    dst: &mut [u8],
    imatrix: Option<&[f32]>,
    row_sigma2: f32,
) {
    assert_eq!(x.len(), ty.block_size(), "one {ty} block");
    let qw = imatrix.filter(|_| ty.uses_imatrix());
    match (ty, qw) {
        (GgmlType::Q4_0, Some(w)) => legacy::encode_q4_0_imatrix_s2(x, dst, w, row_sigma2),
        (GgmlType::Q4_1, Some(w)) => legacy::encode_q4_1_imatrix_s2(x, dst, w, row_sigma2),
        (GgmlType::Q5_0, Some(w)) => legacy::encode_q5_0_imatrix_s2(x, dst, w, row_sigma2),
        (GgmlType::Q5_1, Some(w)) => legacy::encode_q5_1_imatrix_s2(x, dst, w, row_sigma2),
        _ => crate::quantize_rows(ty, x, dst, x.len(), qw),
    }
}

/// The mean square of a row, accumulated as ggml's legacy importance
/// encoders do (their `sigma2`).
pub fn row_sigma2(row: &[f32]) -> f32 {
    legacy::row_sigma2(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPES: [GgmlType; 10] = [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    fn rnd(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.45
    }

    #[test]
    fn set_code_lands_where_the_decoder_reads_it() {
        let mut seed = 5u64;
        for ty in TYPES {
            let n = ty.block_size();
            let l = levels(ty).unwrap();
            let x: Vec<f32> = (0..n).map(|_| rnd(&mut seed)).collect();
            let mut b = vec![0u8; ty.type_size()];
            crate::quantize_row(ty, &x, &mut b);
            let mut grid = vec![0f32; l * n];
            let mut scratch = vec![0u8; b.len()];
            block_grid(ty, &b, &mut scratch, &mut grid);
            // The encoder's own codes are on the grid.
            let mut dec = vec![0f32; n];
            crate::dequantize_row(ty, &b, &mut dec);
            for (j, &v) in dec.iter().enumerate() {
                let k = nearest_code(&grid, n, l, j, v);
                assert_eq!(grid[k * n + j], v, "{ty} position {j}");
            }
            // Random codes at every position decode to their grid values.
            for _ in 0..4 {
                let codes: Vec<usize> = (0..n)
                    .map(|_| ((rnd(&mut seed) + 0.45) * l as f32) as usize % l)
                    .collect();
                for (j, &k) in codes.iter().enumerate() {
                    set_code(ty, &mut b, j, k);
                }
                crate::dequantize_row(ty, &b, &mut dec);
                for (j, &k) in codes.iter().enumerate() {
                    assert_eq!(dec[j], grid[k * n + j], "{ty} position {j} code {k}");
                }
            }
            // Monotone per position; the nearest code is nearest.
            for j in 0..n {
                let vs: Vec<f32> = (0..l).map(|k| grid[k * n + j]).collect();
                let up = vs[l - 1] >= vs[0];
                assert!(vs
                    .windows(2)
                    .all(|w| if up { w[1] >= w[0] } else { w[1] <= w[0] }));
                let x = rnd(&mut seed);
                let k = nearest_code(&grid, n, l, j, x);
                let best = vs
                    .iter()
                    .map(|v| (x - v).abs())
                    .fold(f32::INFINITY, f32::min);
                assert_eq!((x - vs[k]).abs(), best, "{ty} position {j}");
            }
        }
    }

    #[test]
    fn a_block_alone_encodes_as_inside_its_row() {
        let mut seed = 11u64;
        for ty in TYPES {
            let n = ty.block_size();
            let row: Vec<f32> = (0..4 * n).map(|_| rnd(&mut seed)).collect();
            let qw: Vec<f32> = (0..4 * n).map(|_| rnd(&mut seed) + 0.5).collect();
            for imatrix in [None, Some(&qw[..])] {
                let tb = ty.type_size();
                let mut whole = vec![0u8; 4 * tb];
                crate::quantize_rows(ty, &row, &mut whole, row.len(), imatrix);
                let s2 = row_sigma2(&row);
                for b in 0..4 {
                    let mut one = vec![0u8; tb];
                    let w = imatrix.map(|w| &w[b * n..(b + 1) * n]);
                    quantize_block(ty, &row[b * n..(b + 1) * n], &mut one, w, s2);
                    assert_eq!(one, whole[b * tb..(b + 1) * tb], "{ty} block {b}");
                }
            }
        }
    }
}
