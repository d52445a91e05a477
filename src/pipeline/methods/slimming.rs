//! Network slimming with augmented sparse training and optimised pruning (Guo & Li 2020,
//! after Liu et al. 2017), as stages:
//!
//! 1. **sparse**: L1 on every BatchNormalization scale, its strength growing linearly from 0
//!    (augmented sparsity), 40% of the epoch budget;
//! 2. **prune**: one global threshold on the raw |γ| (no per-layer normalisation) meeting the
//!    budget, with the protect threshold (`--min-keep`, default 10% of every group) so that
//!    no layer disconnects;
//! 3. **recover** (`--recover`, default distillation) on the inherited weights, or with
//!    `--from-scratch` the found architecture re-initialised and trained at the training
//!    rate (the paper's choice).
//!
//! A network without BatchNormalization (mnist-8) has no scales: there the sparse stage is
//! group lasso on the convolution filters and the threshold is on raw filter L2 norms.
//!
//! The paper's λ (1e-4 over 160 epochs) moves an untouched |γ| by about 3 over its run; a
//! run of a few epochs cannot, so the default strength is a shift of [`SHIFT`] over the
//! sparse stage, whatever its length ([`crate::pipeline::compress::Strength::Shift`]); `--sparsity-weight` sets λ.

use crate::analysis::importance::{CriterionKind, Normalize};
use crate::error::Result;
use crate::plan::allocate::Scope;

use super::super::compress::Penalty;
use super::super::options::Scored;
use super::{needs_budget, sparse_then_prune, Composition, Method, Settings};

/// Share of the epoch budget spent on sparse training.
pub const SPARSE_SHARE: f64 = 0.4;

/// How far the penalty alone moves a scale over the sparse stage.
pub const SHIFT: f32 = 0.5;

/// The stages of network slimming (module docs); `scored` becomes a global raw-|γ| threshold.
pub fn compose(scored: &mut Scored, s: &Settings) -> Result<Composition> {
    needs_budget(Method::Slimming, scored)?;
    scored.criterion = if s.batch_norm {
        CriterionKind::BnScale
    } else {
        CriterionKind::L2
    };
    scored.normalize = Normalize::None;
    scored.allocate.scope = Scope::Global;
    let penalty = if s.batch_norm {
        Penalty::All
    } else {
        Penalty::Filters
    };
    sparse_then_prune(s, SPARSE_SHARE, penalty, SHIFT, true)
}
