//! The compiled train step of every zoo model, checked end to end in ONNX Runtime: with plain
//! SGD at lr = 1 a step's parameter change is minus the gradient, which is compared with
//! central finite differences of the step's own loss output (float32, batch 2, BN in training
//! mode). A few steps on one fixed batch lower the loss. A small model with Dropout checks the
//! fed-noise masks: exact forward, gradients, and masks drawn afresh and reproducibly.

use crate::common;

use std::path::Path;

use crate::graphs::{Block, Head};
use common::*;
use lopper::analysis::importance::CriterionKind;
use lopper::ir::{Dim, Fact, Model, Tensor};
use lopper::plan::allocate::{Amount, Budget};
use lopper::prune::{prune, PruneOptions, Scored, Selection};
use lopper::runtime::{self, BackendKind, Session};
use lopper::train::loss::Loss;
use lopper::train::optim::Optimizer;
use lopper::train::runner::SplitMix64;
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

/// Feed: carried tensors, a random batch, labels, lr, step, and fixed Dropout noise.
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
    // The same masks for every evaluation: the loss is then a function of the weights alone.
    let mut noise = Rng::new(5);
    f.extend(step.noise_feed(&mut || ((noise.uniform() + 1.0) / 2.0) as f32));
    f
}

fn output<'a>(outs: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &outs
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no output {name}"))
        .1
}

/// Relative errors of directional derivatives of the step's loss for its first, middle and
/// last parameters (SGD at lr = 1: the parameter change is minus the gradient), against
/// central finite differences of the same step run with `f` (`outs`: its outputs).
/// Directional derivatives are robust to float32 noise and to the ReLU/max-pool kinks that
/// single-element differences trip over.
fn directional_errors(
    step: &TrainStep,
    s: &mut dyn Session,
    f: &[(String, Tensor)],
    outs: &[(String, Tensor)],
) -> Vec<f64> {
    let k = step.params.len();
    let mut errors: Vec<f64> = Vec::new();
    let mut rng = Rng::new(11);
    for p in [&step.params[0], &step.params[k / 2], &step.params[k - 1]] {
        let before = p.init.to_f64_vec().unwrap();
        let after = output(outs, &p.output).to_f64_vec().unwrap();
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
        // A parameter with no gradient at all (it reaches the loss only through channels
        // this batch leaves dead) is checked along the random direction alone.
        let dirs = if norm(&grad) > 0.0 {
            vec![grad.clone(), random]
        } else {
            vec![random]
        };
        for dir in dirs {
            let dn = norm(&dir);
            let u: Vec<f64> = dir.iter().map(|d| d / dn).collect();
            let analytic: f64 = grad.iter().zip(&u).map(|(g, u)| g * u).sum();
            let mut at = |t: f64| {
                let v: Vec<f64> = before.iter().zip(&u).map(|(b, u)| b + t * u).collect();
                let mut g = f.to_vec();
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
                // Scaled by the tensor's norm, at least 1: a zero tensor (a bias that
                // pruning split off a shared zero initializer) needs an absolute step.
                let eps = h * norm(&before).max(1.0);
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
    errors
}

/// The batch a model fixes on its data input, else 2.
fn batch_of(model: &Model) -> usize {
    let (name, _) = &random_inputs(model, 0)[0];
    let g = &model.graph;
    let decl = g.value(g.value_by_name(name).unwrap()).decl.as_ref();
    let fact = decl
        .and_then(|d| d.r#type.as_ref())
        .map(Fact::from_type)
        .unwrap_or_default();
    match fact.shape.as_deref() {
        Some([Dim::Known(n), ..]) => *n,
        _ => 2,
    }
}

/// Compiles `model`'s train step (plain SGD, batch 2 unless the model fixes one), runs it once and checks that every
/// parameter update is finite and that the step's gradients match finite differences.
fn check_train_step(name: &str, model: &Model, dir: &Path) {
    let step = compile_train_step(model, &plain_sgd(batch_of(model)))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut s = session(&step, dir);
    let f = feed(&step, model, 1.0);
    let outs = s.run(&f).unwrap_or_else(|e| panic!("{name}: {e}"));
    let loss0 = output(&outs, &step.loss).to_f64_vec().unwrap()[0];
    assert!(loss0.is_finite(), "{name}: loss {loss0}");
    // A finite loss with non-finite updates is the NaN at step 2 of a pruned model.
    for p in &step.params {
        let v = output(&outs, &p.output).to_f64_vec().unwrap();
        let bad = v.iter().filter(|x| !x.is_finite()).count();
        assert_eq!(
            bad,
            0,
            "{name}: {bad} of {} updated values of {} are not finite",
            v.len(),
            p.input
        );
    }
    let mut errors = directional_errors(&step, &mut *s, &f, &outs);
    errors.sort_by(f64::total_cmp);
    let (worst, second) = (errors[errors.len() - 1], errors[errors.len() - 2]);
    eprintln!(
        "{name}: {} params, {} directional derivatives, median rel error {:.1e}, worst {worst:.1e}",
        step.params.len(),
        errors.len(),
        errors[errors.len() / 2]
    );
    assert!(
        worst <= TOLERANCE,
        "{name}: gradient errors {errors:?} (second worst {second:.1e})"
    );
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
        let model = Model::load(&path).unwrap();
        check_train_step(&short(&path), &model, dir.path());
    }
}

/// Pruned models train: every shared model pruned as `lopper prune --target flops=0.5` (global
/// allocation) would, and the 32×32 and MNIST ones also as `--ratio 0.5`, then its train step
/// checked as above. Global allocation leaves layers of a few
/// channels, which once made ONNX Runtime merge a BN's private statistics buffer with an
/// equal constant of the backward pass: finite loss, NaN updates.
#[test]
fn every_pruned_train_step_matches_finite_differences() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let amounts = [
        ("flops=0.5", Amount::Target(Budget::Flops(0.5))),
        ("ratio=0.5", Amount::Ratio(0.5)),
    ];
    let mut checked = 0;
    for path in all_models() {
        let model = Model::load(&path).unwrap();
        // Local ratio pruning on the 32×32 and MNIST models only: on the 224² zoo exports it
        // checks the ops the global case checks there, at several times the cost (CI time).
        let small = path.to_string_lossy().contains("/pretrained/")
            || path
                .file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with("cifar_"));
        let amounts = if small { &amounts[..] } else { &amounts[..1] };
        for (label, amount) in amounts {
            let mut m = model.clone();
            let opts = PruneOptions {
                selection: Selection::Scored(Scored::new(CriterionKind::L1, amount.clone())),
                verify_with: Vec::new(),
                tolerance: 1e-4,
            };
            let report = prune(&mut m, &opts)
                .unwrap_or_else(|e| panic!("{}: prune {label}: {e}", short(&path)));
            if report.removed == 0 {
                continue;
            }
            check_train_step(&format!("{} {label}", short(&path)), &m, dir.path());
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} pruned models were checked");
}

/// The CUDA form of the step (BatchNormalization composed of standard ops, since ONNX
/// Runtime's CUDA provider has no training-mode kernel at opset ≥ 14) computes what the fused
/// CPU form computes: the same loss, parameter updates and running statistics after one step,
/// on ResNet-20 and on ResNet-20 pruned globally (layers of a few channels).
#[test]
fn composed_batch_norm_step_matches_the_fused_one() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = resnet20();
    let pruned = resnet20_halved(1);
    for (name, m) in [("resnet20", &model), ("resnet20 flops=0.5", &pruned)] {
        let fused = compile_train_step(m, &plain_sgd(8)).unwrap();
        let composed = compile_train_step(
            m,
            &StepOptions {
                composed_batch_norm: true,
                ..plain_sgd(8)
            },
        )
        .unwrap();
        let count = |s: &TrainStep| {
            s.model
                .graph
                .node_ids()
                .map(|n| s.model.graph.node(n))
                .filter(|n| {
                    n.op_type == "BatchNormalization" && n.attr_i("training_mode") == Some(1)
                })
                .count()
        };
        assert!(
            count(&fused) > 0,
            "{name}: no training-mode BatchNormalization"
        );
        assert_eq!(count(&composed), 0, "{name}: a training-mode node is left");
        assert_same_step(name, &fused, &composed, m, dir.path());
    }
}

/// The pretrained CIFAR-10 ResNet-20.
fn resnet20() -> Model {
    Model::load(shared_dir().join("models/pretrained/resnet20_cifar10.bn.onnx")).unwrap()
}

/// ResNet-20 pruned globally (l1) to half its FLOPs, kept widths multiples of `round_to`.
fn resnet20_halved(round_to: usize) -> Model {
    let mut m = resnet20();
    let mut scored = Scored::new(CriterionKind::L1, Amount::Target(Budget::Flops(0.5)));
    scored.allocate.constraints.round_to = round_to;
    let opts = PruneOptions {
        selection: Selection::Scored(scored),
        verify_with: Vec::new(),
        tolerance: 1e-4,
    };
    prune(&mut m, &opts).unwrap();
    m
}

/// Runs one step of `a` and of `b` (two compilations of `model`) on the same feed and checks
/// that they give the same loss and the same parameter and running-statistic updates (within
/// float32 reassociation: 2e-3 of the largest change; batches of 8 or more, since
/// BatchNormalization over few values amplifies rounding: RegNet-X's last stage at batch 2,
/// 98 values per channel, differs by up to 2e-2).
fn assert_same_step(name: &str, a: &TrainStep, b: &TrainStep, model: &Model, dir: &Path) {
    let mut f = feed(a, model, 0.1);
    let classes = output_classes(model);
    if let Some(l) = &a.labels {
        let labels: Vec<i64> = (0..a.batch as i64).map(|i| (i * 3) % classes).collect();
        if let Some(slot) = f.iter_mut().find(|(n, _)| n == l) {
            slot.1 = Tensor::from_i64(vec![a.batch], &labels);
        }
    }
    let outs_a = session(a, dir).run(&f).unwrap();
    let outs_b = session(b, dir).run(&f).unwrap();
    let (la, lb) = (
        output(&outs_a, &a.loss).to_f64_vec().unwrap()[0],
        output(&outs_b, &b.loss).to_f64_vec().unwrap()[0],
    );
    assert!(la.is_finite(), "{name}: loss {la}");
    assert!(
        (la - lb).abs() <= 1e-4 * la.abs(),
        "{name}: loss {la} vs {lb}"
    );
    for c in a.params.iter().chain(&a.running) {
        let (x, y) = (
            output(&outs_a, &c.output).to_f64_vec().unwrap(),
            output(&outs_b, &c.output).to_f64_vec().unwrap(),
        );
        let init = c.init.to_f64_vec().unwrap();
        // Compare the changes the step made, relative to the largest change.
        let scale = x
            .iter()
            .zip(&init)
            .map(|(v, w)| (v - w).abs())
            .fold(1e-6, f64::max);
        let worst = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max);
        // The parameters are f32: an update far below their magnitude is rounded to it (a
        // depthwise bias moving by 1e-7 at 0.03 differs by an ulp, 1.9e-9, between forms).
        let ulps = 4.0 * f32::EPSILON as f64 * x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            worst <= 2e-3 * scale + ulps,
            "{name}: {}: updates differ by {worst:e} (largest change {scale:e})",
            c.input
        );
    }
}

/// The number of classes of `model`'s first output (its last dimension; 10 when unknown).
fn output_classes(model: &Model) -> i64 {
    let g = &model.graph;
    g.outputs
        .first()
        .and_then(|&o| g.value(o).decl.as_ref())
        .and_then(|d| Fact::from_type(d.r#type.as_ref()?).shape)
        .and_then(|s| s.last().and_then(|d| d.known()))
        .map_or(10, |c| c as i64)
}

/// The step with its convolutions lowered to ONNX Runtime's channel-blocked CPU kernels
/// (`train::block_convolutions`, what `lopper train` compiles on the CPU) computes what the
/// standard step computes, on ResNet-20 (3×3 convolutions, stride 2, an image-input stem),
/// ResNet-20 pruned globally with exact widths (the layers whose widths are not multiples of
/// the block stay plain) and with widths rounded to the block, and a small network with every
/// form (a stem with a bias, depthwise, 1×1, grouped). Not RegNet-X: its step at batch 8 is
/// chaotic in float32 (the input perturbed by 1e-7 moves some BatchNormalization bias updates
/// by 8% of their size), so no tolerance separates a layout bug from rounding there. On an
/// x86-64 CPU with AVX2 the probe must find the block: a probe that silently failed would
/// leave this test comparing two plain steps.
#[test]
fn blocked_convolution_step_matches_the_plain_one() {
    if !require_ort() {
        return;
    }
    let block = lopper::runtime::ort::channel_block();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert!(
            matches!(block, Some(8 | 16)),
            "no channel block found on an AVX2 CPU: {block:?}"
        );
    }
    let Some(block) = block else {
        eprintln!("NOTICE: skipping: ONNX Runtime has no blocked convolution kernels here");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Widths rounded to the block (8 with AVX2, 16 with AVX-512) are all lowered.
    let (r20, pruned, rounded) = (resnet20(), resnet20_halved(1), resnet20_halved(block));
    // The grouped convolution of `every_form` stays plain.
    let forms = every_form();
    for (name, m, batch, least) in [
        ("resnet20", &r20, 8, 19),
        ("resnet20 flops=0.5", &pruned, 8, 1),
        ("resnet20 flops=0.5 widths of the block", &rounded, 8, 19),
        ("every form", &forms, 8, 12),
    ] {
        let plain = compile_train_step(m, &plain_sgd(batch)).unwrap();
        let blocked = compile_train_step(
            m,
            &StepOptions {
                blocked_convolutions: Some(block),
                ..plain_sgd(batch)
            },
        )
        .unwrap();
        let count = |s: &TrainStep| {
            let g = &s.model.graph;
            g.node_ids()
                .filter(|&n| g.node(n).domain == lopper::train::block_convolutions::DOMAIN)
                .filter(|&n| g.node(n).op_type == "Conv")
                .count()
        };
        assert_eq!(count(&plain), 0, "{name}");
        if name == "every form" {
            let g = &blocked.model.graph;
            let blocked_convs: Vec<_> = g
                .node_ids()
                .map(|n| g.node(n))
                .filter(|n| n.domain == lopper::train::block_convolutions::DOMAIN)
                .filter(|n| n.op_type == "Conv")
                .collect();
            let depthwise = blocked_convs
                .iter()
                .filter(|n| n.attr_i("group").unwrap_or(1) > 1)
                .count();
            let image = blocked_convs
                .iter()
                .filter(|n| {
                    let x = n.input(0).and_then(|x| g.value(x).producer);
                    x.is_none_or(|(p, _)| g.node(p).op_type != "ReorderInput")
                })
                .count();
            assert!(
                depthwise >= 2 && image == 1,
                "{depthwise} depthwise, {image} image"
            );
        }
        assert!(
            count(&blocked) >= least,
            "{name}: {} blocked",
            count(&blocked)
        );
        assert_same_step(name, &plain, &blocked, m, dir.path());
    }
}

/// A small net with every convolution form: an image-input stem with a bias, depthwise,
/// grouped, 1×1 and 3×3 convolutions.
fn every_form() -> Model {
    crate::graphs::chain(
        "forms",
        16,
        &[
            Block::ConvBn(16),
            Block::Depthwise,
            Block::Grouped(4),
            Block::ResidualProj(32),
            Block::ConvBn(32),
        ],
        Head::GapGemm,
        None,
        7,
    )
}

/// The step with lopper's kernels (`ai.lopper:ConvWeightGrad`, `BatchNormGrad`, `ReluGrad`)
/// computes the standard step's loss and updates: ResNet-20 (16/32/64 channels, pads on every
/// side), ResNet-20 pruned with exact widths (odd channel counts: every tile shape), and a net
/// with a 3-channel stem, depthwise, grouped and 1×1 convolutions (the weight-gradient kernel
/// covers the ungrouped ones). On a CPU without AVX2 the kernels' portable loops run, so the
/// comparison still holds; the counts check that the rules emitted each op where it covers
/// the node: every BatchNormalization and Relu of the model, and the convolutions named.
#[test]
fn kernel_step_matches_the_standard_one() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (r20, pruned) = (resnet20(), resnet20_halved(1));
    let forms = every_form();
    for (name, m, least) in [
        // 19 convolutions, 2 of them strided.
        ("resnet20", &r20, 17),
        ("resnet20 flops=0.5", &pruned, 17),
        ("every form", &forms, 4),
    ] {
        let plain = compile_train_step(m, &plain_sgd(8)).unwrap();
        let with = compile_train_step(
            m,
            &StepOptions {
                kernels: true,
                ..plain_sgd(8)
            },
        )
        .unwrap();
        let count = |s: &TrainStep, op: &str| {
            let g = &s.model.graph;
            g.node_ids()
                .filter(|&n| {
                    let n = g.node(n);
                    n.domain == lopper::runtime::kernels::DOMAIN
                        && (op.is_empty() || n.op_type == op)
                })
                .count()
        };
        let forward = |op: &str| {
            let g = &m.graph;
            g.node_ids().filter(|&n| g.node(n).op_type == op).count()
        };
        assert_eq!(count(&plain, ""), 0, "{name}");
        let convs = count(&with, "ConvWeightGrad");
        assert!(convs >= least, "{name}: {convs} weight-gradient kernels");
        for (fwd, kernel) in [
            ("BatchNormalization", "BatchNormGrad"),
            ("Relu", "ReluGrad"),
        ] {
            assert!(forward(fwd) > 0, "{name} has no {fwd}");
            assert_eq!(count(&with, kernel), forward(fwd), "{name}: {kernel}");
        }
        assert_same_step(name, &plain, &with, m, dir.path());
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

/// The loss `dropout_mlp` must reach in its train step, in float64: cross-entropy of
/// `fc2(relu(fc1(x)) · [noise ≥ r] / (1 − r))` over the batch.
fn mlp_loss(model: &Model, x: &[f64], labels: &[i64], noise: &[f64], ratio: f64) -> f64 {
    let g = &model.graph;
    let w = |name: &str| {
        let v = g.value_by_name(name).unwrap();
        let t = g.init(v).unwrap();
        (t.shape().to_vec(), t.to_f64_vec().unwrap())
    };
    let ((s1, w1), (_, b1), (s2, w2), (_, b2)) = (
        w("fc1.weight"),
        w("fc1.bias"),
        w("fc2.weight"),
        w("fc2.bias"),
    );
    let (hidden, fan, classes) = (s1[0], s1[1], s2[0]);
    let mut total = 0.0;
    for (i, &label) in labels.iter().enumerate() {
        let xi = &x[i * fan..(i + 1) * fan];
        let h: Vec<f64> = (0..hidden)
            .map(|j| {
                let a = b1[j] + (0..fan).map(|k| w1[j * fan + k] * xi[k]).sum::<f64>();
                let keep = noise[i * hidden + j] >= ratio;
                if keep {
                    a.max(0.0) / (1.0 - ratio)
                } else {
                    0.0
                }
            })
            .collect();
        let z: Vec<f64> = (0..classes)
            .map(|c| b2[c] + (0..hidden).map(|j| w2[c * hidden + j] * h[j]).sum::<f64>())
            .collect();
        let m = z.iter().copied().fold(f64::MIN, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        total += lse - z[label as usize];
    }
    total / labels.len() as f64
}

/// A Dropout on the loss path becomes a mask fed as noise (opset 13: ratio input; opset 11:
/// ratio attribute): the step computes exactly the masked forward, its gradients match finite
/// differences under fixed noise, a fully dropped layer gets no gradient, the Dropout off the
/// loss path is left alone, and the inference model keeps both Dropouts untouched.
#[test]
fn dropout_trains_with_a_fed_mask() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (opset, ratio) in [(13, 0.3f32), (11, 0.5)] {
        let model = dropout_mlp(opset, &[2, 3], 8, 10, ratio, true, 1);
        let step = compile_train_step(&model, &plain_sgd(4)).unwrap();
        assert_eq!(step.noise.len(), 1, "opset {opset}");
        let d = &step.noise[0];
        assert_eq!((d.node.as_str(), d.shape.as_slice()), ("drop", &[4, 8][..]));
        assert!((d.ratio - f64::from(ratio)).abs() < 1e-7);
        let g = &step.model.graph;
        let dropouts: Vec<&str> = g
            .node_ids()
            .filter(|&n| g.node(n).op_type == "Dropout")
            .map(|n| g.node(n).name.as_str())
            .collect();
        assert_eq!(dropouts, ["side"], "opset {opset}");
        let back = step.inference_model(&[]).unwrap();
        let bg = &back.graph;
        let drop = bg.node_ids().find(|&n| bg.node(n).name == "drop").unwrap();
        let orig = &model.graph;
        let od = orig
            .node_ids()
            .find(|&n| orig.node(n).name == "drop")
            .unwrap();
        assert_eq!(bg.node(drop).op_type, "Dropout");
        assert_eq!(bg.node(drop).inputs.len(), orig.node(od).inputs.len());
        assert_eq!(bg.node(drop).attrs, orig.node(od).attrs);

        let mut s = session(&step, dir.path());
        let f = feed(&step, &model, 1.0);
        let outs = s.run(&f).unwrap();
        let get = |name: &str| f.iter().find(|(n, _)| n == name).unwrap().1.clone();
        let x = get(&step.x).to_f64_vec().unwrap();
        let labels = get(step.labels.as_ref().unwrap()).to_i64_vec().unwrap();
        let noise = get(&d.input).to_f64_vec().unwrap();
        let loss = output(&outs, &step.loss).to_f64_vec().unwrap()[0];
        let want = mlp_loss(&model, &x, &labels, &noise, f64::from(ratio));
        assert!(
            (loss - want).abs() < 1e-5 * want.abs().max(1.0),
            "opset {opset}: loss {loss}, expected {want}"
        );
        let kept = noise.iter().filter(|&&u| u >= f64::from(ratio)).count();
        assert!(
            kept > 0 && kept < noise.len(),
            "{kept} of {} kept",
            noise.len()
        );
        let errors = directional_errors(&step, &mut *s, &f, &outs);
        let worst = errors.iter().copied().fold(0.0, f64::max);
        eprintln!(
            "dropout mlp, opset {opset}: {} directional derivatives, worst rel error {worst:.1e}",
            errors.len()
        );
        assert!(worst <= TOLERANCE, "opset {opset}: {errors:?}");

        // Everything dropped: the loss sees the classifier's bias only and fc1 gets no
        // gradient.
        let mut f0 = f.clone();
        let slot = f0.iter().position(|(n, _)| *n == d.input).unwrap();
        f0[slot].1 = Tensor::from_f32(d.shape.clone(), &[0.0; 32]);
        let o = s.run(&f0).unwrap();
        let loss = output(&o, &step.loss).to_f64_vec().unwrap()[0];
        let want = mlp_loss(&model, &x, &labels, &[0.0; 32], f64::from(ratio));
        assert!(
            (loss - want).abs() < 1e-5 * want.max(1.0),
            "{loss} vs {want}"
        );
        let fc1 = step
            .params
            .iter()
            .find(|c| c.input == "fc1.weight")
            .unwrap();
        assert_eq!(output(&o, &fc1.output), &fc1.init, "opset {opset}");
    }
}

/// The runner's masks: drawn from its seeded splitmix64 stream, different at every step,
/// dropping about the ratio; the same seed gives the same masks and so the same training.
#[test]
fn dropout_masks_change_every_step_and_repeat_with_the_seed() {
    if !require_ort() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dropout_mlp(13, &[2, 3], 16, 10, 0.4, false, 2);
    let step = compile_train_step(&model, &plain_sgd(8)).unwrap();
    let mut s = session(&step, dir.path());
    let run = |s: &mut dyn Session, seed: u64| {
        let mut rng = SplitMix64(seed);
        let mut f = feed(&step, &model, 0.1);
        let mut masks = Vec::new();
        let mut losses = Vec::new();
        for _ in 0..4 {
            for (name, t) in step.noise_feed(&mut || rng.uniform_f32()) {
                let keep: Vec<bool> = t.to_f64_vec().unwrap().iter().map(|&u| u >= 0.4).collect();
                masks.push(keep);
                let slot = f.iter().position(|(n, _)| *n == name).unwrap();
                f[slot].1 = t;
            }
            let outs = s.run(&f).unwrap();
            losses.push(output(&outs, &step.loss).to_f64_vec().unwrap()[0]);
            for c in &step.params {
                let slot = f.iter().position(|(n, _)| *n == c.input).unwrap();
                f[slot].1 = output(&outs, &c.output).clone();
            }
        }
        let params: Vec<Tensor> = step
            .params
            .iter()
            .map(|c| f.iter().find(|(n, _)| *n == c.input).unwrap().1.clone())
            .collect();
        (masks, losses, params)
    };
    let (masks, losses, params) = run(&mut *s, 7);
    assert_eq!(masks.len(), 4);
    for w in masks.windows(2) {
        assert_ne!(w[0], w[1], "the mask repeated from one step to the next");
    }
    let kept = masks.iter().flatten().filter(|&&k| k).count() as f64 / (4.0 * 8.0 * 16.0);
    assert!((kept - 0.6).abs() < 0.1, "kept fraction {kept}");
    let (masks2, losses2, params2) = run(&mut *s, 7);
    assert_eq!((&masks, &losses, &params), (&masks2, &losses2, &params2));
    let (masks3, _, params3) = run(&mut *s, 8);
    assert_ne!(masks, masks3);
    assert_ne!(params, params3);
}
