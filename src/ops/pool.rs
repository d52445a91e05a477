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
use crate::ir::graph::{attr_int, attr_ints};
use crate::ir::{DType, Fact, Tensor, ValueId};

use super::channel::{pass_axes, ConstCx, Link, LinkCx};
use super::grad_util::Geometry;
use super::util::{self, Window};
use super::vjp::{Build, VjpCx};
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

    /// Maxima or averages of input 0's elements (padding counts as zero): never negative
    /// when they are not.
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

    fn vjp(
        &self,
        cx: &mut VjpCx,
        grads: &[Option<ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<ValueId>>> {
        let Some(dy) = grads.first().copied().flatten() else {
            return Ok(vec![None; needs.len()]);
        };
        if !needs.first().copied().unwrap_or(false) {
            return Ok(vec![None; needs.len()]);
        }
        let geom = pool_geometry(cx)?;
        let dx = if self.name == "MaxPool" {
            max_pool_vjp(cx, dy, &geom)?
        } else {
            average_pool_vjp(cx, dy, &geom)?
        };
        Ok(vec![Some(dx)])
    }

    fn cost(&self, cx: &Cx, outputs: &[Option<&Fact>]) -> Cost {
        let window: u64 = cx.node.attr_ints("kernel_shape").map_or(1, |k| {
            k.iter()
                .map(|&v| v.max(1) as u64)
                .fold(1u64, u64::saturating_mul)
        });
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

/// Geometry of the forward pooling node from static shapes (X `[N, C, D..]`, Y `[N, C, O..]`).
fn pool_geometry(cx: &VjpCx) -> Result<Geometry> {
    let (x, y) = (cx.input(0)?, cx.output(0)?);
    let (xs, ys) = (cx.shape(x)?, cx.shape(y)?);
    let k: Vec<usize> = cx
        .attr_ints("kernel_shape")
        .ok_or_else(|| cx.err("the kernel_shape attribute is missing"))?
        .iter()
        .map(|&v| usize::try_from(v).map_err(|_| cx.err("negative kernel size")))
        .collect::<Result<_>>()?;
    if xs.len() != k.len() + 2 || ys.len() != xs.len() || xs[..2] != ys[..2] {
        return Err(cx.err(format!(
            "input {xs:?} and output {ys:?} do not fit a {}-D window",
            k.len()
        )));
    }
    Geometry::read(cx, k, xs[2..].to_vec(), ys[2..].to_vec())
}

/// `[N, C, 1, S..]`: a size-1 axis inserted after the channels (for per-tap broadcasting).
fn with_tap_axis(shape: &[usize], taps: usize) -> Vec<usize> {
    let mut s = shape[..2].to_vec();
    s.push(taps);
    s.extend_from_slice(&shape[2..]);
    s
}

/// MaxPool: each output's gradient goes to the input element it took (the argmax, as the
/// forward's own `Indices` output reports it: a second `MaxPool` with two outputs). The flat
/// index becomes the tap of the window (integer arithmetic on constants of the geometry); a
/// one-hot mask over the taps, `[N, C·K, O..]`, is scattered back by a depthwise
/// `ConvTranspose` whose kernel for tap j is the unit tap j, so overlapping windows add.
fn max_pool_vjp(cx: &mut VjpCx, dy: ValueId, geom: &Geometry) -> Result<ValueId> {
    let x = cx.input(0)?;
    let (xs, ys) = (cx.shape(x)?, cx.shape(cx.output(0)?)?);
    let dtype = cx.dtype(x);
    let n = geom.rank();
    let to_i64 = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<_>>();
    let mut attrs = vec![
        attr_ints("kernel_shape", &to_i64(&geom.kernel)),
        attr_ints("strides", &to_i64(&geom.strides)),
        attr_ints("pads", &geom.pads()),
        attr_int("ceil_mode", cx.attr_i("ceil_mode", 0)),
    ];
    if geom.dilations.iter().any(|&d| d != 1) {
        attrs.push(attr_ints("dilations", &to_i64(&geom.dilations)));
    }
    let idx = cx.op_n("MaxPool", &[Some(x)], 2, attrs)[1];
    // The spatial part of the flat index (runtimes may or may not include N and C).
    let plane: usize = geom.input.iter().product();
    let plane = cx.ints(&[plane as i64]);
    let spatial = cx.op("Mod", &[idx, plane], vec![]);
    let taps = geom.taps();
    let mut tap: Option<ValueId> = None;
    let mut in_stride: usize = geom.input.iter().product();
    let mut k_stride = taps;
    for i in 0..n {
        in_stride /= geom.input[i];
        k_stride /= geom.kernel[i];
        // Position along axis i, then its offset from the window start, in taps.
        let s = cx.ints(&[in_stride as i64]);
        let pos = cx.op("Div", &[spatial, s], vec![]);
        let d = cx.ints(&[geom.input[i] as i64]);
        let pos = cx.op("Mod", &[pos, d], vec![]);
        let starts: Vec<i64> = (0..geom.output[i])
            .map(|o| (o * geom.strides[i]) as i64 - geom.begin[i] as i64)
            .collect();
        let mut bshape = vec![1usize; n + 2];
        bshape[2 + i] = geom.output[i];
        let starts = cx.constant(Tensor::from_i64(bshape, &starts));
        let mut off = cx.op("Sub", &[pos, starts], vec![]);
        if geom.dilations[i] != 1 {
            let dl = cx.ints(&[geom.dilations[i] as i64]);
            off = cx.op("Div", &[off, dl], vec![]);
        }
        if k_stride != 1 {
            let ks = cx.ints(&[k_stride as i64]);
            off = cx.op("Mul", &[off, ks], vec![]);
        }
        tap = Some(match tap {
            None => off,
            Some(t) => cx.op("Add", &[t, off], vec![]),
        });
    }
    let tap = tap.ok_or_else(|| cx.err("no spatial axes"))?;
    let tap = cx.reshape(tap, &with_tap_axis(&ys, 1));
    let mut kshape = vec![1usize; n + 3];
    kshape[2] = taps;
    let ids: Vec<i64> = (0..taps as i64).collect();
    let ids = cx.constant(Tensor::from_i64(kshape, &ids));
    let hit = cx.op("Equal", &[tap, ids], vec![]);
    let hit = cx.op(
        "Cast",
        &[hit],
        vec![attr_int("to", i64::from(dtype.to_onnx()))],
    );
    let g = cx.reshape(dy, &with_tap_axis(&ys, 1));
    let routed = cx.op("Mul", &[hit, g], vec![]);
    let c = xs[1];
    let mut flat = vec![ys[0], c * taps];
    flat.extend_from_slice(&ys[2..]);
    let routed = cx.reshape(routed, &flat);
    // Kernel [C·K, 1, k..]: filter c·K + j is the unit tap j.
    let mut w = vec![0f64; c * taps * taps];
    for ch in 0..c {
        for j in 0..taps {
            w[(ch * taps + j) * taps + j] = 1.0;
        }
    }
    let mut ws = vec![c * taps, 1];
    ws.extend_from_slice(&geom.kernel);
    let w = cx.fconst(dtype, ws, &w)?;
    Ok(geom.scatter(cx, routed, w, c))
}

/// AveragePool: dY divided by each window's divisor (the taps inside the input, or inside the
/// padded input with `count_include_pad`), scattered back with a depthwise `ConvTranspose` of
/// ones.
fn average_pool_vjp(cx: &mut VjpCx, dy: ValueId, geom: &Geometry) -> Result<ValueId> {
    let x = cx.input(0)?;
    let xs = cx.shape(x)?;
    let dtype = cx.dtype(x);
    let include = cx.attr_i("count_include_pad", 0) != 0;
    let n = geom.rank();
    // Per axis: for each output position, how many taps fall in the counted range.
    let counts: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let (lo, hi) = if include {
                (
                    -(geom.begin[i] as i64),
                    (geom.input[i] + geom.end[i]) as i64,
                )
            } else {
                (0, geom.input[i] as i64)
            };
            (0..geom.output[i])
                .map(|o| {
                    let start = (o * geom.strides[i]) as i64 - geom.begin[i] as i64;
                    (0..geom.kernel[i])
                        .map(|t| start + (t * geom.dilations[i]) as i64)
                        .filter(|&p| p >= lo && p < hi)
                        .count() as f64
                })
                .collect()
        })
        .collect();
    let total: usize = geom.output.iter().product();
    let mut inv = vec![0f64; total];
    for (flat, v) in inv.iter_mut().enumerate() {
        let mut rest = flat;
        let mut count = 1.0;
        for i in (0..n).rev() {
            count *= counts[i][rest % geom.output[i]];
            rest /= geom.output[i];
        }
        *v = if count > 0.0 { 1.0 / count } else { 0.0 };
    }
    let mut ishape = vec![1, 1];
    ishape.extend_from_slice(&geom.output);
    let inv = cx.fconst(dtype, ishape, &inv)?;
    let scaled = cx.op("Mul", &[dy, inv], vec![]);
    let c = xs[1];
    let mut ws = vec![c, 1];
    ws.extend_from_slice(&geom.kernel);
    let ones = vec![1.0; c * geom.taps()];
    let w = cx.fconst(dtype, ws, &ones)?;
    Ok(geom.scatter(cx, scaled, w, c))
}

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
