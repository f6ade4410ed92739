//! Cross-validation of the serving-cost fit: how well the model predicts
//! measurements it was not fitted to.
//!
//! Two schemes hold out whole groups of rows, refit on the rest with the same
//! procedure as the shipped fit ([`fit::fit`]) and predict the group:
//! leave one hardware model out (every row of one kiln profile) and leave one
//! source out (every row of one publication). Errors are reported per
//! headline metric (batch-1 decode, prefill, high-batch throughput) and per
//! hardware class, beside the in-sample error, never instead of it.
//!
//! The shipped bands of each (engine class, device class) are the
//! 5th-95th percentile of measured / predicted over the leave-one-hardware-out
//! predictions of that class, one for prefill (prompt processing, TTFT) and
//! one for the rest (decode, throughput); their coverage is measured the same
//! way, each held-out row against a band built without its own hardware's
//! rows.
//!
//! What must stay true: a fold never sees a row of the group it predicts
//! (refitting only the factor sets its rows use is exact, since the factors
//! of other classes do not enter their predictions); a class with no rows left
//! in a fold is predicted with borrowed factors, as `kiln estimate` would, and
//! counted; [`CV_LIMITS`] fail the test when the held-out error or coverage
//! regresses.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::calibration::{Calibration, EngineClass};
use super::fit::{cases, fit, headline, median, percentile, predict, rate_ratio, Case};
use super::target::DeviceClass;

type Key = (EngineClass, DeviceClass);

/// Which rows are held out together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scheme {
    Hardware,
    Source,
}

impl Scheme {
    fn group(self, c: &Case) -> &str {
        match self {
            Scheme::Hardware => c.hardware(),
            Scheme::Source => c.source(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scheme::Hardware => "leave one hardware model out",
            Scheme::Source => "leave one source out",
        }
    }
}

/// Limits on the cross-validated error of the shipped procedure: (scheme,
/// headline metric, largest median APE in %, smallest band coverage in %).
/// Lower the error (raise the coverage) when the model improves; loosening
/// one needs a reason in the commit.
const CV_LIMITS: &[(Scheme, &str, f64, f64)] = &[
    (Scheme::Hardware, "decode", 10.0, 78.0),
    (Scheme::Hardware, "prefill", 16.0, 78.0),
    // Throughput limits raised from 22 / 18 when Gaudi, MI300X vLLM and
    // TensorRT-LLM v1.0 rows joined (issue 13's new data).
    (Scheme::Hardware, "throughput", 23.0, 80.0),
    // Leaving out the Apple scoreboard leaves llama.cpp on Metal few rows, and
    // leaving out the Llama 3 benchmark source removes every 2024-build row,
    // so the generation factors cannot be fitted in that fold: the
    // leave-one-source-out error is high, and said so in the README.
    (Scheme::Source, "decode", 17.0, 15.0),
    (Scheme::Source, "prefill", 19.0, 25.0),
    (Scheme::Source, "throughput", 22.0, 80.0),
];

/// One row predicted by a fold that did not see it.
pub(super) struct HeldOut<'a> {
    pub(super) case: &'a Case,
    group: String,
    /// measured / predicted as a rate (> 1: faster than predicted).
    ratio: Option<f64>,
    ape: Option<f64>,
    /// The fold had no rows of this row's class: factors were borrowed.
    borrowed: bool,
}

/// Predict every row from a fit on the rows outside its group.
pub(super) fn held_out(cases: &[Case], scheme: Scheme) -> Vec<HeldOut<'_>> {
    let mut groups: BTreeMap<&str, Vec<&Case>> = BTreeMap::new();
    for c in cases {
        groups.entry(scheme.group(c)).or_default().push(c);
    }
    let mut out = Vec::new();
    for (g, members) in &groups {
        let training: Vec<&Case> = cases
            .iter()
            .filter(|c| c.fit && scheme.group(c) != *g)
            .collect();
        let touched: BTreeSet<Key> = members.iter().map(|c| c.key()).collect();
        let trained: BTreeSet<Key> = training.iter().map(|c| c.key()).collect();
        // Only the touched factor sets matter for these rows; when one has no
        // rows left the lookup borrows from another, so fit them all.
        let train: Vec<&Case> = if touched.is_subset(&trained) {
            training
                .into_iter()
                .filter(|c| touched.contains(&c.key()))
                .collect()
        } else {
            training
        };
        let cal = fit(&train);
        for c in members {
            let p = predict(c, &cal).filter(|p| *p > 0.0 && p.is_finite());
            out.push(HeldOut {
                case: c,
                group: g.to_string(),
                ratio: p.map(|p| rate_ratio(c, p)),
                ape: p.map(|p| (p - c.measured).abs() / c.measured * 100.0),
                borrowed: !cal.factors.contains_key(&c.key()),
            });
        }
    }
    out.sort_by(|a, b| a.case.id.cmp(&b.case.id));
    out
}

/// The band's percentiles of the held-out ratios: 5th and 95th. A 10th-90th
/// band covered only 68-77% of held-out rows (errors of one hardware model
/// move together, so a band built without it is too narrow); 5th-95th brings
/// the held-out coverage near the 80% the band is meant to have.
const BAND_Q: f64 = 0.05;

/// [`BAND_Q`] and `1 - BAND_Q` percentiles of `ratios` (sorted here), widened to include 1.
fn band_of(mut ratios: Vec<f64>) -> Option<(f64, f64)> {
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let r = |v: f64| (v * 1e6).round() / 1e6;
    Some((
        r(percentile(&ratios, BAND_Q).min(1.0)),
        r(percentile(&ratios, 1.0 - BAND_Q).max(1.0)),
    ))
}

/// Which band a row is scored against: prefill (prompt processing, TTFT)
/// or the rest (decode, throughput).
fn is_prefill(c: &Case) -> bool {
    headline(&c.metric) == "prefill"
}

/// The shipped bands: per class and band kind (`true`: prefill), from the
/// fitted rows' held-out ratios.
pub(super) fn bands(held: &[HeldOut<'_>]) -> BTreeMap<(Key, bool), (f64, f64)> {
    let mut by: BTreeMap<(Key, bool), Vec<f64>> = BTreeMap::new();
    for h in held.iter().filter(|h| h.case.fit && !h.borrowed) {
        if let Some(r) = h.ratio {
            by.entry((h.case.key(), is_prefill(h.case)))
                .or_default()
                .push(r);
        }
    }
    by.into_iter()
        .filter_map(|(k, v)| band_of(v).map(|b| (k, b)))
        .collect()
}

/// Set the bands of `cal` from the leave-one-hardware-out predictions; a
/// class without rows of one kind takes the other kind's band.
pub(super) fn apply_bands(cal: &mut Calibration, held: &[HeldOut<'_>]) {
    let b = bands(held);
    for (k, f) in cal.factors.iter_mut() {
        let rest = b.get(&(*k, false)).copied();
        let pre = b.get(&(*k, true)).copied();
        if let Some((lo, hi)) = rest.or(pre) {
            f.band_low = lo;
            f.band_high = hi;
        }
        if let Some((lo, hi)) = pre.or(rest) {
            f.prefill_band_low = lo;
            f.prefill_band_high = hi;
        }
    }
}

/// Is each held-out row inside a band built from the other groups' held-out
/// rows of its class and band kind? `None` where no such row exists.
fn covered(held: &[HeldOut<'_>]) -> Vec<Option<bool>> {
    held.iter()
        .map(|h| {
            let others = |kind: bool| -> Vec<f64> {
                held.iter()
                    .filter(|o| o.case.fit && !o.borrowed && o.group != h.group)
                    .filter(|o| o.case.key() == h.case.key() && is_prefill(o.case) == kind)
                    .filter_map(|o| o.ratio)
                    .collect()
            };
            let mut pool = others(is_prefill(h.case));
            if pool.is_empty() {
                pool = others(!is_prefill(h.case));
            }
            let (lo, hi) = band_of(pool)?;
            let (lo, hi) = if h.borrowed {
                (lo * 0.5, hi * 1.5)
            } else {
                (lo, hi)
            };
            Some(h.ratio.is_some_and(|r| (lo..=hi).contains(&r)))
        })
        .collect()
}

/// Median APE and band coverage of one cell of the table.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cell {
    pub(super) rows: usize,
    pub(super) mdape: f64,
    /// Percent of rows with a band that fall inside it.
    pub(super) coverage: f64,
    pub(super) borrowed: usize,
}

/// Cells per (headline metric, hardware class); class `all` aggregates.
pub(super) fn cells(held: &[HeldOut<'_>]) -> BTreeMap<(String, String), Cell> {
    let cov = covered(held);
    // Per cell: APEs, rows with a band, rows inside it, rows with borrowed factors.
    type Acc = (Vec<f64>, usize, usize, usize);
    let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for (h, c) in held.iter().zip(&cov) {
        let metric = headline(&h.case.metric).to_string();
        for class in [h.case.hw_class().to_string(), "all".to_string()] {
            let e = acc.entry((metric.clone(), class)).or_default();
            if let Some(a) = h.ape {
                e.0.push(a);
            }
            if let Some(inside) = c {
                e.1 += 1;
                e.2 += usize::from(*inside);
            }
            e.3 += usize::from(h.borrowed);
        }
    }
    acc.into_iter()
        .map(|(k, (apes, with_band, inside, borrowed))| {
            let cell = Cell {
                rows: apes.len(),
                mdape: median(apes),
                coverage: if with_band == 0 {
                    f64::NAN
                } else {
                    inside as f64 * 100.0 / with_band as f64
                },
                borrowed,
            };
            (k, cell)
        })
        .collect()
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.1}%")
    }
}

/// The README table: per headline metric and hardware class, the held-out
/// error and coverage of both schemes beside the in-sample error.
pub(super) fn table(
    hardware: &[HeldOut<'_>],
    source: &[HeldOut<'_>],
    in_sample: &BTreeMap<String, f64>,
) -> String {
    let (h, s) = (cells(hardware), cells(source));
    let mut ins: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for x in hardware {
        if let Some(a) = in_sample.get(&x.case.id) {
            let metric = headline(&x.case.metric).to_string();
            for class in [x.case.hw_class().to_string(), "all".to_string()] {
                ins.entry((metric.clone(), class)).or_default().push(*a);
            }
        }
    }
    let mut out = String::from(
        "| metric | hardware class | rows | held-out hardware: median APE | band coverage | held-out source: median APE | band coverage | in-sample median APE |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for ((metric, class), c) in &h {
        let o = s.get(&(metric.clone(), class.clone()));
        let borrowed = o.map_or(0, |o| o.borrowed);
        let _ = writeln!(
            out,
            "| {metric} | {class} | {} | {} | {} | {}{} | {} | {} |",
            c.rows,
            pct(c.mdape),
            pct(c.coverage),
            o.map_or("-".into(), |o| pct(o.mdape)),
            if borrowed > 0 {
                format!(" ({borrowed} borrowed)")
            } else {
                String::new()
            },
            o.map_or("-".into(), |o| pct(o.coverage)),
            pct(ins
                .get(&(metric.clone(), class.clone()))
                .map_or(f64::NAN, |v| median(v.clone()))),
        );
    }
    out
}

/// Check [`CV_LIMITS`]; the failures, in words.
pub(super) fn regressions(hardware: &[HeldOut<'_>], source: &[HeldOut<'_>]) -> Vec<String> {
    let (h, s) = (cells(hardware), cells(source));
    let mut bad = Vec::new();
    for (scheme, metric, max_ape, min_cov) in CV_LIMITS {
        let cells = if *scheme == Scheme::Hardware { &h } else { &s };
        let Some(c) = cells.get(&(metric.to_string(), "all".to_string())) else {
            bad.push(format!("{}: no {metric} rows", scheme.name()));
            continue;
        };
        if c.mdape.is_nan() || c.mdape > *max_ape {
            bad.push(format!(
                "{}: {metric} median APE {:.1}% above its limit {max_ape}%",
                scheme.name(),
                c.mdape
            ));
        }
        if c.coverage < *min_cov {
            bad.push(format!(
                "{}: {metric} band coverage {:.1}% below its floor {min_cov}%",
                scheme.name(),
                c.coverage
            ));
        }
    }
    bad
}

#[test]
fn cross_validated_error_has_not_regressed() {
    let (all, _, _) = cases();
    let hardware = held_out(&all, Scheme::Hardware);
    let source = held_out(&all, Scheme::Source);
    let bad = regressions(&hardware, &source);
    assert!(
        bad.is_empty(),
        "cross-validation regressed:\n{}",
        bad.join("\n")
    );
    // A fold must predict every row it holds out.
    let missing: Vec<&str> = hardware
        .iter()
        .chain(&source)
        .filter(|h| h.ape.is_none())
        .map(|h| h.case.id.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "held-out rows without a prediction: {missing:?}"
    );
}
