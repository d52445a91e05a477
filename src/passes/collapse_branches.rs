//! Whole-branch removal (depth pruning): a channel group that loses *every* channel, when it
//! ends a residual branch, takes the branch with it.
//!
//! A group qualifies when each of its consumers is a linear layer ([`crate::ops::Op::linear`])
//! reading only this group (a consumer whose output channels are the group's own, a grouped
//! convolution losing whole groups, is inside the branch and not counted), whose output reaches a sum ([`crate::ops::Op::is_sum`]: a residual
//! `Add`) through shape-preserving, non-linear-layer nodes only. Removing it takes the branch
//! out of the sum: an `Add` becomes its skip input, dead code elimination deletes the branch's
//! layers, and a Relu left reading a value that is never negative (the usual `Relu(x + F(x))`
//! block, whose `x` is a Relu's output) is bypassed too, so the runtime has nothing left to run
//! where the block was (a constant added in its place, as the consumers' biases would give,
//! kept ONNX Runtime from fusing the following blocks' sums into their convolutions: ResNet-56
//! pruned to FLOPs ×0.5 ran at ×0.596 of the original's time with the constants, ×0.555
//! without). The model computes exactly what the original computes with the branch's
//! contribution set to zero at its sum, which is what the equivalence oracle compares against
//! ([`crate::oracle::masked_original`]).
//!
//! [`whole_branch`] says whether a group can go whole (and how strong its branch is, for
//! ranking); [`collapse_branches`] removes such groups. It does not choose which groups go
//! (`pipeline::drop` does), refuses groups holding constant channels (the compensation of
//! `remove_channels` would be lost), and checks that no graph output changes shape.

use crate::analysis::channels::ChannelGroups;
use crate::analysis::constant_channels::{channel_constants, ChannelConstants};
use crate::analysis::{infer_shapes, Shapes};
use crate::error::{Error, Result};
use crate::ir::{verify, DType, Model, NodeId, Tensor, ValueId};
use crate::ops::channel::{Link, Port};
use crate::ops::linear::Form;

use super::eliminate_dead_code;
use super::remove_identity::remove_identity_keep_dropout;

/// Most nodes between a branch's last layer and its merge.
const MAX_TAIL: usize = 16;

/// A group that can be removed whole, and the branch it ends.
#[derive(Clone, Debug)]
pub struct Branch {
    /// The group.
    pub group: usize,
    /// The linear layers reading it (they go with the branch).
    pub consumers: Vec<NodeId>,
    /// The branch's strength: the mean L2 norm of the consumers' filters, times the mean
    /// |scale| of the per-channel affine nodes (BatchNormalization) between them and the merge.
    /// A weight-only proxy of how much the branch adds to the merge.
    pub strength: f64,
    /// Per consumer: the value the branch brings to its merge and the merge's other input
    /// of the full shape (the skip), for measured strengths.
    pub merges: Vec<(ValueId, ValueId)>,
}

/// Whether group `gid` can be removed whole ([`Branch`]), or why not. `constants` are the
/// model's [`channel_constants`].
pub fn whole_branch(
    model: &Model,
    groups: &ChannelGroups,
    shapes: &Shapes,
    constants: &ChannelConstants,
    gid: usize,
) -> std::result::Result<Branch, String> {
    let g = &model.graph;
    let grp = groups.groups.get(gid).ok_or("no such group")?;
    if let Some(why) = grp.blocked.first() {
        return Err(format!("blocked ({why})"));
    }
    if grp.classes.is_empty() {
        return Err("it has no removable channel".into());
    }
    let in_group = |a: usize| groups.group_of_class[groups.class_of[a]] == gid;
    let mut consumers = Vec::new();
    let mut strength = 0.0;
    for (&n, links) in &groups.links {
        for l in links {
            let Link::Consume { from } = l else { continue };
            let Port::In(p) = from.port else { continue };
            let node = g.node(n);
            let Some(v) = node.input(p) else { continue };
            let Some(atoms) = groups.slots.get(&(v, from.axis)) else {
                continue;
            };
            if !atoms.iter().any(|a| in_group(*a)) {
                continue;
            }
            let name = &node.name;
            if !atoms.iter().all(|a| in_group(*a)) {
                return Err(format!("'{name}' also reads channels of other groups"));
            }
            if (0..atoms.len()).any(|i| constants.get((v, from.axis), i).is_some_and(|c| c != 0.0))
            {
                return Err(format!(
                    "'{name}' reads constant channels (their compensation would be lost)"
                ));
            }
            // A layer whose output channels are this group's too (a grouped convolution
            // losing whole groups ties its input and output channels) is inside the branch:
            // it goes with it, and the layers reading its output end the branch.
            let out_axis = crate::ops::linear::of_node(model, shapes, n).map(|l| l.output_axis);
            let internal = node.output(0).zip(out_axis).is_some_and(|(y, axis)| {
                groups
                    .slots
                    .get(&(y, axis))
                    .is_some_and(|out| !out.is_empty() && out.iter().all(|a| in_group(*a)))
            });
            if internal {
                continue;
            }
            strength += consumer_strength(model, shapes, n, p, from.axis)?;
            consumers.push(n);
        }
    }
    if consumers.is_empty() {
        return Err("no linear layer reads it".into());
    }
    let mut scale = 1.0;
    let mut merges = Vec::new();
    for &n in &consumers {
        let (s, merge) = tail(model, shapes, n)?;
        scale *= s;
        merges.push(merge);
    }
    Ok(Branch {
        group: gid,
        strength: strength / consumers.len() as f64 * scale,
        consumers,
        merges,
    })
}

/// The mean L2 norm of consumer `n`'s filters, after checking that it is a linear layer
/// reading its data input `port` on `axis`, with a constant bias of one value or one per
/// output channel (or none), and a float32 output.
fn consumer_strength(
    model: &Model,
    shapes: &Shapes,
    n: NodeId,
    port: usize,
    axis: usize,
) -> std::result::Result<f64, String> {
    let g = &model.graph;
    let node = g.node(n);
    let name = &node.name;
    let lin = crate::ops::linear::of_node(model, shapes, n)
        .ok_or_else(|| format!("'{name}' ({}) is not a linear layer", node.op_type))?;
    if port != 0 || lin.input_axis != axis {
        return Err(format!("'{name}' reads it on another input or axis"));
    }
    let y = node
        .output(0)
        .ok_or_else(|| format!("'{name}' has no output"))?;
    if g.outputs.contains(&y) {
        return Err(format!("'{name}' computes a graph output"));
    }
    if shapes.get(y).and_then(|f| f.dtype) != Some(DType::F32) {
        return Err(format!("'{name}' does not compute float32"));
    }
    if let Some(b) = lin.bias_port.and_then(|p| node.input(p)) {
        let t = g
            .init(b)
            .ok_or_else(|| format!("'{name}' has a computed bias"))?;
        if t.len() != 1 && t.len() != lin.out_channels {
            return Err(format!("'{name}' has a bias of {} values", t.len()));
        }
    }
    let w = node
        .input(1)
        .and_then(|w| g.init(w))
        .and_then(Tensor::to_f64_vec)
        .ok_or_else(|| format!("'{name}' has no constant float weight"))?;
    let rows = lin.out_channels.max(1);
    let per = w.len() / rows;
    let out_major = !matches!(
        lin.form,
        Form::Dense {
            out_major: false,
            ..
        }
    );
    let norm = |o: usize| -> f64 {
        if out_major {
            w[o * per..(o + 1) * per].iter().map(|x| x * x).sum::<f64>()
        } else {
            (0..per).map(|i| w[i * rows + o].powi(2)).sum::<f64>()
        }
        .sqrt()
    };
    Ok((0..rows).map(norm).sum::<f64>() / rows as f64)
}

/// Follows consumer `n`'s output to its merge: one reader at each step, each a
/// shape-preserving node that is not itself a linear layer; the merge is the first node with
/// two or more computed inputs, a sum ([`crate::ops::Op::is_sum`]; an SE block's `Mul` gate
/// is not a branch), whose output has the shape of an input other than the branch
/// (so that a `[1, C, 1, …]` constant broadcasts to it). Returns the product of the mean
/// |scale| of the per-channel affine nodes passed, and the merge's branch and skip inputs.
fn tail(
    model: &Model,
    shapes: &Shapes,
    n: NodeId,
) -> std::result::Result<(f64, (ValueId, ValueId)), String> {
    let g = &model.graph;
    let shape = |v: ValueId| shapes.get(v).and_then(|f| f.shape.clone());
    let mut cur = g.node(n).output(0).ok_or("the consumer has no output")?;
    let mut scale = 1.0;
    for _ in 0..MAX_TAIL {
        let name = &g.value(cur).name;
        if g.outputs.contains(&cur) {
            return Err(format!("'{name}' is a graph output before any merge"));
        }
        let uses = &g.value(cur).uses;
        let [(u, _)] = uses[..] else {
            return Err(format!(
                "'{name}' has {} readers before any merge",
                uses.len()
            ));
        };
        let node = g.node(u);
        let computed: Vec<ValueId> = node
            .inputs
            .iter()
            .flatten()
            .copied()
            .filter(|v| g.init(*v).is_none())
            .collect();
        let out = node
            .output(0)
            .ok_or_else(|| format!("'{}' has no output", node.name))?;
        if computed.len() >= 2 {
            if !crate::ops::lookup(&node.domain, &node.op_type).is_some_and(|op| op.is_sum()) {
                return Err(format!(
                    "'{}' ({}) merges the branch, and only sums are dropped into",
                    node.name, node.op_type
                ));
            }
            let full = shape(out);
            let skip = computed
                .iter()
                .find(|v| **v != cur && full.is_some() && shape(**v) == full);
            let Some(&skip) = skip else {
                return Err(format!(
                    "'{}' ({}) does not merge the branch into a tensor of its own shape",
                    node.name, node.op_type
                ));
            };
            return Ok((scale, (cur, skip)));
        }
        if crate::ops::linear::of_node(model, shapes, u).is_some() {
            return Err(format!("'{}' is another layer before the merge", node.name));
        }
        if shape(out).is_none() || shape(out) != shape(cur) || node.outputs.len() != 1 {
            return Err(format!(
                "'{}' ({}) changes the shape before the merge",
                node.name, node.op_type
            ));
        }
        if let Some(a) = crate::ops::channel_affine_of(g, u) {
            let m = a.scale.iter().map(|s| s.abs()).sum::<f64>() / a.scale.len().max(1) as f64;
            scale *= m;
        }
        cur = out;
    }
    Err(format!("no merge within {MAX_TAIL} nodes"))
}

/// Removes groups `gids` (of `groups`, computed on `model` with `shapes`) whole: each branch
/// is taken out of its sum, then dead layers are deleted and no-ops bypassed. Errors naming
/// the group when one cannot go whole ([`whole_branch`]) or when a graph output would change
/// shape.
pub fn collapse_branches(
    model: &mut Model,
    groups: &ChannelGroups,
    shapes: &Shapes,
    gids: &[usize],
) -> Result<()> {
    let constants = channel_constants(model, groups);
    let mut branches = Vec::new();
    for &gid in gids {
        let b = whole_branch(model, groups, shapes, &constants, gid)
            .map_err(|why| Error::Usage(format!("group {gid} cannot be removed whole: {why}")))?;
        branches.push(b);
    }
    let before: Vec<_> = model
        .graph
        .outputs
        .iter()
        .map(|v| shapes.get(*v).and_then(|f| f.shape.clone()))
        .collect();
    for b in &branches {
        for &(branch, _) in &b.merges {
            bypass_merge(&mut model.graph, branch)?;
        }
    }
    eliminate_dead_code(model)?;
    remove_identity_keep_dropout(model)?;
    model.graph.compact();
    verify(&model.graph)?;
    let after = infer_shapes(model)?;
    for (v, was) in model.graph.outputs.iter().zip(&before) {
        let now = after.get(*v).and_then(|f| f.shape.clone());
        if was.is_some() && now != *was {
            return Err(Error::Graph(format!(
                "removing group(s) {gids:?} whole would change the shape of output '{}'",
                model.graph.value(*v).name
            )));
        }
    }
    Ok(())
}

/// Takes branch value `branch` out of the sum that reads it (its only reader, checked by
/// [`whole_branch`]): an `Add` becomes an `Identity` of the skip (which has the sum's shape),
/// a `Sum` loses that input. The sum's output value is kept, so graph outputs keep their
/// names; `remove_identity` bypasses the Identity afterwards.
fn bypass_merge(g: &mut crate::ir::Graph, branch: ValueId) -> Result<()> {
    let [(m, port)] = g.value(branch).uses[..] else {
        return Err(Error::Graph(format!(
            "branch value '{}' is not read by exactly one sum",
            g.value(branch).name
        )));
    };
    let node = g.node(m);
    let remaining: Vec<Option<ValueId>> = node
        .inputs
        .iter()
        .enumerate()
        .filter(|(p, v)| *p != port && v.is_some())
        .map(|(_, v)| *v)
        .collect();
    let (Some(y), false) = (node.output(0), remaining.is_empty()) else {
        return Err(Error::node(
            &node.name,
            &node.op_type,
            "a sum without output or other inputs".to_string(),
        ));
    };
    let op = if remaining.len() == 1 {
        "Identity".to_string()
    } else {
        node.op_type.clone()
    };
    let name = node.name.clone();
    g.remove_node(m);
    g.add_node_writing(&name, &op, &remaining, y, vec![]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::channel::testing::{analyse, group, Net};
    use crate::oracle::{compare, masked_original};
    use crate::runtime::BackendKind;

    /// `x → conv → relu → [conv(8→6, 3×3) → BN → relu → conv(6→8, 3×3) → BN] + · → relu →
    /// conv(8→5)`: one residual branch (the 6-channel group) and the 8-channel stream.
    fn residual() -> (Model, ValueId) {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 6, 6]);
        let s = n.conv_k(x, 3, 8, 3);
        let s = n.op("Relu", &[s], vec![]);
        let a = n.conv_k(s, 8, 6, 3);
        let bn = |n: &mut Net, v: ValueId, c: usize| {
            let p: Vec<ValueId> = (0..3).map(|_| n.floats(&[c])).collect();
            let var = n.g.add_initializer(
                &format!("var{c}_{}", v.index()),
                Tensor::from_f32(vec![c], &vec![0.7; c]),
            );
            n.op("BatchNormalization", &[v, p[0], p[1], p[2], var], vec![])
        };
        let b = bn(&mut n, a, 6);
        let b = n.op("Relu", &[b], vec![]);
        let c = n.conv_k(b, 6, 8, 3);
        let c = bn(&mut n, c, 8);
        let sum = n.op("Add", &[c, s], vec![]);
        let r = n.op("Relu", &[sum], vec![]);
        let y = n.conv(r, 8, 5);
        n.output(y);
        (n.model(13), a)
    }

    #[test]
    fn a_branch_goes_whole_and_computes_the_masked_original() {
        let (m, a) = residual();
        let cg = analyse(&m);
        let shapes = infer_shapes(&m).unwrap();
        let gid = group(&cg, &m, a).id;
        let constants = channel_constants(&m, &cg);
        let b = whole_branch(&m, &cg, &shapes, &constants, gid).unwrap();
        assert_eq!(b.consumers.len(), 1);
        assert!(b.strength > 0.0);
        // The stream group feeds convolutions that end in no sum: it cannot go whole.
        let stream = cg
            .groups
            .iter()
            .find(|g| g.prunable() && g.id != gid)
            .unwrap();
        let why = whole_branch(&m, &cg, &shapes, &constants, stream.id).unwrap_err();
        assert!(
            why.contains("graph output") || why.contains("layer"),
            "{why}"
        );

        let mut pruned = m.clone();
        collapse_branches(&mut pruned, &cg, &shapes, &[gid]).unwrap();
        let ops: Vec<String> = pruned
            .graph
            .node_ids()
            .map(|n| pruned.graph.node(n).op_type.clone())
            .collect();
        // The sum adds nothing any more and the Relu after it reads a Relu's output: both go.
        assert_eq!(ops, ["Conv", "Relu", "Conv"], "{ops:?}");
        let classes = cg.groups[gid].classes.clone();
        let masked = masked_original(&m, &cg, &classes).unwrap();
        let tract = [BackendKind::Tract];
        let cmp = compare(&masked, &pruned, &tract, 2, 1).unwrap();
        assert!(cmp.max_rel_error < 1e-5, "{cmp:?}");
        // Not vacuous: the original, branch and all, computes something else.
        let cmp = compare(&m, &pruned, &tract, 1, 1).unwrap();
        assert!(cmp.max_rel_error > 1e-3, "{cmp:?}");
    }
}
