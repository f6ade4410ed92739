//! What the commands share: the planning argument group (converted into
//! [`planner::PlanOptions`]), the Ctrl-C flag, turning library errors into
//! anyhow errors that keep their exit code, and small formatters.
//!
//! What must stay true: a `formats::Error` inside a library error stays a
//! cause of its own in the chain, so `main`'s exit code (2 bad input, 130
//! interrupted) is decided from it as before.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use clap::Args;
use quant::GgmlType;

pub use planner::report::human_bytes;
pub use planner::setup::load_options;

/// Options shared by `build` and `plan`.
#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// Serving engine: llama.cpp (a GGUF), or vllm / trt-llm (a compressed-tensors
    /// checkpoint directory, planned per Linear among the schemes the target's runtime
    /// runs natively: vllm also names the TPU, Gaudi, Neuron and Qualcomm backends).
    #[arg(long, default_value = "llama.cpp")]
    pub engine: String,
    /// KV cache slots reserved per sequence [default: the model's trained context
    /// (max_position_embeddings), at most 4096].
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,
    /// Sequences served at once (each with --context KV slots).
    #[arg(long, default_value_t = 1, value_name = "B")]
    pub concurrency: usize,
    /// KV cache type: f16, bf16, q8_0 or q4_0 (llama.cpp); fp8 too with --engine vllm or trt-llm.
    #[arg(long, default_value = "f16", value_name = "T")]
    pub kv_type: String,
    /// Bytes of model file per device, in GB (10^9), instead of the target's memory minus KV cache and overhead.
    #[arg(long, value_name = "X", conflicts_with = "bpw")]
    pub budget_gb: Option<f64>,
    /// Bits per weight over all parameters (file size = X * params / 8), instead of the target's memory.
    #[arg(long, value_name = "X")]
    pub bpw: Option<f64>,
    /// Below this average bits per weight on one device, shard across more devices instead (0: never).
    #[arg(long, default_value_t = 3.0, value_name = "X")]
    pub min_bpw: f64,
    /// Importance matrix (GGUF or legacy .dat from llama-imatrix or kiln imatrix): weights the
    /// measured errors and the quantizers.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Calibration text: collect an importance matrix (unless --imatrix) and probe each tensor
    /// group's sensitivity; its last quarter is held out to measure the result (unless --eval-text).
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Use --text only to probe sensitivities and measure: no importance matrix is collected, and
    /// tensors are quantized without one (as llama-quantize without --imatrix).
    #[arg(long, conflicts_with = "imatrix")]
    pub no_imatrix: bool,
    /// Text to measure perplexity / KL divergence / top-1 of the result on (not used for calibration).
    #[arg(long, value_name = "FILE")]
    pub eval_text: Option<PathBuf>,
    /// Tokens per text window.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub ctx: usize,
    /// Calibration windows used at most (imatrix collection).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub chunks: usize,
    /// Calibration windows used to probe sensitivities.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub probe_chunks: usize,
    /// Held-out windows used to measure accuracy.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub eval_chunks: usize,
    /// Values measured per tensor at most (larger tensors are measured on evenly strided rows;
    /// see README, "How kiln plans", for what sampling costs in accuracy).
    #[arg(long, default_value_t = planner::options::DEFAULT_SAMPLE, value_name = "N")]
    pub sample: usize,
    /// Leave this type out of the candidates (repeatable), e.g. a type the runtime lacks.
    #[arg(long, value_name = "TYPE")]
    pub exclude_type: Vec<GgmlType>,
    /// Dequantize and requantize tensors already quantized in a GGUF input.
    #[arg(long)]
    pub allow_requantize: bool,
    /// llama.cpp pre-tokenizer name, for a Hugging Face model whose tokenizer kiln cannot name.
    #[arg(long, value_name = "NAME")]
    pub pre_tokenizer: Option<String>,
    /// Pruning options to weigh beside bit allocations (repeatable): `auto` (1 and 2 blocks by
    /// block influence, FFN 90% and 75%, half the KV groups where heads allow), a --prune spec
    /// (`layers=auto:1`, `ffn=0.75`, `kv-groups=2`), or `none` (the default). Each gets the
    /// unpruned plan's budget (plus the KV cache it saves, when the budget is the target's
    /// memory) and is measured against the original on the held-out text; one is built only
    /// when it measures better. Needs --text.
    #[arg(long, value_name = "auto|none|SPEC")]
    pub prune_candidates: Vec<String>,
}

impl PlanArgs {
    /// The library's options (`--prune-candidates` parsed: a bad spec is
    /// one `error:` line, exit 2).
    pub fn options(&self) -> anyhow::Result<planner::PlanOptions> {
        let prune_candidates = planner::prune::PruneCandidates::parse(&self.prune_candidates)
            .map_err(|e| lift_plan(planner::Error::Options(e)))?;
        Ok(planner::PlanOptions {
            engine: self.engine.clone(),
            context: self.context,
            concurrency: self.concurrency,
            kv_type: self.kv_type.clone(),
            budget_gb: self.budget_gb,
            bpw: self.bpw,
            min_bpw: self.min_bpw,
            imatrix: self.imatrix.clone(),
            text: self.text.clone(),
            no_imatrix: self.no_imatrix,
            eval_text: self.eval_text.clone(),
            ctx: self.ctx,
            chunks: self.chunks,
            probe_chunks: self.probe_chunks,
            eval_chunks: self.eval_chunks,
            sample: self.sample,
            exclude_type: self.exclude_type.clone(),
            allow_requantize: self.allow_requantize,
            pre_tokenizer: self.pre_tokenizer.clone(),
            prune_candidates,
        })
    }
}

/// Objective of the allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Objective {
    /// Least predicted accuracy loss that fits the budget.
    Accuracy,
    /// Fewest bytes (cheapest to serve) no worse than --max-error, or than llama.cpp's Q4_K_M
    /// (the default).
    Cost,
}

impl From<Objective> for planner::Objective {
    fn from(o: Objective) -> planner::Objective {
        match o {
            Objective::Accuracy => planner::Objective::Accuracy,
            Objective::Cost => planner::Objective::Cost,
        }
    }
}

/// The text at `path` tokenized with `model`'s tokenizer (BOS first where
/// the model adds one) and cut into windows of `ctx` tokens, at most `max`
/// (`None`: every window the text fills), each starting with BOS where the
/// model adds one; with the number of tokens. `flag` names the option that
/// set `ctx` in errors.
pub fn text_windows(
    model: &eval::Opened,
    path: &Path,
    (flag, ctx): (&str, usize),
    max: Option<usize>,
) -> anyhow::Result<(usize, Vec<Vec<u32>>)> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the text", path.display()))?;
    let tok = eval::Tokenizer::from_metadata(&formats::gguf::key_values(&model.loaded.model))
        .map_err(lift)
        .with_context(|| model.name())?;
    let mut ids = Vec::new();
    if tok.add_bos {
        ids.extend(tok.bos);
    }
    ids.extend(tok.encode(&text).map_err(lift)?);
    if ctx < 4 {
        anyhow::bail!("{flag} {ctx} is too small (at least 4 tokens)");
    }
    check_trained_context(model, flag, ctx)?;
    if ids.len() < ctx {
        anyhow::bail!(
            "{}: the text has {} tokens, fewer than one window of {flag} {ctx}; give a longer text or a smaller {flag}",
            path.display(),
            ids.len()
        );
    }
    let windows = eval::text::windows(
        &ids,
        eval::text::Windows {
            ctx,
            max_chunks: max,
        },
        tok.bos.filter(|_| tok.add_bos),
    )
    .map_err(lift)
    .with_context(|| path.display().to_string())?;
    Ok((ids.len(), windows))
}

/// Refuse windows longer than the model's trained context: positions past
/// it are extrapolated, and figures measured there do not describe the model.
pub fn check_trained_context(model: &eval::Opened, flag: &str, ctx: usize) -> anyhow::Result<()> {
    if let Some(n) = planner::setup::trained_context(model).filter(|&n| ctx > n) {
        anyhow::bail!(
            "{flag} {ctx} is longer than {}'s trained context of {n} tokens (positions past it are extrapolated, so the figures would not describe the model); give {flag} {n} or less",
            model.name()
        );
    }
    Ok(())
}

/// An `eval::Error` as an anyhow error, with a `formats::Error` kept as the
/// cause itself so that exit codes (bad input 2, interrupted 130) survive.
pub fn lift(e: eval::Error) -> anyhow::Error {
    match e {
        eval::Error::Formats(f) => f.into(),
        other => other.into(),
    }
}

/// A `planner::Error` as an anyhow error, keeping exit codes as [`lift`].
pub fn lift_plan(e: planner::Error) -> anyhow::Error {
    match e {
        planner::Error::Formats(f) => f.into(),
        planner::Error::Eval(e) => lift(*e),
        other => other.into(),
    }
}

/// The signals that cancel a run as Ctrl-C does: work stops at the next
/// window or block, temp files are removed, the exit code is 128 + N.
#[cfg(unix)]
const CANCEL_SIGNALS: [i32; 3] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
];
#[cfg(not(unix))]
const CANCEL_SIGNALS: [i32; 2] = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];

/// The number of the signal that cancelled the run (0: none yet).
static SIGNAL: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// An output-directory refusal for a command that has no `--force`: the
/// hint to pass it becomes what the command does instead.
/// Any other error is passed on as it is.
pub fn without_force_hint(e: formats::Error) -> anyhow::Error {
    let msg = e.to_string();
    match msg.contains(formats::artifact::FORCE_HINT) {
        true => anyhow::anyhow!(
            "{}",
            msg.replace(
                formats::artifact::FORCE_HINT,
                " (this command deletes nothing it did not write; choose another output)"
            )
        ),
        false => e.into(),
    }
}

/// A cancel flag set by the first SIGINT (Ctrl-C), SIGTERM or SIGHUP; a
/// second one while cleaning up takes the signal's default action.
pub fn cancel_flag() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let signal = SIGNAL.get_or_init(|| Arc::new(AtomicUsize::new(0)));
    for sig in CANCEL_SIGNALS {
        // Handlers run in registration order: the default action only once
        // the flag is already set, then the number is recorded, then the flag.
        let _ = signal_hook::flag::register_conditional_default(sig, cancel.clone());
        let _ = signal_hook::flag::register_usize(sig, signal.clone(), sig as usize);
        let _ = signal_hook::flag::register(sig, cancel.clone());
    }
    cancel
}

/// The signal that cancelled the run, if one did.
pub fn cancel_signal() -> Option<i32> {
    let n = SIGNAL.get()?.load(Ordering::Relaxed);
    (n != 0).then_some(n as i32)
}

/// Remove what killed kiln runs left in the directory `out` is written in
/// (`formats::atomic::clean_stale`), saying what was done.
pub fn clean_stale(out: &Path, printer: &crate::Printer) {
    for line in formats::atomic::clean_stale(&formats::atomic::parent_dir(out)) {
        printer.info(&format!("note: {line}"));
    }
}

/// `134515008` -> `135M` (the one formatter, `formats::human`).
pub use formats::human::params as human_count;

/// `[2048, 576]` -> `2048x576`.
pub use eval::report::shape;
