//! Compiles an inference model into one ONNX *train step*: forward with BatchNormalization in
//! training mode, loss, backward ([`super::gradients`]), regularizer terms and optimizer
//! update, all standard ops (opset ≥ 17) that ONNX Runtime runs, except that with
//! [`StepOptions::blocked_convolutions`] the convolutions become ONNX Runtime's
//! channel-blocked CPU kernels ([`super::block_convolutions`]).
//!
//! **Parameters** are the float32 initializers of rank ≥ 1 whose every use is a weight input as
//! its op declares it ([`crate::ops::Op::weight_input`]: Conv/ConvTranspose W and B, Gemm and
//! MatMul operands, normalisation scale and bias, operands of Add/Sub/Mul/Div, PRelu slope),
//! minus those matched by [`StepOptions::freeze`] globs; other initializers (Resize scales, Pad
//! values, shapes) stay constants. Parameters, optimizer state and the running statistics of
//! ops with a training mode ([`crate::ops::Op::training_mode`]: BatchNormalization) become
//! graph inputs; their updated values are
//! graph outputs named `{input}.next`. The host keeps the tensors between steps and feeds the
//! per-step scalars `lr`, `step` (float, 1 at the first step) and, with regularizers,
//! `l1_lambda`, and one uniform-noise tensor per Dropout on the loss path
//! ([`TrainStep::noise`], see [`super::dropout`]). The loss is built on the model's first
//! output.
//!
//! Not done here: data loading, schedules, mixed precision, gradient clipping; the data input
//! must be the model's only runtime input.

use std::collections::{HashMap, HashSet};

use crate::analysis::{infer_shapes, Shapes};
use crate::error::{Error, Result};
use crate::ir::{DType, Dim, Graph, Model, Tensor, ValueId};

use super::bn_train;
use super::dropout::{self, DropoutNoise};
use super::emit::{add_input, declare, initializer_to_input};
use crate::ops;
use crate::ops::build::{Build, Builder};
use crate::plan::glob_match;

use super::loss::{self, Loss};
use super::optim::{self, Optimizer};
use super::regularize::{self, Regularizer};

/// What to compile.
#[derive(Clone, Debug)]
pub struct StepOptions {
    /// Batch size fixed on the data input.
    pub batch: usize,
    /// The loss on the first output.
    pub loss: Loss,
    /// The parameter update.
    pub optimizer: Optimizer,
    /// Sub-gradient terms (scaled by the `l1_lambda` input).
    pub regularizers: Vec<Regularizer>,
    /// Globs (`*`, `?`) on initializer names that stay constant.
    pub freeze: Vec<String>,
    /// Globs on parameter names that get no weight decay.
    pub no_decay: Vec<String>,
    /// BatchNormalization in training mode as standard ops ([`bn_train::compose`]) instead
    /// of one fused node: for ONNX Runtime's CUDA provider, which has no training-mode kernel
    /// at opset 14 or later.
    pub composed_batch_norm: bool,
    /// Weight masks the step enforces (pruning at weight granularity): parameter name → one
    /// 0/1 entry per element, row-major. The parameter's gradient and its new value are
    /// multiplied by the mask, so masked weights stay exactly zero and their optimizer state
    /// stays at zero. Names that are not trained parameters are an error.
    pub weight_masks: super::masks::WeightMasks,
    /// Also output every parameter's gradient (loss plus regularizer terms, before the
    /// update and after its mask) as `{name}.grad` ([`TrainStep::gradients`]).
    pub gradient_outputs: bool,
    /// Lower the convolutions to ONNX Runtime's channel-blocked CPU kernels with this block
    /// ([`super::block_convolutions`]; [`crate::runtime::ort::channel_block`] gives this
    /// machine's); `None` keeps standard `Conv` nodes (any runtime, the CUDA provider).
    pub blocked_convolutions: Option<usize>,
    /// Let the backward pass use lopper's own ONNX Runtime CPU kernels
    /// ([`crate::runtime::kernels`]: the convolutions' weight gradients) where they cover a
    /// node; the step then runs only in lopper's ONNX Runtime sessions. Off: standard ops.
    pub kernels: bool,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            batch: 32,
            loss: Loss::default(),
            optimizer: Optimizer::default(),
            regularizers: Vec::new(),
            freeze: Vec::new(),
            no_decay: Vec::new(),
            composed_batch_norm: false,
            weight_masks: Default::default(),
            gradient_outputs: false,
            blocked_convolutions: None,
            kernels: false,
        }
    }
}

/// A trained tensor: graph input, graph output, and its value before the first step.
#[derive(Clone, Debug)]
pub struct Carried {
    /// Graph input name (for parameters and running statistics: the initializer's name).
    pub input: String,
    /// Graph output holding the updated value.
    pub output: String,
    /// Initial value (the model's weights; zeros for optimizer state).
    pub init: Tensor,
}

/// A compiled train step and the names the host needs to drive it.
#[derive(Clone, Debug)]
pub struct TrainStep {
    /// The train-step graph.
    pub model: Model,
    /// Trainable parameters.
    pub params: Vec<Carried>,
    /// Optimizer state, with the parameter (input name) and slot each belongs to.
    pub state: Vec<(String, &'static str, Carried)>,
    /// BatchNormalization running means and variances.
    pub running: Vec<Carried>,
    /// The data input (`[batch, ...]`).
    pub x: String,
    /// Int64 labels `[batch]` (classification losses).
    pub labels: Option<String>,
    /// Teacher logits (distillation).
    pub teacher: Option<String>,
    /// Float targets (MSE).
    pub targets: Option<String>,
    /// Learning-rate scalar input.
    pub lr: String,
    /// Step-count scalar input (float, 1 at the first step).
    pub step: String,
    /// Regularizer-strength scalar input (when there are regularizers).
    pub l1_lambda: Option<String>,
    /// Scalar loss output.
    pub loss: String,
    /// Scalar accuracy output (classification losses).
    pub accuracy: Option<String>,
    /// Scalar output: 0 when every parameter's new value is finite, NaN otherwise (`None`
    /// without trainable parameters).
    pub update_check: Option<String>,
    /// Initializers left constant: frozen by glob, or not reaching the loss.
    pub frozen: Vec<String>,
    /// The noise inputs of the Dropouts lowered to fed masks, fresh uniform `[0, 1)` values
    /// every step ([`TrainStep::noise_feed`]).
    pub noise: Vec<DropoutNoise>,
    /// Per parameter (input name), the output holding its gradient (with
    /// [`StepOptions::gradient_outputs`]; empty otherwise).
    pub gradients: Vec<(String, String)>,
    /// The batch size.
    pub batch: usize,
    original: Model,
}

impl TrainStep {
    /// The initial values of every carried input (parameters, state, running statistics).
    pub fn initial_feed(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .chain(self.state.iter().map(|(_, _, c)| c))
            .chain(&self.running)
            .map(|c| (c.input.clone(), c.init.clone()))
            .collect()
    }

    /// Fresh noise for every lowered Dropout, drawn tensor after tensor, element by element,
    /// from `uniform` (which must return values in `[0, 1)`): the feed entries to add to a
    /// step. Empty when the model has no Dropout on the loss path.
    pub fn noise_feed(&self, uniform: &mut dyn FnMut() -> f32) -> Vec<(String, Tensor)> {
        self.noise
            .iter()
            .map(|d| {
                let n: usize = d.shape.iter().product();
                let v: Vec<f32> = (0..n).map(|_| uniform()).collect();
                (d.input.clone(), Tensor::from_f32(d.shape.clone(), &v))
            })
            .collect()
    }

    /// The original inference model with trained parameters and running statistics written
    /// back (BatchNormalization stays in inference mode, Dropout nodes stay as they were).
    /// `trained` entries are named by input or output name; optimizer state, noise, loss,
    /// accuracy and update-check entries are ignored; anything else, or a shape/type that
    /// differs from the original, is an error.
    pub fn inference_model(&self, trained: &[(String, Tensor)]) -> Result<Model> {
        let mut m = self.original.clone();
        let mut by_name: HashMap<&str, &str> = HashMap::new();
        for c in self.params.iter().chain(&self.running) {
            by_name.insert(&c.input, &c.input);
            by_name.insert(&c.output, &c.input);
        }
        let ignored: HashSet<&str> = self
            .state
            .iter()
            .flat_map(|(_, _, c)| [c.input.as_str(), c.output.as_str()])
            .chain(self.noise.iter().map(|d| d.input.as_str()))
            .chain(std::iter::once(self.loss.as_str()))
            .chain(self.accuracy.as_deref())
            .chain(self.update_check.as_deref())
            .collect();
        for (name, t) in trained {
            if ignored.contains(name.as_str()) {
                continue;
            }
            let target = by_name.get(name.as_str()).ok_or_else(|| {
                Error::Usage(format!("'{name}' is not a parameter or running statistic"))
            })?;
            let v = m
                .graph
                .value_by_name(target)
                .ok_or_else(|| Error::tensor(target, "is not in the original model"))?;
            let old = m
                .graph
                .init(v)
                .ok_or_else(|| Error::tensor(target, "is not an initializer"))?;
            if old.shape() != t.shape() || old.dtype() != t.dtype() {
                return Err(Error::tensor(
                    name,
                    format!(
                        "trained value is {} {:?}, the model has {} {:?}",
                        t.dtype(),
                        t.shape(),
                        old.dtype(),
                        old.shape()
                    ),
                ));
            }
            m.graph.set_init(v, t.clone());
        }
        Ok(m)
    }
}

/// Compiles `model` into a train step (see the module docs).
pub fn compile_train_step(model: &Model, opts: &StepOptions) -> Result<TrainStep> {
    compile_with(model, opts, |g, shapes, opset, loss, wrt| {
        super::autodiff::gradients_with(g, shapes, opset, loss, wrt, opts.kernels)
    })
}

/// [`compile_train_step`] with the gradient pass given (tests substitute fed gradients). The
/// steps: the data input with the batch fixed; running statistics and parameters become
/// inputs; forward in training mode and the loss; the step's scalars; backward; per
/// parameter, regularizer terms and the optimizer update; running-statistic updates; the
/// outputs named.
pub(crate) fn compile_with<F>(model: &Model, opts: &StepOptions, grad_fn: F) -> Result<TrainStep>
where
    F: FnOnce(&mut Graph, &Shapes, i64, ValueId, &[ValueId]) -> Result<Vec<Option<ValueId>>>,
{
    if opts.batch == 0 {
        return Err(Error::Usage("the batch size must be at least 1".into()));
    }
    let mut m = at_least_opset_17(model)?;
    let opset = m.opset();
    let x = data_input(&m.graph)?;
    fix_batch(&mut m.graph, x, opts.batch)?;
    let stats = statistics(&m.graph, opset)?;
    let (params, mut frozen) = parameters(&m.graph, &stats.running, &opts.freeze);
    let mut param_init = Vec::with_capacity(params.len());
    for &p in &params {
        param_init.push(initializer_to_input(&mut m.graph, p)?);
    }
    let mut running_init = Vec::with_capacity(stats.running.len());
    for &r in &stats.running {
        running_init.push(initializer_to_input(&mut m.graph, r)?);
    }
    let fwd = forward(&mut m, model.opset(), &opts.loss)?;
    let filters = filter_axes(&m.graph);
    let g = &mut m.graph;
    let scalars = Scalars {
        lr: add_input(g, "lr", DType::F32, &[]),
        step: add_input(g, "step", DType::F32, &[]),
        lambda: (!opts.regularizers.is_empty()).then(|| add_input(g, "l1_lambda", DType::F32, &[])),
    };

    // Backward.
    let shapes = infer_shapes(&m)?;
    let grads = grad_fn(&mut m.graph, &shapes, opset, fwd.loss.loss, &params)?;
    if grads.len() != params.len() {
        return Err(Error::Graph(format!(
            "the gradient pass returned {} gradients for {} parameters",
            grads.len(),
            params.len()
        )));
    }
    // The closed-form BatchNormalization rule has run: give the training-mode nodes their own
    // statistics inputs (ORT writes the batch statistics into them), or compose them.
    if opts.composed_batch_norm {
        bn_train::compose(&mut m.graph, &fwd.bns, opset)?;
    } else {
        bn_train::isolate_statistics(&mut m.graph, &fwd.bns)?;
    }

    let mut outs = Outputs::default();
    let trained = Trained {
        params: &params,
        init: &param_init,
        grads,
        gammas: &stats.gammas,
        filters: &filters,
    };
    updates(
        &mut m.graph,
        opset,
        opts,
        &scalars,
        trained,
        &mut outs,
        &mut frozen,
    )?;
    check_masked_names(opts, &outs)?;
    let check_idx = update_check(&mut m.graph, opset, &mut outs)?;
    running_updates(&m.graph, &fwd.bns, &stats.running, &running_init, &mut outs)?;
    let loss_idx = outs.list.len();
    outs.list.push((fwd.loss.loss, "loss".into(), vec![]));
    let acc_idx = fwd.loss.accuracy.map(|a| {
        outs.list.push((a, "accuracy".into(), vec![]));
        outs.list.len() - 1
    });
    let names = name_outputs(&mut m.graph, std::mem::take(&mut outs.list));
    let kernels = crate::runtime::kernels::DOMAIN;
    if m.graph
        .node_ids()
        .any(|n| m.graph.node(n).domain == kernels)
    {
        m.import_domain(kernels);
    }
    if let Some(block) = opts.blocked_convolutions {
        super::block_convolutions::block_convolutions(&mut m, block)?;
    }
    crate::ir::verify(&m.graph)?;

    let name_of = |v: Option<ValueId>| v.map(|v| m.graph.value(v).name.clone());
    let lg = &fwd.loss;
    let mut ts = TrainStep {
        params: Vec::new(),
        state: Vec::new(),
        running: Vec::new(),
        x: m.graph.value(x).name.clone(),
        labels: name_of(lg.labels),
        teacher: name_of(lg.teacher),
        targets: name_of(lg.targets),
        lr: m.graph.value(scalars.lr).name.clone(),
        step: m.graph.value(scalars.step).name.clone(),
        l1_lambda: name_of(scalars.lambda),
        loss: names[loss_idx].clone(),
        accuracy: acc_idx.map(|i| names[i].clone()),
        update_check: check_idx.map(|i| names[i].clone()),
        frozen,
        noise: fwd.noise,
        gradients: outs
            .gradients
            .iter()
            .map(|(p, i)| (p.clone(), names[*i].clone()))
            .collect(),
        batch: opts.batch,
        original: model.clone(),
        model: m,
    };
    for (kind, input, init, idx) in outs.carried {
        let c = Carried {
            input,
            output: names[idx].clone(),
            init,
        };
        match kind {
            Kind::Param => ts.params.push(c),
            Kind::State(p, slot) => ts.state.push((p, slot, c)),
            Kind::Running => ts.running.push(c),
        }
    }
    Ok(ts)
}

/// `model` at opset 17 or later (IR 8 or later when raised): the train step's ops need it.
/// Nodes whose op changed signature since the model's opset are rewritten
/// ([`crate::passes::upgrade_opset`]).
fn at_least_opset_17(model: &Model) -> Result<Model> {
    let mut m = model.clone();
    crate::passes::upgrade_opset(&mut m, 17)?;
    Ok(m)
}

/// Refuses a weight mask that names no trained parameter.
fn check_masked_names(opts: &StepOptions, outs: &Outputs) -> Result<()> {
    let trained = |n: &String| {
        outs.carried
            .iter()
            .any(|c| matches!(c.0, Kind::Param) && &c.1 == n)
    };
    match opts.weight_masks.keys().find(|n| !trained(n)) {
        Some(name) => Err(Error::tensor(
            name,
            "is masked but is not a trained parameter",
        )),
        None => Ok(()),
    }
}

/// One scalar output, 0 when every parameter's new value is finite and NaN otherwise: the
/// host checks it each step (a finite loss over NaN updates would only show one step later).
/// It sums `w·0` (0 for finite w, NaN for NaN or ±inf), which no magnitude can overflow.
/// Returns the output's index in `outs.list`.
fn update_check(g: &mut Graph, opset: i64, outs: &mut Outputs) -> Result<Option<usize>> {
    let news: Vec<(ValueId, usize)> = outs
        .carried
        .iter()
        .filter(|c| matches!(c.0, Kind::Param))
        .map(|c| (outs.list[c.3].0, outs.list[c.3].2.len()))
        .collect();
    let mut b = Builder::new(g, "update_check", opset);
    let mut zeros = Vec::with_capacity(news.len());
    for (v, rank) in news {
        let axes: Vec<i64> = (0..rank as i64).collect();
        let zero = b.scalar(DType::F32, 0.0)?;
        let z = b.op("Mul", &[v, zero], vec![]);
        zeros.push(b.reduce_sum(z, &axes, false));
    }
    let check = match zeros[..] {
        [] => return Ok(None),
        [one] => one,
        _ => b.op("Sum", &zeros, vec![]),
    };
    outs.list.push((check, "update_check".into(), vec![]));
    Ok(Some(outs.list.len() - 1))
}

/// The model's one runtime input.
pub(crate) fn data_input(g: &Graph) -> Result<ValueId> {
    let data: Vec<ValueId> = g
        .inputs
        .iter()
        .copied()
        .filter(|v| g.is_runtime_input(*v))
        .collect();
    match data[..] {
        [x] => Ok(x),
        [] => Err(Error::Usage("the model has no data input".into())),
        _ => Err(Error::Usage(format!(
            "the model has {} runtime inputs; training needs exactly one data input",
            data.len()
        ))),
    }
}

/// What the nodes with a training mode ([`ops::Op::training_mode`]: BatchNormalization) hold.
struct Statistics {
    /// Their running statistics (initializers, carried by the step), in graph order.
    running: Vec<ValueId>,
    /// Their per-channel scales ([`ops::Op::channel_scale_input`]): the L1 regularizers' γ.
    gammas: HashSet<ValueId>,
}

fn statistics(g: &Graph, opset: i64) -> Result<Statistics> {
    let mut out = Statistics {
        running: Vec::new(),
        gammas: HashSet::new(),
    };
    for n in g.topo_order()? {
        let node = g.node(n);
        let Some(op) = ops::lookup(&node.domain, &node.op_type) else {
            continue;
        };
        let Some(mode) = op.training_mode(node, opset)? else {
            continue;
        };
        for p in [mode.mean.0, mode.var.0] {
            let v = node
                .input(p)
                .filter(|v| g.init(*v).is_some())
                .ok_or_else(|| {
                    Error::node(
                        &node.name,
                        &node.op_type,
                        "running statistics must be initializers to train",
                    )
                })?;
            if !out.running.contains(&v) {
                out.running.push(v);
            }
        }
        if let Some(s) = op.channel_scale_input().and_then(|p| node.input(p)) {
            out.gammas.insert(s);
        }
    }
    Ok(out)
}

/// The trainable parameters (see the module docs) and the names of those frozen by glob.
fn parameters(g: &Graph, running: &[ValueId], freeze: &[String]) -> (Vec<ValueId>, Vec<String>) {
    let mut params = Vec::new();
    let mut frozen = Vec::new();
    for &v in &g.initializers {
        let Some(t) = g.init(v) else { continue };
        let val = g.value(v);
        let weightlike = t.dtype() == DType::F32
            && !t.shape().is_empty()
            && !running.contains(&v)
            && !val.uses.is_empty()
            && !g.outputs.contains(&v)
            && val.uses.iter().all(|&(n, p)| {
                let node = g.node(n);
                ops::lookup(&node.domain, &node.op_type).is_some_and(|op| op.weight_input(p))
            });
        if !weightlike {
            continue;
        }
        if freeze.iter().any(|p| glob_match(p, &val.name)) {
            frozen.push(val.name.clone());
        } else {
            params.push(v);
        }
    }
    (params, frozen)
}

/// The forward pass in training mode and the loss.
struct Forward {
    bns: Vec<bn_train::BnUpdate>,
    noise: Vec<DropoutNoise>,
    loss: loss::LossGraph,
}

/// Puts the nodes with a training mode into it, lowers random nodes on the loss path to fed
/// noise (`model_opset`: the opset they were written for) and adds the loss on the first
/// output.
fn forward(m: &mut Model, model_opset: i64, loss: &Loss) -> Result<Forward> {
    let opset = m.opset();
    let shapes = infer_shapes(m)?;
    let bns = bn_train::to_training_mode(&mut m.graph, &shapes, opset)?;
    let shapes = infer_shapes(m)?;
    let first_output = |g: &Graph| {
        g.outputs
            .first()
            .copied()
            .ok_or_else(|| Error::Graph("the model has no output".into()))
    };
    let root = first_output(&m.graph)?;
    let noise = dropout::lower_dropouts(&mut m.graph, &shapes, model_opset, opset, root)?;
    let shapes = if noise.is_empty() {
        shapes
    } else {
        infer_shapes(m)?
    };
    let out = first_output(&m.graph)?;
    let loss = loss::add_loss(&mut m.graph, &shapes, opset, out, loss)?;
    Ok(Forward { bns, noise, loss })
}

/// Convolution filter banks ([`ops::training::Layer::filter_axis`]) of the forward graph:
/// weight → the axis of its filters.
fn filter_axes(g: &Graph) -> HashMap<ValueId, usize> {
    let mut out = HashMap::new();
    for n in g.node_ids() {
        let node = g.node(n);
        let Some(layer) = ops::lookup(&node.domain, &node.op_type).and_then(|op| op.layer(node))
        else {
            continue;
        };
        if let (Some(axis), Some(w)) = (layer.filter_axis, node.input(layer.weight)) {
            out.insert(w, axis);
        }
    }
    out
}

/// The step's scalar inputs.
struct Scalars {
    lr: ValueId,
    step: ValueId,
    lambda: Option<ValueId>,
}

/// The parameters, their initial values and gradients, and which are scales and filters.
struct Trained<'a> {
    params: &'a [ValueId],
    init: &'a [Tensor],
    grads: Vec<Option<ValueId>>,
    gammas: &'a HashSet<ValueId>,
    filters: &'a HashMap<ValueId, usize>,
}

/// The step's outputs so far: (value, wanted output name, shape), and what each carried input
/// is (with the index of its output).
#[derive(Default)]
struct Outputs {
    list: Vec<(ValueId, String, Vec<usize>)>,
    carried: Vec<(Kind, String, Tensor, usize)>,
    /// Parameter name and the index of its gradient output.
    gradients: Vec<(String, usize)>,
}

/// Per parameter: its regularizer terms added to its gradient and the optimizer update, as
/// carried outputs. Parameters no gradient reaches go back to constants (into `frozen`).
fn updates(
    g: &mut Graph,
    opset: i64,
    opts: &StepOptions,
    scalars: &Scalars,
    trained: Trained,
    outs: &mut Outputs,
    frozen: &mut Vec<String>,
) -> Result<()> {
    let sh = optim::prepare(g, opset, &opts.optimizer, scalars.lr, scalars.step)?;
    for (k, (&p, grad)) in trained.params.iter().zip(trained.grads).enumerate() {
        let name = g.value(p).name.clone();
        let init = &trained.init[k];
        let shape = init.shape().to_vec();
        let mut terms = Vec::new();
        if let Some(lambda) = scalars.lambda {
            for r in &opts.regularizers {
                let gamma = trained.gammas.contains(&p);
                let filters = trained.filters.get(&p).copied();
                terms.extend(regularizer_term(
                    g, opset, r, p, &shape, lambda, gamma, filters,
                )?);
            }
        }
        let total = grad.into_iter().chain(terms).reduce(|a, b| {
            let mut e = Builder::new(g, format!("grad_total/{name}"), opset);
            e.op("Add", &[a, b], vec![])
        });
        let Some(mut total) = total else {
            // Does not reach the loss: back to a constant.
            g.inputs.retain(|v| *v != p);
            g.value_info.retain(|v| *v != p);
            g.set_init(p, init.clone());
            frozen.push(name);
            continue;
        };
        let mask = match opts.weight_masks.get(&name) {
            Some(m) if m.len() == init.len() => {
                let mut e = Builder::new(g, format!("mask/{name}"), opset);
                let mask = e.constant(Tensor::from_f32(shape.clone(), m));
                total = e.op("Mul", &[total, mask], vec![]);
                Some(mask)
            }
            Some(m) => {
                return Err(Error::tensor(
                    &name,
                    format!(
                        "its mask has {} entries, the weight {}",
                        m.len(),
                        init.len()
                    ),
                ))
            }
            None => None,
        };
        if opts.gradient_outputs {
            outs.gradients.push((name.clone(), outs.list.len()));
            outs.list
                .push((total, format!("{name}.grad"), shape.clone()));
        }
        let slots = opts.optimizer.state_slots();
        let st_in: Vec<ValueId> = slots
            .iter()
            .map(|s| add_input(g, &format!("{name}.{s}"), DType::F32, &shape))
            .collect();
        let decay = !opts.no_decay.iter().any(|pat| glob_match(pat, &name));
        let (mut np, ns) = optim::update(g, &sh, &name, p, total, &st_in, decay)?;
        if let Some(mask) = mask {
            let mut e = Builder::new(g, format!("mask/{name}"), opset);
            np = e.op("Mul", &[np, mask], vec![]);
        }
        let init = match opts.weight_masks.get(&name) {
            Some(m) => {
                let w = init
                    .to_f32_vec()
                    .ok_or_else(|| Error::tensor(&name, "is not float32"))?;
                let masked: Vec<f32> = w.iter().zip(m).map(|(w, m)| w * m).collect();
                Tensor::from_f32(shape.clone(), &masked)
            }
            None => init.clone(),
        };
        outs.carried
            .push((Kind::Param, name.clone(), init, outs.list.len()));
        outs.list.push((np, format!("{name}.next"), shape.clone()));
        for ((slot, sin), sout) in slots.iter().zip(&st_in).zip(ns) {
            let in_name = g.value(*sin).name.clone();
            let zeros = Tensor::from_f32(shape.clone(), &vec![0.0; shape.iter().product()]);
            let kind = Kind::State(name.clone(), slot);
            outs.carried
                .push((kind, in_name.clone(), zeros, outs.list.len()));
            outs.list
                .push((sout, format!("{in_name}.next"), shape.clone()));
        }
    }
    Ok(())
}

/// Regularizer `r`'s term for parameter `p` of `shape`, when it applies: the L1 terms to
/// scales (`gamma`), group lasso to filter banks (`filters`: the axis of the filters).
#[allow(clippy::too_many_arguments)]
fn regularizer_term(
    g: &mut Graph,
    opset: i64,
    r: &Regularizer,
    p: ValueId,
    shape: &[usize],
    lambda: ValueId,
    gamma: bool,
    filters: Option<usize>,
) -> Result<Option<ValueId>> {
    let channels = shape.iter().product();
    Ok(match r {
        Regularizer::L1Gamma { weight } if gamma => Some(regularize::l1_term(
            g, opset, p, channels, lambda, *weight, None,
        )?),
        Regularizer::MaskedL1Gamma { weight, masks } if gamma => {
            match masks.get(&g.value(p).name).cloned() {
                Some(mask) => Some(regularize::l1_term(
                    g,
                    opset,
                    p,
                    channels,
                    lambda,
                    *weight,
                    Some(&mask),
                )?),
                None => None,
            }
        }
        Regularizer::GroupLasso { weight, eps } => match filters {
            Some(axis) => Some(regularize::group_lasso_term(
                g, opset, p, shape, axis, lambda, *weight, *eps, None,
            )?),
            None => None,
        },
        Regularizer::MaskedGroupLasso { weight, eps, masks } => {
            match (filters, masks.get(&g.value(p).name).cloned()) {
                (Some(axis), Some(mask)) => Some(regularize::group_lasso_term(
                    g,
                    opset,
                    p,
                    shape,
                    axis,
                    lambda,
                    *weight,
                    *eps,
                    Some(&mask),
                )?),
                _ => None,
            }
        }
        _ => None,
    })
}

/// The running statistics' updates of `bns` as carried outputs, in the order of `running`.
fn running_updates(
    g: &Graph,
    bns: &[bn_train::BnUpdate],
    running: &[ValueId],
    init: &[Tensor],
    outs: &mut Outputs,
) -> Result<()> {
    let mut updated: HashMap<ValueId, ValueId> = HashMap::new();
    for b in bns {
        for (old, new) in [(b.mean, b.new_mean), (b.var, b.new_var)] {
            if updated.insert(old, new).is_some() {
                return Err(Error::node(
                    &b.node,
                    &b.op_type,
                    format!("shares its running statistics with another {}", b.op_type),
                ));
            }
        }
    }
    for (r, t) in running.iter().zip(init) {
        let new = *updated
            .get(r)
            .ok_or_else(|| Error::tensor(&g.value(*r).name, "running statistic not rewritten"))?;
        let name = g.value(*r).name.clone();
        outs.carried
            .push((Kind::Running, name.clone(), t.clone(), outs.list.len()));
        outs.list
            .push((new, format!("{name}.next"), t.shape().to_vec()));
    }
    Ok(())
}

/// Names every output with an Identity so the host sees stable names; returns the names.
pub(crate) fn name_outputs(
    g: &mut Graph,
    outputs: Vec<(ValueId, String, Vec<usize>)>,
) -> Vec<String> {
    let mut names = Vec::with_capacity(outputs.len());
    let mut graph_outputs = Vec::with_capacity(outputs.len());
    for (v, want, shape) in outputs {
        let id = g.add_node(
            &format!("out/{want}"),
            "Identity",
            &[Some(v)],
            &[want.as_str()],
            vec![],
        );
        let o = g
            .node(id)
            .outputs
            .iter()
            .flatten()
            .copied()
            .collect::<Vec<_>>()[0];
        declare(g, o, DType::F32, &shape);
        g.value_info.retain(|x| *x != o);
        names.push(g.value(o).name.clone());
        graph_outputs.push(o);
    }
    g.outputs = graph_outputs;
    names
}

/// What a carried graph input is.
enum Kind {
    Param,
    State(String, &'static str),
    Running,
}

/// Sets dimension 0 of the data input's declared shape to `batch`.
pub(crate) fn fix_batch(g: &mut Graph, x: ValueId, batch: usize) -> Result<()> {
    let name = g.value(x).name.clone();
    let fact = g
        .value(x)
        .decl
        .as_ref()
        .and_then(|d| d.r#type.as_ref())
        .map(crate::ir::Fact::from_type)
        .ok_or_else(|| Error::tensor(&name, "the data input has no declared type"))?;
    let mut shape = fact
        .shape
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::tensor(&name, "the data input needs a shape [N, ...]"))?;
    match shape[0] {
        Dim::Known(d) if d != batch => {
            return Err(Error::tensor(
                &name,
                format!("the model fixes the batch at {d}, not {batch}"),
            ))
        }
        _ => shape[0] = Dim::Known(batch),
    }
    let dims: Option<Vec<usize>> = shape.iter().map(Dim::known).collect();
    let dims = dims.ok_or_else(|| {
        Error::tensor(
            &name,
            format!(
                "only the batch dimension may be symbolic, the shape is {}",
                crate::ir::fact::shape_string(&shape)
            ),
        )
    })?;
    declare(g, x, fact.dtype.unwrap_or(DType::F32), &dims);
    g.value_info.retain(|v| *v != x);
    Ok(())
}

#[cfg(test)]
#[path = "step_tests.rs"]
mod tests;
