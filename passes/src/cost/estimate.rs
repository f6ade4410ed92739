//! The serving-cost model: memory arithmetic, a roofline bound and a
//! calibrated central estimate with a band, for one model on one target.
//!
//! The model in a paragraph: a decode step streams the weights it touches
//! (all dense weights; for MoE only the experts the batch routes to) and the
//! KV cache of every sequence, and performs 2 FLOPs per active weight plus
//! attention per token; a prefill streams the weights once and performs the
//! same FLOPs for every prompt token. The roofline bound is the larger of
//! bytes / peak bandwidth and FLOPs / peak compute. The central estimate
//! divides those by fitted efficiencies (achieved fraction of bandwidth and
//! of a reference compute peak, per engine class and device class; llama.cpp
//! adds its SIMT-side dequantization work at the FP32 peak), adds a fixed
//! time per layer per forward pass, and, across tensor-parallel devices, an
//! all-reduce cost per layer (fitted latency plus bytes over the
//! interconnect). Bands hold 85% of measured/predicted (symmetric in log space)
//! over cross-validated (held-out hardware, held-out source) predictions of
//! the calibration rows.
//!
//! What must stay true: memory arithmetic is exact from tensor shapes and
//! needs no calibration; an unknown figure yields `None` and a note, never a
//! guessed number; every assumption the user cannot see in the inputs is
//! named in [`Estimate::notes`].

use super::calibration::{Calibration, Chosen, Engine, EngineClass, EngineVersion};
use super::schemes::CtScheme;
use super::target::{DeviceClass, Figure, Precision, Target};
use super::weights::{WeightBytes, WeightFormat};
use super::CostError;
use crate::ir::Arch;

/// KV cache element types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Fp8,
}

impl KvType {
    pub fn parse(s: &str) -> Option<KvType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(KvType::F32),
            "f16" | "fp16" => Some(KvType::F16),
            "bf16" => Some(KvType::Bf16),
            "q8_0" => Some(KvType::Q8_0),
            "q4_0" => Some(KvType::Q4_0),
            "fp8" | "fp8_e4m3" | "fp8_e5m2" => Some(KvType::Fp8),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Bf16 => "bf16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
            KvType::Fp8 => "fp8",
        }
    }

    /// Bytes per element (ggml blocks of 32: q8_0 34 bytes, q4_0 18 bytes).
    pub fn bytes_per_element(self) -> f64 {
        match self {
            KvType::F32 => 4.0,
            KvType::F16 | KvType::Bf16 => 2.0,
            KvType::Q8_0 => 34.0 / 32.0,
            KvType::Q4_0 => 18.0 / 32.0,
            KvType::Fp8 => 1.0,
        }
    }
}

/// A batch size, or "as many as fit".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    Fixed(usize),
    Max,
}

/// What is asked of the target.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub batch: Batch,
    /// KV slots reserved per sequence; `None`: prompt + gen.
    pub context: Option<usize>,
    pub prompt: usize,
    pub gen: usize,
    pub kv_type: KvType,
    /// Total devices; `None`: the fewest that fit.
    pub devices: Option<usize>,
    /// Tensor-parallel degree; `None`: all `devices` (or the fewest that fit).
    pub tensor_parallel: Option<usize>,
    /// The llama.cpp build generation modelled (ignored by server engines).
    pub engine_version: EngineVersion,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            batch: Batch::Fixed(1),
            context: None,
            prompt: 512,
            gen: 128,
            kv_type: KvType::F16,
            devices: None,
            tensor_parallel: None,
            engine_version: EngineVersion::Current,
        }
    }
}

/// A model as the cost model needs it.
#[derive(Debug, Clone, Copy)]
pub struct ModelCost<'a> {
    pub arch: &'a Arch,
    pub weights: &'a WeightBytes,
    pub format: WeightFormat,
}

/// A quantity as a calibrated central value, its band, and the roofline bound
/// (the best the hardware allows: a lower bound on times, an upper bound on rates).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Band {
    pub central: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub bound: Option<f64>,
}

impl Band {
    fn none() -> Band {
        Band::default()
    }

    /// A rate (higher is better): band = central x [lo, hi] (measured /
    /// predicted rate), capped at the bound.
    fn rate(central: f64, bound: f64, (lo, hi): (f64, f64)) -> Band {
        let cap = |v: f64| if bound.is_finite() { v.min(bound) } else { v };
        Band {
            central: Some(central),
            low: Some(cap(central * lo)),
            high: Some(cap(central * hi)),
            bound: Some(bound),
        }
    }

    /// A time (lower is better): band = central / [hi, lo], floored at the bound.
    fn time(central: f64, bound: f64, (lo, hi): (f64, f64)) -> Band {
        let floor = |v: f64| v.max(bound);
        Band {
            central: Some(central),
            low: Some(floor(central / hi)),
            high: Some(floor(central / lo)),
            bound: Some(bound),
        }
    }

    /// `k / rate` for each member (costs from a throughput band).
    fn per_rate(k: f64, rate: &Band) -> Band {
        let inv = |v: Option<f64>| v.filter(|v| *v > 0.0).map(|v| k / v);
        Band {
            central: inv(rate.central),
            low: inv(rate.high),
            high: inv(rate.low),
            bound: inv(rate.bound),
        }
    }
}

/// Everything `kiln estimate` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub target: String,
    pub engine: Engine,
    /// The llama.cpp generation modelled (meaningless for server engines).
    pub engine_version: EngineVersion,
    pub format: String,
    pub kv_type: KvType,
    pub batch: usize,
    pub context: usize,
    pub prompt: usize,
    pub gen: usize,
    pub devices: usize,
    pub tensor_parallel: usize,
    pub replicas: usize,
    /// Fewest devices (as one tensor-parallel group, a power of two) for the batch.
    pub min_devices: Option<usize>,
    pub fits: Option<bool>,
    /// Largest batch that fits at this context on one replica.
    pub max_batch: Option<u64>,
    pub params: u64,
    pub active_params: u64,
    pub weights_bytes: u64,
    pub kv_bytes_per_token: u64,
    /// KV cache of the whole batch at `context`, per replica.
    pub kv_bytes: u64,
    pub overhead_bytes_per_device: u64,
    /// Memory needed per device (weights share + KV share + overhead).
    pub memory_per_device_bytes: u64,
    /// Memory usable per device under the engine's limits.
    pub memory_usable_per_device_bytes: Option<u64>,
    pub prefill_seconds: Band,
    pub ttft_seconds: Band,
    /// Per sequence.
    pub decode_tokens_per_second: Band,
    /// Output tokens per second across the batch and replicas, prefill included.
    pub throughput_tokens_per_second: Band,
    pub e2e_seconds: Band,
    pub usd_per_million_tokens: Band,
    pub joules_per_token: Band,
    /// Which peak the central compute estimate is relative to.
    pub compute_reference: Option<Precision>,
    pub calibration: Option<Chosen>,
    pub notes: Vec<String>,
}

/// Fraction of memory an engine lets the model and KV cache use, and a fixed
/// per-device overhead, per engine and device class.
fn memory_policy(engine: Engine, class: DeviceClass, arch: &Arch) -> (f64, u64, &'static str) {
    const GIB: u64 = 1 << 30;
    match (engine.class(), class) {
        (EngineClass::Server, DeviceClass::Gpu) => (
            0.9,
            GIB,
            "vLLM and TensorRT-LLM reserve 90% of device memory by default (gpu_memory_utilization / kv_cache_free_gpu_mem_fraction = 0.9); 1 GiB is assumed for the runtime context (CUDA, ROCm or SynapseAI), graphs and activations",
        ),
        (EngineClass::Server, _) => (
            0.9,
            GIB,
            "the serving runtime is assumed to keep vLLM's default reserve (90% of device memory usable) and 1 GiB for its context, compiled graphs and activations; neither is published for this device class (assumption)",
        ),
        (EngineClass::LlamaCpp, DeviceClass::Apple) => (
            0.75,
            GIB / 2 + 512 * arch.vocab as u64 * 4,
            "Metal can wire about 75% of unified memory by default (assumption); llama.cpp overhead assumed 0.5 GiB plus a 512-token logits buffer",
        ),
        (EngineClass::LlamaCpp, DeviceClass::Cpu) => (
            0.9,
            GIB / 2 + 512 * arch.vocab as u64 * 4,
            "10% of host memory is left to the OS (assumption); llama.cpp overhead assumed 0.5 GiB plus a 512-token logits buffer",
        ),
        (EngineClass::LlamaCpp, _) => (
            1.0,
            GIB / 2 + 512 * arch.vocab as u64 * 4,
            "llama.cpp overhead assumed 0.5 GiB (backend context) plus a 512-token logits/compute buffer",
        ),
    }
}

/// Expected fraction of routed experts a step of `tokens` tokens touches.
fn expert_fraction(arch: &Arch, tokens: f64) -> f64 {
    if !arch.is_moe() || arch.n_expert_used == 0 {
        return 1.0;
    }
    let p = (arch.n_expert_used as f64 / arch.n_expert as f64).min(1.0);
    1.0 - (1.0 - p).powf(tokens.max(1.0))
}

/// The time model's inputs, resolved once.
struct Machine<'a> {
    arch: &'a Arch,
    w: &'a WeightBytes,
    bw: f64,
    /// Central compute reference (FLOP/s) and the roofline peak.
    peak_ref: Option<f64>,
    peak_bound: Option<f64>,
    /// FP32 (SIMT) peak, FLOP/s, for the engine's SIMT-side work.
    peak_simt: Option<f64>,
    ic: Option<f64>,
    /// Devices one step's work is divided over (1 under llama.cpp's layer split).
    tp: f64,
    kv_per_token: f64,
    embedding_read: bool,
    /// Share of the weight bytes in 16/32-bit floats (see [`WeightBytes::float_share`]).
    float_share: f64,
    /// Share of the weight bytes dequantized before the multiply (the
    /// quantized share, except for schemes whose activations are quantized
    /// too: W8A8 and FP8 multiply in int8/fp8 and rescale in the epilogue).
    dequant_share: f64,
}

/// Efficiency and overhead for one evaluation (fitted, or ideal for the bound).
struct Eff {
    /// The roofline: peak rates, no overheads, the best native peak.
    ideal: bool,
    bw: f64,
    compute: f64,
    /// SIMT FLOPs per matmul FLOP (see [`super::Factors::simt_cost`]).
    simt: f64,
    /// Bandwidth multiplier for float weights (see [`super::Factors::float_bandwidth`]).
    float_bw: f64,
    /// Device-independent time per weight byte, s (see [`super::Factors::byte_cost_ps`]).
    byte_s: f64,
    layer_s: f64,
    allreduce_s: f64,
}

impl Machine<'_> {
    fn read_bytes(&self, tokens: f64) -> f64 {
        let emb = if self.embedding_read {
            self.w.embedding as f64
        } else {
            0.0
        };
        self.w.dense as f64 + emb + self.w.experts as f64 * expert_fraction(self.arch, tokens)
    }

    /// Weight bytes of a step as time at the quantized kernels' efficiency:
    /// float weights count `1 / float_bw` times (their kernel path streams
    /// at a different fraction of the bandwidth).
    fn weighted_read(&self, tokens: f64, e: &Eff) -> f64 {
        let fs = self.float_share;
        self.read_bytes(tokens) * (1.0 - fs + fs / e.float_bw)
    }

    fn active_matmul(&self) -> f64 {
        let s = self.arch;
        let frac = if s.is_moe() && s.n_expert > 0 {
            s.n_expert_used as f64 / s.n_expert as f64
        } else {
            1.0
        };
        self.w.matmul_params_dense as f64 + self.w.matmul_params_experts as f64 * frac
    }

    fn flops_per_token(&self, ctx: f64) -> f64 {
        2.0 * self.active_matmul() + self.arch.attn_flops_per_ctx() * ctx
    }

    fn allreduce(&self, tokens: f64, e: &Eff) -> f64 {
        if self.tp <= 1.0 {
            return 0.0;
        }
        let bytes = tokens * self.arch.hidden as f64 * 2.0 * 2.0 * (self.tp - 1.0) / self.tp;
        let wire = self.ic.map(|ic| bytes / ic).unwrap_or(0.0);
        2.0 * self.arch.n_layer as f64 * (e.allreduce_s + wire)
    }

    fn overhead(&self, e: &Eff) -> f64 {
        self.arch.n_layer as f64 * e.layer_s
    }

    /// One decode step of `batch` sequences at context `ctx`; `None` when a needed figure is unknown.
    fn step(&self, batch: f64, ctx: f64, e: &Eff, need_compute: bool) -> Option<f64> {
        let bytes = self.weighted_read(batch, e) + batch * ctx * self.kv_per_token;
        let t_mem =
            bytes / (self.tp * e.bw * self.bw) + self.read_bytes(batch) * e.byte_s / self.tp;
        let t_comp = match self.peak(e) {
            Some(p) => self.compute_time(batch * self.flops_per_token(ctx), p, e),
            None if need_compute => return None,
            None => 0.0,
        };
        Some(t_mem.max(t_comp) + self.overhead(e) + self.allreduce(batch, e))
    }

    /// Prefill of `batch` prompts of `prompt` tokens.
    fn prefill(&self, batch: f64, prompt: f64, e: &Eff) -> Option<f64> {
        if prompt <= 0.0 {
            return Some(0.0);
        }
        let tokens = batch * prompt;
        let bytes = self.weighted_read(tokens, e) + tokens * self.kv_per_token;
        let t_mem = bytes / (self.tp * e.bw * self.bw);
        let t_comp = self.compute_time(
            tokens * self.flops_per_token(prompt / 2.0),
            self.peak(e)?,
            e,
        );
        Some(t_mem.max(t_comp) + self.overhead(e) + self.allreduce(tokens, e))
    }

    /// `flops` at a fraction of `peak` across the group, plus the engine's
    /// SIMT-side dequantization of the quantized weights at the FP32 peak
    /// (none when that peak is unknown, or for float weights).
    fn compute_time(&self, flops: f64, peak: f64, e: &Eff) -> f64 {
        let simt = match self.peak_simt {
            Some(p) if e.simt > 0.0 => flops * self.dequant_share * e.simt / (self.tp * p),
            _ => 0.0,
        };
        flops / (self.tp * e.compute * peak) + simt
    }

    fn peak(&self, e: &Eff) -> Option<f64> {
        if e.ideal {
            self.peak_bound
        } else {
            self.peak_ref
        }
    }
}

fn known_peak(t: &Target, order: &[Precision]) -> Option<(Precision, f64)> {
    order.iter().find_map(|p| match t.peak(*p) {
        Some(Figure::Known(v)) => Some((*p, v * 1e12)),
        _ => None,
    })
}

/// KV cache bytes per token of a `ctx`-token context held by each of `tp`
/// devices. llama.cpp splits layers across devices (`--split-mode layer`,
/// its default); tensor parallelism splits KV heads (replicated when fewer
/// than devices). A sliding-window layer (Gemma) holds only its window, so
/// it counts `min(window, ctx) / ctx` of a layer.
fn kv_per_token_per_device(arch: &Arch, engine: Engine, kv: KvType, tp: usize, ctx: usize) -> f64 {
    let kvb = kv.bytes_per_element();
    let tp = tp.max(1);
    let layers = kv_layers(arch, ctx);
    if engine.class() == EngineClass::LlamaCpp {
        layers * (2 * arch.n_head_kv.max(1) * arch.head_dim) as f64 * kvb / tp as f64
    } else {
        layers * (2 * arch.n_head_kv.max(1).div_ceil(tp) * arch.head_dim) as f64 * kvb
    }
}

/// Layers' worth of KV cache a `ctx`-token context fills: every layer,
/// sliding-window layers counting their window's share.
pub fn kv_layers(arch: &Arch, ctx: usize) -> f64 {
    let ctx = ctx.max(1);
    if arch.gemma.is_none() {
        return arch.n_layer as f64;
    }
    (0..arch.n_layer)
        .map(|i| arch.kv_positions(i, ctx) as f64 / ctx as f64)
        .sum()
}

/// Where a device's memory goes before the weights: the planner's budget.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryBudget {
    pub devices: usize,
    /// Memory the engine lets the model use, per device.
    pub usable_per_device: u64,
    /// KV cache of the whole batch at the context, per device.
    pub kv_per_device: u64,
    pub overhead_per_device: u64,
    /// Weight bytes that fit across all `devices` (split evenly).
    pub weights: u64,
    /// The engine's memory policy, in words.
    pub policy: &'static str,
}

/// The weight bytes that fit on `devices` devices of `target` under
/// `engine` with the KV cache of `w` (batch x context) and the engine's
/// overhead, by the same arithmetic as [`estimate`]'s `fits`; `None` when the
/// target's memory is unknown. A fixed batch is required (`max` is 1).
pub fn weight_budget(
    arch: &Arch,
    target: &Target,
    engine: Engine,
    w: &Workload,
    devices: usize,
) -> Option<MemoryBudget> {
    let devices = devices.max(1);
    let ctx = w.context.unwrap_or(w.prompt + w.gen).max(1);
    let batch = match w.batch {
        Batch::Fixed(b) => b.max(1),
        Batch::Max => 1,
    };
    let (usable_frac, overhead, policy) = memory_policy(engine, target.class, arch);
    let usable = target.memory_bytes()? * usable_frac;
    let kv =
        batch as f64 * ctx as f64 * kv_per_token_per_device(arch, engine, w.kv_type, devices, ctx);
    let room = (usable - kv - overhead as f64).max(0.0);
    Some(MemoryBudget {
        devices,
        usable_per_device: usable as u64,
        kv_per_device: kv.ceil() as u64,
        overhead_per_device: overhead,
        weights: (room * devices as f64).floor() as u64,
        policy,
    })
}

/// Estimate serving `model` on `target` with `engine`.
pub fn estimate(
    model: ModelCost<'_>,
    target: &Target,
    engine: Engine,
    w: &Workload,
    cal: &Calibration,
) -> Result<Estimate, CostError> {
    let arch = model.arch;
    let wb = model.weights;
    let mut notes: Vec<String> = Vec::new();

    // Memory.
    let ctx = w.context.unwrap_or(w.prompt + w.gen).max(1);
    let kv_per_token = kv_per_token_per_device(arch, engine, w.kv_type, 1, ctx);
    let layer_split = engine.class() == EngineClass::LlamaCpp;
    let kv_per_token_dev = |tp: usize| kv_per_token_per_device(arch, engine, w.kv_type, tp, ctx);
    let (usable_frac, overhead, policy) = memory_policy(engine, target.class, arch);
    let usable = target.memory_bytes().map(|m| m * usable_frac);
    let need = |batch: usize, tp: usize| {
        wb.total as f64 / tp as f64
            + batch as f64 * ctx as f64 * kv_per_token_dev(tp)
            + overhead as f64
    };
    let fits_at = |batch: usize, tp: usize| usable.map(|u| need(batch, tp) <= u);
    let max_batch_at = |tp: usize| {
        usable.map(|u| {
            let room = u - wb.total as f64 / tp as f64 - overhead as f64;
            if room <= 0.0 {
                0
            } else {
                (room / (ctx as f64 * kv_per_token_dev(tp))).floor() as u64
            }
        })
    };
    let min_batch = match w.batch {
        Batch::Fixed(b) => b.max(1),
        Batch::Max => 1,
    };
    let min_devices = (0..=6)
        .map(|k| 1usize << k)
        .find(|&tp| fits_at(min_batch, tp) == Some(true));

    let (devices, tp) = match (w.devices, w.tensor_parallel) {
        (Some(n), tp) => {
            let tp = tp.unwrap_or(n);
            if n == 0 || tp == 0 || n % tp != 0 {
                return Err(CostError::BadWorkload(format!(
                    "{n} devices cannot be split into tensor-parallel groups of {tp}"
                )));
            }
            (n, tp)
        }
        (None, Some(tp)) => (tp.max(1), tp.max(1)),
        (None, None) => {
            let tp = min_devices.unwrap_or(1);
            (tp, tp)
        }
    };
    let replicas = devices / tp;
    let batch = match w.batch {
        Batch::Fixed(b) => b.max(1),
        Batch::Max => match max_batch_at(tp) {
            Some(b) if b >= 1 => b as usize,
            Some(_) => 1,
            None => {
                return Err(CostError::BadWorkload(format!(
                    "--batch max needs the memory size of `{}`, which is unknown",
                    target.id
                )))
            }
        },
    };
    let fits = fits_at(batch, tp);
    match fits {
        Some(false) => notes.push(format!(
            "Does not fit: {:.1} GB needed per device, {:.1} GB usable on {} device(s) of `{}`; the times below assume it did.",
            need(batch, tp) / 1e9,
            usable.unwrap_or(0.0) / 1e9,
            tp,
            target.id
        )),
        None => notes.push(format!("Memory of `{}` is unknown: whether it fits is not known.", target.id)),
        Some(true) => {}
    }
    if w.devices.is_none() && min_devices.is_none() && usable.is_some() {
        notes.push("Does not fit on up to 64 devices as one tensor-parallel group.".into());
    }
    notes.push(format!("Memory policy: {policy}."));
    if layer_split && tp > 1 {
        notes.push(format!(
            "llama.cpp splits layers across the {tp} devices (--split-mode layer): memory is divided, but each token passes through them in turn, so speed is that of one device (--split-mode row is not modelled)."
        ));
    }
    if !layer_split && tp > arch.n_head_kv.max(1) {
        notes.push(format!(
            "Tensor parallelism {tp} exceeds the {} KV heads: KV heads are replicated.",
            arch.n_head_kv.max(1)
        ));
    }
    if arch.is_moe() {
        notes.push(format!(
            "Mixture of experts: {} of {} experts per token; weights read per step assume random routing, and throughput at large batch is likely overestimated (expert kernels are less efficient than the dense ones calibrated here).",
            arch.n_expert_used, arch.n_expert
        ));
    }
    if arch.family.contains("deepseek") {
        notes.push("Multi-head latent attention (DeepSeek) is costed as ordinary GQA: the KV cache is overestimated.".into());
    }

    // Engine and format support.
    {
        match target.runtime_for(engine.name()) {
            None => notes.push(format!(
                "`{}` does not list {} among its runtimes ({}).",
                target.id,
                engine,
                if target.runtimes.is_empty() {
                    "none listed".to_string()
                } else {
                    target
                        .runtimes
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )),
            // A planned compressed-tensors mixture needs every one of its schemes.
            Some((rt, runs)) if wb.ct_schemes.is_some() => {
                let schemes = wb.ct_schemes.as_ref().expect("checked");
                let mut needed: Vec<&str> = schemes.iter().map(|s| s.name()).collect();
                if needed.is_empty() {
                    // Every Linear kept: a checkpoint in its own 16-bit dtype.
                    needed.push(if wb.by_type.contains_key("f16") {
                        "f16"
                    } else {
                        "bf16"
                    });
                }
                let missing: Vec<&str> = needed
                    .into_iter()
                    .filter(|s| !runs.iter().any(|r| r == s))
                    .collect();
                if !missing.is_empty() {
                    notes.push(format!(
                        "{} on `{}` is not listed as accepting {} weights (it lists: {}).",
                        rt,
                        target.id,
                        missing.join(" or "),
                        runs.join(", ")
                    ))
                }
            }
            Some((rt, runs))
                if !model
                    .format
                    .runtime_entries()
                    .iter()
                    .any(|f| runs.iter().any(|r| r == f)) =>
            {
                notes.push(format!(
                    "{} on `{}` is not listed as accepting {} weights (it lists: {}).",
                    rt,
                    target.id,
                    model.format.runtime_entries().join(" or "),
                    runs.join(", ")
                ))
            }
            _ => {}
        }
    }
    if engine == Engine::LlamaCpp && !model.format.llama_cpp_can_serve() {
        notes.push(format!(
            "llama.cpp does not load {} weights; costed by bytes anyway.",
            model.format
        ));
    }
    match (engine, w.kv_type) {
        (Engine::LlamaCpp, KvType::Fp8) => notes
            .push("llama.cpp has no fp8 KV cache (it has q8_0); costed by bytes anyway.".into()),
        (Engine::Vllm | Engine::TrtLlm, KvType::Q8_0 | KvType::Q4_0) => notes.push(format!(
            "{engine} has no {} KV cache (it has fp8); costed by bytes anyway.",
            w.kv_type.name()
        )),
        _ => {}
    }

    // Time.
    let chosen = cal.lookup(engine.class(), target.class);
    if let Some(c) = &chosen {
        let f = &c.factors;
        if c.borrowed {
            notes.push(format!(
                "No {} factors are fitted for {} devices (measurements of fewer than 4 hardware models, or none: too few to fit a class): factors borrowed from {} on {}, so the band is wide (x{:.2}-x{:.2} of the central figure, prefill x{:.2}-x{:.2}: the borrowed class's held-out band widened to x0.5 below and x1.5 above) and the central figure is not fitted to this hardware (`kiln targets` says which of its figures a measurement checks).",
                engine.class().name(),
                target.class.name(),
                c.engine.name(),
                c.fitted_on.name(),
                f.band_low,
                f.band_high,
                f.prefill_band_low,
                f.prefill_band_high
            ));
        } else if f.pooled_band {
            notes.push(format!(
                "The band (x{:.2}-x{:.2} of the central figure, prefill x{:.2}-x{:.2}) is that of all calibrated classes: the {} rows on {} devices come from fewer than 4 hardware models, too few to measure how far a new one strays.",
                f.band_low,
                f.band_high,
                f.prefill_band_low,
                f.prefill_band_high,
                engine.class().name(),
                target.class.name()
            ));
        }
    }
    if let (EngineClass::LlamaCpp, Some(c)) = (engine.class(), &chosen) {
        notes.push(match w.engine_version {
            EngineVersion::Current => format!(
                "Speed modelled for {} (--engine-version 2025); for 2024 builds give --engine-version 2024 (fitted: x{:.2} bandwidth, x{:.2} compute).",
                w.engine_version.describe(),
                c.factors.gen2024_bandwidth,
                c.factors.gen2024_compute
            ),
            EngineVersion::Llama2024 => format!(
                "Speed modelled for {} (--engine-version 2024); current builds are faster.",
                w.engine_version.describe()
            ),
        });
    }
    let ref_order: &[Precision] = match engine.class() {
        // llama.cpp multiplies on the tensor cores (fp16 rate) and dequantizes on
        // the SIMT cores (fp32 rate, `simt_cost`): see CALIBRATION.md.
        EngineClass::LlamaCpp => &[Precision::Fp16, Precision::Bf16, Precision::Fp32],
        EngineClass::Server => model.format.server_compute(),
    };
    let bound_order: Vec<Precision> = match engine.class() {
        EngineClass::LlamaCpp => vec![
            Precision::Int8,
            Precision::Fp16,
            Precision::Bf16,
            Precision::Fp32,
        ],
        EngineClass::Server => model.format.server_compute().to_vec(),
    };
    let mut peak_ref = known_peak(target, ref_order);
    if engine.class() == EngineClass::LlamaCpp {
        // llama.cpp multiplies with 16-bit accumulation (cuBLAS COMPUTE_16F)
        // or on the INT8 tensor cores (MMQ): its rate is the full-rate FP16
        // one, half the INT8 peak, where that is known. GeForce cards publish
        // their FP16 peak with FP32 accumulation, half that rate.
        if let (Some((p, v)), Some((_, i8))) = (peak_ref, known_peak(target, &[Precision::Int8])) {
            peak_ref = Some((p, v.max(i8 / 2.0)));
        }
    }
    let best = |order: &[Precision]| {
        order
            .iter()
            .filter_map(|p| known_peak(target, std::slice::from_ref(p)))
            .map(|(_, v)| v)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    let mut peak_bound = best(&bound_order);
    // A planned mixture whose Linears partly multiply with quantized
    // activations: each share of the matmul weights at its own rate, so the
    // peak is their weighted harmonic mean.
    if engine.class() == EngineClass::Server && !wb.act_quantized.is_empty() {
        let all = (wb.matmul_params_dense + wb.matmul_params_experts).max(1) as f64;
        let mix = |base: Option<f64>, peak_of: &dyn Fn(CtScheme) -> Option<f64>| {
            let base = base?;
            let mut inv = 0.0;
            let mut rest = 1.0;
            for (&s, &(_, params)) in &wb.act_quantized {
                let share = params as f64 / all;
                rest -= share;
                inv += share / peak_of(s).unwrap_or(base);
            }
            Some(1.0 / (inv + rest.max(0.0) / base))
        };
        peak_ref = peak_ref.and_then(|(p, v)| {
            Some((
                p,
                mix(Some(v), &|s| {
                    known_peak(target, s.compute()).map(|(_, v)| v)
                })?,
            ))
        });
        peak_bound = mix(peak_bound, &|s| best(s.compute()));
        let share: u64 = wb.act_quantized.values().map(|&(_, p)| p).sum();
        notes.push(format!(
            "{:.0}% of the matmul weights multiply with quantized activations ({}): the compute peak is mixed by their share.",
            100.0 * share as f64 / all,
            wb.act_quantized
                .keys()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let bw = target.bandwidth_bytes_per_s();
    if bw.is_none() {
        notes.push(format!(
            "Memory bandwidth of `{}` is unknown: no time, throughput or cost is estimated.",
            target.id
        ));
    }
    if peak_ref.is_none() {
        notes.push(format!(
            "No known peak of `{}` in {}: prefill and time to first token are not estimated; decode assumes it is bandwidth-bound.",
            target.id,
            ref_order.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
        ));
    }
    if target.is_uncertain("memory_bandwidth_gbps") {
        notes.push(format!(
            "The bandwidth figure of `{}` is marked uncertain.",
            target.id
        ));
    }
    if let Some((p, _)) = peak_ref {
        if target.is_uncertain(&format!("peak_tflops.{}", p.name())) {
            notes.push(format!(
                "The {} peak of `{}` is marked uncertain.",
                p.name(),
                target.id
            ));
        }
    }
    let ic = target.interconnect_gbps.get().map(|g| g * 1e9);
    if tp > 1 && ic.is_none() {
        notes.push(format!(
            "Interconnect bandwidth of `{}` is unknown: all-reduce costs only their fitted latency.",
            target.id
        ));
    }

    let mut est = Estimate {
        target: target.id.clone(),
        engine,
        engine_version: w.engine_version,
        format: model.format.name().to_string(),
        kv_type: w.kv_type,
        batch,
        context: ctx,
        prompt: w.prompt,
        gen: w.gen,
        devices,
        tensor_parallel: tp,
        replicas,
        min_devices,
        fits,
        max_batch: max_batch_at(tp),
        params: wb.params,
        active_params: 0,
        weights_bytes: wb.total,
        kv_bytes_per_token: kv_per_token.round() as u64,
        kv_bytes: (batch as f64 * ctx as f64 * kv_per_token).round() as u64,
        overhead_bytes_per_device: overhead,
        memory_per_device_bytes: need(batch, tp).round() as u64,
        memory_usable_per_device_bytes: usable.map(|u| u.round() as u64),
        prefill_seconds: Band::none(),
        ttft_seconds: Band::none(),
        decode_tokens_per_second: Band::none(),
        throughput_tokens_per_second: Band::none(),
        e2e_seconds: Band::none(),
        usd_per_million_tokens: Band::none(),
        joules_per_token: Band::none(),
        compute_reference: peak_ref.map(|(p, _)| p),
        calibration: chosen,
        notes,
    };
    let m = Machine {
        arch,
        w: wb,
        bw: bw.unwrap_or(0.0),
        peak_ref: peak_ref.map(|(_, v)| v),
        peak_bound,
        peak_simt: known_peak(target, &[Precision::Fp32]).map(|(_, v)| v),
        ic,
        tp: if layer_split { 1.0 } else { tp as f64 },
        kv_per_token,
        embedding_read: wb.embedding_is_output,
        float_share: wb.float_share(),
        dequant_share: match model.format {
            WeightFormat::Scheme(s, _) if s.quantizes_activations() => 0.0,
            _ if !wb.act_quantized.is_empty() => {
                let q: u64 = wb.act_quantized.values().map(|&(b, _)| b).sum();
                (1.0 - wb.float_share() - q as f64 / wb.total.max(1) as f64).max(0.0)
            }
            _ => 1.0 - wb.float_share(),
        },
    };
    est.active_params = m.active_matmul().round() as u64;
    let (Some(chosen), Some(_)) = (chosen, bw) else {
        return Ok(est);
    };
    let f = &chosen.factors;
    let (gen_bw, gen_compute) = match (engine.class(), w.engine_version) {
        (EngineClass::LlamaCpp, EngineVersion::Llama2024) => {
            (f.gen2024_bandwidth, f.gen2024_compute)
        }
        _ => (1.0, 1.0),
    };
    let fitted = Eff {
        ideal: false,
        bw: f.bandwidth_efficiency * gen_bw,
        compute: f.compute_efficiency * gen_compute,
        simt: f.simt_cost,
        float_bw: f.float_bandwidth,
        byte_s: f.byte_cost_ps * 1e-12,
        layer_s: chosen.factors.layer_overhead_us * 1e-6,
        allreduce_s: cal.allreduce_latency_us * 1e-6,
    };
    let ideal = Eff {
        ideal: true,
        bw: 1.0,
        compute: 1.0,
        simt: 0.0,
        float_bw: 1.0,
        byte_s: 0.0,
        layer_s: 0.0,
        allreduce_s: 0.0,
    };
    // Decode, throughput and end-to-end time take the band of the decode and
    // throughput rows; prefill and time to first token that of the prefill rows.
    let band = (f.band_low, f.band_high);
    let prefill_band = (f.prefill_band_low, f.prefill_band_high);
    let b = batch as f64;
    let (p, g) = (w.prompt as f64, w.gen as f64);
    let mid = p + g / 2.0;

    let step_c = m.step(b, mid, &fitted, false);
    let step_b = m.step(b, mid, &ideal, false);
    let pre_c = m.prefill(b, p, &fitted);
    let pre_b = m.prefill(b, p, &ideal);
    let first_c = if p > 0.0 {
        pre_c
    } else {
        m.step(b, 0.0, &fitted, false)
    };
    let first_b = if p > 0.0 {
        pre_b
    } else {
        m.step(b, 0.0, &ideal, false)
    };
    if let (Some(c), Some(bd)) = (pre_c, pre_b) {
        est.prefill_seconds = Band::time(c, bd, prefill_band);
    }
    if let (Some(c), Some(bd)) = (first_c, first_b) {
        est.ttft_seconds = Band::time(c, bd, prefill_band);
    }
    if let (Some(c), Some(bd)) = (step_c, step_b) {
        est.decode_tokens_per_second = Band::rate(1.0 / c, 1.0 / bd, band);
    }
    let extra = (g - 1.0).max(0.0);
    if let (Some(fc), Some(fb), Some(sc), Some(sb)) = (first_c, first_b, step_c, step_b) {
        let e2e_c = fc + extra * sc;
        let e2e_b = fb + extra * sb;
        est.e2e_seconds = Band::time(e2e_c, e2e_b, band);
        if g > 0.0 {
            let r = replicas as f64;
            est.throughput_tokens_per_second =
                Band::rate(r * b * g / e2e_c, r * b * g / e2e_b, band);
        } else {
            est.notes.push(
                "--gen 0: no output tokens, so no throughput, cost or energy per token.".into(),
            );
        }
    }
    let thr = est.throughput_tokens_per_second;
    if thr.central.is_some() {
        match target.price_per_hour_usd {
            Figure::Known(usd) => {
                est.usd_per_million_tokens =
                    Band::per_rate(usd * devices as f64 / 3600.0 * 1e6, &thr);
            }
            Figure::Unknown => est.notes.push(format!(
                "Price of `{}` is unknown: no $ per million tokens.",
                target.id
            )),
        }
        match target.tdp_w {
            Figure::Known(watts) => {
                est.joules_per_token = Band::per_rate(watts * devices as f64, &thr);
                est.notes.push("Energy uses board power (TDP) as drawn all the time: host CPU, fans and idle are not counted.".into());
            }
            Figure::Unknown => est.notes.push(format!(
                "Power of `{}` is unknown: no joules per token.",
                target.id
            )),
        }
    }
    Ok(est)
}
