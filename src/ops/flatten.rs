//! `Flatten`: reshapes to 2-D `[d0·…·d(axis-1), d(axis)·…·d(r-1)]` (`axis` default 1, in
//! `[-r, r]`). A side that is a single dim keeps it as is (so `[N,C,H,W]` with axis 1 gives
//! `[N, C·H·W]`); a product involving a symbolic or unknown dim is `Unknown`. With unknown
//! input rank the output is still 2-D with unknown dims. Folding is a reshape (any type).
//! Channels: as any reshape ([`reshape_links`]): `[N, C, H, W]` → `[N, C·H·W]` carries channel
//! `c` at positions `c·H·W..(c+1)·H·W`.
//! Backward: the gradient reshaped back to the input shape.

use crate::error::{Error, Result};
use crate::ir::{Dim, Fact, Node, Tensor};

use super::channel::{reshape_links, ConstCx, Link, LinkCx};
use super::{util, Cx, Op};

/// The `Flatten` op.
pub struct Flatten {
    name: &'static str,
}

/// Resolves `axis` against `rank` (valid range `[-rank, rank]`).
fn split_at(node: &Node, rank: usize) -> std::result::Result<usize, String> {
    let axis = node.attr_i("axis").unwrap_or(1);
    let r = rank as i64;
    if axis < -r || axis > r {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

impl Op for Flatten {
    fn op_type(&self) -> &'static str {
        self.name
    }

    /// A rearrangement of input 0's elements: never negative when they are not.
    fn non_negative(&self, cx: &super::simplify::SignCx) -> bool {
        cx.input(0)
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((1, 1))
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let x = util::required_input(cx, 0)?.unwrap_or(&util::UNKNOWN_FACT);
        let shape = match &x.shape {
            Some(s) => {
                let k = split_at(cx.node, s.len()).map_err(|e| cx.err(e))?;
                vec![util::dim_product(&s[..k]), util::dim_product(&s[k..])]
            }
            None => vec![Dim::Unknown, Dim::Unknown],
        };
        Ok(Some(vec![Fact::new(x.dtype, shape)]))
    }

    fn eval(
        &self,
        node: &Node,
        inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        let t = inputs.first().copied().flatten()?;
        let s = t.shape();
        let k = match split_at(node, s.len()) {
            Ok(k) => k,
            Err(m) => return Some(Err(Error::node(&node.name, &node.op_type, m))),
        };
        let shape = vec![s[..k].iter().product(), s[k..].iter().product()];
        Some(t.reshaped(shape).map(|t| vec![t]))
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

/// `Flatten`.
pub static FLATTEN: Flatten = Flatten { name: "Flatten" };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_int;
    use crate::ops::util::testing::*;

    fn flat(axis: Option<i64>, s: &str) -> Result<Option<Vec<Dim>>> {
        let attrs = axis.map(|a| vec![attr_int("axis", a)]).unwrap_or_default();
        let out = infer(&FLATTEN, &node("Flatten", 1, attrs), &[f32_fact(s)], 13)?;
        Ok(out.and_then(|o| o[0].shape.clone()))
    }

    #[test]
    fn keeps_symbolic_batch() {
        assert_eq!(flat(None, "N,3,4,4").unwrap(), Some(shape("N,48")));
        assert_eq!(flat(Some(2), "N,3,4,4").unwrap(), Some(shape("?,16")));
        assert_eq!(flat(Some(-1), "2,3,4").unwrap(), Some(shape("6,4")));
        assert_eq!(flat(Some(0), "2,3").unwrap(), Some(shape("1,6")));
        assert_eq!(flat(Some(2), "2,3").unwrap(), Some(shape("6,1")));
        assert_eq!(flat(None, "N,3,H").unwrap(), Some(shape("N,?")));
    }

    #[test]
    fn out_of_range_axis_is_an_error() {
        assert!(flat(Some(3), "2,3").is_err());
        assert!(flat(Some(-3), "2,3").is_err());
    }

    #[test]
    fn eval_reshapes() {
        let t = Tensor::from_f32(vec![2, 1, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let n = node("Flatten", 1, vec![]);
        let r = eval(&FLATTEN, &n, &[Some(t)], 13).unwrap().unwrap();
        assert_eq!(r[0].shape(), &[2, 3]);
        assert_eq!(r[0].to_f64_vec().unwrap()[5], 6.0);
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ops::channel::testing::*;

    #[test]
    fn flatten_into_gemm_rows() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 2, 2]);
        let c = n.conv(x, 3, 6);
        let f = n.op("Flatten", &[c], vec![]);
        let w = n.floats(&[24, 3]);
        let y = n.op("Gemm", &[f, w], vec![]);
        n.output(y);
        let m = n.model(13);
        let cg = analyse(&m);
        assert!(group(&cg, &m, c).prunable());
        let pruned = prunes_exactly(&m);
        // Every third channel of 6 removed: 4 × 2 × 2.
        assert_eq!(shape_of(&pruned, &m.graph.value(f).name), "[1,16]");
    }
}
