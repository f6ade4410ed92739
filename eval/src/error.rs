//! Typed errors of the evaluator: what was being done, to which tensor or
//! model, and why. The CLI prints the chain on one line.

/// Errors of `eval`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Formats(#[from] formats::Error),
    #[error(transparent)]
    Pass(#[from] passes::PassError),
    /// A model kiln cannot run (architecture, missing tensor, bad shape).
    #[error("{model}: {reason}")]
    Model { model: String, reason: String },
    /// A tensor operation failed (a bug or an inconsistent model).
    #[error("{op}: {err}")]
    Candle { op: String, err: candle_core::Error },
    /// The tokenizer metadata cannot be used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The text is too short, or the options cannot be met.
    #[error("{0}")]
    Input(String),
    /// Interrupted by the user.
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach the name of the operation to a candle error.
pub(crate) trait OpContext<T> {
    fn op(self, op: impl FnOnce() -> String) -> Result<T>;
}

impl<T> OpContext<T> for std::result::Result<T, candle_core::Error> {
    fn op(self, op: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|err| Error::Candle { op: op(), err })
    }
}
