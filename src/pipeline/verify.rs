//! The verify stage: the equivalence oracle ([`crate::oracle`]) runs the pruned model and the
//! original with the removed channels masked to what removal computes on random inputs, on
//! every runtime asked for, and fails the run when they differ by more than the tolerance.
//! It needs a copy of the model from before the removal ([`snapshot`]). It does not check
//! accuracy (the masked original is itself changed by the removal).

use crate::error::{Error, Result};
use crate::ir::Model;
use crate::oracle::{self, Comparison};

use super::analyse::Analysis;
use super::options::PruneOptions;
use super::reporter::Reporter;

/// The model before removal, when this round will be verified (runtimes given and something
/// to remove).
pub fn snapshot(model: &Model, opts: &PruneOptions, classes: &[usize]) -> Option<Model> {
    (!opts.verify_with.is_empty() && !classes.is_empty()).then(|| model.clone())
}

/// The stage: compares `pruned` with `original` (its [`snapshot`]) masked by `classes` of
/// `analysis` (computed on `original`); `None` when there is no snapshot. Errors when the largest relative error
/// exceeds `opts.tolerance`.
pub fn verify(
    original: Option<Model>,
    analysis: &Analysis,
    classes: &[usize],
    pruned: &mut Model,
    opts: &PruneOptions,
    reporter: &mut dyn Reporter,
) -> Result<Option<Comparison>> {
    let Some(original) = original else {
        return Ok(None);
    };
    reporter.stage("verifying");
    let masked = oracle::masked_original(&original, &analysis.groups, classes)?;
    // The original's mapped pages are not read again here (a pruned weight left unchanged
    // faults its pages back in when read): the runtimes' copies must not add to them.
    original.release_pages();
    drop(original);
    crate::onnx::mapped::trim_heap();
    let cmp = oracle::compare_reduced(masked, pruned, &opts.verify_with, 2, 7)?;
    if cmp.max_rel_error > opts.tolerance {
        return Err(Error::Graph(format!(
            "equivalence check failed: pruned model differs from the masked original by {:.3e} (tolerance {:.0e}); not written",
            cmp.max_rel_error, opts.tolerance
        )));
    }
    Ok(Some(cmp))
}
