//! Order statistics of latency samples.

use serde::Serialize;

/// Summary of a set of timings (seconds).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Number of samples.
    pub runs: usize,
    /// Median.
    pub median: f64,
    /// 10th percentile.
    pub p10: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Mean.
    pub mean: f64,
    /// Fastest.
    pub min: f64,
    /// Half the width of the median's 95% confidence interval, relative to the median
    /// ([`median_ci`]): how far another run of the same benchmark may move it.
    pub noise: f64,
}

/// The `q`-quantile of sorted values, linearly interpolated between closest ranks (numpy's
/// default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

/// A distribution-free 95% confidence interval of the median of `sorted` values: the order
/// statistics at ranks `n/2 ∓ 0.98·√n` (normal approximation of the binomial); the whole
/// range for fewer than 6 values.
pub fn median_ci(sorted: &[f64]) -> (f64, f64) {
    let n = sorted.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    if n < 6 {
        return (sorted[0], sorted[n - 1]);
    }
    let half = 0.98 * (n as f64).sqrt();
    let lo = ((n as f64 / 2.0 - half).floor().max(0.0) as usize).min(n - 1);
    let hi = ((n as f64 / 2.0 + half).ceil() as usize).min(n - 1);
    (sorted[lo], sorted[hi])
}

impl Stats {
    /// Summarises timings.
    pub fn of(samples: &[f64]) -> Stats {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Stats {
            runs: s.len(),
            median: quantile(&s, 0.5),
            p10: quantile(&s, 0.1),
            p90: quantile(&s, 0.9),
            mean: s.iter().sum::<f64>() / s.len().max(1) as f64,
            min: s.first().copied().unwrap_or(f64::NAN),
            noise: {
                let (lo, hi) = median_ci(&s);
                (hi - lo) / 2.0 / quantile(&s, 0.5).abs().max(f64::MIN_POSITIVE)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy() {
        // numpy.percentile([1..=10], [10, 50, 90]) = [1.9, 5.5, 9.1]
        let v: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        let s = Stats::of(&v);
        assert!((s.p10 - 1.9).abs() < 1e-12);
        assert!((s.median - 5.5).abs() < 1e-12);
        assert!((s.p90 - 9.1).abs() < 1e-12);
        assert_eq!((s.runs, s.min, s.mean), (10, 1.0, 5.5));
        assert_eq!(Stats::of(&[2.0]).p90, 2.0);
    }

    #[test]
    fn the_median_interval_narrows_with_more_samples() {
        // 100 values 1..=100: ranks 50 ∓ 9.8 → values 41 and 60 (0-based 40 and 59+1).
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let (lo, hi) = median_ci(&v);
        assert_eq!((lo, hi), (41.0, 61.0));
        assert!((Stats::of(&v).noise - 10.0 / 50.5).abs() < 1e-12);
        // The same spread with 4× the samples: about half the width.
        let w: Vec<f64> = (1..=400).map(|x| f64::from(x) / 4.0).collect();
        let n4 = Stats::of(&w).noise;
        assert!(n4 < 0.6 * Stats::of(&v).noise, "{n4}");
        // Identical samples: no noise; few samples: the whole range.
        assert_eq!(Stats::of(&[3.0; 20]).noise, 0.0);
        assert_eq!(median_ci(&[1.0, 2.0, 9.0]), (1.0, 9.0));
    }
}
