//! Channel pruning on every shared model (zoo and pretrained): simplify (BatchNormalization
//! kept), analyse the channel groups, remove every third class of every prunable group, and
//! check with the equivalence oracle under tract that the pruned model computes what the
//! original computes with the removed channels silenced (relative error ≤ 1e-4), at its
//! outputs and at the values inside it, and that the check was exercised (the random-weight
//! exports' outputs do not depend on their input; values inside them do). Every model
//! must have prunable groups, and every blocked group must be blocked for an expected reason
//! (its channels reach a graph output: the classifier's logits, or a model-specific one).

use crate::common;

use std::collections::BTreeMap;

use common::*;
use lopper::analysis::channels::ChannelGroups;
use lopper::analysis::{channel_groups, infer_shapes};
use lopper::ir::Model;
use lopper::oracle::{compare, compare_reduced, masked_original, probes};
use lopper::passes::{remove_channels, simplify, SimplifyOptions};
use lopper::runtime::BackendKind;

/// Largest relative output error the oracle accepts.
const TOLERANCE: f64 = 1e-4;

/// A shared model pruned: the original (simplified), its groups, the classes removed (every
/// third of every prunable group) and the pruned model.
struct Pruned {
    name: String,
    original: Model,
    groups: ChannelGroups,
    classes: Vec<usize>,
    pruned: Model,
}

/// Analyses and prunes `file` (under `../shared/models`) and checks it; blocked reasons must
/// contain "reach graph output" or one of `allowed`.
fn prune_model(file: &str, allowed: &[&str]) {
    let Pruned {
        name,
        original,
        groups,
        classes,
        mut pruned,
    } = pruned(file, allowed);
    let probes = probes(&original, &groups, &classes, &pruned);
    let masked = masked_original(&original, &groups, &classes)
        .unwrap_or_else(|e| panic!("{name}: masked original: {e}"));
    let cmp = compare_reduced(masked, &mut pruned, &probes, &[BackendKind::Tract], 2, 3)
        .unwrap_or_else(|e| panic!("{name}: oracle: {e}"));
    let inside = cmp.inside.as_ref().expect("values compared inside");
    eprintln!(
        "{name}: removed {} classes, oracle max relative error {:.2e}; {} of {} probes compared, {} varying",
        classes.len(),
        cmp.max_rel_error,
        inside.compared,
        probes.len(),
        inside.varying
    );
    assert!(
        cmp.max_rel_error <= TOLERANCE,
        "{name}: pruned model differs from the masked original by {:e}",
        cmp.max_rel_error
    );
    assert!(
        cmp.exercised(),
        "{name}: the random inputs exercised nothing"
    );
    assert!(inside.compared > 0, "{name}: nothing compared inside");
}

/// [`Pruned`] for `file`, its blocked reasons checked as [`prune_model`] says.
fn pruned(file: &str, allowed: &[&str]) -> Pruned {
    let path = shared_dir().join("models").join(file);
    let name = short(&path);
    let mut model = Model::load(&path).unwrap_or_else(|e| panic!("{name}: load: {e}"));
    let opts = SimplifyOptions {
        keep_batch_norm: true,
        verify: true,
        ..Default::default()
    };
    simplify(&mut model, &opts).unwrap_or_else(|e| panic!("{name}: simplify: {e}"));
    let shapes = infer_shapes(&model).unwrap_or_else(|e| panic!("{name}: shapes: {e}"));
    let groups = channel_groups(&model, &shapes).unwrap_or_else(|e| panic!("{name}: groups: {e}"));
    let prunable: Vec<_> = groups.groups.iter().filter(|g| g.prunable()).collect();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for g in groups.groups.iter().filter(|g| !g.blocked.is_empty()) {
        for r in &g.blocked {
            *reasons.entry(r.clone()).or_default() += 1;
        }
    }
    eprintln!(
        "{name}: {} groups, {} prunable ({} channels), {} blocked",
        groups.groups.len(),
        prunable.len(),
        prunable.iter().map(|g| g.channels).sum::<usize>(),
        groups
            .groups
            .iter()
            .filter(|g| !g.blocked.is_empty())
            .count()
    );
    for (r, n) in &reasons {
        eprintln!("  blocked ×{n}: {r}");
    }
    let unexpected: Vec<&String> = reasons
        .keys()
        .filter(|r| !r.contains("reach graph output") && !allowed.iter().any(|a| r.contains(a)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{name}: unexpected blocks: {unexpected:?}"
    );
    assert!(!prunable.is_empty(), "{name}: no prunable group");
    let classes: Vec<usize> = prunable
        .iter()
        .flat_map(|g| g.classes.iter().copied().skip(1).step_by(3))
        .collect();
    let original = model.clone();
    remove_channels(&mut model, &groups, &shapes, &classes)
        .unwrap_or_else(|e| panic!("{name}: remove_channels: {e}"));
    Pruned {
        name,
        original,
        groups,
        classes,
        pruned: model,
    }
}

/// A random-weight export's outputs do not depend on its input (mobilenet_v2's vary by about
/// 1e-7), so comparing them alone misses a mistake in an early layer: the layer's output is
/// forgotten a few blocks later. Comparing the values inside finds it and names it.
#[test]
fn a_mistake_the_outputs_hide_is_found_inside() {
    let Pruned {
        name,
        original,
        groups,
        classes,
        pruned,
    } = pruned("zoo/mobilenet_v2.bn.onnx", &[]);
    let probes = probes(&original, &groups, &classes, &pruned);
    let masked = masked_original(&original, &groups, &classes).unwrap();
    let tract = [BackendKind::Tract];
    // The pruned model of an early block's expansion, off by 1% in every filter.
    let mut wrong = pruned.clone();
    let at = common::scale_block2_expansion(&mut wrong);

    let outputs_only = compare(&masked, &wrong, &tract, 2, 3).unwrap();
    eprintln!(
        "{name}: outputs alone: error {:.1e}, variation {:?}",
        outputs_only.max_rel_error, outputs_only.variation
    );
    assert!(
        !outputs_only.exercised(),
        "the outputs vary: nothing to show"
    );
    let right =
        compare_reduced(masked.clone(), &mut pruned.clone(), &probes, &tract, 2, 3).unwrap();
    assert!(right.max_rel_error <= TOLERANCE && right.exercised());
    let found = compare_reduced(masked, &mut wrong, &probes, &tract, 2, 3).unwrap();
    let inside = found.inside.as_ref().unwrap();
    let first = inside.first_over(TOLERANCE).expect("the mistake is found");
    assert_eq!(first.0, at, "named where it is made");
    assert!(found.max_rel_error > 5e-3, "{:e}", found.max_rel_error);
}

macro_rules! prune_tests {
    ($($test:ident: $file:expr $(, allow $reason:expr)?;)*) => {
        $(
            #[test]
            fn $test() {
                prune_model($file, &[$($reason)?]);
            }
        )*

        /// The files the tests above cover.
        const FILES: &[&str] = &[$($file),*];
    };
}

#[test]
fn every_shared_model_has_a_test() {
    for path in all_models() {
        let name = short(&path);
        assert!(FILES.contains(&name.as_str()), "{name} has no pruning test");
    }
}

prune_tests! {
    zoo_cifar_resnet20_bn: "zoo/cifar_resnet20.bn.onnx";
    zoo_cifar_resnet20_dyn: "zoo/cifar_resnet20.dyn.onnx";
    zoo_cifar_resnet20_folded: "zoo/cifar_resnet20.folded.onnx";
    zoo_cifar_vgg16_half_bn: "zoo/cifar_vgg16_half.bn.onnx";
    zoo_efficientnet_b0_bn: "zoo/efficientnet_b0.bn.onnx";
    zoo_mobilenet_v2_bn: "zoo/mobilenet_v2.bn.onnx";
    zoo_mobilenet_v3_small_bn: "zoo/mobilenet_v3_small.bn.onnx";
    zoo_mobilenet_v3_small_dyn: "zoo/mobilenet_v3_small.dyn.onnx";
    zoo_regnet_x_400mf_bn: "zoo/regnet_x_400mf.bn.onnx";
    zoo_shufflenet_v2_x0_5_bn: "zoo/shufflenet_v2_x0_5.bn.onnx";
    zoo_squeezenet1_1_folded: "zoo/squeezenet1_1.folded.onnx";
    pretrained_mnist_8: "pretrained/mnist-8.onnx";
    pretrained_mnist_8_opt: "pretrained/mnist-8.opt.onnx";
    pretrained_resnet20_cifar10_bn: "pretrained/resnet20_cifar10.bn.onnx";
    pretrained_resnet20_cifar10_folded: "pretrained/resnet20_cifar10.folded.onnx";
    pretrained_resnet56_cifar10_bn: "pretrained/resnet56_cifar10.bn.onnx";
    pretrained_resnet56_cifar10_folded: "pretrained/resnet56_cifar10.folded.onnx";
    // The logits go through a Softmax before the output.
    pretrained_squeezenet_cifar10_nhwc: "pretrained/squeezenet_cifar10.nhwc.onnx",
        allow "softmax over the channel axis";
}
