//! `kiln estimate MODEL --target ID [...]`: memory, speed, cost and energy of
//! serving a model on a target, as a roofline bound and a calibrated central
//! estimate with a band (the model is `passes::cost`).
//!
//! What must stay true: MODEL may be a checkpoint directory, just a
//! `config.json` (so a 405B model is estimated without its weights), a
//! `.safetensors` file next to its `config.json`, or a GGUF (whose own tensor
//! types are costed unless `--type` is given); the JSON keys listed in
//! `planner::estimate::json` are stable; anything the model does not cover is stated in
//! `notes`, never silently dropped. The work is `planner::estimate`; this
//! command parses, calls and prints.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use passes::arch::limits::MAX_CONTEXT;
use planner::estimate::{self, EstimateOptions};

use crate::common::lift_plan;
use crate::Printer;

#[derive(Args, Debug)]
pub struct EstimateArgs {
    /// A Hugging Face checkpoint directory or its config.json alone, a .safetensors file (with a
    /// config.json beside it), or a .gguf file.
    pub model: PathBuf,
    /// Target id (see `kiln targets`); `cpu` is this host.
    #[arg(long, short = 'T')]
    pub target: String,
    /// A profile file (the schema of targets/*.toml) whose id --target may name; may be repeated.
    #[arg(long, value_name = "FILE.toml")]
    pub target_file: Vec<PathBuf>,
    /// Serving engine: llama.cpp, vllm or trt-llm [default: llama.cpp for GGUF types, else vllm
    /// (or what the target lists)].
    #[arg(long)]
    pub engine: Option<String>,
    /// llama.cpp build generation the speed is modelled for: 2024, 2025, or a build number
    /// such as b2843 (builds before b4000 are 2024) [default: 2025].
    #[arg(long, value_name = "VERSION")]
    pub engine_version: Option<String>,
    /// Weight type: a llama.cpp recipe (Q4_K_M, Q8_0, Q2_K, ...) or a serving format (f16, bf16,
    /// fp8, int8, int4, fp4, mxfp4) [default: the model's own types or dtype].
    #[arg(
        long = "type",
        short = 't',
        value_name = "TYPE",
        conflicts_with = "scheme"
    )]
    pub ty: Option<String>,
    /// A compressed-tensors scheme, as llm-compressor names it (W4A16, W4A16_ASYM, W8A16, W8A8,
    /// FP8, FP8_DYNAMIC, FP8_BLOCK, NVFP4A16, NVFP4, MXFP4): its exact stored bytes, and its
    /// activation precision for prefill; refused where the target's runtime does not run it.
    #[arg(long, value_name = "SCHEME")]
    pub scheme: Option<String>,
    /// Group size of W4A16, W4A16_ASYM and W8A16: 32, 64, 128 (default) or 0 for per channel.
    #[arg(long, value_name = "N", requires = "scheme")]
    pub group_size: Option<u32>,
    /// Sequences served together, or `max` for the largest batch that fits.
    #[arg(long, default_value = "1")]
    pub batch: String,
    /// KV cache slots reserved per sequence [default: prompt + gen].
    #[arg(long)]
    pub context: Option<usize>,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 512)]
    pub prompt: usize,
    /// Generated tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub gen: usize,
    /// KV cache type: f16, bf16, q8_0, q4_0 or fp8.
    #[arg(long, default_value = "f16")]
    pub kv_type: String,
    /// Devices in total [default: the fewest that fit, as one tensor-parallel group].
    #[arg(long)]
    pub devices: Option<usize>,
    /// Tensor-parallel group size; devices / tp replicas serve in parallel [default: all devices].
    #[arg(long)]
    pub tp: Option<usize>,
    /// Print JSON to stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// With --target cpu: measure this host's memory bandwidth first (about a second).
    #[arg(long)]
    pub measure: bool,
    /// Speculative decoding is planned (not modelled: the estimate says so).
    #[arg(long)]
    pub speculative: bool,
    /// Requests per second arriving (queueing is not modelled: the estimate says so).
    #[arg(long, value_name = "RPS")]
    pub request_rate: Option<f64>,
}

/// Refuse token counts past [`MAX_CONTEXT`]: the cost model multiplies them
/// (prompt + gen, batch x context x KV bytes), and no engine indexes more
/// positions than a u32 holds.
fn check_tokens(args: &EstimateArgs) -> Result<()> {
    let mut counts = vec![("--prompt", args.prompt), ("--gen", args.gen)];
    counts.extend(args.context.map(|c| ("--context", c)));
    for (flag, n) in counts {
        if n > MAX_CONTEXT {
            anyhow::bail!("{flag} {n} is above kiln's cap of {MAX_CONTEXT} tokens (MAX_CONTEXT)");
        }
    }
    if args.context.is_none() && args.prompt + args.gen > MAX_CONTEXT {
        anyhow::bail!(
            "--prompt {} + --gen {} is above kiln's cap of {MAX_CONTEXT} tokens of context (MAX_CONTEXT)",
            args.prompt,
            args.gen
        );
    }
    Ok(())
}

pub fn run(args: &EstimateArgs, printer: &Printer) -> Result<()> {
    check_tokens(args)?;
    let target = crate::targets::resolve(&args.target, &args.target_file, args.measure, printer)?;
    let o = EstimateOptions {
        model: args.model.clone(),
        engine: args.engine.clone(),
        engine_version: args.engine_version.clone(),
        ty: args.ty.clone(),
        scheme: args.scheme.clone(),
        group_size: args.group_size,
        batch: args.batch.clone(),
        context: args.context,
        prompt: args.prompt,
        gen: args.gen,
        kv_type: args.kv_type.clone(),
        devices: args.devices,
        tp: args.tp,
        speculative: args.speculative,
        request_rate: args.request_rate,
    };
    let e = estimate::estimate(&o, &target).map_err(lift_plan)?;
    for w in &e.warnings {
        printer.warn(w);
    }
    let model = args.model.display().to_string();
    if args.json {
        printer.data(&serde_json::to_string_pretty(&estimate::json(
            &e.estimate,
            &model,
            &e.counted_from,
        ))?);
    } else {
        printer.data(&estimate::text(&e.estimate, &model, &e.counted_from));
    }
    Ok(())
}
