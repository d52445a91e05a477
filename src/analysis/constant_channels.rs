//! Which channels are compile-time constants: for every position of every tracked slot, the
//! value the channel holds everywhere, when it provably does not depend on the input (an
//! all-zero filter gives its bias; BatchNormalization with gamma = 0 gives beta; ReLU of a
//! constant is a constant; data movement keeps constants).
//!
//! Driven by the channel links of [`super::channels`] and each op's
//! [`crate::ops::Op::channel_constant`]; ops that do not answer make the channel non-constant
//! (conservative). Reads the IR only.

use std::collections::HashMap;

use super::channels::ChannelGroups;
use super::Shapes;
use crate::error::Result;
use crate::ir::{Graph, Model, Node, NodeId, Tensor, ValueId};
use crate::ops;
use crate::ops::channel::{CompensateCx, Compensation, ConstCx, Link, Map, Port, Slot};

/// Constant value (when provable) at each position of each tracked slot.
#[derive(Clone, Debug, Default)]
pub struct ChannelConstants {
    /// By `(value, axis)`, one entry per position.
    pub slots: HashMap<(ValueId, usize), Vec<Option<f64>>>,
}

impl ChannelConstants {
    /// The constant at a position, if any.
    pub fn get(&self, key: (ValueId, usize), pos: usize) -> Option<f64> {
        self.slots.get(&key)?.get(pos).copied().flatten()
    }
}

/// What consumer `n` must add to its output to make up for removed constant channels
/// `constants` (`(position, value)` of its input `slot`); `None` when its op cannot.
pub fn compensation(
    g: &Graph,
    shapes: &Shapes,
    n: NodeId,
    slot: Slot,
    constants: &[(usize, f64)],
) -> Result<Option<Compensation>> {
    let node = g.node(n);
    let Some(op) = ops::lookup(&node.domain, &node.op_type) else {
        return Ok(None);
    };
    let ins = shapes.inputs_of(g, n);
    let outs = shapes.outputs_of(g, n);
    let consts = g.const_inputs(node);
    op.channel_compensation(&CompensateCx {
        node,
        inputs: &ins,
        outputs: &outs,
        slot,
        constants,
        consts: &consts,
    })
}

/// The value of `t` (decoded as `vals`) along `axis` at `index` when that slice is uniform,
/// and whether it is all zero.
fn slice_value(t: &Tensor, vals: &[f64], axis: usize, index: usize) -> (Option<f64>, bool) {
    let shape = t.shape();
    if vals.len() != t.len() {
        return (None, false);
    }
    if t.len() == 1 {
        return (Some(vals[0]), vals[0] == 0.0);
    }
    let Some(&len) = shape.get(axis) else {
        return (None, false);
    };
    if index >= len {
        return (None, false);
    }
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let first = vals[index * inner];
    let (mut uniform, mut zero) = (true, true);
    for o in 0..outer {
        let base = (o * len + index) * inner;
        for &v in &vals[base..base + inner] {
            uniform &= v == first;
            zero &= v == 0.0;
        }
    }
    (uniform.then_some(first), zero)
}

fn index_of(map: &Map, pos: usize) -> Option<usize> {
    match map {
        Map::Identity => Some(pos),
        Map::Index(m) => m.get(pos).copied().flatten(),
    }
}

/// The tracked output slots `node` defines through its `links`, with their length, in link
/// order.
fn out_slots(node: &Node, links: &[Link], groups: &ChannelGroups) -> Vec<(Slot, usize)> {
    let mut out_slots: Vec<(Slot, usize)> = Vec::new();
    for l in links {
        let to = match l {
            Link::Create { to, .. } | Link::Pass { to, .. } | Link::Assemble { to, .. } => *to,
            _ => continue,
        };
        let Port::Out(p) = to.port else { continue };
        let Some(len) = node
            .output(p)
            .and_then(|v| groups.slots.get(&(v, to.axis)))
            .map(Vec::len)
        else {
            continue;
        };
        if !out_slots.iter().any(|(s, _)| *s == to) {
            out_slots.push((to, len));
        }
    }
    out_slots
}

/// Computes the constant channels of every tracked slot.
pub fn channel_constants(model: &Model, groups: &ChannelGroups) -> ChannelConstants {
    let g = &model.graph;
    let mut out = ChannelConstants::default();
    let Ok(order) = g.topo_order() else {
        return out;
    };
    for n in order {
        let Some(links) = groups.links.get(&n) else {
            continue;
        };
        let node = g.node(n);
        let op = ops::lookup(&node.domain, &node.op_type);
        let n_in = node.inputs.len();
        // Constant inputs decoded once per node.
        let decoded: Vec<Option<Vec<f64>>> = node
            .inputs
            .iter()
            .map(|v| v.and_then(|v| g.init(v)).and_then(Tensor::to_f64_vec))
            .collect();
        for (slot, len) in out_slots(node, links, groups) {
            let Port::Out(op_port) = slot.port else {
                continue;
            };
            let Some(v) = node.output(op_port) else {
                continue;
            };
            let mut values = vec![None; len];
            for (j, value) in values.iter_mut().enumerate() {
                let mut inputs: Vec<Option<f64>> = vec![None; n_in];
                let mut zero = vec![false; n_in];
                let mut fresh = false;
                let mut assembled = None;
                for (p, inp) in node.inputs.iter().enumerate() {
                    if let Some(t) = inp.and_then(|v| g.init(v)) {
                        if t.len() == 1 {
                            inputs[p] = t.to_f64_vec().and_then(|v| v.first().copied());
                            zero[p] = inputs[p] == Some(0.0);
                        }
                    }
                }
                for l in links {
                    match l {
                        Link::Pass { from, to, map } if *to == slot => {
                            let Port::In(p) = from.port else { continue };
                            match index_of(map, j) {
                                Some(i) => {
                                    inputs[p] =
                                        node.input(p).and_then(|iv| out.get((iv, from.axis), i));
                                }
                                None => fresh = true,
                            }
                        }
                        Link::Assemble { to, parts } if *to == slot => {
                            let mut off = 0;
                            for (s, plen) in parts {
                                if j < off + plen {
                                    assembled = Some(s.and_then(|s| {
                                        let Port::In(p) = s.port else { return None };
                                        node.input(p).and_then(|iv| out.get((iv, s.axis), j - off))
                                    }));
                                    break;
                                }
                                off += plen;
                            }
                        }
                        Link::Member {
                            input,
                            axis,
                            slot: ms,
                            map,
                        } if *ms == slot => {
                            let Some(t) = node.input(*input).and_then(|v| g.init(v)) else {
                                continue;
                            };
                            let Some(i) = index_of(map, j) else { continue };
                            let Some(vals) = decoded.get(*input).and_then(Option::as_ref) else {
                                continue;
                            };
                            let (val, z) = slice_value(t, vals, *axis, i);
                            inputs[*input] = val;
                            zero[*input] = z;
                        }
                        _ => {}
                    }
                }
                *value = match assembled {
                    Some(a) => a,
                    None => op.and_then(|op| {
                        op.channel_constant(&ConstCx {
                            node,
                            inputs: &inputs,
                            zero: &zero,
                            fresh,
                        })
                    }),
                };
            }
            out.slots.insert((v, slot.axis), values);
        }
    }
    out
}
