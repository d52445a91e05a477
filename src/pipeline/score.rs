//! The score stage: one importance score per channel class of the model as it is this round
//! ([`crate::analysis::importance`]). What to score with is fixed for the run by the
//! selection ([`Scoring`]); selections that do not rank (dead channels, explicit classes, a
//! replayed plan) get no scores. This stage does not choose channels (the selector does) and
//! gathers data only through [`Calibration`].

use crate::analysis::importance::{self, ActivationStats, CriterionKind, Normalize, Reduce};
use crate::analysis::importance::{ScoreCx, Scores};
use crate::error::Result;
use crate::ir::Model;

use super::activations::{self, Calibration};
use super::analyse::Analysis;
use super::options::Selection;
use super::reporter::Reporter;

/// How a run scores channels.
#[derive(Clone, Debug)]
pub enum Scoring {
    /// No scores (the selector does not rank).
    None,
    /// L1 filter norms normalised per group (a uniform ratio).
    L1,
    /// A criterion.
    Criterion {
        /// The criterion.
        kind: CriterionKind,
        /// How member scores combine.
        reduce: Reduce,
        /// Per-group normalisation.
        normalize: Normalize,
        /// Seed of random criteria.
        seed: u64,
    },
}

impl Scoring {
    /// What `selection` scores with.
    pub fn of(selection: &Selection) -> Scoring {
        match selection {
            Selection::Ratio(_) => Scoring::L1,
            Selection::Scored(s) => Scoring::Criterion {
                kind: s.criterion.clone(),
                reduce: s.reduce,
                normalize: s.normalize,
                seed: s.seed,
            },
            _ => Scoring::None,
        }
    }

    /// Whether scoring reads activation statistics.
    pub fn needs_data(&self) -> bool {
        matches!(self, Scoring::Criterion { kind, .. } if kind.needs_data())
    }

    /// Before the first round: errors when the criterion is not available, or when it needs
    /// data and `has_data` is false (the criterion's own error says what it needs).
    pub fn check(&self, model: &Model, analysis: &Analysis, has_data: bool) -> Result<()> {
        let Scoring::Criterion { kind, .. } = self else {
            return Ok(());
        };
        kind.check_available()?;
        if kind.needs_data() && !has_data {
            score_with(self, model, analysis, None, &mut super::Silent)?;
        }
        Ok(())
    }
}

/// The stage: scores of every class of `analysis` (computed on `model`), or `None`. A
/// data-driven criterion first gets activation statistics from `calibration`
/// ([`activations::gather`]).
pub fn score(
    scoring: &Scoring,
    model: &Model,
    analysis: &Analysis,
    calibration: Option<&Calibration>,
    reporter: &mut dyn Reporter,
) -> Result<Option<Scores>> {
    let stats = activations::gather(scoring, calibration, model, &analysis.groups, reporter)?;
    score_with(scoring, model, analysis, stats.as_ref(), reporter)
}

/// Scores with the given activation statistics (`None`: none gathered).
fn score_with(
    scoring: &Scoring,
    model: &Model,
    analysis: &Analysis,
    activations: Option<&ActivationStats>,
    reporter: &mut dyn Reporter,
) -> Result<Option<Scores>> {
    match scoring {
        Scoring::None => Ok(None),
        Scoring::L1 => Ok(Some(Scores {
            values: importance::l1_scores(model, &analysis.groups),
            keep: None,
            notes: Vec::new(),
        })),
        Scoring::Criterion {
            kind,
            reduce,
            normalize,
            seed,
        } => {
            reporter.stage(&format!("scoring ({kind})"));
            let cx = ScoreCx {
                model,
                groups: &analysis.groups,
                shapes: &analysis.shapes,
                reduce: *reduce,
                seed: *seed,
                activations,
            };
            importance::score(kind, &cx, *normalize).map(Some)
        }
    }
}
