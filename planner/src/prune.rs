//! Pruning planned jointly with quantization (`--prune-candidates`): each
//! structured-pruning option (fewer blocks by ShortGPT block influence,
//! narrower FFNs or fewer KV groups by Wanda's statistic, the passes of
//! `passes::passes::prune`) is applied to a fresh copy of the model,
//! measured like the model itself (imatrix, every tensor in every
//! candidate, probes: `setup::setup_opened`), given the same budget as the
//! unpruned plan (its tensor bytes; when the budget is the target's memory,
//! plus the KV cache the pruning saves at the requested context and
//! concurrency), allocated by the same search,
//! and measured against the *unpruned original* on the held-out windows.
//! A pruning option is chosen only when its measured mean KL divergence is
//! strictly lower than the unpruned plan's at that same memory; the report
//! lists every option with its cost-model figures (weight bytes, KV bytes
//! per token and for the whole batch, largest batch, decode tokens/s, $ per
//! million tokens) beside its measured accuracy.
//!
//! What must stay true: without candidates nothing here runs and no output
//! changes; every figure of an option is measured or computed for that
//! option, never carried over; a candidate `auto` proposes that does not
//! apply to the model (too few layers, a head count or a family llama.cpp
//! cannot serve pruned) is listed with its reason, not dropped silently; one
//! the user named is an error; at most one pruned model is held at a time
//! besides the best so far.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use eval::{Opened, Roundtrip};
use formats::data::Rows;
use formats::MappedFile;
use passes::passes::prune::{
    DropKvGroups, DropLayers, KvSel, LayerSel, NarrowFfn, PruneSpec, Scratch,
};
use passes::passes::{Context, Pass, Pipeline};
use passes::plan;
use quant::GgmlType;
use serde::{Deserialize, Serialize};

use crate::accuracy::TextAccuracy;
use crate::error::{Error, Result};
use crate::options::PlanOptions;
use crate::progress::{positions, Progress, Unit};
use crate::serving;
use crate::setup::{load_options, setup_opened, Setup, Texts};
use crate::solve::{self, Budget, Chosen, Sizing};

/// The pruning options `build` and `plan` weigh: those `auto` proposes for
/// the model, and those named (`--prune-candidates SPEC`). Empty: none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PruneCandidates {
    pub auto: bool,
    pub specs: Vec<PruneSpec>,
}

impl PruneCandidates {
    /// Parse `--prune-candidates` values: `auto`, `none`, or a `--prune`
    /// spec (`layers=auto:1`, `ffn=0.75`, `kv-groups=2`, `layers=3;ffn=0.9`).
    pub fn parse(values: &[String]) -> std::result::Result<PruneCandidates, String> {
        let mut c = PruneCandidates::default();
        let mut none = false;
        for v in values {
            match v.trim() {
                "none" => none = true,
                "auto" => c.auto = true,
                s => {
                    let spec = passes::passes::prune::parse_spec(s).map_err(|e| {
                        format!("--prune-candidates `{}`: {e}", passes::printable(s))
                    })?;
                    if !c.specs.contains(&spec) {
                        c.specs.push(spec);
                    }
                }
            }
        }
        if none && !c.is_empty() {
            return Err("--prune-candidates none cannot be given with other candidates".into());
        }
        Ok(c)
    }

    pub fn is_empty(&self) -> bool {
        !self.auto && self.specs.is_empty()
    }

    /// As the user would write them (for the record).
    pub fn describe(&self) -> String {
        let mut v: Vec<String> = Vec::new();
        if self.auto {
            v.push("auto".into());
        }
        v.extend(self.specs.iter().map(PruneSpec::to_spec_string));
        v.join(" ")
    }

    /// The options to weigh on a model of `arch`, each with whether the
    /// user named it (`auto`'s first): depth 1 and 2 blocks (leaving at
    /// least two), FFN 90% and 75%, half the KV groups where there are at
    /// least two.
    pub fn expand(&self, arch: &passes::Arch) -> Vec<(PruneSpec, bool)> {
        let base = PruneSpec {
            tp: 1,
            ..PruneSpec::default()
        };
        let mut out: Vec<(PruneSpec, bool)> = Vec::new();
        if self.auto {
            for n in [1, 2] {
                if arch.n_layer >= n + 2 || (n == 1 && arch.n_layer == 2) {
                    out.push((
                        PruneSpec {
                            layers: Some(LayerSel::Auto(n)),
                            ..base.clone()
                        },
                        false,
                    ));
                }
            }
            for r in [0.9, 0.75] {
                out.push((
                    PruneSpec {
                        ffn: Some(r),
                        ..base.clone()
                    },
                    false,
                ));
            }
            if arch.n_head_kv >= 2 {
                out.push((
                    PruneSpec {
                        kv: Some(KvSel::Keep(arch.n_head_kv / 2)),
                        ..base.clone()
                    },
                    false,
                ));
            }
        }
        for s in &self.specs {
            match out.iter_mut().find(|(x, _)| x == s) {
                Some(e) => e.1 = true,
                None => out.push((s.clone(), true)),
            }
        }
        out
    }
}

/// One option weighed: the unpruned plan (`spec` "none") or a pruning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneOption {
    /// As proposed (`layers=auto:1`) or `none`.
    pub spec: String,
    /// As applied, rerunnable with `kiln convert --prune` (blocks named).
    pub resolved: Option<String>,
    /// Why it was not weighed (does not apply to this model or budget).
    pub not_applicable: Option<String>,
    pub n_layer: usize,
    pub n_head_kv: usize,
    pub ffn: usize,
    pub parameters: u64,
    /// Tensor bytes the option may use: the unpruned plan's plus the KV
    /// cache it saves.
    pub budget_tensor_bytes: u64,
    pub tensor_bytes: Option<u64>,
    pub bits_per_weight: Option<f64>,
    /// KV cache bytes per token of context (the cost model's, at --kv-type).
    pub kv_bytes_per_token: u64,
    /// KV cache of the batch at the requested context and concurrency.
    pub kv_cache_bytes: u64,
    pub memory_per_device_bytes: Option<u64>,
    pub fits: Option<bool>,
    pub max_batch: Option<u64>,
    pub decode_tokens_per_second: Option<f64>,
    pub usd_per_million_tokens: Option<f64>,
    /// Predicted KL divergence of the quantization, against the pruned model.
    pub predicted_kld_of_quantization: Option<f64>,
    /// Measured against the unpruned original on the held-out windows.
    pub measured: Option<crate::manifest::Text>,
    pub chosen: bool,
}

/// The pruning options weighed for one plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pruning {
    /// `--prune-candidates` as given.
    pub candidates: String,
    /// How options are compared.
    pub rule: String,
    /// The unpruned plan first, then each pruning option.
    pub options: Vec<PruneOption>,
    /// The pruning applied in the artifact (`None`: none measured better).
    pub chosen: Option<String>,
    /// What the chosen pruning removed, one line per pass.
    pub passes: Vec<String>,
}

/// A pruned model ready to be written: its setup and plan.
pub struct Pruned<P = Chosen> {
    pub setup: Setup,
    pub chosen: P,
    pub resolved: String,
    pub measured: TextAccuracy,
    pub summary: Vec<String>,
    /// Input layer -> output layer (empty: no depth pruning), for the
    /// Hugging Face config's per-layer lists.
    pub layer_map: Vec<Option<usize>>,
}

/// What weighing found: the record, and the pruned plan when one won.
pub struct Weighed<P = Chosen> {
    pub record: Pruning,
    pub pruned: Option<Pruned<P>>,
}

/// What weighing needs of an artifact family's planner: GGUF types per
/// tensor ([`Gguf`]), or compressed-tensors schemes per Linear
/// (`ct_build::Ct`).
pub trait Family {
    /// One model's plan.
    type Plan;
    /// The output is a GGUF (llama.cpp's graphs limit which KV groups may go).
    fn gguf(&self) -> bool;
    /// Tensor bytes and predicted KL divergence of a plan.
    fn size(&self, p: &Self::Plan) -> (u64, f64);
    /// The serving estimate of `setup` planned as `p`; `None`: any plan
    /// (for what does not depend on it, the KV cache).
    fn cost(
        &self,
        setup: &Setup,
        s: &Sizing,
        p: Option<&Self::Plan>,
    ) -> Result<passes::cost::Estimate>;
    /// The least predicted error in at most `budget` tensor bytes (`None`:
    /// nothing fits); `from` says where the budget came from.
    fn allocate(
        &self,
        setup: &Setup,
        s: &Sizing,
        budget: u64,
        from: String,
    ) -> Result<Option<Self::Plan>>;
    /// `cand` planned as `p`, measured against `base`'s original on its
    /// held-out windows.
    fn measure(
        &self,
        base: &Setup,
        cand: &Setup,
        p: &Self::Plan,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Result<TextAccuracy>;
}

/// GGUF builds: every tensor among its ggml types, by `plan::allocate`.
pub struct Gguf<'a> {
    /// The unpruned plan (its ceiling is carried over).
    pub unpruned: &'a Chosen,
}

impl Family for Gguf<'_> {
    type Plan = Chosen;

    fn gguf(&self) -> bool {
        true
    }

    fn size(&self, p: &Chosen) -> (u64, f64) {
        (p.allocation.bytes, p.allocation.error)
    }

    fn cost(
        &self,
        setup: &Setup,
        s: &Sizing,
        p: Option<&Chosen>,
    ) -> Result<passes::cost::Estimate> {
        let types = match p {
            Some(c) => solve::types_of_allocation(setup, &c.allocation),
            None => any_types(setup),
        };
        costed(setup, s, &types)
    }

    fn allocate(
        &self,
        setup: &Setup,
        _: &Sizing,
        budget: u64,
        from: String,
    ) -> Result<Option<Chosen>> {
        Ok(
            plan::allocate(&setup.options, budget).map(|allocation| Chosen {
                allocation,
                budget: Budget {
                    devices: 1,
                    file_bytes: budget + setup.overhead_bytes,
                    tensor_bytes: budget,
                    from,
                    source: "pruning_same_memory",
                    memory: None,
                },
                ceiling: self.unpruned.ceiling.clone(),
            }),
        )
    }

    fn measure(
        &self,
        base: &Setup,
        cand: &Setup,
        p: &Chosen,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Result<TextAccuracy> {
        let types = solve::types_of_allocation(cand, &p.allocation);
        measure_against(base, cand, &types, progress, cancel)
    }
}

pub const RULE: &str = "each option gets the unpruned plan's budget (its tensor bytes; with a budget from the target's memory, plus the KV cache the pruning saves at the requested context and concurrency, so that weights and KV cache take the same memory), is allocated by the same search, and is measured against the unpruned original on the held-out windows; a pruning is chosen only when its measured mean KL divergence is lower";

/// Refuse candidates that cannot be weighed, before any work.
pub fn check(o: &PlanOptions) -> Result<()> {
    if !o.prune_candidates.is_empty() && o.text.is_none() {
        return Err(Error::Options(
            "--prune-candidates: pruning options are chosen by KL divergence measured on held-out text, and calibrated on it (block influence, Wanda's activations): give --text".into(),
        ));
    }
    Ok(())
}

/// Refuse a named `--prune-candidates` option the model cannot take (a
/// layer it does not have, every layer, a KV head count the runtime cannot
/// serve, KV groups of a qwen2/phi3 GGUF, an MoE FFN...) as soon as the
/// model is open: the passes' own checks, which read no tensor data, so the
/// error comes before the imatrix, the probes and the measurements.
pub fn check_named(model: &passes::Model, o: &PlanOptions) -> Result<()> {
    let Some(arch) = model
        .arch
        .as_ref()
        .filter(|_| !o.prune_candidates.is_empty())
    else {
        return Ok(());
    };
    let gguf = crate::options::any_engine(o)? == passes::cost::Engine::LlamaCpp;
    for (spec, _) in o
        .prune_candidates
        .expand(arch)
        .iter()
        .filter(|(_, named)| *named)
    {
        passes::passes::prune::check_spec(spec, model, gguf).map_err(|e| {
            Error::Options(format!(
                "--prune-candidates `{}`: {e}",
                passes::printable(&spec.to_spec_string())
            ))
        })?;
    }
    Ok(())
}

/// The arch-derived columns of an option.
fn shape_of(a: &passes::Arch, params: u64) -> (usize, usize, usize, u64) {
    (a.n_layer, a.n_head_kv, a.ffn, params)
}

/// Apply `spec` (layers resolved) to a fresh copy of the model at `path`:
/// the pruned model as an opened model, and the passes' lines.
fn apply(
    base: &Setup,
    o: &PlanOptions,
    spec: &PruneSpec,
    layers: Option<Vec<usize>>,
    gguf: bool,
) -> Result<(Opened, Applied)> {
    let path = &base.opened.path;
    let mut loaded = formats::load(path, &load_options(&o.pre_tokenizer))?;
    let scratch = Arc::new(Mutex::new(Scratch::default()));
    let activations = Some(base.importance.clone()).filter(|m| !m.is_empty());
    let mut passes: Vec<Box<dyn Pass + Send + Sync>> = Vec::new();
    if let Some(sel) = &spec.kv {
        passes.push(Box::new(DropKvGroups {
            sel: sel.clone(),
            tp: spec.tp,
            activations: activations.clone(),
            scratch: scratch.clone(),
            gguf,
        }));
    }
    if let Some(ratio) = spec.ffn {
        passes.push(Box::new(NarrowFfn {
            ratio,
            activations: activations.clone(),
            scratch: scratch.clone(),
        }));
    }
    let mut resolved = spec.clone();
    if let Some(v) = layers {
        resolved.layers = Some(LayerSel::Named(v.clone()));
        passes.push(Box::new(DropLayers {
            layers: v,
            scratch: scratch.clone(),
            how: match spec.layers {
                Some(LayerSel::Auto(_)) => {
                    "lowest ShortGPT block influence on the calibration text".into()
                }
                _ => "as named".into(),
            },
        }));
    }
    let times = Pipeline::prune(passes).run(
        &mut loaded.model,
        &Context::with_reader(&Rows(&loaded.maps)),
    )?;
    let mut s = scratch.lock().expect("scratch lock");
    if let Some(file) = s.file {
        if file != loaded.maps.len() || loaded.model.files.len() != loaded.maps.len() + 1 {
            return Err(Error::Input(format!(
                "internal: pruned tensors file {file} with {} maps",
                loaded.maps.len()
            )));
        }
        loaded.maps.push(MappedFile::computed(s.take_bytes()));
    }
    let resolved = resolved.to_spec_string();
    loaded
        .model
        .metadata
        .set("kiln.prune", passes::MetaValue::String(resolved.clone()));
    let applied = Applied {
        summary: s.summary.clone(),
        resolved,
        layer_map: s.layer_map.clone(),
    };
    drop(s);
    Ok((
        Opened {
            path: path.clone(),
            loaded,
            passes: times,
        },
        applied,
    ))
}

/// What a pruning did: its passes' lines, the spec as applied, the layer map.
struct Applied {
    summary: Vec<String>,
    resolved: String,
    layer_map: Vec<Option<usize>>,
}

/// `types` of `cand` measured against `base`'s original on its held-out windows.
fn measure_against(
    base: &Setup,
    cand: &Setup,
    types: &BTreeMap<String, GgmlType>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<TextAccuracy> {
    let rt = Roundtrip {
        base: &cand.opened,
        types: cand
            .measured
            .iter()
            .map(|m| (m.name.clone(), types[&m.name]))
            .collect(),
        importance: &cand.importance,
    };
    rt.check()?;
    progress.start(
        "measuring pruned plan",
        base.arch.n_layer as u64 + 1,
        Unit::Items("blocks"),
    );
    let r = eval::stream::evaluate(
        &base.opened,
        Some(&rt),
        &base.eval_windows,
        &positions(progress),
        cancel,
    );
    progress.finish();
    let r = r?;
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
        windows: base.eval_windows.len(),
    })
}

/// The cost model's figures of `setup` with `types`.
fn costed(
    setup: &Setup,
    s: &Sizing,
    types: &BTreeMap<String, GgmlType>,
) -> Result<passes::cost::Estimate> {
    let m = solve::typed(setup, types)?;
    serving::cost(&m, &setup.arch, s.target, s.engine, s.workload, 1)
}

/// Every tensor in its first (largest) choice: a type table for costing
/// what does not depend on the types (the KV cache).
fn any_types(setup: &Setup) -> BTreeMap<String, GgmlType> {
    setup
        .options
        .iter()
        .map(|o| (o.name.clone(), o.choices[0].ty))
        .collect()
}

/// Weigh the pruning options of `s.options.prune_candidates` against the
/// unpruned GGUF plan `chosen` (measured at `measured`).
pub fn weigh(
    setup: &Setup,
    s: &Sizing,
    chosen: &Chosen,
    measured: &TextAccuracy,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Option<Weighed>> {
    let budget = Unpruned {
        devices: chosen.budget.devices,
        source: chosen.budget.source,
        from: &chosen.budget.from,
    };
    weigh_family(
        &Gguf { unpruned: chosen },
        setup,
        s,
        chosen,
        budget,
        measured,
        progress,
        cancel,
    )
}

/// Where the unpruned plan's budget came from.
pub struct Unpruned<'a> {
    /// Devices it is sharded across (pruning is weighed on one only).
    pub devices: usize,
    /// `target_memory`: the target's memory (then the KV cache a pruning
    /// saves goes to its tensors); else an explicit size.
    pub source: &'a str,
    pub from: &'a str,
}

/// Weigh the pruning options of `s.options.prune_candidates` against the
/// unpruned plan `chosen` of `family` (measured at `measured`).
#[allow(clippy::too_many_arguments)]
pub fn weigh_family<F: Family>(
    family: &F,
    setup: &Setup,
    s: &Sizing,
    chosen: &F::Plan,
    budget: Unpruned<'_>,
    measured: &TextAccuracy,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Option<Weighed<F::Plan>>> {
    let c = &s.options.prune_candidates;
    if c.is_empty() {
        return Ok(None);
    }
    check(s.options)?;
    let est = family.cost(setup, s, Some(chosen))?;
    let (chosen_bytes, chosen_error) = family.size(chosen);
    let (n_layer, n_head_kv, ffn, params) = shape_of(&setup.arch, setup.params());
    let mut options = vec![PruneOption {
        spec: "none".into(),
        resolved: None,
        not_applicable: None,
        n_layer,
        n_head_kv,
        ffn,
        parameters: params,
        budget_tensor_bytes: chosen_bytes,
        tensor_bytes: Some(chosen_bytes),
        bits_per_weight: Some(setup.bpw(chosen_bytes)),
        kv_bytes_per_token: est.kv_bytes_per_token,
        kv_cache_bytes: est.kv_bytes,
        memory_per_device_bytes: Some(est.memory_per_device_bytes),
        fits: est.fits,
        max_batch: est.max_batch,
        decode_tokens_per_second: est.decode_tokens_per_second.central,
        usd_per_million_tokens: est.usd_per_million_tokens.central,
        predicted_kld_of_quantization: Some(chosen_error),
        measured: Some(crate::manifest::Text::of(measured)),
        chosen: true,
    }];
    let candidates = c.expand(&setup.arch);
    let sharded = budget.devices > 1;
    let influence = if !sharded
        && candidates
            .iter()
            .any(|(p, _)| matches!(p.layers, Some(LayerSel::Auto(_))))
    {
        progress.start(
            "block influence",
            setup.arch.n_layer as u64,
            Unit::Items("blocks"),
        );
        let r = eval::prune::block_influence(&setup.opened, &setup.calib, cancel);
        progress.finish();
        r?
    } else {
        Vec::new()
    };
    let mut best: Option<Pruned<F::Plan>> = None;
    let mut best_kld = measured.kld;
    let pruned_options = PlanOptions {
        imatrix: None,
        ..s.options.clone()
    };
    for (spec, named) in candidates {
        let label = spec.to_spec_string();
        let mut row = PruneOption {
            spec: label.clone(),
            resolved: None,
            not_applicable: None,
            n_layer,
            n_head_kv,
            ffn,
            parameters: params,
            budget_tensor_bytes: 0,
            tensor_bytes: None,
            bits_per_weight: None,
            kv_bytes_per_token: 0,
            kv_cache_bytes: 0,
            memory_per_device_bytes: None,
            fits: None,
            max_batch: None,
            decode_tokens_per_second: None,
            usd_per_million_tokens: None,
            predicted_kld_of_quantization: None,
            measured: None,
            chosen: false,
        };
        let skip = |row: &mut PruneOption, why: String| -> Result<()> {
            if named {
                return Err(Error::Options(format!(
                    "--prune-candidates `{}`: {why}",
                    passes::printable(&label)
                )));
            }
            row.not_applicable = Some(why);
            Ok(())
        };
        if sharded {
            skip(
                &mut row,
                format!(
                    "the plan is sharded across {} devices; pruning is weighed on one device only",
                    budget.devices
                ),
            )?;
            options.push(row);
            continue;
        }
        let layers = match &spec.layers {
            Some(LayerSel::Auto(n)) => {
                if *n >= setup.arch.n_layer {
                    skip(
                        &mut row,
                        format!(
                            "removing {n} of {} layers leaves no layer",
                            setup.arch.n_layer
                        ),
                    )?;
                    options.push(row);
                    continue;
                }
                Some(
                    eval::prune::Calibration {
                        block_influence: influence.clone(),
                        ..Default::default()
                    }
                    .least_influential(*n),
                )
            }
            Some(LayerSel::Named(v)) => Some(v.clone()),
            None => None,
        };
        let (opened, applied) = match apply(setup, s.options, &spec, layers, family.gguf()) {
            Ok(x) => x,
            Err(Error::Pass(e)) => {
                skip(&mut row, e.to_string())?;
                options.push(row);
                continue;
            }
            Err(e) => return Err(e),
        };
        let resolved = applied.resolved.clone();
        row.resolved = Some(resolved.clone());
        let arch =
            opened.loaded.model.arch.clone().ok_or_else(|| {
                Error::Input("internal: the pruned model has no architecture".into())
            })?;
        let ps = setup_opened(
            &setup.opened.path,
            opened,
            arch,
            &pruned_options,
            Texts {
                calib: setup.calib.clone(),
                eval_windows: setup.eval_windows.clone(),
                eval_text: setup.eval_text.clone(),
            },
            Vec::new(),
            progress,
            cancel,
        )?;
        let (nl, nkv, nffn, np) = shape_of(&ps.arch, ps.params());
        (row.n_layer, row.n_head_kv, row.ffn, row.parameters) = (nl, nkv, nffn, np);
        let est0 = family.cost(&ps, s, None)?;
        // The same budget: a memory budget (the target's) gets back the KV
        // cache the pruning saves; an explicit file size (--bpw,
        // --budget-gb) stays what it is.
        let saved = match budget.source {
            "target_memory" => est.kv_bytes.saturating_sub(est0.kv_bytes),
            _ => 0,
        };
        let tensor_budget = chosen_bytes + saved;
        row.budget_tensor_bytes = tensor_budget;
        row.kv_bytes_per_token = est0.kv_bytes_per_token;
        row.kv_cache_bytes = est0.kv_bytes;
        let from = format!(
            "the unpruned plan's budget: its {} of tensors plus the {} of KV cache pruning `{}` saves ({})",
            formats::human::bytes(chosen_bytes),
            formats::human::bytes(saved),
            resolved,
            budget.from
        );
        let Some(a) = family.allocate(&ps, s, tensor_budget, from)? else {
            skip(
                &mut row,
                format!(
                    "no allocation of the pruned model fits {} of tensors",
                    formats::human::bytes(tensor_budget)
                ),
            )?;
            options.push(row);
            continue;
        };
        let (a_bytes, a_error) = family.size(&a);
        let pest = family.cost(&ps, s, Some(&a))?;
        let m = family.measure(setup, &ps, &a, progress, cancel)?;
        row.tensor_bytes = Some(a_bytes);
        row.bits_per_weight = Some(ps.bpw(a_bytes));
        row.memory_per_device_bytes = Some(pest.memory_per_device_bytes);
        row.fits = pest.fits;
        row.max_batch = pest.max_batch;
        row.decode_tokens_per_second = pest.decode_tokens_per_second.central;
        row.usd_per_million_tokens = pest.usd_per_million_tokens.central;
        row.predicted_kld_of_quantization = Some(a_error);
        row.measured = Some(crate::manifest::Text::of(&m));
        options.push(row);
        if m.kld < best_kld {
            best_kld = m.kld;
            best = Some(Pruned {
                chosen: a,
                setup: ps,
                resolved,
                measured: m,
                summary: applied.summary,
                layer_map: applied.layer_map,
            });
        }
    }
    let picked = best.as_ref().map(|b| b.resolved.clone());
    for o in &mut options {
        o.chosen = match &picked {
            None => o.spec == "none",
            Some(r) => o.resolved.as_ref() == Some(r) && o.spec != "none",
        };
    }
    // Two proposals resolving to the same pruning are both marked: keep the first.
    let mut seen = false;
    for o in &mut options {
        if o.chosen {
            o.chosen = !seen;
            seen = true;
        }
    }
    Ok(Some(Weighed {
        record: Pruning {
            candidates: c.describe(),
            rule: RULE.into(),
            options,
            chosen: picked,
            passes: best.as_ref().map(|b| b.summary.clone()).unwrap_or_default(),
        },
        pruned: best,
    }))
}

/// The report section: every option weighed, the built one marked.
pub fn report_section(p: &Pruning) -> String {
    use formats::human::{bytes, num, sig};
    let cell = |v: Option<f64>| v.map_or("-".to_string(), num);
    let mut s = format!(
        "\n## Pruning weighed with quantization\n\nCandidates: `--prune-candidates {}`. Rule: {}. Measured KLD, PPL ratio and top-1 are against the unpruned original; the predicted KLD is the quantization's alone, against the pruned model.\n\n| pruning | applied as | layers | KV heads | FFN | tensor size | bpw | KV per token | KV cache | fits | max batch | tokens/s | $/Mtok | pred. KLD (quant.) | measured KLD | PPL ratio | top-1 | built |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|:-:|\n",
        p.candidates, p.rule
    );
    for o in &p.options {
        if let Some(why) = &o.not_applicable {
            s += &format!(
                "| {} | not weighed: {} | | | | | | | | | | | | | | | | |\n",
                o.spec,
                passes::printable(why)
            );
            continue;
        }
        let m = o.measured.as_ref();
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            o.spec,
            o.resolved.as_deref().unwrap_or("-"),
            o.n_layer,
            o.n_head_kv,
            o.ffn,
            o.tensor_bytes.map_or("-".into(), bytes),
            o.bits_per_weight.map_or("-".into(), |b| sig(b, 3)),
            bytes(o.kv_bytes_per_token),
            bytes(o.kv_cache_bytes),
            match o.fits {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            },
            o.max_batch.map_or("-".into(), |b| b.to_string()),
            cell(o.decode_tokens_per_second),
            cell(o.usd_per_million_tokens),
            cell(o.predicted_kld_of_quantization),
            cell(m.and_then(|t| t.kld_mean)),
            cell(m.and_then(|t| t.perplexity_ratio)),
            m.and_then(|t| t.top1_agreement)
                .map_or("-".into(), |t| format!("{}%", sig(t * 100.0, 4))),
            if o.chosen { "yes" } else { "" }
        );
    }
    match &p.chosen {
        Some(r) => {
            s += &format!("\nBuilt with pruning `{r}` (the pruning alone, unquantized: `kiln convert MODEL --prune '{r}' --type F16 -o pruned.gguf`):\n\n");
            for l in &p.passes {
                s += &format!("- {}\n", passes::printable(l));
            }
        }
        None => s += "\nNo pruning measured better than the unpruned plan at the same memory: the artifact is not pruned.\n",
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_parse_and_expand() {
        let c = PruneCandidates::parse(&["auto".into(), "ffn=0.5".into()]).unwrap();
        assert!(c.auto);
        let a = passes::Arch {
            n_layer: 30,
            n_head_kv: 3,
            ..Default::default()
        };
        let specs: Vec<String> = c
            .expand(&a)
            .iter()
            .map(|(s, _)| s.to_spec_string())
            .collect();
        assert_eq!(
            specs,
            [
                "layers=auto:1",
                "layers=auto:2",
                "ffn=0.9",
                "ffn=0.75",
                "kv-groups=1",
                "ffn=0.5"
            ]
        );
        let named: Vec<bool> = c.expand(&a).iter().map(|(_, n)| *n).collect();
        assert_eq!(named, [false, false, false, false, false, true]);
        // Two layers: one may go; one KV head: no KV candidate.
        let a = passes::Arch {
            n_layer: 2,
            n_head_kv: 1,
            ..Default::default()
        };
        let c = PruneCandidates::parse(&["auto".into(), "ffn=0.9".into()]).unwrap();
        let e = c.expand(&a);
        let specs: Vec<String> = e.iter().map(|(s, _)| s.to_spec_string()).collect();
        assert_eq!(specs, ["layers=auto:1", "ffn=0.9", "ffn=0.75"]);
        assert!(e[1].1, "named by the user too");
        assert!(PruneCandidates::parse(&["none".into()]).unwrap().is_empty());
        assert!(PruneCandidates::parse(&["none".into(), "auto".into()]).is_err());
        let e = PruneCandidates::parse(&["ffn=1.5".into()]).unwrap_err();
        assert!(e.contains("--prune-candidates `ffn=1.5`"), "{e}");
    }
}
