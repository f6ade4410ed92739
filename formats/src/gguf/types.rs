//! Every tensor type ggml defines, with block geometry, so that a GGUF written
//! by any llama.cpp can be inspected (sizes and offsets checked) even when
//! kiln cannot decode the type. Removed ids (4, 5, 31-33, 36-38) are unknown.
//!
//! Invariant: (id, name, block size, type size) agree with ggml's
//! `ggml_type_traits` (ggml `src/ggml.c`) and `ggml-common.h` block structs.

/// (id, name, values per block, bytes per block).
pub const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

/// Geometry of any ggml type id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeInfo {
    pub id: u32,
    pub name: &'static str,
    pub block: u64,
    pub size: u64,
}

pub fn type_info(id: u32) -> Option<TypeInfo> {
    GGML_TYPES
        .iter()
        .find(|t| t.0 == id)
        .map(|&(id, name, block, size)| TypeInfo {
            id,
            name,
            block,
            size,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quant::GgmlType;

    #[test]
    fn agrees_with_quant_types() {
        for t in GgmlType::ALL {
            let info = type_info(t.id()).unwrap();
            assert_eq!(info.block, t.block_size() as u64, "{t}");
            assert_eq!(info.size, t.type_size() as u64, "{t}");
            assert!(info.name.eq_ignore_ascii_case(t.name()));
        }
        assert!(type_info(4).is_none());
    }
}
