//! The masked cost model against the real thing: on every shared model, for the L1 ratio plan
//! and random removal sets, [`MaskedCost::estimate`] equals `costs()` of the model after
//! `remove_channels` (MACs and parameters exactly: random removal of weight channels adds no
//! compensation constants). Also times one estimate on ResNet-50.

use crate::common;

use crate::resnet50;

use common::*;
use lopper::analysis::channels::ChannelGroups;
use lopper::analysis::{costs, importance, infer_shapes, MaskedCost};
use lopper::ir::Model;
use lopper::passes::remove_channels;
use lopper::plan::plan_ratio;
use lopper::prune::analyse;

/// Random classes of prunable groups (each kept with probability `p`), never emptying a tensor
/// or a group, skipping constant channels (their removal may add compensation constants).
fn random_removal(groups: &ChannelGroups, rng: &mut Rng, p: f64) -> Vec<usize> {
    let mut candidates = Vec::new();
    for grp in groups.groups.iter().filter(|g| g.prunable()) {
        let constant: Vec<usize> = grp
            .sources
            .iter()
            .filter(|s| s.constant)
            .flat_map(|s| s.atoms.iter().map(|a| groups.class_of[*a]))
            .collect();
        let mut mine: Vec<usize> = grp
            .classes
            .iter()
            .copied()
            .filter(|c| !constant.contains(c))
            .filter(|_| (rng.uniform() + 1.0) / 2.0 < p)
            .collect();
        if mine.len() == grp.classes.len() {
            mine.pop();
        }
        candidates.extend(mine);
    }
    groups.take_without_emptying(candidates)
}

fn check(name: &str, model: &Model, groups: &ChannelGroups, classes: &[usize]) {
    let shapes = infer_shapes(model).unwrap();
    let est = MaskedCost::new(model, groups, &shapes).unwrap();
    let before = costs(model, &shapes).unwrap();
    assert_eq!(
        est.original(),
        (before.macs, before.params),
        "{name}: original"
    );
    let got = est.estimate_classes(classes);
    let mut pruned = model.clone();
    remove_channels(&mut pruned, groups, &shapes, classes)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let after = costs(&pruned, &infer_shapes(&pruned).unwrap()).unwrap();
    assert_eq!(
        got,
        (after.macs, after.params),
        "{name}: estimate vs pruned model ({} classes removed)",
        classes.len()
    );
}

#[test]
fn estimate_equals_pruned_costs_on_every_shared_model() {
    for path in all_models() {
        let name = short(&path);
        let mut model = Model::load(&path).unwrap();
        let groups = analyse(&mut model).unwrap();
        let scores = importance::l1_scores(&model, &groups);
        let plan = plan_ratio(&groups, &scores, 0.4).unwrap();
        check(&format!("{name} ratio 0.4"), &model, &groups, &plan);
        let mut rng = Rng::new(name.len() as u64);
        for (i, p) in [0.2, 0.6].into_iter().enumerate() {
            let classes = random_removal(&groups, &mut rng, p);
            check(&format!("{name} random #{i}"), &model, &groups, &classes);
        }
    }
}

#[test]
fn one_estimate_on_resnet50_is_fast() {
    let mut model = resnet50::resnet50(1);
    let groups = analyse(&mut model).unwrap();
    let shapes = infer_shapes(&model).unwrap();
    let est = MaskedCost::new(&model, &groups, &shapes).unwrap();
    let mut rng = Rng::new(5);
    let classes = random_removal(&groups, &mut rng, 0.5);
    let mut removed = vec![false; est.classes()];
    for &c in &classes {
        removed[c] = true;
    }
    let runs = 50;
    let start = std::time::Instant::now();
    let mut last = (0, 0);
    for _ in 0..runs {
        last = est.estimate(std::hint::black_box(&removed));
    }
    let per = start.elapsed() / runs;
    eprintln!(
        "ResNet-50: {} classes, one estimate {per:?} ({:.3} of MACs kept)",
        est.classes(),
        last.0 as f64 / est.original().0 as f64
    );
    assert!(last.0 < est.original().0);
    // Generous bound for unoptimised builds; a release build is far below a millisecond.
    assert!(per.as_millis() < 50, "one estimate took {per:?}");
}
