//! `kiln inspect MODEL [--json]`: what is in a model file or directory.
//!
//! What must stay true: any checkpoint whose files can be read is shown
//! (tensors, shapes, dtypes, config.json), also when kiln cannot convert its
//! architecture; then one line says so and why (the refusal `convert` would
//! print), and no GGUF metadata is claimed for it. Names and values from the
//! files are printed escaped.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use formats::ct_read::{self, CtRead};
use formats::{InputKind, LoadOptions};
use passes::{printable, Arch, MetaValue, Metadata};
use serde_json::{json, Value};

use crate::common::{human_bytes, human_count, shape};
use crate::Printer;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A Hugging Face checkpoint directory, a .safetensors file or a .gguf file.
    pub model: PathBuf,
    /// Print JSON to stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Show every element of long metadata arrays (tokens, merges) instead of a summary.
    #[arg(long)]
    pub full_metadata: bool,
}

struct Row {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    bytes: u64,
}

/// Whether `dir/config.json` declares a `quantization_config`.
fn has_quantization_config(dir: &std::path::Path) -> bool {
    std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|c| c.get("quantization_config").is_some())
}

pub fn run(args: &InspectArgs, printer: &Printer) -> Result<()> {
    // What `convert` would refuse is shown, with the refusal, not refused.
    let (loaded, refusal) = match formats::load(&args.model, &LoadOptions::default()) {
        Ok(l) => (l, None),
        // A quantized checkpoint whose layout kiln reads (compressed-tensors)
        // but finds inconsistent is refused: its tensors cannot be shown as
        // what they claim to be.
        Err(e) if args.model.is_dir() && !has_quantization_config(&args.model) => {
            match formats::load::load_hf_dir_as_is(&args.model) {
                Ok(l) => (l, Some(e.to_string())),
                Err(_) => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let refusal = refusal.or_else(|| match loaded.kind {
        InputKind::Safetensors => Some(
            "a bare .safetensors file has no config.json; convert its checkpoint directory"
                .to_string(),
        ),
        _ => None,
    });
    let config: Option<Value> = match loaded.kind {
        InputKind::HfDir => std::fs::read(args.model.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok()),
        _ => None,
    };
    let rows: Vec<Row> = match &loaded.kind {
        InputKind::Gguf { .. } => loaded
            .gguf
            .as_ref()
            .expect("gguf inputs keep their parse")
            .tensors
            .iter()
            .map(|t| Row {
                name: t.name.clone(),
                shape: t.shape(),
                dtype: t.ty.name.to_string(),
                bytes: t.bytes,
            })
            .collect(),
        _ => loaded
            .safetensors
            .iter()
            .flat_map(|h| {
                let mut e = h.entries.clone();
                e.sort_by_key(|e| e.start);
                e
            })
            .map(|e| Row {
                name: e.name,
                shape: e.shape,
                dtype: e.dtype,
                bytes: e.end - e.start,
            })
            .collect(),
    };
    // A compressed-tensors checkpoint stores packed words and scales: its
    // parameters are those of the logical weights it decodes to.
    let params: u64 = match &loaded.ct {
        Some(_) => loaded.model.n_params(),
        None => rows
            .iter()
            .map(|r| r.shape.iter().product::<usize>() as u64)
            .sum(),
    };
    let total: u64 = rows.iter().map(|r| r.bytes).sum();
    let mut by_dtype: Vec<(String, usize, u64)> = Vec::new();
    for r in &rows {
        match by_dtype.iter_mut().find(|(d, _, _)| *d == r.dtype) {
            Some(e) => {
                e.1 += 1;
                e.2 += r.bytes;
            }
            None => by_dtype.push((r.dtype.clone(), 1, r.bytes)),
        }
    }
    let (format, version) = match loaded.kind {
        InputKind::HfDir => ("hf", None),
        InputKind::Safetensors => ("safetensors", None),
        InputKind::Gguf { version } => ("gguf", Some(version)),
    };
    let st_metadata: Vec<(String, String)> = loaded
        .safetensors
        .iter()
        .flat_map(|h| h.metadata.clone())
        .collect();
    let metadata = &if refusal.is_some() && format == "hf" {
        std::borrow::Cow::Owned(Metadata::default())
    } else {
        formats::gguf::key_values(&loaded.model)
    };

    if args.json {
        let md: serde_json::Map<String, Value> = if format == "safetensors" {
            st_metadata
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect()
        } else {
            metadata
                .0
                .iter()
                .map(|(k, v)| (k.clone(), meta_json(v, args.full_metadata)))
                .collect()
        };
        let out = json!({
            "path": args.model,
            "format": format,
            "gguf_version": version,
            "files": loaded.model.files,
            "architecture": loaded.model.arch,
            "convertible": refusal.is_none(),
            "not_convertible_because": refusal,
            "config": config,
            "parameters": params,
            "total_bytes": total,
            "by_dtype": by_dtype.iter().map(|(d, n, b)| (d.clone(), json!({"tensors": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
            "tensors": rows.iter().map(|r| json!({"name": r.name, "shape": r.shape, "dtype": r.dtype, "bytes": r.bytes})).collect::<Vec<_>>(),
            "metadata": md,
        });
        let mut out = out;
        if let Some(ct) = &loaded.ct {
            out["compressed_tensors"] = ct_json(ct);
        }
        printer.data(&serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    let mut s = String::new();
    let kind = match loaded.kind {
        InputKind::HfDir => format!(
            "Hugging Face checkpoint, {} safetensors file(s)",
            loaded.model.files.len()
        ),
        InputKind::Safetensors => "safetensors file".to_string(),
        InputKind::Gguf { version } => format!("GGUF v{version}"),
    };
    s += &format!(
        "model: {} ({kind})\n",
        printable(&args.model.display().to_string())
    );
    if let Some(a) = &loaded.model.arch {
        s += &format!("architecture: {}\n", arch_line(a));
    }
    if let Some(why) = &refusal {
        s += &format!("kiln cannot convert this: {}\n", printable(why));
    }
    s += &format!("parameters: {} ({params})\n", human_count(params));
    s += &format!(
        "tensors: {}, {} ({total} bytes)\n",
        rows.len(),
        human_bytes(total)
    );
    for (d, n, b) in &by_dtype {
        s += &format!("  {d:<8} {n:>5} tensors  {:>12}\n", human_bytes(*b));
    }
    // Names are data from the file: printed with control characters escaped.
    let names: Vec<_> = rows.iter().map(|r| printable(&r.name)).collect();
    let w = names.iter().map(|n| n.len()).max().unwrap_or(4).max(4);
    s += &format!(
        "\n{:<w$}  {:<16} {:<8} {:>12}\n",
        "name", "shape", "dtype", "bytes"
    );
    for (r, name) in rows.iter().zip(&names) {
        s += &format!(
            "{:<w$}  {:<16} {:<8} {:>12}\n",
            name,
            shape(&r.shape),
            r.dtype,
            r.bytes
        );
    }
    if let Some(Value::Object(c)) = &config {
        s += "\nconfig.json:\n";
        for (k, v) in c {
            s += &format!("  {} = {}\n", printable(k), printable(&short_json(v)));
        }
    }
    if let Some(ct) = &loaded.ct {
        s += &ct_text(ct);
    }
    if format == "safetensors" && !st_metadata.is_empty() {
        s += "\nmetadata:\n";
        for (k, v) in &st_metadata {
            s += &format!("  {} = {v:?}\n", printable(k));
        }
    } else if !metadata.0.is_empty() {
        s += if format == "hf" {
            "\nGGUF metadata kiln writes:\n"
        } else {
            "\nmetadata:\n"
        };
        s += &metadata_text(metadata, args.full_metadata);
    }
    printer.data(&s);
    Ok(())
}

/// A config value as compact JSON, cut to 80 characters.
fn short_json(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        s.chars().take(77).collect::<String>() + "..."
    } else {
        s
    }
}

/// The `quantization_config` as kiln reads it, and every quantized Linear
/// with its layout and the tensors that store it.
fn ct_json(ct: &CtRead) -> Value {
    json!({
        "format": ct.config.format,
        "version": ct.config.version,
        "groups": ct.config.groups.iter().map(|g| json!({
            "name": g.name,
            "format": g.format,
            "targets": g.targets,
            "weights": ct_read::label(g.weights),
            "input_activations": g.activations,
        })).collect::<Vec<_>>(),
        "ignore": ct.config.ignore,
        "quantized": ct.tensors().map(|t| json!({
            "module": t.module,
            "group": t.group,
            "weights": ct_read::label(t.weights),
            "shape": [t.rows, t.cols],
            "decoded_dtype": t.dtype.name(),
            "stored": t.stored,
            "bytes": t.bytes,
        })).collect::<Vec<_>>(),
    })
}

fn ct_text(ct: &CtRead) -> String {
    let mut s = format!(
        "\ncompressed-tensors: format {}{}\n",
        printable(&ct.config.format),
        ct.config
            .version
            .as_deref()
            .map_or(String::new(), |v| format!(" (version {})", printable(v)))
    );
    for g in &ct.config.groups {
        let targets: Vec<_> = g
            .targets
            .iter()
            .map(|t| printable(t).into_owned())
            .collect();
        s += &format!(
            "  {}: {} {}, targets {}{}\n",
            printable(&g.name),
            printable(&g.format),
            ct_read::label(g.weights),
            targets.join(", "),
            g.activations
                .as_deref()
                .map_or(String::new(), |a| format!(", activations {a}"))
        );
    }
    if !ct.config.ignore.is_empty() {
        let ignore: Vec<_> = ct
            .config
            .ignore
            .iter()
            .map(|t| printable(t).into_owned())
            .collect();
        s += &format!("  ignore: {}\n", ignore.join(", "));
    }
    let rows: Vec<_> = ct.tensors().collect();
    let w = rows
        .iter()
        .map(|t| printable(&t.module).len())
        .max()
        .unwrap_or(6)
        .max(6);
    s += &format!(
        "\n{:<w$}  {:<14} {:<16} {:>12}  decoded\n",
        "module", "weights", "shape", "bytes"
    );
    for t in rows {
        s += &format!(
            "{:<w$}  {:<14} {:<16} {:>12}  {}\n",
            printable(&t.module),
            ct_read::label(t.weights),
            shape(&[t.rows, t.cols]),
            t.bytes,
            t.dtype.name()
        );
    }
    s
}

fn arch_line(a: &Arch) -> String {
    format!(
        "{} ({}): {} layers, hidden {}, {} heads ({} KV, head dim {}), FFN {}, vocab {}, context {}, {} embeddings{}",
        printable(a.hf_architecture.as_deref().unwrap_or(&a.family)),
        printable(&a.family),
        a.n_layer,
        a.hidden,
        a.n_head,
        a.n_head_kv,
        a.head_dim,
        a.ffn,
        a.vocab,
        a.context_length,
        if a.tied_embeddings { "tied" } else { "untied" },
        if a.n_expert > 0 { format!(", {} experts ({} active)", a.n_expert, a.n_expert_used) } else { String::new() }
    )
}

const ARRAY_PREVIEW: usize = 8;

fn meta_json(v: &MetaValue, full: bool) -> Value {
    match v {
        MetaValue::Array(items) if !full && items.len() > ARRAY_PREVIEW * 8 => json!({
            "array_len": items.len(),
            "head": items.iter().take(ARRAY_PREVIEW).map(|i| meta_json(i, full)).collect::<Vec<_>>(),
        }),
        MetaValue::Array(items) => Value::Array(items.iter().map(|i| meta_json(i, full)).collect()),
        MetaValue::F32(f) => json!(*f as f64),
        other => serde_json::to_value(other).unwrap_or(Value::Null),
    }
}

fn metadata_text(md: &Metadata, full: bool) -> String {
    let mut s = String::new();
    for (k, v) in &md.0 {
        let shown = match v {
            MetaValue::Array(items) if !full && items.len() > ARRAY_PREVIEW => {
                let head: Vec<String> = items.iter().take(ARRAY_PREVIEW).map(scalar_text).collect();
                format!("[{} items: {}, ...]", items.len(), head.join(", "))
            }
            MetaValue::Array(items) => format!(
                "[{}]",
                items.iter().map(scalar_text).collect::<Vec<_>>().join(", ")
            ),
            other => scalar_text(other),
        };
        s += &format!("  {} = {shown}\n", printable(k));
    }
    s
}

fn scalar_text(v: &MetaValue) -> String {
    match v {
        MetaValue::String(s) if s.chars().count() > 80 => {
            let short: String = s.chars().take(77).collect();
            format!("{:?}", short + "...")
        }
        MetaValue::String(s) => format!("{s:?}"),
        MetaValue::Array(a) => format!("[{} items]", a.len()),
        MetaValue::F32(f) => format!("{f}"),
        MetaValue::F64(f) => format!("{f}"),
        MetaValue::Bool(b) => b.to_string(),
        other => other
            .as_u64()
            .map(|u| u.to_string())
            .unwrap_or_else(|| format!("{other:?}")),
    }
}
