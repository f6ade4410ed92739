//! The planner's one door to the cost model: the architecture's shape, the
//! memory budget on a target, and the serving estimate of a planned model.
//!
//! What must stay true: every use of `passes::cost::Shape` and
//! `specs_from_model` by the planner is in this file (the cost model's
//! architecture types are being replaced; the change stays here).

use passes::cost::{
    estimate, specs_from_model, weight_budget, weight_bytes, Calibration, Engine, Estimate,
    MemoryBudget, ModelCost, Target, WeightFormat, Workload,
};
use passes::{Arch, Model};

use crate::error::Result;

pub use passes::cost::Shape;

/// The cost model's view of an architecture.
pub fn shape(arch: &Arch) -> Shape {
    Shape::from_arch(arch)
}

/// Memory left for weights on `devices` devices of `target` (None when the
/// target's memory is not published).
pub fn memory_budget(
    shape: &Shape,
    target: &Target,
    engine: Engine,
    w: &Workload,
    devices: usize,
) -> Option<MemoryBudget> {
    weight_budget(shape, target, engine, w, devices)
}

/// Serving estimate of a planned model on `devices` devices.
pub fn cost(
    model: &Model,
    shape: &Shape,
    target: &Target,
    engine: Engine,
    w: &Workload,
    devices: usize,
) -> Result<Estimate> {
    let specs = specs_from_model(model);
    let wb = weight_bytes(&specs, shape, WeightFormat::Planned);
    let cal = Calibration::shipped()?;
    let w = Workload {
        devices: Some(devices),
        tensor_parallel: Some(devices),
        ..w.clone()
    };
    Ok(estimate(
        ModelCost {
            shape,
            weights: &wb,
            format: WeightFormat::Planned,
        },
        target,
        engine,
        &w,
        &cal,
    )?)
}
