//! GPTQ onto compressed-tensors' integer schemes (W4A16, W4A16_ASYM, W8A16,
//! W8A8), as llm-compressor 0.14's `GPTQModifier` writes them: every group's
//! scale and zero point from the original weights' min and max (the weight
//! observer runs before GPTQ: the same `memoryless_minmax` values the
//! data-free preset stores); GPTQ ([`crate::gptq`]) then chooses each
//! weight's integer code on that grid, columns in act-order when asked
//! (`actorder: static`, an alias of `weight`: the order changes, the groups
//! do not, so no `weight_g_idx` is stored), blocks calibrated one after
//! another on the outputs of the blocks already rounded.
//!
//! [`round`] gives the codes (in an unlinked spill file, checkpoint row
//! order) and parameters; [`GptqCt`] wraps a `formats::ct` container and
//! encodes the rounded tensors' pieces from them by row index;
//! [`WithCtRounded`] reads a model with the rounded tensors decoded as the
//! runtime decodes them, so that what is measured is what is written.
//!
//! What must stay true: the stored codes are GPTQ's codes and the stored
//! scales and zero points the original weights'; rows are mapped from the
//! forward pass's GGUF layout (llama q/k rows permuted) back to the
//! checkpoint's.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use formats::ct::CompressedTensors;
use formats::write::{Container, FileLayout, Unit};
use passes::{Model, SourceDType, TensorNode};
use quant::ct::{self as q, Dtype, IntParams};
use quant::{Group, IntSpec};
use serde_json::{json, Value};

use crate::error::Result;
use crate::gptq::{self, Options, Rounder};
use crate::model::Opened;
use crate::rounded::{RoundedSet, Spill};
use crate::source::Source;

/// One tensor's GPTQ result, in the checkpoint's row order.
pub struct CtRounded {
    pub bits: u8,
    pub group: usize,
    pub symmetric: bool,
    /// Stored packed into int32 words (`pack-quantized`), or as plain int8
    /// codes (`int-quantized`, W8A8).
    pub packed: bool,
    pub d: Dtype,
    pub rows: usize,
    pub cols: usize,
    /// Where the `rows x cols` codes (one byte each, checkpoint row order)
    /// start in the spill file.
    pub at: u64,
    /// `rows x groups` scales and zero points (from the original weights).
    pub params: Vec<IntParams>,
    pub loss: f64,
    pub fallback: bool,
}

/// What the rounding of one GGUF-named weight needs.
struct Target {
    spec: IntSpec,
    packed: bool,
    d: Dtype,
}

fn dtype_of(t: &TensorNode) -> Dtype {
    match t.source.dtype {
        SourceDType::BF16 => Dtype::Bf16,
        SourceDType::F16 => Dtype::F16,
        _ => Dtype::F32,
    }
}

fn group_len(spec: &IntSpec, cols: usize) -> usize {
    match spec.group {
        Group::Channel => cols,
        Group::Size(g) => g as usize,
    }
}

/// Per-(row, group) parameters of `w` (`rows x cols`) from its own min and
/// max, as the weight observer computes them.
fn params_of(w: &[f32], cols: usize, spec: &IntSpec, d: Dtype) -> Vec<IntParams> {
    let g = group_len(spec, cols);
    w.chunks_exact(g)
        .map(|chunk| {
            let (lo, hi) = q::min_max(chunk);
            q::int_params(lo, hi, spec.bits, !spec.zero_point, d)
        })
        .collect()
}

struct CtScheme {
    targets: BTreeMap<String, Target>,
    params: Mutex<BTreeMap<String, Vec<IntParams>>>,
}

impl gptq::Scheme for CtScheme {
    fn wants(&self, name: &str) -> bool {
        self.targets.contains_key(name)
    }

    fn rows<'a>(
        &'a self,
        name: &str,
        w: &[f32],
        _rows: usize,
        cols: usize,
    ) -> Box<dyn gptq::Rows + 'a> {
        let t = &self.targets[name];
        let params = params_of(w, cols, &t.spec, t.d);
        self.params
            .lock()
            .expect("no panics while held")
            .insert(name.to_string(), params.clone());
        let (bits, g) = (t.spec.bits, group_len(&t.spec, cols));
        let groups = cols / g;
        // GPTQ's working weights are f32 (llm-compressor's GPTQ_PRECISION):
        // the fake quantization is done in f32 with the dtype's scale.
        Box::new(OwnedPerValue(Box::new(
            move |r: usize, c: usize, x: f32| {
                let p = params[r * groups + c / g];
                q::int_dequantize(q::int_quantize(x, p, bits, Dtype::F32), p, Dtype::F32)
            },
        )))
    }
}

/// A boxed [`Rounder`] as [`gptq::Rows`].
struct OwnedPerValue(Box<dyn Rounder>);

impl gptq::Rows for OwnedPerValue {
    fn row<'a>(&'a self, r: usize, _w: &[f32]) -> Box<dyn gptq::RowRound + 'a> {
        gptq::per_value_row(self.0.as_ref(), r)
    }
}

/// GPTQ-round the Linears of `m` named (by source tensor name) in
/// `wanted`, each with its integer spec and whether it is stored packed,
/// calibrated on `windows`; keyed by source tensor name. The codes go to
/// `spill`. `progress(i)` after block `i`.
#[allow(clippy::too_many_arguments)]
pub fn round(
    m: &Opened,
    wanted: &BTreeMap<String, (IntSpec, bool)>,
    windows: &[Vec<u32>],
    opts: &Options,
    mut spill: Spill,
    progress: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<RoundedSet<CtRounded>> {
    let mut targets = BTreeMap::new();
    let mut layout = BTreeMap::new();
    for t in &m.loaded.model.tensors {
        if let Some(&(spec, packed)) = wanted.get(t.source_name.as_str()) {
            targets.insert(
                t.name.clone(),
                Target {
                    spec,
                    packed,
                    d: dtype_of(t),
                },
            );
            layout.insert(t.name.clone(), (t.source_name.clone(), t.transform));
        }
    }
    let scheme = CtScheme {
        targets,
        params: Mutex::new(BTreeMap::new()),
    };
    let mut out = BTreeMap::new();
    let mut sink = |r: gptq::Rounded| -> Result<()> {
        let t = &scheme.targets[&r.name];
        let p = scheme
            .params
            .lock()
            .expect("no panics while held")
            .remove(&r.name)
            .expect("a rounder was made");
        let (source, transform) = layout[&r.name].clone();
        let g = group_len(&t.spec, r.cols);
        let groups = r.cols / g;
        let mut codes = vec![0u8; r.rows * r.cols];
        let mut hp = vec![p[0]; r.rows * groups];
        for row in 0..r.rows {
            // GGUF row `row` is checkpoint row `src`.
            let src = transform.map_or(row, |x| x.source_row(row, r.rows));
            for c in 0..r.cols {
                let pp = p[row * groups + c / g];
                codes[src * r.cols + c] =
                    q::int_quantize(r.values[row * r.cols + c], pp, t.spec.bits, Dtype::F32) as u8;
            }
            hp[src * groups..(src + 1) * groups]
                .copy_from_slice(&p[row * groups..(row + 1) * groups]);
        }
        let at = spill.push(&codes)?;
        out.insert(
            source,
            CtRounded {
                bits: t.spec.bits,
                group: g,
                symmetric: !t.spec.zero_point,
                packed: t.packed,
                d: t.d,
                rows: r.rows,
                cols: r.cols,
                at,
                params: hp,
                loss: r.outcome.loss,
                fallback: r.outcome.fallback,
            },
        );
        Ok(())
    };
    gptq::run(m, windows, &scheme, opts, &mut sink, progress, cancel)?;
    Ok(RoundedSet {
        tensors: out,
        spill,
    })
}

/// The compressed-tensors container with GPTQ-rounded tensors: their
/// weight and scale pieces are laid out in units of rows (so the encoder
/// learns the row index) and encoded from the rounded table; everything
/// else is the wrapped container's.
pub struct GptqCt<'a> {
    inner: CompressedTensors,
    rounded: &'a RoundedSet<CtRounded>,
    actorder: Value,
}

/// Rows per unit of a rounded tensor's row-wise pieces.
const UNIT_ROWS: usize = 8;

impl<'a> GptqCt<'a> {
    pub fn new(
        inner: CompressedTensors,
        rounded: &'a RoundedSet<CtRounded>,
        actorder: &str,
    ) -> GptqCt<'a> {
        GptqCt {
            inner,
            rounded,
            actorder: if actorder == "none" {
                Value::Null
            } else {
                json!(actorder)
            },
        }
    }
}

/// The piece index of a rounded tensor's zero points (after weight, scale
/// and, when packed, the shape).
fn zp_piece(r: &CtRounded) -> usize {
    if r.packed {
        3
    } else {
        2
    }
}

impl Container for GptqCt<'_> {
    fn layout(&self, model: &Model) -> formats::Result<Vec<FileLayout>> {
        let mut files = self.inner.layout(model)?;
        for f in &mut files {
            for p in &mut f.placements {
                if p.piece <= 1
                    && self
                        .rounded
                        .tensors
                        .contains_key(&model.tensors[p.tensor].source_name)
                {
                    p.unit = Unit {
                        rows: UNIT_ROWS,
                        per_row: true,
                    };
                }
            }
        }
        Ok(files)
    }

    fn copies_source(&self, t: &TensorNode, piece: usize) -> bool {
        self.inner.copies_source(t, piece)
    }

    fn encode_row(
        &self,
        t: &TensorNode,
        piece: usize,
        values: &[f32],
        dst: &mut [u8],
        importance: Option<&[f32]>,
    ) {
        self.inner.encode_row(t, piece, values, dst, importance)
    }

    fn encode_unit(
        &self,
        t: &TensorNode,
        piece: usize,
        first_row: usize,
        values: &[f32],
        dst: &mut [u8],
    ) {
        let Some(r) = self.rounded.tensors.get(&t.source_name) else {
            return self.inner.encode_unit(t, piece, first_row, values, dst);
        };
        let cols = r.cols;
        let rows = values.len() / cols.max(1);
        let groups = cols / r.group;
        match piece {
            0 => {
                if !r.packed {
                    // int8 codes are stored as they are.
                    return self
                        .rounded
                        .spill
                        .read(r.at + (first_row * cols) as u64, dst);
                }
                let mut codes = vec![0u8; rows * cols];
                self.rounded
                    .spill
                    .read(r.at + (first_row * cols) as u64, &mut codes);
                let out = dst.len() / rows.max(1);
                for (d, c) in dst.chunks_exact_mut(out).zip(codes.chunks_exact(cols)) {
                    let c: Vec<i8> = c.iter().map(|&b| b as i8).collect();
                    q::pack_int32(&c, r.bits, d);
                }
            }
            1 => {
                let b = r.d.bytes();
                for (k, d) in dst.chunks_exact_mut(groups * b).enumerate() {
                    let row = first_row + k;
                    for (j, o) in d.chunks_exact_mut(b).enumerate() {
                        r.d.put(r.params[row * groups + j].scale, o);
                    }
                }
            }
            p if p == zp_piece(r) && !r.symmetric => {
                for k in 0..groups {
                    let zps: Vec<i8> = (first_row..first_row + rows)
                        .map(|row| r.params[row * groups + k].zero_point)
                        .collect();
                    let mut word = [0u8; 4];
                    q::pack_int32(
                        &zps,
                        r.bits,
                        &mut word[..4 * q::packed_words(zps.len(), r.bits)],
                    );
                    dst[k * 4..(k + 1) * 4].copy_from_slice(&word);
                }
            }
            _ => self.inner.encode_unit(t, piece, first_row, values, dst),
        }
    }

    fn side_files(
        &self,
        model: &Model,
        files: &[FileLayout],
    ) -> formats::Result<Vec<(String, Vec<u8>)>> {
        let mut out = self.inner.side_files(model, files)?;
        for (name, bytes) in &mut out {
            if name != "config.json" {
                continue;
            }
            let mut v: Value = serde_json::from_slice(bytes).expect("the container's own JSON");
            if let Some(groups) = v["quantization_config"]["config_groups"].as_object_mut() {
                for g in groups.values_mut() {
                    if g["weights"]["type"] == "int" {
                        g["weights"]["actorder"] = self.actorder.clone();
                    }
                }
            }
            let mut text = serde_json::to_vec_pretty(&v).expect("JSON serializes");
            text.push(b'\n');
            *bytes = text;
        }
        Ok(out)
    }
}

/// `base` with the GPTQ-rounded tensors decoded from their stored codes and
/// the original weights' scales and zero points, in the checkpoint's dtype
/// (as compressed-tensors decompresses them), so a plan with GPTQ is
/// measured as written.
pub struct WithCtRounded<'a> {
    pub base: &'a dyn Source,
    pub rounded: &'a RoundedSet<CtRounded>,
}

impl Source for WithCtRounded<'_> {
    fn opened(&self) -> &Opened {
        self.base.opened()
    }

    fn read_row(&self, node: &TensorNode, r: usize, dst: &mut [f32]) {
        match self.rounded.tensors.get(&node.source_name) {
            Some(t) if t.rows == node.n_rows() && t.cols == dst.len() => {
                // Forward-pass row `r` is checkpoint row `src`.
                let src = node.transform.map_or(r, |x| x.source_row(r, t.rows));
                let mut codes = vec![0u8; t.cols];
                self.rounded
                    .spill
                    .read(t.at + (src * t.cols) as u64, &mut codes);
                let groups = t.cols / t.group.max(1);
                for (c, (d, &b)) in dst.iter_mut().zip(&codes).enumerate() {
                    let p = t.params[src * groups + c / t.group];
                    *d = q::int_dequantize(b as i8, p, t.d);
                }
            }
            _ => self.base.read_row(node, r, dst),
        }
    }

    fn release(&self, node: &TensorNode) {
        self.base.release(node);
    }

    fn act_quant(&self, node: &TensorNode, part: Option<usize>) -> Option<quant::ct::ActQuant> {
        self.base.act_quant(node, part)
    }
}
