//! Paired comparison of two proxies measured round by round.
//!
//! `bench/gateway.sh` runs every proxy once per round, one after the other,
//! so the two figures of a round were taken seconds apart on the same host;
//! from one round to the next the host itself drifts (other tenants, CPU
//! frequency). Comparing round by round, as the ratio of the two figures,
//! takes most of that drift out. This module gives the median of those
//! ratios and a confidence interval for it that assumes nothing about their
//! distribution: the sign test's interval between two order statistics,
//! `[r(k), r(n-k+1)]`, whose coverage is `1 - 2 P(X <= k-1)` for
//! `X ~ Binomial(n, 1/2)`. `k` is the largest that keeps the coverage at
//! 95 % or more; with fewer than 6 rounds no interval reaches 95 %, and the
//! widest one (min to max) is given with its own, lower, coverage.
//!
//! An interval that lies wholly above 1 says the first proxy's figure is
//! higher than the second's by more than the rounds' spread; wholly below,
//! lower; an interval around 1 says this run cannot tell them apart, and its
//! ends say by how much at most.

use std::fmt;

/// The coverage the interval aims for.
pub const TARGET_CONFIDENCE: f64 = 0.95;

/// Per-round ratios `a[i] / b[i]`, summarised.
#[derive(Debug, Clone, PartialEq)]
pub struct RatioSummary {
    pub rounds: usize,
    pub median: f64,
    pub low: f64,
    pub high: f64,
    /// The interval's coverage, 0 to 1 (at least [`TARGET_CONFIDENCE`]
    /// from 6 rounds on).
    pub confidence: f64,
}

/// Where the first proxy's figure stands against the second's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The whole interval is above 1.
    Higher,
    /// The whole interval is below 1.
    Lower,
    /// The interval holds 1: not told apart by this run.
    NotToldApart,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Higher => "higher",
            Verdict::Lower => "lower",
            Verdict::NotToldApart => "not-told-apart",
        })
    }
}

impl RatioSummary {
    pub fn verdict(&self) -> Verdict {
        if self.low > 1.0 {
            Verdict::Higher
        } else if self.high < 1.0 {
            Verdict::Lower
        } else {
            Verdict::NotToldApart
        }
    }
}

/// The median of `a[i] / b[i]` over the rounds, with its sign-test interval.
pub fn paired_ratios(a: &[f64], b: &[f64]) -> Result<RatioSummary, String> {
    if a.len() != b.len() {
        return Err(format!(
            "the two proxies have {} and {} rounds; a paired comparison needs the same rounds for both",
            a.len(),
            b.len()
        ));
    }
    if a.len() < 2 {
        return Err(format!(
            "{} round(s) give no interval; run at least 2 (6 for a 95 % interval)",
            a.len()
        ));
    }
    if let Some(bad) = a.iter().chain(b).find(|v| !v.is_finite() || **v <= 0.0) {
        return Err(format!(
            "a figure of {bad} cannot be compared as a ratio; every round's figure must be a positive number"
        ));
    }
    let mut ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len();
    let median = if n % 2 == 1 {
        ratios[n / 2]
    } else {
        (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
    };
    let (k, confidence) = interval_rank(n);
    Ok(RatioSummary {
        rounds: n,
        median,
        low: ratios[k - 1],
        high: ratios[n - k],
        confidence,
    })
}

/// For `rounds` ratios: `k` (1-based), so that the interval is the `k`-th
/// lowest to the `k`-th highest, and that interval's coverage. It depends on
/// the number of rounds only, so a table can state it once.
pub fn interval_rank(rounds: usize) -> (usize, f64) {
    let cdf = binomial_half_cdf(rounds);
    let mut k = 1;
    while k < rounds / 2 && cdf[k] <= (1.0 - TARGET_CONFIDENCE) / 2.0 {
        k += 1;
    }
    (k, 1.0 - 2.0 * cdf[k - 1])
}

/// `P(X <= i)` for `X ~ Binomial(n, 1/2)`, for `i` in `0..=n`.
fn binomial_half_cdf(n: usize) -> Vec<f64> {
    let mut cdf = Vec::with_capacity(n + 1);
    let mut term = 0.5f64.powi(n as i32); // P(X = 0)
    let mut sum = 0.0;
    for i in 0..=n {
        sum += term;
        cdf.push(sum);
        term = term * (n - i) as f64 / (i + 1) as f64;
    }
    cdf
}

/// A space-separated list of figures, as `bench/gateway.sh` keeps them.
pub fn parse_figures(list: &str) -> Result<Vec<f64>, String> {
    list.split_whitespace()
        .map(|v| {
            v.parse::<f64>()
                .map_err(|_| format!("`{v}` is not a number; give figures such as `2.41 2.77`"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_the_sign_tests_order_statistics() {
        // 12 rounds: P(X <= 2) = 79/4096 = 0.0193 <= 0.025 < P(X <= 3) =
        // 299/4096, so k = 3 and the coverage is 1 - 2 * 79/4096 = 96.1 %.
        let a: Vec<f64> = (1..=12).map(f64::from).collect();
        let b = vec![1.0; 12];
        let s = paired_ratios(&a, &b).unwrap();
        assert_eq!(s.rounds, 12);
        assert_eq!(s.median, 6.5);
        assert_eq!((s.low, s.high), (3.0, 10.0));
        assert!((s.confidence - (1.0 - 2.0 * 79.0 / 4096.0)).abs() < 1e-12);
    }

    #[test]
    fn seven_rounds_give_the_range_at_98_percent() {
        // P(X <= 0) = 1/128, P(X <= 1) = 8/128 > 0.025: k = 1, min to max.
        let a = [1.0, 1.2, 0.9, 1.1, 1.3, 0.8, 1.05];
        let b = [1.0; 7];
        let s = paired_ratios(&a, &b).unwrap();
        assert_eq!((s.low, s.high, s.median), (0.8, 1.3, 1.05));
        assert!((s.confidence - (1.0 - 2.0 / 128.0)).abs() < 1e-12);
        assert_eq!(s.verdict(), Verdict::NotToldApart);
    }

    #[test]
    fn too_few_rounds_give_the_range_with_its_lower_coverage() {
        let s = paired_ratios(&[2.0, 3.0, 4.0], &[1.0, 1.0, 1.0]).unwrap();
        assert_eq!((s.low, s.high), (2.0, 4.0));
        assert!((s.confidence - 0.75).abs() < 1e-12, "{}", s.confidence);
        assert_eq!(s.verdict(), Verdict::Higher);
    }

    #[test]
    fn ratios_are_taken_round_by_round_not_between_medians() {
        // The host halves in speed halfway through; A is 10 % faster in
        // every round. Compared median to median the drift would hide it.
        let b = [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0];
        let a: Vec<f64> = b.iter().map(|v| v * 0.9).collect();
        let s = paired_ratios(&a, &b).unwrap();
        assert!((s.high - 0.9).abs() < 1e-12 && (s.low - 0.9).abs() < 1e-12);
        assert_eq!(s.verdict(), Verdict::Lower);
    }

    #[test]
    fn the_coverage_depends_on_the_number_of_rounds_only() {
        assert_eq!(interval_rank(12), (3, 1.0 - 2.0 * 79.0 / 4096.0));
        assert_eq!(interval_rank(8), (1, 1.0 - 2.0 / 256.0));
        assert_eq!(interval_rank(5).0, 1);
        assert!(interval_rank(5).1 < TARGET_CONFIDENCE);
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        let err = paired_ratios(&[1.0, 2.0], &[1.0]).unwrap_err();
        assert!(err.contains("2 and 1 rounds"), "{err}");
        let err = paired_ratios(&[1.0], &[1.0]).unwrap_err();
        assert!(err.contains("at least 2"), "{err}");
        let err = paired_ratios(&[1.0, 0.0], &[1.0, 1.0]).unwrap_err();
        assert!(err.contains("positive"), "{err}");
        let err = parse_figures("2.41 FAILED").unwrap_err();
        assert!(err.contains("`FAILED`"), "{err}");
        assert_eq!(parse_figures(" 2.5  3 ").unwrap(), vec![2.5, 3.0]);
    }
}
