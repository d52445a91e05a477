//! The pruning pipeline's public names, kept at `lopper::prune::…` for existing callers. The
//! pipeline itself, stage by stage, is [`crate::pipeline`].

pub use crate::pipeline::{
    analyse, model_costs, prune, prune_with, Calibration, GroupReport, LatencyEvaluator,
    OpenDataset, PruneOptions, PruneReport, Reporter, Scored, Selection, Silent, StepReport, Tools,
};
