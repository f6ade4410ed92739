//! Helpers shared by the integration tests: running the binary, building
//! small hand-made checkpoints (valid or deliberately broken), and reading
//! the GGUF files kiln writes.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;

pub fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env("NO_COLOR", "1");
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(args: &[&str]) -> Run {
    run_cmd(kiln().args(args))
}

pub fn run_cmd(c: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().expect("kiln runs");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// What a user sees, for snapshots: exit code, stdout and stderr.
pub fn snap(args: &[&str]) -> String {
    let r = run(args);
    format!(
        "exit code: {}\n----- stdout -----\n{}----- stderr -----\n{}",
        r.code, r.stdout, r.stderr
    )
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("fixtures").join(name)
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 test paths")
}

/// Files in `dir` (names), sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// One tensor to put in a hand-built safetensors file.
#[derive(Clone)]
pub struct StTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

pub fn f32_tensor(name: &str, shape: &[usize], f: impl Fn(usize) -> f32) -> StTensor {
    let n: usize = shape.iter().product();
    StTensor {
        name: name.into(),
        dtype: "F32".into(),
        shape: shape.to_vec(),
        data: (0..n).flat_map(|i| f(i).to_le_bytes()).collect(),
    }
}

/// Serialize tensors as safetensors; `header_fix` may rewrite the JSON header.
pub fn safetensors_bytes(
    tensors: &[StTensor],
    header_fix: impl Fn(&mut serde_json::Value),
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for t in tensors {
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [off, off + t.data.len()]}),
        );
        off += t.data.len();
    }
    let mut header = serde_json::Value::Object(header);
    header_fix(&mut header);
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    out
}

/// A minimal llama checkpoint: hidden 32, 1 layer, 2 heads (1 KV), FFN 64,
/// vocab 8, byte-level BPE tokenizer with 8 tokens.
pub fn mini_tensors() -> Vec<StTensor> {
    let w = |name: &str, shape: &[usize]| {
        f32_tensor(name, shape, |i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
    };
    vec![
        w("model.embed_tokens.weight", &[8, 32]),
        w("model.layers.0.input_layernorm.weight", &[32]),
        w("model.layers.0.self_attn.q_proj.weight", &[32, 32]),
        w("model.layers.0.self_attn.k_proj.weight", &[16, 32]),
        w("model.layers.0.self_attn.v_proj.weight", &[16, 32]),
        w("model.layers.0.self_attn.o_proj.weight", &[32, 32]),
        w("model.layers.0.post_attention_layernorm.weight", &[32]),
        w("model.layers.0.mlp.gate_proj.weight", &[64, 32]),
        w("model.layers.0.mlp.up_proj.weight", &[64, 32]),
        w("model.layers.0.mlp.down_proj.weight", &[32, 64]),
        w("model.norm.weight", &[32]),
        w("lm_head.weight", &[8, 32]),
    ]
}

pub fn mini_config() -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 8,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false
    })
}

pub fn mini_tokenizer() -> serde_json::Value {
    json!({
        "version": "1.0",
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "special": true, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": {"<|endoftext|>": 0, "a": 1, "b": 2, "c": 3, "Ġ": 4, "ab": 5, "Ġa": 6, "abc": 7}, "merges": ["a b", "Ġ a", "ab c"]}
    })
}

/// Write a mini checkpoint directory into `dir`.
pub fn write_mini(dir: &Path, tensors: &[StTensor], header_fix: impl Fn(&mut serde_json::Value)) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&mini_config()).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_vec_pretty(&mini_tokenizer()).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_vec_pretty(
            &json!({"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}),
        )
        .unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"bos_token_id": 0, "eos_token_id": 0}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes(tensors, header_fix),
    )
    .unwrap();
}

/// A minimal GGUF reader for tests: metadata keys and tensor (name, type, data).
pub struct TestGguf {
    pub keys: Vec<String>,
    pub tensors: Vec<(String, u32, Vec<u64>, Vec<u8>)>,
}

pub fn read_gguf(path: &Path) -> TestGguf {
    let bytes = std::fs::read(path).unwrap();
    let g = formats::gguf::parse(path, &bytes).unwrap();
    TestGguf {
        keys: g.metadata.0.iter().map(|(k, _)| k.clone()).collect(),
        tensors: g
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.ty.id,
                    t.ne.clone(),
                    bytes[t.offset as usize..(t.offset + t.bytes) as usize].to_vec(),
                )
            })
            .collect(),
    }
}
