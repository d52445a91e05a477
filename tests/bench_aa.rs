//! `lopper bench`'s A/A check in a test binary of its own, so that no other test of the same
//! binary runs beside it and loads the cores unevenly while it times.

mod common;

use serde_json::Value;

use common::run_lopper as lopper;

/// The harness's A/A check: one model under two names, timed interleaved to a 1% precision,
/// must tie (medians within 3%, or within their stated noise where it could not reach 1%, and
/// the speedup's interval near 1), on ONNX Runtime when
/// present (where idle sessions used to spin and steal the cores) and on tract.
#[test]
fn bench_of_the_same_model_twice_ties() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::shared_dir().join("models/pretrained/resnet20_cifar10.folded.onnx");
    let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
    std::fs::copy(&src, &a).unwrap();
    std::fs::copy(&src, &b).unwrap();
    let mut backends = vec!["tract"];
    if common::require_ort() {
        backends.push("ort");
    }
    for backend in backends {
        let (a, b) = (a.display().to_string(), b.display().to_string());
        let args = [
            "bench",
            &a,
            &b,
            "--backend",
            backend,
            "--threads",
            "2",
            "--json",
        ];
        let (code, out, err) = lopper(&args);
        assert_eq!(code, 0, "{err}");
        let r: Value = serde_json::from_str(&out).unwrap();
        let m = &r["models"][1];
        let runs = m["latency"]["runs"].as_u64().unwrap();
        assert!((50..=300).contains(&runs), "{backend}: {runs} runs");
        let speedup = m["speedup"].as_f64().unwrap();
        // Within 3%, or within the two medians' own stated noise when the machine did not let
        // them reach it (tract on a busy 2-core machine: medians known to ±5% after 300
        // runs); a harness biased by position would miss both.
        let noise: f64 = r["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["latency"]["noise"].as_f64().unwrap())
            .sum();
        assert!(
            (speedup - 1.0).abs() <= noise.max(0.03),
            "{backend}: A/A speedup {speedup}, noise {noise} ({m})"
        );
        let (lo, hi) = (
            m["speedup_ci"][0].as_f64().unwrap(),
            m["speedup_ci"][1].as_f64().unwrap(),
        );
        assert!(
            lo <= 1.03 && hi >= 0.97,
            "{backend}: A/A interval {lo}–{hi}"
        );
    }
}
