//! `Identity` and `Dropout` (inference: output 0 = input 0; the optional mask has the input's
//! shape and type bool). Folding passes the constant through; a shape vector tracked element
//! by element (`Fact::sym`) passes through too.
//!
//! Channels: every axis passes through, to Dropout's mask output too.

use crate::error::Result;
use crate::ir::{DType, Fact, Node, Tensor};

use super::channel::{pass, pass_all, ConstCx, Link, LinkCx};
use super::{util, Cx, Op};

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

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        pass_all(cx)
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

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        let mut links = pass_all(cx);
        if cx.node.output(1).is_some() {
            links.extend(cx.tracked_axes(0).map(|(a, _)| pass(0, a, 1, a)));
        }
        links
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
