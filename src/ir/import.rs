//! ModelProto → IR. Resolves names to ids, decodes initializers, gives unnamed nodes names,
//! and records outer-scope captures of subgraph attributes. Fails with a message naming the
//! node or value on dangling references and double definitions. Does not check that the graph
//! is acyclic or well-typed: that is [`super::verify()`] and the shape analysis.

use std::collections::HashSet;

use super::graph::{Graph, Model, Node};
use super::{Tensor, ValueId};
use crate::error::{Error, Result};
use crate::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, SparseTensorProto, TensorProto,
    ValueInfoProto,
};

/// Builds the IR of a model (consumes the proto; tensor bytes are moved, not copied).
pub fn import(mut model: ModelProto) -> Result<Model> {
    let g = model
        .graph
        .take()
        .ok_or_else(|| Error::Graph("the model has no graph".into()))?;
    let graph = import_graph(g)?;
    Ok(Model { graph, rest: model })
}

fn import_graph(mut g: GraphProto) -> Result<Graph> {
    let mut graph = Graph::new();
    let inputs = std::mem::take(&mut g.input);
    let outputs = std::mem::take(&mut g.output);
    let inits = std::mem::take(&mut g.initializer);
    let nodes = std::mem::take(&mut g.node);
    let value_info = std::mem::take(&mut g.value_info);

    import_inputs(&mut graph, inputs)?;
    import_initializers(&mut graph, inits)?;
    import_sparse_initializers(&mut graph, &g.sparse_initializer)?;
    // Outputs of all nodes first, so that out-of-order files still resolve.
    define_node_outputs(&mut graph, &nodes)?;
    import_nodes(&mut graph, nodes)?;
    import_outputs(&mut graph, outputs)?;
    for vi in value_info {
        match graph.value_by_name(vi.name()) {
            Some(id) if graph.value(id).decl.is_none() => {
                graph.values_mut(id).decl = Some(vi);
                graph.value_info.push(id);
            }
            _ => g.value_info.push(vi), // kept verbatim
        }
    }
    graph.rest = g;
    Ok(graph)
}

/// Defines the graph inputs, with their declarations.
fn import_inputs(graph: &mut Graph, inputs: Vec<ValueInfoProto>) -> Result<()> {
    for vi in inputs {
        let name = vi.name().to_string();
        if name.is_empty() {
            return Err(Error::Graph("a graph input has an empty name".into()));
        }
        if graph.value_by_name(&name).is_some() {
            return Err(Error::Graph(format!(
                "graph input '{name}' is listed twice"
            )));
        }
        let id = graph.insert_value(name);
        graph.values_mut(id).decl = Some(vi);
        graph.inputs.push(id);
    }
    Ok(())
}

/// Defines the initializers (decoded), or attaches them to same-named graph inputs (IR 3).
fn import_initializers(graph: &mut Graph, inits: Vec<TensorProto>) -> Result<()> {
    for t in inits {
        let name = t.name().to_string();
        if name.is_empty() {
            return Err(Error::Graph("an initializer has an empty name".into()));
        }
        let tensor = Tensor::from_proto(&t)?;
        let id = match graph.value_by_name(&name) {
            Some(id) if graph.value(id).init.is_none() => id, // IR-3 style: also a graph input
            Some(_) => {
                return Err(Error::Graph(format!(
                    "initializer '{name}' is defined twice"
                )))
            }
            None => graph.insert_value(name),
        };
        let v = graph.values_mut(id);
        v.init = Some(tensor);
        v.init_proto = Some(t);
        graph.initializers.push(id);
    }
    Ok(())
}

/// Defines the names of the sparse initializers (their protos stay in the graph's rest).
fn import_sparse_initializers(graph: &mut Graph, sparse: &[SparseTensorProto]) -> Result<()> {
    for s in sparse {
        let name = s
            .values
            .as_ref()
            .map(|v| v.name().to_string())
            .unwrap_or_default();
        if name.is_empty() || graph.value_by_name(&name).is_some() {
            return Err(Error::Graph(format!(
                "sparse initializer '{name}' has no name or is defined twice"
            )));
        }
        let id = graph.insert_value(name);
        graph.sparse_initializers.push(id);
    }
    Ok(())
}

/// Defines the values the nodes write.
fn define_node_outputs(graph: &mut Graph, nodes: &[NodeProto]) -> Result<()> {
    for n in nodes {
        for o in &n.output {
            if o.is_empty() {
                continue;
            }
            if graph.value_by_name(o).is_some() {
                return Err(Error::Graph(format!(
                    "value '{o}' (output of node '{}' ({})) is defined more than once",
                    n.name(),
                    n.op_type()
                )));
            }
            graph.insert_value(o.clone());
        }
    }
    Ok(())
}

/// Adds the nodes in file order: names unnamed ones, resolves inputs and outputs, records
/// subgraph captures.
fn import_nodes(graph: &mut Graph, nodes: Vec<NodeProto>) -> Result<()> {
    let mut used_names: HashSet<String> = nodes.iter().map(|n| n.name().to_string()).collect();
    for (i, mut n) in nodes.into_iter().enumerate() {
        let op_type = n.op_type().to_string();
        let named_in_file = !n.name().is_empty();
        let name = if named_in_file {
            n.name().to_string()
        } else {
            unused_name(format!("{op_type}_{i}"), &mut used_names)
        };
        let resolve = |graph: &Graph, s: &str| -> Result<Option<ValueId>> {
            if s.is_empty() {
                return Ok(None);
            }
            graph.value_by_name(s).map(Some).ok_or_else(|| {
                Error::node(
                    &name,
                    &op_type,
                    format!("reads '{s}', which no input, initializer or node defines"),
                )
            })
        };
        let inputs = n
            .input
            .iter()
            .map(|s| resolve(graph, s))
            .collect::<Result<Vec<_>>>()?;
        let outputs = n
            .output
            .iter()
            .map(|s| resolve(graph, s))
            .collect::<Result<Vec<_>>>()?;
        let attrs = std::mem::take(&mut n.attribute);
        let captures = captures(graph, &attrs);
        n.input.clear();
        n.output.clear();
        let domain = n.domain().to_string();
        graph.push_node(Node {
            name,
            op_type,
            domain,
            inputs,
            outputs,
            attrs,
            captures,
            rest: n,
            named_in_file,
            removed: false,
        })?;
    }
    Ok(())
}

/// `base`, or `base_k` with the smallest `k ≥ 1` not in `used`; marked used.
fn unused_name(base: String, used: &mut HashSet<String>) -> String {
    let mut name = base.clone();
    let mut k = 1;
    while used.contains(&name) {
        name = format!("{base}_{k}");
        k += 1;
    }
    used.insert(name.clone());
    name
}

/// The outer-scope values the subgraphs of `attrs` read, in name order.
fn captures(graph: &Graph, attrs: &[AttributeProto]) -> Vec<ValueId> {
    let mut captures = Vec::new();
    let mut free = HashSet::new();
    for a in attrs {
        subgraph_free_names(a, &mut free);
    }
    let mut free: Vec<String> = free.into_iter().collect();
    free.sort();
    for f in free {
        if let Some(id) = graph.value_by_name(&f) {
            captures.push(id);
        }
    }
    captures
}

/// Lists the graph outputs (each must be defined); their declarations fill undeclared values.
fn import_outputs(graph: &mut Graph, outputs: Vec<ValueInfoProto>) -> Result<()> {
    for vi in outputs {
        let name = vi.name().to_string();
        let id = graph.value_by_name(&name).ok_or_else(|| {
            Error::Graph(format!(
                "graph output '{name}' is not defined by any node, input or initializer"
            ))
        })?;
        if graph.value(id).decl.is_none() {
            graph.values_mut(id).decl = Some(vi);
        }
        graph.outputs.push(id);
    }
    Ok(())
}

/// Names read inside subgraph attributes that the subgraph does not define itself.
fn subgraph_free_names(a: &AttributeProto, out: &mut HashSet<String>) {
    for g in a.g.iter().chain(a.graphs.iter()) {
        let mut defined: HashSet<&str> = HashSet::new();
        for vi in &g.input {
            defined.insert(vi.name());
        }
        for t in &g.initializer {
            defined.insert(t.name());
        }
        for n in &g.node {
            for o in &n.output {
                defined.insert(o);
            }
        }
        let mut inner = HashSet::new();
        for n in &g.node {
            for i in &n.input {
                if !i.is_empty() && !defined.contains(i.as_str()) {
                    out.insert(i.clone());
                }
            }
            for a in &n.attribute {
                subgraph_free_names(a, &mut inner);
            }
        }
        for vi in &g.output {
            if !defined.contains(vi.name()) {
                out.insert(vi.name().to_string());
            }
        }
        for i in inner {
            if !defined.contains(i.as_str()) {
                out.insert(i);
            }
        }
    }
}
