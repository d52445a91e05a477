//! Before/after reports of a pruning run: one row per weight layer (Conv, ConvTranspose, Gemm,
//! MatMul with a constant weight) with its channels, MACs and parameters before and after, the
//! model totals, a text table ([`table`]), an SVG chart of the widths ([`plot`]) and a JSON
//! document that embeds the run's own report ([`Report`]).
//!
//! Layers are matched between the two models by node name; channel counts come from the weight
//! shapes and costs from [`crate::analysis::costs`]. This module only reads the models.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::analysis::{costs, infer_shapes, Costs, Shapes};
use crate::error::{Error, Result};
use crate::ir::{Graph, Model, Node};
use crate::onnx::save::write_atomic;

pub mod plot;
pub mod table;

pub use plot::plot_widths;
pub use table::render_table;

/// One weight layer, before and after pruning (`(before, after)` pairs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRow {
    /// Node name.
    pub name: String,
    /// Op type.
    pub op: String,
    /// Output channels (filters / output features).
    pub out_channels: (usize, usize),
    /// Input channels (all groups together / input features).
    pub in_channels: (usize, usize),
    /// Multiply-accumulates of the node.
    pub macs: (u64, u64),
    /// Elements of the float initializers the node reads (weight and bias).
    pub params: (u64, u64),
}

impl LayerRow {
    /// Whether pruning changed the layer's channels or costs.
    pub fn changed(&self) -> bool {
        self.out_channels.0 != self.out_channels.1
            || self.in_channels.0 != self.in_channels.1
            || self.macs.0 != self.macs.1
            || self.params.0 != self.params.1
    }
}

/// Whole-model figures (every node, not only the listed layers), `(before, after)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Total MACs, as [`Costs::macs`].
    pub macs: (u64, u64),
    /// Total FLOPs, as [`Costs::flops`].
    pub flops: (u64, u64),
    /// Total parameters (all initializer elements), as [`Costs::params`].
    pub params: (u64, u64),
    /// Layers listed.
    pub layers: usize,
    /// Layers whose channels or costs changed.
    pub changed_layers: usize,
}

/// The per-layer rows and the totals of one before/after comparison.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerReport {
    /// Weight layers in the topological order of the original model.
    pub layers: Vec<LayerRow>,
    /// Whole-model totals.
    pub totals: Totals,
}

/// A JSON report: the caller's own run report (e.g. [`crate::prune::PruneReport`]) with the
/// layer rows and totals added as the top-level keys `layers` and `totals` (so `T` must not
/// use those names).
#[derive(Clone, Debug, Serialize)]
pub struct Report<T: Serialize> {
    /// The run's report, its fields inlined.
    #[serde(flatten)]
    pub run: T,
    /// Per-layer rows and totals, inlined.
    #[serde(flatten)]
    pub layers: LayerReport,
}

impl<T: Serialize> Report<T> {
    /// Pairs a run report with its layer report.
    pub fn new(run: T, layers: LayerReport) -> Self {
        Report { run, layers }
    }

    /// Pretty-printed JSON, ending with a newline.
    pub fn to_json(&self) -> Result<String> {
        let mut s = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Usage(format!("cannot serialise the report: {e}")))?;
        s.push('\n');
        Ok(s)
    }

    /// Writes the JSON to `path` atomically (temporary file + rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), self.to_json()?.as_bytes())
    }
}

/// The weight shape of input `port`, when it is constant (an initializer or a Constant node's
/// output) and statically known.
fn constant_shape(g: &Graph, shapes: &Shapes, node: &Node, port: usize) -> Option<Vec<usize>> {
    let v = node.input(port)?;
    if let Some(t) = g.init(v) {
        return Some(t.shape().to_vec());
    }
    let (producer, _) = g.value(v).producer?;
    if g.node(producer).op_type != "Constant" {
        return None;
    }
    shapes.get(v)?.concrete()
}

/// `(out, in)` channels of a weight layer (as its op declares, [`crate::ops::Op::layer_channels`]),
/// or `None` when `node` is not one or its weight is not constant.
fn layer_channels(g: &Graph, shapes: &Shapes, node: &Node) -> Option<(usize, usize)> {
    let op = crate::ops::lookup(&node.domain, &node.op_type)?;
    let w = constant_shape(g, shapes, node, 1)?;
    op.layer_channels(node, &w)
}

/// Rows and totals comparing `before` with `after` (the pruned model). A layer of `before`
/// that `after` lacks (or no longer has as a weight layer) shows 0 channels and costs after;
/// layers only in `after` are not listed. Errors when either model's shapes or costs cannot be
/// computed.
pub fn layer_report(before: &Model, after: &Model) -> Result<LayerReport> {
    let sb = infer_shapes(before)?;
    let sa = infer_shapes(after)?;
    let cb = costs(before, &sb)?;
    let ca = costs(after, &sa)?;
    let (gb, ga) = (&before.graph, &after.graph);
    let index = |c: &Costs| -> HashMap<String, usize> {
        c.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect()
    };
    let after_cost = index(&ca);
    let mut layers = Vec::new();
    for (i, &n) in cb.ids.iter().enumerate() {
        let node = gb.node(n);
        let Some(ch_b) = layer_channels(gb, &sb, node) else {
            continue;
        };
        let (ch_a, macs_a, params_a) = match after_cost.get(&node.name) {
            Some(&j) => {
                let na = ga.node(ca.ids[j]);
                match layer_channels(ga, &sa, na) {
                    Some(ch) => (ch, ca.nodes[j].macs, ca.nodes[j].params),
                    None => ((0, 0), 0, 0),
                }
            }
            None => ((0, 0), 0, 0),
        };
        layers.push(LayerRow {
            name: node.name.clone(),
            op: node.op_type.clone(),
            out_channels: (ch_b.0, ch_a.0),
            in_channels: (ch_b.1, ch_a.1),
            macs: (cb.nodes[i].macs, macs_a),
            params: (cb.nodes[i].params, params_a),
        });
    }
    let totals = Totals {
        macs: (cb.macs, ca.macs),
        flops: (cb.flops, ca.flops),
        params: (cb.params, ca.params),
        layers: layers.len(),
        changed_layers: layers.iter().filter(|r| r.changed()).count(),
    };
    Ok(LayerReport { layers, totals })
}

/// The rows of [`layer_report`] alone.
pub fn layer_rows(before: &Model, after: &Model) -> Result<Vec<LayerRow>> {
    Ok(layer_report(before, after)?.layers)
}
