//! `kiln imatrix MODEL --text FILE -o imatrix.gguf`: the importance matrix of
//! a model over a text (mean squared input activation per input column of every
//! linear weight), written in llama.cpp's GGUF imatrix layout (`<name>.in_sum2`,
//! `<name>.counts`, `imatrix.datasets`, `imatrix.chunk_count`,
//! `imatrix.chunk_size`) so that llama.cpp's tools and kiln's quantizers read it.
//!
//! As llama-imatrix: the text is tokenized once (BOS first when the tokenizer
//! adds one), cut into `--ctx` windows each starting with BOS, and every
//! position of every window is accumulated; only `blk.*` weights unless
//! `--process-output`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use eval::imatrix::Collector;

use crate::common::{cancel_flag, clean_stale, lift, lift_plan, load_options};
use crate::Printer;

#[derive(Args, Debug)]
pub struct ImatrixArgs {
    /// A Hugging Face checkpoint directory or a .gguf file (the unquantized model, ideally).
    pub model: PathBuf,
    /// The calibration text.
    #[arg(long, value_name = "FILE")]
    pub text: PathBuf,
    /// Output path (GGUF imatrix, written atomically).
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub ctx: usize,
    /// Number of windows [default: every window the text fills].
    #[arg(long, value_name = "N")]
    pub chunks: Option<usize>,
    /// Also collect the output projection (output.weight), as llama-imatrix --process-output.
    #[arg(long)]
    pub process_output: bool,
    /// llama.cpp pre-tokenizer name, for a Hugging Face model whose tokenizer kiln cannot name.
    #[arg(long, value_name = "NAME")]
    pub pre_tokenizer: Option<String>,
}

pub fn run(args: &ImatrixArgs, printer: &Printer) -> Result<()> {
    let t0 = Instant::now();
    clean_stale(&args.output, printer);
    let model = eval::open(&args.model, &load_options(&args.pre_tokenizer)).map_err(lift)?;
    formats::write::check_output(&args.output, &model.loaded.model.files)?;
    let (tokens, windows) = crate::common::text_windows(
        &model,
        &args.text,
        ("--ctx", args.ctx),
        args.chunks.filter(|&c| c > 0),
    )?;
    // Checked before the run; blocks are decoded one at a time as it streams.
    let blocks = eval::stream::Streamed::new(&model).map_err(lift)?.n_layer();
    printer.info(&format!(
        "{}: {} tokens, {} windows of {}",
        args.text.display(),
        tokens,
        windows.len(),
        args.ctx
    ));

    let cancel = cancel_flag();
    let mut collector = Collector::new(args.process_output);
    let bar = printer.count_bar(blocks as u64, "collecting", "blocks");
    let progress = |n: usize| bar.set_position(n as u64);
    let r = eval::stream::observe(
        &model,
        &windows,
        &mut collector,
        args.process_output,
        &progress,
        &cancel,
    );
    bar.finish_and_clear();
    r.map_err(lift).with_context(|| model.name())?;

    let dataset = args.text.display().to_string();
    let im =
        planner::to_imatrix(&collector, &dataset, windows.len(), args.ctx).map_err(lift_plan)?;
    let parents = formats::atomic::Parents::create(&formats::atomic::parent_dir(&args.output))?;
    formats::imatrix::write_gguf(&args.output, &im)?;
    parents.keep();
    printer.info(&format!(
        "wrote {} ({} weights, {} windows of {}) in {:.2}s",
        args.output.display(),
        collector.entries.len(),
        windows.len(),
        args.ctx,
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}
