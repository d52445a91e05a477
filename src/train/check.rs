//! Gradient checking: compares the gradients [`super::autodiff`] compiles against central
//! finite differences of the same model, run by a runtime. The model's output is reduced to a
//! scalar loss by a fixed random projection (`L = Σ out · R`), so any output can be checked.
//!
//! Values to differentiate must be graph inputs (the caller supplies their values). Element
//! types follow the inputs: float64 models give tight checks where the runtime has float64
//! kernels. This is a test and diagnostics tool; it does not train anything.

use serde::Serialize;

use crate::analysis::infer_shapes;
use crate::error::{Error, Result};
use crate::ir::graph::attr_int;
use crate::ir::{DType, Fact, Model, Tensor, ValueId};
use crate::onnx::proto::ValueInfoProto;
use crate::runtime::{self, BackendKind};
use crate::temp_dir::TempDir;

use super::autodiff::gradients;

/// The result for one input.
#[derive(Clone, Debug, Serialize)]
pub struct InputCheck {
    /// Input name.
    pub name: String,
    /// Elements compared.
    pub checked: usize,
    /// Largest |analytic − numeric| / max(|analytic|, |numeric|, `floor`).
    pub max_rel_error: f64,
    /// Largest absolute difference.
    pub max_abs_error: f64,
}

/// Options of [`check_gradients`].
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Runtime that runs both graphs.
    pub backend: BackendKind,
    /// Finite-difference step.
    pub eps: f64,
    /// Most elements compared per input (spread evenly).
    pub max_elements: usize,
    /// Denominator floor of the relative error.
    pub floor: f64,
    /// Seed of the projection.
    pub seed: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            backend: BackendKind::Ort,
            eps: 1e-3,
            max_elements: 24,
            floor: 1e-2,
            seed: 1,
        }
    }
}

fn lcg(seed: &mut u64) -> f64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

/// Adds `loss = ReduceSum(output · R)` to a copy of `model` (first output); returns it and
/// the loss value.
fn with_loss(model: &Model, seed: u64) -> Result<(Model, ValueId)> {
    let mut m = model.clone();
    let shapes = infer_shapes(&m)?;
    let out = *m
        .graph
        .outputs
        .first()
        .ok_or_else(|| Error::Graph("the model has no output".into()))?;
    let fact = shapes
        .get(out)
        .ok_or_else(|| Error::Graph("the output's type is unknown".into()))?;
    let dims: Vec<usize> = fact
        .shape
        .as_ref()
        .and_then(|s| s.iter().map(|d| d.known()).collect())
        .ok_or_else(|| Error::Graph("the output's shape must be static".into()))?;
    let dtype = fact.dtype.unwrap_or(DType::F32);
    let mut s = seed;
    let n: usize = dims.iter().product();
    let r: Vec<f64> = (0..n).map(|_| lcg(&mut s)).collect();
    let g = &mut m.graph;
    let rv = g.add_initializer("check/R", Tensor::from_f64_as(dtype, dims, &r)?);
    let p = g.add_node(
        "check/mul",
        "Mul",
        &[Some(out), Some(rv)],
        &["check/prod"],
        vec![],
    );
    let prod = g.node(p).outputs[0].ok_or_else(|| Error::Graph("no output".into()))?;
    let l = g.add_node(
        "check/sum",
        "ReduceSum",
        &[Some(prod)],
        &["check/loss"],
        vec![attr_int("keepdims", 0)],
    );
    let loss = g.node(l).outputs[0].ok_or_else(|| Error::Graph("no output".into()))?;
    declare(&mut m, loss, dtype, vec![])?;
    m.graph.outputs = vec![loss];
    Ok((m, loss))
}

fn declare(m: &mut Model, v: ValueId, dtype: DType, shape: Vec<usize>) -> Result<()> {
    let ty = Fact {
        dtype: Some(dtype),
        shape: Some(shape.into_iter().map(crate::ir::Dim::Known).collect()),
        ..Fact::default()
    }
    .to_type();
    let name = m.graph.value(v).name.clone();
    m.graph.set_decl(
        v,
        ValueInfoProto {
            name: Some(name),
            r#type: Some(ty),
            ..Default::default()
        },
    );
    Ok(())
}

fn run(
    model: &Model,
    dir: &TempDir,
    file: &str,
    backend: BackendKind,
    feed: &[(String, Tensor)],
) -> Result<Vec<(String, Tensor)>> {
    let path = dir.path().join(file);
    model.save(&path, &Default::default())?;
    let mut s = runtime::load(backend, &path)?;
    s.run(feed)
}

/// Checks the gradient of the model's (projected) first output with respect to the inputs
/// named in `wrt`, at the point `feed` (every graph input).
pub fn check_gradients(
    model: &Model,
    feed: &[(String, Tensor)],
    wrt: &[&str],
    opts: &CheckOptions,
) -> Result<Vec<InputCheck>> {
    let (loss_model, loss) = with_loss(model, opts.seed)?;
    let mut grad_model = loss_model.clone();
    let shapes = infer_shapes(&grad_model)?;
    let mut ids = Vec::new();
    for name in wrt {
        let v = grad_model
            .graph
            .value_by_name(name)
            .filter(|v| grad_model.graph.inputs.contains(v))
            .ok_or_else(|| Error::Usage(format!("'{name}' is not a graph input")))?;
        ids.push(v);
    }
    let opset = grad_model.opset();
    let grads = gradients(&mut grad_model.graph, &shapes, opset, loss, &ids)?;
    for (k, gv) in grads.iter().enumerate() {
        let gv =
            gv.ok_or_else(|| Error::Usage(format!("'{}' does not reach the output", wrt[k])))?;
        let f = shapes.get(ids[k]);
        let dtype = f.and_then(|f| f.dtype).unwrap_or(DType::F32);
        let dims: Vec<usize> = feed
            .iter()
            .find(|(n, _)| n == wrt[k])
            .map(|(_, t)| t.shape().to_vec())
            .ok_or_else(|| Error::Usage(format!("no value fed for '{}'", wrt[k])))?;
        declare(&mut grad_model, gv, dtype, dims)?;
        grad_model.graph.outputs.push(gv);
    }
    let dir = TempDir::new("gradcheck")?;
    let analytic = run(&grad_model, &dir, "grad.onnx", opts.backend, feed)?;
    let path = dir.path().join("loss.onnx");
    loss_model.save(&path, &Default::default())?;
    let mut session = runtime::load(opts.backend, &path)?;
    let mut loss_at = |feed: &[(String, Tensor)]| -> Result<f64> {
        let out = session.run(feed)?;
        out.first()
            .and_then(|(_, t)| t.to_f64_vec())
            .and_then(|v| v.first().copied())
            .ok_or_else(|| Error::Graph("the loss is not a number".into()))
    };
    let mut report = Vec::new();
    for (k, name) in wrt.iter().enumerate() {
        let a = analytic
            .get(k + 1)
            .and_then(|(_, t)| t.to_f64_vec())
            .ok_or_else(|| Error::Graph(format!("no gradient computed for '{name}'")))?;
        let pos = feed
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| Error::Usage(format!("no value fed for '{name}'")))?;
        let base = &feed[pos].1;
        let vals = base
            .to_f64_vec()
            .ok_or_else(|| Error::Usage(format!("'{name}' is not numeric")))?;
        let n = vals.len();
        let step = (n / opts.max_elements.max(1)).max(1);
        let (mut max_rel, mut max_abs, mut checked) = (0f64, 0f64, 0usize);
        for i in (0..n).step_by(step).take(opts.max_elements) {
            let mut at = |delta: f64| -> Result<f64> {
                let mut v = vals.clone();
                v[i] += delta;
                let mut f = feed.to_vec();
                f[pos].1 = Tensor::from_f64_as(base.dtype(), base.shape().to_vec(), &v)?;
                loss_at(&f)
            };
            let numeric = (at(opts.eps)? - at(-opts.eps)?) / (2.0 * opts.eps);
            let diff = (a[i] - numeric).abs();
            max_abs = max_abs.max(diff);
            max_rel = max_rel.max(diff / a[i].abs().max(numeric.abs()).max(opts.floor));
            checked += 1;
        }
        report.push(InputCheck {
            name: name.to_string(),
            checked,
            max_rel_error: max_rel,
            max_abs_error: max_abs,
        });
    }
    Ok(report)
}
