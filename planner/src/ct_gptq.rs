//! GPTQ weighed in compressed-tensors builds (`kiln build --engine
//! vllm|trt-llm --gptq`): the plan's Linears in integer schemes
//! GPTQ-rounded on the build's calibration windows as `kiln convert --gptq`
//! rounds them (`eval::ct_gptq`), measured from the codes that get written
//! with the runtime's activation quantization, written only if they measure
//! lower than the plan rounded to nearest.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use formats::ct::Scheme;
use serde_json::json;

use crate::ct_build::{by_scheme, kld, measure_with, CtPlan};
use crate::error::{Error, Result};
use crate::progress::{Progress, Unit};
use crate::setup::Setup;

/// GPTQ's column order in compressed-tensors builds (llm-compressor's default).
pub const ACTORDER: &str = "static";

/// GPTQ weighed for a compressed-tensors plan.
pub struct CtGptq {
    pub(crate) applied: bool,
    pub(crate) rounded: eval::rounded::RoundedSet<eval::ct_gptq::CtRounded>,
    /// The GPTQ plan's measured mean KL divergence.
    pub(crate) with: Option<f64>,
    pub(crate) record: serde_json::Value,
}

/// The plan `p` (written as `model` with `assignment`, measured at
/// `without` rounded to nearest) with its integer Linears (W4A16,
/// W4A16_ASYM, W8A16, W8A8) GPTQ-rounded on the build's calibration
/// windows (`eval::ct_gptq`, as `kiln convert --gptq`), the other schemes
/// as planned, measured on the held-out windows from the codes that get
/// written; applied only if it measures lower.
#[allow(clippy::too_many_arguments)]
pub(crate) fn weigh(
    reference: &Setup,
    setup: &Setup,
    p: &CtPlan,
    model: &passes::Model,
    assignment: &BTreeMap<String, Scheme>,
    without: Option<f64>,
    o: &crate::gptq::GptqOptions,
    fp8_max: f32,
    dir: &std::path::Path,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<CtGptq> {
    if p.moe {
        return Err(Error::Options(
            "--gptq for mixture-of-experts checkpoints is not supported yet (round-to-nearest is)"
                .into(),
        ));
    }
    if setup.calib.is_empty() {
        return Err(Error::Options(
            "--gptq needs calibration windows: give --text".into(),
        ));
    }
    let wanted: BTreeMap<String, (quant::IntSpec, bool)> = model
        .tensors
        .iter()
        .filter_map(|t| match (t.encoding, assignment.get(&t.source_name)) {
            (Some(passes::Encoding::Int(spec)), Some(&sc)) => {
                Some((t.source_name.clone(), (spec, sc != Scheme::W8A8)))
            }
            _ => None,
        })
        .collect();
    let opts = eval::gptq::Options {
        block: 128,
        percdamp: o.dampening_frac,
        actorder: ACTORDER == "static",
    };
    let spill = eval::rounded::Spill::new(dir)?;
    progress.start("gptq", setup.arch.n_layer as u64, Unit::Items("blocks"));
    let r = eval::ct_gptq::round(
        &setup.opened,
        &wanted,
        &setup.calib,
        &opts,
        spill,
        &crate::progress::positions(progress),
        cancel,
    );
    progress.finish();
    let rounded = r?;
    let with = if rounded.tensors.is_empty() {
        None
    } else {
        progress.start(
            "accuracy (gptq)",
            setup.arch.n_layer as u64 + 1,
            Unit::Items("blocks"),
        );
        let m = measure_with(
            reference,
            setup,
            &by_scheme(p, &p.chosen),
            fp8_max,
            Some(&rounded),
            &crate::progress::positions(progress),
            cancel,
        );
        progress.finish();
        m?.map(|t| t.kld)
    };
    let (applied, reason) = match (without, with) {
        _ if rounded.tensors.is_empty() => (
            false,
            "the plan has no Linear in an integer scheme (W4A16, W4A16_ASYM, W8A16, W8A8): nothing to round".to_string(),
        ),
        (Some(a), Some(b)) if b < a => (
            true,
            format!("GPTQ measured lower mean KL divergence on the held-out windows ({} vs {} rounded to nearest)", kld(b), kld(a)),
        ),
        (Some(a), Some(b)) => (
            false,
            format!("GPTQ did not measure lower mean KL divergence on the held-out windows ({} vs {} rounded to nearest): the plan is written rounded to nearest", kld(b), kld(a)),
        ),
        _ => (
            false,
            "no held-out windows to measure GPTQ on: the plan is written rounded to nearest".to_string(),
        ),
    };
    let record = json!({
        "method": "GPTQ onto the integer schemes' grids (scales and zero points from the original weights, as llm-compressor's GPTQModifier), calibrated block by block on the outputs of the blocks already rounded",
        "calibration_windows": setup.calib.len(),
        "ctx": setup.calib.first().map_or(0, Vec::len),
        "actorder": ACTORDER,
        "dampening_frac": o.dampening_frac,
        "tensors": rounded.tensors.iter().map(|(n, r)| json!({
            "name": n,
            "scheme": assignment.get(n).map(|s| s.name()),
            "loss": r.loss,
            "rtn_fallback": r.fallback,
        })).collect::<Vec<_>>(),
        "without": {"kld_mean": without},
        "with": {"kld_mean": with},
        "applied": applied,
        "reason": reason,
    });
    Ok(CtGptq {
        rounded,
        with,
        applied,
        record,
    })
}

/// The report's "GPTQ" section of a compressed-tensors build.
pub(crate) fn report_section(g: &CtGptq) -> String {
    let r = &g.record;
    let k = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), kld);
    format!(
        "\n## GPTQ\n\n{} Linears in integer schemes GPTQ-rounded ({} calibration windows of {} tokens, actorder {}, dampening {}). The same plan, both ways, on the held-out windows:\n\n| rounding | measured KLD | built |\n|---|---:|:-:|\n| to nearest | {} | {} |\n| GPTQ | {} | {} |\n\n{}.\n",
        r["tensors"].as_array().map_or(0, Vec::len),
        r["calibration_windows"],
        r["ctx"],
        ACTORDER,
        r["dampening_frac"],
        k(&r["without"]["kld_mean"]),
        if g.applied { "" } else { "yes" },
        k(&r["with"]["kld_mean"]),
        if g.applied { "yes" } else { "" },
        r["reason"].as_str().unwrap_or_default()
    )
}
