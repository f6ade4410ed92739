//! `layout`: which output file each tensor goes into. A model too large for
//! one device is cut into one file per device (llama.cpp's split layout for
//! GGUF, numbered shards for safetensors), recorded in [`Model::shards`] for
//! the container to lay out.
//!
//! What must stay true: shards are contiguous ranges of the tensor table, in
//! order, non-empty, covering every tensor, each holding at most the
//! per-device cap of encoded bytes; one device leaves `shards` empty (one
//! file). The cut depends only on the encoded sizes, so the same plan gives
//! the same files.

use std::ops::Range;

use crate::error::PassError;
use crate::ir::Model;
use crate::passes::{Context, Pass};

const NAME: &str = "layout";

/// Cut the planned model into `devices` files of at most `cap` encoded
/// bytes each (see [`cut`]).
#[derive(Debug, Clone, Copy)]
pub struct Shard {
    pub devices: usize,
    pub cap: u64,
}

impl Pass for Shard {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, _cx: &Context<'_>) -> Result<(), PassError> {
        model.shards.clear();
        if self.devices <= 1 {
            return Ok(());
        }
        let sizes = model
            .tensors
            .iter()
            .map(|t| {
                t.encoded_bytes().ok_or_else(|| {
                    PassError::new(NAME, Some(&t.name), "no encoding to size the tensor by")
                })
            })
            .collect::<Result<Vec<u64>, PassError>>()?;
        model.shards = cut(&sizes, self.devices, self.cap).ok_or_else(|| {
            PassError::new(
                NAME,
                None,
                format!(
                    "the plan's {} tensors cannot be cut into {} files of at most {} bytes each, in order",
                    sizes.len(),
                    self.devices,
                    self.cap
                ),
            )
        })?;
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Role, Source, SourceDType, TensorNode};
    use quant::GgmlType;

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

    fn node(name: &str, rows: usize) -> TensorNode {
        TensorNode {
            name: name.into(),
            source_name: name.into(),
            shape: vec![rows, 32],
            role: Role::Other,
            layer: None,
            source: Source {
                file: 0,
                dtype: SourceDType::F32,
                offset: 0,
                len: (rows * 32 * 4) as u64,
            },
            parts: Vec::new(),
            transform: None,
            encoding: Some(GgmlType::Q8_0.into()),
            notes: Vec::new(),
        }
    }

    #[test]
    fn shards_by_encoded_bytes_and_one_device_is_one_file() {
        // Q8_0 rows of 32 are 34 bytes: 10 rows are 340 bytes.
        let mut m = Model {
            tensors: vec![node("a", 10), node("b", 10), node("c", 10), node("d", 10)],
            ..Model::default()
        };
        Shard {
            devices: 2,
            cap: 680,
        }
        .run(&mut m, &Context::default())
        .unwrap();
        assert_eq!(m.shards, vec![0..2, 2..4]);
        Shard { devices: 1, cap: 0 }
            .run(&mut m, &Context::default())
            .unwrap();
        assert!(m.shards.is_empty());
        let e = Shard {
            devices: 2,
            cap: 600,
        }
        .run(&mut m, &Context::default())
        .unwrap_err();
        assert!(e.to_string().contains("cannot be cut"), "{e}");
    }
}
