//! An artifact directory (`kiln build -o OUTDIR`): the model file(s), the
//! manifest, the report and the chart, written into a hidden staging
//! directory beside `OUTDIR` and swapped in at the end; sha256 of files; and
//! llama.cpp's split layout for models sharded across devices.
//!
//! What must stay true:
//! - `OUTDIR` holds either its old content or the complete new artifact,
//!   never a mixture: every file is written and fsynced in the staging
//!   directory, which is renamed to `OUTDIR` (the old directory, if any, is
//!   renamed aside first and removed after); dropping a [`Staging`] without
//!   [`Staging::commit`] removes everything it wrote;
//! - an existing `OUTDIR` is replaced only if it is empty or holds a kiln
//!   `manifest.json` (a previous build), never an unrelated directory;
//!   missing parent directories are created when staging starts (after
//!   every check that can refuse the build);
//! - split files follow `gguf-split`: `PREFIX-00001-of-0000N.gguf`, the first
//!   holding all metadata, every one holding `split.no` (u16, 0-based),
//!   `split.count` (u16) and `split.tensors.count` (i32, tensors in all
//!   splits), appended after the other keys.

use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use passes::{MetaValue, Model};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::error::{Error, Result};

/// The manifest file name; its presence marks a directory kiln may replace.
pub const MANIFEST: &str = "manifest.json";

/// A staging directory for `out`.
#[derive(Debug)]
pub struct Staging {
    dir: TempDir,
    out: PathBuf,
}

/// Refuse an `OUTDIR` kiln must not replace.
pub fn check_outdir(out: &Path) -> Result<()> {
    let parent = crate::atomic::parent_dir(out);
    // Missing parents are created when writing starts; the nearest existing
    // ancestor must be a directory.
    let mut anc = parent.as_path();
    while !anc.exists() {
        match anc.parent() {
            Some(p) if !p.as_os_str().is_empty() => anc = p,
            _ => break,
        }
    }
    if anc.exists() && !anc.is_dir() {
        return Err(Error::output(
            out,
            format!("{} is not a directory", anc.display()),
        ));
    }
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::output(
                out,
                "exists and is not a directory; kiln build writes a directory of files",
            ));
        }
        let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
        let empty = entries.next().is_none();
        if !empty && !out.join(MANIFEST).is_file() {
            return Err(Error::output(
                out,
                "exists, is not empty and holds no kiln manifest.json: refusing to replace it; choose a new directory",
            ));
        }
    }
    Ok(())
}

impl Staging {
    /// A hidden directory beside `out` (`.NAME.XXXX.kiln-tmp`).
    pub fn new(out: &Path) -> Result<Staging> {
        check_outdir(out)?;
        let parent = crate::atomic::parent_dir(out);
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let prefix = format!(
            ".{}.",
            out.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".kiln-tmp")
            .tempdir_in(&parent)
            .map_err(|e| Error::io(&parent, e))?;
        Ok(Staging {
            dir,
            out: out.to_path_buf(),
        })
    }

    /// Where a file named `name` is staged.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write a small file (manifest, report, chart) and fsync it.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let p = self.path(name);
        let mut f = std::fs::File::create(&p).map_err(|e| Error::io(&p, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&p, e))?;
        f.sync_all().map_err(|e| Error::io(&p, e))
    }

    /// Swap the staged directory in for `out`.
    pub fn commit(self) -> Result<()> {
        let staged = self.dir.keep();
        let fail = |e: std::io::Error, p: &Path| {
            let _ = std::fs::remove_dir_all(&staged);
            Error::io(p, e)
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755));
        }
        if let Ok(d) = std::fs::File::open(&staged) {
            let _ = d.sync_all();
        }
        let aside = if self.out.exists() {
            check_outdir(&self.out).inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&staged);
            })?;
            let aside = staged.with_extension("kiln-old");
            std::fs::rename(&self.out, &aside).map_err(|e| fail(e, &self.out))?;
            Some(aside)
        } else {
            None
        };
        if let Err(e) = std::fs::rename(&staged, &self.out) {
            if let Some(a) = &aside {
                let _ = std::fs::rename(a, &self.out);
            }
            return Err(fail(e, &self.out));
        }
        if let Some(a) = aside {
            let _ = std::fs::remove_dir_all(a);
        }
        if let Ok(d) = std::fs::File::open(crate::atomic::parent_dir(&self.out)) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// The sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The sha256 of bytes, hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file name of split `i` (0-based) of `n`, as llama.cpp's `llama_split_path`.
pub fn split_name(prefix: &str, i: usize, n: usize) -> String {
    format!("{prefix}-{:05}-of-{:05}.gguf", i + 1, n)
}

/// Cut `sizes` (tensor bytes, in file order) into `n` contiguous ranges of
/// nearly equal bytes (each split ends at the tensor that crosses k/n of
/// the total, or earlier when that is closer). Every range is non-empty when
/// there are at least `n` tensors.
pub fn balance(sizes: &[u64], n: usize) -> Vec<Range<usize>> {
    let n = n.clamp(1, sizes.len().max(1));
    let total: u64 = sizes.iter().sum();
    let mut cuts = vec![0usize];
    let mut acc = 0u64;
    let mut k = 1;
    for (i, &s) in sizes.iter().enumerate() {
        if k >= n {
            break;
        }
        let goal = (total as u128 * k as u128 / n as u128) as u64;
        let before = acc;
        acc += s;
        if acc >= goal {
            // Cut before this tensor if that is closer, and leaves a non-empty range.
            let cut = if goal - before < acc - goal && i > *cuts.last().unwrap() {
                i
            } else {
                i + 1
            };
            // Leave enough tensors for the remaining splits.
            let cut = cut.min(sizes.len() - (n - k));
            if cut > *cuts.last().unwrap() {
                cuts.push(cut);
                k += 1;
            }
        }
    }
    while cuts.len() < n {
        let last = *cuts.last().unwrap();
        cuts.push((last + 1).min(sizes.len()));
    }
    cuts.push(sizes.len());
    cuts.windows(2).map(|w| w[0]..w[1]).collect()
}

/// Cut `sizes` into exactly `n` contiguous non-empty ranges of at most `cap`
/// bytes each: the balanced cut when it respects `cap`, else ranges filled
/// up to `cap` in order (then the fullest split further while fewer than
/// `n`); `None` when `n` ranges of `cap` cannot hold them in order.
pub fn cut(sizes: &[u64], n: usize, cap: u64) -> Option<Vec<Range<usize>>> {
    if n == 0 || sizes.len() < n {
        return None;
    }
    let fits = |r: &Range<usize>| sizes[r.clone()].iter().sum::<u64>() <= cap;
    let b = balance(sizes, n);
    if b.len() == n && b.iter().all(fits) {
        return Some(b);
    }
    let mut ranges: Vec<Range<usize>> = Vec::new();
    let (mut start, mut acc) = (0usize, 0u64);
    for (i, &s) in sizes.iter().enumerate() {
        if s > cap {
            return None;
        }
        if acc + s > cap {
            ranges.push(start..i);
            start = i;
            acc = 0;
        }
        acc += s;
    }
    ranges.push(start..sizes.len());
    if ranges.len() > n {
        return None;
    }
    while ranges.len() < n {
        // Split the range holding the most bytes (that has two tensors) in two.
        let (k, _) = ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| r.len() >= 2)
            .max_by_key(|(k, r)| (sizes[(*r).clone()].iter().sum::<u64>(), usize::MAX - k))?;
        let r = ranges.remove(k);
        let halves = balance(&sizes[r.clone()], 2);
        ranges.insert(k, r.start + halves[1].start..r.end);
        ranges.insert(k, r.start..r.start + halves[0].end);
    }
    Some(ranges)
}

/// The model of each split: its tensors, the full metadata in the first,
/// and the split keys in every one.
pub fn split_models(model: &Model, ranges: &[Range<usize>]) -> Vec<Model> {
    let n = ranges.len();
    ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut m = Model {
                files: model.files.clone(),
                arch: model.arch.clone(),
                tensors: model.tensors[r.clone()].to_vec(),
                metadata: if i == 0 {
                    model.metadata.clone()
                } else {
                    passes::Metadata::default()
                },
                notes: Vec::new(),
                importance: model.importance.clone(),
            };
            for key in ["split.no", "split.count", "split.tensors.count"] {
                m.metadata.remove(key);
            }
            m.metadata.set("split.no", MetaValue::U16(i as u16));
            m.metadata.set("split.count", MetaValue::U16(n as u16));
            m.metadata.set(
                "split.tensors.count",
                MetaValue::I32(model.tensors.len() as i32),
            );
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_cuts_near_equal_nonempty_ranges() {
        let r = balance(&[10, 10, 10, 10], 2);
        assert_eq!(r, vec![0..2, 2..4]);
        let r = balance(&[100, 1, 1, 1], 2);
        assert_eq!(r, vec![0..1, 1..4]);
        let r = balance(&[1, 1, 1, 100], 3);
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|x| !x.is_empty()));
        assert_eq!(r.last().unwrap().end, 4);
        let r = balance(&[5; 10], 4);
        assert_eq!(r.len(), 4);
        let sizes: Vec<usize> = r.iter().map(|x| x.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 10);
        assert!(sizes.iter().all(|&s| (2..=3).contains(&s)), "{sizes:?}");
        assert_eq!(balance(&[7], 1), vec![0..1]);
    }

    #[test]
    fn cut_respects_the_cap_and_the_count() {
        // Balanced halves would be [60, 40 | 50, 50]: 100 each.
        assert_eq!(cut(&[60, 40, 50, 50], 2, 100), Some(vec![0..2, 2..4]));
        // Balance puts 100+5 together; a cap of 100 forces another cut.
        let r = cut(&[100, 5, 50, 45], 2, 100).unwrap();
        assert_eq!(r, vec![0..1, 1..4]);
        assert!(cut(&[100, 5, 50, 50], 2, 100).is_none());
        assert!(cut(&[101], 1, 100).is_none());
        // Fewer ranges than asked after filling: the fullest is split.
        let r = cut(&[10, 10, 10, 10], 3, 100).unwrap();
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|x| !x.is_empty()));
        assert_eq!(r.last().unwrap().end, 4);
    }

    #[test]
    fn split_names_follow_llama_cpp() {
        assert_eq!(split_name("m", 0, 3), "m-00001-of-00003.gguf");
        assert_eq!(split_name("m", 2, 3), "m-00003-of-00003.gguf");
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn staging_commits_whole_and_drops_clean() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("art");
        let s = Staging::new(&out).unwrap();
        s.write("a.txt", b"one").unwrap();
        drop(s);
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);

        let s = Staging::new(&out).unwrap();
        s.write(MANIFEST, b"{}").unwrap();
        s.write("a.txt", b"one").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"one");

        // A rerun replaces a kiln artifact.
        let s = Staging::new(&out).unwrap();
        s.write(MANIFEST, b"{}").unwrap();
        s.write("b.txt", b"two").unwrap();
        s.commit().unwrap();
        assert!(!out.join("a.txt").exists());
        assert_eq!(std::fs::read(out.join("b.txt")).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);

        // An unrelated directory is not replaced.
        let other = root.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("x"), b"x").unwrap();
        let err = Staging::new(&other).unwrap_err().to_string();
        assert!(err.contains("refusing"), "{err}");
    }
}
