//! Where a training step's time goes: wall-clock time per named section
//! (a layer's projections, its attention, its LayerNorms, the optimiser...),
//! summed over a run. Off unless [`enable`]d; off, a section costs one
//! relaxed atomic load.
//!
//! Sections are leaves: the code they time does not open another section,
//! so their times add up, and what a step spends outside all of them
//! (autograd's bookkeeping, tensor glue) is the step minus their sum.
//! `bench/mlm_step.sh --profile` prints the table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
/// `(name, total time, calls)`, in the order the sections first ran.
static TOTALS: Mutex<Vec<(&'static str, Duration, u64)>> = Mutex::new(Vec::new());

/// One section's totals.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub name: &'static str,
    pub seconds: f64,
    pub calls: u64,
}

/// Turns timing on or off for the whole process.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Runs `f`, adding its wall-clock time to section `name` when profiling is
/// on.
#[inline]
pub fn time<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let start = Instant::now();
    let out = f();
    record(name, start.elapsed());
    out
}

fn record(name: &'static str, elapsed: Duration) {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    match totals.iter_mut().find(|(n, _, _)| *n == name) {
        Some((_, total, calls)) => {
            *total += elapsed;
            *calls += 1;
        }
        None => totals.push((name, elapsed, 1)),
    }
}

/// The totals so far, in the order the sections first ran; resets them.
pub fn take() -> Vec<Section> {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    totals
        .drain(..)
        .map(|(name, total, calls)| Section {
            name,
            seconds: total.as_secs_f64(),
            calls,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_add_up_only_while_enabled() {
        // Other tests may time their own sections meanwhile: only this
        // test's names are checked.
        time("off", || ());
        enable(true);
        let x = time("sleep", || {
            std::thread::sleep(Duration::from_millis(2));
            7
        });
        time("sleep", || std::thread::sleep(Duration::from_millis(2)));
        time("other", || ());
        enable(false);
        time("sleep", || ());
        assert_eq!(x, 7);
        let sections: Vec<_> = take()
            .into_iter()
            .filter(|s| ["off", "sleep", "other"].contains(&s.name))
            .collect();
        let names: Vec<_> = sections.iter().map(|s| s.name).collect();
        assert_eq!(names, ["sleep", "other"]);
        assert_eq!(sections[0].calls, 2);
        assert!(sections[0].seconds >= 0.004, "{sections:?}");
    }
}
