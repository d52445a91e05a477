//! Pruning ONNX-zoo-style opset-9 graphs (IR 4) built by hand: variadic `Sum` as a residual,
//! `BatchNormalization`-9, `Pad` with the `pads` attribute (opset < 11), `Reshape` with a
//! constant shape initializer, `Flatten` → `Gemm`, `Upsample`-9 (scales input) and `Concat`.
//! Each is pruned at ratio 0.3; the result must pass the equivalence oracle (1e-4) on every
//! available runtime, drop MACs and parameters, stay opset 9 / IR 4, pass the `onnx` checker
//! and load and run under ONNX Runtime (when available) and tract.
//!
//! tract 0.23 has no `Upsample` operator, so the Upsample graph is verified with ONNX Runtime
//! only (skipped outside CI when ONNX Runtime is missing).

use crate::common;
use crate::graphs;

use graphs::{Builder, Feat};
use lopper::ir::graph::attr_ints;
use lopper::ir::{Model, Tensor};
use lopper::oracle::available_backends;
use lopper::prune::{analyse, prune, PruneOptions, PruneReport, Selection};
use lopper::runtime::BackendKind;

const TOLERANCE: f64 = 1e-4;

fn opset9(name: &str) -> Builder {
    let mut b = Builder::new(name, Some(1), 9);
    b.opset = 9;
    b.ir = 4;
    b
}

/// `Pad`-2 (opset < 11): `pads` attribute, constant mode, on the spatial axes.
fn pad(b: &mut Builder, name: &str, x: Feat, p: usize) -> Feat {
    let q = p as i64;
    let v = b.node(
        name,
        "Pad",
        &[x.v],
        vec![attr_ints("pads", &[0, 0, q, q, 0, 0, q, q])],
    );
    Feat {
        v,
        s: x.s + 2 * p,
        ..x
    }
}

/// stem Conv → BN → Relu → `Sum(h, conv_bn_relu→conv, conv1x1→BN)` → Relu → `Pad` 1 → Conv
/// 3×3 without padding → Relu → `Concat(left conv, right conv → BN)` → Relu → `Reshape` to a
/// constant `[1, 512]` → `Gemm` (transB = 1).
fn sum_pad_reshape() -> Model {
    let mut b = opset9("sum_pad_reshape");
    let x = b.input("input", 3, 8);
    let h = b.conv_bn_relu("stem", x, 8, 3);
    let r1 = b.conv_bn_relu("res.a", h, 8, 3);
    let r1 = b.conv("res.b", r1, 8, 3, 1, 1, true);
    let r2 = b.conv("res.proj", h, 8, 1, 1, 1, false);
    let r2 = b.bn("res.proj.bn", r2);
    let v = b.node("res.sum", "Sum", &[h.v, r1.v, r2.v], vec![]);
    let h = b.relu("res.relu", Feat { v, ..h });
    let h = pad(&mut b, "pad", h, 1);
    let h = b.conv_padded("conv", h, 8, 3, 1, 1, true, 0);
    let h = b.relu("conv.relu", h);
    let l = b.conv("left", h, 4, 3, 1, 1, true);
    let r = b.conv("right", h, 4, 1, 1, 1, true);
    let r = b.bn("right.bn", r);
    let h = b.concat("concat", &[l, r]);
    let h = b.relu("concat.relu", h);
    let k = h.c * h.s * h.s;
    let shape = b.const_i64("reshape.shape", &[1, k as i64]);
    let f = b.node("reshape", "Reshape", &[h.v, shape], vec![]);
    let y = b.gemm("head.gemm", f, k, 10);
    b.finish(&[y])
}

/// stem Conv → Relu → `Upsample`-9 ×2 (scales input, nearest) → `Concat(conv 3×3 stride 2,
/// conv 1×1 stride 2 → BN)` → Relu → Conv → BN → Relu → `Flatten` → `Gemm` (transB = 1).
fn upsample_concat_flatten() -> Model {
    let mut b = opset9("upsample_concat_flatten");
    let x = b.input("input", 3, 8);
    let h = b.conv("stem", x, 6, 3, 1, 1, true);
    let h = b.relu("stem.relu", h);
    let scales = b.init(
        "up.scales",
        Tensor::from_f32(vec![4], &[1.0, 1.0, 2.0, 2.0]),
    );
    let v = b.node("up", "Upsample", &[h.v, scales], vec![]);
    let h = Feat { v, s: h.s * 2, ..h };
    let l = b.conv("left", h, 4, 3, 2, 1, true);
    let r = b.conv("right", h, 6, 1, 2, 1, false);
    let r = b.bn("right.bn", r);
    let h = b.concat("concat", &[l, r]);
    let h = b.relu("concat.relu", h);
    let h = b.conv_bn_relu("conv", h, 6, 3);
    let f = b.node("head.flatten", "Flatten", &[h.v], vec![]);
    let y = b.gemm("head.gemm", f, h.c * h.s * h.s, 10);
    b.finish(&[y])
}

/// Every group but the logits' is prunable (the op rules cover the opset-9 forms).
fn assert_rules_cover(model: &Model) {
    let mut m = model.clone();
    let g = analyse(&mut m).expect("analysis");
    for grp in &g.groups {
        let logits = grp.sources.iter().any(|s| s.node_name == "head.gemm");
        let blocked_ok = grp.blocked.iter().all(|r| r.contains("graph output"));
        assert!(
            if logits {
                !grp.blocked.is_empty() && blocked_ok
            } else {
                grp.prunable()
            },
            "{}: group {} (sources {:?}) blocked: {:?}",
            model.graph.rest.name(),
            grp.id,
            grp.sources.iter().map(|s| &s.node_name).collect::<Vec<_>>(),
            grp.blocked
        );
    }
}

fn prune_30(model: &mut Model, backends: Vec<BackendKind>) -> PruneReport {
    prune(
        model,
        &PruneOptions {
            selection: Selection::Ratio(0.3),
            verify_with: backends,
            tolerance: TOLERANCE,
        },
    )
    .unwrap_or_else(|e| panic!("{}: prune failed: {e}", model.graph.rest.name()))
}

fn assert_pruned(name: &str, report: &PruneReport, backends: &[BackendKind]) {
    assert!(report.removed > 0, "{name}: nothing removed: {report:?}");
    assert!(
        report.macs.1 < report.macs.0,
        "{name}: MACs {:?}",
        report.macs
    );
    assert!(
        report.params.1 < report.params.0,
        "{name}: params {:?}",
        report.params
    );
    if backends.is_empty() {
        return;
    }
    let oracle = report.oracle.as_ref().expect("verified");
    assert_eq!(oracle.errors.len(), backends.len(), "{name}: {oracle:?}");
    assert!(oracle.max_rel_error <= TOLERANCE, "{name}: {oracle:?}");
}

/// The original and the saved pruned model pass the checker; the pruned one keeps IR 4 /
/// opset 9 and runs under `runtimes` with the original's output shape.
fn check_saved(original: &Model, pruned: &Model, runtimes: &[BackendKind]) {
    let name = original.graph.rest.name().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (orig_path, _) = common::save_reload(original, dir.path(), "original");
    let (path, back) = common::save_reload(pruned, dir.path(), &name);
    assert_eq!(back.rest.ir_version(), 4, "{name}: IR version");
    assert_eq!(back.opset(), 9, "{name}: opset");
    common::check_models(&[&orig_path, &path]);
    let inputs = common::random_inputs(original, 1);
    for &kind in runtimes {
        let out = common::run(kind, &path, &inputs);
        assert_eq!(out.len(), 1, "{name} under {kind:?}");
        assert_eq!(out[0].1.shape(), &[1, 10], "{name} under {kind:?}");
    }
}

/// Node `name` still has the opset-9 form: the `pads` attribute and a single input.
fn assert_pad_attr_form(m: &Model, name: &str) {
    let g = &m.graph;
    let n = g
        .node_ids()
        .map(|id| g.node(id))
        .find(|n| n.name == name)
        .expect("Pad node");
    assert_eq!(n.inputs.len(), 1, "Pad-2 takes no pads input");
    assert_eq!(n.attr_ints("pads"), Some(&[0, 0, 1, 1, 0, 0, 1, 1][..]));
}

#[test]
fn sum_pad_reshape_prunes_and_runs_everywhere() {
    let original = sum_pad_reshape();
    assert_rules_cover(&original);
    common::require_ort();
    let backends = available_backends();
    assert!(backends.contains(&BackendKind::Tract));
    let mut m = original.clone();
    let report = prune_30(&mut m, backends.clone());
    assert_pruned("sum_pad_reshape", &report, &backends);
    assert_pad_attr_form(&m, "pad");
    // The reshape target follows the new width: the Gemm reads exactly what Reshape gives.
    let g = &m.graph;
    let reshape = g
        .node_ids()
        .map(|id| g.node(id))
        .find(|n| n.name == "reshape")
        .unwrap();
    let target = g
        .init(reshape.input(1).unwrap())
        .unwrap()
        .to_i64_vec()
        .unwrap();
    let gemm = g
        .node_ids()
        .map(|id| g.node(id))
        .find(|n| n.name == "head.gemm")
        .unwrap();
    let w = g.init(gemm.input(1).unwrap()).unwrap().shape().to_vec();
    assert_eq!(
        target,
        vec![1, w[1] as i64],
        "Reshape target vs Gemm weight {w:?}"
    );
    assert!(
        w[1] < 512,
        "the concat's channels were pruned: Gemm weight {w:?}"
    );
    check_saved(&original, &m, &backends);
}

#[test]
fn upsample_concat_flatten_prunes_and_runs_under_ort() {
    let original = upsample_concat_flatten();
    assert_rules_cover(&original);
    let backends = if common::require_ort() {
        vec![BackendKind::Ort]
    } else {
        vec![]
    };
    let mut m = original.clone();
    let report = prune_30(&mut m, backends.clone());
    assert_pruned("upsample_concat_flatten", &report, &backends);
    let g = &m.graph;
    let up = g
        .node_ids()
        .map(|id| g.node(id))
        .find(|n| n.name == "up")
        .unwrap();
    assert_eq!(up.inputs.len(), 2, "Upsample-9 keeps its scales input");
    let scales = g.init(up.input(1).unwrap()).unwrap().to_f64_vec().unwrap();
    assert_eq!(scales, vec![1.0, 1.0, 2.0, 2.0]);
    check_saved(&original, &m, &backends);
}

/// tract cannot run `Upsample`: with both runtimes asked for, tract is skipped (and said so)
/// while ONNX Runtime checks; with tract alone, pruning refuses to write an unchecked model.
#[test]
fn a_runtime_that_cannot_run_the_model_is_skipped_not_fatal() {
    let original = upsample_concat_flatten();
    let opts = |backends: Vec<BackendKind>| PruneOptions {
        selection: Selection::Ratio(0.3),
        verify_with: backends,
        tolerance: 1e-4,
    };
    let mut m = original.clone();
    let err = prune(&mut m, &opts(vec![BackendKind::Tract])).expect_err("no runtime could check");
    assert!(
        err.to_string().contains("no runtime could run the model"),
        "{err}"
    );
    if common::require_ort() {
        let mut m = original.clone();
        let report = prune(&mut m, &opts(vec![BackendKind::Ort, BackendKind::Tract])).unwrap();
        let oracle = report.oracle.expect("verified");
        assert_eq!(oracle.errors.len(), 1, "ORT compared");
        assert_eq!(oracle.skipped.len(), 1, "tract skipped");
        assert!(
            oracle.skipped[0].1.contains("Upsample"),
            "{:?}",
            oracle.skipped
        );
        assert!(oracle.max_rel_error <= 1e-4);
    }
}
