//! The analyse stage: simplifies the model (BatchNormalization kept, so criteria and
//! dead-channel detection can read its gammas), infers shapes and finds the channel groups
//! ([`crate::analysis::channels`]). It runs before every round, on the model as the previous
//! round left it. It removes nothing and scores nothing.

use crate::analysis::channels::ChannelGroups;
use crate::analysis::{channel_groups, infer_shapes, Shapes};
use crate::error::Result;
use crate::ir::Model;
use crate::passes::{simplify, SimplifyOptions};

use super::reporter::Reporter;

/// Simplifies `model` (keeping BatchNormalization) and returns its channel groups.
pub fn analyse(model: &mut Model) -> Result<ChannelGroups> {
    simplify(
        model,
        &SimplifyOptions {
            keep_batch_norm: true,
            ..Default::default()
        },
    )?;
    let shapes = infer_shapes(model)?;
    channel_groups(model, &shapes)
}

/// A model's channel groups and shapes, as one round's stages read them.
pub struct Analysis {
    /// The channel groups.
    pub groups: ChannelGroups,
    /// The shapes.
    pub shapes: Shapes,
}

/// The stage: [`analyse`] `model` in place, then its shapes.
pub fn stage(model: &mut Model, reporter: &mut dyn Reporter) -> Result<Analysis> {
    reporter.stage("analysing");
    let groups = analyse(model)?;
    let shapes = infer_shapes(model)?;
    Ok(Analysis { groups, shapes })
}
