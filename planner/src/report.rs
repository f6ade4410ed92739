//! `report.md` and the chart data of a build: the manifest's figures and the
//! comparison rows as a markdown page, and kiln's trade-off curve, the
//! recipes and the chosen plan as chart points.
//!
//! What must stay true: the report says nothing the manifest and the rows do
//! not hold; a figure that was not measured prints as `-` (or says how to
//! measure it), never as a number.

use formats::chart::{Chart, Point, PointKind};

use crate::compare::Row;
use crate::manifest::Manifest;
use crate::setup::Setup;
use crate::solve::Chosen;

/// `1234567` -> `1.18 MiB` (the one formatter, `formats::human`).
pub use formats::human::bytes as human_bytes;
use formats::human::{bytes, count, num, sig};

fn cell(v: Option<f64>) -> String {
    v.map_or("-".into(), num)
}

/// The objective in words, with its bound.
fn objective_line(m: &Manifest) -> String {
    match &m.plan.error_ceiling {
        Some(c) => format!(
            "{}: the fewest bytes whose predicted KL divergence is at most {} nats ({}), within the budget",
            m.plan.objective,
            num(c.predicted_kld),
            c.from
        ),
        None => format!(
            "{}: the least predicted KL divergence that fits the budget",
            m.plan.objective
        ),
    }
}

/// What the other objective gives on the same budget, from its comparison row.
fn alternative_line(m: &Manifest, rows: &[Row]) -> Option<String> {
    let other = if m.plan.objective == "cost" {
        "accuracy"
    } else {
        "cost"
    };
    let r = rows
        .iter()
        .find(|r| r.name == format!("kiln, {other} objective"))?;
    Some(format!(
        "`--objective {other}` would give {} ({} bits per weight), predicted KL divergence {} nats, {} tokens/s",
        bytes(r.bytes),
        sig(r.bytes as f64 * 8.0 / m.source.parameters.max(1) as f64, 3),
        cell(r.error),
        cell(r.tokens_per_second)
    ))
}

/// The markdown report of a build: `m` as written, `rows` its comparison
/// (kiln's plan first).
pub fn report(m: &Manifest, rows: &[Row]) -> String {
    let params = m.source.parameters;
    let mut s = String::new();
    s += &format!(
        "# kiln build: {} for {} ({})\n\n",
        m.source.model.as_deref().unwrap_or_default(),
        m.target.id,
        m.target.name
    );
    s += &format!(
        "- kiln {}; source sha256 `{}`; {} parameters ({})\n",
        m.kiln_version,
        m.source.sha256,
        formats::human::params(params),
        count(params)
    );
    s += &format!(
        "- serving: {} on {} device(s), context {} x {} sequence(s), KV cache {}\n",
        m.serving.engine,
        m.serving.devices,
        count(m.serving.context as u64),
        m.serving.concurrency,
        m.serving.kv_type
    );
    s += &format!(
        "- budget: {} of model file ({})\n",
        bytes(m.plan.budget_bytes),
        m.plan.budget_from
    );
    s += &format!("- objective: {}\n", objective_line(m));
    if let Some(alt) = alternative_line(m, rows) {
        s += &format!("- alternative: {alt}\n");
    }
    s += &format!("- importance: {}\n", m.plan.importance);
    s += &format!(
        "- measured: each tensor in every candidate on at most {} values (evenly strided rows)\n",
        count(m.plan.sample_values_per_tensor as u64)
    );
    s += &format!("- sensitivity: {}\n", m.plan.sensitivity);
    for i in &m.inputs {
        s += &format!(
            "- input: {} `{}` ({}, sha256 `{}`)\n",
            i.role.replace('_', " "),
            i.path,
            bytes(i.bytes),
            i.sha256
        );
    }
    s += "\n## Result\n\n";
    s += "| | |\n|---|---|\n";
    s += &format!(
        "| size | {} predicted, {} written ({} bytes; {} bits per weight over tensors) |\n",
        bytes(m.size.predicted_bytes),
        bytes(m.size.actual_bytes),
        count(m.size.actual_bytes),
        sig(m.plan.bits_per_weight, 4)
    );
    s += &format!(
        "| fits | {} |\n",
        match m.cost.fits {
            Some(true) => format!("yes, {} device(s)", m.serving.devices),
            Some(false) => "no".into(),
            None => "unknown (memory not published)".into(),
        }
    );
    s += &format!(
        "| decode | {} tokens/s per sequence (calibrated estimate) |\n",
        cell(m.cost.decode_tokens_per_second)
    );
    s += &format!(
        "| $ per million tokens | {} |\n",
        cell(m.cost.usd_per_million_tokens)
    );
    s += &format!("| joules per token | {} |\n", cell(m.cost.joules_per_token));
    s += &format!(
        "| predicted KL divergence | {} nats{} |\n",
        num(m.plan.predicted_kld),
        match m.pruning.as_ref().and_then(|p| p.chosen.as_ref()) {
            Some(spec) => format!(
                " (the quantization's alone, against the model pruned `{spec}`; measured below against the original)"
            ),
            None => String::new(),
        }
    );
    s += &format!(
        "| weight noise-to-signal | {} (size-weighted mean) |\n",
        cell(rows[0].weight_nsr)
    );
    match &rows[0].text {
        Some(t) => {
            s += &format!(
                "| measured on {} held-out window(s) | PPL {} (original {}, ratio {}), KLD {} (p99 {}), top-1 {}% |\n",
                t.windows,
                num(t.ppl),
                num(t.ppl_original),
                num(t.ppl / t.ppl_original),
                num(t.kld),
                num(t.kld_p99),
                sig(t.top1 * 100.0, 4)
            );
        }
        None => s += "| measured on text | not measured: give --text or --eval-text |\n",
    }
    s += "\n## Files\n\n| file | size | bytes | sha256 |\n|---|---:|---:|---|\n";
    for f in &m.files {
        s += &format!(
            "| {} | {} | {} | `{}` |\n",
            f.path.as_deref().unwrap_or(""),
            bytes(f.bytes),
            count(f.bytes),
            f.sha256
        );
    }
    s += "\n## Encodings\n\n| type | tensors | size |\n|---|---:|---:|\n";
    for t in &m.plan.by_type {
        s += &format!("| {} | {} | {} |\n", t.ty, t.tensors, bytes(t.bytes));
    }
    s += "\n## Compared with llama.cpp's recipes\n\n";
    s += "Same measurements for every row: predicted KL divergence is the sum over tensors of sensitivity x noise-to-signal ratio; speed and $ are the calibrated estimate on the fewest devices that fit.\n\n";
    s += "| option | tensor size | bpw | weight NSR | predicted KLD | fits | devices | tokens/s | $/Mtok |\n|---|---:|---:|---:|---:|---|---:|---:|---:|\n";
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            bytes(r.bytes),
            sig(r.bpw(), 3),
            cell(r.weight_nsr),
            cell(r.error),
            match r.fits {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            },
            r.devices.map_or("-".into(), |d| d.to_string()),
            cell(r.tokens_per_second),
            cell(r.usd_per_mtok)
        );
    }
    if !m.plan.sensitivity_groups.is_empty() {
        s += "\n## Sensitivities (probed)\n\n| group | tensors | KLD at ~4.5 bpw | sum NSR | KLD per NSR |\n|---|---:|---:|---:|---:|\n";
        for g in &m.plan.sensitivity_groups {
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                g.label,
                g.tensors,
                num(g.kld),
                num(g.nsr),
                num(g.sensitivity)
            );
        }
    }
    if !m.warnings.is_empty() {
        s += "\n## Warnings\n\n";
        for w in &m.warnings {
            s += &format!("- {w}\n");
        }
    }
    if !m.cost.notes.is_empty() {
        s += "\n## Cost model notes\n\n";
        for n in &m.cost.notes {
            s += &format!("- {n}\n");
        }
    }
    s += &match m.pruning.as_ref().and_then(|p| p.chosen.as_ref()) {
        Some(spec) => format!("\nChart: `chart.svg` (tensor size against predicted KL divergence of the model pruned `{spec}`: kiln's trade-off curve for it and the chosen plan; the recipes, of the unpruned model, are in the table above). Manifest: `manifest.json`. How kiln plans: the README's section \"How kiln plans\".\n"),
        None => "\nChart: `chart.svg` (tensor size against predicted KL divergence; kiln's trade-off curve, the recipes, the other objective's plan, the chosen plan). Manifest: `manifest.json`. How kiln plans: the README's section \"How kiln plans\".\n".to_string(),
    };
    s
}

/// The chart's points: kiln's trade-off curve, the recipes (rows after the
/// first), and the chosen plan.
pub fn chart(setup: &Setup, chosen: &Chosen, rows: &[Row], stem: &str) -> Chart {
    let mut points: Vec<Point> = passes::plan::frontier(&setup.options, 16)
        .into_iter()
        .map(|a| Point {
            label: format!("{} bpw", sig(setup.bpw(a.bytes), 3)),
            bytes: a.bytes,
            error: a.error,
            kind: PointKind::Plan,
        })
        .collect();
    for r in rows.iter().skip(1) {
        if let Some(e) = r.error {
            points.push(Point {
                label: r.name.strip_prefix("kiln, ").unwrap_or(&r.name).to_string(),
                bytes: r.bytes,
                error: e,
                kind: PointKind::Recipe,
            });
        }
    }
    points.push(Point {
        label: format!("{} bpw", sig(setup.bpw(chosen.allocation.bytes), 3)),
        bytes: chosen.allocation.bytes,
        error: chosen.allocation.error,
        kind: PointKind::Chosen,
    });
    Chart {
        title: format!("{stem}: tensor size against predicted KL divergence"),
        x_label: "tensor size".into(),
        y_label: "predicted KL divergence (nats)".into(),
        points,
        budget: Some((chosen.budget.tensor_bytes, "budget".into())),
    }
}
