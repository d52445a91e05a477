//! Importance criteria on hand-built graphs whose expected scores are known exactly (filter
//! norms, BN gammas, geometric-median distances, LAMP ratios, affinity-propagation clusters,
//! weighted combinations), plus every data-free criterion on every shared model and on a
//! generated ResNet-50 (one finite score per class, in [0, 1] for prunable groups; timed).
//!
//! Unoptimised (debug) builds run the criteria's O(n²) loops some 30× slower, so there the
//! shared-model test skips EPruner on models of more than 3000 channels and the ResNet-50
//! test runs only the linear-time criteria; `cargo test --release --test importance --
//! --nocapture` runs everything and prints the timings.

use crate::common;
use crate::graphs;
use crate::resnet50;

use std::time::Instant;

use common::*;
use graphs::{Builder, Feat};
use lopper::analysis::channels::{ChannelGroups, Group};
use lopper::analysis::importance::filters::Filters;
use lopper::analysis::importance::random::SplitMix64;
use lopper::analysis::importance::{
    l1_scores, normalize, score, ActivationStats, CriterionKind, Normalize, Reduce, ScoreCx, Scores,
};
use lopper::analysis::{infer_shapes, Shapes};
use lopper::ir::graph::{attr_float, attr_ints};
use lopper::ir::{Model, Tensor};
use lopper::prune::analyse;
use lopper::Error;

/// A model and its analysis.
struct Analysed {
    model: Model,
    groups: ChannelGroups,
    shapes: Shapes,
}

impl Analysed {
    fn new(mut model: Model) -> Analysed {
        let groups = analyse(&mut model).unwrap();
        let shapes = infer_shapes(&model).unwrap();
        Analysed {
            model,
            groups,
            shapes,
        }
    }

    fn cx<'a>(
        &'a self,
        reduce: Reduce,
        seed: u64,
        acts: Option<&'a ActivationStats>,
    ) -> ScoreCx<'a> {
        ScoreCx {
            model: &self.model,
            groups: &self.groups,
            shapes: &self.shapes,
            reduce,
            seed,
            activations: acts,
        }
    }

    fn run(&self, kind: &str, how: Normalize) -> Scores {
        let kind = CriterionKind::parse(kind).unwrap();
        score(&kind, &self.cx(Reduce::Sum, 0, None), how).unwrap_or_else(|e| panic!("{kind}: {e}"))
    }

    /// The group whose producers include node `name`.
    fn group(&self, name: &str) -> &Group {
        self.groups
            .groups
            .iter()
            .find(|g| g.sources.iter().any(|s| s.node_name == name))
            .unwrap_or_else(|| panic!("no group produced by '{name}'"))
    }

    /// Scores of the classes of the group produced by `name`, in class order.
    fn of(&self, s: &Scores, name: &str) -> Vec<f64> {
        self.group(name)
            .classes
            .iter()
            .map(|&c| s.values[c])
            .collect()
    }
}

/// A 1×1 convolution with the given filters (one row per output channel).
fn conv1x1(b: &mut Builder, name: &str, x: Feat, filters: &[Vec<f32>]) -> Feat {
    let w: Vec<f32> = filters.iter().flatten().copied().collect();
    let t = Tensor::from_f32(vec![filters.len(), x.c, 1, 1], &w);
    let wv = b.init(&format!("{name}.weight"), t);
    let attrs = vec![attr_ints("kernel_shape", &[1, 1])];
    let v = b.node(name, "Conv", &[x.v, wv], attrs);
    Feat {
        v,
        c: filters.len(),
        s: x.s,
    }
}

/// `input → a (1×1 conv with `filters`) [→ a.bn with `gamma`] → Relu → b (3×3, 3 channels)
/// → Relu → GlobalAveragePool → Flatten → Gemm`. Group "a" holds one class per filter.
fn one_layer(filters: &[Vec<f32>], gamma: Option<&[f32]>) -> Analysed {
    let mut b = Builder::new("one_layer", Some(1), 3);
    let x = b.input("input", filters[0].len(), 4);
    let mut h = conv1x1(&mut b, "a", x, filters);
    if let Some(gamma) = gamma {
        let c = h.c;
        let ins = [
            h.v,
            b.init("a.bn.scale", Tensor::from_f32(vec![c], gamma)),
            b.init("a.bn.bias", Tensor::from_f32(vec![c], &vec![0.1; c])),
            b.init("a.bn.mean", Tensor::from_f32(vec![c], &vec![0.0; c])),
            b.init("a.bn.var", Tensor::from_f32(vec![c], &vec![1.0; c])),
        ];
        let attrs = vec![attr_float("epsilon", 1e-5)];
        let v = b.node("a.bn", "BatchNormalization", &ins, attrs);
        h = Feat { v, ..h };
    }
    let h = b.relu("a.relu", h);
    let h = b.conv("b", h, 3, 3, 1, 1, true);
    let h = b.relu("b.relu", h);
    let y = graphs::gap_gemm(&mut b, h, 5);
    Analysed::new(b.finish(&[y]))
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
            "{what}: got {got:?}, want {want:?}"
        );
    }
}

/// Filters whose L1 and L2 orders differ: L1 = [4, 3, 1, 8], L2 = [2, 3, √0.5, 4].
fn norm_filters() -> Vec<Vec<f32>> {
    vec![
        vec![1.0, 1.0, 1.0, 1.0],
        vec![3.0, 0.0, 0.0, 0.0],
        vec![0.5, 0.5, 0.0, 0.0],
        vec![-2.0, 2.0, -2.0, 2.0],
    ]
}

#[test]
fn l1_and_l2_are_the_filter_norms() {
    let a = one_layer(&norm_filters(), None);
    assert_eq!(a.group("a").classes.len(), 4);
    let l1 = a.run("l1", Normalize::None);
    assert_close(&a.of(&l1, "a"), &[4.0, 3.0, 1.0, 8.0], "raw l1");
    let l1n = a.run("l1", Normalize::Max);
    assert_close(&a.of(&l1n, "a"), &[0.5, 0.375, 0.125, 1.0], "l1");
    let l2 = a.run("l2", Normalize::None);
    assert_close(&a.of(&l2, "a"), &[2.0, 3.0, 0.5f64.sqrt(), 4.0], "raw l2");
    let l2n = a.run("l2", Normalize::Max);
    assert_close(
        &a.of(&l2n, "a"),
        &[0.5, 0.75, 0.5f64.sqrt() / 4.0, 1.0],
        "l2",
    );
    // The convenience function is the max-normalised sum.
    assert_close(&l1_scores(&a.model, &a.groups), &l1n.values, "l1_scores");
}

/// L1 norm of row `k` (axis 0 slice) of the initializer `name`.
fn row_l1(model: &Model, name: &str, k: usize) -> f64 {
    let g = &model.graph;
    let t = g.init(g.value_by_name(name).unwrap()).unwrap();
    let inner: usize = t.shape()[1..].iter().product();
    let v = t.to_f64_vec().unwrap();
    v[k * inner..(k + 1) * inner].iter().map(|x| x.abs()).sum()
}

#[test]
fn residual_classes_reduce_over_their_producers() {
    let m = graphs::single(graphs::Block::ResidualProj(6));
    let a = Analysed::new(m);
    let grp = a.group("b1.conv_b");
    assert!(
        grp.sources.iter().any(|s| s.node_name == "b1.proj"),
        "conv_b and proj share a group: {:?}",
        grp.sources
    );
    let (b, p): (Vec<f64>, Vec<f64>) = (0..6)
        .map(|k| {
            (
                row_l1(&a.model, "b1.conv_b.weight", k),
                row_l1(&a.model, "b1.proj.weight", k),
            )
        })
        .unzip();
    for (reduce, f) in [
        (Reduce::Sum, (|x: f64, y: f64| x + y) as fn(f64, f64) -> f64),
        (Reduce::Mean, |x, y| (x + y) / 2.0),
        (Reduce::Max, f64::max),
    ] {
        let s = score(&CriterionKind::L1, &a.cx(reduce, 0, None), Normalize::None).unwrap();
        let want: Vec<f64> = b.iter().zip(&p).map(|(x, y)| f(*x, *y)).collect();
        assert_close(&a.of(&s, "b1.conv_b"), &want, &format!("{reduce:?}"));
    }
}

#[test]
fn bn_scale_reads_gammas_and_falls_back_to_l1_without_bn() {
    let gamma = [0.1, -2.0, 0.5, 1.0];
    let a = one_layer(&norm_filters(), Some(&gamma));
    let raw = a.run("bn-scale", Normalize::None);
    assert_close(&a.of(&raw, "a"), &[0.1, 2.0, 0.5, 1.0], "raw |gamma|");
    let norm = a.run("bn-scale", Normalize::Max);
    assert_close(&a.of(&norm, "a"), &[0.05, 1.0, 0.25, 0.5], "|gamma|");
    // Group "b" has no BN: it falls back to L1, and the note counts it.
    let l1 = a.run("l1", Normalize::Max);
    assert_close(&a.of(&norm, "b"), &a.of(&l1, "b"), "fallback");
    assert_eq!(norm.notes.len(), 1, "{:?}", norm.notes);
    assert!(
        norm.notes[0].contains("1 prunable group"),
        "{:?}",
        norm.notes
    );

    let folded = one_layer(&norm_filters(), None);
    let s = folded.run("bn-scale", Normalize::Max);
    assert_close(
        &s.values,
        &folded.run("l1", Normalize::Max).values,
        "all L1",
    );
    assert!(s.notes[0].contains("2 prunable group"), "{:?}", s.notes);
}

#[test]
fn fpgm_ranks_the_filter_at_the_median_lowest() {
    // Four corners ±e1, ±e2 and their mean, the origin.
    let f = vec![
        vec![1.0, 0.0],
        vec![-1.0, 0.0],
        vec![0.0, 1.0],
        vec![0.0, -1.0],
        vec![0.0, 0.0],
    ];
    let a = one_layer(&f, None);
    let raw = a.run("fpgm", Normalize::None);
    let corner = 1.0 + 2.0 + 2.0 * 2f64.sqrt();
    assert_close(
        &a.of(&raw, "a"),
        &[corner, corner, corner, corner, 4.0],
        "distance sums",
    );
    let n = a.run("fpgm", Normalize::Max);
    assert_close(
        &a.of(&n, "a"),
        &[1.0, 1.0, 1.0, 1.0, 4.0 / corner],
        "normalised",
    );
}

#[test]
fn fpgm_matches_brute_force_distances_on_a_real_model() {
    let path = shared_dir().join("models/pretrained/resnet20_cifar10.bn.onnx");
    let a = Analysed::new(Model::load(&path).unwrap());
    let s = a.run("fpgm", Normalize::None);
    let filters = Filters::new(&a.model, &a.groups);
    let mut checked = 0;
    for grp in a.groups.groups.iter().filter(|g| g.prunable()) {
        let x = filters.matrix(&grp.classes);
        let n = grp.classes.len();
        let want: Vec<f64> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        x.row(i)
                            .iter()
                            .zip(x.row(j))
                            .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
                            .sum::<f64>()
                            .sqrt()
                    })
                    .sum()
            })
            .collect();
        let got: Vec<f64> = grp.classes.iter().map(|&c| s.values[c]).collect();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * w, "group {}: {g} vs {w}", grp.id);
        }
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} prunable groups");
}

#[test]
fn lamp_follows_its_formula_and_is_not_rescaled() {
    // Squared norms 1, 4, 9, 16 → 1/30, 4/29, 9/25, 16/16.
    let f: Vec<Vec<f32>> = (1..=4).map(|k| vec![k as f32, 0.0]).collect();
    let a = one_layer(&f, None);
    let want = [1.0 / 30.0, 4.0 / 29.0, 9.0 / 25.0, 1.0];
    assert_close(
        &a.of(&a.run("lamp", Normalize::Max), "a"),
        &want,
        "lamp (max)",
    );
    assert_close(
        &a.of(&a.run("lamp", Normalize::None), "a"),
        &want,
        "lamp (raw)",
    );
    // Ties share their denominator: 1, 2, 2 → 1/5, 2/4, 2/4.
    let f = vec![
        vec![1.0, 0.0],
        vec![0.0, 2f32.sqrt()],
        vec![-(2f32.sqrt()), 0.0],
    ];
    let a = one_layer(&f, None);
    assert_close(
        &a.of(&a.run("lamp", Normalize::None), "a"),
        &[0.2, 0.5, 0.5],
        "ties",
    );
}

#[test]
fn random_is_seeded_and_portable() {
    // Reference outputs of splitmix64.
    assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    let mut r = SplitMix64::new(1_234_567);
    let first: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
    assert_eq!(
        first,
        [
            6457827717110365317,
            3203168211198807973,
            9817491932198370423
        ]
    );

    let a = one_layer(&norm_filters(), None);
    let kind = CriterionKind::Random;
    let run = |seed| {
        score(&kind, &a.cx(Reduce::Sum, seed, None), Normalize::None)
            .unwrap()
            .values
    };
    let (x, y, z) = (run(7), run(7), run(8));
    assert_eq!(x, y, "same seed, same scores");
    assert_ne!(x, z, "another seed, other scores");
    assert!(x.iter().all(|v| (0.0..1.0).contains(v)), "{x:?}");
    let mut first = SplitMix64::new(7);
    assert_eq!(x[0], first.next_f64());
}

#[test]
fn activation_criteria_read_statistics_or_ask_for_data() {
    let a = one_layer(&norm_filters(), None);
    let n = a.groups.class_atoms.len();
    for kind in ["activation", "apoz", "multi:l1=1,apoz=0"] {
        let k = CriterionKind::parse(kind).unwrap();
        let err = score(&k, &a.cx(Reduce::Sum, 0, None), Normalize::Max).unwrap_err();
        assert!(
            matches!(&err, Error::Usage(m) if m.contains("needs calibration data: pass --data")),
            "{kind}: {err}"
        );
    }
    let stats = ActivationStats {
        mean_abs: (0..n).map(|i| i as f64 + 1.0).collect(),
        zero_fraction: (0..n)
            .map(|i| if i % 2 == 0 { 0.75 } else { 0.25 })
            .collect(),
        samples: 4,
    };
    let cx = a.cx(Reduce::Sum, 0, Some(&stats));
    let act = score(&CriterionKind::Activation, &cx, Normalize::None).unwrap();
    assert_eq!(act.values, stats.mean_abs);
    let apoz = score(&CriterionKind::Apoz, &cx, Normalize::None).unwrap();
    let want: Vec<f64> = stats.zero_fraction.iter().map(|z| 1.0 - z).collect();
    assert_eq!(apoz.values, want);
    let grp = a.group("a");
    let last = grp.classes[grp.classes.len() - 1];
    let act = score(&CriterionKind::Activation, &cx, Normalize::Max).unwrap();
    assert_eq!(act.values[last], 1.0, "largest of its group");

    let short = ActivationStats {
        mean_abs: vec![1.0; n - 1],
        zero_fraction: vec![0.0; n - 1],
        samples: 1,
    };
    let err = score(
        &CriterionKind::Activation,
        &a.cx(Reduce::Sum, 0, Some(&short)),
        Normalize::Max,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Usage(_)), "{err}");
}

#[test]
fn taylor_says_it_needs_the_training_compiler() {
    let a = one_layer(&norm_filters(), None);
    let err = score(
        &CriterionKind::Taylor,
        &a.cx(Reduce::Sum, 0, None),
        Normalize::Max,
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Usage(m) if m.contains("training compiler") && m.contains("use activation or l1")),
        "{err}"
    );
}

/// `k` clusters of `per` filters in R^8 around well separated centres.
fn clustered(k: usize, per: usize) -> Vec<Vec<f32>> {
    let mut rng = SplitMix64::new(11);
    let mut out = Vec::new();
    for c in 0..k {
        for _ in 0..per {
            let f: Vec<f32> = (0..8)
                .map(|d| {
                    let centre = if d == c { 10.0 } else { 0.0 };
                    centre + 0.2 * (rng.next_f64() as f32 - 0.5)
                })
                .collect();
            out.push(f);
        }
    }
    out
}

#[test]
fn epruner_keeps_one_exemplar_per_cluster() {
    for (k, per) in [(3, 5), (4, 3), (2, 8)] {
        let a = one_layer(&clustered(k, per), None);
        let s = a.run("epruner", Normalize::None);
        let keep = s.keep.as_ref().expect("epruner gives a keep mask");
        let classes = &a.group("a").classes;
        let kept: Vec<usize> = (0..classes.len()).filter(|&i| keep[classes[i]]).collect();
        assert_eq!(kept.len(), k, "{k}×{per}: kept {kept:?}");
        let clusters: Vec<usize> = kept.iter().map(|i| i / per).collect();
        let want: Vec<usize> = (0..k).collect();
        assert_eq!(clusters, want, "{k}×{per}: one exemplar per cluster");
        let v = a.of(&s, "a");
        let low = kept.iter().map(|&i| v[i]).fold(f64::INFINITY, f64::min);
        let high = (0..v.len())
            .filter(|i| !kept.contains(i))
            .map(|i| v[i])
            .fold(0f64, f64::max);
        assert!(low >= 1.0 && high <= 0.5, "{k}×{per}: {v:?}");
        // Deterministic.
        assert_eq!(a.run("epruner", Normalize::None).values, s.values);
    }
}

#[test]
fn multi_is_the_weighted_sum_of_normalised_parts() {
    let a = one_layer(&norm_filters(), Some(&[0.1, -2.0, 0.5, 1.0]));
    let l1 = a.run("l1", Normalize::Max).values;
    let bn = a.run("bn-scale", Normalize::Max).values;
    let m = a.run("multi:l1=0.25,bn-scale=0.75", Normalize::None);
    let want: Vec<f64> = l1
        .iter()
        .zip(&bn)
        .map(|(x, y)| 0.25 * x + 0.75 * y)
        .collect();
    assert_close(&m.values, &want, "raw multi");
    let mut wn = want.clone();
    normalize(&a.groups, &mut wn, Normalize::Max);
    assert_close(
        &a.run("multi:l1=0.25,bn-scale=0.75", Normalize::Max).values,
        &wn,
        "normalised multi",
    );
    // Group "a": l1 [0.5, 0.375, 0.125, 1], |gamma| [0.05, 1, 0.25, 0.5].
    assert_close(
        &a.of(&m, "a"),
        &[0.1625, 0.84375, 0.21875, 0.625],
        "by hand",
    );
}

/// Every data-free criterion, as parsed.
const DATA_FREE: [&str; 8] = [
    "l1",
    "l2",
    "bn-scale",
    "fpgm",
    "lamp",
    "random",
    "epruner",
    "multi:l1=0.5,fpgm=0.5",
];

/// Whether this is an unoptimised build (see the file comment).
const SLOW_BUILD: bool = cfg!(debug_assertions);

/// Checks the data-free criteria `kinds` on `a` and returns the seconds each took.
fn check_all(name: &str, a: &Analysed, kinds: &[&'static str]) -> Vec<(&'static str, f64)> {
    let n = a.groups.class_atoms.len();
    let mut times = Vec::new();
    for &kind in kinds {
        let k = CriterionKind::parse(kind).unwrap();
        let t = Instant::now();
        let s = score(&k, &a.cx(Reduce::Sum, 1, None), Normalize::Max)
            .unwrap_or_else(|e| panic!("{name}: {kind}: {e}"));
        times.push((kind, t.elapsed().as_secs_f64()));
        assert_eq!(s.values.len(), n, "{name}: {kind}: one score per class");
        assert!(
            s.values.iter().all(|v| v.is_finite()),
            "{name}: {kind}: non-finite score"
        );
        for grp in a.groups.groups.iter().filter(|g| g.prunable()) {
            for &c in &grp.classes {
                let v = s.values[c];
                assert!(
                    (0.0..=1.0).contains(&v),
                    "{name}: {kind}: group {} class {c} scores {v}",
                    grp.id
                );
            }
        }
        if let Some(keep) = &s.keep {
            assert_eq!(keep.len(), n, "{name}: {kind}: keep mask length");
            for grp in a.groups.groups.iter().filter(|g| g.prunable()) {
                assert!(
                    grp.classes.iter().any(|&c| keep[c]),
                    "{name}: {kind}: group {} keeps nothing",
                    grp.id
                );
            }
        }
        for note in &s.notes {
            eprintln!("{name}: {kind}: {note}");
        }
    }
    times
}

fn print_times(name: &str, a: &Analysed, times: &[(&str, f64)]) {
    let biggest = a
        .groups
        .groups
        .iter()
        .filter(|g| g.prunable())
        .map(|g| g.channels)
        .max()
        .unwrap_or(0);
    let line: Vec<String> = times
        .iter()
        .map(|(k, t)| format!("{k} {:.3}s", t))
        .collect();
    eprintln!(
        "{name} ({} classes, largest prunable group {biggest}): {}",
        a.groups.class_atoms.len(),
        line.join(", ")
    );
}

#[test]
fn every_data_free_criterion_scores_every_shared_model() {
    let mut biggest: Option<(u64, String)> = None;
    for path in all_models() {
        let name = short(&path);
        let a = Analysed::new(Model::load(&path).unwrap());
        let kinds: Vec<&str> = DATA_FREE
            .into_iter()
            .filter(|k| !(SLOW_BUILD && *k == "epruner" && a.groups.class_atoms.len() > 3000))
            .collect();
        let times = check_all(&name, &a, &kinds);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if biggest.as_ref().is_none_or(|b| size > b.0) {
            biggest = Some((size, name.clone()));
        }
        print_times(&name, &a, &times);
    }
    let (size, name) = biggest.unwrap();
    eprintln!("biggest file: {name} ({size} bytes)");
}

#[test]
fn every_data_free_criterion_scores_resnet50() {
    let a = Analysed::new(resnet50::resnet50(1));
    let quadratic = ["fpgm", "epruner", "multi:l1=0.5,fpgm=0.5"];
    let kinds: Vec<&str> = DATA_FREE
        .into_iter()
        .filter(|k| !(SLOW_BUILD && quadratic.contains(k)))
        .collect();
    let times = check_all("resnet50", &a, &kinds);
    print_times("resnet50", &a, &times);
}
