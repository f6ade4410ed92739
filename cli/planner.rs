//! What `kiln build` and `kiln plan` share: open the model, gather the
//! importance of each input column (an imatrix file, or one collected over
//! `--text`), measure every quantizable tensor in every candidate encoding,
//! turn those errors into predicted KL divergence with per-group
//! sensitivities (probed on the text, or kiln's defaults), size the byte
//! budget from the target, and solve the allocation (`passes::plan`).
//!
//! What must stay true: every number here is measured on this model or
//! derived from the target profile and the cost model, never a table of
//! outcomes; the candidate set is what llama.cpp loads (GGUF types whose
//! block divides the rows); the same inputs and options give the same plan
//! for any thread count.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};
use clap::Args;
use eval::planning::{self, Group, Measured, Reference};
use eval::text::Windows;
use eval::{Opened, Tokenizer, Transformer};
use formats::imatrix::Imatrix;
use passes::cost::{
    estimate, weight_budget, weight_bytes, Batch, Calibration, Engine, Estimate, KvType,
    MemoryBudget, ModelCost, Target, WeightFormat, Workload,
};
use passes::passes::assign::{is_quantizable, AssignTypes};
use passes::passes::recipe::{self, kept_type, ApplyRecipe, RecipeOptions};
use passes::plan::{self, Allocation, Choice, Options};
use passes::{Arch, Model, Role};
use quant::GgmlType;

use crate::eval::{lift, load_options};
use crate::Printer;

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

/// Default sensitivity of a role when no text is given to probe with: the
/// predicted KL divergence (nats) per unit of noise-to-signal ratio in all
/// of the role's tensors together (split evenly among them). Measured by
/// `kiln build`'s probes on SmolLM2-135M over Pride and Prejudice (the
/// probe table in the README, "How kiln plans": per-tensor sensitivity
/// times the 30 layers, averaged over the four layer quarters, rounded);
/// the untied input embedding, which SmolLM2 lacks, is the residual stream's
/// whole input (its noise-to-signal ratio is the stream's at layer 0), so it
/// is weighed like a full role rather than one layer (2, between the
/// attention roles and ffn_down). A prior, not a measurement of your model:
/// give `--text` to probe it.
fn default_sensitivity(role: Role) -> f64 {
    match role {
        Role::AttnQ => 1.1,
        Role::AttnK => 1.7,
        Role::AttnV => 2.3,
        Role::AttnOutput => 1.4,
        Role::FfnGate => 2.6,
        Role::FfnUp => 3.5,
        Role::FfnDown => 6.0,
        Role::Output => 8.0,
        Role::Embedding => 2.0,
        _ => 1.0,
    }
}

/// Options shared by `build` and `plan`.
#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// Serving engine. kiln writes GGUF, which llama.cpp serves.
    #[arg(long, default_value = "llama.cpp")]
    pub engine: String,
    /// KV cache slots reserved per sequence.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub context: usize,
    /// Sequences served at once (each with --context KV slots).
    #[arg(long, default_value_t = 1, value_name = "B")]
    pub concurrency: usize,
    /// KV cache type: f16, bf16, q8_0 or q4_0.
    #[arg(long, default_value = "f16", value_name = "T")]
    pub kv_type: String,
    /// Bytes of model file per device, in GB (10^9), instead of the target's memory minus KV cache and overhead.
    #[arg(long, value_name = "X", conflicts_with = "bpw")]
    pub budget_gb: Option<f64>,
    /// Bits per weight over all parameters (file size = X * params / 8), instead of the target's memory.
    #[arg(long, value_name = "X")]
    pub bpw: Option<f64>,
    /// Below this average bits per weight on one device, shard across more devices instead (0: never).
    #[arg(long, default_value_t = 3.0, value_name = "X")]
    pub min_bpw: f64,
    /// Importance matrix (GGUF or legacy .dat from llama-imatrix or kiln imatrix): weights the
    /// measured errors and the quantizers.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Calibration text: collect an importance matrix (unless --imatrix) and probe each tensor
    /// group's sensitivity; its last quarter is held out to measure the result (unless --eval-text).
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Use --text only to probe sensitivities and measure: no importance matrix is collected, and
    /// tensors are quantized without one (as llama-quantize without --imatrix).
    #[arg(long, conflicts_with = "imatrix")]
    pub no_imatrix: bool,
    /// Text to measure perplexity / KL divergence / top-1 of the result on (not used for calibration).
    #[arg(long, value_name = "FILE")]
    pub eval_text: Option<PathBuf>,
    /// Tokens per text window.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub ctx: usize,
    /// Calibration windows used at most (imatrix collection).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub chunks: usize,
    /// Calibration windows used to probe sensitivities.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub probe_chunks: usize,
    /// Held-out windows used to measure accuracy.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub eval_chunks: usize,
    /// Values measured per tensor at most (larger tensors are measured on evenly strided rows).
    #[arg(long, default_value_t = 4 << 20, value_name = "N")]
    pub sample: usize,
    /// Leave this type out of the candidates (repeatable), e.g. a type the runtime lacks.
    #[arg(long, value_name = "TYPE")]
    pub exclude_type: Vec<GgmlType>,
    /// Dequantize and requantize tensors already quantized in a GGUF input.
    #[arg(long)]
    pub allow_requantize: bool,
    /// llama.cpp pre-tokenizer name, for a Hugging Face model whose tokenizer kiln cannot name.
    #[arg(long, value_name = "NAME")]
    pub pre_tokenizer: Option<String>,
}

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

/// One probed group.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupSensitivity {
    pub label: String,
    pub tensors: usize,
    /// Mean KL divergence with the group's tensors (only) at their probe encoding.
    pub kld: f64,
    /// Sum of the group's noise-to-signal ratios at the probe encoding.
    pub nsr: f64,
    /// kld / nsr.
    pub sensitivity: f64,
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
}

pub fn engine(args: &PlanArgs) -> Result<Engine> {
    let e = Engine::parse(&args.engine).with_context(|| {
        format!(
            "unknown engine `{}` (known: llama.cpp, vllm, trt-llm)",
            args.engine
        )
    })?;
    if e != Engine::LlamaCpp {
        bail!(
            "--engine {}: kiln build writes GGUF, which llama.cpp serves; compressed-tensors checkpoints for {} are not written yet (use `kiln estimate --engine {}` to cost one)",
            e.name(),
            e.name(),
            e.name()
        );
    }
    Ok(e)
}

pub fn workload(args: &PlanArgs) -> Result<Workload> {
    let kv_type = KvType::parse(&args.kv_type).with_context(|| {
        format!(
            "unknown KV type `{}` (known: f16, bf16, q8_0, q4_0)",
            args.kv_type
        )
    })?;
    if args.concurrency == 0 || args.context == 0 {
        bail!("--context and --concurrency must be at least 1");
    }
    Ok(Workload {
        batch: Batch::Fixed(args.concurrency),
        context: Some(args.context),
        prompt: 512.min(args.context),
        gen: 128.min(args.context),
        kv_type,
        devices: None,
        tensor_parallel: None,
    })
}

/// Check the numeric options once.
pub fn check_args(args: &PlanArgs) -> Result<()> {
    if let Some(b) = args.budget_gb {
        if !(b.is_finite() && b > 0.0) {
            bail!("--budget-gb must be a positive number of GB, not {b}");
        }
    }
    if let Some(b) = args.bpw {
        if !(b.is_finite() && b > 0.0) {
            bail!("--bpw must be a positive number of bits per weight, not {b}");
        }
    }
    if !(args.min_bpw.is_finite() && args.min_bpw >= 0.0) {
        bail!("--min-bpw must be at least 0");
    }
    if args.ctx < 8 {
        bail!("--ctx must be at least 8 tokens");
    }
    Ok(())
}

fn tokenize(opened: &Opened, path: &Path, ctx: usize) -> Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the text", path.display()))?;
    let tok = Tokenizer::from_metadata(&formats::gguf::key_values(&opened.loaded.model))
        .map_err(lift)
        .with_context(|| opened.name())?;
    let mut ids = Vec::new();
    if tok.add_bos {
        ids.extend(tok.bos);
    }
    ids.extend(tok.encode(&text).map_err(lift)?);
    eval::text::windows(
        &ids,
        Windows {
            ctx,
            max_chunks: None,
        },
        tok.bos.filter(|_| tok.add_bos),
    )
    .map_err(lift)
    .with_context(|| path.display().to_string())
}

/// The probe encoding of a tensor: its candidate nearest 4.5 bits per weight.
fn probe_type(m: &Measured, n_elements: u64) -> GgmlType {
    m.candidates
        .iter()
        .min_by(|a, b| {
            let d =
                |c: &planning::Candidate| (c.bytes as f64 * 8.0 / n_elements as f64 - 4.5).abs();
            d(a).total_cmp(&d(b)).then(a.nsr.total_cmp(&b.nsr))
        })
        .map(|c| c.ty)
        .expect("a measured tensor has candidates")
}

/// The probe group of a tensor: its role and a quarter of the layers.
fn group_label(name: &str, role: Role, layer: Option<usize>, n_layer: usize) -> String {
    let role = match role {
        Role::Other => name.trim_end_matches(".weight").to_string(),
        r => r.name().to_string(),
    };
    match layer {
        Some(l) if n_layer > 0 => {
            let buckets = n_layer.min(4);
            let b = l * buckets / n_layer;
            let lo = b * n_layer / buckets;
            let hi = (b + 1) * n_layer / buckets - 1;
            if lo == hi {
                format!("{role} [{lo}]")
            } else {
                format!("{role} [{lo}-{hi}]")
            }
        }
        _ => role,
    }
}

/// Open, weigh, measure and probe.
pub fn setup(
    model_path: &Path,
    args: &PlanArgs,
    printer: &Printer,
    cancel: &AtomicBool,
) -> Result<Setup> {
    let opened = eval::open(model_path, &load_options(&args.pre_tokenizer)).map_err(lift)?;
    let arch = opened
        .loaded
        .model
        .arch
        .clone()
        .with_context(|| format!("{}: no architecture: a bare .safetensors file has no config.json; plan the checkpoint directory instead", model_path.display()))?;
    if let Some(g) = &opened.loaded.gguf {
        if let Some((name, ty)) = formats::load::undecodable(g) {
            bail!(
                "{}: tensor `{name}`: type {ty} cannot be decoded by kiln yet",
                model_path.display()
            );
        }
    }
    if !args.allow_requantize {
        let model = &opened.loaded.model;
        if let Some(t) = model.tensors.iter().find(|t| {
            matches!(t.source.dtype, passes::SourceDType::Ggml(g) if g.is_quantized())
                && is_quantizable(model, &t.name, &t.shape)
        }) {
            bail!(
                "{}: tensor `{}` is already quantized as {}; planning requantizes it and loses quality: pass --allow-requantize to do it anyway",
                model_path.display(),
                t.source_name,
                t.source.dtype.name()
            );
        }
    }
    let mut warnings = Vec::new();

    // Text windows: calibration and held out.
    let mut calib: Vec<Vec<u32>> = Vec::new();
    let mut eval_windows: Vec<Vec<u32>> = Vec::new();
    let mut eval_text = args.eval_text.clone();
    if let Some(t) = &args.text {
        let w = tokenize(&opened, t, args.ctx)?;
        if args.eval_text.is_none() {
            let hold = (w.len() / 4).max(1);
            if w.len() < 2 {
                warnings.push(format!(
                    "{} fills only one window of {} tokens: it is used both to calibrate and to measure",
                    t.display(),
                    args.ctx
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
        calib.truncate(args.chunks.max(1));
    }
    if let Some(t) = &args.eval_text {
        eval_windows = tokenize(&opened, t, args.ctx)?;
    }
    eval_windows.truncate(args.eval_chunks.max(1));

    let needs_net = !calib.is_empty();
    let mut net = if needs_net {
        Some(Transformer::new(&opened).map_err(lift)?)
    } else {
        None
    };

    // Importance.
    let (imatrix, importance_source) = match (&args.imatrix, &args.text) {
        (Some(p), _) => (
            Some((p.display().to_string(), formats::imatrix::read(p)?)),
            ImportanceSource::File(p.clone()),
        ),
        (None, Some(t)) if !args.no_imatrix => {
            let net = net.as_ref().expect("a text was given");
            let mut collector = eval::imatrix::Collector::new(false);
            let bar = printer.count_bar(calib.len() as u64, "imatrix");
            let progress = |n: usize| bar.set_position(n as u64);
            let t0 = std::time::Instant::now();
            let r = eval::text::observe(net, &calib, &mut collector, false, &progress, cancel);
            bar.finish_and_clear();
            r.map_err(lift)?;
            printer.info(&format!(
                "importance matrix: {} window(s) of {} tokens in {:.1}s",
                calib.len(),
                args.ctx,
                t0.elapsed().as_secs_f64()
            ));
            let im = crate::imatrix::to_imatrix(
                &collector,
                &t.display().to_string(),
                calib.len(),
                args.ctx,
            )?;
            (
                Some(("imatrix.gguf".to_string(), im)),
                ImportanceSource::Text(t.clone()),
            )
        }
        (None, _) => (None, ImportanceSource::None),
    };
    let mut importance = BTreeMap::new();
    if let Some((arg, im)) = &imatrix {
        let all = im.importance(Path::new(arg))?;
        for t in &opened.loaded.model.tensors {
            if let Some(v) = formats::imatrix::for_tensor(&all, &t.name, &t.shape)
                .map_err(|e| anyhow::anyhow!("{arg}: {e}"))?
            {
                importance.insert(t.name.clone(), v.to_vec());
            }
        }
    }

    // Measure every quantizable tensor in every candidate.
    let model = &opened.loaded.model;
    let quantizable: Vec<&passes::TensorNode> = model
        .tensors
        .iter()
        .filter(|t| is_quantizable(model, &t.name, &t.shape))
        .collect();
    let total: u64 = quantizable.iter().map(|t| t.n_elements() as u64).sum();
    let bar = printer.count_bar(total, "measuring");
    let t0 = std::time::Instant::now();
    let mut measured = Vec::with_capacity(quantizable.len());
    for t in &quantizable {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(formats::Error::Interrupted.into());
        }
        let types: Vec<GgmlType> = CANDIDATES
            .iter()
            .copied()
            .filter(|ty| ty.row_bytes(t.row_len()).is_some())
            .collect();
        if types.is_empty() {
            bail!(
                "{}: tensor `{}`: no GGUF type divides rows of {}",
                model_path.display(),
                t.name,
                t.row_len()
            );
        }
        let m = planning::measure(
            &opened,
            t,
            &types,
            importance.get(&t.name).map(Vec::as_slice),
            args.sample,
        )
        .map_err(lift)?;
        measured.push(m);
        bar.inc(t.n_elements() as u64);
    }
    bar.finish_and_clear();
    let measured_at: BTreeMap<String, usize> = measured
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.clone(), i))
        .collect();
    printer.info(&format!(
        "measured {} tensors in up to {} encodings in {:.1}s",
        measured.len(),
        CANDIDATES.len(),
        t0.elapsed().as_secs_f64()
    ));

    // Sensitivities: probed on the text, or the defaults by role.
    let n_layer = arch.n_layer;
    let node = |name: &str| model.tensor(name).expect("measured tensors exist");
    let mut sensitivity = BTreeMap::new();
    let mut groups_out = Vec::new();
    let sensitivity_source;
    if let Some(net) = net.as_mut() {
        let probe_windows: Vec<Vec<u32>> = calib
            .iter()
            .take(args.probe_chunks.max(1))
            .cloned()
            .collect();
        let mut by_label: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for (i, m) in measured.iter().enumerate() {
            let t = node(&m.name);
            let label = group_label(&t.name, t.role, t.layer, n_layer);
            if !by_label.contains_key(&label) {
                order.push(label.clone());
            }
            by_label.entry(label).or_default().push(i);
        }
        let groups: Vec<Group> = order
            .iter()
            .map(|l| Group {
                label: l.clone(),
                tensors: by_label[l]
                    .iter()
                    .map(|&i| {
                        let m = &measured[i];
                        (
                            m.name.clone(),
                            probe_type(m, node(&m.name).n_elements() as u64),
                        )
                    })
                    .collect(),
            })
            .collect();
        let t0 = std::time::Instant::now();
        let reference = Reference::new(net, &probe_windows, cancel).map_err(lift)?;
        let bar = printer.count_bar(groups.len() as u64, "probing");
        let progress = |n: usize| bar.set_position(n as u64);
        let kld = planning::probe(
            &opened,
            net,
            &reference,
            &groups,
            &importance,
            &progress,
            cancel,
        );
        bar.finish_and_clear();
        let kld = kld.map_err(lift)?;
        printer.info(&format!(
            "probed {} groups in {:.1}s",
            groups.len(),
            t0.elapsed().as_secs_f64()
        ));
        for (g, k) in groups.iter().zip(&kld) {
            let nsr: f64 = g
                .tensors
                .iter()
                .map(|(name, ty)| {
                    let m = &measured[measured_at[name]];
                    m.candidates
                        .iter()
                        .find(|c| c.ty == *ty)
                        .map_or(0.0, |c| c.nsr)
                })
                .sum();
            groups_out.push(GroupSensitivity {
                label: g.label.clone(),
                tensors: g.tensors.len(),
                kld: *k,
                nsr,
                sensitivity: if nsr > 0.0 { k.max(0.0) / nsr } else { 0.0 },
            });
        }
        // A group whose probe moved nothing measurable still gets the
        // smallest positive sensitivity seen, so its bits are not free.
        let floor = groups_out
            .iter()
            .map(|g| g.sensitivity)
            .filter(|s| *s > 0.0)
            .fold(f64::INFINITY, f64::min);
        let floor = if floor.is_finite() { floor } else { 1.0 };
        for (g, gs) in groups.iter().zip(&groups_out) {
            for (name, _) in &g.tensors {
                sensitivity.insert(name.clone(), gs.sensitivity.max(floor));
            }
        }
        sensitivity_source = format!(
            "probed: {} groups (role x quarter of the layers), each encoded alone at ~4.5 bits per weight, KL divergence over {} window(s) of {} tokens",
            groups.len(),
            probe_windows.len(),
            args.ctx
        );
    } else {
        // Defaults are per role for all layers together; split evenly.
        let mut count: BTreeMap<Role, usize> = BTreeMap::new();
        for m in &measured {
            *count.entry(role_of(model, node(&m.name))).or_insert(0) += 1;
        }
        for m in &measured {
            let r = role_of(model, node(&m.name));
            sensitivity.insert(m.name.clone(), default_sensitivity(r) / count[&r] as f64);
        }
        sensitivity_source =
            "defaults by role (no --text to probe with): see README, \"How kiln plans\"".into();
    }
    drop(net);

    // The planner's problem.
    let mut options = Vec::with_capacity(model.tensors.len());
    for t in &model.tensors {
        match measured_at.get(&t.name).map(|&i| &measured[i]) {
            Some(m) => {
                let s = sensitivity[&t.name];
                let allowed = |ty: &GgmlType| !args.exclude_type.contains(ty);
                if !m.candidates.iter().any(|c| allowed(&c.ty)) {
                    bail!(
                        "tensor `{}`: every type that divides its rows of {} is excluded by --exclude-type",
                        t.name,
                        t.row_len()
                    );
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
    // Header and padding: the layout of the model at its smallest, minus its tensors.
    let overhead_bytes = {
        let mut m = model.clone();
        let types: BTreeMap<String, GgmlType> = options
            .iter()
            .map(|o| (o.name.clone(), o.choices[0].ty))
            .collect();
        for t in &mut m.tensors {
            t.encoding = Some(types[&t.name].into());
        }
        let layout =
            formats::write::Container::layout(&formats::gguf::Gguf::new("model.gguf"), &m)?
                .remove(0);
        let tensors: u64 = layout
            .placements
            .iter()
            .map(|p| p.bytes(&m.tensors[p.tensor]))
            .sum();
        layout.total_bytes - tensors + formats::gguf::ALIGNMENT * m.tensors.len() as u64
    };
    Ok(Setup {
        opened,
        arch,
        importance,
        importance_source,
        imatrix,
        eval_windows,
        eval_text,
        measured,
        measured_at,
        sensitivity,
        groups: groups_out,
        sensitivity_source,
        options,
        overhead_bytes,
        warnings,
    })
}

/// The role whose default sensitivity applies: a tied embedding is the output.
fn role_of(model: &Model, t: &passes::TensorNode) -> Role {
    if t.role == Role::Embedding && model.tensor("output.weight").is_none() {
        Role::Output
    } else {
        t.role
    }
}

pub fn tensor_bytes(ty: GgmlType, t: &passes::TensorNode) -> u64 {
    ty.row_bytes(t.row_len())
        .map_or(0, |b| b as u64 * t.n_rows() as u64)
}

/// The model's tensors and architecture, without its metadata (a tokenizer
/// is ~100k strings): what a pass needs to choose types for sizing and costing.
fn bare(m: &Model) -> Model {
    Model {
        files: m.files.clone(),
        arch: m.arch.clone(),
        tensors: m.tensors.clone(),
        ..Model::default()
    }
}

/// The types of every tensor of a planned model.
pub fn types_of(m: &Model) -> BTreeMap<String, GgmlType> {
    m.tensors
        .iter()
        .map(|t| (t.name.clone(), t.ggml_type().expect("planned")))
        .collect()
}

/// The model (without metadata) as a llama.cpp recipe plans it (as `kiln convert --type`).
pub fn recipe_model(setup: &Setup, name: &str, allow_requantize: bool) -> Result<Model> {
    let r = recipe::parse_recipe(name).map_err(anyhow::Error::msg)?;
    let apply = ApplyRecipe::new(
        r,
        RecipeOptions {
            imatrix_present: !setup.importance.is_empty(),
            allow_requantize,
            dry_run: true,
            ..RecipeOptions::default()
        },
    )
    .map_err(anyhow::Error::msg)?;
    let mut m = bare(&setup.opened.loaded.model);
    passes::passes::Pipeline::size(apply).run(&mut m, &passes::passes::Context::default())?;
    Ok(m)
}

/// Bytes and predicted error of a full type table; `None` for an error
/// when a type was not measured for its tensor (then only bytes are known).
pub fn score(setup: &Setup, types: &BTreeMap<String, GgmlType>) -> (u64, Option<f64>) {
    let mut bytes = 0;
    let mut err = Some(0.0);
    for t in &setup.opened.loaded.model.tensors {
        let ty = types[&t.name];
        bytes += tensor_bytes(ty, t);
        let Some(m) = setup.measured(&t.name) else {
            continue;
        };
        match m.candidates.iter().find(|c| c.ty == ty) {
            Some(c) => err = err.map(|e| e + setup.sensitivity[&t.name] * c.nsr),
            None => err = None,
        }
    }
    (bytes, err)
}

/// How the budget was set.
#[derive(Debug, Clone)]
pub struct Budget {
    pub devices: usize,
    /// Bytes of model file(s) allowed in total.
    pub file_bytes: u64,
    /// Bytes left for tensor data after the header and padding.
    pub tensor_bytes: u64,
    pub from: String,
    pub memory: Option<MemoryBudget>,
}

/// The budget on `devices` devices.
pub fn budget(
    setup: &Setup,
    args: &PlanArgs,
    target: &Target,
    engine: Engine,
    w: &Workload,
    devices: usize,
) -> Result<Budget> {
    let params = setup.opened.loaded.model.n_params();
    let (file_bytes, from, memory) = if let Some(gb) = args.budget_gb {
        (
            (gb * 1e9 * devices as f64) as u64,
            if devices > 1 {
                format!("{devices} devices x --budget-gb {gb}")
            } else {
                format!("--budget-gb {gb}")
            },
            None,
        )
    } else if let Some(b) = args.bpw {
        (
            (b * params as f64 / 8.0) as u64,
            format!("--bpw {b} ({params} parameters)"),
            None,
        )
    } else {
        let mb = weight_budget(&setup.arch, target, engine, w, devices).with_context(|| {
            format!(
                "the memory of `{}` is unknown: give --budget-gb or --bpw",
                target.id
            )
        })?;
        (
            mb.weights,
            format!(
                "{} x {}: usable {:.2} GB each, minus KV cache {:.2} GB ({} x {} tokens, {}) and overhead {:.2} GB",
                devices,
                target.id,
                mb.usable_per_device as f64 / 1e9,
                mb.kv_per_device as f64 / 1e9,
                args.concurrency,
                args.context,
                w.kv_type.name(),
                mb.overhead_per_device as f64 / 1e9
            ),
            Some(mb),
        )
    };
    let overhead = setup.overhead_bytes * devices as u64;
    Ok(Budget {
        devices,
        file_bytes,
        tensor_bytes: file_bytes.saturating_sub(overhead),
        from,
        memory,
    })
}

/// Objective of the allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Objective {
    /// Least predicted accuracy loss that fits the budget.
    Accuracy,
    /// Fewest bytes (cheapest to serve) no worse than --max-error, or than llama.cpp's Q4_K_M.
    Cost,
}

/// The chosen allocation and where it runs.
pub struct Chosen {
    pub allocation: Allocation,
    pub budget: Budget,
    /// Error ceiling used by `--objective cost`, and what it came from.
    pub ceiling: Option<(f64, String)>,
}

/// Solve: the fewest devices (1, 2, 4, ... 64) on which the plan fits with at
/// least `--min-bpw` bits per weight on average.
pub fn solve(
    setup: &Setup,
    args: &PlanArgs,
    objective: Objective,
    max_error: Option<f64>,
    target: &Target,
    engine: Engine,
    w: &Workload,
) -> Result<Chosen> {
    let params = setup.opened.loaded.model.n_params().max(1);
    let ceiling = match objective {
        Objective::Accuracy => None,
        Objective::Cost => Some(match max_error {
            Some(e) => (e, format!("--max-error {e}")),
            None => {
                let types = types_of(&recipe_model(setup, "Q4_K_M", args.allow_requantize)?);
                let (_, e) = score(setup, &types);
                (
                    e.context("Q4_K_M uses a type that was not measured")?,
                    "the predicted error of llama.cpp's Q4_K_M on this model".into(),
                )
            }
        }),
    };
    let max_devices = if args.bpw.is_some() { 1 } else { 64 };
    let mut last_err = String::new();
    let mut n = 1;
    while n <= max_devices {
        let b = budget(setup, args, target, engine, w, n)?;
        let solve_at = |bytes: u64| match &ceiling {
            None => plan::allocate(&setup.options, bytes),
            Some((e, _)) => plan::cheapest_within(&setup.options, *e, bytes),
        };
        let mut a = solve_at(b.tensor_bytes);
        // Whole tensors go to one device each: shrink the total until the
        // files can be cut so that every device holds at most its share.
        if n > 1 {
            let cap = b.tensor_bytes / n as u64;
            let mut total = b.tensor_bytes;
            for _ in 0..32 {
                let Some(x) = &a else { break };
                if passes::passes::layout::cut(&sizes_of(setup, x), n, cap).is_some() {
                    break;
                }
                total -= (total / 64).max(1);
                a = solve_at(total);
            }
            if a.as_ref()
                .is_some_and(|x| passes::passes::layout::cut(&sizes_of(setup, x), n, cap).is_none())
            {
                a = None;
            }
        }
        match a {
            Some(_) if n > setup.options.len() => {
                last_err = format!(
                    "{n} devices: more than the model's {} tensors, which are not split across devices",
                    setup.options.len()
                );
                break;
            }
            // --bpw is an explicit size: take it even below --min-bpw.
            Some(a) if a.bytes as f64 * 8.0 / params as f64 >= args.min_bpw || args.bpw.is_some() => {
                return Ok(Chosen {
                    allocation: a,
                    budget: b,
                    ceiling,
                });
            }
            Some(a) => {
                last_err = format!(
                    "{} device(s): {:.2} bits per weight, below --min-bpw {}",
                    n,
                    a.bytes as f64 * 8.0 / params as f64,
                    args.min_bpw
                )
            }
            None => {
                last_err = match &ceiling {
                    Some((e, what)) if plan::min_bytes(&setup.options) <= b.tensor_bytes => format!(
                        "{} device(s): no allocation within {} bytes reaches the error ceiling {e:.4} ({what})",
                        n,
                        b.tensor_bytes
                    ),
                    _ => format!(
                        "{} device(s): {} bytes of budget for tensors (after headers), the smallest allocation needs {} bytes{}",
                        n,
                        b.tensor_bytes,
                        plan::min_bytes(&setup.options),
                        if n > 1 { " cut into whole tensors per device" } else { "" }
                    ),
                }
            }
        }
        n *= 2;
    }
    bail!("no plan fits: {last_err}")
}

/// Bytes of each tensor under an allocation, in model order.
pub fn sizes_of(setup: &Setup, a: &Allocation) -> Vec<u64> {
    setup
        .options
        .iter()
        .zip(&a.pick)
        .map(|(o, &p)| o.choices[p].bytes)
        .collect()
}

/// The model (without metadata) with these types assigned: for costing.
pub fn typed(setup: &Setup, types: &BTreeMap<String, GgmlType>) -> Result<Model> {
    let mut m = bare(&setup.opened.loaded.model);
    let pass = AssignTypes {
        types: types.clone(),
        allow_requantize: true,
    };
    passes::passes::Pipeline::assign(pass, None)
        .run(&mut m, &passes::passes::Context::default())?;
    Ok(m)
}

/// The model with these types assigned (and the imatrix keys when one was used).
pub fn assigned(
    setup: &Setup,
    types: &BTreeMap<String, GgmlType>,
    allow_requantize: bool,
) -> Result<Model> {
    let mut m = setup.opened.loaded.model.clone();
    let pass = AssignTypes {
        types: types.clone(),
        allow_requantize,
    };
    passes::passes::Pipeline::assign(pass, None)
        .run(&mut m, &passes::passes::Context::default())?;
    if let Some((arg, im)) = &setup.imatrix {
        if !im.entries.is_empty() {
            m.metadata
                .0
                .extend(formats::imatrix::quantize_metadata(arg, im));
        }
    }
    Ok(m)
}

/// Serving estimate of a planned model on `devices` devices.
pub fn cost(
    model: &Model,
    arch: &Arch,
    target: &Target,
    engine: Engine,
    w: &Workload,
    devices: usize,
) -> Result<Estimate> {
    let wb = weight_bytes(&model.tensors, arch, WeightFormat::Planned);
    let cal = Calibration::shipped()?;
    let w = Workload {
        devices: Some(devices),
        tensor_parallel: Some(devices),
        ..w.clone()
    };
    Ok(estimate(
        ModelCost {
            arch,
            weights: &wb,
            format: WeightFormat::Planned,
        },
        target,
        engine,
        &w,
        &cal,
    )?)
}

/// Text accuracy of a type table, measured against the original on the
/// held-out windows (every quantizable tensor encoded and decoded exactly
/// as the emitter does).
#[derive(Debug, Clone)]
pub struct TextAccuracy {
    pub ppl_original: f64,
    pub ppl: f64,
    pub kld: f64,
    pub kld_p99: f64,
    pub top1: f64,
    pub windows: usize,
}

pub fn measure_text(
    setup: &Setup,
    types: &BTreeMap<String, GgmlType>,
    original: &Transformer,
    candidate: &mut Transformer,
    cancel: &AtomicBool,
) -> Result<TextAccuracy> {
    let m = &setup.opened;
    for meas in &setup.measured {
        let node = m.need(&meas.name).map_err(lift)?;
        let ty = types[&meas.name];
        let q = planning::roundtrip(
            m,
            node,
            ty,
            setup.importance.get(&meas.name).map(Vec::as_slice),
        )
        .map_err(lift)?;
        candidate.set_weight(&meas.name, q).map_err(lift)?;
    }
    let r = eval::text::evaluate(
        original,
        Some(candidate),
        &setup.eval_windows,
        &|_| {},
        cancel,
    )
    .map_err(lift)?;
    let kld = r.kld.as_ref().context("no KL divergence")?;
    Ok(TextAccuracy {
        ppl_original: r.original.perplexity,
        ppl: r.candidate.as_ref().map_or(f64::NAN, |c| c.perplexity),
        kld: kld.mean,
        kld_p99: kld.p99,
        top1: r.top1_agreement.unwrap_or(f64::NAN),
        windows: setup.eval_windows.len(),
    })
}
