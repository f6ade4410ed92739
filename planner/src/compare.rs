//! kiln's plan beside llama.cpp's recipes: every row (a recipe, or a kiln
//! plan) scored with the same measurements (bytes, predicted KL divergence,
//! size-weighted weight error) and costed on the same target and workload,
//! on the fewest devices that fit.
//!
//! What must stay true: a recipe that does not apply to the model is left
//! out, not guessed; a row whose types were not all measured has no
//! predicted error (`None`), never a partial sum.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use passes::cost::{Engine, Target, Workload};
use quant::GgmlType;

use crate::accuracy::{Measurer, TextAccuracy};
use crate::error::Result;
use crate::options::{Objective, PlanOptions};
use crate::progress::{Progress, Unit};
use crate::serving;
use crate::setup::Setup;
use crate::solve::{self, recipe_model, score, types_of, Chosen, Sizing};

/// llama.cpp recipes put beside kiln's plan in the report and chart.
pub const COMPARED: [&str; 9] = [
    "Q2_K", "Q3_K_M", "Q4_0", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0",
];

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
    /// The parameters `bytes` encode (a pruned plan's are fewer than the
    /// model's): the denominator of the row's bits per weight.
    pub parameters: u64,
}

impl Row {
    /// Bits per weight over the parameters the row encodes.
    pub fn bpw(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.parameters.max(1) as f64
    }
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

/// llama.cpp's recipes on this model, scored with the same measurements.
pub fn comparison(setup: &Setup, s: &Sizing) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for name in COMPARED {
        let Ok(m) = recipe_model(setup, name, s.options.allow_requantize) else {
            continue;
        };
        let types = types_of(&m);
        let (bytes, error) = score(setup, &types);
        let est = serving::cost(&m, &setup.arch, s.target, s.engine, s.workload, 1)?;
        let devices = est.min_devices;
        let est = match devices {
            Some(d) if d > 1 => serving::cost(&m, &setup.arch, s.target, s.engine, s.workload, d)?,
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
            parameters: setup.params(),
        });
    }
    Ok(rows)
}

/// The plan the other objective would choose on the same budget, as a row
/// named `kiln, <objective> objective` (`None` when it has no plan): what
/// the report offers as the alternative, one flag away.
pub fn objective_row(
    setup: &Setup,
    s: &Sizing,
    objective: Objective,
    max_error: Option<f64>,
) -> Result<Option<Row>> {
    let Ok(chosen) = solve::solve(setup, s, objective, max_error) else {
        return Ok(None);
    };
    let types = solve::types_of_allocation(setup, &chosen.allocation);
    let planned = solve::typed(setup, &types)?;
    let est = serving::cost(
        &planned,
        &setup.arch,
        s.target,
        s.engine,
        s.workload,
        chosen.budget.devices,
    )?;
    let mut row = plan_row(setup, &chosen, &est, None);
    row.name = alternative_name(objective);
    Ok(Some(row))
}

/// The comparison row name of a kiln plan made with `objective`.
pub fn alternative_name(objective: Objective) -> String {
    format!("kiln, {} objective", objective.name())
}

/// The row of kiln's chosen plan, with its serving estimate `est`.
pub fn plan_row(
    setup: &Setup,
    chosen: &Chosen,
    est: &passes::cost::Estimate,
    text: Option<TextAccuracy>,
) -> Row {
    let types = solve::types_of_allocation(setup, &chosen.allocation);
    Row {
        name: "kiln plan".into(),
        bytes: chosen.allocation.bytes,
        error: Some(chosen.allocation.error),
        fits: est.fits,
        devices: Some(chosen.budget.devices),
        tokens_per_second: est.decode_tokens_per_second.central,
        usd_per_mtok: est.usd_per_million_tokens.central,
        text,
        weight_nsr: Some(weighted_nsr(setup, &types)),
        types,
        parameters: setup.params(),
    }
}

/// One target of `kiln plan`: what the budget was (or why no plan fits), and
/// the rows, kiln's plan first when there is one.
pub struct TargetPlan {
    /// The budget kiln's plan was sized by, or why no plan fits.
    pub budget: std::result::Result<solve::Budget, String>,
    pub rows: Vec<Row>,
    /// The pruning options weighed against kiln's plan
    /// (`--prune-candidates`; their rows are also in `rows`, named
    /// `kiln plan, pruned SPEC`).
    pub pruning: Option<crate::prune::Pruning>,
}

/// kiln's plan and the recipes on one target, each measured on the held-out
/// text when `measurer` has one.
pub fn plan_target(
    setup: &Setup,
    s: &Sizing,
    objective: Objective,
    max_error: Option<f64>,
    measurer: &mut Measurer,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<TargetPlan> {
    let chosen = solve::solve(setup, s, objective, max_error);
    let mut rows = comparison(setup, s)?;
    let budget = match &chosen {
        Ok(chosen) => {
            let types = solve::types_of_allocation(setup, &chosen.allocation);
            let planned = solve::typed(setup, &types)?;
            let est = serving::cost(
                &planned,
                &setup.arch,
                s.target,
                s.engine,
                s.workload,
                chosen.budget.devices,
            )?;
            rows.insert(0, plan_row(setup, chosen, &est, None));
            if let Some(alt) = objective_row(setup, s, objective.other(), max_error)? {
                rows.insert(1, alt);
            }
            Ok(chosen.budget.clone())
        }
        Err(e) => Err(format!("no kiln plan: {e}")),
    };
    if measurer.active() {
        progress.start(
            &format!("{}: measuring", s.target.id),
            rows.len() as u64,
            Unit::Items("options"),
        );
        let r: Result<()> = rows.iter_mut().try_for_each(|r| {
            r.text = measurer.measure(&r.types, &|_| {}, cancel)?;
            progress.advance(1);
            Ok(())
        });
        progress.finish();
        r?;
    }
    let mut pruning = None;
    if let (Ok(chosen), Some(Some(m))) = (&chosen, rows.first().map(|r| r.text.clone())) {
        if !s.options.prune_candidates.is_empty() {
            if let Some(w) = crate::prune::weigh(setup, s, chosen, &m, progress, cancel)? {
                let pruned: Vec<Row> = w.record.options[1..]
                    .iter()
                    .filter_map(pruned_row)
                    .collect();
                rows.splice(1..1, pruned);
                pruning = Some(w.record);
            }
        }
    } else if !s.options.prune_candidates.is_empty() {
        crate::prune::check(s.options)?;
    }
    Ok(TargetPlan {
        budget,
        rows,
        pruning,
    })
}

/// A weighed pruning option as a comparison row (`kiln plan, pruned SPEC`):
/// its measured accuracy is against the unpruned original; its predicted
/// error is against the pruned model, so it is left out (`None`).
fn pruned_row(o: &crate::prune::PruneOption) -> Option<Row> {
    let t = o.measured.as_ref()?;
    let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
    Some(Row {
        name: format!(
            "kiln plan, pruned {}",
            o.resolved.as_deref().unwrap_or(&o.spec)
        ),
        bytes: o.tensor_bytes?,
        error: None,
        fits: o.fits,
        devices: Some(1),
        tokens_per_second: o.decode_tokens_per_second,
        usd_per_mtok: o.usd_per_million_tokens,
        text: Some(TextAccuracy {
            ppl_original: nan(t.perplexity_original),
            ppl: nan(t.perplexity),
            kld: nan(t.kld_mean),
            kld_p99: nan(t.kld_p99),
            top1: nan(t.top1_agreement),
            windows: t.windows,
        }),
        weight_nsr: None,
        types: BTreeMap::new(),
        parameters: o.parameters,
    })
}

/// `kiln plan`: kiln's plan and the recipes on each target, in order, all
/// scored with the same measurements.
#[allow(clippy::too_many_arguments)]
pub fn plan_targets(
    setup: &Setup,
    targets: &[Target],
    options: &PlanOptions,
    engine: Engine,
    workload: &Workload,
    objective: Objective,
    max_error: Option<f64>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Vec<TargetPlan>> {
    let mut measurer = Measurer::new(setup)?;
    targets
        .iter()
        .map(|target| {
            let s = Sizing {
                options,
                target,
                engine,
                workload,
            };
            plan_target(
                setup,
                &s,
                objective,
                max_error,
                &mut measurer,
                progress,
                cancel,
            )
        })
        .collect()
}
