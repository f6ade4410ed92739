//! Tests of the Gemma specs: config reading and refusals, names, metadata.

use serde_json::json;

use super::*;
use crate::arch::{check_convertible, from_hf_config, hf_name, HfName};

fn gemma3_config() -> Value {
    json!({
        "architectures": ["Gemma3ForCausalLM"],
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 7,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
        "vocab_size": 512, "max_position_embeddings": 512, "sliding_window": 8,
        "query_pre_attn_scalar": 32, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
        "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
        "final_logit_softcapping": null, "attn_logit_softcapping": null
    })
}

#[test]
fn reads_gemma3_facts() {
    let a = from_hf_config(&gemma3_config()).unwrap();
    assert_eq!(a.family, "gemma3");
    assert!(
        a.tied_embeddings,
        "Gemma configs default to tied embeddings"
    );
    let g = a.gemma.clone().unwrap();
    assert_eq!((g.sliding_window, g.swa_pattern), (8, 6));
    assert_eq!(g.rope_local_theta, Some(10000.0));
    assert!(g.qk_norm && g.final_softcap.is_none());
    let swa: Vec<bool> = (0..7).map(|i| a.is_swa_layer(i)).collect();
    assert_eq!(swa, [true, true, true, true, true, false, true]);
    assert_eq!(a.kv_positions(0, 100), 8);
    assert_eq!(a.kv_positions(5, 100), 100);
    check_convertible(&gemma3_config()).unwrap();
}

#[test]
fn multimodal_text_config_takes_the_converter_defaults() {
    let cfg = json!({
        "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
            "sliding_window": 1024, "rope_scaling": {"factor": 8.0, "rope_type": "linear"}},
        "vision_config": {"hidden_size": 1152}
    });
    let a = from_hf_config(&cfg).unwrap();
    assert_eq!(
        (a.n_head, a.n_head_kv, a.head_dim, a.vocab),
        (8, 4, 256, 262_208)
    );
    assert_eq!(a.rope_theta, 1_000_000.0);
    assert_eq!(a.gemma.as_ref().unwrap().rope_linear_factor, Some(8.0));
    check_convertible(&cfg).unwrap();
    let md = gemma3_metadata(&a, "m");
    assert_eq!(
        md.get("gemma3.rope.scaling.type")
            .and_then(MetaValue::as_str),
        Some("linear")
    );
    assert_eq!(
        md.get("gemma3.rope.scaling.factor"),
        Some(&MetaValue::F32(8.0))
    );
    assert_eq!(
        md.get("gemma3.attention.sliding_window"),
        Some(&MetaValue::U32(1024))
    );
}

#[test]
fn refuses_what_llama_cpp_cannot_run() {
    let cases: &[(&str, Value, &str)] = &[
        ("hidden_activation", json!("silu"), "`hidden_activation`"),
        (
            "final_logit_softcapping",
            json!(30.0),
            "`final_logit_softcapping`",
        ),
        (
            "attn_logit_softcapping",
            json!(50.0),
            "`attn_logit_softcapping`",
        ),
        (
            "rope_local_base_freq",
            json!(20000.0),
            "`rope_local_base_freq`",
        ),
        (
            "query_pre_attn_scalar",
            json!(64),
            "`query_pre_attn_scalar`",
        ),
        ("sliding_window", json!(0), "`sliding_window`"),
        ("sliding_window", json!(null), "`sliding_window`"),
        (
            "sliding_window_pattern",
            json!(4),
            "`sliding_window_pattern`",
        ),
        (
            "rope_scaling",
            json!({"rope_type": "yarn", "factor": 4.0}),
            "`rope_scaling`",
        ),
        (
            "layer_types",
            json!(vec!["full_attention"; 7]),
            "`layer_types`",
        ),
    ];
    for (field, value, want) in cases {
        let mut cfg = gemma3_config();
        cfg[*field] = value.clone();
        let e = check_convertible(&cfg).unwrap_err().to_string();
        assert!(e.contains(want), "{field}: {e}");
        assert!(e.contains("Gemma3ForCausalLM"), "{e}");
    }
}

#[test]
fn gemma2_needs_its_soft_caps_and_ties() {
    let cfg = json!({
        "architectures": ["Gemma2ForCausalLM"],
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
        "vocab_size": 512, "max_position_embeddings": 512, "sliding_window": 8,
        "query_pre_attn_scalar": 32, "attn_logit_softcapping": 5.0,
        "final_logit_softcapping": 3.0, "hidden_activation": "gelu_pytorch_tanh"
    });
    let a = from_hf_config(&cfg).unwrap();
    check_convertible(&cfg).unwrap();
    let g = a.gemma.clone().unwrap();
    assert_eq!((g.attn_softcap, g.final_softcap), (Some(5.0), Some(3.0)));
    assert!(a.is_swa_layer(0) && !a.is_swa_layer(1));
    let md = gemma2_metadata(&a, "m");
    let keys: Vec<&str> = md.0.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys[2..],
        [
            "gemma2.context_length",
            "gemma2.embedding_length",
            "gemma2.block_count",
            "gemma2.feed_forward_length",
            "gemma2.attention.head_count",
            "gemma2.attention.head_count_kv",
            "gemma2.attention.layer_norm_rms_epsilon",
            "gemma2.attention.key_length",
            "gemma2.attention.value_length",
            "gemma2.attn_logit_softcapping",
            "gemma2.final_logit_softcapping",
            "gemma2.attention.sliding_window",
        ]
    );
    for (field, value) in [
        ("attn_logit_softcapping", json!(null)),
        ("tie_word_embeddings", json!(false)),
        ("rope_theta", json!(500000.0)),
        ("hidden_act", json!("gelu")),
    ] {
        let mut bad = cfg.clone();
        bad[field] = value;
        let e = check_convertible(&bad).unwrap_err().to_string();
        assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
    }
}

#[test]
fn strips_the_multimodal_wrapper_and_drops_vision_tensors() {
    let s = Some(&GEMMA3);
    assert_eq!(
        hf_name(s, "language_model.model.layers.0.self_attn.q_norm.weight"),
        HfName::Map("model.layers.0.self_attn.q_norm.weight".into())
    );
    assert_eq!(
        hf_name(s, "model.language_model.embed_tokens.weight"),
        HfName::Map("model.embed_tokens.weight".into())
    );
    assert!(matches!(
        hf_name(s, "vision_tower.vision_model.x.weight"),
        HfName::Drop(_)
    ));
    assert!(matches!(
        hf_name(s, "model.multi_modal_projector.mm_input_projection_weight"),
        HfName::Drop(_)
    ));
    assert!(matches!(
        hf_name(Some(&GEMMA2), "lm_head.weight"),
        HfName::Drop(_)
    ));
    // Other families rename nothing.
    assert_eq!(
        hf_name(
            Some(&crate::arch::llama::SPEC),
            "language_model.model.norm.weight"
        ),
        HfName::Map("language_model.model.norm.weight".into())
    );
}

#[test]
fn norms_get_plus_one_and_nothing_else_does() {
    let a = Arch::default();
    assert_eq!(
        norm_plus_one(&a, Role::Norm, &[64]),
        Ok(Some(Transform::Add(1.0)))
    );
    assert_eq!(norm_plus_one(&a, Role::AttnQ, &[64, 64]), Ok(None));
}

#[test]
fn estimate_counts_the_tied_head_and_a_sliding_window_cache() {
    // Gemma 3 270M's text config.
    let cfg = json!({
        "architectures": ["Gemma3ForCausalLM"], "hidden_size": 640, "intermediate_size": 2048,
        "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1,
        "head_dim": 256, "vocab_size": 262144, "max_position_embeddings": 32768,
        "sliding_window": 512, "query_pre_attn_scalar": 256, "_sliding_window_pattern": 6
    });
    let a = from_hf_config(&cfg).unwrap();
    check_convertible(&cfg).unwrap();
    let tensors = crate::arch::synthesize(&a);
    assert!(!tensors.iter().any(|t| t.name == "output.weight"));
    assert!(tensors
        .iter()
        .any(|t| t.name == "blk.17.post_ffw_norm.weight"));
    let params: usize = tensors.iter().map(|t| t.n_elements()).sum();
    // The parameter count of the published Gemma 3 270M GGUF.
    assert_eq!(params, 268_098_176);
    // 3 global layers hold the whole context, 15 sliding ones 512 positions.
    let kv = crate::cost::estimate::kv_layers;
    assert_eq!(kv(&a, 32768), 3.0 + 15.0 * 512.0 / 32768.0);
    assert_eq!(kv(&a, 512), 18.0);
    let llama = Arch {
        n_layer: 18,
        ..Arch::default()
    };
    assert_eq!(kv(&llama, 32768), 18.0);
}

#[test]
fn reads_gguf_keys_as_llama_cpp_does() {
    let mut md = Metadata::default();
    md.set("gemma3.attention.sliding_window", MetaValue::U32(512));
    let mut a = Arch {
        family: "gemma3".into(),
        n_layer: 62,
        hidden: 5376,
        n_head: 32,
        head_dim: 128,
        ..Arch::default()
    };
    gguf_gemma3(&md, &mut a);
    let g = a.gemma.unwrap();
    // The 27B rule: 1/sqrt(hidden / heads), not 1/sqrt(head_dim).
    assert_eq!((g.sliding_window, g.query_pre_attn_scalar), (512, 168.0));
    assert_eq!(g.rope_local_theta, Some(10000.0));
    let mut a = Arch {
        family: "gemma2".into(),
        n_layer: 26,
        hidden: 2304,
        n_head: 8,
        head_dim: 256,
        ..Arch::default()
    };
    gguf_gemma2(&Metadata::default(), &mut a);
    let g = a.gemma.unwrap();
    assert_eq!(
        (g.sliding_window, g.attn_softcap, g.final_softcap),
        (4096, Some(50.0), Some(30.0))
    );
    assert_eq!(g.query_pre_attn_scalar, 256.0);
}
