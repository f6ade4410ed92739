//! `passes`: kiln's IR, the passes over it, and (later) the planner and cost
//! model. This crate knows nothing about files: loaders in `formats` build a
//! [`Model`] of lazy [`Source`] views, passes decide, and the emitter lowers.

pub mod arch;
pub mod cost;
pub mod error;
pub mod escape;
pub mod ir;
pub mod naming;
pub mod passes;
pub mod plan;
pub mod suggest;

pub use error::PassError;
pub use escape::printable;
pub use ir::{
    Arch, Encoding, GemmaAttn, MetaValue, Metadata, Model, Note, NoteKind, Role, Source,
    SourceDType, TensorNode, Transform,
};
