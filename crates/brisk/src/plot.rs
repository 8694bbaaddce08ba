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
        .draw()?;
    for s in series {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
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
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
