//! Latency tables (issue 14): built once per layer configuration and model, then reused from
//! the file (nothing timed again, the same predictions); files that are not tables for this
//! runtime are refused with the file named. No timing is asserted: only what was timed, what
//! was stored, and what the stored table predicts.

use crate::common;

use std::path::Path;

use common::*;
use lopper::analysis::{costs, infer_shapes, MaskedCost};
use lopper::ir::Model;
use lopper::pipeline::latency_table::{timed_layers, LatencyTable};
use lopper::pipeline::{LatencyEvaluator, LatencySearch};
use lopper::prune::analyse;
use lopper::runtime::{BackendKind, RuntimeOptions};

#[test]
fn a_table_is_built_once_then_read_back_and_predicts_the_same() {
    let mut model = Model::load(shared_dir().join("models/zoo/cifar_resnet20.bn.onnx")).unwrap();
    let groups = analyse(&mut model).unwrap();
    let shapes = infer_shapes(&model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.json");
    let evaluator = || {
        LatencyEvaluator::new(BackendKind::Tract, RuntimeOptions::default())
            .unwrap()
            .with_search(LatencySearch::Table, Some(path.clone()))
            .unwrap()
    };
    let mut said = Vec::new();
    let lm = evaluator()
        .latency_model(&model, &groups, &shapes, &mut |m: &str| {
            said.push(m.to_string())
        })
        .unwrap()
        .expect("ResNet-20 has timed layers");
    let layers = timed_layers(&model, &shapes, 1);
    let mut keys: Vec<&str> = layers.iter().map(|l| l.key.as_str()).collect();
    keys.sort();
    keys.dedup();
    // ResNet-20's 19 convolutions (and its shortcut convolutions) share configurations.
    assert!(
        keys.len() < layers.len(),
        "{} keys, {} layers",
        keys.len(),
        layers.len()
    );
    // Each configuration is prepared once, and all are timed in one interleaved bench.
    let prepared = said
        .iter()
        .filter(|s| s.starts_with("preparing layer"))
        .count();
    assert_eq!(prepared, keys.len(), "{said:?}");
    let together = format!("timing {} layer configurations, interleaved", keys.len());
    assert!(said.contains(&together), "{said:?}");
    assert!(said.iter().any(|s| s.contains("calibrating")), "{said:?}");

    let text = std::fs::read(&path).unwrap();
    let table: LatencyTable = serde_json::from_slice(&text).unwrap();
    assert_eq!(table.layers.len(), keys.len());
    assert_eq!(table.models.len(), 1);
    let cal = table.models.values().next().unwrap();
    assert_eq!(
        cal.points.len(),
        3,
        "the model and two uniformly pruned copies"
    );
    assert!(table.layers.values().all(|s| s.is_valid()));

    // A second run reads the file: nothing is timed, the predictions are the same.
    let mut said2 = Vec::new();
    let lm2 = evaluator()
        .latency_model(&model, &groups, &shapes, &mut |m: &str| {
            said2.push(m.to_string())
        })
        .unwrap()
        .unwrap();
    assert!(said2.is_empty(), "timed again: {said2:?}");
    let cost = MaskedCost::new(&model, &groups, &shapes).unwrap();
    let n = cost.classes();
    // Removing every other class of every prunable group, then the first half of them.
    for pick in [2usize, 3] {
        let mut removed = vec![false; n];
        for g in groups.groups.iter().filter(|g| g.prunable()) {
            for (i, &c) in g.classes.iter().enumerate() {
                removed[c] = i % pick == 0;
            }
        }
        let (r1, r2) = (lm.ratio(&cost, &removed), lm2.ratio(&cost, &removed));
        assert_eq!(r1, r2);
        assert!(r1 > 0.0 && r1 < 1.0, "removing channels predicts {r1}");
    }
    assert_eq!(lm.ratio(&cost, &[]), 1.0);
}

#[test]
fn files_that_are_not_tables_for_this_runtime_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_dir().join("models/pretrained/resnet20_cifar10.bn.onnx");
    let out = dir.path().join("o.onnx");
    let bad = dir.path().join("table.json");
    let other = dir.path().join("other.json");
    std::fs::write(&bad, b"[1, 2, 3]").unwrap();
    LatencyTable::new("ort cuda threads=8 batch=1")
        .save(&other)
        .unwrap();
    for (file, says) in [
        (&bad, "not a lopper latency table"),
        (&other, "not for 'tract cpu"),
    ] {
        let (code, _, err) = prune_model_to_latency(&model, &out, file, &[]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("table.json") || err.contains("other.json"),
            "{err}"
        );
        assert!(err.contains(says), "{err}");
        assert!(!out.exists());
    }
}

/// The user's command: a latency target on tract with a table file. The run succeeds, says
/// what the table predicted and what was measured, writes a verified model and the table.
/// `lopper prune` of the pretrained ResNet-20 to `--target latency=0.8` on tract with the
/// latency table `table`, writing `out`, with `extra` flags: (exit code, stdout, stderr).
fn prune_to_latency(out: &Path, table: &Path, extra: &[&str]) -> (i32, String, String) {
    let model = shared_dir().join("models/pretrained/resnet20_cifar10.bn.onnx");
    prune_model_to_latency(&model, out, table, extra)
}

/// [`prune_to_latency`] of `model`.
fn prune_model_to_latency(
    model: &Path,
    out: &Path,
    table: &Path,
    extra: &[&str],
) -> (i32, String, String) {
    let mut args = vec![
        "prune",
        model.to_str().unwrap(),
        "--target",
        "latency=0.8",
        "--backend",
        "tract",
        "--latency-table",
        table.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    run_lopper(&args)
}

/// [`prune_to_latency`] again with `table` (which holds `t`, written by the run that wrote
/// `out`) and `extra`: asserts that it succeeds, writes the same bytes and leaves the table as
/// it was; returns its stdout and stderr.
fn prune_again_with_the_same_table(
    out: &Path,
    table: &Path,
    t: &LatencyTable,
    extra: &[&str],
) -> String {
    let pinned = out.with_extension("pinned.onnx");
    let (code, stdout, err) = prune_to_latency(&pinned, table, extra);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(out).unwrap(),
        std::fs::read(&pinned).unwrap(),
        "the same table gave another model"
    );
    let t2: LatencyTable = serde_json::from_slice(&std::fs::read(table).unwrap()).unwrap();
    assert_eq!(&t2, t, "a pinned table is used as it is");
    format!("{stdout}{err}")
}

#[test]
fn a_latency_batch_times_batches_and_keys_its_table_by_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.onnx");
    let table = dir.path().join("t.json");
    let (code, _, err) = prune_to_latency(&out, &table, &["--latency-batch", "4"]);
    assert_eq!(code, 0, "{err}");
    let t: LatencyTable = serde_json::from_slice(&std::fs::read(&table).unwrap()).unwrap();
    assert!(t.runtime.ends_with("batch=4"), "{}", t.runtime);
    // Above batch 1 the default search is the curve: no layer timed alone.
    assert!(t.layers.is_empty() && t.curves.len() == 1, "{t:?}");
    // The batch-4 table is not taken for batch 1.
    let (code, _, err) = prune_to_latency(&out, &table, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("batch=4"), "{err}");
}

#[test]
fn prune_to_a_latency_target_with_a_table_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_dir().join("models/pretrained/resnet20_cifar10.bn.onnx");
    let out = dir.path().join("o.onnx");
    let table = dir.path().join("t.json");
    let (code, stdout, err) = prune_to_latency(&out, &table, &[]);
    assert_eq!(code, 0, "{err}");
    let all = format!("{stdout}{err}");
    assert!(all.contains("predicted by the latency table"), "{all}");
    assert!(all.contains("measured"), "{all}");
    let t: LatencyTable = serde_json::from_slice(&std::fs::read(&table).unwrap()).unwrap();
    assert_eq!(t.runtime, "tract cpu threads=default batch=1");
    // Without --drop-blocks the target is searched with two drop shares: one calibration
    // per model without branches (one when both shares drop the same branches).
    assert!(
        all.contains("searched with branches worth each share"),
        "{all}"
    );
    assert!(!t.layers.is_empty() && (1..=2).contains(&t.models.len()) && t.curves.is_empty());
    // Branches were dropped first: the model calibrated is not the original, and its
    // latency relative to the original was timed with it.
    assert!(all.contains("dropped"), "{all}");
    let cal = t.models.values().next().unwrap();
    let rel = cal.relative.expect("timed against the original");
    assert!(rel.is_finite() && rel > 0.0, "{rel}");
    // The same file again: the same bytes, the file unchanged, and no candidate timed by the
    // searches (their choice is the pinned table's prediction); the written model alone is
    // timed, and reported beside the prediction.
    let again = prune_again_with_the_same_table(&out, &table, &t, &[]);
    assert!(!again.contains("predicted by the latency table"), "{again}");
    let timed: Vec<&str> = again
        .lines()
        .filter(|l| l.contains("predicted by the pinned latency table") && l.contains("measured"))
        .collect();
    assert_eq!(timed.len(), 1, "{again}");
    // A share given is searched alone.
    let (code, stdout, err) = prune_to_latency(&out, &table, &["--drop-blocks", "0.5"]);
    assert_eq!(code, 0, "{err}");
    assert!(!format!("{stdout}{err}").contains("each share"), "{err}");
    let macs = |m: &Model| costs(m, &infer_shapes(m).unwrap()).unwrap().macs;
    let (before, after) = (
        macs(&Model::load(&model).unwrap()),
        macs(&Model::load(&out).unwrap()),
    );
    assert!(after < before, "MACs {before} -> {after}");
}

/// A model without a removable branch (VGG) is searched once: every drop share would be the
/// same search, and running it again only spends whole-model timings.
#[test]
fn a_model_without_branches_is_searched_with_one_share() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_dir().join("models/zoo/cifar_vgg16_half.bn.onnx");
    let (out, table) = (dir.path().join("o.onnx"), dir.path().join("t.json"));
    let (code, stdout, err) = prune_model_to_latency(&model, &out, &table, &[]);
    assert_eq!(code, 0, "{err}");
    let all = format!("{stdout}{err}");
    assert!(all.contains("dropped 0 of 0 removable branch"), "{all}");
    let note = all
        .lines()
        .find(|l| l.contains("searched with branches worth each share"))
        .unwrap_or_else(|| panic!("no share note: {all}"));
    assert!(
        note.contains("(0.75: MACs") && !note.contains(", 1: MACs"),
        "{note}"
    );
    assert!(out.exists());
}

/// `prune --measure` times the written model against the original and says so beside its
/// MACs ratio.
#[test]
fn prune_measure_reports_the_latency_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_dir().join("models/pretrained/resnet20_cifar10.bn.onnx");
    let out = dir.path().join("o.onnx");
    let (code, stdout, err) = run_lopper(&[
        "prune",
        model.to_str().unwrap(),
        "--ratio",
        "0.5",
        "--measure",
        "--backend",
        "tract",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("latency: x"))
        .unwrap_or_else(|| panic!("no latency line: {stdout}"));
    assert!(
        line.contains("of the MACs") && line.contains("tract"),
        "{line}"
    );
}

/// `--latency-search curve`: branches dropped, channels removed in the FLOPs target's order,
/// the choice's latency learned from whole-model timings kept in the table file (no layer
/// timed alone); the same file gives the same bytes, and the written model has its
/// subsampling shortcuts lowered, as it was timed.
#[test]
fn the_curve_search_learns_from_timings_and_a_pinned_table_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.onnx");
    let table = dir.path().join("t.json");
    let curve = ["--latency-search", "curve"];
    let (code, stdout, err) = prune_to_latency(&out, &table, &curve);
    assert_eq!(code, 0, "{err}");
    let all = format!("{stdout}{err}");
    assert!(all.contains("dropped"), "{all}");
    assert!(all.contains("measured"), "{all}");
    assert!(all.contains("1x1 strided convolutions"), "{all}");
    let t: LatencyTable = serde_json::from_slice(&std::fs::read(&table).unwrap()).unwrap();
    assert!(t.layers.is_empty() && t.models.is_empty(), "no layer timed");
    assert_eq!(t.curves.len(), 1, "one model's curve");
    let points = t.curves.values().next().unwrap();
    assert!(
        points
            .iter()
            .all(|&(m, l)| m > 0.0 && m < 1.0 && l > 0.0 && l.is_finite()),
        "{points:?}"
    );
    let again = prune_again_with_the_same_table(&out, &table, &t, &curve);
    assert!(
        again.contains("predicted by the pinned latency table"),
        "{again}"
    );
    let count = |m: &Model, op: &str| {
        m.graph
            .node_ids()
            .filter(|n| m.graph.node(*n).op_type == op)
            .count()
    };
    let written = Model::load(&out).unwrap();
    assert_eq!(count(&written, "Pad"), 0, "shortcuts lowered");
}
