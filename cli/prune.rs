//! `--prune` on `kiln convert`: calibration (activations and block influence
//! from `--text`, or activations from `--imatrix`), the `prune-*` passes in
//! their order (KV groups and FFN channels first, on the input's layer
//! numbering, then depth), the sliced tensors served as an extra input map,
//! and what the pruned model is (config, sizes) for dry runs, manifests and
//! Hugging Face config.json files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _, Result};
use eval::text::Windows;
use eval::{Tokenizer, Transformer};
use formats::MappedFile;
use passes::passes::prune::{
    self, DropKvGroups, DropLayers, LayerSel, NarrowFfn, PruneSpec, Scratch, SharedScratch,
};
use passes::passes::Pass;
use passes::{Arch, Model};
use serde_json::{json, Value};

use crate::common::{cancel_flag, human_bytes, lift, load_options};
use crate::Printer;

/// Calibration windows: as `kiln imatrix`'s defaults, fewer windows.
const CTX: usize = 512;
const CHUNKS: usize = 8;

/// A resolved `--prune`: the passes to run and what they share.
pub struct Prune {
    pub spec: PruneSpec,
    pub scratch: SharedScratch,
    /// Mean squared input activations by weight name, when known.
    activations: Option<BTreeMap<String, Vec<f32>>>,
    /// Blocks chosen for removal (named, or by block influence).
    layers: Option<(Vec<usize>, String)>,
    /// Where the activations came from, for the record.
    pub calibration: Option<String>,
    /// Block influence per input layer, when measured.
    pub block_influence: Vec<f64>,
    /// The unpruned model's config, for the before/after summary.
    before: Option<Arch>,
}

impl Prune {
    /// Resolve `specs` for `model` (loaded from `model_path`; `gguf`: the
    /// output is a GGUF): refuse what the passes would refuse, then measure
    /// on `text` when given (Wanda activations, ShortGPT block influence),
    /// else take the activations from `imatrix` (already parsed) when given.
    pub fn new(
        specs: &[PruneSpec],
        model: &Model,
        model_path: &Path,
        gguf: bool,
        text: Option<&Path>,
        imatrix: Option<&BTreeMap<String, Vec<f32>>>,
        printer: &Printer,
    ) -> Result<Prune> {
        let spec = prune::merge(specs).map_err(anyhow::Error::msg)?;
        let mut p = Prune {
            spec: spec.clone(),
            scratch: Arc::new(Mutex::new(Scratch::default())),
            activations: imatrix.cloned(),
            layers: None,
            calibration: imatrix.map(|_| "--imatrix".to_string()),
            block_influence: Vec::new(),
            before: None,
        };
        let needs_text = matches!(spec.layers, Some(LayerSel::Auto(_)));
        if needs_text && text.is_none() {
            bail!("--prune layers=auto:N picks blocks by their influence on calibration text: give --text FILE (or name the layers: layers=20,21)");
        }
        // The passes' own checks, on the model's names (no tensor data
        // read), before anything is calibrated.
        let mut normalized = model.clone();
        passes::passes::Pipeline::prune(Vec::new())
            .run(&mut normalized, &passes::passes::Context::default())
            .and_then(|_| prune::check_spec(&spec, &normalized, gguf))
            .with_context(|| model_path.display().to_string())?;
        // An --imatrix is read as the unpruned model's (Wanda's activations
        // without --text, and remapped onto the pruned tensors for the
        // quantization): one of another model, or of a pruned one, is refused
        // here rather than applied to the wrong columns.
        if let Some(m) = imatrix {
            for t in &normalized.tensors {
                passes::passes::importance::for_tensor(m, &t.name, &t.shape).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: --imatrix is not of this model (with --prune it must be the unpruned model's): {e}",
                        model_path.display()
                    )
                })?;
            }
        }
        drop(normalized);
        if let Some(text) = text {
            let cal = calibrate(model_path, text, printer)?;
            p.activations = Some(cal.activations.clone());
            p.calibration = Some(format!("{} ({} tokens)", text.display(), cal.tokens));
            p.block_influence = cal.block_influence.clone();
            if let Some(LayerSel::Auto(n)) = spec.layers {
                let n_layer = cal.block_influence.len();
                if n >= n_layer {
                    bail!(
                        "--prune layers=auto:{n}: removing {n} of {n_layer} layers leaves no layer"
                    );
                }
                p.layers = Some((
                    cal.least_influential(n),
                    "lowest ShortGPT block influence on the calibration text".into(),
                ));
            }
        }
        if let Some(LayerSel::Named(v)) = &spec.layers {
            p.layers = Some((v.clone(), "as named".into()));
        }
        Ok(p)
    }

    /// The passes, in the order they run: KV groups and FFN channels on the
    /// input's layer numbering, then depth.
    pub fn passes(&self, gguf: bool) -> Vec<Box<dyn Pass + Send + Sync>> {
        let mut v: Vec<Box<dyn Pass + Send + Sync>> = Vec::new();
        if let Some(sel) = &self.spec.kv {
            v.push(Box::new(DropKvGroups {
                sel: sel.clone(),
                tp: self.spec.tp,
                activations: self.activations.clone(),
                scratch: self.scratch.clone(),
                gguf,
            }));
        }
        if let Some(ratio) = self.spec.ffn {
            v.push(Box::new(NarrowFfn {
                ratio,
                activations: self.activations.clone(),
                scratch: self.scratch.clone(),
            }));
        }
        if let Some((layers, how)) = &self.layers {
            v.push(Box::new(DropLayers {
                layers: layers.clone(),
                scratch: self.scratch.clone(),
                how: how.clone(),
            }));
        }
        v
    }

    /// Remember the unpruned config (call before the passes run).
    pub fn before(&mut self, model: &Model) {
        self.before = model.arch.clone();
    }

    /// After the passes: serve the sliced tensors as the extra input file
    /// they point into (`maps` must hold one map per input file before).
    pub fn serve(&self, model: &Model, maps: &mut Vec<MappedFile>) -> Result<()> {
        let mut s = self.scratch.lock().expect("scratch lock");
        if let Some(file) = s.file {
            if file != maps.len() || model.files.len() != maps.len() + 1 {
                bail!(
                    "internal: pruned tensors file {file} with {} maps",
                    maps.len()
                );
            }
            maps.push(MappedFile::computed(s.take_bytes()));
        }
        Ok(())
    }

    /// An imatrix of the unpruned model, remapped onto the pruned one.
    pub fn remap_importance(
        &self,
        vectors: &BTreeMap<String, Vec<f32>>,
    ) -> BTreeMap<String, Vec<f32>> {
        self.scratch
            .lock()
            .expect("scratch lock")
            .remap_importance(vectors)
    }

    /// The resolved spec (auto layers named), as the user could rerun it.
    pub fn resolved(&self) -> String {
        let mut s = self.spec.clone();
        if let Some((v, _)) = &self.layers {
            s.layers = Some(LayerSel::Named(v.clone()));
        }
        s.to_spec_string()
    }

    /// What was pruned, as JSON (manifests, `--json`).
    pub fn record(&self, model: &Model) -> Value {
        let s = self.scratch.lock().expect("scratch lock");
        json!({
            "spec": self.spec.to_spec_string(),
            "resolved": self.resolved(),
            "passes": s.summary,
            "layer_map": s.layer_map,
            "kept_columns": s.kept_cols,
            "calibration": self.calibration,
            "block_influence": self.block_influence,
            "before": self.before.as_ref().map(config_json),
            "after": model.arch.as_ref().map(config_json),
        })
    }

    /// The before/after summary: config, KV cache bytes per token (F16).
    pub fn summary_text(&self, model: &Model, bytes: Option<(u64, &str)>) -> String {
        let s = self.scratch.lock().expect("scratch lock");
        let mut out = format!("pruning: {}\n", self.resolved());
        for l in &s.summary {
            out += &format!("  {l}\n");
        }
        if let Some(c) = &self.calibration {
            out += &format!("  calibration: {c}\n");
        }
        let row = |a: &Arch| {
            format!(
                "layers {}, hidden {}, heads {}, kv heads {}, head_dim {}, ffn {}; KV cache {} per token (F16)",
                a.n_layer,
                a.hidden,
                a.n_head,
                a.n_head_kv,
                a.head_dim,
                a.ffn,
                human_bytes(kv_bytes_per_token(a))
            )
        };
        if let Some(b) = &self.before {
            out += &format!("  before: {}\n", row(b));
        }
        if let Some(a) = &model.arch {
            out += &format!("  after:  {}\n", row(a));
        }
        if let Some((b, what)) = bytes {
            out += &format!(
                "  weights: {} parameters, {} {what}\n",
                model.n_params(),
                human_bytes(b)
            );
        }
        out
    }
}

/// F16 KV cache bytes per token of context (K and V, every layer; a Gemma
/// sliding-window layer counted in full).
pub fn kv_bytes_per_token(a: &Arch) -> u64 {
    2 * 2 * (a.n_layer * a.n_head_kv * a.head_dim) as u64
}

fn config_json(a: &Arch) -> Value {
    json!({
        "n_layer": a.n_layer,
        "hidden": a.hidden,
        "n_head": a.n_head,
        "n_head_kv": a.n_head_kv,
        "head_dim": a.head_dim,
        "ffn": a.ffn,
        "kv_bytes_per_token_f16": kv_bytes_per_token(a),
    })
}

/// The layer map the depth pass left (empty: no depth pruning).
pub fn layer_map(p: &Prune) -> Vec<Option<usize>> {
    p.scratch.lock().expect("scratch lock").layer_map.clone()
}

/// One forward run over the calibration text.
fn calibrate(
    model_path: &Path,
    text: &Path,
    printer: &Printer,
) -> Result<eval::prune::Calibration> {
    let model = eval::open(model_path, &load_options(&None)).map_err(lift)?;
    let body = std::fs::read_to_string(text)
        .with_context(|| format!("{}: cannot read the calibration text", text.display()))?;
    let tok = Tokenizer::from_metadata(&formats::gguf::key_values(&model.loaded.model))
        .map_err(lift)
        .with_context(|| model.name())?;
    let mut ids = Vec::new();
    if tok.add_bos {
        ids.extend(tok.bos);
    }
    ids.extend(tok.encode(&body).map_err(lift)?);
    // Never past the trained context (positions there are extrapolated).
    let ctx = CTX
        .min(ids.len().max(4))
        .min(planner::setup::trained_context(&model).unwrap_or(usize::MAX));
    let windows = eval::text::windows(
        &ids,
        Windows {
            ctx,
            max_chunks: Some(CHUNKS),
        },
        tok.bos.filter(|_| tok.add_bos),
    )
    .map_err(lift)
    .with_context(|| text.display().to_string())?;
    let net = Transformer::new(&model).map_err(lift)?;
    printer.info(&format!(
        "pruning calibration: {} windows of {ctx} tokens of {}",
        windows.len(),
        text.display()
    ));
    let cancel = cancel_flag();
    eval::prune::calibrate(&net, &windows, &cancel)
        .map_err(lift)
        .with_context(|| model.name())
}
