//! `lopper inspect`: the model's interface, opset, op histogram, parameters, MACs/FLOPs,
//! activation memory, and optionally a per-layer table, JSON, or the IR dump.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::analysis::{costs, infer_shapes, Costs, Shapes};
use crate::ir::{self, Model};

/// Arguments of `lopper inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The ONNX model.
    model: PathBuf,
    /// Print a per-layer table (op, output shape, params, MACs).
    #[arg(long)]
    layers: bool,
    /// Print JSON instead of text (for pipelines).
    #[arg(long)]
    json: bool,
    /// Print the IR text dump with inferred types.
    #[arg(long)]
    ir: bool,
}

#[derive(Serialize)]
struct Io {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

#[derive(Serialize)]
struct Report<'a> {
    model: String,
    ir_version: i64,
    producer: String,
    opsets: BTreeMap<String, i64>,
    inputs: Vec<Io>,
    outputs: Vec<Io>,
    nodes: usize,
    ops: BTreeMap<String, usize>,
    params: u64,
    param_bytes: u64,
    macs: u64,
    flops: u64,
    activation_bytes: u64,
    peak_activation_bytes: u64,
    /// Where shape inference stopped (the totals are incomplete when not empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unknown_shapes_from: Vec<String>,
    /// Nodes with an output of unknown shape.
    unknown_shape_nodes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<&'a [crate::analysis::cost::NodeCost]>,
}

fn io(model: &Model, shapes: &Shapes, ids: &[ir::ValueId]) -> Vec<Io> {
    let g = &model.graph;
    ids.iter()
        .filter(|v| g.init(**v).is_none())
        .map(|&v| Io {
            name: g.value(v).name.clone(),
            ty: shapes.get(v).map_or("?".into(), |f| f.describe()),
        })
        .collect()
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let model = Model::load(&args.model)?;
    ir::verify_model(&model)?;
    let shapes = infer_shapes(&model)?;
    if args.ir {
        say_part!(
            "{}",
            ir::display::dump(&model.graph, Some(shapes.as_slice()))
        );
        return Ok(());
    }
    let costs: Costs = costs(&model, &shapes)?;
    let g = &model.graph;
    let mut ops = BTreeMap::new();
    for n in g.node_ids() {
        let node = g.node(n);
        let key = if node.domain.is_empty() {
            node.op_type.clone()
        } else {
            format!("{}.{}", node.domain, node.op_type)
        };
        *ops.entry(key).or_insert(0) += 1;
    }
    let report = Report {
        model: args.model.display().to_string(),
        ir_version: model.rest.ir_version(),
        producer: format!(
            "{} {}",
            model.rest.producer_name(),
            model.rest.producer_version()
        )
        .trim()
        .to_string(),
        opsets: model
            .rest
            .opset_import
            .iter()
            .map(|o| (display_domain(o.domain()), o.version()))
            .collect(),
        inputs: io(&model, &shapes, &g.inputs),
        outputs: io(&model, &shapes, &g.outputs),
        nodes: g.node_count(),
        ops,
        params: costs.params,
        param_bytes: g
            .initializers
            .iter()
            .filter_map(|&v| g.init(v))
            .map(|t| t.raw().len() as u64)
            .sum(),
        macs: costs.macs,
        flops: costs.flops,
        activation_bytes: costs.activation_bytes,
        peak_activation_bytes: costs.peak_activation_bytes,
        unknown_shapes_from: costs.unknown_from.clone(),
        unknown_shape_nodes: costs.unknown_nodes,
        layers: args.layers.then_some(costs.nodes.as_slice()),
    };
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_text(&report);
    Ok(())
}

fn display_domain(d: &str) -> String {
    if d.is_empty() {
        "ai.onnx".into()
    } else {
        d.into()
    }
}

/// `1234567` → `1.23 M`.
pub fn si(v: u64) -> String {
    if v == crate::analysis::cost::TOO_LARGE {
        return "too large to count (≥ 2^64)".into();
    }
    let v = v as f64;
    if v >= 1e9 {
        format!("{:.2} G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2} K", v / 1e3)
    } else {
        format!("{v}")
    }
}

/// Bytes in KiB to TiB; a saturated count says it is too large.
pub fn bytes(v: u64) -> String {
    if v == crate::analysis::cost::TOO_LARGE {
        return "too large to count (≥ 16 EiB)".into();
    }
    let f = v as f64;
    let units = [("TiB", 40), ("GiB", 30), ("MiB", 20)];
    for (unit, shift) in units {
        let scale = (1u64 << shift) as f64;
        if f >= scale {
            return format!("{:.2} {unit}", f / scale);
        }
    }
    format!("{:.1} KiB", f / 1024.0)
}

fn print_text(r: &Report) {
    say!("model      {}", r.model);
    let opsets: Vec<String> = r.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
    say!(
        "format     IR {}, opset {}, producer {}",
        r.ir_version,
        opsets.join(", "),
        if r.producer.is_empty() {
            "?"
        } else {
            &r.producer
        }
    );
    for i in &r.inputs {
        say!("input      {} {}", i.name, i.ty);
    }
    for o in &r.outputs {
        say!("output     {} {}", o.name, o.ty);
    }
    let hist: Vec<String> = r.ops.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    say!("nodes      {} ({})", r.nodes, hist.join(" "));
    say!("params     {} ({})", si(r.params), bytes(r.param_bytes));
    say!(
        "MACs       {}  (FLOPs {}; batch 1)",
        si(r.macs),
        si(r.flops)
    );
    say!(
        "activations {} total, {} peak (batch 1)",
        bytes(r.activation_bytes),
        bytes(r.peak_activation_bytes)
    );
    if !r.unknown_shapes_from.is_empty() {
        say!(
            "incomplete: {} node(s) have outputs of unknown shape, from {} on (an op lopper \
             cannot infer); their MACs and activations are not counted",
            r.unknown_shape_nodes,
            r.unknown_shapes_from.join(", ")
        );
    }
    if let Some(layers) = r.layers {
        say!();
        let w = layers
            .iter()
            .map(|l| l.name.len())
            .max()
            .unwrap_or(4)
            .clamp(4, 48);
        say!(
            "{:<w$}  {:<22} {:<24} {:>10} {:>12}",
            "node",
            "op",
            "output",
            "params",
            "MACs"
        );
        for l in layers {
            let name: String = l.name.chars().take(w).collect();
            say!(
                "{:<w$}  {:<22} {:<24} {:>10} {:>12}",
                name,
                l.op_type,
                l.output,
                l.params,
                si(l.macs)
            );
        }
    }
}
