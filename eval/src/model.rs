//! Opening a model for evaluation: load any input kiln reads (a Hugging Face
//! checkpoint directory or a GGUF), run the `normalize` pass so that every
//! tensor has its GGUF name and GGUF layout (llama q/k rows in ggml's
//! interleaved-RoPE order), and read tensors as f32, whatever their encoding.
//!
//! What must stay true: after [`open`], a tensor of a Hugging Face checkpoint
//! and the tensor of the same name in a GGUF converted from it have the same
//! shape and row order, so they can be compared element by element and run by
//! the same forward pass.

use std::path::{Path, PathBuf};

use formats::{LoadOptions, Loaded};
use passes::{Arch, TensorNode};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// A loaded model, normalized to GGUF naming and layout.
#[derive(Debug)]
pub struct Opened {
    pub path: PathBuf,
    pub loaded: Loaded,
    /// The `open` pipeline's pass timings.
    pub passes: Vec<passes::passes::PassTiming>,
}

/// Load `path` and normalize it.
pub fn open(path: &Path, opts: &LoadOptions) -> Result<Opened> {
    let mut loaded = formats::load(path, opts)?;
    if let Some(g) = &loaded.gguf {
        if let Some((name, ty)) = formats::load::undecodable(g) {
            return Err(Error::Model {
                model: path.display().to_string(),
                reason: format!("tensor `{name}`: type {ty} cannot be decoded by kiln yet"),
            });
        }
    }
    let passes = passes::passes::Pipeline::open()
        .run(&mut loaded.model, &passes::passes::Context::default())?;
    Ok(Opened {
        path: path.to_path_buf(),
        loaded,
        passes,
    })
}

impl Opened {
    pub fn name(&self) -> String {
        self.path.display().to_string()
    }

    pub fn arch(&self) -> Result<&Arch> {
        self.loaded.model.arch.as_ref().ok_or_else(|| Error::Model {
            model: self.name(),
            reason: match &self.loaded.gguf {
                Some(_) => formats::load::gguf_arch_missing(&self.loaded.model.metadata),
                None => "no architecture (a bare .safetensors file has no config.json; evaluate the checkpoint directory)".into(),
            },
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorNode> {
        self.loaded.model.tensor(name)
    }

    /// A tensor that must exist.
    pub fn need(&self, name: &str) -> Result<&TensorNode> {
        self.tensor(name).ok_or_else(|| Error::Model {
            model: self.name(),
            reason: format!("no tensor `{name}`"),
        })
    }

    /// Drop the mapped pages of `node`'s stored bytes (see
    /// `formats::mmap::MappedFile::release`); a later read re-faults them.
    /// Compressed-tensors tensors, decoded from several parts, are left.
    pub fn release(&self, node: &TensorNode) {
        if self
            .loaded
            .ct
            .as_ref()
            .and_then(|c| c.tensor(node))
            .is_some()
        {
            return;
        }
        let parts = if node.parts.is_empty() {
            std::slice::from_ref(&node.source)
        } else {
            &node.parts[..]
        };
        for s in parts {
            if let Some(map) = self.loaded.maps.get(s.file) {
                map.release(s.offset as usize, s.len as usize);
            }
        }
    }

    /// All of `node`'s elements as f32 (rows decoded in parallel), row-major.
    pub fn read_f32(&self, node: &TensorNode) -> Vec<f32> {
        let row = node.row_len();
        let mut out = vec![0f32; node.n_elements()];
        if row == 0 {
            return out;
        }
        out.par_chunks_mut(row)
            .enumerate()
            .for_each(|(r, dst)| self.loaded.read_row(node, r, dst));
        out
    }
}
