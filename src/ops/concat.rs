//! `Concat`: joins its inputs along `axis` (negative counts from the back; required since
//! opset 4, default 1 before). The output dim on `axis` is the sum when every input's is
//! known (zero-size inputs are skipped, so `[N] ++ []` stays `N`), else `Unknown`; the other
//! dims come from the inputs, preferring a known size over a symbol. Inputs of unknown rank
//! are tolerated when another input gives the rank. Folding works on raw bytes for any
//! byte-addressable type (not strings or sub-byte types). 1-D shape vectors, constant or
//! tracked element by element (`Fact::sym`), concatenate element-wise, symbols kept.
//!
//! Channels: the output's `axis` assembles the inputs' channels in order (an input whose
//! channels are not tracked contributes fixed ones); any other tracked axis passes from every
//! input (they are the same channels, so the analysis unites them).
//!
//! Backward: the output gradient is `Split` along `axis` into the inputs' sizes.

use crate::error::{Error, Result};
use crate::ir::{Dim, Fact, Node, Tensor};

use super::channel::{block, pass, Link, LinkCx, Slot};
use super::grad_util::out_grad;
use super::vjp::{Build, VjpCx};
use super::{util, Cx, Op};
use crate::ir::ValueId;

/// The `Concat` op.
pub struct Concat {
    name: &'static str,
}

/// The raw `axis` attribute (default 1 before opset 4).
fn axis_attr(node: &Node, opset: i64) -> Option<i64> {
    node.attr_i("axis").or((opset < 4).then_some(1))
}

/// Resolves a possibly negative axis (`None` when out of range).
fn resolve(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

impl Op for Concat {
    fn op_type(&self) -> &'static str {
        self.name
    }

    /// Never negative when no input is.
    fn non_negative(&self, cx: &super::simplify::SignCx) -> bool {
        cx.inputs(0..cx.node.inputs.len())
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((1, usize::MAX))
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let facts: Vec<&Fact> = (0..cx.inputs.len())
            .map(|i| Ok(util::required_input(cx, i)?.unwrap_or(&util::UNKNOWN_FACT)))
            .collect::<Result<_>>()?;
        if facts.is_empty() {
            return Err(cx.err("needs at least one input"));
        }
        let axis =
            axis_attr(cx.node, cx.opset).ok_or_else(|| cx.err("attribute 'axis' is missing"))?;
        let mut dtype = None;
        for f in &facts {
            match (dtype, f.dtype) {
                (Some(a), Some(b)) if a != b => {
                    return Err(cx.err(format!("inputs have different types {a} and {b}")));
                }
                (None, b) => dtype = b,
                _ => {}
            }
        }
        let shapes: Vec<&Vec<Dim>> = facts.iter().filter_map(|f| f.shape.as_ref()).collect();
        let Some(first) = shapes.first() else {
            return Ok(Some(vec![Fact {
                dtype,
                shape: None,
                ..Default::default()
            }]));
        };
        let rank = first.len();
        if let Some(s) = shapes.iter().find(|s| s.len() != rank) {
            return Err(cx.err(format!(
                "inputs have different ranks {rank} and {}",
                s.len()
            )));
        }
        let ax = cx.axis(axis, rank)?;
        if rank == 1 && shapes.len() == facts.len() {
            let parts: Option<Vec<_>> = facts.iter().map(|f| f.sym_elems()).collect();
            if let Some(parts) = parts {
                return Ok(Some(vec![Fact::of_sym(dtype, false, parts.concat())]));
            }
        }
        let all_shaped = shapes.len() == facts.len();
        let mut out = Vec::with_capacity(rank);
        for i in 0..rank {
            if i == ax {
                let parts: Vec<&Dim> = shapes
                    .iter()
                    .map(|s| &s[i])
                    .filter(|d| **d != Dim::Known(0))
                    .collect();
                out.push(if !all_shaped {
                    Dim::Unknown
                } else if parts.is_empty() {
                    Dim::Known(0)
                } else if let [one] = parts[..] {
                    one.clone()
                } else {
                    parts
                        .iter()
                        .try_fold(0usize, |acc, d| acc.checked_add(d.known()?))
                        .map_or(Dim::Unknown, Dim::Known)
                });
                continue;
            }
            let mut best = Dim::Unknown;
            for s in &shapes {
                match (&best, &s[i]) {
                    (Dim::Known(a), Dim::Known(b)) if a != b => {
                        return Err(cx.err(format!("inputs disagree on dimension {i}: {a} vs {b}")));
                    }
                    (Dim::Known(_), _) => {}
                    (_, Dim::Known(b)) => best = Dim::Known(*b),
                    (Dim::Unknown, d) => best = d.clone(),
                    _ => {}
                }
            }
            out.push(best);
        }
        Ok(Some(vec![Fact::new(dtype, out)]))
    }

    fn eval(
        &self,
        node: &Node,
        inputs: &[Option<&Tensor>],
        opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        let ts: Vec<&Tensor> = inputs.iter().copied().collect::<Option<_>>()?;
        let first = ts.first()?;
        let es = util::elem_size(first.dtype())?;
        let rank = first.shape().len();
        let err = |m: String| Some(Err(Error::node(&node.name, &node.op_type, m)));
        let Some(ax) = resolve(axis_attr(node, opset)?, rank) else {
            return err(format!("axis is out of range for rank {rank}"));
        };
        let mut shape = first.shape().to_vec();
        shape[ax] = 0;
        for t in &ts {
            let s = t.shape();
            let same = t.dtype() == first.dtype()
                && s.len() == rank
                && (0..rank).all(|i| i == ax || s[i] == shape[i]);
            if !same {
                return err(format!(
                    "cannot concatenate {} {:?} with {} {:?}",
                    first.dtype(),
                    first.shape(),
                    t.dtype(),
                    s
                ));
            }
            shape[ax] += s[ax];
        }
        let outer: usize = shape[..ax].iter().product();
        let total: usize = ts.iter().map(|t| t.raw().len()).sum();
        let mut out = Vec::with_capacity(total);
        for o in 0..outer {
            for t in &ts {
                let chunk = t.shape()[ax..].iter().product::<usize>() * es;
                out.extend_from_slice(t.raw().get(o * chunk..(o + 1) * chunk)?);
            }
        }
        Some(Tensor::from_raw(first.dtype(), shape, out.into()).map(|t| vec![t]))
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        let rank = (0..cx.node.inputs.len()).find_map(|p| cx.in_rank(p));
        let Some(axis) = axis_attr(cx.node, cx.opset)
            .zip(rank)
            .and_then(|(a, r)| resolve(a, r))
        else {
            return cx.block_all("concat axis unknown");
        };
        // Another axis holds the same channels in every input: all must be tracked.
        let everywhere = |a: usize| {
            (0..cx.node.inputs.len()).all(|p| cx.tracked.iter().any(|t| t.0 == p && t.1 == a))
        };
        let mut links: Vec<Link> = cx
            .tracked
            .iter()
            .filter(|t| t.1 != axis)
            .map(|&(p, a, _)| {
                if everywhere(a) {
                    pass(p, a, 0, a)
                } else {
                    block(p, a, "concat with an input whose channels are not tracked")
                }
            })
            .collect();
        if cx.tracked.iter().any(|t| t.1 == axis) {
            match Concat::assemble(cx, axis) {
                Some(l) => links.push(l),
                None => {
                    return cx.block_all("concat of an input with an unknown length");
                }
            }
        }
        links
    }

    fn vjp(
        &self,
        cx: &mut VjpCx,
        grads: &[Option<ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<ValueId>>> {
        let g = out_grad(cx, grads)?;
        let ys = cx.shape(cx.output(0)?)?;
        let axis = axis_attr(cx.fwd(), cx.opset)
            .and_then(|a| resolve(a, ys.len()))
            .ok_or_else(|| cx.err("the axis is missing or out of range"))?;
        let mut sizes = Vec::with_capacity(needs.len());
        for p in 0..needs.len() {
            let s = cx.shape(cx.input(p)?)?;
            sizes.push(s.get(axis).copied().unwrap_or(0));
        }
        let parts = cx.split(g, axis, &sizes);
        Ok(parts
            .into_iter()
            .zip(needs)
            .map(|(v, &n)| n.then_some(v))
            .collect())
    }
}

impl Concat {
    /// The output's channels along the concatenation axis.
    fn assemble(cx: &LinkCx, axis: usize) -> Option<Link> {
        let mut parts = Vec::with_capacity(cx.node.inputs.len());
        for p in 0..cx.node.inputs.len() {
            match cx.tracked.iter().find(|t| t.0 == p && t.1 == axis) {
                Some(&(_, _, len)) => parts.push((Some(Slot::input(p, axis)), len)),
                None => parts.push((None, cx.in_shape(p)?.get(axis)?.known()?)),
            }
        }
        Some(Link::Assemble {
            to: Slot::output(0, axis),
            parts,
        })
    }
}

/// `Concat`.
pub static CONCAT: Concat = Concat { name: "Concat" };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_int;
    use crate::ir::DType;
    use crate::ops::util::testing::*;

    #[test]
    fn infer_sums_axis_and_keeps_batch() {
        let n = node("Concat", 1, vec![attr_int("axis", 1)]);
        let out = infer(&CONCAT, &n, &[f32_fact("N,3,4"), f32_fact("?,5,4")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("N,8,4")));
        let n = node("Concat", 1, vec![attr_int("axis", -1)]);
        let out = infer(&CONCAT, &n, &[f32_fact("N,3,K"), f32_fact("N,3,2")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("N,3,?")));
    }

    #[test]
    fn infer_skips_empty_parts_and_unknown_rank() {
        let n = node("Concat", 1, vec![attr_int("axis", 0)]);
        let out = infer(&CONCAT, &n, &[f32_fact("N"), f32_fact("0")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("N")));
        let out = infer(&CONCAT, &n, &[Some(Fact::default()), f32_fact("2,3")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("?,3")));
    }

    #[test]
    fn mismatches_are_errors() {
        let n = node("Concat", 1, vec![attr_int("axis", 0)]);
        assert!(infer(&CONCAT, &n, &[f32_fact("1,3"), f32_fact("1,4")], 13).is_err());
        assert!(infer(&CONCAT, &n, &[f32_fact("1,3"), f32_fact("1")], 13).is_err());
        assert!(infer(&CONCAT, &node("Concat", 1, vec![]), &[f32_fact("1")], 13).is_err());
        let a = Tensor::from_f32(vec![1, 2], &[1.0, 2.0]);
        let b = Tensor::from_f32(vec![1, 3], &[1.0, 2.0, 3.0]);
        assert!(eval(&CONCAT, &n, &[Some(a), Some(b)], 13).unwrap().is_err());
    }

    #[test]
    fn eval_shape_arithmetic_and_inner_axis() {
        let n = node("Concat", 1, vec![attr_int("axis", 0)]);
        let r = eval(&CONCAT, &n, &[i64s(&[2]), i64s(&[-1]), i64s(&[])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].to_i64_vec().unwrap(), vec![2, -1]);
        let n = node("Concat", 1, vec![attr_int("axis", 1)]);
        let a = Tensor::from_f32(vec![2, 1], &[1.0, 2.0]);
        let b = Tensor::from_f32(vec![2, 2], &[3.0, 4.0, 5.0, 6.0]);
        let r = eval(&CONCAT, &n, &[Some(a), Some(b)], 13).unwrap().unwrap();
        assert_eq!(r[0].shape(), &[2, 3]);
        assert_eq!(r[0].dtype(), DType::F32);
        assert_eq!(
            r[0].to_f64_vec().unwrap(),
            vec![1.0, 3.0, 4.0, 2.0, 5.0, 6.0]
        );
    }

    #[test]
    fn concatenates_symbolic_shape_elements() {
        let n = node("Concat", 1, vec![attr_int("axis", 0)]);
        let out = infer(&CONCAT, &n, &[sym_fact("N"), i64_const(&[-1])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("2")));
        assert_eq!(out[0].sym, Some(syms("N,-1")));
        // An input whose elements are not known: only the shape.
        let opaque = Some(Fact::new(Some(DType::I64), shape("1")));
        let out = infer(&CONCAT, &n, &[sym_fact("N"), opaque], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("2")));
        assert_eq!(out[0].sym, None);
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ir::graph::attr_int;
    use crate::ops::channel::testing::*;

    #[test]
    fn concat_assembles_its_inputs_channels() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let a = n.conv(x, 3, 4);
        let b = n.conv(x, 3, 5);
        // The raw input's channels are not tracked: fixed.
        let cat = n.op("Concat", &[a, x, b], vec![attr_int("axis", 1)]);
        let y = n.conv(cat, 12, 2);
        n.output(y);
        let m = n.model(13);
        let cg = analyse(&m);
        assert!(group(&cg, &m, a).prunable());
        assert!(group(&cg, &m, b).prunable());
        assert!(blocked_with(&cg, "joins channels of an untracked input"));
        let pruned = prunes_exactly(&m);
        // 4 → 3 and 5 → 3 channels, plus the input's 3.
        let name = &m.graph.value(cat).name;
        assert_eq!(shape_of(&pruned, name), "[1,9,4,4]");
    }

    #[test]
    fn concat_along_another_axis_with_an_untracked_input_blocks() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let a = n.conv(x, 3, 4);
        let other = n.input(&[1, 4, 2, 4]);
        let cat = n.op("Concat", &[a, other], vec![attr_int("axis", 2)]);
        n.output(cat);
        let cg = analyse(&n.model(13));
        assert!(blocked_with(
            &cg,
            "concat with an input whose channels are not tracked"
        ));
    }

    #[test]
    fn concat_along_another_axis_unites_channels() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let a = n.conv(x, 3, 4);
        let b = n.conv(x, 3, 4);
        let cat = n.op("Concat", &[a, b], vec![attr_int("axis", 2)]);
        let y = n.conv(cat, 4, 2);
        n.output(y);
        let m = n.model(13);
        let cg = analyse(&m);
        let g = group(&cg, &m, a);
        assert!(g.prunable());
        assert_eq!(g.sources.len(), 2);
        prunes_exactly(&m);
    }
}
