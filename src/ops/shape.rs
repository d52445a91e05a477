//! `Shape`: the dims of its input as a 1-D int64 tensor, optionally restricted to
//! `[start, end)` (opset 15; negative values count from the back, both are clamped to
//! `[0, rank]`). The output fact carries the selected dims element by element (`sym`, symbols
//! kept), and the value too when every one is known: this is what lets shape arithmetic
//! (Shape→Gather→Unsqueeze→Concat→Reshape) resolve, also with a symbolic batch.
//!
//! Channels: the input is read only for its shape ([`Link::ShapeOnly`]); shape chains that
//! depend on a channel count recompute it at run time.

use crate::error::Result;
use crate::ir::{DType, Dim, Fact, Node, SymInt, Tensor};

use super::channel::{Link, LinkCx, Slot};
use super::{util, Cx, Op};

/// The `Shape` op.
pub struct ShapeOp {
    name: &'static str,
}

/// `[start, end)` after the spec's normalisation against `rank`.
fn range(node: &Node, rank: usize) -> (usize, usize) {
    let r = rank as i64;
    let norm = |v: i64| (if v < 0 { v.saturating_add(r) } else { v }).clamp(0, r) as usize;
    let start = norm(node.attr_i("start").unwrap_or(0));
    let end = norm(node.attr_i("end").unwrap_or(r));
    (start, end.max(start))
}

impl Op for ShapeOp {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((1, 1))
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let x = util::required_input(cx, 0)?.unwrap_or(&util::UNKNOWN_FACT);
        let Some(shape) = &x.shape else {
            return Ok(Some(vec![Fact::new(Some(DType::I64), vec![Dim::Unknown])]));
        };
        let (start, end) = range(cx.node, shape.len());
        let elems = shape[start..end].iter().map(SymInt::from).collect();
        Ok(Some(vec![Fact::of_sym(Some(DType::I64), false, elems)]))
    }

    fn eval(
        &self,
        node: &Node,
        inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        let t = inputs.first().copied().flatten()?;
        let (start, end) = range(node, t.shape().len());
        let v: Vec<i64> = t.shape()[start..end].iter().map(|&d| d as i64).collect();
        Some(Ok(vec![Tensor::from_i64(vec![v.len()], &v)]))
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        cx.tracked
            .iter()
            .map(|&(p, a, _)| Link::ShapeOnly {
                from: Slot::input(p, a),
            })
            .collect()
    }
}

/// `Shape`.
pub static SHAPE: ShapeOp = ShapeOp { name: "Shape" };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_int;
    use crate::ops::util::testing::*;

    #[test]
    fn known_dims_carry_value() {
        let n = node("Shape", 1, vec![]);
        let out = infer(&SHAPE, &n, &[f32_fact("2,3,4")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("3")));
        let v = out[0].value.as_ref().unwrap().to_i64_vec().unwrap();
        assert_eq!(v, vec![2, 3, 4]);
    }

    #[test]
    fn symbolic_batch_is_tracked_element_wise() {
        let n = node("Shape", 1, vec![]);
        let out = infer(&SHAPE, &n, &[f32_fact("N,3,4")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("3")));
        assert!(out[0].value.is_none());
        assert_eq!(
            out[0].sym,
            Some(vec![
                SymInt::Sym("N".into()),
                SymInt::Int(3),
                SymInt::Int(4)
            ])
        );
        let n = node("Shape", 1, vec![attr_int("start", 1)]);
        let out = infer(&SHAPE, &n, &[f32_fact("N,3,4")], 15)
            .unwrap()
            .unwrap();
        assert_eq!(
            out[0].value.as_ref().unwrap().to_i64_vec().unwrap(),
            vec![3, 4]
        );
    }

    #[test]
    fn start_end_clamp_and_negative() {
        let n = node(
            "Shape",
            1,
            vec![attr_int("start", -2), attr_int("end", 100)],
        );
        let out = infer(&SHAPE, &n, &[f32_fact("N,3,4")], 15)
            .unwrap()
            .unwrap();
        assert_eq!(
            out[0].value.as_ref().unwrap().to_i64_vec().unwrap(),
            vec![3, 4]
        );
        let n = node("Shape", 1, vec![attr_int("start", 2), attr_int("end", 1)]);
        let out = infer(&SHAPE, &n, &[f32_fact("N,3,4")], 15)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("0")));
    }

    #[test]
    fn unknown_rank_and_eval() {
        let n = node("Shape", 1, vec![]);
        let out = infer(&SHAPE, &n, &[Some(Fact::default())], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(vec![Dim::Unknown]));
        let t = Tensor::from_f32(vec![2, 1], &[1.0, 2.0]);
        let r = eval(&SHAPE, &n, &[Some(t)], 13).unwrap().unwrap();
        assert_eq!(r[0].to_i64_vec().unwrap(), vec![2, 1]);
        assert!(infer(&SHAPE, &n, &[None], 13).is_err());
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ops::channel::testing::*;

    #[test]
    fn shape_reads_only_the_shape() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let s = n.op("Shape", &[c], vec![]);
        let y = n.conv(c, 6, 2);
        n.output(y);
        n.output(s);
        let m = n.model(13);
        let cg = analyse(&m);
        let g = group(&cg, &m, c);
        assert!(g.prunable(), "{:?}", g.blocked);
        assert_eq!(cg.groups.len(), 2);
    }
}
