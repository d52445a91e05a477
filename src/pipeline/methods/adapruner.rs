//! AdaPruner (Liu et al. 2021), as stages:
//!
//! 1. **inherit**: widths from block importance (every channel group keeps a share in
//!    proportion to the mean |γ| of its BatchNormalization scales, the width multiplier
//!    bisected to meet the budget: [`Granularity::Block`]); then adaptive weight
//!    inheritance: one sub-network per criterion in [`CANDIDATES`] (which channels of each
//!    group stay: L1 norm, BN scale, FPGM, or the architecture alone re-initialised), each
//!    recalibrated and trained for [`STEPS`] steps, scored on [`HOLDOUT`] training samples
//!    it did not train on; the best is kept and every score goes into the report;
//! 2. **recover** (`--recover`, default distillation), the whole epoch budget.
//!
//! The brief recoveries are extra training beyond the epoch budget (4 × 200 steps, about
//! two thirds of a CIFAR-10 epoch at batch 128).

use crate::analysis::importance::CriterionKind;
use crate::error::Result;
use crate::plan::allocate::Granularity;

use super::super::compress::{Candidate, Inheritance, Stage};
use super::super::options::Scored;
use super::{needs_budget, then_recover, Composition, Method, Settings};

/// The inheritance candidates: `(name, criterion, re-initialise)`.
pub const CANDIDATES: [(&str, &str, bool); 4] = [
    ("l1", "l1", false),
    ("bn-scale", "bn-scale", false),
    ("fpgm", "fpgm", false),
    ("random-init", "l1", true),
];

/// Training steps of each candidate's brief recovery.
pub const STEPS: usize = 200;

/// Training samples held out to score the candidates.
pub const HOLDOUT: usize = 1000;

/// The stages of AdaPruner (module docs); `scored` allocates by blocks.
pub fn compose(scored: &mut Scored, s: &Settings) -> Result<Composition> {
    needs_budget(Method::AdaPruner, scored)?;
    scored.allocate.granularity = Granularity::Block;
    let candidates = CANDIDATES
        .iter()
        .map(|&(name, criterion, reinit)| {
            Ok(Candidate {
                name: name.to_string(),
                criterion: CriterionKind::parse(criterion)?,
                reinit,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let inherit = Stage::Inherit(Inheritance {
        candidates,
        steps: s.inherit_steps.unwrap_or(STEPS),
        holdout: s.holdout.unwrap_or(HOLDOUT),
    });
    Ok(Composition {
        stages: then_recover(vec![inherit], s),
        recovery_epochs: s.epochs,
        recovery_lr: None,
        from_scratch: false,
    })
}
