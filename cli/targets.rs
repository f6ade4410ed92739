//! `kiln targets [ID] [--json] [--target-file FILE.toml] [--measure]`: the
//! accelerator profiles kiln knows, and one of them with the source of every
//! figure.
//!
//! What must stay true: the list is the built-in profiles, then the `cpu`
//! profile of this host, then any `--target-file` (which replaces a built-in
//! of the same id, with a warning); a figure that is unknown prints as `?`,
//! never as a number. The profiles are `planner::targets`; this command
//! prints them, and resolves `--target` for the other commands.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use passes::cost::Target;
use planner::targets::{all_targets, detail_text, list_text, target_json};

use crate::common::lift_plan;
use crate::printer::Bars;
use crate::Printer;

#[derive(Args, Debug)]
pub struct TargetsArgs {
    /// Show one target with the source of each figure (ids as listed; `cpu` is this host).
    pub id: Option<String>,
    /// Print JSON to stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Add a profile from a TOML file (the schema of targets/*.toml); may be repeated.
    #[arg(long, value_name = "FILE.toml")]
    pub target_file: Vec<PathBuf>,
    /// Measure this host's memory read bandwidth for the `cpu` profile (about a second).
    #[arg(long)]
    pub measure: bool,
}

/// The profile `id`, from the files, the built-ins or the host.
pub fn resolve(id: &str, files: &[PathBuf], measure: bool, printer: &Printer) -> Result<Target> {
    planner::targets::resolve(id, files, measure, &Bars::new(printer)).map_err(lift_plan)
}

pub fn run(args: &TargetsArgs, printer: &Printer) -> Result<()> {
    if let Some(id) = &args.id {
        let t = resolve(id, &args.target_file, args.measure, printer)?;
        if args.json {
            printer.data(&serde_json::to_string_pretty(&target_json(&t)?)?);
        } else {
            printer.data(&detail_text(&t));
        }
        return Ok(());
    }
    let (all, warnings) =
        all_targets(&args.target_file, args.measure, &Bars::new(printer)).map_err(lift_plan)?;
    for w in &warnings {
        printer.warn(w);
    }
    if all.is_empty() {
        bail!("no targets");
    }
    if args.json {
        let all: Vec<serde_json::Value> = all
            .iter()
            .map(target_json)
            .collect::<serde_json::Result<_>>()?;
        printer.data(&serde_json::to_string_pretty(&all)?);
    } else {
        printer.data(&list_text(&all));
    }
    Ok(())
}
