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
use crate::ir::{Model, Note, NoteKind};
use crate::naming;

use super::{Context, Pass};

pub struct Normalize;

const NAME: &str = "normalize";

impl Pass for Normalize {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, _cx: &Context<'_>) -> Result<(), PassError> {
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
            if t.is_computed() {
                // Computed from config values, already in GGUF naming.
                (t.role, t.layer) = naming::role_and_layer(&t.name);
                kept.push(t);
                continue;
            }
            match arch::map_hf_name(table, &t.source_name)
                .map_err(|r| PassError::new(NAME, Some(&t.source_name), r))?
            {
                None => model.notes.push(Note::new(
                    NoteKind::Dropped {
                        tensor: t.source_name.clone(),
                    },
                    format!(
                        "dropped `{}`: llama.cpp recomputes rotary frequencies",
                        t.source_name
                    ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Arch, Role, Source, SourceDType, TensorNode, Transform};

    fn hf(name: &str, shape: &[usize]) -> TensorNode {
        TensorNode {
            name: name.into(),
            source_name: name.into(),
            shape: shape.to_vec(),
            role: Role::Other,
            layer: None,
            source: Source {
                file: 0,
                dtype: SourceDType::F16,
                offset: 0,
                len: 0,
            },
            transform: None,
            encoding: None,
            notes: Vec::new(),
        }
    }

    fn model(family: &str, tensors: Vec<TensorNode>) -> Model {
        Model {
            arch: Some(Arch {
                family: family.into(),
                n_head: 2,
                n_head_kv: 1,
                ..Arch::default()
            }),
            tensors,
            ..Model::default()
        }
    }

    fn tensors() -> Vec<TensorNode> {
        vec![
            hf("model.layers.10.self_attn.q_proj.weight", &[8, 8]),
            hf("model.layers.2.self_attn.k_proj.weight", &[4, 8]),
            hf("model.layers.2.self_attn.rotary_emb.inv_freq", &[2]),
            hf("lm_head.weight", &[16, 8]),
            hf("model.embed_tokens.weight", &[16, 8]),
        ]
    }

    #[test]
    fn names_orders_and_transforms_by_the_family_spec() {
        let mut m = model("llama", tensors());
        Normalize.run(&mut m, &Context::default()).unwrap();
        let names: Vec<&str> = m.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "output.weight",
                "token_embd.weight",
                "blk.2.attn_k.weight",
                "blk.10.attn_q.weight"
            ]
        );
        assert_eq!(
            m.tensors[2].transform,
            Some(Transform::RopePermute { n_head: 1 })
        );
        assert_eq!(
            (m.tensors[3].role, m.tensors[3].layer),
            (Role::AttnQ, Some(10))
        );
        assert!(m.notes[0].text.contains("rotary_emb.inv_freq"));

        let mut m = model("qwen2", tensors());
        Normalize.run(&mut m, &Context::default()).unwrap();
        assert!(m.tensors.iter().all(|t| t.transform.is_none()));
    }

    #[test]
    fn refuses_what_the_table_or_transform_cannot_take() {
        let mut m = model(
            "llama",
            vec![hf("transformer.h.0.attn.c_attn.weight", &[4, 4])],
        );
        m.tensors.push(hf("lm_head.weight", &[4, 4]));
        let e = Normalize
            .run(&mut m, &Context::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot map `transformer.h.0.attn.c_attn.weight`"),
            "{e}"
        );
        let mut m = model(
            "llama",
            vec![hf("model.layers.0.self_attn.q_proj.bias", &[8])],
        );
        let e = Normalize
            .run(&mut m, &Context::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("q/k biases of a llama model"), "{e}");
    }

    #[test]
    fn gguf_names_get_roles_and_loader_order() {
        let mut m = model(
            "llama",
            vec![
                hf("blk.1.ffn_down.weight", &[8, 8]),
                hf("output_norm.weight", &[8]),
            ],
        );
        Normalize.run(&mut m, &Context::default()).unwrap();
        assert_eq!(m.tensors[0].role, Role::Norm);
        assert_eq!(
            (m.tensors[1].role, m.tensors[1].layer),
            (Role::FfnDown, Some(1))
        );
    }
}
