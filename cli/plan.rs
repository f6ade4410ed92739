//! `kiln plan MODEL --targets ID[,ID...]`: the options side by side, without
//! writing weights. Per target: kiln's plan at the target's budget and
//! llama.cpp's recipes, each with size, whether it fits and on how many
//! devices, predicted decode speed and $ per million tokens, the predicted
//! KL divergence from the measured per-tensor errors, and (with `--text` or
//! `--eval-text`) the KL divergence, perplexity ratio and top-1 agreement
//! measured on held-out text. The work is `planner::plan_targets`; this
//! command parses, calls and prints (a table, or JSON).
//!
//! What must stay true: the model is measured once and every target and
//! every option is scored with the same measurements; nothing is written.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use planner::Row;
use serde_json::{json, Value};

use formats::human;

use crate::common::{cancel_flag, lift_plan, Objective, PlanArgs};
use crate::printer::Bars;
use crate::Printer;

#[derive(Args, Debug)]
pub struct PlanCmdArgs {
    /// A Hugging Face checkpoint directory or a .gguf file.
    pub model: PathBuf,
    /// Target ids, comma-separated (see `kiln targets`).
    #[arg(long, short = 'T', value_delimiter = ',', required = true)]
    pub targets: Vec<String>,
    /// A profile file (the schema of targets/*.toml) a target id may name; may be repeated.
    #[arg(long, value_name = "FILE.toml")]
    pub target_file: Vec<PathBuf>,
    /// cost (the default): the cheapest artifact that is still good enough, i.e. the fewest bytes
    /// whose predicted KL divergence is at most --max-error (default: that of llama.cpp's Q4_K_M
    /// on this model); accuracy: the least predicted loss that fits the budget.
    #[arg(long, value_enum, default_value = "cost")]
    pub objective: Objective,
    /// Error ceiling of the cost objective, in predicted KL divergence (nats) [default: the
    /// predicted KL divergence of llama.cpp's Q4_K_M on this model].
    #[arg(long, value_name = "X")]
    pub max_error: Option<f64>,
    /// Print JSON to stdout instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub plan: PlanArgs,
}

fn finite(v: Option<f64>) -> Value {
    v.filter(|x| x.is_finite())
        .map_or(Value::Null, |x| json!(x))
}

fn row_json(r: &Row) -> Value {
    let f = finite;
    json!({
        "name": r.name,
        "tensor_bytes": r.bytes,
        "bits_per_weight": r.bpw(),
        "fits": r.fits,
        "devices": r.devices,
        "decode_tokens_per_second": f(r.tokens_per_second),
        "usd_per_million_tokens": f(r.usd_per_mtok),
        "predicted_kld": f(r.error),
        "weight_nsr": f(r.weight_nsr),
        "measured": r.text.as_ref().map(|t| json!({
            "windows": t.windows,
            "kld_mean": f(Some(t.kld)),
            "kld_p99": f(Some(t.kld_p99)),
            "perplexity": f(Some(t.ppl)),
            "perplexity_ratio": f(Some(t.ppl / t.ppl_original)),
            "top1_agreement": f(Some(t.top1)),
        })),
    })
}

fn row_text(r: &Row, width: usize) -> String {
    let m = r.text.as_ref();
    let n = |v: Option<f64>| v.map_or("-".to_string(), human::num);
    format!(
        "  {:<width$} {:>10} {:>6} {:>5} {:>7} {:>9} {:>9} {:>10} {:>10} {:>10} {:>9} {:>7}\n",
        r.name,
        human::bytes(r.bytes),
        human::sig(r.bpw(), 3),
        match r.fits {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        },
        r.devices.map_or("-".into(), |d| d.to_string()),
        n(r.tokens_per_second),
        n(r.usd_per_mtok),
        n(r.weight_nsr),
        n(r.error),
        n(m.map(|t| t.kld)),
        n(m.map(|t| t.ppl / t.ppl_original)),
        m.map_or("-".into(), |t| format!(
            "{}%",
            human::sig(t.top1 * 100.0, 3)
        )),
    )
}

/// The pruning options weighed for one target: the frontier with and
/// without pruning at the same budget, the chosen one marked.
fn pruning_text(p: &planner::prune::Pruning) -> String {
    let n = |v: Option<f64>| v.map_or("-".to_string(), human::num);
    let mut t = format!(
        "  pruning weighed (--prune-candidates {}; at the unpruned plan's budget, measured against the original):\n  {:<28} {:>6} {:>4} {:>5} {:>10} {:>10} {:>9} {:>9} {:>10} {:>7} {:>6}\n",
        p.candidates, "pruning", "layers", "kv", "ffn", "size", "KV cache", "max batch", "tok/s", "KLD", "top-1", "chosen"
    );
    for o in &p.options {
        if let Some(why) = &o.not_applicable {
            t += &format!("  {:<28} not weighed: {}\n", o.spec, passes::printable(why));
            continue;
        }
        let m = o.measured.as_ref();
        t += &format!(
            "  {:<28} {:>6} {:>4} {:>5} {:>10} {:>10} {:>9} {:>9} {:>10} {:>7} {:>6}\n",
            o.resolved.as_deref().unwrap_or(&o.spec),
            o.n_layer,
            o.n_head_kv,
            o.ffn,
            o.tensor_bytes.map_or("-".into(), human::bytes),
            human::bytes(o.kv_cache_bytes),
            o.max_batch.map_or("-".into(), |b| b.to_string()),
            n(o.decode_tokens_per_second),
            n(m.and_then(|t| t.kld_mean)),
            m.and_then(|t| t.top1_agreement)
                .map_or("-".into(), |t| format!("{}%", human::sig(t * 100.0, 3))),
            if o.chosen { "yes" } else { "" }
        );
    }
    t
}

/// The budget as numbers with their units in the key names, and what set it.
fn budget_json(b: &planner::Budget, o: &planner::PlanOptions) -> Value {
    json!({
        "source": b.source,
        "file_bytes": b.file_bytes,
        "tensor_bytes": b.tensor_bytes,
        "devices": b.devices,
        "bpw": if b.source == "bpw" { json!(o.bpw) } else { Value::Null },
        "budget_gb": if b.source == "budget_gb" { json!(o.budget_gb) } else { Value::Null },
        "usable_bytes_per_device": b.memory.as_ref().map(|m| m.usable_per_device),
        "kv_cache_bytes_per_device": b.memory.as_ref().map(|m| m.kv_per_device),
        "overhead_bytes_per_device": b.memory.as_ref().map(|m| m.overhead_per_device),
        "description": b.from,
    })
}

pub fn run(args: &PlanCmdArgs, printer: &Printer) -> Result<()> {
    let options = args.plan.options()?;
    planner::options::check(&options).map_err(lift_plan)?;
    let engine = planner::options::any_engine(&options).map_err(lift_plan)?;
    planner::prune::check(&options).map_err(lift_plan)?;
    // Checked now, sized once the model's trained context is known.
    planner::options::workload(&options, 0).map_err(lift_plan)?;
    // As `kiln build` refuses it: nothing is planned that cannot be built.
    crate::build::check_ct_input(&args.model, engine)?;
    let mut targets = Vec::new();
    for id in &args.targets {
        targets.push(crate::targets::resolve(
            id,
            &args.target_file,
            false,
            printer,
        )?);
    }
    let cancel = cancel_flag();
    let bars = Bars::new(printer);
    // Its warnings were printed as they were found, before measuring.
    let setup = planner::setup(&args.model, &options, &bars, &cancel).map_err(lift_plan)?;
    let workload =
        planner::options::workload(&options, setup.arch.context_length).map_err(lift_plan)?;
    let params = setup.params();
    if engine != passes::cost::Engine::LlamaCpp {
        return ct_plans(
            args, &setup, &targets, &options, engine, &workload, &bars, &cancel, printer,
        );
    }
    let measure = !setup.eval_windows.is_empty();
    let plans = planner::plan_targets(
        &setup,
        &targets,
        &options,
        engine,
        &workload,
        args.objective.into(),
        args.max_error,
        &bars,
        &cancel,
    )
    .map_err(lift_plan)?;

    let mut out = Vec::new();
    let mut text = String::new();
    for (target, p) in targets.iter().zip(&plans) {
        let note = match &p.budget {
            Ok(b) => format!(
                "budget {} of model file ({})",
                human::bytes(b.file_bytes),
                b.from
            ),
            Err(why) => why.clone(),
        };
        text += &format!("{} ({}): {note}\n", target.id, target.name);
        let width = p
            .rows
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(0)
            .max(24);
        text += &format!(
            "  {:<width$} {:>10} {:>6} {:>5} {:>7} {:>9} {:>9} {:>10} {:>10} {:>10} {:>9} {:>7}\n",
            "option",
            "size",
            "bpw",
            "fits",
            "devices",
            "tok/s",
            "$/Mtok",
            "weight NSR",
            "pred KLD",
            "KLD",
            "PPL ratio",
            "top-1"
        );
        for r in &p.rows {
            text += &row_text(r, width);
        }
        if let Some(pr) = &p.pruning {
            text += &pruning_text(pr);
        }
        text += "\n";
        let mut j = json!({
            "target": target.id,
            "name": target.name,
            "budget": p.budget.as_ref().ok().map(|b| budget_json(b, &options)),
            "no_plan": p.budget.as_ref().err(),
            "options": p.rows.iter().map(row_json).collect::<Vec<_>>(),
        });
        // Only with --prune-candidates: the output without it is unchanged.
        if let Some(pr) = &p.pruning {
            j["pruning"] = serde_json::to_value(pr)?;
        }
        out.push(j);
    }
    if args.json {
        printer.data(&serde_json::to_string_pretty(&json!({
            "model": args.model,
            "parameters": params,
            "importance": setup.importance_source.describe(),
            "sensitivity": setup.sensitivity_source,
            "measured_on": setup.eval_text.as_ref().filter(|_| measure),
            "inputs": planner::build::inputs(&options).map_err(lift_plan)?,
            "targets": out,
        }))?);
    } else {
        text += &format!(
            "importance: {}\nsensitivity: {}\npredicted KLD: sum over tensors of sensitivity x measured noise-to-signal ratio; KLD, PPL ratio, top-1: {}\n",
            setup.importance_source.describe(),
            setup.sensitivity_source,
            match (&setup.eval_text, measure) {
                (Some(p), true) => format!("measured on {} held-out window(s) of {}", setup.eval_windows.len(), p.display()),
                _ => "not measured (give --text or --eval-text)".into(),
            }
        );
        printer.data(text.trim_end());
    }
    Ok(())
}

/// `kiln plan --engine vllm|trt-llm`: per target, the compressed-tensors
/// plan `kiln build` would write (per layer among the schemes the target's
/// runtime runs natively) beside the uniform schemes, by predicted KL
/// divergence; a target whose runtimes do not include the engine says so.
#[allow(clippy::too_many_arguments)]
fn ct_plans(
    args: &PlanCmdArgs,
    setup: &planner::Setup,
    targets: &[passes::cost::Target],
    options: &planner::PlanOptions,
    engine: passes::cost::Engine,
    workload: &passes::cost::Workload,
    bars: &Bars,
    cancel: &std::sync::atomic::AtomicBool,
    printer: &Printer,
) -> Result<()> {
    use passes::cost::CtScheme;
    let params = setup.params().max(1);
    let mut text = String::new();
    let mut out = Vec::new();
    for target in targets {
        let sizing = planner::Sizing {
            options,
            target,
            engine,
            workload,
        };
        let p = match planner::ct_build::plan(
            setup,
            &sizing,
            engine.name(),
            args.objective.into(),
            args.max_error,
        ) {
            Ok(p) => p,
            Err(e) => {
                text += &format!("{} ({}): {e}\n\n", target.id, target.name);
                out.push(
                    json!({"target": target.id, "name": target.name, "no_plan": e.to_string()}),
                );
                continue;
            }
        };
        // With --prune-candidates: each pruning option planned at this
        // plan's memory and measured against the original.
        let weighed =
            planner::ct_build::weigh_pruning(setup, &sizing, engine.name(), &p, bars, cancel)
                .map_err(lift_plan)?;
        let mut plans = vec![(format!("kiln plan ({})", p.runtime), p.clone())];
        for (label, sc) in [
            ("W4A16 g128", CtScheme::W4A16),
            ("W8A16 g128", CtScheme::W8A16),
            ("FP8_DYNAMIC", CtScheme::Fp8Dynamic),
        ] {
            if p.legal.contains(&sc) {
                plans.push((label.to_string(), p.uniform_plan(Some(sc))));
            }
        }
        // (name, bytes, predicted KLD, serving estimate on the target)
        let mut rows = Vec::new();
        for (name, q) in plans {
            let est = planner::ct_build::cost(setup, &sizing, &q).map_err(lift_plan)?;
            rows.push((
                name,
                q.bytes(),
                q.error(),
                planner::manifest::Cost::of(&est),
            ));
        }
        text += &format!(
            "{} ({}): {} runs {}{}; budget {}\n",
            target.id,
            target.name,
            p.runtime,
            p.legal
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", "),
            if p.single_group {
                " (one config group)"
            } else {
                ""
            },
            p.budget
        );
        text += &format!(
            "  {:<24} {:>10} {:>6} {:>5} {:>9} {:>9} {:>12}\n",
            "option", "size", "bpw", "fits", "tok/s", "$/Mtok", "pred KLD"
        );
        let cell =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |x| format!("{x:.digits$}"));
        for (name, b, e, c) in &rows {
            text += &format!(
                "  {:<24} {:>10} {:>6.3} {:>5} {:>9} {:>9} {:>12.6}\n",
                name,
                human::bytes(*b),
                *b as f64 * 8.0 / params as f64,
                match c.fits {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "?",
                },
                cell(c.decode_tokens_per_second, 1),
                cell(c.usd_per_million_tokens, 3),
                e
            );
        }
        let schemes: std::collections::BTreeSet<String> = p
            .units
            .iter()
            .zip(&p.chosen)
            .map(|(u, &c)| {
                u.choices[c]
                    .scheme
                    .map_or("bf16".into(), |s| s.name().to_string())
            })
            .collect();
        text += &format!(
            "  plan uses: {}\n",
            schemes.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        if let Some(w) = &weighed {
            text += &pruning_text(&w.record);
        }
        text += "\n";
        let mut j = json!({
            "target": target.id,
            "name": target.name,
            "runtime": p.runtime,
            "legal_schemes": p.legal.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "single_group": p.single_group,
            "budget": p.budget,
            "plan_schemes": schemes,
            "options": rows.iter().map(|(n, b, e, c)| json!({
                "name": n,
                "tensor_bytes": b,
                "bits_per_weight": *b as f64 * 8.0 / params as f64,
                "predicted_kld": e,
                "cost": c,
            })).collect::<Vec<_>>(),
        });
        // Only with --prune-candidates: the output without it is unchanged.
        if let Some(w) = &weighed {
            j["pruning"] = serde_json::to_value(&w.record)?;
        }
        out.push(j);
    }
    if args.json {
        printer.data(&serde_json::to_string_pretty(&json!({
            "model": args.model,
            "parameters": params,
            "engine": engine.name(),
            "sensitivity": setup.sensitivity_source,
            "targets": out,
        }))?);
    } else {
        text += &format!(
            "sensitivity: {}\npredicted KLD: sum over Linears of sensitivity x measured noise-to-signal ratio of the scheme's arithmetic; measured KLD: `kiln build --engine {} --text`\n",
            setup.sensitivity_source,
            engine.name()
        );
        printer.data(text.trim_end());
    }
    Ok(())
}
