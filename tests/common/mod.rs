//! Helpers shared by the integration tests: the shared model set, seeded random inputs, running
//! a model under a backend, and the `onnx` checker oracle.
//!
//! The oracles (ONNX Runtime's library, the `onnx` Python package) come from
//! `scripts/setup-test-env.sh`. Under `CI=true` a missing oracle fails the test; elsewhere the
//! test prints a notice and skips that part.
#![allow(dead_code)]

pub mod arrays;
pub mod grad_net;

use std::path::{Path, PathBuf};
use std::process::Command;

use lopper::ir::{DType, Dim, Fact, Model, Tensor};
use lopper::runtime::{self, BackendKind};

/// Runs the `lopper` binary with `args`: (exit code, stdout, stderr).
pub fn run_lopper(args: &[&str]) -> (i32, String, String) {
    run_lopper_with(args, |_| {})
}

/// [`run_lopper`] with the command adjusted first by `setup` (environment variables).
pub fn run_lopper_with(args: &[&str], setup: impl FnOnce(&mut Command)) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lopper"));
    cmd.args(args);
    setup(&mut cmd);
    let out = cmd.output().expect("run lopper");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The crate root.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` next to the crate (models, data). Panics if it is missing.
pub fn shared_dir() -> PathBuf {
    let dir = crate_dir().join("../shared");
    assert!(
        dir.join("models").is_dir(),
        "{}: the shared folder with models/ is missing (expected next to the crate)",
        dir.display()
    );
    dir
}

/// Every `*.onnx` under `../shared/models/{zoo,pretrained}`, sorted.
pub fn all_models() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["zoo", "pretrained"] {
        let dir = shared_dir().join("models").join(sub);
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "onnx") {
                out.push(p);
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no models under ../shared/models");
    out
}

/// `zoo/name.onnx`-style short name for messages.
pub fn short(path: &Path) -> String {
    let dir = path
        .parent()
        .and_then(|d| d.file_name())
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{dir}/{file}")
}

/// Whether this run is CI (`CI` set to anything but empty/`false`/`0`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Fails under CI, or prints a notice and returns `false` elsewhere (the caller skips).
fn oracle_missing(what: &str) -> bool {
    let msg = format!("{what} is missing: run scripts/setup-test-env.sh (or `make test`)");
    if in_ci() {
        panic!("{msg}");
    }
    eprintln!("NOTICE: skipping: {msg}");
    false
}

/// Whether ONNX Runtime's library can be found; see [`oracle_missing`] for when it cannot.
pub fn require_ort() -> bool {
    lopper::runtime::ort::find_library().is_some() || oracle_missing("ONNX Runtime's library")
}

/// The Python path that holds the `onnx` package: `.deps/python` when set up.
fn checker_pythonpath() -> Option<PathBuf> {
    let deps = crate_dir().join(".deps/python");
    deps.join("onnx").is_dir().then_some(deps)
}

/// Whether the `onnx` checker is installed; see [`oracle_missing`] for when it is not.
pub fn require_checker() -> bool {
    checker_pythonpath().is_some() || oracle_missing("the onnx checker (.deps/python)")
}

/// Runs `onnx.checker.check_model(path, full_check=True)` on each file; panics naming the file
/// and the checker's message on failure. Skips (outside CI) when the checker is not installed.
pub fn check_models(paths: &[&Path]) {
    if !require_checker() {
        return;
    }
    let pp = checker_pythonpath().unwrap();
    let out = Command::new("python3")
        .arg(crate_dir().join("scripts/check_model.py"))
        .args(paths)
        .env("PYTHONPATH", &pp)
        .output()
        .expect("running python3 scripts/check_model.py");
    assert!(
        out.status.success(),
        "onnx checker rejected a model:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// [`check_models`] on one file.
pub fn check_model(path: &Path) {
    check_models(&[path]);
}

/// A small seeded xorshift64* generator.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value, zero included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

/// The concrete shape and dtype of a runtime input: symbolic and unknown dims become 1.
pub fn input_spec(model: &Model, name: &str) -> (DType, Vec<usize>) {
    let g = &model.graph;
    let v = g.value_by_name(name).unwrap();
    let fact = g
        .value(v)
        .decl
        .as_ref()
        .and_then(|d| d.r#type.as_ref())
        .map(Fact::from_type)
        .unwrap_or_default();
    let dtype = fact
        .dtype
        .unwrap_or_else(|| panic!("input '{name}' has no element type"));
    let shape = fact
        .shape
        .unwrap_or_else(|| panic!("input '{name}' has no shape"))
        .iter()
        .map(|d| match d {
            Dim::Known(n) => *n,
            Dim::Sym(_) | Dim::Unknown => 1,
        })
        .collect();
    (dtype, shape)
}

/// Random values for the real runtime inputs (graph inputs that are not initializers), in
/// graph order: symbolic dims = 1; floats uniform in [-1, 1); integers and bools zero.
pub fn random_inputs(model: &Model, seed: u64) -> Vec<(String, Tensor)> {
    let g = &model.graph;
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for &v in &g.inputs {
        if !g.is_runtime_input(v) {
            continue;
        }
        let name = g.value(v).name.clone();
        let (dtype, shape) = input_spec(model, &name);
        let n: usize = shape.iter().product();
        let values: Vec<f64> = if dtype.is_float() {
            (0..n).map(|_| rng.uniform()).collect()
        } else {
            vec![0.0; n]
        };
        let t = Tensor::from_f64_as(dtype, shape, &values).unwrap();
        out.push((name, t));
    }
    out
}

/// Runs a model file under a backend; panics naming the file and backend on failure.
pub fn run(kind: BackendKind, path: &Path, inputs: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    let mut s = runtime::load(kind, path)
        .unwrap_or_else(|e| panic!("{}: loading under {kind:?}: {e}", path.display()));
    s.run(inputs)
        .unwrap_or_else(|e| panic!("{}: running under {kind:?}: {e}", path.display()))
}

/// Compares two output lists for bit identity (names, dtypes, shapes, raw bytes). Returns a
/// description of every difference; empty when identical.
pub fn diff_outputs(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> Vec<String> {
    let mut out = Vec::new();
    if a.len() != b.len() {
        out.push(format!("{} outputs vs {}", a.len(), b.len()));
    }
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        if na != nb {
            out.push(format!("output name '{na}' vs '{nb}'"));
        } else if ta.dtype() != tb.dtype() || ta.shape() != tb.shape() {
            out.push(format!("output '{na}': {ta:?} vs {tb:?}"));
        } else if ta.raw() != tb.raw() {
            let (fa, fb) = (ta.to_f64_vec(), tb.to_f64_vec());
            let detail = match (fa, fb) {
                (Some(fa), Some(fb)) => {
                    let max = fa
                        .iter()
                        .zip(&fb)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0f64, f64::max);
                    let count = fa.iter().zip(&fb).filter(|(x, y)| x != y).count();
                    format!("{count} elements differ, max |diff| {max:e}")
                }
                _ => "bytes differ".to_string(),
            };
            out.push(format!("output '{na}' {ta:?}: {detail}"));
        }
    }
    out
}

/// `fixtures/golden/<name>.txt`.
pub fn golden_path(name: &str) -> PathBuf {
    crate_dir()
        .join("fixtures/golden")
        .join(format!("{name}.txt"))
}

/// Compares `text` with the golden file `fixtures/golden/<name>.txt`, or (re)writes the file
/// when `UPDATE_GOLDEN` is set. Panics with the first differing lines.
pub fn check_golden(name: &str, text: &str) {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
    if want != text {
        let diff: Vec<String> = want
            .lines()
            .zip(text.lines())
            .filter(|(a, b)| a != b)
            .take(5)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!(
            "{name}: IR dump differs from {} ({} vs {} lines):\n{}",
            path.display(),
            want.lines().count(),
            text.lines().count(),
            diff.join("\n")
        );
    }
}

/// Saves `model` as `dir/<name>.onnx`, loads it back and runs the IR verifier on the loaded
/// graph; returns the path and the loaded model. Panics naming the file on any failure.
pub fn save_reload(model: &Model, dir: &Path, name: &str) -> (PathBuf, Model) {
    let path = dir.join(format!("{name}.onnx"));
    model
        .save(&path, &lopper::onnx::SaveOptions::default())
        .unwrap_or_else(|e| panic!("{}: saving: {e}", path.display()));
    let back = Model::load(&path).unwrap_or_else(|e| panic!("{}: reloading: {e}", path.display()));
    lopper::ir::verify(&back.graph)
        .unwrap_or_else(|e| panic!("{}: reloaded graph fails the verifier: {e}", path.display()));
    (path, back)
}

/// A small classifier with Dropout, `x[N, input…] → Flatten → Gemm (hidden) → Relu →
/// Dropout(ratio) → Gemm (classes) → logits`, and when `side` a second output `side =
/// Dropout(Relu)` (default ratio) that the loss does not read. The ratio is input 1 from
/// opset 12, the `ratio` attribute before. Weights are seeded (`seed`), scaled by 1/√fan-in.
pub fn dropout_mlp(
    opset: i64,
    input: &[usize],
    hidden: usize,
    classes: usize,
    ratio: f32,
    side: bool,
    seed: u64,
) -> Model {
    use lopper::ir::graph::{attr_float, attr_int};
    use lopper::ir::Graph;
    use lopper::onnx::proto::{ModelProto, OperatorSetIdProto, ValueInfoProto};

    let mut g = Graph::new();
    let mut rng = Rng::new(seed);
    let declare = |g: &mut Graph, v, name: &str, dims: Vec<Dim>| {
        g.set_decl(
            v,
            ValueInfoProto {
                name: Some(name.into()),
                r#type: Some(Fact::new(Some(DType::F32), dims).to_type()),
                ..Default::default()
            },
        );
        g.value_info.retain(|x| *x != v);
    };
    let x = g.add_value("x");
    let mut dims = vec![Dim::Sym("N".into())];
    dims.extend(input.iter().map(|&d| Dim::Known(d)));
    declare(&mut g, x, "x", dims);
    g.inputs.push(x);
    let fan: usize = input.iter().product();
    let mut weights = |g: &mut Graph, name: &str, shape: Vec<usize>, scale: f64| {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.uniform() * scale).collect();
        g.add_initializer(name, Tensor::from_f64_as(DType::F32, shape, &v).unwrap())
    };
    let w1 = weights(
        &mut g,
        "fc1.weight",
        vec![hidden, fan],
        1.0 / (fan as f64).sqrt(),
    );
    let b1 = weights(&mut g, "fc1.bias", vec![hidden], 0.1);
    let w2 = weights(
        &mut g,
        "fc2.weight",
        vec![classes, hidden],
        1.0 / (hidden as f64).sqrt(),
    );
    let b2 = weights(&mut g, "fc2.bias", vec![classes], 0.1);
    let one = |g: &mut Graph, name: &str, op: &str, ins: &[Option<lopper::ir::ValueId>], attrs| {
        let id = g.add_node(name, op, ins, &[name], attrs);
        g.node(id).outputs[0].unwrap()
    };
    let f = one(&mut g, "flatten", "Flatten", &[Some(x)], vec![]);
    let h = one(
        &mut g,
        "fc1",
        "Gemm",
        &[Some(f), Some(w1), Some(b1)],
        vec![attr_int("transB", 1)],
    );
    let h = one(&mut g, "relu", "Relu", &[Some(h)], vec![]);
    let d = if opset >= 12 {
        let r = g.add_initializer("drop.ratio", Tensor::from_f32(vec![], &[ratio]));
        one(&mut g, "drop", "Dropout", &[Some(h), Some(r)], vec![])
    } else {
        one(
            &mut g,
            "drop",
            "Dropout",
            &[Some(h)],
            vec![attr_float("ratio", ratio)],
        )
    };
    let y = one(
        &mut g,
        "logits",
        "Gemm",
        &[Some(d), Some(w2), Some(b2)],
        vec![attr_int("transB", 1)],
    );
    declare(
        &mut g,
        y,
        "logits",
        vec![Dim::Sym("N".into()), Dim::Known(classes)],
    );
    g.outputs.push(y);
    if side {
        let s = one(&mut g, "side", "Dropout", &[Some(h)], vec![]);
        declare(
            &mut g,
            s,
            "side",
            vec![Dim::Sym("N".into()), Dim::Known(hidden)],
        );
        g.outputs.push(s);
    }
    Model {
        graph: g,
        rest: ModelProto {
            ir_version: Some(7),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(opset),
            }],
            ..Default::default()
        },
    }
}

thread_local! {
    /// Whether this thread is inside [`catch_quietly`].
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Where this thread's last quiet panic happened.
    static PANIC_AT: std::cell::Cell<Option<String>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` and catches its panic without printing it: the error is the panic's message and
/// where it happened. Panics on other threads print as usual: the process-wide hook, installed
/// once, is quiet only on a thread inside this call (and inside a runtime call whose panics
/// lopper turns into errors), so suites that catch thousands of panics share the test binary
/// with suites whose failures must be seen.
pub fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if lopper::runtime::panic_is_contained() {
                // A runtime's panic that lopper turns into an error (on that runtime's thread).
            } else if QUIET.with(std::cell::Cell::get) {
                PANIC_AT.with(|p| p.set(info.location().map(|l| l.to_string())));
            } else {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(no message)".into());
        let at = PANIC_AT.with(|at| at.take()).unwrap_or_default();
        format!("{msg} (at {at})")
    })
}

/// Scales by 1.01 every weight of mobilenet_v2's block-2 expansion convolution (the first
/// Conv under `features.2/`) in `m`: a mistake its outputs hide (they do not depend on the
/// input). Returns the name of that convolution's output.
pub fn scale_block2_expansion(m: &mut Model) -> String {
    let g = &m.graph;
    let conv = g
        .node_ids()
        .find(|&n| g.node(n).op_type == "Conv" && g.node(n).name.contains("features.2/"))
        .expect("block 2's first convolution");
    let (w, y) = (
        g.node(conv).inputs[1].expect("a weight"),
        g.node(conv).outputs[0].expect("an output"),
    );
    let at = g.value(y).name.clone();
    let t = g.init(w).expect("a constant weight");
    let scaled: Vec<f32> = t
        .to_f32_vec()
        .expect("f32")
        .iter()
        .map(|v| v * 1.01)
        .collect();
    let t = Tensor::from_f32(t.shape().to_vec(), &scaled);
    m.graph.set_init(w, t);
    at
}
