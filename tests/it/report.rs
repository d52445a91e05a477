//! Before/after reports on resnet20 pruned at ratio 0.3: layer rows match the weight shapes and
//! the channel groups' removals, totals match `costs()`, the table, the JSON report embedding a
//! `PruneReport`, and the SVG chart (one bar per layer, deterministic).

use crate::common;

use std::collections::HashMap;

use common::shared_dir;
use lopper::analysis::importance::l1_scores;
use lopper::analysis::{costs, infer_shapes};
use lopper::ir::Model;
use lopper::passes::remove_channels;
use lopper::plan::plan_ratio;
use lopper::prune::{analyse, prune, PruneOptions, Selection};
use lopper::report::plot::{render_widths_svg, KEPT_COLOR, ORIGINAL_COLOR};
use lopper::report::{layer_report, plot_widths, render_table, LayerReport, Report};

const RESNET20: &str = "models/pretrained/resnet20_cifar10.bn.onnx";

/// The analysed original, the pruned model, and how many of its channels each source node lost.
fn pruned_resnet20() -> (Model, Model, HashMap<String, usize>) {
    let mut model = Model::load(shared_dir().join(RESNET20)).unwrap();
    let groups = analyse(&mut model).unwrap();
    let classes = plan_ratio(&groups, &l1_scores(&model, &groups), 0.3).unwrap();
    let mut removed_by_source = HashMap::new();
    for g in &groups.groups {
        for s in &g.sources {
            let n = s
                .atoms
                .iter()
                .filter(|&&a| classes.contains(&groups.class_of[a]))
                .count();
            removed_by_source.insert(s.node_name.clone(), n);
        }
    }
    let original = model.clone();
    let shapes = infer_shapes(&model).unwrap();
    remove_channels(&mut model, &groups, &shapes, &classes).unwrap();
    (original, model, removed_by_source)
}

fn weight_shape(m: &Model, node: &str) -> Vec<usize> {
    let g = &m.graph;
    let n = g.node_ids().find(|&n| g.node(n).name == node).unwrap();
    let w = g.node(n).input(1).unwrap();
    g.init(w).unwrap().shape().to_vec()
}

#[test]
fn layer_rows_match_weights_groups_and_costs() {
    let (before, after, removed) = pruned_resnet20();
    let rep = layer_report(&before, &after).unwrap();
    let rows = &rep.layers;
    // Every Conv and Gemm (this export has no MatMul or ConvTranspose).
    let weight_nodes = before
        .graph
        .node_ids()
        .filter(|&n| matches!(before.graph.node(n).op_type.as_str(), "Conv" | "Gemm"))
        .count();
    assert_eq!(rows.len(), weight_nodes);
    assert!(rows.len() >= 20, "{}", rows.len());
    // In topological order of the original.
    let order: Vec<String> = before
        .graph
        .topo_order()
        .unwrap()
        .into_iter()
        .map(|n| before.graph.node(n).name.clone())
        .filter(|n| rows.iter().any(|r| &r.name == n))
        .collect();
    assert_eq!(
        order,
        rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>()
    );

    for r in rows {
        let (wb, wa) = (
            weight_shape(&before, &r.name),
            weight_shape(&after, &r.name),
        );
        match r.op.as_str() {
            "Conv" => {
                assert_eq!(r.out_channels, (wb[0], wa[0]), "{}", r.name);
                assert_eq!(r.in_channels, (wb[1], wa[1]), "{}", r.name);
            }
            "Gemm" => {
                // torch export: transB = 1, weight [out, in].
                assert_eq!(r.out_channels, (wb[0], wa[0]), "{}", r.name);
                assert_eq!(r.in_channels, (wb[1], wa[1]), "{}", r.name);
            }
            op => panic!("unexpected op {op}"),
        }
        // Every producer loses exactly its channels whose classes were removed.
        if let Some(&n) = removed.get(&r.name) {
            assert_eq!(r.out_channels.0 - r.out_channels.1, n, "{}", r.name);
        }
        assert!(r.macs.1 <= r.macs.0 && r.params.1 <= r.params.0, "{r:?}");
    }
    assert!(rows.iter().any(|r| r.out_channels.1 < r.out_channels.0));
    // The stem's input (RGB) is never pruned.
    assert_eq!(rows[0].in_channels, (3, 3));

    let cb = costs(&before, &infer_shapes(&before).unwrap()).unwrap();
    let ca = costs(&after, &infer_shapes(&after).unwrap()).unwrap();
    assert_eq!(rep.totals.macs, (cb.macs, ca.macs));
    assert_eq!(rep.totals.flops, (cb.flops, ca.flops));
    assert_eq!(rep.totals.params, (cb.params, ca.params));
    assert!(ca.macs < cb.macs);
    // All MACs of resnet20 are in its Conv and Gemm layers.
    assert_eq!(rows.iter().map(|r| r.macs.0).sum::<u64>(), cb.macs);
    assert_eq!(rows.iter().map(|r| r.macs.1).sum::<u64>(), ca.macs);
    assert_eq!(rep.totals.layers, rows.len());
    assert_eq!(
        rep.totals.changed_layers,
        rows.iter().filter(|r| r.changed()).count()
    );

    // Identical models: nothing changed.
    let same = layer_report(&before, &before).unwrap();
    assert_eq!(same.totals.changed_layers, 0);
    assert!(same
        .layers
        .iter()
        .all(|r| r.out_channels.0 == r.out_channels.1));
}

#[test]
fn table_lists_layers_and_totals() {
    let (before, after, _) = pruned_resnet20();
    let rep = layer_report(&before, &after).unwrap();
    let all = render_table(&rep.layers, &rep.totals, false);
    // header, rule, rows, rule, total, note
    assert_eq!(all.lines().count(), rep.layers.len() + 5, "{all}");
    for r in &rep.layers {
        let line = all
            .lines()
            .find(|l| l.contains(&format!(" {} ", r.name)))
            .unwrap_or_else(|| panic!("{} missing:\n{all}", r.name));
        assert!(
            line.contains(&format!("{} -> {}", r.out_channels.0, r.out_channels.1)),
            "{line}"
        );
    }
    let total = all.lines().rev().nth(1).unwrap();
    assert!(total.contains("total (whole model)"), "{total}");
    assert!(
        total.contains(&lopper::report::table::si(rep.totals.macs.0)),
        "{total}"
    );
    let changed = render_table(&rep.layers, &rep.totals, true);
    assert_eq!(
        changed.lines().count(),
        rep.totals.changed_layers + 5,
        "{changed}"
    );
    let unchanged = rep.layers.len() - rep.totals.changed_layers;
    if unchanged > 0 {
        assert!(changed.contains(&format!("({unchanged} unchanged not shown)")));
    }
}

#[test]
fn json_report_embeds_the_prune_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::load(shared_dir().join(RESNET20)).unwrap();
    let mut original = model.clone();
    analyse(&mut original).unwrap();
    let run = prune(
        &mut model,
        &PruneOptions {
            selection: Selection::Ratio(0.3),
            verify_with: vec![],
            tolerance: 1e-4,
        },
    )
    .unwrap();
    let layers = layer_report(&original, &model).unwrap();
    assert_eq!(layers.totals.macs, run.macs);
    assert_eq!(layers.totals.params, run.params);
    let path = dir.path().join("report.json");
    Report::new(run.clone(), layers.clone())
        .save(&path)
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["removed"], run.removed);
    assert_eq!(
        v["per_group"].as_array().unwrap().len(),
        run.per_group.len()
    );
    let back: LayerReport = serde_json::from_value(v).unwrap();
    assert_eq!(back, layers);
}

#[test]
fn width_chart_has_one_bar_per_layer_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (before, after, _) = pruned_resnet20();
    let rep = layer_report(&before, &after).unwrap();
    let path = dir.path().join("widths.svg");
    plot_widths(&rep.layers, &rep.totals, "resnet20", &path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.trim_start().starts_with("<svg"), "{}", &svg[..100]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("resnet20: output channels per layer"));
    assert!(svg.contains("<text"));
    let bars = |c: plotters::style::RGBColor| {
        let fill = format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
        svg.lines()
            .filter(|l| l.contains("<rect") && l.contains(&fill))
            .count()
    };
    // One bar per layer, plus the legend's swatch.
    assert_eq!(bars(KEPT_COLOR), rep.layers.len() + 1, "{svg}");
    assert_eq!(bars(ORIGINAL_COLOR), rep.layers.len() + 1, "{svg}");
    let again = render_widths_svg(&rep.layers, &rep.totals, "resnet20").unwrap();
    assert_eq!(again, svg, "same input, same SVG");
    // No leftovers from the atomic write.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn matmul_with_a_constant_weight_is_a_layer() {
    // mnist-8: Conv 1->8, Conv 8->16, then MatMul with a [256, 10] weight (a Reshape of an
    // initializer, folded by the simplification in `analyse`).
    let mut model = Model::load(shared_dir().join("models/pretrained/mnist-8.onnx")).unwrap();
    analyse(&mut model).unwrap();
    let rep = layer_report(&model, &model).unwrap();
    let shape: Vec<_> = rep
        .layers
        .iter()
        .map(|r| (r.op.as_str(), r.out_channels, r.in_channels))
        .collect();
    assert_eq!(
        shape,
        [
            ("Conv", (8, 8), (1, 1)),
            ("Conv", (16, 16), (8, 8)),
            ("MatMul", (10, 10), (256, 256)),
        ]
    );
    let matmul = &rep.layers[2];
    assert_eq!(matmul.macs, (2560, 2560));
    assert_eq!(matmul.params, (2560, 2560));
}
