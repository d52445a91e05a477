//! Uniform ratio: remove the fraction `ratio` of the lowest-scoring channels of every prunable
//! group (rounded down), always keeping at least one channel per group and per tensor. Ties go to the lower
//! class index, so the same model and scores always give the same plan.

use crate::analysis::channels::ChannelGroups;
use crate::error::{Error, Result};

/// Classes to remove: in every prunable group, the `floor(ratio · channels)` lowest `scores`.
pub fn plan_ratio(groups: &ChannelGroups, scores: &[f64], ratio: f64) -> Result<Vec<usize>> {
    if !(0.0..1.0).contains(&ratio) {
        return Err(Error::Usage(format!(
            "--ratio must be in [0, 1), got {ratio}"
        )));
    }
    let mut out = Vec::new();
    for grp in groups.groups.iter().filter(|g| g.prunable()) {
        let n = grp.classes.len();
        let k = ((ratio * n as f64).floor() as usize).min(n - 1);
        let mut order = grp.classes.clone();
        order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]).then(a.cmp(b)));
        out.extend(order.into_iter().take(k));
    }
    // Never leave a tensor (e.g. one branch of a concat) without channels.
    let mut out = groups.take_without_emptying(out);
    out.sort_unstable();
    Ok(out)
}

/// The [`plan_ratio`] selector: the lowest-scoring fraction of every prunable group, by the
/// round's scores (the pipeline gives it L1 scores).
#[derive(Clone, Copy, Debug)]
pub struct UniformRatio(pub f64);

impl super::Selector for UniformRatio {
    fn select(&mut self, round: super::Round) -> Result<super::Choice> {
        let scores = round.scores("a uniform ratio")?;
        Ok(super::Choice::classes(plan_ratio(
            round.groups,
            &scores.values,
            self.0,
        )?))
    }
}
