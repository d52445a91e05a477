//! The budget selector: [`allocate()`] of a criterion's scores under a ratio, threshold or
//! resource target, spread over the rounds of a multi-round run ([`step_amount`]). It does
//! not score channels (the pipeline's score stage does) nor time models (a latency target
//! gets its measurements through [`Round::measure`]).

use crate::error::{Error, Result};

use super::allocate::{allocate, AllocateOptions, Amount, Budget, Timing};
use super::select::{Choice, Round, Selector};

/// Allocates removals under `0` (amount, scope, granularity, constraints) from the round's
/// scores; with several rounds, each round gets its share of the amount ([`step_amount`]).
#[derive(Clone, Debug)]
pub struct Budgeted(pub AllocateOptions);

impl Selector for Budgeted {
    fn select(&mut self, round: Round) -> Result<Choice> {
        let scores = round.scores("a budget allocation")?;
        let mut opts = self.0.clone();
        opts.amount = step_amount(&self.0.amount, round.step, round.steps, round.kept)?;
        let alloc = allocate(
            round.model,
            round.groups,
            round.shapes,
            &scores.values,
            scores.keep.as_deref(),
            &opts,
            Timing {
                measure: round.measure,
                predict: round.predict,
            },
        )?;
        Ok(Choice {
            classes: alloc.classes,
            threshold: alloc.threshold,
            evaluations: alloc.evaluations,
            notes: alloc.notes,
        })
    }
}

/// The amount of round `step` (0-based) of `steps`, relative to the model as it is then
/// (`now`: its MACs and parameters as fractions of the original's). Budgets are spread
/// geometrically: after round i the model keeps `b^(i/steps)` of the original, so the last
/// round lands on `b`. A ratio removes the same fraction each round so that `steps` rounds
/// remove `r`. A threshold or the criterion's own choice is one round only (an error otherwise).
pub fn step_amount(amount: &Amount, step: usize, steps: usize, now: (f64, f64)) -> Result<Amount> {
    if steps == 1 {
        // A model already made smaller (whole branches dropped) meets the rest of the budget.
        return Ok(match amount {
            Amount::Target(Budget::Flops(b)) if now.0 < 1.0 => {
                Amount::Target(Budget::Flops((b / now.0).min(1.0)))
            }
            Amount::Target(Budget::Params(b)) if now.1 < 1.0 => {
                Amount::Target(Budget::Params((b / now.1).min(1.0)))
            }
            a => a.clone(),
        });
    }
    let frac = (step + 1) as f64 / steps as f64;
    Ok(match amount {
        Amount::Ratio(r) => Amount::Ratio(1.0 - (1.0 - *r).powf(1.0 / steps as f64)),
        Amount::Target(Budget::Flops(b)) => {
            Amount::Target(Budget::Flops((b.powf(frac) / now.0).min(1.0)))
        }
        Amount::Target(Budget::Params(b)) => {
            Amount::Target(Budget::Params((b.powf(frac) / now.1).min(1.0)))
        }
        // Measured against the original model: the measured ratio is absolute.
        Amount::Target(Budget::Latency(b)) => Amount::Target(Budget::Latency(b.powf(frac))),
        Amount::Threshold(_) | Amount::Own => {
            return Err(Error::Usage(
                "--steps > 1 needs a ratio or a target (a threshold or the criterion's own choice is one round)"
                    .into(),
            ))
        }
    })
}
