//! The compressed-tensors reader end to end: both tiny fixtures (bf16 and
//! f16) are written with every scheme kiln writes (and the group variants of
//! the goldens), loaded back with `formats::load`, and every tensor is
//! decoded row by row through `Loaded::read_row`. A quantized Linear must
//! decode to exactly `dequant(quant(w))` of the source weights, computed
//! here element by element with `quant::ct`'s quantizers and dequantizers;
//! every other tensor must read back as the source's values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use formats::ct::{assign, CompressedTensors, Scheme};
use formats::write::{self, Container, WriteOptions};
use passes::passes::{Context, Pipeline};
use quant::ct::{self as q, Dtype, Fp8Grain, Weights};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

const SCHEMES: &[(&str, Option<u32>)] = &[
    ("W4A16", None),
    ("W4A16", Some(32)),
    ("W4A16", Some(0)),
    ("W4A16_ASYM", None),
    ("W4A16_ASYM", Some(64)),
    ("W8A16", None),
    ("W8A8", None),
    ("FP8_DYNAMIC", None),
    ("FP8_BLOCK", None),
    ("NVFP4A16", None),
    ("MXFP4A16", None),
];

fn write_artifact(src: &Path, scheme: Scheme, out: &Path) {
    let loaded = formats::load(src, &Default::default()).unwrap();
    let mut model = loaded.model;
    Pipeline::open()
        .run(&mut model, &Context::default())
        .unwrap();
    assign(&mut model, scheme, &[]).unwrap();
    let c = CompressedTensors::new(scheme, &model, &loaded.maps, src).unwrap();
    let files = c.layout(&model).unwrap();
    write::write(
        &model,
        &loaded.maps,
        &c,
        &files,
        out,
        WriteOptions::default(),
        &|_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
}

/// All of a tensor's values, row-major, by its (Hugging Face) name.
fn source_values(loaded: &formats::Loaded) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    loaded
        .model
        .tensors
        .iter()
        .map(|t| {
            let mut v = vec![0f32; t.n_elements()];
            for (r, row) in v.chunks_exact_mut(t.row_len()).enumerate() {
                loaded.read_row(t, r, row);
            }
            (t.source_name.clone(), (t.shape.clone(), v))
        })
        .collect()
}

/// The modules whose NVFP4 global scale is shared with `module`'s.
fn fused(module: &str) -> Vec<String> {
    for set in [
        ["q_proj", "k_proj", "v_proj"].as_slice(),
        &["gate_proj", "up_proj"],
    ] {
        if let Some(s) = set.iter().find(|s| module.ends_with(*s)) {
            let stem = module.trim_end_matches(s);
            return set.iter().map(|o| format!("{stem}{o}")).collect();
        }
    }
    vec![module.to_string()]
}

/// `dequant(quant(w))` for a whole `rows x cols` weight.
fn reference(
    w: &[f32],
    rows: usize,
    cols: usize,
    how: Weights,
    d: Dtype,
    fused_amax: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    match how {
        Weights::Int {
            bits,
            group,
            symmetric,
            ..
        } => {
            let g = if group == 0 { cols } else { group };
            for (o, x) in out.chunks_exact_mut(g).zip(w.chunks_exact(g)) {
                let (lo, hi) = q::min_max(x);
                let p = q::int_params(lo, hi, bits, symmetric, d);
                for (o, &x) in o.iter_mut().zip(x) {
                    *o = q::int_dequantize(q::int_quantize(x, p, bits, d), p, d);
                }
            }
        }
        Weights::Fp8 { scales, .. } => {
            let (br, bc) = match scales {
                Fp8Grain::Tensor => (rows, cols),
                Fp8Grain::Channel => (1, cols),
                Fp8Grain::Block(b) => (b, b),
            };
            let nc = cols.div_ceil(bc);
            let mut scale = vec![0f32; rows.div_ceil(br) * nc];
            for (i, &x) in w.iter().enumerate() {
                let k = (i / cols / br) * nc + (i % cols) / bc;
                scale[k] = scale[k].max(x.abs());
            }
            for s in &mut scale {
                *s = q::fp8_scale(*s, 448.0, d);
            }
            for (i, (o, &x)) in out.iter_mut().zip(w).enumerate() {
                let s = scale[(i / cols / br) * nc + (i % cols) / bc];
                *o = q::fp8_dequantize(q::fp8_quantize(x, s, 448.0, d), s, d);
            }
        }
        Weights::Nvfp4 => {
            let global = q::nvfp4_global_scale(fused_amax, d);
            for (o, x) in out.chunks_exact_mut(16).zip(w.chunks_exact(16)) {
                let s = q::nvfp4_group_scale(q::amax(x), global, d);
                for (o, &x) in o.iter_mut().zip(x) {
                    *o = q::nvfp4_dequantize(q::nvfp4_code(x, s, global), s, global);
                }
            }
        }
        Weights::Mxfp4 => {
            for (o, x) in out.chunks_exact_mut(32).zip(w.chunks_exact(32)) {
                let s = q::mx_scale(q::amax(x), d);
                for (o, &x) in o.iter_mut().zip(x) {
                    *o = q::mx_dequantize(q::mx_code(x, s, d), s);
                }
            }
        }
    }
    out
}

#[test]
fn every_scheme_decodes_to_dequant_of_quant() {
    let mut checked = 0;
    for fixture in ["tiny-llama", "tiny-qwen2"] {
        let src = repo().join("fixtures").join(fixture);
        let source = source_values(&formats::load(&src, &Default::default()).unwrap());
        let d = match fixture {
            "tiny-llama" => Dtype::Bf16,
            _ => Dtype::F16,
        };
        for &(name, group) in SCHEMES {
            let scheme = Scheme::parse(name, group).unwrap();
            let out = tempfile::tempdir().unwrap();
            write_artifact(&src, scheme, out.path());
            let loaded = formats::load(out.path(), &Default::default()).unwrap();
            let ct = loaded.ct.as_ref().expect("read as compressed-tensors");
            let what = format!("{fixture} {name} {group:?}");
            let decoded = source_values(&loaded);
            assert_eq!(
                decoded.keys().collect::<Vec<_>>(),
                source.keys().collect::<Vec<_>>(),
                "{what}: the logical tensors are the source's"
            );
            let mut quantized = 0;
            for t in &loaded.model.tensors {
                let (shape, got) = &decoded[&t.source_name];
                let (src_shape, w) = &source[&t.source_name];
                assert_eq!(shape, src_shape, "{what}: {}", t.source_name);
                let Some(c) = ct.tensor(t) else {
                    assert_eq!(got, w, "{what}: {} kept as stored", t.source_name);
                    continue;
                };
                quantized += 1;
                assert_eq!(
                    c.weights,
                    formats::ct_read::Config::parse(
                        Path::new("config.json"),
                        &serde_json::from_slice(
                            &std::fs::read(out.path().join("config.json")).unwrap()
                        )
                        .unwrap(),
                    )
                    .unwrap()
                    .unwrap()
                    .groups[0]
                        .weights,
                    "{what}"
                );
                let fused_amax = fused(&c.module)
                    .iter()
                    .map(|m| q::amax(&source[&format!("{m}.weight")].1))
                    .fold(0f32, f32::max);
                // NVFP4 and MXFP4 decode to bf16 (compressed-tensors' unpack dtype).
                let want = reference(w, c.rows, c.cols, c.weights, d, fused_amax);
                let differ = got
                    .iter()
                    .zip(&want)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(differ, 0, "{what}: {}: {differ} values differ", c.module);
            }
            assert!(quantized >= 10, "{what}: {quantized} quantized tensors");
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * SCHEMES.len());
}
