//! The training loop: compiles a train step ([`super::compile_train_step`]), runs it in ONNX
//! Runtime batch after batch, and writes the trained inference model.
//!
//! The host side of training lives here: the training split is read once, preprocessed, and
//! held in memory as float32 (60k MNIST digits: 188 MB; 50k CIFAR images: 614 MB); each epoch
//! shuffles it with a seeded splitmix64 stream and drops the last partial batch; image batches
//! are augmented (random crop from a 4-pixel padding, whose pixels are raw zeros, and a
//! horizontal flip); Dropout masks come from the same stream (uniform noise fed to the step,
//! see [`super::dropout`]); the learning rate (linear warm-up, then cosine, step or constant)
//! and the regularizer strength (constant, or growing linearly from 0) are computed per step
//! and fed as scalars. Parameters, optimizer state and BatchNormalization running statistics are
//! carried from one step's outputs to the next step's inputs.
//!
//! After each epoch the weights go back into the inference model
//! ([`super::TrainStep::inference_model`]), which is written atomically to the output path and
//! evaluated (top-1) on the held-out split with [`crate::eval::evaluate`]. A checkpoint
//! accompanies it:
//!
//! * `OUT.state-eN.onnx`: every carried tensor (parameters, optimizer state, running
//!   statistics) as an initializer of an otherwise empty ONNX graph, named by its step input;
//! * `OUT.train.json`: the sidecar (`"format": "lopper-train/1"`) with the epoch, the global
//!   step, the splitmix64 state, the seed and the state file's name (relative to the sidecar).
//!
//! Each file is written atomically, the state file under a new name per epoch and the sidecar
//! last (then the previous state file is removed), so an interrupted run leaves the previous
//! checkpoint usable. [`TrainOptions::resume`] continues from a sidecar exactly: same batches,
//! same augmentation, same updates.
//!
//! Not done here: gradient clipping, mixed precision, I/O binding (every step copies the
//! carried tensors between host and runtime), multi-input models, non-classification losses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::{select, Batches, Dataset, Layout, Preprocess, Transform};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions};
use crate::ir::{DType, Dim, Fact, Model, Tensor};
use crate::onnx::proto::{GraphProto, ModelProto, OperatorSetIdProto};
use crate::onnx::save::write_atomic;
use crate::runtime::{self, model_inputs, BackendKind, RuntimeOptions};

use super::loss::Loss;
use super::optim::Optimizer;
use super::regularize::Regularizer;
use super::step::{compile_train_step, StepOptions};

/// The sidecar's format tag.
pub const CHECKPOINT_FORMAT: &str = "lopper-train/1";

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
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            crop: true,
            flip: true,
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
    /// Re-initialise every trainable weight before training (see [`reinitialize`]).
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

/// The outcome of [`train`].
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
}

/// Opens the held-out split afresh (evaluation consumes a dataset).
pub type EvalData<'a> = &'a mut dyn FnMut() -> Result<Box<dyn Dataset>>;

/// A splitmix64 stream: the run's only source of randomness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` (53 bits).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, 1)` as float32 (24 bits: every value exact, never 1).
    pub fn uniform_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u32 << 24) as f32
    }

    /// Uniform in `0..n` (`n` > 0; multiply-shift, negligible bias).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Shuffles `v` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// The learning rate at step `t` (from 0) of `total`, with `warmup` warm-up steps.
pub fn lr_at(base: f64, schedule: Schedule, t: usize, total: usize, warmup: usize) -> f64 {
    if t < warmup {
        return base * (t + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let p = (t - warmup) as f64 / span;
    match schedule {
        Schedule::Constant => base,
        Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
        Schedule::Step if p >= 0.75 => base * 0.01,
        Schedule::Step if p >= 0.5 => base * 0.1,
        Schedule::Step => base,
    }
}

/// Makes `model` trainable by the step compiler: folds constant subgraphs (so that reshaped
/// weights become initializers; BatchNormalization and Dropout are kept) and frees a fixed
/// batch size of the data input. It does not rewrite shapes hard-coded in the graph: models
/// with those fail later, in the step compiler's shape inference.
pub fn prepare_model(model: &Model) -> Result<Model> {
    let mut m = model.clone();
    crate::passes::simplify(
        &mut m,
        &crate::passes::SimplifyOptions {
            keep_batch_norm: true,
            keep_dropout: true,
            verify: false,
        },
    )?;
    let g = &mut m.graph;
    let data: Vec<_> = g
        .inputs
        .iter()
        .copied()
        .filter(|v| g.is_runtime_input(*v))
        .collect();
    let free = |g: &mut crate::ir::Graph, v| {
        let Some(decl) = g.decl_mut(v) else {
            return false;
        };
        let Some(ty) = decl.r#type.as_ref() else {
            return false;
        };
        let mut fact = Fact::from_type(ty);
        match fact.shape.as_mut().and_then(|s| s.first_mut()) {
            Some(d0) if matches!(d0, Dim::Known(_)) => {
                *d0 = Dim::Sym("N".into());
                decl.r#type = Some(fact.to_type());
                true
            }
            _ => false,
        }
    };
    if let [x] = data[..] {
        if free(g, x) {
            // Declared shapes of intermediates and outputs carry the old batch: drop the
            // former (shape inference recomputes them), free the latter's first dimension.
            for v in std::mem::take(&mut g.value_info) {
                g.values_mut(v).decl = None;
            }
            for v in g.outputs.clone() {
                free(g, v);
            }
        }
    }
    Ok(m)
}

/// Re-initialises every weight a step would train, seeded, as each op asks
/// ([`crate::ops::Op::fresh_init`]): Kaiming-normal (fan-in, gain √2) for Conv/ConvTranspose/
/// Gemm/MatMul weights (gain 1 for the last weight when it is fully connected: the classifier),
/// zeros for their biases, γ = 1, β = 0, mean 0 and variance 1 for BatchNormalization; and
/// zeros for initializers added (`Add`) to the output of a Conv, Gemm or MatMul. Nodes are
/// visited in topological order and an initializer keeps the first rule it gets. Float32
/// initializers only; anything else, and inputs of ops with no opinion, is left as it is.
pub fn reinitialize(model: &mut Model, seed: u64) -> Result<()> {
    use crate::ops::FreshInit;
    let g = &mut model.graph;
    let mut rng = SplitMix64(seed ^ 0x5EED_1A17_0000_0001);
    let mut done = std::collections::HashSet::new();
    let order = g.topo_order()?;
    let mut plan: Vec<(crate::ir::ValueId, FreshInit)> = Vec::new();
    for n in order {
        let node = g.node(n);
        let weight = |port: usize| {
            node.input(port)
                .and_then(|v| g.init(v).map(|t| (v, t)))
                .filter(|(_, t)| t.dtype() == DType::F32)
        };
        if node.op_type == "Add" {
            // A bias added to a linear layer's output.
            for port in [0, 1] {
                let other = node.input(1 - port);
                let after_linear = other
                    .and_then(|o| g.value(o).producer)
                    .is_some_and(|(p, _)| {
                        matches!(g.node(p).op_type.as_str(), "Conv" | "Gemm" | "MatMul")
                    });
                if let Some((v, _)) = weight(port).filter(|_| after_linear) {
                    plan.push((v, FreshInit::Fill(0.0)));
                }
            }
            continue;
        }
        let Some(op) = crate::ops::lookup(&node.domain, &node.op_type) else {
            continue;
        };
        let shapes: Vec<Option<&[usize]>> = (0..node.inputs.len())
            .map(|p| weight(p).map(|(_, t)| t.shape()))
            .collect();
        for (port, rule) in op.fresh_init(node, &shapes) {
            // Ops may only name float32 initializers.
            if let Some((v, _)) = weight(port) {
                plan.push((v, rule));
            }
        }
    }
    // The classifier (the last Kaiming weight, when fully connected) gets gain 1: no ReLU
    // follows it.
    let last = plan
        .iter()
        .rposition(|(_, r)| matches!(r, FreshInit::Kaiming { .. }))
        .filter(|&k| matches!(plan[k].1, FreshInit::Kaiming { dense: true, .. }));
    for (k, (v, rule)) in plan.into_iter().enumerate() {
        if !done.insert(v) {
            continue;
        }
        let Some(old) = g.init(v) else { continue };
        let shape = old.shape().to_vec();
        let n = old.len();
        let values: Vec<f32> = match rule {
            FreshInit::Fill(x) => vec![x; n],
            FreshInit::Kaiming { fan_in, .. } => {
                let gain = if Some(k) == last { 1.0 } else { 2.0 };
                let std = (gain / fan_in.max(1) as f64).sqrt();
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            }
        };
        g.set_init(v, Tensor::from_f32(shape, &values));
    }
    Ok(())
}

/// Per-scale masks for [`Regularizer::MaskedL1Gamma`]: BatchNormalization scale name → one
/// 0/1 entry per channel.
pub type ScaleMasks = std::collections::BTreeMap<String, Vec<f32>>;

/// Masks for [`Regularizer::MaskedL1Gamma`] from a plan file made for `model`: entry `c` of a
/// BatchNormalization scale is 1 when the plan removes channel `c` of the model, in any of
/// its steps, else 0; scales losing no channel get no entry. The plan is replayed on a copy of
/// `model` the way `lopper prune --plan` does (simplified with BatchNormalization kept,
/// re-analysed before every step); the channels a later step removes are traced back to the
/// model's own through the earlier steps' removals (which keep the order of the channels
/// left). `model` itself is not changed. Errors when the plan was made for another model or
/// does not fit it, when a scale cannot be followed through a step, or when no scale loses a
/// channel.
pub fn masks_from_plan(model: &Model, plan: &crate::plan::file::PlanFile) -> Result<ScaleMasks> {
    plan.check_model(model)?;
    let mut m = model.clone();
    let steps = plan.steps.len();
    // Per scale: its current positions → the model's channels, and its mask.
    let mut origin: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    let mut masks = ScaleMasks::new();
    for step in 0..steps {
        let groups = crate::prune::analyse(&mut m)?;
        if step == 0 {
            for (name, len) in bn_scales(&m) {
                origin.insert(name.clone(), (0..len).collect());
                masks.insert(name, vec![0.0; len]);
            }
        }
        let classes = plan.step_classes(step, &groups)?;
        let removed = removed_scale_channels(&m, &groups, &classes);
        for (name, flags) in &removed {
            let (Some(orig), Some(mask)) = (origin.get(name), masks.get_mut(name)) else {
                continue;
            };
            for (&o, _) in orig.iter().zip(flags).filter(|(_, r)| **r) {
                if let Some(x) = mask.get_mut(o) {
                    *x = 1.0;
                }
            }
        }
        if step + 1 == steps {
            break;
        }
        let shapes = crate::analysis::infer_shapes(&m)?;
        crate::passes::remove_channels(&mut m, &groups, &shapes, &classes)?;
        let now = bn_scales(&m);
        for (name, orig) in origin.iter_mut() {
            if let Some(flags) = removed.get(name) {
                let kept = orig.iter().zip(flags).filter(|(_, r)| !**r);
                *orig = kept.map(|(o, _)| *o).collect();
            }
            if now.get(name) != Some(&orig.len()) {
                return Err(Error::Usage(format!(
                    "plan step {}: BatchNormalization scale '{name}' cannot be followed \
                     through the removal (it is gone or has an unexpected size)",
                    step + 1
                )));
            }
        }
    }
    masks.retain(|_, m| m.iter().any(|&v| v > 0.0));
    if masks.is_empty() {
        return Err(Error::Usage(
            "the plan removes no channel of any BatchNormalization scale: masked L1 would do \
             nothing"
                .into(),
        ));
    }
    Ok(masks)
}

/// Masks for [`Regularizer::MaskedL1Gamma`] on the channels `lopper prune` would remove with
/// `scored` (criterion, allocation, rounds; see [`crate::prune::Scored::new`] for its
/// defaults): the pruning pipeline runs on a copy of `model`, without the equivalence check,
/// and its plan goes through [`masks_from_plan`]. `model` keeps every channel. Criteria that
/// need calibration data and latency targets are refused: make a plan with `lopper prune
/// --save-plan` for those.
pub fn masks_from_criterion(model: &Model, scored: &crate::prune::Scored) -> Result<ScaleMasks> {
    use crate::plan::allocate::{Amount, Budget};
    if scored.criterion.needs_data() {
        return Err(Error::Usage(format!(
            "masked L1: criterion '{}' needs calibration data; make a plan with `lopper prune \
             --criterion {} --data ... --save-plan PLAN.json` and pass masked-l1=PLAN.json:W",
            scored.criterion, scored.criterion
        )));
    }
    if matches!(scored.allocate.amount, Amount::Target(Budget::Latency(_))) {
        return Err(Error::Usage(
            "masked L1: a latency target needs timing runs; make a plan with `lopper prune \
             --target latency=R --save-plan PLAN.json` and pass masked-l1=PLAN.json:W"
                .into(),
        ));
    }
    let mut copy = model.clone();
    let opts = crate::prune::PruneOptions {
        selection: crate::prune::Selection::Scored(scored.clone()),
        verify_with: Vec::new(),
        tolerance: 0.0,
    };
    let report = crate::prune::prune(&mut copy, &opts)?;
    if report.removed == 0 {
        return Err(Error::Usage(format!(
            "masked L1: criterion '{}' with this amount removes no channel",
            scored.criterion
        )));
    }
    masks_from_plan(model, &report.plan)
}

/// Every BatchNormalization scale held in an initializer: name → channels.
fn bn_scales(model: &Model) -> std::collections::BTreeMap<String, usize> {
    let g = &model.graph;
    g.node_ids()
        .filter_map(|n| {
            let node = g.node(n);
            node.input(crate::ops::channel_scale_input(node)?)
        })
        .filter_map(|v| g.init(v).map(|t| (g.value(v).name.clone(), t.len())))
        .collect()
}

/// Per BatchNormalization scale (by name), which of its entries belong to the `classes` of
/// `groups` (an analysis of `model`). Scales without such entries are left out.
fn removed_scale_channels(
    model: &Model,
    groups: &crate::analysis::ChannelGroups,
    classes: &[usize],
) -> std::collections::BTreeMap<String, Vec<bool>> {
    use crate::ops::channel::{Map, Port};
    let removed: std::collections::HashSet<usize> = classes.iter().copied().collect();
    let g = &model.graph;
    let mut out = std::collections::BTreeMap::new();
    for m in &groups.members {
        let node = g.node(m.node);
        if crate::ops::channel_scale_input(node) != Some(m.input) || m.axis != 0 {
            continue;
        }
        let Some(gamma) = node.input(m.input) else {
            continue;
        };
        let Some(len) = g.init(gamma).map(Tensor::len) else {
            continue;
        };
        let slot_value = match m.slot.port {
            Port::In(p) => node.input(p),
            Port::Out(p) => node.output(p),
        };
        let Some(atoms) = slot_value.and_then(|v| groups.slots.get(&(v, m.slot.axis))) else {
            continue;
        };
        let flags = out
            .entry(g.value(gamma).name.clone())
            .or_insert_with(|| vec![false; len]);
        for (pos, &atom) in atoms.iter().enumerate() {
            let idx = match &m.map {
                Map::Identity => Some(pos),
                Map::Index(ix) => ix.get(pos).copied().flatten(),
            };
            let class = groups.class_of.get(atom).copied();
            if let (Some(i), Some(c)) = (idx, class) {
                if let (Some(f), true) = (flags.get_mut(i), removed.contains(&c)) {
                    *f = true;
                }
            }
        }
    }
    out.retain(|_, f: &mut Vec<bool>| f.iter().any(|&x| x));
    out
}

/// The training split, preprocessed, in memory.
struct Samples {
    x: Vec<f32>,
    y: Vec<i64>,
    len: usize,
    sample: usize,
}

fn load_samples(ds: Box<dyn Dataset>, t: &Transform, limit: Option<usize>) -> Result<Samples> {
    let labels = ds
        .labels()
        .ok_or_else(|| Error::Usage(format!("training needs labels: {}", ds.describe())))?;
    if labels.iter().any(|&l| l < 0) {
        return Err(Error::Usage(
            "negative class labels cannot be trained on".into(),
        ));
    }
    let indices = select(ds.len(), limit);
    let sample = t.sample_len();
    let mut x = Vec::with_capacity(indices.len() * sample);
    let mut y = Vec::with_capacity(indices.len());
    for b in Batches::new(ds, t.clone(), indices, 256) {
        let b = b?;
        x.extend_from_slice(&b.values);
        y.extend(b.labels.unwrap_or_default());
    }
    let len = y.len();
    if x.len() != len * sample {
        return Err(Error::Usage(
            "the data loader returned samples without labels".into(),
        ));
    }
    Ok(Samples { x, y, len, sample })
}

/// Fills `out` with the sample `src`, augmented: `geometry` is `(h, w, c, layout)`, `zero` the
/// preprocessed image of raw zeros (the padding).
#[allow(clippy::too_many_arguments)]
fn augment_into(
    src: &[f32],
    zero: &[f32],
    out: &mut [f32],
    (h, w, c, layout): (usize, usize, usize, Layout),
    aug: Augment,
    rng: &mut SplitMix64,
) {
    const PAD: usize = 4;
    let (oy, ox) = if aug.crop {
        (rng.below(2 * PAD + 1), rng.below(2 * PAD + 1))
    } else {
        (PAD, PAD)
    };
    let flip = aug.flip && rng.below(2) == 1;
    let at = |y: usize, x: usize, ch: usize| match layout {
        Layout::Nchw => (ch * h + y) * w + x,
        Layout::Nhwc => (y * w + x) * c + ch,
    };
    for y in 0..h {
        for x in 0..w {
            let xs = if flip { w - 1 - x } else { x };
            let (sy, sx) = ((y + oy).wrapping_sub(PAD), (xs + ox).wrapping_sub(PAD));
            let inside = sy < h && sx < w;
            for ch in 0..c {
                let o = at(y, x, ch);
                out[o] = if inside { src[at(sy, sx, ch)] } else { zero[o] };
            }
        }
    }
}

/// The sidecar of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Sidecar {
    format: String,
    /// Epochs completed.
    epoch: usize,
    /// Steps completed (the next step feeds `step + 1`).
    step: usize,
    /// The splitmix64 state after `epoch` epochs.
    rng: u64,
    seed: u64,
    /// The state file, relative to the sidecar's folder.
    state: String,
    /// The inference model written with it.
    model: String,
    /// Top-1 on the held-out split after this epoch.
    eval_top1: Option<f64>,
}

/// `OUT.train.json` for the output `OUT`.
pub fn sidecar_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".train.json");
    PathBuf::from(s)
}

fn write_state(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let proto = ModelProto {
        ir_version: Some(8),
        producer_name: Some("lopper train (checkpoint state)".into()),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            name: Some("train_state".into()),
            initializer: tensors.iter().map(|(n, t)| t.to_proto(n)).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    crate::onnx::save_model(&proto, path, &Default::default())
}

fn read_state(path: &Path) -> Result<HashMap<String, Tensor>> {
    let proto = crate::onnx::load_model(path)?;
    let graph = proto
        .graph
        .ok_or_else(|| Error::data(path.display(), "no graph in the state file"))?;
    let mut out = HashMap::new();
    for t in &graph.initializer {
        out.insert(t.name().to_string(), Tensor::from_proto(t)?);
    }
    Ok(out)
}

/// Reads a checkpoint: the sidecar (given, or next to the output model given) and its state.
fn read_checkpoint(path: &Path) -> Result<(Sidecar, HashMap<String, Tensor>)> {
    let side = if path.extension().is_some_and(|e| e == "json") {
        path.to_path_buf()
    } else {
        sidecar_path(path)
    };
    let text = std::fs::read_to_string(&side).map_err(|e| Error::io(&side, e))?;
    let sc: Sidecar = serde_json::from_str(&text)
        .map_err(|e| Error::data(side.display(), format!("not a checkpoint sidecar: {e}")))?;
    if sc.format != CHECKPOINT_FORMAT {
        return Err(Error::data(
            side.display(),
            format!("format '{}', expected '{CHECKPOINT_FORMAT}'", sc.format),
        ));
    }
    let dir = side.parent().unwrap_or(Path::new("."));
    let state = read_state(&dir.join(&sc.state))?;
    Ok((sc, state))
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
    runtime::ort::library()?;

    // Model and step.
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
    };
    let ts = compile_train_step(&prepared, &step_opts)?;
    let labels_in = ts
        .labels
        .clone()
        .ok_or_else(|| Error::Usage("training needs a classification loss".into()))?;
    let acc_out = ts.accuracy.clone();

    // Data.
    let input = model_inputs(&prepared)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Usage("the model has no data input".into()))?;
    let description = train_data.describe();
    let t = Transform::plan(
        &input,
        train_data.sample_shape(),
        train_data.bytes(),
        &opts.preprocess,
    )?;
    let zero = {
        let shape = train_data.sample_shape().clone();
        let raw = vec![0f32; shape.len()];
        let mut out = vec![0f32; t.sample_len()];
        t.apply(&raw, &shape, &mut out, &mut Default::default())
            .map_err(|e| Error::Usage(format!("preprocessing: {e}")))?;
        out
    };
    let samples = load_samples(train_data, &t, opts.limit)?;
    let steps_per_epoch = samples.len / opts.batch;
    if steps_per_epoch == 0 {
        return Err(Error::Usage(format!(
            "{} training samples do not fill one batch of {}",
            samples.len, opts.batch
        )));
    }
    let geometry = t
        .image_geometry()
        .filter(|_| opts.augment.crop || opts.augment.flip);

    // Runtime.
    let dir = crate::temp_dir::TempDir::new("train")?;
    let step_path = dir.path().join("step.onnx");
    ts.model.save(&step_path, &Default::default())?;
    let mut teacher = match &opts.teacher {
        Some(p) => {
            let tm = Model::load(p)?;
            let tin = model_inputs(&tm)?
                .into_iter()
                .next()
                .ok_or_else(|| Error::Usage(format!("{}: no input", p.display())))?;
            Some((
                runtime::load_with(BackendKind::Ort, p, &opts.runtime)?,
                tin.name,
            ))
        }
        None => None,
    };

    // Carried tensors, step counter, random stream.
    let mut carried: Vec<(String, Tensor)> = ts.initial_feed();
    let mut rng = SplitMix64(opts.seed);
    let (mut epoch0, mut step) = (0usize, 0usize);
    if let Some(ck) = &opts.resume {
        let (sc, mut state) = read_checkpoint(ck)?;
        if sc.epoch >= opts.epochs {
            return Err(Error::Usage(format!(
                "the checkpoint is at epoch {}; pass --epochs above it to continue",
                sc.epoch
            )));
        }
        for (name, t) in carried.iter_mut() {
            let v = state.remove(name.as_str()).ok_or_else(|| {
                Error::data(
                    ck.display(),
                    format!(
                        "the checkpoint has no tensor '{name}' (made with another model, \
                         optimizer or --freeze?)"
                    ),
                )
            })?;
            if v.shape() != t.shape() || v.dtype() != t.dtype() {
                return Err(Error::data(
                    ck.display(),
                    format!(
                        "'{name}' is {} {:?} in the checkpoint, the step wants {} {:?}",
                        v.dtype(),
                        v.shape(),
                        t.dtype(),
                        t.shape()
                    ),
                ));
            }
            *t = v;
        }
        (epoch0, step, rng) = (sc.epoch, sc.step, SplitMix64(sc.rng));
    }
    let index: HashMap<String, usize> = carried
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.clone(), i))
        .collect();
    // Weights, optimizer state and running statistics stay in the runtime between steps.
    let mut pairs: Vec<(String, String, Tensor)> = Vec::with_capacity(carried.len());
    for c in ts
        .params
        .iter()
        .chain(ts.state.iter().map(|(_, _, c)| c))
        .chain(&ts.running)
    {
        if let Some(&i) = index.get(&c.input) {
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
    let mut sess = crate::runtime::ort::CarriedSession::new(&step_path, &opts.runtime, &pairs)?;
    drop(pairs);

    let total_steps = steps_per_epoch * opts.epochs;
    let warmup = (opts.warmup_epochs * steps_per_epoch as f64).round() as usize;
    let param_count = (
        ts.params.len(),
        ts.params.iter().map(|c| c.init.len()).sum(),
    );
    let side = sidecar_path(&opts.output);
    let mut report = TrainReport {
        output: opts.output.clone(),
        checkpoint: side.clone(),
        data: description,
        samples_per_epoch: steps_per_epoch * opts.batch,
        params: param_count,
        resumed_from: epoch0,
        epochs: Vec::new(),
        wall_seconds: 0.0,
    };
    let eval_opts = EvalOptions {
        backend: BackendKind::Ort,
        runtime: opts.runtime,
        batch: Some(opts.batch.min(256)),
        limit: opts.eval_limit,
    };

    let sample = samples.sample;
    let mut xbuf = vec![0f32; opts.batch * sample];
    let mut ybuf = vec![0i64; opts.batch];
    let mut order: Vec<usize> = (0..samples.len).collect();
    for epoch in epoch0 + 1..=opts.epochs {
        progress(Event::EpochStart {
            epoch,
            steps: steps_per_epoch,
        });
        order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
        rng.shuffle(&mut order);
        let t0 = Instant::now();
        let (mut loss_sum, mut acc_sum, mut lr) = (0f64, 0f64, 0f64);
        for k in 0..steps_per_epoch {
            for (j, &i) in order[k * opts.batch..(k + 1) * opts.batch]
                .iter()
                .enumerate()
            {
                let src = &samples.x[i * sample..(i + 1) * sample];
                let dst = &mut xbuf[j * sample..(j + 1) * sample];
                match geometry {
                    Some(geo) => augment_into(src, &zero, dst, geo, opts.augment, &mut rng),
                    None => dst.copy_from_slice(src),
                }
                ybuf[j] = samples.y[i];
            }
            let x = t.tensor(&xbuf, opts.batch)?;
            lr = lr_at(opts.lr, opts.schedule, step, total_steps, warmup);
            let mut feed: Vec<(String, Tensor)> = Vec::with_capacity(8);
            if let (Some((tsess, tin)), Some(tname)) = (&mut teacher, &ts.teacher) {
                let out = tsess.run(&[(tin.clone(), x.clone())])?;
                let logits = out
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::Usage("the teacher has no output".into()))?
                    .1;
                feed.push((tname.clone(), logits));
            }
            feed.push((ts.x.clone(), x));
            feed.push((labels_in.clone(), Tensor::from_i64(vec![opts.batch], &ybuf)));
            feed.push((ts.lr.clone(), scalar(lr)));
            feed.push((ts.step.clone(), scalar((step + 1) as f64)));
            feed.extend(ts.noise_feed(&mut || rng.uniform_f32()));
            if let Some(l) = &ts.l1_lambda {
                let v = match opts.lambda {
                    LambdaSchedule::Constant => 1.0,
                    LambdaSchedule::Augmented => step as f64 / total_steps.max(1) as f64,
                };
                feed.push((l.clone(), scalar(v)));
            }
            let outs = sess.run(&feed)?;
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
                let mut all = sess.fetch_previous()?;
                all.extend(feed);
                let found = super::diagnose::first_non_finite(&ts.model, &all, &opts.runtime)?;
                let msg = super::diagnose::message(&what, epoch, step + 1, found.as_ref());
                return Err(Error::Usage(msg));
            }
            loss_sum += loss;
            if let Some(a) = &acc_out {
                acc_sum += first_f64(&outs, a)?;
            }
            step += 1;
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            progress(Event::Step {
                done: k + 1,
                loss: loss_sum / (k + 1) as f64,
                accuracy: acc_sum / (k + 1) as f64,
                images_per_second: ((k + 1) * opts.batch) as f64 / secs,
            });
        }
        let train_seconds = t0.elapsed().as_secs_f64();

        // Inference model, evaluation, checkpoint.
        carried = sess.fetch()?;
        let inf = ts.inference_model(&carried)?;
        inf.save(&opts.output, &Default::default())?;
        let (mut eval_top1, mut eval_samples) = (None, 0);
        if let Some(open) = eval_data.as_mut() {
            let ds = open()?;
            let r = evaluate(
                &opts.output,
                None,
                ds,
                &opts.preprocess,
                &eval_opts,
                &mut |d, n| progress(Event::Eval(d, n)),
            )?;
            eval_top1 = r.accuracy.map(|a| a.top1);
            eval_samples = r.samples;
        }
        let state_name = format!(
            "{}.state-e{epoch}.onnx",
            opts.output
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "trained.onnx".into())
        );
        let dir_out = side.parent().unwrap_or(Path::new("."));
        write_state(&dir_out.join(&state_name), &carried)?;
        let previous = read_checkpoint(&side).ok().map(|(s, _)| s.state);
        let sc = Sidecar {
            format: CHECKPOINT_FORMAT.into(),
            epoch,
            step,
            rng: rng.0,
            seed: opts.seed,
            state: state_name.clone(),
            model: opts
                .output
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            eval_top1,
        };
        let json = serde_json::to_string_pretty(&sc)
            .map_err(|e| Error::Usage(format!("writing the checkpoint sidecar: {e}")))?;
        write_atomic(&side, json.as_bytes())?;
        if let Some(prev) = previous.filter(|p| *p != state_name) {
            let _ = std::fs::remove_file(dir_out.join(prev));
        }
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
        report.epochs.push(er);
    }
    report.wall_seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_the_reference_stream() {
        // First outputs of splitmix64 seeded with 0 (Vigna's reference implementation).
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut v: Vec<usize> = (0..50).collect();
        SplitMix64(7).shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }

    /// The masks of a plan, one round or several, are exactly the scale channels pruning
    /// removes: replaying the plan leaves every scale with its unmasked entries, in order. The
    /// criterion masks are those of the plan `lopper prune` makes with the same selection.
    #[test]
    fn masks_are_the_channels_pruning_removes() {
        use crate::analysis::importance::CriterionKind;
        use crate::plan::allocate::{Amount, Budget};
        use crate::prune::{prune, PruneOptions, Scored, Selection};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/models/pretrained/resnet20_cifar10.bn.onnx");
        if !path.is_file() {
            eprintln!("NOTICE: skipping: no shared models");
            return;
        }
        let model = Model::load(&path).unwrap();
        let mut three_rounds = Scored::new(CriterionKind::L1, Amount::Ratio(0.5));
        three_rounds.steps = 3;
        let cases = [
            Scored::new(CriterionKind::L1, Amount::Ratio(0.3)),
            three_rounds,
            Scored::new(CriterionKind::BnScale, Amount::Target(Budget::Flops(0.5))),
        ];
        for scored in cases {
            let mut pruned = model.clone();
            let opts = PruneOptions {
                selection: Selection::Scored(scored.clone()),
                verify_with: Vec::new(),
                tolerance: 0.0,
            };
            let report = prune(&mut pruned, &opts).unwrap();
            assert_eq!(report.plan.steps.len(), scored.steps);
            let masks = masks_from_plan(&model, &report.plan).unwrap();
            let value = |m: &Model, name: &str| {
                let v = m.graph.value_by_name(name).unwrap();
                m.graph.init(v).unwrap().to_f64_vec().unwrap()
            };
            let scales = bn_scales(&pruned);
            assert_eq!(scales.len(), 19);
            let mut masked = 0;
            for name in scales.keys() {
                let before = value(&model, name);
                let mask = masks.get(name).cloned().unwrap_or(vec![0.0; before.len()]);
                assert_eq!(mask.len(), before.len(), "{name}");
                masked += mask.iter().filter(|&&m| m > 0.0).count();
                let kept: Vec<f64> = before
                    .iter()
                    .zip(&mask)
                    .filter(|(_, &m)| m == 0.0)
                    .map(|(v, _)| *v)
                    .collect();
                assert_eq!(value(&pruned, name), kept, "{name}, {scored:?}");
            }
            eprintln!(
                "{} {:?}, {} round(s): {masked} scale entries in {} scales masked",
                scored.criterion,
                scored.allocate.amount,
                scored.steps,
                masks.len()
            );
            assert!(masked > 0);
            assert_eq!(masks_from_criterion(&model, &scored).unwrap(), masks);
        }
        // A model without BatchNormalization: nothing to mask, said so.
        let mnist = path.with_file_name("mnist-8.onnx");
        let scored = Scored::new(CriterionKind::L1, Amount::Ratio(0.5));
        let err = masks_from_criterion(&Model::load(&mnist).unwrap(), &scored).unwrap_err();
        assert!(err
            .to_string()
            .contains("no channel of any BatchNormalization"));
    }

    #[test]
    fn schedules() {
        let c = |t| lr_at(1.0, Schedule::Cosine, t, 110, 10);
        assert!((c(0) - 0.1).abs() < 1e-12 && (c(9) - 1.0).abs() < 1e-12);
        assert!((c(10) - 1.0).abs() < 1e-12 && (c(60) - 0.5).abs() < 1e-12);
        assert!(c(109) < 0.001);
        let s = |t| lr_at(1.0, Schedule::Step, t, 100, 0);
        assert_eq!((s(49), s(50), s(75)), (1.0, 0.1, 0.01));
        assert_eq!(lr_at(0.3, Schedule::Constant, 99, 100, 0), 0.3);
    }

    #[test]
    fn augmentation_crops_and_flips() {
        // A 2-channel 3x3 NCHW image; padding value 9.
        let src: Vec<f32> = (0..18).map(|v| v as f32).collect();
        let zero = vec![9f32; 18];
        let mut out = vec![0f32; 18];
        let none = Augment {
            crop: false,
            flip: false,
        };
        let mut rng = SplitMix64(1);
        augment_into(
            &src,
            &zero,
            &mut out,
            (3, 3, 2, Layout::Nchw),
            none,
            &mut rng,
        );
        assert_eq!(out, src);
        let flip = Augment {
            crop: false,
            flip: true,
        };
        let mut seen = [false; 2];
        for s in 0..20 {
            augment_into(
                &src,
                &zero,
                &mut out,
                (3, 3, 2, Layout::Nchw),
                flip,
                &mut SplitMix64(s),
            );
            let flipped = out[0] == 2.0 && out[9] == 11.0 && out[2] == 0.0;
            assert!(flipped || out == src);
            seen[usize::from(flipped)] = true;
        }
        assert_eq!(seen, [true, true]);
        // Crops shift by at most 4 and fill with the padding.
        let crop = Augment {
            crop: true,
            flip: false,
        };
        for s in 0..20 {
            augment_into(
                &src,
                &zero,
                &mut out,
                (3, 3, 2, Layout::Nhwc),
                crop,
                &mut SplitMix64(s),
            );
            assert!(out.iter().all(|v| *v == 9.0 || src.contains(v)));
        }
    }
}
