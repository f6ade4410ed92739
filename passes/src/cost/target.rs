//! Accelerator target profiles: the TOML schema, its parser and validator, and
//! the built-in profiles embedded from `targets/*.toml`.
//!
//! What must stay true:
//! - a figure is either a number with a source or the word `"unknown"`; a
//!   missing figure is an error (so a forgotten field is never read as "not
//!   published"), and a known figure without an entry in `[sources]` is an
//!   error (so every number can be traced);
//! - `[peak_tflops]` lists dense rates of native formats only: a format that is
//!   absent is not native, one marked `"unknown"` is native but unpublished;
//! - ids are lowercase words joined by dashes and match the file name of a
//!   built-in profile;
//! - `[runtimes]` names known runtimes ([`schemes::RUNTIMES`]) and lists what
//!   each runs natively there: `gguf`, `f16`, `bf16` or a compressed-tensors
//!   scheme ([`CtScheme`]); an unknown name is refused by name with a "did
//!   you mean", and every listed runtime has a source (`[runtime_sources]`,
//!   or the general `[sources] runtimes`);
//! - this module never reads files: callers hand it text (the built-ins are
//!   compiled in with `include_str!`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::schemes::{self, CtScheme};
use super::CostError;

/// A published figure, or the explicit statement that it is not published.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Figure {
    Known(f64),
    Unknown,
}

impl Figure {
    pub fn get(self) -> Option<f64> {
        match self {
            Figure::Known(v) => Some(v),
            Figure::Unknown => None,
        }
    }

    pub fn is_known(self) -> bool {
        matches!(self, Figure::Known(_))
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Figure::Known(v) => write!(f, "{}", trim_float(*v)),
            Figure::Unknown => f.write_str("unknown"),
        }
    }
}

/// `80.0` as `80`, `66.9` as `66.9`.
pub fn trim_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

impl Serialize for Figure {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Figure::Known(v) => s.serialize_f64(*v),
            Figure::Unknown => s.serialize_str("unknown"),
        }
    }
}

impl<'de> Deserialize<'de> for Figure {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(v) => Ok(Figure::Known(v as f64)),
            Raw::Float(v) => Ok(Figure::Known(v)),
            Raw::Text(t) if t == "unknown" => Ok(Figure::Unknown),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "expected a number or \"unknown\", found \"{}\"",
                crate::printable(&t)
            ))),
        }
    }
}

/// Number formats a peak rate can be given for, in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
    Bf16,
    Fp8,
    Int8,
    Fp4,
    Int4,
}

impl Precision {
    pub const ALL: [Precision; 7] = [
        Precision::Fp32,
        Precision::Fp16,
        Precision::Bf16,
        Precision::Fp8,
        Precision::Int8,
        Precision::Fp4,
        Precision::Int4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
            Precision::Fp8 => "fp8",
            Precision::Int8 => "int8",
            Precision::Fp4 => "fp4",
            Precision::Int4 => "int4",
        }
    }
}

/// The kind of device, which selects the calibration factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    /// Discrete or datacenter GPUs and GPU-like accelerators (NVIDIA, AMD, Intel Gaudi).
    Gpu,
    /// Apple silicon (unified memory, Metal).
    Apple,
    Tpu,
    /// Inference ASICs with their own SDK (Inferentia, Trainium, Cloud AI 100).
    Npu,
    /// SRAM-only dataflow chips (Groq).
    Lpu,
    /// Host CPUs and laptop SoCs served through their CPU cores.
    Cpu,
}

impl DeviceClass {
    pub fn name(self) -> &'static str {
        match self {
            DeviceClass::Gpu => "gpu",
            DeviceClass::Apple => "apple",
            DeviceClass::Tpu => "tpu",
            DeviceClass::Npu => "npu",
            DeviceClass::Lpu => "lpu",
            DeviceClass::Cpu => "cpu",
        }
    }

    pub fn parse(s: &str) -> Option<DeviceClass> {
        [
            DeviceClass::Gpu,
            DeviceClass::Apple,
            DeviceClass::Tpu,
            DeviceClass::Npu,
            DeviceClass::Lpu,
            DeviceClass::Cpu,
        ]
        .into_iter()
        .find(|c| c.name() == s)
    }
}

/// Figures whose source must be named when known.
pub const FIGURES: &[&str] = &[
    "memory_gb",
    "memory_bandwidth_gbps",
    "onchip_mb",
    "tdp_w",
    "interconnect_gbps",
    "price_per_hour_usd",
];

/// Where a profile came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Compiled in from `targets/<id>.toml`.
    Builtin,
    /// A user's `--target-file`.
    File(String),
    /// Built from this machine (`cpu`).
    Host,
}

/// One accelerator (one device: a GPU, a chip, an SoC).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub id: String,
    pub name: String,
    pub vendor: String,
    pub class: DeviceClass,
    pub memory_gb: Figure,
    pub memory_bandwidth_gbps: Figure,
    pub onchip_mb: Figure,
    pub tdp_w: Figure,
    /// Device-to-device bandwidth per direction (GB/s).
    pub interconnect_gbps: Figure,
    pub price_per_hour_usd: Figure,
    pub price_source: Option<String>,
    /// Dense peak per native format (TFLOPS; TOPS for integers).
    pub peak_tflops: BTreeMap<Precision, Figure>,
    /// Runtime name -> what it runs natively on this target (`gguf`, `f16`,
    /// `bf16`, compressed-tensors scheme names).
    pub runtimes: BTreeMap<String, Vec<String>>,
    /// Runtime name -> where its list comes from.
    pub runtime_sources: BTreeMap<String, String>,
    /// Runtimes that load only single-group compressed-tensors checkpoints
    /// (no `mixed-precision`): the planner gives them one scheme throughout.
    pub single_group: Vec<String>,
    /// The largest E4M3 magnitude the device's FP8 holds (448 for OCP
    /// E4M3FN; 240 on Neuron, whose FP8 saturates there): FP8 weights for
    /// this target are scaled to it. `None`: 448.
    pub fp8_e4m3_max: Option<f64>,
    /// Figure name (or `peak_tflops`, `runtimes`) -> where it comes from.
    pub sources: BTreeMap<String, String>,
    /// Figures (`onchip_mb`, `peak_tflops`, `peak_tflops.fp32`) that are uncertain.
    pub uncertain: Vec<String>,
    pub notes: Vec<String>,
    pub origin: Origin,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    id: String,
    name: String,
    vendor: String,
    class: String,
    memory_gb: Option<Figure>,
    memory_bandwidth_gbps: Option<Figure>,
    onchip_mb: Option<Figure>,
    tdp_w: Option<Figure>,
    interconnect_gbps: Option<Figure>,
    price_per_hour_usd: Option<Figure>,
    price_source: Option<String>,
    #[serde(default)]
    uncertain: Vec<String>,
    #[serde(default)]
    notes: Vec<String>,
    #[serde(default)]
    peak_tflops: BTreeMap<String, Figure>,
    #[serde(default)]
    runtimes: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    runtime_sources: BTreeMap<String, String>,
    #[serde(default)]
    single_group: Vec<String>,
    fp8_e4m3_max: Option<f64>,
    #[serde(default)]
    sources: BTreeMap<String, String>,
}

/// Is `id` lowercase ASCII words joined by single dashes?
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.split('-').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

impl Target {
    /// Parse and validate one profile. `what` names the text in errors
    /// (`targets/h100-sxm.toml`, a user's path).
    pub fn from_toml(text: &str, what: &str, origin: Origin) -> Result<Target, CostError> {
        let bad = |msg: String| CostError::BadTarget {
            what: what.to_string(),
            msg,
        };
        let raw: RawTarget =
            toml::from_str(text).map_err(|e| bad(crate::suggest::toml_error(text, &e)))?;
        if !valid_id(&raw.id) {
            return Err(bad(format!(
                "id `{}` must be lowercase words joined by dashes (like `h100-sxm`)",
                crate::printable(&raw.id)
            )));
        }
        if raw.name.trim().is_empty() || raw.vendor.trim().is_empty() {
            return Err(bad("`name` and `vendor` must not be empty".into()));
        }
        let class = DeviceClass::parse(&raw.class).ok_or_else(|| {
            bad(format!(
                "class `{}` is not one of gpu, apple, tpu, npu, lpu, cpu",
                crate::printable(&raw.class)
            ))
        })?;
        let need = |v: Option<Figure>, key: &str| {
            v.ok_or_else(|| bad(format!("`{key}` is missing: give a number or \"unknown\"")))
        };
        let mut peak_tflops = BTreeMap::new();
        for (k, v) in raw.peak_tflops {
            let p = Precision::ALL
                .iter()
                .copied()
                .find(|p| p.name() == k)
                .ok_or_else(|| {
                    bad(format!(
                    "[peak_tflops] key `{k}` is not one of fp32, fp16, bf16, fp8, int8, fp4, int4"
                ))
                })?;
            peak_tflops.insert(p, v);
        }
        let t = Target {
            id: raw.id,
            name: raw.name,
            vendor: raw.vendor,
            class,
            memory_gb: need(raw.memory_gb, "memory_gb")?,
            memory_bandwidth_gbps: need(raw.memory_bandwidth_gbps, "memory_bandwidth_gbps")?,
            onchip_mb: need(raw.onchip_mb, "onchip_mb")?,
            tdp_w: need(raw.tdp_w, "tdp_w")?,
            interconnect_gbps: need(raw.interconnect_gbps, "interconnect_gbps")?,
            price_per_hour_usd: need(raw.price_per_hour_usd, "price_per_hour_usd")?,
            price_source: raw.price_source,
            peak_tflops,
            runtimes: raw.runtimes,
            runtime_sources: raw.runtime_sources,
            single_group: raw.single_group,
            fp8_e4m3_max: raw.fp8_e4m3_max,
            sources: raw.sources,
            uncertain: raw.uncertain,
            notes: raw.notes,
            origin,
        };
        t.validate().map_err(bad)?;
        Ok(t)
    }

    /// The figure named `key` (one of [`FIGURES`]).
    pub fn figure(&self, key: &str) -> Option<Figure> {
        Some(match key {
            "memory_gb" => self.memory_gb,
            "memory_bandwidth_gbps" => self.memory_bandwidth_gbps,
            "onchip_mb" => self.onchip_mb,
            "tdp_w" => self.tdp_w,
            "interconnect_gbps" => self.interconnect_gbps,
            "price_per_hour_usd" => self.price_per_hour_usd,
            _ => return None,
        })
    }

    /// Every rule a profile must keep; the message names the first broken one.
    pub fn validate(&self) -> Result<(), String> {
        for key in FIGURES {
            let fig = self.figure(key).expect("listed figure");
            if let Figure::Known(v) = fig {
                if !v.is_finite() || v <= 0.0 {
                    return Err(format!(
                        "`{key}` = {v} must be a positive number or \"unknown\""
                    ));
                }
                let sourced = if *key == "price_per_hour_usd" {
                    self.price_source
                        .as_deref()
                        .is_some_and(|s| !s.trim().is_empty())
                } else {
                    self.sources.get(*key).is_some_and(|s| !s.trim().is_empty())
                };
                if !sourced {
                    let want = if *key == "price_per_hour_usd" {
                        "`price_source`".to_string()
                    } else {
                        format!("`[sources] {key}`")
                    };
                    return Err(format!(
                        "`{key}` = {} has no source: add {want}",
                        trim_float(v)
                    ));
                }
            }
        }
        for (p, fig) in &self.peak_tflops {
            if let Figure::Known(v) = fig {
                if !v.is_finite() || *v <= 0.0 {
                    return Err(format!("peak_tflops.{} = {v} must be positive", p.name()));
                }
                if !self.sources.contains_key("peak_tflops") {
                    return Err(
                        "[peak_tflops] has figures but `[sources] peak_tflops` is missing".into(),
                    );
                }
            }
        }
        self.validate_runtimes()?;
        for key in self.sources.keys() {
            if !FIGURES.contains(&key.as_str())
                && !["peak_tflops", "runtimes", "fp8_e4m3_max"].contains(&key.as_str())
            {
                return Err(format!(
                    "[sources] names `{key}`, which is not a figure of the schema"
                ));
            }
        }
        for u in &self.uncertain {
            let ok = match u.split_once('.') {
                Some(("peak_tflops", p)) => Precision::ALL.iter().any(|x| x.name() == p),
                Some(_) => false,
                None => FIGURES.contains(&u.as_str()) || u == "peak_tflops",
            };
            if !ok {
                return Err(format!("uncertain entry `{u}` names no figure"));
            }
        }
        Ok(())
    }

    /// The `[runtimes]`, `[runtime_sources]`, `single_group` and
    /// `fp8_e4m3_max` rules.
    fn validate_runtimes(&self) -> Result<(), String> {
        let entries = schemes::runtime_entries();
        for (rt, list) in &self.runtimes {
            if !schemes::RUNTIMES.contains(&rt.as_str()) {
                return Err(format!(
                    "[runtimes] names runtime `{}`{}, not one of {}",
                    crate::printable(rt),
                    crate::suggest::did_you_mean(rt, schemes::RUNTIMES.iter().copied()),
                    schemes::RUNTIMES.join(", ")
                ));
            }
            for e in list {
                if !entries.contains(&e.as_str()) {
                    return Err(format!(
                        "runtime `{rt}` lists `{}`{}, which is not `gguf`, `f16`, `bf16` or a compressed-tensors scheme ({})",
                        crate::printable(e),
                        crate::suggest::did_you_mean(e, entries.iter().copied()),
                        CtScheme::ALL.map(|s| s.name()).join(", ")
                    ));
                }
            }
            let sourced = self
                .runtime_sources
                .get(rt)
                .or_else(|| self.sources.get("runtimes"))
                .is_some_and(|s| !s.trim().is_empty());
            if !sourced {
                return Err(format!(
                    "runtime `{rt}` has no source: add `[runtime_sources] {rt}` (or `[sources] runtimes`)"
                ));
            }
        }
        for rt in self.runtime_sources.keys().chain(&self.single_group) {
            if !self.runtimes.contains_key(rt) {
                return Err(format!(
                    "`{}` is named in [runtime_sources] or `single_group` but not listed in [runtimes]",
                    crate::printable(rt)
                ));
            }
        }
        if let Some(m) = self.fp8_e4m3_max {
            if m != 448.0 && m != 240.0 {
                return Err(format!(
                    "`fp8_e4m3_max` = {m} must be 448 (E4M3FN) or 240 (Neuron's saturating FP8)"
                ));
            }
            if !self.sources.contains_key("fp8_e4m3_max") {
                return Err("`fp8_e4m3_max` has no source: add `[sources] fp8_e4m3_max`".into());
            }
        }
        Ok(())
    }

    /// The runtime `--engine` names on this target and what it runs there:
    /// `vllm` is tpu-inference on a TPU, vllm-gaudi on Gaudi, and so on
    /// ([`schemes::engine_runtimes`]).
    pub fn runtime_for(&self, engine: &str) -> Option<(&str, &[String])> {
        schemes::engine_runtimes(engine)
            .iter()
            .find_map(|r| self.runtimes.get_key_value(*r))
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The compressed-tensors schemes `runtime` runs natively here, in
    /// [`CtScheme::ALL`] order.
    pub fn schemes_of(&self, runtime: &str) -> Vec<CtScheme> {
        let listed = self.runtimes.get(runtime);
        CtScheme::ALL
            .into_iter()
            .filter(|s| listed.is_some_and(|l| l.iter().any(|e| e == s.name())))
            .collect()
    }

    /// Does `runtime` load only single-group checkpoints here?
    pub fn is_single_group(&self, runtime: &str) -> bool {
        self.single_group.iter().any(|r| r == runtime)
    }

    /// The largest E4M3 magnitude FP8 weights are scaled to for this target.
    pub fn fp8_max(&self) -> f64 {
        self.fp8_e4m3_max.unwrap_or(448.0)
    }

    /// Refuse `scheme` where `engine` does not run it natively on this
    /// target, saying why and what it runs instead; `Ok` names the runtime.
    pub fn check_scheme(&self, engine: &str, scheme: CtScheme) -> Result<&str, String> {
        let Some((rt, _)) = self.runtime_for(engine) else {
            let listed: Vec<&str> = self.runtimes.keys().map(String::as_str).collect();
            return Err(format!(
                "`{}` does not list {engine} among its runtimes ({})",
                self.id,
                if listed.is_empty() {
                    "none listed".to_string()
                } else {
                    listed.join(", ")
                }
            ));
        };
        let runs = self.schemes_of(rt);
        if runs.contains(&scheme) {
            return Ok(rt);
        }
        let names: Vec<&str> = runs.iter().map(|s| s.name()).collect();
        // The tensor-core reason is NVIDIA's (vLLM's CUDA kernels by compute
        // capability); elsewhere the runtime's own list is the reason.
        let why = if self.vendor.contains("NVIDIA") {
            scheme.requirement().to_string()
        } else {
            format!(
                "{rt} does not list it for this device ({})",
                self.runtime_sources
                    .get(rt)
                    .map_or("no source given", String::as_str)
            )
        };
        Err(format!(
            "{} is not run natively by {rt} on `{}`: {why}; {} runs {} with {rt}",
            scheme.label(),
            self.id,
            self.id,
            if names.is_empty() {
                "no compressed-tensors scheme (only 16-bit weights)".to_string()
            } else {
                names.join(", ")
            }
        ))
    }

    /// Is the figure `key` (or `peak_tflops.fp8`) listed as uncertain?
    pub fn is_uncertain(&self, key: &str) -> bool {
        self.uncertain
            .iter()
            .any(|u| u == key || (key.starts_with("peak_tflops.") && u == "peak_tflops"))
    }

    pub fn peak(&self, p: Precision) -> Option<Figure> {
        self.peak_tflops.get(&p).copied()
    }

    /// Usable device memory in bytes, if known.
    pub fn memory_bytes(&self) -> Option<f64> {
        self.memory_gb.get().map(|g| g * 1e9)
    }

    /// Memory bandwidth in bytes per second, if known.
    pub fn bandwidth_bytes_per_s(&self) -> Option<f64> {
        self.memory_bandwidth_gbps.get().map(|g| g * 1e9)
    }
}

/// The built-in profiles' files, in listing order. `targets/` must hold exactly
/// these (a test checks it).
pub const BUILTIN_FILES: &[(&str, &str)] = &[
    ("h100-sxm", include_str!("../../../targets/h100-sxm.toml")),
    ("h100-pcie", include_str!("../../../targets/h100-pcie.toml")),
    ("h100-nvl", include_str!("../../../targets/h100-nvl.toml")),
    ("h200", include_str!("../../../targets/h200.toml")),
    ("b200", include_str!("../../../targets/b200.toml")),
    ("gb200", include_str!("../../../targets/gb200.toml")),
    ("gh200", include_str!("../../../targets/gh200.toml")),
    (
        "a100-80g-sxm",
        include_str!("../../../targets/a100-80g-sxm.toml"),
    ),
    ("a100-40g", include_str!("../../../targets/a100-40g.toml")),
    ("l40s", include_str!("../../../targets/l40s.toml")),
    ("l40", include_str!("../../../targets/l40.toml")),
    ("l4", include_str!("../../../targets/l4.toml")),
    ("a10g", include_str!("../../../targets/a10g.toml")),
    ("a40", include_str!("../../../targets/a40.toml")),
    ("a30", include_str!("../../../targets/a30.toml")),
    ("t4", include_str!("../../../targets/t4.toml")),
    ("v100", include_str!("../../../targets/v100.toml")),
    (
        "rtx-6000-ada",
        include_str!("../../../targets/rtx-6000-ada.toml"),
    ),
    ("rtx-5090", include_str!("../../../targets/rtx-5090.toml")),
    ("rtx-4090", include_str!("../../../targets/rtx-4090.toml")),
    ("rtx-3090", include_str!("../../../targets/rtx-3090.toml")),
    ("mi300x", include_str!("../../../targets/mi300x.toml")),
    ("mi325x", include_str!("../../../targets/mi325x.toml")),
    (
        "rx-7900-xtx",
        include_str!("../../../targets/rx-7900-xtx.toml"),
    ),
    ("gaudi2", include_str!("../../../targets/gaudi2.toml")),
    ("gaudi3", include_str!("../../../targets/gaudi3.toml")),
    ("tpu-v5e", include_str!("../../../targets/tpu-v5e.toml")),
    ("tpu-v6e", include_str!("../../../targets/tpu-v6e.toml")),
    (
        "inferentia2",
        include_str!("../../../targets/inferentia2.toml"),
    ),
    ("trainium2", include_str!("../../../targets/trainium2.toml")),
    (
        "cloud-ai-100-standard",
        include_str!("../../../targets/cloud-ai-100-standard.toml"),
    ),
    (
        "cloud-ai-100-pro",
        include_str!("../../../targets/cloud-ai-100-pro.toml"),
    ),
    (
        "cloud-ai-100-ultra",
        include_str!("../../../targets/cloud-ai-100-ultra.toml"),
    ),
    ("ai200", include_str!("../../../targets/ai200.toml")),
    ("groq-lpu", include_str!("../../../targets/groq-lpu.toml")),
    ("m1", include_str!("../../../targets/m1.toml")),
    ("m1-pro", include_str!("../../../targets/m1-pro.toml")),
    ("m1-max", include_str!("../../../targets/m1-max.toml")),
    ("m1-ultra", include_str!("../../../targets/m1-ultra.toml")),
    ("m2", include_str!("../../../targets/m2.toml")),
    ("m2-pro", include_str!("../../../targets/m2-pro.toml")),
    ("m2-max", include_str!("../../../targets/m2-max.toml")),
    ("m2-ultra", include_str!("../../../targets/m2-ultra.toml")),
    ("m3", include_str!("../../../targets/m3.toml")),
    ("m3-pro", include_str!("../../../targets/m3-pro.toml")),
    ("m3-max", include_str!("../../../targets/m3-max.toml")),
    ("m4", include_str!("../../../targets/m4.toml")),
    ("m4-pro", include_str!("../../../targets/m4-pro.toml")),
    ("m4-max", include_str!("../../../targets/m4-max.toml")),
    (
        "snapdragon-x-elite",
        include_str!("../../../targets/snapdragon-x-elite.toml"),
    ),
];

/// Every built-in profile, parsed. The embedded files are checked by tests,
/// so a parse failure here is a build defect, reported as an error all the same.
pub fn builtin() -> Result<Vec<Target>, CostError> {
    BUILTIN_FILES
        .iter()
        .map(|(id, text)| {
            let t = Target::from_toml(text, &format!("targets/{id}.toml"), Origin::Builtin)?;
            if t.id != *id {
                return Err(CostError::BadTarget {
                    what: format!("targets/{id}.toml"),
                    msg: format!("id `{}` does not match the file name", t.id),
                });
            }
            Ok(t)
        })
        .collect()
}

/// The built-in profile `id`, or an error listing the known ids.
pub fn find_builtin(id: &str) -> Result<Target, CostError> {
    let all = builtin()?;
    let lower = id.to_ascii_lowercase();
    match all.into_iter().find(|t| t.id == lower) {
        Some(t) => Ok(t),
        None => Err(CostError::UnknownTarget {
            id: id.to_string(),
            hint: crate::suggest::did_you_mean(
                id,
                BUILTIN_FILES.iter().map(|(i, _)| *i).chain(["cpu"]),
            ),
            count: BUILTIN_FILES.len() + 1,
        }),
    }
}
