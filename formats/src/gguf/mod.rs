//! GGUF: the container llama.cpp, ollama and LM Studio load: the reader, the
//! header serializer, the lowering of model metadata to GGUF key/values,
//! and the container the streaming writer lays files out with.

pub mod container;
pub mod metadata;
pub mod read;
pub mod types;
pub mod write;

pub use container::{split_name, Gguf, ALIGNMENT};
pub use metadata::{key_values, lower_in_place};
pub use read::{parse, GgufFile, GgufTensor};
pub use write::{layout, Layout, OutTensor};
