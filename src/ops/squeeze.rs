//! `Squeeze`: removes size-1 axes. The axes come from the `axes` attribute (before opset 13)
//! or the optional input 1 (from 13); negative values count from the back. A listed axis of
//! known size other than 1 is an error; a symbolic one is assumed to be 1. Without axes every
//! size-1 axis goes: when some dim is symbolic or unknown it may be 1 at run time, so the
//! output rank is then left unknown rather than guessed. A 1-element vector tracked element
//! by element (`Fact::sym`) keeps its element as a scalar. Folding is a reshape (any type).
//! Channels: as any reshape ([`reshape_links`]).
//! Backward: the gradient reshaped back to the input shape.

use crate::error::{Error, Result};
use crate::ir::{Dim, Fact, Node, Tensor};

use super::channel::{reshape_links, ConstCx, Link, LinkCx};
use super::{util, Cx, Op};

/// The `Squeeze` op.
pub struct Squeeze {
    name: &'static str,
}

/// Resolves and checks `axes` against `rank`.
fn resolve(axes: &[i64], rank: usize) -> std::result::Result<Vec<usize>, String> {
    let r = rank as i64;
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        if a < -r || a >= r {
            return Err(format!("axis {a} is out of range for rank {rank}"));
        }
        let a = if a < 0 { a + r } else { a } as usize;
        if out.contains(&a) {
            return Err(format!("axis {a} is repeated"));
        }
        out.push(a);
    }
    Ok(out)
}

/// The squeezed dims (`Ok(None)`: rank not determinable).
fn squeeze(shape: &[Dim], axes: Option<&[i64]>) -> std::result::Result<Option<Vec<Dim>>, String> {
    let Some(axes) = axes else {
        if shape.iter().any(|d| d.known().is_none()) {
            return Ok(None);
        }
        return Ok(Some(
            shape
                .iter()
                .filter(|d| **d != Dim::Known(1))
                .cloned()
                .collect(),
        ));
    };
    let axes = resolve(axes, shape.len())?;
    for &a in &axes {
        if let Some(k) = shape[a].known().filter(|&k| k != 1) {
            return Err(format!("cannot squeeze axis {a} of size {k}"));
        }
    }
    Ok(Some(
        shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, d)| d.clone())
            .collect(),
    ))
}

/// The axes, from the attribute or the constant input 1. `Ok(None)`: none given;
/// `Err(())`: input 1 is present but not constant.
fn axes_of(
    node: &Node,
    opset: i64,
    input: Option<Option<Vec<i64>>>,
) -> std::result::Result<Option<Vec<i64>>, ()> {
    if opset < 13 {
        return Ok(node.attr_ints("axes").map(<[i64]>::to_vec));
    }
    match input {
        None => Ok(None),
        Some(Some(v)) => Ok(Some(v)),
        Some(None) => Err(()),
    }
}

impl Op for Squeeze {
    /// Opset 13 made `axes` an input.
    fn upgrade(&self, node: &Node, from: i64, to: i64) -> Result<super::Upgrade> {
        let u = super::Upgrade::default();
        Ok(if from < 13 && to >= 13 {
            u.ints_to_input(node, "axes", 1)
        } else {
            u
        })
    }

    fn op_type(&self) -> &'static str {
        self.name
    }

    /// A rearrangement of input 0's elements: never negative when they are not.
    fn non_negative(&self, cx: &super::simplify::SignCx) -> bool {
        cx.input(0)
    }

    fn arity(&self, opset: i64) -> Option<(usize, usize)> {
        // axes became an (optional) input at opset 13.
        Some(if opset < 13 { (1, 1) } else { (1, 2) })
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let x = util::required_input(cx, 0)?.unwrap_or(&util::UNKNOWN_FACT);
        let fact = |shape: Option<Vec<Dim>>| {
            let moved = util::sym_moved(x, shape.as_deref());
            Ok(Some(vec![moved.unwrap_or_else(|| Fact {
                dtype: x.dtype,
                shape,
                ..Default::default()
            })]))
        };
        let Some(shape) = &x.shape else {
            return fact(None);
        };
        let input = cx.has_input(1).then(|| cx.ints(1));
        let axes = match axes_of(cx.node, cx.opset, input) {
            Ok(a) => a,
            Err(()) => {
                // Non-constant axes: the rank is known from their count.
                let k = cx.input(1)?.concrete().and_then(|s| s.first().copied());
                return fact(
                    k.and_then(|k| shape.len().checked_sub(k))
                        .map(|r| vec![Dim::Unknown; r]),
                );
            }
        };
        let out = squeeze(shape, axes.as_deref()).map_err(|e| cx.err(e))?;
        fact(out)
    }

    fn eval(
        &self,
        node: &Node,
        inputs: &[Option<&Tensor>],
        opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        let x = inputs.first().copied().flatten()?;
        let input = inputs.get(1).copied().flatten().map(Tensor::to_i64_vec);
        let axes = axes_of(node, opset, input).ok()?;
        let dims: Vec<Dim> = x.shape().iter().map(|&d| Dim::Known(d)).collect();
        let out = match squeeze(&dims, axes.as_deref()) {
            Ok(o) => o?,
            Err(m) => return Some(Err(Error::node(&node.name, &node.op_type, m))),
        };
        let shape = out.iter().map(Dim::known).collect::<Option<Vec<_>>>()?;
        Some(x.reshaped(shape).map(|t| vec![t]))
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        cx.inputs.first().copied().flatten()
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        reshape_links(cx, cx.in_shape(0), cx.out_shape(0))
    }

    fn vjp(
        &self,
        cx: &mut super::vjp::VjpCx,
        grads: &[Option<crate::ir::ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<crate::ir::ValueId>>> {
        super::grad_util::reshape_back(cx, grads, needs)
    }
}

/// `Squeeze`.
pub static SQUEEZE: Squeeze = Squeeze { name: "Squeeze" };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_ints;
    use crate::ir::DType;
    use crate::ops::util::testing::*;

    #[test]
    fn infer_with_axes_input_and_attribute() {
        let n = node("Squeeze", 1, vec![]);
        let out = infer(
            &SQUEEZE,
            &n,
            &[f32_fact("N,1,4,1"), i64_const(&[1, -1])],
            13,
        )
        .unwrap()
        .unwrap();
        assert_eq!(out[0].shape, Some(shape("N,4")));
        let old = node("Squeeze", 1, vec![attr_ints("axes", &[0])]);
        let out = infer(&SQUEEZE, &old, &[f32_fact("K,4")], 11)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("4")));
    }

    #[test]
    fn no_axes_removes_all_ones() {
        let n = node("Squeeze", 1, vec![]);
        let out = infer(&SQUEEZE, &n, &[f32_fact("1,3,1,2")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("3,2")));
        // A symbolic dim might be 1: the rank is not known.
        let out = infer(&SQUEEZE, &n, &[f32_fact("N,1,2")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, None);
        let dynamic = Some(Fact::new(Some(DType::I64), shape("1")));
        let out = infer(&SQUEEZE, &n, &[f32_fact("N,1,2"), dynamic], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("?,?")));
    }

    #[test]
    fn squeezing_a_non_one_axis_is_an_error() {
        let n = node("Squeeze", 1, vec![]);
        assert!(infer(&SQUEEZE, &n, &[f32_fact("N,3"), i64_const(&[1])], 13).is_err());
        assert!(infer(&SQUEEZE, &n, &[f32_fact("1,3"), i64_const(&[2])], 13).is_err());
        let x = Tensor::from_f32(vec![2, 1], &[1.0, 2.0]);
        assert!(eval(&SQUEEZE, &n, &[Some(x), i64s(&[0])], 13)
            .unwrap()
            .is_err());
    }

    #[test]
    fn eval_reshapes() {
        let n = node("Squeeze", 1, vec![]);
        let x = Tensor::from_i64(vec![1, 2, 1], &[5, 6]);
        let r = eval(&SQUEEZE, &n, &[Some(x.clone())], 13).unwrap().unwrap();
        assert_eq!(r[0].shape(), &[2]);
        let r = eval(&SQUEEZE, &n, &[Some(x), i64s(&[-1])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].shape(), &[1, 2]);
        assert_eq!(r[0].to_i64_vec().unwrap(), vec![5, 6]);
    }

    #[test]
    fn keeps_symbolic_element() {
        let n = node("Squeeze", 1, vec![]);
        let out = infer(&SQUEEZE, &n, &[sym_fact("N"), i64_const(&[0])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("")));
        assert_eq!(out[0].sym, Some(syms("N")));
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ir::graph::attr_ints;
    use crate::ops::channel::testing::*;

    #[test]
    fn squeeze_keeps_channels() {
        for opset in [11, 13] {
            let mut n = Net::new();
            let x = n.input(&[1, 3, 4, 4]);
            let c = n.conv(x, 3, 6);
            let p = n.op("GlobalAveragePool", &[c], vec![]);
            let s = if opset < 13 {
                n.op("Squeeze", &[p], vec![attr_ints("axes", &[2, 3])])
            } else {
                let axes = n.ints(&[2, 3]);
                n.op("Squeeze", &[p, axes], vec![])
            };
            let w = n.floats(&[6, 3]);
            let y = n.op("Gemm", &[s, w], vec![]);
            n.output(y);
            let m = n.model(opset);
            let cg = analyse(&m);
            assert!(group(&cg, &m, c).prunable(), "{:?}", cg.groups);
            prunes_exactly(&m);
        }
    }
}
