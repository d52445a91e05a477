//! `multi`: a weighted sum of several criteria. Each part is scored through
//! [`super::score`] with [`Normalize::Max`] (so every part is on its per-group [0, 1] scale,
//! or its own comparable scale for LAMP) and the results are added with their weights; a
//! part that fails (e.g. one needing calibration data without it) fails the whole, even at
//! weight 0. Parts'
//! notes are kept; parts' keep-masks (EPruner) are not: a combination only ranks.

use super::{score, Criterion, CriterionKind, Normalize, ScoreCx, Scores};
use crate::error::Result;

/// A weighted combination of criteria.
#[derive(Clone, Debug)]
pub struct Multi {
    /// `(criterion, weight)` pairs; weights are ≥ 0.
    pub parts: Vec<(CriterionKind, f64)>,
}

impl Criterion for Multi {
    fn score(&self, cx: &ScoreCx) -> Result<Scores> {
        let mut values = vec![0f64; cx.groups.class_atoms.len()];
        let mut notes = Vec::new();
        for (kind, w) in &self.parts {
            let part = score(kind, cx, Normalize::Max)?;
            for (v, p) in values.iter_mut().zip(&part.values) {
                *v += w * p;
            }
            notes.extend(part.notes);
        }
        Ok(Scores {
            values,
            keep: None,
            notes,
        })
    }
}
