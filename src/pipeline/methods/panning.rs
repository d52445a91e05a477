//! Neural Network Panning (pruning before training), as stages:
//!
//! 1. **pan**: the model re-initialised, then masked at initialisation by a mix of saliency
//!    indices (magnitude, SNIP, GraSP, SynFlow) over one or several rounds; a UCB1 bandit
//!    agent picks the mix and the rounds among [`crate::pipeline::pan::default_arms`], each
//!    pull a [`STEPS`]-step training of the masked network scored on [`HOLDOUT`] held-out
//!    training samples, [`EVALUATIONS`] pulls in all (the paper's agent is trained by
//!    reinforcement learning; the bandit is this project's stand-in). At weight granularity
//!    (the default, `--weight-sparsity`, [`SPARSITY`]) the masks ship beside the model; with
//!    `--granularity channel` the channels go to the `--target` budget instead;
//! 2. **recover** (`--recover`, default distillation from the given model) for the whole
//!    epoch budget at the training rate (the network starts from initialisation), the masks
//!    enforced at every step.
//!
//! `--pan-index NAME` replaces the agent by one index in one shot (`random` and `magnitude`
//! are the baselines panning is measured against). The agent's pulls are beyond the epoch
//! budget (12 × 50 steps, about 1.5 CIFAR-10 epochs at batch 128).

use crate::error::{Error, Result};
use crate::pipeline::pan::{default_arms, Arm};

use super::super::compress::{Granularity, Panning, Stage};
use super::super::options::Scored;
use super::{needs_budget, then_recover, Composition, Method, Settings};

/// Agent pulls in all (each of the ten default arms once, then two more).
pub const EVALUATIONS: usize = 12;

/// Training steps of each pull.
pub const STEPS: usize = 50;

/// Training samples held out to score the pulls.
pub const HOLDOUT: usize = 1000;

/// Weight sparsity at weight granularity when none is given.
pub const SPARSITY: f64 = 0.9;

/// Batches the gradient indices average over.
pub const SCORING_BATCHES: usize = 2;

/// The stages of panning (module docs).
pub fn compose(scored: &mut Scored, s: &Settings) -> Result<Composition> {
    let granularity = if s.channel_granularity {
        if s.weight_sparsity.is_some() {
            return Err(Error::Usage(
                "--weight-sparsity is for weight granularity; with --granularity channel the \
                 budget is --target"
                    .into(),
            ));
        }
        needs_budget(Method::Panning, scored)?;
        Granularity::Channel
    } else {
        if !matches!(scored.allocate.amount, crate::plan::allocate::Amount::Own) {
            return Err(Error::Usage(
                "--method panning masks single weights by default (--weight-sparsity, the \
                 model keeps its FLOPs): give --granularity channel to prune channels to a \
                 --target/--ratio budget"
                    .into(),
            ));
        }
        let sparsity = s.weight_sparsity.unwrap_or(SPARSITY);
        if !(0.0..1.0).contains(&sparsity) {
            return Err(Error::Usage(format!(
                "--weight-sparsity must be in [0, 1), got {sparsity}"
            )));
        }
        Granularity::Weight {
            density: 1.0 - sparsity,
        }
    };
    let arms = match s.pan_index {
        Some(i) => vec![Arm::single(i, 1)],
        None => default_arms(),
    };
    let pan = Stage::Pan(Panning {
        granularity,
        arms,
        evaluations: s.mend_evaluations.unwrap_or(EVALUATIONS).max(1),
        steps: s.inherit_steps.unwrap_or(STEPS),
        holdout: s.holdout.unwrap_or(HOLDOUT),
        scoring_batches: SCORING_BATCHES,
    });
    Ok(Composition {
        stages: then_recover(vec![pan], s),
        recovery_epochs: s.epochs,
        recovery_lr: Some(s.scratch_lr()),
        from_scratch: false,
    })
}
