//! The equivalence oracle: a pruned model must compute what the original computes with the
//! removed channels silenced at their consumers.
//!
//! [`masked_original`] zeroes, in a copy of the original, the consumer weight slices (next
//! Conv's input slice, Gemm/MatMul rows, ...) that read removed channels; [`compare`] runs two
//! models on the same seeded random inputs under each requested runtime and reports the
//! largest relative output difference. The oracle does not judge accuracy on real data.

use serde::Serialize;

use crate::analysis::channels::ChannelGroups;
use crate::analysis::constant_channels::{channel_constants, compensation};
use crate::analysis::infer_shapes;
use crate::error::{Error, Result};
use crate::ir::{DType, Dim, Fact, Model, Tensor};
use crate::onnx::SaveOptions;
use crate::ops::channel::{Link, Map, Port};
use crate::runtime::{self, BackendKind};
use crate::temp_dir::TempDir;

/// The original with the consumers' input slices of the removed classes set to zero — except
/// constant channels that the removal compensates exactly (their contribution stays, as in the
/// pruned model).
pub fn masked_original(model: &Model, groups: &ChannelGroups, classes: &[usize]) -> Result<Model> {
    let constants = channel_constants(model, groups);
    let shapes = infer_shapes(model)?;
    let mut removed = vec![false; groups.class_atoms.len()];
    for &c in classes {
        if let Some(r) = removed.get_mut(c) {
            *r = true;
        }
    }
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
                // A fresh initializer: the same constant may feed other nodes unmasked.
                let name = format!("{}_masked", out.graph.value(w).name);
                let c = out.graph.add_initializer(&name, t);
                out.graph.set_input(n, *input, Some(c));
            }
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
    /// Runtimes that could not run the reference model at all, with their message (skipped).
    pub skipped: Vec<(String, String)>,
    /// How much the reference outputs change with the random inputs: the largest, over outputs,
    /// of `max|y_s − y_0| / max|y|` over the samples `s`. `None` when the random inputs are all
    /// equal (only integer inputs, which are fed zeros), so it could not be measured.
    pub variation: Option<f64>,
}

impl Comparison {
    /// Whether the random inputs exercised the model: its outputs varied by at least
    /// [`MIN_VARIATION`] (or could not be measured: integer inputs only).
    pub fn exercised(&self) -> bool {
        self.variation.is_none_or(|v| v >= MIN_VARIATION)
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
    crate::ir::verify::verify_ops(a)?;
    crate::ir::verify::verify_ops(b)?;
    let dir = TempDir::new("oracle")?;
    let pa = dir.path().join("a.onnx");
    let pb = dir.path().join("b.onnx");
    a.save(&pa, &SaveOptions::default())?;
    b.save(&pb, &SaveOptions::default())?;
    let mut errors = Vec::new();
    let mut skipped = Vec::new();
    let mut worst = 0f64;
    let inputs: Vec<Vec<(String, Tensor)>> = (0..samples.max(2))
        .map(|s| random_inputs(a, seed + s as u64))
        .collect::<Result<_>>()?;
    let inputs_vary = inputs.iter().skip(1).any(|x| {
        x.iter()
            .zip(&inputs[0])
            .any(|((_, p), (_, q))| p.raw() != q.raw())
    });
    let mut variation = None;
    // Every (runtime, model) pair loads and runs on its own thread: the runtimes' model
    // preparation dominates on deep graphs (tract types a 20,000-node chain in seconds).
    let runs = run_everywhere(backends, [(&pa, a), (&pb, b)], &inputs);
    for (kind, [reference, candidate]) in backends.iter().zip(runs) {
        // The reference first: if this runtime cannot run it, it cannot judge.
        let (name, ya) = match reference {
            Ok(r) => r,
            Err(e) => {
                skipped.push((format!("{kind:?}").to_lowercase(), e.to_string()));
                continue;
            }
        };
        check_finite(a, name, &ya)?;
        if inputs_vary {
            let v = output_variation(&ya);
            variation = Some(variation.map_or(v, |w: f64| w.max(v)));
        }
        let (_, yb) = candidate?;
        let mut err = 0f64;
        for (ya, yb) in ya.iter().zip(&yb) {
            for ((out, ta), (_, tb)) in ya.iter().zip(yb) {
                err = err.max(rel_error(out, ta, tb)?);
            }
        }
        worst = worst.max(err);
        errors.push((name.to_string(), err));
    }
    if errors.is_empty() {
        let why: Vec<String> = skipped.iter().map(|(k, e)| format!("{k}: {e}")).collect();
        return Err(Error::Runtime {
            backend: "oracle",
            msg: format!("no runtime could run the model ({})", why.join("; ")),
        });
    }
    Ok(Comparison {
        errors,
        skipped,
        max_rel_error: worst,
        variation,
    })
}

/// One runtime's outputs for every input, with its name.
type Outputs = Result<(&'static str, Vec<Vec<(String, Tensor)>>)>;

/// Per backend, each model (saved at its path) loaded for a check and run on every input, all
/// pairs at once on their own threads (one runtime thread each, no spinning, so that they
/// share the cores).
fn run_everywhere(
    backends: &[BackendKind],
    models: [(&std::path::Path, &Model); 2],
    inputs: &[Vec<(String, Tensor)>],
) -> Vec<[Outputs; 2]> {
    let opts = runtime::RuntimeOptions {
        threads: Some(1),
        spinning: Some(false),
        ..Default::default()
    };
    let run = move |kind: BackendKind, path: &std::path::Path, nodes: usize| -> Outputs {
        let mut s = runtime::load_for_check_with(kind, path, nodes, &opts)?;
        let ys = inputs
            .iter()
            .map(|x| s.run(x))
            .collect::<Result<Vec<_>>>()?;
        Ok((s.backend(), ys))
    };
    let join = |h: std::thread::ScopedJoinHandle<'_, Outputs>| {
        h.join().unwrap_or_else(|_| {
            Err(Error::Runtime {
                backend: "oracle",
                msg: "a runtime's thread panicked".into(),
            })
        })
    };
    std::thread::scope(|sc| {
        let handles: Vec<_> = backends
            .iter()
            .map(|&kind| {
                models.map(|(path, m)| {
                    let nodes = m.graph.node_count();
                    sc.spawn(move || run(kind, path, nodes))
                })
            })
            .collect();
        handles.into_iter().map(|hs| hs.map(join)).collect()
    })
}

/// Refuses reference outputs holding NaN or infinity, naming the output, the runtime and, when
/// one is found, a likely cause in `model`.
fn check_finite(model: &Model, backend: &str, outputs: &[Vec<(String, Tensor)>]) -> Result<()> {
    for (out, t) in outputs.iter().flatten() {
        let Some(v) = t.to_f64_vec() else { continue };
        let Some(bad) = v.iter().find(|x| !x.is_finite()) else {
            continue;
        };
        let cause = nonfinite_cause(model)
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
