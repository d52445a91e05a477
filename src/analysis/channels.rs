//! Channel dependency analysis: which channels of which tensors must be removed together.
//!
//! Every channel a node's weights create ([`Link::Create`]) or that a node adds as a constant
//! ([`Map::Index`] with `None`) is an *atom*. Walking the graph in topological order, each
//! tracked slot `(value, axis)` records which atom sits at each of its positions; ops move
//! atoms along through their declared [`Link`]s. Element-wise ops unite the atoms at equal
//! positions (residual adds, SE multiplies) and [`Link::Couple`] / [`Link::Tie`] unite atoms that can only go
//! together: one generic union-find over the ops' declarations. The result:
//!
//! - a *class* is a set of united atoms: the unit of removal (one "channel" of a group);
//! - a *group* is a set of producers (sources) connected through shared classes, with every
//!   consumer and member (weight slices, per-channel constants) touched by its classes.
//!
//! Fail closed: a tracked slot reaching a node that declares nothing for it, a [`Link::Block`],
//! or a graph output blocks its atoms' group, with a reason naming the node and op. This
//! analysis never mutates the IR; [`crate::passes::remove_channels()`] applies removals.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::Shapes;
use crate::error::Result;
use crate::ir::{Graph, Model, Node, NodeId, ValueId};
use crate::ops::channel::{Link, LinkCx, Map, Port, Slot};
use crate::ops::{self};

/// Index of an atom.
pub type AtomId = usize;

/// Where a group's channels come from.
#[derive(Clone, Debug, Serialize)]
pub struct Source {
    /// The node creating the channels.
    #[serde(skip)]
    pub node: NodeId,
    /// Its name.
    pub node_name: String,
    /// Its op.
    pub op: String,
    /// Output slot.
    #[serde(skip)]
    pub slot: Slot,
    /// Atoms of this source, by position.
    #[serde(skip)]
    pub atoms: Vec<AtomId>,
    /// Whether these are constant channels added by the node (e.g. Pad), not weights.
    pub constant: bool,
}

/// A constant sliced with a slot's channels, as declared by a [`Link::Member`].
#[derive(Clone, Debug)]
pub struct Member {
    /// The node.
    pub node: NodeId,
    /// Its constant input port.
    pub input: usize,
    /// Axis of that constant.
    pub axis: usize,
    /// The slot of the node it follows.
    pub slot: Slot,
    /// Position → index map.
    pub map: Map,
}

/// A dependency group.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    /// Group number (stable for the same model).
    pub id: usize,
    /// The classes (removable channels) of the group, in source order.
    #[serde(skip)]
    pub classes: Vec<usize>,
    /// Number of removable channels.
    pub channels: usize,
    /// Producers.
    pub sources: Vec<Source>,
    /// Consumer nodes (`name (op)`).
    pub consumers: Vec<String>,
    /// Member descriptions (`node (op) input k axis a`).
    pub members: Vec<String>,
    /// Why the group cannot be pruned (empty = prunable).
    pub blocked: Vec<String>,
}

impl Group {
    /// Whether channels of this group may be removed.
    pub fn prunable(&self) -> bool {
        self.blocked.is_empty() && self.channels > 1
    }
}

/// The analysis result: groups, and the tables the removal pass needs.
#[derive(Clone, Debug, Default)]
pub struct ChannelGroups {
    /// Dependency groups.
    pub groups: Vec<Group>,
    /// Class of every atom.
    pub class_of: Vec<usize>,
    /// Group of every class.
    pub group_of_class: Vec<usize>,
    /// Atoms of every class.
    pub class_atoms: Vec<Vec<AtomId>>,
    /// Atoms at each position of each tracked slot `(value, axis)`.
    pub slots: HashMap<(ValueId, usize), Vec<AtomId>>,
    /// The links each node declared (only nodes touching tracked slots).
    pub links: BTreeMap<NodeId, Vec<Link>>,
    /// Members, in node order.
    pub members: Vec<Member>,
}

impl ChannelGroups {
    /// Per class, the channels it takes from each tensor it sits in (the fewest over its
    /// tensors): 1 for a plain channel, a grouped convolution's channels per group for a
    /// whole group of it.
    pub fn class_widths(&self) -> Vec<usize> {
        let mut width = vec![usize::MAX; self.class_atoms.len()];
        let mut per: HashMap<usize, usize> = HashMap::new();
        for atoms in self.slots.values() {
            per.clear();
            for a in atoms {
                *per.entry(self.class_of[*a]).or_default() += 1;
            }
            for (&c, &k) in &per {
                if let Some(w) = width.get_mut(c) {
                    *w = (*w).min(k);
                }
            }
        }
        width
            .into_iter()
            .map(|w| if w == usize::MAX { 1 } else { w })
            .collect()
    }

    /// Per group (by id), the fewest channels a class of it takes from a tensor (see
    /// [`class_widths`](Self::class_widths)); 1 for a group without classes.
    pub fn group_widths(&self) -> Vec<usize> {
        let widths = self.class_widths();
        self.groups
            .iter()
            .map(|g| g.classes.iter().map(|c| widths[*c]).min().unwrap_or(1))
            .collect()
    }

    /// A tracked tensor that would keep no channel if `removed` classes went, as
    /// `(value, axis)`.
    pub fn emptied_slot(&self, removed: &[bool]) -> Option<(ValueId, usize)> {
        let mut keys: Vec<&(ValueId, usize)> = self.slots.keys().collect();
        keys.sort();
        keys.into_iter()
            .find(|k| {
                self.slots[*k]
                    .iter()
                    .all(|a| removed.get(self.class_of[*a]).copied().unwrap_or(false))
            })
            .copied()
    }

    /// Greedily takes classes from `candidates` (in order) while no tracked tensor would be
    /// left without channels; returns the taken ones.
    pub fn take_without_emptying(&self, candidates: impl IntoIterator<Item = usize>) -> Vec<usize> {
        let mut kept: HashMap<&(ValueId, usize), usize> =
            self.slots.iter().map(|(k, v)| (k, v.len())).collect();
        let mut per_class: HashMap<usize, Vec<&(ValueId, usize)>> = HashMap::new();
        for (k, atoms) in &self.slots {
            for a in atoms {
                per_class.entry(self.class_of[*a]).or_default().push(k);
            }
        }
        let mut out = Vec::new();
        for c in candidates {
            let hits = per_class.get(&c).map(Vec::as_slice).unwrap_or(&[]);
            let mut need: HashMap<&(ValueId, usize), usize> = HashMap::new();
            for k in hits {
                *need.entry(*k).or_default() += 1;
            }
            if need.iter().all(|(k, n)| kept[*k] > *n) {
                for (k, n) in need {
                    if let Some(v) = kept.get_mut(k) {
                        *v -= n;
                    }
                }
                out.push(c);
            }
        }
        out
    }

    /// Per class, whether it is among `classes` (the `removed` of [`ChannelGroups::keep_mask`]);
    /// indices past the classes are ignored.
    pub fn removed(&self, classes: &[usize]) -> Vec<bool> {
        let mut removed = vec![false; self.class_atoms.len()];
        for &c in classes {
            if let Some(r) = removed.get_mut(c) {
                *r = true;
            }
        }
        removed
    }

    /// Keep-mask of a tracked slot when the given classes are removed.
    pub fn keep_mask(&self, slot: (ValueId, usize), removed: &[bool]) -> Option<Vec<bool>> {
        let atoms = self.slots.get(&slot)?;
        Some(atoms.iter().map(|a| !removed[self.class_of[*a]]).collect())
    }
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            // Smaller root wins: deterministic.
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.0[hi] = lo;
        }
    }
}

struct Walk {
    uf: UnionFind,
    atom_source: Vec<usize>,
    sources: Vec<Source>,
    slots: HashMap<(ValueId, usize), Vec<AtomId>>,
    /// Tracked axes of each value (an index into `slots`, kept in step by `put`).
    axes: HashMap<ValueId, Vec<usize>>,
    blocked: Vec<(AtomId, String)>,
}

impl Walk {
    /// Tracked slot keys of value `v`, in axis order.
    fn keys_of(&self, v: ValueId) -> Vec<(ValueId, usize)> {
        let mut axes = self.axes.get(&v).cloned().unwrap_or_default();
        axes.sort_unstable();
        axes.into_iter().map(|a| (v, a)).collect()
    }
}

impl Walk {
    fn new_atoms(&mut self, n: usize, source: usize) -> Vec<AtomId> {
        let start = self.atom_source.len();
        self.atom_source.extend(std::iter::repeat_n(source, n));
        self.uf.0.extend(start..start + n);
        (start..start + n).collect()
    }

    /// Sets (or unites with) the atoms of an output slot.
    fn put(&mut self, key: (ValueId, usize), atoms: Vec<AtomId>, why: &str) {
        match self.slots.get(&key) {
            None => {
                self.slots.insert(key, atoms);
                self.axes.entry(key.0).or_default().push(key.1);
            }
            Some(old) if old.len() == atoms.len() => {
                for (a, b) in old.clone().into_iter().zip(atoms) {
                    self.uf.union(a, b);
                }
            }
            Some(old) => {
                let old = old.clone();
                for a in old.into_iter().chain(atoms) {
                    self.blocked
                        .push((a, format!("{why}: channel counts differ")));
                }
            }
        }
    }
}

/// The node being walked: its id, the node and the label its reasons start with.
struct At<'a> {
    n: NodeId,
    node: &'a Node,
    label: &'a str,
}

impl Walk {
    /// Tracked slots of `node`'s inputs: `(port, axis, length)`, sorted.
    fn tracked_inputs(&self, node: &Node) -> Vec<(usize, usize, usize)> {
        let mut tracked = Vec::new();
        for (p, v) in node.inputs.iter().enumerate() {
            let Some(v) = v else { continue };
            for key in self.keys_of(*v) {
                tracked.push((p, key.1, self.slots[&key].len()));
            }
        }
        tracked.sort_unstable();
        tracked
    }

    /// Blocks the channels of the values `node`'s subgraphs capture: the body may use them in
    /// any way.
    fn block_captures(&mut self, node: &Node, label: &str) {
        for c in &node.captures {
            let keys = self.keys_of(*c);
            for k in keys {
                for &a in &self.slots[&k] {
                    self.blocked
                        .push((a, format!("{label}: read inside a subgraph")));
                }
            }
        }
    }

    /// Atoms of an input slot of `node`.
    fn input_atoms(&self, node: &Node, s: Slot) -> Option<Vec<AtomId>> {
        let Port::In(p) = s.port else { return None };
        self.slots.get(&(node.input(p)?, s.axis)).cloned()
    }

    /// Atoms of an input or output slot of `node`.
    fn slot_atoms(&self, node: &Node, s: Slot) -> Option<Vec<AtomId>> {
        match s.port {
            Port::In(_) => self.input_atoms(node, s),
            Port::Out(p) => node
                .output(p)
                .and_then(|v| self.slots.get(&(v, s.axis)).cloned()),
        }
    }

    /// New atoms of a source of `len` channels that the node creates at `slot`.
    fn add_source(&mut self, at: &At, slot: Slot, len: usize, constant: bool) -> Vec<AtomId> {
        let sid = self.sources.len();
        let atoms = self.new_atoms(len, sid);
        self.sources.push(Source {
            node: at.n,
            node_name: at.node.name.clone(),
            op: at.node.op_type.clone(),
            slot,
            atoms: atoms.clone(),
            constant,
        });
        atoms
    }

    /// Follows a link that creates, passes, consumes or blocks channels (couples and members
    /// wait for the output slots: [`Walk::couple_or_member`]); records the input slots it
    /// handles.
    fn follow(
        &mut self,
        at: &At,
        l: &Link,
        handled: &mut Vec<(usize, usize)>,
        consumers: &mut Vec<(NodeId, Vec<AtomId>)>,
    ) {
        match l {
            Link::Create { to, len } => {
                let Port::Out(p) = to.port else { return };
                let Some(v) = at.node.output(p) else { return };
                let atoms = self.add_source(at, *to, *len, false);
                self.put((v, to.axis), atoms, at.label);
            }
            Link::Pass { from, to, map } => {
                if let Port::In(p) = from.port {
                    handled.push((p, from.axis));
                }
                self.pass(at, *from, *to, map);
            }
            Link::Assemble { to, parts } => self.assemble(at, *to, parts, handled),
            Link::ShapeOnly { from } => {
                if let Port::In(p) = from.port {
                    handled.push((p, from.axis));
                }
            }
            Link::Consume { from } => {
                if let Port::In(p) = from.port {
                    handled.push((p, from.axis));
                }
                if let Some(atoms) = self.input_atoms(at.node, *from) {
                    consumers.push((at.n, atoms));
                }
            }
            Link::Block { slot, reason } => {
                if let Port::In(p) = slot.port {
                    handled.push((p, slot.axis));
                }
                let atoms = self.slot_atoms(at.node, *slot);
                for a in atoms.unwrap_or_default() {
                    self.blocked.push((a, format!("{}: {reason}", at.label)));
                }
            }
            Link::Member { .. } | Link::Couple { .. } | Link::Tie { .. } => {}
        }
    }

    /// A [`Link::Pass`]: the input slot's atoms move to the output slot, through the map
    /// (positions the map leaves `None` are new constant channels).
    fn pass(&mut self, at: &At, from: Slot, to: Slot, map: &Map) {
        let (Some(src), Port::Out(op)) = (self.input_atoms(at.node, from), to.port) else {
            return;
        };
        let Some(v) = at.node.output(op) else { return };
        let atoms = match map {
            Map::Identity => src,
            Map::Index(m) => {
                let fresh = m.iter().filter(|x| x.is_none()).count();
                let mut new = Vec::new();
                if fresh > 0 {
                    new = self.add_source(at, to, fresh, true);
                }
                let mut fresh_iter = new.into_iter();
                let mut out = Vec::with_capacity(m.len());
                let mut bad = false;
                for x in m {
                    match x {
                        Some(i) => match src.get(*i) {
                            Some(a) => out.push(*a),
                            None => bad = true,
                        },
                        None => out.extend(fresh_iter.next()),
                    }
                }
                if bad {
                    for a in src {
                        self.blocked
                            .push((a, format!("{}: channel map out of range", at.label)));
                    }
                    return;
                }
                out
            }
        };
        self.put((v, to.axis), atoms, at.label);
    }

    /// A [`Link::Assemble`]: the output slot is the parts' atoms in order; a part nobody
    /// tracks gets fixed (blocked) atoms.
    fn assemble(
        &mut self,
        at: &At,
        to: Slot,
        parts: &[(Option<Slot>, usize)],
        handled: &mut Vec<(usize, usize)>,
    ) {
        let Port::Out(op) = to.port else { return };
        let Some(v) = at.node.output(op) else { return };
        let mut atoms = Vec::new();
        for (slot, len) in parts {
            match slot.and_then(|s| {
                if let Port::In(p) = s.port {
                    handled.push((p, s.axis));
                }
                self.input_atoms(at.node, s)
            }) {
                Some(a) if a.len() == *len => atoms.extend(a),
                _ => {
                    // Channels nobody tracks: fixed, never removable.
                    let fixed = self.add_source(at, to, *len, true);
                    for &a in &fixed {
                        self.blocked.push((
                            a,
                            format!("{}: joins channels of an untracked input", at.label),
                        ));
                    }
                    atoms.extend(fixed);
                }
            }
        }
        self.put((v, to.axis), atoms, at.label);
    }

    /// Follows a [`Link::Couple`] or [`Link::Tie`] (unites atoms that go together) or records a
    /// [`Link::Member`] whose slot is tracked.
    fn couple_or_member(&mut self, at: &At, l: &Link, members: &mut Vec<Member>) {
        match l {
            Link::Couple { slot, sets } => {
                let Some(atoms) = self.slot_atoms(at.node, *slot) else {
                    return;
                };
                for set in sets {
                    let mut it = set.iter().filter_map(|&i| atoms.get(i).copied());
                    if let Some(first) = it.next() {
                        for a in it {
                            self.uf.union(first, a);
                        }
                    }
                }
            }
            Link::Tie { sets } => {
                let mut of_slot: Vec<(Slot, Option<Vec<AtomId>>)> = Vec::new();
                for set in sets {
                    let mut atoms: Vec<AtomId> = Vec::new();
                    for &(slot, i) in set {
                        if !of_slot.iter().any(|(s, _)| *s == slot) {
                            of_slot.push((slot, self.slot_atoms(at.node, slot)));
                        }
                        let known = of_slot.iter().find(|(s, _)| *s == slot);
                        atoms.extend(known.and_then(|(_, a)| a.as_ref()?.get(i).copied()));
                    }
                    for pair in atoms.windows(2) {
                        self.uf.union(pair[0], pair[1]);
                    }
                }
            }
            Link::Member {
                input,
                axis,
                slot,
                map,
            } if self.slot_atoms(at.node, *slot).is_some() => {
                members.push(Member {
                    node: at.n,
                    input: *input,
                    axis: *axis,
                    slot: *slot,
                    map: map.clone(),
                });
            }
            _ => {}
        }
    }

    /// Blocks the tracked inputs of the node that no link handled.
    fn block_unhandled(
        &mut self,
        at: &At,
        tracked: &[(usize, usize, usize)],
        handled: &[(usize, usize)],
    ) {
        for &(p, a, _) in tracked {
            if !handled.contains(&(p, a)) {
                let reason = format!("{}: no channel rule for input {p} axis {a}", at.label);
                for &atom in &self.slots[&(at.node.inputs[p].unwrap_or(ValueId(0)), a)] {
                    self.blocked.push((atom, reason.clone()));
                }
            }
        }
    }

    /// Blocks the channels that reach a graph output.
    fn block_graph_outputs(&mut self, g: &Graph) {
        for &o in &g.outputs {
            let keys = self.keys_of(o);
            for k in keys {
                for &a in &self.slots[&k] {
                    self.blocked.push((
                        a,
                        format!(
                            "channels reach graph output '{}' (axis {})",
                            g.value(o).name,
                            k.1
                        ),
                    ));
                }
            }
        }
    }
}

/// The links node `n`'s op declares; an unknown op blocks every tracked input.
fn declared_links(
    g: &Graph,
    shapes: &Shapes,
    n: NodeId,
    tracked: &[(usize, usize, usize)],
    opset: i64,
) -> Vec<Link> {
    let node = g.node(n);
    let ins = shapes.inputs_of(g, n);
    let outs = shapes.outputs_of(g, n);
    let cx = LinkCx {
        node,
        inputs: &ins,
        outputs: &outs,
        tracked,
        opset,
    };
    match ops::lookup(&node.domain, &node.op_type) {
        Some(op) => op.channel_links(&cx),
        None => cx.block_all(&format!(
            "unknown op {}{}",
            if node.domain.is_empty() {
                String::new()
            } else {
                format!("{}.", node.domain)
            },
            node.op_type
        )),
    }
}

/// Analyses the channel dependencies of a model.
pub fn channel_groups(model: &Model, shapes: &Shapes) -> Result<ChannelGroups> {
    let g = &model.graph;
    let opset = model.opset();
    let mut w = Walk {
        uf: UnionFind(Vec::new()),
        atom_source: Vec::new(),
        sources: Vec::new(),
        slots: HashMap::new(),
        axes: HashMap::new(),
        blocked: Vec::new(),
    };
    let mut links_of: BTreeMap<NodeId, Vec<Link>> = BTreeMap::new();
    let mut members = Vec::new();
    let mut consumers: Vec<(NodeId, Vec<AtomId>)> = Vec::new();

    for n in g.topo_order()? {
        let node = g.node(n);
        let label = format!("node '{}' ({})", node.name, node.op_type);
        let tracked = w.tracked_inputs(node);
        w.block_captures(node, &label);
        let links = declared_links(g, shapes, n, &tracked, opset);
        if links.is_empty() && tracked.is_empty() {
            continue;
        }
        let at = At {
            n,
            node,
            label: &label,
        };
        let mut handled: Vec<(usize, usize)> = Vec::new();
        // Producers and passes first, so that couples and members see output slots.
        for l in &links {
            w.follow(&at, l, &mut handled, &mut consumers);
        }
        for l in &links {
            w.couple_or_member(&at, l, &mut members);
        }
        w.block_unhandled(&at, &tracked, &handled);
        links_of.insert(n, links);
    }
    w.block_graph_outputs(g);
    Ok(build_groups(model, w, links_of, members, consumers))
}

fn build_groups(
    model: &Model,
    mut w: Walk,
    links: BTreeMap<NodeId, Vec<Link>>,
    members: Vec<Member>,
    consumers: Vec<(NodeId, Vec<AtomId>)>,
) -> ChannelGroups {
    let g = &model.graph;
    let n_atoms = w.atom_source.len();
    // Classes: atom roots, numbered in atom order (sources are in topological order).
    let mut class_of = Vec::with_capacity(n_atoms);
    let mut root_class: HashMap<usize, usize> = HashMap::new();
    let mut class_atoms: Vec<Vec<AtomId>> = Vec::new();
    for a in 0..n_atoms {
        let r = w.uf.find(a);
        let c = *root_class.entry(r).or_insert_with(|| {
            class_atoms.push(Vec::new());
            class_atoms.len() - 1
        });
        class_of.push(c);
        class_atoms[c].push(a);
    }
    // Groups: sources connected through classes.
    let mut suf = UnionFind((0..w.sources.len()).collect());
    for atoms in &class_atoms {
        for pair in atoms.windows(2) {
            suf.union(w.atom_source[pair[0]], w.atom_source[pair[1]]);
        }
    }
    let mut group_of_source = Vec::with_capacity(w.sources.len());
    let mut root_group: HashMap<usize, usize> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    for (s, source) in w.sources.iter().enumerate() {
        let r = suf.find(s);
        let gid = *root_group.entry(r).or_insert_with(|| {
            groups.push(Group {
                id: groups.len(),
                classes: Vec::new(),
                channels: 0,
                sources: Vec::new(),
                consumers: Vec::new(),
                members: Vec::new(),
                blocked: Vec::new(),
            });
            groups.len() - 1
        });
        group_of_source.push(gid);
        groups[gid].sources.push(source.clone());
    }
    let mut group_of_class = vec![0; class_atoms.len()];
    for (c, atoms) in class_atoms.iter().enumerate() {
        let gid = group_of_source[w.atom_source[atoms[0]]];
        group_of_class[c] = gid;
        groups[gid].classes.push(c);
    }
    for grp in &mut groups {
        grp.channels = grp.classes.len();
    }
    let label = |n: NodeId| format!("{} ({})", g.node(n).name, g.node(n).op_type);
    for (n, atoms) in &consumers {
        let mut seen = Vec::new();
        for a in atoms {
            let gid = group_of_class[class_of[*a]];
            if !seen.contains(&gid) {
                seen.push(gid);
                groups[gid].consumers.push(label(*n));
            }
        }
    }
    for m in &members {
        let key = match m.slot.port {
            Port::In(p) => g.node(m.node).input(p),
            Port::Out(p) => g.node(m.node).output(p),
        };
        let Some(atoms) = key.and_then(|v| w.slots.get(&(v, m.slot.axis))) else {
            continue;
        };
        let mut seen = Vec::new();
        for a in atoms {
            let gid = group_of_class[class_of[*a]];
            if !seen.contains(&gid) {
                seen.push(gid);
                groups[gid].members.push(format!(
                    "{} input {} axis {}",
                    label(m.node),
                    m.input,
                    m.axis
                ));
            }
        }
    }
    for (a, reason) in w.blocked.drain(..) {
        let gid = group_of_class[class_of[a]];
        if !groups[gid].blocked.contains(&reason) {
            groups[gid].blocked.push(reason);
        }
    }
    ChannelGroups {
        groups,
        class_of,
        group_of_class,
        class_atoms,
        slots: w.slots,
        links,
        members,
    }
}
