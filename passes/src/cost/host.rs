//! The `cpu` target: a profile of the machine kiln runs on, built from the
//! text of `/proc/cpuinfo` and `/proc/meminfo` (the caller reads them).
//!
//! What must stay true: only what the host states is filled in. Memory comes
//! from `MemTotal`; bandwidth is `"unknown"` unless the caller measured it
//! (and then the source says so); peak FLOPS, power, price and interconnect
//! are `"unknown"` because `/proc` does not state them (the clock it shows is
//! the current one, not a peak).

use std::collections::BTreeMap;

use super::target::{DeviceClass, Figure, Origin, Target};

/// What the host told us, for display.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostInfo {
    pub model_name: Option<String>,
    /// Logical CPUs (`processor` entries).
    pub logical_cpus: usize,
    /// SIMD extensions relevant to llama.cpp's CPU kernels, in a fixed order.
    pub simd: Vec<&'static str>,
    pub mem_total_bytes: Option<u64>,
}

const SIMD_FLAGS: &[&str] = &[
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
];
const ARM_FEATURES: &[&str] = &["asimd", "asimddp", "sve", "sve2", "i8mm", "bf16"];

/// Parse `/proc/cpuinfo` and `/proc/meminfo` text. Unparseable lines are ignored.
pub fn parse_host(cpuinfo: &str, meminfo: &str) -> HostInfo {
    let mut info = HostInfo::default();
    let mut flags: Vec<String> = Vec::new();
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        match key {
            "processor" => info.logical_cpus += 1,
            "model name" | "Model" if info.model_name.is_none() && !value.is_empty() => {
                info.model_name = Some(value.to_string())
            }
            "flags" | "Features" if flags.is_empty() => {
                flags = value.split_whitespace().map(str::to_string).collect()
            }
            _ => {}
        }
    }
    for f in SIMD_FLAGS.iter().chain(ARM_FEATURES) {
        if flags.iter().any(|x| x == f) {
            info.simd.push(f);
        }
    }
    for line in meminfo.lines() {
        if let Some(rest) = line.strip_prefix("MemTotal:") {
            let mut parts = rest.split_whitespace();
            let n = parts.next().and_then(|n| n.parse::<u64>().ok());
            let unit = parts.next().unwrap_or("kB");
            info.mem_total_bytes = n.and_then(|n| match unit {
                "kB" => n.checked_mul(1024),
                "B" => Some(n),
                _ => None,
            });
        }
    }
    info
}

/// The `cpu` profile for this host. `measured_gbps` is a read bandwidth the
/// caller measured (with how), if any.
pub fn cpu_target(info: &HostInfo, measured: Option<(f64, String)>) -> Target {
    let mut sources = BTreeMap::new();
    let memory_gb = match info.mem_total_bytes {
        Some(b) => {
            sources.insert(
                "memory_gb".to_string(),
                "/proc/meminfo MemTotal on this host".to_string(),
            );
            Figure::Known((b as f64 / 1e7).round() / 100.0)
        }
        None => Figure::Unknown,
    };
    let memory_bandwidth_gbps = match &measured {
        Some((gbps, how)) if gbps.is_finite() && *gbps > 0.0 => {
            sources.insert(
                "memory_bandwidth_gbps".to_string(),
                format!("measured on this host by kiln: {how}"),
            );
            Figure::Known(*gbps)
        }
        _ => Figure::Unknown,
    };
    let mut runtimes = BTreeMap::new();
    runtimes.insert("llama.cpp".to_string(), vec!["gguf".to_string()]);
    sources.insert(
        "runtimes".to_string(),
        "llama.cpp README (CPU backend)".to_string(),
    );
    let model = info
        .model_name
        .clone()
        .unwrap_or_else(|| "unknown CPU".to_string());
    let mut notes = vec![format!(
        "{} logical CPUs; SIMD: {}",
        info.logical_cpus,
        if info.simd.is_empty() {
            "none detected".to_string()
        } else {
            info.simd.join(", ")
        }
    )];
    if !memory_bandwidth_gbps.is_known() {
        notes.push(
            "Memory bandwidth is unknown until measured: run with --measure to time a read over a large buffer."
                .to_string(),
        );
    }
    notes.push("Peak FLOPS are not stated by /proc (its clock is the current one), so prefill is not estimated.".to_string());
    Target {
        id: "cpu".to_string(),
        name: format!("This host's CPU ({model})"),
        vendor: "host".to_string(),
        class: DeviceClass::Cpu,
        memory_gb,
        memory_bandwidth_gbps,
        onchip_mb: Figure::Unknown,
        tdp_w: Figure::Unknown,
        interconnect_gbps: Figure::Unknown,
        price_per_hour_usd: Figure::Unknown,
        price_source: None,
        peak_tflops: BTreeMap::new(),
        runtimes,
        runtime_sources: BTreeMap::new(),
        single_group: Vec::new(),
        fp8_e4m3_max: None,
        sources,
        uncertain: Vec::new(),
        notes,
        origin: Origin::Host,
    }
}
