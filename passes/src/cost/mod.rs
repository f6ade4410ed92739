//! The serving-cost model: accelerator target profiles, weight formats and
//! their bytes, the roofline-plus-calibration estimate, and its calibration.
//!
//! What must stay true: this module knows nothing about files (profiles and
//! calibration are compiled in or handed over as text); every figure it
//! reports is either computed from stated inputs or `None` with a note
//! saying which input is unknown; the calibration shipped in
//! `calibration.toml` is the output of the fit in `fit.rs` over
//! `bench/calibration/measured-calibration.csv`, checked by tests.

pub mod calibration;
pub mod coverage;
pub mod estimate;
pub mod host;
pub mod schemes;
pub mod target;
pub mod weights;

#[cfg(test)]
mod crossval;
#[cfg(test)]
mod fit;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_model;

pub use calibration::{Calibration, Engine, EngineClass, EngineVersion, Factors, Validated};
pub use estimate::{
    estimate, weight_budget, Band, Batch, Estimate, KvType, MemoryBudget, ModelCost, Workload,
};
pub use schemes::CtScheme;
pub use target::{builtin, find_builtin, DeviceClass, Figure, Origin, Precision, Target};
pub use weights::{weight_bytes, Recipe, ServingFormat, WeightBytes, WeightFormat};

/// What can go wrong in the cost model.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error("target profile {what}: {msg}")]
    BadTarget { what: String, msg: String },
    /// `hint` is a "did you mean" or empty.
    #[error("unknown target `{id}`{hint}: `kiln targets` lists the {count} known ids")]
    UnknownTarget {
        id: String,
        hint: String,
        count: usize,
    },
    /// `known` is the short list of accepted names.
    #[error("unknown weight type `{name}`{hint} (known: {known})")]
    UnknownType {
        name: String,
        hint: String,
        known: String,
    },
    #[error("calibration: {0}")]
    BadCalibration(String),
    #[error("{0}")]
    BadWorkload(String),
}
