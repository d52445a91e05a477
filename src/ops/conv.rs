//! `Conv`: X [N, C, D1..Dn] * W [M, C/group, k1..kn] (+ B [M]) → [N, M, O1..On].
//! MACs = N·M·ΠO·(C/group)·Πk.
//!
//! Channels: output channels are created by the filters (W axis 0, bias); input channels are
//! consumed by W axis 1. Depthwise (group = C = M) passes channels through instead, and its
//! `group` attribute follows the new width. Other group counts remove whole groups: group `g`'s
//! input channels and output channels are one unit (W axis 1 is left as it is, `group` becomes
//! the groups kept), so every kept group keeps its full width, which is what channel-blocked
//! kernels need (ONNX Runtime's blocked grouped convolution wants whole blocks per group:
//! regnet_x_400mf has 16 channels a group). When the input's channels are not tracked (they
//! cannot be removed), output channels go uniformly in every group instead (coupled
//! positions). Weights that are not constants block.
//!
//! A following per-channel affine map (an inference BatchNormalization) folds into W along
//! axis 0 and into B.

use crate::error::Result;
use crate::ir::{Dim, Fact};

use super::channel::{
    CompensateCx, Compensation, ConstCx, Link, LinkCx, Map, Rewrite, RewriteCx, Slot,
};
use super::grad_util::Geometry;
use super::linear::{Form, Linear, LinearCx};
use super::simplify::{AffineFold, BiasRule, FoldCx};
use super::util::Window;
use super::vjp::{Build, VjpCx};
use super::{numel_or_one, CheckCx, Cost, Cx, Op};
use crate::ir::graph::{attr_int, attr_ints};
use crate::ir::{Tensor, ValueId};

/// `Conv`.
pub struct Conv;
/// `Conv`.
pub static CONV: Conv = Conv;

/// Backward rule of `Conv`: dX = `ConvTranspose(dY, W)` with the forward geometry (sized to X
/// exactly); dW = one batched `MatMul` per kernel tap when ungrouped, else a `Conv` of
/// X over dY with batch and channel axes swapped (stride and dilation exchange roles), grouped
/// by regrouping the batch into the channel axis; dB = Σ dY over every axis but the channel.
fn conv_vjp(
    cx: &mut VjpCx,
    grads: &[Option<ValueId>],
    needs: &[bool],
) -> Result<Vec<Option<ValueId>>> {
    let need = |p: usize| needs.get(p).copied().unwrap_or(false);
    let mut out = vec![None; needs.len()];
    let Some(dy) = grads.first().copied().flatten() else {
        return Ok(out);
    };
    let (x, w, y) = (cx.input(0)?, cx.input(1)?, cx.output(0)?);
    let (xs, ws, ys) = (cx.shape(x)?, cx.shape(w)?, cx.shape(y)?);
    let r = xs.len();
    if r < 3 || ws.len() != r || ys.len() != r {
        return Err(cx.err(format!(
            "input rank {r}, weight rank {} and output rank {} do not fit a convolution",
            ws.len(),
            ys.len()
        )));
    }
    let group = usize::try_from(cx.attr_i("group", 1))
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| cx.err("group must be positive"))?;
    let (c, m, cg) = (xs[1], ws[0], ws[1]);
    if c != cg * group || m % group != 0 || ys[0] != xs[0] || ys[1] != m {
        return Err(cx.err(format!(
            "shapes {xs:?} * {ws:?} -> {ys:?} do not fit group {group}"
        )));
    }
    if let Some(k) = cx.attr_ints("kernel_shape") {
        if k.iter().map(|&v| v as usize).ne(ws[2..].iter().copied()) {
            return Err(cx.err(format!(
                "kernel_shape {k:?} differs from the weight's {:?}",
                &ws[2..]
            )));
        }
    }
    let geom = Geometry::read(cx, ws[2..].to_vec(), xs[2..].to_vec(), ys[2..].to_vec())?;
    for i in 0..geom.rank() {
        let padded = geom.input[i] + geom.begin[i] + geom.end[i];
        let eff = geom.dilations[i] * (geom.kernel[i] - 1) + 1;
        if padded < eff || (padded - eff) / geom.strides[i] + 1 != geom.output[i] {
            return Err(cx.err(format!(
                "output size {} on spatial axis {i} does not follow from the window",
                geom.output[i]
            )));
        }
    }
    if need(0) {
        out[0] = Some(
            match conv_input_grad_flipped(cx, dy, w, &ws, &geom, group) {
                Some(dx) => dx,
                None => geom.scatter(cx, dy, w, group),
            },
        );
    }
    if need(1) {
        let fast = if group != 1 {
            None
        } else if let Some(dw) = conv_weight_grad_kernel(cx, x, dy, &xs, &ys, &geom)? {
            Some(dw)
        } else if geom.strides.iter().all(|&s| s == 1) && cx.opset >= 11 && shifts_fit(&geom) {
            Some(conv_weight_grad_shifts(cx, x, dy, &xs, &ys, &geom))
        } else {
            conv_weight_grad_taps(cx, x, dy, &xs, &ys, &geom)
        };
        out[1] = match fast {
            Some(dw) => Some(dw),
            None => Some(conv_weight_grad(cx, x, dy, &xs, &ys, &geom, group)?),
        };
    }
    if need(2) {
        let axes: Vec<i64> = (0..r as i64).filter(|&a| a != 1).collect();
        out[2] = Some(cx.reduce_sum(dy, &axes, false));
    }
    Ok(out)
}

/// dX of a unit-stride convolution as a `Conv` of dY with the flipped, transposed kernel
/// (W `[M, C/g, k..]` → `[C, M/g, k..]` reversed along every spatial axis), same dilations and
/// group, pads `(k−1)·d − p` on each side: ONNX Runtime runs this about 1.6–1.9× faster than
/// the equivalent `ConvTranspose` (measured on ResNet-20's 3×3 layers). `None` with strides
/// above 1 or pads wider than the dilated kernel (the caller scatters with `ConvTranspose`).
fn conv_input_grad_flipped(
    cx: &mut VjpCx,
    dy: ValueId,
    w: ValueId,
    ws: &[usize],
    geom: &Geometry,
    group: usize,
) -> Option<ValueId> {
    if cx.opset < 10 || geom.strides.iter().any(|&s| s != 1) {
        return None;
    }
    let k = geom.rank();
    let mut pads = vec![0i64; 2 * k];
    for i in 0..k {
        let reach = (geom.dilations[i] * (geom.kernel[i] - 1)) as i64;
        pads[i] = reach - geom.begin[i] as i64;
        pads[k + i] = reach - geom.end[i] as i64;
    }
    if pads.iter().any(|&p| p < 0) {
        return None;
    }
    let (m, cg) = (ws[0], ws[1]);
    let mg = m / group;
    let spatial: Vec<i64> = (3..k as i64 + 3).collect();
    let wt = if group == 1 {
        let perm: Vec<i64> = [1, 0].into_iter().chain(2..k as i64 + 2).collect();
        cx.transpose(w, &perm)
    } else {
        let mut split = vec![group, mg, cg];
        split.extend_from_slice(&geom.kernel);
        let w5 = cx.reshape(w, &split);
        let perm: Vec<i64> = [0, 2, 1].into_iter().chain(spatial).collect();
        let w5 = cx.transpose(w5, &perm);
        let mut merged = vec![group * cg, mg];
        merged.extend_from_slice(&geom.kernel);
        cx.reshape(w5, &merged)
    };
    let starts = cx.ints(&vec![-1; k]);
    let ends: Vec<i64> = geom.kernel.iter().map(|&d| -(d as i64) - 1).collect();
    let ends = cx.ints(&ends);
    let axes = cx.ints(&(2..k as i64 + 2).collect::<Vec<_>>());
    let steps = cx.ints(&vec![-1; k]);
    let flipped = cx.op("Slice", &[wt, starts, ends, axes, steps], vec![]);
    let to_i64 = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    let attrs = vec![
        attr_ints("kernel_shape", &to_i64(&geom.kernel)),
        attr_ints("dilations", &to_i64(&geom.dilations)),
        attr_ints("pads", &pads),
        attr_int("group", group as i64),
    ];
    Some(cx.op("Conv", &[dy, flipped], attrs))
}

/// dW of an ungrouped, unit-stride, undilated 2-D float32 convolution at least 2 taps wide
/// as lopper's own ONNX Runtime kernel ([`crate::runtime::kernels::conv_weight_grad`]), which reads X's
/// windows in place; `None` when `cx.kernels` is off or the kernel does not cover the node.
fn conv_weight_grad_kernel(
    cx: &mut VjpCx,
    x: ValueId,
    dy: ValueId,
    xs: &[usize],
    ys: &[usize],
    geom: &Geometry,
) -> Result<Option<ValueId>> {
    use crate::runtime::kernels::conv_weight_grad as k;
    if !cx.kernels_for(&[x]) || xs.len() != 4 || geom.rank() != 2 {
        return Ok(None);
    }
    if geom.strides.iter().chain(&geom.dilations).any(|&s| s != 1) {
        return Ok(None);
    }
    let win = k::Window {
        n: xs[0],
        c: xs[1],
        m: ys[1],
        h: xs[2],
        w: xs[3],
        kh: geom.kernel[0],
        kw: geom.kernel[1],
        pads: [geom.begin[0], geom.begin[1], geom.end[0], geom.end[1]],
    };
    // One tap per kernel row leaves the kernel's tiles latency-bound: 1×1 (and k×1)
    // convolutions keep the single batched `MatMul` of the taps form, which copies nothing.
    if win.kw < 2 || !win.supported() || win.output() != Some((ys[2], ys[3])) {
        return Ok(None);
    }
    let to_i64 = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<_>>();
    let attrs = vec![
        attr_ints("kernel_shape", &to_i64(&geom.kernel)),
        attr_ints("pads", &to_i64(&win.pads)),
    ];
    let shape = [win.m, win.c, win.kh, win.kw];
    Ok(Some(cx.kernel(k::OP, &[x, dy], attrs, &[&shape])[0]))
}

/// Whether every shift of [`conv_weight_grad_shifts`] crops less than the axis it shifts
/// (false only for kernels wider than the padded input leaves room for, with large pads).
fn shifts_fit(geom: &Geometry) -> bool {
    let k = geom.rank();
    (0..k).all(|a| {
        let (inp, out) = (geom.input[a] as i64, geom.output[a] as i64);
        (0..geom.kernel[a]).all(|i| {
            let off = (i * geom.dilations[a]) as i64 - geom.begin[a] as i64;
            if a + 1 == k {
                // dY shifted by −off to the input's width.
                let (front, back) = (off, inp - out - off);
                (-front).max(0) + (-back).max(0) <= out
            } else {
                // X shifted by off to the output's height.
                let (front, back) = (-off, out - inp + off);
                (-front).max(0) + (-back).max(0) <= inp
            }
        })
    })
}

/// dW `[M, C, k..]` of an ungrouped unit-stride convolution without materialising windows:
/// for a kernel tap (i.., j) (j on the last spatial axis),
/// `dW[:, :, i.., j] = Σₙ X(i..) · dY(j)ᵀ` where X(i..) is X shifted along the leading spatial
/// axes so that row p holds input row `p + i·d − pad` (zeros outside: one `Pad` with negative
/// pads, none when the shift is the identity), kept at the input's width, and dY(j) is dY
/// shifted along the last axis by `pad − j·d` to that width. The products run as batched
/// `MatMul`s `[N, C, K] × [N, K, M]`. Per 3×3 layer that is two shifted copies of X and two of
/// dY instead of nine strided windows of X (2.7× faster on ResNet-20's first stage). Needs
/// opset 11 (`Pad` with pads as an input).
fn conv_weight_grad_shifts(
    cx: &mut VjpCx,
    x: ValueId,
    dy: ValueId,
    xs: &[usize],
    ys: &[usize],
    geom: &Geometry,
) -> ValueId {
    let r = xs.len();
    let k = geom.rank();
    let (n, c, m) = (xs[0], xs[1], ys[1]);
    let last = k - 1;
    let (in_w, out_w) = (geom.input[last], geom.output[last]);
    // K: output positions on the leading axes times the input width.
    let kk = geom.output[..last].iter().product::<usize>() * in_w;
    // dY as [N, O.., M], then one copy per last-axis tap shifted to the input width.
    let perm: Vec<i64> = [0].into_iter().chain(2..r as i64).chain([1]).collect();
    let dyt = cx.transpose(dy, &perm);
    // Shifts along the last spatial axis run on dYt viewed as [N·O.., Ow·M] (one long run per
    // row: ORT pads that about 20% faster than the 4-D form).
    let rows = (n * geom.output[..last].iter().product::<usize>()) as i64;
    let mw = m as i64;
    let dy_rows = cx.ints(&[rows, out_w as i64 * mw]);
    let dy_rows = cx.op("Reshape", &[dyt, dy_rows], vec![]);
    let dy_flat = cx.ints(&[n as i64, kk as i64, mw]);
    let mut dy_taps = Vec::with_capacity(geom.kernel[last]);
    for j in 0..geom.kernel[last] {
        let shift = geom.begin[last] as i64 - (j * geom.dilations[last]) as i64;
        let pads = [0, -shift * mw, 0, (in_w as i64 - out_w as i64 + shift) * mw];
        let shifted = if pads.iter().all(|&p| p == 0) {
            dy_rows
        } else {
            cx.pad_zeros(dy_rows, &pads)
        };
        dy_taps.push(cx.op("Reshape", &[shifted, dy_flat], vec![]));
    }
    let x_flat = cx.ints(&[n as i64, c as i64, kk as i64]);
    let lead: usize = geom.kernel[..last].iter().product();
    let mut per_tap = Vec::with_capacity(lead * dy_taps.len());
    for t in 0..lead {
        // Tap t over the leading axes (last fastest, like W's layout).
        let mut rest = t;
        let mut pads = vec![0i64; 2 * r];
        for a in (0..last).rev() {
            let i = rest % geom.kernel[a];
            rest /= geom.kernel[a];
            let begin = geom.begin[a] as i64 - (i * geom.dilations[a]) as i64;
            pads[2 + a] = begin;
            pads[r + 2 + a] = geom.output[a] as i64 - geom.input[a] as i64 - begin;
        }
        let shifted = if pads.iter().all(|&p| p == 0) {
            x
        } else {
            cx.pad_zeros(x, &pads)
        };
        let cols = cx.op("Reshape", &[shifted, x_flat], vec![]);
        for &d in &dy_taps {
            let prod = cx.op("MatMul", &[cols, d], vec![]);
            per_tap.push(cx.reduce_sum(prod, &[0], true));
        }
    }
    let stacked = match per_tap[..] {
        [one] => one,
        _ => cx.op("Concat", &per_tap, vec![attr_int("axis", 0)]),
    };
    let dw = cx.transpose(stacked, &[2, 1, 0]);
    let mut shape = vec![m, c];
    shape.extend_from_slice(&geom.kernel);
    cx.reshape(dw, &shape)
}

/// dW `[M, C, k..]` of an ungrouped convolution as one batched `MatMul` per kernel tap:
/// `dW[:, :, t] = (Σₙ Slice(Pad(X), tap t) · dYᵀ)ᵀ` with the slice as `[N, C, P]` and dY as
/// `[N, P, M]` (P output positions), batched over the N images so that both threads get work.
/// Nothing bigger than X is materialised; the `Conv` form of [`conv_weight_grad`] runs as C
/// convolutions with a kernel as large as the output, which ONNX Runtime's im2col handles
/// poorly. `None` before opset 10 (no stepped `Slice`).
fn conv_weight_grad_taps(
    cx: &mut VjpCx,
    x: ValueId,
    dy: ValueId,
    xs: &[usize],
    ys: &[usize],
    geom: &Geometry,
) -> Option<ValueId> {
    if cx.opset < 10 {
        return None;
    }
    let r = xs.len();
    let (n, c, m) = (xs[0], xs[1], ys[1]);
    let (k, taps, positions) = (geom.rank(), geom.taps(), ys[2..].iter().product::<usize>());
    let pads: Vec<i64> = [0, 0]
        .into_iter()
        .chain(geom.begin.iter().map(|&p| p as i64))
        .chain([0, 0])
        .chain(geom.end.iter().map(|&p| p as i64))
        .collect();
    let xp = if pads.iter().any(|&p| p != 0) {
        cx.pad_zeros(x, &pads)
    } else {
        x
    };
    let last: Vec<i64> = [0].into_iter().chain(2..r as i64).chain([1]).collect();
    let dyt = cx.transpose(dy, &last);
    let dyt = cx.reshape(dyt, &[n, positions, m]);
    // With one tap and unit strides the padded input is exactly the window.
    let whole = taps == 1 && geom.strides.iter().all(|&s| s == 1);
    let axes = cx.ints(&(2..r as i64).collect::<Vec<_>>());
    let steps = cx.ints(&geom.strides.iter().map(|&s| s as i64).collect::<Vec<_>>());
    let flat = cx.ints(&[n as i64, c as i64, positions as i64]);
    let one = cx.ints(&[1, n as i64, c as i64, m as i64]);
    let mut per_tap = Vec::with_capacity(taps);
    for t in 0..taps {
        let window = if whole {
            xp
        } else {
            // Tap t as a multi-index over the kernel (last axis fastest, like W's layout).
            let mut rest = t;
            let mut starts = vec![0i64; k];
            for i in (0..k).rev() {
                starts[i] = ((rest % geom.kernel[i]) * geom.dilations[i]) as i64;
                rest /= geom.kernel[i];
            }
            let ends: Vec<i64> = (0..k)
                .map(|i| starts[i] + (geom.strides[i] * (geom.output[i] - 1) + 1) as i64)
                .collect();
            let (st, en) = (cx.ints(&starts), cx.ints(&ends));
            cx.op("Slice", &[xp, st, en, axes, steps], vec![])
        };
        let cols = cx.op("Reshape", &[window, flat], vec![]);
        let prod = cx.op("MatMul", &[cols, dyt], vec![]);
        per_tap.push(cx.op("Reshape", &[prod, one], vec![]));
    }
    let stacked = match per_tap[..] {
        [one] => one,
        _ => cx.op("Concat", &per_tap, vec![attr_int("axis", 0)]),
    };
    let dw = cx.reduce_sum(stacked, &[1], false);
    let dw = cx.transpose(dw, &[2, 1, 0]);
    let mut shape = vec![m, c];
    shape.extend_from_slice(&geom.kernel);
    Some(cx.reshape(dw, &shape))
}

/// dW `[M, C/g, k..]` of a convolution: `Conv(X', dY')` with X' = X as `[C/g, g·N, D..]` and dY'
/// = dY as `[M, N, O..]`, grouped `g`, stride = forward dilation, dilation = forward stride;
/// the result `[C/g, M, k'..]` is cut to the kernel and transposed.
pub(super) fn conv_weight_grad(
    cx: &mut VjpCx,
    x: ValueId,
    dy: ValueId,
    xs: &[usize],
    ys: &[usize],
    geom: &Geometry,
    group: usize,
) -> Result<ValueId> {
    let r = xs.len();
    let (n, c, m) = (xs[0], xs[1], ys[1]);
    let (cg, mg) = (c / group, m / group);
    let rest =
        |first: &[i64]| -> Vec<i64> { first.iter().copied().chain(3..r as i64 + 1).collect() };
    let swap: Vec<i64> = [1, 0].into_iter().chain(2..r as i64).collect();
    let (xt, dyt) = if group == 1 {
        (cx.transpose(x, &swap), cx.transpose(dy, &swap))
    } else {
        let split = |lead: [usize; 3], tail: &[usize]| -> Vec<usize> {
            lead.iter().chain(tail).copied().collect()
        };
        let x5 = cx.reshape(x, &split([n, group, cg], &xs[2..]));
        let x5 = cx.transpose(x5, &rest(&[2, 1, 0]));
        let mut s = vec![cg, group * n];
        s.extend_from_slice(&xs[2..]);
        let xt = cx.reshape(x5, &s);
        let d5 = cx.reshape(dy, &split([n, group, mg], &ys[2..]));
        let d5 = cx.transpose(d5, &rest(&[1, 2, 0]));
        let mut s = vec![m, n];
        s.extend_from_slice(&ys[2..]);
        (xt, cx.reshape(d5, &s))
    };
    let k = geom.rank();
    let mut pads = vec![0i64; 2 * k];
    let mut cut = false;
    for i in 0..k {
        pads[i] = geom.begin[i] as i64;
        let reach = geom.span(i) as i64 - (geom.input[i] + geom.begin[i]) as i64;
        pads[k + i] = reach.max(0);
        let padded = (geom.input[i] + geom.begin[i]) as i64 + pads[k + i];
        let taps = (padded - (geom.strides[i] * (geom.output[i] - 1) + 1) as i64)
            / geom.dilations[i] as i64
            + 1;
        cut |= taps != geom.kernel[i] as i64;
    }
    let to_i64 = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    let attrs = vec![
        attr_ints("kernel_shape", &to_i64(&ys[2..])),
        attr_ints("strides", &to_i64(&geom.dilations)),
        attr_ints("dilations", &to_i64(&geom.strides)),
        attr_ints("pads", &pads),
        attr_int("group", group as i64),
    ];
    let mut dw = cx.op("Conv", &[xt, dyt], attrs);
    if cut {
        let starts = cx.ints(&vec![0; k]);
        let ends = cx.ints(&to_i64(&geom.kernel));
        let axes = cx.ints(&(2..r as i64).collect::<Vec<_>>());
        dw = cx.op("Slice", &[dw, starts, ends, axes], vec![]);
    }
    Ok(cx.transpose(dw, &swap))
}

/// The spec rules of a convolution node (`Conv`, and `ConvTranspose` with `transposed`, whose
/// weight is `[C, M/group, k..]`): `group` a positive int dividing the weight's group axis;
/// `kernel_shape`, `strides`, `dilations` and `pads` ints of the spatial rank, kernels equal to
/// the weight's spatial dims, strides and dilations positive, pads not negative; a constant bias
/// of shape `[M]`, M output channels. Messages name the rule in parentheses.
pub(super) fn check_conv(cx: &CheckCx, transposed: bool) -> Vec<String> {
    let mut errs = Vec::new();
    let group = cx.int_attr("group").unwrap_or_else(|e| {
        errs.push(e);
        None
    });
    let group = group.unwrap_or(1);
    if group < 1 {
        errs.push(format!("group must be at least 1, not {group} (group)"));
    }
    let w = cx.const_shape(1);
    if let Some(w) = w.filter(|w| w.len() < 3) {
        errs.push(format!(
            "weight of shape {w:?} has no spatial axis (weight rank)"
        ));
    }
    let w = w.filter(|w| w.len() >= 3);
    let group_axis = usize::from(!transposed);
    if let (Some(w), Ok(g @ 1..)) = (w, usize::try_from(group)) {
        if group_axis == 1 && w[0] % g != 0 {
            errs.push(format!(
                "weight's {} output channels are not a multiple of group {g} (group)",
                w[0]
            ));
        }
    }
    let rank = w.map(|w| w.len() - 2);
    for (name, min, per_axis) in [
        ("kernel_shape", 1, 1),
        ("strides", 1, 1),
        ("dilations", 1, 1),
        ("pads", 0, 2),
    ] {
        let v = match cx.ints_attr(name) {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => {
                errs.push(e);
                continue;
            }
        };
        if let Some(bad) = v.iter().find(|&&x| x < min) {
            errs.push(format!("{name} {v:?} holds {bad}, below {min} ({name})"));
        } else if rank.is_some_and(|r| v.len() != r * per_axis) {
            errs.push(format!(
                "{name} {v:?} has {} entries, not {} for a weight of {} spatial axes ({name})",
                v.len(),
                rank.unwrap_or(0) * per_axis,
                rank.unwrap_or(0)
            ));
        } else if let (Some(w), "kernel_shape") = (w, name) {
            if !v
                .iter()
                .zip(&w[2..])
                .all(|(&k, &d)| u64::try_from(k) == Ok(d as u64))
            {
                errs.push(format!(
                    "kernel_shape {v:?} differs from the weight's spatial dims {:?} (kernel_shape)",
                    &w[2..]
                ));
            }
        }
    }
    if let Some(b) = cx.const_shape(2) {
        let out = w.map(|w| {
            if transposed {
                usize::try_from(group).map_or(w[1], |g| w[1].saturating_mul(g))
            } else {
                w[0]
            }
        });
        match (b, out) {
            ([m], Some(out)) if *m != out => errs.push(format!(
                "bias has {m} entries, not the {out} output channels (bias)"
            )),
            ([_], _) => {}
            _ => errs.push(format!("bias of shape {b:?} is not 1-D (bias)")),
        }
    }
    errs
}

impl Op for Conv {
    fn op_type(&self) -> &'static str {
        "Conv"
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((2, 3))
    }

    fn check(&self, cx: &CheckCx) -> Vec<String> {
        check_conv(cx, false)
    }

    fn weight_input(&self, port: usize) -> bool {
        // Weight and bias.
        port == 1 || port == 2
    }

    fn fresh_init(
        &self,
        _node: &crate::ir::Node,
        weights: &[Option<&[usize]>],
    ) -> Vec<(usize, super::FreshInit)> {
        super::util::conv_fresh_init(weights)
    }

    fn resized(
        &self,
        node: &crate::ir::Node,
        inputs: &[Option<&[usize]>],
        cin: usize,
        cout: usize,
    ) -> Option<super::Resized> {
        // X = [N, C, spatial..], W = [M, C/group, k..], B = [M].
        let (x, w) = (inputs.first().copied()??, inputs.get(1).copied()??);
        if x.len() < 3 || w.len() != x.len() || cin == 0 || cout == 0 {
            return None;
        }
        let group = node.attr_i("group").unwrap_or(1).max(1) as usize;
        // Depthwise, and grouped with as many output as input channels a group (pruned by
        // whole groups: `channel_links`): the widths move together, in whole groups.
        let per = w[1];
        let tied = group > 1 && w[0] == x[1] && per * group == x[1];
        let group = match tied {
            true if cin == cout && cin.is_multiple_of(per) => cin / per,
            true => return None,
            false if cin.is_multiple_of(group) && cout.is_multiple_of(group) => group,
            false => return None,
        };
        let (mut xs, mut ws) = (x.to_vec(), w.to_vec());
        (xs[1], ws[0], ws[1]) = (cin, cout, cin / group);
        let mut shapes = vec![xs, ws];
        if inputs.get(2).copied().flatten().is_some() {
            shapes.push(vec![cout]);
        }
        let mut attrs: Vec<_> = node
            .attrs
            .iter()
            .filter(|a| a.name() != "group")
            .cloned()
            .collect();
        attrs.push(attr_int("group", group as i64));
        Some(super::Resized {
            attrs,
            inputs: shapes,
            tied,
            multiple: if tied { per } else { group },
        })
    }

    fn layer_channels(&self, node: &crate::ir::Node, w: &[usize]) -> Option<(usize, usize)> {
        // W = [M, C/group, k..].
        let group = node.attr_i("group").unwrap_or(1).max(1) as usize;
        (w.len() >= 2).then(|| (w[0], w[1] * group))
    }

    fn fold_output_affine(&self, cx: &FoldCx) -> Result<Option<AffineFold>> {
        // W = [M, C/group, k..]: output channel = axis 0.
        let channels = cx.channels();
        let Some(w) = cx.float_const(1) else {
            return Ok(None);
        };
        if w.shape().len() < 2 || w.shape()[0] != channels {
            return Ok(None);
        }
        let inner = (w.len() / channels.max(1)).max(1);
        cx.fold(1, 2, BiasRule::PerChannel, |i| i / inner)
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let x = cx.input(0)?;
        let w = cx.input(1)?;
        let (Some(xs), Some(ws)) = (&x.shape, &w.shape) else {
            return Ok(None);
        };
        if ws.len() < 3 || xs.len() != ws.len() {
            return Err(cx.err(format!(
                "input rank {} and weight rank {} do not fit a convolution",
                xs.len(),
                ws.len()
            )));
        }
        let group = cx.node.attr_i("group").unwrap_or(1).max(1) as usize;
        if let (Some(c), Some(wc)) = (xs[1].known(), ws[1].known()) {
            if c != wc * group {
                return Err(cx.err(format!(
                    "input has {c} channels, weight expects {wc}×group {group}"
                )));
            }
        }
        let kernel: Vec<usize> = match cx.node.attr_ints("kernel_shape") {
            Some(k) => k.iter().map(|&v| v.max(0) as usize).collect(),
            None => match ws[2..].iter().map(Dim::known).collect::<Option<Vec<_>>>() {
                Some(k) => k,
                None => return Ok(None),
            },
        };
        let win = Window::read(cx, kernel)?;
        let mut out = vec![xs[0].clone(), ws[0].clone()];
        for (i, d) in xs[2..].iter().enumerate() {
            out.push(win.out_dim(i, d, cx)?);
        }
        Ok(Some(vec![Fact::new(x.dtype, out)]))
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        let Some(wd) = cx.in_dims(1).filter(|w| w.len() >= 3) else {
            return cx.block_all("weight shape unknown");
        };
        if !cx.is_const(1) || (cx.node.input(2).is_some() && !cx.is_const(2)) {
            return cx.block_all("weights are not constants");
        }
        let group = cx.node.attr_i("group").unwrap_or(1).max(1) as usize;
        let (m, cg) = (wd[0], wd[1]);
        let c = cg * group;
        let out = Slot::output(0, 1);
        let input = Slot::input(0, 1);
        let tracked_in = cx.tracked_axes(0).any(|(a, _)| a == 1);
        let mut links: Vec<Link> = cx
            .tracked_axes(0)
            .filter(|(a, _)| *a != 1)
            .map(|(a, _)| Link::Block {
                slot: Slot::input(0, a),
                reason: "channels on a spatial or batch axis".into(),
            })
            .collect();
        let producer = |links: &mut Vec<Link>| {
            links.push(Link::Member {
                input: 1,
                axis: 0,
                slot: out,
                map: Map::Identity,
            });
            if cx.node.input(2).is_some() {
                links.push(Link::Member {
                    input: 2,
                    axis: 0,
                    slot: out,
                    map: Map::Identity,
                });
            }
        };
        if group > 1 && group == c && m == c {
            // Depthwise: channel i in → channel i out.
            if tracked_in {
                links.push(Link::Pass {
                    from: input,
                    to: out,
                    map: Map::Identity,
                });
            } else {
                links.push(Link::Create { to: out, len: m });
                links.push(Link::Block {
                    slot: out,
                    reason: "depthwise convolution of an untracked input".into(),
                });
            }
            producer(&mut links);
            return links;
        }
        links.push(Link::Create { to: out, len: m });
        producer(&mut links);
        if group > 1 && tracked_in {
            // Whole groups: group g's input and output channels go together; W axis 1 (the
            // channels within a group) is untouched.
            let per = m / group;
            links.push(Link::Consume { from: input });
            links.push(Link::Tie {
                sets: (0..group)
                    .map(|g| {
                        let ins = (g * cg..(g + 1) * cg).map(|k| (input, k));
                        ins.chain((g * per..(g + 1) * per).map(|j| (out, j)))
                            .collect()
                    })
                    .collect(),
            });
            return links;
        }
        if group > 1 {
            let per = m / group;
            links.push(Link::Couple {
                slot: out,
                sets: (0..per)
                    .map(|j| (0..group).map(|g| g * per + j).collect())
                    .collect(),
            });
        }
        if tracked_in {
            links.push(Link::Consume { from: input });
            links.push(Link::Member {
                input: 1,
                axis: 1,
                slot: input,
                map: Map::Identity,
            });
        }
        links
    }

    fn rewrite_channels(&self, cx: &RewriteCx) -> Result<Rewrite> {
        let group = cx.node.attr_i("group").unwrap_or(1);
        let mut rw = Rewrite::default();
        // Depthwise: the group count is the (new) channel count. Other groups: the input
        // loses whole groups of C/group channels (`channel_links`).
        if group > 1 {
            if let Some(c) = cx.mask(Slot::input(0, 1)) {
                let (c_old, kept) = (c.len() as i64, c.iter().filter(|k| **k).count() as i64);
                let per = c_old / group;
                if per > 0 && c_old == per * group {
                    rw.attrs.push(attr_int("group", kept / per));
                }
            }
        }
        Ok(rw)
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        // An all-zero filter outputs its bias everywhere (zero padding contributes nothing).
        if cx.zero.get(1).copied().unwrap_or(false) {
            return if cx.node.input(2).is_some() {
                cx.inputs.get(2).copied().flatten()
            } else {
                Some(0.0)
            };
        }
        None
    }

    fn channel_compensation(&self, cx: &CompensateCx) -> Result<Option<Compensation>> {
        // Removed input channel k with constant value c contributes, at output (o, y, x),
        // c · Σ W[o, k, kh, kw] over the taps that fall inside the input (zero padding).
        let err =
            |m: &str| crate::error::Error::node(&cx.node.name, &cx.node.op_type, m.to_string());
        // Only the spatial sizes matter (the batch may be symbolic).
        let spatial = |f: Option<&Fact>| -> Option<Vec<usize>> {
            let s = f?.shape.as_ref()?;
            let mut v = vec![0, 0];
            for d in s.get(2..)? {
                v.push(d.known()?);
            }
            Some(v)
        };
        let (Some(w), Some(x), Some(y)) = (
            cx.consts.get(1).copied().flatten(),
            spatial(cx.inputs.first().copied().flatten()),
            spatial(cx.outputs.first().copied().flatten()),
        ) else {
            return Ok(None);
        };
        if x.len() != 4 || w.shape().len() != 4 || cx.slot != Slot::input(0, 1) {
            return Ok(None);
        }
        let (m, cg, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
        if kh > 64 || kw > 64 || cg == 0 {
            return Ok(None); // the tap sets below are 64-bit masks
        }
        let group = cx.node.attr_i("group").unwrap_or(1).max(1) as usize;
        let (h, wd, ho, wo) = (x[2], x[3], y[2], y[3]);
        let get = |name: &str, n: usize, d: i64| -> Vec<i64> {
            cx.node
                .attr_ints(name)
                .map(|v| v.to_vec())
                .filter(|v| v.len() == n)
                .unwrap_or(vec![d; n])
        };
        let (s, dl) = (get("strides", 2, 1), get("dilations", 2, 1));
        let mut pads = get("pads", 4, 0);
        let auto = cx.node.attr_s("auto_pad").unwrap_or_default();
        if auto.starts_with("SAME") {
            for (i, (inp, out, k)) in [(h, ho, kh), (wd, wo, kw)].into_iter().enumerate() {
                let total =
                    ((out as i64 - 1) * s[i] + (k as i64 - 1) * dl[i] + 1 - inp as i64).max(0);
                pads[i] = if auto == "SAME_UPPER" {
                    total / 2
                } else {
                    total - total / 2
                };
            }
        }
        // Only the removed channels' filters are read (the weight may be large).
        let ks: Vec<usize> = cx.constants.iter().map(|&(ch, _)| ch % cg).collect();
        let sub = w
            .select(1, &ks)?
            .to_f64_vec()
            .ok_or_else(|| err("weight is not numeric"))?;
        // Output rows (columns) whose taps fall inside the input alike form one class; the
        // contribution depends on the class pair only: interior, and a few at each border.
        let (rows, row_masks) = tap_classes(h, ho, kh, s[0], pads[0], dl[0]);
        let (cols, col_masks) = tap_classes(wd, wo, kw, s[1], pads[1], dl[1]);
        let (nr, nc) = (row_masks.len(), col_masks.len());
        let per_group = m / group;
        let n_const = ks.len();
        // t[(o · nr + rc) · nc + cc]: Σ over constants of c · Σ of o's taps in the class pair.
        let mut t = vec![0f64; m * nr * nc];
        for (i, &(ch, c)) in cx.constants.iter().enumerate() {
            let gi = ch / cg;
            for o in gi * per_group..((gi + 1) * per_group).min(m) {
                let filter = &sub[(o * n_const + i) * kh * kw..(o * n_const + i + 1) * kh * kw];
                for (rc, rm) in row_masks.iter().enumerate() {
                    for (cc, cm) in col_masks.iter().enumerate() {
                        let mut acc = 0f64;
                        for a in (0..kh).filter(|a| rm >> a & 1 == 1) {
                            for b in (0..kw).filter(|b| cm >> b & 1 == 1) {
                                acc += filter[a * kw + b];
                            }
                        }
                        t[(o * nr + rc) * nc + cc] += c * acc;
                    }
                }
            }
        }
        let mut map = vec![0f64; m * ho * wo];
        for o in 0..m {
            for yy in 0..ho {
                for xx in 0..wo {
                    map[(o * ho + yy) * wo + xx] = t[(o * nr + rows[yy]) * nc + cols[xx]];
                }
            }
        }
        let uniform = (0..m).all(|o| {
            let row = &map[o * ho * wo..(o + 1) * ho * wo];
            row.iter()
                .all(|v| (v - row[0]).abs() <= 1e-12 * row[0].abs().max(1.0))
        });
        Ok(Some(if uniform {
            let bias: Vec<f64> = (0..m).map(|o| map[o * ho * wo]).collect();
            Compensation::AddToInput {
                port: 2,
                tensor: Tensor::from_f64_as(w.dtype(), vec![m], &bias)?,
            }
        } else {
            Compensation::AddToOutput(Tensor::from_f64_as(w.dtype(), vec![m, ho, wo], &map)?)
        }))
    }

    fn vjp(
        &self,
        cx: &mut VjpCx,
        grads: &[Option<ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<ValueId>>> {
        conv_vjp(cx, grads, needs)
    }

    fn cost(&self, cx: &Cx, outputs: &[Option<&Fact>]) -> Cost {
        let (Some(Some(w)), Some(Some(y))) = (
            cx.inputs.get(1).map(|f| f.and_then(|f| f.shape.as_ref())),
            outputs.first().map(|f| f.and_then(|f| f.shape.as_ref())),
        ) else {
            return Cost::default();
        };
        // y = [N, M, O...]; per output element: (C/group)·Πk = Π w[1..].
        let macs = numel_or_one(y).saturating_mul(numel_or_one(&w[1..]));
        Cost {
            macs,
            flops: macs.saturating_mul(2),
        }
    }

    fn linear(&self, cx: &LinearCx) -> Option<Linear> {
        // W = [M, C/group, k..] over X [N, C, D..].
        let w = cx.weight;
        if w.len() < 3 {
            return None;
        }
        let group = cx.node.attr_i("group").unwrap_or(1).max(1) as usize;
        Some(Linear {
            input_axis: 1,
            output_axis: 1,
            in_channels: w[1] * group,
            out_channels: w[0],
            bias_port: Some(2),
            form: Form::Conv {
                group,
                window: Window::of(cx.node, w[2..].to_vec()).ok()?,
            },
        })
    }

    fn layer(&self, _node: &crate::ir::Node) -> Option<super::training::Layer> {
        // W = [M, C/group, k..]: filters along axis 0.
        Some(super::training::Layer {
            weight: 1,
            bias: Some(2),
            filter_axis: Some(0),
        })
    }
}

/// Per output position along one spatial axis (input length `len`, output length `out`,
/// kernel `k`, stride, leading pad, dilation): the index of its class, and per class the set
/// of kernel taps that fall inside the input, as a bit mask (`k` ≤ 64).
fn tap_classes(
    len: usize,
    out: usize,
    k: usize,
    stride: i64,
    pad: i64,
    dilation: i64,
) -> (Vec<usize>, Vec<u64>) {
    let mut masks: Vec<u64> = Vec::new();
    let classes = (0..out)
        .map(|p| {
            let mask = (0..k).fold(0u64, |acc, a| {
                let i = (p as i64)
                    .saturating_mul(stride)
                    .saturating_sub(pad)
                    .saturating_add((a as i64).saturating_mul(dilation));
                if i >= 0 && i < len as i64 {
                    acc | 1 << a
                } else {
                    acc
                }
            });
            match masks.iter().position(|&x| x == mask) {
                Some(c) => c,
                None => {
                    masks.push(mask);
                    masks.len() - 1
                }
            }
        })
        .collect();
    (classes, masks)
}
#[cfg(test)]
mod tests {
    use crate::ir::graph::attr_int;
    use crate::ops::channel::testing::Net;
    use crate::ops::simplify::testing::{bn, folds_exactly};

    #[test]
    fn folding_a_following_batch_norm_is_exact() {
        // Grouped with bias, then without bias.
        let mut n = Net::new();
        let x = n.input(&[1, 4, 5, 5]);
        let (w, b) = (n.floats(&[6, 2, 3, 3]), n.floats(&[6]));
        let y = n.op("Conv", &[x, w, b], vec![attr_int("group", 2)]);
        let y = bn(&mut n, y, 6);
        let w = n.floats(&[3, 6, 1, 1]);
        let y = n.op("Conv", &[y, w], vec![]);
        let y = bn(&mut n, y, 3);
        n.output(y);
        folds_exactly(&n.model(13));
    }
}
