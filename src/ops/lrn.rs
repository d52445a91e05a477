//! `LRN`: local response normalisation across channels, `y = x / (bias + alpha/size ·
//! Σ x²)^beta`, the sum over the `size` channels centred on each one (X `[N, C, D…]`, the
//! output of the same type and shape).
//!
//! Cost: per element, `size` multiply-adds for the windowed sum of squares (MACs) plus about
//! 3 FLOPs for the scale, the power and the division.
//!
//! Channels: each output channel reads its neighbouring input channels, so removing one would
//! change its neighbours' outputs: a channel slot on axis 1 blocks; the other axes pass.
//! Not handled: folding, backward.

use crate::error::Result;
use crate::ir::Fact;

use super::channel::{pass_axes, Link, LinkCx};
use super::{util, Cost, Cx, Op};

/// `LRN`.
pub struct Lrn;
/// `LRN`.
pub static LRN: Lrn = Lrn;

impl Op for Lrn {
    fn op_type(&self) -> &'static str {
        "LRN"
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((1, 1))
    }

    /// `size` is required, an INT of at least 1.
    fn check(&self, cx: &super::CheckCx) -> Vec<String> {
        match cx.int_attr("size") {
            Ok(Some(s)) if s >= 1 => Vec::new(),
            Ok(Some(s)) => vec![format!("size {s} is below 1 (size)")],
            Ok(None) => vec!["has no size, which the spec requires (size)".into()],
            Err(e) => vec![e],
        }
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let Some(x) = util::required_input(cx, 0)? else {
            return Ok(None);
        };
        if cx.node.attr_i("size").is_some_and(|s| s < 1) {
            return Err(cx.err("size must be at least 1"));
        }
        Ok(Some(vec![Fact {
            dtype: x.dtype,
            shape: x.shape.clone(),
            ..Default::default()
        }]))
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        pass_axes(
            cx,
            |a| a != 1,
            "LRN normalises across neighbouring channels",
        )
    }

    fn cost(&self, cx: &Cx, outputs: &[Option<&Fact>]) -> Cost {
        let size = cx.node.attr_i("size").unwrap_or(1).max(1) as u64;
        let n = util::output_numel(outputs, 0);
        Cost {
            macs: n.saturating_mul(size),
            flops: n.saturating_mul(size.saturating_mul(2).saturating_add(3)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_int;
    use crate::ops::util::test_extra::cost;
    use crate::ops::util::testing::{f32_fact, infer, node, shape};

    #[test]
    fn keeps_the_shape_and_costs_size_macs_per_element() {
        let n = node("LRN", 1, vec![attr_int("size", 5)]);
        let r = infer(&LRN, &n, &[f32_fact("N,64,56,56")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].shape, Some(shape("N,64,56,56")));
        let c = cost(&LRN, &n, &[f32_fact("1,4,2,2")], &[f32_fact("1,4,2,2")]);
        assert_eq!((c.macs, c.flops), (80, 208));
        let bad = node("LRN", 1, vec![attr_int("size", 0)]);
        assert!(infer(&LRN, &bad, &[f32_fact("1,4,2,2")], 13).is_err());
        // A hostile size saturates instead of overflowing.
        let huge = node("LRN", 1, vec![attr_int("size", i64::MAX)]);
        let c = cost(&LRN, &huge, &[f32_fact("1,4,2,2")], &[f32_fact("1,4,2,2")]);
        assert_eq!(c.flops, u64::MAX);
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ops::channel::testing::*;

    #[test]
    fn lrn_blocks_the_channels_it_mixes() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let l = n.op("LRN", &[c], vec![crate::ir::graph::attr_int("size", 3)]);
        let y = n.conv(l, 6, 2);
        n.output(y);
        let m = n.model(13);
        let cg = analyse(&m);
        let g = group(&cg, &m, c);
        assert!(!g.prunable());
        assert!(
            g.blocked.iter().any(|r| r.contains("LRN normalises")),
            "{:?}",
            g.blocked
        );
    }
}
