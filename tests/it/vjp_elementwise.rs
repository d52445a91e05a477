//! Backward rules of the element-wise, shape and normalisation ops, checked against central
//! finite differences run by ONNX Runtime ([`Net::check`]). Float64 where ORT has double
//! kernels (tolerance 1e-6 relative); float32 for LeakyRelu, HardSigmoid, HardSwish and
//! opset-10 Clip, which ORT runs in float only (eps 1e-2, tolerance 1e-2). Inputs of
//! piecewise-linear ops stay at least 0.1 away from their kinks, more than the step. More
//! rules (activations, Pow, Max/Min/Mean, reductions, GlobalMaxPool, negative-step Slice) are
//! checked in `vjp_more.rs`.

use crate::common;

use common::grad_net::{shape, Net};
use lopper::analysis::infer_shapes;
use lopper::ir::graph::{attr_float, attr_int, attr_ints};
use lopper::ir::{DType, Tensor, ValueId};
use lopper::onnx::proto::AttributeProto;
use lopper::runtime::{self, BackendKind};

#[test]
fn unary_float64() {
    if !common::require_ort() {
        return;
    }
    type Build = fn(&mut Net, &[usize]) -> ValueId;
    let cases: Vec<(&str, Build)> = vec![
        ("Relu", |n, s| {
            let x = n.input_away0("x", s);
            n.node("Relu", &[x], vec![])
        }),
        ("Sigmoid", |n, s| {
            let x = n.input("x", s, -3.0, 3.0);
            n.node("Sigmoid", &[x], vec![])
        }),
        ("Tanh", |n, s| {
            let x = n.input("x", s, -2.0, 2.0);
            n.node("Tanh", &[x], vec![])
        }),
        ("Neg", |n, s| {
            let x = n.input("x", s, -2.0, 2.0);
            n.node("Neg", &[x], vec![])
        }),
        ("Exp", |n, s| {
            let x = n.input("x", s, -2.0, 2.0);
            n.node("Exp", &[x], vec![])
        }),
        ("Log", |n, s| {
            let x = n.input("x", s, 0.5, 3.0);
            n.node("Log", &[x], vec![])
        }),
        ("Sqrt", |n, s| {
            let x = n.input("x", s, 0.5, 3.0);
            n.node("Sqrt", &[x], vec![])
        }),
        ("Reciprocal", |n, s| {
            let x = n.input("x", s, 0.5, 2.0);
            n.node("Reciprocal", &[x], vec![])
        }),
        ("Abs", |n, s| {
            let x = n.input_away0("x", s);
            n.node("Abs", &[x], vec![])
        }),
        ("Clip(-0.5, 0.5)", |n, s| {
            let k = s.iter().product::<usize>();
            let vals: Vec<f64> = (0..k).map(|i| [-0.9, -0.3, 0.2, 0.8][i % 4]).collect();
            let x = n.input_vals("x", s, &vals);
            let lo = n.constant("lo", &[], &[-0.5]);
            let hi = n.constant("hi", &[], &[0.5]);
            n.node("Clip", &[x, lo, hi], vec![])
        }),
        ("Relu6 = Clip(0, 6)", |n, s| {
            let k = s.iter().product::<usize>();
            let vals: Vec<f64> = (0..k).map(|i| [-2.0, 0.3, 3.0, 7.5][i % 4]).collect();
            let x = n.input_vals("x", s, &vals);
            let lo = n.constant("lo", &[], &[0.0]);
            let hi = n.constant("hi", &[], &[6.0]);
            n.node("Clip", &[x, lo, hi], vec![])
        }),
        ("Clip(max only)", |n, s| {
            let x = n.input_away0("x", s);
            let hi = n.constant("hi", &[], &[0.0]);
            n.node_n("Clip", &[Some(x), None, Some(hi)], 1, vec![])[0]
        }),
    ];
    let mut net0 = Net::new(13, DType::F64, 7);
    for (k, (what, build)) in cases.into_iter().enumerate() {
        let mut net = Net::new(13, DType::F64, 100 + k as u64);
        let s = shape(&mut net0, 3);
        let y = build(&mut net, &s);
        net.check(y, &format!("{what} {s:?}"));
    }
}

#[test]
fn unary_float32() {
    if !common::require_ort() {
        return;
    }
    // LeakyRelu.
    let mut net = Net::new(13, DType::F32, 1);
    let x = net.input_away0("x", &[2, 3, 4]);
    let y = net.node("LeakyRelu", &[x], vec![attr_float("alpha", 0.2)]);
    net.check(y, "LeakyRelu");
    // HardSigmoid: alpha·x + beta in (0, 1) for |x| < 2.5; values on both sides of ±2.5.
    let mut net = Net::new(13, DType::F32, 2);
    let vals: Vec<f64> = (0..24)
        .map(|i| [-4.0, -1.3, 0.4, 1.9, 3.5][i % 5])
        .collect();
    let x = net.input_vals("x", &[2, 3, 4], &vals);
    let y = net.node(
        "HardSigmoid",
        &[x],
        vec![attr_float("alpha", 0.2), attr_float("beta", 0.5)],
    );
    net.check(y, "HardSigmoid");
    // HardSwish: kinks at ±3.
    let mut net = Net::new(14, DType::F32, 3);
    let vals: Vec<f64> = (0..24)
        .map(|i| [-4.5, -2.2, -0.7, 0.6, 2.4, 4.1][i % 6])
        .collect();
    let x = net.input_vals("x", &[4, 6], &vals);
    let y = net.node("HardSwish", &[x], vec![]);
    net.check(y, "HardSwish");
    // Opset-10 Clip: bounds are attributes.
    let mut net = Net::new(10, DType::F32, 4);
    let x = net.input_away0("x", &[3, 5]);
    let y = net.node(
        "Clip",
        &[x],
        vec![attr_float("min", -0.55), attr_float("max", 0.35)],
    );
    net.check(y, "Clip opset 10");
}

#[test]
fn binary_broadcasting() {
    if !common::require_ort() {
        return;
    }
    let cases: [(&str, &[usize], &[usize]); 8] = [
        ("Add", &[2, 3, 4, 5], &[3, 1, 1]),
        ("Add", &[3, 1], &[1, 4]),
        ("Sub", &[2, 3, 4], &[4]),
        ("Sub", &[1], &[2, 3]),
        ("Mul", &[1], &[2, 3]),
        ("Mul", &[2, 1, 4], &[3, 1]),
        ("Div", &[2, 3], &[2, 1]),
        ("Div", &[1, 3], &[4, 1]),
    ];
    for (k, (op, a, b)) in cases.into_iter().enumerate() {
        let mut net = Net::new(13, DType::F64, 10 + k as u64);
        let x = net.input("a", a, -2.0, 2.0);
        // Divisors away from 0.
        let y = net.input("b", b, 0.5, 2.0);
        let z = net.node(op, &[x, y], vec![]);
        net.check(z, &format!("{op} {a:?} {b:?}"));
    }
    // Variadic Sum with broadcasting, and a single-input Sum.
    let mut net = Net::new(13, DType::F64, 20);
    let a = net.input("a", &[2, 3, 4], -1.0, 1.0);
    let b = net.input("b", &[3, 1], -1.0, 1.0);
    let c = net.input("c", &[4], -1.0, 1.0);
    let s = net.node("Sum", &[a, b, c], vec![]);
    net.check(s, "Sum [2,3,4] [3,1] [4]");
    let mut net = Net::new(13, DType::F64, 21);
    let a = net.input("a", &[3, 2], -1.0, 1.0);
    let s = net.node("Sum", &[a], vec![]);
    net.check(s, "Sum of one");
}

#[test]
fn shared_values_accumulate() {
    if !common::require_ort() {
        return;
    }
    // SiLU: x·Sigmoid(x), x used twice.
    let mut net = Net::new(13, DType::F64, 30);
    let x = net.input("x", &[2, 5], -3.0, 3.0);
    let s = net.node("Sigmoid", &[x], vec![]);
    let y = net.node("Mul", &[x, s], vec![]);
    net.check(y, "SiLU");
    // Residual: y = Relu(x + Tanh(x·w) · w) with x and w each feeding two consumers.
    let mut net = Net::new(13, DType::F64, 31);
    let x = net.input("x", &[2, 3, 4], -1.0, 1.0);
    let w = net.input("w", &[4], 0.5, 1.5);
    let h = net.node("Mul", &[x, w], vec![]);
    let t = net.node("Tanh", &[h], vec![]);
    let tw = net.node("Mul", &[t, w], vec![]);
    let r = net.node("Add", &[x, tw], vec![]);
    // Shift so no sum sits at the Relu kink: the residual adds to x of either sign.
    let sh = net.constant("shift", &[], &[0.05]);
    let r2 = net.node("Add", &[r, sh], vec![]);
    let y = net.node("Exp", &[r2], vec![]);
    net.check(y, "residual");
}

#[test]
fn concat_split_slice_pad() {
    if !common::require_ort() {
        return;
    }
    // Concat of three parts along a random axis.
    for (k, axis) in [0i64, 1, -1].into_iter().enumerate() {
        let mut net = Net::new(13, DType::F64, 40 + k as u64);
        let base = shape(&mut net, 3);
        let ax = axis.rem_euclid(3) as usize;
        let mut parts = Vec::new();
        for (i, len) in [1usize, 3, 2].into_iter().enumerate() {
            let mut s = base.clone();
            s[ax] = len;
            parts.push(net.input(&format!("p{i}"), &s, -1.0, 1.0));
        }
        let y = net.node("Concat", &parts, vec![attr_int("axis", axis)]);
        net.check(y, &format!("Concat axis {axis} {base:?}"));
    }
    // Split (opset 13, sizes input), the middle output unused; opset 11 (attribute).
    for opset in [13, 11] {
        let mut net = Net::new(opset, DType::F64, 50);
        let x = net.input("x", &[2, 7, 3], -1.0, 1.0);
        let outs = if opset >= 13 {
            let s = net.ints("sizes", &[3, 1, 3]);
            net.node_n("Split", &[Some(x), Some(s)], 3, vec![attr_int("axis", 1)])
        } else {
            net.node_n(
                "Split",
                &[Some(x)],
                3,
                vec![attr_int("axis", 1), attr_ints("split", &[3, 1, 3])],
            )
        };
        let y = net.node("Mul", &[outs[0], outs[2]], vec![]);
        net.check(y, &format!("Split opset {opset}"));
    }
    // Slice: negative start, huge end, two axes; opset 9 attributes.
    let mut net = Net::new(13, DType::F64, 60);
    let x = net.input("x", &[3, 6, 5], -1.0, 1.0);
    let st = net.ints("starts", &[-4, 1]);
    let en = net.ints("ends", &[i64::MAX, 4]);
    let ax = net.ints("axes", &[1, 2]);
    let y = net.node("Slice", &[x, st, en, ax], vec![]);
    net.check(y, "Slice");
    // Strided slices: ResNet option-A shortcuts (x[:, :, ::2, ::2]), a step 3 that ends early.
    let mut net = Net::new(13, DType::F64, 62);
    let x = net.input("x", &[2, 3, 7, 6], -1.0, 1.0);
    let st = net.ints("starts", &[0, 1, 1]);
    let en = net.ints("ends", &[i64::MAX, i64::MAX, 5]);
    let ax = net.ints("axes", &[2, 3, 1]);
    let sp = net.ints("steps", &[2, 3, 1]);
    let y = net.node("Slice", &[x, st, en, ax, sp], vec![]);
    net.check(y, "Slice steps 2 and 3");
    let mut net = Net::new(9, DType::F64, 61);
    let x = net.input("x", &[4, 5], -1.0, 1.0);
    let y = net.node(
        "Slice",
        &[x],
        vec![
            attr_ints("starts", &[1, 0]),
            attr_ints("ends", &[3, 2]),
            attr_ints("axes", &[0, 1]),
        ],
    );
    net.check(y, "Slice opset 9");
    // Pad: positive pads, and a crop (negative pad) mixed in.
    let mut net = Net::new(13, DType::F64, 70);
    let x = net.input("x", &[2, 3, 4], -1.0, 1.0);
    let p = net.ints("pads", &[0, 1, 2, 1, 0, 3]);
    let y = net.node("Pad", &[x, p], vec![]);
    net.check(y, "Pad");
    let mut net = Net::new(13, DType::F64, 71);
    let x = net.input("x", &[2, 5, 4], -1.0, 1.0);
    let p = net.ints("pads", &[0, -2, 1, 0, 1, -1]);
    let y = net.node("Pad", &[x, p], vec![]);
    net.check(y, "Pad with crop");
}

#[test]
fn reshapes_and_transpose() {
    if !common::require_ort() {
        return;
    }
    let mut net = Net::new(13, DType::F64, 80);
    let x = net.input("x", &[2, 3, 4], -1.0, 1.0);
    let s = net.ints("shape", &[4, -1]);
    let r = net.node("Reshape", &[x, s], vec![]);
    let y = net.node("Tanh", &[r], vec![]);
    net.check(y, "Reshape");
    let mut net = Net::new(13, DType::F64, 81);
    let x = net.input("x", &[2, 3, 2, 2], -1.0, 1.0);
    let y = net.node("Flatten", &[x], vec![attr_int("axis", 2)]);
    net.check(y, "Flatten");
    let mut net = Net::new(13, DType::F64, 82);
    let x = net.input("x", &[2, 3, 4, 5], -1.0, 1.0);
    let y = net.node("Transpose", &[x], vec![attr_ints("perm", &[2, 0, 3, 1])]);
    net.check(y, "Transpose");
    let mut net = Net::new(13, DType::F64, 83);
    let x = net.input("x", &[2, 1, 3, 1], -1.0, 1.0);
    let a = net.ints("axes", &[1, -1]);
    let y = net.node("Squeeze", &[x, a], vec![]);
    net.check(y, "Squeeze");
    let mut net = Net::new(11, DType::F64, 84);
    let x = net.input("x", &[2, 3], -1.0, 1.0);
    let y = net.node("Unsqueeze", &[x], vec![attr_ints("axes", &[0, 3])]);
    net.check(y, "Unsqueeze opset 11");
    let mut net = Net::new(13, DType::F64, 85);
    let x = net.input("x", &[2, 3], -1.0, 1.0);
    let i = net.node("Identity", &[x], vec![]);
    let d = net.node("Dropout", &[i], vec![]);
    let y = net.node("Exp", &[d], vec![]);
    net.check(y, "Identity, inference Dropout");
}

#[test]
fn reductions_and_softmax() {
    if !common::require_ort() {
        return;
    }
    // ReduceMean: attribute axes (opset 13), input axes (opset 18), keepdims 0.
    let mut net = Net::new(13, DType::F64, 90);
    let x = net.input("x", &[2, 3, 4, 5], -1.0, 1.0);
    let y = net.node(
        "ReduceMean",
        &[x],
        vec![attr_ints("axes", &[2, 3]), attr_int("keepdims", 0)],
    );
    net.check(y, "ReduceMean axes [2,3] keepdims 0");
    let mut net = Net::new(18, DType::F64, 91);
    let x = net.input("x", &[2, 3, 4], -1.0, 1.0);
    let a = net.ints("axes", &[-2]);
    let y = net.node("ReduceMean", &[x, a], vec![]);
    net.check(y, "ReduceMean opset 18");
    // ReduceSum: axes input (opset 13), no axes (all), opset 11 attribute.
    let mut net = Net::new(13, DType::F64, 92);
    let x = net.input("x", &[3, 4, 2], -1.0, 1.0);
    let a = net.ints("axes", &[0, 2]);
    let y = net.node("ReduceSum", &[x, a], vec![attr_int("keepdims", 0)]);
    net.check(y, "ReduceSum axes [0,2] keepdims 0");
    let mut net = Net::new(13, DType::F64, 93);
    let x = net.input("x", &[3, 4], -1.0, 1.0);
    let y = net.node("ReduceSum", &[x], vec![attr_int("keepdims", 0)]);
    net.check(y, "ReduceSum all");
    let mut net = Net::new(11, DType::F64, 94);
    let x = net.input("x", &[3, 4], -1.0, 1.0);
    let y = net.node("ReduceSum", &[x], vec![attr_ints("axes", &[1])]);
    net.check(y, "ReduceSum opset 11");
    // Softmax / LogSoftmax (opset 13), and the coerced-2-D form of opset 11.
    for (op, axis, opset) in [
        ("Softmax", 1, 13),
        ("Softmax", -1, 13),
        ("LogSoftmax", 1, 13),
        ("LogSoftmax", -1, 13),
        ("Softmax", 1, 11),
        ("LogSoftmax", 1, 11),
    ] {
        let mut net = Net::new(opset, DType::F64, 95);
        let x = net.input("x", &[2, 3, 4], -2.0, 2.0);
        let y = net.node(op, &[x], vec![attr_int("axis", axis)]);
        net.check(y, &format!("{op} axis {axis} opset {opset}"));
    }
}

#[test]
fn training_dropout_scales_by_mask() {
    if !common::require_ort() {
        return;
    }
    // loss = Σ Dropout(x); dL/dx = mask / (1 − ratio) = y / x.
    let mut net = Net::new(13, DType::F32, 100);
    let x = net.input("x", &[4, 8], 0.5, 1.5);
    let ratio = net.constant("ratio", &[], &[0.25]);
    let train = net.g.add_initializer(
        "training",
        Tensor::from_raw(DType::Bool, vec![], vec![1u8].into()).unwrap(),
    );
    let outs = net.node_n(
        "Dropout",
        &[Some(x), Some(ratio), Some(train)],
        2,
        vec![attr_int("seed", 3)],
    );
    let loss = net.node("ReduceSum", &[outs[0]], vec![attr_int("keepdims", 0)]);
    let (mut model, feed) = net.model(loss);
    let shapes = infer_shapes(&model).unwrap();
    let g =
        lopper::train::gradients(&mut model.graph, &shapes, 13, loss, &[x]).unwrap()[0].unwrap();
    let mut n = Net::new(0, DType::F32, 0);
    n.g = model.graph;
    n.declare(g, "grad_x", DType::F32, &[4, 8]);
    n.declare(outs[0], "y", DType::F32, &[4, 8]);
    n.g.outputs.push(outs[0]);
    n.g.outputs.push(g);
    model.graph = n.g;
    let dir = lopper::temp_dir::TempDir::new("vjp-dropout").unwrap();
    let path = dir.path().join("m.onnx");
    model.save(&path, &Default::default()).unwrap();
    let mut s = runtime::load(BackendKind::Ort, &path).unwrap();
    let out = s.run(&feed).unwrap();
    let xv = feed[0].1.to_f64_vec().unwrap();
    let y = out[1].1.to_f64_vec().unwrap();
    let gx = out[2].1.to_f64_vec().unwrap();
    let kept = gx.iter().filter(|&&v| v != 0.0).count();
    assert!(
        kept > 0 && kept < gx.len(),
        "mask kept {kept} of {}",
        gx.len()
    );
    for i in 0..xv.len() {
        assert!(
            (gx[i] - y[i] / xv[i]).abs() < 1e-5,
            "{i}: {} vs {}",
            gx[i],
            y[i] / xv[i]
        );
        assert!(gx[i] == 0.0 || (gx[i] - 1.0 / 0.75).abs() < 1e-6);
    }
}

#[test]
fn unsupported_ops_name_the_node() {
    if !common::require_ort() {
        return;
    }
    let mut net = Net::new(13, DType::F64, 110);
    let x = net.input("x", &[2, 3], 0.1, 0.9);
    let f = net.node("Floor", &[x], vec![]);
    let y = net.node("Exp", &[f], vec![]);
    let e = net.check_err(y);
    assert!(
        e.contains("Floor1") && e.contains("no backward rule"),
        "{e}"
    );

    let mut net = Net::new(13, DType::F64, 111);
    let x = net.input("x", &[2, 3], 0.1, 0.9);
    let f = net.node("MyOp", &[x], vec![]);
    let y = net.node("Exp", &[f], vec![]);
    let mut m = net;
    // An op lopper does not know has no inferred shape: declare it.
    m.declare(f, "MyOp1:0", DType::F64, &[2, 3]);
    let e = m.check_err(y);
    assert!(e.contains("MyOp1") && e.contains("not a known op"), "{e}");

    let mut net = Net::new(13, DType::F64, 113);
    let x = net.input("x", &[2, 3], -1.0, 1.0);
    let p = net.ints("pads", &[0, 1, 0, 1]);
    let y = net.node("Pad", &[x, p], vec![attr_s("mode", "reflect")]);
    let e = net.check_err(y);
    assert!(e.contains("Pad1") && e.contains("reflect"), "{e}");
}

fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        s: Some(v.as_bytes().to_vec().into()),
        r#type: Some(3),
        ..Default::default()
    }
}
