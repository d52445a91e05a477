//! Load → save round trips on every shared model (zoo and pretrained, external data included):
//! the saved file passes the `onnx` checker, runs bit-identically to the original under ONNX
//! Runtime and under tract, and decodes to the same protobuf as the original.

use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use lopper::ir::{export::export, import::import, DType, Dim, Fact, Model, Tensor};
use lopper::onnx::proto::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto, ValueInfoProto};
use lopper::onnx::{
    load::for_each_tensor_mut, load_model, save::ExternalData, save_model, SaveOptions,
};
use lopper::runtime::BackendKind;

/// Loads `path` into the IR and saves it into `dir` under the same file name.
fn load_save(path: &Path, dir: &Path, opts: &SaveOptions) -> PathBuf {
    let model = Model::load(path).unwrap_or_else(|e| panic!("{}: load: {e}", path.display()));
    let out = dir.join(path.file_name().unwrap());
    model
        .save(&out, opts)
        .unwrap_or_else(|e| panic!("{}: save: {e}", path.display()));
    out
}

/// Round-trips every model and compares outputs of original and saved file under `kind`.
fn roundtrip_bit_identical(kind: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for path in all_models() {
        let t0 = std::time::Instant::now();
        let saved = load_save(&path, dir.path(), &SaveOptions::default());
        let model = Model::load(&path).unwrap();
        let inputs = random_inputs(&model, 7);
        let a = run(kind, &path, &inputs);
        let b = run(kind, &saved, &inputs);
        for d in diff_outputs(&a, &b) {
            failures.push(format!("{}: {d}", short(&path)));
        }
        eprintln!("{kind:?} {}: {:.2?}", short(&path), t0.elapsed());
    }
    assert!(
        failures.is_empty(),
        "{kind:?}: saved models differ from the originals:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn roundtrip_bit_identical_under_ort() {
    if require_ort() {
        roundtrip_bit_identical(BackendKind::Ort);
    }
}

#[test]
fn roundtrip_bit_identical_under_tract() {
    roundtrip_bit_identical(BackendKind::Tract);
}

#[test]
fn saved_models_pass_the_onnx_checker() {
    let dir = tempfile::tempdir().unwrap();
    let saved: Vec<PathBuf> = all_models()
        .iter()
        .map(|p| load_save(p, dir.path(), &SaveOptions::default()))
        .collect();
    // External data of the `.dyn` models must still be external (Auto follows the source).
    for p in &saved {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let data = p.with_file_name(format!("{name}.data"));
        assert_eq!(
            data.exists(),
            name.contains(".dyn."),
            "{name}: external data file presence"
        );
    }
    let refs: Vec<&Path> = saved.iter().map(PathBuf::as_path).collect();
    check_models(&refs);
}

/// Clears the external-data bookkeeping of every tensor, so files that store the same bytes
/// in different places compare equal.
fn normalise(mut m: ModelProto) -> ModelProto {
    for_each_tensor_mut(&mut m, &mut |t| {
        t.data_location = None;
        t.external_data.clear();
        Ok(())
    })
    .unwrap();
    m
}

/// Names the parts of two models that differ (empty when equal).
fn proto_diff(a: &ModelProto, b: &ModelProto) -> Vec<String> {
    let mut out = Vec::new();
    let (mut ra, mut rb) = (a.clone(), b.clone());
    let (ga, gb) = (ra.graph.take().unwrap(), rb.graph.take().unwrap());
    macro_rules! cmp {
        ($what:expr, $x:expr, $y:expr) => {
            if $x != $y {
                out.push($what.to_string());
            }
        };
    }
    cmp!("ir_version", ra.ir_version, rb.ir_version);
    cmp!("opset_import", ra.opset_import, rb.opset_import);
    cmp!("producer_name", ra.producer_name, rb.producer_name);
    cmp!("producer_version", ra.producer_version, rb.producer_version);
    cmp!(
        "domain/model_version",
        (ra.domain.clone(), ra.model_version),
        (rb.domain.clone(), rb.model_version)
    );
    cmp!("model doc_string", ra.doc_string, rb.doc_string);
    cmp!("metadata_props", ra.metadata_props, rb.metadata_props);
    cmp!("functions", ra.functions, rb.functions);
    cmp!("model (other fields)", ra, rb);
    cmp!("graph name", ga.name, gb.name);
    cmp!("graph doc_string", ga.doc_string, gb.doc_string);
    cmp!("graph inputs", ga.input, gb.input);
    cmp!("graph outputs", ga.output, gb.output);
    cmp!("graph value_info", ga.value_info, gb.value_info);
    cmp!("graph initializers", ga.initializer, gb.initializer);
    cmp!("graph metadata_props", ga.metadata_props, gb.metadata_props);
    if ga.node.len() != gb.node.len() {
        out.push(format!("{} nodes vs {}", ga.node.len(), gb.node.len()));
    } else {
        for (i, (x, y)) in ga.node.iter().zip(&gb.node).enumerate() {
            if x != y {
                let what = if x.attribute != y.attribute {
                    "attributes"
                } else if (&x.input, &x.output) != (&y.input, &y.output) {
                    "inputs/outputs (order?)"
                } else {
                    "fields"
                };
                out.push(format!(
                    "node #{i} '{}' ({}) vs '{}' ({}): {what}",
                    x.name(),
                    x.op_type(),
                    y.name(),
                    y.op_type()
                ));
            }
        }
    }
    let mut rest_a = ga.clone();
    let mut rest_b = gb.clone();
    for g in [&mut rest_a, &mut rest_b] {
        g.node.clear();
    }
    cmp!("graph (other fields)", rest_a, rest_b);
    out
}

#[test]
fn export_of_import_reproduces_the_proto() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for path in all_models() {
        let original = load_model(&path).unwrap();
        // In memory: export(import(proto)) == proto.
        let exported = export(&import(original.clone()).unwrap()).unwrap();
        for d in proto_diff(&original, &exported) {
            failures.push(format!("{} (export∘import): {d}", short(&path)));
        }
        // Through a file: the saved model decodes to the same proto, tensor bytes included.
        let saved = load_save(&path, dir.path(), &SaveOptions::default());
        let reread = load_model(&saved).unwrap();
        for d in proto_diff(&normalise(original), &normalise(reread)) {
            failures.push(format!("{} (saved file): {d}", short(&path)));
        }
    }
    assert!(
        failures.is_empty(),
        "round trip is not faithful:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn external_data_always_roundtrip() {
    let ort = require_ort();
    let dir = tempfile::tempdir().unwrap();
    let opts = SaveOptions {
        external: ExternalData::Always,
        ..SaveOptions::default()
    };
    let mut failures = Vec::new();
    let mut saved_all = Vec::new();
    for path in all_models() {
        let saved = load_save(&path, dir.path(), &opts);
        let data = saved.with_file_name(format!(
            "{}.data",
            saved.file_name().unwrap().to_string_lossy()
        ));
        assert!(
            data.exists(),
            "{}: no external data file written",
            short(&path)
        );
        // The file must reload into the IR.
        let reloaded =
            Model::load(&saved).unwrap_or_else(|e| panic!("{}: reload: {e}", saved.display()));
        let model = Model::load(&path).unwrap();
        let inputs = random_inputs(&model, 11);
        assert_eq!(
            random_inputs(&reloaded, 11),
            inputs,
            "{}: inputs changed",
            short(&path)
        );
        let small = std::fs::metadata(&path).unwrap().len() < 2_000_000;
        let mut kinds = Vec::new();
        if ort {
            kinds.push(BackendKind::Ort);
        }
        if small {
            kinds.push(BackendKind::Tract);
        }
        for kind in kinds {
            let a = run(kind, &path, &inputs);
            let b = run(kind, &saved, &inputs);
            for d in diff_outputs(&a, &b) {
                failures.push(format!("{} {kind:?}: {d}", short(&path)));
            }
        }
        saved_all.push(saved);
    }
    let refs: Vec<&Path> = saved_all.iter().map(PathBuf::as_path).collect();
    check_models(&refs);
    assert!(
        failures.is_empty(),
        "external-data copies differ from the originals:\n  {}",
        failures.join("\n  ")
    );
}

/// A model with one Identity per dtype: `x_<dtype>` → `y_<dtype>`, shape [2, 3].
fn identity_model(dtypes: &[DType]) -> ModelProto {
    let mut g = GraphProto {
        name: Some("identities".into()),
        ..Default::default()
    };
    for d in dtypes {
        let ty = Some(Fact::new(Some(*d), vec![Dim::Known(2), Dim::Known(3)]).to_type());
        let (x, y) = (format!("x_{d}"), format!("y_{d}"));
        g.input.push(ValueInfoProto {
            name: Some(x.clone()),
            r#type: ty.clone(),
            ..Default::default()
        });
        g.output.push(ValueInfoProto {
            name: Some(y.clone()),
            r#type: ty,
            ..Default::default()
        });
        g.node.push(NodeProto {
            op_type: Some("Identity".into()),
            name: Some(format!("id_{d}")),
            input: vec![x],
            output: vec![y],
            ..Default::default()
        });
    }
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(g),
        ..Default::default()
    }
}

#[test]
fn backends_pass_every_supported_dtype_through() {
    use lopper::runtime::{ort::OrtSession, Session};
    let dtypes = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::I64,
        DType::I32,
        DType::U8,
        DType::Bool,
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identities.onnx");
    save_model(&identity_model(&dtypes), &path, &SaveOptions::default()).unwrap();
    check_model(&path);
    let values: [f64; 6] = [0.5, -1.25, 3.0, 0.0, 7.0, 1.0];
    let inputs: Vec<(String, Tensor)> = dtypes
        .iter()
        .map(|d| {
            let vals: Vec<f64> = values
                .iter()
                .map(|v| if d.is_float() { *v } else { v.abs() })
                .collect();
            (
                format!("x_{d}"),
                Tensor::from_f64_as(*d, vec![2, 3], &vals).unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, Tensor)> = inputs
        .iter()
        .map(|(n, t)| (n.replacen("x_", "y_", 1), t.clone()))
        .collect();
    let mut results = vec![("tract", run(BackendKind::Tract, &path, &inputs))];
    if require_ort() {
        results.push(("ort", run(BackendKind::Ort, &path, &inputs)));
        let mut one_thread = OrtSession::load_with(&path, Some(1)).unwrap();
        assert_eq!(one_thread.backend(), "ort");
        results.push(("ort, 1 thread", one_thread.run(&inputs).unwrap()));
    }
    for (backend, got) in results {
        let d = diff_outputs(&want, &got);
        assert!(d.is_empty(), "{backend}: {d:?}");
    }
}
