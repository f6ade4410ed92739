//! GGUF tensor names: the one place that says what a name means. For a name
//! such as `blk.3.attn_v.weight` it answers the tensor's [`Role`] and layer,
//! llama.cpp's recipe [`Category`], and llama.cpp's loader order.
//!
//! What must stay true:
//! - [`loader_order`] is llama.cpp's `weight_name_comparer` (non-block
//!   tensors first, then by block number as `sscanf(name, "blk.%d.")` reads
//!   it, then by name bytes): normalize sorts by it and the recipe pass visits
//!   tensors in it, so both agree with llama-quantize;
//! - [`category`] is llama.cpp's `tensor_category` (substring matches, in
//!   its order), because the recipe's counters depend on it;
//! - [`role`] of a GGUF name equals the role the architecture tables
//!   (`crate::arch`) give the Hugging Face tensor it comes from (tested there).

use std::cmp::Ordering;

use crate::ir::{Role, TensorNode};

/// Role and layer of a tensor in GGUF naming.
pub fn role_and_layer(name: &str) -> (Role, Option<usize>) {
    (role(name), layer(name))
}

/// The layer of a `blk.N.*` tensor.
pub fn layer(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?;
    rest.split_once('.').unwrap_or((rest, "")).0.parse().ok()
}

/// What a tensor in GGUF naming does. Merged experts (`*_exps`), shared
/// experts (`*_shexp`) and the router (`ffn_gate_inp`) are told apart first,
/// as llama.cpp's names nest them (`ffn_gate_inp_shexp` is a shared-expert
/// gate).
pub fn role(name: &str) -> Role {
    let has = |s: &str| name.contains(s);
    let ffn = |gate: Role, up: Role, down: Role| {
        if has("ffn_gate") {
            gate
        } else if has("ffn_up") {
            up
        } else {
            down
        }
    };
    if has("_exps") {
        return ffn(Role::FfnGateExps, Role::FfnUpExps, Role::FfnDownExps);
    }
    if has("_shexp") {
        return ffn(Role::FfnGateShexp, Role::FfnUpShexp, Role::FfnDownShexp);
    }
    if has("ffn_gate_inp") {
        return Role::FfnGateInp;
    }
    let base = name.trim_end_matches(".weight").trim_end_matches(".bias");
    if let Some(rest) = base.strip_prefix("blk.") {
        let part = rest.split_once('.').map_or("", |(_, p)| p);
        return match part {
            "attn_q" => Role::AttnQ,
            "attn_k" => Role::AttnK,
            "attn_v" => Role::AttnV,
            "attn_qkv" => Role::AttnQkv,
            "attn_output" => Role::AttnOutput,
            "ffn_gate" => Role::FfnGate,
            "ffn_up" => Role::FfnUp,
            "ffn_down" => Role::FfnDown,
            p if p.ends_with("_norm") => Role::Norm,
            _ => Role::Other,
        };
    }
    match base {
        "token_embd" => Role::Embedding,
        "output" => Role::Output,
        b if b.ends_with("_norm") => Role::Norm,
        _ => Role::Other,
    }
}

/// llama.cpp's `tensor_category`: broad classes by name, as its recipe
/// rules match them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

impl Category {
    /// The classes llama.cpp's `attn_v` rules (and counter) cover.
    pub fn is_attn_v_like(self) -> bool {
        matches!(
            self,
            Category::AttnV | Category::AttnQkv | Category::AttnKvB
        )
    }
}

/// llama.cpp's `tensor_category` of a GGUF name.
pub fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Category::TokenEmbd
    } else if name.contains("attn_qkv.weight") {
        Category::AttnQkv
    } else if name.contains("attn_kv_b.weight") {
        Category::AttnKvB
    } else if name.contains("attn_v.weight") {
        Category::AttnV
    } else if name.contains("attn_k.weight") {
        Category::AttnK
    } else if name.contains("attn_q.weight") {
        Category::AttnQ
    } else if name.contains("attn_output.weight") {
        Category::AttnOutput
    } else if name.contains("ffn_up") {
        Category::FfnUp
    } else if name.contains("ffn_gate") {
        Category::FfnGate
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// The block number as `sscanf(name, "blk.%d.", &n) == 1` reads it.
pub fn block_number(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("blk.")?;
    let rest = rest.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (sign, digits) = match rest.as_bytes().first() {
        Some(b'-') => (-1, &rest[1..]),
        Some(b'+') => (1, &rest[1..]),
        _ => (1, rest),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    // sscanf's %d overflow is undefined; clamp rather than wrap.
    digits[..end]
        .parse::<i64>()
        .ok()
        .map(|v| sign * v)
        .or(Some(sign * i64::from(i32::MAX)))
}

/// llama.cpp's `weight_name_comparer`.
pub fn loader_order(a: &str, b: &str) -> Ordering {
    let la = block_number(a).unwrap_or(-1);
    let lb = block_number(b).unwrap_or(-1);
    la.cmp(&lb).then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// Sort tensors into llama.cpp's loader order (stable).
pub fn sort_like_llama_cpp(tensors: &mut [TensorNode]) {
    tensors.sort_by(|a, b| loader_order(&a.name, &b.name));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gguf_roles() {
        assert_eq!(
            role_and_layer("blk.12.ffn_down.weight"),
            (Role::FfnDown, Some(12))
        );
        assert_eq!(role_and_layer("output_norm.weight"), (Role::Norm, None));
        assert_eq!(role_and_layer("token_embd.weight"), (Role::Embedding, None));
        assert_eq!(role("blk.0.attn_q.bias"), Role::AttnQ);
        assert_eq!(role("rope_freqs.weight"), Role::Other);
    }

    #[test]
    fn tells_experts_shared_experts_and_router_apart() {
        assert_eq!(role("blk.1.ffn_gate_exps.weight"), Role::FfnGateExps);
        assert_eq!(role("blk.1.ffn_up_exps.weight"), Role::FfnUpExps);
        assert_eq!(role("blk.1.ffn_down_exps.weight"), Role::FfnDownExps);
        assert_eq!(role("blk.1.ffn_down_shexp.weight"), Role::FfnDownShexp);
        assert_eq!(role("blk.1.ffn_gate_inp_shexp.weight"), Role::FfnGateShexp);
        assert_eq!(role("blk.1.ffn_gate_inp.weight"), Role::FfnGateInp);
        assert_eq!(layer("blk.1.ffn_gate_inp.weight"), Some(1));
    }

    #[test]
    fn categories_match_by_substring_in_llama_cpp_order() {
        assert_eq!(category("output.weight"), Category::Output);
        assert_eq!(category("per_layer_token_embd.weight"), Category::TokenEmbd);
        assert_eq!(category("blk.0.attn_qkv.weight"), Category::AttnQkv);
        assert_eq!(category("blk.0.ffn_down_exps.weight"), Category::FfnDown);
        assert_eq!(category("blk.0.attn_q.bias"), Category::Other);
        assert!(Category::AttnKvB.is_attn_v_like());
    }

    #[test]
    fn orders_like_llama_cpp() {
        let mut names = vec![
            "token_embd.weight",
            "blk.10.attn_q.weight",
            "blk.2.ffn_up.weight",
            "output.weight",
            "blk.2.attn_k.weight",
            "blk.-1.x",
        ];
        names.sort_by(|a, b| loader_order(a, b));
        assert_eq!(
            names,
            vec![
                "blk.-1.x",
                "output.weight",
                "token_embd.weight",
                "blk.2.attn_k.weight",
                "blk.2.ffn_up.weight",
                "blk.10.attn_q.weight"
            ]
        );
        assert_eq!(block_number("blk. 7.x"), Some(7));
        assert_eq!(block_number("blk.x"), None);
    }
}
