//! `lopper compress --method`: each published method on a small ResNet-20 case (the lossless
//! CIFAR-10 subset, a few steps per stage) runs the stages it names, meets the budget, ships
//! a model the checker, ONNX Runtime and tract accept, and gives the same bytes twice; the
//! BN-free mnist-8 runs the methods that fall back to filter norms; `--dry-run` lists the
//! stages without data.

use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use lopper::ir::Model;
use lopper::runtime::BackendKind;

use common::run_lopper as lopper;

fn shared(rel: &str) -> String {
    shared_dir().join(rel).display().to_string()
}

fn resnet20() -> String {
    shared("models/pretrained/resnet20_cifar10.bn.onnx")
}

/// A small run of `method` on ResNet-20 (384 training samples per epoch at batch 64, two
/// epochs in all, 200 held-out samples to evaluate on and 200 to score candidates) writing `out` and its report; returns the report.
fn run_method(method: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let report = PathBuf::from(format!("{}.json", out.display()));
    let data = format!("npz:{}", shared("data/cifar10/lossless-subset.npz"));
    let (out_s, report_s) = (out.display().to_string(), report.display().to_string());
    let mut args = vec![
        "compress",
        &resnet20(),
        "--data",
        &data,
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
        "--method",
        method,
        "--limit",
        "384",
        "--batch-size",
        "64",
        "--epochs",
        "2",
        "--eval-limit",
        "200",
        "--calibration-samples",
        "128",
        "--inherit-steps",
        "5",
        "--mend-evaluations",
        "5",
        "--holdout",
        "200",
        "--no-latency",
        "--report",
        &report_s,
        "-o",
        &out_s,
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, err) = lopper(&argv);
    assert_eq!(code, 0, "--method {method}: {err}");
    eprintln!("{stdout}");
    serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
}

fn stage_names(r: &serde_json::Value) -> Vec<String> {
    r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect()
}

fn macs_kept(r: &serde_json::Value) -> f64 {
    let s = r["stages"].as_array().unwrap();
    s.last().unwrap()["macs"].as_f64().unwrap() / s[0]["macs"].as_f64().unwrap()
}

/// The checker accepts `out`, both runtimes run it and agree.
fn shipped_model_runs(out: &Path) {
    check_model(out);
    let model = Model::load(out).unwrap();
    let inputs = common::random_inputs(&model, 3);
    let (a, b) = (
        run(BackendKind::Ort, out, &inputs),
        run(BackendKind::Tract, out, &inputs),
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let e = lopper::oracle::rel_error(name, x, y).unwrap();
        assert!(e < 1e-4, "{name}: ORT and tract differ by {e:e}");
    }
}

#[test]
fn sparse_methods_train_sparse_prune_and_recover_within_the_budget() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for method in ["slimming", "masksparsity"] {
        let out = dir.path().join(format!("{method}.onnx"));
        let r = run_method(method, &out, &["--target", "flops=0.5"]);
        assert_eq!(stage_names(&r), ["original", "sparse", "prune", "kd"]);
        let kept = macs_kept(&r);
        assert!((kept - 0.5).abs() <= 0.01, "{method}: MACs kept {kept}");
        let stages = r["stages"].as_array().unwrap();
        let note = stages[1]["note"].as_str().unwrap();
        assert!(note.starts_with("1 epochs, L1"), "{method}: {note}");
        // The sparse stage trained: the weights changed, the architecture did not.
        assert_eq!(stages[1]["macs"], stages[0]["macs"]);
        let prune_note = stages[2]["note"].as_str().unwrap();
        if method == "masksparsity" {
            assert!(
                prune_note.contains("the sparse stage's mask"),
                "{prune_note}"
            );
            // The masked channels were driven to zero and their constants folded: pruning
            // them is nearly lossless.
            let top1 = |k: usize| stages[k]["top1"].as_f64().unwrap();
            assert!(
                top1(2) >= top1(1) - 0.05,
                "pruning after masked sparse training lost {} -> {}: {prune_note}",
                top1(1),
                top1(2)
            );
            // The compensation maps were collapsed: no extra Add nodes or per-pixel tensors.
            let shipped = Model::load(&out).unwrap();
            let g = &shipped.graph;
            assert!(
                g.node_ids()
                    .all(|n| !g.node(n).name.ends_with("_compensate")),
                "a compensation Add was shipped"
            );
        } else {
            assert!(prune_note.contains("bn-scale"), "{prune_note}");
        }
        shipped_model_runs(&out);
    }
}

#[test]
fn adapruner_tries_every_inheritance_candidate_and_keeps_the_best() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ada.onnx");
    let r = run_method("adapruner", &out, &["--target", "flops=0.5"]);
    assert_eq!(stage_names(&r), ["original", "inherit", "kd"]);
    let kept = macs_kept(&r);
    assert!((kept - 0.5).abs() <= 0.01, "MACs kept {kept}");
    let inherit = &r["stages"][1];
    let candidates = inherit["candidates"].as_array().unwrap();
    let names: Vec<&str> = candidates.iter().map(|c| c[0].as_str().unwrap()).collect();
    assert_eq!(names, ["l1", "bn-scale", "fpgm", "random-init"]);
    let best = candidates
        .iter()
        .map(|c| c[1].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    let note = inherit["note"].as_str().unwrap();
    let chosen = note
        .strip_prefix("inherited by ")
        .and_then(|n| n.split(' ').next())
        .unwrap();
    let chosen_score = candidates
        .iter()
        .find(|c| c[0] == chosen)
        .map(|c| c[1].as_f64().unwrap())
        .unwrap();
    assert_eq!(chosen_score, best, "{note}");
    // Inherited weights beat a re-initialised network after the same brief recovery.
    let random = candidates[3][1].as_f64().unwrap();
    assert!(best > random + 0.1, "{note}");
    shipped_model_runs(&out);
}

#[test]
fn epruner_ranks_exemplars_under_the_budget_and_recovers() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ep.onnx");
    let r = run_method("epruner", &out, &["--target", "flops=0.5"]);
    assert_eq!(stage_names(&r), ["original", "prune", "kd"]);
    let kept = macs_kept(&r);
    assert!((kept - 0.5).abs() <= 0.01, "MACs kept {kept}");
    let stages = r["stages"].as_array().unwrap();
    assert!(stages[1]["note"].as_str().unwrap().contains("epruner"));
    let (pruned, recovered) = (
        stages[1]["top1"].as_f64().unwrap(),
        stages[2]["top1"].as_f64().unwrap(),
    );
    assert!(
        recovered > pruned,
        "kd did not recover: {pruned} -> {recovered}"
    );
    shipped_model_runs(&out);
}

#[test]
fn mending_searches_width_moves_within_the_budget() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mend.onnx");
    let r = run_method("mending", &out, &["--target", "flops=0.5"]);
    assert_eq!(stage_names(&r), ["original", "mend", "kd"]);
    let kept = macs_kept(&r);
    assert!((kept - 0.5).abs() <= 0.01, "MACs kept {kept}");
    let mend = &r["stages"][1];
    let candidates = mend["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 5, "{mend}");
    assert_eq!(candidates[0][0], "pre-pruned");
    // Every candidate kept the budget (its MACs ratio is in its name).
    for c in &candidates[1..] {
        let name = c[0].as_str().unwrap();
        let ratio: f64 = name
            .rsplit_once('x')
            .and_then(|(_, r)| r.trim_end_matches(')').parse().ok())
            .unwrap();
        assert!((ratio - 0.5).abs() <= 0.01 + 1e-9, "{name}");
    }
    // The kept candidate scored best.
    let best = candidates
        .iter()
        .map(|c| c[1].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    let note = mend["note"].as_str().unwrap();
    assert!(note.contains(&format!("({:.2}%", best * 100.0)), "{note}");
    shipped_model_runs(&out);
}

/// The kept fraction of the weights in `masks` (a mask file), checking that every masked
/// weight of the model at `out` is zero.
fn masked_weights_are_zero(out: &Path, masks: &Path) -> f64 {
    let arrays = lopper::train::mask_file::load(masks).unwrap();
    let model = Model::load(out).unwrap();
    let g = &model.graph;
    let (mut kept, mut total) = (0usize, 0usize);
    for (name, (shape, m)) in &arrays {
        let w = g.init(g.value_by_name(name).unwrap()).unwrap();
        assert_eq!(w.shape(), &shape[..], "{name}");
        let w = w.to_f32_vec().unwrap();
        for (w, m) in w.iter().zip(m) {
            assert!(*m != 0.0 || *w == 0.0, "{name}: a masked weight is {w}");
        }
        kept += m.iter().filter(|m| **m != 0.0).count();
        total += m.len();
    }
    kept as f64 / total as f64
}

#[test]
fn panning_masks_weights_at_initialisation_and_ships_the_masks() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("pan.a.onnx"), dir.path().join("pan.b.onnx"));
    let r = run_method("panning", &a, &["--weight-sparsity", "0.9"]);
    assert_eq!(stage_names(&r), ["original", "pan", "kd"]);
    let pan = &r["stages"][1];
    let note = pan["note"].as_str().unwrap();
    assert!(
        note.contains("by the UCB1 agent (5 pulls of 5 steps"),
        "{note}"
    );
    // Five pulls, ten arms: five arms pulled once each; the chosen one scored best.
    let rewards = pan["candidates"].as_array().unwrap();
    assert_eq!(rewards.len(), 5, "{note}");
    let best = rewards
        .iter()
        .max_by(|x, y| x[1].as_f64().unwrap().total_cmp(&y[1].as_f64().unwrap()))
        .unwrap();
    assert!(
        note.contains(&format!("masks {} by", best[0].as_str().unwrap())),
        "{note}"
    );
    let masks = a.with_extension("masks.npz");
    let kept = masked_weights_are_zero(&a, &masks);
    assert!((kept - 0.1).abs() < 1e-4, "kept {kept}");
    assert!(r["stages"][2]["note"]
        .as_str()
        .unwrap()
        .contains("masked weights enforced at zero"));
    shipped_model_runs(&a);
    // Same seed, same model and masks.
    run_method("panning", &b, &["--weight-sparsity", "0.9"]);
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    assert!(
        std::fs::read(&masks).unwrap() == std::fs::read(b.with_extension("masks.npz")).unwrap()
    );

    // Training the shipped model on with its mask file keeps the masked weights at zero.
    let t = dir.path().join("pan.trained.onnx");
    let data = format!("npz:{}", shared("data/cifar10/lossless-subset.npz"));
    let (code, _, err) = lopper(&[
        "train",
        &a.display().to_string(),
        "--weight-masks",
        &masks.display().to_string(),
        "--data",
        &data,
        "--limit",
        "128",
        "--batch-size",
        "64",
        "--epochs",
        "1",
        "--eval-split",
        "none",
        "-o",
        &t.display().to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(&t).unwrap() != std::fs::read(&a).unwrap());
    assert!((masked_weights_are_zero(&t, &masks) - 0.1).abs() < 1e-4);

    // The channel variant: a smaller dense model at the budget, no mask file.
    let c = dir.path().join("pan.c.onnx");
    let r = run_method(
        "panning",
        &c,
        &["--granularity", "channel", "--target", "flops=0.5"],
    );
    assert_eq!(stage_names(&r), ["original", "pan", "kd"]);
    let kept = macs_kept(&r);
    assert!((kept - 0.5).abs() <= 0.01, "MACs kept {kept}");
    assert!(!c.with_extension("masks.npz").exists());
    shipped_model_runs(&c);
}

#[test]
fn a_method_run_gives_the_same_bytes_twice() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for method in ["masksparsity", "mending"] {
        let a = dir.path().join(format!("{method}.a.onnx"));
        let b = dir.path().join(format!("{method}.b.onnx"));
        run_method(method, &a, &["--target", "flops=0.5"]);
        run_method(method, &b, &["--target", "flops=0.5"]);
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "--method {method}: two runs with the same seed differ"
        );
    }
    // --seed reaches the training stages: another seed shuffles and augments otherwise.
    let c = dir.path().join("masksparsity.seed1.onnx");
    run_method(
        "masksparsity",
        &c,
        &["--target", "flops=0.5", "--seed", "1"],
    );
    let a = dir.path().join("masksparsity.a.onnx");
    assert!(
        std::fs::read(&a).unwrap() != std::fs::read(&c).unwrap(),
        "--seed 1 gave the bytes of --seed 0"
    );
}

#[test]
fn methods_run_on_a_network_without_batch_norm() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnist = format!("mnist:{}", shared("data/mnist"));
    let model = shared("models/pretrained/mnist-8.onnx");
    for (method, stages) in [
        ("slimming", vec!["original", "sparse", "prune", "kd"]),
        ("adapruner", vec!["original", "inherit", "kd"]),
        ("masksparsity", vec!["original", "sparse", "prune", "kd"]),
    ] {
        let out = dir.path().join(format!("mn-{method}.onnx"));
        let report = dir.path().join(format!("mn-{method}.json"));
        let (out_s, report_s) = (out.display().to_string(), report.display().to_string());
        let (code, _, err) = lopper(&[
            "compress",
            &model,
            "--data",
            &mnist,
            "--scale",
            "0.00392156862745098",
            "--no-augment",
            "--method",
            method,
            "--target",
            "flops=0.3",
            "--limit",
            "640",
            "--batch-size",
            "64",
            "--epochs",
            "2",
            "--eval-limit",
            "300",
            "--inherit-steps",
            "5",
            "--no-latency",
            "--report",
            &report_s,
            "-o",
            &out_s,
        ]);
        assert_eq!(code, 0, "{method}: {err}");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(stage_names(&r), stages);
        let kept = macs_kept(&r);
        assert!((kept - 0.3).abs() <= 0.01, "{method}: MACs kept {kept}");
        shipped_model_runs(&out);
    }
}

#[test]
fn dry_run_lists_each_methods_stages_without_data() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.onnx");
    let expect = [
        (
            "plain",
            vec!["original", "prune", "kd", "verify", "latency"],
        ),
        (
            "slimming",
            vec!["original", "sparse", "prune", "kd", "verify", "latency"],
        ),
        (
            "masksparsity",
            vec!["original", "sparse", "prune", "kd", "verify", "latency"],
        ),
        (
            "adapruner",
            vec!["original", "inherit", "kd", "verify", "latency"],
        ),
        (
            "epruner",
            vec!["original", "prune", "kd", "verify", "latency"],
        ),
    ];
    for (method, stages) in expect {
        let (code, stdout, err) = lopper(&[
            "compress",
            &resnet20(),
            "--method",
            method,
            "--target",
            "flops=0.5",
            "--dry-run",
            "-o",
            &out.display().to_string(),
        ]);
        assert_eq!(code, 0, "{method}: {err}");
        let listed: Vec<&str> = stdout
            .lines()
            .skip(1)
            .map(|l| l.split_once(". ").unwrap().1.split(':').next().unwrap())
            .collect();
        assert_eq!(listed, stages, "{method}: {stdout}");
        assert!(!out.exists());
    }
    // Panning masks weights without a channel budget; a --target needs channel granularity.
    let (code, stdout, err) = lopper(&[
        "compress",
        &resnet20(),
        "--method",
        "panning",
        "--dry-run",
        "-o",
        &out.display().to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("pan: re-initialise, then mask single weights, keeping 10.00%"),
        "{stdout}"
    );
    assert!(
        stdout.contains("a UCB1 agent pulls 12 times among 10 arms"),
        "{stdout}"
    );
    for (extra, why) in [
        (&["--target", "flops=0.5"][..], "--granularity channel"),
        (&["--granularity", "channel"][..], "say what to remove"),
        (&["--weight-sparsity", "1.5"][..], "must be in [0, 1)"),
    ] {
        let model = resnet20();
        let mut argv = vec!["compress", &model, "--method", "panning", "--dry-run"];
        argv.extend(extra);
        let o = out.display().to_string();
        argv.extend(["-o", &o]);
        let (code, _, err) = lopper(&argv);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(why), "{extra:?}: {err}");
    }
    // The budget split: 5 epochs = 2 of sparse training + 3 of recovery.
    let (_, stdout, _) = lopper(&[
        "compress",
        &resnet20(),
        "--method",
        "slimming",
        "--target",
        "flops=0.5",
        "--dry-run",
        "-o",
        &out.display().to_string(),
    ]);
    assert!(stdout.contains("sparse: 2 epoch(s)"), "{stdout}");
    assert!(stdout.contains("kd: 3 epoch(s)"), "{stdout}");
    // One epoch cannot hold sparse training and recovery.
    let (code, _, err) = lopper(&[
        "compress",
        &resnet20(),
        "--method",
        "masksparsity",
        "--target",
        "flops=0.5",
        "--epochs",
        "1",
        "--dry-run",
        "-o",
        &out.display().to_string(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--epochs 1 is the whole budget"), "{err}");
    // Branch dropping: listed with the prune stage where a method takes it, refused where
    // it does not.
    let o = out.display().to_string();
    let drop = |method: &str| {
        lopper(&[
            "compress",
            &resnet20(),
            "--method",
            method,
            "--target",
            "flops=0.5",
            "--drop-blocks",
            "0.5",
            "--dry-run",
            "-o",
            &o,
        ])
    };
    let (code, stdout, err) = drop("slimming");
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("drop_blocks 0.5"), "{stdout}");
    let (code, _, err) = drop("masksparsity");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("prunes by width only"), "{err}");
}
