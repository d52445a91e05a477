//! Small builders shared by the backward rules ([`super::vjp`]): constants in the forward
//! element type, constant integer inputs, the opset-dependent forms of the ops the rules emit
//! (`ReduceSum`, `Split`, `Pad`, `Slice` take their parameters as inputs in newer opsets and
//! as attributes in older ones), and the window geometry of Conv and pooling nodes resolved to
//! explicit pads from static shapes, with its adjoint (a `ConvTranspose` that scatters every
//! output position back onto the window it read).

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

/// A constant of element type `dtype` (the type of the values it combines with).
pub(crate) fn fconst(
    cx: &mut VjpCx,
    dtype: DType,
    shape: Vec<usize>,
    vals: &[f64],
) -> Result<ValueId> {
    let t = Tensor::from_f64_as(dtype, shape, vals).map_err(|e| cx.err(e.to_string()))?;
    Ok(cx.constant(t))
}

/// Window geometry of a Conv or pooling node with every size known: input spatial dims `input`
/// read by windows of `kernel` taps (spaced `dilations`, moved by `strides`) starting `begin`
/// before the input, giving `output` positions.
pub struct Geometry {
    /// Input spatial sizes.
    pub input: Vec<usize>,
    /// Output spatial sizes.
    pub output: Vec<usize>,
    /// Kernel taps per axis.
    pub kernel: Vec<usize>,
    /// Strides.
    pub strides: Vec<usize>,
    /// Dilations.
    pub dilations: Vec<usize>,
    /// Pads before the input (explicit, `auto_pad` resolved).
    pub begin: Vec<usize>,
    /// Pads after the input.
    pub end: Vec<usize>,
}

impl Geometry {
    /// Reads the forward node's window attributes; `input`/`output` are the spatial dims.
    pub fn read(
        cx: &VjpCx,
        kernel: Vec<usize>,
        input: Vec<usize>,
        output: Vec<usize>,
    ) -> Result<Geometry> {
        let n = kernel.len();
        if input.len() != n || output.len() != n {
            return Err(cx.err(format!(
                "{n}-D window on {}-D input and {}-D output",
                input.len(),
                output.len()
            )));
        }
        let list = |name: &str, default: usize, len: usize| -> Result<Vec<usize>> {
            match cx.attr_ints(name) {
                Some(v) if v.len() == len && v.iter().all(|&x| x >= 0) => {
                    Ok(v.iter().map(|&x| x as usize).collect())
                }
                Some(v) => Err(cx.err(format!("{name}={v:?} does not fit {len} values"))),
                None => Ok(vec![default; len]),
            }
        };
        let strides = list("strides", 1, n)?;
        let dilations = list("dilations", 1, n)?;
        if strides.contains(&0) || dilations.contains(&0) || kernel.contains(&0) {
            return Err(cx.err("kernel sizes, strides and dilations must be positive"));
        }
        let auto = cx.fwd().attr_s("auto_pad").unwrap_or_default();
        let (begin, end) = match auto.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut b = Vec::with_capacity(n);
                let mut e = Vec::with_capacity(n);
                for i in 0..n {
                    let span = strides[i] * output[i].saturating_sub(1)
                        + dilations[i] * (kernel[i] - 1)
                        + 1;
                    let total = span.saturating_sub(input[i]);
                    let small = total / 2;
                    if auto == "SAME_UPPER" {
                        b.push(small);
                        e.push(total - small);
                    } else {
                        b.push(total - small);
                        e.push(small);
                    }
                }
                (b, e)
            }
            "VALID" => (vec![0; n], vec![0; n]),
            _ => {
                let p = list("pads", 0, 2 * n)?;
                (p[..n].to_vec(), p[n..].to_vec())
            }
        };
        let g = Geometry {
            input,
            output,
            kernel,
            strides,
            dilations,
            begin,
            end,
        };
        for i in 0..n {
            if g.output[i] == 0 || g.span(i) <= g.begin[i] {
                return Err(cx.err(format!("empty window geometry on spatial axis {i}")));
            }
        }
        Ok(g)
    }

    /// Spatial rank.
    pub fn rank(&self) -> usize {
        self.kernel.len()
    }

    /// Extent covered by every window along axis `i`, from the first window's first tap.
    pub fn span(&self, i: usize) -> usize {
        self.strides[i] * (self.output[i] - 1) + self.dilations[i] * (self.kernel[i] - 1) + 1
    }

    /// Pads as one explicit ONNX list (begin then end).
    pub fn pads(&self) -> Vec<i64> {
        self.begin
            .iter()
            .chain(&self.end)
            .map(|&p| p as i64)
            .collect()
    }

    /// Product of the kernel sizes.
    pub fn taps(&self) -> usize {
        self.kernel.iter().product()
    }

    /// The adjoint of the window read: `ConvTranspose(dy, w)` with this geometry's strides and
    /// dilations and pads/output padding chosen so the result has exactly the input's spatial
    /// size (positions no window reads get zero).
    pub fn scatter(&self, cx: &mut VjpCx, dy: ValueId, w: ValueId, group: usize) -> ValueId {
        let n = self.rank();
        let mut pads = vec![0i64; 2 * n];
        let mut out_pad = vec![0i64; n];
        for i in 0..n {
            pads[i] = self.begin[i] as i64;
            // What the full transposed output has beyond the input's end (negative: too short).
            let beyond = self.span(i) as i64 - (self.begin[i] + self.input[i]) as i64;
            if beyond >= 0 {
                pads[n + i] = beyond;
            } else {
                out_pad[i] = -beyond;
            }
        }
        let to_i64 = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        let mut attrs = vec![
            attr_ints("kernel_shape", &to_i64(&self.kernel)),
            attr_ints("strides", &to_i64(&self.strides)),
            attr_ints("dilations", &to_i64(&self.dilations)),
            attr_ints("pads", &pads),
            attr_int("group", group as i64),
        ];
        if out_pad.iter().any(|&p| p != 0) {
            attrs.push(attr_ints("output_padding", &out_pad));
        }
        cx.op("ConvTranspose", &[dy, w], attrs)
    }
}
