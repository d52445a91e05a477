//! Compiles an inference model into one ONNX *train step*: forward with BatchNormalization in
//! training mode, loss, backward ([`super::gradients`]), regularizer terms and optimizer
//! update, all standard ops (opset ≥ 17) that ONNX Runtime runs.
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
    /// Initializers left constant: frozen by glob, or not reaching the loss.
    pub frozen: Vec<String>,
    /// The noise inputs of the Dropouts lowered to fed masks, fresh uniform `[0, 1)` values
    /// every step ([`TrainStep::noise_feed`]).
    pub noise: Vec<DropoutNoise>,
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
    /// `trained` entries are named by input or output name; optimizer state, noise, loss and
    /// accuracy entries are ignored; anything else, or a shape/type that differs from the
    /// original, is an error.
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
    compile_with(model, opts, super::gradients)
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
    let mut m = at_least_opset_17(model);
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
    // statistics inputs (ORT writes the batch statistics into them).
    bn_train::isolate_statistics(&mut m.graph, &fwd.bns)?;

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
    running_updates(&m.graph, &fwd.bns, &stats.running, &running_init, &mut outs)?;
    let loss_idx = outs.list.len();
    outs.list.push((fwd.loss.loss, "loss".into(), vec![]));
    let acc_idx = fwd.loss.accuracy.map(|a| {
        outs.list.push((a, "accuracy".into(), vec![]));
        outs.list.len() - 1
    });
    let names = name_outputs(&mut m.graph, std::mem::take(&mut outs.list));
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
        frozen,
        noise: fwd.noise,
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
fn at_least_opset_17(model: &Model) -> Model {
    let mut m = model.clone();
    if m.opset() < 17 {
        for o in &mut m.rest.opset_import {
            if o.domain().is_empty() || o.domain() == "ai.onnx" {
                o.version = Some(17);
            }
        }
        if m.rest.ir_version() < 8 {
            m.rest.ir_version = Some(8);
        }
    }
    m
}

/// The model's one runtime input.
fn data_input(g: &Graph) -> Result<ValueId> {
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
        let Some(total) = total else {
            // Does not reach the loss: back to a constant.
            g.inputs.retain(|v| *v != p);
            g.value_info.retain(|v| *v != p);
            g.set_init(p, init.clone());
            frozen.push(name);
            continue;
        };
        let slots = opts.optimizer.state_slots();
        let st_in: Vec<ValueId> = slots
            .iter()
            .map(|s| add_input(g, &format!("{name}.{s}"), DType::F32, &shape))
            .collect();
        let decay = !opts.no_decay.iter().any(|pat| glob_match(pat, &name));
        let (np, ns) = optim::update(g, &sh, &name, p, total, &st_in, decay)?;
        outs.carried
            .push((Kind::Param, name.clone(), init.clone(), outs.list.len()));
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
                g, opset, p, shape, axis, lambda, *weight, *eps,
            )?),
            None => None,
        },
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
fn name_outputs(g: &mut Graph, outputs: Vec<(ValueId, String, Vec<usize>)>) -> Vec<String> {
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
fn fix_batch(g: &mut Graph, x: ValueId, batch: usize) -> Result<()> {
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
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ir::graph::attr_int;
    use crate::ir::Fact;
    use crate::onnx::proto::{ModelProto, OperatorSetIdProto, ValueInfoProto};
    use crate::runtime::{self, BackendKind};
    use crate::train::emit::static_shape;

    fn lcg(s: &mut u64) -> f64 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    fn rand(s: &mut u64, shape: &[usize], scale: f64, off: f64) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| off + scale * lcg(s)).collect();
        Tensor::from_f64_as(DType::F32, shape.to_vec(), &v).unwrap()
    }

    /// `x[batch,3,4,4] → BN → Conv 1×1 (4) → Relu → GlobalAveragePool → Flatten → Gemm (5)`,
    /// opset 13, IR 7.
    fn tiny() -> Model {
        let mut g = Graph::new();
        let x = g.add_value("x");
        let mut shape = vec![Dim::Sym("batch".into())];
        shape.extend([3, 4, 4].map(Dim::Known));
        g.set_decl(
            x,
            ValueInfoProto {
                name: Some("x".into()),
                r#type: Some(Fact::new(Some(DType::F32), shape).to_type()),
                ..Default::default()
            },
        );
        g.value_info.retain(|v| *v != x);
        g.inputs.push(x);
        let mut s = 5u64;
        let mut init = |g: &mut Graph, name: &str, shape: &[usize], sc: f64, off: f64| {
            g.add_initializer(name, rand(&mut s, shape, sc, off))
        };
        let bn: Vec<ValueId> = [
            ("bn.scale", 0.0),
            ("bn.bias", 0.0),
            ("bn.mean", 0.0),
            ("bn.var", 1.0),
        ]
        .iter()
        .map(|(n, off)| init(&mut g, n, &[3], 0.5, *off))
        .collect();
        let cw = init(&mut g, "conv.w", &[4, 3, 1, 1], 1.0, 0.0);
        let cb = init(&mut g, "conv.b", &[4], 0.1, 0.0);
        let fw = init(&mut g, "fc.w", &[5, 4], 1.0, 0.0);
        let fb = init(&mut g, "fc.b", &[5], 0.1, 0.0);
        let chain = |g: &mut Graph, name: &str, op: &str, ins: &[Option<ValueId>], attrs| {
            let id = g.add_node(name, op, ins, &[&format!("{name}:0")], attrs);
            g.node(id).outputs[0].unwrap()
        };
        let ins: Vec<Option<ValueId>> = std::iter::once(x).chain(bn).map(Some).collect();
        let y = chain(&mut g, "bn", "BatchNormalization", &ins, vec![]);
        let y = chain(
            &mut g,
            "conv",
            "Conv",
            &[Some(y), Some(cw), Some(cb)],
            vec![],
        );
        let y = chain(&mut g, "relu", "Relu", &[Some(y)], vec![]);
        let y = chain(&mut g, "gap", "GlobalAveragePool", &[Some(y)], vec![]);
        let y = chain(&mut g, "flat", "Flatten", &[Some(y)], vec![]);
        let y = chain(
            &mut g,
            "fc",
            "Gemm",
            &[Some(y), Some(fw), Some(fb)],
            vec![attr_int("transB", 1)],
        );
        g.outputs = vec![y];
        Model {
            graph: g,
            rest: ModelProto {
                ir_version: Some(7),
                opset_import: vec![OperatorSetIdProto {
                    domain: Some(String::new()),
                    version: Some(13),
                }],
                ..Default::default()
            },
        }
    }

    fn options() -> StepOptions {
        StepOptions {
            batch: 4,
            loss: Loss::CrossEntropy {
                label_smoothing: 0.1,
            },
            optimizer: Optimizer::Sgd {
                momentum: 0.9,
                nesterov: false,
                weight_decay: 0.01,
            },
            regularizers: vec![
                Regularizer::L1Gamma { weight: 1.0 },
                Regularizer::MaskedL1Gamma {
                    weight: 2.0,
                    masks: BTreeMap::from([("bn.scale".to_string(), vec![1.0, 0.0, 1.0])]),
                },
                Regularizer::GroupLasso {
                    weight: 0.5,
                    eps: 1e-3,
                },
            ],
            freeze: vec!["fc.b".into()],
            no_decay: vec!["bn.*".into()],
        }
    }

    /// Before the ops' backward rules exist, compiling stops at autodiff with an error naming
    /// the node; once they exist, it compiles the same parameters as the fed-gradient test.
    #[test]
    fn compile_reaches_autodiff() {
        match compile_train_step(&tiny(), &options()) {
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("has no backward rule") && e.contains("node '"),
                    "{e}"
                );
            }
            Ok(ts) => {
                assert_eq!(ts.params.len(), 5);
                assert_eq!(ts.frozen, ["fc.b"]);
            }
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("layer1.*", "layer1.0.conv.weight"));
        assert!(glob_match("*.b?as", "fc.bias"));
        assert!(!glob_match("fc.b", "fc.bias"));
    }

    /// The whole step with gradients fed as inputs (standing in for autodiff): structure,
    /// then one step in ORT against a reference of the update, the regularizers and the
    /// running statistics; then the weights written back into the inference model.
    #[test]
    fn step_with_fed_gradients() {
        let model = tiny();
        let opts = options();
        let ts = compile_with(&model, &opts, |g, shapes, _, _, wrt| {
            let mut out = Vec::new();
            for &p in wrt {
                let shape = static_shape(g, shapes, p)?;
                let name = format!("fed/{}", g.value(p).name);
                out.push(Some(add_input(g, &name, DType::F32, &shape)));
            }
            Ok(out)
        })
        .unwrap();
        let g = &ts.model.graph;
        let pnames: Vec<&str> = ts.params.iter().map(|c| c.input.as_str()).collect();
        assert_eq!(pnames, ["bn.scale", "bn.bias", "conv.w", "conv.b", "fc.w"]);
        assert_eq!(ts.frozen, ["fc.b"]);
        assert!(g.value_by_name("fc.b").and_then(|v| g.init(v)).is_some());
        let rn: Vec<&str> = ts.running.iter().map(|c| c.input.as_str()).collect();
        assert_eq!(rn, ["bn.mean", "bn.var"]);
        assert_eq!(ts.state.len(), 5);
        assert!(ts.state.iter().all(|(_, slot, _)| *slot == "momentum"));
        // BatchNormalization runs in training mode.
        assert!(g
            .node_ids()
            .filter(|&n| g.node(n).op_type == "BatchNormalization")
            .all(|n| g.node(n).attr_i("training_mode") == Some(1)));
        assert_eq!(ts.model.opset(), 17);
        let xv = g.value_by_name(&ts.x).unwrap();
        let xf = Fact::from_type(g.value(xv).decl.as_ref().unwrap().r#type.as_ref().unwrap());
        assert_eq!(xf.concrete(), Some(vec![4, 3, 4, 4]));
        assert_eq!(
            (
                ts.labels.as_deref(),
                ts.teacher.as_deref(),
                ts.l1_lambda.as_deref()
            ),
            (Some("labels"), None, Some("l1_lambda"))
        );
        assert_eq!(
            (ts.loss.as_str(), ts.accuracy.as_deref()),
            ("loss", Some("accuracy"))
        );

        if crate::runtime::ort::find_library().is_none() {
            eprintln!("NOTICE: skipping the ORT part: ONNX Runtime's library is missing");
            return;
        }
        let dir = crate::temp_dir::TempDir::new("step").unwrap();
        let path = dir.path().join("step.onnx");
        ts.model.save(&path, &Default::default()).unwrap();
        let mut sess = runtime::load(BackendKind::Ort, &path).unwrap();
        let mut s = 99u64;
        let x = rand(&mut s, &[4, 3, 4, 4], 2.0, 0.3);
        let (lr, lam) = (0.05f32, 0.2f32);
        let mut feed = ts.initial_feed();
        let mut fed = HashMap::new();
        for c in &ts.params {
            let t = rand(&mut s, c.init.shape(), 1.0, 0.0);
            fed.insert(c.input.clone(), t.clone());
            feed.push((format!("fed/{}", c.input), t));
        }
        feed.push((ts.x.clone(), x.clone()));
        feed.push(("labels".into(), Tensor::from_i64(vec![4], &[0, 4, 2, 1])));
        feed.push((ts.lr.clone(), Tensor::from_f32(vec![], &[lr])));
        feed.push((ts.step.clone(), Tensor::from_f32(vec![], &[1.0])));
        feed.push(("l1_lambda".into(), Tensor::from_f32(vec![], &[lam])));
        let out: HashMap<String, Tensor> = sess.run(&feed).unwrap().into_iter().collect();
        let get = |n: &str| out[n].to_f64_vec().unwrap();
        let (lr, lam) = (f64::from(lr), f64::from(lam));
        let sign = |v: f64| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                0.0
            }
        };
        let mut worst = 0f64;
        for c in &ts.params {
            let p = c.init.to_f64_vec().unwrap();
            let mut gr = fed[&c.input].to_f64_vec().unwrap();
            if c.input == "bn.scale" {
                let mask = [1.0, 0.0, 1.0];
                for i in 0..3 {
                    gr[i] += lam * sign(p[i]) + 2.0 * lam * sign(p[i]) * mask[i];
                }
            }
            if c.input == "conv.w" {
                for f in 0..4 {
                    let row = &p[f * 3..f * 3 + 3];
                    let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                    for i in 0..3 {
                        gr[f * 3 + i] += 0.5 * lam * row[i] / (norm + 1e-3);
                    }
                }
            }
            let wd = if c.input.starts_with("bn.") {
                0.0
            } else {
                0.01
            };
            let got = get(&c.output);
            let mom = &ts.state.iter().find(|(p, _, _)| *p == c.input).unwrap().2;
            let got_v = get(&mom.output);
            for i in 0..p.len() {
                let v = gr[i] + wd * p[i];
                worst = worst.max((got_v[i] - v).abs());
                worst = worst.max((got[i] - (p[i] - lr * v)).abs());
            }
        }
        let xs = x.to_f64_vec().unwrap();
        let (mean0, var0) = (
            ts.running[0].init.to_f64_vec().unwrap(),
            ts.running[1].init.to_f64_vec().unwrap(),
        );
        let (nm, nv) = (get(&ts.running[0].output), get(&ts.running[1].output));
        for ch in 0..3 {
            let vals: Vec<f64> = (0..4)
                .flat_map(|b| (0..16).map(move |i| (b * 3 + ch) * 16 + i))
                .map(|i| xs[i])
                .collect();
            let mu = vals.iter().sum::<f64>() / 64.0;
            let var = vals.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / 64.0;
            worst = worst.max((nm[ch] - (0.9 * mean0[ch] + 0.1 * mu)).abs());
            worst = worst.max((nv[ch] - (0.9 * var0[ch] + 0.1 * var * 64.0 / 63.0)).abs());
        }
        assert!(worst < 1e-5, "max abs error {worst}");
        let loss = get("loss")[0];
        let acc = get("accuracy")[0];
        assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
        assert!((acc * 4.0 - (acc * 4.0).round()).abs() < 1e-6 && (0.0..=1.0).contains(&acc));

        // Back into the inference model.
        let trained: Vec<(String, Tensor)> = out.clone().into_iter().collect();
        let inf = ts.inference_model(&trained).unwrap();
        let ig = &inf.graph;
        assert!(ig
            .node_ids()
            .any(|n| ig.node(n).op_type == "BatchNormalization"));
        for c in ts.params.iter().chain(&ts.running) {
            let v = ig.value_by_name(&c.input).unwrap();
            assert_eq!(
                ig.init(v).unwrap().to_f64_vec().unwrap(),
                get(&c.output),
                "{}",
                c.input
            );
        }
        let ipath = dir.path().join("inf.onnx");
        inf.save(&ipath, &Default::default()).unwrap();
        let mut isess = runtime::load(BackendKind::Ort, &ipath).unwrap();
        let logits = isess.run(&[("x".into(), x)]).unwrap();
        assert_eq!(logits[0].1.shape(), [4, 5]);
        let bad = ts.inference_model(&[("nope".into(), Tensor::from_f32(vec![], &[0.0]))]);
        assert!(bad.unwrap_err().to_string().contains("'nope'"));
    }
}

#[cfg(test)]
mod zoo_tests {
    use super::*;
    use crate::runtime::{self, BackendKind};
    use crate::train::emit::static_shape;

    /// Every shared BatchNormalization model compiles (gradients fed as inputs); the CIFAR ones
    /// run one step in ORT with a finite loss. Skips when the shared folder is absent.
    #[test]
    fn shared_models_compile_with_fed_gradients() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models");
        let mut files: Vec<std::path::PathBuf> = ["zoo", "pretrained"]
            .iter()
            .filter_map(|d| std::fs::read_dir(dir.join(d)).ok())
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".bn.onnx"))
            .collect();
        files.sort();
        if files.is_empty() {
            eprintln!("NOTICE: skipping: no shared models");
            return;
        }
        let ort = crate::runtime::ort::find_library().is_some();
        for f in files {
            let model = Model::load(&f).unwrap();
            let opts = StepOptions {
                batch: 2,
                ..StepOptions::default()
            };
            let ts = compile_with(&model, &opts, |g, shapes, _, _, wrt| {
                let mut out = Vec::new();
                for &p in wrt {
                    let shape = static_shape(g, shapes, p)?;
                    let name = format!("fed/{}", g.value(p).name);
                    out.push(Some(add_input(g, &name, DType::F32, &shape)));
                }
                Ok(out)
            })
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let bns = model
                .graph
                .node_ids()
                .filter(|&n| model.graph.node(n).op_type == "BatchNormalization")
                .count();
            assert_eq!(ts.running.len(), 2 * bns, "{}", f.display());
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if !ort || !(name.contains("cifar") || name.contains("resnet20")) {
                continue;
            }
            let tmp = crate::temp_dir::TempDir::new("zoo_step").unwrap();
            let path = tmp.path().join("step.onnx");
            ts.model.save(&path, &Default::default()).unwrap();
            let mut sess = runtime::load(BackendKind::Ort, &path).unwrap();
            let mut feed = ts.initial_feed();
            for c in &ts.params {
                let n = c.init.len();
                feed.push((
                    format!("fed/{}", c.input),
                    Tensor::from_f32(c.init.shape().to_vec(), &vec![0.01; n]),
                ));
            }
            let xv: Vec<f32> = (0..2 * 3 * 32 * 32)
                .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
                .collect();
            feed.push((ts.x.clone(), Tensor::from_f32(vec![2, 3, 32, 32], &xv)));
            feed.push(("labels".into(), Tensor::from_i64(vec![2], &[1, 3])));
            feed.push((ts.lr.clone(), Tensor::from_f32(vec![], &[0.1])));
            feed.push((ts.step.clone(), Tensor::from_f32(vec![], &[1.0])));
            let out = sess.run(&feed).unwrap_or_else(|e| panic!("{name}: {e}"));
            let loss = out
                .iter()
                .find(|(n, _)| *n == ts.loss)
                .unwrap()
                .1
                .to_f64_vec()
                .unwrap()[0];
            assert!(loss.is_finite() && loss > 0.0, "{name}: loss {loss}");
            eprintln!("{name}: {} params, loss {loss:.4}", ts.params.len());
        }
    }
}
