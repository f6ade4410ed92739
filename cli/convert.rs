//! `kiln convert MODEL --type T -o OUT.gguf`: one uniform type, streamed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use formats::emit::{self, EmitOptions};
use formats::tokenizer::TokenizerOptions;
use formats::LoadOptions;
use passes::passes::{encode::Encode, normalize::Normalize};
use quant::GgmlType;
use serde_json::json;

use crate::util::{human_bytes, shape};
use crate::Printer;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// A Hugging Face checkpoint directory or a .gguf file.
    pub model: PathBuf,
    /// Output type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 (case-insensitive).
    #[arg(long = "type", short = 't', value_parser = parse_type)]
    pub ty: GgmlType,
    /// Output GGUF path (written atomically: complete or not at all).
    #[arg(long, short, required_unless_present = "dry_run")]
    pub output: Option<PathBuf>,
    /// Print the per-tensor plan and the exact output size; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print a JSON summary (or the JSON plan with --dry-run) to stdout.
    #[arg(long)]
    pub json: bool,
    /// Convert tensors holding NaN or Inf instead of refusing them.
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// Dequantize and requantize tensors that are already quantized in a GGUF input (loses quality).
    #[arg(long)]
    pub allow_requantize: bool,
    /// llama.cpp pre-tokenizer name to record (tokenizer.ggml.pre), when kiln cannot recognize it.
    #[arg(long, value_name = "NAME")]
    pub pre_tokenizer: Option<String>,
}

fn parse_type(s: &str) -> Result<GgmlType, String> {
    let t: GgmlType = s.parse()?;
    if !t.can_encode() {
        let ok: Vec<&str> = GgmlType::ALL
            .iter()
            .filter(|t| t.can_encode())
            .map(|t| t.name())
            .collect();
        return Err(format!(
            "kiln cannot write {t} yet (it writes {})",
            ok.join(", ")
        ));
    }
    Ok(t)
}

pub fn run(args: &ConvertArgs, printer: &Printer) -> Result<()> {
    let t0 = Instant::now();
    let opts = LoadOptions {
        tokenizer: TokenizerOptions {
            pre_tokenizer: args.pre_tokenizer.clone(),
        },
    };
    let loaded = formats::load(&args.model, &opts)?;
    if let Some(g) = &loaded.gguf {
        if let Some((name, ty)) = formats::load::undecodable(g) {
            anyhow::bail!(
                "{}: tensor `{name}`: type {ty} cannot be decoded by kiln yet",
                args.model.display()
            );
        }
    }
    if loaded.model.arch.is_none() {
        anyhow::bail!(
            "{}: no architecture: a bare .safetensors file has no config.json; convert the checkpoint directory instead",
            args.model.display()
        );
    }
    if let Some(out) = &args.output {
        emit::check_output(out, &loaded.model.files)?;
    }
    let mut model = loaded.model;
    let encode = Encode {
        ty: args.ty,
        allow_requantize: args.allow_requantize,
    };
    passes::passes::run(&mut model, &[&Normalize, &encode])
        .with_context(|| args.model.display().to_string())?;
    let layout = emit::plan(&model);
    let notes: Vec<String> = model
        .tensors
        .iter()
        .flat_map(|t| t.notes.iter().map(move |n| format!("{}: {n}", t.name)))
        .chain(model.notes.iter().cloned())
        .collect();

    if args.dry_run {
        if args.json {
            printer.data(&serde_json::to_string_pretty(&plan_json(
                args, &model, &layout, &notes, false,
            ))?);
        } else {
            printer.data(&plan_text(args, &model, &layout, &notes));
        }
        return Ok(());
    }
    let out = args
        .output
        .as_ref()
        .expect("clap requires -o without --dry-run");
    for n in &notes {
        printer.info(&format!("note: {n}"));
    }

    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        // A second Ctrl-C while cleaning up falls through to the default handler.
        let _ = ctrlc::set_handler(move || cancel.store(true, Ordering::Relaxed));
    }
    let input_bytes: u64 = model.tensors.iter().map(|t| t.source.len).sum();
    let bar = printer.bytes_bar(input_bytes, "converting");
    let opts = EmitOptions {
        allow_nonfinite: args.allow_nonfinite,
    };
    let progress = |n: u64| bar.inc(n);
    let result = emit::write_gguf(&model, &loaded.maps, &layout, out, opts, &progress, &cancel);
    bar.finish_and_clear();
    result?;
    let secs = t0.elapsed().as_secs_f64();
    if args.json {
        let mut j = plan_json(args, &model, &layout, &notes, true);
        j["seconds"] = json!(secs);
        printer.data(&serde_json::to_string_pretty(&j)?);
    }
    printer.info(&format!(
        "wrote {} ({}, {} tensors) in {secs:.2}s, {:.2} GB/s of input",
        out.display(),
        human_bytes(layout.total_bytes),
        model.tensors.len(),
        input_bytes as f64 / secs.max(1e-9) / 1e9
    ));
    Ok(())
}

fn plan_json(
    args: &ConvertArgs,
    model: &passes::Model,
    layout: &formats::gguf::Layout,
    notes: &[String],
    written: bool,
) -> serde_json::Value {
    json!({
        "input": args.model,
        "output": args.output,
        "type": args.ty.name(),
        "written": written,
        "bytes": layout.total_bytes,
        "parameters": model.n_params(),
        "tensors": model.tensors.iter().zip(&layout.tensors).map(|(t, &(offset, bytes))| json!({
            "name": t.name,
            "source_name": t.source_name,
            "shape": t.shape,
            "source_dtype": t.source.dtype.name(),
            "type": t.encoding.map(|e| e.name()),
            "offset": offset,
            "bytes": bytes,
            "notes": t.notes,
        })).collect::<Vec<_>>(),
        "by_type": emit::bytes_by_type(model, layout).iter().map(|(t, b, n)| (t.name().to_string(), json!({"tensors": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
        "notes": notes,
    })
}

fn plan_text(
    args: &ConvertArgs,
    model: &passes::Model,
    layout: &formats::gguf::Layout,
    notes: &[String],
) -> String {
    let mut s = format!(
        "plan: {} -> {} as {}\n\n",
        args.model.display(),
        args.output
            .as_ref()
            .map(|o| o.display().to_string())
            .unwrap_or_else(|| "(dry run)".into()),
        args.ty
    );
    let w = model
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    s += &format!(
        "{:<w$}  {:<14} {:<6} {:<6} {:>12}\n",
        "name", "shape", "source", "type", "bytes"
    );
    for (t, &(_, bytes)) in model.tensors.iter().zip(&layout.tensors) {
        let ty = t.encoding.map(|e| e.name()).unwrap_or("-");
        let flag = if t.notes.is_empty() { "" } else { "  *" };
        s += &format!(
            "{:<w$}  {:<14} {:<6} {:<6} {:>12}{flag}\n",
            t.name,
            shape(&t.shape),
            t.source.dtype.name(),
            ty,
            bytes
        );
    }
    s += "\nby type:\n";
    for (t, b, n) in emit::bytes_by_type(model, layout) {
        s += &format!("  {:<6} {n:>5} tensors {:>12}\n", t.name(), human_bytes(b));
    }
    s += &format!(
        "\noutput size: {} bytes ({}), exact\n",
        layout.total_bytes,
        human_bytes(layout.total_bytes)
    );
    if !notes.is_empty() {
        s += "\nnotes (*):\n";
        for n in notes {
            s += &format!("  {n}\n");
        }
    }
    s
}
