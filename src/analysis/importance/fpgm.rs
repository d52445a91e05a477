//! `fpgm` (filter pruning via geometric median): within each group, a class scores the sum
//! of Euclidean distances from its filter vector to the other classes' filter vectors. A
//! filter near the geometric median of its layer is well represented by the others and
//! scores low. A class's filter vector concatenates all its producer slices (see
//! [`super::filters`]), so a residual group compares the classes over all its producers.
//!
//! Distances come from the group's Gram matrix (`‖a − b‖² = ‖a‖² + ‖b‖² − 2⟨a, b⟩`, one
//! matrix product per group), O(n²·d) for n classes of dimension d and O(n²) memory.
//! [`Reduce`](super::Reduce) does not apply: the parts are concatenated, not combined.
//! Reads weights only.

use super::filters::Filters;
use super::{Criterion, ScoreCx, Scores};
use crate::error::Result;

/// The geometric-median distance criterion.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fpgm;

impl Criterion for Fpgm {
    fn score(&self, cx: &ScoreCx) -> Result<Scores> {
        let filters = Filters::new(cx.model, cx.groups);
        let mut values = vec![0f64; cx.groups.class_atoms.len()];
        for grp in &cx.groups.groups {
            if grp.classes.len() < 2 {
                continue;
            }
            let sums = distance_sums(&filters, &grp.classes);
            for (&c, s) in grp.classes.iter().zip(sums) {
                values[c] = s;
            }
        }
        Ok(Scores {
            values,
            ..Default::default()
        })
    }
}

/// For every class of `classes`, the sum of Euclidean distances to the others.
pub(crate) fn distance_sums(filters: &Filters, classes: &[usize]) -> Vec<f64> {
    let gram = filters.gram(classes);
    let n = classes.len();
    let diag: Vec<f64> = (0..n).map(|i| gram[[i, i]]).collect();
    (0..n)
        .map(|i| {
            let row = gram.row(i);
            (0..n)
                .filter(|&j| j != i)
                .map(|j| (diag[i] + diag[j] - 2.0 * row[j]).max(0.0).sqrt())
                .sum()
        })
        .collect()
}
