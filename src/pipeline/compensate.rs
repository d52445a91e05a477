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

use super::kept::{kept_channels, linear_slots, NodeChannels};

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
    /// Gemm (no `transA`): `Y = alpha·X·B + beta·C`.
    Gemm {
        trans_b: bool,
        alpha: f64,
        beta: f64,
    },
    /// MatMul with a rank-2 constant `B`.
    MatMul,
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
        match layer(pruned, original, n, k.clone()) {
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
    let bias = node.input(2);
    if let Some(b) = bias {
        if g.init(b).is_none() || g.value(b).uses.len() != 1 {
            return skip("the bias is not a constant of its own");
        }
    }
    let ws = wt.shape().to_vec();
    let (kind, cols) = match node.op_type.as_str() {
        "Conv" => {
            if node.attr_i("group").unwrap_or(1) != 1 {
                return skip("grouped convolution");
            }
            let rank = ws.len() - 2;
            if !(1..=2).contains(&rank) {
                return skip(format!("{rank}-D convolution"));
            }
            let two = |name: &str, default: usize| -> [usize; 2] {
                let v: Vec<usize> = node
                    .attr_ints(name)
                    .map(|v| v.iter().map(|&x| x.max(0) as usize).collect())
                    .unwrap_or_else(|| vec![default; rank]);
                if rank == 1 {
                    [default, v.first().copied().unwrap_or(default)]
                } else {
                    [
                        v.first().copied().unwrap_or(default),
                        v.get(1).copied().unwrap_or(default),
                    ]
                }
            };
            let kernel = if rank == 1 {
                [1, ws[2]]
            } else {
                [ws[2], ws[3]]
            };
            let p: Vec<usize> = node
                .attr_ints("pads")
                .map(|v| v.iter().map(|&x| x.max(0) as usize).collect())
                .unwrap_or_else(|| vec![0; 2 * rank]);
            let pads = if rank == 1 {
                [
                    0,
                    p.first().copied().unwrap_or(0),
                    0,
                    p.get(1).copied().unwrap_or(0),
                ]
            } else {
                let at = |i: usize| p.get(i).copied().unwrap_or(0);
                [at(0), at(1), at(2), at(3)]
            };
            let kind = Kind::Conv {
                rank,
                kernel,
                strides: two("strides", 1),
                dilations: two("dilations", 1),
                pads,
                auto_pad: node.attr_s("auto_pad").unwrap_or_else(|| "NOTSET".into()),
            };
            (kind, ws[1] * kernel[0] * kernel[1])
        }
        "Gemm" => {
            if node.attr_i("transA").unwrap_or(0) != 0 {
                return skip("Gemm with transA");
            }
            let kind = Kind::Gemm {
                trans_b: node.attr_i("transB").unwrap_or(0) != 0,
                alpha: node.attr_f("alpha").map_or(1.0, f64::from),
                beta: node.attr_f("beta").map_or(1.0, f64::from),
            };
            if let (Some(b), Kind::Gemm { beta, alpha, .. }) = (bias, &kind) {
                let len = g.init(b).map_or(0, Tensor::len);
                if len != 1 && len != kept.outputs.len() {
                    return skip("a Gemm bias that is not one value per output");
                }
                if *beta == 0.0 {
                    return skip("Gemm with beta 0");
                }
                if *alpha == 0.0 {
                    return skip("Gemm with alpha 0");
                }
            }
            (kind, kept.inputs.len())
        }
        "MatMul" => (Kind::MatMul, kept.inputs.len()),
        other => return skip(format!("op {other}")),
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
        target: node_target(pruned, original, n, on, y, &kept),
        kept,
        cols,
    })
}

/// The one node reading `v` (not a graph output).
fn only_use(g: &crate::ir::Graph, v: ValueId) -> Option<NodeId> {
    match g.value(v).uses.as_slice() {
        [(u, _)] if !g.outputs.contains(&v) => Some(*u),
        _ => None,
    }
}

/// The inference BatchNormalization that alone reads node `n`'s output in `model`, with its
/// per-channel affine map `(scale, shift)`: `bn(y) = scale·y + shift`.
fn batch_norm_after(model: &Model, n: NodeId) -> Option<(NodeId, Vec<f64>, Vec<f64>)> {
    let g = &model.graph;
    let b = only_use(g, g.node(n).output(0)?)?;
    let bn = g.node(b);
    if bn.op_type != "BatchNormalization" || bn.outputs.iter().skip(1).any(Option::is_some) {
        return None;
    }
    let param = |i: usize| g.init(bn.input(i)?)?.to_f64_vec();
    let (gamma, beta, mean, var) = (param(1)?, param(2)?, param(3)?, param(4)?);
    let c = gamma.len();
    if [beta.len(), mean.len(), var.len()] != [c; 3] {
        return None;
    }
    let eps = bn.attr_f("epsilon").map_or(1e-5, f64::from);
    let scale: Vec<f64> = (0..c).map(|o| gamma[o] / (var[o] + eps).sqrt()).collect();
    let shift = (0..c).map(|o| beta[o] - mean[o] * scale[o]).collect();
    Some((b, scale, shift))
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
        (batch_norm_after(pruned, n), batch_norm_after(original, on))
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
    if let Some((bn, s, c)) = batch_norm_after(pruned, n) {
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

/// The normal equations of one layer: `A = XᵀX` (upper triangle, `d×d`), `B = XᵀY` (`d×m`),
/// `‖y_o‖²` per output, all in f64.
struct Normal {
    d: usize,
    m: usize,
    a: Vec<f64>,
    b: Vec<f64>,
    yy: Vec<f64>,
    rows: usize,
}

impl Normal {
    fn new(d: usize, m: usize) -> Normal {
        Normal {
            d,
            m,
            a: vec![0.0; d * d],
            b: vec![0.0; d * m],
            yy: vec![0.0; m],
            rows: 0,
        }
    }

    /// Adds one row `x` (length `d`) with targets `y` (length `m`).
    fn add(&mut self, x: &[f64], y: &[f64]) {
        let (d, m) = (self.d, self.m);
        for (i, &xi) in x.iter().enumerate() {
            if xi == 0.0 {
                continue;
            }
            let row = &mut self.a[i * d + i..(i + 1) * d];
            for (r, &xj) in row.iter_mut().zip(&x[i..]) {
                *r += xi * xj;
            }
            for (r, &yo) in self.b[i * m..(i + 1) * m].iter_mut().zip(y) {
                *r += xi * yo;
            }
        }
        for (s, &yo) in self.yy.iter_mut().zip(y) {
            *s += yo * yo;
        }
        self.rows += 1;
    }

    /// The ridge solution for inherited weights `w0` (`m` rows of `d`), with the relative
    /// residuals before and after.
    fn solve(&mut self, w0: &[f64], lambda: f64, layer: &Layer) -> Result<(Vec<f64>, f64, f64)> {
        let (d, m) = (self.d, self.m);
        for i in 0..d {
            for j in 0..i {
                self.a[i * d + j] = self.a[j * d + i];
            }
        }
        let trace: f64 = (0..d).map(|i| self.a[i * d + i]).sum();
        let lam = if trace > 0.0 {
            lambda * trace / d as f64
        } else {
            1.0
        };
        let mut l = self.a.clone();
        for i in 0..d {
            l[i * d + i] += lam;
        }
        cholesky(&mut l, d).map_err(|i| {
            layer.err(format!(
                "the regularised normal equations are not positive definite (pivot {i} of {d}); raise lambda"
            ))
        })?;
        let mut w = vec![0.0; m * d];
        let mut rhs = vec![0.0; d];
        for o in 0..m {
            for i in 0..d {
                rhs[i] = self.b[i * m + o] + lam * w0[o * d + i];
            }
            solve_cholesky(&l, d, &mut rhs);
            w[o * d..(o + 1) * d].copy_from_slice(&rhs);
        }
        let total: f64 = self.yy.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let (before, after) = (self.residual(w0) / total, self.residual(&w) / total);
        if !w.iter().all(|v| v.is_finite()) {
            return Err(layer.err("the refitted weights are not finite"));
        }
        Ok((w, before, after))
    }

    /// `Σ_o ‖X w_o − y_o‖²` from the accumulated sums (`a` full).
    fn residual(&self, w: &[f64]) -> f64 {
        let (d, m) = (self.d, self.m);
        let mut r = 0.0;
        for o in 0..m {
            let wo = &w[o * d..(o + 1) * d];
            let mut quad = 0.0;
            let mut lin = 0.0;
            for i in 0..d {
                let ai = &self.a[i * d..(i + 1) * d];
                quad += wo[i] * ai.iter().zip(wo).map(|(a, b)| a * b).sum::<f64>();
                lin += wo[i] * self.b[i * m + o];
            }
            r += (quad - 2.0 * lin + self.yy[o]).max(0.0);
        }
        r
    }
}

/// In-place Cholesky factorisation `M = L·Lᵀ` of a symmetric `d×d` matrix (row-major; `L`
/// ends in the lower triangle). Errors with the pivot index when `M` is not positive definite.
fn cholesky(a: &mut [f64], d: usize) -> std::result::Result<(), usize> {
    for j in 0..d {
        let mut s = a[j * d + j];
        for k in 0..j {
            s -= a[j * d + k] * a[j * d + k];
        }
        if s <= 0.0 || !s.is_finite() {
            return Err(j);
        }
        let p = s.sqrt();
        a[j * d + j] = p;
        for i in j + 1..d {
            let (ri, rj) = (i * d, j * d);
            let mut s = a[ri + j];
            for k in 0..j {
                s -= a[ri + k] * a[rj + k];
            }
            a[ri + j] = s / p;
        }
    }
    Ok(())
}

/// Solves `L·Lᵀ x = b` in place (`l` from [`cholesky`]).
fn solve_cholesky(l: &[f64], d: usize, b: &mut [f64]) {
    for i in 0..d {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * d + k] * b[k];
        }
        b[i] = s / l[i * d + i];
    }
    for i in (0..d).rev() {
        let mut s = b[i];
        for k in i + 1..d {
            s -= l[k * d + i] * b[k];
        }
        b[i] = s / l[i * d + i];
    }
}

/// The geometry of a layer on an input of spatial size `[h, w]`: kernel, strides, dilations,
/// pads `[top, left]`, and the output size.
struct Geometry {
    kernel: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
    begin: [usize; 2],
    out: [usize; 2],
}

fn geometry(kind: &Kind, size: [usize; 2]) -> Option<Geometry> {
    let Kind::Conv {
        kernel,
        strides,
        dilations,
        pads,
        auto_pad,
        ..
    } = kind
    else {
        return Some(Geometry {
            kernel: [1, 1],
            strides: [1, 1],
            dilations: [1, 1],
            begin: [0, 0],
            out: size,
        });
    };
    let mut begin = [0; 2];
    let mut out = [0; 2];
    for a in 0..2 {
        let (s, dil) = (strides[a].max(1), dilations[a].max(1));
        let span = (kernel[a] - 1) * dil + 1;
        let (b, e) = match auto_pad.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => {
                let o = size[a].div_ceil(s);
                let total = ((o - 1) * s + span).saturating_sub(size[a]);
                let small = total / 2;
                if auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            }
            "VALID" => (0, 0),
            _ => (pads[a], pads[a + 2]),
        };
        let padded = size[a] + b + e;
        if padded < span {
            return None;
        }
        begin[a] = b;
        out[a] = (padded - span) / s + 1;
    }
    Some(Geometry {
        kernel: *kernel,
        strides: *strides,
        dilations: *dilations,
        begin,
        out,
    })
}

/// `[n, c, h, w]` of a layer's tensor: NCHW (1-D: `h` = 1) for a Conv, `[rows, c, 1, 1]` for
/// Gemm/MatMul (channels last).
fn as_nchw(kind: &Kind, shape: &[usize]) -> Option<[usize; 4]> {
    match kind {
        Kind::Conv { rank: 1, .. } if shape.len() == 3 => Some([shape[0], shape[1], 1, shape[2]]),
        Kind::Conv { rank: 2, .. } if shape.len() == 4 => {
            Some([shape[0], shape[1], shape[2], shape[3]])
        }
        Kind::Conv { .. } => None,
        _ => {
            let c = *shape.last()?;
            let n = shape[..shape.len() - 1].iter().product();
            Some([n, c, 1, 1])
        }
    }
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

/// Gives `layer`'s node in `model` a zero bias when it has none (Conv; Gemm with a nonzero
/// beta), so that the fit has an intercept.
fn add_bias(model: &mut Model, layer: &mut Layer) -> Result<()> {
    let ok = match layer.kind {
        Kind::Conv { .. } => true,
        Kind::Gemm { beta, .. } => beta != 0.0,
        Kind::MatMul => false,
    };
    if layer.bias.is_some() || !ok {
        return Ok(());
    }
    let w = model.graph.init(layer.w).map(Tensor::dtype);
    let dt = w.ok_or_else(|| layer.err("the weight is not constant"))?;
    let m = layer.kept.outputs.len();
    let name = format!("{}.bias", model.graph.value(layer.w).name);
    let t = Tensor::from_f64_as(dt, vec![m], &vec![0.0; m])?;
    let v = crate::passes::add_initializer(model, &name, t);
    model.graph.set_input(layer.node, 2, Some(v));
    layer.bias = Some(v);
    Ok(())
}

/// The layer's current weights in `model` as `m` rows of `d` (Gemm: times `alpha`, bias
/// times `beta`; a single-value Gemm bias repeated).
fn weights(model: &Model, layer: &Layer) -> Result<Vec<f64>> {
    let g = &model.graph;
    let (d, m, cols) = (layer.d(), layer.kept.outputs.len(), layer.cols);
    let w = g
        .init(layer.w)
        .and_then(Tensor::to_f64_vec)
        .ok_or_else(|| layer.err("the weight is not a float constant"))?;
    let mut out = vec![0.0; m * d];
    for o in 0..m {
        for i in 0..cols {
            out[o * d + i] = match layer.kind {
                Kind::Conv { .. } | Kind::Gemm { trans_b: true, .. } => w[o * cols + i],
                Kind::Gemm { .. } | Kind::MatMul => w[i * m + o],
            } * gemm_scale(&layer.kind).0;
        }
    }
    if let Some(b) = layer.bias {
        let bv = g
            .init(b)
            .and_then(Tensor::to_f64_vec)
            .ok_or_else(|| layer.err("the bias is not a float constant"))?;
        for o in 0..m {
            out[o * d + cols] = bv[if bv.len() == 1 { 0 } else { o }] * gemm_scale(&layer.kind).1;
        }
    }
    Ok(out)
}

/// `(alpha, beta)` of a Gemm, `(1, 1)` otherwise.
fn gemm_scale(kind: &Kind) -> (f64, f64) {
    match kind {
        Kind::Gemm { alpha, beta, .. } => (*alpha, *beta),
        _ => (1.0, 1.0),
    }
}

/// Writes `w` (`m` rows of `d`, as [`weights`] reads them) into the layer's initializers,
/// keeping their types and shapes (a single-value Gemm bias becomes one per output).
fn set_weights(model: &mut Model, layer: &Layer, w: &[f64]) -> Result<()> {
    let g = &mut model.graph;
    let (d, m, cols) = (layer.d(), layer.kept.outputs.len(), layer.cols);
    let (alpha, beta) = gemm_scale(&layer.kind);
    let old = g
        .init(layer.w)
        .cloned()
        .ok_or_else(|| layer.err("the weight is not constant"))?;
    let mut vals = vec![0.0; m * cols];
    for o in 0..m {
        for i in 0..cols {
            let at = match layer.kind {
                Kind::Conv { .. } | Kind::Gemm { trans_b: true, .. } => o * cols + i,
                Kind::Gemm { .. } | Kind::MatMul => i * m + o,
            };
            vals[at] = w[o * d + i] / alpha;
        }
    }
    g.set_init(
        layer.w,
        Tensor::from_f64_as(old.dtype(), old.shape().to_vec(), &vals)?,
    );
    if let Some(b) = layer.bias {
        let old = g
            .init(b)
            .cloned()
            .ok_or_else(|| layer.err("the bias is not constant"))?;
        let vals: Vec<f64> = (0..m).map(|o| w[o * d + cols] / beta).collect();
        let shape = if old.len() == m {
            old.shape().to_vec()
        } else {
            vec![m]
        };
        g.set_init(b, Tensor::from_f64_as(old.dtype(), shape, &vals)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::{attr_float, attr_int, attr_ints};
    use crate::ir::Graph;
    use crate::passes::testutil::{input, model};
    use crate::pipeline::kept::testutil::prune_steps;
    use crate::plan::{fingerprint, PlanMeta};

    /// Seeded normal samples.
    fn normal(n: usize, seed: u64) -> Vec<f32> {
        let mut r = SplitMix64::new(seed);
        (0..n).map(|_| r.normal() as f32).collect()
    }

    /// Runs `m` (one input `x`) on `x` in tract; its first output.
    fn run(m: &Model, x: &Tensor) -> Vec<f32> {
        let dir = TempDir::new("compensate-test").unwrap();
        let path = dir.path().join("m.onnx");
        m.save(&path, &Default::default()).unwrap();
        let mut s = runtime::load(BackendKind::Tract, &path).unwrap();
        let out = s.run(&[("x".to_string(), x.clone())]).unwrap();
        out[0].1.to_f32_vec().unwrap()
    }

    fn batches(shape: &[usize], count: usize) -> Vec<CalibrationBatch> {
        (0..count)
            .map(|k| {
                let n = shape.iter().product();
                vec![(
                    "x".to_string(),
                    Tensor::from_f32(shape.to_vec(), &normal(n, 100 + k as u64)),
                )]
            })
            .collect()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn settings(lambda: f64) -> CompensateOptions {
        CompensateOptions {
            lambda,
            ..Default::default()
        }
    }

    fn run_compensate(
        pruned: &mut Model,
        original: &Model,
        plan: &PlanFile,
        batches: &[CalibrationBatch],
        lambda: f64,
    ) -> Result<Compensation> {
        compensate(
            pruned,
            original,
            plan,
            batches,
            BackendKind::Tract,
            &Default::default(),
            &settings(lambda),
            &mut |_, _| {},
        )
    }

    /// `x[2,2,6,6] → Conv a (1×1; filter 2 = filter 0 + 2·filter 1) → Conv b (2 filters,
    /// 3×3, stride 2, pad 1, dilation `dil`, bias)`.
    fn dependent_convs(dil: i64) -> Model {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[2, 2, 6, 6]);
        let aw = g.add_initializer(
            "a.w",
            Tensor::from_f32(vec![3, 2, 1, 1], &[1.0, 0.0, 0.0, 1.0, 1.0, 2.0]),
        );
        let a = g.add_node("a", "Conv", &[Some(x), Some(aw)], &["a.y"], vec![]);
        let ay = g.node(a).outputs[0];
        let bw = g.add_initializer("b.w", Tensor::from_f32(vec![2, 3, 3, 3], &normal(54, 7)));
        let bb = g.add_initializer("b.b", Tensor::from_f32(vec![2], &[0.5, -1.0]));
        let attrs = vec![
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[dil, dil, dil, dil]),
            attr_ints("dilations", &[dil, dil]),
        ];
        let b = g.add_node("b", "Conv", &[ay, Some(bw), Some(bb)], &["y"], attrs);
        g.outputs.push(g.node(b).outputs[0].unwrap());
        model(g, 13)
    }

    #[test]
    fn a_removed_linear_combination_is_compensated_exactly() {
        for dil in [1, 2] {
            let m = dependent_convs(dil);
            let (mut p, plan) = prune_steps(&m, &[("a", &[2])]);
            let x = Tensor::from_f32(vec![2, 2, 6, 6], &normal(144, 99));
            let want = run(&m, &x);
            let err = max_diff(&run(&p, &x), &want);
            assert!(err > 0.1, "pruning changed nothing ({err})");
            let r = run_compensate(&mut p, &m, &plan, &batches(&[2, 2, 6, 6], 3), 1e-9).unwrap();
            assert_eq!((r.layers, r.samples), (1, 6));
            assert!(r.residual_before > 0.01, "{r:?}");
            assert!(r.residual_after < 1e-9, "{r:?}");
            let err = max_diff(&run(&p, &x), &want);
            assert!(err < 1e-4, "dilation {dil}: off by {err}");
            let w = p.graph.init(p.graph.value_by_name("b.w").unwrap()).unwrap();
            assert_eq!(w.shape(), &[2, 2, 3, 3]);
            crate::ir::verify(&p.graph).unwrap();
        }
    }

    /// `x[2,2,5,5] → Conv a (1×1, bias; filter 2 = filter 0 + 2·filter 1, bias 1) → Conv b
    /// (1×1, no bias) → BatchNormalization → Add x`.
    fn residual_block() -> Model {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[2, 2, 5, 5]);
        let aw = g.add_initializer(
            "a.w",
            Tensor::from_f32(vec![3, 2, 1, 1], &[1.0, -0.5, 0.25, 1.0, 1.5, 1.5]),
        );
        let ab = g.add_initializer("a.b", Tensor::from_f32(vec![3], &[0.0, 0.0, 1.0]));
        let a = g.add_node(
            "a",
            "Conv",
            &[Some(x), Some(aw), Some(ab)],
            &["a.y"],
            vec![],
        );
        let ay = g.node(a).outputs[0];
        let bw = g.add_initializer("b.w", Tensor::from_f32(vec![2, 3, 1, 1], &normal(6, 11)));
        let b = g.add_node("b", "Conv", &[ay, Some(bw)], &["b.y"], vec![]);
        let mut ins = vec![g.node(b).outputs[0]];
        for (name, v) in [
            ("s", [2.0, -0.5]),
            ("t", [0.1, 0.3]),
            ("m", [0.2, -1.0]),
            ("v", [4.0, 0.25]),
        ] {
            ins.push(Some(g.add_initializer(name, Tensor::from_f32(vec![2], &v))));
        }
        let bn = g.add_node("bn", "BatchNormalization", &ins, &["bn.y"], vec![]);
        let add = g.add_node(
            "add",
            "Add",
            &[g.node(bn).outputs[0], Some(x)],
            &["y"],
            vec![],
        );
        g.outputs.push(g.node(add).outputs[0].unwrap());
        model(g, 13)
    }

    #[test]
    fn an_intercept_and_a_residual_target_recover_a_block_exactly() {
        let m = residual_block();
        let (p, plan) = prune_steps(&m, &[("a", &[2])]);
        let x = Tensor::from_f32(vec![2, 2, 5, 5], &normal(100, 42));
        let want = run(&m, &x);
        let b = batches(&[2, 2, 5, 5], 2);
        let with = |intercept: bool, residual: bool| {
            let mut q = p.clone();
            let s = CompensateOptions {
                lambda: 1e-9,
                intercept,
                residual,
                ..Default::default()
            };
            let (rt, ro) = (BackendKind::Tract, RuntimeOptions::default());
            compensate(&mut q, &m, &plan, &b, rt, &ro, &s, &mut |_, _| {}).unwrap();
            crate::ir::verify(&q.graph).unwrap();
            max_diff(&run(&q, &x), &want)
        };
        // b's target through the BatchNormalization and the Add.
        let g = &p.graph;
        let bn = g.node_ids().find(|&n| g.node(n).name == "b").unwrap();
        let Some(Target::Residual { scale, shift, .. }) = residual_target(&p, &m, bn, 2) else {
            panic!("no residual target");
        };
        assert!(
            (scale[0] - 2.0 / (4.0f64 + 1e-5).sqrt()).abs() < 1e-6,
            "{scale:?}"
        );
        assert!(
            (shift[1] - (0.3 + (-0.5) / (0.25f64 + 1e-5).sqrt())).abs() < 1e-6,
            "{shift:?}"
        );
        // Statistics changed in the pruned model (as recalibration would): a node target is
        // the original's normalised output pulled back through the new statistics.
        let mut recal = p.clone();
        for (name, v) in [("m", [0.7, 0.1]), ("v", [1.0, 2.0])] {
            let id = recal.graph.value_by_name(name).unwrap();
            recal.graph.set_init(id, Tensor::from_f32(vec![2], &v));
        }
        let s = CompensateOptions {
            lambda: 1e-9,
            intercept: true,
            ..Default::default()
        };
        let (rt, ro) = (BackendKind::Tract, RuntimeOptions::default());
        compensate(&mut recal, &m, &plan, &b, rt, &ro, &s, &mut |_, _| {}).unwrap();
        let err = max_diff(&run(&recal, &x), &want);
        assert!(err < 1e-4, "recalibrated: off by {err}");
        // b has no bias: the removed channel's constant part is lost without an intercept.
        assert!(with(false, false) > 1e-2);
        for residual in [false, true] {
            let err = with(true, residual);
            assert!(err < 1e-4, "residual {residual}: off by {err}");
        }
    }

    #[test]
    fn the_ridge_pulls_towards_the_inherited_weights() {
        let m = dependent_convs(1);
        let (p, plan) = prune_steps(&m, &[("a", &[2])]);
        let b = batches(&[2, 2, 6, 6], 2);
        let get = |m: &Model| {
            let g = &m.graph;
            g.init(g.value_by_name("b.w").unwrap())
                .unwrap()
                .to_f64_vec()
                .unwrap()
        };
        let w0 = get(&p);
        let dist = |lambda: f64| {
            let mut q = p.clone();
            let r = run_compensate(&mut q, &m, &plan, &b, lambda).unwrap();
            let w = get(&q);
            let d: f64 = w.iter().zip(&w0).map(|(a, b)| (a - b).powi(2)).sum();
            (d, r.residual_after)
        };
        let (near, far) = (dist(1e3), dist(1e-6));
        assert!(near.0 < far.0 * 1e-2, "{near:?} {far:?}");
        assert!(near.1 > far.1, "{near:?} {far:?}");
        // Deterministic.
        assert_eq!(dist(1e-3), dist(1e-3));
    }

    /// `x[N,4] → a (features 0, 1, and 0 − 1 + 3) → b (2 outputs)`: Gemm (a with bias and
    /// transB; b with alpha, beta and a one-value bias) or MatMul.
    fn dependent_dense(op: &str) -> Model {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[8, 4]);
        // a's weight as [out, in]: rows f0, f1, f0 - f1.
        let r = [[1.0, 2.0, 0.0, -1.0], [0.5, -1.0, 3.0, 0.0]];
        let mut aw: Vec<f32> = r.concat();
        aw.extend((0..4).map(|i| r[0][i] - r[1][i]));
        let bw = normal(6, 3);
        let out = if op == "Gemm" {
            let aw = g.add_initializer("a.w", Tensor::from_f32(vec![3, 4], &aw));
            let ab = g.add_initializer("a.b", Tensor::from_f32(vec![3], &[1.0, -2.0, 6.0]));
            let a = g.add_node(
                "a",
                "Gemm",
                &[Some(x), Some(aw), Some(ab)],
                &["a.y"],
                vec![attr_int("transB", 1)],
            );
            let ay = g.node(a).outputs[0];
            let bw = g.add_initializer("b.w", Tensor::from_f32(vec![3, 2], &bw));
            let bb = g.add_initializer("b.b", Tensor::from_f32(vec![1], &[0.25]));
            let attrs = vec![attr_float("alpha", 2.0), attr_float("beta", 0.5)];
            let b = g.add_node("b", "Gemm", &[ay, Some(bw), Some(bb)], &["y"], attrs);
            g.node(b).outputs[0]
        } else {
            let t: Vec<f32> = (0..12).map(|k| aw[(k % 3) * 4 + k / 3]).collect();
            let aw = g.add_initializer("a.w", Tensor::from_f32(vec![4, 3], &t));
            let a = g.add_node("a", "MatMul", &[Some(x), Some(aw)], &["a.y"], vec![]);
            let ay = g.node(a).outputs[0];
            let bw = g.add_initializer("b.w", Tensor::from_f32(vec![3, 2], &bw));
            let b = g.add_node("b", "MatMul", &[ay, Some(bw)], &["y"], vec![]);
            g.node(b).outputs[0]
        };
        g.outputs.push(out.unwrap());
        model(g, 13)
    }

    #[test]
    fn gemm_and_matmul_consumers_are_compensated_exactly() {
        for op in ["Gemm", "MatMul"] {
            let m = dependent_dense(op);
            let (mut p, plan) = prune_steps(&m, &[("a", &[2])]);
            let x = Tensor::from_f32(vec![8, 4], &normal(32, 5));
            let want = run(&m, &x);
            assert!(max_diff(&run(&p, &x), &want) > 0.1, "{op}");
            let r = run_compensate(&mut p, &m, &plan, &batches(&[8, 4], 2), 1e-9).unwrap();
            assert_eq!(r.layers, 1, "{op}");
            let err = max_diff(&run(&p, &x), &want);
            assert!(err < 1e-4, "{op}: off by {err}");
            crate::ir::verify(&p.graph).unwrap();
        }
    }

    #[test]
    fn nothing_to_compensate_is_refused() {
        let m = dependent_convs(1);
        let plan = PlanFile::new(fingerprint(&m), PlanMeta::default());
        let mut p = m.clone();
        let e = run_compensate(&mut p, &m, &plan, &batches(&[2, 2, 6, 6], 1), 1e-3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing to compensate"), "{e}");
    }

    #[test]
    fn non_finite_features_are_an_error_naming_the_node() {
        let m = dependent_convs(1);
        let (mut p, plan) = prune_steps(&m, &[("a", &[2])]);
        let mut v = normal(144, 1);
        v[40] = f32::NAN;
        let b = vec![vec![(
            "x".to_string(),
            Tensor::from_f32(vec![2, 2, 6, 6], &v),
        )]];
        let before = p.clone();
        let e = run_compensate(&mut p, &m, &plan, &b, 1e-3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("node 'b'") && e.contains("not finite"), "{e}");
        assert_eq!(fingerprint(&p), fingerprint(&before));
    }

    #[test]
    fn cholesky_solves_a_small_system() {
        // M = [[4, 2], [2, 3]], b = [2, 1] → x = [0.5, 0].
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        cholesky(&mut a, 2).unwrap();
        let mut b = vec![2.0, 1.0];
        solve_cholesky(&a, 2, &mut b);
        assert!((b[0] - 0.5).abs() < 1e-12 && b[1].abs() < 1e-12, "{b:?}");
        let mut bad = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(cholesky(&mut bad, 2), Err(1));
    }
}
