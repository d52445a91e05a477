//! `Identity` and `Dropout` (inference: output 0 = input 0; the optional mask has the input's
//! shape and type bool). Folding passes the constant through; a shape vector tracked element
//! by element (`Fact::sym`) passes through too.
//!
//! Channels: every axis passes through, to Dropout's mask output too.
//!
//! Both are no-ops (`Op::no_op`, for `remove_identity`): Identity always (with one output),
//! Dropout at inference only (no `training_mode` input or a constant false one, the mask output
//! absent or unread), so a model kept for training keeps its Dropouts.
//!
//! Backward: the gradient passes through. A Dropout in training mode (opset 12+, a constant
//! true `training_mode`) scales it by `mask / (1 − ratio)` and needs its mask output.
//!
//! Training (`Op::lower_random`): every Dropout on the loss path with a constant ratio
//! `r > 0` becomes `x · Cast(noise ≥ r) / (1 − r)` with `noise` a step input the host draws
//! (see `crate::train::dropout`); the others stay inference no-ops.

use crate::error::Result;
use crate::ir::{DType, Fact, Node, Tensor};

use super::build::{add_input, static_shape, Builder};
use super::channel::{pass, pass_all, ConstCx, Link, LinkCx};
use super::grad_util::{const_ints, out_grad};
use super::simplify::{NoOp, NoOpCx};
use super::training::{Noise, NoiseCx};
use super::vjp::{Build, VjpCx};
use super::{util, Cx, Op};
use crate::analysis::Shapes;
use crate::ir::{Graph, ValueId};

/// The output gradient for input 0 (the other inputs are parameters with no gradient).
fn pass_grad(
    cx: &VjpCx,
    grads: &[Option<ValueId>],
    needs: &[bool],
) -> Result<Vec<Option<ValueId>>> {
    if needs.iter().skip(1).any(|&n| n) {
        return Err(cx.err("only input 0 can be differentiated"));
    }
    let mut out = vec![None; needs.len()];
    if needs.first() == Some(&true) {
        out[0] = Some(out_grad(cx, grads)?);
    }
    Ok(out)
}

/// `Identity`.
pub struct Identity;
/// `Identity`.
pub static IDENTITY: Identity = Identity;

impl Op for Identity {
    fn op_type(&self) -> &'static str {
        "Identity"
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((1, 1))
    }
    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let x = cx.input(0)?;
        match util::sym_moved(x, x.shape.as_deref()) {
            Some(f) => Ok(Some(vec![f])),
            None => util::like_input(cx, 0),
        }
    }
    fn eval(
        &self,
        _node: &Node,
        inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        Some(Ok(vec![inputs.first().copied().flatten()?.clone()]))
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        cx.inputs.first().copied().flatten()
    }

    /// Never negative when its input is not.
    fn non_negative(&self, cx: &super::simplify::SignCx) -> bool {
        cx.input(0)
    }

    fn no_op(&self, cx: &NoOpCx) -> Option<NoOp> {
        (cx.node.outputs.len() == 1).then_some(NoOp::Always)
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        pass_all(cx)
    }

    fn vjp(
        &self,
        cx: &mut VjpCx,
        grads: &[Option<ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<ValueId>>> {
        pass_grad(cx, grads, needs)
    }
}

/// `Dropout` (inference mode).
pub struct Dropout;
/// `Dropout`.
pub static DROPOUT: Dropout = Dropout;

impl Op for Dropout {
    fn op_type(&self) -> &'static str {
        "Dropout"
    }

    fn arity(&self, opset: i64) -> Option<(usize, usize)> {
        // Opset 12 made ratio and training_mode inputs.
        Some(if opset < 12 { (1, 1) } else { (1, 3) })
    }

    /// Opset 12 made `ratio` an input; opset 7 dropped `is_test` (inference is the default).
    fn upgrade(&self, node: &Node, from: i64, to: i64) -> Result<super::Upgrade> {
        let mut u = super::Upgrade::default();
        if from < 12 && to >= 12 {
            u = u.float_to_input(node, "ratio", 1);
        }
        if from < 7 && to >= 7 && node.attr("is_test").is_some() {
            u.drop.push("is_test");
        }
        Ok(u)
    }
    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let x = cx.input(0)?;
        let y = Fact {
            dtype: x.dtype,
            shape: x.shape.clone(),
            ..Default::default()
        };
        let mask = Fact {
            dtype: Some(DType::Bool),
            shape: x.shape.clone(),
            ..Default::default()
        };
        Ok(Some(vec![y, mask]))
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        cx.inputs.first().copied().flatten()
    }

    fn no_op(&self, cx: &NoOpCx) -> Option<NoOp> {
        // Inference form: no training_mode input, or a constant false one (the ratio input and
        // old opsets' is_test do not matter then), and the mask output absent or unread.
        let node = cx.node;
        let mask_unused = !cx.used.get(1).copied().unwrap_or(false);
        let inference = match node.input(2) {
            None => true,
            Some(_) => cx
                .consts
                .get(2)
                .copied()
                .flatten()
                .and_then(Tensor::to_i64_vec)
                .is_some_and(|v| v.iter().all(|&b| b == 0)),
        };
        (mask_unused && inference && node.outputs.len() <= 2).then_some(NoOp::Inference)
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        let mut links = pass_all(cx);
        if cx.node.output(1).is_some() {
            links.extend(cx.tracked_axes(0).map(|(a, _)| pass(0, a, 1, a)));
        }
        links
    }

    fn vjp(
        &self,
        cx: &mut VjpCx,
        grads: &[Option<ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<ValueId>>> {
        let training = match (cx.opset >= 12).then(|| const_ints(cx, 2)).flatten() {
            None => false,
            Some(Some(t)) => t.first().is_some_and(|&t| t != 0),
            Some(None) => {
                return Err(cx.err("training_mode must be a constant to differentiate"));
            }
        };
        let mut out = pass_grad(cx, grads, needs)?;
        let Some(g) = out.first().copied().flatten().filter(|_| training) else {
            return Ok(out);
        };
        let mask = cx.fwd().output(1).ok_or_else(|| {
            cx.err("a training-mode Dropout needs its mask output to differentiate")
        })?;
        let ratio = dropout_ratio(cx.g, cx.shapes, cx.fwd(), cx.opset)
            .ok_or_else(|| cx.err("the ratio must be a constant to differentiate"))?;
        let x = cx.input(0)?;
        let dt = cx.dtype(x);
        let keep = cx.cast(mask, dt);
        let scale = cx.scalar(
            dt,
            if ratio < 1.0 {
                1.0 / (1.0 - ratio)
            } else {
                0.0
            },
        )?;
        let m = cx.op("Mul", &[g, keep], vec![]);
        out[0] = Some(cx.op("Mul", &[m, scale], vec![]));
        Ok(out)
    }

    fn lower_random(&self, cx: &mut NoiseCx) -> Result<Option<Noise>> {
        let node = cx.g.node(cx.node);
        let ratio = dropout_ratio(cx.g, cx.shapes, node, cx.model_opset)
            .ok_or_else(|| cx_err(node, "the ratio must be a constant scalar to train"))?;
        if !(0.0..1.0).contains(&ratio) {
            return Err(cx_err(node, &format!("ratio {ratio} is outside [0, 1)")));
        }
        if cx.on_loss_path && ratio > 0.0 {
            return lower_dropout(cx, ratio).map(Some);
        }
        if cx.model_opset < 12 {
            // Stays an inference no-op; the step runs at opset ≥ 17, without these.
            let node = cx.g.node_mut(cx.node);
            node.remove_attr("ratio");
            node.remove_attr("is_test");
        }
        Ok(None)
    }
}

/// The drop ratio of Dropout `node` written for `opset`: input 1 from opset 12 (default 0.5),
/// the `ratio` attribute before; `None` when input 1 is not a constant scalar.
fn dropout_ratio(g: &Graph, shapes: &Shapes, node: &Node, opset: i64) -> Option<f64> {
    if opset < 12 {
        return Some(node.attr_f("ratio").map_or(0.5, f64::from));
    }
    match node.input(1) {
        None => Some(0.5),
        Some(r) => shapes
            .get(r)
            .and_then(|f| f.value.as_ref())
            .or_else(|| g.init(r))
            .and_then(Tensor::to_f64_vec)
            .and_then(|v| (v.len() == 1).then(|| v[0])),
    }
}

fn cx_err(node: &Node, msg: &str) -> crate::error::Error {
    crate::error::Error::node(&node.name, &node.op_type, msg)
}

/// Dropout in training mode with randomness fed by the host (`r` its ratio, in `(0, 1)`):
///
/// ```text
/// keep = Not(Less(noise, r))                       (noise ≥ r)
/// y    = x · (Cast(keep) · 1/(1 − r))              mask output (if read) = keep
/// ```
///
/// where `noise` is a new float32 graph input shaped like `x` (static: the batch is fixed).
/// A `training_mode` input is ignored: the train step always drops. The node is removed, with
/// its ratio and training-mode constants when nothing else reads them.
fn lower_dropout(cx: &mut NoiseCx, ratio: f64) -> Result<Noise> {
    let g = &mut *cx.g;
    let node = g.node(cx.node).clone();
    let err = |msg: &str| cx_err(&node, msg);
    let x = node.input(0).ok_or_else(|| err("input 0 is missing"))?;
    let y = node.output(0).ok_or_else(|| err("output 0 is missing"))?;
    let shape =
        static_shape(g, cx.shapes, x).map_err(|e| err(&format!("cannot draw its mask: {e}")))?;
    let dt = cx.shapes.get(x).and_then(|f| f.dtype).unwrap_or(DType::F32);

    let noise = add_input(
        g,
        &format!("dropout_noise/{}", node.name),
        DType::F32,
        &shape,
    );
    let input = g.value(noise).name.clone();
    let mut e = Builder::new(g, format!("train_dropout/{}", node.name), cx.opset);
    let r = e.scalar(DType::F32, ratio)?;
    let dropped = e.op("Less", &[noise, r], vec![]);
    let keep = e.op("Not", &[dropped], vec![]);
    let keep_t = e.cast(keep, dt);
    let scale = e.scalar(dt, 1.0 / (1.0 - ratio))?;
    let m = e.op("Mul", &[keep_t, scale], vec![]);
    let new_y = e.op("Mul", &[x, m], vec![]);

    g.replace_uses(y, new_y);
    if let Some(mask) = node.output(1) {
        // Before opset 10 the mask is typed like the data.
        g.replace_uses(mask, if cx.model_opset >= 10 { keep } else { keep_t });
    }
    g.remove_node(cx.node);
    for o in node.outputs.iter().flatten() {
        if g.value(*o).uses.is_empty() && !g.outputs.contains(o) {
            g.remove_value(*o);
        }
    }
    for v in node.inputs.iter().skip(1).flatten() {
        if g.init(*v).is_some() && g.value(*v).uses.is_empty() && !g.outputs.contains(v) {
            g.remove_value(*v);
        }
    }
    Ok(Noise {
        input,
        shape,
        node: node.name.clone(),
        ratio,
    })
}

#[cfg(test)]
mod channel_tests {
    use crate::ops::channel::testing::*;

    #[test]
    fn identity_and_dropout_pass_channels() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 8);
        let i = n.op("Identity", &[c], vec![]);
        let d = n.op_n("Dropout", &[Some(i)], 2, vec![]);
        let y = n.conv(d[0], 8, 2);
        n.output(y);
        let m = n.model(13);
        let cg = analyse(&m);
        let g = group(&cg, &m, c);
        assert!(g.prunable(), "{:?}", g.blocked);
        assert_eq!(g.channels, 8);
        prunes_exactly(&m);
    }
}
