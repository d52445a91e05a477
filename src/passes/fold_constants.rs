//! Constant folding: a node whose value is known at compile time becomes initializers (named
//! as its outputs), then dead code is removed.
//!
//! A node folds when its op is known ([`crate::ops::lookup`]) and either every input is a
//! constant (an initializer, or the output of a node folded before it) and the op's
//! [`crate::ops::Op::eval`] computes the outputs, or shape inference
//! ([`crate::analysis::infer_shapes`]) already knows the value of every output (for instance
//! `Shape` of a statically shaped value, and the Gather/Unsqueeze/Concat chains after it).
//! `Constant` nodes become initializers this way too. Initializers count as constants even
//! when an IR ≥ 4 model also lists them as graph inputs (overridable defaults).
//!
//! It does NOT fold: nodes of unknown ops or ops without `eval` (they are kept, and their
//! outputs are not constants); nodes that compute a graph output (an initializer cannot be a
//! graph output in every runtime; their values still feed folding downstream); nodes with
//! subgraph attributes; nodes whose evaluation fails (the runtime will report it); and nodes
//! whose outputs are larger than their inputs plus [`MAX_GROWTH`] elements (such as a
//! `ConstantOfShape` that would write a huge tensor into the file).

use crate::analysis::infer_shapes;
use crate::error::Result;
use crate::ir::{Model, Tensor};
use crate::ops;

use super::{eliminate_dead_code, make_initializer};

/// How many more elements a folded node's outputs may hold than its inputs.
pub const MAX_GROWTH: usize = 1 << 20;

/// Replaces constant-valued nodes by initializers, then removes dead code. Returns whether
/// anything changed.
pub fn fold_constants(model: &mut Model) -> Result<bool> {
    let shapes = infer_shapes(model)?;
    let opset = model.opset();
    let g = &model.graph;
    let mut consts: Vec<Option<Tensor>> = vec![None; g.value_capacity()];
    for v in g.value_ids() {
        consts[v.index()] = g.init(v).cloned();
    }
    let mut folds = Vec::new();
    for n in g.topo_order()? {
        let node = g.node(n);
        let Some(op) = ops::lookup(&node.domain, &node.op_type) else {
            continue;
        };
        if !node.captures.is_empty()
            || node
                .attrs
                .iter()
                .any(|a| a.g.is_some() || !a.graphs.is_empty())
        {
            continue;
        }
        let present: Vec<_> = node.outputs.iter().flatten().copied().collect();
        if present.is_empty() {
            continue;
        }
        let inputs: Option<Vec<Option<&Tensor>>> = node
            .inputs
            .iter()
            .map(|v| match v {
                None => Some(None),
                Some(v) => consts[v.index()].as_ref().map(Some),
            })
            .collect();
        let evaluated = inputs.and_then(|ins| {
            let outs = op.eval(node, &ins, opset)?.ok()?;
            let in_size: usize = ins.iter().flatten().map(|t| t.len()).sum();
            let out_size: usize = outs.iter().map(Tensor::len).sum();
            let bounded = node.op_type == "Constant" || out_size <= in_size + MAX_GROWTH;
            (bounded && outs.len() >= node.outputs.len()).then_some(outs)
        });
        let values: Option<Vec<(crate::ir::ValueId, Tensor)>> = match evaluated {
            Some(outs) => node
                .outputs
                .iter()
                .zip(outs)
                .filter_map(|(o, t)| o.map(|o| (o, t)))
                .map(Some)
                .collect(),
            None => present
                .iter()
                .map(|&o| Some((o, shapes.get(o)?.value.clone()?)))
                .collect(),
        };
        let Some(values) = values else {
            continue;
        };
        let to_output = present.iter().any(|o| g.outputs.contains(o));
        for (o, t) in &values {
            consts[o.index()] = Some(t.clone());
        }
        if !to_output {
            folds.push((n, values));
        }
    }
    if folds.is_empty() {
        return Ok(false);
    }
    for (n, values) in folds {
        model.graph.remove_node(n);
        for (o, t) in values {
            make_initializer(model, o, t);
        }
    }
    eliminate_dead_code(model)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_tensor;
    use crate::ir::{verify, Graph};
    use crate::passes::testutil::{input, model, ops};

    #[test]
    fn folds_constant_chains_and_keeps_the_rest() {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[2]);
        let a = g.add_initializer("a", Tensor::from_f32(vec![2], &[1.0, 2.0]));
        let b = g.add_initializer("b", Tensor::from_f32(vec![2], &[3.0, 4.0]));
        let s = g.add_node("sum", "Add", &[Some(a), Some(b)], &["ab"], vec![]);
        let ab = g.node(s).outputs[0];
        let p = g.add_node("prod", "Mul", &[ab, ab], &["ab2"], vec![]);
        let ab2 = g.node(p).outputs[0];
        let y = g.add_node("y", "Add", &[Some(x), ab2], &["y"], vec![]);
        g.outputs.push(g.node(y).outputs[0].unwrap());
        let mut m = model(g, 13);

        assert!(fold_constants(&mut m).unwrap());
        verify(&m.graph).unwrap();
        assert_eq!(ops(&m), ["Add"]);
        let g = &m.graph;
        let ab2 = g.value_by_name("ab2").unwrap();
        assert_eq!(
            g.init(ab2).unwrap().to_f32_vec().unwrap(),
            [16.0, 36.0],
            "(a + b)^2"
        );
        // a, b and ab are dead now.
        assert_eq!(g.initializers, [ab2]);
        assert!(!fold_constants(&mut m).unwrap());
    }

    #[test]
    fn keeps_nodes_that_compute_graph_outputs() {
        let mut g = Graph::new();
        let a = g.add_initializer("a", Tensor::from_f32(vec![1], &[1.0]));
        let s = g.add_node("s", "Add", &[Some(a), Some(a)], &["y"], vec![]);
        let y = g.node(s).outputs[0];
        g.outputs.push(y.unwrap());
        let t = g.add_node("t", "Mul", &[y, y], &["z"], vec![]);
        let z = g.node(t).outputs[0];
        let u = g.add_node("u", "Mul", &[z, z], &["w"], vec![]);
        g.outputs.push(g.node(u).outputs[0].unwrap());
        let mut m = model(g, 13);

        // `z` is computed from `y`'s value although `y`'s node stays.
        assert!(fold_constants(&mut m).unwrap());
        verify(&m.graph).unwrap();
        assert_eq!(ops(&m), ["Add", "Mul"]);
        let z = m.graph.value_by_name("z").unwrap();
        assert_eq!(m.graph.init(z).unwrap().to_f32_vec().unwrap(), [4.0]);
    }

    #[test]
    fn leaves_unknown_ops_and_non_constant_inputs() {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[2]);
        let a = g.add_initializer("a", Tensor::from_f32(vec![1], &[1.0]));
        let c = g.add_node("c", "MyCustomOp", &[Some(a)], &["c"], vec![]);
        g.node_mut(c).domain = "com.example".into();
        let c = g.node(c).outputs[0];
        let s = g.add_node("s", "Add", &[c, Some(x)], &["y"], vec![]);
        g.outputs.push(g.node(s).outputs[0].unwrap());
        let mut m = model(g, 13);

        assert!(!fold_constants(&mut m).unwrap());
        assert_eq!(ops(&m), ["MyCustomOp", "Add"]);
    }

    #[test]
    fn ir3_models_list_new_initializers_as_inputs() {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[2]);
        let a = g.add_initializer("a", Tensor::from_f32(vec![1], &[1.0]));
        g.inputs.push(a);
        let n = g.add_node("n", "Neg", &[Some(a)], &["na"], vec![]);
        let na = g.node(n).outputs[0];
        let s = g.add_node("s", "Add", &[Some(x), na], &["y"], vec![]);
        g.outputs.push(g.node(s).outputs[0].unwrap());
        let mut m = model(g, 8);
        m.rest.ir_version = Some(3);

        assert!(fold_constants(&mut m).unwrap());
        verify(&m.graph).unwrap();
        let g = &m.graph;
        let na = g.value_by_name("na").unwrap();
        assert_eq!(g.inputs, [g.value_by_name("x").unwrap(), na]);
        assert_eq!(g.initializers, [na]);
        assert!(g.value(na).decl.is_some());
    }

    #[test]
    fn constant_node_becomes_initializer() {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[2]);
        let t = Tensor::from_f32(vec![2], &[5.0, 6.0]);
        let c = g.add_node("c", "Constant", &[], &["c"], vec![attr_tensor("value", &t)]);
        let c = g.node(c).outputs[0];
        let s = g.add_node("s", "Mul", &[Some(x), c], &["y"], vec![]);
        g.outputs.push(g.node(s).outputs[0].unwrap());
        let mut m = model(g, 13);

        assert!(fold_constants(&mut m).unwrap());
        verify(&m.graph).unwrap();
        assert_eq!(ops(&m), ["Mul"]);
        let c = m.graph.value_by_name("c").unwrap();
        assert_eq!(m.graph.init(c), Some(&t));
    }

    #[test]
    fn folds_values_known_from_shape_inference() {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[2, 3]);
        let s = g.add_node("shape", "Shape", &[Some(x)], &["s"], vec![]);
        let s = g.node(s).outputs[0];
        let r = g.add_node("r", "Reshape", &[Some(x), s], &["y"], vec![]);
        g.outputs.push(g.node(r).outputs[0].unwrap());
        let mut m = model(g, 13);

        assert!(fold_constants(&mut m).unwrap());
        verify(&m.graph).unwrap();
        assert_eq!(ops(&m), ["Reshape"]);
        let s = m.graph.value_by_name("s").unwrap();
        assert_eq!(m.graph.init(s).unwrap().to_i64_vec().unwrap(), [2, 3]);
    }
}
