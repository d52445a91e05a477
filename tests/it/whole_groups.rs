//! Grouped convolutions lose whole groups. On regnet_x_400mf (16 channels a group) a FLOPs
//! target rounded to blocks of 16 keeps every kept group 16 channels wide and lowers the
//! `group` attribute instead, thins the grouped layers about as much as the plain ones (the
//! bundles' scores are spread like plain channels', so the residual streams are not thinned
//! first), lands within ±1% and passes the equivalence oracle; `lopper groups` shows such a
//! group as its groups times their width.

use std::collections::BTreeMap;

use crate::common;

use common::*;
use lopper::analysis::importance::CriterionKind;
use lopper::ir::Model;
use lopper::plan::allocate::{Amount, Budget};
use lopper::prune::{model_costs, prune, PruneOptions, Scored, Selection};
use lopper::runtime::BackendKind;

/// Every grouped, non-depthwise Conv by name: `(group, output channels, channels a group)`.
fn grouped(m: &Model) -> BTreeMap<String, (i64, usize, usize)> {
    let g = &m.graph;
    g.node_ids()
        .map(|n| g.node(n))
        .filter(|n| n.op_type == "Conv" && n.attr_i("group").unwrap_or(1) > 1)
        .filter_map(|n| {
            let w = g.init(n.input(1)?)?.shape();
            let group = n.attr_i("group").unwrap_or(1);
            (group as usize != w[0]).then(|| (n.name.clone(), (group, w[0], w[1])))
        })
        .collect()
}

#[test]
fn regnet_loses_whole_convolution_groups() {
    let path = shared_dir().join("models/zoo/regnet_x_400mf.bn.onnx");
    let original = Model::load(&path).unwrap();
    let mut model = original.clone();
    let mut s = Scored::new(CriterionKind::L1, Amount::Target(Budget::Flops(0.5)));
    s.allocate.constraints.round_to = 16;
    s.allocate.constraints.round_from = 16;
    let mut verify_with = vec![BackendKind::Tract];
    if require_ort() {
        verify_with.push(BackendKind::Ort);
    }
    let opts = PruneOptions {
        selection: Selection::Scored(s),
        verify_with,
        tolerance: 1e-4,
    };
    let report = prune(&mut model, &opts).unwrap();
    for s in &report.steps {
        let o = s.oracle.as_ref().expect("verified");
        assert!(o.max_rel_error <= 1e-4, "{:?}", o.errors);
    }
    let kept = model_costs(&model).unwrap().macs as f64 / report.macs.0 as f64;
    assert!((kept - 0.5).abs() <= 0.01, "MACs kept {kept}");

    let (before, after) = (grouped(&original), grouped(&model));
    assert_eq!(before.len(), 22, "{before:?}");
    let (mut groups_before, mut groups_after) = (0, 0);
    for (name, (group, m, per)) in &after {
        let (g0, m0, per0) = before[name];
        assert_eq!((*per, per0), (16, 16), "{name}: channels a group");
        assert_eq!(
            *m as i64,
            group * 16,
            "{name}: {m} channels in {group} groups"
        );
        assert!(*group <= g0 && *m <= m0, "{name}");
        groups_before += g0;
        groups_after += group;
    }
    // The grouped layers lose about as much as the model (65% of their groups kept), not
    // almost nothing, which is what ranking the bundles by their summed norms gave (95%: the
    // residual streams went first).
    let kept_groups = groups_after as f64 / groups_before as f64;
    assert!(
        (0.25..=0.85).contains(&kept_groups),
        "grouped layers keep {groups_after} of {groups_before} groups"
    );
}

/// `lopper groups` shows a group of whole convolution groups as its groups times their width.
#[test]
fn groups_lists_whole_convolution_groups_with_their_width() {
    let path = shared_dir().join("models/zoo/regnet_x_400mf.bn.onnx");
    let (code, out, err) = run_lopper(&["groups", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // Block 1's inner channels: 32 in 2 convolution groups of 16; the stem's: 32 plain.
    let line = |needle: &str| {
        out.lines()
            .find(|l| l.starts_with("group") && l.contains(needle))
            .unwrap_or_else(|| panic!("no group line with '{needle}':\n{out}"))
            .to_string()
    };
    assert!(line("block1-0/f/a/a.0").contains(" 2 × 16 ch"), "{out}");
    assert!(line("/stem/stem.0/Conv").contains(" 32 ch"), "{out}");
}
