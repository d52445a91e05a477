//! Golden IR dumps (with inferred shapes) of three small graphs from `fixtures/graphs.rs`
//! before and after removing specific channels: residual block with BatchNormalization,
//! concat of two branches, Flatten → Gemm head. Compared with `fixtures/golden/prune.*.txt`;
//! regenerate after an intended change with `UPDATE_GOLDEN=1` (and read the diff).

use crate::common;
use crate::graphs;

use graphs::{chain, Block, Head};
use lopper::analysis::channels::ChannelGroups;
use lopper::analysis::infer_shapes;
use lopper::ir::{display::dump, Model};
use lopper::prune::{analyse, prune, PruneOptions, Selection};
use lopper::runtime::BackendKind;

fn dump_of(m: &Model) -> String {
    let shapes = infer_shapes(m).expect("shapes");
    dump(&m.graph, Some(shapes.as_slice()))
}

/// Classes at positions `at` (in source order) of the group whose source is `node`.
fn classes(g: &ChannelGroups, node: &str, at: &[usize]) -> Vec<usize> {
    let grp = g
        .groups
        .iter()
        .find(|grp| grp.sources.iter().any(|s| s.node_name == node))
        .unwrap_or_else(|| panic!("no group with source {node}"));
    assert!(
        grp.prunable(),
        "group of {node} is blocked: {:?}",
        grp.blocked
    );
    at.iter().map(|&i| grp.classes[i]).collect()
}

/// Dumps `model` simplified, removes the classes `pick` selects, dumps again.
fn check(name: &str, mut model: Model, pick: &[(&str, &[usize])]) {
    let g = analyse(&mut model).expect("analysis");
    common::check_golden(&format!("prune.{name}.before"), &dump_of(&model));
    let mut sel: Vec<usize> = pick.iter().flat_map(|(n, at)| classes(&g, n, at)).collect();
    sel.sort_unstable();
    let report = prune(
        &mut model,
        &PruneOptions {
            selection: Selection::Classes(sel.clone()),
            verify_with: vec![BackendKind::Tract],
            tolerance: 1e-4,
        },
    )
    .unwrap_or_else(|e| panic!("{name}: prune failed: {e}"));
    assert_eq!(report.removed, sel.len());
    assert!(report.oracle.expect("verified").max_rel_error <= 1e-4);
    common::check_golden(&format!("prune.{name}.after"), &dump_of(&model));
}

/// stem (4) → residual with projection (4): remove stem channel 1, conv_a channels 0 and 2,
/// conv_b/proj channel 3.
#[test]
fn residual_bn() {
    let m = chain(
        "residual_bn",
        4,
        &[Block::ResidualProj(4)],
        Head::GapGemm,
        Some(1),
        11,
    );
    check(
        "residual_bn",
        m,
        &[("stem", &[1]), ("b1.conv_a", &[0, 2]), ("b1.conv_b", &[3])],
    );
}

/// stem (4) → Concat(left 3, right 2) → conv (4): remove left channel 0 and right channel 1,
/// so the concat has 2 + 1 channels.
#[test]
fn concat() {
    let m = chain(
        "concat",
        4,
        &[Block::Concat(3, 2), Block::ConvBn(4)],
        Head::GapGemm,
        Some(1),
        12,
    );
    check("concat", m, &[("b1.left", &[0]), ("b1.right", &[1])]);
}

/// stem (4) → conv (3) → Flatten → Gemm: remove stem channel 3 and conv channel 1, so the
/// Gemm reads 2·64 features.
#[test]
fn flatten_gemm() {
    let m = chain(
        "flatten_gemm",
        4,
        &[Block::ConvRelu(3)],
        Head::FlattenGemm,
        None,
        13,
    );
    check("flatten_gemm", m, &[("stem", &[3]), ("b1.conv", &[1])]);
}
