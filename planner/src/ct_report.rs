//! The report of a compressed-tensors build: the plan against the uniform
//! schemes, predicted and measured, the serving estimate, and the scheme of
//! every unit.

use crate::ct_build::CtPlan;
use crate::setup::Setup;
use crate::solve::Sizing;

/// A KL divergence for the report: 6 decimals, or 4 significant digits
/// below 0.001 (a tiny model's measured values).
pub(crate) fn kld(x: f64) -> String {
    if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:.3e}")
    } else {
        format!("{x:.6}")
    }
}

pub(crate) fn report_text(
    setup: &Setup,
    s: &Sizing,
    p: &CtPlan,
    rows: &[(String, u64, f64, Option<f64>)],
    cost: &crate::manifest::Cost,
) -> String {
    use formats::human::bytes;
    let params = setup.params().max(1) as f64;
    let mut out = format!(
        "# kiln build: compressed-tensors for {} ({})\n\n",
        s.target.id, p.runtime
    );
    out += &format!(
        "Schemes {} runs natively on `{}`: {}{}.\n",
        p.runtime,
        s.target.id,
        p.legal
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        if p.moe {
            " (mixture of experts: one scheme throughout, in one `Linear` group, as llm-compressor writes MoE presets)"
        } else if p.single_group {
            " (one config group only: one scheme throughout)"
        } else {
            ""
        }
    );
    out += &format!("Budget: {}.\n", p.budget);
    if let Some(c) = p.ceiling {
        out += &format!("Error ceiling: predicted KL divergence {} (default: uniform W4A16 g128's, or the first legal scheme's that quantizes any Linear).\n", kld(c));
    }
    out += &format!("Sensitivity: {}.\n\n", setup.sensitivity_source);
    out += &cost_section(s, p, cost);
    out += "## Plan against the uniform schemes\n\n";
    out += "Predicted KLD: the weights' rounding only (sensitivity x noise-to-signal). Measured KLD: `kiln eval`'s forward pass of what each artifact decodes to, with the inputs of W8A8 and FP8 Linears quantized at run time as vLLM does.\n\n";
    out += "| artifact | tensor bytes | bits/weight | predicted KLD | measured KLD |\n|---|---:|---:|---:|---:|\n";
    for (name, b, e, k) in rows {
        if !e.is_finite() {
            out += &format!("| {name} | - | - | - | - |\n");
            continue;
        }
        out += &format!(
            "| {name} | {} ({}) | {:.3} | {} | {} |\n",
            b,
            bytes(*b),
            *b as f64 * 8.0 / params,
            kld(*e),
            k.map_or("not measured (no --text)".to_string(), kld)
        );
    }
    out += "\n## Per layer\n\n| unit | scheme | bytes | predicted KLD |\n|---|---|---:|---:|\n";
    for (u, &c) in p.units.iter().zip(&p.chosen) {
        let ch = &u.choices[c];
        out += &format!(
            "| {} | {} | {} | {} |\n",
            u.name,
            ch.scheme
                .map_or("bf16 (ignore)".to_string(), |s| s.name().to_string()),
            ch.bytes,
            kld(ch.error)
        );
    }
    out
}

/// The serving estimate of the plan, as the GGUF report gives it.
fn cost_section(s: &Sizing, p: &CtPlan, c: &crate::manifest::Cost) -> String {
    // Three significant digits below 0.01 (a tiny model's $ per million tokens).
    let cell = |v: Option<f64>, digits: usize| {
        v.map_or("-".to_string(), |x| match x {
            x if x != 0.0 && x.abs() < 0.01 => format!("{x:.3e}"),
            x => format!("{x:.digits$}"),
        })
    };
    let mut out = format!(
        "## Serving cost ({} on `{}`, calibrated estimate)\n\n| | |\n|---|---|\n",
        p.runtime, s.target.id
    );
    out += &format!(
        "| fits | {} |\n",
        match c.fits {
            Some(true) => format!("yes, {} device(s)", p.devices),
            Some(false) => "no".into(),
            None => "unknown (memory not published)".into(),
        }
    );
    out += &format!(
        "| decode | {} tokens/s per sequence |\n",
        cell(c.decode_tokens_per_second, 1)
    );
    out += &format!(
        "| throughput | {} tokens/s |\n",
        cell(c.throughput_tokens_per_second, 1)
    );
    out += &format!(
        "| $ per million tokens | {} |\n",
        cell(c.usd_per_million_tokens, 3)
    );
    out += &format!("| joules per token | {} |\n", cell(c.joules_per_token, 3));
    for n in &c.notes {
        out += &format!("\n- {n}");
    }
    if !c.notes.is_empty() {
        out += "\n";
    }
    out + "\n"
}
