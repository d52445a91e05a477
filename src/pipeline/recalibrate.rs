//! The BN recalibration recovery stage: re-estimates the running statistics of every node
//! with running statistics (BatchNormalization; any op whose [`Op::training_mode`] names
//! them) from calibration batches, without gradients. Pruning changes what reaches each
//! normalisation; its running mean and variance still describe the original network.
//!
//! Nodes are handled in topological order, each from the model with every earlier node
//! already recalibrated: the node's input becomes an extra output, the batches run through,
//! and its per-channel mean and (unbiased) variance over batch and spatial positions become
//! the new running statistics. That is one pass over the calibration set per node, through
//! the part of the model that computes its input (ResNet-20: 19 passes). It does not touch weights, scales or shifts, and does not check accuracy.
//!
//! [`Op::training_mode`]: crate::ops::Op::training_mode

use crate::analysis::activation_stats::CalibrationBatch;
use crate::error::{Error, Result};
use crate::ir::{DType, Model, NodeId, Tensor, ValueId};
use crate::onnx::proto::ValueInfoProto;
use crate::runtime::{self, BackendKind, RuntimeOptions};
use crate::temp_dir::TempDir;

/// What [`recalibrate`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recalibration {
    /// Nodes whose statistics were re-estimated.
    pub nodes: usize,
    /// Calibration samples seen per node.
    pub samples: usize,
    /// Largest change of a running mean, in units of the old running standard deviation.
    pub largest_shift: f64,
}

/// A node with running statistics: `(node, data input, mean input, variance input)`.
type StatNode = (NodeId, ValueId, ValueId, ValueId);

/// The nodes with running statistics, in topological order. Errors when there are none.
fn stat_nodes(model: &Model) -> Result<Vec<StatNode>> {
    let g = &model.graph;
    let mut out = Vec::new();
    for n in g.topo_order()? {
        let node = g.node(n);
        let Some(op) = crate::ops::lookup(&node.domain, &node.op_type) else {
            continue;
        };
        // Only the statistic ports are read, which do not depend on the opset (the training
        // form itself needs 14 or later).
        let Some(mode) = op.training_mode(node, model.opset().max(14))? else {
            continue;
        };
        let (Some(x), Some(m), Some(v)) = (
            node.input(0),
            node.input(mode.mean.0),
            node.input(mode.var.0),
        ) else {
            continue;
        };
        if g.init(m).is_some() && g.init(v).is_some() {
            out.push((n, x, m, v));
        }
    }
    if out.is_empty() {
        return Err(Error::Usage(
            "the model has no BatchNormalization with running statistics to recalibrate".into(),
        ));
    }
    Ok(out)
}

/// Whether `model` has a node whose running statistics [`recalibrate`] can re-estimate.
pub fn has_running_statistics(model: &Model) -> bool {
    stat_nodes(model).is_ok()
}

/// Per-channel `(sum, sum of squares, count)` of `t` over every axis but 1.
fn accumulate(t: &Tensor, acc: &mut Vec<(f64, f64, f64)>) -> Result<()> {
    let shape = t.shape();
    let v = t
        .to_f64_vec()
        .ok_or_else(|| Error::Usage("a normalised input is not a float tensor".into()))?;
    if shape.len() < 2 {
        return Err(Error::Usage(format!(
            "a normalised input has shape {shape:?}: no channel axis"
        )));
    }
    let c = shape[1];
    let inner: usize = shape[2..].iter().product();
    if acc.is_empty() {
        acc.resize(c, (0.0, 0.0, 0.0));
    }
    if acc.len() != c {
        return Err(Error::Usage(format!(
            "a normalised input has {c} channels, the statistics {}",
            acc.len()
        )));
    }
    for (i, x) in v.iter().enumerate() {
        if !x.is_finite() {
            return Err(Error::Usage("a normalised input is not finite".into()));
        }
        let a = &mut acc[(i / inner) % c];
        a.0 += x;
        a.1 += x * x;
        a.2 += 1.0;
    }
    Ok(())
}

/// Re-estimates the running statistics of `model` from `batches` (kept in memory: every node
/// reads them again) in `backend`. Errors, leaving `model` unchanged, when the model has no
/// such node or the batches do not fit it.
pub fn recalibrate(
    model: &mut Model,
    batches: &[CalibrationBatch],
    backend: BackendKind,
    opts: &RuntimeOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Recalibration> {
    let nodes = stat_nodes(model)?;
    if batches.is_empty() {
        return Err(Error::Usage("no calibration batches".into()));
    }
    let samples = batches
        .iter()
        .map(|b| b.first().map_or(0, |(_, t)| t.shape()[0]))
        .sum();
    let dir = TempDir::new("recalibrate")?;
    let path = dir.path().join("probe.onnx");
    let mut work = model.clone();
    let mut report = Recalibration {
        nodes: nodes.len(),
        samples,
        largest_shift: 0.0,
    };
    for (k, &(_, x, m, v)) in nodes.iter().enumerate() {
        progress(k, nodes.len());
        // The model up to this node's input: only what computes it runs.
        let mut probe = work.clone();
        let name = probe.graph.value(x).name.clone();
        probe.graph.outputs = vec![x];
        if probe.graph.value(x).decl.is_none() {
            probe.graph.set_decl(
                x,
                ValueInfoProto {
                    name: Some(name.clone()),
                    ..Default::default()
                },
            );
        }
        crate::passes::eliminate_dead_code(&mut probe)?;
        probe.save(&path, &Default::default())?;
        let mut s = runtime::load_with(backend, &path, opts)?;
        let mut acc = Vec::new();
        for b in batches {
            let outs = s.run(b)?;
            let (_, t) = outs
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| Error::Usage(format!("the runtime did not return '{name}'")))?;
            accumulate(t, &mut acc)?;
        }
        let g = &mut work.graph;
        let (old_m, old_v) = (g.init(m).cloned(), g.init(v).cloned());
        let (Some(old_m), Some(old_v)) = (old_m, old_v) else {
            continue;
        };
        let dt = old_m.dtype();
        let means: Vec<f64> = acc.iter().map(|a| a.0 / a.2).collect();
        let vars: Vec<f64> = acc
            .iter()
            .zip(&means)
            .map(|(a, mu)| ((a.1 / a.2 - mu * mu) * a.2 / (a.2 - 1.0).max(1.0)).max(0.0))
            .collect();
        let (om, ov) = (
            old_m.to_f64_vec().unwrap_or_default(),
            old_v.to_f64_vec().unwrap_or_default(),
        );
        for ((nm, o), ovar) in means.iter().zip(&om).zip(&ov) {
            let shift = (nm - o).abs() / ovar.max(1e-12).sqrt();
            report.largest_shift = report.largest_shift.max(shift);
        }
        if dt != DType::F32 && dt != DType::F64 && dt != DType::F16 {
            return Err(Error::Usage(format!(
                "running statistics of type {dt} cannot be recalibrated"
            )));
        }
        g.set_init(m, Tensor::from_f64_as(dt, old_m.shape().to_vec(), &means)?);
        g.set_init(v, Tensor::from_f64_as(dt, old_v.shape().to_vec(), &vars)?);
    }
    progress(nodes.len(), nodes.len());
    *model = work;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Graph;
    use crate::passes::testutil::{input, model};

    /// `x[2,3,2,2] → Conv 1×1 (2 filters) → BatchNormalization` with stale statistics.
    fn conv_bn(w: &[f32]) -> Model {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[2, 3, 2, 2]);
        let w = g.add_initializer("w", Tensor::from_f32(vec![2, 3, 1, 1], w));
        let c = g.add_node("conv", "Conv", &[Some(x), Some(w)], &["c"], vec![]);
        let c = g.node(c).outputs[0];
        let mut ins = vec![c];
        for (name, v) in [("s", 1.0), ("b", 0.0), ("m", 5.0), ("v", 9.0)] {
            ins.push(Some(
                g.add_initializer(name, Tensor::from_f32(vec![2], &[v, v])),
            ));
        }
        let bn = g.add_node("bn", "BatchNormalization", &ins, &["y"], vec![]);
        g.outputs.push(g.node(bn).outputs[0].unwrap());
        model(g, 13)
    }

    #[test]
    fn statistics_become_those_of_the_calibration_data() {
        let w = [1.0, 2.0, -1.0, 0.5, 0.0, 3.0];
        let mut m = conv_bn(&w);
        let xs: Vec<Vec<f32>> = (0..2)
            .map(|b| {
                (0..24)
                    .map(|i| ((i * 7 + b * 5) % 11) as f32 - 4.0)
                    .collect()
            })
            .collect();
        let batches: Vec<CalibrationBatch> = xs
            .iter()
            .map(|x| vec![("x".to_string(), Tensor::from_f32(vec![2, 3, 2, 2], x))])
            .collect();
        // The conv outputs, by channel, over both batches.
        let mut per = [Vec::new(), Vec::new()];
        for x in &xs {
            for n in 0..2 {
                for p in 0..4 {
                    for (c, out) in per.iter_mut().enumerate() {
                        let y: f32 = (0..3).map(|k| w[c * 3 + k] * x[n * 12 + k * 4 + p]).sum();
                        out.push(y as f64);
                    }
                }
            }
        }
        let r = recalibrate(
            &mut m,
            &batches,
            BackendKind::Tract,
            &Default::default(),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!((r.nodes, r.samples), (1, 4));
        let g = &m.graph;
        let get = |n: &str| {
            g.init(g.value_by_name(n).unwrap())
                .unwrap()
                .to_f64_vec()
                .unwrap()
        };
        let (mean, var) = (get("m"), get("v"));
        for c in 0..2 {
            let k = per[c].len() as f64;
            let mu = per[c].iter().sum::<f64>() / k;
            let v = per[c].iter().map(|y| (y - mu).powi(2)).sum::<f64>() / (k - 1.0);
            assert!((mean[c] - mu).abs() < 1e-5, "mean {c}: {} vs {mu}", mean[c]);
            assert!(
                (var[c] - v).abs() < 1e-4 * v.max(1.0),
                "var {c}: {} vs {v}",
                var[c]
            );
        }
        assert!(r.largest_shift > 0.0);
    }

    #[test]
    fn a_model_without_batch_norm_is_refused() {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[1, 2]);
        let r = g.add_node("relu", "Relu", &[Some(x)], &["y"], vec![]);
        g.outputs.push(g.node(r).outputs[0].unwrap());
        let mut m = model(g, 13);
        let e = recalibrate(
            &mut m,
            &[],
            BackendKind::Tract,
            &Default::default(),
            &mut |_, _| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no BatchNormalization"), "{e}");
    }
}
