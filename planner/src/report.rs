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

/// `1234567` -> `1.18 MiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
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

/// The markdown report of a build: `m` as written, `rows` its comparison
/// (kiln's plan first).
pub fn report(m: &Manifest, rows: &[Row]) -> String {
    let params = m.source.parameters;
    let bpw = |bytes: u64| bytes as f64 * 8.0 / params.max(1) as f64;
    let mut s = String::new();
    s += &format!(
        "# kiln build: {} for {} ({})\n\n",
        m.source.model.as_deref().unwrap_or_default(),
        m.target.id,
        m.target.name
    );
    s += &format!(
        "- kiln {}; source sha256 `{}`; {} parameters\n",
        m.kiln_version, m.source.sha256, params
    );
    s += &format!(
        "- serving: {} on {} device(s), context {} x {} sequence(s), KV cache {}\n",
        m.serving.engine,
        m.serving.devices,
        m.serving.context,
        m.serving.concurrency,
        m.serving.kv_type
    );
    s += &format!(
        "- budget: {} of model file ({})\n",
        human_bytes(m.plan.budget_bytes),
        m.plan.budget_from
    );
    s += &format!(
        "- objective: {}{}\n",
        m.plan.objective,
        m.plan
            .error_ceiling
            .as_ref()
            .map(|c| format!(" (error ceiling {:.5}: {})", c.predicted_kld, c.from))
            .unwrap_or_default()
    );
    s += &format!("- importance: {}\n", m.plan.importance);
    s += &format!("- sensitivity: {}\n\n", m.plan.sensitivity);

    s += "## Result\n\n";
    s += "| | |\n|---|---|\n";
    s += &format!(
        "| size | {} predicted, {} written ({:.3} bits per weight over tensors) |\n",
        m.size.predicted_bytes, m.size.actual_bytes, m.plan.bits_per_weight
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
        cell(m.cost.decode_tokens_per_second, 1)
    );
    s += &format!(
        "| $ per million tokens | {} |\n",
        cell(m.cost.usd_per_million_tokens, 4)
    );
    s += &format!(
        "| joules per token | {} |\n",
        cell(m.cost.joules_per_token, 4)
    );
    s += &format!(
        "| predicted KL divergence | {} nats |\n",
        kld(m.plan.predicted_kld)
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
    for f in &m.files {
        s += &format!(
            "| {} | {} | `{}` |\n",
            f.path.as_deref().unwrap_or(""),
            f.bytes,
            f.sha256
        );
    }
    s += "\n## Encodings\n\n| type | tensors | bytes |\n|---|---:|---:|\n";
    for t in &m.plan.by_type {
        s += &format!("| {} | {} | {} |\n", t.ty, t.tensors, t.bytes);
    }
    s += "\n## Compared with llama.cpp's recipes\n\n";
    s += "Same measurements for every row: predicted KL divergence is the sum over tensors of sensitivity x noise-to-signal ratio; speed and $ are the calibrated estimate on the fewest devices that fit.\n\n";
    s += "| option | tensor bytes | bpw | weight NSR | predicted KLD | fits | devices | tokens/s | $/Mtok |\n|---|---:|---:|---:|---:|---|---:|---:|---:|\n";
    for r in rows {
        s += &format!(
            "| {} | {} | {:.3} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.bytes,
            bpw(r.bytes),
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
    if !m.plan.sensitivity_groups.is_empty() {
        s += "\n## Sensitivities (probed)\n\n| group | tensors | KLD at ~4.5 bpw | sum NSR | KLD per NSR |\n|---|---:|---:|---:|---:|\n";
        for g in &m.plan.sensitivity_groups {
            s += &format!(
                "| {} | {} | {:.6} | {:.6} | {:.4} |\n",
                g.label, g.tensors, g.kld, g.nsr, g.sensitivity
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
    s += "\nChart: `chart.svg` (tensor bytes against predicted KL divergence; kiln's trade-off curve, the recipes, the chosen plan). Manifest: `manifest.json`.\n";
    s
}

/// The chart's points: kiln's trade-off curve, the recipes (rows after the
/// first), and the chosen plan.
pub fn chart(setup: &Setup, chosen: &Chosen, rows: &[Row], stem: &str) -> Chart {
    let mut points: Vec<Point> = passes::plan::frontier(&setup.options, 16)
        .into_iter()
        .map(|a| Point {
            label: format!("{:.2} bpw", setup.bpw(a.bytes)),
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
        label: format!("{:.2} bpw", setup.bpw(chosen.allocation.bytes)),
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
