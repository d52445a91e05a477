//! A ConvTranspose + BatchNormalization classifier trains and re-initialises like a Conv one:
//! what the train step and `--from-scratch` need of an op comes from the op
//! (`Op::layer`, `Op::training_mode`), not from op-type lists in `train/`.

use crate::common;

use common::grad_net::Net;

use common::*;
use lopper::ir::graph::{attr_int, attr_ints};
use lopper::ir::{DType, Dim, Fact, Graph, Model, Tensor, ValueId};
use lopper::onnx::proto::{ModelProto, OperatorSetIdProto, ValueInfoProto};
use lopper::runtime::{self, BackendKind};
use lopper::train::loss::Loss;
use lopper::train::optim::Optimizer;
use lopper::train::regularize::Regularizer;
use lopper::train::runner::reinitialize;
use lopper::train::{compile_train_step, StepOptions};

/// `x[N,3,6,6] → ConvTranspose(4, 3×3, pads 1, bias) → BN → Relu → ConvTranspose(4, 1×1, no
/// bias) → Add(b) → GlobalAveragePool → Flatten → Gemm(5)`, opset 17.
fn model() -> Model {
    let mut g = Graph::new();
    let x = g.add_value("x");
    let mut dims = vec![Dim::Sym("N".into())];
    dims.extend([3, 6, 6].map(Dim::Known));
    g.set_decl(
        x,
        ValueInfoProto {
            name: Some("x".into()),
            r#type: Some(Fact::new(Some(DType::F32), dims).to_type()),
            ..Default::default()
        },
    );
    g.value_info.retain(|v| *v != x);
    g.inputs.push(x);
    let mut rng = Rng::new(11);
    let mut init = |g: &mut Graph, name: &str, shape: &[usize], scale: f64, off: f64| {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| off + scale * (rng.uniform() - 0.5))
            .collect();
        g.add_initializer(
            name,
            Tensor::from_f64_as(DType::F32, shape.to_vec(), &v).unwrap(),
        )
    };
    let w1 = init(&mut g, "ct1.w", &[3, 4, 3, 3], 0.6, 0.0);
    let b1 = init(&mut g, "ct1.b", &[4], 0.2, 0.0);
    let bn: Vec<ValueId> = [
        ("bn.scale", 1.0),
        ("bn.bias", 0.0),
        ("bn.mean", 0.0),
        ("bn.var", 1.0),
    ]
    .iter()
    .map(|(n, off)| init(&mut g, n, &[4], 0.2, *off))
    .collect();
    let w2 = init(&mut g, "ct2.w", &[4, 4, 1, 1], 0.8, 0.0);
    let b2 = init(&mut g, "ct2.b", &[1, 4, 1, 1], 0.2, 0.0);
    let fw = init(&mut g, "fc.w", &[5, 4], 1.0, 0.0);
    let fb = init(&mut g, "fc.b", &[5], 0.2, 0.0);
    let chain = |g: &mut Graph, name: &str, op: &str, ins: &[ValueId], attrs| {
        let ins: Vec<Option<ValueId>> = ins.iter().map(|v| Some(*v)).collect();
        let id = g.add_node(name, op, &ins, &[&format!("{name}:0")], attrs);
        g.node(id).outputs[0].unwrap()
    };
    let y = chain(
        &mut g,
        "ct1",
        "ConvTranspose",
        &[x, w1, b1],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let bn_in: Vec<ValueId> = std::iter::once(y).chain(bn).collect();
    let y = chain(&mut g, "bn", "BatchNormalization", &bn_in, vec![]);
    let y = chain(&mut g, "relu", "Relu", &[y], vec![]);
    let y = chain(&mut g, "ct2", "ConvTranspose", &[y, w2], vec![]);
    let y = chain(&mut g, "add", "Add", &[y, b2], vec![]);
    let y = chain(&mut g, "gap", "GlobalAveragePool", &[y], vec![]);
    let y = chain(&mut g, "flat", "Flatten", &[y], vec![]);
    let y = chain(
        &mut g,
        "fc",
        "Gemm",
        &[y, fw, fb],
        vec![attr_int("transB", 1)],
    );
    g.outputs = vec![y];
    Model {
        graph: g,
        rest: ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            ..Default::default()
        },
    }
}

fn values(m: &Model, name: &str) -> Vec<f64> {
    let v = m.graph.value_by_name(name).unwrap();
    m.graph.init(v).unwrap().to_f64_vec().unwrap()
}

/// SGD steps on one fixed batch: the loss is finite and falls; both ConvTranspose weights,
/// the bias and BN's γ/β are trained, BN's running statistics carried.
#[test]
fn conv_transpose_with_batch_norm_trains() {
    if !require_ort() {
        return;
    }
    let model = model();
    let opts = StepOptions {
        batch: 4,
        loss: Loss::CrossEntropy {
            label_smoothing: 0.0,
        },
        optimizer: Optimizer::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
        ..Default::default()
    };
    let step = compile_train_step(&model, &opts).unwrap();
    let params: Vec<&str> = step.params.iter().map(|c| c.input.as_str()).collect();
    for p in [
        "ct1.w", "ct1.b", "bn.scale", "bn.bias", "ct2.w", "ct2.b", "fc.w", "fc.b",
    ] {
        assert!(params.contains(&p), "{p} not trained: {params:?}");
    }
    let running: Vec<&str> = step.running.iter().map(|c| c.input.as_str()).collect();
    assert_eq!(running, ["bn.mean", "bn.var"]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("step.onnx");
    step.model.save(&path, &Default::default()).unwrap();
    let mut sess = runtime::load(BackendKind::Ort, &path).unwrap();
    let mut rng = Rng::new(5);
    let xv: Vec<f32> = (0..4 * 3 * 6 * 6)
        .map(|_| rng.uniform() as f32 * 2.0 - 1.0)
        .collect();
    let x = Tensor::from_f32(vec![4, 3, 6, 6], &xv);
    let labels = Tensor::from_i64(vec![4], &[0, 3, 1, 4]);
    let mut carried = step.initial_feed();
    let mut losses = Vec::new();
    for k in 0..6 {
        let mut feed = carried.clone();
        feed.push((step.x.clone(), x.clone()));
        feed.push((step.labels.clone().unwrap(), labels.clone()));
        feed.push((step.lr.clone(), Tensor::from_f32(vec![], &[0.2])));
        feed.push((
            step.step.clone(),
            Tensor::from_f32(vec![], &[(k + 1) as f32]),
        ));
        let outs = sess.run(&feed).unwrap();
        let get = |n: &str| outs.iter().find(|(o, _)| o == n).unwrap().1.clone();
        losses.push(get(&step.loss).to_f64_vec().unwrap()[0]);
        let all = step
            .params
            .iter()
            .chain(step.state.iter().map(|(_, _, c)| c))
            .chain(&step.running);
        carried = all.map(|c| (c.input.clone(), get(&c.output))).collect();
    }
    eprintln!("losses {losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]) && losses[5] < losses[0] * 0.9,
        "the loss does not fall: {losses:?}"
    );
    // Group lasso reaches the ConvTranspose filter banks as it reaches Conv's.
    let with_lasso = StepOptions {
        regularizers: vec![Regularizer::GroupLasso {
            weight: 1.0,
            eps: 1e-8,
        }],
        ..opts
    };
    let step = compile_train_step(&model, &with_lasso).unwrap();
    let g = &step.model.graph;
    let lassoed = |w: &str| {
        g.node_ids()
            .any(|n| g.node(n).name.starts_with(&format!("reg/group_lasso/{w}/")))
    };
    assert!(lassoed("ct1.w") && lassoed("ct2.w"));
    assert!(!lassoed("fc.w"));
}

/// `--from-scratch` re-initialises ConvTranspose as it does Conv: Kaiming-normal weights
/// (fan-in from the weight's dims after the first), zero biases (its own and one added by an
/// `Add`), BN γ = 1 and β = 0; the same seed draws the same weights, another seed others.
#[test]
fn conv_transpose_reinitialises_like_conv() {
    let before = model();
    let fresh = |seed| {
        let mut m = before.clone();
        reinitialize(&mut m, seed).unwrap();
        m
    };
    let (a, b, c) = (fresh(1), fresh(1), fresh(2));
    for w in ["ct1.w", "ct2.w", "fc.w"] {
        assert_ne!(values(&a, w), values(&before, w), "{w} unchanged");
        assert_eq!(values(&a, w), values(&b, w), "{w}: same seed, other values");
        assert_ne!(values(&a, w), values(&c, w), "{w}: other seed, same values");
    }
    // ct1.w is [3, 4, 3, 3]: fan-in 36, gain √2 → std 0.236.
    let w = values(&a, "ct1.w");
    let std = (w.iter().map(|v| v * v).sum::<f64>() / w.len() as f64).sqrt();
    assert!((std - (2.0f64 / 36.0).sqrt()).abs() < 0.06, "std {std}");
    for (name, v) in [
        ("ct1.b", 0.0),
        ("ct2.b", 0.0),
        ("bn.scale", 1.0),
        ("bn.bias", 0.0),
    ] {
        assert!(values(&a, name).iter().all(|&x| x == v), "{name}");
    }
}

/// ConvTranspose's backward rule (dX, dW, dB) against central finite differences in float32
/// (step 1e-2, tolerance 5e-2 relative: single elements of x reach 1.1e-2 from float32 noise,
/// 2.6e-4 absolute):
/// strided with output padding and a bias; grouped, dilated, asymmetric pads.
#[test]
fn conv_transpose_gradients() {
    if !require_ort() {
        return;
    }
    let mut net = Net::new(17, DType::F32, 3);
    let x = net.input_unit("x", &[2, 3, 4, 4]);
    let w = net.input_unit("w", &[3, 4, 3, 3]);
    let b = net.input_unit("b", &[4]);
    let attrs = vec![
        attr_ints("strides", &[2, 2]),
        attr_ints("pads", &[1, 1, 1, 1]),
        attr_ints("output_padding", &[1, 1]),
    ];
    let y = net.node("ConvTranspose", &[x, w, b], attrs);
    net.check_with(y, "ConvTranspose strided, output padding, bias", 5e-2, 1e-2);

    let mut net = Net::new(17, DType::F32, 4);
    let x = net.input_unit("x", &[1, 4, 5, 5]);
    let w = net.input_unit("w", &[4, 3, 3, 3]);
    let attrs = vec![
        attr_int("group", 2),
        attr_ints("dilations", &[2, 2]),
        attr_ints("pads", &[1, 0, 2, 1]),
    ];
    let y = net.node("ConvTranspose", &[x, w], attrs);
    net.check_with(
        y,
        "ConvTranspose grouped, dilated, asymmetric pads",
        5e-2,
        1e-2,
    );
}
