//! The compiled train step of every zoo model, checked end to end in ONNX Runtime: with plain
//! SGD at lr = 1 a step's parameter change is minus the gradient, which is compared with
//! central finite differences of the step's own loss output (float32, batch 2, BN in training
//! mode). A few steps on one fixed batch lower the loss.

mod common;

use std::path::Path;

use common::*;
use lopper::ir::{Model, Tensor};
use lopper::runtime::{self, BackendKind, Session};
use lopper::train::loss::Loss;
use lopper::train::optim::Optimizer;
use lopper::train::{compile_train_step, StepOptions, TrainStep};

/// Largest accepted |analytic − numeric| / (max(|analytic|, |numeric|) + 0.1).
const TOLERANCE: f64 = 5e-2;

fn plain_sgd(batch: usize) -> StepOptions {
    StepOptions {
        batch,
        loss: Loss::CrossEntropy {
            label_smoothing: 0.0,
        },
        optimizer: Optimizer::Sgd {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        },
        ..Default::default()
    }
}

fn session(step: &TrainStep, dir: &Path) -> Box<dyn Session> {
    let path = dir.join("step.onnx");
    step.model.save(&path, &Default::default()).unwrap();
    runtime::load(BackendKind::Ort, &path).unwrap()
}

/// Feed: carried tensors, a random batch, labels, lr, step.
fn feed(step: &TrainStep, model: &Model, lr: f32) -> Vec<(String, Tensor)> {
    let mut f = step.initial_feed();
    let (_, mut shape) = input_spec(model, &step.x);
    shape[0] = step.batch;
    let n: usize = shape.iter().product();
    let mut rng = Rng::new(3);
    let x: Vec<f32> = (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
    f.push((step.x.clone(), Tensor::from_f32(shape, &x)));
    if let Some(l) = &step.labels {
        let labels: Vec<i64> = (0..step.batch as i64).map(|i| (i * 3) % 10).collect();
        f.push((l.clone(), Tensor::from_i64(vec![step.batch], &labels)));
    }
    f.push((step.lr.clone(), Tensor::from_f32(vec![], &[lr])));
    f.push((step.step.clone(), Tensor::from_f32(vec![], &[1.0])));
    if let Some(l) = &step.l1_lambda {
        if !f.iter().any(|(n, _)| n == l) {
            f.push((l.clone(), Tensor::from_f32(vec![], &[0.0])));
        }
    }
    f
}

fn output<'a>(outs: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &outs
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no output {name}"))
        .1
}

#[test]
fn every_zoo_train_step_matches_finite_differences() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let zoo = shared_dir().join("models/zoo");
    let mut paths: Vec<_> = std::fs::read_dir(&zoo)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.retain(|p| p.extension().is_some_and(|e| e == "onnx"));
    paths.sort();
    for path in paths {
        let name = short(&path);
        let model = Model::load(&path).unwrap();
        let step =
            compile_train_step(&model, &plain_sgd(2)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut s = session(&step, dir.path());
        let f = feed(&step, &model, 1.0);
        let outs = s.run(&f).unwrap_or_else(|e| panic!("{name}: {e}"));
        let loss0 = output(&outs, &step.loss).to_f64_vec().unwrap()[0];
        assert!(loss0.is_finite(), "{name}: loss {loss0}");
        // Directional derivatives of the loss for the first, middle and last parameters: robust
        // to float32 noise and to the ReLU/max-pool kinks that single-element differences trip
        // over.
        let k = step.params.len();
        let mut errors: Vec<f64> = Vec::new();
        let mut rng = Rng::new(11);
        for p in [&step.params[0], &step.params[k / 2], &step.params[k - 1]] {
            let before = p.init.to_f64_vec().unwrap();
            let after = output(&outs, &p.output).to_f64_vec().unwrap();
            let grad: Vec<f64> = before.iter().zip(&after).map(|(b, a)| b - a).collect();
            let pos = f.iter().position(|(n, _)| n == &p.input).unwrap();
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            // Along the gradient, and along the gradient turned by a random direction (still a
            // large, well-conditioned derivative, but one that a gradient wrong in any
            // component would miss).
            let r: Vec<f64> = (0..grad.len()).map(|_| rng.uniform() - 0.5).collect();
            let (gn, rn) = (norm(&grad).max(1e-30), norm(&r).max(1e-30));
            let random: Vec<f64> = grad.iter().zip(&r).map(|(g, r)| g / gn + r / rn).collect();
            let scale: f64 = std::env::var("LOPPER_EPS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1e-3);
            for dir in [grad.clone(), random] {
                let dn = norm(&dir);
                let u: Vec<f64> = dir.iter().map(|d| d / dn).collect();
                let analytic: f64 = grad.iter().zip(&u).map(|(g, u)| g * u).sum();
                let mut at = |t: f64| {
                    let v: Vec<f64> = before.iter().zip(&u).map(|(b, u)| b + t * u).collect();
                    let mut g = f.clone();
                    g[pos].1 =
                        Tensor::from_f64_as(p.init.dtype(), p.init.shape().to_vec(), &v).unwrap();
                    let o = s.run(&g).unwrap();
                    output(&o, &step.loss).to_f64_vec().unwrap()[0]
                };
                // Central differences at h and h/2, Richardson-extrapolated (the h² term
                // cancels), on a ladder of step sizes until one agrees: float32 noise dominates
                // small steps, curvature large ones (first convs of 224² models under
                // batch-2 BN statistics need h ≈ 1e-5·‖W‖), and a wrong rule fails them all.
                let mut err = f64::MAX;
                let mut numeric = 0.0;
                for h in [scale, scale / 5.0, scale / 30.0, scale / 100.0] {
                    if err <= TOLERANCE {
                        break;
                    }
                    let eps = h * norm(&before).max(1e-2);
                    let d1 = (at(eps) - at(-eps)) / (2.0 * eps);
                    let d2 = (at(eps / 2.0) - at(-eps / 2.0)) / eps;
                    let n = (4.0 * d2 - d1) / 3.0;
                    // Relative error, with an absolute floor for noise on small derivatives.
                    let e = (analytic - n).abs() / (analytic.abs().max(n.abs()) + 0.1);
                    if e < err {
                        (err, numeric) = (e, n);
                    }
                }
                if std::env::var("LOPPER_DEBUG").is_ok() {
                    eprintln!(
                        "  {} analytic {analytic:.5e} numeric {numeric:.5e}",
                        p.input
                    );
                }
                errors.push(err);
            }
        }
        errors.sort_by(f64::total_cmp);
        let (worst, second) = (errors[errors.len() - 1], errors[errors.len() - 2]);
        eprintln!(
            "{name}: {k} params, {} directional derivatives, median rel error {:.1e}, worst {worst:.1e}",
            errors.len(),
            errors[errors.len() / 2]
        );
        assert!(
            worst <= TOLERANCE,
            "{name}: gradient errors {errors:?} (second worst {second:.1e})"
        );
    }
}

#[test]
fn steps_on_one_batch_lower_the_loss() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = shared_dir().join("models/pretrained/resnet20_cifar10.bn.onnx");
    let model = Model::load(&path).unwrap();
    let step = compile_train_step(&model, &plain_sgd(8)).unwrap();
    let mut s = session(&step, dir.path());
    let mut f = feed(&step, &model, 0.05);
    let mut losses = Vec::new();
    for _ in 0..5 {
        let outs = s.run(&f).unwrap();
        losses.push(output(&outs, &step.loss).to_f64_vec().unwrap()[0]);
        // Carry parameters (and running stats) to the next step.
        for c in step.params.iter().chain(&step.running) {
            let v = output(&outs, &c.output).clone();
            if let Some(slot) = f.iter_mut().find(|(n, _)| n == &c.input) {
                slot.1 = v;
            }
        }
    }
    assert!(losses[4] < losses[0] * 0.5, "loss did not fall: {losses:?}");
    // The trained weights go back into an inference model that runs.
    let trained: Vec<(String, Tensor)> = step
        .params
        .iter()
        .chain(&step.running)
        .map(|c| {
            (
                c.input.clone(),
                f.iter().find(|(n, _)| n == &c.input).unwrap().1.clone(),
            )
        })
        .collect();
    let back = step.inference_model(&trained).unwrap();
    let out = dir.path().join("trained.onnx");
    back.save(&out, &Default::default()).unwrap();
    let inputs = random_inputs(&back, 1);
    assert!(!run(BackendKind::Ort, &out, &inputs).is_empty());
}
