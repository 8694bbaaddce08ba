//! Learning-rate schedule: linear warm-up to the peak, then linear decay to
//! zero at the end of the budget.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
