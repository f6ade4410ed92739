//! The `input_activations` of a compressed-tensors config group that kiln's
//! forward pass simulates (`quant::ct::ActQuant` does the arithmetic):
//! int8 or FP8 per token, FP8 per group, static per-tensor FP8 and NVFP4's
//! local scales under a global one. Any other is refused by the reader.

use serde_json::{Map, Value};

/// The input-activation quantizations kiln's forward pass simulates (see
/// `quant::ct::ActQuant`); any other `input_activations` is refused by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActKind {
    /// int8, symmetric, dynamic per token (W8A8).
    Int8Token,
    /// E4M3, dynamic per token (FP8_DYNAMIC).
    Fp8Token,
    /// E4M3, dynamic per group of this many inputs (FP8_BLOCK).
    Fp8Group(usize),
    /// E4M3, static per tensor: `input_scale` stored (FP8).
    Fp8Static,
    /// E2M1 per 16 with local scales under the stored `input_global_scale` (NVFP4).
    Nvfp4,
}

/// The kind of an `input_activations` object, or which of its fields kiln
/// does not simulate.
pub(crate) fn act_kind(a: &Map<String, Value>) -> Result<ActKind, String> {
    let get = |k: &str| a.get(k).filter(|v| !v.is_null());
    let ty = get("type").and_then(Value::as_str).unwrap_or("int");
    let bits = get("num_bits")
        .and_then(Value::as_u64)
        .ok_or("`num_bits` missing or not an integer")?;
    let strategy = get("strategy")
        .and_then(Value::as_str)
        .ok_or("`strategy` missing or not a string")?;
    let group = get("group_size").and_then(Value::as_u64);
    let dynamic = get("dynamic");
    let is_dynamic = dynamic.and_then(Value::as_bool) == Some(true);
    let is_static = dynamic.is_none_or(|d| d.as_bool() == Some(false));
    if get("symmetric").and_then(Value::as_bool) == Some(false) {
        return Err("`symmetric: false` (asymmetric activations, with zero points)".into());
    }
    for k in ["actorder", "block_structure"] {
        if let Some(v) = get(k) {
            return Err(format!("`{k}: {v}`"));
        }
    }
    let dyn_text = dynamic.map_or("absent".to_string(), Value::to_string);
    match (ty, bits, strategy) {
        ("int", 8, "token") if is_dynamic => Ok(ActKind::Int8Token),
        ("float", 8, "token") if is_dynamic => Ok(ActKind::Fp8Token),
        ("float", 8, "group") if is_dynamic => match group {
            Some(n) if n > 0 => Ok(ActKind::Fp8Group(n as usize)),
            _ => Err("`strategy: group` without a positive `group_size`".into()),
        },
        ("float", 8, "tensor") if is_static => Ok(ActKind::Fp8Static),
        ("float", 4, "tensor_group")
            if group == Some(16) && dynamic.and_then(Value::as_str) == Some("local") =>
        {
            Ok(ActKind::Nvfp4)
        }
        ("int" | "float", 8, "token" | "group" | "tensor") | ("float", 4, "tensor_group") => {
            Err(format!(
                "{ty}{bits} `strategy: {strategy}` with `dynamic: {dyn_text}`{}",
                group.map_or(String::new(), |g| format!(" and `group_size: {g}`"))
            ))
        }
        ("int" | "float", _, _) => Err(format!(
            "`type: {ty}`, `num_bits: {bits}`, `strategy: {strategy}`"
        )),
        _ => Err(format!("`type: {ty}`")),
    }
}
