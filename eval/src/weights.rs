//! Weight-level error: every tensor of a candidate compared element by
//! element with the same tensor of the original, after both are normalized to
//! GGUF naming and layout and decoded to f32. Streams rows straight from the
//! mapped files (memory stays at a few rows per thread), in parallel over
//! blocks of rows.
//!
//! Metrics, with a = original, b = candidate, e = b - a:
//! RMSE sqrt(Σe²/n); relative Frobenius error sqrt(Σe²/Σa²); SNR
//! 10·log10(Σa²/Σe²) dB; cosine Σab/sqrt(Σa²Σb²); max |e|; and, with an
//! importance matrix (mean squared input activation w_j per input column), the
//! importance-weighted relative error sqrt(Σ w_j e_ij² / Σ w_j a_ij²), which
//! estimates ‖(B−A)x‖/‖Ax‖ over the calibration activations.
//!
//! What must stay true: sums are f64 and merged in tensor and row order, so the
//! report does not depend on the thread count; a tensor present in one model
//! only, or with another shape, is reported as a note, never silently skipped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use passes::Role;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::Opened;

/// Running sums of a comparison.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sums {
    pub n: u64,
    pub e2: f64,
    pub a2: f64,
    pub b2: f64,
    pub ab: f64,
    pub max_abs: f64,
    /// Σ w e², Σ w a² (importance-weighted), when an importance vector applies.
    pub we2: f64,
    pub wa2: f64,
    pub weighted: bool,
}

impl Sums {
    pub fn merge(&mut self, o: &Sums) {
        self.n += o.n;
        self.e2 += o.e2;
        self.a2 += o.a2;
        self.b2 += o.b2;
        self.ab += o.ab;
        self.max_abs = self.max_abs.max(o.max_abs);
        self.we2 += o.we2;
        self.wa2 += o.wa2;
        self.weighted |= o.weighted;
    }

    fn add_row(&mut self, a: &[f32], b: &[f32], w: Option<&[f32]>) {
        self.n += a.len() as u64;
        for (j, (&x, &y)) in a.iter().zip(b).enumerate() {
            let (x, y) = (x as f64, y as f64);
            let e = y - x;
            self.e2 += e * e;
            self.a2 += x * x;
            self.b2 += y * y;
            self.ab += x * y;
            if e.abs() > self.max_abs || e.is_nan() {
                self.max_abs = e.abs();
            }
            if let Some(w) = w {
                let w = w[j] as f64;
                self.we2 += w * e * e;
                self.wa2 += w * x * x;
            }
        }
        self.weighted |= w.is_some();
    }

    pub fn metrics(&self) -> Metrics {
        let n = self.n.max(1) as f64;
        let ratio = |num: f64, den: f64| if den > 0.0 { Some(num / den) } else { None };
        Metrics {
            elements: self.n,
            rmse: (self.e2 / n).sqrt(),
            rel_frobenius: ratio(self.e2, self.a2).map(f64::sqrt),
            // Exact copies have no noise: no finite SNR (null in JSON).
            snr_db: ratio(self.a2, self.e2).map(|r| 10.0 * r.log10()),
            cosine: ratio(self.ab, (self.a2 * self.b2).sqrt()),
            max_abs: self.max_abs,
            weighted_rel_err: if self.weighted {
                ratio(self.we2, self.wa2).map(f64::sqrt)
            } else {
                None
            },
        }
    }
}

/// The metrics of one tensor, role or model.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Metrics {
    pub elements: u64,
    pub rmse: f64,
    pub rel_frobenius: Option<f64>,
    pub snr_db: Option<f64>,
    pub cosine: Option<f64>,
    pub max_abs: f64,
    /// Importance-weighted relative error (only with an importance matrix;
    /// for a role or the total, pooled over the tensors that have an entry).
    pub weighted_rel_err: Option<f64>,
}

/// One compared tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorError {
    pub name: String,
    /// The candidate's name for it, when another (a depth-pruned candidate's
    /// blocks are renumbered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_name: Option<String>,
    pub role: &'static str,
    pub shape: Vec<usize>,
    /// Storage types, as GGUF tools name them (`BF16`, `Q8_0`).
    pub original_type: String,
    pub candidate_type: String,
    #[serde(flatten)]
    pub metrics: Metrics,
    #[serde(skip)]
    pub sums: Sums,
}

/// Per-role or total metrics.
#[derive(Debug, Clone, Serialize)]
pub struct GroupError {
    pub role: String,
    pub tensors: usize,
    #[serde(flatten)]
    pub metrics: Metrics,
}

/// The comparison of two models.
#[derive(Debug, Clone, Serialize)]
pub struct WeightReport {
    pub tensors: Vec<TensorError>,
    pub roles: Vec<GroupError>,
    pub total: GroupError,
    /// Tensors that could not be compared, and why.
    pub notes: Vec<String>,
}

/// Importance per input column (mean squared activation), by tensor name.
pub type Importance = HashMap<String, Vec<f32>>;

/// Refuse an importance matrix whose entry for a tensor of `model` holds
/// another number of values than the tensor has columns (the entry then
/// belongs to another model): the message names the tensor and both numbers.
pub fn check_importance(model: &Opened, importance: &Importance) -> Result<()> {
    for t in &model.loaded.model.tensors {
        if let Some(w) = importance.get(&t.name) {
            if w.len() != t.row_len() {
                return Err(Error::Input(format!(
                    "tensor `{}`: the importance matrix has {} values for it, the tensor has {} columns",
                    passes::printable(&t.name),
                    w.len(),
                    t.row_len()
                )));
            }
        }
    }
    Ok(())
}

/// Rows per unit of parallel work: about a million elements.
fn rows_per_job(row_len: usize) -> usize {
    (1usize << 20).div_ceil(row_len.max(1)).max(1)
}

/// Which block of the candidate a block of the original is compared with.
/// A depth-pruned candidate (kiln's `--prune layers=...`, recorded in the
/// GGUF's `kiln.prune` or the artifact directory's manifest.json) is
/// compared block by block with the blocks it kept, renumbered; a candidate
/// with another number of blocks and no such record has its blocks left out
/// (comparing `blk.0` with `blk.0` there would compare different blocks).
struct BlockMap {
    /// Original layer -> candidate layer (`None`: removed); empty: same names.
    map: Vec<Option<usize>>,
    /// Compare no block tensor (the layer counts differ, no record says how).
    skip_blocks: bool,
    note: Option<String>,
}

impl BlockMap {
    fn new(original: &Opened, candidate: &Opened) -> BlockMap {
        let layers = |o: &Opened| o.loaded.model.arch.as_ref().map(|a| a.n_layer);
        let same = BlockMap {
            map: Vec::new(),
            skip_blocks: false,
            note: None,
        };
        let (Some(n_orig), Some(n_cand)) = (layers(original), layers(candidate)) else {
            return same;
        };
        let removed = pruned_layers(candidate);
        match removed {
            Some((spec, removed))
                if removed.iter().all(|&l| l < n_orig) && n_orig - removed.len() == n_cand =>
            {
                BlockMap {
                    map: passes::passes::prune::layer_map(n_orig, &removed),
                    skip_blocks: false,
                    note: Some(format!(
                        "the candidate is depth-pruned (`{spec}`): its blocks are compared with the original blocks they came from; removed blocks {} are not compared",
                        removed.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", ")
                    )),
                }
            }
            _ if n_orig == n_cand => same,
            _ => BlockMap {
                map: Vec::new(),
                skip_blocks: true,
                note: Some(format!(
                    "the original has {n_orig} blocks and the candidate {n_cand}, and the candidate records no kiln depth pruning that says which were kept: block tensors are not compared, only the others"
                )),
            },
        }
    }

    /// The candidate's name for original tensor `name`; `None` when it is
    /// not compared (a removed block, or every block when `skip_blocks`).
    fn candidate_name(&self, name: &str) -> Option<String> {
        if self.skips(name) {
            return None;
        }
        passes::passes::prune::rename_layer(name, &self.map)
    }

    fn skips(&self, name: &str) -> bool {
        self.skip_blocks && name.starts_with("blk.")
    }
}

/// ` (the candidate's `blk.N...`)` when a block was renumbered.
fn renamed(a: &str, b: &str) -> String {
    match a == b {
        true => String::new(),
        false => format!(" (the candidate's `{b}`)"),
    }
}

/// The layers a kiln-pruned candidate removed, with the spec that says so:
/// the GGUF's `kiln.prune`, or an artifact directory's manifest.json
/// (`prune.resolved` from `kiln convert`, `pruning.chosen` from `kiln build`).
fn pruned_layers(candidate: &Opened) -> Option<(String, Vec<usize>)> {
    let spec = match candidate.loaded.model.metadata.get("kiln.prune") {
        Some(passes::MetaValue::String(s)) => Some(s.clone()),
        _ => None,
    }
    .or_else(|| {
        let dir = candidate.path.is_dir().then(|| candidate.path.clone())?;
        let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
        let m: serde_json::Value = serde_json::from_str(&text).ok()?;
        ["/prune/resolved", "/pruning/chosen"]
            .iter()
            .find_map(|k| m.pointer(k).and_then(|v| v.as_str()))
            .map(str::to_string)
    })?;
    let parsed = passes::passes::prune::parse_spec(&spec).ok()?;
    match parsed.layers {
        Some(passes::passes::prune::LayerSel::Named(v)) => Some((spec, v)),
        _ => None,
    }
}

/// Compare every tensor of `candidate` with `original`. `progress` gets the
/// original's source bytes as they are done; `cancel` stops between blocks.
pub fn compare(
    original: &Opened,
    candidate: &Opened,
    importance: Option<&Importance>,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &AtomicBool,
) -> Result<WeightReport> {
    let mut notes = Vec::new();
    let mut pairs = Vec::new();
    let blocks = BlockMap::new(original, candidate);
    notes.extend(blocks.note.iter().cloned());
    let mut matched = std::collections::HashSet::new();
    for a in &original.loaded.model.tensors {
        let Some(name) = blocks.candidate_name(&a.name) else {
            continue;
        };
        match candidate.tensor(&name) {
            None => notes.push(format!("`{}`: not in the candidate", a.name)),
            Some(b) if b.shape != a.shape => {
                matched.insert(b.name.as_str());
                notes.push(format!(
                    "`{}`: shape {:?} in the original, {:?} in the candidate{}",
                    a.name,
                    a.shape,
                    b.shape,
                    renamed(&a.name, &b.name)
                ))
            }
            Some(b) => {
                matched.insert(b.name.as_str());
                pairs.push((a, b))
            }
        }
    }
    for b in &candidate.loaded.model.tensors {
        if !matched.contains(b.name.as_str()) && !blocks.skips(&b.name) {
            notes.push(format!("`{}`: not in the original", b.name));
        }
    }
    if pairs.is_empty() {
        // Nothing compared is not a perfect match (it printed `snr_dB inf`).
        return Err(Error::Input(format!(
            "{} and {}: no tensor of the same name and shape in both ({} and {} tensors): nothing to compare",
            original.name(),
            candidate.name(),
            original.loaded.model.tensors.len(),
            candidate.loaded.model.tensors.len()
        )));
    }
    let mut weights: Vec<Option<&[f32]>> = Vec::with_capacity(pairs.len());
    for (a, _) in &pairs {
        let w = importance.and_then(|m| m.get(&a.name));
        match w {
            Some(w) if w.len() != a.row_len() => {
                notes.push(format!(
                    "`{}`: the importance matrix has {} columns, the tensor {}; compared without it",
                    a.name,
                    w.len(),
                    a.row_len()
                ));
                weights.push(None);
            }
            Some(w) => weights.push(Some(w.as_slice())),
            None => weights.push(None),
        }
    }

    // (pair index, first row, end row) blocks, in order.
    let jobs: Vec<(usize, usize, usize)> = pairs
        .iter()
        .enumerate()
        .flat_map(|(i, (a, _))| {
            let step = rows_per_job(a.row_len());
            let rows = a.n_rows();
            (0..rows)
                .step_by(step)
                .map(move |r| (i, r, (r + step).min(rows)))
        })
        .collect();
    let results: Vec<Result<Sums>> = jobs
        .par_iter()
        .map(|&(i, r0, r1)| {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Formats(formats::Error::Interrupted));
            }
            let (a, b) = pairs[i];
            let len = a.row_len();
            let (mut ra, mut rb) = (vec![0f32; len], vec![0f32; len]);
            let mut s = Sums::default();
            for r in r0..r1 {
                original.loaded.read_row(a, r, &mut ra);
                candidate.loaded.read_row(b, r, &mut rb);
                s.add_row(&ra, &rb, weights[i]);
            }
            let rows = a.n_rows().max(1) as u64;
            progress(a.source.len * (r1 - r0) as u64 / rows);
            Ok(s)
        })
        .collect();
    let mut per_tensor = vec![Sums::default(); pairs.len()];
    for (&(i, _, _), s) in jobs.iter().zip(results) {
        per_tensor[i].merge(&s?);
    }

    let tensors: Vec<TensorError> = pairs
        .iter()
        .zip(&per_tensor)
        .map(|((a, b), s)| TensorError {
            name: a.name.clone(),
            candidate_name: (b.name != a.name).then(|| b.name.clone()),
            role: a.role.name(),
            shape: a.shape.clone(),
            original_type: original.loaded.storage_name(a),
            candidate_type: candidate.loaded.storage_name(b),
            metrics: s.metrics(),
            sums: *s,
        })
        .collect();
    Ok(WeightReport {
        roles: group_by_role(
            &pairs.iter().map(|(a, _)| a.role).collect::<Vec<_>>(),
            &tensors,
        ),
        total: total(&tensors),
        tensors,
        notes,
    })
}

fn group_by_role(roles: &[Role], tensors: &[TensorError]) -> Vec<GroupError> {
    let mut order: Vec<&'static str> = Vec::new();
    let mut sums: HashMap<&'static str, (usize, Sums)> = HashMap::new();
    for (role, t) in roles.iter().zip(tensors) {
        let name = role.name();
        if !sums.contains_key(name) {
            order.push(name);
        }
        let e = sums.entry(name).or_default();
        e.0 += 1;
        e.1.merge(&t.sums);
    }
    order
        .into_iter()
        .map(|r| {
            let (n, s) = sums[r];
            GroupError {
                role: r.to_string(),
                tensors: n,
                metrics: s.metrics(),
            }
        })
        .collect()
}

fn total(tensors: &[TensorError]) -> GroupError {
    let mut s = Sums::default();
    for t in tensors {
        s.merge(&t.sums);
    }
    GroupError {
        role: "total".into(),
        tensors: tensors.len(),
        metrics: s.metrics(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_a_known_error() {
        let mut s = Sums::default();
        s.add_row(&[1.0, 2.0, 2.0], &[1.0, 2.0, 3.0], Some(&[1.0, 1.0, 4.0]));
        let m = s.metrics();
        assert_eq!(m.elements, 3);
        assert!((m.rmse - (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((m.rel_frobenius.unwrap() - (1.0f64 / 9.0).sqrt()).abs() < 1e-12);
        assert!((m.snr_db.unwrap() - 10.0 * 9f64.log10()).abs() < 1e-12);
        assert!((m.cosine.unwrap() - 11.0 / (9f64 * 14.0).sqrt()).abs() < 1e-12);
        assert_eq!(m.max_abs, 1.0);
        // Σw e² = 4, Σw a² = 1 + 4 + 16 = 21
        assert!((m.weighted_rel_err.unwrap() - (4.0f64 / 21.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn identical_tensors_have_no_finite_snr() {
        let mut s = Sums::default();
        s.add_row(&[1.0, -2.0], &[1.0, -2.0], None);
        let m = s.metrics();
        assert_eq!(m.rmse, 0.0);
        assert_eq!(m.snr_db, None);
        assert_eq!(m.cosine, Some(1.0));
        assert_eq!(m.weighted_rel_err, None);
    }
}
