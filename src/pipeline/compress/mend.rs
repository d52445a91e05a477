//! The mend stage: pre-pruning, then [`crate::pipeline::mend::search`] with candidates
//! scored by brief recovery in parallel, then the winner pruned and verified.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::ir::Model;
use crate::pipeline::PruneOptions;
use crate::runtime::RuntimeOptions;
use crate::train::options::Event;

use super::inherit::{brief_recovery, Brief, Scratch};
use super::{prune_by, Context, Observer, StageReport};

/// Automatic mending: pre-pruning by the run's selection, then a search over moves of
/// channels between groups that keep the budget, every candidate recovered briefly (BN
/// recalibration, `steps` training steps, one runtime thread per candidate, candidates in
/// parallel) and scored on `holdout` training samples it did not train on.
#[derive(Clone, Debug, PartialEq)]
pub struct Mending {
    /// The search's budget and window.
    pub search: crate::pipeline::mend::MendOptions,
    /// Training steps of each candidate's brief recovery.
    pub steps: usize,
    /// Training samples held out to score the candidates.
    pub holdout: usize,
}

/// Scores mending candidates: each pruned from the model by its plan and recovered briefly,
/// a batch at a time on as many threads as there are cores (one runtime thread each, so a
/// score does not depend on how many run at once).
struct BriefScores<'a> {
    model: &'a Model,
    ctx: &'a Context<'a>,
    brief: Brief,
    dir: PathBuf,
    done: usize,
}

/// An observer that ignores everything (candidates scored on worker threads).
struct Quiet;

impl Observer for Quiet {
    fn stage(&mut self, _: &str) {}
    fn count(&mut self, _: usize, _: usize) {}
    fn train(&mut self, _: &Event<'_>) {}
    fn done(&mut self, _: &StageReport, _: bool) {}
}

impl BriefScores<'_> {
    fn one(&self, plan: &crate::plan::PlanFile, k: usize) -> Result<crate::pipeline::mend::Score> {
        let mut m = self.model.clone();
        let prune = PruneOptions {
            selection: crate::pipeline::Selection::Plan(plan.clone()),
            verify_with: Vec::new(),
            tolerance: self.ctx.opts.prune.tolerance,
        };
        crate::pipeline::prune(&mut m, &prune)?;
        let file = self.dir.join(format!("{k:03}.onnx"));
        brief_recovery(&mut m, &self.brief, self.ctx, &file, &mut Quiet)
    }
}

impl crate::pipeline::mend::Evaluator for BriefScores<'_> {
    fn score(
        &mut self,
        plans: &[crate::plan::PlanFile],
    ) -> Result<Vec<crate::pipeline::mend::Score>> {
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(plans.len())
            .max(1);
        let first = self.done;
        self.done += plans.len();
        let this = &*self;
        let mut out = Vec::with_capacity(plans.len());
        for chunk in (0..plans.len()).collect::<Vec<_>>().chunks(workers) {
            let results: Vec<Result<crate::pipeline::mend::Score>> = std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|&k| s.spawn(move || this.one(&plans[k], first + k)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::Usage("a mending candidate's worker panicked".into()))
                        })
                    })
                    .collect()
            });
            for r in results {
                out.push(r?);
            }
        }
        Ok(out)
    }
}

/// The mend stage: pre-pruning by the run's selection, then [`crate::pipeline::mend::search`] over
/// width moves around it, candidates scored by brief recovery; `model` is pruned to the
/// best (verified like any prune).
pub(super) fn mend_stage(
    md: &Mending,
    model: &mut Model,
    ctx: &Context,
    observer: &mut dyn Observer,
) -> Result<(String, Vec<(String, f64)>)> {
    use crate::plan::allocate::{Amount, Budget};
    let opts = ctx.opts;
    let scored = ctx.scored("mending")?;
    observer.stage("mend: pre-pruning");
    let mut probe = model.clone();
    let quick = PruneOptions {
        verify_with: Vec::new(),
        ..opts.prune.clone()
    };
    let pre = prune_by(&mut probe, &quick, ctx, observer)?;
    let original_macs = crate::pipeline::model_costs(model)?.macs.max(1) as f64;
    let c = &scored.allocate.constraints;
    let limits = crate::pipeline::mend::limits_of(
        &pre.plan,
        c.round_to,
        c.round_from,
        c.min_keep_fraction,
        c.min_keep_count,
    )?;
    let mut macs = |p: &crate::plan::PlanFile| -> Result<f64> {
        let mut m = model.clone();
        crate::pipeline::prune(
            &mut m,
            &PruneOptions {
                selection: crate::pipeline::Selection::Plan(p.clone()),
                verify_with: Vec::new(),
                tolerance: opts.prune.tolerance,
            },
        )?;
        Ok(crate::pipeline::model_costs(&m)?.macs as f64 / original_macs)
    };
    let target = match scored.allocate.amount {
        Amount::Target(Budget::Flops(t)) => t,
        _ => crate::pipeline::model_costs(&probe)?.macs as f64 / original_macs,
    };
    let dir = Scratch::new(ctx, "mend")?;
    let mut eval = BriefScores {
        model,
        ctx,
        brief: Brief {
            steps: md.steps,
            holdout: md.holdout,
            lr: opts.train.lr,
            runtime: RuntimeOptions {
                threads: Some(1),
                ..opts.train.runtime
            },
            weight_masks: Default::default(),
            seed: opts.train.seed,
        },
        dir: dir.0.clone(),
        done: 0,
    };
    observer.stage(&format!(
        "mend: searching ({} candidates, {} steps each)",
        md.search.evaluations, md.steps
    ));
    let (trials, won) = crate::pipeline::mend::search(
        &pre.plan,
        &limits,
        &mut macs,
        target,
        &mut eval,
        &md.search,
        &mut |d, t| observer.count(d, t),
    )?;
    drop(dir);
    let best = crate::pipeline::mend::plan_for(&pre.plan, &trials[won].counts)?;
    let r = prune_by(
        model,
        &PruneOptions {
            selection: crate::pipeline::Selection::Plan(best),
            ..opts.prune.clone()
        },
        ctx,
        observer,
    )?;
    r.plan.save(&ctx.plan)?;
    Ok(summary(md, &pre, &trials, won))
}

/// The stage's note and the candidates' scores, from the search's `trials` (`won`: the kept
/// one).
fn summary(
    md: &Mending,
    pre: &crate::pipeline::PruneReport,
    trials: &[crate::pipeline::mend::Trial],
    won: usize,
) -> (String, Vec<(String, f64)>) {
    let rounds = trials.last().map_or(0, |t| t.round);
    let scores: Vec<(String, f64)> = trials
        .iter()
        .enumerate()
        .map(|(k, t)| {
            (
                if k == 0 {
                    "pre-pruned".to_string()
                } else {
                    format!("round {} #{k} (MACs x{:.3})", t.round, t.macs)
                },
                t.score.top1,
            )
        })
        .collect();
    let moved: usize = trials[won]
        .counts
        .iter()
        .zip(&trials[0].counts)
        .map(|(a, b)| a.abs_diff(*b))
        .sum();
    let note = format!(
            "pre-pruned by {} ({} channels, held-out training top-1 {:.2}% after {} steps); {} \
             candidates in {rounds} round(s); kept {} ({:.2}%, {moved} channels moved), MACs x{:.3}",
            pre.criterion,
            pre.removed,
            trials[0].score.top1 * 100.0,
            md.steps,
            trials.len(),
            if won == 0 {
                "the pre-pruned widths".to_string()
            } else {
                format!("candidate {won}")
            },
            trials[won].score.top1 * 100.0,
            trials[won].macs
        );
    (note, scores)
}
