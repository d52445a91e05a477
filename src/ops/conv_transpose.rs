//! `ConvTranspose`: X `[N, C, D1..Dn]` with W `[C, M/group, k1..kn]` (+ B `[M]`) →
//! `[N, M, O1..On]`, M = `W[1]·group`.
//!
//! Spatial size: the `output_shape` attribute when given (its spatial part; a full-rank list
//! is accepted too), else `SAME_*` auto padding gives `D·stride`, else
//! `O = stride·(D−1) + output_padding + ((k−1)·dilation+1) − pad_begin − pad_end`
//! (`VALID`: no pads). MACs = N·C·ΠD·(M/group)·Πk: every input element scatters into
//! `(M/group)·Πk` outputs. A following per-channel affine map (an inference BatchNormalization)
//! folds into W along output channel `o = g·(M/group) + m` = `W[c, m]` for every input channel
//! `c` of group `g`, and into B. Not handled: constant folding; unknown kernel sizes give
//! unknown spatial dims.

use crate::error::Result;
use crate::ir::{Dim, Fact};

use super::simplify::{AffineFold, BiasRule, FoldCx};
use super::util::{self, Window};
use super::{numel_or_one, Cost, Cx, Op};

/// `ConvTranspose`.
pub struct ConvTranspose {
    name: &'static str,
}

impl ConvTranspose {
    /// Output spatial dims for input spatial dims `xs` (every check that needs the kernel).
    fn spatial(&self, cx: &Cx, xs: &[Dim], kernel: Option<Vec<usize>>) -> Result<Vec<Dim>> {
        let n = xs.len();
        if let Some(os) = cx.node.attr_ints("output_shape") {
            let os = match os.len() {
                l if l == n => os,
                l if l == n + 2 => &os[2..],
                l => {
                    return Err(cx.err(format!(
                        "output_shape has {l} values for {n} spatial dimensions"
                    )))
                }
            };
            return os
                .iter()
                .map(|&v| {
                    usize::try_from(v)
                        .map(Dim::Known)
                        .map_err(|_| cx.err(format!("output_shape value {v} is negative")))
                })
                .collect();
        }
        let Some(kernel) = kernel else {
            return Ok(vec![Dim::Unknown; n]);
        };
        if kernel.len() != n {
            return Err(cx.err(format!(
                "kernel has {} spatial dimensions, input has {n}",
                kernel.len()
            )));
        }
        let win = Window::read(cx, kernel)?;
        let out_pad: Vec<usize> = match cx.node.attr_ints("output_padding") {
            Some(v) if v.len() == n && v.iter().all(|&p| p >= 0) => {
                v.iter().map(|&p| p as usize).collect()
            }
            Some(v) => {
                return Err(cx.err(format!(
                    "output_padding {v:?} does not fit {n} spatial dimensions"
                )))
            }
            None => vec![0; n],
        };
        let mut out = Vec::with_capacity(n);
        for (i, d) in xs.iter().enumerate() {
            let Some(x) = d.known() else {
                out.push(Dim::Unknown);
                continue;
            };
            let s = win.strides[i];
            let o = match win.auto_pad.as_str() {
                "SAME_UPPER" | "SAME_LOWER" => x.checked_mul(s),
                mode => {
                    let (pb, pe) = if mode == "VALID" {
                        (0, 0)
                    } else {
                        (win.pads[i], win.pads[i + n])
                    };
                    let eff = win.dilations[i]
                        .checked_mul(win.kernel[i].max(1) - 1)
                        .and_then(|v| v.checked_add(1));
                    let full = eff.and_then(|eff| {
                        s.checked_mul(x.saturating_sub(1))?
                            .checked_add(out_pad[i])?
                            .checked_add(eff)
                    });
                    match full {
                        Some(f) if x > 0 => match f.checked_sub(pb.saturating_add(pe)) {
                            Some(o) => Some(o),
                            None => {
                                return Err(cx.err(format!(
                                    "pads {pb}+{pe} exceed the unpadded output size {f}"
                                )))
                            }
                        },
                        Some(_) => Some(0),
                        None => None,
                    }
                }
            };
            out.push(o.map_or(Dim::Unknown, Dim::Known));
        }
        Ok(out)
    }
}

/// Backward rule of `ConvTranspose` with explicit pads (no `auto_pad`, no `output_shape`): it is
/// the adjoint of a `Conv` with the same strides, pads, dilations and group reading Y to give
/// X, so dX = that `Conv` of dY with W (as a `[C, M/g, k..]` Conv weight), dW = that Conv's
/// weight gradient with dY as its input and X as its output gradient, dB = Σ dY over every
/// axis but the channel.
fn conv_transpose_vjp(
    cx: &mut super::vjp::VjpCx,
    grads: &[Option<crate::ir::ValueId>],
    needs: &[bool],
) -> Result<Vec<Option<crate::ir::ValueId>>> {
    use super::vjp::Build;
    use crate::ir::graph::{attr_int, attr_ints};
    let need = |p: usize| needs.get(p).copied().unwrap_or(false);
    let mut out = vec![None; needs.len()];
    let Some(dy) = grads.first().copied().flatten() else {
        return Ok(out);
    };
    let auto = cx.fwd().attr_s("auto_pad").unwrap_or_default();
    if !(auto.is_empty() || auto == "NOTSET") || cx.attr_ints("output_shape").is_some() {
        return Err(cx.err("only explicit pads can be differentiated (no auto_pad, output_shape)"));
    }
    let (x, w, y) = (cx.input(0)?, cx.input(1)?, cx.output(0)?);
    let (xs, ws, ys) = (cx.shape(x)?, cx.shape(w)?, cx.shape(y)?);
    let r = xs.len();
    let group = usize::try_from(cx.attr_i("group", 1))
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| cx.err("group must be positive"))?;
    if r < 3 || ws.len() != r || ys.len() != r || ws[0] != xs[1] || ys[1] != ws[1] * group {
        return Err(cx.err(format!(
            "shapes {xs:?} * {ws:?} -> {ys:?} do not fit a transposed convolution of group {group}"
        )));
    }
    // The adjoint Conv reads Y's spatial dims and gives X's.
    let geom =
        super::grad_util::Geometry::read(cx, ws[2..].to_vec(), ys[2..].to_vec(), xs[2..].to_vec())?;
    if need(0) {
        let to_i64 = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        let attrs = vec![
            attr_ints("kernel_shape", &to_i64(&geom.kernel)),
            attr_ints("strides", &to_i64(&geom.strides)),
            attr_ints("dilations", &to_i64(&geom.dilations)),
            attr_ints("pads", &geom.pads()),
            attr_int("group", group as i64),
        ];
        out[0] = Some(cx.op("Conv", &[dy, w], attrs));
    }
    if need(1) {
        out[1] = Some(super::conv::conv_weight_grad(
            cx, dy, x, &ys, &xs, &geom, group,
        )?);
    }
    if need(2) {
        let axes: Vec<i64> = (0..r as i64).filter(|&a| a != 1).collect();
        out[2] = Some(cx.reduce_sum(dy, &axes, false));
    }
    Ok(out)
}

impl Op for ConvTranspose {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((2, 3))
    }

    fn check(&self, cx: &super::CheckCx) -> Vec<String> {
        super::conv::check_conv(cx, true)
    }

    fn weight_input(&self, port: usize) -> bool {
        // Weight and bias.
        port == 1 || port == 2
    }

    fn fresh_init(
        &self,
        _node: &crate::ir::Node,
        weights: &[Option<&[usize]>],
    ) -> Vec<(usize, super::FreshInit)> {
        util::conv_fresh_init(weights)
    }

    fn layer_channels(&self, node: &crate::ir::Node, w: &[usize]) -> Option<(usize, usize)> {
        // W = [C, M/group, k..].
        let group = node.attr_i("group").unwrap_or(1).max(1) as usize;
        (w.len() >= 2).then(|| (w[1] * group, w[0]))
    }

    fn fold_output_affine(&self, cx: &FoldCx) -> Result<Option<AffineFold>> {
        // W = [C, M/group, k..]: output channel o = g·(M/group) + m is W[c, m] for every
        // input channel c of group g.
        let group = cx.node.attr_i("group").unwrap_or(1);
        let Some(w) = cx.float_const(1) else {
            return Ok(None);
        };
        let shape = w.shape();
        if shape.len() < 2 || group < 1 {
            return Ok(None);
        }
        let group = group as usize;
        let (cin, per) = (shape[0], shape[1]);
        if cin % group != 0 || per * group != cx.channels() {
            return Ok(None);
        }
        let inner: usize = shape[2..].iter().product();
        let cin_per_group = cin / group;
        cx.fold(1, 2, BiasRule::PerChannel, |i| {
            let c = i / (per * inner).max(1);
            let m = (i / inner.max(1)) % per.max(1);
            (c / cin_per_group.max(1)) * per + m
        })
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let (Some(x), Some(w)) = (util::required_input(cx, 0)?, util::required_input(cx, 1)?)
        else {
            return Ok(None);
        };
        let (Some(xs), Some(ws)) = (&x.shape, &w.shape) else {
            return Ok(None);
        };
        if ws.len() < 3 || xs.len() != ws.len() {
            return Err(cx.err(format!(
                "input rank {} and weight rank {} do not fit a transposed convolution",
                xs.len(),
                ws.len()
            )));
        }
        let group = cx.node.attr_i("group").unwrap_or(1);
        if group < 1 {
            return Err(cx.err(format!("group {group} is not positive")));
        }
        let group = group as usize;
        if let (Some(c), Some(wc)) = (xs[1].known(), ws[0].known()) {
            if c != wc {
                return Err(cx.err(format!(
                    "input has {c} channels, weight expects {wc} (W is [C, M/group, k...])"
                )));
            }
        }
        if let Some(c) = xs[1].known().or(ws[0].known()) {
            if c % group != 0 {
                return Err(cx.err(format!(
                    "{c} input channels are not divisible by group {group}"
                )));
            }
        }
        let kernel: Option<Vec<usize>> = match cx.node.attr_ints("kernel_shape") {
            Some(k) if k.iter().all(|&v| v >= 0) => Some(k.iter().map(|&v| v as usize).collect()),
            Some(k) => return Err(cx.err(format!("kernel_shape {k:?} has negative values"))),
            None => util::concrete(&ws[2..]),
        };
        let m = match (&ws[1], group) {
            (d, 1) => d.clone(),
            (Dim::Known(k), g) => k.checked_mul(g).map_or(Dim::Unknown, Dim::Known),
            _ => Dim::Unknown,
        };
        let mut out = vec![xs[0].clone(), m];
        out.extend(self.spatial(cx, &xs[2..], kernel)?);
        Ok(Some(vec![Fact::new(x.dtype, out)]))
    }

    fn cost(&self, cx: &Cx, _outputs: &[Option<&Fact>]) -> Cost {
        let shape = |p: usize| {
            cx.inputs
                .get(p)
                .copied()
                .flatten()
                .and_then(|f| f.shape.as_ref())
        };
        let (Some(xs), Some(ws)) = (shape(0), shape(1)) else {
            return Cost::default();
        };
        if ws.is_empty() {
            return Cost::default();
        }
        // Each of the N·C·ΠD input elements meets (M/group)·Πk weights = Π W[1..].
        let macs = numel_or_one(xs).saturating_mul(numel_or_one(&ws[1..]));
        Cost {
            macs,
            flops: macs.saturating_mul(2),
        }
    }

    fn layer(&self, node: &crate::ir::Node) -> Option<super::training::Layer> {
        // W = [C, M/group, k..]: one group's filters along axis 1.
        let grouped = node.attr_i("group").unwrap_or(1) != 1;
        Some(super::training::Layer {
            weight: 1,
            bias: Some(2),
            filter_axis: (!grouped).then_some(1),
        })
    }

    fn vjp(
        &self,
        cx: &mut super::vjp::VjpCx,
        grads: &[Option<crate::ir::ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<crate::ir::ValueId>>> {
        conv_transpose_vjp(cx, grads, needs)
    }
}

/// `ConvTranspose`.
pub static CONV_TRANSPOSE: ConvTranspose = ConvTranspose {
    name: "ConvTranspose",
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::{attr_int, attr_ints};
    use crate::ops::util::test_extra::{attr_str, cost};
    use crate::ops::util::testing::{f32_fact, infer, node, shape};

    #[test]
    fn stride_two_upsamples_with_symbolic_batch() {
        let n = node(
            "ConvTranspose",
            1,
            vec![
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[1, 1, 1, 1]),
                attr_ints("output_padding", &[1, 1]),
            ],
        );
        let ins = vec![f32_fact("N,8,16,16"), f32_fact("8,4,3,3")];
        let r = infer(&CONV_TRANSPOSE, &n, &ins, 17).unwrap().unwrap();
        // 2·15 + 1 + 3 − 2 = 32
        assert_eq!(r[0].shape, Some(shape("N,4,32,32")));
    }

    #[test]
    fn group_multiplies_output_channels_and_output_shape_wins() {
        let n = node(
            "ConvTranspose",
            1,
            vec![attr_int("group", 2), attr_ints("output_shape", &[9, 10])],
        );
        let ins = vec![f32_fact("1,8,4,5"), f32_fact("8,3,2,2")];
        let r = infer(&CONV_TRANSPOSE, &n, &ins, 17).unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("1,6,9,10")));
        let n = node(
            "ConvTranspose",
            1,
            vec![
                attr_str("auto_pad", "SAME_UPPER"),
                attr_ints("strides", &[2, 3]),
            ],
        );
        let r = infer(&CONV_TRANSPOSE, &n, &ins, 17).unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("1,3,8,15")));
    }

    #[test]
    fn channel_mismatch_is_an_error() {
        let n = node("ConvTranspose", 1, vec![]);
        let ins = vec![f32_fact("1,8,4,4"), f32_fact("6,4,3,3")];
        assert!(infer(&CONV_TRANSPOSE, &n, &ins, 17).is_err());
    }

    #[test]
    fn macs_count_input_scatter() {
        let n = node("ConvTranspose", 1, vec![]);
        let ins = vec![f32_fact("2,8,4,4"), f32_fact("8,4,3,3")];
        let c = cost(&CONV_TRANSPOSE, &n, &ins, &[f32_fact("2,4,6,6")]);
        assert_eq!(c.macs, 2 * 8 * 16 * 4 * 9);
        assert_eq!(c.flops, 2 * c.macs);
    }

    #[test]
    fn folding_a_following_batch_norm_is_exact() {
        use crate::ops::channel::testing::Net;
        use crate::ops::simplify::testing::{bn, folds_exactly};
        // Grouped with bias and stride 2, then ungrouped without bias.
        let mut n = Net::new();
        let x = n.input(&[1, 4, 3, 3]);
        let (w, b) = (n.floats(&[4, 3, 2, 2]), n.floats(&[6]));
        let attrs = vec![attr_int("group", 2), attr_ints("strides", &[2, 2])];
        let y = n.op("ConvTranspose", &[x, w, b], attrs);
        let y = bn(&mut n, y, 6);
        let w = n.floats(&[6, 5, 3, 3]);
        let y = n.op("ConvTranspose", &[y, w], vec![]);
        let y = bn(&mut n, y, 5);
        n.output(y);
        folds_exactly(&n.model(13));
    }
}
