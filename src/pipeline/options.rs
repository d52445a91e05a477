//! What a pruning run is asked to do: [`PruneOptions`] with its [`Selection`], and what each
//! selection implies for the stages (rounds, scoring, the selector, the plan's metadata).
//! Nothing here runs a stage.

use crate::analysis::importance::{CriterionKind, Normalize, Reduce};
use crate::plan::allocate::{AllocateOptions, Amount, Budget, Constraints, Scope};
use crate::plan::{self, PlanFile, PlanMeta, Selector};
use crate::runtime::BackendKind;

use super::latency::LatencySearch;

/// Channels chosen by a criterion under an allocation rule.
#[derive(Clone, Debug)]
pub struct Scored {
    /// The importance criterion.
    pub criterion: CriterionKind,
    /// How a channel's member scores combine.
    pub reduce: Reduce,
    /// Per-group normalisation of scores.
    pub normalize: Normalize,
    /// Seed of random criteria.
    pub seed: u64,
    /// How much to remove and under which constraints.
    pub allocate: AllocateOptions,
    /// Rounds of prune → re-analyse → re-score (≥ 1).
    pub steps: usize,
    /// How a latency target judges candidates (ignored by other amounts).
    pub latency: LatencyOptions,
    /// Share of a target's removal taken by dropping whole residual branches before the
    /// width rounds (`pipeline::drop`); 0: none.
    pub drop_blocks: f64,
    /// For a latency target with `drop_blocks` in (0, 1): also search with branches worth
    /// all of the removal dropped, and keep whichever search keeps more MACs (`lopper
    /// prune`'s default: the share was not given).
    pub drop_search: bool,
}

/// How a latency target judges candidates.
#[derive(Clone, Debug)]
pub struct LatencyOptions {
    /// Predicted from MACs through whole-model timings (the default), by a per-layer latency
    /// table, or measured.
    pub search: LatencySearch,
    /// The latency table's file (timings of either predictor): read when it exists, extended
    /// when the model needs more.
    pub table: Option<std::path::PathBuf>,
    /// Images per timed run: 1 (one request's latency, the default) or a serving batch. Part
    /// of the latency table's runtime key.
    pub batch: usize,
}

impl Default for LatencyOptions {
    fn default() -> Self {
        LatencyOptions {
            search: LatencySearch::default(),
            table: None,
            batch: 1,
        }
    }
}

impl Scored {
    /// `criterion` removing `amount` with `lopper prune`'s defaults: summed member scores,
    /// normalised by each group's largest, seed 0, local scope for a ratio and global
    /// otherwise, every group keeping at least 10% of its channels and at least one, one round.
    pub fn new(criterion: CriterionKind, amount: Amount) -> Scored {
        let scope = match amount {
            Amount::Ratio(_) => Scope::Local,
            _ => Scope::Global,
        };
        Scored {
            criterion,
            reduce: Reduce::Sum,
            normalize: Normalize::Max,
            seed: 0,
            allocate: AllocateOptions {
                scope,
                amount,
                constraints: Constraints {
                    min_keep_fraction: 0.1,
                    ..Default::default()
                },
                ..Default::default()
            },
            steps: 1,
            latency: LatencyOptions::default(),
            drop_blocks: 0.0,
            drop_search: false,
        }
    }
}

/// Which channels to remove.
#[derive(Clone, Debug)]
pub enum Selection {
    /// The lowest-L1 fraction of every prunable group (same as a local `Scored` ratio with L1).
    Ratio(f64),
    /// Channels that contribute nothing or a constant (compensated exactly).
    Dead,
    /// Like `Dead` after setting every BatchNormalization gamma with |gamma| below this to
    /// zero (what sparse training leaves near zero): those channels then output the constant
    /// activation of their beta, which is folded into the consumers. The model changes by at
    /// most the dropped gammas' contribution; the oracle checks the rest.
    DeadBelow(f64),
    /// Exactly these classes (indices of the analysis' classes).
    Classes(Vec<usize>),
    /// Ranked by a criterion, allocated under a rule or budget.
    Scored(Scored),
    /// Replay a recorded plan.
    Plan(PlanFile),
}

/// Options of [`prune`](super::prune).
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// What to remove.
    pub selection: Selection,
    /// Runtimes for the equivalence oracle (empty: do not verify).
    pub verify_with: Vec<BackendKind>,
    /// Largest relative output error the oracle accepts.
    pub tolerance: f64,
}

impl Selection {
    /// Rounds of the run: `steps` of a scored selection, the recorded steps of a plan, else 1.
    pub fn steps(&self) -> usize {
        match self {
            Selection::Scored(s) => s.steps.max(1),
            Selection::Plan(p) => p.steps.len(),
            _ => 1,
        }
    }

    /// The selector that chooses each round's classes (see [`crate::plan::select`]).
    pub fn selector(&self) -> Box<dyn Selector + '_> {
        match self {
            Selection::Ratio(r) => Box::new(plan::UniformRatio(*r)),
            Selection::Dead | Selection::DeadBelow(_) => Box::new(plan::Dead),
            Selection::Classes(c) => Box::new(plan::Explicit(c.clone())),
            Selection::Scored(s) => Box::new(plan::Budgeted(s.allocate.clone())),
            Selection::Plan(p) => Box::new(plan::Replay(p)),
        }
    }

    /// The threshold below which channel scales are snapped to zero before each round's
    /// selection ([`Selection::DeadBelow`]).
    pub fn snap_below(&self) -> Option<f64> {
        match self {
            Selection::DeadBelow(t) => Some(*t),
            _ => None,
        }
    }

    /// The drop shares a latency target's searches try, when there are several
    /// ([`Scored::drop_search`]): its share, then all of the removal.
    pub fn drop_shares(&self) -> Option<[f64; 2]> {
        match self {
            Selection::Scored(s)
                if s.drop_search
                    && s.drop_blocks > 0.0
                    && s.drop_blocks < 1.0
                    && self.is_latency_target() =>
            {
                Some([s.drop_blocks, 1.0])
            }
            _ => None,
        }
    }

    /// The share of the removal taken by whole branches and the budget it applies to, when
    /// the selection drops branches (a scored target with `drop_blocks` above 0).
    pub fn drop_blocks(&self) -> Option<(f64, Budget)> {
        match self {
            Selection::Scored(s) if s.drop_blocks > 0.0 => match s.allocate.amount {
                Amount::Target(b) => Some((s.drop_blocks, b)),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the amount is a latency target (the run needs a latency evaluator).
    pub fn is_latency_target(&self) -> bool {
        self.latency_target().is_some()
    }

    /// The latency target's ratio, when the amount is one.
    pub fn latency_target(&self) -> Option<f64> {
        match self {
            Selection::Scored(s) => match s.allocate.amount {
                Amount::Target(Budget::Latency(t)) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    /// How the allocation rounds kept widths (`round_to`, `round_from`), for the latency
    /// table's samples and calibration copies; exact widths for selections that do not
    /// allocate.
    pub fn rounding(&self) -> super::latency_table::Rounding {
        match self {
            Selection::Scored(s) => super::latency_table::Rounding {
                multiple: s.allocate.constraints.round_to.max(1),
                from: s.allocate.constraints.round_from,
            },
            _ => super::latency_table::Rounding {
                multiple: 1,
                from: 0,
            },
        }
    }

    /// How a latency target judges candidates (the defaults for other selections).
    pub fn latency(&self) -> LatencyOptions {
        match self {
            Selection::Scored(s) => s.latency.clone(),
            _ => LatencyOptions::default(),
        }
    }

    /// Whether the criterion reads activation statistics (the run needs calibration data).
    pub fn needs_data(&self) -> bool {
        matches!(self, Selection::Scored(s) if s.criterion.needs_data())
    }

    /// The plan file's metadata: the criterion's name (`dead`, `classes`, a plan's own) and
    /// the options that shaped the choice.
    pub fn meta(&self) -> PlanMeta {
        let mut meta = PlanMeta::default();
        let mut opt = |k: &str, v: serde_json::Value| {
            meta.options.insert(k.to_string(), v);
        };
        let criterion = match self {
            Selection::Ratio(r) => {
                opt("ratio", (*r).into());
                opt("scope", "local".into());
                "l1".to_string()
            }
            Selection::Dead => "dead".into(),
            Selection::DeadBelow(t) => {
                opt("gamma_below", (*t).into());
                "dead".into()
            }
            Selection::Classes(_) => "classes".into(),
            Selection::Plan(p) => p.meta.criterion.clone(),
            Selection::Scored(s) => {
                let a = &s.allocate;
                match &a.amount {
                    Amount::Ratio(r) => opt("ratio", (*r).into()),
                    Amount::Threshold(t) => opt("threshold", (*t).into()),
                    Amount::Own => opt("amount", "own".into()),
                    Amount::Target(b) => {
                        let (k, v) = match b {
                            Budget::Flops(v) => ("flops", v),
                            Budget::Params(v) => ("params", v),
                            Budget::Latency(v) => ("latency", v),
                        };
                        opt("target", format!("{k}={v}").into());
                    }
                }
                opt("scope", format!("{:?}", a.scope).to_lowercase().into());
                opt(
                    "allocation",
                    format!("{:?}", a.granularity).to_lowercase().into(),
                );
                opt("reduce", format!("{:?}", s.reduce).to_lowercase().into());
                opt(
                    "normalize",
                    format!("{:?}", s.normalize).to_lowercase().into(),
                );
                opt("steps", s.steps.into());
                opt("seed", s.seed.into());
                let c = &a.constraints;
                opt("min_keep_fraction", c.min_keep_fraction.into());
                opt("min_keep_count", c.min_keep_count.into());
                opt("max_ratio", c.max_ratio.into());
                opt("round_to", c.round_to.into());
                if c.round_from > 0 {
                    opt("round_from", c.round_from.into());
                }
                opt("ignore", c.ignore.clone().into());
                if let Some((share, _)) = self.drop_blocks() {
                    opt("drop_blocks", share.into());
                }
                s.criterion.to_string()
            }
        };
        meta.criterion = criterion;
        meta
    }
}
