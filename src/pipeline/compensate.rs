//! The pruning-compensation recovery stage (CaP-style): after channel removal, each Conv,
//! Gemm or MatMul that lost input channels is refitted, in closed form, so that it reproduces
//! the original node's output from the channels it kept. No gradients.
//!
//! Layers are handled in topological order of the pruned model, each from the model with
//! every earlier layer already compensated. For a layer, the features `X` are the pruned
//! model's input to the node and the targets `Y` the original model's output of the node of
//! the same name, restricted to the kept output channels (for a Conv followed by
//! BatchNormalization that is the pre-normalisation output, so the statistics stay valid;
//! when the pruned normalisation's statistics differ, e.g. recalibrated first, the target is
//! the original's normalised output pulled back through the pruned statistics). With
//! [`CompensateOptions::residual`] (the default), a node whose output reaches a residual
//! `Add` (through BatchNormalization) is instead fitted so that the `Add` reproduces the
//! original's given the pruned shortcut, which also corrects the error the shortcut carries.
//!
//! Output positions are sampled (seeded) over the calibration batches; each gives one
//! regression row, the im2col patch of `X` under the node's strides, pads and dilations, plus
//! a constant 1 when the node has a bias. With `A = XᵀX` and `B = XᵀY` accumulated in f64,
//!
//! `W' = argmin ‖X W' − Y‖² + λ ‖W' − W‖²  =  (A + λI)⁻¹ (B + λ W)`,
//!
//! a ridge towards the inherited weights `W`, with `λ` relative to the mean feature energy
//! `trace(A)/d`; a Cholesky factorisation solves it. The original's targets are sampled in
//! one pass of the original (per chunk of layers holding at most 256 MiB); each layer then
//! costs one pass of the pruned model up to its input over the batches. Which original
//! channels a node kept comes from the pruning plan ([`kept_channels`]). Grouped
//! convolutions, Gemm with `transA`, shared or non-float weights are left as they are
//! (listed in [`Compensation::skipped`]). BatchNormalization is not touched.

use crate::analysis::activation_stats::CalibrationBatch;
use crate::analysis::infer_shapes;
use crate::error::{Error, Result};
use crate::ir::{DType, Model, NodeId, Tensor, ValueId};
use crate::onnx::proto::ValueInfoProto;
use crate::plan::PlanFile;
use crate::rng::SplitMix64;
use crate::runtime::{self, BackendKind, RuntimeOptions, Session};
use crate::temp_dir::TempDir;

use crate::analysis::Shapes;
use crate::ops::linear::{Form, Window};

use super::kept::{kept_channels, linear, linear_slots, NodeChannels};

/// How [`compensate`] samples and regularises.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompensateOptions {
    /// Regression rows per layer: output positions sampled evenly over the batches (all of
    /// them when there are fewer).
    pub rows: usize,
    /// Ridge strength relative to the mean feature energy `trace(XᵀX)/d`.
    pub lambda: f64,
    /// Also refit linear nodes that kept all their input channels (their features still
    /// differ from the original's).
    pub every_layer: bool,
    /// For a node whose output reaches a residual `Add` (through BatchNormalization or
    /// directly), match the original `Add` output instead of the node's own: the target
    /// becomes what the node must compute so that the block's output is the original's given
    /// the pruned shortcut, which also corrects the error the shortcut carries.
    pub residual: bool,
    /// Give Conv and Gemm nodes without a bias one (zeros, then fitted as the intercept).
    pub intercept: bool,
    /// Seed of the position sampling.
    pub seed: u64,
}

impl Default for CompensateOptions {
    fn default() -> Self {
        CompensateOptions {
            rows: 8192,
            lambda: 1e-3,
            every_layer: false,
            residual: true,
            intercept: false,
            seed: 0,
        }
    }
}

/// What [`compensate`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compensation {
    /// Nodes refitted.
    pub layers: usize,
    /// Calibration samples seen per layer.
    pub samples: usize,
    /// Regression rows of the largest layer.
    pub rows: usize,
    /// Mean over layers of `‖X W − Y‖² / ‖Y‖²` with the inherited weights (on the rows).
    pub residual_before: f64,
    /// The same with the refitted weights.
    pub residual_after: f64,
    /// Nodes that lost input channels but were left as they are, as `name: why`.
    pub skipped: Vec<String>,
    /// Per refitted node, in the order they were refitted.
    pub per_layer: Vec<LayerFit>,
}

/// How one node was refitted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerFit {
    /// The node.
    pub name: String,
    /// Input channels kept, of the original's.
    pub inputs: (usize, usize),
    /// Regression columns: weights per output, and the intercept.
    pub d: usize,
    /// Regression rows.
    pub rows: usize,
    /// `‖X W − Y‖² / ‖Y‖²` with the inherited and with the refitted weights.
    pub before: f64,
    /// See `before`.
    pub after: f64,
}

/// How a layer turns its input into regression rows.
#[derive(Clone, Debug, PartialEq)]
enum Kind {
    /// A convolution (group 1) with 1 or 2 spatial axes.
    Conv {
        /// Spatial rank (1 or 2).
        rank: usize,
        /// Kernel, strides, dilations as `[h, w]` (1-D: `h` = 1).
        kernel: [usize; 2],
        strides: [usize; 2],
        dilations: [usize; 2],
        /// `pads` (ONNX layout, padded to 2-D) or `auto_pad`.
        pads: [usize; 4],
        auto_pad: String,
    },
    /// A matrix product over the last axis: `Y = alpha·X·W + beta·bias`, `W` stored
    /// `[in, out]` or, `out_major`, `[out, in]` (Gemm, MatMul).
    Dense {
        out_major: bool,
        alpha: f64,
        beta: f64,
    },
}

/// What a layer is fitted to, per kept output channel `o` (original channel `k[o]`).
#[derive(Clone, Debug, PartialEq)]
enum Target {
    /// The original node's output `y` (a value of the original): `y[k[o]]`, or through a
    /// per-channel map `a[o]·y[k[o]] + b[o]` (see [`node_target`]).
    Node {
        y: ValueId,
        map: Option<(Vec<f64>, Vec<f64>)>,
    },
    /// Through the residual `Add` the node feeds: `(a[k[o]] − s[o] − shift[o]) / scale[o]`,
    /// where `a` is the original `Add`'s output, `s` the pruned model's shortcut (the
    /// `Add`'s other input) and `scale`, `shift` the per-channel affine map (inference
    /// BatchNormalization, or none) between the node and the `Add` in the pruned model.
    Residual {
        add: ValueId,
        shortcut: ValueId,
        scale: Vec<f64>,
        shift: Vec<f64>,
    },
}

/// A node to refit.
struct Layer {
    node: NodeId,
    name: String,
    kind: Kind,
    /// Pruned model: data input, weight, bias (Conv `B`, Gemm `C`).
    x: ValueId,
    w: ValueId,
    bias: Option<ValueId>,
    /// Where a bias goes when the node can have one.
    bias_port: Option<usize>,
    /// What the refitted node must compute.
    target: Target,
    kept: NodeChannels,
    /// Columns: kept input channels × kernel positions.
    cols: usize,
}

impl Layer {
    /// The value of the original the layer's [`Target`] reads.
    fn target_value(&self) -> ValueId {
        match &self.target {
            Target::Node { y, .. } | Target::Residual { add: y, .. } => *y,
        }
    }

    /// Regression columns: the weights, and the intercept when there is a bias.
    fn d(&self) -> usize {
        self.cols + usize::from(self.bias.is_some())
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::Usage(format!("compensating node '{}': {msg}", self.name))
    }
}

/// Refits, in `pruned`, every Conv/Gemm/MatMul that `plan` (made for `original`, e.g.
/// [`PruneReport::plan`](super::PruneReport::plan)) took input channels from, so that it
/// reproduces `original`'s output of the same node on `batches` (kept in memory: every layer
/// reads them again), running probes in `backend`. Errors, leaving `pruned` unchanged, when
/// nothing lost input channels, the models do not fit the plan or the batches, the features
/// are not finite, or a system cannot be solved.
#[allow(clippy::too_many_arguments)]
pub fn compensate(
    pruned: &mut Model,
    original: &Model,
    plan: &PlanFile,
    batches: &[CalibrationBatch],
    backend: BackendKind,
    opts: &RuntimeOptions,
    settings: &CompensateOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Compensation> {
    let kept = kept_channels(original, plan)?;
    let (mut layers, skipped) = layers(pruned, original, &kept, settings)?;
    if layers.is_empty() {
        let why = if skipped.is_empty() {
            String::new()
        } else {
            format!(" that can be refitted (skipped: {})", skipped.join("; "))
        };
        return Err(Error::Usage(format!(
            "nothing to compensate: no Conv, Gemm or MatMul lost input channels{why}"
        )));
    }
    if batches.is_empty() {
        return Err(Error::Usage("no calibration batches".into()));
    }
    let counts: Vec<usize> = batches
        .iter()
        .map(|b| {
            b.first()
                .map_or(0, |(_, t)| t.shape().first().copied().unwrap_or(1))
        })
        .collect();
    let samples: usize = counts.iter().sum();
    let dir = TempDir::new("compensate")?;
    let mut work = pruned.clone();
    let mut report = Compensation {
        layers: layers.len(),
        samples,
        skipped,
        ..Default::default()
    };
    let total = layers.len();
    let run = Run {
        batches,
        counts: &counts,
        backend,
        opts,
        settings,
        dir: dir.path(),
    };
    let mut targets: Vec<Option<Vec<Sampled>>> = (0..total).map(|_| None).collect();
    for k in 0..total {
        progress(k, total);
        if targets[k].is_none() {
            sample_targets(original, &layers, k, &run, &mut targets)?;
        }
        let sampled = targets[k].take().unwrap_or_default();
        let layer = &mut layers[k];
        if settings.intercept {
            add_bias(&mut work, layer)?;
        }
        let fit = refit(&mut work, layer, &sampled, &run)?;
        report.rows = report.rows.max(fit.rows);
        report.residual_before += fit.before / total as f64;
        report.residual_after += fit.after / total as f64;
        report.per_layer.push(fit);
    }
    progress(layers.len(), layers.len());
    *pruned = work;
    Ok(report)
}

/// The layers of `pruned` to refit, in topological order, and the skipped ones (`name:
/// why`). Errors when a node does not match the plan or is missing from `original`.
fn layers(
    pruned: &Model,
    original: &Model,
    kept: &super::kept::KeptChannels,
    settings: &CompensateOptions,
) -> Result<(Vec<Layer>, Vec<String>)> {
    let g = &pruned.graph;
    let shapes = infer_shapes(pruned)?;
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    for n in g.topo_order()? {
        let node = g.node(n);
        let (Some(s), Some(k)) = (linear_slots(pruned, &shapes, n), kept.get(&node.name)) else {
            continue;
        };
        if !settings.every_layer && !k.inputs_reduced() {
            continue;
        }
        if s.in_channels != k.inputs.len() || s.out_channels != k.outputs.len() {
            return Err(Error::Usage(format!(
                "node '{}' has {}→{} channels, the plan leaves it {}→{}: is this the model the plan pruned?",
                node.name,
                s.in_channels,
                s.out_channels,
                k.inputs.len(),
                k.outputs.len()
            )));
        }
        match layer(pruned, &shapes, original, n, k.clone()) {
            Ok(mut l) => {
                if settings.residual {
                    if let Some(t) = residual_target(pruned, original, n, l.kept.outputs.len()) {
                        l.target = t;
                    }
                }
                out.push(l)
            }
            Err(Skip(why)) => {
                if k.inputs_reduced() {
                    skipped.push(format!("{}: {why}", node.name));
                }
            }
        }
    }
    Ok((out, skipped))
}

/// Why a node is not refitted.
struct Skip(String);

fn skip<T>(why: impl Into<String>) -> std::result::Result<T, Skip> {
    Err(Skip(why.into()))
}

/// The layer of node `n` of `pruned`, or why it cannot be refitted.
fn layer(
    pruned: &Model,
    shapes: &Shapes,
    original: &Model,
    n: NodeId,
    kept: NodeChannels,
) -> std::result::Result<Layer, Skip> {
    let g = &pruned.graph;
    let node = g.node(n);
    let (Some(x), Some(w)) = (node.input(0), node.input(1)) else {
        return skip("no data input or weight");
    };
    let Some(wt) = g.init(w) else {
        return skip("the weight is not constant");
    };
    if !matches!(wt.dtype(), DType::F32 | DType::F64 | DType::F16) {
        return skip(format!("weights of type {}", wt.dtype()));
    }
    if g.value(w).uses.len() != 1 {
        return skip("the weight is shared with other nodes");
    }
    let Some(lin) = linear(pruned, shapes, n) else {
        return skip(format!("op {} is not a linear layer", node.op_type));
    };
    let bias = lin.bias_port.and_then(|p| node.input(p));
    if let Some(b) = bias {
        if g.init(b).is_none() || g.value(b).uses.len() != 1 {
            return skip("the bias is not a constant of its own");
        }
        let len = g.init(b).map_or(0, Tensor::len);
        if len != 1 && len != kept.outputs.len() {
            return skip("a bias that is not one value per output");
        }
    }
    let (kind, cols) = match lin.form {
        Form::Conv { group, window } => {
            let (kind, taps) = conv_kind(group, window)?;
            (kind, lin.in_channels * taps)
        }
        Form::Dense {
            channels_first: true,
            ..
        } => return skip(format!("{} with its input transposed", node.op_type)),
        Form::Dense { alpha: 0.0, .. } => return skip(format!("{} with alpha 0", node.op_type)),
        Form::Dense {
            out_major,
            alpha,
            beta,
            ..
        } => (
            Kind::Dense {
                out_major,
                alpha,
                beta,
            },
            kept.inputs.len(),
        ),
    };
    let Some(on) = original
        .graph
        .node_ids()
        .find(|&m| original.graph.node(m).name == node.name)
    else {
        return skip("not in the original model");
    };
    let onode = original.graph.node(on);
    let Some(y) = onode.output(0).filter(|_| onode.op_type == node.op_type) else {
        return skip(format!("the original node is a {}", onode.op_type));
    };
    Ok(Layer {
        node: n,
        name: node.name.clone(),
        kind,
        x,
        w,
        bias,
        bias_port: lin.bias_port,
        target: node_target(pruned, original, n, on, y, &kept),
        kept,
        cols,
    })
}

/// A convolution `window` of `group`s as a [`Kind::Conv`] (1 or 2 spatial axes, group 1)
/// and its taps.
fn conv_kind(group: usize, window: Window) -> std::result::Result<(Kind, usize), Skip> {
    if group != 1 {
        return skip("grouped convolution");
    }
    let rank = window.kernel.len();
    if !(1..=2).contains(&rank) {
        return skip(format!("{rank}-D convolution"));
    }
    // 1-D: a height of 1.
    let two = |v: &[usize], one: usize| -> [usize; 2] {
        if rank == 1 {
            [one, v[0]]
        } else {
            [v[0], v[1]]
        }
    };
    let p = &window.pads;
    let pads = if rank == 1 {
        [0, p[0], 0, p[1]]
    } else {
        [p[0], p[1], p[2], p[3]]
    };
    let kernel = two(&window.kernel, 1);
    let kind = Kind::Conv {
        rank,
        kernel,
        strides: two(&window.strides, 1),
        dilations: two(&window.dilations, 1),
        pads,
        auto_pad: window.auto_pad,
    };
    Ok((kind, kernel[0] * kernel[1]))
}

/// The one node reading `v` (not a graph output).
fn only_use(g: &crate::ir::Graph, v: ValueId) -> Option<NodeId> {
    match g.value(v).uses.as_slice() {
        [(u, _)] if !g.outputs.contains(&v) => Some(*u),
        _ => None,
    }
}

/// The per-channel affine map at inference (an inference BatchNormalization,
/// [`Op::channel_affine`](crate::ops::Op::channel_affine)) that alone reads node `n`'s output
/// in `model` and has no other output read: the node and the map `(scale, shift)`,
/// `y ↦ scale·y + shift`.
fn affine_after(model: &Model, n: NodeId) -> Option<(NodeId, Vec<f64>, Vec<f64>)> {
    let g = &model.graph;
    let b = only_use(g, g.node(n).output(0)?)?;
    if g.node(b).outputs.iter().skip(1).any(Option::is_some) {
        return None;
    }
    let affine = crate::ops::channel_affine_of(g, b)?;
    Some((b, affine.scale, affine.shift))
}

/// The [`Target::Node`] of pruned node `n` (kept channels `kept`) whose original is `y`'s
/// producer `on`. When both feed a BatchNormalization of the same name whose statistics
/// differ (the pruned one recalibrated), the target is the original's normalised output
/// pulled back through the pruned normalisation, so that the two normalised outputs match.
fn node_target(
    pruned: &Model,
    original: &Model,
    n: NodeId,
    on: NodeId,
    y: ValueId,
    kept: &NodeChannels,
) -> Target {
    let plain = Target::Node { y, map: None };
    let (Some((bp, sp, cp)), Some((bo, so, co))) =
        (affine_after(pruned, n), affine_after(original, on))
    else {
        return plain;
    };
    let m = kept.outputs.len();
    if pruned.graph.node(bp).name != original.graph.node(bo).name
        || sp.len() != m
        || so.len() != kept.out_channels
        || sp.contains(&0.0)
    {
        return plain;
    }
    let (mut a, mut b) = (vec![1.0; m], vec![0.0; m]);
    for (q, &o) in kept.outputs.iter().enumerate() {
        a[q] = so[o] / sp[q];
        b[q] = (co[o] - cp[q]) / sp[q];
    }
    if a.iter()
        .zip(&b)
        .all(|(a, b)| (a - 1.0).abs() < 1e-12 && b.abs() < 1e-12)
    {
        return plain;
    }
    Target::Node {
        y,
        map: Some((a, b)),
    }
}

/// The [`Target::Residual`] of node `n` of `pruned` (`m` outputs): its output feeds, alone,
/// an inference BatchNormalization that feeds, alone, an `Add` (or the `Add` directly),
/// which the original has under the same name. `None` otherwise, or when a scale is 0.
fn residual_target(pruned: &Model, original: &Model, n: NodeId, m: usize) -> Option<Target> {
    let g = &pruned.graph;
    let mut v = g.node(n).output(0)?;
    let (mut scale, mut shift) = (vec![1.0; m], vec![0.0; m]);
    if let Some((bn, s, c)) = affine_after(pruned, n) {
        if s.len() != m {
            return None;
        }
        (scale, shift) = (s, c);
        v = g.node(bn).output(0)?;
    }
    let add = g.node(only_use(g, v)?);
    if add.op_type != "Add" || add.inputs.len() != 2 || scale.contains(&0.0) {
        return None;
    }
    let shortcut = add.inputs.iter().flatten().copied().find(|&i| i != v)?;
    let oa = original
        .graph
        .node_ids()
        .map(|a| original.graph.node(a))
        .find(|a| a.name == add.name && a.op_type == "Add")?;
    Some(Target::Residual {
        add: oa.output(0)?,
        shortcut,
        scale,
        shift,
    })
}

/// Loads `model` cut to compute `values` only (as its outputs) into `backend`.
fn probe(
    model: &Model,
    values: &[ValueId],
    backend: BackendKind,
    opts: &RuntimeOptions,
    path: &std::path::Path,
) -> Result<Box<dyn Session>> {
    let mut probe = model.clone();
    probe.graph.outputs = values.to_vec();
    for &v in values {
        if probe.graph.value(v).decl.is_none() {
            let name = probe.graph.value(v).name.clone();
            probe.graph.set_decl(
                v,
                ValueInfoProto {
                    name: Some(name),
                    ..Default::default()
                },
            );
        }
    }
    crate::passes::eliminate_dead_code(&mut probe)?;
    probe.save(path, &Default::default())?;
    runtime::load_with(backend, path, opts)
}

/// Output `name` of a run (as f32, with its shape).
fn fetch(outs: &[(String, Tensor)], name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
    let (_, t) = outs
        .iter()
        .find(|(n, _)| n == name)
        .ok_or_else(|| Error::Usage(format!("the runtime did not return '{name}'")))?;
    let v = t
        .to_f32_vec()
        .ok_or_else(|| Error::Usage(format!("'{name}' is not a float tensor")))?;
    Ok((v, t.shape().to_vec()))
}

/// What every layer's probing shares: the batches (and their sample counts), the runtime,
/// the settings and a scratch folder.
struct Run<'a> {
    batches: &'a [CalibrationBatch],
    counts: &'a [usize],
    backend: BackendKind,
    opts: &'a RuntimeOptions,
    settings: &'a CompensateOptions,
    dir: &'a std::path::Path,
}

impl Run<'_> {
    /// Rows to sample in batch `b`: the layer's rows spread over the batches by size.
    fn quota(&self, b: usize) -> usize {
        let samples: usize = self.counts.iter().sum();
        (self.settings.rows * self.counts[b]).div_ceil(samples.max(1))
    }
}

/// A layer's sampled output positions in one batch and the original's values there.
#[derive(Clone, Debug, Default)]
struct Sampled {
    /// The original target's shape as `[n, c, h, w]` ([`as_nchw`]).
    shape: [usize; 4],
    /// Positions `(sample·h + row)·w + column`.
    positions: Vec<usize>,
    /// The original target at the kept output channels, `positions.len()` rows of `m`.
    values: Vec<f32>,
}

/// Bytes of sampled targets one pass over the original may hold: layers are taken in
/// chunks under it, each chunk one pass.
const TARGET_BYTES: usize = 256 << 20;

/// Runs the original once over the batches for layers `from..` (as many as fit in
/// [`TARGET_BYTES`]) and stores each one's sampled targets in `targets`.
fn sample_targets(
    original: &Model,
    layers: &[Layer],
    from: usize,
    run: &Run,
    targets: &mut [Option<Vec<Sampled>>],
) -> Result<()> {
    let rows = run.settings.rows + run.batches.len();
    let mut to = from;
    let mut bytes = 0;
    while to < layers.len() && (to == from || bytes < TARGET_BYTES) {
        bytes += rows * (layers[to].kept.outputs.len() * 4 + 8);
        to += 1;
    }
    let chunk = &layers[from..to];
    let values: Vec<ValueId> = chunk.iter().map(Layer::target_value).collect();
    let mut unique = values.clone();
    unique.sort_unstable();
    unique.dedup();
    let path = run.dir.join("original.onnx");
    let mut session = probe(original, &unique, run.backend, run.opts, &path)?;
    let mut rngs: Vec<SplitMix64> = (from..to).map(|k| layer_rng(run.settings, k)).collect();
    let mut out: Vec<Vec<Sampled>> = vec![Vec::new(); chunk.len()];
    for (b, batch) in run.batches.iter().enumerate() {
        let outs = session.run(batch)?;
        for (i, layer) in chunk.iter().enumerate() {
            let name = &original.graph.value(values[i]).name;
            let y = fetch(&outs, name)?;
            out[i].push(sample(layer, &y, run.quota(b), &mut rngs[i])?);
        }
    }
    for (i, o) in out.into_iter().enumerate() {
        targets[from + i] = Some(o);
    }
    Ok(())
}

/// The sampling stream of layer `k`.
fn layer_rng(settings: &CompensateOptions, k: usize) -> SplitMix64 {
    SplitMix64::new(settings.seed ^ (k as u64).wrapping_mul(0x9E37_79B9))
}

/// Samples `quota` output positions of one batch of `layer`'s original target `y` and keeps
/// the kept output channels there. Errors when `y` does not fit the plan or is not finite.
fn sample(
    layer: &Layer,
    (y, ys): &(Vec<f32>, Vec<usize>),
    quota: usize,
    rng: &mut SplitMix64,
) -> Result<Sampled> {
    let Some(shape @ [n, yc, yh, yw]) = as_nchw(&layer.kind, ys) else {
        return Err(layer.err(format!("unexpected original output shape {ys:?}")));
    };
    if yc != layer.kept.out_channels {
        return Err(layer.err(format!(
            "the original output has {yc} channels, the plan says {}",
            layer.kept.out_channels
        )));
    }
    let count = n * yh * yw;
    let mut order: Vec<usize> = (0..count).collect();
    let take = quota.min(count);
    for i in 0..take {
        let j = i + rng.below(count - i);
        order.swap(i, j);
    }
    order.truncate(take);
    let mut values = Vec::with_capacity(take * layer.kept.outputs.len());
    for &p in &order {
        let (b, at) = (p / (yh * yw), p % (yh * yw));
        values.extend(
            layer
                .kept
                .outputs
                .iter()
                .map(|&o| y[(b * yc + o) * yh * yw + at]),
        );
    }
    if !values.iter().all(|v| v.is_finite()) {
        return Err(layer.err("the original output is not finite on the calibration data"));
    }
    Ok(Sampled {
        shape,
        positions: order,
        values,
    })
}

/// Refits `layer` in `work` on its sampled targets: one pass of the model up to the node's
/// input (and the shortcut of a [`Target::Residual`]) over the batches, then the solve.
fn refit(work: &mut Model, layer: &Layer, sampled: &[Sampled], run: &Run) -> Result<LayerFit> {
    let mut from = vec![layer.x];
    if let Target::Residual { shortcut, .. } = &layer.target {
        from.push(*shortcut);
    }
    let path = run.dir.join("pruned.onnx");
    let mut session = probe(work, &from, run.backend, run.opts, &path)?;
    let names: Vec<String> = from
        .iter()
        .map(|&v| work.graph.value(v).name.clone())
        .collect();
    let mut normal = Normal::new(layer.d(), layer.kept.outputs.len());
    for (batch, t) in run.batches.iter().zip(sampled) {
        let outs = session.run(batch)?;
        let x = fetch(&outs, &names[0])?;
        let s = names.get(1).map(|n| fetch(&outs, n)).transpose()?;
        add_rows(layer, &x, s.as_ref(), t, &mut normal)?;
    }
    let w0 = weights(work, layer)?;
    let (w1, before, after) = normal.solve(&w0, run.settings.lambda, layer)?;
    set_weights(work, layer, &w1)?;
    Ok(LayerFit {
        name: layer.name.clone(),
        inputs: (layer.kept.inputs.len(), layer.kept.in_channels),
        d: layer.d(),
        rows: normal.rows,
        before,
        after,
    })
}

/// Adds the rows of one batch: at each sampled position, the input patch of the pruned
/// input `x` and the layer's [`Target`] (from the sampled original values and, for a
/// residual target, the pruned `shortcut`).
fn add_rows(
    layer: &Layer,
    (x, xs): &(Vec<f32>, Vec<usize>),
    shortcut: Option<&(Vec<f32>, Vec<usize>)>,
    t: &Sampled,
    normal: &mut Normal,
) -> Result<()> {
    let [n, _, yh, yw] = t.shape;
    let m = layer.kept.outputs.len();
    let Some([xn, c, h, w]) = as_nchw(&layer.kind, xs) else {
        return Err(layer.err(format!("unexpected input shape {xs:?}")));
    };
    let geo = geometry(&layer.kind, [h, w])
        .filter(|g| g.out == [yh, yw] && xn == n)
        .ok_or_else(|| {
            layer.err(format!(
                "the input {xs:?} does not give the original output {:?}",
                t.shape
            ))
        })?;
    if c != layer.kept.inputs.len() {
        return Err(layer.err(format!(
            "the input has {c} channels, the plan says {}",
            layer.kept.inputs.len()
        )));
    }
    let residual = match (&layer.target, shortcut) {
        (Target::Residual { scale, shift, .. }, Some((s, ss))) => {
            if as_nchw(&layer.kind, ss) != Some([n, m, yh, yw]) {
                return Err(layer.err(format!(
                    "the shortcut {ss:?} does not fit the output {:?}",
                    t.shape
                )));
            }
            Some((s, scale, shift))
        }
        _ => None,
    };
    let map = match &layer.target {
        Target::Node {
            map: Some((a, b)), ..
        } => Some((a, b)),
        _ => None,
    };
    let (d, [kh, kw]) = (layer.d(), geo.kernel);
    let mut row = vec![0.0f64; d];
    let mut target = vec![0.0f64; m];
    if layer.bias.is_some() {
        row[d - 1] = 1.0;
    }
    for (r, &p) in t.positions.iter().enumerate() {
        let (b, oh, ow) = (p / (yh * yw), (p / yw) % yh, p % yw);
        for ci in 0..c {
            for i in 0..kh {
                let ih = (oh * geo.strides[0] + i * geo.dilations[0]).checked_sub(geo.begin[0]);
                for j in 0..kw {
                    let iw = (ow * geo.strides[1] + j * geo.dilations[1]).checked_sub(geo.begin[1]);
                    let v = match (ih, iw) {
                        (Some(ih), Some(iw)) if ih < h && iw < w => {
                            x[((b * c + ci) * h + ih) * w + iw] as f64
                        }
                        _ => 0.0,
                    };
                    row[(ci * kh + i) * kw + j] = v;
                }
            }
        }
        if !row.iter().all(|v| v.is_finite()) {
            return Err(layer.err("its input is not finite on the calibration data"));
        }
        for (q, tq) in target.iter_mut().enumerate() {
            *tq = t.values[r * m + q] as f64;
            if let Some((s, scale, shift)) = residual {
                let sv = s[((b * m + q) * yh + oh) * yw + ow] as f64;
                *tq = (*tq - sv - shift[q]) / scale[q];
            }
            if let Some((a, c)) = map {
                *tq = a[q] * *tq + c[q];
            }
        }
        if !target.iter().all(|v| v.is_finite()) {
            return Err(layer.err("the shortcut is not finite on the calibration data"));
        }
        normal.add(&row, &target);
    }
    Ok(())
}

#[path = "compensate_solve.rs"]
mod solve;
use solve::*;

#[path = "compensate_geometry.rs"]
mod geometry;
use geometry::*;

#[path = "compensate_weights.rs"]
mod weights;
use weights::*;

#[cfg(test)]
#[path = "compensate_tests.rs"]
mod tests;
