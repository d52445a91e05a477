//! `apoz` (average percentage of zeros): a class scores `1 − zero_fraction` over the
//! calibration data, from [`ActivationStats::zero_fraction`](super::ActivationStats), so
//! channels that are mostly zero after their activation rank low. It only reads gathered
//! statistics and errors (Usage) when none were given.

use super::activation::{per_class, stats};
use super::{Criterion, ScoreCx, Scores};
use crate::error::Result;

/// The APoZ criterion.
#[derive(Clone, Copy, Debug, Default)]
pub struct Apoz;

impl Criterion for Apoz {
    fn score(&self, cx: &ScoreCx) -> Result<Scores> {
        let stats = stats(cx, "apoz")?;
        let zeros = per_class(cx, "apoz", "zero_fraction", &stats.zero_fraction)?;
        Ok(Scores {
            values: zeros.iter().map(|z| 1.0 - z).collect(),
            ..Default::default()
        })
    }
}
