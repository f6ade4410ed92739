//! GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization
//! for Generative Pre-trained Transformers") on CPU: per linear weight, the
//! Hessian of the layer's reconstruction loss from its calibration inputs,
//! then column-by-column rounding with the rounding error fed back into the
//! columns not yet rounded, as llm-compressor's `GPTQModifier` (0.14) runs it:
//!
//! - `H = 2/n * sum x x^T` over the layer's input rows ([`Hessians`], an
//!   [`Observer`] of the forward pass); accumulated per window in f32 by the
//!   matmul and summed over windows in f64, so a long calibration text does
//!   not lose its tail, and factorized in f64 (the damped Hessian of a
//!   nearly dead column is close to singular; f64 keeps the Cholesky of the
//!   inverse from failing where llm-compressor's f32 one falls back);
//! - dead columns (zero diagonal) get diagonal 1 and zero weights;
//!   optional act-order permutes columns by descending diagonal (ties by
//!   index) and each column keeps the quantization group of its original
//!   position (`actorder: weight`, which needs no `g_idx`);
//! - damping `percdamp * mean(diag)` added to the diagonal; the upper
//!   Cholesky factor `U` of `H^-1` (`U^T U = H^-1`), computed as
//!   `J chol(J H J)^-1 J` with `J` the reversal (the same factor, one
//!   Cholesky and one triangular inverse); a Hessian that is not positive
//!   definite falls back to round-to-nearest (`U = I`), as llm-compressor;
//! - columns in blocks of 128: inside a block each rounded column's error
//!   `(w - q) / U[i][i]` updates the block's later columns at once, the
//!   block's errors update the columns after the block in one batch
//!   (the lazy batch update of the paper's section 3.4).
//!
//! The rounding itself is the caller's ([`Rounder`]): compressed-tensors'
//! integer grid with scales from the original weights, or a GGUF block
//! encoder's. Rows are independent given `U`, so they run in parallel and
//! every row's arithmetic is sequential: results do not depend on the thread
//! count.
//!
//! [`run`] drives a whole model sequentially, block by block, as
//! llm-compressor's sequential pipeline does: the Hessians of block `i` are
//! collected from the hidden states the already-quantized blocks `0..i`
//! produce, block `i`'s linears are rounded, and block `i` is run again with
//! its rounded weights to give block `i + 1` its inputs. The model streams
//! (`crate::stream`): memory is the hidden states of all windows, one
//! block's weights and rounded values, and one block's Hessians (one
//! `[in, in]` matrix per distinct input: q/k/v share one, gate/up another),
//! whatever the number of layers; each rounded weight is handed to the
//! caller's sink as soon as its block is done.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor, TensorId};
use rayon::prelude::*;

use crate::error::{Error, OpContext, Result};
use crate::forward::Observer;
use crate::model::Opened;
use crate::source::Overrides;
use crate::stream::Streamed;

/// Rows GPTQ rounds together (see [`Factor::quantize_rows`]).
const ROW_TILE: usize = 16;

/// GPTQ's knobs, with llm-compressor's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Columns per lazy-update block (128).
    pub block: usize,
    /// Damping as a fraction of the mean Hessian diagonal (0.01).
    pub percdamp: f64,
    /// Round columns in order of descending Hessian diagonal (`actorder`).
    pub actorder: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            block: 128,
            percdamp: 0.01,
            actorder: true,
        }
    }
}

/// Rounds one weight onto the target grid: `round(row, col, w)` is the
/// dequantized value `w` becomes at row `row`, original column `col` (the
/// grid may depend on both: a group's scale).
pub trait Rounder: Sync {
    fn round(&self, row: usize, col: usize, w: f32) -> f32;
}

impl<F: Fn(usize, usize, f32) -> f32 + Sync> Rounder for F {
    fn round(&self, row: usize, col: usize, w: f32) -> f32 {
        self(row, col, w)
    }
}

/// Rounds whole rows, one value at a time in GPTQ's order, with per-row
/// state: a ggml block encoder choosing a block's scales from the block's
/// current (error-updated) values when its first column comes up.
pub trait Rows: Sync {
    /// Bytes of one encoded row that [`RowRound::finish`] writes (0: none).
    fn row_bytes(&self) -> usize {
        0
    }
    /// The lazy-update block to use instead of `default` columns (a
    /// multiple of the rounder's own block, so that a block's columns are
    /// all up to date when its first one is rounded).
    fn lazy_block(&self, default: usize) -> usize {
        default
    }
    /// The rounder of row `r`, whose original values are `w` (original
    /// column order).
    fn row<'a>(&'a self, r: usize, w: &[f32]) -> Box<dyn RowRound + 'a>;
}

/// One row's rounder (see [`Rows`]).
pub trait RowRound {
    /// The rounded value of processing position `i` (original column `c`),
    /// given the row's current values `wp` in processing order: positions
    /// before `i` hold their rounded values, positions from `i` to the end
    /// of the lazy block are up to date, later ones lag by the current lazy
    /// block's errors.
    fn round(&mut self, i: usize, c: usize, wp: &[f64]) -> f32;
    /// Write the encoded row (`Rows::row_bytes` long) once every value of it
    /// is rounded.
    fn finish(&mut self, _out: &mut [u8]) {}
}

/// A [`Rounder`] as [`Rows`]: no state, nothing encoded.
pub struct PerValue<'a>(pub &'a dyn Rounder);

struct PerValueRow<'a> {
    rounder: &'a dyn Rounder,
    r: usize,
}

impl RowRound for PerValueRow<'_> {
    fn round(&mut self, i: usize, c: usize, wp: &[f64]) -> f32 {
        self.rounder.round(self.r, c, wp[i] as f32)
    }
}

impl Rows for PerValue<'_> {
    fn row<'a>(&'a self, r: usize, _w: &[f32]) -> Box<dyn RowRound + 'a> {
        per_value_row(self.0, r)
    }
}

/// Row `r`'s rounder of a stateless [`Rounder`].
pub fn per_value_row(rounder: &dyn Rounder, r: usize) -> Box<dyn RowRound + '_> {
    Box::new(PerValueRow { rounder, r })
}

/// What rounding one weight did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// GPTQ's loss: half the sum over rows and columns of `err²`, where
    /// `err = (w - q) / U[i][i]` (llm-compressor's reported loss).
    pub loss: f64,
    /// The damped Hessian was not positive definite: rounded to nearest.
    pub fallback: bool,
    /// Columns whose Hessian diagonal was zero (never active): zeroed.
    pub dead: usize,
}

/// The factorized Hessian of one input: what every weight reading that
/// input needs, computed once.
#[derive(Debug, Clone)]
pub struct Factor {
    n: usize,
    /// Processing order: `perm[i]` is the original column rounded `i`-th.
    perm: Vec<usize>,
    /// Dead columns, by original index.
    dead: Vec<bool>,
    /// `U` (upper, `n x n` row-major, in processing order), or `None` for
    /// the round-to-nearest fallback.
    u: Option<Vec<f64>>,
}

impl Factor {
    /// Factorize `h` (`n x n`, symmetric, row-major): dead columns,
    /// act-order permutation, damping, `U` with `U^T U = H^-1`.
    pub fn new(h: &[f64], n: usize, opts: &Options) -> Factor {
        Factor::from_hessian(h.to_vec(), n, opts)
    }

    /// [`Factor::new`] taking the Hessian by value, so that it is freed as
    /// soon as its permuted copy is made: the factorization then holds at
    /// most two `n x n` matrices at a time (for a 14336-wide input, 1.6 GB
    /// each in f64).
    pub fn from_hessian(h: Vec<f64>, n: usize, opts: &Options) -> Factor {
        assert_eq!(h.len(), n * n, "Hessian of {n} columns");
        let diag: Vec<f64> = (0..n).map(|i| h[i * n + i]).collect();
        let dead: Vec<bool> = diag.iter().map(|&d| d == 0.0).collect();
        let mut perm: Vec<usize> = (0..n).collect();
        if opts.actorder {
            // Descending diagonal; ties by index, so the order is a function
            // of the Hessian alone (torch's argsort is not stable).
            perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]).then(a.cmp(&b)));
        }
        // Permuted, dead columns' diagonal set to 1, damped; reversed (J H J)
        // for the factorization.
        let mut hp = vec![0f64; n * n];
        let mut mean = 0f64;
        for i in 0..n {
            mean += if dead[perm[i]] { 1.0 } else { diag[perm[i]] };
        }
        let damp = opts.percdamp * mean / n.max(1) as f64;
        hp.par_chunks_mut(n.max(1))
            .enumerate()
            .for_each(|(ri, row)| {
                let i = n - 1 - ri;
                for (rj, v) in row.iter_mut().enumerate() {
                    let j = n - 1 - rj;
                    let (a, b) = (perm[i], perm[j]);
                    *v = if a == b {
                        (if dead[a] { 1.0 } else { h[a * n + a] }) + damp
                    } else {
                        h[a * n + b]
                    };
                }
            });
        drop(h);
        let u = cholesky_lower(&mut hp, n).then(|| {
            // Column c of K^-1 is row c of `kinv_t`.
            let kinv_t = invert_lower_t(&hp, n);
            drop(hp);
            // U = J K^-1 J: U[i][j] = Kinv[n-1-i][n-1-j] = kinv_t[n-1-j][n-1-i].
            let mut u = vec![0f64; n * n];
            u.par_chunks_mut(n.max(1)).enumerate().for_each(|(i, row)| {
                for (j, v) in row.iter_mut().enumerate().skip(i) {
                    *v = kinv_t[(n - 1 - j) * n + (n - 1 - i)];
                }
            });
            u
        });
        Factor { n, perm, dead, u }
    }

    /// Columns.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Whether the damped Hessian was not positive definite.
    pub fn fallback(&self) -> bool {
        self.u.is_none()
    }

    /// Round `w` (`rows x n`, row-major) in place with GPTQ's error feedback:
    /// afterwards every value is one `rounder` produced.
    pub fn quantize(&self, w: &mut [f32], rounder: &dyn Rounder, opts: &Options) -> Outcome {
        self.quantize_rows(w, &PerValue(rounder), &mut [], opts)
    }

    /// Round `w` (`rows x n`, row-major) in place with GPTQ's error
    /// feedback, a row at a time through `rows`' per-row rounders, whose
    /// encoded rows ([`Rows::row_bytes`] each) land in `out`. The lazy
    /// block is `rows.lazy_block(opts.block)` columns.
    pub fn quantize_rows(
        &self,
        w: &mut [f32],
        rows: &dyn Rows,
        out: &mut [u8],
        opts: &Options,
    ) -> Outcome {
        let n = self.n;
        assert_eq!(w.len() % n.max(1), 0, "weights of {n} columns");
        let n_rows = w.len() / n.max(1);
        let block = rows.lazy_block(opts.block.max(1)).max(1);
        let mut none = Vec::new();
        let (out, rb) = match rows.row_bytes() {
            0 => {
                none.resize(n_rows, 0u8);
                (&mut none[..], 1)
            }
            rb => (out, rb),
        };
        assert_eq!(
            out.len(),
            n_rows * rb,
            "{n_rows} encoded rows of {rb} bytes"
        );
        // Rows are rounded in tiles of ROW_TILE: each row of `U` is read
        // once per tile instead of once per row (for a wide layer `U` is
        // far larger than the caches, and streaming it per row made GPTQ
        // memory-bound). Every row's own arithmetic is unchanged and
        // sequential, so the values do not depend on the tiling or the
        // thread count; per-row losses are summed in row order.
        let mut losses = vec![0f64; n_rows];
        w.par_chunks_mut((n * ROW_TILE).max(1))
            .zip(out.par_chunks_mut(rb * ROW_TILE))
            .zip(losses.par_chunks_mut(ROW_TILE))
            .enumerate()
            .for_each(|(t, ((tile, enc), loss))| {
                self.quantize_tile(t * ROW_TILE, tile, enc, loss, rows, block);
            });
        Outcome {
            loss: losses.iter().sum(),
            fallback: self.u.is_none(),
            dead: self.dead.iter().filter(|&&d| d).count(),
        }
    }

    /// Round the rows of `tile` (rows `r0..`, `n` values each) into `enc`
    /// (their encoded rows, when `rows` encodes), their losses into `loss`.
    fn quantize_tile(
        &self,
        r0: usize,
        tile: &mut [f32],
        enc: &mut [u8],
        loss: &mut [f64],
        rows: &dyn Rows,
        block: usize,
    ) {
        let n = self.n;
        let k_rows = loss.len();
        let rb = enc.len() / k_rows.max(1);
        let mut rr: Vec<Box<dyn RowRound + '_>> = tile
            .chunks_exact(n.max(1))
            .enumerate()
            .map(|(k, row)| rows.row(r0 + k, row))
            .collect();
        let mut wp = vec![0f64; k_rows * n];
        for (row, wp) in tile
            .chunks_exact(n.max(1))
            .zip(wp.chunks_exact_mut(n.max(1)))
        {
            for (i, v) in wp.iter_mut().enumerate() {
                let c = self.perm[i];
                *v = if self.dead[c] { 0.0 } else { f64::from(row[c]) };
            }
        }
        match &self.u {
            None => {
                for (k, wp) in wp.chunks_exact_mut(n.max(1)).enumerate() {
                    for i in 0..n {
                        let q = f64::from(rr[k].round(i, self.perm[i], wp));
                        loss[k] += (wp[i] - q) * (wp[i] - q) / 2.0;
                        wp[i] = q;
                    }
                }
            }
            Some(u) => {
                let mut err = vec![0f64; k_rows * block];
                let mut i1 = 0;
                while i1 < n {
                    let i2 = (i1 + block).min(n);
                    for i in i1..i2 {
                        let urow = &u[i * n..(i + 1) * n];
                        for k in 0..k_rows {
                            let wp = &mut wp[k * n..(k + 1) * n];
                            let x = wp[i];
                            let q = f64::from(rr[k].round(i, self.perm[i], wp));
                            let e = (x - q) / urow[i];
                            wp[i] = q;
                            loss[k] += e * e / 2.0;
                            err[k * block + i - i1] = e;
                            for j in i + 1..i2 {
                                wp[j] -= e * urow[j];
                            }
                        }
                    }
                    // The block's errors, applied to the columns after it.
                    for b in 0..i2 - i1 {
                        let urow = &u[(i1 + b) * n..(i1 + b + 1) * n];
                        for k in 0..k_rows {
                            let e = err[k * block + b];
                            let wp = &mut wp[k * n..(k + 1) * n];
                            for j in i2..n {
                                wp[j] -= e * urow[j];
                            }
                        }
                    }
                    i1 = i2;
                }
            }
        }
        for (k, (row, wp)) in tile
            .chunks_exact_mut(n.max(1))
            .zip(wp.chunks_exact(n.max(1)))
            .enumerate()
        {
            if rows.row_bytes() > 0 {
                rr[k].finish(&mut enc[k * rb..(k + 1) * rb]);
            }
            self.store(row, wp);
        }
    }

    /// Write the processed row back in original column order.
    fn store(&self, row: &mut [f32], wp: &[f64]) {
        for (i, &v) in wp.iter().enumerate() {
            row[self.perm[i]] = v as f32;
        }
    }
}

/// In-place lower Cholesky factor of `a` (`n x n`, row-major; only the lower
/// triangle is read and written, the upper is zeroed): false when `a` is
/// not positive definite. Column by column; the entries of a column are
/// independent dot products, computed in parallel, each in a fixed order.
fn cholesky_lower(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let (head, tail) = a.split_at_mut((j + 1) * n);
        let rj = &mut head[j * n..(j + 1) * n];
        let d = rj[j] - dot(&rj[..j], &rj[..j]);
        if d.is_nan() || d <= 0.0 {
            return false;
        }
        let d = d.sqrt();
        rj[j] = d;
        for v in &mut rj[j + 1..] {
            *v = 0.0;
        }
        let rj: &[f64] = rj;
        tail.par_chunks_mut(n).for_each(|ri| {
            ri[j] = (ri[j] - dot(&ri[..j], &rj[..j])) / d;
        });
    }
    true
}

/// The inverse of a lower-triangular `l` (`n x n`, row-major), transposed:
/// row `c` of the result is column `c` of `l^-1` (zero above the diagonal),
/// each computed in parallel by forward substitution into its own row.
fn invert_lower_t(l: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0f64; n * n];
    out.par_chunks_mut(n.max(1)).enumerate().for_each(|(c, x)| {
        // x = column c of L^-1: x[k] = 0 for k < c.
        x[c] = 1.0 / l[c * n + c];
        for i in c + 1..n {
            let s = dot(&l[i * n + c..i * n + i], &x[c..i]);
            x[i] = -s / l[i * n + i];
        }
    });
    out
}

#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Four lanes, summed in a fixed order: fast and deterministic.
    let mut s = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            s[k] += x[k] * y[k];
        }
    }
    let mut t = (s[0] + s[1]) + (s[2] + s[3]);
    for (x, y) in ra.iter().zip(rb) {
        t += x * y;
    }
    t
}

/// One distinct input of a block's linears and its accumulated Hessian.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The weights reading this input (GGUF names), in forward order.
    pub names: Vec<String>,
    /// Input width.
    pub n: usize,
    /// `sum x x^T` over the rows seen (`n x n`, row-major).
    pub sum: Vec<f64>,
    /// Rows seen.
    pub rows: u64,
}

impl Slot {
    /// `H = 2/rows * sum x x^T`.
    pub fn hessian(&self) -> Vec<f64> {
        let s = 2.0 / self.rows.max(1) as f64;
        self.sum.iter().map(|v| v * s).collect()
    }

    /// [`Slot::hessian`], scaled in place (no copy).
    pub fn into_hessian(self) -> Vec<f64> {
        let s = 2.0 / self.rows.max(1) as f64;
        let mut h = self.sum;
        for v in &mut h {
            *v *= s;
        }
        h
    }
}

/// An [`Observer`] accumulating the Hessians of the linear weights `wants`
/// accepts, one per distinct input: weights fed the same tensor one after
/// another (q, k and v; gate and up) share a slot.
pub struct Hessians<'a> {
    wants: &'a dyn Fn(&str) -> bool,
    pub slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    last: Option<(TensorId, usize)>,
}

impl<'a> Hessians<'a> {
    pub fn new(wants: &'a dyn Fn(&str) -> bool) -> Hessians<'a> {
        Hessians {
            wants,
            slots: Vec::new(),
            by_name: HashMap::new(),
            last: None,
        }
    }
}

impl Observer for Hessians<'_> {
    fn linear_input(&mut self, weight: &str, x: &Tensor) -> Result<()> {
        if !(self.wants)(weight) {
            return Ok(());
        }
        if let Some((id, s)) = self.last {
            if id == x.id() {
                if !self.by_name.contains_key(weight) {
                    self.by_name.insert(weight.to_string(), s);
                    self.slots[s].names.push(weight.to_string());
                }
                return Ok(());
            }
        }
        let (rows, n) = x.dims2().op(|| format!("{weight}: input shape"))?;
        let s = match self.by_name.get(weight) {
            Some(&s) => s,
            None => {
                self.slots.push(Slot {
                    names: vec![weight.to_string()],
                    n,
                    sum: vec![0.0; n * n],
                    rows: 0,
                });
                self.by_name
                    .insert(weight.to_string(), self.slots.len() - 1);
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[s];
        if slot.n != n {
            return Err(Error::Input(format!(
                "tensor `{}`: inputs of {n} columns, earlier {}",
                passes::printable(weight),
                slot.n
            )));
        }
        let x = x.to_dtype(DType::F32).op(|| format!("{weight}: input"))?;
        let xtx = x
            .t()
            .and_then(|t| t.contiguous())
            .and_then(|t| t.matmul(&x))
            .and_then(|p| p.flatten_all())
            .and_then(|p| p.to_vec1::<f32>())
            .op(|| format!("{weight}: x^T x"))?;
        if xtx.iter().any(|v| !v.is_finite()) {
            return Err(Error::Input(format!(
                "tensor `{}`: non-finite input activation (NaN or Inf): no Hessian can be collected",
                passes::printable(weight)
            )));
        }
        for (a, b) in slot.sum.iter_mut().zip(xtx) {
            *a += f64::from(b);
        }
        slot.rows += rows as u64;
        self.last = Some((x.id(), s));
        Ok(())
    }
}

/// What a GPTQ run rounds, and how.
pub trait Scheme: Sync {
    /// Whether the linear weight `name` (GGUF name, `[rows, cols]`) is rounded.
    fn wants(&self, name: &str) -> bool;
    /// The rounder of weight `name`, prepared from its original values
    /// (`rows x cols`, GGUF layout): scales from the original weights, or a
    /// block encoder's per-row state.
    fn rows<'a>(&'a self, name: &str, w: &[f32], rows: usize, cols: usize) -> Box<dyn Rows + 'a>;
}

/// One rounded weight.
#[derive(Debug, Clone)]
pub struct Rounded {
    /// GGUF name.
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// The rounded (dequantized) values, `rows x cols`, GGUF layout.
    pub values: Vec<f32>,
    /// The encoded rows, when the rounder encodes ([`Rows::row_bytes`]).
    pub bytes: Vec<u8>,
    pub outcome: Outcome,
}

/// Quantize every linear weight `scheme` wants, block by block with
/// sequential error propagation (see the module documentation), the model
/// streamed from `m` (one block's weights decoded at a time, see
/// `crate::stream`). Each rounded weight goes to `sink` once its block has
/// been run again with the rounded weights, in block order; nothing of a
/// block is kept after that. `progress(i)` after block `i`.
pub fn run(
    m: &Opened,
    windows: &[Vec<u32>],
    scheme: &dyn Scheme,
    opts: &Options,
    sink: &mut dyn FnMut(Rounded) -> Result<()>,
    progress: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<()> {
    let net = Streamed::new(m)?;
    let mut st = net.embed(windows)?;
    let wants = |n: &str| scheme.wants(n);
    for i in 0..net.n_layer() {
        let mut obs = Hessians::new(&wants);
        net.observe_block(i, &st, &mut obs, cancel)?;
        let slots = std::mem::take(&mut obs.slots);
        drop(obs);
        let mut block = Vec::new();
        // Each Hessian is consumed by its factorization (the block's widest,
        // FFN down's, is the largest matrix GPTQ holds).
        for slot in slots {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Formats(formats::Error::Interrupted));
            }
            let (names, n) = (slot.names.clone(), slot.n);
            let f = Factor::from_hessian(slot.into_hessian(), n, opts);
            for name in &names {
                block.push(round_one(m, name, n, &f, scheme, opts)?);
            }
        }
        let over = Overrides {
            base: m,
            values: block
                .iter_mut()
                .map(|r| (r.name.clone(), std::mem::take(&mut r.values)))
                .collect(),
        };
        net.block_from(&over, i, &mut st, &mut crate::forward::NoObserver, cancel)?;
        let mut values = over.values;
        for mut r in block {
            r.values = values.remove(&r.name).unwrap_or_default();
            sink(r)?;
        }
        progress(i + 1);
    }
    Ok(())
}

/// GPTQ-round the weight `name` (`cols == n` columns) with the factor `f`
/// of its input's Hessian.
fn round_one(
    m: &Opened,
    name: &str,
    n: usize,
    f: &Factor,
    scheme: &dyn Scheme,
    opts: &Options,
) -> Result<Rounded> {
    let node = m.need(name)?;
    let (rows, cols) = match node.shape.as_slice() {
        [r, c] => (*r, *c),
        s => {
            return Err(Error::Input(format!(
                "tensor `{}`: shape {s:?} is not a matrix",
                passes::printable(name)
            )))
        }
    };
    if cols != n {
        return Err(Error::Input(format!(
            "tensor `{}`: {cols} columns, input of {n}",
            passes::printable(name)
        )));
    }
    let mut w = m.read_f32(node);
    m.release(node);
    let rounder = scheme.rows(name, &w, rows, cols);
    let mut bytes = vec![0u8; rows * rounder.row_bytes()];
    let outcome = f.quantize_rows(&mut w, rounder.as_ref(), &mut bytes, opts);
    Ok(Rounded {
        name: name.to_string(),
        rows,
        cols,
        values: w,
        bytes,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x^T x` of rows `x` (`t x n`).
    fn gram(x: &[f64], n: usize) -> Vec<f64> {
        let mut h = vec![0f64; n * n];
        for r in x.chunks_exact(n) {
            for i in 0..n {
                for j in 0..n {
                    h[i * n + j] += 2.0 * r[i] * r[j];
                }
            }
        }
        h
    }

    fn rtn(step: f32) -> impl Fn(usize, usize, f32) -> f32 + Sync {
        move |_, _, w| (w / step).round_ties_even() * step
    }

    /// `||W X^T - Q X^T||²` over rows of X.
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

    #[test]
    fn cholesky_of_the_inverse_is_upper_and_exact() {
        // H = [[4, 2], [2, 3]]: H^-1 = [[3, -2], [-2, 4]] / 8.
        let f = Factor::new(
            &[4.0, 2.0, 2.0, 3.0],
            2,
            &Options {
                percdamp: 0.0,
                actorder: false,
                ..Options::default()
            },
        );
        let u = f.u.as_ref().unwrap();
        assert_eq!(u[2], 0.0);
        // U^T U == H^-1.
        let hinv = [3.0 / 8.0, -2.0 / 8.0, -2.0 / 8.0, 4.0 / 8.0];
        for i in 0..2 {
            for j in 0..2 {
                let v: f64 = (0..2).map(|k| u[k * 2 + i] * u[k * 2 + j]).sum();
                assert!((v - hinv[i * 2 + j]).abs() < 1e-15, "{i} {j}: {v}");
            }
        }
        // U[0][0] = sqrt(3/8), U[1][1] = 1/sqrt(3) (= 1/sqrt(H[1][1])).
        assert!((u[0] - (3f64 / 8.0).sqrt()).abs() < 1e-15);
        assert!((u[3] - 1.0 / 3f64.sqrt()).abs() < 1e-15);
    }

    #[test]
    fn exact_two_column_case_feeds_the_error_forward() {
        // Inputs x = (1, 1) always: H = 2 [[1, 1], [1, 1]] + damping.
        // Without feedback, w = (0.3, 0.3) rounds (step 1) to (0, 0): output
        // error (0.6)². GPTQ rounds column 0 to 0, moves its error into
        // column 1 (0.3 + 0.3 * ~1 = ~0.6 -> 1): output 1 vs 0.6.
        let x = vec![1.0, 1.0];
        let h = gram(&x, 2);
        let opts = Options {
            percdamp: 0.01,
            actorder: false,
            ..Options::default()
        };
        let f = Factor::new(&h, 2, &opts);
        let mut w = vec![0.3f32, 0.3];
        let out = f.quantize(&mut w, &rtn(1.0), &opts);
        assert_eq!(w, vec![0.0, 1.0]);
        assert!(!out.fallback);
        let rtn_err = output_error(&[0.3, 0.3], &[0.0, 0.0], &x, 2);
        let gptq_err = output_error(&[0.3, 0.3], &w, &x, 2);
        assert!((rtn_err - 0.36).abs() < 1e-6);
        assert!((gptq_err - 0.16).abs() < 1e-6, "{gptq_err}");
    }

    #[test]
    fn correlated_inputs_make_gptq_beat_round_to_nearest() {
        // 16 columns driven by 2 latent signals plus small noise: strongly
        // correlated inputs, where feedback can cancel errors and RTN cannot.
        let n = 16;
        let t = 256;
        let mut seed = 12345u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        let mut x = vec![0f64; t * n];
        for r in 0..t {
            let (a, b) = (rnd(), rnd());
            for j in 0..n {
                let mix = j as f64 / n as f64;
                x[r * n + j] = a * (1.0 - mix) + b * mix + 0.01 * rnd();
            }
        }
        let rows = 8;
        let w: Vec<f32> = (0..rows * n).map(|_| rnd() as f32).collect();
        let h = gram(&x, n);
        for actorder in [false, true] {
            let opts = Options {
                actorder,
                block: 4, // several blocks: the lazy update is exercised
                ..Options::default()
            };
            let mut q = w.clone();
            Factor::new(&h, n, &opts).quantize(&mut q, &rtn(0.25), &opts);
            let r: Vec<f32> = w.iter().map(|&v| rtn(0.25)(0, 0, v)).collect();
            // Every value is on the grid.
            assert!(q.iter().all(|v| (v / 0.25).fract() == 0.0));
            let (eg, er) = (output_error(&w, &q, &x, n), output_error(&w, &r, &x, n));
            assert!(eg < 0.5 * er, "actorder {actorder}: GPTQ {eg} vs RTN {er}");
        }
    }

    #[test]
    fn block_size_does_not_change_the_result_beyond_rounding() {
        let n = 10;
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let x: Vec<f64> = (0..50 * n).map(|_| rnd()).collect();
        let h = gram(&x, n);
        let w: Vec<f32> = (0..3 * n).map(|_| rnd() as f32).collect();
        let run = |block| {
            let opts = Options {
                block,
                ..Options::default()
            };
            let mut q = w.clone();
            Factor::new(&h, n, &opts).quantize(&mut q, &rtn(0.1), &opts);
            q
        };
        assert_eq!(run(1), run(3));
        assert_eq!(run(3), run(128));
    }

    #[test]
    fn dead_columns_are_zeroed_and_a_singular_hessian_falls_back() {
        // Column 1 never active.
        let x = vec![1.0, 0.0, 0.5, 2.0, 0.0, -1.0, 0.3, 0.0, 0.7];
        let h = gram(&x, 3);
        let opts = Options::default();
        let f = Factor::new(&h, 3, &opts);
        let mut w = vec![0.4f32, 0.9, -0.2];
        let out = f.quantize(&mut w, &rtn(0.5), &opts);
        assert_eq!(out.dead, 1);
        assert_eq!(w[1], 0.0);
        // Not positive definite even after damping: round to nearest.
        let bad = vec![1.0, 2.0, 2.0, 1.0];
        let f = Factor::new(
            &bad,
            2,
            &Options {
                percdamp: 0.0,
                ..opts
            },
        );
        assert!(f.fallback());
        let mut w = vec![0.26f32, 0.74];
        f.quantize(&mut w, &rtn(0.5), &opts);
        assert_eq!(w, vec![0.5, 0.5]);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let n = 64;
        let mut seed = 99u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(3);
            ((seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let x: Vec<f64> = (0..200 * n).map(|_| rnd()).collect();
        let h = gram(&x, n);
        let w: Vec<f32> = (0..40 * n).map(|_| rnd() as f32).collect();
        let go = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let opts = Options {
                    block: 16,
                    ..Options::default()
                };
                let f = Factor::new(&h, n, &opts);
                let mut q = w.clone();
                let o = f.quantize(&mut q, &rtn(0.05), &opts);
                (q, f.u, o.loss.to_bits())
            })
        };
        assert_eq!(go(1), go(4));
    }
}
