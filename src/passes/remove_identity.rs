//! Removes no-op nodes, as their ops declare ([`crate::ops::Op::no_op`]): `Identity`, and
//! `Dropout` in inference form (no `training_mode` input, or a constant false one; the `ratio`
//! input and the `is_test` attribute of old opsets do not matter at inference) whose mask output
//! is absent or unused, and `Relu` of a value that is never negative (a Relu's output, or a
//! slice, padding with zeros or pooling of one: [`crate::ops::Op::non_negative`]), which
//! depth pruning leaves where a dropped branch's merge is followed by a Relu. Readers of the
//! removed node's output read its input instead.
//!
//! Graph outputs keep their names: when the output is a graph output, the node is removed only
//! if its input is computed by a node, is not itself a graph output and is not read by a
//! subgraph; that node then writes the graph output directly. Otherwise the node is kept (for
//! instance an Identity from a graph input straight to a graph output). It does NOT remove
//! nodes whose output is read inside a subgraph (captures resolve by name), Dropout in
//! training mode, or no-op instances of other ops (Reshape to the same shape, Cast to the
//! same type, ...).

use crate::error::Result;
use crate::ir::{Graph, Model, NodeId};
use crate::ops::simplify::{NoOp, NoOpCx, SignCx};

/// Removes Identity and inference Dropout nodes; returns whether any was removed.
pub fn remove_identity(model: &mut Model) -> Result<bool> {
    remove_no_ops(model, true)
}

/// Removes the nodes that are no-ops in every mode (Identity); those that are no-ops at
/// inference only (Dropout) stay for the training compiler. Returns whether any was removed.
pub fn remove_identity_keep_dropout(model: &mut Model) -> Result<bool> {
    remove_no_ops(model, false)
}

/// Removes the nodes whose op says they are no-ops ([`crate::ops::Op::no_op`]); those that
/// are no-ops at inference only ([`NoOp::Inference`]: Dropout) only when `inference`.
fn remove_no_ops(model: &mut Model, inference: bool) -> Result<bool> {
    let g = &mut model.graph;
    let mut changed = false;
    let signs = non_negative_values(g)?;
    for n in g.topo_order()? {
        match no_op(g, &signs, n) {
            Some(NoOp::Always) => {}
            Some(NoOp::Inference) if inference => {}
            _ => continue,
        }
        let node = g.node(n);
        let (Some(x), Some(y)) = (node.input(0), node.output(0)) else {
            continue;
        };
        let mask = node.output(1);
        if g.is_captured(y) {
            continue;
        }
        if g.outputs.contains(&y) {
            // Let x's producer write y, so the graph output keeps its name.
            let Some((p, port)) = g.value(x).producer else {
                continue;
            };
            if g.outputs.contains(&x) || g.is_captured(x) {
                continue;
            }
            g.remove_node(n);
            g.set_output(p, port, y);
            g.replace_uses(x, y);
            g.remove_value(x);
        } else {
            g.remove_node(n);
            g.replace_uses(y, x);
            g.remove_value(y);
        }
        if let Some(m) = mask {
            g.remove_value(m);
        }
        changed = true;
    }
    if changed {
        g.compact();
    }
    Ok(changed)
}

/// How `n` is a no-op, as its op says (`None`: it is not one, or lopper does not know it).
fn no_op(g: &Graph, signs: &[bool], n: NodeId) -> Option<NoOp> {
    let node = g.node(n);
    let op = crate::ops::lookup(&node.domain, &node.op_type)?;
    let consts = g.const_inputs(node);
    let non_negative: Vec<bool> = node
        .inputs
        .iter()
        .map(|v| v.is_some_and(|v| signs.get(v.index()).copied().unwrap_or(false)))
        .collect();
    let used: Vec<bool> = node
        .outputs
        .iter()
        .map(|o| o.is_some_and(|v| !g.value(v).uses.is_empty() || g.outputs.contains(&v)))
        .collect();
    op.no_op(&NoOpCx {
        node,
        consts: &consts,
        used: &used,
        non_negative: &non_negative,
    })
}

/// Per value (by index): whether it is provably never negative, whatever the parameters:
/// computed values whose producer's op says so ([`crate::ops::Op::non_negative`]) given its
/// inputs. Graph inputs and initializers are not (a trainable weight that is ≥ 0 now may not
/// stay so: a Relu of it is kept).
pub(crate) fn non_negative_values(g: &Graph) -> Result<Vec<bool>> {
    let mut sign = vec![false; g.value_capacity()];
    for n in g.topo_order()? {
        let node = g.node(n);
        let Some(op) = crate::ops::lookup(&node.domain, &node.op_type) else {
            continue;
        };
        let Some(y) = node.output(0) else { continue };
        let consts = g.const_inputs(node);
        let non_negative: Vec<bool> = node
            .inputs
            .iter()
            .map(|v| v.is_some_and(|v| sign[v.index()]))
            .collect();
        sign[y.index()] = op.non_negative(&SignCx {
            node,
            consts: &consts,
            non_negative: &non_negative,
        });
    }
    Ok(sign)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{verify, DType, Tensor, ValueId};
    use crate::passes::testutil::{model, ops};

    fn input(g: &mut Graph, name: &str) -> ValueId {
        let v = g.add_value(name);
        g.inputs.push(v);
        v
    }

    #[test]
    fn removes_internal_identity_and_dropout() {
        let mut g = Graph::new();
        let x = input(&mut g, "x");
        let a = g.add_node("a", "Tanh", &[Some(x)], &["a"], vec![]);
        let a = g.node(a).outputs[0];
        let i = g.add_node("i", "Identity", &[a], &["i"], vec![]);
        let i = g.node(i).outputs[0];
        let d = g.add_node("d", "Dropout", &[i], &["d", "mask"], vec![]);
        let d = g.node(d).outputs[0];
        let b = g.add_node("b", "Relu", &[d], &["y"], vec![]);
        g.outputs.push(g.node(b).outputs[0].unwrap());
        let mut m = model(g, 13);

        assert!(remove_identity(&mut m).unwrap());
        verify(&m.graph).unwrap();
        assert_eq!(ops(&m), ["Tanh", "Relu"]);
        let g = &m.graph;
        assert!(g.value_by_name("mask").is_none());
        let b = g.node_ids().last().unwrap();
        assert_eq!(g.node(b).inputs[0], g.value_by_name("a"));
        assert!(!remove_identity(&mut m).unwrap());
    }

    /// `x → Relu → Slice → Pad(value) → MaxPool → Relu → y`, and a Relu of a weight.
    fn relu_after(pad_value: f32) -> Model {
        let mut g = Graph::new();
        let x = input(&mut g, "x");
        let r = g.add_node("r", "Relu", &[Some(x)], &["r"], vec![]);
        let r = g.node(r).outputs[0];
        let int = |g: &mut Graph, name: &str, v: &[i64]| {
            Some(g.add_initializer(name, Tensor::from_i64(vec![v.len()], v)))
        };
        let (st, en, ax) = (
            int(&mut g, "st", &[1]),
            int(&mut g, "en", &[3]),
            int(&mut g, "ax", &[1]),
        );
        let s = g.add_node("s", "Slice", &[r, st, en, ax], &["s"], vec![]);
        let s = g.node(s).outputs[0];
        let pads = int(&mut g, "pads", &[0, 1, 0, 0, 0, 1, 0, 0]);
        let v = Some(g.add_initializer("v", Tensor::from_f32(vec![], &[pad_value])));
        let p = g.add_node("p", "Pad", &[s, pads, v], &["p"], vec![]);
        let p = g.node(p).outputs[0];
        let mp = g.add_node(
            "mp",
            "MaxPool",
            &[p],
            &["mp"],
            vec![crate::ir::graph::attr_ints("kernel_shape", &[1, 1])],
        );
        let mp = g.node(mp).outputs[0];
        let y = g.add_node("y", "Relu", &[mp], &["y"], vec![]);
        g.outputs.push(g.node(y).outputs[0].unwrap());
        let w = g.add_initializer("w", Tensor::from_f32(vec![2], &[0.0, 1.0]));
        let rw = g.add_node("rw", "Relu", &[Some(w)], &["rw"], vec![]);
        g.outputs.push(g.node(rw).outputs[0].unwrap());
        model(g, 13)
    }

    #[test]
    fn removes_a_relu_of_a_never_negative_value() {
        let mut m = relu_after(0.0);
        assert!(remove_identity(&mut m).unwrap());
        verify(&m.graph).unwrap();
        // The last Relu goes (its input is a Relu's output, sliced, padded with 0, pooled);
        // the Relu of a weight stays (training may make the weight negative).
        assert_eq!(ops(&m), ["Relu", "Slice", "Pad", "MaxPool", "Relu"]);
        let g = &m.graph;
        let y = g.value_by_name("y").unwrap();
        assert_eq!(g.node(g.value(y).producer.unwrap().0).op_type, "MaxPool");
        assert!(!remove_identity(&mut m).unwrap());
        // Padding with a negative value can make it negative: the Relu stays.
        let mut m = relu_after(-1.0);
        assert!(!remove_identity(&mut m).unwrap());
        assert_eq!(ops(&m).iter().filter(|o| *o == "Relu").count(), 3);
    }

    #[test]
    fn keep_dropout_variant_removes_identity_only() {
        let mut g = Graph::new();
        let x = input(&mut g, "x");
        let i = g.add_node("i", "Identity", &[Some(x)], &["i"], vec![]);
        let i = g.node(i).outputs[0];
        let d = g.add_node("d", "Dropout", &[i], &["d"], vec![]);
        let d = g.node(d).outputs[0];
        let b = g.add_node("b", "Relu", &[d], &["y"], vec![]);
        g.outputs.push(g.node(b).outputs[0].unwrap());
        let mut m = model(g, 13);

        assert!(remove_identity_keep_dropout(&mut m).unwrap());
        verify(&m.graph).unwrap();
        assert_eq!(ops(&m), ["Dropout", "Relu"]);
        assert!(!remove_identity_keep_dropout(&mut m).unwrap());
        assert!(remove_identity(&mut m).unwrap());
        assert_eq!(ops(&m), ["Relu"]);
    }

    #[test]
    fn keeps_dropout_in_training_mode_or_with_used_mask() {
        let mut g = Graph::new();
        let x = input(&mut g, "x");
        let t = g.add_initializer(
            "t",
            Tensor::from_f64_as(DType::Bool, vec![], &[1.0]).unwrap(),
        );
        let d = g.add_node("d", "Dropout", &[Some(x), None, Some(t)], &["d"], vec![]);
        g.outputs.push(g.node(d).outputs[0].unwrap());
        let d2 = g.add_node("d2", "Dropout", &[Some(x)], &["d2", "mask"], vec![]);
        let d2_out = g.node(d2).outputs[0].unwrap();
        let mask = g.node(d2).outputs[1].unwrap();
        let n = g.add_node("n", "Not", &[Some(mask)], &["nm"], vec![]);
        g.outputs.push(g.node(n).outputs[0].unwrap());
        let r = g.add_node("r", "Relu", &[Some(d2_out)], &["r"], vec![]);
        g.outputs.push(g.node(r).outputs[0].unwrap());
        let mut m = model(g, 13);

        assert!(!remove_identity(&mut m).unwrap());
        assert_eq!(ops(&m), ["Dropout", "Dropout", "Not", "Relu"]);
    }

    #[test]
    fn dropout_with_constant_false_training_mode_goes() {
        let mut g = Graph::new();
        let x = input(&mut g, "x");
        let t = g.add_initializer(
            "t",
            Tensor::from_f64_as(DType::Bool, vec![], &[0.0]).unwrap(),
        );
        let r = g.add_initializer("ratio", Tensor::from_f32(vec![], &[0.5]));
        let d = g.add_node("d", "Dropout", &[Some(x), Some(r), Some(t)], &["d"], vec![]);
        let d = g.node(d).outputs[0];
        let n = g.add_node("n", "Relu", &[d], &["y"], vec![]);
        g.outputs.push(g.node(n).outputs[0].unwrap());
        let mut m = model(g, 13);

        assert!(remove_identity(&mut m).unwrap());
        verify(&m.graph).unwrap();
        assert_eq!(ops(&m), ["Relu"]);
    }

    #[test]
    fn graph_output_keeps_its_name() {
        let mut g = Graph::new();
        let x = input(&mut g, "x");
        let a = g.add_node("a", "Relu", &[Some(x)], &["a"], vec![]);
        let a = g.node(a).outputs[0];
        // `a` is also read by another node, which must now read `y`.
        let s = g.add_node("s", "Sigmoid", &[a], &["s"], vec![]);
        g.outputs.push(g.node(s).outputs[0].unwrap());
        let i = g.add_node("i", "Identity", &[a], &["y"], vec![]);
        let y = g.node(i).outputs[0].unwrap();
        g.outputs.push(y);
        let mut m = model(g, 13);

        assert!(remove_identity(&mut m).unwrap());
        verify(&m.graph).unwrap();
        assert_eq!(ops(&m), ["Relu", "Sigmoid"]);
        let g = &m.graph;
        let names: Vec<&str> = g
            .outputs
            .iter()
            .map(|&v| g.value(v).name.as_str())
            .collect();
        assert_eq!(names, ["s", "y"]);
        let y = g.value_by_name("y").unwrap();
        let (relu, _) = g.value(y).producer.unwrap();
        assert_eq!(g.node(relu).op_type, "Relu");
        let s = g
            .node_ids()
            .find(|&n| g.node(n).op_type == "Sigmoid")
            .unwrap();
        assert_eq!(g.node(s).inputs[0], Some(y));
        assert!(g.value_by_name("a").is_none());
    }

    #[test]
    fn keeps_identity_between_interface_values() {
        let mut g = Graph::new();
        let x = input(&mut g, "x");
        let i = g.add_node("i", "Identity", &[Some(x)], &["y"], vec![]);
        g.outputs.push(g.node(i).outputs[0].unwrap());
        let r = g.add_node("r", "Relu", &[Some(x)], &["r"], vec![]);
        let r = g.node(r).outputs[0].unwrap();
        g.outputs.push(r);
        let i2 = g.add_node("i2", "Identity", &[Some(r)], &["z"], vec![]);
        g.outputs.push(g.node(i2).outputs[0].unwrap());
        let mut m = model(g, 13);

        assert!(!remove_identity(&mut m).unwrap());
        verify(&m.graph).unwrap();
        assert_eq!(ops(&m), ["Identity", "Relu", "Identity"]);
    }
}
