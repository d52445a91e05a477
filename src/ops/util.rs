//! Helpers shared by op files: broadcasting, common fact shapes, element-wise evaluation.

use crate::error::{Error, Result};
use crate::ir::{DType, Dim, Fact, Shape, Tensor};

use super::Cx;

/// Numpy-style multidirectional broadcast of shapes. Symbolic dims broadcast against 1 and
/// against equal names; a known size > 1 wins over a symbol. Errors on incompatible sizes.
pub fn broadcast(shapes: &[&Shape]) -> std::result::Result<Shape, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let mut acc = Dim::Known(1);
        for s in shapes {
            let off = rank - s.len();
            if i < off {
                continue;
            }
            let d = &s[i - off];
            acc = match (&acc, d) {
                (Dim::Known(1), x) | (x, Dim::Known(1)) => x.clone(),
                (Dim::Known(a), Dim::Known(b)) if a == b => Dim::Known(*a),
                (Dim::Known(a), Dim::Known(b)) => {
                    return Err(format!("cannot broadcast dimension {a} with {b}"));
                }
                (Dim::Known(a), _) | (_, Dim::Known(a)) => Dim::Known(*a),
                (Dim::Sym(a), Dim::Sym(b)) if a == b => Dim::Sym(a.clone()),
                _ => Dim::Unknown,
            };
        }
        out.push(acc);
    }
    Ok(out)
}

/// The output fact "same type and shape as input `port`".
pub fn like_input(cx: &Cx, port: usize) -> Result<Option<Vec<Fact>>> {
    let x = cx.input(port)?;
    Ok(Some(vec![Fact {
        dtype: x.dtype,
        shape: x.shape.clone(),
        value: None,
    }]))
}

/// Strided index walk for broadcasting `from` (right-aligned) into `to`.
pub fn broadcast_index(to: &[usize], from: &[usize]) -> Vec<usize> {
    let n: usize = to.iter().product();
    let off = to.len() - from.len();
    let mut strides = vec![0usize; to.len()];
    let mut acc = 1;
    for i in (0..from.len()).rev() {
        strides[i + off] = if from[i] == 1 { 0 } else { acc };
        acc *= from[i];
    }
    let mut idx = vec![0usize; n];
    let mut coord = vec![0usize; to.len()];
    let mut cur = 0usize;
    for slot in idx.iter_mut() {
        *slot = cur;
        for ax in (0..to.len()).rev() {
            coord[ax] += 1;
            cur += strides[ax];
            if coord[ax] < to[ax] {
                break;
            }
            cur -= strides[ax] * coord[ax];
            coord[ax] = 0;
        }
    }
    idx
}

/// Evaluates an element-wise n-ary op with broadcasting: integers exactly in i64 (when every
/// input is an integer type), otherwise in f64; the result has `out_dtype` (default: the first
/// input's type).
pub fn eval_elementwise(
    inputs: &[Option<&Tensor>],
    out_dtype: Option<DType>,
    fi: impl Fn(&[i64]) -> i64,
    ff: impl Fn(&[f64]) -> f64,
) -> Option<Result<Vec<Tensor>>> {
    let ts: Vec<&Tensor> = inputs.iter().map(|t| *t).collect::<Option<Vec<_>>>()?;
    let first = ts.first()?;
    let shapes: Vec<Shape> = ts
        .iter()
        .map(|t| t.shape().iter().map(|&d| Dim::Known(d)).collect())
        .collect();
    let refs: Vec<&Shape> = shapes.iter().collect();
    let out_shape: Vec<usize> = match broadcast(&refs) {
        Ok(s) => s.iter().map(|d| d.known().unwrap_or(1)).collect(),
        Err(e) => return Some(Err(Error::tensor("", e))),
    };
    let dtype = out_dtype.unwrap_or(first.dtype());
    let idx: Vec<Vec<usize>> = ts
        .iter()
        .map(|t| broadcast_index(&out_shape, t.shape()))
        .collect();
    let n: usize = out_shape.iter().product();
    let all_int = ts.iter().all(|t| !t.dtype().is_float());
    if all_int && !dtype.is_float() {
        let vals: Vec<Vec<i64>> = ts.iter().map(|t| t.to_i64_vec()).collect::<Option<_>>()?;
        let mut args = vec![0i64; ts.len()];
        let out: Vec<f64> = (0..n)
            .map(|i| {
                for (k, v) in vals.iter().enumerate() {
                    args[k] = v[idx[k][i]];
                }
                fi(&args) as f64
            })
            .collect();
        if dtype == DType::I64 {
            let out: Vec<i64> = out.iter().map(|v| *v as i64).collect();
            return Some(Ok(vec![Tensor::from_i64(out_shape, &out)]));
        }
        return Some(Tensor::from_f64_as(dtype, out_shape, &out).map(|t| vec![t]));
    }
    let vals: Vec<Vec<f64>> = ts.iter().map(|t| t.to_f64_vec()).collect::<Option<_>>()?;
    let mut args = vec![0f64; ts.len()];
    let out: Vec<f64> = (0..n)
        .map(|i| {
            for (k, v) in vals.iter().enumerate() {
                args[k] = v[idx[k][i]];
            }
            ff(&args)
        })
        .collect();
    Some(Tensor::from_f64_as(dtype, out_shape, &out).map(|t| vec![t]))
}

/// Known dims as `usize`, or `None`.
pub fn concrete(shape: &[Dim]) -> Option<Vec<usize>> {
    shape.iter().map(Dim::known).collect()
}

/// Reads an `ints` attribute, or the constant input at `port` (newer opsets moved attributes
/// such as `axes` to inputs). `Ok(None)`: neither is given. `Err`: the input is not constant.
pub fn ints_attr_or_input(cx: &Cx, attr: &str, port: usize) -> Result<Option<Vec<i64>>> {
    if let Some(v) = cx.node.attr_ints(attr) {
        return Ok(Some(v.to_vec()));
    }
    if !cx.has_input(port) {
        return Ok(None);
    }
    cx.ints(port).map(Some).ok_or_else(|| {
        cx.err(format!(
            "input {port} ({attr}) is not a compile-time constant"
        ))
    })
}

/// Window geometry of Conv/ConvTranspose/pooling along the spatial axes, from attributes.
pub struct Window {
    /// Kernel size per spatial axis.
    pub kernel: Vec<usize>,
    /// Strides.
    pub strides: Vec<usize>,
    /// Dilations.
    pub dilations: Vec<usize>,
    /// Begin pads then end pads (ONNX layout).
    pub pads: Vec<usize>,
    /// `auto_pad` attribute.
    pub auto_pad: String,
    /// `ceil_mode` (pooling).
    pub ceil_mode: bool,
}

impl Window {
    /// Reads the window attributes; `kernel` is the kernel shape (from the weight or attribute).
    pub fn read(cx: &Cx, kernel: Vec<usize>) -> Result<Window> {
        let n = kernel.len();
        let list = |name: &str, default: usize, len: usize| -> Result<Vec<usize>> {
            match cx.node.attr_ints(name) {
                Some(v) if v.len() == len && v.iter().all(|x| *x >= 0) => {
                    Ok(v.iter().map(|x| *x as usize).collect())
                }
                Some(v) => Err(cx.err(format!("attribute {name}={v:?} does not fit {len} values"))),
                None => Ok(vec![default; len]),
            }
        };
        let w = Window {
            strides: list("strides", 1, n)?,
            dilations: list("dilations", 1, n)?,
            pads: list("pads", 0, 2 * n)?,
            auto_pad: cx
                .node
                .attr_s("auto_pad")
                .unwrap_or_else(|| "NOTSET".into()),
            ceil_mode: cx.node.attr_i("ceil_mode").unwrap_or(0) != 0,
            kernel,
        };
        if w.strides.contains(&0) || w.dilations.contains(&0) {
            return Err(cx.err("strides and dilations must be positive"));
        }
        Ok(w)
    }

    /// Output size along spatial axis `i` for input size `d` (forward window: Conv, pooling).
    pub fn out_dim(&self, i: usize, d: &Dim, cx: &Cx) -> Result<Dim> {
        let Some(x) = d.known() else {
            return Ok(Dim::Unknown);
        };
        let (k, s, dl) = (self.kernel[i], self.strides[i], self.dilations[i]);
        let eff = dl * (k.max(1) - 1) + 1;
        let n = self.kernel.len();
        Ok(Dim::Known(match self.auto_pad.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => x.div_ceil(s),
            "VALID" => {
                if x < eff {
                    return Err(cx.err(format!("window {eff} is larger than the input {x}")));
                }
                (x - eff) / s + 1
            }
            _ => {
                let padded = x + self.pads[i] + self.pads[i + n];
                if padded < eff {
                    return Err(cx.err(format!(
                        "window {eff} is larger than the padded input {padded}"
                    )));
                }
                let span = padded - eff;
                let mut o = span / s + 1;
                if self.ceil_mode && span % s != 0 {
                    o += 1;
                    // The last window must start inside the input or left padding.
                    if (o - 1) * s >= x + self.pads[i] {
                        o -= 1;
                    }
                }
                o
            }
        }))
    }
}
