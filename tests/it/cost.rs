//! Cost model against reference figures computed from the PyTorch modules.

use crate::resnet50;

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
