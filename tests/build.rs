//! `kiln build` and `kiln plan` end to end on the tiny Llama fixture: the
//! artifact directory (exactly the files promised, every hash and size in
//! the manifest true of the file on disk, the manifest's types those of the
//! GGUF, the budget kept), byte-identical reruns and thread counts, the
//! report as users see it, tensor-parallel sharding in llama.cpp's split
//! layout, the cost objective against Q4_K_M, refusals that leave nothing
//! behind, and `kiln plan`'s table against `kiln convert --dry-run`.
//! (gguf-py and llama.cpp read the same artifacts in
//! tests/python/test_build.py.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use formats::gguf::GgufFile;
use passes::MetaValue;
use serde_json::Value;

use crate::common::*;

const PARAMS: u64 = 1_737_984;
/// Keeps a `--text` run to a few seconds: 2 calibration windows, 1 probe, 1 held out.
const QUICK_TEXT: [&str; 6] = ["--chunks", "2", "--probe-chunks", "1", "--eval-chunks", "1"];
const SPLIT_KEYS: [&str; 3] = ["split.no", "split.count", "split.tensors.count"];

fn text() -> PathBuf {
    repo().join("fixtures/text/pride-and-prejudice-ch1-17.txt")
}

fn build_cmd(out: &Path, extra: &[&str]) -> Vec<String> {
    build_cmd_on("m2", out, extra)
}

fn build_cmd_on(target: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "build".into(),
        s(&fixture("tiny-llama")).into(),
        "--target".into(),
        target.into(),
        "-o".into(),
        s(out).into(),
    ];
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

/// `kiln build fixtures/tiny-llama --target m2 -o OUT EXTRA...`.
fn build(out: &Path, extra: &[&str]) -> Run {
    run_cmd(kiln().args(build_cmd(out, extra)))
}

fn build_ok(out: &Path, extra: &[&str]) -> Run {
    let r = build(out, extra);
    assert_eq!(r.code, 0, "kiln build {extra:?}: {}", r.stderr);
    r
}

fn manifest(out: &Path) -> Value {
    let text = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn gguf(path: &Path) -> GgufFile {
    let bytes = std::fs::read(path).unwrap();
    formats::gguf::parse(path, &bytes).unwrap()
}

/// name -> GGUF type name (quant's spelling, as the manifest writes it).
fn gguf_types(g: &GgufFile) -> Vec<(String, String)> {
    g.tensors
        .iter()
        .map(|t| {
            let ty = quant::GgmlType::from_id(t.ty.id)
                .unwrap_or_else(|| panic!("{}: type id {}", t.name, t.ty.id));
            (t.name.clone(), ty.name().to_string())
        })
        .collect()
}

/// Every file in `dir` with its bytes.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    listing(dir)
        .into_iter()
        .map(|n| {
            let b = std::fs::read(dir.join(&n)).unwrap();
            (n, b)
        })
        .collect()
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn arr(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array: {v}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected an unsigned integer: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number: {v}"))
}

/// Every entry of the manifest's `files`: a relative path in `out` whose
/// sha256 and size are the file's.
fn check_manifest_files(out: &Path, m: &Value) {
    for e in arr(&m["files"]) {
        let rel = e["path"].as_str().unwrap();
        assert!(
            !rel.is_empty() && !rel.contains('/') && !rel.contains('\\') && rel != "..",
            "files[].path must be a plain name in OUTDIR: {rel}"
        );
        let p = out.join(rel);
        let len = std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
            .len();
        assert_eq!(u(&e["bytes"]), len, "{rel}: bytes");
        assert_eq!(
            e["sha256"].as_str().unwrap(),
            formats::artifact::sha256_file(&p).unwrap(),
            "{rel}: sha256"
        );
    }
}

/// The one line of a refusal: exit 2, nothing on stdout, exactly one
/// `error:` line on stderr; returns it.
fn refusal(r: &Run) -> String {
    assert_eq!(r.code, 2, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "", "a refusal prints no data");
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line:\n{}", r.stderr);
    errors[0].to_string()
}

#[test]
fn build_writes_a_complete_consistent_artifact() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    build_ok(&out, &["--bpw", "4.5"]);
    assert_eq!(
        listing(&out),
        names(&["chart.svg", "manifest.json", "report.md", "tiny-llama.gguf"])
    );
    assert_eq!(listing(root.path()), names(&["out"]), "no staging left");

    let m = manifest(&out);
    assert_eq!(m["schema"], "kiln.artifact/2");
    assert_eq!(m["target"]["id"], "m2");
    assert_eq!(m["serving"]["devices"], 1);
    assert_eq!(m["source"]["parameters"], PARAMS);
    // Source hashes are the fixture's files.
    let src = arr(&m["source"]["files"]);
    assert!(!src.is_empty());
    for e in src {
        let p = fixture("tiny-llama").join(e["path"].as_str().unwrap());
        assert_eq!(
            e["sha256"].as_str().unwrap(),
            formats::artifact::sha256_file(&p).unwrap()
        );
        assert_eq!(u(&e["bytes"]), std::fs::metadata(&p).unwrap().len());
    }

    // Files: the model file only, hashed and sized truthfully.
    let files: Vec<&str> = arr(&m["files"])
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["tiny-llama.gguf"]);
    check_manifest_files(&out, &m);
    let model = out.join("tiny-llama.gguf");
    let len = std::fs::metadata(&model).unwrap().len();
    assert_eq!(u(&m["size"]["predicted_bytes"]), len);
    assert_eq!(u(&m["size"]["actual_bytes"]), len);

    // The manifest's tensors are the GGUF's, with its types, shapes and sizes.
    let g = gguf(&model);
    let tensors = arr(&m["tensors"]);
    assert_eq!(tensors.len(), g.tensors.len());
    let in_file: BTreeMap<String, String> = gguf_types(&g).into_iter().collect();
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let gt = g
            .tensors
            .iter()
            .find(|x| x.name == name)
            .unwrap_or_else(|| panic!("manifest tensor {name} is not in the GGUF"));
        assert_eq!(t["type"].as_str().unwrap(), in_file[name], "{name}: type");
        assert_eq!(u(&t["bytes"]), gt.bytes, "{name}: bytes");
        let shape: Vec<usize> = arr(&t["shape"]).iter().map(|d| u(d) as usize).collect();
        assert_eq!(shape, gt.shape(), "{name}: shape");
    }
    assert!(g.metadata.get("general.architecture").is_some());

    // The budget: 4.5 bits per weight over the tensors and the whole file.
    let tensor_bytes: u64 = tensors.iter().map(|t| u(&t["bytes"])).sum();
    assert_eq!(u(&m["plan"]["tensor_bytes"]), tensor_bytes);
    let bpw = tensor_bytes as f64 * 8.0 / PARAMS as f64;
    assert!(bpw <= 4.5, "{bpw} bits per weight over a 4.5 budget");
    assert!((f(&m["plan"]["bits_per_weight"]) - bpw).abs() < 1e-9);
    assert_eq!(u(&m["plan"]["budget_bytes"]), 977_616, "4.5 x params / 8");
    assert!(len <= u(&m["plan"]["budget_bytes"]), "file of {len} bytes");
    // The predicted error is the sum of the tensors'.
    let kld: f64 = tensors.iter().map(|t| f(&t["predicted_kld"])).sum();
    assert!((kld - f(&m["plan"]["predicted_kld"])).abs() < 1e-9);
    assert_eq!(
        m["accuracy"]["text"],
        Value::Null,
        "not measured without text"
    );
}

#[test]
fn rebuilds_and_thread_counts_are_byte_identical() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    build_ok(&out, &["--bpw", "4.5"]);
    let first = contents(&out);
    // A rerun replaces the previous build (it holds a manifest) with the same bytes;
    // --json prints the manifest without changing any file.
    let r = build_ok(&out, &["--bpw", "4.5", "--json"]);
    assert_eq!(contents(&out), first);
    assert_eq!(listing(root.path()), names(&["out"]), "no staging left");
    let printed: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(printed, manifest(&out));

    // With a text: the imatrix, probes and held-out measurement too.
    let t = text();
    let mut runs = Vec::new();
    for threads in ["1", "2"] {
        let out = root.path().join(format!("text-{threads}"));
        let mut args = build_cmd(&out, &["--bpw", "4.5", "--text", s(&t)]);
        args.extend(QUICK_TEXT.iter().map(|x| x.to_string()));
        let r = run_cmd(kiln().env("RAYON_NUM_THREADS", threads).args(&args));
        assert_eq!(r.code, 0, "RAYON_NUM_THREADS={threads}: {}", r.stderr);
        runs.push(contents(&out));
    }
    assert_eq!(
        runs[0].keys().collect::<Vec<_>>(),
        [
            "chart.svg",
            "imatrix.gguf",
            "manifest.json",
            "report.md",
            "tiny-llama.gguf"
        ]
    );
    for (name, bytes) in &runs[0] {
        assert!(
            runs[1][name] == *bytes,
            "{name} differs between 1 and 2 threads"
        );
    }
    let out = root.path().join("text-1");
    let m = manifest(&out);
    check_manifest_files(&out, &m);
    let files: Vec<&str> = arr(&m["files"])
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["tiny-llama.gguf", "imatrix.gguf"]);
    let model_len = std::fs::metadata(out.join("tiny-llama.gguf"))
        .unwrap()
        .len();
    assert_eq!(
        u(&m["size"]["actual_bytes"]),
        model_len,
        "the imatrix is not model"
    );
    assert_eq!(u(&m["size"]["predicted_bytes"]), model_len);
    let text = &m["accuracy"]["text"];
    assert_eq!(text["windows"], 1);
    for k in [
        "kld_mean",
        "perplexity",
        "perplexity_ratio",
        "top1_agreement",
    ] {
        assert!(f(&text[k]).is_finite(), "accuracy.text.{k}: {}", text[k]);
    }
    // The model file carries the imatrix keys, as llama-quantize writes them.
    let g = gguf(&out.join("tiny-llama.gguf"));
    assert!(
        g.metadata
            .0
            .iter()
            .any(|(k, _)| k.starts_with("quantize.imatrix.")),
        "no quantize.imatrix.* keys"
    );
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
fn report_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let args = build_cmd(&out, &["--bpw", "4.5"]);
    let r = run_cmd(kiln().args(&args));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(
        r.stdout.trim_end(),
        report.trim_end(),
        "stdout is the report"
    );
    let shown = format!(
        "exit code: {}\n----- stdout -----\n{}----- stderr -----\n{}",
        r.code, r.stdout, r.stderr
    );
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r"\b\d+\.\d+s\b", "[TIME]");
    settings.add_filter(r"\b\d+\.\d+ ms\b", "[MS]");
    settings.add_filter(r"\b(\d+ (h|min) )?\d+(\.\d+)? (min|s)\b", "[TIME]");
    settings.add_filter(&regex_escape(s(root.path())), "[TMP]");
    settings.add_filter(&regex_escape(&repo().display().to_string()), "[REPO]");
    settings.add_filter(r"kiln(\.exe)? \d+\.\d+\.\d+", "kiln [VERSION]");
    settings.add_filter(
        r#""kiln_version": "[^"]+""#,
        r#""kiln_version": "[VERSION]""#,
    );
    let chart = std::fs::read_to_string(out.join("chart.svg")).unwrap();
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    settings.bind(|| {
        insta::assert_snapshot!("build_tiny_llama_m2_bpw_4_5_report", report);
        insta::assert_snapshot!("build_tiny_llama_m2_bpw_4_5_cli", shown);
        insta::assert_snapshot!("build_tiny_llama_m2_bpw_4_5_chart", chart);
        insta::assert_snapshot!("build_tiny_llama_m2_bpw_4_5_manifest", manifest);
    });
    let m: Value = serde_json::from_str(&manifest).unwrap();
    assert!(
        m["target"]["memory_bytes"].is_u64(),
        "byte counts are integers"
    );
    // No text, no imatrix: no other inputs (a text is listed with its hash:
    // `build_with_text_hashes_its_inputs`).
    assert_eq!(m["inputs"], serde_json::json!([]));
    assert_eq!(m["accuracy"]["text_file"], Value::Null);
}

/// `--budget-gb 0.0005`: 500 kB per device. The fixture needs 3 bpw x 1.74 M / 8 =
/// 652 kB to reach --min-bpw 3 on one device (and its smallest plan, about 3.1
/// bpw, does not fit 500 kB at all), so two devices.
const SHARD_BUDGET: &str = "0.0005";
const SHARD_DEVICE_BYTES: u64 = 500_000;
const SHARDS: [&str; 2] = [
    "tiny-llama-00001-of-00002.gguf",
    "tiny-llama-00002-of-00002.gguf",
];

#[test]
fn min_bpw_decides_between_one_device_and_two() {
    // 700 kB per device: one device holds a plan of about 3.1 bpw.
    let root = tempfile::tempdir().unwrap();
    let one = root.path().join("one");
    build_ok(&one, &["--budget-gb", "0.0007", "--min-bpw", "0"]);
    let m = manifest(&one);
    assert_eq!(
        m["serving"]["devices"], 1,
        "--min-bpw 0: one device when it fits"
    );
    let bpw = f(&m["plan"]["bits_per_weight"]);
    assert!(bpw < 4.0, "{bpw}");
    assert_eq!(
        listing(&one)
            .iter()
            .filter(|n| n.ends_with(".gguf"))
            .count(),
        1
    );
    // No sharding warning (the fixture, trained for 512 tokens, is served at
    // the default 4,096: that warning is expected).
    assert!(
        arr(&m["warnings"])
            .iter()
            .all(|w| w.as_str().unwrap().starts_with("--context 4,096 is above")),
        "{}",
        m["warnings"]
    );

    // Asking for at least 4 bits per weight: two devices.
    let two = root.path().join("two");
    build_ok(&two, &["--budget-gb", "0.0007", "--min-bpw", "4"]);
    let m = manifest(&two);
    assert_eq!(m["serving"]["devices"], 2);
    let bpw = f(&m["plan"]["bits_per_weight"]);
    assert!(bpw >= 4.0, "{bpw}");
    assert!(
        arr(&m["warnings"]).iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("does not fit one m2 with at least 4 bits per weight")),
        "{}",
        m["warnings"]
    );
    assert_eq!(
        listing(&two)
            .into_iter()
            .filter(|n| n.ends_with(".gguf"))
            .collect::<Vec<_>>(),
        SHARDS
    );
}

#[test]
fn a_small_budget_shards_across_two_devices_in_llama_cpp_split_layout() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    build_ok(&out, &["--budget-gb", SHARD_BUDGET]);
    let mut want = names(&["chart.svg", "manifest.json", "report.md"]);
    want.extend(names(&SHARDS));
    want.sort();
    assert_eq!(listing(&out), want);

    let m = manifest(&out);
    assert_eq!(m["serving"]["devices"], 2);
    assert_eq!(m["serving"]["tensor_parallel"], 2);
    assert_eq!(m["cost"]["fits"], true);
    assert!(f(&m["plan"]["bits_per_weight"]) >= 3.0);
    let warnings = arr(&m["warnings"]);
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("sharded across 2 devices")),
        "{warnings:?}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("on 2 device(s)"), "{report}");
    assert!(report.contains("sharded across 2 devices"), "{report}");
    assert!(report.contains("yes, 2 device(s)"), "{report}");

    let files: Vec<&str> = arr(&m["files"])
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, SHARDS);
    check_manifest_files(&out, &m);
    let total: u64 = SHARDS
        .iter()
        .map(|n| std::fs::metadata(out.join(n)).unwrap().len())
        .sum();
    assert_eq!(u(&m["size"]["actual_bytes"]), total);
    assert_eq!(u(&m["size"]["predicted_bytes"]), total);

    // The split keys, with gguf-split's types, in every file; all metadata in the first.
    let splits: Vec<GgufFile> = SHARDS.iter().map(|n| gguf(&out.join(n))).collect();
    let n_tensors: usize = splits.iter().map(|g| g.tensors.len()).sum();
    for (i, g) in splits.iter().enumerate() {
        assert!(!g.tensors.is_empty(), "split {i} has no tensors");
        assert_eq!(g.metadata.get("split.no"), Some(&MetaValue::U16(i as u16)));
        assert_eq!(g.metadata.get("split.count"), Some(&MetaValue::U16(2)));
        assert_eq!(
            g.metadata.get("split.tensors.count"),
            Some(&MetaValue::I32(n_tensors as i32))
        );
    }
    let first: Vec<&str> = splits[0]
        .metadata
        .0
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert!(first.contains(&"general.architecture"));
    assert!(first.contains(&"tokenizer.ggml.tokens"));
    assert_eq!(
        &first[first.len() - 3..],
        SPLIT_KEYS,
        "split keys come last"
    );
    let second: Vec<&str> = splits[1]
        .metadata
        .0
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(second, SPLIT_KEYS, "later splits hold only the split keys");

    // Together the splits hold the single-file build's tensors, in its order,
    // each with the type the manifest gives it.
    let single = root.path().join("single");
    build_ok(&single, &["--bpw", "4.5"]);
    let g = gguf(&single.join("tiny-llama.gguf"));
    let single_names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
    let split_types: Vec<(String, String)> = splits.iter().flat_map(gguf_types).collect();
    let split_names: Vec<&str> = split_types.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(split_names, single_names);
    let in_files: BTreeMap<&str, &str> = split_types
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    for t in arr(&m["tensors"]) {
        let name = t["name"].as_str().unwrap();
        assert_eq!(t["type"].as_str().unwrap(), in_files[name], "{name}");
    }
    // The single file's metadata is the first split's, less the split keys.
    let keys = |g: &GgufFile| -> BTreeSet<String> {
        g.metadata
            .0
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !SPLIT_KEYS.contains(&k.as_str()))
            .collect()
    };
    assert_eq!(keys(&splits[0]), keys(&g));
}

/// `--budget-gb` is bytes of model file per device: each split (one per rank)
/// fits it, header included.
#[test]
fn sharded_files_each_fit_the_per_device_budget() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    build_ok(&out, &["--budget-gb", SHARD_BUDGET]);
    for n in SHARDS {
        let g = gguf(&out.join(n));
        let data: u64 = g.tensors.iter().map(|t| t.bytes).sum();
        let file = std::fs::metadata(out.join(n)).unwrap().len();
        assert!(
            data <= SHARD_DEVICE_BYTES && file <= SHARD_DEVICE_BYTES,
            "{n}: {data} bytes of tensors, {file} bytes of file, over the \
             {SHARD_DEVICE_BYTES} bytes per device of --budget-gb {SHARD_BUDGET}"
        );
    }
}

#[test]
fn cost_objective_is_smaller_than_q4_k_m_and_no_worse() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    build_ok(&out, &["--objective", "cost"]);
    let m = manifest(&out);
    assert_eq!(m["plan"]["objective"], "cost");
    let row = |name: &str| -> Value {
        arr(&m["comparison"])
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name} row"))
            .clone()
    };
    let q4 = row("Q4_K_M");
    let plan = row("kiln plan");
    let bytes = u(&m["plan"]["tensor_bytes"]);
    let kld = f(&m["plan"]["predicted_kld"]);
    assert_eq!(u(&plan["tensor_bytes"]), bytes);
    assert!(
        bytes < u(&q4["tensor_bytes"]),
        "{bytes} bytes, Q4_K_M {}",
        q4["tensor_bytes"]
    );
    let q4_kld = f(&q4["predicted_kld"]);
    assert!(
        kld <= q4_kld + 1e-12,
        "predicted KLD {kld}, Q4_K_M {q4_kld}"
    );
    assert!(
        (f(&m["plan"]["error_ceiling"]["predicted_kld"]) - q4_kld).abs() < 1e-12,
        "the default ceiling is Q4_K_M's predicted error"
    );
    check_manifest_files(&out, &m);
}

#[test]
fn refusals_leave_nothing_behind() {
    // An unrelated non-empty directory is not replaced, nor touched.
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("mine");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), b"keep me").unwrap();
    let line = refusal(&build(&out, &["--bpw", "4.5"]));
    assert!(
        line.contains("mine") && line.contains("no kiln manifest.json"),
        "{line}"
    );
    assert_eq!(listing(&out), names(&["notes.txt"]));
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"keep me");
    assert_eq!(listing(root.path()), names(&["mine"]));

    // Missing parent directories are created (as for `-o out/l40s`)...
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("no/such/out");
    let o = build(&out, &["--bpw", "4.5"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(out.join("manifest.json").is_file());
    // ...but not for a build that is refused, and not under a file.
    let root = tempfile::tempdir().unwrap();
    let line = refusal(&build(
        &root.path().join("a/b/out"),
        &["--bpw", "4.5", "--engine", "vllm"],
    ));
    assert!(line.contains("--engine vllm"), "{line}");
    assert!(listing(root.path()).is_empty());
    std::fs::write(root.path().join("file"), b"x").unwrap();
    let line = refusal(&build(&root.path().join("file/sub/out"), &["--bpw", "4.5"]));
    assert!(line.contains("is not a directory"), "{line}");
    assert_eq!(listing(root.path()), names(&["file"]));

    // A file where the directory would go is not replaced.
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    std::fs::write(&out, b"not a directory").unwrap();
    let line = refusal(&build(&out, &["--bpw", "4.5"]));
    assert!(line.contains("is not a directory"), "{line}");
    assert_eq!(std::fs::read(&out).unwrap(), b"not a directory");
    assert_eq!(listing(root.path()), names(&["out"]));

    type Check = fn(&str) -> bool;
    let cases: [(&str, &[&str], Check); 4] = [
        ("m2", &["--bpw", "4.5", "--engine", "vllm"], |l| {
            l.contains("--engine vllm") && l.contains("GGUF")
        }),
        ("no-such-device", &["--bpw", "4.5"], |l| {
            l.contains("unknown target `no-such-device`")
        }),
        ("m2", &["--budget-gb", "0.00001"], |l| {
            l.contains("no plan fits")
        }),
        ("m2", &["--bpw", "0.5"], |l| l.contains("no plan fits")),
    ];
    for (target, extra, ok) in cases {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        let line = refusal(&run_cmd(kiln().args(build_cmd_on(target, &out, extra))));
        assert!(ok(&line), "{extra:?}: {line}");
        assert!(
            listing(root.path()).is_empty(),
            "{extra:?} left {:?} (staging directories included)",
            listing(root.path())
        );
    }
}

/// `--name` names the model file inside OUTDIR: it may not put a file
/// elsewhere, nor take the name of another file of the artifact. (A refusal
/// and a sanitized name both pass.)
#[test]
fn model_name_cannot_escape_the_output_directory() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let r = build(&out, &["--bpw", "4.5", "--name", "../escaped"]);
    assert_eq!(
        listing(root.path()),
        if r.code == 0 { names(&["out"]) } else { vec![] },
        "exit {}: a file was written beside OUTDIR: {}",
        r.code,
        r.stderr
    );
    if r.code == 0 {
        check_manifest_files(&out, &manifest(&out));
    }
}

/// `--name imatrix` with --text: the model and the collected imatrix are two files.
#[test]
fn model_name_cannot_overwrite_the_imatrix() {
    let root = tempfile::tempdir().unwrap();
    let t = text();
    let out = root.path().join("im");
    let mut extra = vec!["--bpw", "4.5", "--name", "imatrix", "--text", s(&t)];
    extra.extend_from_slice(&QUICK_TEXT);
    let r = build(&out, &extra);
    if r.code == 0 {
        let m = manifest(&out);
        let paths: Vec<&str> = arr(&m["files"])
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        let unique: BTreeSet<&str> = paths.iter().copied().collect();
        assert_eq!(unique.len(), paths.len(), "files listed twice: {paths:?}");
        assert_eq!(
            m["size"]["actual_bytes"], m["size"]["predicted_bytes"],
            "the model file was overwritten: {paths:?}"
        );
    } else {
        refusal(&r);
    }
}

fn plan_json(extra: &[&str]) -> Value {
    let fx = fixture("tiny-llama");
    let mut args = vec![
        "plan",
        s(&fx),
        "--targets",
        "m2,h100-sxm",
        "--bpw",
        "4.5",
        "--json",
    ];
    args.extend_from_slice(extra);
    let r = run(&args);
    assert_eq!(r.code, 0, "kiln plan {extra:?}: {}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn plan_compares_kiln_with_llama_cpp_recipes_per_target() {
    let v = plan_json(&[]);
    assert_eq!(v["parameters"], PARAMS);
    assert_eq!(v["measured_on"], Value::Null);
    let targets = arr(&v["targets"]);
    let ids: Vec<&str> = targets
        .iter()
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m2", "h100-sxm"]);

    // Q4_K_M's bytes are those `kiln convert --type q4_k_m` writes.
    let r = run(&[
        "convert",
        s(&fixture("tiny-llama")),
        "--type",
        "q4_k_m",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dry: Value = serde_json::from_str(&r.stdout).unwrap();
    let q4_bytes: u64 = arr(&dry["tensors"]).iter().map(|t| u(&t["bytes"])).sum();

    // kiln plan's row is what `kiln build` chooses with the same options.
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    build_ok(&out, &["--bpw", "4.5"]);
    let built = manifest(&out);

    for t in targets {
        let id = t["target"].as_str().unwrap();
        let options = arr(&t["options"]);
        assert_eq!(options[0]["name"], "kiln plan", "{id}: kiln's plan first");
        let names: Vec<&str> = options
            .iter()
            .map(|o| o["name"].as_str().unwrap())
            .collect();
        for recipe in ["Q2_K", "Q4_0", "Q4_K_M", "Q6_K", "Q8_0"] {
            assert!(
                names.contains(&recipe),
                "{id}: no {recipe} row in {names:?}"
            );
        }
        for o in options {
            let name = o["name"].as_str().unwrap();
            assert_eq!(
                o["measured"],
                Value::Null,
                "{id} {name}: measured without text"
            );
            assert!(f(&o["predicted_kld"]) >= 0.0, "{id} {name}");
            let bpw = f(&o["bits_per_weight"]);
            assert!(
                (bpw - u(&o["tensor_bytes"]) as f64 * 8.0 / PARAMS as f64).abs() < 1e-9,
                "{id} {name}"
            );
        }
        let q4 = options.iter().find(|o| o["name"] == "Q4_K_M").unwrap();
        assert_eq!(u(&q4["tensor_bytes"]), q4_bytes, "{id}: Q4_K_M bytes");
        let kiln = &options[0];
        assert!(f(&kiln["bits_per_weight"]) <= 4.5, "{id}");
        assert_eq!(kiln["tensor_bytes"], built["plan"]["tensor_bytes"], "{id}");
        assert!(
            (f(&kiln["predicted_kld"]) - f(&built["plan"]["predicted_kld"])).abs() < 1e-12,
            "{id}"
        );
    }
}

#[test]
fn plan_with_text_measures_every_option() {
    let t = text();
    let mut extra = vec!["--text", s(&t)];
    extra.extend_from_slice(&QUICK_TEXT);
    let v = plan_json(&extra);
    assert_eq!(v["measured_on"].as_str(), Some(s(&t)));
    for target in arr(&v["targets"]) {
        let id = target["target"].as_str().unwrap();
        let options = arr(&target["options"]);
        assert_eq!(options[0]["name"], "kiln plan");
        assert!(options.iter().any(|o| o["name"] == "Q4_K_M"));
        for o in options {
            let name = o["name"].as_str().unwrap();
            let m = &o["measured"];
            assert_eq!(m["windows"], 1, "{id} {name}: {m}");
            for k in [
                "kld_mean",
                "kld_p99",
                "perplexity",
                "perplexity_ratio",
                "top1_agreement",
            ] {
                let x = m[k]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{id} {name}: measured.{k} is {}", m[k]));
                assert!(x.is_finite() && x >= 0.0, "{id} {name}: measured.{k} = {x}");
            }
            assert!(f(&m["kld_p99"]) >= f(&m["kld_mean"]), "{id} {name}");
            assert!(f(&m["top1_agreement"]) <= 1.0, "{id} {name}");
        }
    }
}

/// A build whose input lives in OUTDIR (say, a GGUF of an earlier build) is
/// refused: OUTDIR is replaced whole, which would delete the input.
#[test]
fn an_input_inside_the_output_directory_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("art");
    build_ok(&out, &["--bpw", "4.5"]);
    let input = out.join("tiny-llama.gguf");
    let before = std::fs::read(&input).unwrap();
    let r = run_cmd(kiln().args([
        "build",
        input.to_str().unwrap(),
        "--target",
        "m2",
        "--bpw",
        "6",
        "-o",
        out.to_str().unwrap(),
    ]));
    let line = refusal(&r);
    assert!(line.contains("inside the output directory"), "{line}");
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

/// sha256 of a file by coreutils' `sha256sum` (not kiln's hashing).
fn sha256sum(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// The `inputs` a result lists, as (role, path, sha256, bytes).
fn listed_inputs(v: &Value) -> Vec<(String, String, String, u64)> {
    arr(v)
        .iter()
        .map(|i| {
            (
                i["role"].as_str().unwrap().to_string(),
                i["path"].as_str().unwrap().to_string(),
                i["sha256"].as_str().unwrap().to_string(),
                u(&i["bytes"]),
            )
        })
        .collect()
}

#[test]
fn build_with_text_hashes_its_inputs() {
    // Relative paths, run from the directory holding them: each input is
    // listed with the path as the user gave it and its sha256.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    std::fs::copy(text(), dir.join("calib.txt")).unwrap();
    let at = |args: &[&str]| {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(QUICK_TEXT);
        let r = run_cmd(kiln().current_dir(dir).args(&a));
        assert_eq!(r.code, 0, "kiln {args:?}: {}", r.stderr);
        r
    };
    let model = fixture("tiny-llama");
    let model = s(&model);
    at(&[
        "build",
        model,
        "--target",
        "m2",
        "--bpw",
        "4.5",
        "--text",
        "calib.txt",
        "-o",
        "first",
    ]);
    let text_sha = sha256sum(&dir.join("calib.txt"));
    let text_len = std::fs::metadata(dir.join("calib.txt")).unwrap().len();
    let m = manifest(&dir.join("first"));
    let calib = (
        "calibration_text".to_string(),
        "calib.txt".to_string(),
        text_sha.clone(),
        text_len,
    );
    assert_eq!(listed_inputs(&m["inputs"]), std::slice::from_ref(&calib));
    assert_eq!(m["accuracy"]["text_file"]["sha256"], text_sha.as_str());
    assert_eq!(m["accuracy"]["text_file"]["path"], "calib.txt");

    // With the imatrix that build collected, given back as an input.
    let im_path = "first/imatrix.gguf";
    let im = (
        "imatrix".to_string(),
        im_path.to_string(),
        sha256sum(&dir.join(im_path)),
        std::fs::metadata(dir.join(im_path)).unwrap().len(),
    );
    let with_im = ["--bpw", "4.5", "--text", "calib.txt", "--imatrix", im_path];
    let mut args = vec!["build", model, "--target", "m2", "-o", "second"];
    args.extend(with_im);
    at(&args);
    let m = manifest(&dir.join("second"));
    let want = [calib.clone(), im.clone()];
    assert_eq!(listed_inputs(&m["inputs"]), want);

    // `plan --json` lists the same inputs.
    let mut args = vec!["plan", model, "--targets", "m2", "--json"];
    args.extend(with_im);
    let r = at(&args);
    let plan: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(listed_inputs(&plan["inputs"]), want);

    // `eval --json` lists the text it measured on and the imatrix it weighted with.
    let r = run_cmd(kiln().current_dir(dir).args([
        "eval",
        model,
        "second/tiny-llama.gguf",
        "--text",
        "calib.txt",
        "--chunks",
        "1",
        "--weights",
        "--imatrix",
        im_path,
        "--json",
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let e: Value = serde_json::from_str(&r.stdout).unwrap();
    let eval_text = (
        "evaluation_text".to_string(),
        "calib.txt".to_string(),
        text_sha,
        text_len,
    );
    assert_eq!(listed_inputs(&e["inputs"]), [eval_text, im]);
}
