//! ONNX's own node conformance cases through `simplify`: a guard for every refactor of the IR,
//! the ops and the passes.
//!
//! `scripts/onnx_conformance.py generate` writes every case of the installed `onnx` package's
//! `onnx.backend.test.case.node.collect_testcases(None)` (one model, its inputs and expected
//! outputs per case: 1,653 with onnx 1.20.1), plus a constant-input variant of each case whose
//! inputs and outputs are tensors (1,609): the inputs become initializers and each output `y`
//! becomes `Reshape(y, Shape(y))`, so that constant folding evaluates the op under test itself
//! (lopper does not fold a node that computes a graph output). Each model then goes through
//! what `lopper simplify` does, in process: load, verify, [`simplify`] (default options: BN
//! folded, Identity and Dropout removed; the verifier after every pass in this debug build),
//! shape inference and costs (the CLI's final consistency check), save.
//! `scripts/onnx_conformance.py check` runs the original and the simplified model through ONNX
//! Runtime and compares both with the expected outputs as onnx's backend test runner does
//! (rtol 1e-3, atol 1e-7, shapes and dtypes exact).
//!
//! The rules, asserted together at the end so that one run lists every offender:
//! - no case panics in lopper (load, simplify, analysis or save);
//! - no case gets an `Err` from lopper either, not even one whose original ONNX Runtime fails
//!   (float8/int4 inputs its Python API cannot feed, ops it lacks, …): lopper keeps unknown ops
//!   verbatim, so every ONNX model should load, simplify and save (the stricter of the two
//!   possible rules, and it holds today);
//! - every case whose original passes on ONNX Runtime still passes on the simplified model;
//! - except the documented [`KNOWN_FAILURES`] (none today), which must still fail, so that a
//!   fix shrinks the list;
//! - at least [`ORIGINAL_PASS_FLOOR`] originals pass (onnx 1.20.1, onnxruntime 1.31.1 from
//!   `scripts/setup-test-env.sh`), so that a broken oracle cannot pass vacuously, and lopper
//!   folds at least [`FOLDED_FLOOR`] of the constant-input variants completely, so that a
//!   refactor cannot silently stop evaluating ops.
//!
//! The Python packages come from `PYTHONPATH` (and `.deps/python` when it exists). Without
//! them the test prints a notice and skips, or fails under `CI=true`.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use common::{catch_quietly, crate_dir, in_ci};
use lopper::analysis::{costs, infer_shapes};
use lopper::ir::import::import;
use lopper::onnx::{load_model_bytes, SaveOptions};
use lopper::passes::{simplify, SimplifyOptions};

/// Originals that pass on ONNX Runtime with the pinned packages: 1,411 of the 1,653 cases as
/// written, 1,443 of the 1,609 constant-input variants.
const ORIGINAL_PASS_FLOOR: [usize; 2] = [1411, 1443];

/// Constant-input variants (of those whose original passes) that simplify folds down to the
/// `Reshape` tails: the op under test evaluated by lopper (`Op::eval`). 400 today.
const FOLDED_FLOOR: usize = 400;

/// The name suffix of a case's constant-input variant (`CONST_SUFFIX` in the script).
const CONST_SUFFIX: &str = ".const";

/// Counts for one kind of case.
#[derive(Default)]
struct Tally {
    cases: usize,
    /// Originals that pass on ONNX Runtime.
    original: usize,
    /// Of those, the ones that still pass after simplify.
    simplified: usize,
    /// Models that simplify changed.
    changed: usize,
    /// Models whose original passes and that are left with nothing but `Reshape` nodes: in the
    /// constant-input variants, those whose op lopper evaluated (folded) itself.
    evaluated: usize,
    /// Clean lopper errors.
    errors: usize,
    panics: usize,
}

/// Cases that break a rule (the simplified model fails where the original passes, or lopper
/// returns an `Err`), with the reason. Each must still fail: fixing one fails the test until it
/// is removed from here.
const KNOWN_FAILURES: &[(&str, &str)] = &[];

/// The exit code of `scripts/onnx_conformance.py` when its packages cannot be imported.
const MISSING_PACKAGES: i32 = 3;

/// Named model bytes, as the script's `write_records`/`read_records` store them.
type Records = Vec<(String, Vec<u8>)>;

/// What lopper did with one case.
#[derive(Debug)]
enum Outcome {
    /// Simplified and saved; whether simplify changed the model, and whether only `Reshape`
    /// nodes are left.
    Simplified { changed: bool, evaluated: bool },
    /// A clean error, with its message.
    Error(String),
    /// A panic, with its message.
    Panic(String),
}

/// The `(name, bytes)` records of a file in the script's `write_records` format: u32 LE name
/// length, UTF-8 name, u64 LE length, bytes.
fn read_records(path: &Path) -> Records {
    let buf = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut rest = &buf[..];
    let take = |n: usize, rest: &mut &[u8]| {
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        head.to_vec()
    };
    while !rest.is_empty() {
        let n = u32::from_le_bytes(take(4, &mut rest).try_into().unwrap()) as usize;
        let name = String::from_utf8(take(n, &mut rest)).unwrap();
        let m = u64::from_le_bytes(take(8, &mut rest).try_into().unwrap()) as usize;
        out.push((name, take(m, &mut rest)));
    }
    out
}

/// Writes `(name, bytes)` records for the script's `read_records`.
fn write_records(path: &Path, records: &Records) {
    let mut buf = Vec::new();
    for (name, bytes) in records {
        buf.extend_from_slice(&(name.len() as u32).to_le_bytes());
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        buf.extend_from_slice(bytes);
    }
    std::fs::write(path, buf).unwrap();
}

/// What `lopper simplify` does, minus printing: load, verify, simplify, shapes and costs, save
/// (to `scratch`, a file of this worker's; its bytes are returned).
fn simplify_case(model: Vec<u8>, scratch: &Path) -> lopper::Result<(Outcome, Vec<u8>)> {
    let dir = scratch.parent().unwrap();
    let mut model = import(load_model_bytes(model.into(), dir)?)?;
    lopper::ir::verify(&model.graph)?;
    let changed = simplify(&mut model, &SimplifyOptions::default())?;
    let shapes = infer_shapes(&model)?;
    costs(&model, &shapes)?;
    model.save(scratch, &SaveOptions::default())?;
    let bytes = std::fs::read(scratch).map_err(|e| lopper::Error::io(scratch, e))?;
    let g = &model.graph;
    let evaluated = g.node_ids().all(|n| g.node(n).op_type == "Reshape");
    Ok((Outcome::Simplified { changed, evaluated }, bytes))
}

/// Runs [`simplify_case`] on every model on all cores, catching panics quietly
/// ([`catch_quietly`]: thousands of cases would print thousands of lines). Returns each case's
/// outcome and the simplified models.
fn simplify_all(root: &Path, models: Records) -> (BTreeMap<String, Outcome>, Records) {
    let queue = Mutex::new(models.into_iter());
    let outcomes = Mutex::new(BTreeMap::new());
    let simplified = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for k in 0..threads {
            let scratch = root.join(format!("worker-{k}.onnx"));
            let (queue, outcomes, simplified) = (&queue, &outcomes, &simplified);
            s.spawn(move || loop {
                let Some((name, model)) = queue.lock().unwrap().next() else {
                    break;
                };
                let outcome = match catch_quietly(|| simplify_case(model, &scratch)) {
                    Ok(Ok((outcome, bytes))) => {
                        simplified.lock().unwrap().push((name.clone(), bytes));
                        outcome
                    }
                    Ok(Err(e)) => Outcome::Error(e.to_string()),
                    Err(panic) => Outcome::Panic(panic),
                };
                outcomes.lock().unwrap().insert(name, outcome);
            });
        }
    });
    (
        outcomes.into_inner().unwrap(),
        simplified.into_inner().unwrap(),
    )
}

/// `python3 scripts/onnx_conformance.py ARGS…` with `.deps/python` on the path. `None` when
/// the packages are missing and this is not CI (the caller skips); panics on other failures.
fn python(args: &[&str]) -> Option<String> {
    let mut path = std::env::var_os("PYTHONPATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let deps = crate_dir().join(".deps/python");
    if deps.is_dir() {
        path.insert(0, deps);
    }
    let out = Command::new("python3")
        .arg(crate_dir().join("scripts/onnx_conformance.py"))
        .args(args)
        .env("PYTHONPATH", std::env::join_paths(path).unwrap())
        .output();
    let missing = |why: String| {
        let msg = format!("{why} (run scripts/setup-test-env.sh or `make test`)");
        assert!(!in_ci(), "{msg}");
        eprintln!("NOTICE: skipping the ONNX conformance cases: {msg}");
    };
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            missing(format!("cannot run python3: {e}"));
            return None;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(MISSING_PACKAGES) {
        missing(stderr.trim().to_string());
        return None;
    }
    assert!(
        out.status.success(),
        "scripts/onnx_conformance.py {args:?} failed:\n{stderr}"
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn simplify_keeps_onnx_node_conformance() {
    let start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root: PathBuf = tmp.path().into();
    let root_str = root.to_str().unwrap();
    let Some(generated) = python(&["generate", root_str]) else {
        return;
    };
    let models = read_records(&root.join("models.bin"));
    let names: Vec<String> = models.iter().map(|(n, _)| n.clone()).collect();
    let generated_s = start.elapsed().as_secs_f64();

    let (outcomes, simplified) = simplify_all(&root, models);
    write_records(&root.join("simplified.bin"), &simplified);
    let simplify_s = start.elapsed().as_secs_f64() - generated_s;

    python(&["check", root_str]).unwrap();
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("results.json")).unwrap()).unwrap();

    let known: BTreeMap<&str, &str> = KNOWN_FAILURES.iter().copied().collect();
    // Index 0: the cases as onnx writes them; 1: their constant-input variants.
    let mut tally = [Tally::default(), Tally::default()];
    let mut problems = Vec::new();
    for name in &names {
        let t = &mut tally[usize::from(name.ends_with(CONST_SUFFIX))];
        t.cases += 1;
        let r = &results[name.as_str()];
        let original_fails = r["original"].as_str();
        let failure = match (&outcomes[name], original_fails) {
            (Outcome::Panic(msg), _) => Some(format!("lopper panicked: {msg}")),
            (Outcome::Error(e), _) => {
                t.errors += 1;
                let original = match original_fails {
                    None => "passes",
                    Some(_) => "fails",
                };
                Some(format!(
                    "lopper failed (the original {original} on ONNX Runtime): {e}"
                ))
            }
            (Outcome::Simplified { changed, evaluated }, _) => {
                t.changed += usize::from(*changed);
                t.evaluated += usize::from(*evaluated && original_fails.is_none());
                match (original_fails, r["simplified"].as_str()) {
                    (None, Some(why)) => Some(format!("original passes, simplified fails: {why}")),
                    _ => None,
                }
            }
        };
        t.panics += usize::from(matches!(outcomes[name], Outcome::Panic(_)));
        if original_fails.is_none() {
            t.original += 1;
            t.simplified += usize::from(failure.is_none());
        }
        match (failure, known.get(name.as_str())) {
            (Some(f), None) => problems.push(format!("{name}: {f}")),
            (None, Some(why)) => problems.push(format!(
                "{name}: no longer fails; remove it from KNOWN_FAILURES ({why})"
            )),
            _ => {}
        }
    }
    println!("onnx conformance: {generated}");
    for (t, kind) in tally.iter().zip(["as written", "constant inputs"]) {
        let folded = if kind == "as written" {
            String::new()
        } else {
            format!(" (lopper folded the op itself in {})", t.evaluated)
        };
        println!(
            "  {kind}: {} cases, ONNX Runtime passes {} originals, {} of them after simplify; \
             simplify changed {}{folded}; {} lopper errors; {} panics",
            t.cases, t.original, t.simplified, t.changed, t.errors, t.panics
        );
    }
    println!(
        "  {} known failures; generate {generated_s:.1} s, simplify {simplify_s:.1} s, \
         total {:.1} s",
        KNOWN_FAILURES.len(),
        start.elapsed().as_secs_f64()
    );
    for (name, _) in KNOWN_FAILURES {
        assert!(
            outcomes.contains_key(*name),
            "KNOWN_FAILURES names {name}, which is no longer a case"
        );
    }
    assert!(
        problems.is_empty(),
        "{} conformance problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    for (t, floor) in tally.iter().zip(ORIGINAL_PASS_FLOOR) {
        assert!(
            t.original >= floor,
            "only {} originals pass on ONNX Runtime (floor {floor}): is the oracle set up as \
             scripts/setup-test-env.sh does?",
            t.original
        );
    }
    assert!(
        tally[1].evaluated >= FOLDED_FLOOR,
        "lopper folded only {} constant-input cases completely (floor {FOLDED_FLOOR})",
        tally[1].evaluated
    );
}
