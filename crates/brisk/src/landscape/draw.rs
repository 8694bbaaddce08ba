//! Pictures of surfaces: heat maps with contour lines (marching squares),
//! one colour bar shared by every panel, and trajectories drawn on top.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::plot::{tick_label, PALETTE};

/// A path drawn over a panel (a trajectory).
pub struct Track {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
}

/// One surface: values on the `x` × `y` grid, row-major with `y` outer
/// (NaN where missing), with tracks and labelled marks on top.
pub struct Panel {
    pub title: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub z: Vec<f64>,
    pub tracks: Vec<Track>,
    pub marks: Vec<(String, f64, f64)>,
}

/// How values map to colours: linear, or logarithmic when they span more
/// than a factor of ten (losses near a minimum and far from it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColourScale {
    pub lo: f64,
    pub hi: f64,
    pub log: bool,
}

impl ColourScale {
    /// A scale spanning every finite value of every panel.
    pub fn spanning(panels: &[Panel]) -> ColourScale {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in panels.iter().flat_map(|p| &p.z).filter(|v| v.is_finite()) {
            (lo, hi) = (lo.min(*v), hi.max(*v));
        }
        if lo > hi {
            (lo, hi) = (0.0, 1.0);
        }
        if hi <= lo {
            hi = lo + 1.0;
        }
        ColourScale {
            lo,
            hi,
            log: lo > 0.0 && hi / lo > 10.0,
        }
    }

    /// Where `v` falls on the scale, 0 to 1.
    fn position(&self, v: f64) -> f64 {
        let t = if self.log {
            (v.ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        t.clamp(0.0, 1.0)
    }

    /// The value at position `t`.
    fn value(&self, t: f64) -> f64 {
        if self.log {
            (self.lo.ln() + t * (self.hi.ln() - self.lo.ln())).exp()
        } else {
            self.lo + t * (self.hi - self.lo)
        }
    }

    /// `n` contour levels evenly spaced on the scale, ends excluded.
    pub fn levels(&self, n: usize) -> Vec<f64> {
        (1..=n)
            .map(|i| self.value(i as f64 / (n + 1) as f64))
            .collect()
    }
}

/// Viridis, sampled at nine evenly spaced points.
const VIRIDIS: [(u8, u8, u8); 9] = [
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
];

/// The colour at position `t` in 0..1.
pub fn colour(t: f64) -> RGBColor {
    let s = t.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f64;
    let i = (s.floor() as usize).min(VIRIDIS.len() - 2);
    let f = s - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + f * (b as f64 - a as f64)).round() as u8;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Line segments of the contour `level` (marching squares; cells with a
/// missing corner are skipped).
pub fn contour(x: &[f64], y: &[f64], z: &[f64], level: f64) -> Vec<[(f64, f64); 2]> {
    let nx = x.len();
    let at = |ix: usize, iy: usize| z[iy * nx + ix];
    let mut out = Vec::new();
    for iy in 0..y.len().saturating_sub(1) {
        for ix in 0..nx.saturating_sub(1) {
            // Corners counter-clockwise from bottom-left.
            let c = [
                (x[ix], y[iy], at(ix, iy)),
                (x[ix + 1], y[iy], at(ix + 1, iy)),
                (x[ix + 1], y[iy + 1], at(ix + 1, iy + 1)),
                (x[ix], y[iy + 1], at(ix, iy + 1)),
            ];
            if c.iter().any(|p| !p.2.is_finite()) {
                continue;
            }
            let mut crossings = Vec::with_capacity(4);
            for e in 0..4 {
                let (a, b) = (c[e], c[(e + 1) % 4]);
                if (a.2 < level) != (b.2 < level) {
                    let t = (level - a.2) / (b.2 - a.2);
                    crossings.push((a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1)));
                }
            }
            // Two crossings make one segment; four (a saddle) make two.
            for pair in crossings.chunks(2) {
                if let [p, q] = pair {
                    out.push([*p, *q]);
                }
            }
        }
    }
    out
}

const PANEL_W: u32 = 560;
const PANEL_H: u32 = 540;
const BAR_W: u32 = 130;
const TITLE_H: u32 = 44;

/// Draws `panels` side by side on one colour scale, with a colour bar
/// labelled `bar_label`, to an SVG file.
pub fn surfaces_svg(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    bar_label: &str,
    panels: &[Panel],
    scale: ColourScale,
) -> Result<()> {
    let size = (PANEL_W * panels.len() as u32 + BAR_W, PANEL_H + TITLE_H);
    let root = SVGBackend::new(path, size).into_drawing_area();
    draw_surfaces(root, title, (x_label, y_label), bar_label, panels, scale)
        .map_err(|e| Error::data(path, format!("could not draw the picture: {e}")))
}

fn draw_surfaces<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    (x_label, y_label): (&str, &str),
    bar_label: &str,
    panels: &[Panel],
    scale: ColourScale,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (left, bar) = root.split_horizontally(PANEL_W * panels.len() as u32);
    let areas = left.split_evenly((1, panels.len().max(1)));
    for (panel, area) in panels.iter().zip(&areas) {
        draw_panel(area, panel, (x_label, y_label), scale)?;
    }
    draw_colour_bar(&bar, bar_label, scale)?;
    root.present()
}

fn span(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
    (x_label, y_label): (&str, &str),
    scale: ColourScale,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (x0, x1) = span(&panel.x);
    let (y0, y1) = span(&panel.y);
    let half = |v: &[f64], i: usize| -> (f64, f64) {
        let left = if i > 0 { (v[i] - v[i - 1]) / 2.0 } else { 0.0 };
        let right = if i + 1 < v.len() {
            (v[i + 1] - v[i]) / 2.0
        } else {
            0.0
        };
        (v[i] - left, v[i] + right)
    };
    let (xs, ys) = (x1 - x0, y1 - y0);
    let x_tick = move |v: &f64| tick_label(*v, xs);
    let y_tick = move |v: &f64| tick_label(*v, ys);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 17))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(52)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .x_label_formatter(&x_tick)
        .y_label_formatter(&y_tick)
        .draw()?;
    let nx = panel.x.len();
    chart.draw_series((0..panel.z.len()).map(|i| {
        let (ix, iy) = (i % nx, i / nx);
        let v = panel.z[i];
        let (a, b) = (half(&panel.x, ix), half(&panel.y, iy));
        let fill = if v.is_finite() {
            colour(scale.position(v))
        } else {
            RGBColor(200, 200, 200)
        };
        Rectangle::new([(a.0, b.0), (a.1, b.1)], fill.filled())
    }))?;
    let line = RGBColor(255, 255, 255).mix(0.8).stroke_width(1);
    for level in scale.levels(12) {
        for [p, q] in contour(&panel.x, &panel.y, &panel.z, level) {
            chart.draw_series(std::iter::once(PathElement::new(vec![p, q], line)))?;
        }
    }
    for track in &panel.tracks {
        let style = track.color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(track.points.iter().copied(), style))?
            .label(track.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        chart.draw_series(
            track
                .points
                .iter()
                .map(|&p| Circle::new(p, 3, track.color.filled())),
        )?;
    }
    for (name, x, y) in &panel.marks {
        chart.draw_series(std::iter::once(Cross::new(
            (*x, *y),
            6,
            RGBColor(214, 39, 40).stroke_width(2),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            name.clone(),
            (*x, *y),
            ("sans-serif", 14).into_font().color(&WHITE),
        )))?;
    }
    if !panel.tracks.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    Ok(())
}

fn draw_colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    label: &str,
    scale: ColourScale,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let s = scale;
    let tick = move |t: &f64| tick_label(s.value(*t), (s.hi - s.lo).abs());
    let mut chart = ChartBuilder::on(area)
        .margin_top(40)
        .margin_bottom(50)
        .margin_right(10)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc(label)
        .y_labels(8)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .y_label_formatter(&tick)
        .draw()?;
    let steps = 100;
    chart.draw_series((0..steps).map(|i| {
        let (a, b) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
        Rectangle::new([(0.0, a), (1.0, b)], colour((a + b) / 2.0).filled())
    }))?;
    Ok(())
}

/// Colours for tracks.
pub fn track_colour(i: usize) -> RGBColor {
    [PALETTE[1], PALETTE[4], PALETTE[7], PALETTE[6]][i % 4]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contour_of_a_cone_is_a_ring_at_its_radius() {
        let axis: Vec<f64> = (0..41).map(|i| -1.0 + i as f64 * 0.05).collect();
        let z: Vec<f64> = axis
            .iter()
            .flat_map(|&y| axis.iter().map(move |&x| (x * x + y * y).sqrt()))
            .collect();
        let segments = contour(&axis, &axis, &z, 0.5);
        assert!(segments.len() > 20);
        for [p, q] in segments {
            for (x, y) in [p, q] {
                assert!(((x * x + y * y).sqrt() - 0.5).abs() < 0.02);
            }
        }
    }

    #[test]
    fn the_scale_turns_logarithmic_over_a_factor_of_ten() {
        let panel = |z: Vec<f64>| Panel {
            title: String::new(),
            x: vec![0.0, 1.0],
            y: vec![0.0],
            z,
            tracks: Vec::new(),
            marks: Vec::new(),
        };
        let s = ColourScale::spanning(&[panel(vec![0.1, 5.0])]);
        assert!(s.log);
        assert!((s.position(s.value(0.3)) - 0.3).abs() < 1e-12);
        assert!(!ColourScale::spanning(&[panel(vec![0.5, 0.9, f64::NAN])]).log);
    }
}
