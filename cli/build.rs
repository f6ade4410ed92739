//! `kiln build MODEL --target ID -o OUTDIR`: the main job. Measure every
//! tensor in every candidate encoding, size the budget from the target's
//! memory (minus the KV cache and the engine's overhead), choose the
//! encodings of least predicted accuracy loss that fit (or the fewest bytes
//! under an error ceiling), shard across the fewest devices when one is not
//! enough, write the GGUF file(s), and report cost and accuracy side by side
//! in `manifest.json`, `report.md` and `chart.svg`.
//!
//! What must stay true: OUTDIR appears complete or not at all
//! (`formats::artifact::Staging`); every file in it is byte-identical on a
//! rerun with the same inputs (no times, no absolute temp paths); every file
//! the manifest lists carries its sha256 and size; figures that were not
//! measured are `null` and say so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use formats::artifact::{self, Staging};
use formats::chart::{self, Chart, Point, PointKind};
use formats::gguf::Gguf;
use formats::write::{self, Container, WriteOptions};
use passes::cost::{Estimate, Target};
use passes::passes::layout::Shard;
use quant::GgmlType;
use serde_json::{json, Value};

use crate::eval::{cancel_flag, lift};
use crate::planner::{self, Objective, PlanArgs, Setup, TextAccuracy};
use crate::util::human_bytes;
use crate::Printer;

/// llama.cpp recipes put beside kiln's plan in the report and chart.
pub const COMPARED: [&str; 9] = [
    "Q2_K", "Q3_K_M", "Q4_0", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0",
];

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
    /// Output directory (written atomically; replaces a previous kiln build there).
    #[arg(long, short, value_name = "OUTDIR")]
    pub output: PathBuf,
    /// accuracy: least predicted loss that fits; cost: fewest bytes within --max-error (default:
    /// no worse than llama.cpp's Q4_K_M).
    #[arg(long, value_enum, default_value = "accuracy")]
    pub objective: Objective,
    /// Error ceiling for --objective cost, in predicted KL divergence (nats).
    #[arg(long, value_name = "X")]
    pub max_error: Option<f64>,
    /// Model file name (without .gguf) [default: the input's name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Print the manifest to stdout as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub plan: PlanArgs,
}

/// The input's name, for the model file.
pub fn model_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let name = name.strip_suffix(".gguf").unwrap_or(&name).to_string();
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() || clean == "." || clean == ".." {
        "model".into()
    } else {
        clean
    }
}

/// One row of the comparison: a recipe or a kiln plan.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub bytes: u64,
    pub error: Option<f64>,
    pub fits: Option<bool>,
    pub devices: Option<usize>,
    pub tokens_per_second: Option<f64>,
    pub usd_per_mtok: Option<f64>,
    pub text: Option<TextAccuracy>,
    /// Measured weight error: size-weighted mean noise-to-signal ratio.
    pub weight_nsr: Option<f64>,
    /// Every tensor's type.
    pub types: BTreeMap<String, GgmlType>,
}

pub fn run(args: &BuildArgs, printer: &Printer) -> Result<()> {
    let t0 = Instant::now();
    planner::check_args(&args.plan)?;
    let target = crate::targets::resolve(&args.target, &args.target_file, false, printer)?;
    let engine = planner::engine(&args.plan)?;
    let workload = planner::workload(&args.plan)?;
    artifact::check_outdir(&args.output)?;
    // OUTDIR is replaced whole at the end: the input must not live in it.
    if let (Ok(out), Ok(model)) = (args.output.canonicalize(), args.model.canonicalize()) {
        if model.starts_with(&out) {
            anyhow::bail!(
                "{}: the input {} is inside the output directory, which a build replaces; write to another directory",
                args.output.display(),
                args.model.display()
            );
        }
    }
    if let Some(n) = &args.name {
        let plain = !n.is_empty()
            && !n.starts_with('.')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !plain || n == "imatrix" {
            anyhow::bail!(
                "--name `{n}`: give a plain file name (letters, digits, '-', '_', '.'; not starting with '.'; not `imatrix`, which names the collected importance matrix)"
            );
        }
    }
    if let Some(e) = args.max_error {
        if !(e.is_finite() && e >= 0.0) {
            anyhow::bail!("--max-error must be at least 0");
        }
    }
    let cancel = cancel_flag();
    let setup = planner::setup(&args.model, &args.plan, printer, &cancel)?;
    let model = &setup.opened.loaded.model;
    let chosen = planner::solve(
        &setup,
        &args.plan,
        args.objective,
        args.max_error,
        &target,
        engine,
        &workload,
    )?;
    let types: BTreeMap<String, GgmlType> = chosen
        .allocation
        .types(&setup.options)
        .map(|(n, t)| (n.to_string(), t))
        .collect();
    let mut planned = planner::assigned(&setup, &types, args.plan.allow_requantize)?;
    let devices = chosen.budget.devices;
    let est = planner::cost(&planned, &setup.arch, &target, engine, &workload, devices)?;

    // Write the model file(s) into the staging directory.
    let staging = Staging::new(&args.output)?;
    let stem = match &args.name {
        Some(n) => n.clone(),
        None => match model_stem(&args.model) {
            s if s == "imatrix" => "model".to_string(),
            s => s,
        },
    };
    let mut importance = BTreeMap::new();
    for (name, v) in &setup.importance {
        if types.contains_key(name) {
            importance.insert(name.clone(), v.clone());
        }
    }
    // One file per device (the layout pass), laid out by the container.
    let shard = Shard {
        devices,
        cap: chosen.budget.tensor_bytes / devices as u64,
    };
    passes::passes::Pipeline::layout(shard)
        .run(&mut planned, &passes::passes::Context::default())
        .context("the plan's tensors cannot be cut into one file per device within the budget")?;
    let gguf = Gguf::new(&format!("{stem}.gguf"));
    let layouts = gguf.layout(&planned)?;
    let predicted_file_bytes: u64 = layouts.iter().map(|f| f.total_bytes).sum();
    let input_bytes: u64 = model.tensors.iter().map(|t| t.source.len).sum();
    let bar = printer.bytes_bar(input_bytes, "writing");
    let opts = WriteOptions {
        importance: (!importance.is_empty()).then_some(&importance),
        allow_nonfinite: false,
    };
    let progress = |n: u64| bar.inc(n);
    let written = write::write(
        &planned,
        &setup.opened.loaded.maps,
        &gguf,
        &layouts,
        staging.dir(),
        opts,
        &progress,
        &cancel,
    )
    .with_context(|| format!("writing {}", gguf.file_name))?;
    bar.finish_and_clear();
    let mut files: Vec<String> = written.iter().map(|w| w.name.clone()).collect();
    // A collected imatrix is written beside the model (llama-quantize can reuse it).
    if let (planner::ImportanceSource::Text(_), Some((_, im))) =
        (&setup.importance_source, &setup.imatrix)
    {
        formats::imatrix::write_gguf(&staging.path("imatrix.gguf"), im)?;
        files.push("imatrix.gguf".into());
    }

    // Accuracy on held-out text.
    let mut rows = comparison(&setup, &args.plan, &target, engine, &workload)?;
    let text = if setup.eval_windows.is_empty() {
        None
    } else {
        printer.info(&format!(
            "measuring accuracy on {} held-out window(s)",
            setup.eval_windows.len()
        ));
        let original = eval::Transformer::new(&setup.opened).map_err(lift)?;
        let mut candidate = eval::Transformer::new(&setup.opened).map_err(lift)?;
        Some(planner::measure_text(
            &setup,
            &types,
            &original,
            &mut candidate,
            &cancel,
        )?)
    };

    // Hashes.
    let mut file_entries = Vec::new();
    for f in &files {
        let p = staging.path(f);
        let bytes = std::fs::metadata(&p)
            .map_err(|e| formats::Error::io(&p, e))?
            .len();
        file_entries.push(json!({"path": f, "sha256": artifact::sha256_file(&p)?, "bytes": bytes}));
    }
    let actual_bytes: u64 = written.iter().filter(|w| w.tensors).map(|w| w.bytes).sum();
    let source_files: Vec<Value> = source_paths(&args.model, &model.files)?
        .iter()
        .map(|f| -> Result<Value> {
            let bytes = std::fs::metadata(f)
                .map_err(|e| formats::Error::io(f, e))?
                .len();
            Ok(json!({
                "path": f.file_name().map(|n| n.to_string_lossy().into_owned()),
                "sha256": artifact::sha256_file(f)?,
                "bytes": bytes,
            }))
        })
        .collect::<Result<_>>()?;
    let source_sha = artifact::sha256(
        source_files
            .iter()
            .map(|f| f["sha256"].as_str().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
            .as_bytes(),
    );

    let plan_row = Row {
        name: "kiln plan".into(),
        bytes: chosen.allocation.bytes,
        error: Some(chosen.allocation.error),
        fits: est.fits,
        devices: Some(devices),
        tokens_per_second: est.decode_tokens_per_second.central,
        usd_per_mtok: est.usd_per_million_tokens.central,
        text,
        weight_nsr: Some(weighted_nsr(&setup, &types)),
        types,
    };
    rows.insert(0, plan_row);

    let manifest = manifest(
        args,
        &setup,
        &chosen,
        &target,
        &est,
        &rows,
        &file_entries,
        &source_files,
        &source_sha,
        predicted_file_bytes,
        actual_bytes,
    );
    let report = report(args, &setup, &chosen, &target, &est, &rows, &manifest);
    let svg = chart::size_error_svg(&chart_of(&setup, &chosen, &rows, &stem));
    staging.write("chart.svg", svg.as_bytes())?;
    staging.write("report.md", report.as_bytes())?;
    let text = serde_json::to_string_pretty(&manifest)? + "\n";
    staging.write(artifact::MANIFEST, text.as_bytes())?;
    staging.commit()?;

    if args.json {
        printer.data(&text);
    } else {
        printer.data(report.trim_end());
    }
    printer.info(&format!(
        "wrote {} ({} in {} file(s)) in {:.1}s",
        args.output.display(),
        human_bytes(actual_bytes),
        written.len(),
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The files that make up the source: every regular, non-hidden file at the
/// top of a checkpoint directory (config and tokenizer too), sorted; or the file.
fn source_paths(model: &Path, weights: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if !model.is_dir() {
        return Ok(weights.to_vec());
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(model).map_err(|e| formats::Error::io(model, e))? {
        let e = e.map_err(|e| formats::Error::io(model, e))?;
        let p = e.path();
        let hidden = e.file_name().to_string_lossy().starts_with('.');
        if p.is_file() && !hidden {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// llama.cpp's recipes on this model, scored with the same measurements.
pub fn comparison(
    setup: &Setup,
    args: &PlanArgs,
    target: &Target,
    engine: passes::cost::Engine,
    w: &passes::cost::Workload,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for name in COMPARED {
        let Ok(m) = planner::recipe_model(setup, name, args.allow_requantize) else {
            continue;
        };
        let types = planner::types_of(&m);
        let (bytes, error) = planner::score(setup, &types);
        let est = planner::cost(&m, &setup.arch, target, engine, w, 1)?;
        let devices = est.min_devices;
        let est = match devices {
            Some(d) if d > 1 => planner::cost(&m, &setup.arch, target, engine, w, d)?,
            _ => est,
        };
        rows.push(Row {
            name: name.into(),
            bytes,
            error,
            fits: est.fits,
            devices,
            tokens_per_second: est.decode_tokens_per_second.central,
            usd_per_mtok: est.usd_per_million_tokens.central,
            text: None,
            weight_nsr: Some(weighted_nsr(setup, &types)).filter(|_| error.is_some()),
            types,
        });
    }
    Ok(rows)
}

fn chart_of(setup: &Setup, chosen: &planner::Chosen, rows: &[Row], stem: &str) -> Chart {
    let mut points: Vec<Point> = passes::plan::frontier(&setup.options, 16)
        .into_iter()
        .map(|a| Point {
            label: format!("{:.2} bpw", bpw(a.bytes, setup)),
            bytes: a.bytes,
            error: a.error,
            kind: PointKind::Plan,
        })
        .collect();
    for r in rows.iter().skip(1) {
        if let Some(e) = r.error {
            points.push(Point {
                label: r.name.clone(),
                bytes: r.bytes,
                error: e,
                kind: PointKind::Recipe,
            });
        }
    }
    points.push(Point {
        label: format!("{:.2} bpw", bpw(chosen.allocation.bytes, setup)),
        bytes: chosen.allocation.bytes,
        error: chosen.allocation.error,
        kind: PointKind::Chosen,
    });
    Chart {
        title: format!("{stem}: tensor bytes against predicted KL divergence"),
        x_label: "tensor bytes".into(),
        y_label: "predicted KL divergence (nats)".into(),
        points,
        budget: Some((chosen.budget.tensor_bytes, "budget".into())),
    }
}

fn bpw(bytes: u64, setup: &Setup) -> f64 {
    bytes as f64 * 8.0 / setup.opened.loaded.model.n_params().max(1) as f64
}

fn opt(v: Option<f64>) -> Value {
    v.filter(|x| x.is_finite())
        .map_or(Value::Null, |x| json!(x))
}

fn text_json(t: &Option<TextAccuracy>) -> Value {
    match t {
        None => Value::Null,
        Some(t) => json!({
            "windows": t.windows,
            "perplexity_original": opt(Some(t.ppl_original)),
            "perplexity": opt(Some(t.ppl)),
            "perplexity_ratio": opt(Some(t.ppl / t.ppl_original)),
            "kld_mean": opt(Some(t.kld)),
            "kld_p99": opt(Some(t.kld_p99)),
            "top1_agreement": opt(Some(t.top1)),
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn manifest(
    args: &BuildArgs,
    setup: &Setup,
    chosen: &planner::Chosen,
    target: &Target,
    est: &Estimate,
    rows: &[Row],
    files: &[Value],
    source_files: &[Value],
    source_sha: &str,
    predicted: u64,
    actual: u64,
) -> Value {
    let model = &setup.opened.loaded.model;
    let plan = &rows[0];
    let tensors: Vec<Value> = setup
        .options
        .iter()
        .zip(&chosen.allocation.pick)
        .zip(&model.tensors)
        .map(|((o, &p), t)| {
            let c = o.choices[p];
            let m = setup.measured(&o.name);
            json!({
                "name": o.name,
                "shape": t.shape,
                "role": t.role.name(),
                "type": c.ty.name(),
                "bytes": c.bytes,
                "nsr": m.and_then(|m| m.candidates.iter().find(|x| x.ty == c.ty)).map(|x| x.nsr),
                "predicted_kld": c.error,
                "sensitivity": setup.sensitivity.get(&o.name),
                "rows_measured": m.map(|m| m.rows_measured),
            })
        })
        .collect();
    let mut by_type: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (o, &p) in setup.options.iter().zip(&chosen.allocation.pick) {
        let c = o.choices[p];
        let e = by_type.entry(c.ty.name()).or_insert((0, 0));
        e.0 += 1;
        e.1 += c.bytes;
    }
    let mut warnings: Vec<String> = setup.warnings.clone();
    if !target.runtimes.contains_key("llama.cpp") {
        warnings.push(format!(
            "`{}` does not list llama.cpp among its runtimes: the GGUF may not be servable there",
            target.id
        ));
    }
    if chosen.budget.devices > 1 {
        warnings.push(format!(
            "sharded across {} devices: the model does not fit one {} with at least {} bits per weight; files use llama.cpp's split layout (one per rank)",
            chosen.budget.devices, target.id, args.plan.min_bpw
        ));
    }
    json!({
        "schema": "kiln.artifact/1",
        "kiln_version": env!("CARGO_PKG_VERSION"),
        "source": {
            "model": args.model.file_name().map(|n| n.to_string_lossy().into_owned()),
            "sha256": source_sha,
            "files": source_files,
            "parameters": model.n_params(),
            "architecture": model.arch.as_ref().map(|a| a.family.clone()),
        },
        "target": {
            "id": target.id,
            "name": target.name,
            "memory_bytes": target.memory_bytes(),
        },
        "serving": {
            "engine": est.engine.name(),
            "context": args.plan.context,
            "concurrency": args.plan.concurrency,
            "kv_type": args.plan.kv_type,
            "devices": chosen.budget.devices,
            "tensor_parallel": est.tensor_parallel,
        },
        "plan": {
            "objective": format!("{:?}", args.objective).to_lowercase(),
            "error_ceiling": chosen.ceiling.as_ref().map(|(e, what)| json!({"predicted_kld": e, "from": what})),
            "budget_bytes": chosen.budget.file_bytes,
            "budget_tensor_bytes": chosen.budget.tensor_bytes,
            "budget_from": chosen.budget.from,
            "memory_per_device": chosen.budget.memory.as_ref().map(|m| json!({
                "usable_bytes": m.usable_per_device,
                "kv_cache_bytes": m.kv_per_device,
                "overhead_bytes": m.overhead_per_device,
                "policy": m.policy,
            })),
            "importance": setup.importance_source.describe(),
            "sensitivity": setup.sensitivity_source,
            "sensitivity_groups": setup.groups,
            "candidates": planner::CANDIDATES.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "tensor_bytes": chosen.allocation.bytes,
            "bits_per_weight": bpw(chosen.allocation.bytes, setup),
            "predicted_kld": chosen.allocation.error,
            "by_type": by_type.iter().map(|(t, (n, b))| json!({"type": t, "tensors": n, "bytes": b})).collect::<Vec<_>>(),
        },
        "tensors": tensors,
        "files": files,
        "size": {"predicted_bytes": predicted, "actual_bytes": actual},
        "cost": {
            "fits": est.fits,
            "weights_bytes": est.weights_bytes,
            "memory_per_device_bytes": est.memory_per_device_bytes,
            "memory_usable_per_device_bytes": est.memory_usable_per_device_bytes,
            "decode_tokens_per_second": opt(est.decode_tokens_per_second.central),
            "throughput_tokens_per_second": opt(est.throughput_tokens_per_second.central),
            "ttft_seconds": opt(est.ttft_seconds.central),
            "usd_per_million_tokens": opt(est.usd_per_million_tokens.central),
            "joules_per_token": opt(est.joules_per_token.central),
            "notes": est.notes,
        },
        "accuracy": {
            "predicted_kld": chosen.allocation.error,
            "weight_nsr": plan.weight_nsr,
            "text": text_json(&plan.text),
            "text_file": setup.eval_text.as_ref().filter(|_| plan.text.is_some()).and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()),
        },
        "comparison": rows.iter().map(|r| json!({
            "name": r.name,
            "tensor_bytes": r.bytes,
            "predicted_kld": r.error,
            "fits": r.fits,
            "devices": r.devices,
            "decode_tokens_per_second": opt(r.tokens_per_second),
            "usd_per_million_tokens": opt(r.usd_per_mtok),
            "weight_nsr": opt(r.weight_nsr),
        })).collect::<Vec<_>>(),
        "warnings": warnings,
        "notes": model.notes,
    })
}

/// Noise-to-signal ratio over all measured weights, weighted by size.
pub fn weighted_nsr(setup: &Setup, types: &BTreeMap<String, GgmlType>) -> f64 {
    let model = &setup.opened.loaded.model;
    let mut num = 0.0;
    let mut den = 0.0;
    for m in &setup.measured {
        let Some(ty) = types.get(&m.name) else {
            continue;
        };
        let n = model.tensor(&m.name).map_or(0, |t| t.n_elements()) as f64;
        if let Some(c) = m.candidates.iter().find(|c| c.ty == *ty) {
            num += c.nsr * n;
            den += n;
        }
    }
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

fn cell(v: Option<f64>, prec: usize) -> String {
    v.filter(|x| x.is_finite())
        .map_or("-".into(), |x| format!("{x:.prec$}"))
}

/// A KL divergence: fixed point, or scientific when small.
fn kld(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.3e}")
    } else {
        format!("{v:.5}")
    }
}

fn report(
    args: &BuildArgs,
    setup: &Setup,
    chosen: &planner::Chosen,
    target: &Target,
    est: &Estimate,
    rows: &[Row],
    manifest: &Value,
) -> String {
    let model = &setup.opened.loaded.model;
    let mut s = String::new();
    let name = args
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    s += &format!(
        "# kiln build: {name} for {} ({})\n\n",
        target.id, target.name
    );
    s += &format!(
        "- kiln {}; source sha256 `{}`; {} parameters\n",
        env!("CARGO_PKG_VERSION"),
        manifest["source"]["sha256"].as_str().unwrap_or(""),
        model.n_params()
    );
    s += &format!(
        "- serving: {} on {} device(s), context {} x {} sequence(s), KV cache {}\n",
        est.engine.name(),
        chosen.budget.devices,
        args.plan.context,
        args.plan.concurrency,
        args.plan.kv_type
    );
    s += &format!(
        "- budget: {} of model file ({})\n",
        human_bytes(chosen.budget.file_bytes),
        chosen.budget.from
    );
    s += &format!(
        "- objective: {}{}\n",
        format!("{:?}", args.objective).to_lowercase(),
        chosen
            .ceiling
            .as_ref()
            .map(|(e, w)| format!(" (error ceiling {e:.5}: {w})"))
            .unwrap_or_default()
    );
    s += &format!("- importance: {}\n", setup.importance_source.describe());
    s += &format!("- sensitivity: {}\n\n", setup.sensitivity_source);

    s += "## Result\n\n";
    s += "| | |\n|---|---|\n";
    s += &format!(
        "| size | {} predicted, {} written ({:.3} bits per weight over tensors) |\n",
        manifest["size"]["predicted_bytes"],
        manifest["size"]["actual_bytes"],
        bpw(chosen.allocation.bytes, setup)
    );
    s += &format!(
        "| fits | {} |\n",
        match est.fits {
            Some(true) => format!("yes, {} device(s)", chosen.budget.devices),
            Some(false) => "no".into(),
            None => "unknown (memory not published)".into(),
        }
    );
    s += &format!(
        "| decode | {} tokens/s per sequence (calibrated estimate) |\n",
        cell(est.decode_tokens_per_second.central, 1)
    );
    s += &format!(
        "| $ per million tokens | {} |\n",
        cell(est.usd_per_million_tokens.central, 4)
    );
    s += &format!(
        "| joules per token | {} |\n",
        cell(est.joules_per_token.central, 4)
    );
    s += &format!(
        "| predicted KL divergence | {} nats |\n",
        kld(chosen.allocation.error)
    );
    s += &format!(
        "| weight noise-to-signal | {:.6} (size-weighted mean) |\n",
        rows[0].weight_nsr.unwrap_or(0.0)
    );
    match &rows[0].text {
        Some(t) => {
            s += &format!(
                "| measured on {} held-out window(s) | PPL {:.4} (original {:.4}, ratio {:.4}), KLD {} (p99 {}), top-1 {:.2}% |\n",
                t.windows,
                t.ppl,
                t.ppl_original,
                t.ppl / t.ppl_original,
                kld(t.kld),
                kld(t.kld_p99),
                t.top1 * 100.0
            );
        }
        None => s += "| measured on text | not measured: give --text or --eval-text |\n",
    }
    s += "\n## Files\n\n| file | bytes | sha256 |\n|---|---:|---|\n";
    for f in manifest["files"].as_array().into_iter().flatten() {
        s += &format!(
            "| {} | {} | `{}` |\n",
            f["path"].as_str().unwrap_or(""),
            f["bytes"],
            f["sha256"].as_str().unwrap_or("")
        );
    }
    s += "\n## Encodings\n\n| type | tensors | bytes |\n|---|---:|---:|\n";
    for t in manifest["plan"]["by_type"].as_array().into_iter().flatten() {
        s += &format!(
            "| {} | {} | {} |\n",
            t["type"].as_str().unwrap_or(""),
            t["tensors"],
            t["bytes"]
        );
    }
    s += "\n## Compared with llama.cpp's recipes\n\n";
    s += "Same measurements for every row: predicted KL divergence is the sum over tensors of sensitivity x noise-to-signal ratio; speed and $ are the calibrated estimate on the fewest devices that fit.\n\n";
    s += "| option | tensor bytes | bpw | weight NSR | predicted KLD | fits | devices | tokens/s | $/Mtok |\n|---|---:|---:|---:|---:|---|---:|---:|---:|\n";
    for r in rows {
        s += &format!(
            "| {} | {} | {:.3} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.bytes,
            bpw(r.bytes, setup),
            r.weight_nsr.map_or("-".into(), |v| format!("{v:.3e}")),
            r.error.map_or("-".into(), kld),
            match r.fits {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            },
            r.devices.map_or("-".into(), |d| d.to_string()),
            cell(r.tokens_per_second, 1),
            cell(r.usd_per_mtok, 4)
        );
    }
    if !setup.groups.is_empty() {
        s += "\n## Sensitivities (probed)\n\n| group | tensors | KLD at ~4.5 bpw | sum NSR | KLD per NSR |\n|---|---:|---:|---:|---:|\n";
        for g in &setup.groups {
            s += &format!(
                "| {} | {} | {:.6} | {:.6} | {:.4} |\n",
                g.label, g.tensors, g.kld, g.nsr, g.sensitivity
            );
        }
    }
    let warnings = manifest["warnings"].as_array().cloned().unwrap_or_default();
    let notes = manifest["cost"]["notes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !warnings.is_empty() {
        s += "\n## Warnings\n\n";
        for w in warnings {
            s += &format!("- {}\n", w.as_str().unwrap_or(""));
        }
    }
    if !notes.is_empty() {
        s += "\n## Cost model notes\n\n";
        for n in notes {
            s += &format!("- {}\n", n.as_str().unwrap_or(""));
        }
    }
    s += "\nChart: `chart.svg` (tensor bytes against predicted KL divergence; kiln's trade-off curve, the recipes, the chosen plan). Manifest: `manifest.json`.\n";
    s
}
