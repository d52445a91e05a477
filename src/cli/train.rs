//! `lopper train` and `lopper finetune`: train a classifier with a compiled train step in ONNX
//! Runtime (see `crate::train`). `finetune` is `train` with defaults suited to a
//! pruned or pretrained model (lower rate, a few epochs) and optional distillation from the
//! original model.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::ValueEnum;

use crate::data::Preprocess;
use crate::ir::Model;
use crate::runtime::{Device, RuntimeOptions};
use crate::train::optim::Optimizer;
use crate::train::options::{Augment, Event, Recipe, Schedule, TrainOptions, TrainReport};
use crate::train::runner::train;
use crate::train::sparsity::{parse_sparsity, Sparsity};

use super::data_args::DataArgs;
use super::progress;
use super::runtime_args::DeviceArg;

/// `--optimizer`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OptimizerArg {
    /// SGD with (optional) momentum and L2 weight decay.
    Sgd,
    /// Adam with decoupled weight decay.
    Adamw,
}

/// `--schedule`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScheduleArg {
    /// Cosine decay to 0.
    Cosine,
    /// ×0.1 at 50% and 75% of training.
    Step,
    /// Constant.
    Constant,
}

/// Arguments of `lopper train` and `lopper finetune`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The ONNX classifier to train (BatchNormalization kept; one data input).
    model: PathBuf,
    #[command(flatten)]
    data: Box<DataArgs>,
    /// Held-out split evaluated after each epoch ("none": no evaluation) [default: test].
    #[arg(long)]
    eval_split: Option<String>,
    /// Epochs [default: train 10, finetune 5].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: Option<u32>,
    /// Base learning rate [default: train 0.1 (SGD) or 1e-3 (AdamW), finetune a tenth].
    #[arg(long)]
    lr: Option<f64>,
    /// Samples per step (an epoch's last partial batch is dropped).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Optimizer.
    #[arg(long, value_enum, default_value = "sgd")]
    optimizer: OptimizerArg,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Nesterov momentum (SGD).
    #[arg(long)]
    nesterov: bool,
    /// Weight decay (SGD: L2 on the gradient; AdamW: decoupled).
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f32,
    /// Learning-rate schedule after the warm-up.
    #[arg(long, value_enum, default_value = "cosine")]
    schedule: ScheduleArg,
    /// Epochs of linear learning-rate warm-up (fractions allowed).
    #[arg(long, default_value_t = 0.0)]
    warmup_epochs: f64,
    /// Label smoothing ε.
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f32,
    /// Sparsity regularizer: l1-bn=W, l1-bn-augmented=W (strength growing linearly from 0),
    /// group-lasso=W, or masked L1 on the BN scales of the channels pruning would remove:
    /// masked-l1=PLAN.json:W (a `lopper prune --save-plan` plan, any number of --steps) or
    /// masked-l1=CRITERION@AMOUNT:W (chosen on the model as `lopper prune --criterion
    /// CRITERION` does, nothing removed; AMOUNT: a ratio like 0.5, or flops=R, params=R,
    /// threshold=T; data-free criteria only). An existing file is read as a plan even when its
    /// name has an '@'.
    #[arg(long)]
    sparsity: Option<String>,
    /// Keep initializers matching this glob constant (repeatable; `*`, `?`).
    #[arg(long)]
    freeze: Vec<String>,
    /// No weight decay on parameters matching this glob (repeatable).
    #[arg(long)]
    no_decay: Vec<String>,
    /// Re-initialise every trainable weight (Kaiming-normal, zero biases, BN γ=1 β=0).
    #[arg(long)]
    from_scratch: bool,
    /// Keep the weights a mask file masks at zero (`compress --method panning`'s
    /// NAME.masks.npz: per weight, a uint8 array of its shape, 0 = masked).
    #[arg(long)]
    weight_masks: Option<PathBuf>,
    /// No augmentation (default for images with more than one channel: random crop with
    /// padding 4 and horizontal flip; single-channel images get none, see --augment-grayscale).
    #[arg(long)]
    no_augment: bool,
    /// Augment single-channel images too (off by default: flips mirror digits and characters).
    #[arg(long, conflicts_with = "no_augment")]
    augment_grayscale: bool,
    /// Random crops but no horizontal flips (digits, text).
    #[arg(long)]
    no_flip: bool,
    /// Seed of shuffling, augmentation, Dropout masks and re-initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Intra-op threads of ONNX Runtime (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Device (cuda: ONNX Runtime's CUDA execution provider, needs onnxruntime-gpu).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// Continue from a checkpoint (OUT.onnx or its OUT.onnx.train.json sidecar).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Train on N samples spread evenly over the split.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Evaluate on N samples spread evenly over the held-out split.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    eval_limit: Option<u64>,
    /// Distil from this teacher (its logits per batch, from a second ONNX Runtime session).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Distillation temperature.
    #[arg(long, default_value_t = 4.0)]
    temperature: f32,
    /// Weight of the distillation term (1 − alpha on the labels' cross-entropy).
    #[arg(long, default_value_t = 0.7)]
    alpha: f32,
    /// The trained inference model (checkpoints: OUT.train.json and OUT.state-eN.onnx).
    #[arg(short, long)]
    output: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `train` (`finetune` false) or `finetune`.
pub fn run(args: Args, finetune: bool) -> Result<()> {
    // The model and its checkpoints are written beside --output.
    crate::onnx::save::check_writable([args.output.as_path()])?;
    let model = Model::load(&args.model)?;
    crate::ir::verify_model(&model)?;
    let recipe = if finetune {
        Recipe::Finetune
    } else {
        Recipe::Train
    };
    let sparsity = match &args.sparsity {
        Some(s) => parse_sparsity(s, &model)?,
        None => Sparsity::default(),
    };
    if let Some(line) = sparsity.summary() {
        eprintln!("{line}");
    }
    if args.data.data.is_none() {
        bail!("no dataset: pass --data (mnist:DIR, npz:FILE, npy:FILE or images:DIR|FILE.zip)");
    }
    let mut train_args: DataArgs = (*args.data).clone();
    train_args.split = Some(args.data.split.clone().unwrap_or_else(|| "train".into()));
    let (train_ds, pre) = train_args.open()?;
    let eval_split = args.eval_split.clone().unwrap_or_else(|| "test".into());
    let eval_args = (eval_split != "none").then(|| DataArgs {
        split: Some(eval_split.clone()),
        ..(*args.data).clone()
    });
    let mut opts = options(&args, &model, recipe, sparsity, pre);
    if let Some(path) = &args.weight_masks {
        opts.weight_masks = weight_masks(path, &model)?;
    }
    let mut open_eval = || -> crate::Result<Box<dyn crate::data::Dataset>> {
        match &eval_args {
            Some(a) => a.open().map(|(d, _)| d),
            None => Err(crate::Error::Usage("no held-out split".into())),
        }
    };
    let eval_data: Option<crate::train::options::EvalData<'_>> = if eval_args.is_some() {
        Some(&mut open_eval)
    } else {
        None
    };
    let pb = progress::bar("steps");
    let epochs_total = opts.epochs;
    let json = args.json;
    let report = train(&model, &opts, train_ds, eval_data, &mut |ev| match ev {
        Event::EpochStart { epoch, steps } => {
            pb.reset();
            pb.set_length(steps as u64);
            pb.set_message(format!("epoch {epoch}/{epochs_total}"));
        }
        Event::Step {
            done,
            loss,
            accuracy,
            images_per_second,
        } => {
            pb.set_position(done as u64);
            pb.set_message(format!(
                "loss {loss:.4} acc {:.2}% {images_per_second:.0} img/s",
                accuracy * 100.0
            ));
        }
        Event::Eval(..) => pb.set_message("evaluating"),
        Event::Warning(w) => pb.suspend(|| eprintln!("warning: {w}")),
        Event::EpochEnd(r) => {
            pb.suspend(|| {
                if !json {
                    let eval = r
                        .eval_top1
                        .map(|t| format!(", test top-1 {:.2}%", t * 100.0))
                        .unwrap_or_default();
                    eprintln!(
                        "epoch {}/{epochs_total}: loss {:.4}, train acc {:.2}%{eval}, lr {:.3e}, \
                         {:.1} s, {:.0} img/s",
                        r.epoch,
                        r.loss,
                        r.accuracy * 100.0,
                        r.lr,
                        r.train_seconds,
                        r.images_per_second
                    );
                }
            });
        }
    });
    pb.finish_and_clear();
    print_report(&report?, args.json)
}

/// The masks of a mask file, each checked against the model's weight of that name.
fn weight_masks(path: &std::path::Path, model: &Model) -> Result<crate::train::masks::WeightMasks> {
    let arrays = crate::train::mask_file::load(path)?;
    let g = &model.graph;
    let mut out = std::collections::BTreeMap::new();
    for (name, (shape, m)) in arrays {
        let w = g.value_by_name(&name).and_then(|v| g.init(v));
        match w {
            Some(t) if t.shape() == &shape[..] => {}
            Some(t) => bail!(
                "{}: mask '{name}' is {shape:?}, the model's weight {:?}",
                path.display(),
                t.shape()
            ),
            None => bail!(
                "{}: mask '{name}' names no weight of the model",
                path.display()
            ),
        }
        out.insert(name, m);
    }
    Ok(std::sync::Arc::new(out))
}

/// Whether training's idle ONNX Runtime threads busy-wait: no. With the data loader on the
/// same cores, spinning threads steal them: `cargo bench --bench train_step` (2 threads, batch
/// 128, in turns with PyTorch in the same run, two runs each) measured lopper at 0.68/0.57×
/// and 0.64/0.64× PyTorch's speed on ResNet-20 and ResNet-56 with spinning on, 0.81/0.72× and
/// 0.69/0.66× with it off (2026-12-05).
pub(super) const TRAIN_SPINNING: Option<bool> = Some(false);

/// The run's options from the flags, the command's defaults and the parsed `--sparsity`.
fn options(
    args: &Args,
    model: &Model,
    recipe: Recipe,
    sparsity: Sparsity,
    pre: Preprocess,
) -> TrainOptions {
    let optimizer = match args.optimizer {
        OptimizerArg::Sgd => Optimizer::Sgd {
            momentum: args.momentum,
            nesterov: args.nesterov,
            weight_decay: args.weight_decay,
        },
        OptimizerArg::Adamw => Optimizer::adamw(args.weight_decay),
    };
    let lr = args.lr.unwrap_or_else(|| recipe.lr_for(&optimizer, model));
    let loss = Recipe::loss(
        args.teacher.is_some(),
        args.label_smoothing,
        args.temperature,
        args.alpha,
    );
    TrainOptions {
        epochs: args.epochs.map_or_else(|| recipe.epochs(), |e| e as usize),
        batch: args.batch_size as usize,
        lr,
        schedule: match args.schedule {
            ScheduleArg::Cosine => Schedule::Cosine,
            ScheduleArg::Step => Schedule::Step,
            ScheduleArg::Constant => Schedule::Constant,
        },
        warmup_epochs: args.warmup_epochs,
        optimizer,
        loss,
        regularizers: sparsity.regularizers,
        lambda: sparsity.lambda,
        freeze: args.freeze.clone(),
        no_decay: args.no_decay.clone(),
        from_scratch: args.from_scratch,
        augment: Augment {
            crop: !args.no_augment,
            flip: !args.no_augment && !args.no_flip,
            grayscale: args.augment_grayscale,
        },
        seed: args.seed,
        runtime: RuntimeOptions {
            device: match args.device {
                DeviceArg::Cpu => Device::Cpu,
                DeviceArg::Cuda => Device::Cuda,
            },
            threads: args.threads.map(usize::from),
            spinning: TRAIN_SPINNING,
        },
        limit: args.limit.map(|l| l as usize),
        eval_limit: args.eval_limit.map(|l| l as usize),
        preprocess: pre,
        output: args.output.clone(),
        resume: args.resume.clone(),
        teacher: args.teacher.clone(),
        weight_masks: Default::default(),
    }
}

/// Prints the report (as JSON with `json`).
fn print_report(report: &TrainReport, json: bool) -> Result<()> {
    if json {
        say!("{}", serde_json::to_string_pretty(report)?);
    } else {
        let last = report.epochs.last();
        say!("model       {}", report.output.display());
        say!("data        {}", report.data);
        say!(
            "trained     {} epochs ({} resumed), {} samples/epoch, {} params in {} tensors",
            report.epochs.len(),
            report.resumed_from,
            report.samples_per_epoch,
            report.params.1,
            report.params.0
        );
        if let Some(t) = last.and_then(|e| e.eval_top1) {
            say!("accuracy    top-1 {:.2}% (held-out split)", t * 100.0);
        }
        say!(
            "time        {:.1} s wall; checkpoint {}",
            report.wall_seconds,
            report.checkpoint.display()
        );
    }
    Ok(())
}
