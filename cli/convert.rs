//! `kiln convert MODEL --type T -o OUT.gguf`: a llama.cpp recipe (or, with
//! `--pure`, one uniform type), with llama-quantize's overrides and
//! importance matrices, streamed into one GGUF.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::Args;
use formats::data::Rows;
use formats::gguf::{self, Gguf};
use formats::tokenizer::TokenizerOptions;
use formats::write::{self, Container, FileLayout, WriteOptions};
use formats::LoadOptions;
use passes::passes::importance::AttachImportance;
use passes::passes::recipe::{self, ApplyRecipe, Recipe, RecipeOptions};
use passes::passes::{Context, Pipeline};
use quant::GgmlType;
use serde_json::json;

use crate::common::{cancel_flag, clean_stale, human_bytes, shape};
use crate::Printer;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// A Hugging Face checkpoint directory or a .gguf file.
    pub model: PathBuf,
    /// Output type, as llama-quantize names it (case-insensitive): a recipe
    /// Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K,
    /// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS, F16, BF16, or F32.
    /// Recipes choose each tensor's type as llama.cpp does (e.g. Q4_0 keeps
    /// output.weight in Q6_K); add --pure for one type everywhere.
    #[arg(long = "type", short = 't', value_parser = recipe::parse_recipe, value_name = "TYPE",
          required_unless_present = "scheme")]
    pub ty: Option<Recipe>,
    /// Output format: `gguf` (llama.cpp, ollama; -o names a file) or
    /// `compressed-tensors` (Hugging Face safetensors with a
    /// quantization_config, as vLLM's llm-compressor writes them, for vLLM,
    /// TensorRT-LLM, TPU, Gaudi and Qualcomm runtimes; -o names a directory).
    #[arg(long, value_enum, default_value = "gguf")]
    pub format: OutFormat,
    /// compressed-tensors scheme, as llm-compressor's presets name them:
    /// W4A16, W4A16_ASYM, W8A16 (int, group 128), W8A8 (int8 per channel,
    /// dynamic int8 activations), FP8_DYNAMIC, FP8_BLOCK, NVFP4A16, MXFP4A16; FP8 (per-tensor
    /// weights, static FP8 activations) and NVFP4 (W4A4) calibrate their activation scales
    /// on --text.
    #[arg(long, value_name = "SCHEME", conflicts_with = "ty")]
    pub scheme: Option<String>,
    /// Group size of the integer schemes: 32, 64, 128 (default) or 0 for per channel.
    #[arg(long, value_name = "N", requires = "scheme")]
    pub group_size: Option<u32>,
    /// Accelerator the compressed-tensors artifact is for (see `kiln targets`): a scheme
    /// its runtime does not run natively is refused with the reason, and target rules
    /// apply (Neuron's FP8 saturates at +-240, so FP8 weights are scaled to 240).
    #[arg(long, short = 'T', value_name = "ID", requires = "scheme")]
    pub target: Option<String>,
    /// A profile file (the schema of targets/*.toml) whose id --target may name; may be repeated.
    #[arg(long, value_name = "FILE.toml", requires = "target")]
    pub target_file: Vec<PathBuf>,
    /// Runtime serving the artifact on --target: vllm (the default: vLLM and its TPU, Gaudi,
    /// Neuron and Qualcomm backends) or trt-llm.
    #[arg(long, value_name = "ENGINE", requires = "target")]
    pub engine: Option<String>,
    /// Keep this Linear unquantized (compressed-tensors): a module name such
    /// as `model.layers.0.mlp.down_proj`, or `re:` and a regular expression.
    /// Repeatable. `lm_head` is always kept.
    #[arg(long, value_name = "MODULE", requires = "scheme")]
    pub ignore: Vec<String>,
    /// Largest compressed-tensors shard: bytes, or 500MB, 2GiB, 5GB (default 5GB).
    /// One `model.safetensors` when everything fits, else
    /// `model-0000i-of-0000N.safetensors` with `model.safetensors.index.json`.
    #[arg(long, value_name = "SIZE", requires = "scheme", value_parser = formats::ct::parse_size)]
    pub max_shard_size: Option<u64>,
    /// Output GGUF path, or the output directory for compressed-tensors;
    /// required unless --dry-run (written atomically: complete or not at all).
    #[arg(
        long,
        short,
        required_unless_present = "dry_run",
        value_name = "OUT.gguf|OUTDIR"
    )]
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
    /// Use this type for tensors whose name matches REGEX (first match wins;
    /// the row-length fallback still applies). Repeatable. Example:
    /// --tensor-type 'attn_v=q8_0'
    #[arg(long, value_name = "REGEX=TYPE", value_parser = recipe::parse_tensor_type)]
    pub tensor_type: Vec<(String, GgmlType)>,
    /// Type of output.weight.
    #[arg(long, value_name = "TYPE")]
    pub output_tensor_type: Option<GgmlType>,
    /// Type of token_embd.weight.
    #[arg(long, value_name = "TYPE")]
    pub token_embedding_type: Option<GgmlType>,
    /// Keep output.weight in its source type (not quantized).
    #[arg(long)]
    pub leave_output_tensor: bool,
    /// No mixture: every quantizable tensor gets the recipe's base type.
    #[arg(long)]
    pub pure: bool,
    /// Importance matrix from llama-imatrix or kiln imatrix (GGUF or legacy .dat).
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// llama.cpp pre-tokenizer name to record (tokenizer.ggml.pre), when kiln cannot recognize it.
    #[arg(long, value_name = "NAME")]
    pub pre_tokenizer: Option<String>,
    /// Structured pruning before quantization (repeatable, or items joined by `;`):
    /// `layers=20,21` removes those blocks (later ones renumbered), `layers=auto:2` the two
    /// of least block influence on --text (ShortGPT); `ffn=0.75` keeps 75% of each FFN's
    /// channels (Wanda: activation norm x ffn_down column norm; weight norms without --text
    /// or --imatrix); `kv-groups=2` keeps 2 KV groups per layer (a KV head with its query
    /// heads), `kv-groups=0:1,1:0` removes those (layer:group); `tp=2` keeps head counts
    /// divisible by 2. Works with --dry-run (prints the pruned config and sizes).
    #[arg(long, value_name = "SPEC", value_parser = passes::passes::prune::parse_spec)]
    pub prune: Vec<passes::passes::prune::PruneSpec>,
    /// Calibration text for --prune (activation norms, block influence), --gptq (Hessians)
    /// and the static-activation schemes FP8 and NVFP4 (each Linear's input range).
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Tokens per calibration window for FP8 / NVFP4 activation scales.
    #[arg(long, value_name = "N", default_value_t = 512, requires = "text")]
    pub calib_ctx: usize,
    /// Calibration windows for FP8 / NVFP4 activation scales (at most; fewer if the text is short).
    #[arg(long, value_name = "N", default_value_t = 128, requires = "text",
          value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u32).range(1..), |n| n as usize))]
    pub calib_windows: usize,
    #[command(flatten)]
    pub gptq: crate::gptq::GptqArgs,
}

/// The output formats of `convert`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFormat {
    Gguf,
    CompressedTensors,
}

impl ConvertArgs {
    fn recipe(&self) -> &Recipe {
        self.ty
            .as_ref()
            .expect("clap requires --type without --scheme")
    }
}

pub fn run(args: &ConvertArgs, printer: &Printer) -> Result<()> {
    let static_scheme = args
        .scheme
        .as_deref()
        .is_some_and(|s| ["FP8", "NVFP4"].contains(&s.to_ascii_uppercase().as_str()));
    if args.text.is_some() && args.prune.is_empty() && !args.gptq.gptq && !static_scheme {
        anyhow::bail!(
            "--text is the calibration text of --prune, --gptq or the static-activation schemes (--scheme FP8, NVFP4): give one of them"
        );
    }
    if args.format == OutFormat::CompressedTensors || args.scheme.is_some() {
        return crate::convert_ct::run(args, printer);
    }
    if args.gptq.gptq && !args.prune.is_empty() {
        anyhow::bail!("--gptq with --prune is supported for neither output format yet: run them one after the other");
    }
    if args.gptq.gptq && args.gptq.actorder_gguf() != "none" {
        anyhow::bail!(
            "--actorder {}: GGUF output is GPTQ-rounded with columns left to right (a block's scales are chosen before its columns are rounded); give --actorder none or leave it out",
            passes::printable(args.gptq.actorder_gguf())
        );
    }
    let t0 = Instant::now();
    if let Some(out) = &args.output {
        clean_stale(out, printer);
    }
    let opts = LoadOptions {
        tokenizer: TokenizerOptions {
            pre_tokenizer: args.pre_tokenizer.clone(),
        },
    };
    let mut loaded = formats::load(&args.model, &opts)?;
    for w in &loaded.warnings {
        printer.warn(w);
    }
    loaded.refuse_compressed(&args.model)?;
    if let Some(g) = &loaded.gguf {
        if let Some((name, ty)) = formats::load::undecodable(g) {
            anyhow::bail!(
                "{}: tensor `{name}`: type {ty} cannot be decoded by kiln yet",
                args.model.display()
            );
        }
    }
    if loaded.model.arch.is_none() && loaded.gguf.is_some() {
        anyhow::bail!(
            "{}: {}",
            args.model.display(),
            formats::load::gguf_arch_missing(&loaded.model.metadata)
        );
    }
    if loaded.model.arch.is_none() {
        anyhow::bail!(
            "{}: no architecture: a bare .safetensors file has no config.json; convert the checkpoint directory instead",
            args.model.display()
        );
    }
    if let Some(out) = &args.output {
        write::check_output(out, &loaded.model.files)?;
    }
    let mut model = loaded.model;
    let imatrix = match &args.imatrix {
        Some(path) => Some((path, formats::imatrix::read(path)?)),
        None => None,
    };
    let options = RecipeOptions {
        overrides: args.tensor_type.clone(),
        output_tensor_type: args.output_tensor_type,
        token_embedding_type: args.token_embedding_type,
        leave_output_tensor: args.leave_output_tensor,
        pure: args.pure,
        allow_requantize: args.allow_requantize,
        imatrix_present: imatrix.as_ref().is_some_and(|(_, m)| !m.entries.is_empty()),
        dry_run: args.dry_run,
    };
    let apply = ApplyRecipe::new(*args.recipe(), options).map_err(anyhow::Error::msg)?;
    let importance = match &imatrix {
        Some((path, m)) => Some(AttachImportance {
            vectors: m.importance(path)?,
            provenance: m.provenance(&path.display().to_string()),
        }),
        None => None,
    };
    let mut prune = match args.prune.is_empty() {
        true => None,
        false => Some(crate::prune::Prune::new(
            &args.prune,
            &model,
            &args.model,
            true,
            args.text.as_deref(),
            importance.as_ref().map(|i| &i.vectors),
            printer,
        )?),
    };
    match &mut prune {
        None => {
            Pipeline::convert(apply, importance)
                .run(&mut model, &Context::with_reader(&Rows(&loaded.maps)))
                .with_context(|| args.model.display().to_string())?;
        }
        Some(p) => {
            p.before(&model);
            Pipeline::prune(p.passes(true))
                .run(&mut model, &Context::with_reader(&Rows(&loaded.maps)))
                .with_context(|| args.model.display().to_string())?;
            p.serve(&model, &mut loaded.maps)?;
            model
                .metadata
                .set("kiln.prune", passes::MetaValue::String(p.resolved()));
            let importance = importance.map(|i| AttachImportance {
                vectors: p.remap_importance(&i.vectors),
                provenance: i.provenance,
            });
            Pipeline::quantize(apply, importance)
                .run(&mut model, &Context::with_reader(&Rows(&loaded.maps)))
                .with_context(|| args.model.display().to_string())?;
        }
    }
    if let Some((path, m)) = &imatrix {
        if !m.entries.is_empty() {
            let arg = path.display().to_string();
            model
                .metadata
                .0
                .extend(formats::imatrix::quantize_metadata(&arg, m));
        }
    }
    let gptq_t0 = Instant::now();
    let rounded = match args.gptq.gptq && !args.dry_run {
        true => Some(crate::gptq::round_gguf(args, &model, printer)?),
        false => None,
    };
    let gptq_summary = rounded.as_ref().map(|r| {
        let names: Vec<String> = model
            .tensors
            .iter()
            .filter(|t| r.tensors.contains_key(&t.source_name))
            .map(|t| t.name.clone())
            .collect();
        model.metadata.set(
            "kiln.gptq.tensors",
            passes::MetaValue::Array(names.iter().cloned().map(passes::MetaValue::String).collect()),
        );
        model.metadata.set(
            "kiln.gptq",
            passes::MetaValue::String(format!(
                "GPTQ (columns left to right, ggml's block encoders choosing each block's scales); samples={} ctx={} dampening_frac={}",
                args.gptq.gptq_samples.unwrap_or(128),
                args.gptq.gptq_ctx,
                args.gptq.dampening_frac
            )),
        );
        json!({
            "text": args.text,
            "samples": args.gptq.gptq_samples.unwrap_or(128),
            "ctx": args.gptq.gptq_ctx,
            "actorder": "none",
            "dampening_frac": args.gptq.dampening_frac,
            "seconds": gptq_t0.elapsed().as_secs_f64(),
            "tensors": model.tensors.iter().filter_map(|t| r.tensors.get(&t.source_name).map(|x| json!({
                "name": t.name,
                "type": x.ty.name(),
                "loss": x.loss,
                "rtn_fallback": x.fallback,
            }))).collect::<Vec<_>>(),
        })
    });
    let file_name = args.output.as_ref().and_then(|o| o.file_name());
    let gguf = Gguf::new(&file_name.map_or("model.gguf".into(), |n| n.to_string_lossy()));
    let gguf: Box<dyn Container + '_> = match &rounded {
        Some(rounded) => Box::new(eval::rounded::GptqGguf {
            inner: gguf,
            rounded,
        }),
        None => Box::new(gguf),
    };
    // One copy of the key/values (borrowed by the layout), not two.
    gguf::lower_in_place(&mut model);
    let layout = gguf.layout(&model)?.remove(0);
    // The metadata now lives serialized in the header; free its strings (a
    // tokenizer is ~100k of them) before streaming, to keep the peak low.
    model.metadata.0.clear();
    model.info.tokenizer = None;
    let notes: Vec<String> = model
        .tensors
        .iter()
        .flat_map(|t| {
            t.notes
                .iter()
                .map(move |n| passes::printable(&format!("{}: {n}", t.name)).into_owned())
        })
        .chain(
            model
                .notes
                .iter()
                .map(|n| passes::printable(&n.text).into_owned()),
        )
        .collect();

    let prune_record = prune.as_ref().map(|p| p.record(&model));
    if args.dry_run {
        if args.json {
            let mut j = plan_json(args, &model, &layout, &notes, false);
            if let Some(r) = &prune_record {
                j["prune"] = r.clone();
            }
            printer.data(&serde_json::to_string_pretty(&j)?);
        } else {
            if let Some(p) = &prune {
                printer.data(&p.summary_text(&model, Some((layout.total_bytes, "in the output"))));
            }
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

    let cancel = cancel_flag();
    let input_bytes: u64 = model.tensors.iter().map(|t| t.source.len).sum();
    let bar = printer.bytes_bar(input_bytes, "converting");
    let opts = WriteOptions {
        importance: model.importance.as_ref().map(|i| &i.vectors),
        allow_nonfinite: args.allow_nonfinite,
    };
    let progress = |n: u64| bar.inc(n);
    let dir = formats::atomic::parent_dir(out);
    let files = std::slice::from_ref(&layout);
    let result = write::write(
        &model,
        &loaded.maps,
        gguf.as_ref(),
        files,
        &dir,
        opts,
        &progress,
        &cancel,
    );
    bar.finish_and_clear();
    result?;
    let secs = t0.elapsed().as_secs_f64();
    if args.json {
        let mut j = plan_json(args, &model, &layout, &notes, true);
        j["seconds"] = json!(secs);
        j["gptq"] = json!(gptq_summary);
        if let Some(r) = &prune_record {
            j["prune"] = r.clone();
        }
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
    layout: &FileLayout,
    notes: &[String],
    written: bool,
) -> serde_json::Value {
    json!({
        "input": args.model,
        "output": args.output,
        "type": args.recipe().name,
        "written": written,
        "bytes": layout.total_bytes,
        "parameters": model.n_params(),
        "tensors": model.tensors.iter().zip(&layout.placements).map(|(t, p)| json!({
            "name": t.name,
            "source_name": t.source_name,
            "shape": t.shape,
            "source_dtype": t.source.dtype.name(),
            "type": t.encoding.map(|e| e.to_string()),
            "offset": p.offset,
            "bytes": p.bytes(t),
            "notes": t.notes,
        })).collect::<Vec<_>>(),
        "by_type": gguf::container::bytes_by_type(model, std::slice::from_ref(layout)).iter().map(|(t, b, n)| (t.name().to_string(), json!({"tensors": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
        "notes": notes,
    })
}

fn plan_text(
    args: &ConvertArgs,
    model: &passes::Model,
    layout: &FileLayout,
    notes: &[String],
) -> String {
    let mut s = format!(
        "plan: {} -> {} as {}\n\n",
        args.model.display(),
        args.output
            .as_ref()
            .map(|o| o.display().to_string())
            .unwrap_or_else(|| "(dry run)".into()),
        args.recipe().name
    );
    let w = model
        .tensors
        .iter()
        .map(|t| passes::printable(&t.name).len())
        .max()
        .unwrap_or(4)
        .max(4);
    s += &format!(
        "{:<w$}  {:<14} {:<6} {:<6} {:>12}\n",
        "name", "shape", "source", "type", "bytes"
    );
    for (t, p) in model.tensors.iter().zip(&layout.placements) {
        let bytes = p.bytes(t);
        let ty = t.encoding.map_or("-".to_string(), |e| e.to_string());
        let flag = if t.notes.is_empty() { "" } else { "  *" };
        s += &format!(
            "{:<w$}  {:<14} {:<6} {:<6} {:>12}{flag}\n",
            passes::printable(&t.name),
            shape(&t.shape),
            t.source.dtype.name(),
            ty,
            bytes
        );
    }
    s += "\nby type:\n";
    for (t, b, n) in gguf::container::bytes_by_type(model, std::slice::from_ref(layout)) {
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
