//! The IR verifier. It checks, and reports together, every violation of these invariants:
//!
//! 1. every id a live node holds (inputs, outputs, captures) names a live value;
//! 2. use-lists are exact: `(n, p)` is in `uses` of `v` iff live node `n` reads `v` at port `p`
//!    (or captures it, port [`CAPTURE_PORT`]);
//! 3. producers are exact: `producer` of `v` is `(n, p)` iff live node `n` writes `v` at `p`;
//! 4. every value a node reads or the graph outputs is defined: by a node, a graph input, an
//!    initializer or a sparse initializer;
//! 5. no value is both computed by a node and given as an input or initializer;
//! 6. value names are unique and non-empty, and the name index matches them;
//! 7. node names are unique;
//! 8. graph inputs, outputs and initializers are live values, initializers hold a tensor;
//! 9. the graph is acyclic.
//!
//! It does not check types or shapes (the shape analysis does) or op-specific arity.

use std::collections::HashSet;

use super::graph::{Graph, CAPTURE_PORT};
use super::{NodeId, ValueId};
use crate::error::{Error, Result};

/// Checks all invariants; the error lists every violation found.
pub fn verify(graph: &Graph) -> Result<()> {
    let errs = violations(graph);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Error::Verify(errs))
    }
}

/// All invariant violations, as messages naming the node or value.
pub fn violations(g: &Graph) -> Vec<String> {
    let mut errs = Vec::new();
    let live: HashSet<ValueId> = g.value_ids().collect();
    node_violations(g, &live, &mut errs);
    value_violations(g, &mut errs);
    list_violations(g, &live, &mut errs);
    if let Err(e) = g.topo_order() {
        errs.push(e.to_string());
    }
    errs
}

/// `node 'name' (Op)` for messages.
fn label(g: &Graph, n: NodeId) -> String {
    format!("node '{}' ({})", g.node(n).name, g.node(n).op_type)
}

/// Nodes: unique names, inputs, captures and outputs live and in their use-lists/producers.
fn node_violations(g: &Graph, live: &HashSet<ValueId>, errs: &mut Vec<String>) {
    let is_live = |v: ValueId| live.contains(&v);
    let label = |n: NodeId| label(g, n);
    let mut node_names = HashSet::new();
    for n in g.node_ids() {
        let node = g.node(n);
        if !node_names.insert(node.name.as_str()) {
            errs.push(format!("{}: node name is not unique", label(n)));
        }
        for (p, v) in node.inputs.iter().enumerate() {
            let Some(v) = *v else { continue };
            if !is_live(v) {
                errs.push(format!(
                    "{}: input {p} refers to a removed value {v}",
                    label(n)
                ));
                continue;
            }
            if !g.value(v).uses.contains(&(n, p)) {
                errs.push(format!(
                    "{}: input {p} '{}' is missing from its use-list",
                    label(n),
                    g.value(v).name
                ));
            }
        }
        for v in &node.captures {
            if !is_live(*v) {
                errs.push(format!("{}: captures a removed value {v}", label(n)));
            } else if !g.value(*v).uses.contains(&(n, CAPTURE_PORT)) {
                errs.push(format!(
                    "{}: capture '{}' is missing from its use-list",
                    label(n),
                    g.value(*v).name
                ));
            }
        }
        for (p, v) in node.outputs.iter().enumerate() {
            let Some(v) = *v else { continue };
            if !is_live(v) {
                errs.push(format!(
                    "{}: output {p} refers to a removed value {v}",
                    label(n)
                ));
                continue;
            }
            if g.value(v).producer != Some((n, p)) {
                errs.push(format!(
                    "{}: output {p} '{}' does not name it as producer",
                    label(n),
                    g.value(v).name
                ));
            }
        }
    }
}

/// Values: names unique and indexed, use-lists and producers current, every read value
/// defined.
fn value_violations(g: &Graph, errs: &mut Vec<String>) {
    let label = |n: NodeId| label(g, n);
    let inputs: HashSet<ValueId> = g.inputs.iter().copied().collect();
    let sparse: HashSet<ValueId> = g.sparse_initializers.iter().copied().collect();
    let mut names = HashSet::new();
    for v in g.value_ids() {
        let val = g.value(v);
        if val.name.is_empty() {
            errs.push(format!("value {v} has an empty name"));
        }
        if !names.insert(val.name.as_str()) {
            errs.push(format!("value name '{}' is not unique", val.name));
        }
        if g.value_by_name(&val.name) != Some(v) {
            errs.push(format!(
                "value '{}' is missing from the name index",
                val.name
            ));
        }
        for &(n, p) in &val.uses {
            let ok = g.is_live_node(n)
                && if p == CAPTURE_PORT {
                    g.node(n).captures.contains(&v)
                } else {
                    g.node(n).inputs.get(p).copied().flatten() == Some(v)
                };
            if !ok {
                errs.push(format!("value '{}': stale use ({n}, port {p})", val.name));
            }
        }
        if let Some((n, p)) = val.producer {
            if !g.is_live_node(n) || g.node(n).outputs.get(p).copied().flatten() != Some(v) {
                errs.push(format!(
                    "value '{}': stale producer ({n}, port {p})",
                    val.name
                ));
            }
            if val.init.is_some() || inputs.contains(&v) {
                errs.push(format!(
                    "value '{}' is computed by {} and also a graph input or initializer",
                    val.name,
                    label(n)
                ));
            }
        }
        let defined = val.producer.is_some()
            || val.init.is_some()
            || inputs.contains(&v)
            || sparse.contains(&v);
        if !defined && (!val.uses.is_empty() || g.outputs.contains(&v)) {
            let reader = val
                .uses
                .first()
                .map(|(n, _)| label(*n))
                .unwrap_or_else(|| "the graph outputs".into());
            errs.push(format!(
                "value '{}' is read by {reader} but nothing defines it",
                val.name
            ));
        }
    }
}

/// The graph's input, output and initializer lists name live values (initializers hold one).
fn list_violations(g: &Graph, live: &HashSet<ValueId>, errs: &mut Vec<String>) {
    let is_live = |v: ValueId| live.contains(&v);
    for (what, list) in [
        ("input", &g.inputs),
        ("output", &g.outputs),
        ("initializer", &g.initializers),
    ] {
        for v in list.iter() {
            if !is_live(*v) {
                errs.push(format!("graph {what} {v} is a removed value"));
            } else if what == "initializer" && g.value(*v).init.is_none() {
                errs.push(format!(
                    "initializer '{}' holds no tensor",
                    g.value(*v).name
                ));
            }
        }
    }
}
