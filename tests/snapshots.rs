//! Snapshots of what users see: help texts, inspect and dry-run output, and
//! error lines, with exit codes. Paths and timings are filtered.

use crate::common::*;

macro_rules! assert_cli_snapshot {
    ($name:expr, $args:expr) => {{
        let mut settings = insta::Settings::clone_current();
        settings.add_filter(r"\d+\.\d+s\b", "[TIME]");
        settings.add_filter(r"\b(\d+ (h|min) )?\d+(\.\d+)? (min|s)\b", "[TIME]");
        settings.add_filter(r"[\d.]+ GB/s", "[RATE]");
        settings.add_filter(&regex_escape(&repo().display().to_string()), "[REPO]");
        settings.add_filter(r"/tmp/\.tmp\w+", "[TMP]");
        settings.add_filter(r"kiln(\.exe)? \d+\.\d+\.\d+", "kiln [VERSION]");
        settings.bind(|| insta::assert_snapshot!($name, snap($args)));
    }};
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

#[test]
fn help_texts() {
    assert_cli_snapshot!("help", &["--help"]);
    assert_cli_snapshot!("convert_help", &["convert", "--help"]);
    assert_cli_snapshot!("inspect_help", &["inspect", "--help"]);
}

#[test]
fn inspect_tiny_llama() {
    let fx = fixture("tiny-llama");
    assert_cli_snapshot!("inspect_tiny_llama", &["inspect", s(&fx)]);
}

#[test]
fn dry_run_plan_tiny_llama() {
    let fx = fixture("tiny-llama");
    assert_cli_snapshot!(
        "dry_run_tiny_llama_q8_0",
        &["convert", s(&fx), "-t", "q8_0", "--dry-run"]
    );
}

#[test]
fn inspect_json_is_machine_readable() {
    let r = run(&["inspect", s(&fixture("tiny-qwen2")), "--json"]);
    assert_eq!(r.code, 0);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["format"], "hf");
    assert_eq!(v["architecture"]["family"], "qwen2");
    assert!(v["parameters"].as_u64().unwrap() > 0);
    let sum: u64 = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, v["total_bytes"].as_u64().unwrap());
}

#[test]
fn error_lines() {
    assert_cli_snapshot!("error_missing_model", &["inspect", "/no/such/model"]);
    let fx = fixture("tiny-llama");
    // Missing directories are created; a path under a file is refused.
    let under_a_file = fx.join("config.json/x.gguf");
    assert_cli_snapshot!(
        "error_output_under_a_file",
        &["convert", s(&fx), "-t", "q8_0", "-o", s(&under_a_file)]
    );
}

#[test]
fn plan_text_and_json() {
    let fx = fixture("tiny-llama");
    assert_cli_snapshot!(
        "plan_tiny_llama_m2_h100_bpw_4_5",
        &["plan", s(&fx), "--targets", "m2,h100-sxm", "--bpw", "4.5"]
    );
    assert_cli_snapshot!(
        "plan_tiny_llama_h100_json",
        &["plan", s(&fx), "--targets", "h100-sxm", "--json"]
    );
    // The budget is numbers with units in the key names, and its source.
    let r = run(&["plan", s(&fx), "--targets", "m2", "--bpw", "4.5", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let b = &v["targets"][0]["budget"];
    assert_eq!(b["source"], "bpw");
    assert_eq!(b["bpw"], 4.5);
    assert_eq!(b["file_bytes"], 1737984 * 45 / 80);
    assert!(b["tensor_bytes"].is_u64());
}

#[test]
fn usage_and_lookup_errors_are_one_line() {
    let fx = fixture("tiny-llama");
    assert_cli_snapshot!("error_usage_missing_arguments", &["estimate"]);
    assert_cli_snapshot!(
        "error_unknown_target",
        &["build", s(&fx), "--target", "h100", "-o", "/no/such/out"]
    );
    assert_cli_snapshot!(
        "error_unknown_type",
        &[
            "estimate",
            s(&fx),
            "--target",
            "h100-sxm",
            "--type",
            "q4_k_n"
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "id = \"x\"\nname = \n").unwrap();
    let r = run(&["targets", "--target-file", s(&bad), "x"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("line 2, column"), "{}", r.stderr);
    for args in [
        &["estimate"][..],
        &["build", s(&fx)],
        &["convert", s(&fx), "--type", "q8_0"],
        &["plan", s(&fx), "--targets", "m2", "--bogus"],
    ] {
        let r = run(args);
        assert_eq!(r.code, 2, "{args:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
    }
}

#[test]
fn an_impossible_bpw_fails_before_any_measuring_and_names_the_least_that_works() {
    let fx = fixture("tiny-llama");
    let text = repo().join("fixtures/text/pride-and-prejudice-ch1-17.txt");
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("o");
    let r = run(&[
        "build",
        s(&fx),
        "--target",
        "h100-sxm",
        "--bpw",
        "1",
        "--text",
        s(&text),
        "-o",
        s(&o),
    ]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("give --bpw 3.101 or more"),
        "{}",
        r.stderr
    );
    // Nothing was collected or probed first.
    assert!(!r.stderr.contains("imatrix"), "{}", r.stderr);
    assert!(!o.exists());
    // And that --bpw works.
    let r = run(&["plan", s(&fx), "--targets", "m2", "--bpw", "3.101"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn a_context_above_the_trained_one_warns() {
    let fx = fixture("tiny-llama");
    let r = run(&["plan", s(&fx), "--targets", "m2", "--context", "100000000"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("warning: --context 100,000,000 is above the"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_finished_stage_prints_one_line_when_stderr_is_not_a_terminal() {
    // The tests' stderr is a pipe; NO_COLOR must not silence anything.
    let fx = fixture("tiny-llama");
    let r = run_cmd(
        kiln()
            .env("NO_COLOR", "1")
            .args(["plan", s(&fx), "--targets", "m2"]),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("measuring: "))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(line.contains(" values in "), "{line}");
}

/// A checkpoint directory of an architecture kiln cannot convert.
fn write_unsupported(dir: &std::path::Path, config: &str, names: &[&str]) {
    let tensors: Vec<StTensor> = names
        .iter()
        .enumerate()
        .map(|(i, n)| f32_tensor(n, &[2 + i, 4], |j| j as f32))
        .collect();
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes(&tensors, |_| {}),
    )
    .unwrap();
}

/// Issue 15: inspect shows what kiln cannot convert, and says why in one line.
#[test]
fn inspect_an_unsupported_architecture() {
    let d = tempfile::tempdir().unwrap();
    write_unsupported(
        d.path(),
        r#"{"architectures": ["FalconForCausalLM"], "model_type": "falcon", "hidden_size": 4,
            "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 2, "alibi": false,
            "new_decoder_architecture": true, "parallel_attn": true}"#,
        &[
            "transformer.word_embeddings.weight",
            "transformer.h.0.self_attention.query_key_value.weight",
            "transformer.h.0.mlp.dense_h_to_4h.weight",
        ],
    );
    assert_cli_snapshot!("inspect_falcon", &["inspect", s(d.path())]);
    let r = run(&["inspect", s(d.path()), "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["convertible"], false);
    assert!(v["not_convertible_because"]
        .as_str()
        .unwrap()
        .contains("architecture `FalconForCausalLM` is not supported"));
    assert_eq!(v["config"]["model_type"], "falcon");
    assert_eq!(v["tensors"].as_array().unwrap().len(), 3);
    assert_eq!(v["tensors"][1]["shape"], serde_json::json!([3, 4]));
    assert_eq!(v["metadata"], serde_json::json!({}));
    // A convertible one says so too.
    let r = run(&["inspect", s(&fixture("tiny-qwen3")), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["convertible"], true);
    assert_eq!(v["architecture"]["head_dim"], 64);
}

/// Broken JSON, control characters in tensor names and config values: shown
/// escaped, exit 0; an unreadable safetensors header is still an error.
#[test]
fn inspect_a_hostile_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    write_unsupported(
        d.path(),
        "{\"architectures\": [\"Evil\\u001b[2J\"], \"model_type\": \"x\\u0007\", \"hidden_size\": -1}",
        &["w\u{1b}[31m.weight", "model.layers.99999999999999999999.mlp.up_proj.weight"],
    );
    assert_cli_snapshot!("inspect_hostile", &["inspect", s(d.path())]);
    std::fs::write(d.path().join("config.json"), "{not json").unwrap();
    let r = run(&["inspect", s(d.path())]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("kiln cannot convert this: "),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("invalid JSON"), "{}", r.stdout);
    assert!(r.stdout.contains("w\\u{1b}[31m.weight"), "{}", r.stdout);
    std::fs::write(d.path().join("model.safetensors"), b"\x08\0\0\0\0\0\0\0{}").unwrap();
    let r = run(&["inspect", s(d.path())]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
}

#[test]
fn what_a_new_user_tries_next() {
    // The help of the main job, and `estimate` on a model small enough to
    // need KiB and M (not `0.00 GB`, `0.00B`); a --context past the trained
    // one warns here too.
    let fx = fixture("tiny-llama");
    assert_cli_snapshot!("build_help", &["build", "--help"]);
    assert_cli_snapshot!("plan_help", &["plan", "--help"]);
    assert_cli_snapshot!(
        "estimate_tiny_llama_h100",
        &["estimate", s(&fx), "--target", "h100-sxm"]
    );
    assert_cli_snapshot!(
        "estimate_tiny_llama_h100_long_context",
        &[
            "estimate",
            s(&fx),
            "--target",
            "h100-sxm",
            "--context",
            "100000000"
        ]
    );
}
