//! `eval`: measured accuracy. Weight-level error between two models
//! ([`weights`]), a llama-family forward pass on CPU with candle whose linear
//! inputs can be observed ([`forward`]), run block by block from the stored
//! or a candidate encoding of the weights ([`stream`], [`source`]), perplexity / KL divergence / top-1
//! agreement on text by llama-perplexity's method ([`text`]), importance-matrix
//! collection ([`imatrix`]), and the tokenizer that turns text into the ids
//! llama.cpp would use ([`tokenize`]).
//!
//! Direction of dependencies: `eval -> {formats, passes, quant}`; nothing
//! depends on `eval` but the CLI. Nothing here prints: the CLI owns output.

pub mod ct_gptq;
pub mod error;
pub mod forward;
pub mod gemma;
pub mod gguf_gptq;
pub mod gptq;
pub mod gptq_gain;
pub mod imatrix;
pub mod model;
mod moe;
pub mod planning;
pub mod prune;
pub mod report;
pub mod rounded;
pub mod source;
pub mod stream;
pub mod text;
pub mod tokenize;
pub mod weights;

pub use error::{Error, Result};
pub use forward::{Observer, Transformer};
pub use model::{open, Opened};
pub use source::{Mapped, Overrides, Roundtrip, Source, WithActs};
pub use tokenize::Tokenizer;
