//! `kiln ci kiln.toml -o OUT`: build every artifact a manifest lists into
//! `OUT/<name>/` (each the directory `kiln build` writes), check its gates,
//! and write `OUT/summary.json` and `OUT/summary.md`. Exit 0 when every
//! gate passes, 1 when one fails, 2 on bad input.
//!
//! Each artifact has a key: the sha256 of kiln's version, the artifact's
//! entry (model path as written, target, settings) and the content hashes
//! of its inputs (model files, texts, imatrix). An artifact whose key and
//! files match the previous summary in OUT (or a `--cache DIR` entry) is
//! not rebuilt. Artifacts of one model with the same measurement settings
//! share one measurement (imatrix, probes), whatever their targets.
//!
//! Fan-out: `--list --format json|github|gitlab|k8s|slurm` prints the work
//! units for an engine that runs them elsewhere, `--only NAME` and
//! `--shard I/N` build a subset, `--merge DIR...` joins the OUT
//! directories of several runs into one summary (hashes verified,
//! conflicting keys refused). A merged summary is byte-identical to the
//! summary of one run building everything.
//!
//! What must stay true: `summary.json` holds nothing that depends on the
//! machine, the time or how the work was split (no timings, no absolute
//! paths, no "rebuilt" flags); nothing in OUT that kiln did not write is
//! replaced.
//!
//! Long file: one command's checking, keys, listings, builds, summaries, cache and
//! merge, which share the entry format and are easiest to keep consistent together.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::ci_manifest::{self, located, Manifest, Unit};
use crate::common::{cancel_flag, lift_plan, without_force_hint};
use crate::printer::Bars;
use crate::{CheckFailed, Printer};

/// Schema of `summary.json`.
pub const SUMMARY_SCHEMA: &str = "kiln.ci.summary/1";
const SUMMARY_JSON: &str = "summary.json";
const SUMMARY_MD: &str = "summary.md";
/// The record a `--cache` entry keeps beside the artifact's files.
const CACHE_ENTRY: &str = "ci-entry.json";

#[derive(Args, Debug)]
pub struct CiArgs {
    /// The manifest (kiln.toml; schema in the README, "CI mode").
    pub manifest: PathBuf,
    /// Output directory: OUT/<artifact>/ per artifact, OUT/summary.json and OUT/summary.md.
    #[arg(long, short, value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Print the work units (one per artifact: name, key, command) instead of building.
    #[arg(long)]
    pub list: bool,
    /// Form of --list: json; github (a strategy.matrix); gitlab (a parallel:matrix job); k8s (an
    /// Indexed Job); slurm (an sbatch array script).
    #[arg(long, value_enum, default_value = "json", value_name = "FORM")]
    pub format: ListFormat,
    /// Build only this artifact (repeatable).
    #[arg(long, value_name = "NAME", conflicts_with = "shard")]
    pub only: Vec<String>,
    /// Build the I-th of N shares of the artifacts (1-based; 1/2 and 2/2 together build all).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Join the OUT directories of runs on other machines into OUT (one summary).
    #[arg(long, value_name = "DIR", num_args = 1.., conflicts_with_all = ["list", "only", "shard"])]
    pub merge: Vec<PathBuf>,
    /// Reuse artifacts by key from this directory, and store the ones built there.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Print summary.json to stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Json,
    Github,
    Gitlab,
    K8s,
    Slurm,
}

pub fn run(args: &CiArgs, printer: &Printer) -> Result<()> {
    let manifest = ci_manifest::read(&args.manifest)?;
    let checked = check_units(&manifest, printer)?;
    if args.list {
        return list(args, &manifest, printer);
    }
    let Some(out) = &args.output else {
        bail!("give the output directory with -o OUT (or --list to print the work units)");
    };
    check_out(out)?;
    if !args.merge.is_empty() {
        return merge(args, &manifest, out, printer);
    }
    let selected = select(args, &manifest)?;
    build_all(args, &manifest, &checked, &selected, out, printer)
}

// -- checking --------------------------------------------------------------------

/// What a unit builds with, checked before anything is built.
struct Checked {
    options: planner::PlanOptions,
    objective: planner::Objective,
    target: passes::cost::Target,
    engine: passes::cost::Engine,
}

/// The plan options of a unit (kiln build's defaults where unset).
fn options(u: &Unit) -> Result<(planner::PlanOptions, planner::Objective)> {
    let s = &u.settings;
    let d = planner::PlanOptions::default();
    let mut exclude = Vec::new();
    for t in s.exclude_types.iter().flatten() {
        exclude.push(
            t.parse::<quant::GgmlType>()
                .map_err(|e| anyhow!("exclude_types: `{}`: {e}", passes::printable(t)))?,
        );
    }
    let objective = match s.objective.as_deref() {
        None | Some("cost") => planner::Objective::Cost,
        Some("accuracy") => planner::Objective::Accuracy,
        Some(o) => bail!(
            "objective: `{}` is not one of cost, accuracy",
            passes::printable(o)
        ),
    };
    let o = planner::PlanOptions {
        engine: s.engine.clone().unwrap_or(d.engine),
        context: s.context.or(d.context),
        concurrency: s.concurrency.unwrap_or(d.concurrency),
        kv_type: s.kv_type.clone().unwrap_or(d.kv_type),
        budget_gb: s.budget_gb.or(d.budget_gb),
        bpw: s.bpw.or(d.bpw),
        min_bpw: s.min_bpw.unwrap_or(d.min_bpw),
        imatrix: u.path(&s.imatrix),
        text: u.path(&s.text),
        no_imatrix: s.no_imatrix.unwrap_or(d.no_imatrix),
        eval_text: u.path(&s.eval_text),
        ctx: s.ctx.unwrap_or(d.ctx),
        chunks: s.chunks.unwrap_or(d.chunks),
        probe_chunks: s.probe_chunks.unwrap_or(d.probe_chunks),
        eval_chunks: s.eval_chunks.unwrap_or(d.eval_chunks),
        sample: s.sample.unwrap_or(d.sample),
        exclude_type: exclude,
        allow_requantize: u.model.allow_requantize,
        pre_tokenizer: u.model.pre_tokenizer.clone(),
        prune_candidates: s.prune_candidates().map_err(anyhow::Error::msg)?,
    };
    Ok((o, objective))
}

/// Every unit's options, target and engine, or the first problem with the
/// manifest's file, line and key.
fn check_units(m: &Manifest, printer: &Printer) -> Result<Vec<Checked>> {
    let mut out = Vec::with_capacity(m.units.len());
    for u in &m.units {
        let at = |key: &str, e: &dyn std::fmt::Display| {
            anyhow!(located(
                &m.path,
                ci_manifest::key_line(&m.text, u.line, key),
                key,
                format!("artifact `{}`: {e}", u.name)
            ))
        };
        let (options, objective) = options(u).map_err(|e| at(&setting_key(&e), &e))?;
        planner::options::check(&options)
            .map_err(lift_plan)
            .map_err(|e| at(&setting_key(&e), &e))?;
        let target = crate::targets::resolve(&u.target, &[], false, printer)
            .map_err(|e| at("target", &e))?;
        let engine = planner::options::any_engine(&options)
            .map_err(lift_plan)
            .map_err(|e| at("engine", &e))?;
        crate::build::check_engine(&target, engine).map_err(|e| at("engine", &e))?;
        planner::options::workload(&options, 0)
            .map_err(lift_plan)
            .map_err(|e| at(&setting_key(&e), &e))?;
        if engine != passes::cost::Engine::LlamaCpp {
            planner::ct_build::legal(&target, engine.name())
                .map_err(lift_plan)
                .map_err(|e| at("engine", &e))?;
        }
        if engine != passes::cost::Engine::LlamaCpp && !u.model.resolved.is_dir() {
            return Err(at(
                "engine",
                &format!(
                    "--engine {} writes compressed-tensors from a Hugging Face checkpoint directory; model `{}` is {}",
                    engine.name(),
                    u.model.name,
                    u.model.path
                ),
            ));
        }
        // A $ gate on a target with no published price could only fail
        // after the build: refused now.
        if u.gates.max_usd_per_mtok.is_some() && !target.price_per_hour_usd.is_known() {
            return Err(at(
                "gates.max_usd_per_mtok",
                &format!(
                    "`{}` has no published price, so no $ per million tokens is estimated to gate on (drop the gate, or pick a target with a price: `kiln targets` lists them)",
                    target.id
                ),
            ));
        }
        out.push(Checked {
            options,
            objective,
            target,
            engine,
        });
    }
    Ok(out)
}

/// The manifest key a settings error is about: its leading `--flag` (as
/// the planner names options) or `key:`, in the manifest's spelling
/// (`--kv-type` -> `kv_type`); `settings` when it names none.
fn setting_key(e: &dyn std::fmt::Display) -> String {
    let msg = e.to_string();
    let word: String = msg
        .trim_start_matches("--")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let named = msg.starts_with("--") || msg[word.len()..].starts_with(':');
    match named && !word.is_empty() {
        true => word.replace('-', "_"),
        false => "settings".into(),
    }
}

/// Refuse an OUT that is not a directory kiln ci may write in.
fn check_out(out: &Path) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => {
            let summary = out.join(SUMMARY_JSON);
            if summary.exists() && read_summary(&summary).is_none() {
                bail!(
                    "{}: exists and is not a kiln ci summary; refusing to replace it (choose another OUT)",
                    summary.display()
                );
            }
            let md = out.join(SUMMARY_MD);
            if md.exists() && !summary.exists() {
                bail!(
                    "{}: exists without a kiln ci summary.json beside it; refusing to replace it (choose another OUT)",
                    md.display()
                );
            }
            Ok(())
        }
        Ok(_) => bail!("{}: exists and is not a directory", out.display()),
    }
}

/// The units `--only` / `--shard` select, in manifest order (all without them).
fn select<'m>(args: &CiArgs, m: &'m Manifest) -> Result<Vec<&'m Unit>> {
    if !args.only.is_empty() {
        for name in &args.only {
            if !m.units.iter().any(|u| &u.name == name) {
                bail!(
                    "--only {}: {} names no such artifact{}",
                    passes::printable(name),
                    m.path.display(),
                    passes::suggest::did_you_mean(name, m.units.iter().map(|u| u.name.as_str()))
                );
            }
        }
        return Ok(m
            .units
            .iter()
            .filter(|u| args.only.contains(&u.name))
            .collect());
    }
    if let Some(s) = &args.shard {
        let (i, n) = parse_shard(s)?;
        return Ok(m
            .units
            .iter()
            .enumerate()
            .filter(|(k, _)| k % n == i - 1)
            .map(|(_, u)| u)
            .collect());
    }
    Ok(m.units.iter().collect())
}

/// `I/N` with 1 <= I <= N.
fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || {
        anyhow!(
            "--shard {}: expected I/N with 1 <= I <= N (e.g. 1/4)",
            passes::printable(s)
        )
    };
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if i == 0 || n == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

// -- keys ------------------------------------------------------------------------

/// Content hashes of a model's files (a file, or a directory's regular,
/// non-hidden files), memoized per path.
#[derive(Default)]
struct Hashes(HashMap<PathBuf, Vec<Value>>);

impl Hashes {
    fn model(&mut self, path: &Path) -> Result<Vec<Value>> {
        if let Some(v) = self.0.get(path) {
            return Ok(v.clone());
        }
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        if path.is_dir() {
            for e in std::fs::read_dir(path).with_context(|| path.display().to_string())? {
                let e = e.with_context(|| path.display().to_string())?;
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') && e.file_type().is_ok_and(|t| t.is_file()) {
                    files.push((name, e.path()));
                }
            }
            files.sort();
        } else {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((name, path.to_path_buf()));
        }
        let mut v = Vec::new();
        for (name, p) in files {
            v.push(json!({"file": name, "sha256": formats::artifact::sha256_file(&p)?}));
        }
        self.0.insert(path.to_path_buf(), v.clone());
        Ok(v)
    }

    fn file(&mut self, path: &Path) -> Result<String> {
        if let Some(v) = self.0.get(path) {
            return Ok(v[0]["sha256"].as_str().unwrap_or_default().to_string());
        }
        let h = formats::artifact::sha256_file(path)?;
        self.0
            .insert(path.to_path_buf(), vec![json!({"sha256": h.clone()})]);
        Ok(h)
    }
}

/// The unit's key (see the module's comment).
fn unit_key(u: &Unit, hashes: &mut Hashes) -> Result<String> {
    let mut inputs = vec![json!({"role": "model", "files": hashes.model(&u.model.resolved)?})];
    for (role, p) in [
        ("text", &u.settings.text),
        ("eval_text", &u.settings.eval_text),
        ("imatrix", &u.settings.imatrix),
    ] {
        if let Some(path) = u.path(p) {
            inputs.push(json!({"role": role, "sha256": hashes.file(&path)?}));
        }
    }
    let doc = json!({
        "kiln_version": env!("CARGO_PKG_VERSION"),
        "name": u.name,
        "model": u.model,
        "target": u.target,
        "settings": u.settings,
        "inputs": inputs,
    });
    Ok(formats::artifact::sha256(doc.to_string().as_bytes()))
}

// -- listing ---------------------------------------------------------------------

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn list(args: &CiArgs, m: &Manifest, printer: &Printer) -> Result<()> {
    let mut hashes = Hashes::default();
    let manifest = shell_quote(&args.manifest.to_string_lossy());
    let out = args
        .output
        .as_ref()
        .map_or("kiln-out".to_string(), |o| o.to_string_lossy().into_owned());
    let units = select(args, m)?;
    let n = units.len();
    let mut rows = Vec::new();
    for u in &units {
        let key = unit_key(u, &mut hashes)?;
        let unit_out = format!("{out}/units/{}", u.name);
        rows.push(json!({
            "name": u.name,
            "key": key,
            "model": u.model.name,
            "target": u.target,
            "out": unit_out,
            "command": format!("kiln ci {manifest} --only {} -o {}", u.name, shell_quote(&unit_out)),
        }));
    }
    let merge = format!(
        "kiln ci {manifest} --merge {}/units/* -o {}",
        shell_quote(&out),
        shell_quote(&out)
    );
    let text = match args.format {
        ListFormat::Json => serde_json::to_string_pretty(&json!({
            "manifest_sha256": m.sha256,
            "units": rows,
            "merge": merge,
        }))?,
        ListFormat::Github => serde_json::to_string(&json!({"include": rows}))?,
        ListFormat::Gitlab => gitlab(&rows, &manifest, &out, &merge),
        ListFormat::K8s => k8s(m, n, &manifest, &out)?,
        ListFormat::Slurm => slurm(n, &manifest, &out, &merge),
    };
    printer.data(&text);
    Ok(())
}

/// A GitLab job with one parallel:matrix entry per unit, and a merge job.
fn gitlab(rows: &[Value], manifest: &str, out: &str, merge: &str) -> String {
    let names: Vec<String> = rows
        .iter()
        .map(|r| format!("\"{}\"", r["name"].as_str().unwrap_or_default()))
        .collect();
    format!(
        "# kiln ci work units for GitLab CI: include this file, or paste it into .gitlab-ci.yml.\n\
kiln-build:\n  stage: build\n  parallel:\n    matrix:\n      - KILN_UNIT: [{}]\n  script:\n    - kiln ci {manifest} --only \"$KILN_UNIT\" -o \"{out}/units/$KILN_UNIT\"\n  artifacts:\n    paths:\n      - \"{out}/units/$KILN_UNIT\"\n\
kiln-merge:\n  stage: test\n  needs: [kiln-build]\n  script:\n    - {merge}\n  artifacts:\n    when: always\n    paths:\n      - \"{out}/summary.json\"\n      - \"{out}/summary.md\"\n",
        names.join(", ")
    )
}

/// A Kubernetes Indexed Job: one completion per unit, `JOB_COMPLETION_INDEX`
/// selecting the unit through `--shard (index + 1)/N`.
fn k8s(m: &Manifest, n: usize, manifest: &str, out: &str) -> Result<String> {
    let image = m
        .fanout
        .image
        .clone()
        .unwrap_or_else(|| "kiln:latest".to_string());
    let workdir = m.fanout.workdir.clone().unwrap_or_else(|| "/work".into());
    let script = format!(
        "kiln ci {manifest} --shard $((JOB_COMPLETION_INDEX + 1))/{n} -o {out}/units/shard-$JOB_COMPLETION_INDEX"
    );
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "kiln-ci",
            "labels": {"app.kubernetes.io/name": "kiln-ci"},
            "annotations": {"kiln.dev/manifest-sha256": m.sha256},
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": n,
            "parallelism": n,
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "kiln-ci"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "kiln",
                        "image": image,
                        "workingDir": workdir,
                        "command": ["sh", "-c", script],
                    }],
                },
            },
        },
    });
    Ok(format!(
        "# kiln ci work units as a Kubernetes Indexed Job ({n} completions); when all\n# have run: kiln ci {manifest} --merge {out}/units/* -o {out}\n{}",
        serde_json::to_string_pretty(&job)?
    ))
}

/// An sbatch script running one unit per array task.
fn slurm(n: usize, manifest: &str, out: &str, merge: &str) -> String {
    format!(
        "#!/bin/bash\n#SBATCH --job-name=kiln-ci\n#SBATCH --array=0-{}\n#SBATCH --output=kiln-ci-%a.log\n# kiln ci work units as a Slurm job array ({n} tasks); when all have run:\n#   {merge}\nset -euo pipefail\nkiln ci {manifest} --shard $((SLURM_ARRAY_TASK_ID + 1))/{n} -o {out}/units/shard-$SLURM_ARRAY_TASK_ID\n",
        n.saturating_sub(1)
    )
}

// -- building --------------------------------------------------------------------

/// What the options of two units must share for one measurement to serve
/// both (everything but the serving and budget settings).
fn measurement_key(u: &Unit, o: &planner::PlanOptions) -> String {
    format!(
        "{:?}|{}|{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{}|{}|{}|{:?}|{}|{:?}",
        u.model.resolved,
        o.engine,
        o.context,
        o.imatrix,
        o.text,
        o.eval_text,
        o.no_imatrix,
        o.ctx,
        o.chunks,
        o.probe_chunks,
        o.eval_chunks,
        o.sample,
        o.exclude_type,
        o.allow_requantize,
        o.pre_tokenizer,
    )
}

/// A unit to build or reuse: its checked options, key, and the entry
/// already there (if any).
type Planned<'a> = (&'a Unit, &'a Checked, String, Option<(Value, Origin)>);

/// How an artifact came to be in OUT this run (said on stderr, never written).
enum Origin {
    Built(f64),
    UpToDate,
    FromCache,
}

fn build_all(
    args: &CiArgs,
    m: &Manifest,
    checked: &[Checked],
    selected: &[&Unit],
    out: &Path,
    printer: &Printer,
) -> Result<()> {
    let t0 = Instant::now();
    let previous: BTreeMap<String, Value> = read_summary(&out.join(SUMMARY_JSON))
        .map(|s| entries_by_name(&s))
        .unwrap_or_default();
    let mut hashes = Hashes::default();
    // Pass 1: keys, and what is already there.
    let mut plan: Vec<Planned> = Vec::new();
    for u in selected {
        let c = &checked[m.units.iter().position(|x| x.name == u.name).unwrap_or(0)];
        let key = unit_key(u, &mut hashes)?;
        let dir = out.join(&u.name);
        let reuse = previous
            .get(&u.name)
            .filter(|e| e["key"] == key.as_str() && files_match(&dir, &e["files"]))
            .map(|e| (e.clone(), Origin::UpToDate));
        // Every directory that will be written (built, or copied from the
        // cache) is checked before anything is: a refusal must not leave
        // earlier artifacts half the run.
        if reuse.is_none() {
            check_unit_dir(&dir).with_context(|| format!("artifact `{}`", u.name))?;
        }
        let reuse = match reuse {
            Some(r) => Some(r),
            None => match &args.cache {
                Some(cache) => from_cache(cache, &key, &dir)?.map(|e| (e, Origin::FromCache)),
                None => None,
            },
        };
        plan.push((u, c, key, reuse));
    }
    // Measurements shared by units with the same model and settings, each
    // dropped after the last unit that needs it.
    let mut last_use: HashMap<String, usize> = HashMap::new();
    for (i, (u, c, _, reuse)) in plan.iter().enumerate() {
        if reuse.is_none() {
            last_use.insert(measurement_key(u, &c.options), i);
        }
    }
    let cancel = cancel_flag();
    let bars = Bars::new(printer);
    let mut setups: HashMap<String, planner::Setup> = HashMap::new();
    let total = plan.len();
    let mut entries: Vec<Value> = Vec::new();
    for (i, (u, c, key, reuse)) in plan.into_iter().enumerate() {
        let (entry, origin) = match reuse {
            Some(r) => r,
            None => {
                let t = Instant::now();
                let mk = measurement_key(u, &c.options);
                if !setups.contains_key(&mk) {
                    let s = planner::setup(&u.model.resolved, &c.options, &bars, &cancel)
                        .map_err(lift_plan)
                        .with_context(|| format!("artifact `{}`", u.name))?;
                    setups.insert(mk.clone(), s);
                }
                let setup = &setups[&mk];
                let manifest_json = build_one(u, c, setup, out, &bars, &cancel)
                    .with_context(|| format!("artifact `{}`", u.name))?;
                if last_use.get(&mk) == Some(&i) {
                    setups.remove(&mk);
                }
                let built: Value = serde_json::from_str(&manifest_json)?;
                let e = entry(u, &key, &out.join(&u.name), &built)?;
                if let Some(cache) = &args.cache {
                    store_cache(cache, &key, &out.join(&u.name), &e)?;
                }
                (e, Origin::Built(t.elapsed().as_secs_f64()))
            }
        };
        let entry = with_gates(entry, u);
        printer.info(&progress_line(i + 1, total, &entry, &origin));
        entries.push(entry);
    }
    let summary = summary(m, entries);
    write_summary(out, &summary)?;
    finish(args, &summary, printer, t0)
}

/// Refuse `OUT/<name>` where kiln ci may not build (kiln build's rule,
/// without its --force, which kiln ci does not have).
fn check_unit_dir(dir: &Path) -> Result<()> {
    formats::artifact::check_outdir(dir, false).map_err(without_force_hint)
}

/// Build one unit into `OUT/<name>` with a shared measurement; the
/// manifest JSON written.
fn build_one(
    u: &Unit,
    c: &Checked,
    setup: &planner::Setup,
    out: &Path,
    bars: &Bars,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<String> {
    let output = out.join(&u.name);
    crate::common::clean_stale(&output, &Printer::new(true));
    let b = planner::BuildOptions {
        model: u.model.resolved.clone(),
        output,
        force: false,
        name: None,
        objective: c.objective,
        max_error: u.settings.max_error,
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        gptq: None,
    };
    check_unit_dir(&b.output)?;
    planner::build::check(&b).map_err(lift_plan)?;
    let workload =
        planner::options::workload(&c.options, setup.arch.context_length).map_err(lift_plan)?;
    let sizing = planner::Sizing {
        options: &c.options,
        target: &c.target,
        engine: c.engine,
        workload: &workload,
    };
    if c.engine != passes::cost::Engine::LlamaCpp {
        let built = planner::ct_build::build(setup, &sizing, c.engine.name(), &b, bars, cancel)
            .map_err(lift_plan)?;
        return Ok(built.manifest_json);
    }
    let built = planner::build(setup, &sizing, &b, bars, cancel).map_err(lift_plan)?;
    Ok(built.manifest_json)
}

// -- entries, gates, summaries --------------------------------------------------

/// Every regular file of an artifact directory, sorted: path, sha256, bytes.
fn list_files(dir: &Path) -> Result<Vec<Value>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let e = e.with_context(|| dir.display().to_string())?;
        if e.file_type().is_ok_and(|t| t.is_file()) {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let p = dir.join(&n);
        let bytes = std::fs::metadata(&p)
            .with_context(|| p.display().to_string())?
            .len();
        out.push(json!({"path": n, "sha256": formats::artifact::sha256_file(&p)?, "bytes": bytes}));
    }
    Ok(out)
}

/// Whether `dir` holds exactly the files `files` lists, with those hashes.
fn files_match(dir: &Path, files: &Value) -> bool {
    match (list_files(dir), files.as_array()) {
        (Ok(have), Some(want)) => &have == want,
        _ => false,
    }
}

/// A figure of the artifact's manifest at a JSON pointer, as JSON.
fn at(v: &Value, ptr: &str) -> Value {
    v.pointer(ptr).cloned().unwrap_or(Value::Null)
}

/// The serving-cost figures of a build manifest (both artifact families
/// write them under `cost`).
fn cost_of(built: &Value) -> Value {
    json!({
        "fits": at(built, "/cost/fits"),
        "decode_tokens_per_second": at(built, "/cost/decode_tokens_per_second"),
        "throughput_tokens_per_second": at(built, "/cost/throughput_tokens_per_second"),
        "usd_per_million_tokens": at(built, "/cost/usd_per_million_tokens"),
        "joules_per_token": at(built, "/cost/joules_per_token"),
    })
}

/// A unit's summary entry (without gates) from its build manifest.
fn entry(u: &Unit, key: &str, dir: &Path, built: &Value) -> Result<Value> {
    if built["schema"]
        .as_str()
        .is_some_and(|s| s.starts_with("kiln.artifact/build-ct"))
    {
        return ct_entry(u, key, dir, built);
    }
    let text = built.pointer("/accuracy/text").filter(|t| t.is_object());
    Ok(json!({
        "name": u.name,
        "model": u.model.name,
        "target": u.target,
        "engine": at(built, "/serving/engine"),
        "key": key,
        "files": list_files(dir)?,
        "plan": {
            "objective": at(built, "/plan/objective"),
            "bits_per_weight": at(built, "/plan/bits_per_weight"),
            "predicted_kld": at(built, "/plan/predicted_kld"),
            "devices": at(built, "/serving/devices"),
        },
        "size_bytes": at(built, "/size/actual_bytes"),
        "cost": cost_of(built),
        "accuracy": text.map_or(Value::Null, |t| json!({
            "windows": at(t, "/windows"),
            "kld_mean": at(t, "/kld_mean"),
            "perplexity_ratio": at(t, "/perplexity_ratio"),
            "top1_agreement": at(t, "/top1_agreement"),
        })),
    }))
}

/// The entry of a compressed-tensors build: its manifest has the plan, its
/// serving-cost estimate and the measured KL divergence of the chosen plan
/// (`compared`).
fn ct_entry(u: &Unit, key: &str, dir: &Path, built: &Value) -> Result<Value> {
    let files = list_files(dir)?;
    let size: u64 = built["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| {
            f["path"]
                .as_str()
                .is_some_and(|p| p.ends_with(".safetensors"))
        })
        .filter_map(|f| f["bytes"].as_u64())
        .sum();
    let chosen = built["compared"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kiln plan"))
        });
    Ok(json!({
        "name": u.name,
        "model": u.model.name,
        "target": u.target,
        "engine": at(built, "/engine"),
        "key": key,
        "files": files,
        "plan": {
            "objective": at(built, "/objective"),
            "bits_per_weight": at(built, "/bits_per_weight"),
            "predicted_kld": at(built, "/predicted_kld"),
            "devices": at(built, "/devices"),
        },
        "size_bytes": size,
        "cost": cost_of(built),
        "accuracy": chosen.map_or(Value::Null, |c| json!({
            "windows": Value::Null,
            "kld_mean": at(c, "/measured_kld"),
            "perplexity_ratio": Value::Null,
            "top1_agreement": Value::Null,
        })),
    }))
}

/// `entry` with its gates checked against the unit's limits.
fn with_gates(mut entry: Value, u: &Unit) -> Value {
    let g = &u.gates;
    let num = |ptr: &str| entry.pointer(ptr).and_then(Value::as_f64);
    let mut gates = Vec::new();
    let mut check = |gate: &str, limit: Value, value: Option<Value>, pass: bool| {
        gates.push(json!({"gate": gate, "limit": limit, "value": value.unwrap_or(Value::Null), "pass": pass}));
    };
    // (gate, its limit, the summary value it reads, whether the value must
    // stay at or below the limit); an unmeasured value fails its gate.
    let numeric = [
        ("max_kld", g.max_kld, "/accuracy/kld_mean", true),
        (
            "max_ppl_ratio",
            g.max_ppl_ratio,
            "/accuracy/perplexity_ratio",
            true,
        ),
        ("min_top1", g.min_top1, "/accuracy/top1_agreement", false),
        (
            "min_decode_tok_s",
            g.min_decode_tok_s,
            "/cost/decode_tokens_per_second",
            false,
        ),
        (
            "max_usd_per_mtok",
            g.max_usd_per_mtok,
            "/cost/usd_per_million_tokens",
            true,
        ),
    ];
    for (gate, limit, ptr, at_most) in numeric {
        let Some(l) = limit else { continue };
        let v = num(ptr);
        let pass = v.is_some_and(|v| if at_most { v <= l } else { v >= l });
        check(gate, json!(l), v.map(|x| json!(x)), pass);
    }
    if let Some(l) = g.must_fit {
        let v = entry.pointer("/cost/fits").and_then(Value::as_bool);
        check(
            "must_fit",
            json!(l),
            v.map(|x| json!(x)),
            !l || v == Some(true),
        );
    }
    let passed = gates.iter().all(|g| g["pass"] == true);
    entry["gates"] = json!(gates);
    entry["passed"] = json!(passed);
    entry
}

fn summary(m: &Manifest, entries: Vec<Value>) -> Value {
    // Manifest order, whatever order the entries came in.
    let mut entries = entries;
    entries.sort_by_key(|e| {
        m.units
            .iter()
            .position(|u| e["name"] == u.name.as_str())
            .unwrap_or(usize::MAX)
    });
    let failed: Vec<Value> = entries
        .iter()
        .filter(|e| e["passed"] != true)
        .map(|e| e["name"].clone())
        .collect();
    json!({
        "schema": SUMMARY_SCHEMA,
        "kiln_version": env!("CARGO_PKG_VERSION"),
        "manifest_sha256": m.sha256,
        "passed": failed.is_empty(),
        "failed": failed,
        "artifacts": entries,
    })
}

fn read_summary(path: &Path) -> Option<Value> {
    let text = std::fs::read(path).ok()?;
    let v: Value = serde_json::from_slice(&text).ok()?;
    (v["schema"] == SUMMARY_SCHEMA).then_some(v)
}

fn entries_by_name(s: &Value) -> BTreeMap<String, Value> {
    s["artifacts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e.clone())))
        .collect()
}

/// A figure as kiln prints figures everywhere (`formats::human::num`: four
/// significant figures, scientific below 1e-3); `-` when absent.
fn fmt_num(v: &Value) -> String {
    v.as_f64().map_or("-".into(), formats::human::num)
}

/// summary.md: a table per model, then the failed gates.
fn summary_md(s: &Value) -> String {
    let entries = s["artifacts"].as_array().cloned().unwrap_or_default();
    let failed = s["failed"].as_array().map_or(0, Vec::len);
    let mut md = format!(
        "# kiln ci: {} artifact(s), {} passed, {failed} failed\n",
        entries.len(),
        entries.len() - failed
    );
    let mut models: Vec<String> = Vec::new();
    for e in &entries {
        let m = e["model"].as_str().unwrap_or_default().to_string();
        if !models.contains(&m) {
            models.push(m);
        }
    }
    for model in &models {
        md += &format!("\n## model `{model}`\n\n| artifact | target | engine | size | bits/weight | fits | decode tok/s | $/M tokens | KLD | top-1 | gates |\n|---|---|---|---:|---:|---|---:|---:|---:|---:|---|\n");
        for e in entries.iter().filter(|e| e["model"] == model.as_str()) {
            let size = e["size_bytes"]
                .as_u64()
                .map_or("-".into(), formats::human::bytes);
            let fits = match e["cost"]["fits"].as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            };
            let top1 = e["accuracy"]["top1_agreement"]
                .as_f64()
                .map_or("-".into(), |x| format!("{:.1}%", x * 100.0));
            let gates = if e["gates"].as_array().is_none_or(Vec::is_empty) {
                "none".to_string()
            } else if e["passed"] == true {
                "pass".to_string()
            } else {
                "**FAIL**".to_string()
            };
            md += &format!(
                "| {} | {} | {} | {size} | {} | {fits} | {} | {} | {} | {top1} | {gates} |\n",
                e["name"].as_str().unwrap_or_default(),
                e["target"].as_str().unwrap_or_default(),
                e["engine"].as_str().unwrap_or("-"),
                fmt_num(&e["plan"]["bits_per_weight"]),
                fmt_num(&e["cost"]["decode_tokens_per_second"]),
                fmt_num(&e["cost"]["usd_per_million_tokens"]),
                fmt_num(&e["accuracy"]["kld_mean"]),
            );
        }
    }
    let fails = failed_gates(s);
    if !fails.is_empty() {
        md += "\n## Failed gates\n\n";
        for f in fails {
            md += &format!("- {f}\n");
        }
    }
    md
}

/// Every failed gate of a summary, as [`gate_text`] says it, in artifact
/// order.
fn failed_gates(s: &Value) -> Vec<String> {
    s["artifacts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| {
            let name = e["name"].as_str().unwrap_or_default().to_string();
            e["gates"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|g| g["pass"] != true)
                .map(move |g| gate_text(&name, &g))
        })
        .collect()
}

/// `tiny-h100: max_kld 0.01, measured 0.0200`; the cost gates' values are
/// the cost model's estimates.
fn gate_text(name: &str, g: &Value) -> String {
    let gate = g["gate"].as_str().unwrap_or_default();
    let how = match gate {
        "min_decode_tok_s" | "max_usd_per_mtok" | "must_fit" => "estimated",
        _ => "measured",
    };
    let value = match &g["value"] {
        Value::Null => format!("not {how}"),
        v if v.is_number() => format!("{how} {}", fmt_num(v)),
        v => format!("{how} {v}"),
    };
    format!(
        "`{name}`: {} {}, {value}",
        g["gate"].as_str().unwrap_or_default(),
        match &g["limit"] {
            v if v.is_number() => fmt_num(v),
            v => v.to_string(),
        }
    )
}

fn write_summary(out: &Path, s: &Value) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let write = |name: &str, text: &str| -> Result<()> {
        let path = out.join(name);
        let mut tmp = formats::atomic::temp_beside(&path)?;
        std::io::Write::write_all(&mut tmp, text.as_bytes())
            .with_context(|| path.display().to_string())?;
        formats::atomic::commit(tmp, &path)?;
        Ok(())
    };
    write(SUMMARY_JSON, &(serde_json::to_string_pretty(s)? + "\n"))?;
    write(SUMMARY_MD, &summary_md(s))
}

fn progress_line(i: usize, n: usize, e: &Value, origin: &Origin) -> String {
    let how = match origin {
        Origin::Built(secs) => format!("built in {}", formats::human::seconds(*secs)),
        Origin::UpToDate => "up to date, not rebuilt".into(),
        Origin::FromCache => "from the cache, not rebuilt".into(),
    };
    let gates = if e["passed"] == true {
        "gates pass".to_string()
    } else {
        "GATES FAIL".to_string()
    };
    format!(
        "[{i}/{n}] {}: {how}; {}, {} tok/s, KLD {}; {gates}",
        e["name"].as_str().unwrap_or_default(),
        e["size_bytes"]
            .as_u64()
            .map_or("-".into(), formats::human::bytes),
        fmt_num(&e["cost"]["decode_tokens_per_second"]),
        fmt_num(&e["accuracy"]["kld_mean"]),
    )
}

fn finish(args: &CiArgs, s: &Value, printer: &Printer, t0: Instant) -> Result<()> {
    if args.json {
        printer.data(&serde_json::to_string_pretty(s)?);
    } else {
        printer.data(summary_md(s).trim_end());
    }
    printer.info(&format!(
        "wrote {} in {}",
        args.output.as_ref().map_or(String::new(), |o| o
            .join(SUMMARY_JSON)
            .display()
            .to_string()),
        formats::human::seconds(t0.elapsed().as_secs_f64())
    ));
    let failed = failed_gates(s);
    if !failed.is_empty() {
        return Err(CheckFailed(format!("gates failed: {}", failed.join("; "))).into());
    }
    Ok(())
}

// -- cache and merge -------------------------------------------------------------

/// Copy the regular files `files` lists from `from` into the artifact
/// directory `to` (atomically, as a build writes it).
fn copy_artifact(from: &Path, files: &Value, to: &Path) -> Result<()> {
    let staging = formats::artifact::Staging::new(to, false).map_err(without_force_hint)?;
    for f in files.as_array().into_iter().flatten() {
        let name = f["path"].as_str().unwrap_or_default();
        std::fs::copy(from.join(name), staging.path(name))
            .with_context(|| from.join(name).display().to_string())?;
    }
    staging.commit()?;
    Ok(())
}

/// The cached entry of `key`, its files copied into `dir`; `None` if the
/// cache has no valid entry for it.
fn from_cache(cache: &Path, key: &str, dir: &Path) -> Result<Option<Value>> {
    let at = cache.join(key);
    let Some(e) = std::fs::read(at.join(CACHE_ENTRY))
        .ok()
        .and_then(|t| serde_json::from_slice::<Value>(&t).ok())
    else {
        return Ok(None);
    };
    if e["key"] != key || !files_match_listed(&at, &e["files"]) {
        return Ok(None);
    }
    copy_artifact(&at, &e["files"], dir)?;
    Ok(Some(e))
}

/// Whether `dir` holds the files `files` lists with those hashes (other
/// files allowed: the cache's own record).
fn files_match_listed(dir: &Path, files: &Value) -> bool {
    files.as_array().is_some_and(|fs| {
        fs.iter().all(|f| {
            let p = dir.join(f["path"].as_str().unwrap_or_default());
            formats::artifact::sha256_file(&p).is_ok_and(|h| f["sha256"] == h.as_str())
        })
    })
}

fn store_cache(cache: &Path, key: &str, dir: &Path, entry: &Value) -> Result<()> {
    let at = cache.join(key);
    if at.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(cache).with_context(|| cache.display().to_string())?;
    let (tmp, _lock) = formats::atomic::temp_dir_beside(&at)?;
    for f in entry["files"].as_array().into_iter().flatten() {
        let name = f["path"].as_str().unwrap_or_default();
        std::fs::copy(dir.join(name), tmp.path().join(name))
            .with_context(|| dir.join(name).display().to_string())?;
    }
    std::fs::write(
        tmp.path().join(CACHE_ENTRY),
        serde_json::to_string_pretty(entry)? + "\n",
    )
    .with_context(|| at.display().to_string())?;
    let kept = tmp.keep();
    if std::fs::rename(&kept, &at).is_err() {
        // Another run stored the same key first: keep theirs.
        let _ = std::fs::remove_dir_all(&kept);
    }
    Ok(())
}

fn merge(args: &CiArgs, m: &Manifest, out: &Path, printer: &Printer) -> Result<()> {
    let t0 = Instant::now();
    let mut found: BTreeMap<String, (Value, PathBuf)> = BTreeMap::new();
    for dir in &args.merge {
        let path = dir.join(SUMMARY_JSON);
        let s = read_summary(&path)
            .ok_or_else(|| anyhow!("{}: no kiln ci summary.json there", dir.display()))?;
        if s["manifest_sha256"] != m.sha256.as_str() {
            bail!(
                "{}: made from another manifest (sha256 {}, {} is {}); merge runs of one manifest",
                path.display(),
                s["manifest_sha256"].as_str().unwrap_or("?"),
                m.path.display(),
                m.sha256
            );
        }
        for (name, e) in entries_by_name(&s) {
            if !m.units.iter().any(|u| u.name == name) {
                bail!(
                    "{}: artifact `{}` is not in {}",
                    path.display(),
                    passes::printable(&name),
                    m.path.display()
                );
            }
            let adir = dir.join(&name);
            if !files_match(&adir, &e["files"]) {
                bail!(
                    "{}: its files do not match the hashes {} records",
                    adir.display(),
                    path.display()
                );
            }
            if let Some((prev, from)) = found.get(&name) {
                if prev["key"] != e["key"] || prev["files"] != e["files"] {
                    bail!(
                        "artifact `{name}` differs between {} and {} (keys {} and {}); refusing to merge conflicting results",
                        from.display(),
                        dir.display(),
                        prev["key"].as_str().unwrap_or("?"),
                        e["key"].as_str().unwrap_or("?")
                    );
                }
                continue;
            }
            found.insert(name, (e, dir.clone()));
        }
    }
    let missing: Vec<&str> = m
        .units
        .iter()
        .filter(|u| !found.contains_key(&u.name))
        .map(|u| u.name.as_str())
        .collect();
    if !missing.is_empty() {
        bail!(
            "no merged directory holds {}: run those units first (kiln ci {} --only NAME)",
            missing.join(", "),
            m.path.display()
        );
    }
    let mut entries = Vec::new();
    for u in &m.units {
        let (e, from) = &found[&u.name];
        let to = out.join(&u.name);
        let same =
            std::fs::canonicalize(from.join(&u.name)).ok() == std::fs::canonicalize(&to).ok();
        if !same && !files_match(&to, &e["files"]) {
            copy_artifact(&from.join(&u.name), &e["files"], &to)?;
        }
        let e = with_gates(e.clone(), u);
        printer.info(&format!("merged {} from {}", u.name, from.display()));
        entries.push(e);
    }
    let s = summary(m, entries);
    write_summary(out, &s)?;
    finish(args, &s, printer, t0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_units_exactly() {
        assert_eq!(parse_shard("1/2").unwrap(), (1, 2));
        assert_eq!(parse_shard(" 3 / 3 ").unwrap(), (3, 3));
        for bad in ["0/2", "3/2", "1/0", "x/2", "12"] {
            let e = parse_shard(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--shard {bad}")), "{e}");
        }
    }

    #[test]
    fn gates_compare_with_their_direction() {
        let u = Unit {
            name: "a".into(),
            model: ci_manifest::Model {
                name: "m".into(),
                path: "m".into(),
                resolved: "m".into(),
                allow_requantize: false,
                pre_tokenizer: None,
            },
            target: "h100-sxm".into(),
            settings: Default::default(),
            gates: ci_manifest::Gates {
                max_kld: Some(0.01),
                min_top1: Some(0.9),
                min_decode_tok_s: Some(100.0),
                must_fit: Some(true),
                ..Default::default()
            },
            line: 1,
            dir: ".".into(),
        };
        let e = json!({
            "accuracy": {"kld_mean": 0.02, "top1_agreement": 0.95},
            "cost": {"fits": true, "decode_tokens_per_second": 100.0},
        });
        let g = with_gates(e, &u);
        let pass: Vec<bool> = g["gates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["pass"].as_bool().unwrap())
            .collect();
        assert_eq!(pass, [false, true, true, true]);
        assert_eq!(g["passed"], false);
        // A gate on a figure that was not measured fails.
        let g = with_gates(json!({"cost": {}}), &u);
        assert_eq!(g["gates"][0]["value"], Value::Null);
        assert_eq!(g["gates"][0]["pass"], false);
    }
}
