//! Windowed pooling: `MaxPool` and `AveragePool`. X `[N, C, D1..Dn]` → `[N, C, O1..On]` with the
//! window geometry of [`Window`] (`kernel_shape`, `strides`, `pads`, `dilations`, `auto_pad`,
//! `ceil_mode`). MaxPool's optional second output (Indices) is int64 of the same shape.
//!
//! Cost: output elements · Πkernel FLOPs. Not handled: `LpPool`/`MaxRoiPool`/`MaxUnpool`
//! (other op types) and folding.
//!
//! Channels: the batch and channel axes pass; a channel slot on a pooled axis blocks, as does
//! MaxPool's Indices output (flat indices depend on the channel count).

use crate::error::Result;
use crate::ir::{DType, Fact};

use super::channel::{pass_axes, ConstCx, Link, LinkCx};
use super::util::{self, Window};
use super::{Cost, Cx, Op};

/// A windowed pooling op.
pub struct Pool {
    name: &'static str,
}

/// The `kernel_shape` attribute (required by both pooling ops).
fn kernel(cx: &Cx) -> Result<Vec<usize>> {
    let k = cx
        .node
        .attr_ints("kernel_shape")
        .ok_or_else(|| cx.err("the kernel_shape attribute is missing"))?;
    if k.is_empty() || k.iter().any(|&v| v < 1) {
        return Err(cx.err(format!(
            "kernel_shape {k:?} is not a list of positive sizes"
        )));
    }
    Ok(k.iter().map(|&v| v as usize).collect())
}

impl Op for Pool {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let Some(x) = util::required_input(cx, 0)? else {
            return Ok(None);
        };
        let n_out = if self.name == "MaxPool" {
            cx.node.outputs.len().clamp(1, 2)
        } else {
            1
        };
        let k = kernel(cx)?;
        let Some(xs) = &x.shape else {
            let mut out = vec![Fact {
                dtype: x.dtype,
                shape: None,
                ..Default::default()
            }];
            if n_out == 2 {
                out.push(Fact {
                    dtype: Some(DType::I64),
                    shape: None,
                    ..Default::default()
                });
            }
            return Ok(Some(out));
        };
        if xs.len() != k.len() + 2 {
            return Err(cx.err(format!(
                "input rank {} does not fit a {}-D kernel_shape",
                xs.len(),
                k.len()
            )));
        }
        let win = Window::read(cx, k)?;
        let mut shape = vec![xs[0].clone(), xs[1].clone()];
        for (i, d) in xs[2..].iter().enumerate() {
            shape.push(win.out_dim(i, d, cx)?);
        }
        let mut out = vec![Fact::new(x.dtype, shape.clone())];
        if n_out == 2 {
            out.push(Fact::new(Some(DType::I64), shape));
        }
        Ok(Some(out))
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        // MaxPool pads with -inf; AveragePool averages only real inputs unless
        // count_include_pad = 1 with non-zero pads.
        let padded = cx
            .node
            .attr_ints("pads")
            .is_some_and(|p| p.iter().any(|v| *v != 0))
            || cx
                .node
                .attr_s("auto_pad")
                .is_some_and(|a| a.starts_with("SAME"));
        if self.op_type() == "AveragePool"
            && padded
            && cx.node.attr_i("count_include_pad").unwrap_or(0) != 0
        {
            return None;
        }
        cx.inputs.first().copied().flatten()
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        if cx.node.output(1).is_some() {
            return cx.block_all("MaxPool indices depend on the channel count");
        }
        pass_axes(cx, |a| a < 2, "pooling over a tracked axis")
    }

    fn cost(&self, cx: &Cx, outputs: &[Option<&Fact>]) -> Cost {
        let window: u64 = cx
            .node
            .attr_ints("kernel_shape")
            .map_or(1, |k| k.iter().map(|&v| v.max(1) as u64).product());
        Cost {
            macs: 0,
            flops: util::output_numel(outputs, 0).saturating_mul(window),
        }
    }
}

/// `MaxPool`.
pub static MAX_POOL: Pool = Pool { name: "MaxPool" };

/// `AveragePool`.
pub static AVERAGE_POOL: Pool = Pool {
    name: "AveragePool",
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::{attr_int, attr_ints};
    use crate::ops::util::test_extra::{attr_str, cost};
    use crate::ops::util::testing::{f32_fact, infer, node, shape};

    #[test]
    fn resnet_stem_max_pool_with_indices() {
        let attrs = vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ];
        let n = node("MaxPool", 2, attrs);
        let r = infer(&MAX_POOL, &n, &[f32_fact("N,64,112,112")], 12)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].shape, Some(shape("N,64,56,56")));
        assert_eq!(r[1].dtype, Some(DType::I64));
        assert_eq!(r[1].shape, Some(shape("N,64,56,56")));
        let c = cost(
            &MAX_POOL,
            &n,
            &[f32_fact("1,64,112,112")],
            &[f32_fact("1,64,56,56")],
        );
        assert_eq!(c.flops, 64 * 56 * 56 * 9);
    }

    #[test]
    fn ceil_mode_and_same_padding() {
        let n = node(
            "AveragePool",
            1,
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
                attr_int("ceil_mode", 1),
            ],
        );
        let r = infer(&AVERAGE_POOL, &n, &[f32_fact("1,3,7,8")], 12).unwrap();
        assert_eq!(r.unwrap()[0].shape, Some(shape("1,3,4,4")));
        let n = node(
            "AveragePool",
            1,
            vec![
                attr_ints("kernel_shape", &[3]),
                attr_ints("strides", &[2]),
                attr_str("auto_pad", "SAME_UPPER"),
            ],
        );
        let r = infer(&AVERAGE_POOL, &n, &[f32_fact("1,3,7")], 12).unwrap();
        assert_eq!(r.unwrap()[0].shape, Some(shape("1,3,4")));
    }

    #[test]
    fn errors() {
        let n = node("MaxPool", 1, vec![]);
        assert!(infer(&MAX_POOL, &n, &[f32_fact("1,3,8,8")], 12).is_err());
        let n = node("MaxPool", 1, vec![attr_ints("kernel_shape", &[3, 3])]);
        assert!(infer(&MAX_POOL, &n, &[f32_fact("1,3,8")], 12).is_err());
        assert!(infer(&MAX_POOL, &n, &[f32_fact("1,3,2,8")], 12).is_err());
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ir::graph::attr_ints;
    use crate::ops::channel::testing::*;

    fn pooled(outputs: usize) -> crate::ir::Model {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let attrs = vec![
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("strides", &[2, 2]),
        ];
        let p = n.op_n("MaxPool", &[Some(c)], outputs, attrs);
        let a = n.op(
            "AveragePool",
            &[p[0]],
            vec![attr_ints("kernel_shape", &[1, 1])],
        );
        let y = n.conv(a, 6, 2);
        n.output(y);
        n.model(13)
    }

    #[test]
    fn pooling_passes_channels() {
        let m = pooled(1);
        let cg = analyse(&m);
        assert_eq!(cg.groups.iter().filter(|g| g.prunable()).count(), 1);
        prunes_exactly(&m);
    }

    #[test]
    fn max_pool_indices_block() {
        let cg = analyse(&pooled(2));
        assert!(blocked_with(&cg, "MaxPool indices"));
        assert_eq!(cg.groups.iter().filter(|g| g.prunable()).count(), 0);
    }
}
