//! The streaming engine: writes laid-out files ([`FileLayout`]) of a
//! planned model, whatever the container.
//!
//! What must stay true:
//! - the layout is fixed before any tensor is read; each file's header is
//!   written first, then each placed piece is read from the mmap, encoded
//!   (rows in parallel, by the container), written and dropped, a bounded
//!   chunk of rows at a time, so peak memory is a few chunks whatever the
//!   model size;
//! - the bytes depend only on the model, the layout and the container,
//!   never on the thread count (rows are encoded independently and written
//!   in order);
//! - the outputs appear complete or not at all: every file goes to a temp
//!   file in the output directory, fsynced, and all are renamed only once
//!   every one is written; on any error or interruption the temp files are
//!   removed and nothing is left at the output paths (nor the directories
//!   created for them);
//! - a writer thread puts the bytes at increasing offsets in aligned blocks,
//!   with direct I/O where the file system takes it (Linux `O_DIRECT`: no
//!   copy into the page cache, the disk works while rows are encoded, so the
//!   final fsync has little left), else buffered with a periodic
//!   `fdatasync`; both give the same bytes.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use passes::Model;
use rayon::prelude::*;

use super::{check_output, Container, FileLayout, Placement, Unit, WriteOptions, Written};
use crate::data::{read_row, row_bytes, row_spans, source_row_bytes};
use crate::error::{Error, Result};
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
/// Stream `model` into `files` (laid out by `container`) in `dir`, then the
/// container's side files; returns every file written. `progress` is called
/// with the number of input bytes consumed since the last call; `cancel` is
/// polled between chunks.
#[allow(clippy::too_many_arguments)]
pub fn write(
    model: &Model,
    maps: &[MappedFile],
    container: &dyn Container,
    files: &[FileLayout],
    dir: &Path,
    opts: WriteOptions<'_>,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &AtomicBool,
) -> Result<Vec<Written>> {
    write_with(
        model, maps, container, files, dir, opts, progress, cancel, true,
    )
}

/// [`write`], with direct I/O tried (`direct`) or not.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_with(
    model: &Model,
    maps: &[MappedFile],
    container: &dyn Container,
    files: &[FileLayout],
    dir: &Path,
    opts: WriteOptions<'_>,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &AtomicBool,
    direct: bool,
) -> Result<Vec<Written>> {
    let side = container.side_files(model, files)?;
    // Missing directories are created now, and removed again on failure.
    let parents = crate::atomic::Parents::create(dir)?;
    let mut staged = Vec::with_capacity(files.len() + side.len());
    let mut written = Vec::with_capacity(files.len() + side.len());
    for file in files {
        let out = dir.join(&file.name);
        check_output(&out, &model.files)?;
        let tmp = crate::atomic::temp_beside(&out)?;
        let ctx = Ctx {
            model,
            maps,
            container,
            opts,
            progress,
            cancel,
        };
        stream(&ctx, file, &out, tmp.as_file(), tmp.path(), direct)?;
        staged.push((tmp, out));
        written.push(Written {
            name: file.name.clone(),
            bytes: file.total_bytes,
            tensors: true,
        });
    }
    for (name, bytes) in &side {
        let out = dir.join(name);
        check_output(&out, &model.files)?;
        let mut tmp = crate::atomic::temp_beside(&out)?;
        tmp.write_all(bytes).map_err(|e| Error::io(tmp.path(), e))?;
        staged.push((tmp, out));
        written.push(Written {
            name: name.clone(),
            bytes: bytes.len() as u64,
            tensors: false,
        });
    }
    // Every file is complete: only now does any appear.
    for (tmp, out) in staged {
        crate::atomic::commit(tmp, &out)?;
    }
    parents.keep();
    Ok(written)
}

/// What every piece of a write needs.
struct Ctx<'a> {
    model: &'a Model,
    maps: &'a [MappedFile],
    container: &'a dyn Container,
    opts: WriteOptions<'a>,
    progress: &'a (dyn Fn(u64) + Sync),
    cancel: &'a AtomicBool,
}

/// Write one laid-out file into `file` (a temp file at `tmp_path`).
fn stream(
    ctx: &Ctx<'_>,
    layout: &FileLayout,
    out: &Path,
    file: &File,
    tmp_path: &Path,
    direct: bool,
) -> Result<()> {
    let io = |e| Error::io(tmp_path, e);
    // Encoding and writing overlap: rows are encoded straight into aligned
    // blocks (BLOCKS of them, so memory stays bounded), which go to a writer
    // thread that keeps the disk busy meanwhile and hands them back.
    std::thread::scope(|scope| -> Result<()> {
        let (full_tx, full_rx) = sync_channel::<AlignedBlock>(BLOCKS);
        let (empty_tx, empty_rx) = sync_channel::<AlignedBlock>(BLOCKS);
        let writer = scope.spawn(move || write_blocks(file, direct, full_rx, empty_tx));
        let mut sink = Sink {
            block: AlignedBlock::new(WRITE_BLOCK),
            made: 1,
            full: full_tx,
            empty: empty_rx,
            tmp_path,
        };
        let encoded = encode_file(ctx, layout, out, &mut sink);
        // Hand over the last block and close the channel, also after an
        // error, so the writer thread ends.
        let encoded = encoded.and(sink.finish());
        let written = writer.join().expect("the writer thread does not panic");
        // A write error is the cause of any send failure: report it first.
        written.map_err(io)?;
        encoded
    })
}

fn encode_file(ctx: &Ctx<'_>, layout: &FileLayout, out: &Path, sink: &mut Sink<'_>) -> Result<()> {
    sink.put(&layout.header)?;
    let mut pos = layout.header.len() as u64;
    for p in &layout.placements {
        let t = ctx.model.tensors.get(p.tensor).ok_or_else(|| {
            Error::output(
                out,
                format!(
                    "placement of tensor #{}, past the model's {} tensors",
                    p.tensor,
                    ctx.model.tensors.len()
                ),
            )
        })?;
        if p.offset != pos {
            return Err(Error::output(
                out,
                format!(
                    "tensor `{}` placed at {}, but its bytes start at {pos}",
                    t.name, p.offset
                ),
            ));
        }
        write_piece(ctx, sink, p)?;
        sink.put_zeros(p.padding as usize)?;
        pos += p.bytes(t) + p.padding;
    }
    if pos != layout.total_bytes {
        return Err(Error::output(
            out,
            format!("wrote {pos} bytes, laid out {}", layout.total_bytes),
        ));
    }
    Ok(())
}

fn write_piece(ctx: &Ctx<'_>, sink: &mut Sink<'_>, p: &Placement) -> Result<()> {
    if p.unit != Unit::ROW {
        return write_units(ctx, sink, p);
    }
    let (maps, opts) = (ctx.maps, ctx.opts);
    let t = &ctx.model.tensors[p.tensor];
    let row_len = t.row_len();
    let n_rows = t.n_rows();
    let out_row = p.row_bytes;
    let src_row = source_row_bytes(t);
    // A value transform (Gemma's norm `+ 1`) rules out copying the bytes.
    let copy =
        ctx.container.copies_source(t, p.piece) && !t.transform.is_some_and(|x| x.changes_values());
    let importance = opts
        .importance
        .and_then(|m| m.get(&t.name))
        .map(Vec::as_slice);
    // Input bytes are counted once per tensor, with its first piece.
    let counted = p.piece == 0;
    let rows_per_chunk = (CHUNK_F32_BYTES / (row_len.max(1) * 4)).max(1);
    // Rows are encoded in place in the output block when one fits; a longer
    // row goes through a buffer of its own.
    let in_place = out_row <= MAX_IN_PLACE;
    let mut spill = Vec::new();
    let mut nonfinite = 0u64;
    let mut r0 = 0;
    while r0 < n_rows {
        if ctx.cancel.load(Ordering::Relaxed) {
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
            let next = rows_per_chunk.min(n_rows - r1);
            for (file, start, len) in row_spans(t, r1, r1 + next) {
                maps[file].prefetch(start, len);
            }
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
                        ctx.container.encode_row(t, p.piece, scratch, dst, imp);
                    }
                    if check {
                        count_nonfinite(scratch)
                    } else {
                        0
                    }
                },
            )
            .sum::<u64>();
        if !in_place {
            sink.put(&spill)?;
        }
        if t.transform.is_none() {
            for (file, start, len) in row_spans(t, r0, r1) {
                maps[file].release(start, len);
            }
        }
        if counted {
            (ctx.progress)(((r1 - r0) * src_row) as u64);
        }
        r0 = r1;
    }
    release_transformed(ctx, p)?;
    nonfinite_error(ctx, t, nonfinite)
}

/// A piece encoded a unit of several rows at a time ([`Placement::unit`]):
/// units in parallel, each from its rows decoded into one buffer, a bounded
/// number of units per chunk. Bytes depend only on the unit boundaries,
/// which are fixed by the layout, so they do not depend on the thread count.
fn write_units(ctx: &Ctx<'_>, sink: &mut Sink<'_>, p: &Placement) -> Result<()> {
    let maps = ctx.maps;
    let t = &ctx.model.tensors[p.tensor];
    if p.unit == Unit::CONST {
        let mut dst = vec![0u8; p.row_bytes];
        ctx.container.encode_unit(t, p.piece, 0, &[], &mut dst);
        return sink.put(&dst);
    }
    let row_len = t.row_len();
    let n_rows = t.n_rows();
    let unit_rows = p.unit.rows.max(1);
    let unit_out = if p.unit.per_row {
        p.row_bytes * unit_rows
    } else {
        p.row_bytes
    };
    let src_row = source_row_bytes(t);
    let counted = p.piece == 0;
    let units_per_chunk = (CHUNK_F32_BYTES / (row_len.max(1) * 4 * unit_rows)).max(1);
    let check = !ctx.opts.allow_nonfinite;
    let mut buf = Vec::new();
    let mut nonfinite = 0u64;
    let mut r0 = 0;
    while r0 < n_rows {
        if ctx.cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let r1 = (r0 + units_per_chunk * unit_rows).min(n_rows);
        let rows = r1 - r0;
        let out_len = if p.unit.per_row {
            rows * p.row_bytes
        } else {
            rows.div_ceil(unit_rows) * p.row_bytes
        };
        buf.clear();
        buf.resize(out_len, 0);
        nonfinite += buf
            .par_chunks_mut(unit_out)
            .enumerate()
            .map_init(Vec::new, |scratch: &mut Vec<f32>, (u, dst)| {
                let first = r0 + u * unit_rows;
                let k = unit_rows.min(r1 - first);
                scratch.resize(k * row_len, 0.0);
                for (i, v) in scratch.chunks_exact_mut(row_len.max(1)).enumerate() {
                    read_row(maps, t, first + i, v);
                }
                ctx.container
                    .encode_unit(t, p.piece, first, &scratch[..k * row_len], dst);
                if check {
                    count_nonfinite(scratch)
                } else {
                    0
                }
            })
            .sum::<u64>();
        sink.put(&buf)?;
        if t.transform.is_none() {
            for (file, start, len) in row_spans(t, r0, r1) {
                maps[file].release(start, len);
            }
        }
        if counted {
            (ctx.progress)((rows * src_row) as u64);
        }
        r0 = r1;
    }
    release_transformed(ctx, p)?;
    nonfinite_error(ctx, t, nonfinite)
}

fn release_transformed(ctx: &Ctx<'_>, p: &Placement) -> Result<()> {
    let t = &ctx.model.tensors[p.tensor];
    if t.transform.is_some() {
        let parts = if t.parts.is_empty() {
            std::slice::from_ref(&t.source)
        } else {
            &t.parts[..]
        };
        for s in parts {
            ctx.maps[s.file].release(s.offset as usize, s.len as usize);
        }
    }
    Ok(())
}

fn nonfinite_error(ctx: &Ctx<'_>, t: &passes::TensorNode, nonfinite: u64) -> Result<()> {
    if nonfinite > 0 {
        // The file the weights came from (the user's to fix), not the output.
        return Err(Error::NonFinite {
            path: ctx
                .model
                .files
                .get(t.source.file)
                .cloned()
                .unwrap_or_default(),
            tensor: t.source_name.clone(),
            count: nonfinite,
        });
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use passes::{Role, Source, SourceDType, TensorNode};

    /// A container that is not GGUF: a text header listing the tensors,
    /// then per tensor two pieces (each row's values as f32 scaled by 2, and
    /// one byte per row: its count of negative values), 8-byte aligned; one
    /// file per tensor, and an index beside them.
    struct Toy;

    impl Container for Toy {
        fn layout(&self, model: &Model) -> Result<Vec<FileLayout>> {
            Ok(model
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let header = format!("toy {} {:?}\n", t.name, t.shape).into_bytes();
                    let mut offset = header.len() as u64;
                    let placements = [t.row_len() * 4, 1]
                        .into_iter()
                        .enumerate()
                        .map(|(piece, row_bytes)| {
                            let bytes = (row_bytes * t.n_rows()) as u64;
                            let p = Placement {
                                tensor: i,
                                piece,
                                offset,
                                row_bytes,
                                unit: super::super::Unit::ROW,
                                padding: bytes.next_multiple_of(8) - bytes,
                            };
                            offset += bytes + p.padding;
                            p
                        })
                        .collect();
                    FileLayout {
                        name: format!("{}.toy", t.name),
                        header,
                        placements,
                        total_bytes: offset,
                    }
                })
                .collect())
        }

        fn copies_source(&self, _t: &TensorNode, _piece: usize) -> bool {
            false
        }

        fn encode_row(
            &self,
            _t: &TensorNode,
            piece: usize,
            values: &[f32],
            dst: &mut [u8],
            _importance: Option<&[f32]>,
        ) {
            match piece {
                0 => {
                    for (d, v) in dst.chunks_exact_mut(4).zip(values) {
                        d.copy_from_slice(&(v * 2.0).to_le_bytes());
                    }
                }
                _ => dst[0] = values.iter().filter(|v| **v < 0.0).count() as u8,
            }
        }

        fn side_files(
            &self,
            model: &Model,
            files: &[FileLayout],
        ) -> Result<Vec<(String, Vec<u8>)>> {
            let index: Vec<String> = files
                .iter()
                .zip(&model.tensors)
                .map(|(f, t)| format!("{} {}", t.name, f.name))
                .collect();
            Ok(vec![("index.txt".into(), index.join("\n").into_bytes())])
        }
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i * 7 + seed) % 23) as f32 - 11.0)
            .collect()
    }

    /// Two F32 tensors (one of rows longer than a write block) in one input file.
    fn model(dir: &Path) -> (Model, Vec<Vec<f32>>) {
        let shapes: [&[usize]; 2] = [&[5, 3], &[2, 600_000]];
        let mut bytes = Vec::new();
        let mut tensors = Vec::new();
        let mut data = Vec::new();
        for (i, shape) in shapes.iter().enumerate() {
            let v = values(shape.iter().product(), i as u32);
            let offset = bytes.len() as u64;
            bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()));
            tensors.push(TensorNode {
                name: format!("t{i}"),
                source_name: format!("t{i}"),
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
                encoding: None,
                notes: Vec::new(),
            });
            data.push(v);
        }
        let input = dir.join("in.bin");
        std::fs::write(&input, &bytes).unwrap();
        let model = Model {
            files: vec![input],
            tensors,
            ..Model::default()
        };
        (model, data)
    }

    /// The engine writes whatever a container lays out: several files,
    /// several pieces per tensor, padding, side files; with direct I/O and
    /// without, and counts each tensor's input bytes once.
    #[test]
    fn writes_a_toy_container() {
        let dir = tempfile::tempdir().unwrap();
        let (model, data) = model(dir.path());
        let maps = [MappedFile::open(&model.files[0]).unwrap()];
        let files = Toy.layout(&model).unwrap();
        for direct in [true, false] {
            let out = dir.path().join(format!("out-{direct}"));
            std::fs::create_dir(&out).unwrap();
            let consumed = std::sync::atomic::AtomicU64::new(0);
            let progress = |n: u64| {
                consumed.fetch_add(n, Ordering::Relaxed);
            };
            let cancel = AtomicBool::new(false);
            let written = write_with(
                &model,
                &maps,
                &Toy,
                &files,
                &out,
                WriteOptions::default(),
                &progress,
                &cancel,
                direct,
            )
            .unwrap();
            let names: Vec<(&str, bool)> = written
                .iter()
                .map(|w| (w.name.as_str(), w.tensors))
                .collect();
            assert_eq!(
                names,
                [("t0.toy", true), ("t1.toy", true), ("index.txt", false)]
            );
            let input: u64 = model.tensors.iter().map(|t| t.source.len).sum();
            assert_eq!(consumed.load(Ordering::Relaxed), input);
            for ((f, t), v) in files.iter().zip(&model.tensors).zip(&data) {
                let scaled: Vec<u8> = v.iter().flat_map(|x| (x * 2.0).to_le_bytes()).collect();
                let negatives: Vec<u8> = v
                    .chunks(t.row_len())
                    .map(|r| r.iter().filter(|x| **x < 0.0).count() as u8)
                    .collect();
                let mut want = f.header.clone();
                for piece in [scaled, negatives] {
                    let n = piece.len();
                    want.extend(piece);
                    want.resize(want.len() + n.next_multiple_of(8) - n, 0);
                }
                let got = std::fs::read(out.join(&f.name)).unwrap();
                assert_eq!(got.len() as u64, f.total_bytes);
                assert!(got == want, "{}: direct {direct}: bytes differ", f.name);
            }
            let index = std::fs::read_to_string(out.join("index.txt")).unwrap();
            assert_eq!(index, "t0 t0.toy\nt1 t1.toy");
        }
    }

    /// A layout that does not add up is refused, and nothing is left.
    #[test]
    fn a_bad_layout_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (model, _) = model(dir.path());
        let maps = [MappedFile::open(&model.files[0]).unwrap()];
        let mut files = Toy.layout(&model).unwrap();
        files[1].placements[1].offset += 8;
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let cancel = AtomicBool::new(false);
        let r = write(
            &model,
            &maps,
            &Toy,
            &files,
            &out,
            WriteOptions::default(),
            &|_| {},
            &cancel,
        );
        let e = r.unwrap_err().to_string();
        assert!(e.contains("placed at"), "{e}");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    }

    /// A stacked tensor (`TensorNode::parts`) is its parts' rows in part
    /// order, wherever the parts lie in the input, with and without direct I/O.
    #[test]
    fn writes_a_stacked_tensor_part_by_part() {
        let dir = tempfile::tempdir().unwrap();
        let (mut model, data) = model(dir.path());
        // Stack t0 ([5, 3]) after a copy of itself read from t1's bytes: two
        // parts of 5 rows of 3, the second starting at t1's offset.
        let t1 = model.tensors[1].source.clone();
        let mut parts = vec![
            model.tensors[0].source.clone(),
            Source {
                len: 15 * 4,
                ..t1.clone()
            },
        ];
        parts.swap(0, 1);
        let mut s = model.tensors[0].clone();
        s.name = "stacked".into();
        s.shape = vec![2, 5, 3];
        s.source = Source {
            len: 30 * 4,
            ..parts[0].clone()
        };
        s.parts = parts;
        model.tensors = vec![s];
        let maps = [MappedFile::open(&model.files[0]).unwrap()];
        let files = Toy.layout(&model).unwrap();
        for direct in [true, false] {
            let out = dir.path().join(format!("stacked-{direct}"));
            std::fs::create_dir(&out).unwrap();
            let cancel = AtomicBool::new(false);
            write_with(
                &model,
                &maps,
                &Toy,
                &files,
                &out,
                WriteOptions::default(),
                &|_| {},
                &cancel,
                direct,
            )
            .unwrap();
            let got = std::fs::read(out.join("stacked.toy")).unwrap();
            let want: Vec<f32> = data[1][..15]
                .iter()
                .chain(&data[0])
                .map(|x| x * 2.0)
                .collect();
            let body = &got[files[0].header.len()..files[0].header.len() + 30 * 4];
            let vals: Vec<f32> = body
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(vals, want, "direct {direct}");
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
}
