//! Probes: values inside the two models that the oracle compares besides their outputs.
//!
//! A random-weight export's activations settle to a fixed point within a few blocks, so its
//! outputs hardly depend on its input and comparing them proves little. Its early layers still
//! compute on varying data, and every layer on non-trivial data: comparing each layer's output,
//! with the original's narrowed to the channels the pruned model keeps, checks each removal
//! where it happens and names the first value that differs. Probes do not follow values that
//! the pruned model no longer produces under their name (a dropped branch), nor values whose
//! narrowing the channel groups do not explain (those are left out, never compared loosely).

use std::collections::HashSet;

use serde::Serialize;

use crate::analysis::channels::ChannelGroups;
use crate::analysis::infer_shapes;
use crate::ir::{DType, Dim, Model, Tensor};

/// A value compared inside the models: produced under the same name in both, and narrower in
/// the pruned one along the axes of `keep`.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    /// The value's name in both models.
    pub name: String,
    /// Per narrowed axis: `(axis, the original's extent there, the positions kept in order)`.
    pub keep: Vec<(usize, usize, Vec<usize>)>,
}

impl Probe {
    /// The reference's value narrowed to what the pruned model keeps; `None` when its shape
    /// is not the one the probe was made for (a flattened axis at another resolution).
    pub fn narrow(&self, reference: &Tensor) -> Option<Tensor> {
        let mut t = reference.clone();
        for (axis, full, kept) in &self.keep {
            if t.shape().get(*axis) != Some(full) {
                return None;
            }
            t = t.select(*axis, kept).ok()?;
        }
        Some(t)
    }
}

/// At most about this many elements (over all probes, at the declared resolution, a symbolic
/// batch counted as 1) are compared: beyond it, probes are thinned evenly, so that a large
/// model's check holds a bounded copy of its activations (128 MiB of f32 per model and input
/// at most; ResNet-50 at 224×224 has 26 M, all compared).
pub const MAX_PROBED_ELEMENTS: usize = 32 << 20;

/// At most about this many values are compared: each adds an output to both models, and a
/// chain of 10,000 Conv+Relu pairs with all 19,999 compared took twice as long to verify
/// (12.7 s against 6.4 s). Real networks have fewer (efficientnet_b0: 287).
pub const MAX_PROBES: usize = 1_000;

/// The probes of a removal of `classes` of `groups` (computed on `original`) that gave
/// `pruned`: the f32 and f64 values produced by nodes of `original`, in its topological order, that
/// a node of `pruned` produces under the same name, with shapes known in both that are equal
/// or narrower along one axis by exactly what the groups' keep mask removes there. Graph
/// outputs are left out (they are compared anyway). Empty when shapes cannot be inferred.
pub fn probes(
    original: &Model,
    groups: &ChannelGroups,
    classes: &[usize],
    pruned: &Model,
) -> Vec<Probe> {
    let (Ok(sa), Ok(sb)) = (infer_shapes(original), infer_shapes(pruned)) else {
        return Vec::new();
    };
    let Ok(order) = original.graph.topo_order() else {
        return Vec::new();
    };
    let removed = groups.removed(classes);
    let (ga, gb) = (&original.graph, &pruned.graph);
    let produced: HashSet<&str> = gb
        .node_ids()
        .flat_map(|n| gb.node(n).outputs.iter().flatten())
        .map(|v| gb.value(*v).name.as_str())
        .collect();
    let mut out = Vec::new();
    let mut sizes = Vec::new();
    for n in order {
        for &v in ga.node(n).outputs.iter().flatten() {
            let name = &ga.value(v).name;
            if ga.outputs.contains(&v) || !produced.contains(name.as_str()) {
                continue;
            }
            let Some(vb) = gb.value_by_name(name) else {
                continue;
            };
            let (Some(fa), Some(fb)) = (sa.get(v), sb.get(vb)) else {
                continue;
            };
            // Half-precision values round far above the tolerance: their models' outputs
            // are compared as before, their values inside are not.
            if !matches!(fa.dtype, Some(DType::F32 | DType::F64)) || fa.dtype != fb.dtype {
                continue;
            }
            let (Some(da), Some(db)) = (&fa.shape, &fb.shape) else {
                continue;
            };
            let Some(keep) = narrowing(da, db, |axis| groups.keep_mask((v, axis), &removed)) else {
                continue;
            };
            let size = da.iter().map(|d| match d {
                Dim::Known(k) => *k,
                _ => 1,
            });
            sizes.push(size.product::<usize>());
            out.push(Probe {
                name: name.clone(),
                keep,
            });
        }
    }
    thin(out, &sizes, MAX_PROBED_ELEMENTS, MAX_PROBES)
}

/// How the pruned shape `db` narrows the original's `da`: `None` unless the ranks agree,
/// every dim is equal or both known, and at most one axis is narrower, by exactly the
/// positions `mask(axis)` keeps.
fn narrowing(
    da: &[Dim],
    db: &[Dim],
    mask: impl Fn(usize) -> Option<Vec<bool>>,
) -> Option<Vec<(usize, usize, Vec<usize>)>> {
    if da.len() != db.len() {
        return None;
    }
    let mut keep = Vec::new();
    for (axis, (x, y)) in da.iter().zip(db).enumerate() {
        if x == y {
            continue;
        }
        let (Dim::Known(x), Dim::Known(y)) = (x, y) else {
            return None;
        };
        let m = mask(axis)?;
        let kept: Vec<usize> = m
            .iter()
            .enumerate()
            .filter(|(_, k)| **k)
            .map(|(p, _)| p)
            .collect();
        if m.len() != *x || kept.len() != *y || !keep.is_empty() {
            return None;
        }
        keep.push((axis, *x, kept));
    }
    Some(keep)
}

/// `probes` thinned evenly, every k-th kept (and the last), k chosen so that with even sizes
/// their `sizes` would sum to at most `budget` and at most about `most` are kept.
fn thin(probes: Vec<Probe>, sizes: &[usize], budget: usize, most: usize) -> Vec<Probe> {
    let total: usize = sizes.iter().sum();
    if (total <= budget && probes.len() <= most) || probes.len() < 2 {
        return probes;
    }
    let stride = total
        .div_ceil(budget.max(1))
        .max(probes.len().div_ceil(most.max(1)))
        .max(2);
    let last = probes.len() - 1;
    probes
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % stride == 0 || *i == last)
        .map(|(_, p)| p)
        .collect()
}

/// What the probes found over every runtime.
#[derive(Clone, Debug, Serialize)]
pub struct Inside {
    /// Values compared (probes whose shapes fitted at run time).
    pub compared: usize,
    /// Of those, the ones whose reference varied with the random inputs by at least
    /// [`super::MIN_VARIATION`].
    pub varying: usize,
    /// Largest relative error over the compared values.
    pub max_rel_error: f64,
    /// The last compared value, in the original's order, whose reference varied.
    pub deepest_varying: Option<String>,
    /// Each compared value's largest relative error, in the original's order.
    #[serde(skip)]
    pub errors: Vec<(String, f64)>,
}

impl Inside {
    /// The first compared value (in the original's order) off by more than `tolerance`.
    pub fn first_over(&self, tolerance: f64) -> Option<&(String, f64)> {
        self.errors.iter().find(|(_, e)| *e > tolerance)
    }

    /// Merges per-probe findings `(error, variation)` (`None`: not compared) of every runtime.
    pub(super) fn merge(probes: &[Probe], found: &[Vec<Option<(f64, f64)>>]) -> Option<Inside> {
        if probes.is_empty() {
            return None;
        }
        let mut inside = Inside {
            compared: 0,
            varying: 0,
            max_rel_error: 0.0,
            deepest_varying: None,
            errors: Vec::new(),
        };
        for (i, p) in probes.iter().enumerate() {
            let per: Vec<(f64, f64)> = found
                .iter()
                .filter_map(|f| f.get(i).copied().flatten())
                .collect();
            if per.is_empty() {
                continue;
            }
            let err = per.iter().fold(0f64, |m, (e, _)| m.max(*e));
            let var = per.iter().fold(0f64, |m, (_, v)| m.max(*v));
            inside.compared += 1;
            inside.max_rel_error = inside.max_rel_error.max(err);
            if var >= super::MIN_VARIATION {
                inside.varying += 1;
                inside.deepest_varying = Some(p.name.clone());
            }
            inside.errors.push((p.name.clone(), err));
        }
        Some(inside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(name: &str) -> Probe {
        Probe {
            name: name.into(),
            keep: Vec::new(),
        }
    }

    #[test]
    fn a_narrowing_is_one_axis_explained_by_the_keep_mask() {
        let k = |v: &[usize]| v.iter().map(|&d| Dim::Known(d)).collect::<Vec<_>>();
        let mask = |axis: usize| (axis == 1).then(|| vec![true, false, true, false]);
        assert_eq!(
            narrowing(&k(&[1, 4, 8]), &k(&[1, 2, 8]), mask),
            Some(vec![(1, 4, vec![0, 2])])
        );
        // Equal shapes need no mask.
        assert_eq!(narrowing(&k(&[1, 4]), &k(&[1, 4]), |_| None), Some(vec![]));
        // A width the mask does not explain, an axis it does not cover, another rank.
        assert_eq!(narrowing(&k(&[1, 4, 8]), &k(&[1, 3, 8]), mask), None);
        assert_eq!(narrowing(&k(&[1, 4, 8]), &k(&[1, 4, 6]), mask), None);
        assert_eq!(narrowing(&k(&[1, 4]), &k(&[1, 4, 1]), mask), None);
        // Two narrowed axes are not compared.
        let both = |_| Some(vec![true, false, true, false]);
        assert_eq!(narrowing(&k(&[4, 4]), &k(&[2, 2]), both), None);
    }

    #[test]
    fn narrowing_a_reference_keeps_the_pruned_positions_and_refuses_other_shapes() {
        let p = Probe {
            name: "v".into(),
            keep: vec![(1, 3, vec![0, 2])],
        };
        let t = Tensor::from_f32(vec![2, 3], &[1., 2., 3., 4., 5., 6.]);
        let n = p.narrow(&t).unwrap();
        assert_eq!(n.shape(), &[2, 2]);
        assert_eq!(n.to_f32_vec().unwrap(), vec![1., 3., 4., 6.]);
        assert!(p.narrow(&Tensor::from_f32(vec![2, 4], &[0.; 8])).is_none());
    }

    #[test]
    fn thinning_keeps_the_ends_and_meets_the_budget() {
        let ps: Vec<Probe> = (0..10).map(|i| probe(&i.to_string())).collect();
        assert_eq!(thin(ps.clone(), &[1; 10], 10, 10).len(), 10);
        let names =
            |kept: Vec<Probe>| -> Vec<String> { kept.into_iter().map(|p| p.name).collect() };
        assert_eq!(
            names(thin(ps.clone(), &[10; 10], 40, 10)),
            ["0", "3", "6", "9"]
        );
        // By count: every other one, and the last.
        assert_eq!(
            names(thin(ps, &[1; 10], 100, 5)),
            ["0", "2", "4", "6", "8", "9"]
        );
    }

    #[test]
    fn merging_takes_the_worst_runtime_and_counts_what_varied() {
        let ps = [probe("a"), probe("b"), probe("c")];
        let ort = vec![Some((1e-7, 0.5)), None, Some((2e-7, 1e-9))];
        let tract = vec![Some((3e-7, 0.4)), None, Some((1e-3, 1e-9))];
        let m = Inside::merge(&ps, &[ort, tract]).unwrap();
        assert_eq!((m.compared, m.varying), (2, 1));
        assert_eq!(m.max_rel_error, 1e-3);
        assert_eq!(m.deepest_varying.as_deref(), Some("a"));
        assert_eq!(m.first_over(1e-4).map(|e| e.0.as_str()), Some("c"));
        assert!(Inside::merge(&[], &[]).is_none());
    }
}
