//! kiln's planner: the product's core as a library. Given a model and plain
//! options it measures every quantizable tensor in every candidate encoding
//! (`setup`), sets how much each unit of error costs in KL divergence
//! (`sensitivity`: probed on a text, or priors by role), sizes the byte
//! budget from a target and searches the fewest devices that hold the plan
//! (`solve`), puts the plan beside llama.cpp's recipes (`compare`), measures
//! text accuracy (`accuracy`), and writes a build's artifact with its typed
//! manifest (`manifest`), report and chart (`report`, `build`).
//!
//! What must stay true: it never prints (progress goes through
//! [`Progress`], warnings are data); it does not know about command-line
//! parsing; every output is deterministic for the same inputs and options,
//! whatever the thread count; calls into the cost model and the writer are
//! each kept in one module (`serving`, `layout`).

pub mod accuracy;
pub mod build;
pub mod choose;
pub mod compare;
pub mod ct_build;
pub mod ct_gptq;
mod ct_measure;
pub mod ct_prune;
mod ct_report;
pub mod error;
pub mod estimate;
pub mod gptq;
pub mod layout;
pub mod manifest;
pub mod options;
pub mod progress;
pub mod prune;
pub mod report;
pub mod sensitivity;
pub mod serving;
pub mod setup;
pub mod solve;
pub mod targets;

#[cfg(test)]
mod tests;

pub use accuracy::{Measurer, TextAccuracy};
pub use build::{build, BuildOptions, Built};
pub use compare::{plan_targets, Row, TargetPlan, COMPARED};
pub use error::{Error, Result};
pub use manifest::{Manifest, SCHEMA_VERSION};
pub use options::{Objective, PlanOptions};
pub use progress::{Progress, Silent, Unit};
pub use setup::{setup, to_imatrix, ImportanceSource, Setup, CANDIDATES};
pub use solve::{solve, Budget, Chosen, Sizing};
