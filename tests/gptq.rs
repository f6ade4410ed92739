//! `kiln convert --format compressed-tensors --gptq` end to end on the tiny
//! fixtures: GPTQ keeps round-to-nearest's scales (the original weights'
//! min/max, as llm-compressor's GPTQModifier) and changes codes, lowers the
//! KL divergence on text it was not calibrated on, writes the same bytes for
//! any thread count, and its artifacts decode (kiln's compressed-tensors
//! reader, `kiln eval`); options it cannot honour are refused. The same for
//! GGUF output (`-t Q4_K_M --gptq`, with and without an imatrix): lower
//! held-out KLD than plain conversion with the same imatrix, the same bytes
//! for any thread count.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;

/// Calibration text (the first 60% of the fixture text) and held-out text
/// (the rest), written into `dir`.
pub(crate) fn texts(dir: &Path) -> (PathBuf, PathBuf) {
    let t = std::fs::read_to_string(repo().join("fixtures/text/pride-and-prejudice-ch1-17.txt"))
        .unwrap();
    let mut cut = t.len() * 6 / 10;
    while !t.is_char_boundary(cut) {
        cut += 1;
    }
    let (c, h) = (dir.join("calib.txt"), dir.join("heldout.txt"));
    std::fs::write(&c, &t[..cut]).unwrap();
    std::fs::write(&h, &t[cut..]).unwrap();
    (c, h)
}

fn convert(model: &str, out: &Path, scheme: &str, extra: &[&str]) {
    let mut a = vec![
        "convert",
        model,
        "--format",
        "compressed-tensors",
        "--scheme",
        scheme,
        "-o",
        s(out),
        "--quiet",
    ];
    a.extend_from_slice(extra);
    let r = run(&a);
    assert_eq!(r.code, 0, "{a:?}: {}", r.stderr);
}

fn gptq_args<'a>(calib: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "--gptq",
        "--text",
        s(calib),
        "--gptq-samples",
        "8",
        "--gptq-ctx",
        "64",
    ];
    a.extend_from_slice(extra);
    a
}

/// Stored tensors of a single-file safetensors artifact: name -> bytes.
fn tensors(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let b = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    h.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            let (a, z) = (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            );
            (k.clone(), b[8 + n + a..8 + n + z].to_vec())
        })
        .collect()
}

fn kld(model: &str, cand: &Path, text: &Path) -> f64 {
    let r = run(&[
        "eval",
        model,
        s(cand),
        "--text",
        s(text),
        "--ctx",
        "64",
        "--chunks",
        "12",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v["kld"]["mean"].as_f64().unwrap()
}

#[test]
fn gptq_keeps_the_scales_changes_codes_and_lowers_held_out_kld() {
    let dir = tempfile::tempdir().unwrap();
    let (calib, held) = texts(dir.path());
    for (fx, scheme, extra) in [
        ("tiny-llama", "W4A16", vec!["--group-size", "32"]),
        ("tiny-qwen2", "W4A16_ASYM", vec!["--actorder", "none"]),
        ("tiny-llama", "W8A8", vec![]),
    ] {
        let model = fixture(fx);
        let rtn = dir.path().join(format!("{fx}-{scheme}-rtn"));
        let gq = dir.path().join(format!("{fx}-{scheme}-gptq"));
        // --actorder is a GPTQ option: round-to-nearest gets the rest.
        let g: Vec<&str> = match extra.first() {
            Some(&"--actorder") => Vec::new(),
            _ => extra.clone(),
        };
        convert(s(&model), &rtn, scheme, &g);
        convert(s(&model), &gq, scheme, &gptq_args(&calib, &extra));
        let (a, b) = (tensors(&rtn), tensors(&gq));
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{fx} {scheme}: the same stored tensors"
        );
        let mut changed = 0;
        for (k, v) in &a {
            if k.ends_with("weight_packed") || (scheme == "W8A8" && k.contains("proj.weight")) {
                changed += usize::from(v != &b[k]);
            } else {
                // Scales, zero points, shapes and unquantized tensors are
                // round-to-nearest's exactly.
                assert!(v == &b[k], "{fx} {scheme}: `{k}` differs from RTN");
            }
        }
        assert!(
            changed >= 10,
            "{fx} {scheme}: only {changed} weights changed"
        );
        let (kr, kg) = (kld(s(&model), &rtn, &held), kld(s(&model), &gq, &held));
        assert!(kg < kr, "{fx} {scheme}: GPTQ KLD {kg} vs RTN {kr}");
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(gq.join("config.json")).unwrap()).unwrap();
        let want = if extra.contains(&"none") {
            Value::Null
        } else {
            Value::from("static")
        };
        assert_eq!(
            cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["actorder"],
            want
        );
        let man: Value =
            serde_json::from_slice(&std::fs::read(gq.join("manifest.json")).unwrap()).unwrap();
        let rounded = man["gptq"]["tensors"].as_array().unwrap();
        // Every quantized Linear (one with a weight scale) was GPTQ-rounded;
        // layers the group size does not divide are kept unquantized.
        let quantized = b.keys().filter(|k| k.ends_with(".weight_scale")).count();
        assert!(quantized >= 12, "{fx}: {quantized} quantized Linears");
        assert_eq!(rounded.len(), quantized, "{fx}: every quantized Linear");
        assert!(rounded.iter().all(|t| t["rtn_fallback"] == false));
    }
}

#[test]
fn gptq_output_does_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let (calib, _) = texts(dir.path());
    let model = fixture("tiny-llama");
    let mut outs = Vec::new();
    for threads in ["1", "3"] {
        let out = dir.path().join(format!("t{threads}"));
        let mut a = vec![
            "convert",
            s(&model),
            "--format",
            "compressed-tensors",
            "--scheme",
            "W4A16",
            "-o",
            s(&out),
            "--quiet",
        ];
        a.extend(gptq_args(&calib, &[]));
        let r = run_cmd(kiln().args(&a).env("RAYON_NUM_THREADS", threads));
        assert_eq!(r.code, 0, "{}", r.stderr);
        outs.push(std::fs::read(out.join("model.safetensors")).unwrap());
    }
    assert!(outs[0] == outs[1], "1 and 3 threads wrote different bytes");
}

#[test]
fn gptq_refuses_what_it_cannot_round() {
    let dir = tempfile::tempdir().unwrap();
    let (calib, _) = texts(dir.path());
    let model = fixture("tiny-llama");
    let out = dir.path().join("out");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "convert",
                s(&model),
                "--scheme",
                "FP8_DYNAMIC",
                "--gptq",
                "--text",
                s(&calib),
                "-o",
                s(&out),
            ],
            "integer schemes",
        ),
        (
            vec![
                "convert",
                s(&model),
                "-t",
                "q4_0",
                "--gptq",
                "--actorder",
                "static",
                "--text",
                s(&calib),
                "-o",
                s(&out),
            ],
            "left to right",
        ),
        (
            vec![
                "convert",
                s(&model),
                "-t",
                "q4_0",
                "--gptq",
                "--prune",
                "ffn=0.5",
                "--text",
                s(&calib),
                "-o",
                s(&out),
            ],
            "--prune",
        ),
        (
            vec![
                "convert",
                s(&model),
                "--scheme",
                "W4A16",
                "--gptq",
                "-o",
                s(&out),
            ],
            "--text",
        ),
    ];
    for (args, needle) in cases {
        let r = run(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with("error: ") && r.stderr.contains(needle),
            "{args:?}: {}",
            r.stderr
        );
        assert!(!out.exists(), "{args:?} wrote output");
    }
}

/// GGUF conversion of `model` with `extra` arguments; the `--json` summary.
fn convert_gguf(model: &Path, out: &Path, extra: &[&str], threads: &str) -> Value {
    let mut a = vec![
        "convert",
        s(model),
        "-o",
        s(out),
        "--quiet",
        "--json",
        // The output head and embeddings (not GPTQ-rounded) kept wide, so
        // the KLD measures the block linears.
        "--output-tensor-type",
        "f16",
        "--token-embedding-type",
        "f16",
    ];
    a.extend_from_slice(extra);
    let r = run_cmd(kiln().args(&a).env("RAYON_NUM_THREADS", threads));
    assert_eq!(r.code, 0, "{a:?}: {}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn gguf_gptq_lowers_held_out_kld_against_plain_conversion_with_the_same_imatrix() {
    let dir = tempfile::tempdir().unwrap();
    let (calib, held) = texts(dir.path());
    let model = fixture("tiny-llama");
    let imatrix = dir.path().join("imatrix.gguf");
    let r = run(&[
        "imatrix",
        s(&model),
        "--text",
        s(&calib),
        "-o",
        s(&imatrix),
        "--ctx",
        "64",
        "--quiet",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let g = gptq_args(&calib, &[]);
    for (ty, im) in [("Q4_K_M", true), ("Q4_K_M", false), ("Q4_0", false)] {
        let mut base = vec!["-t", ty];
        if ty == "Q4_0" {
            base.push("--pure");
        }
        if im {
            base.extend(["--imatrix", s(&imatrix)]);
        }
        let plain = dir.path().join(format!("{ty}-{im}-plain.gguf"));
        let gq = dir.path().join(format!("{ty}-{im}-gptq.gguf"));
        convert_gguf(&model, &plain, &base, "2");
        let j = convert_gguf(&model, &gq, &[&base[..], &g[..]].concat(), "2");
        let rounded = j["gptq"]["tensors"].as_array().unwrap();
        // Every block linear (2 layers x 7), onto the types the recipe chose.
        assert_eq!(rounded.len(), 14, "{ty}: {rounded:?}");
        for t in rounded {
            let name = t["name"].as_str().unwrap();
            let planned = j["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap();
            assert_eq!(planned["type"], t["type"], "{name}");
        }
        let (kp, kg) = (kld(s(&model), &plain, &held), kld(s(&model), &gq, &held));
        assert!(
            kg < 0.8 * kp,
            "{ty} imatrix {im}: GPTQ KLD {kg} vs plain {kp}"
        );
    }
}

#[test]
fn gguf_gptq_output_does_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let (calib, _) = texts(dir.path());
    let model = fixture("tiny-qwen2");
    let g = gptq_args(&calib, &[]);
    let outs: Vec<Vec<u8>> = ["1", "3"]
        .iter()
        .map(|threads| {
            let out = dir.path().join(format!("t{threads}.gguf"));
            convert_gguf(
                &model,
                &out,
                &[&["-t", "Q4_K_M"][..], &g[..]].concat(),
                threads,
            );
            std::fs::read(out).unwrap()
        })
        .collect();
    assert!(outs[0] == outs[1], "1 and 3 threads wrote different bytes");
}

/// `kiln build ... --gptq` on tiny-llama with separate calibration and
/// held-out texts; the manifest.
fn build_gptq(dir: &Path, name: &str, extra: &[&str], threads: &str) -> (PathBuf, Value) {
    let (calib, held) = texts(dir);
    let out = dir.join(name);
    let model = fixture("tiny-llama");
    let mut a = vec![
        "build",
        s(&model),
        "--target",
        "h100-sxm",
        "--bpw",
        "4.5",
        "--text",
        s(&calib),
        "--eval-text",
        s(&held),
        "--ctx",
        "64",
        "-o",
        s(&out),
        "--quiet",
    ];
    a.extend_from_slice(extra);
    let r = run_cmd(kiln().args(&a).env("RAYON_NUM_THREADS", threads));
    assert_eq!(r.code, 0, "{a:?}: {}", r.stderr);
    let m: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    (out, m)
}

#[test]
fn build_weighs_gptq_by_measurement_and_writes_what_it_measured() {
    let dir = tempfile::tempdir().unwrap();
    let (out, m) = build_gptq(dir.path(), "with", &["--gptq"], "2");
    let g = &m["gptq"];
    let without = g["without"]["kld_mean"].as_f64().unwrap();
    let with = g["with"]["kld_mean"].as_f64().unwrap();
    let tensors = g["tensors"].as_array().unwrap();
    // Block linears only (the head and embeddings are rounded to nearest),
    // each with the type the plan gave it.
    assert!(!tensors.is_empty(), "{g}");
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        assert!(name.starts_with("blk."), "{name}");
        let planned = m["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap();
        assert_eq!(planned["type"], t["type"], "{name}");
    }
    // On this fixture GPTQ measures better and is built.
    assert!(with < without, "GPTQ {with} vs round-to-nearest {without}");
    assert_eq!(g["applied"], true, "{g}");
    // The plan's accuracy is the GPTQ-rounded plan's ...
    assert_eq!(m["accuracy"]["text"]["kld_mean"].as_f64(), Some(with));
    // ... which is what `kiln eval` measures of the written file on the
    // same held-out text and windows.
    let file = out.join("tiny-llama.gguf");
    let (_, held) = texts(dir.path());
    let r = run(&[
        "eval",
        s(&fixture("tiny-llama")),
        s(&file),
        "--text",
        s(&held),
        "--ctx",
        "64",
        "--chunks",
        "8",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let e: Value = serde_json::from_str(&r.stdout).unwrap();
    let measured = e["kld"]["mean"].as_f64().unwrap();
    assert!(
        (measured - with).abs() <= 1e-9 * with.max(1e-12),
        "eval of the built file {measured} vs the build's GPTQ measurement {with}"
    );
    // The GGUF names the rounded tensors, as `kiln convert --gptq` does.
    let gguf = read_gguf(&file);
    assert!(
        gguf.keys.iter().any(|k| k == "kiln.gptq.tensors"),
        "{:?}",
        gguf.keys
    );
    // The report says both and which was built.
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## GPTQ"), "{report}");
    // Without --gptq: no record, and the GGUF differs (rounded to nearest).
    let (plain, m0) = build_gptq(dir.path(), "without", &[], "2");
    assert!(m0.get("gptq").is_none(), "{m0}");
    assert_eq!(
        m0["accuracy"]["text"]["kld_mean"].as_f64(),
        Some(without),
        "the plan rounded to nearest, measured alike"
    );
    assert_ne!(
        std::fs::read(plain.join("tiny-llama.gguf")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    // Allocated over both ways of rounding within the plan's bytes: never
    // larger, never a higher predicted error; the types that changed are
    // the ones the two manifests disagree on; GPTQ only where its measured
    // gain at the allocated type is below 1.
    let f = |k: &str| g[k].as_f64().unwrap();
    assert!(f("bytes_with") <= f("bytes_without"), "{g}");
    assert_eq!(m["plan"]["tensor_bytes"].as_f64(), Some(f("bytes_with")));
    assert!(f("predicted_with") <= f("predicted_without"), "{g}");
    assert_eq!(
        m["plan"]["predicted_kld"].as_f64(),
        Some(f("predicted_with"))
    );
    let types_of = |m: &Value| -> BTreeMap<String, String> {
        m["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["type"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let (t1, t0) = (types_of(&m), types_of(&m0));
    let changed = t1.iter().filter(|(n, t)| t0.get(*n) != Some(t)).count();
    assert_eq!(g["retyped"].as_u64(), Some(changed as u64), "{g}");
    // Both GPTQ plans measured when the allocation changed a type; the one
    // built is the lower, and its figures are the record's.
    let plans = g["plans"].as_array().unwrap();
    assert_eq!(plans.len(), if changed > 0 { 2 } else { 1 }, "{g}");
    let built: Vec<&Value> = plans.iter().filter(|p| p["built"] == true).collect();
    assert_eq!(built.len(), 1, "{g}");
    assert_eq!(built[0]["measured"]["kld_mean"].as_f64(), Some(with));
    for p in plans {
        assert!(p["measured"]["kld_mean"].as_f64().unwrap() >= with, "{p}");
    }
    let gains = g["gains"].as_object().unwrap();
    for (name, ty) in &t1 {
        let gain = gains.get(name).and_then(|x| x[ty.as_str()].as_f64());
        let rounded = tensors.iter().any(|t| t["name"] == name.as_str());
        assert_eq!(
            rounded,
            gain.is_some_and(|x| x < 1.0),
            "{name} {ty} {gain:?}"
        );
        if rounded {
            let listed = tensors.iter().find(|t| t["name"] == name.as_str()).unwrap();
            assert_eq!(listed["gain"].as_f64(), gain);
        }
    }
    // No temporary file is left beside the artifact.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["calib.txt", "heldout.txt", "with", "without"]);
}

#[test]
fn build_gptq_does_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = build_gptq(dir.path(), "t1", &["--gptq"], "1");
    let (b, _) = build_gptq(dir.path(), "t3", &["--gptq"], "3");
    for f in ["tiny-llama.gguf", "manifest.json", "report.md"] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f}: 1 and 3 threads differ"
        );
    }
}

#[test]
fn build_refuses_gptq_where_it_is_not_weighed() {
    let dir = tempfile::tempdir().unwrap();
    let (calib, _) = texts(dir.path());
    let model = fixture("tiny-llama");
    let out = dir.path().join("out");
    let base = ["build", s(&model), "--target", "h100-sxm", "-o", s(&out)];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--gptq"], "--gptq needs --text"),
        (
            vec!["--gptq", "--text", s(&calib), "--dampening-frac", "0"],
            "--dampening-frac 0",
        ),
        (vec!["--dampening-frac", "0.1"], "--gptq"),
    ];
    for (extra, needle) in cases {
        let args = [&base[..], &extra[..]].concat();
        let r = run(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with("error: ") && r.stderr.contains(needle),
            "{args:?}: {}",
            r.stderr
        );
        assert!(!out.exists(), "{args:?} wrote output");
    }
    // Mixture-of-experts checkpoints are rounded to nearest only.
    let moe = fixture("tiny-qwen2-moe");
    let args = [
        "build",
        s(&moe),
        "--target",
        "h100-sxm",
        "--engine",
        "vllm",
        "--text",
        s(&calib),
        "--ctx",
        "64",
        "--gptq",
        "-o",
        s(&out),
    ];
    let r = run(&args);
    assert_eq!(r.code, 2, "{}", r.stderr);
    // Refused once the checkpoint is read (after its measurement lines).
    let last = r.stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("mixture-of-experts"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn build_weighs_gptq_for_compressed_tensors_and_writes_what_it_measured() {
    let dir = tempfile::tempdir().unwrap();
    let (_, held) = texts(dir.path());
    let model = fixture("tiny-llama");
    let build =
        |name: &str, extra: &[&str]| crate::prune_ct::build_ct(&model, dir.path(), name, extra);
    let (out, m) = build("with", &["--gptq"]);
    let g = &m["gptq"];
    let with = g["with"]["kld_mean"].as_f64().unwrap();
    let without = g["without"]["kld_mean"].as_f64().unwrap();
    // On this fixture GPTQ measures better and is built.
    assert!(with < without, "{g}");
    assert_eq!(g["applied"], true);
    assert_eq!(m["compared"][0]["measured_kld"].as_f64(), Some(with));
    // Every integer-scheme Linear of the plan, and nothing else, was rounded.
    let rounded: Vec<&str> = g["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["scheme"].as_str().unwrap())
        .collect();
    assert!(!rounded.is_empty());
    assert!(
        rounded
            .iter()
            .all(|s| ["W4A16", "W4A16_ASYM", "W8A16", "W8A8"].contains(s)),
        "{rounded:?}"
    );
    // `kiln eval` of the artifact measures what the build measured.
    let r = run(&[
        "eval",
        s(&model),
        s(&out),
        "--text",
        s(&held),
        "--ctx",
        "64",
        "--chunks",
        "8",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let e: Value = serde_json::from_str(&r.stdout).unwrap();
    let measured = e["kld"]["mean"].as_f64().unwrap();
    assert!(
        (measured - with).abs() <= 1e-9 * with,
        "eval of the artifact {measured} vs the build's GPTQ measurement {with}"
    );
    // The integer groups say how GPTQ ordered its columns.
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    for grp in cfg["quantization_config"]["config_groups"]
        .as_object()
        .unwrap()
        .values()
    {
        if grp["weights"]["type"] == "int" {
            assert_eq!(grp["weights"]["actorder"], "static", "{grp}");
        }
    }
    // Without --gptq: no record, the same plan rounded to nearest at the
    // measurement GPTQ was compared with, and a different artifact.
    let (plain, m0) = build("without", &[]);
    assert!(m0.get("gptq").is_none());
    assert_eq!(m0["compared"][0]["measured_kld"].as_f64(), Some(without));
    assert_ne!(
        std::fs::read(plain.join("model.safetensors")).unwrap(),
        std::fs::read(out.join("model.safetensors")).unwrap()
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["calib.txt", "heldout.txt", "with", "without"]);
}

/// With `--prune-candidates` too: the plan that wins (here a pruned one) is
/// GPTQ-rounded on the pruned model and measured against the unpruned
/// original, and `kiln eval ORIGINAL FILE` measures what the build recorded.
#[test]
fn build_gptq_rounds_the_pruned_plan_when_pruning_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (calib, held) = texts(dir.path());
    let model = fixture("tiny-llama");
    let out = dir.path().join("out");
    let r = run(&[
        "build",
        s(&model),
        "--target",
        "m2",
        "--bpw",
        "3.3",
        "--text",
        s(&calib),
        "--eval-text",
        s(&held),
        "--ctx",
        "64",
        "--prune-candidates",
        "auto",
        "--gptq",
        "-o",
        s(&out),
        "--quiet",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let chosen = m["pruning"]["chosen"]
        .as_str()
        .expect("a pruning wins here");
    let g = &m["gptq"];
    // GPTQ's "without" is the pruned plan's own measurement.
    let pruned = m["pruning"]["options"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["chosen"] == true)
        .unwrap();
    assert_eq!(pruned["resolved"], chosen);
    assert_eq!(
        g["without"]["kld_mean"].as_f64(),
        pruned["measured"]["kld_mean"].as_f64()
    );
    let built = m["accuracy"]["text"]["kld_mean"].as_f64().unwrap();
    if g["applied"] == true {
        assert_eq!(g["with"]["kld_mean"].as_f64(), Some(built));
    }
    let e = run(&[
        "eval",
        s(&model),
        s(&out.join("tiny-llama.gguf")),
        "--text",
        s(&held),
        "--ctx",
        "64",
        "--chunks",
        "8",
        "--json",
    ]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    let v: Value = serde_json::from_str(&e.stdout).unwrap();
    let measured = v["kld"]["mean"].as_f64().unwrap();
    assert!(
        (measured - built).abs() <= 1e-9 * built,
        "eval of the pruned GPTQ file {measured} vs the build's {built}"
    );
    let gguf = read_gguf(&out.join("tiny-llama.gguf"));
    assert!(
        gguf.keys.iter().any(|k| k == "kiln.prune"),
        "{:?}",
        gguf.keys
    );
}
