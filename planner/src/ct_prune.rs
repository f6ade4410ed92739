//! Pruning weighed for compressed-tensors builds and plans: the
//! [`crate::prune::Family`] of per-Linear schemes (`ct_build::plan_within`
//! at the unpruned plan's memory, measured with the runtime's activation
//! quantization).

use std::sync::atomic::AtomicBool;

use crate::accuracy::TextAccuracy;
use crate::ct_build::{by_scheme, cost, measure_against, plan_within, CtPlan};
use crate::error::{Error, Result};
use crate::progress::{Progress, Unit};
use crate::setup::Setup;
use crate::solve::Sizing;

/// With `--prune-candidates` (and held-out text): the unpruned plan `p`
/// measured, then each pruning option planned at its memory and measured
/// against the original (`prune::weigh_family`); `None` without candidates.
pub fn weigh_pruning(
    setup: &Setup,
    s: &Sizing,
    engine: &str,
    p: &CtPlan,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Option<crate::prune::Weighed<CtPlan>>> {
    if s.options.prune_candidates.is_empty() {
        return Ok(None);
    }
    crate::prune::check(s.options)?;
    let family = Ct {
        engine,
        fp8_max: s.target.fp8_max() as f32,
    };
    let m = crate::prune::Family::measure(&family, setup, setup, p, progress, cancel)?;
    crate::prune::weigh_family(
        &family,
        setup,
        s,
        p,
        crate::prune::Unpruned {
            devices: p.devices,
            source: p.budget_source,
            from: &p.budget,
        },
        &m,
        progress,
        cancel,
    )
}

/// Pruning weighed for compressed-tensors builds: a pruned model planned
/// per unit among the same schemes (`plan_within`), measured with the
/// runtime's activation quantization as the unpruned plan is.
pub struct Ct<'a> {
    pub engine: &'a str,
    /// The target's FP8 E4M3 maximum (448; 240 on Neuron).
    pub fp8_max: f32,
}

impl crate::prune::Family for Ct<'_> {
    type Plan = CtPlan;

    fn gguf(&self) -> bool {
        false
    }

    fn size(&self, p: &CtPlan) -> (u64, f64) {
        (p.bytes(), p.error())
    }

    fn cost(
        &self,
        setup: &Setup,
        s: &Sizing,
        p: Option<&CtPlan>,
    ) -> Result<passes::cost::Estimate> {
        match p {
            Some(p) => cost(setup, s, p),
            // Every Linear in 16 bits: the KV cache does not depend on it.
            None => cost(
                setup,
                s,
                &CtPlan {
                    runtime: String::new(),
                    legal: Vec::new(),
                    single_group: false,
                    moe: false,
                    units: Vec::new(),
                    chosen: Vec::new(),
                    fixed_bytes: 0,
                    budget: String::new(),
                    budget_source: "",
                    devices: 1,
                    ceiling: None,
                },
            ),
        }
    }

    fn allocate(
        &self,
        setup: &Setup,
        s: &Sizing,
        budget: u64,
        from: String,
    ) -> Result<Option<CtPlan>> {
        plan_within(setup, s, self.engine, budget, from)
    }

    fn measure(
        &self,
        base: &Setup,
        cand: &Setup,
        p: &CtPlan,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Result<TextAccuracy> {
        progress.start(
            "measuring plan",
            base.arch.n_layer as u64 + 1,
            Unit::Items("blocks"),
        );
        let r = measure_against(
            base,
            cand,
            &by_scheme(p, &p.chosen),
            self.fp8_max,
            &crate::progress::positions(progress),
            cancel,
        );
        progress.finish();
        r?.ok_or_else(|| Error::Input("no held-out windows to measure the pruned plan on".into()))
    }
}
