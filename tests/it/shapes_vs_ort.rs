//! Shape inference agrees with ONNX Runtime's actual output shapes on every intermediate value.
//!
//! For every shared model: infer facts with lopper, then expose every node output as a graph
//! output, run the copy under ONNX Runtime with batch-1 random inputs and compare each value's
//! actual shape (and element type) with the inferred fact. Symbolic dims stand for the batch,
//! which is 1 here. A value of an op lopper knows must have a fully inferred shape.

use crate::common;

use std::collections::HashSet;
use std::path::Path;

use common::*;
use lopper::analysis::infer_shapes;
use lopper::ir::{export::export, Dim, Fact, Model};
use lopper::onnx::proto::ValueInfoProto;
use lopper::onnx::{save_model, SaveOptions};
use lopper::ops;
use lopper::runtime::BackendKind;

/// What one model gave: disagreements, unknown facts of known ops whose inputs are all known
/// (first causes), other unknown facts of known ops (downstream), values compared.
#[derive(Default)]
struct Outcome {
    mismatches: Vec<String>,
    first_unknown: Vec<String>,
    downstream_unknown: Vec<String>,
    compared: usize,
}

/// Whether a fact has a shape with every dim known or symbolic.
fn complete(f: Option<&Fact>) -> bool {
    f.and_then(|f| f.shape.as_ref())
        .is_some_and(|s| s.iter().all(|d| *d != Dim::Unknown))
}

/// Checks one model against ONNX Runtime.
fn check(path: &Path, dir: &Path) -> Outcome {
    let name = short(path);
    let model = Model::load(path).unwrap_or_else(|e| panic!("{name}: load: {e}"));
    let shapes = match infer_shapes(&model) {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                mismatches: vec![format!("{name}: infer_shapes failed: {e}")],
                ..Outcome::default()
            }
        }
    };
    let g = &model.graph;

    // Every node output becomes a graph output.
    let mut proto = export(&model).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let mut listed: HashSet<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    for n in &graph.node {
        for o in &n.output {
            if !o.is_empty() && listed.insert(o.clone()) {
                graph.output.push(ValueInfoProto {
                    name: Some(o.clone()),
                    ..Default::default()
                });
            }
        }
    }
    let file = dir.join(path.file_name().unwrap());
    save_model(&proto, &file, &SaveOptions::default()).unwrap();

    let inputs = random_inputs(&model, 3);
    let outputs = run(BackendKind::Ort, &file, &inputs);

    let mut out = Outcome {
        compared: outputs.len(),
        ..Outcome::default()
    };
    let mismatches = &mut out.mismatches;
    let mut unknown = Vec::new();
    for (vname, actual) in &outputs {
        let v = g.value_by_name(vname).unwrap();
        let (node_desc, known_op, inputs_known) = match g.value(v).producer {
            Some((n, _)) => {
                let inputs_known = shapes
                    .inputs_of(g, n)
                    .iter()
                    .zip(&g.node(n).inputs)
                    .all(|(f, v)| v.is_none() || complete(*f));
                let n = g.node(n);
                (
                    format!("node '{}' ({})", n.name, n.op_type),
                    ops::lookup(&n.domain, &n.op_type).is_some(),
                    inputs_known,
                )
            }
            None => ("graph input".to_string(), true, true),
        };
        let where_ = format!("{name}: {node_desc} output '{vname}'");
        let fact = shapes.get(v);
        let Some(shape) = fact.and_then(|f| f.shape.as_ref()) else {
            if known_op {
                let msg = format!("{where_}: no inferred shape, actual {:?}", actual.shape());
                unknown.push((inputs_known, msg));
            }
            continue;
        };
        if let Some(dt) = fact.and_then(|f| f.dtype) {
            if dt != actual.dtype() {
                mismatches.push(format!(
                    "{where_}: inferred dtype {dt}, actual {}",
                    actual.dtype()
                ));
            }
        }
        let desc = fact.map(|f| f.describe()).unwrap_or_default();
        if shape.len() != actual.shape().len() {
            mismatches.push(format!(
                "{where_}: inferred {desc}, actual {:?} (rank)",
                actual.shape()
            ));
            continue;
        }
        let mut has_unknown = false;
        for (d, &a) in shape.iter().zip(actual.shape()) {
            match d {
                Dim::Known(k) if *k != a => {
                    mismatches.push(format!(
                        "{where_}: inferred {desc}, actual {:?}",
                        actual.shape()
                    ));
                    break;
                }
                Dim::Sym(s) if a != 1 => {
                    mismatches.push(format!(
                        "{where_}: inferred {desc}, actual {:?} (symbol {s} is the batch, 1 here)",
                        actual.shape()
                    ));
                    break;
                }
                Dim::Unknown => has_unknown = true,
                _ => {}
            }
        }
        if has_unknown && known_op {
            let msg = format!("{where_}: inferred {desc}, actual {:?}", actual.shape());
            unknown.push((inputs_known, msg));
        }
    }
    for (first, msg) in unknown {
        if first {
            out.first_unknown.push(msg);
        } else {
            out.downstream_unknown.push(msg);
        }
    }
    out
}

#[test]
fn inferred_shapes_match_onnx_runtime_on_every_value() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut all = Outcome::default();
    for path in all_models() {
        let t0 = std::time::Instant::now();
        let o = check(&path, dir.path());
        eprintln!(
            "{}: {} values, {} mismatches, {} unknown ({} first causes) ({:.2?})",
            short(&path),
            o.compared,
            o.mismatches.len(),
            o.first_unknown.len() + o.downstream_unknown.len(),
            o.first_unknown.len(),
            t0.elapsed()
        );
        all.mismatches.extend(o.mismatches);
        all.first_unknown.extend(o.first_unknown);
        all.downstream_unknown.extend(o.downstream_unknown);
    }
    let mut report = String::new();
    let mut section = |title: &str, lines: &[String]| {
        if !lines.is_empty() {
            report += &format!("{} {title}:\n  {}\n", lines.len(), lines.join("\n  "));
        }
    };
    section(
        "inferred shapes disagree with ONNX Runtime",
        &all.mismatches,
    );
    section(
        "values of ops lopper knows have no (complete) inferred shape although all their \
         inputs do (first causes)",
        &all.first_unknown,
    );
    section(
        "further values of ops lopper knows have no (complete) inferred shape (downstream)",
        &all.downstream_unknown,
    );
    assert!(report.is_empty(), "{report}");
}
