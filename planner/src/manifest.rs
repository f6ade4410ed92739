//! `manifest.json`: what a build wrote and why, as typed data. Schema
//! version [`SCHEMA_VERSION`]; serialized with `serde_json` in the field
//! order below.
//!
//! What must stay true: the JSON is byte-identical to what kiln has written
//! under this schema (field order, number formatting, `null` for what was not
//! measured or is not finite), so a field is only ever added at a new schema
//! version; every file listed carries its sha256 and size; a manifest read
//! back is equal to the one written (floats to their last bit or so:
//! `serde_json`'s default parser may round a long decimal's last digit).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::accuracy::TextAccuracy;
use crate::compare::Row;
use crate::error::{Error, Result};
use crate::sensitivity::GroupSensitivity;

/// The schema this crate writes and reads.
///
/// Version 2 (from 1): byte counts are all integers (`target.memory_bytes`);
/// every input file the result depends on is identified by path and sha256
/// (`inputs`: calibration and evaluation texts, the imatrix file;
/// `accuracy.text_file` is such a file, not a bare name); the plan records
/// the values measured per tensor (`sample_values_per_tensor`); and the
/// comparison holds the other objective's plan (`kiln, <objective> objective`).
/// Added within version 2, absent unless asked for: `pruning` (the pruning
/// options `--prune-candidates` weighed, and the one applied) and `gptq`
/// (`kiln build --gptq`: the plan measured with and without GPTQ).
pub const SCHEMA_VERSION: &str = "kiln.artifact/2";

/// The manifest of one build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: String,
    pub kiln_version: String,
    pub source: Source,
    /// Every other input file the result depends on, with its hash.
    pub inputs: Vec<Input>,
    pub target: TargetInfo,
    pub serving: Serving,
    pub plan: Plan,
    pub tensors: Vec<Tensor>,
    pub files: Vec<File>,
    pub size: Size,
    pub cost: Cost,
    pub accuracy: Accuracy,
    pub comparison: Vec<Compared>,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
    /// The pruning options weighed (`--prune-candidates`), present only
    /// when some were: a build without them writes the same bytes as before,
    /// and readers of this schema that ignore unknown fields read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruning: Option<crate::prune::Pruning>,
    /// GPTQ weighed for the plan (`kiln build --gptq`), present only when
    /// asked for: the plan measured rounded to nearest and GPTQ-rounded,
    /// and whether the artifact holds the GPTQ-rounded tensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gptq: Option<crate::gptq::GptqRecord>,
}

/// A file with its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct File {
    /// The file name (no directories).
    pub path: Option<String>,
    pub sha256: String,
    pub bytes: u64,
}

/// An input file other than the model, identified by its path (as given) and hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// `calibration_text`, `evaluation_text` or `imatrix`.
    pub role: String,
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// The model built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The input's file or directory name.
    pub model: Option<String>,
    /// sha256 of the source files' sha256s, one per line, in order.
    pub sha256: String,
    pub files: Vec<File>,
    pub parameters: u64,
    pub architecture: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub id: String,
    pub name: String,
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Serving {
    pub engine: String,
    pub context: usize,
    pub concurrency: usize,
    pub kv_type: String,
    pub devices: usize,
    pub tensor_parallel: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorCeiling {
    pub predicted_kld: f64,
    pub from: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryPerDevice {
    pub usable_bytes: u64,
    pub kv_cache_bytes: u64,
    pub overhead_bytes: u64,
    pub policy: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ByType {
    #[serde(rename = "type")]
    pub ty: String,
    pub tensors: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub objective: String,
    pub error_ceiling: Option<ErrorCeiling>,
    pub budget_bytes: u64,
    pub budget_tensor_bytes: u64,
    pub budget_from: String,
    pub memory_per_device: Option<MemoryPerDevice>,
    pub importance: String,
    pub sensitivity: String,
    pub sensitivity_groups: Vec<GroupSensitivity>,
    pub candidates: Vec<String>,
    /// Values measured per tensor at most (`--sample`).
    pub sample_values_per_tensor: usize,
    pub tensor_bytes: u64,
    pub bits_per_weight: f64,
    pub predicted_kld: f64,
    pub by_type: Vec<ByType>,
}

/// One tensor as planned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub bytes: u64,
    pub nsr: Option<f64>,
    pub predicted_kld: f64,
    pub sensitivity: Option<f64>,
    pub rows_measured: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Size {
    pub predicted_bytes: u64,
    pub actual_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub fits: Option<bool>,
    pub weights_bytes: u64,
    pub memory_per_device_bytes: u64,
    pub memory_usable_per_device_bytes: Option<u64>,
    pub decode_tokens_per_second: Option<f64>,
    pub throughput_tokens_per_second: Option<f64>,
    pub ttft_seconds: Option<f64>,
    pub usd_per_million_tokens: Option<f64>,
    pub joules_per_token: Option<f64>,
    pub notes: Vec<String>,
}

impl Cost {
    /// The manifest's figures of a serving estimate.
    pub fn of(est: &passes::cost::Estimate) -> Cost {
        Cost {
            fits: est.fits,
            weights_bytes: est.weights_bytes,
            memory_per_device_bytes: est.memory_per_device_bytes,
            memory_usable_per_device_bytes: est.memory_usable_per_device_bytes,
            decode_tokens_per_second: est.decode_tokens_per_second.central.and_then(finite),
            throughput_tokens_per_second: est.throughput_tokens_per_second.central.and_then(finite),
            ttft_seconds: est.ttft_seconds.central.and_then(finite),
            usd_per_million_tokens: est.usd_per_million_tokens.central.and_then(finite),
            joules_per_token: est.joules_per_token.central.and_then(finite),
            notes: est.notes.clone(),
        }
    }
}

/// Accuracy measured on held-out text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Text {
    pub windows: usize,
    pub perplexity_original: Option<f64>,
    pub perplexity: Option<f64>,
    pub perplexity_ratio: Option<f64>,
    pub kld_mean: Option<f64>,
    pub kld_p99: Option<f64>,
    pub top1_agreement: Option<f64>,
}

impl Text {
    pub fn of(t: &TextAccuracy) -> Text {
        Text {
            windows: t.windows,
            perplexity_original: finite(t.ppl_original),
            perplexity: finite(t.ppl),
            perplexity_ratio: finite(t.ppl / t.ppl_original),
            kld_mean: finite(t.kld),
            kld_p99: finite(t.kld_p99),
            top1_agreement: finite(t.top1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub predicted_kld: f64,
    pub weight_nsr: Option<f64>,
    pub text: Option<Text>,
    /// The text measured on, as listed in `inputs`.
    pub text_file: Option<Input>,
}

/// One row of the comparison with llama.cpp's recipes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compared {
    pub name: String,
    pub tensor_bytes: u64,
    pub predicted_kld: Option<f64>,
    pub fits: Option<bool>,
    pub devices: Option<usize>,
    pub decode_tokens_per_second: Option<f64>,
    pub usd_per_million_tokens: Option<f64>,
    pub weight_nsr: Option<f64>,
}

impl Compared {
    pub fn of(r: &Row) -> Compared {
        Compared {
            name: r.name.clone(),
            tensor_bytes: r.bytes,
            predicted_kld: r.error,
            fits: r.fits,
            devices: r.devices,
            decode_tokens_per_second: r.tokens_per_second.and_then(finite),
            usd_per_million_tokens: r.usd_per_mtok.and_then(finite),
            weight_nsr: r.weight_nsr.and_then(finite),
        }
    }
}

/// A figure, or `None` when it is not finite (written as `null`).
pub fn finite(v: f64) -> Option<f64> {
    Some(v).filter(|x| x.is_finite())
}

/// Tensors and bytes per type name, sorted by name.
pub fn by_type<'a>(types: impl Iterator<Item = (&'a str, u64)>) -> Vec<ByType> {
    let mut m: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (t, b) in types {
        let e = m.entry(t).or_insert((0, 0));
        e.0 += 1;
        e.1 += b;
    }
    m.into_iter()
        .map(|(t, (n, b))| ByType {
            ty: t.to_string(),
            tensors: n,
            bytes: b,
        })
        .collect()
}

impl Manifest {
    /// The manifest as written: pretty JSON with a final newline.
    pub fn to_json(&self) -> serde_json::Result<String> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    /// Read a manifest, refusing another schema.
    pub fn from_json(text: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_str(text)?;
        if m.schema != SCHEMA_VERSION {
            return Err(Error::Input(format!(
                "manifest schema `{}`, this kiln reads `{SCHEMA_VERSION}`",
                m.schema
            )));
        }
        Ok(m)
    }
}
