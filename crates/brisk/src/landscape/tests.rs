//! The views on a quadratic whose landscape is known in closed form.

use super::grid::Grid;
use super::probe::Objective;
use super::sharpness::{sharpness, SharpnessSpec};
use super::space::{Layout, Point};
use super::views::{line, plane, Axis, Sink};
use crate::error::{Error, Result};

/// L(θ) = ½ Σ aᵢ (θᵢ − cᵢ)², reported as its only measure; it can be made
/// to fail after a number of evaluations (an interrupted run).
struct Quadratic {
    layout: Layout,
    curvature: Vec<f64>,
    minimum: Vec<f64>,
    theta: Vec<f64>,
    evaluations: usize,
    fail_after: Option<usize>,
}

impl Quadratic {
    fn new(curvature: &[f64], minimum: &[f64]) -> Quadratic {
        let n = curvature.len();
        Quadratic {
            layout: Layout::single_tensors(&[("w", &[2, n / 2])]),
            curvature: curvature.to_vec(),
            minimum: minimum.to_vec(),
            theta: vec![0.0; n],
            evaluations: 0,
            fail_after: None,
        }
    }

    fn loss_at(&self, theta: &[f64]) -> f64 {
        theta
            .iter()
            .zip(&self.curvature)
            .zip(&self.minimum)
            .map(|((t, a), c)| 0.5 * a * (t - c).powi(2))
            .sum()
    }

    fn point(&self, values: &[f64]) -> Point {
        Point {
            groups: vec![values.iter().map(|&v| v as f32).collect()],
        }
    }
}

impl Objective for Quadratic {
    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn measures(&self) -> Vec<String> {
        vec!["train_loss".into()]
    }

    fn move_to(&mut self, base: &Point, moves: &[(f64, &Point)]) -> Result<()> {
        for (i, t) in self.theta.iter_mut().enumerate() {
            *t = base.groups[0][i] as f64
                + moves
                    .iter()
                    .map(|(c, d)| c * d.groups[0][i] as f64)
                    .sum::<f64>();
        }
        Ok(())
    }

    fn measure(&mut self) -> Result<Vec<f64>> {
        if self.fail_after == Some(self.evaluations) {
            return Err(Error::Training("interrupted".into()));
        }
        self.evaluations += 1;
        Ok(vec![self.loss_at(&self.theta)])
    }

    fn gradient(&mut self) -> Result<(f64, Point)> {
        let g: Vec<f64> = self
            .theta
            .iter()
            .zip(&self.curvature)
            .zip(&self.minimum)
            .map(|((t, a), c)| a * (t - c))
            .collect();
        Ok((self.loss_at(&self.theta), self.point(&g)))
    }
}

fn sink<'a>(path: &'a std::path::Path, progress: &'a mut dyn FnMut(usize, usize)) -> Sink<'a> {
    Sink {
        path,
        resume: true,
        save_s: 0.0,
        progress,
        stop: &|| false,
    }
}

const A: [f64; 4] = [1.0, 2.0, 5.0, 0.5];
const C: [f64; 4] = [0.3, -0.2, 0.1, 0.4];

#[test]
fn line_and_plane_values_are_the_closed_form() {
    let tmp = tempfile::tempdir().unwrap();
    let mut q = Quadratic::new(&A, &C);
    let (a, b) = (q.point(&[1.0, 0.0, -1.0, 2.0]), q.point(&C));
    let axis = Axis {
        lo: -0.5,
        hi: 1.5,
        points: 9,
    };
    let mut quiet = |_: usize, _: usize| {};
    let path = tmp.path().join("line.json");
    let grid = line(
        &mut q,
        &a,
        &b,
        axis,
        serde_json::json!(1),
        sink(&path, &mut quiet),
    )
    .unwrap();
    for (ix, &alpha) in grid.x.iter().enumerate() {
        let theta: Vec<f64> = (0..4)
            .map(|i| a.groups[0][i] as f64 + alpha * (b.groups[0][i] - a.groups[0][i]) as f64)
            .collect();
        assert!((grid.at(0, ix, 0) - q.loss_at(&theta)).abs() < 1e-6);
    }
    assert!(grid.at(0, 6, 0).abs() < 1e-9, "α = 1 is the minimum");

    let (d1, d2) = (
        q.point(&[1.0, 0.0, 0.0, 0.0]),
        q.point(&[0.0, 0.5, 0.5, 0.0]),
    );
    let axis = Axis {
        lo: -1.0,
        hi: 1.0,
        points: 5,
    };
    let path = tmp.path().join("plane.json");
    let grid = plane(
        &mut q,
        &b,
        (&d1, &d2),
        (axis, axis),
        serde_json::json!(2),
        sink(&path, &mut quiet),
    )
    .unwrap();
    for (iy, &beta) in grid.y.iter().enumerate() {
        for (ix, &alpha) in grid.x.iter().enumerate() {
            // At the minimum: ½(1·α² + 2·(β/2)² + 5·(β/2)²).
            let expected = 0.5 * (alpha * alpha + 7.0 * beta * beta / 4.0);
            assert!((grid.at(0, ix, iy) - expected).abs() < 1e-6);
        }
    }
}

#[test]
fn an_interrupted_grid_resumes_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("line.json");
    let mut q = Quadratic::new(&A, &C);
    let (a, b) = (q.point(&[1.0, 0.0, -1.0, 2.0]), q.point(&C));
    let axis = Axis {
        lo: -0.5,
        hi: 1.5,
        points: 21,
    };
    let mut quiet = |_: usize, _: usize| {};
    q.fail_after = Some(8);
    assert!(line(
        &mut q,
        &a,
        &b,
        axis,
        serde_json::json!(1),
        sink(&path, &mut quiet)
    )
    .is_err());
    let saved: Grid = crate::run::read_json(&path).unwrap();
    assert_eq!(saved.done(), 8, "every finished point was saved");

    let mut fresh = Quadratic::new(&A, &C);
    let resumed = line(
        &mut fresh,
        &a,
        &b,
        axis,
        serde_json::json!(1),
        sink(&path, &mut quiet),
    )
    .unwrap();
    assert_eq!(
        fresh.evaluations, 13,
        "only the missing points are evaluated"
    );
    let mut whole = Quadratic::new(&A, &C);
    let other = tmp.path().join("whole.json");
    let straight = line(
        &mut whole,
        &a,
        &b,
        axis,
        serde_json::json!(1),
        sink(&other, &mut quiet),
    )
    .unwrap();
    assert_eq!(resumed.values, straight.values);
    // Another key (other inputs) is refused rather than mixed in.
    let err = line(
        &mut fresh,
        &a,
        &b,
        axis,
        serde_json::json!(9),
        sink(&path, &mut quiet),
    );
    assert!(err.unwrap_err().to_string().contains("--force"));
}

#[test]
fn the_top_hessian_eigenvalue_and_epsilon_sharpness_are_the_known_ones() {
    let mut q = Quadratic::new(&A, &C);
    let at = q.point(&C);
    let spec = SharpnessSpec {
        iterations: 200,
        tolerance: 1e-9,
        ..SharpnessSpec::default()
    };
    let s = sharpness(&mut q, &at, &spec, |_| {}).unwrap();
    assert!(
        (s.top_eigenvalue - 5.0).abs() < 1e-3,
        "{}",
        s.top_eigenvalue
    );
    assert!(s.loss.abs() < 1e-12);
    // The box's corner: ½ Σ aᵢ (ε(|cᵢ| + 1))², relative to 1 + L = 1.
    let e = spec.epsilon;
    let corner: f64 = A
        .iter()
        .zip(&C)
        .map(|(a, c)| 0.5 * a * (e * (c.abs() + 1.0)).powi(2))
        .sum();
    assert!(
        (s.epsilon_sharpness - 100.0 * corner).abs() < 1e-3 * 100.0 * corner,
        "{} vs {}",
        s.epsilon_sharpness,
        100.0 * corner
    );
}
