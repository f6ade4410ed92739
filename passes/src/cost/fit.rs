//! The calibration fit: maps each row of
//! `bench/calibration/measured-calibration.csv` to an [`estimate`] call,
//! fits the efficiency factors by coordinate descent on the sum of
//! |ln(predicted / measured)|, and writes `calibration.toml`,
//! `CALIBRATION.md` and the tables in the repository README.md.
//!
//! Reproduce with `KILN_BLESS=1 cargo test -p passes --lib cost::fit`; without
//! `KILN_BLESS` the tests check that the shipped files are what the fit
//! produces and that its error has not regressed past [`LIMITS`].
//!
//! What must stay true: one factor set per (engine class, device class), one
//! global all-reduce latency: never a factor per row; every row that is not
//! used is listed with its reason; every assumption made to turn a row into a
//! workload is written in the report.
//!
//! Long file: the calibration fit and its row-by-row report share the row
//! model (hardware, model shapes, formats) that a split would duplicate.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use super::calibration::{
    round6, Calibration, Engine, EngineClass, EngineVersion, Factors, Validated,
};
use super::crossval::{self, apply_bands, held_out, Scheme};
use super::estimate::{estimate, Batch, Estimate, KvType, ModelCost, Workload};
use super::target::{find_builtin, DeviceClass, Target};
use super::weights::{weight_bytes, Recipe, WeightBytes, WeightFormat, FORMAT_TABLE};
use crate::ir::Arch;

/// Median absolute percentage error allowed per metric group with the
/// shipped factors; the test fails above these. Lower them when the model
/// improves; raising one needs a reason in the commit.
const LIMITS: &[(&str, f64)] = &[
    // Raised from 7 / 5 / 8 when the Llama 3 rows of 2024 builds (148 rows, 7
    // NVIDIA GPUs and 3 Macs, long prompts, multi-GPU) joined the data: the
    // error is now measured over much more varied hardware and workloads.
    ("prefill", 10.0),
    ("decode", 8.0),
    ("ttft", 22.0),
    // Raised from 15 when 120 server rows (TensorRT-LLM v1.0, Gaudi, MI300X
    // vLLM, MLPerf v5.1) joined: throughput runs of new engines and devices.
    ("batched decode", 17.0),
    ("MLPerf throughput", 36.0),
    ("energy", 52.0),
    // Raised from 9 with the server rows of issue 13 (see batched decode).
    ("all", 11.0),
];

/// Prompt length assumed for MLPerf llama2-70b rows (the CSV gives only the
/// ~294-token average output; the prompt is taken to be the same length).
const MLPERF_PROMPT: usize = 294;
const MLPERF_GEN: usize = 294;

fn manifest(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// RFC 4180 fields (quotes, doubled quotes, commas inside quotes).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, '\r') => {}
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// One CSV row, by column name.
#[derive(Debug, Clone)]
struct Row {
    cols: BTreeMap<String, String>,
}

impl Row {
    fn get(&self, k: &str) -> &str {
        self.cols.get(k).map(String::as_str).unwrap_or("")
    }
}

fn read_rows() -> Vec<Row> {
    let text = std::fs::read_to_string(manifest("../bench/calibration/measured-calibration.csv"))
        .expect("bench/calibration/measured-calibration.csv");
    let mut rows = parse_csv(&text).into_iter();
    let header = rows.next().expect("header");
    rows.filter(|r| r.len() > 1)
        .map(|r| Row {
            cols: header.iter().cloned().zip(r).collect(),
        })
        .collect()
}

/// Hardware named in the CSV -> kiln profile, with what the mapping assumes.
const HARDWARE: &[(&str, &str, &str)] = &[
    (
        "Apple M1 (7/8-core GPU)",
        "m1",
        "8-core profile; the CSV keeps the best of the 7/8-core rows",
    ),
    ("Apple M1 Pro", "m1-pro", ""),
    (
        "Apple M1 Max (max of 24/32-core rows)",
        "m1-max",
        "32-core profile",
    ),
    (
        "Apple M1 Ultra (max of 48/64-core rows; UNCERTAIN mapping)",
        "m1-ultra",
        "64-core profile; mapping uncertain per the CSV",
    ),
    ("Apple M2", "m2", ""),
    ("Apple M2 Pro", "m2-pro", ""),
    (
        "Apple M2 Max (max of 30/38-core rows)",
        "m2-max",
        "38-core profile",
    ),
    (
        "Apple M2 Ultra (max of 60/76-core rows)",
        "m2-ultra",
        "76-core profile",
    ),
    ("Apple M3 Pro", "m3-pro", ""),
    (
        "Apple M3 Max (max of 30/40-core rows; 40c=400GB/s)",
        "m3-max",
        "40-core profile",
    ),
    (
        "Apple M4 Pro (max row; base M4 rows folded in)",
        "m4-pro",
        "",
    ),
    (
        "Apple M4 Max (max of 32/40-core rows; 40c=546GB/s)",
        "m4-max",
        "40-core profile",
    ),
    ("NVIDIA RTX 5090", "rtx-5090", ""),
    (
        "NVIDIA H100 80GB (SXM/PCIe not stated)",
        "h100-pcie",
        "form factor not stated; the PCIe profile is assumed",
    ),
    (
        "NVIDIA A100 80GB (SXM/PCIe not stated)",
        "a100-80g-sxm",
        "form factor not stated; the SXM profile is assumed",
    ),
    (
        "NVIDIA RTX 4090 D",
        "rtx-4090",
        "the 4090 D has 114 of the 4090's 128 SMs: compute overstated by ~12%",
    ),
    ("NVIDIA RTX 6000 Ada", "rtx-6000-ada", ""),
    ("NVIDIA L40", "l40", ""),
    (
        "NVIDIA Tesla V100 16GB",
        "v100",
        "SXM2 profile; the PCIe card has the same bandwidth",
    ),
    ("NVIDIA A40", "a40", ""),
    ("NVIDIA A30", "a30", ""),
    ("NVIDIA T4", "t4", ""),
    ("AMD Radeon RX 7900 XTX", "rx-7900-xtx", ""),
    ("NVIDIA A100 80GB (SXM assumed)", "a100-80g-sxm", ""),
    ("NVIDIA H100 SXM (HBM3 80GB)", "h100-sxm", ""),
    ("NVIDIA L40S", "l40s", ""),
    (
        "NVIDIA A100 80GB",
        "a100-80g-sxm",
        "form factor not stated; the SXM profile is assumed",
    ),
    ("NVIDIA A100 40GB SXM", "a100-40g", ""),
    ("NVIDIA H100 SXM 80GB", "h100-sxm", ""),
    ("NVIDIA H200 SXM 141GB", "h200", ""),
    ("NVIDIA B200 SXM 180GB", "b200", ""),
    ("NVIDIA GH200 144GB", "gh200", ""),
    ("AMD Instinct MI300X 192GB", "mi300x", ""),
    ("NVIDIA H100 PCIe 80GB", "h100-pcie", ""),
    ("NVIDIA H100 NVL 94GB", "h100-nvl", ""),
    ("NVIDIA GeForce RTX 3090", "rtx-3090", ""),
    ("NVIDIA GeForce RTX 4090", "rtx-4090", ""),
    ("NVIDIA A100 SXM4 80GB", "a100-80g-sxm", ""),
    ("Apple M1 Max 32-core GPU 64GB", "m1-max", ""),
    ("Apple M2 Ultra 76-core GPU 192GB", "m2-ultra", ""),
    ("Apple M3 Max 40-core GPU 64GB", "m3-max", ""),
    ("AMD Instinct MI325X 256GB", "mi325x", ""),
    (
        "NVIDIA GB200 (B200 GPU of GB200 NVL, 186GB)",
        "gb200",
        "per-GPU profile (1200 W, 8 TB/s); the Grace CPU is not modelled",
    ),
    (
        "NVIDIA A100 40GB (form factor not stated; Lambda cloud)",
        "a100-40g",
        "the PCIe and SXM 40 GB cards both have 1,555 GB/s",
    ),
    ("Intel Gaudi 3 (HL-325L OAM, 128GB HBM2e)", "gaudi3", ""),
    (
        "Intel Gaudi 2 (HL-225H, 96GB HBM2e)",
        "gaudi2",
        "its fp8 peak is not published: server compute falls back to the bf16 peak",
    ),
    (
        "AWS Inferentia2 (inf2.48xlarge, 12 chips / 24 NeuronCores)",
        "inferentia2",
        "per-chip profile; n_devices counts chips (2 NeuronCores each)",
    ),
];

fn arch(
    n_layer: usize,
    hidden: usize,
    n_head: usize,
    n_head_kv: usize,
    ffn: usize,
    vocab: usize,
) -> Arch {
    Arch {
        family: "llama".into(),
        hf_architecture: None,
        n_layer,
        hidden,
        n_head,
        n_head_kv,
        head_dim: hidden / n_head,
        ffn,
        vocab,
        context_length: 4096,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        tied_embeddings: false,
        n_expert: 0,
        n_expert_used: 0,
        ..Arch::default()
    }
}

/// The architectures the rows measure, from their published configs.
fn model_arch(name: &str) -> Option<(Arch, &'static str)> {
    Some(if name.contains("Mixtral") {
        (
            Arch {
                n_expert: 8,
                n_expert_used: 2,
                ..arch(32, 4096, 32, 8, 14336, 32000)
            },
            "Mixtral-8x7B config",
        )
    } else if name.starts_with("Llama 3.1 405B") {
        (
            arch(126, 16384, 128, 8, 53248, 128256),
            "Llama-3.1-405B config (126 layers of 16384, GQA, 8 KV heads, 128k vocabulary)",
        )
    } else if ["Llama 3 70B", "Llama 3.1 70B", "Llama 3.3 70B"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        (
            arch(80, 8192, 64, 8, 28672, 128256),
            "Llama-3-70B config (GQA, 8 KV heads, 128k vocabulary; 3.1 and 3.3 share it)",
        )
    } else if name.starts_with("Llama 3 8B") || name.starts_with("Llama 3.1 8B") {
        (
            arch(32, 4096, 32, 8, 14336, 128256),
            "Llama-3-8B config (GQA, 8 KV heads, 128k vocabulary; 3.1 shares it)",
        )
    } else if name.contains("70B") {
        (
            arch(80, 8192, 64, 8, 28672, 32000),
            "Llama-2-70B config (GQA, 8 KV heads)",
        )
    } else if name.contains("GPT-style") {
        (
            Arch { tied_embeddings: true, ..arch(40, 5120, 40, 40, 13653, 50272) },
            "GPT-style 13B: 40 layers of 5120, its 2-matrix 4x FFN written as a 3-matrix FFN of equal size, tied 50k vocabulary",
        )
    } else if name.contains("13B") {
        (arch(40, 5120, 40, 40, 13824, 32000), "Llama-2-13B config")
    } else if name.contains("7B") {
        (
            arch(32, 4096, 32, 32, 11008, 32000),
            "LLaMA / Llama-2-7B config",
        )
    } else {
        return None;
    })
}

fn row_format(p: &str) -> Option<WeightFormat> {
    let p = p.to_ascii_lowercase();
    Some(if p.starts_with("q4_0") {
        WeightFormat::Recipe(Recipe::Q4_0)
    } else if p.starts_with("q4_k_m") {
        WeightFormat::Recipe(Recipe::Q4_K_M)
    } else if p.starts_with("q8_0") {
        WeightFormat::Recipe(Recipe::Q8_0)
    } else if p.starts_with("fp8") {
        WeightFormat::parse("fp8").ok()?
    } else if p.starts_with("fp4") {
        WeightFormat::parse("fp4").ok()?
    } else if p == "f16" || p == "fp16" {
        WeightFormat::parse("f16").ok()?
    } else {
        return None;
    })
}

fn row_engine(e: &str) -> Engine {
    if e.starts_with("llama.cpp") {
        Engine::LlamaCpp
    } else if e.contains("vLLM") {
        Engine::Vllm
    } else {
        // lmdeploy TurboMind, TensorRT(-LLM), FasterTransformer: NVIDIA's batched engines.
        Engine::TrtLlm
    }
}

/// The llama.cpp generation of a row: `build N` in its engine column (the
/// llama-bench build number) placed by [`EngineVersion::from_build`]; rows
/// without a build (the 2025 scoreboards, which keep each device's latest
/// figure) are the current generation.
fn row_version(engine: &str) -> EngineVersion {
    engine
        .split("build ")
        .nth(1)
        .and_then(|t| {
            t.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .map_or(EngineVersion::Current, EngineVersion::from_build)
}

/// Which headline group a metric belongs to.
fn group(metric: &str) -> &'static str {
    match metric {
        "prefill_tok_s" | "prefill_latency_ms" => "prefill",
        "decode_tok_s" | "decode_ms_per_token" => "decode",
        "ttft_ms" | "ttft_s" => "ttft",
        "decode_throughput_tok_s" | "throughput_tok_s" | "throughput_tok_s_per_gpu" => {
            "batched decode"
        }
        "throughput_tok_s_total" => "MLPerf throughput",
        "joules_per_output_token_system" => "energy",
        _ => "other",
    }
}

/// The headline metric a row scores: batch-1 `decode`, `prefill` (prompt
/// processing, prefill latency and time to first token), high-batch
/// `throughput` (batched decode and MLPerf Offline), or `energy`.
pub(super) fn headline(metric: &str) -> &'static str {
    match group(metric) {
        "decode" => "decode",
        "prefill" | "ttft" => "prefill",
        "batched decode" | "MLPerf throughput" => "throughput",
        _ => "energy",
    }
}

/// Is the metric a time or energy (lower is better) rather than a rate?
fn lower_is_better(metric: &str) -> bool {
    matches!(
        metric,
        "ttft_ms"
            | "ttft_s"
            | "prefill_latency_ms"
            | "decode_ms_per_token"
            | "joules_per_output_token_system"
    )
}

/// A row turned into an estimate request.
pub(super) struct Case {
    row: Row,
    pub(super) id: String,
    pub(super) metric: String,
    pub(super) measured: f64,
    arch: Arch,
    weights: WeightBytes,
    format: WeightFormat,
    target: Target,
    engine: Engine,
    workload: Workload,
    /// An MLPerf Offline row: the best tensor-parallel layout is searched.
    mlperf: bool,
    /// Used in the fit (energy rows are only evaluated).
    pub(super) fit: bool,
}

impl Case {
    /// The factor set this row is predicted with.
    pub(super) fn key(&self) -> (EngineClass, DeviceClass) {
        (self.engine.class(), self.target.class)
    }

    /// The hardware model measured (the kiln profile it maps to): the group
    /// left out together in leave-one-hardware-out cross-validation.
    pub(super) fn hardware(&self) -> &str {
        &self.target.id
    }

    /// Where the figure was published: the group of leave-one-source-out.
    pub(super) fn source(&self) -> &str {
        self.row.get("source_url")
    }

    /// The CSV's hardware class (Apple Silicon GPU, NVIDIA GPU, ...).
    pub(super) fn hw_class(&self) -> &str {
        self.row.get("hw_class")
    }
}

pub(super) struct Excluded {
    id: String,
    hardware: String,
    metric: String,
    reason: String,
}

pub(super) fn cases() -> (Vec<Case>, Vec<Excluded>, Vec<String>) {
    let mut cases = Vec::new();
    let mut excluded = Vec::new();
    let mut mapping_notes = BTreeMap::new();
    for row in read_rows() {
        let ex = |reason: &str| Excluded {
            id: row.get("id").into(),
            hardware: row.get("hardware").into(),
            metric: row.get("metric").into(),
            reason: reason.into(),
        };
        let hw = row.get("hardware");
        let Some((_, target_id, note)) = HARDWARE.iter().find(|(h, _, _)| *h == hw) else {
            excluded.push(ex("no kiln profile for this hardware (its peak bandwidth was not verified in the reference research)"));
            continue;
        };
        if !note.is_empty() {
            mapping_notes.insert(format!("{hw} -> `{target_id}`: {note}"), ());
        }
        let batch_text = row.get("batch");
        if let Some(why) = row.get("notes").strip_prefix("outlier: ") {
            excluded.push(ex(&format!(
                "outlier: {}",
                why.split(';').next().unwrap_or(why)
            )));
            continue;
        }
        if let Some(why) = row.get("notes").strip_prefix("excluded: ") {
            excluded.push(ex(why.split(';').next().unwrap_or(why)));
            continue;
        }
        if batch_text.contains("Server") {
            excluded.push(ex("MLPerf Server scenario: throughput under a latency-bounded arrival process (queueing), which the model does not cover"));
            continue;
        }
        let Some((arch, arch_note)) = model_arch(row.get("model")) else {
            excluded.push(ex("model architecture not known"));
            continue;
        };
        mapping_notes.insert(format!("{} -> {arch_note}", row.get("model")), ());
        let Some(format) = row_format(row.get("precision")) else {
            excluded.push(ex("precision not mapped"));
            continue;
        };
        let engine = row_engine(row.get("engine"));
        let target = find_builtin(target_id).expect("mapped profile exists");
        let n: usize = row.get("n_devices").parse().expect("n_devices");
        let metric = row.get("metric").to_string();
        let measured: f64 = row.get("value").parse().expect("value");
        let num = |k: &str, default: usize| {
            row.get(k)
                .trim_start_matches('~')
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let kv_type = match (engine, format) {
            (Engine::LlamaCpp, _) => KvType::F16,
            (_, WeightFormat::Recipe(_)) => KvType::F16,
            (_, f) if matches!(f.name(), "fp8" | "fp4") => KvType::Fp8,
            _ => KvType::F16,
        };
        let mut w = Workload {
            batch: Batch::Fixed(1),
            context: None,
            prompt: num("prompt_tokens", MLPERF_PROMPT),
            gen: num("gen_tokens", MLPERF_GEN),
            kv_type,
            devices: Some(n),
            tensor_parallel: Some(n),
            engine_version: row_version(row.get("engine")),
        };
        let weights = weight_bytes(&crate::arch::synthesize(&arch), &arch, format);
        let mlperf = batch_text.starts_with("max");
        let stated = |k: &str| {
            row.get(k)
                .trim_start_matches('~')
                .split_whitespace()
                .next()
                .is_some_and(|v| v.parse::<f64>().is_ok())
        };
        let lengths_stated = stated("prompt_tokens") && stated("gen_tokens");
        if !mlperf && !lengths_stated {
            mapping_notes.insert(
                format!(
                    "row {} ({}, {}): prompt and output lengths not stated; {MLPERF_PROMPT} and {MLPERF_GEN} tokens assumed",
                    row.get("id"),
                    hw,
                    row.get("metric")
                ),
                (),
            );
        }
        if mlperf {
            // MLPerf Offline: as many sequences as fit; the layout (data-parallel
            // replicas of a tensor-parallel group) is chosen in `predict`.
            w.batch = Batch::Max;
        } else {
            w.batch = Batch::Fixed(batch_text.parse().expect("batch"));
        }
        let fit = group(&metric) != "energy";
        cases.push(Case {
            id: row.get("id").into(),
            row,
            metric,
            measured,
            arch,
            weights,
            format,
            target,
            engine,
            workload: w,
            mlperf,
            fit,
        });
    }
    (cases, excluded, mapping_notes.into_keys().collect())
}

/// The model's prediction for a case, in the row's unit.
pub(super) fn predict(c: &Case, cal: &Calibration) -> Option<f64> {
    let model = ModelCost {
        arch: &c.arch,
        weights: &c.weights,
        format: c.format,
    };
    let e: Estimate = if c.mlperf && c.row.get("batch").contains("MLPerf") {
        // MLPerf submitters choose the layout: try every power-of-two
        // tensor-parallel group that divides the devices and holds the model,
        // keep the fastest. Other throughput runs state their tensor-parallel
        // group (`n_devices`), which is used as it is.
        let n = c.workload.devices.unwrap_or(1);
        (0..=3)
            .map(|k| 1usize << k)
            .filter(|tp| *tp <= n && n % tp == 0)
            .filter_map(|tp| {
                let w = Workload {
                    tensor_parallel: Some(tp),
                    ..c.workload.clone()
                };
                estimate(model, &c.target, c.engine, &w, cal)
                    .ok()
                    .filter(|e| e.fits == Some(true))
            })
            .max_by(|a, b| {
                let t = |e: &Estimate| e.throughput_tokens_per_second.central.unwrap_or(0.0);
                t(a).total_cmp(&t(b))
            })?
    } else {
        estimate(model, &c.target, c.engine, &c.workload, cal).ok()?
    };
    let n = c.workload.devices.unwrap_or(1) as f64;
    Some(match c.metric.as_str() {
        "prefill_tok_s" => c.workload.prompt as f64 / e.prefill_seconds.central?,
        "prefill_latency_ms" => e.prefill_seconds.central? * 1e3,
        "decode_tok_s" => e.decode_tokens_per_second.central?,
        "decode_ms_per_token" => 1e3 / e.decode_tokens_per_second.central?,
        "ttft_ms" => e.ttft_seconds.central? * 1e3,
        "ttft_s" => e.ttft_seconds.central?,
        "decode_throughput_tok_s" => {
            e.decode_tokens_per_second.central? * e.batch as f64 * e.replicas as f64
        }
        "throughput_tok_s" | "throughput_tok_s_total" => e.throughput_tokens_per_second.central?,
        "throughput_tok_s_per_gpu" => e.throughput_tokens_per_second.central? / n,
        "joules_per_output_token_system" => e.joules_per_token.central?,
        _ => return None,
    })
}

/// measured / predicted as a rate (> 1: the hardware did better than predicted).
pub(super) fn rate_ratio(c: &Case, predicted: f64) -> f64 {
    if lower_is_better(&c.metric) {
        predicted / c.measured
    } else {
        c.measured / predicted
    }
}

fn loss(cases: &[&Case], cal: &Calibration) -> f64 {
    cases
        .iter()
        .filter(|c| c.fit)
        .map(|c| match predict(c, cal) {
            Some(p) if p > 0.0 && p.is_finite() => (p / c.measured).ln().abs(),
            _ => 10.0,
        })
        .sum()
}

#[derive(Clone, Copy)]
enum Param {
    Allreduce,
    Bw(EngineClass, DeviceClass),
    Compute(EngineClass, DeviceClass),
    Simt(EngineClass, DeviceClass),
    Layer(EngineClass, DeviceClass),
    Float(EngineClass, DeviceClass),
    ByteCost(EngineClass, DeviceClass),
    Gen2024Bw(EngineClass, DeviceClass),
    Gen2024Compute(EngineClass, DeviceClass),
}

fn get(cal: &Calibration, p: Param) -> f64 {
    match p {
        Param::Allreduce => cal.allreduce_latency_us,
        Param::Bw(e, d) => cal.factors[&(e, d)].bandwidth_efficiency,
        Param::Compute(e, d) => cal.factors[&(e, d)].compute_efficiency,
        Param::Simt(e, d) => cal.factors[&(e, d)].simt_cost,
        Param::Layer(e, d) => cal.factors[&(e, d)].layer_overhead_us,
        Param::Float(e, d) => cal.factors[&(e, d)].float_bandwidth,
        Param::ByteCost(e, d) => cal.factors[&(e, d)].byte_cost_ps,
        Param::Gen2024Bw(e, d) => cal.factors[&(e, d)].gen2024_bandwidth,
        Param::Gen2024Compute(e, d) => cal.factors[&(e, d)].gen2024_compute,
    }
}

fn set(cal: &mut Calibration, p: Param, v: f64) {
    match p {
        Param::Allreduce => cal.allreduce_latency_us = v,
        Param::Bw(e, d) => cal.factors.get_mut(&(e, d)).unwrap().bandwidth_efficiency = v,
        Param::Compute(e, d) => cal.factors.get_mut(&(e, d)).unwrap().compute_efficiency = v,
        Param::Simt(e, d) => cal.factors.get_mut(&(e, d)).unwrap().simt_cost = v,
        Param::Layer(e, d) => cal.factors.get_mut(&(e, d)).unwrap().layer_overhead_us = v,
        Param::Float(e, d) => cal.factors.get_mut(&(e, d)).unwrap().float_bandwidth = v,
        Param::ByteCost(e, d) => cal.factors.get_mut(&(e, d)).unwrap().byte_cost_ps = v,
        Param::Gen2024Bw(e, d) => cal.factors.get_mut(&(e, d)).unwrap().gen2024_bandwidth = v,
        Param::Gen2024Compute(e, d) => cal.factors.get_mut(&(e, d)).unwrap().gen2024_compute = v,
    }
}

fn bounds(p: Param) -> (f64, f64) {
    match p {
        Param::Allreduce => (0.0, 300.0),
        Param::Bw(..) => (0.2, 1.0),
        Param::Compute(..) => (0.02, 4.0),
        Param::Simt(..) => (0.0, 2.0),
        Param::Layer(..) => (0.0, 500.0),
        Param::ByteCost(..) => (0.0, 2.0),
        Param::Float(..) | Param::Gen2024Bw(..) | Param::Gen2024Compute(..) => (0.4, 2.0),
    }
}

pub(super) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let x = q * (sorted.len() - 1) as f64;
    let (i, f) = (x.floor() as usize, x.fract());
    if i + 1 < sorted.len() {
        sorted[i] * (1.0 - f) + sorted[i + 1] * f
    } else {
        sorted[i]
    }
}

/// Fit the factors of every (engine class, device class) pair with rows in
/// `cases`: coordinate descent over a grid then a finer grid, a fixed number
/// of sweeps (deterministic), starting from round values. Bands are left at
/// 1.0: they come from the cross-validation ([`super::crossval`]), never
/// from the residuals of the rows fitted.
pub(super) fn fit(cases: &[&Case]) -> Calibration {
    let mut cal = Calibration {
        allreduce_latency_us: 50.0,
        factors: BTreeMap::new(),
        validated: Vec::new(),
    };
    for c in cases.iter().filter(|c| c.fit) {
        cal.factors
            .entry(c.key())
            .or_insert(Factors {
                bandwidth_efficiency: 0.8,
                compute_efficiency: 0.5,
                simt_cost: 0.0,
                layer_overhead_us: 50.0,
                float_bandwidth: 1.0,
                byte_cost_ps: 0.0,
                gen2024_bandwidth: 1.0,
                gen2024_compute: 1.0,
                band_low: 1.0,
                band_high: 1.0,
                prefill_band_low: 1.0,
                prefill_band_high: 1.0,
                rows: 0,
                pooled_band: false,
            })
            .rows += 1;
    }
    // A class measured on fewer than MIN_GROUPS hardware models is not
    // fitted: its few rows cannot tell its shape (per-layer and per-byte
    // costs) from its efficiency (one Inferentia2 row, fitted freely, chose
    // full bandwidth and no layer overhead, so a 135M model was predicted at
    // the roofline, 40x an H100), so it borrows its engine's GPU factors with
    // the widened band, as a class without rows does, and its rows check them.
    let sparse: Vec<(EngineClass, DeviceClass)> = cal
        .factors
        .keys()
        .filter(|&&(e, d)| {
            let hw: BTreeSet<&str> = cases
                .iter()
                .filter(|c| c.fit && c.key() == (e, d))
                .map(|c| c.hardware())
                .collect();
            d != DeviceClass::Gpu
                && hw.len() < super::crossval::MIN_GROUPS
                && cal.factors.contains_key(&(e, DeviceClass::Gpu))
        })
        .copied()
        .collect();
    for k in &sparse {
        cal.factors.remove(k);
    }
    let mut params = vec![Param::Allreduce];
    for &(e, d) in cal.factors.keys() {
        params.extend([Param::Bw(e, d), Param::Compute(e, d), Param::Layer(e, d)]);
        if e == EngineClass::LlamaCpp {
            let rows = || cases.iter().filter(|c| c.fit && c.key() == (e, d));
            params.extend([Param::Simt(e, d), Param::ByteCost(e, d)]);
            // The kernel path and the build generation: fitted only where the
            // rows tell them apart (float and quantized rows; 2024 and current
            // builds), else they stay 1.
            let float = rows().filter(|c| c.weights.float_share() > 0.5).count();
            if float > 0 && float < rows().count() {
                params.push(Param::Float(e, d));
            }
            let old = rows()
                .filter(|c| c.workload.engine_version == EngineVersion::Llama2024)
                .count();
            if old > 0 && old < rows().count() {
                params.extend([Param::Gen2024Bw(e, d), Param::Gen2024Compute(e, d)]);
            }
        }
    }
    let dense: Vec<&Case> = cases
        .iter()
        .filter(|c| !sparse.contains(&c.key()))
        .copied()
        .collect();
    descend(&dense, &mut cal, &params);
    cal
}

/// Coordinate descent over `params`: a grid then a finer grid around the
/// best, five sweeps (deterministic).
fn descend(cases: &[&Case], cal: &mut Calibration, params: &[Param]) {
    for _sweep in 0..5 {
        for &p in params {
            let (lo, hi) = bounds(p);
            let mut best = (loss(cases, cal), get(cal, p));
            let step = (hi - lo) / 40.0;
            for i in 0..=40 {
                let v = lo + step * i as f64;
                set(cal, p, v);
                let l = loss(cases, cal);
                if l < best.0 - 1e-12 {
                    best = (l, v);
                }
            }
            let centre = best.1;
            for i in 0..=20 {
                let v = (centre - step + step * i as f64 / 10.0).clamp(lo, hi);
                set(cal, p, v);
                let l = loss(cases, cal);
                if l < best.0 - 1e-12 {
                    best = (l, v);
                }
            }
            set(cal, p, (best.1 * 1e6).round() / 1e6);
        }
    }
}

/// The (target, engine class, headline metric) triples the fitted rows measure.
fn validated(cases: &[Case]) -> Vec<Validated> {
    let mut n: BTreeMap<(String, EngineClass, &str), usize> = BTreeMap::new();
    for c in cases.iter().filter(|c| c.fit) {
        *n.entry((c.target.id.clone(), c.engine.class(), headline(&c.metric)))
            .or_default() += 1;
    }
    n.into_iter()
        .map(|((target, engine, metric), rows)| Validated {
            target,
            engine,
            metric: metric.to_string(),
            rows,
        })
        .collect()
}

struct Scored<'a> {
    case: &'a Case,
    predicted: Option<f64>,
    ape: Option<f64>,
}

fn score<'a>(cases: &'a [Case], cal: &Calibration) -> Vec<Scored<'a>> {
    cases
        .iter()
        .map(|c| {
            let predicted = predict(c, cal);
            let ape = predicted.map(|p| (p - c.measured).abs() / c.measured * 100.0);
            Scored {
                case: c,
                predicted,
                ape,
            }
        })
        .collect()
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// (n, median APE, 90th percentile APE) per key.
fn table_by<'a>(
    scored: &'a [Scored<'a>],
    key: impl Fn(&Scored<'a>) -> String,
) -> Vec<(String, usize, f64, f64)> {
    let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for s in scored {
        if let Some(a) = s.ape {
            groups.entry(key(s)).or_default().push(a);
        }
    }
    groups
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            (k, v.len(), percentile(&v, 0.5), percentile(&v, 0.9))
        })
        .collect()
}

fn group_mdape(scored: &[Scored<'_>]) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = table_by(scored, |s| group(&s.case.metric).to_string())
        .into_iter()
        .map(|(k, _, m, _)| (k, m))
        .collect();
    out.insert(
        "all".into(),
        median(scored.iter().filter_map(|s| s.ape).collect()),
    );
    out
}

fn md_table(title: &str, rows: &[(String, usize, f64, f64)]) -> String {
    let mut s = format!("| {title} | rows | median APE | 90th pct APE |\n|---|---:|---:|---:|\n");
    for (k, n, m, p90) in rows {
        let _ = writeln!(s, "| {k} | {n} | {m:.1}% | {p90:.1}% |");
    }
    s
}

/// The calibration table for the README: error per metric and per hardware class.
fn readme_table(scored: &[Scored<'_>]) -> String {
    let all = median(scored.iter().filter_map(|s| s.ape).collect());
    let n = scored.iter().filter(|s| s.ape.is_some()).count();
    format!(
        "{}\n{}\nAll {n} rows: median absolute percentage error {all:.1}%.\n",
        md_table("metric", &table_by(scored, |s| s.case.metric.clone())),
        md_table(
            "hardware class",
            &table_by(scored, |s| s.case.row.get("hw_class").to_string())
        ),
    )
}

/// Effective bits per weight of each recipe and serving format on the Llama-3 configs.
fn recipe_table() -> String {
    let a8 = super::tests::llama3_8b();
    let a70 = super::tests::llama3_70b();
    let (t8, t70) = (crate::arch::synthesize(&a8), crate::arch::synthesize(&a70));
    let mut s = String::from("| --type | Llama-3-8B GB | bits/weight | Llama-3-70B GB | bits/weight |\n|---|---:|---:|---:|---:|\n");
    let names: Vec<&str> = Recipe::ALL
        .iter()
        .map(|r| r.name())
        .chain(["f16", "bf16", "fp8", "int8", "int4", "fp4", "mxfp4"])
        .collect();
    for n in names {
        let f = WeightFormat::parse(n).unwrap();
        let b8 = weight_bytes(&t8, &a8, f);
        let b70 = weight_bytes(&t70, &a70, f);
        let _ = writeln!(
            s,
            "| {n} | {:.2} | {:.2} | {:.2} | {:.2} |",
            b8.total as f64 / 1e9,
            b8.bits_per_weight(),
            b70.total as f64 / 1e9,
            b70.bits_per_weight()
        );
    }
    s.push_str("\nPer-element bits of each encoding, and where they come from (`FORMAT_TABLE` in `passes/src/cost/weights.rs`):\n\n| format | bits per weight | source |\n|---|---|---|\n");
    for (f, b, src) in FORMAT_TABLE {
        let _ = writeln!(s, "| {f} | {b} | {src} |");
    }
    s
}

fn report(
    cal: &Calibration,
    scored: &[Scored<'_>],
    cv: &str,
    excluded: &[Excluded],
    notes: &[String],
) -> String {
    let mut s = String::new();
    s.push_str("# Calibration of the serving-cost model\n\n");
    s.push_str("Generated by `KILN_BLESS=1 cargo test -p passes --lib cost::fit` from\n`bench/calibration/measured-calibration.csv`; do not edit by hand.\n\n");
    s.push_str(
        "APE is |predicted - measured| / measured for each row, with the shipped factors.\n\n",
    );
    s.push_str("## Fitted factors\n\n");
    s.push_str("| engine class | device class | rows | bandwidth efficiency | compute efficiency | SIMT cost | overhead per layer (µs) | time per byte (ps) | float weights: bandwidth x | 2024 builds: bandwidth x | 2024 builds: compute x | band (held-out measured/predicted): decode, throughput | band: prefill, TTFT |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n");
    for ((e, d), f) in &cal.factors {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} - {:.2} | {:.2} - {:.2} |",
            e.name(),
            d.name(),
            f.rows,
            f.bandwidth_efficiency,
            f.compute_efficiency,
            f.simt_cost,
            f.layer_overhead_us,
            f.byte_cost_ps,
            f.float_bandwidth,
            f.gen2024_bandwidth,
            f.gen2024_compute,
            f.band_low,
            f.band_high,
            f.prefill_band_low,
            f.prefill_band_high
        );
    }
    if cal.factors.values().any(|f| f.pooled_band) {
        s.push_str("\nA class whose rows come from fewer than 4 hardware models takes the band of all classes (`pooled_band` in `calibration.toml`; `kiln estimate` says so): ");
        let pooled: Vec<String> = cal
            .factors
            .iter()
            .filter(|(_, f)| f.pooled_band)
            .map(|((e, d), _)| format!("{} on {}", e.name(), d.name()))
            .collect();
        s.push_str(&pooled.join(", "));
        s.push_str(".\n");
    }
    let _ = writeln!(
        s,
        "\nAll-reduce latency (tensor parallel, per all-reduce, two per layer): {} µs.\n",
        round6(cal.allreduce_latency_us)
    );
    s.push_str("Compute efficiency is relative to the fp16 peak for llama.cpp (tensor cores where the device has them), plus `SIMT cost` FP32 FLOPs per matmul FLOP at the FP32 peak (dequantization and activation quantization on the SIMT cores), and to the peak of the weight format (fp8, fp4) or of fp16 for server engines.\n\n");
    s.push_str("## Cross-validated error\n\nEach group of rows (one hardware model; one source) predicted by a fit on the other rows; the band of a held-out row is exp(±w), w the 85% quantile of |ln(measured/predicted)| over the other groups' held-out rows of its class, or of every class when its class's rows span fewer than 4 groups; coverage is the share of held-out rows inside that band. `borrowed`: rows whose class had no rows left in the fold (predicted with another class's factors and a widened band, as `kiln estimate` does). The shipped band of a class is the wider of the two schemes' bands.\n\n");
    s.push_str(cv);
    s.push_str("\n## In-sample error per metric group\n\n");
    s.push_str(&md_table(
        "group",
        &table_by(scored, |s| group(&s.case.metric).to_string()),
    ));
    s.push_str("\n## Error per metric and per hardware class\n\n");
    s.push_str(&readme_table(scored));
    s.push_str("\n## Assumptions made to turn rows into workloads\n\n");
    for n in notes {
        let _ = writeln!(s, "- {n}");
    }
    s.push_str("- Throughput runs that fill the device (`batch` = `max (...)`): batch = the largest that fits; outside MLPerf the tensor-parallel group is the row's `n_devices`, as published.\n");
    let _ = writeln!(s, "- MLPerf Offline rows: batch = the largest that fits; the devices run as data-parallel replicas of the power-of-two tensor-parallel group (dividing the device count) with the highest predicted throughput; prompt and output {MLPERF_PROMPT} tokens (the CSV gives only the ~294 average output).");
    s.push_str("- KV cache: f16 for llama.cpp and 16-bit server rows; fp8 for fp8/fp4 server rows (TensorRT-LLM MLPerf submissions use an fp8 KV cache).\n");
    s.push_str("- lmdeploy TurboMind, FasterTransformer and TensorRT rows use the `server` engine class (as TensorRT-LLM); vLLM rows too.\n");
    s.push_str("- Energy rows compare board TDP x devices / throughput with measured system wall power: evaluated, not fitted.\n");
    s.push_str("\n## Rows not used\n\n| id | hardware | metric | reason |\n|---|---|---|---|\n");
    for e in excluded {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            e.id, e.hardware, e.metric, e.reason
        );
    }
    s.push_str("\n## Every row\n\n| id | hardware | model | precision | engine | batch | metric | measured | predicted | APE |\n|---|---|---|---|---|---|---|---:|---:|---:|\n");
    for sc in scored {
        let c = sc.case;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.id,
            c.row.get("hardware"),
            c.row.get("model"),
            c.row.get("precision"),
            c.row.get("engine"),
            c.row.get("batch"),
            c.metric,
            c.measured,
            sc.predicted.map_or("-".into(), |p| format!("{p:.4}")),
            sc.ape.map_or("-".into(), |a| format!("{a:.1}%")),
        );
    }
    s
}

/// Replace the text between `<!-- kiln:NAME -->` and `<!-- /kiln:NAME -->`.
fn splice(doc: &str, name: &str, body: &str) -> String {
    let (open, close) = (
        format!("<!-- kiln:{name} -->"),
        format!("<!-- /kiln:{name} -->"),
    );
    let a = doc
        .find(&open)
        .unwrap_or_else(|| panic!("README.md lacks {open}"))
        + open.len();
    let b = doc
        .find(&close)
        .unwrap_or_else(|| panic!("README.md lacks {close}"));
    format!("{}\n\n{}\n{}", &doc[..a], body.trim_end(), &doc[b..])
}

const HEADER: &str = "The serving-cost model's fitted efficiency factors. Written by
KILN_BLESS=1 cargo test -p passes --lib cost::fit
from bench/calibration/measured-calibration.csv; do not edit by hand
(see CALIBRATION.md for the error of this fit).";

#[cfg(test)]
mod checks {
    use super::*;

    /// Fit, then either write the shipped files (`KILN_BLESS=1`) or check them.
    /// Fit, cross-validate, set the bands from the held-out predictions, then
    /// either write the shipped files (`KILN_BLESS=1`) or check them. Prints the
    /// cross-validation table (`-- --nocapture`).
    #[test]
    fn shipped_calibration_is_the_fit_of_the_data() {
        let (cases, excluded, notes) = cases();
        let mut cal = fit(&cases.iter().collect::<Vec<_>>());
        let hardware = held_out(&cases, Scheme::Hardware);
        let source = held_out(&cases, Scheme::Source);
        apply_bands(&mut cal, &hardware, &source);
        for k in crossval::pooled_bands(&cal, &hardware) {
            cal.factors.get_mut(&k).unwrap().pooled_band = true;
        }
        cal.validated = validated(&cases);
        let scored = score(&cases, &cal);
        let in_sample: BTreeMap<String, f64> = scored
            .iter()
            .filter_map(|s| s.ape.map(|a| (s.case.id.clone(), a)))
            .collect();
        let cv = crossval::table(&hardware, &source, &in_sample);
        println!("{cv}");
        let toml = cal.to_toml(HEADER);
        let md = report(&cal, &scored, &cv, &excluded, &notes);
        let section_path = manifest("../README.md");
        let section = std::fs::read_to_string(&section_path).expect("README.md");
        let new_section = splice(
            &splice(
                &section,
                "calibration-table",
                &format!(
                    "{cv}\nIn-sample, with the shipped factors, per metric and hardware class:\n\n{}",
                    readme_table(&scored)
                ),
            ),
            "recipe-table",
            &recipe_table(),
        );
        let files = [
            (manifest("src/cost/calibration.toml"), toml),
            (manifest("src/cost/CALIBRATION.md"), md),
            (section_path, new_section),
        ];
        if std::env::var_os("KILN_BLESS").is_some() {
            for (path, text) in &files {
                std::fs::write(path, text).unwrap();
            }
            return;
        }
        for (path, text) in &files {
            let on_disk = std::fs::read_to_string(path).unwrap_or_default();
            assert!(
                on_disk == *text,
                "{} is not what the fit produces: run `KILN_BLESS=1 cargo test -p passes --lib cost::fit` and review the diff",
                path.display()
            );
        }
    }

    #[test]
    fn fit_error_has_not_regressed() {
        let (cases, _, _) = cases();
        let cal = Calibration::shipped().unwrap();
        let scored = score(&cases, &cal);
        let got = group_mdape(&scored);
        for (g, limit) in LIMITS {
            let m = got.get(*g).copied().unwrap_or(f64::NAN);
            assert!(
                m <= *limit,
                "median APE for {g} is {m:.1}%, above its limit {limit}%"
            );
        }
        // Every mapped row must yield a prediction.
        let missing: Vec<&str> = scored
            .iter()
            .filter(|s| s.predicted.is_none())
            .map(|s| s.case.id.as_str())
            .collect();
        assert!(missing.is_empty(), "rows without a prediction: {missing:?}");
    }

    #[test]
    fn csv_parser_handles_quotes() {
        let rows = parse_csv("a,b,c\n1,\"x, y\",\"say \"\"hi\"\"\"\n");
        assert_eq!(rows[1], vec!["1", "x, y", "say \"hi\""]);
    }
}
