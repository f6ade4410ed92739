//! GPTQ onto GGUF block types (legacy Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 and the
//! K-quants Q2_K..Q6_K): the error feedback of [`crate::gptq`] with ggml's
//! own block encoders choosing every block's scales.
//!
//! Columns are rounded left to right (no act-order: a block's scales must be
//! chosen before any of its columns is rounded). When a row reaches the first
//! column of a ggml block (32 values, or a K-quant's super-block of 256), the
//! block's current values (the original weights plus the error fed forward
//! from the columns already rounded) are encoded with ggml's encoder
//! ([`quant::grid::quantize_block`], with the tensor's importance weights
//! when there is an imatrix; the legacy types' `sigma2` from the original
//! row), which fixes the block's header (scales, mins, sub-block scales).
//! Each column of the block is then rounded to the nearest value that
//! header can decode at its position ([`quant::grid::block_grid`]), its code
//! written into the block, and its error fed forward through the Cholesky
//! factor as usual. The lazy-update block is a multiple of the ggml block,
//! so a block's columns are up to date when its first one is reached.
//!
//! The encoded rows are the output: llama.cpp decodes them to exactly the
//! values the rounding fed back (the grid is the type's decoder's), and no
//! re-encoding happens (ggml's encoder would choose other scales for the
//! rounded values).

use std::collections::BTreeMap;

use quant::grid;
use quant::GgmlType;

use crate::gptq::{RowRound, Rows, Scheme};

/// Whether GPTQ can round onto `ty` (the types [`grid::levels`] covers).
pub fn supports(ty: GgmlType) -> bool {
    grid::levels(ty).is_some() && ty.can_encode()
}

/// The GGUF rounder of one tensor: type, columns, importance weights.
pub struct GgufRows<'a> {
    ty: GgmlType,
    cols: usize,
    imatrix: Option<&'a [f32]>,
}

impl<'a> GgufRows<'a> {
    /// # Panics
    /// If GPTQ cannot round onto `ty` ([`supports`]), `cols` is not a whole
    /// number of blocks or `imatrix` is not `cols` long.
    pub fn new(ty: GgmlType, cols: usize, imatrix: Option<&'a [f32]>) -> GgufRows<'a> {
        assert!(supports(ty), "GPTQ onto {ty}");
        assert!(ty.row_bytes(cols).is_some(), "{cols} columns of {ty}");
        if let Some(w) = imatrix {
            assert_eq!(w.len(), cols, "importance of {cols} columns");
        }
        GgufRows { ty, cols, imatrix }
    }
}

struct GgufRow<'a> {
    ty: GgmlType,
    /// Values per block, codes per value, bytes per block.
    n: usize,
    levels: usize,
    tb: usize,
    imatrix: Option<&'a [f32]>,
    sigma2: f32,
    bytes: Vec<u8>,
    /// The current block's grid (`levels x n`) and index.
    grid: Vec<f32>,
    block: usize,
    scratch: Vec<u8>,
    x: Vec<f32>,
}

impl Rows for GgufRows<'_> {
    fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols).expect("checked in new")
    }

    fn lazy_block(&self, default: usize) -> usize {
        let n = self.ty.block_size();
        default.div_ceil(n).max(1) * n
    }

    fn row<'b>(&'b self, _r: usize, w: &[f32]) -> Box<dyn RowRound + 'b> {
        let (n, tb) = (self.ty.block_size(), self.ty.type_size());
        let levels = grid::levels(self.ty).expect("checked in new");
        Box::new(GgufRow {
            ty: self.ty,
            n,
            levels,
            tb,
            imatrix: self.imatrix,
            sigma2: grid::row_sigma2(w),
            bytes: vec![0u8; self.row_bytes()],
            grid: vec![0f32; levels * n],
            block: usize::MAX,
            scratch: vec![0u8; tb],
            x: vec![0f32; n],
        })
    }
}

impl RowRound for GgufRow<'_> {
    fn round(&mut self, i: usize, c: usize, wp: &[f64]) -> f32 {
        debug_assert_eq!(i, c, "GGUF rounding runs without act-order");
        let (b, j) = (c / self.n, c % self.n);
        let enc = b * self.tb..(b + 1) * self.tb;
        if b != self.block {
            // The block's first column: its current values choose the header.
            let first = i - j;
            for (k, x) in self.x.iter_mut().enumerate() {
                *x = wp[first + k] as f32;
            }
            let qw = self.imatrix.map(|w| &w[b * self.n..(b + 1) * self.n]);
            grid::quantize_block(
                self.ty,
                &self.x,
                &mut self.bytes[enc.clone()],
                qw,
                self.sigma2,
            );
            grid::block_grid(
                self.ty,
                &self.bytes[enc.clone()],
                &mut self.scratch,
                &mut self.grid,
            );
            self.block = b;
        }
        let k = grid::nearest_code(&self.grid, self.n, self.levels, j, wp[i] as f32);
        grid::set_code(self.ty, &mut self.bytes[enc], j, k);
        self.grid[k * self.n + j]
    }

    fn finish(&mut self, out: &mut [u8]) {
        out.copy_from_slice(&self.bytes);
    }
}

/// A GPTQ [`Scheme`] onto GGUF types: each wanted weight (GGUF name) with
/// its type and, from an imatrix, its importance vector.
pub struct GgufScheme<'a> {
    pub types: BTreeMap<String, GgmlType>,
    pub importance: Option<&'a BTreeMap<String, Vec<f32>>>,
}

impl Scheme for GgufScheme<'_> {
    fn wants(&self, name: &str) -> bool {
        self.types.contains_key(name)
    }

    fn rows<'b>(&'b self, name: &str, _w: &[f32], _rows: usize, cols: usize) -> Box<dyn Rows + 'b> {
        let qw = self
            .importance
            .and_then(|m| m.get(name))
            .map(|v| v.as_slice())
            .filter(|v| v.len() == cols);
        Box::new(GgufRows::new(self.types[name], cols, qw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gptq::{Factor, Options};

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// Inputs `t x n` from 4 latent signals plus noise (strongly correlated
    /// columns, where feeding errors forward cancels them), and the Hessian.
    fn layer(n: usize, t: usize, seed: &mut u64) -> (Vec<f64>, Vec<f64>) {
        let mut x = vec![0f64; t * n];
        for r in 0..t {
            let z: Vec<f64> = (0..4).map(|_| lcg(seed)).collect();
            for j in 0..n {
                let a = (j * 7 % 4, (j * 3 + 1) % 4);
                x[r * n + j] = z[a.0] + 0.5 * z[a.1] + 0.05 * lcg(seed);
            }
        }
        let mut h = vec![0f64; n * n];
        for r in x.chunks_exact(n) {
            for i in 0..n {
                for j in 0..n {
                    h[i * n + j] += 2.0 * r[i] * r[j] / t as f64;
                }
            }
        }
        (x, h)
    }

    /// `||W X^T - Q X^T||²`.
    fn output_error(w: &[f32], q: &[f32], x: &[f64], n: usize) -> f64 {
        let mut e = 0f64;
        for (wr, qr) in w.chunks_exact(n).zip(q.chunks_exact(n)) {
            for xr in x.chunks_exact(n) {
                let d: f64 = (0..n)
                    .map(|j| (f64::from(wr[j]) - f64::from(qr[j])) * xr[j])
                    .sum();
                e += d * d;
            }
        }
        e
    }

    fn gptq(
        ty: GgmlType,
        w: &[f32],
        h: &[f64],
        n: usize,
        qw: Option<&[f32]>,
    ) -> (Vec<f32>, Vec<u8>) {
        let opts = Options {
            actorder: false,
            ..Options::default()
        };
        let rows = GgufRows::new(ty, n, qw);
        let mut q = w.to_vec();
        let mut bytes = vec![0u8; w.len() / n * rows.row_bytes()];
        let out = Factor::new(h, n, &opts).quantize_rows(&mut q, &rows, &mut bytes, &opts);
        assert!(!out.fallback);
        (q, bytes)
    }

    #[test]
    fn gptq_beats_round_to_nearest_on_a_legacy_and_a_k_quant_type() {
        let n = 512;
        let mut seed = 42u64;
        let (x, h) = layer(n, 600, &mut seed);
        let rows = 6;
        let w: Vec<f32> = (0..rows * n)
            .map(|_| (0.05 * lcg(&mut seed)) as f32)
            .collect();
        let qw: Vec<f32> = (0..n).map(|j| h[j * n + j] as f32).collect();
        for ty in [GgmlType::Q4_0, GgmlType::Q4K, GgmlType::Q8_0, GgmlType::Q3K] {
            for imatrix in [None, Some(&qw[..])] {
                let (q, bytes) = gptq(ty, &w, &h, n, imatrix);
                // The stored blocks decode to exactly the values fed back.
                let mut dec = vec![0f32; w.len()];
                let rb = ty.row_bytes(n).unwrap();
                for (d, b) in dec.chunks_exact_mut(n).zip(bytes.chunks_exact(rb)) {
                    quant::dequantize_row(ty, b, d);
                }
                assert_eq!(dec, q, "{ty}");
                // Round to nearest: what plain conversion writes.
                let mut rtn_bytes = vec![0u8; bytes.len()];
                quant::quantize_rows(ty, &w, &mut rtn_bytes, n, imatrix);
                let mut rtn = vec![0f32; w.len()];
                for (d, b) in rtn.chunks_exact_mut(n).zip(rtn_bytes.chunks_exact(rb)) {
                    quant::dequantize_row(ty, b, d);
                }
                let (eg, er) = (output_error(&w, &q, &x, n), output_error(&w, &rtn, &x, n));
                assert!(
                    eg < 0.5 * er,
                    "{ty} imatrix {}: GPTQ {eg} vs round-to-nearest {er}",
                    imatrix.is_some()
                );
            }
        }
    }

    #[test]
    fn gguf_rounding_does_not_depend_on_the_thread_count() {
        let n = 256;
        let mut seed = 3u64;
        let (_, h) = layer(n, 300, &mut seed);
        let w: Vec<f32> = (0..24 * n).map(|_| lcg(&mut seed) as f32).collect();
        let go = |threads, ty| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| gptq(ty, &w, &h, n, None))
        };
        for ty in [GgmlType::Q5_1, GgmlType::Q6K] {
            assert_eq!(go(1, ty), go(3, ty), "{ty}");
        }
    }
}
