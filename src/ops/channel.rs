//! The vocabulary ops use to declare how channels flow through them (see
//! [`crate::analysis::channels`]), and to rewrite themselves when channels are removed.
//!
//! A *slot* is one axis of one of a node's inputs or outputs that carries channels. Positions
//! along a slot are mapped through [`Map`]s, which are data: identity, or an explicit list
//! (concat offsets, split ranges, flatten blocks, shuffles, pads).

use crate::ir::{Dim, Fact, Node, Tensor};
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
    /// Sets of positions across several slots of this node that can only be removed together
    /// (a grouped convolution's input and output channels of one group: removing the group
    /// removes both).
    Tie {
        /// Position sets, each position a `(slot, index)`.
        sets: Vec<Vec<(Slot, usize)>>,
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

    /// Shape of input `port` (dims may be symbolic), when the rank is known.
    pub fn in_shape(&self, port: usize) -> Option<&[Dim]> {
        self.inputs.get(port).copied().flatten()?.shape.as_deref()
    }

    /// Shape of output `port` (dims may be symbolic), when the rank is known.
    pub fn out_shape(&self, port: usize) -> Option<&[Dim]> {
        self.outputs.get(port).copied().flatten()?.shape.as_deref()
    }

    /// Constant integer contents of input `port`.
    pub fn ints(&self, port: usize) -> Option<Vec<i64>> {
        self.inputs
            .get(port)
            .copied()
            .flatten()?
            .value
            .as_ref()?
            .to_i64_vec()
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

    /// The constant value of input `port`, when known.
    pub fn value(&self, port: usize) -> Option<&Tensor> {
        self.inputs.get(port).copied().flatten()?.value.as_ref()
    }

    /// Shape of input `port`, when fully known.
    pub fn in_dims(&self, port: usize) -> Option<Vec<usize>> {
        self.inputs.get(port).copied().flatten()?.concrete()
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

/// What an op sees when asked whether one channel of its output is a constant
/// ([`crate::ops::Op::channel_constant`]).
pub struct ConstCx<'a> {
    /// The node.
    pub node: &'a Node,
    /// Per input port, at this channel: `Some(c)` when that input is the constant `c` over the
    /// whole channel (a constant tracked channel, a uniform member slice, or a one-element
    /// constant input); `None` otherwise.
    pub inputs: &'a [Option<f64>],
    /// Per input port: whether that input's member slice at this channel is all zeros.
    pub zero: &'a [bool],
    /// Whether this output position is a fresh channel created by the node (e.g. Pad).
    pub fresh: bool,
}

/// How a consumer absorbs removed constant channels ([`crate::ops::Op::channel_compensation`]).
/// In both forms the tensor's axis 0 runs over the node's output channels (before removal).
#[derive(Clone, Debug)]
pub enum Compensation {
    /// Add `tensor` (shape `[C_out]`) to constant input `port` (a bias), creating it if absent.
    AddToInput {
        /// The bias input port.
        port: usize,
        /// Shape `[C_out]`.
        tensor: Tensor,
    },
    /// Add `tensor` to the output (an Add node after the consumer); `[C_out, spatial...]`
    /// broadcast over the batch, e.g. a convolution's border effects of zero padding.
    AddToOutput(Tensor),
}

/// What a consumer sees when compensating removed constant channels.
pub struct CompensateCx<'a> {
    /// The node.
    pub node: &'a Node,
    /// Facts of the inputs.
    pub inputs: &'a [Option<&'a Fact>],
    /// Facts of the outputs.
    pub outputs: &'a [Option<&'a Fact>],
    /// The consumed slot.
    pub slot: Slot,
    /// Removed positions of the slot that carry constants: `(position, value)`.
    pub constants: &'a [(usize, f64)],
    /// The constant inputs (weights), by port.
    pub consts: &'a [Option<&'a Tensor>],
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

/// An identity pass from input `port` axis `a` to output `out` axis `b`.
pub fn pass(port: usize, a: usize, out: usize, b: usize) -> Link {
    Link::Pass {
        from: Slot::input(port, a),
        to: Slot::output(out, b),
        map: Map::Identity,
    }
}

/// A block of input `port` axis `axis`.
pub fn block(port: usize, axis: usize, reason: &str) -> Link {
    Link::Block {
        slot: Slot::input(port, axis),
        reason: reason.to_string(),
    }
}

/// Pass-through links for tracked axes of input 0 that `keep` accepts (to the same output 0
/// axis); the others are blocked with `reason`. Tracked slots of other inputs are blocked too.
pub fn pass_axes(cx: &LinkCx, keep: impl Fn(usize) -> bool, reason: &str) -> Vec<Link> {
    cx.tracked
        .iter()
        .map(|&(p, a, _)| {
            if p == 0 && keep(a) {
                pass(0, a, 0, a)
            } else {
                block(p, a, reason)
            }
        })
        .collect()
}

/// Resolves a possibly negative axis against `rank` (`None`: out of range).
pub fn resolve_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// A 1-D integer tensor of `dtype` (int64 or another integer type) holding `values`.
pub fn int_vector(dtype: crate::ir::DType, values: &[i64]) -> crate::error::Result<Tensor> {
    if dtype == crate::ir::DType::I64 {
        return Ok(Tensor::from_i64(vec![values.len()], values));
    }
    let v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
    Tensor::from_f64_as(dtype, vec![values.len()], &v)
}

/// Longest index map [`reshape_links`] builds for a merged axis.
const MAX_MAP_LEN: usize = 1 << 22;

/// Distinct large primes standing in for distinct symbolic dims when matching reshape
/// segments (the same symbol gets the same prime on both sides).
const SYMBOL_PRIMES: [u128; 8] = [
    1_000_003, 1_000_033, 1_000_037, 1_000_039, 1_000_081, 1_000_099, 1_000_117, 1_000_121,
];

/// Dims as numbers, symbols replaced by their stand-in primes (`None`: an unknown dim, or too
/// many symbols).
fn stand_ins(dims: &[Dim], names: &mut Vec<String>) -> Option<Vec<u128>> {
    dims.iter()
        .map(|d| match d {
            Dim::Known(k) => Some(*k as u128),
            Dim::Sym(s) => {
                let i = match names.iter().position(|n| n == s) {
                    Some(i) => i,
                    None => {
                        names.push(s.clone());
                        names.len() - 1
                    }
                };
                SYMBOL_PRIMES.get(i).copied()
            }
            Dim::Unknown => None,
        })
        .collect()
}

/// Minimal runs of input and output axes with equal products, in order; size-1 axes belong to
/// none. `None` when the shapes do not match (or hold a 0 dim).
fn segments(iv: &[u128], ov: &[u128]) -> Option<Vec<(Vec<usize>, Vec<usize>)>> {
    let ia: Vec<usize> = (0..iv.len()).filter(|&i| iv[i] != 1).collect();
    let oa: Vec<usize> = (0..ov.len()).filter(|&j| ov[j] != 1).collect();
    if ia.iter().any(|&i| iv[i] == 0) || oa.iter().any(|&j| ov[j] == 0) {
        return None;
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < ia.len() || j < oa.len() {
        let (a, b) = (*ia.get(i)?, *oa.get(j)?);
        let (mut si, mut so) = (vec![a], vec![b]);
        let (mut pi, mut po) = (iv[a], ov[b]);
        i += 1;
        j += 1;
        while pi != po {
            if pi < po {
                let a = *ia.get(i)?;
                si.push(a);
                pi = pi.checked_mul(iv[a])?;
                i += 1;
            } else {
                let b = *oa.get(j)?;
                so.push(b);
                po = po.checked_mul(ov[b])?;
                j += 1;
            }
        }
        out.push((si, so));
    }
    Some(out)
}

/// Channel links of any reshape-like op (Reshape, Flatten, Squeeze, Unsqueeze) from input 0
/// of shape `in_shape` to output 0 of shape `out_shape`.
///
/// Axes are grouped into segments with equal products (symbolic dims stand in as distinct
/// primes; unknown dims block). For the segment of a tracked axis `a`:
/// - `{a}` → one axis `b`: identity pass;
/// - several input axes (only `a` tracked) → one axis `b` (a merge, e.g. Flatten): output
///   position `q` is the coordinate of `a` in `q`'s row-major decomposition;
/// - `{a}` → several axes (a split, e.g. a channel shuffle's `view(N, g, C/g, H, W)`): the
///   slot moves to the largest output axis `b` (the innermost on ties), position `k` being input
///   position with coordinate `k` along `b` and 0 elsewhere, and the input positions sharing a
///   coordinate along `b` are coupled (removed together);
/// - anything else blocks.
pub fn reshape_links(
    cx: &LinkCx,
    in_shape: Option<&[Dim]>,
    out_shape: Option<&[Dim]>,
) -> Vec<Link> {
    let (Some(ins), Some(outs)) = (in_shape, out_shape) else {
        return cx.block_all("reshape with an unknown input or output rank");
    };
    let mut names = Vec::new();
    let (Some(iv), Some(ov)) = (stand_ins(ins, &mut names), stand_ins(outs, &mut names)) else {
        return cx.block_all("reshape with unknown dims");
    };
    let Some(segs) = segments(&iv, &ov) else {
        return cx.block_all("reshape input and output shapes do not match");
    };
    let symbolic = |d: &Dim| !matches!(d, Dim::Known(_));
    let tracked: Vec<(usize, usize)> = cx.tracked_axes(0).collect();
    let mut links: Vec<Link> = cx
        .tracked
        .iter()
        .filter(|t| t.0 != 0)
        .map(|&(p, a, _)| block(p, a, "channels on a shape input"))
        .collect();
    for &(a, len) in &tracked {
        let from = Slot::input(0, a);
        if iv.get(a) != Some(&(len as u128)) {
            links.push(block(0, a, "channel count differs from the input shape"));
            continue;
        }
        if len == 1 {
            links.push(block(0, a, "a single channel through a reshape"));
            continue;
        }
        let Some((si, so)) = segs.iter().find(|(si, _)| si.contains(&a)) else {
            links.push(block(0, a, "reshape input and output shapes do not match"));
            continue;
        };
        if tracked.iter().any(|&(o, _)| o != a && si.contains(&o)) {
            links.push(block(0, a, "reshape mixes two channel axes"));
            continue;
        }
        match (si.len(), so.len()) {
            (1, 1) => links.push(pass(0, a, 0, so[0])),
            (_, 1) => {
                if si.iter().any(|&i| symbolic(&ins[i])) {
                    links.push(block(
                        0,
                        a,
                        "reshape merges the channel axis with a symbolic dim",
                    ));
                    continue;
                }
                let dims: Vec<usize> = si.iter().map(|&i| iv[i] as usize).collect();
                let total = dims.iter().try_fold(1usize, |t, &d| t.checked_mul(d));
                let Some(total) = total.filter(|&t| t <= MAX_MAP_LEN) else {
                    links.push(block(
                        0,
                        a,
                        "reshape merges the channel axis into a huge axis",
                    ));
                    continue;
                };
                let k = si.iter().position(|&i| i == a).unwrap_or(0);
                let stride: usize = dims[k + 1..].iter().product();
                links.push(Link::Pass {
                    from,
                    to: Slot::output(0, so[0]),
                    map: Map::Index((0..total).map(|q| Some(q / stride % len)).collect()),
                });
            }
            (1, _) => {
                if so.iter().any(|&j| symbolic(&outs[j])) {
                    links.push(block(
                        0,
                        a,
                        "reshape splits the channel axis with a symbolic dim",
                    ));
                    continue;
                }
                let dims: Vec<usize> = so.iter().map(|&j| ov[j] as usize).collect();
                let mut bi = 0;
                // The largest factor carries the channels; on ties the inner one (a shuffle's
                // `view(N, g, C/g, ..)` with g = C/g keeps the group count fixed).
                for (i, &d) in dims.iter().enumerate() {
                    if d >= dims[bi] {
                        bi = i;
                    }
                }
                let nb = dims[bi];
                let stride: usize = dims[bi + 1..].iter().product();
                links.push(Link::Pass {
                    from,
                    to: Slot::output(0, so[bi]),
                    map: Map::Index((0..nb).map(|k| Some(k * stride)).collect()),
                });
                let mut sets = vec![Vec::new(); nb];
                for p in 0..len {
                    sets[p / stride % nb].push(p);
                }
                links.push(Link::Couple { slot: from, sets });
            }
            _ => links.push(block(0, a, "reshape mixes the channel axis with others")),
        }
    }
    links
}

/// Helpers for channel unit tests: tiny models analysed with [`crate::analysis::channel_groups`].
#[cfg(test)]
pub(crate) mod testing {
    use crate::analysis::channels::Group;
    use crate::analysis::{channel_groups, infer_shapes, ChannelGroups};
    use crate::ir::{Graph, Model, Tensor, ValueId};
    use crate::onnx::proto::AttributeProto;
    use crate::passes::testutil;
    use crate::runtime::BackendKind;

    /// A tiny model under construction.
    pub struct Net {
        /// The graph.
        pub g: Graph,
        n: usize,
    }

    /// Deterministic pseudo-random values in [-1, 1).
    pub fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 1999) as f32 / 999.5 - 1.0)
            .collect()
    }

    impl Net {
        /// An empty graph.
        pub fn new() -> Net {
            Net {
                g: Graph::new(),
                n: 0,
            }
        }

        fn name(&mut self, base: &str) -> String {
            self.n += 1;
            format!("{base}{}", self.n)
        }

        /// A float graph input.
        pub fn input(&mut self, shape: &[usize]) -> ValueId {
            let name = self.name("x");
            testutil::input(&mut self.g, &name, shape)
        }

        /// A float graph input with a symbolic batch `N` before `shape`.
        pub fn batch_input(&mut self, shape: &[usize]) -> ValueId {
            let name = self.name("x");
            let v = self.g.add_value(&name);
            let mut dims = vec![crate::ir::Dim::Sym("N".into())];
            dims.extend(shape.iter().map(|&d| crate::ir::Dim::Known(d)));
            let fact = crate::ir::Fact::new(Some(crate::ir::DType::F32), dims);
            self.g.values_mut(v).decl = Some(crate::onnx::proto::ValueInfoProto {
                name: Some(name),
                r#type: Some(fact.to_type()),
                ..Default::default()
            });
            self.g.inputs.push(v);
            v
        }

        /// A float initializer.
        pub fn floats(&mut self, shape: &[usize]) -> ValueId {
            let n = shape.iter().product();
            let name = self.name("w");
            let seed = self.n;
            self.g
                .add_initializer(&name, Tensor::from_f32(shape.to_vec(), &values(n, seed)))
        }

        /// An int64 1-D initializer.
        pub fn ints(&mut self, v: &[i64]) -> ValueId {
            let name = self.name("i");
            self.g
                .add_initializer(&name, Tensor::from_i64(vec![v.len()], v))
        }

        /// A node with `n_out` outputs.
        pub fn op_n(
            &mut self,
            op: &str,
            ins: &[Option<ValueId>],
            n_out: usize,
            attrs: Vec<AttributeProto>,
        ) -> Vec<ValueId> {
            let name = self.name(&op.to_lowercase());
            let outs: Vec<String> = (0..n_out).map(|i| format!("{name}_y{i}")).collect();
            let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
            let id = self.g.add_node(&name, op, ins, &refs, attrs);
            self.g.node(id).outputs.iter().flatten().copied().collect()
        }

        /// A node with one output.
        pub fn op(&mut self, op: &str, ins: &[ValueId], attrs: Vec<AttributeProto>) -> ValueId {
            let ins: Vec<Option<ValueId>> = ins.iter().copied().map(Some).collect();
            self.op_n(op, &ins, 1, attrs)[0]
        }

        /// A 1×1 (or `k`×`k`, padded to keep the size) Conv with bias, `cin` → `cout` channels.
        pub fn conv_k(&mut self, x: ValueId, cin: usize, cout: usize, k: usize) -> ValueId {
            let w = self.floats(&[cout, cin, k, k]);
            let b = self.floats(&[cout]);
            let p = (k / 2) as i64;
            let pads = crate::ir::graph::attr_ints("pads", &[p, p, p, p]);
            self.op("Conv", &[x, w, b], vec![pads])
        }

        /// A 1×1 Conv with bias.
        pub fn conv(&mut self, x: ValueId, cin: usize, cout: usize) -> ValueId {
            self.conv_k(x, cin, cout, 1)
        }

        /// Marks a graph output.
        pub fn output(&mut self, v: ValueId) {
            self.g.outputs.push(v);
        }

        /// The model at `opset`.
        pub fn model(self, opset: i64) -> Model {
            testutil::model(self.g, opset)
        }
    }

    /// Channel groups of a model.
    pub fn analyse(m: &Model) -> ChannelGroups {
        let shapes = infer_shapes(m).expect("shapes");
        channel_groups(m, &shapes).expect("groups")
    }

    /// Whether a blocked reason containing `text` exists in some group.
    pub fn blocked_with(cg: &ChannelGroups, text: &str) -> bool {
        cg.groups
            .iter()
            .any(|g| g.blocked.iter().any(|r| r.contains(text)))
    }

    /// The group that holds the channels created by the node producing `v`.
    pub fn group<'a>(cg: &'a ChannelGroups, m: &Model, v: ValueId) -> &'a Group {
        let (n, _) = m.graph.value(v).producer.expect("producer");
        cg.groups
            .iter()
            .find(|g| g.sources.iter().any(|s| s.node == n && !s.constant))
            .expect("group")
    }

    /// Removes every third class (from the second) of every prunable group, checks that
    /// something was removed, and returns the pruned model and the equivalence oracle's error
    /// under tract (masked original vs pruned).
    pub fn prune_check(m: &Model) -> (Model, f64) {
        let shapes = infer_shapes(m).expect("shapes");
        let cg = channel_groups(m, &shapes).expect("groups");
        let classes: Vec<usize> = cg
            .groups
            .iter()
            .filter(|g| g.prunable())
            .flat_map(|g| g.classes.iter().copied().skip(1).step_by(3))
            .collect();
        assert!(!classes.is_empty(), "nothing to remove");
        let mut pruned = m.clone();
        crate::passes::remove_channels(&mut pruned, &cg, &shapes, &classes).expect("remove");
        let masked = crate::oracle::masked_original(m, &cg, &classes).expect("masked");
        let cmp =
            crate::oracle::compare(&masked, &pruned, &[BackendKind::Tract], 1, 5).expect("compare");
        (pruned, cmp.max_rel_error)
    }

    /// [`prune_check`], asserting a relative error below 1e-5.
    pub fn prunes_exactly(m: &Model) -> Model {
        let (pruned, err) = prune_check(m);
        assert!(err < 1e-5, "oracle error {err}");
        pruned
    }

    /// The inferred shape of the value named `name`, like `[N,3,4,4]`.
    pub fn shape_of(m: &Model, name: &str) -> String {
        let shapes = infer_shapes(m).expect("shapes");
        let v = m.graph.value_by_name(name).expect("value");
        let shape = shapes.get(v).and_then(|f| f.shape.as_ref()).expect("shape");
        crate::ir::fact::shape_string(shape)
    }
}
