//! Tests of the serving-cost model's explanatory terms (issue 13): the
//! llama.cpp build generation (`--engine-version`), the kernel path by weight
//! type, llama.cpp's compute reference on cards whose published FP16 peak
//! uses FP32 accumulation, and the separate prefill band. Each test states
//! the arithmetic it checks, so that it fails if the term is dropped.

use super::calibration::{Calibration, Engine, EngineVersion};
use super::estimate::{estimate, Batch, Estimate, KvType, ModelCost, Workload};
use super::target::find_builtin;
use super::weights::{weight_bytes, WeightFormat};
use crate::ir::Arch;

fn llama3_8b() -> Arch {
    super::tests::llama3_8b()
}

fn run_with(fmt: &str, target: &str, w: &Workload, cal: &Calibration) -> Estimate {
    let arch = llama3_8b();
    let format = WeightFormat::parse(fmt).unwrap();
    let wb = weight_bytes(&crate::arch::synthesize(&arch), &arch, format);
    let t = find_builtin(target).unwrap();
    estimate(
        ModelCost {
            arch: &arch,
            weights: &wb,
            format,
        },
        &t,
        Engine::LlamaCpp,
        w,
        cal,
    )
    .unwrap()
}

fn batch1() -> Workload {
    Workload {
        batch: Batch::Fixed(1),
        context: None,
        prompt: 512,
        gen: 128,
        kv_type: KvType::F16,
        devices: Some(1),
        tensor_parallel: Some(1),
        engine_version: EngineVersion::Current,
    }
}

/// Factors chosen so that each term shows: no overheads, round numbers.
fn plain() -> Calibration {
    Calibration::parse(
        r#"
allreduce_latency_us = 0.0
[[factor]]
engine = "llama.cpp"
device = "gpu"
bandwidth_efficiency = 0.5
compute_efficiency = 0.5
simt_cost = 0.0
layer_overhead_us = 0.0
float_bandwidth = 2.0
gen2024_bandwidth = 0.5
gen2024_compute = 0.25
band_low = 0.8
band_high = 1.2
prefill_band_low = 0.5
prefill_band_high = 2.0
rows = 1
"#,
    )
    .unwrap()
}

#[test]
fn engine_version_parses_years_and_build_numbers() {
    use EngineVersion::*;
    assert_eq!(EngineVersion::parse("2024"), Some(Llama2024));
    assert_eq!(EngineVersion::parse("llama.cpp:2024"), Some(Llama2024));
    assert_eq!(EngineVersion::parse("2025"), Some(Current));
    assert_eq!(EngineVersion::parse("b2843"), Some(Llama2024));
    assert_eq!(EngineVersion::parse("3999"), Some(Llama2024));
    assert_eq!(EngineVersion::parse("b4000"), Some(Current));
    assert_eq!(EngineVersion::parse("b6500"), Some(Current));
    assert_eq!(EngineVersion::parse("yesterday"), None);
}

#[test]
fn the_2024_generation_scales_bandwidth_and_compute_and_says_which_is_modelled() {
    let cal = plain();
    let now = run_with("Q4_K_M", "rtx-4090", &batch1(), &cal);
    let old = run_with(
        "Q4_K_M",
        "rtx-4090",
        &Workload {
            engine_version: EngineVersion::Llama2024,
            ..batch1()
        },
        &cal,
    );
    // Decode is bandwidth-bound here: half the bandwidth, half the rate
    // (the KV and weights both stream at the scaled efficiency).
    let r = old.decode_tokens_per_second.central.unwrap()
        / now.decode_tokens_per_second.central.unwrap();
    assert!((r - 0.5).abs() < 1e-9, "decode ratio {r}");
    // Prefill is compute-bound: a quarter of the compute, four times the time.
    let p = old.prefill_seconds.central.unwrap() / now.prefill_seconds.central.unwrap();
    assert!((p - 4.0).abs() < 1e-6, "prefill ratio {p}");
    // The bound (roofline) does not depend on the software generation.
    assert_eq!(
        old.decode_tokens_per_second.bound,
        now.decode_tokens_per_second.bound
    );
    assert!(now
        .notes
        .iter()
        .any(|n| n.contains("--engine-version 2025")));
    assert!(old
        .notes
        .iter()
        .any(|n| n.contains("--engine-version 2024")));
}

#[test]
fn float_weights_take_their_own_kernel_path() {
    let cal = plain();
    let w = batch1();
    let q8 = run_with("Q8_0", "rtx-4090", &w, &cal);
    let f16 = run_with("f16", "rtx-4090", &w, &cal);
    let arch = llama3_8b();
    let t = crate::arch::synthesize(&arch);
    let b16 = weight_bytes(&t, &arch, WeightFormat::parse("f16").unwrap());
    let b8 = weight_bytes(&t, &arch, WeightFormat::parse("Q8_0").unwrap());
    assert!(b16.float_share() > 0.99 && b8.float_share() < 0.01);
    // Decode time is bytes / (0.5 x bandwidth) for Q8_0 and bytes / (0.5 x 2
    // x bandwidth) for f16 (KV bytes aside): f16 reads 1.88x the bytes at
    // twice the rate, so it decodes faster than Q8_0 here.
    let (d16, d8) = (
        f16.decode_tokens_per_second.central.unwrap(),
        q8.decode_tokens_per_second.central.unwrap(),
    );
    let bytes_ratio = b16.total as f64 / b8.total as f64;
    assert!(
        d16 / d8 > 2.0 / bytes_ratio * 0.97 && d16 / d8 < 2.0 / bytes_ratio * 1.03,
        "f16/q8 decode {} vs {}",
        d16 / d8,
        2.0 / bytes_ratio
    );
}

#[test]
fn llama_cpp_compute_reference_is_half_the_int8_peak_on_geforce() {
    // RTX 4090: FP16 165.2 (FP32 accumulation), INT8 660.6: llama.cpp's
    // reference is 330.3 TFLOPS. Prefill of 512 tokens is compute-bound, so
    // with compute_efficiency 0.5 its time is FLOPs / (0.5 x 330.3e12).
    let cal = plain();
    let e = run_with("Q4_K_M", "rtx-4090", &batch1(), &cal);
    let arch = llama3_8b();
    let wb = weight_bytes(
        &crate::arch::synthesize(&arch),
        &arch,
        WeightFormat::parse("Q4_K_M").unwrap(),
    );
    let flops = 512.0 * (2.0 * wb.matmul_params_dense as f64 + arch.attn_flops_per_ctx() * 256.0);
    let expect = flops / (0.5 * 330.3e12);
    let got = e.prefill_seconds.central.unwrap();
    assert!(
        (got / expect - 1.0).abs() < 1e-6,
        "prefill {got} s, expected {expect} s"
    );
}

#[test]
fn prefill_and_decode_have_their_own_bands() {
    let cal = plain();
    let e = run_with("Q4_K_M", "rtx-4090", &batch1(), &cal);
    let p = e.prefill_seconds;
    let (c, lo, hi) = (p.central.unwrap(), p.low.unwrap(), p.high.unwrap());
    // A time's band is central / [high, low] of the prefill band (0.5 - 2.0).
    assert!((lo - c / 2.0).abs() < 1e-12 && (hi - c / 0.5).abs() < 1e-12);
    let d = e.decode_tokens_per_second;
    let (c, lo, hi) = (d.central.unwrap(), d.low.unwrap(), d.high.unwrap());
    assert!((lo - c * 0.8).abs() < 1e-9 && (hi - c * 1.2).abs() < 1e-9);
}

#[test]
fn shipped_calibration_fits_the_generation_and_kernel_path() {
    // The shipped llama.cpp GPU factors were fitted with 2024 and current
    // builds, float and quantized rows: their terms are not left at 1.
    let cal = Calibration::shipped().unwrap();
    let f = cal
        .lookup(super::EngineClass::LlamaCpp, super::DeviceClass::Gpu)
        .unwrap();
    assert!(!f.borrowed);
    assert!(f.factors.float_bandwidth != 1.0);
    assert!(f.factors.gen2024_bandwidth != 1.0 || f.factors.gen2024_compute != 1.0);
    assert!(f.factors.prefill_band_high > f.factors.band_high);
}

/// An estimate says when its band is not its class's own: borrowed factors
/// (no rows of the class: wide band, with the factor) and pooled bands (rows
/// from too few hardware models or sources: every class's band).
#[test]
fn estimates_say_why_their_band_is_wide() {
    let cal = Calibration::shipped().unwrap();
    let arch = llama3_8b();
    let format = WeightFormat::parse("fp8").unwrap();
    let wb = weight_bytes(&crate::arch::synthesize(&arch), &arch, format);
    let model = ModelCost {
        arch: &arch,
        weights: &wb,
        format,
    };
    let w = Workload {
        devices: Some(1),
        ..batch1()
    };
    // No server rows on a TPU: borrowed, the band widened and said so.
    let e = estimate(
        model,
        &find_builtin("tpu-v6e").unwrap(),
        Engine::Vllm,
        &w,
        &cal,
    )
    .unwrap();
    let c = e.calibration.unwrap();
    assert!(c.borrowed);
    let gpu = cal
        .lookup(super::EngineClass::Server, super::DeviceClass::Gpu)
        .unwrap();
    assert!((c.factors.band_high - gpu.factors.band_high * 1.5).abs() < 1e-12);
    assert!(
        e.notes.iter().any(|n| n.contains("so the band is wide")),
        "{:?}",
        e.notes
    );
    // Every class whose band is pooled says so; the others do not (the
    // shipped calibration has none since sparse classes borrow: one is
    // marked here so that the note is exercised).
    let targets = super::target::builtin().unwrap();
    let mut cal = cal;
    cal.factors
        .get_mut(&(super::EngineClass::LlamaCpp, super::DeviceClass::Apple))
        .unwrap()
        .pooled_band = true;
    let mut checked = 0;
    for ((engine, device), f) in &cal.factors {
        let Some(t) = targets.iter().find(|t| t.class == *device) else {
            continue;
        };
        let engine = match engine {
            super::EngineClass::LlamaCpp => Engine::LlamaCpp,
            super::EngineClass::Server => Engine::Vllm,
        };
        let e = estimate(model, t, engine, &w, &cal).unwrap();
        let says = e
            .notes
            .iter()
            .any(|n| n.contains("is that of all calibrated classes"));
        assert_eq!(says, f.pooled_band, "{} on {}: {:?}", engine, t.id, e.notes);
        checked += usize::from(f.pooled_band);
    }
    assert!(checked > 0, "no class has a pooled band to check");
}

/// A class measured on fewer than four hardware models (server engines on
/// NPUs: one Inferentia2 row) is not fitted: it borrows its engine's GPU
/// factors with the widened band, and its rows check them. Fitted freely,
/// one row chose no layer overhead and full bandwidth, and a 135M-parameter
/// model was predicted at the roofline, 40x an H100's decode rate.
#[test]
fn a_class_with_few_measurements_borrows_the_gpu_factors() {
    use super::{DeviceClass, EngineClass};
    let cal = Calibration::shipped().unwrap();
    let npu = cal.lookup(EngineClass::Server, DeviceClass::Npu).unwrap();
    assert!(npu.borrowed);
    assert_eq!(npu.fitted_on, DeviceClass::Gpu);
    // Its measurement is a check of the borrowed factors, not fitted.
    assert!(cal
        .validated
        .iter()
        .any(|v| v.target == "inferentia2" && v.metric == "decode"));
    // SmolLM2-135M-shaped, bf16, batch 1.
    let arch = Arch {
        n_head_kv: 3,
        head_dim: 64,
        vocab: 49152,
        tied_embeddings: true,
        ..super::tests::llama3(30, 576, 9, 1536)
    };
    let format = WeightFormat::parse("bf16").unwrap();
    let wb = weight_bytes(&crate::arch::synthesize(&arch), &arch, format);
    let decode = |target: &str| {
        estimate(
            ModelCost {
                arch: &arch,
                weights: &wb,
                format,
            },
            &find_builtin(target).unwrap(),
            Engine::Vllm,
            &batch1(),
            &cal,
        )
        .unwrap()
        .decode_tokens_per_second
        .central
        .unwrap()
    };
    let h100 = decode("h100-sxm");
    for t in ["inferentia2", "cloud-ai-100-ultra", "trainium2"] {
        let d = decode(t);
        assert!(d < 1.5 * h100, "{t}: {d:.0} tok/s vs the H100's {h100:.0}");
    }
}
