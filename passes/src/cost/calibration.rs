//! The fitted efficiency factors of the serving-cost model, shipped as
//! `calibration.toml` next to this file and compiled in.
//!
//! What must stay true: `calibration.toml` is written only by the fit
//! (`KILN_BLESS=1 cargo test -p passes --lib cost::fit`), from
//! `bench/calibration/measured-calibration.csv`; a test refits and fails if the
//! shipped values differ, and another fails if the fit's error regresses. A
//! lookup for an (engine, device class) pair without rows borrows the GPU
//! factors of the same engine class and says so.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::target::DeviceClass;
use super::CostError;

/// The shipped factors (see [`Calibration::shipped`]).
pub const SHIPPED: &str = include_str!("calibration.toml");

/// Serving engines `kiln estimate` models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    LlamaCpp,
    Vllm,
    TrtLlm,
}

impl Engine {
    pub const ALL: [Engine; 3] = [Engine::LlamaCpp, Engine::Vllm, Engine::TrtLlm];

    pub fn name(self) -> &'static str {
        match self {
            Engine::LlamaCpp => "llama.cpp",
            Engine::Vllm => "vllm",
            Engine::TrtLlm => "trt-llm",
        }
    }

    pub fn parse(s: &str) -> Option<Engine> {
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "llama.cpp" | "llamacpp" | "llama-cpp" => Some(Engine::LlamaCpp),
            "vllm" => Some(Engine::Vllm),
            "trt-llm" | "tensorrt-llm" | "trtllm" => Some(Engine::TrtLlm),
            _ => None,
        }
    }

    pub fn class(self) -> EngineClass {
        match self {
            Engine::LlamaCpp => EngineClass::LlamaCpp,
            Engine::Vllm | Engine::TrtLlm => EngineClass::Server,
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The llama.cpp build generation an estimate models. Its CUDA and Metal
/// kernels changed between the builds of 2024 and those of 2025 (INT8
/// tensor-core MMQ for prompt processing, reworked matrix-vector kernels,
/// flash attention on by default); the calibration rows carry their build,
/// and the older generation is fitted as two multipliers (bandwidth,
/// compute) on the current factors. Server engines have one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EngineVersion {
    /// llama.cpp builds before b4000 (2024 and earlier).
    Llama2024,
    /// llama.cpp builds from b4000 (late 2024) on: the default.
    #[default]
    Current,
}

impl EngineVersion {
    /// The first build number of the current generation.
    pub const CURRENT_FROM_BUILD: u32 = 4000;

    /// `2024` or `llama.cpp:2024`, `2025`/`current`, or a build number
    /// (`b2843`, `2843`) placed by [`Self::CURRENT_FROM_BUILD`].
    pub fn parse(s: &str) -> Option<EngineVersion> {
        let lower = s.trim().to_ascii_lowercase();
        let v = lower
            .strip_prefix("llama.cpp:")
            .or_else(|| lower.strip_prefix("llama.cpp-"))
            .unwrap_or(&lower);
        match v {
            "2024" => Some(EngineVersion::Llama2024),
            "2025" | "2026" | "current" | "latest" => Some(EngineVersion::Current),
            _ => {
                let n: u32 = v.strip_prefix('b').unwrap_or(v).parse().ok()?;
                Some(EngineVersion::from_build(n))
            }
        }
    }

    pub fn from_build(build: u32) -> EngineVersion {
        if build < Self::CURRENT_FROM_BUILD {
            EngineVersion::Llama2024
        } else {
            EngineVersion::Current
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EngineVersion::Llama2024 => "2024",
            EngineVersion::Current => "2025",
        }
    }

    /// In words, for the estimate's notes.
    pub fn describe(self) -> &'static str {
        match self {
            EngineVersion::Llama2024 => "llama.cpp builds of 2024 (before b4000)",
            EngineVersion::Current => "llama.cpp builds from b4000 (late 2024) on",
        }
    }
}

/// Engines that share efficiency factors. `server` covers vLLM, TensorRT-LLM
/// and, for calibration, lmdeploy TurboMind, FasterTransformer and TensorRT
/// (batched CUDA-graph engines with fused kernels); `llama.cpp` is the ggml
/// engine on every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EngineClass {
    LlamaCpp,
    Server,
}

impl EngineClass {
    pub fn name(self) -> &'static str {
        match self {
            EngineClass::LlamaCpp => "llama.cpp",
            EngineClass::Server => "server",
        }
    }

    pub fn parse(s: &str) -> Option<EngineClass> {
        match s {
            "llama.cpp" => Some(EngineClass::LlamaCpp),
            "server" => Some(EngineClass::Server),
            _ => None,
        }
    }
}

/// Efficiency factors of one (engine class, device class) pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Factors {
    /// Achieved fraction of peak memory bandwidth when streaming weights and KV.
    pub bandwidth_efficiency: f64,
    /// Achieved fraction of the reference compute peak (see `estimate`).
    pub compute_efficiency: f64,
    /// Work done on the SIMT (FP32) cores per matmul FLOP, on top of the
    /// matmul itself (llama.cpp dequantizes weights and quantizes activations
    /// there while the tensor cores multiply): a prefill FLOP costs
    /// `1 / (compute_efficiency x reference peak) + simt_cost / fp32 peak`.
    /// 0 for engines whose kernels fuse it (the server class).
    pub simt_cost: f64,
    /// Fixed time per layer per forward pass (kernel launches, sync), in µs.
    pub layer_overhead_us: f64,
    /// The kernel path by weight type: 16- and 32-bit float weights stream at
    /// `bandwidth_efficiency x float_bandwidth` (llama.cpp reads them with
    /// cuBLAS/Metal GEMV rather than its quantized dot-product kernels) and
    /// need no SIMT-side dequantization in prefill. 1 for server engines.
    pub float_bandwidth: f64,
    /// A device-independent time per weight byte a decode step streams, in
    /// picoseconds (1 ps/byte caps the achieved rate at 1 TB/s): the
    /// kernels' own issue cost, which bounds the fastest cards (HBM
    /// datacenter GPUs reach a smaller fraction of their peak than GDDR
    /// cards). 0 for server engines.
    pub byte_cost_ps: f64,
    /// The 2024 llama.cpp generation ([`EngineVersion::Llama2024`]): its
    /// achieved bandwidth and compute as multiples of the current ones. 1
    /// for server engines.
    pub gen2024_bandwidth: f64,
    pub gen2024_compute: f64,
    /// measured / predicted rate within which 85% of the cross-validated
    /// predictions of the decode and throughput rows fall, symmetric in log
    /// space (the wider of leave-one-hardware-out and leave-one-source-out):
    /// the band around a decode, throughput or end-to-end estimate.
    pub band_low: f64,
    pub band_high: f64,
    /// The same over the prefill and time-to-first-token rows: the band of
    /// prefill time and TTFT (prompt processing is less predictable).
    pub prefill_band_low: f64,
    pub prefill_band_high: f64,
    /// Calibration rows behind these factors.
    pub rows: usize,
    /// The bands are those of every class, not this class's own: its rows
    /// come from fewer than four hardware models, too few to measure how far
    /// a new one strays (see `crossval::MIN_GROUPS`).
    pub pooled_band: bool,
}

/// Which figures of one target were checked against measurements: `rows`
/// calibration rows of `engine` on target `target` for headline `metric`
/// (`decode`, `prefill` or `throughput`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Validated {
    pub target: String,
    pub engine: EngineClass,
    pub metric: String,
    pub rows: usize,
}

/// All fitted factors.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// Fixed latency of one tensor-parallel all-reduce, in µs.
    pub allreduce_latency_us: f64,
    pub factors: BTreeMap<(EngineClass, DeviceClass), Factors>,
    /// The (target, engine, metric) triples with calibration rows, sorted.
    pub validated: Vec<Validated>,
}

/// Factors chosen for an estimate, and whether they were borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chosen {
    pub factors: Factors,
    pub engine: EngineClass,
    /// The device class the factors were fitted on (differs when borrowed).
    pub fitted_on: DeviceClass,
    pub borrowed: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalibration {
    allreduce_latency_us: f64,
    factor: Vec<RawFactor>,
    #[serde(default)]
    validated: Vec<RawValidated>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValidated {
    target: String,
    engine: String,
    metric: String,
    rows: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFactor {
    engine: String,
    device: String,
    bandwidth_efficiency: f64,
    compute_efficiency: f64,
    #[serde(default)]
    simt_cost: f64,
    layer_overhead_us: f64,
    #[serde(default = "one")]
    float_bandwidth: f64,
    #[serde(default)]
    byte_cost_ps: f64,
    #[serde(default = "one")]
    gen2024_bandwidth: f64,
    #[serde(default = "one")]
    gen2024_compute: f64,
    band_low: f64,
    band_high: f64,
    #[serde(default)]
    prefill_band_low: Option<f64>,
    #[serde(default)]
    prefill_band_high: Option<f64>,
    rows: usize,
    #[serde(default)]
    pooled_band: bool,
}

fn one() -> f64 {
    1.0
}

impl Calibration {
    pub fn parse(text: &str) -> Result<Calibration, CostError> {
        let bad = |msg: String| CostError::BadCalibration(msg);
        let raw: RawCalibration =
            toml::from_str(text).map_err(|e| bad(crate::suggest::toml_error(text, &e)))?;
        let mut factors = BTreeMap::new();
        for f in raw.factor {
            let e = EngineClass::parse(&f.engine)
                .ok_or_else(|| bad(format!("unknown engine class `{}`", f.engine)))?;
            let d = DeviceClass::parse(&f.device)
                .ok_or_else(|| bad(format!("unknown device class `{}`", f.device)))?;
            let positive = [
                f.bandwidth_efficiency,
                f.compute_efficiency,
                f.float_bandwidth,
                f.gen2024_bandwidth,
                f.gen2024_compute,
                f.band_low,
                f.band_high,
                f.prefill_band_low.unwrap_or(1.0),
                f.prefill_band_high.unwrap_or(1.0),
            ];
            let non_negative = [f.layer_overhead_us, f.simt_cost, f.byte_cost_ps];
            if positive.iter().any(|v| !v.is_finite() || *v <= 0.0)
                || non_negative.iter().any(|v| !v.is_finite() || *v < 0.0)
            {
                return Err(bad(format!(
                    "factors for {}/{} must be positive",
                    f.engine, f.device
                )));
            }
            factors.insert(
                (e, d),
                Factors {
                    bandwidth_efficiency: f.bandwidth_efficiency,
                    compute_efficiency: f.compute_efficiency,
                    simt_cost: f.simt_cost,
                    layer_overhead_us: f.layer_overhead_us,
                    float_bandwidth: f.float_bandwidth,
                    byte_cost_ps: f.byte_cost_ps,
                    gen2024_bandwidth: f.gen2024_bandwidth,
                    gen2024_compute: f.gen2024_compute,
                    band_low: f.band_low,
                    band_high: f.band_high,
                    prefill_band_low: f.prefill_band_low.unwrap_or(f.band_low),
                    prefill_band_high: f.prefill_band_high.unwrap_or(f.band_high),
                    rows: f.rows,
                    pooled_band: f.pooled_band,
                },
            );
        }
        if raw.allreduce_latency_us.is_nan() || raw.allreduce_latency_us < 0.0 {
            return Err(bad("allreduce_latency_us must be >= 0".into()));
        }
        let mut validated = Vec::new();
        for v in raw.validated {
            let engine = EngineClass::parse(&v.engine)
                .ok_or_else(|| bad(format!("unknown engine class `{}`", v.engine)))?;
            validated.push(Validated {
                target: v.target,
                engine,
                metric: v.metric,
                rows: v.rows,
            });
        }
        validated.sort();
        Ok(Calibration {
            allreduce_latency_us: raw.allreduce_latency_us,
            factors,
            validated,
        })
    }

    /// The factors compiled into kiln.
    pub fn shipped() -> Result<Calibration, CostError> {
        Calibration::parse(SHIPPED)
    }

    /// Factors for `engine` on `device`; without rows for that pair, the GPU
    /// factors of the same engine class (then any), with the band widened.
    pub fn lookup(&self, engine: EngineClass, device: DeviceClass) -> Option<Chosen> {
        if let Some(f) = self.factors.get(&(engine, device)) {
            return Some(Chosen {
                factors: *f,
                engine,
                fitted_on: device,
                borrowed: false,
            });
        }
        let (key, f) = self
            .factors
            .get_key_value(&(engine, DeviceClass::Gpu))
            .or_else(|| self.factors.iter().next())?;
        let mut widened = *f;
        widened.band_low *= 0.5;
        widened.band_high *= 1.5;
        widened.prefill_band_low *= 0.5;
        widened.prefill_band_high *= 1.5;
        Some(Chosen {
            factors: widened,
            engine: key.0,
            fitted_on: key.1,
            borrowed: true,
        })
    }

    /// The TOML the fit writes.
    pub fn to_toml(&self, header: &str) -> String {
        let mut s = String::new();
        for line in header.lines() {
            s.push_str("# ");
            s.push_str(line);
            s.push('\n');
        }
        s.push_str(&format!(
            "allreduce_latency_us = {}\n",
            round6(self.allreduce_latency_us)
        ));
        for ((e, d), f) in &self.factors {
            s.push_str("\n[[factor]]\n");
            s.push_str(&format!("engine = \"{}\"\n", e.name()));
            s.push_str(&format!("device = \"{}\"\n", d.name()));
            s.push_str(&format!(
                "bandwidth_efficiency = {}\n",
                round6(f.bandwidth_efficiency)
            ));
            s.push_str(&format!(
                "compute_efficiency = {}\n",
                round6(f.compute_efficiency)
            ));
            s.push_str(&format!("simt_cost = {}\n", round6(f.simt_cost)));
            s.push_str(&format!(
                "layer_overhead_us = {}\n",
                round6(f.layer_overhead_us)
            ));
            s.push_str(&format!(
                "float_bandwidth = {}\n",
                round6(f.float_bandwidth)
            ));
            s.push_str(&format!("byte_cost_ps = {}\n", round6(f.byte_cost_ps)));
            s.push_str(&format!(
                "gen2024_bandwidth = {}\n",
                round6(f.gen2024_bandwidth)
            ));
            s.push_str(&format!(
                "gen2024_compute = {}\n",
                round6(f.gen2024_compute)
            ));
            s.push_str(&format!("band_low = {}\n", round6(f.band_low)));
            s.push_str(&format!("band_high = {}\n", round6(f.band_high)));
            s.push_str(&format!(
                "prefill_band_low = {}\n",
                round6(f.prefill_band_low)
            ));
            s.push_str(&format!(
                "prefill_band_high = {}\n",
                round6(f.prefill_band_high)
            ));
            s.push_str(&format!("rows = {}\n", f.rows));
            if f.pooled_band {
                s.push_str("pooled_band = true\n");
            }
        }
        for v in &self.validated {
            s.push_str("\n[[validated]]\n");
            s.push_str(&format!("target = \"{}\"\n", v.target));
            s.push_str(&format!("engine = \"{}\"\n", v.engine.name()));
            s.push_str(&format!("metric = \"{}\"\n", v.metric));
            s.push_str(&format!("rows = {}\n", v.rows));
        }
        s
    }
}

/// Six significant decimals, always with a decimal point (valid TOML floats).
pub fn round6(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0');
    if s.ends_with('.') {
        format!("{s}0")
    } else {
        s.to_string()
    }
}
