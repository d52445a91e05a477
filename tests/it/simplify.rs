//! `passes::simplify` on every shared model (zoo and pretrained): BatchNormalization after a
//! Conv/ConvTranspose/Gemm is gone, the node count does not grow, the result is a fixed point,
//! passes the `onnx` checker, and computes what the original computes (max |a − b| /
//! max(1e-6, max |a|) ≤ 1e-5 per output) under tract and, when available, ONNX Runtime.

use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use lopper::ir::{Graph, Model, Tensor};
use lopper::onnx::SaveOptions;
use lopper::passes::{simplify, SimplifyOptions};
use lopper::runtime::BackendKind;

/// The tolerance on the relative error of every output.
const TOLERANCE: f64 = 1e-5;

fn bn_count(g: &Graph) -> usize {
    g.node_ids()
        .filter(|&n| g.node(n).op_type == "BatchNormalization")
        .count()
}

/// BatchNormalization nodes that read the output of a Conv, ConvTranspose or Gemm.
fn bn_after_linear(g: &Graph) -> Vec<String> {
    g.node_ids()
        .filter(|&n| {
            let node = g.node(n);
            node.op_type == "BatchNormalization"
                && node
                    .input(0)
                    .and_then(|x| g.value(x).producer)
                    .is_some_and(|(p, _)| {
                        matches!(
                            g.node(p).op_type.as_str(),
                            "Conv" | "ConvTranspose" | "Gemm"
                        )
                    })
        })
        .map(|n| g.node(n).name.clone())
        .collect()
}

/// Max |a − b| / max(1e-6, max |a|) over all outputs; panics on a name/shape mismatch.
fn max_rel_error(name: &str, a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len(), "{name}: output count differs");
    let mut worst = 0.0f64;
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb, "{name}: output names differ");
        assert_eq!(
            ta.shape(),
            tb.shape(),
            "{name}: output '{na}' shape differs"
        );
        assert_eq!(
            ta.dtype(),
            tb.dtype(),
            "{name}: output '{na}' dtype differs"
        );
        let (Some(fa), Some(fb)) = (ta.to_f64_vec(), tb.to_f64_vec()) else {
            assert_eq!(ta.raw(), tb.raw(), "{name}: output '{na}' differs");
            continue;
        };
        let scale = fa.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-6);
        let diff = fa
            .iter()
            .zip(&fb)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        worst = worst.max(diff / scale);
    }
    worst
}

/// Simplifies `path` (BatchNormalization folded), checks the structure and saves the result
/// into `dir`; returns the saved path and a `before → after` summary.
fn simplify_and_save(path: &Path, dir: &Path) -> (PathBuf, String) {
    let name = short(path);
    let mut model = Model::load(path).unwrap_or_else(|e| panic!("{name}: load: {e}"));
    let (nodes, bns) = (model.graph.node_count(), bn_count(&model.graph));
    let opts = SimplifyOptions {
        keep_batch_norm: false,
        verify: true,
        ..Default::default()
    };
    simplify(&mut model, &opts).unwrap_or_else(|e| panic!("{name}: simplify: {e}"));
    let g = &model.graph;
    let left = bn_after_linear(g);
    assert!(
        left.is_empty(),
        "{name}: BatchNormalization not folded: {left:?}"
    );
    assert!(
        g.node_count() <= nodes,
        "{name}: node count grew from {nodes} to {}",
        g.node_count()
    );
    let again = simplify(&mut model, &opts).unwrap_or_else(|e| panic!("{name}: simplify: {e}"));
    assert!(
        !again,
        "{name}: simplify is not at a fixed point after one call"
    );
    let summary = format!(
        "nodes {nodes} → {}, BatchNormalization {bns} → {}",
        model.graph.node_count(),
        bn_count(&model.graph)
    );
    let out = dir.join(path.file_name().unwrap());
    model
        .save(&out, &SaveOptions::default())
        .unwrap_or_else(|e| panic!("{name}: save: {e}"));
    (out, summary)
}

/// Simplifies every model and compares the outputs under `kind` with the original's.
fn simplify_preserves_outputs(kind: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut saved = Vec::new();
    for path in all_models() {
        let name = short(&path);
        let (out, summary) = simplify_and_save(&path, dir.path());
        let original = Model::load(&path).unwrap();
        let inputs = random_inputs(&original, 11);
        let a = run(kind, &path, &inputs);
        let b = run(kind, &out, &inputs);
        let err = max_rel_error(&name, &a, &b);
        eprintln!("{kind:?} {name}: {summary}, max rel error {err:.2e}");
        if err.is_nan() || err > TOLERANCE {
            failures.push(format!("{name}: max relative error {err:e}"));
        }
        saved.push(out);
    }
    assert!(
        failures.is_empty(),
        "{kind:?}: simplified models differ from the originals:\n  {}",
        failures.join("\n  ")
    );
    if kind == BackendKind::Tract {
        let paths: Vec<&Path> = saved.iter().map(PathBuf::as_path).collect();
        check_models(&paths);
    }
}

#[test]
fn simplify_preserves_outputs_under_tract() {
    simplify_preserves_outputs(BackendKind::Tract);
}

#[test]
fn simplify_preserves_outputs_under_ort() {
    if require_ort() {
        simplify_preserves_outputs(BackendKind::Ort);
    }
}

#[test]
fn keep_batch_norm_keeps_them() {
    for path in all_models() {
        let name = short(&path);
        let mut model = Model::load(&path).unwrap();
        let bns = bn_count(&model.graph);
        let opts = SimplifyOptions {
            keep_batch_norm: true,
            verify: true,
            ..Default::default()
        };
        simplify(&mut model, &opts).unwrap_or_else(|e| panic!("{name}: simplify: {e}"));
        assert_eq!(bn_count(&model.graph), bns, "{name}");
    }
}
