//! Helpers shared by op files: broadcasting, common fact shapes, element-wise evaluation.

use crate::error::{Error, Result};
use crate::ir::{DType, Dim, Fact, Node, Shape, SymInt, Tensor};

use super::Cx;

/// The rule of integer `Div` and `Mod` (inputs 0 and 1): a constant divisor holding 0, or −1
/// under a constant dividend holding its type's minimum, is undefined, and the runtimes'
/// kernels trap on it (SIGFPE) instead of erroring. One message per broken rule.
pub fn integer_division_traps(cx: &super::CheckCx) -> Vec<String> {
    use crate::ir::DType;
    let tensor = |port: usize| cx.consts.get(port).copied().flatten();
    let Some(y) = tensor(1)
        .filter(|t| !t.dtype().is_float())
        .and_then(crate::ir::Tensor::to_i64_vec)
    else {
        return Vec::new();
    };
    let overflow = y.contains(&-1)
        && tensor(0).is_some_and(|x| {
            let minimum = match x.dtype() {
                DType::I8 => i64::from(i8::MIN),
                DType::I16 => i64::from(i16::MIN),
                DType::I32 => i64::from(i32::MIN),
                DType::I64 => i64::MIN,
                _ => return false,
            };
            x.to_i64_vec().is_some_and(|v| v.contains(&minimum))
        });
    if y.contains(&0) {
        vec!["integer division by zero (undefined; runtimes trap on it)".into()]
    } else if overflow {
        vec!["integer division of the type's minimum by -1 overflows (undefined)".into()]
    } else {
        Vec::new()
    }
}

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
        ..Default::default()
    }]))
}

/// The elements of input `port` when it is a small integer tensor of dimensions, constant or
/// tracked symbolically (see [`Fact::sym_elems`]).
pub fn sym_input(cx: &Cx, port: usize) -> Option<Vec<SymInt>> {
    cx.inputs.get(port).copied().flatten()?.sym_elems()
}

/// Input `port` read as a shape (ConstantOfShape): one [`Dim`] per element. `Err` names a
/// negative element.
pub fn shape_input(cx: &Cx, port: usize) -> Option<std::result::Result<Vec<Dim>, String>> {
    let elems = sym_input(cx, port)?;
    Some(
        elems
            .iter()
            .map(|e| match e.int() {
                Some(v) if v < 0 => Err(format!(
                    "negative dimension {v} in {}",
                    crate::ir::fact::sym_string(&elems)
                )),
                _ => Ok(e.to_dim()),
            })
            .collect(),
    )
}

/// The elements of `x` (0-D/1-D) moved unchanged into output shape `shape` (Unsqueeze,
/// Squeeze, Identity): `Some` only when `shape` is 0-D or 1-D with the same element count.
pub fn sym_moved(x: &Fact, shape: Option<&[Dim]>) -> Option<Fact> {
    let elems = x.sym_elems()?;
    let (scalar, n) = match shape? {
        [] => (true, 1),
        [Dim::Known(n)] => (false, *n),
        _ => return None,
    };
    (elems.len() == n).then(|| Fact::of_sym(x.dtype, scalar, elems))
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
    let ts: Vec<&Tensor> = inputs.iter().copied().collect::<Option<Vec<_>>>()?;
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
    // Bounded like every fold: broadcasting two small constants can describe a huge tensor.
    let n = out_shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))?;
    if n.checked_mul(8)? > MAX_EVAL_BYTES {
        return None;
    }
    let dtype = out_dtype.unwrap_or(first.dtype());
    let idx: Vec<Vec<usize>> = ts
        .iter()
        .map(|t| broadcast_index(&out_shape, t.shape()))
        .collect();
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
#[derive(Clone, Debug, PartialEq)]
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
        Window::of(cx.node, kernel).map_err(|m| cx.err(m))
    }

    /// [`Window::read`] from the node alone: the error is the message.
    pub fn of(node: &Node, kernel: Vec<usize>) -> std::result::Result<Window, String> {
        let n = kernel.len();
        let list =
            |name: &str, default: usize, len: usize| -> std::result::Result<Vec<usize>, String> {
                match node.attr_ints(name) {
                    Some(v) if v.len() == len && v.iter().all(|x| *x >= 0) => {
                        Ok(v.iter().map(|x| *x as usize).collect())
                    }
                    Some(v) => Err(format!("attribute {name}={v:?} does not fit {len} values")),
                    None => Ok(vec![default; len]),
                }
            };
        let w = Window {
            strides: list("strides", 1, n)?,
            dilations: list("dilations", 1, n)?,
            pads: list("pads", 0, 2 * n)?,
            auto_pad: node.attr_s("auto_pad").unwrap_or_else(|| "NOTSET".into()),
            ceil_mode: node.attr_i("ceil_mode").unwrap_or(0) != 0,
            kernel,
        };
        if w.strides.contains(&0) || w.dilations.contains(&0) {
            return Err("strides and dilations must be positive".into());
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
                if self.ceil_mode && !span.is_multiple_of(s) {
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

/// Largest result, in bytes, that a data-movement `eval` materialises (larger results are not
/// folded, so a hostile shape cannot exhaust memory).
pub const MAX_EVAL_BYTES: usize = 1 << 30;

/// Bytes per element of a byte-addressable type; `None` for strings and sub-byte types (which
/// data-movement folding does not handle).
pub fn elem_size(dtype: DType) -> Option<usize> {
    let bits = dtype.bits();
    (bits > 0 && bits.is_multiple_of(8) && dtype != DType::String).then_some(bits / 8)
}

/// Row-major strides (in elements) of `shape`.
pub fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1].saturating_mul(shape[i + 1]);
    }
    s
}

/// Product of dims: known when every dim is known (or one is 0), the dim itself when there is
/// exactly one, `Unknown` otherwise.
pub fn dim_product(dims: &[Dim]) -> Dim {
    if let [d] = dims {
        return d.clone();
    }
    if dims.contains(&Dim::Known(0)) {
        return Dim::Known(0);
    }
    dims.iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(d.known()?))
        .map_or(Dim::Unknown, Dim::Known)
}

/// Copies the elements of `t` seen through a strided view: output element at multi-index `i`
/// (row-major over `shape`) is input element `offset + Σ i[k]·strides[k]`. Works on raw bytes,
/// so any byte-addressable type. `None`: the type is not byte-addressable or the result is too
/// large; `Err`: the view reaches outside `t`.
pub fn strided_copy(
    t: &Tensor,
    shape: Vec<usize>,
    offset: usize,
    strides: &[isize],
) -> Option<Result<Tensor>> {
    let es = elem_size(t.dtype())?;
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    if n.checked_mul(es)? > MAX_EVAL_BYTES || strides.len() != shape.len() {
        return None;
    }
    let src = &t.raw()[..];
    let mut out = Vec::with_capacity(n * es);
    let mut coord = vec![0usize; shape.len()];
    let mut cur = offset as isize;
    for _ in 0..n {
        let at = usize::try_from(cur).ok().and_then(|c| c.checked_mul(es));
        let Some(chunk) = at.and_then(|a| src.get(a..a + es)) else {
            return Some(Err(Error::tensor(
                "",
                format!("strided view of {:?} reaches outside the data", t.shape()),
            )));
        };
        out.extend_from_slice(chunk);
        for ax in (0..shape.len()).rev() {
            // Wrapping: a huge stride past the last element may overflow, and is undone
            // exactly by the carry before anything is read.
            coord[ax] += 1;
            cur = cur.wrapping_add(strides[ax]);
            if coord[ax] < shape[ax] {
                break;
            }
            cur = cur.wrapping_sub(strides[ax].wrapping_mul(coord[ax] as isize));
            coord[ax] = 0;
        }
    }
    Some(Tensor::from_raw(t.dtype(), shape, out.into()))
}

/// A fact that knows nothing (stands in for a wired input whose fact is unknown, for ops that
/// can still say something without it; see [`required_input`]).
pub static UNKNOWN_FACT: Fact = Fact {
    dtype: None,
    shape: None,
    value: None,
    sym: None,
};

/// Helpers for op unit tests: building nodes and running `infer`/`eval` on facts.
#[cfg(test)]
pub(crate) mod testing {
    use crate::error::Result;
    use crate::ir::{Dim, Fact, Node, SymInt, Tensor};
    use crate::onnx::proto::{AttributeProto, NodeProto};
    use crate::ops::{Cx, Op};

    /// A node of `op_type` with `outputs` outputs and the given attributes (inputs are not
    /// wired: ops read facts and tensors, not value ids).
    pub fn node(op_type: &str, outputs: usize, attrs: Vec<AttributeProto>) -> Node {
        Node {
            name: "n".into(),
            op_type: op_type.into(),
            domain: String::new(),
            inputs: Vec::new(),
            outputs: vec![None; outputs],
            attrs,
            captures: Vec::new(),
            rest: NodeProto::default(),
            named_in_file: true,
            removed: false,
        }
    }

    /// Runs `op.infer` on the given input facts.
    pub fn infer(
        op: &dyn Op,
        n: &Node,
        ins: &[Option<Fact>],
        opset: i64,
    ) -> Result<Option<Vec<Fact>>> {
        let refs: Vec<Option<&Fact>> = ins.iter().map(Option::as_ref).collect();
        op.infer(&Cx {
            node: n,
            inputs: &refs,
            opset,
        })
    }

    /// Runs `op.eval` on the given constant inputs.
    pub fn eval(
        op: &dyn Op,
        n: &Node,
        ins: &[Option<Tensor>],
        opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        let refs: Vec<Option<&Tensor>> = ins.iter().map(Option::as_ref).collect();
        op.eval(n, &refs, opset)
    }

    /// Parses a shape like `"N,3,?,4"` (`?` = unknown, digits = known, else symbolic).
    pub fn shape(s: &str) -> Vec<Dim> {
        s.split(',')
            .filter(|p| !p.is_empty())
            .map(|p| match p.trim() {
                "?" => Dim::Unknown,
                p => p.parse().map_or_else(|_| Dim::Sym(p.into()), Dim::Known),
            })
            .collect()
    }

    /// A non-constant float fact of the given shape.
    pub fn f32_fact(s: &str) -> Option<Fact> {
        Some(Fact::new(Some(crate::ir::DType::F32), shape(s)))
    }

    /// A constant int64 1-D fact.
    pub fn i64_const(v: &[i64]) -> Option<Fact> {
        Some(Fact::constant(Tensor::from_i64(vec![v.len()], v)))
    }

    /// Shape-vector elements parsed like `"N,-1,?"` (`?` = unknown, integers known, else
    /// symbolic).
    pub fn syms(s: &str) -> Vec<SymInt> {
        s.split(',')
            .filter(|p| !p.is_empty())
            .map(|p| match p.trim() {
                "?" => SymInt::Unknown,
                p => p
                    .parse()
                    .map_or_else(|_| SymInt::Sym(p.into()), SymInt::Int),
            })
            .collect()
    }

    /// A 1-D int64 shape vector tracked element by element (see [`syms`]).
    pub fn sym_fact(s: &str) -> Option<Fact> {
        Some(Fact::of_sym(Some(crate::ir::DType::I64), false, syms(s)))
    }

    /// A 1-D int64 tensor.
    pub fn i64s(v: &[i64]) -> Option<Tensor> {
        Some(Tensor::from_i64(vec![v.len()], v))
    }
}

/// The fact of a required input: `Err` when the node does not wire input `port` at all,
/// `Ok(None)` when it is wired but nothing is known about it (the op then cannot say).
pub fn required_input<'a>(cx: &Cx<'a>, port: usize) -> Result<Option<&'a Fact>> {
    if let Some(f) = cx.inputs.get(port).copied().flatten() {
        return Ok(Some(f));
    }
    if cx.node.input(port).is_some() {
        return Ok(None);
    }
    Err(cx.err(format!("required input {port} is missing")))
}

/// Whether the node wires input `port` (whether or not anything is known about it).
pub fn wired(cx: &Cx, port: usize) -> bool {
    cx.node.input(port).is_some() || cx.inputs.get(port).copied().flatten().is_some()
}

/// Element count of fact `f` for costs (symbolic/unknown dims count as 1; 0 for an unknown
/// fact or rank).
pub fn fact_numel(f: Option<&Fact>) -> u64 {
    f.and_then(|f| f.shape.as_ref())
        .map_or(0, |s| super::numel_or_one(s))
}

/// Element count of output `port` for costs (see [`fact_numel`]).
pub fn output_numel(outputs: &[Option<&Fact>], port: usize) -> u64 {
    fact_numel(outputs.get(port).copied().flatten())
}

/// Element count of input `port` for costs (see [`fact_numel`]).
pub fn input_numel(cx: &Cx, port: usize) -> u64 {
    fact_numel(cx.inputs.get(port).copied().flatten())
}

/// More helpers for op unit tests: attributes, wiring, costs.
#[cfg(test)]
pub(crate) mod test_extra {
    use crate::ir::{Fact, Node, ValueId};
    use crate::onnx::proto::{attribute_proto::AttributeType, AttributeProto};
    use crate::ops::{Cost, Cx, Op};

    /// A string attribute.
    pub fn attr_str(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            r#type: Some(AttributeType::String as i32),
            s: Some(v.as_bytes().to_vec().into()),
            ..Default::default()
        }
    }

    /// A float-list attribute.
    pub fn attr_floats(name: &str, v: &[f32]) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            r#type: Some(AttributeType::Floats as i32),
            floats: v.to_vec(),
            ..Default::default()
        }
    }

    /// Marks inputs `0..n` of `node` as wired (to dummy value ids), so ops can tell an
    /// unknown input from an omitted one.
    pub fn wire(mut node: Node, n: usize) -> Node {
        node.inputs = (0..n).map(|i| Some(ValueId(i as u32))).collect();
        node
    }

    /// Runs `op.cost` on the given input and output facts.
    pub fn cost(op: &dyn Op, n: &Node, ins: &[Option<Fact>], outs: &[Option<Fact>]) -> Cost {
        let refs: Vec<Option<&Fact>> = ins.iter().map(Option::as_ref).collect();
        let orefs: Vec<Option<&Fact>> = outs.iter().map(Option::as_ref).collect();
        op.cost(
            &Cx {
                node: n,
                inputs: &refs,
                opset: 17,
            },
            &orefs,
        )
    }
}

/// The `--from-scratch` rule ([`super::Op::fresh_init`]) of Conv and ConvTranspose: a weight
/// `W: [_, C/groups, k…]` of rank ≥ 2 gets Kaiming-normal with fan-in `C/groups · Πk`, a
/// bias `B` zeros.
pub fn conv_fresh_init(weights: &[Option<&[usize]>]) -> Vec<(usize, super::FreshInit)> {
    let mut out = Vec::new();
    if let Some(w) = weights.get(1).copied().flatten().filter(|w| w.len() >= 2) {
        let fan_in = w[1..].iter().product();
        out.push((
            1,
            super::FreshInit::Kaiming {
                fan_in,
                dense: false,
            },
        ));
    }
    if weights.get(2).copied().flatten().is_some() {
        out.push((2, super::FreshInit::Fill(0.0)));
    }
    out
}
