//! MaskSparsity (Jiang et al. 2023): pruning-aware sparse regularisation, as stages:
//!
//! 1. **sparse**: the mask is the set of channels the run's selection removes at the budget,
//!    chosen on the model before training (default criterion: raw BatchNormalization |γ|
//!    under one global threshold, the paper's γ-threshold mask); L1 goes on those channels'
//!    scales only, constant strength, while every other weight trains freely; 40% of the
//!    epoch budget;
//! 2. **prune**: exactly the masked channels (the mask's plan replayed), whose scales are now
//!    near zero, so pruning is nearly lossless (the stage's accuracy says how nearly);
//! 3. **recover** (`--recover`, default distillation).
//!
//! A network without BatchNormalization (mnist-8) has no scales: there the mask is chosen by
//! raw filter L2 norms and the penalty is group lasso on the masked filters only.
//!
//! It does not drop residual branches: `--drop-blocks` is refused.
//!
//! Strength: the masked scales are meant to reach zero, so the default moves an untouched
//! scale by [`SHIFT`] (more than any trained |γ| of the shipped models) over the stage;
//! `--sparsity-weight` sets λ.

use crate::analysis::importance::{CriterionKind, Normalize};
use crate::error::Result;
use crate::plan::allocate::Scope;

use super::super::compress::Penalty;
use super::super::options::Scored;
use super::{needs_budget, sparse_then_prune, Composition, Method, Settings};

/// Share of the epoch budget spent on masked sparse training.
pub const SPARSE_SHARE: f64 = 0.4;

/// How far the penalty alone moves a masked scale over the sparse stage.
pub const SHIFT: f32 = 2.0;

/// The stages of MaskSparsity (module docs); the mask is `scored`'s choice, by raw |γ|
/// unless the criterion was set to something other than the default L1.
pub fn compose(scored: &mut Scored, s: &Settings) -> Result<Composition> {
    needs_budget(Method::MaskSparsity, scored)?;
    if scored.drop_blocks > 0.0 {
        // The mask would have to fade whole branches and the prune stage drop them with
        // their constant outputs folded into the residual; neither is built.
        return Err(crate::error::Error::Usage(
            "--method masksparsity prunes by width only: drop --drop-blocks (or use \
             --method plain, slimming or adapruner with it)"
                .into(),
        ));
    }
    if scored.criterion == CriterionKind::L1 {
        scored.criterion = if s.batch_norm {
            CriterionKind::BnScale
        } else {
            CriterionKind::L2
        };
        scored.normalize = Normalize::None;
    }
    scored.allocate.scope = Scope::Global;
    sparse_then_prune(s, SPARSE_SHARE, Penalty::Masked, SHIFT, false)
}
