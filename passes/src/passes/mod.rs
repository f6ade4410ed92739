//! The pass manager: every pass is a small named unit in its own file,
//! listed in [`REGISTRY`], run by a named [`Pipeline`] (see `pipeline.rs`),
//! timed, and followed by the verifier after every pass.
//!
//! A pass gets a [`Context`]: a [`TensorReader`] for the tensors' values
//! (decoded from the source, with the node's transform applied), so passes
//! that depend on the data (pruning, error-compensating rounding) are passes
//! like any other; importance data lives on the model (`Model::importance`,
//! attached by the `importance` pass).
//!
//! What must stay true: every pass's `name()` is in [`REGISTRY`]; the
//! verifier runs after each pass (it is linear in the tensor count, so it
//! runs in release builds too); a failing pass leaves an error naming the
//! pass, and the tensor where there is one.

use std::time::{Duration, Instant};

use crate::error::PassError;
use crate::ir::{Model, TensorNode};

pub mod assign;
pub mod importance;
pub mod layout;
pub mod normalize;
pub mod pipeline;
pub mod prune;
pub mod recipe;
pub mod verify;

pub use pipeline::{PassTiming, Pipeline};

/// Every pass kiln has: name and what it does (shown by reports and tests).
pub const REGISTRY: &[(&str, &str)] = &[
    (
        "normalize",
        "tensor names to GGUF naming, roles and layers; llama q/k RoPE permutation; llama.cpp's loader order",
    ),
    (
        "recipe",
        "llama-quantize's per-tensor types for a recipe (mixtures, fallbacks, overrides)",
    ),
    (
        "assign",
        "a per-tensor type table (kiln's plan), stamped as llama-quantize stamps a file",
    ),
    (
        "layout",
        "which output file (device shard) each tensor goes into, under a per-file byte cap",
    ),
    (
        "importance",
        "importance vectors (imatrix) checked against the tensors and attached to the model",
    ),
    (
        "prune-depth",
        "remove whole blocks; later blocks renumbered, per-layer facts kept consistent",
    ),
    (
        "prune-ffn",
        "keep the most important FFN channels (Wanda: activation norm x ffn_down column norm), same width in every layer",
    ),
    (
        "prune-kv",
        "remove whole KV groups (a KV head with its query heads), head counts valid for the runtime and TP degree",
    ),
];

/// Reads tensor values for passes: row `r` of `node`, decoded to f32 from
/// the source with the node's transform applied.
pub trait TensorReader: Sync {
    fn read_row(&self, node: &TensorNode, r: usize, out: &mut [f32]);
}

/// What a pass can use besides the model.
#[derive(Clone, Copy, Default)]
pub struct Context<'a> {
    /// Tensor values; `None` where the model has no data behind it (a model
    /// synthesized from a config to size it).
    pub reader: Option<&'a dyn TensorReader>,
}

impl<'a> Context<'a> {
    /// A context with tensor values.
    pub fn with_reader(reader: &'a dyn TensorReader) -> Context<'a> {
        Context {
            reader: Some(reader),
        }
    }

    /// The reader, or an error naming the pass that needed it.
    pub fn reader(&self, pass: &'static str) -> Result<&'a dyn TensorReader, PassError> {
        self.reader.ok_or_else(|| {
            PassError::new(
                pass,
                None,
                "needs tensor values, and this model has none (it was built from a config)",
            )
        })
    }
}

/// A transformation or decision over the whole model.
pub trait Pass {
    fn name(&self) -> &'static str;
    fn run(&self, model: &mut Model, cx: &Context<'_>) -> Result<(), PassError>;
}

/// Run one pass, then the verifier; returns the pass's time.
pub(crate) fn run_one(
    pass: &dyn Pass,
    model: &mut Model,
    cx: &Context<'_>,
) -> Result<Duration, PassError> {
    debug_assert!(
        REGISTRY.iter().any(|(n, _)| *n == pass.name()),
        "pass `{}` is not in the registry",
        pass.name()
    );
    let t0 = Instant::now();
    pass.run(model, cx)?;
    let took = t0.elapsed();
    verify::verify(model)?;
    Ok(took)
}
