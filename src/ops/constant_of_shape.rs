//! `ConstantOfShape`: a tensor of the shape given by its int64 input, filled with the single
//! element of attribute `value` (default float32 0). Inference gives the full shape when the
//! input's elements are known, constant or symbolic (`Fact::sym`), else only the rank (from
//! the input's length, dims `Unknown`). Folding
//! repeats the value's raw bytes, so any byte-addressable type; results over
//! [`util::MAX_EVAL_BYTES`] and sub-byte or string fill values are not folded.
//! Channels: its input is a shape vector, never channels; the default rule (block) applies.

use crate::error::{Error, Result};
use crate::ir::{Dim, Fact, Node, Tensor};

use super::{util, Cx, Op};

/// The `ConstantOfShape` op.
pub struct ConstantOfShape {
    name: &'static str,
}

/// The fill value (one element), default float32 0.
fn fill(node: &Node) -> Result<Tensor> {
    let err = |m: String| Error::node(&node.name, &node.op_type, m);
    let Some(tp) = node.attr("value").and_then(|a| a.t.as_ref()) else {
        return Ok(Tensor::from_f32(vec![], &[0.0]));
    };
    let t = Tensor::from_proto(tp).map_err(|e| err(e.to_string()))?;
    if t.len() != 1 {
        return Err(err(format!(
            "attribute 'value' must hold one element, has shape {:?}",
            t.shape()
        )));
    }
    Ok(t)
}

/// The output dims from the shape input's values.
fn dims(v: &[i64]) -> std::result::Result<Vec<usize>, String> {
    v.iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d} in {v:?}")))
        .collect()
}

impl Op for ConstantOfShape {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((1, 1))
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let dtype = Some(fill(cx.node)?.dtype());
        let input = util::required_input(cx, 0)?.unwrap_or(&util::UNKNOWN_FACT);
        if let Some(v) = cx.ints(0) {
            let d = dims(&v).map_err(|e| cx.err(e))?;
            return Ok(Some(vec![Fact::new(
                dtype,
                d.into_iter().map(Dim::Known).collect(),
            )]));
        }
        if let Some(d) = util::shape_input(cx, 0) {
            return Ok(Some(vec![Fact::new(dtype, d.map_err(|e| cx.err(e))?)]));
        }
        let shape = match input.shape.as_deref() {
            Some([Dim::Known(r)]) => Some(vec![Dim::Unknown; *r]),
            Some([_]) | None => None,
            Some(s) => {
                return Err(cx.err(format!("shape input must be 1-D, has rank {}", s.len())));
            }
        };
        Ok(Some(vec![Fact {
            dtype,
            shape,
            ..Default::default()
        }]))
    }

    fn eval(
        &self,
        node: &Node,
        inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        let v = inputs.first().copied().flatten()?.to_i64_vec()?;
        let value = match fill(node) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        let shape = match dims(&v) {
            Ok(d) => d,
            Err(m) => return Some(Err(Error::node(&node.name, &node.op_type, m))),
        };
        let es = util::elem_size(value.dtype())?;
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        if n.checked_mul(es)? > util::MAX_EVAL_BYTES {
            return None;
        }
        let data = value.raw().repeat(n);
        Some(Tensor::from_raw(value.dtype(), shape, data.into()).map(|t| vec![t]))
    }
}

/// `ConstantOfShape`.
pub static CONSTANT_OF_SHAPE: ConstantOfShape = ConstantOfShape {
    name: "ConstantOfShape",
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_tensor;
    use crate::ir::DType;
    use crate::ops::util::testing::*;

    #[test]
    fn infer_from_constant_or_length() {
        let n = node("ConstantOfShape", 1, vec![]);
        let out = infer(&CONSTANT_OF_SHAPE, &n, &[i64_const(&[2, 3])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].dtype, Some(DType::F32));
        assert_eq!(out[0].shape, Some(shape("2,3")));
        let len3 = Some(Fact::new(Some(DType::I64), shape("3")));
        let out = infer(&CONSTANT_OF_SHAPE, &n, &[len3], 13).unwrap().unwrap();
        assert_eq!(out[0].shape, Some(shape("?,?,?")));
        let sym = Some(Fact::new(Some(DType::I64), shape("K")));
        let out = infer(&CONSTANT_OF_SHAPE, &n, &[sym], 13).unwrap().unwrap();
        assert_eq!(out[0].shape, None);
    }

    #[test]
    fn eval_fills_with_value() {
        let v = Tensor::from_i64(vec![1], &[7]);
        let n = node("ConstantOfShape", 1, vec![attr_tensor("value", &v)]);
        let r = eval(&CONSTANT_OF_SHAPE, &n, &[i64s(&[2, 2])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].dtype(), DType::I64);
        assert_eq!(r[0].shape(), &[2, 2]);
        assert_eq!(r[0].to_i64_vec().unwrap(), vec![7; 4]);
        let n = node("ConstantOfShape", 1, vec![]);
        let r = eval(&CONSTANT_OF_SHAPE, &n, &[i64s(&[])], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].shape(), &[] as &[usize]);
        assert_eq!(r[0].to_f64_vec().unwrap(), vec![0.0]);
    }

    #[test]
    fn errors_and_limits() {
        let n = node("ConstantOfShape", 1, vec![]);
        assert!(infer(&CONSTANT_OF_SHAPE, &n, &[i64_const(&[2, -1])], 13).is_err());
        assert!(eval(&CONSTANT_OF_SHAPE, &n, &[i64s(&[-2])], 13)
            .unwrap()
            .is_err());
        let two = Tensor::from_f32(vec![2], &[1.0, 2.0]);
        let bad = node("ConstantOfShape", 1, vec![attr_tensor("value", &two)]);
        assert!(infer(&CONSTANT_OF_SHAPE, &bad, &[i64_const(&[1])], 13).is_err());
        // Too large to materialise: not folded, no allocation.
        assert!(eval(&CONSTANT_OF_SHAPE, &n, &[i64s(&[1 << 20, 1 << 20])], 13).is_none());
    }

    #[test]
    fn symbolic_shape_input() {
        let n = node("ConstantOfShape", 1, vec![]);
        let out = infer(&CONSTANT_OF_SHAPE, &n, &[sym_fact("N,?,3")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(shape("N,?,3")));
        assert!(infer(&CONSTANT_OF_SHAPE, &n, &[sym_fact("N,-1")], 13).is_err());
    }
}
