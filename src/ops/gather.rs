//! `Gather`: picks entries of `data` along `axis` (default 0, negative counts from the back)
//! at `indices` (int32/int64, negative counts from the end of the axis). Output shape is
//! `data[:axis] ++ indices.shape ++ data[axis+1:]`, symbols kept. Constant indices are checked
//! against a known axis size. Folding works on raw bytes for any byte-addressable type (the
//! `Shape→Gather` step of shape arithmetic); not `GatherElements`/`GatherND`, nor strings or
//! sub-byte types. On a 1-D shape vector tracked element by element (`Fact::sym`, a symbolic
//! batch) constant scalar or 1-D indices pick the elements, symbols kept.
//!
//! Channels: axes of `data` other than `axis` pass (those after it shift by the indices' rank
//! minus one); a channel slot on `axis`, or on the indices, blocks.

use crate::error::{Error, Result};
use crate::ir::{Fact, Node, Tensor};

use super::channel::{block, pass, Link, LinkCx};
use super::{util, Cx, Op};

/// The `Gather` op.
pub struct Gather {
    name: &'static str,
}

/// Normalises index `i` against an axis of size `n`.
fn index(i: i64, n: usize) -> std::result::Result<usize, String> {
    let j = if i < 0 { i + n as i64 } else { i };
    if j < 0 || j >= n as i64 {
        return Err(format!("index {i} is out of range for an axis of size {n}"));
    }
    Ok(j as usize)
}

impl Op for Gather {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((2, 2))
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let data = util::required_input(cx, 0)?.unwrap_or(&util::UNKNOWN_FACT);
        let ind = util::required_input(cx, 1)?.unwrap_or(&util::UNKNOWN_FACT);
        if let Some(d) = ind.dtype {
            if d.is_float() {
                return Err(cx.err(format!("indices must be integers, not {d}")));
            }
        }
        let (Some(ds), Some(is)) = (&data.shape, &ind.shape) else {
            return Ok(Some(vec![Fact {
                dtype: data.dtype,
                shape: None,
                ..Default::default()
            }]));
        };
        if ds.is_empty() {
            return Err(cx.err("data must have rank >= 1"));
        }
        let ax = cx.axis(cx.node.attr_i("axis").unwrap_or(0), ds.len())?;
        if let (Some(n), Some(v)) = (ds[ax].known(), cx.ints(1)) {
            for i in v {
                index(i, n).map_err(|e| cx.err(e))?;
            }
        }
        if let (1, Some(elems), Some(idx)) = (ds.len(), data.sym_elems(), cx.ints(1)) {
            if is.len() <= 1 {
                let picked = idx
                    .iter()
                    .map(|&i| Ok(elems[index(i, elems.len())?].clone()))
                    .collect::<std::result::Result<Vec<_>, String>>()
                    .map_err(|e| cx.err(e))?;
                return Ok(Some(vec![Fact::of_sym(data.dtype, is.is_empty(), picked)]));
            }
        }
        let mut shape = ds[..ax].to_vec();
        shape.extend(is.iter().cloned());
        shape.extend(ds[ax + 1..].iter().cloned());
        Ok(Some(vec![Fact::new(data.dtype, shape)]))
    }

    fn eval(
        &self,
        node: &Node,
        inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        let data = inputs.first().copied().flatten()?;
        let ind = inputs.get(1).copied().flatten()?;
        let err = |m: String| Some(Err(Error::node(&node.name, &node.op_type, m)));
        let es = util::elem_size(data.dtype())?;
        if ind.dtype().is_float() {
            return None;
        }
        let idx = ind.to_i64_vec()?;
        let ds = data.shape();
        if ds.is_empty() {
            return err("data must have rank >= 1".into());
        }
        let axis = node.attr_i("axis").unwrap_or(0);
        let r = ds.len() as i64;
        if axis < -r || axis >= r {
            return err(format!("axis {axis} is out of range for rank {r}"));
        }
        let ax = if axis < 0 { axis + r } else { axis } as usize;
        let n = ds[ax];
        let inner = ds[ax + 1..].iter().product::<usize>() * es;
        let outer: usize = ds[..ax].iter().product();
        let mut shape = ds[..ax].to_vec();
        shape.extend_from_slice(ind.shape());
        shape.extend_from_slice(&ds[ax + 1..]);
        let total = outer.checked_mul(idx.len())?.checked_mul(inner)?;
        if total > util::MAX_EVAL_BYTES {
            return None;
        }
        let rows = match idx
            .iter()
            .map(|&i| index(i, n))
            .collect::<std::result::Result<Vec<_>, _>>()
        {
            Ok(r) => r,
            Err(m) => return err(m),
        };
        let src = &data.raw()[..];
        let mut out = Vec::with_capacity(total);
        for o in 0..outer {
            for &j in &rows {
                let at = (o * n + j) * inner;
                out.extend_from_slice(src.get(at..at + inner)?);
            }
        }
        Some(Tensor::from_raw(data.dtype(), shape, out.into()).map(|t| vec![t]))
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        let axis = cx.node.attr_i("axis").unwrap_or(0);
        let (Some(ax), Some(irank)) = (
            cx.in_rank(0)
                .and_then(|r| super::channel::resolve_axis(axis, r)),
            cx.in_rank(1),
        ) else {
            return cx.block_all("gather axis or indices rank unknown");
        };
        cx.tracked
            .iter()
            .map(|&(p, a, _)| match (p, a) {
                (0, a) if a < ax => pass(0, a, 0, a),
                (0, a) if a > ax => pass(0, a, 0, a + irank - 1),
                (0, _) => block(0, a, "gather along the channel axis"),
                _ => block(p, a, "channels on the gather indices"),
            })
            .collect()
    }
}

/// `Gather`.
pub static GATHER: Gather = Gather { name: "Gather" };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_int;
    use crate::ir::DType;
    use crate::ops::util::testing::*;

    #[test]
    fn infer_shape_with_symbols() {
        let n = node("Gather", 1, vec![attr_int("axis", 1)]);
        let ind = Some(Fact::new(Some(DType::I64), shape("K,2")));
        let out = infer(&GATHER, &n, &[f32_fact("N,10,C"), ind], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("N,K,2,C")));
        let scalar = Some(Fact::constant(Tensor::from_i64(vec![], &[0])));
        let n0 = node("Gather", 1, vec![]);
        let out = infer(&GATHER, &n0, &[f32_fact("N,10"), scalar], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("10")));
    }

    #[test]
    fn eval_shape_gather_scalar_and_negative() {
        let n = node("Gather", 1, vec![]);
        let sh = Tensor::from_i64(vec![4], &[1, 3, 224, 224]);
        let r = eval(
            &GATHER,
            &n,
            &[Some(sh.clone()), Some(Tensor::from_i64(vec![], &[1]))],
            13,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r[0].shape(), &[] as &[usize]);
        assert_eq!(r[0].to_i64_vec().unwrap(), vec![3]);
        let r = eval(&GATHER, &n, &[Some(sh), i64s(&[-1, 0])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].to_i64_vec().unwrap(), vec![224, 1]);
    }

    #[test]
    fn eval_inner_axis_any_dtype() {
        let n = node("Gather", 1, vec![attr_int("axis", -1)]);
        let data = Tensor::from_f32(vec![2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let ind = Tensor::from_f64_as(DType::I32, vec![2], &[2.0, 0.0]).unwrap();
        let r = eval(&GATHER, &n, &[Some(data), Some(ind)], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].shape(), &[2, 2]);
        assert_eq!(r[0].to_f64_vec().unwrap(), vec![2.0, 0.0, 5.0, 3.0]);
    }

    #[test]
    fn out_of_range_index_is_an_error() {
        let n = node("Gather", 1, vec![]);
        assert!(infer(&GATHER, &n, &[f32_fact("3"), i64_const(&[3])], 13).is_err());
        assert!(eval(&GATHER, &n, &[i64s(&[1, 2]), i64s(&[-3])], 13)
            .unwrap()
            .is_err());
        let n = node("Gather", 1, vec![attr_int("axis", 2)]);
        assert!(infer(&GATHER, &n, &[f32_fact("3,4"), i64_const(&[0])], 13).is_err());
    }

    #[test]
    fn picks_symbolic_shape_elements() {
        let n = node("Gather", 1, vec![]);
        let scalar = Some(Fact::constant(Tensor::from_i64(vec![], &[0])));
        let out = infer(&GATHER, &n, &[sym_fact("N,3,4"), scalar], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("")));
        assert_eq!(out[0].sym, Some(syms("N")));
        assert!(out[0].value.is_none());
        // Known picks get a value, so they fold.
        let out = infer(&GATHER, &n, &[sym_fact("N,3,4"), i64_const(&[-1, 1])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(
            out[0].value.as_ref().unwrap().to_i64_vec().unwrap(),
            vec![4, 3]
        );
        assert!(infer(&GATHER, &n, &[sym_fact("N,3"), i64_const(&[2])], 13).is_err());
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ir::graph::attr_int;
    use crate::ir::Tensor;
    use crate::ops::channel::testing::*;

    /// conv(6) on a batch of 3 → Gather along `axis` with indices of shape [2, 1].
    fn gathered(axis: i64) -> crate::ir::Model {
        let mut n = Net::new();
        let x = n.input(&[3, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let idx =
            n.g.add_initializer("idx", Tensor::from_i64(vec![2, 1], &[0, 2]));
        let g = n.op("Gather", &[c, idx], vec![attr_int("axis", axis)]);
        n.output(g);
        n.model(13)
    }

    #[test]
    fn gather_along_a_spatial_axis_passes_channels() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let idx = n.ints(&[0, 2]);
        let g = n.op("Gather", &[c, idx], vec![attr_int("axis", 2)]);
        let y = n.conv(g, 6, 2);
        n.output(y);
        let m = n.model(13);
        assert!(group(&analyse(&m), &m, c).prunable());
        prunes_exactly(&m);
        // Channels before the axis keep their position, those after shift by rank(indices)-1.
        let m = gathered(0);
        let cg = analyse(&m);
        assert!(blocked_with(&cg, "graph output"), "{:?}", cg.groups);
        let links = cg.links.values().flatten();
        assert!(links.into_iter().any(|l| matches!(l,
            crate::ops::channel::Link::Pass { to, .. } if to.axis == 2)));
    }

    #[test]
    fn gather_along_the_channels_blocks() {
        assert!(blocked_with(
            &analyse(&gathered(1)),
            "gather along the channel axis"
        ));
    }
}
