//! The pruning pipeline: a run is a list of named stages over one model, one file each, each
//! taking and returning explicit values. [`prune_with`] is that list; per round:
//!
//! 1. **analyse** ([`mod@analyse`]): simplify (BatchNormalization kept), shapes, channel
//!    groups. Before the first round it runs once, followed by the run's checks (the
//!    criterion is available, a latency target's original is timed).
//!    With `drop_blocks`, a **drop** stage ([`mod@drop`]) first removes whole residual
//!    branches (remove and verify as below, recorded as a round of the plan).
//! 2. **snap** (only [`Selection::DeadBelow`]): small BatchNormalization gammas set to zero
//!    ([`crate::passes::snap_small_gammas`]).
//! 3. **score** ([`mod@score`]): one score per channel class, by the criterion; data-driven
//!    criteria first gather activation statistics ([`activations`], [`Calibration`]).
//! 4. **allocate** ([`mod@allocate`]): the selection's [`Selector`](crate::plan::Selector)
//!    (in [`crate::plan`]) picks the classes to remove, under a rule or budget; latency
//!    targets time candidates with the [`LatencyEvaluator`].
//! 5. **remove** ([`mod@remove`]): the channels leave the model.
//! 6. **verify** ([`mod@verify`]): the equivalence oracle against the masked original.
//!
//! Rounds repeat for `steps` (each re-analyses and re-scores the pruned model). Every round
//! is recorded ([`report::Tally`]) in a [`PlanFile`](crate::plan::PlanFile) inside the
//! [`PruneReport`], which [`Selection::Plan`] replays exactly. Stages tell one [`Reporter`]
//! what they do.
//!
//! **write** is the caller's: the library returns the pruned model and the report (with the
//! plan, and the model before removal for [`crate::report::layer_report`]); the CLI lowers
//! the model for the runtimes ([`mod@lower`]) and saves them. The pipeline does not fine-tune, and touches no files except through [`Calibration`]
//! and the [`LatencyEvaluator`]'s scratch folder.

pub mod activations;
pub mod allocate;
pub mod analyse;
pub mod compensate;
pub mod compress;
pub mod drop;
pub mod kept;
pub mod latency;
pub mod latency_table;
pub mod lower;
pub mod mend;
pub mod methods;
pub mod options;
pub mod pan;
pub mod recalibrate;
pub mod remove;
pub mod report;
pub mod reporter;
pub mod score;
pub mod verify;
pub mod width_steps;

pub use activations::{Calibration, OpenDataset};
pub use analyse::{analyse, Analysis};
pub use latency::{LatencyEvaluator, LatencySearch};
pub use options::{LatencyOptions, PruneOptions, Scored, Selection};
pub use report::{GroupReport, PruneReport, StepReport};
pub use reporter::{Reporter, Silent, Tagged};

use crate::analysis::{costs, infer_shapes, Costs};
use crate::error::Result;
use crate::ir::Model;
use crate::passes::snap_small_gammas::snap_small_gammas;
use crate::plan;
use report::Tally;
use score::Scoring;

/// What the pipeline may use besides the model: calibration data (data-driven criteria), a
/// latency evaluator (latency targets) and a reporter. The default has none of the first two
/// and reports nothing.
pub struct Tools<'a> {
    /// Calibration data and its runtime.
    pub calibration: Option<Calibration<'a>>,
    /// Times models for latency targets.
    pub latency: Option<LatencyEvaluator>,
    /// Told what the stages do.
    pub reporter: Box<dyn Reporter + 'a>,
}

impl Default for Tools<'_> {
    fn default() -> Self {
        Tools {
            calibration: None,
            latency: None,
            reporter: Box::new(Silent),
        }
    }
}

/// Where a round stands: which round of how many, and the model's MACs and parameters as
/// fractions of the original's.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// This round, 0-based.
    pub step: usize,
    /// Rounds in the run.
    pub steps: usize,
    /// MACs and parameters kept so far.
    pub kept: (f64, f64),
}

impl Progress {
    /// The prefix of the round's progress lines: `round i/n: ` when there are several rounds.
    pub fn tag(&self) -> String {
        if self.steps > 1 {
            format!("round {}/{}: ", self.step + 1, self.steps)
        } else {
            String::new()
        }
    }
}

/// Prunes `model` in place with no tools (data-driven criteria and latency targets error).
pub fn prune(model: &mut Model, opts: &PruneOptions) -> Result<PruneReport> {
    prune_with(model, opts, &mut Tools::default())
}

/// Prunes `model` in place: the stages of the [module documentation](self), round after
/// round (a latency target without `--drop-blocks`: once per drop share, the best kept). On a
/// model whose groups are all blocked nothing changes (the report says so). Errors when the
/// oracle finds a round not equivalent to the masked original.
pub fn prune_with(
    model: &mut Model,
    opts: &PruneOptions,
    tools: &mut Tools,
) -> Result<PruneReport> {
    let mut report = match opts.selection.drop_shares() {
        Some(shares) => prune_best_share(model, opts, tools, shares)?,
        None => prune_once(model, opts, tools)?,
    };
    time_pinned_choice(model, opts, tools, &mut report)?;
    Ok(report)
}

/// A latency target chosen on a pinned table's prediction ([`PruneReport::pinned_latency`]:
/// the search timed no candidate) is timed once here, the model as it will be written against
/// the original, and the measurement reported beside the prediction, with a warning when it
/// misses the target by more than the timing noise. The model is not changed: the same table
/// gives the same bytes whatever the timing says.
fn time_pinned_choice(
    model: &Model,
    opts: &PruneOptions,
    tools: &mut Tools,
    report: &mut PruneReport,
) -> Result<()> {
    let (Some(target), Some(predicted), true, Some(ev)) = (
        opts.selection.latency_target(),
        report.predicted_latency,
        report.pinned_latency,
        tools.latency.as_mut(),
    ) else {
        return Ok(());
    };
    tools
        .reporter
        .stage("latency target: timing the pruned model (the pinned table chose it)");
    let measured = ev.ratio_expecting(model, Some(predicted))?;
    report.notes.push(format!(
        "latency target {target}: {predicted:.4} predicted by the pinned latency table, {measured:.4} measured (the table is not changed)"
    ));
    if (measured - target).abs() > plan::MEASURED_TOLERANCE {
        report.notes.push(format!(
            "latency target {target} missed by the measurement ({measured:.4}): the machine times differently from when the table was built; a new --latency-table file re-times it"
        ));
    }
    if let Some(note) = latency::repeats_note(Some(ev)) {
        report.notes.push(note);
    }
    Ok(())
}

/// One search of [`prune_with`] (one drop share).
fn prune_once(model: &mut Model, opts: &PruneOptions, tools: &mut Tools) -> Result<PruneReport> {
    let selection = &opts.selection;
    let fingerprint = plan::fingerprint(model);
    if let Selection::Plan(p) = selection {
        p.check_model(model)?;
    }
    let mut analysis = analyse::stage(model, &mut *tools.reporter)?;
    let mut tally = Tally::new(fingerprint, selection, model.clone(), model_costs(model)?);
    let scoring = Scoring::of(selection);
    scoring.check(model, &analysis, tools.calibration.is_some())?;
    latency::time_original(selection.is_latency_target(), tools.latency.as_mut(), model)?;
    let mut selector = selection.selector();
    let steps = selection.steps();
    let mut removable_branches = None;
    if let Some((share, budget)) = selection.drop_blocks() {
        let at = tally.progress(0, steps);
        let say = &mut Tagged::new(&mut *tools.reporter, "branches: ".into());
        let (choice, removable) = drop::choose(model, &analysis, share, budget, say)?;
        removable_branches = Some(removable);
        if !choice.classes.is_empty() {
            tally.choose(&at, &analysis.groups, None, &choice)?;
            let original = verify::snapshot(model, opts, &choice.classes);
            let now = remove::remove(model, &analysis, &choice.classes, say)?;
            let oracle = verify::verify(original, &analysis, &choice.classes, model, opts, say)?;
            tally.removed(&choice, now, oracle);
            analysis = analyse::stage(model, say)?;
        } else {
            choice.notes.into_iter().for_each(|n| tally.note(n));
        }
    }
    let (mut predicted, mut pinned) = (None, false);
    for step in 0..steps {
        let at = tally.progress(step, steps);
        let say = &mut Tagged::new(&mut *tools.reporter, at.tag());
        if step > 0 {
            analysis = analyse::stage(model, say)?;
        }
        if let Some(t) = selection.snap_below() {
            snap(model, t, &mut tally);
        }
        let calibration = tools.calibration.as_ref();
        let scores = score::score(&scoring, model, &analysis, calibration, say)?;
        let (scores, latency) = (scores.as_ref(), tools.latency.as_mut());
        let choice;
        (choice, predicted, pinned) =
            allocate::allocate(&mut *selector, model, &analysis, scores, at, latency, say)?;
        tally.choose(&at, &analysis.groups, scores, &choice)?;
        let original = verify::snapshot(model, opts, &choice.classes);
        let now = remove::remove(model, &analysis, &choice.classes, say)?;
        let oracle = verify::verify(original, &analysis, &choice.classes, model, opts, say)?;
        tally.removed(&choice, now, oracle);
    }
    if let Some(note) = latency::repeats_note(tools.latency.as_mut()) {
        tally.note(note);
    }
    Ok(PruneReport {
        predicted_latency: predicted,
        pinned_latency: pinned,
        removable_branches,
        ..tally.finish()
    })
}

/// A latency target searched once per drop share ([`Selection::drop_shares`]), each run on a
/// copy with the same tools (the latency table grows with each). When dropping branches worth
/// all of the removal is predicted already under the target's band (the widths cannot put time
/// back: a search of fewer MACs than it needs), shares between the two are searched too, up to
/// [`MIDDLE_SHARES`] by bisection. The result keeping most MACs among those predicted inside or
/// above the band is kept (all of them when none is), with a note giving every share. The
/// choice depends only on the searches' predictions, so a pinned latency table gives the same
/// bytes. A model with no removable branch is searched once. Any search's error is returned.
fn prune_best_share(
    model: &mut Model,
    opts: &PruneOptions,
    tools: &mut Tools,
    shares: [f64; 2],
) -> Result<PruneReport> {
    let target = opts.selection.latency_target().unwrap_or(1.0);
    let under = |r: &PruneReport| {
        r.predicted_latency
            .is_some_and(|p| p < target - plan::MEASURED_TOLERANCE)
    };
    let mut tried: Vec<(f64, Model, PruneReport, f64)> = Vec::new();
    let mut search = |share: f64, tried: &mut Vec<(f64, Model, PruneReport, f64)>| {
        let mut o = opts.clone();
        if let Selection::Scored(s) = &mut o.selection {
            s.drop_blocks = share;
            s.drop_search = false;
        }
        let mut m = model.clone();
        tools.reporter.stage(&format!(
            "latency target: searching with branches worth {share} of the removal"
        ));
        let r = prune_once(&mut m, &o, tools)?;
        let macs = r.macs.1 as f64 / r.macs.0.max(1) as f64;
        tried.push((share, m, r, macs));
        Ok::<bool, crate::error::Error>(under(&tried[tried.len() - 1].2))
    };
    for share in shares {
        search(share, &mut tried)?;
        // No branch can go (efficientnet_b0: its branches end in SE gates): every share is
        // the same search, and running it again only spends whole-model timings.
        if tried[0].2.removable_branches == Some(0) {
            break;
        }
    }
    let (mut lo, mut hi) = (shares[0], shares[1]);
    if tried.last().is_some_and(|t| under(&t.2)) && !tried.first().is_some_and(|t| under(&t.2)) {
        for _ in 0..MIDDLE_SHARES {
            let mid = (lo + hi) / 2.0;
            if search(mid, &mut tried)? {
                hi = mid;
            } else {
                lo = mid;
            }
        }
    }
    let kept: Vec<String> = tried
        .iter()
        .map(|(share, _, r, macs)| match r.predicted_latency {
            Some(p) => format!("{share}: MACs x{macs:.3}, predicted x{p:.3}"),
            None => format!("{share}: MACs x{macs:.3}"),
        })
        .collect();
    let outcomes: Vec<(f64, bool)> = tried.iter().map(|t| (t.3, under(&t.2))).collect();
    let Some((share, m, mut r, _)) = best_share(&outcomes).map(|i| tried.swap_remove(i)) else {
        return Err(crate::error::Error::Usage("no drop share to search".into()));
    };
    *model = m;
    r.notes.push(format!(
        "latency target searched with branches worth each share of the removal ({}): kept {share}",
        kept.join(", ")
    ));
    Ok(r)
}

/// Which search [`prune_best_share`] keeps, given each one's `(MACs kept, predicted under
/// the band)`: the most MACs among those not under the band (all of them when every one is),
/// the first on ties.
fn best_share(outcomes: &[(f64, bool)]) -> Option<usize> {
    let any_inside = outcomes.iter().any(|o| !o.1);
    let mut best: Option<usize> = None;
    for (i, &(macs, under)) in outcomes.iter().enumerate() {
        if (!any_inside || !under) && best.is_none_or(|b| macs > outcomes[b].0) {
            best = Some(i);
        }
    }
    best
}

/// The most drop shares [`prune_best_share`] searches between its two when the larger one
/// is predicted under the target's band.
const MIDDLE_SHARES: usize = 2;

/// The snap stage of [`Selection::DeadBelow`]: small gammas to zero, with a note saying how
/// many.
fn snap(model: &mut Model, t: f64, tally: &mut Tally) {
    let snapped = snap_small_gammas(model, t);
    if snapped > 0 {
        tally.note(format!(
            "{snapped} BatchNormalization gamma(s) with |gamma| < {t:e} set to 0 before removing dead channels"
        ));
    }
}

/// Costs of a model as it is (shapes inferred).
pub fn model_costs(model: &Model) -> Result<Costs> {
    costs(model, &infer_shapes(model)?)
}

#[cfg(test)]
mod tests {
    use super::best_share;

    #[test]
    fn the_share_kept_has_most_macs_inside_the_band() {
        // Share 1 keeps more MACs but is predicted under the band: the middle share wins.
        assert_eq!(
            best_share(&[(0.42, false), (0.51, true), (0.47, false)]),
            Some(2)
        );
        // All inside: most MACs, the first on ties.
        assert_eq!(best_share(&[(0.49, false), (0.47, false)]), Some(0));
        assert_eq!(best_share(&[(0.48, false), (0.48, false)]), Some(0));
        // None inside: most MACs of all.
        assert_eq!(best_share(&[(0.40, true), (0.51, true)]), Some(1));
        assert_eq!(best_share(&[]), None);
    }
}
