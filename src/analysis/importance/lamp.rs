//! `lamp` (layer-adaptive magnitude pruning): within each group, classes are sorted by their
//! squared filter norm `s` (per producer part Σ w², combined with the context's
//! [`Reduce`](super::Reduce)) and class `i` scores `s_i / Σ_{j: s_j ≥ s_i} s_j`.
//!
//! The group's largest class always scores 1 (or 1/k for a k-way tie at the top) and scores
//! compare across groups by design, so [`super::score`] does not rescale LAMP scores. A group
//! whose norms are all zero scores 0. Reads weights only.

use super::filters::{Filters, Norm};
use super::{Criterion, ScoreCx, Scores};
use crate::error::Result;

/// The LAMP criterion.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lamp;

impl Criterion for Lamp {
    fn score(&self, cx: &ScoreCx) -> Result<Scores> {
        let s = Filters::new(cx.model, cx.groups).class_norms(Norm::SquaredL2, cx.reduce);
        let mut values = vec![0f64; s.len()];
        for grp in &cx.groups.groups {
            let group: Vec<(usize, f64)> = grp
                .classes
                .iter()
                .filter_map(|&c| s.get(c).map(|v| (c, *v)))
                .collect();
            for (c, v) in lamp(&group) {
                values[c] = v;
            }
        }
        Ok(Scores {
            values,
            ..Default::default()
        })
    }
}

/// LAMP scores of `(class, squared norm)` pairs: `s_i / Σ_{j: s_j ≥ s_i} s_j` (ties count in
/// the denominator), 0 when the denominator is 0.
pub(crate) fn lamp(group: &[(usize, f64)]) -> Vec<(usize, f64)> {
    let mut sorted: Vec<(usize, f64)> = group.to_vec();
    sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
    // Suffix sums from the largest down, so every tie shares the same denominator.
    let mut out = Vec::with_capacity(sorted.len());
    let mut tail = 0f64;
    let mut i = sorted.len();
    while i > 0 {
        let mut j = i;
        while j > 0 && sorted[j - 1].1 == sorted[i - 1].1 {
            tail += sorted[j - 1].1;
            j -= 1;
        }
        for &(c, s) in &sorted[j..i] {
            out.push((c, if tail > 0.0 { s / tail } else { 0.0 }));
        }
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::lamp;

    #[test]
    fn formula_ties_and_zeros() {
        let mut got = lamp(&[(7, 4.0), (8, 1.0), (9, 4.0), (10, 2.0)]);
        got.sort_by_key(|x| x.0);
        // Sorted 1, 2, 4, 4: 1/11, 2/10, 4/8, 4/8.
        assert_eq!(got, [(7, 0.5), (8, 1.0 / 11.0), (9, 0.5), (10, 0.2)]);
        assert_eq!(lamp(&[(0, 0.0), (1, 0.0)]), [(0, 0.0), (1, 0.0)]);
        assert!(lamp(&[]).is_empty());
    }
}
