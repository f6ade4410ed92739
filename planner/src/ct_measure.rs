//! Measuring a compressed-tensors plan before it is written: every unit's
//! Linears encoded and decoded as the writer and vLLM do (`roundtrip_row`),
//! the inputs of W8A8 and FP8 Linears quantized at run time, GPTQ-rounded
//! Linears read from their stored codes, through `kiln eval`'s streaming
//! forward pass against the original on the held-out windows.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use passes::cost::CtScheme;
use passes::TensorNode;
use quant::ct as q;

use crate::accuracy::TextAccuracy;
use crate::ct_build::{dtype_of, fp8_tile_scales, roundtrip_row, run_time_acts};
use crate::error::{Error, Result};
use crate::setup::Setup;

/// Measured KL divergence with each unit in its own scheme (each with
/// its own fused NVFP4 amax), the other target Linears at their source
/// values; `None` without held-out text.
pub(crate) fn measure_units(
    setup: &Setup,
    per_unit: &[BTreeMap<CtScheme, Vec<usize>>],
    fp8_max: f32,
    cancel: &AtomicBool,
) -> Result<Option<f64>> {
    Ok(measure_against(setup, setup, per_unit, fp8_max, &|_| {}, cancel)?.map(|t| t.kld))
}

/// `cand` (the model itself, or a pruned copy of it) with each unit in its
/// scheme, measured against `reference`'s original on its held-out
/// windows; `None` without held-out text.
pub(crate) fn measure_against(
    reference: &Setup,
    setup: &Setup,
    per_unit: &[BTreeMap<CtScheme, Vec<usize>>],
    fp8_max: f32,
    positions: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<Option<TextAccuracy>> {
    measure_with(reference, setup, per_unit, fp8_max, None, positions, cancel)
}

/// [`measure_against`], the GPTQ-rounded Linears of `rounded` (when given)
/// read from their codes.
pub(crate) fn measure_with(
    reference: &Setup,
    setup: &Setup,
    per_unit: &[BTreeMap<CtScheme, Vec<usize>>],
    fp8_max: f32,
    rounded: Option<&eval::rounded::RoundedSet<eval::ct_gptq::CtRounded>>,
    positions: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<Option<TextAccuracy>> {
    if reference.eval_windows.is_empty() {
        return Ok(None);
    }
    let model = &setup.opened.loaded.model;
    let maps = &setup.opened.loaded.maps;
    // Each quantized tensor's scheme, global scale and dtype; the candidate
    // applies them row by row as its blocks stream.
    let mut plan: BTreeMap<String, (CtScheme, f32, q::Dtype)> = BTreeMap::new();
    let mut tiles: BTreeMap<String, (usize, Vec<Vec<f32>>)> = BTreeMap::new();
    for u in per_unit {
        for (s, idx) in u {
            let amax = idx
                .iter()
                .map(|&i| {
                    let t = &model.tensors[i];
                    let mut row = vec![0f32; t.row_len()];
                    (0..t.n_rows())
                        .map(|r| {
                            formats::data::read_row(maps, t, r, &mut row);
                            q::amax(&row)
                        })
                        .fold(0f32, f32::max)
                })
                .fold(0f32, f32::max);
            for &i in idx {
                let t = &model.tensors[i];
                let d = dtype_of(t);
                plan.insert(t.name.clone(), (*s, q::nvfp4_global_scale(amax, d), d));
                if *s == CtScheme::Fp8Block {
                    let per = t.n_rows() / t.parts.len().max(1);
                    tiles.insert(t.name.clone(), (per, fp8_tile_scales(maps, t, fp8_max, d)));
                }
            }
        }
    }
    let weights = eval::Mapped {
        base: &setup.opened,
        f: |node: &TensorNode, r: usize, row: &mut [f32]| {
            if let Some(&(s, global, d)) = plan.get(&node.name) {
                let band = tiles
                    .get(&node.name)
                    .map(|(per, t)| t[(r / per) * per.div_ceil(128) + (r % per) / 128].as_slice());
                let q = roundtrip_row(s, row, global, fp8_max, d, band);
                row.copy_from_slice(&q);
            }
        },
    };
    // The schemes that quantize activations at run time have their inputs
    // quantized too, as `kiln eval` measures the written artifact.
    let over;
    let weights: &dyn eval::Source = match rounded {
        Some(r) => {
            over = eval::ct_gptq::WithCtRounded {
                base: &weights,
                rounded: r,
            };
            &over
        }
        None => &weights,
    };
    let candidate = eval::WithActs {
        base: weights,
        acts: plan
            .iter()
            .filter_map(|(name, &(s, _, _))| Some((name.clone(), run_time_acts(s)?)))
            .collect(),
    };
    let r = eval::stream::evaluate(
        &reference.opened,
        Some(&candidate),
        &reference.eval_windows,
        positions,
        cancel,
    )?;
    let kld = r
        .kld
        .as_ref()
        .ok_or_else(|| Error::Input("no KL divergence".into()))?;
    Ok(Some(TextAccuracy {
        ppl_original: r.original.perplexity,
        ppl: r.candidate.as_ref().map_or(f64::NAN, |c| c.perplexity),
        kld: kld.mean,
        kld_p99: kld.p99,
        top1: r.top1_agreement.unwrap_or(f64::NAN),
        windows: reference.eval_windows.len(),
    }))
}
