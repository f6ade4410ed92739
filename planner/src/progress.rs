//! How the planner reports progress without printing: a stage starts with a
//! length and a unit, advances, and finishes; a status line says what was
//! done. The CLI draws bars and prints status lines through its `Printer`;
//! tests and other callers can pass [`Silent`].
//!
//! What must stay true: the planner never writes to stdout or stderr itself;
//! warnings are data (`Setup::warnings`, the manifest), and each is also
//! passed to [`Progress::warn`] as soon as it is known, before the long
//! stages start, so a user can stop a run that will not give what they want.

use std::cell::Cell;

/// What a stage counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Counted things, named in the plural (`"windows"`, `"groups"`, `"values"`).
    Items(&'static str),
    /// Bytes of input.
    Bytes,
}

/// Progress of the planner's long stages. One stage runs at a time.
pub trait Progress: Sync {
    /// A stage (`"measuring"`, `"probing"`, ...) of `len` units begins.
    fn start(&self, stage: &str, len: u64, unit: Unit);
    /// The current stage advanced by `n` units.
    fn advance(&self, n: u64);
    /// The current stage ended (successfully or not).
    fn finish(&self);
    /// A one-line status message (what was done, and how long it took).
    fn status(&self, text: &str);
    /// A warning, the moment it is known (it is also in `Setup::warnings`).
    fn warn(&self, _text: &str) {}
}

/// No progress shown.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64, _: Unit) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
    fn status(&self, _: &str) {}
}

/// Turn a callback that reports an absolute position (the evaluator's
/// `progress(n)`) into [`Progress::advance`] steps.
pub(crate) fn positions(progress: &dyn Progress) -> impl Fn(usize) + '_ {
    let last = Cell::new(0u64);
    move |n: usize| {
        let n = n as u64;
        if n > last.get() {
            progress.advance(n - last.get());
            last.set(n);
        }
    }
}
