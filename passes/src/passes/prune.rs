//! Structured pruning: three passes that remove whole pieces of the network
//! and leave a smaller dense model every runtime loads as it is.
//!
//! - `prune-depth` removes whole blocks; later blocks are renumbered (GGUF
//!   and source names), per-layer facts follow (MoE's leading dense layers,
//!   a GGUF input's per-layer arrays), and a removal that would change which
//!   layers use Gemma's sliding window (llama.cpp's pattern is positional)
//!   is refused by name.
//! - `prune-ffn` keeps the same number of FFN channels in every layer
//!   (config `intermediate_size`), the most important ones by Wanda's
//!   statistic: the channel's activation norm (`ffn_down`'s input, from an
//!   imatrix) times the norm of its `ffn_down` column; without activations,
//!   by weight norms alone (said in a model note).
//! - `prune-kv` keeps the same number of KV groups (a KV head with its query
//!   heads) in every layer, by the same statistic over `attn_output`'s input
//!   columns of the group; head counts stay divisible by the tensor-parallel
//!   degree asked for.
//!
//! Sliced tensors are materialized (their kept rows and columns, in the
//! source's row order, so a row transform such as llama's q/k RoPE
//! permutation still applies, with its head count updated) into one
//! in-memory buffer, [`Scratch`], that the caller serves as an extra input
//! file (`formats::mmap::MappedFile::computed`): F32/F16/BF16 sources keep
//! their dtype (exact), ggml block types are dequantized to F16.
//!
//! What must stay true: after every pass the model is consistent (shapes,
//! `Arch`, a GGUF input's keys); choices are deterministic (ties go to the
//! lower index); what a pass cannot do is refused with the tensor or layer
//! named, never done halfway (passes check before they change anything).
//!
//! Long file: the three pruning passes share the spec parser, the layer map
//! and the renaming of names and per-layer arrays.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::PassError;
use crate::ir::{Arch, MetaValue, Model, Note, Role, Source, SourceDType, TensorNode, Transform};

use super::{Context, Pass, TensorReader};

pub const DEPTH: &str = "prune-depth";
pub const FFN: &str = "prune-ffn";
pub const KV: &str = "prune-kv";

/// What the user asked to remove (`--prune`), parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PruneSpec {
    pub layers: Option<LayerSel>,
    /// Fraction of each FFN's channels to keep, in (0, 1).
    pub ffn: Option<f64>,
    pub kv: Option<KvSel>,
    /// Tensor-parallel degree head counts must stay divisible by (1: none).
    pub tp: usize,
}

/// Which blocks to remove.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerSel {
    /// These blocks (indices in the input).
    Named(Vec<usize>),
    /// This many, the least influential over calibration text (ShortGPT).
    Auto(usize),
}

/// Which KV groups to remove.
#[derive(Debug, Clone, PartialEq)]
pub enum KvSel {
    /// Keep this many groups in every layer, the most important ones.
    Keep(usize),
    /// Remove exactly these `(layer, group)`s (the same count from every layer).
    Named(Vec<(usize, usize)>),
}

impl PruneSpec {
    pub fn is_empty(&self) -> bool {
        self.layers.is_none() && self.ffn.is_none() && self.kv.is_none()
    }

    /// The spec as the user would write it (for manifests and keys).
    pub fn to_spec_string(&self) -> String {
        let mut parts = Vec::new();
        match &self.layers {
            Some(LayerSel::Named(v)) => parts.push(format!("layers={}", join(v))),
            Some(LayerSel::Auto(n)) => parts.push(format!("layers=auto:{n}")),
            None => {}
        }
        if let Some(r) = self.ffn {
            parts.push(format!("ffn={r}"));
        }
        match &self.kv {
            Some(KvSel::Keep(n)) => parts.push(format!("kv-groups={n}")),
            Some(KvSel::Named(v)) => parts.push(format!(
                "kv-groups={}",
                v.iter()
                    .map(|(l, g)| format!("{l}:{g}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            None => {}
        }
        if self.tp > 1 {
            parts.push(format!("tp={}", self.tp));
        }
        parts.join(";")
    }
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parse `--prune` values: items `layers=20,21`, `layers=auto:2`,
/// `ffn=0.75`, `kv-groups=2`, `kv-groups=0:1,1:1`, `tp=2`, separated by `;`
/// (or given in several `--prune` options, merged by the caller with
/// [`merge`]).
pub fn parse_spec(s: &str) -> Result<PruneSpec, String> {
    let mut spec = PruneSpec {
        tp: 1,
        ..PruneSpec::default()
    };
    let mut seen: Vec<String> = Vec::new();
    for item in s.split(';').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!(
                "`{}`: expected KEY=VALUE (layers=20,21, layers=auto:2, ffn=0.75, kv-groups=2, tp=2)",
                crate::printable(item)
            ));
        };
        let value = value.trim();
        let num = |v: &str, what: &str| -> Result<usize, String> {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("{what}: `{}` is not a whole number", crate::printable(v)))
        };
        let key = key.trim();
        let known = matches!(key, "layers" | "ffn" | "kv-groups" | "tp");
        if known && seen.iter().any(|k| k == key) {
            return Err(format!("`{}` is given twice", crate::printable(key)));
        }
        seen.push(key.to_string());
        match key {
            "layers" => {
                spec.layers = Some(match value.strip_prefix("auto:") {
                    Some(n) => {
                        let n = num(n, "layers=auto:N")?;
                        if n == 0 {
                            return Err("layers=auto:0 removes nothing".into());
                        }
                        LayerSel::Auto(n)
                    }
                    None => {
                        let mut v = value
                            .split(',')
                            .map(|x| num(x, "layers"))
                            .collect::<Result<Vec<_>, _>>()?;
                        v.sort_unstable();
                        if v.windows(2).any(|w| w[0] == w[1]) {
                            return Err(format!("layers={value}: a layer is named twice"));
                        }
                        LayerSel::Named(v)
                    }
                });
            }
            "ffn" => {
                let r: f64 = value.parse().map_err(|_| {
                    format!("ffn: `{}` is not a number", crate::printable(value))
                })?;
                if !(r > 0.0 && r < 1.0) {
                    return Err(format!(
                        "ffn={value}: the fraction of FFN channels kept must be above 0 and below 1"
                    ));
                }
                spec.ffn = Some(r);
            }
            "kv-groups" => {
                spec.kv = Some(if value.contains(':') {
                    let mut v = Vec::new();
                    for p in value.split(',') {
                        let Some((l, g)) = p.split_once(':') else {
                            return Err(format!(
                                "kv-groups: `{}` is not LAYER:GROUP",
                                crate::printable(p)
                            ));
                        };
                        v.push((num(l, "kv-groups layer")?, num(g, "kv-groups group")?));
                    }
                    v.sort_unstable();
                    if v.windows(2).any(|w| w[0] == w[1]) {
                        return Err(format!("kv-groups={value}: a group is named twice"));
                    }
                    KvSel::Named(v)
                } else {
                    let n = num(value, "kv-groups")?;
                    if n == 0 {
                        return Err(
                            "kv-groups=0 keeps no attention: keep at least one KV group".into(),
                        );
                    }
                    KvSel::Keep(n)
                });
            }
            "tp" => {
                let n = num(value, "tp")?;
                if n == 0 {
                    return Err("tp=0: the tensor-parallel degree is at least 1".into());
                }
                spec.tp = n;
            }
            other => {
                return Err(format!(
                    "unknown pruning `{}`; kiln prunes layers=, ffn=, kv-groups= (and tp= for head counts)",
                    crate::printable(other)
                ))
            }
        }
    }
    if spec.is_empty() {
        return Err("nothing to prune: give layers=, ffn= or kv-groups=".into());
    }
    Ok(spec)
}

/// Merge several `--prune` values; an item given twice is an error.
pub fn merge(specs: &[PruneSpec]) -> Result<PruneSpec, String> {
    let mut out = PruneSpec {
        tp: 1,
        ..PruneSpec::default()
    };
    for s in specs {
        let twice = |what: &str| format!("`{what}` is given in two --prune options");
        if s.layers.is_some() {
            if out.layers.is_some() {
                return Err(twice("layers"));
            }
            out.layers = s.layers.clone();
        }
        if s.ffn.is_some() {
            if out.ffn.is_some() {
                return Err(twice("ffn"));
            }
            out.ffn = s.ffn;
        }
        if s.kv.is_some() {
            if out.kv.is_some() {
                return Err(twice("kv-groups"));
            }
            out.kv = s.kv.clone();
        }
        out.tp = out.tp.max(s.tp);
    }
    Ok(out)
}

/// The materialized tensors' bytes (one extra input file) and what the
/// passes did, shared between the passes and their caller.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Index of the extra file in `Model::files`, once one is added.
    pub file: Option<usize>,
    pub bytes: Vec<u8>,
    /// Input layer -> output layer (`None`: removed); empty when no depth
    /// pruning ran.
    pub layer_map: Vec<Option<usize>>,
    /// Kept input columns of sliced tensors, by (pre-depth) tensor name.
    pub kept_cols: BTreeMap<String, Vec<usize>>,
    /// One line per pass: what it removed.
    pub summary: Vec<String>,
}

/// A shared [`Scratch`].
pub type SharedScratch = Arc<Mutex<Scratch>>;

impl Scratch {
    /// Take the bytes to serve as file `self.file` (the caller pushes them
    /// as the last input map).
    pub fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }

    /// Remap importance vectors (an imatrix of the unpruned model, by tensor
    /// name) onto the pruned model: vectors of sliced tensors keep their
    /// kept columns, names follow the renumbering, removed layers' vectors go.
    pub fn remap_importance(
        &self,
        vectors: &BTreeMap<String, Vec<f32>>,
    ) -> BTreeMap<String, Vec<f32>> {
        let mut out = BTreeMap::new();
        for (name, v) in vectors {
            let v = match self.kept_cols.get(name) {
                Some(cols) if cols.iter().all(|&c| c < v.len()) => {
                    cols.iter().map(|&c| v[c]).collect()
                }
                // Not of the unpruned model (callers refuse such an imatrix
                // first): dropped rather than applied to the wrong columns.
                Some(_) => continue,
                _ => v.clone(),
            };
            match rename_layer(name, &self.layer_map) {
                Some(n) => {
                    out.insert(n, v);
                }
                None => continue,
            }
        }
        out
    }
}

/// Everything the passes of `spec` would refuse on `model` (normalized),
/// checked without reading tensor data: a caller refuses a spec before it
/// calibrates or measures anything. `layers=auto:N` is checked for its
/// count only (the blocks are chosen later).
pub fn check_spec(spec: &PruneSpec, model: &Model, gguf: bool) -> Result<(), PassError> {
    let scratch = SharedScratch::default();
    if let Some(sel) = &spec.kv {
        DropKvGroups {
            sel: sel.clone(),
            tp: spec.tp,
            activations: None,
            scratch: scratch.clone(),
            gguf,
        }
        .check(model)?;
    }
    if let Some(ratio) = spec.ffn {
        NarrowFfn {
            ratio,
            activations: None,
            scratch: scratch.clone(),
        }
        .check(model)?;
    }
    match &spec.layers {
        Some(LayerSel::Named(v)) => {
            DropLayers {
                layers: v.clone(),
                scratch,
                how: String::new(),
            }
            .check(model)?;
        }
        Some(LayerSel::Auto(n)) => {
            let layers = arch_of(model, DEPTH)?.n_layer;
            if *n >= layers {
                return Err(PassError::new(
                    DEPTH,
                    None,
                    format!("removing {n} of {layers} layers leaves no layer"),
                ));
            }
        }
        None => {}
    }
    Ok(())
}

/// Input layer -> output layer for a model of `n` layers with `removed`
/// taken out: `None` for a removed one, the kept ones renumbered in order.
pub fn layer_map(n: usize, removed: &[usize]) -> Vec<Option<usize>> {
    let mut next = 0;
    (0..n)
        .map(|i| match removed.contains(&i) {
            true => None,
            false => {
                next += 1;
                Some(next - 1)
            }
        })
        .collect()
}

/// `blk.{i}.rest` with `i` mapped; `None` when layer `i` was removed; other
/// names unchanged.
pub fn rename_layer(name: &str, map: &[Option<usize>]) -> Option<String> {
    if map.is_empty() {
        return Some(name.to_string());
    }
    let Some(rest) = name.strip_prefix("blk.") else {
        return Some(name.to_string());
    };
    let Some((i, tail)) = rest.split_once('.') else {
        return Some(name.to_string());
    };
    match i.parse::<usize>() {
        Ok(i) => map
            .get(i)
            .copied()
            .flatten()
            .map(|j| format!("blk.{j}.{tail}")),
        Err(_) => Some(name.to_string()),
    }
}

/// A source name with the dot-delimited segment `old` (the layer index)
/// replaced by `new` (`model.layers.21.mlp.up_proj.weight`).
fn renumber_source_name(name: &str, old: usize, new: usize) -> String {
    let old = old.to_string();
    let mut parts: Vec<String> = name.split('.').map(str::to_string).collect();
    if let Some(p) = parts.iter_mut().find(|p| **p == old) {
        *p = new.to_string();
    }
    parts.join(".")
}

fn arch_of<'m>(model: &'m Model, pass: &'static str) -> Result<&'m crate::ir::Arch, PassError> {
    model
        .arch
        .as_ref()
        .ok_or_else(|| PassError::new(pass, None, "the model has no architecture"))
}

/// A GGUF input carries its own keys: keep them in step with `Arch`.
fn sync_gguf_keys(model: &mut Model) {
    if !model.info.in_metadata {
        return;
    }
    let Some(a) = model.arch.clone() else { return };
    let f = a.family.clone();
    let u = |v: usize| MetaValue::U32(v as u32);
    let md = &mut model.metadata;
    md.set(&format!("{f}.block_count"), u(a.n_layer));
    let scalar =
        |md: &crate::ir::Metadata, k: &str| !matches!(md.get(k), Some(MetaValue::Array(_)));
    for (key, v) in [
        ("feed_forward_length", a.ffn),
        ("attention.head_count", a.n_head),
        ("attention.head_count_kv", a.n_head_kv),
    ] {
        let k = format!("{f}.{key}");
        if md.get(&k).is_some() && scalar(md, &k) {
            md.set(&k, u(v));
        }
    }
    if a.head_dim * a.n_head != a.hidden {
        for key in ["attention.key_length", "attention.value_length"] {
            let k = format!("{f}.{key}");
            if md.get(&k).is_none() {
                md.set(&k, u(a.head_dim));
            }
        }
    }
    if a.n_dense_layers > 0 {
        let k = format!("{f}.leading_dense_block_count");
        if md.get(&k).is_some() {
            md.set(&k, u(a.n_dense_layers));
        }
    }
}

// ---------------------------------------------------------------- depth --

/// `prune-depth`: remove these blocks (input indices).
#[derive(Debug, Clone)]
pub struct DropLayers {
    pub layers: Vec<usize>,
    pub scratch: SharedScratch,
    /// How the layers were chosen, for the summary.
    pub how: String,
}

impl DropLayers {
    /// Everything `run` refuses, checked on the model alone (no tensor data
    /// is read): input layer -> output layer (`None`: removed).
    pub fn check(&self, model: &Model) -> Result<Vec<Option<usize>>, PassError> {
        let a = arch_of(model, DEPTH)?.clone();
        let n = a.n_layer;
        if let Some(&bad) = self.layers.iter().find(|&&l| l >= n) {
            return Err(PassError::new(
                DEPTH,
                None,
                format!(
                    "layer {bad} does not exist: the model has layers 0..{}",
                    n.saturating_sub(1)
                ),
            ));
        }
        if self.layers.len() >= n {
            return Err(PassError::new(
                DEPTH,
                None,
                format!(
                    "removing {} of {n} layers leaves no layer",
                    self.layers.len()
                ),
            ));
        }
        let map = layer_map(n, &self.layers);
        // Gemma's sliding window is positional in llama.cpp
        // (`set_swa_pattern`): refuse a removal that moves a layer to a
        // position of the other kind.
        if let Some(g) = &a.gemma {
            for (i, j) in map.iter().enumerate() {
                if let Some(j) = *j {
                    if g.is_swa_layer(i) != g.is_swa_layer(j) {
                        return Err(PassError::new(
                            DEPTH,
                            None,
                            format!(
                                "removing layers {} moves layer {i} ({}) to position {j}, where llama.cpp's positional pattern \
                                 (one layer in every {} global) makes it {}: remove whole periods of {} consecutive layers instead",
                                join(&self.layers),
                                if g.is_swa_layer(i) { "sliding-window" } else { "global" },
                                g.swa_pattern,
                                if g.is_swa_layer(j) { "sliding-window" } else { "global" },
                                g.swa_pattern
                            ),
                        ));
                    }
                }
            }
        }
        // The layers must be where the names say.
        for t in &model.tensors {
            if let Some(l) = t.layer {
                if l >= n || !t.name.starts_with(&format!("blk.{l}.")) {
                    return Err(PassError::new(
                        DEPTH,
                        Some(&t.name),
                        format!("layer {l} of a model of {n} layers, or a name not blk.{l}.*"),
                    ));
                }
            }
        }
        Ok(map)
    }
}

impl Pass for DropLayers {
    fn name(&self) -> &'static str {
        DEPTH
    }

    fn run(&self, model: &mut Model, _cx: &Context<'_>) -> Result<(), PassError> {
        let map = self.check(model)?;
        let a = arch_of(model, DEPTH)?.clone();
        let n = a.n_layer;
        let next = map.iter().flatten().count();
        let dense_kept = (0..a.n_dense_layers.min(n))
            .filter(|&i| map[i].is_some())
            .count();
        model
            .tensors
            .retain(|t| t.layer.is_none_or(|l| map[l].is_some()));
        for t in &mut model.tensors {
            if let Some(l) = t.layer {
                let j = map[l].expect("removed layers were dropped");
                if j != l {
                    let tail = &t.name[format!("blk.{l}.").len()..];
                    t.name = format!("blk.{j}.{tail}");
                    t.source_name = renumber_source_name(&t.source_name, l, j);
                    t.layer = Some(j);
                }
            }
        }
        let arch = model.arch.as_mut().expect("checked above");
        arch.n_layer = next;
        if arch.n_dense_layers > 0 {
            arch.n_dense_layers = dense_kept;
        }
        if model.info.in_metadata {
            // Per-layer arrays of the input follow the kept layers.
            let prefix = format!("{}.", a.family);
            for (k, v) in model.metadata.0.iter_mut() {
                if let MetaValue::Array(items) = v {
                    if k.starts_with(&prefix) && items.len() == n {
                        let kept: Vec<MetaValue> = items
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| map[*i].is_some())
                            .map(|(_, x)| x.clone())
                            .collect();
                        *items = kept;
                    }
                }
            }
        }
        sync_gguf_keys(model);
        let line = format!(
            "{DEPTH}: removed layers {} of {n} ({}); {next} remain, renumbered",
            join(&self.layers),
            self.how
        );
        model.notes.push(Note::info(line.clone()));
        let mut s = self.scratch.lock().expect("scratch lock");
        s.layer_map = map;
        s.summary.push(line);
        Ok(())
    }
}

// --------------------------------------------------------- materializing --

/// Write `t`'s kept rows (source row order, transform not applied) and
/// kept columns into the scratch file, and point `t` at them. `rows` and
/// `cols` index the source tensor; for a 1-D tensor `rows` selects elements.
fn materialize(
    t: &mut TensorNode,
    rows: Option<&[usize]>,
    cols: Option<&[usize]>,
    reader: &dyn TensorReader,
    model_files: &mut Vec<PathBuf>,
    scratch: &mut Scratch,
) {
    let (rows, cols) = if t.shape.len() == 1 {
        (None, rows.or(cols))
    } else {
        (rows, cols)
    };
    let mut raw = t.clone();
    raw.transform = match t.transform {
        Some(Transform::RopePermute { .. }) => None,
        x => x,
    };
    let dtype = match t.source.dtype {
        SourceDType::Ggml(_) => SourceDType::F16,
        d => d,
    };
    let file = *scratch.file.get_or_insert_with(|| {
        model_files.push(PathBuf::from("<pruned tensors>"));
        model_files.len() - 1
    });
    let row_len = t.row_len();
    let n_rows = t.n_rows();
    let all_rows: Vec<usize>;
    let rows = match rows {
        Some(r) => r,
        None => {
            all_rows = (0..n_rows).collect();
            &all_rows
        }
    };
    let new_len = cols.map_or(row_len, <[usize]>::len);
    let offset = scratch.bytes.len() as u64;
    let mut buf = vec![0f32; row_len];
    for &r in rows {
        reader.read_row(&raw, r, &mut buf);
        let mut put = |v: f32| match dtype {
            SourceDType::F32 => scratch.bytes.extend(v.to_le_bytes()),
            SourceDType::BF16 => scratch
                .bytes
                .extend(half::bf16::from_f32(v).to_bits().to_le_bytes()),
            _ => scratch
                .bytes
                .extend(half::f16::from_f32(v).to_bits().to_le_bytes()),
        };
        match cols {
            Some(c) => c.iter().for_each(|&j| put(buf[j])),
            None => buf.iter().for_each(|&v| put(v)),
        }
    }
    let mut shape = t.shape.clone();
    let last = shape.len() - 1;
    shape[last] = new_len;
    if shape.len() >= 2 {
        shape[last - 1] = rows.len();
    }
    if let Some(Transform::RopePermute { n_head }) = t.transform {
        // The permutation is within each head: the kept heads keep theirs.
        let per_head = n_rows / n_head.max(1);
        t.transform = Some(Transform::RopePermute {
            n_head: rows.len() / per_head.max(1),
        });
    }
    t.shape = shape;
    t.parts.clear();
    t.source = Source {
        file,
        dtype,
        offset,
        len: scratch.bytes.len() as u64 - offset,
    };
}

/// Squared column norms of `t` (its rows read in source order).
fn col_sq_norms(t: &TensorNode, reader: &dyn TensorReader) -> Vec<f64> {
    let mut raw = t.clone();
    raw.transform = None;
    let mut acc = vec![0f64; t.row_len()];
    let mut buf = vec![0f32; t.row_len()];
    for r in 0..t.n_rows() {
        reader.read_row(&raw, r, &mut buf);
        for (a, &v) in acc.iter_mut().zip(&buf) {
            *a += f64::from(v) * f64::from(v);
        }
    }
    acc
}

/// Squared norms of rows `r0..r1` of `t` (source order), summed.
fn rows_sq_norm(t: &TensorNode, reader: &dyn TensorReader, r0: usize, r1: usize) -> f64 {
    let mut raw = t.clone();
    raw.transform = None;
    let mut buf = vec![0f32; t.row_len()];
    let mut s = 0f64;
    for r in r0..r1 {
        reader.read_row(&raw, r, &mut buf);
        s += buf
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>();
    }
    s
}

/// Refuse an activation vector (an imatrix entry) that does not fit its
/// tensor's input columns: it belongs to another model (or to a pruned one),
/// and scoring channels with it would score the wrong ones.
fn check_activations(
    pass: &'static str,
    activations: Option<&BTreeMap<String, Vec<f32>>>,
    t: &TensorNode,
) -> Result<(), PassError> {
    match activations.and_then(|m| m.get(&t.name)) {
        Some(v) if v.len() != t.row_len() => Err(PassError::new(
            pass,
            Some(&t.name),
            format!(
                "the activation statistics (imatrix) have {} entries for this tensor, which has {} input columns: they are not of this model (an imatrix of a pruned or another model?); give the unpruned model's imatrix, or --text",
                v.len(),
                t.row_len()
            ),
        )),
        _ => Ok(()),
    }
}

/// The indices of the `keep` highest scores, ascending (ties: lower index).
fn top_k(scores: &[f64], keep: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(keep);
    idx.sort_unstable();
    idx
}

fn find(model: &Model, name: &str) -> Option<usize> {
    model.tensors.iter().position(|t| t.name == name)
}

// ------------------------------------------------------------------ ffn --

/// How many of `ffn` channels `ratio` keeps: rounded to a multiple of the
/// largest of 128, 64, 32 that divides `ffn` (runtime-friendly row
/// lengths), at least one such multiple.
pub fn ffn_keep(ffn: usize, ratio: f64) -> usize {
    let m = [128, 64, 32]
        .into_iter()
        .find(|m| ffn % m == 0 && ffn >= 2 * m)
        .unwrap_or(1);
    let k = ((ffn as f64 * ratio) / m as f64).round() as usize * m;
    k.clamp(m, ffn.saturating_sub(m).max(m))
}

/// `prune-ffn`: keep `ratio` of each FFN's channels.
#[derive(Debug, Clone)]
pub struct NarrowFfn {
    pub ratio: f64,
    /// Mean squared input activation per column, by tensor name (an
    /// imatrix's `ffn_down` entries); `None`: weight norms only.
    pub activations: Option<BTreeMap<String, Vec<f32>>>,
    pub scratch: SharedScratch,
}

/// A layer's FFN tensors, by index in `Model::tensors`: (layer, ffn_down,
/// ffn_up, ffn_gate; no gate when `ffn_up` holds gate and up fused).
pub type FfnLayer = (usize, usize, usize, Option<usize>);

impl NarrowFfn {
    /// Everything `run` refuses, checked on the model alone (no tensor data
    /// is read): the architecture, the channels kept, and per layer its
    /// `ffn_down`, `ffn_up` and `ffn_gate` tensors.
    pub fn check(&self, model: &Model) -> Result<(Arch, usize, Vec<FfnLayer>), PassError> {
        let a = arch_of(model, FFN)?.clone();
        if let Some(t) = model.tensors.iter().find(|t| {
            matches!(
                t.role,
                Role::FfnGateExps | Role::FfnUpExps | Role::FfnDownExps | Role::FfnDownShexp
            )
        }) {
            return Err(PassError::new(
                FFN,
                Some(&t.name),
                "FFN width pruning of mixture-of-experts layers is not supported (experts would need their own widths)",
            ));
        }
        let ffn = a.ffn;
        let keep = ffn_keep(ffn, self.ratio);
        if keep == 0 || keep >= ffn {
            return Err(PassError::new(
                FFN,
                None,
                format!(
                    "ffn={} keeps {keep} of {ffn} channels: nothing would change",
                    self.ratio
                ),
            ));
        }
        // Check every layer before changing anything.
        let mut plan = Vec::new();
        for l in 0..a.n_layer {
            let down = find(model, &format!("blk.{l}.ffn_down.weight")).ok_or_else(|| {
                PassError::new(FFN, None, format!("layer {l} has no ffn_down.weight"))
            })?;
            let up = find(model, &format!("blk.{l}.ffn_up.weight")).ok_or_else(|| {
                PassError::new(FFN, None, format!("layer {l} has no ffn_up.weight"))
            })?;
            check_activations(FFN, self.activations.as_ref(), &model.tensors[down])?;
            let gate = find(model, &format!("blk.{l}.ffn_gate.weight"));
            let fused = gate.is_none();
            let want_up = if fused { 2 * ffn } else { ffn };
            if model.tensors[down].row_len() != ffn || model.tensors[up].n_rows() != want_up {
                return Err(PassError::new(
                    FFN,
                    Some(&model.tensors[down].name),
                    format!(
                        "shape {:?} is not [hidden, {ffn}]",
                        model.tensors[down].shape
                    ),
                ));
            }
            for t in [Some(down), Some(up), gate].into_iter().flatten() {
                if model.tensors[t].shape.len() != 2 {
                    return Err(PassError::new(
                        FFN,
                        Some(&model.tensors[t].name),
                        "not a matrix",
                    ));
                }
            }
            if let Some(b) = model.tensors.iter().find(|t| {
                t.name == format!("blk.{l}.ffn_up.bias")
                    || t.name == format!("blk.{l}.ffn_gate.bias")
            }) {
                return Err(PassError::new(
                    FFN,
                    Some(&b.name),
                    "FFN biases are not pruned yet",
                ));
            }
            plan.push((l, down, up, gate));
        }
        Ok((a, keep, plan))
    }
}

impl Pass for NarrowFfn {
    fn name(&self) -> &'static str {
        FFN
    }

    fn run(&self, model: &mut Model, cx: &Context<'_>) -> Result<(), PassError> {
        let reader = cx.reader(FFN)?;
        let (a, keep, plan) = self.check(model)?;
        let ffn = a.ffn;
        let mut s = self.scratch.lock().expect("scratch lock");
        for (l, down, up, gate) in plan {
            let dname = model.tensors[down].name.clone();
            let col = col_sq_norms(&model.tensors[down], reader);
            let act = self.activations.as_ref().and_then(|m| m.get(&dname));
            let scores: Vec<f64> = match act {
                Some(act) => (0..ffn)
                    .map(|j| (col[j] * f64::from(act[j]).max(0.0)).sqrt())
                    .collect(),
                None => {
                    let ut = &model.tensors[up];
                    (0..ffn)
                        .map(|j| {
                            let mut w = rows_sq_norm(ut, reader, j, j + 1);
                            if gate.is_none() {
                                w *= rows_sq_norm(ut, reader, ffn + j, ffn + j + 1);
                            }
                            if let Some(g) = gate {
                                w *= rows_sq_norm(&model.tensors[g], reader, j, j + 1);
                            }
                            (col[j] * w.sqrt()).sqrt()
                        })
                        .collect()
                }
            };
            let kept = top_k(&scores, keep);
            let files = &mut model.files;
            materialize(
                &mut model.tensors[down],
                None,
                Some(&kept),
                reader,
                files,
                &mut s,
            );
            let up_rows: Vec<usize> = if gate.is_none() {
                kept.iter()
                    .copied()
                    .chain(kept.iter().map(|j| ffn + j))
                    .collect()
            } else {
                kept.clone()
            };
            materialize(
                &mut model.tensors[up],
                Some(&up_rows),
                None,
                reader,
                files,
                &mut s,
            );
            if let Some(g) = gate {
                materialize(
                    &mut model.tensors[g],
                    Some(&kept),
                    None,
                    reader,
                    files,
                    &mut s,
                );
            }
            s.kept_cols.insert(dname, kept);
            let _ = l;
        }
        model.arch.as_mut().expect("checked").ffn = keep;
        sync_gguf_keys(model);
        let how = if self.activations.is_some() {
            "Wanda: activation norm x ffn_down column norm"
        } else {
            "weight norms only, without calibration text: ffn_down column x ffn_up/ffn_gate row norms"
        };
        let line = format!(
            "{FFN}: kept {keep} of {ffn} FFN channels in each of {} layers ({how})",
            a.n_layer
        );
        model.notes.push(Note::info(line.clone()));
        s.summary.push(line);
        Ok(())
    }
}

// ------------------------------------------------------------------- kv --

/// `prune-kv`: remove whole KV groups.
#[derive(Debug, Clone)]
pub struct DropKvGroups {
    pub sel: KvSel,
    pub tp: usize,
    /// Mean squared input activation per column, by tensor name (the
    /// imatrix's `attn_output` entries); `None`: weight norms only.
    pub activations: Option<BTreeMap<String, Vec<f32>>>,
    pub scratch: SharedScratch,
    /// The output is a GGUF: llama.cpp's graph for the family must take
    /// `n_head * head_dim != hidden`.
    pub gguf: bool,
}

/// GGUF architectures whose llama.cpp tensors are sized by the hidden size
/// (`attn_q` / `attn_output` of `n_embd x n_embd`, phi3's `attn_qkv` of
/// `n_embd + 2 n_embd_gqa` rows): their query heads cannot shrink.
const HIDDEN_SIZED_ATTENTION: &[&str] = &["qwen2", "qwen2moe", "phi3"];

/// A layer's attention tensors, by index in `Model::tensors`: (layer,
/// attn_output, fused attn_qkv, separate [attn_q, attn_k, attn_v]).
pub type KvLayer = (usize, usize, Option<usize>, [Option<usize>; 3]);

impl DropKvGroups {
    /// Everything `run` refuses, checked on the model alone (no tensor data
    /// is read): the architecture, the query heads per KV group, the KV
    /// heads kept, and per layer its output projection and Q/K/V tensors.
    pub fn check(&self, model: &Model) -> Result<(Arch, usize, usize, Vec<KvLayer>), PassError> {
        let a = arch_of(model, KV)?.clone();
        let (nh, nkv, hd) = (a.n_head, a.n_head_kv, a.head_dim);
        if nkv == 0 || nh % nkv != 0 {
            return Err(PassError::new(
                KV,
                None,
                format!("{nh} heads over {nkv} KV heads"),
            ));
        }
        let g = nh / nkv;
        let keep = match &self.sel {
            KvSel::Keep(k) => *k,
            KvSel::Named(v) => {
                for &(l, grp) in v {
                    if l >= a.n_layer || grp >= nkv {
                        return Err(PassError::new(
                            KV,
                            None,
                            format!(
                                "KV group {l}:{grp} does not exist: the model has layers 0..{} with groups 0..{}",
                                a.n_layer - 1,
                                nkv - 1
                            ),
                        ));
                    }
                }
                let per: Vec<usize> = (0..a.n_layer)
                    .map(|l| v.iter().filter(|(x, _)| *x == l).count())
                    .collect();
                if per.iter().any(|&c| c != per[0]) {
                    return Err(PassError::new(
                        KV,
                        None,
                        format!(
                            "kv-groups removes {} groups from layers 0..{}: every layer must lose the same number \
                             (config.json and llama.cpp's graphs take one KV head count)",
                            per.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
                            a.n_layer - 1
                        ),
                    ));
                }
                nkv - per[0]
            }
        };
        if keep == 0 || keep >= nkv {
            return Err(PassError::new(
                KV,
                None,
                format!(
                    "keeping {keep} of {nkv} KV groups: keep at least one and fewer than {nkv} (the runtime needs a head)"
                ),
            ));
        }
        if self.gguf && HIDDEN_SIZED_ATTENTION.contains(&a.family.as_str()) {
            return Err(PassError::new(
                KV,
                None,
                format!(
                    "llama.cpp sizes `{}` attention by the hidden size ({} query heads x {hd} = {}), so removing KV groups \
                     (and their query heads) gives a GGUF it cannot load; prune layers or FFN channels instead",
                    a.family,
                    nh,
                    a.hidden
                ),
            ));
        }
        let tp = self.tp.max(1);
        if keep % tp != 0 || (keep * g) % tp != 0 {
            return Err(PassError::new(
                KV,
                None,
                format!(
                    "{keep} KV heads ({} query heads) are not divisible by the tensor-parallel degree {tp}",
                    keep * g
                ),
            ));
        }
        let mut plan = Vec::new();
        for l in 0..a.n_layer {
            let name = |s: &str| format!("blk.{l}.{s}");
            let o = find(model, &name("attn_output.weight")).ok_or_else(|| {
                PassError::new(KV, None, format!("layer {l} has no attn_output.weight"))
            })?;
            check_activations(KV, self.activations.as_ref(), &model.tensors[o])?;
            if model.tensors[o].row_len() != nh * hd {
                return Err(PassError::new(
                    KV,
                    Some(&model.tensors[o].name),
                    format!(
                        "row length {} is not {nh} heads x {hd}",
                        model.tensors[o].row_len()
                    ),
                ));
            }
            let qkv = find(model, &name("attn_qkv.weight"));
            let sep = [
                find(model, &name("attn_q.weight")),
                find(model, &name("attn_k.weight")),
                find(model, &name("attn_v.weight")),
            ];
            if qkv.is_none() && sep.iter().any(Option::is_none) {
                return Err(PassError::new(
                    KV,
                    None,
                    format!("layer {l} lacks attn_q/k/v"),
                ));
            }
            plan.push((l, o, qkv, sep));
        }
        Ok((a, g, keep, plan))
    }
}

impl Pass for DropKvGroups {
    fn name(&self) -> &'static str {
        KV
    }

    fn run(&self, model: &mut Model, cx: &Context<'_>) -> Result<(), PassError> {
        let reader = cx.reader(KV)?;
        let (a, g, keep, plan) = self.check(model)?;
        let (nh, nkv, hd) = (a.n_head, a.n_head_kv, a.head_dim);
        let mut s = self.scratch.lock().expect("scratch lock");
        for (l, o, qkv, sep) in plan {
            let oname = model.tensors[o].name.clone();
            let groups: Vec<usize> = match &self.sel {
                KvSel::Named(v) => (0..nkv).filter(|grp| !v.contains(&(l, *grp))).collect(),
                KvSel::Keep(_) => {
                    let col = col_sq_norms(&model.tensors[o], reader);
                    let act = self.activations.as_ref().and_then(|m| m.get(&oname));
                    let scores: Vec<f64> = (0..nkv)
                        .map(|grp| {
                            let cols = grp * g * hd..(grp + 1) * g * hd;
                            match act {
                                Some(act) => cols
                                    .map(|c| col[c] * f64::from(act[c]).max(0.0))
                                    .sum::<f64>()
                                    .sqrt(),
                                None => {
                                    let wo: f64 = cols.map(|c| col[c]).sum();
                                    let wv = match (qkv, sep[2]) {
                                        (_, Some(v)) => rows_sq_norm(
                                            &model.tensors[v],
                                            reader,
                                            grp * hd,
                                            (grp + 1) * hd,
                                        ),
                                        (Some(f), None) => {
                                            let at = (nh + nkv + grp) * hd;
                                            rows_sq_norm(&model.tensors[f], reader, at, at + hd)
                                        }
                                        _ => 1.0,
                                    };
                                    (wo * wv).sqrt()
                                }
                            }
                        })
                        .collect();
                    top_k(&scores, keep)
                }
            };
            let q_rows: Vec<usize> = groups
                .iter()
                .flat_map(|&grp| grp * g * hd..(grp + 1) * g * hd)
                .collect();
            let kv_rows: Vec<usize> = groups
                .iter()
                .flat_map(|&grp| grp * hd..(grp + 1) * hd)
                .collect();
            let files = &mut model.files;
            materialize(
                &mut model.tensors[o],
                None,
                Some(&q_rows),
                reader,
                files,
                &mut s,
            );
            match qkv {
                Some(f) => {
                    let rows: Vec<usize> = q_rows
                        .iter()
                        .copied()
                        .chain(kv_rows.iter().map(|r| nh * hd + r))
                        .chain(kv_rows.iter().map(|r| (nh + nkv) * hd + r))
                        .collect();
                    materialize(
                        &mut model.tensors[f],
                        Some(&rows),
                        None,
                        reader,
                        files,
                        &mut s,
                    );
                    if let Some(b) = find(model, &format!("blk.{l}.attn_qkv.bias")) {
                        let files = &mut model.files;
                        materialize(
                            &mut model.tensors[b],
                            Some(&rows),
                            None,
                            reader,
                            files,
                            &mut s,
                        );
                    }
                }
                None => {
                    for (t, rows, bias) in [
                        (sep[0], &q_rows, "attn_q.bias"),
                        (sep[1], &kv_rows, "attn_k.bias"),
                        (sep[2], &kv_rows, "attn_v.bias"),
                    ] {
                        let t = t.expect("checked");
                        let files = &mut model.files;
                        materialize(
                            &mut model.tensors[t],
                            Some(rows),
                            None,
                            reader,
                            files,
                            &mut s,
                        );
                        if let Some(b) = find(model, &format!("blk.{l}.{bias}")) {
                            let files = &mut model.files;
                            materialize(
                                &mut model.tensors[b],
                                Some(rows),
                                None,
                                reader,
                                files,
                                &mut s,
                            );
                        }
                    }
                }
            }
            s.kept_cols.insert(oname, q_rows);
        }
        let arch = model.arch.as_mut().expect("checked");
        arch.n_head = keep * g;
        arch.n_head_kv = keep;
        sync_gguf_keys(model);
        let how = match (&self.sel, &self.activations) {
            (KvSel::Named(_), _) => "as named",
            (KvSel::Keep(_), Some(_)) => "by activation norm x attn_output column norm",
            (KvSel::Keep(_), None) => "by weight norms only, without calibration text",
        };
        let line = format!(
            "{KV}: kept {keep} of {nkv} KV groups ({} of {nh} query heads) in each of {} layers ({how})",
            keep * g,
            a.n_layer
        );
        model.notes.push(Note::info(line.clone()));
        s.summary.push(line);
        Ok(())
    }
}

/// The pruned model's Hugging Face config.json: sizes from `arch`
/// (`head_dim` written out, as it no longer follows from hidden / heads),
/// per-layer lists (`layer_types`) kept for the kept layers.
pub fn edit_hf_config(
    cfg: &mut serde_json::Map<String, serde_json::Value>,
    arch: &crate::Arch,
    layer_map: &[Option<usize>],
) {
    let set = |cfg: &mut serde_json::Map<String, serde_json::Value>, k: &str, v: usize| {
        cfg.insert(k.to_string(), serde_json::json!(v));
    };
    let old_layers = cfg
        .get("num_hidden_layers")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0) as usize;
    set(cfg, "num_hidden_layers", arch.n_layer);
    if cfg.contains_key("intermediate_size") {
        set(cfg, "intermediate_size", arch.ffn);
    }
    set(cfg, "num_attention_heads", arch.n_head);
    set(cfg, "num_key_value_heads", arch.n_head_kv);
    set(cfg, "head_dim", arch.head_dim);
    if !layer_map.is_empty() {
        for (_, v) in cfg.iter_mut() {
            if let serde_json::Value::Array(items) = v {
                if items.len() == old_layers && old_layers == layer_map.len() {
                    let kept: Vec<serde_json::Value> = items
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| layer_map[*i].is_some())
                        .map(|(_, x)| x.clone())
                        .collect();
                    *items = kept;
                }
            }
        }
        if arch.n_dense_layers > 0 && cfg.contains_key("first_k_dense_replace") {
            set(cfg, "first_k_dense_replace", arch.n_dense_layers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let s = parse_spec("layers=21,20;ffn=0.75;kv-groups=2;tp=2").unwrap();
        assert_eq!(s.layers, Some(LayerSel::Named(vec![20, 21])));
        assert_eq!(s.ffn, Some(0.75));
        assert_eq!(s.kv, Some(KvSel::Keep(2)));
        assert_eq!(s.tp, 2);
        assert_eq!(s.to_spec_string(), "layers=20,21;ffn=0.75;kv-groups=2;tp=2");
        assert_eq!(
            parse_spec("layers=auto:2").unwrap().layers,
            Some(LayerSel::Auto(2))
        );
        assert_eq!(
            parse_spec("kv-groups=1:0,0:1").unwrap().kv,
            Some(KvSel::Named(vec![(0, 1), (1, 0)]))
        );
        for bad in [
            "ffn=0",
            "ffn=1.5",
            "ffn=1",
            "ffn=x",
            "layers=a",
            "layers=1,1",
            "kv-groups=0",
            "depth=2",
            "",
            "tp=0",
            "layers=auto:0",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keeps_runtime_friendly_widths() {
        assert_eq!(ffn_keep(1536, 0.75), 1152);
        assert_eq!(ffn_keep(1536, 0.9), 1408);
        assert_eq!(ffn_keep(704, 0.75), 512);
        assert_eq!(ffn_keep(4864, 0.75), 3712);
        assert_eq!(ffn_keep(100, 0.5), 50);
        assert_eq!(ffn_keep(128, 0.01), 64);
    }

    #[test]
    fn top_k_is_deterministic() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 0.5], 2), vec![1, 2]);
        assert_eq!(top_k(&[2.0, 2.0, 2.0], 1), vec![0]);
    }

    #[test]
    fn renames_and_remaps() {
        let map = vec![Some(0), None, Some(1)];
        assert_eq!(
            rename_layer("blk.2.ffn_up.weight", &map).as_deref(),
            Some("blk.1.ffn_up.weight")
        );
        assert_eq!(rename_layer("blk.1.ffn_up.weight", &map), None);
        assert_eq!(
            rename_layer("output.weight", &map).as_deref(),
            Some("output.weight")
        );
        assert_eq!(
            renumber_source_name("model.layers.21.mlp.up_proj.weight", 21, 20),
            "model.layers.20.mlp.up_proj.weight"
        );
        let s = Scratch {
            layer_map: map,
            kept_cols: [("blk.2.ffn_down.weight".to_string(), vec![0, 2])].into(),
            ..Scratch::default()
        };
        let v: BTreeMap<String, Vec<f32>> = [
            ("blk.2.ffn_down.weight".to_string(), vec![1.0, 2.0, 3.0]),
            ("blk.1.ffn_down.weight".to_string(), vec![1.0, 2.0, 3.0]),
        ]
        .into();
        let got = s.remap_importance(&v);
        assert_eq!(got.len(), 1);
        assert_eq!(got["blk.1.ffn_down.weight"], vec![1.0, 3.0]);
    }
}
