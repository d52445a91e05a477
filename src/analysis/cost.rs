//! The cost model: parameters, MACs/FLOPs per node and in total, and activation memory.
//!
//! Conventions (see [`crate::ops::Cost`]): MACs count Conv/ConvTranspose/Gemm/MatMul
//! multiply-accumulates; FLOPs = 2·MACs + one per output element of other computing ops;
//! symbolic dims (batch) count as 1. Parameters = elements of all initializers (each counted
//! once, also when shared). A node's params are the elements of the float initializers it
//! reads. Activation memory: bytes of all node outputs (`total`) and the peak of bytes live at
//! once when nodes run in topological order (`peak`), graph inputs included, initializers not.
//! Every count saturates at `u64::MAX` ([`TOO_LARGE`]): a model too large to count says so
//! instead of wrapping round to a small number.

use std::collections::HashSet;

use serde::Serialize;

use super::Shapes;
use crate::error::Result;
use crate::ir::{Model, NodeId, ValueId};
use crate::ops::{self, numel_or_one, Cost, Cx};

/// Per-node cost.
#[derive(Clone, Debug, Serialize)]
pub struct NodeCost {
    /// Node name.
    pub name: String,
    /// Op type.
    pub op_type: String,
    /// Multiply-accumulates.
    pub macs: u64,
    /// FLOPs.
    pub flops: u64,
    /// Elements of the initializers the node reads.
    pub params: u64,
    /// Output shape text (first output).
    pub output: String,
}

/// The model's costs.
#[derive(Clone, Debug, Serialize)]
pub struct Costs {
    /// Per node, in topological order.
    pub nodes: Vec<NodeCost>,
    /// Total MACs.
    pub macs: u64,
    /// Total FLOPs.
    pub flops: u64,
    /// Total parameters (initializer elements).
    pub params: u64,
    /// Bytes of all node outputs.
    pub activation_bytes: u64,
    /// Peak bytes of activations live at once.
    pub peak_activation_bytes: u64,
    /// Nodes whose output shapes are unknown although their inputs' are (`name (op)`): where
    /// shape inference stopped. Every node after them may be costed as 0, so the totals are
    /// incomplete when this is not empty.
    pub unknown_from: Vec<String>,
    /// Nodes with an output of unknown shape.
    pub unknown_nodes: usize,
    /// Node ids matching `nodes`.
    #[serde(skip)]
    pub ids: Vec<NodeId>,
}

/// The saturated value of every count here: too large to represent in a `u64`.
pub const TOO_LARGE: u64 = u64::MAX;

/// Bytes of one value, saturating at [`TOO_LARGE`].
fn value_bytes(shapes: &Shapes, v: ValueId) -> u64 {
    shapes.get(v).map_or(0, |f| {
        let n = f.shape.as_ref().map_or(0, |s| numel_or_one(s));
        let bits = f.dtype.map_or(32, |d| d.bits().max(8)) as u128;
        if n == TOO_LARGE {
            return TOO_LARGE;
        }
        u64::try_from(u128::from(n) * bits / 8).unwrap_or(TOO_LARGE)
    })
}

/// Computes costs from the shape facts.
pub fn costs(model: &Model, shapes: &Shapes) -> Result<Costs> {
    let g = &model.graph;
    let order = g.topo_order()?;
    let mut out = Costs {
        nodes: Vec::with_capacity(order.len()),
        macs: 0,
        flops: 0,
        params: g
            .initializers
            .iter()
            .filter_map(|&v| g.init(v))
            .map(|t| t.len() as u64)
            .fold(0, u64::saturating_add),
        activation_bytes: 0,
        peak_activation_bytes: 0,
        unknown_from: Vec::new(),
        unknown_nodes: 0,
        ids: order.clone(),
    };
    // Remaining readers of each live activation, for the peak computation.
    let mut remaining: Vec<usize> = vec![0; g.value_capacity()];
    for v in g.value_ids() {
        remaining[v.index()] = g.value(v).uses.len() + usize::from(g.outputs.contains(&v));
    }
    let mut live: u64 = g
        .inputs
        .iter()
        .filter(|v| g.init(**v).is_none())
        .map(|&v| value_bytes(shapes, v))
        .fold(0, u64::saturating_add);
    let mut peak = live;
    for &n in &order {
        let node = g.node(n);
        let ins = shapes.inputs_of(g, n);
        let outs = shapes.outputs_of(g, n);
        let shaped = |f: &Option<&crate::ir::Fact>| f.is_some_and(|f| f.shape.is_some());
        if node
            .outputs
            .iter()
            .zip(&outs)
            .any(|(o, f)| o.is_some() && !shaped(f))
        {
            out.unknown_nodes += 1;
            let inputs_known = node
                .inputs
                .iter()
                .zip(&ins)
                .all(|(i, f)| i.is_none() || shaped(f));
            if inputs_known {
                out.unknown_from
                    .push(format!("'{}' ({})", node.name, node.op_type));
            }
        }
        let cost = match ops::lookup(&node.domain, &node.op_type) {
            Some(op) => op.cost(
                &Cx {
                    node,
                    inputs: &ins,
                    opset: model.opset(),
                },
                &outs,
            ),
            None => Cost::default(),
        };
        let mut seen = HashSet::new();
        let params = node
            .inputs
            .iter()
            .flatten()
            .filter(|v| seen.insert(**v))
            .filter_map(|&v| g.init(v))
            .filter(|t| t.dtype().is_float())
            .map(|t| t.len() as u64)
            .fold(0, u64::saturating_add);
        let out_bytes: u64 = node
            .outputs
            .iter()
            .flatten()
            .map(|&v| value_bytes(shapes, v))
            .fold(0, u64::saturating_add);
        out.activation_bytes = out.activation_bytes.saturating_add(out_bytes);
        // Once saturated, `live` stays so: what was freed from an unknown total is unknown.
        live = live.saturating_add(out_bytes);
        peak = peak.max(live);
        for &v in node.inputs.iter().flatten() {
            if g.init(v).is_some() || remaining[v.index()] == 0 {
                continue;
            }
            remaining[v.index()] -= 1;
            if remaining[v.index()] == 0 && live != TOO_LARGE {
                live = live.saturating_sub(value_bytes(shapes, v));
            }
        }
        out.macs = out.macs.saturating_add(cost.macs);
        out.flops = out.flops.saturating_add(cost.flops);
        out.nodes.push(NodeCost {
            name: node.name.clone(),
            op_type: node.op_type.clone(),
            macs: cost.macs,
            flops: cost.flops,
            params,
            output: outs
                .first()
                .copied()
                .flatten()
                .map_or("?".into(), |f| f.describe()),
        });
    }
    out.peak_activation_bytes = peak;
    Ok(out)
}
