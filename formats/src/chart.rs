//! The "size against measured error" scatter chart of the build report, as a
//! standalone SVG string with no dependencies.
//!
//! Recipes are grey open circles with their label, plans are small blue dots
//! joined in order of bytes (the trade-off curve; labelled only when there are
//! at most eight, and not when also drawn as the chosen point), the chosen
//! point is a larger red dot labelled `chosen: <label>`, and an optional
//! budget is a dashed vertical line labelled just under the top of the plot
//! (or, when it is more than twice the largest point, a note in the plot's
//! top-right corner, `budget: 21.7 GiB (off the scale)`, so that a small
//! model on a large card is not squeezed against the y axis).
//! The legend is one row between the title and the plot, so neither the data
//! nor the budget line crosses it. Labels are placed, chosen first, then
//! recipes, then plans, at the first of twelve places around their point
//! whose box (its width from DejaVu Sans's advances) overlaps no point, no label
//! placed before it, the legend, the budget line or its label, is crossed by
//! no segment of the plan curve, and stays in the plot; a
//! label with no free place is left out (and counted in an SVG comment);
//! [`label_boxes`] returns the boxes for tests. The x axis is bytes from 0
//! in the binary unit of the axis maximum (B, KiB, MiB, GiB: the report's
//! units), ticks at 1/2/5 steps of it, spanning the points and a budget
//! drawn to scale. The y axis is the error: linear from
//! 0 (or from the most negative error), switching to log10 when the largest
//! positive error is more than 20 times the smallest; a log axis spans the
//! data's decades, at most six below the largest error, its ticks all
//! written as `1e-3`, `2e-3`; errors below the axis (and `<= 0`) are
//! drawn on its bottom edge. Points whose error is NaN or infinite are
//! skipped and counted in an SVG comment. Ticks are 1/2/5 x 10^k steps,
//! usually five or six of them (four to eight where no 1/2/5 step gives five
//! or six).
//!
//! What must stay true:
//! - the output depends only on the [`Chart`]: no clock, no locale, no
//!   `HashMap` iteration, points drawn in input order (the plan curve in a
//!   stable sort by bytes);
//! - it is byte-identical across runs and platforms: the only float
//!   operations are IEEE `+ - * /`, `floor`/`ceil` and comparisons (the
//!   logarithm is computed here, not by the platform's libm), every
//!   coordinate is printed with exactly one decimal (`{:.1}`, never `-0.0`),
//!   and tick labels are built from integers;
//! - every piece of caller text is XML-escaped (`& < > " '`, and characters
//!   XML 1.0 forbids become `?`), so the output is well-formed whatever the
//!   labels contain;
//! - no input makes it panic: no points, one point, equal bytes, zero or
//!   negative errors and extreme magnitudes all give a drawable chart.
//!
//! Long file: one dependency-free renderer (axes, ticks, label placement and
//! the platform-independent arithmetic they share) kept in one module so
//! that its byte-identity rules above hold and are checked in one place.

use std::f64::consts::{LN_10, LN_2, SQRT_2};
use std::fmt::{self, Write as _};

/// What a point on the chart stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointKind {
    /// A fixed recipe (e.g. `Q4_K_M`), drawn as a grey open circle.
    Recipe,
    /// A candidate plan on the trade-off curve, drawn as a small blue dot.
    Plan,
    /// The plan the build picked, drawn as a larger red dot.
    Chosen,
}

/// One measured point: its size in bytes and its error.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub label: String,
    pub bytes: u64,
    pub error: f64,
    pub kind: PointKind,
}

/// Everything the chart shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<Point>,
    /// optional vertical line (e.g. the byte budget), labelled
    pub budget: Option<(u64, String)>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
const PLOT_LEFT: f64 = 84.0;
const PLOT_RIGHT: f64 = 696.0;
const PLOT_TOP: f64 = 72.0;
const PLOT_BOTTOM: f64 = 376.0;
/// Labels of points closer than this to the right edge go on their left.
/// Plan points are labelled only up to this many.
const MAX_PLAN_LABELS: usize = 8;
/// A log y axis spans at most this many decades below the largest error;
/// smaller errors are drawn on its bottom edge.
const MAX_DECADES: i32 = 6;
/// A budget more than this many times the largest point is not drawn to
/// scale (see `render`).
const FAR_BUDGET: u64 = 2;
/// Font size of the labels whose boxes are placed (points, legend, budget).
const LABEL_PX: f64 = 11.0;
/// Advance widths of printable ASCII (U+0020..U+007E) in DejaVu Sans, in
/// 1/2048 em: one of the widest common sans-serif faces, so a label set in
/// another (Helvetica, Arial, Liberation Sans) fits inside its box too.
const ADVANCE: [u16; 95] = [
    651, 821, 942, 1716, 1303, 1946, 1597, 563, 799, 799, 1024, 1716, 651, 739, 651, 690, 1303,
    1303, 1303, 1303, 1303, 1303, 1303, 1303, 1303, 1303, 690, 690, 1716, 1716, 1716, 1087, 2048,
    1401, 1405, 1430, 1577, 1294, 1178, 1587, 1540, 604, 604, 1343, 1141, 1767, 1532, 1612, 1235,
    1612, 1423, 1300, 1251, 1499, 1401, 2025, 1403, 1251, 1403, 799, 690, 799, 1716, 1024, 1024,
    1255, 1300, 1126, 1300, 1260, 721, 1300, 1298, 569, 569, 1186, 569, 1995, 1298, 1253, 1300,
    1300, 842, 1067, 803, 1298, 1212, 1675, 1212, 1212, 1075, 1303, 690, 1303, 1716,
];
/// The same for DejaVu Sans Bold.
const ADVANCE_BOLD: [u16; 95] = [
    713, 934, 1067, 1716, 1425, 2052, 1786, 627, 936, 936, 1071, 1716, 778, 850, 778, 748, 1425,
    1425, 1425, 1425, 1425, 1425, 1425, 1425, 1425, 1425, 819, 819, 1716, 1716, 1716, 1188, 2048,
    1585, 1561, 1503, 1700, 1399, 1399, 1681, 1714, 762, 762, 1587, 1305, 2038, 1714, 1741, 1501,
    1741, 1577, 1475, 1397, 1663, 1585, 2259, 1579, 1483, 1485, 936, 748, 936, 1716, 1024, 1024,
    1382, 1466, 1214, 1466, 1389, 891, 1466, 1458, 702, 702, 1362, 702, 2134, 1458, 1407, 1466,
    1466, 1010, 1219, 979, 1458, 1335, 1892, 1321, 1335, 1192, 1458, 748, 1458, 1716,
];
/// Advance of a character outside printable ASCII: a full em (generous).
const ADVANCE_OTHER: u16 = 2048;
/// Height of a label box above and below its baseline.
const ASCENT: f64 = 9.0;
const DESCENT: f64 = 3.0;
/// Baseline of the legend row, between the title and the plot.
const LEGEND_Y: f64 = 50.0;
/// Largest/smallest positive error above which the y axis is logarithmic.
const LOG_RATIO: f64 = 20.0;
/// Values are clamped to this magnitude so that powers of ten stay finite.
const MAX_MAGNITUDE: f64 = 1e290;
/// Smallest positive value a log axis can show.
const MIN_LOG: f64 = 1e-290;
/// A linear range narrower than this is treated as empty.
const MIN_SPAN: f64 = 1e-280;
/// The x axis of an empty chart runs from 0 to 1 GB.
const EMPTY_X_MAX: f64 = 1e9;

const GREY: &str = "#777777";
const BLUE: &str = "#1f77b4";
const RED: &str = "#d62728";
const INK: &str = "#333333";
const GRID: &str = "#e6e6e6";

/// Renders `chart` as a 720x440 SVG document ending in a newline.
pub fn size_error_svg(chart: &Chart) -> String {
    let mut out = String::with_capacity(8 * 1024);
    render(chart, &mut out).expect("writing to a String cannot fail");
    out
}

/// Write the SVG; returns every label's text and box (points' labels, the
/// legend, the budget's label).
fn render(chart: &Chart, out: &mut String) -> Result<Vec<(String, Box2)>, fmt::Error> {
    let points: Vec<&Point> = chart
        .points
        .iter()
        .filter(|p| p.error.is_finite())
        .collect();
    let skipped = chart.points.len() - points.len();
    // A budget far right of the data (a small model on a large card) would
    // squeeze every point against the y axis: past FAR_BUDGET times the
    // largest point it is written in the plot's top-right corner instead of
    // drawn as a line, and the x axis spans the data.
    let largest = points.iter().map(|p| p.bytes).max();
    let line_at = chart
        .budget
        .as_ref()
        .map(|b| b.0)
        .filter(|&b| largest.is_none_or(|m| b <= m.saturating_mul(FAR_BUDGET)));
    let x = x_axis(&points, line_at);
    let y = y_axis(&points);

    writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" height=\"440\" \
         viewBox=\"0 0 720 440\" font-family=\"sans-serif\" font-size=\"11\">"
    )?;
    if skipped > 0 {
        let s = if skipped == 1 { "" } else { "s" };
        writeln!(
            out,
            "<!-- skipped {skipped} point{s} with a NaN or infinite error -->"
        )?;
    }
    writeln!(
        out,
        "<rect x=\"0.0\" y=\"0.0\" width=\"{}\" height=\"{}\" fill=\"#ffffff\"/>",
        C(WIDTH),
        C(HEIGHT)
    )?;
    writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"16\" \
         font-weight=\"bold\" fill=\"{INK}\">{}</text>",
        C(WIDTH / 2.0),
        C(28.0),
        Esc(&chart.title)
    )?;
    axes(out, &x, &y, chart)?;
    if let (Some(bytes), Some((_, label))) = (line_at, &chart.budget) {
        budget_line(out, &x, bytes, label)?;
    }
    if points.is_empty() {
        writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"14\" \
             fill=\"{GREY}\">no data</text>",
            C((PLOT_LEFT + PLOT_RIGHT) / 2.0),
            C((PLOT_TOP + PLOT_BOTTOM) / 2.0)
        )?;
    }
    let mut fixed: Vec<(String, Box2)> = legend(out, &points, line_at.is_some())?
        .into_iter()
        .map(|b| ("legend".to_string(), b))
        .collect();
    match (&chart.budget, line_at) {
        (Some((bytes, label)), Some(_)) => {
            fixed.push((label.clone(), budget_label_box(&x, *bytes, label)))
        }
        (Some((bytes, label)), None) => {
            let text = format!("{label}: {} (off the scale)", crate::human::bytes(*bytes));
            let w = text_width(&text, false);
            let base = PLOT_TOP + 14.0;
            let b = Box2 {
                x0: PLOT_RIGHT - 4.0 - w,
                y0: base - ASCENT,
                x1: PLOT_RIGHT - 4.0,
                y1: base + DESCENT,
            };
            writeln!(
                out,
                "<text class=\"budget-label\" x=\"{}\" y=\"{}\" text-anchor=\"start\" fill=\"{INK}\">{}</text>",
                C(b.x0),
                C(base),
                Esc(&text)
            )?;
            fixed.push((text, b));
        }
        (None, _) => {}
    }
    let mut taken: Vec<Box2> = fixed.iter().map(|(_, b)| *b).collect();
    // The budget line itself: labels do not cross it.
    if let Some(bytes) = line_at {
        let px = x_px(&x, bytes as f64);
        taken.push(Box2 {
            x0: px - 1.5,
            y0: PLOT_TOP,
            x1: px + 1.5,
            y1: PLOT_BOTTOM,
        });
    }
    let placed = draw_points(out, &x, &y, &points, &mut taken)?;
    writeln!(out, "</svg>")?;
    fixed.extend(placed);
    Ok(fixed)
}

fn axes(out: &mut String, x: &Axis, y: &Axis, chart: &Chart) -> fmt::Result {
    writeln!(
        out,
        "<g class=\"grid\" stroke=\"{GRID}\" stroke-width=\"1\">"
    )?;
    for t in &x.ticks {
        let px = x_px(x, t.value);
        writeln!(
            out,
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\"/>",
            C(px),
            C(PLOT_TOP),
            C(PLOT_BOTTOM)
        )?;
    }
    for t in &y.ticks {
        let py = y_px(y, t.value);
        writeln!(
            out,
            "<line x1=\"{1}\" y1=\"{0}\" x2=\"{2}\" y2=\"{0}\"/>",
            C(py),
            C(PLOT_LEFT),
            C(PLOT_RIGHT)
        )?;
    }
    writeln!(out, "</g>")?;

    writeln!(
        out,
        "<g class=\"axes\" stroke=\"{INK}\" stroke-width=\"1\">"
    )?;
    writeln!(
        out,
        "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\"/>",
        C(PLOT_LEFT),
        C(PLOT_BOTTOM),
        C(PLOT_RIGHT)
    )?;
    writeln!(
        out,
        "<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\"/>",
        C(PLOT_LEFT),
        C(PLOT_TOP),
        C(PLOT_BOTTOM)
    )?;
    for t in &x.ticks {
        let px = x_px(x, t.value);
        writeln!(
            out,
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\"/>",
            C(px),
            C(PLOT_BOTTOM),
            C(PLOT_BOTTOM + 5.0)
        )?;
    }
    for t in &y.ticks {
        let py = y_px(y, t.value);
        writeln!(
            out,
            "<line x1=\"{1}\" y1=\"{0}\" x2=\"{2}\" y2=\"{0}\"/>",
            C(py),
            C(PLOT_LEFT - 5.0),
            C(PLOT_LEFT)
        )?;
    }
    writeln!(out, "</g>")?;

    writeln!(out, "<g class=\"tick-labels\" fill=\"{INK}\">")?;
    for t in &x.ticks {
        writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            C(x_px(x, t.value)),
            C(PLOT_BOTTOM + 18.0),
            Esc(&t.label)
        )?;
    }
    for t in &y.ticks {
        writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            C(PLOT_LEFT - 8.0),
            C(y_px(y, t.value) + 4.0),
            Esc(&t.label)
        )?;
    }
    writeln!(out, "</g>")?;

    let y_label = if y.log {
        format!("{} (log scale)", chart.y_label)
    } else {
        chart.y_label.clone()
    };
    writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"13\" \
         fill=\"{INK}\">{}</text>",
        C((PLOT_LEFT + PLOT_RIGHT) / 2.0),
        C(HEIGHT - 16.0),
        Esc(&chart.x_label)
    )?;
    let (lx, ly) = (20.0, (PLOT_TOP + PLOT_BOTTOM) / 2.0);
    writeln!(
        out,
        "<text x=\"{0}\" y=\"{1}\" transform=\"rotate(-90 {0} {1})\" \
         text-anchor=\"middle\" font-size=\"13\" fill=\"{INK}\">{2}</text>",
        C(lx),
        C(ly),
        Esc(&y_label)
    )
}

fn budget_line(out: &mut String, x: &Axis, bytes: u64, label: &str) -> fmt::Result {
    let px = x_px(x, bytes as f64);
    writeln!(
        out,
        "<line class=\"budget\" x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" \
         stroke=\"{INK}\" stroke-width=\"1.2\" stroke-dasharray=\"6 4\"/>",
        C(px),
        C(PLOT_TOP),
        C(PLOT_BOTTOM)
    )?;
    let b = budget_label_box(x, bytes, label);
    writeln!(
        out,
        "<text class=\"budget-label\" x=\"{}\" y=\"{}\" text-anchor=\"start\" fill=\"{INK}\">{}</text>",
        C(b.x0),
        C(b.y1 - DESCENT),
        Esc(label)
    )
}

/// Where the budget's label goes: just under the top of the plot, on the
/// line's left when it is near the right edge, else on its right.
fn budget_label_box(x: &Axis, bytes: u64, label: &str) -> Box2 {
    let px = x_px(x, bytes as f64);
    let w = text_width(label, false);
    let x0 = if px + 4.0 + w > PLOT_RIGHT {
        px - 4.0 - w
    } else {
        px + 4.0
    };
    let base = PLOT_TOP + 14.0;
    Box2 {
        x0,
        y0: base - ASCENT,
        x1: x0 + w,
        y1: base + DESCENT,
    }
}

/// Whether the segment from `a` to `z` passes through `r` (Liang-Barsky
/// clipping: only `+ - * /` and comparisons, as the module requires).
fn crosses(a: (f64, f64), z: (f64, f64), r: &Box2) -> bool {
    let (dx, dy) = (z.0 - a.0, z.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-dx, a.0 - r.x0),
        (dx, r.x1 - a.0),
        (-dy, a.1 - r.y0),
        (dy, r.y1 - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return false;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                if t > t1 {
                    return false;
                }
                t0 = t0.max(t);
            } else {
                if t < t0 {
                    return false;
                }
                t1 = t1.min(t);
            }
        }
    }
    true
}

/// An axis-aligned box in pixels (a label's or a point's extent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Box2 {
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
}

impl Box2 {
    fn overlaps(&self, o: &Box2) -> bool {
        self.x0 < o.x1 && o.x0 < self.x1 && self.y0 < o.y1 && o.y0 < self.y1
    }

    fn inside(&self, x0: f64, y0: f64, x1: f64, y1: f64) -> bool {
        self.x0 >= x0 && self.x1 <= x1 && self.y0 >= y0 && self.y1 <= y1
    }
}

/// Width of a label at [`LABEL_PX`] from DejaVu Sans's advance widths (no
/// font is read: the table is part of this file). Kerning only narrows.
fn text_width(text: &str, bold: bool) -> f64 {
    let table = if bold { &ADVANCE_BOLD } else { &ADVANCE };
    let units: u64 = text
        .chars()
        .map(|c| match c as u32 {
            0x20..=0x7e => u64::from(table[(c as u32 - 0x20) as usize]),
            _ => u64::from(ADVANCE_OTHER),
        })
        .sum();
    units as f64 * LABEL_PX / 2048.0
}

/// Where each point label was placed (its text and box), and the boxes of
/// the legend and the budget label: what the no-overlap checks test.
pub fn label_boxes(chart: &Chart) -> Vec<(String, Box2)> {
    let mut scratch = String::new();
    render(chart, &mut scratch).expect("writing to a String cannot fail")
}

fn draw_points(
    out: &mut String,
    x: &Axis,
    y: &Axis,
    points: &[&Point],
    taken: &mut Vec<Box2>,
) -> Result<Vec<(String, Box2)>, fmt::Error> {
    let mut placed = Vec::new();
    let pos = |p: &Point| (x_px(x, p.bytes as f64), y_px(y, p.error));
    let radius = |k: PointKind| match k {
        PointKind::Recipe => 4.5,
        PointKind::Plan => 3.0,
        PointKind::Chosen => 6.0,
    };

    let mut plans: Vec<&Point> = points
        .iter()
        .copied()
        .filter(|p| p.kind == PointKind::Plan)
        .collect();
    // Stable: plans of equal size keep their input order.
    plans.sort_by_key(|p| p.bytes);
    if plans.len() >= 2 {
        write!(
            out,
            "<polyline class=\"plan-curve\" fill=\"none\" stroke=\"{BLUE}\" \
             stroke-width=\"1.2\" points=\""
        )?;
        for (i, p) in plans.iter().enumerate() {
            let (px, py) = pos(p);
            let sep = if i == 0 { "" } else { " " };
            write!(out, "{sep}{},{}", C(px), C(py))?;
        }
        writeln!(out, "\"/>")?;
    }
    // The curve's segments are obstacles too: no label is crossed by it.
    let curve: Vec<((f64, f64), (f64, f64))> =
        plans.windows(2).map(|w| (pos(w[0]), pos(w[1]))).collect();
    let clear = |b: &Box2, taken: &[Box2]| {
        b.inside(PLOT_LEFT + 2.0, PLOT_TOP, PLOT_RIGHT, PLOT_BOTTOM - 2.0)
            && !taken.iter().any(|t| t.overlaps(b))
            && !curve.iter().any(|&(a, z)| crosses(a, z, b))
    };
    let label_plans = plans.len() <= MAX_PLAN_LABELS;
    // A plan drawn again as the chosen point gets only the "chosen:" label.
    let is_chosen = |p: &Point| {
        points
            .iter()
            .any(|c| c.kind == PointKind::Chosen && c.bytes == p.bytes && c.error == p.error)
    };
    // Every point's disc is an obstacle for every label.
    for p in points {
        let (px, py) = pos(p);
        let r = radius(p.kind) + 1.0;
        taken.push(Box2 {
            x0: px - r,
            y0: py - r,
            x1: px + r,
            y1: py + r,
        });
    }

    // Drawn in layers (recipes, plans, chosen), each in input order.
    for kind in [PointKind::Recipe, PointKind::Plan, PointKind::Chosen] {
        for p in points.iter().filter(|p| p.kind == kind) {
            let (px, py) = pos(p);
            let r = radius(kind);
            let (class, style) = match kind {
                PointKind::Recipe => (
                    "recipe",
                    format!("fill=\"none\" stroke=\"{GREY}\" stroke-width=\"1.5\""),
                ),
                PointKind::Plan => ("plan", format!("fill=\"{BLUE}\"")),
                PointKind::Chosen => (
                    "chosen",
                    format!("fill=\"{RED}\" stroke=\"#ffffff\" stroke-width=\"1\""),
                ),
            };
            writeln!(
                out,
                "<circle class=\"{class}\" cx=\"{}\" cy=\"{}\" r=\"{}\" {style}>\
                 <title>{}: {} bytes, error {}</title></circle>",
                C(px),
                C(py),
                C(r),
                Esc(&p.label),
                p.bytes,
                Sci(p.error)
            )?;
        }
    }
    // Labels, most important first (chosen, recipes, plans), each at the
    // first place around its point that collides with nothing drawn or
    // labelled so far and stays inside the plot; a label with no free
    // place is left out (the point keeps its tooltip, the report its row).
    let mut order: Vec<&Point> = Vec::new();
    for kind in [PointKind::Chosen, PointKind::Recipe, PointKind::Plan] {
        order.extend(points.iter().copied().filter(|p| p.kind == kind));
    }
    let mut unlabelled = 0usize;
    for p in order {
        let (px, py) = pos(p);
        let r = radius(p.kind);
        let (text, fill, bold) = match p.kind {
            PointKind::Recipe => (p.label.clone(), "#555555", false),
            PointKind::Plan if label_plans && !is_chosen(p) => (p.label.clone(), BLUE, false),
            PointKind::Plan => continue,
            PointKind::Chosen => (format!("chosen: {}", p.label), RED, true),
        };
        let w = text_width(&text, bold);
        let h = ASCENT + DESCENT;
        // (left x of the box, baseline y): right, left, above, below, and the four diagonals.
        let gap = r + 3.0;
        let spots = [
            (px + gap, py + 4.0),
            (px - gap - w, py + 4.0),
            (px - w / 2.0, py - gap - DESCENT),
            (px - w / 2.0, py + gap + ASCENT),
            (px + gap, py - gap - DESCENT),
            (px + gap, py + gap + ASCENT),
            (px - gap - w, py - gap - DESCENT),
            (px - gap - w, py + gap + ASCENT),
            (px + gap, py - gap - DESCENT - h),
            (px - gap - w, py - gap - DESCENT - h),
            (px + gap, py + gap + ASCENT + h),
            (px - gap - w, py + gap + ASCENT + h),
        ];
        let free = spots
            .iter()
            .map(|&(x0, base)| Box2 {
                x0,
                y0: base - ASCENT,
                x1: x0 + w,
                y1: base + DESCENT,
            })
            .find(|b| clear(b, taken));
        // The chosen point's label matters most: further rows up and down.
        let far = || {
            (2..10)
                .flat_map(|k| [k as f64, -(k as f64)])
                .flat_map(|k| {
                    [
                        (px + gap, py + 4.0 + k * h),
                        (px - gap - w, py + 4.0 + k * h),
                    ]
                })
                .map(|(x0, base)| Box2 {
                    x0,
                    y0: base - ASCENT,
                    x1: x0 + w,
                    y1: base + DESCENT,
                })
                .find(|b| clear(b, taken))
        };
        let free = match free {
            None if p.kind == PointKind::Chosen => far(),
            f => f,
        };
        let Some(b) = free else {
            unlabelled += 1;
            continue;
        };
        taken.push(b);
        let class = match p.kind {
            PointKind::Recipe => "recipe",
            PointKind::Plan => "plan",
            PointKind::Chosen => "chosen",
        };
        let weight = if bold { " font-weight=\"bold\"" } else { "" };
        placed.push((text.clone(), b));
        writeln!(
            out,
            "<text class=\"{class}-label\" x=\"{}\" y=\"{}\" text-anchor=\"start\" \
             fill=\"{fill}\"{weight}>{}</text>",
            C(b.x0),
            C(b.y1 - DESCENT),
            Esc(&text)
        )?;
    }
    if unlabelled > 0 {
        writeln!(
            out,
            "<!-- {unlabelled} label(s) left out: no free place near the point -->"
        )?;
    }
    Ok(placed)
}

/// The legend: one row between the title and the plot (never over the
/// data or the budget line). Returns its box.
fn legend(out: &mut String, points: &[&Point], budget: bool) -> Result<Vec<Box2>, fmt::Error> {
    let has = |k: PointKind| points.iter().any(|p| p.kind == k);
    let entries: Vec<&str> = [
        (has(PointKind::Recipe), "llama.cpp recipe"),
        (has(PointKind::Plan), "kiln trade-off"),
        (has(PointKind::Chosen), "chosen"),
        (budget, "budget"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let cy = LEGEND_Y - 4.0;
    let mut cx = PLOT_LEFT + 10.0;
    writeln!(out, "<g class=\"legend\">")?;
    for name in &entries {
        match *name {
            "llama.cpp recipe" => writeln!(
                out,
                "<circle cx=\"{}\" cy=\"{}\" r=\"4.5\" fill=\"none\" stroke=\"{GREY}\" \
                 stroke-width=\"1.5\"/>",
                C(cx),
                C(cy)
            )?,
            "kiln trade-off" => {
                writeln!(
                    out,
                    "<line x1=\"{}\" y1=\"{2}\" x2=\"{1}\" y2=\"{2}\" stroke=\"{BLUE}\" \
                     stroke-width=\"1.2\"/>",
                    C(cx - 8.0),
                    C(cx + 8.0),
                    C(cy)
                )?;
                writeln!(
                    out,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"3.0\" fill=\"{BLUE}\"/>",
                    C(cx),
                    C(cy)
                )?
            }
            "chosen" => writeln!(
                out,
                "<circle cx=\"{}\" cy=\"{}\" r=\"6.0\" fill=\"{RED}\"/>",
                C(cx),
                C(cy)
            )?,
            _ => writeln!(
                out,
                "<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"{INK}\" \
                 stroke-width=\"1.2\" stroke-dasharray=\"3 2\"/>",
                C(cx),
                C(cy - 6.0),
                C(cy + 6.0)
            )?,
        }
        writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" fill=\"{INK}\">{name}</text>",
            C(cx + 12.0),
            C(LEGEND_Y)
        )?;
        cx += 12.0 + text_width(name, false) + 22.0;
    }
    writeln!(out, "</g>")?;
    Ok(vec![Box2 {
        x0: PLOT_LEFT,
        y0: LEGEND_Y - ASCENT - 4.0,
        x1: cx,
        y1: LEGEND_Y + DESCENT,
    }])
}

// ---------------------------------------------------------------------------
// Axes and ticks.

#[derive(Debug, Clone, PartialEq)]
struct Tick {
    value: f64,
    label: String,
}

/// A value range mapped onto [0, 1], linearly or by log10.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<Tick>,
}

impl Axis {
    /// Position of `v` in [0, 1]; on a log axis values below the axis
    /// (including `<= 0`) land on its bottom.
    fn frac(&self, v: f64) -> f64 {
        let t = if self.log {
            let v = v.max(self.lo);
            let (l0, l1) = (log10(self.lo), log10(self.hi));
            (log10(v) - l0) / (l1 - l0)
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        if t.is_nan() {
            0.0
        } else {
            t.clamp(0.0, 1.0)
        }
    }
}

fn x_px(x: &Axis, v: f64) -> f64 {
    PLOT_LEFT + x.frac(v) * (PLOT_RIGHT - PLOT_LEFT)
}

fn y_px(y: &Axis, v: f64) -> f64 {
    PLOT_BOTTOM - y.frac(v) * (PLOT_BOTTOM - PLOT_TOP)
}

/// Bytes from 0 to the largest point or budget, in the binary unit of the
/// axis max (B, KiB, MiB, GiB, TiB: the report's units), ticks at 1/2/5
/// steps of that unit.
fn x_axis(points: &[&Point], budget: Option<u64>) -> Axis {
    let max = points
        .iter()
        .map(|p| p.bytes)
        .chain(budget)
        .max()
        .map_or(EMPTY_X_MAX, |b| b as f64);
    let (unit, name) = crate::human::byte_unit(max.max(1.0));
    let step = nice_step(0.0, (max / unit).max(1.0), 0);
    let top = step.value(step.i_hi) * unit;
    let ticks = (step.i_lo..=step.i_hi)
        .map(|i| {
            let value = step.value(i) * unit;
            let label = if i == 0 {
                "0".to_string()
            } else {
                format!("{} {name}", decimal_label(i * step.m, step.k))
            };
            Tick { value, label }
        })
        .collect();
    Axis {
        lo: 0.0,
        hi: top,
        log: false,
        ticks,
    }
}

/// Errors: log10 when the positive errors span more than [`LOG_RATIO`],
/// otherwise linear from `min(0, smallest error)`.
fn y_axis(points: &[&Point]) -> Axis {
    let errors = points
        .iter()
        .map(|p| p.error.clamp(-MAX_MAGNITUDE, MAX_MAGNITUDE));
    let positive = errors.clone().filter(|e| *e > 0.0);
    let min_pos = positive.clone().fold(f64::INFINITY, f64::min);
    let max_pos = positive.fold(0.0, f64::max);
    if min_pos.is_finite() && max_pos / min_pos > LOG_RATIO {
        // The range the data needs, at most MAX_DECADES below the largest.
        return log_axis(min_pos.max(scale10(max_pos, -MAX_DECADES)), max_pos);
    }
    let lo = errors.clone().fold(0.0, f64::min);
    let mut hi = errors.fold(0.0, f64::max);
    if hi - lo < MIN_SPAN {
        hi = lo + 1.0;
    }
    let step = nice_step(lo, hi, i32::MIN);
    let ticks = (step.i_lo..=step.i_hi)
        .map(|i| Tick {
            value: step.value(i),
            label: decimal_label(i * step.m, step.k),
        })
        .collect();
    Axis {
        lo: step.value(step.i_lo),
        hi: step.value(step.i_hi),
        log: false,
        ticks,
    }
}

/// A linear tick step `m * 10^k` and the tick indices covering the range.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Step {
    m: i64,
    k: i32,
    i_lo: i64,
    i_hi: i64,
}

impl Step {
    fn value(&self, i: i64) -> f64 {
        scale10((i * self.m) as f64, self.k)
    }

    fn count(&self) -> i64 {
        self.i_hi - self.i_lo + 1
    }
}

/// The 1/2/5 x 10^k step (k >= `min_k`) whose ticks cover `[lo, hi]` in a
/// count closest to 5 or 6, ties going to the smaller step. Needs `lo < hi`,
/// both within [`MAX_MAGNITUDE`].
fn nice_step(lo: f64, hi: f64, min_k: i32) -> Step {
    let k0 = floor_log10((hi - lo) / 5.0);
    let mut best: Option<(i64, Step)> = None;
    for k in (k0 - 1).max(min_k)..=(k0 + 1).max(min_k) {
        for m in [1, 2, 5] {
            // lo / step and hi / step, each rounded once or twice.
            let q = |v: f64| scale10(v, -k) / m as f64;
            let i_lo = (q(lo) + 1e-9).floor() as i64;
            let i_hi = ((q(hi) - 1e-9).ceil() as i64).max(i_lo + 1);
            let step = Step { m, k, i_lo, i_hi };
            let n = step.count();
            let miss = if n < 5 { 5 - n } else { (n - 6).max(0) };
            if best.is_none_or(|(b, _)| miss < b) {
                best = Some((miss, step));
            }
        }
    }
    best.map(|(_, s)| s).unwrap_or(Step {
        m: 1,
        k: 0,
        i_lo: 0,
        i_hi: 1,
    })
}

/// Log ticks for positive errors in `[min, max]`: every 1/2/5 value if that
/// gives at most seven ticks, otherwise every `s`-th decade.
fn log_axis(min: f64, max: f64) -> Axis {
    let min = min.clamp(MIN_LOG, MAX_MAGNITUDE);
    let max = max.clamp(min, MAX_MAGNITUDE);
    let e_lo = floor_log10(min);
    let e_hi = floor_log10(max);

    // Every (m, k) with m in 1/2/5 from the one at or below `min` to the one
    // at or above `max`.
    let mut fine: Vec<(i64, i32)> = Vec::new();
    'decades: for k in e_lo..=e_hi + 1 {
        for m in [1, 2, 5] {
            let v = scale10(m as f64, k);
            let next = match m {
                1 => scale10(2.0, k),
                2 => scale10(5.0, k),
                _ => scale10(1.0, k + 1),
            };
            if next <= min {
                continue;
            }
            fine.push((m, k));
            if v >= max || fine.len() > 7 {
                break 'decades;
            }
        }
    }
    let pairs: Vec<(i64, i32)> = if fine.len() <= 7 {
        fine
    } else {
        let d_lo = e_lo;
        let d_hi = if scale10(1.0, e_hi) >= max {
            e_hi
        } else {
            e_hi + 1
        };
        let up = |d: i32, s: i32| -(-d).div_euclid(s);
        let stride = [1, 2, 5, 10, 20, 50]
            .into_iter()
            .find(|s| up(d_hi, *s) - d_lo.div_euclid(*s) < 7)
            .unwrap_or(100);
        let (a_lo, a_hi) = (d_lo.div_euclid(stride), up(d_hi, stride));
        (a_lo..=a_hi).map(|j| (1, j * stride)).collect()
    };
    let ticks: Vec<Tick> = pairs
        .iter()
        .map(|&(m, k)| Tick {
            value: scale10(m as f64, k),
            // One style on a log axis: `1e-3`, `2e-3`, `1e0`.
            label: format!("{m}e{k}"),
        })
        .collect();
    let lo = ticks.first().map_or(min, |t| t.value);
    let hi = ticks.last().map_or(max, |t| t.value);
    Axis {
        lo,
        hi: if hi > lo { hi } else { lo * 10.0 },
        log: true,
        ticks,
    }
}

// ---------------------------------------------------------------------------
// Platform-independent arithmetic and formatting.

/// `10^k` by repeated multiplication: exact up to `10^22`, and the same
/// sequence of IEEE operations on every platform beyond.
fn pow10(k: i32) -> f64 {
    if k < 0 {
        return 1.0 / pow10(-k);
    }
    (0..k.min(400)).fold(1.0, |p, _| p * 10.0)
}

/// `v * 10^k` in one rounding when `|k| <= 22`.
fn scale10(v: f64, k: i32) -> f64 {
    if k >= 0 {
        v * pow10(k)
    } else {
        v / pow10(-k)
    }
}

/// Natural log of a positive finite `v` from IEEE basic operations only
/// (libm's `ln` may differ by an ulp between platforms).
fn ln(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 {
        return f64::NEG_INFINITY;
    }
    let (mut x, mut e) = (v, 0i32);
    if x < f64::MIN_POSITIVE {
        x *= 18_014_398_509_481_984.0; // 2^54
        e -= 54;
    }
    let bits = x.to_bits();
    e += ((bits >> 52) & 0x7ff) as i32 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | (1023u64 << 52));
    if m > SQRT_2 {
        m /= 2.0;
        e += 1;
    }
    // ln(m) = 2 atanh(s), |s| <= 0.172, so 14 terms reach 1e-22.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    for n in 0..14 {
        sum += term / f64::from(2 * n + 1);
        term *= s2;
    }
    2.0 * sum + f64::from(e) * LN_2
}

fn log10(v: f64) -> f64 {
    ln(v) / LN_10
}

/// `floor(log10(v))` for positive `v`, corrected against [`pow10`].
fn floor_log10(v: f64) -> i32 {
    if v.is_nan() || v <= 0.0 {
        return 0;
    }
    let mut k = log10(v).floor().clamp(-330.0, 330.0) as i32;
    while k > -330 && pow10(k) > v {
        k -= 1;
    }
    while k < 330 && pow10(k + 1) <= v {
        k += 1;
    }
    k
}

/// `n * 10^k` written exactly from the integers: fixed point (with `-k`
/// decimals) for `-5 <= k <= 5`, otherwise `1.2e7` style.
fn decimal_label(n: i64, k: i32) -> String {
    let sign = if n < 0 { "-" } else { "" };
    let digits = n.unsigned_abs().to_string();
    if (-5..=5).contains(&k) {
        if k >= 0 {
            if n == 0 {
                return "0".to_string();
            }
            return format!("{sign}{digits}{}", "0".repeat(k as usize));
        }
        let decimals = k.unsigned_abs() as usize;
        let padded = format!("{digits:0>width$}", width = decimals + 1);
        let (int, frac) = padded.split_at(padded.len() - decimals);
        let sign = if n == 0 { "" } else { sign };
        return format!("{sign}{int}.{frac}");
    }
    if n == 0 {
        return "0".to_string();
    }
    let trimmed = digits.trim_end_matches('0');
    let exp = k + (digits.len() as i32 - 1);
    let (first, rest) = trimmed.split_at(1);
    if rest.is_empty() {
        format!("{sign}{first}e{exp}")
    } else {
        format!("{sign}{first}.{rest}e{exp}")
    }
}

/// A coordinate with exactly one decimal, never `-0.0`.
struct C(f64);

impl fmt::Display for C {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = if self.0.abs() < 0.05 || !self.0.is_finite() {
            0.0
        } else {
            self.0
        };
        write!(f, "{v:.1}")
    }
}

/// A measured error with three decimals in scientific notation (`1.230e-2`).
struct Sci(f64);

impl fmt::Display for Sci {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = if self.0 == 0.0 { 0.0 } else { self.0 };
        write!(f, "{v:.3e}")
    }
}

/// Caller text escaped for XML content and attributes.
struct Esc<'a>(&'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '&' => f.write_str("&amp;")?,
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '"' => f.write_str("&quot;")?,
                '\'' => f.write_str("&apos;")?,
                '\t' | '\n' | '\r' => f.write_char(c)?,
                c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {
                    f.write_char('?')?
                }
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(label: &str, bytes: u64, error: f64, kind: PointKind) -> Point {
        Point {
            label: label.to_string(),
            bytes,
            error,
            kind,
        }
    }

    fn chart(points: Vec<Point>) -> Chart {
        Chart {
            title: "model.layers: size against error".to_string(),
            x_label: "size".to_string(),
            y_label: "KL divergence".to_string(),
            points,
            budget: None,
        }
    }

    fn sample() -> Chart {
        let mut c = chart(vec![
            pt("Q8_0", 8_540_000_000, 0.0012, PointKind::Recipe),
            pt("Q4_K_M", 4_920_000_000, 0.031, PointKind::Recipe),
            pt("Q2_K", 3_180_000_000, 0.42, PointKind::Recipe),
            pt("plan 3", 4_400_000_000, 0.04, PointKind::Plan),
            pt("plan 1", 3_600_000_000, 0.11, PointKind::Plan),
            pt("plan 2", 4_000_000_000, 0.06, PointKind::Plan),
            pt("plan 2", 4_000_000_000, 0.06, PointKind::Chosen),
        ]);
        c.budget = Some((4_100_000_000, "budget 4.1 GB".to_string()));
        c
    }

    /// Parses the tags of `svg`: every element closed in order, quotes
    /// paired, `&` only as one of the five entities, one root `<svg>`.
    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.ends_with("</svg>\n"), "{svg}");
        let mut stack: Vec<&str> = Vec::new();
        let mut roots = 0;
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            assert!(!text.contains('>'), "stray '>' in {text:?}");
            check_entities(text);
            rest = &rest[open..];
            if let Some(body) = rest.strip_prefix("<!--") {
                let end = body.find("-->").expect("unterminated comment");
                assert!(!body[..end].contains("--"), "'--' inside a comment");
                rest = &body[end + 3..];
                continue;
            }
            let end = rest.find('>').expect("unterminated tag");
            let tag = &rest[1..end];
            rest = &rest[end + 1..];
            assert_eq!(tag.matches('"').count() % 2, 0, "unpaired quote: {tag}");
            check_entities(tag);
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name), "mismatched </{name}>");
                continue;
            }
            let name = tag
                .split(|c: char| c.is_whitespace() || c == '/')
                .next()
                .unwrap_or("");
            assert!(
                ["svg", "g", "rect", "line", "circle", "polyline", "text", "title"].contains(&name),
                "unexpected element <{name}>"
            );
            if stack.is_empty() {
                roots += 1;
            }
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        assert_eq!(rest, "\n");
        assert_eq!(roots, 1);
    }

    fn check_entities(s: &str) {
        for (i, _) in s.match_indices('&') {
            let ok = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .iter()
                .any(|e| s[i..].starts_with(e));
            assert!(ok, "bare '&' in {s:?}");
        }
    }

    fn attr<'a>(tag: &'a str, name: &str) -> &'a str {
        let key = format!(" {name}=\"");
        let start = tag.find(&key).expect(name) + key.len();
        let len = tag[start..].find('"').expect("closing quote");
        &tag[start..start + len]
    }

    /// `(cx, cy, title)` of every data point circle of `class`.
    fn circles(svg: &str, class: &str) -> Vec<(f64, f64, String)> {
        let prefix = format!("<circle class=\"{class}\"");
        svg.lines()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| {
                let title = l
                    .split("<title>")
                    .nth(1)
                    .and_then(|t| t.split("</title>").next())
                    .expect("title");
                (
                    attr(l, "cx").parse().expect("cx"),
                    attr(l, "cy").parse().expect("cy"),
                    title.to_string(),
                )
            })
            .collect()
    }

    fn tick_values(a: &Axis) -> Vec<f64> {
        a.ticks.iter().map(|t| t.value).collect()
    }

    fn tick_labels(a: &Axis) -> Vec<&str> {
        a.ticks.iter().map(|t| t.label.as_str()).collect()
    }

    #[test]
    fn sample_chart_is_well_formed_and_deterministic() {
        let c = sample();
        let a = size_error_svg(&c);
        assert_well_formed(&a);
        assert_eq!(a, size_error_svg(&sample()));
        assert!(a.contains("viewBox=\"0 0 720 440\""));
        assert!(a.contains(">chosen: plan 2</text>"));
        assert!(a.contains(">budget 4.1 GB</text>"));
        assert!(a.contains("stroke-dasharray=\"6 4\""));
        assert!(a.contains("class=\"legend\""));
        assert!(!a.contains("no data"));
        assert!(!a.contains("<!--"));
        assert_eq!(circles(&a, "recipe").len(), 3);
        assert_eq!(circles(&a, "plan").len(), 3);
        assert_eq!(circles(&a, "chosen").len(), 1);
        // Three plans, all labelled but the one that is also the chosen point.
        assert_eq!(a.matches("class=\"plan-label\"").count(), 2);
        assert!(!a.contains(">plan 2</text>"));
    }

    #[test]
    fn every_number_has_exactly_one_decimal() {
        let a = size_error_svg(&sample());
        for key in [
            "x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r", "width", "height",
        ] {
            let pat = format!(" {key}=\"");
            for (i, _) in a.match_indices(&pat) {
                let v = &a[i + pat.len()..];
                let v = &v[..v.find('"').unwrap()];
                if (key == "width" || key == "height") && (v == "720" || v == "440") {
                    continue; // the root element's size
                }
                let (int, frac) = v.split_once('.').expect(v);
                assert_eq!(frac.len(), 1, "{key}={v}");
                assert!(int.parse::<i64>().is_ok(), "{key}={v}");
                assert!(!v.starts_with('-'), "{key}={v}");
            }
        }
        let pl = a.lines().find(|l| l.starts_with("<polyline")).unwrap();
        for pair in attr(pl, "points").split(' ') {
            let (x, y) = pair.split_once(',').unwrap();
            assert_eq!(x.split_once('.').unwrap().1.len(), 1);
            assert_eq!(y.split_once('.').unwrap().1.len(), 1);
        }
    }

    #[test]
    fn plan_curve_runs_in_order_of_bytes() {
        let a = size_error_svg(&sample());
        let pl = a.lines().find(|l| l.starts_with("<polyline")).unwrap();
        let xs: Vec<f64> = attr(pl, "points")
            .split(' ')
            .map(|p| p.split_once(',').unwrap().0.parse().unwrap())
            .collect();
        assert_eq!(xs.len(), 3);
        assert!(xs[0] < xs[1] && xs[1] < xs[2], "{xs:?}");
    }

    #[test]
    fn larger_bytes_are_further_right() {
        let a = size_error_svg(&sample());
        let recipes = circles(&a, "recipe");
        let cx = |name: &str| {
            recipes
                .iter()
                .find(|(_, _, t)| t.starts_with(&format!("{name}:")))
                .unwrap()
                .0
        };
        assert!(cx("Q2_K") < cx("Q4_K_M"));
        assert!(cx("Q4_K_M") < cx("Q8_0"));
        // Q8_0 is the largest point and the axis ends at the next tick above.
        assert!(cx("Q8_0") <= PLOT_RIGHT && cx("Q8_0") > PLOT_RIGHT - 100.0);
        // A larger error is higher up, i.e. a smaller cy.
        let cy = |name: &str| {
            recipes
                .iter()
                .find(|(_, _, t)| t.starts_with(&format!("{name}:")))
                .unwrap()
                .1
        };
        assert!(cy("Q2_K") < cy("Q4_K_M") && cy("Q4_K_M") < cy("Q8_0"));
    }

    #[test]
    fn labels_are_escaped() {
        let mut c = chart(vec![pt("<script>&\"'\u{1}", 1000, 1.0, PointKind::Chosen)]);
        c.title = "a < b & c".to_string();
        c.x_label = "\"x\"".to_string();
        c.y_label = "it's".to_string();
        c.budget = Some((500, "<b>".to_string()));
        let a = size_error_svg(&c);
        assert_well_formed(&a);
        assert!(!a.contains("<script>"));
        assert!(!a.contains("<b>"));
        assert!(a.contains("chosen: &lt;script&gt;&amp;&quot;&apos;?</text>"));
        assert!(a.contains(">a &lt; b &amp; c</text>"));
        assert!(a.contains(">&quot;x&quot;</text>"));
        assert!(a.contains(">it&apos;s</text>"));
        assert!(a.contains(">&lt;b&gt;</text>"));
    }

    #[test]
    fn wide_error_range_gets_a_log_axis() {
        let c = chart(vec![
            pt("a", 1_000_000, 0.001, PointKind::Recipe),
            pt("b", 2_000_000, 0.5, PointKind::Recipe),
            pt("zero", 3_000_000, 0.0, PointKind::Plan),
        ]);
        let a = size_error_svg(&c);
        assert_well_formed(&a);
        assert!(a.contains(">KL divergence (log scale)</text>"));
        // 0.001 to 0.5 is 2.7 decades: ticks at the decades 1e-3 .. 1.
        let refs: Vec<&Point> = c.points.iter().collect();
        let y = y_axis(&refs);
        assert!(y.log);
        assert_eq!(tick_labels(&y), ["1e-3", "1e-2", "1e-1", "1e0"]);
        // The zero error is clamped to the bottom of the axis.
        let plan = circles(&a, "plan");
        assert_eq!(plan[0].1, PLOT_BOTTOM);
        let smallest = &circles(&a, "recipe")[0];
        assert_eq!(smallest.1, PLOT_BOTTOM);
    }

    #[test]
    fn narrow_error_range_gets_a_linear_axis_from_zero() {
        let c = chart(vec![
            pt("a", 1_000_000, 0.02, PointKind::Recipe),
            pt("b", 2_000_000, 0.39, PointKind::Recipe),
        ]);
        let a = size_error_svg(&c);
        assert_well_formed(&a);
        assert!(!a.contains("log scale"));
        assert!(a.contains(">KL divergence</text>"));
        let refs: Vec<&Point> = c.points.iter().collect();
        let y = y_axis(&refs);
        assert!(!y.log);
        assert_eq!(y.lo, 0.0);
        assert_eq!(tick_labels(&y), ["0.0", "0.1", "0.2", "0.3", "0.4"]);
        // Exactly at the ratio: still linear.
        let c = chart(vec![
            pt("a", 1, 0.25, PointKind::Recipe),
            pt("b", 2, 5.0, PointKind::Recipe),
        ]);
        let refs: Vec<&Point> = c.points.iter().collect();
        assert!(!y_axis(&refs).log);
    }

    #[test]
    fn log_axis_ticks() {
        // Under a decade and a half: 1/2/5 ticks.
        let y = log_axis(1.0, 30.0);
        assert_eq!(tick_labels(&y), ["1e0", "2e0", "5e0", "1e1", "2e1", "5e1"]);
        let y = log_axis(0.003, 0.09);
        assert_eq!(
            tick_labels(&y),
            ["2e-3", "5e-3", "1e-2", "2e-2", "5e-2", "1e-1"]
        );
        // Many decades: every second or fifth decade.
        let y = log_axis(1e-9, 0.5);
        assert_eq!(y.ticks.len(), 6, "{:?}", tick_labels(&y));
        assert_eq!(tick_labels(&y)[0], "1e-10");
        assert_eq!(tick_labels(&y)[5], "1e0");
        let y = log_axis(1e-300, 1e300);
        assert!(y.ticks.len() <= 8, "{:?}", tick_labels(&y));
        assert!(y.lo > 0.0 && y.hi.is_finite());
    }

    #[test]
    fn nice_ticks_for_a_few_ranges() {
        let labels = |lo: f64, hi: f64| {
            let s = nice_step(lo, hi, i32::MIN);
            (s.i_lo..=s.i_hi)
                .map(|i| decimal_label(i * s.m, s.k))
                .collect::<Vec<_>>()
        };
        assert_eq!(labels(0.0, 1.0), ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(labels(0.0, 10.0), ["0", "2", "4", "6", "8", "10"]);
        assert_eq!(labels(0.0, 0.037), ["0.00", "0.01", "0.02", "0.03", "0.04"]);
        assert_eq!(
            labels(0.0, 2.6e-7),
            ["0", "5e-8", "1e-7", "1.5e-7", "2e-7", "2.5e-7", "3e-7"]
        );
        assert_eq!(labels(-3.0, 7.0), ["-4", "-2", "0", "2", "4", "6", "8"]);
        for hi in [1.0, 1.1, 1.9, 2.5, 3.3, 4.9, 7.7, 9.99, 123.0, 6.02e23] {
            let s = nice_step(0.0, hi, i32::MIN);
            assert!((4..=8).contains(&s.count()), "{hi}: {s:?}");
            assert!([1, 2, 5].contains(&s.m));
            assert!(
                s.value(s.i_hi) >= hi && s.value(s.i_hi - 1) < hi,
                "{hi}: {s:?}"
            );
        }
    }

    #[test]
    fn x_axis_uses_binary_units_from_the_axis_max() {
        let x = |bytes: u64| {
            let p = pt("p", bytes, 1.0, PointKind::Plan);
            x_axis(&[&p], None)
        };
        assert_eq!(
            tick_labels(&x(8_540_000_000)),
            ["0", "2 GiB", "4 GiB", "6 GiB", "8 GiB"]
        );
        assert_eq!(
            tick_labels(&x(950_000_000)),
            ["0", "200 MiB", "400 MiB", "600 MiB", "800 MiB", "1000 MiB"]
        );
        assert_eq!(
            tick_labels(&x(977_120)),
            ["0", "200 KiB", "400 KiB", "600 KiB", "800 KiB", "1000 KiB"]
        );
        assert_eq!(tick_labels(&x(3)), ["0", "1 B", "2 B", "3 B"]);
        assert_eq!(tick_labels(&x(0)), ["0", "1 B"]);
        assert_eq!(x(u64::MAX).ticks.len(), 5);
        // The budget widens the axis.
        let p = pt("p", 1_000_000, 1.0, PointKind::Plan);
        let a = x_axis(&[&p], Some(3 << 20));
        assert_eq!(a.hi, (3 << 20) as f64);
        assert_eq!(tick_values(&a)[1], (1 << 20) as f64);
    }

    #[test]
    fn no_points_draws_empty_axes() {
        let a = size_error_svg(&chart(vec![]));
        assert_well_formed(&a);
        assert!(a.contains(">no data</text>"));
        assert!(a.contains(">1000 MiB</text>"));
        assert!(!a.contains("<circle"));
        assert!(!a.contains("<polyline"));
        assert!(!a.contains("class=\"legend\""));
    }

    #[test]
    fn single_point_and_equal_bytes() {
        let a = size_error_svg(&chart(vec![pt("only", 4_000, 0.3, PointKind::Chosen)]));
        assert_well_formed(&a);
        assert_eq!(circles(&a, "chosen").len(), 1);
        assert!(a.contains(">chosen: only</text>"));

        let c = chart(vec![
            pt("a", 5_000_000, 0.0, PointKind::Plan),
            pt("b", 5_000_000, 0.0, PointKind::Plan),
            pt("c", 5_000_000, 0.0, PointKind::Recipe),
        ]);
        let a = size_error_svg(&c);
        assert_well_formed(&a);
        let xs: Vec<f64> = circles(&a, "plan")
            .iter()
            .chain(&circles(&a, "recipe"))
            .map(|c| c.0)
            .collect();
        assert!(xs.iter().all(|x| *x == xs[0]), "{xs:?}");
        assert!(a.contains("<polyline"));
    }

    #[test]
    fn non_finite_errors_are_skipped_and_counted() {
        let c = chart(vec![
            pt("nan", 1_000, f64::NAN, PointKind::Plan),
            pt("ok", 2_000, 0.5, PointKind::Plan),
            pt("inf", 3_000, f64::INFINITY, PointKind::Recipe),
            pt("-inf", 4_000, f64::NEG_INFINITY, PointKind::Chosen),
        ]);
        let a = size_error_svg(&c);
        assert_well_formed(&a);
        assert!(a.contains("<!-- skipped 3 points with a NaN or infinite error -->"));
        assert_eq!(circles(&a, "plan").len(), 1);
        assert!(circles(&a, "recipe").is_empty());
        assert!(circles(&a, "chosen").is_empty());

        let a = size_error_svg(&chart(vec![pt("nan", 1, f64::NAN, PointKind::Recipe)]));
        assert_well_formed(&a);
        assert!(a.contains("<!-- skipped 1 point with a NaN or infinite error -->"));
        assert!(a.contains(">no data</text>"));
    }

    #[test]
    fn extreme_and_negative_errors_do_not_panic() {
        for errors in [
            vec![f64::MAX, f64::MIN_POSITIVE],
            vec![f64::MAX, -f64::MAX],
            vec![5e-324, 1.0],
            vec![5e-324, 5e-324],
            vec![-0.5, 0.25],
            vec![-1.0, -2.0],
            vec![0.0, -0.0],
        ] {
            let points = errors
                .iter()
                .enumerate()
                .map(|(i, e)| pt("p", i as u64 * 1000, *e, PointKind::Plan))
                .collect();
            let a = size_error_svg(&chart(points));
            assert_well_formed(&a);
            assert!(!a.contains("NaN") && !a.contains("inf"), "{errors:?}");
        }
        let refs = [
            &pt("n", 1, -0.5, PointKind::Plan),
            &pt("p", 2, 0.25, PointKind::Plan),
        ];
        assert_eq!(
            tick_labels(&y_axis(&refs)),
            ["-0.6", "-0.4", "-0.2", "0.0", "0.2", "0.4"]
        );
    }

    #[test]
    fn many_plans_are_not_labelled() {
        let points = (0..9)
            .map(|i| pt(&format!("plan {i}"), 1_000 * (i + 1), 0.1, PointKind::Plan))
            .collect();
        let a = size_error_svg(&chart(points));
        assert_well_formed(&a);
        assert_eq!(circles(&a, "plan").len(), 9);
        assert!(!a.contains("class=\"plan-label\""));
    }

    #[test]
    fn labels_near_the_right_edge_go_left() {
        let c = chart(vec![
            pt("small", 1_000, 0.1, PointKind::Recipe),
            pt("big", 10_240, 0.2, PointKind::Recipe),
        ]);
        let boxes = label_boxes(&c);
        let b = |name: &str| boxes.iter().find(|(n, _)| n == name).unwrap().1;
        let cx = |name: &str| {
            circles(&size_error_svg(&c), "recipe")
                .into_iter()
                .find(|(_, _, l)| l.starts_with(&format!("{name}:")))
                .unwrap()
                .0
        };
        assert!(b("small").x0 > cx("small"));
        assert!(b("big").x1 < cx("big"));
        assert!(b("big").x1 <= PLOT_RIGHT);
    }

    /// No two labels (points', legend, budget) overlap, and every label
    /// is inside the picture.
    fn assert_no_overlap(c: &Chart) {
        let boxes = label_boxes(c);
        for (i, (a, ba)) in boxes.iter().enumerate() {
            assert!(ba.inside(0.0, 0.0, WIDTH, HEIGHT), "{a} outside: {ba:?}");
            for (b, bb) in &boxes[i + 1..] {
                assert!(!ba.overlaps(bb), "{a} {ba:?} overlaps {b} {bb:?}");
            }
        }
    }

    #[test]
    fn labels_never_overlap_and_the_budget_line_misses_the_legend() {
        assert_no_overlap(&sample());
        // Recipes piled up as on the tiny fixture: nine recipes within a few
        // percent of each other in size, a curve of 16 plans, the chosen one
        // on a recipe.
        let mut pts: Vec<Point> = [
            ("Q2_K", 600_000, 2.3e-3),
            ("Q3_K_M", 760_000, 1.1e-3),
            ("Q4_0", 880_000, 4.0e-4),
            ("Q4_K_S", 884_000, 2.4e-4),
            ("Q4_K_M", 930_000, 2.3e-4),
            ("Q5_K_S", 1_060_000, 6.0e-5),
            ("Q5_K_M", 1_080_000, 5.4e-5),
            ("Q6_K", 1_250_000, 1.6e-5),
            ("Q8_0", 1_620_000, 2.0e-6),
            ("accuracy objective", 977_000, 6.3e-6),
        ]
        .iter()
        .map(|&(l, b, e)| pt(l, b, e, PointKind::Recipe))
        .collect();
        for i in 0..16u64 {
            pts.push(pt(
                &format!("{i} bpw"),
                560_000 + i * 70_000,
                3e-3 / (1.0 + i as f64 * i as f64),
                PointKind::Plan,
            ));
        }
        pts.push(pt("4.44 bpw", 930_000, 2.2e-4, PointKind::Chosen));
        let mut c = chart(pts);
        c.budget = Some((977_000, "budget".into()));
        assert_no_overlap(&c);
        let boxes = label_boxes(&c);
        assert!(boxes.iter().any(|(n, _)| n == "chosen: 4.44 bpw"));
        // No point label crosses the budget line.
        let refs: Vec<&Point> = c.points.iter().collect();
        let bx = x_px(&x_axis(&refs, Some(977_000)), 977_000.0);
        for (n, b) in boxes.iter().filter(|(n, _)| n != "budget" && n != "legend") {
            assert!(
                b.x1 <= bx - 1.5 || b.x0 >= bx + 1.5,
                "{n} crosses the budget line"
            );
        }
        // The legend sits above the plot, where the budget line does not go.
        let legend = boxes.iter().find(|(n, _)| n == "legend").unwrap().1;
        assert!(legend.y1 <= PLOT_TOP);
        // Most recipes keep a label despite the pile-up.
        let recipes = boxes.iter().filter(|(n, _)| n.starts_with('Q')).count();
        assert!(recipes >= 6, "{boxes:?}");
    }

    #[test]
    fn a_log_axis_spans_at_most_six_decades_below_the_largest_error() {
        let p = [
            pt("f16", 3_000, 3.7e-15, PointKind::Chosen),
            pt("q2", 600, 0.7, PointKind::Recipe),
        ];
        let refs: Vec<&Point> = p.iter().collect();
        let y = y_axis(&refs);
        assert!(y.log);
        // Six decades below 0.7, down to the tick stride's decade.
        assert!(y.lo >= 1e-8 && y.hi <= 1.0, "{y:?}");
        assert_eq!(tick_labels(&y)[tick_labels(&y).len() - 1], "1e0");
        // The tiny error is drawn on the bottom edge.
        let a = size_error_svg(&chart(p.to_vec()));
        assert_eq!(circles(&a, "chosen")[0].1, PLOT_BOTTOM);
    }

    #[test]
    fn arithmetic_helpers() {
        for k in -22..=22 {
            assert_eq!(floor_log10(scale10(1.0, k)), k, "{k}");
        }
        assert_eq!(floor_log10(9.999), 0);
        assert_eq!(floor_log10(0.0999), -2);
        for v in [1e-300, 1e-5, 0.3, 1.0, 2.0, 10.0, 12345.678, 1e300, 5e-324] {
            let err = (ln(v) - v.ln()).abs();
            assert!(
                err <= 1e-12 * v.ln().abs().max(1.0),
                "{v}: {} vs {}",
                ln(v),
                v.ln()
            );
        }
        assert_eq!(decimal_label(0, -2), "0.00");
        assert_eq!(decimal_label(-5, -1), "-0.5");
        assert_eq!(decimal_label(25, -1), "2.5");
        assert_eq!(decimal_label(3, 2), "300");
        assert_eq!(decimal_label(12, 6), "1.2e7");
        assert_eq!(decimal_label(10, 6), "1e7");
        assert_eq!(decimal_label(-2, -9), "-2e-9");
        assert_eq!(C(-0.0).to_string(), "0.0");
        assert_eq!(C(-0.04).to_string(), "0.0");
        assert_eq!(C(12.25).to_string(), "12.2");
        assert_eq!(Sci(0.0123).to_string(), "1.230e-2");
    }

    #[test]
    fn a_budget_far_right_of_the_data_is_a_note_not_a_line() {
        let points = vec![
            pt("a", 800 << 20, 0.05, PointKind::Plan),
            pt("b", 1500 << 20, 0.001, PointKind::Plan),
            pt("Q4_K_M", 860 << 20, 0.05, PointKind::Recipe),
        ];
        let mut c = chart(points);
        c.budget = Some((21_700_000_000, "budget".into()));
        let a = size_error_svg(&c);
        assert_well_formed(&a);
        assert!(!a.contains("class=\"budget\""), "no line");
        assert!(
            a.contains(">budget: 20.2 GiB (off the scale)</text>"),
            "{a}"
        );
        assert!(a.contains(">2 GiB</text>"), "{a}");
        assert!(!a.contains(">20 GiB</text>"), "the axis spans the data");
        // Within twice the largest point: drawn to scale, as before.
        c.budget = Some((3000 << 20, "budget".into()));
        let a = size_error_svg(&c);
        assert!(a.contains("class=\"budget\""));
        assert!(a.contains(">budget</text>"));
    }

    #[test]
    fn a_segment_crosses_a_box_only_where_it_passes_through() {
        let b = Box2 {
            x0: 10.0,
            y0: 10.0,
            x1: 20.0,
            y1: 20.0,
        };
        assert!(crosses((0.0, 15.0), (30.0, 15.0), &b), "straight through");
        assert!(crosses((15.0, 15.0), (15.0, 16.0), &b), "inside");
        assert!(crosses((0.0, 0.0), (30.0, 30.0), &b), "diagonal");
        assert!(!crosses((0.0, 0.0), (30.0, 0.0), &b), "above");
        assert!(!crosses((0.0, 25.0), (25.0, 50.0), &b), "below the corner");
        assert!(!crosses((0.0, 15.0), (9.0, 15.0), &b), "stops short");
        assert!(!crosses((21.0, 0.0), (21.0, 30.0), &b), "beside, vertical");
    }
}
