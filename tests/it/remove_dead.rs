//! `--remove-dead`: channels zeroed by hand (BatchNormalization gamma = 0 with beta ≠ 0, as
//! sparse training leaves them) are removed exactly: outputs equal the ORIGINAL's (not a
//! masked copy) within 1e-5, and the parameter count is exactly the expected one.

use crate::common;

use lopper::analysis::{costs, infer_shapes};
use lopper::ir::{Model, Tensor};
use lopper::oracle::{available_backends, compare};
use lopper::prune::{prune, PruneOptions, PruneReport, Selection};

/// Sets gamma = 0 and beta = `betas[i]` for channels `chans[i]` of BN node `bn`.
fn kill_channels(model: &mut Model, bn: &str, chans: &[usize], betas: &[f32]) {
    let g = &mut model.graph;
    let n = g
        .node_ids()
        .find(|n| g.node(*n).name == bn)
        .unwrap_or_else(|| panic!("no node {bn}"));
    let (gamma, beta) = (g.node(n).input(1).unwrap(), g.node(n).input(2).unwrap());
    let mut gv = g.init(gamma).unwrap().to_f32_vec().unwrap();
    let mut bv = g.init(beta).unwrap().to_f32_vec().unwrap();
    for (&c, &b) in chans.iter().zip(betas) {
        gv[c] = 0.0;
        bv[c] = b;
    }
    let len = gv.len();
    g.set_init(gamma, Tensor::from_f32(vec![len], &gv));
    g.set_init(beta, Tensor::from_f32(vec![len], &bv));
}

fn params(m: &Model) -> u64 {
    costs(m, &infer_shapes(m).unwrap()).unwrap().params
}

/// `--remove-dead` on a copy of `model`, unverified: the pruned model and the report.
fn prune_dead_report(model: &Model) -> (Model, PruneReport) {
    let mut pruned = model.clone();
    let opts = PruneOptions {
        selection: Selection::Dead,
        verify_with: vec![],
        tolerance: 1e-5,
    };
    let report = prune(&mut pruned, &opts).expect("prune --remove-dead");
    (pruned, report)
}

fn prune_dead(model: &Model) -> (Model, usize) {
    let (pruned, report) = prune_dead_report(model);
    (pruned, report.removed)
}

#[test]
fn dead_channels_before_the_classifier_are_removed_exactly() {
    let path = common::shared_dir().join("models/zoo/cifar_vgg16_half.bn.onnx");
    let mut model = Model::load(&path).unwrap();
    let chans = [3usize, 17, 100, 255];
    // Positive, negative (ReLU gives 0) and large betas.
    kill_channels(
        &mut model,
        "/41/BatchNormalization",
        &chans,
        &[0.7, -0.3, 1.5, 0.05],
    );
    let before = params(&model);
    let (pruned, removed) = prune_dead(&model);
    assert_eq!(removed, chans.len(), "exactly the zeroed channels are dead");
    // Per channel: conv /40 filter (256·3·3) and bias, BN's 4 parameters, the Gemm's 10 weights.
    let per_channel = 256 * 9 + 1 + 4 + 10;
    assert_eq!(params(&pruned), before - (chans.len() * per_channel) as u64);
    let cmp = compare(&model, &pruned, &available_backends(), 3, 11).unwrap();
    assert!(
        cmp.max_rel_error <= 1e-5,
        "outputs differ from the original: {:?}",
        cmp.errors
    );
}

/// A padded 3x3 conv absorbs a dead channel's constant only as a map over its output (the
/// borders see fewer taps). In ResNet-20's first stage that map ([16, 32, 32] = 16,384 values)
/// outweighs what removing the channels saves (4 × 292), so they are kept, with a note, and
/// the model does not grow.
#[test]
fn dead_channels_are_kept_where_their_border_map_costs_more_than_they_save() {
    let path = common::shared_dir().join("models/zoo/cifar_resnet20.bn.onnx");
    let mut model = Model::load(&path).unwrap();
    let chans = [0usize, 3, 5, 7];
    kill_channels(
        &mut model,
        "/layers/layers.0/b1/BatchNormalization",
        &chans,
        &[0.5, -0.2, 0.3, 1.0],
    );
    let before = params(&model);
    let (pruned, report) = prune_dead_report(&model);
    // ReLU(-0.2) = 0: that channel's constant is zero, so it needs no map and goes.
    assert_eq!(report.removed, 1, "{:?}", report.notes);
    assert!(params(&pruned) < before);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("kept 3 dead channel(s)") && n.contains("16384-value output map")),
        "{:?}",
        report.notes
    );
}

/// Where the map is small (VGG's 2x2 stage: [256, 2, 2] = 1,024 values against 4,612
/// parameters per channel), the dead channels go, the map is added at the borders, the model
/// shrinks by exactly the difference and still computes the original's outputs.
#[test]
fn dead_channels_inside_a_padded_stage_are_compensated_at_the_borders() {
    let path = common::shared_dir().join("models/zoo/cifar_vgg16_half.bn.onnx");
    let mut model = Model::load(&path).unwrap();
    let chans = [0usize, 3, 5, 7];
    kill_channels(
        &mut model,
        "/35/BatchNormalization",
        &chans,
        &[0.5, -0.2, 0.3, 1.0],
    );
    let before = params(&model);
    let (pruned, removed) = prune_dead(&model);
    assert_eq!(removed, chans.len());
    // Removed: conv /34 filters (256·3·3) and bias, BN (4), conv /37 input slices (256·3·3);
    // added: one [256, 2, 2] border map.
    let removed_params = chans.len() * (256 * 9 + 1 + 4 + 256 * 9);
    assert_eq!(
        params(&pruned),
        before - removed_params as u64 + 256 * 2 * 2
    );
    let cmp = compare(&model, &pruned, &available_backends(), 3, 5).unwrap();
    assert!(
        cmp.max_rel_error <= 1e-5,
        "outputs differ from the original: {:?}",
        cmp.errors
    );
}

/// `--remove-dead` never grows a model: ResNet-56 with the first channels of every BN of the
/// first stage zeroed (the case that grew it from 860,026 to 869,674 parameters).
#[test]
fn remove_dead_never_grows_a_model() {
    let path = common::shared_dir().join("models/pretrained/resnet56_cifar10.bn.onnx");
    let mut model = Model::load(&path).unwrap();
    let bns: Vec<String> = model
        .graph
        .node_ids()
        .map(|n| model.graph.node(n).name.clone())
        .filter(|n| n.contains("layer1") && n.ends_with("BatchNormalization"))
        .collect();
    assert!(!bns.is_empty());
    for bn in &bns {
        kill_channels(&mut model, bn, &[0, 1, 2], &[0.3, 0.6, 0.9]);
    }
    let before = params(&model);
    let (_, report) = prune_dead_report(&model);
    // Against the simplified input the pipeline starts from (simplification turns Constant
    // nodes into initializers, which count as parameters).
    let (from, to) = report.params;
    assert!(
        to <= from && from <= before + 64,
        "{from} -> {to} (file {before}): removed {}, notes {:?}",
        report.removed,
        report.notes
    );
    assert!(report.notes.iter().any(|n| n.contains("dead channel(s)")));
}

#[test]
fn a_model_without_dead_channels_is_unchanged() {
    let path = common::shared_dir().join("models/zoo/cifar_resnet20.bn.onnx");
    let model = Model::load(&path).unwrap();
    let (_, removed) = prune_dead(&model);
    assert_eq!(removed, 0);
}

#[test]
fn near_zero_gammas_are_snapped_and_removed_with_their_constant_folded_in() {
    let path = common::shared_dir().join("models/zoo/cifar_resnet20.bn.onnx");
    let mut model = Model::load(&path).unwrap();
    let chans = [1usize, 2, 9];
    kill_channels(
        &mut model,
        "/layers/layers.0/b1/BatchNormalization",
        &chans,
        &[0.4, 0.8, -0.5],
    );
    // Not exactly zero: what sparse training leaves behind.
    {
        let g = &mut model.graph;
        let n = g
            .node_ids()
            .find(|n| g.node(*n).name == "/layers/layers.0/b1/BatchNormalization")
            .unwrap();
        let gamma = g.node(n).input(1).unwrap();
        let mut gv = g.init(gamma).unwrap().to_f32_vec().unwrap();
        for (&c, s) in chans.iter().zip([1e-5f32, -3e-5, 2e-5]) {
            gv[c] = s;
        }
        let len = gv.len();
        g.set_init(gamma, Tensor::from_f32(vec![len], &gv));
    }
    // Plain --remove-dead sees no exactly-dead channel.
    assert_eq!(prune_dead(&model).1, 0);
    let mut pruned = model.clone();
    let opts = PruneOptions {
        selection: Selection::DeadBelow(1e-3),
        verify_with: available_backends(),
        tolerance: 1e-4,
    };
    let report = prune(&mut pruned, &opts).unwrap();
    // Channel 9's constant is ReLU(-0.5) = 0; 1 and 2 would need a [16, 32, 32] border map,
    // larger than what they save, so they stay.
    assert_eq!(report.removed, 1, "{:?}", report.notes);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("kept 2 dead channel(s)")),
        "{:?}",
        report.notes
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("3 BatchNormalization gamma")),
        "{:?}",
        report.notes
    );
    // Against the original (not a masked copy): only the dropped gammas' tiny contribution differs.
    let cmp = compare(&model, &pruned, &available_backends(), 3, 5).unwrap();
    assert!(cmp.max_rel_error <= 1e-3, "{:?}", cmp.errors);
}
