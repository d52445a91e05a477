//! `Split`: cuts `input` along `axis` (default 0, negative counts from the back) into one
//! piece per output. Sizes come from the `split` attribute (before opset 13) or the `split`
//! input (from 13); without them the axis is split equally into `num_outputs` (opset 18
//! attribute; the last chunk may then be smaller) or the node's output count (must divide).
//! Explicit sizes are exact even on a symbolic axis; an equal split of a symbolic axis is
//! `Unknown`, as is everything along the axis when the `split` input is not constant. Folding
//! works on raw bytes for any byte-addressable type (not strings or sub-byte types).
//!
//! Channels: on the split axis each output takes its range of the input's channels; other
//! axes pass to every output. After removal the sizes are written explicitly (the `split`
//! attribute before opset 13, else input 1, dropping `num_outputs`).
//!
//! Backward: `Concat` of the outputs' gradients along `axis`, zeros for outputs that do not
//! reach the loss.

use crate::error::{Error, Result};
use crate::ir::graph::attr_ints;
use crate::ir::{Dim, Fact, Node, Tensor};

use super::channel::{block, pass, ConstCx, Link, LinkCx, Map, Rewrite, RewriteCx, Slot};
use super::vjp::{Build, VjpCx};
use super::{util, Cx, Op};
use crate::ir::ValueId;

/// The `Split` op.
pub struct Split {
    name: &'static str,
}

/// How the axis is cut.
enum Sizes {
    /// Explicit sizes, one per output.
    Explicit(Vec<usize>),
    /// Equal parts; `bool`: the last may be smaller (`num_outputs`).
    Equal(usize, bool),
    /// The `split` input is not a compile-time constant.
    Unknown,
}

/// Reads the split sizes. `split_input`: `None` when absent, `Some(None)` when not constant.
fn sizes(node: &Node, split_input: Option<Option<Vec<i64>>>) -> std::result::Result<Sizes, String> {
    let outputs = node.outputs.len();
    if outputs == 0 {
        return Err("has no outputs".into());
    }
    let explicit = match (node.attr_ints("split"), split_input) {
        (Some(s), _) => s.to_vec(),
        (None, Some(Some(s))) => s,
        (None, Some(None)) => return Ok(Sizes::Unknown),
        (None, None) => {
            return match node.attr_i("num_outputs") {
                Some(n) if n != outputs as i64 => Err(format!(
                    "num_outputs={n} but the node has {outputs} outputs"
                )),
                Some(_) => Ok(Sizes::Equal(outputs, true)),
                None => Ok(Sizes::Equal(outputs, false)),
            };
        }
    };
    if explicit.len() != outputs {
        return Err(format!(
            "split {explicit:?} has {} sizes for {outputs} outputs",
            explicit.len()
        ));
    }
    explicit
        .iter()
        .map(|&s| usize::try_from(s).map_err(|_| format!("negative size in split {explicit:?}")))
        .collect::<std::result::Result<_, _>>()
        .map(Sizes::Explicit)
}

/// The output sizes along an axis of size `d` (`None` entries: unknown).
fn resolve(sizes: &Sizes, d: &Dim) -> std::result::Result<Vec<Dim>, String> {
    match sizes {
        Sizes::Explicit(v) => {
            if let Some(d) = d.known() {
                let sum = v.iter().try_fold(0usize, |a, &b| a.checked_add(b));
                if sum != Some(d) {
                    return Err(format!("split {v:?} does not add up to the axis size {d}"));
                }
            }
            Ok(v.iter().map(|&s| Dim::Known(s)).collect())
        }
        Sizes::Equal(1, _) => Ok(vec![d.clone()]),
        Sizes::Equal(n, uneven) => {
            let Some(d) = d.known() else {
                return Ok(vec![Dim::Unknown; *n]);
            };
            if d % n == 0 {
                return Ok(vec![Dim::Known(d / n); *n]);
            }
            let chunk = d / n + 1;
            match d.checked_sub(chunk * (n - 1)) {
                Some(last) if *uneven => {
                    let mut v = vec![Dim::Known(chunk); n - 1];
                    v.push(Dim::Known(last));
                    Ok(v)
                }
                _ => Err(format!("axis of size {d} cannot be split into {n} parts")),
            }
        }
        Sizes::Unknown => Ok(Vec::new()),
    }
}

/// Resolves a possibly negative axis.
fn axis(node: &Node, rank: usize) -> std::result::Result<usize, String> {
    let a = node.attr_i("axis").unwrap_or(0);
    let r = rank as i64;
    if a < -r || a >= r {
        return Err(format!("axis {a} is out of range for rank {rank}"));
    }
    Ok(if a < 0 { a + r } else { a } as usize)
}

/// The split axis and the output sizes along it, for an axis of `len` channels.
fn plan(
    node: &Node,
    rank: usize,
    len: usize,
    ints: impl Fn(usize) -> Option<Vec<i64>>,
) -> Option<(usize, Vec<usize>)> {
    let ax = axis(node, rank).ok()?;
    let split_input = node.input(1).is_some().then(|| ints(1));
    let s = sizes(node, split_input).ok()?;
    let dims = resolve(&s, &Dim::Known(len)).ok()?;
    let sizes: Vec<usize> = dims.iter().map(Dim::known).collect::<Option<_>>()?;
    (sizes.len() == node.outputs.len()).then_some((ax, sizes))
}

impl Op for Split {
    /// Opset 13 made `split` an input.
    fn upgrade(&self, node: &Node, from: i64, to: i64) -> Result<super::Upgrade> {
        let u = super::Upgrade::default();
        Ok(if from < 13 && to >= 13 {
            u.ints_to_input(node, "split", 1)
        } else {
            u
        })
    }

    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, opset: i64) -> Option<(usize, usize)> {
        // split: an optional input at opset 1, an attribute from 2, an input again from 13.
        Some(if (2..13).contains(&opset) {
            (1, 1)
        } else {
            (1, 2)
        })
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let x = util::required_input(cx, 0)?.unwrap_or(&util::UNKNOWN_FACT);
        let n = cx.node.outputs.len();
        let split_input = cx.has_input(1).then(|| cx.ints(1));
        let sizes = sizes(cx.node, split_input).map_err(|e| cx.err(e))?;
        let Some(shape) = &x.shape else {
            return Ok(Some(vec![
                Fact {
                    dtype: x.dtype,
                    shape: None,
                    ..Default::default()
                };
                n
            ]));
        };
        let ax = axis(cx.node, shape.len()).map_err(|e| cx.err(e))?;
        let mut dims = resolve(&sizes, &shape[ax]).map_err(|e| cx.err(e))?;
        dims.resize(n, Dim::Unknown);
        Ok(Some(
            dims.into_iter()
                .map(|d| {
                    let mut s = shape.clone();
                    s[ax] = d;
                    Fact::new(x.dtype, s)
                })
                .collect(),
        ))
    }

    fn eval(
        &self,
        node: &Node,
        inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        let x = inputs.first().copied().flatten()?;
        let split_input = inputs.get(1).copied().flatten().map(Tensor::to_i64_vec);
        let err = |m: String| Some(Err(Error::node(&node.name, &node.op_type, m)));
        let dims = x.shape();
        let plan = sizes(node, split_input)
            .and_then(|s| Ok((axis(node, dims.len())?, s)))
            .and_then(|(ax, s)| Ok((ax, resolve(&s, &Dim::Known(dims[ax]))?)));
        let (ax, parts) = match plan {
            Ok(p) => p,
            Err(m) => return err(m),
        };
        let strides = util::strides_of(dims);
        let istrides: Vec<isize> = strides.iter().map(|&s| s as isize).collect();
        let mut start = 0usize;
        let mut outs = Vec::with_capacity(parts.len());
        for p in parts {
            let len = p.known()?;
            let mut shape = dims.to_vec();
            shape[ax] = len;
            let offset = if shape.contains(&0) {
                0
            } else {
                start * strides[ax]
            };
            match util::strided_copy(x, shape, offset, &istrides)? {
                Ok(t) => outs.push(t),
                Err(e) => return Some(Err(e)),
            }
            start += len;
        }
        Some(Ok(outs))
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        cx.inputs.first().copied().flatten()
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        let Some(rank) = cx.in_rank(0) else {
            return cx.block_all("input rank unknown");
        };
        let ax = axis(cx.node, rank).ok();
        let mut links = Vec::new();
        for &(p, a, len) in cx.tracked {
            if p != 0 {
                links.push(block(p, a, "channels on the split sizes"));
            } else if Some(a) != ax {
                for out in 0..cx.node.outputs.len() {
                    if cx.node.output(out).is_some() {
                        links.push(pass(0, a, out, a));
                    }
                }
            } else if let Some((_, sizes)) = plan(cx.node, rank, len, |q| cx.ints(q)) {
                let mut start = 0;
                for (out, n) in sizes.into_iter().enumerate() {
                    if cx.node.output(out).is_some() {
                        links.push(Link::Pass {
                            from: Slot::input(0, a),
                            to: Slot::output(out, a),
                            map: Map::Index((start..start + n).map(Some).collect()),
                        });
                    }
                    start += n;
                }
            } else {
                links.push(block(0, a, "split sizes unknown"));
            }
        }
        links
    }

    fn rewrite_channels(&self, cx: &RewriteCx) -> Result<Rewrite> {
        let mut rw = Rewrite::default();
        let Some(rank) = cx.inputs.first().copied().flatten().and_then(Fact::rank) else {
            return Ok(rw);
        };
        let Some(m) = axis(cx.node, rank)
            .ok()
            .and_then(|a| cx.mask(Slot::input(0, a)))
        else {
            return Ok(rw);
        };
        let ints = |p: usize| cx.value(p).and_then(Tensor::to_i64_vec);
        let Some((_, sizes)) = plan(cx.node, rank, m.len(), ints) else {
            return Ok(rw);
        };
        let mut start = 0;
        let mut new = Vec::with_capacity(sizes.len());
        for n in sizes {
            let kept = m
                .get(start..start + n)
                .map_or(n, |s| s.iter().filter(|k| **k).count());
            new.push(kept as i64);
            start += n;
        }
        if cx.opset < 13 {
            rw.attrs.push(attr_ints("split", &new));
        } else {
            let port = if cx.node.inputs.len() > 1 {
                1
            } else {
                cx.node.inputs.len()
            };
            rw.inputs
                .push((port, Tensor::from_i64(vec![new.len()], &new)));
            rw.remove_attrs.push("num_outputs".into());
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
        let x = cx.input(0)?;
        let rank = cx.shape(x)?.len();
        let dtype = cx.dtype(x);
        let ax = axis(cx.fwd(), rank).map_err(|e| cx.err(e))?;
        let n = cx.fwd().outputs.len();
        let mut parts = Vec::with_capacity(n);
        for p in 0..n {
            let part = match grads.get(p).copied().flatten() {
                Some(g) => g,
                None => {
                    let s = cx.shape(cx.output(p)?)?;
                    cx.zeros(&s, dtype)?
                }
            };
            parts.push(part);
        }
        out[0] = Some(cx.op(
            "Concat",
            &parts,
            vec![crate::ir::graph::attr_int("axis", ax as i64)],
        ));
        Ok(out)
    }
}

/// `Split`.
pub static SPLIT: Split = Split { name: "Split" };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::{attr_int, attr_ints};
    use crate::ir::DType;
    use crate::ops::util::testing::*;

    fn shapes(out: Vec<Fact>) -> Vec<Vec<Dim>> {
        out.into_iter().filter_map(|f| f.shape).collect()
    }

    #[test]
    fn infer_equal_explicit_and_symbolic() {
        let n = node("Split", 2, vec![attr_int("axis", 1)]);
        let out = infer(&SPLIT, &n, &[f32_fact("N,8")], 13).unwrap().unwrap();
        assert_eq!(shapes(out), vec![shape("N,4"), shape("N,4")]);
        let out = infer(&SPLIT, &n, &[f32_fact("N,8"), i64_const(&[3, 5])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(shapes(out), vec![shape("N,3"), shape("N,5")]);
        let n0 = node("Split", 2, vec![attr_ints("split", &[1, 2])]);
        let out = infer(&SPLIT, &n0, &[f32_fact("K,4")], 11).unwrap().unwrap();
        assert_eq!(shapes(out), vec![shape("1,4"), shape("2,4")]);
        let out = infer(&SPLIT, &node("Split", 2, vec![]), &[f32_fact("K,4")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(shapes(out), vec![shape("?,4"), shape("?,4")]);
        let dynamic = Some(Fact::new(Some(DType::I64), shape("2")));
        let out = infer(&SPLIT, &n, &[f32_fact("N,8"), dynamic], 13)
            .unwrap()
            .unwrap();
        assert_eq!(shapes(out), vec![shape("N,?"), shape("N,?")]);
    }

    #[test]
    fn num_outputs_uneven() {
        let n = node("Split", 3, vec![attr_int("num_outputs", 3)]);
        let out = infer(&SPLIT, &n, &[f32_fact("7")], 18).unwrap().unwrap();
        assert_eq!(shapes(out), vec![shape("3"), shape("3"), shape("1")]);
        let x = Tensor::from_i64(vec![7], &[0, 1, 2, 3, 4, 5, 6]);
        let r = eval(&SPLIT, &n, &[Some(x)], 18).unwrap().unwrap();
        assert_eq!(r[2].to_i64_vec().unwrap(), vec![6]);
        let n4 = node("Split", 4, vec![attr_int("num_outputs", 4)]);
        assert!(infer(&SPLIT, &n4, &[f32_fact("5")], 18).is_err());
    }

    #[test]
    fn eval_inner_axis() {
        let n = node("Split", 2, vec![attr_int("axis", -1)]);
        let x = Tensor::from_f32(vec![2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let r = eval(&SPLIT, &n, &[Some(x), i64s(&[1, 2])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].shape(), &[2, 1]);
        assert_eq!(r[0].to_f64_vec().unwrap(), vec![0.0, 3.0]);
        assert_eq!(r[1].to_f64_vec().unwrap(), vec![1.0, 2.0, 4.0, 5.0]);
    }

    #[test]
    fn inconsistent_sizes_are_errors() {
        let n = node("Split", 2, vec![]);
        assert!(infer(&SPLIT, &n, &[f32_fact("5")], 13).is_err());
        assert!(infer(&SPLIT, &n, &[f32_fact("5"), i64_const(&[2, 2])], 13).is_err());
        assert!(infer(&SPLIT, &n, &[f32_fact("5"), i64_const(&[5])], 13).is_err());
        assert!(eval(&SPLIT, &n, &[i64s(&[1, 2, 3]), i64s(&[-1, 4])], 13)
            .unwrap()
            .is_err());
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ir::graph::{attr_int, attr_ints};
    use crate::ir::Model;
    use crate::ops::channel::testing::*;

    /// conv(8) → Split on the channels → two convs → Concat of their outputs.
    fn split_net(opset: i64, sizes: Option<&[i64]>) -> Model {
        let mut n = Net::new();
        // A symbolic batch: the rewrite must not need every dim.
        let x = n.batch_input(&[3, 4, 4]);
        let c = n.conv(x, 3, 8);
        let mut attrs = vec![attr_int("axis", 1)];
        let mut ins = vec![Some(c)];
        match sizes {
            Some(s) if opset < 13 => attrs.push(attr_ints("split", s)),
            Some(s) => ins.push(Some(n.ints(s))),
            None if opset >= 18 => attrs.push(attr_int("num_outputs", 2)),
            None => {}
        }
        let parts = n.op_n("Split", &ins, 2, attrs);
        let sizes = sizes.map_or(vec![4, 4], |s| s.to_vec());
        let a = n.conv(parts[0], sizes[0] as usize, 2);
        let b = n.conv(parts[1], sizes[1] as usize, 2);
        let y = n.op("Add", &[a, b], vec![]);
        n.output(y);
        n.model(opset)
    }

    #[test]
    fn split_ranges_are_prunable_in_every_form() {
        for (opset, sizes) in [
            (11, Some(&[3i64, 5][..])),
            (13, Some(&[3, 5][..])),
            (13, None),
            (18, None),
        ] {
            let m = split_net(opset, sizes);
            let cg = analyse(&m);
            let prunable: Vec<_> = cg.groups.iter().filter(|g| g.prunable()).collect();
            assert_eq!(prunable.len(), 1, "opset {opset}");
            assert_eq!(prunable[0].channels, 8);
            let pruned = prunes_exactly(&m);
            let node = pruned
                .graph
                .node_ids()
                .find(|&i| pruned.graph.node(i).op_type == "Split");
            let node = pruned.graph.node(node.unwrap());
            assert!(node.attr("num_outputs").is_none());
        }
    }
}
