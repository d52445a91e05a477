//! Accumulators for classification metrics (top-1/top-5 accuracy, mean cross-entropy) and for
//! comparing two models' outputs (top-1 agreement, max/mean absolute difference).

use serde::Serialize;

/// Whether every row is a probability distribution (values in [0, 1], summing to 1 ± 1e-3):
/// then the loss takes the values as they are instead of applying softmax first.
pub fn rows_are_probabilities(rows: &[f32], classes: usize) -> bool {
    classes > 1
        && !rows.is_empty()
        && rows.chunks(classes).all(|r| {
            r.iter().all(|&p| (0.0..=1.0).contains(&p))
                && (r.iter().map(|&p| f64::from(p)).sum::<f64>() - 1.0).abs() < 1e-3
        })
}

/// The index of the largest value (the first on ties; NaN never wins).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Whether `label` is among the `k` largest values of `row` (ties count against it only when
/// strictly more than `k − 1` values beat it).
pub fn in_top_k(row: &[f32], label: usize, k: usize) -> bool {
    let Some(&v) = row.get(label) else {
        return false;
    };
    row.iter().filter(|&&x| x > v).count() < k
}

/// Cross-entropy of one row against `label`: `−log softmax(row)[label]` for logits, or
/// `−log row[label]` (clamped at 1e-12) for probabilities.
pub fn cross_entropy(row: &[f32], label: usize, probabilities: bool) -> f64 {
    if probabilities {
        return -f64::from(row[label]).max(1e-12).ln();
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (f64::from(x) - max).exp()).sum();
    -(f64::from(row[label]) - max - sum.ln())
}

/// Running classification metrics.
#[derive(Clone, Debug, Default)]
pub struct Accuracy {
    n: usize,
    top1: usize,
    top5: usize,
    loss: f64,
}

/// Final classification metrics.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AccuracyReport {
    /// Labelled samples scored.
    pub samples: usize,
    /// Top-1 accuracy in [0, 1].
    pub top1: f64,
    /// Top-5 accuracy in [0, 1] (`None` with fewer than 5 classes).
    pub top5: Option<f64>,
    /// Mean cross-entropy (nats).
    pub loss: f64,
}

impl Accuracy {
    /// Adds rows of scores (`classes` each) with their labels. Labels must be `< classes`.
    pub fn add(&mut self, rows: &[f32], classes: usize, labels: &[i64], probabilities: bool) {
        for (row, &l) in rows.chunks(classes).zip(labels) {
            let l = l as usize;
            self.n += 1;
            self.top1 += usize::from(argmax(row) == l);
            self.top5 += usize::from(in_top_k(row, l, 5));
            self.loss += cross_entropy(row, l, probabilities);
        }
    }

    /// The metrics so far (`classes` decides whether top-5 is meaningful).
    pub fn report(&self, classes: usize) -> AccuracyReport {
        let n = self.n.max(1) as f64;
        AccuracyReport {
            samples: self.n,
            top1: self.top1 as f64 / n,
            top5: (classes >= 5).then(|| self.top5 as f64 / n),
            loss: self.loss / n,
        }
    }
}

/// Running comparison of a model's outputs with a reference's.
#[derive(Clone, Debug, Default)]
pub struct Agreement {
    n: usize,
    agree: usize,
    elems: usize,
    sum_abs: f64,
    max_abs: f64,
}

/// Final comparison.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AgreementReport {
    /// Samples compared.
    pub samples: usize,
    /// Fraction of samples whose top-1 class is the same in both.
    pub top1_agreement: f64,
    /// Largest absolute difference of any output value.
    pub max_abs_diff: f64,
    /// Mean absolute difference over all output values.
    pub mean_abs_diff: f64,
}

impl Agreement {
    /// Adds rows of the model (`a`) and the reference (`b`), `classes` values each.
    pub fn add(&mut self, a: &[f32], b: &[f32], classes: usize) {
        for (ra, rb) in a.chunks(classes).zip(b.chunks(classes)) {
            self.n += 1;
            self.agree += usize::from(argmax(ra) == argmax(rb));
        }
        for (x, y) in a.iter().zip(b) {
            let d = (f64::from(*x) - f64::from(*y)).abs();
            self.elems += 1;
            self.sum_abs += d;
            if d > self.max_abs || d.is_nan() {
                self.max_abs = d;
            }
        }
    }

    /// The comparison so far.
    pub fn report(&self) -> AgreementReport {
        AgreementReport {
            samples: self.n,
            top1_agreement: self.agree as f64 / self.n.max(1) as f64,
            max_abs_diff: self.max_abs,
            mean_abs_diff: self.sum_abs / self.elems.max(1) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_loss_on_known_rows() {
        // Two samples, 6 classes: the first right at top-1, the second only within top-5.
        let rows = [
            5.0, 1.0, 0.0, 0.0, 0.0, 0.0, //
            0.0, 1.0, 2.0, 3.0, 4.0, 0.5,
        ];
        let mut acc = Accuracy::default();
        acc.add(&rows, 6, &[0, 1], false);
        let r = acc.report(6);
        assert_eq!((r.samples, r.top1, r.top5), (2, 0.5, Some(1.0)));
        let ce0 = cross_entropy(&rows[..6], 0, false);
        let z: f64 = rows[..6].iter().map(|&x| f64::from(x).exp()).sum();
        assert!((ce0 - (z.ln() - 5.0)).abs() < 1e-12);
        assert!((r.loss - (ce0 + cross_entropy(&rows[6..], 1, false)) / 2.0).abs() < 1e-12);
        assert_eq!(acc.report(4).top5, None);
    }

    #[test]
    fn probabilities_are_detected_and_used_as_is() {
        let p = [0.7f32, 0.2, 0.1, 0.25, 0.25, 0.5];
        assert!(rows_are_probabilities(&p, 3));
        assert!(!rows_are_probabilities(&[2.0, -1.0, 0.0], 3));
        assert!(!rows_are_probabilities(&[0.5, 0.2, 0.1], 3));
        assert!((cross_entropy(&p[..3], 0, true) - (-(0.7f64).ln())).abs() < 1e-6);
        // Softmax of log-probabilities gives back the same loss.
        let logp: Vec<f32> = p[..3].iter().map(|v| v.ln()).collect();
        assert!((cross_entropy(&logp, 0, false) - cross_entropy(&p[..3], 0, true)).abs() < 1e-6);
    }

    #[test]
    fn agreement_counts_argmax_and_differences() {
        let a = [1.0f32, 2.0, 3.0, 0.0];
        let b = [1.5f32, 1.0, 3.0, 1.0];
        let mut ag = Agreement::default();
        ag.add(&a, &b, 2);
        let r = ag.report();
        assert_eq!(r.samples, 2);
        assert_eq!(r.top1_agreement, 0.5);
        assert_eq!(r.max_abs_diff, 1.0);
        assert!((r.mean_abs_diff - 2.5 / 4.0).abs() < 1e-12);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert!(in_top_k(&[1.0, 3.0, 3.0], 2, 2) && !in_top_k(&[1.0, 3.0, 3.0], 0, 2));
    }
}
