//! Element-wise unary ops (activations and math): output type and shape equal the input's;
//! one FLOP per output element. PRelu's slope broadcasts onto the input, so the same holds.
//! Channels pass through every axis; a per-channel slope is a member.
//!
//! Backward rules (input 0 only, except PRelu; Clip's min/max get none) are built from the
//! forward input `x` and output `y`: Relu, LeakyRelu, Clip (inclusive bounds, like
//! `torch.clamp`), HardSigmoid (`alpha` where the output is strictly inside (0, 1)) and
//! HardSwish mask or scale the gradient (`Where`, or a multiply by the cast mask); Sigmoid
//! `y(1−y)`, Tanh `1−y²`, Exp `y`, Log `1/x`, Sqrt `1/(2y)`, Reciprocal `−y²`, Abs `sign(x)`,
//! Neg `−1`. PRelu: `x` gets `g` where `x > 0`, else `g·slope`; the slope gets `g·min(x, 0)`
//! summed over the axes it was broadcast along. Elu `α·eˣ = y + α`, Selu `γα·eˣ = y + γα`
//! and Celu `e^(x/α) = y/α + 1` for `x ≤ 0` (`1`, `γ`, `1` above); Softplus `sigmoid(x)`,
//! Softsign `1/(1+|x|)²`, Erf `2/√π·e^(−x²)`, Gelu (`approximate="none"`:
//! `Φ(x) + x·φ(x)`; `"tanh"`: the derivative of the tanh form). Kinks (0 for Relu, PRelu, Elu,
//! Selu, Celu) take the left-hand slope.

use crate::error::Result;
use crate::ir::graph::attr_int;
use crate::ir::{Fact, Node, Tensor, ValueId};

use super::channel::{elementwise, ConstCx, Link, LinkCx};
use super::grad_util::out_grad;
use super::vjp::{Build, VjpCx};
use super::{numel_or_one, util, Cost, Cx, Op};

/// A backward rule: the gradient of input 0 from the output gradient `g`.
type Backward = fn(&mut VjpCx, ValueId) -> Result<ValueId>;

/// An element-wise unary op, with an optional f64 evaluator for folding and an optional
/// backward rule.
pub struct Unary {
    name: &'static str,
    f: Option<fn(f64) -> f64>,
    d: Option<Backward>,
}

impl Op for Unary {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, opset: i64) -> Option<(usize, usize)> {
        match self.name {
            "PRelu" => Some((2, 2)),
            // min and max were attributes before opset 11.
            "Clip" if opset < 11 => Some((1, 1)),
            "Clip" => Some((1, 3)),
            _ => Some((1, 1)),
        }
    }

    /// Clip: opset 11 made `min` and `max` inputs.
    fn upgrade(&self, node: &Node, from: i64, to: i64) -> Result<super::Upgrade> {
        let u = super::Upgrade::default();
        Ok(if self.name == "Clip" && from < 11 && to >= 11 {
            u.float_to_input(node, "min", 1)
                .float_to_input(node, "max", 2)
        } else {
            u
        })
    }

    /// Relu's and Sigmoid's outputs are never negative.
    fn non_negative(&self, _cx: &super::simplify::SignCx) -> bool {
        matches!(self.name, "Relu" | "Sigmoid")
    }

    /// A Relu of a value that is never negative passes it unchanged, whatever the parameters
    /// (the value is computed by an op that cannot output a negative number).
    fn no_op(&self, cx: &super::simplify::NoOpCx) -> Option<super::simplify::NoOp> {
        (self.name == "Relu" && cx.non_negative.first() == Some(&true))
            .then_some(super::simplify::NoOp::Always)
    }

    fn weight_input(&self, port: usize) -> bool {
        // PRelu's slope.
        self.name == "PRelu" && port == 1
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

    fn vjp(
        &self,
        cx: &mut VjpCx,
        grads: &[Option<ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<ValueId>>> {
        if self.name == "PRelu" {
            return prelu_vjp(cx, grads, needs);
        }
        let Some(d) = self.d else {
            return Err(
                cx.err("has no backward rule, so the loss cannot be differentiated through it")
            );
        };
        if needs.iter().skip(1).any(|&n| n) {
            return Err(cx.err(
                "only input 0 can be differentiated (min, max and slope inputs must not depend on the differentiated values)",
            ));
        }
        let mut out = vec![None; needs.len()];
        if needs.first() == Some(&true) {
            let g = out_grad(cx, grads)?;
            out[0] = Some(d(cx, g)?);
        }
        Ok(out)
    }
}

macro_rules! unary {
    ($id:ident, $name:literal, $f:expr, $d:expr) => {
        #[doc = concat!("`", $name, "`.")]
        pub static $id: Unary = Unary {
            name: $name,
            f: $f,
            d: $d,
        };
    };
}

unary!(RELU, "Relu", Some(|x| x.max(0.0)), Some(d_relu));
unary!(LEAKY_RELU, "LeakyRelu", None, Some(d_leaky_relu));
unary!(PRELU, "PRelu", None, None);
unary!(CLIP, "Clip", None, Some(d_clip));
unary!(
    SIGMOID,
    "Sigmoid",
    Some(|x| 1.0 / (1.0 + (-x).exp())),
    Some(d_sigmoid)
);
unary!(HARD_SIGMOID, "HardSigmoid", None, Some(d_hard_sigmoid));
unary!(
    HARD_SWISH,
    "HardSwish",
    Some(|x| x * (x + 3.0).clamp(0.0, 6.0) / 6.0),
    Some(d_hard_swish)
);
unary!(TANH, "Tanh", Some(f64::tanh), Some(d_tanh));
unary!(GELU, "Gelu", None, Some(d_gelu));
unary!(ELU, "Elu", None, Some(d_elu));
unary!(SELU, "Selu", None, Some(d_selu));
unary!(CELU, "Celu", None, Some(d_celu));
unary!(SOFTPLUS, "Softplus", None, Some(d_softplus));
unary!(
    SOFTSIGN,
    "Softsign",
    Some(|x: f64| x / (1.0 + x.abs())),
    Some(d_softsign)
);
unary!(NEG, "Neg", Some(|x| -x), Some(d_neg));
unary!(ABS, "Abs", Some(f64::abs), Some(d_abs));
unary!(SQRT, "Sqrt", Some(f64::sqrt), Some(d_sqrt));
unary!(
    RECIPROCAL,
    "Reciprocal",
    Some(|x| 1.0 / x),
    Some(d_reciprocal)
);
unary!(EXP, "Exp", Some(f64::exp), Some(d_exp));
unary!(LOG, "Log", Some(f64::ln), Some(d_log));
unary!(ERF, "Erf", None, Some(d_erf));
unary!(FLOOR, "Floor", Some(f64::floor), None);
unary!(CEIL, "Ceil", Some(f64::ceil), None);
unary!(NOT, "Not", None, None);

// ---- backward rules -------------------------------------------------------------------------

/// Forward input 0 and output 0.
fn xy(cx: &VjpCx) -> Result<(ValueId, ValueId)> {
    Ok((cx.input(0)?, cx.output(0)?))
}

/// A scalar in the element type of forward input 0.
fn k(cx: &mut VjpCx, v: f64) -> Result<ValueId> {
    let dt = cx.dtype(cx.input(0)?);
    cx.scalar(dt, v)
}

/// `g` where `cond`, else 0, as `g · Cast(cond)`: in ONNX Runtime a cast and a multiply take
/// about half the time of `Where` with a broadcast zero (measured on ResNet activations).
fn keep_where(cx: &mut VjpCx, cond: ValueId, g: ValueId) -> Result<ValueId> {
    let dt = cx.dtype(cx.input(0)?);
    let mask = cx.op(
        "Cast",
        &[cond],
        vec![attr_int("to", i64::from(dt.to_onnx()))],
    );
    Ok(cx.op("Mul", &[g, mask], vec![]))
}

/// 0 where `cond`, else `g`.
fn drop_where(cx: &mut VjpCx, cond: ValueId, g: ValueId) -> Result<ValueId> {
    let zero = k(cx, 0.0)?;
    Ok(cx.op("Where", &[cond, zero, g], vec![]))
}

fn d_relu(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    let (x, y) = xy(cx)?;
    if cx.kernels_for(&[y]) {
        // One pass instead of three: lopper's kernel masks by the output's sign (y > 0
        // exactly where x > 0), so x need not outlive the forward.
        let shape = cx.shape(y)?;
        let k = crate::runtime::kernels::relu_grad::OP;
        return Ok(cx.kernel(k, &[g, y], vec![], &[&shape])[0]);
    }
    let zero = k(cx, 0.0)?;
    let pos = cx.op("Greater", &[x, zero], vec![]);
    keep_where(cx, pos, g)
}

fn d_leaky_relu(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    let (x, _) = xy(cx)?;
    let alpha = cx.attr_f("alpha", 0.01);
    let (zero, a) = (k(cx, 0.0)?, k(cx, f64::from(alpha))?);
    let pos = cx.op("Greater", &[x, zero], vec![]);
    let scaled = cx.op("Mul", &[g, a], vec![]);
    Ok(cx.op("Where", &[pos, g, scaled], vec![]))
}

fn d_clip(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    let (x, _) = xy(cx)?;
    // Bounds: inputs 1 and 2 from opset 11 (each optional), attributes before.
    let (lo, hi) = if cx.opset >= 11 {
        let fwd = cx.fwd();
        (fwd.input(1), fwd.input(2))
    } else {
        let lo = match cx.fwd().attr_f("min") {
            Some(v) => Some(k(cx, f64::from(v))?),
            None => None,
        };
        let hi = match cx.fwd().attr_f("max") {
            Some(v) => Some(k(cx, f64::from(v))?),
            None => None,
        };
        (lo, hi)
    };
    let mut g = g;
    if let Some(lo) = lo {
        let below = cx.op("Less", &[x, lo], vec![]);
        g = drop_where(cx, below, g)?;
    }
    if let Some(hi) = hi {
        let above = cx.op("Greater", &[x, hi], vec![]);
        g = drop_where(cx, above, g)?;
    }
    Ok(g)
}

fn d_sigmoid(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    let (_, y) = xy(cx)?;
    let one = k(cx, 1.0)?;
    let c = cx.op("Sub", &[one, y], vec![]);
    let dy = cx.op("Mul", &[y, c], vec![]);
    Ok(cx.op("Mul", &[g, dy], vec![]))
}

fn d_hard_sigmoid(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    let (_, y) = xy(cx)?;
    let alpha = cx.attr_f("alpha", 0.2);
    let (zero, one, a) = (k(cx, 0.0)?, k(cx, 1.0)?, k(cx, f64::from(alpha))?);
    let scaled = cx.op("Mul", &[g, a], vec![]);
    let above = cx.op("Greater", &[y, zero], vec![]);
    let below = cx.op("Less", &[y, one], vec![]);
    let inner = keep_where(cx, below, scaled)?;
    keep_where(cx, above, inner)
}

fn d_hard_swish(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    // y = x·clamp(x+3, 0, 6)/6: dy/dx = 0 below −3, 1 above 3, (2x+3)/6 between.
    let (x, _) = xy(cx)?;
    let (third, half, m3, p3) = (k(cx, 1.0 / 3.0)?, k(cx, 0.5)?, k(cx, -3.0)?, k(cx, 3.0)?);
    let t = cx.op("Mul", &[x, third], vec![]);
    let slope = cx.op("Add", &[t, half], vec![]);
    let mid = cx.op("Mul", &[g, slope], vec![]);
    let above = cx.op("Greater", &[x, p3], vec![]);
    let upper = cx.op("Where", &[above, g, mid], vec![]);
    let below = cx.op("Less", &[x, m3], vec![]);
    drop_where(cx, below, upper)
}

fn d_tanh(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    let (_, y) = xy(cx)?;
    let one = k(cx, 1.0)?;
    let y2 = cx.op("Mul", &[y, y], vec![]);
    let dy = cx.op("Sub", &[one, y2], vec![]);
    Ok(cx.op("Mul", &[g, dy], vec![]))
}

fn d_neg(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    Ok(cx.op("Neg", &[g], vec![]))
}

fn d_abs(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    let (x, _) = xy(cx)?;
    let s = cx.op("Sign", &[x], vec![]);
    Ok(cx.op("Mul", &[g, s], vec![]))
}

fn d_sqrt(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    let (_, y) = xy(cx)?;
    let half = k(cx, 0.5)?;
    let q = cx.op("Div", &[g, y], vec![]);
    Ok(cx.op("Mul", &[q, half], vec![]))
}

fn d_reciprocal(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    let (_, y) = xy(cx)?;
    let y2 = cx.op("Mul", &[y, y], vec![]);
    let p = cx.op("Mul", &[g, y2], vec![]);
    Ok(cx.op("Neg", &[p], vec![]))
}

fn d_exp(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    let (_, y) = xy(cx)?;
    Ok(cx.op("Mul", &[g, y], vec![]))
}

fn d_log(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    let (x, _) = xy(cx)?;
    Ok(cx.op("Div", &[g, x], vec![]))
}

/// PRelu: `y = x` where `x > 0`, else `slope·x` (the slope broadcasting onto `x`).
fn prelu_vjp(
    cx: &mut VjpCx,
    grads: &[Option<ValueId>],
    needs: &[bool],
) -> Result<Vec<Option<ValueId>>> {
    let mut out = vec![None; needs.len()];
    if !needs.iter().any(|&n| n) {
        return Ok(out);
    }
    let g = out_grad(cx, grads)?;
    let (x, slope) = (cx.input(0)?, cx.input(1)?);
    if needs.first() == Some(&true) {
        let zero = k(cx, 0.0)?;
        let pos = cx.op("Greater", &[x, zero], vec![]);
        let scaled = cx.op("Mul", &[g, slope], vec![]);
        out[0] = Some(cx.op("Where", &[pos, g, scaled], vec![]));
    }
    if needs.get(1) == Some(&true) {
        // dy/dslope = x where x ≤ 0, else 0: min(x, 0).
        let zero = k(cx, 0.0)?;
        let neg = cx.op("Min", &[x, zero], vec![]);
        let full = cx.op("Mul", &[g, neg], vec![]);
        let (xs, ss) = (cx.shape(x)?, cx.shape(slope)?);
        out[1] = Some(cx.unbroadcast(full, &xs, &ss));
    }
    Ok(out)
}

/// `g` where `x > 0`, else `g·(y·a + b)` (the exponential branch of Elu, Selu and Celu, whose
/// derivative is affine in `y`); `pos` scales the positive branch when not 1.
fn exp_branch(cx: &mut VjpCx, g: ValueId, a: f64, b: f64, pos: f64) -> Result<ValueId> {
    let (x, y) = xy(cx)?;
    let zero = k(cx, 0.0)?;
    let above = cx.op("Greater", &[x, zero], vec![]);
    let ya = if a == 1.0 {
        y
    } else {
        let a = k(cx, a)?;
        cx.op("Mul", &[y, a], vec![])
    };
    let b = k(cx, b)?;
    let slope = cx.op("Add", &[ya, b], vec![]);
    let below = cx.op("Mul", &[g, slope], vec![]);
    let above_g = if pos == 1.0 {
        g
    } else {
        let p = k(cx, pos)?;
        cx.op("Mul", &[g, p], vec![])
    };
    Ok(cx.op("Where", &[above, above_g, below], vec![]))
}

fn d_elu(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    // y = α(eˣ − 1) for x ≤ 0: dy/dx = α·eˣ = y + α.
    let alpha = f64::from(cx.attr_f("alpha", 1.0));
    exp_branch(cx, g, 1.0, alpha, 1.0)
}

fn d_selu(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    // y = γx above 0, γα(eˣ − 1) below: dy/dx = γ, or γα·eˣ = y + γα.
    let alpha = f64::from(cx.attr_f("alpha", 1.673_263_2));
    let gamma = f64::from(cx.attr_f("gamma", 1.050_701));
    exp_branch(cx, g, 1.0, gamma * alpha, gamma)
}

fn d_celu(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    // y = α(e^(x/α) − 1) for x ≤ 0: dy/dx = e^(x/α) = y/α + 1.
    let alpha = f64::from(cx.attr_f("alpha", 1.0));
    if alpha == 0.0 {
        return Err(cx.err("alpha must not be 0"));
    }
    exp_branch(cx, g, 1.0 / alpha, 1.0, 1.0)
}

fn d_softplus(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    let (x, _) = xy(cx)?;
    let s = cx.op("Sigmoid", &[x], vec![]);
    Ok(cx.op("Mul", &[g, s], vec![]))
}

fn d_softsign(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    // y = x/(1+|x|): dy/dx = 1/(1+|x|)².
    let (x, _) = xy(cx)?;
    let one = k(cx, 1.0)?;
    let a = cx.op("Abs", &[x], vec![]);
    let d = cx.op("Add", &[a, one], vec![]);
    let d2 = cx.op("Mul", &[d, d], vec![]);
    Ok(cx.op("Div", &[g, d2], vec![]))
}

/// `2/√π`.
const TWO_OVER_SQRT_PI: f64 = std::f64::consts::FRAC_2_SQRT_PI;

fn d_erf(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    // d erf(x)/dx = 2/√π · e^(−x²).
    let (x, _) = xy(cx)?;
    let (m1, c) = (k(cx, -1.0)?, k(cx, TWO_OVER_SQRT_PI)?);
    let x2 = cx.op("Mul", &[x, x], vec![]);
    let e = cx.op("Mul", &[x2, m1], vec![]);
    let e = cx.op("Exp", &[e], vec![]);
    let d = cx.op("Mul", &[e, c], vec![]);
    Ok(cx.op("Mul", &[g, d], vec![]))
}

fn d_gelu(cx: &mut VjpCx, g: ValueId) -> Result<ValueId> {
    let (x, _) = xy(cx)?;
    let approx = cx.fwd().attr_s("approximate").unwrap_or_default();
    let d = match approx.as_str() {
        "" | "none" => {
            // y = x·Φ(x), Φ(x) = (1 + erf(x/√2))/2: dy/dx = Φ(x) + x·φ(x),
            // φ(x) = e^(−x²/2)/√(2π).
            let (r2, half, mhalf) = (
                k(cx, std::f64::consts::FRAC_1_SQRT_2)?,
                k(cx, 0.5)?,
                k(cx, -0.5)?,
            );
            let inv_sqrt_2pi = k(cx, 0.5 * std::f64::consts::FRAC_1_SQRT_2 * TWO_OVER_SQRT_PI)?;
            let u = cx.op("Mul", &[x, r2], vec![]);
            let e = cx.op("Erf", &[u], vec![]);
            let h = cx.op("Mul", &[e, half], vec![]);
            let cdf = cx.op("Add", &[h, half], vec![]);
            let x2 = cx.op("Mul", &[x, x], vec![]);
            let t = cx.op("Mul", &[x2, mhalf], vec![]);
            let t = cx.op("Exp", &[t], vec![]);
            let pdf = cx.op("Mul", &[t, inv_sqrt_2pi], vec![]);
            let xpdf = cx.op("Mul", &[x, pdf], vec![]);
            cx.op("Add", &[cdf, xpdf], vec![])
        }
        "tanh" => {
            // y = x·(1 + tanh(u))/2, u = √(2/π)·(x + 0.044715x³):
            // dy/dx = (1 + t)/2 + x·(1 − t²)/2 · √(2/π)·(1 + 3·0.044715x²), t = tanh(u).
            // The constants are the float32 values of the spec's function body (which ONNX
            // Runtime expands in float64 too), so the rule matches the forward exactly.
            let c = f64::from(std::f32::consts::FRAC_2_PI).sqrt();
            let c0 = f64::from(0.044_715_f32);
            let (kc, kc3, half, one) = (k(cx, c0)?, k(cx, 3.0 * c0)?, k(cx, 0.5)?, k(cx, 1.0)?);
            let s = k(cx, c)?;
            let x2 = cx.op("Mul", &[x, x], vec![]);
            let inner = cx.op("Mul", &[x2, kc], vec![]);
            let inner = cx.op("Add", &[inner, one], vec![]);
            let u = cx.op("Mul", &[x, inner], vec![]);
            let u = cx.op("Mul", &[u, s], vec![]);
            let t = cx.op("Tanh", &[u], vec![]);
            let left = cx.op("Add", &[t, one], vec![]);
            let left = cx.op("Mul", &[left, half], vec![]);
            let t2 = cx.op("Mul", &[t, t], vec![]);
            let sech2 = cx.op("Sub", &[one, t2], vec![]);
            let du = cx.op("Mul", &[x2, kc3], vec![]);
            let du = cx.op("Add", &[du, one], vec![]);
            let du = cx.op("Mul", &[du, s], vec![]);
            let right = cx.op("Mul", &[sech2, du], vec![]);
            let right = cx.op("Mul", &[right, x], vec![]);
            let right = cx.op("Mul", &[right, half], vec![]);
            cx.op("Add", &[left, right], vec![])
        }
        other => {
            return Err(cx.err(format!(
                "approximate=\"{other}\" is not a Gelu mode (none or tanh)"
            )))
        }
    };
    Ok(cx.op("Mul", &[g, d], vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::util::test_extra::cost;
    use crate::ops::util::testing::{eval, f32_fact, infer, node, shape};

    #[test]
    fn celu_and_softsign_are_element_wise() {
        for (op, name) in [(&CELU, "Celu"), (&SOFTSIGN, "Softsign")] {
            assert!(crate::ops::lookup("", name).is_some());
            let n = node(name, 1, vec![]);
            let r = infer(op, &n, &[f32_fact("N,3,4")], 13).unwrap().unwrap();
            assert_eq!(r[0].shape, Some(shape("N,3,4")));
            let c = cost(op, &n, &[f32_fact("2,3")], &[f32_fact("2,3")]);
            assert_eq!(c.flops, 6);
        }
        let x = Tensor::from_f32(vec![2], &[-3.0, 1.0]);
        let n = node("Softsign", 1, vec![]);
        let r = eval(&SOFTSIGN, &n, &[Some(x)], 13).unwrap().unwrap();
        assert_eq!(r[0].to_f32_vec(), Some(vec![-0.75, 0.5]));
    }
}
