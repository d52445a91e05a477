//! `Unsqueeze`: inserts size-1 axes at `axes` — positions in the *output*, negative counting
//! from its back — taken from the attribute (before opset 13) or the constant input 1 (from
//! 13). Repeated or out-of-range axes are errors. When the axes are not constant only the
//! output rank is known (from their count). A scalar tracked element by element (`Fact::sym`)
//! keeps its element as a 1-element vector. Folding is a reshape (any type).
//! Channels: as any reshape ([`reshape_links`]).
//! Backward: the gradient reshaped back to the input shape.

use crate::error::{Error, Result};
use crate::ir::{Dim, Fact, Node, Tensor};

use super::channel::{reshape_links, ConstCx, Link, LinkCx};
use super::{util, Cx, Op};

/// The `Unsqueeze` op.
pub struct Unsqueeze {
    name: &'static str,
}

/// The unsqueezed dims.
fn unsqueeze(shape: &[Dim], axes: &[i64]) -> std::result::Result<Vec<Dim>, String> {
    let rank = shape.len() + axes.len();
    let r = rank as i64;
    let mut ones = vec![false; rank];
    for &a in axes {
        if a < -r || a >= r {
            return Err(format!("axis {a} is out of range for output rank {rank}"));
        }
        let a = if a < 0 { a + r } else { a } as usize;
        if ones[a] {
            return Err(format!("axis {a} is repeated"));
        }
        ones[a] = true;
    }
    let mut src = shape.iter();
    Ok(ones
        .into_iter()
        .map(|one| {
            if one {
                Dim::Known(1)
            } else {
                src.next().cloned().unwrap_or(Dim::Unknown)
            }
        })
        .collect())
}

/// The axes from the attribute (opset < 13) or the given input values.
fn axes_of(node: &Node, opset: i64, input: Option<Vec<i64>>) -> Option<Vec<i64>> {
    if opset < 13 {
        return node.attr_ints("axes").map(<[i64]>::to_vec);
    }
    input
}

impl Op for Unsqueeze {
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
        // axes became a required input at opset 13.
        Some(if opset < 13 { (1, 1) } else { (2, 2) })
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
        let axes = axes_of(cx.node, cx.opset, cx.ints(1));
        if cx.opset < 13 && axes.is_none() {
            return Err(cx.err("attribute 'axes' is missing"));
        }
        let Some(shape) = &x.shape else {
            return fact(None);
        };
        match axes {
            Some(a) => fact(Some(unsqueeze(shape, &a).map_err(|e| cx.err(e))?)),
            None => {
                let k = util::required_input(cx, 1)?
                    .unwrap_or(&util::UNKNOWN_FACT)
                    .concrete()
                    .and_then(|s| s.first().copied());
                fact(k.map(|k| vec![Dim::Unknown; shape.len() + k]))
            }
        }
    }

    fn eval(
        &self,
        node: &Node,
        inputs: &[Option<&Tensor>],
        opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        let x = inputs.first().copied().flatten()?;
        let input = inputs
            .get(1)
            .copied()
            .flatten()
            .and_then(Tensor::to_i64_vec);
        let axes = axes_of(node, opset, input)?;
        let dims: Vec<Dim> = x.shape().iter().map(|&d| Dim::Known(d)).collect();
        let out = match unsqueeze(&dims, &axes) {
            Ok(o) => o,
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

/// `Unsqueeze`.
pub static UNSQUEEZE: Unsqueeze = Unsqueeze { name: "Unsqueeze" };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_ints;
    use crate::ir::DType;
    use crate::ops::util::testing::*;

    #[test]
    fn infer_positions_in_output() {
        let n = node("Unsqueeze", 1, vec![]);
        let out = infer(&UNSQUEEZE, &n, &[f32_fact("N,4"), i64_const(&[0, -1])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("1,N,4,1")));
        let old = node("Unsqueeze", 1, vec![attr_ints("axes", &[1])]);
        let out = infer(&UNSQUEEZE, &old, &[f32_fact("N,4")], 11)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("N,1,4")));
        let dynamic = Some(Fact::new(Some(DType::I64), shape("2")));
        let out = infer(&UNSQUEEZE, &n, &[f32_fact("N"), dynamic], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("?,?,?")));
    }

    #[test]
    fn bad_axes_are_errors() {
        let n = node("Unsqueeze", 1, vec![]);
        assert!(infer(&UNSQUEEZE, &n, &[f32_fact("3"), i64_const(&[2])], 13).is_err());
        assert!(infer(&UNSQUEEZE, &n, &[f32_fact("3"), i64_const(&[0, -3])], 13).is_err());
        assert!(infer(
            &UNSQUEEZE,
            &node("Unsqueeze", 1, vec![]),
            &[f32_fact("3")],
            11
        )
        .is_err());
        assert!(eval(&UNSQUEEZE, &n, &[i64s(&[1]), i64s(&[5])], 13)
            .unwrap()
            .is_err());
    }

    #[test]
    fn eval_scalar_to_vector() {
        let n = node("Unsqueeze", 1, vec![]);
        let s = Tensor::from_i64(vec![], &[3]);
        let r = eval(&UNSQUEEZE, &n, &[Some(s), i64s(&[0])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].shape(), &[1]);
        assert_eq!(r[0].to_i64_vec().unwrap(), vec![3]);
    }

    #[test]
    fn keeps_symbolic_scalar() {
        let n = node("Unsqueeze", 1, vec![]);
        let scalar = Some(Fact::of_sym(Some(DType::I64), true, syms("N")));
        let out = infer(&UNSQUEEZE, &n, &[scalar, i64_const(&[0])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("1")));
        assert_eq!(out[0].sym, Some(syms("N")));
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ir::graph::attr_ints;
    use crate::ops::channel::testing::*;

    #[test]
    fn unsqueeze_moves_the_channel_axis() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let u = n.op("Unsqueeze", &[c], vec![attr_ints("axes", &[0])]);
        let s = n.op("Squeeze", &[u], vec![attr_ints("axes", &[0])]);
        let y = n.conv(s, 6, 2);
        n.output(y);
        let m = n.model(11);
        let cg = analyse(&m);
        assert!(group(&cg, &m, c).prunable());
        let links = &cg.links;
        let moved = links.values().flatten().any(|l| {
            matches!(l, crate::ops::channel::Link::Pass { from, to, .. } if from.axis == 1 && to.axis == 2)
        });
        assert!(moved);
        prunes_exactly(&m);
    }
}
