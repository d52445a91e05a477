//! `Slice`: a strided window of `data`. Opset < 10 reads `starts`/`ends`/`axes` attributes;
//! from 10 they are inputs 1–3 plus `steps` (input 4). Negative starts/ends count from the
//! back and are clamped per the spec (`[0, d]` for positive steps, `[0, d-1]`/`[-1, d-1]` for
//! negative ones); axes may be negative and must not repeat; steps must not be 0.
//!
//! On a symbolic or unknown dim only the "whole axis" slices (`0..` a huge end with step 1,
//! or a full reversal with step -1) keep the dim; other sliced symbolic dims become
//! `Unknown`. Non-constant parameters give the input rank with the touched (or, when the axes
//! are not known, all) dims `Unknown`. Folding works on raw bytes for any byte-addressable
//! type and any rank (not strings or sub-byte types). A 1-D shape vector tracked element by
//! element (`Fact::sym`, a symbolic batch) is sliced element-wise, symbols kept.
//!
//! Channels: an axis not sliced passes; a channel axis sliced with step 1 by constant bounds
//! passes its window (afterwards the bounds count kept channels, in the same form: attributes
//! or inputs of the same type); other steps or non-constant bounds on a channel axis block.
//!
//! Backward (any non-zero step): along an axis with a negative step the gradient is reversed
//! first (the elements it took, in ascending order, form a positive-step slice from the
//! lowest); with a step k > 1, k − 1 zeros are interleaved after every element; then the
//! gradient is zero-padded (or cropped) back to the input shape.

use crate::error::{Error, Result};
use crate::ir::graph::attr_ints;
use crate::ir::{Dim, Fact, Node, Tensor};

use super::channel::{
    block, int_vector, pass, ConstCx, Link, LinkCx, Map, Rewrite, RewriteCx, Slot,
};
use super::grad_util::{const_ints, out_grad};
use super::vjp::{Build, VjpCx};
use super::{util, Cx, Op};
use crate::ir::ValueId;

/// The `Slice` op.
pub struct Slice {
    name: &'static str,
}

/// Ends at least this large mean "to the end" (covers INT32_MAX and INT64_MAX sentinels).
const HUGE: i64 = i32::MAX as i64;

/// `(axis, start, end, step)` per sliced axis.
type Plan = Vec<(usize, i64, i64, i64)>;

/// The slice parameters, each `None` when not a compile-time constant.
struct Params {
    starts: Option<Vec<i64>>,
    ends: Option<Vec<i64>>,
    /// `Some(None)`: absent (meaning `0..len(starts)`).
    axes: Option<Option<Vec<i64>>>,
    /// `Some(None)`: absent (meaning all 1).
    steps: Option<Option<Vec<i64>>>,
}

impl Params {
    /// Reads the parameters from attributes (opset < 10) or inputs, via `get(port)` giving
    /// `None` for an absent input and `Some(None)` for a non-constant one.
    fn read(node: &Node, opset: i64, get: impl Fn(usize) -> Option<Option<Vec<i64>>>) -> Params {
        if opset < 10 {
            let a = |n: &str| node.attr_ints(n).map(<[i64]>::to_vec);
            return Params {
                starts: a("starts"),
                ends: a("ends"),
                axes: Some(a("axes")),
                steps: Some(None),
            };
        }
        let opt = |p: usize| match get(p) {
            None => Some(None),
            Some(None) => None,
            Some(Some(v)) => Some(Some(v)),
        };
        Params {
            starts: get(1).flatten(),
            ends: get(2).flatten(),
            axes: opt(3),
            steps: opt(4),
        }
    }

    /// The axes that are sliced, resolved, if known.
    fn axes(&self, rank: usize) -> Option<std::result::Result<Vec<usize>, String>> {
        let axes = match self.axes.as_ref()? {
            Some(a) => a.clone(),
            None => (0..self.starts.as_ref()?.len() as i64).collect(),
        };
        let r = rank as i64;
        let mut out = Vec::with_capacity(axes.len());
        for a in axes {
            if a < -r || a >= r {
                return Some(Err(format!("axis {a} is out of range for rank {rank}")));
            }
            let a = if a < 0 { a + r } else { a } as usize;
            if out.contains(&a) {
                return Some(Err(format!("axis {a} is repeated")));
            }
            out.push(a);
        }
        Some(Ok(out))
    }

    /// `(axis, start, end, step)` per sliced axis, when everything is constant.
    fn plan(&self, rank: usize) -> Option<std::result::Result<Plan, String>> {
        let axes = match self.axes(rank)? {
            Ok(a) => a,
            Err(e) => return Some(Err(e)),
        };
        let (starts, ends) = (self.starts.as_ref()?, self.ends.as_ref()?);
        let steps = match self.steps.as_ref()? {
            Some(s) => s.clone(),
            None => vec![1; starts.len()],
        };
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return Some(Err(format!(
                "starts ({}), ends ({}), axes ({}) and steps ({}) differ in length",
                starts.len(),
                ends.len(),
                axes.len(),
                steps.len()
            )));
        }
        if steps.contains(&0) {
            return Some(Err("steps must not be 0".into()));
        }
        Some(Ok((0..axes.len())
            .map(|i| (axes[i], starts[i], ends[i], steps[i]))
            .collect()))
    }
}

/// The clamped start and the output length along an axis of size `d`.
fn clamp(d: usize, start: i64, end: i64, step: i64) -> (usize, usize) {
    if d == 0 {
        return (0, 0);
    }
    let d = d as i64;
    let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
    let (s, e) = if step > 0 {
        (norm(start).clamp(0, d), norm(end).clamp(0, d))
    } else {
        (norm(start).clamp(0, d - 1), norm(end).clamp(-1, d - 1))
    };
    let span = if step > 0 { e - s } else { s - e };
    let len = if span > 0 {
        (span as u64 - 1) / step.unsigned_abs() + 1
    } else {
        0
    };
    (s as usize, len as usize)
}

/// The output dim along a sliced axis.
fn sliced_dim(d: &Dim, start: i64, end: i64, step: i64) -> Dim {
    match d.known() {
        Some(k) => Dim::Known(clamp(k, start, end, step).1),
        None if step == 1 && start == 0 && end >= HUGE => d.clone(),
        None if step == -1 && (start == -1 || start >= HUGE) && end <= -HUGE => d.clone(),
        None => Dim::Unknown,
    }
}

impl Op for Slice {
    /// Opset 10 made `starts`, `ends` and `axes` inputs.
    fn upgrade(&self, node: &Node, from: i64, to: i64) -> Result<super::Upgrade> {
        let u = super::Upgrade::default();
        Ok(if from < 10 && to >= 10 {
            u.ints_to_input(node, "starts", 1)
                .ints_to_input(node, "ends", 2)
                .ints_to_input(node, "axes", 3)
        } else {
            u
        })
    }

    fn op_type(&self) -> &'static str {
        self.name
    }

    /// A rearrangement of input 0's elements: never negative when they are not.
    fn non_negative(&self, cx: &super::simplify::SignCx) -> bool {
        cx.input(0)
    }

    fn arity(&self, opset: i64) -> Option<(usize, usize)> {
        // starts, ends (required), axes, steps became inputs at opset 10.
        Some(if opset < 10 { (1, 1) } else { (3, 5) })
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let x = util::required_input(cx, 0)?.unwrap_or(&util::UNKNOWN_FACT);
        let Some(shape) = &x.shape else {
            return Ok(Some(vec![Fact {
                dtype: x.dtype,
                shape: None,
                ..Default::default()
            }]));
        };
        let p = Params::read(cx.node, cx.opset, |port| {
            cx.has_input(port).then(|| cx.ints(port))
        });
        if cx.opset < 10 && (p.starts.is_none() || p.ends.is_none()) {
            return Err(cx.err("attributes 'starts' and 'ends' are required"));
        }
        let mut out = shape.clone();
        match p.plan(shape.len()) {
            Some(Ok(plan)) => {
                if let (Some(elems), [(0, s, e, st)]) = (x.sym_elems(), &plan[..]) {
                    let (start, len) = clamp(elems.len(), *s, *e, *st);
                    let picked: Option<Vec<_>> = (0..len as i64)
                        .map(|i| {
                            let at = (start as i64).checked_add(i.checked_mul(*st)?)?;
                            let at = usize::try_from(at).ok()?;
                            elems.get(at).cloned()
                        })
                        .collect();
                    if let Some(picked) = picked {
                        return Ok(Some(vec![Fact::of_sym(x.dtype, false, picked)]));
                    }
                }
                for (ax, s, e, st) in plan {
                    out[ax] = sliced_dim(&shape[ax], s, e, st);
                }
            }
            Some(Err(e)) => return Err(cx.err(e)),
            None => match p.axes(shape.len()) {
                Some(Ok(axes)) => axes.into_iter().for_each(|a| out[a] = Dim::Unknown),
                Some(Err(e)) => return Err(cx.err(e)),
                None => out.iter_mut().for_each(|d| *d = Dim::Unknown),
            },
        }
        Ok(Some(vec![Fact::new(x.dtype, out)]))
    }

    fn eval(
        &self,
        node: &Node,
        inputs: &[Option<&Tensor>],
        opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        let x = inputs.first().copied().flatten()?;
        let p = Params::read(node, opset, |port| {
            inputs.get(port).copied().flatten().map(Tensor::to_i64_vec)
        });
        let dims = x.shape();
        let plan = match p.plan(dims.len())? {
            Ok(plan) => plan,
            Err(m) => return Some(Err(Error::node(&node.name, &node.op_type, m))),
        };
        let in_strides = util::strides_of(dims);
        let mut shape = dims.to_vec();
        let mut strides: Vec<isize> = in_strides.iter().map(|&s| s as isize).collect();
        let mut offset = 0usize;
        for (ax, s, e, st) in plan {
            let (start, len) = clamp(dims[ax], s, e, st);
            shape[ax] = len;
            if len > 0 {
                offset += start * in_strides[ax];
            }
            strides[ax] = (in_strides[ax] as isize).checked_mul(st.try_into().ok()?)?;
        }
        if shape.contains(&0) {
            offset = 0;
        }
        Some(util::strided_copy(x, shape, offset, &strides)?.map(|t| vec![t]))
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        cx.inputs.first().copied().flatten()
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        let Some(rank) = cx.in_rank(0) else {
            return cx.block_all("input rank unknown");
        };
        let p = Params::read(cx.node, cx.opset, |port| {
            cx.node.input(port).is_some().then(|| cx.ints(port))
        });
        let plan = p.plan(rank).and_then(std::result::Result::ok);
        let axes = p.axes(rank).and_then(std::result::Result::ok);
        cx.tracked
            .iter()
            .map(|&(port, a, len)| {
                if port != 0 {
                    return block(port, a, "channels on the slice bounds");
                }
                if let Some(plan) = &plan {
                    return match plan.iter().find(|s| s.0 == a) {
                        None => pass(0, a, 0, a),
                        Some(&(_, s, e, 1)) => {
                            let (start, n) = clamp(len, s, e, 1);
                            Link::Pass {
                                from: Slot::input(0, a),
                                to: Slot::output(0, a),
                                map: Map::Index((start..start + n).map(Some).collect()),
                            }
                        }
                        Some(_) => block(0, a, "strided slice of the channel axis"),
                    };
                }
                match &axes {
                    Some(axes) if !axes.contains(&a) => pass(0, a, 0, a),
                    _ => block(0, a, "slice bounds are not constant"),
                }
            })
            .collect()
    }

    fn rewrite_channels(&self, cx: &RewriteCx) -> Result<Rewrite> {
        let mut rw = Rewrite::default();
        let Some(rank) = cx.inputs.first().copied().flatten().and_then(Fact::rank) else {
            return Ok(rw);
        };
        let p = Params::read(cx.node, cx.opset, |port| {
            cx.node
                .input(port)
                .is_some()
                .then(|| cx.value(port).and_then(Tensor::to_i64_vec))
        });
        let (Some(Ok(plan)), Some(mut starts), Some(mut ends)) =
            (p.plan(rank), p.starts.clone(), p.ends.clone())
        else {
            return Ok(rw);
        };
        let mut changed = false;
        for (i, &(a, s, e, step)) in plan.iter().enumerate() {
            let Some(m) = cx.mask(Slot::input(0, a)).filter(|_| step == 1) else {
                continue;
            };
            let len = m.len();
            let (start, n) = clamp(len, s, e, 1);
            let count = |r: std::ops::Range<usize>| {
                m.get(r).map_or(0, |x| x.iter().filter(|k| **k).count()) as i64
            };
            let new_start = count(0..start);
            starts[i] = new_start;
            if e < len as i64 {
                ends[i] = new_start + count(start..start + n);
            }
            changed = true;
        }
        if !changed {
            return Ok(rw);
        }
        if cx.opset < 10 {
            rw.attrs.push(attr_ints("starts", &starts));
            rw.attrs.push(attr_ints("ends", &ends));
        } else {
            for (port, v) in [(1, &starts), (2, &ends)] {
                let dtype = cx.value(port).map_or(crate::ir::DType::I64, Tensor::dtype);
                rw.inputs.push((port, int_vector(dtype, v)?));
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
        let mut out = vec![None; needs.len()];
        if needs.first() != Some(&true) {
            return Ok(out);
        }
        let g = out_grad(cx, grads)?;
        let xs = cx.shape(cx.input(0)?)?;
        let params = Params::read(cx.fwd(), cx.opset, |p| const_ints(cx, p));
        let plan = params
            .plan(xs.len())
            .ok_or_else(|| cx.err("the slice parameters must be constant to differentiate"))?
            .map_err(|e| cx.err(e))?;
        let r = xs.len();
        let mut pads = vec![0i64; 2 * r];
        let mut g = g;
        let mut cur = cx.shape(cx.output(0)?)?;
        for (axis, start, end, step) in plan {
            let d = xs[axis];
            let (s, len) = clamp(d, start, end, step);
            // The lowest element taken: along a negative step, the last one.
            let mut low = s;
            if step < 0 && len > 0 {
                let back = ((len - 1) as u64).saturating_mul(step.unsigned_abs());
                low = s.saturating_sub(usize::try_from(back).unwrap_or(usize::MAX));
                if len > 1 {
                    g = reverse(cx, g, axis, cur[axis]);
                }
            }
            // A single element needs no interleaving (whatever the step).
            let stride = if len > 1 {
                usize::try_from(step.unsigned_abs())
                    .map_err(|_| cx.err(format!("step {step} is too large")))?
            } else {
                1
            };
            if stride > 1 {
                // Interleave stride−1 zeros after every element: [.., n, ..] → [.., n·stride, ..].
                let mut wide = cur[..=axis].to_vec();
                wide.push(1);
                wide.extend_from_slice(&cur[axis + 1..]);
                let w = cx.reshape(g, &wide);
                let mut p = vec![0i64; 2 * wide.len()];
                p[wide.len() + axis + 1] = stride as i64 - 1;
                let w = cx.pad_zeros(w, &p);
                cur[axis] *= stride;
                g = cx.reshape(w, &cur);
            }
            let covered = len * stride;
            pads[axis] = low as i64;
            pads[r + axis] = d as i64 - (low + covered) as i64;
        }
        out[0] = Some(if pads.iter().all(|&p| p == 0) {
            g
        } else {
            cx.pad_zeros(g, &pads)
        });
        Ok(out)
    }
}

/// `v` reversed along `axis` (of length `len`): a `Slice` with step −1.
fn reverse(cx: &mut VjpCx, v: ValueId, axis: usize, len: usize) -> ValueId {
    let (st, en, ax, sp) = (
        cx.ints(&[-1]),
        cx.ints(&[-(len as i64) - 1]),
        cx.ints(&[axis as i64]),
        cx.ints(&[-1]),
    );
    cx.op("Slice", &[v, st, en, ax, sp], vec![])
}

/// `Slice`.
pub static SLICE: Slice = Slice { name: "Slice" };

/// When `node` is a Slice (opset ≥ 10 form, constant parameters in `consts`) on an input of
/// dims `dims` (`None`: not known) keeps every `step`-th element from the first along each axis it
/// slices (start 0, end at or past the dim, step ≥ 1): those `(axis, step)` pairs. `None`
/// for any other window.
pub fn subsampling(
    node: &Node,
    consts: &[Option<&Tensor>],
    dims: &[Option<usize>],
) -> Option<Vec<(usize, usize)>> {
    if node.op_type != SLICE.name || !crate::ir::is_default_domain(&node.domain) {
        return None;
    }
    let ints = |p: usize| {
        consts
            .get(p)
            .copied()
            .flatten()
            .and_then(Tensor::to_i64_vec)
    };
    let (starts, ends) = (ints(1)?, ints(2)?);
    let rank = dims.len() as i64;
    let axes = match node.input(3) {
        Some(_) => ints(3)?,
        None => (0..starts.len() as i64).collect(),
    };
    let steps = match node.input(4) {
        Some(_) => ints(4)?,
        None => vec![1; starts.len()],
    };
    if [ends.len(), axes.len(), steps.len()] != [starts.len(); 3] {
        return None;
    }
    let mut out = Vec::new();
    for i in 0..starts.len() {
        let a = if axes[i] < 0 { axes[i] + rank } else { axes[i] };
        let d = (*dims.get(usize::try_from(a).ok()?)?)? as i64;
        if starts[i] != 0 || ends[i] < d || steps[i] < 1 {
            return None;
        }
        out.push((a as usize, steps[i] as usize));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_ints;
    use crate::ir::DType;
    use crate::ops::util::testing::*;

    fn iota(shape: Vec<usize>) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_i64(shape, &(0..n as i64).collect::<Vec<_>>())
    }

    #[test]
    fn clamping_per_spec() {
        assert_eq!(clamp(10, 2, 5, 1), (2, 3));
        assert_eq!(clamp(10, -3, i64::MAX, 1), (7, 3));
        assert_eq!(clamp(10, i64::MIN, i64::MAX, 3), (0, 4));
        assert_eq!(clamp(10, -1, i64::MIN, -1), (9, 10));
        assert_eq!(clamp(10, 20, 0, -2), (9, 5));
        assert_eq!(clamp(10, 5, 2, 1), (5, 0));
        assert_eq!(clamp(0, 0, 5, 1), (0, 0));
        assert_eq!(clamp(10, 3, i64::MAX, i64::MAX), (3, 1));
        assert_eq!(clamp(10, -1, i64::MIN, i64::MIN), (9, 1));
    }

    #[test]
    fn infer_keeps_batch_and_slices_known() {
        let n = node("Slice", 1, vec![]);
        let ins = [
            f32_fact("N,8,H"),
            i64_const(&[0, 1, 0]),
            i64_const(&[i64::MAX, -1, 2]),
            i64_const(&[0, 1, 2]),
            i64_const(&[1, 2, 1]),
        ];
        let out = infer(&SLICE, &n, &ins, 13).unwrap().unwrap();
        assert_eq!(out[0].shape, Some(shape("N,3,?")));
        // Non-constant ends: the touched axis becomes unknown.
        let ins = [
            f32_fact("N,8"),
            i64_const(&[1]),
            Some(Fact::new(Some(DType::I64), shape("1"))),
            i64_const(&[-1]),
        ];
        let out = infer(&SLICE, &n, &ins, 13).unwrap().unwrap();
        assert_eq!(out[0].shape, Some(shape("N,?")));
    }

    #[test]
    fn attribute_form_before_opset_10() {
        let n = node(
            "Slice",
            1,
            vec![
                attr_ints("starts", &[1]),
                attr_ints("ends", &[3]),
                attr_ints("axes", &[1]),
            ],
        );
        let out = infer(&SLICE, &n, &[f32_fact("N,5")], 9).unwrap().unwrap();
        assert_eq!(out[0].shape, Some(shape("N,2")));
        let r = eval(&SLICE, &n, &[Some(iota(vec![2, 5]))], 9)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].to_i64_vec().unwrap(), vec![1, 2, 6, 7]);
    }

    #[test]
    fn eval_negative_steps_any_rank() {
        let n = node("Slice", 1, vec![]);
        let x = iota(vec![2, 3, 4]);
        let r = eval(
            &SLICE,
            &n,
            &[
                Some(x.clone()),
                i64s(&[-1, 3]),
                i64s(&[i64::MIN, 0]),
                i64s(&[0, 2]),
                i64s(&[-1, -2]),
            ],
            13,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r[0].shape(), &[2, 3, 2]);
        assert_eq!(
            r[0].to_i64_vec().unwrap(),
            vec![15, 13, 19, 17, 23, 21, 3, 1, 7, 5, 11, 9]
        );
        // Shape arithmetic: last two entries of a shape vector.
        let sh = Tensor::from_i64(vec![4], &[1, 3, 224, 224]);
        let r = eval(&SLICE, &n, &[Some(sh), i64s(&[-2]), i64s(&[i64::MAX])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].to_i64_vec().unwrap(), vec![224, 224]);
        let r = eval(&SLICE, &n, &[Some(x), i64s(&[5]), i64s(&[9])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].shape(), &[0, 3, 4]);
        // Huge steps take one element without overflowing.
        let v = Tensor::from_i64(vec![4], &[1, 2, 3, 4]);
        let r = eval(
            &SLICE,
            &n,
            &[
                Some(v.clone()),
                i64s(&[1]),
                i64s(&[4]),
                i64s(&[0]),
                i64s(&[i64::MAX]),
            ],
            13,
        );
        assert_eq!(r.unwrap().unwrap()[0].to_i64_vec().unwrap(), vec![2]);
        let r = eval(
            &SLICE,
            &n,
            &[
                Some(v),
                i64s(&[-1]),
                i64s(&[i64::MIN]),
                i64s(&[0]),
                i64s(&[i64::MIN]),
            ],
            13,
        );
        assert_eq!(r.unwrap().unwrap()[0].to_i64_vec().unwrap(), vec![4]);
    }

    #[test]
    fn bad_parameters_are_errors() {
        let n = node("Slice", 1, vec![]);
        let zero_step = [
            f32_fact("4"),
            i64_const(&[0]),
            i64_const(&[4]),
            i64_const(&[0]),
            i64_const(&[0]),
        ];
        assert!(infer(&SLICE, &n, &zero_step, 13).is_err());
        let dup = [
            f32_fact("4,4"),
            i64_const(&[0, 0]),
            i64_const(&[1, 1]),
            i64_const(&[1, -1]),
        ];
        assert!(infer(&SLICE, &n, &dup, 13).is_err());
        let r = eval(&SLICE, &n, &[i64s(&[1, 2]), i64s(&[0]), i64s(&[1, 2])], 13).unwrap();
        assert!(r.is_err());
    }

    #[test]
    fn slices_symbolic_shape_elements() {
        let n = node("Slice", 1, vec![]);
        let ins = [sym_fact("N,3,4,5"), i64_const(&[0]), i64_const(&[-2])];
        let out = infer(&SLICE, &n, &ins, 13).unwrap().unwrap();
        assert_eq!(out[0].shape, Some(shape("2")));
        assert_eq!(out[0].sym, Some(syms("N,3")));
        let ins = [
            sym_fact("N,3,4,5"),
            i64_const(&[-1]),
            i64_const(&[i64::MIN]),
            i64_const(&[0]),
            i64_const(&[-2]),
        ];
        let out = infer(&SLICE, &n, &ins, 13).unwrap().unwrap();
        assert_eq!(
            out[0].value.as_ref().unwrap().to_i64_vec().unwrap(),
            vec![5, 3]
        );
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ir::graph::attr_ints;
    use crate::ir::Model;
    use crate::ops::channel::testing::*;

    /// conv(8) → Slice channels `start..end` (step `step`) → conv.
    fn sliced(opset: i64, start: i64, end: i64, step: i64) -> (Model, usize) {
        let mut n = Net::new();
        let x = n.batch_input(&[3, 4, 4]);
        let c = n.conv(x, 3, 8);
        let s = if opset < 10 {
            let attrs = vec![
                attr_ints("starts", &[start]),
                attr_ints("ends", &[end]),
                attr_ints("axes", &[1]),
            ];
            n.op("Slice", &[c], attrs)
        } else {
            let ins = [
                n.ints(&[start]),
                n.ints(&[end]),
                n.ints(&[1]),
                n.ints(&[step]),
            ];
            n.op("Slice", &[c, ins[0], ins[1], ins[2], ins[3]], vec![])
        };
        let (_, width) = super::clamp(8, start, end, step);
        let y = n.conv(s, width, 2);
        n.output(y);
        (n.model(opset), width)
    }

    #[test]
    fn channel_windows_are_prunable() {
        for (opset, start, end) in [(13, 2, 6), (13, -5, i64::MAX), (9, 1, -1), (13, 0, 3)] {
            let (m, _) = sliced(opset, start, end, 1);
            let cg = analyse(&m);
            let g = cg.groups.iter().find(|g| g.channels == 8).unwrap();
            assert!(g.prunable(), "{:?}", g.blocked);
            prunes_exactly(&m);
        }
    }

    #[test]
    fn strided_channel_slices_block() {
        let (m, width) = sliced(13, 0, 8, 2);
        assert_eq!(width, 4);
        assert!(blocked_with(
            &analyse(&m),
            "strided slice of the channel axis"
        ));
    }
}
