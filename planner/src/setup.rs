//! Everything measured about a model before any budget: open it, cut the
//! texts into calibration and held-out windows, gather the importance of each
//! input column (an imatrix file, or one collected over the text), measure
//! every quantizable tensor in every candidate encoding, set each tensor's
//! sensitivity (`sensitivity`), and state the allocation problem.
//!
//! What must stay true: every number here is measured on this model or
//! derived from the options, never a table of outcomes; the candidate set is
//! what llama.cpp loads (GGUF types whose block divides the rows); the same
//! inputs and options give the same setup for any thread count.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use eval::planning::{self, Measured};
use eval::text::Windows;
use eval::{Opened, Tokenizer};
use formats::imatrix::{Imatrix, ImatrixEntry, ImatrixFormat};
use formats::tokenizer::TokenizerOptions;
use formats::LoadOptions;
use passes::passes::assign::is_quantizable;
use passes::passes::importance::AttachImportance;
use passes::passes::recipe::kept_type;
use passes::passes::{Context, Pipeline};
use passes::plan::{Choice, Options};
use passes::Arch;
use quant::GgmlType;

use crate::error::{Error, Result};
use crate::options::PlanOptions;
use crate::progress::{positions, Progress, Unit};
use crate::sensitivity::{self, GroupSensitivity, Sensitivities};

use crate::solve::tensor_bytes;

/// GGUF encodings the planner chooses among (llama.cpp loads them all), largest first.
pub const CANDIDATES: [GgmlType; 13] = [
    GgmlType::F16,
    GgmlType::Q8_0,
    GgmlType::Q6K,
    GgmlType::Q5K,
    GgmlType::Q5_1,
    GgmlType::Q5_0,
    GgmlType::Q4K,
    GgmlType::Q4_1,
    GgmlType::IQ4NL,
    GgmlType::Q4_0,
    GgmlType::IQ4XS,
    GgmlType::Q3K,
    GgmlType::Q2K,
];

/// Where the importance vectors came from.
#[derive(Debug, Clone)]
pub enum ImportanceSource {
    None,
    File(PathBuf),
    Text(PathBuf),
}

impl ImportanceSource {
    pub fn describe(&self) -> String {
        match self {
            ImportanceSource::None => "none (unweighted errors)".into(),
            ImportanceSource::File(p) => format!("imatrix {}", p.display()),
            ImportanceSource::Text(p) => format!("collected over {}", p.display()),
        }
    }
}

/// Everything measured about the model, before any budget.
pub struct Setup {
    pub opened: Opened,
    pub arch: Arch,
    pub importance: BTreeMap<String, Vec<f32>>,
    pub importance_source: ImportanceSource,
    /// The imatrix (read or collected), for the `quantize.imatrix.*` keys.
    pub imatrix: Option<(String, Imatrix)>,
    /// Held-out windows to measure accuracy on (empty without a text).
    pub eval_windows: Vec<Vec<u32>>,
    pub eval_text: Option<PathBuf>,
    /// Calibration windows (imatrix, probes; pruning's block influence).
    pub calib: Vec<Vec<u32>>,
    /// Measured quantizable tensors, in model order.
    pub measured: Vec<Measured>,
    /// Position in `measured` by tensor name.
    measured_at: BTreeMap<String, usize>,
    /// Sensitivity of each measured tensor (KL divergence per unit NSR).
    pub sensitivity: BTreeMap<String, f64>,
    pub groups: Vec<GroupSensitivity>,
    pub sensitivity_source: String,
    /// The planner's problem: every tensor (fixed ones with one choice).
    pub options: Vec<Options>,
    /// Bytes of the GGUF header and alignment padding (an upper bound).
    pub overhead_bytes: u64,
    pub warnings: Vec<String>,
}

impl Setup {
    /// The measurements of a quantizable tensor.
    pub fn measured(&self, name: &str) -> Option<&Measured> {
        self.measured_at.get(name).map(|&i| &self.measured[i])
    }

    /// Parameters of the model.
    pub fn params(&self) -> u64 {
        self.opened.loaded.model.n_params()
    }

    /// Bits per weight of `bytes` over all parameters.
    pub fn bpw(&self, bytes: u64) -> f64 {
        bytes as f64 * 8.0 / self.params().max(1) as f64
    }
}

/// How a model is loaded for planning.
pub fn load_options(pre_tokenizer: &Option<String>) -> LoadOptions {
    LoadOptions {
        tokenizer: TokenizerOptions {
            pre_tokenizer: pre_tokenizer.clone(),
        },
    }
}

/// The text at `path` as windows of `ctx` tokens, each starting with BOS
/// when the tokenizer adds one.
fn tokenize(opened: &Opened, path: &Path, ctx: usize) -> Result<Vec<Vec<u32>>> {
    if let Some(n) = trained_context(opened).filter(|&n| ctx > n) {
        return Err(Error::Options(format!(
            "--ctx {ctx} is longer than {}'s trained context of {n} tokens (positions past it are extrapolated, so the figures would not describe the model); give --ctx {n} or less",
            opened.name()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadText {
        path: path.to_path_buf(),
        source,
    })?;
    let tok = Tokenizer::from_metadata(&formats::gguf::key_values(&opened.loaded.model)).map_err(
        |source| Error::Within {
            what: opened.name(),
            source: Box::new(source),
        },
    )?;
    let mut ids = Vec::new();
    if tok.add_bos {
        ids.extend(tok.bos);
    }
    ids.extend(tok.encode(&text)?);
    eval::text::windows(
        &ids,
        Windows {
            ctx,
            max_chunks: None,
        },
        tok.bos.filter(|_| tok.add_bos),
    )
    .map_err(|source| Error::Within {
        what: path.display().to_string(),
        source: Box::new(source),
    })
}

/// The model's trained context (`max_position_embeddings`,
/// `{arch}.context_length`), when it states one.
pub fn trained_context(opened: &Opened) -> Option<usize> {
    opened
        .loaded
        .model
        .arch
        .as_ref()
        .map(|a| a.context_length)
        .filter(|&n| n > 0)
}

/// The collected matrix as llama.cpp's GGUF imatrix holds it.
pub fn to_imatrix(
    c: &eval::imatrix::Collector,
    dataset: &str,
    chunks: usize,
    chunk_size: usize,
) -> Result<Imatrix> {
    let entries = c
        .entries
        .iter()
        .map(|e| {
            let sums = e.sum2.iter().map(|&s| s as f32).collect();
            (
                e.name.clone(),
                ImatrixEntry {
                    sums,
                    counts: e.counts.iter().map(|&n| n as i64).collect(),
                },
            )
        })
        .collect();
    Ok(Imatrix {
        format: ImatrixFormat::Gguf,
        entries,
        datasets: vec![dataset.to_string()],
        chunk_count: i32::try_from(chunks).map_err(|_| Error::Options("too many chunks".into()))?,
        chunk_size: u32::try_from(chunk_size)
            .map_err(|_| Error::Options("--ctx too large".into()))?,
    })
}

/// Open the model and refuse what planning cannot use.
fn open(model_path: &Path, o: &PlanOptions) -> Result<(Opened, passes::Arch)> {
    let opened = eval::open(model_path, &load_options(&o.pre_tokenizer))?;
    let arch = opened.loaded.model.arch.clone().ok_or_else(|| {
        Error::Input(format!("{}: no architecture: a bare .safetensors file has no config.json; plan the checkpoint directory instead", model_path.display()))
    })?;
    if let Some(g) = &opened.loaded.gguf {
        if let Some((name, ty)) = formats::load::undecodable(g) {
            return Err(Error::Input(format!(
                "{}: tensor `{name}`: type {ty} cannot be decoded by kiln yet",
                model_path.display()
            )));
        }
    }
    opened.loaded.refuse_compressed(model_path)?;
    if !o.allow_requantize {
        let model = &opened.loaded.model;
        if let Some(t) = model.tensors.iter().find(|t| {
            matches!(t.source.dtype, passes::SourceDType::Ggml(g) if g.is_quantized())
                && is_quantizable(model, &t.name, &t.shape)
        }) {
            return Err(Error::Input(format!(
                "{}: tensor `{}` is already quantized as {}; planning requantizes it and loses quality: pass --allow-requantize to do it anyway",
                model_path.display(),
                t.source_name,
                t.source.dtype.name()
            )));
        }
    }
    Ok((opened, arch))
}

/// Calibration and held-out windows, and the text measured on.
pub(crate) struct Texts {
    pub(crate) calib: Vec<Vec<u32>>,
    pub(crate) eval_windows: Vec<Vec<u32>>,
    pub(crate) eval_text: Option<PathBuf>,
}

fn texts(opened: &Opened, o: &PlanOptions, warnings: &mut Vec<String>) -> Result<Texts> {
    let mut calib: Vec<Vec<u32>> = Vec::new();
    let mut eval_windows: Vec<Vec<u32>> = Vec::new();
    let mut eval_text = o.eval_text.clone();
    if let Some(t) = &o.text {
        let w = tokenize(opened, t, o.ctx)?;
        if o.eval_text.is_none() {
            let hold = (w.len() / 4).max(1);
            if w.len() < 2 {
                warnings.push(format!(
                    "{} fills only one window of {} tokens: it is used both to calibrate and to measure",
                    passes::printable(&t.display().to_string()),
                    o.ctx
                ));
                calib = w.clone();
                eval_windows = w;
            } else {
                calib = w[..w.len() - hold].to_vec();
                eval_windows = w[w.len() - hold..].to_vec();
            }
            eval_text = Some(t.clone());
        } else {
            calib = w;
        }
        calib.truncate(o.chunks.max(1));
    }
    if let Some(t) = &o.eval_text {
        eval_windows = tokenize(opened, t, o.ctx)?;
    }
    eval_windows.truncate(o.eval_chunks.max(1));
    Ok(Texts {
        calib,
        eval_windows,
        eval_text,
    })
}

/// The imatrix read from a file or collected over the calibration windows.
fn importance_matrix(
    net: Option<&Opened>,
    calib: &[Vec<u32>],
    o: &PlanOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<(Option<(String, Imatrix)>, ImportanceSource)> {
    Ok(match (&o.imatrix, &o.text) {
        (Some(p), _) => (
            Some((p.display().to_string(), formats::imatrix::read(p)?)),
            ImportanceSource::File(p.clone()),
        ),
        (None, Some(t)) if !o.no_imatrix => {
            let net = net.expect("a text was given");
            let mut collector = eval::imatrix::Collector::new(false);
            let blocks = net.arch()?.n_layer as u64;
            progress.start("imatrix", blocks, Unit::Items("blocks"));
            let r = eval::stream::observe(
                net,
                calib,
                &mut collector,
                false,
                &positions(progress),
                cancel,
            );
            progress.finish();
            r?;
            let im = to_imatrix(&collector, &t.display().to_string(), calib.len(), o.ctx)?;
            (
                Some(("imatrix.gguf".to_string(), im)),
                ImportanceSource::Text(t.clone()),
            )
        }
        (None, _) => (None, ImportanceSource::None),
    })
}

/// Measure every quantizable tensor in every candidate that divides its rows.
fn measure_all(
    model_path: &Path,
    opened: &Opened,
    importance: &BTreeMap<String, Vec<f32>>,
    o: &PlanOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Vec<Measured>> {
    let model = &opened.loaded.model;
    let quantizable: Vec<&passes::TensorNode> = model
        .tensors
        .iter()
        .filter(|t| is_quantizable(model, &t.name, &t.shape))
        .collect();
    let candidates = |t: &passes::TensorNode| -> Vec<GgmlType> {
        CANDIDATES
            .iter()
            .copied()
            .filter(|ty| ty.row_bytes(t.row_len()).is_some())
            .collect()
    };
    // The work: every sampled value encoded once per candidate, known up
    // front so that the bar's ETA follows the work, not the tensor count.
    let work = |t: &passes::TensorNode| -> u64 {
        (planning::sampled_rows(t, o.sample).len() * t.row_len() * candidates(t).len()) as u64
    };
    let total: u64 = quantizable.iter().map(|t| work(t)).sum();
    progress.start("measuring", total, Unit::Items("values"));
    let mut measured = Vec::with_capacity(quantizable.len());
    let r: Result<()> = (|| {
        for t in &quantizable {
            if cancel.load(Ordering::Relaxed) {
                return Err(formats::Error::Interrupted.into());
            }
            let types = candidates(t);
            if types.is_empty() {
                return Err(Error::Input(format!(
                    "{}: tensor `{}`: no GGUF type divides rows of {}",
                    model_path.display(),
                    t.name,
                    t.row_len()
                )));
            }
            let m = planning::measure(
                opened,
                t,
                &types,
                importance.get(&t.name).map(Vec::as_slice),
                o.sample,
            )?;
            measured.push(m);
            progress.advance(work(t));
        }
        Ok(())
    })();
    progress.finish();
    r?;
    Ok(measured)
}

/// The allocation problem: each tensor's allowed choices with their bytes
/// and predicted error (a tensor that is not quantized has one choice).
pub fn problem(
    model: &passes::Model,
    measured: &[Measured],
    sensitivity: &BTreeMap<String, f64>,
    exclude: &[GgmlType],
) -> Result<Vec<Options>> {
    let by_name: BTreeMap<&str, &Measured> =
        measured.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut options = Vec::with_capacity(model.tensors.len());
    for t in &model.tensors {
        match by_name.get(t.name.as_str()) {
            Some(m) => {
                let s = sensitivity[&t.name];
                let allowed = |ty: &GgmlType| !exclude.contains(ty);
                if !m.candidates.iter().any(|c| allowed(&c.ty)) {
                    return Err(Error::Input(format!(
                        "tensor `{}`: every type that divides its rows of {} is excluded by --exclude-type",
                        t.name,
                        t.row_len()
                    )));
                }
                options.push(Options {
                    name: t.name.clone(),
                    choices: m
                        .candidates
                        .iter()
                        .filter(|c| allowed(&c.ty))
                        .map(|c| Choice {
                            ty: c.ty,
                            bytes: c.bytes,
                            error: s * c.nsr,
                        })
                        .collect(),
                });
            }
            None => {
                let ty = kept_type(t);
                options.push(Options {
                    name: t.name.clone(),
                    choices: vec![Choice {
                        ty,
                        bytes: tensor_bytes(ty, t),
                        error: 0.0,
                    }],
                });
            }
        }
    }
    Ok(options)
}

/// The smallest model file kiln can write for `model` (every quantizable
/// tensor in its smallest allowed candidate, the rest as kept, plus the
/// header): known from the shapes alone, before anything is measured.
pub fn min_file_bytes(model: &passes::Model, exclude: &[GgmlType]) -> Result<u64> {
    let options: Vec<Options> = model
        .tensors
        .iter()
        .map(|t| {
            let choices: Vec<Choice> = if is_quantizable(model, &t.name, &t.shape) {
                CANDIDATES
                    .iter()
                    .filter(|ty| !exclude.contains(ty) && ty.row_bytes(t.row_len()).is_some())
                    .map(|&ty| Choice {
                        ty,
                        bytes: tensor_bytes(ty, t),
                        error: 0.0,
                    })
                    .min_by_key(|c| c.bytes)
                    .into_iter()
                    .collect()
            } else {
                Vec::new()
            };
            let choices = if choices.is_empty() {
                let ty = kept_type(t);
                vec![Choice {
                    ty,
                    bytes: tensor_bytes(ty, t),
                    error: 0.0,
                }]
            } else {
                choices
            };
            Options {
                name: t.name.clone(),
                choices,
            }
        })
        .collect();
    let tensors: u64 = options.iter().map(|o| o.choices[0].bytes).sum();
    Ok(tensors + crate::layout::overhead_bytes(model, &options)?)
}

/// Refuse a `--bpw` below the smallest file kiln can write, before any
/// text is read or tensor measured, naming the smallest `--bpw` that works.
fn check_bpw(path: &Path, model: &passes::Model, o: &PlanOptions) -> Result<()> {
    let Some(bpw) = o.bpw else {
        return Ok(());
    };
    let params = model.n_params().max(1);
    let budget = (bpw * params as f64 / 8.0) as u64;
    let min = min_file_bytes(model, &o.exclude_type)?;
    if budget >= min {
        return Ok(());
    }
    // The smallest --bpw with 3 decimals whose budget holds `min` bytes.
    let mut least = (min as f64 * 8.0 / params as f64 * 1000.0).ceil() / 1000.0;
    while ((least * params as f64 / 8.0) as u64) < min {
        least += 0.001;
    }
    Err(Error::NoPlan(format!(
        "{}: --bpw {bpw}: {} for {} parameters, but the smallest file kiln can write for this model is {} ({} bytes, every tensor in its smallest type): give --bpw {least:.3} or more",
        path.display(),
        formats::human::bytes(budget),
        formats::human::count(params),
        formats::human::bytes(min),
        formats::human::count(min)
    )))
}

/// Open, weigh, measure and probe.
pub fn setup(
    model_path: &Path,
    o: &PlanOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Setup> {
    let (opened, arch) = open(model_path, o)?;
    check_bpw(model_path, &opened.loaded.model, o)?;
    crate::prune::check_named(&opened.loaded.model, o)?;
    // Warnings are shown before anything is measured (imatrix, probes,
    // measuring): a run the user would not want can be stopped at once.
    let mut warnings: Vec<String> = opened.loaded.warnings.clone();
    warnings.extend(
        o.context
            .and_then(|c| crate::options::context_warning(c, arch.context_length)),
    );
    for w in &warnings {
        progress.warn(w);
    }
    let shown = warnings.len();
    let Texts {
        calib,
        eval_windows,
        eval_text,
    } = texts(&opened, o, &mut warnings)?;
    for w in &warnings[shown..] {
        progress.warn(w);
    }
    setup_opened(
        model_path,
        opened,
        arch,
        o,
        Texts {
            calib,
            eval_windows,
            eval_text,
        },
        warnings,
        progress,
        cancel,
    )
}

/// A model already opened (maybe pruned: `crate::prune`) measured on
/// `texts`' windows: imatrix, every tensor in every candidate, probes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn setup_opened(
    model_path: &Path,
    mut opened: Opened,
    arch: Arch,
    o: &PlanOptions,
    texts: Texts,
    warnings: Vec<String>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Setup> {
    let Texts {
        calib,
        eval_windows,
        eval_text,
    } = texts;
    // A model the forward pass cannot run is refused before anything is
    // measured; it streams block by block, so nothing is decoded here.
    let runs = !calib.is_empty();
    if runs {
        eval::stream::Streamed::new(&opened)?;
    }
    let (imatrix, importance_source) =
        importance_matrix(runs.then_some(&opened), &calib, o, progress, cancel)?;
    // Attached to the model once (the `importance` pass checks every
    // vector against its tensor); measurement, probes and the writer read it.
    if let Some((arg, im)) = &imatrix {
        let attach = AttachImportance {
            vectors: im.importance(Path::new(arg))?,
            provenance: im.provenance(arg),
        };
        Pipeline::importance(attach)
            .run(&mut opened.loaded.model, &Context::default())
            .map_err(|e| Error::Input(format!("{arg}: {e}")))?;
    }
    let importance: BTreeMap<String, Vec<f32>> = opened
        .loaded
        .model
        .importance
        .as_ref()
        .map(|i| i.vectors.clone())
        .unwrap_or_default();
    let measured = measure_all(model_path, &opened, &importance, o, progress, cancel)?;
    let Sensitivities {
        sensitivity,
        groups,
        source: sensitivity_source,
    } = match runs {
        true => {
            let probe_windows: Vec<Vec<u32>> =
                calib.iter().take(o.probe_chunks.max(1)).cloned().collect();
            sensitivity::probed(
                &opened,
                &measured,
                &importance,
                &probe_windows,
                o.ctx,
                progress,
                cancel,
            )?
        }
        false => sensitivity::defaults(&opened.loaded.model, &measured),
    };
    let model = &opened.loaded.model;
    let options = problem(model, &measured, &sensitivity, &o.exclude_type)?;
    let overhead_bytes = crate::layout::overhead_bytes(model, &options)?;
    let measured_at = measured
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.clone(), i))
        .collect();
    Ok(Setup {
        opened,
        arch,
        calib,
        importance,
        importance_source,
        imatrix,
        eval_windows,
        eval_text,
        measured,
        measured_at,
        sensitivity,
        groups,
        sensitivity_source,
        options,
        overhead_bytes,
        warnings,
    })
}
