//! The vocabulary ops use to declare how channels flow through them (see
//! [`crate::analysis::channels`]), and to rewrite themselves when channels are removed.
//!
//! A *slot* is one axis of one of a node's inputs or outputs that carries channels. Positions
//! along a slot are mapped through [`Map`]s, which are data: identity, or an explicit list
//! (concat offsets, split ranges, flatten blocks, shuffles, pads).

use crate::ir::{Fact, Node, Tensor};
use crate::onnx::proto::AttributeProto;

/// An input or output port of a node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Port {
    /// Input number.
    In(usize),
    /// Output number.
    Out(usize),
}

/// One axis of one port: a possible channel slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Slot {
    /// The port.
    pub port: Port,
    /// The axis (non-negative).
    pub axis: usize,
}

impl Slot {
    /// Input `port`, axis `axis`.
    pub fn input(port: usize, axis: usize) -> Slot {
        Slot {
            port: Port::In(port),
            axis,
        }
    }

    /// Output `port`, axis `axis`.
    pub fn output(port: usize, axis: usize) -> Slot {
        Slot {
            port: Port::Out(port),
            axis,
        }
    }
}

/// How positions of one slot relate to positions of another.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Map {
    /// Position `i` ↔ position `i` (same length).
    Identity,
    /// Entry `j` (a position of the target) names a position of the source, or `None` for a
    /// fresh constant channel created here (e.g. zero channels added by `Pad`).
    Index(Vec<Option<usize>>),
}

/// One declaration about channels at a node.
#[derive(Clone, PartialEq, Debug)]
pub enum Link {
    /// Output slot `to` carries the channels of input slot `from`, through `map`.
    Pass {
        /// Input slot.
        from: Slot,
        /// Output slot.
        to: Slot,
        /// Position of `to` → position of `from`.
        map: Map,
    },
    /// Output slot `to` is the concatenation of `parts` in order: each a tracked input slot, or
    /// `None` for `len` channels from an input whose channels are not tracked (those channels
    /// cannot be removed).
    Assemble {
        /// Output slot.
        to: Slot,
        /// `(input slot or None, length)` in order.
        parts: Vec<(Option<Slot>, usize)>,
    },
    /// Input slot `from` is read only for its shape (`Shape`): no channels flow on.
    ShapeOnly {
        /// Input slot.
        from: Slot,
    },
    /// Output slot `to` holds `len` new channels computed by this node's weights (Conv/Gemm
    /// filters): a *producer*.
    Create {
        /// Output slot.
        to: Slot,
        /// Number of channels.
        len: usize,
    },
    /// Input slot `from` ends here: its channels are read by this node's weights (next Conv's
    /// input axis, Gemm rows): a *consumer*.
    Consume {
        /// Input slot.
        from: Slot,
    },
    /// Constant input `input` is sliced along `axis` together with the channels of `slot`:
    /// position `p` of `slot` is index `map[p]` of that axis (many positions may share an index
    /// when [`Link::Couple`] ties them).
    Member {
        /// The constant input port.
        input: usize,
        /// Its axis.
        axis: usize,
        /// The slot it follows.
        slot: Slot,
        /// Position of `slot` → index along `axis`.
        map: Map,
    },
    /// Sets of positions of `slot` that can only be removed together (group convolution
    /// uniformity, an axis split by Reshape).
    Couple {
        /// The slot.
        slot: Slot,
        /// Position sets.
        sets: Vec<Vec<usize>>,
    },
    /// Channels in `slot` cannot be removed through this node (fail closed).
    Block {
        /// The slot.
        slot: Slot,
        /// Why, for the report.
        reason: String,
    },
}

/// What an op sees when declaring its channel links.
pub struct LinkCx<'a> {
    /// The node.
    pub node: &'a Node,
    /// Facts of the inputs by port (`None`: omitted or unknown).
    pub inputs: &'a [Option<&'a Fact>],
    /// Facts of the outputs by port.
    pub outputs: &'a [Option<&'a Fact>],
    /// Input slots that carry channels reaching this node: `(port, axis, length)`.
    pub tracked: &'a [(usize, usize, usize)],
    /// Opset of the default domain.
    pub opset: i64,
}

impl LinkCx<'_> {
    /// Shape of input `port`, when fully known.
    pub fn in_dims(&self, port: usize) -> Option<Vec<usize>> {
        self.inputs.get(port).copied().flatten()?.concrete()
    }

    /// Rank of input `port`, when known.
    pub fn in_rank(&self, port: usize) -> Option<usize> {
        self.inputs.get(port).copied().flatten()?.rank()
    }

    /// Shape of output `port`, when fully known.
    pub fn out_dims(&self, port: usize) -> Option<Vec<usize>> {
        self.outputs.get(port).copied().flatten()?.concrete()
    }

    /// Whether input `port` is a compile-time constant (initializer or folded value).
    pub fn is_const(&self, port: usize) -> bool {
        self.inputs
            .get(port)
            .copied()
            .flatten()
            .is_some_and(|f| f.value.is_some())
    }

    /// Tracked axes of input `port`.
    pub fn tracked_axes(&self, port: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.tracked
            .iter()
            .filter(move |t| t.0 == port)
            .map(|t| (t.1, t.2))
    }

    /// A block of every tracked input slot with the same reason.
    pub fn block_all(&self, reason: &str) -> Vec<Link> {
        self.tracked
            .iter()
            .map(|&(p, a, _)| Link::Block {
                slot: Slot::input(p, a),
                reason: reason.to_string(),
            })
            .collect()
    }
}

/// What an op sees when rewriting itself after channels were removed.
pub struct RewriteCx<'a> {
    /// The node (before rewriting).
    pub node: &'a Node,
    /// Facts of the inputs (before removal).
    pub inputs: &'a [Option<&'a Fact>],
    /// Facts of the outputs (before removal).
    pub outputs: &'a [Option<&'a Fact>],
    /// Keep-masks (one bool per position, `true` = kept) of this node's slots that lose channels.
    pub kept: &'a [(Slot, Vec<bool>)],
    /// Opset of the default domain.
    pub opset: i64,
}

impl RewriteCx<'_> {
    /// The keep-mask of `slot`, if it loses channels.
    pub fn mask(&self, slot: Slot) -> Option<&[bool]> {
        self.kept
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, m)| m.as_slice())
    }

    /// New length of an axis of input `port` (old length if it loses nothing).
    pub fn new_in_len(&self, port: usize, axis: usize) -> Option<usize> {
        match self.mask(Slot::input(port, axis)) {
            Some(m) => Some(m.iter().filter(|k| **k).count()),
            None => self
                .inputs
                .get(port)
                .copied()
                .flatten()?
                .concrete()?
                .get(axis)
                .copied(),
        }
    }

    /// New length of an axis of output `port` (old length if it loses nothing).
    pub fn new_out_len(&self, port: usize, axis: usize) -> Option<usize> {
        match self.mask(Slot::output(port, axis)) {
            Some(m) => Some(m.iter().filter(|k| **k).count()),
            None => self
                .outputs
                .get(port)
                .copied()
                .flatten()?
                .concrete()?
                .get(axis)
                .copied(),
        }
    }
}

/// Changes an op makes to itself after channel removal (besides the generic slicing of
/// [`Link::Member`] constants, which the removal pass does).
#[derive(Clone, Debug, Default)]
pub struct Rewrite {
    /// Attributes to set (replacing same-named ones).
    pub attrs: Vec<AttributeProto>,
    /// Attributes to remove.
    pub remove_attrs: Vec<String>,
    /// Constant inputs to replace, by port (Reshape targets, Split sizes, Slice bounds, pads);
    /// a port equal to the current input count appends an input.
    pub inputs: Vec<(usize, Tensor)>,
}

/// Pass-through links for every axis of input 0 to output 0 (element-wise unary ops,
/// Identity, Cast, ...).
pub fn pass_all(cx: &LinkCx) -> Vec<Link> {
    cx.tracked_axes(0)
        .map(|(a, _)| Link::Pass {
            from: Slot::input(0, a),
            to: Slot::output(0, a),
            map: Map::Identity,
        })
        .collect()
}

/// Numpy-broadcast element-wise links: each tracked input axis passes to the aligned output
/// axis. A constant input whose aligned axis has the full channel length becomes a
/// [`Link::Member`] of the output slot (per-channel scale/shift); one of length 1 broadcasts
/// and is left alone.
pub fn elementwise(cx: &LinkCx) -> Vec<Link> {
    let Some(out_rank) = cx.outputs.first().copied().flatten().and_then(Fact::rank) else {
        return cx.block_all("output rank unknown");
    };
    let mut links = Vec::new();
    let mut out_axes = Vec::new();
    for &(p, a, len) in cx.tracked {
        let Some(r) = cx.in_rank(p) else {
            links.push(Link::Block {
                slot: Slot::input(p, a),
                reason: "input rank unknown".into(),
            });
            continue;
        };
        let oa = a + out_rank - r;
        links.push(Link::Pass {
            from: Slot::input(p, a),
            to: Slot::output(0, oa),
            map: Map::Identity,
        });
        out_axes.push((oa, len));
    }
    for port in 0..cx.node.inputs.len() {
        if cx.tracked.iter().any(|t| t.0 == port) || cx.node.input(port).is_none() {
            continue;
        }
        let Some(dims) = cx.in_dims(port) else {
            continue;
        };
        for &(oa, len) in &out_axes {
            let Some(ia) = (oa + dims.len()).checked_sub(out_rank) else {
                continue;
            };
            match dims.get(ia) {
                Some(&d) if d == len && len > 1 => {
                    if cx.is_const(port) {
                        links.push(Link::Member {
                            input: port,
                            axis: ia,
                            slot: Slot::output(0, oa),
                            map: Map::Identity,
                        });
                    } else {
                        // A computed operand of full channel width: its channels must match
                        // ours, but nothing tracks it (e.g. it comes from a graph input).
                        links.push(Link::Block {
                            slot: Slot::output(0, oa),
                            reason: format!("input {port} has the full channel width but its channels are not tracked"),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    links
}
