//! The `kiln ci` manifest (`kiln.toml`, schema version 1): models, the
//! artifacts to build from them (target, engine, serving assumptions,
//! objective, texts) and each artifact's gates. Parsed strictly: an
//! unknown key, a wrong type, an unknown model or target, a duplicate name
//! or a gate outside its unit's range is one error naming the file, the
//! line and the key.
//!
//! ```toml
//! version = 1
//!
//! [models.tiny]
//! path = "fixtures/tiny-llama"      # relative to this file
//!
//! [defaults]                        # any artifact setting, for every artifact
//! text = "fixtures/text/pride-and-prejudice-ch1-17.txt"
//!
//! [[artifact]]
//! name = "tiny-h100"
//! model = "tiny"
//! target = "h100-sxm"
//! engine = "llama.cpp"              # or vllm, trt-llm (compressed-tensors)
//! context = 4096
//! concurrency = 8
//! prune = "auto"                    # or "none" (default), "ffn=0.75", ["layers=auto:1", "ffn=0.9"]
//! [artifact.gates]
//! max_kld = 0.01
//! min_top1 = 0.9
//! must_fit = true
//! ```
//!
//! What must stay true: every key the schema names changes what is built
//! or checked (it is in the artifact's key); nothing unknown is ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// The manifest schema version this kiln reads.
pub const VERSION: u32 = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    version: Spanned<u32>,
    #[serde(default)]
    models: BTreeMap<String, RawModel>,
    #[serde(default)]
    defaults: Settings,
    #[serde(default)]
    artifact: Vec<RawArtifact>,
    #[serde(default)]
    fanout: Fanout,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    path: Spanned<String>,
    /// Dequantize and requantize tensors already quantized in a GGUF input.
    #[serde(default)]
    allow_requantize: bool,
    /// llama.cpp pre-tokenizer name, for a tokenizer kiln cannot name.
    pre_tokenizer: Option<String>,
}

/// How the work units run elsewhere (`--list --format k8s|slurm`).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fanout {
    /// Container image with kiln and the inputs (Kubernetes).
    pub image: Option<String>,
    /// Working directory the manifest's relative paths are resolved from.
    pub workdir: Option<String>,
}

/// Settings of an artifact (or `[defaults]` for all of them). Every field
/// is one of `kiln build`'s options of the same name.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub engine: Option<String>,
    pub context: Option<usize>,
    pub concurrency: Option<usize>,
    pub kv_type: Option<String>,
    pub objective: Option<String>,
    pub max_error: Option<f64>,
    pub budget_gb: Option<f64>,
    pub bpw: Option<f64>,
    pub min_bpw: Option<f64>,
    pub text: Option<String>,
    pub eval_text: Option<String>,
    pub imatrix: Option<String>,
    pub no_imatrix: Option<bool>,
    pub ctx: Option<usize>,
    pub chunks: Option<usize>,
    pub probe_chunks: Option<usize>,
    pub eval_chunks: Option<usize>,
    pub sample: Option<usize>,
    pub exclude_types: Option<Vec<String>>,
    /// Pruning weighed beside bit allocations (`kiln build
    /// --prune-candidates`): "none" (the default), "auto", a `--prune`
    /// spec, or a list of specs. Left out of the artifact key when unset,
    /// so manifests without it keep their keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<Prune>,
}

/// The `prune` setting: one value or a list.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(
    untagged,
    expecting = "`prune`: \"none\", \"auto\", a --prune spec (\"ffn=0.75\") or a list of them"
)]
pub enum Prune {
    One(String),
    Many(Vec<String>),
}

impl Settings {
    /// The pruning candidates of `prune` (none when unset).
    pub fn prune_candidates(&self) -> std::result::Result<planner::prune::PruneCandidates, String> {
        let values = match &self.prune {
            None => Vec::new(),
            Some(Prune::One(v)) => vec![v.clone()],
            Some(Prune::Many(v)) => v.clone(),
        };
        planner::prune::PruneCandidates::parse(&values)
            .map_err(|e| e.replace("--prune-candidates", "prune"))
    }
}

macro_rules! merge_fields {
    ($a:expr, $d:expr, $($f:ident),*) => {
        Settings { $($f: $a.$f.clone().or_else(|| $d.$f.clone()),)* }
    };
}

impl Settings {
    /// These settings, with `d`'s where these have none.
    fn or(&self, d: &Settings) -> Settings {
        merge_fields!(
            self,
            d,
            engine,
            context,
            concurrency,
            kv_type,
            objective,
            max_error,
            budget_gb,
            bpw,
            min_bpw,
            text,
            eval_text,
            imatrix,
            no_imatrix,
            ctx,
            chunks,
            probe_chunks,
            eval_chunks,
            sample,
            exclude_types,
            prune
        )
    }
}

/// An artifact's gates: each a limit on a figure of its manifest.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Maximum mean KL divergence (nats) on the held-out text.
    pub max_kld: Option<f64>,
    /// Maximum perplexity ratio (artifact / original) on the held-out text.
    pub max_ppl_ratio: Option<f64>,
    /// Minimum top-1 agreement with the original (a fraction, 0..1).
    pub min_top1: Option<f64>,
    /// Minimum estimated decode tokens per second (per sequence).
    pub min_decode_tok_s: Option<f64>,
    /// Maximum estimated $ per million generated tokens.
    pub max_usd_per_mtok: Option<f64>,
    /// The artifact must fit the target's memory.
    pub must_fit: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifact {
    name: Spanned<String>,
    model: Spanned<String>,
    target: Spanned<String>,
    #[serde(default)]
    gates: Gates,
    engine: Option<String>,
    context: Option<usize>,
    concurrency: Option<usize>,
    kv_type: Option<String>,
    objective: Option<String>,
    max_error: Option<f64>,
    budget_gb: Option<f64>,
    bpw: Option<f64>,
    min_bpw: Option<f64>,
    text: Option<String>,
    eval_text: Option<String>,
    imatrix: Option<String>,
    no_imatrix: Option<bool>,
    ctx: Option<usize>,
    chunks: Option<usize>,
    probe_chunks: Option<usize>,
    eval_chunks: Option<usize>,
    sample: Option<usize>,
    exclude_types: Option<Vec<String>>,
    prune: Option<Prune>,
}

impl RawArtifact {
    fn settings(&self) -> Settings {
        Settings {
            engine: self.engine.clone(),
            context: self.context,
            concurrency: self.concurrency,
            kv_type: self.kv_type.clone(),
            objective: self.objective.clone(),
            max_error: self.max_error,
            budget_gb: self.budget_gb,
            bpw: self.bpw,
            min_bpw: self.min_bpw,
            text: self.text.clone(),
            eval_text: self.eval_text.clone(),
            imatrix: self.imatrix.clone(),
            no_imatrix: self.no_imatrix,
            ctx: self.ctx,
            chunks: self.chunks,
            probe_chunks: self.probe_chunks,
            eval_chunks: self.eval_chunks,
            sample: self.sample,
            exclude_types: self.exclude_types.clone(),
            prune: self.prune.clone(),
        }
    }
}

/// A model the manifest names.
#[derive(Debug, Clone, Serialize)]
pub struct Model {
    pub name: String,
    /// As written in the manifest (recorded in keys: machine-independent).
    pub path: String,
    /// Resolved against the manifest's directory.
    #[serde(skip)]
    pub resolved: PathBuf,
    pub allow_requantize: bool,
    pub pre_tokenizer: Option<String>,
}

/// One artifact to build: a work unit.
#[derive(Debug, Clone, Serialize)]
pub struct Unit {
    pub name: String,
    pub model: Model,
    pub target: String,
    /// The artifact's settings with the defaults applied.
    pub settings: Settings,
    pub gates: Gates,
    /// 1-based line of the artifact's `name`, for messages.
    #[serde(skip)]
    pub line: usize,
    /// The manifest's directory, which relative paths are read from.
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Unit {
    /// A path of the settings (as written), resolved against the manifest's directory.
    pub fn path(&self, p: &Option<String>) -> Option<PathBuf> {
        p.as_ref().map(|p| self.dir.join(p))
    }
}

/// A parsed, checked manifest.
#[derive(Debug)]
pub struct Manifest {
    pub path: PathBuf,
    /// The manifest as read (to point errors at the line of a key).
    pub text: String,
    pub sha256: String,
    pub units: Vec<Unit>,
    pub fanout: Fanout,
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// The 1-based line that sets `key` (`gates.max_kld` for a key of the
/// artifact's `[artifact.gates]`) for the artifact whose `name` is on
/// `unit_line`: in that artifact's tables, else, for a setting, in
/// `[defaults]`; `unit_line` when neither sets it (a default of kiln's).
pub fn key_line(text: &str, unit_line: usize, key: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let (table, leaf) = match key.split_once('.') {
        Some((t, l)) => (Some(t), l),
        None => (None, key),
    };
    let sets = |l: &str| {
        l.strip_prefix(leaf)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    let header = |l: &str| l.starts_with('[');
    // The artifact: from its `[[artifact]]` header to the next table that is
    // not one of its sub-tables.
    let start = (0..unit_line.min(lines.len()))
        .rev()
        .find(|&i| lines[i].trim() == "[[artifact]]");
    if let Some(start) = start {
        let mut sub: Option<&str> = None;
        for (i, l) in lines.iter().enumerate().skip(start + 1) {
            let l = l.trim();
            if header(l) {
                match l
                    .strip_prefix("[artifact.")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    Some(t) => sub = Some(t),
                    None => break,
                }
            } else if sub == table && sets(l) {
                return i + 1;
            }
        }
    }
    if table.is_none() {
        if let Some(d) = lines.iter().position(|l| l.trim() == "[defaults]") {
            for (i, l) in lines.iter().enumerate().skip(d + 1) {
                let l = l.trim();
                if header(l) {
                    break;
                }
                if sets(l) {
                    return i + 1;
                }
            }
        }
    }
    unit_line
}

/// `kiln.toml: line 12, key `target`: ...`.
pub fn located(path: &Path, line: usize, key: &str, msg: impl std::fmt::Display) -> String {
    format!("{}: line {line}, key `{key}`: {msg}", path.display())
}

/// Read and check the manifest at `path` (syntax, schema, references,
/// gate ranges; targets and engines are checked by the caller).
pub fn read(path: &Path) -> Result<Manifest> {
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the manifest: {e}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: the manifest is not UTF-8 text", path.display()))?;
    let raw: Raw = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            passes::suggest::toml_error(&text, &e)
        )
    })?;
    let at = |span: std::ops::Range<usize>| line_of(&text, span.start);
    if *raw.version.get_ref() != VERSION {
        bail!(located(
            path,
            at(raw.version.span()),
            "version",
            format!(
                "manifest schema version {} is not one this kiln reads (it reads {VERSION})",
                raw.version.get_ref()
            )
        ));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut models = BTreeMap::new();
    for (name, m) in &raw.models {
        check_name(name).map_err(|why| {
            anyhow::anyhow!(located(
                path,
                at(m.path.span()),
                "models",
                format!("model name `{name}` {why}")
            ))
        })?;
        let resolved = dir.join(m.path.get_ref());
        if !resolved.exists() {
            bail!(located(
                path,
                at(m.path.span()),
                "path",
                format!("model `{name}`: {} does not exist", resolved.display())
            ));
        }
        models.insert(
            name.clone(),
            Model {
                name: name.clone(),
                path: m.path.get_ref().clone(),
                resolved,
                allow_requantize: m.allow_requantize,
                pre_tokenizer: m.pre_tokenizer.clone(),
            },
        );
    }
    if raw.artifact.is_empty() {
        bail!("{}: the manifest lists no [[artifact]]", path.display());
    }
    let mut units: Vec<Unit> = Vec::new();
    for a in &raw.artifact {
        let name = a.name.get_ref();
        let line = at(a.name.span());
        check_name(name).map_err(|why| {
            anyhow::anyhow!(located(
                path,
                line,
                "name",
                format!("artifact name `{name}` {why}")
            ))
        })?;
        if let Some(prev) = units.iter().find(|u| &u.name == name) {
            bail!(located(
                path,
                line,
                "name",
                format!(
                    "artifact `{name}` is named twice (first on line {}); each artifact's directory is OUT/<name>",
                    prev.line
                )
            ));
        }
        let Some(model) = models.get(a.model.get_ref()) else {
            let known: Vec<&str> = models.keys().map(String::as_str).collect();
            bail!(located(
                path,
                at(a.model.span()),
                "model",
                format!(
                    "no model `{}` in [models] (known: {}){}",
                    a.model.get_ref(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    },
                    passes::suggest::did_you_mean(a.model.get_ref(), known.iter().copied())
                )
            ));
        };
        let settings = a.settings().or(&raw.defaults);
        for (key, p) in [
            ("text", &settings.text),
            ("eval_text", &settings.eval_text),
            ("imatrix", &settings.imatrix),
        ] {
            if let Some(p) = p {
                if !dir.join(p).is_file() {
                    bail!(located(
                        path,
                        line,
                        key,
                        format!("artifact `{name}`: {} is not a file", dir.join(p).display())
                    ));
                }
            }
        }
        match settings.prune_candidates() {
            Err(why) => bail!(located(path, line, "prune", format!("artifact `{name}`: {why}"))),
            Ok(c) if !c.is_empty() && settings.text.is_none() => bail!(located(
                path,
                line,
                "prune",
                format!("artifact `{name}`: pruning is chosen by KL divergence measured on held-out text and calibrated on it: give the artifact (or [defaults]) `text`")
            )),
            Ok(_) => {}
        }
        check_gates(&a.gates, &settings).map_err(|(key, why)| {
            anyhow::anyhow!(located(path, line, &format!("gates.{key}"), why))
        })?;
        units.push(Unit {
            name: name.clone(),
            model: model.clone(),
            target: a.target.get_ref().clone(),
            settings,
            gates: a.gates.clone(),
            line,
            dir: dir.clone(),
        });
    }
    Ok(Manifest {
        path: path.to_path_buf(),
        sha256: formats::artifact::sha256(text.as_bytes()),
        text: text.clone(),
        units,
        fanout: raw.fanout,
    })
}

/// Names become directory names: letters, digits, `-`, `_` and `.`, not
/// starting with a dot.
fn check_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.starts_with('.') {
        return Err("starts with a dot (names are directory names)");
    }
    if name.len() > 128 {
        return Err("is longer than 128 bytes");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("may hold only letters, digits, `-`, `_` and `.` (it names a directory)");
    }
    Ok(())
}

/// A gate outside its unit's range, or one that needs a text when the
/// artifact has none: `(key, why)`.
fn check_gates(g: &Gates, s: &Settings) -> std::result::Result<(), (String, String)> {
    let finite = |key: &str, v: Option<f64>| -> std::result::Result<(), (String, String)> {
        match v {
            Some(x) if !x.is_finite() => Err((key.into(), format!("{x} is not a finite number"))),
            _ => Ok(()),
        }
    };
    for (k, v) in [
        ("max_kld", g.max_kld),
        ("max_ppl_ratio", g.max_ppl_ratio),
        ("min_top1", g.min_top1),
        ("min_decode_tok_s", g.min_decode_tok_s),
        ("max_usd_per_mtok", g.max_usd_per_mtok),
    ] {
        finite(k, v)?;
    }
    if let Some(x) = g.max_kld.filter(|x| *x < 0.0) {
        return Err((
            "max_kld".into(),
            format!("{x}: a KL divergence in nats is never negative"),
        ));
    }
    if let Some(x) = g.max_ppl_ratio.filter(|x| *x <= 0.0) {
        return Err((
            "max_ppl_ratio".into(),
            format!("{x}: a perplexity ratio (artifact / original, e.g. 1.05) is positive"),
        ));
    }
    if let Some(x) = g.max_ppl_ratio.filter(|x| *x >= 10.0) {
        return Err((
            "max_ppl_ratio".into(),
            format!(
                "{x} is a ratio (artifact / original, e.g. 1.05), not a percentage or a perplexity"
            ),
        ));
    }
    if let Some(x) = g.min_top1.filter(|x| !(0.0..=1.0).contains(x)) {
        let hint = if (1.0..=100.0).contains(&x) {
            format!(" (for {x}% write {})", x / 100.0)
        } else {
            String::new()
        };
        return Err((
            "min_top1".into(),
            format!("{x}: top-1 agreement is a fraction of positions in 0..1{hint}"),
        ));
    }
    if let Some(x) = g.min_decode_tok_s.filter(|x| *x < 0.0) {
        return Err((
            "min_decode_tok_s".into(),
            format!("{x}: tokens per second are never negative"),
        ));
    }
    if let Some(x) = g.max_usd_per_mtok.filter(|x| *x < 0.0) {
        return Err((
            "max_usd_per_mtok".into(),
            format!("{x}: a price in $ per million tokens is never negative"),
        ));
    }
    // A compressed-tensors build measures the KL divergence of its plan only.
    if s.engine.as_deref().is_some_and(|e| e != "llama.cpp") {
        for (k, set) in [
            ("max_ppl_ratio", g.max_ppl_ratio.is_some()),
            ("min_top1", g.min_top1.is_some()),
        ] {
            if set {
                return Err((
                    k.into(),
                    format!(
                        "is not measured for compressed-tensors artifacts (engine `{}`): their builds measure the plan's KL divergence; gate on `max_kld`",
                        s.engine.as_deref().unwrap_or_default()
                    ),
                ));
            }
        }
    }
    let measured = s.text.is_some() || s.eval_text.is_some();
    for (k, set) in [
        ("max_kld", g.max_kld.is_some()),
        ("max_ppl_ratio", g.max_ppl_ratio.is_some()),
        ("min_top1", g.min_top1.is_some()),
    ] {
        if set && !measured {
            return Err((
                k.into(),
                "is measured on a text: give the artifact (or [defaults]) `text` or `eval_text`"
                    .into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        std::fs::create_dir_all(dir.join("m")).unwrap();
        let p = dir.join("kiln.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const HEAD: &str = "version = 1\n[models.m]\npath = \"m\"\n";

    #[test]
    fn defaults_apply_and_paths_resolve() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("t.txt"), "text").unwrap();
        let p = write(
            d.path(),
            &format!("{HEAD}[defaults]\ntext = \"t.txt\"\nconcurrency = 4\n[[artifact]]\nname = \"a\"\nmodel = \"m\"\ntarget = \"h100-sxm\"\nconcurrency = 2\n"),
        );
        let m = read(&p).unwrap();
        let u = &m.units[0];
        assert_eq!(u.settings.concurrency, Some(2));
        assert_eq!(u.settings.text.as_deref(), Some("t.txt"));
        assert_eq!(u.path(&u.settings.text), Some(d.path().join("t.txt")));
        assert_eq!(u.model.path, "m");
        assert_eq!(u.line, 8);
    }

    #[test]
    fn key_lines_are_the_artifacts_then_the_defaults() {
        let text = "version = 1\n[defaults]\nctx = 64\nbpw = 4\n[[artifact]]\nname = \"a\"\nbpw = 5\n[artifact.gates]\nmax_kld = 0.1\n[[artifact]]\nname = \"b\"\n[fanout]\nbpw = 9\n";
        assert_eq!(key_line(text, 6, "bpw"), 7); // the artifact's own
        assert_eq!(key_line(text, 11, "bpw"), 4); // [defaults], not [fanout]
        assert_eq!(key_line(text, 6, "ctx"), 3);
        assert_eq!(key_line(text, 6, "gates.max_kld"), 9);
        assert_eq!(key_line(text, 11, "gates.max_kld"), 11); // unset: the name's line
        assert_eq!(key_line(text, 11, "chunks"), 11);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            ("[[artifact]]\nname = \"a\"\nmodel = \"m\"\ntarget = \"x\"\ncolour = 1\n", "unknown field `colour`"),
            ("[[artifact]]\nname = \"a\"\nmodel = \"n\"\ntarget = \"x\"\n", "line 6, key `model`: no model `n`"),
            ("[[artifact]]\nname = \"a\"\nmodel = \"m\"\ntarget = \"x\"\n[[artifact]]\nname = \"a\"\nmodel = \"m\"\ntarget = \"x\"\n", "line 9, key `name`: artifact `a` is named twice (first on line 5)"),
            ("[[artifact]]\nname = \"a\"\nmodel = \"m\"\ntarget = \"x\"\ntext = \"kiln.toml\"\n[artifact.gates]\nmin_top1 = 95\n", "key `gates.min_top1`: 95: top-1 agreement is a fraction of positions in 0..1 (for 95% write 0.95)"),
            ("[[artifact]]\nname = \"a\"\nmodel = \"m\"\ntarget = \"x\"\nengine = \"vllm\"\ntext = \"kiln.toml\"\n[artifact.gates]\nmin_top1 = 0.9\n", "key `gates.min_top1`: is not measured for compressed-tensors artifacts (engine `vllm`)"),
            ("[[artifact]]\nname = \"a\"\nmodel = \"m\"\ntarget = \"x\"\n[artifact.gates]\nmax_kld = 0.1\n", "key `gates.max_kld`: is measured on a text"),
            ("[[artifact]]\nname = \"a\"\nmodel = \"m\"\ntarget = \"x\"\n[artifact.gates]\nmin_decode_tok_s = \"20 tok/s\"\n", "invalid type: string \"20 tok/s\", expected f64"),
            ("[[artifact]]\nname = \"a/b\"\nmodel = \"m\"\ntarget = \"x\"\n", "artifact name `a/b` may hold only"),
        ];
        for (body, want) in cases {
            let p = write(d.path(), &format!("{HEAD}{body}"));
            let e = read(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{body}\n=> {e}");
            assert!(e.starts_with(&p.display().to_string()), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let p = write(d.path(), "version = 2\n");
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("line 1, key `version`"), "{e}");
    }
}
