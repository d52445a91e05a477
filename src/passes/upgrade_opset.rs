//! Rewrites a model for a newer opset of the default domain: every node whose op changed
//! signature in between is rewritten as its op says ([`Op::upgrade`](crate::ops::Op::upgrade): attributes that became
//! inputs, defaults made explicit), then the model's opset import is raised (and its IR
//! version to at least 8). It does not touch other domains, does not know ops lopper has no
//! file for (they are kept as they are), and never lowers an opset.

use crate::error::{Error, Result};
use crate::ir::is_default_domain;
use crate::ir::{Model, NodeId};
use crate::ops;

/// Raises `model` to opset `to` (no change when it is already there or above). Errors name
/// the first node whose form has no equivalent at `to`.
pub fn upgrade_opset(model: &mut Model, to: i64) -> Result<bool> {
    let from = model.opset();
    if from >= to {
        return Ok(false);
    }
    let g = &mut model.graph;
    let ids: Vec<NodeId> = g.node_ids().collect();
    for id in ids {
        let node = g.node(id);
        let Some(op) = ops::lookup(&node.domain, &node.op_type) else {
            continue;
        };
        let up = op.upgrade(node, from, to)?;
        if up.is_empty() {
            continue;
        }
        let base = node.name.clone();
        for (attr, port, value) in up.to_inputs {
            if g.node(id).input(port).is_some() {
                return Err(Error::node(
                    &base,
                    &g.node(id).op_type,
                    format!("has both attribute '{attr}' and input {port}"),
                ));
            }
            let name = g.fresh_name(&format!("{base}/{attr}"));
            let v = g.add_initializer(&name, value);
            while g.node(id).inputs.len() <= port {
                g.push_input(id, None);
            }
            g.set_input(id, port, Some(v));
            g.node_mut(id).remove_attr(attr);
        }
        for attr in up.drop {
            g.node_mut(id).remove_attr(attr);
        }
        for a in up.set {
            g.node_mut(id).set_attr(a);
        }
    }
    for o in &mut model.rest.opset_import {
        if is_default_domain(o.domain()) {
            o.version = Some(to);
        }
    }
    if model.rest.ir_version() < 8 {
        model.rest.ir_version = Some(8);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::{attr_float, attr_int, attr_ints};
    use crate::ir::{Graph, Tensor};
    use crate::passes::testutil::{input, model};
    use crate::runtime::{self, BackendKind};

    /// `x [1,2,3,4] → Pad → Slice → Clip → Dropout → ReduceSum → Unsqueeze → Squeeze →
    /// Softmax`, every changed attribute in its opset-9 form.
    fn old_model() -> Model {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[1, 2, 3, 4]);
        let chain = |g: &mut Graph, op: &str, attrs| {
            let last = g.outputs.pop().unwrap_or(x);
            let name = format!("{op}_out");
            let n = g.add_node(op, op, &[Some(last)], &[&name], attrs);
            let out = g.node(n).outputs[0].unwrap();
            g.outputs.push(out);
        };
        chain(
            &mut g,
            "Pad",
            vec![
                attr_ints("pads", &[0, 0, 1, 0, 0, 0, 0, 1]),
                attr_float("value", 0.5),
            ],
        );
        chain(
            &mut g,
            "Slice",
            vec![
                attr_ints("starts", &[1]),
                attr_ints("ends", &[4]),
                attr_ints("axes", &[2]),
            ],
        );
        chain(
            &mut g,
            "Clip",
            vec![attr_float("min", -0.3), attr_float("max", 0.4)],
        );
        chain(&mut g, "Dropout", vec![attr_float("ratio", 0.2)]);
        chain(
            &mut g,
            "ReduceSum",
            vec![attr_ints("axes", &[2]), attr_int("keepdims", 0)],
        );
        chain(&mut g, "Unsqueeze", vec![attr_ints("axes", &[0])]);
        chain(&mut g, "Squeeze", vec![attr_ints("axes", &[0, 1])]);
        chain(&mut g, "Softmax", vec![]);
        model(g, 9)
    }

    #[test]
    fn upgraded_model_computes_the_same_in_ort() {
        if runtime::ort::find_library().is_none() {
            eprintln!("NOTICE: skipping: ONNX Runtime's library is missing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let old = old_model();
        let mut new = old.clone();
        assert!(upgrade_opset(&mut new, 17).unwrap());
        assert_eq!(new.opset(), 17);
        assert!(new
            .graph
            .node_ids()
            .all(|n| new.graph.node(n).attrs.iter().all(|a| {
                ![
                    "pads", "value", "starts", "ends", "axes", "min", "max", "ratio",
                ]
                .contains(&a.name())
            })));
        let xs: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin()).collect();
        let feed = vec![("x".to_string(), Tensor::from_f32(vec![1, 2, 3, 4], &xs))];
        let mut outs = Vec::new();
        for (name, m) in [("old", &old), ("new", &new)] {
            let path = dir.path().join(format!("{name}.onnx"));
            m.save(&path, &Default::default()).unwrap();
            let mut s = runtime::load(BackendKind::Ort, &path).unwrap();
            outs.push(s.run(&feed).unwrap()[0].1.to_f64_vec().unwrap());
        }
        assert_eq!(outs[0].len(), 10);
        assert_eq!(outs[0], outs[1]);
        // Already there: nothing to do.
        assert!(!upgrade_opset(&mut new, 13).unwrap());
    }

    #[test]
    fn spatial_zero_batch_norm_is_refused_by_name() {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[1, 2, 2, 2]);
        let mut ins = vec![Some(x)];
        for n in ["s", "b", "m", "v"] {
            ins.push(Some(
                g.add_initializer(n, Tensor::from_f32(vec![2], &[1.0, 1.0])),
            ));
        }
        let bn = g.add_node(
            "bn0",
            "BatchNormalization",
            &ins,
            &["y"],
            vec![attr_int("spatial", 0)],
        );
        g.outputs.push(g.node(bn).outputs[0].unwrap());
        let mut m = model(g, 8);
        let e = upgrade_opset(&mut m, 17).unwrap_err().to_string();
        assert!(e.contains("bn0") && e.contains("spatial"), "{e}");
    }
}
