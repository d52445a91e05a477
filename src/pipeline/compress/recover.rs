//! The recovery stages: BN recalibration, compensation, fine-tuning and distillation.

use std::path::Path;

use crate::analysis::activation_stats::calibration_batches;
use crate::error::Result;
use crate::ir::Model;
use crate::pipeline::compensate::{compensate, CompensateOptions};
use crate::pipeline::recalibrate::recalibrate;
use crate::train::options::{Recipe, TrainOptions};

use super::{
    quiet, stage_training, train_in_place, CompressOptions, Context, Data, Observer, Recovery,
};

/// Training samples for calibration criteria and BN recalibration of `model`.
fn training_batches(
    model: &Model,
    opts: &CompressOptions,
    data: &Data,
) -> Result<Vec<crate::analysis::activation_stats::CalibrationBatch>> {
    calibration_batches(
        model,
        (data.train)()?,
        &data.preprocess,
        opts.eval.batch,
        Some(opts.calibration_samples),
    )?
    .collect()
}

/// Runs one recovery stage on `model`; `file` is where the stage's model goes (training
/// keeps its checkpoints beside it).
pub(super) fn recover_stage(
    r: Recovery,
    model: &mut Model,
    ctx: &Context,
    file: &Path,
    observer: &mut dyn Observer,
) -> Result<String> {
    let (opts, data) = (ctx.opts, ctx.data);
    match r {
        Recovery::Bn => {
            let batches = training_batches(model, opts, data)?;
            let rt = quiet(&opts.eval.runtime);
            let done = recalibrate(model, &batches, opts.eval.backend, &rt, &mut |d, t| {
                observer.count(d, t)
            })?;
            Ok(format!(
                "{} normalisation nodes on {} samples",
                done.nodes, done.samples
            ))
        }
        Recovery::Cap => {
            let batches = training_batches(model, opts, data)?;
            let plan = crate::plan::PlanFile::load(&ctx.plan)?;
            let rt = quiet(&opts.eval.runtime);
            let done = compensate(
                model,
                ctx.original,
                &plan,
                &batches,
                opts.eval.backend,
                &rt,
                &CompensateOptions::default(),
                &mut |d, t| observer.count(d, t),
            )?;
            Ok(format!(
                "{} layers refitted on {} samples, relative residual {:.3} -> {:.3}",
                done.layers, done.samples, done.residual_before, done.residual_after
            ))
        }
        Recovery::Finetune | Recovery::Kd => {
            let kd = r == Recovery::Kd;
            let teacher = kd.then(|| {
                opts.teacher
                    .clone()
                    .unwrap_or_else(|| ctx.original_path.into())
            });
            let (ls, t, a) = opts.loss;
            let scratch = opts.train.from_scratch && ctx.first_training;
            let topts = TrainOptions {
                teacher,
                loss: Recipe::loss(kd, ls, t, a),
                from_scratch: scratch,
                weight_masks: ctx.weight_masks.clone(),
                ..stage_training(opts, data, file)
            };
            let (loss, resumed) = train_in_place(model, &topts, (data.train)()?, observer)?;
            let masked = super::pan::check_masked(model, &ctx.weight_masks)?;
            Ok(format!(
                "{} epochs{}{}, lr {:.0e}, last loss {loss:.4}{}",
                topts.epochs,
                if scratch { " from scratch" } else { "" },
                if resumed > 0 {
                    format!(" (resumed after {resumed})")
                } else {
                    String::new()
                },
                topts.lr,
                if masked > 0 {
                    format!(", {masked} masked weights enforced at zero")
                } else {
                    String::new()
                }
            ))
        }
    }
}
