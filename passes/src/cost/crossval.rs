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
//! The shipped bands of each (engine class, device class) are a symmetric
//! (log-space) 85% quantile of measured / predicted over the held-out
//! predictions of that class (of every class when its rows span fewer than
//! [`MIN_GROUPS`] groups), one for prefill (prompt processing, TTFT) and one
//! for the rest (decode, throughput), the wider of the two schemes; their
//! coverage is measured the same way, each held-out row against a band built
//! without its own group's rows.
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
    (Scheme::Hardware, "decode", 10.0, 80.0),
    (Scheme::Hardware, "prefill", 16.0, 78.0),
    (Scheme::Hardware, "throughput", 23.0, 79.0),
    // Leaving out the Apple scoreboard leaves llama.cpp on Metal few rows, and
    // leaving out the Llama 3 benchmark source removes every 2024-build row,
    // so the generation factors cannot be fitted in that fold: the
    // leave-one-source-out error is high, and said so in the README. The
    // coverage floors are those of the symmetric band with pooling (76-86%
    // held out by source; the asymmetric per-class band reached 20% and 30%
    // for decode and prefill).
    (Scheme::Source, "decode", 17.0, 82.0),
    (Scheme::Source, "prefill", 17.5, 74.0),
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
    let groups: Vec<(&str, Vec<&Case>)> = groups.into_iter().collect();
    fn one<'a>(
        cases: &'a [Case],
        scheme: Scheme,
        g: &str,
        members: &[&'a Case],
    ) -> Vec<HeldOut<'a>> {
        let training: Vec<&Case> = cases
            .iter()
            .filter(|c| c.fit && scheme.group(c) != g)
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
        members
            .iter()
            .map(|c| {
                let p = predict(c, &cal).filter(|p| *p > 0.0 && p.is_finite());
                HeldOut {
                    case: c,
                    group: g.to_string(),
                    ratio: p.map(|p| rate_ratio(c, p)),
                    ape: p.map(|p| (p - c.measured).abs() / c.measured * 100.0),
                    borrowed: !cal.factors.contains_key(&c.key()),
                }
            })
            .collect()
    }
    // Folds are independent: fitted on worker threads, gathered in group
    // order (the result does not depend on the thread count).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
    let mut done: Vec<(usize, Vec<HeldOut<'_>>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((g, members)) = groups.get(i) else {
                            break;
                        };
                        mine.push((i, one(cases, scheme, g, members)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("fold thread"))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    let mut out: Vec<HeldOut<'_>> = done.into_iter().flat_map(|(_, v)| v).collect();
    out.sort_by(|a, b| a.case.id.cmp(&b.case.id));
    out
}

/// The band is symmetric in log space: measured/predicted within
/// `exp(±w)`, `w` the [`BAND_Q`] quantile of |ln(measured/predicted)| over
/// the held-out rows. Errors of one hardware model or one source move
/// together, and the sign of a new group's error is not known in advance:
/// an asymmetric 5th-95th band of the ratios covered only 48-56% of
/// held-out-source prefill rows (the largest source's bias is the one its
/// own fold cannot see), the symmetric one 77-86% under both schemes.
const BAND_Q: f64 = 0.85;

/// A class's band comes from its own held-out rows only when they span at
/// least this many groups (hardware models, or sources); otherwise from the
/// held-out rows of every class (of the same kind), since the spread of two
/// or three groups says little about the next one.
pub(super) const MIN_GROUPS: usize = 4;

/// `(exp(-w), exp(w))`, `w` the [`BAND_Q`] quantile of |ln r| over `ratios`.
fn band_of(ratios: Vec<f64>) -> Option<(f64, f64)> {
    if ratios.is_empty() {
        return None;
    }
    let mut logs: Vec<f64> = ratios.iter().map(|r| r.ln().abs()).collect();
    logs.sort_by(f64::total_cmp);
    let w = percentile(&logs, BAND_Q);
    let r = |v: f64| (v * 1e6).round() / 1e6;
    Some((r((-w).exp()), r(w.exp())))
}

/// Which band a row is scored against: prefill (prompt processing, TTFT)
/// or the rest (decode, throughput).
fn is_prefill(c: &Case) -> bool {
    headline(&c.metric) == "prefill"
}

/// Where a band's ratios came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BandSource {
    /// The class's own held-out rows (from [`MIN_GROUPS`] groups or more).
    Own,
    /// Every class's held-out rows: the class has too few groups.
    Pooled,
}

/// The band for rows of class `key` and kind `prefill`, from the fitted,
/// non-borrowed held-out rows outside group `skip`: the class's own when they
/// span [`MIN_GROUPS`] groups, else all classes'; the other kind's rows when
/// this kind has none.
fn band_for(
    held: &[HeldOut<'_>],
    key: Key,
    prefill: bool,
    skip: Option<&str>,
) -> Option<((f64, f64), BandSource)> {
    let usable = |o: &&HeldOut<'_>| {
        o.case.fit && !o.borrowed && o.ratio.is_some() && Some(o.group.as_str()) != skip
    };
    let pick = |kind: bool| -> Option<((f64, f64), BandSource)> {
        let own: Vec<&HeldOut<'_>> = held
            .iter()
            .filter(usable)
            .filter(|o| o.case.key() == key && is_prefill(o.case) == kind)
            .collect();
        let groups: BTreeSet<&str> = own.iter().map(|o| o.group.as_str()).collect();
        if groups.len() >= MIN_GROUPS {
            return band_of(own.iter().filter_map(|o| o.ratio).collect())
                .map(|b| (b, BandSource::Own));
        }
        band_of(
            held.iter()
                .filter(usable)
                .filter(|o| is_prefill(o.case) == kind)
                .filter_map(|o| o.ratio)
                .collect(),
        )
        .map(|b| (b, BandSource::Pooled))
    };
    pick(prefill).or_else(|| pick(!prefill))
}

/// Set the bands of `cal`: for each class and band kind, the wider of the
/// band built from the leave-one-hardware-out and from the
/// leave-one-source-out predictions (see [`band_for`]).
pub(super) fn apply_bands(cal: &mut Calibration, hardware: &[HeldOut<'_>], source: &[HeldOut<'_>]) {
    for (k, f) in cal.factors.iter_mut() {
        for prefill in [false, true] {
            let bands: Vec<(f64, f64)> = [hardware, source]
                .iter()
                .filter_map(|h| band_for(h, *k, prefill, None).map(|(b, _)| b))
                .collect();
            let Some(lo) = bands.iter().map(|b| b.0).reduce(f64::min) else {
                continue;
            };
            let hi = bands.iter().map(|b| b.1).fold(1.0, f64::max);
            if prefill {
                (f.prefill_band_low, f.prefill_band_high) = (lo, hi);
            } else {
                (f.band_low, f.band_high) = (lo, hi);
            }
        }
    }
}

/// The classes whose rows come from fewer than [`MIN_GROUPS`] hardware
/// models, so that their leave-one-hardware-out band is every class's (the
/// leave-one-source-out band of most classes is pooled too: few sources
/// publish each class, which the README states once for all).
pub(super) fn pooled_bands(cal: &Calibration, hardware: &[HeldOut<'_>]) -> Vec<Key> {
    cal.factors
        .keys()
        .filter(|k| {
            [false, true].iter().any(|prefill| {
                matches!(
                    band_for(hardware, **k, *prefill, None),
                    Some((_, BandSource::Pooled))
                )
            })
        })
        .copied()
        .collect()
}

/// Is each held-out row inside a band built without its own group (see
/// [`band_for`])? A row predicted with borrowed factors is scored against
/// the widened band `kiln estimate` would show. `None` where no band exists.
fn covered(held: &[HeldOut<'_>]) -> Vec<Option<bool>> {
    held.iter()
        .map(|h| {
            let ((lo, hi), _) = band_for(held, h.case.key(), is_prefill(h.case), Some(&h.group))?;
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
