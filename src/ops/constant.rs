//! `Constant`: produces the tensor held in one attribute: `value` (a tensor), `value_float`,
//! `value_floats` (float32 scalar / 1-D), `value_int`, `value_ints` (int64 scalar / 1-D).
//! `value_string`/`value_strings` give a string type and shape but no value, and
//! `sparse_value` gives type and shape from the sparse tensor's declaration without
//! densifying it (neither is folded).

use crate::error::Result;
use crate::ir::{DType, Dim, Fact, Node, Tensor};

use super::{Cx, Op};

/// The `Constant` op.
pub struct Constant {
    name: &'static str,
}

/// What the attributes say: a value, or only a type and shape.
enum Content {
    Value(Tensor),
    TypeOnly(Fact),
}

/// Reads the value attribute (`Ok(None)`: there is none).
fn content(node: &Node) -> Result<Option<Content>> {
    if let Some(a) = node.attr("value") {
        let Some(t) = a.t.as_ref() else {
            return Ok(None);
        };
        return Tensor::from_proto(t).map(|t| Some(Content::Value(t)));
    }
    if let Some(a) = node.attr("value_float") {
        return Ok(Some(Content::Value(Tensor::from_f32(vec![], &[a.f()]))));
    }
    if let Some(a) = node.attr("value_floats") {
        return Ok(Some(Content::Value(Tensor::from_f32(
            vec![a.floats.len()],
            &a.floats,
        ))));
    }
    if let Some(a) = node.attr("value_int") {
        return Ok(Some(Content::Value(Tensor::from_i64(vec![], &[a.i()]))));
    }
    if let Some(a) = node.attr("value_ints") {
        return Ok(Some(Content::Value(Tensor::from_i64(
            vec![a.ints.len()],
            &a.ints,
        ))));
    }
    if node.attr("value_string").is_some() {
        return Ok(Some(Content::TypeOnly(Fact::new(
            Some(DType::String),
            vec![],
        ))));
    }
    if let Some(a) = node.attr("value_strings") {
        let shape = vec![Dim::Known(a.strings.len())];
        return Ok(Some(Content::TypeOnly(Fact::new(
            Some(DType::String),
            shape,
        ))));
    }
    if let Some(sp) = node
        .attr("sparse_value")
        .and_then(|a| a.sparse_tensor.as_ref())
    {
        let dtype = sp
            .values
            .as_ref()
            .and_then(|v| DType::from_onnx(v.data_type()));
        let shape = sp
            .dims
            .iter()
            .map(|&d| usize::try_from(d).map_or(Dim::Unknown, Dim::Known))
            .collect();
        return Ok(Some(Content::TypeOnly(Fact::new(dtype, shape))));
    }
    Ok(None)
}

impl Op for Constant {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((0, 0))
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        match content(cx.node).map_err(|e| cx.err(e.to_string()))? {
            Some(Content::Value(t)) => Ok(Some(vec![Fact::constant(t)])),
            Some(Content::TypeOnly(f)) => Ok(Some(vec![f])),
            None => Err(cx.err("has no value attribute")),
        }
    }

    fn eval(
        &self,
        node: &Node,
        _inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        match content(node) {
            Ok(Some(Content::Value(t))) => Some(Ok(vec![t])),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// `Constant`.
pub static CONSTANT: Constant = Constant { name: "Constant" };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::{attr_ints, attr_tensor};
    use crate::onnx::proto::{AttributeProto, TensorProto};
    use crate::ops::util::testing::*;

    #[test]
    fn tensor_value_is_carried() {
        let t = Tensor::from_f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let n = node("Constant", 1, vec![attr_tensor("value", &t)]);
        let out = infer(&CONSTANT, &n, &[], 13).unwrap().unwrap();
        assert_eq!(out[0].shape, Some(shape("2,2")));
        assert_eq!(out[0].value.as_ref(), Some(&t));
        let r = eval(&CONSTANT, &n, &[], 13).unwrap().unwrap();
        assert_eq!(r[0], t);
    }

    #[test]
    fn list_and_scalar_attributes() {
        let n = node("Constant", 1, vec![attr_ints("value_ints", &[1, -1])]);
        let r = eval(&CONSTANT, &n, &[], 13).unwrap().unwrap();
        assert_eq!(r[0].shape(), &[2]);
        assert_eq!(r[0].to_i64_vec().unwrap(), vec![1, -1]);
        let a = AttributeProto {
            name: Some("value_float".into()),
            f: Some(2.5),
            ..Default::default()
        };
        let out = infer(&CONSTANT, &node("Constant", 1, vec![a]), &[], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape, Some(vec![]));
        assert_eq!(
            out[0].value.as_ref().unwrap().to_f64_vec().unwrap(),
            vec![2.5]
        );
    }

    #[test]
    fn strings_have_type_but_no_value() {
        let a = AttributeProto {
            name: Some("value_strings".into()),
            strings: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        let n = node("Constant", 1, vec![a]);
        let out = infer(&CONSTANT, &n, &[], 13).unwrap().unwrap();
        assert_eq!(out[0].dtype, Some(DType::String));
        assert_eq!(out[0].shape, Some(shape("2")));
        assert!(out[0].value.is_none());
        assert!(eval(&CONSTANT, &n, &[], 13).is_none());
    }

    #[test]
    fn bad_tensor_or_missing_value_is_an_error() {
        let bad = TensorProto {
            dims: vec![3],
            data_type: Some(DType::F32.to_onnx()),
            float_data: vec![1.0],
            ..Default::default()
        };
        let a = AttributeProto {
            name: Some("value".into()),
            t: Some(bad),
            ..Default::default()
        };
        let n = node("Constant", 1, vec![a]);
        assert!(infer(&CONSTANT, &n, &[], 13).is_err());
        assert!(eval(&CONSTANT, &n, &[], 13).unwrap().is_err());
        assert!(infer(&CONSTANT, &node("Constant", 1, vec![]), &[], 13).is_err());
    }
}
