//! `l1`: the L1 norm of a class's producer filters (see [`super::filters`]): per producer
//! part the sum of |w| over its weight slices, combined over the class's parts with the
//! context's [`Reduce`]. Channels without producer weights (e.g. added by Pad)
//! score 0. Reads weights only; it does not run the model.

use super::filters::{Filters, Norm};
use super::{normalize, Criterion, Normalize, Reduce, ScoreCx, Scores};
use crate::analysis::channels::ChannelGroups;
use crate::error::Result;
use crate::ir::Model;

/// The L1 filter-norm criterion.
#[derive(Clone, Copy, Debug, Default)]
pub struct L1;

impl Criterion for L1 {
    fn score(&self, cx: &ScoreCx) -> Result<Scores> {
        let filters = Filters::new(cx.model, cx.groups);
        Ok(Scores {
            values: filters.class_norms(Norm::L1, cx.reduce),
            ..Default::default()
        })
    }
}

/// L1 filter-norm score of every class (indexed like `groups.class_atoms`), summed over the
/// class's producers and normalised per group to [0, 1] by the group's largest score.
pub fn l1_scores(model: &Model, groups: &ChannelGroups) -> Vec<f64> {
    let mut values = Filters::new(model, groups).class_norms(Norm::L1, Reduce::Sum);
    normalize(groups, &mut values, Normalize::Max);
    values
}
