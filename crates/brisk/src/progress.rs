//! Plain progress lines at a steady interval. A terminal gets bars; a log
//! file or a cluster job's output gets one line every so often instead, so
//! that a long step (a fine-tuning epoch, a big pre-training step) never
//! leaves the log silent for minutes.

use std::time::{Duration, Instant};

/// Seconds between plain progress lines unless `BRISK_PROGRESS_SECS` says
/// otherwise.
pub const DEFAULT_INTERVAL_SECS: f64 = 30.0;

/// The interval between plain progress lines: `BRISK_PROGRESS_SECS`, or
/// [`DEFAULT_INTERVAL_SECS`].
pub fn interval() -> Duration {
    let secs = std::env::var("BRISK_PROGRESS_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(DEFAULT_INTERVAL_SECS);
    Duration::from_secs_f64(secs)
}

/// Says when the next plain progress line is due.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    every: Duration,
    last: Instant,
}

impl Heartbeat {
    /// A heartbeat at [`interval`], starting now.
    pub fn new() -> Heartbeat {
        Heartbeat::every(interval())
    }

    pub fn every(every: Duration) -> Heartbeat {
        Heartbeat {
            every,
            last: Instant::now(),
        }
    }

    /// True (and the clock restarts) when a line is due.
    pub fn due(&mut self) -> bool {
        if self.last.elapsed() >= self.every {
            self.last = Instant::now();
            true
        } else {
            false
        }
    }
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat::new()
    }
}

/// `1h02m`, `3m05s` or `12s`: a duration as a progress line shows it.
pub fn short_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_is_due_once_per_interval() {
        let mut beat = Heartbeat::every(Duration::from_millis(30));
        assert!(!beat.due());
        std::thread::sleep(Duration::from_millis(40));
        assert!(beat.due());
        assert!(!beat.due(), "the clock restarts after a line");
        assert!(Heartbeat::every(Duration::ZERO).due());
    }

    #[test]
    fn durations_read_as_a_person_would() {
        assert_eq!(short_duration(12.4), "12s");
        assert_eq!(short_duration(185.0), "3m05s");
        assert_eq!(short_duration(3720.0), "1h02m");
        assert_eq!(short_duration(f64::NAN), "?");
    }
}
