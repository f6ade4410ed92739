//! The planner's one door to the cost model's estimates: the serving
//! estimate of a planned model (budgets call `passes::cost::weight_budget`).
//!
//! It also reads `kiln estimate`'s input (a config alone, a checkpoint, a
//! GGUF) into the cost model's tensor list, and costs it.
//!
//! What must stay true: the cost model sees the model as its `Arch` and its
//! tensors (a config alone is synthesized into tensors by the family spec,
//! `passes::arch::synthesize`). An estimate input may be a config.json alone
//! (a 405B model is estimated without its weights); anything not counted is
//! said in its notes.

use std::path::Path;

use passes::cost::{
    estimate, weight_bytes, Calibration, Engine, Estimate, ModelCost, Target, WeightBytes,
    WeightFormat, Workload,
};
use passes::{Arch, Model, TensorNode};
use serde_json::Value;

use crate::error::{Error, Result};

/// Serving estimate of a planned model on `devices` devices.
pub fn cost(
    model: &Model,
    arch: &Arch,
    target: &Target,
    engine: Engine,
    w: &Workload,
    devices: usize,
) -> Result<Estimate> {
    let wb = weight_bytes(&model.tensors, arch, WeightFormat::Planned);
    cost_of_weights(&wb, arch, target, engine, w, devices)
}

/// [`cost`] of weights already counted (a compressed-tensors plan sets which
/// of them multiply with quantized activations).
pub fn cost_of_weights(
    wb: &WeightBytes,
    arch: &Arch,
    target: &Target,
    engine: Engine,
    w: &Workload,
    devices: usize,
) -> Result<Estimate> {
    let cal = Calibration::shipped()?;
    let w = Workload {
        devices: Some(devices),
        tensor_parallel: Some(devices),
        ..w.clone()
    };
    Ok(estimate(
        ModelCost {
            arch,
            weights: wb,
            format: WeightFormat::Planned,
        },
        target,
        engine,
        &w,
        &cal,
    )?)
}

/// The model as read from MODEL.
pub struct Input {
    arch: Arch,
    tensors: Vec<TensorNode>,
    /// The format when `--type` is not given.
    pub default_format: WeightFormat,
    /// Where the tensors came from, for the report.
    pub counted_from: String,
    pub notes: Vec<String>,
}

/// The checkpoint's dtype or quantization, which `formats::hf::read_config`
/// does not carry.
fn config_format(config_path: &Path, notes: &mut Vec<String>) -> Result<WeightFormat> {
    let root = formats::hf::read_json(config_path)?;
    let c = match root.get("text_config") {
        Some(t) if root.get("num_hidden_layers").is_none() => t.clone(),
        _ => root.clone(),
    };
    let q = c
        .get("quantization_config")
        .or_else(|| root.get("quantization_config"));
    if let Some(q) = q {
        let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("?");
        notes.push(format!(
            "The checkpoint is already quantized ({method}); the default type below is read from its quantization_config, pass --type to cost another."
        ));
        let bits = q.get("bits").and_then(Value::as_u64).or_else(|| {
            q.get("config_groups")?
                .as_object()?
                .values()
                .find_map(|g| g.get("weights")?.get("num_bits")?.as_u64())
        });
        let float = q
            .get("config_groups")
            .and_then(Value::as_object)
            .is_some_and(|g| {
                g.values()
                    .any(|g| g.pointer("/weights/type").and_then(Value::as_str) == Some("float"))
            });
        let name = match (method, bits, float) {
            ("fp8", _, _) => "fp8",
            (_, Some(8), true) => "fp8",
            (_, Some(8), false) => "int8",
            (_, Some(4), true) => "fp4",
            (_, Some(4), false) => "int4",
            _ => "bf16",
        };
        return Ok(WeightFormat::parse(name)?);
    }
    let dtype = c
        .get("torch_dtype")
        .or_else(|| root.get("torch_dtype"))
        .and_then(Value::as_str)
        .unwrap_or("bfloat16");
    Ok(WeightFormat::parse(match dtype {
        "float16" => "f16",
        "float32" => "f32",
        _ => "bf16",
    })?)
}

fn from_config(config_path: &Path, what: &str) -> Result<Input> {
    let arch = formats::hf::read_config(config_path)?;
    let mut notes = Vec::new();
    let default_format = config_format(config_path, &mut notes)?;
    if !passes::arch::counts_exactly(&arch.family) {
        notes.push(format!(
            "Family `{}`: weights are counted with the llama layout (attention, gated FFN) from config.json; biases and architecture-specific tensors are not counted.",
            arch.family
        ));
    }
    // A family's own tensor list (q/k norms, tied head), else llama's.
    let counted_from = match passes::arch::spec_for_gguf(&arch.family) {
        Some(spec) => format!("{what} ({} tensors from config.json)", spec.gguf),
        None => format!("{what} (llama-layout tensors from config.json)"),
    };
    Ok(Input {
        tensors: passes::arch::synthesize(&arch),
        arch,
        default_format,
        counted_from,
        notes,
    })
}

/// Read MODEL for `kiln estimate`: a checkpoint directory or its
/// config.json, a .safetensors file beside its config.json, or a GGUF.
impl Input {
    /// The context the model was trained for (`max_position_embeddings`;
    /// 0 when the input does not say).
    pub fn trained_context(&self) -> usize {
        self.arch.context_length
    }
}

pub fn read_input(path: &Path) -> Result<Input> {
    if path.is_dir() || path.extension().is_some_and(|e| e == "json") {
        let config = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        return from_config(&config, &config.display().to_string());
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        let config = path.parent().unwrap_or(Path::new(".")).join("config.json");
        if !config.exists() {
            return Err(Error::Input(format!(
                "{}: a bare .safetensors file does not state its architecture; put its config.json beside it or pass the config",
                path.display()
            )));
        }
        return from_config(&config, &config.display().to_string());
    }
    let loaded = formats::load(path, &formats::LoadOptions::default())?;
    let mut arch = loaded.model.arch.clone().ok_or_else(|| {
        Error::Input(format!(
            "{}: no architecture metadata to estimate from",
            path.display()
        ))
    })?;
    let undecodable = loaded
        .gguf
        .as_ref()
        .and_then(formats::load::undecodable)
        .map(|(n, t)| (n.to_string(), t));
    let tensors = loaded.model.tensors;
    if let Some(t) = tensors.iter().find(|t| t.name.contains("ffn_down_exps")) {
        arch.expert_ffn = Some(t.shape.last().copied().unwrap_or(arch.ffn));
    }
    let mut notes = Vec::new();
    if let Some((name, ty)) = undecodable {
        notes.push(format!(
            "Tensors of types kiln cannot decode (first: {name}, {ty}) are not counted: weight bytes are underestimated."
        ));
    }
    Ok(Input {
        counted_from: format!("{} ({} tensors of the file)", path.display(), tensors.len()),
        tensors,
        arch,
        default_format: WeightFormat::Planned,
        notes,
    })
}

/// Cost `input` in `format` (the notes say which tensors fell back to
/// another type).
pub fn estimate_input(
    input: &Input,
    format: WeightFormat,
    target: &Target,
    engine: Engine,
    w: &Workload,
) -> Result<(Estimate, Vec<String>)> {
    let weights = weight_bytes(&input.tensors, &input.arch, format);
    let cal = Calibration::shipped()?;
    let est = estimate(
        ModelCost {
            arch: &input.arch,
            weights: &weights,
            format,
        },
        target,
        engine,
        w,
        &cal,
    )?;
    let mut notes = Vec::new();
    if !weights.fallbacks.is_empty() {
        notes.push(format!(
            "{} tensor(s) fell back to another type because their rows are not a multiple of the block size (first: {}).",
            weights.fallbacks.len(),
            weights.fallbacks[0]
        ));
    }
    Ok((est, notes))
}
