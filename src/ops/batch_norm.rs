//! Per-channel normalisation: `BatchNormalization` and `InstanceNormalization`.
//!
//! Y has X's type and shape (X is `[N, C, D1..Dn]`). BatchNormalization's optional extra
//! outputs (opset 14+ training mode: running mean/var; opsets 6–9: mean, var, saved mean,
//! saved var) are all `[C]`, typed like the `input_mean` input (opset 15's `T2`) or else X.
//! Per-channel parameters (`scale`, `B`, `mean`, `var`) must have C elements when both are known;
//! a mismatch is an error (it usually means a channel was pruned on one side only).
//!
//! Cost: 2 FLOPs per output element (one multiply and one add once the statistics are folded
//! into a per-channel scale and shift). Not handled: the pre-opset-9 `spatial=0` mode, whose
//! parameters are `[C, D1..Dn]` (they are not checked then), and constant folding.
//!
//! At inference with constant 1-D parameters, BatchNormalization is a per-channel affine map
//! (`Op::channel_affine`), which `fold_batch_norm` folds into the producing Conv/Gemm.

use crate::error::{Error, Result};
use crate::ir::graph::attr_float;
use crate::ir::{Dim, Fact, Node, Tensor, ValueId};

use super::channel::{ConstCx, Link, LinkCx, Map, Slot};
use super::simplify::ChannelAffine;
use super::vjp::{Build, VjpCx};
use super::{util, Cost, Cx, Op};

/// The channel count of X (`X[1]`), preferring a known parameter length when X's is not known.
fn channels(cx: &Cx, xs: &[Dim], params: &[usize]) -> Result<Dim> {
    let mut c = xs.get(1).cloned().unwrap_or(Dim::Unknown);
    let nd = xs.len();
    for &p in params {
        let Some(ps) = cx
            .inputs
            .get(p)
            .copied()
            .flatten()
            .and_then(|f| f.shape.as_ref())
        else {
            continue;
        };
        if ps.len() != 1 {
            continue;
        }
        match (c.known(), ps[0].known()) {
            (Some(a), Some(b)) if a != b => {
                return Err(cx.err(format!(
                    "input has {a} channels but parameter input {p} has {b} elements"
                )));
            }
            (None, Some(b)) if nd != 1 => c = Dim::Known(b),
            _ => {}
        }
    }
    Ok(c)
}

fn two_per_element(outputs: &[Option<&Fact>]) -> Cost {
    Cost {
        macs: 0,
        flops: 2 * util::output_numel(outputs, 0),
    }
}

/// Channels on axis 1 pass; the per-channel parameters (inputs 1.. up to `last`) are members.
fn norm_links(cx: &LinkCx, last: usize) -> Vec<Link> {
    let mut links = Vec::new();
    for (a, _) in cx.tracked_axes(0) {
        if a != 1 {
            links.push(Link::Block {
                slot: Slot::input(0, a),
                reason: "normalisation statistics span this axis".into(),
            });
            continue;
        }
        links.push(Link::Pass {
            from: Slot::input(0, 1),
            to: Slot::output(0, 1),
            map: Map::Identity,
        });
        for p in 1..=last {
            if cx.node.input(p).is_none() {
                continue;
            }
            if !cx.is_const(p) {
                links.push(Link::Block {
                    slot: Slot::input(0, 1),
                    reason: format!("parameter input {p} is not a constant"),
                });
                continue;
            }
            links.push(Link::Member {
                input: p,
                axis: 0,
                slot: Slot::output(0, 1),
                map: Map::Identity,
            });
        }
    }
    links
}

/// `BatchNormalization` (inference, with training-mode statistics outputs typed and shaped).
pub struct BatchNorm {
    name: &'static str,
}

impl Op for BatchNorm {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((5, 5))
    }

    /// Every input is a float tensor (the spec's T, T1 and T2); constant statistics are 1-D.
    fn check(&self, cx: &super::CheckCx) -> Vec<String> {
        use crate::ir::DType::*;
        let mut errs = Vec::new();
        for (port, t) in cx.dtypes.iter().enumerate() {
            if let Some(t) = t.filter(|t| !matches!(t, F16 | F32 | F64 | BF16)) {
                errs.push(format!(
                    "input {port} is {t}, the spec requires a float type (input type)"
                ));
            }
        }
        for (port, c) in cx.consts.iter().enumerate().skip(1) {
            if let Some(c) = c.filter(|c| c.shape().len() != 1) {
                errs.push(format!(
                    "input {port} has shape {:?}, the spec requires one value per channel (statistics)",
                    c.shape()
                ));
            }
        }
        errs
    }

    /// Opset 9 dropped `spatial` (only the per-channel form, `spatial = 1`, remains); opset
    /// 7 dropped `is_test` and opset 6 `consumed_inputs`.
    fn upgrade(&self, node: &Node, from: i64, to: i64) -> Result<super::Upgrade> {
        let mut u = super::Upgrade::default();
        if self.name != "BatchNormalization" {
            return Ok(u);
        }
        if from < 9 && to >= 9 {
            if node.attr_i("spatial") == Some(0) {
                return Err(Error::node(
                    &node.name,
                    &node.op_type,
                    format!("spatial = 0 has no equivalent at opset {to}"),
                ));
            }
            if node.attr("spatial").is_some() {
                u.drop.push("spatial");
            }
        }
        for (old, attr) in [(7, "is_test"), (6, "consumed_inputs")] {
            if from < old && to >= old && node.attr(attr).is_some() {
                u.drop.push(attr);
            }
        }
        Ok(u)
    }

    fn weight_input(&self, port: usize) -> bool {
        // Scale and bias (not the running statistics).
        port == 1 || port == 2
    }

    fn channel_scale_input(&self) -> Option<usize> {
        Some(1)
    }

    fn fresh_init(
        &self,
        _node: &crate::ir::Node,
        weights: &[Option<&[usize]>],
    ) -> Vec<(usize, super::FreshInit)> {
        // γ = 1, β = 0, running mean 0, running variance 1.
        [(1, 1.0), (2, 0.0), (3, 0.0), (4, 1.0)]
            .into_iter()
            .filter(|&(p, _)| weights.get(p).copied().flatten().is_some())
            .map(|(p, v)| (p, super::FreshInit::Fill(v)))
            .collect()
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        // scale, B, mean, var.
        norm_links(cx, 4)
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        // y = (x - mean) / sqrt(var + eps) · scale + B: constant when scale = 0 or x is constant.
        let at = |p: usize| cx.inputs.get(p).copied().flatten();
        let (scale, b) = (at(1)?, at(2)?);
        if scale == 0.0 {
            return Some(b);
        }
        let eps = cx.node.attr_f("epsilon").unwrap_or(1e-5) as f64;
        Some((at(0)? - at(3)?) / (at(4)? + eps).sqrt() * scale + b)
    }

    fn channel_affine(&self, node: &Node, consts: &[Option<&Tensor>]) -> Option<ChannelAffine> {
        // Inference with constant 1-D scale, B, mean, var of one value per channel:
        // s = scale / sqrt(var + eps), shift = B − mean·s.
        if node.attr_i("training_mode").unwrap_or(0) != 0
            || node.attr_i("spatial").unwrap_or(1) != 1
        {
            return None;
        }
        let mut params = Vec::with_capacity(4);
        for port in 1..=4 {
            let t = consts.get(port).copied().flatten()?;
            let (Some(vals), 1) = (t.to_f64_vec(), t.shape().len()) else {
                return None;
            };
            params.push(vals);
        }
        let channels = params[0].len();
        if params.iter().any(|p| p.len() != channels) {
            return None;
        }
        let eps = f64::from(node.attr_f("epsilon").unwrap_or(1e-5));
        let scale: Vec<f64> = (0..channels)
            .map(|c| params[0][c] / (params[3][c] + eps).sqrt())
            .collect();
        let shift: Vec<f64> = (0..channels)
            .map(|c| params[1][c] - params[2][c] * scale[c])
            .collect();
        Some(ChannelAffine { scale, shift })
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let Some(x) = util::required_input(cx, 0)? else {
            return Ok(None);
        };
        let n_out = cx.node.outputs.len().max(1);
        let stat_dtype = cx
            .inputs
            .get(3)
            .copied()
            .flatten()
            .and_then(|f| f.dtype)
            .or(x.dtype);
        let c = match &x.shape {
            Some(xs) if cx.node.attr_i("spatial").unwrap_or(1) != 0 => {
                if xs.is_empty() {
                    return Err(cx.err("input must have at least one dimension"));
                }
                channels(cx, xs, &[1, 2, 3, 4])?
            }
            _ => Dim::Unknown,
        };
        let mut out = vec![Fact {
            dtype: x.dtype,
            shape: x.shape.clone(),
            ..Default::default()
        }];
        for _ in 1..n_out {
            out.push(Fact::new(stat_dtype, vec![c.clone()]));
        }
        Ok(Some(out))
    }

    fn cost(&self, _cx: &Cx, outputs: &[Option<&Fact>]) -> Cost {
        two_per_element(outputs)
    }

    fn vjp(
        &self,
        cx: &mut VjpCx,
        grads: &[Option<ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<ValueId>>> {
        batch_norm_vjp(cx, grads, needs)
    }

    fn training_mode(
        &self,
        node: &crate::ir::Node,
        opset: i64,
    ) -> Result<Option<super::training::TrainingMode>> {
        // One training-mode node with momentum 0: outputs 1 and 2 are the batch mean and
        // (biased) variance, and the running statistics are inputs 3 and 4.
        let err = |msg: String| crate::error::Error::node(&node.name, &node.op_type, msg);
        if node.attr_i("spatial") == Some(0) {
            return Err(err("spatial=0 is not supported".into()));
        }
        if opset < 14 {
            return Err(err(format!(
                "training mode needs opset 14 or later (the model has {opset})"
            )));
        }
        let eps = node.attr_f("epsilon").unwrap_or(1e-5);
        Ok(Some(super::training::TrainingMode {
            attrs: vec![
                attr_float("epsilon", eps),
                attr_float("momentum", 0.0),
                crate::ir::graph::attr_int("training_mode", 1),
            ],
            mean: (3, 1),
            var: (4, 2),
            momentum: node.attr_f("momentum").map_or(0.9, f64::from),
        }))
    }
}

/// Backward rule of inference-mode `BatchNormalization` (fixed statistics), with
/// r = 1/√(var+ε) per channel and sums over every axis but the channel:
/// dX = dY·γ·r, dγ = Σ dY·(X−mean)·r, dβ = Σ dY, dmean = −γ·r·Σ dY,
/// dvar = −½·γ·r³·Σ dY·(X−mean). Training mode goes to [`batch_norm_training_vjp`].
fn batch_norm_vjp(
    cx: &mut VjpCx,
    grads: &[Option<ValueId>],
    needs: &[bool],
) -> Result<Vec<Option<ValueId>>> {
    let need = |p: usize| needs.get(p).copied().unwrap_or(false);
    let mut out = vec![None; needs.len()];
    if grads.iter().skip(1).any(Option::is_some) {
        return Err(
            cx.err("the loss depends on the statistics outputs, which have no backward rule")
        );
    }
    if cx.attr_i("training_mode", 0) != 0 {
        return batch_norm_training_vjp(cx, grads, needs);
    }
    let Some(dy) = grads.first().copied().flatten() else {
        return Ok(out);
    };
    if !needs.contains(&true) {
        return Ok(out);
    }
    if cx.attr_i("spatial", 1) == 0 {
        return Err(cx.err("spatial=0 has no backward rule"));
    }
    let x = cx.input(0)?;
    let xs = cx.shape(x)?;
    if xs.len() < 2 {
        return Err(cx.err(format!("input rank {} is below 2", xs.len())));
    }
    let c = xs[1];
    let (scale, mean, var) = (cx.input(1)?, cx.input(3)?, cx.input(4)?);
    for p in 1..=4 {
        let s = cx.shape(cx.input(p)?)?;
        if s != [c] {
            return Err(cx.err(format!(
                "parameter input {p} has shape {s:?}, expected [{c}]"
            )));
        }
    }
    let dtype = cx.dtype(x);
    let mut bshape = vec![1; xs.len()];
    bshape[1] = c;
    let axes: Vec<i64> = (0..xs.len() as i64).filter(|&a| a != 1).collect();
    let eps = cx.fconst(dtype, vec![], &[f64::from(cx.attr_f("epsilon", 1e-5))])?;
    let ve = cx.op("Add", &[var, eps], vec![]);
    let sd = cx.op("Sqrt", &[ve], vec![]);
    let r = cx.op("Reciprocal", &[sd], vec![]);
    let gr = cx.op("Mul", &[scale, r], vec![]);
    if need(0) {
        let k = cx.reshape(gr, &bshape);
        out[0] = Some(cx.op("Mul", &[dy, k], vec![]));
    }
    let sum_dy = (need(2) || need(3)).then(|| cx.reduce_sum(dy, &axes, false));
    let sum_dy_xm = if need(1) || need(4) {
        let m = cx.reshape(mean, &bshape);
        let xm = cx.op("Sub", &[x, m], vec![]);
        let p = cx.op("Mul", &[dy, xm], vec![]);
        Some(cx.reduce_sum(p, &axes, false))
    } else {
        None
    };
    if let (true, Some(s)) = (need(1), sum_dy_xm) {
        out[1] = Some(cx.op("Mul", &[s, r], vec![]));
    }
    if let (true, Some(s)) = (need(2), sum_dy) {
        out[2] = Some(s);
    }
    if let (true, Some(s)) = (need(3), sum_dy) {
        let t = cx.op("Mul", &[s, gr], vec![]);
        out[3] = Some(cx.op("Neg", &[t], vec![]));
    }
    if let (true, Some(s)) = (need(4), sum_dy_xm) {
        let half = cx.fconst(dtype, vec![], &[-0.5])?;
        let r2 = cx.op("Mul", &[r, r], vec![]);
        let t = cx.op("Mul", &[gr, r2], vec![]);
        let t = cx.op("Mul", &[t, half], vec![]);
        out[4] = Some(cx.op("Mul", &[s, t], vec![]));
    }
    Ok(out)
}

/// Backward rule of training-mode `BatchNormalization` (opset 14+, `training_mode=1`), in
/// closed form. The batch statistics must be the node's outputs 1 and 2, which holds with
/// `momentum=0` (the running outputs are then the batch mean μ and biased variance σ²): the
/// training compiler emits it so and keeps its own running averages. With r = 1/√(σ²+ε),
/// a = γ·r, n values per channel and sums over every axis but the channel,
/// S = Σ dY·(X−μ) = Σ dY·X − μ·Σ dY:
///
/// ```text
/// dγ = r·S          dβ = Σ dY
/// dX = a·dY − (c·X + e),   c = a·r²·S/n,   e = a·Σ dY/n − μ·c
/// ```
///
/// The per-channel affine `c·X + e` is itself a `BatchNormalization` (mean 0, variance 1,
/// ε = 0), one pass over X. Six passes over the activations in all, against about twelve for
/// the rule chain of the decomposed form. S loses precision when |μ| ≫ σ (cancellation).
/// Not handled: gradients of the statistics outputs, a non-zero momentum, `spatial=0`.
fn batch_norm_training_vjp(
    cx: &mut VjpCx,
    grads: &[Option<ValueId>],
    needs: &[bool],
) -> Result<Vec<Option<ValueId>>> {
    let need = |p: usize| needs.get(p).copied().unwrap_or(false);
    let mut out = vec![None; needs.len()];
    let Some(dy) = grads.first().copied().flatten() else {
        return Ok(out);
    };
    if need(3) || need(4) {
        return Err(cx.err(
            "the running statistics of a training-mode BatchNormalization carry no gradient",
        ));
    }
    if !(need(0) || need(1) || need(2)) {
        return Ok(out);
    }
    if cx.attr_f("momentum", 0.9) != 0.0 {
        return Err(cx.err(
            "a training-mode BatchNormalization is differentiated only with momentum 0 \
             (its outputs 1 and 2 are then the batch statistics)",
        ));
    }
    if cx.attr_i("spatial", 1) == 0 {
        return Err(cx.err("spatial=0 has no backward rule"));
    }
    let (x, scale) = (cx.input(0)?, cx.input(1)?);
    let (mu, var) = (cx.output(1)?, cx.output(2)?);
    let xs = cx.shape(x)?;
    if xs.len() < 2 {
        return Err(cx.err(format!("input rank {} is below 2", xs.len())));
    }
    let c = xs[1];
    for v in [scale, mu, var] {
        let s = cx.shape(v)?;
        if s != [c] {
            return Err(cx.err(format!(
                "'{}' has shape {s:?}, expected [{c}]",
                cx.g.value(v).name
            )));
        }
    }
    if cx.kernels_for(&[x, scale, mu, var]) {
        // Two passes over the activation instead of six: lopper's kernel.
        let k = crate::runtime::kernels::batch_norm_grad::OP;
        let eps = attr_float("epsilon", cx.attr_f("epsilon", 1e-5));
        let g = cx.kernel(k, &[dy, x, scale, mu, var], vec![eps], &[&xs, &[c], &[c]]);
        for (p, v) in g.into_iter().enumerate() {
            if need(p) {
                out[p] = Some(v);
            }
        }
        return Ok(out);
    }
    let n = xs.iter().product::<usize>() / c.max(1);
    let dtype = cx.dtype(x);
    let mut bshape = vec![1; xs.len()];
    bshape[1] = c;
    let axes: Vec<i64> = (0..xs.len() as i64).filter(|&a| a != 1).collect();
    let eps = cx.fconst(dtype, vec![], &[f64::from(cx.attr_f("epsilon", 1e-5))])?;
    let inv_n = cx.fconst(dtype, vec![], &[1.0 / n as f64])?;
    let ve = cx.op("Add", &[var, eps], vec![]);
    let sd = cx.op("Sqrt", &[ve], vec![]);
    let r = cx.op("Reciprocal", &[sd], vec![]);
    let sum_dy = cx.reduce_sum(dy, &axes, false);
    if need(2) {
        out[2] = Some(sum_dy);
    }
    if !(need(0) || need(1)) {
        return Ok(out);
    }
    let dyx = cx.op("Mul", &[dy, x], vec![]);
    let sum_dyx = cx.reduce_sum(dyx, &axes, false);
    let mu_sdy = cx.op("Mul", &[mu, sum_dy], vec![]);
    let s = cx.op("Sub", &[sum_dyx, mu_sdy], vec![]);
    if need(1) {
        out[1] = Some(cx.op("Mul", &[s, r], vec![]));
    }
    if need(0) {
        let a = cx.op("Mul", &[scale, r], vec![]);
        // c = a·r²·S/n, e = a·ΣdY/n − μ·c.
        let r2 = cx.op("Mul", &[r, r], vec![]);
        let ar2 = cx.op("Mul", &[a, r2], vec![]);
        let sn = cx.op("Mul", &[s, inv_n], vec![]);
        let cc = cx.op("Mul", &[ar2, sn], vec![]);
        let dyn_ = cx.op("Mul", &[sum_dy, inv_n], vec![]);
        let e1 = cx.op("Mul", &[a, dyn_], vec![]);
        let muc = cx.op("Mul", &[mu, cc], vec![]);
        let e = cx.op("Sub", &[e1, muc], vec![]);
        let zeros = cx.fconst(dtype, vec![c], &vec![0.0; c])?;
        let ones = cx.fconst(dtype, vec![c], &vec![1.0; c])?;
        let affine = cx.op(
            "BatchNormalization",
            &[x, cc, e, zeros, ones],
            vec![attr_float("epsilon", 0.0)],
        );
        let ak = cx.reshape(a, &bshape);
        let scaled = cx.op("Mul", &[dy, ak], vec![]);
        out[0] = Some(cx.op("Sub", &[scaled, affine], vec![]));
    }
    Ok(out)
}

/// `InstanceNormalization`: Y like X; `scale` and `B` are `[C]`.
pub struct InstanceNorm {
    name: &'static str,
}

impl Op for InstanceNorm {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((3, 3))
    }

    fn weight_input(&self, port: usize) -> bool {
        // Scale and bias.
        port == 1 || port == 2
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        // scale, B.
        norm_links(cx, 2)
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let Some(x) = util::required_input(cx, 0)? else {
            return Ok(None);
        };
        if let Some(xs) = &x.shape {
            if xs.len() < 2 {
                return Err(cx.err(format!(
                    "input rank {} is below 2 (expected [N, C, ...])",
                    xs.len()
                )));
            }
            channels(cx, xs, &[1, 2])?;
        }
        Ok(Some(vec![Fact {
            dtype: x.dtype,
            shape: x.shape.clone(),
            ..Default::default()
        }]))
    }

    fn cost(&self, _cx: &Cx, outputs: &[Option<&Fact>]) -> Cost {
        two_per_element(outputs)
    }
}

/// `BatchNormalization`.
pub static BATCH_NORM: BatchNorm = BatchNorm {
    name: "BatchNormalization",
};

/// `InstanceNormalization`.
pub static INSTANCE_NORM: InstanceNorm = InstanceNorm {
    name: "InstanceNormalization",
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::util::test_extra::cost;
    use crate::ops::util::testing::{f32_fact, infer, node, shape};

    fn bn_inputs(x: &str, c: &str) -> Vec<Option<Fact>> {
        vec![
            f32_fact(x),
            f32_fact(c),
            f32_fact(c),
            f32_fact(c),
            f32_fact(c),
        ]
    }

    #[test]
    fn batch_norm_keeps_symbolic_batch() {
        let n = node("BatchNormalization", 1, vec![]);
        let r = infer(&BATCH_NORM, &n, &bn_inputs("N,16,8,8", "16"), 15).unwrap();
        let r = r.unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].shape, Some(shape("N,16,8,8")));
        assert_eq!(r[0].dtype, Some(crate::ir::DType::F32));
    }

    #[test]
    fn batch_norm_training_outputs_are_per_channel() {
        let n = node("BatchNormalization", 3, vec![]);
        let r = infer(&BATCH_NORM, &n, &bn_inputs("2,?,4", "5"), 15)
            .unwrap()
            .unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].shape, Some(shape("5")));
        assert_eq!(r[2].shape, Some(shape("5")));
    }

    #[test]
    fn batch_norm_channel_mismatch_is_an_error() {
        let n = node("BatchNormalization", 1, vec![]);
        let e = infer(&BATCH_NORM, &n, &bn_inputs("1,16,8,8", "8"), 15).unwrap_err();
        assert!(e.to_string().contains("16 channels"), "{e}");
    }

    #[test]
    fn instance_norm_and_cost() {
        let n = node("InstanceNormalization", 1, vec![]);
        let ins = vec![f32_fact("N,3,4,4"), f32_fact("3"), f32_fact("3")];
        let r = infer(&INSTANCE_NORM, &n, &ins, 17).unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("N,3,4,4")));
        let bad = vec![f32_fact("1,3,4,4"), f32_fact("4"), f32_fact("4")];
        assert!(infer(&INSTANCE_NORM, &n, &bad, 17).is_err());
        let c = cost(&INSTANCE_NORM, &n, &ins, &[f32_fact("2,3,4,4")]);
        assert_eq!(c.flops, 2 * 96);
        assert_eq!(c.macs, 0);
    }
}
