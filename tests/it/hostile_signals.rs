//! Interrupted runs (issue 15): SIGINT/SIGTERM while lopper verifies remove its temporary
//! folders and exit 130/143; a new run sweeps the folders of runs killed outright.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn lopper() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lopper"))
}

/// The entries of `dir`, but for `.ses`: ONNX Runtime 1.31's telemetry library writes that
/// session-id file into the temporary folder when the runtime starts (even with telemetry
/// off) and reuses it on later runs, so it is not a leftover of the interrupted run.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".ses")
        .collect();
    v.sort();
    v
}

#[cfg(unix)]
#[test]
fn signals_during_verification_remove_the_temporary_folders() {
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/zoo/efficientnet_b0.bn.onnx");
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        // The oracle's folder lives about a second; a run that ends before it is seen retries.
        let mut caught = false;
        for _attempt in 0..5 {
            let tmp = tempfile::tempdir().unwrap();
            let out = tempfile::tempdir().unwrap();
            let o = out.path().join("o.onnx");
            let mut child = lopper()
                .args([
                    "prune",
                    model.to_str().unwrap(),
                    "--target",
                    "flops=0.5",
                    "-o",
                ])
                .arg(&o)
                .env("TMPDIR", tmp.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let start = Instant::now();
            let seen = loop {
                if names(tmp.path())
                    .iter()
                    .any(|n| n.starts_with("lopper-oracle-"))
                {
                    break true;
                }
                if child.try_wait().unwrap().is_some() || start.elapsed() > Duration::from_secs(120)
                {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            if !seen {
                let _ = child.kill();
                let _ = child.wait();
                continue;
            }
            // SAFETY: signalling our own child.
            assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
            let status = child.wait().unwrap();
            if status.code() == Some(0) {
                continue; // it finished between the look and the signal
            }
            assert_eq!(status.code(), Some(code), "signal {sig}: {status:?}");
            assert!(
                names(tmp.path()).is_empty(),
                "left behind: {:?}",
                names(tmp.path())
            );
            assert!(
                names(out.path()).is_empty(),
                "left behind: {:?}",
                names(out.path())
            );
            caught = true;
            break;
        }
        assert!(caught, "signal {sig}: never caught a run while it verified");
    }
}

#[cfg(unix)]
#[test]
fn a_new_run_sweeps_folders_of_dead_runs() {
    let tmp = tempfile::tempdir().unwrap();
    // PIDs never exceed 2^22 on Linux: this process is gone.
    let dead = tmp.path().join("lopper-oracle-999999999-0");
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(dead.join("a.onnx"), b"stale").unwrap();
    // This test's own PID is alive: its folder stays; so does anything not lopper's.
    let alive = tmp
        .path()
        .join(format!("lopper-oracle-{}-0", std::process::id()));
    std::fs::create_dir(&alive).unwrap();
    let other = tmp.path().join("lopper-notes");
    std::fs::create_dir(&other).unwrap();
    let mnist =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/pretrained/mnist-8.onnx");
    let st = lopper()
        .arg("inspect")
        .arg(&mnist)
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    assert!(!dead.exists(), "the dead run's folder stays");
    assert!(alive.exists() && other.exists());
}
