//! Which of a target's serving-cost figures were checked against a
//! measurement and which are extrapolated, for `kiln targets`.
//!
//! A figure (batch-1 decode, prefill, high-batch throughput) of an engine
//! class on a target is `measured` when the calibration data has at least one
//! row of that engine, metric and target; otherwise it is extrapolated, either
//! from factors fitted on other hardware of the same device class, or, when
//! that class has no rows, from borrowed factors with a widened band.
//!
//! What must stay true: the facts come from the shipped calibration
//! (`Calibration::validated`, written by the fit), never from a list kept by
//! hand; a figure is only called measured when a row of that very target was
//! fitted.

use super::calibration::{Calibration, EngineClass};
use super::target::{DeviceClass, Target};

/// The headline figures, in display order.
pub const METRICS: [&str; 3] = ["decode", "prefill", "throughput"];

/// How one figure of one engine class on one target is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Calibration rows of this target, engine and metric.
    Measured { rows: usize },
    /// No row of this target: factors fitted on `rows` rows of other
    /// hardware of the same device class and engine class.
    Extrapolated { rows: usize },
    /// No factors fitted for this engine class on this device class (no
    /// row, or rows of fewer than four hardware models): factors borrowed.
    Borrowed {
        engine: EngineClass,
        device: DeviceClass,
    },
    /// No calibration at all.
    Unknown,
}

/// One figure's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    pub engine: EngineClass,
    pub metric: &'static str,
    pub status: Status,
}

/// The status of every headline figure of every engine class on `target`.
pub fn coverage(cal: &Calibration, target: &Target) -> Vec<Coverage> {
    let mut out = Vec::new();
    for engine in [EngineClass::LlamaCpp, EngineClass::Server] {
        for metric in METRICS {
            let rows = cal
                .validated
                .iter()
                .find(|v| v.target == target.id && v.engine == engine && v.metric == metric)
                .map_or(0, |v| v.rows);
            let status = match cal.lookup(engine, target.class) {
                _ if rows > 0 => Status::Measured { rows },
                Some(c) if c.borrowed => Status::Borrowed {
                    engine: c.engine,
                    device: c.fitted_on,
                },
                Some(c) => Status::Extrapolated {
                    rows: c.factors.rows,
                },
                None => Status::Unknown,
            };
            out.push(Coverage {
                engine,
                metric,
                status,
            });
        }
    }
    out
}

/// A short cell for the target list: the measured figures, `l:` for
/// llama.cpp and `s:` for the server engines, `d`ecode, `p`refill,
/// `t`hroughput (e.g. `l:dp s:t`); `-` when none is measured.
pub fn coverage_code(cal: &Calibration, target: &Target) -> String {
    let all = coverage(cal, target);
    let mut parts = Vec::new();
    for (engine, tag) in [(EngineClass::LlamaCpp, "l:"), (EngineClass::Server, "s:")] {
        let letters: String = all
            .iter()
            .filter(|c| c.engine == engine && matches!(c.status, Status::Measured { .. }))
            .map(|c| &c.metric[..1])
            .collect();
        if !letters.is_empty() {
            parts.push(format!("{tag}{letters}"));
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// The legend of [`coverage_code`], one line.
pub const CODE_LEGEND: &str = "`measured`: cost figures checked against at least one published measurement (l: llama.cpp, s: server engines; d decode, p prefill, t high-batch throughput); the others are extrapolated.";

/// The detail for one target, a line per engine class and figure.
pub fn coverage_text(cal: &Calibration, target: &Target) -> String {
    let mut out = String::from("\n  serving-cost figures (kiln estimate), against measurements:\n");
    for c in coverage(cal, target) {
        let what = match c.status {
            Status::Measured { rows } => format!(
                "validated: {rows} measurement{} of this target",
                if rows == 1 { "" } else { "s" }
            ),
            Status::Extrapolated { rows } => {
                let pooled = cal
                    .lookup(c.engine, target.class)
                    .is_some_and(|f| f.factors.pooled_band);
                format!(
                    "extrapolated{}: no measurement of this target; factors fitted on {rows} row{} of other {} hardware{}",
                    if pooled { ", wide band" } else { "" },
                    if rows == 1 { "" } else { "s" },
                    target.class.name(),
                    if pooled {
                        " (fewer than 4 hardware models: the band is every calibrated class's)"
                    } else {
                        ""
                    }
                )
            }
            Status::Borrowed { engine, device } => format!(
                "extrapolated, wide band: no {} factors fitted for {} devices (measurements of fewer than 4 hardware models, or none); factors borrowed from {} on {} and the band widened (x0.5 - x1.5)",
                c.engine.name(),
                target.class.name(),
                engine.name(),
                device.name()
            ),
            Status::Unknown => "not estimated: no calibration".into(),
        };
        out.push_str(&format!(
            "    {:<10} {:<11} {what}\n",
            c.engine.name(),
            c.metric
        ));
    }
    out
}
