//! `formats`: bytes in, bytes out. Memory-mapped readers for safetensors,
//! Hugging Face checkpoint directories and GGUF; tokenizer reading; the
//! streaming, atomic writer (`write`) and the containers it writes (`gguf`).
//! Knows nothing about policy: which encoding each tensor gets, and which
//! file it goes into, is decided by `passes`.

pub mod artifact;
pub mod atomic;
pub mod chart;
pub mod ct;
mod ct_acts;
pub mod ct_gguf;
pub mod ct_read;
pub mod data;
pub mod error;
pub mod gguf;
pub mod hf;
pub mod human;
pub mod imatrix;
pub mod input;
pub mod load;
mod mmap;
pub mod safetensors;
pub mod shards;
pub mod tokenizer;
pub mod write;

pub use error::{Error, Result};
pub use load::{load, InputKind, LoadOptions, Loaded};
pub use mmap::MappedFile;
