//! MACs and parameters of a model *as if* some channel classes were removed, without touching
//! the model: the fast inner loop of budget allocation ([`crate::plan::allocate()`]).
//!
//! [`MaskedCost::new`] precomputes, once per model, which classes sit in every tracked slot
//! `(value, axis)` and in every member constant's sliced axis (see
//! [`crate::analysis::channels`]), and the cost of every node. [`MaskedCost::estimate`] then
//! counts the channels each slot and member loses, recomputes the cost of the nodes that touch
//! a shrunk slot or member by calling the op's own [`crate::ops::Op::cost`] on shape-only facts
//! with the reduced dims, and keeps the precomputed cost of every other node. Parameters are the
//! initializer elements with member constants reduced, counted the way
//! [`crate::passes::remove_channels()`] leaves them (a constant shared with a reader that is not
//! sliced stays, next to the sliced copy).
//!
//! It matches [`crate::analysis::costs`] of the pruned model exactly for MACs; for parameters
//! it does not count the compensation constants that removing *constant* channels may add, nor
//! the rare new constants an op's channel rewrite appends. It does not check that a removal is
//! allowed (blocked groups, emptied tensors): callers choose valid removals.

use std::collections::HashMap;

use crate::analysis::channels::ChannelGroups;
use crate::analysis::Shapes;
use crate::error::Result;
use crate::ir::{Dim, Fact, Graph, Model, NodeId, ValueId};
use crate::ops::channel::{Map, Port, RewriteCx, Slot};
use crate::ops::{self, Cost, Cx, Op};

/// Where a port's axis gets its cut from: an index into the profiles.
type Profile = usize;

/// A node whose cost may change: its ports that follow a profile.
struct Touched {
    node: NodeId,
    op: &'static dyn Op,
    /// Precomputed MACs.
    macs: u64,
    /// `(port, axis, profile)` of inputs (slots and members).
    inputs: Vec<(usize, usize, Profile)>,
    /// `(port, axis, profile)` of outputs.
    outputs: Vec<(usize, usize, Profile)>,
    /// For nodes whose channel rewrite replaces constant inputs (Reshape targets, Split
    /// sizes, ...): each slot with the class at every position, to build keep-masks.
    rewrite: Option<Vec<(Slot, Profile, Vec<u32>)>>,
}

impl Touched {
    /// Whether `cut` shrinks any of its ports.
    fn changed(&self, cut: &[u64]) -> bool {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .any(|x| cut[x.2] > 0)
    }
}

/// One reader of a member initializer, with the axes it slices.
struct ParamUse {
    /// `(axis, profile)`.
    axes: Vec<(usize, Profile)>,
}

/// An initializer sliced by at least one member.
struct Param {
    dims: Vec<u64>,
    uses: Vec<ParamUse>,
    /// Whether the original stays whatever is sliced (read by a node without members, or a
    /// graph output; initializers listed as IR-3 graph inputs go when unused).
    pinned: bool,
}

/// Precomputed cost tables of one model; see the module documentation.
pub struct MaskedCost<'a> {
    model: &'a Model,
    shapes: &'a Shapes,
    n_classes: usize,
    /// Per class: `(profile, positions or indices of that class in it)`.
    class_profiles: Vec<Vec<(Profile, u32)>>,
    n_profiles: usize,
    touched: Vec<Touched>,
    /// Index in `touched` of each node there.
    touched_at: HashMap<NodeId, usize>,
    params: Vec<Param>,
    macs: u64,
    total_params: u64,
}

impl<'a> MaskedCost<'a> {
    /// Precomputes the tables. `groups` and `shapes` must have been computed on `model` as it
    /// is. Costs nothing to keep: it borrows the model.
    pub fn new(model: &'a Model, groups: &ChannelGroups, shapes: &'a Shapes) -> Result<Self> {
        let g = &model.graph;
        let n_classes = groups.class_atoms.len();
        let mut profiles = Profiles::default();
        let slot_profile = slot_profiles(groups, &mut profiles);
        let member_axes = member_profiles(g, groups, &mut profiles);
        let mut class_profiles: Vec<Vec<(Profile, u32)>> = vec![Vec::new(); n_classes];
        for (p, counts) in profiles.list.iter().enumerate() {
            for &(c, n) in counts {
                if let Some(cp) = class_profiles.get_mut(c as usize) {
                    cp.push((p, n));
                }
            }
        }
        let (macs, touched) = touched_nodes(model, groups, shapes, &slot_profile, &member_axes)?;
        let total_params: u64 = g
            .initializers
            .iter()
            .filter_map(|&v| g.init(v))
            .map(|t| t.len() as u64)
            .sum();
        Ok(MaskedCost {
            model,
            shapes,
            n_classes,
            class_profiles,
            n_profiles: profiles.list.len(),
            touched_at: touched
                .iter()
                .enumerate()
                .map(|(i, t)| (t.node, i))
                .collect(),
            touched,
            params: sliced_params(g, &member_axes),
            macs,
            total_params,
        })
    }

    /// MACs and parameters of the model as it is.
    pub fn original(&self) -> (u64, u64) {
        (self.macs, self.total_params)
    }

    /// Number of classes the tables were built for (the length `estimate` expects).
    pub fn classes(&self) -> usize {
        self.n_classes
    }

    /// MACs and parameters after removing the classes marked `true` (indexed like the
    /// analysis' classes; missing entries count as kept). Does not validate the removal.
    pub fn estimate(&self, removed: &[bool]) -> (u64, u64) {
        let cut = self.cuts(removed);
        let g = &self.model.graph;
        let opset = self.model.opset();
        let mut macs = self.macs;
        let mut replaced: Vec<(NodeId, usize, u64)> = Vec::new();
        for t in &self.touched {
            if !t.changed(&cut) {
                continue;
            }
            let node = g.node(t.node);
            if let Some(slots) = &t.rewrite {
                self.rewritten_inputs(t, slots, removed, &cut, &mut replaced);
            }
            let (ins_owned, outs_owned) = self.reduced_facts(t, &cut);
            let ins: Vec<Option<&Fact>> = ins_owned
                .iter()
                .enumerate()
                .map(|(p, o)| {
                    o.as_ref()
                        .or_else(|| node.input(p).and_then(|v| self.shapes.get(v)))
                })
                .collect();
            let outs: Vec<Option<&Fact>> = outs_owned
                .iter()
                .enumerate()
                .map(|(p, o)| {
                    o.as_ref()
                        .or_else(|| node.output(p).and_then(|v| self.shapes.get(v)))
                })
                .collect();
            let Cost { macs: now, .. } = t.op.cost(
                &Cx {
                    node,
                    inputs: &ins,
                    opset,
                },
                &outs,
            );
            // A saturated total stays saturated (see `cost`): its parts are not known.
            if macs != u64::MAX {
                macs = macs.saturating_sub(t.macs).saturating_add(now);
            }
        }
        let mut params = self.total_params;
        if !replaced.is_empty() {
            params = params.saturating_add_signed(replacement_delta(g, &replaced));
        }
        for p in &self.params {
            let full: u64 = p.dims.iter().product();
            let mut sliced = 0u64;
            let mut unsliced = p.pinned;
            let mut any = false;
            for u in &p.uses {
                if !u.axes.iter().any(|(_, prof)| cut[*prof] > 0) {
                    unsliced = true;
                    continue;
                }
                any = true;
                let mut dims = p.dims.clone();
                // Several members on one axis name the same indices: the largest cut applies.
                let mut per_axis: Vec<u64> = vec![0; dims.len()];
                for &(a, prof) in &u.axes {
                    if let Some(x) = per_axis.get_mut(a) {
                        *x = (*x).max(cut[prof]);
                    }
                }
                for (d, k) in dims.iter_mut().zip(per_axis) {
                    *d = d.saturating_sub(k);
                }
                sliced += dims.iter().product::<u64>();
            }
            if any {
                params = params - full + sliced + if unsliced { full } else { 0 };
            }
        }
        (macs, params)
    }

    /// Per profile, how many of its positions the classes marked `true` take away.
    fn cuts(&self, removed: &[bool]) -> Vec<u64> {
        let mut cut = vec![0u64; self.n_profiles];
        for (c, _) in removed.iter().enumerate().filter(|(_, r)| **r) {
            for &(p, n) in self.class_profiles.get(c).map(Vec::as_slice).unwrap_or(&[]) {
                cut[p] += u64::from(n);
            }
        }
        cut
    }

    /// The facts of `t`'s inputs and outputs that `cut` shrinks, shrunk (`None` where a port
    /// is not cut or its shape is unknown).
    fn reduced_facts(&self, t: &Touched, cut: &[u64]) -> (Vec<Option<Fact>>, Vec<Option<Fact>>) {
        let node = self.model.graph.node(t.node);
        let reduce = |f: Option<&Fact>, ports: &[(usize, usize, Profile)], p: usize| {
            if !ports.iter().any(|x| x.0 == p && cut[x.2] > 0) {
                return None;
            }
            let f = f?;
            let mut shape = f.shape.clone()?;
            for &(_, axis, prof) in ports.iter().filter(|x| x.0 == p) {
                if let Some(Dim::Known(d)) = shape.get_mut(axis) {
                    *d = d.saturating_sub(cut[prof] as usize);
                }
            }
            Some(Fact::new(f.dtype, shape))
        };
        let ins = (0..node.inputs.len())
            .map(|p| reduce(node.input(p).and_then(|v| self.shapes.get(v)), &t.inputs, p))
            .collect();
        let outs = (0..node.outputs.len())
            .map(|p| {
                reduce(
                    node.output(p).and_then(|v| self.shapes.get(v)),
                    &t.outputs,
                    p,
                )
            })
            .collect();
        (ins, outs)
    }

    /// The length of axis 1 (channels, NCHW) of input 0 and of output 0 of each of `nodes`
    /// after removing the classes marked `true`; `None` where a shape is not known.
    pub fn channels_after(
        &self,
        removed: &[bool],
        nodes: &[NodeId],
    ) -> Vec<(Option<usize>, Option<usize>)> {
        let cut = self.cuts(removed);
        let g = &self.model.graph;
        let axis1 = |f: Option<&Fact>| match f?.shape.as_ref()?.get(1)? {
            Dim::Known(d) => Some(*d),
            _ => None,
        };
        nodes
            .iter()
            .map(|&n| {
                let node = g.node(n);
                let full_in = node.input(0).and_then(|v| self.shapes.get(v));
                let full_out = node.output(0).and_then(|v| self.shapes.get(v));
                match self.touched_at.get(&n).map(|&i| &self.touched[i]) {
                    Some(t) if t.changed(&cut) => {
                        let (ins, outs) = self.reduced_facts(t, &cut);
                        let i = ins.first().and_then(Option::as_ref).or(full_in);
                        let o = outs.first().and_then(Option::as_ref).or(full_out);
                        (axis1(i), axis1(o))
                    }
                    _ => (axis1(full_in), axis1(full_out)),
                }
            })
            .collect()
    }

    /// The constant inputs node `t` replaces under this removal, as `(node, port, elements)`.
    /// A rewrite that fails counts nothing (the removal pass would refuse the removal).
    fn rewritten_inputs(
        &self,
        t: &Touched,
        slots: &[(Slot, Profile, Vec<u32>)],
        removed: &[bool],
        cut: &[u64],
        out: &mut Vec<(NodeId, usize, u64)>,
    ) {
        let kept: Vec<(Slot, Vec<bool>)> = slots
            .iter()
            .filter(|(_, prof, _)| cut[*prof] > 0)
            .map(|(slot, _, classes)| {
                let mask = classes
                    .iter()
                    .map(|c| !removed.get(*c as usize).copied().unwrap_or(false))
                    .collect();
                (*slot, mask)
            })
            .collect();
        if kept.is_empty() {
            return;
        }
        let g = &self.model.graph;
        let ins = self.shapes.inputs_of(g, t.node);
        let outs = self.shapes.outputs_of(g, t.node);
        let cx = RewriteCx {
            node: g.node(t.node),
            inputs: &ins,
            outputs: &outs,
            kept: &kept,
            opset: self.model.opset(),
        };
        if let Ok(rw) = t.op.rewrite_channels(&cx) {
            out.extend(
                rw.inputs
                    .iter()
                    .map(|(port, tensor)| (t.node, *port, tensor.len() as u64)),
            );
        }
    }

    /// [`estimate`](Self::estimate) for a list of classes (out-of-range ones are ignored).
    pub fn estimate_classes(&self, classes: &[usize]) -> (u64, u64) {
        self.estimate(&self.flags(classes))
    }

    /// The removal flags (one per class) of a list of classes; out-of-range ones are ignored.
    pub fn flags(&self, classes: &[usize]) -> Vec<bool> {
        let mut removed = vec![false; self.n_classes];
        for &c in classes {
            if let Some(r) = removed.get_mut(c) {
                *r = true;
            }
        }
        removed
    }
}

/// Profiles: distinct multisets of classes `(class, count)`, shared by slots and members that
/// cut alike, numbered in the order first seen.
#[derive(Default)]
struct Profiles {
    index: HashMap<Vec<(u32, u32)>, Profile>,
    list: Vec<Vec<(u32, u32)>>,
}

impl Profiles {
    /// The profile of these class counts (a new one when not seen before).
    fn intern(&mut self, counts: HashMap<usize, u32>) -> Profile {
        let mut v: Vec<(u32, u32)> = counts.into_iter().map(|(c, n)| (c as u32, n)).collect();
        v.sort_unstable();
        *self.index.entry(v.clone()).or_insert_with(|| {
            self.list.push(v);
            self.list.len() - 1
        })
    }
}

/// `(axis, profile)` of every tracked slot, by value (slots interned in key order).
fn slot_profiles(
    groups: &ChannelGroups,
    profiles: &mut Profiles,
) -> HashMap<ValueId, Vec<(usize, Profile)>> {
    let mut slot_profile: HashMap<ValueId, Vec<(usize, Profile)>> = HashMap::new();
    let mut keys: Vec<&(ValueId, usize)> = groups.slots.keys().collect();
    keys.sort();
    for key in keys {
        let mut counts: HashMap<usize, u32> = HashMap::new();
        for &a in &groups.slots[key] {
            *counts.entry(groups.class_of[a]).or_default() += 1;
        }
        slot_profile
            .entry(key.0)
            .or_default()
            .push((key.1, profiles.intern(counts)));
    }
    slot_profile
}

/// `(axis, profile)` of every member constant, by `(node, input)`: distinct indices per class
/// (positions sharing an index go together).
fn member_profiles(
    g: &Graph,
    groups: &ChannelGroups,
    profiles: &mut Profiles,
) -> HashMap<(NodeId, usize), Vec<(usize, Profile)>> {
    let mut member_axes: HashMap<(NodeId, usize), Vec<(usize, Profile)>> = HashMap::new();
    for m in &groups.members {
        let node = g.node(m.node);
        let slot_value = match m.slot.port {
            Port::In(p) => node.input(p),
            Port::Out(p) => node.output(p),
        };
        let Some(atoms) = slot_value.and_then(|v| groups.slots.get(&(v, m.slot.axis))) else {
            continue;
        };
        let mut class_at: HashMap<usize, usize> = HashMap::new();
        for (pos, &a) in atoms.iter().enumerate() {
            let idx = match &m.map {
                Map::Identity => Some(pos),
                Map::Index(ix) => ix.get(pos).copied().flatten(),
            };
            if let Some(i) = idx {
                class_at.entry(i).or_insert(groups.class_of[a]);
            }
        }
        let mut counts: HashMap<usize, u32> = HashMap::new();
        for c in class_at.into_values() {
            *counts.entry(c).or_default() += 1;
        }
        member_axes
            .entry((m.node, m.input))
            .or_default()
            .push((m.axis, profiles.intern(counts)));
    }
    member_axes
}

/// Nodes: the total of their precomputed MACs, and those whose cost may change (with the
/// ports that follow a profile), in topological order.
fn touched_nodes(
    model: &Model,
    groups: &ChannelGroups,
    shapes: &Shapes,
    slot_profile: &HashMap<ValueId, Vec<(usize, Profile)>>,
    member_axes: &HashMap<(NodeId, usize), Vec<(usize, Profile)>>,
) -> Result<(u64, Vec<Touched>)> {
    let g = &model.graph;
    let mut macs = 0u64;
    let mut touched = Vec::new();
    for n in g.topo_order()? {
        let node = g.node(n);
        let Some(op) = ops::lookup(&node.domain, &node.op_type) else {
            continue;
        };
        let ins = shapes.inputs_of(g, n);
        let outs = shapes.outputs_of(g, n);
        let cost = op
            .cost(
                &Cx {
                    node,
                    inputs: &ins,
                    opset: model.opset(),
                },
                &outs,
            )
            .macs;
        macs = macs.saturating_add(cost);
        let mut t = Touched {
            node: n,
            op,
            macs: cost,
            inputs: Vec::new(),
            outputs: Vec::new(),
            rewrite: None,
        };
        for (p, v) in node.inputs.iter().enumerate() {
            let Some(v) = v else { continue };
            for &(axis, prof) in slot_profile.get(v).map(Vec::as_slice).unwrap_or(&[]) {
                t.inputs.push((p, axis, prof));
            }
            if let Some(axes) = member_axes.get(&(n, p)) {
                t.inputs.extend(axes.iter().map(|&(a, prof)| (p, a, prof)));
            }
        }
        for (p, v) in node.outputs.iter().enumerate() {
            let Some(v) = v else { continue };
            for &(axis, prof) in slot_profile.get(v).map(Vec::as_slice).unwrap_or(&[]) {
                t.outputs.push((p, axis, prof));
            }
        }
        if !t.inputs.is_empty() || !t.outputs.is_empty() {
            t.inputs.sort_unstable();
            t.outputs.sort_unstable();
            t.rewrite = rewrite_slots(model, groups, shapes, n, op, slot_profile);
            touched.push(t);
        }
    }
    Ok((macs, touched))
}

/// Parameters: every initializer sliced by some member, with its readers, in value order.
fn sliced_params(
    g: &Graph,
    member_axes: &HashMap<(NodeId, usize), Vec<(usize, Profile)>>,
) -> Vec<Param> {
    let mut by_value: HashMap<ValueId, Vec<(NodeId, usize)>> = HashMap::new();
    for &(n, p) in member_axes.keys() {
        if let Some(v) = g.node(n).input(p).filter(|v| g.init(*v).is_some()) {
            by_value.entry(v).or_default().push((n, p));
        }
    }
    let mut values: Vec<ValueId> = by_value.keys().copied().collect();
    values.sort();
    let mut params = Vec::new();
    for v in values {
        let Some(t) = g.init(v) else { continue };
        let mut readers = by_value.remove(&v).unwrap_or_default();
        readers.sort_unstable();
        let sliced_everywhere = g
            .value(v)
            .uses
            .iter()
            .all(|u| readers.binary_search(u).is_ok());
        params.push(Param {
            dims: t.shape().iter().map(|&d| d as u64).collect(),
            uses: readers
                .iter()
                .map(|r| ParamUse {
                    axes: member_axes.get(r).cloned().unwrap_or_default(),
                })
                .collect(),
            pinned: !sliced_everywhere || g.outputs.contains(&v),
        });
    }
    params
}

/// The slots of node `n` with the class at each position, when its op's channel rewrite
/// replaces constant inputs (probed with every slot losing its first channel; a probe that
/// fails counts as replacing). `None` for nodes whose rewrite only sets attributes.
fn rewrite_slots(
    model: &Model,
    groups: &ChannelGroups,
    shapes: &Shapes,
    n: NodeId,
    op: &dyn Op,
    slot_profile: &HashMap<ValueId, Vec<(usize, Profile)>>,
) -> Option<Vec<(Slot, Profile, Vec<u32>)>> {
    let g = &model.graph;
    let node = g.node(n);
    let mut slots = Vec::new();
    let ports = node
        .inputs
        .iter()
        .enumerate()
        .map(|(p, v)| (Port::In(p), v))
        .chain(
            node.outputs
                .iter()
                .enumerate()
                .map(|(p, v)| (Port::Out(p), v)),
        );
    for (port, v) in ports {
        let Some(v) = v else { continue };
        for &(axis, prof) in slot_profile.get(v).map(Vec::as_slice).unwrap_or(&[]) {
            let Some(atoms) = groups.slots.get(&(*v, axis)) else {
                continue;
            };
            let classes: Vec<u32> = atoms.iter().map(|a| groups.class_of[*a] as u32).collect();
            slots.push((Slot { port, axis }, prof, classes));
        }
    }
    slots.sort_by_key(|s| s.0);
    let probe: Vec<(Slot, Vec<bool>)> = slots
        .iter()
        .map(|(slot, _, classes)| {
            let mask = (0..classes.len()).map(|i| i > 0).collect();
            (*slot, mask)
        })
        .collect();
    let ins = shapes.inputs_of(g, n);
    let outs = shapes.outputs_of(g, n);
    let cx = RewriteCx {
        node,
        inputs: &ins,
        outputs: &outs,
        kept: &probe,
        opset: model.opset(),
    };
    match op.rewrite_channels(&cx) {
        Ok(rw) if rw.inputs.is_empty() => None,
        _ => Some(slots),
    }
}

/// Change of the initializer element count when nodes' constant inputs are replaced as
/// [`crate::passes::remove_channels()`] does (in place when the node is the only reader, else as
/// a new constant) and dead-code elimination then drops what no longer feeds an output (the
/// old constant, the shape arithmetic that computed it).
fn replacement_delta(g: &Graph, replaced: &[(NodeId, usize, u64)]) -> i64 {
    let mut delta = 0i64;
    let mut lost: HashMap<ValueId, usize> = HashMap::new();
    let mut work = Vec::new();
    for &(n, port, len) in replaced {
        let Some(v) = g.node(n).input(port) else {
            delta += len as i64;
            continue;
        };
        let val = g.value(v);
        let sole = val.uses.iter().all(|(u, _)| *u == n)
            && !g.outputs.contains(&v)
            && !g.inputs.contains(&v);
        match g.init(v) {
            Some(t) if sole => delta += len as i64 - t.len() as i64,
            _ => {
                delta += len as i64;
                *lost.entry(v).or_default() += 1;
                work.push(v);
            }
        }
    }
    let mut dead_nodes: Vec<NodeId> = Vec::new();
    let mut dead_values: Vec<ValueId> = Vec::new();
    while let Some(v) = work.pop() {
        let val = g.value(v);
        if lost.get(&v).copied().unwrap_or(0) < val.uses.len()
            || g.outputs.contains(&v)
            || dead_values.contains(&v)
        {
            continue;
        }
        dead_values.push(v);
        if let Some(t) = g.init(v) {
            if !g.is_runtime_input(v) {
                delta -= t.len() as i64;
            }
            continue;
        }
        let Some((p, _)) = val.producer else { continue };
        if dead_nodes.contains(&p) {
            continue;
        }
        let node = g.node(p);
        let all_dead = node.outputs.iter().flatten().all(|o| {
            lost.get(o).copied().unwrap_or(0) >= g.value(*o).uses.len() && !g.outputs.contains(o)
        });
        if all_dead {
            dead_nodes.push(p);
            for i in node.inputs.iter().flatten().chain(node.captures.iter()) {
                *lost.entry(*i).or_default() += 1;
                work.push(*i);
            }
        }
    }
    delta
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{channel_groups, costs, infer_shapes};
    use crate::ir::graph::{attr_int, attr_ints};
    use crate::ir::Tensor;
    use crate::ops::channel::testing::Net;
    use crate::passes::remove_channels;

    /// `x → Conv(8) → BN → Relu → depthwise Conv → Concat(·, Conv(4)) → Conv(6) → MaxPool →
    /// Flatten → Gemm(5)`, with the BN scale shared by nothing else.
    fn net() -> Model {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 6, 6]);
        let a = n.conv_k(x, 3, 8, 3);
        let stats: Vec<ValueId> = (0..3).map(|_| n.floats(&[8])).collect();
        let var =
            n.g.add_initializer("var", Tensor::from_f32(vec![8], &[0.5; 8]));
        let bn = n.op(
            "BatchNormalization",
            &[a, stats[0], stats[1], stats[2], var],
            vec![],
        );
        let r = n.op("Relu", &[bn], vec![]);
        let (dw, db) = (n.floats(&[8, 1, 3, 3]), n.floats(&[8]));
        let d = n.op(
            "Conv",
            &[r, dw, db],
            vec![attr_int("group", 8), attr_ints("pads", &[1, 1, 1, 1])],
        );
        let b = n.conv(x, 3, 4);
        let cat = n.op("Concat", &[d, b], vec![attr_int("axis", 1)]);
        let c = n.conv_k(cat, 12, 6, 3);
        let pool = vec![
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("strides", &[2, 2]),
        ];
        let p = n.op("MaxPool", &[c], pool);
        let f = n.op("Flatten", &[p], vec![]);
        let (w, bias) = (n.floats(&[54, 5]), n.floats(&[5]));
        let y = n.op("Gemm", &[f, w, bias], vec![]);
        n.output(y);
        n.model(13)
    }

    #[test]
    fn estimate_matches_the_pruned_model() {
        let m = net();
        let shapes = infer_shapes(&m).unwrap();
        let cg = channel_groups(&m, &shapes).unwrap();
        let est = MaskedCost::new(&m, &cg, &shapes).unwrap();
        let c0 = costs(&m, &shapes).unwrap();
        assert_eq!(est.original(), (c0.macs, c0.params));
        assert_eq!(est.estimate(&vec![false; est.classes()]), est.original());
        let prunable: Vec<&crate::analysis::channels::Group> =
            cg.groups.iter().filter(|g| g.prunable()).collect();
        assert_eq!(prunable.len(), 3);
        for step in [2, 3, 5] {
            let classes: Vec<usize> = prunable
                .iter()
                .flat_map(|g| g.classes.iter().copied().step_by(step))
                .collect();
            let mut pruned = m.clone();
            remove_channels(&mut pruned, &cg, &shapes, &classes).unwrap();
            let after = costs(&pruned, &infer_shapes(&pruned).unwrap()).unwrap();
            let got = est.estimate_classes(&classes);
            assert_eq!(got, (after.macs, after.params), "every {step}th class");
            assert!(got.0 < c0.macs && got.1 < c0.params);
        }
    }
}
