//! `--target flops=0.5` and `--target params=0.5` on every shared model: the pruned model's
//! real MACs (parameters) land within 0.5 ± 0.005 of the original's, and the equivalence
//! oracle holds under ONNX Runtime and tract. Also: iterative pruning (`steps`) reaches the
//! same budget, and every data-free criterion drives the same search on a real model.

use crate::common;

use common::*;
use lopper::analysis::importance::{CriterionKind, Normalize, Reduce};
use lopper::ir::Model;
use lopper::plan::allocate::{AllocateOptions, Amount, Budget, Constraints};
use lopper::prune::{model_costs, prune, PruneOptions, PruneReport, Scored, Selection};
use lopper::runtime::BackendKind;

fn backends() -> Vec<BackendKind> {
    let mut b = vec![BackendKind::Tract];
    if require_ort() {
        b.insert(0, BackendKind::Ort);
    }
    b
}

fn scored(criterion: CriterionKind, budget: Budget, steps: usize) -> Selection {
    Selection::Scored(Scored {
        criterion,
        reduce: Reduce::Sum,
        normalize: Normalize::Max,
        seed: 7,
        allocate: AllocateOptions {
            amount: Amount::Target(budget),
            constraints: Constraints {
                min_keep_fraction: 0.1,
                ..Default::default()
            },
            ..Default::default()
        },
        steps,
        latency: Default::default(),
        drop_blocks: 0.0,
        drop_search: false,
    })
}

fn run_target(path: &std::path::Path, selection: Selection) -> (Model, PruneReport) {
    let name = short(path);
    let mut model = Model::load(path).unwrap();
    let opts = PruneOptions {
        selection,
        verify_with: backends(),
        tolerance: 1e-4,
    };
    let report = prune(&mut model, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    let oracle = report.oracle.as_ref().expect("verified");
    assert!(oracle.max_rel_error <= 1e-4, "{name}: {:?}", oracle.errors);
    (model, report)
}

fn ratio(pair: (u64, u64)) -> f64 {
    pair.1 as f64 / pair.0 as f64
}

#[test]
fn flops_and_params_targets_land_within_one_percent_on_every_model() {
    for path in all_models() {
        let name = short(&path);
        for (what, budget) in [
            ("flops", Budget::Flops(0.5)),
            ("params", Budget::Params(0.5)),
        ] {
            let (model, report) = run_target(&path, scored(CriterionKind::L1, budget, 1));
            // The report's numbers are the model's real costs, not the allocator's estimate.
            let real = model_costs(&model).unwrap();
            assert_eq!(real.macs, report.macs.1, "{name}");
            assert_eq!(real.params, report.params.1, "{name}");
            let r = match budget {
                Budget::Flops(_) => ratio(report.macs),
                _ => ratio(report.params),
            };
            assert!(
                (r - 0.5).abs() <= 0.005,
                "{name}: {what}=0.5 reached {r:.4}"
            );
            eprintln!("{name}: {what} {r:.4}");
        }
    }
}

#[test]
fn iterative_steps_reach_the_budget_and_every_round_is_verified() {
    let path = shared_dir().join("models/pretrained/resnet20_cifar10.bn.onnx");
    let (_, report) = run_target(&path, scored(CriterionKind::L1, Budget::Flops(0.5), 3));
    assert_eq!(report.steps.len(), 3);
    assert!(report
        .steps
        .iter()
        .all(|s| s.removed > 0 && s.oracle.is_some()));
    // Rounds shrink the model monotonically and the last lands on the budget.
    let macs: Vec<u64> = report.steps.iter().map(|s| s.macs).collect();
    assert!(macs.windows(2).all(|w| w[1] < w[0]), "{macs:?}");
    let r = ratio(report.macs);
    assert!((r - 0.5).abs() <= 0.005, "3 rounds reached {r:.4}");
    assert_eq!(report.plan.steps.len(), 3);
}

#[test]
fn every_data_free_criterion_meets_the_target_on_resnet56() {
    let path = shared_dir().join("models/pretrained/resnet56_cifar10.bn.onnx");
    let mut removed = Vec::new();
    for c in [
        "l1",
        "l2",
        "bn-scale",
        "fpgm",
        "lamp",
        "random",
        "epruner",
        "multi:l1=0.5,bn-scale=0.5",
    ] {
        let kind = CriterionKind::parse(c).unwrap();
        let (_, report) = run_target(&path, scored(kind, Budget::Flops(0.5), 1));
        let r = ratio(report.macs);
        assert!((r - 0.5).abs() <= 0.005, "{c}: {r:.4}");
        assert_eq!(report.criterion, c);
        let plan: Vec<Vec<usize>> = report.plan.steps[0]
            .groups
            .iter()
            .map(|g| g.removed.clone())
            .collect();
        removed.push((c, plan));
    }
    // Different criteria choose different channels.
    let l1 = &removed[0].1;
    for (c, plan) in &removed[1..] {
        assert_ne!(plan, l1, "{c} removed exactly what l1 removed");
    }
}
