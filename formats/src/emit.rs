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
//!   file is removed and nothing is left at the output path;
//! - a writer thread puts the bytes at increasing offsets in aligned blocks,
//!   with direct I/O where the file system takes it (Linux `O_DIRECT`: no
//!   copy into the page cache, the disk works while rows are encoded, so the
//!   final fsync has little left), else buffered with a periodic
//!   `fdatasync`; both give the same bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use passes::{Model, TensorNode};
use quant::GgmlType;
use rayon::prelude::*;

use crate::data::{read_row, row_bytes, source_row_bytes};
use crate::error::{Error, Result};
use crate::gguf::{layout, Layout, OutTensor};
use crate::mmap::MappedFile;

/// Rows are encoded in chunks of about this many bytes of f32.
const CHUNK_F32_BYTES: usize = 2 << 20;
/// Bytes written between two `fdatasync`s of the output, when it is written
/// through the page cache.
const SYNC_EVERY: usize = 256 << 20;
/// Rows are encoded into, and the writer thread writes, blocks of this many
/// bytes ...
const WRITE_BLOCK: usize = 2 << 20;
/// ... of which there are this many: one being filled, one queued, one being
/// written.
const BLOCKS: usize = 3;
/// Rows up to this many bytes are encoded in place in a block.
const MAX_IN_PLACE: usize = WRITE_BLOCK - DIO_ALIGN;
/// Alignment of direct-I/O buffers, file offsets and lengths: a multiple of
/// the logical block sizes in use (512 B, 4 KiB).
const DIO_ALIGN: usize = 4096;
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
                .ggml_type()
                .expect("the encoding pass chooses a ggml type before the GGUF emitter"),
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
    emit(model, maps, layout, out, opts, progress, cancel, true)
}

/// [`write_gguf`], with direct I/O tried (`direct`) or not.
#[allow(clippy::too_many_arguments)]
fn emit(
    model: &Model,
    maps: &[MappedFile],
    layout: &Layout,
    out: &Path,
    opts: EmitOptions<'_>,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &AtomicBool,
    direct: bool,
) -> Result<()> {
    check_output(out, &model.files)?;
    let tmp = crate::atomic::temp_beside(out)?;
    let tmp_path = tmp.path().to_path_buf();
    let io = |e| Error::io(&tmp_path, e);
    // Encoding and writing overlap: rows are encoded straight into aligned
    // blocks (BLOCKS of them, so memory stays bounded), which go to a writer
    // thread that keeps the disk busy meanwhile and hands them back.
    std::thread::scope(|scope| -> Result<()> {
        let (full_tx, full_rx) = sync_channel::<AlignedBlock>(BLOCKS);
        let (empty_tx, empty_rx) = sync_channel::<AlignedBlock>(BLOCKS);
        let file = tmp.as_file();
        let writer = scope.spawn(move || write_blocks(file, direct, full_rx, empty_tx));
        let mut sink = Sink {
            block: AlignedBlock::new(WRITE_BLOCK),
            made: 1,
            full: full_tx,
            empty: empty_rx,
            tmp_path: &tmp_path,
        };
        let encoded = encode_all(model, maps, layout, out, opts, progress, cancel, &mut sink);
        // Hand over the last block and close the channel, also after an
        // error, so the writer thread ends.
        let encoded = encoded.and(sink.finish());
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
    sink: &mut Sink<'_>,
) -> Result<()> {
    sink.put(&layout.header)?;
    let mut pos = layout.header.len() as u64;
    for (t, &(offset, bytes)) in model.tensors.iter().zip(&layout.tensors) {
        debug_assert_eq!(pos, offset);
        let written = write_tensor(sink, t, maps, opts, progress, cancel)?;
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
        sink.put_zeros((padded - bytes) as usize)?;
        pos += padded;
    }
    debug_assert_eq!(pos, layout.total_bytes);
    Ok(())
}

fn write_tensor(
    sink: &mut Sink<'_>,
    t: &TensorNode,
    maps: &[MappedFile],
    opts: EmitOptions<'_>,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &AtomicBool,
) -> Result<u64> {
    let ty = t.ggml_type().expect("planned");
    let row_len = t.row_len();
    let n_rows = t.n_rows();
    let out_row = ty.row_bytes(row_len).expect("encoding fits the row length");
    let src_row = source_row_bytes(t);
    let copy = ty == t.source.dtype.ggml();
    let importance = opts
        .importance
        .and_then(|m| m.get(&t.name))
        .map(Vec::as_slice);
    let rows_per_chunk = (CHUNK_F32_BYTES / (row_len.max(1) * 4)).max(1);
    // Rows are encoded in place in the output block when one fits; a longer
    // row goes through a buffer of its own.
    let in_place = out_row <= MAX_IN_PLACE;
    let mut spill = Vec::new();
    let mut written = 0u64;
    let mut nonfinite = 0u64;
    let mut r0 = 0;
    while r0 < n_rows {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let (r1, dst) = if in_place {
            let room = sink.room(out_row)?;
            let r1 = (r0 + rows_per_chunk.min(room / out_row.max(1))).min(n_rows);
            (r1, sink.take((r1 - r0) * out_row))
        } else {
            let r1 = (r0 + rows_per_chunk).min(n_rows);
            spill.resize((r1 - r0) * out_row, 0);
            (r1, &mut spill[..])
        };
        if t.transform.is_none() && r1 < n_rows {
            // Ask the kernel to read the next chunk while this one is encoded.
            let next = (rows_per_chunk).min(n_rows - r1) * src_row;
            maps[t.source.file].prefetch(t.source.offset as usize + r1 * src_row, next);
        }
        let check = !opts.allow_nonfinite;
        nonfinite += dst
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
                        let imp =
                            importance.map(|v| crate::imatrix::row_importance(v, &t.shape, r));
                        // The block is reused: start every row from zeros,
                        // as a fresh buffer would, whatever bytes an encoder
                        // leaves alone (cheap: the row is about to be
                        // written, so it is in cache).
                        dst.fill(0);
                        quant::quantize_rows(ty, scratch, dst, row_len, imp);
                    }
                    if check {
                        count_nonfinite(scratch)
                    } else {
                        0
                    }
                },
            )
            .sum::<u64>();
        written += ((r1 - r0) * out_row) as u64;
        if !in_place {
            sink.put(&spill)?;
        }
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
            path: sink
                .tmp_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            tensor: t.source_name.clone(),
            count: nonfinite,
        });
    }
    Ok(written)
}

/// How many of `v` are NaN or infinite (exponent bits all set). Counted in
/// u32 lanes, which vectorize, a bounded run at a time.
fn count_nonfinite(v: &[f32]) -> u64 {
    v.chunks(1 << 16)
        .map(|run| {
            let n: u32 = run
                .iter()
                .map(|x| u32::from(x.to_bits() & 0x7f80_0000 == 0x7f80_0000))
                .sum();
            u64::from(n)
        })
        .sum()
}

/// The encoder's end of the output: the block being filled, and the channels
/// to the writer thread (full blocks out, empty ones back). At most `BLOCKS`
/// blocks exist.
struct Sink<'a> {
    block: AlignedBlock,
    made: usize,
    full: SyncSender<AlignedBlock>,
    empty: Receiver<AlignedBlock>,
    tmp_path: &'a Path,
}

impl Sink<'_> {
    /// Append `bytes`.
    fn put(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            if self.block.room() == 0 {
                self.next_block()?;
            }
            bytes = self.block.fill(bytes);
        }
        Ok(())
    }

    fn put_zeros(&mut self, mut n: usize) -> Result<()> {
        const ZEROS: [u8; 256] = [0; 256];
        while n > 0 {
            let k = n.min(ZEROS.len());
            self.put(&ZEROS[..k])?;
            n -= k;
        }
        Ok(())
    }

    /// Make room for at least `n <= MAX_IN_PLACE` contiguous bytes; return
    /// the room there is.
    fn room(&mut self, n: usize) -> Result<usize> {
        debug_assert!(n <= MAX_IN_PLACE);
        if self.block.room() < n {
            self.next_block()?;
        }
        Ok(self.block.room())
    }

    /// The next `n` bytes of the block (at most [`Sink::room`]), counted as
    /// written: the caller fills every one of them.
    fn take(&mut self, n: usize) -> &mut [u8] {
        self.block.take(n)
    }

    /// Send the whole sectors of the current block to the writer and carry
    /// the rest (less than `DIO_ALIGN` bytes) over to the next block, so
    /// every block but the last is written at an aligned offset and length.
    fn next_block(&mut self) -> Result<()> {
        // Reuse a written block if there is one: a new one only while the
        // writer is behind, so memory stays low when the disk keeps up.
        let mut next = match self.empty.try_recv() {
            Ok(block) => block,
            Err(_) if self.made < BLOCKS => {
                self.made += 1;
                AlignedBlock::new(WRITE_BLOCK)
            }
            Err(_) => self.empty.recv().map_err(|_| self.stopped())?,
        };
        next.clear();
        let keep = self.block.len / DIO_ALIGN * DIO_ALIGN;
        next.fill(&self.block.filled()[keep..]);
        self.block.len = keep;
        let full = std::mem::replace(&mut self.block, next);
        self.full.send(full).map_err(|_| self.stopped())
    }

    /// Send the last block; the writer then sees the channel close.
    fn finish(self) -> Result<()> {
        let Sink {
            block,
            full,
            tmp_path,
            ..
        } = self;
        full.send(block)
            .map_err(|_| Error::io(tmp_path, io::Error::other("the writer thread stopped")))
    }

    fn stopped(&self) -> Error {
        Error::io(self.tmp_path, io::Error::other("the writer thread stopped"))
    }
}

/// The writer thread: write each block at the next offset of `file`, and
/// hand it back for reuse.
fn write_blocks(
    file: &File,
    direct: bool,
    full: Receiver<AlignedBlock>,
    empty: SyncSender<AlignedBlock>,
) -> io::Result<()> {
    let mut out = Output::new(file, direct);
    for block in full {
        out.write(block.filled())?;
        // The encoder may be done and gone: then the block is just dropped.
        let _ = empty.try_send(block);
    }
    out.buffered()
}

/// A fixed-size byte buffer whose start is aligned to [`DIO_ALIGN`].
struct AlignedBlock {
    buf: Vec<u8>,
    start: usize,
    len: usize,
    cap: usize,
}

impl AlignedBlock {
    fn new(cap: usize) -> AlignedBlock {
        let buf = vec![0u8; cap + DIO_ALIGN];
        // At most DIO_ALIGN - 1 for a byte pointer; were it not computable,
        // the block would just be unaligned, and written through the page
        // cache.
        let start = buf.as_ptr().align_offset(DIO_ALIGN).min(DIO_ALIGN);
        AlignedBlock {
            buf,
            start,
            len: 0,
            cap,
        }
    }

    fn room(&self) -> usize {
        self.cap - self.len
    }

    /// Copy as much of `src` as fits; return what did not.
    fn fill<'a>(&mut self, src: &'a [u8]) -> &'a [u8] {
        let n = self.room().min(src.len());
        self.take(n).copy_from_slice(&src[..n]);
        &src[n..]
    }

    /// The next `n` bytes, counted as filled.
    fn take(&mut self, n: usize) -> &mut [u8] {
        assert!(
            n <= self.room(),
            "{n} bytes asked of a block with room for {}",
            self.room()
        );
        let at = self.start + self.len;
        self.len += n;
        &mut self.buf[at..at + n]
    }

    fn filled(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    fn clear(&mut self) {
        self.len = 0;
    }
}

/// The output file seen by the writer thread: bytes go at increasing offsets,
/// with direct I/O while the file system takes it and writes are aligned,
/// else through the page cache with a periodic `fdatasync`. The flag is
/// cleared before the writer returns, so the file is left as it was opened.
struct Output<'f> {
    file: &'f File,
    pos: u64,
    direct: bool,
    unsynced: usize,
}

impl<'f> Output<'f> {
    /// Output to `file`, direct if `direct` and the file system allows it.
    fn new(file: &'f File, direct: bool) -> Output<'f> {
        Output {
            file,
            pos: 0,
            direct: direct && set_direct(file, true).is_ok(),
            unsynced: 0,
        }
    }

    /// Write all of `bytes` at `pos`: its whole sectors directly when it and
    /// `pos` are aligned, the rest (the file's last bytes) through the page
    /// cache.
    fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let mut n = bytes.len();
            if self.direct {
                n = n / DIO_ALIGN * DIO_ALIGN;
                if n == 0 || !dio_aligned(&bytes[..n], self.pos) {
                    self.buffered()?;
                    n = bytes.len();
                }
            }
            // Sequential writes: the file position is `pos`.
            match (&*self.file).write(&bytes[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    bytes = &bytes[k..];
                    self.pos += k as u64;
                    if !self.direct {
                        self.unsynced += k;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A file system may accept O_DIRECT and still refuse a direct
                // write (alignment, or no support): nothing was written, go on
                // through the page cache.
                Err(e) if self.direct && e.raw_os_error() == Some(EINVAL) => self.buffered()?,
                Err(e) => return Err(e),
            }
        }
        // Through the page cache, push dirty pages to disk as we go, on this
        // thread, so the final fsync is short and writing overlaps encoding.
        if self.unsynced >= SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(())
    }

    /// Go on through the page cache.
    fn buffered(&mut self) -> io::Result<()> {
        if self.direct {
            set_direct(self.file, false)?;
            self.direct = false;
        }
        Ok(())
    }
}

/// Whether `bytes` can be written directly at `pos`.
fn dio_aligned(bytes: &[u8], pos: u64) -> bool {
    bytes.as_ptr().align_offset(DIO_ALIGN) == 0
        && bytes.len() % DIO_ALIGN == 0
        && pos % DIO_ALIGN as u64 == 0
}

#[cfg(target_os = "linux")]
const EINVAL: i32 = rustix::io::Errno::INVAL.raw_os_error();
#[cfg(not(target_os = "linux"))]
const EINVAL: i32 = 22;

/// Turn direct I/O on or off for `file` (Linux `O_DIRECT`; refused elsewhere
/// and by file systems without it, such as older tmpfs).
#[cfg(target_os = "linux")]
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
    let flags = fcntl_getfl(file)?;
    let flags = if on {
        flags | OFlags::DIRECT
    } else {
        flags - OFlags::DIRECT
    };
    Ok(fcntl_setfl(file, flags)?)
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_file: &File, on: bool) -> io::Result<()> {
    if on {
        Err(io::ErrorKind::Unsupported.into())
    } else {
        Ok(())
    }
}

/// Total encoded bytes per output type, for summaries.
pub fn bytes_by_type(model: &Model, layout: &Layout) -> Vec<(GgmlType, u64, usize)> {
    let mut v: Vec<(GgmlType, u64, usize)> = Vec::new();
    for (t, &(_, b)) in model.tensors.iter().zip(&layout.tensors) {
        let ty = t.ggml_type().expect("planned");
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
    use super::*;
    use passes::{Metadata, Role, Source, SourceDType};

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
                passes::MetaValue::String("emit-test".into()),
            )]),
            ..Model::default()
        };
        (model, data)
    }

    /// What the file must hold: the header, then each tensor encoded whole
    /// into a fresh buffer, padded.
    fn expected(model: &Model, data: &[Vec<f32>], layout: &Layout) -> Vec<u8> {
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
        assert!(GgmlType::Q8_0.row_bytes(2_000_000).unwrap() > MAX_IN_PLACE);
        let maps = [MappedFile::open(&model.files[0]).unwrap()];
        let layout = plan(&model);
        let want = expected(&model, &data, &layout);
        for direct in [true, false] {
            let out = dir.path().join(format!("out-{direct}.gguf"));
            let cancel = AtomicBool::new(false);
            let opts = EmitOptions::default();
            emit(&model, &maps, &layout, &out, opts, &|_| {}, &cancel, direct).unwrap();
            let got = std::fs::read(&out).unwrap();
            assert_eq!(got.len() as u64, layout.total_bytes, "direct: {direct}");
            assert!(got == want, "direct: {direct}: bytes differ");
        }
    }

    #[test]
    fn counts_nan_and_infinities() {
        let mut v = values(200_000, 9);
        assert_eq!(count_nonfinite(&v), 0);
        v[0] = f32::NAN;
        v[70_000] = f32::INFINITY;
        v[199_999] = f32::NEG_INFINITY;
        v[5] = f32::MAX;
        v[6] = f32::MIN_POSITIVE / 2.0;
        assert_eq!(count_nonfinite(&v), 3);
    }

    #[test]
    fn cancel_is_interrupted_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (model, _) = model(dir.path(), &[("a.weight", &[64, 4096], GgmlType::Q8_0)]);
        let maps = [MappedFile::open(&model.files[0]).unwrap()];
        let layout = plan(&model);
        let out = dir.path().join("out.gguf");
        let cancel = AtomicBool::new(true);
        let r = write_gguf(
            &model,
            &maps,
            &layout,
            &out,
            EmitOptions::default(),
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
}
