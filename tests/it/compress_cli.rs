//! `lopper compress` end to end: ResNet-20 on the lossless CIFAR-10 subset through every stage
//! (original, prune, cap, bn, kd: report, checker, both runtimes), an interrupted run resumed,
//! and bad input refused with nothing written.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::arrays::{npy, npy_i64, write_npz};
use common::*;
use lopper::ir::Model;
use lopper::runtime::BackendKind;

use common::run_lopper as lopper;

fn resnet20() -> String {
    shared_dir()
        .join("models/pretrained/resnet20_cifar10.bn.onnx")
        .display()
        .to_string()
}

fn cifar() -> String {
    format!(
        "npz:{}",
        shared_dir()
            .join("data/cifar10/lossless-subset.npz")
            .display()
    )
}

/// A small compress run of ResNet-20 on the lossless subset (train split, 1,600 samples per
/// epoch at batch 64; 300 held-out samples), with `extra` flags.
fn compress_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "compress",
        &resnet20(),
        "--data",
        &cifar(),
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
        "--target",
        "flops=0.5",
        "--limit",
        "1600",
        "--batch-size",
        "64",
        "--eval-limit",
        "300",
        "--calibration-samples",
        "256",
        "--latency-runs",
        "5",
        "-o",
        &out.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn work_dir(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.work", out.display()))
}

#[test]
fn compress_runs_every_stage_and_ships_a_checked_model() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r20.small.onnx");
    let report = dir.path().join("r.json");
    let args = compress_args(
        &out,
        &[
            "--recover",
            "cap,bn,kd",
            "--epochs",
            "2",
            "--report",
            &report.display().to_string(),
        ],
    );
    let (code, stdout, err) = lopper(&strs(&args));
    assert_eq!(code, 0, "{err}");
    eprintln!("{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let stages = r["stages"].as_array().unwrap();
    let names: Vec<&str> = stages
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["original", "prune", "cap", "bn", "kd"]);
    // The pruning pipeline's notes reach the report and the user (branches dropped first).
    let notes: Vec<&str> = stages[1]["notes"]
        .as_array()
        .unwrap_or_else(|| panic!("no prune notes: {}", stages[1]))
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let dropped = notes
        .iter()
        .find(|n| n.contains("removable branch"))
        .unwrap_or_else(|| panic!("{notes:?}"));
    assert!(err.contains(&format!("note: {dropped}")), "{err}");
    let top1 = |k: usize| stages[k]["top1"].as_f64().unwrap();
    let macs = |k: usize| stages[k]["macs"].as_f64().unwrap();
    assert!(top1(0) > 0.85, "original top-1 {}", top1(0));
    assert!(top1(1) < top1(0) - 0.3, "pruning cost nothing: {names:?}");
    assert!(top1(2) > top1(1), "recalibration did not help: {stdout}");
    assert!(
        top1(3) > top1(1) + 0.15,
        "distillation did not recover: {stdout}"
    );
    let kept = macs(1) / macs(0);
    assert!((kept - 0.5).abs() < 0.01, "MACs kept {kept}");
    for s in stages {
        assert_eq!(s["samples"], 300);
        assert!(s["loss"].as_f64().unwrap().is_finite());
    }
    let verified: Vec<&str> = r["verified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[0].as_str().unwrap())
        .collect();
    assert_eq!(verified, ["ort", "tract"]);
    assert!(r["latency"]["ratio"].as_f64().unwrap() > 0.0);
    // Timed to a stated noise: the medians' 95% half-width, which the line prints.
    let noise = r["latency"]["noise"].as_f64().unwrap();
    assert!(noise.is_finite() && noise > 0.0, "{noise}");
    assert!(stdout.contains("median, noise "), "{stdout}");
    // The shipped model: the checker accepts it, both runtimes run it, and the table says so.
    check_model(&out);
    let model = Model::load(&out).unwrap();
    let inputs = common::random_inputs(&model, 3);
    let (a, b) = (
        run(BackendKind::Ort, &out, &inputs),
        run(BackendKind::Tract, &out, &inputs),
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let e = lopper::oracle::rel_error(name, x, y).unwrap();
        assert!(e < 1e-4, "{name}: ORT and tract differ by {e:e}");
    }
    assert!(stdout.contains("verified: runs in ort"), "{stdout}");
    assert!(!work_dir(&out).exists(), "the work folder was left behind");
}

/// Waits until `path` exists (or panics after `secs`).
fn wait_for(path: &Path, secs: u64) {
    let t = Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Killed during fine-tuning (after its first epoch's checkpoint), the run leaves no output;
/// `--resume` keeps the finished stages and the epoch, and refuses other options.
#[test]
fn an_interrupted_compress_resumes() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r20.ft.onnx");
    let extra = ["--recover", "finetune", "--epochs", "3", "--no-latency"];
    let args = compress_args(&out, &extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_lopper"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let work = work_dir(&out);
    wait_for(&work.join("02-finetune.onnx.train.json"), 600);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "a killed run wrote its output");
    let journal: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("journal.json")).unwrap()).unwrap();
    assert_eq!(journal["stages"].as_array().unwrap().len(), 2);

    // Other options: refused, nothing touched.
    let mut other = compress_args(&out, &["--recover", "finetune", "--epochs", "4"]);
    other.push("--resume".into());
    let (code, _, err) = lopper(&strs(&other));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("made by another run"), "{err}");
    assert!(!out.exists());

    let mut again = args.clone();
    again.push("--resume".into());
    let (code, stdout, err) = lopper(&strs(&again));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("original: top-1"), "{err}");
    assert_eq!(err.matches("(done before: resumed)").count(), 2, "{err}");
    assert!(stdout.contains("(resumed after "), "{stdout}");
    assert!(out.exists() && !work.exists());
}

/// A 28×28 one-channel dataset (four samples per split) with these training labels.
fn tiny_npz(path: &Path, train_labels: &[i64; 4]) {
    let x = vec![7u8; 4 * 28 * 28];
    write_npz(
        path,
        &[
            ("x_train", npy("|u1", &[4, 28, 28], &x)),
            ("y_train", npy_i64(train_labels)),
            ("x_test", npy("|u1", &[4, 28, 28], &x)),
            ("y_test", npy_i64(&[0, 1, 2, 3])),
        ],
    );
}

#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.npz");
    let bad = dir.path().join("bad.npz");
    tiny_npz(&good, &[0, 1, 2, 3]);
    tiny_npz(&bad, &[0, 3, 12, 1]);
    let mnist = shared_dir()
        .join("models/pretrained/mnist-8.onnx")
        .display()
        .to_string();
    let out = dir.path().join("out.onnx");
    let o = out.display().to_string();
    let data = |p: &Path| format!("npz:{}", p.display());
    let mut cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![mnist.clone(), data(&good), "--recover".into(), "bn".into()],
            "no BatchNormalization",
        ),
        (
            vec![
                mnist.clone(),
                data(&bad),
                "--recover".into(),
                "finetune".into(),
            ],
            "labels go up to 12",
        ),
        (vec![resnet20(), data(&good)], "takes 32x32 images"),
        (
            vec![
                resnet20(),
                cifar(),
                "--recover".into(),
                "kd".into(),
                "--teacher".into(),
                mnist.clone(),
            ],
            "teacher",
        ),
    ];
    // A plan made for ResNet-20, given with mnist-8.
    let plan = dir.path().join("r20.plan.json");
    let p = dir.path().join("r20.p.onnx");
    let (code, _, err) = lopper(&[
        "prune",
        &resnet20(),
        "--ratio",
        "0.3",
        "--save-plan",
        &plan.display().to_string(),
        "-o",
        &p.display().to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    // The plan pins the architecture: compress replays it on its own model.
    let pinned = dir.path().join("pinned.onnx");
    let (code, stdout, err) = lopper(&[
        "compress",
        &resnet20(),
        "--data",
        &cifar(),
        "--plan",
        &plan.display().to_string(),
        "--recover",
        "none",
        "--eval-limit",
        "50",
        "--no-latency",
        "-o",
        &pinned.display().to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(&pinned).unwrap(),
        std::fs::read(&p).unwrap(),
        "compress --plan wrote another model than prune: {stdout}"
    );
    cases.push((
        vec![
            mnist.clone(),
            data(&good),
            "--plan".into(),
            plan.display().to_string(),
        ],
        "the plan was made for another model",
    ));
    for (args, want) in cases {
        let mut full: Vec<String> = vec!["compress".into(), args[0].clone(), "--data".into()];
        full.extend(args[1..].iter().cloned());
        if !full.iter().any(|a| a == "--plan") {
            full.extend(["--ratio", "0.3"].map(String::from));
        }
        full.extend(["-o", &o].map(String::from));
        let (code, _, err) = lopper(&strs(&full));
        assert_eq!(code, 2, "{full:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{full:?}: not one line: {err}");
        assert!(err.contains(want), "{full:?}: {err}");
        assert!(!out.exists(), "{full:?} wrote its output");
        assert!(!work_dir(&out).exists(), "{full:?} left its work folder");
    }
}

/// mnist-8 fixes its batch at 1; as its own teacher it is distilled at batch 2 (the teacher
/// is prepared like the student, so its batch is freed).
#[test]
fn a_teacher_with_a_fixed_batch_distils() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tiny.npz");
    tiny_npz(&data, &[0, 1, 2, 3]);
    let mnist = shared_dir()
        .join("models/pretrained/mnist-8.onnx")
        .display()
        .to_string();
    let out = dir.path().join("m.onnx");
    let d = format!("npz:{}", data.display());
    let o = out.display().to_string();
    let (code, stdout, err) = lopper(&[
        "compress",
        &mnist,
        "--data",
        &d,
        "--ratio",
        "0.3",
        "--recover",
        "kd",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--no-latency",
        "-o",
        &o,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("\nkd "), "{stdout}");
    assert!(out.exists());
}
