//! Typed errors of the planner: which option, input, tensor or file, and why.
//! The CLI prints the chain on one line; a `formats::Error` or `eval::Error`
//! is kept whole (transparent) so that the CLI can still tell an interruption
//! (exit code 130) from bad input (2).

use std::path::PathBuf;

/// Errors of `planner`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Formats(#[from] formats::Error),
    /// Boxed: the evaluator's errors are large.
    #[error(transparent)]
    Eval(Box<eval::Error>),
    #[error(transparent)]
    Pass(#[from] passes::PassError),
    #[error(transparent)]
    Cost(#[from] passes::cost::CostError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// An option value that cannot be used (names the option).
    #[error("{0}")]
    Options(String),
    /// An input the planner refuses (names the file and tensor, and why).
    #[error("{0}")]
    Input(String),
    /// A text that cannot be read.
    #[error("{}: cannot read the text", path.display())]
    ReadText {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A target profile file that cannot be read.
    #[error("cannot read target file {}", path.display())]
    ReadTarget {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An evaluator error on a named model or file.
    #[error("{what}")]
    Within {
        what: String,
        #[source]
        source: Box<eval::Error>,
    },
    /// Writing one output file failed.
    #[error("writing {name}")]
    Writing {
        name: String,
        #[source]
        source: formats::Error,
    },
    /// No allocation fits on any device count tried.
    #[error("no plan fits: {0}")]
    NoPlan(String),
}

impl From<eval::Error> for Error {
    fn from(e: eval::Error) -> Error {
        Error::Eval(Box::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
