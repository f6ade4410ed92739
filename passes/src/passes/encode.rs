//! `encode`: choose every tensor's output encoding for a uniform target type,
//! as llama.cpp does: 1-D tensors and norms stay F32; a row length that the
//! type's block does not divide falls back (llama.cpp's rule, recorded as a
//! note); a tensor that is already block-quantized in the source is
//! requantized only when the user allows it.
//!
//! Also stamps `general.file_type` and `general.quantization_version`.

use quant::GgmlType;

use crate::error::PassError;
use crate::ir::{MetaValue, Model, Role, SourceDType};

use super::Pass;

const NAME: &str = "encode";

/// A uniform encoding request.
#[derive(Debug, Clone, Copy)]
pub struct Encode {
    pub ty: GgmlType,
    /// Dequantize and requantize tensors that are already block-quantized.
    pub allow_requantize: bool,
}

/// llama.cpp's fallback when `ty`'s block does not divide `row_len`
/// (`llama_tensor_get_type` for k-quants; F16 for everything else).
pub fn fallback(ty: GgmlType, row_len: usize) -> GgmlType {
    if ty.row_bytes(row_len).is_some() {
        return ty;
    }
    let next = match ty {
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if next.row_bytes(row_len).is_some() {
        next
    } else {
        GgmlType::F16
    }
}

/// llama.cpp's `general.file_type` (`enum llama_ftype`) for a uniform type.
pub fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2K => 10,
        GgmlType::Q3K => 12,
        GgmlType::Q4K => 15,
        GgmlType::Q5K => 17,
        GgmlType::Q6K => 18,
        GgmlType::BF16 => 32,
        GgmlType::IQ4NL => 25,
        GgmlType::IQ4XS => 30,
    }
}

impl Pass for Encode {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model) -> Result<(), PassError> {
        if !self.ty.can_encode() {
            return Err(PassError::new(
                NAME,
                None,
                format!("kiln cannot encode {} yet", self.ty),
            ));
        }
        let mut fallbacks = 0;
        for t in &mut model.tensors {
            let keep_f32 = t.shape.len() <= 1 || t.role == Role::Norm;
            let mut ty = if keep_f32 {
                GgmlType::F32
            } else {
                fallback(self.ty, t.row_len())
            };
            if ty != self.ty && !keep_f32 {
                fallbacks += 1;
                t.notes.push(format!(
                    "row length {} is not a multiple of {}'s block of {}: written as {ty}",
                    t.row_len(),
                    self.ty,
                    self.ty.block_size()
                ));
            }
            if let SourceDType::Ggml(src) = t.source.dtype {
                if src != ty && !self.allow_requantize {
                    return Err(PassError::new(
                        NAME,
                        Some(&t.source_name),
                        format!("already quantized as {src}; converting it to {ty} requantizes and loses quality: pass --allow-requantize to do it anyway"),
                    ));
                }
                if keep_f32 && src != GgmlType::F32 {
                    // A quantized 1-D tensor would be odd; keep what the source has.
                    ty = src;
                }
            }
            t.encoding = Some(ty);
        }
        if fallbacks > 0 {
            model.notes.push(format!(
                "{fallbacks} tensor(s) fell back to another type because of their row length"
            ));
        }
        let md = &mut model.metadata;
        md.set("general.quantization_version", MetaValue::U32(2));
        md.set("general.file_type", MetaValue::U32(file_type(self.ty)));
        md.remove("general.alignment");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallbacks_follow_llama_cpp() {
        assert_eq!(fallback(GgmlType::Q8_0, 704), GgmlType::Q8_0);
        assert_eq!(fallback(GgmlType::Q8_0, 100), GgmlType::F16);
        assert_eq!(fallback(GgmlType::Q4K, 576), GgmlType::Q5_0);
        assert_eq!(fallback(GgmlType::Q6K, 576), GgmlType::Q8_0);
        assert_eq!(fallback(GgmlType::Q2K, 576), GgmlType::Q4_0);
        assert_eq!(fallback(GgmlType::Q4K, 100), GgmlType::F16);
    }
}
