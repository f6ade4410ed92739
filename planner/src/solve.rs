//! Budget and device search: size the byte budget from the options or the
//! target (memory minus KV cache and the engine's overhead), and solve the
//! allocation (`passes::plan`) on the fewest devices (1, 2, 4, ... 64) where
//! it fits with at least `min_bpw` bits per weight; score any type table
//! (a recipe's, a plan's) with the same measurements.
//!
//! What must stay true: whole tensors go to one device each, so on several
//! devices the plan is shrunk until its files can be cut within each
//! device's share; a `--bpw` budget is an explicit size and is taken even
//! below `min_bpw`; a refusal says, for the last device count tried, why.

use std::collections::BTreeMap;

use passes::cost::{Engine, MemoryBudget, Target, Workload};
use passes::passes::assign::AssignTypes;
use passes::passes::recipe::{self, ApplyRecipe, RecipeOptions};
use passes::passes::{Context, PassTiming, Pipeline};
use passes::plan::{self, Allocation};
use passes::{Model, TensorNode};
use quant::GgmlType;

use crate::error::{Error, Result};
use crate::layout;
use crate::options::{Objective, PlanOptions};
use crate::setup::Setup;

/// Exact bytes of a tensor in a type (0 when the type does not divide its rows).
pub fn tensor_bytes(ty: GgmlType, t: &TensorNode) -> u64 {
    ty.row_bytes(t.row_len())
        .map_or(0, |b| b as u64 * t.n_rows() as u64)
}

/// The model's tensors and architecture, without its metadata (a tokenizer
/// is ~100k strings): what a pass needs to choose types for sizing and costing.
fn bare(m: &Model) -> Model {
    Model {
        files: m.files.clone(),
        arch: m.arch.clone(),
        tensors: m.tensors.clone(),
        ..Model::default()
    }
}

/// The types of every tensor of a planned model.
pub fn types_of(m: &Model) -> BTreeMap<String, GgmlType> {
    m.tensors
        .iter()
        .map(|t| (t.name.clone(), t.ggml_type().expect("planned")))
        .collect()
}

/// The type table of an allocation.
pub fn types_of_allocation(setup: &Setup, a: &Allocation) -> BTreeMap<String, GgmlType> {
    a.types(&setup.options)
        .map(|(n, t)| (n.to_string(), t))
        .collect()
}

/// The model (without metadata) as a llama.cpp recipe plans it (as `kiln convert --type`).
pub fn recipe_model(setup: &Setup, name: &str, allow_requantize: bool) -> Result<Model> {
    let r = recipe::parse_recipe(name).map_err(Error::Options)?;
    let apply = ApplyRecipe::new(
        r,
        RecipeOptions {
            imatrix_present: !setup.importance.is_empty(),
            allow_requantize,
            dry_run: true,
            ..RecipeOptions::default()
        },
    )
    .map_err(Error::Options)?;
    let mut m = bare(&setup.opened.loaded.model);
    Pipeline::size(apply).run(&mut m, &Context::default())?;
    Ok(m)
}

/// Bytes and predicted error of a full type table; `None` for an error
/// when a type was not measured for its tensor (then only bytes are known).
pub fn score(setup: &Setup, types: &BTreeMap<String, GgmlType>) -> (u64, Option<f64>) {
    let mut bytes = 0;
    let mut err = Some(0.0);
    for t in &setup.opened.loaded.model.tensors {
        let ty = types[&t.name];
        bytes += tensor_bytes(ty, t);
        let Some(m) = setup.measured(&t.name) else {
            continue;
        };
        match m.candidates.iter().find(|c| c.ty == ty) {
            Some(c) => err = err.map(|e| e + setup.sensitivity[&t.name] * c.nsr),
            None => err = None,
        }
    }
    (bytes, err)
}

/// How the budget was set.
#[derive(Debug, Clone)]
pub struct Budget {
    pub devices: usize,
    /// Bytes of model file(s) allowed in total.
    pub file_bytes: u64,
    /// Bytes left for tensor data after the header and padding.
    pub tensor_bytes: u64,
    /// How it was set, in words.
    pub from: String,
    /// What set it: `budget_gb`, `bpw` or `target_memory`.
    pub source: &'static str,
    pub memory: Option<MemoryBudget>,
}

/// What a budget is sized by: the figures of [`budget`] apart from the setup.
pub struct Sizing<'a> {
    pub options: &'a PlanOptions,
    pub target: &'a Target,
    pub engine: Engine,
    pub workload: &'a Workload,
}

/// The budget on `devices` devices.
pub fn budget(setup: &Setup, s: &Sizing, devices: usize) -> Result<Budget> {
    let o = s.options;
    let params = setup.params();
    use formats::human::{bytes, count};
    let (file_bytes, from, source, memory) = if let Some(gb) = o.budget_gb {
        (
            (gb * 1e9 * devices as f64) as u64,
            if devices > 1 {
                format!("{devices} devices x --budget-gb {gb}")
            } else {
                format!("--budget-gb {gb}")
            },
            "budget_gb",
            None,
        )
    } else if let Some(b) = o.bpw {
        (
            (b * params as f64 / 8.0) as u64,
            format!("--bpw {b} x {} parameters", count(params)),
            "bpw",
            None,
        )
    } else {
        let mb = passes::cost::weight_budget(&setup.arch, s.target, s.engine, s.workload, devices)
            .ok_or_else(|| {
                Error::Options(format!(
                    "the memory of `{}` is unknown: give --budget-gb or --bpw",
                    s.target.id
                ))
            })?;
        (
            mb.weights,
            format!(
                "{} x {}: usable {} each, minus KV cache {} ({} x {} tokens, {}) and overhead {}",
                devices,
                s.target.id,
                bytes(mb.usable_per_device),
                bytes(mb.kv_per_device),
                o.concurrency,
                count(s.workload.context.unwrap_or(0) as u64),
                s.workload.kv_type.name(),
                bytes(mb.overhead_per_device)
            ),
            "target_memory",
            Some(mb),
        )
    };
    let overhead = setup.overhead_bytes * devices as u64;
    Ok(Budget {
        devices,
        file_bytes,
        tensor_bytes: file_bytes.saturating_sub(overhead),
        from,
        source,
        memory,
    })
}

/// The chosen allocation and where it runs.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub allocation: Allocation,
    pub budget: Budget,
    /// Error ceiling used by the cost objective, and what it came from.
    pub ceiling: Option<(f64, String)>,
}

/// Bytes of each tensor under an allocation, in model order.
pub fn sizes_of(setup: &Setup, a: &Allocation) -> Vec<u64> {
    setup
        .options
        .iter()
        .zip(&a.pick)
        .map(|(o, &p)| o.choices[p].bytes)
        .collect()
}

/// The error ceiling of the cost objective: `max_error`, or the predicted
/// error of llama.cpp's Q4_K_M on this model.
fn ceiling(
    setup: &Setup,
    o: &PlanOptions,
    objective: Objective,
    max_error: Option<f64>,
) -> Result<Option<(f64, String)>> {
    Ok(match objective {
        Objective::Accuracy => None,
        Objective::Cost => Some(match max_error {
            Some(e) => (e, format!("--max-error {e}")),
            None => {
                let types = types_of(&recipe_model(setup, "Q4_K_M", o.allow_requantize)?);
                let (_, e) = score(setup, &types);
                (
                    e.ok_or_else(|| {
                        Error::Input("Q4_K_M uses a type that was not measured".into())
                    })?,
                    "the predicted error of llama.cpp's Q4_K_M on this model".into(),
                )
            }
        }),
    })
}

/// Solve: the fewest devices (1, 2, 4, ... 64) on which the plan fits with at
/// least `min_bpw` bits per weight on average.
pub fn solve(
    setup: &Setup,
    s: &Sizing,
    objective: Objective,
    max_error: Option<f64>,
) -> Result<Chosen> {
    use formats::human::bytes;
    let o = s.options;
    let params = setup.params().max(1);
    let ceiling = ceiling(setup, o, objective, max_error)?;
    let max_devices = if o.bpw.is_some() { 1 } else { 64 };
    let mut last_err = String::new();
    let mut n = 1;
    while n <= max_devices {
        let b = budget(setup, s, n)?;
        // The default ceiling (no --max-error) is a target, not a demand: a
        // budget that cannot reach it gets the least error that fits.
        let solve_at = |bytes: u64| match &ceiling {
            None => plan::allocate(&setup.options, bytes),
            Some((e, _)) if max_error.is_none() => plan::cheapest_within(&setup.options, *e, bytes)
                .or_else(|| plan::allocate(&setup.options, bytes)),
            Some((e, _)) => plan::cheapest_within(&setup.options, *e, bytes),
        };
        let mut a = solve_at(b.tensor_bytes);
        // Whole tensors go to one device each: shrink the total until the
        // files can be cut so that every device holds at most its share.
        if n > 1 {
            let cap = b.tensor_bytes / n as u64;
            let mut total = b.tensor_bytes;
            for _ in 0..32 {
                let Some(x) = &a else { break };
                if layout::cut(&sizes_of(setup, x), n, cap).is_some() {
                    break;
                }
                total -= (total / 64).max(1);
                a = solve_at(total);
            }
            if a.as_ref()
                .is_some_and(|x| layout::cut(&sizes_of(setup, x), n, cap).is_none())
            {
                a = None;
            }
        }
        match a {
            Some(_) if n > setup.options.len() => {
                last_err = format!(
                    "{n} devices: more than the model's {} tensors, which are not split across devices",
                    setup.options.len()
                );
                break;
            }
            // --bpw is an explicit size: take it even below --min-bpw.
            Some(a) if a.bytes as f64 * 8.0 / params as f64 >= o.min_bpw || o.bpw.is_some() => {
                let ceiling = ceiling.map(|(e, what)| {
                    if a.error > e {
                        (e, format!("{what}; not reachable within the budget, so the least predicted error that fits"))
                    } else {
                        (e, what)
                    }
                });
                return Ok(Chosen {
                    allocation: a,
                    budget: b,
                    ceiling,
                });
            }
            Some(a) => {
                last_err = format!(
                    "{} device(s): {:.2} bits per weight, below --min-bpw {}",
                    n,
                    a.bytes as f64 * 8.0 / params as f64,
                    o.min_bpw
                )
            }
            None => {
                last_err = match &ceiling {
                    Some((e, what)) if plan::min_bytes(&setup.options) <= b.tensor_bytes => format!(
                        "{} device(s): no allocation within {} reaches the error ceiling {} ({what})",
                        n,
                        bytes(b.tensor_bytes),
                        formats::human::num(*e)
                    ),
                    _ => format!(
                        "{} device(s): {} of budget for tensors (after headers), the smallest allocation needs {}{}",
                        n,
                        bytes(b.tensor_bytes),
                        bytes(plan::min_bytes(&setup.options)),
                        if n > 1 { " cut into whole tensors per device" } else { "" }
                    ),
                }
            }
        }
        n *= 2;
    }
    Err(Error::NoPlan(last_err))
}

/// The model (without metadata) with these types assigned: for costing.
pub fn typed(setup: &Setup, types: &BTreeMap<String, GgmlType>) -> Result<Model> {
    let mut m = bare(&setup.opened.loaded.model);
    let pass = AssignTypes {
        types: types.clone(),
        allow_requantize: true,
    };
    Pipeline::assign(pass, None).run(&mut m, &Context::default())?;
    Ok(m)
}

/// The model with these types assigned (and the imatrix keys when one was
/// used), and the `assign` pipeline's pass timings.
pub fn assigned(
    setup: &Setup,
    types: &BTreeMap<String, GgmlType>,
    allow_requantize: bool,
) -> Result<(Model, Vec<PassTiming>)> {
    let mut m = setup.opened.loaded.model.clone();
    let pass = AssignTypes {
        types: types.clone(),
        allow_requantize,
    };
    let times = Pipeline::assign(pass, None).run(&mut m, &Context::default())?;
    if let Some((arg, im)) = &setup.imatrix {
        if !im.entries.is_empty() {
            m.metadata
                .0
                .extend(formats::imatrix::quantize_metadata(arg, im));
        }
    }
    Ok((m, times))
}
