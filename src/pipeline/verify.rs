//! The verify stage: the equivalence oracle ([`crate::oracle`]) runs the pruned model and the
//! original with the removed channels masked to what removal computes on random inputs, on
//! every runtime asked for, compares their outputs and the values inside them that
//! [`oracle::probes`] names, and fails the run when they differ by more than the tolerance
//! (naming the first value inside that does).
//! It needs a copy of the model from before the removal ([`snapshot`]). It does not check
//! accuracy (the masked original is itself changed by the removal).

use crate::analysis::channels::ChannelGroups;
use crate::analysis::infer_shapes;
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::oracle::{self, Comparison, Probe};
use crate::plan::PlanFile;

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

/// `model` (as given to the run that made `plan`) with every step of `plan` but the last
/// removed for real, analysed for the last: that model, its groups and the last step's
/// classes (none when the plan has no step). It checks the plan against the model (each
/// step's groups, [`PlanFile::step_classes`]), not the fingerprint.
pub fn before_last_step(
    mut model: Model,
    plan: &PlanFile,
) -> Result<(Model, ChannelGroups, Vec<usize>)> {
    let Some(last) = plan.steps.len().checked_sub(1) else {
        let groups = super::analyse(&mut model)?;
        return Ok((model, groups, Vec::new()));
    };
    for step in 0..last {
        let groups = super::analyse(&mut model)?;
        let shapes = infer_shapes(&model)?;
        let classes = plan.step_classes(step, &groups)?;
        crate::passes::remove_channels(&mut model, &groups, &shapes, &classes)?;
    }
    let groups = super::analyse(&mut model)?;
    let classes = plan.step_classes(last, &groups)?;
    Ok((model, groups, classes))
}

/// The oracle's reference for a model that `plan` pruned from `original` (the file given to
/// `lopper prune`, whose fingerprint the plan must carry): the original with the plan's
/// removed channels silenced, as the run checked it, and the values inside that `pruned`
/// still produces ([`oracle::probes`]). A model trained after pruning does not compute what
/// this reference does.
pub fn plan_reference(
    original: Model,
    plan: &PlanFile,
    pruned: &Model,
) -> Result<(Model, Vec<Probe>)> {
    plan.check_model(&original)?;
    let (model, groups, classes) = before_last_step(original, plan)?;
    let probes = oracle::probes(&model, &groups, &classes, pruned);
    Ok((oracle::masked_original(&model, &groups, &classes)?, probes))
}
