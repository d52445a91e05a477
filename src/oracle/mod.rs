//! The equivalence oracle: a pruned model must compute what the original computes with the
//! removed channels silenced at their consumers (and dropped residual branches adding zero).
//!
//! [`masked_original`] zeroes, in a copy of the original, the consumer weight slices (next
//! Conv's input slice, Gemm/MatMul rows, ...) that read removed channels, and puts a zero in
//! the place of each residual branch whose group loses every channel (depth pruning);
//! [`compare`] runs two models on the same seeded random inputs under each requested runtime
//! and reports the largest relative output difference; [`compare_reduced`] (the prune
//! pipeline's check) also compares the values inside the models that [`probes`] names. The
//! oracle does not judge accuracy on real data.

mod probes;

pub use probes::{probes, Inside, Probe};

use serde::Serialize;

use crate::analysis::channels::ChannelGroups;
use crate::analysis::constant_channels::{channel_constants, compensation};
use crate::analysis::infer_shapes;
use crate::error::{Error, Result};
use crate::ir::{DType, Dim, Fact, Model, Tensor};
use crate::onnx::{ExternalData, SaveOptions};
use crate::ops::channel::{Link, Map, Port};
use crate::runtime::{self, BackendKind};
use crate::temp_dir::TempDir;

/// The original with the consumers' input slices of the removed classes set to zero — except
/// constant channels that the removal compensates exactly (their contribution stays, as in the
/// pruned model) — and a zero in place of the residual branch of each group that loses every
/// channel, at its sum.
pub fn masked_original(model: &Model, groups: &ChannelGroups, classes: &[usize]) -> Result<Model> {
    let constants = channel_constants(model, groups);
    let shapes = infer_shapes(model)?;
    let removed = groups.removed(classes);
    let mut out = model.clone();
    let g = &model.graph;
    for (&n, links) in &groups.links {
        let node = g.node(n);
        for l in links {
            let Link::Consume { from } = l else { continue };
            let Port::In(p) = from.port else { continue };
            let Some(v) = node.input(p) else { continue };
            let Some(mut mask) = groups.keep_mask((v, from.axis), &removed) else {
                continue;
            };
            // Positions the removal compensates keep their (constant) contribution.
            let consts: Vec<(usize, f64)> = mask
                .iter()
                .enumerate()
                .filter(|(_, k)| !**k)
                .filter_map(|(p, _)| {
                    constants
                        .get((v, from.axis), p)
                        .filter(|c| *c != 0.0)
                        .map(|c| (p, c))
                })
                .collect();
            if !consts.is_empty() {
                {
                    if compensation(g, &shapes, n, *from, &consts)?.is_some() {
                        for (p, _) in &consts {
                            mask[*p] = true;
                        }
                    }
                }
            }
            for m in links {
                let Link::Member {
                    input,
                    axis,
                    slot,
                    map,
                } = m
                else {
                    continue;
                };
                if slot != from {
                    continue;
                }
                let Some(w) = node.input(*input) else {
                    continue;
                };
                let Some(t) = out.graph.init(w).cloned() else {
                    return Err(Error::node(
                        &node.name,
                        &node.op_type,
                        format!("input {input} is not a constant"),
                    ));
                };
                let zero: Vec<usize> = mask
                    .iter()
                    .enumerate()
                    .filter(|(_, k)| !**k)
                    .filter_map(|(pos, _)| match map {
                        Map::Identity => Some(pos),
                        Map::Index(ix) => ix.get(pos).copied().flatten(),
                    })
                    .collect();
                if zero.is_empty() {
                    continue;
                }
                let t = t.zero_along(*axis, &zero)?;
                // The original's pages are not read again here (see `crate::onnx::mapped`).
                if let Some(old) = model.graph.init(w) {
                    old.release_pages();
                }
                // A fresh initializer: the same constant may feed other nodes unmasked.
                let name = format!("{}_masked", out.graph.value(w).name);
                let c = out.graph.add_initializer(&name, t);
                out.graph.set_input(n, *input, Some(c));
            }
        }
    }
    // A group that loses every channel takes its residual branch with it: the branch adds
    // nothing to its sum (a zero in its place there, so the sum adds the skip alone).
    for gid in crate::passes::remove_channels::whole_groups(groups, classes) {
        let Ok(b) =
            crate::passes::collapse_branches::whole_branch(model, groups, &shapes, &constants, gid)
        else {
            continue;
        };
        for (branch, _) in b.merges {
            let zero = out
                .graph
                .fresh_name(&format!("{}_dropped", g.value(branch).name));
            let zero = out
                .graph
                .add_initializer(&zero, Tensor::from_f32(vec![], &[0.0]));
            out.graph.replace_uses(branch, zero);
        }
    }
    crate::passes::eliminate_dead_code(&mut out)?;
    Ok(out)
}

/// Seeded random runtime inputs: floats uniform in [-1, 1), integers 0, symbolic dims 1.
pub fn random_inputs(model: &Model, seed: u64) -> Result<Vec<(String, Tensor)>> {
    let g = &model.graph;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0
    };
    let mut out = Vec::new();
    for &v in &g.inputs {
        if g.init(v).is_some() {
            continue;
        }
        let val = g.value(v);
        let fact = val
            .decl
            .as_ref()
            .and_then(|d| d.r#type.as_ref())
            .map(Fact::from_type)
            .unwrap_or_default();
        let (Some(dtype), Some(shape)) = (fact.dtype, fact.shape) else {
            return Err(Error::Usage(format!(
                "input '{}' has no declared type and shape",
                val.name
            )));
        };
        let dims: Vec<usize> = shape
            .iter()
            .map(|d| match d {
                Dim::Known(k) => *k,
                _ => 1,
            })
            .collect();
        let n: usize = dims.iter().product();
        let values: Vec<f64> = if dtype.is_float() {
            (0..n).map(|_| next()).collect()
        } else {
            vec![0.0; n]
        };
        let t = match dtype {
            DType::F32 => {
                Tensor::from_f32(dims, &values.iter().map(|v| *v as f32).collect::<Vec<_>>())
            }
            d => Tensor::from_f64_as(d, dims, &values)?,
        };
        out.push((val.name.clone(), t));
    }
    Ok(out)
}

/// How two models compared.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// Per runtime: `(backend, max relative error)`.
    pub errors: Vec<(String, f64)>,
    /// Largest relative error over runtimes and samples.
    pub max_rel_error: f64,
    /// Runtimes that did not compare, with why: they could not run the reference model, or
    /// were kept from it ([`TRACT_CHECK_MAX_NODES`], a model tract would crash on).
    pub skipped: Vec<(String, String)>,
    /// How much the reference outputs change with the random inputs: the largest, over outputs,
    /// of `max|y_s − y_0| / max|y|` over the samples `s`. `None` when the random inputs are all
    /// equal (only integer inputs, which are fed zeros), so it could not be measured.
    pub variation: Option<f64>,
    /// The input shapes compared when [`compare_reduced`] ran the models at a reduced
    /// resolution (`None`: as declared).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reduced: Option<String>,
    /// What the comparison of values inside the models found, when it was given [`Probe`]s
    /// ([`compare_reduced`]); its largest error is part of `max_rel_error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inside: Option<Inside>,
}

impl Comparison {
    /// Whether the outputs varied by at least [`MIN_VARIATION`] with the random inputs (or
    /// could not be measured: integer inputs only).
    pub fn outputs_vary(&self) -> bool {
        self.variation.is_none_or(|v| v >= MIN_VARIATION)
    }

    /// Whether the random inputs exercised the comparison: the outputs varied
    /// ([`Comparison::outputs_vary`]), or values compared inside the models did.
    pub fn exercised(&self) -> bool {
        self.outputs_vary() || self.inside.as_ref().is_some_and(|i| i.varying > 0)
    }
}

/// Below this [`Comparison::variation`], the reference output does not depend on the input
/// (float rounding aside): comparing on it proves little, and callers must not call the
/// model verified ([`Comparison::exercised`]). Not an error: random-weight exports (the zoo's
/// mobilenet_v2: 1.5e-7) and random chains sit below it and still prune correctly.
pub const MIN_VARIATION: f64 = 1e-6;

/// Runs `a` and `b` on `samples` (at least 2) seeded random inputs under each runtime and returns
/// the largest relative error `max|a-b| / max|a|` over outputs. A runtime that cannot run the
/// reference `a` (e.g. an op it lacks) is skipped and reported; at least one runtime must
/// compare, and one that runs `a` but not `b` is an error.
///
/// A comparison that cannot fail is refused (an error, never a pass) when a reference output
/// holds NaN or infinity (a NaN weight, a BatchNormalization with a negative variance). When
/// the reference outputs do not vary with the input (variation below [`MIN_VARIATION`]) the
/// comparison is returned with [`Comparison::exercised`] false.
pub fn compare(
    a: &Model,
    b: &Model,
    backends: &[BackendKind],
    samples: usize,
    seed: u64,
) -> Result<Comparison> {
    compare_with(a, b, &[], backends, samples, seed)
}

/// [`compare`], also comparing the values inside the models that `probes` names
/// ([`Comparison::inside`]).
pub fn compare_with(
    a: &Model,
    b: &Model,
    probes: &[Probe],
    backends: &[BackendKind],
    samples: usize,
    seed: u64,
) -> Result<Comparison> {
    let inputs = sample_inputs(a, samples, seed)?;
    let saved = match probed(a, b, probes)? {
        Some((pa, pb)) => Saved::new(&pa, &pb)?,
        None => Saved::new(a, b)?,
    };
    compare_saved(&saved, &inputs, backends, probes)
}

/// `a` and `b` with the values `probes` names added to their outputs; `None` without probes.
fn probed(a: &Model, b: &Model, probes: &[Probe]) -> Result<Option<(Model, Model)>> {
    if probes.is_empty() {
        return Ok(None);
    }
    let with = |m: &Model| {
        let values: Vec<_> = probes
            .iter()
            .filter_map(|p| m.graph.value_by_name(&p.name))
            .collect();
        crate::analysis::activation_stats::with_value_outputs(m, &values)
    };
    Ok(Some((with(a)?, with(b)?)))
}

/// `samples` (at least 2) sets of [`random_inputs`] of `model`, seeded from `seed` on.
fn sample_inputs(model: &Model, samples: usize, seed: u64) -> Result<Vec<Vec<(String, Tensor)>>> {
    (0..samples.max(2))
        .map(|s| random_inputs(model, seed + s as u64))
        .collect()
}

/// The two models of a comparison written to a scratch folder (removed on drop, and on an
/// interrupting signal), with their weights in external data: ONNX Runtime maps those files
/// instead of copying them, and the caller can drop its own copies once they are written.
struct Saved {
    _dir: TempDir,
    paths: [std::path::PathBuf; 2],
    nodes: [usize; 2],
    /// Why tract must not run these models ([`runtime::tract::hazard`]).
    tract_hazard: Option<String>,
}

impl Saved {
    fn new(a: &Model, b: &Model) -> Result<Saved> {
        crate::ir::verify::verify_ops(a)?;
        crate::ir::verify::verify_ops(b)?;
        let dir = TempDir::new("oracle")?;
        let paths = [dir.path().join("a.onnx"), dir.path().join("b.onnx")];
        // Scratch files: not synced to disk (that took most of the time of a ResNet-50's check).
        let opts = SaveOptions {
            external: ExternalData::Always,
            durable: false,
            ..Default::default()
        };
        a.save(&paths[0], &opts)?;
        b.save(&paths[1], &opts)?;
        Ok(Saved {
            _dir: dir,
            paths,
            nodes: [a.graph.node_count(), b.graph.node_count()],
            tract_hazard: runtime::tract::hazard(a).or_else(|| runtime::tract::hazard(b)),
        })
    }
}

/// Replaces the weights of `model` by the same bytes mapped from its copy saved at `path`
/// (a [`Saved`] file, whose tensors have the same names), so that its heap copies are freed
/// while the runtimes hold theirs; the mapping keeps the bytes readable after the scratch
/// folder is removed.
fn map_weights_from(model: &mut Model, path: &std::path::Path) -> Result<()> {
    let proto = crate::onnx::load_model(path)?;
    let Some(graph) = proto.graph.as_ref() else {
        return Ok(());
    };
    for t in &graph.initializer {
        let Some(v) = model.graph.value_by_name(t.name()) else {
            continue;
        };
        let mapped = Tensor::from_proto(t)?;
        // The bytes were written from this tensor; comparing them would read every page in.
        let same = |old: &Tensor| old.dtype() == mapped.dtype() && old.shape() == mapped.shape();
        if model.graph.init(v).is_some_and(same) {
            model.graph.set_init(v, mapped);
        }
    }
    crate::onnx::mapped::trim_heap();
    Ok(())
}

/// [`compare`] of saved models on the given inputs.
fn compare_saved(
    saved: &Saved,
    inputs: &[Vec<(String, Tensor)>],
    backends: &[BackendKind],
    probes: &[Probe],
) -> Result<Comparison> {
    let inputs_vary = inputs.iter().skip(1).any(|x| {
        x.iter()
            .zip(&inputs[0])
            .any(|((_, p), (_, q))| p.raw() != q.raw())
    });
    // The runtimes judge at once, one thread each: each runs its two models one at a time,
    // so at most two copies of the weights are held (ONNX Runtime's are its mapped files).
    let verdicts: Vec<Result<Verdict>> = std::thread::scope(|sc| {
        let handles: Vec<_> = backends
            .iter()
            .map(|&kind| {
                let alone = backends.len() == 1;
                sc.spawn(move || judge(saved, kind, alone, inputs, inputs_vary, probes))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::Runtime {
                        backend: "oracle",
                        msg: "a runtime's thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut errors = Vec::new();
    let mut skipped = Vec::new();
    let mut worst = 0f64;
    let mut variation = None;
    let mut found = Vec::new();
    for v in verdicts {
        match v? {
            Verdict::Skipped(kind, why) => skipped.push((kind, why)),
            Verdict::Compared {
                name,
                err,
                varies,
                inside,
            } => {
                found.push(inside);
                worst = worst.max(err);
                errors.push((name.to_string(), err));
                if let Some(v) = varies {
                    variation = Some(variation.map_or(v, |w: f64| w.max(v)));
                }
            }
        }
    }
    if errors.is_empty() {
        let why: Vec<String> = skipped.iter().map(|(k, e)| format!("{k}: {e}")).collect();
        return Err(Error::Runtime {
            backend: "oracle",
            msg: format!("no runtime could run the model ({})", why.join("; ")),
        });
    }
    let inside = Inside::merge(probes, &found);
    Ok(Comparison {
        errors,
        skipped,
        max_rel_error: inside
            .as_ref()
            .map_or(worst, |i| worst.max(i.max_rel_error)),
        variation,
        reduced: None,
        inside,
    })
}

/// What one runtime found.
enum Verdict {
    /// It could not run the reference: `(runtime, why)`.
    Skipped(String, String),
    /// Its largest relative error, how much the reference varied (when the inputs did), and
    /// per probe its `(error, variation)` when compared.
    Compared {
        name: &'static str,
        err: f64,
        varies: Option<f64>,
        inside: Vec<Option<(f64, f64)>>,
    },
}

/// Above this many nodes tract does not join a comparison that another runtime makes: its
/// model building scans every node for each constant it adds (a chain of 10,000 Conv+Relu
/// pairs took 22 of a 24 s check; 3,000 pairs 3.5 s), while ONNX Runtime loads such graphs
/// in about a second.
pub const TRACT_CHECK_MAX_NODES: usize = 5_000;

/// One runtime's comparison of the saved models on `inputs`: the reference first (if this
/// runtime cannot run it, it cannot judge), then the candidate. `alone`: no other runtime
/// compares.
fn judge(
    saved: &Saved,
    kind: BackendKind,
    alone: bool,
    inputs: &[Vec<(String, Tensor)>],
    inputs_vary: bool,
    probes: &[Probe],
) -> Result<Verdict> {
    let runtime = format!("{kind:?}").to_lowercase();
    if let (BackendKind::Tract, Some(why)) = (kind, &saved.tract_hazard) {
        return Ok(Verdict::Skipped(runtime, why.clone()));
    }
    let nodes = saved.nodes[0].max(saved.nodes[1]);
    if kind == BackendKind::Tract && !alone && nodes > TRACT_CHECK_MAX_NODES {
        return Ok(Verdict::Skipped(
            runtime,
            format!(
                "{nodes} nodes, above the {TRACT_CHECK_MAX_NODES} for which tract's model building (quadratic in the constants) takes seconds; the other runtime compared"
            ),
        ));
    }
    let (name, ya) = match run_all(kind, &saved.paths[0], saved.nodes[0], inputs) {
        Ok(r) => r,
        Err(e) => return Ok(Verdict::Skipped(runtime, e.to_string())),
    };
    let (ya, pa) = split_probes(ya, probes);
    check_finite(&saved.paths[0], name, &ya)?;
    let varies = inputs_vary.then(|| output_variation(&ya));
    let (_, yb) = run_all(kind, &saved.paths[1], saved.nodes[1], inputs)?;
    let (yb, pb) = split_probes(yb, probes);
    let mut err = 0f64;
    for (ya, yb) in ya.iter().zip(&yb) {
        for ((out, ta), (_, tb)) in ya.iter().zip(yb) {
            err = err.max(rel_error(out, ta, tb)?);
        }
    }
    let inside = probes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let pairs = pa
                .iter()
                .zip(&pb)
                .map(|(a, b)| (a[i].as_ref(), b[i].as_ref()));
            probe_finding(p, pairs)
        })
        .collect();
    Ok(Verdict::Compared {
        name,
        err,
        varies,
        inside,
    })
}

/// Each input's outputs parted into the model's own and, per probe in order, its value.
#[allow(clippy::type_complexity)]
fn split_probes(
    outputs: Vec<Vec<(String, Tensor)>>,
    probes: &[Probe],
) -> (Vec<Vec<(String, Tensor)>>, Vec<Vec<Option<Tensor>>>) {
    let index: std::collections::HashMap<&str, usize> = probes
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    outputs
        .into_iter()
        .map(|sample| {
            let mut own = Vec::new();
            let mut probed = vec![None; probes.len()];
            for (name, t) in sample {
                match index.get(name.as_str()) {
                    Some(&i) => probed[i] = Some(t),
                    None => own.push((name, t)),
                }
            }
            (own, probed)
        })
        .unzip()
}

/// A probe's `(largest relative error, variation of the narrowed reference)` over the inputs'
/// `(reference, pruned)` values; `None` when a value is missing or does not fit the probe.
fn probe_finding<'a>(
    probe: &Probe,
    pairs: impl Iterator<Item = (Option<&'a Tensor>, Option<&'a Tensor>)>,
) -> Option<(f64, f64)> {
    let mut err = 0f64;
    let mut narrowed = Vec::new();
    for (a, b) in pairs {
        let a = probe.narrow(a?)?;
        err = err.max(rel_error(&probe.name, &a, b?).ok()?);
        narrowed.push(vec![(probe.name.clone(), a)]);
    }
    (!narrowed.is_empty()).then(|| (err, output_variation(&narrowed)))
}

/// [`compare`] at an eighth of the declared resolution (at least 32) when the graph allows it,
/// which costs about a sixtieth (224 → 32): every runtime input is `[N, C, H, W]` float with H and W of
/// 128 or more, and shape inference of both models at the smaller size succeeds with every
/// value's shape known (a symbolic batch aside) and non-empty, and both give the same output
/// shapes (a graph whose shapes depend on the resolution, such as a Flatten into a Gemm
/// without pooling or a per-pixel constant, fails this). Channel removal does not depend on
/// the resolution, so the comparison proves the same. Anything else, or a runtime failing or
/// skipping at the reduced resolution, compares as declared.
///
/// The models are written once, with H and W left free, so the fallback reruns the same
/// files. The runtimes' copies of the weights do not add to the caller's: `a` is taken by
/// value and dropped once written, and `b`'s weights are replaced by the same bytes mapped
/// from the written copy (its heap copies are freed).
///
/// The values `probes` names are compared too, at whichever resolution the outputs are.
pub fn compare_reduced(
    a: Model,
    b: &mut Model,
    probes: &[Probe],
    backends: &[BackendKind],
    samples: usize,
    seed: u64,
) -> Result<Comparison> {
    let Some((small, shapes)) = reduced_pair(&a, b) else {
        return compare_with(&a, b, probes, backends, samples, seed);
    };
    let small_inputs = sample_inputs(&small, samples, seed)?;
    drop(small);
    let full_inputs = sample_inputs(&a, samples, seed)?;
    let free = |m: &Model| resized(m, |name, axis, _| Dim::Sym(format!("{name}_{axis}")));
    let (fa, fb) = match probed(&a, b, probes)? {
        Some((pa, pb)) => (free(&pa), free(&pb)),
        None => (free(&a), free(b)),
    };
    let (Some(fa), Some(fb)) = (fa, fb) else {
        return compare_with(&a, b, probes, backends, samples, seed);
    };
    let saved = Saved::new(&fa, &fb)?;
    drop((a, fa, fb));
    map_weights_from(b, &saved.paths[1])?;
    if let Ok(c) = compare_saved(&saved, &small_inputs, backends, probes) {
        if c.skipped.is_empty() {
            return Ok(Comparison {
                reduced: Some(shapes),
                ..c
            });
        }
    }
    compare_saved(&saved, &full_inputs, backends, probes)
}

/// `a` at the reduced resolution of [`compare_reduced`] (for its inputs), with the input
/// shapes in words; `None` when the graph of `a` or `b` does not allow it.
fn reduced_pair(a: &Model, b: &Model) -> Option<(Model, String)> {
    let small = |m: &Model| resized(m, |_, _, d| Dim::Known((d / 8).max(32)));
    let ra = small(a)?;
    let rb = small(b)?;
    let outs = |m: &Model| -> Option<Vec<Vec<Dim>>> {
        let shapes = infer_shapes(m).ok()?;
        let g = &m.graph;
        for n in g.node_ids() {
            for v in g.node(n).outputs.iter().flatten() {
                let s = shapes.get(*v)?.shape.as_ref()?;
                // Known and non-empty, but for a symbolic batch.
                let bad = |(i, d): (usize, &Dim)| match d {
                    Dim::Known(k) => *k == 0,
                    _ => i > 0,
                };
                if s.iter().enumerate().any(bad) {
                    return None;
                }
            }
        }
        g.outputs
            .iter()
            .map(|v| shapes.get(*v).and_then(|f| f.shape.clone()))
            .collect()
    };
    let (oa, ob) = (outs(&ra)?, outs(&rb)?);
    if oa != ob {
        return None;
    }
    let shapes: Vec<String> = crate::runtime::model_inputs(&ra)
        .ok()?
        .iter()
        .map(|i| format!("{} {}", i.name, i.describe()))
        .collect();
    Some((ra, shapes.join(", ")))
}

/// `model` with every runtime input's H and W (axes 2 and 3) replaced by `dim(input name,
/// axis, size)`, intermediate and output shape declarations dropped; `None` unless every
/// runtime input is a float `[N, C, H, W]` with H, W ≥ 128.
fn resized(model: &Model, dim: impl Fn(&str, usize, usize) -> Dim) -> Option<Model> {
    let mut m = model.clone();
    let g = &mut m.graph;
    let inputs: Vec<_> = g
        .inputs
        .iter()
        .copied()
        .filter(|v| g.is_runtime_input(*v))
        .collect();
    if inputs.is_empty() {
        return None;
    }
    for v in inputs {
        let decl = g.value(v).decl.clone()?;
        let fact = Fact::from_type(decl.r#type.as_ref()?);
        let mut shape = fact.shape.clone()?;
        let float = fact.dtype.is_some_and(|d| d.is_float());
        match shape.as_slice() {
            &[_, _, Dim::Known(h), Dim::Known(w)] if float && h >= 128 && w >= 128 => {
                let name = g.value(v).name.clone();
                shape[2] = dim(&name, 2, h);
                shape[3] = dim(&name, 3, w);
            }
            _ => return None,
        }
        g.set_decl(
            v,
            crate::onnx::proto::ValueInfoProto {
                r#type: Some(Fact::new(fact.dtype, shape).to_type()),
                ..decl
            },
        );
    }
    g.value_info.clear();
    for v in g.outputs.clone() {
        let Some(decl) = g.value(v).decl.clone() else {
            continue;
        };
        let Some(fact) = decl.r#type.as_ref().map(Fact::from_type) else {
            continue;
        };
        let rank = fact.shape.as_ref().map_or(0, Vec::len);
        let free: Vec<Dim> = (0..rank).map(|i| Dim::Sym(format!("out{i}"))).collect();
        g.set_decl(
            v,
            crate::onnx::proto::ValueInfoProto {
                r#type: Some(Fact::new(fact.dtype, free).to_type()),
                ..decl
            },
        );
    }
    Some(m)
}

/// One runtime's outputs for every input, with its name.
type Outputs = Result<(&'static str, Vec<Vec<(String, Tensor)>>)>;

/// The model saved at `path` loaded for a check under `kind` and run on every input, then
/// dropped (one runtime thread, no spinning).
fn run_all(
    kind: BackendKind,
    path: &std::path::Path,
    nodes: usize,
    inputs: &[Vec<(String, Tensor)>],
) -> Outputs {
    let opts = runtime::RuntimeOptions {
        threads: Some(1),
        spinning: Some(false),
        ..Default::default()
    };
    let mut s = runtime::load_for_check_with(kind, path, nodes, &opts)?;
    let ys = inputs.iter().map(|x| s.run(x)).collect::<Result<Vec<_>>>();
    let backend = s.backend();
    drop(s);
    crate::onnx::mapped::trim_heap();
    Ok((backend, ys?))
}

/// Refuses reference outputs holding NaN or infinity, naming the output, the runtime and, when
/// one is found, a likely cause in the reference model (saved at `reference`).
fn check_finite(
    reference: &std::path::Path,
    backend: &str,
    outputs: &[Vec<(String, Tensor)>],
) -> Result<()> {
    for (out, t) in outputs.iter().flatten() {
        let Some(v) = t.to_f64_vec() else { continue };
        let Some(bad) = v.iter().find(|x| !x.is_finite()) else {
            continue;
        };
        let cause = Model::load(reference)
            .ok()
            .and_then(|m| nonfinite_cause(&m))
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        return Err(Error::Runtime {
            backend: "oracle",
            msg: format!(
                "cannot verify: reference output '{out}' holds {bad} on random inputs under {backend}{cause}"
            ),
        });
    }
    Ok(())
}

/// A likely reason for non-finite outputs: a float initializer holding NaN/inf, or a
/// per-channel affine map (BatchNormalization) whose scale is not finite (negative variance).
fn nonfinite_cause(model: &Model) -> Option<String> {
    let g = &model.graph;
    for v in g.value_ids() {
        let Some(t) = g.init(v) else { continue };
        if !t.dtype().is_float() {
            continue;
        }
        if let Some(x) = t
            .to_f64_vec()
            .and_then(|x| x.into_iter().find(|x| !x.is_finite()))
        {
            return Some(format!("initializer '{}' holds {x}", g.value(v).name));
        }
    }
    for id in g.node_ids() {
        let Some(affine) = crate::ops::channel_affine_of(g, id) else {
            continue;
        };
        if let Some(c) = affine.scale.iter().position(|s| !s.is_finite()) {
            let n = g.node(id);
            return Some(format!(
                "node '{}' ({}) scales channel {c} by {} (a negative variance?)",
                n.name, n.op_type, affine.scale[c]
            ));
        }
    }
    None
}

/// The largest, over outputs, of `max|y_s − y_0| / max|y|` over the samples `s`.
fn output_variation(outputs: &[Vec<(String, Tensor)>]) -> f64 {
    let Some(first) = outputs.first() else {
        return 0.0;
    };
    let mut worst = 0f64;
    for (o, (_, t0)) in first.iter().enumerate() {
        let Some(y0) = t0.to_f64_vec() else { continue };
        let mut scale = y0.iter().fold(0f64, |m, v| m.max(v.abs()));
        let mut diff = 0f64;
        for sample in &outputs[1..] {
            let Some(ys) = sample.get(o).and_then(|(_, t)| t.to_f64_vec()) else {
                continue;
            };
            if ys.len() != y0.len() {
                // A different output shape for a different input: it varies.
                return f64::INFINITY;
            }
            for (p, q) in ys.iter().zip(&y0) {
                scale = scale.max(p.abs());
                diff = diff.max((p - q).abs());
            }
        }
        worst = worst.max(if scale > 0.0 { diff / scale } else { 0.0 });
    }
    worst
}

/// `max|a-b| / max(max|a|, 1e-6)`; infinite when shapes differ.
pub fn rel_error(name: &str, a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.shape() != b.shape() {
        return Err(Error::Graph(format!(
            "output '{name}' has shape {:?} vs {:?}",
            a.shape(),
            b.shape()
        )));
    }
    let (Some(x), Some(y)) = (a.to_f64_vec(), b.to_f64_vec()) else {
        return Ok(if a.raw() == b.raw() {
            0.0
        } else {
            f64::INFINITY
        });
    };
    let scale = x.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
    let diff = x.iter().zip(&y).fold(0f64, |m, (p, q)| {
        if p.is_nan() != q.is_nan() {
            f64::INFINITY
        } else {
            m.max((p - q).abs())
        }
    });
    Ok(diff / scale)
}

/// The runtimes the oracle can use here: tract always, ONNX Runtime when its library is found.
pub fn available_backends() -> Vec<BackendKind> {
    let mut v = vec![BackendKind::Tract];
    if runtime::ort::find_library().is_some() {
        v.insert(0, BackendKind::Ort);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_ints;
    use crate::ir::Graph;
    use crate::onnx::proto::{ModelProto, OperatorSetIdProto};

    /// `x[N,3,S,S] → Conv 3×3 pad 1 (4) → Relu → (GlobalAveragePool →) Flatten → Gemm (2)`,
    /// the Gemm's width fitting the flattened size.
    fn net(side: usize, pool: bool, bias: f32) -> Model {
        let mut g = Graph::new();
        let x = crate::ops::build::add_batched_input(&mut g, "x", "N", &[3, side, side]);
        let w: Vec<f32> = (0..108)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 10.0)
            .collect();
        let w = g.add_initializer("w", Tensor::from_f32(vec![4, 3, 3, 3], &w));
        let k = if pool { 4 } else { 4 * side * side };
        let fc: Vec<f32> = (0..2 * k)
            .map(|i| ((i * 5 % 7) as f32 - 3.0) / 7.0 + bias)
            .collect();
        let fc = g.add_initializer("fc", Tensor::from_f32(vec![k, 2], &fc));
        let op = |g: &mut Graph, name: &str, t: &str, ins: Vec<Option<_>>, attrs| {
            let id = g.add_node(name, t, &ins, &[&format!("{name}:0")], attrs);
            g.node(id).outputs[0]
        };
        let pads = vec![attr_ints("pads", &[1, 1, 1, 1])];
        let mut y = op(&mut g, "conv", "Conv", vec![Some(x), Some(w)], pads);
        y = op(&mut g, "relu", "Relu", vec![y], vec![]);
        if pool {
            y = op(&mut g, "gap", "GlobalAveragePool", vec![y], vec![]);
        }
        y = op(&mut g, "flat", "Flatten", vec![y], vec![]);
        y = op(&mut g, "matmul", "MatMul", vec![y, Some(fc)], vec![]);
        g.outputs = vec![y.unwrap()];
        Model {
            graph: g,
            rest: ModelProto {
                ir_version: Some(8),
                opset_import: vec![OperatorSetIdProto {
                    domain: Some(String::new()),
                    version: Some(17),
                }],
                ..Default::default()
            },
        }
    }

    #[test]
    fn reduced_resolution_only_where_the_graph_allows_it() {
        let tract = [BackendKind::Tract];
        // Pooled: compared at 32 (an eighth of 128 is below the floor), and a difference is still found there.
        let (a, b) = (net(128, true, 0.0), net(128, true, 0.5));
        let same = compare_reduced(a.clone(), &mut a.clone(), &[], &tract, 2, 1).unwrap();
        assert_eq!(same.reduced.as_deref(), Some("x float [N,3,32,32]"));
        assert_eq!(same.max_rel_error, 0.0);
        let differ = compare_reduced(a, &mut b.clone(), &[], &tract, 2, 1).unwrap();
        assert!(differ.reduced.is_some() && differ.max_rel_error > 1e-2);
        // Flatten into the matrix without pooling: the shapes depend on the resolution.
        let flat = net(128, false, 0.0);
        let c = compare_reduced(flat.clone(), &mut flat.clone(), &[], &tract, 2, 1).unwrap();
        assert_eq!(c.reduced, None);
        assert!(reduced_pair(&flat, &flat).is_none());
        // Small inputs are compared as declared.
        let small = net(64, true, 0.0);
        assert_eq!(
            compare_reduced(small.clone(), &mut small.clone(), &[], &tract, 2, 1)
                .unwrap()
                .reduced,
            None
        );
    }
}
