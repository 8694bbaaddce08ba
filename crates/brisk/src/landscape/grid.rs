//! Grids of evaluated points, resumable: each view fills a [`Grid`] point
//! by point and saves it (JSON, atomically) every few seconds, so a killed
//! run continues where it stopped; the grid's `key` (what it was made of)
//! must match for a saved grid to be continued.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::probe::Objective;
use super::space::Point;
use crate::error::{Error, Result};
use crate::run::{read_json, write_atomic, write_json};

/// Values at the points of an `x` × `y` grid (a line has one `y`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Grid {
    /// What the grid shows ("line", "plane", "layers", ...).
    pub view: String,
    /// What it was made of (inputs and settings): a saved grid is resumed
    /// only when its key is the same.
    pub key: serde_json::Value,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// Names of the rows (for `layers`, one per row of `y`); may be empty.
    #[serde(default)]
    pub y_names: Vec<String>,
    /// Names of each point's values.
    pub measures: Vec<String>,
    /// Row-major (`y` outer): each point's values, `null` until evaluated
    /// (a non-finite value is also `null`).
    pub values: Vec<Option<Vec<Option<f64>>>>,
    /// Seconds spent evaluating, over all sessions.
    pub seconds: f64,
}

/// `n` evenly spaced values from `lo` to `hi` (both included).
pub fn spaced(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![lo],
        // A weighted mean of the ends, divided last: with round ends the
        // numerator is exact, so 0.1 comes out as 0.1, not 0.09999999999999998.
        _ => (0..n)
            .map(|i| (lo * (n - 1 - i) as f64 + hi * i as f64) / (n - 1) as f64)
            .collect(),
    }
}

impl Grid {
    pub fn new(
        view: &str,
        key: serde_json::Value,
        x: Vec<f64>,
        y: Vec<f64>,
        measures: Vec<String>,
    ) -> Grid {
        let n = x.len() * y.len();
        Grid {
            view: view.to_string(),
            key,
            x,
            y,
            y_names: Vec::new(),
            measures,
            values: vec![None; n],
            seconds: 0.0,
        }
    }

    /// The saved grid at `path` when it is this one (same key, axes and
    /// measures), `self` when nothing is saved there; a saved grid made
    /// from other inputs is an error (it is never mixed in).
    pub fn resume_from(self, path: &Path) -> Result<Grid> {
        if !path.exists() {
            return Ok(self);
        }
        let saved: Grid = read_json(path)?;
        let same = saved.view == self.view
            && saved.key == self.key
            && saved.x == self.x
            && saved.y == self.y
            && saved.measures == self.measures
            && saved.values.len() == self.values.len();
        if same {
            Ok(Grid {
                y_names: self.y_names,
                ..saved
            })
        } else {
            Err(Error::Usage(format!(
                "{} holds a {} grid made from other inputs or settings; \
                 use another --out, or --force to start again",
                path.display(),
                saved.view
            )))
        }
    }

    /// Points evaluated so far.
    pub fn done(&self) -> usize {
        self.values.iter().filter(|v| v.is_some()).count()
    }

    /// The value `measure` at column `ix`, row `iy` (NaN when missing).
    pub fn at(&self, measure: usize, ix: usize, iy: usize) -> f64 {
        self.values[iy * self.x.len() + ix]
            .as_ref()
            .and_then(|v| v[measure])
            .unwrap_or(f64::NAN)
    }

    /// The value `measure` at the column whose x is `x`, row `iy` (NaN when
    /// the grid has no such column or the point is missing).
    pub fn at_x(&self, measure: usize, x: f64, iy: usize) -> f64 {
        match self.x.iter().position(|&v| (v - x).abs() < 1e-9) {
            Some(ix) => self.at(measure, ix, iy),
            None => f64::NAN,
        }
    }

    /// Every point's value of `measure`, row-major (NaN where missing).
    pub fn surface(&self, measure: usize) -> Vec<f64> {
        (0..self.values.len())
            .map(|i| self.at(measure, i % self.x.len(), i / self.x.len()))
            .collect()
    }

    /// The index of the measure named `name`.
    pub fn measure(&self, name: &str) -> Option<usize> {
        self.measures.iter().position(|m| m == name)
    }

    /// Whether every point has its values.
    pub fn complete(&self) -> bool {
        self.done() == self.values.len()
    }

    /// Evaluates every missing point: `moves(x, iy)` gives the base and the
    /// directions with their coefficients at column value `x`, row `iy`.
    /// Saves to `path` every `save_s` seconds and at the end; `progress`
    /// hears `(done, total)`; when `stop()` turns true, saves and returns
    /// with the grid incomplete.
    pub fn fill<'a>(
        &mut self,
        objective: &mut dyn Objective,
        moves: impl Fn(f64, usize) -> (&'a Point, Vec<(f64, &'a Point)>),
        path: &Path,
        save_s: f64,
        progress: &mut dyn FnMut(usize, usize),
        stop: &dyn Fn() -> bool,
    ) -> Result<()> {
        let total = self.values.len();
        let mut last_save = Instant::now();
        for i in 0..total {
            if self.values[i].is_some() {
                continue;
            }
            if stop() {
                break;
            }
            let started = Instant::now();
            let (ix, iy) = (i % self.x.len(), i / self.x.len());
            let (base, dirs) = moves(self.x[ix], iy);
            objective.move_to(base, &dirs)?;
            let values = objective.measure()?;
            self.values[i] = Some(values.into_iter().map(finite).collect());
            self.seconds += started.elapsed().as_secs_f64();
            progress(self.done(), total);
            if last_save.elapsed().as_secs_f64() >= save_s {
                self.save(path)?;
                last_save = Instant::now();
            }
        }
        self.save(path)
    }

    /// Writes the grid as JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }

    /// Writes the grid as CSV: `x`, `y` (or the row's name), then the measures.
    pub fn save_csv(&self, path: &Path) -> Result<()> {
        let y_header = if self.y_names.is_empty() { "y" } else { "row" };
        let mut text = format!("x,{y_header},{}\n", self.measures.join(","));
        for (i, v) in self.values.iter().enumerate() {
            let (ix, iy) = (i % self.x.len(), i / self.x.len());
            let y = match self.y_names.get(iy) {
                Some(name) => name.clone(),
                None => format!("{}", self.y[iy]),
            };
            text.push_str(&format!("{},{y}", self.x[ix]));
            for m in 0..self.measures.len() {
                match v.as_ref().and_then(|v| v[m]) {
                    Some(value) => text.push_str(&format!(",{value}")),
                    None => text.push(','),
                }
            }
            text.push('\n');
        }
        write_atomic(path, text.as_bytes())
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_includes_both_ends() {
        assert_eq!(spaced(-0.5, 1.5, 5), vec![-0.5, 0.0, 0.5, 1.0, 1.5]);
        assert_eq!(spaced(2.0, 3.0, 1), vec![2.0]);
        let fine = spaced(-0.5, 1.5, 21);
        assert_eq!((fine[4], fine[6], fine[20]), (-0.1, 0.1, 1.5));
    }
}
