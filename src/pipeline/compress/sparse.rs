//! The sparse stage: training with an L1 penalty on BatchNormalization scales (every one,
//! or only those the pruning will remove) or group lasso on filters, before pruning. It
//! prunes nothing; a masked penalty leaves its choice as the mask plan for the prune stage.

use std::path::Path;

use crate::error::Result;
use crate::ir::Model;
use crate::pipeline::PruneOptions;
use crate::train::options::{Recipe, TrainOptions};

use super::{prune_by, stage_training, train_in_place, Context, Observer};

/// Which BatchNormalization scales a [`SparseTraining`] stage penalises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Penalty {
    /// Every scale (network slimming).
    All,
    /// Only the scales of the channels the run's pruning selection removes, chosen on the
    /// model before the stage; the prune stage then replays exactly that choice
    /// (MaskSparsity).
    Masked,
    /// Group lasso on every convolution filter (for networks without BatchNormalization:
    /// the filter norm is then the channel's scale).
    Filters,
}

/// Sparse training before pruning: cross-entropy on the labels plus `λ·weight·|γ|` on
/// BatchNormalization scales, so that the channels to remove fade out first.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseTraining {
    /// Which scales are penalised.
    pub penalty: Penalty,
    /// How strong the L1 term is.
    pub strength: Strength,
    /// Strength growing linearly from 0 to `weight` over the stage (augmented sparsity);
    /// else constant.
    pub augmented: bool,
    /// Epochs of the stage (over `--limit` samples each when given).
    pub epochs: usize,
    /// Base learning rate (cosine).
    pub lr: f64,
}

/// The strength of a [`SparseTraining`] penalty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Strength {
    /// The weight λ of the L1 term, as `lopper train --sparsity l1-bn=W` takes it.
    Weight(f32),
    /// The weight that moves a scale the loss leaves alone by this much over the stage:
    /// λ = shift / (Σ over steps of lr · λ-schedule factor · 1/(1 − momentum)), so the
    /// same setting means the same penalty at any number of steps, learning rate or
    /// schedule (a short budget gets a stronger λ).
    Shift(f32),
}

impl Strength {
    /// The weight λ for a stage of `steps` steps at base rate `lr` (cosine) with `optimizer`.
    pub fn weight(
        self,
        steps: usize,
        lr: f64,
        augmented: bool,
        optimizer: &crate::train::optim::Optimizer,
    ) -> f32 {
        match self {
            Strength::Weight(w) => w,
            Strength::Shift(shift) => {
                // Means over the stage of the cosine rate (1/2) and of the rate times a
                // linear ramp from 0 to 1 (1/4 − 1/π²).
                let schedule = if augmented {
                    0.25 - 1.0 / (std::f64::consts::PI * std::f64::consts::PI)
                } else {
                    0.5
                };
                let momentum = match optimizer {
                    crate::train::optim::Optimizer::Sgd { momentum, .. } => f64::from(*momentum),
                    crate::train::optim::Optimizer::AdamW { .. } => 0.0,
                };
                let per_weight = lr * schedule * steps.max(1) as f64 / (1.0 - momentum.min(0.99));
                (f64::from(shift) / per_weight.max(1e-12)) as f32
            }
        }
    }
}

/// The sparse stage: `sp` on `model`. A masked penalty first chooses, on `model`, the
/// channels the run's selection removes (kept as the mask plan for the prune stage).
pub(super) fn sparse_stage(
    sp: &SparseTraining,
    model: &mut Model,
    ctx: &Context,
    file: &Path,
    observer: &mut dyn Observer,
) -> Result<String> {
    use crate::train::options::LambdaSchedule;
    use crate::train::regularize::Regularizer;
    let train_data = (ctx.data.train)()?;
    let samples = ctx
        .opts
        .train
        .limit
        .map_or(train_data.len(), |l| l.min(train_data.len()));
    let steps = sp.epochs * (samples / ctx.opts.train.batch.max(1));
    let weight = sp
        .strength
        .weight(steps, sp.lr, sp.augmented, &ctx.opts.train.optimizer);
    let regularizer = match sp.penalty {
        Penalty::All => Regularizer::L1Gamma { weight },
        Penalty::Filters => Regularizer::GroupLasso { weight, eps: 1e-8 },
        Penalty::Masked => {
            observer.stage("sparse: choosing the channels to penalise");
            // The mask plan must fit the trained model, which training writes in its
            // prepared form (constants folded).
            *model = crate::train::init::prepare_model(model)?;
            let mut probe = model.clone();
            let prune = PruneOptions {
                verify_with: Vec::new(),
                ..ctx.opts.prune.clone()
            };
            let r = prune_by(&mut probe, &prune, ctx, observer)?;
            let scales = crate::pipeline::recalibrate::has_running_statistics(model);
            let regularizer = if scales {
                let masks = crate::train::masks::masks_from_plan(model, &r.plan)?;
                Regularizer::MaskedL1Gamma { weight, masks }
            } else {
                let masks = crate::train::masks::filter_masks_from_plan(model, &r.plan)?;
                Regularizer::MaskedGroupLasso {
                    weight,
                    eps: 1e-8,
                    masks,
                }
            };
            r.plan.save(&ctx.mask_plan)?;
            observer.stage("sparse");
            regularizer
        }
    };
    let (ls, _, _) = ctx.opts.loss;
    let topts = TrainOptions {
        epochs: sp.epochs,
        lr: sp.lr,
        regularizers: vec![regularizer],
        lambda: if sp.augmented {
            LambdaSchedule::Augmented
        } else {
            LambdaSchedule::Constant
        },
        loss: Recipe::loss(false, ls, 0.0, 0.0),
        ..stage_training(ctx.opts, ctx.data, file)
    };
    let (loss, _) = train_in_place(model, &topts, train_data, observer)?;
    let (small, all) = small_gammas(model, 1e-2);
    let small = if all > 0 {
        format!("; {small} of {all} |gamma| < 1e-2")
    } else {
        String::new()
    };
    Ok(format!(
        "{} epochs, L1 {} {:e}{} on {} scales, lr {:.0e}, last loss {loss:.4}{small}",
        sp.epochs,
        match sp.penalty {
            Penalty::Masked => "masked",
            Penalty::All => "on every scale,",
            Penalty::Filters => "(group lasso) on every filter,",
        },
        weight,
        if sp.augmented { " growing from 0" } else { "" },
        match sp.penalty {
            Penalty::Masked => "the chosen channels' BatchNormalization (or filter)",
            Penalty::All => "BatchNormalization",
            Penalty::Filters => "convolution filter",
        },
        sp.lr,
    ))
}

/// How many BatchNormalization scale entries have |γ| below `t`, of how many.
fn small_gammas(model: &Model, t: f32) -> (usize, usize) {
    let g = &model.graph;
    let (mut small, mut all) = (0, 0);
    for n in g.node_ids() {
        let Some(port) = crate::ops::channel_scale_input(g.node(n)) else {
            continue;
        };
        let Some(gamma) = g.node(n).input(port).and_then(|v| g.init(v)) else {
            continue;
        };
        if let Some(v) = gamma.to_f64_vec() {
            all += v.len();
            small += v.iter().filter(|x| x.abs() < f64::from(t)).count();
        }
    }
    (small, all)
}
