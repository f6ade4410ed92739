//! Conversions end to end: every output type on the fixtures, determinism
//! across runs and thread counts, the q/k permutation, sharded inputs,
//! GGUF inputs, fallbacks, and interruption leaving nothing behind.

use std::path::{Path, PathBuf};

use crate::common::*;

const TYPES: [&str; 8] = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"];

fn convert(model: &Path, ty: &str, out: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["convert", s(model), "--type", ty, "-o", s(out), "--quiet"];
    args.extend_from_slice(extra);
    run(&args)
}

fn tensor<'a>(g: &'a TestGguf, name: &str) -> &'a (String, u32, Vec<u64>, Vec<u8>) {
    g.tensors
        .iter()
        .find(|t| t.0 == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
}

#[test]
fn every_type_on_every_fixture() {
    let out = tempfile::tempdir().unwrap();
    for fx in ["tiny-llama", "tiny-qwen2", "tiny-llama-spm"] {
        for ty in TYPES {
            let path = out.path().join(format!("{fx}.{ty}.gguf"));
            let r = convert(&fixture(fx), ty, &path, &["--pure"]);
            assert_eq!(r.code, 0, "{fx} {ty}: {}", r.stderr);
            let g = read_gguf(&path);
            let want_id = ty.parse::<quant::GgmlType>().unwrap().id();
            for (name, id, ne, _) in &g.tensors {
                if ne.len() == 1 {
                    assert_eq!(*id, 0, "{fx} {ty}: 1-D {name} stays F32");
                } else {
                    assert_eq!(*id, want_id, "{fx} {ty}: {name}");
                }
            }
            for key in [
                "general.architecture",
                "general.file_type",
                "general.quantization_version",
                "tokenizer.ggml.model",
                "tokenizer.ggml.tokens",
                "tokenizer.ggml.token_type",
            ] {
                assert!(g.keys.iter().any(|k| k == key), "{fx} {ty}: missing {key}");
            }
        }
    }
}

#[test]
fn recipes_mix_types_as_llama_cpp_does() {
    // Q4_0 as llama-quantize: output.weight in Q6_K, the rest Q4_0 (--pure: all Q4_0).
    let out = tempfile::tempdir().unwrap();
    let p = out.path().join("q.gguf");
    assert_eq!(convert(&fixture("tiny-llama"), "q4_0", &p, &[]).code, 0);
    let g = read_gguf(&p);
    assert_eq!(tensor(&g, "output.weight").1, quant::GgmlType::Q6K.id());
    assert_eq!(
        tensor(&g, "blk.0.attn_q.weight").1,
        quant::GgmlType::Q4_0.id()
    );
    // Overrides: first match wins; explicit output and embedding types.
    let r = convert(
        &fixture("tiny-llama"),
        "Q4_K_M",
        &p,
        &[
            "--tensor-type",
            "attn_q=q8_0",
            "--tensor-type",
            "attn=q5_0",
            "--output-tensor-type",
            "f16",
            "--token-embedding-type",
            "q8_0",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let g = read_gguf(&p);
    assert_eq!(
        tensor(&g, "blk.1.attn_q.weight").1,
        quant::GgmlType::Q8_0.id()
    );
    assert_eq!(
        tensor(&g, "blk.1.attn_k.weight").1,
        quant::GgmlType::Q5_0.id()
    );
    assert_eq!(tensor(&g, "output.weight").1, quant::GgmlType::F16.id());
    assert_eq!(
        tensor(&g, "token_embd.weight").1,
        quant::GgmlType::Q8_0.id()
    );
    // ffn_down rows are 704 long: Q4_K/Q6_K fall back as llama.cpp does.
    let down = tensor(&g, "blk.0.ffn_down.weight").1;
    assert!(
        down == quant::GgmlType::Q5_0.id() || down == quant::GgmlType::Q8_0.id(),
        "{down}"
    );
}

#[test]
fn output_is_identical_across_runs_and_thread_counts() {
    let out = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, threads) in ["1", "2", "2"].iter().enumerate() {
        let p = out.path().join(format!("{i}.gguf"));
        let r = run_cmd(kiln().env("RAYON_NUM_THREADS", threads).args([
            "convert",
            s(&fixture("tiny-llama")),
            "-t",
            "q4_1",
            "-o",
            s(&p),
            "-q",
        ]));
        assert_eq!(r.code, 0, "{}", r.stderr);
        files.push(std::fs::read(&p).unwrap());
    }
    assert_eq!(files[0], files[1]);
    assert_eq!(files[1], files[2]);
}

fn bf16_rows(dir: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let h = formats::safetensors::parse(Path::new("model.safetensors"), &bytes).unwrap();
    let e = h.entries.iter().find(|e| e.name == name).unwrap();
    assert_eq!(e.dtype, "BF16");
    let v = bytes[e.start as usize..e.end as usize]
        .chunks_exact(2)
        .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
        .collect();
    (e.shape.clone(), v)
}

#[test]
fn f32_output_is_the_source_with_q_and_k_permuted() {
    let out = tempfile::tempdir().unwrap();
    let p = out.path().join("f32.gguf");
    assert_eq!(convert(&fixture("tiny-llama"), "f32", &p, &[]).code, 0);
    let g = read_gguf(&p);
    let as_f32 = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    // Unpermuted tensor: identical.
    let (_, v) = bf16_rows(
        &fixture("tiny-llama"),
        "model.layers.1.self_attn.v_proj.weight",
    );
    assert_eq!(as_f32(&tensor(&g, "blk.1.attn_v.weight").3), v);
    // q: 4 heads; k: 2 KV heads. Row r of head h in ggml order interleaves the
    // two rotate-half halves: out[h][2i + j] = src[h][j * half + i].
    for (hf, gg, heads) in [
        (
            "model.layers.0.self_attn.q_proj.weight",
            "blk.0.attn_q.weight",
            4usize,
        ),
        (
            "model.layers.0.self_attn.k_proj.weight",
            "blk.0.attn_k.weight",
            2,
        ),
    ] {
        let (shape, src) = bf16_rows(&fixture("tiny-llama"), hf);
        let (rows, cols) = (shape[0], shape[1]);
        let half = rows / heads / 2;
        let got = as_f32(&tensor(&g, gg).3);
        for h in 0..heads {
            for i in 0..half {
                for j in 0..2 {
                    let out_row = h * 2 * half + 2 * i + j;
                    let src_row = h * 2 * half + j * half + i;
                    assert_eq!(
                        got[out_row * cols..(out_row + 1) * cols],
                        src[src_row * cols..(src_row + 1) * cols],
                        "{gg} row {out_row}"
                    );
                }
            }
        }
    }
}

#[test]
fn qwen2_keeps_biases_unpermuted_and_ties_embeddings() {
    let out = tempfile::tempdir().unwrap();
    let p = out.path().join("q.gguf");
    assert_eq!(convert(&fixture("tiny-qwen2"), "q8_0", &p, &[]).code, 0);
    let g = read_gguf(&p);
    assert!(g
        .tensors
        .iter()
        .any(|t| t.0 == "blk.0.attn_q.bias" && t.1 == 0));
    assert!(
        !g.tensors.iter().any(|t| t.0 == "output.weight"),
        "tied: no output.weight"
    );
    assert!(g.keys.iter().any(|k| k == "qwen2.rope.freq_base"));
}

#[test]
fn sharded_checkpoint_gives_the_same_file() {
    let d = tempfile::tempdir().unwrap();
    let sharded = d.path().join("sharded");
    let single = d.path().join("tiny-llama");
    fixtures::write_sharded_tiny_llama(&sharded).unwrap();
    assert!(sharded.join("model.safetensors.index.json").exists());
    // Same directory name so general.name matches.
    let copy = d.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::rename(&sharded, copy.join("tiny-llama")).unwrap();
    let a = d.path().join("a.gguf");
    let b = d.path().join("b.gguf");
    assert_eq!(convert(&copy.join("tiny-llama"), "q5_1", &a, &[]).code, 0);
    let _ = single;
    assert_eq!(convert(&fixture("tiny-llama"), "q5_1", &b, &[]).code, 0);
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
}

#[test]
fn gguf_input_round_trips() {
    let out = tempfile::tempdir().unwrap();
    let f32 = out.path().join("f32.gguf");
    let direct = out.path().join("direct.gguf");
    let via = out.path().join("via.gguf");
    assert_eq!(convert(&fixture("tiny-llama"), "f32", &f32, &[]).code, 0);
    assert_eq!(
        convert(&fixture("tiny-llama"), "q8_0", &direct, &[]).code,
        0
    );
    assert_eq!(convert(&f32, "q8_0", &via, &[]).code, 0);
    let (a, b) = (read_gguf(&direct), read_gguf(&via));
    assert_eq!(
        a.tensors, b.tensors,
        "same tensors, bytes and order from HF or from kiln's F32 GGUF"
    );
    assert_eq!(a.keys, b.keys);
    // A quantized input needs --allow-requantize to change type.
    let r = convert(&direct, "q4_0", &out.path().join("re.gguf"), &[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--allow-requantize"), "{}", r.stderr);
    assert_eq!(
        convert(
            &direct,
            "q4_0",
            &out.path().join("re.gguf"),
            &["--allow-requantize"]
        )
        .code,
        0
    );
}

#[test]
fn rows_the_block_does_not_divide_fall_back_to_f16_and_are_reported() {
    // FFN 48: down_proj rows are 48 long, not a multiple of 32.
    let d = tempfile::tempdir().unwrap();
    let mut t = mini_tensors();
    for x in &mut t {
        if x.name.contains("mlp.") {
            let shape = if x.name.contains("down") {
                vec![32, 48]
            } else {
                vec![48, 32]
            };
            *x = f32_tensor(&x.name, &shape, |i| (i % 13) as f32 / 13.0);
        }
    }
    write_mini(d.path(), &t, |_| {});
    let mut c = mini_config();
    c["intermediate_size"] = 48.into();
    std::fs::write(d.path().join("config.json"), c.to_string()).unwrap();
    let r = run(&["convert", s(d.path()), "-t", "q4_0", "--dry-run", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plan: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let down = plan["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "blk.0.ffn_down.weight")
        .unwrap();
    assert_eq!(down["type"], "f16");
    assert!(down["notes"][0]
        .as_str()
        .unwrap()
        .contains("not a multiple"));
    // The exact size in the plan is the size written.
    let out = tempfile::tempdir().unwrap();
    let p = out.path().join("m.gguf");
    let r = run(&["convert", s(d.path()), "-t", "q4_0", "-o", s(&p)]);
    assert_eq!(r.code, 0);
    assert!(
        r.stderr.contains("note: blk.0.ffn_down.weight"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::metadata(&p).unwrap().len(),
        plan["bytes"].as_u64().unwrap()
    );
}

#[test]
fn dry_run_size_is_exact_for_every_type() {
    let out = tempfile::tempdir().unwrap();
    for ty in TYPES {
        let r = run(&[
            "convert",
            s(&fixture("tiny-llama")),
            "-t",
            ty,
            "--dry-run",
            "--json",
        ]);
        assert_eq!(r.code, 0);
        let plan: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let p = out.path().join(format!("{ty}.gguf"));
        assert_eq!(convert(&fixture("tiny-llama"), ty, &p, &[]).code, 0);
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            plan["bytes"].as_u64().unwrap(),
            "{ty}"
        );
        assert!(!out.path().join("dry.gguf").exists());
    }
}

fn large_model(dir: &Path) -> PathBuf {
    let p = dir.join("large");
    let spec = fixtures::plan_large(300 << 20, fixtures::Dtype::F32);
    fixtures::write_large(&p, &spec, 2 << 30).unwrap();
    p
}

#[test]
fn interrupt_leaves_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let model = large_model(d.path());
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("big.gguf");
    let mut child = kiln()
        .env("RAYON_NUM_THREADS", "1")
        .args(["convert", s(&model), "-t", "q4_0", "-o", s(&target), "-q"])
        .spawn()
        .unwrap();
    // Wait until the temp file exists (the header is being written), then Ctrl-C.
    let t0 = std::time::Instant::now();
    while listing(out.path()).is_empty() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let started = listing(out.path());
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        started.iter().all(|f| f.ends_with(".kiln-tmp")),
        "{started:?}"
    );
    if status.code() == Some(0) {
        // Finished before the signal landed: the file must be complete.
        assert!(target.exists());
        return;
    }
    assert_eq!(status.code(), Some(130));
    assert!(
        listing(out.path()).is_empty(),
        "left behind: {:?}",
        listing(out.path())
    );
}
