//! GGUF: the container llama.cpp, ollama and LM Studio load.

pub mod read;
pub mod types;
pub mod write;

pub use read::{parse, GgufFile, GgufTensor};
pub use write::{layout, Layout, OutTensor};
