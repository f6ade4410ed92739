//! Hostile and broken inputs: each gets one clear line naming the file, the
//! tensor and the reason, exit code 2, and no output file.

use std::path::Path;

use serde_json::json;

use crate::common::*;

/// Convert `model` into a fresh output dir and assert the refusal.
fn refuse(model: &Path, must_contain: &[&str]) -> String {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("out.gguf");
    let r = run(&["convert", s(model), "--type", "q8_0", "-o", s(&target)]);
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {}", r.stderr);
    for needle in must_contain {
        assert!(r.stderr.contains(needle), "`{needle}` not in: {}", r.stderr);
    }
    assert!(
        listing(out.path()).is_empty(),
        "left behind: {:?}",
        listing(out.path())
    );
    r.stderr
}

fn mini_with(fix: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write_mini(d.path(), &mini_tensors(), fix);
    d
}

#[test]
fn a_valid_mini_model_converts() {
    let d = mini_with(|_| {});
    let out = tempfile::tempdir().unwrap();
    let r = run(&[
        "convert",
        s(d.path()),
        "-t",
        "q8_0",
        "-o",
        s(&out.path().join("m.gguf")),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(listing(out.path()), vec!["m.gguf"]);
}

#[test]
fn truncated_safetensors() {
    let d = mini_with(|_| {});
    let f = d.path().join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    refuse(
        d.path(),
        &[
            "model.safetensors",
            "tensor `lm_head.weight`",
            "out of range",
        ],
    );
    std::fs::write(&f, [1u8, 2, 3]).unwrap();
    refuse(d.path(), &["model.safetensors", "truncated"]);
}

#[test]
fn header_length_past_the_end() {
    let d = mini_with(|_| {});
    let f = d.path().join("model.safetensors");
    let mut b = std::fs::read(&f).unwrap();
    let doubled = b.len() as u64 * 2;
    b[..8].copy_from_slice(&doubled.to_le_bytes());
    std::fs::write(&f, b).unwrap();
    refuse(
        d.path(),
        &["model.safetensors", "header length", "past the end"],
    );
}

#[test]
fn overlapping_and_out_of_range_offsets() {
    let d = mini_with(|h| h["model.norm.weight"]["data_offsets"] = json!([0, 128]));
    refuse(
        d.path(),
        &["model.safetensors", "overlap", "model.embed_tokens.weight"],
    );
    let d = mini_with(|h| {
        h["lm_head.weight"]["data_offsets"] = json!([1u64 << 40, (1u64 << 40) + 1024])
    });
    refuse(d.path(), &["tensor `lm_head.weight`", "out of range"]);
}

#[test]
fn unknown_dtype_and_shape_mismatch() {
    let d = mini_with(|h| h["model.norm.weight"]["dtype"] = json!("F12"));
    refuse(
        d.path(),
        &["tensor `model.norm.weight`", "unknown dtype `F12`"],
    );
    let d = mini_with(|h| h["model.norm.weight"]["shape"] = json!([33]));
    refuse(
        d.path(),
        &["tensor `model.norm.weight`", "needs 132 bytes", "hold 128"],
    );
}

#[test]
fn missing_config_json() {
    let d = mini_with(|_| {});
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    refuse(d.path(), &["config.json", "missing"]);
}

#[test]
fn unsupported_architecture_is_named() {
    let d = mini_with(|_| {});
    let mut c = mini_config();
    c["architectures"] = json!(["GPT2LMHeadModel"]);
    std::fs::write(d.path().join("config.json"), c.to_string()).unwrap();
    refuse(
        d.path(),
        &[
            "`GPT2LMHeadModel` is not supported",
            "LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM, Qwen2MoeForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM, Phi3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration",
        ],
    );
}

#[test]
fn rope_scaling_is_refused_by_name() {
    // Each kind kiln cannot carry, and a llama3 scaling missing a value it needs.
    for (rope, message) in [
        (
            json!({"rope_type": "dynamic", "factor": 2.0}),
            "`rope_scaling.rope_type = dynamic` is not supported for `LlamaForCausalLM`",
        ),
        (
            json!({"type": "longrope", "factor": 8.0}),
            "`rope_scaling.type = longrope` is not supported for `LlamaForCausalLM`",
        ),
        (
            json!({"rope_type": "llama3", "factor": 8.0}),
            "`rope_scaling.low_freq_factor` is missing (llama3 RoPE scaling needs it)",
        ),
        (
            json!({"rope_type": "linear", "factor": -1.0}),
            "`rope_scaling.factor` is -1: it must be a positive number",
        ),
    ] {
        let d = mini_with(|_| {});
        let mut c = mini_config();
        c["rope_scaling"] = rope;
        std::fs::write(d.path().join("config.json"), c.to_string()).unwrap();
        refuse(d.path(), &["config.json", message]);
    }
}

#[test]
fn tensor_named_in_shard_index_but_absent() {
    let d = mini_with(|_| {});
    std::fs::rename(
        d.path().join("model.safetensors"),
        d.path().join("model-00001-of-00001.safetensors"),
    )
    .unwrap();
    let mut map = serde_json::Map::new();
    for t in mini_tensors() {
        map.insert(t.name, json!("model-00001-of-00001.safetensors"));
    }
    map.insert(
        "model.layers.0.mlp.extra.weight".into(),
        json!("model-00001-of-00001.safetensors"),
    );
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        json!({"weight_map": map}).to_string(),
    )
    .unwrap();
    refuse(
        d.path(),
        &[
            "model-00001-of-00001.safetensors",
            "tensor `model.layers.0.mlp.extra.weight`",
            "absent",
        ],
    );
}

fn gguf_header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

fn gguf_file(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.gguf");
    std::fs::write(&p, bytes).unwrap();
    (d, p)
}

#[test]
fn hostile_gguf_headers() {
    let (_d, p) = gguf_file(b"GGUX\x03\0\0\0");
    refuse(&p, &["m.gguf", "bad magic"]);
    let (_d, p) = gguf_file(&gguf_header(7, 0, 0));
    refuse(&p, &["m.gguf", "unknown GGUF version 7"]);
    let (_d, p) = gguf_file(&gguf_header(3, 1 << 40, 1 << 40));
    refuse(&p, &["m.gguf", "more than the file's"]);
    // One tensor of type 99 (no such ggml type).
    let mut b = gguf_header(3, 1, 0);
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(b"w");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&32u64.to_le_bytes());
    b.extend_from_slice(&99u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.resize(256, 0);
    let (_d, p) = gguf_file(&b);
    refuse(&p, &["m.gguf", "tensor `w`", "unknown tensor type 99"]);
}

#[test]
fn nonfinite_weights_are_refused_unless_allowed() {
    let mut t = mini_tensors();
    let bad = t
        .iter_mut()
        .find(|t| t.name == "model.layers.0.mlp.up_proj.weight")
        .unwrap();
    bad.data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    bad.data[8..12].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let d = tempfile::tempdir().unwrap();
    write_mini(d.path(), &t, |_| {});
    refuse(
        d.path(),
        &[
            "tensor `model.layers.0.mlp.up_proj.weight`",
            "2 non-finite",
            "--allow-nonfinite",
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("m.gguf");
    let r = run(&[
        "convert",
        s(d.path()),
        "-t",
        "f16",
        "-o",
        s(&target),
        "--allow-nonfinite",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(target.exists());
}

#[test]
fn output_directory_missing_and_output_equal_to_input() {
    let d = mini_with(|_| {});
    // A missing output directory is created (as `kiln build` does).
    let root = tempfile::tempdir().unwrap();
    let nested = root.path().join("new-dir/m.gguf");
    let r = run(&["convert", s(d.path()), "-t", "q8_0", "-o", s(&nested)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(nested.is_file());

    let out = tempfile::tempdir().unwrap();
    let g = out.path().join("m.gguf");
    assert_eq!(
        run(&["convert", s(d.path()), "-t", "f32", "-o", s(&g)]).code,
        0
    );
    let before = std::fs::read(&g).unwrap();
    let r = run(&["convert", s(&g), "-t", "q8_0", "-o", s(&g)]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("output path is the input"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(&g).unwrap(), before, "input untouched");
    assert_eq!(listing(out.path()), vec!["m.gguf"]);
}

#[test]
fn usage_errors_exit_2() {
    let r = run(&["convert", "x", "--type", "q9_9", "-o", "y.gguf"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("unknown llama.cpp recipe `q9_9`"),
        "{}",
        r.stderr
    );
    let r = run(&["convert", "x", "--type", "q8_0"]);
    assert_eq!(r.code, 2, "-o is required without --dry-run");
}
