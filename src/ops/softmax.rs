//! `Softmax` and `LogSoftmax` along `axis` (default 1 before opset 13, −1 from 13): the output
//! has the input's type and shape. The axis is checked against the rank when it is known.
//!
//! Cost: ~3 FLOPs per element (exp, sum, divide). Not handled: folding; the pre-13 "coerce to
//! 2-D" semantics do not change shapes, so they need nothing here.
//!
//! Channels: axes outside the normalisation pass; a channel slot on a normalised axis (`axis`,
//! or every axis from `axis` on before opset 13) blocks.
//!
//! Backward: Softmax `y·(g − Σ g·y)`, LogSoftmax `g − exp(y)·Σ g`, the sums over the normalised
//! axes (kept as 1).

use crate::error::Result;
use crate::ir::Fact;

use super::channel::{pass_axes, resolve_axis, Link, LinkCx};
use super::grad_util::out_grad;
use super::vjp::{Build, VjpCx};
use super::{util, Cost, Cx, Op};
use crate::ir::ValueId;

/// `Softmax` or `LogSoftmax`.
pub struct Softmax {
    name: &'static str,
}

impl Op for Softmax {
    /// Before opset 13 the op flattened the input to 2-D at `axis` (default 1); from 13 it
    /// works along `axis` alone (default -1). The old axis is written explicitly; the two
    /// agree when it is the last axis (class scores `[N, C]`), which is the form lopper
    /// trains; a higher-rank input with an inner axis is not rewritten and keeps the new
    /// meaning.
    fn upgrade(&self, node: &crate::ir::Node, from: i64, to: i64) -> Result<super::Upgrade> {
        let mut u = super::Upgrade::default();
        if from < 13 && to >= 13 && node.attr_i("axis").is_none() {
            u.set.push(crate::ir::graph::attr_int("axis", 1));
        }
        Ok(u)
    }

    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((1, 1))
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let Some(x) = util::required_input(cx, 0)? else {
            return Ok(None);
        };
        if let Some(rank) = x.rank().filter(|&r| r > 0) {
            let default = if cx.opset < 13 { 1 } else { -1 };
            cx.axis(cx.node.attr_i("axis").unwrap_or(default), rank)?;
        }
        Ok(Some(vec![Fact {
            dtype: x.dtype,
            shape: x.shape.clone(),
            ..Default::default()
        }]))
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        let default = if cx.opset < 13 { 1 } else { -1 };
        let axis = cx.node.attr_i("axis").unwrap_or(default);
        let Some(axis) = cx.in_rank(0).and_then(|r| resolve_axis(axis, r)) else {
            return cx.block_all("softmax axis unknown");
        };
        let coerced = cx.opset < 13;
        pass_axes(
            cx,
            |a| if coerced { a < axis } else { a != axis },
            "softmax over the channel axis",
        )
    }

    fn cost(&self, _cx: &Cx, outputs: &[Option<&Fact>]) -> Cost {
        Cost {
            macs: 0,
            flops: util::output_numel(outputs, 0).saturating_mul(3),
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
        let y = cx.output(0)?;
        let rank = cx.shape(y)?.len();
        let default = if cx.opset < 13 { 1 } else { -1 };
        let axis = resolve_axis(cx.attr_i("axis", default), rank)
            .ok_or_else(|| cx.err(format!("axis is out of range for rank {rank}")))?;
        // Before opset 13 the input is coerced to 2-D at `axis`: every later axis is normalised.
        let axes: Vec<i64> = if cx.opset < 13 {
            (axis as i64..rank as i64).collect()
        } else {
            vec![axis as i64]
        };
        out[0] = Some(if self.name == "Softmax" {
            let gy = cx.op("Mul", &[g, y], vec![]);
            let s = cx.reduce_sum(gy, &axes, true);
            let d = cx.op("Sub", &[g, s], vec![]);
            cx.op("Mul", &[y, d], vec![])
        } else {
            let s = cx.reduce_sum(g, &axes, true);
            let p = cx.op("Exp", &[y], vec![]);
            let t = cx.op("Mul", &[p, s], vec![]);
            cx.op("Sub", &[g, t], vec![])
        });
        Ok(out)
    }
}

/// `Softmax`.
pub static SOFTMAX: Softmax = Softmax { name: "Softmax" };

/// `LogSoftmax`.
pub static LOG_SOFTMAX: Softmax = Softmax { name: "LogSoftmax" };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_int;
    use crate::ops::util::test_extra::cost;
    use crate::ops::util::testing::{f32_fact, infer, node, shape};

    #[test]
    fn like_input_with_symbolic_batch() {
        let n = node("Softmax", 1, vec![]);
        let r = infer(&SOFTMAX, &n, &[f32_fact("N,1000")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].shape, Some(shape("N,1000")));
        let c = cost(&LOG_SOFTMAX, &n, &[f32_fact("2,10")], &[f32_fact("2,10")]);
        assert_eq!(c.flops, 60);
    }

    #[test]
    fn axis_out_of_range_is_an_error() {
        let n = node("Softmax", 1, vec![attr_int("axis", 2)]);
        assert!(infer(&SOFTMAX, &n, &[f32_fact("N,1000")], 13).is_err());
        // Opset < 13 defaults to axis 1, which a rank-1 input does not have.
        let n = node("LogSoftmax", 1, vec![]);
        assert!(infer(&LOG_SOFTMAX, &n, &[f32_fact("10")], 11).is_err());
        assert!(infer(&LOG_SOFTMAX, &n, &[f32_fact("10")], 13).is_ok());
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ir::graph::attr_int;
    use crate::ops::channel::testing::*;

    /// Whether the conv's channels stay prunable through a softmax over `axis` at `opset`.
    fn prunable(axis: Option<i64>, opset: i64) -> bool {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let attrs = axis.map(|a| attr_int("axis", a)).into_iter().collect();
        let s = n.op("Softmax", &[c], attrs);
        let y = n.conv(s, 6, 2);
        n.output(y);
        let m = n.model(opset);
        let cg = analyse(&m);
        let g = group(&cg, &m, c);
        assert!(
            g.prunable()
                || g.blocked
                    .iter()
                    .any(|r| r.contains("softmax over the channel axis")),
            "{:?}",
            g.blocked
        );
        g.prunable()
    }

    #[test]
    fn softmax_blocks_only_its_axis() {
        assert!(!prunable(Some(1), 13));
        assert!(prunable(None, 13));
        assert!(prunable(Some(3), 13));
        // Before 13 the input is coerced to 2-D at `axis`: every axis from it on is mixed.
        assert!(!prunable(None, 11));
        assert!(!prunable(Some(1), 11));
        assert!(prunable(Some(2), 11));
    }
}
