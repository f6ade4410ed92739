//! `importance`: attach importance vectors (an imatrix, read from a file or
//! collected over a text) to the model, once, checked against the tensors,
//! so the emitter and the planner read them from `Model::importance` instead
//! of each gluing a map by hand.
//!
//! What must stay true (llama-quantize's rules, `llama_model_quantize_impl`):
//! - a tensor whose encoding is decided gets a vector only if it is
//!   quantized to a type other than its source's (a copy needs none); a
//!   tensor not yet decided (the planner measures every candidate) gets one
//!   whenever the imatrix has an entry for it;
//! - a vector must hold one weight per input column (times the experts of
//!   a 3-D expert tensor), or the pass refuses, naming the tensor; a wrong
//!   size for the token embedding is tolerated (llama.cpp never uses it);
//! - the provenance (file, dataset, counts) travels with the vectors, for the
//!   `quantize.imatrix.*` keys a GGUF records.

use std::collections::BTreeMap;

use crate::error::PassError;
use crate::ir::Model;

use super::{Context, Pass};

const NAME: &str = "importance";

/// Where importance vectors came from (what llama-quantize records).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Provenance {
    /// The imatrix path as the user gave it.
    pub file: String,
    /// The first dataset named in the imatrix.
    pub dataset: Option<String>,
    /// Entries in the imatrix (after filtering).
    pub entries: usize,
    /// Calibration chunks (0 when unknown).
    pub chunks: i64,
}

/// Importance vectors attached to a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Importance {
    /// By tensor name: one weight per input column (`experts x row_len` for
    /// 3-D expert tensors), checked against the tensor's shape.
    pub vectors: BTreeMap<String, Vec<f32>>,
    pub provenance: Provenance,
}

impl Importance {
    /// The vector row `r` of tensor `name` (with `shape`) uses, if any.
    pub fn for_row(&self, name: &str, shape: &[usize], r: usize) -> Option<&[f32]> {
        self.vectors.get(name).map(|v| row_importance(v, shape, r))
    }
}

/// The pass: every vector of the imatrix (by tensor name), and its provenance.
#[derive(Debug, Clone, Default)]
pub struct AttachImportance {
    pub vectors: BTreeMap<String, Vec<f32>>,
    pub provenance: Provenance,
}

impl Pass for AttachImportance {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, _cx: &Context<'_>) -> Result<(), PassError> {
        let mut vectors = BTreeMap::new();
        for t in &model.tensors {
            if let Some(ty) = t.ggml_type() {
                if !ty.is_quantized() || ty == t.source.dtype.ggml() {
                    continue;
                }
            }
            let v = for_tensor(&self.vectors, &t.name, &t.shape)
                .map_err(|e| PassError::new(NAME, Some(&t.name), e))?;
            if let Some(v) = v {
                vectors.insert(t.name.clone(), v.to_vec());
            }
        }
        model.importance = Some(Importance {
            vectors,
            provenance: self.provenance.clone(),
        });
        Ok(())
    }
}

/// The importance vector llama-quantize uses for one tensor being quantized:
/// `None` when the imatrix has no entry for it (llama.cpp quantizes it
/// without one), or when the entry's size is wrong for `token_embd` (always
/// tolerated); an error when the size is wrong for any other tensor. The size
/// must be the row length times the number of experts (`ne[0] * ne[2]`); for a
/// 3-D tensor, rows of expert `e` use `[e * row_len, (e + 1) * row_len)`.
pub fn for_tensor<'a>(
    importance: &'a BTreeMap<String, Vec<f32>>,
    tensor: &str,
    shape: &[usize],
) -> Result<Option<&'a [f32]>, String> {
    let Some(v) = importance.get(tensor) else {
        return Ok(None);
    };
    let row_len = shape.last().copied().unwrap_or(1);
    let experts = if shape.len() >= 3 {
        shape[shape.len() - 3]
    } else {
        1
    };
    if Some(v.len()) == row_len.checked_mul(experts) {
        return Ok(Some(v));
    }
    if tensor == "token_embd.weight" || tensor == "per_layer_token_embd.weight" {
        return Ok(None);
    }
    Err(format!(
        "imatrix size {} is different from tensor size {} for {tensor}",
        v.len(),
        row_len * experts
    ))
}

/// The part of a tensor's importance vector (as [`for_tensor`] returns it)
/// that row `r` uses: the whole vector for a 2-D tensor; for a 3-D expert
/// tensor of shape `[experts, rows, row_len]`, expert `r / rows`'s slice
/// `[e * row_len, (e + 1) * row_len)`.
pub fn row_importance<'a>(importance: &'a [f32], shape: &[usize], r: usize) -> &'a [f32] {
    let row_len = shape.last().copied().unwrap_or(1).max(1);
    if importance.len() == row_len || shape.len() < 3 {
        return &importance[..row_len.min(importance.len())];
    }
    let rows_per_expert = shape[shape.len() - 2].max(1);
    let e = r / rows_per_expert;
    &importance[e * row_len..(e + 1) * row_len]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Source, SourceDType, TensorNode};
    use crate::Role;
    use quant::GgmlType;

    fn node(name: &str, shape: &[usize], enc: Option<GgmlType>) -> TensorNode {
        let n: usize = shape.iter().product();
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
                len: 2 * n as u64,
            },
            parts: Vec::new(),
            transform: None,
            encoding: enc.map(Into::into),
            notes: Vec::new(),
        }
    }

    fn pass(entries: &[(&str, usize)]) -> AttachImportance {
        AttachImportance {
            vectors: entries
                .iter()
                .map(|&(n, len)| (n.to_string(), (0..len).map(|i| i as f32).collect()))
                .collect(),
            provenance: Provenance {
                file: "im.gguf".into(),
                ..Provenance::default()
            },
        }
    }

    #[test]
    fn attaches_only_what_is_quantized_and_checks_sizes() {
        let mut m = Model {
            tensors: vec![
                node("a.weight", &[4, 32], Some(GgmlType::Q8_0)),
                node("b.weight", &[4, 32], Some(GgmlType::F16)),
                node("c.weight", &[4, 32], None),
                node("token_embd.weight", &[4, 32], Some(GgmlType::Q8_0)),
            ],
            ..Model::default()
        };
        let p = pass(&[
            ("a.weight", 32),
            ("b.weight", 7),
            ("c.weight", 32),
            ("token_embd.weight", 5),
        ]);
        p.run(&mut m, &Context::default()).unwrap();
        let got = m.importance.as_ref().unwrap();
        let names: Vec<&str> = got.vectors.keys().map(String::as_str).collect();
        // b is a copy (F16 -> F16: its wrong size does not matter), the
        // embedding's wrong size is tolerated, c is undecided: measured.
        assert_eq!(names, ["a.weight", "c.weight"]);
        assert_eq!(got.provenance.file, "im.gguf");

        let bad = pass(&[("a.weight", 31)]);
        let err = bad.run(&mut m, &Context::default()).unwrap_err();
        assert!(
            err.to_string().contains("a.weight") && err.to_string().contains("31"),
            "{err}"
        );
    }

    #[test]
    fn expert_rows_use_their_slice() {
        let v: Vec<f32> = (0..12).map(|i| i as f32).collect();
        // 3 experts x 2 rows x 4 columns
        assert_eq!(row_importance(&v, &[3, 2, 4], 0), &v[0..4]);
        assert_eq!(row_importance(&v, &[3, 2, 4], 3), &v[4..8]);
        assert_eq!(row_importance(&v, &[3, 2, 4], 5), &v[8..12]);
        assert_eq!(row_importance(&v[..4], &[2, 4], 1), &v[0..4]);
    }
}
