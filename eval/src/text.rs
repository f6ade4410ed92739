//! Model-level error on text: perplexity of each model with its standard
//! error, KL divergence of the candidate's next-token distribution from the
//! original's, and top-1 agreement, by llama.cpp's `llama-perplexity` method.
//!
//! The method (llama.cpp `tools/perplexity/perplexity.cpp`, `perplexity()` and
//! `kl_divergence()`): tokenize the whole text once (BOS first when the
//! tokenizer adds one), cut it into `n_ctx`-token windows, replace each
//! window's first token with BOS when the tokenizer adds one, run each window
//! from position 0, and score only the second half: positions
//! `n_ctx/2 .. n_ctx-2` predicting the next token (`n_ctx - 1 - n_ctx/2`
//! tokens per window). PPL = exp(mean NLL); its standard error is
//! `sqrt(var(NLL) / (N - 1)) * PPL`. KLD percentiles interpolate linearly
//! between sorted values, as llama.cpp does.
//!
//! What must stay true: both models see exactly the same token ids (the
//! original's tokenizer's), and statistics are accumulated in f64 in window
//! and position order, so results do not depend on the thread count.

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, OpContext, Result};
use crate::forward::{NoObserver, Observer, Transformer};

/// Which windows of the text to evaluate.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// Tokens per window.
    pub ctx: usize,
    /// At most this many windows (all that fit when `None`).
    pub max_chunks: Option<usize>,
}

/// The text's token ids cut into windows, each starting with BOS when the
/// tokenizer adds one.
pub fn windows(tokens: &[u32], w: Windows, bos: Option<u32>) -> Result<Vec<Vec<u32>>> {
    if w.ctx < 4 {
        return Err(Error::Input(format!(
            "--ctx {} is too small (at least 4 tokens)",
            w.ctx
        )));
    }
    let fit = tokens.len() / w.ctx;
    if fit == 0 {
        return Err(Error::Input(format!(
            "the text has {} tokens, fewer than one window of --ctx {}; give a longer text or a smaller --ctx",
            tokens.len(),
            w.ctx
        )));
    }
    let n = w.max_chunks.map_or(fit, |m| m.min(fit));
    Ok((0..n)
        .map(|i| {
            let mut win = tokens[i * w.ctx..(i + 1) * w.ctx].to_vec();
            if let Some(b) = bos {
                win[0] = b;
            }
            win
        })
        .collect())
}

/// Perplexity and its standard error.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Perplexity {
    pub perplexity: f64,
    pub perplexity_stderr: f64,
    /// Mean negative log-likelihood (nats per token).
    pub nll: f64,
}

/// KL divergence statistics (nats).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Kld {
    pub mean: f64,
    pub mean_stderr: f64,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

/// One scored position (for `--per-token`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TokenScore {
    pub chunk: usize,
    pub pos: usize,
    /// The token predicted (at `pos + 1`).
    pub target: u32,
    pub nll_original: f64,
    pub nll_candidate: Option<f64>,
    pub kld: Option<f64>,
    pub top1_original: u32,
    pub top1_candidate: Option<u32>,
}

/// The whole text evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct TextReport {
    pub ctx: usize,
    pub chunks: usize,
    /// Tokens scored (second halves of the windows).
    pub scored: usize,
    pub original: Perplexity,
    pub candidate: Option<Perplexity>,
    pub ppl_ratio: Option<f64>,
    pub kld: Option<Kld>,
    pub top1_agreement: Option<f64>,
    #[serde(skip)]
    pub per_token: Vec<TokenScore>,
}

/// Log-sum-exp and argmax of one logits row, in f64.
fn lse_argmax(row: &[f32]) -> (f64, usize) {
    let mut max = f32::NEG_INFINITY;
    let mut arg = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > max {
            max = v;
            arg = i;
        }
    }
    let m = max as f64;
    let s: f64 = row.iter().map(|&v| ((v as f64) - m).exp()).sum();
    (m + s.ln(), arg)
}

/// Score one row: (nll_o, nll_c, kld, top1_o, top1_c).
pub(crate) fn score_row(
    o: &[f32],
    c: Option<&[f32]>,
    target: usize,
) -> (f64, Option<f64>, Option<f64>, usize, Option<usize>) {
    let (lse_o, top_o) = lse_argmax(o);
    let nll_o = lse_o - o[target] as f64;
    let Some(c) = c else {
        return (nll_o, None, None, top_o, None);
    };
    let (lse_c, top_c) = lse_argmax(c);
    let nll_c = lse_c - c[target] as f64;
    let mut kld = 0.0;
    for (&a, &b) in o.iter().zip(c) {
        let lp = a as f64 - lse_o;
        let lq = b as f64 - lse_c;
        kld += lp.exp() * (lp - lq);
    }
    // Rounding can make an identical distribution's KLD a tiny negative.
    (nll_o, Some(nll_c), Some(kld.max(0.0)), top_o, Some(top_c))
}

/// llama.cpp's percentile: linear interpolation between sorted values.
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[sorted.len() - 1];
    }
    let p = fraction * (sorted.len() - 1) as f64;
    let ip = p.floor() as usize;
    let frac = p - ip as f64;
    (1.0 - frac) * sorted[ip] + frac * sorted[(ip + 1).min(sorted.len() - 1)]
}

fn ppl(nll: &[f64]) -> Perplexity {
    let n = nll.len() as f64;
    let mean = nll.iter().sum::<f64>() / n;
    let mean2 = nll.iter().map(|v| v * v).sum::<f64>() / n;
    let var = mean2 - mean * mean;
    let p = mean.exp();
    let stderr = if var > 0.0 && nll.len() > 1 {
        (var / (n - 1.0)).sqrt() * p
    } else {
        0.0
    };
    Perplexity {
        perplexity: p,
        perplexity_stderr: stderr,
        nll: mean,
    }
}

/// Evaluate `original` (and `candidate`, when given) over `windows`.
/// `progress` is called after each window; `cancel` is checked between windows.
pub fn evaluate(
    original: &Transformer,
    candidate: Option<&Transformer>,
    windows: &[Vec<u32>],
    progress: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<TextReport> {
    let ctx = windows.first().map(Vec::len).unwrap_or(0);
    if ctx < 4 {
        return Err(Error::Input("no windows to evaluate".into()));
    }
    if let Some(c) = candidate {
        if c.cfg.vocab != original.cfg.vocab {
            return Err(Error::Input(format!(
                "the candidate's vocabulary has {} tokens and the original's {}: they must share one to be compared",
                c.cfg.vocab, original.cfg.vocab
            )));
        }
    }
    let first = ctx / 2;
    let vocab = original.cfg.vocab;
    let mut scores = Vec::with_capacity(windows.len() * (ctx - 1 - first));
    for (wi, win) in windows.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Formats(formats::Error::Interrupted));
        }
        let run = |m: &Transformer| -> Result<Vec<f32>> {
            let logits = m.forward(win, first, &mut NoObserver)?;
            logits
                .flatten_all()
                .and_then(|l| l.to_vec1::<f32>())
                .op(|| "logits to host".into())
        };
        let lo = run(original)?;
        let lc = candidate.map(run).transpose()?;
        let rows: Vec<TokenScore> = (0..ctx - 1 - first)
            .into_par_iter()
            .map(|j| {
                let o = &lo[j * vocab..(j + 1) * vocab];
                let c = lc.as_ref().map(|lc| &lc[j * vocab..(j + 1) * vocab]);
                let target = win[first + j + 1];
                let (nll_o, nll_c, kld, top_o, top_c) = score_row(o, c, target as usize);
                TokenScore {
                    chunk: wi,
                    pos: first + j,
                    target,
                    nll_original: nll_o,
                    nll_candidate: nll_c,
                    kld,
                    top1_original: top_o as u32,
                    top1_candidate: top_c.map(|t| t as u32),
                }
            })
            .collect();
        scores.extend(rows);
        progress(wi + 1);
    }
    Ok(summarize(ctx, windows.len(), scores))
}

/// The statistics of scored positions.
pub fn summarize(ctx: usize, chunks: usize, per_token: Vec<TokenScore>) -> TextReport {
    let nll_o: Vec<f64> = per_token.iter().map(|s| s.nll_original).collect();
    let original = ppl(&nll_o);
    let nll_c: Option<Vec<f64>> = per_token.iter().map(|s| s.nll_candidate).collect();
    let candidate = nll_c.filter(|v| !v.is_empty()).map(|v| ppl(&v));
    let kld = per_token
        .iter()
        .map(|s| s.kld)
        .collect::<Option<Vec<f64>>>()
        .filter(|v| !v.is_empty())
        .map(|mut v| {
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let var = v.iter().map(|x| x * x).sum::<f64>() / n - mean * mean;
            let mean_stderr = if var > 0.0 && v.len() > 1 {
                (var / (n - 1.0)).sqrt()
            } else {
                0.0
            };
            v.sort_by(f64::total_cmp);
            Kld {
                mean,
                mean_stderr,
                median: percentile(&v, 0.5),
                p99: percentile(&v, 0.99),
                max: v[v.len() - 1],
            }
        });
    let top1_agreement = candidate.map(|_| {
        let same = per_token
            .iter()
            .filter(|s| s.top1_candidate == Some(s.top1_original))
            .count();
        same as f64 / per_token.len() as f64
    });
    TextReport {
        ctx,
        chunks,
        scored: per_token.len(),
        original,
        ppl_ratio: candidate.map(|c| c.perplexity / original.perplexity),
        candidate,
        kld,
        top1_agreement,
        per_token,
    }
}

/// Run `model` over every window, showing each linear input to `obs` (all
/// positions of each window, as llama-imatrix does). The output projection
/// runs on every position only when `all_logits` (it is otherwise skipped but
/// for the last position).
pub fn observe(
    model: &Transformer,
    windows: &[Vec<u32>],
    obs: &mut dyn Observer,
    all_logits: bool,
    progress: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<()> {
    for (wi, win) in windows.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Formats(formats::Error::Interrupted));
        }
        model.forward(win, if all_logits { 0 } else { win.len() - 1 }, obs)?;
        progress(wi + 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_like_llama_cpp() {
        let v = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.0);
        assert!((percentile(&v, 0.99) - 3.96).abs() < 1e-12);
        assert_eq!(percentile(&v, 1.0), 4.0);
    }

    #[test]
    fn identical_rows_have_zero_kld_and_agree() {
        let o = [1.0f32, 2.0, 3.0, -1.0];
        let (nll_o, nll_c, kld, t_o, t_c) = score_row(&o, Some(&o), 1);
        assert_eq!(nll_c, Some(nll_o));
        assert_eq!(kld, Some(0.0));
        assert_eq!(Some(t_o), t_c);
        // NLL of token 1: lse - 2.
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp() + (-1f64).exp()).ln();
        assert!((nll_o - (lse - 2.0)).abs() < 1e-12);
    }

    #[test]
    fn kld_matches_the_definition() {
        let o = [0.5f32, -0.25, 1.0];
        let c = [0.0f32, 0.0, 1.5];
        let (_, _, kld, _, _) = score_row(&o, Some(&c), 0);
        let p: Vec<f64> = {
            let z: f64 = o.iter().map(|&x| (x as f64).exp()).sum();
            o.iter().map(|&x| (x as f64).exp() / z).collect()
        };
        let q: Vec<f64> = {
            let z: f64 = c.iter().map(|&x| (x as f64).exp()).sum();
            c.iter().map(|&x| (x as f64).exp() / z).collect()
        };
        let want: f64 = p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum();
        assert!((kld.unwrap() - want).abs() < 1e-12);
    }

    #[test]
    fn windows_replace_the_first_token_with_bos() {
        let toks: Vec<u32> = (10..30).collect();
        let w = windows(
            &toks,
            Windows {
                ctx: 8,
                max_chunks: None,
            },
            Some(1),
        )
        .unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[1], vec![1, 19, 20, 21, 22, 23, 24, 25]);
        let w = windows(
            &toks,
            Windows {
                ctx: 8,
                max_chunks: Some(1),
            },
            None,
        )
        .unwrap();
        assert_eq!(w, vec![(10..18).collect::<Vec<u32>>()]);
        assert!(windows(
            &toks,
            Windows {
                ctx: 32,
                max_chunks: None
            },
            None
        )
        .is_err());
    }

    #[test]
    fn perplexity_stderr_as_llama_cpp() {
        let s = ppl(&[1.0, 2.0, 3.0]);
        assert!((s.perplexity - 2f64.exp()).abs() < 1e-12);
        // var = 14/3 - 4 = 2/3; sqrt(var / 2) * e^2
        assert!((s.perplexity_stderr - (1.0f64 / 3.0).sqrt() * 2f64.exp()).abs() < 1e-9);
    }
}
