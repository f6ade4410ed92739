//! Text accuracy of a type table: every quantizable tensor encoded and
//! decoded exactly as the emitter does, then perplexity, KL divergence and
//! top-1 agreement against the original on the held-out windows.
//!
//! What must stay true: the candidate's weights are the emitter's bytes
//! decoded (`eval::Roundtrip`, row by row with the same importance vectors
//! as the emitter);
//! a table is measured once however many rows share it ([`Measurer`]).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use eval::Roundtrip;
use quant::GgmlType;

use crate::error::{Error, Result};
use crate::setup::Setup;

/// Measured accuracy of one type table on the held-out windows.
#[derive(Debug, Clone, PartialEq)]
pub struct TextAccuracy {
    pub ppl_original: f64,
    pub ppl: f64,
    pub kld: f64,
    pub kld_p99: f64,
    pub top1: f64,
    pub windows: usize,
}

/// Measure `types` against the original, both streamed block by block
/// (the candidate's weights decoded from their encoding as each block is
/// needed). `on_step(n)` after the n-th of `n_layer + 1` steps.
pub fn measure_text(
    setup: &Setup,
    types: &BTreeMap<String, GgmlType>,
    on_step: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<TextAccuracy> {
    let candidate = roundtrip(setup, types)?;
    measure_source(setup, &candidate, on_step, cancel)
}

/// The setup's model with every measured tensor encoded in its type of
/// `types` and decoded back, as the emitter writes it.
pub fn roundtrip<'a>(
    setup: &'a Setup,
    types: &BTreeMap<String, GgmlType>,
) -> Result<Roundtrip<'a>> {
    let candidate = Roundtrip {
        base: &setup.opened,
        types: setup
            .measured
            .iter()
            .map(|meas| (meas.name.clone(), types[&meas.name]))
            .collect(),
        importance: &setup.importance,
    };
    candidate.check()?;
    Ok(candidate)
}

/// Measure the candidate `candidate` (a source over the setup's model)
/// against the original on the held-out windows, both streamed.
pub fn measure_source(
    setup: &Setup,
    candidate: &dyn eval::Source,
    on_step: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<TextAccuracy> {
    let m = &setup.opened;
    let r = eval::stream::evaluate(m, Some(candidate), &setup.eval_windows, on_step, cancel)?;
    let kld = r
        .kld
        .as_ref()
        .ok_or_else(|| Error::Input("no KL divergence".into()))?;
    Ok(TextAccuracy {
        ppl_original: r.original.perplexity,
        ppl: r.candidate.as_ref().map_or(f64::NAN, |c| c.perplexity),
        kld: kld.mean,
        kld_p99: kld.p99,
        top1: r.top1_agreement.unwrap_or(f64::NAN),
        windows: setup.eval_windows.len(),
    })
}

/// Measures type tables on the held-out windows, each distinct table once;
/// without held-out windows it measures nothing.
pub struct Measurer<'a> {
    setup: &'a Setup,
    cache: BTreeMap<Vec<GgmlType>, TextAccuracy>,
}

impl<'a> Measurer<'a> {
    pub fn new(setup: &'a Setup) -> Result<Measurer<'a>> {
        Ok(Measurer {
            setup,
            cache: BTreeMap::new(),
        })
    }

    /// Whether there is text to measure on.
    pub fn active(&self) -> bool {
        !self.setup.eval_windows.is_empty()
    }

    /// Steps of one measurement (for progress): the blocks, then the head.
    pub fn steps(&self) -> usize {
        self.setup.arch.n_layer + 1
    }

    /// The accuracy of `types`, or `None` without held-out text;
    /// `on_step(n)` after the n-th of [`Measurer::steps`] steps.
    pub fn measure(
        &mut self,
        types: &BTreeMap<String, GgmlType>,
        on_step: &dyn Fn(usize),
        cancel: &AtomicBool,
    ) -> Result<Option<TextAccuracy>> {
        if !self.active() {
            return Ok(None);
        }
        let key: Vec<GgmlType> = types.values().copied().collect();
        if let Some(t) = self.cache.get(&key) {
            return Ok(Some(t.clone()));
        }
        let t = measure_text(self.setup, types, on_step, cancel)?;
        self.cache.insert(key, t.clone());
        Ok(Some(t))
    }
}
