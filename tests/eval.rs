//! `kiln eval` and `kiln imatrix` end to end on the tiny fixtures: the JSON
//! keys CI reads, the accuracy gates failing and passing with exit codes and
//! messages, weight error of exact and quantized copies, usage errors, and an
//! importance matrix that kiln's own imatrix reader and `eval --imatrix` take.
//! (The forward pass itself is checked against a numpy reference in
//! tests/python/test_eval_forward.py.)

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;

fn text() -> PathBuf {
    repo().join("fixtures/text/pride-and-prejudice-ch1-17.txt")
}

/// A quick window setting for the tiny models.
const WIN: [&str; 4] = ["--ctx", "48", "--chunks", "2"];

fn converted(dir: &Path, fx: &str, ty: &str) -> PathBuf {
    let out = dir.join(format!("{fx}.{ty}.gguf"));
    let r = run(&[
        "convert",
        s(&fixture(fx)),
        "-t",
        ty,
        "-o",
        s(&out),
        "--quiet",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    out
}

fn eval_json(args: &[&str]) -> (Run, Value) {
    let r = run(args);
    let v = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
    (r, v)
}

fn text_args<'a>(orig: &'a str, cand: &'a str, t: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["eval", orig, cand, "--text", t];
    a.extend_from_slice(&WIN);
    a.extend_from_slice(extra);
    a
}

#[test]
fn text_report_has_the_keys_ci_reads() {
    let dir = tempfile::tempdir().unwrap();
    let q8 = converted(dir.path(), "tiny-llama", "q8_0");
    let fx = fixture("tiny-llama");
    let t = text();
    let (r, v) = eval_json(&text_args(s(&fx), s(&q8), s(&t), &["--json"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    for key in ["perplexity", "perplexity_stderr"] {
        assert!(v["original"][key].as_f64().unwrap() > 0.0, "original.{key}");
        assert!(
            v["candidate"][key].as_f64().unwrap() > 0.0,
            "candidate.{key}"
        );
    }
    let kld = v["kld"]["mean"].as_f64().unwrap();
    assert!(kld > 0.0 && kld < 0.05, "Q8_0 KLD {kld}");
    assert!(v["kld"]["p99"].as_f64().unwrap() >= kld);
    let top1 = v["top1_agreement"].as_f64().unwrap();
    assert!((0.8..=1.0).contains(&top1), "top-1 {top1}");
    assert_eq!(v["chunks"], 2);
    assert_eq!(v["scored"], 2 * (48 - 1 - 24));
}

#[test]
fn a_model_against_itself_has_zero_kld_and_full_agreement() {
    let fx = fixture("tiny-qwen2");
    let t = text();
    let (r, v) = eval_json(&text_args(
        s(&fx),
        s(&fx),
        s(&t),
        &[
            "--json",
            "--max-kld",
            "0",
            "--min-top1",
            "1",
            "--max-ppl-ratio",
            "1",
        ],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(v["kld"]["mean"], 0.0);
    assert_eq!(v["top1_agreement"], 1.0);
    assert_eq!(v["original"]["perplexity"], v["candidate"]["perplexity"]);
}

#[test]
fn gates_fail_with_exit_code_1_naming_the_gate_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let q4 = converted(dir.path(), "tiny-llama", "q4_0");
    let fx = fixture("tiny-llama");
    let t = text();
    // Generous gates pass.
    let r = run(&text_args(
        s(&fx),
        s(&q4),
        s(&t),
        &[
            "--max-kld",
            "100",
            "--min-top1",
            "0",
            "--max-ppl-ratio",
            "100",
        ],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("KL divergence"), "{}", r.stdout);
    // Each gate fails alone, with its name and the measured value. The tiny
    // random models pick the same top token after Q4_0 everywhere, so the top-1
    // gate is failed by an unrelated model that shares the vocabulary.
    let other = fixture("tiny-qwen2");
    for (cand, gate, value, says) in [
        (&q4, "--max-kld", "0", "--max-kld 0: mean KL divergence is "),
        (
            &other,
            "--min-top1",
            "0.5",
            "--min-top1 0.5: top-1 agreement is ",
        ),
        (
            &q4,
            "--max-ppl-ratio",
            "0.5",
            "--max-ppl-ratio 0.5: perplexity ratio is ",
        ),
    ] {
        let r = run(&text_args(s(&fx), s(cand), s(&t), &[gate, value]));
        assert_eq!(r.code, 1, "{gate}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{gate}: {}", r.stderr);
        // The report is still printed before the verdict.
        assert!(r.stdout.contains("perplexity"), "{}", r.stdout);
    }
    // Several failed gates are all named.
    let r = run(&text_args(
        s(&fx),
        s(&other),
        s(&t),
        &["--max-kld", "0", "--min-top1", "0.5", "--json"],
    ));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("--max-kld") && r.stderr.contains("--min-top1"),
        "{}",
        r.stderr
    );
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["kld"]["mean"].as_f64().unwrap() > 0.0);
    assert!(v["top1_agreement"].as_f64().unwrap() < 0.5);
}

#[test]
fn weight_error_orders_exact_q8_0_and_q4_0() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture("tiny-llama");
    let rel = |cand: &Path| -> Value {
        let (r, v) = eval_json(&["eval", "--weights", s(&fx), s(cand), "--json"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        v["weights"].clone()
    };
    let exact = rel(&converted(dir.path(), "tiny-llama", "bf16"));
    assert_eq!(exact["total"]["rmse"], 0.0);
    assert_eq!(exact["total"]["snr_db"], Value::Null);
    assert_eq!(exact["total"]["cosine"], 1.0);
    assert!(
        exact["notes"].as_array().unwrap().is_empty(),
        "{}",
        exact["notes"]
    );
    let q8 = rel(&converted(dir.path(), "tiny-llama", "q8_0"));
    let q4 = rel(&converted(dir.path(), "tiny-llama", "q4_0"));
    let r8 = q8["total"]["rel_frobenius"].as_f64().unwrap();
    let r4 = q4["total"]["rel_frobenius"].as_f64().unwrap();
    assert!(
        0.0 < r8 && r8 < 0.01 && r8 * 5.0 < r4 && r4 < 0.2,
        "q8_0 {r8}, q4_0 {r4}"
    );
    // Per tensor and per role, the sums are consistent: every tensor is listed once.
    assert_eq!(
        q4["tensors"].as_array().unwrap().len(),
        q4["total"]["tensors"].as_u64().unwrap() as usize
    );
    let roles: Vec<&str> = q4["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["role"].as_str().unwrap())
        .collect();
    for want in ["attn_q", "ffn_down", "embedding", "output", "norm"] {
        assert!(roles.contains(&want), "{roles:?}");
    }
    // The text form names the worst tensors.
    let r = run(&[
        "eval",
        "--weights",
        s(&fx),
        s(&converted(dir.path(), "tiny-llama", "q4_0")),
    ]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.contains("the 10 worst tensors") && r.stdout.contains("total"),
        "{}",
        r.stdout
    );
}

#[test]
fn usage_errors_are_exit_code_2() {
    let fx = fixture("tiny-llama");
    let t = text();
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "It is a truth universally acknowledged.").unwrap();
    for (args, says) in [
        (vec!["eval", s(&fx)], "nothing to evaluate"),
        (
            vec!["eval", "--weights", s(&fx)],
            "give ORIGINAL and CANDIDATE",
        ),
        (
            vec!["eval", s(&fx), s(&fx), "--max-kld", "1"],
            "measured on text",
        ),
        (
            vec!["eval", s(&fx), s(&fx), "--text", s(&t), "--min-top1", "95"],
            "between 0 and 1",
        ),
        (
            vec!["eval", s(&fx), "--text", s(&t), "--ctx", "100000"],
            "longer than",
        ),
        (
            vec!["eval", s(&fx), "--text", s(&short), "--ctx", "512"],
            "fewer than one window",
        ),
    ] {
        let r = run(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with("error: ") && r.stderr.contains(says),
            "{args:?}: {}",
            r.stderr
        );
    }
    // Different vocabularies cannot be compared on text.
    let r = run(&text_args(
        s(&fx),
        s(&fixture("tiny-llama-spm")),
        s(&t),
        &[],
    ));
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn imatrix_is_read_back_and_weights_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture("tiny-qwen2");
    let t = text();
    let im = dir.path().join("imatrix.gguf");
    let r = run(&[
        "imatrix",
        s(&fx),
        "--text",
        s(&t),
        "-o",
        s(&im),
        "--ctx",
        "48",
        "--chunks",
        "3",
        "--quiet",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = formats::imatrix::read(&im).unwrap();
    assert_eq!(m.chunk_count, 3);
    assert_eq!(m.chunk_size, 48);
    assert_eq!(m.datasets, vec![t.display().to_string()]);
    // 7 linear weights per block, 2 blocks; no output.weight by default.
    assert_eq!(
        m.entries.len(),
        14,
        "{:?}",
        m.entries.keys().collect::<Vec<_>>()
    );
    for (name, e) in &m.entries {
        assert!(name.starts_with("blk."), "{name}");
        assert_eq!(e.counts, vec![3 * 48], "{name}");
        assert!(e.sums.iter().all(|&v| v.is_finite() && v >= 0.0), "{name}");
    }
    let q = &m.entries["blk.0.attn_q.weight"];
    assert_eq!(
        q.sums, m.entries["blk.0.attn_k.weight"].sums,
        "q and k see the same input"
    );
    assert_eq!(m.entries["blk.1.ffn_down.weight"].sums.len(), 352);

    let q4 = converted(dir.path(), "tiny-qwen2", "q4_0");
    let (r, v) = eval_json(&[
        "eval",
        "--weights",
        s(&fx),
        s(&q4),
        "--imatrix",
        s(&im),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let w = &v["weights"];
    let t0 = w["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "blk.0.attn_q.weight")
        .unwrap();
    assert!(t0["weighted_rel_err"].as_f64().unwrap() > 0.0);
    let emb = w["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .unwrap();
    assert_eq!(
        emb["weighted_rel_err"],
        Value::Null,
        "no imatrix entry for token_embd"
    );

    // kiln's quantizers take it: every linear weight finds its importance
    // vector as llama-quantize looks it up, and Q4_0 with it has a lower
    // importance-weighted error than without it.
    let model = eval::open(&fx, &formats::LoadOptions::default()).unwrap();
    let imp = m.importance(&im).unwrap();
    let (mut with, mut without) = (0f64, 0f64);
    for name in m.entries.keys() {
        let node = model.need(name).unwrap();
        let w = formats::imatrix::for_tensor(&imp, name, &node.shape)
            .unwrap()
            .expect("an importance vector");
        let data = model.read_f32(node);
        let row = node.row_len();
        let ty = quant::GgmlType::Q4_0;
        for (imatrix, err) in [(Some(w), &mut with), (None, &mut without)] {
            let mut q = vec![0u8; ty.row_bytes(row).unwrap() * node.n_rows()];
            quant::quantize_rows(ty, &data, &mut q, row, imatrix);
            let mut back = vec![0f32; row];
            for (src, bytes) in data.chunks(row).zip(q.chunks(ty.row_bytes(row).unwrap())) {
                quant::dequantize_row(ty, bytes, &mut back);
                *err += src
                    .iter()
                    .zip(&back)
                    .zip(w)
                    .map(|((a, b), w)| (*w as f64) * ((a - b) as f64).powi(2))
                    .sum::<f64>();
            }
        }
    }
    assert!(
        with < without,
        "importance-weighted error with the imatrix {with} vs without {without}"
    );
    // And end to end: `kiln convert --imatrix` takes kiln's file, and the
    // result has the lower importance-weighted error.
    let q4i = dir.path().join("q4_0.imatrix.gguf");
    let r = run(&[
        "convert",
        s(&fx),
        "-t",
        "q4_0",
        "--imatrix",
        s(&im),
        "-o",
        s(&q4i),
        "-q",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let weighted = |cand: &Path| -> f64 {
        let (r, v) = eval_json(&[
            "eval",
            "--weights",
            s(&fx),
            s(cand),
            "--imatrix",
            s(&im),
            "--json",
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        v["weights"]["total"]["weighted_rel_err"].as_f64().unwrap()
    };
    let (e_with, e_without) = (weighted(&q4i), weighted(&q4));
    assert!(
        e_with < e_without,
        "convert --imatrix: {e_with} vs {e_without}"
    );

    // --process-output adds the output projection (of a model with one).
    let im2 = dir.path().join("imatrix2.gguf");
    let r = run(&[
        "imatrix",
        s(&fixture("tiny-llama")),
        "--text",
        s(&t),
        "-o",
        s(&im2),
        "--ctx",
        "48",
        "--chunks",
        "1",
        "--process-output",
        "-q",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(formats::imatrix::read(&im2)
        .unwrap()
        .entries
        .contains_key("output.weight"));
}

#[test]
fn per_token_file_lists_windows_and_scores() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pt.json");
    let fx = fixture("tiny-llama-spm");
    let t = text();
    let mut args = vec![
        "eval",
        s(&fx),
        "--text",
        s(&t),
        "--per-token",
        s(&out),
        "-q",
    ];
    args.extend_from_slice(&WIN);
    let r = run(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let wins = v["windows"].as_array().unwrap();
    assert_eq!(wins.len(), 2);
    // SentencePiece llama adds BOS: every window starts with it (id 1).
    for w in wins {
        assert_eq!(w.as_array().unwrap().len(), 48);
        assert_eq!(w[0], 1);
    }
    assert_eq!(v["scores"].as_array().unwrap().len(), 2 * 23);
}

/// What users see: help texts, a text report with a failed gate, a weight
/// report; times, rates and paths filtered.
#[test]
fn snapshots_of_what_users_see() {
    let dir = tempfile::tempdir().unwrap();
    let q4 = converted(dir.path(), "tiny-llama", "q4_0");
    let q8 = converted(dir.path(), "tiny-llama", "q8_0");
    let fx = fixture("tiny-llama");
    let t = text();
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r"\d+\.\d+s\b", "[TIME]");
    settings.add_filter(r"\d+ tokens/s", "[RATE] tokens/s");
    settings.add_filter(&repo().display().to_string().replace('.', r"\."), "[REPO]");
    settings.add_filter(
        &dir.path().display().to_string().replace('.', r"\."),
        "[TMP]",
    );
    settings.bind(|| {
        insta::assert_snapshot!("eval_help", snap(&["eval", "--help"]));
        insta::assert_snapshot!("imatrix_help", snap(&["imatrix", "--help"]));
        // Q8_0 is one type everywhere in llama.cpp's recipe too, so this does
        // not move with the recipe rules.
        insta::assert_snapshot!("eval_weights", snap(&["eval", "--weights", s(&fx), s(&q8)]));
    });
    // The forward pass is f32 (its last digits may vary with the CPU's vector
    // width): the text report's numbers are checked elsewhere, its form here.
    settings.add_filter(r"\b\d+\.\d{4,}\b", "[X]");
    settings.add_filter(r"\d+\.\d\d%", "[X]%");
    settings.bind(|| {
        insta::assert_snapshot!(
            "eval_text_gate_failed",
            snap(&text_args(
                s(&fx),
                s(&q4),
                s(&t),
                &["--max-kld", "0.000001"]
            ))
        );
    });
}

#[test]
fn windows_longer_than_the_trained_context_are_refused() {
    // tiny-llama states max_position_embeddings 512.
    let model = fixture("tiny-llama");
    let text = repo().join("fixtures/text/pride-and-prejudice-ch1-17.txt");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "eval",
            s(&model),
            s(&model),
            "--text",
            s(&text),
            "--ctx",
            "1024",
        ],
        vec![
            "imatrix",
            s(&model),
            "--text",
            s(&text),
            "--ctx",
            "1024",
            "-o",
            s(&out),
        ],
        vec![
            "build",
            s(&model),
            "--target",
            "h100-sxm",
            "--text",
            s(&text),
            "--ctx",
            "1024",
            "-o",
            s(&out),
        ],
    ];
    for args in cases {
        let r = run(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with("error: ") && r.stderr.contains("trained context of 512 tokens"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(!out.exists(), "{args:?} wrote output");
    }
}
