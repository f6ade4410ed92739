//! The planner's options as plain data (the CLI's argument structs convert
//! into these), checked once, and the engine and workload they name.
//!
//! What must stay true: every refusal names the option and the value given,
//! in the words of the command line (`--budget-gb`, `--kv-type`, ...).

use std::path::PathBuf;

use passes::arch::limits::MAX_CONTEXT;
use passes::cost::{Batch, Engine, KvType, Workload};
use quant::GgmlType;

use crate::error::{Error, Result};

/// Values measured per tensor by default (`--sample`): 512 Ki values, e.g. 256
/// rows of a 2048-wide tensor, evenly strided. Sized so that measuring a
/// 1-2B model's every tensor in all 13 candidates takes about a minute on 2
/// cores (it was 4 Mi, about 8x longer); what sampling costs in accuracy is
/// measured in the README ("How kiln plans").
pub const DEFAULT_SAMPLE: usize = 1 << 19;

/// KV cache slots per sequence when `--context` is not given, or the
/// model's trained context (`max_position_embeddings`) when that is shorter:
/// a default should not size the cache past what the model was trained for.
pub const DEFAULT_CONTEXT: usize = 4096;

/// Options shared by `build` and `plan`: serving, budget, texts, measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    /// Serving engine name: llama.cpp (GGUF), vllm or trt-llm (compressed-tensors).
    pub engine: String,
    /// KV cache slots reserved per sequence; `None`: the model's trained
    /// context, at most [`DEFAULT_CONTEXT`] (see [`workload`]).
    pub context: Option<usize>,
    /// Sequences served at once.
    pub concurrency: usize,
    /// KV cache type name: f16, bf16, q8_0 or q4_0.
    pub kv_type: String,
    /// Bytes of model file per device, in GB (10^9), instead of the target's memory.
    pub budget_gb: Option<f64>,
    /// Bits per weight over all parameters, instead of the target's memory.
    pub bpw: Option<f64>,
    /// Below this average bits per weight on one device, shard across more devices (0: never).
    pub min_bpw: f64,
    /// Importance matrix file.
    pub imatrix: Option<PathBuf>,
    /// Calibration text (imatrix collection, probing; its last quarter held out).
    pub text: Option<PathBuf>,
    /// Use the text only to probe and measure, not to collect an importance matrix.
    pub no_imatrix: bool,
    /// Text to measure the result on.
    pub eval_text: Option<PathBuf>,
    /// Tokens per text window.
    pub ctx: usize,
    /// Calibration windows used at most.
    pub chunks: usize,
    /// Calibration windows used to probe sensitivities.
    pub probe_chunks: usize,
    /// Held-out windows used to measure accuracy.
    pub eval_chunks: usize,
    /// Values measured per tensor at most.
    pub sample: usize,
    /// Types left out of the candidates.
    pub exclude_type: Vec<GgmlType>,
    /// Dequantize and requantize tensors already quantized in a GGUF input.
    pub allow_requantize: bool,
    /// llama.cpp pre-tokenizer name for a tokenizer kiln cannot name.
    pub pre_tokenizer: Option<String>,
    /// Pruning options weighed beside bit allocations (`crate::prune`);
    /// empty (the default): none, and nothing about pruning is written.
    pub prune_candidates: crate::prune::PruneCandidates,
}

impl Default for PlanOptions {
    /// The command line's defaults.
    fn default() -> PlanOptions {
        PlanOptions {
            engine: "llama.cpp".into(),
            context: None,
            concurrency: 1,
            kv_type: "f16".into(),
            budget_gb: None,
            bpw: None,
            min_bpw: 3.0,
            imatrix: None,
            text: None,
            no_imatrix: false,
            eval_text: None,
            ctx: 512,
            chunks: 16,
            probe_chunks: 2,
            eval_chunks: 8,
            sample: DEFAULT_SAMPLE,
            exclude_type: Vec::new(),
            allow_requantize: false,
            pre_tokenizer: None,
            prune_candidates: Default::default(),
        }
    }
}

/// Objective of the allocation. The default is [`Objective::Cost`]: the
/// cheapest artifact that is still good enough (the fewest bytes whose
/// predicted KL divergence is no worse than llama.cpp's Q4_K_M on the same
/// model, or `--max-error`), within the target's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Objective {
    /// Least predicted accuracy loss that fits the budget.
    Accuracy,
    /// Fewest bytes no worse than an error ceiling.
    #[default]
    Cost,
}

impl Objective {
    /// The other objective: what the report offers as the alternative.
    pub fn other(self) -> Objective {
        match self {
            Objective::Accuracy => Objective::Cost,
            Objective::Cost => Objective::Accuracy,
        }
    }

    /// The name the manifest and report use.
    pub fn name(self) -> &'static str {
        match self {
            Objective::Accuracy => "accuracy",
            Objective::Cost => "cost",
        }
    }
}

/// Check the numeric options once.
pub fn check(o: &PlanOptions) -> Result<()> {
    let bad = |m: String| Err(Error::Options(m));
    if let Some(b) = o.budget_gb {
        if !(b.is_finite() && b > 0.0) {
            return bad(format!(
                "--budget-gb must be a positive number of GB, not {b}"
            ));
        }
    }
    if let Some(b) = o.bpw {
        if !(b.is_finite() && b > 0.0) {
            return bad(format!(
                "--bpw must be a positive number of bits per weight, not {b}"
            ));
        }
    }
    if o.bpw.is_some() && o.budget_gb.is_some() {
        return bad(
            "--bpw and --budget-gb both size the model file: give one (bits per weight over all parameters, or a size in GB)".into(),
        );
    }
    if !(o.min_bpw.is_finite() && o.min_bpw >= 0.0) {
        return bad("--min-bpw must be at least 0".into());
    }
    if o.ctx < 8 {
        return bad("--ctx must be at least 8 tokens".into());
    }
    // The KV cache is sized from context x concurrency slots: held to the
    // longest context a GGUF can state, so no product of them overflows.
    let context = o.context.unwrap_or(DEFAULT_CONTEXT);
    if context > MAX_CONTEXT {
        return bad(format!(
            "--context {context} is above kiln's cap of {MAX_CONTEXT} tokens (MAX_CONTEXT)"
        ));
    }
    if context
        .checked_mul(o.concurrency)
        .is_none_or(|n| n > MAX_CONTEXT)
    {
        return bad(format!(
            "--context {context} x --concurrency {} KV cache slots is above kiln's cap of {MAX_CONTEXT} (MAX_CONTEXT)",
            o.concurrency
        ));
    }
    Ok(())
}

/// The warning when `--context` exceeds what the model was trained for
/// (`trained`: its `max_position_embeddings`, 0 when unknown).
pub fn context_warning(context: usize, trained: usize) -> Option<String> {
    use formats::human::count;
    (trained > 0 && context > trained).then(|| {
        format!(
            "--context {} is above the {} tokens the model was trained for (its max_position_embeddings): the KV cache is sized for {}, but quality past {} tokens is not what was measured",
            count(context as u64),
            count(trained as u64),
            count(context as u64),
            count(trained as u64)
        )
    })
}

/// The serving engine named, whatever kiln writes for it (`kiln build`
/// writes compressed-tensors for vllm and trt-llm).
pub fn any_engine(o: &PlanOptions) -> Result<Engine> {
    Engine::parse(&o.engine).ok_or_else(|| {
        Error::Options(format!(
            "unknown engine `{}` (known: llama.cpp, vllm, trt-llm)",
            o.engine
        ))
    })
}

/// The serving engine: llama.cpp only, as kiln writes GGUF.
pub fn engine(o: &PlanOptions) -> Result<Engine> {
    let e = Engine::parse(&o.engine).ok_or_else(|| {
        Error::Options(format!(
            "unknown engine `{}` (known: llama.cpp, vllm, trt-llm)",
            o.engine
        ))
    })?;
    if e != Engine::LlamaCpp {
        return Err(Error::Options(format!(
            "--engine {}: kiln build writes GGUF, which llama.cpp serves; compressed-tensors checkpoints for {} are not written yet (use `kiln estimate --engine {}` to cost one)",
            e.name(),
            e.name(),
            e.name()
        )));
    }
    Ok(e)
}

/// The serving workload the budget is sized for, on a model trained for
/// `trained_context` tokens (0: unknown, or not read yet: the options are
/// checked before the model is opened, and sized after).
pub fn workload(o: &PlanOptions, trained_context: usize) -> Result<Workload> {
    let kv_type = KvType::parse(&o.kv_type).ok_or_else(|| {
        Error::Options(format!(
            "--kv-type `{}`: unknown KV type (known: f16, bf16, q8_0, q4_0; fp8 with --engine vllm or trt-llm)",
            o.kv_type
        ))
    })?;
    if kv_type == KvType::Fp8 && Engine::parse(&o.engine) == Some(Engine::LlamaCpp) {
        return Err(Error::Options(format!(
            "--kv-type {}: llama.cpp has no FP8 KV cache (f16, bf16, q8_0, q4_0); fp8 is for --engine vllm or trt-llm",
            o.kv_type
        )));
    }
    if o.concurrency == 0 || o.context == Some(0) {
        return Err(Error::Options(
            "--context and --concurrency must be at least 1".into(),
        ));
    }
    let context = o.context.unwrap_or(match trained_context {
        0 => DEFAULT_CONTEXT,
        t => t.min(DEFAULT_CONTEXT),
    });
    Ok(Workload {
        batch: Batch::Fixed(o.concurrency),
        context: Some(context),
        prompt: 512.min(context),
        gen: 128.min(context),
        kv_type,
        devices: None,
        tensor_parallel: None,
        engine_version: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_bad_numbers_name_their_option() {
        assert!(check(&PlanOptions::default()).is_ok());
        let o = PlanOptions {
            budget_gb: Some(-1.0),
            ..PlanOptions::default()
        };
        assert!(check(&o).unwrap_err().to_string().contains("--budget-gb"));
        let o = PlanOptions {
            ctx: 4,
            ..PlanOptions::default()
        };
        assert!(check(&o).unwrap_err().to_string().contains("--ctx"));
        for (context, concurrency, flag) in [
            (MAX_CONTEXT + 1, 1, "--context 4294967296 is above"),
            (1 << 31, 2, "--context 2147483648 x --concurrency 2"),
            (
                usize::MAX,
                usize::MAX,
                "--context 18446744073709551615 is above",
            ),
        ] {
            let o = PlanOptions {
                context: Some(context),
                concurrency,
                ..PlanOptions::default()
            };
            let e = check(&o).unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
        let o = PlanOptions {
            context: Some(100_000_000),
            ..PlanOptions::default()
        };
        assert!(
            check(&o).is_ok(),
            "long but representable: a warning, not a refusal"
        );
        let o = PlanOptions {
            engine: "vllm".into(),
            ..PlanOptions::default()
        };
        assert!(engine(&o)
            .unwrap_err()
            .to_string()
            .contains("--engine vllm"));
        let o = PlanOptions {
            kv_type: "q3".into(),
            ..PlanOptions::default()
        };
        assert!(workload(&o, 0).is_err());
        // Without --context: the trained context, at most 4,096.
        let o = PlanOptions::default();
        for (trained, want) in [(0, 4096), (512, 512), (2048, 2048), (131072, 4096)] {
            assert_eq!(workload(&o, trained).unwrap().context, Some(want));
        }
        let o = PlanOptions {
            context: Some(100_000),
            ..PlanOptions::default()
        };
        assert_eq!(workload(&o, 512).unwrap().context, Some(100_000));
    }
}
