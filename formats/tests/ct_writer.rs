//! The compressed-tensors writer end to end: every golden in
//! `fixtures/compressed_tensors/goldens/` (llm-compressor's output for a
//! fixture and a preset) is rewritten by kiln's loader, `ct::assign` and the
//! streaming engine with the [`CompressedTensors`] container, and every
//! stored tensor of kiln's `model.safetensors` must have the golden's dtype,
//! shape and sha256, with the same `quantization_config` (`ignore` as a set;
//! kiln leaves out `scale_dtype`/`zp_dtype` where they are null, which
//! loaders before compressed-tensors 0.13 reject).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use formats::artifact::sha256;
use formats::ct::{assign, CompressedTensors, Scheme};
use formats::write::{self, Container, WriteOptions};
use passes::passes::{Context, Pipeline};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn scheme_of(label: &str) -> Scheme {
    match label {
        "W4A16_G32" => Scheme::parse("W4A16", Some(32)).unwrap(),
        "W4A16_CHANNEL" => Scheme::parse("W4A16", Some(0)).unwrap(),
        "W4A16_ASYM_G64" => Scheme::parse("W4A16_ASYM", Some(64)).unwrap(),
        s => Scheme::parse(s, None).unwrap(),
    }
}

/// Drop null `scale_dtype`/`zp_dtype` (kiln omits them) and sort `ignore`.
fn normalized(mut qc: Value) -> Value {
    if let Some(groups) = qc["config_groups"].as_object_mut() {
        for g in groups.values_mut() {
            for side in ["weights", "input_activations"] {
                if let Some(m) = g[side].as_object_mut() {
                    for k in ["scale_dtype", "zp_dtype"] {
                        if m.get(k) == Some(&Value::Null) {
                            m.shift_remove(k);
                        }
                    }
                }
            }
        }
    }
    if let Some(ig) = qc["ignore"].as_array_mut() {
        ig.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    }
    qc
}

fn read_tensors(path: &Path) -> BTreeMap<String, (String, Vec<u64>, String)> {
    let data = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&data[8..8 + n]).unwrap();
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            let (a, b) = (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            );
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            (
                k,
                (
                    v["dtype"].as_str().unwrap().to_string(),
                    shape,
                    sha256(&data[8 + n + a..8 + n + b]),
                ),
            )
        })
        .collect()
}

#[test]
fn kiln_writes_what_llm_compressor_writes() {
    let dir = repo().join("fixtures/compressed_tensors/goldens");
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let src = repo().join(golden["model"].as_str().unwrap());
        let scheme = scheme_of(golden["scheme"].as_str().unwrap());
        // llm-compressor 0.14 on transformers 5 saves Mixtral's linearized
        // experts as `gate_proj`/`up_proj`/`down_proj`; kiln keeps the
        // checkpoint's `w1`/`w3`/`w2`, the names vLLM's Mixtral loader reads.
        // Same bytes under either name.
        let mixtral = |n: &str| -> String {
            if !n.contains(".block_sparse_moe.experts.") {
                return n.to_string();
            }
            format!("{n}.")
                .replace(".gate_proj.", ".w1.")
                .replace(".up_proj.", ".w3.")
                .replace(".down_proj.", ".w2.")
                .trim_end_matches('.')
                .to_string()
        };
        let ignore: Vec<String> = golden["quantization_config"]["ignore"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| mixtral(v.as_str().unwrap()))
            .collect();
        let loaded = formats::load(&src, &Default::default()).unwrap();
        let mut model = loaded.model;
        Pipeline::open()
            .run(&mut model, &Context::default())
            .unwrap();
        formats::ct::unstack_experts(&mut model);
        assign(&mut model, scheme, &ignore).unwrap();
        let c = CompressedTensors::new(scheme, &model, &loaded.maps, &src).unwrap();
        let files = c.layout(&model).unwrap();
        let out = tempfile::tempdir().unwrap();
        write::write(
            &model,
            &loaded.maps,
            &c,
            &files,
            out.path(),
            WriteOptions::default(),
            &|_| {},
            &AtomicBool::new(false),
        )
        .unwrap();
        let made = read_tensors(&out.path().join("model.safetensors"));
        let mut bad = Vec::new();
        let golden_tensors: serde_json::Map<String, Value> = golden["tensors"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (mixtral(k), v.clone()))
            .collect();
        for (name, w) in &golden_tensors {
            let want = (
                w["dtype"].as_str().unwrap().to_string(),
                w["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect::<Vec<_>>(),
                w["sha256"].as_str().unwrap().to_string(),
            );
            match made.get(name) {
                Some(m) if *m == want => {}
                Some(m) => bad.push(format!(
                    "{name}: kiln {} {:?}, golden {} {:?}",
                    m.0, m.1, want.0, want.1
                )),
                None => bad.push(format!("{name}: missing")),
            }
        }
        for name in made.keys().filter(|k| !golden_tensors.contains_key(*k)) {
            bad.push(format!("{name}: not in the golden"));
        }
        let config: Value =
            serde_json::from_slice(&std::fs::read(out.path().join("config.json")).unwrap())
                .unwrap();
        let (ours, theirs) = (
            normalized(config["quantization_config"].clone()),
            normalized({
                let mut qc = golden["quantization_config"].clone();
                qc["ignore"] = json!(ignore);
                qc
            }),
        );
        // Compared as text: key order is part of the block.
        if serde_json::to_string(&ours).unwrap() != serde_json::to_string(&theirs).unwrap() {
            bad.push(format!(
                "quantization_config:\n    kiln   {ours}\n    golden {theirs}"
            ));
        }
        for side in [
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            if src.join(side).is_file() && !out.path().join(side).is_file() {
                bad.push(format!("{side} not copied"));
            }
        }
        if !bad.is_empty() {
            failures.push(format!("{}:\n  {}", path.display(), bad.join("\n  ")));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 20, "{checked} goldens");
}
