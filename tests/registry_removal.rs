//! The temporary-path registry's removal, in a test binary of its own: it closes the process's
//! registry for good, which would fail every later test that writes a temporary file in a
//! shared binary (`tests/it`).

use std::path::Path;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What the signal thread runs: every registered path goes, newest first (a file inside a
/// registered folder before the folder), and nothing is made afterwards, so a thread that
/// was about to create a temporary folder cannot leave one behind. (This closes the registry
/// of the test process for good: hence a test binary of its own.)
#[test]
fn removal_takes_every_registered_path_and_refuses_new_ones() {
    use lopper::temp_dir::{remove_registered, Registered, TempDir};
    let dir = TempDir::new("registry").unwrap();
    let inner = dir.path().join("model.onnx");
    let (_file, ()) = Registered::create(&inner, |p| std::fs::write(p, b"partial")).unwrap();
    // A file written into the folder without registering (a runtime's output) goes with it.
    std::fs::write(dir.path().join("other"), b"x").unwrap();
    let path = dir.path().to_path_buf();
    remove_registered();
    assert!(!path.exists(), "{} stays", path.display());
    let late = TempDir::new("registry");
    assert!(late.is_err(), "a folder was made after the removal");
    assert!(
        names(&std::env::temp_dir())
            .iter()
            .all(|n| !n.starts_with(&format!("lopper-registry-{}-", std::process::id()))),
        "a late folder was left behind"
    );
}
