//! GPTQ weighed in `kiln build --gptq`, per tensor and as a whole plan:
//!
//! 1. What GPTQ buys is measured per tensor and candidate type before
//!    anything is rounded (`eval::gptq_gain`: on the calibration windows,
//!    each weight's sampled rows rounded to nearest and GPTQ-rounded onto
//!    every candidate type, scored by the layer-output error through the
//!    input Hessian); where GPTQ lowers it, the type's predicted KL
//!    divergence is scaled by the ratio.
//! 2. The search allocates over both ways of rounding (for one type and one
//!    size, the way with the lower predicted error) within the bytes of the
//!    plan rounded to nearest: GPTQ's larger gains at low bit widths can move
//!    bytes between tensors.
//! 3. That plan is GPTQ-rounded where GPTQ was chosen
//!    (`eval::rounded::round_onto`: error feedback through each layer's
//!    Hessian, sequentially over blocks already rounded, ggml's encoders
//!    choosing every block's scales), the rest rounded to nearest, measured
//!    on the held-out windows exactly as it would be written (its stored
//!    rows decoded, `eval::rounded::WithRounded`), and built only when its
//!    measured mean KL divergence is lower than the plan rounded to nearest.
//!
//! The manifest's `gptq` record and the report's "GPTQ" section give the
//! gains, both plans' predictions and measurements, and the decision.
//!
//! What must stay true: without `--gptq` nothing here runs and no output
//! changes; what is measured is the bytes that are written (the same spill
//! file serves both); a plan that cannot be measured is not rounded; the
//! GPTQ plan is never larger than the plan rounded to nearest.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use eval::rounded::{GgufRounded, RoundedSet, Spill, WithRounded};
use passes::plan::{self, Allocation};
use quant::GgmlType;
use serde::{Deserialize, Serialize};

use crate::accuracy::{measure_source, roundtrip, TextAccuracy};
use crate::error::{Error, Result};
use crate::manifest::Text;
use crate::progress::{positions, Progress, Unit};
use crate::setup::Setup;
use crate::solve::{self, Chosen};

/// Rows of each weight the gain probe rounds both ways.
pub const GAIN_SAMPLE_ROWS: usize = 32;

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
    /// How the per-tensor gains were measured and used.
    pub allocation: String,
    /// Rows of each weight the gain probe rounds both ways.
    pub gain_sample_rows: usize,
    /// Per tensor (GGUF name) and candidate type: GPTQ's layer-output error
    /// on the calibration windows as a fraction of round-to-nearest's.
    pub gains: BTreeMap<String, BTreeMap<String, f64>>,
    /// The GPTQ plans measured: the plan's own types, and the allocation
    /// over both ways of rounding (when it changes any type).
    pub plans: Vec<GptqPlan>,
    /// Tensors GPTQ rounded in the better-measured GPTQ plan (2-D weights
    /// the blocks read, of a type with a code grid, where GPTQ lowered the
    /// layer's error), whose figures the fields below give.
    pub tensors: Vec<GptqTensor>,
    /// Tensors whose type in the GPTQ plan differs from the plan rounded
    /// to nearest.
    pub retyped: usize,
    /// Predicted KL divergence of the plan rounded to nearest, and of the
    /// GPTQ plan (gains applied).
    pub predicted_without: f64,
    pub predicted_with: f64,
    /// Tensor bytes of both plans.
    pub bytes_without: u64,
    pub bytes_with: u64,
    /// The plan rounded to nearest, on the held-out windows.
    pub without: Option<Text>,
    /// The GPTQ plan, on the same windows.
    pub with: Option<Text>,
    /// Whether the artifact holds the GPTQ-rounded tensors.
    pub applied: bool,
    pub reason: String,
}

/// One GPTQ plan weighed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptqPlan {
    pub name: String,
    pub tensor_bytes: u64,
    /// With the gains applied.
    pub predicted_kld: f64,
    /// Tensors whose type differs from the plan rounded to nearest.
    pub retyped: usize,
    /// Tensors GPTQ-rounded.
    pub rounded: usize,
    pub measured: Option<Text>,
    pub built: bool,
}

/// One rounded tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptqTensor {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub loss: f64,
    pub rtn_fallback: bool,
    /// The probe's gain at this type (GPTQ's layer error / round-to-nearest's).
    pub gain: Option<f64>,
}

/// GPTQ weighed for one plan: the record, and the rounded tensors when they
/// are to be written.
pub struct Weighed {
    pub record: GptqRecord,
    /// The GPTQ-rounded plan as measured.
    pub with: Option<TextAccuracy>,
    /// When it is to be written: the GPTQ plan's allocation (indices into
    /// the setup's choices, as the plan rounded to nearest) and rounded tensors.
    pub allocation: Option<Allocation>,
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

/// The candidate types GPTQ can round each weight of `setup` onto (2-D,
/// not copied from the source), by GGUF name.
fn candidates(setup: &Setup) -> BTreeMap<String, Vec<GgmlType>> {
    let model = &setup.opened.loaded.model;
    let by_name: BTreeMap<&str, &passes::TensorNode> =
        model.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    setup
        .options
        .iter()
        .filter_map(|o| {
            let t = by_name.get(o.name.as_str())?;
            if t.shape.len() != 2 {
                return None;
            }
            let src = t.source.dtype.ggml();
            let v: Vec<GgmlType> = o
                .choices
                .iter()
                .map(|c| c.ty)
                .filter(|&ty| ty != src && eval::gguf_gptq::supports(ty))
                .collect();
            (!v.is_empty()).then(|| (o.name.clone(), v))
        })
        .collect()
}

/// Weigh GPTQ for the plan `chosen` of `setup`'s model (rounded to
/// nearest, measured at `without` against `reference`'s original: the
/// model itself, or the unpruned model when `setup` is a pruned copy):
/// gains per tensor and type, the allocation over both ways of rounding
/// within its bytes, the GPTQ plans rounded and measured against the same
/// original, the better kept only if it measures better. The spill file
/// goes in `dir` (the staging directory).
#[allow(clippy::too_many_arguments)]
pub fn weigh(
    reference: &Setup,
    setup: &Setup,
    chosen: &Chosen,
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
    // 1. Gains per tensor and candidate type.
    let cands = candidates(setup);
    progress.start(
        "gptq gains",
        setup.arch.n_layer as u64,
        Unit::Items("blocks"),
    );
    let g = eval::gptq_gain::gains(
        m,
        &cands,
        &setup.importance,
        &setup.calib,
        o.dampening_frac,
        GAIN_SAMPLE_ROWS,
        &positions(progress),
        cancel,
    );
    progress.finish();
    let gains = g?;
    let ratio = |name: &str, ty: GgmlType| -> Option<f64> {
        gains
            .get(name)?
            .iter()
            .find(|(t, _)| *t == ty)
            .map(|(_, g)| g.ratio())
    };
    // 2. The allocation over both ways, within the plan's bytes.
    let options: Vec<plan::Options> = setup
        .options
        .iter()
        .map(|opt| plan::Options {
            name: opt.name.clone(),
            choices: opt
                .choices
                .iter()
                .map(|c| plan::Choice {
                    error: match ratio(&opt.name, c.ty) {
                        Some(r) if r < 1.0 => c.error * r,
                        _ => c.error,
                    },
                    ..*c
                })
                .collect(),
        })
        .collect();
    let rtn = &chosen.allocation;
    let allocation = plan::allocate(&options, rtn.bytes)
        .filter(|a| a.bytes <= rtn.bytes)
        .unwrap_or_else(|| {
            // The plan's own choices, with the gains applied.
            let error = options
                .iter()
                .zip(&rtn.pick)
                .map(|(o, &p)| o.choices[p].error)
                .sum();
            Allocation {
                error,
                ..rtn.clone()
            }
        });
    let types = solve::types_of_allocation(setup, &allocation);
    let old_types = solve::types_of_allocation(setup, rtn);
    let retyped = types
        .iter()
        .filter(|(n, t)| old_types.get(*n) != Some(t))
        .count();
    // 3. Two GPTQ plans, each rounded where GPTQ lowers the layer's error
    //    at its type and measured: the plan's own types, and the
    //    allocation over both (when it differs). The per-layer gains are
    //    an estimate; the measurement decides.
    let mut plans: Vec<(String, Allocation, BTreeMap<String, GgmlType>, usize)> = vec![(
        PLAN_SAME_TYPES.to_string(),
        Allocation {
            error: options
                .iter()
                .zip(&rtn.pick)
                .map(|(o, &p)| o.choices[p].error)
                .sum(),
            ..rtn.clone()
        },
        old_types.clone(),
        0,
    )];
    if retyped > 0 {
        plans.push((PLAN_BOTH.to_string(), allocation, types, retyped));
    }
    let mut measured: Vec<GptqPlan> = Vec::new();
    let mut best: Option<(usize, Rounding)> = None;
    for (k, (name, a, types, retyped)) in plans.iter().enumerate() {
        let (rounded, tensors, with) = round_and_measure(
            reference,
            setup,
            types,
            &ratio,
            without.is_some(),
            o,
            dir,
            progress,
            cancel,
        )?;
        measured.push(GptqPlan {
            name: name.clone(),
            tensor_bytes: a.bytes,
            predicted_kld: a.error,
            retyped: *retyped,
            rounded: tensors.len(),
            measured: with.as_ref().map(Text::of),
            built: false,
        });
        let better = match (&best, &with) {
            (None, _) => true,
            (Some((_, (_, _, Some(b)))), Some(w)) => w.kld < b.kld,
            _ => false,
        };
        if better {
            best = Some((k, (rounded, tensors, with)));
        }
    }
    let (k, (rounded, tensors, with)) = best.expect("at least one GPTQ plan");
    let (_, allocation, _, retyped) = plans.swap_remove(k);
    let (applied, reason) = match (without, &with) {
        _ if tensors.is_empty() => (
            false,
            "GPTQ lowered no tensor's layer-output error on the calibration windows at its type: the plan is written rounded to nearest".into(),
        ),
        (Some(a), Some(b)) if b.kld < a.kld => (
            true,
            format!(
                "{} measured the lowest mean KL divergence on the held-out windows ({:.6}; {:.6} rounded to nearest)",
                measured[k].name, b.kld, a.kld
            ),
        ),
        (Some(a), Some(b)) => (
            false,
            format!(
                "no GPTQ plan measured lower mean KL divergence on the held-out windows (best {:.6} vs {:.6} rounded to nearest): the plan is written rounded to nearest",
                b.kld, a.kld
            ),
        ),
        _ => (
            false,
            "no held-out windows to measure GPTQ on: the plan is written rounded to nearest".into(),
        ),
    };
    measured[k].built = applied;
    let record = GptqRecord {
        method: "GPTQ (columns left to right, ggml's block encoders choosing each block's scales, calibrated block by block on the outputs of the blocks already rounded)".into(),
        calibration_windows: setup.calib.len(),
        ctx: setup.calib.first().map_or(0, Vec::len),
        dampening_frac: o.dampening_frac,
        allocation: format!(
            "per tensor and candidate type, {GAIN_SAMPLE_ROWS} sampled rows rounded to nearest and GPTQ-rounded on the calibration windows; a type's predicted KLD is scaled by GPTQ's layer-output error ratio where below 1 and the plan allocated again over both within the bytes of the plan rounded to nearest; that plan and the plan's own types, each GPTQ-rounded where GPTQ lowered the error at the tensor's type, are measured, and the lower one is weighed against the plan rounded to nearest"
        ),
        gain_sample_rows: GAIN_SAMPLE_ROWS,
        gains: gains
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    v.iter()
                        .map(|(t, g)| (t.name().to_string(), g.ratio()))
                        .collect(),
                )
            })
            .collect(),
        plans: measured,
        tensors,
        retyped,
        predicted_without: rtn.error,
        predicted_with: allocation.error,
        bytes_without: rtn.bytes,
        bytes_with: allocation.bytes,
        without: without.map(Text::of),
        with: with.as_ref().map(Text::of),
        applied,
        reason,
    };
    Ok(Weighed {
        record,
        with,
        allocation: applied.then_some(allocation),
        rounded: applied.then_some(rounded),
    })
}

/// One GPTQ plan's rounded tensors, their record and its measurement.
type Rounding = (
    RoundedSet<GgufRounded>,
    Vec<GptqTensor>,
    Option<TextAccuracy>,
);

/// The GPTQ plan names in the record.
const PLAN_SAME_TYPES: &str = "GPTQ at the plan's types";
const PLAN_BOTH: &str = "GPTQ, allocated over both";

/// `types` GPTQ-rounded where `ratio` (the measured gain) is below 1, the
/// rest rounded to nearest, and measured on the held-out windows when
/// `measure` (the rows read back from the spill file, as written).
#[allow(clippy::too_many_arguments)]
fn round_and_measure(
    reference: &Setup,
    setup: &Setup,
    types: &BTreeMap<String, GgmlType>,
    ratio: &dyn Fn(&str, GgmlType) -> Option<f64>,
    measure: bool,
    o: &GptqOptions,
    dir: &Path,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<(
    RoundedSet<GgufRounded>,
    Vec<GptqTensor>,
    Option<TextAccuracy>,
)> {
    let m = &setup.opened;
    let rounds: BTreeMap<String, GgmlType> = types
        .iter()
        .filter(|(n, &ty)| ratio(n, ty).is_some_and(|r| r < 1.0))
        .map(|(n, &ty)| (n.clone(), ty))
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
    let tensors: Vec<GptqTensor> = rounded
        .tensors
        .iter()
        .map(|(src, r)| {
            let name = by_source
                .get(src.as_str())
                .unwrap_or(&src.as_str())
                .to_string();
            GptqTensor {
                gain: ratio(&name, r.ty),
                name,
                ty: r.ty.name().to_string(),
                loss: r.loss,
                rtn_fallback: r.fallback,
            }
        })
        .collect();
    let with = match measure {
        true => {
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
            let t = measure_source(reference, &cand, &positions(progress), cancel);
            progress.finish();
            Some(t?)
        }
        false => None,
    };
    Ok((rounded, tensors, with))
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
    let probed = r.gains.len();
    let helped = r
        .gains
        .values()
        .filter(|g| g.values().any(|&x| x < 1.0))
        .count();
    let mut s = format!(
        "\n## GPTQ\n\nGains measured first: on the calibration windows ({} windows of {} tokens), {} sampled rows of each of {probed} weights rounded to nearest and GPTQ-rounded onto every candidate type, scored by the layer-output error; GPTQ lowered it at some type for {helped}. Each candidate's predicted KLD scaled by its gain, the plan was allocated again over both ways of rounding within the bytes of the plan rounded to nearest. GPTQ plans are rounded where GPTQ lowered the tensor's error at its type (dampening {}{}) and measured; the better one is weighed against the plan rounded to nearest, on the held-out windows:\n\n| plan | tensor bytes | retyped | GPTQ-rounded | predicted KLD | measured KLD | perplexity | top-1 | built |\n|---|---:|---:|---:|---:|---:|---:|---:|:-:|\n| rounded to nearest | {} | 0 | 0 | {:.6} | {} | {} |\n",
        r.calibration_windows,
        r.ctx,
        r.gain_sample_rows,
        r.dampening_frac,
        if fallbacks > 0 {
            format!("; {fallbacks} fell back to round-to-nearest")
        } else {
            String::new()
        },
        r.bytes_without,
        r.predicted_without,
        cell(&r.without),
        if r.applied { "" } else { "yes" },
    );
    for p in &r.plans {
        s += &format!(
            "| {} | {} | {} | {} | {:.6} | {} | {} |\n",
            p.name,
            p.tensor_bytes,
            p.retyped,
            p.rounded,
            p.predicted_kld,
            cell(&p.measured),
            if p.built { "yes" } else { "" }
        );
    }
    s += &format!("\n{}.\n", r.reason);
    s
}
