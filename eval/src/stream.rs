//! The streaming runner: a model run block by block over all windows at
//! once. The residual streams of every window are kept (`[t, hidden]` per
//! window, f32); each block's weights are decoded from their source (the
//! stored encoding, or a candidate encoding applied row by row, see
//! `crate::source`), run over every window, and dropped before the next
//! block; embeddings are read row by row for the tokens present; the output
//! head is decoded in chunks of vocabulary rows, and each scored position's
//! log-sum-exp, target logit, argmax and KL divergence are accumulated over
//! the chunks (online, as a streaming softmax does), so no `[positions,
//! vocab]` logits are ever held. Memory is about one block (or one head
//! chunk) plus the activations, whatever the number of layers; an original
//! and a candidate run in lockstep, block `i` of one then of the other.
//!
//! What must stay true:
//! - a block runs each window exactly as the whole-model pass does
//!   (`forward::Layer::forward`, the same operations on the same tensors),
//!   so results equal `text::evaluate`'s up to the head's chunked
//!   accumulation (tested on every fixture);
//! - statistics are accumulated in f64, rows in window and position order
//!   and vocabulary chunks in order, so results do not depend on the thread
//!   count;
//! - an [`Observer`] sees the same inputs, in the same order per weight, as
//!   with the whole-model pass (windows of a block in window order).

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;
use rayon::prelude::*;

use crate::error::{Error, OpContext, Result};
use crate::forward::{Config, Frame, Loader, NoObserver, Observer};
use crate::gemma::LayerInputs;
use crate::source::Source;
use crate::text::{summarize, TextReport, TokenScore};

/// Bytes of logits one head chunk may hold per model.
const HEAD_CHUNK_BYTES: usize = 64 << 20;

/// A model that runs block by block from its [`Source`].
pub struct Streamed<'a> {
    src: &'a dyn Source,
    frame: Frame,
}

/// The residual stream of every window (`[t, hidden]` each, f32).
#[derive(Debug, Clone)]
pub struct States {
    pub xs: Vec<Tensor>,
}

/// RoPE tables and masks per window length.
struct Inputs<'f> {
    frame: &'f Frame,
    by_len: Vec<(usize, LayerInputs)>,
}

impl<'f> Inputs<'f> {
    fn new(frame: &'f Frame) -> Inputs<'f> {
        Inputs {
            frame,
            by_len: Vec::new(),
        }
    }

    fn get(&mut self, t: usize) -> Result<&LayerInputs> {
        let i = match self.by_len.iter().position(|(n, _)| *n == t) {
            Some(i) => i,
            None => {
                self.by_len.push((t, self.frame.inputs(t)?));
                self.by_len.len() - 1
            }
        };
        Ok(&self.by_len[i].1)
    }
}

fn interrupted(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(Error::Formats(formats::Error::Interrupted))
    } else {
        Ok(())
    }
}

impl<'a> Streamed<'a> {
    /// Check `src`'s model and read its small tensors (RoPE factors, final
    /// norm); no block is decoded yet.
    pub fn new(src: &'a dyn Source) -> Result<Streamed<'a>> {
        Ok(Streamed {
            frame: Frame::new(src)?,
            src,
        })
    }

    pub fn cfg(&self) -> &Config {
        &self.frame.cfg
    }

    pub fn n_layer(&self) -> usize {
        self.frame.cfg.arch.n_layer
    }

    /// The embedded windows (each window's rows read from the source).
    pub fn embed(&self, windows: &[Vec<u32>]) -> Result<States> {
        let xs = windows
            .iter()
            .map(|w| {
                if w.is_empty() {
                    return Err(Error::Input("an empty window".into()));
                }
                self.frame.embed(self.src, w)
            })
            .collect::<Result<Vec<_>>>()?;
        if let Ok(node) = self.src.opened().need("token_embd.weight") {
            self.src.release(node);
        }
        Ok(States { xs })
    }

    /// Decode block `i` from this model's source and run it over every
    /// window of `st`, `obs` seeing each linear input.
    pub fn block(
        &self,
        i: usize,
        st: &mut States,
        obs: &mut dyn Observer,
        cancel: &AtomicBool,
    ) -> Result<()> {
        self.block_from(self.src, i, st, obs, cancel)
    }

    /// [`Streamed::block`] with block `i`'s weights read from `src` instead
    /// (a source over the same model: another encoding of its tensors, or
    /// weights rewritten by a pass such as GPTQ, see `source::Overrides`).
    pub fn block_from(
        &self,
        src: &dyn Source,
        i: usize,
        st: &mut States,
        obs: &mut dyn Observer,
        cancel: &AtomicBool,
    ) -> Result<()> {
        self.run_block(src, i, &mut st.xs, true, obs, cancel)
    }

    /// Decode block `i` from this model's source and run it over every
    /// window of `st` for `obs` only: the states are left as they were (a
    /// pass that rewrites the block's weights from what `obs` saw, as GPTQ
    /// does, then advances the states with [`Streamed::block_from`]). The
    /// block's outputs are dropped window by window, so no second copy of
    /// the states is held.
    pub fn observe_block(
        &self,
        i: usize,
        st: &States,
        obs: &mut dyn Observer,
        cancel: &AtomicBool,
    ) -> Result<()> {
        let mut xs = st.xs.clone();
        self.run_block(self.src, i, &mut xs, false, obs, cancel)
    }

    /// Block `i` (weights from `src`) over `xs`, replacing each window's
    /// state with the block's output when `keep`.
    fn run_block(
        &self,
        src: &dyn Source,
        i: usize,
        xs: &mut [Tensor],
        keep: bool,
        obs: &mut dyn Observer,
        cancel: &AtomicBool,
    ) -> Result<()> {
        let ld = Loader {
            src,
            device: self.frame.device.clone(),
        };
        let layer = self.frame.layer(&ld, i)?;
        let mut inputs = Inputs::new(&self.frame);
        for x in xs.iter_mut() {
            interrupted(cancel)?;
            let t = x.dim(0).op(|| format!("blk.{i}: tokens"))?;
            let inp = inputs.get(t)?;
            let y = layer.forward(&self.frame, i, x.clone(), inp, obs)?;
            if keep {
                *x = y;
            }
        }
        Ok(())
    }

    /// The final-normed rows `first..t-1` of every window (the positions
    /// that predict a next token from `first` on), windows concatenated.
    fn head_input(&self, st: &States, first: usize) -> Result<Tensor> {
        let rows = st
            .xs
            .iter()
            .map(|x| {
                let t = x.dim(0).op(|| "tokens".into())?;
                let n = t.saturating_sub(1).saturating_sub(first);
                let x = x.narrow(0, first.min(t), n).op(|| "narrow".into())?;
                self.frame.final_norm(&x)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&rows, 0).op(|| "head rows".into())
    }

    /// Logits `[rows of h, v1 - v0]` for vocabulary rows `v0..v1`.
    fn head_chunk(&self, h: &Tensor, v0: usize, v1: usize) -> Result<Vec<f32>> {
        let m = self.src.opened();
        let name = Frame::output_name(m);
        let node = m.need(name)?;
        let hidden = self.frame.cfg.arch.hidden;
        if node.shape != [self.frame.cfg.vocab, hidden] {
            return Err(Error::Model {
                model: m.name(),
                reason: format!(
                    "tensor `{name}` has shape {:?}, expected {:?}",
                    node.shape,
                    [self.frame.cfg.vocab, hidden]
                ),
            });
        }
        let h = &crate::forward::quantize_input(h, self.src.act_quant(node, None), name)?;
        let w = Tensor::from_vec(
            self.src.read_rows(node, v0, v1),
            (v1 - v0, hidden),
            h.device(),
        )
        .op(|| format!("{name}: rows {v0}..{v1}"))?;
        let mut y = h
            .matmul(&w.t().op(|| format!("{name}: transpose"))?)
            .op(|| format!("{name}: matmul"))?;
        if name == "output.weight" {
            if let Some(b) = m.tensor("output.bias") {
                let bias = Tensor::from_vec(
                    self.src.read_rows(b, 0, b.n_rows()),
                    b.n_elements(),
                    h.device(),
                )
                .and_then(|b| b.narrow(0, v0, v1 - v0))
                .op(|| "output.bias".into())?;
                y = y.broadcast_add(&bias).op(|| "output bias".into())?;
            }
        }
        self.frame
            .cap_logits(y)?
            .flatten_all()
            .and_then(|l| l.to_vec1::<f32>())
            .op(|| "logits to host".into())
    }

    fn release_head(&self) {
        let m = self.src.opened();
        if let Ok(node) = m.need(Frame::output_name(m)) {
            self.src.release(node);
        }
    }
}

/// Running statistics of one row of logits over vocabulary chunks.
#[derive(Debug, Clone, Copy)]
struct Running {
    max: f32,
    arg: usize,
    /// Σ exp(v - max) over the chunks seen.
    sum: f64,
    target: f64,
}

impl Running {
    const NEW: Running = Running {
        max: f32::NEG_INFINITY,
        arg: 0,
        sum: 0.0,
        target: f64::NAN,
    };

    /// Take in `chunk` (vocabulary `v0..`); returns the factor by which
    /// earlier sums were rescaled (the new maximum's).
    fn add(&mut self, chunk: &[f32], v0: usize, target: usize) -> f64 {
        let old = self.max;
        for (k, &v) in chunk.iter().enumerate() {
            if v > self.max {
                self.max = v;
                self.arg = v0 + k;
            }
        }
        let rescale = if old == self.max {
            1.0
        } else {
            ((old as f64) - (self.max as f64)).exp()
        };
        let m = self.max as f64;
        self.sum = self.sum * rescale + chunk.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>();
        if (v0..v0 + chunk.len()).contains(&target) {
            self.target = chunk[target - v0] as f64;
        }
        rescale
    }

    fn lse(&self) -> f64 {
        self.max as f64 + self.sum.ln()
    }
}

/// One scored row: the original's statistics, and the candidate's with the
/// cross term Σ exp(o - max_o) (o - c) of the KL divergence.
#[derive(Debug, Clone, Copy)]
struct RowStats {
    o: Running,
    c: Running,
    cross: f64,
}

/// Score positions `first..t-1` of every window: the original's final
/// states `so` (and the candidate's `sc`), each head decoded once in
/// vocabulary chunks.
fn score_heads(
    orig: &Streamed,
    so: &States,
    cand: Option<(&Streamed, &States)>,
    windows: &[Vec<u32>],
    first: usize,
    vocab_chunk: Option<usize>,
    cancel: &AtomicBool,
) -> Result<Vec<TokenScore>> {
    let vocab = orig.cfg().vocab;
    let ho = orig.head_input(so, first)?;
    let hc = cand.map(|(m, s)| m.head_input(s, first)).transpose()?;
    let mut targets = Vec::new();
    let mut place = Vec::new();
    for (wi, w) in windows.iter().enumerate() {
        for p in first..w.len().saturating_sub(1) {
            targets.push(w[p + 1] as usize);
            place.push((wi, p));
        }
    }
    let rows = targets.len();
    let mut stats = vec![
        RowStats {
            o: Running::NEW,
            c: Running::NEW,
            cross: 0.0,
        };
        rows
    ];
    let step = match vocab_chunk {
        Some(n) => n,
        None => (HEAD_CHUNK_BYTES / 4 / rows.max(1)).max(256),
    }
    .clamp(1, vocab.max(1));
    let mut v0 = 0;
    while v0 < vocab {
        interrupted(cancel)?;
        let v1 = (v0 + step).min(vocab);
        let n = v1 - v0;
        let lo = orig.head_chunk(&ho, v0, v1)?;
        let lc = match (&cand, &hc) {
            (Some((m, _)), Some(h)) => Some(m.head_chunk(h, v0, v1)?),
            _ => None,
        };
        stats.par_iter_mut().enumerate().for_each(|(r, s)| {
            let o = &lo[r * n..(r + 1) * n];
            let rescale = s.o.add(o, v0, targets[r]);
            if let Some(lc) = &lc {
                let c = &lc[r * n..(r + 1) * n];
                s.c.add(c, v0, targets[r]);
                let m = s.o.max as f64;
                s.cross = s.cross * rescale
                    + o.iter()
                        .zip(c)
                        .map(|(&a, &b)| (a as f64 - m).exp() * (a as f64 - b as f64))
                        .sum::<f64>();
            }
        });
        v0 = v1;
    }
    orig.release_head();
    if let Some((m, _)) = cand {
        m.release_head();
    }
    Ok(stats
        .iter()
        .zip(&targets)
        .zip(&place)
        .map(|((s, &target), &(chunk, pos))| {
            let lse_o = s.o.lse();
            let c = cand.map(|_| {
                let lse_c = s.c.lse();
                // Σ p (log p - log q) = Σ p (o - c) - lse_o + lse_c.
                let kld = s.cross / s.o.sum - lse_o + lse_c;
                (lse_c - s.c.target, kld.max(0.0), s.c.arg as u32)
            });
            TokenScore {
                chunk,
                pos,
                target: target as u32,
                nll_original: lse_o - s.o.target,
                nll_candidate: c.map(|c| c.0),
                kld: c.map(|c| c.1),
                top1_original: s.o.arg as u32,
                top1_candidate: c.map(|c| c.2),
            }
        })
        .collect())
}

/// Check the windows: at least one, all of one length of at least 4.
fn window_len(windows: &[Vec<u32>]) -> Result<usize> {
    let ctx = windows.first().map(Vec::len).unwrap_or(0);
    if ctx < 4 {
        return Err(Error::Input("no windows to evaluate".into()));
    }
    if windows.iter().any(|w| w.len() != ctx) {
        return Err(Error::Input("windows of different lengths".into()));
    }
    Ok(ctx)
}

/// Evaluate `original` (and `candidate`, when given) over `windows` by
/// llama-perplexity's method (see `crate::text`), block by block.
/// `progress(n)` after the n-th of `n_layer + 1` steps (the blocks, then the
/// head); `cancel` is checked between windows.
pub fn evaluate(
    original: &dyn Source,
    candidate: Option<&dyn Source>,
    windows: &[Vec<u32>],
    progress: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<TextReport> {
    evaluate_in_chunks(original, candidate, windows, None, progress, cancel)
}

/// [`evaluate`] with the output head decoded `vocab_chunk` vocabulary rows
/// at a time (by default as many as keep one chunk's logits near 64 MiB,
/// at least 256).
pub fn evaluate_in_chunks(
    original: &dyn Source,
    candidate: Option<&dyn Source>,
    windows: &[Vec<u32>],
    vocab_chunk: Option<usize>,
    progress: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<TextReport> {
    let ctx = window_len(windows)?;
    let orig = Streamed::new(original)?;
    let cand = candidate.map(Streamed::new).transpose()?;
    if let Some(c) = &cand {
        if c.cfg().vocab != orig.cfg().vocab {
            return Err(Error::Input(format!(
                "the candidate's vocabulary has {} tokens and the original's {}: they must share one to be compared",
                c.cfg().vocab,
                orig.cfg().vocab
            )));
        }
        // Each model runs its own blocks (a depth-pruned candidate has
        // fewer): only the vocabulary must be shared.
    }
    let mut so = orig.embed(windows)?;
    let mut sc = cand.as_ref().map(|c| c.embed(windows)).transpose()?;
    for i in 0..orig.n_layer() {
        orig.block(i, &mut so, &mut NoObserver, cancel)?;
        if let (Some(c), Some(s)) = (&cand, sc.as_mut()) {
            if i < c.n_layer() {
                c.block(i, s, &mut NoObserver, cancel)?;
            }
        }
        progress(i + 1);
    }
    if let (Some(c), Some(s)) = (&cand, sc.as_mut()) {
        // A candidate with more blocks than the original runs the rest.
        for i in orig.n_layer()..c.n_layer() {
            c.block(i, s, &mut NoObserver, cancel)?;
        }
    }
    let scores = score_heads(
        &orig,
        &so,
        cand.as_ref().zip(sc.as_ref()),
        windows,
        ctx / 2,
        vocab_chunk,
        cancel,
    )?;
    progress(orig.n_layer() + 1);
    Ok(summarize(ctx, windows.len(), scores))
}

/// Run `model` over every window block by block, showing each linear input
/// to `obs` (every position of every window, as llama-imatrix does). The
/// output projection's input (every position) is shown only when
/// `all_logits`; no logits are computed. `progress(n)` after the n-th block.
pub fn observe(
    model: &dyn Source,
    windows: &[Vec<u32>],
    obs: &mut dyn Observer,
    all_logits: bool,
    progress: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<()> {
    let m = Streamed::new(model)?;
    let mut st = m.embed(windows)?;
    for i in 0..m.n_layer() {
        m.block(i, &mut st, obs, cancel)?;
        progress(i + 1);
    }
    if all_logits {
        let name = Frame::output_name(model.opened());
        for x in &st.xs {
            obs.linear_input(name, &m.frame.final_norm(x)?)?;
        }
    }
    Ok(())
}

/// The original model's residual streams at chosen blocks, kept to score
/// many candidates that differ from it from some block on: a candidate that
/// equals the original before block `L` is run from the nearest kept block
/// at or before `L`. Memory: the kept streams (one per chosen block, not per
/// layer) plus one block.
pub struct Reference<'a> {
    orig: Streamed<'a>,
    windows: Vec<Vec<u32>>,
    /// (block, input of that block), ascending; the last is the final stream.
    kept: Vec<(usize, States)>,
}

impl<'a> Reference<'a> {
    /// Run `original` over `windows`, keeping its stream at the input of
    /// each block in `resume_at` (and the final one).
    pub fn new(
        original: &'a dyn Source,
        windows: &[Vec<u32>],
        resume_at: &[usize],
        cancel: &AtomicBool,
    ) -> Result<Reference<'a>> {
        window_len(windows)?;
        let orig = Streamed::new(original)?;
        let n = orig.n_layer();
        let mut st = orig.embed(windows)?;
        let mut kept = Vec::new();
        for i in 0..n {
            // A candidate changed from block 0 may change the embedding
            // too: it is run from its own embedding, nothing kept for it.
            if i > 0 && resume_at.contains(&i) {
                kept.push((i, st.clone()));
            }
            orig.block(i, &mut st, &mut NoObserver, cancel)?;
        }
        kept.push((n, st));
        Ok(Reference {
            orig,
            windows: windows.to_vec(),
            kept,
        })
    }

    /// The scores of `candidate` against the original over every window;
    /// `candidate` must equal the original in the blocks before
    /// `from_layer` (and in the embedding unless `from_layer` is 0).
    pub fn scores(
        &self,
        candidate: &dyn Source,
        from_layer: usize,
        cancel: &AtomicBool,
    ) -> Result<Vec<TokenScore>> {
        let cand = Streamed::new(candidate)?;
        let n = self.orig.n_layer();
        let (start, mut st) = match self
            .kept
            .iter()
            .rev()
            .find(|(l, _)| *l <= from_layer && from_layer > 0)
        {
            Some((l, s)) => (*l, s.clone()),
            None => (0, cand.embed(&self.windows)?),
        };
        for i in start..n {
            cand.block(i, &mut st, &mut NoObserver, cancel)?;
        }
        let last = &self.kept.last().expect("the final stream is kept").1;
        score_heads(
            &self.orig,
            last,
            Some((&cand, &st)),
            &self.windows,
            self.windows[0].len() / 2,
            None,
            cancel,
        )
    }

    /// Mean KL divergence of `candidate` (see [`Reference::scores`]).
    pub fn kld(
        &self,
        candidate: &dyn Source,
        from_layer: usize,
        cancel: &AtomicBool,
    ) -> Result<f64> {
        let s = self.scores(candidate, from_layer, cancel)?;
        let n = s.len();
        let sum: f64 = s.iter().filter_map(|t| t.kld).sum();
        Ok(if n == 0 { 0.0 } else { sum / n as f64 })
    }
}
