//! The pass manager: every pass is a small named unit in its own file,
//! registered here, timed, and followed by the verifier in tests and debug
//! builds (release builds verify once, at the end).

use std::time::{Duration, Instant};

use crate::error::PassError;
use crate::ir::Model;

pub mod assign;
pub mod layout;
pub mod normalize;
pub mod recipe;
pub mod verify;

/// A transformation or decision over the whole model.
pub trait Pass {
    fn name(&self) -> &'static str;
    fn run(&self, model: &mut Model) -> Result<(), PassError>;
}

/// Run `passes` in order; returns each pass's name and time.
pub fn run(
    model: &mut Model,
    passes: &[&dyn Pass],
) -> Result<Vec<(&'static str, Duration)>, PassError> {
    let mut times = Vec::with_capacity(passes.len());
    for p in passes {
        let t0 = Instant::now();
        p.run(model)?;
        times.push((p.name(), t0.elapsed()));
        if cfg!(debug_assertions) {
            verify::verify(model)?;
        }
    }
    verify::verify(model)?;
    Ok(times)
}
