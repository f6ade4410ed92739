//! The streaming GGUF emitter.
//!
//! What must stay true:
//! - the layout (every offset, the exact file size) is fixed before any tensor
//!   is read; the header is written first, then each tensor is read from the
//!   mmap, encoded (rows in parallel), written and dropped, a bounded chunk of
//!   rows at a time, so peak memory is a few chunks whatever the model size;
//! - the bytes depend only on the model and the plan, never on the thread
//!   count (rows are encoded independently and written in order);
//! - the output appears complete or not at all: a temp file in the target
//!   directory, fsynced, then renamed; on any error or interruption the temp
//!   file is removed and nothing is left at the output path.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;

use passes::{Model, TensorNode};
use quant::GgmlType;
use rayon::prelude::*;

use crate::data::{read_row, row_bytes, source_row_bytes};
use crate::error::{Error, Result};
use crate::gguf::{layout, Layout, OutTensor};
use crate::mmap::MappedFile;

/// Rows are encoded in chunks of about this many bytes of f32.
const CHUNK_F32_BYTES: usize = 2 << 20;
/// Encoded chunks queued for the writer thread at most.
const WRITE_QUEUE: usize = 2;
/// Bytes written between two `fdatasync`s of the output.
const SYNC_EVERY: usize = 256 << 20;
/// Output alignment (GGUF default).
pub const ALIGNMENT: u64 = 32;

#[derive(Debug, Clone, Copy, Default)]
pub struct EmitOptions<'a> {
    /// Write NaN/Inf weights instead of refusing them.
    pub allow_nonfinite: bool,
    /// Importance vectors by tensor name (from an imatrix), already checked
    /// against the tensors' shapes with [`crate::imatrix::for_tensor`]: one
    /// weight per column, `experts x row_len` long for 3-D expert tensors.
    pub importance: Option<&'a BTreeMap<String, Vec<f32>>>,
}

/// The output tensors of a planned model (every tensor must have an encoding).
pub fn out_tensors(model: &Model) -> Vec<OutTensor> {
    model
        .tensors
        .iter()
        .map(|t| OutTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            ty: t
                .encoding
                .expect("the encoding pass runs before the emitter"),
        })
        .collect()
}

/// Fix the layout of the output file.
pub fn plan(model: &Model) -> Layout {
    layout(&model.metadata, &out_tensors(model), ALIGNMENT)
}

/// Refuse an output path that cannot be written or would clobber an input.
pub fn check_output(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    let file_name = out
        .file_name()
        .ok_or_else(|| Error::output(out, "output path has no file name"))?;
    let parent = crate::atomic::parent_dir(out);
    if !parent.is_dir() {
        return Err(Error::output(
            out,
            format!("output directory {} does not exist", parent.display()),
        ));
    }
    if out.is_dir() {
        return Err(Error::output(
            out,
            "output path is a directory; give a file name such as model.gguf",
        ));
    }
    let resolved = parent
        .canonicalize()
        .map_err(|e| Error::io(&parent, e))?
        .join(file_name);
    for input in inputs {
        if input.canonicalize().is_ok_and(|i| i == resolved) {
            return Err(Error::output(
                out,
                "output path is the input file; choose another path",
            ));
        }
    }
    Ok(())
}

/// Stream `model` into a GGUF at `out`. `progress` is called with the number
/// of input bytes consumed since the last call; `cancel` is polled between
/// chunks.
pub fn write_gguf(
    model: &Model,
    maps: &[MappedFile],
    layout: &Layout,
    out: &Path,
    opts: EmitOptions<'_>,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &AtomicBool,
) -> Result<()> {
    check_output(out, &model.files)?;
    let tmp = crate::atomic::temp_beside(out)?;
    let tmp_path = tmp.path().to_path_buf();
    let io = |e| Error::io(&tmp_path, e);
    // Encoding and writing overlap: encoded chunks go through a bounded
    // channel (at most WRITE_QUEUE chunks in flight, so memory stays bounded)
    // to a writer thread, which keeps the disk busy while rows are encoded.
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(WRITE_QUEUE);
        let file = tmp.as_file();
        let writer = scope.spawn(move || -> std::io::Result<()> {
            let mut w = BufWriter::with_capacity(4 << 20, file);
            let mut unsynced = 0usize;
            for buf in rx {
                w.write_all(&buf)?;
                unsynced += buf.len();
                // Push dirty pages to disk as we go, on this thread, so the
                // final fsync is short and writing overlaps encoding.
                if unsynced >= SYNC_EVERY {
                    w.flush()?;
                    w.get_ref().sync_data()?;
                    unsynced = 0;
                }
            }
            w.flush()
        });
        let encoded = encode_all(
            model, maps, layout, out, opts, progress, cancel, &tx, &tmp_path,
        );
        drop(tx);
        let written = writer.join().expect("the writer thread does not panic");
        // A write error is the cause of any send failure: report it first.
        written.map_err(io)?;
        encoded
    })?;
    crate::atomic::commit(tmp, out)
}

#[allow(clippy::too_many_arguments)]
fn encode_all(
    model: &Model,
    maps: &[MappedFile],
    layout: &Layout,
    out: &Path,
    opts: EmitOptions<'_>,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &AtomicBool,
    tx: &SyncSender<Vec<u8>>,
    tmp_path: &Path,
) -> Result<()> {
    let send = |buf: Vec<u8>| {
        tx.send(buf)
            .map_err(|_| Error::io(tmp_path, std::io::Error::other("the writer thread stopped")))
    };
    send(layout.header.clone())?;
    let mut pos = layout.header.len() as u64;
    for (t, &(offset, bytes)) in model.tensors.iter().zip(&layout.tensors) {
        debug_assert_eq!(pos, offset);
        let written = write_tensor(&send, t, maps, opts, progress, cancel, tmp_path)?;
        if written != bytes {
            return Err(Error::output(
                out,
                format!(
                    "tensor `{}`: wrote {written} bytes, planned {bytes}",
                    t.name
                ),
            ));
        }
        let padded = bytes.div_ceil(layout.alignment) * layout.alignment;
        if padded > bytes {
            send(vec![0u8; (padded - bytes) as usize])?;
        }
        pos += padded;
    }
    debug_assert_eq!(pos, layout.total_bytes);
    Ok(())
}

fn write_tensor(
    send: &dyn Fn(Vec<u8>) -> Result<()>,
    t: &TensorNode,
    maps: &[MappedFile],
    opts: EmitOptions<'_>,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &AtomicBool,
    tmp_path: &Path,
) -> Result<u64> {
    let ty = t.encoding.expect("planned");
    let row_len = t.row_len();
    let n_rows = t.n_rows();
    let out_row = ty.row_bytes(row_len).expect("encoding fits the row length");
    let src_row = source_row_bytes(t);
    let copy = ty == t.source.dtype.ggml();
    let importance = opts
        .importance
        .and_then(|m| m.get(&t.name))
        .map(Vec::as_slice);
    // Rows per expert: a 3-D tensor's rows of expert e use importance
    // `[e * row_len, (e + 1) * row_len)`.
    let rows_per_expert = if t.shape.len() >= 3 {
        t.shape[t.shape.len() - 2]
    } else {
        n_rows.max(1)
    };
    let rows_per_chunk = (CHUNK_F32_BYTES / (row_len.max(1) * 4)).max(1);
    let mut written = 0u64;
    let mut nonfinite = 0u64;
    let mut r0 = 0;
    while r0 < n_rows {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let r1 = (r0 + rows_per_chunk).min(n_rows);
        if t.transform.is_none() && r1 < n_rows {
            // Ask the kernel to read the next chunk while this one is encoded.
            let next = (rows_per_chunk).min(n_rows - r1) * src_row;
            maps[t.source.file].prefetch(t.source.offset as usize + r1 * src_row, next);
        }
        let mut buf = vec![0u8; (r1 - r0) * out_row];
        let check = !opts.allow_nonfinite;
        nonfinite += buf
            .par_chunks_mut(out_row)
            .with_min_len(16)
            .enumerate()
            .map_init(
                || vec![0f32; row_len],
                |scratch, (i, dst)| {
                    let r = r0 + i;
                    if copy {
                        dst.copy_from_slice(row_bytes(maps, t, r));
                        if !check {
                            return 0;
                        }
                        read_row(maps, t, r, scratch);
                    } else {
                        read_row(maps, t, r, scratch);
                        let imp = importance.map(|v| {
                            let e = r / rows_per_expert.max(1);
                            &v[e * row_len..(e + 1) * row_len]
                        });
                        quant::quantize_rows(ty, scratch, dst, row_len, imp);
                    }
                    if check {
                        scratch.iter().filter(|v| !v.is_finite()).count() as u64
                    } else {
                        0
                    }
                },
            )
            .sum::<u64>();
        written += buf.len() as u64;
        send(buf)?;
        if t.transform.is_none() {
            let start = t.source.offset as usize + r0 * src_row;
            maps[t.source.file].release(start, (r1 - r0) * src_row);
        }
        progress(((r1 - r0) * src_row) as u64);
        r0 = r1;
    }
    if t.transform.is_some() {
        maps[t.source.file].release(t.source.offset as usize, t.source.len as usize);
    }
    if nonfinite > 0 {
        return Err(Error::NonFinite {
            path: tmp_path.parent().map(Path::to_path_buf).unwrap_or_default(),
            tensor: t.source_name.clone(),
            count: nonfinite,
        });
    }
    Ok(written)
}

/// Total encoded bytes per output type, for summaries.
pub fn bytes_by_type(model: &Model, layout: &Layout) -> Vec<(GgmlType, u64, usize)> {
    let mut v: Vec<(GgmlType, u64, usize)> = Vec::new();
    for (t, &(_, b)) in model.tensors.iter().zip(&layout.tensors) {
        let ty = t.encoding.expect("planned");
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
