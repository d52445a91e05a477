//! Load+save time and peak memory for a ≥ 100 MB model (generated ResNet-50, 102 MB of
//! float32 weights), against a reference measured in the same run: a plain `fs::read` +
//! `fs::write` of the same file (the least any loader/saver can do).
//!
//! Each measurement runs in a fresh child process (this binary re-executed) so that peak RSS
//! (`VmHWM`) is that of one load+save alone. Run with `cargo bench --bench load_save`; under
//! `cargo test` it only checks that it builds.

#[path = "common/mod.rs"]
mod common;
use common::*;

#[path = "../fixtures/resnet50.rs"]
mod resnet50;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const RUNS: usize = 7;

/// Child: one measurement. Prints `seconds peak_kib`.
fn child(mode: &str, input: &Path, output: &Path) {
    let t = Instant::now();
    match mode {
        "lopper" => {
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
    println!("{secs} {}", vm_hwm_kib());
}

fn measure(exe: &Path, mode: &str, input: &Path, output: &Path) -> (f64, u64) {
    let out = Command::new(exe)
        .env("LOPPER_BENCH_CHILD", mode)
        .env("LOPPER_BENCH_IN", input)
        .env("LOPPER_BENCH_OUT", output)
        .output()
        .expect("spawn child");
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s.split_whitespace();
    let secs: f64 = it.next().and_then(|v| v.parse().ok()).expect("child time");
    let kib: u64 = it.next().and_then(|v| v.parse().ok()).expect("child rss");
    (secs, kib)
}

fn main() {
    if let Ok(mode) = std::env::var("LOPPER_BENCH_CHILD") {
        let input = PathBuf::from(std::env::var("LOPPER_BENCH_IN").expect("input"));
        let output = PathBuf::from(std::env::var("LOPPER_BENCH_OUT").expect("output"));
        child(&mode, &input, &output);
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!("load_save: run with `cargo bench --bench load_save`");
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
    let size = std::fs::metadata(&input).expect("fixture").len();
    let output = dir.join("resnet50.out.onnx");
    let exe = std::env::current_exe().expect("own path");
    let (mut lt, mut lr, mut rt, mut rr) = (vec![], vec![], vec![], vec![]);
    // Interleave so that machine drift affects both equally.
    for _ in 0..RUNS {
        let (t, r) = measure(&exe, "reference", &input, &output);
        rt.push(t);
        rr.push(r as f64);
        let (t, r) = measure(&exe, "lopper", &input, &output);
        lt.push(t);
        lr.push(r as f64);
    }
    let (lt, lr, rt, rr) = (median(lt), median(lr), median(rt), median(rr));
    let mb = size as f64 / 1e6;
    println!("model: generated ResNet-50, {mb:.1} MB, {RUNS} runs each, medians");
    println!(
        "{:<28} {:>10} {:>14} {:>12}",
        "", "time (s)", "peak RSS (MB)", "RSS/file"
    );
    println!(
        "{:<28} {:>10.3} {:>14.1} {:>12.2}",
        "fs::read + fs::write",
        rt,
        rr / 1024.0,
        rr * 1024.0 / size as f64
    );
    println!(
        "{:<28} {:>10.3} {:>14.1} {:>12.2}",
        "lopper load + save",
        lt,
        lr / 1024.0,
        lr * 1024.0 / size as f64
    );
    println!("time ratio lopper/reference: {:.2}", lt / rt);
    let _ = std::fs::remove_file(&output);
}
