//! Dropout in training mode with randomness fed by the host. Every `Dropout` on the path to
//! the loss whose ratio `r` is above 0 becomes
//!
//! ```text
//! keep = Not(Less(noise, r))                       (noise ≥ r)
//! y    = x · (Cast(keep) · 1/(1 − r))              mask output (if read) = keep
//! ```
//!
//! where `noise` is a new float32 graph input shaped like `x` (static: the batch is fixed)
//! that the host fills with uniform `[0, 1)` values every step from its own seeded stream, so
//! that runs repeat exactly and resume byte-identically (ONNX Runtime's Dropout seed would
//! restart with every session). The ratio is input 1 (opset ≥ 12, default 0.5) or the `ratio`
//! attribute before; it must be a constant in `[0, 1)`. A `training_mode` input is ignored:
//! the train step always drops.
//!
//! Not done here: Dropouts off the loss path and those with ratio 0 stay as they are
//! (inference no-ops; their pre-opset-12 `ratio`/`is_test` attributes are dropped, since the
//! step runs at opset ≥ 17); other random ops are not lowered; the inference model keeps its
//! Dropout nodes (see [`super::TrainStep::inference_model`]).

use std::collections::HashSet;

use crate::analysis::Shapes;
use crate::error::{Error, Result};
use crate::ir::graph::attr_int;
use crate::ir::{DType, Graph, NodeId, Tensor, ValueId};

use super::emit::{add_input, dtype_of, static_shape, Emit};

/// A lowered Dropout: the noise input the host feeds every step.
#[derive(Clone, Debug, PartialEq)]
pub struct DropoutNoise {
    /// Graph input name (float32, uniform in `[0, 1)`).
    pub input: String,
    /// Its static shape: the Dropout input's, batch included.
    pub shape: Vec<usize>,
    /// The Dropout node it replaces.
    pub node: String,
    /// The drop probability: an element is kept when its noise is ≥ this.
    pub ratio: f64,
}

/// Lowers every Dropout of `g` that `root` depends on and whose ratio is above 0 (see the
/// module docs); returns their noise inputs in graph order. `model_opset` is the opset the
/// nodes were written for (it decides where the ratio is), `opset` the one the step emits.
pub(crate) fn lower_dropouts(
    g: &mut Graph,
    shapes: &Shapes,
    model_opset: i64,
    opset: i64,
    root: ValueId,
) -> Result<Vec<DropoutNoise>> {
    let order = g.topo_order()?;
    let mut to_root: HashSet<ValueId> = HashSet::from([root]);
    for &n in order.iter().rev() {
        let node = g.node(n);
        if node.outputs.iter().flatten().any(|v| to_root.contains(v)) {
            to_root.extend(node.inputs.iter().flatten().copied());
        }
    }
    let mut out = Vec::new();
    for n in order {
        let node = g.node(n);
        if node.op_type != "Dropout" || !crate::ir::is_default_domain(&node.domain) {
            continue;
        }
        let ratio = ratio_of(g, shapes, n, model_opset)?;
        let on_path = node.outputs.iter().flatten().any(|v| to_root.contains(v));
        if on_path && ratio > 0.0 {
            out.push(lower_one(g, shapes, n, ratio, model_opset, opset)?);
        } else if model_opset < 12 {
            let node = g.node_mut(n);
            node.remove_attr("ratio");
            node.remove_attr("is_test");
        }
    }
    Ok(out)
}

/// The drop ratio of Dropout `n`: a constant in `[0, 1)`, or an error naming the node.
fn ratio_of(g: &Graph, shapes: &Shapes, n: NodeId, model_opset: i64) -> Result<f64> {
    let node = g.node(n);
    let err = |msg: String| Error::node(&node.name, &node.op_type, msg);
    let ratio = if model_opset >= 12 {
        match node.input(1) {
            None => 0.5,
            Some(r) => shapes
                .get(r)
                .and_then(|f| f.value.as_ref())
                .or_else(|| g.init(r))
                .and_then(Tensor::to_f64_vec)
                .and_then(|v| (v.len() == 1).then(|| v[0]))
                .ok_or_else(|| err("the ratio must be a constant scalar to train".into()))?,
        }
    } else {
        node.attr_f("ratio").map_or(0.5, f64::from)
    };
    if !(0.0..1.0).contains(&ratio) {
        return Err(err(format!("ratio {ratio} is outside [0, 1)")));
    }
    Ok(ratio)
}

fn lower_one(
    g: &mut Graph,
    shapes: &Shapes,
    n: NodeId,
    ratio: f64,
    model_opset: i64,
    opset: i64,
) -> Result<DropoutNoise> {
    let node = g.node(n).clone();
    let err = |msg: String| Error::node(&node.name, &node.op_type, msg);
    let x = node
        .input(0)
        .ok_or_else(|| err("input 0 is missing".into()))?;
    let y = node
        .output(0)
        .ok_or_else(|| err("output 0 is missing".into()))?;
    let shape =
        static_shape(g, shapes, x).map_err(|e| err(format!("cannot draw its mask: {e}")))?;
    let dt = dtype_of(shapes, x);

    let noise = add_input(
        g,
        &format!("dropout_noise/{}", node.name),
        DType::F32,
        &shape,
    );
    let input = g.value(noise).name.clone();
    let mut e = Emit::new(g, format!("train_dropout/{}", node.name), opset);
    let r = e.scalar(DType::F32, ratio)?;
    let dropped = e.op("Less", &[noise, r], vec![]);
    let keep = e.op("Not", &[dropped], vec![]);
    let keep_t = e.op(
        "Cast",
        &[keep],
        vec![attr_int("to", i64::from(dt.to_onnx()))],
    );
    let scale = e.scalar(dt, 1.0 / (1.0 - ratio))?;
    let m = e.op("Mul", &[keep_t, scale], vec![]);
    let new_y = e.op("Mul", &[x, m], vec![]);

    g.replace_uses(y, new_y);
    if let Some(mask) = node.output(1) {
        // Before opset 10 the mask is typed like the data.
        g.replace_uses(mask, if model_opset >= 10 { keep } else { keep_t });
    }
    g.remove_node(n);
    for o in node.outputs.iter().flatten() {
        if g.value(*o).uses.is_empty() && !g.outputs.contains(o) {
            g.remove_value(*o);
        }
    }
    // The ratio and training-mode constants, when nothing else reads them.
    for v in node.inputs.iter().skip(1).flatten() {
        if g.init(*v).is_some() && g.value(*v).uses.is_empty() && !g.outputs.contains(v) {
            g.remove_value(*v);
        }
    }
    Ok(DropoutNoise {
        input,
        shape,
        node: node.name.clone(),
        ratio,
    })
}
