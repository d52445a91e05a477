//! `Resize` and `Upsample`: interpolate X to a new size per axis (same rank and type).
//!
//! Resize inputs: opset 10 `(X, scales)`; opset 11+ `(X, roi, scales, sizes)`, with opset 18's
//! `axes` attribute restricting scales/sizes/roi to some axes. A constant non-empty `sizes`
//! wins (with `keep_aspect_ratio_policy` `not_larger`/`not_smaller`: one common scale,
//! `round_half_up(scale·in)`); else a constant `scales` gives `floor(in·scale)` (times the roi
//! extent for `tf_crop_and_resize`). Upsample takes `scales` as an attribute (opset 7–8),
//! `height_scale`/`width_scale` attributes (opset 1) or an input (opset 9). A scale of exactly 1
//! keeps the dim (symbolic ones too); unknown scales/sizes leave the resized dims unknown.
//! The product `in·scale` is computed in f32, like ONNX Runtime.
//!
//! Cost: one FLOP per output element. Not handled: folding; scales for non-known, non-1 cases.
//!
//! Channels: an axis that keeps its size (scale exactly 1, or a size equal to the input's)
//! passes; a resized one blocks, as does `tf_crop_and_resize` or an aspect-ratio policy over a
//! channel axis. A constant `sizes` entry of a channel axis follows the new width.

use crate::error::Result;
use crate::ir::{Dim, Fact};

use super::channel::{
    block, int_vector, pass, resolve_axis, ConstCx, Link, LinkCx, Rewrite, RewriteCx,
};
use super::{util, Cost, Cx, Op};

/// `Resize` or `Upsample`.
pub struct Resize {
    name: &'static str,
}

/// What the node says about the target of the axes it resizes.
enum Target {
    Scales(Vec<f64>),
    Sizes(Vec<i64>),
    Unknown,
}

/// The float contents of input `port`: `Some(None)` when it is omitted or empty (absent),
/// `None` when it is wired but not a known constant.
fn floats_input(cx: &Cx, port: usize) -> Option<Option<Vec<f64>>> {
    if !util::wired(cx, port) {
        return Some(None);
    }
    let v = cx.value(port)?.to_f64_vec()?;
    Some((!v.is_empty()).then_some(v))
}

impl Resize {
    /// The resize target along the resized axes.
    fn target(&self, cx: &Cx) -> Result<Target> {
        if self.name == "Upsample" {
            if let Some(a) = cx.node.attr("scales") {
                return Ok(Target::Scales(
                    a.floats.iter().map(|&v| f64::from(v)).collect(),
                ));
            }
            if util::wired(cx, 1) {
                return Ok(match floats_input(cx, 1) {
                    Some(Some(s)) => Target::Scales(s),
                    _ => Target::Unknown,
                });
            }
            if let (Some(h), Some(w)) = (
                cx.node.attr_f("height_scale"),
                cx.node.attr_f("width_scale"),
            ) {
                return Ok(Target::Scales(vec![1.0, 1.0, f64::from(h), f64::from(w)]));
            }
            return Err(cx.err("no scales (neither attribute nor input)"));
        }
        if cx.opset <= 10 {
            return Ok(match floats_input(cx, 1) {
                Some(Some(s)) => Target::Scales(s),
                Some(None) => return Err(cx.err("the scales input is missing")),
                None => Target::Unknown,
            });
        }
        if util::wired(cx, 3) {
            match cx.ints(3) {
                Some(s) if !s.is_empty() => return Ok(Target::Sizes(s)),
                Some(_) => {}
                None => {
                    // Non-constant sizes: a known non-empty scales still decides.
                    return Ok(match floats_input(cx, 2) {
                        Some(Some(s)) => Target::Scales(s),
                        _ => Target::Unknown,
                    });
                }
            }
        }
        Ok(match floats_input(cx, 2) {
            Some(Some(s)) => Target::Scales(s),
            Some(None) => return Err(cx.err("neither scales nor sizes is given")),
            None => Target::Unknown,
        })
    }
}

impl Op for Resize {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, opset: i64) -> Option<(usize, usize)> {
        match self.name {
            // scales became an input at opset 9.
            "Upsample" if opset < 9 => Some((1, 1)),
            "Upsample" => Some((2, 2)),
            // Resize-10: X and scales; 11 added roi (required) and sizes; 13 made roi and
            // scales optional.
            _ => Some(match opset {
                ..=10 => (2, 2),
                11 | 12 => (3, 4),
                _ => (1, 4),
            }),
        }
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let Some(x) = util::required_input(cx, 0)? else {
            return Ok(None);
        };
        let fact = |shape| {
            Ok(Some(vec![Fact {
                dtype: x.dtype,
                shape,
                ..Default::default()
            }]))
        };
        let Some(xs) = &x.shape else {
            return fact(None);
        };
        let rank = xs.len();
        let axes: Vec<usize> = match cx.node.attr_ints("axes") {
            Some(a) if self.name == "Resize" => {
                a.iter().map(|&a| cx.axis(a, rank)).collect::<Result<_>>()?
            }
            _ => (0..rank).collect(),
        };
        let target = self.target(cx)?;
        let len = match &target {
            Target::Scales(s) => s.len(),
            Target::Sizes(s) => s.len(),
            Target::Unknown => axes.len(),
        };
        if len != axes.len() {
            return Err(cx.err(format!(
                "{len} scales/sizes for {} resized axes",
                axes.len()
            )));
        }
        let mut out = xs.clone();
        match target {
            Target::Unknown => {
                for &a in &axes {
                    out[a] = Dim::Unknown;
                }
            }
            Target::Sizes(sizes) => {
                if let Some(&s) = sizes.iter().find(|&&s| s < 0) {
                    return Err(cx.err(format!("sizes holds a negative value {s}")));
                }
                let policy = cx
                    .node
                    .attr_s("keep_aspect_ratio_policy")
                    .unwrap_or_else(|| "stretch".into());
                if policy == "stretch" {
                    for (&a, &s) in axes.iter().zip(&sizes) {
                        out[a] = Dim::Known(s as usize);
                    }
                } else {
                    let ratios: Option<Vec<f64>> = axes
                        .iter()
                        .zip(&sizes)
                        .map(|(&a, &s)| {
                            let d = xs[a].known().filter(|&d| d > 0)?;
                            Some(s as f64 / d as f64)
                        })
                        .collect();
                    let common = ratios.and_then(|r| match policy.as_str() {
                        "not_larger" => r.into_iter().reduce(f64::min),
                        "not_smaller" => r.into_iter().reduce(f64::max),
                        _ => None,
                    });
                    if !matches!(policy.as_str(), "not_larger" | "not_smaller") {
                        return Err(cx.err(format!("unknown keep_aspect_ratio_policy {policy}")));
                    }
                    for &a in &axes {
                        out[a] = match (common, xs[a].known()) {
                            (Some(c), Some(d)) => {
                                Dim::Known(((c as f32) * (d as f32) + 0.5).floor() as usize)
                            }
                            _ => Dim::Unknown,
                        };
                    }
                }
            }
            Target::Scales(scales) => {
                if let Some(&s) = scales.iter().find(|&&s| s.is_nan() || s <= 0.0) {
                    return Err(cx.err(format!("scale {s} is not positive")));
                }
                let crop = self.name == "Resize"
                    && cx.node.attr_s("coordinate_transformation_mode").as_deref()
                        == Some("tf_crop_and_resize");
                let roi = if crop {
                    floats_input(cx, 1)
                        .flatten()
                        .filter(|r| r.len() == 2 * axes.len())
                } else {
                    None
                };
                let n = axes.len();
                for (j, (&a, &s)) in axes.iter().zip(&scales).enumerate() {
                    let extent = match (&roi, crop) {
                        (_, false) => Some(1.0f32),
                        (Some(r), true) => Some((r[j + n] - r[j]) as f32),
                        (None, true) => None,
                    };
                    out[a] = match (extent, xs[a].known()) {
                        (Some(e), _) if s == 1.0 && e == 1.0 => xs[a].clone(),
                        (Some(e), Some(d)) => {
                            let o = ((d as f32) * e * (s as f32)).floor();
                            if o.is_finite() && o >= 0.0 {
                                Dim::Known(o as usize)
                            } else {
                                Dim::Unknown
                            }
                        }
                        _ => Dim::Unknown,
                    };
                }
            }
        }
        fact(Some(out))
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        cx.inputs.first().copied().flatten()
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        let crop = cx.node.attr_s("coordinate_transformation_mode").as_deref()
            == Some("tf_crop_and_resize");
        let policy = cx
            .node
            .attr_s("keep_aspect_ratio_policy")
            .unwrap_or_else(|| "stretch".into());
        let by_sizes = self.name == "Resize"
            && cx.opset > 10
            && cx.node.input(3).is_some()
            && cx.in_shape(3).is_some_and(|s| s != [Dim::Known(0)]);
        let (ins, outs) = (cx.in_shape(0), cx.out_shape(0));
        cx.tracked
            .iter()
            .map(|&(p, a, len)| {
                let same = |s: Option<&[Dim]>| s.and_then(|s| s.get(a)) == Some(&Dim::Known(len));
                if p != 0 || !same(ins) || !same(outs) {
                    block(p, a, "resizing over the channel axis")
                } else if crop || (by_sizes && policy != "stretch") {
                    block(p, a, "crop or aspect-ratio resize over the channel axis")
                } else {
                    pass(0, a, 0, a)
                }
            })
            .collect()
    }

    fn rewrite_channels(&self, cx: &RewriteCx) -> Result<Rewrite> {
        let mut rw = Rewrite::default();
        if self.name != "Resize" || cx.opset <= 10 || cx.node.input(3).is_none() {
            return Ok(rw);
        }
        let (Some(t), Some(rank)) = (
            cx.value(3),
            cx.inputs.first().copied().flatten().and_then(Fact::rank),
        ) else {
            return Ok(rw);
        };
        let Some(mut sizes) = t.to_i64_vec().filter(|s| !s.is_empty()) else {
            return Ok(rw);
        };
        let axes: Vec<Option<usize>> = match cx.node.attr_ints("axes") {
            Some(a) => a.iter().map(|&a| resolve_axis(a, rank)).collect(),
            None => (0..rank).map(Some).collect(),
        };
        let mut changed = false;
        for (s, ax) in sizes.iter_mut().zip(axes) {
            let Some(ax) = ax else { continue };
            if cx.mask(super::channel::Slot::output(0, ax)).is_some() {
                if let Some(n) = cx.new_out_len(0, ax) {
                    *s = n as i64;
                    changed = true;
                }
            }
        }
        if changed {
            rw.inputs.push((3, int_vector(t.dtype(), &sizes)?));
        }
        Ok(rw)
    }

    fn cost(&self, _cx: &Cx, outputs: &[Option<&Fact>]) -> Cost {
        Cost {
            macs: 0,
            flops: util::output_numel(outputs, 0),
        }
    }
}

/// `Resize`.
pub static RESIZE: Resize = Resize { name: "Resize" };

/// `Upsample`.
pub static UPSAMPLE: Resize = Resize { name: "Upsample" };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_ints;
    use crate::ir::Tensor;
    use crate::ops::util::test_extra::{attr_floats, attr_str, cost, wire};
    use crate::ops::util::testing::{f32_fact, i64_const, infer, node, shape};

    fn scales(v: &[f32]) -> Option<Fact> {
        Some(Fact::constant(Tensor::from_f32(vec![v.len()], v)))
    }

    #[test]
    fn scales_keep_symbolic_batch() {
        let n = wire(node("Resize", 1, vec![]), 3);
        let ins = [f32_fact("N,64,20,21"), None, scales(&[1.0, 1.0, 2.0, 1.5])];
        let r = infer(&RESIZE, &n, &ins, 13).unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("N,64,40,31")));
        let c = cost(&RESIZE, &n, &ins, &[f32_fact("1,2,3,4")]);
        assert_eq!(c.flops, 24);
        // Opset 10: (X, scales).
        let n = wire(node("Resize", 1, vec![]), 2);
        let ins = [f32_fact("N,8,5,5"), scales(&[1.0, 1.0, 2.0, 2.0])];
        let r = infer(&RESIZE, &n, &ins, 10).unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("N,8,10,10")));
    }

    #[test]
    fn sizes_win_and_unknown_targets() {
        let n = wire(node("Resize", 1, vec![]), 4);
        let ins = [
            f32_fact("N,3,8,8"),
            None,
            scales(&[]),
            i64_const(&[1, 3, 17, 9]),
        ];
        let r = infer(&RESIZE, &n, &ins, 13).unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("1,3,17,9")));
        let ins = [f32_fact("N,3,8,8"), None, None, f32_fact("4")];
        let r = infer(&RESIZE, &n, &ins, 13).unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("?,?,?,?")));
        // opset 18 axes + aspect ratio policy.
        let n = wire(
            node(
                "Resize",
                1,
                vec![
                    attr_ints("axes", &[2, 3]),
                    attr_str("keep_aspect_ratio_policy", "not_larger"),
                ],
            ),
            4,
        );
        let ins = [f32_fact("N,3,100,50"), None, None, i64_const(&[40, 40])];
        let r = infer(&RESIZE, &n, &ins, 18).unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("N,3,40,20")));
    }

    #[test]
    fn upsample_attribute_and_input() {
        let n = node(
            "Upsample",
            1,
            vec![attr_floats("scales", &[1.0, 1.0, 2.0, 2.0])],
        );
        let r = infer(&UPSAMPLE, &n, &[f32_fact("N,16,7,7")], 8)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].shape, Some(shape("N,16,14,14")));
        let n = wire(node("Upsample", 1, vec![]), 2);
        let ins = [f32_fact("N,16,7,7"), scales(&[1.0, 1.0, 3.0, 3.0])];
        let r = infer(&UPSAMPLE, &n, &ins, 9).unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("N,16,21,21")));
    }

    #[test]
    fn wrong_scale_count_is_an_error() {
        let n = wire(node("Resize", 1, vec![]), 3);
        let ins = [f32_fact("N,64,20,20"), None, scales(&[2.0, 2.0])];
        assert!(infer(&RESIZE, &n, &ins, 13).is_err());
        let ins = [f32_fact("N,64,20,20"), None, scales(&[1.0, 1.0, 0.0, 2.0])];
        assert!(infer(&RESIZE, &n, &ins, 13).is_err());
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ir::{Tensor, ValueId};
    use crate::ops::channel::testing::*;

    /// conv(6) → Resize(scales or sizes) → conv.
    fn resized(scales: &[f32], sizes: Option<&[i64]>) -> (crate::ir::Model, ValueId) {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let sc =
            n.g.add_initializer("scales", Tensor::from_f32(vec![scales.len()], scales));
        let sz = sizes.map(|s| n.ints(s));
        let r = n.op_n("Resize", &[Some(c), None, Some(sc), sz], 1, vec![])[0];
        let y = n.conv(r, 6, 2);
        n.output(y);
        (n.model(13), c)
    }

    #[test]
    fn spatial_resize_passes_channels() {
        let (m, c) = resized(&[1.0, 1.0, 2.0, 2.0], None);
        let cg = analyse(&m);
        assert!(group(&cg, &m, c).prunable());
        prunes_exactly(&m);
    }

    #[test]
    fn sizes_follow_the_new_width() {
        let (m, c) = resized(&[], Some(&[1, 6, 8, 8]));
        let cg = analyse(&m);
        assert!(group(&cg, &m, c).prunable());
        prunes_exactly(&m);
    }

    #[test]
    fn resizing_the_channels_blocks() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let scales = [1.0, 2.0, 1.0, 1.0];
        let sc =
            n.g.add_initializer("scales", Tensor::from_f32(vec![4], &scales));
        let r = n.op_n("Resize", &[Some(c), None, Some(sc)], 1, vec![])[0];
        n.output(r);
        let m = n.model(13);
        let cg = analyse(&m);
        assert!(!group(&cg, &m, c).prunable());
        assert!(blocked_with(&cg, "resizing over the channel axis"));
    }
}
