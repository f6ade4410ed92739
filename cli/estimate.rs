//! `kiln estimate MODEL --target ID [...]`: memory, speed, cost and energy of
//! serving a model on a target, as a roofline bound and a calibrated central
//! estimate with a band (the model is `passes::cost`).
//!
//! What must stay true: MODEL may be a checkpoint directory, just a
//! `config.json` (so a 405B model is estimated without its weights), a
//! `.safetensors` file next to its `config.json`, or a GGUF (whose own tensor
//! types are costed unless `--type` is given); the JSON keys listed in
//! [`json`] are stable; anything the model does not cover is stated in
//! `notes`, never silently dropped.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use passes::cost::shape::specs_from_model;
use passes::cost::{
    estimate, weight_bytes, Band, Batch, Calibration, Engine, Estimate, KvType, ModelCost, Shape,
    TensorSpec, WeightFormat, Workload,
};
use serde_json::{json, Map, Value};

use crate::Printer;

#[derive(Args, Debug)]
pub struct EstimateArgs {
    /// A Hugging Face checkpoint directory or its config.json alone, a .safetensors file (with a
    /// config.json beside it), or a .gguf file.
    pub model: PathBuf,
    /// Target id (see `kiln targets`); `cpu` is this host.
    #[arg(long, short = 'T')]
    pub target: String,
    /// A profile file (the schema of targets/*.toml) whose id --target may name; may be repeated.
    #[arg(long, value_name = "FILE.toml")]
    pub target_file: Vec<PathBuf>,
    /// Serving engine: llama.cpp, vllm or trt-llm [default: llama.cpp for GGUF types, else vllm
    /// (or what the target lists)].
    #[arg(long)]
    pub engine: Option<String>,
    /// Weight type: a llama.cpp recipe (Q4_K_M, Q8_0, Q2_K, ...) or a serving format (f16, bf16,
    /// fp8, int8, int4, fp4) [default: the model's own types or dtype].
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    pub ty: Option<String>,
    /// Sequences served together, or `max` for the largest batch that fits.
    #[arg(long, default_value = "1")]
    pub batch: String,
    /// KV cache slots reserved per sequence [default: prompt + gen].
    #[arg(long)]
    pub context: Option<usize>,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 512)]
    pub prompt: usize,
    /// Generated tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub gen: usize,
    /// KV cache type: f16, bf16, q8_0, q4_0 or fp8.
    #[arg(long, default_value = "f16")]
    pub kv_type: String,
    /// Devices in total [default: the fewest that fit, as one tensor-parallel group].
    #[arg(long)]
    pub devices: Option<usize>,
    /// Tensor-parallel group size; devices / tp replicas serve in parallel [default: all devices].
    #[arg(long)]
    pub tp: Option<usize>,
    /// Print JSON to stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// With --target cpu: measure this host's memory bandwidth first (about a second).
    #[arg(long)]
    pub measure: bool,
    /// Speculative decoding is planned (not modelled: the estimate says so).
    #[arg(long)]
    pub speculative: bool,
    /// Requests per second arriving (queueing is not modelled: the estimate says so).
    #[arg(long, value_name = "RPS")]
    pub request_rate: Option<f64>,
}

/// The model as read from MODEL.
struct Input {
    shape: Shape,
    tensors: Vec<TensorSpec>,
    /// The format when `--type` is not given.
    default_format: WeightFormat,
    /// Where the tensors came from, for the report.
    counted_from: String,
    notes: Vec<String>,
}

fn int(v: &Value, k: &str) -> Option<usize> {
    v.get(k).and_then(Value::as_u64).map(|x| x as usize)
}

/// MoE details and the dtype, which `formats::hf::read_config` does not carry.
fn config_extras(
    config_path: &Path,
    shape: &mut Shape,
    notes: &mut Vec<String>,
) -> Result<WeightFormat> {
    let root = formats::hf::read_json(config_path)?;
    let c = match root.get("text_config") {
        Some(t) if root.get("num_hidden_layers").is_none() => t.clone(),
        _ => root.clone(),
    };
    if shape.is_moe() {
        if let Some(f) = int(&c, "moe_intermediate_size") {
            shape.moe_ffn = f;
        }
        if let Some(s) = int(&c, "shared_expert_intermediate_size") {
            shape.shared_ffn = s;
        } else if let Some(n) = int(&c, "n_shared_experts") {
            shape.shared_ffn = n * shape.moe_ffn;
        }
        if let Some(k) = int(&c, "first_k_dense_replace") {
            shape.n_dense_layers = k.min(shape.n_layer);
        }
    }
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
    let mut shape = Shape::from_arch(&arch);
    let mut notes = Vec::new();
    let default_format = config_extras(config_path, &mut shape, &mut notes)?;
    if !matches!(
        arch.family.as_str(),
        "llama" | "qwen2" | "mistral" | "mixtral" | "qwen2_moe" | "qwen3" | "qwen3_moe"
    ) {
        notes.push(format!(
            "Family `{}`: weights are counted with the llama layout (attention, gated FFN) from config.json; biases and architecture-specific tensors are not counted.",
            arch.family
        ));
    }
    Ok(Input {
        tensors: shape.tensors(),
        shape,
        default_format,
        counted_from: format!("{what} (llama-layout tensors from config.json)"),
        notes,
    })
}

fn read_input(path: &Path) -> Result<Input> {
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
            bail!(
                "{}: a bare .safetensors file does not state its architecture; put its config.json beside it or pass the config",
                path.display()
            );
        }
        return from_config(&config, &config.display().to_string());
    }
    let loaded = formats::load(path, &formats::LoadOptions::default())?;
    let arch = loaded.model.arch.clone().with_context(|| {
        format!(
            "{}: no architecture metadata to estimate from",
            path.display()
        )
    })?;
    let mut shape = Shape::from_arch(&arch);
    let tensors: Vec<TensorSpec> = specs_from_model(&loaded.model);
    if let Some(t) = tensors.iter().find(|t| t.name.contains("ffn_down_exps")) {
        shape.moe_ffn = t.shape.last().copied().unwrap_or(shape.ffn);
    }
    let mut notes = Vec::new();
    if let Some((name, ty)) = loaded.gguf.as_ref().and_then(formats::load::undecodable) {
        notes.push(format!(
            "Tensors of types kiln cannot decode (first: {name}, {ty}) are not counted: weight bytes are underestimated."
        ));
    }
    Ok(Input {
        counted_from: format!("{} ({} tensors of the file)", path.display(), tensors.len()),
        tensors,
        shape,
        default_format: WeightFormat::Planned,
        notes,
    })
}

fn parse_batch(s: &str) -> Result<Batch> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Batch::Max);
    }
    match s.parse::<usize>() {
        Ok(b) if b >= 1 => Ok(Batch::Fixed(b)),
        _ => bail!("--batch `{s}`: give a positive number or `max`"),
    }
}

fn default_engine(format: WeightFormat, target: &passes::cost::Target) -> Engine {
    let listed = |e: Engine| target.runtimes.contains_key(e.name());
    if matches!(format, WeightFormat::Recipe(_) | WeightFormat::Planned) {
        return Engine::LlamaCpp;
    }
    if listed(Engine::Vllm) {
        Engine::Vllm
    } else if listed(Engine::TrtLlm) {
        Engine::TrtLlm
    } else if listed(Engine::LlamaCpp) && format.llama_cpp_can_serve() {
        Engine::LlamaCpp
    } else {
        Engine::Vllm
    }
}

fn band_json(out: &mut Map<String, Value>, key: &str, b: &Band) {
    let v = |x: Option<f64>| x.map_or(Value::Null, |x| json!(x));
    out.insert(key.into(), v(b.central));
    out.insert(format!("{key}_low"), v(b.low));
    out.insert(format!("{key}_high"), v(b.high));
    out.insert(format!("{key}_bound"), v(b.bound));
}

/// The stable JSON report. Keys: model, target, engine, type, kv_type, batch,
/// context, prompt, gen, devices, tensor_parallel, replicas, min_devices, fits,
/// max_batch, params, active_params, weights_bytes, kv_bytes_per_token,
/// kv_bytes, overhead_bytes_per_device, memory_per_device_bytes,
/// memory_usable_per_device_bytes, then for prefill_seconds, ttft_seconds,
/// decode_tokens_per_second, throughput_tokens_per_second, e2e_seconds,
/// usd_per_million_tokens, joules_per_token the central value and its
/// `_low`, `_high` and `_bound` companions, then compute_reference,
/// calibration and notes. Unknown values are `null`.
fn json(e: &Estimate, model: &str, counted_from: &str) -> Value {
    let mut m = Map::new();
    m.insert("model".into(), json!(model));
    m.insert("weights_counted_from".into(), json!(counted_from));
    m.insert("target".into(), json!(e.target));
    m.insert("engine".into(), json!(e.engine.name()));
    m.insert("type".into(), json!(e.format));
    m.insert("kv_type".into(), json!(e.kv_type.name()));
    m.insert("batch".into(), json!(e.batch));
    m.insert("context".into(), json!(e.context));
    m.insert("prompt".into(), json!(e.prompt));
    m.insert("gen".into(), json!(e.gen));
    m.insert("devices".into(), json!(e.devices));
    m.insert("tensor_parallel".into(), json!(e.tensor_parallel));
    m.insert("replicas".into(), json!(e.replicas));
    m.insert("min_devices".into(), json!(e.min_devices));
    m.insert("fits".into(), json!(e.fits));
    m.insert("max_batch".into(), json!(e.max_batch));
    m.insert("params".into(), json!(e.params));
    m.insert("active_params".into(), json!(e.active_params));
    m.insert("weights_bytes".into(), json!(e.weights_bytes));
    m.insert("kv_bytes_per_token".into(), json!(e.kv_bytes_per_token));
    m.insert("kv_bytes".into(), json!(e.kv_bytes));
    m.insert(
        "overhead_bytes_per_device".into(),
        json!(e.overhead_bytes_per_device),
    );
    m.insert(
        "memory_per_device_bytes".into(),
        json!(e.memory_per_device_bytes),
    );
    m.insert(
        "memory_usable_per_device_bytes".into(),
        json!(e.memory_usable_per_device_bytes),
    );
    band_json(&mut m, "prefill_seconds", &e.prefill_seconds);
    band_json(&mut m, "ttft_seconds", &e.ttft_seconds);
    band_json(
        &mut m,
        "decode_tokens_per_second",
        &e.decode_tokens_per_second,
    );
    band_json(
        &mut m,
        "throughput_tokens_per_second",
        &e.throughput_tokens_per_second,
    );
    band_json(&mut m, "e2e_seconds", &e.e2e_seconds);
    band_json(&mut m, "usd_per_million_tokens", &e.usd_per_million_tokens);
    band_json(&mut m, "joules_per_token", &e.joules_per_token);
    m.insert(
        "compute_reference".into(),
        json!(e.compute_reference.map(|p| p.name())),
    );
    m.insert(
        "calibration".into(),
        match &e.calibration {
            Some(c) => json!({
                "engine_class": c.engine.name(),
                "device_class": c.fitted_on.name(),
                "borrowed": c.borrowed,
                "rows": c.factors.rows,
                "bandwidth_efficiency": c.factors.bandwidth_efficiency,
                "compute_efficiency": c.factors.compute_efficiency,
                "simt_cost": c.factors.simt_cost,
                "layer_overhead_us": c.factors.layer_overhead_us,
            }),
            None => Value::Null,
        },
    );
    m.insert("notes".into(), json!(e.notes));
    Value::Object(m)
}

fn gb(b: u64) -> String {
    format!("{:.2} GB", b as f64 / 1e9)
}

/// `12.3 (9.8 - 14.1; bound 20.5)`, or `unknown`.
fn show(b: &Band, digits: usize, unit: &str) -> String {
    let f = |v: f64| format!("{v:.digits$}");
    match (b.central, b.low, b.high) {
        (Some(c), Some(lo), Some(hi)) => {
            let bound = b
                .bound
                .map(|x| format!("; bound {}", f(x)))
                .unwrap_or_default();
            format!("{} {unit}  ({} - {}{bound})", f(c), f(lo), f(hi))
        }
        _ => "unknown".into(),
    }
}

fn text(e: &Estimate, model: &str, counted_from: &str) -> String {
    let mut s = String::new();
    let fits = match e.fits {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "unknown",
    };
    s.push_str(&format!(
        "{model} on {} with {} ({}, KV {})\n",
        e.target,
        e.engine,
        e.format,
        e.kv_type.name()
    ));
    s.push_str(&format!("  weights counted from {counted_from}\n\n"));
    s.push_str("memory\n");
    s.push_str(&format!(
        "  parameters          {:.2}B total, {:.2}B active per token\n",
        e.params as f64 / 1e9,
        e.active_params as f64 / 1e9
    ));
    s.push_str(&format!("  weights             {}\n", gb(e.weights_bytes)));
    s.push_str(&format!(
        "  KV cache            {} bytes per token; {} for {} x {} tokens\n",
        e.kv_bytes_per_token,
        gb(e.kv_bytes),
        e.batch,
        e.context
    ));
    s.push_str(&format!(
        "  runtime overhead    {} per device\n",
        gb(e.overhead_bytes_per_device)
    ));
    s.push_str(&format!(
        "  needed per device   {} of {} usable\n",
        gb(e.memory_per_device_bytes),
        e.memory_usable_per_device_bytes
            .map_or("unknown".into(), gb)
    ));
    s.push_str(&format!(
        "  fits                {fits} on {} device(s): tensor parallel {} x {} replica(s)\n",
        e.devices, e.tensor_parallel, e.replicas
    ));
    s.push_str(&format!(
        "  largest batch       {}\n  fewest devices      {}\n\n",
        e.max_batch.map_or("unknown".into(), |b| b.to_string()),
        e.min_devices
            .map_or("more than 64".into(), |d| d.to_string())
    ));
    s.push_str("time (central  (band; roofline bound))\n");
    s.push_str(&format!(
        "  prefill             {}\n",
        show(&e.prefill_seconds, 4, "s")
    ));
    s.push_str(&format!(
        "  time to first token {}\n",
        show(&e.ttft_seconds, 4, "s")
    ));
    s.push_str(&format!(
        "  decode per sequence {}\n",
        show(&e.decode_tokens_per_second, 1, "tok/s")
    ));
    s.push_str(&format!(
        "  throughput          {}\n",
        show(&e.throughput_tokens_per_second, 1, "tok/s")
    ));
    s.push_str(&format!(
        "  end to end          {}\n\n",
        show(&e.e2e_seconds, 3, "s")
    ));
    s.push_str("cost\n");
    s.push_str(&format!(
        "  $ per 1M tokens     {}\n",
        show(&e.usd_per_million_tokens, 3, "$")
    ));
    s.push_str(&format!(
        "  joules per token    {}\n",
        show(&e.joules_per_token, 3, "J")
    ));
    if let Some(c) = &e.calibration {
        s.push_str(&format!(
            "\ncalibration: {} on {} ({} rows{}), compute relative to the {} peak\n",
            c.engine.name(),
            c.fitted_on.name(),
            c.factors.rows,
            if c.borrowed { ", borrowed" } else { "" },
            e.compute_reference.map_or("(unknown)", |p| p.name())
        ));
    }
    if !e.notes.is_empty() {
        s.push_str("\nnotes\n");
        for n in &e.notes {
            s.push_str(&format!("  - {n}\n"));
        }
    }
    s
}

pub fn run(args: &EstimateArgs, printer: &Printer) -> Result<()> {
    let target = crate::targets::resolve(&args.target, &args.target_file, args.measure, printer)?;
    let input = read_input(&args.model)?;
    let format = match &args.ty {
        Some(t) => WeightFormat::parse(t)?,
        None => input.default_format,
    };
    let engine = match &args.engine {
        Some(e) => Engine::parse(e)
            .with_context(|| format!("unknown engine `{e}` (known: llama.cpp, vllm, trt-llm)"))?,
        None => default_engine(format, &target),
    };
    let kv_type = KvType::parse(&args.kv_type).with_context(|| {
        format!(
            "unknown KV type `{}` (known: f16, bf16, q8_0, q4_0, fp8)",
            args.kv_type
        )
    })?;
    let workload = Workload {
        batch: parse_batch(&args.batch)?,
        context: args.context,
        prompt: args.prompt,
        gen: args.gen,
        kv_type,
        devices: args.devices,
        tensor_parallel: args.tp,
    };
    if workload.context.is_some_and(|c| c < args.prompt + args.gen) {
        printer.warn(&format!(
            "--context {} is less than prompt + gen ({}): the KV cache is sized for --context",
            args.context.unwrap_or(0),
            args.prompt + args.gen
        ));
    }
    let weights = weight_bytes(&input.tensors, &input.shape, format);
    let cal = Calibration::shipped()?;
    let mut est = estimate(
        ModelCost {
            shape: &input.shape,
            weights: &weights,
            format,
        },
        &target,
        engine,
        &workload,
        &cal,
    )?;
    let mut notes = input.notes.clone();
    if !weights.fallbacks.is_empty() {
        notes.push(format!(
            "{} tensor(s) fell back to another type because their rows are not a multiple of the block size (first: {}).",
            weights.fallbacks.len(),
            weights.fallbacks[0]
        ));
    }
    if args.speculative {
        notes.push("Speculative decoding is not modelled: the estimate is for plain autoregressive decoding.".into());
    }
    if let Some(r) = args.request_rate {
        notes.push(format!(
            "Queueing under load is not modelled: --request-rate {r} is ignored; figures are for a static batch of {} sequences arriving together.",
            est.batch
        ));
    } else {
        notes.push("Static batch: sequences arrive and finish together; queueing and continuous batching under load are not modelled.".into());
    }
    notes.append(&mut est.notes);
    est.notes = notes;
    let model = args.model.display().to_string();
    if args.json {
        printer.data(&serde_json::to_string_pretty(&json(
            &est,
            &model,
            &input.counted_from,
        ))?);
    } else {
        printer.data(&text(&est, &model, &input.counted_from));
    }
    Ok(())
}
