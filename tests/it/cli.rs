//! The command line on good and bad input: bad files exit 2 with one line naming the problem.

use crate::common;

use std::path::{Path, PathBuf};

use lopper::onnx::proto::{
    tensor_proto::DataLocation, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, ValueInfoProto,
};
use prost::Message;

use common::run_lopper as lopper;

fn shared(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/models")
        .join(rel)
        .display()
        .to_string()
}

/// Asserts exit code 2, one stderr line, mentioning `needle`, and no panic.
fn assert_bad(path: &Path, needle: &str) {
    let (code, _, err) = lopper(&["inspect", path.to_str().unwrap()]);
    assert_eq!(code, 2, "exit code for {}: stderr {err}", path.display());
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
    assert!(
        err.contains(needle),
        "message should mention '{needle}': {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
}

fn tiny_model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
    let vi = |n: &str| ValueInfoProto {
        name: Some(n.into()),
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            initializer: inits,
            input: vec![float_input("x")],
            output: vec![vi("y")],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(name: &str, op: &str, ins: &[&str], outs: &[&str]) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn inspect_real_model() {
    let (code, out, err) = lopper(&["inspect", &shared("zoo/cifar_resnet20.bn.onnx"), "--layers"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("40.81 M"), "MACs in output: {out}");
    assert!(out.contains("Conv"), "{out}");
    let (code, out, _) = lopper(&["inspect", &shared("zoo/cifar_resnet20.bn.onnx"), "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(v["macs"].as_u64(), Some(40_813_184).or(v["macs"].as_u64()));
    assert!(v["params"].as_u64().unwrap() > 200_000);
}

#[test]
fn corrupt_inputs_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(shared("pretrained/mnist-8.onnx")).unwrap();

    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    assert_bad(&truncated, "truncated.onnx");

    let random = dir.path().join("random.onnx");
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&random, bytes).unwrap();
    assert_bad(&random, "random.onnx");

    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    assert_bad(&empty, "empty");

    assert_bad(&dir.path().join("missing.onnx"), "missing.onnx");

    // dims say 2x3 floats, data holds 5.
    let w = TensorProto {
        name: Some("w".into()),
        dims: vec![2, 3],
        data_type: Some(1),
        float_data: vec![1.0; 5],
        ..Default::default()
    };
    let m = tiny_model(vec![node("add", "Add", &["x", "w"], &["y"])], vec![w]);
    let bad_dims = dir.path().join("bad_dims.onnx");
    std::fs::write(&bad_dims, m.encode_to_vec()).unwrap();
    assert_bad(&bad_dims, "'w'");

    // External data that leaves the model's folder.
    let w = TensorProto {
        name: Some("w".into()),
        dims: vec![1],
        data_type: Some(1),
        data_location: Some(DataLocation::External as i32),
        external_data: vec![StringStringEntryProto {
            key: Some("location".into()),
            value: Some("../../etc/passwd".into()),
        }],
        ..Default::default()
    };
    let m = tiny_model(vec![node("add", "Add", &["x", "w"], &["y"])], vec![w]);
    let escape = dir.path().join("escape.onnx");
    std::fs::write(&escape, m.encode_to_vec()).unwrap();
    assert_bad(&escape, "escapes the model's folder");

    // A cycle: a = Relu(b), b = Relu(a).
    let m = tiny_model(
        vec![
            node("r1", "Relu", &["b"], &["a"]),
            node("r2", "Relu", &["a"], &["b"]),
            node("r3", "Add", &["x", "a"], &["y"]),
        ],
        vec![],
    );
    let cycle = dir.path().join("cycle.onnx");
    std::fs::write(&cycle, m.encode_to_vec()).unwrap();
    assert_bad(&cycle, "cycle");

    // A node reading an undefined value.
    let m = tiny_model(vec![node("add", "Add", &["x", "nowhere"], &["y"])], vec![]);
    let dangling = dir.path().join("dangling.onnx");
    std::fs::write(&dangling, m.encode_to_vec()).unwrap();
    assert_bad(&dangling, "'nowhere'");
}

#[test]
fn unknown_ops_are_kept_and_inspected() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node("custom", "FancyOp", &["x"], &["y"]);
    n.domain = Some("com.example".into());
    let mut m = tiny_model(vec![n.clone()], vec![]);
    m.opset_import.push(OperatorSetIdProto {
        domain: Some("com.example".into()),
        version: Some(1),
    });
    let p = dir.path().join("custom.onnx");
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    let (code, out, err) = lopper(&["inspect", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("com.example.FancyOp×1"), "{out}");
    // With a shaped input, the unknown op is where shape inference stops: inspect says so,
    // and that the totals after it are not counted.
    let (mut n, relu) = (n, node("relu", "Relu", &["z"], &["y"]));
    n.output = vec!["z".into()];
    let mut m = tiny_model(vec![n, relu], vec![]);
    m.opset_import.push(OperatorSetIdProto {
        domain: Some("com.example".into()),
        version: Some(1),
    });
    if let Some(lopper::onnx::proto::type_proto::Value::TensorType(t)) =
        m.graph.as_mut().unwrap().input[0]
            .r#type
            .as_mut()
            .and_then(|t| t.value.as_mut())
    {
        t.shape = Some(lopper::onnx::proto::TensorShapeProto {
            dim: [1, 3, 8, 8]
                .iter()
                .map(|&d| lopper::onnx::proto::tensor_shape_proto::Dimension {
                    value: Some(
                        lopper::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(d),
                    ),
                    ..Default::default()
                })
                .collect(),
        });
    }
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    let (code, out, err) = lopper(&["inspect", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "incomplete: 2 node(s) have outputs of unknown shape, from 'custom' (FancyOp) on"
        ),
        "{out}"
    );
}

/// A graph input declared as a float tensor (the spec requires graph inputs to be typed).
fn float_input(n: &str) -> lopper::onnx::proto::ValueInfoProto {
    use lopper::onnx::proto::{type_proto, TypeProto};
    lopper::onnx::proto::ValueInfoProto {
        name: Some(n.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
