//! Charts as SVG files (plotters' SVG backend: text stays text, so no font
//! is needed).

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
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
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
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        draw(root, title, x_label, y_label, series, reference)
            .map_err(|e| Error::Training(format!("could not draw the chart {title:?}: {e}")))?;
    }
    Ok(svg)
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
    let mut chart = ChartBuilder::on(&root)
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
    for (i, s) in series.iter().enumerate() {
        let (color, width) = (s.color, stroke_width(i, series.len()));
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(width),
            ))?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(width))
            });
    }
    if let Some(r) = reference {
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x0, r.value), (x1, r.value)],
                6,
                4,
                grey.stroke_width(1),
            ))?
            .label(r.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey));
    }
    // The legend goes in the corner the curves have left: where they end
    // low (falling losses) the upper right is empty, where they end high
    // (rising accuracies) the lower right is.
    let ends: Vec<f64> = series
        .iter()
        .filter_map(|s| s.points.last().map(|p| p.1))
        .collect();
    let end = ends.iter().sum::<f64>() / ends.len().max(1) as f64;
    let corner = if end < (y0 + y1) / 2.0 {
        SeriesLabelPosition::UpperRight
    } else {
        SeriesLabelPosition::LowerRight
    };
    chart
        .configure_series_labels()
        .position(corner)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Line width of series `i` of `n`: each is drawn 2 px wider than the one
/// after it (which is drawn on top), so that curves that coincide still
/// show as a coloured edge around a thinner line.
fn stroke_width(i: usize, n: usize) -> u32 {
    (2 + 2 * (n - 1 - i) as u32).min(12)
}

/// A tick label a reader can take in: integers as integers (`200`, not
/// `200.0`), large and tiny magnitudes in short scientific form (`2e14`,
/// `2.5e14`), and otherwise just the decimals the axis `span` needs.
pub fn tick_label(value: f64, span: f64) -> String {
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
        let widths: Vec<u32> = (0..3).map(|i| stroke_width(i, 3)).collect();
        assert_eq!(widths, [6, 4, 2]);
        assert_eq!(stroke_width(0, 1), 2);
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
