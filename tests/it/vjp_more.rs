//! Backward rules of PRelu, Elu, Selu, Celu, Softplus, Softsign, Erf, Gelu, Pow, Max, Min,
//! Mean, the reductions (Max, Min, Prod, L1, L2, SumSquare, LogSumExp, and the noop/input forms
//! of Sum and Mean), GlobalMaxPool and negative-step Slice, checked against central finite
//! differences run by ONNX Runtime ([`Net::check`]) on random shapes and values, and the tie and
//! domain conventions checked exactly ([`grads_at`]).
//!
//! Float64 (step 1e-4, tolerance 1e-6) where ONNX Runtime's CPU provider runs the op in
//! float64: PRelu (opset 16), Gelu `approximate="tanh"`, Pow, Max, Min, the reductions, Slice.
//! Float32 (step 1e-2) for Elu, Selu, Celu, Softplus, Softsign, Erf, Gelu `"none"` (its Erf),
//! Mean and GlobalMaxPool, which it runs in float only: tolerance 5e-3 for the smooth
//! activations (float32 rounding of the loss over a step of 1e-2 gives up to about 2e-3),
//! 1e-2 (as the other float32 checks) for Mean and GlobalMaxPool. Inputs stay away
//! from kinks (at least 0.1 from 0) and ties (values drawn without repetition from a grid
//! spaced far wider than twice the step).

use crate::common;

use common::grad_net::{shape, Net};
use lopper::analysis::infer_shapes;
use lopper::ir::graph::{attr_float, attr_int, attr_ints};
use lopper::ir::{DType, Tensor, ValueId};
use lopper::onnx::proto::AttributeProto;
use lopper::runtime::{self, BackendKind};

/// `n` values spread evenly over `[lo, hi)` (one per cell of a grid of `n`), shuffled.
fn distinct(net: &mut Net, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n)
        .map(|i| lo + (hi - lo) * (i as f64 + 0.5) / n as f64)
        .collect();
    for i in (1..n).rev() {
        let j = (net.u() * (i + 1) as f64) as usize % (i + 1);
        v.swap(i, j);
    }
    v
}

/// Graph inputs of `shapes` holding distinct values together (no two equal across inputs).
fn distinct_inputs(net: &mut Net, shapes: &[&[usize]], lo: f64, hi: f64) -> Vec<ValueId> {
    let sizes: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
    let all = distinct(net, sizes.iter().sum(), lo, hi);
    let mut at = 0;
    let mut out = Vec::new();
    for (k, s) in shapes.iter().enumerate() {
        out.push(net.input_vals(&format!("x{k}"), s, &all[at..at + sizes[k]]));
        at += sizes[k];
    }
    out
}

/// A graph input with |x| uniform in `[lo, hi)`, signs alternating.
fn signed(net: &mut Net, name: &str, shape: &[usize], lo: f64, hi: f64) -> ValueId {
    let n: usize = shape.iter().product();
    let vals: Vec<f64> = (0..n)
        .map(|i| {
            let m = lo + (hi - lo) * net.u();
            if i % 2 == 0 {
                m
            } else {
                -m
            }
        })
        .collect();
    net.input_vals(name, shape, &vals)
}

/// The gradients of `Σ out` with respect to `wrt` (graph inputs), computed by the compiled
/// backward graph in ONNX Runtime at the net's feed.
fn grads_at(net: Net, out: ValueId, wrt: &[ValueId]) -> Vec<Vec<f64>> {
    let (opset, dtype) = (net.opset, net.dtype);
    let mut net = net;
    let loss = net.node("ReduceSum", &[out], vec![attr_int("keepdims", 0)]);
    let (mut model, feed) = net.model(loss);
    let shapes = infer_shapes(&model).unwrap();
    let grads = lopper::train::gradients(&mut model.graph, &shapes, opset, loss, wrt).unwrap();
    let mut n = Net::new(0, dtype, 0);
    n.g = model.graph;
    for (k, (g, x)) in grads.iter().zip(wrt).enumerate() {
        let g = g.unwrap();
        let dims: Vec<usize> = shapes
            .get(*x)
            .and_then(|f| f.shape.as_ref())
            .unwrap()
            .iter()
            .map(|d| d.known().unwrap())
            .collect();
        n.declare(g, &format!("grad{k}"), dtype, &dims);
        n.g.outputs.push(g);
    }
    model.graph = n.g;
    let dir = lopper::temp_dir::TempDir::new("vjp-more").unwrap();
    let path = dir.path().join("m.onnx");
    model.save(&path, &Default::default()).unwrap();
    let mut s = runtime::load(BackendKind::Ort, &path).unwrap();
    let res = s.run(&feed).unwrap();
    res[1..]
        .iter()
        .map(|(_, t)| t.to_f64_vec().unwrap())
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-6, "{what}[{i}]: {got:?} vs {want:?}");
    }
}

fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        s: Some(v.as_bytes().to_vec().into()),
        r#type: Some(3),
        ..Default::default()
    }
}

#[test]
fn prelu_and_tanh_gelu_float64() {
    if !common::require_ort() {
        return;
    }
    // PRelu: per-channel [C,1,1], a trailing-axis slope, a full-shape slope (opset 16 runs
    // in float64); x and the slope both differentiated.
    let cases: [(&[usize], &[usize]); 3] = [
        (&[2, 3, 4, 5], &[3, 1, 1]),
        (&[2, 3, 4], &[4]),
        (&[3, 5], &[3, 5]),
    ];
    for (k, (xs, ss)) in cases.into_iter().enumerate() {
        let mut net = Net::new(16, DType::F64, 200 + k as u64);
        let x = net.input_away0("x", xs);
        let slope = net.input("slope", ss, 0.05, 0.6);
        let y = net.node("PRelu", &[x, slope], vec![]);
        net.check(y, &format!("PRelu x {xs:?} slope {ss:?}"));
    }
    // Gelu (opset 20), tanh approximation.
    let mut net = Net::new(20, DType::F64, 210);
    let s = shape(&mut net, 3);
    let x = net.input("x", &s, -3.0, 3.0);
    let y = net.node("Gelu", &[x], vec![attr_s("approximate", "tanh")]);
    net.check(y, &format!("Gelu tanh {s:?}"));
}

#[test]
fn smooth_activations_float32() {
    if !common::require_ort() {
        return;
    }
    type Build = fn(&mut Net, &[usize]) -> ValueId;
    let cases: Vec<(&str, i64, Build)> = vec![
        ("Elu(0.7)", 13, |n, s| {
            let x = signed(n, "x", s, 0.1, 2.0);
            n.node("Elu", &[x], vec![attr_float("alpha", 0.7)])
        }),
        ("Elu", 13, |n, s| {
            let x = signed(n, "x", s, 0.1, 2.0);
            n.node("Elu", &[x], vec![])
        }),
        ("Selu", 13, |n, s| {
            let x = signed(n, "x", s, 0.1, 2.0);
            n.node("Selu", &[x], vec![])
        }),
        ("Selu(1.5, 1.2)", 13, |n, s| {
            let x = signed(n, "x", s, 0.1, 2.0);
            n.node(
                "Selu",
                &[x],
                vec![attr_float("alpha", 1.5), attr_float("gamma", 1.2)],
            )
        }),
        ("Celu(1.3)", 13, |n, s| {
            let x = signed(n, "x", s, 0.1, 2.0);
            n.node("Celu", &[x], vec![attr_float("alpha", 1.3)])
        }),
        ("Softplus", 13, |n, s| {
            let x = n.input("x", s, -3.0, 3.0);
            n.node("Softplus", &[x], vec![])
        }),
        ("Softsign", 13, |n, s| {
            let x = signed(n, "x", s, 0.1, 3.0);
            n.node("Softsign", &[x], vec![])
        }),
        ("Erf", 13, |n, s| {
            let x = n.input("x", s, -2.0, 2.0);
            n.node("Erf", &[x], vec![])
        }),
        ("Gelu none", 20, |n, s| {
            let x = n.input("x", s, -3.0, 3.0);
            n.node("Gelu", &[x], vec![attr_s("approximate", "none")])
        }),
        ("Gelu default", 20, |n, s| {
            let x = n.input("x", s, -3.0, 3.0);
            n.node("Gelu", &[x], vec![])
        }),
        ("Gelu tanh", 20, |n, s| {
            let x = n.input("x", s, -3.0, 3.0);
            n.node("Gelu", &[x], vec![attr_s("approximate", "tanh")])
        }),
        // GELU as PyTorch exports it below opset 20: x·(1 + erf(x/√2))·0.5.
        ("GELU via Erf", 13, |n, s| {
            let x = n.input("x", s, -3.0, 3.0);
            let r2 = n.constant("sqrt2", &[], &[std::f64::consts::SQRT_2]);
            let one = n.constant("one", &[], &[1.0]);
            let half = n.constant("half", &[], &[0.5]);
            let d = n.node("Div", &[x, r2], vec![]);
            let e = n.node("Erf", &[d], vec![]);
            let a = n.node("Add", &[e, one], vec![]);
            let m = n.node("Mul", &[x, a], vec![]);
            n.node("Mul", &[m, half], vec![])
        }),
    ];
    let mut net0 = Net::new(13, DType::F32, 8);
    for (k, (what, opset, build)) in cases.into_iter().enumerate() {
        let mut net = Net::new(opset, DType::F32, 300 + k as u64);
        let s = shape(&mut net0, 3);
        let y = build(&mut net, &s);
        net.check_with(y, &format!("{what} {s:?}"), 5e-3, 1e-2);
    }
}

/// The float32 rules against their closed forms evaluated in float64 (tighter than the
/// float32 finite differences can be): `Σ y`'s gradient at fixed points, within 1e-5 relative
/// (absolute below 1, where float32 cancellation in the rule dominates).
#[test]
fn smooth_activations_match_closed_forms() {
    if !common::require_ort() {
        return;
    }
    let xs: Vec<f64> = (0..16).map(|i| -3.2 + 0.41 * i as f64 + 0.013).collect();
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let (sa, sg) = (1.673_263_242_354_377_3, 1.050_700_987_355_480_5);
    type Case = (&'static str, i64, Vec<AttributeProto>, fn(f64) -> f64);
    let cases: Vec<Case> = vec![
        ("Elu", 13, vec![attr_float("alpha", 0.5)], |x| {
            if x > 0.0 {
                1.0
            } else {
                0.5 * x.exp()
            }
        }),
        ("Celu", 13, vec![attr_float("alpha", 2.0)], |x| {
            if x > 0.0 {
                1.0
            } else {
                (x / 2.0).exp()
            }
        }),
        ("Softsign", 13, vec![], |x| 1.0 / (1.0 + x.abs()).powi(2)),
        ("Erf", 13, vec![], |x| {
            std::f64::consts::FRAC_2_SQRT_PI * (-x * x).exp()
        }),
        ("Gelu", 20, vec![attr_s("approximate", "tanh")], |x| {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let t = (c * (x + 0.044715 * x * x * x)).tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x)
        }),
    ];
    for (op, opset, attrs, d) in cases {
        let mut net = Net::new(opset, DType::F32, 0);
        let x = net.input_vals("x", &[16], &xs);
        let y = net.node(op, &[x], attrs);
        let g = grads_at(net, y, &[x]);
        let worst = xs
            .iter()
            .zip(&g[0])
            .map(|(&x, &gv)| (gv - d(x)).abs() / d(x).abs().max(1.0))
            .fold(0.0, f64::max);
        println!("{op}: closed-form rel error {worst:.2e}");
        assert!(worst < 1e-5, "{op}: {:?}", g[0]);
    }
    // Selu and Softplus need their constants and sigmoid.
    let mut net = Net::new(13, DType::F32, 0);
    let x = net.input_vals("x", &[16], &xs);
    let y = net.node("Selu", &[x], vec![]);
    let g = grads_at(net, y, &[x]);
    for (&x, &gv) in xs.iter().zip(&g[0]) {
        let want = if x > 0.0 { sg } else { sg * sa * x.exp() };
        assert!((gv - want).abs() < 1e-5 * want.abs().max(1.0), "Selu {x}");
    }
    let mut net = Net::new(13, DType::F32, 0);
    let x = net.input_vals("x", &[16], &xs);
    let y = net.node("Softplus", &[x], vec![]);
    let g = grads_at(net, y, &[x]);
    for (&x, &gv) in xs.iter().zip(&g[0]) {
        assert!((gv - sig(x)).abs() < 1e-5, "Softplus {x}");
    }
}

#[test]
fn pow_float64() {
    if !common::require_ort() {
        return;
    }
    // Both operands differentiated, broadcasting either way; bases in (0, ∞).
    let cases: [(&[usize], &[usize]); 3] = [
        (&[2, 3, 4], &[3, 1]),
        (&[4], &[2, 3, 4]),
        (&[2, 1, 3], &[2, 3]),
    ];
    for (k, (a, b)) in cases.into_iter().enumerate() {
        let mut net = Net::new(15, DType::F64, 400 + k as u64);
        let x = net.input("a", a, 0.5, 2.0);
        let e = net.input("b", b, -1.5, 2.5);
        let y = net.node("Pow", &[x, e], vec![]);
        net.check(y, &format!("Pow {a:?} {b:?}"));
    }
    // Constant exponents (float and int64) with bases of either sign: the base only.
    let mut net = Net::new(15, DType::F64, 410);
    let x = signed(&mut net, "a", &[3, 4], 0.2, 2.0);
    let e = net.constant("e", &[], &[3.0]);
    let y = net.node("Pow", &[x, e], vec![]);
    net.check(y, "Pow(a, 3.0)");
    let mut net = Net::new(15, DType::F64, 411);
    let x = signed(&mut net, "a", &[2, 5], 0.2, 2.0);
    let e = net.g.add_initializer("e", Tensor::from_i64(vec![1], &[2]));
    let y = net.node("Pow", &[x, e], vec![]);
    net.check(y, "Pow(a, int64 2)");
}

#[test]
fn max_min_mean() {
    if !common::require_ort() {
        return;
    }
    let cases: [(&str, &[&[usize]]); 5] = [
        ("Max", &[&[2, 3, 4], &[3, 1], &[4]]),
        ("Max", &[&[3, 4], &[3, 4]]),
        ("Max", &[&[2, 3]]),
        ("Min", &[&[2, 1, 4], &[3, 1]]),
        ("Min", &[&[1], &[2, 3], &[2, 1]]),
    ];
    for (k, (op, shapes)) in cases.into_iter().enumerate() {
        let mut net = Net::new(13, DType::F64, 500 + k as u64);
        let ins = distinct_inputs(&mut net, shapes, -1.0, 1.0);
        let y = net.node(op, &ins, vec![]);
        net.check(y, &format!("{op} {shapes:?}"));
    }
    // Mean: ONNX Runtime has no float64 kernel.
    for (k, shapes) in [&[&[2, 3, 4][..], &[3, 1], &[4]][..], &[&[3, 2]]]
        .into_iter()
        .enumerate()
    {
        let mut net = Net::new(13, DType::F32, 510 + k as u64);
        let ins: Vec<ValueId> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| net.input(&format!("x{i}"), s, -1.0, 1.0))
            .collect();
        let y = net.node("Mean", &ins, vec![]);
        net.check(y, &format!("Mean {shapes:?}"));
    }
}

/// One reduction node on `x` in the form `form` (see [`reductions_float64`]).
fn reduce_node(net: &mut Net, op: &str, x: ValueId, form: &str) -> ValueId {
    // ReduceSum takes its axes as an input from opset 13, the others from 18.
    let input_axes = net.opset >= 18 || (op == "ReduceSum" && net.opset >= 13);
    let with_axes = |net: &mut Net, axes: &[i64], attrs: Vec<AttributeProto>| {
        if input_axes {
            let a = net.ints("axes", axes);
            net.node(op, &[x, a], attrs)
        } else if axes.is_empty() {
            net.node(op, &[x], attrs)
        } else {
            let mut attrs = attrs;
            attrs.push(attr_ints("axes", axes));
            net.node(op, &[x], attrs)
        }
    };
    match form {
        "axes [1], keepdims 0" => with_axes(net, &[1], vec![attr_int("keepdims", 0)]),
        "axes [-1, 0]" => with_axes(net, &[-1, 0], vec![]),
        "all, keepdims 0" => net.node(op, &[x], vec![attr_int("keepdims", 0)]),
        "all" => net.node(op, &[x], vec![]),
        "noop" => with_axes(net, &[], vec![attr_int("noop_with_empty_axes", 1)]),
        _ => unreachable!("{form}"),
    }
}

#[test]
fn reductions_float64() {
    if !common::require_ort() {
        return;
    }
    let ops = [
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL2",
        "ReduceL1",
        "ReduceSumSquare",
        "ReduceLogSumExp",
        "ReduceSum",
        "ReduceMean",
    ];
    let forms = [
        (13, "axes [1], keepdims 0"),
        (18, "axes [1], keepdims 0"),
        (13, "axes [-1, 0]"),
        (18, "axes [-1, 0]"),
        (13, "all, keepdims 0"),
        (18, "all"),
        (18, "noop"),
        (11, "axes [1], keepdims 0"),
    ];
    let mut seed = 600;
    for op in ops {
        for (opset, form) in forms {
            // ReduceSum/ReduceMean forms other than these are checked in vjp_elementwise.
            if matches!(op, "ReduceSum" | "ReduceMean") && !matches!(form, "noop" | "all") {
                continue;
            }
            seed += 1;
            let mut net = Net::new(opset, DType::F64, seed);
            let s = shape(&mut net, 3);
            let x = match op {
                "ReduceMax" | "ReduceMin" => distinct_inputs(&mut net, &[&s], -1.0, 1.0)[0],
                "ReduceProd" => signed(&mut net, "x", &s, 0.6, 1.5),
                "ReduceL1" => net.input_away0("x", &s),
                _ => net.input("x", &s, -2.0, 2.0),
            };
            let y = reduce_node(&mut net, op, x, form);
            net.check(y, &format!("{op} opset {opset} {form} {s:?}"));
        }
    }
    // ReduceProd with zeros: rows with none, one and two zeros, reduced along either axis.
    for (k, axis) in [1i64, 0].into_iter().enumerate() {
        let mut net = Net::new(13, DType::F64, 650 + k as u64);
        let vals = [
            0.7, -1.2, 0.9, 1.3, //
            0.8, 0.0, -1.1, 1.4, //
            0.0, 1.2, 0.0, -0.6,
        ];
        let x = net.input_vals("x", &[3, 4], &vals);
        let y = net.node("ReduceProd", &[x], vec![attr_ints("axes", &[axis])]);
        net.check(y, &format!("ReduceProd with zeros, axis {axis}"));
    }
}

#[test]
fn global_max_pool_float32() {
    if !common::require_ort() {
        return;
    }
    // No float64 kernel. Values spaced 6/n apart (≥ 0.05), far from the step 1e-2.
    for (k, s) in [&[2, 3, 4, 5][..], &[2, 3, 5], &[1, 2, 3, 2, 2]]
        .into_iter()
        .enumerate()
    {
        let mut net = Net::new(13, DType::F32, 700 + k as u64);
        let x = distinct_inputs(&mut net, &[s], -3.0, 3.0)[0];
        let y = net.node("GlobalMaxPool", &[x], vec![]);
        net.check(y, &format!("GlobalMaxPool {s:?}"));
    }
}

#[test]
fn slice_negative_steps() {
    if !common::require_ort() {
        return;
    }
    let m = i64::MIN;
    // (input shape, starts, ends, axes, steps).
    type Case<'a> = (&'a [usize], &'a [i64], &'a [i64], &'a [i64], &'a [i64]);
    let cases: [Case; 6] = [
        // A full reversal.
        (&[6, 3], &[-1], &[m], &[0], &[-1]),
        // Steps −2 and −3 on two axes (5, 3, 1 and 5, 2).
        (&[3, 7, 6], &[5, -1], &[0, m], &[1, 2], &[-2, -3]),
        // Mixed with a positive step and an ascending axis.
        (
            &[4, 5, 6],
            &[3, 1, -2],
            &[m, i64::MAX, 0],
            &[0, 2, 1],
            &[-3, 2, -1],
        ),
        // One element taken by a huge negative step.
        (&[3, 4], &[-1], &[m], &[1], &[m]),
        // A start past the end is clamped; an end inside the axis.
        (&[2, 9], &[20], &[2], &[-1], &[-2]),
        // Reversal that stops early, plus a step-1 axis.
        (&[5, 4], &[3, 1], &[0, 3], &[0, 1], &[-1, 1]),
    ];
    for (k, (s, st, en, ax, sp)) in cases.into_iter().enumerate() {
        let mut net = Net::new(13, DType::F64, 800 + k as u64);
        let x = net.input("x", s, -1.0, 1.0);
        let ins = [
            x,
            net.ints("starts", st),
            net.ints("ends", en),
            net.ints("axes", ax),
            net.ints("steps", sp),
        ];
        let y = net.node("Slice", &ins, vec![]);
        net.check(y, &format!("Slice {s:?} starts {st:?} steps {sp:?}"));
    }
}

/// The conventions at ties and outside the domain, checked exactly on `Σ y`.
#[test]
fn ties_split_evenly_and_domains() {
    if !common::require_ort() {
        return;
    }
    // Max(a, b, c): a = b > c at positions 0 and 1, a alone at 2, c at 3.
    let mut net = Net::new(13, DType::F64, 900);
    let a = net.input_vals("a", &[4], &[1.0, 2.0, 3.0, 0.0]);
    let b = net.input_vals("b", &[4], &[1.0, 2.0, 1.0, 0.0]);
    let c = net.input_vals("c", &[4], &[0.0, -1.0, 0.0, 5.0]);
    let y = net.node("Max", &[a, b, c], vec![]);
    let g = grads_at(net, y, &[a, b, c]);
    assert_close("Max da", &g[0], &[0.5, 0.5, 1.0, 0.0]);
    assert_close("Max db", &g[1], &[0.5, 0.5, 0.0, 0.0]);
    assert_close("Max dc", &g[2], &[0.0, 0.0, 0.0, 1.0]);
    // Min with broadcasting: the scalar ties with two elements, taking both halves.
    let mut net = Net::new(13, DType::F64, 901);
    let a = net.input_vals("a", &[3], &[1.0, 2.0, 1.0]);
    let b = net.input_vals("b", &[1], &[1.0]);
    let y = net.node("Min", &[a, b], vec![]);
    let g = grads_at(net, y, &[a, b]);
    assert_close("Min da", &g[0], &[0.5, 0.0, 0.5]);
    assert_close("Min db", &g[1], &[2.0]);
    // ReduceMax / ReduceMin rows with ties.
    for (op, want) in [
        ("ReduceMax", [0.5, 0.5, 0.0, 0.5, 0.0, 0.5]),
        ("ReduceMin", [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]),
    ] {
        let mut net = Net::new(13, DType::F64, 902);
        let x = net.input_vals("x", &[2, 3], &[1.0, 1.0, 0.0, 2.0, 0.0, 2.0]);
        let y = net.node(op, &[x], vec![attr_ints("axes", &[1])]);
        let g = grads_at(net, y, &[x]);
        assert_close(op, &g[0], &want);
    }
    // GlobalMaxPool ties (float32).
    let mut net = Net::new(13, DType::F32, 903);
    let x = net.input_vals(
        "x",
        &[1, 2, 2, 2],
        &[1.0, 3.0, 3.0, 0.0, 5.0, 4.0, 3.0, 2.0],
    );
    let y = net.node("GlobalMaxPool", &[x], vec![]);
    let g = grads_at(net, y, &[x]);
    assert_close(
        "GlobalMaxPool",
        &g[0],
        &[0.0, 0.5, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0],
    );
    // Pow's exponent gradient is 0 where the base is ≤ 0; the base's is b·a^(b−1).
    let mut net = Net::new(15, DType::F64, 904);
    let a = net.input_vals("a", &[3], &[-2.0, 0.0, 2.0]);
    let b = net.input_vals("b", &[3], &[2.0, 2.0, 2.0]);
    let y = net.node("Pow", &[a, b], vec![]);
    let g = grads_at(net, y, &[a, b]);
    assert_close("Pow da", &g[0], &[-4.0, 0.0, 4.0]);
    assert_close("Pow db", &g[1], &[0.0, 0.0, 4.0 * 2f64.ln()]);
    // ReduceL2 of an all-zero group: 0, not NaN.
    let mut net = Net::new(13, DType::F64, 905);
    let x = net.input_vals("x", &[2, 2], &[0.0, 0.0, 3.0, -4.0]);
    let y = net.node("ReduceL2", &[x], vec![attr_ints("axes", &[1])]);
    let g = grads_at(net, y, &[x]);
    assert_close("ReduceL2", &g[0], &[0.0, 0.0, 0.6, -0.8]);
    // ReduceProd with one and two zeros in a group.
    let mut net = Net::new(13, DType::F64, 906);
    let x = net.input_vals("x", &[2, 3], &[2.0, 0.0, 3.0, 0.0, 4.0, 0.0]);
    let y = net.node("ReduceProd", &[x], vec![attr_ints("axes", &[1])]);
    let g = grads_at(net, y, &[x]);
    assert_close("ReduceProd", &g[0], &[0.0, 6.0, 0.0, 0.0, 0.0, 0.0]);
}
