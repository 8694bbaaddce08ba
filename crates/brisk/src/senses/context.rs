//! WordCtx2Sense: the senses of one word inside one context (Panigrahi,
//! Simhadri and Bhattacharyya, ACL 2019, the in-context extension of
//! Word2Sense).
//!
//! Given the word's raw vector w⁰ (its prior over senses) and the bag of
//! context words x, find the sense weights w on the simplex, restricted to
//! the support of w⁰ (which keeps the answer sparse), that maximise
//!
//!   F(w) = Σ_c x_c ln(Σ_k w_k φ_k(c)) − λ KL(w ‖ w⁰),
//!
//! the context's log-likelihood under the word's senses minus a pull back
//! to the prior. Context counts are SIF-weighted, a/(a + p(c)), so frequent
//! words say less, then normalised to sum to 1.
//!
//! Solver: exponentiated gradient (multiplicative weights) from w⁰, as the
//! official code: w ← w ⊙ exp(η_t ∇F), renormalised, with
//! η_t = sqrt(2 ln n / t) / L over the n senses of the support, 15 steps,
//! L starting at 10. The official code restarts with L doubled when the
//! result is not finite; here a step whose objective is not finite *or
//! lower* is retried with L doubled (up to `retries` times), so the
//! objective never falls, and the exponent is shifted by its maximum so it
//! cannot overflow.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// WordCtx2Sense's constants (`[infer]`); the defaults are the official
/// code's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferConfig {
    /// λ, the weight of KL(w ‖ w⁰).
    pub lambda: f64,
    /// Exponentiated-gradient steps.
    pub iterations: usize,
    /// L, the first step size's divisor.
    pub lipschitz: f64,
    /// Times a step may be retried with L doubled.
    pub retries: usize,
    /// SIF's a: a context word counts a / (a + p(c)).
    pub sif: f64,
}

impl Default for InferConfig {
    fn default() -> Self {
        InferConfig {
            lambda: 1e-2,
            iterations: 15,
            lipschitz: 10.0,
            retries: 15,
            sif: 0.0012,
        }
    }
}

impl InferConfig {
    pub fn check(&self) -> Result<()> {
        let bad = |field: &str, why: &str| Err(Error::Config(format!("infer.{field} {why}")));
        if !(self.lambda >= 0.0 && self.lambda.is_finite()) {
            return bad("lambda", "must be a finite number ≥ 0");
        }
        if !(self.lipschitz > 0.0 && self.lipschitz.is_finite()) {
            return bad("lipschitz", "must be a finite number > 0");
        }
        if !(self.sif > 0.0 && self.sif.is_finite()) {
            return bad("sif", "must be a finite number > 0");
        }
        Ok(())
    }
}

/// The context as SIF-weighted, normalised counts: `(word, x_c)` by
/// increasing word. `word_prior` is p(c) over the vocabulary.
pub fn context_weights(context: &[u32], word_prior: &[f64], sif: f64) -> Vec<(u32, f64)> {
    let mut words = context.to_vec();
    words.sort_unstable();
    let mut weights: Vec<(u32, f64)> = Vec::new();
    for c in words {
        let weight = sif / (sif + word_prior[c as usize]);
        match weights.last_mut() {
            Some((last, x)) if *last == c => *x += weight,
            _ => weights.push((c, weight)),
        }
    }
    let total: f64 = weights.iter().map(|(_, x)| x).sum();
    if total > 0.0 {
        weights.iter_mut().for_each(|(_, x)| *x /= total);
    }
    weights
}

/// One WordCtx2Sense problem on the prior's support of n senses.
pub struct Problem<'a> {
    /// w⁰ on the support: positive, summing to 1.
    pub prior: &'a [f64],
    /// x_c, one per context word.
    pub context: &'a [f64],
    /// φ_k(c) for each context word c (rows) and support sense k (columns):
    /// `context.len() × prior.len()`, row-major.
    pub likelihood: &'a [f64],
}

/// What the solver found.
#[derive(Debug, Clone)]
pub struct Solution {
    /// w on the support (same order as the prior), summing to 1.
    pub weights: Vec<f64>,
    /// F at the prior, then after each step.
    pub objective: Vec<f64>,
    /// L when the solver stopped.
    pub lipschitz: f64,
}

impl Problem<'_> {
    fn senses(&self) -> usize {
        self.prior.len()
    }

    /// (Mw)_c for every context word.
    fn mixture(&self, w: &[f64]) -> Vec<f64> {
        self.likelihood
            .chunks_exact(self.senses())
            .map(|row| row.iter().zip(w).map(|(m, x)| m * x).sum())
            .collect()
    }

    /// F(w).
    pub fn objective(&self, w: &[f64], lambda: f64) -> f64 {
        let fit: f64 = self
            .mixture(w)
            .iter()
            .zip(self.context)
            .map(|(m, x)| x * m.ln())
            .sum();
        fit - lambda * kl(w, self.prior)
    }

    /// ∇F(w) = Mᵀ(x / Mw) − λ(ln(w / w⁰) + 1).
    pub fn gradient(&self, w: &[f64], lambda: f64) -> Vec<f64> {
        let n = self.senses();
        let mut g: Vec<f64> = w
            .iter()
            .zip(self.prior)
            .map(|(x, p)| -lambda * ((x / p).ln() + 1.0))
            .collect();
        for ((row, m), x) in self
            .likelihood
            .chunks_exact(n)
            .zip(self.mixture(w))
            .zip(self.context)
        {
            let scale = x / m;
            for (gk, phi) in g.iter_mut().zip(row) {
                *gk += scale * phi;
            }
        }
        g
    }

    /// Exponentiated gradient from the prior (see the module comment).
    pub fn solve(&self, config: &InferConfig) -> Result<Solution> {
        let n = self.senses();
        if n == 0 || self.likelihood.len() != n * self.context.len() {
            return Err(Error::Usage(format!(
                "a WordCtx2Sense problem needs a non-empty support and {} × {} likelihoods, not {}",
                self.context.len(),
                n,
                self.likelihood.len()
            )));
        }
        let lambda = config.lambda;
        let mut w = self.prior.to_vec();
        let mut value = self.objective(&w, lambda);
        let mut objective = vec![value];
        let mut lipschitz = config.lipschitz;
        let scale = (2.0 * (n as f64).ln()).sqrt();
        'steps: for t in 1..=config.iterations {
            let g = self.gradient(&w, lambda);
            for _ in 0..=config.retries {
                let eta = scale / (t as f64).sqrt() / lipschitz;
                let next = multiplicative_step(&w, &g, eta);
                let next_value = self.objective(&next, lambda);
                // Equal counts as no fall: at a fixed point the step is a no-op.
                if next_value.is_finite() && next_value >= value - 1e-12 * value.abs() {
                    w = next;
                    value = next_value;
                    objective.push(value);
                    continue 'steps;
                }
                lipschitz *= 2.0;
            }
            break; // no step size within the retries improves F
        }
        Ok(Solution {
            weights: w,
            objective,
            lipschitz,
        })
    }
}

/// w ⊙ exp(η g), renormalised; the exponent shifted by its maximum.
fn multiplicative_step(w: &[f64], g: &[f64], eta: f64) -> Vec<f64> {
    let top = g.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let mut next: Vec<f64> = w
        .iter()
        .zip(g)
        .map(|(x, gk)| x * (eta * (gk - top)).exp())
        .collect();
    let sum: f64 = next.iter().sum();
    next.iter_mut().for_each(|x| *x /= sum);
    next
}

/// KL(p ‖ q) in nats; terms with p = 0 count 0.
fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(a, _)| **a > 0.0)
        .map(|(a, b)| a * (a / b).ln())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three senses over four context words; the context is written in
    /// sense 2's words while the prior favours sense 0.
    fn case() -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let phi = [
            [0.7, 0.1, 0.1, 0.1],     // sense 0
            [0.1, 0.7, 0.1, 0.1],     // sense 1
            [0.05, 0.05, 0.45, 0.45], // sense 2
        ];
        let context = [2usize, 3, 3, 0];
        let prior = vec![0.6, 0.3, 0.1];
        let counts: Vec<f64> = (0..4)
            .map(|c| context.iter().filter(|&&x| x == c).count() as f64)
            .collect();
        let (mut x, mut likelihood) = (Vec::new(), Vec::new());
        for (c, &n) in counts.iter().enumerate() {
            if n > 0.0 {
                x.push(n / context.len() as f64);
                likelihood.extend(phi.iter().map(|row| row[c]));
            }
        }
        (prior, x, likelihood)
    }

    #[test]
    fn objective_rises_every_step_and_stays_on_the_simplex() {
        let (prior, x, likelihood) = case();
        let problem = Problem {
            prior: &prior,
            context: &x,
            likelihood: &likelihood,
        };
        let solution = problem.solve(&InferConfig::default()).unwrap();
        assert_eq!(solution.objective.len(), 16, "15 steps taken");
        for pair in solution.objective.windows(2) {
            assert!(pair[1] > pair[0], "F fell: {pair:?}");
        }
        let sum: f64 = solution.weights.iter().sum();
        assert!((sum - 1.0).abs() < 1e-12);
        assert!(solution.weights.iter().all(|&w| w > 0.0));
        // The context speaks of sense 2: it gains weight from its prior 0.1
        // (15 small steps, as the official constants make them, so not all).
        assert!(solution.weights[2] > 0.25, "{:?}", solution.weights);
        assert!(solution.weights[0] < 0.6);
        // The recorded objective is F at the weights returned.
        let last = *solution.objective.last().unwrap();
        assert!((problem.objective(&solution.weights, 1e-2) - last).abs() < 1e-12);
    }

    #[test]
    fn a_large_lambda_returns_the_prior() {
        let (prior, x, likelihood) = case();
        let problem = Problem {
            prior: &prior,
            context: &x,
            likelihood: &likelihood,
        };
        let config = InferConfig {
            lambda: 1e4,
            ..InferConfig::default()
        };
        let solution = problem.solve(&config).unwrap();
        for (w, p) in solution.weights.iter().zip(&prior) {
            assert!((w - p).abs() < 1e-3, "{:?} vs {prior:?}", solution.weights);
        }
        for pair in solution.objective.windows(2) {
            assert!(pair[1] >= pair[0] - 1e-12 * pair[0].abs());
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (prior, x, likelihood) = case();
        let problem = Problem {
            prior: &prior,
            context: &x,
            likelihood: &likelihood,
        };
        let w = [0.5, 0.2, 0.3];
        let g = problem.gradient(&w, 0.3);
        for k in 0..3 {
            let h = 1e-6;
            let (mut up, mut down) = (w, w);
            up[k] += h;
            down[k] -= h;
            let numeric = (problem.objective(&up, 0.3) - problem.objective(&down, 0.3)) / (2.0 * h);
            assert!(
                (numeric - g[k]).abs() < 1e-6,
                "sense {k}: {numeric} vs {}",
                g[k]
            );
        }
    }

    #[test]
    fn sif_weights_down_weight_frequent_words_and_sum_to_one() {
        let prior = [0.5, 0.001, 0.0];
        let weights = context_weights(&[0, 1, 1, 0], &prior, 0.0012);
        assert_eq!(weights.len(), 2);
        let sum: f64 = weights.iter().map(|w| w.1).sum();
        assert!((sum - 1.0).abs() < 1e-12);
        assert!(weights[1].1 > 100.0 * weights[0].1, "{weights:?}");
        // Direct: 2·a/(a + p) per word.
        let raw = [2.0 * 0.0012 / 0.5012, 2.0 * 0.0012 / 0.0022];
        assert!((weights[0].1 - raw[0] / (raw[0] + raw[1])).abs() < 1e-12);
    }

    #[test]
    fn bad_shapes_are_an_error() {
        let problem = Problem {
            prior: &[1.0],
            context: &[1.0],
            likelihood: &[0.5, 0.5],
        };
        assert!(problem.solve(&InferConfig::default()).is_err());
    }
}
