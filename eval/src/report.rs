//! What `kiln eval` prints and checks: the weight and text reports as text,
//! the accuracy gates, and the check that a candidate shares the original's
//! vocabulary (it is fed the original's token ids).
//!
//! What must stay true: a failed gate names the gate and the measured value;
//! a NaN measurement fails every gate it is checked against.

use std::path::Path;

use formats::human::{num, sig};
use passes::printable;

use crate::error::{Error, Result};
use crate::model::Opened;
use crate::text::TextReport;
use crate::weights::{Metrics, TensorError, WeightReport};

/// `[2048, 576]` -> `2048x576`.
pub fn shape(s: &[usize]) -> String {
    if s.is_empty() {
        return "scalar".into();
    }
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// The candidate is fed the original's token ids, so both must have the same
/// token list (when both carry one).
pub fn check_same_vocabulary(original: &Opened, candidate: &Opened) -> Result<()> {
    let tokens = |m: &Opened| match formats::gguf::key_values(&m.loaded.model)
        .into_owned()
        .0
        .into_iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
    {
        Some((_, passes::MetaValue::Array(a))) => Some(a),
        _ => None,
    };
    if let (Some(a), Some(b)) = (tokens(original), tokens(candidate)) {
        if a != b {
            let at = a
                .iter()
                .zip(&b)
                .position(|(x, y)| x != y)
                .unwrap_or(a.len().min(b.len()));
            return Err(Error::Input(format!(
                "{} and {} have different vocabularies ({} and {} tokens, first difference at id {at}): the candidate must share the original's tokenizer",
                original.name(),
                candidate.name(),
                a.len(),
                b.len()
            )));
        }
    }
    Ok(())
}

/// Accuracy gates: the limits a candidate must meet on the text.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gates {
    /// Most mean KL divergence (nats).
    pub max_kld: Option<f64>,
    /// Most candidate / original perplexity.
    pub max_ppl_ratio: Option<f64>,
    /// Least top-1 agreement (a fraction).
    pub min_top1: Option<f64>,
}

/// Each gate `r` fails, naming the gate and the measured value (empty: all pass).
pub fn failed_gates(gates: &Gates, r: &TextReport) -> Vec<String> {
    let mut failed = Vec::new();
    if let (Some(max), Some(k)) = (gates.max_kld, r.kld) {
        if k.mean.is_nan() || k.mean > max {
            failed.push(format!(
                "--max-kld {max}: mean KL divergence is {}",
                num(k.mean)
            ));
        }
    }
    if let (Some(max), Some(ratio)) = (gates.max_ppl_ratio, r.ppl_ratio) {
        if ratio.is_nan() || ratio > max {
            failed.push(format!(
                "--max-ppl-ratio {max}: perplexity ratio is {ratio:.4} ({:.4} / {:.4})",
                r.candidate.map(|c| c.perplexity).unwrap_or(f64::NAN),
                r.original.perplexity
            ));
        }
    }
    if let (Some(min), Some(top1)) = (gates.min_top1, r.top1_agreement) {
        if top1.is_nan() || top1 < min {
            failed.push(format!("--min-top1 {min}: top-1 agreement is {top1:.4}"));
        }
    }
    failed
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

fn metrics_cols(m: &Metrics) -> String {
    format!(
        "{:>11.3e} {:>10} {:>8} {:>10} {:>10.3e} {:>10}",
        m.rmse,
        fmt_opt(m.rel_frobenius, 6),
        m.snr_db
            .map(|s| format!("{s:.2}"))
            .unwrap_or_else(|| "inf".into()),
        fmt_opt(m.cosine, 6),
        m.max_abs,
        fmt_opt(m.weighted_rel_err, 6),
    )
}

const METRIC_HEADER: &str = "       rmse    rel_err  snr_dB     cosine    max_abs    imp_err";

/// The weight comparison as text: per role, the total, and the 10 worst
/// tensors by relative error (every tensor with `all`).
pub fn weights_text(r: &WeightReport, all: bool) -> String {
    let mut s = String::from("weight error (candidate vs original)\n\n");
    s += &format!("{:<14} {:>7} {METRIC_HEADER}\n", "role", "tensors");
    for g in r.roles.iter().chain(std::iter::once(&r.total)) {
        s += &format!(
            "{:<14} {:>7} {}\n",
            g.role,
            g.tensors,
            metrics_cols(&g.metrics)
        );
    }
    let mut order: Vec<&TensorError> = r.tensors.iter().collect();
    if !all {
        order.sort_by(|a, b| {
            b.metrics
                .rel_frobenius
                .unwrap_or(0.0)
                .total_cmp(&a.metrics.rel_frobenius.unwrap_or(0.0))
        });
        order.truncate(10);
    }
    // Names are data from the files: printed with control characters escaped.
    let names: Vec<_> = order.iter().map(|t| printable(&t.name)).collect();
    let w = names.iter().map(|n| n.len()).max().unwrap_or(4).max(4);
    s += &format!(
        "\n{} tensors{}:\n{:<w$} {:<11} {:<6} {:<6} {METRIC_HEADER}\n",
        if all { "all" } else { "the 10 worst" },
        if all {
            ""
        } else {
            " by relative error (--all for every one)"
        },
        "name",
        "shape",
        "orig",
        "cand"
    );
    for (t, name) in order.iter().zip(&names) {
        s += &format!(
            "{:<w$} {:<11} {:<6} {:<6} {}\n",
            name,
            shape(&t.shape),
            t.original_type,
            t.candidate_type,
            metrics_cols(&t.metrics)
        );
    }
    if !r.notes.is_empty() {
        s += "\nnot compared:\n";
        for n in &r.notes {
            s += &format!("  {}\n", printable(n));
        }
    }
    s + "\n"
}

/// The text evaluation as text.
pub fn text_text(r: &TextReport, path: &Path) -> String {
    let mut s = format!(
        "text: {} ({} windows of {} tokens, {} positions scored)\n",
        printable(&path.display().to_string()),
        r.chunks,
        r.ctx,
        r.scored
    );
    s += &format!(
        "  original  perplexity {:.4} ± {:.4}\n",
        r.original.perplexity, r.original.perplexity_stderr
    );
    if let Some(c) = r.candidate {
        s += &format!(
            "  candidate perplexity {:.4} ± {:.4}  (ratio {:.4})\n",
            c.perplexity,
            c.perplexity_stderr,
            r.ppl_ratio.unwrap_or(f64::NAN)
        );
    }
    if let Some(k) = r.kld {
        s += &format!(
            "  KL divergence  mean {} ± {}, median {}, p99 {}, max {}\n",
            num(k.mean),
            num(k.mean_stderr),
            num(k.median),
            num(k.p99),
            num(k.max)
        );
    }
    if let Some(t) = r.top1_agreement {
        s += &format!("  top-1 agreement {}%\n", sig(100.0 * t, 4));
    }
    s
}
