//! Cost model against reference figures computed from the PyTorch modules.

use crate::{common, inception_v1, resnet50};

use std::path::PathBuf;

use lopper::analysis::{costs, infer_shapes};
use lopper::ir::Model;

fn model_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/models")
        .join(rel)
}

fn macs_m(model: &Model) -> f64 {
    let shapes = infer_shapes(model).expect("shapes");
    costs(model, &shapes).expect("costs").macs as f64 / 1e6
}

fn assert_macs(rel: &str, want_m: f64) {
    let m = Model::load(model_path(rel)).expect("load");
    let got = macs_m(&m);
    assert!(
        (got - want_m).abs() < 0.006,
        "{rel}: {got:.3} M MACs, reference {want_m} M"
    );
}

#[test]
fn zoo_macs_match_pytorch_references() {
    assert_macs("zoo/mobilenet_v2.bn.onnx", 299.51);
    assert_macs("zoo/shufflenet_v2_x0_5.bn.onnx", 39.46);
    assert_macs("zoo/regnet_x_400mf.bn.onnx", 413.42);
    for flavour in ["bn", "folded", "dyn"] {
        assert_macs(&format!("zoo/cifar_resnet20.{flavour}.onnx"), 40.81);
    }
}

#[test]
fn resnet50_macs_match_torchvision() {
    let m = resnet50::resnet50(1);
    let got = macs_m(&m);
    assert!(
        (got - 4089.18).abs() < 0.006,
        "ResNet-50: {got:.3} M MACs, torchvision 4089.18 M"
    );
    let shapes = infer_shapes(&m).unwrap();
    let c = costs(&m, &shapes).unwrap();
    // torchvision counts 25,557,032 with BN's gamma and beta (2 per channel); folded, each BN
    // leaves one conv bias per channel: 26,560 BN channels fewer.
    assert_eq!(
        c.params,
        25_557_032 - 26_560,
        "ResNet-50 (BN folded) parameters"
    );
}

/// Inception-v1 as the model zoo's caffe2 export has it (LRN, max pools padded at the end):
/// every shape known, the MACs within 1% of its layer table (LRN's windowed sums and the
/// pools are the difference), and `lopper prune` with the defaults writes a verified model.
#[test]
fn inception_v1_is_costed_completely_and_prunes() {
    let m = inception_v1::inception_v1();
    let shapes = infer_shapes(&m).unwrap();
    let c = costs(&m, &shapes).unwrap();
    assert!(
        c.unknown_from.is_empty() && c.unknown_nodes == 0,
        "{:?}",
        c.unknown_from
    );
    let want = inception_v1::LAYER_TABLE_MACS as f64;
    let rel = (c.macs as f64 - want) / want;
    assert!(
        (0.0..0.01).contains(&rel),
        "Inception-v1: {} MACs against the layer table's {want}",
        c.macs
    );
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.onnx"), dir.path().join("out.onnx"));
    m.save(&input, &Default::default()).unwrap();
    let (code, stdout, stderr) = common::run_lopper(&[
        "prune",
        input.to_str().unwrap(),
        "--target",
        "flops=0.5",
        "-o",
        output.to_str().unwrap(),
    ]);
    let text = format!("{stdout}{stderr}");
    assert_eq!(code, 0, "{text}");
    assert!(stdout.lines().any(|l| l.starts_with("verified:")), "{text}");
    let pruned = Model::load(&output).unwrap();
    let kept = macs_m(&pruned) * 1e6 / c.macs as f64;
    assert!((kept - 0.5).abs() < 0.01, "MACs kept {kept:.4}");
    let verdict = text.lines().find(|l| l.contains("verified:"));
    eprintln!(
        "Inception-v1: {} MACs (layer table {want}), pruned to {kept:.4}; {}",
        c.macs,
        verdict.unwrap_or_default()
    );
}

#[test]
fn params_equal_initializer_elements() {
    for rel in [
        "zoo/mobilenet_v2.bn.onnx",
        "zoo/cifar_resnet20.dyn.onnx",
        "pretrained/mnist-8.opt.onnx",
    ] {
        let proto = lopper::onnx::load_model(model_path(rel)).unwrap();
        let want: u64 = proto
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .map(|t| t.dims.iter().product::<i64>() as u64)
            .sum();
        let m = Model::load(model_path(rel)).unwrap();
        let shapes = infer_shapes(&m).unwrap();
        assert_eq!(costs(&m, &shapes).unwrap().params, want, "{rel}");
    }
}
