//! compressed-tensors chosen per target, end to end on the tiny Llama
//! fixture: a scheme the target's runtime does not run natively is refused
//! with the reason and nothing is written; a target profile listing an
//! unknown scheme is refused by name with a "did you mean"; Neuron's FP8 is
//! scaled to +-240 and says so in the manifest; `kiln estimate --scheme`
//! counts exactly the tensor bytes `kiln convert` writes and multiplies in
//! the scheme's activation precision; `kiln build --engine vllm` writes a
//! mixed-precision artifact whose config groups are the plan's, identical
//! for any thread count, with the report as users see it. (transformers with
//! compressed-tensors loads such a build: bench/ct_mixed_check.py.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::common::*;

fn tiny() -> String {
    s(&fixture("tiny-llama")).to_string()
}

fn json_file(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The safetensors header of `path` and the bytes of tensor data after it.
fn safetensors(path: &Path) -> (BTreeMap<String, Value>, u64) {
    let data = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&data[8..8 + n]).unwrap();
    (header, (data.len() - 8 - n) as u64)
}

#[test]
fn a_scheme_the_target_cannot_run_is_refused_with_the_reason() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let cases = [
        (
            "NVFP4",
            "h100-sxm",
            "NVFP4 (W4A4) needs FP4 tensor cores (Blackwell)",
        ),
        (
            "FP8_DYNAMIC",
            "a100-80g-sxm",
            "FP8 W8A8 needs FP8 tensor cores",
        ),
        ("W4A16", "tpu-v5e", "tpu-v5e runs W8A8 with tpu-inference"),
        ("W8A8", "v100", "INT8 W8A8 needs INT8 tensor cores"),
        // Not NVIDIA: the runtime's own list is the reason, not CUDA's.
        (
            "W8A8",
            "inferentia2",
            "neuron does not list it for this device (aws-neuron-sdk",
        ),
        (
            "NVFP4A16",
            "tpu-v6e",
            "tpu-inference does not list it for this device",
        ),
    ];
    for (scheme, target, why) in cases {
        let r = run(&[
            "convert",
            &tiny(),
            "--format",
            "compressed-tensors",
            "--scheme",
            scheme,
            "--target",
            target,
            "-o",
            s(&out),
        ]);
        assert_eq!(r.code, 2, "{scheme} on {target}: {}", r.stderr);
        assert!(r.stderr.contains(why), "{scheme} on {target}: {}", r.stderr);
        assert_eq!(
            r.stderr.lines().filter(|l| l.starts_with("error:")).count(),
            1
        );
        assert!(!out.exists(), "nothing written");
        // estimate refuses the same, for the same reason.
        let r = run(&[
            "estimate",
            &tiny(),
            "--target",
            target,
            "--engine",
            "vllm",
            "--scheme",
            scheme,
        ]);
        assert_eq!(r.code, 2, "estimate {scheme} on {target}: {}", r.stderr);
        assert!(r.stderr.contains(why), "estimate: {}", r.stderr);
    }
    // The h100 message lists what it does run.
    let r = run(&[
        "convert",
        &tiny(),
        "--scheme",
        "NVFP4",
        "--target",
        "h100-sxm",
        "--dry-run",
    ]);
    assert!(
        r.stderr
            .contains("h100-sxm runs W4A16, W4A16_ASYM, W8A16, W8A8, FP8, FP8_DYNAMIC"),
        "{}",
        r.stderr
    );
    // Legal ones go through.
    for (scheme, target) in [
        ("W8A8", "tpu-v5e"),
        ("FP8_DYNAMIC", "l4"),
        ("W4A16", "gaudi3"),
    ] {
        let r = run(&[
            "convert",
            &tiny(),
            "--scheme",
            scheme,
            "--target",
            target,
            "--dry-run",
        ]);
        assert_eq!(r.code, 0, "{scheme} on {target}: {}", r.stderr);
    }
}

#[test]
fn a_profile_with_an_unknown_scheme_or_runtime_is_refused_by_name() {
    let root = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(repo().join("targets/l4.toml")).unwrap();
    for (from, to, want) in [
        (
            "\"W4A16\", ",
            "\"W4A17\", ",
            "`W4A17` (did you mean `W4A16`?)",
        ),
        (
            "\"FP8_DYNAMIC\", ",
            "\"fp8\", ",
            "lists `fp8` (did you mean `FP8`?)",
        ),
        (
            "\nvllm = [",
            "\nvlm = [",
            "runtime `vlm` (did you mean `vllm`?)",
        ),
    ] {
        assert!(base.contains(from), "{from}");
        let path = root.path().join("mine.toml");
        std::fs::write(
            &path,
            base.replacen(from, to, 1).replace("\"l4\"", "\"mine\""),
        )
        .unwrap();
        let r = run(&["targets", "mine", "--target-file", s(&path)]);
        assert_eq!(r.code, 2, "{to}: {}", r.stdout);
        assert!(r.stderr.contains(want), "{to}: {}", r.stderr);
    }
}

#[test]
fn targets_show_the_schemes_per_runtime_with_sources() {
    let r = run(&["targets", "inferentia2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("neuron"), "{}", r.stdout);
    assert!(r.stdout.contains("bf16, FP8, FP8_DYNAMIC"), "{}", r.stdout);
    assert!(
        r.stdout.contains("FP8 (E4M3) weights are scaled to +-240"),
        "{}",
        r.stdout
    );
    let r = run(&["targets", "cloud-ai-100-pro", "--json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["single_group"], serde_json::json!(["qefficient"]));
    assert!(v["runtime_sources"]["qefficient"]
        .as_str()
        .unwrap()
        .contains("efficient-transformers"));
    let r = run(&["targets", "b200", "--json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let vllm: Vec<&str> = v["runtimes"]["vllm"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(vllm.contains(&"NVFP4"), "Blackwell runs NVFP4 W4A4");
    assert!(v["fp8_e4m3_max"].is_null());
}

#[test]
fn neuron_fp8_is_scaled_to_240() {
    let root = tempfile::tempdir().unwrap();
    let mut max_code = BTreeMap::new();
    for (target, out) in [("inferentia2", "neuron"), ("h100-sxm", "h100")] {
        let out = root.path().join(out);
        let r = run(&[
            "convert",
            &tiny(),
            "--scheme",
            "FP8_DYNAMIC",
            "--target",
            target,
            "-o",
            s(&out),
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let m = json_file(&out.join("manifest.json"));
        assert_eq!(m["target"], target);
        let data = std::fs::read(out.join("model.safetensors")).unwrap();
        let (header, _) = safetensors(&out.join("model.safetensors"));
        let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
        let t = &header["model.layers.0.self_attn.q_proj.weight"];
        assert_eq!(t["dtype"], "F8_E4M3");
        let o = t["data_offsets"].as_array().unwrap();
        let (a, b) = (
            o[0].as_u64().unwrap() as usize,
            o[1].as_u64().unwrap() as usize,
        );
        // E4M3 magnitude bits; 0x77 is 240, 0x7e is 448.
        let top = data[8 + n + a..8 + n + b]
            .iter()
            .map(|x| x & 0x7f)
            .max()
            .unwrap();
        max_code.insert(target, (top, m["fp8_e4m3_max"].as_f64().unwrap()));
    }
    assert_eq!(max_code["inferentia2"], (0x77, 240.0));
    assert_eq!(max_code["h100-sxm"], (0x7e, 448.0));
}

#[test]
fn estimate_by_scheme_counts_the_written_bytes_and_its_activation_precision() {
    let root = tempfile::tempdir().unwrap();
    for (scheme, compute) in [
        ("W4A16", "fp16"),
        ("W4A16_ASYM", "fp16"),
        ("W8A16", "fp16"),
        ("W8A8", "int8"),
        ("FP8_DYNAMIC", "fp8"),
        ("FP8_BLOCK", "fp8"),
        ("NVFP4A16", "fp16"),
        ("MXFP4", "fp16"),
    ] {
        let out = root.path().join(scheme);
        let r = run(&["convert", &tiny(), "--scheme", scheme, "-o", s(&out)]);
        assert_eq!(r.code, 0, "{scheme}: {}", r.stderr);
        let (_, tensor_bytes) = safetensors(&out.join("model.safetensors"));
        let r = run(&[
            "estimate",
            &tiny(),
            "--target",
            "h100-sxm",
            "--engine",
            "vllm",
            "--scheme",
            scheme,
            "--json",
        ]);
        assert_eq!(r.code, 0, "{scheme}: {}", r.stderr);
        let e: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(e["type"], scheme);
        assert_eq!(
            e["weights_bytes"].as_u64().unwrap(),
            tensor_bytes,
            "{scheme}: estimate against the written artifact's tensor data"
        );
        assert_eq!(e["compute_reference"], compute, "{scheme}");
    }
    // W8A8's int8 prefill on an H100 is faster than W8A16's 16-bit one.
    let prefill = |scheme: &str| {
        let r = run(&[
            "estimate",
            &tiny(),
            "--target",
            "h100-sxm",
            "--scheme",
            scheme,
            "--prompt",
            "4096",
            "--batch",
            "8",
            "--json",
        ]);
        let e: Value = serde_json::from_str(&r.stdout).unwrap();
        e["prefill_seconds"].as_f64().unwrap()
    };
    assert!(prefill("W8A8") < prefill("W8A16"));
    let r = run(&[
        "estimate",
        &tiny(),
        "--target",
        "h100-sxm",
        "--scheme",
        "W4A17",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("did you mean `W4A16`?"), "{}", r.stderr);
}

/// Every file of a directory by name.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn build_engine_vllm_writes_the_planned_mixed_precision_artifact() {
    let root = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for threads in ["1", "3"] {
        let out = root.path().join(format!("out-{threads}"));
        let r = run_cmd(kiln().env("RAYON_NUM_THREADS", threads).args([
            "build",
            &tiny(),
            "--engine",
            "vllm",
            "--target",
            "h100-sxm",
            "-o",
            s(&out),
        ]));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(
            r.stdout.trim_end(),
            std::fs::read_to_string(out.join("report.md"))
                .unwrap()
                .trim_end()
        );
        runs.push(contents(&out));
    }
    assert_eq!(runs[0], runs[1], "identical for 1 and 3 threads");
    let out = root.path().join("out-1");
    let m = json_file(&out.join("manifest.json"));
    let qc = json_file(&out.join("config.json"))["quantization_config"].clone();
    // The config groups are the plan's: every unit's tensors in the group of
    // its scheme, bf16 units in `ignore`, lm_head ignored.
    let legal: BTreeSet<&str> = m["legal_schemes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(!legal.contains("NVFP4"), "h100 has no FP4 tensor cores");
    let mut group_of = BTreeMap::new();
    let mut formats = BTreeSet::new();
    for g in qc["config_groups"].as_object().unwrap().values() {
        formats.insert(g["format"].as_str().unwrap().to_string());
        for t in g["targets"].as_array().unwrap() {
            group_of.insert(t.as_str().unwrap().to_string(), g.clone());
        }
    }
    let ignore: BTreeSet<&str> = qc["ignore"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(ignore.contains("lm_head"));
    let mut schemes = BTreeSet::new();
    for u in m["units"].as_array().unwrap() {
        let scheme = u["scheme"].as_str().unwrap();
        schemes.insert(scheme.to_string());
        for t in u["tensors"].as_array().unwrap() {
            let module = t.as_str().unwrap().trim_end_matches(".weight");
            if scheme == "bf16" {
                assert!(ignore.contains(module), "{module} kept but not ignored");
                assert!(!group_of.contains_key(module));
                continue;
            }
            assert!(legal.contains(scheme), "{scheme} not legal");
            let g = &group_of[module];
            let want_bits = if scheme.starts_with("W8") || scheme.starts_with("FP8") {
                8
            } else {
                4
            };
            assert_eq!(g["weights"]["num_bits"], want_bits, "{module}: {scheme}");
        }
        // Fused units share one group.
        let groups: BTreeSet<String> = u["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let module = t.as_str().unwrap().trim_end_matches(".weight");
                group_of
                    .get(module)
                    .map_or("ignore".into(), |g| g.to_string())
            })
            .collect();
        assert_eq!(groups.len(), 1, "{}: one scheme per fused unit", u["unit"]);
    }
    assert!(
        schemes.len() > 1,
        "a mixed plan on this fixture: {schemes:?}"
    );
    let want_format = if formats.len() > 1 {
        "mixed-precision".to_string()
    } else {
        formats.iter().next().unwrap().clone()
    };
    assert_eq!(qc["format"], want_format.as_str());
    // The plan keeps the error ceiling (uniform W4A16's) and is no larger than it.
    let compared = m["compared"].as_array().unwrap();
    let w4 = compared.iter().find(|r| r["name"] == "W4A16 g128").unwrap();
    assert!(
        m["predicted_kld"].as_f64().unwrap()
            <= w4["predicted_kld"].as_f64().unwrap() * (1.0 + 1e-9)
    );
    assert!(m["tensor_bytes"].as_u64().unwrap() <= w4["tensor_bytes"].as_u64().unwrap() + 4096);
    // Every file the manifest lists is the file on disk.
    for f in m["files"].as_array().unwrap() {
        let p = out.join(f["path"].as_str().unwrap());
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            f["bytes"].as_u64().unwrap()
        );
        assert_eq!(
            formats::artifact::sha256_file(&p).unwrap(),
            f["sha256"].as_str().unwrap()
        );
    }
    // The serving cost is of the written artifact: the weights the estimate
    // counts are the safetensors' tensor data, byte for byte.
    let (_, tensor_bytes) = safetensors(&out.join("model.safetensors"));
    assert_eq!(m["cost"]["weights_bytes"].as_u64().unwrap(), tensor_bytes);
    assert_eq!(m["cost"]["fits"], true);
    assert!(m["cost"]["decode_tokens_per_second"].as_f64().unwrap() > 0.0);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    insta::assert_snapshot!("build_tiny_llama_vllm_h100_report", report);
}

#[test]
fn build_for_a_single_group_runtime_uses_one_scheme() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let r = run(&[
        "build",
        &tiny(),
        "--engine",
        "vllm",
        "--target",
        "cloud-ai-100-pro",
        "-o",
        s(&out),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = json_file(&out.join("manifest.json"));
    assert_eq!(m["runtime"], "qefficient");
    assert_eq!(m["single_group"], true);
    let qc = json_file(&out.join("config.json"))["quantization_config"].clone();
    assert!(qc["config_groups"].as_object().unwrap().len() <= 1);
    assert_ne!(qc["format"], "mixed-precision");
}

#[test]
fn build_with_text_measures_the_plan_and_the_uniform_schemes() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let text = repo().join("fixtures/text/pride-and-prejudice-ch1-17.txt");
    let r = run(&[
        "build",
        &tiny(),
        "--engine",
        "vllm",
        "--target",
        "h100-sxm",
        "--text",
        s(&text),
        "--chunks",
        "2",
        "--probe-chunks",
        "1",
        "--eval-chunks",
        "1",
        "-o",
        s(&out),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = json_file(&out.join("manifest.json"));
    let compared = m["compared"].as_array().unwrap();
    assert_eq!(compared.len(), 5, "the plan and four uniform schemes");
    for row in compared {
        let k = row["measured_kld"].as_f64();
        assert!(k.is_some_and(|k| k.is_finite() && k >= 0.0), "{row}");
    }
    // W8A16 loses less than W4A16 on the same text.
    let kld = |n: &str| {
        compared.iter().find(|r| r["name"] == n).unwrap()["measured_kld"]
            .as_f64()
            .unwrap()
    };
    assert!(kld("W8A16 g128") < kld("W4A16 g128"));
    // W8A8's int8 inputs cost more than W8A16 g128's finer weight scales save.
    assert!(kld("W8A8") > kld("W8A16 g128"), "{compared:?}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(!report.contains("not measured"), "{report}");
}

#[test]
fn plan_engine_vllm_shows_the_build_per_target_without_writing() {
    let r = run(&[
        "plan",
        &tiny(),
        "--engine",
        "vllm",
        "--targets",
        "h100-sxm,tpu-v5e,m2",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let t = v["targets"].as_array().unwrap();
    assert_eq!(t[0]["runtime"], "vllm");
    assert_eq!(t[1]["runtime"], "tpu-inference");
    assert_eq!(t[1]["plan_schemes"], serde_json::json!(["W8A8"]));
    assert!(t[2]["no_plan"]
        .as_str()
        .unwrap()
        .contains("does not list vllm"));
    // The plan is the one `kiln build` writes.
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let b = run(&[
        "build",
        &tiny(),
        "--engine",
        "vllm",
        "--target",
        "h100-sxm",
        "-o",
        s(&out),
    ]);
    assert_eq!(b.code, 0, "{}", b.stderr);
    let m = json_file(&out.join("manifest.json"));
    assert_eq!(
        t[0]["options"][0]["tensor_bytes"].as_u64().unwrap(),
        m["compared"][0]["tensor_bytes"].as_u64().unwrap()
    );
}

/// An MoE whose expert widths no group of 128 divides: uniform W4A16 would
/// keep every Linear in 16 bits, a ceiling of zero error that only an
/// all-bf16 plan meets. The default ceiling is then the first legal scheme
/// that holds the Linears, and the plan quantizes.
#[test]
fn build_of_an_moe_no_group_of_128_divides_still_quantizes() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let moe = repo().join("fixtures/tiny-mixtral");
    let r = run(&[
        "build",
        s(&moe),
        "--engine",
        "vllm",
        "--target",
        "h100-sxm",
        "-o",
        s(&out),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = json_file(&out.join("manifest.json"));
    let quantized = m["units"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["scheme"] != "bf16")
        .count();
    assert!(quantized > 0, "{}", m["units"]);
    assert!(m["max_error"].as_f64().unwrap() > 0.0);
    assert!(m["bits_per_weight"].as_f64().unwrap() < 12.0);
    // Its cost is of the quantized artifact, and no note says the runtime
    // does not take its format.
    let notes = m["cost"]["notes"].to_string();
    assert!(!notes.contains("not listed as accepting"), "{notes}");
    // Nor for a plan that keeps every Linear in bf16 (the accuracy objective
    // with memory to spare): a bf16 checkpoint, which vLLM takes.
    let out = root.path().join("bf16");
    let r = run(&[
        "build",
        &tiny(),
        "--engine",
        "vllm",
        "--target",
        "h100-sxm",
        "--objective",
        "accuracy",
        "-o",
        s(&out),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = json_file(&out.join("manifest.json"));
    assert!(m["units"]
        .as_array()
        .unwrap()
        .iter()
        .all(|u| u["scheme"] == "bf16"));
    let notes = m["cost"]["notes"].to_string();
    assert!(!notes.contains("not listed as accepting"), "{notes}");
}

/// `kiln plan --engine vllm` refuses a GGUF as `kiln build` does: nothing is
/// planned that cannot be built.
#[test]
fn plan_engine_vllm_refuses_a_gguf_as_build_does() {
    let root = tempfile::tempdir().unwrap();
    let gguf = root.path().join("m.gguf");
    let r = run(&["convert", &tiny(), "--type", "q8_0", "-o", s(&gguf)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for cmd in ["plan", "build"] {
        let mut args = vec![cmd, s(&gguf), "--engine", "vllm"];
        let out = root.path().join("out");
        if cmd == "plan" {
            args.extend(["--targets", "h100-sxm"]);
        } else {
            args.extend(["--target", "h100-sxm", "-o", s(&out)]);
        }
        let r = run(&args);
        assert_eq!(r.code, 2, "{cmd}: {}", r.stderr);
        assert!(
            r.stderr
                .contains("from a Hugging Face checkpoint directory"),
            "{cmd}: {}",
            r.stderr
        );
        assert!(!out.exists());
    }
}

/// The KL divergence `kiln build --engine` reports for its plan is what
/// `kiln eval` measures on the written artifact, for the float schemes too
/// (their decoded values are rounded to the dtype they decompress to, and
/// FP8_BLOCK's scales come from whole 128 x 128 tiles), activation
/// quantization included.
#[test]
fn build_measures_what_eval_reads_from_the_artifact() {
    let root = tempfile::tempdir().unwrap();
    let text = repo().join("fixtures/text/pride-and-prejudice-ch1-17.txt");
    let book = std::fs::read_to_string(&text).unwrap();
    let held = root.path().join("held.txt");
    std::fs::write(&held, &book[book.len() - 20_000..]).unwrap();
    let base = std::fs::read_to_string(repo().join("targets/h100-sxm.toml")).unwrap();
    let line = base
        .lines()
        .find(|l| l.starts_with("trt-llm = ["))
        .unwrap()
        .to_string();
    for scheme in ["FP8_DYNAMIC", "FP8_BLOCK", "NVFP4A16", "W8A8"] {
        let path = root.path().join(format!("{scheme}.toml"));
        std::fs::write(
            &path,
            base.replace(&line, &format!("trt-llm = [\"bf16\", \"{scheme}\"]"))
                .replace("\"h100-sxm\"", "\"mine\""),
        )
        .unwrap();
        let out = root.path().join(scheme);
        let r = run(&[
            "build",
            &tiny(),
            "--engine",
            "trt-llm",
            "--target",
            "mine",
            "--target-file",
            s(&path),
            "--text",
            s(&text),
            "--eval-text",
            s(&held),
            "--ctx",
            "64",
            "--eval-chunks",
            "3",
            "--probe-chunks",
            "1",
            "-o",
            s(&out),
        ]);
        assert_eq!(r.code, 0, "{scheme}: {}", r.stderr);
        let m = json_file(&out.join("manifest.json"));
        assert!(
            m["units"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u["scheme"] == scheme),
            "{scheme}: {}",
            m["units"]
        );
        let planned = m["compared"][0]["measured_kld"].as_f64().unwrap();
        let e = run(&[
            "eval",
            &tiny(),
            s(&out),
            "--text",
            s(&held),
            "--ctx",
            "64",
            "--chunks",
            "3",
            "--json",
        ]);
        assert_eq!(e.code, 0, "{scheme}: {}", e.stderr);
        let v: Value = serde_json::from_str(&e.stdout).unwrap();
        let measured = v["kld"]["mean"].as_f64().unwrap();
        assert!(
            (planned - measured).abs() <= 1e-9 * measured.max(1e-12) + 1e-15,
            "{scheme}: build reported {planned}, eval of the artifact {measured}"
        );
    }
}
