//! Running one case in-process: put the mutated bytes where the input kind
//! lives (one file of a checkpoint directory, a GGUF, an imatrix, a target
//! profile), then call what `kiln` calls on it: `formats::load`, the
//! conversion (`convert`, which mirrors `cli/convert.rs` without printing:
//! load, imatrix, the `convert` pipeline, GGUF layout, the streaming writer
//! into a scratch directory), `kiln estimate`'s `planner::estimate`, and
//! `Target::from_toml`.
//!
//! What must stay true: a case leaves its workspace as it found it (the
//! mutated file is restored, the output removed), so cases are independent
//! and a worker's results do not depend on the order it ran them in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context as _, Result};
use formats::data::Rows;
use formats::gguf::{self, Gguf};
use formats::write::{self, Container, WriteOptions};
use formats::LoadOptions;
use passes::cost::{Origin, Target};
use passes::passes::importance::AttachImportance;
use passes::passes::recipe::{self, ApplyRecipe, RecipeOptions};
use passes::passes::{Context, Pipeline};
use planner::estimate::{self, EstimateOptions};

use crate::seeds::{Base, Corpus};
use crate::Kind;

/// What to convert with.
#[derive(Debug, Clone)]
pub struct ConvertSpec<'a> {
    /// A llama.cpp recipe name (`Q4_K_M`, `F16`, ...).
    pub recipe: &'a str,
    pub pure: bool,
    pub imatrix: Option<&'a Path>,
}

/// `kiln convert MODEL -t RECIPE [--pure] [--imatrix F] --allow-requantize -o OUT`,
/// in-process. Returns the bytes written.
pub fn convert(model: &Path, out: &Path, spec: &ConvertSpec<'_>) -> Result<u64> {
    let loaded = formats::load(model, &LoadOptions::default())?;
    if let Some(g) = &loaded.gguf {
        if let Some((name, ty)) = formats::load::undecodable(g) {
            bail!(
                "{}: tensor `{name}`: type {ty} cannot be decoded by kiln yet",
                model.display()
            );
        }
    }
    if loaded.model.arch.is_none() {
        bail!("{}: no architecture", model.display());
    }
    write::check_output(out, &loaded.model.files)?;
    let mut model_ir = loaded.model;
    let imatrix = match spec.imatrix {
        Some(path) => Some((path, formats::imatrix::read(path)?)),
        None => None,
    };
    let options = RecipeOptions {
        overrides: Vec::new(),
        output_tensor_type: None,
        token_embedding_type: None,
        leave_output_tensor: false,
        pure: spec.pure,
        allow_requantize: true,
        imatrix_present: imatrix.as_ref().is_some_and(|(_, m)| !m.entries.is_empty()),
        dry_run: false,
    };
    let recipe = recipe::parse_recipe(spec.recipe).map_err(anyhow::Error::msg)?;
    let apply = ApplyRecipe::new(recipe, options).map_err(anyhow::Error::msg)?;
    let importance = match &imatrix {
        Some((path, m)) => Some(AttachImportance {
            vectors: m.importance(path)?,
            provenance: m.provenance(&path.display().to_string()),
        }),
        None => None,
    };
    Pipeline::convert(apply, importance)
        .run(&mut model_ir, &Context::with_reader(&Rows(&loaded.maps)))
        .with_context(|| model.display().to_string())?;
    if let Some((path, m)) = &imatrix {
        if !m.entries.is_empty() {
            let arg = path.display().to_string();
            model_ir
                .metadata
                .0
                .extend(formats::imatrix::quantize_metadata(&arg, m));
        }
    }
    let name = out
        .file_name()
        .map_or("model.gguf".into(), |n| n.to_string_lossy());
    let container = Gguf::new(&name);
    gguf::lower_in_place(&mut model_ir);
    let layout = container.layout(&model_ir)?.remove(0);
    model_ir.metadata.0.clear();
    model_ir.info.tokenizer = None;
    let opts = WriteOptions {
        importance: model_ir.importance.as_ref().map(|i| &i.vectors),
        allow_nonfinite: false,
    };
    let cancel = AtomicBool::new(false);
    let dir = formats::atomic::parent_dir(out);
    write::write(
        &model_ir,
        &loaded.maps,
        &container,
        std::slice::from_ref(&layout),
        &dir,
        opts,
        &|_| {},
        &cancel,
    )?;
    Ok(layout.total_bytes)
}

/// `kiln estimate MODEL --target T --batch B` with the command's defaults.
pub fn estimate(model: &Path, target: &Target, batch: &str) -> Result<()> {
    let o = EstimateOptions {
        model: model.to_path_buf(),
        engine: None,
        ty: None,
        scheme: None,
        group_size: None,
        batch: batch.into(),
        context: None,
        prompt: 512,
        gen: 128,
        kv_type: "f16".into(),
        devices: None,
        tp: None,
        speculative: false,
        request_rate: None,
        engine_version: None,
    };
    let e = estimate::estimate(&o, target)?;
    // The reports are what the user sees: render them too.
    let model = model.display().to_string();
    std::hint::black_box(estimate::json(&e.estimate, &model, &e.counted_from));
    std::hint::black_box(estimate::text(&e.estimate, &model, &e.counted_from));
    Ok(())
}

/// One generated case: the bytes, where they go, and how to run it.
#[derive(Debug, Clone)]
pub struct Case {
    pub kind: Kind,
    pub index: u64,
    /// The checkpoint the case runs on (dir kinds; the imatrix and target
    /// kinds convert or estimate the Llama one).
    pub base: Base,
    pub bytes: Vec<u8>,
    pub recipe: &'static str,
    /// `--batch` for estimates.
    pub batch: &'static str,
}

/// A worker's scratch space: a private copy of every base checkpoint, the
/// pristine bytes to restore, and the built-in target estimates run on.
pub struct Workspace {
    pub root: PathBuf,
    pristine: BTreeMap<PathBuf, Vec<u8>>,
    h100: Target,
}

impl Workspace {
    /// Copy the corpus's checkpoints under `root` (created).
    pub fn new(root: &Path, corpus: &Corpus) -> Result<Workspace> {
        std::fs::create_dir_all(root.join("out"))?;
        let mut pristine = BTreeMap::new();
        for ((base, name), bytes) in &corpus.files {
            let dst = root.join(base.name());
            std::fs::create_dir_all(&dst)?;
            let p = dst.join(name);
            std::fs::write(&p, bytes)?;
            pristine.insert(p, bytes.clone());
        }
        let h100 = passes::cost::find_builtin("h100-sxm").context("built-in target h100-sxm")?;
        Ok(Workspace {
            root: root.to_path_buf(),
            pristine,
            h100,
        })
    }

    pub fn dir(&self, base: Base) -> PathBuf {
        self.root.join(base.name())
    }

    /// Where a case of `kind` on `base` puts its bytes.
    pub fn input_path(&self, kind: Kind, base: Base) -> PathBuf {
        if kind.in_checkpoint() {
            self.dir(base).join(kind.file_name())
        } else {
            self.root.join(kind.file_name())
        }
    }

    /// Put `case`'s bytes in place.
    pub fn prepare(&self, case: &Case) -> Result<PathBuf> {
        let input = self.input_path(case.kind, case.base);
        std::fs::write(&input, &case.bytes)?;
        Ok(input)
    }

    /// Run a prepared `case`: Ok when kiln accepted it, Err (the refusal)
    /// when it refused it cleanly. Panics propagate (the caller catches
    /// them, then calls [`Workspace::reset`]).
    pub fn run(&self, case: &Case) -> Result<()> {
        let input = self.input_path(case.kind, case.base);
        self.run_on(case, &input, &self.out())
    }

    fn out(&self) -> PathBuf {
        self.root.join("out").join("out.gguf")
    }

    /// Undo `case`: the checkpoint's file back to its pristine bytes, a
    /// standalone input and any output (or temp file) removed.
    pub fn reset(&self, case: &Case) -> Result<()> {
        let input = self.input_path(case.kind, case.base);
        match self.pristine.get(&input) {
            Some(b) => std::fs::write(&input, b)?,
            None => std::fs::remove_file(&input)?,
        }
        for e in std::fs::read_dir(self.root.join("out"))? {
            std::fs::remove_file(e?.path())?;
        }
        Ok(())
    }

    fn run_on(&self, case: &Case, input: &Path, out: &Path) -> Result<()> {
        let spec = |imatrix| ConvertSpec {
            recipe: case.recipe,
            pure: false,
            imatrix,
        };
        let dir = self.dir(case.base);
        match case.kind {
            Kind::Safetensors => {
                // The bare file first (a different reader entry), then the checkpoint.
                let bare = formats::load(input, &LoadOptions::default());
                std::hint::black_box(bare.map(|l| l.model.tensors.len()).ok());
                convert(&dir, out, &spec(None))?;
            }
            Kind::ShardIndex
            | Kind::TokenizerJson
            | Kind::TokenizerModel
            | Kind::TokenizerConfig => {
                convert(&dir, out, &spec(None))?;
            }
            Kind::Config => {
                // Estimate reads only the config: run it even when the conversion refuses.
                let e = estimate(&dir, &self.h100, case.batch);
                convert(&dir, out, &spec(None))?;
                e?;
            }
            Kind::ImatrixDat | Kind::ImatrixGguf => {
                let m = formats::imatrix::read(input)?;
                std::hint::black_box(formats::imatrix::quantize_metadata("x", &m));
                convert(&dir, out, &spec(Some(input)))?;
            }
            Kind::Gguf => {
                let e = estimate(input, &self.h100, case.batch);
                convert(input, out, &spec(None))?;
                e?;
            }
            Kind::TargetToml => {
                let text = String::from_utf8(case.bytes.clone())
                    .map_err(|_| anyhow::anyhow!("{}: not UTF-8", input.display()))?;
                let what = input.display().to_string();
                let t = Target::from_toml(&text, &what, Origin::File(what.clone()))?;
                std::hint::black_box(planner::targets::detail_text(&t));
                estimate(&dir, &t, case.batch)?;
            }
            Kind::SelfTest => self_test(case.index)?,
        }
        Ok(())
    }
}

/// The [`Kind::SelfTest`] cases: index mod 7 is ok, a refusal, a panic, an
/// abort, an allocation past any sane cap, a hang, a slow case (2.5 s).
fn self_test(index: u64) -> Result<()> {
    match index % 7 {
        0 => Ok(()),
        1 => bail!("self-test: a clean refusal"),
        2 => panic!("self-test: a panic"),
        3 => std::process::abort(),
        4 => {
            let v = vec![1u8; 1 << 36];
            std::hint::black_box(&v);
            Ok(())
        }
        5 => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        _ => {
            std::thread::sleep(std::time::Duration::from_millis(2500));
            Ok(())
        }
    }
}
