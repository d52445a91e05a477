//! The drop stage (depth pruning): before the width rounds of a FLOPs or parameters target,
//! whole residual branches go, the weakest first, while what they save stays within `share`
//! of what the target removes; the width rounds then remove the rest.
//!
//! Why: a narrower layer costs its runtime almost the same fixed per-layer time (kernel
//! launches, memory passes, activations) as a wide one, so on models made of many small
//! layers (ResNet-56 at 32×32: about half its batch-1 time on ONNX Runtime) halving the MACs
//! by width alone leaves three quarters of the time. A dropped branch takes its layers' whole
//! time with it.
//!
//! A branch can go when its group ends in linear layers that feed an element-wise merge
//! ([`whole_branch`]); branches are ranked by their strength: what the branch adds to its
//! merge relative to the skip, `RMS(branch) / RMS(skip)`, from one tract run on seeded random
//! inputs (no data needed; the same model gives the same ranking), or where that run fails
//! the filters' norms after the per-channel scales. Each candidate's saving is measured on
//! a trial copy with the cost model. This stage chooses; the remove stage collapses the
//! branches and the verify stage checks them like any removal. A latency target `R` drops
//! branches worth `share · (1 − R)` of the MACs (what a FLOPs target of `R` would drop); its
//! width round then builds its latency model on the model without them, scaled by their
//! measured latency relative to the original. It does not look at accuracy, and does
//! nothing for ratios and thresholds.

use crate::analysis::activation_stats::with_value_outputs;
use crate::analysis::constant_channels::channel_constants;
use crate::analysis::costs;
use crate::error::Error;
use crate::error::Result;
use crate::ir::Model;
use crate::ir::ValueId;
use crate::onnx::SaveOptions;
use crate::oracle::random_inputs;
use crate::passes::collapse_branches::{collapse_branches, whole_branch, Branch};
use crate::plan::allocate::Budget;
use crate::plan::Choice;
use crate::runtime::BackendKind;
use crate::temp_dir::TempDir;

use super::analyse::Analysis;
use super::reporter::Reporter;

/// The stage: the classes of the branches to drop from `model` (the original) for `budget`,
/// taking at most `share` (in `(0, 1]`) of the removal the budget asks for (a latency
/// budget's MACs as if it were a FLOPs budget), and how many branches could go. Empty when
/// no branch can go.
pub fn choose(
    model: &Model,
    analysis: &Analysis,
    share: f64,
    budget: Budget,
    reporter: &mut dyn Reporter,
) -> Result<(Choice, usize)> {
    let (target, by_params) = match budget {
        Budget::Flops(b) | Budget::Latency(b) => (b, false),
        Budget::Params(b) => (b, true),
    };
    reporter.stage("choosing branches to drop");
    let (groups, shapes) = (&analysis.groups, &analysis.shapes);
    // A trial copy's folded constants change its shapes: inferred again (the analysis'
    // shapes where that fails).
    let metric = |m: &Model| -> Result<f64> {
        let own = crate::analysis::infer_shapes(m).ok();
        let c = costs(m, own.as_ref().unwrap_or(shapes))?;
        Ok(if by_params { c.params } else { c.macs } as f64)
    };
    let total = metric(model)?;
    let allowance = share.clamp(0.0, 1.0) * (1.0 - target).max(0.0) * total;
    let constants = channel_constants(model, groups);
    let mut branches: Vec<_> = (0..groups.groups.len())
        .filter_map(|gid| whole_branch(model, groups, shapes, &constants, gid).ok())
        .collect();
    let measured = measure_strengths(model, &mut branches);
    branches.sort_by(|a, b| {
        a.strength
            .total_cmp(&b.strength)
            .then(a.group.cmp(&b.group))
    });
    let candidates = branches.len();
    let (mut saved, mut chosen) = (0.0, Vec::new());
    for b in &branches {
        let mut trial = model.clone();
        if collapse_branches(&mut trial, groups, shapes, &[b.group]).is_err() {
            continue;
        }
        let s = total - metric(&trial)?;
        if s > 0.0 && saved + s <= allowance {
            saved += s;
            chosen.push(b.group);
        }
    }
    let mut classes: Vec<usize> = chosen
        .iter()
        .flat_map(|g| groups.groups[*g].classes.iter().copied())
        .collect();
    classes.sort_unstable();
    let what = if by_params { "parameters" } else { "MACs" };
    let mut choice = Choice::classes(classes);
    choice.notes.push(format!(
        "dropped {} of {candidates} removable branch(es) (groups {chosen:?}), {:.1}% of the {what}",
        chosen.len(),
        100.0 * saved / total.max(1.0)
    ));
    if let Err(why) = measured {
        choice.notes.push(format!(
            "branch strengths from the weights alone (the probe run failed: {why})"
        ));
    }
    Ok((choice, candidates))
}

/// Sets each branch's strength to what it adds to its merge relative to the skip it is added
/// to, `RMS(branch) / RMS(skip)` (the largest over its merges), measured by one tract run of
/// the model on seeded random inputs in [-1, 1) (symbolic dims 1) with the merge inputs as
/// extra outputs. On any failure the weight-only strengths stay and the error is returned.
fn measure_strengths(model: &Model, branches: &mut [Branch]) -> Result<()> {
    if branches.is_empty() {
        return Ok(());
    }
    if let Some(why) = crate::runtime::tract::hazard(model) {
        return Err(Error::Usage(why));
    }
    let values: Vec<ValueId> = branches
        .iter()
        .flat_map(|b| b.merges.iter().flat_map(|(a, s)| [*a, *s]))
        .collect();
    let probed = with_value_outputs(model, &values)?;
    let dir = TempDir::new("branches")?;
    let path = dir.path().join("branches.onnx");
    probed.save(&path, &SaveOptions::default())?;
    let mut session = crate::runtime::load(BackendKind::Tract, &path)?;
    let outs = session.run(&random_inputs(model, 1)?)?;
    let rms = |v: ValueId| -> Result<f64> {
        let name = &model.graph.value(v).name;
        let t = outs
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, t)| t.to_f64_vec())
            .ok_or_else(|| Error::Graph(format!("probe '{name}' missing")))?;
        Ok((t.iter().map(|x| x * x).sum::<f64>() / t.len().max(1) as f64).sqrt())
    };
    let mut strengths = Vec::with_capacity(branches.len());
    for b in branches.iter() {
        let mut s = 0f64;
        for (a, skip) in &b.merges {
            s = s.max(rms(*a)? / rms(*skip)?.max(1e-12));
        }
        strengths.push(s);
    }
    for (b, s) in branches.iter_mut().zip(strengths) {
        b.strength = s;
    }
    Ok(())
}
