//! `kiln convert M --format compressed-tensors --scheme W4A16 --gptq --text T
//! -o OUT`: the integer schemes rounded by GPTQ (`eval::gptq`) instead of to
//! nearest, as llm-compressor's `GPTQModifier` writes them; and `kiln convert
//! M -t Q4_K_M --gptq --text T -o OUT.gguf`: GGUF block types rounded by GPTQ
//! with ggml's encoders choosing the block scales (`eval::gguf_gptq`,
//! [`round_gguf`], [`GptqGguf`]).
//!
//! As llm-compressor 0.14: every group's scale and zero point come from the
//! original weights' min and max (the weight observer runs before GPTQ, the
//! same `memoryless_minmax` values the data-free preset stores); GPTQ then
//! chooses each weight's integer code on that grid, columns in act-order
//! (`actorder: static`, an alias of `weight`: the order changes, the
//! groups do not, so no `weight_g_idx` is stored); the calibration text is
//! cut into `--gptq-samples` windows of `--gptq-ctx` tokens (BOS first), and
//! blocks are calibrated one after another on the outputs of the blocks
//! already rounded.
//!
//! What must stay true: the stored codes are GPTQ's codes and the stored
//! scales and zero points the original weights' (the row encoders of
//! `formats::ct` are not used for rounded tensors: [`GptqCt`] wraps the
//! container and encodes those pieces from the rounded table by row index);
//! rows are mapped from the forward pass's GGUF layout (llama q/k rows
//! permuted) back to the checkpoint's.

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::{Context as _, Result};
use clap::Args;
use eval::gptq::{self, Options, Rounder};
use formats::ct::{CompressedTensors, Scheme};
use formats::write::{Container, FileLayout, Unit};
use passes::{Encoding, Model, SourceDType, TensorNode};
use quant::ct::{self as q, Dtype, IntParams};
use quant::{Group, IntSpec};
use serde_json::{json, Value};

use eval::rounded::{GgufRounded, RoundedSet, Spill};

use crate::common::{cancel_flag, lift, load_options};
use crate::Printer;

/// GPTQ options of `convert`.
#[derive(Args, Debug, Clone)]
pub struct GptqArgs {
    /// Round the weights with GPTQ (error feedback through each layer's
    /// input Hessian from --text) instead of to nearest: compressed-tensors
    /// integer schemes (W4A16, W4A16_ASYM, W8A16, W8A8), as llm-compressor's GPTQModifier,
    /// and GGUF legacy and K-quant types (ggml's encoders choose each block's scales).
    #[arg(long, requires = "text")]
    pub gptq: bool,
    /// Calibration windows (samples) for --gptq [default: 128, or every window the text fills if fewer].
    #[arg(long, value_name = "N", requires = "gptq")]
    pub gptq_samples: Option<usize>,
    /// Tokens per calibration window.
    #[arg(long, value_name = "N", default_value_t = 512, requires = "gptq")]
    pub gptq_ctx: usize,
    /// Column order of GPTQ: `static` (descending Hessian diagonal,
    /// llm-compressor's default) or `none` (left to right) [default: static
    /// for compressed-tensors; GGUF output is always rounded left to right].
    #[arg(long, value_name = "ORDER", value_parser = ["static", "none"], requires = "gptq")]
    pub actorder: Option<String>,
    /// Damping, as a fraction of the mean Hessian diagonal.
    #[arg(long, value_name = "F", default_value_t = 0.01, requires = "gptq")]
    pub dampening_frac: f64,
}

impl GptqArgs {
    /// `--actorder` as given, or its default for the output format
    /// (`static`; GGUF output refuses it and rounds left to right).
    pub fn actorder(&self) -> &str {
        self.actorder.as_deref().unwrap_or("static")
    }

    /// `--actorder` for GGUF output: `none` unless given.
    pub fn actorder_gguf(&self) -> &str {
        self.actorder.as_deref().unwrap_or("none")
    }
}

/// One tensor's GPTQ result, in the checkpoint's row order.
pub struct CtRounded {
    bits: u8,
    group: usize,
    symmetric: bool,
    d: Dtype,
    cols: usize,
    /// Where the `rows x cols` codes (one byte each, checkpoint row order)
    /// start in the spill file.
    at: u64,
    /// `rows x groups` scales and zero points (from the original weights).
    params: Vec<IntParams>,
    pub loss: f64,
    pub fallback: bool,
}

/// What the rounding of one GGUF-named weight needs.
struct Target {
    spec: IntSpec,
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

/// Run GPTQ over `model`'s Linears that have an integer encoding
/// (`model` as `formats::ct::assign` left it, Hugging Face names), keyed by
/// source tensor name.
pub fn round_ct(
    args: &crate::convert::ConvertArgs,
    model: &Model,
    printer: &Printer,
) -> Result<RoundedSet<CtRounded>> {
    let g = &args.gptq;
    let text_path = args
        .text
        .as_ref()
        .expect("clap requires --text with --gptq");
    let opened = eval::open(&args.model, &load_options(&args.pre_tokenizer)).map_err(lift)?;
    let wanted: BTreeMap<&str, IntSpec> = model
        .tensors
        .iter()
        .filter_map(|t| match t.encoding {
            Some(Encoding::Int(spec)) => Some((t.source_name.as_str(), spec)),
            _ => None,
        })
        .collect();
    let mut targets = BTreeMap::new();
    let mut layout = BTreeMap::new();
    for t in &opened.loaded.model.tensors {
        if let Some(spec) = wanted.get(t.source_name.as_str()) {
            targets.insert(
                t.name.clone(),
                Target {
                    spec: *spec,
                    d: dtype_of(t),
                },
            );
            layout.insert(t.name.clone(), (t.source_name.clone(), t.transform));
        }
    }
    let windows = calibration_windows(args, &opened)?;
    let blocks = eval::stream::Streamed::new(&opened)
        .map_err(lift)?
        .n_layer();
    printer.info(&format!(
        "gptq: {} tensors, {} windows of {} tokens from {}",
        targets.len(),
        windows.len(),
        g.gptq_ctx,
        text_path.display()
    ));
    let scheme = CtScheme {
        targets,
        params: Mutex::new(BTreeMap::new()),
    };
    let opts = Options {
        block: 128,
        percdamp: g.dampening_frac,
        actorder: g.actorder() == "static",
    };
    let mut spill = Spill::beside(args.output.as_deref()).map_err(lift)?;
    let mut out = BTreeMap::new();
    let mut sink = |r: gptq::Rounded| -> eval::Result<()> {
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
                d: t.d,
                cols: r.cols,
                at,
                params: hp,
                loss: r.outcome.loss,
                fallback: r.outcome.fallback,
            },
        );
        Ok(())
    };
    let cancel = cancel_flag();
    let bar = printer.count_bar(blocks as u64, "gptq", "blocks");
    let progress = |n: usize| bar.set_position(n as u64);
    let r = gptq::run(
        &opened, &windows, &scheme, &opts, &mut sink, &progress, &cancel,
    );
    bar.finish_and_clear();
    r.map_err(lift).with_context(|| opened.name())?;
    Ok(RoundedSet {
        tensors: out,
        spill,
    })
}

/// The compressed-tensors container with GPTQ-rounded tensors: their
/// weight and scale pieces are laid out in units of rows (so the encoder
/// learns the row index) and encoded from the rounded table; everything
/// else is the wrapped container's.
pub struct GptqCt {
    inner: CompressedTensors,
    rounded: RoundedSet<CtRounded>,
    /// Whether int weights are packed (`pack-quantized`) or plain int8 (W8A8).
    packed: bool,
    actorder: Value,
}

/// Rows per unit of a rounded tensor's row-wise pieces.
const UNIT_ROWS: usize = 8;

impl GptqCt {
    pub fn new(
        inner: CompressedTensors,
        rounded: RoundedSet<CtRounded>,
        scheme: Scheme,
        actorder: &str,
    ) -> GptqCt {
        GptqCt {
            inner,
            rounded,
            packed: scheme != Scheme::W8A8,
            actorder: if actorder == "none" {
                Value::Null
            } else {
                json!(actorder)
            },
        }
    }

    /// The piece index of the zero points (after weight, scale and, when
    /// packed, the shape).
    fn zp_piece(&self) -> usize {
        if self.packed {
            3
        } else {
            2
        }
    }
}

impl Container for GptqCt {
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
                if !self.packed {
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
            p if p == self.zp_piece() && !r.symmetric => {
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

/// The calibration windows of `--text` for the model `opened`.
fn calibration_windows(
    args: &crate::convert::ConvertArgs,
    opened: &eval::model::Opened,
) -> Result<Vec<Vec<u32>>> {
    let g = &args.gptq;
    let text_path = args
        .text
        .as_ref()
        .expect("clap requires --text with --gptq");
    let (_, windows) = crate::common::text_windows(
        opened,
        text_path,
        ("--gptq-ctx", g.gptq_ctx),
        Some(g.gptq_samples.unwrap_or(128).max(1)),
    )?;
    Ok(windows)
}

/// Run GPTQ onto the GGUF types `model` (after the recipe and importance
/// passes) gives its 2-D weights, keyed by source tensor name: every tensor
/// the forward pass's blocks read whose type GPTQ can round onto
/// (`eval::gguf_gptq::supports`) and whose bytes are not copied from the
/// source. Columns left to right (no act-order).
pub fn round_gguf(
    args: &crate::convert::ConvertArgs,
    model: &Model,
    printer: &Printer,
) -> Result<RoundedSet<GgufRounded>> {
    let g = &args.gptq;
    let opened = eval::open(&args.model, &load_options(&args.pre_tokenizer)).map_err(lift)?;
    let importance = model.importance.as_ref().map(|i| &i.vectors);
    // Source name -> (type, the convert model's name for its importance).
    let wanted: BTreeMap<&str, (quant::GgmlType, &str)> = model
        .tensors
        .iter()
        .filter(|t| t.shape.len() == 2 && t.ggml_type() != Some(t.source.dtype.ggml()))
        .filter_map(|t| {
            let ty = t.ggml_type()?;
            eval::gguf_gptq::supports(ty).then_some((t.source_name.as_str(), (ty, t.name.as_str())))
        })
        .collect();
    let mut types = BTreeMap::new();
    let mut imp = BTreeMap::new();
    for t in &opened.loaded.model.tensors {
        if let Some(&(ty, name)) = wanted.get(t.source_name.as_str()) {
            types.insert(t.name.clone(), ty);
            if let Some(v) = importance.and_then(|m| m.get(name)) {
                imp.insert(t.name.clone(), v.clone());
            }
        }
    }
    let windows = calibration_windows(args, &opened)?;
    let blocks = eval::stream::Streamed::new(&opened)
        .map_err(lift)?
        .n_layer();
    printer.info(&format!(
        "gptq: up to {} tensors, {} windows of {} tokens from {}",
        types.len(),
        windows.len(),
        g.gptq_ctx,
        args.text.as_ref().expect("clap requires --text").display()
    ));
    let spill = Spill::beside(args.output.as_deref()).map_err(lift)?;
    let cancel = cancel_flag();
    let bar = printer.count_bar(blocks as u64, "gptq", "blocks");
    let progress = |n: usize| bar.set_position(n as u64);
    let r = eval::rounded::round_onto(
        &opened,
        types,
        &imp,
        &windows,
        g.dampening_frac,
        spill,
        &progress,
        &cancel,
    );
    bar.finish_and_clear();
    let rounded = r.map_err(lift).with_context(|| opened.name())?;
    for t in &model.tensors {
        if let Some(r) = rounded.tensors.get(&t.source_name) {
            if (t.n_rows(), t.row_len()) != (r.rows, r.cols) {
                anyhow::bail!(
                    "{}: tensor `{}`: the forward pass reads it as {} x {}, the output lays it out otherwise",
                    opened.name(),
                    passes::printable(&t.name),
                    r.rows,
                    r.cols
                );
            }
        }
    }
    Ok(rounded)
}
