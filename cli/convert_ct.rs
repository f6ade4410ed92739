//! `kiln convert MODEL --format compressed-tensors --scheme S -o OUTDIR`:
//! one of llm-compressor's data-free presets, written as it writes them
//! (`formats::ct`), streamed into a staged directory that replaces OUTDIR
//! only once complete.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result};
use formats::artifact::{sha256_file, Staging};
use formats::ct::{self, CompressedTensors, Scheme};
use formats::ct_gguf;
use formats::data::Rows;
use formats::load::InputKind;
use formats::write::{self, Container, FileLayout, WriteOptions};
use passes::cost::CtScheme;
use passes::passes::{Context, Pipeline};
use passes::{Encoding, Model};
use serde_json::json;

use crate::common::{
    cancel_flag, clean_stale, human_bytes, lift, load_options, shape, text_windows,
};
use crate::convert::ConvertArgs;
use crate::Printer;

pub fn run(args: &ConvertArgs, printer: &Printer) -> Result<()> {
    let t0 = Instant::now();
    let Some(name) = &args.scheme else {
        anyhow::bail!(
            "--format compressed-tensors needs --scheme (one of {})",
            Scheme::NAMES.join(", ")
        );
    };
    // The target's legality comes first: a scheme it cannot run is refused
    // with that reason even where kiln could not write it anyway.
    let target = match &args.target {
        Some(id) => Some(crate::targets::resolve(
            id,
            &args.target_file,
            false,
            printer,
        )?),
        None => None,
    };
    let engine = args.engine.as_deref().unwrap_or("vllm");
    if !["vllm", "trt-llm"].contains(&engine) {
        anyhow::bail!("--engine `{engine}`: compressed-tensors is served by vllm or trt-llm");
    }
    let mut runtime = None;
    if let (Some(t), Some(ct)) = (&target, CtScheme::parse(name)) {
        runtime = Some(
            t.check_scheme(engine, ct)
                .map_err(anyhow::Error::msg)?
                .to_string(),
        );
    }
    let scheme = Scheme::parse(name, args.group_size).map_err(anyhow::Error::msg)?;
    if scheme.static_activations() && args.text.is_none() {
        anyhow::bail!(
            "--scheme {}: its activation scales are static, measured on calibration text: give --text FILE (or use a dynamic scheme: FP8_DYNAMIC, NVFP4A16)",
            scheme.name()
        );
    }
    // GGUF-only options, refused by name rather than ignored.
    let gguf_only = [
        ("--imatrix", args.imatrix.is_some()),
        ("--tensor-type", !args.tensor_type.is_empty()),
        ("--output-tensor-type", args.output_tensor_type.is_some()),
        (
            "--token-embedding-type",
            args.token_embedding_type.is_some(),
        ),
        ("--leave-output-tensor", args.leave_output_tensor),
        ("--pure", args.pure),
        ("--pre-tokenizer", args.pre_tokenizer.is_some()),
        ("--allow-requantize", args.allow_requantize),
    ];
    if let Some((flag, _)) = gguf_only.iter().find(|(_, set)| *set) {
        anyhow::bail!("{flag} applies to GGUF output, not --format compressed-tensors");
    }
    let mut loaded = formats::load(&args.model, &Default::default())?;
    for w in &loaded.warnings {
        printer.warn(w);
    }
    let gguf = matches!(loaded.kind, InputKind::Gguf { .. });
    if !args.model.is_dir() && !gguf {
        anyhow::bail!(
            "{}: compressed-tensors is written from a Hugging Face checkpoint directory (config.json and safetensors) or a GGUF",
            args.model.display()
        );
    }
    loaded.refuse_compressed(&args.model)?;
    if let Some(g) = &loaded.gguf {
        if let Some((t, ty)) = formats::load::undecodable(g) {
            return Err(formats::Error::unsupported(
                &args.model,
                Some(t),
                format!("type {ty} cannot be decoded by kiln yet"),
            )
            .into());
        }
    }
    if loaded.model.arch.is_none() {
        anyhow::bail!("{}: no architecture in config.json", args.model.display());
    }
    let mut model = loaded.model;
    if gguf && !args.prune.is_empty() {
        anyhow::bail!(
            "{}: --prune with a GGUF input is not supported for compressed-tensors output yet (prune the Hugging Face checkpoint, or write GGUF)",
            args.model.display()
        );
    }
    let mut prune = match args.prune.is_empty() {
        true => None,
        false => Some(crate::prune::Prune::new(
            &args.prune,
            &model,
            &args.model,
            false,
            args.text.as_deref(),
            None,
            printer,
        )?),
    };
    match &mut prune {
        None => Pipeline::open(),
        Some(p) => {
            p.before(&model);
            Pipeline::prune(p.passes(false))
        }
    }
    .run(&mut model, &Context::with_reader(&Rows(&loaded.maps)))
    .with_context(|| args.model.display().to_string())?;
    if let Some(p) = &prune {
        p.serve(&model, &mut loaded.maps)?;
    }
    // A GGUF gets its Hugging Face names, layout and files back.
    let from_gguf = if gguf {
        Some(ct_gguf::to_hf(&mut model, &args.model)?)
    } else {
        None
    };
    if let (Some(t), true) = (model.tensors.iter().find(|t| !t.parts.is_empty()), gguf) {
        // A GGUF's experts are stacked in its own file; their Hugging Face
        // names and per-expert split are not written yet.
        anyhow::bail!(
            "{}: tensor `{}`: compressed-tensors output from a mixture-of-experts GGUF is not supported yet; convert the Hugging Face checkpoint, or write GGUF",
            args.model.display(),
            passes::printable(&t.name)
        );
    }
    let moe = model.tensors.iter().any(|t| !t.parts.is_empty());
    if moe && args.gptq.gptq {
        anyhow::bail!(
            "{}: --gptq for mixture-of-experts checkpoints is not supported yet (round-to-nearest is)",
            args.model.display()
        );
    }
    // Experts back to the checkpoint's per-expert Linears.
    ct::unstack_experts(&mut model);
    ct::assign(&mut model, scheme, &args.ignore)?;
    let fp8_max = target.as_ref().map_or(448.0, |t| t.fp8_max());
    ct::set_fp8_max(&mut model, fp8_max).map_err(anyhow::Error::msg)?;
    if args.gptq.gptq
        && !matches!(
            scheme,
            Scheme::W4A16 { .. } | Scheme::W4A16Asym { .. } | Scheme::W8A16 { .. } | Scheme::W8A8
        )
    {
        anyhow::bail!(
            "--gptq rounds the integer schemes W4A16, W4A16_ASYM, W8A16 and W8A8, not {}",
            scheme.name()
        );
    }
    if args.gptq.gptq && (gguf || prune.is_some()) {
        anyhow::bail!(
            "{}: --gptq is supported for a Hugging Face checkpoint without --prune for now",
            args.model.display()
        );
    }
    let mut inner = match from_gguf {
        Some(g) => {
            for n in &g.notes {
                printer.info(&format!("note: {n}"));
            }
            CompressedTensors::from_parts(
                scheme,
                &model,
                &loaded.maps,
                g.config,
                g.files,
                Some(g.dtype),
            )
        }
        None => CompressedTensors::new(scheme, &model, &loaded.maps, &args.model)?,
    }
    .with_max_shard_size(args.max_shard_size.unwrap_or(ct::DEFAULT_MAX_SHARD));
    let calibration = match scheme.static_activations() && !args.dry_run {
        true => {
            let (amax, record) = input_ranges(args, printer)?;
            inner = inner
                .with_input_amax(&model, amax)
                .with_context(|| args.model.display().to_string())?;
            Some(record)
        }
        false => None,
    };
    let prune_record = prune.as_ref().map(|p| p.record(&model));
    if let (Some(p), Some(arch)) = (&prune, &model.arch) {
        passes::passes::prune::edit_hf_config(
            inner.config_mut(),
            arch,
            &crate::prune::layer_map(p),
        );
    }
    let gptq_t0 = Instant::now();
    let rounded = match args.gptq.gptq && !args.dry_run {
        true => Some(crate::gptq::round_ct(
            args,
            &model,
            scheme != Scheme::W8A8,
            printer,
        )?),
        false => None,
    };
    let gptq_summary = rounded.as_ref().map(|rounded| {
        json!({
            "text": args.text,
            "samples": args.gptq.gptq_samples.unwrap_or(128),
            "ctx": args.gptq.gptq_ctx,
            "actorder": args.gptq.actorder(),
            "dampening_frac": args.gptq.dampening_frac,
            "seconds": gptq_t0.elapsed().as_secs_f64(),
            "tensors": rounded.tensors.iter().map(|(n, r)| json!({
                "name": n,
                "loss": r.loss,
                "rtn_fallback": r.fallback,
            })).collect::<Vec<_>>(),
        })
    });
    let container: Box<dyn Container + '_> = match &rounded {
        Some(r) => Box::new(eval::ct_gptq::GptqCt::new(inner, r, args.gptq.actorder())),
        None => Box::new(inner),
    };
    let files = container.layout(&model)?;
    // Tensor notes, then the model's (the pruning passes' lines), as the
    // GGUF conversion lists them.
    let notes: Vec<String> = model
        .tensors
        .iter()
        .flat_map(|t| {
            t.notes
                .iter()
                .map(move |n| format!("{}: {n}", t.source_name))
        })
        .chain(
            model
                .notes
                .iter()
                .map(|n| passes::printable(&n.text).into_owned()),
        )
        .collect();
    if args.dry_run {
        if args.json {
            let mut j = plan_json(args, name, &model, &files, &notes, false);
            if let Some(r) = &prune_record {
                j["prune"] = r.clone();
            }
            printer.data(&serde_json::to_string_pretty(&j)?);
        } else {
            if let Some(p) = &prune {
                let total: u64 = files.iter().map(|f| f.total_bytes).sum();
                printer.data(&p.summary_text(&model, Some((total, "of tensors in the output"))));
            }
            printer.data(&plan_text(args, name, &model, &files, &notes));
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
    clean_stale(out, printer);
    let staging = Staging::new(out, false).map_err(crate::common::without_force_hint)?;
    let cancel = cancel_flag();
    let input_bytes: u64 = model.tensors.iter().map(|t| t.source.len).sum();
    let bar = printer.bytes_bar(input_bytes, "converting");
    let progress = |n: u64| bar.inc(n);
    let opts = WriteOptions {
        allow_nonfinite: args.allow_nonfinite,
        importance: None,
    };
    let result = write::write(
        &model,
        &loaded.maps,
        container.as_ref(),
        &files,
        staging.dir(),
        opts,
        &progress,
        &cancel,
    );
    bar.finish_and_clear();
    let written = result?;
    // A manifest listing every file with its size and hash, so a later run
    // may replace this directory (and nothing a user added to it).
    let mut listed = Vec::with_capacity(written.len());
    for w in &written {
        listed.push(json!({
            "path": w.name,
            "bytes": w.bytes,
            "sha256": sha256_file(&staging.path(&w.name))?,
        }));
    }
    let manifest = json!({
        "schema": "kiln.artifact/convert-1",
        "input": args.model,
        "format": "compressed-tensors",
        "compressed_tensors_version": ct::CT_VERSION,
        "scheme": name.to_ascii_uppercase(),
        "target": target.as_ref().map(|t| t.id.clone()),
        "runtime": runtime,
        // Neuron's FP8 saturates at +-240: no quantization_config field says
        // so (Neuron reads the standard block), so it is recorded here only.
        "fp8_e4m3_max": if matches!(scheme, Scheme::Fp8Dynamic | Scheme::Fp8Block | Scheme::Fp8Static) { Some(fp8_max) } else { None },
        // Where the static activation scales (FP8, NVFP4) were measured.
        "calibration": calibration,
        // Which tensors GPTQ rounded, with its loss, and the calibration.
        "gptq": gptq_summary,
        "files": listed,
        "prune": prune_record,
    });
    staging.write("manifest.json", &serde_json::to_vec_pretty(&manifest)?)?;
    staging.commit()?;
    let secs = t0.elapsed().as_secs_f64();
    if args.json {
        let mut j = plan_json(args, name, &model, &files, &notes, true);
        j["seconds"] = json!(secs);
        if let Some(r) = &prune_record {
            j["prune"] = r.clone();
        }
        printer.data(&serde_json::to_string_pretty(&j)?);
    }
    let bytes: u64 = files.iter().map(|f| f.total_bytes).sum();
    printer.info(&format!(
        "wrote {} ({} {}, {} of tensors) in {secs:.2}s",
        out.display(),
        scheme_label(name),
        ct::CT_VERSION,
        human_bytes(bytes)
    ));
    Ok(())
}

/// Every Linear's largest input magnitude over the calibration windows of
/// `--text`, the original model streamed block by block (each block's
/// weights decoded in turn), with what the manifest records of the run.
fn input_ranges(
    args: &ConvertArgs,
    printer: &Printer,
) -> Result<(std::collections::BTreeMap<String, f32>, serde_json::Value)> {
    let text_path = args.text.as_ref().expect("checked before loading");
    let opened = eval::open(&args.model, &load_options(&None)).map_err(lift)?;
    let (_, windows) = text_windows(
        &opened,
        text_path,
        ("--calib-ctx", args.calib_ctx),
        Some(args.calib_windows.max(1)),
    )?;
    let blocks = eval::stream::Streamed::new(&opened)
        .map_err(lift)?
        .n_layer();
    printer.info(&format!(
        "calibrating activation scales: {} window{} of {} tokens from {}",
        windows.len(),
        if windows.len() == 1 { "" } else { "s" },
        args.calib_ctx,
        text_path.display()
    ));
    let cancel = cancel_flag();
    let mut range = eval::imatrix::InputRange::default();
    let bar = printer.count_bar(blocks as u64, "calibrating", "blocks");
    let progress = |n: usize| bar.set_position(n as u64);
    let r = eval::stream::observe(&opened, &windows, &mut range, false, &progress, &cancel);
    bar.finish_and_clear();
    r.map_err(lift).with_context(|| opened.name())?;
    let record = json!({
        "text": text_path,
        "windows": windows.len(),
        "ctx": args.calib_ctx,
        "observer": "largest input magnitude over every calibration token, on the unquantized model",
    });
    Ok((range.amax, record))
}

fn scheme_label(name: &str) -> String {
    format!("compressed-tensors {}", name.to_ascii_uppercase())
}

/// Per source tensor: the stored tensors' total bytes.
fn tensor_bytes(model: &Model, files: &[FileLayout]) -> Vec<u64> {
    let mut b = vec![0u64; model.tensors.len()];
    for f in files {
        for p in &f.placements {
            b[p.tensor] += p.bytes(&model.tensors[p.tensor]);
        }
    }
    b
}

fn plan_json(
    args: &ConvertArgs,
    name: &str,
    model: &Model,
    files: &[FileLayout],
    notes: &[String],
    written: bool,
) -> serde_json::Value {
    let bytes = tensor_bytes(model, files);
    json!({
        "input": args.model,
        "output": args.output,
        "format": "compressed-tensors",
        "scheme": name.to_ascii_uppercase(),
        "written": written,
        "bytes": files.iter().map(|f| f.total_bytes).sum::<u64>(),
        "parameters": model.n_params(),
        "tensors": model.tensors.iter().zip(&bytes).map(|(t, b)| json!({
            "name": t.source_name,
            "shape": t.shape,
            "source_dtype": t.source.dtype.name(),
            "encoding": t.encoding.map(|e| e.to_string()),
            "bytes": b,
            "notes": t.notes,
        })).collect::<Vec<_>>(),
        "notes": notes,
    })
}

fn plan_text(
    args: &ConvertArgs,
    name: &str,
    model: &Model,
    files: &[FileLayout],
    notes: &[String],
) -> String {
    let bytes = tensor_bytes(model, files);
    let dest = args
        .output
        .as_deref()
        .map_or("(dry run)".to_string(), |o: &Path| o.display().to_string());
    let mut s = format!(
        "plan: {} -> {dest} as {}\n\n",
        args.model.display(),
        scheme_label(name)
    );
    let w = model
        .tensors
        .iter()
        .map(|t| t.source_name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    s += &format!(
        "{:<w$}  {:<14} {:<6} {:<14} {:>12}\n",
        "name", "shape", "source", "encoding", "bytes"
    );
    for (t, b) in model.tensors.iter().zip(&bytes) {
        let enc = match t.encoding {
            Some(Encoding::Keep) | None => "keep".to_string(),
            Some(e) => e.to_string(),
        };
        let flag = if t.notes.is_empty() { "" } else { "  *" };
        s += &format!(
            "{:<w$}  {:<14} {:<6} {:<14} {:>12}{flag}\n",
            t.source_name,
            shape(&t.shape),
            t.source.dtype.name(),
            enc,
            b
        );
    }
    let total: u64 = files.iter().map(|f| f.total_bytes).sum();
    s += &format!(
        "\noutput size: {total} bytes ({}) of tensors, exact\n",
        human_bytes(total)
    );
    if !notes.is_empty() {
        s += "\nnotes (*):\n";
        for n in notes {
            s += &format!("  {n}\n");
        }
    }
    s
}
