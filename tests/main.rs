//! kiln's integration tests: one test binary, one module per area. They run
//! the real `kiln` binary the way a user does and check exit codes, stdout,
//! stderr and the files left behind.

mod build;
mod chart_png;
mod ci;
mod common;
mod convert;
mod ct_read;
mod ct_targets;
mod estimate;
mod eval;
mod fidelity;
mod gptq;
mod hostile;
mod limits;
mod prune_ct;
#[cfg(unix)]
mod safety;
mod snapshots;
mod tidy;
