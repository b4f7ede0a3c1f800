//! `--crash-after MIN..MAX`: die abruptly at a random moment, for testing how
//! the platform notices and replaces crashed instances.
//!
//! The crash skips every part of the drain on purpose: no `draining` state, no
//! deregistration. The instance's key stays until its lease expires, which is
//! exactly what a real crash looks like to the rest of Shoal.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;
use tokio::task::JoinHandle;
use tracing::{error, info};

/// Exit code of a crash asked for by `--crash-after` (`EX_SOFTWARE`).
pub const CRASH_EXIT_CODE: i32 = 70;

/// Longest window accepted, so that every value fits a [`Duration`].
const MAX_SECS: f64 = 86_400.0 * 365.0;

/// A closed window of seconds in which to crash.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrashWindow {
    min: Duration,
    max: Duration,
}

impl CrashWindow {
    pub fn min(&self) -> Duration {
        self.min
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// A uniformly random delay in the window.
    pub fn pick(&self, rng: &mut impl Rng) -> Duration {
        if self.min == self.max {
            return self.min;
        }
        Duration::from_secs_f64(rng.random_range(self.min.as_secs_f64()..=self.max.as_secs_f64()))
    }
}

impl fmt::Display for CrashWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.min.as_secs_f64(), self.max.as_secs_f64())
    }
}

impl FromStr for CrashWindow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((min, max)) = s.trim().split_once("..") else {
            return Err(format!(
                "`{s}` is not a window; use MIN..MAX in seconds, e.g. 1..3 or 0.5..2"
            ));
        };
        let secs = |part: &str| -> Result<f64, String> {
            let part = part.trim();
            match part.parse::<f64>() {
                Ok(v) if v.is_finite() && (0.0..=MAX_SECS).contains(&v) => Ok(v),
                Ok(_) => Err(format!(
                    "`{part}` in `{s}` is out of range; use seconds between 0 and {MAX_SECS}"
                )),
                Err(_) => Err(format!(
                    "`{part}` is not a number of seconds; use MIN..MAX, e.g. 1..3 or 0.5..2"
                )),
            }
        };
        let (min, max) = (secs(min)?, secs(max)?);
        if min > max {
            return Err(format!(
                "`{s}`: MIN must not exceed MAX; did you mean {max}..{min}?"
            ));
        }
        Ok(CrashWindow {
            min: Duration::from_secs_f64(min),
            max: Duration::from_secs_f64(max),
        })
    }
}

/// Spawn the task that crashes the process after a random delay in `window`.
pub fn spawn(window: CrashWindow) -> JoinHandle<()> {
    let delay = window.pick(&mut rand::rng());
    info!(window = %window, delay_ms = delay.as_millis() as u64, "will crash as asked by --crash-after");
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        error!(
            after_ms = delay.as_millis() as u64,
            exit_code = CRASH_EXIT_CODE,
            "crashing as asked by --crash-after"
        );
        std::process::exit(CRASH_EXIT_CODE);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_windows_in_seconds() {
        let w: CrashWindow = "1..3".parse().unwrap();
        assert_eq!(w.min(), Duration::from_secs(1));
        assert_eq!(w.max(), Duration::from_secs(3));
        let w: CrashWindow = " 0.25 .. 0.5 ".parse().unwrap();
        assert_eq!(w.min(), Duration::from_millis(250));
        assert_eq!(w.max(), Duration::from_millis(500));
        let w: CrashWindow = "2..2".parse().unwrap();
        assert_eq!(w.pick(&mut rand::rng()), Duration::from_secs(2));
        assert_eq!(w.to_string(), "2..2");
    }

    #[test]
    fn refuses_bad_windows_with_a_fix() {
        for (bad, expected) in [
            ("3..1", "did you mean 1..3?"),
            ("x", "use MIN..MAX"),
            ("3", "use MIN..MAX"),
            ("a..2", "`a` is not a number"),
            ("1..", "`` is not a number"),
            ("-1..2", "out of range"),
            ("1..inf", "out of range"),
            ("NaN..1", "out of range"),
        ] {
            let err = bad.parse::<CrashWindow>().unwrap_err();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn picks_stay_inside_the_window() {
        let w: CrashWindow = "1..1.5".parse().unwrap();
        let mut rng = rand::rng();
        let picks: Vec<Duration> = (0..1000).map(|_| w.pick(&mut rng)).collect();
        assert!(
            picks.iter().all(|d| (w.min()..=w.max()).contains(d)),
            "{picks:?}"
        );
        // Not stuck at one end.
        assert!(picks.iter().any(|d| *d < Duration::from_millis(1250)));
        assert!(picks.iter().any(|d| *d > Duration::from_millis(1250)));
    }
}
