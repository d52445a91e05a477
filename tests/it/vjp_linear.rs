//! Backward rules of the linear and windowed ops (Conv, Gemm, MatMul, MaxPool, AveragePool,
//! GlobalAveragePool, inference BatchNormalization), checked against central finite differences
//! run by ONNX Runtime ([`check_gradients`]) on small random graphs, and the rules' contract:
//! a gradient for every needed input, none for a frozen one.
//!
//! Tolerances: ONNX Runtime's CPU Conv, ConvTranspose and pooling have no float64 kernels, so
//! those graphs run in float32 with a step of 1e-2 (the ops are linear or piecewise linear in
//! the checked inputs, so the truncation error is rounding only) and pass when the largest
//! relative error (denominator floor 1e-2) is at most 1e-2. Gemm and MatMul run in float64
//! with a step of 1e-4 and pass at 1e-6.

use crate::common;
use common::grad_net::Net;

use lopper::analysis::infer_shapes;
use lopper::ir::graph::{attr_float, attr_int, attr_ints};
use lopper::ir::{DType, ValueId};
use lopper::onnx::proto::attribute_proto::AttributeType;
use lopper::onnx::proto::AttributeProto;
use lopper::ops::vjp::VjpCx;
use lopper::train::check::{check_gradients, CheckOptions};

fn attr_str(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec().into()),
        ..Default::default()
    }
}

/// float32 options (Conv, pooling, normalisation).
fn f32_opts() -> CheckOptions {
    CheckOptions {
        eps: 1e-2,
        max_elements: 16,
        ..Default::default()
    }
}

/// float64 options (Gemm, MatMul).
fn f64_opts() -> CheckOptions {
    CheckOptions {
        eps: 1e-4,
        max_elements: 16,
        ..Default::default()
    }
}

/// Checks the gradients of every name in `wrt`; returns the largest relative error.
fn check(label: &str, net: Net, out: ValueId, wrt: &[&str], opts: &CheckOptions, tol: f64) -> f64 {
    let (model, feed) = net.model(out);
    let report =
        check_gradients(&model, &feed, wrt, opts).unwrap_or_else(|e| panic!("{label}: {e}"));
    let mut worst = 0f64;
    for r in &report {
        assert!(r.checked > 0, "{label}: nothing checked for {}", r.name);
        assert!(
            r.max_rel_error <= tol,
            "{label}: d/d{} max rel error {:.3e} (abs {:.3e}) > {tol:.0e}",
            r.name,
            r.max_rel_error,
            r.max_abs_error
        );
        worst = worst.max(r.max_rel_error);
    }
    eprintln!("{label}: max rel error {worst:.2e}");
    worst
}

/// A Conv configuration.
struct ConvCase {
    x: Vec<usize>,
    m: usize,
    kernel: Vec<usize>,
    group: usize,
    bias: bool,
    attrs: Vec<AttributeProto>,
}

fn conv_case(label: &str, seed: u64, c: ConvCase) {
    let mut net = Net::new(13, DType::F32, seed);
    let x = net.input_unit("x", &c.x);
    let mut ws = vec![c.m, c.x[1] / c.group];
    ws.extend_from_slice(&c.kernel);
    let w = net.input_unit("w", &ws);
    let mut ins = vec![x, w];
    let mut wrt = vec!["x", "w"];
    if c.bias {
        ins.push(net.input_unit("b", &[c.m]));
        wrt.push("b");
    }
    let mut attrs = c.attrs;
    attrs.push(attr_int("group", c.group as i64));
    let y = net.node("Conv", &ins, attrs);
    check(&format!("Conv {label}"), net, y, &wrt, &f32_opts(), 1e-2);
}

#[test]
fn conv_gradients() {
    if !common::require_ort() {
        return;
    }
    let cases = [
        (
            "3x3 stride 1 pad 1, bias",
            ConvCase {
                x: vec![2, 3, 7, 7],
                m: 4,
                kernel: vec![3, 3],
                group: 1,
                bias: true,
                attrs: vec![attr_ints("pads", &[1, 1, 1, 1])],
            },
        ),
        (
            "3x2 stride 2, asymmetric pads, no bias",
            ConvCase {
                x: vec![2, 3, 8, 7],
                m: 5,
                kernel: vec![3, 2],
                group: 1,
                bias: false,
                attrs: vec![
                    attr_ints("strides", &[2, 2]),
                    attr_ints("pads", &[1, 0, 2, 1]),
                ],
            },
        ),
        (
            "stride 2 leaving trailing rows unread",
            ConvCase {
                x: vec![1, 2, 8, 8],
                m: 3,
                kernel: vec![3, 3],
                group: 1,
                bias: true,
                attrs: vec![attr_ints("strides", &[2, 2])],
            },
        ),
        (
            "dilation 2 stride 2 pad 2, group 2",
            ConvCase {
                x: vec![2, 4, 9, 9],
                m: 6,
                kernel: vec![3, 3],
                group: 2,
                bias: true,
                attrs: vec![
                    attr_ints("strides", &[2, 2]),
                    attr_ints("dilations", &[2, 2]),
                    attr_ints("pads", &[2, 2, 2, 2]),
                ],
            },
        ),
        (
            "depthwise 3x3 stride 2 pad 1",
            ConvCase {
                x: vec![2, 4, 7, 7],
                m: 4,
                kernel: vec![3, 3],
                group: 4,
                bias: true,
                attrs: vec![
                    attr_ints("strides", &[2, 2]),
                    attr_ints("pads", &[1, 1, 1, 1]),
                ],
            },
        ),
        (
            "depthwise multiplier 2, dilation 2",
            ConvCase {
                x: vec![2, 3, 8, 8],
                m: 6,
                kernel: vec![3, 3],
                group: 3,
                bias: false,
                attrs: vec![attr_ints("dilations", &[2, 2])],
            },
        ),
        (
            "2x3 stride 1, group 2, asymmetric pads (flipped-kernel dX)",
            ConvCase {
                x: vec![2, 4, 6, 7],
                m: 6,
                kernel: vec![2, 3],
                group: 2,
                bias: true,
                attrs: vec![attr_ints("pads", &[0, 1, 1, 2])],
            },
        ),
        (
            "3-D 3x1x2 stride 1, pad 1 on depth",
            ConvCase {
                x: vec![1, 2, 4, 3, 3],
                m: 3,
                kernel: vec![3, 1, 2],
                group: 1,
                bias: false,
                attrs: vec![attr_ints("pads", &[1, 0, 0, 1, 0, 1])],
            },
        ),
        (
            "2x3 stride 1, dilations (2, 1), asymmetric pads (shifted dW)",
            ConvCase {
                x: vec![2, 3, 7, 6],
                m: 4,
                kernel: vec![2, 3],
                group: 1,
                bias: false,
                attrs: vec![
                    attr_ints("dilations", &[2, 1]),
                    attr_ints("pads", &[1, 0, 0, 2]),
                ],
            },
        ),
        (
            "1-D k3 stride 1, dilation 2, pads wider than the kernel's reach",
            ConvCase {
                x: vec![2, 3, 9],
                m: 2,
                kernel: vec![3],
                group: 1,
                bias: true,
                attrs: vec![attr_ints("dilations", &[2]), attr_ints("pads", &[5, 1])],
            },
        ),
        (
            "5x5 on a 2x2 input, pads 3 (shifts would crop whole axes: windowed dW)",
            ConvCase {
                x: vec![1, 2, 2, 2],
                m: 2,
                kernel: vec![5, 5],
                group: 1,
                bias: false,
                attrs: vec![attr_ints("pads", &[3, 3, 0, 0])],
            },
        ),
        (
            "SAME_UPPER stride 2",
            ConvCase {
                x: vec![1, 2, 6, 6],
                m: 3,
                kernel: vec![3, 3],
                group: 1,
                bias: false,
                attrs: vec![
                    attr_ints("strides", &[2, 2]),
                    attr_str("auto_pad", "SAME_UPPER"),
                ],
            },
        ),
        (
            "1-D k4 stride 3",
            ConvCase {
                x: vec![2, 3, 11],
                m: 2,
                kernel: vec![4],
                group: 1,
                bias: true,
                attrs: vec![attr_ints("strides", &[3]), attr_ints("pads", &[0, 2])],
            },
        ),
    ];
    for (seed, (label, c)) in cases.into_iter().enumerate() {
        conv_case(label, seed as u64 + 1, c);
    }
}

#[test]
fn gemm_gradients() {
    if !common::require_ort() {
        return;
    }
    // (m, k, n, transA, transB, alpha, beta, C shape)
    type Case = (
        usize,
        usize,
        usize,
        bool,
        bool,
        f32,
        f32,
        Option<Vec<usize>>,
    );
    let cases: [Case; 6] = [
        (3, 4, 5, false, false, 1.0, 1.0, Some(vec![3, 5])),
        (3, 4, 5, false, true, 0.5, 2.0, Some(vec![5])),
        (3, 4, 5, true, false, 1.5, 1.0, Some(vec![3, 1])),
        (3, 4, 5, true, true, 1.0, -0.5, Some(vec![1, 5])),
        (2, 6, 3, true, true, 2.0, 1.0, Some(vec![])),
        (4, 3, 2, false, true, 1.0, 1.0, None),
    ];
    for (i, (m, k, n, ta, tb, alpha, beta, c)) in cases.into_iter().enumerate() {
        let mut net = Net::new(13, DType::F64, 100 + i as u64);
        let a = net.input_unit("a", &if ta { [k, m] } else { [m, k] });
        let b = net.input_unit("b", &if tb { [n, k] } else { [k, n] });
        let mut ins = vec![a, b];
        let mut wrt = vec!["a", "b"];
        if let Some(cs) = &c {
            ins.push(net.input_unit("c", cs));
            wrt.push("c");
        }
        let attrs = vec![
            attr_int("transA", i64::from(ta)),
            attr_int("transB", i64::from(tb)),
            attr_float("alpha", alpha),
            attr_float("beta", beta),
        ];
        let y = net.node("Gemm", &ins, attrs);
        let label = format!("Gemm {m}x{k}x{n} tA={ta} tB={tb} α={alpha} β={beta} C={c:?}");
        check(&label, net, y, &wrt, &f64_opts(), 1e-6);
    }
}

#[test]
fn matmul_gradients() {
    if !common::require_ort() {
        return;
    }
    let cases: [(&[usize], &[usize]); 8] = [
        (&[3, 4], &[4, 5]),
        (&[2, 3, 4], &[4, 5]),
        (&[3, 4], &[2, 4, 5]),
        (&[2, 1, 3, 4], &[3, 4, 2]),
        (&[5, 2, 3, 4], &[1, 4, 2]),
        (&[4], &[2, 4, 3]),
        (&[2, 3, 4], &[4]),
        (&[4], &[4]),
    ];
    for (i, (sa, sb)) in cases.into_iter().enumerate() {
        let mut net = Net::new(13, DType::F64, 200 + i as u64);
        let a = net.input_unit("a", sa);
        let b = net.input_unit("b", sb);
        let y = net.node("MatMul", &[a, b], vec![]);
        let label = format!("MatMul {sa:?} x {sb:?}");
        check(&label, net, y, &["a", "b"], &f64_opts(), 1e-6);
    }
}

#[test]
fn max_pool_gradients() {
    if !common::require_ort() {
        return;
    }
    let cases: [(&str, Vec<usize>, Vec<AttributeProto>); 6] = [
        (
            "2x2 stride 2",
            vec![2, 3, 6, 6],
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
            ],
        ),
        (
            "3x3 stride 2 pad 1 (overlapping)",
            vec![2, 2, 7, 7],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[1, 1, 1, 1]),
            ],
        ),
        (
            "3x3 stride 1 (overlapping), asymmetric pads",
            vec![1, 2, 6, 5],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("pads", &[0, 1, 2, 1]),
            ],
        ),
        (
            "3x2 stride 2 ceil_mode",
            vec![1, 3, 8, 7],
            vec![
                attr_ints("kernel_shape", &[3, 2]),
                attr_ints("strides", &[2, 2]),
                attr_int("ceil_mode", 1),
            ],
        ),
        (
            "2x2 dilation 2",
            vec![1, 2, 7, 7],
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("dilations", &[2, 2]),
                attr_ints("pads", &[1, 1, 1, 1]),
            ],
        ),
        (
            "1-D k3 stride 2 pad 1",
            vec![2, 3, 9],
            vec![
                attr_ints("kernel_shape", &[3]),
                attr_ints("strides", &[2]),
                attr_ints("pads", &[1, 1]),
            ],
        ),
    ];
    for (i, (label, xs, attrs)) in cases.into_iter().enumerate() {
        let mut net = Net::new(13, DType::F32, 300 + i as u64);
        let x = net.distinct("x", &xs);
        let y = net.node("MaxPool", &[x], attrs);
        let opts = CheckOptions {
            max_elements: 64,
            ..f32_opts()
        };
        check(&format!("MaxPool {label}"), net, y, &["x"], &opts, 1e-2);
    }
}

#[test]
fn average_pool_gradients() {
    if !common::require_ort() {
        return;
    }
    let cases: [(&str, Vec<usize>, Vec<AttributeProto>); 5] = [
        (
            "2x2 stride 2",
            vec![2, 3, 6, 6],
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
            ],
        ),
        (
            "3x3 stride 2 pad 1, pads excluded",
            vec![2, 2, 7, 7],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[1, 1, 1, 1]),
            ],
        ),
        (
            "3x3 stride 2 pad 1, count_include_pad",
            vec![2, 2, 7, 7],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[1, 1, 1, 1]),
                attr_int("count_include_pad", 1),
            ],
        ),
        (
            "3x2 stride 1, asymmetric pads, count_include_pad",
            vec![1, 3, 5, 6],
            vec![
                attr_ints("kernel_shape", &[3, 2]),
                attr_ints("pads", &[2, 0, 1, 1]),
                attr_int("count_include_pad", 1),
            ],
        ),
        (
            "SAME_UPPER 3x3 stride 2",
            vec![1, 2, 6, 6],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[2, 2]),
                attr_str("auto_pad", "SAME_UPPER"),
            ],
        ),
    ];
    for (i, (label, xs, attrs)) in cases.into_iter().enumerate() {
        let mut net = Net::new(13, DType::F32, 400 + i as u64);
        let x = net.input_unit("x", &xs);
        let y = net.node("AveragePool", &[x], attrs);
        let opts = CheckOptions {
            max_elements: 64,
            ..f32_opts()
        };
        check(&format!("AveragePool {label}"), net, y, &["x"], &opts, 1e-2);
    }
}

#[test]
fn global_average_pool_gradients() {
    if !common::require_ort() {
        return;
    }
    for (i, xs) in [vec![2, 3, 5, 4], vec![2, 4, 6]].into_iter().enumerate() {
        let mut net = Net::new(13, DType::F32, 500 + i as u64);
        let x = net.input_unit("x", &xs);
        let y = net.node("GlobalAveragePool", &[x], vec![]);
        check(
            &format!("GlobalAveragePool {xs:?}"),
            net,
            y,
            &["x"],
            &f32_opts(),
            1e-2,
        );
    }
}

#[test]
fn batch_norm_gradients() {
    if !common::require_ort() {
        return;
    }
    for (i, xs) in [vec![2, 3, 4, 4], vec![4, 5], vec![2, 3, 6]]
        .into_iter()
        .enumerate()
    {
        let c = xs[1];
        let mut net = Net::new(13, DType::F32, 600 + i as u64);
        let x = net.input_unit("x", &xs);
        let scale = net.input_unit("scale", &[c]);
        let bias = net.input_unit("bias", &[c]);
        let mean = net.input_unit("mean", &[c]);
        let var: Vec<f64> = (0..c).map(|_| 0.75 + 0.5 * net.signed()).collect();
        let var = net.input_vals("var", &[c], &var);
        let y = net.node(
            "BatchNormalization",
            &[x, scale, bias, mean, var],
            vec![attr_float("epsilon", 1e-3)],
        );
        let wrt = ["x", "scale", "bias", "mean", "var"];
        check(
            &format!("BatchNormalization {xs:?}"),
            net,
            y,
            &wrt,
            &f32_opts(),
            1e-2,
        );
    }
}

/// Training-mode BatchNormalization (batch statistics; momentum 0 so outputs 1 and 2 are the
/// batch mean and variance, as the train-step compiler emits it): the closed-form rule
/// against finite differences through the statistics, for X, scale and bias, in float64.
#[test]
fn batch_norm_training_gradients() {
    if !common::require_ort() {
        return;
    }
    for (i, xs) in [vec![4, 3, 3, 3], vec![6, 5], vec![3, 2, 5]]
        .into_iter()
        .enumerate()
    {
        let c = xs[1];
        let mut net = Net::new(13, DType::F64, 650 + i as u64);
        net.opset = 15;
        let x = net.input_unit("x", &xs);
        let scale = net.input_unit("scale", &[c]);
        let bias = net.input_unit("bias", &[c]);
        let mean = net.input_unit("mean", &[c]);
        let var: Vec<f64> = (0..c).map(|_| 0.75 + 0.5 * net.signed()).collect();
        let var = net.input_vals("var", &[c], &var);
        let outs = net.node_n(
            "BatchNormalization",
            &[Some(x), Some(scale), Some(bias), Some(mean), Some(var)],
            3,
            vec![
                attr_float("epsilon", 1e-3),
                attr_float("momentum", 0.0),
                attr_int("training_mode", 1),
            ],
        );
        check(
            &format!("BatchNormalization training {xs:?}"),
            net,
            outs[0],
            &["x", "scale", "bias"],
            &f64_opts(),
            1e-6,
        );
    }
}

/// Each rule returns a gradient for exactly the inputs it is asked for, for every subset.
#[test]
fn gradients_only_where_needed() {
    let mut cases: Vec<(Net, ValueId, usize)> = Vec::new();
    let mut net = Net::new(13, DType::F32, 700);
    let ins = [
        net.input_unit("x", &[1, 4, 6, 6]),
        net.input_unit("w", &[6, 2, 3, 3]),
        net.input_unit("b", &[6]),
    ];
    let y = net.node("Conv", &ins, vec![attr_int("group", 2)]);
    cases.push((net, y, 3));
    let mut net = Net::new(13, DType::F32, 701);
    let ins = [
        net.input_unit("a", &[4, 3]),
        net.input_unit("b", &[5, 4]),
        net.input_unit("c", &[5]),
    ];
    let y = net.node(
        "Gemm",
        &ins,
        vec![attr_int("transA", 1), attr_int("transB", 1)],
    );
    cases.push((net, y, 3));
    let mut net = Net::new(13, DType::F32, 702);
    let ins = [
        net.input_unit("a", &[2, 3, 4]),
        net.input_unit("b", &[4, 5]),
    ];
    let y = net.node("MatMul", &ins, vec![]);
    cases.push((net, y, 2));
    let mut net = Net::new(13, DType::F32, 703);
    let ins: Vec<ValueId> = ["x", "s", "b", "m", "v"]
        .iter()
        .enumerate()
        .map(|(i, n)| net.input_unit(n, if i == 0 { &[2, 3, 4, 4][..] } else { &[3][..] }))
        .collect();
    let y = net.node("BatchNormalization", &ins, vec![]);
    cases.push((net, y, 5));
    for op in ["MaxPool", "AveragePool"] {
        let mut net = Net::new(13, DType::F32, 704);
        let x = net.input_unit("x", &[1, 2, 5, 5]);
        let y = net.node(op, &[x], vec![attr_ints("kernel_shape", &[3, 3])]);
        cases.push((net, y, 1));
    }
    let mut net = Net::new(13, DType::F32, 705);
    let x = net.input_unit("x", &[1, 2, 5, 5]);
    let y = net.node("GlobalAveragePool", &[x], vec![]);
    cases.push((net, y, 1));

    for (net, y, n_in) in cases {
        let (model, _) = net.model(y);
        let shapes = infer_shapes(&model).unwrap();
        for mask in 0u32..(1 << n_in) {
            let needs: Vec<bool> = (0..n_in).map(|p| mask & (1 << p) != 0).collect();
            let mut g = model.graph.clone();
            let node = g.node_ids().next().unwrap();
            let op_type = g.node(node).op_type.clone();
            let dy = g.add_value("dy");
            let op = lopper::ops::lookup("", &op_type).unwrap();
            let mut cx = VjpCx {
                g: &mut g,
                shapes: &shapes,
                node,
                opset: 13,
                kernels: false,
            };
            let got = op.vjp(&mut cx, &[Some(dy)], &needs).unwrap();
            for (p, &need) in needs.iter().enumerate() {
                let has = got.get(p).copied().flatten().is_some();
                assert_eq!(
                    has, need,
                    "{op_type}: input {p} needed={need}, gradient={has}"
                );
            }
            if mask == 0 {
                assert_eq!(
                    g.node_count(),
                    model.graph.node_count(),
                    "{op_type}: nodes emitted although nothing was needed"
                );
            }
        }
    }
}
