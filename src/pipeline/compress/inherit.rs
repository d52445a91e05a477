//! AdaPruner's adaptive weight inheritance (the inherit stage), and the brief recovery that
//! scores a candidate sub-network (shared with mending).

use std::path::{Path, PathBuf};

use crate::analysis::activation_stats::calibration_batches;
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions};
use crate::ir::Model;
use crate::pipeline::recalibrate::recalibrate;
use crate::pipeline::PruneOptions;
use crate::runtime::RuntimeOptions;
use crate::train::options::{Recipe, TrainOptions};

use super::{prune_by, quiet, stage_training, train_in_place, Context, Observer};

/// One way the pruned network inherits weights ([`Inheritance`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Its name in the report.
    pub name: String,
    /// The criterion that picks which channels stay (the allocation, and so the widths,
    /// do not depend on it under block allocation).
    pub criterion: crate::analysis::importance::CriterionKind,
    /// Re-initialise every weight after pruning (the architecture is inherited, no weights).
    pub reinit: bool,
}

/// AdaPruner's adaptive weight inheritance: every candidate prunes the model, is recovered
/// briefly (BN recalibration, then `steps` training steps on training samples outside the
/// scoring part) and scored on `holdout` training samples it did not train on; the best
/// (top-1, then loss) is the stage's model.
#[derive(Clone, Debug, PartialEq)]
pub struct Inheritance {
    /// The candidates, in the order tried.
    pub candidates: Vec<Candidate>,
    /// Training steps of each candidate's brief recovery.
    pub steps: usize,
    /// Training samples held out to score the candidates.
    pub holdout: usize,
}

/// How a candidate sub-network is recovered briefly and scored: BN recalibration (when the
/// model has running statistics), `steps` training steps at `lr` on training samples outside
/// the `holdout` ones, then top-1 and loss on those `holdout` samples.
pub(super) struct Brief {
    pub(super) steps: usize,
    pub(super) holdout: usize,
    pub(super) lr: f64,
    /// Runtime of the recalibration, training and scoring (threads per candidate).
    pub(super) runtime: RuntimeOptions,
    /// Weight masks the training enforces (none: empty).
    pub(super) weight_masks: crate::train::masks::WeightMasks,
    /// Seed of the training's shuffling and augmentation.
    pub(super) seed: u64,
}

/// Recovers `m` briefly as `b` says (its model written to `file`, checkpoints beside) and
/// scores it.
pub(super) fn brief_recovery(
    m: &mut Model,
    b: &Brief,
    ctx: &Context,
    file: &Path,
    observer: &mut dyn Observer,
) -> Result<crate::pipeline::mend::Score> {
    use crate::data::subset::Subset;
    let opts = ctx.opts;
    let (holdout, rest) = Subset::split(ctx.data.train, b.holdout)?;
    if crate::pipeline::recalibrate::has_running_statistics(m) {
        let batches = calibration_batches(
            m,
            Box::new(rest),
            &ctx.data.preprocess,
            opts.eval.batch,
            Some(opts.calibration_samples),
        )?
        .collect::<Result<Vec<_>>>()?;
        recalibrate(
            m,
            &batches,
            opts.eval.backend,
            &quiet(&b.runtime),
            &mut |d, t| observer.count(d, t),
        )?;
    }
    if b.steps > 0 {
        let (_, rest) = Subset::split(ctx.data.train, b.holdout)?;
        let (ls, _, _) = opts.loss;
        let topts = TrainOptions {
            epochs: 1,
            limit: Some(b.steps * opts.train.batch),
            loss: Recipe::loss(false, ls, 0.0, 0.0),
            lr: b.lr,
            runtime: b.runtime,
            resume: None,
            weight_masks: b.weight_masks.clone(),
            seed: b.seed,
            ..stage_training(opts, ctx.data, file)
        };
        train_in_place(m, &topts, Box::new(rest), observer)?;
    }
    m.save(file, &Default::default())?;
    let e = evaluate(
        file,
        None,
        Box::new(holdout),
        &ctx.data.preprocess,
        &EvalOptions {
            limit: None,
            runtime: b.runtime,
            ..opts.eval.clone()
        },
        &mut |d, t| observer.count(d, t),
    )?;
    Ok(e.accuracy.as_ref().map_or(
        crate::pipeline::mend::Score {
            top1: 0.0,
            loss: f64::INFINITY,
        },
        |a| crate::pipeline::mend::Score {
            top1: a.top1,
            loss: a.loss,
        },
    ))
}

/// A scratch folder beside the work folder's plan, removed when dropped.
pub(super) struct Scratch(pub(super) PathBuf);

impl Scratch {
    pub(super) fn new(ctx: &Context, name: &str) -> Result<Scratch> {
        let dir = ctx.plan.with_file_name(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The inherit stage: each candidate of `inh` pruned from `model`, recalibrated, trained
/// briefly and scored on held-out training samples; `model` becomes the best.
pub(super) fn inherit_stage(
    inh: &Inheritance,
    model: &mut Model,
    ctx: &Context,
    observer: &mut dyn Observer,
) -> Result<(String, Vec<(String, f64)>)> {
    let opts = ctx.opts;
    let scored = ctx.scored("weight inheritance")?;
    let dir = Scratch::new(ctx, "inherit")?;
    let mut best: Option<(
        crate::pipeline::mend::Score,
        usize,
        Model,
        crate::pipeline::PruneReport,
    )> = None;
    let mut scores = Vec::new();
    for (k, c) in inh.candidates.iter().enumerate() {
        observer.stage(&format!("inherit: candidate {} ({})", k + 1, c.name));
        let mut m = model.clone();
        let prune = PruneOptions {
            selection: crate::pipeline::Selection::Scored(crate::pipeline::Scored {
                criterion: c.criterion.clone(),
                ..scored.clone()
            }),
            ..opts.prune.clone()
        };
        let r = prune_by(&mut m, &prune, ctx, observer)?;
        if c.reinit {
            crate::train::init::reinitialize(&mut m, opts.train.seed)?;
        }
        let brief = Brief {
            steps: inh.steps,
            holdout: inh.holdout,
            lr: if c.reinit {
                Recipe::Train.lr(&opts.train.optimizer)
            } else {
                opts.train.lr
            },
            runtime: opts.train.runtime,
            weight_masks: Default::default(),
            seed: opts.train.seed,
        };
        let file = dir.0.join(format!("{k:02}-{}.onnx", c.name));
        let score = brief_recovery(&mut m, &brief, ctx, &file, observer)?;
        scores.push((c.name.clone(), score.top1));
        if best.as_ref().is_none_or(|b| score.beats(&b.0)) {
            best = Some((score, k, m, r));
        }
    }
    let (_, k, m, r) = best.ok_or_else(|| Error::Usage("no inheritance candidate".into()))?;
    *model = m;
    r.plan.save(&ctx.plan)?;
    let list: Vec<String> = scores
        .iter()
        .map(|(n, t)| format!("{n} {:.2}%", t * 100.0))
        .collect();
    Ok((
        format!(
            "inherited by {} ({} channels removed; held-out training top-1 after {}{} steps: {})",
            inh.candidates[k].name,
            r.removed,
            if crate::pipeline::recalibrate::has_running_statistics(model) {
                "BN recalibration and "
            } else {
                ""
            },
            inh.steps,
            list.join(", ")
        ),
        scores,
    ))
}
