//! The allocate stage: the run's selector ([`crate::plan::select`]) chooses this round's
//! classes from the analysis and the scores, under the round's share of the amount; a latency
//! target gets its candidates timed by the [`LatencyEvaluator`]. This stage does not score
//! and does not change the model.

use crate::analysis::importance::Scores;
use crate::analysis::MaskedCost;
use crate::error::Result;
use crate::ir::Model;
use crate::plan::{Choice, Round, Selector};

use super::analyse::Analysis;
use super::latency::LatencyEvaluator;
use super::reporter::Reporter;
use super::Progress;

/// The stage: `selector`'s choice for `model` this round. `latency` measures candidates
/// when it has timed the original (latency targets), and predicts them ([`super::latency::Predictor`]:
/// from their MACs and the measurements so far, or from a per-layer latency table, built or
/// extended here where the table lacks the model's layers). The reporter is told `allocating`
/// when there are scores to allocate by. Returns the choice, with a prediction its
/// predicted latency ratio (by the prediction as the search left it), and whether that
/// prediction came from a pinned table ([`LatencyEvaluator::learns`] false): the search then
/// times no candidate, and the caller times the model it writes.
pub fn allocate(
    selector: &mut dyn Selector,
    model: &Model,
    analysis: &Analysis,
    scores: Option<&Scores>,
    progress: Progress,
    latency: Option<&mut LatencyEvaluator>,
    reporter: &mut dyn Reporter,
) -> Result<(Choice, Option<f64>, bool)> {
    if scores.is_some() {
        reporter.stage("allocating");
    }
    let (groups, shapes) = (&analysis.groups, &analysis.shapes);
    let mut latency = latency.filter(|ev| ev.has_original());
    let predictor = match latency.as_deref_mut() {
        Some(ev) if scores.is_some() => {
            ev.predictor(model, groups, shapes, progress.kept.0, &mut *reporter)?
        }
        _ => None,
    };
    let cost = match &predictor {
        Some(_) => Some(MaskedCost::new(model, groups, shapes)?),
        None => None,
    };
    let predict = predictor
        .as_ref()
        .zip(cost.as_ref())
        .map(|(lm, cost)| move |removed: &[bool]| lm.ratio(cost, removed));
    let learn = predictor.as_ref().zip(cost.as_ref());
    // A pinned table's choice is its prediction's whatever a timing says: no candidate is
    // timed (on ResNet-50 that was one to three whole-model timings per drop share).
    let pinned = predictor.is_some() && latency.as_deref().is_some_and(|ev| !ev.learns());
    let mut measure = latency.filter(|_| !pinned).map(|ev| {
        move |classes: &[usize]| {
            let expected = learn.map(|(p, cost)| p.ratio(cost, &cost.flags(classes)));
            let r = ev.ratio_after(model, groups, shapes, classes, expected)?;
            if let Some((p, cost)) = learn {
                ev.learn(p, cost, classes, r)?;
            }
            Ok(r)
        }
    });
    let choice = selector.select(Round {
        model,
        groups,
        shapes,
        scores,
        step: progress.step,
        steps: progress.steps,
        kept: progress.kept,
        measure: measure.as_mut().map(|m| m as _),
        predict: predict.as_ref().map(|p| p as _),
    })?;
    let predicted = predict
        .as_ref()
        .zip(cost.as_ref())
        .map(|(p, cost)| p(&cost.flags(&choice.classes)));
    Ok((choice, predicted, pinned))
}
