//! Global pooling: `GlobalAveragePool` and `GlobalMaxPool`. X `[N, C, D1..Dn]` → `[N, C, 1..1]`
//! (same rank, every spatial dim 1), same type.
//!
//! Cost: one FLOP per input element. Not handled: `GlobalLpPool` (another op type) and folding.
//! Channels: the batch and channel axes pass; a channel slot on a pooled axis blocks.
//!
//! Backward: GlobalAveragePool spreads `dY/ΠD` over the spatial axes; GlobalMaxPool sends `dY`
//! to the elements equal to the maximum, split evenly among them at ties.

use crate::error::Result;
use crate::ir::graph::attr_int;
use crate::ir::{Dim, Fact, ValueId};

use super::channel::{pass_axes, ConstCx, Link, LinkCx};
use super::vjp::{Build, VjpCx};
use super::{util, Cost, Cx, Op};

/// A global pooling op.
pub struct GlobalPool {
    name: &'static str,
}

impl Op for GlobalPool {
    fn op_type(&self) -> &'static str {
        self.name
    }

    /// Maxima or averages of input 0's elements: never negative when they are not.
    fn non_negative(&self, cx: &super::simplify::SignCx) -> bool {
        cx.input(0)
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((1, 1))
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let Some(x) = util::required_input(cx, 0)? else {
            return Ok(None);
        };
        let shape = match &x.shape {
            Some(xs) if xs.len() < 2 => {
                return Err(cx.err(format!(
                    "input rank {} is below 2 (expected [N, C, ...])",
                    xs.len()
                )));
            }
            Some(xs) => {
                let mut s = xs[..2].to_vec();
                s.resize(xs.len(), Dim::Known(1));
                Some(s)
            }
            None => None,
        };
        Ok(Some(vec![Fact {
            dtype: x.dtype,
            shape,
            ..Default::default()
        }]))
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        cx.inputs.first().copied().flatten()
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        pass_axes(cx, |a| a < 2, "pooling over a tracked axis")
    }

    fn cost(&self, cx: &Cx, _outputs: &[Option<&Fact>]) -> Cost {
        Cost {
            macs: 0,
            flops: util::input_numel(cx, 0),
        }
    }

    /// GlobalAveragePool: dX = dY / ΠD expanded over the spatial axes. GlobalMaxPool:
    /// dX = dY·[X = Y] / #{X = Y} per (n, c) (ties split evenly).
    fn vjp(
        &self,
        cx: &mut VjpCx,
        grads: &[Option<ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<ValueId>>> {
        let (Some(dy), Some(true)) = (grads.first().copied().flatten(), needs.first().copied())
        else {
            return Ok(vec![None; needs.len()]);
        };
        let x = cx.input(0)?;
        let xs = cx.shape(x)?;
        if xs.len() < 2 {
            return Err(cx.err(format!("input rank {} is below 2", xs.len())));
        }
        if self.name == "GlobalMaxPool" {
            let y = cx.output(0)?;
            let dt = cx.dtype(x);
            let eq = cx.op("Equal", &[x, y], vec![]);
            let to = attr_int("to", i64::from(dt.to_onnx()));
            let hit = cx.op("Cast", &[eq], vec![to]);
            let axes: Vec<i64> = (2..xs.len() as i64).collect();
            let count = if axes.is_empty() {
                hit
            } else {
                cx.reduce_sum(hit, &axes, true)
            };
            let share = cx.op("Div", &[dy, count], vec![]);
            return Ok(vec![Some(cx.op("Mul", &[hit, share], vec![]))]);
        }
        let area: usize = xs[2..].iter().product();
        let k = cx.fconst(cx.dtype(x), vec![], &[1.0 / area.max(1) as f64])?;
        let scaled = cx.op("Mul", &[dy, k], vec![]);
        let to: Vec<i64> = xs.iter().map(|&d| d as i64).collect();
        let to = cx.ints(&to);
        Ok(vec![Some(cx.op("Expand", &[scaled, to], vec![]))])
    }
}

/// `GlobalAveragePool`.
pub static GLOBAL_AVERAGE_POOL: GlobalPool = GlobalPool {
    name: "GlobalAveragePool",
};

/// `GlobalMaxPool`.
pub static GLOBAL_MAX_POOL: GlobalPool = GlobalPool {
    name: "GlobalMaxPool",
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::util::test_extra::cost;
    use crate::ops::util::testing::{f32_fact, infer, node, shape};

    #[test]
    fn keeps_batch_and_channels() {
        let n = node("GlobalAveragePool", 1, vec![]);
        let r = infer(&GLOBAL_AVERAGE_POOL, &n, &[f32_fact("N,2048,7,7")], 13);
        assert_eq!(r.unwrap().unwrap()[0].shape, Some(shape("N,2048,1,1")));
        let r = infer(&GLOBAL_MAX_POOL, &n, &[f32_fact("2,8,?,5,5")], 13);
        assert_eq!(r.unwrap().unwrap()[0].shape, Some(shape("2,8,1,1,1")));
        let c = cost(
            &GLOBAL_MAX_POOL,
            &n,
            &[f32_fact("2,8,7,7")],
            &[f32_fact("2,8,1,1")],
        );
        assert_eq!(c.flops, 2 * 8 * 49);
    }

    #[test]
    fn rank_one_is_an_error() {
        let n = node("GlobalAveragePool", 1, vec![]);
        assert!(infer(&GLOBAL_AVERAGE_POOL, &n, &[f32_fact("8")], 13).is_err());
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ops::channel::testing::*;

    #[test]
    fn global_pool_then_flatten_and_gemm() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let p = n.op("GlobalAveragePool", &[c], vec![]);
        let q = n.op("GlobalMaxPool", &[p], vec![]);
        let f = n.op("Flatten", &[q], vec![]);
        let w = n.floats(&[6, 3]);
        let y = n.op("Gemm", &[f, w], vec![]);
        n.output(y);
        let m = n.model(13);
        let cg = analyse(&m);
        assert!(group(&cg, &m, c).prunable());
        prunes_exactly(&m);
    }
}
