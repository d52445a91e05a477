//! The remove stage: deletes the chosen classes' channels from the model
//! ([`crate::passes::remove_channels()`]: slices producers and consumers, compensates
//! constant channels) and measures what is left. It chooses nothing and checks nothing (the
//! verify stage does).

use crate::analysis::{costs, infer_shapes, Costs};
use crate::error::Result;
use crate::ir::Model;
use crate::passes::remove_channels;

use super::analyse::Analysis;
use super::reporter::Reporter;

/// The stage: removes `classes` (of `analysis`, computed on `model`) in place and returns
/// the costs of the smaller model.
pub fn remove(
    model: &mut Model,
    analysis: &Analysis,
    classes: &[usize],
    reporter: &mut dyn Reporter,
) -> Result<Costs> {
    reporter.stage(&format!("removing {} channels", classes.len()));
    remove_channels(model, &analysis.groups, &analysis.shapes, classes)?;
    costs(model, &infer_shapes(model)?)
}
