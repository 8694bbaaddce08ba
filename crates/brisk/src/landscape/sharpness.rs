//! Flatness as numbers: the top eigenvalue of the train loss's Hessian
//! (power iteration over Hessian-vector products) and Keskar et al.'s
//! (ICLR 2017) ε-sharpness.
//!
//! Hessian-vector products are central differences of gradients,
//! `Hv ≈ (∇L(θ + hv) − ∇L(θ − hv)) / 2h` with `v` of unit norm: candle has
//! no second-order autograd, and for a quadratic the difference is exact.
//! ε-sharpness is `100 · max_{y ∈ C} (L(θ + y) − L(θ)) / (1 + L(θ))` over
//! the box `|yᵢ| ≤ ε(|θᵢ| + 1)`; Keskar et al. maximise with L-BFGS-B,
//! brisk with projected sign-gradient ascent (the steepest ascent for a
//! box; a step that lowers the loss is undone and the step halved),
//! keeping the largest loss seen: like theirs, a lower bound.

use serde::Serialize;

use super::probe::Objective;
use super::space::Point;
use crate::corpus::generated::Rng;
use crate::error::Result;
use crate::model::params::standard_normal;

/// Settings of [`sharpness`].
#[derive(Debug, Clone, Serialize)]
pub struct SharpnessSpec {
    /// Power iterations at most.
    pub iterations: usize,
    /// Stop when the eigenvalue changes by less than this fraction.
    pub tolerance: f64,
    /// The finite-difference step `h` (the norm of the perturbation).
    pub fd_step: f64,
    /// Keskar's ε (the box's relative size).
    pub epsilon: f64,
    /// Ascent steps for ε-sharpness.
    pub ascent_steps: usize,
    pub seed: u64,
}

impl Default for SharpnessSpec {
    fn default() -> SharpnessSpec {
        SharpnessSpec {
            iterations: 20,
            tolerance: 1e-3,
            fd_step: 1e-3,
            epsilon: 1e-3,
            ascent_steps: 10,
            seed: 0,
        }
    }
}

/// What [`sharpness`] measured at a point.
#[derive(Debug, Clone, Serialize)]
pub struct Sharpness {
    /// The train loss at the point.
    pub loss: f64,
    /// The Hessian's eigenvalue of largest magnitude (the top one at a minimum).
    pub top_eigenvalue: f64,
    /// The estimate after each power iteration.
    pub eigenvalue_history: Vec<f64>,
    pub epsilon: f64,
    pub epsilon_sharpness: f64,
    /// The largest loss found in the box.
    pub max_loss_in_box: f64,
    /// Gradient evaluations spent (each a pass over the train subset).
    pub gradient_passes: usize,
}

/// The top Hessian eigenvalue and ε-sharpness of the objective's train
/// loss at `at`.
pub fn sharpness(
    objective: &mut dyn Objective,
    at: &Point,
    spec: &SharpnessSpec,
    mut progress: impl FnMut(&str),
) -> Result<Sharpness> {
    let mut passes = 0;
    let (history, _) = top_eigenvalue(objective, at, spec, &mut passes, &mut progress)?;
    let (loss, max_loss) = epsilon_box_ascent(objective, at, spec, &mut passes, &mut progress)?;
    Ok(Sharpness {
        loss,
        top_eigenvalue: history.last().copied().unwrap_or(f64::NAN),
        eigenvalue_history: history,
        epsilon: spec.epsilon,
        epsilon_sharpness: 100.0 * (max_loss - loss) / (1.0 + loss),
        max_loss_in_box: max_loss,
        gradient_passes: passes,
    })
}

/// `Hv` by central differences of gradients (`v` of unit norm).
fn hessian_times(
    objective: &mut dyn Objective,
    at: &Point,
    v: &Point,
    h: f64,
    passes: &mut usize,
) -> Result<Point> {
    objective.move_to(at, &[(h, v)])?;
    let (_, plus) = objective.gradient()?;
    objective.move_to(at, &[(-h, v)])?;
    let (_, mut hv) = objective.gradient()?;
    *passes += 2;
    hv.scale(-1.0);
    hv.add_scaled(1.0, &plus);
    hv.scale(0.5 / h);
    Ok(hv)
}

/// Power iteration: the eigenvalue estimates `vᵀHv` per iteration and the
/// last vector.
pub fn top_eigenvalue(
    objective: &mut dyn Objective,
    at: &Point,
    spec: &SharpnessSpec,
    passes: &mut usize,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<f64>, Point)> {
    let mut rng = Rng::new(spec.seed ^ 0xe16e);
    let mut v = Point::zeros(objective.layout());
    for x in v.groups.iter_mut().flatten() {
        *x = standard_normal(&mut rng) as f32;
    }
    v.scale(1.0 / v.norm().max(f64::MIN_POSITIVE));
    let mut history: Vec<f64> = Vec::new();
    for it in 0..spec.iterations {
        let hv = hessian_times(objective, at, &v, spec.fd_step, passes)?;
        let lambda = v.dot(&hv);
        let norm = hv.norm();
        history.push(lambda);
        progress(&format!(
            "power iteration {}/{}: eigenvalue {lambda:.5}",
            it + 1,
            spec.iterations
        ));
        if norm == 0.0 || !norm.is_finite() {
            break;
        }
        v = hv;
        v.scale(1.0 / norm);
        if let [.., prev, last] = history[..] {
            if (last - prev).abs() <= spec.tolerance * last.abs() {
                break;
            }
        }
    }
    Ok((history, v))
}

/// Projected sign-gradient ascent in Keskar's box: the loss at `at` and
/// the largest loss seen.
fn epsilon_box_ascent(
    objective: &mut dyn Objective,
    at: &Point,
    spec: &SharpnessSpec,
    passes: &mut usize,
    progress: &mut dyn FnMut(&str),
) -> Result<(f64, f64)> {
    // The box's half-widths, ε(|θᵢ| + 1).
    let mut bound = at.clone();
    for x in bound.groups.iter_mut().flatten() {
        *x = (spec.epsilon * (x.abs() as f64 + 1.0)) as f32;
    }
    objective.move_to(at, &[])?;
    let (base_loss, _) = objective.gradient()?;
    *passes += 1;
    // A seeded start inside the box: at a stationary point the gradient
    // is zero and sign ascent would not move.
    let mut rng = Rng::new(spec.seed ^ 0xb0c5);
    let mut y = bound.clone();
    for x in y.groups.iter_mut().flatten() {
        *x *= (2.0 * rng.unit() - 1.0) as f32;
    }
    // Every step starts from the best point so far (its loss, offset and
    // gradient); a step that lowers the loss halves the step size, so the
    // ascent cannot bounce between two corners for good.
    objective.move_to(at, &[(1.0, &y)])?;
    let (loss, grad) = objective.gradient()?;
    *passes += 1;
    let mut best = (loss, y, grad);
    let mut step_size = 0.5f32;
    for step in 0..spec.ascent_steps {
        progress(&format!(
            "ε-box ascent {}/{}: loss {:.5}",
            step + 1,
            spec.ascent_steps,
            best.0
        ));
        let y = sign_step(&best.1, &best.2, &bound, step_size);
        objective.move_to(at, &[(1.0, &y)])?;
        let (loss, grad) = objective.gradient()?;
        *passes += 1;
        if loss < best.0 {
            step_size *= 0.5;
        } else {
            best = (loss, y, grad);
        }
    }
    let best = best.0.max(base_loss);
    objective.move_to(at, &[])?;
    Ok((base_loss, best))
}

/// `y` moved by `size` of the box's half-width along the gradient's sign,
/// clamped to the box (half the box at first: a corner is at most four
/// steps away).
fn sign_step(y: &Point, grad: &Point, bound: &Point, size: f32) -> Point {
    let mut next = y.clone();
    for ((yg, gg), bg) in next.groups.iter_mut().zip(&grad.groups).zip(&bound.groups) {
        for ((yi, &gi), &bi) in yg.iter_mut().zip(gg).zip(bg) {
            if gi != 0.0 {
                *yi = (*yi + size * bi * gi.signum()).clamp(-bi, bi);
            }
        }
    }
    next
}
