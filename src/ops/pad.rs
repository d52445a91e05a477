//! `Pad`: grows (or, with negative pads, crops) each axis by `begin + end`.
//!
//! Pads come from the `pads` attribute (opset 2–10; `paddings` in opset 1) or the second input
//! (opset 11+), laid out `[b1, b2, .., e1, e2, ..]`; opset 18's optional `axes` input (port 3)
//! restricts them to some axes. Output dims are `in + begin + end` when the pads are constant
//! (an unpadded symbolic dim stays symbolic); otherwise the rank is kept and the padded dims are
//! unknown. The mode does not change shapes.
//!
//! Folding: `constant` mode only, on a constant numeric input (value from the `value` attribute
//! or the `constant_value` input, default 0), up to 16 Mi output elements. Not folded:
//! `reflect`, `edge` and `wrap` modes. Cost: none (data movement).
//!
//! Channels: an unpadded axis passes. A channel axis padded by constant pads `b` and `e` in
//! `constant` mode passes with `b` and `e` fresh constant channels around it (removable, as
//! ResNet's option-A shortcut needs); afterwards the pads count the kept fresh channels.
//! Negative pads, other modes or non-constant pads on a channel axis block.
//!
//! Backward (`constant` mode only): the gradient sliced back to the input window (and
//! zero-padded where negative pads cropped).

use crate::error::{Error, Result};
use crate::ir::graph::attr_ints;
use crate::ir::{DType, Dim, Fact, Node, Tensor};

use super::channel::{
    block, int_vector, pass, ConstCx, Link, LinkCx, Map, Rewrite, RewriteCx, Slot,
};
use super::grad_util::{const_ints, out_grad};
use super::vjp::{Build, VjpCx};
use super::{util, Cx, Op};
use crate::ir::ValueId;

/// Largest folded result, in elements.
const MAX_FOLD_ELEMS: usize = 1 << 24;

/// `Pad`.
pub struct Pad {
    name: &'static str,
}

/// One padded dim; `Err` text when the result would be negative.
fn padded(d: &Dim, b: i64, e: i64) -> std::result::Result<Dim, String> {
    if b == 0 && e == 0 {
        return Ok(d.clone());
    }
    let Some(v) = d.known() else {
        return Ok(Dim::Unknown);
    };
    let o = (v as i128) + b as i128 + e as i128;
    if o < 0 {
        return Err(format!(
            "padding {v} by {b} and {e} gives a negative size {o}"
        ));
    }
    Ok(usize::try_from(o).map_or(Dim::Unknown, Dim::Known))
}

/// Per-axis `(begin, end)` for `rank` axes from flat `pads` over `axes`; `Err` text on a size
/// mismatch or an axis out of range.
fn per_axis(
    pads: &[i64],
    axes: &[i64],
    rank: usize,
) -> std::result::Result<Vec<(i64, i64)>, String> {
    let n = axes.len();
    if pads.len() != 2 * n {
        return Err(format!(
            "{} pad values for {n} axes (expected {})",
            pads.len(),
            2 * n
        ));
    }
    let mut out = vec![(0, 0); rank];
    for (j, &a) in axes.iter().enumerate() {
        let r = rank as i64;
        if a < -r || a >= r {
            return Err(format!("axis {a} is out of range for rank {rank}"));
        }
        let ax = if a < 0 { a + r } else { a } as usize;
        out[ax] = (pads[j], pads[j + n]);
    }
    Ok(out)
}

/// Copies `vals` (row-major over `ins`) into a `outs`-shaped buffer filled with `fill`, shifted
/// by `begin` per axis (negative begins crop).
fn pad_values<T: Copy>(
    vals: &[T],
    ins: &[usize],
    outs: &[usize],
    begin: &[i64],
    fill: T,
) -> Vec<T> {
    let n: usize = outs.iter().product();
    let istrides = {
        let mut s = vec![1usize; ins.len()];
        for i in (0..ins.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * ins[i + 1];
        }
        s
    };
    let mut out = Vec::with_capacity(n);
    let mut coord = vec![0usize; outs.len()];
    for _ in 0..n {
        let mut at = Some(0usize);
        for ax in 0..outs.len() {
            let ic = coord[ax] as i64 - begin[ax];
            if ic < 0 || ic >= ins[ax] as i64 {
                at = None;
                break;
            }
            at = at.map(|a| a + ic as usize * istrides[ax]);
        }
        out.push(at.and_then(|a| vals.get(a).copied()).unwrap_or(fill));
        for ax in (0..outs.len()).rev() {
            coord[ax] += 1;
            if coord[ax] < outs[ax] {
                break;
            }
            coord[ax] = 0;
        }
    }
    out
}

/// The flat pads, where they come from, and the axes they apply to, when all are constant.
struct Pads {
    /// `[b1.., e1..]` over `axes`.
    pads: Vec<i64>,
    /// The attribute holding them (`None`: input 1).
    attr: Option<&'static str>,
    /// Padded axes (raw, possibly negative).
    axes: Vec<i64>,
}

impl Pads {
    /// Reads the pads of `node` given constant inputs `ints(port)`.
    fn read(node: &Node, rank: usize, ints: impl Fn(usize) -> Option<Vec<i64>>) -> Option<Pads> {
        let (pads, attr) = if node.input(1).is_some() {
            (ints(1)?, None)
        } else if let Some(p) = node.attr_ints("pads") {
            (p.to_vec(), Some("pads"))
        } else {
            (node.attr_ints("paddings")?.to_vec(), Some("paddings"))
        };
        let axes = if node.input(3).is_some() {
            ints(3)?
        } else {
            (0..rank as i64).collect()
        };
        Some(Pads { pads, attr, axes })
    }
}

impl Op for Pad {
    /// Opset 11 made `pads` and the constant `value` inputs (opset 1 called them `paddings`).
    fn upgrade(&self, node: &Node, from: i64, to: i64) -> Result<super::Upgrade> {
        let mut u = super::Upgrade::default();
        if from < 11 && to >= 11 {
            u = u
                .ints_to_input(node, "pads", 1)
                .ints_to_input(node, "paddings", 1)
                .float_to_input(node, "value", 2);
        }
        Ok(u)
    }

    fn op_type(&self) -> &'static str {
        self.name
    }

    /// Never negative when input 0 is not and the padding adds no negative value (edge and
    /// reflect modes copy input elements; constant mode adds `value`, 0 by default).
    fn non_negative(&self, cx: &super::simplify::SignCx) -> bool {
        let constant = cx.node.attr_s("mode").is_none_or(|m| m == "constant");
        let value_ok = match cx.node.input(2) {
            Some(_) => cx
                .consts
                .get(2)
                .copied()
                .flatten()
                .and_then(Tensor::to_f64_vec)
                .is_some_and(|v| v.iter().all(|x| *x >= 0.0)),
            None => cx.node.attr_f("value").unwrap_or(0.0) >= 0.0,
        };
        cx.input(0) && (!constant || value_ok)
    }

    fn arity(&self, opset: i64) -> Option<(usize, usize)> {
        // pads (required) and constant_value became inputs at opset 11, axes at 18.
        Some(match opset {
            ..=10 => (1, 1),
            11..=17 => (2, 3),
            _ => (2, 4),
        })
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
        let pads: Option<Vec<i64>> = if util::wired(cx, 1) {
            cx.ints(1)
        } else if let Some(p) = cx
            .node
            .attr_ints("pads")
            .or_else(|| cx.node.attr_ints("paddings"))
        {
            Some(p.to_vec())
        } else {
            return Err(cx.err("pads are missing (neither input 1 nor a pads attribute)"));
        };
        let axes: Option<Vec<i64>> = if util::wired(cx, 3) {
            cx.ints(3)
        } else {
            Some((0..rank as i64).collect())
        };
        let shape = match (pads, axes) {
            (Some(p), Some(a)) => {
                let be = per_axis(&p, &a, rank).map_err(|e| cx.err(e))?;
                xs.iter()
                    .zip(&be)
                    .map(|(d, &(b, e))| padded(d, b, e))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| cx.err(e))?
            }
            (None, Some(a)) => {
                let be = per_axis(&vec![1; 2 * a.len()], &a, rank).map_err(|e| cx.err(e))?;
                xs.iter()
                    .zip(&be)
                    .map(|(d, &(b, _))| if b == 0 { d.clone() } else { Dim::Unknown })
                    .collect()
            }
            (_, None) => vec![Dim::Unknown; rank],
        };
        fact(Some(shape))
    }

    fn eval(
        &self,
        node: &Node,
        inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        if node.attr_s("mode").is_some_and(|m| m != "constant") {
            return None;
        }
        let x = inputs.first().copied().flatten()?;
        let err = |msg: String| Some(Err(Error::node(&node.name, &node.op_type, msg)));
        let input = |p: usize| -> Option<Option<&Tensor>> {
            if node.input(p).is_some() {
                Some(Some(inputs.get(p).copied().flatten()?))
            } else {
                Some(inputs.get(p).copied().flatten())
            }
        };
        let pads: Vec<i64> = match input(1)? {
            Some(t) => t.to_i64_vec()?,
            None => node
                .attr_ints("pads")
                .or_else(|| node.attr_ints("paddings"))?
                .to_vec(),
        };
        let rank = x.shape().len();
        let axes: Vec<i64> = match input(3)? {
            Some(t) => t.to_i64_vec()?,
            None => (0..rank as i64).collect(),
        };
        let be = match per_axis(&pads, &axes, rank) {
            Ok(be) => be,
            Err(e) => return err(e),
        };
        let mut outs = Vec::with_capacity(rank);
        for (&d, &(b, e)) in x.shape().iter().zip(&be) {
            match padded(&Dim::Known(d), b, e) {
                Ok(Dim::Known(o)) => outs.push(o),
                Ok(_) => return None,
                Err(e) => return err(e),
            }
        }
        let n = outs.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        if n > MAX_FOLD_ELEMS {
            return None;
        }
        let begin: Vec<i64> = be.iter().map(|&(b, _)| b).collect();
        let value = input(2)?;
        let dtype = x.dtype();
        if dtype.is_float() {
            let fill = match value {
                Some(v) => v.to_f64_vec()?.first().copied().unwrap_or(0.0),
                None => f64::from(node.attr_f("value").unwrap_or(0.0)),
            };
            let out = pad_values(&x.to_f64_vec()?, x.shape(), &outs, &begin, fill);
            return Some(Tensor::from_f64_as(dtype, outs, &out).map(|t| vec![t]));
        }
        let fill = match value {
            Some(v) => v.to_i64_vec()?.first().copied().unwrap_or(0),
            None => node.attr_f("value").unwrap_or(0.0) as i64,
        };
        let out = pad_values(&x.to_i64_vec()?, x.shape(), &outs, &begin, fill);
        if dtype == DType::I64 {
            return Some(Ok(vec![Tensor::from_i64(outs, &out)]));
        }
        let out: Vec<f64> = out.into_iter().map(|v| v as f64).collect();
        Some(Tensor::from_f64_as(dtype, outs, &out).map(|t| vec![t]))
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        // Fresh channels hold the pad value (constant mode); others keep their constant.
        if !cx.fresh {
            return cx.inputs.first().copied().flatten();
        }
        if cx.node.attr_s("mode").is_some_and(|m| m != "constant") {
            return None;
        }
        match cx.node.attr_f("value") {
            Some(v) => Some(v as f64),
            None if cx.node.input(2).is_some() => cx.inputs.get(2).copied().flatten(),
            None => Some(0.0),
        }
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        let Some(rank) = cx.in_rank(0) else {
            return cx.block_all("input rank unknown");
        };
        let be = Pads::read(cx.node, rank, |p| cx.ints(p))
            .and_then(|p| per_axis(&p.pads, &p.axes, rank).ok());
        let constant = cx.node.attr_s("mode").is_none_or(|m| m == "constant");
        cx.tracked
            .iter()
            .map(|&(p, a, len)| {
                let Some(&(b, e)) = be.as_ref().and_then(|be| be.get(a)).filter(|_| p == 0) else {
                    return block(p, a, "pads are not constant");
                };
                if b == 0 && e == 0 {
                    pass(0, a, 0, a)
                } else if b < 0 || e < 0 {
                    block(0, a, "negative pads crop the channel axis")
                } else if !constant {
                    block(0, a, "non-constant padding of the channel axis")
                } else {
                    let (b, e) = (b as usize, e as usize);
                    let map = std::iter::repeat_n(None, b)
                        .chain((0..len).map(Some))
                        .chain(std::iter::repeat_n(None, e))
                        .collect();
                    Link::Pass {
                        from: Slot::input(0, a),
                        to: Slot::output(0, a),
                        map: Map::Index(map),
                    }
                }
            })
            .collect()
    }

    fn rewrite_channels(&self, cx: &RewriteCx) -> Result<Rewrite> {
        let mut rw = Rewrite::default();
        let Some(rank) = cx.inputs.first().copied().flatten().and_then(Fact::rank) else {
            return Ok(rw);
        };
        let ints = |p: usize| cx.value(p).and_then(Tensor::to_i64_vec);
        let Some(mut pads) = Pads::read(cx.node, rank, ints) else {
            return Ok(rw);
        };
        let n = pads.axes.len();
        let mut changed = false;
        for j in 0..n {
            let Some(a) = super::channel::resolve_axis(pads.axes[j], rank) else {
                continue;
            };
            let (Some(&b), Some(&e)) = (pads.pads.get(j), pads.pads.get(j + n)) else {
                continue;
            };
            let Some(m) = cx.mask(Slot::output(0, a)) else {
                continue;
            };
            if b <= 0 && e <= 0 {
                continue;
            }
            let (bu, eu) = (b.max(0) as usize, e.max(0) as usize);
            let len = m.len().saturating_sub(bu + eu);
            let kept = |r: std::ops::Range<usize>| {
                m.get(r).map_or(0, |s| s.iter().filter(|k| **k).count()) as i64
            };
            pads.pads[j] = kept(0..bu);
            pads.pads[j + n] = kept(bu + len..m.len());
            changed = true;
        }
        if changed {
            match pads.attr {
                Some(name) => rw.attrs.push(attr_ints(name, &pads.pads)),
                None => {
                    let dtype = cx.value(1).map_or(DType::I64, Tensor::dtype);
                    rw.inputs.push((1, int_vector(dtype, &pads.pads)?));
                }
            }
        }
        Ok(rw)
    }

    fn vjp(
        &self,
        cx: &mut VjpCx,
        grads: &[Option<ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<ValueId>>> {
        if needs.iter().skip(1).any(|&n| n) {
            return Err(cx.err("only the data input can be differentiated"));
        }
        let mut out = vec![None; needs.len()];
        if needs.first() != Some(&true) {
            return Ok(out);
        }
        let mode = cx.fwd().attr_s("mode").unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(cx.err(format!(
                "differentiating mode '{mode}' is not supported (constant mode only)"
            )));
        }
        let g = out_grad(cx, grads)?;
        let ys = cx.shape(cx.output(0)?)?;
        let rank = ys.len();
        let pads = Pads::read(cx.fwd(), rank, |p| const_ints(cx, p).flatten())
            .ok_or_else(|| cx.err("the pads must be constant to differentiate"))?;
        let be = per_axis(&pads.pads, &pads.axes, rank).map_err(|e| cx.err(e))?;
        // Positive pads: slice them off; negative pads (crops): pad the gradient back.
        let (mut starts, mut ends, mut axes) = (Vec::new(), Vec::new(), Vec::new());
        let mut crop = vec![0i64; 2 * rank];
        for (a, &(b, e)) in be.iter().enumerate() {
            if b > 0 || e > 0 {
                starts.push(b.max(0));
                ends.push(ys[a] as i64 - e.max(0));
                axes.push(a as i64);
            }
            crop[a] = (-b).max(0);
            crop[rank + a] = (-e).max(0);
        }
        let mut v = g;
        if !axes.is_empty() {
            v = cx.slice(v, &starts, &ends, &axes);
        }
        if crop.iter().any(|&c| c != 0) {
            v = cx.pad_zeros(v, &crop);
        }
        out[0] = Some(v);
        Ok(out)
    }
}

/// `Pad`.
pub static PAD: Pad = Pad { name: "Pad" };

/// The pads (begins of every axis, then ends) of `node` when it is a Pad that adds zeros: constant
/// mode, value 0 (absent or a constant), constant non-negative pads, every axis (no `axes`
/// input). `None` otherwise.
pub fn zero_pads(node: &Node, consts: &[Option<&Tensor>]) -> Option<Vec<i64>> {
    if node.op_type != PAD.name || !crate::ir::is_default_domain(&node.domain) {
        return None;
    }
    if node.attr_s("mode").is_some_and(|m| m != "constant") || node.input(3).is_some() {
        return None;
    }
    let pads = match node.input(1) {
        Some(_) => consts.get(1).copied().flatten()?.to_i64_vec()?,
        None => node.attr_ints("pads")?.to_vec(),
    };
    let value = match node.input(2) {
        Some(_) => consts.get(2).copied().flatten()?.to_f64_vec()?,
        None => vec![f64::from(node.attr_f("value").unwrap_or(0.0))],
    };
    (value.iter().all(|v| *v == 0.0) && pads.iter().all(|p| *p >= 0)).then_some(pads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::{attr_float, attr_ints};
    use crate::ops::util::test_extra::{attr_str, wire};
    use crate::ops::util::testing::{eval, f32_fact, i64_const, i64s, infer, node, shape};

    #[test]
    fn pads_input_with_symbolic_batch() {
        let n = wire(node("Pad", 1, vec![]), 2);
        let ins = [f32_fact("N,3,32,32"), i64_const(&[0, 0, 1, 2, 0, 0, 1, 2])];
        let r = infer(&PAD, &n, &ins, 13).unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("N,3,34,36")));
        // Unknown pads: rank kept, dims unknown.
        let ins = [f32_fact("N,3,32,32"), f32_fact("8")];
        let r = infer(&PAD, &n, &ins, 13).unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("?,?,?,?")));
    }

    #[test]
    fn attribute_pads_and_axes_input() {
        let n = node("Pad", 1, vec![attr_ints("pads", &[0, 1, 0, -1])]);
        let r = infer(&PAD, &n, &[f32_fact("B,5")], 10).unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("B,5")));
        let n = wire(node("Pad", 1, vec![]), 4);
        let ins = [
            f32_fact("B,4,5"),
            i64_const(&[2, 3]),
            None,
            i64_const(&[-1]),
        ];
        let r = infer(&PAD, &n, &ins, 18).unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("B,4,10")));
    }

    #[test]
    fn errors() {
        let n = wire(node("Pad", 1, vec![]), 2);
        let ins = [f32_fact("1,3"), i64_const(&[0, 0, 0])];
        assert!(infer(&PAD, &n, &ins, 13).is_err());
        let ins = [f32_fact("1,3"), i64_const(&[0, -2, 0, -2])];
        assert!(infer(&PAD, &n, &ins, 13).is_err());
        let n = node("Pad", 1, vec![]);
        assert!(infer(&PAD, &n, &[f32_fact("1,3")], 13).is_err());
    }

    #[test]
    fn folds_constant_mode() {
        let x = Tensor::from_i64(vec![2, 2], &[1, 2, 3, 4]);
        let n = wire(node("Pad", 1, vec![]), 3);
        let ins = [
            Some(x.clone()),
            i64s(&[1, 0, 0, 1]),
            Some(Tensor::from_i64(vec![], &[9])),
        ];
        let r = eval(&PAD, &n, &ins, 13).unwrap().unwrap();
        assert_eq!(r[0].shape(), &[3, 3]);
        assert_eq!(r[0].to_i64_vec(), Some(vec![9, 9, 9, 1, 2, 9, 3, 4, 9]));
        let f = Tensor::from_f32(vec![3], &[1.0, 2.0, 3.0]);
        let n = node(
            "Pad",
            1,
            vec![attr_ints("pads", &[-1, 1]), attr_float("value", 0.5)],
        );
        let r = eval(&PAD, &n, &[Some(f.clone())], 10).unwrap().unwrap();
        assert_eq!(r[0].to_f32_vec(), Some(vec![2.0, 3.0, 0.5]));
        let n = node(
            "Pad",
            1,
            vec![attr_ints("pads", &[1, 1]), attr_str("mode", "edge")],
        );
        assert!(eval(&PAD, &n, &[Some(f)], 10).is_none());
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ir::graph::attr_ints;
    use crate::ir::Model;
    use crate::ops::channel::testing::*;
    use crate::ops::util::test_extra::attr_str;

    /// The CIFAR ResNet option-A shortcut: `x[:, :, ::2, ::2]` padded with zero channels on
    /// both sides, added to a strided conv's output.
    fn option_a(opset: i64, mode: &str, pads: [i64; 2]) -> Model {
        let mut n = Net::new();
        let x = n.batch_input(&[3, 8, 8]);
        let a = n.conv(x, 3, 4);
        let r = n.op("Relu", &[a], vec![]);
        let sliced = if opset >= 10 {
            let (s, e, ax, st) = (
                n.ints(&[0, 0]),
                n.ints(&[8, 8]),
                n.ints(&[2, 3]),
                n.ints(&[2, 2]),
            );
            n.op("Slice", &[r, s, e, ax, st], vec![])
        } else {
            // Opset 9 has no steps: pool instead.
            let k = vec![
                attr_ints("kernel_shape", &[1, 1]),
                attr_ints("strides", &[2, 2]),
            ];
            n.op("MaxPool", &[r], k)
        };
        let [b, e] = pads;
        let flat = [0, b, 0, 0, 0, e, 0, 0];
        let mut attrs = vec![attr_str("mode", mode)];
        let p = if opset >= 11 {
            let pv = n.ints(&flat);
            n.op("Pad", &[sliced, pv], attrs)
        } else {
            attrs.push(attr_ints("pads", &flat));
            n.op("Pad", &[sliced], attrs)
        };
        let w = n.floats(&[(4 + b + e) as usize, 4, 3, 3]);
        let conv = n.op(
            "Conv",
            &[r, w],
            vec![
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[1, 1, 1, 1]),
            ],
        );
        let sum = n.op("Add", &[conv, p], vec![]);
        let y = n.conv(sum, (4 + b + e) as usize, 2);
        n.output(y);
        n.model(opset)
    }

    #[test]
    fn option_a_shortcut_is_prunable() {
        for opset in [9, 13] {
            let m = option_a(opset, "constant", [2, 2]);
            let cg = analyse(&m);
            let prunable: Vec<_> = cg.groups.iter().filter(|g| g.prunable()).collect();
            // One group: the block input's 4 channels united with the strided conv's middle
            // ones, and its outer ones united with the fresh zero channels.
            let sizes: Vec<usize> = prunable.iter().map(|g| g.channels).collect();
            assert_eq!(sizes, [8], "opset {opset}");
            assert_eq!(prunable[0].sources.iter().filter(|s| s.constant).count(), 1);
            prunes_exactly(&m);
        }
    }

    #[test]
    fn asymmetric_and_input_pads() {
        prunes_exactly(&option_a(13, "constant", [0, 3]));
        prunes_exactly(&option_a(13, "constant", [1, 0]));
    }

    #[test]
    fn reflect_padding_of_channels_blocks() {
        let cg = analyse(&option_a(13, "reflect", [2, 2]));
        assert!(blocked_with(
            &cg,
            "non-constant padding of the channel axis"
        ));
    }
}
