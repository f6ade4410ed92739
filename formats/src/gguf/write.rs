//! GGUF v3 header serialization and layout.
//!
//! What must stay true: the layout (every tensor's offset, the data start and
//! the total file size) is fixed before any tensor is encoded, so the header
//! can be written first and each tensor streamed after it; offsets are
//! multiples of the alignment, tensors are padded with zeros to it, and the
//! same inputs give the same bytes.

use passes::{MetaValue, Metadata};
use quant::GgmlType;

/// One tensor as it will appear in the output.
#[derive(Debug, Clone, PartialEq)]
pub struct OutTensor {
    pub name: String,
    /// Row-major (PyTorch order) shape; written reversed (ggml `ne`).
    pub shape: Vec<usize>,
    pub ty: GgmlType,
}

impl OutTensor {
    /// Bytes of the encoded tensor (without padding).
    pub fn bytes(&self) -> u64 {
        let row = self.shape.last().copied().unwrap_or(1);
        let rows: usize = self.shape.iter().rev().skip(1).product();
        let row_bytes = self
            .ty
            .row_bytes(row)
            .expect("encodings are checked against row lengths before layout");
        (rows * row_bytes) as u64
    }
}

/// The fixed layout of an output file.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Header, metadata and tensor infos, padded to the alignment.
    pub header: Vec<u8>,
    /// Per tensor: absolute offset in the file and its unpadded byte count.
    pub tensors: Vec<(u64, u64)>,
    pub alignment: u64,
    pub total_bytes: u64,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(items) => {
            // An empty array has no element to take a type from; INT32 is
            // what gguf-py would have to pick too (it refuses empty arrays).
            let elem = items.first().map(type_id).unwrap_or(5);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}

/// Lay out a GGUF v3 file: serialize the header and fix every offset.
pub fn layout(metadata: &Metadata, tensors: &[OutTensor], alignment: u64) -> Layout {
    assert!(alignment.is_power_of_two());
    let mut h = Vec::new();
    h.extend_from_slice(super::read::GGUF_MAGIC);
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(metadata.0.len() as u64).to_le_bytes());
    for (k, v) in &metadata.0 {
        put_str(&mut h, k);
        h.extend_from_slice(&type_id(v).to_le_bytes());
        put_value(&mut h, v);
    }
    let mut placed = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut h, &t.name);
        h.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            h.extend_from_slice(&(d as u64).to_le_bytes());
        }
        h.extend_from_slice(&t.ty.id().to_le_bytes());
        h.extend_from_slice(&offset.to_le_bytes());
        let bytes = t.bytes();
        placed.push((offset, bytes));
        offset += bytes.div_ceil(alignment) * alignment;
    }
    let data_start = (h.len() as u64).div_ceil(alignment) * alignment;
    h.resize(data_start as usize, 0);
    Layout {
        header: h,
        tensors: placed
            .into_iter()
            .map(|(o, b)| (data_start + o, b))
            .collect(),
        alignment,
        total_bytes: data_start + offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn layout_round_trips_through_the_reader() {
        let mut md = Metadata::default();
        md.set("general.architecture", MetaValue::String("llama".into()));
        md.set(
            "x.arr",
            MetaValue::Array(vec![
                MetaValue::String("a".into()),
                MetaValue::String("bc".into()),
            ]),
        );
        md.set("x.f", MetaValue::F32(1.5));
        let tensors = vec![
            OutTensor {
                name: "a".into(),
                shape: vec![3, 64],
                ty: GgmlType::Q8_0,
            },
            OutTensor {
                name: "b".into(),
                shape: vec![5],
                ty: GgmlType::F32,
            },
        ];
        let l = layout(&md, &tensors, 32);
        let mut file = l.header.clone();
        file.resize(l.total_bytes as usize, 0);
        let g = crate::gguf::read::parse(Path::new("t.gguf"), &file).unwrap();
        assert_eq!(g.metadata, md);
        assert_eq!(g.tensors[0].ne, vec![64, 3]);
        assert_eq!(g.tensors[0].bytes, 3 * 68);
        assert_eq!(g.tensors[1].offset, l.tensors[1].0);
        assert_eq!(l.tensors[1].0 % 32, 0);
        assert_eq!(l.total_bytes, l.tensors[1].0 + 32);
    }
}
