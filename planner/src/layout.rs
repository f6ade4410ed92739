//! The planner's one door to the writer: the header-and-padding overhead of a
//! layout, whether a plan can be cut into one file per device, and writing
//! the model file(s) (one GGUF, or llama.cpp's split layout, one per rank).
//!
//! What must stay true: every call the planner makes to `formats::emit` and
//! `formats::artifact::{cut, split_models, split_name}` is in this file (the
//! writer is being split into an engine and containers; the change stays
//! here); the bytes written are exactly what the layout predicted.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use formats::emit::{self, EmitOptions};
use formats::MappedFile;
use passes::plan::Options;
use passes::Model;
use quant::GgmlType;

use crate::error::{Error, Result};
use crate::progress::{Progress, Unit};

/// Bytes of the header and padding: the layout of the model at its
/// smallest, minus its tensors, plus one alignment per tensor (an upper bound).
pub fn overhead_bytes(model: &Model, options: &[Options]) -> u64 {
    let mut m = model.clone();
    let types: BTreeMap<&str, GgmlType> = options
        .iter()
        .map(|o| (o.name.as_str(), o.choices[0].ty))
        .collect();
    for t in &mut m.tensors {
        t.encoding = Some(types[t.name.as_str()]);
    }
    let layout = emit::plan(&m);
    let tensors: u64 = layout.tensors.iter().map(|&(_, b)| b).sum();
    layout.total_bytes - tensors + emit::ALIGNMENT * m.tensors.len() as u64
}

/// Consecutive tensor ranges, one per device, each at most `cap` bytes.
pub fn cut(sizes: &[u64], devices: usize, cap: u64) -> Option<Vec<Range<usize>>> {
    formats::artifact::cut(sizes, devices, cap)
}

/// One model file as planned.
pub struct Written {
    pub name: String,
    /// Bytes the layout predicted.
    pub predicted_bytes: u64,
}

/// Write `planned` into `dir` as `{stem}.gguf`, or, on several devices, as
/// llama.cpp's split files cut by `ranges`.
#[allow(clippy::too_many_arguments)]
pub fn write_model(
    planned: &Model,
    maps: &[MappedFile],
    ranges: Option<&[Range<usize>]>,
    stem: &str,
    dir: &dyn Fn(&str) -> std::path::PathBuf,
    importance: &BTreeMap<String, Vec<f32>>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Vec<Written>> {
    let split;
    let parts: Vec<(String, &Model)> = match ranges {
        Some(r) if r.len() > 1 => {
            split = formats::artifact::split_models(planned, r);
            split
                .iter()
                .enumerate()
                .map(|(i, m)| (formats::artifact::split_name(stem, i, r.len()), m))
                .collect()
        }
        _ => vec![(format!("{stem}.gguf"), planned)],
    };
    let input_bytes: u64 = planned.tensors.iter().map(|t| t.source.len).sum();
    progress.start("writing", input_bytes, Unit::Bytes);
    let mut out = Vec::new();
    let r: Result<()> = (|| {
        for (name, part) in &parts {
            let layout = emit::plan(part);
            let opts = EmitOptions {
                importance: (!importance.is_empty()).then_some(importance),
                allow_nonfinite: false,
            };
            let path: &Path = &dir(name);
            emit::write_gguf(
                part,
                maps,
                &layout,
                path,
                opts,
                &|n| progress.advance(n),
                cancel,
            )
            .map_err(|source| Error::Writing {
                name: name.clone(),
                source,
            })?;
            out.push(Written {
                name: name.clone(),
                predicted_bytes: layout.total_bytes,
            });
        }
        Ok(())
    })();
    progress.finish();
    r?;
    Ok(out)
}
