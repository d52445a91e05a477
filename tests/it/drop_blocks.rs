//! Depth pruning (`--drop-blocks`): whole residual branches go before the width rounds. On
//! real models the budget still lands within ±1%, every branch drop is verified by the
//! equivalence oracle on both runtimes, the graph loses the branches' nodes (their sums and
//! the Relus after them included), a plan replays
//! it byte for byte, models without residual sums are left to the width rounds, and a model
//! with dropped branches trains in `lopper compress`.

use crate::common;

use common::*;
use lopper::analysis::importance::CriterionKind;
use lopper::ir::Model;
use lopper::plan::allocate::{Amount, Budget};
use lopper::prune::{model_costs, prune, PruneOptions, PruneReport, Scored, Selection};
use lopper::runtime::BackendKind;

fn backends() -> Vec<BackendKind> {
    let mut b = vec![BackendKind::Tract];
    if require_ort() {
        b.insert(0, BackendKind::Ort);
    }
    b
}

fn dropping(budget: Budget, share: f64) -> Selection {
    let mut s = Scored::new(CriterionKind::L1, Amount::Target(budget));
    s.drop_blocks = share;
    Selection::Scored(s)
}

fn run(path: &std::path::Path, selection: Selection) -> (Model, PruneReport) {
    let mut model = Model::load(path).unwrap();
    let opts = PruneOptions {
        selection,
        verify_with: backends(),
        tolerance: 1e-4,
    };
    let name = short(path);
    let report = prune(&mut model, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    (model, report)
}

fn dropped(report: &PruneReport) -> usize {
    let note = report
        .notes
        .iter()
        .find(|n| n.contains("removable branch"))
        .unwrap_or_else(|| panic!("no branch note in {:?}", report.notes));
    note.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn dropped_branches_meet_the_budget_and_pass_the_oracle() {
    for (path, budget) in [
        (
            shared_dir().join("models/pretrained/resnet56_cifar10.bn.onnx"),
            Budget::Flops(0.5),
        ),
        (
            shared_dir().join("models/zoo/regnet_x_400mf.bn.onnx"),
            Budget::Flops(0.5),
        ),
        (
            shared_dir().join("models/pretrained/resnet20_cifar10.folded.onnx"),
            Budget::Params(0.6),
        ),
    ] {
        let name = short(&path);
        let (width, _) = run(&path, dropping(budget, 0.0));
        let (model, report) = run(&path, dropping(budget, 1.0));
        let n = dropped(&report);
        assert!(n >= 3, "{name}: {n} branches dropped");
        // The drop is a round of its own, verified like any other.
        assert_eq!(report.steps.len(), 2, "{name}");
        for s in &report.steps {
            let o = s.oracle.as_ref().expect("verified");
            assert!(o.max_rel_error <= 1e-4, "{name}: {:?}", o.errors);
        }
        let real = model_costs(&model).unwrap();
        let r = match budget {
            Budget::Flops(b) => real.macs as f64 / report.macs.0 as f64 - b,
            Budget::Params(b) => real.params as f64 / report.params.0 as f64 - b,
            Budget::Latency(_) => unreachable!(),
        };
        assert!(r.abs() <= 0.01, "{name}: off the budget by {r:.4}");
        // The branches' layers are gone, not narrowed.
        let layers = |m: &Model| {
            m.graph
                .node_ids()
                .filter(|n| m.graph.node(*n).op_type == "Conv")
                .count()
        };
        assert!(
            layers(&model) + 2 * n <= layers(&width),
            "{name}: {} convolutions with {n} branches dropped, {} without",
            layers(&model),
            layers(&width)
        );
        // Their sums go too (a dropped branch adds nothing), and so does each Relu left
        // reading another Relu's output: nothing is left for the runtime to run in their place.
        let count = |m: &Model, op: &str| {
            m.graph
                .node_ids()
                .filter(|n| m.graph.node(*n).op_type == op)
                .count()
        };
        assert!(
            count(&model, "Add") + n <= count(&width, "Add"),
            "{name}: {} sums with {n} branches dropped, {} without",
            count(&model, "Add"),
            count(&width, "Add")
        );
        let g = &model.graph;
        for id in g.node_ids().filter(|n| g.node(*n).op_type == "Relu") {
            let x = g.node(id).inputs[0].unwrap();
            let producer = g.value(x).producer.map(|(p, _)| g.node(p).op_type.clone());
            assert_ne!(
                producer.as_deref(),
                Some("Relu"),
                "{name}: a Relu of a Relu"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("pruned.onnx");
        model.save(&saved, &Default::default()).unwrap();
        check_model(&saved);
    }
}

#[test]
fn a_plan_replays_dropped_branches_byte_for_byte() {
    let path = shared_dir().join("models/pretrained/resnet20_cifar10.bn.onnx");
    let (first, report) = run(&path, dropping(Budget::Flops(0.5), 0.75));
    assert!(dropped(&report) > 0);
    let (again, _) = run(&path, Selection::Plan(report.plan.clone()));
    let bytes = |m: &Model| {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.onnx");
        m.save(&p, &Default::default()).unwrap();
        std::fs::read(&p).unwrap()
    };
    assert_eq!(bytes(&first), bytes(&again));
    // The same options give the same bytes too (the strengths' probe run is seeded).
    let (third, _) = run(&path, dropping(Budget::Flops(0.5), 0.75));
    assert_eq!(bytes(&first), bytes(&third));
}

#[test]
fn models_without_residual_sums_prune_by_width_alone() {
    for rel in [
        "models/pretrained/mnist-8.onnx",
        "models/zoo/shufflenet_v2_x0_5.bn.onnx",
    ] {
        let path = shared_dir().join(rel);
        let (_, report) = run(&path, dropping(Budget::Flops(0.5), 1.0));
        assert_eq!(dropped(&report), 0, "{rel}");
        assert_eq!(report.steps.len(), 1, "{rel}");
        let r = report.macs.1 as f64 / report.macs.0 as f64;
        assert!((r - 0.5).abs() <= 0.01, "{rel}: {r:.4}");
    }
    // An SE block's gate (a Mul) is not a branch: EfficientNet drops only residual sums.
    let path = shared_dir().join("models/zoo/efficientnet_b0.bn.onnx");
    let model = Model::load(&path).unwrap();
    let (_, report) = run(&path, dropping(Budget::Flops(0.5), 1.0));
    let sums = model
        .graph
        .node_ids()
        .filter(|n| model.graph.node(*n).op_type == "Add")
        .count();
    assert!(dropped(&report) <= sums, "{:?}", report.notes);
}

#[test]
fn drop_blocks_needs_a_target_and_a_share() {
    let r20 = shared_dir().join("models/pretrained/resnet20_cifar10.bn.onnx");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.onnx");
    for extra in [
        &["--ratio", "0.3", "--drop-blocks", "0.5"][..],
        &["--target", "flops=0.5", "--drop-blocks", "1.5"][..],
    ] {
        let mut args = vec!["prune", r20.to_str().unwrap(), "-o", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (code, _, err) = run_lopper(&args);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains("drop-blocks"), "{extra:?}: {err}");
        assert!(!out.exists());
    }
}

#[test]
fn a_model_with_dropped_branches_recovers_in_compress() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r20.deep.onnx");
    let report = dir.path().join("r.json");
    let r20 = shared_dir().join("models/pretrained/resnet20_cifar10.bn.onnx");
    let data = format!(
        "npz:{}",
        shared_dir()
            .join("data/cifar10/lossless-subset.npz")
            .display()
    );
    let args = [
        "compress",
        r20.to_str().unwrap(),
        "--data",
        &data,
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
        "--target",
        "flops=0.5",
        "--drop-blocks",
        "1",
        "--limit",
        "1600",
        "--batch-size",
        "64",
        "--eval-limit",
        "300",
        "--epochs",
        "2",
        "--no-latency",
        "--report",
        report.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    let (code, stdout, err) = run_lopper(&args);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let stages = r["stages"].as_array().unwrap();
    let top1 = |k: usize| stages[k]["top1"].as_f64().unwrap();
    let last = stages.len() - 1;
    assert!(
        top1(last) > top1(1) + 0.15,
        "recovery after dropping branches: {stdout}"
    );
    for s in stages {
        assert!(s["loss"].as_f64().unwrap().is_finite(), "{stdout}");
    }
    let kept = stages[1]["macs"].as_f64().unwrap() / stages[0]["macs"].as_f64().unwrap();
    assert!((kept - 0.5).abs() < 0.01, "MACs kept {kept}");
    check_model(&out);
}
