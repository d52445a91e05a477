//! `Reshape`: same data, new shape. The target comes from input 1 (opset ≥ 5) or the `shape`
//! attribute (opset 1–4); `0` copies the input dim at that position (unless `allowzero=1`,
//! opset 14, where it means size 0) and one `-1` is inferred from the element count.
//!
//! Symbolic dims are carried: copied dims keep their symbol, and `-1` is solved by cancelling
//! equal symbols on both sides (`[N,3,4,4]` → `[0,-1]` gives `[N,48]`, → `[-1,48]` gives
//! `[N,48]`). The target may itself hold symbols (`Fact::sym`, from shape arithmetic such as
//! `x.view(x.size(0), -1)`): a symbolic element is that dim, an unknown one an unknown dim.
//! When nothing is known of the target's elements only the rank is known (from its length).
//! Folding is a reshape, so any type.
//!
//! Channels: see [`reshape_links`]. After removal, the target's positive entries at channel
//! axes become the new widths (`0` and `-1` entries adapt by themselves). A computed target
//! whose elements are known (shape arithmetic with folded pieces, e.g. ShuffleNet's
//! `view(N, 2, 24, H, W)` after the channel count was folded) is replaced by a constant one,
//! its symbolic entries copying the input's dim (`0`) or inferred (`-1`); a channel entry
//! of a computed target that cannot be so replaced blocks.
//!
//! Backward: the gradient reshaped back to the input shape.

use crate::error::{Error, Result};
use crate::ir::fact::sym_string;
use crate::ir::{Dim, Fact, Node, SymInt, Tensor};

use super::channel::{reshape_links, ConstCx, Link, LinkCx, Rewrite, RewriteCx, Slot};
use super::{util, Cx, Op};

/// The `Reshape` op.
pub struct Reshape {
    name: &'static str,
}

/// Splits dims into the product of the known ones and the list of the others.
fn factor(dims: &[&Dim]) -> Option<(usize, Vec<Dim>)> {
    let mut known = 1usize;
    let mut rest = Vec::new();
    for d in dims {
        match d {
            Dim::Known(k) => known = known.checked_mul(*k)?,
            d => rest.push((*d).clone()),
        }
    }
    Some((known, rest))
}

/// The output shape for `target` applied to an input of shape `input` (`None`: rank unknown).
fn target_shape(
    input: Option<&[Dim]>,
    target: &[SymInt],
    allowzero: bool,
) -> std::result::Result<Vec<Dim>, String> {
    let text = || sym_string(target);
    let minus_one = SymInt::Int(-1);
    if target.iter().filter(|&t| *t == minus_one).count() > 1 {
        return Err(format!("target {} has more than one -1", text()));
    }
    if let Some(t) = target.iter().filter_map(SymInt::int).find(|&t| t < -1) {
        return Err(format!("target {} has invalid size {t}", text()));
    }
    if allowzero && target.contains(&SymInt::Int(0)) && target.contains(&minus_one) {
        return Err(format!(
            "target {} has both 0 and -1 with allowzero=1",
            text()
        ));
    }
    let mut out: Vec<Option<Dim>> = Vec::with_capacity(target.len());
    for (i, t) in target.iter().enumerate() {
        out.push(match t {
            SymInt::Int(-1) => None,
            SymInt::Int(0) if !allowzero => Some(match input {
                Some(s) => s.get(i).cloned().ok_or_else(|| {
                    format!(
                        "target {} copies dim {i} of a rank-{} input",
                        text(),
                        s.len()
                    )
                })?,
                None => Dim::Unknown,
            }),
            t => Some(t.to_dim()),
        });
    }
    let Some(input) = input else {
        return Ok(out.into_iter().map(|d| d.unwrap_or(Dim::Unknown)).collect());
    };
    let overflow = || format!("target {} overflows", text());
    let (in_known, mut in_rest) = factor(&input.iter().collect::<Vec<_>>()).ok_or_else(overflow)?;
    let (out_known, mut out_rest) =
        factor(&out.iter().flatten().collect::<Vec<_>>()).ok_or_else(overflow)?;
    // Cancel equal symbols on both sides.
    out_rest.retain(|d| match d {
        Dim::Sym(_) => match in_rest.iter().position(|x| x == d) {
            Some(p) => {
                in_rest.remove(p);
                false
            }
            None => true,
        },
        _ => true,
    });
    let fully_known = in_rest.is_empty() && out_rest.is_empty();
    let Some(hole) = out.iter().position(Option::is_none) else {
        if fully_known && in_known != out_known {
            return Err(format!(
                "cannot reshape {in_known} elements into {} ({out_known} elements)",
                text()
            ));
        }
        return Ok(out.into_iter().flatten().collect());
    };
    let solved = if !out_rest.is_empty() || in_rest.contains(&Dim::Unknown) {
        Dim::Unknown
    } else if out_known == 0 || in_known % out_known != 0 {
        if fully_known {
            return Err(format!(
                "cannot reshape {in_known} elements into {}",
                text()
            ));
        }
        Dim::Unknown
    } else {
        let q = in_known / out_known;
        match &in_rest[..] {
            [] => Dim::Known(q),
            [s] if q == 1 => s.clone(),
            _ => Dim::Unknown,
        }
    };
    out[hole] = Some(solved);
    Ok(out.into_iter().map(|d| d.unwrap_or(Dim::Unknown)).collect())
}

/// A constant target equivalent to `elems` for an input of shape `input`: a symbolic entry
/// equal to the input's dim at the same position copies it (`0`), one other becomes `-1`.
fn constant_target(elems: &[SymInt], input: &[Dim], allowzero: bool) -> Option<Vec<i64>> {
    let mut hole = elems.contains(&SymInt::Int(-1));
    let mut out = Vec::with_capacity(elems.len());
    for (j, e) in elems.iter().enumerate() {
        out.push(match e {
            SymInt::Int(v) => *v,
            SymInt::Sym(s) if !allowzero && input.get(j) == Some(&Dim::Sym(s.clone())) => 0,
            SymInt::Sym(_) if !hole => {
                hole = true;
                -1
            }
            _ => return None,
        });
    }
    Some(out)
}

/// The target as a constant list (see [`constant_target`]), when it can be one.
fn target_ints(
    node: &Node,
    opset: i64,
    target: Option<&Fact>,
    input: Option<&Fact>,
) -> Option<Vec<i64>> {
    if opset < 5 {
        return node.attr_ints("shape").map(<[i64]>::to_vec);
    }
    let target = target?;
    if let Some(v) = target.value.as_ref().and_then(Tensor::to_i64_vec) {
        return Some(v);
    }
    let allowzero = node.attr_i("allowzero").unwrap_or(0) != 0;
    constant_target(&target.sym_elems()?, input?.shape.as_deref()?, allowzero)
}

/// Known target elements.
fn ints(v: &[i64]) -> Vec<SymInt> {
    v.iter().map(|&d| SymInt::Int(d)).collect()
}

/// The target from the attribute (opset < 5) or the constant input 1.
fn target(node: &Node, shape_input: Option<&Tensor>, opset: i64) -> Option<Vec<SymInt>> {
    if opset < 5 {
        return node.attr_ints("shape").map(ints);
    }
    Some(ints(&shape_input?.to_i64_vec()?))
}

impl Op for Reshape {
    fn op_type(&self) -> &'static str {
        self.name
    }

    /// A rearrangement of input 0's elements: never negative when they are not.
    fn non_negative(&self, cx: &super::simplify::SignCx) -> bool {
        cx.input(0)
    }

    fn arity(&self, opset: i64) -> Option<(usize, usize)> {
        // shape became an input at opset 5 (see `check` for an omitted one).
        Some(if opset < 5 { (1, 1) } else { (2, 2) })
    }

    fn check(&self, cx: &super::CheckCx) -> Vec<String> {
        if cx.opset < 5 {
            return Vec::new();
        }
        let mut errs = Vec::new();
        if cx.node.input(1).is_none() {
            errs.push("has no shape input, which opset 5 and later require (arity)".into());
        }
        if let Some(t) = cx.dtypes.get(1).copied().flatten() {
            if t != crate::ir::DType::I64 {
                errs.push(format!(
                    "shape input is {t}, the spec requires int64 (input type)"
                ));
            }
        }
        errs
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let x = util::required_input(cx, 0)?.unwrap_or(&util::UNKNOWN_FACT);
        let allowzero = cx.node.attr_i("allowzero").unwrap_or(0) != 0;
        let t = if cx.opset < 5 {
            let v = cx
                .node
                .attr_ints("shape")
                .ok_or_else(|| cx.err("attribute 'shape' is missing"))?;
            Some(ints(v))
        } else {
            cx.ints(1)
                .map(|v| ints(&v))
                .or_else(|| util::sym_input(cx, 1))
        };
        let shape = match t {
            Some(t) => {
                Some(target_shape(x.shape.as_deref(), &t, allowzero).map_err(|e| cx.err(e))?)
            }
            None => match util::required_input(cx, 1)?
                .unwrap_or(&util::UNKNOWN_FACT)
                .shape
                .as_deref()
            {
                Some([Dim::Known(k)]) => Some(vec![Dim::Unknown; *k]),
                Some([_]) | None => None,
                Some(s) => {
                    return Err(cx.err(format!("shape input must be 1-D, has rank {}", s.len())))
                }
            },
        };
        Ok(Some(vec![Fact {
            dtype: x.dtype,
            shape,
            ..Default::default()
        }]))
    }

    fn eval(
        &self,
        node: &Node,
        inputs: &[Option<&Tensor>],
        opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        let x = inputs.first().copied().flatten()?;
        let t = target(node, inputs.get(1).copied().flatten(), opset)?;
        let allowzero = node.attr_i("allowzero").unwrap_or(0) != 0;
        let dims: Vec<Dim> = x.shape().iter().map(|&d| Dim::Known(d)).collect();
        let err = |m: String| Error::node(&node.name, &node.op_type, m);
        let shape = match target_shape(Some(&dims), &t, allowzero) {
            Ok(s) => s,
            Err(m) => return Some(Err(err(m))),
        };
        let Some(shape) = shape.iter().map(Dim::known).collect::<Option<Vec<_>>>() else {
            return Some(Err(err(format!(
                "cannot resolve target {}",
                sym_string(&t)
            ))));
        };
        Some(x.reshaped(shape).map(|t| vec![t]))
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        cx.inputs.first().copied().flatten()
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        let fact = |p: usize| cx.inputs.get(p).copied().flatten();
        let target = target_ints(cx.node, cx.opset, fact(1), fact(0));
        // Entries of a computed target we cannot rewrite: only `0`/`-1` adapt by themselves.
        let elems = fact(1).and_then(Fact::sym_elems);
        let adapts = |j: usize| {
            target.is_some()
                || elems
                    .as_ref()
                    .and_then(|e| e.get(j))
                    .is_some_and(|e| matches!(e, SymInt::Int(0 | -1)))
        };
        reshape_links(cx, cx.in_shape(0), cx.out_shape(0))
            .into_iter()
            .map(|l| match l {
                Link::Pass { from, to, .. } if !adapts(to.axis) => Link::Block {
                    slot: from,
                    reason: "a computed reshape target fixes the channel count".into(),
                },
                l => l,
            })
            .collect()
    }

    fn rewrite_channels(&self, cx: &RewriteCx) -> Result<Rewrite> {
        let mut rw = Rewrite::default();
        let fact = |p: usize| cx.inputs.get(p).copied().flatten();
        let Some(mut t) = target_ints(cx.node, cx.opset, fact(1), fact(0)) else {
            return Ok(rw);
        };
        let mut changed = false;
        for (j, v) in t.iter_mut().enumerate() {
            if *v > 0 && cx.mask(Slot::output(0, j)).is_some() {
                if let Some(n) = cx.new_out_len(0, j) {
                    *v = n as i64;
                    changed = true;
                }
            }
        }
        if changed {
            if cx.opset < 5 {
                rw.attrs.push(crate::ir::graph::attr_ints("shape", &t));
            } else {
                rw.inputs.push((1, Tensor::from_i64(vec![t.len()], &t)));
            }
        }
        Ok(rw)
    }

    fn vjp(
        &self,
        cx: &mut super::vjp::VjpCx,
        grads: &[Option<crate::ir::ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<crate::ir::ValueId>>> {
        super::grad_util::reshape_back(cx, grads, needs)
    }
}

/// `Reshape`.
pub static RESHAPE: Reshape = Reshape { name: "Reshape" };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::{attr_int, attr_ints};
    use crate::ir::DType;
    use crate::ops::util::testing::*;

    fn ts(input: &str, t: &[i64]) -> std::result::Result<Vec<Dim>, String> {
        target_shape(Some(&shape(input)), &ints(t), false)
    }

    #[test]
    fn solves_minus_one_with_symbols() {
        assert_eq!(ts("N,3,4,4", &[0, -1]).unwrap(), shape("N,48"));
        assert_eq!(ts("N,3,4,4", &[-1, 48]).unwrap(), shape("N,48"));
        assert_eq!(ts("N,3,4,4", &[0, 3, -1]).unwrap(), shape("N,3,16"));
        assert_eq!(ts("2,3,4", &[4, -1]).unwrap(), shape("4,6"));
        assert_eq!(ts("N,3,4", &[-1, 2, 6]).unwrap(), shape("N,2,6"));
        assert_eq!(ts("N,M,4", &[0, -1]).unwrap(), shape("N,?"));
        assert_eq!(ts("N,?,4", &[0, 0, -1]).unwrap(), shape("N,?,?"));
        assert_eq!(ts("2,3", &[0, 0]).unwrap(), shape("2,3"));
    }

    #[test]
    fn invalid_targets() {
        assert!(ts("2,3", &[-1, -1]).is_err());
        assert!(ts("2,3", &[4, -1]).is_err());
        assert!(ts("2,3", &[7]).is_err());
        assert!(ts("2,3", &[0, 0, 0]).is_err());
        assert!(ts("2,3", &[-2, 3]).is_err());
        assert!(target_shape(Some(&shape("2,3")), &ints(&[0, -1]), true).is_err());
        assert_eq!(
            target_shape(Some(&shape("0,3")), &ints(&[0, 3]), true).unwrap(),
            shape("0,3")
        );
    }

    #[test]
    fn infer_constant_and_dynamic_target() {
        let n = node("Reshape", 1, vec![]);
        let out = infer(
            &RESHAPE,
            &n,
            &[f32_fact("N,3,4,4"), i64_const(&[0, -1])],
            13,
        )
        .unwrap()
        .unwrap();
        assert_eq!(out[0].shape, Some(shape("N,48")));
        let dynamic = Some(Fact::new(Some(DType::I64), shape("3")));
        let out = infer(&RESHAPE, &n, &[f32_fact("N,3,4,4"), dynamic], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("?,?,?")));
        let old = node("Reshape", 1, vec![attr_ints("shape", &[0, -1])]);
        let out = infer(&RESHAPE, &old, &[f32_fact("N,2,2")], 4)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("N,4")));
        assert!(infer(&RESHAPE, &n, &[f32_fact("2,3"), i64_const(&[5])], 13).is_err());
    }

    #[test]
    fn eval_reshapes_with_allowzero() {
        let n = node("Reshape", 1, vec![]);
        let x = Tensor::from_i64(vec![2, 3], &[1, 2, 3, 4, 5, 6]);
        let r = eval(&RESHAPE, &n, &[Some(x.clone()), i64s(&[-1])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].shape(), &[6]);
        assert_eq!(r[0].to_i64_vec().unwrap(), vec![1, 2, 3, 4, 5, 6]);
        let z = node("Reshape", 1, vec![attr_int("allowzero", 1)]);
        assert!(eval(&RESHAPE, &z, &[Some(x), i64s(&[0, 3])], 14)
            .unwrap()
            .is_err());
    }

    /// Builds shape-arithmetic chains as PyTorch exports them, for the real shape driver.
    struct Chain {
        g: crate::ir::Graph,
        n: usize,
    }

    impl Chain {
        /// A graph with float input `x` of shape `x_shape`.
        fn new(x_shape: &str) -> (Chain, Option<crate::ir::ValueId>) {
            let mut g = crate::ir::Graph::new();
            let x = g.add_value("x");
            let fx = Fact::new(Some(DType::F32), shape(x_shape));
            g.set_decl(
                x,
                crate::onnx::proto::ValueInfoProto {
                    name: Some("x".into()),
                    r#type: Some(fx.to_type()),
                    ..Default::default()
                },
            );
            g.inputs.push(x);
            (Chain { g, n: 0 }, Some(x))
        }

        /// An int64 initializer (0-D when `scalar`).
        fn int(&mut self, v: &[i64], scalar: bool) -> Option<crate::ir::ValueId> {
            self.n += 1;
            let shape = if scalar { vec![] } else { vec![v.len()] };
            let name = format!("c{}", self.n);
            Some(self.g.add_initializer(&name, Tensor::from_i64(shape, v)))
        }

        /// A node with one output.
        fn op(
            &mut self,
            op: &str,
            ins: &[Option<crate::ir::ValueId>],
            attrs: Vec<crate::onnx::proto::AttributeProto>,
        ) -> Option<crate::ir::ValueId> {
            self.n += 1;
            let name = format!("v{}", self.n);
            let n = self.g.add_node(&name, op, ins, &[&name], attrs);
            self.g.node(n).output(0)
        }

        /// `Unsqueeze(v, [0])`.
        fn unsqueeze(&mut self, v: Option<crate::ir::ValueId>) -> Option<crate::ir::ValueId> {
            let axes = self.int(&[0], false);
            self.op("Unsqueeze", &[v, axes], vec![])
        }

        /// The facts of `vs` after shape inference of the model (opset 13).
        fn infer(self, vs: &[Option<crate::ir::ValueId>]) -> Vec<Option<Fact>> {
            use crate::onnx::proto::{ModelProto, OperatorSetIdProto};
            let model = crate::ir::Model {
                graph: self.g,
                rest: ModelProto {
                    opset_import: vec![OperatorSetIdProto {
                        domain: Some(String::new()),
                        version: Some(13),
                    }],
                    ..Default::default()
                },
            };
            let shapes = crate::analysis::infer_shapes(&model).unwrap();
            vs.iter().map(|v| shapes.get((*v)?).cloned()).collect()
        }
    }

    /// `x.view(x.size(0), -1)`: Shape→Gather(0)→Unsqueeze→Concat([n, -1])→Reshape.
    fn torch_flatten(batch: &str) -> Option<Vec<Dim>> {
        let (mut c, x) = Chain::new(&format!("{batch},3,4,4"));
        let sh = c.op("Shape", &[x], vec![]);
        let zero = c.int(&[0], true);
        let n = c.op("Gather", &[sh, zero], vec![]);
        let n1 = c.unsqueeze(n);
        let minus1 = c.int(&[-1], false);
        let target = c.op("Concat", &[n1, minus1], vec![attr_int("axis", 0)]);
        let y = c.op("Reshape", &[x, target], vec![]);
        c.infer(&[y]).remove(0)?.shape
    }

    #[test]
    fn shape_arithmetic_resolves_through_the_driver() {
        assert_eq!(torch_flatten("2"), Some(shape("2,48")));
        assert_eq!(torch_flatten("N"), Some(shape("N,48")));
    }

    #[test]
    fn sliced_shape_target_keeps_the_batch() {
        // `x.view(*x.shape[:1], -1)`: Shape→Slice([0:1])→Concat([-1])→Reshape.
        let (mut c, x) = Chain::new("N,3,4,4");
        let sh = c.op("Shape", &[x], vec![]);
        let (s, e) = (c.int(&[0], false), c.int(&[1], false));
        let head = c.op("Slice", &[sh, s, e], vec![]);
        let minus1 = c.int(&[-1], false);
        let target = c.op("Concat", &[head, minus1], vec![attr_int("axis", 0)]);
        let y = c.op("Reshape", &[x, target], vec![]);
        let f = c.infer(&[target, y]);
        let t = f[0].as_ref().unwrap();
        assert_eq!(t.sym, Some(vec![SymInt::Sym("N".into()), SymInt::Int(-1)]));
        assert!(t.value.is_none());
        assert_eq!(f[1].as_ref().unwrap().shape, Some(shape("N,48")));
    }

    #[test]
    fn shufflenet_channel_shuffle() {
        // b, c, h, w = x.size(); x.view(b, 2, c // 2, h, w).transpose(1, 2).view(b, c, h, w)
        let (mut c, x) = Chain::new("N,116,28,28");
        let sh = c.op("Shape", &[x], vec![]);
        let dims: Vec<_> = (0..4)
            .map(|i| {
                let i = c.int(&[i], true);
                c.op("Gather", &[sh, i], vec![attr_int("axis", 0)])
            })
            .collect();
        let two = c.int(&[2], true);
        let half = c.op("Div", &[dims[1], two], vec![]);
        let half = c.op("Cast", &[half], vec![attr_int("to", 7)]);
        let (b, ch, h, w) = (
            c.unsqueeze(dims[0]),
            c.unsqueeze(dims[1]),
            c.unsqueeze(dims[2]),
            c.unsqueeze(dims[3]),
        );
        let groups = c.int(&[2], false);
        let half = c.unsqueeze(half);
        let t1 = c.op(
            "Concat",
            &[b, groups, half, h, w],
            vec![attr_int("axis", 0)],
        );
        let y1 = c.op("Reshape", &[x, t1], vec![]);
        let tr = c.op(
            "Transpose",
            &[y1],
            vec![attr_ints("perm", &[0, 2, 1, 3, 4])],
        );
        let t2 = c.op("Concat", &[b, ch, h, w], vec![attr_int("axis", 0)]);
        let y2 = c.op("Reshape", &[tr, t2], vec![]);
        let f = c.infer(&[half, y1, y2]);
        // c // 2 is known, so it has a value (constant folding keeps working).
        let v = f[0].as_ref().unwrap().value.as_ref().unwrap();
        assert_eq!(v.to_i64_vec().unwrap(), vec![58]);
        assert_eq!(f[1].as_ref().unwrap().shape, Some(shape("N,2,58,28,28")));
        assert_eq!(f[2].as_ref().unwrap().shape, Some(shape("N,116,28,28")));
    }

    #[test]
    fn symbolic_target_elements() {
        let n = node("Reshape", 1, vec![]);
        let target = Fact::of_sym(
            Some(DType::I64),
            false,
            vec![SymInt::Sym("N".into()), SymInt::Unknown, SymInt::Int(-1)],
        );
        let out = infer(&RESHAPE, &n, &[f32_fact("N,3,4"), Some(target)], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("N,?,?")));
        let target = Fact::of_sym(
            Some(DType::I64),
            false,
            vec![SymInt::Sym("M".into()), SymInt::Int(-1)],
        );
        let out = infer(&RESHAPE, &n, &[f32_fact("N,3,4"), Some(target)], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("M,?")));
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ir::graph::{attr_int, attr_ints};
    use crate::ir::Tensor;
    use crate::ops::channel::testing::*;

    #[test]
    fn channel_shuffle_couples_the_groups() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 8);
        let t1 = n.ints(&[1, 2, 4, 4, 4]);
        let v = n.op("Reshape", &[c, t1], vec![]);
        let t = n.op("Transpose", &[v], vec![attr_ints("perm", &[0, 2, 1, 3, 4])]);
        let t2 = n.ints(&[1, 8, 4, 4]);
        let s = n.op("Reshape", &[t, t2], vec![]);
        let y = n.conv(s, 8, 2);
        n.output(y);
        let m = n.model(13);
        let cg = analyse(&m);
        let g = group(&cg, &m, c);
        assert!(g.prunable(), "{:?}", g.blocked);
        // Channels k and k + 4 go together.
        assert_eq!(g.channels, 4);
        let pruned = prunes_exactly(&m);
        assert_eq!(shape_of(&pruned, &m.graph.value(v).name), "[1,2,3,4,4]");
    }

    #[test]
    fn mixing_the_channels_with_other_axes_blocks() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let t = n.ints(&[1, 4, 24]);
        let r = n.op("Reshape", &[c, t], vec![]);
        n.output(r);
        let cg = analyse(&n.model(13));
        assert!(blocked_with(
            &cg,
            "reshape mixes the channel axis with others"
        ));
    }

    #[test]
    fn computed_targets_with_folded_channel_counts_become_constants() {
        let mut n = Net::new();
        let x = n.batch_input(&[3, 4, 4]);
        let c = n.conv(x, 3, 8);
        let shape = n.op("Shape", &[c], vec![]);
        let zero = n.g.add_initializer("zero", Tensor::from_i64(vec![], &[0]));
        let batch = n.op("Gather", &[shape, zero], vec![]);
        let batch = n.op("Unsqueeze", &[batch], vec![attr_ints("axes", &[0])]);
        let rest = n.ints(&[2, 4, 16]);
        let t1 = n.op("Concat", &[batch, rest], vec![attr_int("axis", 0)]);
        let v = n.op("Reshape", &[c, t1], vec![]);
        let rest = n.ints(&[8, 4, 4]);
        let t2 = n.op("Concat", &[batch, rest], vec![attr_int("axis", 0)]);
        let s = n.op("Reshape", &[v, t2], vec![]);
        let y = n.conv(s, 8, 2);
        n.output(y);
        let m = n.model(11);
        let cg = analyse(&m);
        let g = group(&cg, &m, c);
        assert!(g.prunable(), "{:?}", g.blocked);
        assert_eq!(g.channels, 4);
        let pruned = prunes_exactly(&m);
        assert_eq!(shape_of(&pruned, &m.graph.value(v).name), "[N,2,3,16]");
        assert_eq!(shape_of(&pruned, &m.graph.value(s).name), "[N,6,4,4]");
    }
}
