//! Dead channels: those whose every consumer reads a compile-time constant that is zero or that
//! the consumer can absorb exactly (bias compensation) — what sparse training leaves behind
//! (all-zero filters, BatchNormalization gamma = 0). Removing them changes no output. At least
//! one channel of every group is kept.

use std::collections::HashMap;

use crate::analysis::channels::ChannelGroups;
use crate::analysis::constant_channels::{channel_constants, compensation};
use crate::analysis::Shapes;
use crate::error::Result;
use crate::ir::Model;
use crate::ops::channel::{Link, Port};

/// Classes of prunable groups whose channels are dead.
pub fn plan_dead(model: &Model, groups: &ChannelGroups, shapes: &Shapes) -> Result<Vec<usize>> {
    let g = &model.graph;
    let constants = channel_constants(model, groups);
    let mut dead = vec![true; groups.class_atoms.len()];
    for (&n, links) in &groups.links {
        let node = g.node(n);
        for l in links {
            let Link::Consume { from } = l else { continue };
            let Port::In(p) = from.port else { continue };
            let Some(v) = node.input(p) else { continue };
            let Some(atoms) = groups.slots.get(&(v, from.axis)) else {
                continue;
            };
            let mut cache: HashMap<u64, bool> = HashMap::new();
            for (pos, &a) in atoms.iter().enumerate() {
                let class = groups.class_of[a];
                if !dead[class] {
                    continue;
                }
                dead[class] = match constants.get((v, from.axis), pos) {
                    None => false,
                    Some(0.0) => true,
                    Some(c) => *cache.entry(c.to_bits() ^ pos as u64).or_insert_with(|| {
                        matches!(compensation(g, shapes, n, *from, &[(pos, c)]), Ok(Some(_)))
                    }),
                };
            }
        }
    }
    let mut out = Vec::new();
    for grp in groups.groups.iter().filter(|g| g.prunable()) {
        let mut d: Vec<usize> = grp.classes.iter().copied().filter(|c| dead[*c]).collect();
        if d.len() == grp.classes.len() {
            d.remove(0); // never empty a layer
        }
        out.extend(d);
    }
    let mut out = groups.take_without_emptying(out);
    out.sort_unstable();
    Ok(out)
}

/// The [`plan_dead`] selector: dead channels of the model as it is.
#[derive(Clone, Copy, Debug)]
pub struct Dead;

impl super::Selector for Dead {
    fn select(&mut self, round: super::Round) -> Result<super::Choice> {
        Ok(super::Choice::classes(plan_dead(
            round.model,
            round.groups,
            round.shapes,
        )?))
    }
}
