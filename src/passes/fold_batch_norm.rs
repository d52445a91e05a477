//! Folds an inference-mode `BatchNormalization` into the `Conv`, `ConvTranspose` or `Gemm`
//! that computes its input: with `s = scale / sqrt(var + epsilon)` per output channel, the
//! weight becomes `W·s` along the output-channel axis and the bias `(b − mean)·s + B`.
//!
//! The pass knows no op: a node folds when its op declares the per-channel affine map it
//! computes at inference ([`Op::channel_affine`]: BatchNormalization with constant 1-D
//! statistics and affine parameters of one value per channel, not in training mode nor with
//! `spatial = 0`), its extra (training) outputs are absent or unused, and its input is output 0
//! of a node whose op folds such a map into its constant weight and bias
//! ([`Op::fold_output_affine`]: Conv, ConvTranspose, Gemm) and that nothing else reads (no other
//! node, graph output or subgraph). The arithmetic is done in f64 and stored in the weight's
//! element type. A weight or bias that another node also reads is not changed in place: the
//! folded node gets a new initializer. The producer then writes the BatchNormalization's output
//! value, so its name (and a graph output's name) is kept. Parameters left unused are removed by
//! dead-code elimination.
//!
//! Channel axes (see each op): Conv weight `[M, C/g, k..]` → axis 0; ConvTranspose weight
//! `[C, M/g, k..]` → output channel `o = g·(M/g) + m` is `W[c, m]` for every input channel `c`
//! of group `g`; Gemm → row `j` of `B` when `transB = 1`, column `j` otherwise (and `beta`
//! becomes 1, with `beta·C` folded into the new bias).
//!
//! It does NOT fold a BatchNormalization that follows anything else (an activation, an Add, a
//! graph input), nor a Gemm whose `C` varies along rows, or in opset < 7 (where `C` needs the
//! `broadcast` attribute).
//!
//! [`Op::channel_affine`]: crate::ops::Op::channel_affine
//! [`Op::fold_output_affine`]: crate::ops::Op::fold_output_affine

use crate::error::{Error, Result};
use crate::ir::{Model, NodeId, Tensor, ValueId};
use crate::ops;
use crate::ops::simplify::{AffineFold, FoldCx};

use super::{add_initializer, eliminate_dead_code};

/// Folds every foldable BatchNormalization (every node computing a constant per-channel
/// affine map) into its producer, then removes dead code. Returns whether anything was folded.
pub fn fold_batch_norm(model: &mut Model) -> Result<bool> {
    let candidates: Vec<NodeId> = model
        .graph
        .topo_order()?
        .into_iter()
        .filter(|&n| {
            let node = model.graph.node(n);
            ops::lookup(&node.domain, &node.op_type).is_some()
        })
        .collect();
    let mut changed = false;
    for n in candidates {
        if let Some(fold) = plan(model, n)? {
            apply(model, fold);
            changed = true;
        }
    }
    if changed {
        eliminate_dead_code(model)?;
    }
    Ok(changed)
}

/// A fold to perform.
struct Fold {
    bn: NodeId,
    producer: NodeId,
    fold: AffineFold,
}

/// Checks that `bn` folds and computes the producer's new weight and bias; `None` if it does
/// not fold.
fn plan(model: &Model, bn: NodeId) -> Result<Option<Fold>> {
    let g = &model.graph;
    let node = g.node(bn);
    let Some(affine) = ops::channel_affine_of(g, bn) else {
        return Ok(None);
    };
    let extra_used = node
        .outputs
        .iter()
        .skip(1)
        .flatten()
        .any(|&v| !g.value(v).uses.is_empty() || g.outputs.contains(&v));
    let (Some(x), Some(_)) = (node.input(0), node.output(0)) else {
        return Ok(None);
    };
    if extra_used {
        return Ok(None);
    }
    let Some((producer, 0)) = g.value(x).producer else {
        return Ok(None);
    };
    if g.value(x).uses.len() != 1 || g.outputs.contains(&x) || g.is_captured(x) {
        return Ok(None);
    }
    let p = g.node(producer);
    let Some(p_op) = ops::lookup(&p.domain, &p.op_type) else {
        return Ok(None);
    };
    let cx = FoldCx {
        node: p,
        consts: &g.const_inputs(p),
        opset: model.opset(),
        affine: &affine,
    };
    let err = |e: Error| Error::node(&node.name, &node.op_type, e.to_string());
    Ok(p_op
        .fold_output_affine(&cx)
        .map_err(err)?
        .map(|fold| Fold { bn, producer, fold }))
}

/// Rewrites the producer's weight and bias, then makes it write the BatchNormalization's
/// output in place of the BatchNormalization.
fn apply(model: &mut Model, f: Fold) {
    let AffineFold {
        weight: (w_port, weight),
        bias: (b_port, bias),
        attrs,
    } = f.fold;
    replace_constant(model, f.producer, w_port, weight, "bn_folded");
    replace_constant(model, f.producer, b_port, bias, "bn_bias");
    let g = &mut model.graph;
    for a in attrs {
        g.node_mut(f.producer).set_attr(a);
    }
    let bn = g.node(f.bn);
    let (x, y) = (bn.input(0), bn.output(0));
    let extra: Vec<ValueId> = bn.outputs.iter().skip(1).flatten().copied().collect();
    g.remove_node(f.bn);
    if let (Some(x), Some(y)) = (x, y) {
        g.set_output(f.producer, 0, y);
        g.remove_value(x);
    }
    for v in extra {
        g.remove_value(v);
    }
}

/// Sets input `port` of `node` to `t`: in place when the node is the only reader of a
/// (non-output) initializer of the same shape there (a declared input type stays true),
/// otherwise as a new initializer.
fn replace_constant(model: &mut Model, node: NodeId, port: usize, t: Tensor, suffix: &str) {
    let g = &mut model.graph;
    let old = g.node(node).input(port);
    if let Some(v) = old {
        let same_shape = g.init(v).is_some_and(|old| old.shape() == t.shape());
        if g.value(v).uses.len() == 1 && !g.outputs.contains(&v) && same_shape {
            g.set_init(v, t);
            return;
        }
    }
    let base = match old {
        Some(v) => format!("{}_{suffix}", g.value(v).name),
        None => format!("{}_{suffix}", g.node(node).name),
    };
    let v = add_initializer(model, &base, t);
    model.graph.set_input(node, port, Some(v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::{attr_float, attr_int};
    use crate::ir::{verify, Graph};
    use crate::passes::testutil::{model, ops};

    const SCALE: [f32; 2] = [2.0, 0.5];
    const B: [f32; 2] = [1.0, -1.0];
    const MEAN: [f32; 2] = [0.5, 2.0];
    const VAR: [f32; 2] = [3.0, 0.0];
    const EPS: f32 = 1.0;

    /// s and B − mean·s of the test BatchNormalization.
    fn affine() -> ([f64; 2], [f64; 2]) {
        let s: Vec<f64> = (0..2)
            .map(|c| SCALE[c] as f64 / (VAR[c] as f64 + EPS as f64).sqrt())
            .collect();
        let s = [s[0], s[1]];
        (
            s,
            [
                B[0] as f64 - MEAN[0] as f64 * s[0],
                B[1] as f64 - MEAN[1] as f64 * s[1],
            ],
        )
    }

    /// `x → producer(W, bias?) → BN → y` (y a graph output), returning the model.
    fn build(
        op: &str,
        w: Tensor,
        bias: Option<Tensor>,
        attrs: Vec<crate::onnx::proto::AttributeProto>,
    ) -> Model {
        let mut g = Graph::new();
        let x = g.add_value("x");
        g.inputs.push(x);
        let w = g.add_initializer("w", w);
        let b = bias.map(|b| g.add_initializer("b", b));
        let mut ins = vec![Some(x), Some(w)];
        if b.is_some() {
            ins.push(b);
        }
        let p = g.add_node("p", op, &ins, &["p_out"], attrs);
        let p_out = g.node(p).outputs[0];
        let params: Vec<Option<ValueId>> =
            [("scale", SCALE), ("B", B), ("mean", MEAN), ("var", VAR)]
                .iter()
                .map(|(n, v)| Some(g.add_initializer(n, Tensor::from_f32(vec![2], v))))
                .collect();
        let mut ins = vec![p_out];
        ins.extend(params);
        let bn = g.add_node(
            "bn",
            "BatchNormalization",
            &ins,
            &["y"],
            vec![attr_float("epsilon", EPS)],
        );
        g.outputs.push(g.node(bn).outputs[0].unwrap());
        model(g, 13)
    }

    fn close(a: &[f32], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    fn folded(m: &Model) -> (NodeId, Vec<f32>, Vec<f32>) {
        let g = &m.graph;
        let y = g.value_by_name("y").unwrap();
        assert_eq!(g.outputs, [y]);
        let (p, port) = g.value(y).producer.unwrap();
        assert_eq!(port, 0);
        let node = g.node(p);
        let w = g
            .init(node.input(1).unwrap())
            .unwrap()
            .to_f32_vec()
            .unwrap();
        let b = g
            .init(node.input(2).unwrap())
            .unwrap()
            .to_f32_vec()
            .unwrap();
        (p, w, b)
    }

    #[test]
    fn folds_into_conv_without_bias() {
        // W [2, 1, 1, 2]
        let w = Tensor::from_f32(vec![2, 1, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
        let mut m = build("Conv", w, None, vec![]);
        assert!(fold_batch_norm(&mut m).unwrap());
        verify(&m.graph).unwrap();
        assert_eq!(ops(&m), ["Conv"]);
        let (s, t) = affine();
        let (_, w, b) = folded(&m);
        close(&w, &[s[0], 2.0 * s[0], 3.0 * s[1], 4.0 * s[1]]);
        close(&b, &t);
        // Only the weight and new bias remain.
        assert_eq!(m.graph.initializers.len(), 2);
        assert!(!fold_batch_norm(&mut m).unwrap());
    }

    #[test]
    fn folds_into_conv_with_bias() {
        let w = Tensor::from_f32(vec![2, 1, 1, 1], &[1.0, 3.0]);
        let bias = Tensor::from_f32(vec![2], &[10.0, 20.0]);
        let mut m = build("Conv", w, Some(bias), vec![]);
        assert!(fold_batch_norm(&mut m).unwrap());
        verify(&m.graph).unwrap();
        let (s, t) = affine();
        let (_, w, b) = folded(&m);
        close(&w, &[s[0], 3.0 * s[1]]);
        close(&b, &[10.0 * s[0] + t[0], 20.0 * s[1] + t[1]]);
        // Weight and bias were rewritten in place (same names).
        let g = &m.graph;
        assert!(g.value_by_name("w").is_some() && g.value_by_name("b").is_some());
    }

    #[test]
    fn folds_into_grouped_conv_transpose() {
        // Cin = 2, group = 2, M/group = 1 → M = 2; W [2, 1, 1, 2].
        // Output channel o = g·1 + 0 reads W[c = g].
        let w = Tensor::from_f32(vec![2, 1, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
        let mut m = build("ConvTranspose", w, None, vec![attr_int("group", 2)]);
        assert!(fold_batch_norm(&mut m).unwrap());
        verify(&m.graph).unwrap();
        let (s, t) = affine();
        let (_, w, b) = folded(&m);
        close(&w, &[s[0], 2.0 * s[0], 3.0 * s[1], 4.0 * s[1]]);
        close(&b, &t);
    }

    #[test]
    fn folds_into_conv_transpose_along_axis_1() {
        // Cin = 2, group = 1, M = 2; W [2, 2, 1, 1]: W[c, m] scales by s[m].
        let w = Tensor::from_f32(vec![2, 2, 1, 1], &[1.0, 2.0, 3.0, 4.0]);
        let mut m = build("ConvTranspose", w, None, vec![]);
        assert!(fold_batch_norm(&mut m).unwrap());
        let (s, _) = affine();
        let (_, w, _) = folded(&m);
        close(&w, &[s[0], 2.0 * s[1], 3.0 * s[0], 4.0 * s[1]]);
    }

    #[test]
    fn folds_into_gemm_both_layouts() {
        let (s, t) = affine();
        // transB = 1: B [2 out, 3 in], rows scale.
        let w = Tensor::from_f32(vec![2, 3], &[1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
        let c = Tensor::from_f32(vec![1, 2], &[1.0, 2.0]);
        let attrs = vec![attr_int("transB", 1), attr_float("beta", 0.5)];
        let mut m = build("Gemm", w, Some(c), attrs);
        assert!(fold_batch_norm(&mut m).unwrap());
        verify(&m.graph).unwrap();
        let (p, w, b) = folded(&m);
        close(&w, &[s[0], s[0], s[0], 2.0 * s[1], 2.0 * s[1], 2.0 * s[1]]);
        close(&b, &[0.5 * s[0] + t[0], 1.0 * s[1] + t[1]]);
        assert_eq!(m.graph.node(p).attr_f("beta"), Some(1.0));

        // transB = 0: B [3 in, 2 out], columns scale.
        let w = Tensor::from_f32(vec![3, 2], &[1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
        let mut m = build("Gemm", w, None, vec![]);
        assert!(fold_batch_norm(&mut m).unwrap());
        let (_, w, b) = folded(&m);
        let row = [s[0], 2.0 * s[1]];
        close(&w, &[row, row, row].concat());
        close(&b, &t);
    }

    #[test]
    fn shared_weight_is_copied() {
        let w = Tensor::from_f32(vec![2, 1, 1, 1], &[1.0, 3.0]);
        let mut m = build("Conv", w, None, vec![]);
        let g = &mut m.graph;
        let x = g.value_by_name("x").unwrap();
        let w = g.value_by_name("w").unwrap();
        let other = g.add_node("other", "Conv", &[Some(x), Some(w)], &["z"], vec![]);
        g.outputs.push(g.node(other).outputs[0].unwrap());
        assert!(fold_batch_norm(&mut m).unwrap());
        verify(&m.graph).unwrap();
        let g = &m.graph;
        let w = g.value_by_name("w").unwrap();
        assert_eq!(g.init(w).unwrap().to_f32_vec().unwrap(), [1.0, 3.0]);
        let y = g.value_by_name("y").unwrap();
        let (p, _) = g.value(y).producer.unwrap();
        assert_ne!(g.node(p).input(1), Some(w));
        assert_eq!(ops(&m), ["Conv", "Conv"]);
    }

    #[test]
    fn leaves_bn_after_other_ops_or_with_shared_input() {
        // BN after a Relu.
        let mut g = Graph::new();
        let x = g.add_value("x");
        g.inputs.push(x);
        let r = g.add_node("r", "Relu", &[Some(x)], &["r"], vec![]);
        let r = g.node(r).outputs[0];
        let params: Vec<Option<ValueId>> = ["scale", "B", "mean", "var"]
            .iter()
            .map(|n| Some(g.add_initializer(n, Tensor::from_f32(vec![1], &[1.0]))))
            .collect();
        let mut ins = vec![r];
        ins.extend(params);
        let bn = g.add_node("bn", "BatchNormalization", &ins, &["y"], vec![]);
        g.outputs.push(g.node(bn).outputs[0].unwrap());
        let mut m = model(g, 13);
        assert!(!fold_batch_norm(&mut m).unwrap());
        assert_eq!(ops(&m), ["Relu", "BatchNormalization"]);

        // Conv output also read elsewhere.
        let w = Tensor::from_f32(vec![2, 1, 1, 1], &[1.0, 3.0]);
        let mut m = build("Conv", w, None, vec![]);
        let g = &mut m.graph;
        let p_out = g.value_by_name("p_out").unwrap();
        g.outputs.push(p_out);
        assert!(!fold_batch_norm(&mut m).unwrap());
        assert_eq!(ops(&m), ["Conv", "BatchNormalization"]);
    }
}
