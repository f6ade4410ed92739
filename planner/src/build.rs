//! `kiln build`'s work after the setup: solve on the fewest devices, write
//! the GGUF file(s) (and a collected imatrix) into a staging directory,
//! measure the result, compare it with llama.cpp's recipes, and write
//! `manifest.json`, `report.md` and `chart.svg` before committing OUTDIR.
//!
//! What must stay true: OUTDIR appears complete or not at all
//! (`formats::artifact::Staging`); every file in it is byte-identical on a
//! rerun with the same inputs (no times, no absolute temp paths); every file
//! the manifest lists carries its sha256 and size; figures that were not
//! measured are `null` and say so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use formats::artifact::{self, Staging};
use passes::cost::{Estimate, Target};

use passes::passes::PassTiming;

use crate::accuracy::Measurer;
use crate::compare::{comparison, objective_row, plan_row, Row};
use crate::error::{Error, Result};
use crate::layout;
use crate::manifest::{self, Manifest};
use crate::options::Objective;
use crate::progress::{positions, Progress, Unit};
use crate::report;
use crate::serving;
use crate::setup::{ImportanceSource, Setup, CANDIDATES};
use crate::solve::{self, Chosen, Sizing};

/// What a build writes, and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The input (a checkpoint directory or a file).
    pub model: PathBuf,
    /// The output directory (replaced whole).
    pub output: PathBuf,
    /// Replace a previous artifact even if it holds files its manifest does
    /// not list (they are deleted with it).
    pub force: bool,
    /// Model file name without `.gguf` (default: the input's name).
    pub name: Option<String>,
    pub objective: Objective,
    /// Error ceiling for the cost objective.
    pub max_error: Option<f64>,
    /// The producer's version, stamped into the manifest and report.
    pub kiln_version: String,
    /// Weigh GPTQ rounding of the plan (`--gptq`): built only when it
    /// measures better on the held-out windows.
    pub gptq: Option<crate::gptq::GptqOptions>,
}

/// What a build wrote.
pub struct Built {
    pub manifest: Manifest,
    /// `manifest.json` as written.
    pub manifest_json: String,
    pub report: String,
    /// Model files written.
    pub model_files: usize,
    /// Bytes of the model files.
    pub actual_bytes: u64,
    /// Every pass that ran, in order, with its time (shown, never written:
    /// the artifact's files do not depend on timing).
    pub passes: Vec<PassTiming>,
}

/// Refuse an output, name or ceiling the build cannot use, before any work.
pub fn check(b: &BuildOptions) -> Result<()> {
    artifact::check_outdir(&b.output, b.force)?;
    // OUTDIR is replaced whole at the end: the input must not live in it.
    if let (Ok(out), Ok(model)) = (b.output.canonicalize(), b.model.canonicalize()) {
        if model.starts_with(&out) {
            return Err(Error::Options(format!(
                "{}: the input {} is inside the output directory, which a build replaces; write to another directory",
                b.output.display(),
                b.model.display()
            )));
        }
    }
    if let Some(n) = &b.name {
        let plain = !n.is_empty()
            && !n.starts_with('.')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !plain || n == "imatrix" {
            return Err(Error::Options(format!(
                "--name `{n}`: give a plain file name (letters, digits, '-', '_', '.'; not starting with '.'; not `imatrix`, which names the collected importance matrix)"
            )));
        }
    }
    if let Some(e) = b.max_error {
        if !(e.is_finite() && e >= 0.0) {
            return Err(Error::Options("--max-error must be at least 0".into()));
        }
    }
    Ok(())
}

/// The input's name, for the model file.
pub fn model_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let name = name.strip_suffix(".gguf").unwrap_or(&name).to_string();
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() || clean == "." || clean == ".." {
        "model".into()
    } else {
        clean
    }
}

/// The files that make up the source: every regular, non-hidden file at the
/// top of a checkpoint directory (config and tokenizer too), sorted; or the file.
fn source_paths(model: &Path, weights: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if !model.is_dir() {
        return Ok(weights.to_vec());
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(model).map_err(|e| formats::Error::io(model, e))? {
        let e = e.map_err(|e| formats::Error::io(model, e))?;
        let p = e.path();
        let hidden = e.file_name().to_string_lossy().starts_with('.');
        if p.is_file() && !hidden {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// A file's name, size and sha256.
fn hashed(path: &Path, name: Option<String>) -> Result<manifest::File> {
    let bytes = std::fs::metadata(path)
        .map_err(|e| formats::Error::io(path, e))?
        .len();
    Ok(manifest::File {
        path: name,
        sha256: artifact::sha256_file(path)?,
        bytes,
    })
}

/// Every input file other than the model, with its path as given and its hash.
pub fn inputs(o: &crate::PlanOptions) -> Result<Vec<manifest::Input>> {
    [
        ("calibration_text", &o.text),
        ("evaluation_text", &o.eval_text),
        ("imatrix", &o.imatrix),
    ]
    .into_iter()
    .filter_map(|(role, p)| p.as_ref().map(|p| input(role, p)))
    .collect()
}

/// One input file in `role`, with its path as given and its hash (what
/// `build`, `plan --json` and `eval --json` list).
pub fn input(role: &str, path: &Path) -> Result<manifest::Input> {
    let f = hashed(path, None)?;
    Ok(manifest::Input {
        role: role.into(),
        path: path.display().to_string(),
        sha256: f.sha256,
        bytes: f.bytes,
    })
}

/// Build: solve, write, measure, compare, and commit OUTDIR.
pub fn build(
    setup: &Setup,
    s: &Sizing,
    b: &BuildOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Built> {
    let model = &setup.opened.loaded.model;
    let mut chosen = solve::solve(setup, s, b.objective, b.max_error)?;
    // With held-out text, the search's best plans are measured and the
    // best measured one is built (`choose`).
    let mut measurer = Measurer::new(setup)?;
    let candidates =
        crate::choose::by_measurement(setup, s, &mut chosen, &mut measurer, progress, cancel)?;
    // With --prune-candidates, pruning options are weighed against this
    // plan at the same memory; one that measures better is what is built.
    let weighed = match s.options.prune_candidates.is_empty() {
        true => None,
        false => {
            crate::prune::check(s.options)?;
            let types = solve::types_of_allocation(setup, &chosen.allocation);
            progress.start("accuracy", measurer.steps() as u64, Unit::Items("blocks"));
            let m = measurer.measure(&types, &positions(progress), cancel);
            progress.finish();
            match m? {
                Some(m) => crate::prune::weigh(setup, s, &chosen, &m, progress, cancel)?,
                None => None,
            }
        }
    };
    let pruned = weighed.as_ref().and_then(|w| w.pruned.as_ref());
    let (wsetup, wchosen): (&Setup, &Chosen) = match pruned {
        Some(p) => (&p.setup, &p.chosen),
        None => (setup, &chosen),
    };
    let mut types = solve::types_of_allocation(wsetup, &wchosen.allocation);

    // Write the model file(s) into the staging directory.
    let staging = Staging::new(&b.output, b.force)?;
    let stem = match &b.name {
        Some(n) => n.clone(),
        None => match model_stem(&b.model) {
            s if s == "imatrix" => "model".to_string(),
            s => s,
        },
    };

    // Accuracy on held-out text (the plan as encoded).
    let mut text = if let Some(p) = pruned {
        Some(p.measured.clone())
    } else if setup.eval_windows.is_empty() {
        None
    } else {
        progress.start("accuracy", measurer.steps() as u64, Unit::Items("blocks"));
        let r = measurer.measure(&types, &positions(progress), cancel);
        progress.finish();
        r?
    };
    // With --gptq, the plan allocated over both ways of rounding within the
    // same bytes, GPTQ-rounded where chosen, measured the same way; built
    // only if it measures better.
    let gptq = match &b.gptq {
        Some(g) => {
            // A pruned plan is rounded on the pruned model and measured
            // against the unpruned original, as its pruning was.
            Some(crate::gptq::weigh(
                setup,
                wsetup,
                wchosen,
                text.as_ref(),
                g,
                staging.dir(),
                progress,
                cancel,
            )?)
        }
        None => None,
    };
    let rounded = gptq.as_ref().and_then(|w| w.rounded.as_ref());
    let gptq_chosen;
    let wchosen: &Chosen = match gptq.as_ref().and_then(|w| w.allocation.as_ref()) {
        Some(a) => {
            gptq_chosen = Chosen {
                allocation: a.clone(),
                ..wchosen.clone()
            };
            types = solve::types_of_allocation(wsetup, a);
            &gptq_chosen
        }
        None => wchosen,
    };
    let (mut planned, assign_times) = solve::assigned(wsetup, &types, s.options.allow_requantize)?;
    let devices = wchosen.budget.devices;
    let est = serving::cost(
        &planned,
        &wsetup.arch,
        s.target,
        s.engine,
        s.workload,
        devices,
    )?;
    let importance: BTreeMap<String, Vec<f32>> = wsetup
        .importance
        .iter()
        .filter(|(name, _)| types.contains_key(*name))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    if let Some(w) = gptq.as_ref().filter(|w| w.rounded.is_some()) {
        text = w.with.clone();
        crate::gptq::stamp(&mut planned, &w.record);
    }
    let (written, layout_times) = layout::write_model(
        &mut planned,
        &wsetup.opened.loaded.maps,
        devices,
        wchosen.budget.tensor_bytes / devices as u64,
        &stem,
        staging.dir(),
        &importance,
        rounded,
        progress,
        cancel,
    )?;
    drop(planned);
    let predicted_file_bytes: u64 = written.iter().map(|w| w.predicted_bytes).sum();
    let mut files: Vec<String> = written.iter().map(|w| w.name.clone()).collect();
    let model_files = files.len();
    // A collected imatrix is written beside the model (llama-quantize can reuse it).
    if let (ImportanceSource::Text(_), Some((_, im))) = (&wsetup.importance_source, &wsetup.imatrix)
    {
        formats::imatrix::write_gguf(&staging.path("imatrix.gguf"), im)?;
        files.push("imatrix.gguf".into());
    }

    let mut rows = comparison(setup, s)?;

    // Hashes.
    let file_entries = files
        .iter()
        .map(|f| hashed(&staging.path(f), Some(f.clone())))
        .collect::<Result<Vec<_>>>()?;
    let actual_bytes: u64 = file_entries[..model_files].iter().map(|e| e.bytes).sum();
    let source_files = source_paths(&b.model, &model.files)?
        .iter()
        .map(|f| hashed(f, f.file_name().map(|n| n.to_string_lossy().into_owned())))
        .collect::<Result<Vec<_>>>()?;
    let source_sha = artifact::sha256(
        source_files
            .iter()
            .map(|f| f.sha256.as_str())
            .collect::<Vec<_>>()
            .join("\n")
            .as_bytes(),
    );
    let mut row = plan_row(wsetup, wchosen, &est, text);
    if let Some(p) = pruned {
        // Its predicted error is the quantization's against the pruned model:
        // not comparable with the recipes' (left out, as `kiln plan` does).
        row.name = format!("kiln plan, pruned {}", p.resolved);
        row.error = None;
    }
    rows.insert(0, row);
    // What the other objective would give on the same budget, one flag away.
    if let Some(alt) = objective_row(setup, s, b.objective.other(), b.max_error)? {
        rows.insert(1, alt);
    }

    let mut manifest = manifest_of(
        wsetup,
        s,
        b,
        wchosen,
        &est,
        &rows,
        manifest::Source {
            model: b
                .model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
            sha256: source_sha,
            files: source_files,
            parameters: model.n_params(),
            architecture: model.arch.as_ref().map(|a| a.family.clone()),
        },
        file_entries,
        manifest::Size {
            predicted_bytes: predicted_file_bytes,
            actual_bytes,
        },
        inputs(s.options)?,
    );
    manifest.pruning = weighed.as_ref().map(|w| w.record.clone());
    manifest.gptq = gptq.as_ref().map(|w| w.record.clone());
    let mut report = report::report(&manifest, &rows);
    report.push_str(&crate::choose::report_section(&candidates));
    if let Some(p) = &manifest.pruning {
        report.push_str(&crate::prune::report_section(p));
    }
    if let Some(g) = &manifest.gptq {
        report.push_str(&crate::gptq::report_section(g));
    }
    // A pruned plan's curve is the pruned model's: the recipes and the other
    // objective's plan (of the unpruned model) are left off it.
    let chart = match pruned {
        Some(p) => report::chart(
            wsetup,
            wchosen,
            &rows[..1],
            &format!("{stem}, pruned {}", p.resolved),
        ),
        None => report::chart(wsetup, wchosen, &rows, &stem),
    };
    let svg = formats::chart::size_error_svg(&chart);
    staging.write("chart.svg", svg.as_bytes())?;
    staging.write("report.md", report.as_bytes())?;
    let manifest_json = manifest.to_json()?;
    staging.write(artifact::MANIFEST, manifest_json.as_bytes())?;
    staging.commit()?;
    Ok(Built {
        manifest,
        manifest_json,
        report,
        model_files,
        actual_bytes,
        passes: setup
            .opened
            .passes
            .iter()
            // The pruned copy's own `normalize` repeats the original's.
            .chain(
                pruned
                    .map_or(&[][..], |p| &p.setup.opened.passes[..])
                    .iter()
                    .filter(|t| t.pass != "normalize"),
            )
            .chain(&assign_times)
            .chain(&layout_times)
            .cloned()
            .collect(),
    })
}

/// The manifest of a build from what was planned, written and measured.
#[allow(clippy::too_many_arguments)]
pub fn manifest_of(
    setup: &Setup,
    s: &Sizing,
    b: &BuildOptions,
    chosen: &Chosen,
    est: &Estimate,
    rows: &[Row],
    source: manifest::Source,
    files: Vec<manifest::File>,
    size: manifest::Size,
    inputs: Vec<manifest::Input>,
) -> Manifest {
    let model = &setup.opened.loaded.model;
    let target: &Target = s.target;
    let plan = &rows[0];
    let picked = || {
        setup
            .options
            .iter()
            .zip(&chosen.allocation.pick)
            .map(|(o, &p)| (o, o.choices[p]))
    };
    let tensors = picked()
        .zip(&model.tensors)
        .map(|((o, c), t)| {
            let m = setup.measured(&o.name);
            manifest::Tensor {
                name: o.name.clone(),
                shape: t.shape.clone(),
                role: t.role.name().to_string(),
                ty: c.ty.name().to_string(),
                bytes: c.bytes,
                nsr: m
                    .and_then(|m| m.candidates.iter().find(|x| x.ty == c.ty))
                    .map(|x| x.nsr),
                predicted_kld: c.error,
                sensitivity: setup.sensitivity.get(&o.name).copied(),
                rows_measured: m.map(|m| m.rows_measured),
            }
        })
        .collect();
    let by_type = manifest::by_type(picked().map(|(_, c)| (c.ty.name(), c.bytes)));
    let mut warnings: Vec<String> = setup.warnings.clone();
    if !target.runtimes.contains_key("llama.cpp") {
        warnings.push(format!(
            "`{}` does not list llama.cpp among its runtimes: the GGUF may not be servable there",
            passes::printable(&target.id)
        ));
    }
    if chosen.budget.devices > 1 {
        warnings.push(format!(
            "sharded across {} devices: the model does not fit one {} with at least {} bits per weight; files use llama.cpp's split layout (one per rank)",
            chosen.budget.devices, passes::printable(&target.id), s.options.min_bpw
        ));
    }
    Manifest {
        schema: manifest::SCHEMA_VERSION.into(),
        kiln_version: b.kiln_version.clone(),
        source,
        inputs: inputs.clone(),
        target: manifest::TargetInfo {
            id: target.id.clone(),
            name: target.name.clone(),
            memory_bytes: target.memory_bytes().map(|b| b.round() as u64),
        },
        serving: manifest::Serving {
            engine: est.engine.name().to_string(),
            context: s.workload.context.unwrap_or(0),
            concurrency: s.options.concurrency,
            kv_type: s.options.kv_type.clone(),
            devices: chosen.budget.devices,
            tensor_parallel: est.tensor_parallel,
        },
        plan: manifest::Plan {
            objective: b.objective.name().to_string(),
            error_ceiling: chosen
                .ceiling
                .as_ref()
                .map(|(e, what)| manifest::ErrorCeiling {
                    predicted_kld: *e,
                    from: what.clone(),
                }),
            budget_bytes: chosen.budget.file_bytes,
            budget_tensor_bytes: chosen.budget.tensor_bytes,
            budget_from: chosen.budget.from.clone(),
            memory_per_device: chosen
                .budget
                .memory
                .as_ref()
                .map(|m| manifest::MemoryPerDevice {
                    usable_bytes: m.usable_per_device,
                    kv_cache_bytes: m.kv_per_device,
                    overhead_bytes: m.overhead_per_device,
                    policy: m.policy.to_string(),
                }),
            importance: setup.importance_source.describe(),
            sensitivity: setup.sensitivity_source.clone(),
            sensitivity_groups: setup.groups.clone(),
            candidates: CANDIDATES.iter().map(|t| t.name().to_string()).collect(),
            sample_values_per_tensor: s.options.sample,
            tensor_bytes: chosen.allocation.bytes,
            bits_per_weight: setup.bpw(chosen.allocation.bytes),
            predicted_kld: chosen.allocation.error,
            by_type,
        },
        tensors,
        files,
        size,
        cost: manifest::Cost::of(est),
        accuracy: manifest::Accuracy {
            predicted_kld: chosen.allocation.error,
            weight_nsr: plan.weight_nsr,
            text: plan.text.as_ref().map(manifest::Text::of),
            text_file: setup
                .eval_text
                .as_ref()
                .filter(|_| plan.text.is_some())
                .and_then(|p| {
                    let p = p.display().to_string();
                    inputs.iter().find(|i| i.path == p && i.role != "imatrix")
                })
                .cloned(),
        },
        comparison: rows.iter().map(manifest::Compared::of).collect(),
        warnings,
        notes: model.notes.iter().map(|n| n.text.clone()).collect(),
        pruning: None,
        gptq: None,
    }
}
