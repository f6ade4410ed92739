//! Plans chosen by measurement: the predicted-KL-divergence search proposes,
//! text decides. The solver's plan (probed sensitivities) and the plans the
//! same search gives at the same size under other error models (kiln's
//! role priors; every tensor's noise-to-signal ratio weighed alike) are
//! each measured on the held-out windows with the streaming evaluator, and
//! the plan with the lowest measured mean KL divergence is built. The
//! report shows each candidate's predicted and measured KL divergence side
//! by side, and their ratio (the prediction's error).
//!
//! What must stay true: every candidate is at most the solver's plan's size
//! (and, on several devices, cuts into whole tensors per device as it
//! does); a candidate's predicted KL divergence is scored with the setup's
//! own (probed) sensitivities, so the column compares like with like; ties
//! in measured KL divergence keep the earlier candidate (the solver's);
//! without held-out text nothing changes.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use passes::plan::{self, Allocation};
use quant::GgmlType;

use crate::accuracy::{Measurer, TextAccuracy};
use crate::error::Result;
use crate::progress::{positions, Progress, Unit};
use crate::sensitivity;
use crate::setup::{problem, Setup};
use crate::solve::{self, Chosen, Sizing};

/// One measured candidate plan.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub label: String,
    pub bytes: u64,
    /// Predicted mean KL divergence (the setup's sensitivities).
    pub predicted: f64,
    pub measured: TextAccuracy,
    pub picked: bool,
}

impl Candidate {
    /// Measured / predicted KL divergence.
    pub fn ratio(&self) -> Option<f64> {
        (self.predicted > 0.0).then(|| self.measured.kld / self.predicted)
    }
}

/// The solver's allocation and the alternatives at its size, labelled,
/// distinct type tables only.
fn proposals(setup: &Setup, s: &Sizing, chosen: &Chosen) -> Result<Vec<(String, Allocation)>> {
    let model = &setup.opened.loaded.model;
    let mut out = vec![(
        "search: probed sensitivities".to_string(),
        chosen.allocation.clone(),
    )];
    let priors = sensitivity::defaults(model, &setup.measured).sensitivity;
    let flat: BTreeMap<String, f64> = setup
        .measured
        .iter()
        .map(|m| (m.name.clone(), 1.0))
        .collect();
    let n = chosen.budget.devices;
    for (label, sens) in [
        ("search: role priors", priors),
        ("search: equal weight per tensor", flat),
    ] {
        let options = problem(model, &setup.measured, &sens, &s.options.exclude_type)?;
        let Some(a) = plan::allocate(&options, chosen.allocation.bytes) else {
            continue;
        };
        // Same option list order and choices as the setup's, so `pick`
        // indexes the setup's options too.
        if n > 1 {
            let cap = chosen.budget.tensor_bytes / n as u64;
            if crate::layout::cut(&solve::sizes_of(setup, &a), n, cap).is_none() {
                continue;
            }
        }
        if out.iter().all(|(_, b)| b.pick != a.pick) {
            out.push((label.to_string(), a));
        }
    }
    Ok(out)
}

/// Measure the proposals and replace `chosen`'s allocation by the one with
/// the lowest measured mean KL divergence. Returns the candidates (empty
/// without held-out text).
pub fn by_measurement(
    setup: &Setup,
    s: &Sizing,
    chosen: &mut Chosen,
    measurer: &mut Measurer,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Vec<Candidate>> {
    if !measurer.active() {
        return Ok(Vec::new());
    }
    let props = proposals(setup, s, chosen)?;
    let total = props.len();
    let mut out: Vec<Candidate> = Vec::with_capacity(props.len());
    let mut allocations = Vec::with_capacity(props.len());
    for (k, (label, a)) in props.into_iter().enumerate() {
        let types: BTreeMap<String, GgmlType> = solve::types_of_allocation(setup, &a);
        let (bytes, predicted) = solve::score(setup, &types);
        progress.start(
            &format!("measuring plan {} of {total}", k + 1),
            measurer.steps() as u64,
            Unit::Items("blocks"),
        );
        let m = measurer.measure(&types, &positions(progress), cancel);
        progress.finish();
        let Some(measured) = m? else {
            return Ok(Vec::new());
        };
        out.push(Candidate {
            label,
            bytes,
            predicted: predicted.unwrap_or(a.error),
            measured,
            picked: false,
        });
        allocations.push(a);
    }
    let best = out
        .iter()
        .enumerate()
        .min_by(|(i, a), (j, b)| a.measured.kld.total_cmp(&b.measured.kld).then(i.cmp(j)))
        .map(|(i, _)| i)
        .unwrap_or(0);
    out[best].picked = true;
    chosen.allocation = allocations.swap_remove(best);
    Ok(out)
}

/// The report section: each candidate's size, predicted and measured KL
/// divergence and their ratio, the built one marked.
pub fn report_section(cands: &[Candidate]) -> String {
    if cands.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n## Plans chosen by measurement\n\nThe search proposes; held-out text decides. Each candidate plan (at most the solver's size) measured on the held-out windows; the one with the lowest measured mean KL divergence is built.\n\n| candidate | bytes | predicted KLD | measured KLD | measured / predicted | built |\n|---|---:|---:|---:|---:|:-:|\n",
    );
    for c in cands {
        s.push_str(&format!(
            "| {} | {} | {:.6} | {:.6} | {} | {} |\n",
            c.label,
            c.bytes,
            c.predicted,
            c.measured.kld,
            c.ratio().map_or("-".into(), |r| format!("{r:.2}")),
            if c.picked { "yes" } else { "" }
        ));
    }
    let ratios: Vec<f64> = cands.iter().filter_map(Candidate::ratio).collect();
    if !ratios.is_empty() {
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        s.push_str(&format!(
            "\nPrediction error: measured KL divergence is {mean:.2}x the predicted on average over {} candidate(s).\n",
            ratios.len()
        ));
    }
    s
}
