//! A stable text dump of the IR, one line per input/initializer/node/output, in topological
//! order. Used by golden tests and `lopper inspect --ir`. Tensor contents are not printed.

use std::fmt::Write;

use super::graph::Graph;
use super::Fact;
use crate::onnx::proto::{attribute_proto::AttributeType, AttributeProto};

/// Renders the graph; `facts` (indexed by value id) adds types and shapes where known.
pub fn dump(g: &Graph, facts: Option<&[Option<Fact>]>) -> String {
    let mut out = String::new();
    let ty = |v: super::ValueId| -> String {
        match facts
            .and_then(|f| f.get(v.index()))
            .and_then(Option::as_ref)
        {
            Some(f) => format!(": {}", f.describe()),
            None => String::new(),
        }
    };
    let _ = writeln!(out, "graph {:?}", g.rest.name());
    for &v in &g.inputs {
        if g.init(v).is_none() {
            let _ = writeln!(out, "  input %{}{}", g.value(v).name, ty(v));
        }
    }
    for &v in &g.initializers {
        if let Some(t) = g.init(v) {
            let dims: Vec<String> = t.shape().iter().map(usize::to_string).collect();
            let _ = writeln!(
                out,
                "  init %{}: {}[{}]",
                g.value(v).name,
                t.dtype(),
                dims.join(",")
            );
        }
    }
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids().collect());
    for id in order {
        let n = g.node(id);
        let name = |v: &Option<super::ValueId>| {
            v.map_or("_".to_string(), |v| format!("%{}", g.value(v).name))
        };
        let ins: Vec<String> = n.inputs.iter().map(name).collect();
        let outs: Vec<String> = n
            .outputs
            .iter()
            .map(|o| format!("{}{}", name(o), o.map(ty).unwrap_or_default()))
            .collect();
        let op = if n.domain.is_empty() {
            n.op_type.clone()
        } else {
            format!("{}.{}", n.domain, n.op_type)
        };
        let attrs: Vec<String> = n.attrs.iter().map(attr_text).collect();
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" {{{}}}", attrs.join(", "))
        };
        let _ = writeln!(
            out,
            "  {} = {op} {:?}({}){attrs}",
            outs.join(", "),
            n.name,
            ins.join(", ")
        );
    }
    for &v in &g.outputs {
        let _ = writeln!(out, "  output %{}{}", g.value(v).name, ty(v));
    }
    out
}

fn attr_text(a: &AttributeProto) -> String {
    let v = match a.r#type() {
        AttributeType::Float => format!("{}", a.f()),
        AttributeType::Int => format!("{}", a.i()),
        AttributeType::String => format!("{:?}", String::from_utf8_lossy(a.s())),
        AttributeType::Floats => format!("{:?}", a.floats),
        AttributeType::Ints => format!("{:?}", a.ints),
        AttributeType::Strings => {
            format!(
                "{:?}",
                a.strings
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>()
            )
        }
        AttributeType::Tensor => a.t.as_ref().map_or("tensor".into(), |t| {
            format!("tensor<{}>{:?}", t.data_type(), t.dims)
        }),
        AttributeType::Graph => "graph".into(),
        AttributeType::Graphs => format!("graphs[{}]", a.graphs.len()),
        _ => "..".into(),
    };
    format!("{}={v}", a.name())
}
