//! The training loop: compiles a train step ([`super::compile_train_step`]), runs it in ONNX
//! Runtime batch after batch, and writes the trained inference model.
//!
//! A run, in order: the model is prepared and, with `--from-scratch`, re-initialised
//! ([`super::init`]); the step is compiled; the training split is read into memory
//! ([`super::samples`]); a checkpoint is restored when resuming ([`super::checkpoint`]); then
//! each epoch shuffles the samples with the run's seeded splitmix64 stream
//! ([`crate::rng::SplitMix64`]) and drops the last partial batch, each step feeds a batch
//! (augmented from the same stream), the Dropout noise (from the same stream, see
//! [`super::dropout`]), the learning rate and regularizer strength of that step
//! ([`super::schedule`]) and, for distillation, a teacher's logits. Parameters, optimizer
//! state and BatchNormalization running statistics stay in the runtime from one step to the
//! next.
//!
//! After each epoch the weights go back into the inference model
//! ([`super::TrainStep::inference_model`]), which is written atomically to the output path and
//! evaluated (top-1) on the held-out split with [`crate::eval::evaluate`], and the checkpoint is
//! written. [`TrainOptions::resume`] continues from a checkpoint exactly: same batches, same
//! augmentation, same updates.
//!
//! Not done here: gradient clipping, mixed precision, multi-input models,
//! non-classification losses.

use std::collections::HashMap;
use std::time::Instant;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions};
use crate::ir::{Model, Tensor};
use crate::runtime::ort::CarriedSession;
use crate::runtime::{self, model_inputs, BackendKind, Device, Session};

use super::checkpoint::{self, Position};
use super::loss::Loss;
use super::samples::TrainSet;
use super::schedule::lambda_at;
use super::step::{compile_train_step, StepOptions, TrainStep};

// What the loop's callers use, where they have always found it.
pub use super::checkpoint::{sidecar_path, CHECKPOINT_FORMAT};
pub use super::init::{prepare_model, reinitialize};
pub use super::masks::{masks_from_criterion, masks_from_plan, ScaleMasks};
pub use super::options::{
    Augment, EpochReport, EvalData, Event, LambdaSchedule, Schedule, TrainOptions, TrainReport,
};
pub use super::schedule::lr_at;
pub use crate::rng::SplitMix64;

/// Trains `model` on `train_data` (see the module docs). `eval_data` opens the held-out split
/// for the evaluation after each epoch (none: no evaluation). Only ONNX Runtime runs steps.
pub fn train(
    model: &Model,
    opts: &TrainOptions,
    train_data: Box<dyn Dataset>,
    mut eval_data: Option<EvalData<'_>>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<TrainReport> {
    let start = Instant::now();
    check_options(opts)?;
    runtime::ort::library()?;
    let (prepared, ts) = compile(model, opts)?;
    let input = model_inputs(&prepared)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Usage("the model has no data input".into()))?;
    let description = train_data.describe();
    let set = TrainSet::load(
        &input,
        train_data,
        &opts.preprocess,
        opts.limit,
        opts.augment,
    )?;
    if let Some(w) = set.normalisation_warning() {
        progress(Event::Warning(w));
    }
    let steps_per_epoch = set.len() / opts.batch;
    if steps_per_epoch == 0 {
        return Err(Error::Usage(format!(
            "{} training samples do not fill one batch of {}",
            set.len(),
            opts.batch
        )));
    }
    let mut run = Run::start(&ts, opts, set.len(), steps_per_epoch)?;
    let mut report = TrainReport {
        output: opts.output.clone(),
        checkpoint: sidecar_path(&opts.output),
        data: description,
        samples_per_epoch: steps_per_epoch * opts.batch,
        params: (
            ts.params.len(),
            ts.params.iter().map(|c| c.init.len()).sum(),
        ),
        resumed_from: run.at.epoch,
        epochs: Vec::new(),
        wall_seconds: 0.0,
    };
    for epoch in run.at.epoch + 1..=opts.epochs {
        progress(Event::EpochStart {
            epoch,
            steps: steps_per_epoch,
        });
        let t0 = Instant::now();
        let (loss_sum, acc_sum, lr) = run.epoch(&set, epoch, progress)?;
        let train_seconds = t0.elapsed().as_secs_f64();
        let (eval_top1, eval_samples) = run.finish_epoch(eval_data.as_mut(), progress)?;
        let er = EpochReport {
            epoch,
            steps: steps_per_epoch,
            loss: loss_sum / steps_per_epoch as f64,
            accuracy: acc_sum / steps_per_epoch as f64,
            eval_top1,
            eval_samples,
            lr,
            train_seconds,
            images_per_second: (steps_per_epoch * opts.batch) as f64 / train_seconds.max(1e-9),
        };
        progress(Event::EpochEnd(&er));
        let classes = set.classes();
        if classes > 1 && er.accuracy * classes as f64 <= 1.5 {
            progress(Event::Warning(format!(
                "epoch {epoch}: training accuracy {:.2}% is at chance for {classes} classes \
                 (loss {:.4}): check the input normalisation (--mean/--std, --scale) and the \
                 learning rate (--lr)",
                er.accuracy * 100.0,
                er.loss
            )));
        }
        report.epochs.push(er);
    }
    report.wall_seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Refuses options no run can use.
fn check_options(opts: &TrainOptions) -> Result<()> {
    if opts.epochs == 0 {
        return Err(Error::Usage("--epochs must be at least 1".into()));
    }
    if !(opts.lr.is_finite() && opts.lr > 0.0) {
        return Err(Error::Usage(format!(
            "the learning rate must be > 0, got {}",
            opts.lr
        )));
    }
    let distill = matches!(opts.loss, Loss::Distill { .. });
    if distill != opts.teacher.is_some() {
        return Err(Error::Usage(
            "distillation needs a teacher model, and a teacher needs the distillation loss".into(),
        ));
    }
    Ok(())
}

/// The prepared (and, from scratch, re-initialised) model and its compiled step.
fn compile(model: &Model, opts: &TrainOptions) -> Result<(Model, TrainStep)> {
    let mut prepared = prepare_model(model)?;
    if opts.from_scratch && opts.resume.is_none() {
        reinitialize(&mut prepared, opts.seed)?;
    }
    let step_opts = StepOptions {
        batch: opts.batch,
        loss: opts.loss.clone(),
        optimizer: opts.optimizer.clone(),
        regularizers: opts.regularizers.clone(),
        freeze: opts.freeze.clone(),
        no_decay: opts.no_decay.clone(),
        composed_batch_norm: opts.runtime.device == Device::Cuda,
        weight_masks: opts.weight_masks.clone(),
        gradient_outputs: false,
        blocked_convolutions: (opts.runtime.device == Device::Cpu)
            .then(crate::runtime::ort::channel_block)
            .flatten(),
        kernels: opts.runtime.device == Device::Cpu && crate::runtime::kernels::enabled(),
    };
    let ts = compile_train_step(&prepared, &step_opts)?;
    Ok((prepared, ts))
}

/// A run in progress: the step's session with the carried tensors in it, the teacher, the
/// stream and the position.
struct Run<'a> {
    ts: &'a TrainStep,
    opts: &'a TrainOptions,
    sess: CarriedSession,
    /// The teacher's session and its input name.
    teacher: Option<(Box<dyn Session>, String)>,
    labels: String,
    /// Epochs and steps done, and the stream.
    at: Position,
    /// The sample order, reshuffled every epoch.
    order: Vec<usize>,
    steps_per_epoch: usize,
    total_steps: usize,
    warmup: usize,
    /// Holds the step model's file while the session runs.
    _dir: crate::temp_dir::TempDir,
}

impl<'a> Run<'a> {
    /// Opens the sessions and restores the checkpoint when resuming.
    fn start(
        ts: &'a TrainStep,
        opts: &'a TrainOptions,
        samples: usize,
        steps_per_epoch: usize,
    ) -> Result<Run<'a>> {
        let labels = ts
            .labels
            .clone()
            .ok_or_else(|| Error::Usage("training needs a classification loss".into()))?;
        let dir = crate::temp_dir::TempDir::new("train")?;
        let step_path = dir.path().join("step.onnx");
        ts.model.save(&step_path, &Default::default())?;
        let teacher = match &opts.teacher {
            Some(p) => {
                // Prepared like the student, so that a fixed batch (mnist-8's 1) is freed.
                let tm = prepare_model(&Model::load(p)?)?;
                let tin = model_inputs(&tm)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::Usage(format!("{}: no input", p.display())))?;
                let tpath = dir.path().join("teacher.onnx");
                tm.save(&tpath, &Default::default())?;
                Some((
                    runtime::load_with(BackendKind::Ort, &tpath, &opts.runtime)?,
                    tin.name,
                ))
            }
            None => None,
        };
        let mut carried: Vec<(String, Tensor)> = ts.initial_feed();
        let mut at = Position {
            epoch: 0,
            step: 0,
            rng: SplitMix64(opts.seed),
        };
        if let Some(ck) = &opts.resume {
            at = checkpoint::restore(ck, opts.epochs, &mut carried)?;
        }
        let sess = carried_session(ts, &step_path, opts, carried)?;
        Ok(Run {
            ts,
            opts,
            sess,
            teacher,
            labels,
            at,
            order: (0..samples).collect(),
            steps_per_epoch,
            total_steps: steps_per_epoch * opts.epochs,
            warmup: (opts.warmup_epochs * steps_per_epoch as f64).round() as usize,
            _dir: dir,
        })
    }

    /// Runs epoch `epoch`'s steps; returns the sums of their losses and accuracies and the
    /// last learning rate.
    fn epoch(
        &mut self,
        set: &TrainSet,
        epoch: usize,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<(f64, f64, f64)> {
        let batch = self.opts.batch;
        self.order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
        self.at.rng.shuffle(&mut self.order);
        let t0 = Instant::now();
        let (mut loss_sum, mut acc_sum, mut lr) = (0f64, 0f64, 0f64);
        for k in 0..self.steps_per_epoch {
            let (x, y) = set.batch(&self.order[k * batch..(k + 1) * batch], &mut self.at.rng)?;
            lr = lr_at(
                self.opts.lr,
                self.opts.schedule,
                self.at.step,
                self.total_steps,
                self.warmup,
            );
            let (loss, acc) = self.step(x, y, lr, epoch)?;
            loss_sum += loss;
            acc_sum += acc.unwrap_or(0.0);
            self.at.step += 1;
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            progress(Event::Step {
                done: k + 1,
                loss: loss_sum / (k + 1) as f64,
                accuracy: acc_sum / (k + 1) as f64,
                images_per_second: ((k + 1) * batch) as f64 / secs,
            });
        }
        self.at.epoch = epoch;
        Ok((loss_sum, acc_sum, lr))
    }

    /// One step of epoch `epoch` on the batch `x` with labels `y` at learning rate `lr`: its
    /// loss and batch accuracy. A non-finite loss or update is an error naming the first
    /// non-finite node ([`super::diagnose`]).
    fn step(&mut self, x: Tensor, y: Tensor, lr: f64, epoch: usize) -> Result<(f64, Option<f64>)> {
        let ts = self.ts;
        let mut feed: Vec<(String, Tensor)> = Vec::with_capacity(8);
        if let (Some((tsess, tin)), Some(tname)) = (&mut self.teacher, &ts.teacher) {
            let out = tsess.run(&[(tin.clone(), x.clone())])?;
            let logits = out
                .into_iter()
                .next()
                .ok_or_else(|| Error::Usage("the teacher has no output".into()))?
                .1;
            feed.push((tname.clone(), logits));
        }
        feed.push((ts.x.clone(), x));
        feed.push((self.labels.clone(), y));
        feed.push((ts.lr.clone(), scalar(lr)));
        feed.push((ts.step.clone(), scalar((self.at.step + 1) as f64)));
        let rng = &mut self.at.rng;
        feed.extend(ts.noise_feed(&mut || rng.uniform_f32()));
        if let Some(l) = &ts.l1_lambda {
            let v = lambda_at(self.opts.lambda, self.at.step, self.total_steps);
            feed.push((l.clone(), scalar(v)));
        }
        let outs = self.sess.run(&feed)?;
        let loss = first_f64(&outs, &ts.loss)?;
        let updates = match &ts.update_check {
            Some(c) => first_f64(&outs, c)?,
            None => 0.0,
        };
        if !loss.is_finite() || !updates.is_finite() {
            let what = if loss.is_finite() {
                "an update is not finite".to_string()
            } else {
                format!("the loss is {loss}")
            };
            let mut all = self.sess.fetch_previous()?;
            all.extend(feed);
            let found = super::diagnose::first_non_finite(&ts.model, &all, &self.opts.runtime)?;
            let step = self.at.step + 1;
            return Err(Error::Usage(super::diagnose::message(
                &what,
                epoch,
                step,
                found.as_ref(),
            )));
        }
        let acc = match &ts.accuracy {
            Some(a) => Some(first_f64(&outs, a)?),
            None => None,
        };
        Ok((loss, acc))
    }

    /// After an epoch's steps: writes the inference model, evaluates it when `eval_data`
    /// opens a held-out split, and writes the checkpoint. Returns the top-1 and the samples
    /// evaluated.
    fn finish_epoch(
        &mut self,
        eval_data: Option<&mut EvalData<'_>>,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<(Option<f64>, usize)> {
        let opts = self.opts;
        let carried = self.sess.fetch()?;
        let inf = self.ts.inference_model(&carried)?;
        inf.save(&opts.output, &Default::default())?;
        let (mut eval_top1, mut eval_samples) = (None, 0);
        if let Some(open) = eval_data {
            let eval_opts = EvalOptions {
                backend: BackendKind::Ort,
                runtime: opts.runtime,
                batch: Some(opts.batch.min(256)),
                limit: opts.eval_limit,
            };
            let r = evaluate(
                &opts.output,
                None,
                open()?,
                &opts.preprocess,
                &eval_opts,
                &mut |d, n| progress(Event::Eval(d, n)),
            )?;
            eval_top1 = r.accuracy.map(|a| a.top1);
            eval_samples = r.samples;
        }
        checkpoint::save(&opts.output, self.at, opts.seed, eval_top1, &carried)?;
        Ok((eval_top1, eval_samples))
    }
}

/// The step's session with the `carried` tensors bound: weights, optimizer state and running
/// statistics stay in the runtime between steps.
fn carried_session(
    ts: &TrainStep,
    step_path: &std::path::Path,
    opts: &TrainOptions,
    carried: Vec<(String, Tensor)>,
) -> Result<CarriedSession> {
    let index: HashMap<&str, usize> = carried
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), i))
        .collect();
    let mut pairs: Vec<(String, String, Tensor)> = Vec::with_capacity(carried.len());
    for c in ts
        .params
        .iter()
        .chain(ts.state.iter().map(|(_, _, c)| c))
        .chain(&ts.running)
    {
        if let Some(&i) = index.get(c.input.as_str()) {
            pairs.push((c.input.clone(), c.output.clone(), carried[i].1.clone()));
        }
    }
    if pairs.len() != carried.len() {
        return Err(Error::Graph(format!(
            "{} carried tensors, {} with an update output",
            carried.len(),
            pairs.len()
        )));
    }
    CarriedSession::new(step_path, &opts.runtime, &pairs)
}

fn scalar(v: f64) -> Tensor {
    Tensor::from_f32(vec![], &[v as f32])
}

fn first_f64(outs: &[(String, Tensor)], name: &str) -> Result<f64> {
    outs.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, t)| t.to_f64_vec())
        .and_then(|v| v.first().copied())
        .ok_or_else(|| Error::Graph(format!("the step returned no '{name}'")))
}
