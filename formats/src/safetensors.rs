//! safetensors reader: a hostile-until-checked header parser over a mapped file.
//!
//! Layout: `u64` little-endian header length N, N bytes of JSON
//! (`name -> {dtype, shape, data_offsets: [begin, end]}` plus an optional
//! `__metadata__` map of strings), then the data section; offsets are relative
//! to the data section.
//!
//! What must stay true: nothing is allocated from a declared size before it is
//! compared with the real file size; every entry's byte range lies inside the
//! data section, matches `shape x dtype size` exactly, and overlaps no other
//! entry; errors name the file, the tensor and the numbers.

use std::path::Path;

use crate::error::{Error, Result};

/// The largest JSON header accepted (the safetensors crate uses the same cap).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor entry of a safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct StEntry {
    pub name: String,
    /// The dtype as written (`F32`, `BF16`, `I64`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: u64,
    pub end: u64,
}

/// A parsed safetensors header.
#[derive(Debug, Clone)]
pub struct StHeader {
    pub entries: Vec<StEntry>,
    pub metadata: Vec<(String, String)>,
    pub data_start: u64,
}

/// Bytes per element of every dtype the safetensors format defines.
pub fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Parse and validate the header of a safetensors file held in `bytes`.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<StHeader> {
    let file_len = bytes.len() as u64;
    if file_len < 8 {
        return Err(Error::malformed(
            path,
            None,
            format!("truncated safetensors file: {file_len} bytes, the 8-byte header length alone needs 8"),
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > file_len - 8 {
        return Err(Error::malformed(
            path,
            None,
            format!("header length {n} runs past the end of the file ({file_len} bytes); the file is truncated or not safetensors"),
        ));
    }
    if n > MAX_HEADER_BYTES {
        return Err(Error::malformed(
            path,
            None,
            format!("header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit"),
        ));
    }
    let data_start = 8 + n;
    let data_len = file_len - data_start;
    let header_bytes = &bytes[8..data_start as usize];
    let json: serde_json::Value = serde_json::from_slice(header_bytes)
        .map_err(|e| Error::malformed(path, None, format!("header is not valid JSON: {e}")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| Error::malformed(path, None, "header is not a JSON object"))?;

    let mut entries = Vec::with_capacity(obj.len());
    let mut metadata = Vec::new();
    for (name, info) in obj {
        if name == "__metadata__" {
            if let Some(m) = info.as_object() {
                for (k, v) in m {
                    let v = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string());
                    metadata.push((k.clone(), v));
                }
            }
            continue;
        }
        entries.push(parse_entry(path, name, info, data_start, data_len)?);
    }

    // Overlaps: sort by start and compare neighbours.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (entries[i].start, entries[i].end));
    for w in order.windows(2) {
        let (a, b) = (&entries[w[0]], &entries[w[1]]);
        if b.start < a.end {
            return Err(Error::malformed(
                path,
                Some(&b.name),
                format!(
                    "data_offsets [{}, {}] overlap tensor `{}` at [{}, {}]",
                    b.start - data_start,
                    b.end - data_start,
                    a.name,
                    a.start - data_start,
                    a.end - data_start
                ),
            ));
        }
    }
    Ok(StHeader {
        entries,
        metadata,
        data_start,
    })
}

fn parse_entry(
    path: &Path,
    name: &str,
    info: &serde_json::Value,
    data_start: u64,
    data_len: u64,
) -> Result<StEntry> {
    let bad = |reason: String| Error::malformed(path, Some(name), reason);
    let dtype = info
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| bad("entry has no string `dtype`".into()))?;
    let elem = dtype_size(dtype).ok_or_else(|| bad(format!("unknown dtype `{dtype}`")))? as u64;
    let shape: Vec<usize> = info
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad("entry has no `shape` array".into()))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("shape holds a value that is not a non-negative integer".into()))?;
    let offsets = info
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .filter(|o| o.len() == 2)
        .ok_or_else(|| bad("entry has no `data_offsets` pair".into()))?;
    let (begin, end) = match (offsets[0].as_u64(), offsets[1].as_u64()) {
        (Some(b), Some(e)) => (b, e),
        _ => return Err(bad("data_offsets are not non-negative integers".into())),
    };
    if begin > end {
        return Err(bad(format!("data_offsets [{begin}, {end}] are reversed")));
    }
    if end > data_len {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] are out of range: the data section has {data_len} bytes"
        )));
    }
    let n_elem = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    let need = n_elem
        .checked_mul(elem)
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    if need != end - begin {
        return Err(bad(format!(
            "shape {shape:?} of {dtype} needs {need} bytes but data_offsets [{begin}, {end}] hold {}",
            end - begin
        )));
    }
    Ok(StEntry {
        name: name.to_string(),
        dtype: dtype.to_string(),
        shape,
        start: data_start + begin,
        end: data_start + end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data));
        v
    }

    fn err(bytes: &[u8]) -> String {
        parse(Path::new("m.safetensors"), bytes)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn accepts_a_valid_file() {
        let h = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}}"#;
        let st = parse(Path::new("m.safetensors"), &file(h, 22)).unwrap();
        assert_eq!(st.entries.len(), 2);
        assert_eq!(st.entries[1].start, 8 + h.len() as u64 + 16);
        assert_eq!(st.metadata, vec![("format".into(), "pt".into())]);
    }

    #[test]
    fn refuses_hostile_headers() {
        assert!(err(&[1, 2, 3]).contains("truncated"));
        let mut v = file("{}", 0);
        v[0] = 200;
        assert!(err(&v).contains("runs past the end"));
        let e = err(&file(
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8,
        ));
        assert!(
            e.contains("tensor `a`") && e.contains("out of range"),
            "{e}"
        );
        let e = err(&file(
            r#"{"a":{"dtype":"Q9","shape":[4],"data_offsets":[0,16]}}"#,
            16,
        ));
        assert!(e.contains("unknown dtype `Q9`"), "{e}");
        let e = err(&file(
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
            16,
        ));
        assert!(e.contains("needs 12 bytes"), "{e}");
        let e = err(&file(
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
            16,
        ));
        assert!(e.contains("overlap"), "{e}");
        let e = err(&file(
            r#"{"a":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,16]}}"#,
            16,
        ));
        assert!(e.contains("overflows"), "{e}");
    }
}
