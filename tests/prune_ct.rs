//! `kiln build --engine vllm --prune-candidates`: pruning weighed with
//! compressed-tensors plans. On a copy of tiny-llama whose second block does
//! almost nothing (its output projections scaled by 1e-3), removing that
//! block measures better than any plan of the whole model at the same bytes:
//! the artifact is the pruned model (config.json, tensors, quantization
//! groups agree), and `kiln eval` of it against the unpruned original gives
//! the figure the build measured. On the fixture itself every pruning
//! measures worse, and the artifact is the one the build without candidates
//! writes. `kiln plan --engine vllm` lists the same options.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;

/// tiny-llama with block 1's `o_proj` and `down_proj` scaled by 1e-3 (BF16,
/// rounded to nearest even): the block adds almost nothing to the residual.
fn idle_block_fixture(dir: &Path) -> PathBuf {
    let src = fixture("tiny-llama");
    let dst = dir.join("idle-block");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let path = dst.join("model.safetensors");
    let mut b = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    for name in [
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ] {
        assert_eq!(h[name]["dtype"], "BF16");
        let off = &h[name]["data_offsets"];
        let (lo, hi) = (
            8 + n + off[0].as_u64().unwrap() as usize,
            8 + n + off[1].as_u64().unwrap() as usize,
        );
        for v in b[lo..hi].chunks_exact_mut(2) {
            let x = f32::from_bits((u16::from_le_bytes([v[0], v[1]]) as u32) << 16) * 1e-3;
            let bits = x.to_bits();
            let r = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
            v.copy_from_slice(&r.to_le_bytes());
        }
    }
    std::fs::write(&path, b).unwrap();
    dst
}

/// `kiln build MODEL --target h100-sxm --engine vllm --bpw 5 --objective
/// accuracy` with `texts`' calibration and held-out halves, ctx 64.
pub(crate) fn build_ct(model: &Path, dir: &Path, out: &str, extra: &[&str]) -> (PathBuf, Value) {
    let (calib, held) = crate::gptq::texts(dir);
    let out = dir.join(out);
    let mut a = vec![
        "build",
        s(model),
        "--target",
        "h100-sxm",
        "--engine",
        "vllm",
        "--bpw",
        "5",
        "--objective",
        "accuracy",
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
    let r = run(&a);
    assert_eq!(r.code, 0, "{a:?}: {}", r.stderr);
    let m: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    (out, m)
}

fn tensor_names(path: &Path) -> Vec<String> {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Map<String, Value> = serde_json::from_slice(&b[8..8 + n]).unwrap();
    h.keys().filter(|k| *k != "__metadata__").cloned().collect()
}

#[test]
fn a_pruning_that_measures_better_is_built_as_compressed_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let model = idle_block_fixture(dir.path());
    let (out, m) = build_ct(
        &model,
        dir.path(),
        "pruned",
        &["--prune-candidates", "auto"],
    );
    let p = &m["pruning"];
    let opts = p["options"].as_array().unwrap();
    assert_eq!(opts[0]["spec"], "none");
    let kld = |o: &Value| o["measured"]["kld_mean"].as_f64();
    let weighed: Vec<&Value> = opts.iter().filter(|o| kld(o).is_some()).collect();
    assert!(weighed.len() >= 4, "{p}");
    // The idle block is the one removed, and it wins by measurement.
    assert_eq!(p["chosen"], "layers=1", "{p}");
    let best = weighed
        .iter()
        .min_by(|a, b| kld(a).partial_cmp(&kld(b)).unwrap())
        .unwrap();
    assert_eq!(best["resolved"], "layers=1");
    assert_eq!(best["chosen"], true);
    assert_eq!(opts.iter().filter(|o| o["chosen"] == true).count(), 1);
    assert!(kld(best).unwrap() < kld(&opts[0]).unwrap(), "{p}");
    // The same budget for every option (an explicit --bpw: no KV credit),
    // none over it.
    let budget = opts[0]["tensor_bytes"].as_u64().unwrap();
    for o in &weighed {
        assert_eq!(o["budget_tensor_bytes"].as_u64(), Some(budget), "{o}");
        assert!(o["tensor_bytes"].as_u64().unwrap() <= budget, "{o}");
    }
    // The plan row of the comparison is the pruned plan, at its measurement.
    let row = &m["compared"][0];
    assert!(
        row["name"].as_str().unwrap().contains("pruned `layers=1`"),
        "{row}"
    );
    assert_eq!(row["measured_kld"].as_f64(), kld(best));

    // The artifact is the pruned model.
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 1);
    assert_eq!(cfg["num_key_value_heads"], 2);
    let names = tensor_names(&out.join("model.safetensors"));
    assert!(names.iter().any(|n| n.starts_with("model.layers.0.")));
    assert!(
        !names.iter().any(|n| n.starts_with("model.layers.1.")),
        "{names:?}"
    );
    let groups = cfg["quantization_config"]["config_groups"].to_string();
    assert!(groups.contains("model.layers.0."), "{groups}");
    assert!(!groups.contains("model.layers.1."), "{groups}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Pruning weighed with quantization"));
    assert!(report.contains("Built with pruning `layers=1`"), "{report}");

    // `kiln eval` of the artifact against the unpruned original measures
    // what the build measured.
    let (_, held) = crate::gptq::texts(dir.path());
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
    let built = kld(best).unwrap();
    assert!(
        (measured - built).abs() <= 1e-6 * built,
        "eval of the artifact {measured} vs the build's measurement {built}"
    );
}

#[test]
fn prunings_that_measure_worse_leave_the_artifact_unpruned() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-llama");
    let (out, m) = build_ct(
        &model,
        dir.path(),
        "weighed",
        &[
            "--prune-candidates",
            "ffn=0.75",
            "--prune-candidates",
            "layers=auto:1",
        ],
    );
    let p = &m["pruning"];
    assert_eq!(p["chosen"], Value::Null, "{p}");
    let opts = p["options"].as_array().unwrap();
    assert_eq!(opts[0]["chosen"], true);
    let none = opts[0]["measured"]["kld_mean"].as_f64().unwrap();
    for o in &opts[1..] {
        assert!(o["measured"]["kld_mean"].as_f64().unwrap() > none, "{o}");
    }
    let (base, m0) = build_ct(&model, dir.path(), "plain", &[]);
    assert!(m0.get("pruning").is_none());
    for f in ["model.safetensors", "config.json"] {
        assert!(
            std::fs::read(out.join(f)).unwrap() == std::fs::read(base.join(f)).unwrap(),
            "{f}: a rejected pruning changed the artifact"
        );
    }
    assert_eq!(m["compared"][0]["measured_kld"].as_f64(), Some(none));
}

#[test]
fn plan_lists_compressed_tensors_plans_with_and_without_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let model = idle_block_fixture(dir.path());
    let (calib, held) = crate::gptq::texts(dir.path());
    let args = [
        "plan",
        s(&model),
        "--targets",
        "h100-sxm",
        "--engine",
        "vllm",
        "--bpw",
        "5",
        "--objective",
        "accuracy",
        "--text",
        s(&calib),
        "--eval-text",
        s(&held),
        "--ctx",
        "64",
        "--json",
        "--quiet",
    ];
    let r = run(&[&args[..], &["--prune-candidates", "layers=auto:1"]].concat());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j: Value = serde_json::from_str(&r.stdout).unwrap();
    let p = &j["targets"][0]["pruning"];
    assert_eq!(p["chosen"], "layers=1", "{p}");
    assert_eq!(p["options"].as_array().unwrap().len(), 2);
    let r = run(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(j["targets"][0].get("pruning").is_none());
}

/// `--gptq` beside the candidates: the pruned plan's integer Linears are
/// GPTQ-rounded on the pruned model, measured against the unpruned original,
/// and `kiln eval` of the artifact gives the build's figure.
#[test]
fn a_pruned_plan_is_gptq_rounded_and_measured_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let model = idle_block_fixture(dir.path());
    let (out, m) = build_ct(
        &model,
        dir.path(),
        "pruned-gptq",
        &["--prune-candidates", "auto", "--gptq"],
    );
    assert_eq!(m["pruning"]["chosen"], "layers=1");
    let g = &m["gptq"];
    let row = &m["compared"][0];
    let built = row["measured_kld"].as_f64().unwrap();
    if g["applied"] == true {
        assert!(row["name"].as_str().unwrap().ends_with("GPTQ"), "{row}");
        assert_eq!(g["with"]["kld_mean"].as_f64(), Some(built));
    }
    let (_, held) = crate::gptq::texts(dir.path());
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
        (measured - built).abs() <= 1e-6 * built,
        "eval of the artifact {measured} vs the build's measurement {built}"
    );
}
