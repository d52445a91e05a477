//! Reductions: `ReduceMean`, `ReduceSum`, `ReduceMax`, `ReduceMin`, `ReduceProd`, `ReduceL2`,
//! `ReduceL1`, `ReduceSumSquare`, `ReduceLogSumExp`.
//!
//! Axes come from the `axes` attribute (ReduceSum before opset 13, the others before 18) or the
//! constant second input (later opsets); negative axes count from the back. No axes reduces
//! every axis, unless `noop_with_empty_axes=1`: then nothing is reduced and each element is
//! its own group (the identity for Sum/Mean/Max/Min/Prod/LogSumExp, `|x|` for L1/L2, `x²` for
//! SumSquare, as ONNX Runtime computes it). `keepdims` (default 1) keeps reduced axes as 1.
//! Axes given by a non-constant input leave the reduced dims unknown (same rank with keepdims,
//! unknown rank without).
//!
//! Folding: integer inputs are reduced exactly in i64 (wrapping; Mean truncates, L2 truncates
//! the square root; LogSumExp is not folded), float inputs in f64; the result keeps the input
//! type. Empty reductions are not folded for Mean/Max/Min. Cost: one FLOP per input element.
//! Not handled: `ReduceLogSum`, `ArgMax`/`ArgMin`.
//!
//! Channels: a kept axis passes (to its shifted position without `keepdims`); a channel slot on
//! a reduced axis, or with axes not known, blocks.
//!
//! Backward (every kind; `g` and `y` reshaped to keep the reduced axes as 1, then broadcast
//! back to the input shape): Sum `g`, Mean `g/n`, Max/Min `g·[x = y] / #{x = y}` (ties in a
//! group split the gradient evenly), Prod the product of the other elements (exact with zeros:
//! one zero in a group gets the product of the rest, every other element 0), L2 `g·x/y` (0
//! for an all-zero group), L1 `g·sign(x)` (0 at x = 0), SumSquare `2g·x`, LogSumExp
//! `g·e^(x−y)`.

use crate::error::{Error, Result};
use crate::ir::graph::attr_int;
use crate::ir::{DType, Dim, Fact, Node, Tensor};

use super::channel::{block, pass, Link, LinkCx};
use super::grad_util::{const_ints, out_grad};
use super::vjp::{Build, VjpCx};
use super::{util, Cost, Cx, Op};
use crate::ir::ValueId;

/// Which reduction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mean,
    Sum,
    Max,
    Min,
    Prod,
    L2,
    L1,
    SumSquare,
    LogSumExp,
}

/// `ln(eᵃ + eᵇ)` without overflow (`a` may be −∞, the empty sum).
fn log_add_exp(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    a.max(b) + (-(a - b).abs()).exp().ln_1p()
}

/// A reduction op.
pub struct Reduce {
    name: &'static str,
    kind: Kind,
}

/// What the node says about its axes.
enum Axes {
    /// Explicit (possibly empty) list.
    Known(Vec<i64>),
    /// Given by an input whose value is not known.
    Unknown,
}

/// Resolves possibly negative axes against `rank` into a per-axis "reduced" mask; `Err` text
/// for an out-of-range axis.
fn mask(axes: &[i64], rank: usize) -> std::result::Result<Vec<bool>, String> {
    let mut m = vec![false; rank];
    for &a in axes {
        let r = rank as i64;
        if a < -r || a >= r {
            return Err(format!("axis {a} is out of range for rank {rank}"));
        }
        m[if a < 0 { a + r } else { a } as usize] = true;
    }
    Ok(m)
}

impl Reduce {
    fn axes(&self, cx: &Cx) -> Axes {
        if let Some(a) = cx.node.attr_ints("axes") {
            return Axes::Known(a.to_vec());
        }
        if !util::wired(cx, 1) {
            return Axes::Known(Vec::new());
        }
        cx.ints(1).map_or(Axes::Unknown, Axes::Known)
    }

    /// Reduces `vals` (row-major over `shape`) along the axes in `m`, grouping with `f`.
    fn fold<T: Copy>(
        vals: &[T],
        shape: &[usize],
        m: &[bool],
        init: T,
        f: impl Fn(T, T) -> T,
    ) -> Vec<T> {
        let out_n: usize = shape
            .iter()
            .zip(m)
            .map(|(&d, &r)| if r { 1 } else { d })
            .product();
        let mut acc = vec![init; out_n];
        // Output strides with reduced axes given stride 0.
        let mut ostride = vec![0usize; shape.len()];
        let mut s = 1usize;
        for i in (0..shape.len()).rev() {
            if !m[i] {
                ostride[i] = s;
                s *= shape[i];
            }
        }
        let mut coord = vec![0usize; shape.len()];
        let mut o = 0usize;
        for &v in vals {
            acc[o] = f(acc[o], v);
            for ax in (0..shape.len()).rev() {
                coord[ax] += 1;
                o += ostride[ax];
                if coord[ax] < shape[ax] {
                    break;
                }
                o -= ostride[ax] * coord[ax];
                coord[ax] = 0;
            }
        }
        acc
    }
}

impl Op for Reduce {
    /// `axes` became an input: at opset 13 for ReduceSum, at 18 for the others.
    fn upgrade(&self, node: &Node, from: i64, to: i64) -> Result<super::Upgrade> {
        let at = if self.name == "ReduceSum" { 13 } else { 18 };
        let u = super::Upgrade::default();
        Ok(if from < at && to >= at {
            u.ints_to_input(node, "axes", 1)
        } else {
            u
        })
    }

    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, opset: i64) -> Option<(usize, usize)> {
        // axes became an input (ReduceSum at 13, the others at 18).
        let from = if self.name == "ReduceSum" { 13 } else { 18 };
        Some(if opset < from { (1, 1) } else { (1, 2) })
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let Some(x) = util::required_input(cx, 0)? else {
            return Ok(None);
        };
        let keep = cx.node.attr_i("keepdims").unwrap_or(1) != 0;
        let noop = cx.node.attr_i("noop_with_empty_axes").unwrap_or(0) != 0;
        let fact = |shape| {
            Ok(Some(vec![Fact {
                dtype: x.dtype,
                shape,
                ..Default::default()
            }]))
        };
        let axes = self.axes(cx);
        if matches!(&axes, Axes::Known(a) if a.is_empty()) && noop {
            return fact(x.shape.clone());
        }
        let Some(xs) = &x.shape else {
            return fact(None);
        };
        let m = match axes {
            Axes::Known(a) if a.is_empty() => vec![true; xs.len()],
            Axes::Known(a) => mask(&a, xs.len()).map_err(|e| cx.err(e))?,
            Axes::Unknown if keep => {
                // Any axis may be reduced to 1: only dims already 1 are certain.
                let s = xs
                    .iter()
                    .map(|d| match d {
                        Dim::Known(1) => Dim::Known(1),
                        _ => Dim::Unknown,
                    })
                    .collect();
                return fact(Some(s));
            }
            Axes::Unknown => return fact(None),
        };
        let shape = xs
            .iter()
            .zip(&m)
            .filter_map(|(d, &r)| match (r, keep) {
                (false, _) => Some(d.clone()),
                (true, true) => Some(Dim::Known(1)),
                (true, false) => None,
            })
            .collect();
        fact(Some(shape))
    }

    fn eval(
        &self,
        node: &Node,
        inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        let x = inputs.first().copied().flatten()?;
        let err = |msg: String| Some(Err(Error::node(&node.name, &node.op_type, msg)));
        let axes: Vec<i64> = match node.attr_ints("axes") {
            Some(a) => a.to_vec(),
            None if node.input(1).is_some() => inputs.get(1).copied().flatten()?.to_i64_vec()?,
            None => Vec::new(),
        };
        let keep = node.attr_i("keepdims").unwrap_or(1) != 0;
        let noop = node.attr_i("noop_with_empty_axes").unwrap_or(0) != 0;
        let shape = x.shape();
        let m = if axes.is_empty() {
            // With noop_with_empty_axes nothing is reduced: each element is its own group.
            vec![!noop; shape.len()]
        } else {
            match mask(&axes, shape.len()) {
                Ok(m) => m,
                Err(e) => return err(e),
            }
        };
        let count: usize = shape
            .iter()
            .zip(&m)
            .filter(|(_, &r)| r)
            .map(|(d, _)| d)
            .product();
        if count == 0 && matches!(self.kind, Kind::Mean | Kind::Max | Kind::Min) {
            return None;
        }
        let out_shape: Vec<usize> = shape
            .iter()
            .zip(&m)
            .filter_map(|(&d, &r)| match (r, keep) {
                (false, _) => Some(d),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect();
        let dtype = x.dtype();
        let out: Vec<f64> = if dtype.is_float() {
            let v = x.to_f64_vec()?;
            let c = count as f64;
            match self.kind {
                Kind::Sum => Self::fold(&v, shape, &m, 0.0, |a, b| a + b),
                Kind::Mean => Self::fold(&v, shape, &m, 0.0, |a, b| a + b)
                    .into_iter()
                    .map(|s| s / c)
                    .collect(),
                Kind::Prod => Self::fold(&v, shape, &m, 1.0, |a, b| a * b),
                Kind::Max => Self::fold(&v, shape, &m, f64::NEG_INFINITY, f64::max),
                Kind::Min => Self::fold(&v, shape, &m, f64::INFINITY, f64::min),
                Kind::L2 => Self::fold(&v, shape, &m, 0.0, |a, b| a + b * b)
                    .into_iter()
                    .map(f64::sqrt)
                    .collect(),
                Kind::L1 => Self::fold(&v, shape, &m, 0.0, |a, b| a + b.abs()),
                Kind::SumSquare => Self::fold(&v, shape, &m, 0.0, |a, b| a + b * b),
                Kind::LogSumExp => Self::fold(&v, shape, &m, f64::NEG_INFINITY, log_add_exp),
            }
        } else {
            let v = x.to_i64_vec()?;
            let c = count as i64;
            let ints = match self.kind {
                Kind::Sum => Self::fold(&v, shape, &m, 0, i64::wrapping_add),
                Kind::Mean => Self::fold(&v, shape, &m, 0, i64::wrapping_add)
                    .into_iter()
                    .map(|s| s / c)
                    .collect(),
                Kind::Prod => Self::fold(&v, shape, &m, 1, i64::wrapping_mul),
                Kind::Max => Self::fold(&v, shape, &m, i64::MIN, i64::max),
                Kind::Min => Self::fold(&v, shape, &m, i64::MAX, i64::min),
                Kind::L2 => Self::fold(&v, shape, &m, 0, |a, b| a.wrapping_add(b.wrapping_mul(b)))
                    .into_iter()
                    .map(|s| (s as f64).sqrt() as i64)
                    .collect(),
                Kind::L1 => Self::fold(&v, shape, &m, 0, |a, b| a.wrapping_add(b.wrapping_abs())),
                Kind::SumSquare => {
                    Self::fold(&v, shape, &m, 0, |a, b| a.wrapping_add(b.wrapping_mul(b)))
                }
                Kind::LogSumExp => return None,
            };
            if dtype == DType::I64 {
                return Some(Ok(vec![Tensor::from_i64(out_shape, &ints)]));
            }
            ints.into_iter().map(|v| v as f64).collect()
        };
        Some(Tensor::from_f64_as(dtype, out_shape, &out).map(|t| vec![t]))
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        let axes = if let Some(a) = cx.node.attr_ints("axes") {
            Some(a.to_vec())
        } else if cx.node.input(1).is_none() {
            Some(Vec::new())
        } else {
            cx.ints(1)
        };
        let (Some(axes), Some(rank)) = (axes, cx.in_rank(0)) else {
            return cx.block_all("reduction axes unknown");
        };
        let keep = cx.node.attr_i("keepdims").unwrap_or(1) != 0;
        let noop = cx.node.attr_i("noop_with_empty_axes").unwrap_or(0) != 0;
        let reduced = if axes.is_empty() {
            vec![!noop; rank]
        } else {
            match mask(&axes, rank) {
                Ok(m) => m,
                Err(_) => return cx.block_all("reduction axes out of range"),
            }
        };
        cx.tracked
            .iter()
            .map(|&(p, a, _)| {
                if p != 0 || reduced.get(a).copied().unwrap_or(true) {
                    return block(p, a, "reduction over the channel axis");
                }
                let shift = if keep {
                    0
                } else {
                    reduced[..a].iter().filter(|r| **r).count()
                };
                pass(0, a, 0, a - shift)
            })
            .collect()
    }

    fn cost(&self, cx: &Cx, _outputs: &[Option<&Fact>]) -> Cost {
        Cost {
            macs: 0,
            flops: util::input_numel(cx, 0),
        }
    }

    fn vjp(
        &self,
        cx: &mut VjpCx,
        grads: &[Option<ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<ValueId>>> {
        let mut out = vec![None; needs.len()];
        if needs.first() != Some(&true) {
            return Ok(out);
        }
        let g = out_grad(cx, grads)?;
        let x = cx.input(0)?;
        let xs = cx.shape(x)?;
        let axes = match cx.fwd().attr_ints("axes") {
            Some(a) => a.to_vec(),
            None => match const_ints(cx, 1) {
                None => Vec::new(),
                Some(Some(a)) => a,
                Some(None) => {
                    return Err(cx.err("the axes must be constant to differentiate"));
                }
            },
        };
        let noop = cx.attr_i("noop_with_empty_axes", 0) != 0;
        let m = if axes.is_empty() {
            vec![!noop; xs.len()]
        } else {
            mask(&axes, xs.len()).map_err(|e| cx.err(e))?
        };
        let kept: Vec<usize> = xs
            .iter()
            .zip(&m)
            .map(|(&d, &r)| if r { 1 } else { d })
            .collect();
        let keepdims = cx.attr_i("keepdims", 1) != 0;
        // Output-shaped values with the reduced axes kept as 1 (broadcastable onto x).
        let as_kept = |cx: &mut VjpCx, v: ValueId| {
            if keepdims || kept == xs {
                v
            } else {
                cx.reshape(v, &kept)
            }
        };
        let gk = as_kept(cx, g);
        let red: Vec<i64> = (0..xs.len()).filter(|&i| m[i]).map(|i| i as i64).collect();
        let dt = cx.dtype(x);
        let v = match self.kind {
            Kind::Sum => gk,
            Kind::Mean => {
                let count: usize = red.iter().map(|&i| xs[i as usize]).product();
                if count <= 1 {
                    gk
                } else {
                    let k = cx.scalar(dt, 1.0 / count as f64)?;
                    cx.op("Mul", &[gk, k], vec![])
                }
            }
            Kind::Max | Kind::Min => {
                let y = cx.output(0)?;
                let yk = as_kept(cx, y);
                let eq = cx.op("Equal", &[x, yk], vec![]);
                let hit = cast_to(cx, eq, dt);
                let count = reduce_kept(cx, "ReduceSum", hit, &red);
                let share = cx.op("Div", &[gk, count], vec![]);
                cx.op("Mul", &[hit, share], vec![])
            }
            Kind::Prod => prod_vjp(cx, x, gk, &red, dt)?,
            Kind::L2 => {
                // x·g/y, with 0 where y = 0 (an all-zero group).
                let y = cx.output(0)?;
                let yk = as_kept(cx, y);
                let zero = cx.scalar(dt, 0.0)?;
                let is0 = cx.op("Equal", &[yk, zero], vec![]);
                let one = cx.scalar(dt, 1.0)?;
                let den = cx.op("Where", &[is0, one, yk], vec![]);
                let q = cx.op("Div", &[gk, den], vec![]);
                let q = cx.op("Where", &[is0, zero, q], vec![]);
                cx.op("Mul", &[x, q], vec![])
            }
            Kind::L1 => {
                let s = cx.op("Sign", &[x], vec![]);
                cx.op("Mul", &[s, gk], vec![])
            }
            Kind::SumSquare => {
                let two = cx.scalar(dt, 2.0)?;
                let g2 = cx.op("Mul", &[gk, two], vec![]);
                cx.op("Mul", &[x, g2], vec![])
            }
            Kind::LogSumExp => {
                let y = cx.output(0)?;
                let yk = as_kept(cx, y);
                let d = cx.op("Sub", &[x, yk], vec![]);
                let e = cx.op("Exp", &[d], vec![]);
                cx.op("Mul", &[e, gk], vec![])
            }
        };
        // Sum and Mean are still shaped like the kept output: broadcast them back.
        let v = if matches!(self.kind, Kind::Sum | Kind::Mean) && kept != xs {
            let s: Vec<i64> = xs.iter().map(|&d| d as i64).collect();
            let s = cx.ints(&s);
            cx.op("Expand", &[v, s], vec![])
        } else {
            v
        };
        out[0] = Some(v);
        Ok(out)
    }
}

/// `v` cast to `dtype`.
fn cast_to(cx: &mut VjpCx, v: ValueId, dtype: DType) -> ValueId {
    cx.op(
        "Cast",
        &[v],
        vec![attr_int("to", i64::from(dtype.to_onnx()))],
    )
}

/// Reduction `op` of `v` over `axes` keeping them as 1; `v` itself when no axis is reduced.
fn reduce_kept(cx: &mut VjpCx, op: &str, v: ValueId, axes: &[i64]) -> ValueId {
    if axes.is_empty() {
        return v;
    }
    cx.reduce(op, v, axes, true)
}

/// ReduceProd: each element gets `g` times the product of the others in its group. With `z`
/// zeros in the group: `z = 0` gives `P/x` (P the product of the group), `z = 1` gives the
/// product of the non-zero elements at the zero and 0 elsewhere, `z ≥ 2` gives 0.
fn prod_vjp(cx: &mut VjpCx, x: ValueId, gk: ValueId, red: &[i64], dt: DType) -> Result<ValueId> {
    let (zero, one) = (cx.scalar(dt, 0.0)?, cx.scalar(dt, 1.0)?);
    let is0 = cx.op("Equal", &[x, zero], vec![]);
    let safe = cx.op("Where", &[is0, one, x], vec![]);
    // Product of the non-zero elements, and the zero count, per group.
    let p = reduce_kept(cx, "ReduceProd", safe, red);
    let zf = cast_to(cx, is0, dt);
    let zc = reduce_kept(cx, "ReduceSum", zf, red);
    let none = cx.op("Equal", &[zc, zero], vec![]);
    let single = cx.op("Equal", &[zc, one], vec![]);
    let others = cx.op("Div", &[p, safe], vec![]);
    let at_zero = cx.op("Where", &[is0, p, zero], vec![]);
    let one_zero = cx.op("Where", &[single, at_zero, zero], vec![]);
    let d = cx.op("Where", &[none, others, one_zero], vec![]);
    Ok(cx.op("Mul", &[d, gk], vec![]))
}

/// `ReduceMean`.
pub static REDUCE_MEAN: Reduce = Reduce {
    name: "ReduceMean",
    kind: Kind::Mean,
};

/// `ReduceSum`.
pub static REDUCE_SUM: Reduce = Reduce {
    name: "ReduceSum",
    kind: Kind::Sum,
};

/// `ReduceMax`.
pub static REDUCE_MAX: Reduce = Reduce {
    name: "ReduceMax",
    kind: Kind::Max,
};

/// `ReduceMin`.
pub static REDUCE_MIN: Reduce = Reduce {
    name: "ReduceMin",
    kind: Kind::Min,
};

/// `ReduceProd`.
pub static REDUCE_PROD: Reduce = Reduce {
    name: "ReduceProd",
    kind: Kind::Prod,
};

/// `ReduceL2`.
pub static REDUCE_L2: Reduce = Reduce {
    name: "ReduceL2",
    kind: Kind::L2,
};

/// `ReduceL1`.
pub static REDUCE_L1: Reduce = Reduce {
    name: "ReduceL1",
    kind: Kind::L1,
};

/// `ReduceSumSquare`.
pub static REDUCE_SUM_SQUARE: Reduce = Reduce {
    name: "ReduceSumSquare",
    kind: Kind::SumSquare,
};

/// `ReduceLogSumExp`.
pub static REDUCE_LOG_SUM_EXP: Reduce = Reduce {
    name: "ReduceLogSumExp",
    kind: Kind::LogSumExp,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::{attr_int, attr_ints};
    use crate::ops::util::test_extra::{cost, wire};
    use crate::ops::util::testing::{eval, f32_fact, i64_const, i64s, infer, node, shape};

    #[test]
    fn axes_attribute_with_symbolic_batch() {
        let n = node("ReduceMean", 1, vec![attr_ints("axes", &[2, 3])]);
        let r = infer(&REDUCE_MEAN, &n, &[f32_fact("N,64,7,7")], 13).unwrap();
        assert_eq!(r.unwrap()[0].shape, Some(shape("N,64,1,1")));
        let n = node(
            "ReduceMean",
            1,
            vec![attr_ints("axes", &[-1]), attr_int("keepdims", 0)],
        );
        let r = infer(&REDUCE_MEAN, &n, &[f32_fact("N,S,768")], 13).unwrap();
        assert_eq!(r.unwrap()[0].shape, Some(shape("N,S")));
    }

    #[test]
    fn axes_input_empty_and_unknown() {
        let n = wire(node("ReduceSum", 1, vec![attr_int("keepdims", 0)]), 2);
        let r = infer(&REDUCE_SUM, &n, &[f32_fact("N,4,5"), i64_const(&[1])], 13);
        assert_eq!(r.unwrap().unwrap()[0].shape, Some(shape("N,5")));
        // No axes: reduce everything.
        let n0 = node("ReduceSum", 1, vec![attr_int("keepdims", 0)]);
        let r = infer(&REDUCE_SUM, &n0, &[f32_fact("N,4,5"), None], 13);
        assert_eq!(r.unwrap().unwrap()[0].shape, Some(shape("")));
        // Non-constant axes: rank unknown without keepdims, dims unknown with it.
        let r = infer(&REDUCE_SUM, &n, &[f32_fact("N,4,5"), f32_fact("1")], 13);
        assert_eq!(r.unwrap().unwrap()[0].shape, None);
        let n = wire(node("ReduceSum", 1, vec![]), 2);
        let r = infer(&REDUCE_SUM, &n, &[f32_fact("N,1,5"), f32_fact("1")], 13);
        assert_eq!(r.unwrap().unwrap()[0].shape, Some(shape("?,1,?")));
        // noop_with_empty_axes.
        let n = node("ReduceSum", 1, vec![attr_int("noop_with_empty_axes", 1)]);
        let r = infer(&REDUCE_SUM, &n, &[f32_fact("N,4,5")], 13);
        assert_eq!(r.unwrap().unwrap()[0].shape, Some(shape("N,4,5")));
    }

    #[test]
    fn axis_out_of_range_is_an_error() {
        let n = node("ReduceMax", 1, vec![attr_ints("axes", &[3])]);
        assert!(infer(&REDUCE_MAX, &n, &[f32_fact("2,3,4")], 13).is_err());
    }

    #[test]
    fn folds_integers_and_floats() {
        let x = Tensor::from_i64(vec![2, 3], &[1, 2, 3, 4, 5, 6]);
        let n = node(
            "ReduceProd",
            1,
            vec![attr_ints("axes", &[1]), attr_int("keepdims", 0)],
        );
        let r = eval(&REDUCE_PROD, &n, &[Some(x.clone())], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].shape(), &[2]);
        assert_eq!(r[0].to_i64_vec(), Some(vec![6, 120]));
        let n = wire(node("ReduceSum", 1, vec![]), 2);
        let r = eval(&REDUCE_SUM, &n, &[Some(x.clone()), i64s(&[0])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].shape(), &[1, 3]);
        assert_eq!(r[0].to_i64_vec(), Some(vec![5, 7, 9]));
        let f = Tensor::from_f32(vec![2, 2], &[3.0, 4.0, 1.0, -2.0]);
        let n = node("ReduceL2", 1, vec![attr_ints("axes", &[1])]);
        let r = eval(&REDUCE_L2, &n, &[Some(f.clone())], 18)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].to_f32_vec(), Some(vec![5.0, 5f32.sqrt()]));
        let n = node("ReduceMean", 1, vec![attr_int("keepdims", 0)]);
        let r = eval(&REDUCE_MEAN, &n, &[Some(f)], 18).unwrap().unwrap();
        assert_eq!(r[0].shape(), &[] as &[usize]);
        assert_eq!(r[0].to_f32_vec(), Some(vec![1.5]));
        let n = node("ReduceMin", 1, vec![attr_ints("axes", &[0])]);
        let r = eval(&REDUCE_MIN, &n, &[Some(x)], 13).unwrap().unwrap();
        assert_eq!(r[0].to_i64_vec(), Some(vec![1, 2, 3]));
        let c = cost(&REDUCE_MIN, &n, &[f32_fact("2,3")], &[f32_fact("1,3")]);
        assert_eq!(c.flops, 6);
    }

    #[test]
    fn folds_l1_sum_square_and_log_sum_exp() {
        let f = Tensor::from_f64_as(DType::F64, vec![2, 2], &[3.0, -4.0, 1000.0, 1000.0]).unwrap();
        let n = node("ReduceL1", 1, vec![attr_ints("axes", &[1])]);
        let r = eval(&REDUCE_L1, &n, &[Some(f.clone())], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].to_f64_vec(), Some(vec![7.0, 2000.0]));
        let n = node(
            "ReduceSumSquare",
            1,
            vec![attr_ints("axes", &[0]), attr_int("keepdims", 0)],
        );
        let r = eval(&REDUCE_SUM_SQUARE, &n, &[Some(f.clone())], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].shape(), &[2]);
        assert_eq!(r[0].to_f64_vec(), Some(vec![1_000_009.0, 1_000_016.0]));
        // No overflow for large inputs.
        let n = node("ReduceLogSumExp", 1, vec![attr_ints("axes", &[1])]);
        let r = eval(&REDUCE_LOG_SUM_EXP, &n, &[Some(f)], 13)
            .unwrap()
            .unwrap();
        let v = r[0].to_f64_vec().unwrap();
        assert!((v[0] - (3f64.exp() + (-4f64).exp()).ln()).abs() < 1e-12);
        assert!((v[1] - (1000.0 + 2f64.ln())).abs() < 1e-9);
        let x = Tensor::from_i64(vec![3], &[-2, 3, 1]);
        let n = node("ReduceL1", 1, vec![]);
        let r = eval(&REDUCE_L1, &n, &[Some(x.clone())], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].to_i64_vec(), Some(vec![6]));
        let n = node("ReduceLogSumExp", 1, vec![]);
        assert!(eval(&REDUCE_LOG_SUM_EXP, &n, &[Some(x)], 13).is_none());
    }

    #[test]
    fn noop_with_empty_axes_reduces_each_element_alone() {
        // ONNX Runtime: L1/L2 give |x|, SumSquare x², the others x.
        let x = Tensor::from_f32(vec![2], &[-3.0, 2.0]);
        let n = node("ReduceL2", 1, vec![attr_int("noop_with_empty_axes", 1)]);
        for (op, want) in [
            (&REDUCE_L2, [3.0, 2.0]),
            (&REDUCE_L1, [3.0, 2.0]),
            (&REDUCE_SUM_SQUARE, [9.0, 4.0]),
            (&REDUCE_MAX, [-3.0, 2.0]),
            (&REDUCE_LOG_SUM_EXP, [-3.0, 2.0]),
        ] {
            let r = eval(op, &n, &[Some(x.clone())], 18).unwrap().unwrap();
            assert_eq!(r[0].shape(), &[2]);
            assert_eq!(r[0].to_f32_vec(), Some(want.to_vec()), "{}", op.name);
        }
        let r = infer(&REDUCE_L1, &n, &[f32_fact("N,3")], 18).unwrap();
        assert_eq!(r.unwrap()[0].shape, Some(shape("N,3")));
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ir::graph::{attr_int, attr_ints};
    use crate::ops::channel::testing::*;

    #[test]
    fn spatial_reduction_passes_channels() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let attrs = vec![attr_ints("axes", &[2, 3]), attr_int("keepdims", 0)];
        let r = n.op("ReduceMean", &[c], attrs);
        let w = n.floats(&[6, 3]);
        let y = n.op("Gemm", &[r, w], vec![]);
        n.output(y);
        let m = n.model(13);
        let cg = analyse(&m);
        assert!(group(&cg, &m, c).prunable());
        prunes_exactly(&m);
    }

    #[test]
    fn channel_reduction_blocks() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        // Opset 18: axes as an input.
        let axes = n.ints(&[1]);
        let r = n.op("ReduceSum", &[c, axes], vec![]);
        n.output(r);
        let m = n.model(18);
        let cg = analyse(&m);
        assert!(blocked_with(&cg, "reduction over the channel axis"));
        assert!(!group(&cg, &m, c).prunable());
    }
}
