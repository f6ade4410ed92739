//! GPTQ weighed in `kiln build --gptq`: the chosen plan's tensors are
//! GPTQ-rounded onto their planned types (`eval::rounded::round_onto`: the
//! calibration windows, error feedback through each layer's input Hessian,
//! ggml's encoders choosing every block's scales), the rounded plan is
//! measured on the held-out windows exactly as it would be written (its
//! stored rows decoded, `eval::rounded::WithRounded`), and it is built only
//! when its measured mean KL divergence is lower than the same plan rounded
//! to nearest. The manifest's `gptq` record and the report's "GPTQ" section
//! give both measurements and the decision.
//!
//! What must stay true: without `--gptq` nothing here runs and no output
//! changes; what is measured is the bytes that are written (the same spill
//! file serves both); a plan that cannot be measured is not rounded.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use eval::rounded::{GgufRounded, RoundedSet, Spill, WithRounded};
use quant::GgmlType;
use serde::{Deserialize, Serialize};

use crate::accuracy::{measure_source, roundtrip, TextAccuracy};
use crate::error::{Error, Result};
use crate::manifest::Text;
use crate::progress::{positions, Progress, Unit};
use crate::setup::Setup;

/// `kiln build --gptq`'s settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqOptions {
    /// Damping as a fraction of the mean Hessian diagonal.
    pub dampening_frac: f64,
}

/// What the manifest records of GPTQ: settings, the measurements with and
/// without, and whether the artifact holds the rounded tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptqRecord {
    pub method: String,
    pub calibration_windows: usize,
    pub ctx: usize,
    pub dampening_frac: f64,
    /// Tensors GPTQ rounded (2-D weights the blocks read, of a type with a
    /// code grid, not copied from the source).
    pub tensors: Vec<GptqTensor>,
    /// The plan rounded to nearest, on the held-out windows.
    pub without: Option<Text>,
    /// The same plan GPTQ-rounded, on the same windows.
    pub with: Option<Text>,
    /// Whether the artifact holds the GPTQ-rounded tensors.
    pub applied: bool,
    pub reason: String,
}

/// One rounded tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptqTensor {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub loss: f64,
    pub rtn_fallback: bool,
}

/// GPTQ weighed for one plan: the record, and the rounded tensors when they
/// are to be written.
pub struct Weighed {
    pub record: GptqRecord,
    /// The GPTQ-rounded plan as measured.
    pub with: Option<TextAccuracy>,
    pub rounded: Option<RoundedSet<GgufRounded>>,
}

/// The GGUF keys of a GPTQ-rounded artifact: `kiln.gptq.tensors` (the
/// rounded tensors) and `kiln.gptq` (the method and settings), as `kiln
/// convert --gptq` writes them.
pub fn stamp(model: &mut passes::Model, r: &GptqRecord) {
    model.metadata.set(
        "kiln.gptq.tensors",
        passes::MetaValue::Array(
            r.tensors
                .iter()
                .map(|t| passes::MetaValue::String(t.name.clone()))
                .collect(),
        ),
    );
    model.metadata.set(
        "kiln.gptq",
        passes::MetaValue::String(format!(
            "GPTQ (columns left to right, ggml's block encoders choosing each block's scales); samples={} ctx={} dampening_frac={}",
            r.calibration_windows, r.ctx, r.dampening_frac
        )),
    );
}

/// Round `types` (the plan, GGUF names) with GPTQ on the calibration
/// windows, measure the result against `without` (the plan rounded to
/// nearest, measured on the same held-out windows) and keep it only if it
/// measures better. The spill file goes in `dir` (the staging directory).
pub fn weigh(
    setup: &Setup,
    types: &BTreeMap<String, GgmlType>,
    without: Option<&TextAccuracy>,
    o: &GptqOptions,
    dir: &Path,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Weighed> {
    let m = &setup.opened;
    if setup.calib.is_empty() {
        return Err(Error::Options(
            "--gptq needs calibration windows: give --text".into(),
        ));
    }
    let rounds: BTreeMap<String, GgmlType> = m
        .loaded
        .model
        .tensors
        .iter()
        .filter(|t| t.shape.len() == 2)
        .filter_map(|t| {
            let ty = *types.get(&t.name)?;
            (ty != t.source.dtype.ggml() && eval::gguf_gptq::supports(ty))
                .then(|| (t.name.clone(), ty))
        })
        .collect();
    let spill = Spill::new(dir)?;
    progress.start("gptq", setup.arch.n_layer as u64, Unit::Items("blocks"));
    let r = eval::rounded::round_onto(
        m,
        rounds,
        &setup.importance,
        &setup.calib,
        o.dampening_frac,
        spill,
        &positions(progress),
        cancel,
    );
    progress.finish();
    let rounded = r?;
    let by_source: BTreeMap<&str, &str> = m
        .loaded
        .model
        .tensors
        .iter()
        .map(|t| (t.source_name.as_str(), t.name.as_str()))
        .collect();
    let tensors = rounded
        .tensors
        .iter()
        .map(|(src, r)| GptqTensor {
            name: by_source
                .get(src.as_str())
                .unwrap_or(&src.as_str())
                .to_string(),
            ty: r.ty.name().to_string(),
            loss: r.loss,
            rtn_fallback: r.fallback,
        })
        .collect();
    let with = match without {
        Some(_) => {
            let base = roundtrip(setup, types)?;
            let cand = WithRounded {
                base: &base,
                rounded: &rounded,
            };
            progress.start(
                "accuracy (gptq)",
                setup.arch.n_layer as u64 + 1,
                Unit::Items("blocks"),
            );
            let t = measure_source(setup, &cand, &positions(progress), cancel);
            progress.finish();
            Some(t?)
        }
        None => None,
    };
    let (applied, reason) = match (without, &with) {
        (Some(a), Some(b)) if b.kld < a.kld => (
            true,
            format!(
                "GPTQ measured lower mean KL divergence on the held-out windows ({:.6} vs {:.6} rounded to nearest)",
                b.kld, a.kld
            ),
        ),
        (Some(a), Some(b)) => (
            false,
            format!(
                "GPTQ did not measure lower mean KL divergence on the held-out windows ({:.6} vs {:.6} rounded to nearest): the plan is written rounded to nearest",
                b.kld, a.kld
            ),
        ),
        _ => (
            false,
            "no held-out windows to measure GPTQ on: the plan is written rounded to nearest".into(),
        ),
    };
    let record = GptqRecord {
        method: "GPTQ (columns left to right, ggml's block encoders choosing each block's scales, calibrated block by block on the outputs of the blocks already rounded)".into(),
        calibration_windows: setup.calib.len(),
        ctx: setup.calib.first().map_or(0, Vec::len),
        dampening_frac: o.dampening_frac,
        tensors,
        without: without.map(Text::of),
        with: with.as_ref().map(Text::of),
        applied,
        reason,
    };
    Ok(Weighed {
        record,
        with,
        rounded: applied.then_some(rounded),
    })
}

/// The report's "GPTQ" section.
pub fn report_section(r: &GptqRecord) -> String {
    let cell = |t: &Option<Text>| match t {
        Some(t) => format!(
            "{} | {} | {}",
            t.kld_mean.map_or("-".into(), |v| format!("{v:.6}")),
            t.perplexity.map_or("-".into(), |v| format!("{v:.4}")),
            t.top1_agreement
                .map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
        ),
        None => "- | - | -".into(),
    };
    let fallbacks = r.tensors.iter().filter(|t| t.rtn_fallback).count();
    format!(
        "\n## GPTQ\n\n{} tensors GPTQ-rounded onto their planned types ({} calibration windows of {} tokens, dampening {}{}). The same plan, both ways, on the held-out windows:\n\n| rounding | measured KLD | perplexity | top-1 | built |\n|---|---:|---:|---:|:-:|\n| to nearest | {} | {} |\n| GPTQ | {} | {} |\n\n{}.\n",
        r.tensors.len(),
        r.calibration_windows,
        r.ctx,
        r.dampening_frac,
        if fallbacks > 0 {
            format!("; {fallbacks} fell back to round-to-nearest")
        } else {
            String::new()
        },
        cell(&r.without),
        if r.applied { "" } else { "yes" },
        cell(&r.with),
        if r.applied { "yes" } else { "" },
        r.reason
    )
}
