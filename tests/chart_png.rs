//! `chart.svg` rendered to PNG and checked the way a reader sees it: the
//! image has the size the SVG declares, every text is drawn (has inked
//! pixels), inside the image, and no two texts' inked boxes overlap. For the
//! chart of a fixture build and for synthetic charts shaped like a 2B
//! model's plan (the same recipes, trade-off curve and chosen point, sized in
//! GiB), with the budget of a 24 GB card and with a 4.5 bpw budget. Each
//! label the chart code placed must also ink inside the box it reserved for
//! it (the estimate its collision avoidance relies on).
//!
//! Rendering uses resvg with the DejaVu Sans subset in tests/data/fonts as
//! the only fonts (`sans-serif` maps to it), so the text is drawn alike on
//! every machine, with or without system fonts. A text's ink is the set of
//! pixels where the chart with only that text differs from the chart with
//! no text at all. The PNGs are left in target/tmp/chart-png to look at.

use std::path::PathBuf;

use formats::chart::{label_boxes, size_error_svg, Box2, Chart, Point, PointKind};
use resvg::{tiny_skia, usvg};

use crate::common::*;

const WIDTH: u32 = 720;
const HEIGHT: u32 = 440;

fn options() -> usvg::Options<'static> {
    let mut o = usvg::Options {
        font_family: "DejaVu Sans".into(),
        ..usvg::Options::default()
    };
    let db = o.fontdb_mut();
    for f in ["DejaVuSans-ascii.ttf", "DejaVuSans-Bold-ascii.ttf"] {
        let path = repo().join("tests/data/fonts").join(f);
        db.load_font_data(std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}")));
    }
    db.set_sans_serif_family("DejaVu Sans");
    assert_eq!(db.len(), 2, "both font files load");
    o
}

fn render(svg: &str, opt: &usvg::Options) -> (usvg::Tree, tiny_skia::Pixmap) {
    let tree = usvg::Tree::from_str(svg, opt).expect("chart.svg parses");
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).unwrap();
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    (tree, pixmap)
}

/// Byte ranges of the `<text ...>...</text>` elements, in document order.
fn text_elements(svg: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = svg[from..].find("<text") {
        let start = from + i;
        let after = svg.as_bytes()[start + 5];
        if after != b' ' && after != b'>' {
            from = start + 5;
            continue;
        }
        let end = start + svg[start..].find("</text>").expect("closed") + "</text>".len();
        out.push((start, end));
        from = end;
    }
    out
}

/// The SVG with only the text elements `keep` says to keep.
fn with_texts(svg: &str, texts: &[(usize, usize)], keep: impl Fn(usize) -> bool) -> String {
    let mut out = String::with_capacity(svg.len());
    let mut at = 0;
    for (k, &(a, b)) in texts.iter().enumerate() {
        out += &svg[at..a];
        if keep(k) {
            out += &svg[a..b];
        }
        at = b;
    }
    out + &svg[at..]
}

/// A text element's content (the chart's text is ASCII; XML entities decoded).
fn content(element: &str) -> String {
    let open = element.find('>').unwrap() + 1;
    element[open..element.len() - "</text>".len()]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Pixel box `[x0, x1) x [y0, y1)` where two renders differ, if anywhere.
fn ink(base: &tiny_skia::Pixmap, with: &tiny_skia::Pixmap) -> Option<Box2> {
    let w = base.width() as usize;
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for (i, (a, b)) in base
        .data()
        .chunks_exact(4)
        .zip(with.data().chunks_exact(4))
        .enumerate()
    {
        if a != b {
            let (x, y) = (i % w, i / w);
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x + 1);
            y1 = y1.max(y + 1);
        }
    }
    (x1 > 0).then_some(Box2 {
        x0: x0 as f64,
        y0: y0 as f64,
        x1: x1 as f64,
        y1: y1 as f64,
    })
}

/// The laid-out extent of the one text node in `tree` (not clipped to the image).
fn text_extent(g: &usvg::Group) -> Option<usvg::Rect> {
    g.children().iter().find_map(|n| match n {
        usvg::Node::Text(t) => Some(t.abs_bounding_box()),
        usvg::Node::Group(g) => text_extent(g),
        _ => None,
    })
}

fn overlap(a: &Box2, b: &Box2) -> bool {
    a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1
}

/// What the reader sees of each text: its content and inked box.
struct Rendered {
    texts: Vec<(String, Box2)>,
}

/// Render `svg` to `NAME.png` and check it (module doc); returns each text's ink.
fn check_png(svg: &str, name: &str) -> Rendered {
    let opt = options();
    let (_, full) = render(svg, &opt);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chart-png");
    std::fs::create_dir_all(&dir).unwrap();
    let png = full.encode_png().unwrap();
    std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
    // The PNG's own header (IHDR: width and height, big-endian, at byte 16).
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), (WIDTH, HEIGHT), "{name}: PNG size");

    let elements = text_elements(svg);
    assert!(
        elements.len() >= 10,
        "{name}: only {} texts",
        elements.len()
    );
    let (_, base) = render(&with_texts(svg, &elements, |_| false), &opt);
    let mut texts = Vec::new();
    for (k, &(a, b)) in elements.iter().enumerate() {
        let text = content(&svg[a..b]);
        let (tree, alone) = render(&with_texts(svg, &elements, |j| j == k), &opt);
        let inked = ink(&base, &alone).unwrap_or_else(|| panic!("{name}: `{text}` draws nothing"));
        let e = text_extent(tree.root()).expect("a text node");
        assert!(
            e.left() >= 0.0
                && e.top() >= 0.0
                && e.right() <= WIDTH as f32
                && e.bottom() <= HEIGHT as f32,
            "{name}: `{text}` extends outside the image: {e:?}"
        );
        texts.push((text, inked));
    }
    for (i, (ta, a)) in texts.iter().enumerate() {
        for (tb, b) in &texts[i + 1..] {
            assert!(
                !overlap(a, b),
                "{name}: `{ta}` {a:?} and `{tb}` {b:?} overlap"
            );
        }
    }
    Rendered { texts }
}

/// Every label the chart code placed inks inside the box it reserved.
fn check_reserved_boxes(chart: &Chart, seen: &Rendered, name: &str) {
    let placed = label_boxes(chart);
    assert!(!placed.is_empty());
    for (label, b) in &placed {
        if label == "legend" {
            // The legend's box holds its texts.
            for name in ["llama.cpp recipe", "kiln trade-off", "chosen"] {
                assert!(
                    seen.texts.iter().any(|(t, i)| t == name
                        && i.x0 >= b.x0
                        && i.x1 <= b.x1
                        && i.y0 >= b.y0
                        && i.y1 <= b.y1),
                    "{name}: legend text outside the legend's box {b:?}"
                );
            }
            continue;
        }
        let fits = seen.texts.iter().any(|(t, i)| {
            t == label
                && i.x0 >= b.x0 - 1.0
                && i.x1 <= b.x1 + 1.0
                && i.y0 >= b.y0 - 1.0
                && i.y1 <= b.y1 + 1.0
        });
        let drawn: Vec<_> = seen.texts.iter().filter(|(t, _)| t == label).collect();
        assert!(fits, "{name}: `{label}` was given {b:?} but inks {drawn:?}");
    }
}

#[test]
fn the_fixture_builds_chart_renders_readably() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let r = run(&[
        "build",
        s(&fixture("tiny-llama")),
        "--target",
        "m2",
        "-o",
        s(&out),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let svg = std::fs::read_to_string(out.join("chart.svg")).unwrap();
    let seen = check_png(&svg, "tiny-llama-m2");
    // Its parts are all there to be read (m2's 16 GiB budget is far right
    // of a 3 MiB model: a note, not a line).
    for want in [
        "tensor size",
        "llama.cpp recipe",
        "chosen",
        "budget: 16.3 GiB (off the scale)",
        "Q4_K_M",
    ] {
        assert!(
            seen.texts.iter().any(|(t, _)| t == want),
            "`{want}` is not drawn: {:?}",
            seen.texts.iter().map(|t| &t.0).collect::<Vec<_>>()
        );
    }
    assert!(seen.texts.iter().any(|(t, _)| t.starts_with("chosen: ")));
}

/// llama.cpp's recipes with their bits per weight on a Llama-shaped model.
const RECIPES: [(&str, f64); 10] = [
    ("Q2_K", 2.96),
    ("Q3_K_M", 3.91),
    ("Q4_0", 4.55),
    ("Q4_K_S", 4.58),
    ("Q4_K_M", 4.89),
    ("Q5_K_S", 5.54),
    ("Q5_K_M", 5.70),
    ("Q6_K", 6.56),
    ("Q8_0", 8.50),
    ("F16", 16.0),
];

/// A 2B-parameter model's chart as the build draws it: the 16-point
/// trade-off curve from 2.6 to 16 bpw, the recipes (and the accuracy
/// objective's plan), the chosen plan just under Q4_K_M's error.
fn two_b_chart(budget_bytes: u64) -> Chart {
    const PARAMS: f64 = 2.0e9;
    // Predicted KL divergence falls about 2.2x per added bit; F16 is exact.
    let error = |bpw: f64| {
        if bpw >= 16.0 {
            0.0
        } else {
            0.9 * (-0.8 * (bpw - 2.5)).exp()
        }
    };
    let bytes = |bpw: f64| (bpw * PARAMS / 8.0) as u64;
    let mut points: Vec<Point> = (0..16)
        .map(|i| {
            let bpw = 2.6 + i as f64 * (16.0 - 2.6) / 15.0;
            Point {
                label: format!("{bpw:.2} bpw"),
                bytes: bytes(bpw),
                // the measured curve is not smooth
                error: error(bpw) * (1.0 + 0.07 * (i % 3) as f64),
                kind: PointKind::Plan,
            }
        })
        .collect();
    points.push(Point {
        label: "accuracy objective".into(),
        bytes: budget_bytes.min(bytes(16.0)),
        error: error(16.0_f64.min(budget_bytes as f64 * 8.0 / PARAMS)),
        kind: PointKind::Recipe,
    });
    for (name, bpw) in RECIPES {
        points.push(Point {
            label: name.into(),
            bytes: bytes(bpw),
            error: error(bpw) * 1.15,
            kind: PointKind::Recipe,
        });
    }
    points.push(Point {
        label: "4.81 bpw".into(),
        bytes: bytes(4.81),
        error: error(4.89) * 1.1,
        kind: PointKind::Chosen,
    });
    Chart {
        title: "synthetic-2b: tensor size against predicted KL divergence".into(),
        x_label: "tensor size".into(),
        y_label: "predicted KL divergence (nats)".into(),
        points,
        budget: Some((budget_bytes, "budget".into())),
    }
}

#[test]
fn a_2b_models_chart_renders_readably_with_a_card_sized_budget() {
    // rtx-4090: 24 GB less KV cache and overhead.
    let chart = two_b_chart(21_400_000_000);
    let seen = check_png(&size_error_svg(&chart), "synthetic-2b-rtx-4090");
    check_reserved_boxes(&chart, &seen, "synthetic-2b-rtx-4090");
    assert!(seen.texts.iter().any(|(t, _)| t.ends_with(" GiB")));
}

#[test]
fn a_2b_models_chart_renders_readably_with_a_tight_budget() {
    let chart = two_b_chart((4.5 * 2.0e9 / 8.0) as u64);
    let seen = check_png(&size_error_svg(&chart), "synthetic-2b-bpw-4.5");
    check_reserved_boxes(&chart, &seen, "synthetic-2b-bpw-4.5");
    // The crowded middle (Q4_0 and Q4_K_S 0.03 bpw apart) still shows the
    // chosen point's label.
    assert!(seen.texts.iter().any(|(t, _)| t == "chosen: 4.81 bpw"));
}
