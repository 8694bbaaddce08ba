//! The views: a line between two points, a plane through a centre, and
//! layer-by-layer lines, each a [`Grid`] filled through an [`Objective`].

use std::path::Path;

use super::grid::{spaced, Grid};
use super::probe::Objective;
use super::space::{Layout, Point};
use crate::error::Result;

/// A range of coefficients: `points` values from `lo` to `hi`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub points: usize,
}

impl Axis {
    pub fn values(&self) -> Vec<f64> {
        spaced(self.lo, self.hi, self.points)
    }

    /// Whether `x` is one of the axis's values.
    pub fn has(&self, x: f64) -> bool {
        self.values().iter().any(|&v| (v - x).abs() < 1e-9)
    }
}

/// Where a view saves its grid, how often, who hears progress, and what
/// stops it early (Ctrl-C).
pub struct Sink<'a> {
    pub path: &'a Path,
    /// Continue the grid saved at `path` (see [`Grid::resume_from`]).
    pub resume: bool,
    pub save_s: f64,
    pub progress: &'a mut dyn FnMut(usize, usize),
    pub stop: &'a dyn Fn() -> bool,
}

/// Loss along θ(α) = θA + α(θB − θA) (Goodfellow et al.'s interpolation;
/// Hao et al.'s 1-D view with A the start of fine-tuning, B its end).
pub fn line(
    objective: &mut dyn Objective,
    a: &Point,
    b: &Point,
    axis: Axis,
    key: serde_json::Value,
    sink: Sink,
) -> Result<Grid> {
    let d = b.minus(a);
    let grid = Grid::new("line", key, axis.values(), vec![0.0], objective.measures());
    fill(objective, grid, sink, |x, _| (a, vec![(x, &d)]))
}

/// Loss over θ(α, β) = θ₀ + α·d₁ + β·d₂.
pub fn plane(
    objective: &mut dyn Objective,
    centre: &Point,
    (d1, d2): (&Point, &Point),
    (x, y): (Axis, Axis),
    key: serde_json::Value,
    sink: Sink,
) -> Result<Grid> {
    let ys = y.values();
    let grid = Grid::new("plane", key, x.values(), ys.clone(), objective.measures());
    fill(objective, grid, sink, |a, iy| {
        (centre, vec![(a, d1), (ys[iy], d2)])
    })
}

/// One curve per entry of `groups` (a name and its group indices in the
/// layout, see [`layer_groups`]): the model at θB with only that group moved along its
/// own fine-tuning direction, to θA_g + α(θB_g − θA_g); α = 1 is θB, α = 0
/// puts that one group back at its start (Hao et al.'s layer-wise view).
pub fn layers(
    objective: &mut dyn Objective,
    a: &Point,
    b: &Point,
    groups: &[(String, Vec<usize>)],
    axis: Axis,
    key: serde_json::Value,
    sink: Sink,
) -> Result<Grid> {
    let full = b.minus(a);
    let dirs: Vec<Point> = groups
        .iter()
        .map(|(_, idx)| full.only_groups(idx))
        .collect();
    let rows: Vec<f64> = (0..groups.len()).map(|i| i as f64).collect();
    let mut grid = Grid::new("layers", key, axis.values(), rows, objective.measures());
    grid.y_names = groups.iter().map(|(n, _)| n.clone()).collect();
    fill(objective, grid, sink, |x, iy| {
        (b, vec![(x - 1.0, &dirs[iy])])
    })
}

/// The groups a layer-wise view moves: the embeddings, each encoder layer,
/// and the rest (pooler and classifier) as "head".
pub fn layer_groups(layout: &Layout) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut head = Vec::new();
    for (i, g) in layout.groups.iter().enumerate() {
        if g.name.starts_with("bert.embeddings") {
            out.push(("embeddings".into(), vec![i]));
        } else if let Some(rest) = g.name.strip_prefix("bert.encoder.layer.") {
            out.push((format!("layer {rest}"), vec![i]));
        } else {
            head.push(i);
        }
    }
    if !head.is_empty() {
        out.push(("head".into(), head));
    }
    out
}

fn fill<'a>(
    objective: &mut dyn Objective,
    grid: Grid,
    sink: Sink,
    moves: impl Fn(f64, usize) -> (&'a Point, Vec<(f64, &'a Point)>),
) -> Result<Grid> {
    let mut grid = if sink.resume {
        grid.resume_from(sink.path)?
    } else {
        grid
    };
    grid.fill(
        objective,
        moves,
        sink.path,
        sink.save_s,
        sink.progress,
        sink.stop,
    )?;
    Ok(grid)
}
