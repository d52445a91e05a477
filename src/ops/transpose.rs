//! `Transpose`: permutes axes; output axis `i` is input axis `perm[i]` (default, or an empty
//! `perm`: reversed). `perm` must be a permutation of `0..rank` (no negative values). Symbolic
//! dims move with their axis; with unknown input rank the output rank is `perm`'s length.
//! Folding works on raw bytes for any byte-addressable type (not strings or sub-byte types).
//! Channels: input axis `a` passes to output axis `j` where `perm[j] = a`.
//! Backward: `Transpose` of the gradient by the inverse permutation.

use crate::error::{Error, Result};
use crate::ir::{Dim, Fact, Node, Tensor};

use super::channel::{pass, ConstCx, Link, LinkCx};
use super::grad_util::out_grad;
use super::vjp::{Build, VjpCx};
use super::{util, Cx, Op};
use crate::ir::ValueId;

/// The `Transpose` op.
pub struct Transpose {
    name: &'static str,
}

/// The permutation for `rank`, checked.
fn perm(node: &Node, rank: usize) -> std::result::Result<Vec<usize>, String> {
    let p = match node.attr_ints("perm") {
        Some(p) if !p.is_empty() => p,
        _ => return Ok((0..rank).rev().collect()),
    };
    let mut seen = vec![false; rank];
    let mut out = Vec::with_capacity(rank);
    for &a in p {
        match usize::try_from(a).ok().filter(|&a| a < rank) {
            Some(a) if !seen[a] => {
                seen[a] = true;
                out.push(a);
            }
            _ => return Err(format!("perm {p:?} is not a permutation of 0..{rank}")),
        }
    }
    if out.len() != rank {
        return Err(format!("perm {p:?} is not a permutation of 0..{rank}"));
    }
    Ok(out)
}

impl Op for Transpose {
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
                let p = perm(cx.node, s.len()).map_err(|e| cx.err(e))?;
                Some(p.iter().map(|&a| s[a].clone()).collect())
            }
            None => cx
                .node
                .attr_ints("perm")
                .filter(|p| !p.is_empty())
                .map(|p| vec![Dim::Unknown; p.len()]),
        };
        Ok(Some(vec![Fact {
            dtype: x.dtype,
            shape,
            ..Default::default()
        }]))
    }

    fn eval(
        &self,
        node: &Node,
        inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        let x = inputs.first().copied().flatten()?;
        let dims = x.shape();
        let p = match perm(node, dims.len()) {
            Ok(p) => p,
            Err(m) => return Some(Err(Error::node(&node.name, &node.op_type, m))),
        };
        let strides = util::strides_of(dims);
        let shape: Vec<usize> = p.iter().map(|&a| dims[a]).collect();
        let view: Vec<isize> = p.iter().map(|&a| strides[a] as isize).collect();
        Some(util::strided_copy(x, shape, 0, &view)?.map(|t| vec![t]))
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        cx.inputs.first().copied().flatten()
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        let Some(p) = cx.in_rank(0).and_then(|r| perm(cx.node, r).ok()) else {
            return cx.block_all("permutation unknown");
        };
        cx.tracked_axes(0)
            .filter_map(|(a, _)| p.iter().position(|&x| x == a).map(|j| pass(0, a, 0, j)))
            .collect()
    }

    fn vjp(
        &self,
        cx: &mut VjpCx,
        grads: &[Option<ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<ValueId>>> {
        let mut out = vec![None; needs.len()];
        if needs.first() == Some(&true) {
            let g = out_grad(cx, grads)?;
            let rank = cx.shape(cx.input(0)?)?.len();
            let p = perm(cx.fwd(), rank).map_err(|e| cx.err(e))?;
            let mut inv = vec![0i64; rank];
            for (j, &a) in p.iter().enumerate() {
                inv[a] = j as i64;
            }
            out[0] = Some(cx.transpose(g, &inv));
        }
        Ok(out)
    }
}

/// `Transpose`.
pub static TRANSPOSE: Transpose = Transpose { name: "Transpose" };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_ints;
    use crate::ops::util::testing::*;

    #[test]
    fn infer_moves_symbols() {
        let n = node("Transpose", 1, vec![attr_ints("perm", &[0, 2, 3, 1])]);
        let out = infer(&TRANSPOSE, &n, &[f32_fact("N,C,H,W")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("N,H,W,C")));
        let rev = node("Transpose", 1, vec![]);
        let out = infer(&TRANSPOSE, &rev, &[f32_fact("N,3,4")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("4,3,N")));
        let out = infer(&TRANSPOSE, &n, &[Some(Fact::default())], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("?,?,?,?")));
    }

    #[test]
    fn bad_perm_is_an_error() {
        for p in [&[0, 0, 1][..], &[0, 1], &[0, 1, 3], &[-1, 0, 1]] {
            let n = node("Transpose", 1, vec![attr_ints("perm", p)]);
            assert!(
                infer(&TRANSPOSE, &n, &[f32_fact("1,2,3")], 13).is_err(),
                "{p:?}"
            );
        }
        let n = node("Transpose", 1, vec![attr_ints("perm", &[1, 1])]);
        let x = Tensor::from_f32(vec![1, 2], &[1.0, 2.0]);
        assert!(eval(&TRANSPOSE, &n, &[Some(x)], 13).unwrap().is_err());
    }

    #[test]
    fn eval_permutes() {
        let n = node("Transpose", 1, vec![attr_ints("perm", &[1, 2, 0])]);
        let x = Tensor::from_i64(vec![2, 2, 3], &(0..12).collect::<Vec<_>>());
        let r = eval(&TRANSPOSE, &n, &[Some(x)], 13).unwrap().unwrap();
        assert_eq!(r[0].shape(), &[2, 3, 2]);
        // out[i][j][k] = x[k][i][j]
        assert_eq!(
            r[0].to_i64_vec().unwrap(),
            vec![0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]
        );
        let rev = node("Transpose", 1, vec![]);
        let m = Tensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let r = eval(&TRANSPOSE, &rev, &[Some(m)], 13).unwrap().unwrap();
        assert_eq!(
            r[0].to_f64_vec().unwrap(),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ir::graph::attr_ints;
    use crate::ops::channel::testing::*;

    #[test]
    fn channels_follow_the_permutation() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let t = n.op("Transpose", &[c], vec![attr_ints("perm", &[0, 2, 3, 1])]);
        let r = n.op("Relu", &[t], vec![]);
        let back = n.op("Transpose", &[r], vec![attr_ints("perm", &[0, 3, 1, 2])]);
        let y = n.conv(back, 6, 2);
        n.output(y);
        let m = n.model(13);
        let cg = analyse(&m);
        assert!(group(&cg, &m, c).prunable());
        prunes_exactly(&m);
    }
}
