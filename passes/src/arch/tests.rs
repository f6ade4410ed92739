//! Tests of the family specs: tensor tables (round trip, roles agreeing with
//! `naming`), refusals, metadata keys for the fixtures' configs, and the
//! synthesized tensor list against the fixtures' checkpoints.

use serde_json::{json, Value};

use super::*;
use crate::ir::RopeScaling;
use crate::naming;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn fixture_config(name: &str) -> Value {
    let text = std::fs::read(fixture(name).join("config.json")).unwrap();
    serde_json::from_slice(&text).unwrap()
}

/// (name, shape) of every tensor in a fixture's safetensors header.
fn fixture_tensors(name: &str) -> Vec<(String, Vec<usize>)> {
    let bytes = std::fs::read(fixture(name).join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (k.clone(), shape)
        })
        .collect()
}

/// The Hugging Face name a GGUF name comes from under `table` (the inverse
/// of [`map_hf_name`]).
fn hf_name(table: &[TensorRow], gguf: &str) -> Option<String> {
    let (base, suffix) = gguf.rsplit_once('.')?;
    if let Some(r) = table.iter().find(|r| !r.per_layer && r.gguf == base) {
        return Some(format!("{}.{suffix}", r.hf));
    }
    let (layer, part) = base.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let r = table.iter().find(|r| r.per_layer && r.gguf == part)?;
    Some(format!("model.layers.{layer}.{}.{suffix}", r.hf))
}

#[test]
fn registry_finds_specs_by_class_and_gguf_name() {
    assert_eq!(
        spec_for_hf_class("MistralForCausalLM").unwrap().gguf,
        "llama"
    );
    assert_eq!(spec_for_hf_class("Qwen2ForCausalLM").unwrap().gguf, "qwen2");
    assert!(spec_for_hf_class("GPT2LMHeadModel").is_none());
    assert_eq!(spec_for_gguf("qwen2").unwrap().rope, RopeStyle::Neox);
    assert_eq!(spec_for_gguf("llama").unwrap().rope, RopeStyle::Interleaved);
    assert!(spec_for_gguf("mistral").is_none());
    assert_eq!(spec_for_hf_class("Qwen3ForCausalLM").unwrap().gguf, "qwen3");
    assert_eq!(spec_for_gguf("qwen3").unwrap().rope, RopeStyle::Neox);
    assert_eq!(
        supported_list(),
        "LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM, Qwen2MoeForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM, Phi3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration"
    );
    assert_eq!(
        gguf_list(),
        "llama, qwen2, qwen2moe, qwen3, qwen3moe, phi3, gemma2 and gemma3"
    );
    assert_eq!(spec_for_hf_class("Phi3ForCausalLM").unwrap().gguf, "phi3");
    // Mixtral shares llama's GGUF architecture but has its own table.
    let mixtral = Arch {
        family: "llama".into(),
        hf_architecture: Some("MixtralForCausalLM".into()),
        ..Arch::default()
    };
    assert!(std::ptr::eq(
        spec_for_arch(&mixtral).unwrap(),
        &mixtral::SPEC
    ));
    assert!(std::ptr::eq(spec_for_gguf("llama").unwrap(), &llama::SPEC));
}

#[test]
fn maps_llama_names() {
    let t = llama::SPEC.tensors;
    let m = |n: &str| map_hf_name(t, n).unwrap().unwrap();
    assert_eq!(m("model.embed_tokens.weight").0, "token_embd.weight");
    assert_eq!(m("lm_head.weight").0, "output.weight");
    assert_eq!(
        m("model.layers.3.self_attn.o_proj.weight"),
        ("blk.3.attn_output.weight".into(), Role::AttnOutput, Some(3))
    );
    assert_eq!(
        m("model.layers.0.self_attn.q_proj.bias").0,
        "blk.0.attn_q.bias"
    );
    assert_eq!(m("model.layers.1.mlp.down_proj.weight").1, Role::FfnDown);
    assert!(
        map_hf_name(t, "model.layers.0.self_attn.rotary_emb.inv_freq")
            .unwrap()
            .is_none()
    );
    assert!(map_hf_name(t, "transformer.h.0.attn.c_attn.weight").is_err());
    assert!(map_hf_name(t, "model.layers.x.mlp.up_proj.weight")
        .unwrap_err()
        .contains("bad layer index"));
}

#[test]
fn maps_expert_names_to_stacked_tensors() {
    let t = mixtral::SPEC.tensors;
    let m = |n: &str| find_hf_row(t, n).unwrap().unwrap();
    let w2 = m("model.layers.1.block_sparse_moe.experts.12.w2.weight");
    assert_eq!(
        (w2.gguf.as_str(), w2.row.role, w2.layer, w2.expert),
        (
            "blk.1.ffn_down_exps.weight",
            Role::FfnDownExps,
            Some(1),
            Some(12)
        )
    );
    assert_eq!(
        m("model.layers.0.block_sparse_moe.gate.weight").gguf,
        "blk.0.ffn_gate_inp.weight"
    );
    for bad in [
        "model.layers.0.block_sparse_moe.experts.x.w1.weight",
        "model.layers.0.block_sparse_moe.experts..w1.weight",
        "model.layers.0.block_sparse_moe.experts.1.w4.weight",
        "model.layers.0.mlp.gate_proj.weight",
    ] {
        assert!(find_hf_row(t, bad).is_err(), "{bad}");
    }
    let q = qwen2moe::SPEC.tensors;
    let g = find_hf_row(q, "model.layers.0.mlp.shared_expert_gate.weight")
        .unwrap()
        .unwrap();
    assert_eq!(g.gguf, "blk.0.ffn_gate_inp_shexp.weight");
    let e = find_hf_row(q, "model.layers.0.mlp.experts.59.up_proj.weight")
        .unwrap()
        .unwrap();
    assert_eq!(
        (e.gguf.as_str(), e.expert),
        ("blk.0.ffn_up_exps.weight", Some(59))
    );
}

#[test]
fn tensor_tables_round_trip_and_agree_with_naming() {
    for spec in SPECS {
        for r in spec.tensors {
            for suffix in ["weight", "bias"] {
                let hf = if r.per_layer {
                    format!("model.layers.7.{}.{suffix}", r.hf)
                } else {
                    format!("{}.{suffix}", r.hf)
                };
                // A routed expert's name, for expert 3: stacked under one GGUF name.
                let one = hf.replace(EXPERT, "3");
                let m = find_hf_row(spec.tensors, &one).unwrap().unwrap();
                assert_eq!(m.expert, r.is_expert().then_some(3), "{one}");
                let (gguf, role, layer) = map_hf_name(spec.tensors, &one).unwrap().unwrap();
                assert_eq!(role, r.role, "{hf}");
                assert_eq!(layer, r.per_layer.then_some(7), "{hf}");
                assert_eq!(naming::role_and_layer(&gguf), (role, layer), "{gguf}");
                assert_eq!(hf_name(spec.tensors, &gguf).as_deref(), Some(hf.as_str()));
            }
        }
    }
}

#[test]
fn llama_permutes_q_and_k_and_qwen2_transforms_nothing() {
    let arch = Arch {
        n_head: 4,
        n_head_kv: 2,
        ..Arch::default()
    };
    let t = |s: &ArchSpec, role, shape: &[usize]| (s.transform)(&arch, role, shape);
    assert_eq!(
        t(&llama::SPEC, Role::AttnQ, &[256, 256]),
        Ok(Some(Transform::RopePermute { n_head: 4 }))
    );
    assert_eq!(
        t(&llama::SPEC, Role::AttnK, &[128, 256]),
        Ok(Some(Transform::RopePermute { n_head: 2 }))
    );
    assert_eq!(t(&llama::SPEC, Role::AttnV, &[128, 256]), Ok(None));
    assert!(t(&llama::SPEC, Role::AttnQ, &[256])
        .unwrap_err()
        .contains("biases"));
    assert!(t(&llama::SPEC, Role::AttnK, &[6, 256])
        .unwrap_err()
        .contains("cannot be split into 2 heads"));
    assert_eq!(t(&qwen2::SPEC, Role::AttnQ, &[256, 256]), Ok(None));
    assert_eq!(t(&qwen2::SPEC, Role::AttnQ, &[256]), Ok(None));
}

fn with(mut config: Value, key: &str, value: Value) -> Value {
    config[key] = value;
    config
}

#[test]
fn fixtures_configs_are_convertible() {
    for (fx, gguf) in [
        ("tiny-llama", "llama"),
        ("tiny-qwen2", "qwen2"),
        ("tiny-llama-spm", "llama"),
        ("tiny-qwen3", "qwen3"),
        ("tiny-llama31", "llama"),
        ("tiny-phi", "phi3"),
    ] {
        assert_eq!(check_convertible(&fixture_config(fx)).unwrap().gguf, gguf);
    }
}

#[test]
fn refuses_rope_scaling_kiln_cannot_carry_by_name() {
    let err = |fx: &str, v: Value| {
        check_convertible(&with(fixture_config(fx), "rope_scaling", v))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err("tiny-llama", json!({"rope_type": "longrope", "factor": 8.0})),
        "`rope_scaling.rope_type = longrope` is not supported for `LlamaForCausalLM` (kiln carries linear, llama3 and yarn RoPE scaling for it, as llama.cpp does)"
    );
    assert!(err("tiny-llama", json!({"type": "dynamic", "factor": 2.0}))
        .starts_with("`rope_scaling.type = dynamic` is not supported for `LlamaForCausalLM`"));
    assert!(
        err("tiny-qwen2", json!({"rope_type": "llama3", "factor": 8.0})).starts_with(
            "`rope_scaling.rope_type = llama3` is not supported for `Qwen2ForCausalLM`"
        )
    );
    assert!(err("tiny-llama", json!({"rope_type": "made-up"})).contains("made-up"));
    assert_eq!(
        err("tiny-llama", json!({"factor": 8.0})),
        "`rope_scaling` has no `rope_type` (or `type`)"
    );
    assert_eq!(
        err(
            "tiny-llama",
            json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 64})
        ),
        "`rope_scaling.high_freq_factor` is missing (llama3 RoPE scaling needs it)"
    );
    assert_eq!(
        err("tiny-llama", json!({"rope_type": "linear", "factor": 0})),
        "`rope_scaling.factor` is 0: it must be a positive number"
    );
    assert!(
        err("tiny-llama", json!({"rope_type": "linear", "factor": -2.0}))
            .contains("must be a positive number")
    );
    assert!(err("tiny-llama", json!({"rope_type": "linear"}))
        .contains("`rope_scaling.factor` is missing"));
    assert!(err(
        "tiny-qwen2",
        json!({"type": "yarn", "factor": 4.0, "attention_factor": 2.0})
    )
    .contains("would not apply it"));
    assert!(err(
        "tiny-qwen2",
        json!({"type": "yarn", "factor": 4.0, "truncate": false})
    )
    .contains("truncate = false"));
    assert!(err(
        "tiny-llama",
        json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0, "original_max_position_embeddings": 64})
    )
    .contains("must be greater than"));
}

#[test]
fn carries_llama3_linear_and_yarn_scaling() {
    let llama31 = with(
        fixture_config("tiny-llama"),
        "rope_scaling",
        json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    );
    assert!(check_convertible(&llama31).is_ok());
    let arch = from_hf_config(&llama31).unwrap();
    assert_eq!(
        arch.rope_scaling,
        Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 64
        })
    );
    // No key: llama.cpp reads the factors from the tensor.
    let md = llama_cpp_metadata(&arch, "m");
    assert!(md.0.iter().all(|(k, _)| !k.contains("rope.scaling")));
    let t = rope::computed_tensors(&arch);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].name, "rope_freqs.weight");
    assert_eq!(t[0].shape, vec![32]);
    // head_dim 64, theta 1e4: wavelength 2 pi 1e4^(i/32) is below 64/4 for
    // i <= 3 (factor 1) and above 64/1 for i >= 9 (factor 8).
    assert_eq!(&t[0].values[..4], &[1.0; 4]);
    assert!(t[0].values[9..].iter().all(|&v| v == 8.0));
    assert!(t[0].values[4..9]
        .windows(2)
        .all(|w| 1.0 < w[0] && w[0] < w[1] && w[1] < 8.0));

    let qwen_yarn = with(
        fixture_config("tiny-qwen2"),
        "rope_scaling",
        json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}),
    );
    assert!(check_convertible(&qwen_yarn).is_ok());
    let arch = from_hf_config(&qwen_yarn).unwrap();
    let md = llama_cpp_metadata(&arch, "m");
    assert_eq!(
        md.get("qwen2.rope.scaling.type"),
        Some(&MetaValue::String("yarn".into()))
    );
    assert_eq!(
        md.get("qwen2.rope.scaling.factor"),
        Some(&MetaValue::F32(4.0))
    );
    assert_eq!(
        md.get("qwen2.rope.scaling.original_context_length"),
        Some(&MetaValue::U32(128))
    );
    assert!(md.get("qwen2.rope.scaling.yarn_beta_fast").is_none());
    assert!(rope::computed_tensors(&arch).is_empty());

    let linear = with(
        fixture_config("tiny-llama"),
        "rope_scaling",
        json!({"type": "linear", "factor": 2.0}),
    );
    let md = llama_cpp_metadata(&from_hf_config(&linear).unwrap(), "m");
    assert_eq!(
        md.get("llama.rope.scaling.type"),
        Some(&MetaValue::String("linear".into()))
    );
    assert_eq!(
        md.get("llama.rope.scaling.factor"),
        Some(&MetaValue::F32(2.0))
    );
    // transformers v5 writes plain RoPE as `rope_parameters` of type default.
    let v5 = with(
        fixture_config("tiny-llama"),
        "rope_parameters",
        json!({"rope_type": "default", "rope_theta": 10000.0}),
    );
    assert!(check_convertible(&v5).is_ok());
    assert_eq!(from_hf_config(&v5).unwrap().rope_scaling, None);
}

#[test]
fn refuses_other_math_changing_fields() {
    let llama = fixture_config("tiny-llama");
    let err = |c: &Value| check_convertible(c).unwrap_err().to_string();
    assert_eq!(
        err(&with(llama.clone(), "hidden_act", json!("gelu"))),
        "`hidden_act` (\"gelu\"; kiln carries silu) is not supported for LlamaForCausalLM yet"
    );
    let mut mistral = with(
        llama.clone(),
        "architectures",
        json!(["MistralForCausalLM"]),
    );
    assert!(check_convertible(&with(mistral.clone(), "sliding_window", Value::Null)).is_ok());
    // A window as long as the context changes nothing.
    assert!(check_convertible(&with(mistral.clone(), "sliding_window", json!(512))).is_ok());
    mistral = with(mistral, "sliding_window", json!(128));
    assert_eq!(
        err(&mistral),
        "`sliding_window` (128, below the context of 512) is not supported for MistralForCausalLM yet"
    );
    let qwen = with(
        fixture_config("tiny-qwen2"),
        "use_sliding_window",
        json!(true),
    );
    assert_eq!(
        err(&qwen),
        "`use_sliding_window` (true) is not supported for Qwen2ForCausalLM yet"
    );
    let gpt2 = with(llama, "architectures", json!(["GPT2LMHeadModel"]));
    assert_eq!(
        err(&gpt2),
        "architecture `GPT2LMHeadModel` is not supported (supported: LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM, Qwen2MoeForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM, Phi3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration)"
    );
}

#[test]
fn reads_config_fields_and_moe_sizes() {
    let a = from_hf_config(&fixture_config("tiny-qwen2")).unwrap();
    assert_eq!((a.family.as_str(), a.n_layer, a.hidden), ("qwen2", 2, 128));
    assert_eq!((a.n_head, a.n_head_kv, a.head_dim, a.ffn), (4, 2, 32, 352));
    assert!(a.tied_embeddings && !a.is_moe());
    assert_eq!(
        from_hf_config(&json!({"hidden_size": 8})),
        Err(ConfigError::Missing("num_hidden_layers"))
    );
    let moe = json!({
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
        "num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4,
        "intermediate_size": 256, "vocab_size": 100, "n_routed_experts": 8,
        "num_experts_per_tok": 2, "moe_intermediate_size": 32, "n_shared_experts": 2,
        "first_k_dense_replace": 9
    });
    let a = from_hf_config(&moe).unwrap();
    assert_eq!(a.family, "deepseek_v3");
    assert_eq!(
        (a.expert_ffn(), a.shared_ffn, a.n_dense_layers),
        (32, 64, 4)
    );
    assert!(!counts_exactly("deepseek_v3") && counts_exactly("mixtral"));
}

#[test]
fn metadata_keys_for_the_fixtures_configs() {
    for (fx, f) in [("tiny-llama", "llama"), ("tiny-qwen2", "qwen2")] {
        let arch = from_hf_config(&fixture_config(fx)).unwrap();
        let spec = spec_for_gguf(&arch.family).unwrap();
        let md = (spec.gguf_metadata)(&arch, "m");
        let keys: Vec<String> =
            md.0.iter()
                .map(|(k, v)| {
                    let ty = match v {
                        MetaValue::U32(_) => "u32",
                        MetaValue::F32(_) => "f32",
                        MetaValue::String(_) => "str",
                        _ => "other",
                    };
                    format!("{k}:{ty}")
                })
                .collect();
        let expect: Vec<String> = [
            "general.architecture:str",
            "general.name:str",
            "{f}.block_count:u32",
            "{f}.context_length:u32",
            "{f}.embedding_length:u32",
            "{f}.feed_forward_length:u32",
            "{f}.attention.head_count:u32",
            "{f}.attention.head_count_kv:u32",
            "{f}.rope.freq_base:f32",
            "{f}.attention.layer_norm_rms_epsilon:f32",
            "{f}.rope.dimension_count:u32",
            "{f}.vocab_size:u32",
        ]
        .iter()
        .map(|k| k.replace("{f}", f))
        .collect();
        assert_eq!(keys, expect, "{fx}");
        assert_eq!(
            md.get(&format!("{f}.block_count")),
            Some(&MetaValue::U32(2))
        );
    }
    // A head dimension other than hidden / heads adds key and value lengths.
    let arch = Arch {
        family: "llama".into(),
        hidden: 256,
        n_head: 4,
        head_dim: 32,
        ..Arch::default()
    };
    let md = llama_cpp_metadata(&arch, "m");
    assert_eq!(
        md.get("llama.attention.key_length"),
        Some(&MetaValue::U32(32))
    );
    assert_eq!(
        md.get("llama.attention.value_length"),
        Some(&MetaValue::U32(32))
    );
}

#[test]
fn synthesized_tensors_match_the_fixtures_checkpoints() {
    for fx in ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-phi"] {
        let arch = from_hf_config(&fixture_config(fx)).unwrap();
        let table = table_for(Some(&arch));
        let mut loaded: Vec<(String, Vec<usize>, Role)> = fixture_tensors(fx)
            .into_iter()
            .filter_map(|(n, shape)| {
                map_hf_name(table, &n)
                    .unwrap()
                    .map(|(g, role, _)| (g, shape, role))
            })
            .collect();
        let mut synth: Vec<(String, Vec<usize>, Role)> = synthesize(&arch)
            .into_iter()
            .map(|t| (t.name, t.shape, t.role))
            .collect();
        loaded.sort();
        synth.sort();
        assert_eq!(synth, loaded, "{fx}");
    }
}

#[test]
fn phi3_keeps_fused_tensors_and_writes_longrope_and_window_keys() {
    let c = fixture_config("tiny-phi");
    let arch = from_hf_config(&c).unwrap();
    assert_eq!(
        map_hf_name(
            phi3::SPEC.tensors,
            "model.layers.1.self_attn.qkv_proj.weight"
        ),
        Ok(Some((
            "blk.1.attn_qkv.weight".into(),
            Role::AttnQkv,
            Some(1)
        )))
    );
    assert_eq!(
        map_hf_name(phi3::SPEC.tensors, "model.layers.0.mlp.gate_up_proj.weight"),
        Ok(Some(("blk.0.ffn_up.weight".into(), Role::FfnUp, Some(0))))
    );
    assert_eq!(naming::role("blk.1.attn_qkv.weight"), Role::AttnQkv);
    let md = (phi3::SPEC.gguf_metadata)(&arch, "m");
    assert_eq!(
        md.get("phi3.attention.sliding_window"),
        Some(&MetaValue::U32(512))
    );
    assert_eq!(
        md.get("phi3.rope.scaling.type"),
        Some(&MetaValue::String("longrope".into()))
    );
    assert_eq!(
        md.get("phi3.rope.scaling.original_context_length"),
        Some(&MetaValue::U32(64))
    );
    let names: Vec<String> = rope::computed_tensors(&arch)
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(
        names,
        ["rope_factors_long.weight", "rope_factors_short.weight"]
    );
    let err = |key: &str, v: Value| {
        check_convertible(&with(c.clone(), key, v))
            .unwrap_err()
            .to_string()
    };
    assert!(err("rope_scaling", json!({"type": "yarn", "factor": 4.0}))
        .starts_with("`rope_scaling.type = yarn` is not supported for `Phi3ForCausalLM`"));
}

#[test]
fn synthesizes_moe_layers_with_router_and_experts() {
    let arch = Arch {
        family: "mixtral".into(),
        n_layer: 2,
        hidden: 8,
        n_head: 2,
        n_head_kv: 1,
        head_dim: 4,
        ffn: 16,
        vocab: 10,
        n_expert: 4,
        n_expert_used: 2,
        shared_ffn: 6,
        n_dense_layers: 1,
        ..Arch::default()
    };
    let names: Vec<(String, Vec<usize>)> = synthesize(&arch)
        .into_iter()
        .filter(|t| t.layer == Some(1) && t.name.contains("ffn_") && !t.name.contains("norm"))
        .map(|t| (t.name, t.shape))
        .collect();
    let n = |s: &str| format!("blk.1.{s}.weight");
    assert_eq!(
        names,
        vec![
            (n("ffn_gate_inp"), vec![4, 8]),
            (n("ffn_gate_exps"), vec![4, 16, 8]),
            (n("ffn_up_exps"), vec![4, 16, 8]),
            (n("ffn_down_exps"), vec![4, 8, 16]),
            (n("ffn_gate_shexp"), vec![6, 8]),
            (n("ffn_up_shexp"), vec![6, 8]),
            (n("ffn_down_shexp"), vec![8, 6]),
        ]
    );
    let all = synthesize(&arch);
    assert!(all.iter().any(|t| t.name == "blk.0.ffn_gate.weight"));
    let router = all.iter().find(|t| t.role == Role::FfnGateInp).unwrap();
    assert_eq!(router.source.dtype, SourceDType::F32);
}

/// A head count of 2^63 made `2 * n_head` wrap to 0 and the remainder panic.
#[test]
fn rope_permute_refuses_head_counts_whose_double_overflows() {
    let arch = Arch {
        n_head: 1 << 63,
        n_head_kv: usize::MAX,
        ..Arch::default()
    };
    for role in [Role::AttnQ, Role::AttnK] {
        let e = (llama::SPEC.transform)(&arch, role, &[8, 8]).unwrap_err();
        assert!(e.contains("cannot be split"), "{e}");
    }
}

/// The caps and value checks of `limits`, and the tensor check against the
/// table, with the numbers in the messages.
#[test]
fn limits_hold_config_values_to_caps_and_tensors() {
    let c = fixture_config("tiny-llama");
    let err = |c: &Value| from_hf_config(c).unwrap_err().to_string();
    assert_eq!(
        err(&with(c.clone(), "num_attention_heads", json!(1u64 << 63))),
        "`num_attention_heads` is 9223372036854775808, above kiln's cap of 16384 (MAX_HEADS)"
    );
    assert_eq!(
        err(&with(c.clone(), "vocab_size", json!(u64::MAX))),
        "`vocab_size` is 18446744073709551615, above kiln's cap of 16777216 (MAX_VOCAB)"
    );
    assert_eq!(
        err(&with(c.clone(), "num_hidden_layers", json!(-2))),
        "`num_hidden_layers` is not a non-negative integer"
    );
    let a = from_hf_config(&c).unwrap();
    assert_eq!(limits::check_values(&a), Ok(()));
    let bad = |f: fn(&mut Arch)| {
        let mut b = a.clone();
        f(&mut b);
        limits::check_values(&b).unwrap_err().to_string()
    };
    assert!(bad(|b| b.n_head_kv = 3).contains("must divide `num_attention_heads` (4)"));
    assert!(bad(|b| b.rope_theta = f32::NAN).starts_with("`rope_theta` is NaN"));
    assert!(bad(|b| b.rms_eps = -1e-6).starts_with("`rms_norm_eps` is -0.000001"));
    assert!(bad(|b| b.ffn = 0).starts_with("`intermediate_size` is 0"));

    let tensors = fixture_tensors("tiny-llama");
    fn view(t: &[(String, Vec<usize>)]) -> Vec<(&str, &[usize])> {
        t.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect()
    }
    let table = table_for(Some(&a));
    assert_eq!(limits::check_tensors(&a, table, view(&tensors)), Ok(()));
    let mut big_vocab = a.clone();
    big_vocab.vocab = 512_001_536;
    let e = limits::check_tensors(&big_vocab, table, view(&tensors))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("`vocab_size` is 512001536 but tensor `"),
        "{e}"
    );
    let mut fewer = a.clone();
    fewer.n_layer -= 1;
    let e = limits::check_tensors(&fewer, table, view(&tensors))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("`num_hidden_layers` is 1 but tensor `model.layers.1."),
        "{e}"
    );
    // A per-layer weight or bias the family's layers have, absent from one
    // layer (llama.cpp would refuse the file), for every committed fixture.
    for fx in [
        "tiny-llama",
        "tiny-qwen2",
        "tiny-qwen3",
        "tiny-phi",
        "tiny-qwen2-moe",
        "tiny-qwen3-moe",
    ] {
        let a = from_hf_config(&fixture_config(fx)).unwrap();
        let table = table_for(Some(&a));
        let all = fixture_tensors(fx);
        assert_eq!(limits::check_tensors(&a, table, view(&all)), Ok(()), "{fx}");
        let layer1 = all.iter().filter(|(n, _)| n.starts_with("model.layers.1."));
        for (gone, _) in layer1.filter(|(n, _)| !n.contains(".experts.")) {
            let rest: Vec<_> = all.iter().filter(|(n, _)| n != gone).cloned().collect();
            let e = limits::check_tensors(&a, table, view(&rest))
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                format!("tensor `{gone}` is missing (every layer of this family has one)"),
                "{fx}"
            );
        }
    }
}

#[test]
fn qwen3_maps_q_k_norms_and_writes_head_dim_lengths() {
    let t = qwen3::SPEC.tensors;
    let m = |n: &str| map_hf_name(t, n).unwrap().unwrap();
    assert_eq!(
        m("model.layers.1.self_attn.q_norm.weight"),
        ("blk.1.attn_q_norm.weight".into(), Role::Norm, Some(1))
    );
    assert_eq!(
        m("model.layers.0.self_attn.k_norm.weight").0,
        "blk.0.attn_k_norm.weight"
    );
    // llama and qwen2 have no such tensors: refused by name there.
    assert!(map_hf_name(
        llama::SPEC.tensors,
        "model.layers.0.self_attn.q_norm.weight"
    )
    .is_err());
    let arch = from_hf_config(&fixture_config("tiny-qwen3")).unwrap();
    assert_eq!((arch.hidden, arch.n_head, arch.head_dim), (128, 4, 64));
    let md = (qwen3::SPEC.gguf_metadata)(&arch, "m");
    let keys: Vec<&str> = md.0.iter().map(|(k, _)| k.as_str()).collect();
    let at = |k: &str| keys.iter().position(|x| *x == k).unwrap();
    assert_eq!(
        md.get("qwen3.attention.key_length"),
        Some(&MetaValue::U32(64))
    );
    assert_eq!(
        md.get("qwen3.attention.value_length"),
        Some(&MetaValue::U32(64))
    );
    assert_eq!(
        at("qwen3.attention.value_length") + 1,
        at("qwen3.rope.dimension_count")
    );
    // Written even when head_dim happens to equal hidden / heads (as llama.cpp does).
    let same = Arch {
        head_dim: 32,
        ..arch.clone()
    };
    let md = (qwen3::SPEC.gguf_metadata)(&same, "m");
    assert_eq!(
        md.get("qwen3.attention.key_length"),
        Some(&MetaValue::U32(32))
    );
    assert_eq!(
        md.0.iter()
            .filter(|(k, _)| k == "qwen3.attention.key_length")
            .count(),
        1
    );
    let c = with(fixture_config("tiny-qwen3"), "attention_bias", json!(true));
    assert_eq!(
        check_convertible(&c).unwrap_err().to_string(),
        "`attention_bias` (true) is not supported for Qwen3ForCausalLM yet"
    );
}

/// The committed fixtures whose config.json names one of `spec`'s classes.
fn fixtures_of(spec: &ArchSpec) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let dir = fixture("");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let Ok(text) = std::fs::read(dir.join(&name).join("config.json")) else {
            continue;
        };
        let c: Value = serde_json::from_slice(&text).unwrap();
        let class = c["architectures"][0].as_str().unwrap_or("").to_string();
        if spec.hf_classes.contains(&class.as_str()) {
            out.push((name, c));
        }
    }
    out
}

/// A value for `field` other than `current`: what each field a family reads
/// or refuses is tested with. A field added to [`fields::COMMON`], a spec's
/// `reads` or its `refused` rules without a case here fails
/// [`every_config_field_a_family_reads_or_refuses_is_tested`].
fn field_case(field: &str, current: Option<&Value>) -> Option<Value> {
    let int = |v: u64| current.and_then(Value::as_u64).map_or(v, |c| c + v);
    Some(match field {
        // Carried: each must change what kiln writes.
        "num_hidden_layers" => json!(int(1)),
        "hidden_size" => json!(int(64)),
        "num_attention_heads" => json!(int(4)),
        "num_key_value_heads" => json!(int(1)),
        // Absent, head_dim is hidden / heads (16 in tiny-qwen2-moe): 24
        // is no fixture's.
        "head_dim" => json!(current.and_then(Value::as_u64).map_or(24, |c| c + 16)),
        "intermediate_size" => json!(int(32)),
        "vocab_size" => json!(int(8)),
        "max_position_embeddings" => json!(int(1024)),
        "rope_theta" => json!(12345.0),
        "rms_norm_eps" => json!(0.001),
        "tie_word_embeddings" => json!(!current.and_then(Value::as_bool).unwrap_or(false)),
        "num_local_experts" | "num_experts" => json!(int(2)),
        "num_experts_per_tok" => json!(int(1)),
        "moe_intermediate_size" | "shared_expert_intermediate_size" => json!(int(32)),
        // Refused: each must be refused by name when set.
        "original_max_position_embeddings" => json!(int(32)),
        // Refused: each must be refused by name when set (`dynamic` scaling
        // is carried by no family).
        "rope_scaling" => json!({"rope_type": "dynamic", "factor": 4.0}),
        "hidden_act" => json!("gelu"),
        "hidden_activation" => json!("silu"),
        "use_bidirectional_attention" => json!(true),
        // Read (v5's RoPE block): YaRN, carried by some families and refused
        // by name (`rope_parameters...`) by the others.
        "rope_parameters" => json!({"rope_type": "yarn", "factor": 4.0}),
        "use_sliding_window" | "attention_bias" | "mlp_bias" => json!(true),
        "sliding_window" => json!(16),
        "partial_rotary_factor" => json!(0.75),
        // Refused unless the family's graph: Qwen2-MoE never renormalizes,
        // Qwen3-MoE always does.
        "norm_topk_prob" => json!(!current.and_then(Value::as_bool).unwrap_or(false)),
        "decoder_sparse_step" => json!(2),
        "mlp_only_layers" => json!([0]),
        _ => return None,
    })
}

/// What kiln makes of a config: the architecture facts, the GGUF keys and
/// the tensor list an estimate counts.
fn outcome(spec: &ArchSpec, c: &Value) -> String {
    let arch = from_hf_config(c).unwrap();
    let md = (spec.gguf_metadata)(&arch, "m");
    let shapes: Vec<(String, Vec<usize>)> = synthesize(&arch)
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect();
    format!("{arch:?}\n{md:?}\n{shapes:?}")
}

/// Issue 15: no config field that changes the math is dropped silently.
/// Every field each family reads must change the output when changed, and
/// every field it refuses must be refused by name; the lists are the
/// specs' own, so a field added to a spec without a case here fails.
#[test]
fn every_config_field_a_family_reads_or_refuses_is_tested() {
    for spec in SPECS {
        let fxs = fixtures_of(spec);
        assert!(
            !fxs.is_empty(),
            "{}: no committed fixture to test its config fields on",
            spec.gguf
        );
        for (fx, base) in &fxs {
            let base_out = outcome(spec, base);
            let read = fields::COMMON.iter().chain(spec.reads);
            for field in read {
                let v = field_case(field, base.get(*field)).unwrap_or_else(|| {
                    panic!(
                        "{}: field `{field}` is read but has no case in field_case",
                        spec.gguf
                    )
                });
                let mut changed = with(base.clone(), field, v.clone());
                // Gemma ties the query scale to head_dim (llama.cpp has no
                // key for another): a consistent config changes both.
                let scalar = base.get("query_pre_attn_scalar");
                if *field == "head_dim" && scalar.is_some() && scalar == base.get("head_dim") {
                    changed["query_pre_attn_scalar"] = v.clone();
                }
                // A per-layer list follows the layer count.
                if let (true, Some(Value::Array(types))) = (
                    *field == "num_hidden_layers",
                    changed.get_mut("layer_types"),
                ) {
                    let n = v.as_u64().unwrap() as usize;
                    let len = types.len();
                    for i in len..n {
                        types.push(types[i % len].clone());
                    }
                }
                // A family's own check may refuse a common field's other
                // values by name (gemma2's RoPE base): not dropped either.
                if let Err(e) = check_convertible(&changed) {
                    let e = e.to_string();
                    assert!(
                        e.starts_with(&format!("`{field}`"))
                            || e.starts_with(&format!("`{field}.")),
                        "{fx}: `{field}` = {v} is refused for another reason, but {} reads it: {e}",
                        spec.gguf
                    );
                    continue;
                }
                assert_ne!(
                    outcome(spec, &changed),
                    base_out,
                    "{fx}: `{field}` = {v} changes nothing kiln writes, yet {} reads it",
                    spec.gguf
                );
            }
            for rule in spec.refused {
                let field = rule.field();
                let v = field_case(field, base.get(field)).unwrap_or_else(|| {
                    panic!(
                        "{}: field `{field}` is refused but has no case in field_case",
                        spec.gguf
                    )
                });
                let e = check_convertible(&with(base.clone(), field, v.clone()))
                    .expect_err(&format!("{fx}: `{field}` = {v} is not refused"));
                assert!(e.to_string().starts_with(&format!("`{field}")), "{fx}: {e}");
            }
            // The fixture's own fields are all accounted for (no warning).
            assert_eq!(
                fields::unknown_fields(spec, base),
                Vec::<String>::new(),
                "{fx}"
            );
        }
    }
}

#[test]
fn unknown_config_fields_are_listed_for_a_warning() {
    let mut c = fixture_config("tiny-qwen3");
    c["rope_parameters"] = json!({"rope_theta": 5e5});
    c["layer_norm_type"] = json!("nonparametric");
    c["zz\u{1b}[31m"] = json!(1);
    assert_eq!(
        fields::unknown_fields(&qwen3::SPEC, &c),
        vec!["layer_norm_type".to_string(), "zz\\u{1b}[31m".to_string()]
    );
    // Every refused field is known; so is every field of `COMMON`.
    for spec in SPECS {
        for r in spec.refused {
            assert!(fields::known(spec, r.field()));
        }
        assert!(fields::COMMON.iter().all(|f| fields::known(spec, f)));
    }
}

/// Qwen3-MoE: qwen3's q/k norms and key lengths, routed experts without a
/// shared expert, top-k renormalized as llama.cpp's `qwen3moe` graph does,
/// and the synthesized tensors equal to the fixture checkpoint's (experts
/// stacked).
#[test]
fn qwen3moe_maps_norms_and_experts_and_writes_moe_keys() {
    let c = fixture_config("tiny-qwen3-moe");
    assert!(std::ptr::eq(
        check_convertible(&c).unwrap(),
        &qwen3moe::SPEC
    ));
    let arch = from_hf_config(&c).unwrap();
    assert_eq!(arch.family, "qwen3moe");
    assert_eq!((arch.n_expert, arch.n_expert_used), (4, 2));
    assert_eq!(
        (arch.expert_ffn(), arch.shared_ffn, arch.head_dim),
        (96, 0, 32)
    );
    assert!(moe_norm_top_k("qwen3moe") && !moe_norm_top_k("qwen2moe"));
    let md = (qwen3moe::SPEC.gguf_metadata)(&arch, "m");
    let u = |k: &str| match md.get(&format!("qwen3moe.{k}")) {
        Some(MetaValue::U32(v)) => Some(*v),
        _ => None,
    };
    assert_eq!(u("attention.key_length"), Some(32));
    assert_eq!(u("attention.value_length"), Some(32));
    assert_eq!(u("expert_count"), Some(4));
    assert_eq!(u("expert_used_count"), Some(2));
    assert_eq!(u("expert_feed_forward_length"), Some(96));
    assert_eq!(u("feed_forward_length"), Some(192));
    assert_eq!(u("expert_shared_feed_forward_length"), None);

    let t = qwen3moe::SPEC.tensors;
    let m = |n: &str| find_hf_row(t, n).unwrap().unwrap();
    assert_eq!(
        m("model.layers.1.self_attn.k_norm.weight").gguf,
        "blk.1.attn_k_norm.weight"
    );
    let e = m("model.layers.0.mlp.experts.127.down_proj.weight");
    assert_eq!(
        (e.gguf.as_str(), e.expert),
        ("blk.0.ffn_down_exps.weight", Some(127))
    );
    for bad in [
        "model.layers.0.mlp.shared_expert.up_proj.weight",
        "model.layers.0.mlp.shared_expert_gate.weight",
        "model.layers.0.mlp.gate_proj.weight",
    ] {
        assert!(find_hf_row(t, bad).is_err(), "{bad}");
    }

    // The checkpoint's tensors, experts stacked, are what a config-only
    // estimate counts.
    let mut loaded: Vec<(String, Vec<usize>)> = Vec::new();
    for (n, shape) in fixture_tensors("tiny-qwen3-moe") {
        let hit = find_hf_row(t, &n).unwrap().unwrap();
        let shape = match hit.expert {
            None => shape,
            Some(_) => [vec![arch.n_expert], shape].concat(),
        };
        if !loaded.iter().any(|(g, _)| *g == hit.gguf) {
            loaded.push((hit.gguf, shape));
        }
    }
    let mut synth: Vec<(String, Vec<usize>)> = synthesize(&arch)
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect();
    loaded.sort();
    synth.sort();
    assert_eq!(synth, loaded);

    for (field, value, want) in [
        (
            "norm_topk_prob",
            json!(false),
            "`norm_topk_prob` (false; kiln carries true) is not supported for Qwen3MoeForCausalLM yet",
        ),
        (
            "norm_topk_prob",
            Value::Null,
            "`norm_topk_prob` (absent, i.e. false; kiln carries true) is not supported for Qwen3MoeForCausalLM yet",
        ),
        (
            "mlp_only_layers",
            json!([1]),
            "`mlp_only_layers` ([1]) is not supported for Qwen3MoeForCausalLM yet",
        ),
    ] {
        let e = check_convertible(&with(c.clone(), field, value)).unwrap_err();
        assert_eq!(e.to_string(), want);
    }
    let mut absent = c.clone();
    absent.as_object_mut().unwrap().remove("norm_topk_prob");
    assert!(check_convertible(&absent).is_err());
}

/// transformers v5's `rope_parameters` reads as the v4 fields it replaces:
/// the same architecture, GGUF keys and tensors.
#[test]
fn v5_rope_parameters_read_as_the_v4_fields() {
    let drop = |mut c: Value, keys: &[&str]| {
        for k in keys {
            c.as_object_mut().unwrap().remove(*k);
        }
        c
    };
    // Plain RoPE with another base.
    let v4 = with(fixture_config("tiny-qwen3"), "rope_theta", json!(5e5));
    let v5 = with(
        drop(fixture_config("tiny-qwen3"), &["rope_theta"]),
        "rope_parameters",
        json!({"rope_type": "default", "rope_theta": 5e5}),
    );
    let mut cases = vec![(&qwen3::SPEC, v4, v5)];
    // Llama 3.1's scaling (the rope_freqs tensor).
    let v4 = fixture_config("tiny-llama31");
    let mut block = v4["rope_scaling"].clone();
    block["rope_theta"] = v4["rope_theta"].clone();
    let v5 = with(
        drop(v4.clone(), &["rope_scaling", "rope_theta"]),
        "rope_parameters",
        block,
    );
    cases.push((&llama::SPEC, v4, v5));
    // Gemma 3: one entry per layer type, linear scaling on global layers.
    let v4 = with(
        fixture_config("tiny-gemma3"),
        "rope_scaling",
        json!({"rope_type": "linear", "factor": 8.0}),
    );
    let v5 = with(
        drop(
            v4.clone(),
            &["rope_scaling", "rope_theta", "rope_local_base_freq"],
        ),
        "rope_parameters",
        json!({
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        }),
    );
    cases.push((&gemma::GEMMA3, v4, v5));
    for (spec, v4, v5) in cases {
        check_convertible(&v4).unwrap();
        check_convertible(&v5).unwrap_or_else(|e| panic!("{}: {e}", spec.gguf));
        assert_eq!(outcome(spec, &v5), outcome(spec, &v4), "{}", spec.gguf);
        assert!(fields::unknown_fields(spec, &v5).is_empty());
    }
    // The base really is read (not the default).
    let md = llama_cpp_metadata(
        &from_hf_config(&with(
            drop(fixture_config("tiny-qwen3"), &["rope_theta"]),
            "rope_parameters",
            json!({"rope_theta": 5e5}),
        ))
        .unwrap(),
        "m",
    );
    assert_eq!(md.get("qwen3.rope.freq_base"), Some(&MetaValue::F32(5e5)));
}

/// What v5's block could say that kiln does not carry is refused by name.
#[test]
fn v5_rope_parameters_refusals_name_the_field() {
    let err = |c: Value| check_convertible(&c).unwrap_err().to_string();
    let qwen3 = fixture_config("tiny-qwen3");
    let llama = fixture_config("tiny-llama");
    let gemma3 = fixture_config("tiny-gemma3");
    let set = |c: &Value, v: Value| with(c.clone(), "rope_parameters", v);
    for (c, want) in [
        (
            set(&qwen3, json!({"rope_type": "yarn", "factor": 4.0})),
            "`rope_parameters` (type yarn) is not supported for Qwen3ForCausalLM yet",
        ),
        (
            set(&llama, json!({"rope_type": "dynamic", "factor": 4.0})),
            "`rope_parameters.rope_type = dynamic` is not supported for `LlamaForCausalLM`",
        ),
        (
            set(&qwen3, json!({"rope_theta": 5e5})),
            "`rope_parameters.rope_theta` (500000) contradicts `rope_theta` (1000000.0) beside it",
        ),
        (
            set(&llama, json!({"rope_type": "default", "partial_rotary_factor": 0.5})),
            "`rope_parameters.partial_rotary_factor = 0.5` is not supported: kiln rotates whole heads",
        ),
        (
            set(&llama, json!({"rope_type": "default", "rope_thetta": 1e4})),
            "`rope_parameters.rope_thetta` is unknown to kiln",
        ),
        (
            set(&llama, json!([1, 2])),
            "`rope_parameters` is not an object",
        ),
        (
            set(
                &llama,
                json!({"full_attention": {"rope_theta": 1e4}, "sliding_attention": {"rope_theta": 5e4}}),
            ),
            "`rope_parameters` (sliding_attention.rope_theta 50000.0 differs from full_attention's",
        ),
        (
            set(
                &gemma3,
                json!({"full_attention": {"rope_theta": 1e6}, "sliding_attention": {"rope_type": "linear", "factor": 2.0}}),
            ),
            "`rope_parameters.sliding_attention.rope_type = linear` is not supported",
        ),
        (
            set(&gemma3, json!({"full_attention": {"rope_theta": 1e6}, "chunked_attention": {}})),
            "`rope_parameters.chunked_attention` is not a layer type kiln knows",
        ),
        (
            with(
                set(&llama, json!({"rope_type": "linear", "factor": 2.0})),
                "rope_scaling",
                json!({"rope_type": "linear", "factor": 4.0}),
            ),
            "`rope_parameters` and `rope_scaling` both set RoPE scaling, differently",
        ),
    ] {
        let e = err(c);
        assert!(e.starts_with(want), "{e}\nwanted: {want}");
    }
}
