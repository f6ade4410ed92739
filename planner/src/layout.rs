//! The planner's one door to the writer: the header-and-padding overhead of a
//! layout, whether a plan can be cut into one file per device (the `layout`
//! pass's `cut`), and writing the model file(s) through the GGUF container
//! (one GGUF, or llama.cpp's split layout, one per rank).
//!
//! What must stay true: the bytes written are exactly what the layout
//! predicted; the files are cut by the `layout` pass, not here.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use eval::rounded::{GgufRounded, GptqGguf, RoundedSet};
use formats::gguf::{Gguf, ALIGNMENT};
use formats::write::{self, Container, WriteOptions};
use formats::MappedFile;
use passes::passes::layout::Shard;
use passes::passes::{Context, PassTiming, Pipeline};
use passes::plan::Options;
use passes::Model;
use quant::GgmlType;

use crate::error::{Error, Result};
use crate::progress::{Progress, Unit};

/// Bytes of the header and padding: the layout of the model at its
/// smallest, minus its tensors, plus one alignment per tensor (an upper bound).
pub fn overhead_bytes(model: &Model, options: &[Options]) -> Result<u64> {
    let mut m = model.clone();
    let types: BTreeMap<&str, GgmlType> = options
        .iter()
        .map(|o| (o.name.as_str(), o.choices[0].ty))
        .collect();
    for t in &mut m.tensors {
        t.encoding = Some(types[t.name.as_str()].into());
    }
    let layout = Gguf::new("model.gguf")
        .layout(&m)
        .map_err(|source| Error::Writing {
            name: "model.gguf".into(),
            source,
        })?
        .remove(0);
    let tensors: u64 = layout
        .placements
        .iter()
        .map(|p| p.bytes(&m.tensors[p.tensor]))
        .sum();
    Ok(layout.total_bytes - tensors + ALIGNMENT * m.tensors.len() as u64)
}

/// Consecutive tensor ranges, one per device, each at most `cap` bytes.
pub fn cut(sizes: &[u64], devices: usize, cap: u64) -> Option<Vec<Range<usize>>> {
    passes::passes::layout::cut(sizes, devices, cap)
}

/// One model file as written.
pub struct Written {
    pub name: String,
    /// Bytes the layout predicted.
    pub predicted_bytes: u64,
}

/// Write `planned` into `dir` as `{stem}.gguf`, or, on several devices, as
/// llama.cpp's split files of at most `cap` bytes of tensors each (the
/// `layout` pass cuts them); returns the files and the `layout` pipeline's
/// pass timings.
#[allow(clippy::too_many_arguments)]
pub fn write_model(
    planned: &mut Model,
    maps: &[MappedFile],
    devices: usize,
    cap: u64,
    stem: &str,
    dir: &Path,
    importance: &BTreeMap<String, Vec<f32>>,
    rounded: Option<&RoundedSet<GgufRounded>>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<(Vec<Written>, Vec<PassTiming>)> {
    let times = Pipeline::layout(Shard { devices, cap })
        .run(planned, &Context::default())
        .map_err(|_| {
            Error::Input(
                "the plan's tensors cannot be cut into one file per device within the budget"
                    .into(),
            )
        })?;
    let plain = Gguf::new(&format!("{stem}.gguf"));
    let name = plain.file_name.clone();
    let writing = |source| Error::Writing {
        name: name.clone(),
        source,
    };
    // GPTQ-rounded tensors (`kiln build --gptq`) are copied from their
    // stored rows; everything else is encoded as planned.
    let gguf: Box<dyn Container + '_> = match rounded {
        Some(rounded) => Box::new(GptqGguf {
            inner: plain,
            rounded,
        }),
        None => Box::new(plain),
    };
    formats::gguf::lower_in_place(planned);
    let layouts = gguf.layout(planned).map_err(writing)?;
    let input_bytes: u64 = planned.tensors.iter().map(|t| t.source.len).sum();
    progress.start("writing", input_bytes, Unit::Bytes);
    let opts = WriteOptions {
        importance: (!importance.is_empty()).then_some(importance),
        allow_nonfinite: false,
    };
    let r = write::write(
        planned,
        maps,
        gguf.as_ref(),
        &layouts,
        dir,
        opts,
        &|n| progress.advance(n),
        cancel,
    );
    progress.finish();
    let written = r.map_err(writing)?;
    let written = written
        .into_iter()
        .filter(|w| w.tensors)
        .zip(&layouts)
        .map(|(w, l)| Written {
            name: w.name,
            predicted_bytes: l.total_bytes,
        })
        .collect();
    Ok((written, times))
}
