//! `LayerNormalization` (opset 17): normalises X over the axes from `axis` (default −1) on.
//! Y has X's type and shape; the optional Mean and InvStdDev outputs have X's shape with every
//! dim from `axis` on set to 1, typed by `stash_type` (default float). Scale and B must
//! broadcast onto the normalised dims (checked when known).
//!
//! Cost: ~5 FLOPs per element (mean, variance, normalise, scale, shift). Not handled: folding
//! and the contrib/`SimplifiedLayerNormalization` variants (other domains or op types).
//!
//! Channels: axes before `axis` pass (to the statistics outputs too); a channel slot on a
//! normalised axis blocks.

use crate::error::Result;
use crate::ir::{DType, Dim, Fact};

use super::channel::{block, pass, resolve_axis, Link, LinkCx};
use super::{util, Cost, Cx, Op};

/// `LayerNormalization`.
pub struct LayerNorm {
    name: &'static str,
}

impl Op for LayerNorm {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((2, 3))
    }

    fn weight_input(&self, port: usize) -> bool {
        // Scale and bias.
        port == 1 || port == 2
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let Some(x) = util::required_input(cx, 0)? else {
            return Ok(None);
        };
        let stash = cx.node.attr_i("stash_type").unwrap_or(1);
        let stash = i32::try_from(stash)
            .ok()
            .and_then(DType::from_onnx)
            .ok_or_else(|| cx.err(format!("stash_type {stash} is not a known type")))?;
        let stats_shape = match &x.shape {
            Some(xs) => {
                let axis = cx.axis(cx.node.attr_i("axis").unwrap_or(-1), xs.len())?;
                let normalised = xs[axis..].to_vec();
                for (port, name) in [(1, "Scale"), (2, "B")] {
                    let Some(ps) = cx
                        .inputs
                        .get(port)
                        .copied()
                        .flatten()
                        .and_then(|f| f.shape.as_ref())
                    else {
                        continue;
                    };
                    util::broadcast(&[&normalised, ps]).map_err(|e| {
                        cx.err(format!(
                            "{name} {} does not fit the normalised dims {}: {e}",
                            crate::ir::fact::shape_string(ps),
                            crate::ir::fact::shape_string(&normalised)
                        ))
                    })?;
                }
                let mut s = xs[..axis].to_vec();
                s.resize(xs.len(), Dim::Known(1));
                Some(s)
            }
            None => None,
        };
        let mut out = vec![Fact {
            dtype: x.dtype,
            shape: x.shape.clone(),
            ..Default::default()
        }];
        for _ in 1..cx.node.outputs.len().clamp(1, 3) {
            out.push(Fact {
                dtype: Some(stash),
                shape: stats_shape.clone(),
                ..Default::default()
            });
        }
        Ok(Some(out))
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        let axis = cx.node.attr_i("axis").unwrap_or(-1);
        let Some(axis) = cx.in_rank(0).and_then(|r| resolve_axis(axis, r)) else {
            return cx.block_all("normalisation axis unknown");
        };
        let mut links = Vec::new();
        for &(p, a, _) in cx.tracked {
            if p != 0 || a >= axis {
                links.push(block(p, a, "normalisation over the channel axis"));
                continue;
            }
            for out in 0..cx.node.outputs.len() {
                if cx.node.output(out).is_some() {
                    links.push(pass(0, a, out, a));
                }
            }
        }
        links
    }

    fn cost(&self, _cx: &Cx, outputs: &[Option<&Fact>]) -> Cost {
        Cost {
            macs: 0,
            flops: util::output_numel(outputs, 0).saturating_mul(5),
        }
    }
}

/// `LayerNormalization`.
pub static LAYER_NORM: LayerNorm = LayerNorm {
    name: "LayerNormalization",
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_int;
    use crate::ops::util::test_extra::cost;
    use crate::ops::util::testing::{f32_fact, infer, node, shape};

    #[test]
    fn symbolic_batch_and_stats_outputs() {
        let n = node("LayerNormalization", 3, vec![]);
        let ins = [f32_fact("B,S,768"), f32_fact("768"), f32_fact("768")];
        let r = infer(&LAYER_NORM, &n, &ins, 17).unwrap().unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].shape, Some(shape("B,S,768")));
        assert_eq!(r[1].shape, Some(shape("B,S,1")));
        assert_eq!(r[2].dtype, Some(DType::F32));
        let n = node("LayerNormalization", 2, vec![attr_int("axis", 1)]);
        let r = infer(&LAYER_NORM, &n, &[f32_fact("2,3,4"), f32_fact("3,4")], 17);
        assert_eq!(r.unwrap().unwrap()[1].shape, Some(shape("2,1,1")));
        let c = cost(&LAYER_NORM, &n, &ins, &[f32_fact("2,3,4")]);
        assert_eq!(c.flops, 5 * 24);
    }

    #[test]
    fn scale_mismatch_and_bad_axis_are_errors() {
        let n = node("LayerNormalization", 1, vec![]);
        let ins = [f32_fact("1,4,768"), f32_fact("512")];
        assert!(infer(&LAYER_NORM, &n, &ins, 17).is_err());
        let n = node("LayerNormalization", 1, vec![attr_int("axis", 3)]);
        assert!(infer(&LAYER_NORM, &n, &[f32_fact("1,4,768")], 17).is_err());
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ir::graph::attr_int;
    use crate::ops::channel::testing::*;

    #[test]
    fn channels_before_the_normalised_axes_pass() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let (s, b) = (n.floats(&[4]), n.floats(&[4]));
        let l = n.op("LayerNormalization", &[c, s, b], vec![]);
        let y = n.conv(l, 6, 2);
        n.output(y);
        let m = n.model(17);
        let cg = analyse(&m);
        assert!(group(&cg, &m, c).prunable());
        prunes_exactly(&m);
    }

    #[test]
    fn normalising_the_channels_blocks() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let s = n.floats(&[6, 4, 4]);
        let l = n.op("LayerNormalization", &[c, s], vec![attr_int("axis", 1)]);
        n.output(l);
        let m = n.model(17);
        let cg = analyse(&m);
        assert!(blocked_with(&cg, "normalisation over the channel axis"));
    }
}
