//! Snapshots of what users see: help texts, inspect and dry-run output, and
//! error lines, with exit codes. Paths and timings are filtered.

use crate::common::*;

macro_rules! assert_cli_snapshot {
    ($name:expr, $args:expr) => {{
        let mut settings = insta::Settings::clone_current();
        settings.add_filter(r"\d+\.\d+s\b", "[TIME]");
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
