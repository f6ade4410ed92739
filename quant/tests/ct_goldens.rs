//! `quant::ct` against llm-compressor: every golden in
//! `fixtures/compressed_tensors/goldens/` (made by `make_goldens.py` with
//! llm-compressor's round-to-nearest presets) is re-made here from the same
//! fixture checkpoint with [`quant::ct::encode_tensor`], and every stored
//! tensor must have the golden's dtype, shape and sha256.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quant::ct::{encode_tensor, Dtype, Fp8Grain, Weights};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// name -> (dtype, shape, raw bytes)
fn read_safetensors(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let data = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&data[8..8 + n]).unwrap();
    let base = 8 + n;
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let off = v["data_offsets"].as_array().unwrap();
            let (a, b) = (
                off[0].as_u64().unwrap() as usize,
                off[1].as_u64().unwrap() as usize,
            );
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            (
                k,
                (
                    v["dtype"].as_str().unwrap().to_string(),
                    shape,
                    data[base + a..base + b].to_vec(),
                ),
            )
        })
        .collect()
}

fn to_f32(dtype: &str, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        "BF16" => bytes
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect(),
        "F16" => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        "F32" => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        other => panic!("dtype {other}"),
    }
}

/// The weight encoding of a golden's single config group.
fn weights_of(group: &Value) -> Weights {
    let w = &group["weights"];
    let bits = w["num_bits"].as_u64().unwrap() as u8;
    let strategy = w["strategy"].as_str().unwrap();
    let format = group["format"].as_str().unwrap();
    match w["type"].as_str().unwrap() {
        "int" => Weights::Int {
            bits,
            group: if strategy == "group" {
                w["group_size"].as_u64().unwrap() as usize
            } else {
                0
            },
            symmetric: w["symmetric"].as_bool().unwrap(),
            packed: format == "pack-quantized",
        },
        "float" if bits == 8 => Weights::Fp8 {
            scales: match strategy {
                "tensor" => Fp8Grain::Tensor,
                "channel" => Fp8Grain::Channel,
                "block" => Fp8Grain::Block(w["block_structure"][0].as_u64().unwrap() as usize),
                s => panic!("fp8 strategy {s}"),
            },
            max_240: false,
        },
        "float" if strategy == "tensor_group" => Weights::Nvfp4,
        "float" => Weights::Mxfp4,
        t => panic!("type {t}"),
    }
}

/// Which fused group a Linear belongs to (NVFP4 shares a global scale across it).
fn fused_key(module: &str) -> String {
    for (members, tag) in [
        (&["q_proj", "k_proj", "v_proj"][..], "qkv"),
        (&["gate_proj", "up_proj"][..], "gate_up"),
    ] {
        for m in members {
            if let Some(prefix) = module.strip_suffix(m) {
                return format!("{prefix}{tag}");
            }
        }
    }
    module.to_string()
}

#[test]
fn every_golden_matches() {
    let dir = repo().join("fixtures/compressed_tensors/goldens");
    let mut checked = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let golden: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let model = repo().join(golden["model"].as_str().unwrap());
        // llm-compressor 0.14 on transformers 5 saves Mixtral's linearized
        // experts as gate_proj/up_proj/down_proj (the checkpoint's w1/w3/w2).
        let src: BTreeMap<_, _> = read_safetensors(&model.join("model.safetensors"))
            .into_iter()
            .map(|(k, v)| {
                let k = if k.contains(".block_sparse_moe.experts.") {
                    k.replace(".w1.", ".gate_proj.")
                        .replace(".w3.", ".up_proj.")
                        .replace(".w2.", ".down_proj.")
                } else {
                    k
                };
                (k, v)
            })
            .collect();
        let qc = &golden["quantization_config"];
        let groups = qc["config_groups"].as_object().unwrap();
        assert_eq!(groups.len(), 1, "{}", path.display());
        let how = weights_of(groups.values().next().unwrap());
        let ignore: Vec<&str> = qc["ignore"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let linear = |name: &str| name.ends_with("_proj.weight") || name == "lm_head.weight";
        // Fused largest magnitudes for NVFP4.
        let mut fused: BTreeMap<String, f32> = BTreeMap::new();
        for (name, (dt, _, bytes)) in &src {
            let module = name.trim_end_matches(".weight");
            if linear(name) && !ignore.contains(&module) {
                let a = quant::ct::amax(&to_f32(dt, bytes));
                let e = fused.entry(fused_key(module)).or_insert(0.0);
                *e = e.max(a);
            }
        }
        let want = golden["tensors"].as_object().unwrap();
        let mut made: BTreeMap<String, (String, Vec<usize>, String)> = BTreeMap::new();
        for (name, (dt, shape, bytes)) in &src {
            let module = name.trim_end_matches(".weight");
            if !linear(name) || ignore.contains(&module) {
                made.insert(name.clone(), (dt.clone(), shape.clone(), hex(bytes)));
                continue;
            }
            let d = dtype_of(dt);
            let stored = encode_tensor(
                &to_f32(dt, bytes),
                shape[0],
                shape[1],
                how,
                d,
                fused.get(&fused_key(module)).copied(),
            );
            for s in stored {
                made.insert(
                    format!("{module}.{}", s.suffix),
                    (s.dtype.to_string(), s.shape, hex(&s.bytes)),
                );
            }
        }
        let mut bad = Vec::new();
        for (name, w) in want {
            let wd = (
                w["dtype"].as_str().unwrap().to_string(),
                w["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect::<Vec<_>>(),
                w["sha256"].as_str().unwrap().to_string(),
            );
            match made.get(name) {
                Some(m) if *m == wd => {}
                Some(m) => {
                    if let Ok(dump) = std::env::var("KILN_CT_DUMP") {
                        let (module, suffix) = name.rsplit_once('.').unwrap();
                        let s = encode_tensor_for(&src, &fused, how, module, suffix);
                        std::fs::write(format!("{dump}/{name}"), s).unwrap();
                    }
                    bad.push(format!(
                        "{name}: kiln {} {:?}, golden {} {:?}{}",
                        m.0,
                        m.1,
                        wd.0,
                        wd.1,
                        if m.0 == wd.0 && m.1 == wd.1 {
                            " (bytes differ)"
                        } else {
                            ""
                        }
                    ))
                }
                None => bad.push(format!("{name}: not made")),
            }
        }
        for name in made.keys().filter(|k| !want.contains_key(*k)) {
            bad.push(format!("{name}: made but not in the golden"));
        }
        if !bad.is_empty() {
            failures.push(format!("{}:\n  {}", path.display(), bad.join("\n  ")));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        checked >= 8,
        "only {checked} goldens found in {}",
        dir.display()
    );
}

fn encode_tensor_for(
    src: &BTreeMap<String, (String, Vec<usize>, Vec<u8>)>,
    fused: &BTreeMap<String, f32>,
    how: Weights,
    module: &str,
    suffix: &str,
) -> Vec<u8> {
    let (dt, shape, bytes) = &src[&format!("{module}.weight")];
    encode_tensor(
        &to_f32(dt, bytes),
        shape[0],
        shape[1],
        how,
        dtype_of(dt),
        fused.get(&fused_key(module)).copied(),
    )
    .into_iter()
    .find(|s| s.suffix == suffix)
    .unwrap()
    .bytes
}

fn dtype_of(dt: &str) -> Dtype {
    match dt {
        "BF16" => Dtype::Bf16,
        "F16" => Dtype::F16,
        _ => Dtype::F32,
    }
}
