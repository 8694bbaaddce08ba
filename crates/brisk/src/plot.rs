//! Charts as SVG files (plotters' SVG backend: text stays text, so no font
//! is needed), and PNG copies of them rendered with resvg (text drawn with
//! a system font).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// One named line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
}

/// A horizontal reference line (for example the unigram entropy).
pub struct Reference<'a> {
    pub name: &'a str,
    pub value: f64,
}

/// Colours for the first few series (cycled beyond eight).
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Draws a line chart to an SVG file at `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    reference: Option<Reference>,
) -> Result<()> {
    let fail =
        |e: &dyn std::fmt::Display| Error::data(path, format!("could not draw the chart: {e}"));
    let root = SVGBackend::new(path, canvas_size(series, &reference)).into_drawing_area();
    draw(root, title, x_label, y_label, series, reference).map_err(|e| fail(&e))
}

/// The same chart as an SVG document in a string (for inline HTML).
pub fn line_chart_svg(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    reference: Option<Reference>,
) -> Result<String> {
    let mut svg = String::new();
    {
        let size = canvas_size(series, &reference);
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(root, title, x_label, y_label, series, reference)
            .map_err(|e| Error::Training(format!("could not draw the chart {title:?}: {e}")))?;
    }
    Ok(svg)
}

/// The system's fonts, loaded once, with `sans-serif` mapped to a family
/// that exists; `None` when no usable font is installed.
fn fonts() -> Option<std::sync::Arc<resvg::usvg::fontdb::Database>> {
    static FONTS: std::sync::OnceLock<Option<std::sync::Arc<resvg::usvg::fontdb::Database>>> =
        std::sync::OnceLock::new();
    FONTS
        .get_or_init(|| {
            let mut db = resvg::usvg::fontdb::Database::new();
            db.load_system_fonts();
            let families: Vec<String> = db
                .faces()
                .flat_map(|f| f.families.iter().map(|(name, _)| name.clone()))
                .collect();
            let preferred = [
                "DejaVu Sans",
                "Liberation Sans",
                "Arial",
                "Noto Sans",
                "FreeSans",
            ];
            let family = preferred
                .iter()
                .find(|p| families.iter().any(|f| f == *p))
                .map(|p| p.to_string())
                .or_else(|| families.first().cloned())?;
            db.set_sans_serif_family(family);
            Some(std::sync::Arc::new(db))
        })
        .clone()
}

/// Renders the SVG file `svg` to a PNG file `png` (atomically). An error
/// when the SVG does not parse or no system font can draw its text.
pub fn svg_to_png(svg: &Path, png: &Path) -> Result<()> {
    let fonts = fonts().ok_or_else(|| {
        Error::data(
            png,
            "not written: no system font to draw text with (install one, e.g. fonts-dejavu); \
             the SVG is complete",
        )
    })?;
    let text = crate::run::read_text(svg)?;
    let options = resvg::usvg::Options {
        fontdb: fonts,
        ..Default::default()
    };
    let tree = resvg::usvg::Tree::from_str(&text, &options)
        .map_err(|e| Error::data(svg, format!("not a readable SVG: {e}")))?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| Error::data(svg, "has an empty canvas"))?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    let bytes = pixmap
        .encode_png()
        .map_err(|e| Error::data(png, format!("could not encode: {e}")))?;
    crate::run::write_atomic(png, &bytes)
}

/// Width of the plotting area, and of one legend row, in pixels.
const PLOT_WIDTH: u32 = 800;
const PLOT_HEIGHT: u32 = 480;
const LEGEND_ROW: i32 = 18;
const LEGEND_FONT: u32 = 13;

/// Longest legend line, in characters; longer names wrap.
const LEGEND_CHARS: usize = 34;

/// The legend's text: every series, then the reference line.
fn legend_names<'a>(series: &'a [Series], reference: &'a Option<Reference>) -> Vec<&'a str> {
    let mut names: Vec<&str> = series.iter().map(|s| s.name).collect();
    names.extend(reference.iter().map(|r| r.name));
    names
}

/// A legend name in lines of at most [`LEGEND_CHARS`], broken after a
/// `+`, `,` or space where it can be (variant names are `a+b+c`), else
/// anywhere.
fn wrap_name(name: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut rest: Vec<char> = name.chars().collect();
    while rest.len() > LEGEND_CHARS {
        let head = &rest[..LEGEND_CHARS];
        let cut = head
            .iter()
            .rposition(|c| matches!(c, '+' | ',' | ' '))
            .filter(|&i| i > 0)
            .map_or(LEGEND_CHARS, |i| i + 1);
        lines.push(rest[..cut].iter().collect());
        rest.drain(..cut);
    }
    lines.push(rest.into_iter().collect());
    lines
}

/// The plot keeps its size; the legend gets a column of its own to the
/// right, as wide as its longest line, so that it never covers a curve.
fn canvas_size(series: &[Series], reference: &Option<Reference>) -> (u32, u32) {
    let lines: Vec<String> = legend_names(series, reference)
        .into_iter()
        .flat_map(wrap_name)
        .collect();
    let longest = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u32;
    let legend_width = (longest * 7 + 56).max(120);
    let rows = lines.len() as u32 + 3;
    let height = PLOT_HEIGHT.max(rows * LEGEND_ROW as u32);
    (PLOT_WIDTH + legend_width, height)
}

/// How series `i` of `n` is drawn: the palette's colour, dashed once the
/// palette has been used up, and a width that falls from the first series
/// to the last (each is drawn on top of the ones before it), so that
/// curves that coincide still show as a coloured edge around a thinner
/// line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stroke {
    width: u32,
    dashed: bool,
}

fn stroke(i: usize, n: usize) -> Stroke {
    let widest = (2 + 2 * (n.max(1) - 1) as u32).min(8);
    let width = if n <= 1 {
        2
    } else {
        let share = (n - 1 - i) as f64 / (n - 1) as f64;
        2 + ((widest - 2) as f64 * share).round() as u32
    };
    Stroke {
        width,
        dashed: i >= PALETTE.len(),
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    reference: Option<Reference>,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let points = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if let Some(r) = &reference {
        (y0, y1) = (y0.min(r.value), y1.max(r.value));
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }

    let (x_span, y_span) = (x1 - x0, y1 - y0 + 2.0 * pad);
    let x_tick = move |v: &f64| tick_label(*v, x_span);
    let y_tick = move |v: &f64| tick_label(*v, y_span);

    root.fill(&WHITE)?;
    let (plot_area, legend_area) = root.split_horizontally(PLOT_WIDTH);
    let plot_area = plot_area.shrink((0, 0), (PLOT_WIDTH, PLOT_HEIGHT));
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .light_line_style(RGBColor(235, 235, 235))
        .x_label_formatter(&x_tick)
        .y_label_formatter(&y_tick)
        .draw()?;
    let grey = RGBColor(120, 120, 120);
    let mut legend: Vec<(&str, RGBColor, Stroke)> = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let style = stroke(i, series.len());
        let line = s.color.stroke_width(style.width);
        let points = s.points.iter().copied();
        if style.dashed {
            chart.draw_series(DashedLineSeries::new(points, 10, 5, line))?;
        } else {
            chart.draw_series(LineSeries::new(points, line))?;
        }
        legend.push((s.name, s.color, style));
    }
    if let Some(r) = &reference {
        let line = grey.stroke_width(1);
        chart.draw_series(DashedLineSeries::new(
            vec![(x0, r.value), (x1, r.value)],
            6,
            4,
            line,
        ))?;
        let style = Stroke {
            width: 1,
            dashed: true,
        };
        legend.push((r.name, grey, style));
    }
    draw_legend(&legend_area, &legend)
}

/// The legend, one row per line: a sample of the stroke, then the name.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    entries: &[(&str, RGBColor, Stroke)],
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let font = ("sans-serif", LEGEND_FONT).into_font();
    let mut row = 0;
    for (name, color, style) in entries {
        let y = 48 + row * LEGEND_ROW;
        let line = color.stroke_width(style.width.min(6));
        let segments: Vec<(i32, i32)> = if style.dashed {
            vec![(4, 13), (18, 27), (32, 38)]
        } else {
            vec![(4, 38)]
        };
        for (a, b) in segments {
            area.draw(&PathElement::new(vec![(a, y), (b, y)], line))?;
        }
        for line in wrap_name(name) {
            let top = 48 + row * LEGEND_ROW - LEGEND_FONT as i32 / 2;
            area.draw(&Text::new(line, (46, top), font.clone().color(&BLACK)))?;
            row += 1;
        }
    }
    area.present()
}

/// A tick label a reader can take in: integers as integers (`200`, not
/// `200.0`), large and tiny magnitudes in short scientific form (`2e14`,
/// `2.5e14`), and otherwise just the decimals the axis `span` needs.
pub fn tick_label(value: f64, span: f64) -> String {
    // A tick meant to be zero, off by rounding (-5.55e-17).
    let value = if span.is_finite() && value.abs() < span.abs() * 1e-9 {
        0.0
    } else {
        value
    };
    if value == 0.0 || !value.is_finite() {
        return if value == 0.0 {
            "0".into()
        } else {
            value.to_string()
        };
    }
    let magnitude = value.abs();
    if !(1e-3..1e5).contains(&magnitude) {
        // Three significant digits, then Rust's shortest form of that.
        let rounded: f64 = format!("{value:.2e}").parse().unwrap_or(value);
        return format!("{rounded:e}");
    }
    let step = if span.is_finite() && span > 0.0 {
        span / 10.0
    } else {
        magnitude
    };
    let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(2e14, 3e14), "2e14");
        assert_eq!(tick_label(-5.55e-17, 2.0), "0");
        assert_eq!(tick_label(2.5e14, 3e14), "2.5e14");
        assert_eq!(tick_label(200.0, 2000.0), "200");
        assert_eq!(tick_label(1500.0, 2000.0), "1500");
        assert_eq!(tick_label(5.2, 2.0), "5.2");
        assert_eq!(tick_label(5.0, 2.0), "5");
        assert_eq!(tick_label(0.25, 0.5), "0.25");
        assert_eq!(tick_label(0.0, 10.0), "0");
        assert_eq!(tick_label(-3.0, 10.0), "-3");
    }

    #[test]
    fn earlier_series_are_drawn_wider() {
        let widths: Vec<u32> = (0..3).map(|i| stroke(i, 3).width).collect();
        assert_eq!(widths, [6, 4, 2]);
        assert_eq!(stroke(0, 1).width, 2);
        // Many series: no line wider than 8 px, the last still 2 px.
        let many: Vec<u32> = (0..15).map(|i| stroke(i, 15).width).collect();
        assert_eq!((many[0], many[14]), (8, 2));
        assert!(many.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn series_past_the_palette_are_dashed() {
        let dashed: Vec<bool> = (0..10).map(|i| stroke(i, 10).dashed).collect();
        assert_eq!(dashed.iter().filter(|d| **d).count(), 2);
        assert!(dashed[8] && dashed[9] && !dashed[7]);
    }

    #[test]
    fn the_legend_has_a_column_of_its_own() {
        let long = "rope+model.initializer_range=0.05+objective.mask_prob=0.3";
        let series = [Series {
            name: long,
            points: vec![(0.0, 1.0), (1.0, 0.0)],
            color: PALETTE[0],
        }];
        let (width, height) = canvas_size(&series, &None);
        assert!(width >= PLOT_WIDTH + LEGEND_CHARS as u32 * 6, "{width}");
        assert!(
            width <= PLOT_WIDTH + LEGEND_CHARS as u32 * 8 + 56,
            "{width}"
        );
        assert_eq!(height, PLOT_HEIGHT);
        let svg = line_chart_svg("t", "x", "y", &series, None).unwrap();
        for line in wrap_name(long) {
            assert!(svg.contains(&line), "{line}");
        }
    }

    #[test]
    fn long_names_wrap_after_a_plus() {
        let lines = wrap_name("rope+model.initializer_range=0.05+objective.mask_prob=0.3");
        assert_eq!(
            lines,
            [
                "rope+model.initializer_range=0.05+",
                "objective.mask_prob=0.3"
            ]
        );
        assert_eq!(wrap_name("baseline"), ["baseline"]);
        let unbroken = "x".repeat(80);
        assert!(wrap_name(&unbroken).iter().all(|l| l.len() <= LEGEND_CHARS));
    }

    #[test]
    fn writes_an_svg_with_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.svg");
        let series = [Series {
            name: "train loss",
            points: (1..50).map(|i| (i as f64, 10.0 / i as f64)).collect(),
            color: PALETTE[0],
        }];
        line_chart(
            &path,
            "loss",
            "step",
            "nats",
            &series,
            Some(Reference {
                name: "unigram entropy",
                value: 2.0,
            }),
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg")
                && svg.contains("train loss")
                && svg.contains("unigram entropy")
        );
    }
}
