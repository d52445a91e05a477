//! Channel dependency analysis and structural removal on the small CNNs of
//! `fixtures/graphs.rs`: the group structure each block must give; a property test that
//! removing a random non-empty proper subset of every prunable group's channels (one that
//! leaves every tensor at least one channel) from random chains of blocks keeps the model
//! equivalent to its masked original (tract, 1e-4) while MACs and parameters drop; that a
//! removal emptying a tensor is refused; and that a model whose groups are all blocked is left
//! unchanged.

use crate::common;
use crate::graphs;

use graphs::{chain, single, Block, Builder, Head};
use lopper::analysis::channels::{ChannelGroups, Group};
use lopper::analysis::{costs, infer_shapes};
use lopper::ir::Model;
use lopper::prune::{analyse, prune, PruneOptions, Selection};
use lopper::runtime::BackendKind;
use proptest::prelude::*;

/// Largest relative error the oracle may find.
const TOLERANCE: f64 = 1e-4;

/// The groups of `model` (simplified as `prune` does).
fn groups(model: &Model) -> ChannelGroups {
    let mut m = model.clone();
    analyse(&mut m).unwrap_or_else(|e| panic!("{}: analysis failed: {e}", name(model)))
}

fn name(model: &Model) -> String {
    model.graph.rest.name().to_string()
}

/// One line per group: id, channels, producers, blocking reasons.
fn describe(g: &ChannelGroups) -> String {
    g.groups
        .iter()
        .map(|grp| {
            let src: Vec<&str> = grp.sources.iter().map(|s| s.node_name.as_str()).collect();
            format!(
                "  group {}: {} channels, sources {:?}, blocked {:?}",
                grp.id, grp.channels, src, grp.blocked
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The group with a (non-constant) source named `node`.
fn group_of<'a>(g: &'a ChannelGroups, node: &str) -> &'a Group {
    g.groups
        .iter()
        .find(|grp| {
            grp.sources
                .iter()
                .any(|s| !s.constant && s.node_name == node)
        })
        .unwrap_or_else(|| panic!("no group has source '{node}':\n{}", describe(g)))
}

/// Sorted names of a group's non-constant sources.
fn sources(grp: &Group) -> Vec<String> {
    let mut v: Vec<String> = grp
        .sources
        .iter()
        .filter(|s| !s.constant)
        .map(|s| s.node_name.clone())
        .collect();
    v.sort();
    v
}

/// Asserts that `grp` is prunable, with `channels` classes and exactly these sources.
fn assert_group(g: &ChannelGroups, grp: &Group, want_sources: &[&str], channels: usize) {
    let mut want: Vec<String> = want_sources.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(
        sources(grp),
        want,
        "sources of group {}:\n{}",
        grp.id,
        describe(g)
    );
    assert_eq!(
        grp.channels,
        channels,
        "channels of group {}:\n{}",
        grp.id,
        describe(g)
    );
    assert!(
        grp.prunable(),
        "group {} should be prunable:\n{}",
        grp.id,
        describe(g)
    );
}

/// The only blocked group is the logits' (`head.gemm`), blocked by the graph output.
fn assert_only_logits_blocked(g: &ChannelGroups) {
    for grp in &g.groups {
        let is_logits = grp.sources.iter().any(|s| s.node_name == "head.gemm");
        if is_logits {
            assert!(
                !grp.blocked.is_empty() && grp.blocked.iter().all(|r| r.contains("graph output")),
                "the logits group must be blocked by the graph output only:\n{}",
                describe(g)
            );
        } else {
            assert!(
                grp.blocked.is_empty(),
                "group {} is blocked:\n{}",
                grp.id,
                describe(g)
            );
        }
    }
}

/// The atoms of source `node` of `grp`.
fn atoms_of(grp: &Group, node: &str) -> Vec<usize> {
    grp.sources
        .iter()
        .find(|s| s.node_name == node)
        .unwrap_or_else(|| panic!("group {} has no source '{node}'", grp.id))
        .atoms
        .clone()
}

#[test]
fn conv_bn_relu_is_one_group_with_its_batch_norm() {
    let g = groups(&single(Block::ConvBn(6)));
    assert_only_logits_blocked(&g);
    assert_eq!(
        g.groups.len(),
        3,
        "stem, b1.conv, head.gemm:\n{}",
        describe(&g)
    );
    assert_group(&g, group_of(&g, "stem"), &["stem"], 8);
    let grp = group_of(&g, "b1.conv");
    assert_group(&g, grp, &["b1.conv"], 6);
    for k in 1..=4 {
        let m = format!("b1.conv.bn (BatchNormalization) input {k} axis 0");
        assert!(
            grp.members.contains(&m),
            "{m} missing from {:?}",
            grp.members
        );
    }
    assert!(
        grp.consumers.iter().any(|c| c.starts_with("head.gemm")),
        "consumers {:?}",
        grp.consumers
    );
}

#[test]
fn residual_projection_unites_the_two_convs_feeding_the_add() {
    let g = groups(&single(Block::ResidualProj(6)));
    assert_only_logits_blocked(&g);
    assert_group(&g, group_of(&g, "b1.conv_b"), &["b1.conv_b", "b1.proj"], 6);
    assert_group(&g, group_of(&g, "b1.conv_a"), &["b1.conv_a"], 6);
    let stem = group_of(&g, "stem");
    assert_group(&g, stem, &["stem"], 8);
    for c in ["b1.conv_a (Conv)", "b1.proj (Conv)"] {
        assert!(
            stem.consumers.iter().any(|x| x == c),
            "{c} not in {:?}",
            stem.consumers
        );
    }
    // Channel k of conv_b and channel k of proj are one class.
    let grp = group_of(&g, "b1.conv_b");
    for (a, b) in atoms_of(grp, "b1.conv_b")
        .iter()
        .zip(atoms_of(grp, "b1.proj"))
    {
        assert_eq!(g.class_of[*a], g.class_of[b]);
    }
}

#[test]
fn residual_identity_joins_the_input_group() {
    let g = groups(&single(Block::ResidualIdentity));
    assert_only_logits_blocked(&g);
    assert_eq!(
        g.groups.len(),
        3,
        "stem+conv_b, conv_a, head.gemm:\n{}",
        describe(&g)
    );
    assert_group(&g, group_of(&g, "stem"), &["stem", "b1.conv_b"], 8);
    assert_group(&g, group_of(&g, "b1.conv_a"), &["b1.conv_a"], 8);
}

#[test]
fn concat_keeps_two_groups() {
    let g = groups(&single(Block::Concat(4, 2)));
    assert_only_logits_blocked(&g);
    let l = group_of(&g, "b1.left");
    let r = group_of(&g, "b1.right");
    assert_ne!(
        l.id,
        r.id,
        "the concat branches must stay separate:\n{}",
        describe(&g)
    );
    assert_group(&g, l, &["b1.left"], 4);
    assert_group(&g, r, &["b1.right"], 2);
    assert_group(&g, group_of(&g, "stem"), &["stem"], 8);
}

#[test]
fn depthwise_conv_joins_its_input_group() {
    let g = groups(&single(Block::Depthwise));
    assert_only_logits_blocked(&g);
    assert_eq!(
        g.groups.len(),
        2,
        "stem (through dw), head.gemm:\n{}",
        describe(&g)
    );
    let stem = group_of(&g, "stem");
    assert_group(&g, stem, &["stem"], 8);
    for m in ["b1.dw (Conv) input 1 axis 0", "b1.dw (Conv) input 2 axis 0"] {
        assert!(
            stem.members.iter().any(|x| x == m),
            "{m} not in {:?}",
            stem.members
        );
    }
}

#[test]
fn grouped_conv_loses_whole_groups() {
    for group in [2usize, 4] {
        let g = groups(&single(Block::Grouped(group)));
        assert_only_logits_blocked(&g);
        // 8 → 8 channels in `group` groups: group q's input channels (the stem's) and output
        // channels are one class, so the stem and the grouped convolution are one group of
        // `group` classes, each `8 / group` channels wide in both tensors.
        let per = 8 / group;
        let grp = group_of(&g, "b1.gconv");
        assert_group(&g, grp, &["stem", "b1.gconv"], group);
        let (stem, gconv) = (atoms_of(grp, "stem"), atoms_of(grp, "b1.gconv"));
        for j in 0..8 {
            let class = g.class_of[gconv[j]];
            assert_eq!(class, g.class_of[stem[j]], "group {group}: channel {j}");
            assert_eq!(
                class,
                g.class_of[gconv[j / per * per]],
                "group {group}: {j}"
            );
        }
        let widths = g.class_widths();
        assert!(grp.classes.iter().all(|c| widths[*c] == per), "{widths:?}");
    }
}

#[test]
fn se_expand_conv_joins_the_feature_map_group() {
    let g = groups(&single(Block::Se));
    assert_only_logits_blocked(&g);
    let stem = group_of(&g, "stem");
    assert_group(&g, stem, &["stem", "b1.expand"], 8);
    for (a, b) in atoms_of(stem, "stem")
        .iter()
        .zip(atoms_of(stem, "b1.expand"))
    {
        assert_eq!(
            g.class_of[*a], g.class_of[b],
            "SE gate channel k multiplies channel k"
        );
    }
    assert_group(&g, group_of(&g, "b1.reduce"), &["b1.reduce"], 4);
}

/// ShuffleNetV2 unit on the 8-channel stem: Split → (x1, branch(x2)) → Concat → shuffle. The
/// shuffle's first Reshape splits the 8 channels into [2, 4]: position k and k+4 of the concat
/// (stem channel k and pw2 channel k) can only go together: 4 coupled classes. The stem's
/// second half (read only by pw1) stays 4 single classes, so the group has 8.
fn check_shuffle(batch: Option<usize>) {
    let m = chain("shuffle", 8, &[Block::Shuffle], Head::GapGemm, batch, 3);
    let g = groups(&m);
    assert_only_logits_blocked(&g);
    let grp = group_of(&g, "b1.pw2");
    assert_group(&g, grp, &["stem", "b1.pw2"], 8);
    let stem = atoms_of(grp, "stem");
    let pw2 = atoms_of(grp, "b1.pw2");
    for k in 0..4 {
        assert_eq!(
            g.class_of[stem[k]], g.class_of[pw2[k]],
            "stem {k} ~ pw2 {k}"
        );
        assert_eq!(
            g.class_atoms[g.class_of[stem[k]]].len(),
            2,
            "class of stem {k}"
        );
        assert_eq!(
            g.class_atoms[g.class_of[stem[4 + k]]].len(),
            1,
            "class of stem {}",
            4 + k
        );
    }
    let coupled = grp
        .classes
        .iter()
        .filter(|c| g.class_atoms[**c].len() == 2)
        .count();
    assert_eq!(coupled, 4, "C/2 coupled classes:\n{}", describe(&g));
    assert_group(&g, group_of(&g, "b1.pw1"), &["b1.pw1"], 4);
}

#[test]
fn shuffle_couples_channel_k_with_k_plus_half() {
    check_shuffle(Some(1));
}

#[test]
fn shuffle_with_symbolic_batch_couples_the_same_channels() {
    check_shuffle(None);
}

#[test]
fn pooling_passes_channels() {
    for avg in [false, true] {
        let g = groups(&single(Block::Pool(avg)));
        assert_only_logits_blocked(&g);
        assert_eq!(g.groups.len(), 2, "{}", describe(&g));
        assert_group(&g, group_of(&g, "stem"), &["stem"], 8);
    }
}

#[test]
fn flatten_gemm_head_consumes_channels() {
    let m = chain(
        "flatten",
        6,
        &[Block::ConvRelu(4)],
        Head::FlattenGemm,
        None,
        5,
    );
    let g = groups(&m);
    assert_only_logits_blocked(&g);
    let grp = group_of(&g, "b1.conv");
    assert_group(&g, grp, &["b1.conv"], 4);
    assert!(
        grp.consumers.iter().any(|c| c == "head.gemm (Gemm)"),
        "{:?}",
        grp.consumers
    );
    let logits = group_of(&g, "head.gemm");
    assert!(!logits.prunable(), "logits reach the graph output");
}

/// A model whose every group is blocked (a single Conv whose output is the graph output) is
/// left exactly as it was.
#[test]
fn all_blocked_model_is_unchanged() {
    let mut b = Builder::new("blocked", Some(1), 9);
    let x = b.input("input", 3, 8);
    let y = b.conv("conv", x, 4, 3, 1, 1, true);
    let model = b.finish(&[y.v]);
    let g = groups(&model);
    assert_eq!(g.groups.len(), 1, "{}", describe(&g));
    assert!(
        g.groups[0]
            .blocked
            .iter()
            .any(|r| r.contains("graph output")),
        "{}",
        describe(&g)
    );

    let mut pruned = model.clone();
    let report = prune(
        &mut pruned,
        &PruneOptions {
            selection: Selection::Ratio(0.5),
            verify_with: vec![BackendKind::Tract],
            tolerance: TOLERANCE,
        },
    )
    .expect("prune of an all-blocked model");
    assert_eq!(report.removed, 0);
    assert_eq!((report.groups, report.blocked), (1, 1));
    assert!(
        report.oracle.is_none(),
        "nothing removed, nothing to verify"
    );
    assert_eq!(report.macs.0, report.macs.1);
    assert_eq!(report.params.0, report.params.1);
    assert_eq!(pruned.graph.node_count(), model.graph.node_count());
    let outs = |m: &Model| -> Vec<String> {
        m.graph
            .outputs
            .iter()
            .map(|&o| m.graph.value(o).name.clone())
            .collect()
    };
    assert_eq!(outs(&pruned), outs(&model));
    let dir = tempfile::tempdir().unwrap();
    let (pa, _) = common::save_reload(&model, dir.path(), "before");
    let (pb, _) = common::save_reload(&pruned, dir.path(), "after");
    let inputs = common::random_inputs(&model, 4);
    let ya = common::run(BackendKind::Tract, &pa, &inputs);
    let yb = common::run(BackendKind::Tract, &pb, &inputs);
    assert_eq!(common::diff_outputs(&ya, &yb), Vec::<String>::new());
    // Selecting a class of a blocked group explicitly is refused.
    let err = prune(
        &mut model.clone(),
        &PruneOptions {
            selection: Selection::Classes(vec![0]),
            verify_with: vec![],
            tolerance: TOLERANCE,
        },
    )
    .expect_err("removing a blocked group's channel must fail");
    assert!(err.to_string().contains("blocked"), "{err}");
}

/// Removing every coupled pair of the shuffle group (stem channel k with pw2 channel k, k < 4)
/// keeps the group's other classes (stem channels 4..8, read only by pw1) but leaves the
/// Concat → shuffle path with no channels at all. prune must refuse that with an error saying
/// a tensor would be emptied (like it refuses to empty a group), not fail inside an op.
#[test]
fn removal_that_empties_a_tensor_is_refused() {
    let mut m = chain("shuffle", 8, &[Block::Shuffle], Head::GapGemm, Some(1), 3);
    let g = analyse(&mut m).unwrap();
    let grp = group_of(&g, "b1.pw2");
    let pairs: Vec<usize> = grp
        .classes
        .iter()
        .copied()
        .filter(|c| g.class_atoms[*c].len() == 2)
        .collect();
    assert_eq!(pairs.len(), 4, "{}", describe(&g));
    let mut removed = vec![false; g.class_atoms.len()];
    for c in &pairs {
        removed[*c] = true;
    }
    assert!(empties_a_tensor(&g, &removed));
    let err = prune(
        &mut m,
        &PruneOptions {
            selection: Selection::Classes(pairs),
            verify_with: vec![BackendKind::Tract],
            tolerance: TOLERANCE,
        },
    )
    .expect_err("emptying the shuffle's tensors must be refused");
    assert!(err.to_string().contains("empty"), "unexpected error: {err}");
}

// ---- property: random chains ----------------------------------------------------------------

fn block() -> impl Strategy<Value = Block> {
    let width = prop_oneof![Just(4usize), Just(6), Just(8)];
    let half = prop_oneof![Just(2usize), Just(3), Just(4)];
    prop_oneof![
        width.clone().prop_map(Block::ConvRelu),
        width.clone().prop_map(Block::ConvBn),
        Just(Block::ResidualIdentity),
        width.prop_map(Block::ResidualProj),
        (half.clone(), half).prop_map(|(l, r)| Block::Concat(l, r)),
        Just(Block::Depthwise),
        prop_oneof![Just(2usize), Just(4)].prop_map(Block::Grouped),
        Just(Block::Se),
        Just(Block::Shuffle),
        any::<bool>().prop_map(Block::Pool),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    stem: usize,
    blocks: Vec<Block>,
    head: Head,
    symbolic: bool,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(4usize), Just(6), Just(8)],
        prop::collection::vec(block(), 2..=5),
        prop_oneof![Just(Head::FlattenGemm), Just(Head::GapGemm)],
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(stem, blocks, head, symbolic, seed)| Case {
            stem,
            blocks,
            head,
            symbolic,
            seed,
        })
}

/// xorshift64 for the class choice.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Whether removing `removed` classes would leave some tracked tensor without channels (e.g.
/// every coupled pair of a shuffle group but not the group's other classes).
fn empties_a_tensor(g: &ChannelGroups, removed: &[bool]) -> bool {
    g.slots.keys().any(|k| {
        g.keep_mask(*k, removed)
            .is_some_and(|m| !m.iter().any(|x| *x))
    })
}

/// For every prunable group, a random non-empty proper subset of its classes that leaves
/// every tensor at least one channel (resampled up to 32 times; a group with no such subset
/// is left alone).
fn choose(g: &ChannelGroups, seed: u64) -> Vec<usize> {
    let mut s = seed | 1;
    let mut removed = vec![false; g.class_atoms.len()];
    for grp in g.groups.iter().filter(|g| g.prunable()) {
        let n = grp.classes.len();
        for _ in 0..32 {
            let k = 1 + (next(&mut s) % (n as u64 - 1)) as usize;
            let mut pool = grp.classes.clone();
            for i in 0..k {
                let j = i + (next(&mut s) % (n - i) as u64) as usize;
                pool.swap(i, j);
            }
            let mut trial = removed.clone();
            for c in &pool[..k] {
                trial[*c] = true;
            }
            if !empties_a_tensor(g, &trial) {
                removed = trial;
                break;
            }
        }
    }
    (0..removed.len()).filter(|c| removed[*c]).collect()
}

fn check_case(c: &Case) {
    let batch = if c.symbolic { None } else { Some(1) };
    let mut model = chain("random", c.stem, &c.blocks, c.head, batch, c.seed);
    let what = format!("{c:?}");
    // Simplify as prune does, so that the class numbering is prune's.
    let g = analyse(&mut model).unwrap_or_else(|e| panic!("{what}: analysis: {e}"));
    assert_only_logits_blocked(&g);
    let classes = choose(&g, c.seed);
    assert!(
        !classes.is_empty(),
        "{what}: no prunable group:\n{}",
        describe(&g)
    );
    let before = costs(&model, &infer_shapes(&model).unwrap()).unwrap();
    let mut pruned = model.clone();
    let report = prune(
        &mut pruned,
        &PruneOptions {
            selection: Selection::Classes(classes.clone()),
            verify_with: vec![BackendKind::Tract],
            tolerance: TOLERANCE,
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{what}: prune of classes {classes:?} failed: {e}\n{}",
            describe(&g)
        )
    });
    assert_eq!(report.removed, classes.len(), "{what}");
    let oracle = report
        .oracle
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: not verified"));
    assert!(
        oracle.max_rel_error <= TOLERANCE,
        "{what}: oracle {oracle:?}"
    );
    assert_eq!(report.macs.0, before.macs, "{what}");
    assert!(
        report.macs.1 < report.macs.0,
        "{what}: MACs {:?}",
        report.macs
    );
    assert!(
        report.params.1 < report.params.0,
        "{what}: params {:?}",
        report.params
    );
    let after = costs(&pruned, &infer_shapes(&pruned).unwrap()).unwrap();
    assert_eq!(
        (after.macs, after.params),
        (report.macs.1, report.params.1),
        "{what}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (_, back) = common::save_reload(&pruned, dir.path(), "pruned");
    assert_eq!(back.graph.node_count(), pruned.graph.node_count(), "{what}");
    let reloaded = costs(&back, &infer_shapes(&back).unwrap()).unwrap();
    assert_eq!(
        (reloaded.macs, reloaded.params),
        (after.macs, after.params),
        "{what}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Removing a random non-empty proper subset of every prunable group's classes from a
    /// random chain of 2–5 blocks keeps it equivalent to the masked original.
    #[test]
    fn random_chains_prune_equivalently(c in case()) {
        check_case(&c);
    }
}
