//! Memory-mapping of input files: the one `unsafe` decision in kiln.
//!
//! Inputs are mapped read-only and never copied whole. What must stay true:
//! a mapped file is treated as immutable for the life of the map; if another
//! process truncates it meanwhile, reads may fault (SIGBUS), which is the
//! accepted cost of zero-copy loading, as in ripgrep and safetensors.
#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

use memmap2::{Advice, Mmap, UncheckedAdvice};

use crate::error::{Error, Result};

/// Larger than Linux's default `fault_around_bytes` (64 KiB).
const FAULT_AROUND: usize = 128 << 10;

/// A read-only mapped input file, or bytes computed in memory (tensors
/// computed from config values, see `passes::ir::ComputedTensor`), served
/// the same way.
#[derive(Debug)]
pub struct MappedFile {
    map: Option<Mmap>,
    computed: Vec<u8>,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<MappedFile> {
        crate::input::check_regular(path)?;
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            // mmap of an empty file fails on some systems; an empty slice is the truth.
            return Ok(MappedFile {
                map: None,
                computed: Vec::new(),
            });
        }
        // SAFETY: the map is read-only and the file is an input that kiln never
        // writes; see the module docs for the truncation caveat.
        let map = unsafe { map_readonly(&file) }.map_err(|e| Error::io(path, e))?;
        let _ = map.advise(Advice::Sequential);
        Ok(MappedFile {
            map: Some(map),
            computed: Vec::new(),
        })
    }

    /// Bytes computed in memory, read as a mapped file's.
    pub fn computed(bytes: Vec<u8>) -> MappedFile {
        MappedFile {
            map: None,
            computed: bytes,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&self.computed)
    }

    /// Ask the kernel to start reading `[offset, offset+len)` ahead of use.
    pub fn prefetch(&self, offset: usize, len: usize) {
        if let Some(map) = &self.map {
            let len = len.min(map.len().saturating_sub(offset));
            if len > 0 {
                let _ = map.advise_range(Advice::WillNeed, offset, len);
            }
        }
    }

    /// Tell the kernel the pages of `[offset, offset+len)` are no longer needed
    /// by this process, so resident memory stays flat while streaming a large
    /// file. Pages are re-read from the file if touched again.
    pub fn release(&self, offset: usize, len: usize) {
        let Some(map) = &self.map else { return };
        // Round outward to whole pages, and reach back over the kernel's
        // fault-around window: a fault at `offset` maps up to 64 KiB of
        // already-cached pages around it, including pages of the range
        // released just before, which would otherwise stay resident and make
        // RSS grow with the model. Dropping a page that is still needed only
        // costs a re-read from the page cache.
        let page = 4096;
        let start = offset.saturating_sub(FAULT_AROUND) / page * page;
        let end = (offset + len)
            .div_ceil(page)
            .saturating_mul(page)
            .min(map.len());
        if end > start {
            // SAFETY: the mapping is private and read-only, so dropping its
            // pages only discards clean copies of file data; any later access
            // re-reads the same bytes from the file. No Rust reference observes
            // a change of value.
            let _ = unsafe {
                map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

/// Map `file` read-only.
///
/// # Safety
/// The caller must not let the file be modified or truncated while the map is
/// alive (kiln only maps inputs, which it never writes).
unsafe fn map_readonly(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: forwarded to the caller.
    unsafe { Mmap::map(file) }
}
