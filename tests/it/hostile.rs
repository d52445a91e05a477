//! Hostile and broken inputs (issue 15): each must exit 2 with one line naming the problem,
//! quickly, without a panic, and without reading anything outside the model's folder.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lopper::onnx::proto::{
    tensor_proto::DataLocation, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, ValueInfoProto,
};
use prost::Message;

/// Runs lopper, killing it after `limit`: returns (exit code, stdout, stderr, elapsed).
fn lopper_within(args: &[&str], limit: Duration) -> (i32, String, String, Duration) {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lopper"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lopper");
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lopper {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed(),
    )
}

/// Asserts `lopper ARGS` exits 2 within 20 s with one stderr line mentioning every needle.
fn assert_refused(args: &[&str], needles: &[&str]) -> String {
    let (code, _, err, _) = lopper_within(args, Duration::from_secs(20));
    assert_eq!(code, 2, "exit code for {args:?}: stderr {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
    for n in needles {
        assert!(err.contains(n), "message should mention '{n}': {err}");
    }
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    err
}

pub(crate) fn vi(n: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(n.into()),
        ..Default::default()
    }
}

pub(crate) fn node(name: &str, op: &str, ins: &[&str], outs: &[&str]) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// `nodes` over the float input `x` and the output `y`, opset 13.
pub(crate) fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            initializer: inits,
            input: vec![float_input("x")],
            output: vec![vi("y")],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `y = x + w` with `w` (4 floats) in external data at `location`, length `length` if given.
fn external_model(dir: &Path, file: &str, location: &str, length: Option<u64>) -> String {
    let mut entries = vec![StringStringEntryProto {
        key: Some("location".into()),
        value: Some(location.into()),
    }];
    if let Some(len) = length {
        entries.push(StringStringEntryProto {
            key: Some("length".into()),
            value: Some(len.to_string()),
        });
    }
    let w = TensorProto {
        name: Some("w".into()),
        dims: vec![4],
        data_type: Some(1),
        data_location: Some(DataLocation::External as i32),
        external_data: entries,
        ..Default::default()
    };
    let m = model(vec![node("add", "Add", &["x", "w"], &["y"])], vec![w]);
    let path = dir.join(file);
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    path.to_str().unwrap().to_string()
}

fn inspect(path: &str, needles: &[&str]) -> String {
    assert_refused(&["inspect", path], needles)
}

#[cfg(unix)]
#[test]
fn external_data_stays_in_the_model_folder() {
    use std::os::unix::fs::symlink;
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let secret = b"SECRETSSECRETSSE";
    std::fs::write(outside.join("passwd"), secret).unwrap();
    std::fs::write(models.join("w.bin"), [0u8; 16]).unwrap();

    // The control: a regular file inside the folder loads.
    let good = external_model(&models, "good.onnx", "w.bin", Some(16));
    let (code, _, err, _) = lopper_within(&["inspect", &good], Duration::from_secs(20));
    assert_eq!(code, 0, "{err}");

    // A symlinked file that leads outside.
    symlink(outside.join("passwd"), models.join("link.bin")).unwrap();
    let m = external_model(&models, "link.onnx", "link.bin", Some(16));
    inspect(&m, &["'w'", "link.bin", "escapes the model's folder"]);

    // `d/passwd` with `d` a symlinked folder outside.
    symlink(&outside, models.join("d")).unwrap();
    let m = external_model(&models, "dir.onnx", "d/passwd", Some(16));
    inspect(&m, &["'w'", "d/passwd", "escapes the model's folder"]);

    // A symlink to /dev/zero: outside the folder, and not a regular file anyway.
    symlink("/dev/zero", models.join("zero.bin")).unwrap();
    let m = external_model(&models, "zero.onnx", "zero.bin", None);
    inspect(&m, &["'w'", "zero.bin"]);

    // A symlink inside the folder to a file inside it is fine.
    symlink(models.join("w.bin"), models.join("alias.bin")).unwrap();
    let m = external_model(&models, "alias.onnx", "alias.bin", Some(16));
    let (code, _, err, _) = lopper_within(&["inspect", &m], Duration::from_secs(20));
    assert_eq!(code, 0, "{err}");

    // A declared length beyond the file.
    let m = external_model(&models, "long.onnx", "w.bin", Some(1 << 40));
    inspect(&m, &["'w'", "w.bin", "outside"]);

    // A folder as external data.
    std::fs::create_dir_all(models.join("sub")).unwrap();
    let m = external_model(&models, "sub.onnx", "sub", None);
    inspect(&m, &["'w'", "sub"]);

    // Through the model folder given as a symlink, a file inside still loads.
    symlink(&models, root.path().join("alias_models")).unwrap();
    let via = root.path().join("alias_models/good.onnx");
    let (code, _, err, _) =
        lopper_within(&["inspect", via.to_str().unwrap()], Duration::from_secs(20));
    assert_eq!(code, 0, "{err}");
}

#[cfg(unix)]
#[test]
fn fifos_and_devices_are_refused_without_blocking() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let fifo = dir.join("w.fifo");
    let ok = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(ok.success());

    // External data in a FIFO inside the folder: refused by type, without opening it blocking.
    let m = external_model(dir, "fifo.onnx", "w.fifo", Some(16));
    let start = Instant::now();
    inspect(&m, &["'w'", "w.fifo", "not a regular file", "FIFO"]);
    assert!(start.elapsed() < Duration::from_secs(10));

    // The model file itself a FIFO, or a symlink to /dev/zero.
    inspect(fifo.to_str().unwrap(), &["w.fifo", "not a regular file"]);
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.onnx")).unwrap();
    inspect(
        dir.join("zero.onnx").to_str().unwrap(),
        &["zero.onnx", "not a regular file", "device"],
    );
}

fn resnet20() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/models/zoo/cifar_resnet20.bn.onnx")
}

/// ResNet-20 with the initializer `name` changed by `f`, written to `dir/file`.
fn resnet20_with(dir: &Path, file: &str, name: &str, f: impl Fn(&mut [f32])) -> String {
    use lopper::ir::{Model, Tensor};
    let mut m = Model::load(resnet20()).unwrap();
    let v = m.graph.value_by_name(name).expect(name);
    let t = m.graph.init(v).expect("initializer");
    let mut x: Vec<f32> = t
        .to_f64_vec()
        .unwrap()
        .into_iter()
        .map(|x| x as f32)
        .collect();
    f(&mut x);
    let t = Tensor::from_f32(t.shape().to_vec(), &x);
    m.graph.set_init(v, t);
    let path = dir.join(file);
    m.save(&path, &Default::default()).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn verification_that_cannot_fail_does_not_pass() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let out_s = out.to_str().unwrap();

    // The control: the model as shipped prunes and verifies, with its variation reported.
    let (code, stdout, err, _) = lopper_within(
        &[
            "prune",
            resnet20().to_str().unwrap(),
            "-o",
            out_s,
            "--ratio",
            "0.3",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("verified:") && stdout.contains("outputs vary by"),
        "{stdout}"
    );
    std::fs::remove_file(&out).unwrap();

    // A NaN weight (a BN shift, which the criterion does not score) makes every output NaN.
    let nan = resnet20_with(dir.path(), "nan.onnx", "b.bias", |w| w[0] = f32::NAN);
    let err = assert_refused(
        &["prune", &nan, "-o", out_s, "--ratio", "0.3"],
        &["cannot verify", "NaN", "b.bias"],
    );
    assert!(!err.contains("0.0e0"), "{err}");
    assert!(!out.exists(), "nothing is written");
    let err = assert_refused(&["verify", &nan, &nan], &["cannot verify", "NaN"]);
    assert!(!err.contains("equivalent"), "{err}");

    // A negative BatchNormalization variance: sqrt of a negative number.
    let bn = resnet20_with(dir.path(), "bn.onnx", "b.running_var", |v| v[0] = -1.0);
    assert_refused(
        &["prune", &bn, "-o", out_s, "--ratio", "0.3"],
        &["cannot verify", "negative variance", "BatchNormalization"],
    );
    assert!(!out.exists(), "nothing is written");

    // The first convolution's weights zero: the output no longer depends on the input, so a
    // comparison on random inputs proves nothing: written, but not called verified.
    let flat = resnet20_with(dir.path(), "flat.onnx", "c.weight", |w| w.fill(0.0));
    let (code, stdout, err, _) = lopper_within(
        &["prune", &flat, "-o", out_s, "--ratio", "0.3"],
        Duration::from_secs(120),
    );
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        !stdout.lines().any(|l| l.starts_with("verified:")),
        "{stdout}"
    );
    assert!(
        stdout.contains("not verified: the reference outputs do not vary with the input"),
        "{stdout}"
    );
    let _ = std::fs::remove_file(&out);
    // Unverified on request, it is written and says so.
    let (code, stdout, err, _) = lopper_within(
        &["prune", &flat, "-o", out_s, "--ratio", "0.3", "--no-verify"],
        Duration::from_secs(120),
    );
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("not verified"), "{stdout}");
}

pub(crate) fn i64_init(name: &str, dims: &[i64], v: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(7),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

/// `y = x + Cast<float>(t)` with `t` computed by `nodes` (their last output is `t`) from
/// int64 initializers, `x` a float `[1]`.
pub(crate) fn int_model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
    let mut nodes = nodes;
    nodes.extend([
        NodeProto {
            attribute: vec![lopper::onnx::proto::AttributeProto {
                name: Some("to".into()),
                r#type: Some(2),
                i: Some(1),
                ..Default::default()
            }],
            ..node("cast", "Cast", &["t"], &["tf"])
        },
        node("add", "Add", &["x", "tf"], &["y"]),
    ]);
    let mut m = model(nodes, inits);
    let g = m.graph.as_mut().unwrap();
    let float1 = lopper::onnx::proto::TypeProto {
        value: Some(lopper::onnx::proto::type_proto::Value::TensorType(
            lopper::onnx::proto::type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(lopper::onnx::proto::TensorShapeProto {
                    dim: vec![lopper::onnx::proto::tensor_shape_proto::Dimension {
                        value: Some(
                            lopper::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(1),
                        ),
                        ..Default::default()
                    }],
                }),
            },
        )),
        ..Default::default()
    };
    g.input[0].r#type = Some(float1);
    m
}

/// `y = x + Cast<float>(op(a, b))` with `a`, `b` int64 initializers.
pub(crate) fn folding(op: &str, a: &[i64], b: &[i64]) -> ModelProto {
    int_model(
        vec![node("op", op, &["a", "b"], &["t"])],
        vec![
            i64_init("a", &[a.len() as i64], a),
            i64_init("b", &[b.len() as i64], b),
        ],
    )
}

/// `y = x + Cast<float>(Range(start, limit, delta))`.
pub(crate) fn range(start: i64, limit: i64, delta: i64) -> ModelProto {
    int_model(
        vec![node("range", "Range", &["s", "l", "d"], &["t"])],
        vec![
            i64_init("s", &[], &[start]),
            i64_init("l", &[], &[limit]),
            i64_init("d", &[], &[delta]),
        ],
    )
}

/// [`folding`] written to `dir/file`.
fn folding_model(dir: &Path, file: &str, op: &str, a: &[i64], b: &[i64]) -> String {
    let path = dir.join(file);
    std::fs::write(&path, folding(op, a, b).encode_to_vec()).unwrap();
    path.to_str().unwrap().to_string()
}

/// `lopper simplify` exits 0 or 2 with one line, never panics; returns (code, stderr).
fn simplify_survives(model: &str, out: &str) -> (i32, String) {
    let (code, _, err, _) = lopper_within(&["simplify", model, "-o", out], Duration::from_secs(60));
    assert!(code == 0 || code == 2, "exit {code} for {model}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    if code == 2 {
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    (code, err)
}

#[test]
fn constant_folding_never_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let out_s = out.to_str().unwrap();
    // Integer Div of i64::MIN by -1 overflows; by zero is undefined: neither is folded.
    for (file, a, b) in [
        ("div_min.onnx", vec![i64::MIN], vec![-1]),
        ("div_zero.onnx", vec![7], vec![0]),
    ] {
        let m = folding_model(dir.path(), file, "Div", &a, &b);
        let (code, _) = simplify_survives(&m, out_s);
        if code == 0 {
            let text = std::process::Command::new(env!("CARGO_BIN_EXE_lopper"))
                .args(["inspect", out_s])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&text.stdout);
            assert!(text.contains("Div"), "{file}: the Div must stay: {text}");
        }
    }
    // A defined integer Div folds away.
    let m = folding_model(dir.path(), "div_ok.onnx", "Div", &[i64::MIN, 9], &[2]);
    let (code, err) = simplify_survives(&m, out_s);
    assert_eq!(code, 0, "{err}");
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_lopper"))
        .args(["inspect", out_s])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&text.stdout).contains("Div"));
}

#[test]
fn runtimes_failing_on_invalid_models_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Undefined integer arithmetic that would trap (SIGFPE) inside a runtime's kernel is
    // refused before the model reaches one, naming the node.
    let m = folding_model(dir.path(), "div_min.onnx", "Div", &[i64::MIN], &[-1]);
    assert_refused(&["verify", &m, &m], &["node 'op' (Div)", "overflows"]);
    let m = folding_model(dir.path(), "mod_zero.onnx", "Mod", &[7], &[0]);
    assert_refused(
        &["verify", &m, &m],
        &["node 'op' (Mod)", "division by zero"],
    );
    // Mod of the minimum by -1 traps the same way (a SIGFPE that ended a fuzz campaign).
    let min = folding_model(dir.path(), "mod_min.onnx", "Mod", &[i64::MIN], &[-1]);
    assert_refused(&["verify", &min, &min], &["node 'op' (Mod)", "overflows"]);
    // bench runs the model too: the same refusal instead of a SIGFPE.
    assert_refused(&["bench", &m], &["node 'op' (Mod)", "division by zero"]);
    // Range with step 0: tract divides by zero (a panic), ONNX Runtime errors; both are
    // reported as the runtimes' errors on one line, exit 2.
    let m = range(0, 10, 0);
    let path = dir.path().join("range0.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let p = path.to_str().unwrap();
    assert_refused(
        &["verify", p, p],
        &["no runtime could run the model", "tract"],
    );
}

/// A BatchNormalization of a rank-1 input, which the spec allows (one channel) and tract
/// 0.23.9 reads out of bounds (a crash, not an error): the oracle compares on ONNX Runtime
/// alone and says why, and tract asked for by name refuses it.
#[test]
fn rank_one_batch_norm_is_kept_from_tract() {
    let dir = tempfile::tempdir().unwrap();
    let float1 = |name: &str, v: f32| TensorProto {
        name: Some(name.into()),
        dims: vec![1],
        data_type: Some(1),
        float_data: vec![v],
        ..Default::default()
    };
    let mut m = model(
        vec![node(
            "bn",
            "BatchNormalization",
            &["x", "s", "b", "m", "v"],
            &["y"],
        )],
        vec![
            float1("s", 2.0),
            float1("b", 0.5),
            float1("m", 0.1),
            float1("v", 1.0),
        ],
    );
    // x: float [1], as int_model declares it.
    let typed = int_model(vec![], vec![]);
    m.graph.as_mut().unwrap().input = typed.graph.unwrap().input;
    let path = dir.path().join("bn1.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let p = path.to_str().unwrap();
    let (code, stdout, err, _) = lopper_within(&["verify", p, p], Duration::from_secs(60));
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("equivalent"), "{stdout}");
    assert!(
        err.contains("'bn' (BatchNormalization)") && err.contains("rank 1"),
        "{err}"
    );
    // Asked for by name, tract refuses it: exit 2, one line, instead of a crash.
    assert_refused(
        &["bench", p, "--backend", "tract", "--runs", "3"],
        &["tract", "'bn' (BatchNormalization)", "rank 1"],
    );
}

/// A `.npy` of `u8` with `shape` in its header and `data` after it.
fn npy_bytes(shape: &str, data: &[u8]) -> Vec<u8> {
    let mut dict = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn array_headers_that_lie_about_their_size_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mnist = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/models/pretrained/mnist-8.onnx");
    let mnist = mnist.to_str().unwrap();
    let sample = vec![7u8; 28 * 28];
    // 2^40 samples claimed, one present.
    let x = dir.path().join("x.npy");
    std::fs::write(&x, npy_bytes("(1099511627776, 28, 28)", &sample)).unwrap();
    let spec = format!("npy:{}", x.display());
    assert_refused(
        &["eval", mnist, "--data", &spec],
        &["x.npy", "declares shape [1099511627776, 28, 28]"],
    );
    // Labels claiming 2^40 entries next to honest samples.
    let x1 = dir.path().join("x1.npy");
    std::fs::write(&x1, npy_bytes("(1, 28, 28)", &sample)).unwrap();
    let y = dir.path().join("y.npy");
    std::fs::write(&y, npy_bytes("(1099511627776,)", &[3])).unwrap();
    let spec = format!("npy:{}", x1.display());
    assert_refused(
        &[
            "eval",
            mnist,
            "--data",
            &spec,
            "--labels",
            y.to_str().unwrap(),
        ],
        &["y.npy", "declares shape [1099511627776]"],
    );
    // The same inside an .npz (stored members).
    let npz = dir.path().join("d.npz");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&npz).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("x.npy", opts).unwrap();
        std::io::Write::write_all(&mut z, &npy_bytes("(1, 28, 28)", &sample)).unwrap();
        z.start_file("y.npy", opts).unwrap();
        std::io::Write::write_all(&mut z, &npy_bytes("(1099511627776,)", &[3])).unwrap();
        z.finish().unwrap();
    }
    let spec = format!("npz:{}", npz.display());
    assert_refused(
        &["eval", mnist, "--data", &spec],
        &["d.npz:y", "declares shape [1099511627776]"],
    );
}

/// A stored `.npz` of `x` (4 MNIST-sized `u8` samples, sample `i` filled with `10 + i`) and
/// `y` (labels 7, 5, 9, 2 as `u8`).
fn small_npz(path: &Path, x_shape: &str, x: &[u8]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("x.npy", opts).unwrap();
    std::io::Write::write_all(&mut z, &npy_bytes(x_shape, x)).unwrap();
    z.start_file("y.npy", opts).unwrap();
    std::io::Write::write_all(&mut z, &npy_bytes("(4,)", &[7, 5, 9, 2])).unwrap();
    z.finish().unwrap();
}

/// Flips the low bit of the first byte after the first occurrence of `pattern` in `path`.
fn corrupt_after(path: &Path, pattern: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(pattern.len())
        .position(|w| w == pattern)
        .expect("pattern in the archive");
    bytes[at + pattern.len() - 1] ^= 1;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn corrupt_and_empty_npz_members_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mnist = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/models/pretrained/mnist-8.onnx");
    let mnist = mnist.to_str().unwrap();
    let x: Vec<u8> = (0..4u8).flat_map(|i| vec![10 + i; 28 * 28]).collect();
    let eval = |npz: &Path| {
        let spec = format!("npz:{}", npz.display());
        vec!["eval".to_string(), mnist.to_string(), "--data".into(), spec]
    };
    let refused = |args: Vec<String>, needles: &[&str]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(&args, needles)
    };

    // The control reads.
    let good = dir.path().join("good.npz");
    small_npz(&good, "(4, 28, 28)", &x);
    let args = eval(&good);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err, _) = lopper_within(&args, Duration::from_secs(60));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("/4)"), "four samples evaluated: {out}");

    // One byte of the last sample changed: the CRC no longer matches.
    let bad_x = dir.path().join("bad_x.npz");
    small_npz(&bad_x, "(4, 28, 28)", &x);
    corrupt_after(&bad_x, &[13; 400]);
    refused(eval(&bad_x), &["bad_x.npz:x", "CRC"]);

    // A label changed (9 → 8, still a valid label: only the CRC can tell).
    let bad_y = dir.path().join("bad_y.npz");
    small_npz(&bad_y, "(4, 28, 28)", &x);
    corrupt_after(&bad_y, &[7, 5, 9]);
    refused(eval(&bad_y), &["bad_y.npz:y", "checksum"]);

    // No samples at all: refused, not "top-1 0.00% (0/0)".
    let empty = dir.path().join("empty.npz");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&empty).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("x.npy", opts).unwrap();
    std::io::Write::write_all(&mut z, &npy_bytes("(0, 28, 28)", &[])).unwrap();
    z.finish().unwrap();
    refused(eval(&empty), &["empty.npz:x", "no samples"]);
}

#[test]
fn output_paths_are_checked_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mnist = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/models/pretrained/mnist-8.onnx");
    let mnist = mnist.to_str().unwrap();
    // An earlier result at the output path must survive a run refused for another path.
    let out = dir.path().join("out.onnx");
    std::fs::write(&out, b"earlier result").unwrap();
    let o = out.to_str().unwrap();
    let plan = dir.path().join("plan.json");
    let p = plan.to_str().unwrap();
    let folder = dir.path().to_str().unwrap();
    let prune = [
        "prune",
        mnist,
        "--target",
        "flops=0.5",
        "--no-verify",
        "-o",
        o,
    ];
    for (flag, bad) in [
        ("--report", "/nonexistent/dir/r.json"),
        ("--plot", "/nonexistent/dir/w.svg"),
        ("--save-plan", "/nonexistent/dir/plan.json"),
        ("--report", folder),
    ] {
        let mut args = prune.to_vec();
        args.extend([flag, bad]);
        if flag != "--save-plan" {
            args.extend(["--save-plan", p]);
        }
        assert_refused(&args, &[bad, "cannot be written"]);
        assert_eq!(
            std::fs::read(&out).unwrap(),
            b"earlier result",
            "{flag} {bad}"
        );
        assert!(!plan.exists(), "{flag} {bad}: the plan was written");
    }
    let bad = "/nonexistent/dir/m.onnx";
    assert_refused(&["simplify", mnist, "-o", bad], &[bad, "cannot be written"]);
    let mut args = prune.to_vec();
    args[6] = bad;
    assert_refused(&args, &[bad, "cannot be written"]);
    // Nothing is left behind by the probes, and the control writes everything.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
    let report = dir.path().join("r.json");
    let mut args = prune.to_vec();
    args.extend(["--report", report.to_str().unwrap(), "--save-plan", p]);
    let (code, _, err, _) = lopper_within(&args, Duration::from_secs(60));
    assert_eq!(code, 0, "{err}");
    assert!(report.exists() && plan.exists());
    assert_ne!(std::fs::read(&out).unwrap(), b"earlier result");
}

/// A graph input declared as a float tensor (the spec requires graph inputs to be typed).
pub(crate) fn float_input(n: &str) -> lopper::onnx::proto::ValueInfoProto {
    use lopper::onnx::proto::{type_proto, TypeProto};
    lopper::onnx::proto::ValueInfoProto {
        name: Some(n.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
