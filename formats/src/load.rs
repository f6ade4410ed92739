//! Loading any input into a [`Model`] of lazy [`Source`] views: a Hugging Face
//! checkpoint directory, a bare `.safetensors` file, or a GGUF file.
//!
//! A checkpoint's metadata is read into the neutral fields (`Model::arch`,
//! `Model::info`: name, tokenizer, chat templates); a GGUF's key/values are
//! carried as they are in `Model::metadata` (`ModelInfo::in_metadata`).
//!
//! What must stay true: files are memory-mapped and never copied whole; every
//! header is validated before a tensor is listed; tensor order is
//! deterministic (file order, then offset order).

use std::path::{Path, PathBuf};

use passes::ir::{ComputedTensor, ModelInfo};
use passes::{
    Arch, MetaValue, Metadata, Model, Note, NoteKind, Role, Source, SourceDType, TensorNode,
};
use quant::GgmlType;

use crate::ct_read::{self, CtRead};
use crate::error::{Error, Result};
use crate::gguf::{self, GgufFile};
use crate::hf;
use crate::mmap::MappedFile;
use crate::safetensors::{self as st, StHeader};
use crate::tokenizer::{self, TokenizerOptions};

/// What kind of input a path is.
#[derive(Debug, Clone, PartialEq)]
pub enum InputKind {
    HfDir,
    Safetensors,
    Gguf { version: u32 },
}

/// A loaded model and the mapped files its sources point into.
#[derive(Debug)]
pub struct Loaded {
    pub kind: InputKind,
    pub model: Model,
    pub maps: Vec<MappedFile>,
    /// For GGUF inputs, the parsed file (for inspection); its metadata is
    /// moved into `model.metadata` (one copy: a tokenizer can be 100k
    /// strings), carried through to a GGUF output as it is.
    pub gguf: Option<GgufFile>,
    /// For safetensors inputs, every header (for inspection), by file.
    pub safetensors: Vec<StHeader>,
    /// What the input lacks or what kiln cannot account for, for the user
    /// (a missing `tokenizer_config.json`, a config field no spec knows).
    pub warnings: Vec<String>,
    /// For compressed-tensors checkpoints, the config and the quantized
    /// Linears: their tensors in `model` are the logical weights, decoded
    /// by [`Loaded::read_row`].
    pub ct: Option<CtRead>,
}

impl Loaded {
    /// Decode output row `r` of `node` (its transform applied) to f32,
    /// whatever its storage: compressed-tensors layouts through
    /// [`CtRead`], everything else through [`crate::data::read_row`].
    pub fn read_row(&self, node: &TensorNode, r: usize, out: &mut [f32]) {
        let Some(ct) = &self.ct else {
            return crate::data::read_row(&self.maps, node, r, out);
        };
        let src = match node.transform {
            Some(tr) => tr.source_row(r, node.n_rows()),
            None => r,
        };
        // A stacked tensor (an MoE layer's experts) is one quantized
        // module per part.
        let (part, row) = node.source_of_row(src);
        match ct.tensor_at(part) {
            Some(t) => t.decode_row(&self.maps, row, out),
            None => crate::data::read_row(&self.maps, node, r, out),
        }
    }

    /// Refuse a compressed-tensors checkpoint as the input of a conversion
    /// or a plan: its weights are already quantized, and the writers read
    /// source rows as stored, so they would re-encode packed words.
    pub fn refuse_compressed(&self, path: &Path) -> Result<()> {
        match self.ct.as_ref().and_then(|c| c.tensors().next()) {
            Some(t) => Err(Error::unsupported(
                path,
                Some(&format!("{}.weight", t.module)),
                format!(
                    "a compressed-tensors checkpoint (stored as {}): `kiln eval` and `kiln inspect` read it; \
                     converting or planning from it is not supported: start from the original checkpoint",
                    crate::ct_read::label(t.weights)
                ),
            )),
            None => Ok(()),
        }
    }

    /// How `node` is stored, as listings name it: `BF16`, `Q4_K`, or a
    /// compressed-tensors layout (`INT4_G128`, `FP8_CHANNEL`, `NVFP4`).
    pub fn storage_name(&self, node: &TensorNode) -> String {
        match self.ct.as_ref().and_then(|c| c.tensor(node)) {
            Some(t) => crate::ct_read::label(t.weights),
            None => node.source.dtype.name().to_uppercase(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub tokenizer: TokenizerOptions,
}

/// Load `path`, whatever it is.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    if path.is_dir() {
        return load_hf_dir(path, opts);
    }
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    let map = MappedFile::open(path)?;
    if map.bytes().starts_with(gguf::read::GGUF_MAGIC)
        || path.extension().is_some_and(|e| e == "gguf")
    {
        return load_gguf(path, map);
    }
    load_safetensors_file(path, map)
}

fn source_dtype(path: &Path, name: &str, dtype: &str) -> Result<SourceDType> {
    Ok(match dtype {
        "F32" => SourceDType::F32,
        "F16" => SourceDType::F16,
        "BF16" => SourceDType::BF16,
        other => {
            return Err(Error::unsupported(
                path,
                Some(name),
                format!("dtype {other} is not a weight dtype kiln converts (F32, F16, BF16)"),
            ))
        }
    })
}

fn node(name: &str, shape: Vec<usize>, source: Source) -> TensorNode {
    TensorNode {
        name: name.to_string(),
        source_name: name.to_string(),
        shape,
        role: Role::Other,
        layer: None,
        source,
        parts: Vec::new(),
        transform: None,
        encoding: None,
        notes: Vec::new(),
    }
}

fn load_safetensors_file(path: &Path, map: MappedFile) -> Result<Loaded> {
    let header = st::parse(path, map.bytes())?;
    let mut tensors = Vec::new();
    let mut entries = header.entries.clone();
    entries.sort_by_key(|e| e.start);
    for e in &entries {
        // A bare file may hold any dtype; only weight dtypes become sources.
        if let Ok(dtype) = source_dtype(path, &e.name, &e.dtype) {
            tensors.push(node(
                &e.name,
                e.shape.clone(),
                Source {
                    file: 0,
                    dtype,
                    offset: e.start,
                    len: e.end - e.start,
                },
            ));
        }
    }
    Ok(Loaded {
        kind: InputKind::Safetensors,
        model: Model {
            files: vec![path.to_path_buf()],
            tensors,
            ..Model::default()
        },
        maps: vec![map],
        gguf: None,
        safetensors: vec![header],
        warnings: Vec::new(),
        ct: None,
    })
}

fn load_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        return Err(Error::malformed(
            &config_path,
            None,
            "missing config.json (a Hugging Face checkpoint directory needs one)",
        ));
    }
    let config = hf::read_json(&config_path)?;
    // The class first: an architecture kiln cannot convert is named as
    // such, not by the first field its config lacks.
    let spec = hf::check_convertible(&config_path, &config)?;
    let arch = hf::parse_config(&config_path, &config)?;
    hf::check_values(&config_path, &arch)?;

    let ct_config = ct_read::Config::parse(&config_path, &config)?;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut maps = Vec::new();
    let mut headers = Vec::new();
    for (path, names) in hf::weight_files(dir)? {
        let map = MappedFile::open(&path)?;
        let header = st::parse(&path, map.bytes())?;
        if let Some(names) = &names {
            for n in names {
                if !header.entries.iter().any(|e| &e.name == n) {
                    return Err(Error::malformed(
                        &path,
                        Some(n),
                        "named in model.safetensors.index.json but absent from this shard",
                    ));
                }
            }
        }
        files.push(path);
        maps.push(map);
        headers.push(header);
    }
    let mut tensors = Vec::new();
    let (ct, plain) = match ct_config {
        Some(c) => {
            let entries: Vec<Vec<st::StEntry>> =
                headers.iter().map(|h| h.entries.clone()).collect();
            let (ct, nodes, plain) = CtRead::new(c, &files, &entries, &maps)?;
            tensors = nodes;
            (Some(ct), plain)
        }
        None => (
            None,
            headers
                .iter()
                .enumerate()
                .flat_map(|(i, h)| h.entries.iter().map(move |e| (i, e.clone())))
                .collect(),
        ),
    };
    for (file_index, e) in plain {
        let dtype = source_dtype(&files[file_index], &e.name, &e.dtype)?;
        tensors.push(node(
            &e.name,
            e.shape.clone(),
            Source {
                file: file_index,
                dtype,
                offset: e.start,
                len: e.end - e.start,
            },
        ));
    }
    // File order, then offset order.
    tensors.sort_by_key(|t| (t.source.file, t.source.offset));

    // Before the tokenizer is padded to vocab_size (and anything else is
    // sized from the config): every dimension it states against the tensors.
    hf::check_tensor_dims(
        &config_path,
        &arch,
        tensors
            .iter()
            .map(|t| (t.source_name.as_str(), t.shape.as_slice())),
    )?;
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    attach_computed(
        &passes::arch::rope::computed_tensors(&arch),
        &config_path,
        &mut files,
        &mut maps,
        &mut tensors,
    );
    let (tokenizer, chat_templates) =
        tokenizer::convert(dir, &config, arch.vocab, &opts.tokenizer)?;
    let warnings = hf::warnings(dir, spec, &config);
    Ok(Loaded {
        kind: InputKind::HfDir,
        model: Model {
            files,
            arch: Some(arch),
            tensors,
            info: ModelInfo {
                name: Some(name),
                tokenizer: Some(tokenizer),
                chat_templates,
                in_metadata: false,
            },
            ..Model::default()
        },
        maps,
        gguf: None,
        safetensors: headers,
        warnings,
        ct,
    })
}

/// A checkpoint directory as it stands, for `kiln inspect` of what kiln
/// cannot convert: every safetensors header (tensors of any name and dtype)
/// and the config's architecture facts when they parse; nothing is checked
/// beyond what reading the files needs (no tensors are listed as sources,
/// no tokenizer is converted). Only unreadable files are refused.
pub fn load_hf_dir_as_is(dir: &Path) -> Result<Loaded> {
    let arch = hf::read_json(&dir.join("config.json"))
        .ok()
        .and_then(|c| passes::arch::from_hf_config(&c).ok());
    let mut files = Vec::new();
    let mut maps = Vec::new();
    let mut headers = Vec::new();
    for (path, _) in hf::weight_files(dir)? {
        let map = MappedFile::open(&path)?;
        headers.push(st::parse(&path, map.bytes())?);
        files.push(path);
        maps.push(map);
    }
    Ok(Loaded {
        kind: InputKind::HfDir,
        model: Model {
            files,
            arch,
            ..Model::default()
        },
        maps,
        gguf: None,
        safetensors: headers,
        warnings: Vec::new(),
        ct: None,
    })
}

/// Serve `computed` tensors (values from config.json, already in GGUF
/// naming) like a file's: their f32 bytes in one in-memory map, listed under
/// `config` (the file they come from, for messages and input checks), each
/// node marked [`NoteKind::Computed`] so normalize keeps its name.
fn attach_computed(
    computed: &[ComputedTensor],
    config: &Path,
    files: &mut Vec<PathBuf>,
    maps: &mut Vec<MappedFile>,
    tensors: &mut Vec<TensorNode>,
) {
    if computed.is_empty() {
        return;
    }
    let file = files.len();
    let mut bytes = Vec::new();
    for c in computed {
        let offset = bytes.len() as u64;
        bytes.extend(c.values.iter().flat_map(|v| v.to_le_bytes()));
        let mut t = node(
            &c.name,
            c.shape.clone(),
            Source {
                file,
                dtype: SourceDType::F32,
                offset,
                len: bytes.len() as u64 - offset,
            },
        );
        t.notes.push(Note::new(
            NoteKind::Computed {
                from: c.from.clone(),
            },
            format!("computed from {}", c.from),
        ));
        tensors.push(t);
    }
    files.push(config.to_path_buf());
    maps.push(MappedFile::computed(bytes));
}

/// [`Arch`] from GGUF metadata (`{arch}.block_count` etc.), when present.
pub fn arch_from_gguf(md: &Metadata) -> Option<Arch> {
    let family = md.get("general.architecture")?.as_str()?.to_string();
    let get = |k: &str| {
        md.get(&format!("{family}.{k}"))
            .and_then(MetaValue::as_u64)
            .map(|v| v as usize)
    };
    let getf = |k: &str| md.get(&format!("{family}.{k}")).and_then(MetaValue::as_f64);
    let hidden = get("embedding_length")?;
    let n_head = get("attention.head_count").filter(|&h| h > 0)?;
    let vocab = md
        .get("tokenizer.ggml.tokens")
        .and_then(|t| match t {
            MetaValue::Array(a) => Some(a.len()),
            _ => None,
        })
        .or_else(|| get("vocab_size"))
        .unwrap_or(0);
    let mut arch = Arch {
        hf_architecture: None,
        n_layer: get("block_count")?,
        hidden,
        n_head,
        n_head_kv: get("attention.head_count_kv").unwrap_or(n_head),
        head_dim: get("attention.key_length").unwrap_or(hidden / n_head),
        ffn: get("feed_forward_length").unwrap_or(0),
        vocab,
        context_length: get("context_length").unwrap_or(0),
        rope_theta: getf("rope.freq_base").unwrap_or(10000.0) as f32,
        rms_eps: getf("attention.layer_norm_rms_epsilon").unwrap_or(1e-6) as f32,
        tied_embeddings: false,
        n_expert: get("expert_count").unwrap_or(0),
        n_expert_used: get("expert_used_count").unwrap_or(0),
        rope_scaling: passes::arch::rope::from_gguf(
            md,
            &family,
            get("context_length").unwrap_or(0),
        ),
        expert_ffn: get("expert_feed_forward_length"),
        shared_ffn: get("expert_shared_feed_forward_length").unwrap_or(0),
        family,
        ..Arch::default()
    };
    if let Some(e) = passes::arch::spec_for_gguf(&arch.family).and_then(|s| s.extension) {
        (e.read_gguf)(md, &mut arch);
    }
    Some(arch)
}

fn load_gguf(path: &Path, map: MappedFile) -> Result<Loaded> {
    let mut g = gguf::parse(path, map.bytes())?;
    let mut tensors = Vec::with_capacity(g.tensors.len());
    for t in &g.tensors {
        let ty = GgmlType::from_id(t.ty.id).ok_or_else(|| {
            Error::unsupported(path, Some(&t.name), format!("type {} cannot be decoded by kiln yet (it decodes F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K)", t.ty.name))
        });
        let dtype = match ty {
            Ok(GgmlType::F32) => SourceDType::F32,
            Ok(GgmlType::F16) => SourceDType::F16,
            Ok(GgmlType::BF16) => SourceDType::BF16,
            Ok(t) => SourceDType::Ggml(t),
            // Unknown types still list for inspection; conversion refuses them.
            Err(_) => continue,
        };
        tensors.push(node(
            &t.name,
            t.shape(),
            Source {
                file: 0,
                dtype,
                offset: t.offset,
                len: t.bytes,
            },
        ));
    }
    let mut arch = arch_from_gguf(&g.metadata);
    if let Some(a) = &mut arch {
        a.tied_embeddings = !g.tensors.iter().any(|t| t.name == "output.weight");
        // Every consumer (estimate, eval, the emitter's u32 keys) sizes from these.
        if let Err(e) = passes::arch::limits::check_caps(a) {
            let reason = match e {
                passes::arch::limits::LimitError::OverCap {
                    field,
                    value,
                    cap,
                    name,
                } => format!(
                    "key `{}.{}` is {value}, above kiln's cap of {cap} ({name})",
                    a.family,
                    field.gguf()
                ),
                other => other.to_string(),
            };
            return Err(Error::malformed(path, None, reason));
        }
    }
    Ok(Loaded {
        kind: InputKind::Gguf { version: g.version },
        model: Model {
            files: vec![path.to_path_buf()],
            arch,
            tensors,
            info: ModelInfo {
                in_metadata: true,
                ..ModelInfo::default()
            },
            metadata: std::mem::take(&mut g.metadata),
            ..Model::default()
        },
        maps: vec![map],
        gguf: Some(g),
        safetensors: Vec::new(),
        warnings: Vec::new(),
        ct: None,
    })
}

/// Why a GGUF's metadata gives no architecture (see [`arch_from_gguf`]), for
/// messages.
pub fn gguf_arch_missing(md: &Metadata) -> String {
    match md.get("general.architecture") {
        None => "no architecture: the GGUF has no `general.architecture` key".into(),
        Some(MetaValue::String(a)) => format!(
            "no architecture: `general.architecture` is `{a}` but `{a}.block_count`, `{a}.embedding_length` or a non-zero `{a}.attention.head_count` is missing"
        ),
        Some(v) => format!("no architecture: `general.architecture` is {v:?}, not a string"),
    }
}

/// The first tensor of a GGUF that kiln cannot decode, with its type name.
pub fn undecodable(g: &GgufFile) -> Option<(&str, &'static str)> {
    g.tensors
        .iter()
        .find(|t| GgmlType::from_id(t.ty.id).is_none())
        .map(|t| (t.name.as_str(), t.ty.name))
}
