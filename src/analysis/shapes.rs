//! Shape inference and propagation: a [`Fact`] (type, shape, small constant value) for every
//! value, computed in topological order by each op's [`crate::ops::Op::infer`].
//!
//! Where an op is unknown (opaque) or cannot say, the model's declared type (`value_info`,
//! graph outputs) is used; where both exist, declared known dims fill inferred unknown ones.
//! Symbolic dims (batch) stay symbolic. Small integer results (shape arithmetic such as
//! Shape→Gather→Unsqueeze→Concat) are evaluated so Reshape targets resolve; where they hold
//! symbolic dims they are tracked element by element ([`Fact::sym`]), so `x.view(x.size(0), -1)`
//! gives `[N, 48]`. This analysis does not change the graph: [`crate::passes`] write facts back
//! when asked.

use crate::error::Result;
use crate::ir::{Dim, Fact, Graph, Model, NodeId, Tensor, ValueId};
use crate::ops::{self, Cx};

/// Constants up to this many elements are carried in facts (shape arithmetic, small tables).
pub const MAX_FACT_VALUE: usize = 1 << 16;

/// The facts of every value, indexed by value id.
#[derive(Clone, Debug, Default)]
pub struct Shapes {
    facts: Vec<Option<Fact>>,
}

impl Shapes {
    /// The fact of `v`, if anything is known.
    pub fn get(&self, v: ValueId) -> Option<&Fact> {
        self.facts.get(v.index()).and_then(Option::as_ref)
    }

    /// All facts, indexed by value id.
    pub fn as_slice(&self) -> &[Option<Fact>] {
        &self.facts
    }

    /// The facts of a node's inputs, by port.
    pub fn inputs_of<'a>(&'a self, g: &Graph, n: NodeId) -> Vec<Option<&'a Fact>> {
        g.node(n)
            .inputs
            .iter()
            .map(|v| v.and_then(|v| self.get(v)))
            .collect()
    }

    /// The facts of a node's outputs, by port.
    pub fn outputs_of<'a>(&'a self, g: &Graph, n: NodeId) -> Vec<Option<&'a Fact>> {
        g.node(n)
            .outputs
            .iter()
            .map(|v| v.and_then(|v| self.get(v)))
            .collect()
    }
}

/// Infers facts for every value of the model. Errors name the node whose inputs are
/// inconsistent (e.g. channel mismatch); unknown ops never cause an error.
pub fn infer_shapes(model: &Model) -> Result<Shapes> {
    let g = &model.graph;
    let opset = model.opset();
    let mut facts: Vec<Option<Fact>> = vec![None; g.value_capacity()];
    for v in g.value_ids() {
        let val = g.value(v);
        if let Some(t) = &val.init {
            facts[v.index()] = Some(Fact::constant(t.clone()));
        } else if let Some(d) = val.decl.as_ref().and_then(|d| d.r#type.as_ref()) {
            if val.producer.is_none() {
                facts[v.index()] = Some(Fact::from_type(d));
            }
        }
    }
    for n in g.topo_order()? {
        let node = g.node(n);
        let ins: Vec<Option<&Fact>> = node
            .inputs
            .iter()
            .map(|v| v.and_then(|v| facts[v.index()].as_ref()))
            .collect();
        let mut outs: Vec<Option<Fact>> = vec![None; node.outputs.len()];
        if let Some(op) = ops::lookup(&node.domain, &node.op_type) {
            let cx = Cx {
                node,
                inputs: &ins,
                opset,
            };
            if let Some(inferred) = op.infer(&cx)? {
                for (slot, f) in outs.iter_mut().zip(inferred) {
                    *slot = Some(f);
                }
            }
            // Fold small constant results (shape arithmetic).
            let consts: Option<Vec<Option<&Tensor>>> = node
                .inputs
                .iter()
                .map(|v| match v {
                    None => Some(None),
                    Some(v) => facts[v.index()]
                        .as_ref()
                        .and_then(|f| f.value.as_ref())
                        .map(Some),
                })
                .collect();
            if let Some(consts) = consts {
                if consts.iter().flatten().all(|t| t.len() <= MAX_FACT_VALUE) {
                    if let Some(Ok(vals)) = op.eval(node, &consts, opset) {
                        for (slot, t) in outs.iter_mut().zip(vals) {
                            if t.len() <= MAX_FACT_VALUE {
                                *slot = Some(Fact::constant(t));
                            }
                        }
                    }
                }
            }
        }
        for (port, o) in node.outputs.iter().enumerate() {
            let Some(o) = o else { continue };
            let declared = g
                .value(*o)
                .decl
                .as_ref()
                .and_then(|d| d.r#type.as_ref())
                .map(Fact::from_type);
            facts[o.index()] = merge(outs[port].take(), declared);
        }
    }
    Ok(Shapes { facts })
}

/// Combines an inferred fact with a declared one: inferred wins; declared fills what is unknown.
fn merge(inferred: Option<Fact>, declared: Option<Fact>) -> Option<Fact> {
    match (inferred, declared) {
        (None, d) => d,
        (Some(i), None) => Some(i),
        (Some(mut i), Some(d)) => {
            if i.dtype.is_none() {
                i.dtype = d.dtype;
            }
            match (&mut i.shape, d.shape) {
                (None, ds) => i.shape = ds,
                (Some(is), Some(ds)) if is.len() == ds.len() => {
                    for (a, b) in is.iter_mut().zip(ds) {
                        if *a == Dim::Unknown {
                            *a = b;
                        }
                    }
                }
                _ => {}
            }
            Some(i)
        }
    }
}
