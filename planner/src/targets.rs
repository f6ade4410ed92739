//! The accelerator profiles kiln knows: the built-ins, the `cpu` profile
//! of this host (its memory bandwidth measured on request), and profile
//! files; resolving a `--target` id; and the profiles as text.
//!
//! What must stay true: the list is the built-in profiles, then `cpu`, then
//! any file (which replaces a built-in of the same id, with a warning); a
//! figure that is unknown prints as `?`, never as a number.

use std::path::{Path, PathBuf};
use std::time::Instant;

use passes::cost::coverage::{coverage, coverage_code, coverage_text, Status, CODE_LEGEND};
use passes::cost::host::{cpu_target, parse_host};
use passes::cost::target::{trim_float, FIGURES};
use passes::cost::{builtin, Calibration, Figure, Origin, Precision, Target};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::progress::Progress;

/// Read a user's profile file.
pub fn load_file(path: &Path) -> Result<Target> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadTarget {
        path: path.to_path_buf(),
        source,
    })?;
    let what = path.display().to_string();
    Ok(Target::from_toml(&text, &what, Origin::File(what.clone()))?)
}

/// Time parallel copies of a 512 MiB buffer (memcpy, fast in any build
/// profile), counting bytes read plus written; the best of four.
fn measure_bandwidth() -> (f64, String) {
    const BYTES: usize = 512 << 20;
    const CHUNK: usize = 1 << 20;
    let src: Vec<u8> = (0..BYTES).map(|i| i as u8).collect();
    let mut dst = vec![0u8; BYTES];
    let threads = rayon::current_num_threads();
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let t = Instant::now();
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| d.copy_from_slice(s));
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&dst);
    }
    let gbps = (2 * BYTES) as f64 / best / 1e9;
    let gbps = (gbps * 10.0).round() / 10.0;
    (gbps, format!("best of 4 parallel copies of 512 MiB on {threads} threads, bytes read + written ({gbps} GB/s)"))
}

/// The `cpu` profile of this machine.
pub fn host_target(measure: bool, progress: &dyn Progress) -> Target {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let info = parse_host(&cpuinfo, &meminfo);
    let measured = if measure {
        progress.status("measuring memory read bandwidth...");
        Some(measure_bandwidth())
    } else {
        None
    };
    cpu_target(&info, measured)
}

/// Every profile: built-ins, `cpu`, then files (replacing built-ins of the
/// same id, with a warning each).
pub fn all_targets(
    files: &[PathBuf],
    measure: bool,
    progress: &dyn Progress,
) -> Result<(Vec<Target>, Vec<String>)> {
    let mut all = builtin()?;
    let mut warnings = Vec::new();
    all.push(host_target(measure, progress));
    for f in files {
        let t = load_file(f)?;
        if let Some(slot) = all.iter_mut().find(|x| x.id == t.id) {
            warnings.push(format!(
                "{} replaces the built-in profile `{}`",
                passes::printable(&f.display().to_string()),
                passes::printable(&t.id)
            ));
            *slot = t;
        } else {
            all.push(t);
        }
    }
    Ok((all, warnings))
}

/// The profile `id`, from the files, the built-ins or the host.
pub fn resolve(
    id: &str,
    files: &[PathBuf],
    measure: bool,
    progress: &dyn Progress,
) -> Result<Target> {
    let lower = id.to_ascii_lowercase();
    let mut from_files = Vec::new();
    for f in files {
        from_files.push(load_file(f)?);
    }
    if let Some(t) = from_files.into_iter().find(|t| t.id == lower) {
        return Ok(t);
    }
    if lower == "cpu" {
        return Ok(host_target(measure, progress));
    }
    Ok(passes::cost::find_builtin(&lower)?)
}

fn cell(f: Option<Figure>, uncertain: bool) -> String {
    match f {
        None => "-".into(),
        Some(Figure::Unknown) => "?".into(),
        Some(Figure::Known(v)) => {
            let s = if v >= 100.0 {
                format!("{v:.0}")
            } else {
                trim_float((v * 100.0).round() / 100.0)
            };
            if uncertain {
                format!("{s}~")
            } else {
                s
            }
        }
    }
}

fn sixteen_bit(t: &Target) -> (Option<Figure>, bool) {
    let f = t.peak(Precision::Fp16).or_else(|| t.peak(Precision::Bf16));
    let p = if t.peak(Precision::Fp16).is_some() {
        "peak_tflops.fp16"
    } else {
        "peak_tflops.bf16"
    };
    (f, t.is_uncertain(p))
}

/// A profile as JSON: its figures (the profile's own serialization) and
/// `cost_coverage`, one entry per engine class and headline figure of
/// `kiln estimate` (`decode`, `prefill`, `throughput`): `validated` (true when
/// at least one calibration measurement of this very target backs it),
/// `status` (`validated`, `extrapolated` from other hardware of the class,
/// `borrowed` from another class with a widened band, or `none`), `rows`
/// (the measurements behind it: of this target when validated, of its class
/// when extrapolated) and, when borrowed, where from.
pub fn target_json(t: &Target) -> serde_json::Result<serde_json::Value> {
    let mut v = serde_json::to_value(t)?;
    let cov: Vec<serde_json::Value> = match Calibration::shipped() {
        Ok(cal) => coverage(&cal, t)
            .into_iter()
            .map(|c| {
                let (status, rows, from) = match c.status {
                    Status::Measured { rows } => ("validated", Some(rows), None),
                    Status::Extrapolated { rows } => ("extrapolated", Some(rows), None),
                    Status::Borrowed { engine, device } => (
                        "borrowed",
                        None,
                        Some(serde_json::json!({
                            "engine_class": engine.name(),
                            "device_class": device.name(),
                        })),
                    ),
                    Status::Unknown => ("none", None, None),
                };
                serde_json::json!({
                    "engine_class": c.engine.name(),
                    "metric": c.metric,
                    "validated": status == "validated",
                    "status": status,
                    "rows": rows,
                    "borrowed_from": from,
                })
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("cost_coverage".into(), serde_json::Value::Array(cov));
    }
    Ok(v)
}

/// The profiles as a table.
pub fn list_text(all: &[Target]) -> String {
    let header = [
        "id", "name", "class", "mem GB", "GB/s", "fp16", "fp8", "int8", "fp4", "W", "$/h",
        "measured",
    ];
    let cal = Calibration::shipped().ok();
    let rows: Vec<[String; 12]> = all
        .iter()
        .map(|t| {
            let (f16, u16) = sixteen_bit(t);
            let p = |x: Precision| {
                cell(
                    t.peak(x),
                    t.is_uncertain(&format!("peak_tflops.{}", x.name())),
                )
            };
            [
                t.id.clone(),
                t.name.clone(),
                t.class.name().to_string(),
                cell(Some(t.memory_gb), t.is_uncertain("memory_gb")),
                cell(
                    Some(t.memory_bandwidth_gbps),
                    t.is_uncertain("memory_bandwidth_gbps"),
                ),
                cell(f16, u16),
                p(Precision::Fp8),
                p(Precision::Int8),
                p(Precision::Fp4),
                cell(Some(t.tdp_w), t.is_uncertain("tdp_w")),
                cell(
                    Some(t.price_per_hour_usd),
                    t.is_uncertain("price_per_hour_usd"),
                ),
                cal.as_ref().map_or("-".into(), |c| coverage_code(c, t)),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w - c.chars().count();
            if i < 3 || i == 11 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
            s.push_str("  ");
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|s| s.to_string()).collect(), &mut out);
    for r in rows {
        line(r.to_vec(), &mut out);
    }
    out.push_str(&format!(
        "\n{} targets. Peaks are dense TFLOPS (TOPS for int8) of native formats; `-` not native, `?` not published, `~` uncertain.\n`kiln targets ID` shows one with its sources.\n{CODE_LEGEND}\n",
        all.len()
    ));
    out
}

/// One profile with the source of every figure.
pub fn detail_text(t: &Target) -> String {
    let origin = match &t.origin {
        Origin::Builtin => format!("built-in, targets/{}.toml", t.id),
        Origin::File(p) => format!("from {p}"),
        Origin::Host => "this host".into(),
    };
    let mut out = format!(
        "{}  {}\n  vendor {}, class {}, {}\n\n",
        t.id,
        t.name,
        t.vendor,
        t.class.name(),
        origin
    );
    let label = |k: &str| match k {
        "memory_gb" => ("memory", "GB"),
        "memory_bandwidth_gbps" => ("memory bandwidth", "GB/s"),
        "onchip_mb" => ("on-chip memory", "MB"),
        "tdp_w" => ("power (TDP)", "W"),
        "interconnect_gbps" => ("interconnect", "GB/s per direction"),
        _ => ("price", "$ per device-hour"),
    };
    for key in FIGURES {
        let f = t.figure(key).expect("schema figure");
        let (name, unit) = label(key);
        let value = match f {
            Figure::Known(v) => format!(
                "{} {unit}{}",
                trim_float(v),
                if t.is_uncertain(key) {
                    " (uncertain)"
                } else {
                    ""
                }
            ),
            Figure::Unknown => "unknown (not published, or not found)".to_string(),
        };
        out.push_str(&format!("  {name:<18} {value}\n"));
        let src = if *key == "price_per_hour_usd" {
            t.price_source.clone()
        } else {
            t.sources.get(*key).cloned()
        };
        if let (Figure::Known(_), Some(s)) = (f, src) {
            out.push_str(&format!("  {:<18} source: {s}\n", ""));
        }
    }
    out.push_str("\n  dense peak (TFLOPS; TOPS for integers), native formats:\n");
    if t.peak_tflops.is_empty() {
        out.push_str("    none published\n");
    }
    for (p, f) in &t.peak_tflops {
        let u = if t.is_uncertain(&format!("peak_tflops.{}", p.name())) {
            " (uncertain)"
        } else {
            ""
        };
        out.push_str(&format!(
            "    {:<6} {}{u}\n",
            p.name(),
            match f {
                Figure::Known(v) => trim_float(*v),
                Figure::Unknown => "unknown (native, not published)".into(),
            }
        ));
    }
    if let Some(s) = t.sources.get("peak_tflops") {
        out.push_str(&format!("    source: {s}\n"));
    }
    out.push_str(
        "\n  runtimes (what each runs natively: gguf, f16/bf16, compressed-tensors schemes):\n",
    );
    if t.runtimes.is_empty() {
        out.push_str("    none listed\n");
    }
    let w = t
        .runtimes
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max(10);
    for (r, f) in &t.runtimes {
        let single = if t.is_single_group(r) {
            " (one config group: no mixed precision)"
        } else {
            ""
        };
        out.push_str(&format!("    {r:<w$} {}{single}\n", f.join(", ")));
        if let Some(s) = t.runtime_sources.get(r) {
            out.push_str(&format!("    {:<w$} source: {s}\n", ""));
        }
    }
    if let Some(s) = t.sources.get("runtimes") {
        out.push_str(&format!("    source: {s}\n"));
    }
    if let Some(m) = t.fp8_e4m3_max {
        out.push_str(&format!(
            "    FP8 (E4M3) weights are scaled to +-{}: {}\n",
            trim_float(m),
            t.sources
                .get("fp8_e4m3_max")
                .map_or("no source", String::as_str)
        ));
    }
    if let Ok(cal) = Calibration::shipped() {
        out.push_str(&coverage_text(&cal, t));
    }
    if !t.notes.is_empty() {
        out.push_str("\n  notes:\n");
        for n in &t.notes {
            out.push_str(&format!("    - {n}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kiln targets --json` carries, per engine class and figure, whether a
    /// measurement of that very target validates it (the text output's
    /// `measured` column), from the shipped calibration.
    #[test]
    fn json_carries_the_cost_coverage() {
        let cal = Calibration::shipped().unwrap();
        for id in ["h100-pcie", "tpu-v5e", "m3-max"] {
            let t = passes::cost::find_builtin(id).unwrap();
            let v = target_json(&t).unwrap();
            assert_eq!(v["id"], id);
            let cov = v["cost_coverage"].as_array().unwrap();
            assert_eq!(cov.len(), 6, "{id}: 2 engine classes x 3 figures");
            let want = coverage(&cal, &t);
            for (j, c) in cov.iter().zip(&want) {
                assert_eq!(j["engine_class"], c.engine.name());
                assert_eq!(j["metric"], c.metric);
                let validated = matches!(c.status, Status::Measured { .. });
                assert_eq!(j["validated"], validated, "{id} {}", c.metric);
            }
        }
        let h100 = target_json(&passes::cost::find_builtin("h100-pcie").unwrap()).unwrap();
        let decode = &h100["cost_coverage"][0];
        assert_eq!(decode["engine_class"], "llama.cpp");
        assert_eq!(decode["status"], "validated");
        assert!(decode["rows"].as_u64().unwrap() >= 1);
        let tpu = target_json(&passes::cost::find_builtin("tpu-v5e").unwrap()).unwrap();
        assert_eq!(tpu["cost_coverage"][0]["status"], "borrowed");
        assert_eq!(tpu["cost_coverage"][0]["validated"], false);
    }
}
