//! Text accuracy of a type table: every quantizable tensor encoded and
//! decoded exactly as the emitter does, then perplexity, KL divergence and
//! top-1 agreement against the original on the held-out windows.
//!
//! What must stay true: the candidate's weights are the emitter's bytes
//! decoded (`eval::planning::roundtrip` with the same importance vectors);
//! a table is measured once however many rows share it ([`Measurer`]).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use eval::planning;
use eval::Transformer;
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

/// Measure `types` with `candidate` (its weights are replaced) against `original`.
pub fn measure_text(
    setup: &Setup,
    types: &BTreeMap<String, GgmlType>,
    original: &Transformer,
    candidate: &mut Transformer,
    on_window: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<TextAccuracy> {
    let m = &setup.opened;
    for meas in &setup.measured {
        let node = m.need(&meas.name)?;
        let ty = types[&meas.name];
        let q = planning::roundtrip(
            m,
            node,
            ty,
            setup.importance.get(&meas.name).map(Vec::as_slice),
        )?;
        candidate.set_weight(&meas.name, q)?;
    }
    let r = eval::text::evaluate(
        original,
        Some(candidate),
        &setup.eval_windows,
        on_window,
        cancel,
    )?;
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
    nets: Option<(Transformer, Transformer)>,
    cache: BTreeMap<Vec<GgmlType>, TextAccuracy>,
}

impl<'a> Measurer<'a> {
    pub fn new(setup: &'a Setup) -> Result<Measurer<'a>> {
        let nets = if setup.eval_windows.is_empty() {
            None
        } else {
            Some((
                Transformer::new(&setup.opened)?,
                Transformer::new(&setup.opened)?,
            ))
        };
        Ok(Measurer {
            setup,
            nets,
            cache: BTreeMap::new(),
        })
    }

    /// Whether there is text to measure on.
    pub fn active(&self) -> bool {
        self.nets.is_some()
    }

    /// The accuracy of `types`, or `None` without held-out text;
    /// `on_window(n)` after the n-th window.
    pub fn measure(
        &mut self,
        types: &BTreeMap<String, GgmlType>,
        on_window: &dyn Fn(usize),
        cancel: &AtomicBool,
    ) -> Result<Option<TextAccuracy>> {
        let Some((original, candidate)) = self.nets.as_mut() else {
            return Ok(None);
        };
        let key: Vec<GgmlType> = types.values().copied().collect();
        if let Some(t) = self.cache.get(&key) {
            return Ok(Some(t.clone()));
        }
        let t = measure_text(self.setup, types, original, candidate, on_window, cancel)?;
        self.cache.insert(key, t.clone());
        Ok(Some(t))
    }
}
