//! The pruning pipeline: a run is a list of named stages over one model, one file each, each
//! taking and returning explicit values. [`prune_with`] is that list:
//!
//! 1. **analyse** ([`analyse`](mod@analyse)): simplify (BatchNormalization kept), shapes,
//!    channel groups.
//! 2. **snap** (only `--gamma-below`): small BatchNormalization gammas set to zero
//!    ([`crate::passes::snap_small_gammas`]).
//! 3. **activations** ([`activations`], data-driven criteria only): calibration data run
//!    through the model.
//! 4. **score** ([`score`](mod@score)): one score per channel class, by the criterion.
//! 5. **allocate** ([`allocate`](mod@allocate)): the selection's [`Selector`] (in
//!    [`crate::plan`]) picks the classes to remove, under a rule or budget; latency targets
//!    time candidates with the [`LatencyEvaluator`].
//! 6. **remove** ([`remove`](mod@remove)): the channels leave the model.
//! 7. **verify** ([`verify`](mod@verify)): the equivalence oracle against the masked
//!    original.
//!
//! Stages 1–7 repeat for `--steps` rounds (each re-analyses and re-scores the pruned model);
//! the first analysis happens once before the rounds. Every round is recorded in a
//! [`PlanFile`](crate::plan::PlanFile) inside the [`PruneReport`], which
//! [`Selection::Plan`] replays exactly. Stages tell one [`Reporter`] what they do.
//!
//! **write** is the caller's: the library returns the pruned model and the report (with the
//! plan, and the model before removal for [`crate::report::layer_report`]); the CLI saves
//! them. The pipeline does not fine-tune and opens no files except through [`Calibration`]
//! and the [`LatencyEvaluator`]'s scratch folder.

pub mod activations;
pub mod allocate;
pub mod analyse;
pub mod latency;
pub mod options;
pub mod remove;
pub mod report;
pub mod reporter;
pub mod score;
pub mod verify;

pub use activations::{Calibration, OpenDataset};
pub use analyse::{analyse, Analysis};
pub use latency::LatencyEvaluator;
pub use options::{PruneOptions, Scored, Selection};
pub use report::{GroupReport, PruneReport, StepReport};
pub use reporter::{Reporter, Silent};

use crate::analysis::{costs, infer_shapes, Costs};
use crate::error::Result;
use crate::ir::Model;
use crate::passes::snap_small_gammas::snap_small_gammas;
use crate::plan::{self, Selector};
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
    let Tools {
        calibration,
        latency,
        reporter,
    } = tools;
    let reporter: &mut dyn Reporter = &mut **reporter;
    let selection = &opts.selection;
    let fingerprint = plan::fingerprint(model);
    if let Selection::Plan(p) = selection {
        p.check_model(model)?;
    }
    let mut analysis = analyse::stage(model, reporter, "")?;
    let mut tally = Tally::new(fingerprint, selection, model.clone(), model_costs(model)?);
    let scoring = Scoring::of(selection);
    scoring.check(model, &analysis, calibration.is_some())?;
    latency::time_original(selection.is_latency_target(), latency.as_mut(), model)?;
    let mut selector: Box<dyn Selector> = selection.selector();
    let steps = selection.steps();
    for step in 0..steps {
        let at = Progress {
            step,
            steps,
            kept: tally.kept(),
        };
        let tag = at.tag();
        if step > 0 {
            analysis = analyse::stage(model, reporter, &tag)?;
        }
        if let Some(t) = selection.snap_below() {
            snap(model, t, &mut tally);
        }
        let stats = activations::gather(
            &scoring,
            calibration.as_ref(),
            model,
            &analysis.groups,
            reporter,
            &tag,
        )?;
        let scores = score::score(&scoring, model, &analysis, stats.as_ref(), reporter, &tag)?;
        let choice = allocate::allocate(
            selector.as_mut(),
            model,
            &analysis,
            scores.as_ref(),
            at,
            latency.as_mut(),
            reporter,
        )?;
        tally.choose(step, &analysis.groups, scores.as_ref(), &choice, &tag)?;
        let original = verify::snapshot(model, opts, &choice.classes);
        let now = remove::remove(model, &analysis, &choice.classes, reporter, &tag)?;
        let oracle = verify::verify(
            original,
            &analysis.groups,
            &choice.classes,
            model,
            opts,
            reporter,
            &tag,
        )?;
        tally.removed(&choice, now, oracle);
    }
    Ok(tally.finish())
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
