//! `kiln targets` and `kiln estimate` as a user runs them: the profile list
//! and one profile with sources (snapshots), the stable JSON keys, memory
//! figures against hand-computed Llama-3-8B / Llama-3-70B numbers at 8k
//! context (fp16 and Q4_K_M), honesty notes, and bad input (exit 2).
//!
//! Hand computations (bytes): Llama-3-8B has 8,030,261,248 parameters, so
//! 16,060,522,496 at 16 bits; its Q4_K_M GGUF is 4,912,898,048 (Q4_K
//! everywhere, Q6_K for the output and for attn_v/ffn_down in the 16
//! `use_more_bits` layers, f32 norms). Llama-3-70B: 70,553,706,496 parameters,
//! 141,107,412,992 at 16 bits, 42,512,531,456 at Q4_K_M (attn_v Q5_K outside
//! the `use_more_bits` layers). KV per token = 2 x layers x 8 KV heads x 128 x 2
//! bytes: 131,072 (8B) and 327,680 (70B); x 8192 tokens: 1 GiB and 2.5 GiB.

use serde_json::Value;

use crate::common::*;

fn data(name: &str) -> String {
    repo().join("tests/data").join(name).display().to_string()
}

fn estimate_json(args: &[&str]) -> Value {
    let mut all = vec!["estimate"];
    all.extend_from_slice(args);
    all.push("--json");
    let r = run(&all);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    serde_json::from_str(&r.stdout).expect("estimate --json prints JSON")
}

macro_rules! assert_cli_snapshot {
    ($name:expr, $args:expr) => {{
        let mut settings = insta::Settings::clone_current();
        // The `cpu` row describes whatever machine runs the test.
        settings.add_filter(r"(?m)^cpu  .*$", "[THIS HOST'S CPU ROW]");
        settings.add_filter(r"tests/data/", "[DATA]/");
        settings.add_filter(&repo().display().to_string(), "[REPO]");
        settings.bind(|| insta::assert_snapshot!($name, snap($args)));
    }};
}

#[test]
fn targets_list_and_one_target_with_sources() {
    assert_cli_snapshot!("targets_list", &["targets"]);
    assert_cli_snapshot!("targets_h100_sxm", &["targets", "h100-sxm"]);
    assert_cli_snapshot!("targets_ai200_unknowns", &["targets", "ai200"]);
    assert_cli_snapshot!("targets_help", &["targets", "--help"]);
    assert_cli_snapshot!("estimate_help", &["estimate", "--help"]);
}

#[test]
fn targets_json_lists_every_profile_with_sources() {
    let r = run(&["targets", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let all = v.as_array().unwrap();
    assert!(all.len() >= 45, "{} targets", all.len());
    for t in all {
        let id = t["id"].as_str().unwrap();
        assert!(
            t["memory_gb"].is_number() || t["memory_gb"] == "unknown",
            "{id}"
        );
        if t["origin"] == "builtin" {
            assert!(
                !t["sources"].as_object().unwrap().is_empty(),
                "{id} names no sources"
            );
        }
    }
    let cpu = all
        .iter()
        .find(|t| t["id"] == "cpu")
        .expect("a cpu profile");
    assert_eq!(
        cpu["memory_bandwidth_gbps"], "unknown",
        "bandwidth is unknown until measured"
    );
    let one: Value = serde_json::from_str(&run(&["targets", "mi300x", "--json"]).stdout).unwrap();
    assert_eq!(one["memory_gb"], 192.0);
    assert_eq!(one["peak_tflops"]["fp8"], 2614.9);
}

/// `kiln targets --json` says, like the text, which estimate figures a
/// measurement of the target validates and which are extrapolated.
#[test]
fn targets_json_carries_cost_coverage() {
    let r = run(&["targets", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    for t in v.as_array().unwrap() {
        let cov = t["cost_coverage"].as_array().expect("cost_coverage");
        assert_eq!(cov.len(), 6, "{}", t["id"]);
        for c in cov {
            assert!(c["validated"].is_boolean());
            assert!(["validated", "extrapolated", "borrowed", "none"]
                .contains(&c["status"].as_str().unwrap()));
        }
    }
    let one: Value = serde_json::from_str(&run(&["targets", "rtx-4090", "--json"]).stdout).unwrap();
    let decode = one["cost_coverage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["engine_class"] == "llama.cpp" && c["metric"] == "decode")
        .unwrap()
        .clone();
    assert_eq!(decode["validated"], true);
    assert!(decode["rows"].as_u64().unwrap() >= 2);
}

/// `--engine-version` picks the llama.cpp generation; the output says which.
#[test]
fn engine_version_is_chosen_and_stated() {
    let m = data("llama-3-8b");
    let now = estimate_json(&[&m, "-T", "h100-pcie", "-t", "Q4_K_M"]);
    let old = estimate_json(&[
        &m,
        "-T",
        "h100-pcie",
        "-t",
        "Q4_K_M",
        "--engine-version",
        "b2843",
    ]);
    assert_eq!(now["calibration"]["engine_version"], "2025");
    assert_eq!(old["calibration"]["engine_version"], "2024");
    let pre = |v: &Value| v["prefill_seconds"].as_f64().unwrap();
    assert_ne!(pre(&now), pre(&old));
    let says = |v: &Value, what: &str| {
        v["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains(what))
    };
    assert!(says(&now, "--engine-version 2025"));
    assert!(says(&old, "--engine-version 2024"));
    let vllm = estimate_json(&[&m, "-T", "h100-pcie", "-t", "bf16", "--engine", "vllm"]);
    assert!(vllm["calibration"]["engine_version"].is_null());
    let r = run(&[
        "estimate",
        &m,
        "-T",
        "h100-pcie",
        "--engine-version",
        "next-year",
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--engine-version `next-year`"),
        "{}",
        r.stderr
    );
    // Another engine than llama.cpp: refused, not silently ignored.
    let r = run(&[
        "estimate",
        &m,
        "-T",
        "h100-pcie",
        "-t",
        "bf16",
        "--engine",
        "vllm",
        "--engine-version",
        "b2843",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("the engine here is vllm"), "{}", r.stderr);
}

#[test]
fn llama3_8b_fp16_and_q4_k_m_at_8k_by_hand() {
    let m = data("llama-3-8b");
    let v = estimate_json(&[&m, "-T", "h100-sxm", "-t", "f16", "--context", "8192"]);
    assert_eq!(v["params"], 8_030_261_248u64);
    assert_eq!(v["weights_bytes"], 16_060_522_496u64);
    assert_eq!(v["kv_bytes_per_token"], 131_072);
    assert_eq!(v["kv_bytes"], 1_073_741_824u64);
    assert_eq!(v["engine"], "vllm");
    assert_eq!(v["fits"], true);
    assert_eq!(v["devices"], 1);
    // 90% of 80 GB usable, 1 GiB overhead: (72e9 - 16.06e9 - 1.07e9) / 1 GiB per sequence = 51.
    assert_eq!(
        v["memory_per_device_bytes"],
        16_060_522_496u64 + 1_073_741_824 + 1_073_741_824
    );
    assert_eq!(v["max_batch"], 51);

    let v = estimate_json(&[&m, "-T", "rtx-4090", "-t", "Q4_K_M", "--context", "8192"]);
    assert_eq!(v["weights_bytes"], 4_912_898_048u64);
    assert_eq!(v["engine"], "llama.cpp");
    assert_eq!(v["fits"], true);
    // llama.cpp: 24 GB, 0.5 GiB + 512 x 128256 x 4 overhead; (24e9 - 4.913e9 - 0.7995e9) / 1 GiB = 17.
    assert_eq!(v["max_batch"], 17);
}

#[test]
fn llama3_70b_fp16_and_q4_k_m_at_8k_by_hand() {
    let m = data("llama-3-70b");
    let v = estimate_json(&[&m, "-T", "h100-sxm", "-t", "fp16", "--context", "8192"]);
    assert_eq!(v["params"], 70_553_706_496u64);
    assert_eq!(v["weights_bytes"], 141_107_412_992u64);
    assert_eq!(v["kv_bytes_per_token"], 327_680);
    assert_eq!(v["kv_bytes"], 2_684_354_560u64);
    // Two H100s need 70.55 + 1.34 + 1.07 = 72.97 GB each (> 72): four.
    assert_eq!(v["min_devices"], 4);
    assert_eq!(v["devices"], 4);
    assert_eq!(v["fits"], true);
    let v = estimate_json(&[
        &m,
        "-T",
        "h100-sxm",
        "-t",
        "fp16",
        "--context",
        "8192",
        "--devices",
        "2",
    ]);
    assert_eq!(v["fits"], false);
    assert!(v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().starts_with("Does not fit")));

    let v = estimate_json(&[&m, "-T", "h100-sxm", "-t", "Q4_K_M", "--context", "8192"]);
    assert_eq!(v["weights_bytes"], 42_512_531_456u64);
    assert_eq!(v["fits"], true);
    assert_eq!(
        v["memory_per_device_bytes"],
        42_512_531_456u64 + 2_684_354_560 + 536_870_912 + 512 * 128_256 * 4
    );
    assert_eq!(v["max_batch"], 13);
}

#[test]
fn json_keys_are_stable_and_banded() {
    let v = estimate_json(&[
        &data("llama-3-8b"),
        "-T",
        "l40s",
        "-t",
        "fp8",
        "--batch",
        "8",
        "--prompt",
        "1024",
        "--gen",
        "256",
    ]);
    for key in [
        "fits",
        "max_batch",
        "devices",
        "weights_bytes",
        "kv_bytes_per_token",
    ] {
        assert!(!v[key].is_null(), "{key}");
    }
    for key in [
        "prefill_seconds",
        "ttft_seconds",
        "decode_tokens_per_second",
        "throughput_tokens_per_second",
        "e2e_seconds",
        "joules_per_token",
    ] {
        let (c, lo, hi) = (
            v[key].as_f64().unwrap(),
            v[format!("{key}_low")].as_f64().unwrap(),
            v[format!("{key}_high")].as_f64().unwrap(),
        );
        assert!(lo <= c && c <= hi, "{key}: {lo} {c} {hi}");
        assert!(v[format!("{key}_bound")].is_number(), "{key}_bound");
    }
    // The L40S has no published price: null, and a note says why.
    assert!(v["usd_per_million_tokens"].is_null());
    let notes = v["notes"].as_array().unwrap();
    assert!(notes
        .iter()
        .any(|n| n.as_str().unwrap().contains("Price of `l40s` is unknown")));
    assert_eq!(v["batch"], 8);
    assert!(
        v["throughput_tokens_per_second"].as_f64().unwrap()
            > v["decode_tokens_per_second"].as_f64().unwrap()
    );
}

#[test]
fn unmodelled_requests_are_stated() {
    let v = estimate_json(&[
        &data("llama-3-8b"),
        "-T",
        "h200",
        "-t",
        "bf16",
        "--speculative",
        "--request-rate",
        "20",
    ]);
    let notes: Vec<&str> = v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("Speculative decoding is not modelled")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("Queueing under load is not modelled")),
        "{notes:?}"
    );
    // Unknown figures: an Apple chip publishes no power, the AI200 no bandwidth.
    let v = estimate_json(&[&data("llama-3-8b"), "-T", "m3-max", "-t", "Q4_K_M"]);
    assert!(v["joules_per_token"].is_null());
    let v = estimate_json(&[&data("llama-3-8b"), "-T", "ai200", "-t", "bf16"]);
    assert!(v["decode_tokens_per_second"].is_null() && v["fits"] == true);
}

#[test]
fn a_users_target_file_is_used_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("my-gpu.toml");
    std::fs::write(
        &good,
        r#"id = "my-gpu"
name = "My GPU"
vendor = "Me"
class = "gpu"
memory_gb = 24
memory_bandwidth_gbps = 500
onchip_mb = "unknown"
tdp_w = "unknown"
interconnect_gbps = "unknown"
price_per_hour_usd = 0.5
price_source = "my invoice"
[peak_tflops]
fp16 = 100
[runtimes]
"llama.cpp" = ["gguf"]
[sources]
memory_gb = "spec sheet"
memory_bandwidth_gbps = "spec sheet"
peak_tflops = "spec sheet"
runtimes = "me"
"#,
    )
    .unwrap();
    let v = estimate_json(&[
        &data("llama-3-8b"),
        "-T",
        "my-gpu",
        "--target-file",
        s(&good),
        "-t",
        "Q4_K_M",
    ]);
    assert_eq!(v["target"], "my-gpu");
    assert!(v["usd_per_million_tokens"].is_number());
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&good)
            .unwrap()
            .replace("memory_bandwidth_gbps = \"spec sheet\"\n", ""),
    )
    .unwrap();
    let r = run(&["targets", "--target-file", s(&bad)]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("`memory_bandwidth_gbps` = 500 has no source"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_input_exits_2_with_one_line() {
    for (args, want) in [
        (
            vec!["estimate", "tests/data/llama-3-8b", "-T", "h100"],
            "unknown target `h100`",
        ),
        (
            vec![
                "estimate",
                "tests/data/llama-3-8b",
                "-T",
                "h100-sxm",
                "-t",
                "q9_k",
            ],
            "unknown weight type `q9_k`",
        ),
        (
            vec![
                "estimate",
                "tests/data/llama-3-8b",
                "-T",
                "h100-sxm",
                "--engine",
                "ollama",
            ],
            "unknown engine `ollama`",
        ),
        (
            vec![
                "estimate",
                "tests/data/llama-3-8b",
                "-T",
                "h100-sxm",
                "--batch",
                "0",
            ],
            "--batch `0`",
        ),
        (
            vec![
                "estimate",
                "tests/data/llama-3-8b",
                "-T",
                "h100-sxm",
                "--devices",
                "3",
                "--tp",
                "2",
            ],
            "cannot be split",
        ),
        (
            vec!["estimate", "tests/data/no-such-model", "-T", "h100-sxm"],
            "no such file",
        ),
        (vec!["targets", "nope"], "unknown target `nope`"),
    ] {
        let r = run_cmd(kiln().current_dir(repo()).args(&args));
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
    }
}

#[test]
fn estimate_text_for_a_70b_on_apple() {
    assert_cli_snapshot!(
        "estimate_70b_q4_k_m_m2_ultra",
        &[
            "estimate",
            &data("llama-3-70b"),
            "-T",
            "m2-ultra",
            "-t",
            "Q4_K_M",
            "--context",
            "8192"
        ]
    );
}
