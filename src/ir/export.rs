//! IR → ModelProto. Nodes go out in a topological order that keeps the original order where
//! possible; every proto part the IR carries verbatim (node/graph/model rest, unchanged
//! initializers, declarations) is written back as read. Does not verify the graph first: call
//! [`super::verify()`] (the CLI does).

use super::graph::{Graph, Model};
use super::Fact;
use crate::error::Result;
use crate::onnx::proto::{GraphProto, ModelProto, NodeProto, ValueInfoProto};

/// Builds the ModelProto of `model`.
pub fn export(model: &Model) -> Result<ModelProto> {
    let mut m = model.rest.clone();
    let mut g = export_graph(&model.graph)?;
    if model.rest.ir_version() < 4 {
        list_initializers_as_inputs(&model.graph, &mut g);
    }
    m.graph = Some(g);
    Ok(m)
}

/// IR < 4 requires every initializer to be a graph input too, declared with its own type: adds
/// the missing ones (e.g. initializers created by passes) and refreshes declarations whose
/// shape no longer matches the tensor (e.g. after channel removal).
fn list_initializers_as_inputs(graph: &Graph, g: &mut GraphProto) {
    for &v in &graph.initializers {
        let (Some(t), name) = (graph.init(v), &graph.value(v).name) else {
            continue;
        };
        let ty = Some(Fact::constant(t.clone()).to_type());
        match g.input.iter_mut().find(|i| i.name() == name) {
            Some(decl) => {
                let declared = decl.r#type.as_ref().map(Fact::from_type);
                if declared.and_then(|f| f.concrete()).as_deref() != Some(t.shape()) {
                    decl.r#type = ty;
                }
            }
            None => g.input.push(ValueInfoProto {
                name: Some(name.clone()),
                r#type: ty,
                ..Default::default()
            }),
        }
    }
}

fn declared(graph: &Graph, v: super::ValueId) -> ValueInfoProto {
    let val = graph.value(v);
    match &val.decl {
        Some(d) => {
            let mut d = d.clone();
            if d.name() != val.name {
                d.name = Some(val.name.clone());
            }
            d
        }
        None => ValueInfoProto {
            name: Some(val.name.clone()),
            ..Default::default()
        },
    }
}

fn export_graph(graph: &Graph) -> Result<GraphProto> {
    let mut g = graph.rest.clone();
    let name_of =
        |v: Option<super::ValueId>| v.map_or(String::new(), |v| graph.value(v).name.clone());
    let order = graph.topo_order()?;
    g.node = Vec::with_capacity(order.len());
    for id in order {
        let n = graph.node(id);
        let mut p: NodeProto = n.rest.clone();
        p.input = n.inputs.iter().map(|v| name_of(*v)).collect();
        // Trailing omitted optional inputs are dropped, as ONNX writers do.
        while p.input.last().is_some_and(String::is_empty) {
            p.input.pop();
        }
        p.output = n.outputs.iter().map(|v| name_of(*v)).collect();
        p.attribute = n.attrs.clone();
        if p.op_type() != n.op_type {
            p.op_type = Some(n.op_type.clone());
        }
        if p.domain() != n.domain {
            p.domain = Some(n.domain.clone());
        }
        if n.named_in_file && p.name() != n.name {
            p.name = Some(n.name.clone());
        }
        g.node.push(p);
    }
    g.initializer = graph
        .initializers
        .iter()
        .map(|&v| {
            let val = graph.value(v);
            match (&val.init_proto, &val.init) {
                (Some(p), _) => {
                    let mut p = p.clone();
                    if p.name() != val.name {
                        p.name = Some(val.name.clone());
                    }
                    p
                }
                (None, Some(t)) => t.to_proto(&val.name),
                (None, None) => Default::default(),
            }
        })
        .collect();
    g.input = graph.inputs.iter().map(|&v| declared(graph, v)).collect();
    g.output = graph.outputs.iter().map(|&v| declared(graph, v)).collect();
    let mut vi: Vec<ValueInfoProto> = graph
        .value_info
        .iter()
        .filter(|&&v| !graph.inputs.contains(&v) && !graph.outputs.contains(&v))
        .map(|&v| declared(graph, v))
        .collect();
    vi.append(&mut g.value_info);
    g.value_info = vi;
    Ok(g)
}
