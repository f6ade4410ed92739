//! The planner's options as plain data (the CLI's argument structs convert
//! into these), checked once, and the engine and workload they name.
//!
//! What must stay true: every refusal names the option and the value given,
//! in the words of the command line (`--budget-gb`, `--kv-type`, ...).

use std::path::PathBuf;

use passes::cost::{Batch, Engine, KvType, Workload};
use quant::GgmlType;

use crate::error::{Error, Result};

/// Values measured per tensor by default (`--sample`): 512 Ki values, e.g. 256
/// rows of a 2048-wide tensor, evenly strided. Sized so that measuring a
/// 1-2B model's every tensor in all 13 candidates takes about a minute on 2
/// cores (it was 4 Mi, about 8x longer); what sampling costs in accuracy is
/// measured in the README ("How kiln plans").
pub const DEFAULT_SAMPLE: usize = 1 << 19;

/// Options shared by `build` and `plan`: serving, budget, texts, measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    /// Serving engine name (kiln writes GGUF, which llama.cpp serves).
    pub engine: String,
    /// KV cache slots reserved per sequence.
    pub context: usize,
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
}

impl Default for PlanOptions {
    /// The command line's defaults.
    fn default() -> PlanOptions {
        PlanOptions {
            engine: "llama.cpp".into(),
            context: 4096,
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
    if !(o.min_bpw.is_finite() && o.min_bpw >= 0.0) {
        return bad("--min-bpw must be at least 0".into());
    }
    if o.ctx < 8 {
        return bad("--ctx must be at least 8 tokens".into());
    }
    Ok(())
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

/// The serving workload the budget is sized for.
pub fn workload(o: &PlanOptions) -> Result<Workload> {
    let kv_type = KvType::parse(&o.kv_type).ok_or_else(|| {
        Error::Options(format!(
            "unknown KV type `{}` (known: f16, bf16, q8_0, q4_0)",
            o.kv_type
        ))
    })?;
    if o.concurrency == 0 || o.context == 0 {
        return Err(Error::Options(
            "--context and --concurrency must be at least 1".into(),
        ));
    }
    Ok(Workload {
        batch: Batch::Fixed(o.concurrency),
        context: Some(o.context),
        prompt: 512.min(o.context),
        gen: 128.min(o.context),
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
        assert!(workload(&o).is_err());
    }
}
