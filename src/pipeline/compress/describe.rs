//! What `--dry-run` prints: each stage of a run in one line with its settings. Runs
//! nothing.

use super::{CompressOptions, Granularity, Penalty, Recovery, Stage, Strength};

/// One line saying what stage `s` of a run with `opts` will do, with its settings (what
/// `--dry-run` prints).
pub fn describe_stage(s: &Stage, opts: &CompressOptions) -> String {
    let t = &opts.train;
    match s {
        Stage::Sparse(sp) => format!(
            "sparse: {} epoch(s) of cross-entropy plus L1 on {}, {}{}, lr {}",
            sp.epochs,
            match sp.penalty {
                Penalty::All => "every BatchNormalization scale",
                Penalty::Filters => "every convolution filter's norm (group lasso)",
                Penalty::Masked =>
                    "the scales (without BatchNormalization: the filters) of the channels the \
                     prune stage removes (chosen now, by the selection below)",
            },
            match sp.strength {
                Strength::Weight(w) => format!("weight {w:e}"),
                Strength::Shift(x) =>
                    format!("weight sized to move an untouched |gamma| by {x} over the stage"),
            },
            if sp.augmented { ", growing from 0" } else { "" },
            sp.lr
        ),
        Stage::Prune => format!("prune: {}", describe_selection(&opts.prune.selection)),
        Stage::Inherit(inh) => format!(
            "inherit: {}; one sub-network per candidate ({}), each BN-recalibrated and trained \
             {} steps, scored on {} held-out training samples; the best is kept",
            describe_selection(&opts.prune.selection),
            inh.candidates
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            inh.steps,
            inh.holdout
        ),
        Stage::Mend(md) => format!(
            "mend: pre-prune by {}; then {} candidates in all ({} per round) of channels moved \
             between groups with MACs within ±{} of the target, each BN-recalibrated and \
             trained {} steps (one thread each, in parallel), scored on {} held-out training \
             samples; the best is kept",
            describe_selection(&opts.prune.selection),
            md.search.evaluations,
            md.search.proposals,
            md.search.window,
            md.steps,
            md.holdout
        ),
        Stage::Pan(pan) => format!(
            "pan: re-initialise, then mask {} by saliency at initialisation; {}; each pull \
             trains {} steps with the masks enforced and is scored on {} held-out training \
             samples; gradient indices over {} batch(es)",
            match pan.granularity {
                Granularity::Weight { density } => format!(
                    "single weights, keeping {:.2}% of the filter-bank weights (global)",
                    density * 100.0
                ),
                Granularity::Channel => format!(
                    "whole channels ({})",
                    describe_selection(&opts.prune.selection)
                ),
            },
            if pan.arms.len() == 1 {
                format!("arm {} (no search)", pan.arms[0].name())
            } else {
                format!(
                    "a UCB1 agent pulls {} times among {} arms ({})",
                    pan.evaluations,
                    pan.arms.len(),
                    pan.arms
                        .iter()
                        .map(|a| a.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            pan.steps,
            pan.holdout,
            pan.scoring_batches
        ),
        Stage::Recover(Recovery::Bn) => format!(
            "bn: recalibrate BatchNormalization statistics on {} training samples",
            opts.calibration_samples
        ),
        Stage::Recover(Recovery::Cap) => format!(
            "cap: refit the consumers of removed channels by least squares on {} training samples",
            opts.calibration_samples
        ),
        Stage::Recover(r) => {
            let (ls, temp, alpha) = opts.loss;
            format!(
                "{}: {} epoch(s){}, lr {} ({:?}), batch {}{}{}",
                r.name(),
                t.epochs,
                if t.from_scratch {
                    " from scratch (re-initialised)"
                } else {
                    ""
                },
                t.lr,
                t.schedule,
                t.batch,
                if *r == Recovery::Kd {
                    format!(", distilled from the original at T {temp}, alpha {alpha}")
                } else {
                    String::new()
                },
                if ls > 0.0 {
                    format!(", label smoothing {ls}")
                } else {
                    String::new()
                }
            )
        }
    }
}

/// A pruning selection in words: its criterion and the options that shape the choice.
fn describe_selection(sel: &crate::pipeline::Selection) -> String {
    let meta = sel.meta();
    let opts: Vec<String> = meta
        .options
        .iter()
        .filter(|(_, v)| !matches!(v, serde_json::Value::Array(a) if a.is_empty()))
        .map(|(k, v)| format!("{k} {}", v.to_string().trim_matches('"')))
        .collect();
    format!("criterion {}, {}", meta.criterion, opts.join(", "))
}
