//! `bn-scale` (network slimming): |γ| of the BatchNormalization scale members of a class
//! (the BN's `scale` input sliced with the class's channel), combined over the class's BNs
//! with the context's [`Reduce`](super::Reduce).
//!
//! A group with no BatchNormalization at all (a BN-folded model) falls back to the L1 filter
//! norm for that group, and [`Scores::notes`] says how many prunable groups did. Raw |γ| and
//! raw L1 are on different scales: with [`Normalize::None`](super::Normalize::None) a
//! global threshold only makes sense on models whose groups all have BN. Reads weights only.

use super::filters::{Filters, Norm};
use super::{Criterion, ScoreCx, Scores};
use crate::error::Result;
use crate::ops::channel::{Map, Port};

/// The BatchNormalization |γ| criterion.
#[derive(Clone, Copy, Debug, Default)]
pub struct BnScale;

impl Criterion for BnScale {
    fn score(&self, cx: &ScoreCx) -> Result<Scores> {
        let (g, groups) = (&cx.model.graph, cx.groups);
        let classes = groups.class_atoms.len();
        let mut gammas: Vec<Vec<f64>> = vec![Vec::new(); classes];
        for m in &groups.members {
            let node = g.node(m.node);
            if crate::ops::channel_scale_input(node) != Some(m.input) {
                continue;
            }
            let Some(scale) = node
                .input(m.input)
                .and_then(|v| g.init(v))
                .and_then(|t| t.to_f64_vec())
            else {
                continue;
            };
            let key = match m.slot.port {
                Port::In(p) => node.input(p),
                Port::Out(p) => node.output(p),
            };
            let Some(atoms) = key.and_then(|v| groups.slots.get(&(v, m.slot.axis))) else {
                continue;
            };
            for (pos, &atom) in atoms.iter().enumerate() {
                let idx = match &m.map {
                    Map::Identity => Some(pos),
                    Map::Index(ix) => ix.get(pos).copied().flatten(),
                };
                let (Some(gamma), Some(&c)) =
                    (idx.and_then(|i| scale.get(i)), groups.class_of.get(atom))
                else {
                    continue;
                };
                if let Some(list) = gammas.get_mut(c) {
                    list.push(gamma.abs());
                }
            }
        }
        let mut values: Vec<f64> = gammas.iter().map(|l| cx.reduce.apply(l)).collect();
        let mut l1: Option<Vec<f64>> = None;
        let mut fell_back = 0;
        for grp in &groups.groups {
            if grp.classes.iter().any(|&c| !gammas[c].is_empty()) {
                continue;
            }
            let l1 = l1.get_or_insert_with(|| {
                Filters::new(cx.model, groups).class_norms(Norm::L1, cx.reduce)
            });
            for &c in &grp.classes {
                values[c] = l1[c];
            }
            if grp.prunable() {
                fell_back += 1;
            }
        }
        let mut notes = Vec::new();
        if fell_back > 0 {
            notes.push(format!(
                "bn-scale: {fell_back} prunable group(s) have no BatchNormalization (folded?); their channels are ranked by L1 filter norm instead"
            ));
        }
        Ok(Scores {
            values,
            keep: None,
            notes,
        })
    }
}
