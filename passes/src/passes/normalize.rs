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
//! depend on how the input was sharded and matches llama-quantize's;
//! - a routed expert's per-expert Hugging Face tensors become one stacked
//!   tensor `[n_expert, out, in]` whose rows are read from each expert's own
//!   bytes in turn (`TensorNode::parts`, nothing copied); experts missing,
//!   or disagreeing in shape or dtype, are refused by name.

use crate::arch;
use crate::error::PassError;
use crate::ir::{Model, Note, NoteKind, Role, TensorNode};
use crate::naming;

use super::{Context, Pass};

pub struct Normalize;

const NAME: &str = "normalize";

impl Pass for Normalize {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, _cx: &Context<'_>) -> Result<(), PassError> {
        let hf_layout = model.tensors.iter().any(|t| {
            t.name.starts_with("model.")
                || t.name.starts_with("language_model.")
                || t.name == "lm_head.weight"
        });
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
            .and_then(|a| arch::spec_for_arch(a).map(|s| (a, s)));
        let mut kept = Vec::with_capacity(model.tensors.len());
        let family = spec.map(|(_, s)| s);
        // Routed experts' tensors by stacked name, in first-seen order.
        let mut stacks: Vec<(String, String, Experts)> = Vec::new();
        for mut t in std::mem::take(&mut model.tensors) {
            if t.is_computed() {
                // Computed from config values, already in GGUF naming.
                (t.role, t.layer) = naming::role_and_layer(&t.name);
                kept.push(t);
                continue;
            }
            let mapped = match arch::hf_name(family, &t.source_name) {
                arch::HfName::Map(n) => n,
                arch::HfName::Drop(why) => {
                    model.notes.push(Note::new(
                        NoteKind::Dropped {
                            tensor: t.source_name.clone(),
                        },
                        format!("dropped `{}`: {why}", t.source_name),
                    ));
                    continue;
                }
            };
            let found = arch::find_hf_row(table, &mapped)
                .map_err(|r| PassError::new(NAME, Some(&t.source_name), r))?;
            if let Some(m) = &found {
                if let Some(e) = m.expert {
                    t.role = m.row.role;
                    t.layer = m.layer;
                    match stacks.iter_mut().find(|(n, _, _)| *n == m.gguf) {
                        Some((_, _, parts)) => parts.push((e, t)),
                        None => {
                            let suffix = t.source_name.rsplit('.').next().unwrap_or("weight");
                            let hf = format!(
                                "model.layers.{}.{}.{suffix}",
                                m.layer.unwrap_or(0),
                                m.row.hf
                            );
                            stacks.push((m.gguf.clone(), hf, vec![(e, t)]));
                        }
                    }
                    continue;
                }
            }
            match found.map(|m| (m.gguf, m.row.role, m.layer)) {
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
                        let trim = spec.extension.is_some_and(|e| e.trim_embedding);
                        if trim && role == Role::Embedding && t.shape.len() == 2 {
                            trim_rows(&mut t, a.vocab, &mut model.notes);
                        }
                    }
                    kept.push(t);
                }
            }
        }
        let n_expert = model.arch.as_ref().map(|a| a.n_expert);
        for (name, hf, parts) in stacks {
            kept.push(stack(name, &hf, parts, n_expert)?);
        }
        model.tensors = kept;
        naming::sort_like_llama_cpp(&mut model.tensors);
        Ok(())
    }
}

/// Keep the first `vocab` rows of an embedding (the converter's
/// `data_torch[:len(tokens)]`: rows past the vocabulary are dropped), with a note.
fn trim_rows(t: &mut TensorNode, vocab: usize, notes: &mut Vec<Note>) {
    let rows = t.shape[0];
    if rows <= vocab || rows == 0 {
        return;
    }
    let row_bytes = t.source.len / rows as u64;
    t.shape[0] = vocab;
    t.source.len = row_bytes * vocab as u64;
    notes.push(Note::new(
        NoteKind::Dropped {
            tensor: format!("{}[{vocab}..{rows}]", t.source_name),
        },
        format!(
            "dropped rows {vocab}..{rows} of `{}`: past the vocabulary of {vocab} tokens (as llama.cpp's converter does)",
            t.source_name
        ),
    ));
}

/// One stacked tensor's per-expert tensors, with their expert indices.
type Experts = Vec<(usize, TensorNode)>;

/// One tensor `[n_expert, ...]` named `name` from each expert's tensor
/// (`(expert, tensor)`, in any order; `hf` their Hugging Face name with
/// [`arch::EXPERT`] for the index): experts `0..n_expert` (the config's
/// count, or as many as there are), each once, of one shape and dtype.
fn stack(
    name: String,
    hf: &str,
    mut parts: Experts,
    n_expert: Option<usize>,
) -> Result<TensorNode, PassError> {
    parts.sort_by_key(|(e, _)| *e);
    let n = n_expert.filter(|&n| n > 0).unwrap_or(parts.len());
    let first = &parts[0].1;
    let pattern = |e: usize| hf.replace(arch::EXPERT, &e.to_string());
    for (want, (e, t)) in parts.iter().enumerate() {
        if *e != want {
            let missing = if *e > want { want } else { *e };
            let what = if *e > want {
                "is missing"
            } else {
                "appears twice"
            };
            return Err(PassError::new(
                NAME,
                Some(&pattern(missing)),
                format!("expert {missing} of `{name}` {what}"),
            ));
        }
        if t.shape != first.shape || t.source.dtype != first.source.dtype {
            return Err(PassError::new(
                NAME,
                Some(&t.source_name),
                format!(
                    "expert {e} has shape {:?} ({}) but expert 0 has {:?} ({}); the experts of `{name}` must agree",
                    t.shape,
                    t.source.dtype.name(),
                    first.shape,
                    first.source.dtype.name()
                ),
            ));
        }
    }
    if parts.len() != n {
        return Err(PassError::new(
            NAME,
            Some(&pattern(parts.len())),
            format!(
                "expert {} of `{name}` is missing ({n} experts per layer)",
                parts.len()
            ),
        ));
    }
    let mut shape = vec![n];
    shape.extend_from_slice(&first.shape);
    let source_name = hf.replace(arch::EXPERT, "*");
    let sources: Vec<_> = parts.iter().map(|(_, t)| t.source.clone()).collect();
    let mut source = sources[0].clone();
    source.len = sources.iter().map(|s| s.len).sum();
    let (role, layer) = (first.role, first.layer);
    Ok(TensorNode {
        name,
        source_name,
        shape,
        role,
        layer,
        source,
        parts: sources,
        transform: None,
        encoding: None,
        notes: Vec::new(),
    })
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
            parts: Vec::new(),
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
    fn gemma3_unwraps_drops_vision_trims_embedding_and_adds_one_to_norms() {
        let mut m = model(
            "gemma3",
            vec![
                hf("language_model.model.embed_tokens.weight", &[20, 8]),
                hf(
                    "language_model.model.layers.0.self_attn.q_norm.weight",
                    &[4],
                ),
                hf(
                    "language_model.model.layers.0.self_attn.q_proj.weight",
                    &[8, 8],
                ),
                hf(
                    "vision_tower.vision_model.embeddings.patch_embedding.weight",
                    &[4, 4],
                ),
            ],
        );
        m.arch.as_mut().unwrap().vocab = 16;
        m.tensors[0].source.len = 20 * 8 * 2;
        Normalize.run(&mut m, &Context::default()).unwrap();
        let names: Vec<&str> = m.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "token_embd.weight",
                "blk.0.attn_q.weight",
                "blk.0.attn_q_norm.weight"
            ]
        );
        assert_eq!(m.tensors[0].shape, [16, 8]);
        assert_eq!(m.tensors[0].source.len, 16 * 8 * 2);
        assert_eq!(m.tensors[2].transform, Some(Transform::Add(1.0)));
        assert_eq!(m.tensors[1].transform, None);
        let notes: Vec<&str> = m.notes.iter().map(|n| n.text.as_str()).collect();
        assert!(
            notes
                .iter()
                .any(|n| n.contains("vision_tower.vision_model")),
            "{notes:?}"
        );
        assert!(notes.iter().any(|n| n.contains("rows 16..20")), "{notes:?}");
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

#[cfg(test)]
mod moe_tests {
    use super::*;
    use crate::ir::{Arch, Role, Source, SourceDType};

    fn expert(layer: usize, e: usize, w: &str, shape: &[usize], offset: u64) -> TensorNode {
        let name = format!("model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight");
        TensorNode {
            name: name.clone(),
            source_name: name,
            shape: shape.to_vec(),
            role: Role::Other,
            layer: None,
            source: Source {
                file: e % 2,
                dtype: SourceDType::BF16,
                offset,
                len: (shape.iter().product::<usize>() * 2) as u64,
            },
            parts: Vec::new(),
            transform: None,
            encoding: None,
            notes: Vec::new(),
        }
    }

    fn mixtral(tensors: Vec<TensorNode>) -> Model {
        Model {
            arch: Some(Arch {
                family: "llama".into(),
                hf_architecture: Some("MixtralForCausalLM".into()),
                n_head: 2,
                n_head_kv: 1,
                n_expert: 3,
                n_expert_used: 2,
                ..Arch::default()
            }),
            tensors,
            ..Model::default()
        }
    }

    #[test]
    fn stacks_experts_in_expert_order_from_their_own_bytes() {
        // Experts listed out of order, in two files.
        let ts = [2, 0, 1]
            .into_iter()
            .map(|e| expert(1, e, "w2", &[4, 6], 1000 * e as u64))
            .collect();
        let mut m = mixtral(ts);
        Normalize.run(&mut m, &Context::default()).unwrap();
        assert_eq!(m.tensors.len(), 1);
        let t = &m.tensors[0];
        assert_eq!(t.name, "blk.1.ffn_down_exps.weight");
        assert_eq!(
            t.source_name,
            "model.layers.1.block_sparse_moe.experts.*.w2.weight"
        );
        assert_eq!((t.role, t.layer), (Role::FfnDownExps, Some(1)));
        assert_eq!(t.shape, vec![3, 4, 6]);
        let offsets: Vec<(usize, u64)> = t.parts.iter().map(|p| (p.file, p.offset)).collect();
        assert_eq!(offsets, vec![(0, 0), (1, 1000), (0, 2000)]);
        assert_eq!(t.source.len, 3 * 4 * 6 * 2);
        // Row 9 is expert 2's row 1.
        let (src, row) = t.source_of_row(9);
        assert_eq!((src.offset, row), (2000, 1));
    }

    #[test]
    fn refuses_missing_duplicate_and_disagreeing_experts() {
        let run = |ts: Vec<TensorNode>| {
            let mut m = mixtral(ts);
            Normalize
                .run(&mut m, &Context::default())
                .unwrap_err()
                .to_string()
        };
        let e = run(vec![
            expert(0, 0, "w1", &[4, 6], 0),
            expert(0, 2, "w1", &[4, 6], 0),
        ]);
        assert!(
            e.contains("model.layers.0.block_sparse_moe.experts.1.w1.weight")
                && e.contains("is missing"),
            "{e}"
        );
        let e = run(vec![
            expert(0, 0, "w1", &[4, 6], 0),
            expert(0, 1, "w1", &[4, 6], 0),
        ]);
        assert!(
            e.contains("expert 2 of `blk.0.ffn_gate_exps.weight` is missing (3 experts per layer)"),
            "{e}"
        );
        let e = run(vec![
            expert(0, 0, "w3", &[4, 6], 0),
            expert(0, 1, "w3", &[4, 6], 0),
            expert(0, 1, "w3", &[4, 6], 0),
        ]);
        assert!(e.contains("appears twice"), "{e}");
        let e = run(vec![
            expert(0, 0, "w3", &[4, 6], 0),
            expert(0, 1, "w3", &[5, 6], 0),
            expert(0, 2, "w3", &[4, 6], 0),
        ]);
        assert!(
            e.contains("expert 1 has shape [5, 6] (BF16) but expert 0 has [4, 6]"),
            "{e}"
        );
    }
}
