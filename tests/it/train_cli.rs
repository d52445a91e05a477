//! `lopper train` end to end on real data (MNIST, CIFAR-10 subset) in ONNX Runtime: learning
//! from scratch, determinism, exact resume, Dropout masks from the seeded stream, the L1
//! sparsity regularizers (plain, masked by a plan or by a criterion), and usage errors.

use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use lopper::analysis::importance::CriterionKind;
use lopper::ir::Model;
use lopper::plan::allocate::Amount;
use lopper::prune::Scored;
use lopper::train::runner::masks_from_criterion;

use common::run_lopper as lopper;

fn mnist8() -> String {
    shared_dir()
        .join("models/pretrained/mnist-8.onnx")
        .display()
        .to_string()
}

fn mnist_data() -> String {
    format!("mnist:{}", shared_dir().join("data/mnist").display())
}

/// A from-scratch run of mnist-8 on 3200 MNIST samples: returns (stdout, stderr).
fn mnist_run(out: &Path, extra: &[&str]) -> (String, String) {
    let mut args = vec!["--from-scratch", "--limit", "3200"];
    args.extend_from_slice(extra);
    mnist_train(&mnist8(), out, &args)
}

/// `lopper train MODEL` on MNIST (AdamW, constant rate, no flips, one thread, `--limit` from
/// `extra`): returns (stdout, stderr).
fn mnist_train(model: &str, out: &Path, extra: &[&str]) -> (String, String) {
    let (data, o) = (mnist_data(), out.display().to_string());
    let mut args = vec![
        "train",
        model,
        "--data",
        data.as_str(),
        "--mean",
        "0.1307",
        "--std",
        "0.3081",
        "--batch-size",
        "32",
        "--optimizer",
        "adamw",
        "--lr",
        "2e-3",
        "--schedule",
        "constant",
        "--eval-limit",
        "500",
        "--no-flip",
        "--threads",
        "1",
        "-o",
        o.as_str(),
    ];
    args.extend_from_slice(extra);
    let (rc, so, se) = lopper(&args);
    assert_eq!(rc, 0, "stdout {so}\nstderr {se}");
    (so, se)
}

fn top1(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("accuracy"))
        .unwrap_or_else(|| panic!("no accuracy line in {stdout}"));
    let pct = line
        .split_whitespace()
        .find(|w| w.ends_with('%'))
        .unwrap()
        .trim_end_matches('%');
    pct.parse::<f64>().unwrap() / 100.0
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn mnist_from_scratch_learns_and_is_deterministic() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
    let (so, se) = mnist_run(&a, &["--epochs", "1", "--seed", "3"]);
    let acc = top1(&so);
    assert!(
        acc > 0.6,
        "top-1 {acc} after one epoch on 3200 digits\n{so}{se}"
    );
    assert!(se.contains("epoch 1/1: loss"), "{se}");
    mnist_run(&b, &["--epochs", "1", "--seed", "3"]);
    assert!(bytes(&a) == bytes(&b), "same seed, different models");
    // The trained model is a plain inference model with a free batch, runnable as it is.
    let m = Model::load(&a).unwrap();
    assert!(m
        .graph
        .node_ids()
        .all(|n| m.graph.node(n).op_type != "Sign"));
    let (rc, so, se) = lopper(&[
        "eval",
        a.to_str().unwrap(),
        "--data",
        &mnist_data(),
        "--mean",
        "0.1307",
        "--std",
        "0.3081",
        "--limit",
        "500",
        "--batch-size",
        "50",
    ]);
    assert_eq!(rc, 0, "{se}");
    assert!(so.contains(&format!("{:.2}%", acc * 100.0)), "{so}");
    // Another seed gives another model.
    let c = dir.path().join("c.onnx");
    mnist_run(&c, &["--epochs", "1", "--seed", "4"]);
    assert!(bytes(&a) != bytes(&c));
}

#[test]
fn resume_continues_exactly() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (full, part) = (dir.path().join("full.onnx"), dir.path().join("part.onnx"));
    let with = |e: &'static str| -> Vec<&str> { vec!["--epochs", e] };
    mnist_run(&full, &with("2"));
    mnist_run(&part, &with("1"));
    let side: PathBuf = dir.path().join("part.onnx.train.json");
    let json: serde_json::Value = serde_json::from_slice(&bytes(&side)).unwrap();
    assert_eq!(json["epoch"], 1);
    assert!(dir.path().join("part.onnx.state-e1.onnx").is_file());
    let p = part.display().to_string();
    let mut args = with("2");
    args.extend(["--resume", p.as_str()]);
    let (so, _) = mnist_run(&part, &args);
    assert!(so.contains("(1 resumed)"), "{so}");
    assert!(bytes(&full) == bytes(&part), "2 epochs != 1 epoch + resume");
    // The old state file went once the new sidecar was written.
    assert!(!dir.path().join("part.onnx.state-e1.onnx").exists());
    assert!(dir.path().join("part.onnx.state-e2.onnx").is_file());
    // Resuming a finished run is refused with a reason.
    let (rc, _, se) = lopper(&[
        "train",
        &mnist8(),
        "--data",
        &mnist_data(),
        "--epochs",
        "2",
        "--resume",
        &p,
        "-o",
        &p,
    ]);
    assert_ne!(rc, 0);
    assert!(se.contains("epoch 2"), "{se}");
}

/// Dropout in `lopper train`: its masks come from the run's seeded stream, so the same seed
/// gives the same model and a resumed run is byte-identical; the masks matter (a twin with
/// ratio 0 trains to other weights); the written model keeps its Dropout.
#[test]
fn dropout_training_is_seeded_and_resumable() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let save = |ratio: f32, name: &str| {
        let path = dir.path().join(name);
        dropout_mlp(13, &[1, 28, 28], 32, 10, ratio, false, 4)
            .save(&path, &Default::default())
            .unwrap();
        path.display().to_string()
    };
    let (drop, plain) = (save(0.5, "drop.onnx"), save(0.0, "plain.onnx"));
    let out = |n: &str| dir.path().join(n);
    let run = |model: &str, o: &str, extra: &[&str]| {
        let mut args = vec!["--limit", "640", "--seed", "3", "--no-augment"];
        args.extend_from_slice(extra);
        mnist_train(model, &out(o), &args)
    };
    let (so, _) = run(&drop, "a.onnx", &["--epochs", "1"]);
    let acc = top1(&so);
    run(&drop, "b.onnx", &["--epochs", "1"]);
    assert!(
        bytes(&out("a.onnx")) == bytes(&out("b.onnx")),
        "same seed, different models"
    );
    run(&drop, "full.onnx", &["--epochs", "2"]);
    let a = out("a.onnx").display().to_string();
    let (so, _) = run(&drop, "a.onnx", &["--epochs", "2", "--resume", &a]);
    assert!(so.contains("(1 resumed)"), "{so}");
    assert!(
        bytes(&out("full.onnx")) == bytes(&out("a.onnx")),
        "2 epochs != 1 epoch + resume"
    );
    run(&plain, "plain.onnx", &["--epochs", "1"]);
    let weight = |p: &Path, name: &str| {
        let m = Model::load(p).unwrap();
        let v = m.graph.value_by_name(name).unwrap();
        m.graph.init(v).unwrap().to_f64_vec().unwrap()
    };
    let (wd, wp) = (
        weight(&out("b.onnx"), "fc1.weight"),
        weight(&out("plain.onnx"), "fc1.weight"),
    );
    assert_ne!(wd, wp, "dropout changed nothing");
    let m = Model::load(out("b.onnx")).unwrap();
    let g = &m.graph;
    let d = g.node_ids().find(|&n| g.node(n).name == "drop").unwrap();
    assert_eq!(g.node(d).op_type, "Dropout");
    let r = g.init(g.node(d).input(1).unwrap()).unwrap();
    assert_eq!(r.to_f64_vec().unwrap(), [0.5]);
    eprintln!("dropout MLP, one epoch on 640 digits: top-1 {acc:.3}");
    assert!(acc > 0.5, "top-1 {acc}");
}

/// Mean |γ| of every BatchNormalization scale of a model.
fn mean_abs_gamma(path: &Path) -> f64 {
    let m = Model::load(path).unwrap();
    let g = &m.graph;
    let (mut sum, mut n) = (0.0, 0usize);
    for id in g.node_ids() {
        let node = g.node(id);
        if node.op_type == "BatchNormalization" {
            let v = g
                .init(node.input(1).unwrap())
                .unwrap()
                .to_f64_vec()
                .unwrap();
            n += v.len();
            sum += v.iter().map(|x| x.abs()).sum::<f64>();
        }
    }
    sum / n as f64
}

#[test]
fn l1_on_bn_scales_pulls_gammas_down() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = shared_dir().join("models/pretrained/resnet20_cifar10.bn.onnx");
    let data = format!(
        "npz:{}",
        shared_dir()
            .join("data/cifar10/lossless-subset.npz")
            .display()
    );
    let run = |out: &Path, extra: &[&str]| {
        let o = out.display().to_string();
        let mut args = vec![
            "train",
            model.to_str().unwrap(),
            "--data",
            data.as_str(),
            "--mean",
            "0.485,0.456,0.406",
            "--std",
            "0.229,0.224,0.225",
            "--eval-split",
            "none",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--limit",
            "64",
            "--lr",
            "0.01",
            "--schedule",
            "constant",
            "--threads",
            "2",
            "-o",
            o.as_str(),
        ];
        args.extend_from_slice(extra);
        let (rc, so, se) = lopper(&args);
        assert_eq!(rc, 0, "{so}{se}");
    };
    let (plain, sparse) = (dir.path().join("plain.onnx"), dir.path().join("l1.onnx"));
    run(&plain, &[]);
    run(&sparse, &["--sparsity", "l1-bn=1"]);
    let before = mean_abs_gamma(&model);
    let (p, s) = (mean_abs_gamma(&plain), mean_abs_gamma(&sparse));
    // 4 steps of lr·λ = 0.01 each: about 0.04 lower, on top of what the data does.
    assert!(
        s < p - 0.03,
        "mean |γ|: start {before:.4}, plain {p:.4}, l1 {s:.4}"
    );
    // Masked L1 from a pruning plan (of two rounds: the second round's channels are traced
    // back to the model's) pushes only the planned channels: between the two.
    let plan = dir.path().join("plan.json");
    let (rc, _, se) = lopper(&[
        "prune",
        model.to_str().unwrap(),
        "--steps",
        "2",
        "--ratio",
        "0.3",
        "--save-plan",
        plan.to_str().unwrap(),
        "-o",
        dir.path().join("pruned.onnx").to_str().unwrap(),
    ]);
    assert_eq!(rc, 0, "{se}");
    let masked = dir.path().join("masked.onnx");
    run(
        &masked,
        &["--sparsity", &format!("masked-l1={}:1", plan.display())],
    );
    let m = mean_abs_gamma(&masked);
    assert!(
        s < m - 0.01 && m < p - 0.005,
        "plain {p:.4}, masked {m:.4}, l1 {s:.4}"
    );

    // Masked L1 with the mask chosen by a criterion on the model itself (nothing removed):
    // the masked gammas fall about as far as under plain L1, the others stay where the run
    // without a regularizer left them (up to the small indirect effect through the loss).
    let crit = dir.path().join("criterion.onnx");
    run(&crit, &["--sparsity", "masked-l1=l1@0.3:1"]);
    let scored = Scored::new(CriterionKind::L1, Amount::Ratio(0.3));
    let masks = masks_from_criterion(&Model::load(&model).unwrap(), &scored).unwrap();
    let (plain_g, crit_g) = (gammas(&plain), gammas(&crit));
    let (mut fall, mut n_masked, mut moved, mut n_free) = (0.0, 0usize, 0.0, 0usize);
    for (name, c) in &crit_g {
        let p = &plain_g[name];
        let mask = masks.get(name);
        for i in 0..c.len() {
            if mask.is_some_and(|m| m[i] > 0.0) {
                fall += p[i].abs() - c[i].abs();
                n_masked += 1;
            } else {
                moved += (p[i] - c[i]).abs();
                n_free += 1;
            }
        }
    }
    let (fall, moved) = (fall / n_masked as f64, moved / n_free as f64);
    eprintln!(
        "masked-l1=l1@0.3: {n_masked} masked gammas fell by {fall:.4} on average, \
         {n_free} others moved by {moved:.5}"
    );
    assert!(n_masked > 0 && n_free > 0);
    assert!(fall > 0.03, "masked gammas fell by {fall:.4} only");
    assert!(moved < 0.1 * fall, "unmasked gammas moved by {moved:.5}");
}

/// Every BatchNormalization scale of a model, by name.
fn gammas(path: &Path) -> std::collections::BTreeMap<String, Vec<f64>> {
    let m = Model::load(path).unwrap();
    let g = &m.graph;
    g.node_ids()
        .filter(|&n| g.node(n).op_type == "BatchNormalization")
        .map(|n| {
            let v = g.node(n).input(1).unwrap();
            (
                g.value(v).name.clone(),
                g.init(v).unwrap().to_f64_vec().unwrap(),
            )
        })
        .collect()
}

#[test]
fn usage_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("o.onnx").display().to_string();
    let model = mnist8();
    let data = mnist_data();
    let cases: [(&[&str], &str); 8] = [
        (&["train", &model, "--epochs", "1", "-o", &o], "--data"),
        (
            &[
                "train",
                &model,
                "--data",
                &data,
                "--sparsity",
                "l2=1",
                "-o",
                &o,
            ],
            "bad --sparsity 'l2=1'",
        ),
        (
            &[
                "train",
                &model,
                "--data",
                &data,
                "--sparsity",
                "l1-bn=-3",
                "-o",
                &o,
            ],
            "bad --sparsity",
        ),
        (
            &[
                "train",
                &model,
                "--data",
                &data,
                "--optimizer",
                "lion",
                "-o",
                &o,
            ],
            "invalid value 'lion'",
        ),
        (
            &[
                "finetune",
                &model,
                "--data",
                &data,
                "--sparsity",
                "masked-l1=/nonexistent/plan.json:1e-4",
                "-o",
                &o,
            ],
            "plan.json",
        ),
        (
            &[
                "train",
                &model,
                "--data",
                &data,
                "--sparsity",
                "masked-l1=activation@0.5:1",
                "-o",
                &o,
            ],
            "needs calibration data",
        ),
        (
            &[
                "train",
                &model,
                "--data",
                &data,
                "--sparsity",
                "masked-l1=l1@1.5:1",
                "-o",
                &o,
            ],
            "ratio must be in (0, 1)",
        ),
        (
            &[
                "train",
                &model,
                "--data",
                &data,
                "--sparsity",
                "masked-l1=l1@0.5:1",
                "-o",
                &o,
            ],
            "no channel of any BatchNormalization scale",
        ),
    ];
    for (args, want) in cases {
        let (rc, _, se) = lopper(args);
        assert_ne!(rc, 0, "{args:?}");
        assert!(se.contains(want), "{args:?}: {se}");
    }
    assert!(!Path::new(&o).exists());
}

/// The user's workflow on a globally pruned model: `lopper prune --target flops=0.5` (global
/// allocation leaves layers of a few channels), then `lopper finetune` for 50 steps on the
/// lossless CIFAR-10 subset. The loss is finite and falls, and the fine-tuned model beats the
/// pruned one on the held-out images. (Before the BN statistics fix this was NaN at step 2.)
#[test]
fn globally_pruned_resnet20_finetunes() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = shared_dir().join("models/pretrained/resnet20_cifar10.bn.onnx");
    let pruned = dir.path().join("p.onnx");
    let tuned = dir.path().join("p.ft.onnx");
    let (m, p, t) = (
        model.display().to_string(),
        pruned.display().to_string(),
        tuned.display().to_string(),
    );
    let (code, _, err) = lopper(&["prune", &m, "--target", "flops=0.5", "-o", &p]);
    assert_eq!(code, 0, "{err}");
    let data = format!(
        "npz:{}",
        shared_dir()
            .join("data/cifar10/lossless-subset.npz")
            .display()
    );
    let norm = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"];
    let mut args = vec!["finetune", &p, "--data", &data, "--split", "train"];
    args.extend_from_slice(&norm);
    args.extend_from_slice(&[
        "--epochs",
        "2",
        "--limit",
        "1600",
        "--batch-size",
        "64",
        "--eval-split",
        "none",
        "--json",
        "-o",
        &t,
    ]);
    let (code, out, err) = lopper(&args);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let epochs = report["epochs"].as_array().unwrap();
    let losses: Vec<f64> = epochs.iter().map(|e| e["loss"].as_f64().unwrap()).collect();
    let steps: u64 = epochs.iter().map(|e| e["steps"].as_u64().unwrap()).sum();
    assert_eq!(steps, 50);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[1] < losses[0], "loss did not fall: {losses:?}");
    let top1_of = |path: &str| {
        let mut args = vec!["eval", path, "--data", &data, "--x-key", "x_test"];
        args.extend_from_slice(&["--y-key", "y_test", "--limit", "500"]);
        args.extend_from_slice(&norm);
        let (code, out, err) = lopper(&args);
        assert_eq!(code, 0, "{err}");
        top1(&out)
    };
    let (before, after) = (top1_of(&p), top1_of(&t));
    eprintln!("pruned top-1 {before:.3}, after 50 steps {after:.3}, losses {losses:?}");
    assert!(
        after > before + 0.1,
        "fine-tuning did not recover: {before} -> {after}"
    );

    // BN recalibration alone (no gradients) also recovers some of it.
    let rc = dir.path().join("p.rc.onnx").display().to_string();
    let mut args = vec!["recalibrate", &p, "--data", &data, "--split", "train"];
    args.extend_from_slice(&norm);
    args.extend_from_slice(&["--samples", "512", "-o", &rc]);
    let (code, out, err) = lopper(&args);
    assert_eq!(code, 0, "{err}");
    let pruned = Model::load(&p).unwrap();
    let norms = pruned
        .graph
        .node_ids()
        .filter(|n| pruned.graph.node(*n).op_type == "BatchNormalization")
        .count();
    assert!(
        out.contains(&format!(
            "{norms} normalisation node(s) recalibrated on 512 samples"
        )),
        "{out}"
    );
    let recal = top1_of(&rc);
    eprintln!("recalibrated top-1 {recal:.3}");
    assert!(
        recal > before + 0.03,
        "recalibration did not help: {before} -> {recal}"
    );
}

/// Recalibrating a model without BatchNormalization is a one-line error that writes nothing.
#[test]
fn recalibrating_without_batch_norm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.onnx");
    let (m, data, o) = (mnist8(), mnist_data(), out.display().to_string());
    let (code, _, err) = lopper(&["recalibrate", &m, "--data", &data, "-o", &o]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.trim().lines().count() == 1 && err.contains("no BatchNormalization"),
        "{err}"
    );
    assert!(!out.exists());
}

/// A diverging run stops at the first non-finite step with one line that names the first
/// node whose output went non-finite (found by re-running the step with every intermediate
/// exposed) and, since that node is in the forward pass, advises a lower rate; nothing is
/// written.
#[test]
fn divergence_names_the_first_non_finite_node() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let (m, data, o) = (mnist8(), mnist_data(), out.display().to_string());
    let args = [
        "train",
        &m,
        "--data",
        &data,
        "--split",
        "train",
        "--limit",
        "640",
        "--epochs",
        "1",
        "--optimizer",
        "sgd",
        "--lr",
        "1e30",
        "--scale",
        "0.00392156862745098",
        "--eval-split",
        "none",
        "-o",
        &o,
    ];
    let (code, _, err) = lopper(&args);
    assert_eq!(code, 2, "{err}");
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{err}");
    assert!(line.contains("first non-finite value in the"), "{err}");
    assert!(line.contains("lower --lr"), "{err}");
    assert!(!out.exists(), "a diverged run wrote {o}");
}

/// Raw 0–255 pixels get a warning that names the fix, and the run that follows ends at chance
/// with a second warning; normalised inputs get neither.
#[test]
fn raw_pixels_and_chance_accuracy_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let (data, o) = (mnist_data(), dir.path().join("raw.onnx"));
    let (m, o) = (mnist8(), o.display().to_string());
    let args = [
        "train",
        &m,
        "--data",
        &data,
        "--from-scratch",
        "--limit",
        "2000",
        "--epochs",
        "1",
        "--eval-limit",
        "200",
        "-o",
        &o,
    ];
    let (rc, _, err) = lopper(&args);
    assert_eq!(rc, 0, "{err}");
    assert!(
        err.contains("warning: the training inputs are far from normalised")
            && err.contains("--mean/--std or --scale"),
        "{err}"
    );
    assert!(err.contains("is at chance for 10 classes"), "{err}");
    let (_, err) = mnist_run(&dir.path().join("ok.onnx"), &["--epochs", "1"]);
    assert!(!err.contains("warning"), "{err}");
}
