//! The allocate stage: the run's selector ([`crate::plan::select`]) chooses this round's
//! classes from the analysis and the scores, under the round's share of the amount; a latency
//! target gets its candidates timed by the [`LatencyEvaluator`]. This stage does not score
//! and does not change the model.

use crate::analysis::importance::Scores;
use crate::error::Result;
use crate::ir::Model;
use crate::plan::{Choice, Round, Selector};

use super::analyse::Analysis;
use super::latency::LatencyEvaluator;
use super::reporter::Reporter;
use super::Progress;

/// The stage: `selector`'s choice for `model` this round. `latency` measures candidates
/// when it has timed the original (latency targets). The reporter is told `allocating`
/// when there are scores to allocate by.
pub fn allocate(
    selector: &mut dyn Selector,
    model: &Model,
    analysis: &Analysis,
    scores: Option<&Scores>,
    progress: Progress,
    latency: Option<&mut LatencyEvaluator>,
    reporter: &mut dyn Reporter,
) -> Result<Choice> {
    if scores.is_some() {
        reporter.stage("allocating");
    }
    let (groups, shapes) = (&analysis.groups, &analysis.shapes);
    let mut measure = latency
        .filter(|ev| ev.has_original())
        .map(|ev| move |classes: &[usize]| ev.ratio_after(model, groups, shapes, classes));
    selector.select(Round {
        model,
        groups,
        shapes,
        scores,
        step: progress.step,
        steps: progress.steps,
        kept: progress.kept,
        measure: measure.as_mut().map(|m| m as _),
    })
}
