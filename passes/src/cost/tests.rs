//! Tests of the cost model: target profiles (every one parses, names its
//! sources and marks the unpublished), weight bytes and memory arithmetic
//! against hand-computed Llama-3-8B / Llama-3-70B figures, and the estimate's
//! honesty (an unknown figure gives no number and a note).
//!
//! The hand computations are written out in each test from block sizes
//! (Q4_K: 144 bytes per 256 weights, Q6_K: 210, Q5_K: 176) and the Q4_K_M
//! rule of llama.cpp's `llama-quant.cpp`, independently of `weights.rs`; a
//! config-built SmolLM2 is checked against what llama-quantize wrote for it
//! (`fixtures/llama_cpp/goldens/`).

use std::collections::{BTreeMap, BTreeSet};

use super::calibration::{Calibration, Engine};
use super::estimate::{estimate, Batch, KvType, ModelCost, Workload};
use super::host::{cpu_target, parse_host};
use super::target::{builtin, find_builtin, Figure, Origin, Precision, Target, BUILTIN_FILES};
use super::weights::{weight_bytes, Recipe, ServingFormat, WeightFormat};
use crate::ir::Arch;
use crate::passes::recipe::{parse_recipe, use_more_bits};

pub(crate) fn llama3(n_layer: usize, hidden: usize, n_head: usize, ffn: usize) -> Arch {
    Arch {
        family: "llama".into(),
        hf_architecture: Some("LlamaForCausalLM".into()),
        n_layer,
        hidden,
        n_head,
        n_head_kv: 8,
        head_dim: 128,
        ffn,
        vocab: 128256,
        context_length: 8192,
        rope_theta: 500000.0,
        rms_eps: 1e-5,
        tied_embeddings: false,
        n_expert: 0,
        n_expert_used: 0,
        ..Arch::default()
    }
}

/// Meta-Llama-3-8B config.json.
pub(crate) fn llama3_8b() -> Arch {
    llama3(32, 4096, 32, 14336)
}

/// Meta-Llama-3-70B config.json.
pub(crate) fn llama3_70b() -> Arch {
    llama3(80, 8192, 64, 28672)
}

fn bytes_of(arch: &Arch, fmt: WeightFormat) -> super::weights::WeightBytes {
    weight_bytes(&crate::arch::synthesize(arch), arch, fmt)
}

const Q4K: u64 = 144; // bytes per 256 weights
const Q5K: u64 = 176;
const Q6K: u64 = 210;

/// Bytes of a `[rows, row]` matrix in a 256-block k-quant of `per_block` bytes.
fn kq(rows: u64, row: u64, per_block: u64) -> u64 {
    rows * (row / 256) * per_block
}

#[test]
fn llama3_8b_params_and_f16_bytes() {
    // embed + output: 2 x 128256 x 4096; output_norm 4096;
    // per layer: 2 norms x 4096, q/o 4096x4096, k/v 1024x4096, gate/up/down 14336x4096.
    let per_layer = 2 * 4096 + 2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 14336 * 4096;
    let params: u64 = 2 * 128256 * 4096 + 4096 + 32 * per_layer;
    assert_eq!(params, 8_030_261_248);
    let wb = bytes_of(&llama3_8b(), WeightFormat::Serving(ServingFormat::F16));
    assert_eq!(wb.params, params);
    assert_eq!(
        wb.total,
        2 * params,
        "f16 keeps every tensor, norms included, at 2 bytes"
    );
    let bf = bytes_of(&llama3_8b(), WeightFormat::parse("bf16").unwrap());
    assert_eq!(bf.total, 16_060_522_496);
}

#[test]
fn use_more_bits_matches_llama_cpp() {
    // n = 32: i < 4, i >= 28, or (i - 4) % 3 == 2 -> 6, 9, ..., 27 (and 30).
    let more: Vec<i64> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
    assert_eq!(
        more,
        vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    );
    assert_eq!((0..80).filter(|&i| use_more_bits(i, 80)).count(), 40);
}

#[test]
fn llama3_8b_q4_k_m_bytes_by_hand() {
    // token_embd Q4_K, output Q6_K, output_norm f32.
    let mut want = kq(128256, 4096, Q4K) + kq(128256, 4096, Q6K) + 4096 * 4;
    for i in 0..32 {
        let more = use_more_bits(i, 32);
        want += 2 * 4096 * 4; // attn_norm, ffn_norm (f32)
        want += kq(4096, 4096, Q4K) + kq(1024, 4096, Q4K) + kq(4096, 4096, Q4K); // q, k, o
        want += kq(1024, 4096, if more { Q6K } else { Q4K }); // v
        want += 2 * kq(14336, 4096, Q4K); // gate, up
        want += kq(4096, 14336, if more { Q6K } else { Q4K }); // down
    }
    assert_eq!(want, 4_912_898_048);
    let wb = bytes_of(&llama3_8b(), WeightFormat::parse("Q4_K_M").unwrap());
    assert_eq!(wb.total, want);
    assert!(wb.fallbacks.is_empty());
    // The alias Q4_K is Q4_K_M (llama-quantize).
    assert_eq!(
        bytes_of(&llama3_8b(), WeightFormat::parse("q4_k").unwrap()).total,
        want
    );
}

#[test]
fn llama3_70b_f16_and_q4_k_m_bytes_by_hand() {
    let per_layer = 2 * 8192 + 2 * 8192 * 8192 + 2 * 1024 * 8192 + 3 * 28672 * 8192;
    let params: u64 = 2 * 128256 * 8192 + 8192 + 80 * per_layer;
    assert_eq!(params, 70_553_706_496);
    let f16 = bytes_of(&llama3_70b(), WeightFormat::parse("f16").unwrap());
    assert_eq!(f16.total, 141_107_412_992);

    // Q4_K_M on a 70B llama: attn_v that would be Q4_K becomes Q5_K
    // (llama.cpp's LLM_TYPE_70B rule), the use_more_bits layers get Q6_K.
    let mut want = kq(128256, 8192, Q4K) + kq(128256, 8192, Q6K) + 8192 * 4;
    for i in 0..80 {
        let more = use_more_bits(i, 80);
        want += 2 * 8192 * 4;
        want += 2 * kq(8192, 8192, Q4K) + kq(1024, 8192, Q4K);
        want += kq(1024, 8192, if more { Q6K } else { Q5K });
        want += 2 * kq(28672, 8192, Q4K);
        want += kq(8192, 28672, if more { Q6K } else { Q4K });
    }
    assert_eq!(want, 42_512_531_456);
    assert_eq!(
        bytes_of(&llama3_70b(), WeightFormat::parse("Q4_K_M").unwrap()).total,
        want
    );
}

/// SmolLM2-135M as its config.json states it: 576-wide rows (not a multiple
/// of 256), 9 heads over 3 KV heads, tied embeddings.
fn smollm2() -> Arch {
    Arch {
        family: "llama".into(),
        hf_architecture: Some("LlamaForCausalLM".into()),
        n_layer: 30,
        hidden: 576,
        n_head: 9,
        n_head_kv: 3,
        head_dim: 64,
        ffn: 1536,
        vocab: 49152,
        context_length: 8192,
        rope_theta: 100000.0,
        rms_eps: 1e-5,
        tied_embeddings: true,
        n_expert: 0,
        n_expert_used: 0,
        ..Arch::default()
    }
}

#[test]
fn every_recipe_names_a_preset_of_the_recipe_pass() {
    for r in Recipe::ALL {
        assert_eq!(parse_recipe(r.name()), Ok(r.preset()), "{}", r.name());
        assert_eq!(r.default_type(), r.preset().ftype.default_type());
    }
}

#[test]
fn smollm2_from_its_config_matches_llama_quantize() {
    let arch = smollm2();
    let tensors = crate::arch::synthesize(&arch);
    let goldens =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/llama_cpp/goldens");
    for r in Recipe::ALL {
        // What llama-quantize wrote for SmolLM2-135M, without an importance matrix.
        let path = goldens.join(format!("smollm2.{}.json", r.name()));
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(golden["imatrix"], serde_json::Value::Null);
        assert_eq!(golden["options"], serde_json::json!({}));
        let golden = golden["tensors"].as_array().unwrap();
        // The config-built tensor list is the GGUF's (token_embd only: tied).
        let mut names: Vec<(String, Vec<usize>)> = golden
            .iter()
            .map(|t| {
                let shape = t["shape"].as_array().unwrap();
                let shape = shape.iter().map(|d| d.as_u64().unwrap() as usize);
                (t["name"].as_str().unwrap().to_string(), shape.collect())
            })
            .collect();
        let mut ours: Vec<(String, Vec<usize>)> = tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        names.sort();
        ours.sort();
        assert_eq!(ours, names);
        let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
        for t in golden {
            let ty = t["type"].as_str().unwrap().to_string();
            *by_type.entry(ty).or_insert(0) += t["bytes"].as_u64().unwrap();
        }
        let wb = weight_bytes(&tensors, &arch, WeightFormat::Recipe(r));
        assert_eq!(wb.by_type, by_type, "{}", r.name());
        assert_eq!(wb.total, by_type.values().sum::<u64>(), "{}", r.name());
    }

    // goldens/smollm2.Q4_K_M.json: 103,668,480 bytes of tensor data. Every
    // 576-wide Q4_K / Q6_K matrix falls back (q, k, v, o, gate, up: 6 x 30);
    // token_embd, read as the output, takes Q8_0 by the output rule itself.
    let q = weight_bytes(&tensors, &arch, WeightFormat::parse("Q4_K_M").unwrap());
    assert_eq!(q.total, 103_668_480);
    assert_eq!(q.by_type["q8_0"], 31_726_080);
    assert_eq!(q.fallbacks.len(), 180);
    assert_eq!(
        q.fallbacks[0],
        "blk.0.attn_q.weight: q4_K -> q5_0 (row 576)"
    );
    assert!(q.embedding_is_output);
}

fn workload_8k() -> Workload {
    Workload {
        batch: Batch::Fixed(1),
        context: Some(8192),
        prompt: 512,
        gen: 128,
        kv_type: KvType::F16,
        devices: None,
        tensor_parallel: None,
        engine_version: Default::default(),
    }
}

fn run(
    arch: &Arch,
    fmt: &str,
    target: &str,
    engine: Engine,
    w: &Workload,
) -> super::estimate::Estimate {
    let format = WeightFormat::parse(fmt).unwrap();
    let wb = weight_bytes(&crate::arch::synthesize(arch), arch, format);
    let t = find_builtin(target).unwrap();
    estimate(
        ModelCost {
            arch,
            weights: &wb,
            format,
        },
        &t,
        engine,
        w,
        &Calibration::shipped().unwrap(),
    )
    .unwrap()
}

#[test]
fn kv_cache_by_hand() {
    // 2 (K and V) x layers x kv heads x head dim x bytes.
    let e = run(
        &llama3_8b(),
        "f16",
        "h100-sxm",
        Engine::Vllm,
        &workload_8k(),
    );
    assert_eq!(e.kv_bytes_per_token, 2 * 32 * 8 * 128 * 2);
    assert_eq!(e.kv_bytes, 131_072 * 8192); // 1 GiB at 8k context
    let e = run(
        &llama3_70b(),
        "f16",
        "h100-sxm",
        Engine::Vllm,
        &workload_8k(),
    );
    assert_eq!(e.kv_bytes_per_token, 2 * 80 * 8 * 128 * 2);
    assert_eq!(e.kv_bytes, 327_680 * 8192);
    let w = Workload {
        kv_type: KvType::Q8_0,
        ..workload_8k()
    };
    let e = run(&llama3_8b(), "Q4_K_M", "rtx-4090", Engine::LlamaCpp, &w);
    assert_eq!(e.kv_bytes_per_token, 2 * 32 * 8 * 128 * 34 / 32);
    let w = Workload {
        kv_type: KvType::Fp8,
        ..workload_8k()
    };
    let e = run(&llama3_8b(), "fp8", "h100-sxm", Engine::Vllm, &w);
    assert_eq!(e.kv_bytes_per_token, 2 * 32 * 8 * 128);
}

#[test]
fn llama3_8b_fits_by_hand() {
    const GIB: u64 = 1 << 30;
    // vLLM f16 on one H100 (80 GB, 90% usable, 1 GiB overhead).
    let e = run(
        &llama3_8b(),
        "f16",
        "h100-sxm",
        Engine::Vllm,
        &workload_8k(),
    );
    let need = 16_060_522_496 + 1_073_741_824 + GIB;
    assert_eq!(e.memory_per_device_bytes, need);
    assert_eq!(e.fits, Some(true));
    assert_eq!((e.devices, e.min_devices), (1, Some(1)));
    assert_eq!(
        e.max_batch,
        Some((72e9 - 16_060_522_496.0 - GIB as f64) as u64 / 1_073_741_824)
    );
    assert_eq!(e.max_batch, Some(51));

    // llama.cpp Q4_K_M on an RTX 4090 (24 GB; 0.5 GiB + 512 x vocab x 4 overhead).
    let e = run(
        &llama3_8b(),
        "Q4_K_M",
        "rtx-4090",
        Engine::LlamaCpp,
        &workload_8k(),
    );
    let overhead = GIB / 2 + 512 * 128256 * 4;
    assert_eq!(
        e.memory_per_device_bytes,
        4_912_898_048 + 1_073_741_824 + overhead
    );
    assert_eq!(e.fits, Some(true));
    assert_eq!(e.max_batch, Some(17)); // (24e9 - 4.913e9 - 0.7995e9) / 1.0737e9 = 17.03
}

#[test]
fn llama3_70b_fits_by_hand() {
    // f16 (141.1 GB) on H100s with vLLM: 2 devices need 70.55 + 1.34 (half the KV heads) + 1.07
    // = 72.97 GB > 72 GB usable, so 4.
    let e = run(
        &llama3_70b(),
        "f16",
        "h100-sxm",
        Engine::Vllm,
        &workload_8k(),
    );
    assert_eq!(e.min_devices, Some(4));
    assert_eq!((e.devices, e.tensor_parallel, e.fits), (4, 4, Some(true)));
    let two = Workload {
        devices: Some(2),
        ..workload_8k()
    };
    let e = run(&llama3_70b(), "f16", "h100-sxm", Engine::Vllm, &two);
    assert_eq!(e.fits, Some(false));
    assert!(
        e.notes.iter().any(|n| n.starts_with("Does not fit")),
        "{:?}",
        e.notes
    );

    // Q4_K_M (42.5 GB) with llama.cpp fits one H100: 42.51 + 2.68 + 0.80 = 46.0 GB.
    let e = run(
        &llama3_70b(),
        "Q4_K_M",
        "h100-sxm",
        Engine::LlamaCpp,
        &workload_8k(),
    );
    assert_eq!(
        e.memory_per_device_bytes,
        42_512_531_456 + 2_684_354_560 + (1 << 29) + 512 * 128256 * 4
    );
    assert_eq!((e.fits, e.min_devices), (Some(true), Some(1)));
    assert_eq!(e.max_batch, Some(13)); // (80 - 42.51 - 0.80) / 2.684 = 13.7
                                       // ... but not one RTX 4090 (24 GB); two do: 21.26 + 1.34 (half the KV heads) + 0.80 = 23.40 GB.
    let e = run(
        &llama3_70b(),
        "Q4_K_M",
        "rtx-4090",
        Engine::LlamaCpp,
        &workload_8k(),
    );
    assert_eq!(e.min_devices, Some(2));
    assert_eq!(
        e.memory_per_device_bytes,
        42_512_531_456 / 2 + 2_684_354_560 / 2 + (1 << 29) + 512 * 128256 * 4
    );
}

#[test]
fn moe_counts_active_experts_only() {
    // Mixtral-8x7B: 32 layers, 4096 hidden, 8 KV heads, 8 experts of 14336, 2 per token.
    let arch = Arch {
        n_expert: 8,
        n_expert_used: 2,
        vocab: 32000,
        ..llama3(32, 4096, 32, 14336)
    };
    let wb = weight_bytes(
        &crate::arch::synthesize(&arch),
        &arch,
        WeightFormat::parse("bf16").unwrap(),
    );
    let expert_params = 32 * 8 * 3 * 14336 * 4096u64;
    assert_eq!(wb.matmul_params_experts, expert_params);
    assert_eq!(wb.params, 46_702_792_704); // Mixtral-8x7B's published 46.7B
    let e = run(&arch, "bf16", "h100-sxm", Engine::Vllm, &workload_8k());
    let dense = wb.matmul_params_dense;
    assert_eq!(e.active_params, dense + expert_params / 4);
    assert!(
        (12.7e9..12.8e9).contains(&(e.active_params as f64)),
        "{}",
        e.active_params
    );
    // Q4_K_M on an 8-expert model: attn_v and attn_k go to Q8_0.
    let q = weight_bytes(
        &crate::arch::synthesize(&arch),
        &arch,
        WeightFormat::parse("Q4_K_M").unwrap(),
    );
    assert!(q.by_type.contains_key("q8_0"));
}

#[test]
fn a_model_llama_quantize_refuses_is_sized_without_the_mixture_and_says_so() {
    // Mixtral's 32 blocks against a block count of 16: llama.cpp's layer_info
    // refuses `blk.16.ffn_down_exps.weight`. The bytes are still counted, at
    // the recipe's default type, and the reason comes first.
    let arch = Arch {
        n_expert: 8,
        n_expert_used: 2,
        vocab: 32000,
        ..llama3(32, 4096, 32, 14336)
    };
    let short = Arch {
        n_layer: 16,
        ..arch.clone()
    };
    let wb = weight_bytes(
        &crate::arch::synthesize(&arch),
        &short,
        WeightFormat::parse("Q4_K_M").unwrap(),
    );
    assert!(
        wb.fallbacks[0].contains("blk.16.") && wb.fallbacks[0].contains("would refuse"),
        "{:?}",
        wb.fallbacks
    );
    let types: Vec<&str> = wb.by_type.keys().map(String::as_str).collect();
    assert_eq!(types, ["f32", "q4_K"]);
    assert_eq!(
        wb.params,
        crate::arch::synthesize(&arch)
            .iter()
            .map(|t| t.n_elements() as u64)
            .sum::<u64>()
    );
}

#[test]
fn tied_embeddings_are_read_every_step() {
    let tied = Arch {
        tied_embeddings: true,
        ..llama3_8b()
    };
    let wb = weight_bytes(
        &crate::arch::synthesize(&tied),
        &tied,
        WeightFormat::parse("f16").unwrap(),
    );
    assert!(wb.embedding_is_output);
    assert_eq!(wb.params, 8_030_261_248 - 128256 * 4096);
    let untied = bytes_of(&llama3_8b(), WeightFormat::parse("f16").unwrap());
    assert!(!untied.embedding_is_output);
    // Both multiply the same output matrix per token.
    assert_eq!(wb.matmul_params_dense, untied.matmul_params_dense);
    // Q4_K_M quantizes a tied embedding like the output (Q6_K).
    let q = weight_bytes(
        &crate::arch::synthesize(&tied),
        &tied,
        WeightFormat::parse("Q4_K_M").unwrap(),
    );
    let untied_q = bytes_of(&llama3_8b(), WeightFormat::parse("Q4_K_M").unwrap());
    assert_eq!(q.total, untied_q.total - kq(128256, 4096, Q4K));
}

#[test]
fn serving_formats_bits_per_weight() {
    let arch = llama3_8b();
    let bpw = |f: &str| bytes_of(&arch, WeightFormat::parse(f).unwrap()).bits_per_weight();
    assert!((bpw("f16") - 16.0).abs() < 1e-9);
    // Embedding and lm_head (1.05B of 8.03B params) stay 16-bit in fp8/int8/int4/fp4 checkpoints.
    let emb = 2.0 * 128256.0 * 4096.0 / 8_030_261_248.0;
    assert!(
        (bpw("fp8") - (8.0 * (1.0 - emb) + 16.0 * emb)).abs() < 0.01,
        "{}",
        bpw("fp8")
    );
    assert!(
        (bpw("int4") - (4.125 * (1.0 - emb) + 16.0 * emb)).abs() < 0.01,
        "{}",
        bpw("int4")
    );
    assert!(
        (bpw("fp4") - (4.5 * (1.0 - emb) + 16.0 * emb)).abs() < 0.01,
        "{}",
        bpw("fp4")
    );
    assert!(WeightFormat::parse("q9_9").is_err());
}

#[test]
fn every_builtin_profile_parses_and_names_sources() {
    let all = builtin().unwrap();
    assert!(all.len() + 1 >= 45, "{} profiles + cpu", all.len());
    let ids: BTreeSet<&str> = all.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids.len(), all.len(), "duplicate ids");
    for want in [
        "h100-sxm",
        "h100-pcie",
        "h100-nvl",
        "h200",
        "b200",
        "gb200",
        "a100-80g-sxm",
        "a100-40g",
        "l40s",
        "l40",
        "l4",
        "a10g",
        "a40",
        "t4",
        "rtx-4090",
        "rtx-3090",
        "rtx-5090",
        "mi300x",
        "mi325x",
        "rx-7900-xtx",
        "gaudi2",
        "gaudi3",
        "tpu-v5e",
        "tpu-v6e",
        "inferentia2",
        "trainium2",
        "cloud-ai-100-standard",
        "cloud-ai-100-pro",
        "cloud-ai-100-ultra",
        "ai200",
        "groq-lpu",
        "m1",
        "m1-pro",
        "m1-max",
        "m1-ultra",
        "m2",
        "m2-pro",
        "m2-max",
        "m2-ultra",
        "m3",
        "m3-pro",
        "m3-max",
        "m4",
        "m4-pro",
        "m4-max",
        "snapdragon-x-elite",
    ] {
        assert!(ids.contains(want), "missing profile {want}");
    }
    for t in &all {
        assert_eq!(t.origin, Origin::Builtin);
        t.validate().unwrap_or_else(|e| panic!("{}: {e}", t.id));
        assert!(!t.sources.is_empty(), "{} names no sources", t.id);
    }
    // The AI200 publishes almost nothing: it must say so rather than guess.
    let ai200 = find_builtin("ai200").unwrap();
    assert_eq!(ai200.memory_bandwidth_gbps, Figure::Unknown);
    assert!(ai200.peak_tflops.is_empty());
}

#[test]
fn targets_dir_matches_the_embedded_list() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../targets");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .map(|n| n.trim_end_matches(".toml").to_string())
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = BUILTIN_FILES.iter().map(|(id, _)| id.to_string()).collect();
    embedded.sort();
    assert_eq!(
        on_disk, embedded,
        "add new targets/*.toml files to BUILTIN_FILES in target.rs"
    );
}

#[test]
fn profile_rules_are_enforced() {
    let good = find_builtin("l4").unwrap();
    assert_eq!(good.peak(Precision::Fp8), Some(Figure::Known(242.0)));
    let base = include_str!("../../../targets/l4.toml");
    let err = |text: &str| {
        Target::from_toml(text, "test.toml", Origin::File("test.toml".into()))
            .unwrap_err()
            .to_string()
    };
    // A missing figure is an error, not "unknown".
    let e = err(&base.replace("tdp_w = 72\n", ""));
    assert!(e.contains("`tdp_w` is missing"), "{e}");
    // A known figure needs a source.
    let e = err(&base.replace("tdp_w = \"NVIDIA L4 datasheet (72 W)\"\n", ""));
    assert!(e.contains("`tdp_w` = 72 has no source"), "{e}");
    // "unknown" needs none.
    let t = Target::from_toml(
        &base
            .replace("tdp_w = 72\n", "tdp_w = \"unknown\"\n")
            .replace("tdp_w = \"NVIDIA L4 datasheet (72 W)\"\n", ""),
        "t",
        Origin::Builtin,
    )
    .unwrap();
    assert_eq!(t.tdp_w, Figure::Unknown);
    assert!(err(&base.replace("tdp_w = 72\n", "tdp_w = \"n/a\"\n"))
        .contains("expected a number or \"unknown\""));
    assert!(err(&base.replace("id = \"l4\"", "id = \"L4 card\"")).contains("lowercase"));
    assert!(err(&base.replace("fp8 = 242", "fp6 = 242")).contains("fp6"));
    assert!(err(&base.replace("class = \"gpu\"", "class = \"fpga\"")).contains("fpga"));
    assert!(find_builtin("h100")
        .unwrap_err()
        .to_string()
        .contains("h100-sxm"));
}

#[test]
fn host_profile_states_only_what_proc_says() {
    let cpuinfo = "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 fma avx512f\n\nprocessor\t: 1\nmodel name\t: Test CPU 9000\n";
    let meminfo = "MemTotal:       32768000 kB\nMemFree:        100 kB\n";
    let info = parse_host(cpuinfo, meminfo);
    assert_eq!(info.logical_cpus, 2);
    assert_eq!(info.simd, vec!["avx2", "fma", "avx512f"]);
    let t = cpu_target(&info, None);
    t.validate().unwrap();
    assert_eq!(t.memory_gb, Figure::Known(33.55)); // 32768000 kB = 33.55 GB
    assert_eq!(t.memory_bandwidth_gbps, Figure::Unknown);
    assert!(t.peak_tflops.is_empty());
    let m = cpu_target(&info, Some((42.0, "test".into())));
    assert_eq!(m.memory_bandwidth_gbps, Figure::Known(42.0));
    assert!(m.sources["memory_bandwidth_gbps"].contains("measured"));
}

#[test]
fn unknown_figures_give_no_number_and_a_note() {
    let arch = llama3_8b();
    let format = WeightFormat::Recipe(Recipe::Q4_K_M);
    let wb = weight_bytes(&crate::arch::synthesize(&arch), &arch, format);
    let cal = Calibration::shipped().unwrap();
    let m = ModelCost {
        arch: &arch,
        weights: &wb,
        format,
    };
    // cpu without a measured bandwidth: memory known, no times.
    let info = parse_host("processor : 0\n", "MemTotal: 64000000 kB\n");
    let e = estimate(
        m,
        &cpu_target(&info, None),
        Engine::LlamaCpp,
        &workload_8k(),
        &cal,
    )
    .unwrap();
    assert_eq!(e.fits, Some(true));
    assert!(e.decode_tokens_per_second.central.is_none());
    assert!(
        e.notes
            .iter()
            .any(|n| n.contains("bandwidth") && n.contains("unknown")),
        "{:?}",
        e.notes
    );
    // Apple: no power, no price.
    let e = estimate(
        m,
        &find_builtin("m2-ultra").unwrap(),
        Engine::LlamaCpp,
        &workload_8k(),
        &cal,
    )
    .unwrap();
    assert!(e.decode_tokens_per_second.central.is_some());
    assert!(e.joules_per_token.central.is_none() && e.usd_per_million_tokens.central.is_none());
    assert!(e
        .notes
        .iter()
        .any(|n| n.contains("Power of `m2-ultra` is unknown")));
    // TPU: borrowed factors, said so.
    let e = estimate(
        m,
        &find_builtin("tpu-v6e").unwrap(),
        Engine::Vllm,
        &workload_8k(),
        &cal,
    )
    .unwrap();
    assert!(e.calibration.unwrap().borrowed);
    assert!(e.notes.iter().any(|n| n.contains("borrowed")));
    assert!(
        e.notes
            .iter()
            .any(|n| n.contains("not listed as accepting gguf")),
        "{:?}",
        e.notes
    );
}

#[test]
fn bound_is_never_beaten_and_bands_bracket_the_central_value() {
    for (fmt, target, engine) in [
        ("Q4_K_M", "rtx-4090", Engine::LlamaCpp),
        ("Q4_0", "m2-ultra", Engine::LlamaCpp),
        ("fp8", "h100-sxm", Engine::TrtLlm),
        ("bf16", "mi300x", Engine::Vllm),
    ] {
        for batch in [1, 16, 256] {
            let w = Workload {
                batch: Batch::Fixed(batch),
                ..workload_8k()
            };
            let e = run(&llama3_8b(), fmt, target, engine, &w);
            let d = e.decode_tokens_per_second;
            let (c, lo, hi, bd) = (
                d.central.unwrap(),
                d.low.unwrap(),
                d.high.unwrap(),
                d.bound.unwrap(),
            );
            assert!(
                c <= bd * 1.000001 && lo <= c && c <= hi && hi <= bd * 1.000001,
                "{fmt} {target} {batch}: {d:?}"
            );
            let t = e.ttft_seconds;
            assert!(
                t.central.unwrap() >= t.bound.unwrap() * 0.999999,
                "{fmt} {target}: {t:?}"
            );
            let thr = e.throughput_tokens_per_second.central.unwrap();
            assert!(thr > 0.0 && thr <= e.throughput_tokens_per_second.bound.unwrap() * 1.000001);
        }
    }
}

#[test]
fn more_devices_and_bigger_batches_move_the_right_way() {
    let one = run(
        &llama3_70b(),
        "fp8",
        "h100-sxm",
        Engine::TrtLlm,
        &Workload {
            devices: Some(1),
            ..workload_8k()
        },
    );
    let four = run(
        &llama3_70b(),
        "fp8",
        "h100-sxm",
        Engine::TrtLlm,
        &Workload {
            devices: Some(4),
            ..workload_8k()
        },
    );
    assert!(four.decode_tokens_per_second.central > one.decode_tokens_per_second.central);
    let b1 = run(
        &llama3_8b(),
        "bf16",
        "h100-sxm",
        Engine::Vllm,
        &workload_8k(),
    );
    let b32 = run(
        &llama3_8b(),
        "bf16",
        "h100-sxm",
        Engine::Vllm,
        &Workload {
            batch: Batch::Fixed(32),
            ..workload_8k()
        },
    );
    assert!(b32.throughput_tokens_per_second.central > b1.throughput_tokens_per_second.central);
    assert!(b32.decode_tokens_per_second.central < b1.decode_tokens_per_second.central);
    let max = run(
        &llama3_8b(),
        "bf16",
        "h100-sxm",
        Engine::Vllm,
        &Workload {
            batch: Batch::Max,
            ..workload_8k()
        },
    );
    assert_eq!(max.batch, 51);
}

/// A compressed-tensors plan is costed from each tensor's encoding
/// (`WeightFormat::Planned`, as `kiln build --engine vllm` does); with every
/// target Linear in one scheme it has the uniform scheme's bytes, and its
/// prefill that scheme's: the same for W4A16; for W8A8, once the caller
/// marks the Linears whose activations are quantized, between the int8
/// scheme's (which counts lm_head at the int8 rate too) and the unmarked
/// plan's, whose int8 weights would be dequantized for 16-bit multiplies.
#[test]
fn a_planned_scheme_costs_what_the_uniform_scheme_does() {
    use super::schemes::CtScheme;
    use quant::{Encoding, Group, IntSpec};
    let arch = llama3_8b();
    let target = find_builtin("h100-sxm").unwrap();
    let cal = Calibration::shipped().unwrap();
    let w = Workload {
        batch: Batch::Fixed(8),
        prompt: 4096,
        ..workload_8k()
    };
    let cost = |wb: &super::weights::WeightBytes, format| {
        estimate(
            ModelCost {
                arch: &arch,
                weights: wb,
                format,
            },
            &target,
            Engine::Vllm,
            &w,
            &cal,
        )
        .unwrap()
    };
    let int = |bits, group| {
        Encoding::Int(IntSpec {
            bits,
            group,
            zero_point: false,
        })
    };
    for (scheme, enc) in [
        (CtScheme::W4A16, int(4, Group::Size(128))),
        (CtScheme::W8A8, int(8, Group::Channel)),
    ] {
        let mut tensors = crate::arch::synthesize(&arch);
        let (mut q_bytes, mut q_params) = (0u64, 0u64);
        for t in &mut tensors {
            // A checkpoint keeps its norms in its own dtype.
            t.source.dtype = crate::ir::SourceDType::BF16;
            if super::weights::is_ct_target(crate::naming::role(&t.name), t) {
                t.encoding = Some(enc);
                q_bytes += t.encoded_bytes().unwrap();
                q_params += t.n_elements() as u64;
            } else {
                t.encoding = Some(Encoding::Keep);
            }
        }
        let uniform_format = WeightFormat::Scheme(scheme, 128);
        let uniform = weight_bytes(&tensors, &arch, uniform_format);
        let mut planned = weight_bytes(&tensors, &arch, WeightFormat::Planned);
        assert_eq!(planned.total, uniform.total, "{scheme}");
        let prefill = |e: &super::estimate::Estimate| e.prefill_seconds.central.unwrap();
        let a = prefill(&cost(&uniform, uniform_format));
        let plain = prefill(&cost(&planned, WeightFormat::Planned));
        if !scheme.quantizes_activations() {
            assert!((a - plain).abs() <= 1e-9 * a, "{scheme}: {a} vs {plain}");
            continue;
        }
        planned.act_quantized.insert(scheme, (q_bytes, q_params));
        let e = cost(&planned, WeightFormat::Planned);
        let b = prefill(&e);
        assert!(a <= b && b < plain, "{scheme}: {a} <= {b} < {plain}");
        assert!(
            b < 1.25 * a,
            "{scheme}: lm_head is a small share: {a} vs {b}"
        );
        assert!(
            e.notes
                .iter()
                .any(|n| n.contains("quantized activations (W8A8)")),
            "{:?}",
            e.notes
        );
    }
}
