//! Element-wise unary ops (activations and math): output type and shape equal the input's;
//! one FLOP per output element. PRelu's slope broadcasts onto the input, so the same holds.
//! Channels pass through every axis; a per-channel slope is a member.

use crate::error::Result;
use crate::ir::{Fact, Node, Tensor};

use super::channel::{elementwise, ConstCx, Link, LinkCx};
use super::{numel_or_one, util, Cost, Cx, Op};

/// An element-wise unary op, with an optional f64 evaluator for folding.
pub struct Unary {
    name: &'static str,
    f: Option<fn(f64) -> f64>,
}

impl Op for Unary {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        util::like_input(cx, 0)
    }

    fn eval(
        &self,
        _node: &Node,
        inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        let f = self.f?;
        let x = inputs.first().copied().flatten()?;
        if !x.dtype().is_float() {
            return None;
        }
        util::eval_elementwise(&[Some(x)], None, |_| 0, |a| f(a[0]))
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        // Element-wise: channels pass; a per-channel PRelu slope is sliced along.
        elementwise(cx)
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        Some((self.f?)(cx.inputs.first().copied().flatten()?))
    }

    fn cost(&self, _cx: &Cx, outputs: &[Option<&Fact>]) -> Cost {
        let n = outputs
            .first()
            .copied()
            .flatten()
            .and_then(|f| f.shape.as_ref())
            .map_or(0, |s| numel_or_one(s));
        Cost { macs: 0, flops: n }
    }
}

macro_rules! unary {
    ($id:ident, $name:literal) => {
        #[doc = concat!("`", $name, "`.")]
        pub static $id: Unary = Unary {
            name: $name,
            f: None,
        };
    };
    ($id:ident, $name:literal, $f:expr) => {
        #[doc = concat!("`", $name, "`.")]
        pub static $id: Unary = Unary {
            name: $name,
            f: Some($f),
        };
    };
}

unary!(RELU, "Relu", |x| x.max(0.0));
unary!(LEAKY_RELU, "LeakyRelu");
unary!(PRELU, "PRelu");
unary!(CLIP, "Clip");
unary!(SIGMOID, "Sigmoid", |x| 1.0 / (1.0 + (-x).exp()));
unary!(HARD_SIGMOID, "HardSigmoid");
unary!(HARD_SWISH, "HardSwish", |x| x * (x + 3.0).clamp(0.0, 6.0)
    / 6.0);
unary!(TANH, "Tanh", f64::tanh);
unary!(GELU, "Gelu");
unary!(ELU, "Elu");
unary!(SELU, "Selu");
unary!(SOFTPLUS, "Softplus");
unary!(NEG, "Neg", |x| -x);
unary!(ABS, "Abs", f64::abs);
unary!(SQRT, "Sqrt", f64::sqrt);
unary!(RECIPROCAL, "Reciprocal", |x| 1.0 / x);
unary!(EXP, "Exp", f64::exp);
unary!(LOG, "Log", f64::ln);
unary!(ERF, "Erf");
unary!(FLOOR, "Floor", f64::floor);
unary!(CEIL, "Ceil", f64::ceil);
unary!(NOT, "Not");
