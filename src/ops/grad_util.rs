//! Small builders shared by the element-wise and shape backward rules ([`super::vjp`]):
//! constants in the forward element type, constant integer inputs, and the opset-dependent
//! forms of the ops the rules emit (`ReduceSum`, `Split`, `Pad`, `Slice` take their
//! parameters as inputs in newer opsets and as attributes in older ones).

use crate::error::Result;
use crate::ir::graph::{attr_int, attr_ints};
use crate::ir::{DType, Tensor, ValueId};

use super::vjp::VjpCx;

/// The gradient of output 0 (an error naming the node when absent).
pub(crate) fn out_grad(cx: &VjpCx, grads: &[Option<ValueId>]) -> Result<ValueId> {
    grads
        .first()
        .copied()
        .flatten()
        .ok_or_else(|| cx.err("no gradient reaches output 0"))
}

/// The constant integer contents of forward input `port`: `None` when absent, `Some(None)`
/// when wired but not a compile-time constant.
pub(crate) fn const_ints(cx: &VjpCx, port: usize) -> Option<Option<Vec<i64>>> {
    let v = cx.fwd().input(port)?;
    Some(
        cx.shapes
            .get(v)
            .and_then(|f| f.value.as_ref())
            .or_else(|| cx.g.init(v))
            .and_then(Tensor::to_i64_vec),
    )
}

/// A scalar constant of element type `dtype`.
pub(crate) fn scalar(cx: &mut VjpCx, x: f64, dtype: DType) -> Result<ValueId> {
    let t = Tensor::from_f64_as(dtype, vec![], &[x]).map_err(|e| cx.err(e.to_string()))?;
    Ok(cx.constant(t))
}

/// A zero tensor of `shape` and `dtype`.
pub(crate) fn zeros(cx: &mut VjpCx, shape: &[usize], dtype: DType) -> Result<ValueId> {
    let n: usize = shape.iter().product();
    let t = Tensor::from_f64_as(dtype, shape.to_vec(), &vec![0.0; n])
        .map_err(|e| cx.err(e.to_string()))?;
    Ok(cx.constant(t))
}

/// `v` reshaped to the static `shape`.
pub(crate) fn reshape(cx: &mut VjpCx, v: ValueId, shape: &[usize]) -> ValueId {
    let s: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let s = cx.ints(&s);
    cx.op("Reshape", &[v, s], vec![])
}

/// The gradient `g` reshaped back to the shape of forward input 0 (ops that only move data
/// without reordering it: Reshape, Flatten, Squeeze, Unsqueeze).
pub(crate) fn reshape_back(
    cx: &mut VjpCx,
    grads: &[Option<ValueId>],
    needs: &[bool],
) -> Result<Vec<Option<ValueId>>> {
    let mut out = vec![None; needs.len()];
    if needs.first() == Some(&true) {
        let g = out_grad(cx, grads)?;
        let xs = cx.shape(cx.input(0)?)?;
        out[0] = Some(reshape(cx, g, &xs));
    }
    Ok(out)
}

/// `ReduceSum(v)` over `axes` (axes as an input from opset 13, an attribute before).
pub(crate) fn reduce_sum(cx: &mut VjpCx, v: ValueId, axes: &[i64], keep: bool) -> ValueId {
    let keep = attr_int("keepdims", i64::from(keep));
    if cx.opset >= 13 {
        let a = cx.ints(axes);
        cx.op("ReduceSum", &[v, a], vec![keep])
    } else {
        cx.op("ReduceSum", &[v], vec![keep, attr_ints("axes", axes)])
    }
}

/// `Split(v)` along `axis` into parts of `sizes` (sizes as an input from opset 13).
pub(crate) fn split(cx: &mut VjpCx, v: ValueId, axis: usize, sizes: &[usize]) -> Vec<ValueId> {
    let s: Vec<i64> = sizes.iter().map(|&d| d as i64).collect();
    let ax = attr_int("axis", axis as i64);
    if cx.opset >= 13 {
        let si = cx.ints(&s);
        cx.op_n("Split", &[Some(v), Some(si)], sizes.len(), vec![ax])
    } else {
        cx.op_n(
            "Split",
            &[Some(v)],
            sizes.len(),
            vec![ax, attr_ints("split", &s)],
        )
    }
}

/// Zero `Pad` of `v` by `pads` (`[begins.., ends..]` over every axis; pads as an input from
/// opset 11).
pub(crate) fn pad_zeros(cx: &mut VjpCx, v: ValueId, pads: &[i64]) -> ValueId {
    if cx.opset >= 11 {
        let p = cx.ints(pads);
        cx.op("Pad", &[v, p], vec![])
    } else {
        cx.op("Pad", &[v], vec![attr_ints("pads", pads)])
    }
}

/// `Slice(v)` with step 1 (parameters as inputs from opset 10).
pub(crate) fn slice(
    cx: &mut VjpCx,
    v: ValueId,
    starts: &[i64],
    ends: &[i64],
    axes: &[i64],
) -> ValueId {
    if cx.opset >= 10 {
        let (s, e, a) = (cx.ints(starts), cx.ints(ends), cx.ints(axes));
        cx.op("Slice", &[v, s, e, a], vec![])
    } else {
        cx.op(
            "Slice",
            &[v],
            vec![
                attr_ints("starts", starts),
                attr_ints("ends", ends),
                attr_ints("axes", axes),
            ],
        )
    }
}
