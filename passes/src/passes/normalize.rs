//! `normalize`: tensor names to GGUF naming, roles and layers, and the llama
//! q/k RoPE permutation for checkpoints in Hugging Face layout.
//!
//! What must stay true: every kept tensor has a GGUF name and a role; a
//! Hugging Face tensor kiln cannot map is refused by name (never silently
//! dropped), except rotary-embedding buffers, which llama.cpp recomputes and
//! which are dropped with a note; tensors are ordered as llama.cpp's model
//! loader orders them (`weight_name_comparer`: non-block tensors first, then
//! by block number, then by name), so the output order does not depend on how
//! the input was sharded and matches llama-quantize's.

use crate::error::PassError;
use crate::ir::{Model, Note, NoteKind, Role, Transform};

use super::{Context, Pass};

pub struct Normalize;

const NAME: &str = "normalize";

/// Map one Hugging Face llama-family name to (GGUF name, role, layer).
/// `Ok(None)` means "drop" (rotary buffers).
pub fn map_hf_name(name: &str) -> Result<Option<(String, Role, Option<usize>)>, String> {
    if name.ends_with("rotary_emb.inv_freq") {
        return Ok(None);
    }
    let (base, suffix) = match name.rsplit_once('.') {
        Some((b, s @ ("weight" | "bias"))) => (b, s),
        _ => return Err(format!("cannot map `{name}` to a GGUF name")),
    };
    let fixed = match base {
        "model.embed_tokens" => Some(("token_embd", Role::Embedding)),
        "lm_head" => Some(("output", Role::Output)),
        "model.norm" => Some(("output_norm", Role::Norm)),
        _ => None,
    };
    if let Some((n, role)) = fixed {
        return Ok(Some((format!("{n}.{suffix}"), role, None)));
    }
    let rest = base
        .strip_prefix("model.layers.")
        .ok_or_else(|| format!("cannot map `{name}` to a GGUF name"))?;
    let (layer, part) = rest
        .split_once('.')
        .ok_or_else(|| format!("cannot map `{name}` to a GGUF name"))?;
    let layer: usize = layer
        .parse()
        .map_err(|_| format!("cannot map `{name}`: bad layer index"))?;
    let (gguf, role) = match part {
        "input_layernorm" => ("attn_norm", Role::Norm),
        "post_attention_layernorm" => ("ffn_norm", Role::Norm),
        "self_attn.q_proj" => ("attn_q", Role::AttnQ),
        "self_attn.k_proj" => ("attn_k", Role::AttnK),
        "self_attn.v_proj" => ("attn_v", Role::AttnV),
        "self_attn.o_proj" => ("attn_output", Role::AttnOutput),
        "mlp.gate_proj" => ("ffn_gate", Role::FfnGate),
        "mlp.up_proj" => ("ffn_up", Role::FfnUp),
        "mlp.down_proj" => ("ffn_down", Role::FfnDown),
        _ => return Err(format!("cannot map `{name}` to a GGUF name")),
    };
    Ok(Some((
        format!("blk.{layer}.{gguf}.{suffix}"),
        role,
        Some(layer),
    )))
}

/// Role and layer of a tensor already in GGUF naming.
pub fn gguf_role(name: &str) -> (Role, Option<usize>) {
    let base = name.trim_end_matches(".weight").trim_end_matches(".bias");
    if let Some(rest) = base.strip_prefix("blk.") {
        let (layer, part) = rest.split_once('.').unwrap_or((rest, ""));
        let layer = layer.parse().ok();
        let role = match part {
            "attn_q" => Role::AttnQ,
            "attn_k" => Role::AttnK,
            "attn_v" => Role::AttnV,
            "attn_output" => Role::AttnOutput,
            "ffn_gate" => Role::FfnGate,
            "ffn_up" => Role::FfnUp,
            "ffn_down" => Role::FfnDown,
            p if p.ends_with("_norm") => Role::Norm,
            _ => Role::Other,
        };
        return (role, layer);
    }
    let role = match base {
        "token_embd" => Role::Embedding,
        "output" => Role::Output,
        b if b.ends_with("_norm") => Role::Norm,
        _ => Role::Other,
    };
    (role, None)
}

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
                (t.role, t.layer) = gguf_role(&t.name);
            }
            sort_like_llama_cpp(model);
            return Ok(());
        }
        let arch = model.arch.clone();
        let permute = arch.as_ref().is_some_and(|a| a.family == "llama");
        let mut kept = Vec::with_capacity(model.tensors.len());
        for mut t in std::mem::take(&mut model.tensors) {
            match map_hf_name(&t.source_name)
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
                    if permute && matches!(role, Role::AttnQ | Role::AttnK) {
                        let a = arch.as_ref().expect("permute implies arch");
                        let n_head = if role == Role::AttnQ {
                            a.n_head
                        } else {
                            a.n_head_kv
                        };
                        if t.shape.len() != 2 {
                            return Err(PassError::new(
                                NAME,
                                Some(&t.source_name),
                                "q/k biases of a llama model are not supported (the RoPE permutation is defined for 2-D weights here)",
                            ));
                        }
                        let rows = t.shape[0];
                        if n_head == 0 || rows % (2 * n_head) != 0 {
                            return Err(PassError::new(
                                NAME,
                                Some(&t.source_name),
                                format!("{rows} rows cannot be split into {n_head} heads of two RoPE halves"),
                            ));
                        }
                        t.transform = Some(Transform::RopePermute { n_head });
                    }
                    kept.push(t);
                }
            }
        }
        model.tensors = kept;
        sort_like_llama_cpp(model);
        Ok(())
    }
}

/// The block number as `sscanf(name, "blk.%d.")` reads it, or -1.
fn block_of(name: &str) -> i64 {
    name.strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(-1)
}

fn sort_like_llama_cpp(model: &mut Model) {
    model
        .tensors
        .sort_by(|a, b| (block_of(&a.name), &a.name).cmp(&(block_of(&b.name), &b.name)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_llama_names() {
        let m = |n: &str| map_hf_name(n).unwrap().unwrap();
        assert_eq!(m("model.embed_tokens.weight").0, "token_embd.weight");
        assert_eq!(m("lm_head.weight").0, "output.weight");
        assert_eq!(
            m("model.layers.3.self_attn.o_proj.weight"),
            ("blk.3.attn_output.weight".into(), Role::AttnOutput, Some(3))
        );
        assert_eq!(
            m("model.layers.0.self_attn.q_proj.bias").0,
            "blk.0.attn_q.bias"
        );
        assert_eq!(m("model.layers.1.mlp.down_proj.weight").1, Role::FfnDown);
        assert!(map_hf_name("model.layers.0.self_attn.rotary_emb.inv_freq")
            .unwrap()
            .is_none());
        assert!(map_hf_name("transformer.h.0.attn.c_attn.weight").is_err());
    }

    #[test]
    fn orders_like_llama_cpp() {
        let mut names = vec![
            "token_embd.weight",
            "blk.10.attn_q.weight",
            "blk.2.ffn_up.weight",
            "output.weight",
            "blk.2.attn_k.weight",
        ];
        names.sort_by(|a, b| (block_of(a), a).cmp(&(block_of(b), b)));
        assert_eq!(
            names,
            vec![
                "output.weight",
                "token_embd.weight",
                "blk.2.attn_k.weight",
                "blk.2.ffn_up.weight",
                "blk.10.attn_q.weight"
            ]
        );
    }

    #[test]
    fn parses_gguf_roles() {
        assert_eq!(
            gguf_role("blk.12.ffn_down.weight"),
            (Role::FfnDown, Some(12))
        );
        assert_eq!(gguf_role("output_norm.weight"), (Role::Norm, None));
        assert_eq!(gguf_role("token_embd.weight"), (Role::Embedding, None));
    }
}
