//! Pruning a ≥ 100 MB model file to file: a generated torchvision ResNet-50 (102 MB of float32
//! weights) pruned to half its MACs (`--target flops=0.5`, L1, global), against references
//! measured in the same run: a plain `fs::read` + `fs::write` of the file, and lopper's own
//! load + save. Goals: ≤ 0.5 s wall and peak RSS ≤ 1.5× the file unverified; ≤ 1.2 s and
//! ≤ 3× the file with the equivalence oracle on both runtimes (the default).
//!
//! The timed pipeline is the CLI's: load, verify the graph, simplify, analyse, score, bisect
//! to the budget, remove channels, (compare with the masked original,) save.
//!
//! Each measurement runs in a fresh child process (this binary re-executed) so that peak RSS
//! (`VmHWM`) is that of one run alone. Run with `cargo bench --bench prune`; under
//! `cargo test` it only checks that it builds.

#[path = "common/mod.rs"]
mod common;
use common::*;

#[path = "../fixtures/resnet50.rs"]
mod resnet50;

#[path = "../fixtures/vgg11_bn.rs"]
mod vgg11_bn;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lopper::analysis::importance::{CriterionKind, Normalize, Reduce};
use lopper::plan::allocate::{AllocateOptions, Amount, Budget, Constraints};
use lopper::prune::{prune, PruneOptions, Scored, Selection};

const RUNS: usize = 7;

fn options(verify: bool) -> PruneOptions {
    PruneOptions {
        selection: Selection::Scored(Scored {
            criterion: CriterionKind::L1,
            reduce: Reduce::Sum,
            normalize: Normalize::Max,
            seed: 0,
            allocate: AllocateOptions {
                amount: Amount::Target(Budget::Flops(0.5)),
                constraints: Constraints {
                    min_keep_fraction: 0.1,
                    ..Default::default()
                },
                ..Default::default()
            },
            steps: 1,
            latency: Default::default(),
            drop_blocks: 0.0,
            drop_search: false,
        }),
        verify_with: if verify {
            lopper::oracle::available_backends()
        } else {
            vec![]
        },
        tolerance: 1e-4,
    }
}

/// Child: one measurement. Prints `seconds peak_kib macs_ratio`.
fn child(mode: &str, input: &Path, output: &Path) {
    let t = Instant::now();
    let mut ratio = 1.0;
    match mode {
        "prune" | "prune+verify" => {
            let mut m = lopper::ir::Model::load(input).expect("load");
            lopper::ir::verify(&m.graph).expect("verify graph");
            let r = prune(&mut m, &options(mode == "prune+verify")).expect("prune");
            m.save(output, &lopper::onnx::SaveOptions::default())
                .expect("save");
            ratio = r.macs.1 as f64 / r.macs.0 as f64;
        }
        "remove-dead" => {
            let mut m = lopper::ir::Model::load(input).expect("load");
            lopper::ir::verify(&m.graph).expect("verify graph");
            let opts = PruneOptions {
                selection: Selection::Dead,
                verify_with: vec![],
                tolerance: 1e-4,
            };
            let r = prune(&mut m, &opts).expect("remove dead");
            m.save(output, &lopper::onnx::SaveOptions::default())
                .expect("save");
            ratio = r.params.1 as f64 / r.params.0 as f64;
        }
        "load+save" => {
            let m = lopper::ir::Model::load(input).expect("load");
            m.save(output, &lopper::onnx::SaveOptions::default())
                .expect("save");
        }
        _ => {
            let bytes = std::fs::read(input).expect("read");
            std::fs::write(output, &bytes).expect("write");
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!("{secs} {} {ratio}", vm_hwm_kib());
}

fn measure(exe: &Path, mode: &str, input: &Path, output: &Path) -> (f64, f64, f64) {
    let out = Command::new(exe)
        .env("LOPPER_BENCH_CHILD", mode)
        .env("LOPPER_BENCH_IN", input)
        .env("LOPPER_BENCH_OUT", output)
        .output()
        .expect("spawn child");
    let s = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert!(
        v.len() == 3,
        "child {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (v[0], v[1], v[2])
}

fn main() {
    if let Ok(mode) = std::env::var("LOPPER_BENCH_CHILD") {
        let input = PathBuf::from(std::env::var("LOPPER_BENCH_IN").expect("input"));
        let output = PathBuf::from(std::env::var("LOPPER_BENCH_OUT").expect("output"));
        child(&mode, &input, &output);
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!("prune: run with `cargo bench --bench prune`");
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-fixtures");
    std::fs::create_dir_all(&dir).expect("fixture dir");
    let input = dir.join("resnet50.onnx");
    if !input.exists() {
        eprintln!("generating {}", input.display());
        resnet50::resnet50(1)
            .save(&input, &Default::default())
            .expect("write fixture");
    }
    let size = std::fs::metadata(&input).expect("fixture").len() as f64;
    let output = dir.join("resnet50.pruned.onnx");
    let exe = std::env::current_exe().expect("own path");
    let modes = ["fs::read + fs::write", "load+save", "prune", "prune+verify"];
    let mut results: Vec<(Vec<f64>, Vec<f64>, f64)> = vec![(vec![], vec![], 1.0); modes.len()];
    // Interleave so that machine drift affects every mode equally.
    for _ in 0..RUNS {
        for (k, mode) in modes.iter().enumerate() {
            let (t, r, ratio) = measure(&exe, mode, &input, &output);
            results[k].0.push(t);
            results[k].1.push(r * 1024.0);
            results[k].2 = ratio;
        }
    }
    println!(
        "model: generated ResNet-50, {:.1} MB; target flops=0.5 (l1, global); {RUNS} runs each, medians",
        size / 1e6
    );
    println!(
        "{:<24} {:>9} {:>14} {:>9} {:>11}",
        "", "time (s)", "peak RSS (MB)", "RSS/file", "MACs ratio"
    );
    let reference = median(results[0].0.clone());
    for (k, mode) in modes.iter().enumerate() {
        let (t, r) = (median(results[k].0.clone()), median(results[k].1.clone()));
        println!(
            "{:<24} {:>9.3} {:>14.1} {:>9.2} {:>11.4}",
            mode,
            t,
            r / 1e6,
            r / size,
            results[k].2
        );
    }
    for (k, what) in [(2, "prune"), (3, "prune+verify")] {
        let t = median(results[k].0.clone());
        println!("{what} time / fs copy: {:.2}", t / reference);
    }
    let _ = std::fs::remove_file(&output);
    remove_dead(&dir, &exe);
}

/// `--remove-dead` on a generated VGG-11-BN (532 MB) with 30% of every BatchNormalization's
/// scales zero, against a plain copy of the file measured in the same run; the last column is
/// the parameter ratio (the removal must never grow the model).
fn remove_dead(dir: &Path, exe: &Path) {
    let input = dir.join("vgg11_bn.dead30.onnx");
    if !input.exists() {
        eprintln!("generating {}", input.display());
        vgg11_bn::vgg11_bn(0.3)
            .save(&input, &Default::default())
            .expect("write fixture");
    }
    let size = std::fs::metadata(&input).expect("fixture").len() as f64;
    let output = dir.join("vgg11_bn.pruned.onnx");
    let modes = ["fs::read + fs::write", "remove-dead"];
    let mut results: Vec<(Vec<f64>, Vec<f64>, f64)> = vec![(vec![], vec![], 1.0); modes.len()];
    for _ in 0..3 {
        for (k, mode) in modes.iter().enumerate() {
            let (t, r, ratio) = measure(exe, mode, &input, &output);
            results[k].0.push(t);
            results[k].1.push(r * 1024.0);
            results[k].2 = ratio;
        }
    }
    println!(
        "model: generated VGG-11-BN, {:.1} MB, 30% of BN scales zero; --remove-dead; 3 runs each, medians",
        size / 1e6
    );
    println!(
        "{:<24} {:>9} {:>14} {:>9} {:>12}",
        "", "time (s)", "peak RSS (MB)", "RSS/file", "params ratio"
    );
    for (k, mode) in modes.iter().enumerate() {
        let (t, r) = (median(results[k].0.clone()), median(results[k].1.clone()));
        println!(
            "{:<24} {:>9.3} {:>14.1} {:>9.2} {:>12.4}",
            mode,
            t,
            r / 1e6,
            r / size,
            results[k].2
        );
    }
    let _ = std::fs::remove_file(&output);
}
