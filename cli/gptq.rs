//! `kiln convert M --format compressed-tensors --scheme W4A16 --gptq --text T
//! -o OUT`: the integer schemes rounded by GPTQ (`eval::gptq`) instead of to
//! nearest, as llm-compressor's `GPTQModifier` writes them; and `kiln convert
//! M -t Q4_K_M --gptq --text T -o OUT.gguf`: GGUF block types rounded by GPTQ
//! with ggml's encoders choosing the block scales (`eval::gguf_gptq`,
//! [`round_gguf`], [`GptqGguf`]).
//!
//! As llm-compressor 0.14: every group's scale and zero point come from the
//! original weights' min and max (the weight observer runs before GPTQ, the
//! same `memoryless_minmax` values the data-free preset stores); GPTQ then
//! chooses each weight's integer code on that grid, columns in act-order
//! (`actorder: static`, an alias of `weight`: the order changes, the
//! groups do not, so no `weight_g_idx` is stored); the calibration text is
//! cut into `--gptq-samples` windows of `--gptq-ctx` tokens (BOS first), and
//! blocks are calibrated one after another on the outputs of the blocks
//! already rounded.
//!
//! What must stay true: the stored codes are GPTQ's codes and the stored
//! scales and zero points the original weights' (the row encoders of
//! `formats::ct` are not used for rounded tensors: [`GptqCt`] wraps the
//! container and encodes those pieces from the rounded table by row index);
//! rows are mapped from the forward pass's GGUF layout (llama q/k rows
//! permuted) back to the checkpoint's.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use clap::Args;
use eval::ct_gptq::CtRounded;
use eval::gptq::Options;
use passes::{Encoding, Model};
use quant::IntSpec;

use eval::rounded::{GgufRounded, RoundedSet, Spill};

use crate::common::{cancel_flag, lift, load_options};
use crate::Printer;

/// GPTQ options of `convert`.
#[derive(Args, Debug, Clone)]
pub struct GptqArgs {
    /// Round the weights with GPTQ (error feedback through each layer's
    /// input Hessian from --text) instead of to nearest: compressed-tensors
    /// integer schemes (W4A16, W4A16_ASYM, W8A16, W8A8), as llm-compressor's GPTQModifier,
    /// and GGUF legacy and K-quant types (ggml's encoders choose each block's scales).
    #[arg(long, requires = "text")]
    pub gptq: bool,
    /// Calibration windows (samples) for --gptq [default: 128, or every window the text fills if fewer].
    #[arg(long, value_name = "N", requires = "gptq")]
    pub gptq_samples: Option<usize>,
    /// Tokens per calibration window.
    #[arg(long, value_name = "N", default_value_t = 512, requires = "gptq")]
    pub gptq_ctx: usize,
    /// Column order of GPTQ: `static` (descending Hessian diagonal,
    /// llm-compressor's default) or `none` (left to right) [default: static
    /// for compressed-tensors; GGUF output is always rounded left to right].
    #[arg(long, value_name = "ORDER", value_parser = ["static", "none"], requires = "gptq")]
    pub actorder: Option<String>,
    /// Damping, as a fraction of the mean Hessian diagonal.
    #[arg(long, value_name = "F", default_value_t = 0.01, requires = "gptq")]
    pub dampening_frac: f64,
}

impl GptqArgs {
    /// `--actorder` as given, or its default for the output format
    /// (`static`; GGUF output refuses it and rounds left to right).
    pub fn actorder(&self) -> &str {
        self.actorder.as_deref().unwrap_or("static")
    }

    /// `--actorder` for GGUF output: `none` unless given.
    pub fn actorder_gguf(&self) -> &str {
        self.actorder.as_deref().unwrap_or("none")
    }
}

/// Run GPTQ over `model`'s Linears that have an integer encoding
/// (`model` as `formats::ct::assign` left it, Hugging Face names), keyed by
/// source tensor name (`eval::ct_gptq::round`).
pub fn round_ct(
    args: &crate::convert::ConvertArgs,
    model: &Model,
    packed: bool,
    printer: &Printer,
) -> Result<RoundedSet<CtRounded>> {
    let g = &args.gptq;
    let text_path = args
        .text
        .as_ref()
        .expect("clap requires --text with --gptq");
    let opened = eval::open(&args.model, &load_options(&args.pre_tokenizer)).map_err(lift)?;
    let wanted: BTreeMap<String, (IntSpec, bool)> = model
        .tensors
        .iter()
        .filter_map(|t| match t.encoding {
            Some(Encoding::Int(spec)) => Some((t.source_name.clone(), (spec, packed))),
            _ => None,
        })
        .collect();
    let windows = calibration_windows(args, &opened)?;
    let blocks = eval::stream::Streamed::new(&opened)
        .map_err(lift)?
        .n_layer();
    printer.info(&format!(
        "gptq: {} tensors, {} windows of {} tokens from {}",
        wanted.len(),
        windows.len(),
        g.gptq_ctx,
        text_path.display()
    ));
    let opts = Options {
        block: 128,
        percdamp: g.dampening_frac,
        actorder: g.actorder() == "static",
    };
    let spill = Spill::beside(args.output.as_deref()).map_err(lift)?;
    let cancel = cancel_flag();
    let bar = printer.count_bar(blocks as u64, "gptq", "blocks");
    let progress = |n: usize| bar.set_position(n as u64);
    let r = eval::ct_gptq::round(&opened, &wanted, &windows, &opts, spill, &progress, &cancel);
    bar.finish_and_clear();
    r.map_err(lift).with_context(|| opened.name())
}

/// The calibration windows of `--text` for the model `opened`.
fn calibration_windows(
    args: &crate::convert::ConvertArgs,
    opened: &eval::model::Opened,
) -> Result<Vec<Vec<u32>>> {
    let g = &args.gptq;
    let text_path = args
        .text
        .as_ref()
        .expect("clap requires --text with --gptq");
    let (_, windows) = crate::common::text_windows(
        opened,
        text_path,
        ("--gptq-ctx", g.gptq_ctx),
        Some(g.gptq_samples.unwrap_or(128).max(1)),
    )?;
    Ok(windows)
}

/// Run GPTQ onto the GGUF types `model` (after the recipe and importance
/// passes) gives its 2-D weights, keyed by source tensor name: every tensor
/// the forward pass's blocks read whose type GPTQ can round onto
/// (`eval::gguf_gptq::supports`) and whose bytes are not copied from the
/// source. Columns left to right (no act-order).
pub fn round_gguf(
    args: &crate::convert::ConvertArgs,
    model: &Model,
    printer: &Printer,
) -> Result<RoundedSet<GgufRounded>> {
    let g = &args.gptq;
    let opened = eval::open(&args.model, &load_options(&args.pre_tokenizer)).map_err(lift)?;
    let importance = model.importance.as_ref().map(|i| &i.vectors);
    // Source name -> (type, the convert model's name for its importance).
    let wanted: BTreeMap<&str, (quant::GgmlType, &str)> = model
        .tensors
        .iter()
        .filter(|t| t.shape.len() == 2 && t.ggml_type() != Some(t.source.dtype.ggml()))
        .filter_map(|t| {
            let ty = t.ggml_type()?;
            eval::gguf_gptq::supports(ty).then_some((t.source_name.as_str(), (ty, t.name.as_str())))
        })
        .collect();
    let mut types = BTreeMap::new();
    let mut imp = BTreeMap::new();
    for t in &opened.loaded.model.tensors {
        if let Some(&(ty, name)) = wanted.get(t.source_name.as_str()) {
            types.insert(t.name.clone(), ty);
            if let Some(v) = importance.and_then(|m| m.get(name)) {
                imp.insert(t.name.clone(), v.clone());
            }
        }
    }
    let windows = calibration_windows(args, &opened)?;
    let blocks = eval::stream::Streamed::new(&opened)
        .map_err(lift)?
        .n_layer();
    printer.info(&format!(
        "gptq: up to {} tensors, {} windows of {} tokens from {}",
        types.len(),
        windows.len(),
        g.gptq_ctx,
        args.text.as_ref().expect("clap requires --text").display()
    ));
    let spill = Spill::beside(args.output.as_deref()).map_err(lift)?;
    let cancel = cancel_flag();
    let bar = printer.count_bar(blocks as u64, "gptq", "blocks");
    let progress = |n: usize| bar.set_position(n as u64);
    let r = eval::rounded::round_onto(
        &opened,
        types,
        &imp,
        &windows,
        g.dampening_frac,
        spill,
        &progress,
        &cancel,
    );
    bar.finish_and_clear();
    let rounded = r.map_err(lift).with_context(|| opened.name())?;
    for t in &model.tensors {
        if let Some(r) = rounded.tensors.get(&t.source_name) {
            if (t.n_rows(), t.row_len()) != (r.rows, r.cols) {
                anyhow::bail!(
                    "{}: tensor `{}`: the forward pass reads it as {} x {}, the output lays it out otherwise",
                    opened.name(),
                    passes::printable(&t.name),
                    r.rows,
                    r.cols
                );
            }
        }
    }
    Ok(rounded)
}
