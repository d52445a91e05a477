//! A mutation harness over load → verify → simplify → prune → save (issue 15): the shipped
//! ResNet-20 is broken in seeded random ways at the protobuf level (inputs dropped or
//! rewired, attributes set to hostile values, initializer dims and data that disagree, op
//! types swapped, outputs removed, opsets changed) and every stage must return an error or a
//! result, never panic. Runs in-process for a bounded number of cases in CI. Case `k` is the
//! mutation seeded with `k`, so a failure names its case and replays alone
//! (`LOPPER_FUZZ_FROM=k LOPPER_FUZZ_CASES=1`). Longer runs: `LOPPER_FUZZ_CASES=N`, or
//! `LOPPER_FUZZ_SECONDS=S` (cases until S seconds have passed), e.g.
//! `LOPPER_FUZZ_SECONDS=3600 cargo test --release --test fuzz_mutations -- --nocapture`.

use lopper::analysis::importance::{CriterionKind, Normalize, Reduce};
use lopper::onnx::proto::{AttributeProto, ModelProto};
use lopper::plan::allocate::{AllocateOptions, Amount};
use lopper::prune::{prune, PruneOptions, Scored, Selection};
use lopper::rng::SplitMix64;
use prost::Message;

use crate::common::catch_quietly;

const HOSTILE_INTS: [i64; 9] = [0, -1, 1, 2, 3, 7, 1 << 40, i64::MIN, i64::MAX];
const OPS: [&str; 10] = [
    "Conv",
    "Relu",
    "Add",
    "Gemm",
    "Reshape",
    "Flatten",
    "Concat",
    "BatchNormalization",
    "GlobalAveragePool",
    "MatMul",
];

/// One random mutation of `m`; a description of it.
fn mutate(m: &mut ModelProto, rng: &mut SplitMix64) -> String {
    let g = m.graph.as_mut().unwrap();
    let n = g.node.len();
    match rng.below(9) {
        0 if n > 0 => {
            let k = rng.below(n);
            let node = &mut g.node[k];
            if !node.input.is_empty() {
                let i = rng.below(node.input.len());
                node.input.remove(i);
            }
            format!("drop input of node {k}")
        }
        1 if n > 1 => {
            let (a, b) = (rng.below(n), rng.below(n));
            let src = g.node[b].output.first().cloned().unwrap_or_default();
            if let Some(i) = g.node[a].input.first_mut() {
                *i = src;
            }
            format!("rewire node {a} input 0 to node {b}'s output")
        }
        2 if n > 0 => {
            let k = rng.below(n);
            let v = HOSTILE_INTS[rng.below(HOSTILE_INTS.len())];
            let node = &mut g.node[k];
            match node
                .attribute
                .iter_mut()
                .find(|a| !a.ints.is_empty() || a.i.is_some())
            {
                Some(a) if !a.ints.is_empty() => {
                    let j = rng.below(a.ints.len());
                    a.ints[j] = v;
                }
                Some(a) => a.i = Some(v),
                None => node.attribute.push(AttributeProto {
                    name: Some(["group", "axis", "transB", "strides"][rng.below(4)].into()),
                    r#type: Some(2),
                    i: Some(v),
                    ..Default::default()
                }),
            }
            format!("attribute of node {k} := {v}")
        }
        3 if !g.initializer.is_empty() => {
            let k = rng.below(g.initializer.len());
            let t = &mut g.initializer[k];
            if !t.dims.is_empty() {
                let d = rng.below(t.dims.len());
                t.dims[d] = HOSTILE_INTS[rng.below(HOSTILE_INTS.len())];
            }
            format!("dims of initializer {k}")
        }
        4 if !g.initializer.is_empty() => {
            let k = rng.below(g.initializer.len());
            let t = &mut g.initializer[k];
            let keep = rng.below(
                t.float_data
                    .len()
                    .max(t.raw_data.as_ref().map_or(0, |r| r.len()))
                    + 1,
            );
            t.float_data.truncate(keep);
            if let Some(r) = t.raw_data.as_mut() {
                r.truncate(keep);
            }
            format!("data of initializer {k} cut to {keep}")
        }
        5 if n > 0 => {
            let k = rng.below(n);
            let op = OPS[rng.below(OPS.len())];
            g.node[k].op_type = Some(op.into());
            format!("node {k} becomes {op}")
        }
        6 => {
            if !g.output.is_empty() && rng.below(2) == 0 {
                g.output.clear();
                "no outputs".into()
            } else {
                let v = HOSTILE_INTS[rng.below(HOSTILE_INTS.len())];
                if let Some(o) = m.opset_import.first_mut() {
                    o.version = Some(v);
                }
                format!("opset {v}")
            }
        }
        7 if n > 1 => {
            let k = rng.below(n);
            let dup = g.node[k].clone();
            g.node.insert(rng.below(n), dup);
            format!("node {k} duplicated")
        }
        _ if n > 0 => {
            let k = rng.below(n);
            g.node.remove(k);
            format!("node {k} removed")
        }
        _ => "nothing".into(),
    }
}

/// Every stage on the mutated bytes; errors are fine, panics are not. Returns how many stages
/// accepted the model (0: not decoded … 4: pruned).
fn run_stages(bytes: &[u8], out: &std::path::Path) -> usize {
    let Ok(proto) = ModelProto::decode(bytes) else {
        return 0;
    };
    let Ok(mut model) = lopper::ir::import::import(proto) else {
        return 1;
    };
    if lopper::ir::verify_model(&model).is_err() {
        return 2;
    }
    let _ = lopper::ir::display::dump(&model.graph, None);
    if lopper::passes::simplify(&mut model, &Default::default()).is_err() {
        return 3;
    }
    let opts = PruneOptions {
        selection: Selection::Scored(Scored {
            criterion: CriterionKind::L1,
            reduce: Reduce::Sum,
            normalize: Normalize::Max,
            seed: 0,
            allocate: AllocateOptions {
                amount: Amount::Ratio(0.3),
                ..Default::default()
            },
            steps: 1,
            latency: Default::default(),
        }),
        verify_with: vec![],
        tolerance: 1e-4,
    };
    if prune(&mut model, &opts).is_err() {
        return 4;
    }
    let _ = model.save(out, &Default::default());
    5
}

#[test]
fn mutated_models_never_panic() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/models/resnet20_cifar10.bn.onnx"
    );
    let original = ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let seconds = env("LOPPER_FUZZ_SECONDS");
    let from = env("LOPPER_FUZZ_FROM").unwrap_or(0);
    let cases = env("LOPPER_FUZZ_CASES").unwrap_or(if seconds.is_some() { u64::MAX } else { 48 });
    let start = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let mut failures = Vec::new();
    let mut reached = [0usize; 6];
    let mut run = 0u64;
    for case in from..from.saturating_add(cases) {
        if seconds.is_some_and(|s| start.elapsed().as_secs() >= s) {
            break;
        }
        run += 1;
        let mut rng = SplitMix64::new(case);
        let mut m = original.clone();
        let what: Vec<String> = (0..1 + rng.below(3))
            .map(|_| mutate(&mut m, &mut rng))
            .collect();
        let bytes = m.encode_to_vec();
        // A panic is reported below with its case, not by the default hook.
        match catch_quietly(|| run_stages(&bytes, &out)) {
            Ok(stage) => reached[stage] += 1,
            Err(msg) => {
                if std::env::var_os("LOPPER_FUZZ_VERBOSE").is_some() {
                    eprintln!("case {case}: {msg}");
                }
                failures.push(format!("case {case}: {} ({msg})", what.join(", ")));
            }
        }
    }
    eprintln!(
        "{run} cases (seeds {from}..{}) in {:.0?}; by the stage that stopped them (decode, import, verify, simplify, prune, saved): {reached:?}",
        from + run,
        start.elapsed()
    );
    assert!(failures.is_empty(), "panics:\n{}", failures.join("\n"));
    // The harness must exercise the later stages, not only the early refusals.
    assert!(reached[4] + reached[5] >= run as usize / 20, "{reached:?}");
}
