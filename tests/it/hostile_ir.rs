//! Hostile graphs (issue 15): models the ONNX spec rejects must make `inspect`, `simplify` and
//! `prune` exit 2 with one line naming the node (or value) and the rule, and write nothing;
//! models lopper writes with exit 0 must load in ONNX Runtime.

use crate::common;

use std::path::Path;
use std::process::Command;

use lopper::onnx::proto::{
    attribute_proto::AttributeType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, SparseTensorProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};
use prost::Message;

/// Runs lopper: (exit code, stderr).
fn lopper(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lopper"))
        .args(args)
        .output()
        .expect("run lopper");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A float tensor declaration of shape `dims`.
fn typed(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn floats(name: &str, dims: &[i64]) -> TensorProto {
    let n: i64 = dims.iter().product();
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        float_data: (0..n).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect(),
        ..Default::default()
    }
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

/// `y = Conv(x [1,2,5,5], w [3,2,3,3], b [3])` (node `conv`), opset 13, every input typed:
/// the valid model each case breaks one rule of.
pub(crate) fn conv_model() -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: vec![NodeProto {
                name: Some("conv".into()),
                op_type: Some("Conv".into()),
                input: vec!["x".into(), "w".into(), "b".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            initializer: vec![floats("w", &[3, 2, 3, 3]), floats("b", &[3])],
            input: vec![typed("x", &[1, 2, 5, 5])],
            output: vec![typed("y", &[1, 3, 3, 3])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn graph(m: &mut ModelProto) -> &mut GraphProto {
    m.graph.as_mut().unwrap()
}

fn conv(m: &mut ModelProto) -> &mut NodeProto {
    &mut graph(m).node[0]
}

/// Writes `m` and asserts `inspect`, `simplify` and `prune` each exit 2 with one line holding
/// every needle, and that neither writing command created its output.
fn assert_refused(dir: &Path, case: &str, m: &ModelProto, needles: &[&str]) {
    let path = dir.join(format!("{case}.onnx"));
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let p = path.to_str().unwrap();
    let out = dir.join(format!("{case}.out.onnx"));
    let o = out.to_str().unwrap();
    let runs: [&[&str]; 3] = [
        &["inspect", p],
        &["simplify", p, "-o", o],
        &["prune", p, "--target", "flops=0.5", "--no-verify", "-o", o],
    ];
    for args in runs {
        let (code, err) = lopper(args);
        assert_eq!(code, 2, "{case}: {args:?} exit code; stderr: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{case}: one line: {err}");
        for n in needles {
            assert!(err.contains(n), "{case}: {args:?} should name '{n}': {err}");
        }
        assert!(!err.contains("internal error"), "{case}: {err}");
        assert!(!out.exists(), "{case}: {args:?} wrote {o}");
    }
}

#[test]
fn the_valid_control_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.onnx");
    std::fs::write(&path, conv_model().encode_to_vec()).unwrap();
    let p = path.to_str().unwrap();
    let (code, err) = lopper(&["inspect", p]);
    assert_eq!(code, 0, "{err}");
    let out = dir.path().join("s.onnx");
    let (code, err) = lopper(&["simplify", p, "-o", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.exists());
}

#[test]
fn graph_level_rules() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let mut m = conv_model();
    graph(&mut m).output.clear();
    assert_refused(d, "no_outputs", &m, &["no outputs"]);

    let mut m = conv_model();
    m.opset_import[0].version = Some(99);
    assert_refused(d, "opset99", &m, &["opset 99", "(opset)"]);

    let mut m = conv_model();
    conv(&mut m).domain = Some("com.example".into());
    assert_refused(d, "domain", &m, &["'conv'", "com.example", "(domain)"]);

    let mut m = conv_model();
    graph(&mut m).input[0].r#type = None;
    assert_refused(d, "untyped_input", &m, &["'x'", "(input type)"]);

    // A sparse initializer with 2 values at linear indices 1 and 40 of a [2, 3] tensor.
    let mut m = conv_model();
    let mut vals = floats("s", &[2]);
    vals.float_data = vec![1.0, 2.0];
    graph(&mut m).sparse_initializer.push(SparseTensorProto {
        values: Some(vals),
        indices: Some(TensorProto {
            name: Some("s_idx".into()),
            dims: vec![2],
            data_type: Some(7),
            int64_data: vec![1, 40],
            ..Default::default()
        }),
        dims: vec![2, 3],
    });
    assert_refused(d, "sparse", &m, &["'s'", "index 40", "(sparse indices)"]);
}

#[test]
fn op_rules_name_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let mut m = conv_model();
    conv(&mut m)
        .input
        .extend(["b".to_string(), "b".to_string()]);
    assert_refused(d, "conv5", &m, &["'conv' (Conv)", "5 inputs", "(arity)"]);

    let mut m = conv_model();
    conv(&mut m).attribute.push(AttributeProto {
        name: Some("group".into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(1.0),
        ..Default::default()
    });
    assert_refused(d, "group_float", &m, &["'conv' (Conv)", "'group'", "FLOAT"]);

    let mut m = conv_model();
    conv(&mut m).attribute.push(int_attr("group", 0));
    assert_refused(d, "group0", &m, &["'conv' (Conv)", "(group)"]);

    let mut m = conv_model();
    graph(&mut m).initializer[1] = floats("b", &[4]);
    assert_refused(d, "bias4", &m, &["'conv' (Conv)", "4 entries", "(bias)"]);

    let mut m = conv_model();
    conv(&mut m).attribute.push(AttributeProto {
        name: Some("kernel_shape".into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: vec![1 << 40, 1 << 40],
        ..Default::default()
    });
    assert_refused(d, "kernel2e40", &m, &["'conv' (Conv)", "(kernel_shape)"]);

    // y = Reshape(Conv(x), shape) with a float shape.
    let mut m = conv_model();
    let g = graph(&mut m);
    g.node[0].output = vec!["c".into()];
    g.node.push(NodeProto {
        name: Some("reshape".into()),
        op_type: Some("Reshape".into()),
        input: vec!["c".into(), "shape".into()],
        output: vec!["y".into()],
        ..Default::default()
    });
    let mut shape = floats("shape", &[2]);
    shape.float_data = vec![1.0, 27.0];
    g.initializer.push(shape);
    g.output = vec![typed("y", &[1, 27])];
    assert_refused(d, "reshape_float", &m, &["'reshape' (Reshape)", "int64"]);
}

/// `conv_model` at `opset` with `y = op(Conv(x), extra…)` appended (node `tail`), the extra
/// inputs being int64 constants `[1]`.
fn with_tail(opset: i64, op: &str, extra: &[&str]) -> ModelProto {
    let mut m = conv_model();
    m.opset_import[0].version = Some(opset);
    let g = graph(&mut m);
    g.node[0].output = vec!["c".into()];
    let mut input = vec!["c".to_string()];
    for name in extra {
        input.push(name.to_string());
        g.initializer.push(TensorProto {
            name: Some(name.to_string()),
            dims: vec![1],
            data_type: Some(7),
            int64_data: vec![1],
            ..Default::default()
        });
    }
    g.node.push(NodeProto {
        name: Some("tail".into()),
        op_type: Some(op.into()),
        input,
        output: vec!["y".into()],
        ..Default::default()
    });
    g.output = vec![ValueInfoProto {
        name: Some("y".into()),
        ..Default::default()
    }];
    m
}

/// Input counts are checked against the model's opset: inputs that replaced attributes at a
/// later opset are refused before it, and required ones after it.
#[test]
fn arity_follows_the_opset() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: [(&str, i64, &str, &[&str], &str); 5] = [
        (
            "slice9",
            9,
            "Slice",
            &["s", "e"],
            "Slice takes 1 at opset 9",
        ),
        (
            "unsqueeze13",
            13,
            "Unsqueeze",
            &[],
            "Unsqueeze takes 2 at opset 13",
        ),
        (
            "squeeze11",
            11,
            "Squeeze",
            &["a"],
            "Squeeze takes 1 at opset 11",
        ),
        (
            "reducemean17",
            17,
            "ReduceMean",
            &["a"],
            "ReduceMean takes 1 at opset 17",
        ),
        ("pad13", 13, "Pad", &[], "Pad takes 2 to 3 at opset 13"),
    ];
    for (case, opset, op, extra, needle) in cases {
        let m = with_tail(opset, op, extra);
        assert_refused(d, case, &m, &["'tail'", needle, "(arity)"]);
    }
    // The right count of the wrong type: BatchNormalization's statistics must be floats
    // (tract crashed on this one, found by the fuzz harness).
    let m = with_tail(13, "BatchNormalization", &["s", "beta", "mu", "v"]);
    assert_refused(d, "bn_int", &m, &["'tail'", "int64", "(input type)"]);
    // The same counts at the opsets that allow them pass the verifier.
    for (opset, op, extra) in [
        (13, "Slice", &["s", "e"][..]),
        (13, "Unsqueeze", &["a"]),
        (13, "Squeeze", &["a"]),
        (18, "ReduceMean", &["a"]),
    ] {
        let m = with_tail(opset, op, extra);
        let path = d.join(format!("ok_{op}{opset}.onnx"));
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        let (code, err) = lopper(&["inspect", path.to_str().unwrap()]);
        assert!(!err.contains("(arity)"), "{op} at {opset}: {err}");
        assert_ne!(code, 3, "{op} at {opset}: {err}");
    }
}

/// The shared models every writing command is tried on (small enough for a debug build).
const MODELS: &[&str] = &[
    "pretrained/mnist-8.onnx",
    "pretrained/resnet20_cifar10.bn.onnx",
    "zoo/mobilenet_v3_small.bn.onnx",
];

#[test]
fn written_models_load_in_onnx_runtime() {
    if !common::require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for name in MODELS {
        let model = common::shared_dir().join("models").join(name);
        let m = model.to_str().unwrap();
        let runs: [(&str, Vec<&str>); 2] = [
            ("simplify", vec!["simplify", m]),
            (
                "prune",
                vec!["prune", m, "--target", "flops=0.7", "--no-verify"],
            ),
        ];
        for (cmd, mut args) in runs {
            let out = dir.path().join(format!("{cmd}.onnx"));
            args.extend(["-o", out.to_str().unwrap()]);
            let (code, err) = lopper(&args);
            assert_eq!(code, 0, "{name}: {cmd}: {err}");
            let loaded = lopper::runtime::load(lopper::runtime::BackendKind::Ort, &out);
            assert!(
                loaded.is_ok(),
                "{name}: the model `{cmd}` wrote does not load in ONNX Runtime: {}",
                loaded.err().map(|e| e.to_string()).unwrap_or_default()
            );
            std::fs::remove_file(&out).unwrap();
        }
    }
}

#[test]
fn every_shared_model_passes_the_verifier() {
    for model in common::all_models() {
        let (code, err) = lopper(&["inspect", model.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {err}", common::short(&model));
    }
}

#[test]
fn activation_memory_saturates_instead_of_wrapping() {
    // y = ConstantOfShape([2^32, 2^32]) + x: 2^64 floats, 2^66 bytes.
    let mut m = conv_model();
    let g = graph(&mut m);
    g.initializer = vec![TensorProto {
        name: Some("shape".into()),
        dims: vec![2],
        data_type: Some(7),
        int64_data: vec![1 << 32, 1 << 32],
        ..Default::default()
    }];
    g.node = vec![
        NodeProto {
            name: Some("big".into()),
            op_type: Some("ConstantOfShape".into()),
            input: vec!["shape".into()],
            output: vec!["c".into()],
            ..Default::default()
        },
        NodeProto {
            name: Some("add".into()),
            op_type: Some("Add".into()),
            input: vec!["c".into(), "x".into()],
            output: vec!["y".into()],
            ..Default::default()
        },
    ];
    g.input = vec![typed("x", &[1])];
    g.output = vec![typed("y", &[1 << 32, 1 << 32])];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lopper"))
        .args(["inspect", path.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("activations"))
        .unwrap_or_else(|| panic!("no activations line: {stdout}"));
    assert!(
        line.contains("too large to count") && !line.contains("MiB"),
        "2^66 bytes must not wrap round to a small count: {line}"
    );
    // The JSON report carries the saturated count, not a wrapped one.
    let out = Command::new(env!("CARGO_BIN_EXE_lopper"))
        .args(["inspect", path.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect --json");
    assert_eq!(v["peak_activation_bytes"].as_u64(), Some(u64::MAX), "{v}");
}

/// `layers` Conv+Relu pairs on `x [1, 8, 4, 4]`, each near the identity, so that the signal
/// neither dies nor explodes.
fn chain(layers: usize) -> ModelProto {
    let (mut nodes, mut inits) = (Vec::new(), Vec::new());
    let mut cur = "x".to_string();
    for i in 0..layers {
        let w: Vec<f32> = (0..64)
            .map(|k| f32::from(u8::from(k / 8 == k % 8)) + 1e-4 * ((k % 5) as f32 - 2.0))
            .collect();
        inits.push(TensorProto {
            name: Some(format!("w{i}")),
            dims: vec![8, 8, 1, 1],
            data_type: Some(1),
            float_data: w,
            ..Default::default()
        });
        for (op, inputs, out) in [
            ("Conv", vec![cur.clone(), format!("w{i}")], format!("c{i}")),
            ("Relu", vec![format!("c{i}")], format!("r{i}")),
        ] {
            nodes.push(NodeProto {
                name: Some(format!("{op}{i}")),
                op_type: Some(op.into()),
                input: inputs,
                output: vec![out.clone()],
                ..Default::default()
            });
            cur = out;
        }
    }
    let mut m = conv_model();
    let g = graph(&mut m);
    g.node = nodes;
    g.initializer = inits;
    g.input = vec![typed("x", &[1, 8, 4, 4])];
    g.output = vec![typed(&cur, &[1, 8, 4, 4])];
    m
}

/// Deep chains are pruned and verified on real, varying outputs: 800 Conv+Relu pairs (above
/// the size where checks skip ONNX Runtime's graph rewrites) on both runtimes, 2,600 pairs
/// (above [`lopper::oracle::TRACT_CHECK_MAX_NODES`], where tract's model building is
/// quadratic) on ONNX Runtime alone, with a warning saying why tract did not compare.
#[test]
fn a_deep_chain_is_verified_without_graph_optimisations() {
    for (layers, tract) in [(800, true), (2600, false)] {
        let m = chain(layers);
        let nodes = 2 * layers;
        assert!(nodes > lopper::runtime::CHECK_OPTIMIZE_NODES);
        assert_eq!(nodes <= lopper::oracle::TRACT_CHECK_MAX_NODES, tract);
        let dir = tempfile::tempdir().unwrap();
        let (path, out) = (dir.path().join("chain.onnx"), dir.path().join("p.onnx"));
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_lopper"))
            .args(["prune", path.to_str().unwrap(), "-o", out.to_str().unwrap()])
            .args(["--ratio", "0.25", "--round-to", "1", "--table", "none"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{layers}: {stderr}");
        assert!(stdout.contains("verified: max relative error"), "{stdout}");
        assert!(!stdout.contains("not verified"), "{stdout}");
        let verdict = stdout.lines().find(|l| l.starts_with("verified:")).unwrap();
        assert!(verdict.contains("ort"), "{verdict}");
        assert_eq!(verdict.contains("tract"), tract, "{layers}: {verdict}");
        assert_eq!(
            stderr.contains("warning: tract did not compare"),
            !tract,
            "{layers}: {stderr}"
        );
    }
}
