//! Channel importance: a score per class (removable channel) of the dependency groups.
//!
//! `l1`: the L1 norm of the producer filters' slices (the weight members, rank ≥ 2, of every
//! source in the class), summed over the class's sources, then normalised by the group's
//! largest score so scores compare across groups. Constant channels (e.g. added by Pad) score 0.
//! This analysis reads weights only; it does not run the model.

use crate::analysis::channels::ChannelGroups;
use crate::ir::Model;
use crate::ops::channel::{Link, Map};

/// L1 filter-norm score of every class (indexed like `groups.class_atoms`), normalised per group
/// to [0, 1].
pub fn l1_scores(model: &Model, groups: &ChannelGroups) -> Vec<f64> {
    let g = &model.graph;
    let mut atom_score = vec![0f64; groups.class_of.len()];
    for grp in &groups.groups {
        for src in grp.sources.iter().filter(|s| !s.constant) {
            let node = g.node(src.node);
            let Some(links) = groups.links.get(&src.node) else {
                continue;
            };
            for l in links {
                let Link::Member {
                    input,
                    axis,
                    slot,
                    map,
                } = l
                else {
                    continue;
                };
                if *slot != src.slot {
                    continue;
                }
                let Some(t) = node.input(*input).and_then(|v| g.init(v)) else {
                    continue;
                };
                if t.shape().len() < 2 {
                    continue; // biases and BN parameters are not filters
                }
                let Some(vals) = t.to_f64_vec() else { continue };
                let shape = t.shape();
                let len = shape[*axis];
                let inner: usize = shape[axis + 1..].iter().product();
                let outer: usize = shape[..*axis].iter().product();
                let mut per_index = vec![0f64; len];
                for o in 0..outer {
                    for (i, slot_sum) in per_index.iter_mut().enumerate() {
                        let base = (o * len + i) * inner;
                        *slot_sum += vals[base..base + inner]
                            .iter()
                            .map(|v| v.abs())
                            .sum::<f64>();
                    }
                }
                for (pos, &atom) in src.atoms.iter().enumerate() {
                    let idx = match map {
                        Map::Identity => Some(pos),
                        Map::Index(m) => m.get(pos).copied().flatten(),
                    };
                    if let Some(s) = idx.and_then(|i| per_index.get(i)) {
                        atom_score[atom] += s;
                    }
                }
            }
        }
    }
    let mut class_score: Vec<f64> = groups
        .class_atoms
        .iter()
        .map(|atoms| atoms.iter().map(|a| atom_score[*a]).sum())
        .collect();
    for grp in &groups.groups {
        let max = grp
            .classes
            .iter()
            .map(|c| class_score[*c])
            .fold(0f64, f64::max);
        if max > 0.0 {
            for &c in &grp.classes {
                class_score[c] /= max;
            }
        }
    }
    class_score
}
