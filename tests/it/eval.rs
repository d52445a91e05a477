//! `lopper eval` and `lopper bench` through the binary: accuracies of the pretrained models on
//! the shared datasets under both backends, reference comparison, benchmark outputs, and every
//! user error as one line with exit code 2.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::arrays::{npy, npy_i64, write_npz};
use serde_json::Value;

const MEAN: &str = "0.485,0.456,0.406";
const STD: &str = "0.229,0.224,0.225";

fn shared(rel: &str) -> String {
    common::shared_dir().join(rel).display().to_string()
}

fn model(name: &str) -> String {
    shared(&format!("models/pretrained/{name}"))
}

/// Runs the binary; returns (exit code, stdout, stderr).
fn lopper(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lopper"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run lopper");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `lopper eval ... --json`, asserting success; returns the report.
fn eval_json(args: &[&str]) -> Value {
    let mut all = vec!["eval"];
    all.extend_from_slice(args);
    all.push("--json");
    let (code, out, err) = lopper(&all, &[]);
    assert_eq!(code, 0, "lopper {all:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
}

fn top1(r: &Value) -> f64 {
    r["accuracy"]["top1"].as_f64().expect("top1")
}

/// Asserts exit code 2 and exactly one stderr line containing every needle.
fn assert_error(args: &[&str], env: &[(&str, &str)], needles: &[&str]) {
    let (code, out, err) = lopper(args, env);
    assert_eq!(
        code, 2,
        "lopper {args:?}: exit code {code}, stdout {out}, stderr {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
    for n in needles {
        assert!(err.contains(n), "message should mention '{n}': {err}");
    }
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
}

#[test]
fn mnist8_is_98_91_percent_under_both_backends() {
    let m = model("mnist-8.onnx");
    let data = format!("mnist:{}", shared("data/mnist"));
    let mut backends = vec!["tract"];
    if common::require_ort() {
        backends.push("ort");
    }
    for backend in backends {
        let r = eval_json(&[&m, "--data", &data, "--split", "test", "--backend", backend]);
        assert_eq!(r["backend"], backend);
        assert_eq!(r["samples"], 10_000);
        assert_eq!(r["classes"], 10);
        assert_eq!(r["accuracy"]["samples"], 10_000);
        // 9891 of 10000 (raw 0-255 pixels: no --scale, no mean/std).
        assert!((top1(&r) - 0.9891).abs() < 1e-9, "{backend}: {}", top1(&r));
        assert!(r["throughput"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn resnet20_is_91_5_percent_on_the_lossless_subset() {
    let m = model("resnet20_cifar10.folded.onnx");
    let data = format!("npz:{}", shared("data/cifar10/lossless-subset.npz"));
    let mut backends = vec!["tract"];
    if common::require_ort() {
        backends.push("ort");
    }
    for backend in backends {
        let r = eval_json(&[
            &m,
            "--data",
            &data,
            "--x-key",
            "x_test",
            "--y-key",
            "y_test",
            "--mean",
            MEAN,
            "--std",
            STD,
            "--backend",
            backend,
        ]);
        assert_eq!(r["samples"], 1000);
        // 915 of 1000; NHWC uint8 samples fed as NCHW float, x/255 then mean/std.
        assert!((top1(&r) - 0.915).abs() < 1e-9, "{backend}: {}", top1(&r));
        assert_eq!(r["outputs_are_probabilities"], false);
        let loss = r["accuracy"]["loss"].as_f64().unwrap();
        assert!(loss > 0.1 && loss < 1.0, "loss {loss}");
    }
}

/// The whole JPEG test split (10,000 images decoded from the zip). zune-jpeg decodes a few
/// pixels differently from libjpeg-turbo (Pillow): 81.10% here, 81.03% from Pillow's pixels.
#[test]
fn resnet20_is_about_81_percent_on_the_jpeg_test_split() {
    if !common::require_ort() {
        return;
    }
    let m = model("resnet20_cifar10.folded.onnx");
    let data = format!("images:{}", shared("data/cifar10/cifar10-jpeg.zip"));
    let r = eval_json(&[
        &m,
        "--data",
        &data,
        "--split",
        "test",
        "--mean",
        MEAN,
        "--std",
        STD,
        "--backend",
        "ort",
        "--batch-size",
        "100",
    ]);
    assert_eq!(r["samples"], 10_000);
    let t = top1(&r);
    assert!((t - 0.811).abs() < 0.003, "top-1 {t}");
    assert!(r["accuracy"]["top5"].as_f64().unwrap() > 0.98);
}

/// A limited run spreads over all classes of the class-sorted folder (tract, 500 images).
#[test]
fn limited_jpeg_eval_under_tract_sees_every_class() {
    let m = model("resnet20_cifar10.folded.onnx");
    let data = format!("images:{}", shared("data/cifar10/cifar10-jpeg.zip"));
    let r = eval_json(&[
        &m,
        "--data",
        &data,
        "--split",
        "test",
        "--mean",
        MEAN,
        "--std",
        STD,
        "--backend",
        "tract",
        "--limit",
        "500",
    ]);
    assert_eq!(r["samples"], 500);
    let t = top1(&r);
    // Accuracy of a class-balanced 5% sample; all-one-class samples would be far off.
    assert!(t > 0.75 && t < 0.87, "top-1 {t}");
}

#[test]
fn reference_comparison_of_folded_and_bn_models() {
    let data = format!("npz:{}", shared("data/cifar10/lossless-subset.npz"));
    let r = eval_json(&[
        &model("resnet20_cifar10.folded.onnx"),
        "--reference",
        &model("resnet20_cifar10.bn.onnx"),
        "--data",
        &data,
        "--mean",
        MEAN,
        "--std",
        STD,
        "--limit",
        "200",
    ]);
    let rf = &r["reference"];
    // BN folding changes rounding only: same predictions, tiny output differences.
    assert_eq!(rf["agreement"]["samples"], 200);
    assert_eq!(rf["agreement"]["top1_agreement"], 1.0);
    let max = rf["agreement"]["max_abs_diff"].as_f64().unwrap();
    let mean = rf["agreement"]["mean_abs_diff"].as_f64().unwrap();
    assert!(
        max > 0.0 && max < 1e-3 && mean <= max,
        "max {max} mean {mean}"
    );
    assert_eq!(rf["accuracy"]["top1"], r["accuracy"]["top1"]);
}

#[test]
fn text_report_names_accuracy_and_throughput() {
    let (code, out, err) = lopper(
        &[
            "eval",
            &model("mnist-8.onnx"),
            "--data",
            &format!("mnist:{}", shared("data/mnist")),
            "--limit",
            "100",
            "--backend",
            "tract",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("top-1") && out.contains("samples/s"), "{out}");
    // Not a terminal: no progress bar on stderr.
    assert!(err.is_empty(), "{err}");
}

#[test]
fn bench_gives_table_json_and_csv() {
    let a = model("mnist-8.onnx");
    let b = model("mnist-8.opt.onnx");
    let common_args = [
        "--backend",
        "tract",
        "--runs",
        "5",
        "--warmup",
        "1",
        "--precision",
        "0",
    ];
    let run = |extra: &[&str]| {
        let mut args = vec!["bench", a.as_str(), b.as_str()];
        args.extend_from_slice(&common_args);
        args.extend_from_slice(extra);
        let (code, out, err) = lopper(&args, &[]);
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    };
    let json: Value = serde_json::from_str(&run(&["--json"])).unwrap();
    let models = json["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["speedup"], 1.0);
    assert_eq!(models[0]["latency"]["runs"], 5);
    for m in models {
        let l = &m["latency"];
        let (p10, med, p90) = (
            l["p10"].as_f64().unwrap(),
            l["median"].as_f64().unwrap(),
            l["p90"].as_f64().unwrap(),
        );
        assert!(p10 > 0.0 && p10 <= med && med <= p90, "{l}");
        let speedup = m["speedup"].as_f64().unwrap();
        assert!(
            (speedup - med.recip() * models[0]["latency"]["median"].as_f64().unwrap()).abs() < 1e-9
        );
        let (lo, hi) = (
            m["speedup_ci"][0].as_f64().unwrap(),
            m["speedup_ci"][1].as_f64().unwrap(),
        );
        assert!(lo <= hi && lo > 0.0, "{m}");
        assert!(l["noise"].as_f64().unwrap() >= 0.0, "{l}");
    }
    // The same network (MatMul+Add vs Gemm): FLOPs within 1%.
    let ratio = models[1]["flops_ratio"].as_f64().unwrap();
    assert!((ratio - 1.0).abs() < 0.01, "FLOPs ratio {ratio}");
    let csv = run(&["--csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("model,backend,device,threads,batch"));
    assert!(lines[1].contains("mnist-8.onnx,tract,cpu,"), "{csv}");
    let table = run(&["--layers", "3"]);
    assert!(
        table.contains("speedup") && table.contains("median ms"),
        "{table}"
    );
    assert!(
        table.contains("costliest layers") && table.contains("Conv"),
        "{table}"
    );
}

#[test]
fn auto_falls_back_to_tract_without_ort() {
    let (code, out, err) = lopper(
        &[
            "eval",
            &model("mnist-8.onnx"),
            "--data",
            &format!("mnist:{}", shared("data/mnist")),
            "--limit",
            "50",
            "--json",
        ],
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
    );
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["backend"], "tract");
}

#[test]
fn missing_ort_library_is_one_line() {
    assert_error(
        &[
            "eval",
            &model("mnist-8.onnx"),
            "--data",
            &format!("mnist:{}", shared("data/mnist")),
            "--backend",
            "ort",
        ],
        &[("ORT_DYLIB_PATH", "/nonexistent")],
        &["ONNX Runtime library not found", "/nonexistent"],
    );
    assert_error(
        &["bench", &model("mnist-8.onnx"), "--backend", "ort"],
        &[("ORT_DYLIB_PATH", "/nonexistent")],
        &["ONNX Runtime library not found"],
    );
}

#[test]
fn missing_cuda_provider_is_one_line() {
    // tract never has CUDA.
    assert_error(
        &[
            "bench",
            &model("mnist-8.onnx"),
            "--backend",
            "tract",
            "--device",
            "cuda",
        ],
        &[],
        &["tract runs on the CPU only"],
    );
    if !common::require_ort() {
        return;
    }
    // The CPU wheel of ONNX Runtime has no CUDA execution provider.
    let lib = lopper::runtime::ort::find_library()
        .unwrap()
        .display()
        .to_string();
    assert_error(
        &[
            "bench",
            &model("mnist-8.onnx"),
            "--backend",
            "ort",
            "--device",
            "cuda",
        ],
        &[],
        &[
            "CUDA execution provider not available",
            &lib,
            "onnxruntime-gpu",
        ],
    );
}

#[test]
fn bad_dataset_paths_are_one_line() {
    let m = model("mnist-8.onnx");
    assert_error(
        &["eval", &m, "--data", "mnist:/nonexistent/mnist"],
        &[],
        &["/nonexistent/mnist", "no such file"],
    );
    assert_error(
        &[
            "eval",
            &m,
            "--data",
            &format!("mnist:{}", shared("data/cifar10")),
        ],
        &[],
        &["images-idx3-ubyte"],
    );
    let zip = shared("data/cifar10/cifar10-jpeg.zip");
    assert_error(
        &[
            "eval",
            &m,
            "--data",
            &format!("images:{zip}"),
            "--split",
            "val",
        ],
        &[],
        &["no split folder 'val/'", "test"],
    );
    assert_error(
        &["eval", &m, "--data", "weird.txt"],
        &[],
        &["--data", "unknown dataset format"],
    );
    assert_error(&["eval", &m], &[], &["--data"]);
    let npz = shared("data/cifar10/lossless-subset.npz");
    assert_error(
        &[
            "eval",
            &m,
            "--data",
            &format!("npz:{npz}"),
            "--x-key",
            "images",
        ],
        &[],
        &["no array 'images'", "x_test"],
    );
}

#[test]
fn mismatched_shapes_and_layouts_are_one_line() {
    let npz = format!("npz:{}", shared("data/cifar10/lossless-subset.npz"));
    // CIFAR images into the 28x28 MNIST model.
    assert_error(
        &["eval", &model("mnist-8.onnx"), "--data", &npz],
        &[],
        &["Input3", "28x28", "32x32x3", "--resize"],
    );
    // An NCHW model read as NHWC takes 32 channels.
    assert_error(
        &[
            "eval",
            &model("resnet20_cifar10.folded.onnx"),
            "--data",
            &npz,
            "--layout",
            "nhwc",
        ],
        &[],
        &["32 channels", "samples have 3"],
    );
    // The model fixes its batch at 1.
    assert_error(
        &[
            "eval",
            &model("mnist-8.onnx"),
            "--data",
            &format!("mnist:{}", shared("data/mnist")),
            "--batch-size",
            "64",
        ],
        &[],
        &["fixes the batch size at 1"],
    );
    // Three means for one channel.
    assert_error(
        &[
            "eval",
            &model("mnist-8.onnx"),
            "--data",
            &format!("mnist:{}", shared("data/mnist")),
            "--mean",
            MEAN,
        ],
        &[],
        &["--mean has 3 values"],
    );
}

#[test]
fn labels_beyond_the_model_outputs_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("tiny.npz");
    let x = vec![0u8; 4 * 28 * 28];
    write_npz(
        &path,
        &[
            ("x", npy("|u1", &[4, 28, 28], &x)),
            ("y", npy_i64(&[0, 3, 12, 1])),
        ],
    );
    assert_error(
        &[
            "eval",
            &model("mnist-8.onnx"),
            "--data",
            &format!("npz:{}", path.display()),
        ],
        &[],
        &["labels go up to 12", "10 scores"],
    );
    // The same samples with labels in range evaluate fine (28x28 arrays read as 1-channel images).
    write_npz(
        &path,
        &[
            ("x", npy("|u1", &[4, 28, 28], &x)),
            ("y", npy_i64(&[0, 3, 9, 1])),
        ],
    );
    let r = eval_json(&[
        &model("mnist-8.onnx"),
        "--data",
        &format!("npz:{}", path.display()),
        "--backend",
        "tract",
    ]);
    assert_eq!(r["samples"], 4);
}
