//! EPruner (Lin et al. 2021), as stages:
//!
//! 1. **prune**: affinity propagation over each layer's filters picks exemplar filters, and
//!    so how many stay (data-free, no budget); with `--target` the exemplar scores are
//!    ranked under the budget instead;
//! 2. **recover** (`--recover`, default distillation), the whole epoch budget.

use crate::analysis::importance::CriterionKind;
use crate::error::Result;

use super::super::compress::Stage;
use super::super::options::Scored;
use super::{then_recover, Composition, Settings};

/// The stages of EPruner (module docs); `scored` ranks by exemplars.
pub fn compose(scored: &mut Scored, s: &Settings) -> Result<Composition> {
    scored.criterion = CriterionKind::Epruner;
    Ok(Composition {
        stages: then_recover(vec![Stage::Prune], s),
        recovery_epochs: s.epochs,
        recovery_lr: None,
        from_scratch: false,
    })
}
