//! Network pruning via automatic mending (Su et al. 2022), as stages:
//!
//! 1. **mend**: pre-prune by filter norms (L1, one global threshold) to the budget, then a
//!    search around the pre-pruned widths ([`crate::pipeline::mend`]): moves of one or two
//!    rounding steps of channels from one group to another that keep the MACs within ±1% of
//!    the target; each candidate takes its channels by the pre-pruning ranking, is
//!    recalibrated and trained [`STEPS`] steps and scored on [`HOLDOUT`] training samples it
//!    did not train on; a greedy climb (proposals seeded by `--seed`) with [`EVALUATIONS`] candidates in all, scored a round
//!    at a time on every core;
//! 2. **recover** (`--recover`, default distillation), the whole epoch budget.
//!
//! The paper's search space and strategy are its own design; this is a greedy stand-in
//! with the same ingredients (rule-based pre-pruning, width moves around it, fast
//! evaluation reusing the ranking). The candidates' brief training is beyond the epoch
//! budget (13 × 50 steps, about 1.7 CIFAR-10 epochs at batch 128).

use crate::error::Result;
use crate::plan::allocate::Scope;

use super::super::compress::{Mending, Stage};
use super::super::mend::MendOptions;
use super::super::options::Scored;
use super::{needs_budget, then_recover, Composition, Method, Settings};

/// Candidates scored in all, the pre-pruned one included (1 + 3 rounds of 4).
pub const EVALUATIONS: usize = 13;

/// Training steps of each candidate's brief recovery.
pub const STEPS: usize = 50;

/// Training samples held out to score the candidates.
pub const HOLDOUT: usize = 1000;

/// The stages of mending (module docs); `scored` (default criterion L1) pre-prunes.
pub fn compose(scored: &mut Scored, s: &Settings) -> Result<Composition> {
    needs_budget(Method::Mending, scored)?;
    scored.allocate.scope = Scope::Global;
    let mend = Stage::Mend(Mending {
        search: MendOptions {
            evaluations: s.mend_evaluations.unwrap_or(EVALUATIONS).max(1),
            seed: scored.seed,
            ..MendOptions::default()
        },
        steps: s.inherit_steps.unwrap_or(STEPS),
        holdout: s.holdout.unwrap_or(HOLDOUT),
    });
    Ok(Composition {
        stages: then_recover(vec![mend], s),
        recovery_epochs: s.epochs,
        recovery_lr: None,
        from_scratch: false,
    })
}
