//! `formats`: bytes in, bytes out. Memory-mapped readers for safetensors,
//! Hugging Face checkpoint directories and GGUF; tokenizer conversion; the
//! streaming, atomic GGUF emitter. Knows nothing about policy: which encoding
//! each tensor gets is decided by `passes`.

pub mod artifact;
pub mod atomic;
pub mod chart;
pub mod data;
pub mod emit;
pub mod error;
pub mod gguf;
pub mod hf;
pub mod imatrix;
pub mod load;
mod mmap;
pub mod safetensors;
pub mod tokenizer;

pub use error::{Error, Result};
pub use load::{load, InputKind, LoadOptions, Loaded};
pub use mmap::MappedFile;
