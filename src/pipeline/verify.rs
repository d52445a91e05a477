//! The verify stage: the equivalence oracle ([`crate::oracle`]) runs the pruned model and the
//! original with the removed channels masked to what removal computes on random inputs, on
//! every runtime asked for, compares their outputs and the values inside them that
//! [`oracle::probes`] names, and fails the run when they differ by more than the tolerance
//! (naming the first value inside that does).
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
    let probes = oracle::probes(&original, &analysis.groups, classes, pruned);
    // The original's mapped pages are not read again here (a pruned weight left unchanged
    // faults its pages back in when read): the runtimes' copies must not add to them.
    original.release_pages();
    drop(original);
    crate::onnx::mapped::trim_heap();
    let cmp = oracle::compare_reduced(masked, pruned, &probes, &opts.verify_with, 2, 7)?;
    if cmp.max_rel_error > opts.tolerance {
        let first = cmp
            .inside
            .as_ref()
            .and_then(|i| i.first_over(opts.tolerance))
            .map(|(v, e)| format!("; inside, value '{v}' differs first ({e:.3e})"))
            .unwrap_or_default();
        return Err(Error::Graph(format!(
            "equivalence check failed: pruned model differs from the masked original by {:.3e} (tolerance {:.0e}){first}; not written",
            cmp.max_rel_error, opts.tolerance
        )));
    }
    Ok(Some(cmp))
}
