//! `Cast`: converts every element to the type given by attribute `to`; the shape is unchanged.
//! Folding handles real numeric and bool types: integer→integer exactly (two's-complement
//! wrap, as C casts do), float→integer by truncation toward zero (saturating at the type's
//! range), anything→bool as "non-zero". Not folded: strings, complex, float8/4-bit and other
//! sub-byte targets or sources (a same-type cast still passes any tensor through), and the
//! opset-19 `saturate` attribute (only meaningful for float8). An integer shape vector tracked
//! element by element (`Fact::sym`) keeps its elements through a cast to another integer type.
//! Channels pass through every axis.

use crate::error::Result;
use crate::ir::{DType, Fact, Node, Tensor};

use super::channel::{pass_all, ConstCx, Link, LinkCx};
use super::{util, Cx, Op};

/// The `Cast` op.
pub struct Cast {
    name: &'static str,
}

/// Whether folding converts through i64 (integers and bool).
fn is_int(d: DType) -> bool {
    use DType::*;
    matches!(d, I64 | I32 | I16 | I8 | U64 | U32 | U16 | U8 | Bool)
}

/// Casts a constant to `to` (`None`: a type folding does not handle).
fn cast(t: &Tensor, to: DType) -> Option<Result<Tensor>> {
    if t.dtype() == to {
        return Some(Ok(t.clone()));
    }
    let shape = t.shape().to_vec();
    if is_int(t.dtype()) && is_int(to) {
        let v = t.to_i64_vec()?;
        if to == DType::Bool {
            let b: Vec<u8> = v.iter().map(|&x| u8::from(x != 0)).collect();
            return Some(Tensor::from_raw(to, shape, b.into()));
        }
        let w = util::elem_size(to)?;
        let mut data = Vec::with_capacity(v.len() * w);
        for x in v {
            data.extend_from_slice(&x.to_le_bytes()[..w]);
        }
        return Some(Tensor::from_raw(to, shape, data.into()));
    }
    let numeric =
        |d: DType| is_int(d) || matches!(d, DType::F32 | DType::F64 | DType::F16 | DType::BF16);
    if !numeric(t.dtype()) || !numeric(to) {
        return None;
    }
    let v = t.to_f64_vec()?;
    if is_int(to) && to != DType::Bool {
        // NaN and infinities have no integer value; leave them to the runtime.
        if v.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let v: Vec<f64> = v.iter().map(|x| x.trunc()).collect();
        return Some(Tensor::from_f64_as(to, shape, &v));
    }
    Some(Tensor::from_f64_as(to, shape, &v))
}

impl Op for Cast {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((1, 1))
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let code = cx
            .node
            .attr_i("to")
            .ok_or_else(|| cx.err("attribute 'to' is missing"))?;
        let to = i32::try_from(code)
            .ok()
            .and_then(DType::from_onnx)
            .ok_or_else(|| cx.err(format!("attribute 'to' = {code} is not a known type")))?;
        let x = util::required_input(cx, 0)?.unwrap_or(&util::UNKNOWN_FACT);
        let ints = |d: Option<DType>| d.is_some_and(|d| is_int(d) && d != DType::Bool);
        if ints(x.dtype) && ints(Some(to)) {
            if let (Some(elems), Some(r @ 0..=1)) = (x.sym_elems(), x.rank()) {
                return Ok(Some(vec![Fact::of_sym(Some(to), r == 0, elems)]));
            }
        }
        Ok(Some(vec![Fact {
            dtype: Some(to),
            shape: x.shape.clone(),
            ..Default::default()
        }]))
    }

    fn eval(
        &self,
        node: &Node,
        inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        let t = inputs.first().copied().flatten()?;
        let to = DType::from_onnx(i32::try_from(node.attr_i("to")?).ok()?)?;
        cast(t, to).map(|r| r.map(|t| vec![t]))
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        cx.inputs.first().copied().flatten()
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        pass_all(cx)
    }
}

/// `Cast`.
pub static CAST: Cast = Cast { name: "Cast" };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_int;
    use crate::ops::util::testing::*;

    fn cast_node(to: DType) -> Node {
        node("Cast", 1, vec![attr_int("to", to.to_onnx() as i64)])
    }

    #[test]
    fn infer_keeps_symbolic_shape() {
        let out = infer(&CAST, &cast_node(DType::F16), &[f32_fact("N,3")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].dtype, Some(DType::F16));
        assert_eq!(out[0].shape, Some(shape("N,3")));
    }

    #[test]
    fn float_to_int_truncates_and_int_narrowing_wraps() {
        let t = Tensor::from_f32(vec![4], &[1.7, -1.7, 2.0, 0.0]);
        let r = eval(&CAST, &cast_node(DType::I32), &[Some(t)], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].dtype(), DType::I32);
        assert_eq!(r[0].to_i64_vec().unwrap(), vec![1, -1, 2, 0]);
        let t = Tensor::from_i64(vec![3], &[300, -1, 5]);
        let r = eval(&CAST, &cast_node(DType::U8), &[Some(t.clone())], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].to_i64_vec().unwrap(), vec![44, 255, 5]);
        let r = eval(&CAST, &cast_node(DType::Bool), &[Some(t)], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].to_i64_vec().unwrap(), vec![1, 1, 1]);
    }

    #[test]
    fn int_to_float_and_exact_i64() {
        let big = (1i64 << 53) + 1;
        let t = Tensor::from_i64(vec![2], &[big, -3]);
        let r = eval(&CAST, &cast_node(DType::I64), &[Some(t.clone())], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].to_i64_vec().unwrap(), vec![big, -3]);
        let r = eval(&CAST, &cast_node(DType::F32), &[Some(t)], 13)
            .unwrap()
            .unwrap();
        assert_eq!(r[0].to_f64_vec().unwrap()[1], -3.0);
    }

    #[test]
    fn bad_or_missing_to_is_an_error() {
        assert!(infer(&CAST, &node("Cast", 1, vec![]), &[f32_fact("1")], 13).is_err());
        let n = node("Cast", 1, vec![attr_int("to", 999)]);
        assert!(infer(&CAST, &n, &[f32_fact("1")], 13).is_err());
        // Strings are not folded.
        let t = Tensor::from_f32(vec![1], &[1.0]);
        assert!(eval(&CAST, &cast_node(DType::String), &[Some(t)], 13).is_none());
    }

    #[test]
    fn int_cast_keeps_symbolic_elements() {
        let out = infer(&CAST, &cast_node(DType::I32), &[sym_fact("N,2")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].dtype, Some(DType::I32));
        assert_eq!(out[0].sym, Some(syms("N,2")));
        let out = infer(&CAST, &cast_node(DType::F32), &[sym_fact("N,2")], 13)
            .unwrap()
            .unwrap();
        assert_eq!(out[0].sym, None);
    }
}

#[cfg(test)]
mod channel_tests {
    use crate::ir::graph::attr_int;
    use crate::ops::channel::testing::*;

    #[test]
    fn cast_passes_channels() {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let c = n.conv(x, 3, 6);
        let f = n.op("Cast", &[c], vec![attr_int("to", 1)]);
        let y = n.conv(f, 6, 2);
        n.output(y);
        let m = n.model(13);
        let cg = analyse(&m);
        assert!(group(&cg, &m, c).prunable());
        prunes_exactly(&m);
    }
}
