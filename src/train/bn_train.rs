//! Rewrites BatchNormalization into *training mode* (batch statistics) and emits the
//! running-statistic updates.
//!
//! [`to_training_mode`] turns each node into one standard `BatchNormalization` with
//! `training_mode=1` and `momentum=0`, whose outputs 1 and 2 are then the batch mean μ and the
//! biased batch variance σ² over axes `{0, 2, ..}` (`n = N·ΠDi` values per channel). Autodiff
//! differentiates that node as a whole with the op's closed-form rule (`ops/batch_norm.rs`).
//! ONNX Runtime runs it as one kernel, which is faster than any composition of standard ops
//! and computes σ² more precisely than ReduceSum-based statistics (relative error 3e-7
//! against 3e-5 on a [128, 16, 32, 32] activation). That kernel writes outputs 1 and 2 into the
//! buffers of inputs 3 and 4, so after autodiff [`isolate_statistics`] gives every node
//! running-statistic inputs of its own that nothing else reads. The running statistics are
//! updated here, as PyTorch does (ONNX momentum `m`):
//!
//! ```text
//! running_mean' = m·running_mean + (1 − m)·μ
//! running_var'  = m·running_var  + (1 − m)·σ²·n/(n − 1)
//! ```
//!
//! Normalising uses the biased variance; the running variance gets the unbiased one. Shapes
//! must be static (the train-step compiler fixes the batch). It does not handle the
//! pre-opset-9 `spatial=0` form, needs opset ≥ 14 (the train step uses ≥ 17), and does not
//! make the running statistics graph inputs or outputs (see [`super::step`]).

use crate::analysis::Shapes;
use crate::error::{Error, Result};
use crate::ir::{DType, Graph, NodeId, Tensor, ValueId};
use crate::ops::training::TrainingMode;

use super::emit::{dtype_of, static_shape};
use crate::ops::build::{Build, Builder};

/// One node rewritten into training mode.
#[derive(Clone, Debug)]
pub struct BnUpdate {
    /// Name of the original node.
    pub node: String,
    /// The running-mean input.
    pub mean: ValueId,
    /// The running-variance input.
    pub var: ValueId,
    /// The updated running mean (`[C]`).
    pub new_mean: ValueId,
    /// The updated running variance (`[C]`).
    pub new_var: ValueId,
    /// Channels.
    pub channels: usize,
    /// The training-mode node.
    fwd: NodeId,
    /// Its op type.
    pub op_type: String,
    /// Its running-statistic input ports (mean, variance).
    ports: (usize, usize),
    /// Element type of X.
    dtype: DType,
    /// Rank of X.
    rank: usize,
    /// Output ports of the batch mean and variance.
    out_ports: (usize, usize),
}

/// Rewrites every node of `g` (facts `shapes`) whose op has a training mode
/// ([`crate::ops::Op::training_mode`]: BatchNormalization) into it; returns one [`BnUpdate`]
/// per node, in graph order.
pub fn to_training_mode(g: &mut Graph, shapes: &Shapes, opset: i64) -> Result<Vec<BnUpdate>> {
    let mut out = Vec::new();
    for n in g.topo_order()? {
        let node = g.node(n);
        let Some(op) = crate::ops::lookup(&node.domain, &node.op_type) else {
            continue;
        };
        if let Some(mode) = op.training_mode(node, opset)? {
            out.push(rewrite_one(g, shapes, opset, n, &mode)?);
        }
    }
    Ok(out)
}

fn rewrite_one(
    g: &mut Graph,
    shapes: &Shapes,
    opset: i64,
    n: NodeId,
    mode: &TrainingMode,
) -> Result<BnUpdate> {
    let node = g.node(n).clone();
    let err = |msg: String| Error::node(&node.name, &node.op_type, msg);
    let input = |p: usize| {
        node.input(p)
            .ok_or_else(|| err(format!("input {p} is missing")))
    };
    let ins = (0..node.inputs.len().max(mode.var.0 + 1))
        .map(|p| input(p).map(Some))
        .collect::<Result<Vec<_>>>()?;
    let (x, mean, var) = (input(0)?, input(mode.mean.0)?, input(mode.var.0)?);
    let y = node
        .output(0)
        .ok_or_else(|| err("output 0 is missing".into()))?;
    for (p, o) in node.outputs.iter().enumerate().skip(1) {
        if let Some(o) = o {
            if !g.value(*o).uses.is_empty() || g.outputs.contains(o) {
                return Err(err(format!(
                    "output {p} is used; only inference-mode {} can be rewritten",
                    node.op_type
                )));
            }
        }
    }
    let xs = static_shape(g, shapes, x)?;
    if xs.len() < 2 {
        return Err(err(format!(
            "input has rank {}, expected [N, C, ...]",
            xs.len()
        )));
    }
    let c = xs[1];
    let count: usize = xs[0] * xs[2..].iter().product::<usize>();
    if count < 2 {
        return Err(err(format!(
            "a training batch needs more than one value per channel (has {count})"
        )));
    }
    let dt = dtype_of(shapes, x);
    let m = mode.momentum;

    let base = format!("train_bn/{}", node.name);
    let mut outs = vec![format!("{base}/y"); 1 + mode.mean.1.max(mode.var.1)];
    outs[mode.mean.1] = format!("{base}/batch_mean");
    outs[mode.var.1] = format!("{base}/batch_var");
    let out_refs: Vec<&str> = outs.iter().map(String::as_str).collect();
    let bn = g.add_node(
        &format!("{base}/{}", node.op_type),
        &node.op_type,
        &ins,
        &out_refs,
        mode.attrs.clone(),
    );
    let outputs = &g.node(bn).outputs;
    let out = |p: usize| outputs.get(p).copied().flatten();
    let (Some(new_y), Some(bm), Some(bv)) = (out(0), out(mode.mean.1), out(mode.var.1)) else {
        return Err(err("the training-mode node lost an output".into()));
    };

    let mut e = Builder::new(g, base, opset);
    let mv = e.scalar(dt, m)?;
    let one_m = e.scalar(dt, 1.0 - m)?;
    let unbias = e.scalar(dt, (1.0 - m) * count as f64 / (count as f64 - 1.0))?;
    let a = e.op("Mul", &[mean, mv], vec![]);
    let b = e.op("Mul", &[bm, one_m], vec![]);
    let new_mean = e.op("Add", &[a, b], vec![]);
    let a = e.op("Mul", &[var, mv], vec![]);
    let b = e.op("Mul", &[bv, unbias], vec![]);
    let new_var = e.op("Add", &[a, b], vec![]);

    g.replace_uses(y, new_y);
    g.remove_node(n);
    for o in node.outputs.iter().flatten() {
        if g.value(*o).uses.is_empty() && !g.outputs.contains(o) {
            g.remove_value(*o);
        }
    }
    Ok(BnUpdate {
        node: node.name.clone(),
        mean,
        var,
        new_mean,
        new_var,
        channels: c,
        fwd: bn,
        op_type: node.op_type.clone(),
        ports: (mode.mean.0, mode.var.0),
        dtype: dt,
        rank: xs.len(),
        out_ports: (mode.mean.1, mode.var.1),
    })
}

/// Prepares each training-mode node of `bns` (after autodiff) to run as it is in ONNX
/// Runtime: its running-statistic inputs become constants of its own, because ORT's kernel
/// writes outputs 1 and 2 into the buffers of inputs 3 and 4. With momentum 0 their values do
/// not enter any output.
///
/// The constants must equal no other constant of the step: ORT merges equal small
/// initializers (its constant sharing), and the kernel would then overwrite the merged
/// tensor for every other node reading it. A fill of ones did collide: a 7-channel BN's
/// `ones(7)` statistics were merged with the `ones(7)` variance of its own backward pass, so
/// the backward read the batch mean as a variance (NaN after the first step of any model
/// pruned to a layer of ≤ 8 channels). Each tensor here is filled with its own value
/// (`private_statistic`), equal to nothing else in the step.
pub fn isolate_statistics(g: &mut Graph, bns: &[BnUpdate]) -> Result<()> {
    let mut next = 0usize;
    for b in bns {
        let node = g.node(b.fwd);
        let (mean_in, var_in) = (node.input(b.ports.0), node.input(b.ports.1));
        if node.op_type != b.op_type || mean_in.is_none() || var_in.is_none() {
            return Err(Error::node(
                &node.name,
                &node.op_type,
                "is not the training-mode node this pass emitted",
            ));
        }
        let c = b.channels;
        let base = format!("train_bn/{}", b.node);
        let mut distinct = || -> Vec<f64> {
            let v = vec![private_statistic(next, b.dtype); c];
            next += 1;
            v
        };
        let (mv, vv) = (distinct(), distinct());
        let m = g.add_initializer(
            &format!("{base}/stats_mean_in"),
            Tensor::from_f64_as(b.dtype, vec![c], &mv)?,
        );
        let v = g.add_initializer(
            &format!("{base}/stats_var_in"),
            Tensor::from_f64_as(b.dtype, vec![c], &vv)?,
        );
        g.set_input(b.fwd, b.ports.0, Some(m));
        g.set_input(b.fwd, b.ports.1, Some(v));
    }
    Ok(())
}

/// Replaces each training-mode node of `bns` (after autodiff) by standard ops computing the
/// same outputs: batch mean and biased variance by `ReduceMean` over `{0, 2, ..}`, then
/// `(x − μ)/√(σ² + ε)·γ + β`. For runtimes without a training-mode kernel at the step's
/// opset: ONNX Runtime's CUDA provider refuses `BatchNormalization` with `training_mode=1` at
/// opset 14 or later. Slower on the CPU than the fused kernel and its variance is less
/// precise (see the module documentation), so the CPU path keeps [`isolate_statistics`]
/// instead. The backward pass is untouched: it reads the replaced outputs, now the composed
/// values.
pub fn compose(g: &mut Graph, bns: &[BnUpdate], opset: i64) -> Result<()> {
    for b in bns {
        let node = g.node(b.fwd).clone();
        let (Some(x), Some(scale), Some(shift)) = (node.input(0), node.input(1), node.input(2))
        else {
            return Err(Error::node(
                &node.name,
                &node.op_type,
                "has no data, scale or shift input",
            ));
        };
        let out = |p: usize| node.outputs.get(p).copied().flatten();
        let (Some(y), Some(bm), Some(bv)) = (out(0), out(b.out_ports.0), out(b.out_ports.1)) else {
            return Err(Error::node(
                &node.name,
                &node.op_type,
                "is not the training-mode node this pass emitted",
            ));
        };
        let eps = node.attr_f("epsilon").unwrap_or(1e-5) as f64;
        let c = b.channels;
        let axes: Vec<i64> = std::iter::once(0).chain(2..b.rank as i64).collect();
        let mut bcast = vec![1usize; b.rank];
        bcast[1] = c;
        let mut e = Builder::new(g, format!("train_bn/{}/composed", b.node), opset);
        let mean = e.reduce("ReduceMean", x, &axes, true);
        let d = e.op("Sub", &[x, mean], vec![]);
        let sq = e.op("Mul", &[d, d], vec![]);
        let var = e.reduce("ReduceMean", sq, &axes, true);
        let eps = e.scalar(b.dtype, eps)?;
        let v = e.op("Add", &[var, eps], vec![]);
        let sd = e.op("Sqrt", &[v], vec![]);
        let inv = e.op("Reciprocal", &[sd], vec![]);
        let xhat = e.op("Mul", &[d, inv], vec![]);
        let gamma = e.reshape(scale, &bcast);
        let beta = e.reshape(shift, &bcast);
        let scaled = e.op("Mul", &[xhat, gamma], vec![]);
        let new_y = e.op("Add", &[scaled, beta], vec![]);
        let new_bm = e.reshape(mean, &[c]);
        let new_bv = e.reshape(var, &[c]);
        for (old, new) in [(y, new_y), (bm, new_bm), (bv, new_bv)] {
            g.replace_uses(old, new);
        }
        g.remove_node(b.fwd);
        for o in node.outputs.iter().flatten() {
            if g.value(*o).uses.is_empty() && !g.outputs.contains(o) {
                g.remove_value(*o);
            }
        }
    }
    Ok(())
}

/// The fill of the `k`-th private statistic tensor: `2^e · (1 + (k mod 63 + 1) / 64)` with
/// `e = 1 + ⌊k / 63⌋ mod E` (E = 14 in float16, whose largest finite value is below 2^16;
/// 100 otherwise), exact and finite in bfloat16, float16, float32 and float64, and never a
/// value lopper emits as a constant (0, 1, ε, a momentum). Tensors get distinct fills until
/// `63·E` of them (441 BatchNormalization nodes in float16, 3,150 otherwise), so no two
/// nodes' statistics can be merged: two nodes sharing a buffer would each read the other's
/// batch statistics in their backward pass (outputs 1 and 2 are written into that buffer).
/// A fill of period 63 per *element* did collide: ResNet-56 pruned by MaskSparsity had two
/// 8-channel nodes whose statistics started at the same offset mod 63, and its first step
/// was NaN.
fn private_statistic(k: usize, dtype: DType) -> f64 {
    let exponents = if dtype == DType::F16 { 14 } else { 100 };
    let e = 1 + (k / 63) % exponents;
    2f64.powi(e as i32) * (1.0 + ((k % 63) + 1) as f64 / 64.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::infer_shapes;
    use crate::ir::graph::attr_float;
    use crate::ir::{DType, Tensor};
    use crate::runtime::{self, BackendKind};
    use crate::train::emit::{add_input, declare};

    fn lcg(s: &mut u64) -> f64 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// The training-mode forward and running updates against a float64 reference, in ORT, at
    /// Every training-mode node's statistics are its own: on a chain of 80 eight-channel
    /// nodes (the per-element fill of period 63 repeated at the 64th), no two statistics
    /// tensors are equal, so ONNX Runtime's constant sharing cannot merge them; fills stay
    /// finite and distinct in float16 for 882 tensors.
    #[test]
    fn statistics_tensors_never_coincide() {
        let (nb, c) = (2usize, 8usize);
        let mut g = Graph::new();
        let mut x = add_input(&mut g, "x", DType::F32, &[nb, c, 3, 3]);
        let t = |v: f64| Tensor::from_f64_as(DType::F32, vec![c], &vec![v; c]).unwrap();
        for i in 0..80 {
            let ins: Vec<Option<ValueId>> = std::iter::once(Some(x))
                .chain(
                    [1.0, 0.0, 0.0, 1.0]
                        .iter()
                        .enumerate()
                        .map(|(k, &v)| Some(g.add_initializer(&format!("p{i}_{k}"), t(v)))),
                )
                .collect();
            let bn = g.add_node(
                &format!("bn{i}"),
                "BatchNormalization",
                &ins,
                &[&format!("y{i}")],
                vec![],
            );
            let y = g.node(bn).outputs[0].unwrap();
            let r = g.add_node(
                &format!("relu{i}"),
                "Relu",
                &[Some(y)],
                &[&format!("z{i}")],
                vec![],
            );
            x = g.node(r).outputs[0].unwrap();
        }
        g.outputs = vec![x];
        let mut m = crate::passes::testutil::model(g, 17);
        let shapes = infer_shapes(&m).unwrap();
        let ups = to_training_mode(&mut m.graph, &shapes, 17).unwrap();
        isolate_statistics(&mut m.graph, &ups).unwrap();
        let g = &m.graph;
        let stats: Vec<Vec<f64>> = g
            .node_ids()
            .filter(|&n| g.node(n).op_type == "BatchNormalization")
            .flat_map(|n| [3, 4].map(|p| g.node(n).input(p).unwrap()))
            .map(|v| g.init(v).unwrap().to_f64_vec().unwrap())
            .collect();
        assert_eq!(stats.len(), 160);
        for (i, a) in stats.iter().enumerate() {
            assert!(a.iter().all(|v| v.is_finite() && *v > 1.0));
            for b in &stats[..i] {
                assert_ne!(a, b);
            }
        }
        let half: Vec<u16> = (0..882)
            .map(|k| half::f16::from_f64(private_statistic(k, DType::F16)).to_bits())
            .collect();
        assert!(half.iter().all(|&h| half::f16::from_bits(h).is_finite()));
        let distinct: std::collections::HashSet<u16> = half.iter().copied().collect();
        assert_eq!(distinct.len(), 882);
        for k in 0..882 {
            let v = private_statistic(k, DType::F16);
            assert_eq!(
                half::f16::from_f64(v).to_f64(),
                v,
                "not exact in float16: {v}"
            );
        }
    }

    /// opsets 14, 17 and 18, as the fused node and [`compose`]d.
    #[test]
    fn training_mode_matches_reference() {
        if crate::runtime::ort::find_library().is_none() {
            eprintln!("NOTICE: skipping: ONNX Runtime's library is missing");
            return;
        }
        for (opset, composed) in [14, 17, 18]
            .into_iter()
            .flat_map(|o| [(o, false), (o, true)])
        {
            let (nb, c, h, w) = (3usize, 4usize, 5usize, 2usize);
            let (eps, mom) = (1e-3f64, 0.8f64);
            let mut g = Graph::new();
            let x = add_input(&mut g, "x", DType::F32, &[nb, c, h, w]);
            let mut s = 7u64;
            let mut rnd = |k: usize, sc: f64, off: f64| -> Vec<f64> {
                (0..k).map(|_| off + sc * lcg(&mut s)).collect()
            };
            let xv = rnd(nb * c * h * w, 2.0, 0.5);
            let (gv, bv, mv, vv) = (
                rnd(c, 1.0, 0.0),
                rnd(c, 1.0, 0.0),
                rnd(c, 1.0, 0.0),
                rnd(c, 0.5, 1.0),
            );
            let t = |v: &[f64]| Tensor::from_f64_as(DType::F32, vec![c], v).unwrap();
            let gi = g.add_initializer("gamma", t(&gv));
            let bi = g.add_initializer("beta", t(&bv));
            let mi = g.add_initializer("mean", t(&mv));
            let vi = g.add_initializer("var", t(&vv));
            let bn = g.add_node(
                "bn",
                "BatchNormalization",
                &[Some(x), Some(gi), Some(bi), Some(mi), Some(vi)],
                &["y"],
                vec![
                    attr_float("epsilon", eps as f32),
                    attr_float("momentum", mom as f32),
                ],
            );
            let y = g.node(bn).outputs[0].unwrap();
            let r = g.add_node("relu", "Relu", &[Some(y)], &["z"], vec![]);
            let z = g.node(r).outputs[0].unwrap();
            g.outputs = vec![z];
            let mut m = crate::passes::testutil::model(g, opset);
            let shapes = infer_shapes(&m).unwrap();
            let ups = to_training_mode(&mut m.graph, &shapes, opset).unwrap();
            assert_eq!(ups.len(), 1);
            let training = |g: &Graph| -> Vec<Option<i64>> {
                g.node_ids()
                    .filter(|&n| g.node(n).op_type == "BatchNormalization")
                    .map(|n| g.node(n).attr_i("training_mode"))
                    .collect()
            };
            assert_eq!(training(&m.graph), [Some(1)]);
            if composed {
                compose(&mut m.graph, &ups, opset).unwrap();
                assert!(training(&m.graph).is_empty());
            } else {
                isolate_statistics(&mut m.graph, &ups).unwrap();
                // Still one training-mode node, now reading statistics inputs of its own.
                assert_eq!(training(&m.graph), [Some(1)]);
                let bn = m
                    .graph
                    .node_ids()
                    .find(|&n| m.graph.node(n).op_type == "BatchNormalization")
                    .unwrap();
                for p in [3, 4] {
                    let v = m.graph.node(bn).input(p).unwrap();
                    assert!(m.graph.init(v).is_some());
                    assert_eq!(m.graph.value(v).uses.len(), 1);
                }
            }
            let g = &mut m.graph;
            declare(g, z, DType::F32, &[nb, c, h, w]);
            declare(g, ups[0].new_mean, DType::F32, &[c]);
            declare(g, ups[0].new_var, DType::F32, &[c]);
            g.outputs = vec![z, ups[0].new_mean, ups[0].new_var];

            let dir = crate::temp_dir::TempDir::new("bn_train").unwrap();
            let path = dir.path().join("bn.onnx");
            m.save(&path, &Default::default()).unwrap();
            let mut sess = runtime::load(BackendKind::Ort, &path).unwrap();
            let xt = Tensor::from_f64_as(DType::F32, vec![nb, c, h, w], &xv).unwrap();
            let out = sess.run(&[("x".into(), xt)]).unwrap();
            let got: Vec<Vec<f64>> = out.iter().map(|(_, t)| t.to_f64_vec().unwrap()).collect();

            let hw = h * w;
            let n = (nb * hw) as f64;
            let mut worst = 0f64;
            for ch in 0..c {
                let vals: Vec<f64> = (0..nb)
                    .flat_map(|b| (0..hw).map(move |i| (b * c + ch) * hw + i))
                    .map(|i| xv[i])
                    .collect();
                let mu = vals.iter().sum::<f64>() / n;
                let var = vals.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / n;
                for b in 0..nb {
                    for i in 0..hw {
                        let idx = (b * c + ch) * hw + i;
                        let want = ((xv[idx] - mu) / (var + eps).sqrt() * gv[ch] + bv[ch]).max(0.0);
                        worst = worst.max((got[0][idx] - want).abs());
                    }
                }
                let want_m = mom * mv[ch] + (1.0 - mom) * mu;
                let want_v = mom * vv[ch] + (1.0 - mom) * var * n / (n - 1.0);
                worst = worst.max((got[1][ch] - want_m).abs());
                worst = worst.max((got[2][ch] - want_v).abs());
            }
            assert!(
                worst < 1e-5,
                "opset {opset}, composed {composed}: max abs error {worst}"
            );
        }
    }

    #[test]
    fn single_value_per_channel_is_an_error() {
        let mut g = Graph::new();
        let x = add_input(&mut g, "x", DType::F32, &[1, 2]);
        let p: Vec<ValueId> = (0..4)
            .map(|i| g.add_initializer(&format!("p{i}"), Tensor::from_f32(vec![2], &[1.0, 1.0])))
            .collect();
        let bn = g.add_node(
            "bn",
            "BatchNormalization",
            &[Some(x), Some(p[0]), Some(p[1]), Some(p[2]), Some(p[3])],
            &["y"],
            vec![],
        );
        g.outputs = vec![g.node(bn).outputs[0].unwrap()];
        let mut m = crate::passes::testutil::model(g, 17);
        let shapes = infer_shapes(&m).unwrap();
        let e = to_training_mode(&mut m.graph, &shapes, 17)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'bn'") && e.contains("more than one value"),
            "{e}"
        );
    }
}
