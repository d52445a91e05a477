//! A mutation harness over load → verify → run → simplify → prune → save (issue 15): seed
//! models ([`seeds`]: the shipped ResNet-20 and one small model per hostile input the issue
//! lists) are broken in seeded random ways at the protobuf level (inputs dropped or rewired,
//! attributes and integer constants set to hostile values, initializer dims and data that
//! disagree, op types swapped, outputs removed, opsets changed) and every stage must return
//! an error or a result, never panic. Small models that pass the verifier are also run on
//! every runtime (the oracle's path into ONNX Runtime and tract).
//!
//! Runs in-process for a bounded number of cases in CI. Case `k` is the mutation seeded with
//! `k` (even cases mutate ResNet-20, odd ones the small seeds in turn), so a failure names its
//! case and replays alone (`LOPPER_FUZZ_FROM=k LOPPER_FUZZ_CASES=1`). Longer runs:
//! `LOPPER_FUZZ_CASES=N`, or `LOPPER_FUZZ_SECONDS=S` (cases until S seconds have passed);
//! `scripts/fuzz.sh` runs one and writes the seeds to a folder first.

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
    match rng.below(10) {
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
        8 => {
            let ints: Vec<usize> = (0..g.initializer.len())
                .filter(|&k| !g.initializer[k].int64_data.is_empty())
                .collect();
            if ints.is_empty() {
                return "nothing".into();
            }
            let k = ints[rng.below(ints.len())];
            let data = &mut g.initializer[k].int64_data;
            let j = rng.below(data.len());
            let v = HOSTILE_INTS[rng.below(HOSTILE_INTS.len())];
            data[j] = v;
            format!("int64 {j} of initializer {k} := {v}")
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

/// The models mutations start from: the shipped ResNet-20, then one small model per hostile
/// input of issue 15 (each also has its own test in `hostile` or `hostile_ir`).
fn seeds() -> Vec<(&'static str, ModelProto)> {
    use crate::hostile::{folding, i64_init, int_model, node, range};
    use crate::hostile_ir::{conv_model, floats};
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/models/resnet20_cifar10.bn.onnx"
    );
    let resnet20 = ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
    let int_op = |op: &str, inits: Vec<(&str, Vec<i64>)>| {
        let names: Vec<&str> = inits.iter().map(|(n, _)| *n).collect();
        int_model(
            vec![node("op", op, &names, &["t"])],
            inits
                .iter()
                .map(|(n, v)| i64_init(n, &[v.len() as i64], v))
                .collect(),
        )
    };
    // y = tail(Conv(x), extra initializers…).
    let conv_then = |op: &str, extra: Vec<lopper::onnx::proto::TensorProto>| {
        let mut m = conv_model();
        let g = m.graph.as_mut().unwrap();
        g.node[0].output = vec!["c".into()];
        let mut ins = vec!["c".to_string()];
        ins.extend(extra.iter().map(|t| t.name().to_string()));
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        g.node.push(node("tail", op, &ins, &["y"]));
        g.initializer.extend(extra);
        m
    };
    let mut nan_bias = conv_model();
    nan_bias.graph.as_mut().unwrap().initializer[1].float_data[0] = f32::NAN;
    let mut var = floats("v", &[3]);
    var.float_data = vec![1.0, -1.0, 0.5];
    let bn = conv_then(
        "BatchNormalization",
        vec![
            floats("s", &[3]),
            floats("bb", &[3]),
            floats("mu", &[3]),
            var,
        ],
    );
    let mut lrn = conv_then("LRN", vec![]);
    lrn.graph.as_mut().unwrap().node[1]
        .attribute
        .push(AttributeProto {
            name: Some("size".into()),
            r#type: Some(2),
            i: Some(3),
            ..Default::default()
        });
    vec![
        ("resnet20", resnet20),
        ("div_min_by_minus_one", folding("Div", &[i64::MIN], &[-1])),
        ("div_by_zero", folding("Div", &[7], &[0])),
        ("mod_by_zero", folding("Mod", &[7], &[0])),
        ("range_step_zero", range(0, 10, 0)),
        ("range_2e40", range(0, 1 << 40, 1)),
        (
            "constant_of_shape_2e40",
            int_op("ConstantOfShape", vec![("a", vec![1 << 20, 1 << 20])]),
        ),
        (
            "expand_negative",
            int_op("Expand", vec![("a", vec![1]), ("b", vec![-5, 3])]),
        ),
        (
            "tile_negative",
            int_op("Tile", vec![("a", vec![1]), ("b", vec![-3])]),
        ),
        (
            "slice_step_min",
            int_op(
                "Slice",
                vec![
                    ("a", vec![1, 2, 3]),
                    ("st", vec![0]),
                    ("en", vec![3]),
                    ("ax", vec![0]),
                    ("sp", vec![i64::MIN]),
                ],
            ),
        ),
        ("conv", conv_model()),
        ("conv_nan_bias", nan_bias),
        ("bn_negative_variance", bn),
        ("lrn", lrn),
    ]
}

/// Models this small that pass the verifier are also run on every runtime.
const RUN_BELOW_NODES: usize = 64;

/// Every stage on the mutated bytes; errors are fine, panics are not. Returns how many stages
/// accepted the model (0: not decoded … 5: pruned and saved).
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
    if model.graph.node_count() < RUN_BELOW_NODES {
        let backends = lopper::oracle::available_backends();
        let _ = lopper::oracle::compare(&model, &model, &backends, 2, 0);
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
            drop_blocks: 0.0,
            drop_search: false,
        }),
        verify_with: vec![],
        tolerance: 1e-4,
    };
    if prune(&mut model, &opts).is_err() {
        return 4;
    }
    // Not synced to disk: with thousands of saves a minute, a sync waits on whatever else
    // the machine writes (a campaign stalled for minutes in one).
    let opts = lopper::onnx::SaveOptions {
        durable: false,
        ..Default::default()
    };
    let _ = model.save(out, &opts);
    5
}

#[test]
fn mutated_models_never_panic() {
    let seeds = seeds();
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let seconds = env("LOPPER_FUZZ_SECONDS");
    let from = env("LOPPER_FUZZ_FROM").unwrap_or(0);
    let cases = env("LOPPER_FUZZ_CASES").unwrap_or(if seconds.is_some() { u64::MAX } else { 48 });
    let verbose = std::env::var_os("LOPPER_FUZZ_VERBOSE").is_some();
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
        let seed = if case % 2 == 0 {
            0
        } else {
            1 + (case / 2) as usize % (seeds.len() - 1)
        };
        let mut m = seeds[seed].1.clone();
        let what: Vec<String> = (0..1 + rng.below(3))
            .map(|_| mutate(&mut m, &mut rng))
            .collect();
        let bytes = m.encode_to_vec();
        if verbose {
            // Said before the run: an abort (not a panic) ends the process without a report.
            eprintln!("case {case}: {}", what.join(", "));
        }
        // A panic is reported below with its case, not by the default hook.
        match catch_quietly(|| run_stages(&bytes, &out)) {
            Ok(stage) => reached[stage] += 1,
            Err(msg) => {
                if verbose {
                    eprintln!("case {case}: {msg}");
                }
                let name = seeds[seed].0;
                failures.push(format!("case {case} ({name}): {} ({msg})", what.join(", ")));
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

/// Every seed decodes and passes or fails the verifier as intended, so that the harness
/// starts from the cases it names; with `LOPPER_FUZZ_CORPUS=DIR` the seeds are also written
/// there as `NAME.onnx` (for other fuzzers, or to try one by hand).
#[test]
fn seeds_are_the_named_cases() {
    let seeds = seeds();
    let out = std::env::var_os("LOPPER_FUZZ_CORPUS").map(std::path::PathBuf::from);
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir).unwrap();
    }
    for (name, m) in &seeds {
        let bytes = m.encode_to_vec();
        let model = lopper::ir::import::import(ModelProto::decode(bytes.as_slice()).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // The conv seeds' hostile values are numeric (NaN, a negative variance): they pass
        // the verifier and must be caught by the oracle; the integer seeds keep a node the
        // verifier refuses or a runtime must fail on.
        if name.starts_with("conv") || name.starts_with("bn") || *name == "lrn" {
            lopper::ir::verify_model(&model).unwrap_or_else(|e| panic!("{name}: {e}"));
            let backends = lopper::oracle::available_backends();
            let c = lopper::oracle::compare(&model, &model, &backends, 2, 0);
            match *name {
                "conv_nan_bias" | "bn_negative_variance" => {
                    let e = c.expect_err(name).to_string();
                    assert!(e.contains("cannot verify"), "{name}: {e}");
                }
                _ => assert!(c.unwrap_or_else(|e| panic!("{name}: {e}")).exercised()),
            }
        }
        if let Some(dir) = &out {
            std::fs::write(dir.join(format!("{name}.onnx")), &bytes).unwrap();
        }
    }
    let mut names: Vec<_> = seeds.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), seeds.len());
}
