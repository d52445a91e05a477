//! Activation statistics on calibration data: exact values on a hand-built model with a dead and
//! a constant channel (rank-4 and rank-2 activations), ResNet-56 on real CIFAR-10 images under
//! ONNX Runtime and tract (they agree), fixed-batch calibration batches, and the errors of
//! batches that do not fit the model.

use crate::common;

use crate::graphs;

use graphs::{gap_gemm, Builder};
use lopper::analysis::activation_stats::{activation_stats, calibration_batches, CalibrationBatch};
use lopper::analysis::importance::ActivationStats;
use lopper::analysis::{channel_groups, infer_shapes, ChannelGroups};
use lopper::data::{self, DataSpec, OpenOptions, Preprocess};
use lopper::ir::{Model, Tensor};
use lopper::runtime::{BackendKind, RuntimeOptions};

fn backends() -> Vec<BackendKind> {
    let mut v = vec![BackendKind::Tract];
    if common::require_ort() {
        v.push(BackendKind::Ort);
    }
    v
}

fn ort_opts() -> RuntimeOptions {
    RuntimeOptions {
        threads: Some(2),
        ..RuntimeOptions::default()
    }
}

/// `x [N,2,4,4]` → `c1` 1×1 conv to 3 channels (channel 1: zero filter and bias; channel 2:
/// zero filter, bias 0.5) → `r1` → `c2` 3×3 conv to 4 channels (channel 0: zero filter, bias
/// 0.25; channel 1: zero filter, bias −1) → Relu → GlobalAveragePool → Flatten → Gemm.
fn tiny(batch: Option<usize>) -> Model {
    let mut b = Builder::new("tiny", batch, 3);
    let x = b.input("x", 2, 4);
    let c1 = b.conv("c1", x, 3, 1, 1, 1, true);
    let r1 = b.relu("r1", c1);
    let c2 = b.conv("c2", r1, 4, 3, 1, 1, true);
    let r2 = b.relu("r2", c2);
    let y = gap_gemm(&mut b, r2, 5);
    let mut m = b.finish(&[y]);
    let g = &mut m.graph;
    let set = |g: &mut lopper::ir::Graph, name: &str, f: &dyn Fn(usize, f32) -> f32| {
        let v = g.value_by_name(name).unwrap();
        let t = g.init(v).unwrap().clone();
        let per = t.len() / t.shape()[0];
        let vals: Vec<f32> = t
            .to_f32_vec()
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(i, x)| f(i / per, x))
            .collect();
        g.set_init(v, Tensor::from_f32(t.shape().to_vec(), &vals));
    };
    set(g, "c1.weight", &|k, x| if k == 0 { x } else { 0.0 });
    set(g, "c1.bias", &|k, x| [x, 0.0, 0.5][k]);
    set(g, "c2.weight", &|k, x| if k < 2 { 0.0 } else { x });
    set(g, "c2.bias", &|k, x| [0.25, -1.0, x, x][k]);
    m
}

/// Seeded inputs uniform in [-1, 1).
fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_f32(shape.to_vec(), &v)
}

/// The class at `pos` of the channels of value `name` (axis 1).
fn class_at(model: &Model, groups: &ChannelGroups, name: &str, pos: usize) -> usize {
    let v = model.graph.value_by_name(name).unwrap();
    groups.class_of[groups.slots[&(v, 1)][pos]]
}

fn stats(
    model: &Model,
    groups: &ChannelGroups,
    backend: BackendKind,
    batches: Vec<CalibrationBatch>,
) -> lopper::Result<ActivationStats> {
    let mut it = batches.into_iter().map(Ok);
    let mut seen = Vec::new();
    let s = activation_stats(model, groups, backend, &ort_opts(), &mut it, &mut |n| {
        seen.push(n)
    })?;
    assert_eq!(
        seen.last().copied(),
        Some(s.samples),
        "progress ends at the sample count"
    );
    Ok(s)
}

#[test]
fn dead_and_constant_channels_have_exact_statistics() {
    let m = tiny(None);
    let groups = channel_groups(&m, &infer_shapes(&m).unwrap()).unwrap();
    let xs = [random(&[3, 2, 4, 4], 1), random(&[2, 2, 4, 4], 2)];
    // Expected mean |r1| of channel 0: relu(w·x + b) by hand.
    let v = |name: &str| {
        let id = m.graph.value_by_name(name).unwrap();
        m.graph.init(id).unwrap().to_f32_vec().unwrap()
    };
    let (w, bias) = (v("c1.weight"), v("c1.bias"));
    let (mut sum, mut zeros, mut count) = (0f64, 0usize, 0usize);
    for x in &xs {
        let x = x.to_f32_vec().unwrap();
        for n in 0..x.len() / 32 {
            for p in 0..16 {
                let y = (w[0] * x[n * 32 + p] + w[1] * x[n * 32 + 16 + p] + bias[0]).max(0.0);
                sum += f64::from(y);
                zeros += usize::from(y == 0.0);
                count += 1;
            }
        }
    }
    for backend in backends() {
        let batches = xs
            .iter()
            .map(|x| vec![("x".to_string(), x.clone())])
            .collect();
        let s = stats(&m, &groups, backend, batches).unwrap();
        let at = |name, pos| class_at(&m, &groups, name, pos);
        assert_eq!(s.samples, 5, "{backend:?}");
        assert_eq!(s.mean_abs.len(), groups.class_atoms.len());
        // Rank 4 (r1, read by c2): dead, constant 0.5, and the computed channel.
        assert_eq!(
            (s.mean_abs[at("r1", 1)], s.zero_fraction[at("r1", 1)]),
            (0.0, 1.0)
        );
        assert_eq!(
            (s.mean_abs[at("r1", 2)], s.zero_fraction[at("r1", 2)]),
            (0.5, 0.0)
        );
        let c0 = at("r1", 0);
        let rel = (s.mean_abs[c0] - sum / count as f64).abs() / (sum / count as f64);
        assert!(rel < 1e-5, "{backend:?}: channel 0 mean off by {rel:e}");
        assert!(
            (s.zero_fraction[c0] - zeros as f64 / count as f64).abs() < 1e-12,
            "{backend:?}: channel 0 zeros {} vs {zeros}/{count}",
            s.zero_fraction[c0]
        );
        // Rank 2 (the flattened pool, read by the Gemm): constant 0.25 and dead.
        let name = "head.flatten";
        assert_eq!(s.mean_abs[at(name, 0)], 0.25, "{backend:?}");
        assert_eq!(s.zero_fraction[at(name, 0)], 0.0, "{backend:?}");
        assert_eq!(s.mean_abs[at(name, 1)], 0.0, "{backend:?}");
        assert_eq!(s.zero_fraction[at(name, 1)], 1.0, "{backend:?}");
        for c in [at(name, 2), at(name, 3)] {
            assert!(
                s.mean_abs[c] > 0.0 && s.mean_abs[c].is_finite(),
                "{backend:?}"
            );
        }
    }
}

#[test]
fn classes_no_consumer_reads_are_measured_at_their_producer() {
    let m = tiny(None);
    let mut groups = channel_groups(&m, &infer_shapes(&m).unwrap()).unwrap();
    // Without c2's consumer declaration, r1 is read by nobody: c1's output is measured.
    let c2 = m
        .graph
        .node_ids()
        .find(|&n| m.graph.node(n).name == "c2")
        .unwrap();
    groups
        .links
        .get_mut(&c2)
        .unwrap()
        .retain(|l| !matches!(l, lopper::ops::channel::Link::Consume { .. }));
    let x = random(&[4, 2, 4, 4], 5);
    let v = |name: &str| {
        let id = m.graph.value_by_name(name).unwrap();
        m.graph.init(id).unwrap().to_f32_vec().unwrap()
    };
    let (w, bias) = (v("c1.weight"), v("c1.bias"));
    let xv = x.to_f32_vec().unwrap();
    let mut sum = 0f64;
    for n in 0..4 {
        for p in 0..16 {
            let y = w[0] * xv[n * 32 + p] + w[1] * xv[n * 32 + 16 + p] + bias[0];
            sum += f64::from(y.abs());
        }
    }
    let s = stats(&m, &groups, BackendKind::Tract, vec![vec![("x".into(), x)]]).unwrap();
    let at = |pos| class_at(&m, &groups, "c1", pos);
    let want = sum / 64.0;
    assert!(
        (s.mean_abs[at(0)] - want).abs() < 1e-5 * want,
        "{} vs {want} (before the Relu)",
        s.mean_abs[at(0)]
    );
    assert_eq!((s.mean_abs[at(1)], s.zero_fraction[at(1)]), (0.0, 1.0));
    assert_eq!((s.mean_abs[at(2)], s.zero_fraction[at(2)]), (0.5, 0.0));
}

#[test]
fn batches_that_do_not_fit_are_named() {
    let m = tiny(None);
    let groups = channel_groups(&m, &infer_shapes(&m).unwrap()).unwrap();
    let x = random(&[2, 2, 4, 4], 1);
    let cases: Vec<(CalibrationBatch, &[&str])> = vec![
        (
            vec![("input".into(), x.clone())],
            &["'input'", "not an input", "'x'"],
        ),
        (
            vec![("x".into(), random(&[2, 3, 4, 4], 1))],
            &["'x'", "[N,2,4,4]", "[2, 3, 4, 4]"],
        ),
        (
            vec![("x".into(), Tensor::from_i64(vec![2, 2, 4, 4], &[0; 64]))],
            &["'x'", "float", "int64"],
        ),
        (vec![], &["lacks", "'x'"]),
    ];
    for (batch, needles) in cases {
        let err = stats(&m, &groups, BackendKind::Tract, vec![batch])
            .unwrap_err()
            .to_string();
        for n in needles {
            assert!(err.contains(n), "'{err}' should mention {n}");
        }
    }
    let err = stats(&m, &groups, BackendKind::Tract, vec![]).unwrap_err();
    assert!(err.to_string().contains("no calibration samples"), "{err}");
}

#[test]
fn a_fixed_batch_gets_only_full_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.npz");
    let bytes: Vec<u8> = (0..5 * 2 * 16).map(|i| (i * 37 % 256) as u8).collect();
    common::arrays::write_npz(
        &path,
        &[(
            "x",
            common::arrays::npy("<f4", &[5, 2, 4, 4], &{
                bytes
                    .iter()
                    .flat_map(|&b| (f32::from(b) / 255.0).to_le_bytes())
                    .collect::<Vec<u8>>()
            }),
        )],
    );
    let m = tiny(Some(2));
    let groups = channel_groups(&m, &infer_shapes(&m).unwrap()).unwrap();
    let spec: DataSpec = format!("npz:{}", path.display()).parse().unwrap();
    let open = || data::open(&spec, &OpenOptions::default()).unwrap();
    let mut batches = calibration_batches(&m, open(), &Preprocess::default(), None, None).unwrap();
    assert_eq!(batches.samples(), 4);
    let s = activation_stats(
        &m,
        &groups,
        BackendKind::Tract,
        &RuntimeOptions::default(),
        &mut batches,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(s.samples, 4);
    assert_eq!(s.mean_abs[class_at(&m, &groups, "r1", 2)], 0.5);
    let err = calibration_batches(&m, open(), &Preprocess::default(), Some(3), None)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("fixes the batch size at 2"),
        "{err}"
    );
    let err = calibration_batches(&m, open(), &Preprocess::default(), None, Some(1))
        .err()
        .unwrap();
    assert!(err.to_string().contains("no calibration samples"), "{err}");
}

/// ResNet-56 (BN kept) on `n` CIFAR-10 test images in batches of `batch`.
fn resnet56(n: usize, batch: usize, backend: BackendKind) -> (ActivationStats, ChannelGroups) {
    let shared = common::shared_dir();
    let mut m = Model::load(shared.join("models/pretrained/resnet56_cifar10.bn.onnx")).unwrap();
    let groups = lopper::prune::analyse(&mut m).unwrap();
    let spec: DataSpec = format!(
        "npz:{}",
        shared.join("data/cifar10/lossless-subset.npz").display()
    )
    .parse()
    .unwrap();
    let ds = data::open(&spec, &OpenOptions::default()).unwrap();
    let pre = Preprocess {
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
        ..Preprocess::default()
    };
    let mut batches = calibration_batches(&m, ds, &pre, Some(batch), Some(n)).unwrap();
    let s = activation_stats(&m, &groups, backend, &ort_opts(), &mut batches, &mut |_| {}).unwrap();
    (s, groups)
}

#[test]
fn resnet56_statistics_agree_between_runtimes() {
    let mut all = Vec::new();
    for backend in backends() {
        let (s, groups) = resnet56(16, 8, backend);
        assert_eq!(s.samples, 16, "{backend:?}");
        let prunable: Vec<usize> = groups
            .groups
            .iter()
            .filter(|g| g.prunable())
            .flat_map(|g| g.classes.iter().copied())
            .collect();
        assert!(prunable.len() > 1000, "{} prunable classes", prunable.len());
        for &c in &prunable {
            let (a, z) = (s.mean_abs[c], s.zero_fraction[c]);
            assert!(a.is_finite() && a >= 0.0, "{backend:?} class {c}: mean {a}");
            assert!((0.0..=1.0).contains(&z), "{backend:?} class {c}: zeros {z}");
            // Measured: a zero mean means every activation was zero.
            assert!(a > 0.0 || z == 1.0, "{backend:?}: class {c} has no value");
        }
        // After ReLU, many activations are exactly zero.
        let zeros = prunable.iter().map(|&c| s.zero_fraction[c]).sum::<f64>();
        assert!(
            zeros / prunable.len() as f64 > 0.2,
            "mean zero fraction {zeros}"
        );
        all.push((backend, s, prunable));
    }
    if let [(_, a, prunable), (_, b, _)] = all.as_slice() {
        // Mean |a|: 1e-4 relative. Zero fractions: a pre-activation within rounding of 0 may
        // land on either side of the ReLU in the two runtimes; one element of the smallest
        // (8x8) maps over 16 images is 1/1024, so a few such flips are allowed, and they must
        // be rare.
        let (mut worst_mean, mut worst_zeros, mut differ) = (0f64, 0f64, 0usize);
        for &c in prunable {
            let rel = (a.mean_abs[c] - b.mean_abs[c]).abs()
                / a.mean_abs[c].abs().max(b.mean_abs[c].abs()).max(1e-12);
            worst_mean = worst_mean.max(rel);
            let dz = (a.zero_fraction[c] - b.zero_fraction[c]).abs();
            worst_zeros = worst_zeros.max(dz);
            differ += usize::from(dz > 0.0);
        }
        eprintln!(
            "ort vs tract: mean |a| max rel {worst_mean:e}; zero fraction max abs {worst_zeros:e}, {differ}/{} classes differ",
            prunable.len()
        );
        assert!(
            worst_mean < 1e-4,
            "mean |a| differs by {worst_mean:e} relative"
        );
        assert!(
            worst_zeros <= 3.0 / 1024.0,
            "zero fractions differ by {worst_zeros:e}"
        );
        assert!(
            differ * 20 < prunable.len(),
            "{differ} zero fractions differ"
        );
    }
}
