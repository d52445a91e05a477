//! Dead-code elimination: keeps only the nodes that (transitively) feed a graph output, where
//! values read by subgraph attributes (captures) count as uses.
//!
//! Afterwards it drops every value nothing defines or reads any more: outputs of removed nodes,
//! unused initializers (also when an IR < 4 model lists them as graph inputs) and their
//! `value_info` entries; then it compacts the graph. It does NOT remove runtime graph inputs
//! (inputs without an initializer), even unused ones, so the model's interface is unchanged;
//! it does not touch sparse initializers, and it does not look inside subgraphs.

use crate::error::Result;
use crate::ir::Model;

/// Removes nodes that do not feed a graph output, then unused values; compacts the graph.
/// Returns whether anything was removed.
pub fn eliminate_dead_code(model: &mut Model) -> Result<bool> {
    let g = &mut model.graph;
    let mut live = vec![false; g.node_capacity()];
    let mut work: Vec<_> = g.outputs.clone();
    while let Some(v) = work.pop() {
        let Some((n, _)) = g.value(v).producer else {
            continue;
        };
        if live[n.index()] {
            continue;
        }
        live[n.index()] = true;
        let node = g.node(n);
        work.extend(node.inputs.iter().flatten().chain(node.captures.iter()));
    }
    let dead: Vec<_> = g.node_ids().filter(|n| !live[n.index()]).collect();
    let mut changed = !dead.is_empty();
    for n in dead {
        g.remove_node(n);
    }
    let unused: Vec<_> = g
        .value_ids()
        .filter(|&v| {
            let val = g.value(v);
            val.producer.is_none()
                && val.uses.is_empty()
                && !g.outputs.contains(&v)
                && !g.is_runtime_input(v)
                && !g.sparse_initializers.contains(&v)
        })
        .collect();
    changed |= !unused.is_empty();
    for v in unused {
        g.remove_value(v);
    }
    if changed {
        g.compact();
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{verify, Graph, Tensor};
    use crate::passes::testutil::{model, ops};

    #[test]
    fn keeps_only_what_reaches_outputs() {
        let mut g = Graph::new();
        let x = g.add_value("x");
        g.inputs.push(x);
        let unused_in = g.add_value("unused_input");
        g.inputs.push(unused_in);
        let w = g.add_initializer("w", Tensor::from_f32(vec![1], &[2.0]));
        let dead_w = g.add_initializer("dead_w", Tensor::from_f32(vec![1], &[3.0]));
        let a = g.add_node("a", "Relu", &[Some(x)], &["a_out"], vec![]);
        let a_out = g.node(a).outputs[0];
        let b = g.add_node("b", "Mul", &[a_out, Some(w)], &["y"], vec![]);
        g.outputs.push(g.node(b).outputs[0].unwrap());
        // A dead chain: reads a live value and a dead initializer.
        let c = g.add_node("c", "Add", &[a_out, Some(dead_w)], &["c_out"], vec![]);
        let c_out = g.node(c).outputs[0];
        g.add_node("d", "Relu", &[c_out], &["d_out"], vec![]);
        g.value_info.push(c_out.unwrap());
        let mut m = model(g, 13);

        assert!(eliminate_dead_code(&mut m).unwrap());
        verify(&m.graph).unwrap();
        assert_eq!(ops(&m), ["Relu", "Mul"]);
        let g = &m.graph;
        assert!(g.value_by_name("dead_w").is_none());
        assert!(g.value_by_name("c_out").is_none());
        assert!(g.value_by_name("w").is_some());
        assert!(g.value_info.is_empty());
        // The interface is kept, unused input included.
        assert_eq!(g.inputs.len(), 2);
        assert!(g.value_by_name("unused_input").is_some());
        assert_eq!(g.initializers.len(), 1);

        assert!(!eliminate_dead_code(&mut m).unwrap());
    }

    #[test]
    fn captures_count_as_uses() {
        let mut g = Graph::new();
        let x = g.add_value("x");
        g.inputs.push(x);
        let p = g.add_node("p", "Relu", &[Some(x)], &["captured"], vec![]);
        let captured = g.node(p).outputs[0].unwrap();
        let cond = g.add_value("cond");
        g.inputs.push(cond);
        let iff = g.add_node("if", "If", &[Some(cond)], &["y"], vec![]);
        g.node_mut(iff).captures.push(captured);
        g.values_mut(captured)
            .uses
            .push((iff, crate::ir::graph::CAPTURE_PORT));
        g.outputs.push(g.node(iff).outputs[0].unwrap());
        verify(&g).unwrap();
        let mut m = model(g, 13);

        assert!(!eliminate_dead_code(&mut m).unwrap());
        verify(&m.graph).unwrap();
        assert_eq!(ops(&m), ["Relu", "If"]);
    }

    #[test]
    fn drops_unused_initializer_inputs_of_ir3_models() {
        let mut g = Graph::new();
        let x = g.add_value("x");
        g.inputs.push(x);
        let w = g.add_initializer("w", Tensor::from_f32(vec![1], &[2.0]));
        g.inputs.push(w);
        let r = g.add_node("r", "Relu", &[Some(x)], &["y"], vec![]);
        g.outputs.push(g.node(r).outputs[0].unwrap());
        let mut m = model(g, 8);
        m.rest.ir_version = Some(3);

        assert!(eliminate_dead_code(&mut m).unwrap());
        verify(&m.graph).unwrap();
        assert_eq!(m.graph.inputs.len(), 1);
        assert!(m.graph.initializers.is_empty());
    }
}
