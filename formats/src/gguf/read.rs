//! GGUF reader (versions 2 and 3), hostile until checked.
//!
//! What must stay true: every count and length is compared with the bytes
//! left in the file before anything is allocated from it; every tensor's
//! byte range lies inside the data section, is aligned, and overlaps no other;
//! errors name the file, the key or tensor, and the numbers. See ggml
//! `docs/gguf.md` and `src/gguf.cpp` for the format.

use std::collections::HashSet;
use std::path::Path;

use passes::printable;
use passes::{MetaValue, Metadata};

use super::types::{type_info, TypeInfo};
use crate::error::{Error, Result};

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// ggml's `GGML_MAX_NAME` (including the terminating NUL).
pub const MAX_NAME: usize = 64;
/// Nesting depth of arrays accepted in metadata.
const MAX_ARRAY_DEPTH: usize = 2;
/// Most metadata array elements a file may hold, all arrays together. Each
/// is held as a `MetaValue` (32 bytes whatever its GGUF type), so this caps
/// the metadata's memory at about 64 MiB plus its strings' bytes (which
/// the file holds); a 262144-token vocabulary with scores, types and merges
/// is about 1.3 million.
pub const MAX_METADATA_ELEMENTS: u64 = 1 << 21;

/// One tensor info of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    pub name: String,
    /// Dimensions, innermost first (ggml `ne`).
    pub ne: Vec<u64>,
    pub ty: TypeInfo,
    /// Absolute byte offset in the file.
    pub offset: u64,
    pub bytes: u64,
}

impl GgufTensor {
    /// The row-major (PyTorch order) shape.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }
}

#[derive(Debug, Clone)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<GgufTensor>,
    pub alignment: u64,
    pub data_start: u64,
}

struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
    /// Metadata array elements read so far (see [`MAX_METADATA_ELEMENTS`]).
    elements: u64,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn err(&self, what: &str) -> Error {
        Error::malformed(
            self.path,
            None,
            format!(
                "truncated GGUF: {} at byte {} runs past the end ({} bytes)",
                printable(what),
                self.pos,
                self.bytes.len()
            ),
        )
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(self.err(what));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        if n > self.left() as u64 {
            return Err(Error::malformed(
                self.path,
                None,
                format!(
                    "{}: string length {n} at byte {} exceeds the {} bytes left",
                    printable(what),
                    self.pos - 8,
                    self.left()
                ),
            ));
        }
        let raw = self.take(n as usize, what)?;
        Ok(String::from_utf8_lossy(raw).into_owned())
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.u8(key)?),
            1 => MetaValue::I8(self.u8(key)? as i8),
            2 => MetaValue::U16(self.u16(key)?),
            3 => MetaValue::I16(self.u16(key)? as i16),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(self.u32(key)? as i32),
            6 => MetaValue::F32(f32::from_bits(self.u32(key)?)),
            7 => MetaValue::Bool(self.u8(key)? != 0),
            8 => MetaValue::String(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::malformed(
                        self.path,
                        None,
                        format!(
                            "key `{}`: arrays nested deeper than {MAX_ARRAY_DEPTH}",
                            printable(key)
                        ),
                    ));
                }
                let elem = self.u32(key)?;
                let count = self.u64(key)?;
                let min = min_value_size(elem).ok_or_else(|| {
                    Error::malformed(
                        self.path,
                        None,
                        format!(
                            "key `{}`: unknown array element type {elem}",
                            printable(key)
                        ),
                    )
                })?;
                if count.saturating_mul(min) > self.left() as u64 {
                    return Err(Error::malformed(
                        self.path,
                        None,
                        format!(
                            "key `{}`: metadata array of {count} elements needs at least {} bytes, more than the {} bytes left of the {}-byte file",
                            printable(key),
                            count.saturating_mul(min),
                            self.left(),
                            self.bytes.len()
                        ),
                    ));
                }
                self.elements = self.elements.saturating_add(count);
                if self.elements > MAX_METADATA_ELEMENTS {
                    return Err(Error::malformed(
                        self.path,
                        None,
                        format!(
                            "key `{}`: metadata array of {count} elements brings the file's array elements to {}, above kiln's cap of {MAX_METADATA_ELEMENTS} (MAX_METADATA_ELEMENTS)",
                            printable(key),
                            self.elements
                        ),
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(self.u64(key)? as i64),
            12 => MetaValue::F64(f64::from_bits(self.u64(key)?)),
            other => {
                return Err(Error::malformed(
                    self.path,
                    None,
                    format!("key `{}`: unknown value type {other}", printable(key)),
                ));
            }
        })
    }
}

/// The fewest bytes a value of GGUF type `ty` can take.
fn min_value_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

/// Parse and validate a GGUF file held in `bytes`.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<GgufFile> {
    let mut c = Cursor {
        path,
        bytes,
        pos: 0,
        elements: 0,
    };
    let magic = c.take(4, "magic").map_err(|_| {
        Error::malformed(
            path,
            None,
            format!(
                "not a GGUF file: {} bytes, too short for the magic",
                bytes.len()
            ),
        )
    })?;
    if magic != GGUF_MAGIC {
        return Err(Error::malformed(
            path,
            None,
            format!(
                "bad magic {:02x?}: not a GGUF file (expected \"GGUF\")",
                magic
            ),
        ));
    }
    let version = c.u32("version")?;
    if version != 2 && version != 3 {
        return Err(Error::unsupported(
            path,
            None,
            format!("unknown GGUF version {version} (kiln reads versions 2 and 3)"),
        ));
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    // A KV takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at
    // least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
    let need = n_kv
        .checked_mul(13)
        .zip(n_tensors.checked_mul(24))
        .and_then(|(a, b)| a.checked_add(b));
    if need.is_none_or(|n| n > c.left() as u64) {
        return Err(Error::malformed(
            path,
            None,
            format!(
                "header declares {n_tensors} tensors and {n_kv} metadata keys, more than the file's {} bytes could hold",
                bytes.len()
            ),
        ));
    }

    let mut metadata = Metadata::default();
    // Hashed: a linear scan per key is quadratic (200k keys took 69 s).
    let mut keys: HashSet<String> = HashSet::new();
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let ty = c.u32(&key)?;
        let value = c.value(ty, &key, 0)?;
        if !keys.insert(key.clone()) {
            return Err(Error::malformed(
                path,
                None,
                format!("duplicate metadata key `{}`", printable(&key)),
            ));
        }
        metadata.0.push((key, value));
    }
    drop(keys);

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(MetaValue::U32(a)) if *a != 0 && a.is_power_of_two() => *a as u64,
        Some(v) => {
            return Err(Error::malformed(
                path,
                None,
                format!("general.alignment {v:?} is not a non-zero power of two u32"),
            ));
        }
    };

    let mut infos = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        if name.len() >= MAX_NAME {
            return Err(Error::malformed(
                path,
                Some(&name),
                format!(
                    "name is {} bytes; ggml allows at most {}",
                    name.len(),
                    MAX_NAME - 1
                ),
            ));
        }
        let n_dims = c.u32(&name)?;
        if n_dims > MAX_DIMS {
            return Err(Error::malformed(
                path,
                Some(&name),
                format!("{n_dims} dimensions; ggml allows at most {MAX_DIMS}"),
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(c.u64(&name)?);
        }
        let type_id = c.u32(&name)?;
        let offset = c.u64(&name)?;
        infos.push((name, ne, type_id, offset));
    }
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let data_len = (bytes.len() as u64).saturating_sub(data_start);

    let mut tensors: Vec<GgufTensor> = Vec::with_capacity(infos.len());
    // Hashed: a linear scan per tensor is quadratic (200k tensors took 98 s).
    let mut names: HashSet<String> = HashSet::with_capacity(infos.len());
    for (name, ne, type_id, offset) in infos {
        let bad = |reason: String| Error::malformed(path, Some(&name), reason);
        let ty = type_info(type_id).ok_or_else(|| bad(format!("unknown tensor type {type_id}")))?;
        if ne.iter().any(|&d| d > i64::MAX as u64) {
            return Err(bad(format!("dimensions {ne:?} out of range")));
        }
        let n_elem = ne
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("dimensions {ne:?} overflow")))?;
        let row = ne.first().copied().unwrap_or(1);
        if row % ty.block != 0 {
            return Err(bad(format!(
                "row length {row} is not a multiple of {}'s block size {}",
                ty.name, ty.block
            )));
        }
        let size = (n_elem / ty.block)
            .checked_mul(ty.size)
            .ok_or_else(|| bad(format!("dimensions {ne:?} overflow")))?;
        if offset % alignment != 0 {
            return Err(bad(format!(
                "offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        if offset.checked_add(size).is_none_or(|end| end > data_len) {
            return Err(bad(format!(
                "needs {size} bytes at data offset {offset}, but the data section has {data_len} bytes"
            )));
        }
        if !names.insert(name.clone()) {
            return Err(bad("duplicate tensor name".into()));
        }
        tensors.push(GgufTensor {
            name,
            ne,
            ty,
            offset: data_start + offset,
            bytes: size,
        });
    }

    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if b.offset < a.offset + a.bytes && b.bytes > 0 && a.bytes > 0 {
            return Err(Error::malformed(
                path,
                Some(&b.name),
                format!(
                    "data at offset {} overlaps tensor `{}`",
                    b.offset - data_start,
                    a.name
                ),
            ));
        }
    }

    Ok(GgufFile {
        version,
        metadata,
        tensors,
        alignment,
        data_start,
    })
}
