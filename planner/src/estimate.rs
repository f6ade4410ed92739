//! `kiln estimate`: memory, speed, cost and energy of serving a model on a
//! target, as a roofline bound and a calibrated central estimate with a band
//! (the model is `passes::cost`; the input is read by `serving`), and its
//! JSON and text reports.
//!
//! What must stay true: the JSON keys listed in [`json`] are stable;
//! anything the model does not cover is stated in `notes`, never silently
//! dropped; an unknown figure is `null` (JSON) or `unknown` (text).

use std::path::PathBuf;

use passes::cost::{
    Band, Batch, CtScheme, Engine, EngineVersion, Estimate, KvType, Target, WeightFormat, Workload,
};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::serving;

/// What to estimate, as the command line gives it.
#[derive(Debug, Clone)]
pub struct EstimateOptions {
    pub model: PathBuf,
    /// Serving engine name [default: by format and target].
    pub engine: Option<String>,
    /// llama.cpp build generation: `2024`, `2025` or a build number such as
    /// `b2843` [default: the current generation].
    pub engine_version: Option<String>,
    /// Weight type: a recipe or a serving format [default: the model's own].
    pub ty: Option<String>,
    /// A compressed-tensors scheme (llm-compressor's name) instead of `ty`:
    /// its stored bytes, and its activations' precision for prefill; refused
    /// where the target's runtime does not run it natively.
    pub scheme: Option<String>,
    /// Group size of the grouped schemes (W4A16, W4A16_ASYM, W8A16) [default: 128].
    pub group_size: Option<u32>,
    /// Sequences served together, or `max`.
    pub batch: String,
    pub context: Option<usize>,
    pub prompt: usize,
    pub gen: usize,
    pub kv_type: String,
    pub devices: Option<usize>,
    pub tp: Option<usize>,
    /// Speculative decoding is planned (not modelled: a note says so).
    pub speculative: bool,
    /// Requests per second arriving (not modelled: a note says so).
    pub request_rate: Option<f64>,
}

/// An estimate with where its weights were counted from, and warnings about the options.
pub struct Estimated {
    pub estimate: Estimate,
    pub counted_from: String,
    pub warnings: Vec<String>,
}

fn parse_batch(s: &str) -> Result<Batch> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Batch::Max);
    }
    match s.parse::<usize>() {
        Ok(b) if b >= 1 => Ok(Batch::Fixed(b)),
        _ => Err(Error::Options(format!(
            "--batch `{s}`: give a positive number or `max`"
        ))),
    }
}

fn default_engine(format: WeightFormat, target: &Target) -> Engine {
    let listed = |e: Engine| target.runtime_for(e.name()).is_some();
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

/// `--scheme S [--group-size N]` as a weight format.
pub fn scheme_format(name: &str, group: Option<u32>) -> Result<WeightFormat> {
    let s = CtScheme::parse(name).ok_or_else(|| {
        let names = CtScheme::ALL.map(|s| s.name());
        Error::Options(format!(
            "unknown scheme `{}`{} (known: {})",
            passes::printable(name),
            passes::suggest::did_you_mean(name, names.iter().copied()),
            names.join(", ")
        ))
    })?;
    let g = group.unwrap_or(if s.grouped() { 128 } else { 0 });
    if s.grouped() && ![0, 32, 64, 128].contains(&g) {
        return Err(Error::Options(format!(
            "--group-size {g}: the runtimes take 32, 64 or 128 (or 0 for per channel)"
        )));
    }
    Ok(WeightFormat::Scheme(s, g))
}

/// Estimate serving `o.model` on `target`.
pub fn estimate(o: &EstimateOptions, target: &Target) -> Result<Estimated> {
    let input = serving::read_input(&o.model)?;
    let format = match (&o.ty, &o.scheme) {
        (Some(_), Some(_)) => {
            return Err(Error::Options(
                "--type and --scheme both name the weights: give one".into(),
            ))
        }
        (_, Some(s)) => scheme_format(s, o.group_size)?,
        (Some(t), None) => WeightFormat::parse(t)?,
        (None, None) => input.default_format,
    };
    if o.group_size.is_some() && !matches!(format, WeightFormat::Scheme(s, _) if s.grouped()) {
        return Err(Error::Options(
            "--group-size applies to --scheme W4A16, W4A16_ASYM or W8A16".into(),
        ));
    }
    let engine = match &o.engine {
        Some(e) => Engine::parse(e).ok_or_else(|| {
            Error::Options(format!(
                "unknown engine `{e}` (known: llama.cpp, vllm, trt-llm)"
            ))
        })?,
        None => default_engine(format, target),
    };
    if let WeightFormat::Scheme(s, _) = format {
        target
            .check_scheme(engine.name(), s)
            .map_err(Error::Options)?;
    }
    let kv_type = KvType::parse(&o.kv_type).ok_or_else(|| {
        Error::Options(format!(
            "--kv-type `{}`: unknown KV type (known: f16, bf16, q8_0, q4_0, fp8)",
            o.kv_type
        ))
    })?;
    let engine_version = match &o.engine_version {
        Some(v) => EngineVersion::parse(v).ok_or_else(|| {
            Error::Options(format!(
                "--engine-version `{v}`: give 2024, 2025 or a llama.cpp build number such as b2843"
            ))
        })?,
        None => EngineVersion::Current,
    };
    if o.engine_version.is_some() && engine.class() != passes::cost::EngineClass::LlamaCpp {
        return Err(Error::Options(format!(
            "--engine-version is the llama.cpp build the speed is modelled for; the engine here is {} (drop the option)",
            engine.name()
        )));
    }
    let workload = Workload {
        batch: parse_batch(&o.batch)?,
        context: o.context,
        prompt: o.prompt,
        gen: o.gen,
        kv_type,
        devices: o.devices,
        tensor_parallel: o.tp,
        engine_version,
    };
    let mut warnings = Vec::new();
    if workload.context.is_some_and(|c| c < o.prompt + o.gen) {
        warnings.push(format!(
            "--context {} is less than prompt + gen ({}): the KV cache is sized for --context",
            o.context.unwrap_or(0),
            o.prompt + o.gen
        ));
    }
    if let Some(c) = o.context {
        warnings.extend(crate::options::context_warning(c, input.trained_context()));
    }
    let (mut est, mut fallbacks) =
        serving::estimate_input(&input, format, target, engine, &workload)?;
    let mut notes = input.notes.clone();
    notes.append(&mut fallbacks);
    if o.speculative {
        notes.push("Speculative decoding is not modelled: the estimate is for plain autoregressive decoding.".into());
    }
    if let Some(r) = o.request_rate {
        notes.push(format!(
            "Queueing under load is not modelled: --request-rate {r} is ignored; figures are for a static batch of {} sequences arriving together.",
            est.batch
        ));
    } else {
        notes.push("Static batch: sequences arrive and finish together; queueing and continuous batching under load are not modelled.".into());
    }
    notes.append(&mut est.notes);
    est.notes = notes;
    Ok(Estimated {
        estimate: est,
        counted_from: input.counted_from,
        warnings,
    })
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
pub fn json(e: &Estimate, model: &str, counted_from: &str) -> Value {
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
                "float_bandwidth": c.factors.float_bandwidth,
                "engine_version": (e.engine.class() == passes::cost::EngineClass::LlamaCpp)
                    .then(|| e.engine_version.name()),
                "gen2024_bandwidth": c.factors.gen2024_bandwidth,
                "gen2024_compute": c.factors.gen2024_compute,
            }),
            None => Value::Null,
        },
    );
    m.insert("notes".into(), json!(e.notes));
    Value::Object(m)
}

/// Bytes in binary units, as everywhere else (`formats::human`).
fn gb(b: u64) -> String {
    formats::human::bytes(b)
}

/// `12.3 (9.8 - 14.1; bound 20.5)`, or `unknown`.
fn show(b: &Band, unit: &str) -> String {
    let f = |v: f64| formats::human::sig(v, 4);
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

/// The estimate as text for a terminal.
pub fn text(e: &Estimate, model: &str, counted_from: &str) -> String {
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
        "  parameters          {} total, {} active per token\n",
        formats::human::params(e.params),
        formats::human::params(e.active_params)
    ));
    s.push_str(&format!("  weights             {}\n", gb(e.weights_bytes)));
    s.push_str(&format!(
        "  KV cache            {} per token; {} for {} x {} tokens\n",
        formats::human::bytes(e.kv_bytes_per_token),
        gb(e.kv_bytes),
        formats::human::count(e.batch as u64),
        formats::human::count(e.context as u64)
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
        show(&e.prefill_seconds, "s")
    ));
    s.push_str(&format!(
        "  time to first token {}\n",
        show(&e.ttft_seconds, "s")
    ));
    s.push_str(&format!(
        "  decode per sequence {}\n",
        show(&e.decode_tokens_per_second, "tok/s")
    ));
    s.push_str(&format!(
        "  throughput          {}\n",
        show(&e.throughput_tokens_per_second, "tok/s")
    ));
    s.push_str(&format!(
        "  end to end          {}\n\n",
        show(&e.e2e_seconds, "s")
    ));
    s.push_str("cost\n");
    s.push_str(&format!(
        "  $ per 1M tokens     {}\n",
        show(&e.usd_per_million_tokens, "$")
    ));
    s.push_str(&format!(
        "  joules per token    {}\n",
        show(&e.joules_per_token, "J")
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
