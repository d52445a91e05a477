//! `Reshape`: same data, new shape. The target comes from input 1 (opset ≥ 5) or the `shape`
//! attribute (opset 1–4); `0` copies the input dim at that position (unless `allowzero=1`,
//! opset 14, where it means size 0) and one `-1` is inferred from the element count.
//!
//! Symbolic dims are carried: copied dims keep their symbol, and `-1` is solved by cancelling
//! equal symbols on both sides (`[N,3,4,4]` → `[0,-1]` gives `[N,48]`, → `[-1,48]` gives
//! `[N,48]`). When the target is not a compile-time constant only the rank is known (from the
//! target's length). Folding is a reshape, so any type.

use crate::error::{Error, Result};
use crate::ir::{Dim, Fact, Node, Tensor};

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
    target: &[i64],
    allowzero: bool,
) -> std::result::Result<Vec<Dim>, String> {
    if target.iter().filter(|&&t| t == -1).count() > 1 {
        return Err(format!("target {target:?} has more than one -1"));
    }
    if let Some(t) = target.iter().find(|&&t| t < -1) {
        return Err(format!("target {target:?} has invalid size {t}"));
    }
    if allowzero && target.contains(&0) && target.contains(&-1) {
        return Err(format!(
            "target {target:?} has both 0 and -1 with allowzero=1"
        ));
    }
    let mut out: Vec<Option<Dim>> = Vec::with_capacity(target.len());
    for (i, &t) in target.iter().enumerate() {
        out.push(match t {
            -1 => None,
            0 if !allowzero => Some(match input {
                Some(s) => s.get(i).cloned().ok_or_else(|| {
                    format!(
                        "target {target:?} copies dim {i} of a rank-{} input",
                        s.len()
                    )
                })?,
                None => Dim::Unknown,
            }),
            t => Some(Dim::Known(t as usize)),
        });
    }
    let Some(input) = input else {
        return Ok(out.into_iter().map(|d| d.unwrap_or(Dim::Unknown)).collect());
    };
    let overflow = || format!("target {target:?} overflows");
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
                "cannot reshape {} elements into {target:?} ({out_known} elements)",
                in_known
            ));
        }
        return Ok(out.into_iter().flatten().collect());
    };
    let solved = if !out_rest.is_empty() || in_rest.contains(&Dim::Unknown) {
        Dim::Unknown
    } else if out_known == 0 || in_known % out_known != 0 {
        if fully_known {
            return Err(format!(
                "cannot reshape {in_known} elements into {target:?}"
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

/// The target from the attribute (opset < 5) or the constant input 1.
fn target(node: &Node, shape_input: Option<&Tensor>, opset: i64) -> Option<Vec<i64>> {
    if opset < 5 {
        return node.attr_ints("shape").map(<[i64]>::to_vec);
    }
    shape_input?.to_i64_vec()
}

impl Op for Reshape {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let x = util::required_input(cx, 0)?.unwrap_or(&util::UNKNOWN_FACT);
        let allowzero = cx.node.attr_i("allowzero").unwrap_or(0) != 0;
        let t = if cx.opset < 5 {
            Some(
                cx.node
                    .attr_ints("shape")
                    .ok_or_else(|| cx.err("attribute 'shape' is missing"))?
                    .to_vec(),
            )
        } else {
            cx.ints(1)
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
            return Some(Err(err(format!("cannot resolve target {t:?}"))));
        };
        Some(x.reshaped(shape).map(|t| vec![t]))
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
        target_shape(Some(&shape(input)), t, false)
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
        assert!(target_shape(Some(&shape("2,3")), &[0, -1], true).is_err());
        assert_eq!(
            target_shape(Some(&shape("0,3")), &[0, 3], true).unwrap(),
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

    /// `x.view(x.size(0), -1)` as PyTorch exports it, through the real shape driver.
    fn torch_flatten(batch: &str) -> Option<Vec<Dim>> {
        use crate::analysis::infer_shapes;
        use crate::ir::{Graph, Model};
        use crate::onnx::proto::{ModelProto, OperatorSetIdProto, ValueInfoProto};
        let mut g = Graph::new();
        let x = g.add_value("x");
        let fx = Fact::new(Some(DType::F32), shape(&format!("{batch},3,4,4")));
        g.set_decl(
            x,
            ValueInfoProto {
                name: Some("x".into()),
                r#type: Some(fx.to_type()),
                ..Default::default()
            },
        );
        g.inputs.push(x);
        let zero = g.add_initializer("zero", Tensor::from_i64(vec![], &[0]));
        let axes = g.add_initializer("axes", Tensor::from_i64(vec![1], &[0]));
        let minus1 = g.add_initializer("minus1", Tensor::from_i64(vec![1], &[-1]));
        let sh = g.add_node("shape", "Shape", &[Some(x)], &["sh"], vec![]);
        let sh = g.node(sh).output(0);
        let n = g.add_node("gather", "Gather", &[sh, Some(zero)], &["n"], vec![]);
        let n = g.node(n).output(0);
        let n1 = g.add_node("unsq", "Unsqueeze", &[n, Some(axes)], &["n1"], vec![]);
        let n1 = g.node(n1).output(0);
        let cat = g.add_node(
            "cat",
            "Concat",
            &[n1, Some(minus1)],
            &["target"],
            vec![attr_int("axis", 0)],
        );
        let target = g.node(cat).output(0);
        let r = g.add_node("reshape", "Reshape", &[Some(x), target], &["y"], vec![]);
        let y = g.node(r).output(0)?;
        g.outputs.push(y);
        let model = Model {
            graph: g,
            rest: ModelProto {
                opset_import: vec![OperatorSetIdProto {
                    domain: Some(String::new()),
                    version: Some(13),
                }],
                ..Default::default()
            },
        };
        infer_shapes(&model).ok()?.get(y)?.shape.clone()
    }

    #[test]
    fn shape_arithmetic_folds_through_the_driver() {
        assert_eq!(torch_flatten("2"), Some(shape("2,48")));
        // A symbolic batch has no value to fold: only the rank survives.
        assert_eq!(torch_flatten("N"), Some(shape("?,?")));
    }
}
