//! Tests of [`super`] (the CaP-style compensation stage).

use super::*;
use crate::ir::graph::{attr_float, attr_int, attr_ints};
use crate::ir::Graph;
use crate::passes::testutil::{input, model};
use crate::pipeline::kept::testutil::prune_steps;
use crate::plan::{fingerprint, PlanMeta};

/// Seeded normal samples.
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| r.normal() as f32).collect()
}

/// Runs `m` (one input `x`) on `x` in tract; its first output.
fn run(m: &Model, x: &Tensor) -> Vec<f32> {
    let dir = TempDir::new("compensate-test").unwrap();
    let path = dir.path().join("m.onnx");
    m.save(&path, &Default::default()).unwrap();
    let mut s = runtime::load(BackendKind::Tract, &path).unwrap();
    let out = s.run(&[("x".to_string(), x.clone())]).unwrap();
    out[0].1.to_f32_vec().unwrap()
}

fn batches(shape: &[usize], count: usize) -> Vec<CalibrationBatch> {
    (0..count)
        .map(|k| {
            let n = shape.iter().product();
            vec![(
                "x".to_string(),
                Tensor::from_f32(shape.to_vec(), &normal(n, 100 + k as u64)),
            )]
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn settings(lambda: f64) -> CompensateOptions {
    CompensateOptions {
        lambda,
        ..Default::default()
    }
}

fn run_compensate(
    pruned: &mut Model,
    original: &Model,
    plan: &PlanFile,
    batches: &[CalibrationBatch],
    lambda: f64,
) -> Result<Compensation> {
    compensate(
        pruned,
        original,
        plan,
        batches,
        BackendKind::Tract,
        &Default::default(),
        &settings(lambda),
        &mut |_, _| {},
    )
}

/// `x[2,2,6,6] → Conv a (1×1; filter 2 = filter 0 + 2·filter 1) → Conv b (2 filters,
/// 3×3, stride 2, pad 1, dilation `dil`, bias)`.
fn dependent_convs(dil: i64) -> Model {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[2, 2, 6, 6]);
    let aw = g.add_initializer(
        "a.w",
        Tensor::from_f32(vec![3, 2, 1, 1], &[1.0, 0.0, 0.0, 1.0, 1.0, 2.0]),
    );
    let a = g.add_node("a", "Conv", &[Some(x), Some(aw)], &["a.y"], vec![]);
    let ay = g.node(a).outputs[0];
    let bw = g.add_initializer("b.w", Tensor::from_f32(vec![2, 3, 3, 3], &normal(54, 7)));
    let bb = g.add_initializer("b.b", Tensor::from_f32(vec![2], &[0.5, -1.0]));
    let attrs = vec![
        attr_ints("strides", &[2, 2]),
        attr_ints("pads", &[dil, dil, dil, dil]),
        attr_ints("dilations", &[dil, dil]),
    ];
    let b = g.add_node("b", "Conv", &[ay, Some(bw), Some(bb)], &["y"], attrs);
    g.outputs.push(g.node(b).outputs[0].unwrap());
    model(g, 13)
}

#[test]
fn a_removed_linear_combination_is_compensated_exactly() {
    for dil in [1, 2] {
        let m = dependent_convs(dil);
        let (mut p, plan) = prune_steps(&m, &[("a", &[2])]);
        let x = Tensor::from_f32(vec![2, 2, 6, 6], &normal(144, 99));
        let want = run(&m, &x);
        let err = max_diff(&run(&p, &x), &want);
        assert!(err > 0.1, "pruning changed nothing ({err})");
        let r = run_compensate(&mut p, &m, &plan, &batches(&[2, 2, 6, 6], 3), 1e-9).unwrap();
        assert_eq!((r.layers, r.samples), (1, 6));
        assert!(r.residual_before > 0.01, "{r:?}");
        assert!(r.residual_after < 1e-9, "{r:?}");
        let err = max_diff(&run(&p, &x), &want);
        assert!(err < 1e-4, "dilation {dil}: off by {err}");
        let w = p.graph.init(p.graph.value_by_name("b.w").unwrap()).unwrap();
        assert_eq!(w.shape(), &[2, 2, 3, 3]);
        crate::ir::verify(&p.graph).unwrap();
    }
}

/// `x[2,2,5,5] → Conv a (1×1, bias; filter 2 = filter 0 + 2·filter 1, bias 1) → Conv b
/// (1×1, no bias) → BatchNormalization → Add x`.
fn residual_block() -> Model {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[2, 2, 5, 5]);
    let aw = g.add_initializer(
        "a.w",
        Tensor::from_f32(vec![3, 2, 1, 1], &[1.0, -0.5, 0.25, 1.0, 1.5, 1.5]),
    );
    let ab = g.add_initializer("a.b", Tensor::from_f32(vec![3], &[0.0, 0.0, 1.0]));
    let a = g.add_node(
        "a",
        "Conv",
        &[Some(x), Some(aw), Some(ab)],
        &["a.y"],
        vec![],
    );
    let ay = g.node(a).outputs[0];
    let bw = g.add_initializer("b.w", Tensor::from_f32(vec![2, 3, 1, 1], &normal(6, 11)));
    let b = g.add_node("b", "Conv", &[ay, Some(bw)], &["b.y"], vec![]);
    let mut ins = vec![g.node(b).outputs[0]];
    for (name, v) in [
        ("s", [2.0, -0.5]),
        ("t", [0.1, 0.3]),
        ("m", [0.2, -1.0]),
        ("v", [4.0, 0.25]),
    ] {
        ins.push(Some(g.add_initializer(name, Tensor::from_f32(vec![2], &v))));
    }
    let bn = g.add_node("bn", "BatchNormalization", &ins, &["bn.y"], vec![]);
    let add = g.add_node(
        "add",
        "Add",
        &[g.node(bn).outputs[0], Some(x)],
        &["y"],
        vec![],
    );
    g.outputs.push(g.node(add).outputs[0].unwrap());
    model(g, 13)
}

#[test]
fn an_intercept_and_a_residual_target_recover_a_block_exactly() {
    let m = residual_block();
    let (p, plan) = prune_steps(&m, &[("a", &[2])]);
    let x = Tensor::from_f32(vec![2, 2, 5, 5], &normal(100, 42));
    let want = run(&m, &x);
    let b = batches(&[2, 2, 5, 5], 2);
    let with = |intercept: bool, residual: bool| {
        let mut q = p.clone();
        let s = CompensateOptions {
            lambda: 1e-9,
            intercept,
            residual,
            ..Default::default()
        };
        let (rt, ro) = (BackendKind::Tract, RuntimeOptions::default());
        compensate(&mut q, &m, &plan, &b, rt, &ro, &s, &mut |_, _| {}).unwrap();
        crate::ir::verify(&q.graph).unwrap();
        max_diff(&run(&q, &x), &want)
    };
    // b's target through the BatchNormalization and the Add.
    let g = &p.graph;
    let bn = g.node_ids().find(|&n| g.node(n).name == "b").unwrap();
    let Some(Target::Residual { scale, shift, .. }) = residual_target(&p, &m, bn, 2) else {
        panic!("no residual target");
    };
    assert!(
        (scale[0] - 2.0 / (4.0f64 + 1e-5).sqrt()).abs() < 1e-6,
        "{scale:?}"
    );
    assert!(
        (shift[1] - (0.3 + (-0.5) / (0.25f64 + 1e-5).sqrt())).abs() < 1e-6,
        "{shift:?}"
    );
    // Statistics changed in the pruned model (as recalibration would): a node target is
    // the original's normalised output pulled back through the new statistics.
    let mut recal = p.clone();
    for (name, v) in [("m", [0.7, 0.1]), ("v", [1.0, 2.0])] {
        let id = recal.graph.value_by_name(name).unwrap();
        recal.graph.set_init(id, Tensor::from_f32(vec![2], &v));
    }
    let s = CompensateOptions {
        lambda: 1e-9,
        intercept: true,
        ..Default::default()
    };
    let (rt, ro) = (BackendKind::Tract, RuntimeOptions::default());
    compensate(&mut recal, &m, &plan, &b, rt, &ro, &s, &mut |_, _| {}).unwrap();
    let err = max_diff(&run(&recal, &x), &want);
    assert!(err < 1e-4, "recalibrated: off by {err}");
    // b has no bias: the removed channel's constant part is lost without an intercept.
    assert!(with(false, false) > 1e-2);
    for residual in [false, true] {
        let err = with(true, residual);
        assert!(err < 1e-4, "residual {residual}: off by {err}");
    }
}

#[test]
fn the_ridge_pulls_towards_the_inherited_weights() {
    let m = dependent_convs(1);
    let (p, plan) = prune_steps(&m, &[("a", &[2])]);
    let b = batches(&[2, 2, 6, 6], 2);
    let get = |m: &Model| {
        let g = &m.graph;
        g.init(g.value_by_name("b.w").unwrap())
            .unwrap()
            .to_f64_vec()
            .unwrap()
    };
    let w0 = get(&p);
    let dist = |lambda: f64| {
        let mut q = p.clone();
        let r = run_compensate(&mut q, &m, &plan, &b, lambda).unwrap();
        let w = get(&q);
        let d: f64 = w.iter().zip(&w0).map(|(a, b)| (a - b).powi(2)).sum();
        (d, r.residual_after)
    };
    let (near, far) = (dist(1e3), dist(1e-6));
    assert!(near.0 < far.0 * 1e-2, "{near:?} {far:?}");
    assert!(near.1 > far.1, "{near:?} {far:?}");
    // Deterministic.
    assert_eq!(dist(1e-3), dist(1e-3));
}

/// `x[N,4] → a (features 0, 1, and 0 − 1 + 3) → b (2 outputs)`: Gemm (a with bias and
/// transB; b with alpha, beta and a one-value bias) or MatMul.
fn dependent_dense(op: &str) -> Model {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[8, 4]);
    // a's weight as [out, in]: rows f0, f1, f0 - f1.
    let r = [[1.0, 2.0, 0.0, -1.0], [0.5, -1.0, 3.0, 0.0]];
    let mut aw: Vec<f32> = r.concat();
    aw.extend((0..4).map(|i| r[0][i] - r[1][i]));
    let bw = normal(6, 3);
    let out = if op == "Gemm" {
        let aw = g.add_initializer("a.w", Tensor::from_f32(vec![3, 4], &aw));
        let ab = g.add_initializer("a.b", Tensor::from_f32(vec![3], &[1.0, -2.0, 6.0]));
        let a = g.add_node(
            "a",
            "Gemm",
            &[Some(x), Some(aw), Some(ab)],
            &["a.y"],
            vec![attr_int("transB", 1)],
        );
        let ay = g.node(a).outputs[0];
        let bw = g.add_initializer("b.w", Tensor::from_f32(vec![3, 2], &bw));
        let bb = g.add_initializer("b.b", Tensor::from_f32(vec![1], &[0.25]));
        let attrs = vec![attr_float("alpha", 2.0), attr_float("beta", 0.5)];
        let b = g.add_node("b", "Gemm", &[ay, Some(bw), Some(bb)], &["y"], attrs);
        g.node(b).outputs[0]
    } else {
        let t: Vec<f32> = (0..12).map(|k| aw[(k % 3) * 4 + k / 3]).collect();
        let aw = g.add_initializer("a.w", Tensor::from_f32(vec![4, 3], &t));
        let a = g.add_node("a", "MatMul", &[Some(x), Some(aw)], &["a.y"], vec![]);
        let ay = g.node(a).outputs[0];
        let bw = g.add_initializer("b.w", Tensor::from_f32(vec![3, 2], &bw));
        let b = g.add_node("b", "MatMul", &[ay, Some(bw)], &["y"], vec![]);
        g.node(b).outputs[0]
    };
    g.outputs.push(out.unwrap());
    model(g, 13)
}

#[test]
fn gemm_and_matmul_consumers_are_compensated_exactly() {
    for op in ["Gemm", "MatMul"] {
        let m = dependent_dense(op);
        let (mut p, plan) = prune_steps(&m, &[("a", &[2])]);
        let x = Tensor::from_f32(vec![8, 4], &normal(32, 5));
        let want = run(&m, &x);
        assert!(max_diff(&run(&p, &x), &want) > 0.1, "{op}");
        let r = run_compensate(&mut p, &m, &plan, &batches(&[8, 4], 2), 1e-9).unwrap();
        assert_eq!(r.layers, 1, "{op}");
        let err = max_diff(&run(&p, &x), &want);
        assert!(err < 1e-4, "{op}: off by {err}");
        crate::ir::verify(&p.graph).unwrap();
    }
}

#[test]
fn nothing_to_compensate_is_refused() {
    let m = dependent_convs(1);
    let plan = PlanFile::new(fingerprint(&m), PlanMeta::default());
    let mut p = m.clone();
    let e = run_compensate(&mut p, &m, &plan, &batches(&[2, 2, 6, 6], 1), 1e-3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing to compensate"), "{e}");
}

#[test]
fn non_finite_features_are_an_error_naming_the_node() {
    let m = dependent_convs(1);
    let (mut p, plan) = prune_steps(&m, &[("a", &[2])]);
    let mut v = normal(144, 1);
    v[40] = f32::NAN;
    let b = vec![vec![(
        "x".to_string(),
        Tensor::from_f32(vec![2, 2, 6, 6], &v),
    )]];
    let before = p.clone();
    let e = run_compensate(&mut p, &m, &plan, &b, 1e-3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("node 'b'") && e.contains("not finite"), "{e}");
    assert_eq!(fingerprint(&p), fingerprint(&before));
}

#[test]
fn cholesky_solves_a_small_system() {
    // M = [[4, 2], [2, 3]], b = [2, 1] → x = [0.5, 0].
    let mut a = vec![4.0, 2.0, 2.0, 3.0];
    cholesky(&mut a, 2).unwrap();
    let mut b = vec![2.0, 1.0];
    solve_cholesky(&a, 2, &mut b);
    assert!((b[0] - 0.5).abs() < 1e-12 && b[1].abs() < 1e-12, "{b:?}");
    let mut bad = vec![1.0, 2.0, 2.0, 1.0];
    assert_eq!(cholesky(&mut bad, 2), Err(1));
}
