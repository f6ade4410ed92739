//! The GGUF container: one `.gguf` file, or llama.cpp's split layout when
//! the layout pass cut the model into shards (`Model::shards`).
//!
//! What must stay true:
//! - tensors are aligned to [`ALIGNMENT`] (GGUF's default) and padded with
//!   zeros to it, the header (key/values from
//!   [`key_values`](super::metadata::key_values), tensor infos) first;
//! - split files follow `gguf-split`: `PREFIX-00001-of-0000N.gguf`, the first
//!   holding all metadata, every one holding `split.no` (u16, 0-based),
//!   `split.count` (u16) and `split.tensors.count` (i32, tensors in all
//!   splits), appended after the other keys;
//! - a row is encoded by `quant` as the tensor's ggml type, or copied when
//!   that is the source's own type.

use std::borrow::Cow;
use std::ops::Range;
use std::path::Path;

use passes::{MetaValue, Metadata, Model, TensorNode};
use quant::GgmlType;

use super::metadata::key_values;
use super::write::{layout, OutTensor};
use crate::error::{Error, Result};
use crate::write::{Container, FileLayout, Placement, Unit};

/// Output alignment (GGUF default).
pub const ALIGNMENT: u64 = 32;

/// The split keys, removed from carried metadata and set anew per file.
const SPLIT_KEYS: [&str; 3] = ["split.no", "split.count", "split.tensors.count"];

/// GGUF output named `file_name` (a split's files are named after its stem,
/// the name without `.gguf`).
#[derive(Debug, Clone)]
pub struct Gguf {
    pub file_name: String,
}

impl Gguf {
    pub fn new(file_name: &str) -> Gguf {
        Gguf {
            file_name: file_name.to_string(),
        }
    }
}

/// The file name of split `i` (0-based) of `n`, as llama.cpp's `llama_split_path`.
pub fn split_name(prefix: &str, i: usize, n: usize) -> String {
    format!("{prefix}-{:05}-of-{:05}.gguf", i + 1, n)
}

impl Container for Gguf {
    fn layout(&self, model: &Model) -> Result<Vec<FileLayout>> {
        let kv = key_values(model);
        let n = model.shards.len();
        if n == 0 {
            return Ok(vec![file_layout(
                &self.file_name,
                &kv,
                model,
                0..model.tensors.len(),
            )?]);
        }
        let covered = model.shards.first().map(|r| r.start) == Some(0)
            && model.shards.last().map(|r| r.end) == Some(model.tensors.len())
            && model.shards.windows(2).all(|w| w[0].end == w[1].start)
            && model.shards.iter().all(|r| !r.is_empty());
        if !covered {
            return Err(Error::output(
                Path::new(&self.file_name),
                format!(
                    "shards {:?} do not cut the {} tensors into contiguous non-empty ranges",
                    model.shards,
                    model.tensors.len()
                ),
            ));
        }
        let stem = self
            .file_name
            .strip_suffix(".gguf")
            .unwrap_or(&self.file_name);
        let mut kv = Some(kv);
        model
            .shards
            .iter()
            .enumerate()
            .map(|(i, r)| {
                // The first split holds all metadata, the others the split keys only.
                let mut md = kv.take().map(Cow::into_owned).unwrap_or_default();
                for key in SPLIT_KEYS {
                    md.remove(key);
                }
                md.set("split.no", MetaValue::U16(i as u16));
                md.set("split.count", MetaValue::U16(n as u16));
                md.set(
                    "split.tensors.count",
                    MetaValue::I32(model.tensors.len() as i32),
                );
                file_layout(&split_name(stem, i, n), &md, model, r.clone())
            })
            .collect()
    }

    fn copies_source(&self, t: &TensorNode, _piece: usize) -> bool {
        t.ggml_type() == Some(t.source.dtype.ggml())
    }

    fn encode_row(
        &self,
        t: &TensorNode,
        _piece: usize,
        values: &[f32],
        dst: &mut [u8],
        importance: Option<&[f32]>,
    ) {
        let ty = t.ggml_type().expect("laid out, so a ggml type");
        quant::quantize_rows(ty, values, dst, values.len(), importance);
    }
}

/// The layout of one GGUF file holding `model.tensors[range]`.
fn file_layout(
    name: &str,
    md: &Metadata,
    model: &Model,
    range: Range<usize>,
) -> Result<FileLayout> {
    let tensors = &model.tensors[range.clone()];
    let mut out = Vec::with_capacity(tensors.len());
    let mut row_bytes = Vec::with_capacity(tensors.len());
    for t in tensors {
        if let Some(e) = t.encoding.filter(|_| t.ggml_type().is_none()) {
            return Err(Error::unsupported(
                Path::new(name),
                Some(&t.name),
                format!("GGUF holds ggml types only, and this tensor's encoding is {e}"),
            ));
        }
        let fits = |ty: GgmlType| ty.row_bytes(t.row_len()).map(|r| (ty, r));
        let (ty, row) = t.ggml_type().and_then(fits).ok_or_else(|| {
            Error::unsupported(
                Path::new(name),
                Some(&t.name),
                "no encoding that fits its rows: the encoding pass runs before the writer",
            )
        })?;
        out.push(OutTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            ty,
        });
        row_bytes.push(row);
    }
    let l = layout(md, &out, ALIGNMENT);
    let placements = l
        .tensors
        .iter()
        .zip(&row_bytes)
        .enumerate()
        .map(|(k, (&(offset, bytes), &row_bytes))| Placement {
            tensor: range.start + k,
            piece: 0,
            offset,
            row_bytes,
            unit: Unit::ROW,
            padding: bytes.div_ceil(ALIGNMENT) * ALIGNMENT - bytes,
        })
        .collect();
    Ok(FileLayout {
        name: name.to_string(),
        header: l.header,
        placements,
        total_bytes: l.total_bytes,
    })
}

/// Total encoded bytes per output type, for summaries.
pub fn bytes_by_type(model: &Model, files: &[FileLayout]) -> Vec<(GgmlType, u64, usize)> {
    let mut v: Vec<(GgmlType, u64, usize)> = Vec::new();
    for p in files.iter().flat_map(|f| &f.placements) {
        let t = &model.tensors[p.tensor];
        let ty = t.ggml_type().expect("laid out, so a ggml type");
        let b = p.bytes(t);
        match v.iter_mut().find(|(x, _, _)| *x == ty) {
            Some(e) => {
                e.1 += b;
                e.2 += 1;
            }
            None => v.push((ty, b, 1)),
        }
    }
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::error::Error;
    use crate::mmap::MappedFile;
    use crate::write::{write, WriteOptions};
    use passes::{Role, Source, SourceDType, TensorNode};

    /// Seeded values in about [-2, 2), a few exactly zero.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 97 == 0 {
                    0.0
                } else {
                    (x >> 40) as f32 / (1u64 << 22) as f32 - 2.0
                }
            })
            .collect()
    }

    /// An F32 input file holding `shapes`' tensors back to back, the model
    /// reading it with the given encodings, and each tensor's values.
    fn model(dir: &Path, tensors: &[(&str, &[usize], GgmlType)]) -> (Model, Vec<Vec<f32>>) {
        let input = dir.join("in.bin");
        let mut bytes = Vec::new();
        let mut nodes = Vec::new();
        let mut data = Vec::new();
        for (i, &(name, shape, ty)) in tensors.iter().enumerate() {
            let v = values(shape.iter().product(), i as u64 + 1);
            let offset = bytes.len() as u64;
            bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()));
            nodes.push(TensorNode {
                name: name.to_string(),
                source_name: name.to_string(),
                shape: shape.to_vec(),
                role: Role::Other,
                layer: None,
                source: Source {
                    file: 0,
                    dtype: SourceDType::F32,
                    offset,
                    len: bytes.len() as u64 - offset,
                },
                parts: Vec::new(),
                transform: None,
                encoding: Some(ty.into()),
                notes: Vec::new(),
            });
            data.push(v);
        }
        std::fs::write(&input, &bytes).unwrap();
        let model = Model {
            files: vec![input],
            tensors: nodes,
            metadata: Metadata(vec![(
                "general.name".into(),
                MetaValue::String("emit-test".into()),
            )]),
            ..Model::default()
        };
        (model, data)
    }

    /// What the file must hold: the header, then each tensor encoded whole
    /// into a fresh buffer, padded.
    fn expected(model: &Model, data: &[Vec<f32>], layout: &FileLayout) -> Vec<u8> {
        let mut want = layout.header.clone();
        for (t, v) in model.tensors.iter().zip(data) {
            let ty = t.ggml_type().unwrap();
            let mut enc = vec![0u8; ty.row_bytes(t.row_len()).unwrap() * t.n_rows()];
            quant::quantize_rows(ty, v, &mut enc, t.row_len(), None);
            want.extend_from_slice(&enc);
            want.resize(
                want.len().div_ceil(ALIGNMENT as usize) * ALIGNMENT as usize,
                0,
            );
        }
        want
    }

    /// Rows encoded in place that do not fill blocks evenly, one row too
    /// long for a block (encoded aside, then copied), a plain copy of long
    /// rows, and padding: the same bytes as encoding each tensor whole, with
    /// direct I/O and without.
    #[test]
    fn streams_the_bytes_of_whole_tensor_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let (model, data) = model(
            dir.path(),
            &[
                ("blk.0.attn_q.weight", &[600, 4128], GgmlType::Q8_0),
                ("output_norm.weight", &[33], GgmlType::F32),
                ("blk.0.attn_k.weight", &[7, 4128], GgmlType::Q4_0),
                ("blk.0.ffn_down.weight", &[1, 2_000_000], GgmlType::Q8_0),
                ("token_embd.weight", &[3, 600_000], GgmlType::F32),
                ("blk.0.attn_v.weight", &[64, 512], GgmlType::Q4K),
            ],
        );
        // Longer than a write block: encoded aside.
        assert!(GgmlType::Q8_0.row_bytes(2_000_000).unwrap() > 2 << 20);
        let maps = [MappedFile::open(&model.files[0]).unwrap()];
        for direct in [true, false] {
            let gguf = Gguf::new(&format!("out-{direct}.gguf"));
            let files = gguf.layout(&model).unwrap();
            let want = expected(&model, &data, &files[0]);
            let cancel = AtomicBool::new(false);
            let opts = WriteOptions::default();
            let written = crate::write::engine::write_with(
                &model,
                &maps,
                &gguf,
                &files,
                dir.path(),
                opts,
                &|_| {},
                &cancel,
                direct,
            )
            .unwrap();
            assert_eq!(written.len(), 1);
            let got = std::fs::read(dir.path().join(&written[0].name)).unwrap();
            assert_eq!(got.len() as u64, files[0].total_bytes, "direct: {direct}");
            assert_eq!(written[0].bytes, files[0].total_bytes);
            assert!(got == want, "direct: {direct}: bytes differ");
        }
    }

    #[test]
    fn cancel_is_interrupted_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (model, _) = model(dir.path(), &[("a.weight", &[64, 4096], GgmlType::Q8_0)]);
        let maps = [MappedFile::open(&model.files[0]).unwrap()];
        let gguf = Gguf::new("out.gguf");
        let files = gguf.layout(&model).unwrap();
        let cancel = AtomicBool::new(true);
        let r = write(
            &model,
            &maps,
            &gguf,
            &files,
            dir.path(),
            WriteOptions::default(),
            &|_| {},
            &cancel,
        );
        assert!(matches!(r, Err(Error::Interrupted)), "{r:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("in.bin")]);
    }

    #[test]
    fn split_names_follow_llama_cpp() {
        assert_eq!(split_name("m", 0, 3), "m-00001-of-00003.gguf");
        assert_eq!(split_name("m", 2, 3), "m-00003-of-00003.gguf");
    }

    /// Shards become gguf-split files: all metadata in the first, the split
    /// keys (u16, u16, i32) last in every one, each file's own tensors; and
    /// together the same tensor bytes as the single file.
    #[test]
    fn shards_are_written_in_the_split_layout() {
        let dir = tempfile::tempdir().unwrap();
        let (mut model, _) = model(
            dir.path(),
            &[
                ("a.weight", &[4, 64], GgmlType::Q8_0),
                ("b.weight", &[3, 32], GgmlType::F32),
                ("c.weight", &[2, 256], GgmlType::Q4K),
            ],
        );
        model.metadata.set("split.count", MetaValue::U16(9));
        let maps = [MappedFile::open(&model.files[0]).unwrap()];
        let single = Gguf::new("m.gguf").layout(&model).unwrap();
        model.shards = vec![0..1, 1..3];
        let gguf = Gguf::new("m.gguf");
        let files = gguf.layout(&model).unwrap();
        let cancel = AtomicBool::new(false);
        let opts = WriteOptions::default();
        let written = write(
            &model,
            &maps,
            &gguf,
            &files,
            dir.path(),
            opts,
            &|_| {},
            &cancel,
        )
        .unwrap();
        let names: Vec<&str> = written.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]);
        let mut tensors = Vec::new();
        for (i, w) in written.iter().enumerate() {
            let path = dir.path().join(&w.name);
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len() as u64, w.bytes);
            let g = crate::gguf::read::parse(&path, &bytes).unwrap();
            let keys: Vec<&str> = g.metadata.0.iter().map(|(k, _)| k.as_str()).collect();
            let first: &[&str] = if i == 0 { &["general.name"] } else { &[] };
            assert_eq!(&keys[..keys.len() - 3], first);
            assert_eq!(&keys[keys.len() - 3..], SPLIT_KEYS);
            assert_eq!(g.metadata.get("split.no"), Some(&MetaValue::U16(i as u16)));
            assert_eq!(g.metadata.get("split.count"), Some(&MetaValue::U16(2)));
            assert_eq!(
                g.metadata.get("split.tensors.count"),
                Some(&MetaValue::I32(3))
            );
            for t in &g.tensors {
                let at = t.offset as usize;
                tensors.push((t.name.clone(), bytes[at..at + t.bytes as usize].to_vec()));
            }
        }
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.weight", "b.weight", "c.weight"]);
        let sizes: Vec<u64> = tensors.iter().map(|(_, b)| b.len() as u64).collect();
        let want: Vec<u64> = single[0]
            .placements
            .iter()
            .map(|p| p.bytes(&model.tensors[p.tensor]))
            .collect();
        assert_eq!(sizes, want);

        model.shards = vec![0..2, 1..3];
        let e = gguf.layout(&model).unwrap_err().to_string();
        assert!(e.contains("contiguous"), "{e}");
    }
}
