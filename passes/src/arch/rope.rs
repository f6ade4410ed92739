//! RoPE scaling: `rope_scaling` (transformers v4) or `rope_parameters`
//! (v5) of a config.json, validated, carried as llama.cpp's converter
//! carries it, and read back from a GGUF's `rope.scaling.*` keys.
//!
//! What must stay true:
//! - a family accepts only the kinds its spec lists
//!   (`Refuse::RopeScaling`); any other type (`dynamic`, an unknown name)
//!   is refused by name, and so is a missing or non-positive value the
//!   kind needs, or a value llama.cpp would not apply as transformers does
//!   (a YaRN `attention_factor` other than its default, `beta_fast` /
//!   `beta_slow` other than 32 / 1, which llama.cpp's llama and qwen2
//!   loaders do not read, `truncate: false`, `mscale` with `mscale_all_dim`,
//!   a longrope attention factor other than the one llama.cpp derives);
//! - `llama3` scaling becomes the `rope_freqs` tensor, computed as
//!   llama.cpp's converter computes it (`conversion/llama.py`, in f32 as
//!   torch does), and no `rope.scaling.*` key; `linear` and `yarn` become
//!   the keys its base converter writes; `longrope` becomes the
//!   `rope_factors_long` / `rope_factors_short` tensors plus
//!   `rope.scaling.attn_factor` and `rope.scaling.original_context_length`
//!   (`conversion/phi.py`);
//! - the original context is the top-level `original_max_position_embeddings`
//!   when config.json has one (transformers v5 gives it priority), else the
//!   one in `rope_scaling`. For `llama3`, llama.cpp's converter reads only
//!   the top-level one (default 8192, the value every Llama 3.x config has
//!   in `rope_scaling`); kiln follows transformers, which computes the
//!   model's frequencies from `rope_scaling`'s.

use serde_json::Value;

use crate::ir::{Arch, ComputedTensor, MetaValue, Metadata, RopeScaling};

/// The RoPE scaling kinds kiln carries, as config.json names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Linear,
    Llama3,
    Yarn,
    LongRope,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Linear => "linear",
            Kind::Llama3 => "llama3",
            Kind::Yarn => "yarn",
            Kind::LongRope => "longrope",
        }
    }

    fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "linear" => Kind::Linear,
            "llama3" => Kind::Llama3,
            "yarn" => Kind::Yarn,
            // Phi-3's early configs call longrope `su`.
            "longrope" | "su" => Kind::LongRope,
            _ => return None,
        })
    }
}

/// Every kind, for reading configs kiln only estimates.
pub const ALL: &[Kind] = &[Kind::Linear, Kind::Llama3, Kind::Yarn, Kind::LongRope];

fn and_list(kinds: &[Kind]) -> String {
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    match names.as_slice() {
        [] => "none".into(),
        [one] => (*one).into(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The RoPE scaling of `c` (a config.json's text part) for a model of HF
/// class `class` whose family carries `allowed`; `Ok(None)`: plain RoPE.
/// `Err` is the whole sentence (no file name).
pub fn parse(c: &Value, class: &str, allowed: &[Kind]) -> Result<Option<RopeScaling>, String> {
    let (field, obj) = match (c.get("rope_scaling"), c.get("rope_parameters")) {
        (Some(v), _) if !v.is_null() => ("rope_scaling", v),
        (_, Some(v)) if !v.is_null() => ("rope_parameters", v),
        _ => return Ok(None),
    };
    let obj = obj
        .as_object()
        .ok_or_else(|| format!("`{field}` is not an object"))?;
    let (type_key, kind) = match (obj.get("rope_type"), obj.get("type")) {
        (Some(v), _) if !v.is_null() => ("rope_type", v),
        (_, Some(v)) if !v.is_null() => ("type", v),
        // transformers v5 writes `rope_parameters` without a type for
        // plain RoPE; a `rope_scaling` without one is a mistake.
        _ if field == "rope_parameters" => return Ok(None),
        _ => return Err(format!("`{field}` has no `rope_type` (or `type`)")),
    };
    let kind_name = kind
        .as_str()
        .ok_or_else(|| format!("`{field}.{type_key}` is not a string"))?;
    if kind_name == "default" {
        return Ok(None);
    }
    let kind = Kind::from_name(kind_name)
        .filter(|k| allowed.contains(k))
        .ok_or_else(|| {
            format!(
                "`{field}.{type_key} = {}` is not supported for `{}` (kiln carries {} RoPE scaling for it, as llama.cpp does)",
                crate::printable(kind_name),
                crate::printable(class),
                and_list(allowed)
            )
        })?;
    let f = Fields { c, obj, field };
    let scaling = match kind {
        Kind::Linear => RopeScaling::Linear {
            factor: f
                .positive("factor")?
                .ok_or_else(|| f.missing("factor", kind))?,
        },
        Kind::Llama3 => {
            let need = |key: &str| f.positive(key)?.ok_or_else(|| f.missing(key, kind));
            let factor = need("factor")?;
            let low_freq_factor = need("low_freq_factor")?;
            let high_freq_factor = need("high_freq_factor")?;
            if high_freq_factor <= low_freq_factor {
                return Err(format!(
                    "`{field}.high_freq_factor` ({high_freq_factor}) must be greater than `low_freq_factor` ({low_freq_factor})"
                ));
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context: f
                    .original_context()?
                    .ok_or_else(|| f.missing("original_max_position_embeddings", kind))?,
            }
        }
        Kind::Yarn => yarn(&f)?,
        Kind::LongRope => longrope(&f)?,
    };
    Ok(Some(scaling))
}

/// The fields of one `rope_scaling` object.
struct Fields<'a> {
    c: &'a Value,
    obj: &'a serde_json::Map<String, Value>,
    field: &'static str,
}

impl Fields<'_> {
    fn missing(&self, key: &str, kind: Kind) -> String {
        format!(
            "`{}.{key}` is missing ({} RoPE scaling needs it)",
            self.field,
            kind.name()
        )
    }

    /// A number, `None` when absent or null.
    fn number(&self, key: &str) -> Result<Option<f64>, String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("`{}.{key}` is not a number", self.field)),
        }
    }

    /// A finite positive number that fits an f32.
    fn positive(&self, key: &str) -> Result<Option<f32>, String> {
        match self.number(key)? {
            None => Ok(None),
            Some(v) if v.is_finite() && v > 0.0 && (v as f32).is_finite() && v as f32 > 0.0 => {
                Ok(Some(v as f32))
            }
            Some(v) => Err(format!(
                "`{}.{key}` is {v}: it must be a positive number",
                self.field
            )),
        }
    }

    /// The pre-scaling context: top-level `original_max_position_embeddings`,
    /// else `rope_scaling`'s.
    fn original_context(&self) -> Result<Option<usize>, String> {
        let top = self.c.get("original_max_position_embeddings");
        let (label, v) = match (top, self.obj.get("original_max_position_embeddings")) {
            (Some(v), _) if !v.is_null() => ("original_max_position_embeddings".to_string(), v),
            (_, Some(v)) if !v.is_null() => (
                format!("{}.original_max_position_embeddings", self.field),
                v,
            ),
            _ => return Ok(None),
        };
        match v.as_u64() {
            Some(n) if n > 0 && n <= u64::from(u32::MAX) => Ok(Some(n as usize)),
            _ => Err(format!(
                "`{label}` is {v}: it must be a positive integer below 2^32"
            )),
        }
    }
}

/// transformers' `get_mscale(factor)`: the YaRN magnitude scale.
pub fn yarn_mscale(factor: f32) -> f32 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * factor.ln() + 1.0
    }
}

fn yarn(f: &Fields<'_>) -> Result<RopeScaling, String> {
    let field = f.field;
    let factor = f
        .positive("factor")?
        .ok_or_else(|| f.missing("factor", Kind::Yarn))?;
    let original_context = match f.original_context()? {
        Some(n) => n,
        // transformers (and so llama.cpp's converter, which reads the
        // config through it) default it to max_position_embeddings.
        None => {
            f.c.get("max_position_embeddings")
                .and_then(Value::as_u64)
                .filter(|&n| n > 0 && n <= u64::from(u32::MAX))
                .ok_or_else(|| f.missing("original_max_position_embeddings", Kind::Yarn))?
                as usize
        }
    };
    // llama.cpp derives the magnitude scale from `factor` alone.
    let mut attn_factor = None;
    for key in ["attention_factor", "attn_factor"] {
        if let Some(a) = f.positive(key)? {
            let want = yarn_mscale(factor);
            if (a - want).abs() > 1e-6 * want {
                return Err(format!(
                    "`{field}.{key}` is {a}: llama.cpp computes YaRN's attention factor from `factor` (0.1 ln(factor) + 1 = {want}) and would not apply it"
                ));
            }
            attn_factor = Some(a);
        }
    }
    let truthy =
        |key: &str| -> Result<bool, String> { Ok(f.number(key)?.is_some_and(|v| v != 0.0)) };
    if truthy("mscale")? && truthy("mscale_all_dim")? {
        return Err(format!(
            "`{field}.mscale` with `mscale_all_dim` is not supported: llama.cpp's converter does not carry them for this family"
        ));
    }
    if f.obj.get("truncate").and_then(Value::as_bool) == Some(false) {
        return Err(format!(
            "`{field}.truncate = false` is not supported: llama.cpp always rounds YaRN's correction range"
        ));
    }
    if let Some(e) = f.number("extrapolation_factor")? {
        if e != 1.0 {
            return Err(format!(
                "`{field}.extrapolation_factor` is {e}: transformers does not read it and llama.cpp would apply it"
            ));
        }
    }
    // llama.cpp's llama and qwen2 loaders never read the beta keys: their
    // YaRN always runs with its defaults.
    let beta_fast = f.positive("beta_fast")?;
    let beta_slow = f.positive("beta_slow")?;
    for (key, value, default) in [
        ("beta_fast", beta_fast, 32.0),
        ("beta_slow", beta_slow, 1.0),
    ] {
        if let Some(v) = value.filter(|&v| v != default) {
            return Err(format!(
                "`{field}.{key}` is {v}: llama.cpp runs this architecture's YaRN with {key} {default} whatever the file says"
            ));
        }
    }
    Ok(RopeScaling::Yarn {
        factor,
        original_context,
        beta_fast,
        beta_slow,
        attn_factor,
    })
}

fn longrope(f: &Fields<'_>) -> Result<RopeScaling, String> {
    let field = f.field;
    if let Some(p) = f.c.get("partial_rotary_factor").and_then(Value::as_f64) {
        if p != 1.0 {
            return Err(format!(
                "`partial_rotary_factor = {p}` is not supported with longrope yet (kiln rotates whole heads)"
            ));
        }
    }
    let original_context = f
        .original_context()?
        .ok_or_else(|| f.missing("original_max_position_embeddings", Kind::LongRope))?;
    let factors = |key: &str| -> Result<Vec<f32>, String> {
        let list = f
            .obj
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| f.missing(key, Kind::LongRope))?;
        list.iter()
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| {
                        format!("`{field}.{key}` holds {v}: factors must be positive numbers")
                    })
            })
            .collect()
    };
    let (long, short) = (factors("long_factor")?, factors("short_factor")?);
    let max_pos =
        f.c.get("max_position_embeddings")
            .and_then(Value::as_u64)
            .ok_or_else(|| "config.json has no integer `max_position_embeddings`".to_string())?;
    // llama.cpp (conversion/phi.py): from the two context lengths alone.
    let scale = max_pos as f64 / original_context as f64;
    let attn = |scale: f64| {
        if scale > 1.0 {
            (1.0 + scale.ln() / (original_context as f64).ln()).sqrt()
        } else {
            1.0
        }
    };
    let llama_cpp = attn(scale);
    // transformers: `attention_factor`, else from `factor`, else the same.
    let hf = match (f.positive("attention_factor")?, f.positive("factor")?) {
        (Some(a), _) => f64::from(a),
        (None, Some(factor)) => attn(f64::from(factor)),
        (None, None) => llama_cpp,
    };
    if (hf - llama_cpp).abs() > 1e-6 * llama_cpp {
        return Err(format!(
            "`{field}.attention_factor`/`factor` give an attention factor of {hf}, but llama.cpp derives {llama_cpp} from max_position_embeddings / original_max_position_embeddings"
        ));
    }
    Ok(RopeScaling::LongRope {
        original_context,
        attn_factor: llama_cpp as f32,
        long,
        short,
    })
}

/// Check a family's per-frequency factor lists against the rotary dimension
/// (`head_dim / 2` values each).
pub fn check_dims(arch: &Arch) -> Result<(), String> {
    if let Some(RopeScaling::LongRope { long, short, .. }) = &arch.rope_scaling {
        let want = arch.head_dim / 2;
        for (key, v) in [("long_factor", long), ("short_factor", short)] {
            if v.len() != want {
                return Err(format!(
                    "`rope_scaling.{key}` has {} values; head_dim {} needs {want}",
                    v.len(),
                    arch.head_dim
                ));
            }
        }
    }
    Ok(())
}

/// llama.cpp's `rope_freqs` for llama3 scaling (`conversion/llama.py`),
/// in torch's f32 arithmetic: `base ** (arange(0, dim, 2) / dim)` and each
/// step on f32 values, Python scalars rounded to f32 where they meet them.
pub fn llama3_rope_freqs(
    rope_theta: f32,
    head_dim: usize,
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original_context: usize,
) -> Vec<f32> {
    let old = original_context as f64;
    let low_wavelen = (old / f64::from(low_freq_factor)) as f32;
    let high_wavelen = (old / f64::from(high_freq_factor)) as f32;
    let span = (f64::from(high_freq_factor) - f64::from(low_freq_factor)) as f32;
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let dim = head_dim as f32;
    (0..head_dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0 / rope_theta.powf(i as f32 / dim);
            let wavelen = two_pi / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old as f32 / wavelen - low_freq_factor) / span;
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// The tensors `arch`'s RoPE scaling adds to a GGUF (llama3's `rope_freqs`,
/// longrope's `rope_factors_long` / `rope_factors_short`), in GGUF naming.
pub fn computed_tensors(arch: &Arch) -> Vec<ComputedTensor> {
    let tensor = |name: &str, values: Vec<f32>, kind: &str| ComputedTensor {
        name: name.into(),
        shape: vec![values.len()],
        values,
        from: format!("config.json rope_scaling ({kind})"),
    };
    match &arch.rope_scaling {
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        }) => vec![tensor(
            "rope_freqs.weight",
            llama3_rope_freqs(
                arch.rope_theta,
                arch.head_dim,
                *factor,
                *low_freq_factor,
                *high_freq_factor,
                *original_context,
            ),
            "llama3",
        )],
        Some(RopeScaling::LongRope { long, short, .. }) => vec![
            tensor("rope_factors_long.weight", long.clone(), "longrope"),
            tensor("rope_factors_short.weight", short.clone(), "longrope"),
        ],
        _ => Vec::new(),
    }
}

/// The `rope.scaling.*` keys llama.cpp's converter writes for `arch`'s
/// scaling, under architecture `f`.
pub fn add_metadata(md: &mut Metadata, f: &str, arch: &Arch) {
    let key = |k: &str| format!("{f}.rope.scaling.{k}");
    let text = |s: &str| MetaValue::String(s.into());
    let ctx = |n: usize| MetaValue::U32(n as u32);
    match &arch.rope_scaling {
        None | Some(RopeScaling::Llama3 { .. }) => {}
        Some(RopeScaling::Linear { factor }) => {
            md.set(&key("type"), text("linear"));
            md.set(&key("factor"), MetaValue::F32(*factor));
        }
        Some(RopeScaling::Yarn {
            factor,
            original_context,
            beta_fast,
            beta_slow,
            attn_factor,
        }) => {
            md.set(&key("type"), text("yarn"));
            md.set(&key("factor"), MetaValue::F32(*factor));
            md.set(&key("original_context_length"), ctx(*original_context));
            for (k, v) in [
                ("yarn_attn_factor", attn_factor),
                ("yarn_beta_fast", beta_fast),
                ("yarn_beta_slow", beta_slow),
            ] {
                if let Some(v) = v {
                    md.set(&key(k), MetaValue::F32(*v));
                }
            }
        }
        Some(RopeScaling::LongRope {
            original_context,
            attn_factor,
            ..
        }) => {
            md.set(&key("type"), text("longrope"));
            md.set(&key("original_context_length"), ctx(*original_context));
            md.set(&key("attn_factor"), MetaValue::F32(*attn_factor));
        }
    }
}

/// The scaling a GGUF's keys describe (`rope.scaling.type` and the values
/// it needs); llama3's lives in the `rope_freqs` tensor and longrope's
/// factors in theirs, so those read back with no key / empty lists.
pub fn from_gguf(md: &Metadata, f: &str, context_length: usize) -> Option<RopeScaling> {
    let get = |k: &str| md.get(&format!("{f}.rope.scaling.{k}"));
    let num = |k: &str| get(k).and_then(MetaValue::as_f64).map(|v| v as f32);
    let orig = get("original_context_length")
        .and_then(MetaValue::as_u64)
        .map_or(context_length, |v| v as usize);
    match get("type").and_then(MetaValue::as_str)? {
        "linear" => Some(RopeScaling::Linear {
            factor: num("factor").unwrap_or(1.0),
        }),
        "yarn" => Some(RopeScaling::Yarn {
            factor: num("factor").unwrap_or(1.0),
            original_context: orig,
            beta_fast: num("yarn_beta_fast"),
            beta_slow: num("yarn_beta_slow"),
            attn_factor: num("yarn_attn_factor"),
        }),
        "longrope" => Some(RopeScaling::LongRope {
            original_context: orig,
            attn_factor: num("attn_factor").unwrap_or(1.0),
            long: Vec::new(),
            short: Vec::new(),
        }),
        _ => None,
    }
}

/// The keys a `rope_parameters` entry may hold: the type, the base, the
/// rotary fraction and every scaling kind's values.
const V5_KEYS: &[&str] = &[
    "rope_type",
    "type",
    "rope_theta",
    "partial_rotary_factor",
    "factor",
    "original_max_position_embeddings",
    "low_freq_factor",
    "high_freq_factor",
    "attention_factor",
    "attn_factor",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
    "truncate",
    "extrapolation_factor",
    "long_factor",
    "short_factor",
];

/// The layer kinds transformers v5 keys per-layer-type `rope_parameters`
/// by (Gemma 3: one base for global layers, another for sliding ones).
const V5_LAYER_TYPES: &[&str] = &["full_attention", "sliding_attention"];

/// The RoPE scaling object of a config (v4 `rope_scaling`, else what
/// [`from_v5`] left of `rope_parameters`) with its field name, `None`
/// when neither is set.
pub fn scaling_of(c: &Value) -> Option<(&'static str, &Value)> {
    for field in ["rope_scaling", "rope_parameters"] {
        if let Some(v) = c.get(field).filter(|v| !v.is_null()) {
            return Some((field, v));
        }
    }
    None
}

/// transformers v5 moved `rope_theta`, the RoPE scaling and
/// `partial_rotary_factor` into `rope_parameters` (one object, or one per
/// layer type for Gemma 3). kiln reads the v4 fields, so this rewrites a
/// text config `c` into them: the base becomes `rope_theta` (and a
/// different sliding-layer base `rope_local_base_freq`), and
/// `rope_parameters` keeps only a scaling (a type other than `default`
/// with its values) or goes. `Ok(None)`: nothing to rewrite. Refused by
/// name: a key no RoPE kind has, a value contradicting the v4 field beside
/// it, a `partial_rotary_factor` other than 1 (kiln rotates whole heads),
/// scaling on sliding layers, a layer type other than the two above.
pub fn from_v5(c: &Value) -> Result<Option<Value>, String> {
    let Some(params) = c.get("rope_parameters").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let obj = params
        .as_object()
        .ok_or("`rope_parameters` is not an object")?;
    let mut out = c.clone();
    let Some(m) = out.as_object_mut() else {
        return Ok(None);
    };
    m.remove("rope_parameters");
    let per_layer = obj.keys().any(|k| V5_LAYER_TYPES.contains(&k.as_str()));
    let (full, full_label, sliding) = if per_layer {
        if let Some(k) = obj.keys().find(|k| !V5_LAYER_TYPES.contains(&k.as_str())) {
            return Err(format!(
                "`rope_parameters.{}` is not a layer type kiln knows (it reads {})",
                crate::printable(k),
                V5_LAYER_TYPES.join(" and ")
            ));
        }
        let entry = |k: &str| -> Result<Option<&serde_json::Map<String, Value>>, String> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_object()
                    .map(Some)
                    .ok_or_else(|| format!("`rope_parameters.{k}` is not an object")),
            }
        };
        let sliding = entry("sliding_attention")?;
        match entry("full_attention")? {
            Some(full) => (full, "rope_parameters.full_attention", sliding),
            None => (
                sliding.ok_or("`rope_parameters` names no layer type")?,
                "rope_parameters.sliding_attention",
                None,
            ),
        }
    } else {
        (obj, "rope_parameters", None)
    };
    let theta = flat_v5(m, full, full_label)?;
    if let Some(theta) = theta {
        agree(m, "rope_theta", theta, &format!("{full_label}.rope_theta"))?;
        m.insert("rope_theta".into(), theta.into());
    }
    if let Some(s) = sliding {
        let label = "rope_parameters.sliding_attention";
        let mut scratch = serde_json::Map::new();
        let local = flat_v5(&mut scratch, s, label)?;
        if let Some((_, v)) = scaling_of(&Value::Object(scratch)) {
            let kind = v.get("rope_type").or_else(|| v.get("type"));
            return Err(format!(
                "`{label}.rope_type = {}` is not supported: kiln carries RoPE scaling on full-attention layers only",
                kind.and_then(Value::as_str).map_or_else(|| "?".into(), crate::printable)
            ));
        }
        if let Some(local) = local.filter(|&l| Some(l) != theta) {
            agree(
                m,
                "rope_local_base_freq",
                local,
                &format!("{label}.rope_theta"),
            )?;
            m.insert("rope_local_base_freq".into(), local.into());
        }
    }
    Ok(Some(out))
}

/// One flat `rope_parameters` entry `e` (named `label`) into `m`: its
/// scaling as `rope_parameters` when of a non-default type, checked
/// against a v4 `rope_scaling` beside it; returns its `rope_theta`.
fn flat_v5(
    m: &mut serde_json::Map<String, Value>,
    e: &serde_json::Map<String, Value>,
    label: &str,
) -> Result<Option<f64>, String> {
    if let Some(k) = e.keys().find(|k| !V5_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "`{label}.{}` is unknown to kiln: no RoPE kind it carries reads it",
            crate::printable(k)
        ));
    }
    let number = |key: &str| -> Result<Option<f64>, String> {
        match e.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
                _ => Err(format!(
                    "`{label}.{key}` is {v}: it must be a positive number"
                )),
            },
        }
    };
    if let Some(p) = number("partial_rotary_factor")?.filter(|&p| p != 1.0) {
        return Err(format!(
            "`{label}.partial_rotary_factor = {p}` is not supported: kiln rotates whole heads"
        ));
    }
    let theta = number("rope_theta")?;
    let kind = e
        .get("rope_type")
        .or_else(|| e.get("type"))
        .filter(|v| !v.is_null());
    if kind.is_some_and(|k| k.as_str() != Some("default")) {
        let mut scaling = e.clone();
        scaling.remove("rope_theta");
        scaling.remove("partial_rotary_factor");
        let scaling = Value::Object(scaling);
        if let Some(v4) = m.get("rope_scaling").filter(|v| !v.is_null()) {
            if *v4 != scaling {
                return Err(format!(
                    "`{label}` and `rope_scaling` both set RoPE scaling, differently ({scaling} vs {v4})"
                ));
            }
            m.remove("rope_scaling");
        }
        m.insert("rope_parameters".into(), scaling);
    }
    Ok(theta)
}

/// Refuse a v5 value `v` (named `label`) that contradicts the v4 `field`
/// beside it.
fn agree(
    m: &serde_json::Map<String, Value>,
    field: &str,
    v: f64,
    label: &str,
) -> Result<(), String> {
    match m.get(field).filter(|x| !x.is_null()) {
        Some(old) if old.as_f64() != Some(v) => Err(format!(
            "`{label}` ({v}) contradicts `{field}` ({old}) beside it"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn phi3(rope: Value) -> Value {
        json!({
            "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 4096,
            "original_max_position_embeddings": 256, "rope_scaling": rope
        })
    }

    #[test]
    fn longrope_carries_factors_and_llama_cpp_attention_factor() {
        let long: Vec<f64> = (0..8).map(|i| 1.0 + i as f64).collect();
        let short = vec![1.0; 8];
        let c = phi3(json!({"type": "longrope", "long_factor": long, "short_factor": short}));
        let s = parse(&c, "Phi3ForCausalLM", &[Kind::LongRope])
            .unwrap()
            .unwrap();
        let want = (1.0 + (4096.0f64 / 256.0).ln() / 256f64.ln()).sqrt() as f32;
        match &s {
            RopeScaling::LongRope {
                original_context,
                attn_factor,
                long,
                short,
            } => {
                assert_eq!(*original_context, 256);
                assert_eq!(*attn_factor, want);
                assert_eq!(long[7], 8.0);
                assert_eq!(short.len(), 8);
            }
            other => panic!("{other:?}"),
        }
        let arch = Arch {
            family: "phi3".into(),
            head_dim: 16,
            rope_scaling: Some(s),
            ..Arch::default()
        };
        assert!(check_dims(&arch).is_ok());
        let names: Vec<String> = computed_tensors(&arch)
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(
            names,
            ["rope_factors_long.weight", "rope_factors_short.weight"]
        );
        let mut md = Metadata::default();
        add_metadata(&mut md, "phi3", &arch);
        assert_eq!(
            md.get("phi3.rope.scaling.attn_factor"),
            Some(&MetaValue::F32(want))
        );
        assert_eq!(
            md.get("phi3.rope.scaling.original_context_length"),
            Some(&MetaValue::U32(256))
        );
        // An attention factor llama.cpp would not use is refused.
        let c = phi3(
            json!({"type": "longrope", "long_factor": vec![1.0; 8], "short_factor": vec![1.0; 8], "attention_factor": 1.5}),
        );
        assert!(parse(&c, "Phi3ForCausalLM", &[Kind::LongRope])
            .unwrap_err()
            .contains("llama.cpp derives"));
        let c = phi3(json!({"type": "longrope", "short_factor": vec![1.0; 8]}));
        assert!(parse(&c, "Phi3ForCausalLM", &[Kind::LongRope])
            .unwrap_err()
            .contains("long_factor` is missing"));
    }

    #[test]
    fn gguf_keys_read_back() {
        let arch = Arch {
            family: "qwen2".into(),
            rope_scaling: Some(RopeScaling::Yarn {
                factor: 4.0,
                original_context: 32768,
                beta_fast: Some(32.0),
                beta_slow: None,
                attn_factor: None,
            }),
            ..Arch::default()
        };
        let mut md = Metadata::default();
        add_metadata(&mut md, "qwen2", &arch);
        assert_eq!(from_gguf(&md, "qwen2", 131072), arch.rope_scaling);
        assert_eq!(from_gguf(&Metadata::default(), "qwen2", 1), None);
    }
}
