//! Selectors: one per way of choosing channels (a uniform ratio, dead channels, explicit
//! classes, a replayed plan, a budget allocation). Each returns the classes to remove in one
//! round from an explicit [`Round`]: the model as it is, its groups and shapes, and the scores
//! the pipeline's score stage computed (if the selector ranks). A selector does not score,
//! gather data, time models or change the model; the pipeline
//! ([`crate::pipeline`]) does those around it.

use crate::analysis::channels::ChannelGroups;
use crate::analysis::importance::Scores;
use crate::analysis::Shapes;
use crate::error::{Error, Result};
use crate::ir::Model;

use super::allocate::{Measure, Predict};

/// What a selector sees in one round of a pruning run.
pub struct Round<'a> {
    /// The model as it is before this round's removal.
    pub model: &'a Model,
    /// Its channel groups.
    pub groups: &'a ChannelGroups,
    /// Its shapes.
    pub shapes: &'a Shapes,
    /// Per-class scores of this round, when the selection ranks channels.
    pub scores: Option<&'a Scores>,
    /// This round (0-based) and how many there are.
    pub step: usize,
    /// Rounds in the run (≥ 1).
    pub steps: usize,
    /// MACs and parameters of the model now, as fractions of the original's.
    pub kept: (f64, f64),
    /// Measures a candidate removal (latency targets); `None` otherwise.
    pub measure: Option<Measure<'a>>,
    /// Predicts a candidate removal's latency ratio (latency targets with a latency table);
    /// `None` otherwise.
    pub predict: Option<Predict<'a>>,
}

impl<'a> Round<'a> {
    /// The scores, or an error naming `who` when the score stage gave none.
    pub fn scores(&self, who: &str) -> Result<&'a Scores> {
        self.scores
            .ok_or_else(|| Error::Usage(format!("{who} needs channel scores")))
    }
}

/// What a selector chose in one round.
#[derive(Clone, Debug, Default)]
pub struct Choice {
    /// Classes to remove, sorted.
    pub classes: Vec<usize>,
    /// The global score threshold used, when there was one.
    pub threshold: Option<f64>,
    /// Cost-model evaluations or measurements made.
    pub evaluations: usize,
    /// What the user should know about this choice, one line each.
    pub notes: Vec<String>,
}

impl Choice {
    /// Just these classes.
    pub fn classes(classes: Vec<usize>) -> Choice {
        Choice {
            classes,
            ..Default::default()
        }
    }
}

/// Chooses the classes to remove in one round.
pub trait Selector {
    /// The classes to remove from `round.model` (indices of `round.groups`' classes).
    fn select(&mut self, round: Round) -> Result<Choice>;
}

/// Exactly these classes, every round.
#[derive(Clone, Debug)]
pub struct Explicit(pub Vec<usize>);

impl Selector for Explicit {
    fn select(&mut self, _: Round) -> Result<Choice> {
        Ok(Choice::classes(self.0.clone()))
    }
}
