//! Importance matrices: llama.cpp's `llama-imatrix` output, read in both of
//! its forms and turned into the per-tensor importance vectors exactly as
//! `llama-quantize` computes them; and a writer of the GGUF form.
//!
//! Follows llama.cpp commit `0c1e57098bba43ac29e6e3b677cdceebdd22334f`:
//! `common/imatrix-loader.cpp` (`common_imatrix_load`,
//! `common_imatrix_load_legacy`), `tools/quantize/quantize.cpp`
//! (`load_imatrix`, `prepare_imatrix`, the `quantize.imatrix.*` keys),
//! `tools/imatrix/imatrix.cpp` (`save_imatrix`, `save_imatrix_legacy`) and
//! `src/llama-quant.cpp` (the non-finite check and the per-tensor size check).
//!
//! The forms:
//! - legacy `.dat`: `i32 n_entries`, then per entry `i32 name_len`, the name,
//!   `i32 ncall`, `i32 nval`, `nval` f32 (the mean squared activation times
//!   `ncall`); then, optionally, `i32 chunk_count` and `i32 len` + the dataset
//!   name. Importance = value / ncall (f32 division) when ncall > 0.
//! - GGUF: per weight `<name>.in_sum2` (f32, `[n_expert][ne0]`, the sum of
//!   squared activations) and `<name>.counts` (f32, `[n_expert]`, tokens seen
//!   per expert), with `imatrix.datasets` (string array),
//!   `imatrix.chunk_count` and `imatrix.chunk_size` (u32), all three required.
//!   Importance = in_sum2 / round(count) per expert (f32), or 1 where an
//!   expert saw no token.
//!
//! What must stay true: every length is checked against the bytes left before
//! anything is allocated; errors name the file and the entry; a GGUF form is
//! read through the validating GGUF reader. Stricter than llama.cpp where it
//! would crash or read garbage: a legacy entry with a negative name length, a
//! truncated trailer, a GGUF entry whose value count is not a multiple of its
//! count of experts, or with no counts, is refused.

use std::collections::BTreeMap;
use std::path::Path;

use passes::{MetaValue, Metadata};
use quant::GgmlType;

use crate::error::{Error, Result};
use crate::gguf::{self, OutTensor};

pub const KEY_DATASETS: &str = "imatrix.datasets";
pub const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
pub const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";

/// The keys llama-quantize adds to a file quantized with an imatrix.
pub const KEY_QUANTIZE_FILE: &str = "quantize.imatrix.file";
pub const KEY_QUANTIZE_DATASET: &str = "quantize.imatrix.dataset";
pub const KEY_QUANTIZE_ENTRIES: &str = "quantize.imatrix.entries_count";
pub const KEY_QUANTIZE_CHUNKS: &str = "quantize.imatrix.chunks_count";

/// Which form a file was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImatrixFormat {
    Legacy,
    Gguf,
}

/// One entry as stored (`common_imatrix_entry`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImatrixEntry {
    /// Legacy: mean squared activation times ncall; GGUF: in_sum2.
    pub sums: Vec<f32>,
    /// Legacy: `[ncall]`; GGUF: tokens per expert, rounded (`lround`).
    pub counts: Vec<i64>,
}

/// A whole imatrix file (`common_imatrix`).
#[derive(Debug, Clone, PartialEq)]
pub struct Imatrix {
    pub format: ImatrixFormat,
    /// By weight name (`blk.0.attn_q.weight`), sorted as llama.cpp's `std::map`.
    pub entries: BTreeMap<String, ImatrixEntry>,
    pub datasets: Vec<String>,
    pub chunk_count: i32,
    /// 0 for the legacy form.
    pub chunk_size: u32,
}

/// Read an imatrix file in either form (GGUF if it starts with `GGUF`).
pub fn read(path: &Path) -> Result<Imatrix> {
    let bytes = crate::input::read(path)?;
    parse(path, &bytes)
}

/// Parse an imatrix held in `bytes`; `path` is for messages.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Imatrix> {
    if bytes.starts_with(gguf::read::GGUF_MAGIC) {
        parse_gguf(path, bytes)
    } else {
        parse_legacy(path, bytes)
    }
}

struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(Error::malformed(
                self.path,
                None,
                format!(
                    "truncated imatrix: {} needs {n} bytes at byte {}, {} left",
                    what(),
                    self.pos,
                    self.left()
                ),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn i32(&mut self, what: &dyn Fn() -> String) -> Result<i32> {
        Ok(i32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
}

/// A C string read from `len` bytes: up to the first NUL.
fn c_string(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8(raw[..end].to_vec()).ok()
}

fn parse_legacy(path: &Path, bytes: &[u8]) -> Result<Imatrix> {
    let bad = |reason: String| Error::malformed(path, None, reason);
    let mut r = Reader {
        path,
        bytes,
        pos: 0,
    };
    if bytes.len() < 4 {
        return Err(bad(format!(
            "not an imatrix: {} bytes, neither GGUF nor the legacy form",
            bytes.len()
        )));
    }
    let n_entries = r.i32(&|| "the entry count".into())?;
    if n_entries < 1 {
        return Err(bad(format!(
            "no data: the legacy header declares {n_entries} entries"
        )));
    }
    // An entry takes at least 4 + 4 + 4 + 4 bytes (empty name, one value).
    if n_entries as u64 * 16 > r.left() as u64 {
        return Err(bad(format!(
            "the legacy header declares {n_entries} entries, more than the file's {} bytes could hold",
            bytes.len()
        )));
    }
    let mut entries = BTreeMap::new();
    for i in 0..n_entries as usize {
        let entry = |what: &'static str| move || format!("entry {} {what}", i + 1);
        let len = r.i32(&entry("name length"))?;
        if len < 0 {
            return Err(bad(format!("entry {}: negative name length {len}", i + 1)));
        }
        let raw = r.take(len as usize, &entry("name"))?;
        let name =
            c_string(raw).ok_or_else(|| bad(format!("entry {}: name is not UTF-8", i + 1)))?;
        let what = |w: &'static str| {
            let name = name.clone();
            move || format!("entry `{}` {w}", passes::printable(&name))
        };
        let ncall = r.i32(&what("ncall"))?;
        if ncall < 1 {
            // llama-imatrix writes an entry only once it has seen a call; a
            // count of 0 or less would leave the sums undivided.
            return Err(Error::malformed(
                path,
                Some(&name),
                format!("imatrix entry has a call count of {ncall}; it must be at least 1"),
            ));
        }
        let nval = r.i32(&what("value count"))?;
        if nval < 1 {
            return Err(Error::malformed(
                path,
                Some(&name),
                format!("imatrix entry declares {nval} values"),
            ));
        }
        let nbytes = (nval as usize)
            .checked_mul(4)
            .filter(|&n| n <= r.left())
            .ok_or_else(|| {
                Error::malformed(
                    path,
                    Some(&name),
                    format!(
                        "imatrix entry declares {nval} values ({} bytes), {} bytes left",
                        nval as u64 * 4,
                        r.left()
                    ),
                )
            })?;
        let raw = r.take(nbytes, &what("values"))?;
        let sums = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        // A repeated name replaces the earlier entry, as std::map's operator[] does.
        entries.insert(
            name,
            ImatrixEntry {
                sums,
                counts: vec![i64::from(ncall)],
            },
        );
    }
    let mut chunk_count = 0;
    let mut datasets = Vec::new();
    if r.left() > 0 {
        chunk_count = r.i32(&|| "the chunk count after the entries".into())?;
        if r.left() > 0 {
            let len = r.i32(&|| "the dataset name length".into())?;
            if len > 0 {
                let raw = r.take(len as usize, &|| "the dataset name".into())?;
                datasets.push(
                    c_string(raw).ok_or_else(|| bad("the dataset name is not UTF-8".into()))?,
                );
            }
        }
    }
    Ok(Imatrix {
        format: ImatrixFormat::Legacy,
        entries,
        datasets,
        chunk_count,
        chunk_size: 0,
    })
}

fn parse_gguf(path: &Path, bytes: &[u8]) -> Result<Imatrix> {
    let bad = |tensor: Option<&str>, reason: String| Error::malformed(path, tensor, reason);
    let g = gguf::parse(path, bytes)?;
    if g.tensors.is_empty() {
        return Err(bad(None, "no data: the imatrix GGUF has no tensors".into()));
    }
    let md = &g.metadata;
    for key in [KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE] {
        if md.get(key).is_none() {
            return Err(bad(
                None,
                format!("missing imatrix metadata `{key}` (llama-quantize requires it)"),
            ));
        }
    }
    let u32_key = |key: &str| match md.get(key) {
        Some(MetaValue::U32(v)) => Ok(*v),
        Some(v) => Err(bad(None, format!("`{key}` is {v:?}, expected a u32"))),
        None => unreachable!("checked above"),
    };
    let chunk_count = u32_key(KEY_CHUNK_COUNT)? as i32;
    let chunk_size = u32_key(KEY_CHUNK_SIZE)?;
    let datasets = match md.get(KEY_DATASETS) {
        Some(MetaValue::Array(items))
            if items.iter().all(|v| matches!(v, MetaValue::String(_))) =>
        {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        }
        // llama.cpp ignores a datasets key of another type.
        _ => Vec::new(),
    };

    let mut pairs: BTreeMap<String, (Option<&gguf::GgufTensor>, Option<&gguf::GgufTensor>)> =
        BTreeMap::new();
    for t in &g.tensors {
        if let Some(base) = t.name.strip_suffix(".in_sum2") {
            pairs.entry(base.to_string()).or_default().0 = Some(t);
        } else if let Some(base) = t.name.strip_suffix(".counts") {
            pairs.entry(base.to_string()).or_default().1 = Some(t);
        }
    }
    let f32s = |t: &gguf::GgufTensor| -> Vec<f32> {
        let start = t.offset as usize;
        bytes[start..start + t.bytes as usize]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect()
    };
    let mut entries = BTreeMap::new();
    for (name, pair) in pairs {
        let (Some(sums), Some(counts)) = pair else {
            return Err(bad(
                Some(&name),
                "mismatched sums and counts: one of `.in_sum2` / `.counts` is missing".into(),
            ));
        };
        if sums.ty.id != GgmlType::F32.id() || counts.ty.id != GgmlType::F32.id() {
            return Err(bad(
                Some(&name),
                format!(
                    "sums and counts must be F32, found {} and {}",
                    sums.ty.name, counts.ty.name
                ),
            ));
        }
        let sums = f32s(sums);
        let counts: Vec<i64> = f32s(counts).into_iter().map(lround).collect();
        if let Some(c) = counts.iter().find(|&&c| c < 0) {
            return Err(bad(Some(&name), format!("imatrix count {c} is negative")));
        }
        if sums.is_empty() || counts.is_empty() || sums.len() % counts.len() != 0 {
            return Err(bad(
                Some(&name),
                format!(
                    "{} values cannot be split evenly over {} expert count(s)",
                    sums.len(),
                    counts.len()
                ),
            ));
        }
        entries.insert(name, ImatrixEntry { sums, counts });
    }
    Ok(Imatrix {
        format: ImatrixFormat::Gguf,
        entries,
        datasets,
        chunk_count,
        chunk_size,
    })
}

/// C's `lround` to i64: half away from zero; NaN and out-of-range values
/// (undefined in C) saturate.
fn lround(v: f32) -> i64 {
    v.round() as i64
}

impl Imatrix {
    /// Keep only the entries whose name contains one of `include` (when not
    /// empty) and none of `exclude`: llama-quantize's `--include-weights` /
    /// `--exclude-weights` (it refuses both together).
    pub fn filter(&mut self, include: &[String], exclude: &[String]) {
        if !exclude.is_empty() {
            self.entries
                .retain(|name, _| !exclude.iter().any(|x| name.contains(x.as_str())));
        }
        if !include.is_empty() {
            self.entries
                .retain(|name, _| include.iter().any(|x| name.contains(x.as_str())));
        }
    }

    /// Where the vectors come from, as llama-quantize records it
    /// ([`quantize_metadata`]), with `file_arg` the path as the user gave it.
    pub fn provenance(&self, file_arg: &str) -> passes::passes::importance::Provenance {
        passes::passes::importance::Provenance {
            file: file_arg.to_string(),
            dataset: self.datasets.first().cloned(),
            entries: self.entries.len(),
            chunks: self.chunk_count as i64,
        }
    }

    /// The importance vector of every entry, as llama-quantize hands it to
    /// the quantizer; refused, as llama.cpp does, if any value is not finite.
    pub fn importance(&self, path: &Path) -> Result<BTreeMap<String, Vec<f32>>> {
        let mut out = BTreeMap::new();
        for (name, e) in &self.entries {
            let v = match self.format {
                ImatrixFormat::Gguf => {
                    let ne0 = e.sums.len() / e.counts.len();
                    let mut v = vec![0f32; e.sums.len()];
                    for (j, &c) in e.counts.iter().enumerate() {
                        let count = c as f32;
                        for i in 0..ne0 {
                            v[j * ne0 + i] = if count > 0.0 {
                                e.sums[j * ne0 + i] / count
                            } else {
                                1.0
                            };
                        }
                    }
                    v
                }
                ImatrixFormat::Legacy => {
                    let ncall = e.counts.first().copied().unwrap_or(0);
                    if ncall > 0 {
                        e.sums.iter().map(|&s| s / ncall as f32).collect()
                    } else {
                        e.sums.clone()
                    }
                }
            };
            if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                return Err(Error::malformed(
                    path,
                    Some(name),
                    format!("imatrix contains non-finite value {bad}"),
                ));
            }
            out.insert(name.clone(), v);
        }
        Ok(out)
    }
}

/// Importance vectors are checked and sliced by the `importance` pass.
pub use passes::passes::importance::{for_tensor, row_importance};

/// The `quantize.imatrix.*` keys llama-quantize records, in its order:
/// `file` (the path as given, at most 127 bytes), `dataset` (the first one,
/// if any, at most 127 bytes), `entries_count` (entries kept after
/// filtering), `chunks_count` (when positive). llama-quantize adds them only
/// when the imatrix has at least one entry, after `general.file_type`.
pub fn quantize_metadata(file_arg: &str, imatrix: &Imatrix) -> Vec<(String, MetaValue)> {
    if imatrix.entries.is_empty() {
        return Vec::new();
    }
    let trunc = |s: &str| -> String {
        let b = s.as_bytes();
        let b = &b[..b.len().min(127)];
        String::from_utf8_lossy(b).into_owned()
    };
    let mut kv = vec![(
        KEY_QUANTIZE_FILE.to_string(),
        MetaValue::String(trunc(file_arg)),
    )];
    if let Some(d) = imatrix.datasets.first() {
        kv.push((
            KEY_QUANTIZE_DATASET.to_string(),
            MetaValue::String(trunc(d)),
        ));
    }
    kv.push((
        KEY_QUANTIZE_ENTRIES.to_string(),
        MetaValue::U32(imatrix.entries.len() as u32),
    ));
    if imatrix.chunk_count > 0 {
        kv.push((
            KEY_QUANTIZE_CHUNKS.to_string(),
            MetaValue::U32(imatrix.chunk_count as u32),
        ));
    }
    kv
}

/// Serialize `imatrix` in the GGUF form, as `llama-imatrix` writes it:
/// `general.type = "imatrix"`, the datasets, chunk count and size, then per
/// entry in name order `<name>.in_sum2` and `<name>.counts` (a dense weight's
/// are 1-D, as `ggml_n_dims` drops the unit expert dimension). Only data in
/// the GGUF form can be written: a legacy imatrix holds scaled means, not
/// sums and token counts.
pub fn to_gguf_bytes(imatrix: &Imatrix) -> std::result::Result<Vec<u8>, String> {
    if imatrix.format != ImatrixFormat::Gguf {
        return Err(
            "only an imatrix in the GGUF form (sums and per-expert counts) can be written as GGUF"
                .into(),
        );
    }
    let mut md = Metadata::default();
    md.set("general.type", MetaValue::String("imatrix".into()));
    md.set(
        KEY_DATASETS,
        MetaValue::Array(
            imatrix
                .datasets
                .iter()
                .map(|d| MetaValue::String(d.clone()))
                .collect(),
        ),
    );
    md.set(KEY_CHUNK_COUNT, MetaValue::U32(imatrix.chunk_count as u32));
    md.set(KEY_CHUNK_SIZE, MetaValue::U32(imatrix.chunk_size));
    let mut tensors = Vec::new();
    let mut data: Vec<Vec<f32>> = Vec::new();
    for (name, e) in &imatrix.entries {
        let nmat = e.counts.len();
        if e.sums.is_empty() || nmat == 0 || e.sums.len() % nmat != 0 {
            return Err(format!(
                "entry `{}`: {} values cannot be split over {nmat} expert count(s)",
                passes::printable(name),
                e.sums.len()
            ));
        }
        let ne0 = e.sums.len() / nmat;
        let (sum_shape, count_shape) = if nmat > 1 {
            (vec![nmat, ne0], vec![nmat, 1])
        } else {
            (vec![ne0], vec![1])
        };
        tensors.push(OutTensor {
            name: format!("{name}.in_sum2"),
            shape: sum_shape,
            ty: GgmlType::F32,
        });
        tensors.push(OutTensor {
            name: format!("{name}.counts"),
            shape: count_shape,
            ty: GgmlType::F32,
        });
        data.push(e.sums.clone());
        data.push(e.counts.iter().map(|&c| c as f32).collect());
    }
    if let Some(t) = tensors
        .iter()
        .find(|t| t.name.len() >= gguf::read::MAX_NAME)
    {
        return Err(format!(
            "tensor name `{}` is longer than ggml's {} bytes",
            t.name,
            gguf::read::MAX_NAME - 1
        ));
    }
    let layout = gguf::layout(&md, &tensors, gguf::read::DEFAULT_ALIGNMENT);
    let mut out = layout.header.clone();
    for ((offset, bytes), values) in layout.tensors.iter().zip(&data) {
        debug_assert_eq!(out.len() as u64, *offset);
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        debug_assert_eq!(values.len() as u64 * 4, *bytes);
        out.resize(
            out.len().div_ceil(layout.alignment as usize) * layout.alignment as usize,
            0,
        );
    }
    debug_assert_eq!(out.len() as u64, layout.total_bytes);
    Ok(out)
}

/// Write `imatrix` in the GGUF form to `path`, atomically (temp file in the
/// same directory, fsync, rename).
pub fn write_gguf(path: &Path, imatrix: &Imatrix) -> Result<()> {
    use std::io::Write;
    let bytes = to_gguf_bytes(imatrix).map_err(|e| Error::output(path, e))?;
    let mut tmp = crate::atomic::temp_beside(path)?;
    tmp.write_all(&bytes)
        .map_err(|e| Error::io(tmp.path(), e))?;
    crate::atomic::commit(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_importance_slices_per_expert() {
        let v: Vec<f32> = (0..6).map(|x| x as f32).collect();
        // 2-D: every row uses the whole vector.
        assert_eq!(row_importance(&v[..3], &[4, 3], 3), &[0.0, 1.0, 2.0]);
        // 3-D [2 experts, 2 rows, 3]: rows 0-1 expert 0, rows 2-3 expert 1.
        assert_eq!(row_importance(&v, &[2, 2, 3], 1), &[0.0, 1.0, 2.0]);
        assert_eq!(row_importance(&v, &[2, 2, 3], 2), &[3.0, 4.0, 5.0]);
    }

    const P: &str = "m.imatrix";

    fn path() -> &'static Path {
        Path::new(P)
    }

    fn legacy(entries: &[(&str, i32, &[f32])], trailer: Option<(i32, &str)>) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(entries.len() as i32).to_le_bytes());
        for (name, ncall, vals) in entries {
            b.extend_from_slice(&(name.len() as i32).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&ncall.to_le_bytes());
            b.extend_from_slice(&(vals.len() as i32).to_le_bytes());
            for v in *vals {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        if let Some((chunks, dataset)) = trailer {
            b.extend_from_slice(&chunks.to_le_bytes());
            b.extend_from_slice(&(dataset.len() as i32).to_le_bytes());
            b.extend_from_slice(dataset.as_bytes());
        }
        b
    }

    fn gguf_form(entries: &[(&str, Vec<f32>, Vec<i64>)]) -> Imatrix {
        Imatrix {
            format: ImatrixFormat::Gguf,
            entries: entries
                .iter()
                .map(|(n, s, c)| {
                    (
                        n.to_string(),
                        ImatrixEntry {
                            sums: s.clone(),
                            counts: c.clone(),
                        },
                    )
                })
                .collect(),
            datasets: vec!["calib.txt".into()],
            chunk_count: 4,
            chunk_size: 512,
        }
    }

    fn err(r: Result<Imatrix>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn legacy_form_and_its_importance() {
        let b = legacy(
            &[
                ("blk.0.attn_q.weight", 3, &[3.0, 6.0, 0.3]),
                ("a.weight", 1, &[2.0]),
            ],
            Some((10, "wiki.train.raw")),
        );
        let im = parse(path(), &b).unwrap();
        assert_eq!(im.format, ImatrixFormat::Legacy);
        assert_eq!(im.chunk_count, 10);
        assert_eq!(im.datasets, vec!["wiki.train.raw"]);
        let imp = im.importance(path()).unwrap();
        // value / ncall as f32.
        assert_eq!(imp["blk.0.attn_q.weight"], vec![1.0, 2.0, 0.3f32 / 3.0]);
        assert_eq!(imp["a.weight"], vec![2.0]);
        // A call count below 1 (llama.cpp would keep the sums undivided) is refused.
        for ncall in [0, -1] {
            let e = err(parse(path(), &legacy(&[("a.weight", ncall, &[2.0])], None)));
            assert!(e.contains(&format!("call count of {ncall}")), "{e}");
        }
        assert_eq!(
            imp.keys().collect::<Vec<_>>(),
            vec!["a.weight", "blk.0.attn_q.weight"]
        );

        // The trailer is optional; an empty dataset name is no dataset.
        let im = parse(path(), &legacy(&[("x", 1, &[1.0])], None)).unwrap();
        assert_eq!((im.chunk_count, im.datasets.len()), (0, 0));
        let im = parse(path(), &legacy(&[("x", 1, &[1.0])], Some((2, "")))).unwrap();
        assert_eq!((im.chunk_count, im.datasets.len()), (2, 0));
        // A repeated name replaces the earlier entry (std::map::operator[]).
        let im = parse(
            path(),
            &legacy(&[("x", 1, &[1.0]), ("x", 1, &[5.0, 6.0])], None),
        )
        .unwrap();
        assert_eq!(im.entries["x"].sums, vec![5.0, 6.0]);
    }

    #[test]
    fn hostile_legacy_files_are_refused_with_numbers() {
        assert!(err(parse(path(), &[1, 0])).contains("2 bytes"));
        assert!(err(parse(path(), &0i32.to_le_bytes())).contains("no data"));
        let mut b = i32::MAX.to_le_bytes().to_vec();
        b.extend_from_slice(&[0; 32]);
        assert!(err(parse(path(), &b)).contains("2147483647 entries"));

        let good = legacy(&[("blk.0.attn_q.weight", 1, &[1.0, 2.0])], Some((3, "d")));
        // Negative name length.
        let mut b = good.clone();
        b[4..8].copy_from_slice(&(-5i32).to_le_bytes());
        assert!(err(parse(path(), &b)).contains("negative name length -5"));
        // A value count that runs past the end names the entry.
        let mut b = good.clone();
        let at = 8 + 19 + 4;
        b[at..at + 4].copy_from_slice(&1_000_000i32.to_le_bytes());
        let e = err(parse(path(), &b));
        assert!(
            e.contains("blk.0.attn_q.weight") && e.contains("1000000 values"),
            "{e}"
        );
        // Zero values.
        let mut b = good.clone();
        b[at..at + 4].copy_from_slice(&0i32.to_le_bytes());
        assert!(err(parse(path(), &b)).contains("declares 0 values"));
        // Truncated inside the values, and inside the trailer.
        assert!(err(parse(path(), &good[..good.len() - 10])).contains("8 bytes), 7 bytes left"));
        let cut = good.len() - 1 - 4 - 2;
        assert!(err(parse(path(), &good[..cut])).contains("chunk count"));
        assert!(err(parse(path(), &good[..good.len() - 1])).contains("dataset name"));
    }

    #[test]
    fn gguf_form_round_trips_and_divides_by_counts() {
        let im = gguf_form(&[
            ("blk.0.attn_q.weight", vec![4.0, 8.0, 2.0], vec![4]),
            // Two experts; the second saw no token: importance 1.
            (
                "blk.0.ffn_down_exps.weight",
                vec![3.0, 6.0, 9.0, 9.0],
                vec![3, 0],
            ),
        ]);
        let bytes = to_gguf_bytes(&im).unwrap();
        let back = parse(path(), &bytes).unwrap();
        assert_eq!(back, im);
        let imp = back.importance(path()).unwrap();
        assert_eq!(imp["blk.0.attn_q.weight"], vec![1.0, 2.0, 0.5]);
        assert_eq!(imp["blk.0.ffn_down_exps.weight"], vec![1.0, 2.0, 1.0, 1.0]);
        // Layout as llama-imatrix writes it: dense entries 1-D, MoE 2-D.
        let g = gguf::parse(path(), &bytes).unwrap();
        let names: Vec<(&str, Vec<u64>)> = g
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.ne.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("blk.0.attn_q.weight.in_sum2", vec![3]),
                ("blk.0.attn_q.weight.counts", vec![1]),
                ("blk.0.ffn_down_exps.weight.in_sum2", vec![2, 2]),
                ("blk.0.ffn_down_exps.weight.counts", vec![1, 2]),
            ]
        );
        assert_eq!(
            g.metadata.0[0],
            (
                "general.type".to_string(),
                MetaValue::String("imatrix".into())
            )
        );
        // Counts are rounded half away from zero (lround).
        assert_eq!((lround(2.5), lround(-2.5), lround(2.49)), (3, -3, 2));
    }

    #[test]
    fn hostile_gguf_forms_are_refused() {
        let good = gguf_form(&[("w", vec![1.0, 2.0], vec![2])]);
        // Metadata is required.
        for key in [KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE] {
            let mut md = Metadata::default();
            md.set("general.type", MetaValue::String("imatrix".into()));
            for k in [KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE] {
                if k != key {
                    md.set(k, MetaValue::U32(1));
                }
            }
            let t = [OutTensor {
                name: "w.in_sum2".into(),
                shape: vec![2],
                ty: GgmlType::F32,
            }];
            let l = gguf::layout(&md, &t, 32);
            let mut b = l.header.clone();
            b.resize(l.total_bytes as usize, 0);
            assert!(err(parse(path(), &b)).contains(key));
        }
        // A sum without counts, or counts of the wrong type.
        let mut md = Metadata::default();
        md.set(KEY_DATASETS, MetaValue::Array(vec![]));
        md.set(KEY_CHUNK_COUNT, MetaValue::U32(1));
        md.set(KEY_CHUNK_SIZE, MetaValue::U32(1));
        let build_with = |md: &Metadata, t: &[OutTensor]| {
            let l = gguf::layout(md, t, 32);
            let mut b = l.header.clone();
            b.resize(l.total_bytes as usize, 0);
            b
        };
        let build = |t: &[OutTensor]| build_with(&md, t);
        let lone = [OutTensor {
            name: "w.in_sum2".into(),
            shape: vec![2],
            ty: GgmlType::F32,
        }];
        assert!(err(parse(path(), &build(&lone))).contains("mismatched"));
        let f16 = [
            OutTensor {
                name: "w.in_sum2".into(),
                shape: vec![2],
                ty: GgmlType::F32,
            },
            OutTensor {
                name: "w.counts".into(),
                shape: vec![1],
                ty: GgmlType::F16,
            },
        ];
        assert!(err(parse(path(), &build(&f16))).contains("must be F32"));
        let uneven = [
            OutTensor {
                name: "w.in_sum2".into(),
                shape: vec![3],
                ty: GgmlType::F32,
            },
            OutTensor {
                name: "w.counts".into(),
                shape: vec![2],
                ty: GgmlType::F32,
            },
        ];
        assert!(err(parse(path(), &build(&uneven))).contains("split evenly"));
        assert!(err(parse(path(), &build(&[]))).contains("no tensors"));
        // chunk_count of the wrong type.
        let mut md = md.clone();
        md.set(KEY_CHUNK_COUNT, MetaValue::I32(1));
        let ok = [
            OutTensor {
                name: "w.in_sum2".into(),
                shape: vec![2],
                ty: GgmlType::F32,
            },
            OutTensor {
                name: "w.counts".into(),
                shape: vec![1],
                ty: GgmlType::F32,
            },
        ];
        assert!(err(parse(path(), &build_with(&md, &ok))).contains("expected a u32"));
        // A truncated file is caught by the GGUF reader.
        let b = to_gguf_bytes(&good).unwrap();
        assert!(err(parse(path(), &b[..b.len() - 40])).contains("data section"));
    }

    #[test]
    fn non_finite_importance_is_refused() {
        let im = gguf_form(&[("w", vec![1.0, f32::INFINITY], vec![1])]);
        let e = im.importance(path()).unwrap_err().to_string();
        assert!(e.contains("`w`") && e.contains("non-finite"), "{e}");
    }

    #[test]
    fn per_tensor_lookup_checks_the_size() {
        let imp: BTreeMap<String, Vec<f32>> = [
            ("blk.0.attn_q.weight".to_string(), vec![1.0; 64]),
            ("token_embd.weight".to_string(), vec![1.0; 3]),
            ("blk.0.ffn_down_exps.weight".to_string(), vec![1.0; 4 * 32]),
        ]
        .into();
        assert_eq!(
            for_tensor(&imp, "blk.0.attn_q.weight", &[128, 64])
                .unwrap()
                .map(<[f32]>::len),
            Some(64)
        );
        assert_eq!(
            for_tensor(&imp, "blk.0.attn_k.weight", &[128, 64]).unwrap(),
            None
        );
        assert_eq!(
            for_tensor(&imp, "token_embd.weight", &[100, 64]).unwrap(),
            None
        );
        assert!(for_tensor(&imp, "blk.0.attn_q.weight", &[128, 32])
            .unwrap_err()
            .contains("imatrix size 64"));
        assert_eq!(
            for_tensor(&imp, "blk.0.ffn_down_exps.weight", &[4, 16, 32])
                .unwrap()
                .map(<[f32]>::len),
            Some(128)
        );
    }

    #[test]
    fn quantize_keys_as_llama_quantize_records_them() {
        let mut im = gguf_form(&[
            ("a.weight", vec![1.0], vec![1]),
            ("b.weight", vec![1.0], vec![1]),
        ]);
        let kv = quantize_metadata("imatrix.gguf", &im);
        assert_eq!(
            kv,
            vec![
                (
                    KEY_QUANTIZE_FILE.to_string(),
                    MetaValue::String("imatrix.gguf".into())
                ),
                (
                    KEY_QUANTIZE_DATASET.to_string(),
                    MetaValue::String("calib.txt".into())
                ),
                (KEY_QUANTIZE_ENTRIES.to_string(), MetaValue::U32(2)),
                (KEY_QUANTIZE_CHUNKS.to_string(), MetaValue::U32(4)),
            ]
        );
        im.datasets.clear();
        im.chunk_count = 0;
        im.filter(&[], &["a.".to_string()]);
        let long = "x".repeat(200);
        let kv = quantize_metadata(&long, &im);
        assert_eq!(kv.len(), 2);
        assert_eq!(kv[0].1, MetaValue::String("x".repeat(127)));
        assert_eq!(kv[1].1, MetaValue::U32(1));
        im.filter(&["nothing".to_string()], &[]);
        assert!(quantize_metadata("f", &im).is_empty());
    }

    /// The committed imatrix fixtures (fixtures/llama_cpp/imatrix, written by
    /// an independent Python writer laid out as llama-imatrix's): the GGUF form
    /// re-serializes to the same bytes, and the legacy form of the same
    /// statistics gives the same importance up to float rounding.
    #[test]
    fn committed_fixtures_read_and_round_trip() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/llama_cpp/imatrix");
        let gguf_path = dir.join("tiny-llama.imatrix.gguf");
        let bytes = std::fs::read(&gguf_path).unwrap();
        let g = parse(&gguf_path, &bytes).unwrap();
        assert_eq!(g.format, ImatrixFormat::Gguf);
        assert_eq!(g.entries.len(), 15);
        assert_eq!((g.chunk_count, g.chunk_size), (4, 512));
        assert_eq!(to_gguf_bytes(&g).unwrap(), bytes);

        let dat_path = dir.join("tiny-llama.imatrix.dat");
        let d = read(&dat_path).unwrap();
        assert_eq!(d.format, ImatrixFormat::Legacy);
        assert_eq!((d.chunk_count, &d.datasets), (4, &g.datasets));
        assert_eq!(d.entries["blk.0.ffn_down.weight"].counts, vec![4]);
        let (gi, di) = (
            g.importance(&gguf_path).unwrap(),
            d.importance(&dat_path).unwrap(),
        );
        assert_eq!(gi.keys().collect::<Vec<_>>(), di.keys().collect::<Vec<_>>());
        for (name, v) in &gi {
            assert_eq!(v.len(), di[name].len());
            for (a, b) in v.iter().zip(&di[name]) {
                assert!((a - b).abs() <= a.abs() * 1e-6, "{name}: {a} vs {b}");
            }
        }
        let kv = quantize_metadata("tiny-llama.imatrix.gguf", &g);
        assert_eq!(kv[2].1, MetaValue::U32(15));

        let smol = read(&dir.join("smollm2.imatrix.gguf")).unwrap();
        assert_eq!(smol.entries.len(), 210);
        assert_eq!(smol.entries["blk.29.ffn_down.weight"].sums.len(), 1536);
    }

    #[test]
    fn only_the_gguf_form_is_written() {
        let im = parse(path(), &legacy(&[("x", 1, &[1.0])], None)).unwrap();
        assert!(to_gguf_bytes(&im).is_err());
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("i.gguf");
        let im = gguf_form(&[("w", vec![1.0, 2.0], vec![2])]);
        write_gguf(&out, &im).unwrap();
        assert_eq!(read(&out).unwrap(), im);
    }
}
