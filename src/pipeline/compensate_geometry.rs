//! Where a layer reads its regression rows from: the convolution geometry of [`super`]'s
//! layers (strides, pads, dilations, kernel) and their NCHW view.

use super::*;

/// The geometry of a layer on an input of spatial size `[h, w]`: kernel, strides, dilations,
/// pads `[top, left]`, and the output size.
pub(super) struct Geometry {
    pub(super) kernel: [usize; 2],
    pub(super) strides: [usize; 2],
    pub(super) dilations: [usize; 2],
    pub(super) begin: [usize; 2],
    pub(super) out: [usize; 2],
}

pub(super) fn geometry(kind: &Kind, size: [usize; 2]) -> Option<Geometry> {
    let Kind::Conv {
        kernel,
        strides,
        dilations,
        pads,
        auto_pad,
        ..
    } = kind
    else {
        return Some(Geometry {
            kernel: [1, 1],
            strides: [1, 1],
            dilations: [1, 1],
            begin: [0, 0],
            out: size,
        });
    };
    let mut begin = [0; 2];
    let mut out = [0; 2];
    for a in 0..2 {
        let (s, dil) = (strides[a].max(1), dilations[a].max(1));
        let span = (kernel[a] - 1) * dil + 1;
        let (b, e) = match auto_pad.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => {
                let o = size[a].div_ceil(s);
                let total = ((o - 1) * s + span).saturating_sub(size[a]);
                let small = total / 2;
                if auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            }
            "VALID" => (0, 0),
            _ => (pads[a], pads[a + 2]),
        };
        let padded = size[a] + b + e;
        if padded < span {
            return None;
        }
        begin[a] = b;
        out[a] = (padded - span) / s + 1;
    }
    Some(Geometry {
        kernel: *kernel,
        strides: *strides,
        dilations: *dilations,
        begin,
        out,
    })
}

/// `[n, c, h, w]` of a layer's tensor: NCHW (1-D: `h` = 1) for a Conv, `[rows, c, 1, 1]` for
/// Gemm/MatMul (channels last).
pub(super) fn as_nchw(kind: &Kind, shape: &[usize]) -> Option<[usize; 4]> {
    match kind {
        Kind::Conv { rank: 1, .. } if shape.len() == 3 => Some([shape[0], shape[1], 1, shape[2]]),
        Kind::Conv { rank: 2, .. } if shape.len() == 4 => {
            Some([shape[0], shape[1], shape[2], shape[3]])
        }
        Kind::Conv { .. } => None,
        _ => {
            let c = *shape.last()?;
            let n = shape[..shape.len() - 1].iter().product();
            Some([n, c, 1, 1])
        }
    }
}
