//! Golden IR text dumps: the import and each simplify stage of real models, compared with the
//! files in `fixtures/golden/`. Regenerate after an intended change with `UPDATE_GOLDEN=1`.

use crate::common;

use std::path::PathBuf;

use lopper::analysis::infer_shapes;
use lopper::ir::{display::dump, Model};
use lopper::passes::{simplify, SimplifyOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(name: &str, model: &Model) {
    let shapes = infer_shapes(model).expect("shapes");
    common::check_golden(name, &dump(&model.graph, Some(shapes.as_slice())));
}

#[test]
fn mnist8_import_and_simplify() {
    let mut m = Model::load(root().join("../shared/models/pretrained/mnist-8.onnx")).unwrap();
    check("mnist-8.import", &m);
    simplify(&mut m, &SimplifyOptions::default()).unwrap();
    check("mnist-8.simplify", &m);
}

#[test]
fn resnet20_bn_simplify_keep_bn_and_fold() {
    let mut m = Model::load(root().join("../shared/models/zoo/cifar_resnet20.bn.onnx")).unwrap();
    simplify(
        &mut m,
        &SimplifyOptions {
            keep_batch_norm: true,
            ..Default::default()
        },
    )
    .unwrap();
    check("cifar_resnet20.bn.simplify-keep-bn", &m);
    simplify(&mut m, &SimplifyOptions::default()).unwrap();
    check("cifar_resnet20.bn.simplify", &m);
}
