//! What a training run is given and what it reports: [`TrainOptions`] (with the learning-rate
//! and regularizer-strength schedules and the augmentation), the per-epoch [`EpochReport`] and
//! the run's [`TrainReport`], the [`Event`]s the loop reports while it runs, and the defaults
//! of the two commands ([`Recipe`]: `lopper train` trains from the start, `lopper finetune`
//! continues a pretrained or pruned model with a lower rate and fewer epochs).

use std::path::PathBuf;

use serde::Serialize;

use crate::data::{Dataset, Preprocess};
use crate::error::Result;
use crate::runtime::RuntimeOptions;

use super::loss::Loss;
use super::optim::Optimizer;
use super::regularize::Regularizer;

/// How the learning rate evolves after the warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Schedule {
    /// Half a cosine from the base rate down to 0 at the last step.
    #[default]
    Cosine,
    /// ×0.1 after half and again after three quarters of the post-warm-up steps.
    Step,
    /// The base rate throughout.
    Constant,
}

/// How the regularizer strength (`l1_lambda`) evolves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LambdaSchedule {
    /// 1 at every step (the regularizers' weights are the strengths).
    #[default]
    Constant,
    /// Grows linearly from 0 at the first step to 1 at the last.
    Augmented,
}

/// Which augmentations image batches get (other inputs get none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Random crop of the input size from the image padded by 4 pixels on each side.
    pub crop: bool,
    /// Horizontal flip with probability 1/2.
    pub flip: bool,
    /// Also augment single-channel images. Off by default: grayscale data is mostly digits
    /// and characters, which flips mirror and 4-pixel crops of small images cost accuracy
    /// (mnist-8 from scratch, 1 epoch: 89.05% with crop and flip, 96.21% with crops, 96.85%
    /// with neither).
    pub grayscale: bool,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            crop: true,
            flip: true,
            grayscale: false,
        }
    }
}

/// What to train and how.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Epochs in all (a resumed run continues up to this many).
    pub epochs: usize,
    /// Samples per step (fixed; an epoch's last partial batch is dropped).
    pub batch: usize,
    /// Base learning rate.
    pub lr: f64,
    /// Schedule after the warm-up.
    pub schedule: Schedule,
    /// Epochs of linear warm-up from lr/steps to lr.
    pub warmup_epochs: f64,
    /// The parameter update.
    pub optimizer: Optimizer,
    /// The loss (`Distill` needs [`TrainOptions::teacher`]).
    pub loss: Loss,
    /// Sparsity regularizers.
    pub regularizers: Vec<Regularizer>,
    /// Their strength over time.
    pub lambda: LambdaSchedule,
    /// Globs of initializers kept constant.
    pub freeze: Vec<String>,
    /// Globs of parameters without weight decay.
    pub no_decay: Vec<String>,
    /// Re-initialise every trainable weight before training (see [`super::init::reinitialize`]).
    pub from_scratch: bool,
    /// Image augmentation.
    pub augment: Augment,
    /// Seed of the shuffling, the augmentation and the re-initialisation.
    pub seed: u64,
    /// Where the step runs (ONNX Runtime) and with how many threads.
    pub runtime: RuntimeOptions,
    /// Train on this many samples, spread evenly over the split.
    pub limit: Option<usize>,
    /// Evaluate on this many samples, spread evenly over the held-out split.
    pub eval_limit: Option<usize>,
    /// Preprocessing of both splits.
    pub preprocess: Preprocess,
    /// The trained inference model (checkpoint files sit next to it).
    pub output: PathBuf,
    /// Continue from this checkpoint (the sidecar, or the output model next to it).
    pub resume: Option<PathBuf>,
    /// Teacher model for distillation (its logits are fed as `teacher`).
    pub teacher: Option<PathBuf>,
    /// Weight masks enforced at every step (masked weights start and stay at zero; see
    /// [`super::StepOptions::weight_masks`]).
    pub weight_masks: super::masks::WeightMasks,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 1,
            batch: 128,
            lr: 0.1,
            schedule: Schedule::default(),
            warmup_epochs: 0.0,
            optimizer: Optimizer::default(),
            loss: Loss::default(),
            regularizers: Vec::new(),
            lambda: LambdaSchedule::default(),
            freeze: Vec::new(),
            no_decay: Vec::new(),
            from_scratch: false,
            augment: Augment::default(),
            seed: 0,
            runtime: RuntimeOptions::default(),
            limit: None,
            eval_limit: None,
            preprocess: Preprocess::default(),
            output: PathBuf::from("trained.onnx"),
            resume: None,
            teacher: None,
            weight_masks: Default::default(),
        }
    }
}

/// One epoch's results.
#[derive(Clone, Debug, Serialize)]
pub struct EpochReport {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Steps run in it.
    pub steps: usize,
    /// Mean training loss of its steps.
    pub loss: f64,
    /// Mean training-batch accuracy of its steps.
    pub accuracy: f64,
    /// Top-1 on the held-out split (`None` without one).
    pub eval_top1: Option<f64>,
    /// Samples evaluated.
    pub eval_samples: usize,
    /// Learning rate at its last step.
    pub lr: f64,
    /// Seconds of the training steps (evaluation and checkpoint excluded).
    pub train_seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
}

/// The outcome of [`super::runner::train`].
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    /// The trained inference model.
    pub output: PathBuf,
    /// The checkpoint sidecar.
    pub checkpoint: PathBuf,
    /// What was trained on.
    pub data: String,
    /// Training samples used per epoch (after the partial batch is dropped).
    pub samples_per_epoch: usize,
    /// Trainable parameter tensors and their total size.
    pub params: (usize, usize),
    /// The epoch the run started after (0 unless resumed).
    pub resumed_from: usize,
    /// The epochs run.
    pub epochs: Vec<EpochReport>,
    /// Wall-clock seconds of the whole run.
    pub wall_seconds: f64,
}

/// What the loop reports while it runs.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// An epoch starts (`steps` of them).
    EpochStart {
        /// Epoch number, from 1.
        epoch: usize,
        /// Steps it will run.
        steps: usize,
    },
    /// A step finished: running means over the epoch so far.
    Step {
        /// Steps done in this epoch.
        done: usize,
        /// Mean loss so far.
        loss: f64,
        /// Mean accuracy so far.
        accuracy: f64,
        /// Images per second so far.
        images_per_second: f64,
    },
    /// Evaluation progress (samples done, total).
    Eval(usize, usize),
    /// An epoch finished (evaluated and checkpointed).
    EpochEnd(&'a EpochReport),
    /// Something the user should know before trusting the run (inputs far from normalised,
    /// accuracy at chance), in one line.
    Warning(String),
}

/// Opens the held-out split afresh (evaluation consumes a dataset).
pub type EvalData<'a> = &'a mut dyn FnMut() -> Result<Box<dyn Dataset>>;

/// The defaults that differ between the two commands: `lopper train` trains a model (from its
/// weights or, with `--from-scratch`, anew), `lopper finetune` continues a pretrained or
/// pruned one with a tenth of the rate and half the epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// `lopper train`.
    Train,
    /// `lopper finetune`.
    Finetune,
}

impl Recipe {
    /// Epochs when none are given: 10 to train, 5 to fine-tune.
    pub fn epochs(self) -> usize {
        match self {
            Recipe::Train => 10,
            Recipe::Finetune => 5,
        }
    }

    /// The base learning rate when none is given: 0.1 for SGD and 1e-3 for AdamW to train, a
    /// tenth of that to fine-tune.
    pub fn lr(self, optimizer: &Optimizer) -> f64 {
        let base = match optimizer {
            Optimizer::Sgd { .. } => 0.1,
            Optimizer::AdamW { .. } => 1e-3,
        };
        match self {
            Recipe::Train => base,
            Recipe::Finetune => base / 10.0,
        }
    }

    /// [`Recipe::lr`] for `model`: `lopper train` gives a network without normalisation
    /// layers (no op with a per-channel scale such as BatchNormalization) a third of the rate,
    /// since SGD at 0.1 with momentum trains such networks slowly or not at all (mnist-8 from
    /// scratch, 1 epoch, normalised inputs: 96.85% at 0.1, 98.32% at 0.03).
    pub fn lr_for(self, optimizer: &Optimizer, model: &crate::ir::Model) -> f64 {
        let g = &model.graph;
        let normalised = g
            .node_ids()
            .any(|n| crate::ops::channel_scale_input(g.node(n)).is_some());
        match self {
            Recipe::Train if !normalised => self.lr(optimizer) * 0.3,
            _ => self.lr(optimizer),
        }
    }

    /// The loss of a classifier: cross-entropy with `label_smoothing`, or with a teacher,
    /// distillation at `temperature` weighted `alpha` (against `1 − alpha` on the labels).
    pub fn loss(teacher: bool, label_smoothing: f32, temperature: f32, alpha: f32) -> Loss {
        if teacher {
            Loss::Distill {
                label_smoothing,
                temperature,
                alpha,
            }
        } else {
            Loss::CrossEntropy { label_smoothing }
        }
    }
}
