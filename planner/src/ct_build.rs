//! `kiln build --engine vllm|trt-llm`: a compressed-tensors artifact chosen
//! per layer. Every target Linear is measured in every scheme the target's
//! runtime runs natively (and kept in 16 bits), its error weighted by the
//! setup's sensitivity (KL divergence per unit of weight noise, as for GGUF);
//! fused layers (q/k/v, gate/up of a layer) share one choice; the choices are
//! solved under the budget (accuracy objective) or the error ceiling (cost
//! objective); the artifact is written with one config group per scheme and
//! the 16-bit layers in `ignore`, beside `manifest.json` and `report.md`.
//!
//! What must stay true: a scheme the target's runtime does not run natively
//! is never offered ([`Target::schemes_of`]); a runtime that loads only one
//! config group gets one scheme throughout; the measured error is that of
//! the writer's arithmetic (`quant::ct`, the functions `formats::ct` encodes
//! with), decoded as vLLM decodes it; the solve is deterministic (no
//! dependence on thread count or map order); OUTDIR appears complete or not
//! at all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;

use formats::artifact::{self, Staging};
use formats::ct::{self as fct, CompressedTensors, Scheme};
use formats::write::{self, Container, WriteOptions};
use passes::cost::{CtScheme, Target};
use passes::{Role, TensorNode};
use quant::ct as q;
use serde_json::json;

use crate::build::BuildOptions;
pub(crate) use crate::ct_measure::{measure_against, measure_units, measure_with};
pub use crate::ct_prune::{weigh_pruning, Ct};
pub(crate) use crate::ct_report::kld;
use crate::ct_report::report_text;
use crate::error::{Error, Result};
use crate::options::Objective;
use crate::progress::{Progress, Unit};
use crate::setup::Setup;
use crate::solve::{self, Sizing};

/// The schemes the planner writes: the data-free presets (FP8 and NVFP4
/// need activation ranges from calibration text, which only `kiln convert
/// --text` measures).
fn writable(s: CtScheme) -> Option<Scheme> {
    Scheme::parse(s.name(), None)
        .ok()
        .filter(|s| !s.static_activations())
}

/// One choice of a unit: a scheme, or `None` for 16 bits (in `ignore`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnitChoice {
    pub scheme: Option<CtScheme>,
    pub bytes: u64,
    /// Predicted KL divergence (sensitivity x measured noise-to-signal).
    pub error: f64,
}

/// Linears that must share a scheme: q/k/v of a layer, gate/up of a layer,
/// or one Linear.
#[derive(Debug, Clone)]
pub struct FusedUnit {
    pub name: String,
    /// Indices into the model's tensors.
    pub tensors: Vec<usize>,
    pub choices: Vec<UnitChoice>,
}

/// The planned artifact and what it was compared with.
#[derive(Debug, Clone)]
pub struct CtPlan {
    pub runtime: String,
    pub legal: Vec<CtScheme>,
    pub single_group: bool,
    /// An MoE checkpoint: planned as uniform schemes (one `Linear` group,
    /// the form llm-compressor writes for MoE presets and fused-MoE loaders
    /// look up); per-module mixed precision is not offered for experts.
    pub moe: bool,
    pub units: Vec<FusedUnit>,
    /// Chosen index into each unit's choices.
    pub chosen: Vec<usize>,
    /// Bytes of the tensors outside the target Linears (embeddings, norms, lm_head).
    pub fixed_bytes: u64,
    pub budget: String,
    /// What set the budget (`budget_gb`, `bpw`, `target_memory`, or
    /// `pruning_same_memory` for a pruned model's plan).
    pub budget_source: &'static str,
    /// Devices the budget was sized for.
    pub devices: usize,
    pub ceiling: Option<f64>,
}

impl CtPlan {
    pub fn bytes(&self) -> u64 {
        self.fixed_bytes
            + self
                .units
                .iter()
                .zip(&self.chosen)
                .map(|(u, &c)| u.choices[c].bytes)
                .sum::<u64>()
    }

    pub fn error(&self) -> f64 {
        self.units
            .iter()
            .zip(&self.chosen)
            .map(|(u, &c)| u.choices[c].error)
            .sum()
    }

    /// Every unit in `s` where it fits, else kept (16 bits, always choice
    /// 0): a uniform scheme's plan (the comparison rows).
    pub fn uniform_plan(&self, s: Option<CtScheme>) -> CtPlan {
        let mut p = self.clone();
        p.chosen = self
            .units
            .iter()
            .map(|u| u.choices.iter().position(|c| c.scheme == s).unwrap_or(0))
            .collect();
        p
    }

    /// A uniform scheme's bytes and predicted error.
    pub fn uniform(&self, s: Option<CtScheme>) -> (u64, f64) {
        let p = self.uniform_plan(s);
        (p.bytes(), p.error())
    }

    /// Source tensor name -> scheme, for the writer.
    pub fn assignment(&self, model: &passes::Model) -> BTreeMap<String, Scheme> {
        let mut out = BTreeMap::new();
        for (u, &c) in self.units.iter().zip(&self.chosen) {
            if let Some(s) = u.choices[c].scheme.and_then(writable) {
                for &i in &u.tensors {
                    out.insert(model.tensors[i].source_name.clone(), s);
                }
            }
        }
        out
    }
}

/// The runtime serving `engine` on `target` and the schemes the planner
/// may give its Linears there (those it runs natively that kiln writes
/// without calibration), or why there are none.
pub fn legal(target: &Target, engine: &str) -> Result<(String, Vec<CtScheme>)> {
    let (rt, _) = target.runtime_for(engine).ok_or_else(|| {
        Error::Options(format!(
            "`{}` does not list {engine} among its runtimes ({})",
            target.id,
            target
                .runtimes
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let legal: Vec<CtScheme> = target
        .schemes_of(rt)
        .into_iter()
        .filter(|s| writable(*s).is_some())
        .collect();
    if legal.is_empty() {
        return Err(Error::Options(format!(
            "{rt} on `{}` runs no compressed-tensors scheme kiln writes (it lists: {})",
            target.id,
            target.runtimes[rt].join(", ")
        )));
    }
    Ok((rt.to_string(), legal))
}

/// A Linear the planner gives a scheme: a target Linear, or an MoE layer's
/// stacked routed experts (`[n_expert, out, in]`, one tensor per expert in
/// the artifact).
fn planned(t: &TensorNode) -> bool {
    fct::is_target(t)
        || (t.shape.len() == 3
            && matches!(
                t.role,
                Role::FfnGateExps | Role::FfnUpExps | Role::FfnDownExps
            ))
}

/// The fused unit a planned Linear belongs to: every routed expert of a
/// layer (gate, up and down) is one unit, as vLLM's fused MoE runs one
/// scheme per layer's experts; the shared expert's gate/up and down are
/// units of their own.
fn unit_key(t: &TensorNode) -> (usize, u8, String) {
    let layer = t.layer.unwrap_or(usize::MAX);
    let (k, what) = match t.role {
        Role::AttnQ | Role::AttnK | Role::AttnV | Role::AttnQkv => (0, "q/k/v"),
        Role::AttnOutput => (1, "o"),
        Role::FfnGate | Role::FfnUp => (2, "gate/up"),
        Role::FfnGateExps | Role::FfnUpExps | Role::FfnDownExps => (4, "experts"),
        Role::FfnGateShexp | Role::FfnUpShexp => (5, "shared gate/up"),
        Role::FfnDownShexp => (6, "shared down"),
        _ => (3, "down"),
    };
    (layer, k, format!("layer {layer} {what}"))
}

/// Decode `row` after encoding it as `s` does (the writer's arithmetic,
/// dequantized as vLLM does: int `(q - zp) * scale`, FP8 `e4m3 * scale`,
/// NVFP4 `fp4 * scale / global`, MXFP4 `fp4 * 2^(e - 127)`).
/// FP8_BLOCK is measured with one scale per row (its 128-row tiles share a
/// scale in the artifact: the measured noise is a lower bound).
/// How a data-free scheme's activations are quantized at run time (the
/// static schemes, FP8 and NVFP4, need calibrated scales and are not planned).
pub(crate) fn run_time_acts(s: CtScheme) -> Option<quant::ct::ActQuant> {
    use quant::ct::ActQuant;
    match s {
        CtScheme::W8A8 => Some(ActQuant::Int8Token),
        CtScheme::Fp8Dynamic => Some(ActQuant::Fp8Token),
        CtScheme::Fp8Block => Some(ActQuant::Fp8Group(128)),
        _ => None,
    }
}

/// One row encoded in scheme `s` and decoded back with compressed-tensors'
/// decompression arithmetic (`quant::ct`'s decoders: values rounded to the
/// dtype they are decompressed to), so that a plan measured here measures
/// what `kiln eval` reads from the written artifact. `tiles`: FP8_BLOCK's
/// scales of the row's 128-row band (one per 128 columns, from the whole
/// tile); without them each 128 columns of the row is its own tile (an
/// estimate, for predictions).
pub(crate) fn roundtrip_row(
    s: CtScheme,
    row: &[f32],
    global: f32,
    fp8_max: f32,
    d: q::Dtype,
    tiles: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; row.len()];
    match s {
        CtScheme::W4A16 | CtScheme::W4A16Asym | CtScheme::W8A16 | CtScheme::W8A8 => {
            let bits = if matches!(s, CtScheme::W8A16 | CtScheme::W8A8) {
                8
            } else {
                4
            };
            let g = if s == CtScheme::W8A8 { row.len() } else { 128 };
            let sym = s != CtScheme::W4A16Asym;
            for (o, chunk) in out.chunks_exact_mut(g).zip(row.chunks_exact(g)) {
                let (lo, hi) = q::min_max(chunk);
                let p = q::int_params(lo, hi, bits, sym, d);
                for (y, &x) in o.iter_mut().zip(chunk) {
                    *y = q::int_dequantize(q::int_quantize(x, p, bits, d), p, d);
                }
            }
        }
        CtScheme::Fp8Block => {
            for (k, (o, chunk)) in out.chunks_mut(128).zip(row.chunks(128)).enumerate() {
                let sc = match tiles {
                    Some(t) => t[k],
                    None => q::fp8_scale(q::amax(chunk), fp8_max, d),
                };
                for (y, &x) in o.iter_mut().zip(chunk) {
                    *y = q::fp8_dequantize(q::fp8_quantize(x, sc, fp8_max, d), sc, d);
                }
            }
        }
        CtScheme::Fp8 | CtScheme::Fp8Dynamic => {
            let sc = q::fp8_scale(q::amax(row), fp8_max, d);
            for (y, &x) in out.iter_mut().zip(row) {
                *y = q::fp8_dequantize(q::fp8_quantize(x, sc, fp8_max, d), sc, d);
            }
        }
        CtScheme::Nvfp4A16 | CtScheme::Nvfp4 => {
            for (o, chunk) in out.chunks_exact_mut(16).zip(row.chunks_exact(16)) {
                let sc = q::nvfp4_group_scale(q::amax(chunk), global, d);
                for (y, &x) in o.iter_mut().zip(chunk) {
                    *y = q::nvfp4_dequantize(q::nvfp4_code(x, sc, global), sc, global);
                }
            }
        }
        CtScheme::Mxfp4 => {
            for (o, chunk) in out.chunks_exact_mut(32).zip(row.chunks_exact(32)) {
                let sc = q::mx_scale(q::amax(chunk), d);
                for (y, &x) in o.iter_mut().zip(chunk) {
                    *y = q::mx_dequantize(q::mx_code(x, sc, d), sc);
                }
            }
        }
    }
    out
}

/// FP8_BLOCK's scales of tensor `t`, `[row bands][column tiles]` (128 x 128
/// tiles within each expert of a stacked tensor), as the encoder computes them.
pub(crate) fn fp8_tile_scales(
    maps: &[formats::MappedFile],
    t: &TensorNode,
    fp8_max: f32,
    d: q::Dtype,
) -> Vec<Vec<f32>> {
    let (rows, cols) = (t.n_rows(), t.row_len());
    let per = rows / t.parts.len().max(1);
    let bands_per = per.div_ceil(128);
    let nc = cols.div_ceil(128);
    let mut amax = vec![vec![0f32; nc]; bands_per * t.parts.len().max(1)];
    let mut row = vec![0f32; cols];
    for r in 0..rows {
        formats::data::read_row(maps, t, r, &mut row);
        let band = (r / per) * bands_per + (r % per) / 128;
        for (a, chunk) in amax[band].iter_mut().zip(row.chunks(128)) {
            *a = a.max(q::amax(chunk));
        }
    }
    amax.into_iter()
        .map(|b| b.into_iter().map(|a| q::fp8_scale(a, fp8_max, d)).collect())
        .collect()
}

pub(crate) fn dtype_of(t: &TensorNode) -> q::Dtype {
    match t.source.dtype {
        passes::SourceDType::BF16 => q::Dtype::Bf16,
        passes::SourceDType::F16 => q::Dtype::F16,
        _ => q::Dtype::F32,
    }
}

/// Noise-to-signal ratio of `t` in `s` over its sampled rows (the rows
/// `eval::planning::sampled_rows` picks for the GGUF candidates).
fn nsr(
    setup: &Setup,
    t: &TensorNode,
    s: CtScheme,
    global_amax: f32,
    fp8_max: f32,
    sample: usize,
) -> f64 {
    let maps = &setup.opened.loaded.maps;
    let d = dtype_of(t);
    let global = q::nvfp4_global_scale(global_amax, d);
    let mut row = vec![0f32; t.row_len()];
    let (mut noise, mut signal) = (0f64, 0f64);
    for r in eval::planning::sampled_rows(t, sample) {
        formats::data::read_row(maps, t, r, &mut row);
        let y = roundtrip_row(s, &row, global, fp8_max, d, None);
        for (a, b) in row.iter().zip(&y) {
            noise += ((a - b) as f64).powi(2);
            signal += (*a as f64).powi(2);
        }
    }
    if signal > 0.0 {
        noise / signal
    } else {
        0.0
    }
}

/// Measure every target Linear in every legal scheme and solve: under the
/// budget (accuracy objective) or the error ceiling (cost).
pub fn plan(
    setup: &Setup,
    s: &Sizing,
    engine: &str,
    objective: Objective,
    max_error: Option<f64>,
) -> Result<CtPlan> {
    let mut p = units(setup, s, engine)?;
    let legal = p.legal.clone();
    let budget = solve::budget(setup, s, 1)?;
    p.budget = budget.from.clone();
    p.budget_source = budget.source;
    p.devices = budget.devices;
    // Uniform W4A16's predicted error, or that of the first legal scheme
    // that can hold any of the Linears (an MoE's 64-wide experts take no
    // group of 128: W4A16 would keep everything in 16 bits, a ceiling of 0).
    let default_ceiling = {
        let holds_any = |sc: CtScheme| {
            p.units
                .iter()
                .any(|u| u.choices.iter().any(|c| c.scheme == Some(sc)))
        };
        std::iter::once(CtScheme::W4A16)
            .filter(|w4| legal.contains(w4))
            .chain(legal.iter().copied())
            .find(|&sc| holds_any(sc))
            .map_or(0.0, |sc| p.uniform(Some(sc)).1)
    };
    match objective {
        Objective::Cost => {
            let ceiling = max_error.unwrap_or(default_ceiling);
            p.ceiling = Some(ceiling);
            solve_units(&mut p, |b, e| e <= ceiling * (1.0 + 1e-9) && b > 0, true);
        }
        Objective::Accuracy => {
            let cap = budget.file_bytes;
            solve_units(&mut p, |b, _| b <= cap, false);
        }
    }
    Ok(p)
}

/// The least predicted error in at most `cap` bytes of tensors (a pruned
/// model given the unpruned plan's budget); `None` when nothing fits.
pub fn plan_within(
    setup: &Setup,
    s: &Sizing,
    engine: &str,
    cap: u64,
    from: String,
) -> Result<Option<CtPlan>> {
    let mut p = units(setup, s, engine)?;
    p.budget = from;
    p.budget_source = "pruning_same_memory";
    solve_units(&mut p, |b, _| b <= cap, false);
    Ok(Some(p).filter(|p| p.bytes() <= cap))
}

/// Every target Linear measured in every legal scheme, grouped into units
/// (nothing chosen yet: every unit in 16 bits).
fn units(setup: &Setup, s: &Sizing, engine: &str) -> Result<CtPlan> {
    let target: &Target = s.target;
    let (rt, legal) = legal(target, engine)?;
    let fp8_max = target.fp8_max() as f32;
    let model = &setup.opened.loaded.model;
    let mut by_unit: BTreeMap<(usize, u8), (String, Vec<usize>)> = BTreeMap::new();
    let mut fixed_bytes = 0u64;
    for (i, t) in model.tensors.iter().enumerate() {
        if planned(t) {
            let (l, k, name) = unit_key(t);
            by_unit
                .entry((l, k))
                .or_insert((name, Vec::new()))
                .1
                .push(i);
        } else {
            let vb = if t.source.dtype == passes::SourceDType::F32 {
                4
            } else {
                2
            };
            fixed_bytes += vb * t.n_elements() as u64;
        }
    }
    let mut units = Vec::with_capacity(by_unit.len());
    for (_, (name, idx)) in by_unit {
        // NVFP4's global scale is shared over the fused unit.
        let amax = idx
            .iter()
            .map(|&i| {
                let t = &model.tensors[i];
                let mut row = vec![0f32; t.row_len()];
                (0..t.n_rows())
                    .map(|r| {
                        formats::data::read_row(&setup.opened.loaded.maps, t, r, &mut row);
                        q::amax(&row)
                    })
                    .fold(0f32, f32::max)
            })
            .fold(0f32, f32::max);
        let kept: u64 = idx
            .iter()
            .map(|&i| {
                let t = &model.tensors[i];
                let vb = if t.source.dtype == passes::SourceDType::F32 {
                    4
                } else {
                    2
                };
                vb * t.n_elements() as u64
            })
            .sum();
        let mut choices = vec![UnitChoice {
            scheme: None,
            bytes: kept,
            error: 0.0,
        }];
        'scheme: for &sc in &legal {
            let group = if sc.grouped() { 128 } else { 0 };
            let (mut b, mut e) = (0u64, 0f64);
            for &i in &idx {
                let t = &model.tensors[i];
                let vb = dtype_of(t).bytes();
                let Some(tb) = sc.linear_bytes(t.n_rows(), t.row_len(), group, vb) else {
                    continue 'scheme;
                };
                b += tb;
                let sens = setup.sensitivity.get(&t.name).copied().unwrap_or(1.0);
                e += sens * nsr(setup, t, sc, amax, fp8_max, s.options.sample);
            }
            choices.push(UnitChoice {
                scheme: Some(sc),
                bytes: b,
                error: e,
            });
        }
        units.push(FusedUnit {
            name,
            tensors: idx,
            choices,
        });
    }
    let moe = model.tensors.iter().any(|t| !t.parts.is_empty());
    let single_group = target.is_single_group(&rt) || moe;
    Ok(CtPlan {
        runtime: rt.to_string(),
        legal,
        single_group,
        moe,
        chosen: vec![0; units.len()],
        units,
        fixed_bytes,
        budget: String::new(),
        budget_source: "",
        devices: 1,
        ceiling: None,
    })
}

/// Choose per unit by a Lagrangian: each unit takes the choice minimizing
/// `error + lambda * bytes`, with lambda bisected so the constraint `ok`
/// holds; `cost` seeks the largest feasible lambda (fewest bytes), else the
/// smallest (least error). A single-group runtime chooses among uniform
/// plans instead.
fn solve_units(p: &mut CtPlan, ok: impl Fn(u64, f64) -> bool, cost: bool) {
    if p.single_group {
        let mut best: Option<(Vec<usize>, u64, f64)> = None;
        for s in std::iter::once(None).chain(p.legal.iter().map(|s| Some(*s))) {
            let pick: Vec<usize> = p
                .units
                .iter()
                .map(|u| u.choices.iter().position(|c| c.scheme == s).unwrap_or(0))
                .collect();
            p.chosen = pick.clone();
            let (b, e) = (p.bytes(), p.error());
            if !ok(b, e) {
                continue;
            }
            let better = match &best {
                None => true,
                Some((_, bb, be)) => {
                    if cost {
                        b < *bb
                    } else {
                        e < *be
                    }
                }
            };
            if better {
                best = Some((pick, b, e));
            }
        }
        p.chosen = best.map_or_else(|| smallest(p), |b| b.0);
        return;
    }
    let pick = |p: &CtPlan, lambda: f64| -> Vec<usize> {
        p.units
            .iter()
            .map(|u| {
                let mut bi = 0;
                for (i, c) in u.choices.iter().enumerate() {
                    let v = c.error + lambda * c.bytes as f64;
                    let bv = u.choices[bi].error + lambda * u.choices[bi].bytes as f64;
                    if v < bv || (v == bv && c.bytes < u.choices[bi].bytes) {
                        bi = i;
                    }
                }
                bi
            })
            .collect()
    };
    let eval = |p: &mut CtPlan, lambda: f64| {
        p.chosen = pick(p, lambda);
        ok(p.bytes(), p.error())
    };
    // lambda in log space between 1e-30 and 1e3 (per byte, in nats).
    let (mut lo, mut hi) = (-30f64, 3f64);
    if cost {
        if !eval(p, 10f64.powf(lo)) {
            p.chosen = pick(p, 10f64.powf(lo));
            return;
        }
        for _ in 0..80 {
            let mid = (lo + hi) / 2.0;
            if eval(p, 10f64.powf(mid)) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        p.chosen = pick(p, 10f64.powf(lo));
    } else {
        if !eval(p, 10f64.powf(hi)) {
            p.chosen = smallest(p);
            return;
        }
        for _ in 0..80 {
            let mid = (lo + hi) / 2.0;
            if eval(p, 10f64.powf(mid)) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        p.chosen = pick(p, 10f64.powf(hi));
    }
}

/// Every unit at its fewest bytes.
fn smallest(p: &CtPlan) -> Vec<usize> {
    p.units
        .iter()
        .map(|u| {
            (0..u.choices.len())
                .min_by_key(|&i| u.choices[i].bytes)
                .unwrap_or(0)
        })
        .collect()
}

/// What a compressed-tensors build wrote.
pub struct CtBuilt {
    pub report: String,
    pub manifest_json: String,
    pub actual_bytes: u64,
}

/// The serving estimate of the plan: each target Linear at its scheme's
/// stored bytes (an MoE layer's experts counted as the stacked whole), the
/// rest in the checkpoint's dtype, and the share multiplied with quantized
/// activations (W8A8, FP8 dynamic and block) not dequantized first.
pub fn cost(setup: &Setup, s: &Sizing, p: &CtPlan) -> Result<passes::cost::Estimate> {
    let mut model = setup.opened.loaded.model.clone();
    let mut act_quantized = BTreeMap::new();
    let mut schemes = BTreeSet::new();
    for (u, &c) in p.units.iter().zip(&p.chosen) {
        let Some((sc, w)) = u.choices[c].scheme.and_then(|sc| Some((sc, writable(sc)?))) else {
            continue;
        };
        schemes.insert(sc);
        for &i in &u.tensors {
            let t = &mut model.tensors[i];
            t.encoding = Some(w.encoding());
            if sc.quantizes_activations() {
                let e: &mut (u64, u64) = act_quantized.entry(sc).or_default();
                e.0 += t.encoded_bytes().unwrap_or(0);
                e.1 += t.n_elements() as u64;
            }
        }
    }
    let mut wb = passes::cost::weight_bytes(
        &model.tensors,
        &setup.arch,
        passes::cost::WeightFormat::Planned,
    );
    wb.act_quantized = act_quantized;
    wb.ct_schemes = Some(schemes);
    crate::serving::cost_of_weights(&wb, &setup.arch, s.target, s.engine, s.workload, p.devices)
}

/// Unit index lists per scheme for `chosen` (unit-level NVFP4 amax).
pub(crate) fn by_scheme(p: &CtPlan, chosen: &[usize]) -> Vec<BTreeMap<CtScheme, Vec<usize>>> {
    p.units
        .iter()
        .zip(chosen)
        .filter_map(|(u, &c)| {
            u.choices[c]
                .scheme
                .map(|s| BTreeMap::from([(s, u.tensors.clone())]))
        })
        .collect()
}

/// Plan, write and report a compressed-tensors build.
pub fn build(
    setup: &Setup,
    s: &Sizing,
    engine: &str,
    b: &BuildOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<CtBuilt> {
    if !b.model.is_dir() {
        return Err(Error::Options(format!(
            "{}: --engine {engine} writes compressed-tensors, from a Hugging Face checkpoint directory (config.json and safetensors), not from a GGUF",
            b.model.display()
        )));
    }
    let unpruned = plan(setup, s, engine, b.objective, b.max_error)?;
    let fp8_max = s.target.fp8_max() as f32;
    // With --prune-candidates, pruning options are weighed against this
    // plan at the same memory; one that measures better is what is built.
    let weighed = weigh_pruning(setup, s, engine, &unpruned, progress, cancel)?;
    let unpruned_kld = weighed
        .as_ref()
        .and_then(|w| w.record.options.first()?.measured.as_ref()?.kld_mean);
    let pruned = weighed.as_ref().and_then(|w| w.pruned.as_ref());
    let (wsetup, p) = match pruned {
        Some(x) => (&x.setup, &x.chosen),
        None => (setup, &unpruned),
    };
    let est = cost(wsetup, s, p)?;
    let mut model = wsetup.opened.loaded.model.clone();
    let stacked = p.assignment(&model);
    // Experts back to the checkpoint's per-expert Linears, each in its
    // layer's scheme.
    let experts = fct::unstack_experts(&mut model);
    let assignment: BTreeMap<String, Scheme> = stacked
        .into_iter()
        .flat_map(|(name, s)| match experts.get(&name) {
            Some(names) => names.iter().map(|n| (n.clone(), s)).collect::<Vec<_>>(),
            None => vec![(name, s)],
        })
        .collect();
    fct::assign_mixed(&mut model, &assignment)?;
    fct::set_fp8_max(&mut model, s.target.fp8_max()).map_err(Error::Options)?;
    let src = &b.model;
    let maps = &wsetup.opened.loaded.maps;
    // One scheme throughout is written as llm-compressor writes a preset
    // (`targets: ["Linear"]`, the rest in `ignore`); several as named groups.
    let distinct: BTreeSet<&str> = assignment.values().map(|s| s.name()).collect();
    let mut container = match assignment.values().next() {
        Some(&one) if distinct.len() == 1 => CompressedTensors::new(one, &model, maps, src)?,
        Some(_) => CompressedTensors::mixed(&assignment, &model, maps, src)?,
        None => CompressedTensors::new(Scheme::W8A8, &model, maps, src)?,
    };
    // A pruned model's config.json says what is left.
    if let Some(x) = pruned {
        passes::passes::prune::edit_hf_config(container.config_mut(), &x.setup.arch, &x.layer_map);
    }
    let staging = Staging::new(&b.output, b.force)?;
    // The plan rounded to nearest, measured on the held-out windows.
    let plan_kld = match pruned {
        Some(x) => Some(x.measured.kld),
        None if unpruned_kld.is_some() => unpruned_kld,
        None => measure_units(setup, &by_scheme(p, &p.chosen), fp8_max, cancel)?,
    };
    // With --gptq: the plan's integer Linears GPTQ-rounded, measured the
    // same way, written only if it measures better.
    let gptq = match &b.gptq {
        None => None,
        // A pruned plan is rounded on the pruned model and measured against
        // the unpruned original, as its pruning was.
        Some(g) => Some(crate::ct_gptq::weigh(
            setup,
            wsetup,
            p,
            &model,
            &assignment,
            plan_kld,
            g,
            fp8_max,
            staging.dir(),
            progress,
            cancel,
        )?),
    };
    let applied = gptq.as_ref().filter(|w| w.applied);
    let container: Box<dyn Container + '_> = match applied {
        Some(w) => Box::new(eval::ct_gptq::GptqCt::new(
            container,
            &w.rounded,
            crate::ct_gptq::ACTORDER,
        )),
        None => Box::new(container),
    };
    let files = container.layout(&model)?;
    let input_bytes: u64 = model.tensors.iter().map(|t| t.source.len).sum();
    progress.start("writing", input_bytes, Unit::Bytes);
    let written = write::write(
        &model,
        maps,
        container.as_ref(),
        &files,
        staging.dir(),
        WriteOptions {
            allow_nonfinite: false,
            importance: None,
        },
        &|n| progress.advance(n),
        cancel,
    );
    progress.finish();
    let written = written?;

    // Compare with the uniform schemes, measured on text where given.
    let mut rows: Vec<(String, u64, f64, Option<f64>)> = Vec::new();
    progress.start("comparing", 5, Unit::Items("plans"));
    rows.push((
        match (pruned, applied) {
            (Some(x), Some(_)) => {
                format!("kiln plan ({}), pruned `{}`, GPTQ", p.runtime, x.resolved)
            }
            (Some(x), None) => format!("kiln plan ({}), pruned `{}`", p.runtime, x.resolved),
            (None, Some(_)) => format!("kiln plan ({}), GPTQ", p.runtime),
            (None, None) => format!("kiln plan ({})", p.runtime),
        },
        p.bytes(),
        p.error(),
        applied.map_or(plan_kld, |w| w.with),
    ));
    progress.advance(1);
    for (label, sc) in [
        ("W4A16 g128", CtScheme::W4A16),
        ("W8A16 g128", CtScheme::W8A16),
        ("W8A8", CtScheme::W8A8),
        ("FP8_DYNAMIC", CtScheme::Fp8Dynamic),
    ] {
        if !p.legal.contains(&sc) {
            rows.push((
                format!("{label} (not run by {} here)", p.runtime),
                0,
                f64::NAN,
                None,
            ));
            progress.advance(1);
            continue;
        }
        // Of the unpruned model: what serving it without kiln's plan gives.
        let u = unpruned.uniform_plan(Some(sc));
        let (bytes, err) = (u.bytes(), u.error());
        let kld = measure_units(setup, &by_scheme(&unpruned, &u.chosen), fp8_max, cancel)?;
        rows.push((label.to_string(), bytes, err, kld));
        progress.advance(1);
    }
    progress.finish();

    let cost = crate::manifest::Cost::of(&est);
    let mut report = report_text(setup, s, p, &rows, &cost);
    if let Some(w) = &weighed {
        report.push_str(&crate::prune::report_section(&w.record));
    }
    if let Some(g) = &gptq {
        report.push_str(&crate::ct_gptq::report_section(g));
    }
    staging.write("report.md", report.as_bytes())?;
    let mut listed = Vec::new();
    for w in &written {
        listed.push(json!({
            "path": w.name,
            "bytes": w.bytes,
            "sha256": artifact::sha256_file(&staging.path(&w.name))?,
        }));
    }
    let actual_bytes: u64 = files.iter().map(|f| f.total_bytes).sum();
    let units: Vec<serde_json::Value> = p
        .units
        .iter()
        .zip(&p.chosen)
        .map(|(u, &c)| {
            json!({
                "unit": u.name,
                "scheme": u.choices[c].scheme.map_or("bf16".to_string(), |s| s.name().to_string()),
                "bytes": u.choices[c].bytes,
                "predicted_kld": u.choices[c].error,
                "tensors": u.tensors.iter().map(|&i| model.tensors[i].source_name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let manifest = json!({
        "schema": "kiln.artifact/build-ct-1",
        "input": b.model,
        "format": "compressed-tensors",
        "compressed_tensors_version": fct::CT_VERSION,
        "target": s.target.id,
        "engine": engine,
        "runtime": p.runtime,
        "legal_schemes": p.legal.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "single_group": p.single_group,
        // No quantization_config field carries it (Neuron reads the standard block).
        "fp8_e4m3_max": s.target.fp8_max(),
        "objective": match b.objective { Objective::Cost => "cost", Objective::Accuracy => "accuracy" },
        "budget": p.budget,
        "max_error": p.ceiling,
        "tensor_bytes": actual_bytes,
        "bits_per_weight": wsetup.bpw(p.bytes()),
        "devices": p.devices,
        "predicted_kld": p.error(),
        "cost": cost,
        "units": units,
        "compared": rows.iter().map(|(n, b, e, k)| json!({
            "name": n,
            "tensor_bytes": b,
            "predicted_kld": if e.is_finite() { json!(e) } else { json!(null) },
            "measured_kld": k,
        })).collect::<Vec<_>>(),
        "files": listed,
    });
    let mut manifest = manifest;
    // Only with --prune-candidates: the manifest without it is unchanged.
    if let Some(w) = &weighed {
        manifest["pruning"] = serde_json::to_value(&w.record).expect("JSON serializes");
    }
    // Only with --gptq.
    if let Some(g) = &gptq {
        manifest["gptq"] = g.record.clone();
    }
    let manifest_json = serde_json::to_string_pretty(&manifest).expect("JSON serializes");
    staging.write("manifest.json", manifest_json.as_bytes())?;
    staging.commit()?;
    Ok(CtBuilt {
        report,
        manifest_json,
        actual_bytes,
    })
}
