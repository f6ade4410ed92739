//! `kiln build MODEL --target ID -o OUTDIR`: the main job, as glue. The
//! planner measures every tensor in every candidate encoding, sizes the
//! budget from the target, solves on the fewest devices, writes the GGUF
//! file(s), `manifest.json`, `report.md` and `chart.svg` atomically
//! (`planner::build`); this command parses, calls and prints.
//!
//! What must stay true: stdout is the report (or the manifest with
//! `--json`); progress and the closing line go to stderr.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use crate::common::{cancel_flag, clean_stale, human_bytes, lift_plan, Objective, PlanArgs};
use crate::printer::Bars;
use crate::Printer;

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// A Hugging Face checkpoint directory or a .gguf file.
    pub model: PathBuf,
    /// Target id (see `kiln targets`).
    #[arg(long, short = 'T')]
    pub target: String,
    /// A profile file (the schema of targets/*.toml) whose id --target may name; may be repeated.
    #[arg(long, value_name = "FILE.toml")]
    pub target_file: Vec<PathBuf>,
    /// Output directory (written atomically; replaces a previous kiln build there, refusing if it
    /// holds files that build's manifest does not list).
    #[arg(long, short, value_name = "OUTDIR")]
    pub output: PathBuf,
    /// Replace the previous build in OUTDIR even if it holds files its manifest does not list
    /// (they are deleted). A directory that is not a kiln build is never replaced.
    #[arg(long)]
    pub force: bool,
    /// cost (the default): the cheapest artifact that is still good enough, i.e. the fewest bytes
    /// whose predicted KL divergence is at most --max-error (default: that of llama.cpp's Q4_K_M
    /// on this model); accuracy: the least predicted loss that fits the budget.
    #[arg(long, value_enum, default_value = "cost")]
    pub objective: Objective,
    /// Error ceiling of the cost objective, in predicted KL divergence (nats) [default: the
    /// predicted KL divergence of llama.cpp's Q4_K_M on this model].
    #[arg(long, value_name = "X")]
    pub max_error: Option<f64>,
    /// Model file name (without .gguf) [default: the input's name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Print the manifest to stdout as JSON.
    #[arg(long)]
    pub json: bool,
    /// Weigh GPTQ rounding (error feedback through each layer's input Hessian, on the
    /// calibration windows of --text). GGUF: GPTQ's gain measured per tensor and type, the
    /// plan allocated over both ways of rounding within its bytes, GPTQ-rounded where chosen;
    /// compressed-tensors: the plan's integer Linears GPTQ-rounded. Either way measured on the
    /// held-out windows beside the plan rounded to nearest and built only if it measures lower
    /// KL divergence (with --prune-candidates, of the plan that wins, pruned or not).
    #[arg(long)]
    pub gptq: bool,
    /// GPTQ's damping, as a fraction of the mean Hessian diagonal.
    #[arg(long, value_name = "F", default_value_t = 0.01, requires = "gptq")]
    pub dampening_frac: f64,
    #[command(flatten)]
    pub plan: PlanArgs,
}

/// Refuse an engine the target does not list among its runtimes (llama.cpp
/// is always possible: kiln writes GGUF for it).
pub fn check_engine(target: &passes::cost::Target, engine: passes::cost::Engine) -> Result<()> {
    if engine != passes::cost::Engine::LlamaCpp && target.runtime_for(engine.name()).is_none() {
        anyhow::bail!(
            "--engine {}: `{}` does not list it among its runtimes ({}); kiln build writes GGUF for llama.cpp, and compressed-tensors for the runtimes a target lists (see `kiln targets {}`)",
            engine.name(),
            target.id,
            if target.runtimes.is_empty() {
                "none listed".to_string()
            } else {
                target.runtimes.keys().cloned().collect::<Vec<_>>().join(", ")
            },
            target.id
        );
    }
    Ok(())
}

/// Refuse `--gptq` where it is not weighed: without a text, or with a
/// damping that is not a fraction.
pub fn check_gptq(args: &BuildArgs, options: &planner::PlanOptions) -> Result<()> {
    if !args.gptq {
        return Ok(());
    }
    if options.text.is_none() {
        anyhow::bail!("--gptq needs --text: GPTQ is calibrated on its windows and measured on the held-out ones");
    }
    if !(args.dampening_frac.is_finite() && args.dampening_frac > 0.0 && args.dampening_frac < 1.0)
    {
        anyhow::bail!(
            "--dampening-frac {}: expected a fraction between 0 and 1 (exclusive)",
            args.dampening_frac
        );
    }
    Ok(())
}

/// Refuse a GGUF for the compressed-tensors engines before anything is
/// read or measured: they write from a Hugging Face checkpoint directory.
pub fn check_ct_input(model: &std::path::Path, engine: passes::cost::Engine) -> Result<()> {
    if engine != passes::cost::Engine::LlamaCpp && !model.is_dir() {
        anyhow::bail!(
            "{}: --engine {} writes compressed-tensors, from a Hugging Face checkpoint directory (config.json and safetensors), not from a GGUF",
            model.display(),
            engine.name()
        );
    }
    Ok(())
}

pub fn run(args: &BuildArgs, printer: &Printer) -> Result<()> {
    let t0 = Instant::now();
    clean_stale(&args.output, printer);
    let options = args.plan.options()?;
    planner::options::check(&options).map_err(lift_plan)?;
    let target = crate::targets::resolve(&args.target, &args.target_file, false, printer)?;
    let engine = planner::options::any_engine(&options).map_err(lift_plan)?;
    check_engine(&target, engine)?;
    check_ct_input(&args.model, engine)?;
    if engine != passes::cost::Engine::LlamaCpp {
        planner::ct_build::legal(&target, engine.name()).map_err(lift_plan)?;
    }
    check_gptq(args, &options)?;
    planner::prune::check(&options).map_err(lift_plan)?;
    // Checked now, sized once the model's trained context is known.
    planner::options::workload(&options, 0).map_err(lift_plan)?;
    let build = planner::BuildOptions {
        model: args.model.clone(),
        output: args.output.clone(),
        force: args.force,
        name: args.name.clone(),
        objective: args.objective.into(),
        max_error: args.max_error,
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        gptq: args.gptq.then_some(planner::gptq::GptqOptions {
            dampening_frac: args.dampening_frac,
        }),
    };
    planner::build::check(&build).map_err(lift_plan)?;
    let cancel = cancel_flag();
    let bars = Bars::new(printer);
    // Its warnings were printed as they were found, before measuring.
    let setup = planner::setup(&args.model, &options, &bars, &cancel).map_err(lift_plan)?;
    let workload =
        planner::options::workload(&options, setup.arch.context_length).map_err(lift_plan)?;
    let sizing = planner::Sizing {
        options: &options,
        target: &target,
        engine,
        workload: &workload,
    };
    if engine != passes::cost::Engine::LlamaCpp {
        // vLLM and TensorRT-LLM load compressed-tensors: chosen per layer
        // among the schemes the target's runtime runs natively.
        let built =
            planner::ct_build::build(&setup, &sizing, engine.name(), &build, &bars, &cancel)
                .map_err(lift_plan)?;
        if args.json {
            printer.data(&built.manifest_json);
        } else {
            printer.data(built.report.trim_end());
        }
        printer.info(&format!(
            "wrote {} (compressed-tensors, {} of tensors) in {:.1}s",
            args.output.display(),
            human_bytes(built.actual_bytes),
            t0.elapsed().as_secs_f64()
        ));
        return Ok(());
    }
    let built = planner::build(&setup, &sizing, &build, &bars, &cancel).map_err(lift_plan)?;
    if args.json {
        printer.data(&built.manifest_json);
    } else {
        printer.data(built.report.trim_end());
    }
    let passes: Vec<String> = built
        .passes
        .iter()
        .map(|p| format!("{} {:.3} ms", p.pass, p.seconds * 1e3))
        .collect();
    printer.info(&format!("passes: {}", passes.join(", ")));
    printer.info(&format!(
        "wrote {} ({} in {} file(s)) in {:.1}s",
        args.output.display(),
        human_bytes(built.actual_bytes),
        built.model_files,
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}
