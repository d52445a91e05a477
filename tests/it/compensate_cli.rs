//! `lopper compensate` end to end: ResNet-20 pruned with `--target flops=0.5 --save-plan`,
//! compensated on the lossless CIFAR-10 subset's training images, evaluated on its held-out
//! test images; and the command's usage errors.

use crate::common;

use std::path::Path;

use common::*;

use common::run_lopper as lopper;

const NORM: [&str; 4] = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"];

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

/// Prunes ResNet-20 to half its FLOPs into `dir`: `(pruned, plan)` paths.
fn prune(dir: &Path) -> (String, String) {
    let p = dir.join("p.onnx").display().to_string();
    let plan = dir.join("p.plan.json").display().to_string();
    let m = resnet20();
    let (code, _, err) = lopper(&[
        "prune",
        &m,
        "--target",
        "flops=0.5",
        "--save-plan",
        &plan,
        "--table",
        "none",
        "-o",
        &p,
    ]);
    assert_eq!(code, 0, "{err}");
    (p, plan)
}

/// The top-1 fraction of `lopper eval`'s output.
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

/// Top-1 of `model` on 500 held-out test images (every other one).
fn top1_of(model: &str) -> f64 {
    let data = cifar();
    let mut args = vec!["eval", model, "--data", &data, "--x-key", "x_test"];
    args.extend_from_slice(&["--y-key", "y_test", "--limit", "500"]);
    args.extend_from_slice(&NORM);
    let (code, out, err) = lopper(&args);
    assert_eq!(code, 0, "{err}");
    top1(&out)
}

/// The user's workflow: prune with a saved plan, compensate on training images, and the
/// compensated model beats the pruned one on held-out images by a wide margin (measured:
/// 17% → 59% on all 1000 with 512 samples).
#[test]
fn compensation_recovers_a_globally_pruned_resnet20() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (p, plan) = prune(dir.path());
    let c = dir.path().join("p.cap.onnx").display().to_string();
    let (m, data) = (resnet20(), cifar());
    let mut args = vec![
        "compensate",
        &p,
        "--original",
        &m,
        "--plan",
        &plan,
        "--data",
        &data,
        "--split",
        "train",
        "--samples",
        "256",
        "--rows",
        "4096",
        "-o",
        &c,
    ];
    args.extend_from_slice(&NORM);
    let (code, out, err) = lopper(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("6 layer(s) compensated on 256 samples"),
        "{out}"
    );
    let (before, after) = (top1_of(&p), top1_of(&c));
    eprintln!("pruned top-1 {before:.3}, compensated {after:.3}; {out}");
    assert!(
        after > before + 0.2,
        "compensation did not recover: {before} -> {after}"
    );
}

/// A plan made for another model, a missing --data: one-line errors that write nothing.
#[test]
fn compensate_usage_errors_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (p, plan) = prune(dir.path());
    let out = dir.path().join("x.onnx");
    let o = out.display().to_string();
    let data = cifar();
    let other = shared_dir()
        .join("models/pretrained/resnet56_cifar10.bn.onnx")
        .display()
        .to_string();
    let m = resnet20();
    let cases: [(Vec<&str>, &str); 2] = [
        (
            vec!["--original", &other, "--plan", &plan, "--data", &data],
            "another model",
        ),
        (vec!["--original", &m, "--plan", &plan], "pass --data"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["compensate", &p, "-o", &o];
        args.extend_from_slice(&extra);
        let (code, _, err) = lopper(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.trim().lines().count() == 1 && err.contains(want),
            "{args:?}: {err}"
        );
        assert!(!out.exists());
    }
}
