//! `l2`: the Euclidean norm of a class's producer filters (see [`super::filters`]): per
//! producer part √(Σ w²) over its weight slices, combined over the class's parts with the
//! context's [`Reduce`](super::Reduce). Channels without producer weights score 0. Reads
//! weights only.

use super::filters::{Filters, Norm};
use super::{Criterion, ScoreCx, Scores};
use crate::error::Result;

/// The L2 filter-norm criterion.
#[derive(Clone, Copy, Debug, Default)]
pub struct L2;

impl Criterion for L2 {
    fn score(&self, cx: &ScoreCx) -> Result<Scores> {
        let filters = Filters::new(cx.model, cx.groups);
        Ok(Scores {
            values: filters.class_norms(Norm::L2, cx.reduce),
            ..Default::default()
        })
    }
}
