//! `assign`: give every tensor the type a plan chose (kiln's planner, or any
//! per-tensor table), where `recipe` derives types from llama.cpp's rules.
//!
//! What must stay true:
//! - a tensor llama.cpp never quantizes (norms, 1-D tensors, routers: see
//!   `recipe::allows_quantization`) keeps its source type (F16/BF16 norms
//!   become F32), whatever the table says; every other tensor must be in the
//!   table with a type whose block divides its rows, or the pass refuses,
//!   naming the tensor;
//! - a tensor already quantized in the source is requantized only with
//!   `allow_requantize`;
//! - the metadata is stamped as llama-quantize stamps it (`recipe::stamp`),
//!   with `general.file_type` labelled as llama.cpp's model loader labels a
//!   file that lacks one (`llama_model_loader`: the most common tensor type,
//!   mapped to its ftype, the `_M` mixture for k-quants), counted here in
//!   parameters over the quantizable weights of the repeating layers: the
//!   embedding and output tensors, often kept wider, do not decide the label
//!   of a mixture (a 4.4-bpw plan whose layers are mostly q4_K is Q4_K_M, not
//!   Q8_0). A model without repeating layers counts every quantizable weight.
//!   llama.cpp reads the key only for display.

use std::collections::BTreeMap;

use quant::GgmlType;

use crate::error::PassError;
use crate::ir::{Model, SourceDType};

use super::recipe::{allows_quantization, kept_type, stamp, Ftype};
use super::{Context, Pass};

const NAME: &str = "assign";

/// The pass: types by GGUF tensor name.
#[derive(Debug, Clone, Default)]
pub struct AssignTypes {
    pub types: BTreeMap<String, GgmlType>,
    pub allow_requantize: bool,
}

/// The ftype llama.cpp's loader gives a file whose most common type is `ty`.
pub fn ftype_for(ty: GgmlType) -> Ftype {
    match ty {
        GgmlType::Q3K => Ftype::Q3KM,
        GgmlType::Q4K => Ftype::Q4KM,
        GgmlType::Q5K => Ftype::Q5KM,
        ty => Ftype::ALL
            .into_iter()
            .find(|f| f.default_type() == ty)
            .unwrap_or(Ftype::AllF32),
    }
}

/// Whether `assign` will take a type for this tensor (llama.cpp would quantize it).
pub fn is_quantizable(model: &Model, name: &str, shape: &[usize]) -> bool {
    let arch = model.arch.as_ref().map_or("", |a| a.family.as_str());
    allows_quantization(name, shape, arch, false)
}

impl Pass for AssignTypes {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, _cx: &Context<'_>) -> Result<(), PassError> {
        let arch = model
            .arch
            .as_ref()
            .map(|a| a.family.clone())
            .unwrap_or_default();
        // Parameters per type: (in repeating layers, anywhere).
        let mut by_type: BTreeMap<GgmlType, (u64, u64)> = BTreeMap::new();
        for t in &mut model.tensors {
            let ty = if allows_quantization(&t.name, &t.shape, &arch, false) {
                let ty = *self.types.get(&t.name).ok_or_else(|| {
                    PassError::new(NAME, Some(&t.name), "the plan has no type for it")
                })?;
                if ty.row_bytes(t.row_len()).is_none() {
                    return Err(PassError::new(
                        NAME,
                        Some(&t.name),
                        format!(
                            "{ty} needs rows that are a multiple of {}, and this tensor's rows are {} long",
                            ty.block_size(),
                            t.row_len()
                        ),
                    ));
                }
                if !ty.can_encode() {
                    return Err(PassError::new(
                        NAME,
                        Some(&t.name),
                        format!("kiln cannot encode {ty}"),
                    ));
                }
                if let SourceDType::Ggml(src) = t.source.dtype {
                    if src.is_quantized() && src != ty && !self.allow_requantize {
                        return Err(PassError::new(
                            NAME,
                            Some(&t.source_name),
                            format!("already quantized as {src}; converting it to {ty} requantizes and loses quality: pass --allow-requantize to do it anyway"),
                        ));
                    }
                }
                let n = t.n_elements() as u64;
                let e = by_type.entry(ty).or_insert((0, 0));
                e.0 += if t.layer.is_some() { n } else { 0 };
                e.1 += n;
                ty
            } else {
                kept_type(t)
            };
            t.encoding = Some(ty.into());
        }
        let in_layers = by_type.values().any(|c| c.0 > 0);
        let count = |c: &(u64, u64)| if in_layers { c.0 } else { c.1 };
        let dominant = by_type
            .iter()
            .max_by(|a, b| count(a.1).cmp(&count(b.1)).then(b.0.cmp(a.0)))
            .map_or(GgmlType::F32, |(t, _)| *t);
        stamp(&mut model.metadata, ftype_for(dominant));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Arch, MetaValue, Role, Source, TensorNode};

    fn node(name: &str, shape: &[usize]) -> TensorNode {
        TensorNode {
            name: name.into(),
            source_name: name.into(),
            shape: shape.to_vec(),
            role: Role::Other,
            layer: name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|l| l.parse().ok()),
            source: Source {
                file: 0,
                dtype: SourceDType::BF16,
                offset: 0,
                len: 2 * shape.iter().product::<usize>() as u64,
            },
            parts: Vec::new(),
            transform: None,
            encoding: None,
            notes: vec![],
        }
    }

    fn model() -> Model {
        Model {
            arch: Some(Arch {
                family: "llama".into(),
                ..Arch::default()
            }),
            tensors: vec![
                node("token_embd.weight", &[64, 256]),
                node("blk.0.attn_norm.weight", &[256]),
                node("blk.0.attn_q.weight", &[256, 256]),
                node("blk.0.ffn_down.weight", &[256, 96]),
            ],
            ..Model::default()
        }
    }

    #[test]
    fn assigns_table_types_keeps_norms_and_stamps_the_dominant_ftype() {
        let mut m = model();
        let pass = AssignTypes {
            types: [
                ("token_embd.weight", GgmlType::Q8_0),
                ("blk.0.attn_q.weight", GgmlType::Q4K),
                ("blk.0.ffn_down.weight", GgmlType::Q5_0),
            ]
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect(),
            allow_requantize: false,
        };
        pass.run(&mut m, &Context::default()).unwrap();
        let ty: Vec<_> = m.tensors.iter().map(|t| t.ggml_type().unwrap()).collect();
        assert_eq!(
            ty,
            vec![GgmlType::Q8_0, GgmlType::F32, GgmlType::Q4K, GgmlType::Q5_0]
        );
        // q4_K has the most parameters in the layers (256x256 vs 256x96).
        assert_eq!(
            m.metadata.get("general.file_type"),
            Some(&MetaValue::U32(Ftype::Q4KM.id()))
        );
    }

    /// A mixture whose wide embedding holds most bytes is labelled by its
    /// layers, as llama.cpp labels the recipe it resembles.
    #[test]
    fn the_label_follows_the_layers_not_the_embedding() {
        let mut m = model();
        m.tensors[0].shape = vec![4096, 256];
        m.tensors[0].source.len = 2 * 4096 * 256;
        let pass = AssignTypes {
            types: [
                ("token_embd.weight", GgmlType::Q8_0),
                ("blk.0.attn_q.weight", GgmlType::Q4K),
                ("blk.0.ffn_down.weight", GgmlType::Q4_0),
            ]
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect(),
            allow_requantize: false,
        };
        pass.run(&mut m, &Context::default()).unwrap();
        assert_eq!(
            m.metadata.get("general.file_type"),
            Some(&MetaValue::U32(Ftype::Q4KM.id()))
        );
        // Without repeating layers every quantizable weight counts.
        let mut m = model();
        m.tensors.truncate(1);
        let pass = AssignTypes {
            types: [("token_embd.weight".to_string(), GgmlType::Q6K)].into(),
            allow_requantize: false,
        };
        pass.run(&mut m, &Context::default()).unwrap();
        assert_eq!(
            m.metadata.get("general.file_type"),
            Some(&MetaValue::U32(Ftype::Q6K.id()))
        );
    }

    #[test]
    fn refuses_a_missing_tensor_and_a_type_that_does_not_fit() {
        let mut m = model();
        let err = AssignTypes::default()
            .run(&mut m, &Context::default())
            .unwrap_err();
        assert!(err.to_string().contains("token_embd.weight"), "{err}");
        let mut m = model();
        let pass = AssignTypes {
            types: [
                ("token_embd.weight", GgmlType::Q8_0),
                ("blk.0.attn_q.weight", GgmlType::Q4K),
                ("blk.0.ffn_down.weight", GgmlType::Q4K),
            ]
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect(),
            allow_requantize: false,
        };
        let err = pass
            .run(&mut m, &Context::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blk.0.ffn_down.weight") && err.contains("96"),
            "{err}"
        );
    }
}
