//! Dead channels: those whose every consumer reads a compile-time constant that is zero or that
//! the consumer can absorb exactly (bias compensation) — what sparse training leaves behind
//! (all-zero filters, BatchNormalization gamma = 0). Removing them changes no output. At least
//! one channel of every group is kept.
//!
//! Removal never makes the model bigger: where a consumer can absorb the constants only as a
//! map added to its output (a zero-padded convolution's borders: `C_out·H·W` values), the dead
//! channels needing that map are kept when the map holds at least as many parameters as
//! removing them saves, and a note says so.

use std::collections::{BTreeMap, HashMap};

use crate::analysis::channels::ChannelGroups;
use crate::analysis::constant_channels::{channel_constants, compensation};
use crate::analysis::masked_cost::MaskedCost;
use crate::analysis::Shapes;
use crate::error::Result;
use crate::ir::{Model, NodeId};
use crate::ops::channel::{Compensation, Link, Port};

/// Classes of prunable groups whose channels are dead, and notes on dead channels kept
/// because removing them would grow the model.
pub fn plan_dead(
    model: &Model,
    groups: &ChannelGroups,
    shapes: &Shapes,
) -> Result<(Vec<usize>, Vec<String>)> {
    let g = &model.graph;
    let constants = channel_constants(model, groups);
    let mut dead = vec![true; groups.class_atoms.len()];
    // Consumers that would need an output map, with its size, and the classes needing each.
    let mut maps: BTreeMap<NodeId, u64> = BTreeMap::new();
    let mut needs: Vec<Vec<NodeId>> = vec![Vec::new(); dead.len()];
    for (&n, links) in &groups.links {
        let node = g.node(n);
        for l in links {
            let Link::Consume { from } = l else { continue };
            let Port::In(p) = from.port else { continue };
            let Some(v) = node.input(p) else { continue };
            let Some(atoms) = groups.slots.get(&(v, from.axis)) else {
                continue;
            };
            // Per constant and position: `None` not absorbable, else the output map's size (0:
            // absorbed by the bias).
            let mut cache: HashMap<u64, Option<u64>> = HashMap::new();
            for (pos, &a) in atoms.iter().enumerate() {
                let class = groups.class_of[a];
                if !dead[class] {
                    continue;
                }
                dead[class] = match constants.get((v, from.axis), pos) {
                    None => false,
                    Some(0.0) => true,
                    Some(c) => {
                        let cost = *cache.entry(c.to_bits() ^ pos as u64).or_insert_with(|| {
                            match compensation(g, shapes, n, *from, &[(pos, c)]) {
                                Ok(Some(Compensation::AddToOutput(t))) => Some(t.len() as u64),
                                Ok(Some(_)) => Some(0),
                                _ => None,
                            }
                        });
                        if let Some(len) = cost.filter(|&l| l > 0) {
                            maps.insert(n, len);
                            needs[class].push(n);
                        }
                        cost.is_some()
                    }
                };
            }
        }
    }
    let notes = keep_where_maps_cost_more(model, groups, shapes, &maps, &needs, &mut dead)?;
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
    Ok((out, notes))
}

/// Marks as kept the dead classes needing an output map at a consumer whose map (`maps`)
/// holds at least as many parameters as removing those classes saves; one note per consumer.
fn keep_where_maps_cost_more(
    model: &Model,
    groups: &ChannelGroups,
    shapes: &Shapes,
    maps: &BTreeMap<NodeId, u64>,
    needs: &[Vec<NodeId>],
    dead: &mut [bool],
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    if maps.is_empty() {
        return Ok(notes);
    }
    let cost = MaskedCost::new(model, groups, shapes)?;
    let params = cost.original().1;
    for (&n, &map) in maps {
        let classes: Vec<usize> = (0..dead.len())
            .filter(|&c| dead[c] && needs[c].contains(&n))
            .collect();
        if classes.is_empty() {
            continue;
        }
        let saved = params.saturating_sub(cost.estimate_classes(&classes).1);
        if map >= saved {
            for &c in &classes {
                dead[c] = false;
            }
            let node = model.graph.node(n);
            notes.push(format!(
                "kept {} dead channel(s) feeding '{}' ({}): removing them saves {saved} \
                 parameters, absorbing their constants needs a {map}-value output map",
                classes.len(),
                node.name,
                node.op_type
            ));
        }
    }
    Ok(notes)
}

/// The [`plan_dead`] selector: dead channels of the model as it is.
#[derive(Clone, Copy, Debug)]
pub struct Dead;

impl super::Selector for Dead {
    fn select(&mut self, round: super::Round) -> Result<super::Choice> {
        let (classes, notes) = plan_dead(round.model, round.groups, round.shapes)?;
        Ok(super::Choice {
            notes,
            ..super::Choice::classes(classes)
        })
    }
}
