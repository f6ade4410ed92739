//! kiln's command line: argument parsing, printing, progress and exit codes.
//! Glue only: the work is in the `planner`, `eval`, `formats`, `passes` and
//! `quant` crates.
//!
//! Exit codes are decided in one place, [`exit_code`]: 0 success, 1 a check
//! failed, 2 bad input or usage, 128 + N stopped by signal N (130 Ctrl-C,
//! 143 SIGTERM, 129 SIGHUP).

mod build;
mod ci;
mod ci_manifest;
mod common;
mod convert;
mod convert_ct;
mod estimate;
mod eval;
mod gptq;
mod imatrix;
mod inspect;
mod plan;
mod printer;
mod prune;
mod targets;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

pub use printer::Printer;

const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    a check failed (an accuracy or cost gate, a verification)
  2    bad input or usage (unreadable or malformed model, unknown option, refused output path)
  130  interrupted (no output file is left behind); 143 on SIGTERM, 129 on SIGHUP";

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "kiln: turn a trained model into the cheapest artifact that is still good enough, per target",
    after_help = EXIT_CODES,
)]
struct Cli {
    /// No progress bars or status messages (warnings and errors still go to stderr).
    #[arg(long, short, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The main job: plan every tensor's encoding for a target's memory and serving budget, write
    /// the GGUF artifact(s), manifest.json, report.md and chart.svg.
    #[command(after_help = EXIT_CODES)]
    Build(build::BuildArgs),
    /// Compare kiln's plan with llama.cpp's recipes per target (size, fits, speed, $, accuracy), writing nothing.
    #[command(after_help = EXIT_CODES)]
    Plan(plan::PlanCmdArgs),
    /// Show a model's architecture, tensors (name, shape, dtype, bytes), totals and metadata.
    #[command(after_help = EXIT_CODES)]
    Inspect(inspect::InspectArgs),
    /// Convert a model to a GGUF file of one type (streaming, atomic, deterministic).
    #[command(
        after_help = EXIT_CODES,
        override_usage = "kiln convert <MODEL> --type <TYPE> -o <OUT.gguf> [OPTIONS]\n       kiln convert <MODEL> --type <TYPE> --dry-run [OPTIONS]"
    )]
    Convert(convert::ConvertArgs),
    /// List the accelerator profiles (memory, bandwidth, peaks, power, price), or show one with its sources.
    #[command(after_help = EXIT_CODES)]
    Targets(targets::TargetsArgs),
    /// Estimate memory, speed, $ and energy of serving a model on a target (roofline bound + calibrated estimate).
    #[command(after_help = EXIT_CODES)]
    Estimate(estimate::EstimateArgs),
    /// Measure accuracy: weight error, perplexity, KL divergence, top-1 agreement; CI gates.
    #[command(after_help = EXIT_CODES)]
    Eval(eval::EvalArgs),
    /// Collect an importance matrix over a text, in llama.cpp's GGUF imatrix layout.
    #[command(after_help = EXIT_CODES)]
    Imatrix(imatrix::ImatrixArgs),
    /// CI mode: build every artifact a manifest (kiln.toml) lists, check its gates, write
    /// OUT/summary.json and summary.md; list, shard and merge the work for other machines.
    #[command(after_help = EXIT_CODES)]
    Ci(ci::CiArgs),
}

/// A check the user asked for failed (exit code 1).
#[derive(Debug)]
pub struct CheckFailed(pub String);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for CheckFailed {}

/// Map an error chain to an exit code: a [`CheckFailed`] anywhere means 1,
/// an interruption 128 + the signal's number (130 for Ctrl-C), everything
/// else is bad input (2).
fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<CheckFailed>().is_some() {
            return 1;
        }
        if let Some(formats::Error::Interrupted) = cause.downcast_ref::<formats::Error>() {
            return 128 + common::cancel_signal().unwrap_or(2) as u8;
        }
    }
    2
}

/// A usage error as one line: clap's message without its usage block and
/// hint, the required arguments it lists joined, and where help is.
fn usage_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut parts: Vec<&str> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    let msg = parts.join(" ");
    // `kiln build --help` when the first word names a command, else `kiln --help`.
    let cmd = std::env::args()
        .nth(1)
        .filter(|c| Cli::command().find_subcommand(c).is_some())
        .map_or(String::new(), |c| format!("{c} "));
    format!("{msg} (see `kiln {cmd}--help`)")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            eprintln!("error: {}", usage_line(&e));
            return ExitCode::from(2);
        }
    };
    let printer = Printer::new(cli.quiet);
    let result = match &cli.command {
        Command::Build(args) => build::run(args, &printer),
        Command::Inspect(args) => inspect::run(args, &printer),
        Command::Plan(args) => plan::run(args, &printer),
        Command::Convert(args) => convert::run(args, &printer),
        Command::Targets(args) => targets::run(args, &printer),
        Command::Estimate(args) => estimate::run(args, &printer),
        Command::Eval(args) => eval::run(args, &printer),
        Command::Imatrix(args) => imatrix::run(args, &printer),
        Command::Ci(args) => ci::run(args, &printer),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the chain joined, outermost first.
            let msg: Vec<String> = err.chain().map(|c| c.to_string()).collect();
            // Names from input files are data: escaped, so the line stays one line.
            eprintln!("error: {}", passes::printable(&msg.join(": ")));
            ExitCode::from(exit_code(&err))
        }
    }
}
