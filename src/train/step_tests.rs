//! Tests of the train-step compiler (`step.rs`): structure and one step against a reference
//! with gradients fed as inputs; every shared BatchNormalization model compiles.

use std::collections::BTreeMap;

use super::*;
use crate::ir::graph::attr_int;
use crate::ir::Fact;
use crate::onnx::proto::{ModelProto, OperatorSetIdProto};
use crate::runtime::{self, BackendKind};
use crate::train::emit::static_shape;

fn lcg(s: &mut u64) -> f64 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

fn rand(s: &mut u64, shape: &[usize], scale: f64, off: f64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| off + scale * lcg(s)).collect();
    Tensor::from_f64_as(DType::F32, shape.to_vec(), &v).unwrap()
}

/// `x[batch,3,4,4] → BN → Conv 1×1 (4) → Relu → GlobalAveragePool → Flatten → Gemm (5)`,
/// opset 13, IR 7.
fn tiny() -> Model {
    let mut g = Graph::new();
    let x = crate::ops::build::add_batched_input(&mut g, "x", "batch", &[3, 4, 4]);
    let mut s = 5u64;
    let mut init = |g: &mut Graph, name: &str, shape: &[usize], sc: f64, off: f64| {
        g.add_initializer(name, rand(&mut s, shape, sc, off))
    };
    let bn: Vec<ValueId> = [
        ("bn.scale", 0.0),
        ("bn.bias", 0.0),
        ("bn.mean", 0.0),
        ("bn.var", 1.0),
    ]
    .iter()
    .map(|(n, off)| init(&mut g, n, &[3], 0.5, *off))
    .collect();
    let cw = init(&mut g, "conv.w", &[4, 3, 1, 1], 1.0, 0.0);
    let cb = init(&mut g, "conv.b", &[4], 0.1, 0.0);
    let fw = init(&mut g, "fc.w", &[5, 4], 1.0, 0.0);
    let fb = init(&mut g, "fc.b", &[5], 0.1, 0.0);
    let chain = |g: &mut Graph, name: &str, op: &str, ins: &[Option<ValueId>], attrs| {
        let id = g.add_node(name, op, ins, &[&format!("{name}:0")], attrs);
        g.node(id).outputs[0].unwrap()
    };
    let ins: Vec<Option<ValueId>> = std::iter::once(x).chain(bn).map(Some).collect();
    let y = chain(&mut g, "bn", "BatchNormalization", &ins, vec![]);
    let y = chain(
        &mut g,
        "conv",
        "Conv",
        &[Some(y), Some(cw), Some(cb)],
        vec![],
    );
    let y = chain(&mut g, "relu", "Relu", &[Some(y)], vec![]);
    let y = chain(&mut g, "gap", "GlobalAveragePool", &[Some(y)], vec![]);
    let y = chain(&mut g, "flat", "Flatten", &[Some(y)], vec![]);
    let y = chain(
        &mut g,
        "fc",
        "Gemm",
        &[Some(y), Some(fw), Some(fb)],
        vec![attr_int("transB", 1)],
    );
    g.outputs = vec![y];
    Model {
        graph: g,
        rest: ModelProto {
            ir_version: Some(7),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(13),
            }],
            ..Default::default()
        },
    }
}

fn options() -> StepOptions {
    StepOptions {
        batch: 4,
        loss: Loss::CrossEntropy {
            label_smoothing: 0.1,
        },
        optimizer: Optimizer::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.01,
        },
        regularizers: vec![
            Regularizer::L1Gamma { weight: 1.0 },
            Regularizer::MaskedL1Gamma {
                weight: 2.0,
                masks: BTreeMap::from([("bn.scale".to_string(), vec![1.0, 0.0, 1.0])]),
            },
            Regularizer::GroupLasso {
                weight: 0.5,
                eps: 1e-3,
            },
        ],
        freeze: vec!["fc.b".into()],
        no_decay: vec!["bn.*".into()],
        composed_batch_norm: false,
        weight_masks: Default::default(),
        gradient_outputs: false,
        blocked_convolutions: None,
        kernels: false,
    }
}

/// Before the ops' backward rules exist, compiling stops at autodiff with an error naming
/// the node; once they exist, it compiles the same parameters as the fed-gradient test.
#[test]
fn compile_reaches_autodiff() {
    match compile_train_step(&tiny(), &options()) {
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("has no backward rule") && e.contains("node '"),
                "{e}"
            );
        }
        Ok(ts) => {
            assert_eq!(ts.params.len(), 5);
            assert_eq!(ts.frozen, ["fc.b"]);
        }
    }
}

#[test]
fn globs() {
    assert!(glob_match("layer1.*", "layer1.0.conv.weight"));
    assert!(glob_match("*.b?as", "fc.bias"));
    assert!(!glob_match("fc.b", "fc.bias"));
}

/// The whole step with gradients fed as inputs (standing in for autodiff): structure,
/// then one step in ORT against a reference of the update, the regularizers and the
/// running statistics; then the weights written back into the inference model.
/// The gradient pass of the fed-gradient tests: each gradient is a graph input `fed/{name}`.
fn fed_gradients(
    g: &mut Graph,
    shapes: &Shapes,
    _: i64,
    _: ValueId,
    wrt: &[ValueId],
) -> Result<Vec<Option<ValueId>>> {
    let mut out = Vec::new();
    for &p in wrt {
        let shape = static_shape(g, shapes, p)?;
        let name = format!("fed/{}", g.value(p).name);
        out.push(Some(add_input(g, &name, DType::F32, &shape)));
    }
    Ok(out)
}

#[test]
fn step_with_fed_gradients() {
    let model = tiny();
    let opts = options();
    let ts = compile_with(&model, &opts, fed_gradients).unwrap();
    check_fed_step_structure(&ts);

    if crate::runtime::ort::find_library().is_none() {
        eprintln!("NOTICE: skipping the ORT part: ONNX Runtime's library is missing");
        return;
    }
    let dir = crate::temp_dir::TempDir::new("step").unwrap();
    let path = dir.path().join("step.onnx");
    ts.model.save(&path, &Default::default()).unwrap();
    let mut sess = runtime::load(BackendKind::Ort, &path).unwrap();
    let mut s = 99u64;
    let x = rand(&mut s, &[4, 3, 4, 4], 2.0, 0.3);
    let (lr, lam) = (0.05f32, 0.2f32);
    let mut feed = ts.initial_feed();
    let mut fed = HashMap::new();
    for c in &ts.params {
        let t = rand(&mut s, c.init.shape(), 1.0, 0.0);
        fed.insert(c.input.clone(), t.clone());
        feed.push((format!("fed/{}", c.input), t));
    }
    feed.push((ts.x.clone(), x.clone()));
    feed.push(("labels".into(), Tensor::from_i64(vec![4], &[0, 4, 2, 1])));
    feed.push((ts.lr.clone(), Tensor::from_f32(vec![], &[lr])));
    feed.push((ts.step.clone(), Tensor::from_f32(vec![], &[1.0])));
    feed.push(("l1_lambda".into(), Tensor::from_f32(vec![], &[lam])));
    let out: HashMap<String, Tensor> = sess.run(&feed).unwrap().into_iter().collect();
    let get = |n: &str| out[n].to_f64_vec().unwrap();
    let (lr, lam) = (f64::from(lr), f64::from(lam));
    let worst = update_error(&ts, &fed, &get, lr, lam).max(running_stats_error(&ts, &x, &get));
    assert!(worst < 1e-5, "max abs error {worst}");
    let loss = get("loss")[0];
    let acc = get("accuracy")[0];
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
    assert!((acc * 4.0 - (acc * 4.0).round()).abs() < 1e-6 && (0.0..=1.0).contains(&acc));

    check_inference_model(&ts, &out, dir.path(), x);
}

/// With a weight mask and gradient outputs: the gradient output is the fed gradient times the
/// mask, masked weights and their momenta are exactly zero after the step, the others take
/// the plain update; masks on constants or of the wrong length are refused.
#[test]
fn masked_step_with_gradient_outputs() {
    let model = tiny();
    let mask = vec![1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    let masked = |name: &str, m: Vec<f32>| StepOptions {
        regularizers: vec![],
        weight_masks: std::sync::Arc::new(BTreeMap::from([(name.to_string(), m)])),
        gradient_outputs: true,
        ..options()
    };
    for (name, m, why) in [
        ("fc.b", vec![1.0; 5], "not a trained parameter"),
        ("conv.w", vec![1.0; 3], "12"),
    ] {
        let err = compile_with(&model, &masked(name, m), fed_gradients).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
    let ts = compile_with(&model, &masked("conv.w", mask.clone()), fed_gradients).unwrap();
    let grads: Vec<&str> = ts.gradients.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(grads, ["bn.scale", "bn.bias", "conv.w", "conv.b", "fc.w"]);
    let init = &ts.params.iter().find(|c| c.input == "conv.w").unwrap().init;
    let w0 = init.to_f64_vec().unwrap();
    assert!(w0.iter().zip(&mask).all(|(w, m)| *m == 1.0 || *w == 0.0));
    assert!(w0.iter().zip(&mask).any(|(w, m)| *m == 1.0 && *w != 0.0));
    if crate::runtime::ort::find_library().is_none() {
        eprintln!("NOTICE: skipping the ORT part: ONNX Runtime's library is missing");
        return;
    }
    let dir = crate::temp_dir::TempDir::new("masked-step").unwrap();
    let path = dir.path().join("step.onnx");
    ts.model.save(&path, &Default::default()).unwrap();
    let mut sess = runtime::load(BackendKind::Ort, &path).unwrap();
    let mut s = 7u64;
    let mut feed = ts.initial_feed();
    let mut fed = HashMap::new();
    for c in &ts.params {
        let t = rand(&mut s, c.init.shape(), 1.0, 0.0);
        fed.insert(c.input.clone(), t.to_f64_vec().unwrap());
        feed.push((format!("fed/{}", c.input), t));
    }
    feed.push((ts.x.clone(), rand(&mut s, &[4, 3, 4, 4], 2.0, 0.3)));
    feed.push(("labels".into(), Tensor::from_i64(vec![4], &[0, 4, 2, 1])));
    feed.push((ts.lr.clone(), Tensor::from_f32(vec![], &[0.05])));
    feed.push((ts.step.clone(), Tensor::from_f32(vec![], &[1.0])));
    let out: HashMap<String, Tensor> = sess.run(&feed).unwrap().into_iter().collect();
    let get = |n: &str| out[n].to_f64_vec().unwrap();
    let grad_of = |p: &str| get(&ts.gradients.iter().find(|(q, _)| q == p).unwrap().1);
    assert_eq!(grad_of("fc.w"), fed["fc.w"]);
    let g = grad_of("conv.w");
    let next = get("conv.w.next");
    let mom = get("conv.w.momentum.next");
    for i in 0..12 {
        let m = f64::from(mask[i]);
        assert_eq!(g[i], fed["conv.w"][i] * m);
        if m == 0.0 {
            assert_eq!((next[i], mom[i]), (0.0, 0.0), "entry {i}");
        } else {
            let want = w0[i] - 0.05 * (g[i] + 0.01 * w0[i]);
            assert!(
                (next[i] - want).abs() < 1e-6,
                "entry {i}: {} vs {want}",
                next[i]
            );
        }
    }
}

/// The fed-gradient step of [`tiny`] with [`options`]: its parameters, frozen and running
/// tensors, optimizer state, BatchNormalization in training mode, opset, batch and outputs.
fn check_fed_step_structure(ts: &TrainStep) {
    let g = &ts.model.graph;
    let pnames: Vec<&str> = ts.params.iter().map(|c| c.input.as_str()).collect();
    assert_eq!(pnames, ["bn.scale", "bn.bias", "conv.w", "conv.b", "fc.w"]);
    assert_eq!(ts.frozen, ["fc.b"]);
    assert!(g.value_by_name("fc.b").and_then(|v| g.init(v)).is_some());
    let rn: Vec<&str> = ts.running.iter().map(|c| c.input.as_str()).collect();
    assert_eq!(rn, ["bn.mean", "bn.var"]);
    assert_eq!(ts.state.len(), 5);
    assert!(ts.state.iter().all(|(_, slot, _)| *slot == "momentum"));
    // BatchNormalization runs in training mode.
    assert!(g
        .node_ids()
        .filter(|&n| g.node(n).op_type == "BatchNormalization")
        .all(|n| g.node(n).attr_i("training_mode") == Some(1)));
    assert_eq!(ts.model.opset(), 17);
    let xv = g.value_by_name(&ts.x).unwrap();
    let xf = Fact::from_type(g.value(xv).decl.as_ref().unwrap().r#type.as_ref().unwrap());
    assert_eq!(xf.concrete(), Some(vec![4, 3, 4, 4]));
    assert_eq!(
        (
            ts.labels.as_deref(),
            ts.teacher.as_deref(),
            ts.l1_lambda.as_deref()
        ),
        (Some("labels"), None, Some("l1_lambda"))
    );
    assert_eq!(
        (ts.loss.as_str(), ts.accuracy.as_deref()),
        ("loss", Some("accuracy"))
    );
}

/// Largest absolute error of the step's new parameters and momenta (`get` reads an output)
/// against the reference update of [`options`] from the `fed` gradients, at learning rate
/// `lr` and regularization weight `lam`.
fn update_error(
    ts: &TrainStep,
    fed: &HashMap<String, Tensor>,
    get: &dyn Fn(&str) -> Vec<f64>,
    lr: f64,
    lam: f64,
) -> f64 {
    let sign = |v: f64| {
        if v > 0.0 {
            1.0
        } else if v < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    let mut worst = 0f64;
    for c in &ts.params {
        let p = c.init.to_f64_vec().unwrap();
        let mut gr = fed[&c.input].to_f64_vec().unwrap();
        if c.input == "bn.scale" {
            let mask = [1.0, 0.0, 1.0];
            for i in 0..3 {
                gr[i] += lam * sign(p[i]) + 2.0 * lam * sign(p[i]) * mask[i];
            }
        }
        if c.input == "conv.w" {
            for f in 0..4 {
                let row = &p[f * 3..f * 3 + 3];
                let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                for i in 0..3 {
                    gr[f * 3 + i] += 0.5 * lam * row[i] / (norm + 1e-3);
                }
            }
        }
        let wd = if c.input.starts_with("bn.") {
            0.0
        } else {
            0.01
        };
        let got = get(&c.output);
        let mom = &ts.state.iter().find(|(p, _, _)| *p == c.input).unwrap().2;
        let got_v = get(&mom.output);
        for i in 0..p.len() {
            let v = gr[i] + wd * p[i];
            worst = worst.max((got_v[i] - v).abs());
            worst = worst.max((got[i] - (p[i] - lr * v)).abs());
        }
    }
    worst
}

/// Largest absolute error of the step's new running mean and variance (`get` reads an output)
/// against the statistics of batch `x` (momentum 0.9, unbiased variance).
fn running_stats_error(ts: &TrainStep, x: &Tensor, get: &dyn Fn(&str) -> Vec<f64>) -> f64 {
    let mut worst = 0f64;
    let xs = x.to_f64_vec().unwrap();
    let (mean0, var0) = (
        ts.running[0].init.to_f64_vec().unwrap(),
        ts.running[1].init.to_f64_vec().unwrap(),
    );
    let (nm, nv) = (get(&ts.running[0].output), get(&ts.running[1].output));
    for ch in 0..3 {
        let vals: Vec<f64> = (0..4)
            .flat_map(|b| (0..16).map(move |i| (b * 3 + ch) * 16 + i))
            .map(|i| xs[i])
            .collect();
        let mu = vals.iter().sum::<f64>() / 64.0;
        let var = vals.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / 64.0;
        worst = worst.max((nm[ch] - (0.9 * mean0[ch] + 0.1 * mu)).abs());
        worst = worst.max((nv[ch] - (0.9 * var0[ch] + 0.1 * var * 64.0 / 63.0)).abs());
    }
    worst
}

/// The step's outputs `out` written back into the inference model: BatchNormalization
/// stays, every parameter and running statistic is the trained one, the model runs on `x`
/// (saved under `dir`), and an unknown name is refused.
fn check_inference_model(
    ts: &TrainStep,
    out: &HashMap<String, Tensor>,
    dir: &std::path::Path,
    x: Tensor,
) {
    let get = |n: &str| out[n].to_f64_vec().unwrap();
    let trained: Vec<(String, Tensor)> = out.clone().into_iter().collect();
    let inf = ts.inference_model(&trained).unwrap();
    let ig = &inf.graph;
    assert!(ig
        .node_ids()
        .any(|n| ig.node(n).op_type == "BatchNormalization"));
    for c in ts.params.iter().chain(&ts.running) {
        let v = ig.value_by_name(&c.input).unwrap();
        assert_eq!(
            ig.init(v).unwrap().to_f64_vec().unwrap(),
            get(&c.output),
            "{}",
            c.input
        );
    }
    let ipath = dir.join("inf.onnx");
    inf.save(&ipath, &Default::default()).unwrap();
    let mut isess = runtime::load(BackendKind::Ort, &ipath).unwrap();
    let logits = isess.run(&[("x".into(), x)]).unwrap();
    assert_eq!(logits[0].1.shape(), [4, 5]);
    let bad = ts.inference_model(&[("nope".into(), Tensor::from_f32(vec![], &[0.0]))]);
    assert!(bad.unwrap_err().to_string().contains("'nope'"));
}

mod zoo_tests {
    use super::super::*;
    use crate::runtime::{self, BackendKind};
    use crate::train::emit::static_shape;

    /// Every shared BatchNormalization model compiles (gradients fed as inputs); the CIFAR ones
    /// run one step in ORT with a finite loss. Skips when the shared folder is absent.
    #[test]
    fn shared_models_compile_with_fed_gradients() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models");
        let mut files: Vec<std::path::PathBuf> = ["zoo", "pretrained"]
            .iter()
            .filter_map(|d| std::fs::read_dir(dir.join(d)).ok())
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".bn.onnx"))
            .collect();
        files.sort();
        if files.is_empty() {
            eprintln!("NOTICE: skipping: no shared models");
            return;
        }
        let ort = crate::runtime::ort::find_library().is_some();
        for f in files {
            let model = Model::load(&f).unwrap();
            let opts = StepOptions {
                batch: 2,
                ..StepOptions::default()
            };
            let ts = compile_with(&model, &opts, |g, shapes, _, _, wrt| {
                let mut out = Vec::new();
                for &p in wrt {
                    let shape = static_shape(g, shapes, p)?;
                    let name = format!("fed/{}", g.value(p).name);
                    out.push(Some(add_input(g, &name, DType::F32, &shape)));
                }
                Ok(out)
            })
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let bns = model
                .graph
                .node_ids()
                .filter(|&n| model.graph.node(n).op_type == "BatchNormalization")
                .count();
            assert_eq!(ts.running.len(), 2 * bns, "{}", f.display());
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if !ort || !(name.contains("cifar") || name.contains("resnet20")) {
                continue;
            }
            let tmp = crate::temp_dir::TempDir::new("zoo_step").unwrap();
            let path = tmp.path().join("step.onnx");
            ts.model.save(&path, &Default::default()).unwrap();
            let mut sess = runtime::load(BackendKind::Ort, &path).unwrap();
            let mut feed = ts.initial_feed();
            for c in &ts.params {
                let n = c.init.len();
                feed.push((
                    format!("fed/{}", c.input),
                    Tensor::from_f32(c.init.shape().to_vec(), &vec![0.01; n]),
                ));
            }
            let xv: Vec<f32> = (0..2 * 3 * 32 * 32)
                .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
                .collect();
            feed.push((ts.x.clone(), Tensor::from_f32(vec![2, 3, 32, 32], &xv)));
            feed.push(("labels".into(), Tensor::from_i64(vec![2], &[1, 3])));
            feed.push((ts.lr.clone(), Tensor::from_f32(vec![], &[0.1])));
            feed.push((ts.step.clone(), Tensor::from_f32(vec![], &[1.0])));
            let out = sess.run(&feed).unwrap_or_else(|e| panic!("{name}: {e}"));
            let loss = out
                .iter()
                .find(|(n, _)| *n == ts.loss)
                .unwrap()
                .1
                .to_f64_vec()
                .unwrap()[0];
            assert!(loss.is_finite() && loss > 0.0, "{name}: loss {loss}");
            eprintln!("{name}: {} params, loss {loss:.4}", ts.params.len());
        }
    }
}
