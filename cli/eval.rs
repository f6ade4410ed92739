//! `kiln eval`: measured accuracy of a candidate against its original.
//!
//! - `--weights ORIGINAL CANDIDATE`: per-tensor, per-role and total weight
//!   error (streamed, parallel; `--imatrix` adds the importance-weighted error);
//! - `ORIGINAL [CANDIDATE] --text FILE`: perplexity of each (± standard error),
//!   KL divergence and top-1 agreement on the text, llama-perplexity's method;
//!   the text is tokenized once with the original's tokenizer and the same ids
//!   are fed to both models;
//! - gates `--max-kld`, `--max-ppl-ratio`, `--min-top1`: the report is printed,
//!   then a failed gate is a [`CheckFailed`] (exit code 1) naming the gate and
//!   the measured value.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use eval::report::{check_same_vocabulary, failed_gates, text_text, weights_text, Gates};
use eval::stream::Streamed;
use eval::text::{TextReport, Windows};
use eval::weights::Importance;
use eval::{Opened, Source, Tokenizer};
use serde_json::{json, Value};

use crate::common::{cancel_flag, lift, lift_plan, load_options};
use crate::{CheckFailed, Printer};

/// Windows evaluated when `--chunks` is not given: enough for KLD and top-1 to
/// separate Q8_0 from Q4_0 clearly, and under a minute for a 135M model on 2 cores.
pub const DEFAULT_CHUNKS: usize = 8;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The original (reference) model: a Hugging Face checkpoint directory or a .gguf file.
    pub original: PathBuf,
    /// The candidate to judge (a .gguf file, or a compressed-tensors / Hugging Face checkpoint directory, e.g. kiln's output); needed by --weights and the gates.
    pub candidate: Option<PathBuf>,
    /// Compare the weights tensor by tensor (RMSE, relative error, SNR, cosine, max error).
    #[arg(long)]
    pub weights: bool,
    /// Evaluate on this text: perplexity, KL divergence and top-1 agreement.
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Tokens per window (the second half of each window is scored).
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub ctx: usize,
    /// Number of windows to evaluate [default: 8; 0 = every window the text fills].
    #[arg(long, value_name = "N")]
    pub chunks: Option<usize>,
    /// Importance matrix (llama.cpp GGUF or legacy .dat) for the importance-weighted weight error.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Fail (exit code 1) when the mean KL divergence exceeds X (nats).
    #[arg(long, value_name = "X")]
    pub max_kld: Option<f64>,
    /// Fail (exit code 1) when candidate perplexity / original perplexity exceeds R.
    #[arg(long, value_name = "R")]
    pub max_ppl_ratio: Option<f64>,
    /// Fail (exit code 1) when top-1 agreement is below P (a fraction, 0..1).
    #[arg(long, value_name = "P")]
    pub min_top1: Option<f64>,
    /// Print every tensor in the --weights report, not only the 10 worst.
    #[arg(long)]
    pub all: bool,
    /// Write every scored position (token ids of each window, NLLs, KLD, top-1) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub per_token: Option<PathBuf>,
    /// Print JSON to stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// llama.cpp pre-tokenizer name, for a Hugging Face original whose tokenizer kiln cannot name.
    #[arg(long, value_name = "NAME")]
    pub pre_tokenizer: Option<String>,
}

pub fn run(args: &EvalArgs, printer: &Printer) -> Result<()> {
    let gates = args.max_kld.is_some() || args.max_ppl_ratio.is_some() || args.min_top1.is_some();
    if gates && args.text.is_none() {
        bail!("the gates --max-kld, --max-ppl-ratio and --min-top1 are measured on text: give --text FILE");
    }
    if let Some(p) = args.min_top1 {
        if !(0.0..=1.0).contains(&p) {
            bail!("--min-top1 is a fraction between 0 and 1 (0.95 for 95%), not {p}");
        }
    }
    if args.max_kld.is_some_and(|x| x.is_nan() || x < 0.0)
        || args.max_ppl_ratio.is_some_and(|x| x.is_nan() || x <= 0.0)
    {
        bail!("--max-kld must be at least 0 and --max-ppl-ratio above 0");
    }
    if !args.weights && args.text.is_none() {
        bail!("nothing to evaluate: give --weights (weight error) and/or --text FILE (perplexity, KLD, top-1)");
    }
    if args.candidate.is_none() && (args.weights || gates) {
        bail!("--weights and the gates (--max-kld, --max-ppl-ratio, --min-top1) compare two models: give ORIGINAL and CANDIDATE");
    }
    if args.imatrix.is_some() && !args.weights {
        bail!("--imatrix weights the weight error: use it with --weights");
    }
    if args.per_token.is_some() && args.text.is_none() {
        bail!("--per-token records the text evaluation: use it with --text FILE");
    }
    let opts = load_options(&args.pre_tokenizer);
    let original = eval::open(&args.original, &opts).map_err(lift)?;
    let candidate = match &args.candidate {
        Some(c) => Some(eval::open(c, &opts).map_err(lift)?),
        None => None,
    };
    let mut act_notes = Vec::new();
    for m in std::iter::once(&original).chain(candidate.as_ref()) {
        for n in activation_notes(m) {
            printer.info(&format!("note: {n}"));
            act_notes.push(n);
        }
    }
    let cancel = cancel_flag();
    let mut out = serde_json::Map::new();
    out.insert(
        "models".into(),
        json!({"original": args.original, "candidate": args.candidate}),
    );
    // Which figures include run-time activation quantization (recorded
    // whatever -q hides).
    out.insert("activation_quantization".into(), json!(act_notes));
    // Every file the figures depend on besides the models, by path (as
    // given) and sha256.
    let inputs = [("evaluation_text", &args.text), ("imatrix", &args.imatrix)]
        .into_iter()
        .filter_map(|(role, p)| p.as_ref().map(|p| planner::build::input(role, p)))
        .collect::<planner::Result<Vec<_>>>()
        .map_err(lift_plan)?;
    out.insert("inputs".into(), serde_json::to_value(&inputs)?);
    let mut text_out = String::new();

    if args.weights {
        let cand = candidate.as_ref().expect("checked above");
        let importance = match &args.imatrix {
            Some(p) => {
                let m = read_importance(p)?;
                eval::weights::check_importance(&original, &m)
                    .map_err(lift)
                    .with_context(|| p.display().to_string())?;
                Some(m)
            }
            None => None,
        };
        let t0 = Instant::now();
        let total: u64 = original
            .loaded
            .model
            .tensors
            .iter()
            .map(|t| t.source.len)
            .sum();
        let bar = printer.bytes_bar(total, "comparing");
        let progress = |n: u64| bar.inc(n);
        let report =
            eval::weights::compare(&original, cand, importance.as_ref(), &progress, &cancel);
        bar.finish_and_clear();
        let report = report.map_err(lift)?;
        let secs = t0.elapsed().as_secs_f64();
        printer.info(&format!(
            "compared {} tensors in {secs:.2}s",
            report.tensors.len()
        ));
        let mut w = serde_json::to_value(&report)?;
        w["seconds"] = json!(secs);
        out.insert("weights".into(), w);
        text_out += &weights_text(&report, args.all);
    }

    let mut gate_report: Option<TextReport> = None;
    if let Some(text_path) = &args.text {
        let report = evaluate_text(
            args,
            text_path,
            &original,
            candidate.as_ref(),
            printer,
            &cancel,
            &mut out,
        )?;
        text_out += &text_text(&report, text_path);
        gate_report = Some(report);
    }

    if args.json {
        printer.data(&serde_json::to_string_pretty(&Value::Object(out))?);
    } else {
        printer.data(text_out.trim_end());
    }
    if let Some(r) = &gate_report {
        let gates = Gates {
            max_kld: args.max_kld,
            max_ppl_ratio: args.max_ppl_ratio,
            min_top1: args.min_top1,
        };
        let failed = failed_gates(&gates, r);
        if !failed.is_empty() {
            let msg = format!("accuracy gate failed: {}", failed.join("; "));
            return Err(CheckFailed(msg).into());
        }
    }
    Ok(())
}

/// How the measurement of a compressed-tensors model treats its config
/// groups that quantize activations at run time: the forward pass
/// fake-quantizes each such Linear's input as vLLM's kernels do.
fn activation_notes(m: &Opened) -> Vec<String> {
    let Some(ct) = &m.loaded.ct else {
        return Vec::new();
    };
    ct.config
        .groups
        .iter()
        .filter_map(|g| {
            g.activations.as_ref().map(|a| {
                format!(
                    "{}: config group `{}` quantizes input activations at run time ({a}); kiln's forward pass quantizes each such input the same way (vLLM's kernels' arithmetic, in f32), so this measures weights and activations together",
                    m.name(),
                    passes::printable(&g.name)
                )
            })
        })
        .collect()
}

/// The importance per input column of each weight (mean squared activation,
/// as llama-quantize computes it), from an imatrix file in either form.
fn read_importance(path: &Path) -> Result<Importance> {
    let m = formats::imatrix::read(path)?;
    Ok(m.importance(path)?.into_iter().collect())
}

fn evaluate_text(
    args: &EvalArgs,
    text_path: &Path,
    original: &Opened,
    candidate: Option<&Opened>,
    printer: &Printer,
    cancel: &AtomicBool,
    out: &mut serde_json::Map<String, Value>,
) -> Result<TextReport> {
    crate::common::check_trained_context(original, "--ctx", args.ctx)?;
    let text = std::fs::read_to_string(text_path)
        .with_context(|| format!("{}: cannot read the text", text_path.display()))?;
    let tok = Tokenizer::from_metadata(&formats::gguf::key_values(&original.loaded.model))
        .map_err(lift)
        .with_context(|| original.name())?;
    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(text.len() / 3 + 1);
    if tok.add_bos {
        ids.extend(tok.bos);
    }
    ids.extend(tok.encode(&text).map_err(lift)?);
    let chunks = match args.chunks {
        None => Some(DEFAULT_CHUNKS),
        Some(0) => None,
        Some(n) => Some(n),
    };
    let windows = eval::text::windows(
        &ids,
        Windows {
            ctx: args.ctx,
            max_chunks: chunks,
        },
        tok.bos.filter(|_| tok.add_bos),
    )
    .map_err(lift)
    .with_context(|| text_path.display().to_string())?;
    let tokenize_secs = t0.elapsed().as_secs_f64();

    if let Some(c) = candidate {
        check_same_vocabulary(original, c).map_err(lift)?;
    }
    // Both models stream block by block: only the small tensors are read
    // here (the configuration is checked before any block is decoded).
    let t0 = Instant::now();
    let orig_model = Streamed::new(original).map_err(lift)?;
    let cand_model = candidate
        .map(|c| Streamed::new(c as &dyn Source))
        .transpose()
        .map_err(lift)?;
    if let Some(c) = &cand_model {
        if c.cfg().vocab != orig_model.cfg().vocab {
            bail!(
                "{} has a vocabulary of {} tokens and {} of {}: a candidate must share the original's vocabulary",
                original.name(),
                orig_model.cfg().vocab,
                candidate.map(|c| c.name()).unwrap_or_default(),
                c.cfg().vocab
            );
        }
    }
    let steps = orig_model.n_layer() + 1;
    drop((orig_model, cand_model));
    let load_secs = t0.elapsed().as_secs_f64();
    let n_models = 1 + candidate.is_some() as usize;
    printer.info(&format!(
        "{}: {} tokens (the original's tokenizer; the same ids go to both models), {} windows of {}",
        text_path.display(),
        ids.len(),
        windows.len(),
        args.ctx
    ));

    let t0 = Instant::now();
    let bar = printer.count_bar(steps as u64, "evaluating", "blocks");
    let progress = |n: usize| bar.set_position(n as u64);
    let report = eval::stream::evaluate(
        original,
        candidate.map(|c| c as &dyn Source),
        &windows,
        &progress,
        cancel,
    );
    bar.finish_and_clear();
    let report = report.map_err(lift)?;
    let secs = t0.elapsed().as_secs_f64();
    let evaluated = windows.len() * args.ctx * n_models;
    let tps = evaluated as f64 / secs.max(1e-9);
    printer.info(&format!(
        "evaluated {} windows x {n_models} model(s) in {secs:.2}s ({tps:.0} tokens/s; loading {load_secs:.2}s, tokenizing {tokenize_secs:.2}s)",
        windows.len()
    ));

    if let Some(p) = &args.per_token {
        let rows = json!({"ctx": args.ctx, "windows": windows, "scores": report.per_token});
        std::fs::write(p, serde_json::to_vec(&rows)?)
            .with_context(|| format!("{}: cannot write", p.display()))?;
    }
    out.insert("text".into(), json!(text_path));
    out.insert("tokens".into(), json!(ids.len()));
    out.insert("ctx".into(), json!(report.ctx));
    out.insert("chunks".into(), json!(report.chunks));
    out.insert("scored".into(), json!(report.scored));
    out.insert("original".into(), serde_json::to_value(report.original)?);
    if let Some(c) = report.candidate {
        out.insert("candidate".into(), serde_json::to_value(c)?);
        out.insert("ppl_ratio".into(), json!(report.ppl_ratio));
        out.insert("kld".into(), serde_json::to_value(report.kld)?);
        out.insert("top1_agreement".into(), json!(report.top1_agreement));
    }
    out.insert("seconds".into(), json!(secs));
    out.insert("tokens_per_second".into(), json!(tps));
    Ok(report)
}
