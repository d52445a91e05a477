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
}
