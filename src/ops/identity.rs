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

use crate::error::Result;
use crate::ir::{DType, Fact, Node, Tensor};

use super::channel::{pass, pass_all, ConstCx, Link, LinkCx};
use super::grad_util::{const_ints, out_grad, scalar};
use super::simplify::{NoOp, NoOpCx};
use super::vjp::VjpCx;
use super::{util, Cx, Op};
use crate::ir::ValueId;

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
        let ratio = match cx.fwd().input(1) {
            None => 0.5,
            Some(r) => cx
                .shapes
                .get(r)
                .and_then(|f| f.value.as_ref())
                .or_else(|| cx.g.init(r))
                .and_then(Tensor::to_f64_vec)
                .and_then(|v| v.first().copied())
                .ok_or_else(|| cx.err("the ratio must be a constant to differentiate"))?,
        };
        let x = cx.input(0)?;
        let dt = cx.dtype(x);
        let keep = cx.op(
            "Cast",
            &[mask],
            vec![crate::ir::graph::attr_int("to", i64::from(dt.to_onnx()))],
        );
        let scale = scalar(
            cx,
            if ratio < 1.0 {
                1.0 / (1.0 - ratio)
            } else {
                0.0
            },
            dt,
        )?;
        let m = cx.op("Mul", &[g, keep], vec![]);
        out[0] = Some(cx.op("Mul", &[m, scale], vec![]));
        Ok(out)
    }
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
