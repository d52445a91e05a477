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
/// round. On a model whose groups are all blocked nothing changes (the report says so).
/// Errors when the oracle finds a round not equivalent to the masked model.
pub fn prune_with(
    model: &mut Model,
    opts: &PruneOptions,
    tools: &mut Tools,
) -> Result<PruneReport> {
    if let Some(shares) = opts.selection.drop_shares() {
        return prune_best_share(model, opts, tools, shares);
    }
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
    if let Some((share, budget)) = selection.drop_blocks() {
        let at = tally.progress(0, steps);
        let say = &mut Tagged::new(&mut *tools.reporter, "branches: ".into());
        let choice = drop::choose(model, &analysis, share, budget, say)?;
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
        let choice =
            allocate::allocate(&mut *selector, model, &analysis, scores, at, latency, say)?;
        tally.choose(&at, &analysis.groups, scores, &choice)?;
        let original = verify::snapshot(model, opts, &choice.classes);
        let now = remove::remove(model, &analysis, &choice.classes, say)?;
        let oracle = verify::verify(original, &analysis, &choice.classes, model, opts, say)?;
        tally.removed(&choice, now, oracle);
    }
    Ok(tally.finish())
}

/// A latency target searched once per drop share ([`Selection::drop_shares`]), each run on a
/// copy with the same tools (the latency table grows with each); the result keeping more
/// MACs is kept, with a note giving both. The choice depends only on the searches' results,
/// so a pinned latency table gives the same bytes. Any search's error is returned.
fn prune_best_share(
    model: &mut Model,
    opts: &PruneOptions,
    tools: &mut Tools,
    shares: [f64; 2],
) -> Result<PruneReport> {
    let mut best: Option<(Model, PruneReport, f64, f64)> = None;
    let mut kept = Vec::new();
    for share in shares {
        let mut o = opts.clone();
        if let Selection::Scored(s) = &mut o.selection {
            s.drop_blocks = share;
            s.drop_search = false;
        }
        let mut m = model.clone();
        tools.reporter.stage(&format!(
            "latency target: searching with branches worth {share} of the removal"
        ));
        let r = prune_with(&mut m, &o, tools)?;
        let macs = r.macs.1 as f64 / r.macs.0.max(1) as f64;
        kept.push(format!("{share}: MACs x{macs:.3}"));
        if best.as_ref().is_none_or(|b| macs > b.3) {
            best = Some((m, r, share, macs));
        }
    }
    let Some((m, mut r, share, _)) = best else {
        return Err(crate::error::Error::Usage("no drop share to search".into()));
    };
    *model = m;
    r.notes.push(format!(
        "latency target searched with branches worth each share of the removal ({}): kept {share}",
        kept.join(", ")
    ));
    Ok(r)
}

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
