//! Resource limits and value checks, as a user hits them: config values that
//! used to panic, exhaust memory, hang or be silently truncated (issue 11
//! items 5 to 10), each refused with one `error:` line naming the file, the
//! field, tensor or key, and the numbers, exit code 2, nothing written.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

/// Run `args` (an output path, if any, inside `out`), assert the refusal:
/// exit 2, one line holding every needle, nothing left in `out`.
fn refused(args: &[&str], out: &Path, needles: &[&str]) -> String {
    let r = run(args);
    assert_eq!(r.code, 2, "{args:?}: stderr: {}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one line, got: {}", r.stderr);
    assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
    for n in needles {
        assert!(r.stderr.contains(n), "`{n}` not in: {}", r.stderr);
    }
    assert!(listing(out).is_empty(), "left behind: {:?}", listing(out));
    r.stderr
}

/// Convert `model` and assert the refusal.
fn refuse_convert(model: &Path, needles: &[&str]) -> String {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("out.gguf");
    refused(
        &["convert", s(model), "-t", "q8_0", "-o", s(&target)],
        out.path(),
        needles,
    )
}

/// A mini checkpoint whose config.json is rewritten by `fix`.
fn mini_config_with(fix: impl Fn(&mut Value)) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write_mini(d.path(), &mini_tensors(), |_| {});
    let mut c = mini_config();
    fix(&mut c);
    std::fs::write(d.path().join("config.json"), c.to_string()).unwrap();
    d
}

/// A mini checkpoint with one tensor's shape replaced (data sized to match).
fn mini_with_shape(name: &str, shape: &[usize]) -> tempfile::TempDir {
    let mut t = mini_tensors();
    let i = t.iter().position(|t| t.name == name).unwrap();
    t[i] = f32_tensor(name, shape, |i| i as f32 * 0.01);
    let d = tempfile::tempdir().unwrap();
    write_mini(d.path(), &t, |_| {});
    d
}

const TWO_63: u64 = 1 << 63;

#[test]
fn huge_head_counts_and_vocab_sizes_are_refused_by_name_not_a_panic() {
    for (field, value, needles) in [
        (
            "num_key_value_heads",
            TWO_63,
            &["`num_key_value_heads` is 9223372036854775808", "MAX_HEADS"][..],
        ),
        (
            "num_attention_heads",
            TWO_63,
            &["`num_attention_heads` is 9223372036854775808", "MAX_HEADS"],
        ),
        (
            "vocab_size",
            1 << 62,
            &[
                "`vocab_size` is 4611686018427387904",
                "16777216 (MAX_VOCAB)",
            ],
        ),
        (
            "vocab_size",
            u64::MAX,
            &["`vocab_size` is 18446744073709551615", "MAX_VOCAB"],
        ),
    ] {
        let d = mini_config_with(|c| c[field] = json!(value));
        let mut all = vec!["config.json"];
        all.extend_from_slice(needles);
        refuse_convert(d.path(), &all);
    }
}

#[test]
fn vocab_size_is_checked_against_the_embedding_before_allocating() {
    // 512,001,536 tokens used to abort on a 12 GB allocation: above the cap.
    let d = mini_config_with(|c| c["vocab_size"] = json!(512_001_536));
    refuse_convert(
        d.path(),
        &[
            "config.json",
            "`vocab_size` is 512001536, above kiln's cap of 16777216 (MAX_VOCAB)",
        ],
    );
    // Under the cap, the embedding's rows decide (a million [PADn] tokens were written).
    let d = mini_config_with(|c| c["vocab_size"] = json!(1_000_000));
    refuse_convert(
        d.path(),
        &[
            "config.json",
            "`vocab_size` is 1000000 but tensor `model.embed_tokens.weight` (shape [8, 32]) has 8",
        ],
    );
}

#[test]
fn values_that_do_not_fit_gguf_u32_fields_are_refused_not_truncated() {
    for (field, value, needle) in [
        (
            "num_hidden_layers",
            (1u64 << 32) + 2,
            "`num_hidden_layers` is 4294967298, above kiln's cap of 4096 (MAX_LAYERS)",
        ),
        (
            "max_position_embeddings",
            TWO_63,
            "`max_position_embeddings` is 9223372036854775808, above kiln's cap of 4294967295 (MAX_CONTEXT)",
        ),
        (
            "hidden_size",
            1 << 40,
            "`hidden_size` is 1099511627776, above kiln's cap of 1048576 (MAX_DIM)",
        ),
    ] {
        let d = mini_config_with(|c| c[field] = json!(value));
        refuse_convert(d.path(), &["config.json", needle]);
    }
}

#[test]
fn invalid_config_values_are_refused() {
    for (field, value, needle) in [
        ("head_dim", json!(0), "`head_dim` is 0: must be positive"),
        (
            "num_key_value_heads",
            json!(4),
            "`num_key_value_heads` is 4: must divide `num_attention_heads` (2)",
        ),
        (
            "rope_theta",
            json!(-1.0),
            "`rope_theta` is -1: must be a positive finite number",
        ),
        (
            "rms_norm_eps",
            json!(0.0),
            "`rms_norm_eps` is 0: must be a positive finite number",
        ),
        (
            "rope_theta",
            json!(1e300),
            "`rope_theta` is inf: must be a positive finite number",
        ),
        (
            "hidden_size",
            json!(1.5),
            "`hidden_size` is not a non-negative integer",
        ),
    ] {
        let d = mini_config_with(|c| c[field] = value.clone());
        refuse_convert(d.path(), &["config.json", needle]);
    }
}

#[test]
fn every_dimension_the_config_states_is_checked_against_the_tensors() {
    // A 0-size dimension, and an lm_head of [0, 32].
    let d = mini_with_shape("lm_head.weight", &[0, 32]);
    refuse_convert(
        d.path(),
        &["`vocab_size` is 8 but tensor `lm_head.weight` (shape [0, 32]) has 0"],
    );
    let d = mini_with_shape("model.layers.0.input_layernorm.weight", &[0]);
    refuse_convert(
        d.path(),
        &["`hidden_size` is 32 but tensor `model.layers.0.input_layernorm.weight` (shape [0]) has 0"],
    );
    for (field, value, needle) in [
        (
            "hidden_size",
            json!(64),
            "`hidden_size` is 64 but tensor `model.embed_tokens.weight` (shape [8, 32]) has 32",
        ),
        (
            "num_hidden_layers",
            json!(2),
            "`num_hidden_layers` is 2 but the checkpoint's tensors hold 1 layer(s)",
        ),
        (
            "intermediate_size",
            json!(128),
            "`intermediate_size` is 128 but tensor `model.layers.0.mlp.gate_proj.weight` (shape [64, 32]) has 64",
        ),
        (
            "num_key_value_heads",
            json!(2),
            "`num_key_value_heads x head_dim (2 x 16)` is 32 but tensor `model.layers.0.self_attn.k_proj.weight` (shape [16, 32]) has 16",
        ),
    ] {
        let d = mini_config_with(|c| c[field] = value.clone());
        refuse_convert(d.path(), &["config.json", needle]);
    }
    let d = mini_config_with(|c| c["num_hidden_layers"] = json!(0));
    refuse_convert(d.path(), &["`num_hidden_layers` is 0: must be positive"]);
}

fn mini_with_tokenizer(fix: impl Fn(&mut Value)) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write_mini(d.path(), &mini_tensors(), |_| {});
    let mut t = mini_tokenizer();
    fix(&mut t);
    std::fs::write(d.path().join("tokenizer.json"), t.to_string()).unwrap();
    d
}

#[test]
fn broken_tokenizer_json_is_refused() {
    let d = mini_with_tokenizer(|t| {
        t["model"]["vocab"] = json!({});
        t["model"]["merges"] = json!([]);
        t["added_tokens"] = json!([]);
    });
    refuse_convert(d.path(), &["tokenizer.json", "0 tokens"]);
    for merge in ["abc", "a b c", "", " a"] {
        let d = mini_with_tokenizer(|t| t["model"]["merges"] = json!(["a b", merge]));
        refuse_convert(d.path(), &["tokenizer.json", "is neither \"a b\""]);
    }
    let d = mini_with_tokenizer(|t| t["model"]["vocab"]["zz"] = json!(3));
    refuse_convert(d.path(), &["tokenizer.json", "duplicate token id 3"]);
}

/// A SentencePiece `ModelProto` with these (piece, score, type) triples.
fn spm_model(pieces: &[(&str, f32, u8)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (piece, score, kind) in pieces {
        let mut p = vec![0x0a, piece.len() as u8];
        p.extend_from_slice(piece.as_bytes());
        p.push(0x15);
        p.extend_from_slice(&score.to_le_bytes());
        p.extend_from_slice(&[0x18, *kind]);
        b.push(0x0a);
        b.push(p.len() as u8);
        b.extend_from_slice(&p);
    }
    b
}

#[test]
fn broken_sentencepiece_pieces_are_refused() {
    for (pieces, needle) in [
        (
            &[("<unk>", 0.0, 2), ("a", -1.0, 99)][..],
            "piece 1 (`a`): type 99 is not a SentencePiece piece type (1 to 6)",
        ),
        (
            &[("<unk>", 0.0, 2), ("a", f32::NAN, 1)],
            "piece 1 (`a`): score NaN is not finite",
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        write_mini(d.path(), &mini_tensors(), |_| {});
        std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
        std::fs::write(d.path().join("tokenizer.model"), spm_model(pieces)).unwrap();
        refuse_convert(d.path(), &["tokenizer.model", needle]);
    }
    // The same model with valid pieces converts.
    let d = tempfile::tempdir().unwrap();
    write_mini(d.path(), &mini_tensors(), |_| {});
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    std::fs::write(
        d.path().join("tokenizer.model"),
        spm_model(&[("<unk>", 0.0, 2), ("a", -1.0, 1)]),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = run(&[
        "convert",
        s(d.path()),
        "-t",
        "f32",
        "-o",
        s(&out.path().join("m.gguf")),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// A legacy `.dat` imatrix (llama.cpp's binary form).
fn dat(entries: &[(&str, i32, &[f32])]) -> Vec<u8> {
    let mut b = (entries.len() as i32).to_le_bytes().to_vec();
    for (name, ncall, vals) in entries {
        b.extend_from_slice(&(name.len() as i32).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&ncall.to_le_bytes());
        b.extend_from_slice(&(vals.len() as i32).to_le_bytes());
        for v in *vals {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b
}

#[test]
fn dat_imatrix_with_zero_or_negative_counts_is_refused() {
    let d = tempfile::tempdir().unwrap();
    write_mini(d.path(), &mini_tensors(), |_| {});
    for ncall in [0, -3] {
        let im = d.path().join("im.dat");
        std::fs::write(&im, dat(&[("blk.0.attn_q.weight", ncall, &[1.0; 32])])).unwrap();
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("out.gguf");
        refused(
            &[
                "convert",
                s(d.path()),
                "-t",
                "q4_k_m",
                "--imatrix",
                s(&im),
                "-o",
                s(&target),
            ],
            out.path(),
            &[
                "im.dat",
                "tensor `blk.0.attn_q.weight`",
                &format!("call count of {ncall}"),
            ],
        );
    }
}

/// The mini checkpoint converted to an F32 GGUF in `dir`.
fn mini_gguf(dir: &Path, tensors: &[StTensor], extra: &[&str]) -> PathBuf {
    let src = dir.join("src");
    write_mini(&src, tensors, |_| {});
    let g = dir.join("mini.gguf");
    let mut args = vec!["convert", s(&src), "-t", "f32", "-o", s(&g)];
    args.extend_from_slice(extra);
    let r = run(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    g
}

#[test]
fn eval_weights_refuses_nothing_in_common_and_a_short_imatrix() {
    let d = tempfile::tempdir().unwrap();
    let g = mini_gguf(d.path(), &mini_tensors(), &[]);
    // A candidate with no tensor name in common used to print `snr_dB inf`.
    let other = d.path().join("other.safetensors");
    std::fs::write(
        &other,
        safetensors_bytes(
            &[f32_tensor("unrelated.weight", &[4, 4], |i| i as f32)],
            |_| {},
        ),
    )
    .unwrap();
    refused(
        &["eval", "--weights", s(&g), s(&other)],
        &d.path().join("none"),
        &[
            "no tensor of the same name and shape in both",
            "nothing to compare",
        ],
    );
    let im = d.path().join("short.dat");
    std::fs::write(&im, dat(&[("blk.0.attn_q.weight", 4, &[1.0; 16])])).unwrap();
    refused(
        &["eval", "--weights", s(&g), s(&g), "--imatrix", s(&im)],
        &d.path().join("none"),
        &[
            "short.dat",
            "tensor `blk.0.attn_q.weight`",
            "the importance matrix has 16 values for it, the tensor has 32 columns",
        ],
    );
}

#[test]
fn imatrix_refuses_nan_activations_at_collection() {
    let d = tempfile::tempdir().unwrap();
    let mut t = mini_tensors();
    let e = t
        .iter_mut()
        .find(|t| t.name == "model.embed_tokens.weight")
        .unwrap();
    *e = f32_tensor("model.embed_tokens.weight", &[8, 32], |_| f32::NAN);
    let g = mini_gguf(d.path(), &t, &["--allow-nonfinite"]);
    let text = d.path().join("t.txt");
    std::fs::write(&text, "abc ab a b c ".repeat(40)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("im.gguf");
    refused(
        &[
            "--quiet",
            "imatrix",
            s(&g),
            "--text",
            s(&text),
            "--ctx",
            "8",
            "-o",
            s(&target),
        ],
        out.path(),
        &[
            "mini.gguf",
            "tensor `blk.0.attn_",
            "non-finite input activation",
        ],
    );
}

#[test]
fn nonfinite_weights_name_the_input_file() {
    let mut t = mini_tensors();
    t[2].data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let d = tempfile::tempdir().unwrap();
    write_mini(d.path(), &t, |_| {});
    let e = refuse_convert(
        d.path(),
        &["model.safetensors: tensor `model.layers.0.self_attn.q_proj.weight`"],
    );
    assert!(!e.contains("out.gguf"), "{e}");
}

fn gguf_bytes(n_tensors: u64, kvs: &[(&str, u32, Vec<u8>)], tensors: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, ty, v) in kvs {
        b.extend_from_slice(&(k.len() as u64).to_le_bytes());
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(v);
    }
    b.extend_from_slice(tensors);
    b
}

fn string_value(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

#[test]
fn gguf_without_an_architecture_gets_its_own_message() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.gguf");
    std::fs::write(&p, gguf_bytes(0, &[], &[])).unwrap();
    refuse_convert(
        &p,
        &["m.gguf", "the GGUF has no `general.architecture` key"],
    );
    let kv = [("general.architecture", 8, string_value("llama"))];
    std::fs::write(&p, gguf_bytes(0, &kv, &[])).unwrap();
    refuse_convert(
        &p,
        &[
            "m.gguf",
            "`general.architecture` is `llama` but `llama.block_count`",
        ],
    );
}

#[test]
fn gguf_metadata_arrays_are_bounded() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("big.gguf");
    // 20M u8 elements in a 20 MB file used to take 650 MB in `inspect`.
    let n = 20_000_000u64;
    let mut v = 0u32.to_le_bytes().to_vec();
    v.extend_from_slice(&n.to_le_bytes());
    v.resize(v.len() + n as usize, 7);
    std::fs::write(&p, gguf_bytes(0, &[("big", 9, v)], &[])).unwrap();
    refused(
        &["inspect", s(&p)],
        &d.path().join("none"),
        &[
            "big.gguf",
            "key `big`: metadata array of 20000000 elements brings the file's array elements to 20000000, above kiln's cap of 2097152 (MAX_METADATA_ELEMENTS)",
        ],
    );
    // An array longer than the bytes present says so, with the numbers.
    let mut v = 4u32.to_le_bytes().to_vec();
    v.extend_from_slice(&1000u64.to_le_bytes());
    std::fs::write(&p, gguf_bytes(0, &[("short", 9, v)], &[])).unwrap();
    refused(
        &["inspect", s(&p)],
        &d.path().join("none"),
        &["key `short`: metadata array of 1000 elements needs at least 4000 bytes, more than the 0 bytes left"],
    );
}

#[test]
fn gguf_duplicate_checks_are_not_quadratic() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("many.gguf");
    // 200k keys (69 s before) and 200k zero-size tensors (98 s before).
    let n = 200_000usize;
    let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let kvs: Vec<(&str, u32, Vec<u8>)> = keys.iter().map(|k| (k.as_str(), 0, vec![1])).collect();
    let mut infos = Vec::new();
    for i in 0..n {
        let name = format!("t{i}");
        infos.extend_from_slice(&(name.len() as u64).to_le_bytes());
        infos.extend_from_slice(name.as_bytes());
        infos.extend_from_slice(&1u32.to_le_bytes());
        infos.extend_from_slice(&0u64.to_le_bytes());
        infos.extend_from_slice(&0u32.to_le_bytes());
        infos.extend_from_slice(&0u64.to_le_bytes());
    }
    std::fs::write(&p, gguf_bytes(n as u64, &kvs, &infos)).unwrap();
    let t0 = Instant::now();
    refuse_convert(&p, &["many.gguf", "no `general.architecture` key"]);
    let secs = t0.elapsed().as_secs_f64();
    assert!(
        secs < 20.0,
        "parsing 200k keys and tensors took {secs:.1} s"
    );
}

/// Run `args` with a deadline; a run past it is killed and fails the test.
fn run_within(args: &[&str], limit: Duration) -> Run {
    let mut child = kiln()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("{args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[cfg(unix)]
#[test]
fn a_fifo_input_is_refused_up_front() {
    let d = tempfile::tempdir().unwrap();
    write_mini(d.path(), &mini_tensors(), |_| {});
    let shard = d.path().join("model.safetensors");
    std::fs::remove_file(&shard).unwrap();
    let ok = std::process::Command::new("mkfifo")
        .arg(&shard)
        .status()
        .unwrap();
    assert!(ok.success());
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("m.gguf");
    let r = run_within(
        &["convert", s(d.path()), "-t", "q8_0", "-o", s(&target)],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("model.safetensors: a FIFO, not a regular file"),
        "{}",
        r.stderr
    );
    let r = run_within(&["inspect", s(&shard)], Duration::from_secs(30));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("a FIFO"), "{}", r.stderr);
    assert!(listing(out.path()).is_empty());
}

#[test]
fn names_with_control_characters_are_printed_escaped() {
    let evil = "x\u{1b}[31m\nerror: fake";
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("w.safetensors");
    std::fs::write(
        &f,
        safetensors_bytes(&[f32_tensor(evil, &[2, 2], |i| i as f32)], |_| {}),
    )
    .unwrap();
    let r = run(&["inspect", s(&f)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains('\u{1b}'), "{}", r.stdout);
    assert!(
        r.stdout.contains(r"x\u{1b}[31m\nerror: fake"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.lines().any(|l| l.starts_with("error: fake")));
    // In an error: still one line, escaped.
    let mut t = mini_tensors();
    t.push(f32_tensor(&format!("model.{evil}.weight"), &[2], |_| 0.0));
    let d = tempfile::tempdir().unwrap();
    write_mini(d.path(), &t, |_| {});
    let e = refuse_convert(
        d.path(),
        &[r"cannot map `model.x\u{1b}[31m\nerror: fake.weight`"],
    );
    assert!(!e.contains('\u{1b}'), "{e}");
}

#[test]
fn estimate_refuses_absurd_layers_and_token_counts() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("config.json");
    let mut c = mini_config();
    c["num_hidden_layers"] = json!(1u64 << 31);
    std::fs::write(&cfg, c.to_string()).unwrap();
    let none = d.path().join("none");
    refused(
        &["estimate", s(&cfg), "--target", "h100-sxm"],
        &none,
        &[
            "config.json",
            "`num_hidden_layers` is 2147483648, above kiln's cap of 4096 (MAX_LAYERS)",
        ],
    );
    c["num_hidden_layers"] = json!(1);
    std::fs::write(&cfg, c.to_string()).unwrap();
    let big = TWO_63.to_string();
    refused(
        &[
            "estimate",
            s(&cfg),
            "--target",
            "h100-sxm",
            "--prompt",
            &big,
            "--gen",
            &big,
        ],
        &none,
        &["--prompt 9223372036854775808 is above kiln's cap of 4294967295 tokens (MAX_CONTEXT)"],
    );
    refused(
        &[
            "estimate",
            s(&cfg),
            "--target",
            "h100-sxm",
            "--context",
            "1099511627776",
        ],
        &none,
        &["--context 1099511627776 is above kiln's cap"],
    );
    let half = (u32::MAX / 2 + 1).to_string();
    refused(
        &[
            "estimate",
            s(&cfg),
            "--target",
            "h100-sxm",
            "--prompt",
            &half,
            "--gen",
            &half,
        ],
        &none,
        &["--prompt 2147483648 + --gen 2147483648 is above kiln's cap"],
    );
}

/// The index of the first line of `stderr` that `pred` accepts.
fn line_index(stderr: &str, pred: impl Fn(&str) -> bool) -> Option<usize> {
    stderr.lines().position(pred)
}

#[test]
fn a_context_past_the_trained_one_warns_before_measuring_and_past_the_cap_is_refused() {
    // The fixture was trained for 512 tokens. stderr is not a terminal, so
    // each finished stage prints a line ("measuring: ... in ..."), and
    // status lines say what was done ("measured ... tensors").
    let text = repo().join("fixtures/text/pride-and-prejudice-ch1-17.txt");
    let model = fixture("tiny-llama");
    let r = run(&[
        "plan",
        s(&model),
        "--targets",
        "m2",
        "--context",
        "100000000",
        "--text",
        s(&text),
        "--chunks",
        "1",
        "--probe-chunks",
        "1",
        "--eval-chunks",
        "1",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let warned = line_index(&r.stderr, |l| {
        l.starts_with(
            "warning: --context 100,000,000 is above the 512 tokens the model was trained for",
        )
    })
    .unwrap_or_else(|| panic!("no warning: {}", r.stderr));
    let first_stage = line_index(&r.stderr, |l| {
        !l.starts_with("warning:") && l.contains(" in ")
    })
    .expect("stage lines");
    assert!(
        warned < first_stage,
        "the warning comes after work was done:\n{}",
        r.stderr
    );
    assert_eq!(
        r.stderr.matches("--context 100,000,000 is above").count(),
        1,
        "warned once: {}",
        r.stderr
    );

    // Past what a GGUF can state (and what KV arithmetic is held to):
    // refused before anything is opened or measured, for build and plan alike.
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("out");
    for args in [
        vec![
            "plan",
            s(&model),
            "--targets",
            "m2",
            "--context",
            "4294967296",
        ],
        vec![
            "build",
            s(&model),
            "--target",
            "m2",
            "-o",
            s(&target),
            "--context",
            "4294967296",
        ],
    ] {
        let r = run(&args);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert_eq!(
            r.stderr.trim_end(),
            "error: --context 4294967296 is above kiln's cap of 4294967295 tokens (MAX_CONTEXT)"
        );
    }
    let r = run(&[
        "plan",
        s(&model),
        "--targets",
        "m2",
        "--context",
        "3000000000",
        "--concurrency",
        "2",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("--context 3000000000 x --concurrency 2 KV cache slots is above kiln's cap"),
        "{}",
        r.stderr
    );
    assert!(listing(out.path()).is_empty());
}

#[test]
fn warnings_print_hostile_names_escaped() {
    let evil = "x\u{1b}[31m\nerror: fake";
    let d = tempfile::tempdir().unwrap();
    // A text too short for two windows warns, naming the file.
    let text = d.path().join(format!("{evil}.txt"));
    std::fs::write(&text, "It is a truth universally acknowledged.\n").unwrap();
    let plan = run(&[
        "plan",
        s(&fixture("tiny-llama")),
        "--targets",
        "m2",
        "--text",
        s(&text),
        "--ctx",
        "16",
        "--chunks",
        "1",
        "--probe-chunks",
        "1",
    ]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let escaped = r"x\u{1b}[31m\nerror: fake.txt fills only one window of 16 tokens";
    assert!(plan.stderr.contains(escaped), "{}", plan.stderr);
    // A profile file that replaces a built-in one is named in a warning.
    let toml = d.path().join(format!("{evil}.toml"));
    std::fs::copy(repo().join("targets/m2.toml"), &toml).unwrap();
    let r = run(&["targets", "--target-file", s(&toml)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(r"x\u{1b}[31m\nerror: fake.toml replaces the built-in profile `m2`"),
        "{}",
        r.stderr
    );
    for r in [&plan, &r] {
        assert!(!r.stderr.contains('\u{1b}'), "{}", r.stderr);
        assert!(
            !r.stderr.lines().any(|l| l.starts_with("error: fake")),
            "{}",
            r.stderr
        );
    }
}
