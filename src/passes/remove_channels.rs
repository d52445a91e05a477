//! Structural channel removal: given the classes (channels of dependency groups) to remove,
//! rewrites every member: slices constants along their declared axes (honouring index maps),
//! lets each op rewrite its own attributes and shape constants ([`crate::ops::Op::rewrite_channels`]),
//! updates declared value shapes, then re-infers shapes and checks that every tracked tensor
//! has exactly the kept number of channels, and verifies the graph.
//!
//! Bias compensation: a removed channel that is a compile-time constant `c ≠ 0` (see
//! [`crate::analysis::constant_channels`]; e.g. BN gamma = 0 gives ReLU(beta)) still
//! contributed to its consumers; that exact contribution is added back (to the consumer's bias,
//! or as a constant added after it where zero padding makes it vary), so removing it changes
//! nothing.
//!
//! A group losing every channel goes whole, with the branch it ends
//! ([`super::collapse_branches()`]), in a step of its own.
//!
//! It does not choose what to remove (criteria and budgets do), does not run the model (the
//! equivalence oracle does), and refuses to remove channels of blocked groups or to empty a
//! group that does not end a branch.

use std::collections::BTreeMap;

use crate::analysis::channels::ChannelGroups;
use crate::analysis::constant_channels::{channel_constants, compensation, ChannelConstants};
use crate::analysis::{infer_shapes, Shapes};
use crate::error::{Error, Result};
use crate::ir::{verify, Dim, Graph, Model, Node, NodeId, Tensor, ValueId};
use crate::onnx::proto::tensor_shape_proto::dimension::Value as DimValue;
use crate::onnx::proto::type_proto;
use crate::ops::channel::{Compensation, Link, Map, Port, RewriteCx, Slot};
use crate::ops::{self};

use super::collapse_branches::collapse_branches;
use super::eliminate_dead_code::eliminate_dead_code;

/// Keep-masks (one bool per position, `true` = kept) of the tracked slots `(value, axis)`
/// that lose channels.
type Masks = BTreeMap<(ValueId, usize), Vec<bool>>;

/// The masks of value `v`, by axis (a range of the ordered map: no scan of every mask).
fn masks_of(masks: &Masks, v: ValueId) -> impl Iterator<Item = (usize, &Vec<bool>)> {
    masks
        .range((v, 0)..=(v, usize::MAX))
        .map(|((_, a), m)| (*a, m))
}

/// Constant slices by input port: `(axis, kept indices)`, applied in order.
type Slices = BTreeMap<usize, Vec<(usize, Vec<usize>)>>;

/// What removal changes on one node.
struct Edit {
    /// Its member constants' slices.
    slices: Slices,
    /// Its op's own rewrite (attributes, shape constants).
    rewrite: crate::ops::channel::Rewrite,
    /// What it must add for the removed constant channels it consumed.
    compensations: Vec<Compensation>,
}

/// Removes the given classes (indices into the analysis' classes). Returns whether anything
/// changed. `groups` and `shapes` must have been computed on `model` as it is now.
pub fn remove_channels(
    model: &mut Model,
    groups: &ChannelGroups,
    shapes: &Shapes,
    classes: &[usize],
) -> Result<bool> {
    let whole = whole_groups(groups, classes);
    if !whole.is_empty() {
        if classes.iter().any(|c| {
            groups
                .group_of_class
                .get(*c)
                .is_some_and(|g| !whole.contains(g))
        }) {
            return Err(Error::Usage(
                "whole groups are removed in a step of their own, without other channels".into(),
            ));
        }
        collapse_branches(model, groups, shapes, &whole)?;
        return Ok(true);
    }
    let Some(removed) = removed_classes(model, groups, classes)? else {
        return Ok(false);
    };
    let masks = keep_masks(groups, &removed);
    let mut edits = plan_edits(model, groups, shapes, &masks)?;

    // Apply.
    let out_masks = output_masks(&model.graph, &edits, &masks);
    let g = &mut model.graph;
    for (n, edit) in &mut edits {
        let n = *n;
        for comp in std::mem::take(&mut edit.compensations) {
            apply_compensation(g, n, comp, out_masks.get(&n))?;
        }
    }
    for (n, edit) in edits {
        apply_edit(g, n, edit)?;
    }
    update_declared_shapes(g, &masks);
    let expected: Vec<(String, usize, usize)> = masks
        .iter()
        .map(|(&(v, axis), m)| {
            (
                g.value(v).name.clone(),
                axis,
                m.iter().filter(|k| **k).count(),
            )
        })
        .collect();
    eliminate_dead_code(model)?;
    verify(&model.graph)?;
    check_widths(model, &expected)?;
    Ok(true)
}

/// The groups every class of which is in `classes` (ascending): those go whole
/// ([`collapse_branches`]).
pub(crate) fn whole_groups(groups: &ChannelGroups, classes: &[usize]) -> Vec<usize> {
    let mut count = vec![0usize; groups.groups.len()];
    for &c in classes {
        if let Some(g) = groups.group_of_class.get(c) {
            count[*g] += 1;
        }
    }
    groups
        .groups
        .iter()
        .filter(|g| !g.classes.is_empty() && count[g.id] == g.classes.len())
        .map(|g| g.id)
        .collect()
}

/// Marks `classes` removed, after checking that they exist, that no blocked group loses
/// channels, and that no group or tracked tensor is emptied. `None` when nothing is removed.
fn removed_classes(
    model: &Model,
    groups: &ChannelGroups,
    classes: &[usize],
) -> Result<Option<Vec<bool>>> {
    let n_classes = groups.class_atoms.len();
    let mut removed = vec![false; n_classes];
    for &c in classes {
        let Some(r) = removed.get_mut(c) else {
            return Err(Error::Usage(format!(
                "channel class {c} does not exist ({n_classes} classes)"
            )));
        };
        *r = true;
    }
    for grp in &groups.groups {
        let n_removed = grp.classes.iter().filter(|c| removed[**c]).count();
        if n_removed == 0 {
            continue;
        }
        if !grp.blocked.is_empty() {
            return Err(Error::Usage(format!(
                "group {} is blocked ({}); its channels cannot be removed",
                grp.id, grp.blocked[0]
            )));
        }
        if n_removed == grp.classes.len() {
            return Err(Error::Usage(format!(
                "removing every channel of group {} would empty a layer",
                grp.id
            )));
        }
    }
    if !removed.iter().any(|r| *r) {
        return Ok(None);
    }
    if let Some((v, axis)) = groups.emptied_slot(&removed) {
        return Err(Error::Usage(format!(
            "removing these channels would empty tensor '{}' (axis {axis}); keep at least one of its channels",
            model.graph.value(v).name
        )));
    }
    Ok(Some(removed))
}

/// Keep-masks of every slot that loses channels.
fn keep_masks(groups: &ChannelGroups, removed: &[bool]) -> Masks {
    let mut masks = Masks::new();
    for &key in groups.slots.keys() {
        if let Some(m) = groups.keep_mask(key, removed) {
            if m.iter().any(|k| !k) {
                masks.insert(key, m);
            }
        }
    }
    masks
}

/// The tracked slot key of slot `s` of node `n`, if that port is connected.
fn slot_key(g: &Graph, n: NodeId, s: Slot) -> Option<(ValueId, usize)> {
    let node = g.node(n);
    let v = match s.port {
        Port::In(p) => node.input(p)?,
        Port::Out(p) => node.output(p)?,
    };
    Some((v, s.axis))
}

/// The edit of every node with a slot that loses channels, in node order.
fn plan_edits(
    model: &Model,
    groups: &ChannelGroups,
    shapes: &Shapes,
    masks: &Masks,
) -> Result<BTreeMap<NodeId, Edit>> {
    let g = &model.graph;
    let opset = model.opset();
    let constants = channel_constants(model, groups);
    let mut edits: BTreeMap<NodeId, Edit> = BTreeMap::new();
    for (&n, links) in &groups.links {
        let node = g.node(n);
        let kept = kept_slots(node, masks);
        if kept.is_empty() {
            continue;
        }
        let compensations = consumer_compensations(g, shapes, &constants, n, links, masks)?;
        let slices = member_slices(g, n, links, masks)?;
        let rewrite = match ops::lookup(&node.domain, &node.op_type) {
            Some(op) => {
                let ins = shapes.inputs_of(g, n);
                let outs = shapes.outputs_of(g, n);
                op.rewrite_channels(&RewriteCx {
                    node,
                    inputs: &ins,
                    outputs: &outs,
                    kept: &kept,
                    opset,
                })?
            }
            None => Default::default(),
        };
        edits.insert(
            n,
            Edit {
                slices,
                rewrite,
                compensations,
            },
        );
    }
    Ok(edits)
}

/// Keep-masks of the slots of `node` that lose channels, in slot order.
fn kept_slots(node: &Node, masks: &Masks) -> Vec<(Slot, Vec<bool>)> {
    let mut kept: Vec<(Slot, Vec<bool>)> = Vec::new();
    for (p, v) in node.inputs.iter().enumerate() {
        let Some(v) = v else { continue };
        for (a, m) in masks_of(masks, *v) {
            kept.push((Slot::input(p, a), m.clone()));
        }
    }
    for (p, v) in node.outputs.iter().enumerate() {
        let Some(v) = v else { continue };
        for (a, m) in masks_of(masks, *v) {
            kept.push((Slot::output(p, a), m.clone()));
        }
    }
    kept.sort_by_key(|(s, _)| *s);
    kept
}

/// What consumer `n` must add for the non-zero constant channels removed from the slots it
/// consumes.
fn consumer_compensations(
    g: &Graph,
    shapes: &Shapes,
    constants: &ChannelConstants,
    n: NodeId,
    links: &[Link],
    masks: &Masks,
) -> Result<Vec<Compensation>> {
    let mut out = Vec::new();
    for l in links {
        let Link::Consume { from } = l else { continue };
        let Some(key) = slot_key(g, n, *from) else {
            continue;
        };
        let Some(mask) = masks.get(&key) else {
            continue;
        };
        let removed_consts: Vec<(usize, f64)> = mask
            .iter()
            .enumerate()
            .filter(|(_, k)| !**k)
            .filter_map(|(p, _)| constants.get(key, p).filter(|c| *c != 0.0).map(|c| (p, c)))
            .collect();
        if removed_consts.is_empty() {
            continue;
        }
        if let Some(c) = compensation(g, shapes, n, *from, &removed_consts)? {
            out.push(c);
        }
    }
    Ok(out)
}

/// The slices of the member constants of node `n` whose slots lose channels.
fn member_slices(g: &Graph, n: NodeId, links: &[Link], masks: &Masks) -> Result<Slices> {
    let node = g.node(n);
    let mut slices = Slices::new();
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
        let Some(mask) = slot_key(g, n, *slot).and_then(|k| masks.get(&k)) else {
            continue;
        };
        let Some(t) = node.input(*input).and_then(|v| g.init(v)) else {
            return Err(Error::node(
                &node.name,
                &node.op_type,
                format!("input {input} must be a constant to remove channels"),
            ));
        };
        let len = t.shape().get(*axis).copied().unwrap_or(0);
        let indices = member_keep(node, *input, *axis, len, mask, map)?;
        if indices.len() < len {
            slices.entry(*input).or_default().push((*axis, indices));
        }
    }
    Ok(slices)
}

/// The indices (of `len` along `axis`) that member constant `input` of `node` keeps under
/// `mask`, positions mapped to indices by `map`; an index no position reaches is kept.
fn member_keep(
    node: &Node,
    input: usize,
    axis: usize,
    len: usize,
    mask: &[bool],
    map: &Map,
) -> Result<Vec<usize>> {
    let mut keep = vec![None::<bool>; len];
    for (p, &k) in mask.iter().enumerate() {
        let idx = match map {
            Map::Identity => Some(p),
            Map::Index(m) => m.get(p).copied().flatten(),
        };
        let Some(i) = idx.filter(|i| *i < len) else {
            return Err(Error::node(
                &node.name,
                &node.op_type,
                format!("channel map of input {input} is out of range"),
            ));
        };
        match keep[i] {
            Some(prev) if prev != k => {
                return Err(Error::node(
                    &node.name,
                    &node.op_type,
                    format!("input {input} axis {axis}: coupled channels are not removed together"),
                ))
            }
            _ => keep[i] = Some(k),
        }
    }
    Ok((0..len).filter(|i| keep[*i] != Some(false)).collect())
}

/// Output keep-masks of each edited node (to cut compensation tensors to the kept channels).
fn output_masks(
    g: &Graph,
    edits: &BTreeMap<NodeId, Edit>,
    masks: &Masks,
) -> BTreeMap<NodeId, Vec<bool>> {
    edits
        .keys()
        .filter_map(|&n| {
            let node = g.node(n);
            let v = node.output(0)?;
            masks_of(masks, v).next().map(|(_, m)| (n, m.clone()))
        })
        .collect()
}

/// Applies the slices, the op's rewrite (constant inputs, then attributes) of node `n`.
fn apply_edit(g: &mut Graph, n: NodeId, edit: Edit) -> Result<()> {
    for (port, slices) in edit.slices {
        let Some(v) = g.node(n).input(port) else {
            continue;
        };
        let Some(mut t) = g.init(v).cloned() else {
            continue;
        };
        for (axis, idx) in slices {
            t = t.select(axis, &idx).map_err(|e| {
                let node = g.node(n);
                Error::node(
                    &node.name,
                    &node.op_type,
                    format!("slicing input {port}: {e}"),
                )
            })?;
        }
        replace_const_input(g, n, port, t);
    }
    for (port, t) in edit.rewrite.inputs {
        if port >= g.node(n).inputs.len() || g.node(n).input(port).is_none() {
            // A new input, or one listed as omitted.
            let name = format!("{}_arg{port}", g.node(n).name);
            let c = g.add_initializer(&name, t);
            while g.node(n).inputs.len() < port {
                g.push_input(n, None);
            }
            if port < g.node(n).inputs.len() {
                g.set_input(n, port, Some(c));
            } else {
                g.push_input(n, Some(c));
            }
        } else {
            replace_const_input(g, n, port, t);
        }
    }
    let node = g.node_mut(n);
    for name in &edit.rewrite.remove_attrs {
        node.remove_attr(name);
    }
    for a in edit.rewrite.attrs {
        node.set_attr(a);
    }
    Ok(())
}

/// Declared shapes of tensors that lost channels.
fn update_declared_shapes(g: &mut Graph, masks: &Masks) {
    for (&(v, axis), m) in masks {
        let kept = m.iter().filter(|k| **k).count() as i64;
        let Some(decl) = g.decl_mut(v) else { continue };
        if let Some(type_proto::Value::TensorType(tt)) =
            decl.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if let Some(d) = tt.shape.as_mut().and_then(|s| s.dim.get_mut(axis)) {
                if matches!(d.value, Some(DimValue::DimValue(_))) {
                    d.value = Some(DimValue::DimValue(kept));
                }
            }
        }
    }
}

/// Adds a compensation tensor to node `n`: to its bias input (created if absent) or after it.
/// `out_mask` cuts tensors that were not declared members (new ones) to the kept channels.
fn apply_compensation(
    g: &mut Graph,
    n: NodeId,
    comp: Compensation,
    out_mask: Option<&Vec<bool>>,
) -> Result<()> {
    let cut = |t: Tensor| -> Result<Tensor> {
        match out_mask {
            Some(m) if m.len() == t.shape().first().copied().unwrap_or(0) => {
                let keep: Vec<usize> = (0..m.len()).filter(|i| m[*i]).collect();
                t.select(0, &keep)
            }
            _ => Ok(t),
        }
    };
    let label = |g: &Graph| {
        let node = g.node(n);
        (node.name.clone(), node.op_type.clone())
    };
    match comp {
        Compensation::AddToInput { port, tensor } => {
            match g.node(n).input(port).and_then(|v| g.init(v).cloned()) {
                Some(old) => {
                    let (Some(a), Some(b)) = (old.to_f64_vec(), tensor.to_f64_vec()) else {
                        let (nm, op) = label(g);
                        return Err(Error::node(&nm, &op, "bias is not numeric"));
                    };
                    if a.len() != b.len() {
                        let (nm, op) = label(g);
                        return Err(Error::node(
                            &nm,
                            &op,
                            format!("bias has {} entries, compensation {}", a.len(), b.len()),
                        ));
                    }
                    let sum: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
                    let t = Tensor::from_f64_as(old.dtype(), old.shape().to_vec(), &sum)?;
                    replace_const_input(g, n, port, t);
                }
                None => {
                    let name = format!("{}_bias", g.node(n).name);
                    let c = g.add_initializer(&name, cut(tensor)?);
                    while g.node(n).inputs.len() < port {
                        g.push_input(n, None);
                    }
                    g.set_input(n, port, Some(c));
                }
            }
        }
        Compensation::AddToOutput(t) => {
            // The consumer now writes a fresh value; an Add writes the original one, so readers
            // and graph outputs keep their names.
            let Some(y) = g.node(n).output(0) else {
                return Ok(());
            };
            let name = g.node(n).name.clone();
            let y_name = g.value(y).name.clone();
            let c = g.add_initializer(&format!("{name}_compensation"), cut(t)?);
            let pre = g.add_value(&format!("{y_name}_uncompensated"));
            g.set_output(n, 0, pre);
            g.add_node_writing(
                &format!("{name}_compensate"),
                "Add",
                &[Some(pre), Some(c)],
                y,
                vec![],
            );
        }
    }
    Ok(())
}

/// Replaces constant input `port` of node `n` by `t`: in place when nothing else reads the
/// constant, else as a new initializer.
fn replace_const_input(g: &mut Graph, n: NodeId, port: usize, t: Tensor) {
    let Some(v) = g.node(n).input(port) else {
        return;
    };
    let sole = g.value(v).uses.iter().all(|(u, _)| *u == n)
        && !g.outputs.contains(&v)
        && g.init(v).is_some();
    if sole && !g.inputs.contains(&v) {
        g.set_init(v, t);
    } else {
        let name = g.value(v).name.clone();
        let c = g.add_initializer(&name, t);
        g.set_input(n, port, Some(c));
    }
}

/// After removal, every tracked tensor that still exists must have exactly its kept width.
fn check_widths(model: &Model, expected: &[(String, usize, usize)]) -> Result<()> {
    let shapes = infer_shapes(model)?;
    let g = &model.graph;
    for (name, axis, want) in expected {
        let (axis, want) = (*axis, *want);
        let Some(v) = g.value_by_name(name) else {
            continue;
        }; // removed as dead
        let Some(d) = shapes
            .get(v)
            .and_then(|f| f.shape.as_ref())
            .and_then(|s| s.get(axis))
        else {
            continue;
        };
        if let Dim::Known(got) = d {
            if *got != want {
                let by = g.value(v).producer.map(|(p, _)| {
                    let n = g.node(p);
                    format!("node '{}' ({})", n.name, n.op_type)
                });
                return Err(Error::Graph(format!(
                    "after channel removal '{name}' has {got} channels on axis {axis}, expected {want} (computed by {})",
                    by.unwrap_or_else(|| "an input".into())
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::channel_groups;
    use crate::ir::graph::attr_ints;
    use crate::ops::channel::testing::{group, shape_of, Net};
    use crate::oracle::{compare, masked_original};
    use crate::runtime::BackendKind;

    /// `x → Conv(8) → BN → Relu → Concat(·, Conv(4)) → Conv(6) → MaxPool → Flatten → Gemm(5)`;
    /// returns the model and the three convs' outputs.
    fn chain() -> (Model, [ValueId; 3]) {
        let mut n = Net::new();
        let x = n.input(&[1, 3, 4, 4]);
        let a = n.conv_k(x, 3, 8, 3);
        let stats: Vec<ValueId> = (0..3).map(|_| n.floats(&[8])).collect();
        // Positive variances.
        let var =
            n.g.add_initializer("var", Tensor::from_f32(vec![8], &[0.5; 8]));
        let bn = n.op(
            "BatchNormalization",
            &[a, stats[0], stats[1], stats[2], var],
            vec![],
        );
        let r = n.op("Relu", &[bn], vec![]);
        let b = n.conv(x, 3, 4);
        let cat = n.op(
            "Concat",
            &[r, b],
            vec![crate::ir::graph::attr_int("axis", 1)],
        );
        let c = n.conv_k(cat, 12, 6, 3);
        let pool = vec![
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("strides", &[2, 2]),
        ];
        let p = n.op("MaxPool", &[c], pool);
        let f = n.op("Flatten", &[p], vec![]);
        let (w, bias) = (n.floats(&[24, 5]), n.floats(&[5]));
        let y = n.op("Gemm", &[f, w, bias], vec![]);
        n.output(y);
        (n.model(13), [a, b, c])
    }

    #[test]
    fn removes_channels_through_concat_and_flatten() {
        let (m, [a, b, c]) = chain();
        let shapes = infer_shapes(&m).unwrap();
        let cg = channel_groups(&m, &shapes).unwrap();
        assert_eq!(cg.groups.iter().filter(|g| g.prunable()).count(), 3);
        let (ga, gb, gc) = (group(&cg, &m, a), group(&cg, &m, b), group(&cg, &m, c));
        assert_eq!((ga.channels, gb.channels, gc.channels), (8, 4, 6));
        let classes: Vec<usize> = [ga.classes[0], ga.classes[3], ga.classes[7]]
            .into_iter()
            .chain([gb.classes[1], gc.classes[2], gc.classes[4]])
            .collect();
        let mut pruned = m.clone();
        assert!(remove_channels(&mut pruned, &cg, &shapes, &classes).unwrap());
        let name = |v: ValueId| m.graph.value(v).name.clone();
        assert_eq!(shape_of(&pruned, &name(a)), "[1,5,4,4]");
        assert_eq!(shape_of(&pruned, &name(b)), "[1,3,4,4]");
        assert_eq!(shape_of(&pruned, &name(c)), "[1,4,4,4]");
        let y = m.graph.outputs[0];
        assert_eq!(shape_of(&pruned, &name(y)), "[1,5]");
        let masked = masked_original(&m, &cg, &classes).unwrap();
        let tract = [BackendKind::Tract];
        let cmp = compare(&masked, &pruned, &tract, 2, 1).unwrap();
        assert!(cmp.max_rel_error < 1e-5, "{cmp:?}");
        // The oracle is not vacuous: the unmasked original differs.
        let cmp = compare(&m, &pruned, &tract, 1, 1).unwrap();
        assert!(cmp.max_rel_error > 1e-3, "{cmp:?}");
    }

    #[test]
    fn refuses_blocked_groups_and_emptying_a_group() {
        let (m, [a, ..]) = chain();
        let shapes = infer_shapes(&m).unwrap();
        let cg = channel_groups(&m, &shapes).unwrap();
        let blocked = cg.groups.iter().find(|g| !g.prunable()).unwrap();
        let mut copy = m.clone();
        let e = remove_channels(&mut copy, &cg, &shapes, &blocked.classes[..1]).unwrap_err();
        assert!(e.to_string().contains("blocked"), "{e}");
        // A group that ends in no residual sum cannot go whole.
        let all = group(&cg, &m, a).classes.clone();
        let e = remove_channels(&mut copy, &cg, &shapes, &all).unwrap_err();
        assert!(e.to_string().contains("cannot be removed whole"), "{e}");
        assert!(!remove_channels(&mut copy, &cg, &shapes, &[]).unwrap());
    }
}
