//! Small pieces shared by the backward rules ([`super::vjp`]; the nodes they emit come from
//! the graph builder, [`super::build::Build`]): the output gradient, constant integer inputs,
//! and the window geometry of Conv and pooling nodes resolved to explicit pads from static
//! shapes, with its adjoint (a `ConvTranspose` that scatters every output position back onto
//! the window it read).

use crate::error::Result;
use crate::ir::graph::{attr_int, attr_ints};
use crate::ir::{Tensor, ValueId};

use super::vjp::{Build, VjpCx};

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
        out[0] = Some(cx.reshape(g, &xs));
    }
    Ok(out)
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
