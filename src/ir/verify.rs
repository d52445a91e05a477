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
//! 9. the graph is acyclic;
//! 10. the graph has at least one output (ONNX Runtime refuses a graph without).
//!
//! [`verify_model`] checks, on a model as read from a file, also what the ONNX spec requires
//! of the model around the graph:
//!
//! 11. the default domain's opset is between 1 and [`MAX_OPSET`];
//! 12. every node's domain has an `opset_import` entry;
//! 13. every graph input declares a type;
//! 14. every sparse initializer's indices are integers inside its dense shape;
//! 15. every node of an op lopper knows has an input count inside the op's arity
//!     ([`crate::ops::Op::arity`]) and keeps the op's own rules ([`crate::ops::Op::check`]:
//!     attribute types and values, input types the spec fixes, weights that must agree).
//!
//! It does not check shapes (the shape analysis does).

use std::collections::HashSet;

use super::graph::{is_default_domain, Graph, Model, CAPTURE_PORT};
use super::{DType, NodeId, Tensor, ValueId};
use crate::error::{Error, Result};
use crate::onnx::proto::{type_proto, SparseTensorProto, ValueInfoProto};

/// The newest default-domain opset lopper knows (ONNX 1.20's, 25): a model claiming a newer
/// one may use ops whose meaning lopper cannot know.
pub const MAX_OPSET: i64 = 25;

/// Checks all invariants; the error lists every violation found.
pub fn verify(graph: &Graph) -> Result<()> {
    let errs = violations(graph);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Error::Verify(errs))
    }
}

/// Checks a model as read from a file: the graph's invariants and the model-level rules
/// (10–15 above); the error lists every violation found.
pub fn verify_model(model: &Model) -> Result<()> {
    let mut errs = violations(&model.graph);
    model_violations(model, &mut errs);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Error::Verify(errs))
    }
}

/// The per-op rules alone (rule 15: arity and each op's own checks, e.g. integer division by a
/// constant zero, on which runtimes trap): what must hold before a model is handed to a
/// runtime, for graphs that need not meet the model-level rules (internal, masked copies).
pub fn verify_ops(model: &Model) -> Result<()> {
    let mut errs = Vec::new();
    op_violations(&model.graph, model.opset(), &mut errs);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Error::Verify(errs))
    }
}

/// The model-level rules 11–15.
fn model_violations(m: &Model, errs: &mut Vec<String>) {
    let g = &m.graph;
    let opset = m.opset();
    let default_imported = m
        .rest
        .opset_import
        .iter()
        .any(|o| is_default_domain(o.domain()));
    if default_imported && !(1..=MAX_OPSET).contains(&opset) {
        errs.push(format!(
            "default-domain opset {opset} is not one lopper knows (1 to {MAX_OPSET}) (opset)"
        ));
    }
    for n in g.node_ids() {
        let node = g.node(n);
        let imported = if is_default_domain(&node.domain) {
            default_imported
        } else {
            m.rest
                .opset_import
                .iter()
                .any(|o| o.domain() == node.domain)
        };
        if !imported {
            errs.push(format!(
                "{}: domain '{}' has no opset_import entry (domain)",
                label(g, n),
                node.domain
            ));
        }
    }
    for &v in &g.inputs {
        let typed = g.value(v).decl.as_ref().and_then(|d| d.r#type.as_ref());
        if typed.and_then(|t| t.value.as_ref()).is_none() {
            errs.push(format!(
                "graph input '{}' declares no type (input type)",
                g.value(v).name
            ));
        }
    }
    for s in &g.rest.sparse_initializer {
        if let Err(e) = sparse_indices_fit(s) {
            let name = s.values.as_ref().map_or("", |t| t.name());
            errs.push(format!("sparse initializer '{name}': {e} (sparse indices)"));
        }
    }
    op_violations(g, opset, errs);
}

/// Whether the indices of a sparse tensor address elements of its dense shape: `[NNZ]`
/// linear indices below the element count, or `[NNZ, rank]` coordinates below each dim.
fn sparse_indices_fit(s: &SparseTensorProto) -> std::result::Result<(), String> {
    let mut dims = Vec::with_capacity(s.dims.len());
    for &d in &s.dims {
        dims.push(u64::try_from(d).map_err(|_| format!("negative dim in dims {:?}", s.dims))?);
    }
    let numel = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("dims {:?} overflow", s.dims))?;
    let nnz = match &s.values {
        Some(v) => Tensor::from_proto(v).map_err(|e| e.to_string())?.len(),
        None => 0,
    };
    let Some(ip) = &s.indices else {
        return if nnz == 0 {
            Ok(())
        } else {
            Err("values without indices".into())
        };
    };
    let idx = Tensor::from_proto(ip).map_err(|e| e.to_string())?;
    let ints = match idx.dtype() {
        DType::I64 | DType::I32 | DType::I16 | DType::I8 | DType::U8 | DType::U16 => {
            idx.to_i64_vec()
        }
        _ => None,
    }
    .ok_or_else(|| format!("indices are {}, not integers", idx.dtype()))?;
    let out_of_range = |i: i64, n: u64| u64::try_from(i).map_or(true, |i| i >= n);
    match idx.shape() {
        [k] if *k == nnz => match ints.iter().find(|&&i| out_of_range(i, numel)) {
            Some(i) => Err(format!(
                "index {i} is outside the {numel} elements of {dims:?}"
            )),
            None => Ok(()),
        },
        [k, r] if *k == nnz && *r == dims.len() && *r > 0 => {
            for (j, &i) in ints.iter().enumerate() {
                if out_of_range(i, dims[j % r]) {
                    return Err(format!(
                        "index {i} on axis {} is outside dims {dims:?}",
                        j % r
                    ));
                }
            }
            Ok(())
        }
        sh => Err(format!(
            "indices of shape {sh:?} do not fit {nnz} values of dims {dims:?}"
        )),
    }
}

/// Rule 15: each node of a known op against the op's arity and rules.
fn op_violations(g: &Graph, opset: i64, errs: &mut Vec<String>) {
    for n in g.node_ids() {
        let node = g.node(n);
        let Some(op) = crate::ops::lookup(&node.domain, &node.op_type) else {
            continue;
        };
        if let Some((lo, hi)) = op.arity(opset) {
            let k = node.inputs.len();
            if k < lo || k > hi {
                let allowed = match (lo, hi) {
                    (lo, usize::MAX) => format!("at least {lo}"),
                    (lo, hi) if lo == hi => format!("{lo}"),
                    (lo, hi) => format!("{lo} to {hi}"),
                };
                errs.push(format!(
                    "{}: has {k} inputs, {} takes {allowed} at opset {opset} (arity)",
                    label(g, n),
                    node.op_type
                ));
            }
        }
        let consts = g.const_inputs(node);
        let dtypes: Vec<Option<DType>> = node
            .inputs
            .iter()
            .map(|v| v.and_then(|v| declared_dtype(g, v)))
            .collect();
        let cx = crate::ops::CheckCx {
            node,
            opset,
            consts: &consts,
            dtypes: &dtypes,
        };
        for e in op.check(&cx) {
            errs.push(format!("{}: {e}", label(g, n)));
        }
    }
}

/// The element type of `v` from its initializer or its declaration.
fn declared_dtype(g: &Graph, v: ValueId) -> Option<DType> {
    if let Some(t) = g.init(v) {
        return Some(t.dtype());
    }
    let decl: &ValueInfoProto = g.value(v).decl.as_ref()?;
    match decl.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => DType::from_onnx(t.elem_type()),
        _ => None,
    }
}

/// All invariant violations, as messages naming the node or value.
pub fn violations(g: &Graph) -> Vec<String> {
    let mut errs = Vec::new();
    if g.outputs.is_empty() {
        errs.push("the graph has no outputs (graph outputs)".into());
    }
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
