//! The training budget and the learning-rate schedule sized to it: linear
//! warm-up to the peak, then linear decay to zero at the end of the budget
//! (or a constant rate).
//!
//! A budget is given in optimiser steps, training tokens or wall-clock time.
//! Steps and tokens fix the number of steps in advance, so the schedule (and
//! with it the whole run) is a function of the step alone: that is what makes
//! resume bitwise exact. A wall-clock budget sizes the schedule to the elapsed
//! fraction of the time instead.

use crate::config::{parse_duration_secs, Schedule, TrainConfig};
use crate::error::{Error, Result};

/// The learning rate at `step` (0-based) of `total` steps.
pub fn linear_warmup_decay(peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let remaining = total.saturating_sub(step) as f64;
    let span = total.saturating_sub(warmup).max(1) as f64;
    peak * (remaining / span).clamp(0.0, 1.0)
}

/// Warm-up steps for a budget of `total` steps.
pub fn warmup_steps(total: u64, fraction: f64) -> u64 {
    (total as f64 * fraction).round() as u64
}

/// The schedule's factor (0 to 1) at `progress`, the fraction of the budget
/// that will have been used once the current step is done.
pub fn factor_at(progress: f64, warmup_fraction: f64, schedule: Schedule) -> f64 {
    let p = progress.clamp(0.0, 1.0);
    if p < warmup_fraction {
        return p / warmup_fraction;
    }
    match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => ((1.0 - p) / (1.0 - warmup_fraction).max(1e-12)).clamp(0.0, 1.0),
    }
}

/// How long a run may train: a number of steps (from `train.steps` and/or
/// `train.tokens`), a wall-clock limit (`train.budget`), or both, in which
/// case the first one reached ends the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub steps: Option<u64>,
    pub seconds: Option<f64>,
}

impl Budget {
    /// The budget of `train`, where a step consumes `tokens_per_step` tokens.
    pub fn from_config(train: &TrainConfig, tokens_per_step: u64) -> Result<Budget> {
        let by_tokens = (train.tokens > 0).then(|| train.tokens.div_ceil(tokens_per_step.max(1)));
        let by_steps = (train.steps > 0).then_some(train.steps);
        let steps = match (by_steps, by_tokens) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let seconds = if train.budget.is_empty() {
            None
        } else {
            Some(parse_duration_secs(&train.budget).ok_or_else(|| {
                Error::Config(format!(
                    "`train.budget`: {:?} is not a duration (expected e.g. \"90s\", \"20m\", \"2h\")",
                    train.budget
                ))
            })?)
        };
        if steps.is_none() && seconds.is_none() {
            return Err(Error::Usage(
                "no training budget: set one of --steps N, --tokens N or --budget 20m \
                 (train.steps, train.tokens, train.budget)"
                    .into(),
            ));
        }
        Ok(Budget { steps, seconds })
    }

    /// True once `done` steps have been taken in `elapsed` seconds of training.
    pub fn exhausted(&self, done: u64, elapsed: f64) -> bool {
        self.steps.is_some_and(|s| done >= s) || self.seconds.is_some_and(|s| elapsed >= s)
    }

    /// The learning rate for `step` (0-based). `elapsed_after` estimates the
    /// training time spent once this step is done; it matters only for a
    /// wall-clock budget.
    pub fn learning_rate(&self, train: &TrainConfig, step: u64, elapsed_after: f64) -> f64 {
        let peak = train.learning_rate;
        let by_time = self.seconds.map(|s| {
            (
                elapsed_after / s,
                peak * factor_at(elapsed_after / s, train.warmup_fraction, train.schedule),
            )
        });
        let by_steps = self.steps.map(|total| {
            let warmup = warmup_steps(total, train.warmup_fraction);
            let lr = match train.schedule {
                Schedule::Linear => linear_warmup_decay(peak, step, warmup, total),
                Schedule::Constant if step < warmup => peak * (step + 1) as f64 / warmup as f64,
                Schedule::Constant => peak,
            };
            ((step + 1) as f64 / total as f64, lr)
        });
        // The schedule follows whichever budget is further along.
        match (by_steps, by_time) {
            (Some((ps, ls)), Some((pt, lt))) => {
                if pt > ps {
                    lt
                } else {
                    ls
                }
            }
            (Some((_, l)), None) | (None, Some((_, l))) => l,
            (None, None) => peak,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn warms_up_then_decays_to_zero() {
        let lr = |s| linear_warmup_decay(1.0, s, 10, 110);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(60) - 0.5).abs() < 1e-12);
        assert_eq!(lr(110), 0.0);
        assert_eq!(lr(500), 0.0);
        assert!((1..110).all(|s| lr(s) <= 1.0 && lr(s) > 0.0));
        assert_eq!(linear_warmup_decay(2.0, 0, 0, 10), 2.0);
        assert_eq!(warmup_steps(1000, 0.06), 60);
    }

    #[test]
    fn budgets_come_from_steps_tokens_or_time() {
        let mut t = Preset::Tiny.config().train;
        t.steps = 0;
        assert!(Budget::from_config(&t, 100).unwrap_err().is_usage());
        t.tokens = 1050;
        assert_eq!(Budget::from_config(&t, 100).unwrap().steps, Some(11));
        t.steps = 5;
        assert_eq!(Budget::from_config(&t, 100).unwrap().steps, Some(5));
        t.budget = "2m".into();
        let b = Budget::from_config(&t, 100).unwrap();
        assert_eq!(b.seconds, Some(120.0));
        assert!(b.exhausted(5, 1.0) && b.exhausted(1, 120.0) && !b.exhausted(4, 119.0));
    }

    #[test]
    fn wall_clock_schedules_follow_elapsed_time() {
        let mut t = Preset::Tiny.config().train;
        t.steps = 0;
        t.learning_rate = 1.0;
        t.warmup_fraction = 0.1;
        t.budget = "100s".into();
        let b = Budget::from_config(&t, 1).unwrap();
        assert!((b.learning_rate(&t, 0, 5.0) - 0.5).abs() < 1e-12);
        assert!((b.learning_rate(&t, 7, 55.0) - 0.5).abs() < 1e-12);
        assert_eq!(b.learning_rate(&t, 9, 100.0), 0.0);
        t.schedule = Schedule::Constant;
        assert_eq!(b.learning_rate(&t, 9, 90.0), 1.0);
    }

    #[test]
    fn constant_schedules_do_not_depend_on_the_budget() {
        let mut t = Preset::Tiny.config().train;
        t.schedule = Schedule::Constant;
        t.warmup_fraction = 0.0;
        let short = Budget::from_config(
            &TrainConfig {
                steps: 10,
                ..t.clone()
            },
            1,
        )
        .unwrap();
        let long = Budget::from_config(
            &TrainConfig {
                steps: 20,
                ..t.clone()
            },
            1,
        )
        .unwrap();
        for step in 0..10 {
            assert_eq!(
                short.learning_rate(&t, step, 0.0),
                long.learning_rate(&t, step, 0.0)
            );
        }
    }
}
