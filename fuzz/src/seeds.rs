//! The seed corpus: small, valid inputs of every kind that the mutators
//! start from. Checkpoints are generated with the fixtures crate at a size
//! where one conversion takes well under a millisecond (hidden 32, one
//! layer, the real 512-token tokenizers); GGUF seeds are those checkpoints
//! converted in-process; imatrix seeds cover the checkpoint's weights in
//! both forms; target TOML seeds are the built-in profiles. The committed
//! fixtures' imatrix files are seeds too (their column counts do not match
//! the micro checkpoint, so conversion refuses them: parser coverage).
//!
//! What must stay true: every seed is built from code and committed files
//! only (no clock, no network), so a case index names the same input on
//! every machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use fixtures::models::{
    self, index_json, shard_name, tensor_values, Family, ModelSpec, TokenizerKind,
};
use fixtures::safetensors::write_safetensors;
use fixtures::Dtype;
use formats::imatrix::{Imatrix, ImatrixEntry, ImatrixFormat};

use crate::exec::{self, ConvertSpec};

/// A checkpoint directory the dir-based kinds mutate one file of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Base {
    /// Llama, byte-level BPE `tokenizer.json`, BF16, untied head.
    Llama,
    /// Qwen2, byte-level BPE, F16, tied embeddings, q/k/v biases.
    Qwen2,
    /// Mistral, SentencePiece `tokenizer.model`, F32.
    Spm,
    /// The Llama checkpoint in two shards with `model.safetensors.index.json`.
    Sharded,
}

impl Base {
    pub const ALL: [Base; 4] = [Base::Llama, Base::Qwen2, Base::Spm, Base::Sharded];

    pub fn name(self) -> &'static str {
        match self {
            Base::Llama => "llama",
            Base::Qwen2 => "qwen2",
            Base::Spm => "spm",
            Base::Sharded => "sharded",
        }
    }
}

fn micro(family: Family, tokenizer: TokenizerKind, dtype: Dtype) -> ModelSpec {
    let (vocab, bos, eos) = match tokenizer {
        TokenizerKind::ByteLevelBpe => (
            fixtures::bpe::VOCAB_SIZE,
            fixtures::bpe::BOS_ID,
            fixtures::bpe::EOS_ID,
        ),
        TokenizerKind::SentencePiece => (
            fixtures::spm::VOCAB_SIZE,
            fixtures::spm::BOS_ID,
            fixtures::spm::EOS_ID,
        ),
    };
    let qwen = family == Family::Qwen2;
    ModelSpec {
        family,
        hidden: 32,
        // A row length of 256 for ffn_down: the k-quant encoders run too.
        intermediate: 256,
        layers: 1,
        heads: 2,
        kv_heads: 1,
        head_dim: 16,
        vocab,
        max_position_embeddings: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        tie_word_embeddings: qwen,
        qkv_bias: qwen,
        dtype,
        bos_token_id: bos,
        eos_token_id: eos,
        tokenizer,
        seed: 0x6675_7A7A, // "fuzz"
        embed_init: models::EMBED,
        lm_head_init: if qwen {
            models::EMBED
        } else {
            models::BIGRAM_HEAD
        },
        linear_init: models::LINEAR,
        bias_init: models::LINEAR,
        norm_init: models::NORM,
    }
}

fn spec(base: Base) -> ModelSpec {
    match base {
        Base::Llama | Base::Sharded => {
            micro(Family::Llama, TokenizerKind::ByteLevelBpe, Dtype::BF16)
        }
        Base::Qwen2 => micro(Family::Qwen2, TokenizerKind::ByteLevelBpe, Dtype::F16),
        Base::Spm => micro(Family::Mistral, TokenizerKind::SentencePiece, Dtype::F32),
    }
}

/// Write the checkpoint `base` into `dir`.
pub fn write_base(base: Base, dir: &Path) -> Result<()> {
    let spec = spec(base);
    if base != Base::Sharded {
        return models::write_model(dir, &spec).with_context(|| dir.display().to_string());
    }
    models::write_model_files(dir, &spec)?;
    let (first, second): (Vec<_>, Vec<_>) = spec
        .tensors()
        .into_iter()
        .partition(|(t, _)| t.name.starts_with("model.embed_tokens."));
    let mut shards = Vec::new();
    for (i, part) in [first, second].iter().enumerate() {
        let name = shard_name(i, 2);
        let mut infos: Vec<_> = part.iter().map(|(t, _)| t.clone()).collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        let inits: BTreeMap<String, _> = part.iter().map(|(t, i)| (t.name.clone(), *i)).collect();
        write_safetensors(&dir.join(&name), &infos, &[("format", "pt")], |t, w| {
            let mut bytes = Vec::new();
            for v in tensor_values(&spec, t, inits[&t.name]) {
                t.dtype.encode(v, &mut bytes);
            }
            w.write_all(&bytes)
        })?;
        shards.push((name, infos));
    }
    fixtures::files::write_json(
        &dir.join("model.safetensors.index.json"),
        &index_json(&shards),
    )?;
    Ok(())
}

/// Every seed, by kind; built once per worker into `dir`.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// The checkpoint directories, pristine (cases work on copies).
    pub bases: BTreeMap<Base, PathBuf>,
    /// Every file of every checkpoint, by (checkpoint, file name).
    pub files: BTreeMap<(Base, String), Vec<u8>>,
    pub gguf: Vec<Vec<u8>>,
    pub imatrix_dat: Vec<Vec<u8>>,
    pub imatrix_gguf: Vec<Vec<u8>>,
    pub targets: Vec<Vec<u8>>,
}

/// The committed llama.cpp imatrix files (`fixtures/llama_cpp/imatrix`).
fn committed_imatrix(name: &str) -> Result<Vec<u8>> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/llama_cpp/imatrix")
        .join(name);
    std::fs::read(&p).with_context(|| p.display().to_string())
}

/// Importance data for every 2-D weight of a converted GGUF (sums of
/// squared activations over `ncall` calls), as llama-imatrix would write it.
fn imatrix_for(gguf: &Path) -> Result<Imatrix> {
    let loaded = formats::load(gguf, &formats::LoadOptions::default())?;
    let mut entries = BTreeMap::new();
    for t in &loaded.model.tensors {
        if t.shape.len() != 2 || t.name == "token_embd.weight" {
            continue;
        }
        let cols = t.shape[1];
        let sums = (0..cols).map(|c| 1.0 + (c % 7) as f32 * 0.25).collect();
        entries.insert(
            t.name.clone(),
            ImatrixEntry {
                sums,
                counts: vec![10],
            },
        );
    }
    Ok(Imatrix {
        format: ImatrixFormat::Gguf,
        entries,
        datasets: vec!["fuzz.txt".into()],
        chunk_count: 10,
        chunk_size: 512,
    })
}

/// The legacy `.dat` form of `m` (values are sums / ncall * ncall, as
/// llama-imatrix stores them), with the optional trailer.
pub fn legacy_bytes(m: &Imatrix, trailer: bool) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(m.entries.len() as i32).to_le_bytes());
    for (name, e) in &m.entries {
        b.extend_from_slice(&(name.len() as i32).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        let ncall = e.counts.first().copied().unwrap_or(1) as i32;
        b.extend_from_slice(&ncall.to_le_bytes());
        b.extend_from_slice(&(e.sums.len() as i32).to_le_bytes());
        for v in &e.sums {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    if trailer {
        b.extend_from_slice(&m.chunk_count.to_le_bytes());
        let d = m.datasets.first().map_or("", String::as_str);
        b.extend_from_slice(&(d.len() as i32).to_le_bytes());
        b.extend_from_slice(d.as_bytes());
    }
    b
}

impl Corpus {
    /// Build every seed under `dir` (created) and read them back.
    pub fn build(dir: &Path) -> Result<Corpus> {
        std::fs::create_dir_all(dir)?;
        let mut bases = BTreeMap::new();
        for b in Base::ALL {
            let d = dir.join(format!("base-{}", b.name()));
            write_base(b, &d)?;
            bases.insert(b, d);
        }
        let seeds = dir.join("seeds");
        std::fs::create_dir_all(&seeds)?;
        let mut ggufs = Vec::new();
        for (base, recipe, pure) in [
            (Base::Llama, "F16", true),
            (Base::Llama, "Q8_0", false),
            (Base::Qwen2, "Q4_K_M", false),
            (Base::Spm, "F32", true),
        ] {
            let out = seeds.join(format!("gguf-{}-{recipe}.gguf", base.name()));
            let spec = ConvertSpec {
                recipe,
                pure,
                imatrix: None,
            };
            exec::convert(&bases[&base], &out, &spec)
                .with_context(|| format!("seed {recipe} of {}", base.name()))?;
            ggufs.push(out);
        }
        let m = imatrix_for(&ggufs[0])?;
        let gguf_form = formats::imatrix::to_gguf_bytes(&m).map_err(anyhow::Error::msg)?;
        // The imatrix GGUF is a GGUF too.
        std::fs::write(seeds.join("gguf-imatrix.gguf"), &gguf_form)?;
        std::fs::write(seeds.join("imatrix-gguf-llama.gguf"), &gguf_form)?;
        std::fs::write(
            seeds.join("imatrix-gguf-tiny-llama.gguf"),
            committed_imatrix("tiny-llama.imatrix.gguf")?,
        )?;
        std::fs::write(seeds.join("imatrix-dat-llama.dat"), legacy_bytes(&m, true))?;
        std::fs::write(
            seeds.join("imatrix-dat-llama-no-trailer.dat"),
            legacy_bytes(&m, false),
        )?;
        std::fs::write(
            seeds.join("imatrix-dat-tiny-llama.dat"),
            committed_imatrix("tiny-llama.imatrix.dat")?,
        )?;
        for (id, text) in passes::cost::target::BUILTIN_FILES {
            std::fs::write(seeds.join(format!("target-toml-{id}.toml")), text)?;
        }
        Corpus::load(dir)
    }

    /// Read a corpus [`Corpus::build`] wrote into `dir`.
    pub fn load(dir: &Path) -> Result<Corpus> {
        let mut bases = BTreeMap::new();
        let mut files = BTreeMap::new();
        for b in Base::ALL {
            let d = dir.join(format!("base-{}", b.name()));
            for e in std::fs::read_dir(&d).with_context(|| d.display().to_string())? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                files.insert((b, name), std::fs::read(e.path())?);
            }
            bases.insert(b, d);
        }
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join("seeds"))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        let with = |prefix: &str| -> Result<Vec<Vec<u8>>> {
            names
                .iter()
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                })
                .map(|p| std::fs::read(p).with_context(|| p.display().to_string()))
                .collect()
        };
        Ok(Corpus {
            bases,
            files,
            gguf: with("gguf-")?,
            imatrix_dat: with("imatrix-dat-")?,
            imatrix_gguf: with("imatrix-gguf-")?,
            targets: with("target-toml-")?,
        })
    }

    /// The pristine bytes of `name` in checkpoint `base` (empty if absent).
    pub fn file(&self, base: Base, name: &str) -> &[u8] {
        self.files
            .get(&(base, name.to_string()))
            .map_or(&[], Vec::as_slice)
    }
}
