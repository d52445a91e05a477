//! Broadcasting element-wise ops: arithmetic (`Add`, `Sub`, `Mul`, `Div`, `Pow`), variadic
//! (`Sum`, `Max`, `Min`, `Mean`), comparisons (`Equal`, `Less`, `Greater`, bool output) and
//! `Where` (condition, x, y). One FLOP per output element. Channels: operands' channels at
//! aligned axes are the same channels (united); constant per-channel operands are members.
//!
//! `Add`/`Sub`/`Mul`/`Div` also compute on integer shape vectors tracked element by element
//! (`Fact::sym`): known op known is known (integer semantics, `Div` truncating), a symbol plus
//! or minus 0, times 1 or divided by 1 stays that symbol, anything else is unknown.
//!
//! Backward rules: `Add`, `Sub`, `Mul`, `Div`, `Sum`, `Mean`, `Pow`, `Max` and `Min`, each
//! operand's gradient summed back over the axes it was broadcast along
//! ([`VjpCx::unbroadcast`]). `Pow(a, b)`: `a` gets `g·b·a^(b−1)`; `b` gets `g·y·ln(a)` where
//! `a > 0` and 0 where `a ≤ 0` (the real power is not differentiable in `b` there; an integer
//! exponent gets no gradient). `Max`/`Min`: the gradient goes to the inputs equal to the
//! result, split evenly among them at ties (like `torch.maximum`). Others have none.

use crate::error::Result;
use crate::ir::graph::attr_int;
use crate::ir::{DType, Dim, Fact, Node, SymInt, Tensor, ValueId};

use super::channel::{elementwise, ConstCx, Link, LinkCx};
use super::grad_util::out_grad;
use super::vjp::{Build, VjpCx};
use super::{numel_or_one, util, Cost, Cx, Op};

/// What the op computes, for folding.
#[derive(Clone, Copy)]
enum Kind {
    Arith(fn(i64, i64) -> i64, fn(f64, f64) -> f64),
    Compare(fn(f64, f64) -> bool),
    Mean,
    Where,
}

/// A broadcasting element-wise op.
pub struct Binary {
    name: &'static str,
    kind: Kind,
    /// Arithmetic on shape-vector elements, for the ops that have it.
    sym: Option<fn(&SymInt, &SymInt) -> SymInt>,
}

impl Binary {
    /// The output for two integer 0-D/1-D inputs tracked element by element, broadcast to
    /// `shape`.
    fn infer_sym(&self, facts: &[&Fact], shape: &[Dim]) -> Option<Fact> {
        let (f, [a, b]) = (self.sym?, facts) else {
            return None;
        };
        let (x, y) = (a.sym_elems()?, b.sym_elems()?);
        let (scalar, n) = match shape {
            [] => (true, 1),
            [Dim::Known(n)] => (false, *n),
            _ => return None,
        };
        fn at(v: &[SymInt], i: usize) -> Option<&SymInt> {
            v.get(if v.len() == 1 { 0 } else { i })
        }
        let elems = (0..n)
            .map(|i| Some(f(at(&x, i)?, at(&y, i)?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Fact::of_sym(a.dtype, scalar, elems))
    }
}

/// A known shape-vector element, or unknown when the arithmetic overflowed or divided by 0.
fn known(v: Option<i64>) -> SymInt {
    v.map_or(SymInt::Unknown, SymInt::Int)
}

/// `Add` on shape-vector elements (`N + 0 = N`).
fn sym_add(a: &SymInt, b: &SymInt) -> SymInt {
    match (a, b) {
        (SymInt::Int(x), SymInt::Int(y)) => known(x.checked_add(*y)),
        (SymInt::Sym(_), SymInt::Int(0)) => a.clone(),
        (SymInt::Int(0), SymInt::Sym(_)) => b.clone(),
        _ => SymInt::Unknown,
    }
}

/// `Sub` on shape-vector elements (`N - 0 = N`).
fn sym_sub(a: &SymInt, b: &SymInt) -> SymInt {
    match (a, b) {
        (SymInt::Int(x), SymInt::Int(y)) => known(x.checked_sub(*y)),
        (SymInt::Sym(_), SymInt::Int(0)) => a.clone(),
        _ => SymInt::Unknown,
    }
}

/// `Mul` on shape-vector elements (`N * 1 = N`).
fn sym_mul(a: &SymInt, b: &SymInt) -> SymInt {
    match (a, b) {
        (SymInt::Int(x), SymInt::Int(y)) => known(x.checked_mul(*y)),
        (SymInt::Sym(_), SymInt::Int(1)) => a.clone(),
        (SymInt::Int(1), SymInt::Sym(_)) => b.clone(),
        _ => SymInt::Unknown,
    }
}

/// `Div` on shape-vector elements (truncating; `N / 1 = N`).
fn sym_div(a: &SymInt, b: &SymInt) -> SymInt {
    match (a, b) {
        (SymInt::Int(x), SymInt::Int(y)) => known(x.checked_div(*y)),
        (SymInt::Sym(_), SymInt::Int(1)) => a.clone(),
        _ => SymInt::Unknown,
    }
}

impl Op for Binary {
    fn is_sum(&self) -> bool {
        matches!(self.name, "Add" | "Sum")
    }

    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        match self.kind {
            _ if matches!(self.name, "Sum" | "Max" | "Min" | "Mean") => Some((1, usize::MAX)),
            Kind::Where => Some((3, 3)),
            _ => Some((2, 2)),
        }
    }

    fn check(&self, cx: &super::CheckCx) -> Vec<String> {
        if self.name != "Div" {
            return Vec::new();
        }
        super::util::integer_division_traps(cx)
    }

    fn weight_input(&self, _port: usize) -> bool {
        // A constant operand of an affine element-wise op is a learned scale or offset.
        matches!(self.name, "Add" | "Sub" | "Mul" | "Div")
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let facts: Vec<&Fact> = (0..cx.inputs.len())
            .map(|i| cx.input(i))
            .collect::<Result<_>>()?;
        if facts.is_empty() {
            return Err(cx.err("needs at least one input"));
        }
        let dtype = match self.kind {
            Kind::Compare(_) => Some(DType::Bool),
            Kind::Where => facts.get(1).and_then(|f| f.dtype),
            _ => facts[0].dtype,
        };
        let shapes: Option<Vec<&crate::ir::Shape>> =
            facts.iter().map(|f| f.shape.as_ref()).collect();
        let Some(shapes) = shapes else {
            return Ok(Some(vec![Fact {
                dtype,
                shape: None,
                ..Default::default()
            }]));
        };
        let shape = util::broadcast(&shapes).map_err(|e| cx.err(e))?;
        if let Some(f) = self.infer_sym(&facts, &shape) {
            return Ok(Some(vec![f]));
        }
        Ok(Some(vec![Fact::new(dtype, shape)]))
    }

    fn eval(
        &self,
        _node: &Node,
        inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        if self.name == "Div" && !integer_div_is_defined(inputs) {
            // Undefined in ONNX (runtimes trap): leave the node for the runtime to judge.
            return None;
        }
        match self.kind {
            Kind::Arith(fi, ff) => util::eval_elementwise(
                inputs,
                None,
                |a| a[1..].iter().fold(a[0], |acc, &b| fi(acc, b)),
                |a| a[1..].iter().fold(a[0], |acc, &b| ff(acc, b)),
            ),
            Kind::Mean => util::eval_elementwise(
                inputs,
                None,
                |_| 0,
                |a| a.iter().sum::<f64>() / a.len() as f64,
            )
            .filter(|_| inputs.iter().flatten().all(|t| t.dtype().is_float())),
            Kind::Compare(f) => util::eval_elementwise(
                inputs,
                Some(DType::Bool),
                |a| i64::from(f(a[0] as f64, a[1] as f64)),
                |a| if f(a[0], a[1]) { 1.0 } else { 0.0 },
            ),
            Kind::Where => {
                let dtype = inputs.get(1).copied().flatten()?.dtype();
                util::eval_elementwise(
                    inputs,
                    Some(dtype),
                    |a| if a[0] != 0 { a[1] } else { a[2] },
                    |a| {
                        if a[0] != 0.0 {
                            a[1]
                        } else {
                            a[2]
                        }
                    },
                )
            }
        }
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        let vals: Vec<f64> = cx.inputs.iter().copied().collect::<Option<_>>()?;
        let first = *vals.first()?;
        match self.kind {
            Kind::Arith(_, ff) => Some(vals[1..].iter().fold(first, |acc, &b| ff(acc, b))),
            Kind::Mean => Some(vals.iter().sum::<f64>() / vals.len() as f64),
            _ => None,
        }
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        // Residual adds and SE multiplies unite the channels of their operands; per-channel
        // constants are sliced along.
        elementwise(cx)
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
        if !matches!(
            self.name,
            "Add" | "Sub" | "Mul" | "Div" | "Sum" | "Mean" | "Pow" | "Max" | "Min"
        ) {
            return Err(
                cx.err("has no backward rule, so the loss cannot be differentiated through it")
            );
        }
        let mut out = vec![None; needs.len()];
        if !needs.iter().any(|&n| n) {
            return Ok(out);
        }
        let g = out_grad(cx, grads)?;
        let y = cx.output(0)?;
        let ys = cx.shape(y)?;
        match self.name {
            "Mean" => return mean_vjp(cx, g, &ys, needs),
            "Max" | "Min" => return extremum_vjp(cx, g, &ys, needs),
            "Pow" => return pow_vjp(cx, g, &ys, needs),
            _ => {}
        }
        for (p, &need) in needs.iter().enumerate() {
            if !need {
                continue;
            }
            let x = cx.input(p)?;
            let xs = cx.shape(x)?;
            // The gradient at full (broadcast) shape.
            let full = match (self.name, p) {
                ("Add" | "Sum", _) | ("Sub", 0) => g,
                ("Sub", _) => cx.op("Neg", &[g], vec![]),
                ("Mul", _) => {
                    let other = cx.input(usize::from(p == 0))?;
                    cx.op("Mul", &[g, other], vec![])
                }
                ("Div", 0) => {
                    let b = cx.input(1)?;
                    cx.op("Div", &[g, b], vec![])
                }
                // d(a/b)/db = −a/b² = −y/b.
                _ => {
                    let b = cx.input(1)?;
                    let q = cx.op("Div", &[y, b], vec![]);
                    let t = cx.op("Mul", &[g, q], vec![]);
                    cx.op("Neg", &[t], vec![])
                }
            };
            out[p] = Some(cx.unbroadcast(full, &ys, &xs));
        }
        Ok(out)
    }
}

/// Mean of n inputs: each gets `g/n`.
fn mean_vjp(
    cx: &mut VjpCx,
    g: ValueId,
    ys: &[usize],
    needs: &[bool],
) -> Result<Vec<Option<ValueId>>> {
    let n = cx.fwd().inputs.len().max(1);
    let dt = cx.dtype(cx.output(0)?);
    let inv = cx.scalar(dt, 1.0 / n as f64)?;
    let scaled = cx.op("Mul", &[g, inv], vec![]);
    let mut out = vec![None; needs.len()];
    for (p, &need) in needs.iter().enumerate() {
        if need {
            let xs = cx.shape(cx.input(p)?)?;
            out[p] = Some(cx.unbroadcast(scaled, ys, &xs));
        }
    }
    Ok(out)
}

/// Max/Min of n inputs: input p gets `g·[x_p = y] / #{q : x_q = y}` (ties split evenly).
fn extremum_vjp(
    cx: &mut VjpCx,
    g: ValueId,
    ys: &[usize],
    needs: &[bool],
) -> Result<Vec<Option<ValueId>>> {
    let mut out = vec![None; needs.len()];
    let n = cx.fwd().inputs.len();
    if n == 1 {
        // The identity.
        out[0] = needs.first().copied().unwrap_or(false).then_some(g);
        return Ok(out);
    }
    let y = cx.output(0)?;
    let dt = cx.dtype(y);
    let to = attr_int("to", i64::from(dt.to_onnx()));
    let mut masks = Vec::with_capacity(n);
    for p in 0..n {
        let x = cx.input(p)?;
        let eq = cx.op("Equal", &[x, y], vec![]);
        masks.push(cx.op("Cast", &[eq], vec![to.clone()]));
    }
    let count = cx.op("Sum", &masks, vec![]);
    let share = cx.op("Div", &[g, count], vec![]);
    for (p, &need) in needs.iter().enumerate() {
        if need {
            let full = cx.op("Mul", &[share, masks[p]], vec![]);
            let xs = cx.shape(cx.input(p)?)?;
            out[p] = Some(cx.unbroadcast(full, ys, &xs));
        }
    }
    Ok(out)
}

/// Pow(a, b) = y: `da = g·b·a^(b−1)`, `db = g·y·ln(a)` where `a > 0`, 0 elsewhere.
fn pow_vjp(
    cx: &mut VjpCx,
    g: ValueId,
    ys: &[usize],
    needs: &[bool],
) -> Result<Vec<Option<ValueId>>> {
    let mut out = vec![None; needs.len()];
    let (a, b, y) = (cx.input(0)?, cx.input(1)?, cx.output(0)?);
    let dt = cx.dtype(a);
    if needs.first() == Some(&true) {
        // The exponent may be of another (integer) type: compute in the base's type.
        let bf = if cx.dtype(b) == dt {
            b
        } else {
            let to = attr_int("to", i64::from(dt.to_onnx()));
            cx.op("Cast", &[b], vec![to])
        };
        let one = cx.scalar(dt, 1.0)?;
        let bm1 = cx.op("Sub", &[bf, one], vec![]);
        let p = cx.op("Pow", &[a, bm1], vec![]);
        let d = cx.op("Mul", &[p, bf], vec![]);
        let full = cx.op("Mul", &[g, d], vec![]);
        let xs = cx.shape(a)?;
        out[0] = Some(cx.unbroadcast(full, ys, &xs));
    }
    if needs.get(1) == Some(&true) {
        // ln(a) is NaN or −∞ for a ≤ 0: those positions are replaced by 0 after the product,
        // so no NaN escapes.
        let zero = cx.scalar(dt, 0.0)?;
        let pos = cx.op("Greater", &[a, zero], vec![]);
        let ln = cx.op("Log", &[a], vec![]);
        let gy = cx.op("Mul", &[g, y], vec![]);
        let prod = cx.op("Mul", &[gy, ln], vec![]);
        let full = cx.op("Where", &[pos, prod, zero], vec![]);
        let bs = cx.shape(b)?;
        out[1] = Some(cx.unbroadcast(full, ys, &bs));
    }
    Ok(out)
}

/// Integer `Div` (only reached when [`integer_div_is_defined`]; never panics regardless).
fn int_div(a: i64, b: i64) -> i64 {
    a.checked_div(b).unwrap_or(0)
}

/// Whether an integer `Div` of these constant inputs is defined: no divisor is 0, and no
/// division of the type's minimum by −1 (which overflows). Float division always is.
fn integer_div_is_defined(inputs: &[Option<&Tensor>]) -> bool {
    let (Some(Some(a)), Some(Some(b))) = (inputs.first(), inputs.get(1)) else {
        return true;
    };
    if a.dtype().is_float() || b.dtype().is_float() {
        return true;
    }
    let (Some(x), Some(y)) = (a.to_i64_vec(), b.to_i64_vec()) else {
        return false;
    };
    let minimum =
        |v: &i64| [i64::MIN, i32::MIN.into(), i16::MIN.into(), i8::MIN.into()].contains(v);
    let overflows = y.contains(&-1) && x.iter().any(minimum);
    !y.contains(&0) && !overflows
}

/// `Add`.
pub static ADD: Binary = Binary {
    name: "Add",
    kind: Kind::Arith(i64::wrapping_add, |a, b| a + b),
    sym: Some(sym_add),
};
/// `Sub`.
pub static SUB: Binary = Binary {
    name: "Sub",
    kind: Kind::Arith(i64::wrapping_sub, |a, b| a - b),
    sym: Some(sym_sub),
};
/// `Mul`.
pub static MUL: Binary = Binary {
    name: "Mul",
    kind: Kind::Arith(i64::wrapping_mul, |a, b| a * b),
    sym: Some(sym_mul),
};
/// `Div` (integer division truncates, as ONNX Runtime does).
pub static DIV: Binary = Binary {
    name: "Div",
    kind: Kind::Arith(int_div, |a, b| a / b),
    sym: Some(sym_div),
};
/// `Pow`.
pub static POW: Binary = Binary {
    name: "Pow",
    kind: Kind::Arith(|a, b| a.wrapping_pow(b.clamp(0, 63) as u32), f64::powf),
    sym: None,
};
/// `Sum` (variadic).
pub static SUM: Binary = Binary {
    name: "Sum",
    kind: Kind::Arith(i64::wrapping_add, |a, b| a + b),
    sym: None,
};
/// `Max` (variadic).
pub static MAX: Binary = Binary {
    name: "Max",
    kind: Kind::Arith(i64::max, f64::max),
    sym: None,
};
/// `Min` (variadic).
pub static MIN: Binary = Binary {
    name: "Min",
    kind: Kind::Arith(i64::min, f64::min),
    sym: None,
};
/// `Mean` (variadic).
pub static MEAN: Binary = Binary {
    name: "Mean",
    kind: Kind::Mean,
    sym: None,
};
/// `Equal`.
pub static EQUAL: Binary = Binary {
    name: "Equal",
    kind: Kind::Compare(|a, b| a == b),
    sym: None,
};
/// `Less`.
pub static LESS: Binary = Binary {
    name: "Less",
    kind: Kind::Compare(|a, b| a < b),
    sym: None,
};
/// `Greater`.
pub static GREATER: Binary = Binary {
    name: "Greater",
    kind: Kind::Compare(|a, b| a > b),
    sym: None,
};
/// `Where`.
pub static WHERE: Binary = Binary {
    name: "Where",
    kind: Kind::Where,
    sym: None,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::util::testing::*;

    fn sym_scalar(s: &str) -> Option<Fact> {
        Some(Fact::of_sym(Some(DType::I64), true, syms(s)))
    }

    #[test]
    fn integer_division_that_traps_is_left_unfolded() {
        let n = node("Div", 1, vec![]);
        let a = Tensor::from_i64(vec![2], &[i64::MIN, 7]);
        let eval = |b: &[i64]| {
            let b = Tensor::from_i64(vec![b.len()], b);
            DIV.eval(&n, &[Some(&a), Some(&b)], 13)
        };
        assert!(eval(&[-1]).is_none(), "i64::MIN / -1 overflows");
        assert!(eval(&[0, 1]).is_none(), "division by zero");
        let ok = eval(&[2]).unwrap().unwrap();
        assert_eq!(ok[0].to_i64_vec().unwrap(), vec![i64::MIN / 2, 3]);
        // Floats are defined everywhere (inf), and folded.
        let f = Tensor::from_f32(vec![1], &[1.0]);
        let z = Tensor::from_f32(vec![1], &[0.0]);
        let inf = DIV.eval(&n, &[Some(&f), Some(&z)], 13).unwrap().unwrap();
        assert_eq!(inf[0].to_f64_vec().unwrap(), vec![f64::INFINITY]);
    }

    #[test]
    fn huge_broadcasts_are_not_materialised() {
        let n = node("Add", 1, vec![]);
        let k = 1 << 16;
        let col = Tensor::from_f32(vec![k, 1], &vec![1.0; k]);
        let row = Tensor::from_f32(vec![1, k], &vec![1.0; k]);
        assert!(ADD.eval(&n, &[Some(&col), Some(&row)], 13).is_none());
        let small = Tensor::from_f32(vec![1, 4], &[1.0; 4]);
        assert!(ADD.eval(&n, &[Some(&col), Some(&small)], 13).is_some());
    }

    #[test]
    fn shape_element_arithmetic() {
        let n = node("Div", 1, vec![]);
        let c2 = Some(Fact::constant(Tensor::from_i64(vec![], &[2])));
        let one = Some(Fact::constant(Tensor::from_i64(vec![], &[1])));
        let out = infer(&DIV, &n, &[sym_scalar("116"), c2.clone()], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("")));
        assert_eq!(
            out[0].value.as_ref().unwrap().to_i64_vec().unwrap(),
            vec![58]
        );
        let out = infer(&DIV, &n, &[sym_scalar("N"), one.clone()], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].sym, Some(syms("N")));
        let out = infer(&DIV, &n, &[sym_scalar("N"), c2.clone()], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].sym, Some(syms("?")));
        // Broadcast of a 1-D vector with a scalar; division by zero is unknown.
        let out = infer(&DIV, &n, &[sym_fact("N,-7,4"), c2.clone()], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].sym, Some(syms("?,-3,2")));
        let zero = Some(Fact::constant(Tensor::from_i64(vec![], &[0])));
        let out = infer(&DIV, &n, &[sym_scalar("6"), zero.clone()], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].sym, Some(syms("?")));
        let add = infer(&ADD, &n, &[zero.clone(), sym_fact("N,3")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(add[0].sym, Some(syms("N,3")));
        let sub = infer(&SUB, &n, &[zero, sym_scalar("N")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(sub[0].sym, Some(syms("?")));
        let mul = infer(&MUL, &n, &[one, sym_fact("N,3")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(mul[0].sym, Some(syms("N,3")));
        // Other ops do not track elements.
        let max = infer(&MAX, &n, &[sym_scalar("N"), c2], 13)
            .unwrap()
            .unwrap();
        assert_eq!(max[0].sym, None);
    }
}
