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
