//! The `examples/` folder works as written: its Makefile prunes the shipped model with the
//! pinned plan, byte for byte the same on every build, and `bench.sh` reads `lopper bench
//! --json`. Needs `make` and `python3`, nothing from `../shared`.

use std::path::Path;
use std::process::Command;

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
}

/// `make -C examples` with this build's binary, writing into `out`.
fn make(out: &Path) {
    let o = Command::new("make")
        .arg("-C")
        .arg(examples())
        .arg(format!("LOPPER={}", env!("CARGO_BIN_EXE_lopper")))
        .arg(format!("OUT={}", out.display()))
        .output()
        .expect("run make");
    assert!(
        o.status.success(),
        "make failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn the_makefile_step_rebuilds_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    make(&a);
    make(&b);
    let read = |d: &Path| std::fs::read(d.join("resnet20.pruned.onnx")).unwrap();
    let (x, y) = (read(&a), read(&b));
    assert!(x.len() > 100_000, "{} bytes", x.len());
    assert_eq!(x, y, "two builds from the pinned plan differ");
    // The pinned plan takes the model to half its MACs.
    let m = lopper::ir::Model::load(a.join("resnet20.pruned.onnx")).unwrap();
    let o = lopper::ir::Model::load(examples().join("../fixtures/models/resnet20_cifar10.bn.onnx"))
        .unwrap();
    let macs = |m: &lopper::ir::Model| {
        lopper::analysis::costs(m, &lopper::analysis::infer_shapes(m).unwrap())
            .unwrap()
            .macs as f64
    };
    let ratio = macs(&m) / macs(&o);
    assert!((ratio - 0.5).abs() < 0.01, "MACs ratio {ratio}");
}

#[test]
fn the_benchmark_harness_reads_the_json_report() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(examples().join("bench.sh"))
        .arg(env!("CARGO_BIN_EXE_lopper"))
        .env("OUT", dir.path())
        .output()
        .expect("run bench.sh");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("pruned") && out.contains("faster") && out.contains("FLOPs x0.5"),
        "{out}"
    );
}
