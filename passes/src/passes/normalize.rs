//! `normalize`: tensor names to GGUF naming, roles and layers, and the
//! family's value transforms (llama's q/k RoPE permutation) for checkpoints
//! in Hugging Face layout. The names, roles and transforms come from the
//! model's family spec (`crate::arch`); GGUF names are read by
//! `crate::naming`.
//!
//! What must stay true: every kept tensor has a GGUF name and a role; a
//! Hugging Face tensor kiln cannot map is refused by name (never silently
//! dropped), except rotary-embedding buffers, which llama.cpp recomputes and
//! which are dropped with a note; tensors are ordered as llama.cpp's model
//! loader orders them (`naming::loader_order`), so the output order does not
//! depend on how the input was sharded and matches llama-quantize's.

use crate::arch;
use crate::error::PassError;
use crate::ir::Model;
use crate::naming;

use super::Pass;

pub struct Normalize;

const NAME: &str = "normalize";

impl Pass for Normalize {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model) -> Result<(), PassError> {
        let hf_layout = model
            .tensors
            .iter()
            .any(|t| t.name.starts_with("model.") || t.name == "lm_head.weight");
        if !hf_layout {
            for t in &mut model.tensors {
                (t.role, t.layer) = naming::role_and_layer(&t.name);
            }
            naming::sort_like_llama_cpp(&mut model.tensors);
            return Ok(());
        }
        let table = arch::table_for(model.arch.as_ref());
        let spec = model
            .arch
            .as_ref()
            .and_then(|a| arch::spec_for_gguf(&a.family).map(|s| (a, s)));
        let mut kept = Vec::with_capacity(model.tensors.len());
        for mut t in std::mem::take(&mut model.tensors) {
            match arch::map_hf_name(table, &t.source_name)
                .map_err(|r| PassError::new(NAME, Some(&t.source_name), r))?
            {
                None => model.notes.push(format!(
                    "dropped `{}`: llama.cpp recomputes rotary frequencies",
                    t.source_name
                )),
                Some((name, role, layer)) => {
                    t.name = name;
                    t.role = role;
                    t.layer = layer;
                    if let Some((a, spec)) = spec {
                        t.transform = (spec.transform)(a, role, &t.shape)
                            .map_err(|r| PassError::new(NAME, Some(&t.source_name), r))?;
                    }
                    kept.push(t);
                }
            }
        }
        model.tensors = kept;
        naming::sort_like_llama_cpp(&mut model.tensors);
        Ok(())
    }
}
