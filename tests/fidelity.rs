//! Config fidelity (issue 15), as a user meets it: a config.json that
//! contradicts its tensors, holds integers no GGUF field can carry, or heads
//! that do not divide is refused with one `error:` line naming the field,
//! the tensor and both values, exit 2, nothing written; a field a family
//! refuses is refused by name; what the checkpoint lacks (tokenizer or
//! generation config) or holds that kiln cannot account for is a warning;
//! `kiln estimate` from a config alone counts the family's real tensors.

use std::path::Path;

use serde_json::{json, Value};

use crate::common::*;

/// A copy of the committed fixture `name` with config.json rewritten by
/// `fix` and the files named in `drop` removed.
fn fixture_copy(name: &str, drop: &[&str], fix: impl Fn(&mut Value)) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        let file = e.file_name();
        if !drop.contains(&file.to_string_lossy().as_ref()) {
            std::fs::copy(e.path(), d.path().join(&file)).unwrap();
        }
    }
    let path = d.path().join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    fix(&mut c);
    std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    d
}

/// Convert `model` to Q8_0 and assert the refusal: exit 2, one `error:`
/// line holding config.json and every needle, nothing written.
fn refused(model: &Path, needles: &[&str]) {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("out.gguf");
    let r = run(&["convert", s(model), "-t", "q8_0", "-o", s(&target)]);
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one line, got: {}", r.stderr);
    assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
    for n in std::iter::once(&"config.json").chain(needles) {
        assert!(r.stderr.contains(n), "`{n}` not in: {}", r.stderr);
    }
    assert!(
        listing(out.path()).is_empty(),
        "left behind: {:?}",
        listing(out.path())
    );
}

/// The three contradictions, on tiny-llama (hidden 256, two layers,
/// 2 KV heads of 64: a 128-row k_proj).
#[test]
fn config_contradicting_the_tensors_is_refused_with_both_values() {
    for (field, value, needle) in [
        (
            "hidden_size",
            json!(512),
            "`hidden_size` is 512 but tensor `lm_head.weight` (shape [512, 256]) has 256",
        ),
        (
            "num_hidden_layers",
            json!(3),
            "`num_hidden_layers` is 3 but the checkpoint's tensors hold 2 layer(s)",
        ),
        (
            "num_key_value_heads",
            json!(4),
            "`num_key_value_heads x head_dim (4 x 64)` is 256 but tensor `model.layers.0.self_attn.k_proj.weight` (shape [128, 256]) has 128",
        ),
        (
            "intermediate_size",
            json!(512),
            "`intermediate_size` is 512 but tensor `model.layers.0.mlp.down_proj.weight` (shape [256, 704]) has 704",
        ),
        (
            "vocab_size",
            json!(1024),
            "`vocab_size` is 1024 but tensor `lm_head.weight` (shape [512, 256]) has 512",
        ),
        (
            "head_dim",
            json!(32),
            "`num_key_value_heads x head_dim (2 x 32)` is 64 but tensor `model.layers.0.self_attn.k_proj.weight` (shape [128, 256]) has 128",
        ),
    ] {
        let d = fixture_copy("tiny-llama", &[], |c| c[field] = value.clone());
        refused(d.path(), &[needle]);
    }
}

/// Qwen3's head_dim is its own: stated wrongly, the q/k norms contradict it.
#[test]
fn qwen3_head_dim_is_checked_against_the_q_k_norms() {
    let d = fixture_copy("tiny-qwen3", &[], |c| c["head_dim"] = json!(32));
    refused(
        d.path(),
        &["`head_dim` is 32 but tensor `model.layers.0.self_attn.k_norm.weight` (shape [64]) has 64"],
    );
    let d = fixture_copy("tiny-qwen3", &[], |c| c["num_hidden_layers"] = json!(1));
    refused(
        d.path(),
        &["`num_hidden_layers` is 1 but tensor `model.layers.1."],
    );
}

#[test]
fn out_of_range_integers_and_heads_not_dividing_are_refused() {
    for (fx, field, value, needle) in [
        (
            "tiny-qwen3",
            "max_position_embeddings",
            json!(1u64 << 32),
            "`max_position_embeddings` is 4294967296, above kiln's cap of 4294967295 (MAX_CONTEXT)",
        ),
        (
            "tiny-qwen3",
            "head_dim",
            json!(1u64 << 40),
            "`head_dim` is 1099511627776, above kiln's cap of 16384 (MAX_HEAD_DIM)",
        ),
        (
            "tiny-qwen3",
            "num_key_value_heads",
            json!(3),
            "`num_key_value_heads` is 3: must divide `num_attention_heads` (4)",
        ),
        (
            "tiny-llama",
            "num_attention_heads",
            json!(3),
            "`num_key_value_heads` is 2: must divide `num_attention_heads` (3)",
        ),
        (
            "tiny-qwen3",
            "intermediate_size",
            json!(-352),
            "`intermediate_size` is not a non-negative integer",
        ),
    ] {
        let d = fixture_copy(fx, &[], |c| c[field] = value.clone());
        refused(d.path(), &[needle]);
    }
}

#[test]
fn fields_qwen3_does_not_carry_are_refused_by_name() {
    for (field, value, needle) in [
        (
            "attention_bias",
            json!(true),
            "`attention_bias` (true) is not supported for Qwen3ForCausalLM yet",
        ),
        (
            "rope_scaling",
            json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}),
            "`rope_scaling` (type yarn) is not supported for Qwen3ForCausalLM yet",
        ),
        // transformers v5 writes the same scaling in `rope_parameters`.
        (
            "rope_parameters",
            json!({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}),
            "`rope_parameters` (type yarn) is not supported for Qwen3ForCausalLM yet",
        ),
        (
            "use_sliding_window",
            json!(true),
            "`use_sliding_window` (true) is not supported for Qwen3ForCausalLM yet",
        ),
        (
            "hidden_act",
            json!("gelu"),
            "`hidden_act` (\"gelu\"; kiln carries silu) is not supported for Qwen3ForCausalLM yet",
        ),
    ] {
        let d = fixture_copy("tiny-qwen3", &[], |c| c[field] = value.clone());
        refused(d.path(), &[needle]);
    }
    let d = fixture_copy("tiny-llama", &[], |c| c["mlp_bias"] = json!(true));
    refused(
        d.path(),
        &["`mlp_bias` (true) is not supported for LlamaForCausalLM yet"],
    );
}

/// What the artifact lacks is said, once each, and the file is still written.
#[test]
fn missing_tokenizer_and_generation_configs_and_unknown_fields_are_warnings() {
    let d = fixture_copy(
        "tiny-qwen3",
        &["tokenizer_config.json", "generation_config.json"],
        |c| c["layer_norm_type"] = json!("nonparametric"),
    );
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("out.gguf");
    let r = run(&["convert", s(d.path()), "-t", "q8_0", "-o", s(&target)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let warnings: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 3, "{}", r.stderr);
    assert!(warnings[0].contains("no tokenizer_config.json: the output has no chat template"));
    assert!(warnings[1].contains(
        "no generation_config.json: the output lacks the checkpoint's generation defaults"
    ));
    assert!(warnings[2].contains(
        "config.json field(s) `layer_norm_type` are unknown to kiln for Qwen3ForCausalLM"
    ));
    assert!(target.exists());
    // The committed fixtures have everything: no warning.
    let target = out.path().join("clean.gguf");
    let r = run(&[
        "convert",
        s(&fixture("tiny-qwen3")),
        "-t",
        "q8_0",
        "-o",
        s(&target),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("warning:"), "{}", r.stderr);
}

/// The parameters `kiln estimate MODEL` counts.
fn estimate_params(model: &Path) -> u64 {
    let r = run(&["estimate", s(model), "-T", "h100-sxm", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v["params"].as_u64().unwrap()
}

/// Elements of every tensor in a fixture's safetensors header.
fn checkpoint_params(name: &str) -> u64 {
    let bytes = std::fs::read(fixture(name).join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| {
            v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .product::<u64>()
        })
        .sum()
}

/// From config.json alone, each family's real tensor list: tied (qwen2,
/// qwen3) and untied (llama, mistral) heads, Qwen3's q/k norms and its own
/// head_dim; and a published Qwen3-0.6B config by hand.
#[test]
fn estimate_from_a_config_alone_counts_the_familys_tensors() {
    for fx in ["tiny-llama", "tiny-qwen2", "tiny-llama-spm", "tiny-qwen3"] {
        let from_config = estimate_params(&fixture(fx).join("config.json"));
        assert_eq!(from_config, checkpoint_params(fx), "{fx}");
    }
    // Qwen3-0.6B: 28 layers of hidden 1024, 16 heads x head_dim 128 (2048
    // wide, not 1024), 8 KV heads, FFN 3072, tied 151936 x 1024 embedding:
    // per layer 2048x1024 x 2 + 1024x1024 x 2 + 3 x 3072x1024 + norms
    // (2 x 1024 + 2 x 128) = 15,730,944; x 28 + 155,582,464 + 1024.
    let q = repo().join("tests/data/qwen3-0.6b");
    assert_eq!(estimate_params(&q), 596_049_920);
    let r = run(&["estimate", s(&q), "-T", "h100-sxm", "--json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        v["weights_counted_from"]
            .as_str()
            .unwrap()
            .ends_with("(qwen3 tensors from config.json)"),
        "{v}"
    );
    // Untied, the head adds its 151936 x 1024.
    let d = tempfile::tempdir().unwrap();
    let mut c: Value =
        serde_json::from_slice(&std::fs::read(q.join("config.json")).unwrap()).unwrap();
    c["tie_word_embeddings"] = json!(false);
    std::fs::write(d.path().join("config.json"), c.to_string()).unwrap();
    assert_eq!(estimate_params(d.path()), 596_049_920 + 155_582_464);
}
